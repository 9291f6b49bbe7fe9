"""`run(config)`: annotation files of one slide in, one merged annotations file (and its report) out.

Per class and image plane, annotations that overlap, touch or lie at most `max_gap` apart become one
shape: the union of the group, closed morphologically (buffered out by half the gap, unioned,
buffered back in, like MOTH's buffer-union-unbuffer; the original shapes are always kept whole).
The overlap that overlapping shards both predicted is counted once, because it is a union. Shapes of
different classes (a derived class such as "Tumor: Positive" is its own class) or planes are never
merged. A merged shape made of one input object keeps that object's name, colour, measurements,
metadata and other properties; one made of several keeps what they all share (the class always), and
the properties that could not be kept are counted. Detections, cells (with their nucleus) and tiles
are not merged: they are written as they came.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import Polygon

from slidemill.shared.annotations import AnnotationShape, not_kept, read_annotation_file, write_annotations
from slidemill.shared.classes import default_color
from slidemill.shared.contracts import Provenance
from slidemill.shared.errors import InputError
from slidemill.shared.lifecycle import ToolRun
from slidemill.shared.shapes import dissolve, drop_small, polygon_parts, sort_polygons

from .common_slide import common_mpp, common_slide
from .config import MergeConfig

log = logging.getLogger(__name__)

TOOL = "slidemill-merge-annotations"
MAX_LISTED_WARNINGS = 10


@dataclass
class MergeResult:
    out: Path
    report: Path
    features: int
    features_per_class: dict[str, int] = field(default_factory=dict)
    shapes_in: int = 0
    repaired: int = 0
    skipped: int = 0


def gap_px(config: MergeConfig, mpp: float | None) -> float:
    if config.max_gap_px is not None:
        return config.max_gap_px
    if not config.max_gap_um:
        return 0.0
    if mpp is None:
        raise InputError("--max-gap-um needs the slide's microns per pixel, and no input says it",
                         fix="Pass --slide-mpp, or give the gap in level-0 pixels with --max-gap-px")
    return config.max_gap_um / mpp


def merged_objects(polygons: list[Polygon], sources: list[AnnotationShape],
                   color: tuple[int, int, int] | None) -> tuple[list[AnnotationShape], int]:
    """One annotation per merged polygon (top to bottom, left to right), with the properties of the
    input objects it is made of (see the module docs); and how many input objects lost properties."""
    polygons = sort_polygons(polygons)
    if not polygons:
        return [], 0
    first = sources[0]
    members: list[list[AnnotationShape]] = [[] for _ in polygons]
    tree = shapely.STRtree(np.asarray(polygons, dtype=object))
    points = shapely.point_on_surface(np.asarray([s.geometry for s in sources], dtype=object))
    source_index, polygon_index = tree.query(points, predicate="intersects")
    assigned: set[int] = set()
    for si, pi in zip(source_index.tolist(), polygon_index.tolist(), strict=True):
        if si not in assigned:
            assigned.add(si)
            members[pi].append(sources[si])
    out, lost = [], 0
    for poly, group in zip(polygons, members, strict=True):
        obj = AnnotationShape(geometry=shapely.normalize(poly), class_name=first.class_name, color=color,
                              class_names=first.class_names, plane=first.plane)
        if len(group) == 1:
            one = group[0]
            obj.name, obj.measurements, obj.metadata = one.name, dict(one.measurements), one.metadata
            obj.object_color, obj.properties, obj.locked = one.object_color, one.properties, one.locked
        elif group:
            names = {g.name for g in group}
            obj.name = names.pop() if len(names) == 1 else None
            obj.locked = all(g.locked for g in group)
            lost += sum(1 for g in group if (g.name and g.name != obj.name) or g.measurements or g.metadata
                        or g.object_color or g.properties)
        out.append(obj)
    return out, lost


def run(config: MergeConfig, *, argv: list[str] | None = None) -> MergeResult:
    """Merge the shapes of `config.inputs` (see the module docs). The lifecycle (output refused or
    replaced, staging, report, failed report) is slidemill.shared.lifecycle's."""
    with ToolRun(TOOL, argv, out=config.out, kind="file", overwrite=config.overwrite) as life:
        return _merge(config, life)


