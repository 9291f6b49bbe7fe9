"""Output rasters written incrementally: finished 512 x 512 blocks are deflate-compressed as they come
(in any order) into a spill file on disk, reduced levels are made block by block from it, and each
tiled pyramidal TIFF is then assembled from the already-compressed blocks in row-major order.
Memory holds a few blocks, never a whole raster."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFLATE_LEVEL = 2  # libdeflate level 2: within 1% of level 6 on probability blocks, 2.5x faster


def deflate(arr: np.ndarray) -> bytes:
    import imagecodecs

    return imagecodecs.deflate_encode(np.ascontiguousarray(arr), level=DEFLATE_LEVEL)


def inflate(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    import imagecodecs

    return np.frombuffer(imagecodecs.deflate_decode(data), np.uint8).reshape(shape)


@dataclass(frozen=True)
class RasterSpec:
    """One output raster: `bands` uint8 samples per pixel, `fill` outside the raster and where empty."""

    name: str
    width: int
    height: int
    bands: int
    fill: int
    block: int
    downsample: str  # "nearest" (labels) or "mean" (probabilities)

    def level_sizes(self) -> list[tuple[int, int]]:
        sizes = [(self.width, self.height)]
        while max(sizes[-1]) > self.block:
            w, h = sizes[-1]
            sizes.append((math.ceil(w / 2), math.ceil(h / 2)))
        return sizes

    def block_shape(self) -> tuple[int, ...]:
        return (self.block, self.block) if self.bands == 1 else (self.block, self.block, self.bands)

    def blocks(self, level: int) -> tuple[int, int]:
        w, h = self.level_sizes()[level]
        return math.ceil(h / self.block), math.ceil(w / self.block)


class Spill:
    """An append-only file of compressed blocks with an in-memory index; thread-safe."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = open(path, "w+b")
        self._index: dict[tuple, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._size = 0
        self._empty: dict[str, tuple[int, int]] = {}

    def put(self, key: tuple, data: bytes) -> None:
        with self._lock:
            self._handle.seek(self._size)
            self._handle.write(data)
            self._index[key] = (self._size, len(data))
            self._size += len(data)

    def put_empty(self, key: tuple, spec: RasterSpec) -> None:
        """A block with nothing predicted: every such block of a raster shares one stored copy."""
        with self._lock:
            where = self._empty.get(spec.name)
        if where is None:
            data = deflate(np.full(spec.block_shape(), spec.fill, np.uint8))
            self.put(("empty", spec.name), data)
            with self._lock:
                where = self._empty[spec.name] = self._index[("empty", spec.name)]
        with self._lock:
            self._index[key] = where

    def is_empty(self, key: tuple, spec: RasterSpec) -> bool:
        with self._lock:
            return self._index.get(key) == self._empty.get(spec.name, (-1, -1))

    def get(self, key: tuple) -> bytes:
        with self._lock:
            offset, length = self._index[key]
            self._handle.seek(offset)
            return self._handle.read(length)

    def nbytes(self, name: str) -> int:
        with self._lock:
            return sum(n for k, (_, n) in self._index.items() if k[0] == name)

    def close(self) -> None:
        self._handle.close()
        self.path.unlink(missing_ok=True)


def _downsample(blocks: list[list[np.ndarray | None]], spec: RasterSpec) -> np.ndarray:
    """One block of the next level from the 2 x 2 blocks below it (None where the level ends)."""
    b = spec.block
    full = np.full((2 * b, 2 * b) + spec.block_shape()[2:], spec.fill, np.uint8)
    for di in range(2):
        for dj in range(2):
            if blocks[di][dj] is not None:
                full[di * b:(di + 1) * b, dj * b:(dj + 1) * b] = blocks[di][dj]
    if spec.downsample == "nearest":
        return np.ascontiguousarray(full[::2, ::2])
    total = (full[0::2, 0::2].astype(np.uint16) + full[1::2, 0::2] + full[0::2, 1::2] + full[1::2, 1::2] + 2)
    return (total // 4).astype(np.uint8)


def build_levels(spill: Spill, spec: RasterSpec, *, workers: int = 1) -> None:
    """Reduced levels 1.. from level 0, each block from four blocks of the level below."""
    from concurrent.futures import ThreadPoolExecutor

    shape = spec.block_shape()
    sizes = spec.level_sizes()

    def make(level: int, i: int, j: int) -> None:
        below = level - 1
        rows, cols = spec.blocks(below)
        keys = [[(spec.name, below, 2 * i + di, 2 * j + dj) for dj in range(2)] for di in range(2)]
        present = [[2 * i + di < rows and 2 * j + dj < cols for dj in range(2)] for di in range(2)]
        if all(spill.is_empty(k, spec) for row, ok in zip(keys, present, strict=True)
               for k, p in zip(row, ok, strict=True) if p):
            spill.put_empty((spec.name, level, i, j), spec)
            return
        blocks = [[inflate(spill.get(k), shape) if p else None for k, p in zip(row, ok, strict=True)]
                  for row, ok in zip(keys, present, strict=True)]
        spill.put((spec.name, level, i, j), deflate(_downsample(blocks, spec)))

    with ThreadPoolExecutor(max(1, workers)) as pool:
        for level in range(1, len(sizes)):
            rows, cols = spec.blocks(level)
            list(pool.map(lambda ij, level=level: make(level, *ij), [(i, j) for i in range(rows) for j in range(cols)]))


def write_tiff(path: Path, spill: Spill, spec: RasterSpec, *, mpp: float) -> None:
    """The pyramidal TIFF: level 0 as the first page, reduced levels as its SubIFDs; tiles copied
    compressed from the spill (tifffile writes byte iterators as they are)."""
    import tifffile

    sizes = spec.level_sizes()
    bigtiff = spill.nbytes(spec.name) > 2**31 - 2**27
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tif:
        for level, (w, h) in enumerate(sizes):
            rows, cols = spec.blocks(level)
            tiles = (spill.get((spec.name, level, i, j)) for i in range(rows) for j in range(cols))
            shape = (h, w) if spec.bands == 1 else (h, w, spec.bands)
            res = 1e4 / (mpp * 2**level)
            extra = {"extrasamples": [0] * (spec.bands - 1)} if spec.bands > 1 else {}
            tif.write(tiles, shape=shape, dtype=np.uint8, tile=(spec.block, spec.block),
                      compression="zlib", photometric="minisblack",
                      planarconfig="contig" if spec.bands > 1 else None,
                      subifds=len(sizes) - 1 if level == 0 else None, subfiletype=1 if level else 0,
                      resolution=(res, res), resolutionunit="CENTIMETER", metadata=None, **extra)
