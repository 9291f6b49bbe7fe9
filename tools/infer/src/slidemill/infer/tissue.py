"""Which cells of the raster to predict, from the shared tissue detector's low-resolution mask."""

from __future__ import annotations

import logging

import numpy as np

from slidemill.shared.geometry import PixelMapping

from .grid import Grid

log = logging.getLogger(__name__)


def cell_tissue(mask: np.ndarray, thumb_scale: float, grid: Grid, mapping: PixelMapping) -> np.ndarray:
    """Cells (n_rows x n_cols) whose level-0 footprint touches a tissue pixel of the thumbnail mask."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.int64), axis=0), axis=1)

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
    total = (integral[r1[:, None], c1[None, :]] - integral[r0[:, None], c1[None, :]]
             - integral[r1[:, None], c0[None, :]] + integral[r0[:, None], c0[None, :]])
    return total > 0
