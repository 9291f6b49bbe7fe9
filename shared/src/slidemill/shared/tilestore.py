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
from .errors import InputError, MissingInputError
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


class ContainerWriter:
    """Writes the zip container of a tileset from the main process; workers encode the chunks
    (`encode_chunk`) so only file I/O is serial. `close()` finishes the zip; an unfinished one is
    not a valid zip (and it lies in a staged folder, so a killed run leaves nothing complete)."""

    def __init__(self, path: Path, count: int, tile_px: int, *, codec: str | None, masks: bool):
        import zarr

        self.path = Path(path)
        self.store = zarr.ZipStore(str(self.path), mode="w")
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

    def put(self, index: int, image: bytes | None, mask: bytes | None) -> None:
        if image is not None:
            self.store[f"images/{index}.0.0.0"] = image
        if mask is not None:
            self.store[f"masks/{index}.0.0"] = mask

    def close(self) -> None:
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
