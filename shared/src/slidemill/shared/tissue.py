"""Tissue detection on a low-resolution image of the whole slide.

H&E tissue is darker or more coloured than the glass around it. The glass is measured on the image
itself: its grey level is the brightest percentile, its saturation the median saturation of the
pixels that bright. A pixel is tissue when it is clearly darker than the glass (GLASS_GREY_MARGIN
grey levels) or clearly more saturated (GLASS_SAT_MARGIN, and at least MIN_SAT), and not black
(scanner padding). A global Otsu split is not used: dark tumour regions pull it below pale pink stroma,
which is then lost. The raw mask is closed (bridging gaps between nuclei and stroma), small specks
(dust, debris) are removed and small holes (lumina, fat) are filled, with sizes in square microns so
the result does not depend on the scale.

Dark-field (fluorescence) slides are the other way round: tissue is brighter than a dark background.
There a pixel is tissue when its brightest channel is DARKFIELD_MARGIN grey levels above the
background (the 5th percentile of that channel), followed by the same closing and clean-up.
`tissue_mode(rgb)` chooses automatically: dark-field when the image's median grey level is below
DARKFIELD_MEDIAN_GREY (glass-dominated brightfield slides sit near 230, tissue-filled H&E near 150-200,
fluorescence near 0-30).
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
DARKFIELD_MEDIAN_GREY = 100  # auto mode: a median grey level below this is a dark-field slide
DARKFIELD_MARGIN = 6  # dark-field tissue is at least this much brighter than the background
TISSUE_MODES = ("brightfield", "darkfield")


def tissue_mode(rgb: np.ndarray) -> str:
    """'darkfield' when the median grey level of the RGB image is below DARKFIELD_MEDIAN_GREY, else
    'brightfield' (the rule of `--tissue-mode auto`)."""
    grey = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY)
    return "darkfield" if float(np.median(grey)) < DARKFIELD_MEDIAN_GREY else "brightfield"


def resolve_tissue_mode(mode: str, rgb: np.ndarray) -> str:
    """`mode` itself, or for 'auto' the mode `tissue_mode` measures on `rgb`."""
    if mode == "auto":
        return tissue_mode(rgb)
    if mode not in TISSUE_MODES:
        raise ValueError(f"tissue mode must be auto, brightfield or darkfield, not {mode!r}")
    return mode


def detect_tissue(rgb: np.ndarray, mpp: float, *, mode: str = "brightfield", min_object_um2: float = 10_000.0,
                  max_hole_um2: float = 10_000.0, close_um: float = 32.0) -> np.ndarray:
    """A boolean tissue mask (H, W) of the RGB uint8 image `rgb` (H, W, 3) whose pixels are `mpp`
    microns wide; `mode` is 'brightfield', 'darkfield' or 'auto' (see `tissue_mode`)."""
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError("expected an RGB image")
    mode = resolve_tissue_mode(mode, rgb)
    # a light blur first: single noisy glass pixels must not pass the margins (and be closed into tissue)
    smooth = cv2.GaussianBlur(rgb, (0, 0), sigmaX=1.0)
    if mode == "darkfield":
        signal = smooth.max(axis=2)
        background = float(np.percentile(signal, 5))
        return _clean((signal > background + DARKFIELD_MARGIN).astype(np.uint8), mpp, min_object_um2,
                      max_hole_um2, close_um)
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
    return _clean(mask.astype(np.uint8), mpp, min_object_um2, max_hole_um2, close_um)


def _clean(mask: np.ndarray, mpp: float, min_object_um2: float, max_hole_um2: float, close_um: float) -> np.ndarray:
    """Close gaps, drop specks, fill small holes (sizes in microns)."""
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
    """The tissue mask and the fraction of tissue under any level-0 rectangle (integral image).

    `slide_tissue` makes the one a slide has; `thumbnail` is the image it was detected on (None when
    built from a mask alone) and `mode` the detection used."""

    def __init__(self, mask: np.ndarray, scale: float, slide_size: tuple[float, float] | None = None, *,
                 thumbnail: np.ndarray | None = None, mode: str | None = None):
        self.mask = mask.astype(bool)
        self.scale = scale  # level-0 pixels per mask pixel
        self.thumbnail, self.mode = thumbnail, mode
        # level-0 width and height of the slide; default: what the mask covers
        self.slide_size = slide_size or (mask.shape[1] * scale, mask.shape[0] * scale)
        self._integral = cv2.integral(self.mask.astype(np.uint8), sdepth=cv2.CV_64F)

    def fraction(self, x: float, y: float, width: float, height: float) -> float:
        """Tissue fraction of the part of the level-0 rectangle inside the slide: padding past the
        slide's edge is neither tissue nor glass (0 when nothing of it is inside)."""
        sw, sh = self.slide_size
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + width, sw), min(y + height, sh)
        if x1 <= x0 or y1 <= y0:
            return 0.0
        x, y, width, height = x0, y0, x1 - x0, y1 - y0
        h, w = self.mask.shape
        i0, j0 = math.floor(x / self.scale + 1e-9), math.floor(y / self.scale + 1e-9)
        i1, j1 = math.ceil((x + width) / self.scale - 1e-9), math.ceil((y + height) / self.scale - 1e-9)
        ci0, cj0 = min(max(i0, 0), w), min(max(j0, 0), h)
        ci1, cj1 = min(max(i1, 0), w), min(max(j1, 0), h)
        # mask pixels only: the mask's rounded size may end a fraction of a pixel short of the slide
        total = max(1, (ci1 - ci0) * (cj1 - cj0))
        return float(min(1.0, self.count(cj0, cj1, ci0, ci1) / total))

    def count(self, rows0, rows1, cols0, cols1):
        """Tissue pixels of the mask in rows [rows0, rows1) x columns [cols0, cols1), clipped to the mask;
        numbers or arrays that broadcast together (one integral-image look-up per rectangle)."""
        h, w = self.mask.shape
        r0, r1 = np.clip(rows0, 0, h), np.clip(rows1, 0, h)
        c0, c1 = np.clip(cols0, 0, w), np.clip(cols1, 0, w)
        s = self._integral
        return s[r1, c1] - s[r0, c1] - s[r1, c0] + s[r0, c0]


