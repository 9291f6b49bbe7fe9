"""`run(config)`: annotation files of one slide in, one merged annotations file (and its report) out.

Per class, shapes that overlap, touch or lie at most `max_gap` apart become one shape: the union of
the group, closed morphologically (buffered out by half the gap, unioned, buffered back in, like
MOTH's buffer-union-unbuffer; the original shapes are always kept whole). The overlap that
overlapping shards both predicted is counted once, because it is a union. Shapes of different
classes are never merged. Only `annotation` objects are merged; detections, cells and tiles are
skipped and counted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from shapely.geometry import Polygon

from slidemill.shared.cli import package_version
from slidemill.shared.contracts import Provenance, save_contract
from slidemill.shared.errors import InputError
from slidemill.shared.files import prepare_output_file
from slidemill.shared.report import ReportBuilder
from slidemill.shared.shapes import build_annotation_set, dissolve, drop_small, polygon_parts, report_path_for

from .config import MergeConfig
from .inputs import InputFile, common_mpp, common_slide, read_input

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


def run(config: MergeConfig, *, argv: list[str] | None = None) -> MergeResult:
    """Merge the shapes of `config.inputs` (see the module docs)."""
    version = package_version(TOOL)
    report = ReportBuilder(TOOL, version, argv)
    with report.timed("read"):
        files: list[InputFile] = [read_input(Path(p)) for p in config.inputs]
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
    out = prepare_output_file(config.out, overwrite=config.overwrite)
    report_path = report_path_for(out)
    if report_path.resolve() == out.resolve():
        raise InputError("--out must not end in .report.json (the report is written beside it)", path=out,
                         fix="Use a .geojson name")
    if not any(f.slide for f in files):
        report.warn("no input names its slide (plain QuPath exports?); make sure all come from one slide")
    elif not all(f.slide for f in files):
        report.warn("some inputs do not name their slide: "
                    + ", ".join(str(f.path) for f in files if f.slide is None))

    wanted = set(config.classes) if config.classes else None
    by_class: dict[str | None, list[Polygon]] = {}
    colors: dict[str | None, tuple[int, int, int] | None] = {}
    other_objects = repaired = skipped = shapes_in = 0
    for f in files:
        repaired += f.repaired
        skipped += f.skipped
        for s in f.shapes:
            shapes_in += 1
            if s.object_type != "annotation":
                other_objects += 1
                continue
            if wanted is not None and s.class_name not in wanted:
                continue
            by_class.setdefault(s.class_name, []).extend(polygon_parts(s.geometry))
            if colors.get(s.class_name) is None:
                colors[s.class_name] = s.color
    if wanted is not None:
        missing = sorted(wanted - set(by_class))
        if missing:
            report.warn(f"no input has shapes of the classes {missing}")
    reasons = [r for f in files for r in f.skipped_reasons]
    if repaired:
        report.warn(f"{repaired} invalid shapes (self-intersections and the like) were repaired")
    if skipped:
        report.warn(f"{skipped} features without a polygon were skipped: "
                    + "; ".join(reasons[:MAX_LISTED_WARNINGS]) + (" ..." if len(reasons) > MAX_LISTED_WARNINGS else ""))
    if other_objects:
        report.warn(f"{other_objects} detection/cell/tile objects were left out: only annotations are merged")

    min_area_px = config.min_area_um2 / (mpp * mpp) if config.min_area_um2 else 0.0
    merged: dict[str | None, list[Polygon]] = {}
    dropped = 0
    order = sorted(by_class, key=lambda n: (n is None, n or ""))
    with report.timed("merge"):
        for name in order:
            polys = dissolve(by_class[name], max_gap=gap)
            polys, small = drop_small(polys, min_area_px)
            dropped += small
            merged[name] = polys
            log.info("%s: %d shapes -> %d", name or "unclassified", len(by_class[name]), len(polys))
    provenance = Provenance(tool=TOOL, version=version, inputs=[str(p) for p in config.inputs], parameters={
        "max_gap_px": gap, "min_area_um2": config.min_area_um2, "classes": config.classes, "mpp": mpp})
    with report.timed("write"):
        annotation_set, vanished = build_annotation_set(merged, mpp=mpp, colors=colors, slide=slide,
                                                        provenance=provenance)
        save_contract(annotation_set, out, indent=None)
    per_class: dict[str, int] = {(n or "unclassified"): 0 for n in order}
    for feature in annotation_set.features:
        cls = feature.properties.classification
        per_class[cls.name if cls else "unclassified"] += 1
    report.inputs = [str(p) for p in config.inputs]
    report.outputs = [str(out)]
    for key, value in {"inputs": len(files), "shapes_in": shapes_in, "shapes_repaired": repaired,
                       "features_skipped": skipped, "objects_not_annotations": other_objects,
                       "features": len(annotation_set.features), "shapes_dropped_small": dropped,
                       "shapes_vanished_on_snap": vanished, "max_gap_px": gap}.items():
        report.count(key, value)
    for name, count in per_class.items():
        report.count(f"features.{name}", count)
    report.write(report_path)
    log.info("wrote %d features to %s", len(annotation_set.features), out)
    return MergeResult(out=out, report=report_path, features=len(annotation_set.features),
                       features_per_class=per_class, shapes_in=shapes_in, repaired=repaired, skipped=skipped)
