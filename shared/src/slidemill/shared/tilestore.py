"""Where a tileset's pixels live, and the one reader of them for every store.

Three stores (`TileStoreInfo.kind` in the tileset manifest):

- ``png``: one PNG per tile image and mask, as slidemill always wrote (schema 1.0 manifests);
- ``zarr``: one zarr v2 container in one zip file (`tiles.zarr.zip`): ``images`` (N, T, T, 3) and
  ``masks`` (N, T, T), uint8, one chunk per tile. The file to copy to a training node that cannot
  see the slides. Image codecs (measured on CMU-1 H&E tiles, 256 px, one core; README has figures):
  ``blosc-lz4`` (lossless, byte shuffle: 1.3x smaller than raw, ~1000 MP/s encode, ~2500 decode)
  and ``jpeg-q95`` (lossy, 4:4:4, PSNR ~45 dB, 4.8x smaller, ~170 MP/s encode, ~110 decode);
  masks always ``blosc-lz4``;
- ``refs``: no copy of image pixels: positions only, the image read from the slide at training
  time (`read_tile_pixels`), masks in a container as for zarr, plus the labelled annotation shapes
  (`shapes.json`, level-0 WKB) so train can draw random patches.

`open_tileset(path)` gives a `TilesetReader` whose `read(i)` returns the same (image, mask) for the
lossless stores. It is picklable (file handles reopen in each process), for DataLoader workers. Its
`table` holds the tile rows as numpy columns (`slidemill.shared.tiletable`), whether the manifest
streams them to a rows file (1.2) or inlines them (before 1.2).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .contracts import TileSet, TileStoreInfo, load_contract
from .errors import InputError, MissingInputError, OutputError
from .files import resolve_in
from .tiletable import TileTable, read_tile_table

CONTAINER_NAME = "tiles.zarr.zip"
SHAPES_NAME = "shapes.json"
LOSSLESS_CODEC = "blosc-lz4"
LOSSY_CODEC = "jpeg-q95"
IMAGE_CODECS = {LOSSLESS_CODEC: True, LOSSY_CODEC: False}  # name: lossless


def _blosc_single_threaded() -> None:
    # one tile is a small chunk: blosc's thread pool only adds hand-overs (and waits, on a busy
    # machine); slidemill parallelises over tiles with processes instead
    from numcodecs import blosc

    blosc.use_threads = False


def image_codec(name: str):
    """The numcodecs codec of an image codec name (`IMAGE_CODECS`)."""
    import numcodecs

    _blosc_single_threaded()
    if name == LOSSLESS_CODEC:
        return numcodecs.Blosc(cname="lz4", clevel=5, shuffle=numcodecs.Blosc.SHUFFLE)
    if name == LOSSY_CODEC:
        from imagecodecs.numcodecs import Jpeg

        _register_codecs()  # zarr finds the codec by its id when it reads the array's metadata back
        return Jpeg(level=95, subsampling="444")
    raise InputError(f"unknown image codec {name!r}", fix=f"Choose one of {', '.join(IMAGE_CODECS)}")


def mask_codec():
    return image_codec(LOSSLESS_CODEC)


def _register_codecs() -> None:
    from imagecodecs.numcodecs import register_codecs

    register_codecs(verbose=False)


def encode_chunk(codec, array: np.ndarray) -> bytes:
    """The bytes zarr stores for a chunk of one tile (a leading axis of 1 added)."""
    return bytes(codec.encode(np.ascontiguousarray(array[None])))


def chunk_key(array: str, index: int) -> str:
    """The zip entry (zarr v2 chunk key, "." separated) of tile `index` in array `array`."""
    return f"images/{index}.0.0.0" if array == "images" else f"masks/{index}.0.0"


def stored_entry_header(key: str, chunk, date_time: tuple[int, ...]) -> tuple[bytes, int]:
    """The local file header of a zip entry `key` that holds `chunk` stored (not compressed), and
    the chunk's CRC-32. Header and chunk back to back are the entry, complete: it holds no offset,
    so any process can make it and write it anywhere in the zip. The header is Python's own
    (`zipfile.ZipInfo.FileHeader`)."""
    import zlib

    info = _stored_info(key, len(chunk), zlib.crc32(chunk), date_time)
    return info.FileHeader(), info.CRC


def _stored_info(key: str, size: int, crc: int, date_time: tuple[int, ...]):
    import zipfile

    info = zipfile.ZipInfo(key, date_time=date_time)
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = info.compress_size = size
    info.CRC = crc
    info.external_attr = 0o644 << 16  # ?rw-r--r--, as zarr's ZipStore writes its entries
    return info


class EntryBatch:
    """Tiles' chunks made into zip entries back to back, in memory: `add` each tile, then write
    `pieces` (`size` bytes) at one offset of the zip and list `entries` there (`ContainerWriter.listed`)."""

    def __init__(self, date_time: tuple[int, ...]):
        self.date_time = date_time
        self.pieces: list[bytes] = []
        self.entries: list[tuple[str, int, int, int]] = []  # key, header's offset in the batch, CRC-32, chunk size
        self.size = 0

    def add(self, index: int, image: bytes | None, mask: bytes | None) -> None:
        for array, chunk in (("images", image), ("masks", mask)):
            if chunk is None:
                continue
            key = chunk_key(array, index)
            header, crc = stored_entry_header(key, chunk, self.date_time)
            self.entries.append((key, self.size, crc, len(chunk)))
            self.pieces += (header, chunk)
            self.size += len(header) + len(chunk)


class EntryAppender:
    """Appends `EntryBatch`es to the container's zip file from any process (picklable when a
    process pool starts its workers): each batch takes the next `size` bytes at the shared end of
    the file (a counter under a lock, `multiprocessing.Value`) and is written there with `os.pwritev`
    at that offset, which POSIX filesystems honour (local, NFS, SMB; not object-store FUSE mounts
    that take only sequential writes). So the chunks go from the worker that encoded them straight
    into the zip, written once. The file is opened and closed for each batch, so an error that a
    network filesystem reports only at close (quota, space) fails that batch, not later in silence."""

    def __init__(self, path: Path, end, date_time: tuple[int, ...]):
        self.path = Path(path)
        self.end = end  # multiprocessing.Value("q"): the offset where the next batch goes
        self.date_time = date_time  # the entries' modification time, the same for every entry of the zip

    def batch(self) -> EntryBatch:
        """An empty batch of this zip's entries."""
        return EntryBatch(self.date_time)

    def append(self, batch: EntryBatch) -> int:
        """Writes the batch; returns the offset of its first byte in the zip file."""
        with self.end.get_lock():
            at = self.end.value
            self.end.value = at + batch.size
        try:
            fd = os.open(self.path, os.O_WRONLY)
        except OSError as exc:
            raise OutputError(f"cannot be opened for writing ({exc.strerror})", path=self.path,
                              fix="Check permissions and that the output folder is still there") from None
        try:
            pwrite_all(fd, batch.pieces, at, path=self.path)
        finally:
            try:
                os.close(fd)
            except OSError as exc:
                raise OutputError(f"cannot be written ({exc.strerror})", path=self.path,
                                  fix="Check free space and quota") from None
        return at


