"""Which cells of the raster to predict, from the shared tissue detector's low-resolution mask."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from slidemill.shared.geometry import PixelMapping
from slidemill.shared.tissue import TissueMap

from .grid import Grid

log = logging.getLogger(__name__)


def cell_tissue(tissue: TissueMap, grid: Grid, mapping: PixelMapping) -> np.ndarray:
    """Cells (n_rows x n_cols) whose level-0 footprint touches a tissue pixel of the slide's tissue mask."""
    mask, thumb_scale = tissue.mask, tissue.scale

    def bounds(n: int, extent: int, origin: float, size: int) -> tuple[np.ndarray, np.ndarray]:
        start = np.arange(n) * grid.stride
        end = np.minimum(start + grid.stride, extent)
        lo = np.floor((origin + start * mapping.scale) / thumb_scale).astype(np.int64)
        hi = np.ceil((origin + end * mapping.scale) / thumb_scale).astype(np.int64)
        lo = np.clip(lo, 0, size)
        hi = np.clip(np.maximum(hi, lo + 1), 0, size)
        return lo, hi

    r0, r1 = bounds(grid.n_rows, grid.height, mapping.origin_y, mask.shape[0])
    c0, c1 = bounds(grid.n_cols, grid.width, mapping.origin_x, mask.shape[1])
    return tissue.count(r0[:, None], r1[:, None], c0[None, :], c1[None, :]) > 0


class TissuePixels:
    """Whether raster pixels lie on tissue: the pixel centre looked up in the thumbnail's tissue mask,
    dilated by one thumbnail pixel so that the tissue border is never cut. Glass inside a predicted
    cell then stays 'not predicted' (255) instead of taking the nearest class."""

    def __init__(self, mask: np.ndarray, thumb_scale: float, mapping: PixelMapping):
        kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
        self.mask = cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)
        self.thumb_scale, self.mapping = thumb_scale, mapping

    def __call__(self, x0: int, x1: int, y0: int, y1: int) -> np.ndarray:
        h, w = self.mask.shape
        m = self.mapping
        cols = np.floor((m.origin_x + (np.arange(x0, x1) + 0.5) * m.scale) / self.thumb_scale).astype(np.int64)
        rows = np.floor((m.origin_y + (np.arange(y0, y1) + 0.5) * m.scale) / self.thumb_scale).astype(np.int64)
        return self.mask[np.ix_(np.clip(rows, 0, h - 1), np.clip(cols, 0, w - 1))]
