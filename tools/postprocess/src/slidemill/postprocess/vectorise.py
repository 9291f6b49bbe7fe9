"""Label raster to polygons, chunk by chunk with a halo, stitched exactly.

Coordinates here are raster pixel corners: pixel (i, j) (column i, row j) is the square
[i, i+1] x [j, j+1]. A labelled block of pixels becomes a polygon whose vertices are exactly those
corners; holes are interior rings. Smoothing blurs every label at once and gives each pixel the
label blurred highest; opening and closing work on each class's own binary mask, and a pixel that
several classes' closings claim goes to one of them, so the classes never overlap. Pixels labelled
255 belong to no class.

Chunking: every chunk's core is processed with a halo wide enough for the smoothing and morphology
to see every pixel they depend on, so a core's cleaned mask is identical to the same pixels of the
cleaned whole raster. Shapes that do not reach an inner chunk edge are final at once; the others
are unioned with their neighbours across chunk edges at the end. Memory is bounded by the chunk
size (plus the output shapes themselves).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import shapely
from shapely.geometry import Polygon

from slidemill.shared.contracts import RasterFile
from slidemill.shared.shapes import dissolve, drop_collinear, polygon_parts

log = logging.getLogger(__name__)

NOT_PREDICTED = 255


@dataclass(frozen=True)
class MaskOps:
    """Raster clean-up applied to each class mask, in raster pixels, in this order."""

    smooth_sigma_px: float = 0.0
    open_radius_px: int = 0
    close_radius_px: int = 0

    @property
    def smooth_radius_px(self) -> int:
        return int(math.ceil(3 * self.smooth_sigma_px)) if self.smooth_sigma_px > 0 else 0

    @property
    def halo_px(self) -> int:
        """How far a cleaned pixel's value reaches: blur radius + 2 x opening + 2 x closing radius."""
        return self.smooth_radius_px + 2 * self.open_radius_px + 2 * self.close_radius_px

    @property
    def identity(self) -> bool:
        return self.halo_px == 0


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def clean_mask(mask: np.ndarray, ops: MaskOps) -> np.ndarray:
    """Smooth (Gaussian, kept where the blurred mask is above one half), open, then close a 0/1 mask."""
    out = mask.astype(np.uint8)
    if ops.smooth_sigma_px > 0:
        # OpenCV blurs 8-bit images with bit-exact fixed-point arithmetic: fast, and the same value
        # for a pixel whichever chunk it is computed in
        k = 2 * ops.smooth_radius_px + 1
        blurred = cv2.GaussianBlur(out * np.uint8(255), (k, k), ops.smooth_sigma_px, borderType=cv2.BORDER_CONSTANT)
        out = (blurred > 127).view(np.uint8)
    if ops.open_radius_px > 0:
        out = cv2.morphologyEx(out, cv2.MORPH_OPEN, _disk(ops.open_radius_px), borderType=cv2.BORDER_CONSTANT,
                               borderValue=0)
    if ops.close_radius_px > 0:
        out = cv2.morphologyEx(out, cv2.MORPH_CLOSE, _disk(ops.close_radius_px), borderType=cv2.BORDER_CONSTANT,
                               borderValue=0)
    return out


