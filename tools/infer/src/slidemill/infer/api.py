"""`run(config)`: predict a slide with a slidemill model and write a prediction folder.

Usable from a notebook:

    from slidemill.infer import InferConfig, run
    result = run(InferConfig(slide="a.svs", model_dir="model", out="pred"))
    result.prediction.labels.file  # "labels.tiff"
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from slidemill.shared.cli import worker_count
from slidemill.shared.contracts import ModelRef, Prediction, RasterFile, Report, StainApplied, save_contract
from slidemill.shared.errors import InputError
from slidemill.shared.geometry import PixelMapping, Region
from slidemill.shared.lifecycle import ToolRun
from slidemill.shared.report import ReportBuilder
from slidemill.shared.slide import Slide, open_slide
from slidemill.shared.stain import StainNormaliser, fit_slide_stain
from slidemill.shared.tissue import TISSUE_MPP, TissueMap, slide_tissue

from .config import BLOCK_PX, InferConfig
from .grid import chunk_blocks, count_tiles, make_grid, shard_band
from .onnx_session import create_session, load_model
from .pipeline import Job, predict
from .prediction_raster import RasterSpec, Spill, build_levels, write_tiff
from .tissue_cells import TissuePixels, cell_tissue

log = logging.getLogger(__name__)

TOOL = "slidemill-infer"
# large-image keeps decoded tiles in an LRU cache sized from the machine's memory (1/32 of it); the
# overlapping reads only revisit the last rows of tiles, so a fixed number bounds memory instead
TILE_CACHE_ITEMS = 256


def bound_tile_cache(items: int = TILE_CACHE_ITEMS) -> None:
    """Cap large-image's tile cache (unless the user configured it); works before its first read."""
    from slidemill.shared.slide import _large_image

    config = _large_image().config
    if not int(config.getConfig("cache_tileCache_maximum", 0) or 0):
        config.setConfig("cache_tileCache_maximum", items)


# the last model folder loaded and its sessions: a batch of slides (or a notebook's loop) loads it once
_LOADED: dict[tuple, tuple] = {}


def _loaded_model(model_dir: Path):
    """The model (card checked, sha256 verified) and a function giving its onnxruntime session for
    (device, fp16, threads, warn), both loaded once while the folder's files stay the same; a session's
    warnings are said again in every run that uses it."""
    folder = Path(model_dir)
    key = (str(folder.resolve()), tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                                             for p in folder.iterdir() if p.is_file()))) if folder.is_dir() else None
    if key is None or key not in _LOADED:
        model = load_model(folder)
        _LOADED.clear()
        if key is None:
            return model, lambda device, fp16, threads, warn: create_session(model, device=device, fp16=fp16,
                                                                             threads=threads, warn=warn)
        _LOADED[key] = (model, {})
    model, sessions = _LOADED[key]

    def open_session(device: str, fp16: bool, threads: int, warn):
        if (device, fp16, threads) not in sessions:
            said: list[str] = []
            sessions[(device, fp16, threads)] = (create_session(model, device=device, fp16=fp16, threads=threads,
                                                                warn=said.append), said)
        session, said = sessions[(device, fp16, threads)]
        for message in said:
            warn(message)
        return session

    return model, open_session


@dataclass
class InferResult:
    out: Path
    prediction: Prediction
    report: Report



def _region(config: InferConfig, slide: Slide, report: ReportBuilder) -> Region:
    if config.region is None:
        return Region(x=0, y=0, width=slide.width, height=slide.height)
    region = config.region
    clipped = region.clipped(slide.width, slide.height)
    if clipped is None:
        raise InputError(f"--region {region.x},{region.y},{region.width},{region.height} lies outside the slide, "
                         f"which is {slide.width} x {slide.height} level-0 pixels", path=config.slide,
                         fix="Give a rectangle inside the slide, in level-0 pixels (X,Y,W,H)")
    if clipped != region:
        report.warn(f"--region was cut to the slide: {clipped.x},{clipped.y},{clipped.width},{clipped.height}")
    return clipped


def _normaliser(card):
    """Per-channel gain and offset: (rgb / 255 - mean) / std = rgb * gain + offset."""
    std = np.asarray(card.input.normalization.std, np.float32)
    mean = np.asarray(card.input.normalization.mean, np.float32)
    return (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)


