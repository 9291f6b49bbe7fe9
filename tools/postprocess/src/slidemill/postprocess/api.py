"""`run(config)`: a prediction folder in, one annotations file (and its report) out."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import Polygon

from slidemill.shared.annotations import write_annotations
from slidemill.shared.cli import Progress, worker_count
from slidemill.shared.contracts import Prediction, Provenance
from slidemill.shared.errors import InputError
from slidemill.shared.lifecycle import ToolRun
from slidemill.shared.shapes import annotation_objects, drop_small

from . import cleanup
from .config import PostprocessConfig
from .label_raster import combine_shards, load_prediction, open_labels
from .vectorise import MaskOps, chunk_windows, vectorise_file

log = logging.getLogger(__name__)

TOOL = "slidemill-postprocess"


@dataclass
class PostprocessResult:
    out: Path
    report: Path
    features: int
    features_per_class: dict[str, int] = field(default_factory=dict)


def mask_ops(config: PostprocessConfig, raster_mpp: float) -> MaskOps:
    """Clean-up sizes in raster pixels (microns are converted at the raster's resolution)."""
    sigma = config.smooth_px if config.smooth_px is not None else (config.smooth_um or 0.0) / raster_mpp

    def radius(px: int | None, um: float | None) -> int:
        return int(px) if px is not None else int(round((um or 0.0) / raster_mpp))

    return MaskOps(smooth_sigma_px=float(sigma), open_radius_px=radius(config.open_px, config.open_um),
                   close_radius_px=radius(config.close_px, config.close_um))


def selected_classes(prediction: Prediction, names: list[str] | None,
                     include_background: bool = False) -> tuple[list[tuple[str, int]], list[str]]:
    """(name, label) of the classes to vectorise, and the background classes left out. Named classes
    are taken exactly (unknown names are refused with the valid ones); without names, every trainable
    class but those the class table marks as background (unless `include_background`)."""
    trainable = prediction.classes.trainable
    if not names:
        left_out = [] if include_background else [c.name for c in trainable if c.background]
        return [(c.name, c.label) for c in trainable if c.name not in left_out], left_out
    valid = {c.name: c.label for c in trainable}
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise InputError(f"--classes names {', '.join(repr(n) for n in unknown)}, which the prediction does not "
                         f"have; its classes are {', '.join(repr(n) for n in valid)}",
                         fix="Give each class name exactly as the class table spells it, one name per --classes "
                             "(a name may contain commas, colons and spaces)")
    return [(n, valid[n]) for n in dict.fromkeys(names)], []


def level0_mpp(prediction: Prediction) -> float:
    """Level-0 microns per pixel: the slide's, or the raster's divided by the raster-to-level-0 scale."""
    return prediction.slide.mpp or prediction.mpp / prediction.mapping.scale


def to_level0(polygons: list[Polygon], prediction: Prediction) -> list[Polygon]:
    if not polygons:
        return []
    m = prediction.mapping
    arr = np.empty(len(polygons), dtype=object)
    arr[:] = polygons
    origin = np.array([m.origin_x, m.origin_y])
    return list(shapely.transform(arr, lambda c: origin + c * m.scale))


def clip_rect(prediction: Prediction) -> cleanup.Rect:
    """The level-0 region the prediction covers (the slide, or its `--region`), in raster pixel
    corners: the raster's last row and column may reach past it by under one pixel."""
    m, r = prediction.mapping, prediction.region
    x0, y0 = m.to_raster(r.x, r.y)
    x1, y1 = m.to_raster(r.x + r.width, r.y + r.height)
    return (max(x0, 0.0), max(y0, 0.0), min(x1, prediction.labels.width), min(y1, prediction.labels.height))


def run(config: PostprocessConfig, *, argv: list[str] | None = None) -> PostprocessResult:
    """Vectorise a prediction's label raster (or the stacked rasters of all shards of one sharded
    prediction) into an `annotations` file (see the package docs). The lifecycle (output refused or
    replaced, staging, report, failed report) is slidemill.shared.lifecycle's."""
    with ToolRun(TOOL, argv, out=config.out, kind="file", overwrite=config.overwrite) as life:
        return _vectorise(config, life)


def _vectorise(config: PostprocessConfig, life: ToolRun) -> PostprocessResult:
    report, version = life.report, life.report.version
    shards = [load_prediction(path) for path in config.prediction]
    prediction, shards = combine_shards(shards)
    classes, background_left_out = selected_classes(prediction, config.classes, config.include_background)
    life.check_output()
    out = life.out
    ops = mask_ops(config, prediction.mpp)
    px_area = prediction.mpp ** 2  # µm² per raster pixel
    parts = []
    for shard_folder, shard in shards:  # each checked (exists, readable, right size) before any work
        with open_labels(shard_folder, shard) as raster:
            parts.append((raster.path, shard.labels))
    inputs = [str(path) for path in config.prediction]
    report.inputs = inputs
    spec = prediction.labels
    if len(shards) == 1 and prediction.shard is not None and prediction.shard.count > 1 and (
            config.min_area_um2 or config.fill_holes_um2 or config.simplify_um or not ops.identity):
        report.warn(f"shard {prediction.shard.index}/{prediction.shard.count} post-processed alone: shapes "
                    "cut by the shard border are filtered, filled and smoothed as the pieces they are here; "
                    "give every shard's folder to one run to clean the slide as a whole")
    stage = life.start()
    workers = worker_count(config.workers)
    log.info("vectorising %s (%d x %d raster px, %d classes, chunks of %d px, halo %d px, %d worker(s))",
             prediction.slide.name, spec.width, spec.height, len(classes), config.chunk_px, ops.halo_px, workers)
    windows = chunk_windows(spec.height, spec.width, config.chunk_px)
    with report.timed("vectorise"), Progress(len(windows), "vectorising", "chunks") as progress:
        by_label, stats = vectorise_file(parts, [v for _, v in classes], ops, chunk_px=config.chunk_px,
                                         workers=workers, on_chunk=progress.advance)
    rect = clip_rect(prediction)
    clipped = dropped = 0
    with report.timed("clean"):
        # clipped first, so every measurement and size threshold sees the shape as it is written
        for value in by_label:
            polys = cleanup.densify(by_label[value]) if config.simplify_um > 0 else by_label[value]
            polys, reached = cleanup.clip(polys, rect)
            clipped += reached
            polys, small = drop_small(polys, config.min_area_um2 / px_area)
            dropped += small
            by_label[value] = polys
        by_label, holes_filled = cleanup.fill_holes(by_label, config.fill_holes_um2 / px_area)
        by_label, degenerate, vanished_simplify = cleanup.simplify(by_label, config.simplify_um / prediction.mpp,
                                                                   rect)
        polygons_by_class = {name: to_level0(by_label[value], prediction) for name, value in classes}
    mpp0 = level0_mpp(prediction)
    provenance = Provenance(tool=TOOL, version=version, inputs=inputs, parameters={
        "smooth_sigma_px": ops.smooth_sigma_px, "open_radius_px": ops.open_radius_px,
        "close_radius_px": ops.close_radius_px, "min_area_um2": config.min_area_um2,
        "fill_holes_um2": config.fill_holes_um2, "simplify_um": config.simplify_um,
        "classes": [n for n, _ in classes],
        "background_not_vectorised": background_left_out, "raster_mpp": prediction.mpp, "model": prediction.model.name,
        "shard": None if prediction.shard is None else f"{prediction.shard.index}/{prediction.shard.count}",
        "shards": len(shards),
    })
    if background_left_out:
        report.warn(f"background class(es) {', '.join(repr(n) for n in background_left_out)} were not vectorised "
                    "(the class table marks them as glass); pass --include-background to get them too")
    with report.timed("write"):
        written = write_annotations(stage / out.name, annotation_objects(polygons_by_class, classes=prediction.classes),
                                    classes=prediction.classes, mpp=mpp0, slide=prediction.slide,
                                    provenance=provenance)
    vanished = written.dropped
    per_class = {name: written.per_class.get(name, 0) for name, _ in classes}
    report.outputs = [str(out)]
    report.count("features", written.written)
    report.count("classes_background_not_vectorised", len(background_left_out))
    for name, count in per_class.items():
        report.count(f"features.{name}", count)
    report.count("chunks", stats.chunks)
    report.count("pieces_stitched", stats.pieces_stitched)
    report.count("holes_filled", holes_filled)
    report.count("shapes_dropped_small", dropped)
    report.count("shapes_clipped", clipped)
    report.count("shapes_below_one_pixel_after_simplify", degenerate)
    report.count("shapes_vanished_on_simplify", vanished_simplify)
    if degenerate or vanished_simplify:
        report.warn(f"--simplify-um {config.simplify_um}: {degenerate} shape(s) became smaller than one raster "
                    f"pixel and {vanished_simplify} vanished; a smaller tolerance keeps small shapes")
    report.count("shapes_vanished_on_snap", vanished)
    log.info("wrote %d features to %s", written.written, out)
    return PostprocessResult(out=out, report=life.report_path, features=written.written,
                             features_per_class=per_class)
