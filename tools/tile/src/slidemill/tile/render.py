"""Reading one tile and drawing its mask: the one code path behind `run` (which writes) and
`iter_tiles` (which yields). Picklable, so every worker process opens the slide itself."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slidemill.shared.classes import IGNORE_LABEL
from slidemill.shared.errors import OutputError
from slidemill.shared.rasterize import LabelledShape, Rasterizer
from slidemill.shared.stored_tiles import StoredLevels, aligned_level, read_tile_pixels
from slidemill.shared.tilestore import EntryAppender, encode_chunk, mask_codec
from slidemill.shared.tilestore import image_codec as tile_image_codec
from slidemill.shared.tiletable import COLUMNS

from .pngenc import write_png


@dataclass(frozen=True)
class TileSpec:
    """Where a tile lies: grid position, level-0 rectangle, padding and tissue fraction."""

    index: int
    row: int
    col: int
    x: float
    y: float
    width: float
    height: float
    pad_right_px: int
    pad_bottom_px: int
    tissue_fraction: float

    @property
    def stem(self) -> str:
        return f"r{self.row:05d}_c{self.col:05d}"


class TileSpecs(Sequence):
    """The kept tiles of a plan, in order, as one numpy structured array (`COLUMNS`, ~60 bytes a
    tile, against ~500 as `TileSpec` objects): `specs[i]` builds the `TileSpec`, `specs[a:b]` a list
    of them (a worker's batch). `append` grows the array by doubling while the plan is made."""

    def __init__(self, capacity: int = 0):
        self._rows = np.zeros(max(capacity, 16), COLUMNS)
        self._n = 0

    def append(self, index: int, row: int, col: int, x: float, y: float, width: float, height: float,
               pad_right_px: int, pad_bottom_px: int, tissue_fraction: float) -> None:
        if self._n == len(self._rows):
            self._rows = np.resize(self._rows, 2 * len(self._rows))
        self._rows[self._n] = (index, col, row, x, y, width, height, pad_right_px, pad_bottom_px, tissue_fraction)
        self._n += 1

    @property
    def rows(self) -> np.ndarray:
        return self._rows[:self._n]

    def __len__(self) -> int:
        return self._n

    def _spec(self, i: int) -> TileSpec:
        r = self._rows[i]
        return TileSpec(index=int(r["index"]), row=int(r["row"]), col=int(r["col"]), x=float(r["x"]),
                        y=float(r["y"]), width=float(r["width"]), height=float(r["height"]),
                        pad_right_px=int(r["pad_right_px"]), pad_bottom_px=int(r["pad_bottom_px"]),
                        tissue_fraction=float(r["tissue_fraction"]))

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._spec(k) for k in range(*i.indices(self._n))]
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(i)
        return self._spec(i)

    def __iter__(self):
        for k in range(self._n):
            yield self._spec(k)


# widest strip read at once (output pixels): a batch's strips stay within its own memory budget
STRIP_MAX_PX = 8192


