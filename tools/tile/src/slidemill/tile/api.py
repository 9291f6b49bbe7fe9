"""`run(config)` writes a tileset folder; `iter_tiles(...)` yields the very same tiles and masks
without writing anything (notebooks, PyTorch datasets)."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import cv2
import numpy as np

from slidemill.shared.classes import IGNORE_LABEL
from slidemill.shared.cli import Progress, worker_count
from slidemill.shared.contracts import TileRecord, TileSet, TileStoreInfo, TilingParams, save_contract
from slidemill.shared.errors import InputError
from slidemill.shared.lifecycle import ToolRun
from slidemill.shared.report import ReportBuilder
from slidemill.shared.stain import SlideStain, fit_slide_stain
from slidemill.shared.tilestore import (
    CONTAINER_NAME,
    IMAGE_CODECS,
    SHAPES_NAME,
    ContainerWriter,
    open_tileset,
    write_shapes,
)
from slidemill.shared.tiletable import ROWS_NAME, TileRowWriter
from slidemill.shared.workers import bounded_map, worker_pool

from . import render
from .config import TileConfig
from .plan import Tile, TilePlan, make_plan
from .pngenc import write_png
from .render import TileSpec

log = logging.getLogger(__name__)

TOOL = "slidemill-tile"
# tiles per task sent to a worker: about 16 MB of pixels (4 to 256 tiles). A task's round trip through
# the process pool costs milliseconds of scheduling on a busy machine, so tasks of 4 large tiles
# made two workers slower than one; memory stays bounded by tile size x workers (a few tasks each).
BATCH_BYTES = 16 << 20


MALLOC_TUNING = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(128 << 20)}


def batch_size(tile_px: int, tiles: int, workers: int) -> int:
    """Tiles per worker task for `tiles` tiles of `tile_px` (image and mask: 4 bytes a pixel), at
    least 8 tasks per worker so that the work stays balanced."""
    return max(4, min(256, BATCH_BYTES // (4 * tile_px * tile_px), -(-tiles // (8 * workers))))
PREVIEW_MAX_PX = 1600
# a worker process costs about a second to start (imports, opening the slide): small jobs stay in one
MIN_TILES_PER_WORKER = 32


@dataclass
class TileResult:
    out: Path
    tileset: TileSet
    tiles_written: int
    megapixels: float
    seconds: float
    warnings: list[str]


def _config(slide_or_config: TileConfig | str | Path, options: dict[str, Any]) -> TileConfig:
    if isinstance(slide_or_config, TileConfig):
        # re-validated, so an option given here is checked like one given to TileConfig
        return TileConfig.model_validate({**dict(slide_or_config), **options}) if options else slide_or_config
    return TileConfig(slide=Path(slide_or_config), **options)


def plan_tiles(slide: TileConfig | str | Path, **options) -> TilePlan:
    """Validate the inputs and decide the tiles (no pixel of a tile read yet). `plan[i]`-style access
    through `plan.tile(i)`, `len(plan)` tiles; `plan.classes` is the class table."""
    return make_plan(_config(slide, options))


def _chunks(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


# what a worker needs, imported once by the fork server (not by every worker): a spawned worker spent
# ~0.7 CPU-s starting (a fresh interpreter importing numpy, pydantic, large-image, the tile package,
# and the console script as `__mp_main__`), one per worker per run
WORKER_PRELOAD = ["__main__", "slidemill.tile.render", "slidemill.shared.slide", "slidemill.shared.tilestore",
                  "large_image", "tifffile", "imagecodecs", "numcodecs", "zarr", "cv2", "shapely"]


def _mp_context():
    """forkserver where the platform has it (Linux, macOS), else spawn. The fork server is a fresh
    interpreter that only imports `WORKER_PRELOAD` (no slide is opened and no thread runs in it), so
    workers forked from it start in milliseconds and still open the slide themselves: no file
    handle or reader thread of this process crosses a fork."""
    import multiprocessing

    # glibc's malloc in a fresh process serves each ~1 MB tile buffer by mmap and gives it back at once,
    # so every numpy temporary page-faults anew: measured 2.6x the CPU per tile in a worker against the
    # same loop in a long-lived process. Fixed thresholds keep such buffers on the heap; the fork server
    # and the workers read them from the environment at start (a value the user set wins).
    for name, value in MALLOC_TUNING.items():
        os.environ.setdefault(name, value)
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_PRELOAD)  # used when this process starts its fork server
    return context


def tune_malloc() -> None:
    """`MALLOC_TUNING` for this process too (glibc's `mallopt`; elsewhere nothing): with one worker
    the tiles are cut here, where the same page faults cost 1.38x the CPU per tile (cProfile, 400
    tiles of 512 px into zarr: 1.41 CPU-s against 1.02); with more, the chunks received from the
    workers are such buffers too. A threshold the user set in the environment wins."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    options = {"MALLOC_TRIM_THRESHOLD_": -1, "MALLOC_MMAP_THRESHOLD_": -3}  # M_TRIM_THRESHOLD, M_MMAP_THRESHOLD
    for name, option in options.items():
        value = os.environ.get(name, MALLOC_TUNING[name])  # set by the user, or by _mp_context (ours)
        if value.isdigit():  # glibc ignores a value it cannot read; so does this
            mallopt(option, int(value))


def _workers_for(requested: int, tiles: int) -> int:
    """Worker processes for `tiles` tiles: at most `requested`, at least `MIN_TILES_PER_WORKER` tiles each."""
    return min(requested, max(1, tiles // MIN_TILES_PER_WORKER))


def start_workers_early(workers: int) -> None:
    """Start the fork server now (it imports in its own process while this one goes on setting up the
    store), so the pool's workers wait less for it: no effect with spawn or one worker."""
    if workers > 1 and _mp_context().get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _executor(plan: TilePlan, workers: int, container: tuple = ()):
    """Worker processes with the plan's renderer (and, for a container store, the zip's appender:
    `render.init_worker`); a worker's abrupt end is a `WorkerError`."""
    return worker_pool(workers, _mp_context(), render.init_worker, (plan.renderer, *container),
                       what=f"cutting tiles of {plan.slide_ref.name}")


def iter_tiles(slide: TileConfig | str | Path, *, workers: int = 1, plan: TilePlan | None = None,
               **options) -> Iterator[Tile]:
    """Yield every tile `slidemill-tile` would write (same order, pixels and masks), writing nothing.

    `slide` is a slide path (options as in `TileConfig`: `annotations=[...]`, `mpp=0.5`, ...), a
    `TileConfig`, or a tileset folder / tileset.json written by `run` (its stored tiles are read
    through `read_tileset`, whatever the store: the same pixels as cutting again for the lossless stores).
    With `workers > 1` tiles are read in worker processes, at most a few per worker
    ahead of the consumer.
    """
    if plan is None and not isinstance(slide, TileConfig) and _is_tileset(slide):
        if options:
            raise InputError(f"options {sorted(options)} do not apply to a tileset, which is already cut",
                             path=slide, fix="Give the slide itself to cut it differently")
        yield from read_tileset(slide)
        return
    plan = plan or plan_tiles(slide, **options)
    if workers <= 1 or len(plan) <= 1:
        renderer = plan.renderer
        for batch in _chunks(plan.specs, batch_size(renderer.tile_size_px, len(plan), 1)):
            for spec, image, mask in render.render_batch(renderer, batch):
                yield Tile(spec=spec, image=image, mask=mask, class_fractions=renderer.class_fractions(mask))
        return
    with _executor(plan, workers) as pool:
        size = batch_size(plan.renderer.tile_size_px, len(plan), workers)
        for batch in bounded_map(pool, render.worker_render, _chunks(plan.specs, size), 2 * workers):
            for spec, image, mask, fractions in batch:
                yield Tile(spec=spec, image=image, mask=mask, class_fractions=fractions)


def _is_tileset(path: str | Path) -> bool:
    path = Path(path)
    return (path.is_dir() and (path / "tileset.json").is_file()) or (path.is_file() and path.name == "tileset.json")


def read_tileset(path: str | Path, *, slide: str | Path | None = None) -> Iterator[Tile]:
    """Every tile of a written tileset (png, zarr or refs store; `slide` gives a refs tileset's slide
    again when it moved), as `Tile`s in manifest order, through the shared tileset reader."""
    reader = open_tileset(path, slide=slide)
    for i, r in enumerate(reader.records()):
        image, mask = reader.read(i)
        spec = TileSpec(index=r.index, row=r.row, col=r.col, x=r.x, y=r.y, width=r.width, height=r.height,
                        pad_right_px=r.pad_right_px, pad_bottom_px=r.pad_bottom_px, tissue_fraction=r.tissue_fraction)
        yield Tile(spec=spec, image=image, mask=mask, class_fractions=dict(r.class_fractions))


# --- preview -----------------------------------------------------------------------------------


TISSUE_OUTLINE_RGB = (0, 160, 0)
TILE_RGB = (40, 90, 220)


def draw_preview(plan: TilePlan) -> np.ndarray:
    """Thumbnail with the tissue outline (green), the kept tiles (blue) and the annotations (class colours),
    beside a legend naming each colour (the shared renderer, slidemill.shared.preview)."""
    slide = plan.renderer.open()
    side = min(PREVIEW_MAX_PX, max(slide.width, slide.height))
    if side <= max(plan.thumbnail.shape[:2]):
        img, scale = plan.thumbnail.copy(), plan.tissue.scale
    else:
        img, scale = slide.thumbnail(side)  # level-0 px per preview px
    tissue = cv2.resize(plan.tissue.mask.astype(np.uint8), (img.shape[1], img.shape[0]),
                        interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(tissue, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(img, contours, -1, TISSUE_OUTLINE_RGB, 2)
    if plan.classes is not None and plan.annotation_shapes:
        overlay = img.copy()
        palette = plan.classes.palette()
        for shape in sorted(plan.annotation_shapes, key=lambda s: -s.geometry.area):
            color = tuple(int(v) for v in palette.get(shape.label, (180, 180, 180)))
            parts = getattr(shape.geometry, "geoms", [shape.geometry])
            for part in parts:
                ext = np.round(np.asarray(part.exterior.coords)[:, :2] / scale).astype(np.int32)
                cv2.fillPoly(overlay, [ext], color)
                for ring in part.interiors:
                    hole = np.round(np.asarray(ring.coords)[:, :2] / scale).astype(np.int32)
                    cv2.fillPoly(overlay, [hole], (255, 255, 255))
                cv2.polylines(img, [ext], True, color, 1)
        img = cv2.addWeighted(overlay, 0.35, img, 0.65, 0)
    rows = plan.specs.rows
    corners = np.stack([rows["x"], rows["y"], rows["x"] + rows["width"], rows["y"] + rows["height"]], axis=1)
    for x0, y0, x1, y1 in np.round(corners / scale).astype(np.int64).tolist():
        cv2.rectangle(img, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), TILE_RGB, 1)
    from slidemill.shared.preview import class_entries, compose

    entries = [("tissue (detected)", TISSUE_OUTLINE_RGB), (f"kept tile ({len(plan.specs)})", TILE_RGB)]
    if plan.classes is not None and plan.annotation_shapes:
        entries += class_entries(plan.classes, labels={s.label for s in plan.annotation_shapes})
        if any(s.label == IGNORE_LABEL for s in plan.annotation_shapes):
            color = plan.classes.palette().get(IGNORE_LABEL, (180, 180, 180))
            entries.append(("ignored (not trained)", tuple(int(v) for v in color)))
    return compose([(f"{plan.slide_ref.name}: tiles and annotations", img)], entries, legend_title="legend")


# --- the command -------------------------------------------------------------------------------


class _Rows:
    """The manifest's tile rows, streamed to the rows file as tiles are finished (in index order):
    nothing per tile stays in memory."""

    def __init__(self, plan: TilePlan, store: str, writer: TileRowWriter):
        self.plan, self.writer = plan, writer
        self.files = store == "png"
        self.masks = self.files and plan.classes is not None

    def add(self, index: int, fractions: dict[str, float]) -> None:
        s = self.plan.specs[index]
        self.writer.add(TileRecord(
            index=s.index, col=s.col, row=s.row, x=s.x, y=s.y, width=s.width, height=s.height,
            pad_right_px=s.pad_right_px, pad_bottom_px=s.pad_bottom_px, tissue_fraction=s.tissue_fraction,
            class_fractions=fractions, image=f"tiles/{s.stem}.png" if self.files else None,
            mask=f"masks/{s.stem}.png" if self.masks else None))


def _slide_path_from(out: Path, slide: Path) -> str:
    """The slide relative to the output folder ('/'-separated; absolute only across drives)."""
    try:
        rel = os.path.relpath(Path(slide).resolve(), Path(out).resolve())
    except ValueError:
        raise InputError("the slide and --out lie on different drives, so a refs tileset cannot point to the "
                         "slide relatively", path=slide, fix="Use --store zarr, or an --out on the slide's drive") \
            from None
    return PurePath(rel).as_posix()


def _store_info(config: TileConfig, out: Path) -> TileStoreInfo:
    if config.store == "png":
        return TileStoreInfo(kind="png")
    if config.store == "zarr":
        return TileStoreInfo(kind="zarr", container=CONTAINER_NAME, image_codec=config.image_codec,
                             lossless=IMAGE_CODECS[config.image_codec])
    return TileStoreInfo(kind="refs", container=CONTAINER_NAME, slide_path=_slide_path_from(out, config.slide),
                         shapes=SHAPES_NAME if config.annotations else None)


def _store_outputs(config: TileConfig, plan: TilePlan) -> list[str]:
    if config.store == "png":
        return [ROWS_NAME, "tiles", "masks"] if plan.classes is not None else [ROWS_NAME, "tiles"]
    if config.store == "refs" and config.annotations:
        return [ROWS_NAME, CONTAINER_NAME, SHAPES_NAME]
    return [ROWS_NAME, CONTAINER_NAME]


def _write_png_store(plan: TilePlan, config: TileConfig, stage: Path, workers: int, rows: _Rows,
                     progress: Progress) -> None:
    (stage / "tiles").mkdir()
    if plan.classes is not None:
        (stage / "masks").mkdir()
    size = batch_size(config.tile_size_px, len(plan), workers)
    if workers <= 1:
        for batch in _chunks(plan.specs, size):
            for index, frac in render.write_batch(plan.renderer, stage, config.png_compression, batch):
                rows.add(index, frac)
            progress.advance(len(batch))
        return
    with _executor(plan, workers) as pool:
        for batch in bounded_map(pool, render.worker_write, _chunks(plan.specs, size), 3 * workers,
                                  stage, config.png_compression):
            for index, frac in batch:
                rows.add(index, frac)
            progress.advance(len(batch))


def _write_container_store(plan: TilePlan, config: TileConfig, stage: Path, workers: int, rows: _Rows,
                           progress: Progress) -> None:
    """zarr: images and masks in one zip container; refs: masks only (no pixel of the slide read).
    Workers render and encode; this process only appends the chunks to the zip."""
    codec = config.image_codec if config.store == "zarr" else None
    masks = plan.classes is not None
    if config.store == "refs" and config.annotations:
        write_shapes(stage / SHAPES_NAME, plan.annotation_shapes, plan.renderer.fill_label)
    writer = ContainerWriter(stage / CONTAINER_NAME, len(plan), config.tile_size_px, codec=codec, masks=masks)
    try:
        if codec is None and not masks:
            for index in range(len(plan)):  # positions only: nothing to read or draw
                rows.add(index, {})
            progress.advance(len(plan))
        elif workers <= 1:
            for batch in _chunks(plan.specs, batch_size(config.tile_size_px, len(plan), 1)):
                for index, frac, image, mask in render.encode_batch(plan.renderer, codec, batch):
                    writer.put(index, image, mask)
                    rows.add(index, frac)
                progress.advance(len(batch))
        else:
            _encode_in_workers(plan, config, workers, codec, writer, rows, progress)
    except BaseException:
        writer.abort()
        raise
    writer.close()


def _encode_in_workers(plan: TilePlan, config: TileConfig, workers: int, codec: str | None,
                       writer: ContainerWriter, rows: _Rows, progress: Progress) -> None:
    """Workers encode a batch each and write it, as finished zip entries, into the container at the
    next free offset (`render.worker_encode_append`, `ContainerWriter.appender`); this process lists
    the entries and writes the rows. The chunks are written once, by the process that made them:
    sent through the pool's pipe instead (pickled, in 64 KB pieces, unpickled), 2.5 GB of chunks cost
    ~3.5 CPU-s more in all than one worker (6,400 tiles of 512 px), and copied into the zip by this
    process (from a scratch file the workers wrote), ~20 % of its time in the tile phase."""
    size = batch_size(config.tile_size_px, len(plan), workers)
    appender = writer.appender(_mp_context())
    with _executor(plan, workers, (appender,)) as pool:
        for at, entries, batch_rows in bounded_map(pool, render.worker_encode_append, _chunks(plan.specs, size),
                                                    3 * workers, codec):
            writer.listed(at, entries)
            for index, frac in batch_rows:
                rows.add(index, frac)
            progress.advance(len(batch_rows))


def fit_stain_models(plan: TilePlan, report: ReportBuilder) -> SlideStain:
    """Both stain models of the plan's slide, fitted once on the tissue thumbnail the plan already holds
    (`fit_slide_stain`), for train's --stain-normalisation; what was not fitted is logged and warned with why."""
    stain = fit_slide_stain(plan.renderer.open(), plan.tissue, tissue_mpp=plan.config.tissue_mpp)
    fitted = [m for m in ("macenko", "reinhard") if stain.get(m) is not None]
    report.environment["stain_fitted"] = ",".join(fitted) or "none"
    if fitted:
        log.info("%s: stain models fitted on the tissue thumbnail: %s", plan.slide_ref.name, ", ".join(fitted))
    reasons = sorted(set(stain.not_fitted.values()))
    for reason in reasons:
        methods = " and ".join(m.capitalize() for m, r in stain.not_fitted.items() if r == reason)
        message = f"{methods} stain model(s) not fitted: {reason} (train's --stain-normalisation cannot use it)"
        log.info("%s: %s", plan.slide_ref.name, message)
        report.warn(message)
    return stain


def _side_outputs(plan: TilePlan, stage: Path, report: ReportBuilder) -> SlideStain:
    """The stain models, `tissue.png` and `preview.png`: from the plan's thumbnail, not the tiles."""
    with report.timed("stain"):
        stain = fit_stain_models(plan, report)
    with report.timed("write"):
        write_png(stage / "tissue.png", plan.tissue.mask.astype(np.uint8) * 255, 6)
        write_png(stage / "preview.png", draw_preview(plan), 6)
    return stain


def run(config: TileConfig, *, argv: list[str] | None = None) -> TileResult:
    """Cut the slide into tiles and masks under `config.out` (all or nothing), with a manifest,
    tissue mask, preview and report."""
    if config.out is None:
        raise InputError("no output folder given", fix="Pass --out DIR")
    with ToolRun(TOOL, argv, out=config.out, kind="folder", overwrite=config.overwrite) as life:
        life.check_output()
        return _tile(config, life)


def _tile(config: TileConfig, life: ToolRun) -> TileResult:
    out, report = life.out, life.report
    t0 = time.perf_counter()
    requested = worker_count(config.workers)
    with report.timed("plan"):
        # the fork server imports (~1 CPU-s) on another core while the tissue is found and the
        # annotations read, once the grid is large enough to be worth workers at all
        plan = make_plan(config, on_grid=lambda tiles: start_workers_early(_workers_for(requested, tiles)))
    for message in plan.warnings:
        report.warn(message)
    workers = _workers_for(requested, len(plan))
    start_workers_early(workers)
    tune_malloc()
    if not plan.specs:
        report.warn(f"the tileset is empty: {plan.empty_reason}")
    log.info("%s: %d of %d tiles to write (%d x %d px at %.4g um/px, %d worker(s))", plan.slide_ref.name,
             len(plan), plan.grid_cols * plan.grid_rows, config.tile_size_px, config.tile_size_px,
             config.target_mpp, workers)
    stage = life.start()
    # with worker processes this one mostly waits for their tiles: it fits the stain and draws the
    # preview meanwhile, in a thread (from the plan's thumbnail; the workers have their own slides)
    with ThreadPoolExecutor(1) if workers > 1 else contextlib.nullcontext() as side:
        pending = side.submit(_side_outputs, plan, stage, report) if side is not None else None
        with (report.timed("tiles"), Progress(len(plan), "tiles", "tiles") as progress,
              TileRowWriter(stage / ROWS_NAME) as writer):
            rows = _Rows(plan, config.store, writer)
            if config.store == "png":
                _write_png_store(plan, config, stage, workers, rows, progress)
            else:
                _write_container_store(plan, config, stage, workers, rows, progress)
        stain = pending.result() if pending is not None else _side_outputs(plan, stage, report)
    if writer.count != len(plan):
        raise RuntimeError(f"wrote {writer.count} tile rows for {len(plan)} tiles")
    with report.timed("write"):
        params = TilingParams(mpp=config.target_mpp, tile_size_px=config.tile_size_px,
                              overlap_px=config.overlap_px,
                              tissue_threshold=None if config.all_tiles else config.tissue_threshold,
                              annotated_only=config.annotated_only, background_class=config.background_class,
                              tissue_mode=plan.tissue_mode)
        tileset = TileSet(slide=plan.slide_ref, params=params, mapping=plan.mapping, classes=plan.classes,
                          tissue_mask="tissue.png", preview="preview.png", store=_store_info(config, out),
                          stain=stain, tiles_file=ROWS_NAME, tile_count=len(plan))
        save_contract(tileset, stage / "tileset.json", indent=1)
    megapixels = len(plan) * config.tile_size_px ** 2 / 1e6
    seconds = time.perf_counter() - t0
    report.inputs = [str(config.slide), *(str(a) for a in config.annotations)]
    if config.classes_file:
        report.inputs.append(str(config.classes_file))
    report.outputs = [str(out / n) for n in ("tileset.json", *_store_outputs(config, plan), "tissue.png",
                                               "preview.png")]
    stats = plan.stats
    report.counts.update({
        "tiles_written": len(plan), "grid_tiles": plan.grid_cols * plan.grid_rows,
        "grid_cols": plan.grid_cols, "grid_rows": plan.grid_rows, "megapixels": round(megapixels, 3),
        "workers": workers, "tissue_fraction_of_slide": round(float(plan.tissue.mask.mean()), 4),
        "annotation_files": stats.files, "annotations_read": stats.shapes, "annotations_used": stats.used,
        "annotations_repaired": stats.repaired, "annotations_skipped": stats.skipped,
        "annotations_unclassified_skipped": stats.unclassified, "annotations_outside_slide": stats.outside,
    })
    report.counts["megapixels_per_s"] = round(megapixels / max(report.timings_s.get("tiles", 0), 1e-9), 3)
    report.environment["slide_reader"] = plan.slide_ref.reader
    report.environment["tissue_mode"] = plan.tissue_mode
    report.environment["tile_store"] = config.store
    log.info("wrote %d tiles (%.1f MP) to %s in %.1f s", len(plan), megapixels, out, seconds)
    return TileResult(out=out, tileset=tileset, tiles_written=len(plan), megapixels=megapixels, seconds=seconds,
                      warnings=list(report.warnings))
