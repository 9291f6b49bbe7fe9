"""One way to open a slide: large-image (openslide, tiff, tifffile, pil and dicom sources).

`open_slide(path)` gives a `Slide` with its size, pyramid levels, microns per pixel and vendor, and
`read_region` reads any level-0 rectangle at any resolution from the best pyramid level, padding
what lies outside the slide instead of stretching.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import cv2
import numpy as np
import tifffile

from .contracts import SlideRef
from .errors import MissingInputError, SlideError

log = logging.getLogger(__name__)

_EPS = 1e-6


@dataclass(frozen=True)
class Level:
    width: int
    height: int
    downsample: float
    stored: bool = True  # False: large-image would synthesise it from a finer level


def _large_image():
    # large-image prints import-time warnings about optional sources; they say nothing a user can act on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("large_image").setLevel(logging.ERROR)
        import large_image

    return large_image


def _dicom_file_in(folder: Path) -> Path:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in {".dcm", ".dicom"})
    if not files:
        raise SlideError("is a folder without DICOM (.dcm) files", path=folder,
                         fix="Give a slide file, or the folder of one DICOM whole-slide series")
    return files[0]


class Slide:
    """An open slide. Coordinates are level-0 pixels; images are RGB uint8 arrays (H, W, 3)."""

    def __init__(self, path: Path, source, *, mpp: float | None = None):
        self.path = path
        self.source = source
        meta = source.getMetadata()
        self.width = int(meta["sizeX"])
        self.height = int(meta["sizeY"])
        self._level_count = int(meta["levels"])
        self.tile_width = int(meta.get("tileWidth") or 256)
        file_mpp = meta.get("mm_x")
        if mpp is not None:
            self.mpp, self.mpp_source = float(mpp), "user"
        elif file_mpp:
            self.mpp, self.mpp_source = float(file_mpp) * 1000.0, "file"
        else:
            self.mpp, self.mpp_source = None, None
        self.reader = getattr(source, "name", type(source).__name__)

    @property
    def name(self) -> str:
        return self.path.name

    @cached_property
    def vendor(self) -> str:
        try:
            internal = self.source.getInternalMetadata() or {}
        except Exception:  # noqa: BLE001 - vendor is informational; a reader may not implement it
            internal = {}
        vendor = (internal.get("openslide") or {}).get("openslide.vendor")
        return str(vendor or self.reader or "unknown")

    @cached_property
    def levels(self) -> list[Level]:
        """Every power-of-two level large-image exposes, finest first; `stored` says which the file
        holds (the others large-image would make with its own filter, so we resample ourselves)."""
        try:
            stored = [bool(x) for x in reversed(self.source._nonemptyLevelsList())]
        except Exception:  # noqa: BLE001 - a source without the listing: trust every level
            stored = [True] * self._level_count
        out = []
        for i in range(self._level_count):
            ds = 2.0**i
            real = i == 0 or (stored[i] if i < len(stored) else False)
            out.append(Level(math.ceil(self.width / ds), math.ceil(self.height / ds), ds, real))
        return out

    def ref(self) -> SlideRef:
        return SlideRef(name=self.name, width=self.width, height=self.height, mpp=self.mpp,
                        mpp_source=self.mpp_source, vendor=self.vendor, reader=self.reader)

    def require_mpp(self) -> float:
        if self.mpp is None:
            raise SlideError("the slide does not say its microns per pixel", path=self.path,
                             fix="Pass --slide-mpp with the scanner's resolution (for example 0.25 at 40x)")
        return self.mpp

    def best_level(self, scale: float) -> int:
        """The coarsest level whose downsample does not exceed `scale` (level-0 px per output px)."""
        best = 0
        for i, level in enumerate(self.levels):
            if level.stored and level.downsample <= scale * (1 + _EPS):
                best = i
        return best

    def read_level(self, level: int, x: int, y: int, w: int, h: int, pad_value: int = 255) -> np.ndarray:
        """Pixels [x, x+w) x [y, y+h) of `level`; what lies outside the slide is `pad_value`."""
        lv = self.levels[level]
        out = np.full((h, w, 3), pad_value, dtype=np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, lv.width), min(y + h, lv.height)
        if x1 <= x0 or y1 <= y0:
            return out
        ds = lv.downsample
        region = {
            "left": x0 * ds, "top": y0 * ds,
            "right": min(x1 * ds, self.width), "bottom": min(y1 * ds, self.height),
            "units": "base_pixels",
        }
        large_image = _large_image()
        try:
            arr, _ = self.source.getRegion(
                region=region, output={"maxWidth": x1 - x0, "maxHeight": y1 - y0},
                format=large_image.constants.TILE_FORMAT_NUMPY,
            )
        except Exception as exc:
            raise SlideError(f"cannot read pixels at level {level} ({x},{y},{w},{h}): {exc}",
                             path=self.path, fix="Check that the slide file is complete and not corrupt") from exc
        arr = _as_rgb8(arr)
        ph, pw = min(arr.shape[0], y1 - y0), min(arr.shape[1], x1 - x0)
        out[y0 - y: y0 - y + ph, x0 - x: x0 - x + pw] = arr[:ph, :pw]
        if ph < y1 - y0 or pw < x1 - x0:  # a reader rounding a partial edge tile down by a pixel
            out[y0 - y + ph: y1 - y, x0 - x: x1 - x] = out[max(y0 - y + ph - 1, 0), x0 - x: x1 - x]
            out[y0 - y: y1 - y, x0 - x + pw: x1 - x] = out[y0 - y: y1 - y, max(x0 - x + pw - 1, 0)][:, None]
        return out

    def read_region(self, x: float, y: float, width_px: int, height_px: int, scale: float,
                    pad_value: int = 255) -> np.ndarray:
        """An image of `width_px` x `height_px` output pixels whose top-left corner is level-0 (x, y),
        each output pixel covering `scale` level-0 pixels. Read from the best level and resampled
        (area averaging when the factor is whole, otherwise anti-aliased bilinear)."""
        level = self.best_level(scale)
        ds = self.levels[level].downsample
        f = scale / ds
        sx, sy = x / ds, y / ds
        whole = abs(f - round(f)) < _EPS and abs(sx - round(sx)) < _EPS and abs(sy - round(sy)) < _EPS
        if whole:
            k, ix, iy = round(f), round(sx), round(sy)
            img = self.read_level(level, ix, iy, width_px * k, height_px * k, pad_value)
            if k == 1:
                return img
            return cv2.resize(img, (width_px, height_px), interpolation=cv2.INTER_AREA)
        return self._resample(level, sx, sy, f, width_px, height_px, pad_value)

    def _resample(self, level: int, sx: float, sy: float, f: float, width_px: int, height_px: int,
                  pad_value: int) -> np.ndarray:
        """`width_px` x `height_px` output pixels whose top-left corner is (sx, sy) in `level`'s pixels,
        each covering `f` of them: anti-aliasing Gaussian blur (f > 1) then bilinear sampling.

        A tile equals the same pixels of any larger read, bit for bit: the blur reads its real
        neighbours (the source window carries a margin of the blur radius, pad_value off the slide, so
        the blur's own border rule only touches pixels the sampling never reaches), and each output
        pixel's source position is rounded to OpenCV's 1/32-pixel interpolation grid in the level's
        own coordinates (not relative to the window read), then sampled with those exact integer
        positions and weights (`cv2.remap` with fixed-point maps).
        """
        if max(width_px * f, height_px * f) > _MAX_WINDOW:  # int16 maps: split, the halves stitch exactly
            if width_px >= height_px:
                half = width_px // 2
                return np.concatenate([
                    self._resample(level, sx, sy, f, half, height_px, pad_value),
                    self._resample(level, sx + half * f, sy, f, width_px - half, height_px, pad_value)], axis=1)
            half = height_px // 2
            return np.concatenate([
                self._resample(level, sx, sy, f, width_px, half, pad_value),
                self._resample(level, sx, sy + half * f, f, width_px, height_px - half, pad_value)], axis=0)
        sigma = 0.5 * math.sqrt(f * f - 1) if f > 1 + _EPS else 0.0
        radius = math.ceil(3 * sigma) if sigma else 0
        margin = 2 + radius
        bx, by = math.floor(sx) - margin, math.floor(sy) - margin
        bw = math.ceil(sx + width_px * f) + margin - bx
        bh = math.ceil(sy + height_px * f) + margin - by
        img = self.read_level(level, bx, by, bw, bh, pad_value)
        if sigma:
            img = cv2.GaussianBlur(img, (2 * radius + 1, 2 * radius + 1), sigmaX=sigma, sigmaY=sigma)
        # output pixel centre u + 0.5 sits at source position sx + (u + 0.5) * f, a pixel centre at +0.5
        ix, fx = _sample_grid(sx, width_px, f)
        iy, fy = _sample_grid(sy, height_px, f)
        map1 = np.empty((height_px, width_px, 2), np.int16)
        map1[..., 0] = (ix - bx)[None, :]
        map1[..., 1] = (iy - by)[:, None]
        map2 = (fy[:, None] * _INTER_TAB + fx[None, :]).astype(np.uint16)
        return cv2.remap(img, map1, map2, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=(pad_value,) * 3)

    def thumbnail(self, max_size: int = 1024) -> tuple[np.ndarray, float]:
        """The whole slide fitting in `max_size` pixels, and its scale (level-0 px per pixel)."""
        scale = max(self.width, self.height) / max_size
        scale = max(scale, 1.0)
        w, h = max(1, round(self.width / scale)), max(1, round(self.height / scale))
        # in strips, so a slide without a coarse level costs one strip of level 0 at a time
        rows = max(1, int(4096 / scale))
        strips = [self.read_region(0, y * scale, w, min(rows, h - y), scale) for y in range(0, h, rows)]
        return np.concatenate(strips, axis=0), scale


_INTER_TAB = 1 << 5  # OpenCV's interpolation grid: 1/32 pixel (INTER_BITS = 5)
_MAX_WINDOW = 30_000  # source pixels along one axis of one remap (its integer map is int16)


def _sample_grid(start: float, n: int, f: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer source pixel and 1/32 fraction of the centres of `n` output pixels of size `f` from
    `start`, in the level's own coordinates (so they do not depend on where a read begins)."""
    q = np.round((start + (np.arange(n) + 0.5) * f - 0.5) * _INTER_TAB).astype(np.int64)
    return q >> 5, q & (_INTER_TAB - 1)


def _as_rgb8(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.integer) and arr.max(initial=0) > 255:
            arr = (arr.astype(np.float64) / np.iinfo(arr.dtype).max * 255).round()
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    bands = arr.shape[2]
    if bands == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif bands == 2:  # grey + alpha
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    elif bands >= 4:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr)


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _check_tiff_complete(path: Path) -> None:
    """Readers fill the tiles of a truncated TIFF with black without a word; refuse such a file."""
    with open(path, "rb") as handle:
        if handle.read(4) not in _TIFF_MAGIC:
            return
    size = path.stat().st_size
    try:
        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts, strict=False) if n]
                if ends and max(ends) > size:
                    raise SlideError(f"is truncated: image data runs to byte {max(ends)} but the file has {size}",
                                     path=path, fix="Copy the slide again from its source; the copy is incomplete")
    except SlideError:
        raise
    except Exception as exc:  # noqa: BLE001 - tifffile raises many types for damaged files
        raise SlideError(f"is a damaged TIFF ({exc})", path=path,
                         fix="Copy the slide again from its source; the copy is incomplete or corrupt") from None