@dataclass
class TileRenderer:
    slide_path: Path
    slide_mpp: float | None
    scale: float
    tile_size_px: int
    stride_px: int
    shapes: list[LabelledShape] | None  # None: no annotations, no masks
    fill_label: int = IGNORE_LABEL
    pad_value: int = 255
    label_names: dict[int, str] = field(default_factory=dict)
    open_options: dict = field(default_factory=dict)  # open_slide's keywords besides mpp (pixels, dicom_series)
    _slide: object = field(default=None, repr=False, compare=False)
    _raster: Rasterizer | None = field(default=None, repr=False, compare=False)
    _stored: StoredLevels | None = field(default=None, repr=False, compare=False)
    _codecs: dict = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_slide"] = None
        state["_raster"] = None
        state["_stored"] = None
        state["_codecs"] = {}
        return state

    def open(self):
        if self._slide is None:
            from slidemill.shared.slide import open_slide

            self._slide = open_slide(self.slide_path, mpp=self.slide_mpp, **self.open_options)
        if self._stored is None:
            self._stored = StoredLevels(self._slide)
        if self.shapes is not None and self._raster is None:
            self._raster = Rasterizer(self.shapes, fill=self.fill_label)
        return self._slide

    def render(self, spec: TileSpec) -> tuple[np.ndarray, np.ndarray | None]:
        """The RGB tile (H, W, 3) and its class mask (H, W) or None without annotations."""
        slide = self.open()
        t = self.tile_size_px
        image = read_tile_pixels(slide, self._stored, spec.x, spec.y, t, t, self.scale, self.pad_value)
        return image, self.render_mask(spec)

    def read_images(self, specs: Sequence[TileSpec]) -> list[np.ndarray]:
        """The RGB tiles (H, W, 3) of `specs`, the same pixels as `render` gives one by one. Where
        the grid does not align with a stored level, each run of neighbours in one grid row
        (consecutive columns) is one resampled read of the slide, cut in memory (a tile equals its
        part of any larger read, bit for bit); a strip spans at most `STRIP_MAX_PX` output pixels.
        Aligned tiles are crops of a level: read one by one, their stored tiles decoded directly
        (and kept a while, `stored_tiles.CACHE_BYTES`, for tiles smaller than the stored ones)."""
        slide = self.open()
        t, stride = self.tile_size_px, self.stride_px
        images: list[np.ndarray] = []
        run: list[TileSpec] = []

        def flush() -> None:
            if not run:
                return
            first = run[0]
            strip = read_tile_pixels(slide, self._stored, first.x, first.y, (len(run) - 1) * stride + t, t,
                                     self.scale, self.pad_value)
            images.extend(np.ascontiguousarray(strip[:, k * stride:k * stride + t]) for k in range(len(run)))
            run.clear()

        for spec in specs:
            if aligned_level(slide, spec.x, spec.y, self.scale) is not None:
                flush()  # a crop of a stored level: its stored tiles decode straight into the tile
                images.append(read_tile_pixels(slide, self._stored, spec.x, spec.y, t, t, self.scale,
                                               self.pad_value))
                continue
            if run:
                first, k = run[0], len(run)
                joins = (spec.row == first.row and spec.col == first.col + k
                         and abs(spec.x - (first.x + k * stride * self.scale)) < 1e-6 and spec.y == first.y
                         and (k * stride + t) <= STRIP_MAX_PX)
                if not joins:
                    flush()
            run.append(spec)
        flush()
        return images

    def render_mask(self, spec: TileSpec) -> np.ndarray | None:
        """The tile's class mask (H, W) uint8, or None without annotations (no pixel of the slide read)."""
        self.open()
        t = self.tile_size_px
        mask = None
        if self._raster is not None:
            mask = self._raster.mask(spec.col * self.stride_px, spec.row * self.stride_px, t, t, self.scale)
            if spec.pad_right_px:
                mask[:, t - spec.pad_right_px:] = IGNORE_LABEL
            if spec.pad_bottom_px:
                mask[t - spec.pad_bottom_px:, :] = IGNORE_LABEL
        return mask

    def class_fractions(self, mask: np.ndarray | None) -> dict[str, float]:
        if mask is None:
            return {}
        if mask.size < 1 << 24:  # float32 counts are exact below 2**24; cv2's histogram is ~4x np.bincount
            import cv2

            counts = cv2.calcHist([np.ascontiguousarray(mask)], [0], None, [256], [0, 256]).ravel().astype(np.int64)
        else:
            counts = np.bincount(mask.ravel(), minlength=256)
        total = mask.size
        out = {}
        for label in np.flatnonzero(counts):
            name = self.label_names.get(int(label), f"label {int(label)}")
            out[name] = round(float(counts[label]) / total, 6)
        return dict(sorted(out.items()))

    def write(self, folder: Path, spec: TileSpec, png_compression: int,
              rendered: tuple[np.ndarray, np.ndarray | None] | None = None) -> tuple[int, dict[str, float]]:
        image, mask = rendered if rendered is not None else self.render(spec)
        for sub, pixels in (("tiles", image), ("masks", mask)):
            if pixels is None:
                continue
            target = folder / sub / f"{spec.stem}.png"
            try:
                write_png(target, pixels, png_compression)
            except OSError as exc:
                raise OutputError(f"cannot be written ({exc.strerror})", path=target,
                                  fix="Check free space and permissions") from None
        return spec.index, self.class_fractions(mask)

    def encode(self, spec: TileSpec, image_codec: str | None,
               rendered: tuple[np.ndarray, np.ndarray | None] | None = None) -> tuple[int, dict[str, float],
                                                                                       bytes | None, bytes | None]:
        """A container store's tile: (index, class fractions, image chunk or None, mask chunk or None).
        `image_codec` None (refs store): the slide's pixels are not read at all."""
        if image_codec is None:
            image, mask = None, self.render_mask(spec)
        elif rendered is not None:
            image, mask = rendered
        else:
            image, mask = self.render(spec)
        if "mask" not in self._codecs:
            self._codecs["mask"] = mask_codec()
            self._codecs["image"] = image_codec and tile_image_codec(image_codec)
        image_bytes = None if image is None else encode_chunk(self._codecs["image"], image)
        mask_bytes = None if mask is None else encode_chunk(self._codecs["mask"], mask)
        return spec.index, self.class_fractions(mask), image_bytes, mask_bytes


