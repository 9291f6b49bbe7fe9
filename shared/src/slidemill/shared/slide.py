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

from .contracts import ChannelPick, PixelMeaning, SlideRef
from .errors import MissingInputError, SlideError
from .slide_files import is_dicom_file

log = logging.getLogger(__name__)

_EPS = 1e-6
# A TIFF resolution tag in inches meaning more than this many microns per pixel (under 25,400 dpi) is an
# image editor's dpi (72-1200 dpi is 21-353 um/px), not a microscope's; in centimetres the limit is
# looser (10 um/px, 1000 px/cm), as microscopy writers use centimetres and editors rarely do.
MAX_INCH_TAG_MPP = 1.0
MAX_CM_TAG_MPP = 10.0
_MPP_SOURCES = {"vendor": "the scanner's metadata", "ome": "the OME-XML PhysicalSizeX",
                "tiff-resolution": "the TIFF resolution tags", "user": "--slide-mpp"}
# A target resolution finer than the slide's by more than this factor is refused unless asked for.
MAX_UPSAMPLING = 2.0
WINDOW_PERCENTILES = (0.1, 99.9)
_STAT_MAX_PIXELS = 4096 * 4096


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


def _dicom_series(files: list[Path]) -> dict[str, list[Path]]:
    """The DICOM files grouped by SeriesInstanceUID (files pydicom cannot read are left out)."""
    import pydicom

    series: dict[str, list[Path]] = {}
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except Exception:  # noqa: BLE001 - not DICOM (or damaged): the reader will say so if it matters
            continue
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        series.setdefault(uid, []).append(f)
    return series


def _describe_series(uid: str, files: list[Path]) -> str:
    import pydicom

    try:
        ds = pydicom.dcmread(files[0], stop_before_pixels=True)
        parts = [str(v) for v in (ds.get("SeriesDescription"), ds.get("ContainerIdentifier")) if v]
        size = (ds.get("TotalPixelMatrixColumns"), ds.get("TotalPixelMatrixRows"))
        if all(size):
            parts.append(f"{size[0]} x {size[1]} px")
    except Exception:  # noqa: BLE001 - the description is informational
        parts = []
    return f"{uid} ({', '.join(parts + [f'{len(files)} file(s)'])})"


def dicom_target(path: Path, series: str | None) -> tuple[Path, str | None]:
    """The DICOM file to open for a folder (or a .dcm file) and its SeriesInstanceUID; a folder of
    several series needs `series` (--dicom-series)."""
    folder = path if path.is_dir() else path.parent
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_dicom_file(p))
    if path.is_dir() and not files:
        raise SlideError("is a folder without DICOM (.dcm) files", path=path,
                         fix="Give a slide file, or the folder of one DICOM whole-slide series")
    groups = _dicom_series(files)
    if path.is_file():
        own = next((uid for uid, fs in groups.items() if path in fs), None)
        if series is None or series == own:
            return path, own
    if series is not None:
        if series not in groups:
            raise SlideError(f"holds no DICOM series {series}; it holds "
                             + "; ".join(_describe_series(u, f) for u, f in sorted(groups.items())),
                             path=path, fix="Pass --dicom-series with one of these SeriesInstanceUIDs")
        return groups[series][0], series
    if len(groups) > 1:
        raise SlideError(f"holds {len(groups)} DICOM series: "
                         + "; ".join(_describe_series(u, f) for u, f in sorted(groups.items())),
                         path=path, fix="Pass --dicom-series UID to choose one, or give a folder of one series")
    if not groups:
        raise SlideError("holds .dcm files that are not readable DICOM", path=path,
                         fix="Give the folder of one complete DICOM whole-slide series")
    uid, fs = next(iter(groups.items()))
    return fs[0], uid