def open_slide(path: str | Path, *, mpp: float | None = None) -> Slide:
    """Open any slide large-image can read, a DICOM series folder, or a plain PNG/JPEG image.

    `mpp` overrides (or supplies) the level-0 microns per pixel.
    """
    path = Path(path)
    if not path.exists():
        raise MissingInputError("slide does not exist", path=path,
                                fix="Check the path and that the folder is mounted")
    target = _dicom_file_in(path) if path.is_dir() else path
    if mpp is not None and mpp <= 0:
        raise SlideError(f"--slide-mpp must be positive, got {mpp}", path=path)
    _check_tiff_complete(target)
    large_image = _large_image()
    try:
        source = large_image.open(str(target))
    except Exception as exc:  # noqa: BLE001 - large-image raises many types for unreadable files
        reason = str(exc).replace(str(target), "").strip(" :") or type(exc).__name__
        raise SlideError(f"cannot be opened as a slide ({reason})", path=path,
                         fix="Check that the file is a complete whole-slide image or PNG/JPEG "
                             "(not truncated, not an archive) in a format large-image reads") from None
    slide = Slide(path, source, mpp=mpp)
    log.debug("opened %s with %s: %dx%d, %d levels, mpp=%s", path, slide.reader,
              slide.width, slide.height, len(slide.levels), slide.mpp)
    return slide