def render_batch(renderer: TileRenderer, specs: Sequence[TileSpec]):
    """(spec, image, mask) for each spec, the images read in strips (`TileRenderer.read_images`)."""
    images = renderer.read_images(specs)
    return [(spec, image, renderer.render_mask(spec)) for spec, image in zip(specs, images, strict=True)]


def valid_extent_px(extent_level0: int, scale: float, start_px: int, tile_px: int) -> int:
    """Tile pixels (from `start_px` of the grid) whose left/top corner lies inside the slide."""
    total = math.ceil(extent_level0 / scale - 1e-9)
    return max(0, min(tile_px, total - start_px))


# --- worker processes --------------------------------------------------------------------------

_WORKER: TileRenderer | None = None
_APPENDER: EntryAppender | None = None  # a container store's zip, which this worker writes its chunks into


def _exit_with_parent() -> None:
    """Exit when the process that started this worker is gone. A pool's worker waits on its task queue,
    whose pipe it holds both ends of, so after a SIGKILL of the main process it would wait forever
    (holding the terminal's or a caller's stderr, and with forkserver the fork server too)."""
    import multiprocessing
    import os
    import threading

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()  # returns when the parent's end of this worker's start pipe closes: it died
        os._exit(1)

    threading.Thread(target=watch, name="slidemill-parent-watch", daemon=True).start()


def init_worker(renderer: TileRenderer, appender: EntryAppender | None = None) -> None:
    global _WORKER, _APPENDER
    import logging

    _exit_with_parent()
    logging.getLogger("large_image").setLevel(logging.ERROR)
    _WORKER = renderer
    _APPENDER = appender
    renderer.open()


def write_batch(renderer: TileRenderer, folder: Path, png_compression: int,
                specs: list[TileSpec]) -> list[tuple[int, dict[str, float]]]:
    return [renderer.write(folder, spec, png_compression, (image, mask))
            for spec, image, mask in render_batch(renderer, specs)]


def encode_batch(renderer: TileRenderer, image_codec: str | None, specs: list[TileSpec]) -> list[tuple]:
    if image_codec is None:  # refs: masks only
        return [renderer.encode(spec, None) for spec in specs]
    return [renderer.encode(spec, image_codec, (image, mask)) for spec, image, mask in render_batch(renderer, specs)]


def worker_write(folder: Path, png_compression: int, specs: list[TileSpec]) -> list[tuple[int, dict[str, float]]]:
    assert _WORKER is not None
    return write_batch(_WORKER, folder, png_compression, specs)


def worker_encode_append(image_codec: str | None, specs: list[TileSpec]) -> tuple[int, list[tuple], list[tuple]]:
    """A batch encoded (`encode_batch`) and its chunks written by this worker straight into the container
    (`init_worker`'s appender) instead of sent back: (offset of the batch in the zip, its
    `EntryBatch.entries`, [(index, class fractions)])."""
    assert _WORKER is not None and _APPENDER is not None
    batch = _APPENDER.batch()
    rows = []
    for index, fractions, image, mask in encode_batch(_WORKER, image_codec, specs):
        batch.add(index, image, mask)
        rows.append((index, fractions))
    return _APPENDER.append(batch), batch.entries, rows


def worker_render(specs: list[TileSpec]) -> list[tuple[TileSpec, np.ndarray, np.ndarray | None, dict[str, float]]]:
    assert _WORKER is not None
    return [(spec, image, mask, _WORKER.class_fractions(mask)) for spec, image, mask in render_batch(_WORKER, specs)]