class Slide:
    """An open slide. Coordinates are level-0 pixels; images are RGB uint8 arrays (H, W, 3).

    `pixels` says how the file's samples become those RGB bytes (decided here, once); `mpp` and
    `mpp_source` the level-0 resolution and where it came from (None when the file has no microscope
    resolution: `require_mpp` then asks for --slide-mpp)."""

    def __init__(self, path: Path, source, *, mpp: float | None = None, channels: list[str] | None = None,
                 z: int | None = None, t: int | None = None, series: str | None = None,
                 facts: dict | None = None, pixels: PixelMeaning | None = None):
        self.path = path
        self.source = source
        meta = source.getMetadata()
        self.width = int(meta["sizeX"])
        self.height = int(meta["sizeY"])
        self._level_count = int(meta["levels"])
        self.reader = getattr(source, "name", type(source).__name__)
        self.series = series
        facts = facts or {}
        self._mpp_note = ""
        if mpp is not None:
            self.mpp, self.mpp_source = float(mpp), "user"
        else:
            self.mpp, self.mpp_source, self._mpp_note = _resolution(self.reader, meta, facts)
        if pixels is not None:  # decided before (a tileset, a worker of the same run): apply it as recorded
            _check_recorded(path, pixels, meta)
            self.pixels = pixels
        else:
            self.pixels = _decide_pixels(path, meta, facts, channels=channels, z=z, t=t)
        self._frames = sorted({c.frame for c in self.pixels.channels})
        if self.pixels.window_source == "slide-percentiles" and self.pixels.channels[0].window is None:
            self.pixels = self.pixels.model_copy(update={"channels": self._percentile_windows()})

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
        holds (the others large-image would make with its own filter, so we resample ourselves).
        A source that cannot list its stored levels (PIL, single-level DICOM) has only level 0 stored."""
        stored = _stored_levels(self.source, self.width, self._level_count, self._frames[0])
        out = []
        for i in range(self._level_count):
            ds = 2.0**i
            real = i == 0 or (stored[i] if i < len(stored) else False)
            out.append(Level(math.ceil(self.width / ds), math.ceil(self.height / ds), ds, real))
        return out

    def ref(self) -> SlideRef:
        return SlideRef(name=self.name, width=self.width, height=self.height, mpp=self.mpp,
                        mpp_source=self.mpp_source, vendor=self.vendor, reader=self.reader,
                        series=self.series, pixels=self.pixels)

    def require_mpp(self) -> float:
        if self.mpp is None:
            note = f" ({self._mpp_note})" if self._mpp_note else ""
            raise SlideError(f"the slide does not say its microns per pixel{note}", path=self.path,
                             fix="Pass --slide-mpp with the scanner's resolution (for example 0.25 at 40x)")
        return self.mpp

    def scale_for(self, target_mpp: float, *, allow_upsampling: bool = False, option: str = "--mpp") -> float:
        """Level-0 pixels per output pixel at `target_mpp` um/px. Raises SlideError when that means
        upsampling the slide by more than MAX_UPSAMPLING and `allow_upsampling` is False."""
        slide_mpp = self.require_mpp()
        scale = target_mpp / slide_mpp
        if scale < 1 / MAX_UPSAMPLING - _EPS and not allow_upsampling:
            raise SlideError(
                f"{option} {target_mpp:g} um/px is {1 / scale:.3g}x finer than the slide's own {slide_mpp:g} "
                f"um/px (from {_MPP_SOURCES.get(self.mpp_source, self.mpp_source)}): the slide would be upsampled",
                path=self.path,
                fix=(f"Choose {option} of at least {slide_mpp / MAX_UPSAMPLING:g}, c" if option.startswith("--")
                     else "C") + "orrect --slide-mpp if the slide's resolution is wrong, or pass --allow-upsampling")
        return scale

    def best_level(self, scale: float) -> int:
        """The coarsest level whose downsample does not exceed `scale` (level-0 px per output px)."""
        best = 0
        for i, level in enumerate(self.levels):
            if level.stored and level.downsample <= scale * (1 + _EPS):
                best = i
        return best

    def read_level(self, level: int, x: int, y: int, w: int, h: int, pad_value: int = 255) -> np.ndarray:
        """Pixels [x, x+w) x [y, y+h) of `level` as RGB uint8 by `self.pixels`; what lies outside the
        slide is `pad_value`."""
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
        arr = self._rgb8(region, x1 - x0, y1 - y0, level)
        ph, pw = min(arr.shape[0], y1 - y0), min(arr.shape[1], x1 - x0)
        out[y0 - y: y0 - y + ph, x0 - x: x0 - x + pw] = arr[:ph, :pw]
        if ph < y1 - y0 or pw < x1 - x0:  # a reader rounding a partial edge tile down by a pixel
            out[y0 - y + ph: y1 - y, x0 - x: x1 - x] = out[max(y0 - y + ph - 1, 0), x0 - x: x1 - x]
            out[y0 - y: y1 - y, x0 - x + pw: x1 - x] = out[y0 - y: y1 - y, max(x0 - x + pw - 1, 0)][:, None]
        return out

    def _raw(self, region: dict, w: int, h: int, frame: int, level: int) -> np.ndarray:
        """The stored samples of a base-pixel `region` at w x h, (h, w, bands), as the reader gives them."""
        large_image = _large_image()
        kwargs = {"frame": frame} if self.pixels.frames > 1 else {}
        try:
            arr, _ = self.source.getRegion(region=region, output={"maxWidth": w, "maxHeight": h},
                                           format=large_image.constants.TILE_FORMAT_NUMPY, **kwargs)
        except Exception as exc:
            raise SlideError(f"cannot read pixels at level {level} ({region['left']:g},{region['top']:g}): {exc}",
                             path=self.path, fix="Check that the slide file is complete and not corrupt") from exc
        return arr if arr.ndim == 3 else arr[:, :, None]

    def _rgb8(self, region: dict, w: int, h: int, level: int) -> np.ndarray:
        raw = {f: self._raw(region, w, h, f, level) for f in self._frames}
        return apply_pixels(self.pixels, raw)

    def _percentile_windows(self) -> list[ChannelPick]:
        """Each channel's 0.1 and 99.9 percentiles over the coarsest stored level (a grid of blocks of
        it when that level is large): one slide-wide window, the same in every run."""
        stored = [i for i, lv in enumerate(self.levels) if lv.stored]
        level = stored[-1]
        lv = self.levels[level]
        ds = lv.downsample
        if lv.width * lv.height <= _STAT_MAX_PIXELS:
            blocks = [(0, 0, lv.width, lv.height)]
        else:
            n, side = 8, 512
            xs = np.linspace(0, max(lv.width - side, 0), n).astype(int)
            ys = np.linspace(0, max(lv.height - side, 0), n).astype(int)
            blocks = [(bx, by, min(side, lv.width), min(side, lv.height)) for by in ys for bx in xs]
        samples: dict[int, list[np.ndarray]] = {f: [] for f in self._frames}
        for bx, by, bw, bh in blocks:
            region = {"left": bx * ds, "top": by * ds, "right": min((bx + bw) * ds, self.width),
                      "bottom": min((by + bh) * ds, self.height), "units": "base_pixels"}
            for f in self._frames:
                samples[f].append(self._raw(region, bw, bh, f, level).reshape(-1, self.pixels.bands))
        picks = []
        for pick in self.pixels.channels:
            values = np.concatenate(samples[pick.frame])
            if self.pixels.alpha:
                values = values[values[:, -1] > 0]
            v = values[:, pick.band].astype(np.float64)
            v = v[np.isfinite(v)]
            lo, hi = (np.percentile(v, WINDOW_PERCENTILES) if v.size else (0.0, 1.0))
            lo, hi = float(lo), float(hi)
            picks.append(pick.model_copy(update={"window": (lo, hi if hi > lo else lo + 1.0)}))
        return picks

    def read_region(self, x: float, y: float, width_px: int, height_px: int, scale: float,
                    pad_value: int = 255, *, level_reader=None) -> np.ndarray:
        """An image of `width_px` x `height_px` output pixels whose top-left corner is level-0 (x, y),
        each output pixel covering `scale` level-0 pixels. Read from the best level and resampled
        (area averaging when the factor is whole, otherwise anti-aliased bilinear). `level_reader`,
        with `read_level`'s signature and pixels, reads the level instead (the stored tiles decoded
        directly: `stored_tiles.read_tile_pixels`)."""
        read_level = level_reader or self.read_level
        level = self.best_level(scale)
        ds = self.levels[level].downsample
        f = scale / ds
        sx, sy = x / ds, y / ds
        whole = abs(f - round(f)) < _EPS and abs(sx - round(sx)) < _EPS and abs(sy - round(sy)) < _EPS
        if whole:
            k, ix, iy = round(f), round(sx), round(sy)
            img = read_level(level, ix, iy, width_px * k, height_px * k, pad_value)
            if k == 1:
                return img
            return cv2.resize(img, (width_px, height_px), interpolation=cv2.INTER_AREA)
        return self._resample(level, sx, sy, f, width_px, height_px, pad_value, read_level)

    def _resample(self, level: int, sx: float, sy: float, f: float, width_px: int, height_px: int,
                  pad_value: int, read_level=None) -> np.ndarray:
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
                    self._resample(level, sx, sy, f, half, height_px, pad_value, read_level),
                    self._resample(level, sx + half * f, sy, f, width_px - half, height_px, pad_value, read_level)],
                    axis=1)
            half = height_px // 2
            return np.concatenate([
                self._resample(level, sx, sy, f, width_px, half, pad_value, read_level),
                self._resample(level, sx, sy + half * f, f, width_px, height_px - half, pad_value, read_level)],
                axis=0)
        sigma = 0.5 * math.sqrt(f * f - 1) if f > 1 + _EPS else 0.0
        radius = math.ceil(3 * sigma) if sigma else 0
        margin = 2 + radius
        bx, by = math.floor(sx) - margin, math.floor(sy) - margin
        bw = math.ceil(sx + width_px * f) + margin - bx
        bh = math.ceil(sy + height_px * f) + margin - by
        img = (read_level or self.read_level)(level, bx, by, bw, bh, pad_value)
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


def apply_pixels(pixels: PixelMeaning, raw: dict[int, np.ndarray]) -> np.ndarray:
    """RGB uint8 (H, W, 3) from the stored samples of each frame, (H, W, bands) arrays keyed by frame:
    the chosen channels, each through its window, grey repeated to RGB, alpha composited onto white.
    A pure function of the samples: equal inputs give equal bytes in every tile."""
    picks = pixels.channels
    first = raw[picks[0].frame]
    if (len(picks) == 3 and all(p.window is None and p.frame == picks[0].frame and p.band == i
                                for i, p in enumerate(picks))):
        rgb = first[:, :, :3].astype(np.uint8, copy=False)  # plain RGB(A): no copy per channel
    else:
        rgb = _channels_rgb(pixels, raw)
    if pixels.alpha:
        a = first[:, :, pixels.bands - 1]
        a_max = _alpha_max(pixels.dtype)
        if a.min(initial=a_max) < a_max:
            f = np.clip(a.astype(np.float64) / a_max, 0.0, 1.0)[:, :, None]
            rgb = np.rint(rgb * f + 255.0 * (1.0 - f)).astype(np.uint8)
    return np.ascontiguousarray(rgb)


def _channels_rgb(pixels: PixelMeaning, raw: dict[int, np.ndarray]) -> np.ndarray:
    planes = []
    for pick in pixels.channels:
        v = raw[pick.frame][:, :, pick.band]
        if pick.window is None:
            planes.append(v.astype(np.uint8, copy=False))
        else:
            lo, hi = pick.window
            f = (v.astype(np.float64) - lo) * (255.0 / (hi - lo))
            planes.append(np.clip(np.rint(np.nan_to_num(f, nan=0.0)), 0, 255).astype(np.uint8))
    return np.repeat(planes[0][:, :, None], 3, axis=2) if len(planes) == 1 else np.dstack(planes)


def _alpha_max(dtype: str) -> float:
    dt = np.dtype(dtype)
    return float(np.iinfo(dt).max) if np.issubdtype(dt, np.integer) else 1.0


def _holds(meta: dict, names: list[str], n_z: int, n_t: int) -> str:
    bands = int(meta.get("bandCount") or 1)
    parts = [f"{len(names)} channel(s) ({', '.join(repr(n) for n in names)})"]
    if n_z > 1:
        parts.append(f"{n_z} Z planes (0-{n_z - 1})")
    if n_t > 1:
        parts.append(f"{n_t} time points (0-{n_t - 1})")
    parts.append(f"{bands} band(s) of {meta.get('dtype') or 'uint8'} per image")
    return ", ".join(parts)


def _pick_index(choice: str, names: list[str], path: Path, holds: str) -> int:
    if choice in names:
        return names.index(choice)
    folded = [i for i, n in enumerate(names) if n.casefold() == choice.casefold()]
    if len(folded) == 1:
        return folded[0]
    if choice.strip().isdigit() and int(choice) < len(names):
        return int(choice)
    raise SlideError(f"has no channel {choice!r}: it holds {holds}", path=path,
                     fix="Pass --channel with a channel name or 0-based index, once (grey) or three times (R, G, B)")


def _decide_pixels(path: Path, meta: dict, facts: dict, *, channels: list[str] | None,
                   z: int | None, t: int | None) -> PixelMeaning:
    """What each output pixel means, from the reader's metadata and the file's tags (see PixelMeaning)."""
    dtype = str(meta.get("dtype") or "uint8")
    bands = int(meta.get("bandCount") or 3)
    frames = meta.get("frames") or []
    axes = {k.removeprefix("Index"): int(v) for k, v in (meta.get("IndexRange") or {}).items()}
    n_c, n_z, n_t = axes.pop("C", 1), axes.pop("Z", 1), axes.pop("T", 1)
    axes = {k: v for k, v in axes.items() if v > 1}
    alpha = n_c == 1 and bands in (2, 4)
    if n_c > 1:
        names = [str(c) for c in (meta.get("channels") or facts.get("channel_names") or [])][:n_c]
        names = [n or f"channel {i}" for i, n in enumerate(names)]
        names += [f"channel {i}" for i in range(len(names), n_c)]
    else:
        colour = bands - int(alpha)
        names = (["red", "green", "blue"] if colour == 3 else [f"band {i}" for i in range(colour)])
    holds = _holds(meta, names, n_z, n_t)
    if axes:
        raise SlideError(f"holds images along {', '.join(axes)} besides channels and planes ({holds}), which "
                         "slidemill does not read", path=path,
                         fix="Export the one image to analyse to its own (OME-)TIFF")
    for option, value, count, what in (("--z", z, n_z, "Z planes"), ("--t", t, n_t, "time points")):
        if value is None and count > 1:
            raise SlideError(f"holds {count} {what}: it holds {holds}", path=path,
                             fix=f"Pass {option} N (0 to {count - 1}) to choose which one is read")
        if value is not None and value >= count:
            raise SlideError(f"{option} {value} is out of range: the slide holds {holds}", path=path,
                             fix=f"Pass {option} from 0 to {count - 1}" if count > 1 else f"Leave out {option}")
    if channels:
        if len(channels) not in (1, 3):
            raise SlideError(f"--channel was given {len(channels)} times; it holds {holds}", path=path,
                             fix="Give --channel once (shown as grey) or three times (shown as R, G, B)")
        chosen = [_pick_index(c, names, path, holds) for c in channels]
    elif len(names) in (1, 3) and n_c == 1:
        chosen = list(range(len(names)))
    else:
        raise SlideError(f"holds {holds}; which to read is not clear", path=path,
                         fix="Pass --channel NAME (or 0-based index) once for a grey image or three times for "
                             "R, G, B, e.g. --channel " + " --channel ".join(repr(n) for n in names[:3]))

    def frame_of(c: int) -> int:
        if not frames:
            return 0
        want = {"IndexC": c if n_c > 1 else 0, "IndexZ": z or 0, "IndexT": t or 0}
        for fr in frames:
            if all(int(fr.get(k, 0)) == v for k, v in want.items()):
                return int(fr.get("Frame", 0))
        raise SlideError(f"has no frame for channel {c}, Z {z or 0}, T {t or 0}: it holds {holds}", path=path,
                         fix="Choose another --channel, --z or --t")

    window, source = None, None
    if dtype != "uint8":
        smin, smax, bits = facts.get("smin"), facts.get("smax"), facts.get("bits")
        dt = np.dtype(dtype)
        if smin is not None and smax is not None and smax > smin:
            window, source = (float(smin), float(smax)), "sample-value-tags"
        elif np.issubdtype(dt, np.unsignedinteger) and bits and bits < dt.itemsize * 8:
            window, source = (0.0, float(2**bits - 1)), "bits-per-sample"
        else:
            source = "slide-percentiles"  # measured by Slide once the levels are known
    picks = [ChannelPick(name=names[c], frame=frame_of(c), band=0 if n_c > 1 else c, window=window)
             for c in chosen]
    return PixelMeaning(dtype=dtype, bands=bands, frames=max(1, len(frames)), alpha=alpha, channels=picks,
                        z=z if n_z > 1 else None, t=t if n_t > 1 else None, window_source=source)


def _check_recorded(path: Path, pixels: PixelMeaning, meta: dict) -> None:
    """A recorded PixelMeaning must describe this file's samples."""
    have = (str(meta.get("dtype") or "uint8"), int(meta.get("bandCount") or 3), max(1, len(meta.get("frames") or [])))
    want = (pixels.dtype, pixels.bands, pixels.frames)
    if have != want:
        raise SlideError(f"holds {have[2]} frame(s) of {have[1]} {have[0]} band(s), but the recorded pixel meaning "
                         f"is for {want[2]} frame(s) of {want[1]} {want[0]} band(s)", path=path,
                         fix="Give the slide the tileset or model was made from, or choose --channel, --z, --t anew")


