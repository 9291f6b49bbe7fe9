"""A tileset's tile rows as numpy columns, read from and written to a JSON Lines file one row at a time.

A tileset of 100,000 tiles held as `TileRecord` objects costs a few KB a tile (pydantic models,
dicts, floats); a manifest that inlines them makes writer and readers hold all of them at once.
Since tileset 1.2 `slidemill-tile` streams the rows to `tiles.jsonl` (one `TileRecord` JSON per
line, in index order) as tiles are finished, and readers load them into a `TileTable`: fixed-width
numpy columns (about 100 bytes a tile with a handful of classes), one row rebuilt as a `TileRecord`
on demand. Manifests before 1.2 (rows inline in `tiles`) read into the same table.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from .contracts import TileRecord, TileSet, check_rows, describe_validation_error
from .errors import ContractError, MissingInputError
from .files import resolve_in

ROWS_NAME = "tiles.jsonl"
# rows validated per chunk (the store's rules need runs of rows), so the reader holds a chunk at most
_CHUNK = 4096

COLUMNS = np.dtype([("index", "<i8"), ("col", "<i4"), ("row", "<i4"), ("x", "<f8"), ("y", "<f8"),
                    ("width", "<f8"), ("height", "<f8"), ("pad_right_px", "<i4"), ("pad_bottom_px", "<i4"),
                    ("tissue_fraction", "<f8")])


class TileTable:
    """Every tile row of one tileset: `rows` (N,) structured array (`COLUMNS`: grid position, level-0
    rectangle in pixels, padding in tile pixels, tissue fraction 0-1), `fractions` (N, C) float64
    per-class pixel fractions 0-1 by `class_names` (NaN: the class is not in that tile's record), and
    the png store's relative `images` / `masks` paths (object arrays, None where absent; None for
    other stores). `record(i)` gives row i back as the `TileRecord` it was written from."""

    def __init__(self, rows: np.ndarray, class_names: list[str], fractions: np.ndarray,
                 images: np.ndarray | None = None, masks: np.ndarray | None = None):
        self.rows, self.class_names, self.fractions = rows, list(class_names), fractions
        self.images, self.masks = images, masks

    def __len__(self) -> int:
        return len(self.rows)

    def class_fractions(self, i: int) -> dict[str, float]:
        values = self.fractions[i]
        return {name: float(v) for name, v in zip(self.class_names, values, strict=True) if not math.isnan(v)}

    def fraction_items(self) -> list[tuple[tuple[str, float], ...]]:
        """Every tile's class fractions as sorted (name, fraction) pairs, the classes in its record only."""
        names = self.class_names
        return [tuple(sorted((n, v) for n, v in zip(names, row, strict=True) if v == v))  # v == v: not NaN
                for row in self.fractions.tolist()]

    def record(self, i: int) -> TileRecord:
        r = self.rows[i]
        return TileRecord(index=int(r["index"]), col=int(r["col"]), row=int(r["row"]), x=float(r["x"]),
                          y=float(r["y"]), width=float(r["width"]), height=float(r["height"]),
                          pad_right_px=int(r["pad_right_px"]), pad_bottom_px=int(r["pad_bottom_px"]),
                          tissue_fraction=float(r["tissue_fraction"]), class_fractions=self.class_fractions(i),
                          image=None if self.images is None else self.images[i],
                          mask=None if self.masks is None else self.masks[i])

    def __iter__(self) -> Iterator[TileRecord]:
        for i in range(len(self)):
            yield self.record(i)