MAX_TISSUE_SIDE_PX = 4096  # the tissue image never exceeds this, whatever the slide size


def tissue_thumbnail(slide, *, tissue_mpp: float = TISSUE_MPP,
                     max_side_px: int = MAX_TISSUE_SIDE_PX) -> tuple[np.ndarray, float]:
    """The whole slide (a `slidemill.shared.slide.Slide`) as an RGB uint8 image (H, W, 3) at the
    power-of-two downsample nearest to `tissue_mpp` (so a stored pyramid level is read as it is),
    with at most `max_side_px` pixels a side; and its scale (level-0 pixels per pixel). Read in strips,
    so a slide without a coarse level costs one strip of level 0 at a time."""
    near = 2 ** round(math.log2(max(tissue_mpp / slide.require_mpp(), 1.0)))
    fits = 2 ** math.ceil(math.log2(max(max(slide.width, slide.height) / max_side_px, 1.0)))
    scale = float(max(near, fits))
    w, h = max(1, math.ceil(slide.width / scale)), max(1, math.ceil(slide.height / scale))
    rows = max(1, int(4096 / scale))
    strips = [slide.read_region(0, y * scale, w, min(rows, h - y), scale) for y in range(0, h, rows)]
    return np.concatenate(strips, axis=0), scale


def slide_tissue(slide, *, mode: str = "auto", tissue_mpp: float = TISSUE_MPP) -> TissueMap:
    """The tissue of a slide, the same in every tool: `detect_tissue` on `tissue_thumbnail`, with
    `mode` resolved by `resolve_tissue_mode` (ValueError for an unknown mode)."""
    thumbnail, scale = tissue_thumbnail(slide, tissue_mpp=tissue_mpp)
    resolved = resolve_tissue_mode(mode, thumbnail)
    mask = detect_tissue(thumbnail, slide.require_mpp() * scale, mode=resolved)
    return TissueMap(mask, scale, (slide.width, slide.height), thumbnail=thumbnail, mode=resolved)