def _stored_levels(source, width: int, count: int, frame: int) -> list[bool]:
    """Which of large-image's levels (finest first) the file stores."""
    dicom = getattr(source, "_dicom", None)
    if dicom is not None:  # wsidicom: the levels of the series' pyramid; large-image synthesises the rest
        try:
            widths = [int(level.size.width) for level in dicom.pyramids[0].levels]
        except Exception:  # noqa: BLE001 - unknown wsidicom layout: trust level 0 only
            widths = [width]
        return [i == 0 or any(abs(w - math.ceil(width / 2**i)) <= 1 for w in widths) for i in range(count)]
    large_image = _large_image()
    if type(source)._nonemptyLevelsList is large_image.tilesource.TileSource._nonemptyLevelsList:
        return [i == 0 for i in range(count)]  # the base class claims every level; only level 0 is sure
    try:
        listed = [bool(x) for x in reversed(source._nonemptyLevelsList(frame))]
    except Exception:  # noqa: BLE001 - a source failing to list: trust level 0 only
        listed = [True]
    return [i == 0 or (listed[i] if i < len(listed) else False) for i in range(count)]


# OME-XML length units, in microns
_OME_UNITS = {"pm": 1e-6, "Å": 1e-4, "nm": 1e-3, "µm": 1.0, "μm": 1.0, "um": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}
# tifffile's names for TIFF flavours whose resolution the reader takes from the vendor's own metadata
_VENDOR_TIFFS = ("svs", "ndpi", "scn", "philips", "bif", "qpi", "lsm", "fluoview", "stk", "sis")