def smooth_labels(labels: np.ndarray, sigma_px: float, inside: np.ndarray | None = None) -> np.ndarray:
    """A label raster smoothed as a partition: every label present (255 "not predicted" too) is
    blurred as a 0/1 mask (Gaussian, `sigma_px`, radius ceil(3 sigma)) and each pixel takes the label
    whose blurred mask is highest there (a tie keeps the pixel's own label if it is among the
    highest, else the lowest label). With two labels this is the "blurred mask above one half" rule;
    with more, classes still never overlap nor leave a gap. Pixels outside the raster (not
    `inside`, and beyond the array) count for no label, so the raster's edge is no competitor.
    """
    present = np.flatnonzero(np.bincount(labels.ravel() if inside is None else labels[inside], minlength=256))
    if len(present) < 2 or sigma_px <= 0:
        return labels
    radius = int(math.ceil(3 * sigma_px))
    k = 2 * radius + 1
    best = np.zeros(labels.shape, np.uint8)
    out = labels.copy()
    own = np.zeros(labels.shape, np.uint8)  # the blurred value of each pixel's own label
    for value in present.tolist():
        # OpenCV blurs 8-bit images with bit-exact fixed-point arithmetic: fast, and the same value
        # for a pixel whichever chunk it is computed in
        mask = labels == value
        if inside is not None:
            mask &= inside
        blurred = cv2.GaussianBlur(mask.view(np.uint8) * np.uint8(255), (k, k), sigma_px,
                                   borderType=cv2.BORDER_CONSTANT)
        higher = blurred > best  # strictly: the lowest label wins a tie between others
        out[higher] = value
        best = np.maximum(best, blurred)
        mine = labels == value
        own[mine] = blurred[mine]
    keep = own == best  # a pixel whose own label ties for the highest keeps it
    out[keep] = labels[keep]
    if inside is not None:
        out[~inside] = labels[~inside]
    return out


def resolve_claims(masks: dict[int, np.ndarray], labels: np.ndarray) -> None:
    """Where the closings of several classes claim the same pixel, one keeps it (in place): the
    pixel's own label if it is among them, else the lowest label, so the classes never overlap."""
    count = np.zeros(labels.shape, np.uint8)
    for mask in masks.values():
        count += mask
    multi = count > 1
    if not multi.any():
        return
    owner = np.full(labels.shape, NOT_PREDICTED, np.uint8)
    for value in sorted(masks, reverse=True):
        owner[multi & masks[value]] = value  # the lowest claimant last, so it wins
    for value, mask in masks.items():
        owner[multi & mask & (labels == value)] = value  # but a pixel's own label first
    for value, mask in masks.items():
        mask &= ~multi | (owner == value)


def _ring(contour: np.ndarray) -> np.ndarray:
    # Contours of the 2x-upsampled mask run through boundary sub-pixels; sub-pixel k lies next to the
    # pixel corner (k + 1) // 2 of the original raster (see vectorise_mask).
    pts = (contour[:, 0, :].astype(np.int64) + 1) // 2
    keep = np.ones(len(pts), bool)
    keep[1:] = np.any(pts[1:] != pts[:-1], axis=1)
    pts = pts[keep]
    if len(pts) > 1 and (pts[0] == pts[-1]).all():
        pts = pts[:-1]
    return pts