def pwrite_all(fd: int, pieces: list[bytes], offset: int, *, path: Path) -> None:
    """`pieces` back to back at `offset` of the file `fd` (`os.pwritev`, at most `IOV_MAX` pieces a
    call, going on after a short write; joined and `os.pwrite` where there is no pwritev). Raises
    OutputError, naming `path`, when the file cannot take them."""
    vectored = hasattr(os, "pwritev")
    views = [memoryview(piece) for piece in pieces if len(piece)]
    if not vectored:
        views = [memoryview(b"".join(views))] if views else []
    first, at = 0, offset
    while first < len(views):
        try:
            if vectored:
                written = os.pwritev(fd, views[first:first + _IOV_MAX], at)
            else:
                written = os.pwrite(fd, views[first], at)
        except OSError as exc:
            raise OutputError(f"cannot be written ({exc.strerror})", path=path,
                              fix="Check free space and permissions") from None
        if written <= 0:
            raise OutputError("cannot be written (no progress)", path=path, fix="Check free space")
        at += written
        while first < len(views) and written >= len(views[first]):
            written -= len(views[first])
            first += 1
        if written:
            views[first] = views[first][written:]


_IOV_MAX = 1024  # Linux's limit on the pieces of one pwritev


class ContainerWriter:
    """Writes the zip container of a tileset. zarr's `ZipStore` writes the arrays' metadata; the
    chunks bypass it: they come as `EntryBatch`es, written by `put` here or, with worker processes,
    by the workers themselves through `appender` (this process then only lists them, `listed`).
    zipfile's own writer made this one process pay a CRC, five system calls and a copy per chunk,
    about 20 % of the tile phase with two workers, and the chunks had to reach it first.
    The entries are listed in the `zipfile.ZipFile`'s directory (`filelist`, `NameToInfo`,
    `start_dir`: CPython 3.11's writer state), which writes the central directory at `close()`, with
    ZIP64 records where offsets or counts need them. Only `close()` writes that directory: a run
    that fails calls `abort()` instead, and a killed one writes none, so an unfinished zip is never a
    valid one (and it lies in a staged folder, so a killed run leaves nothing complete)."""

    def __init__(self, path: Path, count: int, tile_px: int, *, codec: str | None, masks: bool):
        import time

        import zarr

        self.path = Path(path)
        self.store = zarr.ZipStore(str(self.path), mode="w")
        self.date_time = time.localtime()[:6]
        root = zarr.group(store=self.store)
        if codec is not None:
            root.create_dataset("images", shape=(count, tile_px, tile_px, 3), chunks=(1, tile_px, tile_px, 3),
                                dtype="u1", compressor=image_codec(codec), fill_value=255,
                                dimension_separator=".", write_empty_chunks=True)
        if masks:
            root.create_dataset("masks", shape=(count, tile_px, tile_px), chunks=(1, tile_px, tile_px), dtype="u1",
                                compressor=mask_codec(), fill_value=255, dimension_separator=".",
                                write_empty_chunks=True)
        root.attrs["slidemill"] = {"tiles": count, "tile_size_px": tile_px, "image_codec": codec}
        self.store.zf.fp.flush()  # from here on the file is written at offsets, not through zipfile
        self._end = self.store.zf.start_dir
        self._appender: EntryAppender | None = None

    def appender(self, context) -> EntryAppender:
        """The appender for worker processes of the multiprocessing `context`; from now on this
        process appends through it too."""
        if self._appender is None:
            self._appender = EntryAppender(self.path, context.Value("q", self._end), self.date_time)
        return self._appender

    def put(self, index: int, image: bytes | None, mask: bytes | None) -> None:
        """Appends tile `index`'s chunks (`encode_chunk`'s bytes, or None for none)."""
        batch = EntryBatch(self.date_time)
        batch.add(index, image, mask)
        if self._appender is not None:
            at = self._appender.append(batch)
        else:
            at, self._end = self._end, self._end + batch.size
            pwrite_all(self.store.zf.fp.fileno(), batch.pieces, at, path=self.path)
        self.listed(at, batch.entries)

    def listed(self, at: int, entries: list[tuple[str, int, int, int]]) -> None:
        """Lists the entries of a batch written at offset `at` (`EntryBatch.entries`)."""
        zf = self.store.zf
        for key, offset, crc, size in entries:
            info = _stored_info(key, size, crc, self.date_time)
            info.header_offset = at + offset
            if key in zf.NameToInfo:  # zipfile itself only warns
                raise RuntimeError(f"zip entry {key} listed twice in {self.path}")
            zf.filelist.append(info)
            zf.NameToInfo[key] = info
        zf._didModify = True

    def close(self) -> None:
        """Writes the central directory after the last entry: the zip is complete. Call it only
        when every tile is listed and every worker has ended."""
        zf = self.store.zf
        if zf.fp is not None:
            # the raw value: every worker has ended, and one killed while it held the lock never released it
            zf.start_dir = self._appender.end.get_obj().value if self._appender is not None else self._end
            zf.fp.seek(zf.start_dir)
        self.store.close()

    def abort(self) -> None:
        """Closes the file without a central directory (not a valid zip): for a run that failed."""
        zf = self.store.zf
        zf._didModify = False  # so zipfile's close writes no end record
        self.store.close()