def _merge(config: MergeConfig, life: ToolRun) -> MergeResult:
    """The steps of one merge: read and check the inputs, group the shapes by class and plane, dissolve each
    group, write, count."""
    report = life.report
    with report.timed("read"):
        files = [read_annotation_file(Path(p)) for p in config.inputs]
    slide, mpp, gap = _check_inputs(config, files, report)
    life.check_output()
    out = life.out
    groups = _group_shapes(files, config.classes)
    _warn_about_reading(files, groups, report)
    stage = life.start()
    min_area_px = config.min_area_um2 / (mpp * mpp) if config.min_area_um2 else 0.0
    with report.timed("merge"):
        objects, dropped, lost = _dissolve_groups(groups, gap, min_area_px)
    if lost:
        report.warn(f"{lost} input annotation(s) were merged with others and their own names, measurements or "
                    "other properties were left out (a merged shape keeps only what its parts share)")
    provenance = Provenance(tool=TOOL, version=report.version, inputs=[str(p) for p in config.inputs], parameters={
        "max_gap_px": gap, "min_area_um2": config.min_area_um2, "classes": config.classes, "mpp": mpp})
    colors_out = {n: (c or default_color(n)) for n, c in groups.colors.items() if n}
    with report.timed("write"):
        stats = write_annotations(stage / out.name, objects + groups.passed, colors=colors_out, slide=slide,
                                  mpp=mpp, provenance=provenance)
    per_class = _features_per_class(groups, stats)
    report.inputs = [str(p) for p in config.inputs]
    report.outputs = [str(out)]
    repaired, skipped = sum(f.repaired for f in files), sum(f.skipped for f in files)
    for key, value in {"inputs": len(files), "shapes_in": groups.shapes_in, "shapes_repaired": repaired,
                       "features_skipped": skipped, "objects_not_annotations": len(groups.passed),
                       "features": stats.written, "shapes_dropped_small": dropped,
                       "shapes_vanished_on_snap": stats.dropped, "max_gap_px": gap,
                       "annotations_properties_not_kept": lost}.items():
        report.count(key, value)
    counts, messages = not_kept(files, stats)
    for key, value in counts.items():
        report.count(key, value)
    for message in messages:
        report.warn(message)
    for name, count in per_class.items():
        report.count(f"features.{name}", count)
    log.info("wrote %d features to %s", stats.written, out)
    return MergeResult(out=out, report=life.report_path, features=stats.written, features_per_class=per_class,
                       shapes_in=groups.shapes_in, repaired=repaired, skipped=skipped)


def _check_inputs(config: MergeConfig, files: list, report) -> tuple:
    """(slide, mpp, gap in level-0 px) of the inputs; InputError for an input without polygons, inputs of
    different slides or resolutions, --min-area-um2 without a resolution, or --classes no input has."""
    for f in files:
        if not f.shapes and f.skipped:
            raise InputError(f"holds no polygons: all {f.skipped} features were skipped "
                             f"({'; '.join(f.skipped_reasons[:3])})", path=f.path,
                             fix="Give annotation files with Polygon or MultiPolygon shapes")
    slide = common_slide(files)
    mpp = common_mpp(files, config.slide_mpp)
    gap = gap_px(config, mpp)
    if config.min_area_um2 and mpp is None:
        raise InputError("--min-area-um2 needs the slide's microns per pixel, and no input says it",
                         fix="Pass --slide-mpp")
    if not any(f.slide for f in files):
        report.warn("no input names its slide (plain QuPath exports?); make sure all come from one slide")
    elif not all(f.slide for f in files):
        report.warn("some inputs do not name their slide: "
                    + ", ".join(str(f.path) for f in files if f.slide is None))
    if config.classes:
        present = {sh.class_name for f in files for sh in f.shapes}
        unknown = [n for n in config.classes if n not in present]
        if unknown:
            listed = ", ".join(repr(n) for n in sorted(n for n in present if n)) or "none"
            raise InputError(f"--classes names {', '.join(repr(n) for n in unknown)}, which no input has; the "
                             f"inputs' classes are {listed}",
                             fix="Give each class name exactly as the inputs spell it, one name per --classes "
                                 "(a name may contain commas, colons and spaces)")
    return slide, mpp, gap