def normalise(img: np.ndarray, gain: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """H x W x 3 uint8 RGB to the model's 3 x H x W float32 input, plane by plane (no strided copies)."""
    out = np.empty((3,) + img.shape[:2], np.float32)
    for c, plane in enumerate(cv2.split(img)):
        np.multiply(plane, gain[c], out=out[c], dtype=np.float32)
        out[c] += offset[c]
    return out


def stain_transform(card, slide: Slide, config: InferConfig, tissue: TissueMap | None,
                    report: ReportBuilder) -> tuple[StainNormaliser | None, StainApplied | None]:
    """The model card's stain normalisation for this slide (None, None when the card has none): the slide is
    fitted by the rule tile used (`fit_slide_stain` on `slide_tissue` at the card's tissue_mpp; `tissue` is
    reused when it was detected by that rule), and every tile goes through StainNormaliser(fit, card target).
    InputError (exit 2) when the slide cannot be fitted (not brightfield RGB, too little stain)."""
    wanted = card.input.stain_normalisation
    if wanted is None:
        return None, None
    if tissue is None or wanted.tissue_mpp != TISSUE_MPP:
        tissue = slide_tissue(slide, mode=config.tissue_mode, tissue_mpp=wanted.tissue_mpp)
    fit = fit_slide_stain(slide, tissue, tissue_mpp=wanted.tissue_mpp)
    source = fit.get(wanted.method)
    if source is None:
        reason = fit.not_fitted.get(wanted.method, "")
        hint = " (a brightfield slide taken for dark-field: pass --tissue-mode brightfield)" if "dark-field" in \
            reason else ""
        raise InputError(f"cannot be stain-normalised as the model expects ({wanted.method}, trained with "
                         f"--stain-normalisation): {reason}", path=config.slide,
                         fix=f"Predict brightfield RGB H&E slides with this model{hint}, or use a model trained "
                         "with --stain-normalisation none")
    log.info("%s: stain normalisation %s, the slide's fit on its tissue thumbnail (%d pixels) to the model's "
             "target", slide.name, wanted.method, source.pixels)
    report.environment["stain_normalisation"] = wanted.method
    applied = StainApplied(method=wanted.method, source=source, target=wanted.target, tissue_mpp=wanted.tissue_mpp,
                           thumbnail_scale=fit.thumbnail_scale)
    return StainNormaliser(source, wanted.target), applied


def run(config: InferConfig, argv: list[str] | None = None) -> InferResult:
    """Predict `config.slide` with the model in `config.model_dir` into the folder `config.out`. The
    lifecycle (output refused or replaced, staging, report, failed report) is slidemill.shared.lifecycle's."""
    with ToolRun(TOOL, argv, out=config.out, kind="folder", overwrite=config.overwrite) as life:
        prediction = _predict(config, life)
    return InferResult(out=life.out, prediction=prediction, report=life.final)


def _predict(config: InferConfig, life: ToolRun) -> Prediction:
    report = life.report
    t_start = time.perf_counter()
    # --- every input is checked before any work ---------------------------------------------------
    bound_tile_cache()
    if not Path(config.slide).exists():  # a missing slide is named first, before the model is read
        open_slide(config.slide)
    model, open_session = _loaded_model(config.model_dir)
    card = model.card
    channels = config.channels or card.input.slide_channels
    if channels and not config.channels:
        log.info("%s: reading the channels the model was trained on: %s", config.slide, ", ".join(channels))
    slide = open_slide(config.slide, mpp=config.slide_mpp, channels=channels, z=config.z, t=config.t,
                       dicom_series=config.dicom_series)
    slide_mpp = slide.require_mpp()
    slide.scale_for(card.input.mpp, allow_upsampling=config.allow_upsampling, option="the model's resolution")
    region = _region(config, slide, report)
    life.check_output()
    cores = worker_count(0)
    workers = worker_count(config.workers)
    session = open_session(config.device, config.fp16, cores, report.warn)
    report.inputs += [str(config.slide), str(model.card_path), str(model.onnx_path)]

    scale = card.input.mpp / slide_mpp  # level-0 pixels per raster pixel
    tile = card.input.tile_size_px
    classes = card.classes.num_trainable
    width = max(1, math.ceil(region.width / scale - 1e-9))
    height = max(1, math.ceil(region.height / scale - 1e-9))
    grid = make_grid(width, height, tile, config.overlap, BLOCK_PX)
    full_mapping = PixelMapping(origin_x=region.x, origin_y=region.y, scale=scale)
    if scale < 1 - 1e-6:
        report.warn(f"the model works at {card.input.mpp} um/px, finer than the slide's {slide_mpp} um/px: "
                    "the slide is upsampled")

    tissue = None
    with report.timed("tissue"):
        if config.tissue_only:
            tissue = slide_tissue(slide, mode=config.tissue_mode)
            tissue_mode = tissue.mode
            log.info("%s: tissue detection %s", slide.name, tissue_mode)
            report.environment["tissue_mode"] = tissue_mode
            run_cells = cell_tissue(tissue, grid, full_mapping)
            tissue_pixels = TissuePixels(tissue.mask, tissue.scale, full_mapping)
            if not run_cells.any():
                report.warn(f"no tissue was found in the region ({tissue_mode} tissue detection): every pixel is "
                            "'not predicted' (255); use --tissue-mode, or --everywhere to predict regardless")
        else:
            run_cells = np.ones((grid.n_rows, grid.n_cols), bool)
            tissue_pixels = None
    with report.timed("stain"):
        stain, stain_applied = stain_transform(card, slide, config, tissue, report)
    if config.shard is not None:
        b0, b1 = shard_band(grid, run_cells, config.shard.index, config.shard.count)
    else:
        b0, b1 = 0, grid.n_block_rows
    y0, y1 = b0 * BLOCK_PX, min(b1 * BLOCK_PX, height)
    per_chunk = chunk_blocks(grid, classes, config.memory_budget_mb * 2**20)
    labels_spec = RasterSpec("labels", width, y1 - y0, 1, 255, BLOCK_PX, "nearest")
    probs_spec = RasterSpec("probabilities", width, y1 - y0, classes, 0, BLOCK_PX, "mean")
    job = Job(grid=grid, run=run_cells, b0=b0, b1=b1, per_chunk=per_chunk, classes=classes,
              labels=labels_spec, probabilities=probs_spec, tissue=tissue_pixels)
    total_tiles = count_tiles(grid, run_cells, b0, b1, per_chunk)
    mapping = PixelMapping(origin_x=region.x, origin_y=region.y + y0 * scale, scale=scale)
    top = math.floor(mapping.origin_y + 1e-6)
    bottom = min(region.y + region.height, math.ceil(region.y + y1 * scale - 1e-6))
    out_region = Region(x=region.x, y=top, width=region.width, height=max(1, bottom - top))
    log.info("%s at %.4g um/px (%.4g level-0 px per pixel): raster %d x %d, tiles of %d overlapping by %d, "
             "%d tiles to run%s", slide.name, card.input.mpp, scale, width, y1 - y0, tile, tile - grid.stride,
             total_tiles, f", shard {config.shard.index}/{config.shard.count} (block rows {b0}-{b1 - 1})"
             if config.shard else "")

    gain, offset = _normaliser(card)
    pad = 255

    def read_tile(ci: int, cj: int) -> np.ndarray:
        tx, ty = grid.tile_xy(ci, cj)
        x, y = full_mapping.to_level0(tx, ty)
        pixels = slide.read_region(x, y, tile, tile, scale, pad_value=pad)
        if stain is not None:  # the slide's fixed stain transform, as in training
            pixels = stain(pixels)
        return normalise(pixels, gain, offset)

    out = life.out
    stage = life.start()
    spill = Spill(stage / ".blocks.spill")
    try:
        t0 = time.perf_counter()
        stats = predict(job, read_tile=read_tile, model=session.run, spill=spill, batch_size=config.batch_size,
                        workers=workers, tta=config.tta, total_tiles=total_tiles)
        report.timings_s["predict"] = round(time.perf_counter() - t0, 4)
        with report.timed("pyramid"):
            build_levels(spill, labels_spec, workers=cores)
            build_levels(spill, probs_spec, workers=cores)
        with report.timed("tiff"):
            write_tiff(stage / "labels.tiff", spill, labels_spec, mpp=card.input.mpp)
            write_tiff(stage / "probabilities.tiff", spill, probs_spec, mpp=card.input.mpp)
    finally:
        spill.close()
    with report.timed("preview"):
        write_preview(stage / "preview.png", stage / "labels.tiff", slide, mapping, card.classes,
                      config.preview_size_px)
    prediction = Prediction(
        slide=slide.ref(),
        model=ModelRef(name=card.name, architecture=card.architecture, encoder=card.encoder,
                       onnx_sha256=model.sha256),
        classes=card.classes, mpp=card.input.mpp, mapping=mapping, region=out_region, shard=config.shard,
        tissue_only=config.tissue_only,
        labels=RasterFile(file="labels.tiff", width=width, height=y1 - y0, bands=1),
        probabilities=RasterFile(file="probabilities.tiff", width=width, height=y1 - y0, bands=classes),
        preview="preview.png", stain=stain_applied,
    )
    save_contract(prediction, stage / "prediction.json")
    for name in ("prediction.json", "labels.tiff", "probabilities.tiff", "preview.png", "report.json"):
        report.outputs.append(str(out / name))
    predicted = int(stats.class_pixels[:255].sum())
    report.count("tiles", stats.tiles)
    report.count("tiles_planned", total_tiles)
    report.count("cells_predicted", _cells_in_band(run_cells, grid, b0, b1))
    report.count("batches", stats.batches)
    report.count("model_calls", stats.model_calls)
    report.count("blocks", stats.blocks)
    report.count("empty_blocks", stats.empty_blocks)
    report.count("raster_width_px", width)
    report.count("raster_height_px", y1 - y0)
    report.count("predicted_pixels", predicted)
    report.count("chunk_width_px", per_chunk * BLOCK_PX)
    for entry in card.classes.trainable:
        report.count(f"pixels_{entry.name}", int(stats.class_pixels[entry.label]))
    for name, seconds in stats.timings_s.items():
        report.timings_s[name] = round(seconds, 4)
    report.environment.update(session.info)
    report.environment.update({"device": session.device, "intra_op_threads": str(session.threads),
                               "read_workers": str(workers), "fp16": str(session.fp16).lower(),
                               "cpu_count": str(os.cpu_count())})
    elapsed = time.perf_counter() - t_start
    report.count("megapixels_per_s", round(width * (y1 - y0) / 1e6 / max(elapsed, 1e-9), 4))
    log.info("wrote %s: %d tiles in %d batches, %.1f%% of %d x %d pixels predicted", out, stats.tiles,
             stats.batches, 100.0 * predicted / max(1, width * (y1 - y0)), width, y1 - y0)
    return prediction


def _cells_in_band(run_cells: np.ndarray, grid, b0: int, b1: int) -> int:
    rows = (np.arange(grid.n_rows) * grid.stride) // grid.block
    return int(run_cells[(rows >= b0) & (rows < b1)].sum())


def write_preview(path: Path, labels_tiff: Path, slide: Slide, mapping: PixelMapping, classes, max_px: int) -> None:
    """The predicted region at about `max_px` pixels, beside the same with the labels overlaid in the class
    colours, and a legend naming each class's colour (the shared renderer, slidemill.shared.preview)."""
    import tifffile

    with tifffile.TiffFile(labels_tiff) as tif:
        levels = tif.series[0].levels
        level = next((i for i, lv in enumerate(levels) if max(lv.shape[:2]) <= max_px), len(levels) - 1)
        labels = levels[level].asarray()
    if max(labels.shape) > max_px:  # the smallest level is still large: subsample
        step = math.ceil(max(labels.shape) / max_px)
        labels, level_scale = labels[::step, ::step], mapping.scale * 2**level * step
    else:
        level_scale = mapping.scale * 2**level
    h, w = labels.shape
    image = slide.read_region(mapping.origin_x, mapping.origin_y, w, h, level_scale)
    from slidemill.shared.preview import blend_labels, class_entries, compose
    from slidemill.shared.preview import write_preview as write_png

    entries = class_entries(classes)
    if (labels == 255).any():
        entries.append(("not predicted", (255, 255, 255)))
    write_png(path, compose([("slide", image), ("prediction", blend_labels(image, labels, classes))],
                            entries, legend_title="predicted class"))
