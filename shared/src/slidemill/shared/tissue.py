"""Tissue detection on a low-resolution image of the whole slide.

H&E tissue is darker or more coloured than the glass around it. The glass is measured on the image
itself: its grey level is the brightest percentile, its saturation the median saturation of the
pixels that bright. A pixel is tissue when it is clearly darker than the glass (GLASS_GREY_MARGIN
grey levels) or clearly more saturated (GLASS_SAT_MARGIN, and at least MIN_SAT), and not black
(scanner padding). A global Otsu split is not used: dark tumour regions pull it below pale pink stroma,
which is then lost. The raw mask is closed (bridging gaps between nuclei and stroma), small specks
(dust, debris) are removed and small holes (lumina, fat) are filled, with sizes in square microns so
the result does not depend on the scale.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

# Detection runs on a thumbnail near this resolution in every tool, so "tissue" means the same in
# tile and infer; pixel noise at full resolution would otherwise pass the glass margins.
TISSUE_MPP = 4.0
GLASS_GREY_MARGIN = 20  # tissue is at least this much darker than the glass ...
GLASS_SAT_MARGIN = 20  # ... or at least this much more saturated
MIN_SAT = 25  # and saturation below this is never enough on its own
MAX_GLASS_SAT = 30  # saturation (of 255) above which a pixel is never glass
DARK_LIMIT = 15  # grey levels at or below this are scanner padding, not tissue


def detect_tissue(rgb: np.ndarray, mpp: float, *, min_object_um2: float = 10_000.0,
                  max_hole_um2: float = 10_000.0, close_um: float = 32.0) -> np.ndarray:
    """A boolean tissue mask of the RGB image `rgb` whose pixels are `mpp` microns wide."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError("expected an RGB image")
    # a light blur first: single noisy glass pixels must not pass the margins (and be closed into tissue)
    smooth = cv2.GaussianBlur(rgb, (0, 0), sigmaX=1.0)
    grey = cv2.cvtColor(smooth, cv2.COLOR_RGB2GRAY)
    sat = cv2.cvtColor(smooth, cv2.COLOR_RGB2HSV)[:, :, 1]
    valid = grey > DARK_LIMIT
    if not valid.any():
        return np.zeros(grey.shape, bool)
    glass_grey = float(np.percentile(grey[valid], 99))
    # glass is nearly grey: a brightest part this coloured means the image holds no glass at all
    glass_sat = min(float(np.median(sat[valid & (grey >= glass_grey - 5)])), MAX_GLASS_SAT)
    t_sat = max(MIN_SAT, glass_sat + GLASS_SAT_MARGIN)
    mask = ((grey < glass_grey - GLASS_GREY_MARGIN) | (sat > t_sat)) & valid
    mask = mask.astype(np.uint8)
    radius = max(1, round(close_um / mpp / 2))
    if radius >= 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    px_area = mpp * mpp
    mask = _remove_small(mask, math.ceil(min_object_um2 / px_area))
    holes = _remove_small((mask == 0).astype(np.uint8), math.ceil(max_hole_um2 / px_area), keep_border=True)
    return holes == 0


def _remove_small(mask: np.ndarray, min_px: int, *, keep_border: bool = False) -> np.ndarray:
    """Drop 8-connected components of `mask` smaller than `min_px` (those touching the border too,
    unless `keep_border`)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if count <= 1:
        return mask
    keep = stats[:, cv2.CC_STAT_AREA] >= min_px
    if keep_border:
        h, w = mask.shape
        x, y = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
        bw, bh = stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT]
        keep |= (x == 0) | (y == 0) | (x + bw >= w) | (y + bh >= h)
    keep[0] = False
    return keep[labels].astype(np.uint8)


class TissueMap:
    """The tissue mask and the fraction of tissue under any level-0 rectangle (integral image)."""

    def __init__(self, mask: np.ndarray, scale: float):
        self.mask = mask.astype(bool)
        self.scale = scale  # level-0 pixels per mask pixel
        self._integral = cv2.integral(self.mask.astype(np.uint8), sdepth=cv2.CV_64F)

    def fraction(self, x: float, y: float, width: float, height: float) -> float:
        """Tissue fraction of the level-0 rectangle; what lies outside the slide counts as no tissue."""
        h, w = self.mask.shape
        i0, j0 = math.floor(x / self.scale + 1e-9), math.floor(y / self.scale + 1e-9)
        i1, j1 = math.ceil((x + width) / self.scale - 1e-9), math.ceil((y + height) / self.scale - 1e-9)
        total = max(1, (i1 - i0) * (j1 - j0))
        ci0, cj0 = min(max(i0, 0), w), min(max(j0, 0), h)
        ci1, cj1 = min(max(i1, 0), w), min(max(j1, 0), h)
        s = self._integral
        inside = s[cj1, ci1] - s[cj0, ci1] - s[cj1, ci0] + s[cj0, ci0]
        return float(min(1.0, inside / total))