def _tiff_facts(path: Path) -> dict:
    """What tifffile says about a TIFF: flavour, resolution tags, OME PhysicalSize, sample range."""
    if not is_tiff(path):
        return {}
    facts: dict = {"tiff": True}
    with tifffile.TiffFile(path) as tif:
        facts["vendor"] = next((k for k in _VENDOR_TIFFS if getattr(tif, f"is_{k}", False)), None)
        page = tif.pages[0]
        tags = page.tags
        facts["bits"] = int(np.max(page.bitspersample)) if page.bitspersample else None
        for key, name in (("smin", "SMinSampleValue"), ("smax", "SMaxSampleValue")):
            if name in tags:
                facts[key] = float(np.min(tags[name].value) if key == "smin" else np.max(tags[name].value))
        if "XResolution" in tags and "ResolutionUnit" in tags:
            num, den = tags["XResolution"].value
            facts["resolution"] = (num / den if den else 0.0, int(tags["ResolutionUnit"].value))
        if tif.is_ome and tif.ome_metadata:
            facts["ome"] = _ome_mpp(tif.ome_metadata)
            facts["channel_names"] = _ome_channel_names(tif.ome_metadata)
    return facts


def _ome_channel_names(xml_text: str) -> list[str]:
    """The Name of each Channel of the first image's Pixels ('' where unnamed)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError:
        return []
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return []
    return [el.attrib.get("Name", "") for el in pixels if el.tag.rsplit("}", 1)[-1] == "Channel"]


def _ome_mpp(xml_text: str) -> tuple[float | None, str]:
    """The first image's PhysicalSizeX in microns (None and why when absent or in an unknown unit)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError:
        return None, "its OME-XML cannot be parsed"
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None, "its OME-XML has no PhysicalSizeX"
    unit = pixels.attrib.get("PhysicalSizeXUnit", "µm")
    if unit not in _OME_UNITS:
        return None, f"its OME-XML PhysicalSizeX is in {unit!r}, not a length unit slidemill knows"
    value = float(pixels.attrib["PhysicalSizeX"]) * _OME_UNITS[unit]
    return (value, "") if value > 0 else (None, "its OME-XML PhysicalSizeX is not positive")


