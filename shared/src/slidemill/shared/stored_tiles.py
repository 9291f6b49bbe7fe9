"""Tile pixels straight from a TIFF's stored tiles, when a tile grid aligns with a stored level.

When tiles are cut at exactly a stored level's resolution, a tile is a crop of that level: decoding
the file's own (JPEG, deflate, zstd, ...) tiles with tifffile + imagecodecs and copying them into
place gives the tile without resampling and without large-image's region machinery, at close to
the codec's decode speed. `read_tile_pixels` uses this where it applies and `Slide.read_region`
otherwise, so every caller (tile's writer, the refs store's reader, random patches) gets the same
pixels from one function.

Only plain pages take the direct path: tiled, 8-bit, 3 samples, RGB or YCbCr, interleaved, not NDPI,
and a page whose size equals the level large-image reports. Anything else (alpha, 16-bit, planar,
stripped files, NDPI, non-TIFF formats) reads through `Slide.read_region`.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np

from .errors import SlideError
from .slide import Slide, is_tiff

log = logging.getLogger(__name__)

_EPS = 1e-6
# decoded stored tiles kept per process, so neighbouring reads (tiles smaller than the stored ones,
# resampled reads overlapping by a few pixels, strips of a grid row) decode each stored tile once
CACHE_BYTES = 32 << 20
# tifffile photometric values: RGB = 2, YCbCr = 6
_PHOTOMETRIC_OK = {2, 6}


class _Page:
    def __init__(self, page):
        self.page = page
        self.width, self.height = int(page.imagewidth), int(page.imagelength)
        self.tw, self.tl = int(page.tilewidth), int(page.tilelength)
        self.across = math.ceil(self.width / self.tw)
        self.decode = page.decode
        self.tables = getattr(page, "jpegtables", None)
        self.offsets = page.dataoffsets
        self.counts = page.databytecounts

    def tile(self, fh, tx: int, ty: int) -> np.ndarray:
        index = ty * self.across + tx
        count = self.counts[index]
        if not count:
            return None
        fh.seek(self.offsets[index])
        data = fh.read(count)
        segment, _, shape = self.decode(data, index, jpegtables=self.tables)
        return np.asarray(segment).reshape(shape[-3], shape[-2], shape[-1])


def _plain(page) -> bool:
    try:
        # NDPI "tiles" are pieces of one JPEG stream that need the page's JPEG header and restart markers
        # around them; tifffile's per-tile decode cannot take them alone ("Not a JPEG file")
        return (page.is_tiled and not page.is_ndpi and page.bitspersample == 8 and page.samplesperpixel == 3
                and int(page.photometric) in _PHOTOMETRIC_OK and int(page.planarconfig) == 1
                and not page.extrasamples and page.imagedepth == 1)
    except Exception:  # noqa: BLE001 - an odd page takes the general path
        return False


def _identity(slide: Slide) -> bool:
    pixels = getattr(slide, "pixels", None)
    if pixels is None:
        return True
    # the reader's alpha (openslide always adds one) is no matter: a page with extra samples is not _plain
    return (pixels.frames == 1 and pixels.dtype == "uint8"
            and [(c.frame, c.band, c.window) for c in pixels.channels] == [(0, 0, None), (0, 1, None), (0, 2, None)])


class StoredLevels:
    """The stored tiles of a TIFF slide's levels, by large-image level index; `read` returns None
    where the direct path does not apply. Opens the file lazily; picklable (handles are dropped)."""

    def __init__(self, slide: Slide):
        self.path = Path(slide.path)
        # only where the slide's pixel meaning is the stored RGB itself (no channel choice or window)
        self.levels = [(lv.width, lv.height, lv.stored and _identity(slide)) for lv in slide.levels]
        self._tif = None
        self._pages: dict[int, _Page | None] | None = None
        self._cache: OrderedDict = OrderedDict()  # (level, tx, ty) -> decoded tile, least recent first
        self._cached = 0

    def __getstate__(self):
        return {"path": self.path, "levels": self.levels, "_tif": None, "_pages": None, "_cache": OrderedDict(),
                "_cached": 0}

    def _tile(self, level: int, page: _Page, tx: int, ty: int) -> np.ndarray | None:
        key = (level, tx, ty)
        tile = self._cache.get(key)
        if tile is not None:
            self._cache.move_to_end(key)
            return tile
        tile = page.tile(self._tif.filehandle, tx, ty)
        if tile is None:
            return None
        self._cache[key] = tile
        self._cached += tile.nbytes
        while self._cached > CACHE_BYTES and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cached -= old.nbytes
        return tile

    def _open(self) -> dict[int, _Page | None]:
        if self._pages is not None:
            return self._pages
        self._pages = {}
        if not self.path.is_file() or not is_tiff(self.path):
            return self._pages
        import tifffile

        try:
            self._tif = tifffile.TiffFile(self.path)
            series = self._tif.series[0]
            pages = [lv.keyframe for lv in series.levels]
        except Exception as exc:  # noqa: BLE001 - unusual files take the general path
            log.debug("no direct tile path for %s: %s", self.path, exc)
            return self._pages
        for i, (w, h, stored) in enumerate(self.levels):
            match = [p for p in pages if int(p.imagewidth) == w and int(p.imagelength) == h]
            self._pages[i] = _Page(match[0]) if stored and match and _plain(match[0]) else None
        return self._pages

    @staticmethod
    def _complete(page: _Page, x0: int, y0: int, x1: int, y1: int) -> bool:
        """Whether every stored tile under [x0, x1) x [y0, y1) has data (a tile of byte count 0 is
        left to the padding)."""
        for ty in range(y0 // page.tl, (y1 - 1) // page.tl + 1):
            for tx in range(x0 // page.tw, (x1 - 1) // page.tw + 1):
                if not page.counts[ty * page.across + tx]:
                    return False
        return True

    def available(self, level: int) -> bool:
        return self._open().get(level) is not None

    def read(self, level: int, x: int, y: int, w: int, h: int, pad_value: int = 255) -> np.ndarray | None:
        """Pixels [x, x+w) x [y, y+h) of `level` (padding outside it), or None without a direct path."""
        page = self._open().get(level)
        if page is None:
            return None
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, page.width), min(y + h, page.height)
        if x1 <= x0 or y1 <= y0:
            return np.full((h, w, 3), pad_value, np.uint8)
        if (x0, y0, x1, y1) == (x, y, x + w, y + h) and self._complete(page, x0, y0, x1, y1):
            out = np.empty((h, w, 3), np.uint8)  # every pixel is copied from a stored tile below
        else:
            out = np.full((h, w, 3), pad_value, np.uint8)
        for ty in range(y0 // page.tl, (y1 - 1) // page.tl + 1):
            for tx in range(x0 // page.tw, (x1 - 1) // page.tw + 1):
                try:
                    tile = self._tile(level, page, tx, ty)
                except Exception as exc:  # noqa: BLE001 - codec errors name the slide
                    raise SlideError(f"cannot decode stored tile ({tx}, {ty}) of level {level}: {exc}",
                                     path=self.path, fix="Check that the slide file is complete and not corrupt") \
                        from None
                if tile is None:
                    continue
                gx0, gy0 = tx * page.tw, ty * page.tl
                cx0, cy0 = max(x0, gx0), max(y0, gy0)
                cx1, cy1 = min(x1, gx0 + page.tw), min(y1, gy0 + page.tl)
                out[cy0 - y:cy1 - y, cx0 - x:cx1 - x] = tile[cy0 - gy0:cy1 - gy0, cx0 - gx0:cx1 - gx0]
        return out


def aligned_level(slide: Slide, x: float, y: float, scale: float) -> tuple[int, int, int] | None:
    """(level, x, y in that level's pixels) when output pixels at `scale` are exactly one stored
    level's pixels at whole positions; None when a read must resample."""
    level = slide.best_level(scale)
    ds = slide.levels[level].downsample
    f, sx, sy = scale / ds, x / ds, y / ds
    if abs(f - 1) < _EPS and abs(sx - round(sx)) < _EPS and abs(sy - round(sy)) < _EPS:
        return level, round(sx), round(sy)
    return None


def read_tile_pixels(slide: Slide, stored: StoredLevels | None, x: float, y: float, width_px: int,
                     height_px: int, scale: float, pad_value: int = 255) -> np.ndarray:
    """RGB uint8 (height_px, width_px, 3) whose top-left is level-0 (x, y), `scale` level-0 px per
    pixel: the stored tiles decoded directly where the grid aligns with a stored level; otherwise
    `Slide.read_region`'s resampling, of the level's stored tiles decoded directly where that level
    has them (else read through large-image). Same pixels either way for lossless slides; for JPEG
    both decode with libjpeg-turbo."""
    if stored is not None:
        aligned = aligned_level(slide, x, y, scale)
        if aligned is not None:
            image = stored.read(aligned[0], aligned[1], aligned[2], width_px, height_px, pad_value)
            if image is not None:
                return image
        elif stored.available(slide.best_level(scale)):
            def read_level(level: int, lx: int, ly: int, w: int, h: int, pad: int) -> np.ndarray:
                image = stored.read(level, lx, ly, w, h, pad)
                return image if image is not None else slide.read_level(level, lx, ly, w, h, pad)

            return slide.read_region(x, y, width_px, height_px, scale, pad_value=pad_value, level_reader=read_level)
    return slide.read_region(x, y, width_px, height_px, scale, pad_value=pad_value)