def vectorise_mask(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> list[Polygon]:
    """Polygons (holes as interior rings) of the nonzero pixels of `mask`, at exact pixel corners,
    shifted by `offset` (x, y).

    Method: the mask is upsampled 2x (each pixel a 2x2 block) and traced with OpenCV's border
    following (outer borders and their holes). In the upsampled raster a border sub-pixel k (even on
    the leading side of a pixel run, odd on the trailing side) sits half a sub-pixel inside the true
    edge, whose original corner coordinate is (k + 1) // 2; rounding so maps every traced point onto
    the original pixel corners exactly. Shapes that only touch diagonally come out as one pinched
    ring, which is split into valid polygons.
    """
    if mask.size == 0:
        return []
    binary = mask.view(np.uint8) if mask.dtype == bool else (mask != 0).view(np.uint8)
    bx, by, w, h = cv2.boundingRect(binary)  # only the part holding pixels is traced
    if w == 0 or h == 0:
        return []
    binary = binary[by:by + h, bx:bx + w]
    offset = (offset[0] + bx, offset[1] + by)
    # a blank border (findContours ignores the outermost pixels), added before upsampling as it is cheaper
    padded = cv2.copyMakeBorder(binary, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    up = cv2.resize(padded, (2 * w + 4, 2 * h + 4), interpolation=cv2.INTER_NEAREST)
    contours, hierarchy = cv2.findContours(up, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE, offset=(-2, -2))
    if not contours:
        return []
    hierarchy = hierarchy[0]
    polygons: list[Polygon] = []
    for index, contour in enumerate(contours):
        if hierarchy[index][3] != -1:
            continue  # a hole: taken with its outer border
        shell = _ring(contour)
        if len(shell) < 3:
            continue
        holes = []
        child = hierarchy[index][2]
        while child != -1:
            hole = _ring(contours[child])
            if len(hole) >= 3:
                holes.append(hole)
            child = hierarchy[child][0]
        polygons.append(Polygon(shell, holes))
    if not polygons:
        return []
    arr = np.empty(len(polygons), dtype=object)
    arr[:] = polygons
    valid = shapely.is_valid(arr)
    out: list[Polygon] = []
    for poly, ok in zip(arr, valid, strict=True):
        if ok:  # traced outlines have no collinear vertices: kept as they are
            out.append(poly)
        else:
            out.extend(drop_collinear(p) for p in polygon_parts(shapely.make_valid(poly, method="structure")))
    arr = np.empty(len(out), dtype=object)
    arr[:] = out
    if offset != (0, 0):
        shift = np.asarray(offset, dtype=float)
        arr = shapely.transform(arr, lambda c: c + shift)
    return list(arr)


@dataclass
class VectoriseStats:
    chunks: int = 0
    pieces_final: int = 0
    pieces_stitched: int = 0


def chunk_windows(height: int, width: int, chunk_px: int) -> list[tuple[int, int, int, int]]:
    """Chunk cores (y0, y1, x0, x1) covering the raster, row by row."""
    return [(y0, min(y0 + chunk_px, height), x0, min(x0 + chunk_px, width))
            for y0 in range(0, height, chunk_px) for x0 in range(0, width, chunk_px)]


ChunkPieces = dict[int, tuple[list[Polygon], list[Polygon]]]  # label -> (final, at a seam)


def process_chunk(
    read: Callable[[int, int, int, int], np.ndarray],
    core: tuple[int, int, int, int],
    height: int,
    width: int,
    labels: Sequence[int],
    ops: MaskOps,
) -> ChunkPieces:
    """The polygons of one chunk core (y0, y1, x0, x1), read with its halo and cleaned; each is
    marked final, or at a seam when it reaches an edge shared with a neighbouring chunk."""
    y0, y1, x0, x1 = core
    halo = ops.halo_px
    wy0, wy1, wx0, wx1 = y0 - halo, y1 + halo, x0 - halo, x1 + halo
    ry0, ry1, rx0, rx1 = max(wy0, 0), min(wy1, height), max(wx0, 0), min(wx1, width)
    data = read(ry0, ry1, rx0, rx1)
    inside = None
    if halo and (ry0, ry1, rx0, rx1) != (wy0, wy1, wx0, wx1):
        window = np.full((wy1 - wy0, wx1 - wx0), NOT_PREDICTED, np.uint8)
        window[ry0 - wy0:ry1 - wy0, rx0 - wx0:rx1 - wx0] = data
        inside = np.zeros(window.shape, bool)
        inside[ry0 - wy0:ry1 - wy0, rx0 - wx0:rx1 - wx0] = True
    else:
        window = data
    oy, ox = y0 - (ry0 if window is data else wy0), x0 - (rx0 if window is data else wx0)
    present = set(np.flatnonzero(np.bincount(window.ravel(), minlength=256)).tolist())
    out: ChunkPieces = {}
    if ops.smooth_sigma_px > 0:  # all classes at once, so they stay a partition of the raster
        window = smooth_labels(window, ops.smooth_sigma_px, inside)
        present = set(np.flatnonzero(np.bincount(window.ravel(), minlength=256)).tolist())
    morph = MaskOps(open_radius_px=ops.open_radius_px, close_radius_px=ops.close_radius_px)
    masks = {}
    for value in labels:
        if value not in present:
            continue
        mask = window == value
        if not morph.identity:
            mask = clean_mask(mask, morph).view(bool)
        masks[value] = mask
    if morph.close_radius_px > 0 and len(masks) > 1:
        resolve_claims(masks, window)
    for value, mask in masks.items():
        final, seam = out.setdefault(value, ([], []))
        for poly in vectorise_mask(mask[oy:oy + (y1 - y0), ox:ox + (x1 - x0)], offset=(x0, y0)):
            minx, miny, maxx, maxy = poly.bounds
            at_seam = ((x0 > 0 and minx <= x0) or (y0 > 0 and miny <= y0)
                       or (x1 < width and maxx >= x1) or (y1 < height and maxy >= y1))
            (seam if at_seam else final).append(poly)
    return out


def stitch(chunks: Iterable[ChunkPieces], labels: Sequence[int],
           on_chunk: Callable[[], None] | None = None) -> tuple[dict[int, list[Polygon]], VectoriseStats]:
    """Collect the chunks' pieces; union the pieces at seams with their neighbours across chunks."""
    final: dict[int, list[Polygon]] = {v: [] for v in labels}
    pending: dict[int, list[Polygon]] = {v: [] for v in labels}
    stats = VectoriseStats()
    for pieces in chunks:
        for value, (done, seam) in pieces.items():
            final[value].extend(done)
            pending[value].extend(seam)
        stats.chunks += 1
        if on_chunk is not None:
            on_chunk()
    for value in labels:
        stats.pieces_final += len(final[value])
        stats.pieces_stitched += len(pending[value])
        if pending[value]:
            final[value].extend(dissolve(pending[value]))
    return final, stats


def vectorise_raster(
    read: Callable[[int, int, int, int], np.ndarray],
    height: int,
    width: int,
    labels: Sequence[int],
    ops: MaskOps,
    *,
    chunk_px: int = 2048,
    on_chunk: Callable[[], None] | None = None,
) -> tuple[dict[int, list[Polygon]], VectoriseStats]:
    """Polygons per label (raster-corner coordinates) of a `height` x `width` raster read through
    `read(y0, y1, x0, x1)`, chunk by chunk. Equal to processing the whole raster as one chunk."""
    wanted = [int(v) for v in labels]
    chunks = (process_chunk(read, core, height, width, wanted, ops)
              for core in chunk_windows(height, width, chunk_px))
    return stitch(chunks, wanted, on_chunk)


# --- several processes: each opens the raster itself and handles whole chunks ------------------

_WORKER: dict = {}


def _worker_init(parts_json: list[tuple[str, str]], height: int, width: int, labels: list[int],
                 ops: MaskOps) -> None:
    from slidemill.shared.contracts import RasterFile

    from .label_raster import StackedLabels

    parts = [(Path(path), RasterFile.model_validate_json(spec)) for path, spec in parts_json]
    _WORKER.update(raster=StackedLabels(parts), height=height, width=width, labels=labels, ops=ops)


def _worker_chunk(core: tuple[int, int, int, int]) -> ChunkPieces:
    w = _WORKER
    return process_chunk(w["raster"].read, core, w["height"], w["width"], w["labels"], w["ops"])


def vectorise_file(
    parts: Sequence[tuple[Path, RasterFile]],
    labels: Sequence[int],
    ops: MaskOps,
    *,
    chunk_px: int = 2048,
    workers: int = 1,
    on_chunk: Callable[[], None] | None = None,
) -> tuple[dict[int, list[Polygon]], VectoriseStats]:
    """`vectorise_raster` of label TIFFs stacked top to bottom as one raster (one TIFF, or the
    shards of one prediction), its chunks spread over `workers` processes (at most two chunks in
    flight per worker, so memory stays bounded by the chunk size times the workers)."""
    from .label_raster import StackedLabels

    wanted = [int(v) for v in labels]
    parts = list(parts)
    height, width = sum(spec.height for _, spec in parts), parts[0][1].width
    cores = chunk_windows(height, width, chunk_px)
    if workers <= 1 or len(cores) < 2:
        with StackedLabels(parts) as raster:
            return vectorise_raster(raster.read, height, width, wanted, ops, chunk_px=chunk_px,
                                    on_chunk=on_chunk)
    import multiprocessing

    from slidemill.shared.workers import bounded_map, worker_pool

    context = multiprocessing.get_context("spawn")  # no fork of a process holding open files and threads
    init = ([(str(path), spec.model_dump_json()) for path, spec in parts], height, width, wanted, ops)
    with worker_pool(workers, context, _worker_init, init, what="vectorising the label raster") as pool:
        return stitch(bounded_map(pool, _worker_chunk, cores, 2 * workers), wanted, on_chunk)

