"""The streaming core: read tiles ahead in worker threads, run the model in batches, blend the
probabilities behind it in a blending thread and compress finished blocks in a writer thread.
Every queue is bounded, so memory is set by the batch size, the tile size and the chunk width."""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from slidemill.shared.cli import Progress

from .grid import Chunk, Grid, plans
from .prediction_raster import RasterSpec, Spill, deflate

log = logging.getLogger(__name__)

FLIPS = [(), (-1,), (-2,), (-2, -1)]  # identity, horizontal, vertical, both (axes of N x C x H x W)


def blend_window(tile: int) -> np.ndarray:
    """A 2-D Hann window sampled at pixel centres: 1 in the middle, falling off smoothly toward the
    tile edges but never zero, so a pixel covered by one tile only keeps its value."""
    w = np.sin(np.pi * (np.arange(tile) + 0.5) / tile) ** 2
    return np.outer(w, w).astype(np.float32)


def _exp_and_total(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """exp(logits - max) over axis 1 of N x C x H x W and its channel sum, channel by channel (faster
    than strided reductions)."""
    top = logits[:, 0].copy()
    for c in range(1, logits.shape[1]):
        np.maximum(top, logits[:, c], out=top)
    z = logits - top[:, None]
    np.exp(z, out=z)
    total = z[:, 0].copy()
    for c in range(1, z.shape[1]):
        total += z[:, c]
    return z, total


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 1 of N x C x H x W."""
    z, total = _exp_and_total(logits)
    z /= total[:, None]
    return z


def weighted_softmax(logits: np.ndarray, window: np.ndarray) -> np.ndarray:
    """softmax(logits) * window in one pass: the window is folded into the normalising divisor."""
    z, total = _exp_and_total(logits)
    np.divide(window, total, out=total)
    z *= total[:, None]
    return z


@dataclass
class Stats:
    tiles: int = 0
    batches: int = 0
    model_calls: int = 0
    class_pixels: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    blocks: int = 0
    empty_blocks: int = 0
    timings_s: dict[str, float] = field(default_factory=dict)

    def add_time(self, name: str, seconds: float) -> None:
        self.timings_s[name] = self.timings_s.get(name, 0.0) + seconds


class _Stage(threading.Thread):
    """A thread that consumes a bounded queue until None; after an error it keeps draining so the
    producer never blocks, and the error is re-raised by the producer."""

    def __init__(self, name: str, handle: Callable, inbox: queue.Queue, after: Callable | None = None):
        super().__init__(name=name, daemon=True)
        self.handle, self.inbox, self.after = handle, inbox, after
        self.error: BaseException | None = None

    def run(self) -> None:
        while True:
            item = self.inbox.get()
            if item is None:
                break
            if self.error is None:
                try:
                    self.handle(item)
                except BaseException as exc:  # noqa: BLE001 - handed to the producer
                    self.error = exc
        if self.after is not None:
            self.after()


@dataclass
class Job:
    """One shard (band of block rows [b0, b1)) of a region raster."""

    grid: Grid
    run: np.ndarray  # cells that run (n_rows x n_cols)
    b0: int
    b1: int
    per_chunk: int
    classes: int
    labels: RasterSpec
    probabilities: RasterSpec
    # tissue-only: which pixels of a block [x0, x1) x [y0, y1) lie on tissue; None predicts whole cells
    tissue: Callable[[int, int, int, int], np.ndarray] | None = None


def events(job: Job) -> Iterator[tuple]:
    """("tile", chunk, ci, cj) and ("final", chunk, block_row) in the order they must be applied."""
    for plan in plans(job.grid, job.run, job.b0, job.b1, job.per_chunk):
        finals, k = plan.finals, 0
        for i, (ci, cj) in enumerate(plan.tiles):
            while k < len(finals) and finals[k][0] <= i:
                yield ("final", plan.chunk, finals[k][1])
                k += 1
            yield ("tile", plan.chunk, ci, cj)
        for _, bi in finals[k:]:
            yield ("final", plan.chunk, bi)


class Blender:
    """Accumulates window-weighted probabilities per open block row of a chunk; turns finished block
    rows into label and probability blocks."""

    def __init__(self, job: Job, stats: Stats, out: queue.Queue):
        self.job, self.stats, self.out = job, stats, out
        self.window = blend_window(job.grid.tile)
        self.acc: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, msg: tuple) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        metas, passes, items = msg
        weighted = None
        if len(passes) == 1:
            weighted = weighted_softmax(passes[0], self.window)
        elif passes:  # test-time augmentation: the mean of the passes' probabilities
            weighted = softmax(passes[0])
            for extra in passes[1:]:
                weighted += softmax(extra)
            weighted *= self.window / len(passes)
        for item in items:
            if item[0] == "tile":
                chunk, ci, cj = metas[item[1]]
                self.blend(chunk, ci, cj, weighted[item[1]])
            else:
                self.finalize(item[1], item[2])
        self.stats.add_time("blend", time.perf_counter() - t0)
        self.stats.add_time("blend_cpu", time.thread_time() - c0)

    def _open(self, chunk: Chunk, bi: int) -> tuple[np.ndarray, np.ndarray]:
        key = (chunk.index, bi)
        if key not in self.acc:
            g = self.job.grid
            bh = min(g.block, g.height - bi * g.block)
            cw = chunk.x1 - chunk.x0
            self.acc[key] = (np.zeros((self.job.classes, bh, cw), np.float32), np.zeros((bh, cw), np.float32))
        return self.acc[key]

    def blend(self, chunk: Chunk, ci: int, cj: int, weighted: np.ndarray) -> None:
        """Add one tile's window-weighted probabilities (C x T x T) and its window."""
        g = self.job.grid
        tx, ty = g.tile_xy(ci, cj)
        xa, xb = max(tx, chunk.x0), min(tx + g.tile, chunk.x1)
        for bi in range(max(self.job.b0, ty // g.block), min(self.job.b1, math.ceil((ty + g.tile) / g.block))):
            by0 = bi * g.block
            ya, yb = max(ty, by0), min(ty + g.tile, by0 + g.block, g.height)
            if yb <= ya or xb <= xa:
                continue
            acc, wsum = self._open(chunk, bi)
            acc[:, ya - by0:yb - by0, xa - chunk.x0:xb - chunk.x0] += weighted[:, ya - ty:yb - ty, xa - tx:xb - tx]
            wsum[ya - by0:yb - by0, xa - chunk.x0:xb - chunk.x0] += self.window[ya - ty:yb - ty, xa - tx:xb - tx]

    def finalize(self, chunk: Chunk, bi: int) -> None:
        g, job = self.job.grid, self.job
        entry = self.acc.pop((chunk.index, bi), None)
        by0 = bi * g.block
        bh = min(g.block, g.height - by0)
        for bj in range(chunk.q0, chunk.q1):
            bx0 = bj * g.block
            bw = min(g.block, g.width - bx0)
            key = (bi - job.b0, bj)
            self.stats.blocks += 1
            predicted = None if entry is None else g.pixel_mask(job.run, bx0, bx0 + bw, by0, by0 + bh)
            if predicted is not None and job.tissue is not None:
                predicted &= job.tissue(bx0, bx0 + bw, by0, by0 + bh)
            if predicted is None or not predicted.any():
                self.stats.empty_blocks += 1
                self.stats.class_pixels[255] += bh * bw
                self.out.put((key, None, None))
                continue
            acc, wsum = entry
            a = acc[:, :, bx0 - chunk.x0:bx0 - chunk.x0 + bw]
            w = wsum[:, bx0 - chunk.x0:bx0 - chunk.x0 + bw]
            labels = np.argmax(a, axis=0).astype(np.uint8)
            labels[~predicted] = 255
            probs = a / np.where(predicted, w, 1.0)
            quantised = np.clip(np.rint(probs * 255.0), 0, 255).astype(np.uint8)
            quantised[:, ~predicted] = 0
            self.stats.class_pixels += np.bincount(labels.ravel(), minlength=256)
            label_block = np.full((g.block, g.block), 255, np.uint8)
            label_block[:bh, :bw] = labels
            prob_block = np.zeros((g.block, g.block, job.classes), np.uint8)
            prob_block[:bh, :bw] = quantised.transpose(1, 2, 0)
            self.out.put((key, label_block, prob_block))


class Writer:
    def __init__(self, job: Job, spill: Spill, stats: Stats):
        self.job, self.spill, self.stats = job, spill, stats

    def __call__(self, item: tuple) -> None:
        t0, c0 = time.perf_counter(), time.thread_time()
        (i, j), label_block, prob_block = item
        lab, prob = self.job.labels, self.job.probabilities
        if label_block is None:
            self.spill.put_empty((lab.name, 0, i, j), lab)
            self.spill.put_empty((prob.name, 0, i, j), prob)
        else:
            self.spill.put((lab.name, 0, i, j), deflate(label_block))
            data = prob_block[:, :, 0] if prob.bands == 1 else prob_block
            self.spill.put((prob.name, 0, i, j), deflate(data))
        self.stats.add_time("compress", time.perf_counter() - t0)
        self.stats.add_time("compress_cpu", time.thread_time() - c0)


def predict(job: Job, *, read_tile: Callable[[int, int], np.ndarray], model: Callable[[np.ndarray], np.ndarray],
            spill: Spill, batch_size: int, workers: int, tta: str, total_tiles: int) -> Stats:
    """Run the job: tiles read by `workers` threads ahead of the model, blended and written behind it."""
    stats = Stats()
    blend_q: queue.Queue = queue.Queue(maxsize=2)
    write_q: queue.Queue = queue.Queue(maxsize=16)
    writer = _Stage("slidemill-infer-writer", Writer(job, spill, stats), write_q)
    blender = _Stage("slidemill-infer-blender", Blender(job, stats, write_q), blend_q, after=lambda: write_q.put(None))
    writer.start()
    blender.start()
    flips = FLIPS if tta == "flips" else FLIPS[:1]
    read_time = [0.0, 0.0]
    lock = threading.Lock()

    def timed_read(ci: int, cj: int) -> np.ndarray:
        t0, c0 = time.perf_counter(), time.thread_time()
        arr = read_tile(ci, cj)
        with lock:
            read_time[0] += time.perf_counter() - t0
            read_time[1] += time.thread_time() - c0
        return arr

    def flush(metas: list, arrays: list, items: list) -> None:
        passes = []
        if arrays:
            batch = np.stack(arrays)
            t0, c0 = time.perf_counter(), time.thread_time()
            for axes in flips:
                x = np.ascontiguousarray(np.flip(batch, axes)) if axes else batch
                out = model(x)
                passes.append(np.ascontiguousarray(np.flip(out, axes)) if axes else out)
                stats.model_calls += 1
            stats.add_time("model", time.perf_counter() - t0)
            stats.add_time("model_caller_cpu", time.thread_time() - c0)
            stats.batches += 1
            stats.tiles += len(arrays)
        for stage in (blender, writer):
            if stage.error is not None:
                raise stage.error
        blend_q.put((metas, passes, items))

    prefetch = max(2 * batch_size, 2 * workers)
    try:
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="slidemill-infer-read") as pool, \
                Progress(total_tiles, "infer", "tiles") as progress:
            pending: deque = deque()
            stream = events(job)
            exhausted = False
            metas: list = []
            arrays: list = []
            items: list = []
            t_wait = 0.0
            while True:
                while not exhausted and len(pending) < prefetch:
                    event = next(stream, None)
                    if event is None:
                        exhausted = True
                        break
                    future = pool.submit(timed_read, event[2], event[3]) if event[0] == "tile" else None
                    pending.append((event, future))
                if not pending:
                    break
                event, future = pending.popleft()
                if event[0] == "tile":
                    t0 = time.perf_counter()
                    arrays.append(future.result())
                    t_wait += time.perf_counter() - t0
                    metas.append((event[1], event[2], event[3]))
                    items.append(("tile", len(metas) - 1))
                    if len(arrays) == batch_size:
                        flush(metas, arrays, items)
                        progress.advance(len(arrays))
                        metas, arrays, items = [], [], []
                else:
                    items.append(event)
            if items:
                flush(metas, arrays, items)
                progress.advance(len(arrays))
            for _, future in pending:
                if future is not None:
                    future.cancel()
    finally:
        blend_q.put(None)
        blender.join()
        writer.join()
    for stage in (blender, writer):
        if stage.error is not None:
            raise stage.error
    stats.add_time("read", read_time[0])
    stats.add_time("read_cpu", read_time[1])
    stats.add_time("wait_for_tiles", t_wait)
    return stats
