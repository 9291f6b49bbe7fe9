"""A small tissue detector on a low-resolution thumbnail: which cells of the raster to predict."""

from __future__ import annotations

import logging

import cv2
import numpy as np

from slidemill.shared.geometry import PixelMapping

from .grid import Grid

log = logging.getLogger(__name__)

MIN_SATURATION = 15  # of 255: below it, glass and dust
MAX_SATURATION = 40  # Otsu is clamped here so faint, pale tissue is kept
MIN_VALUE = 25  # black: scanner borders and padding


def tissue_mask(rgb: np.ndarray) -> np.ndarray:
    """Tissue (True) on an RGB thumbnail: stained pixels by saturation with an Otsu threshold clamped
    to [15, 40], dark non-black pixels too, then closed and slightly dilated so borders count."""
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    sat, val = hsv[..., 1], hsv[..., 2]
    otsu, _ = cv2.threshold(sat, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    threshold = float(np.clip(otsu, MIN_SATURATION, MAX_SATURATION))
    mask = ((sat > threshold) | (val < 150)) & (val >= MIN_VALUE)
    mask = mask.astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)  # lone noisy pixels
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    mask = cv2.dilate(mask, kernel)
    return mask.astype(bool)


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