def write_shapes(path: Path, shapes, fill_label: int) -> None:
    """The labelled shapes (`LabelledShape`: geometry, label, class_name) of a refs tileset."""
    import shapely

    data = {"fill_label": fill_label,
            "shapes": [{"label": s.label, "class_name": s.class_name, "wkb": shapely.to_wkb(s.geometry, hex=True)}
                       for s in shapes]}
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle)


def read_shapes(path: Path):
    """(labelled shapes, fill label) of a refs tileset's shapes file."""
    import shapely

    from .rasterize import LabelledShape

    data = json.loads(Path(path).read_bytes())
    shapes = [LabelledShape(shapely.from_wkb(s["wkb"]), int(s["label"]), s["class_name"]) for s in data["shapes"]]
    return shapes, int(data["fill_label"])


def read_png_pair(image_path: Path, mask_path: Path | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A png store's tile: RGB (H, W, 3) uint8 and mask (H, W) uint8 or None, unchecked shapes."""
    import cv2

    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError("cannot be read as an image", path=image_path, fix="Tile the slide again")
    image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    mask = None
    if mask_path is not None:
        mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        if mask is None:
            raise InputError("cannot be read as a mask image", path=mask_path, fix="Tile the slide again")
        if mask.ndim != 2 or mask.dtype != np.uint8:
            raise InputError(f"is not a single-channel 8-bit mask (shape {mask.shape}, {mask.dtype})",
                             path=mask_path)
    return image, mask


def resolve_slide(manifest: Path, store: TileStoreInfo, slide: Path | None) -> Path:
    """The slide of a refs tileset: `slide` when given (a file, or a folder holding the slide's
    name), else `store.slide_path` relative to the manifest's folder."""
    if slide is not None:
        slide = Path(slide)
        candidate = slide / PurePosixPath(store.slide_path or "").name if slide.is_dir() else slide
        if not candidate.exists():
            raise MissingInputError("the slide given for a refs tileset does not exist", path=candidate,
                                    fix="Give the slide file (or its folder) the tileset was cut from")
        return candidate
    rel = store.slide_path or ""
    if rel.startswith("/") or "\\" in rel:
        raise InputError(f"has a slide path {rel!r} that is not relative", path=manifest,
                         fix="Tile the slide again, or give the slide with --slide")
    candidate = Path(os.path.normpath(manifest.parent / rel))
    if not candidate.exists():
        raise MissingInputError(
            f"is a refs tileset (no copy of the image pixels) whose slide {rel!r} is not found relative to it",
            path=manifest, fix="Give the slide again (train: --slide PATH), or keep the tileset where the slide "
                               "path resolves, or tile with --store zarr to carry the pixels")
    return candidate


def manifest_of(path: str | Path) -> Path:
    path = Path(path)
    return path / "tileset.json" if path.is_dir() else path


@dataclass
class TilesetReader:
    """Random access to a tileset's tiles: `read(i)` -> (RGB (T, T, 3) uint8, mask (T, T) uint8 or None)."""

    manifest: Path
    tileset: TileSet
    slide_path: Path | None = None
    table: TileTable | None = None

    def __post_init__(self):
        if self.table is None:
            self.table = read_tile_table(self.manifest, self.tileset)
        self.store = self.tileset.store
        self.tile_px = self.tileset.params.tile_size_px
        self._group = None
        self._slide = None
        self._stored = None
        if self.store.kind == "refs" and self.slide_path is None:
            self.slide_path = resolve_slide(self.manifest, self.store, None)
        if self.store.container is not None:
            path = self.container_path
            if not path.is_file():
                raise MissingInputError("lists a tile container that does not exist", path=self.manifest,
                                        fix=f"Copy the whole tileset folder ({self.store.container} too)")

    def __getstate__(self):
        state = dict(self.__dict__)
        state.update(_group=None, _slide=None, _stored=None)
        return state

    def __len__(self) -> int:
        return len(self.table)

    def records(self):
        """The tile rows as `TileRecord`s, in index order (one at a time)."""
        return iter(self.table)

    @property
    def base(self) -> Path:
        return self.manifest.parent

    @property
    def container_path(self) -> Path:
        return resolve_in(self.base, self.store.container)

    def _container(self):
        if self._group is None:
            import zarr

            _register_codecs()
            _blosc_single_threaded()
            group = zarr.open_group(zarr.ZipStore(str(self.container_path), mode="r"), mode="r")
            self._group = {name: group[name] for name in ("images", "masks") if name in group}
        return self._group

    def slide(self):
        """The open slide (refs store), opened once per process."""
        if self._slide is None:
            from .slide import open_slide
            from .stored_tiles import StoredLevels

            mpp = self.tileset.slide.mpp if self.tileset.slide.mpp_source == "user" else None
            self._slide = open_slide(self.slide_path, mpp=mpp)
            if (self._slide.width, self._slide.height) != (self.tileset.slide.width, self.tileset.slide.height):
                raise InputError(
                    f"is {self._slide.width} x {self._slide.height} px but the tileset was cut from a slide of "
                    f"{self.tileset.slide.width} x {self.tileset.slide.height} px", path=self.slide_path,
                    fix="Give the slide the tileset was cut from")
            self._stored = StoredLevels(self._slide)
        return self._slide

    def read_image_at(self, x: float, y: float) -> np.ndarray:
        """The slide's pixels of a tile-sized window whose top-left is level-0 (x, y) (refs store)."""
        from .stored_tiles import read_tile_pixels

        slide = self.slide()
        t = self.tile_px
        return read_tile_pixels(slide, self._stored, x, y, t, t, self.tileset.mapping.scale,
                                self.tileset.params.pad_value)

    def read(self, i: int) -> tuple[np.ndarray, np.ndarray | None]:
        table = self.table
        kind = self.store.kind
        if kind == "png":
            mask = table.masks[i]
            return read_png_pair(resolve_in(self.base, table.images[i]),
                                 resolve_in(self.base, mask) if mask else None)
        row = table.rows[i]
        index = int(row["index"])
        mask = None
        has_masks = self.tileset.classes is not None
        if has_masks:
            mask = np.asarray(self._container()["masks"][index])
        if kind == "zarr":
            image = np.asarray(self._container()["images"][index])
        else:
            image = self.read_image_at(float(row["x"]), float(row["y"]))
        return image, mask


def open_tileset(path: str | Path, *, slide: str | Path | None = None) -> TilesetReader:
    """A reader of the tileset folder (or tileset.json) at `path`; `slide` gives a refs tileset's
    slide again (a file, or the folder holding it) when it is not where the manifest says."""
    manifest = manifest_of(path)
    tileset = load_contract(manifest, TileSet)
    slide_path = None
    if tileset.store.kind == "refs":
        slide_path = resolve_slide(manifest, tileset.store, Path(slide) if slide is not None else None)
    return TilesetReader(manifest, tileset, slide_path)