def _resolution(reader: str, meta: dict, facts: dict) -> tuple[float | None, str | None, str]:
    """Level-0 microns per pixel, where they came from, and why there are none.

    large-image's mm_x comes from: openslide's openslide.mpp-x (vendor metadata; for a generic TIFF
    openslide derives it from centimetre resolution tags), the tiff source's resolution tags
    (any unit) or Optrascan metadata, the tifffile source's resolution tags (at least 100 per unit),
    then OME PhysicalSizeX, then Aperio's MPP, DICOM's PixelSpacing, and nothing from PIL. So:
    OME-TIFF -> OME-XML PhysicalSizeX with its unit ("ome"); a vendor TIFF (SVS, NDPI, SCN, Philips,
    BIF, QPTIFF, ...) or a non-TIFF vendor format (DICOM, MIRAX, ...) -> large-image's value
    ("vendor"); any other TIFF -> its own resolution tags, only when they cannot be an image editor's
    dpi ("tiff-resolution": inch tags up to MAX_INCH_TAG_MPP, centimetre tags up to MAX_CM_TAG_MPP);
    PNG/JPEG -> none.
    """
    mm_x = meta.get("mm_x")
    if facts.get("ome") is not None:
        mpp, why = facts["ome"]
        if mpp is not None:
            return mpp, "ome", ""
        if not facts.get("resolution"):
            return None, None, why
    if facts.get("tiff") and facts.get("vendor") is None:
        res, unit = facts.get("resolution") or (0.0, 1)
        if res <= 0 or unit not in (2, 3):
            return None, None, "the TIFF has no resolution tag with a unit"
        mpp = (25400.0 if unit == 2 else 10000.0) / res
        limit = MAX_INCH_TAG_MPP if unit == 2 else MAX_CM_TAG_MPP
        if mpp > limit:
            per = "dpi" if unit == 2 else "pixels per cm"
            return None, None, (f"its only resolution is a TIFF tag of {res:g} {per}, as image editors write; that "
                                f"would be {mpp:.4g} um/px, not a microscope's resolution")
        return mpp, "tiff-resolution", ""
    if reader == "pil":
        return None, None, "PNG/JPEG files carry no microscope resolution"
    if mm_x:
        return float(mm_x) * 1000.0, "vendor", ""
    return None, None, ""


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def is_tiff(path: Path) -> bool:
    """Whether the file starts with a TIFF or BigTIFF signature (either byte order)."""
    with open(path, "rb") as handle:
        return handle.read(4) in _TIFF_MAGIC