class _Builder:
    def __init__(self, count: int, class_names: list[str], files: bool):
        self.rows = np.zeros(count, COLUMNS)
        self.names = list(class_names)
        self.column = {n: k for k, n in enumerate(self.names)}
        self.fractions = np.full((count, len(self.names)), np.nan)
        self.images = np.full(count, None, object) if files else None
        self.masks = np.full(count, None, object) if files else None
        self.n = 0

    def add(self, record: TileRecord) -> None:
        i = self.n
        self.rows[i] = (record.index, record.col, record.row, record.x, record.y, record.width, record.height,
                        record.pad_right_px, record.pad_bottom_px, record.tissue_fraction)
        for name, value in record.class_fractions.items():
            if name not in self.column:  # a name outside the class table (older tilesets: "label N")
                self.column[name] = len(self.names)
                self.names.append(name)
                self.fractions = np.pad(self.fractions, ((0, 0), (0, 1)), constant_values=np.nan)
            self.fractions[i, self.column[name]] = value
        if self.images is not None:
            self.images[i], self.masks[i] = record.image, record.mask
        self.n += 1

    def table(self) -> TileTable:
        return TileTable(self.rows, self.names, self.fractions, self.images, self.masks)


def _class_names(tileset: TileSet) -> list[str]:
    return [c.name for c in tileset.classes.classes] if tileset.classes is not None else []


def read_tile_table(manifest: str | Path, tileset: TileSet) -> TileTable:
    """The tile rows of the tileset whose manifest is `manifest` (already validated as `tileset`):
    from its `tiles_file` (1.2), each line validated as a `TileRecord` and by the store's rules, or
    from the inline rows of an older manifest. ContractError names the file and line of a bad row,
    or says the file holds fewer or more rows than `tile_count` (an incomplete copy)."""
    manifest = Path(manifest)
    files = tileset.store.kind == "png"
    if tileset.tiles_file is None:
        builder = _Builder(len(tileset.tiles), _class_names(tileset), files)
        for record in tileset.tiles:
            builder.add(record)
        return builder.table()
    path = resolve_in(manifest.parent, tileset.tiles_file)
    if not path.is_file():
        raise MissingInputError("lists its tile rows in a file that does not exist", path=manifest,
                                fix=f"Copy the whole tileset folder ({tileset.tiles_file} too)")
    count = tileset.tile_count
    builder = _Builder(count, _class_names(tileset), files)
    chunk: list[TileRecord] = []
    line_no = 0

    def flush() -> None:
        try:
            check_rows(tileset.store.kind, chunk, builder.n)
        except ValueError as exc:
            raise ContractError(f"rows {builder.n + 1}..{builder.n + len(chunk)}: {exc}", path=path,
                                fix="Tile the slide again") from None
        for record in chunk:
            builder.add(record)
        chunk.clear()

    with open(path, "rb") as handle:
        for line_no, line in enumerate(handle, 1):
            if line_no > count:
                raise ContractError(f"holds more than the {count} tile rows its manifest lists", path=path,
                                    fix="Tile the slide again: the manifest and its rows do not belong together")
            try:
                chunk.append(TileRecord.model_validate_json(line))
            except ValidationError as exc:
                raise ContractError(f"line {line_no} is not a valid tile row: {describe_validation_error(exc)}",
                                    path=path, fix="Tile the slide again") from None
            if len(chunk) >= _CHUNK:
                flush()
    flush()
    if line_no != count:
        raise ContractError(f"holds {line_no} tile rows but its manifest lists {count}", path=path,
                            fix="Copy the whole tileset again (the file is incomplete), or tile the slide again")
    return builder.table()


class TileRowWriter:
    """Appends tile rows to a JSON Lines file (one `TileRecord` a line, None fields left out) as
    tiles are finished; the caller writes it inside a staged folder, so a killed run leaves no
    rows file that looks complete. Use as a context manager; `count` says how many rows it wrote."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._handle = open(self.path, "w", encoding="utf-8")
        self.count = 0

    def add(self, record: TileRecord) -> None:
        self._handle.write(record.model_dump_json(exclude_none=True))
        self._handle.write("\n")
        self.count += 1

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> TileRowWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def tile_records(path: str | Path) -> list[TileRecord]:
    """Every tile row of the tileset folder (or tileset.json) at `path` as `TileRecord`s: for
    small tilesets, notebooks and tests (a large one is better read through `read_tile_table`)."""
    from .contracts import load_contract

    manifest = Path(path) / "tileset.json" if Path(path).is_dir() else Path(path)
    return list(read_tile_table(manifest, load_contract(manifest, TileSet)))
