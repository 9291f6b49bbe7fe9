"""Where the tiles go, which tiles run, and in what order.

Raster coordinates are pixels of the output raster (the region at the model's mpp). The raster is
cut into *cells* of stride x stride pixels; the tile of cell (ci, cj) is the tile_size square centred
on it, so every cell lies in the inner part of its own tile where the blending window is high. A
cell is predicted when its tile runs (tissue-only: when the tissue mask touches the cell).

Output *blocks* are the 512 x 512 TIFF tiles. A shard owns a band of block rows; block columns are
processed in chunks (so the accumulators are bounded by the chunk width, not the slide width), and
every chunk computes every running tile that overlaps a predicted cell inside it, in row-major order.
So each output pixel gets the same tiles, added in the same order, whatever the shard.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from slidemill.shared.errors import InputError


@dataclass(frozen=True)
class Grid:
    width: int  # raster pixels
    height: int
    tile: int
    stride: int
    block: int

    @property
    def margin(self) -> int:
        return (self.tile - self.stride) // 2

    @property
    def n_rows(self) -> int:
        return math.ceil(self.height / self.stride)

    @property
    def n_cols(self) -> int:
        return math.ceil(self.width / self.stride)

    @property
    def n_block_rows(self) -> int:
        return math.ceil(self.height / self.block)

    @property
    def n_block_cols(self) -> int:
        return math.ceil(self.width / self.block)

    def tile_xy(self, ci: int, cj: int) -> tuple[int, int]:
        """Raster position of the top-left corner of cell (ci, cj)'s tile (may be negative)."""
        return cj * self.stride - self.margin, ci * self.stride - self.margin

    def pixel_mask(self, run: np.ndarray, x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
        """Predicted pixels of raster rectangle [x0, x1) x [y0, y1)."""
        rows = np.arange(y0, y1) // self.stride
        cols = np.arange(x0, x1) // self.stride
        return run[np.ix_(rows, cols)]


def make_grid(width: int, height: int, tile: int, overlap: float, block: int) -> Grid:
    overlap_px = int(round(overlap * tile))
    stride = max(1, tile - overlap_px)
    return Grid(width=width, height=height, tile=tile, stride=stride, block=block)


def shard_band(grid: Grid, run: np.ndarray, index: int, count: int) -> tuple[int, int]:
    """Block rows [b0, b1) of shard `index` of `count`: contiguous bands holding about the same
    number of running tiles (all block rows count equally when nothing runs)."""
    rows = grid.n_block_rows
    if count > rows:
        raise InputError(f"--shard {index}/{count}: the region is only {rows} block row(s) of {grid.block} "
                         f"raster pixels high, so it cannot be split into {count} shards",
                         fix=f"Use at most {rows} shards for this slide and model, or predict it unsharded")
    work = np.zeros(rows, np.float64)
    cell_block_row = (np.arange(grid.n_rows) * grid.stride) // grid.block
    np.add.at(work, cell_block_row, run.sum(axis=1))
    if work.sum() == 0:
        work[:] = 1.0
    cumulative = np.cumsum(work)
    total = cumulative[-1]
    bounds = [0]
    for k in range(1, count):
        b = int(np.searchsorted(cumulative, k * total / count, side="left")) + 1
        b = max(b, bounds[-1] + 1)
        b = min(b, rows - (count - k))
        bounds.append(b)
    bounds.append(rows)
    return bounds[index], bounds[index + 1]


def chunk_blocks(grid: Grid, classes: int, budget_bytes: int) -> int:
    """Block columns per chunk so that the open accumulators (float32 probabilities and weights of
    the block rows a tile can span) fit the budget."""
    open_rows = math.ceil(grid.tile / grid.block) + 1
    per_block_col = open_rows * grid.block * grid.block * (classes + 1) * 4
    return int(max(1, min(grid.n_block_cols, budget_bytes // per_block_col)))


@dataclass(frozen=True)
class Chunk:
    index: int
    x0: int  # raster columns [x0, x1)
    x1: int
    q0: int  # block columns [q0, q1)
    q1: int


@dataclass
class ChunkPlan:
    chunk: Chunk
    tiles: list[tuple[int, int]]  # (ci, cj), row-major
    finals: list[tuple[int, int]]  # (number of tiles after which it is final, block row)


def chunks(grid: Grid, per_chunk: int) -> list[Chunk]:
    out = []
    for k, q0 in enumerate(range(0, grid.n_block_cols, per_chunk)):
        q1 = min(q0 + per_chunk, grid.n_block_cols)
        out.append(Chunk(k, q0 * grid.block, min(q1 * grid.block, grid.width), q0, q1))
    return out


def plan_chunk(grid: Grid, run: np.ndarray, run_integral: np.ndarray, chunk: Chunk,
               b0: int, b1: int) -> ChunkPlan:
    """The tiles one chunk of the band of block rows [b0, b1) needs, and when each block row is done."""
    s, t, m = grid.stride, grid.tile, grid.margin
    y0, y1 = b0 * grid.block, min(b1 * grid.block, grid.height)
    x0, x1 = chunk.x0, chunk.x1

    def predicted_in(ya: int, yb: int, xa: int, xb: int) -> bool:
        r0, r1 = ya // s, (yb - 1) // s + 1
        c0, c1 = xa // s, (xb - 1) // s + 1
        total = run_integral[r1, c1] - run_integral[r0, c1] - run_integral[r1, c0] + run_integral[r0, c0]
        return bool(total > 0)

    tiles: list[tuple[int, int]] = []
    ci_lo = max(0, math.ceil((y0 - t + m + 1) / s))
    ci_hi = min(grid.n_rows - 1, (y1 - 1 + m) // s)
    cj_lo = max(0, math.ceil((x0 - t + m + 1) / s))
    cj_hi = min(grid.n_cols - 1, (x1 - 1 + m) // s)
    for ci in range(ci_lo, ci_hi + 1):
        ty = ci * s - m
        ya, yb = max(ty, y0), min(ty + t, y1)
        if yb <= ya:
            continue
        for cj in np.flatnonzero(run[ci, cj_lo:cj_hi + 1]) + cj_lo:
            tx = int(cj) * s - m
            xa, xb = max(tx, x0), min(tx + t, x1)
            if xb > xa and predicted_in(ya, yb, xa, xb):
                tiles.append((ci, int(cj)))
    tops = [grid.tile_xy(ci, cj)[1] for ci, cj in tiles]
    finals = [(bisect.bisect_left(tops, (bi + 1) * grid.block), bi) for bi in range(b0, b1)]
    return ChunkPlan(chunk=chunk, tiles=tiles, finals=finals)


def integral(run: np.ndarray) -> np.ndarray:
    out = np.zeros((run.shape[0] + 1, run.shape[1] + 1), np.int64)
    out[1:, 1:] = np.cumsum(np.cumsum(run.astype(np.int64), axis=0), axis=1)
    return out


def plans(grid: Grid, run: np.ndarray, b0: int, b1: int, per_chunk: int) -> Iterator[ChunkPlan]:
    """Chunk plans one at a time (only one chunk's tile list is ever held)."""
    run_integral = integral(run)
    for chunk in chunks(grid, per_chunk):
        yield plan_chunk(grid, run, run_integral, chunk, b0, b1)


def count_tiles(grid: Grid, run: np.ndarray, b0: int, b1: int, per_chunk: int) -> int:
    return sum(len(p.tiles) for p in plans(grid, run, b0, b1, per_chunk))