def _check_tiff_complete(path: Path) -> None:
    """Readers fill the tiles of a truncated TIFF with black without a word; refuse such a file."""
    if not is_tiff(path):
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


# the formats named to a user whose file no reader takes (large-image knows more extensions than these)
SUPPORTED_FORMATS = ("Aperio .svs, Hamamatsu .ndpi, MIRAX .mrxs, Leica .scn, Ventana .bif, Philips and generic "
                     "(pyramidal or OME) .tif/.tiff, QPTIFF .qptiff, DICOM .dcm (or a folder of one series), "
                     "PNG and JPEG")
_MAGIC = ((b"PK\x03\x04", "a ZIP archive"), (b"\x1f\x8b", "a gzip archive"), (b"%PDF", "a PDF document"),
          (b"\x89HDF", "an HDF5 file"), (b"ZISRAWFILE", "a Zeiss CZI file"), (b"\x89PNG", "a PNG image"),
          (b"\xff\xd8\xff", "a JPEG image"), (b"II*\x00", "a TIFF file"), (b"MM\x00*", "a TIFF file"),
          (b"II+\x00", "a BigTIFF file"), (b"MM\x00+", "a BigTIFF file"), (b"7z\xbc\xaf", "a 7-Zip archive"))


def _sniff(path: Path) -> str:
    """What the first bytes of a file say it is, in words."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(512)
    except OSError:
        return "an unreadable file"
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "a DICOM file"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if not head:
        return "an empty file"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "a file of an unknown binary format"


def open_slide(path: str | Path, *, mpp: float | None = None, channels: list[str] | None = None,
               z: int | None = None, t: int | None = None, dicom_series: str | None = None,
               pixels: PixelMeaning | None = None) -> Slide:
    """Open any slide large-image can read, a DICOM series folder, or a plain PNG/JPEG image.

    `mpp` overrides (or supplies) the level-0 microns per pixel (--slide-mpp); `channels` chooses
    channels by name or 0-based index (1: grey, 3: R, G, B; --channel), `z`/`t` the plane (--z, --t),
    `dicom_series` the SeriesInstanceUID in a folder of several (--dicom-series); `pixels` applies a
    pixel meaning decided before (recorded in a tileset) instead of deciding anew. Raises SlideError
    (exit 2) naming the file, what it holds and the option that resolves it when any of these is
    needed and missing, or when no reader takes the file.
    """
    path = Path(path)
    if not path.exists():
        raise MissingInputError("slide does not exist", path=path,
                                fix="Check the path and that the folder is mounted")
    series = None
    if path.is_dir() or is_dicom_file(path) or dicom_series is not None:
        target, series = dicom_target(path, dicom_series)
    else:
        target = path
    if mpp is not None and mpp <= 0:
        raise SlideError(f"--slide-mpp must be positive, got {mpp}", path=path)
    _check_tiff_complete(target)
    large_image = _large_image()
    try:
        source = large_image.open(str(target))
    except Exception as exc:  # noqa: BLE001 - large-image raises many types for unreadable files
        reason = str(exc).replace(str(target), "").strip(" :") or type(exc).__name__
        ext = target.suffix.lower().lstrip(".")
        shown = f"extension .{ext}" if ext else "no extension"
        what = _sniff(target)
        if "No available tilesource" in reason:
            raise SlideError(f"is {what} ({shown}) and cannot be opened as a slide: no reader here supports it",
                             path=path, fix=f"Supported are {SUPPORTED_FORMATS}; convert other formats to a "
                             "pyramidal (OME-)TIFF (e.g. with bfconvert or vips), and copy a file of a supported "
                             "format again if it may be truncated or damaged") from None
        raise SlideError(f"is {what} ({shown}) that cannot be opened as a slide ({reason})", path=path,
                         fix="Check that the file is a complete whole-slide image or PNG/JPEG "
                             "(not truncated, not an archive) in a format large-image reads") from None
    try:
        facts = _tiff_facts(target)
    except SlideError:
        raise
    except Exception:  # noqa: BLE001 - tags that tifffile cannot read: decide from large-image alone
        facts = {}
    slide = Slide(path, source, mpp=mpp, channels=channels, z=z, t=t, series=series, facts=facts, pixels=pixels)
    log.debug("opened %s with %s: %dx%d, %d levels, mpp=%s (%s), pixels %s", path, slide.reader,
              slide.width, slide.height, len(slide.levels), slide.mpp, slide.mpp_source,
              slide.pixels.model_dump(exclude_none=True))
    return slide