@dataclass
class _Groups:
    """The inputs' annotations by (class, plane), in output order; other objects (detections, cells, tiles)
    passed through as they came; each class's first colour; how many shapes were read."""

    by_key: dict[tuple, list[AnnotationShape]]
    passed: list[AnnotationShape]
    colors: dict[str | None, tuple[int, int, int] | None]
    shapes_in: int

    @property
    def order(self) -> list[tuple]:
        return sorted(self.by_key, key=lambda k: (k[0] is None, k[0] or "", k[1]))


def _group_shapes(files: list, classes: list[str] | None) -> _Groups:
    wanted = set(classes) if classes else None
    groups = _Groups({}, [], {}, 0)
    for f in files:
        for sh in f.shapes:
            groups.shapes_in += 1
            if wanted is not None and sh.class_name not in wanted:
                continue
            if groups.colors.get(sh.class_name) is None:
                groups.colors[sh.class_name] = sh.color
            if sh.object_type != "annotation":
                groups.passed.append(sh)
                continue
            groups.by_key.setdefault((sh.class_name, sh.plane_key), []).append(sh)
    return groups


def _warn_about_reading(files: list, groups: _Groups, report) -> None:
    repaired, skipped = sum(f.repaired for f in files), sum(f.skipped for f in files)
    reasons = [f"{f.path.name}: {r}" for f in files for r in f.skipped_reasons]
    if repaired:
        report.warn(f"{repaired} invalid shapes (self-intersections and the like) were repaired")
    if skipped:
        report.warn(f"{skipped} features without a polygon were skipped: "
                    + "; ".join(reasons[:MAX_LISTED_WARNINGS]) + (" ..." if len(reasons) > MAX_LISTED_WARNINGS else ""))
    if groups.passed:
        log.info("%d detection/cell/tile objects are written as they came (only annotations are merged)",
                 len(groups.passed))


def _dissolve_groups(groups: _Groups, gap: float, min_area_px: float) -> tuple[list[AnnotationShape], int, int]:
    """Each group dissolved (shapes within `gap` px become one), shapes under `min_area_px` dropped: (the merged
    objects, shapes dropped as small, input annotations whose own properties were not kept)."""
    objects: list[AnnotationShape] = []
    dropped = lost = 0
    for key in groups.order:
        name = key[0]
        polys = dissolve([p for sh in groups.by_key[key] for p in polygon_parts(sh.geometry)], max_gap=gap)
        polys, small = drop_small(polys, min_area_px)
        dropped += small
        color = groups.colors.get(name) or (default_color(name) if name else None)
        merged, n_lost = merged_objects(polys, groups.by_key[key], color)
        objects.extend(merged)
        lost += n_lost
        log.info("%s: %d shapes -> %d", name or "unclassified", len(groups.by_key[key]), len(polys))
    return objects, dropped, lost


def _features_per_class(groups: _Groups, stats) -> dict[str, int]:
    """Features written per class name ('unclassified' for none), every class that had input shapes listed."""
    names = [n for n in dict.fromkeys(k[0] for k in groups.order)] + [sh.class_name for sh in groups.passed]
    per_class: dict[str, int] = {(n or "unclassified"): 0 for n in dict.fromkeys(names)}
    per_class.update(stats.per_class)
    unclassified = stats.written - sum(stats.per_class.values())
    if unclassified or "unclassified" in per_class:
        per_class["unclassified"] = unclassified
    return per_class
