"""Tilesets in: validation of the inputs, the leakage-free split and the class weights (no torch here)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from slidemill.shared.classes import ClassTable
from slidemill.shared.contracts import TileSet, load_contract
from slidemill.shared.errors import InputError, MissingInputError
from slidemill.shared.files import resolve_in
from slidemill.shared.tilestore import TilesetReader, open_tileset
from slidemill.shared.tiletable import read_tile_table

log = logging.getLogger(__name__)

MPP_RELATIVE_TOLERANCE = 0.01


@dataclass(frozen=True, slots=True)  # slots: one per tile, 100,000+ of them
class Sample:
    """One training tile: its files (png store) or its tileset reader and row (zarr, refs stores),
    and where it lies on its slide (level-0 rectangle)."""

    image: Path | None
    mask: Path | None
    slide: str
    x: float
    y: float
    width: float
    height: float
    class_fractions: tuple[tuple[str, float], ...] = ()
    reader: TilesetReader | None = field(default=None, compare=False, hash=False, repr=False)
    tile_index: int = -1
    tileset: int = 0  # index of its tileset in TrainingData.tilesets (its slide's stain transform)

    def overlaps(self, other: Sample) -> bool:
        return (self.slide == other.slide and self.x < other.x + other.width and other.x < self.x + self.width
                and self.y < other.y + other.height and other.y < self.y + self.height)


@dataclass
class TrainingData:
    """Every validated tileset, merged: the one class table, resolution, tile size and all samples."""

    paths: list[Path]
    tilesets: list[TileSet]
    readers: list[TilesetReader | None]
    classes: ClassTable
    mpp: float
    tile_size_px: int
    samples: list[Sample]
    skipped_without_mask: int = 0
    warnings: list[str] = field(default_factory=list)

    @property
    def slides(self) -> list[str]:
        return sorted({s.slide for s in self.samples})

    @property
    def slide_channels(self) -> list[str] | None:
        """The channel names the tiles were read from, where a tileset chose channels (multi-channel
        slides); None for plain RGB or grey slides."""
        for ts in self.tilesets:
            pixels = ts.slide.pixels
            if pixels is not None and (pixels.frames > 1 or pixels.bands - pixels.alpha not in (1, 3)):
                return [pick.name for pick in pixels.channels]
        return None


def manifest_path(path: Path) -> Path:
    """A tileset is given as its folder or its tileset.json."""
    path = Path(path)
    if path.is_dir():
        return path / "tileset.json"
    if not path.exists():
        raise MissingInputError("tileset does not exist", path=path,
                                fix="Give a tileset folder written by slidemill-tile (it holds tileset.json)")
    return path


def _class_key(classes: ClassTable) -> dict[str, tuple[int, bool]]:
    return {c.name: (c.label, c.ignore) for c in classes.classes}


def _describe_class_difference(a: ClassTable, b: ClassTable) -> str:
    ka, kb = _class_key(a), _class_key(b)
    only_a, only_b = sorted(set(ka) - set(kb)), sorted(set(kb) - set(ka))
    parts = []
    if only_a:
        parts.append(f"classes only in the first: {only_a}")
    if only_b:
        parts.append(f"classes only in this one: {only_b}")
    for name in sorted(set(ka) & set(kb)):
        if ka[name] != kb[name]:
            parts.append(f"class {name!r} has label {ka[name][0]} in the first but {kb[name][0]} here")
    return "; ".join(parts)


def _slide_for(tileset: TileSet, slides: list[Path]) -> Path | None:
    """The --slide given for a refs tileset: a file of the tileset's slide name, or a folder holding it."""
    for given in slides:
        given = Path(given)
        if given.name == tileset.slide.name or (given.is_dir() and (given / tileset.slide.name).exists()):
            return given
    return None


def load_tilesets(paths: list[Path], *, check_files: bool = True, slides: list[Path] = ()) -> TrainingData:
    """Read and check every tileset before any work: contract, class table, resolution, tile size, files.
    `slides` gives refs tilesets' slides again (files, or folders holding them) when they moved."""
    manifests = [manifest_path(p) for p in paths]
    tilesets = [load_contract(m, TileSet) for m in manifests]
    readers = [None if ts.store.kind == "png" else open_tileset(m, slide=_slide_for(ts, list(slides)))
               for ts, m in zip(tilesets, manifests, strict=True)]
    # the tile rows as numpy columns (streamed from the rows file of a 1.2 manifest)
    tables = [read_tile_table(m, ts) if r is None else r.table
              for ts, m, r in zip(tilesets, manifests, readers, strict=True)]
    first, first_path = tilesets[0], manifests[0]
    warnings: list[str] = []
    for ts, path, table in zip(tilesets, manifests, tables, strict=True):
        if ts.classes is None:
            raise InputError("has no class table: it was tiled without annotations, so there is nothing to learn",
                             path=path, fix="Tile the slide with its annotations (slidemill-tile --annotations ...)")
        if not len(table):
            raise InputError("is empty: it lists no tiles", path=path,
                             fix="Check the tiling (tissue threshold, annotated-only) and tile the slide again")
        if ts.store.kind == "png" and not any(table.masks):
            raise InputError("has no mask files: no tile carries labels to learn from", path=path,
                             fix="Tile the slide with its annotations")
    for ts, path in zip(tilesets[1:], manifests[1:], strict=True):
        difference = _describe_class_difference(first.classes, ts.classes)
        if difference:
            raise InputError(f"has a different class table from {first_path} ({difference})", path=path,
                             fix="Tile every slide with the same class list, or train on them separately")
        colours = {c.name: tuple(c.color) for c in first.classes.classes}
        changed = sorted(c.name for c in ts.classes.classes if tuple(c.color) != colours[c.name])
        if changed:
            warnings.append(f"{path}: colours of {changed} differ from {first_path}; the first tileset's are used")
        rel = abs(ts.params.mpp - first.params.mpp) / first.params.mpp
        if rel > MPP_RELATIVE_TOLERANCE:
            raise InputError(f"was tiled at {ts.params.mpp:g} microns per pixel but {first_path} at "
                             f"{first.params.mpp:g}", path=path,
                             fix="Tile every slide at the same --mpp so the model sees one resolution")
        if ts.params.tile_size_px != first.params.tile_size_px:
            raise InputError(f"has tiles of {ts.params.tile_size_px} px but {first_path} of "
                             f"{first.params.tile_size_px} px", path=path,
                             fix="Tile every slide with the same --tile-size")
    samples: list[Sample] = []
    skipped = 0
    missing: list[Path] = []
    for number, (ts, path, reader, table) in enumerate(zip(tilesets, manifests, readers, tables, strict=True)):
        base = path.parent
        # straight from the table's columns: no TileRecord built per tile
        columns = zip(*(table.rows[c].tolist() for c in ("x", "y", "width", "height")), table.fraction_items(),
                      strict=True)
        if reader is not None:  # zarr / refs: every tile has its mask in the container
            samples.extend(Sample(image=None, mask=None, slide=ts.slide.name, x=x, y=y, width=w, height=h,
                                  class_fractions=fractions, reader=reader, tile_index=i, tileset=number)
                           for i, (x, y, w, h, fractions) in enumerate(columns))
            continue
        for (x, y, w, h, fractions), image_rel, mask_rel in zip(columns, table.images, table.masks, strict=True):
            if not mask_rel:
                skipped += 1
                continue
            image, mask = resolve_in(base, image_rel), resolve_in(base, mask_rel)
            if check_files:
                for f in (image, mask):
                    if not f.is_file():
                        missing.append(f)
            samples.append(Sample(image=image, mask=mask, slide=ts.slide.name, x=x, y=y, width=w, height=h,
                                  class_fractions=fractions, tileset=number))
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise MissingInputError(f"lists tile files that do not exist ({missing[0]}{more})", path=path,
                                    fix="Copy the whole tileset folder (tiles/ and masks/ too) or tile the slide again")
    if skipped:
        warnings.append(f"{skipped} tile(s) have no mask and are not used")
    return TrainingData(paths=list(paths), tilesets=tilesets, readers=readers, classes=first.classes,
                        mpp=first.params.mpp, tile_size_px=first.params.tile_size_px, samples=samples,
                        skipped_without_mask=skipped, warnings=warnings)


# --- the split ---------------------------------------------------------------------------------


@dataclass
class Split:
    strategy: str
    train: list[int]
    val: list[int]
    train_slides: list[str]
    val_slides: list[str]
    block_size_px: float | None = None
    excluded: int = 0


def split_samples(samples: list[Sample], *, val_fraction: float, val_slides: list[str], seed: int,
                  target_blocks: int = 25, classes: list[str] | tuple[str, ...] = ()) -> Split:
    """Hold out validation tiles that share no pixel with a training tile.

    Two or more slides: whole slides are held out (those named, or a seeded choice covering about
    `val_fraction` of the tiles). One slide: the tiles' extent is cut into square blocks of level-0
    pixels; a seeded choice of blocks is held out, and training tiles overlapping any validation tile
    (the band along a block edge, when tiles overlap) are dropped. The blocks are chosen so that every
    class is held out in about `val_fraction` of its labelled area (see `_block_split`); `classes` names
    the classes that count (the trainable ones; default: every name in the tiles' class fractions).
    """
    slides = sorted({s.slide for s in samples})
    by_slide = {name: [i for i, s in enumerate(samples) if s.slide == name] for name in slides}
    if val_slides:
        unknown = [n for n in val_slides if n not in by_slide]
        if unknown:
            raise InputError(f"--val-slides names slides that are not in the tilesets: {unknown}",
                             fix=f"Choose among {slides}")
        if len(set(val_slides)) >= len(slides):
            raise InputError("--val-slides names every slide, so none is left to train on",
                             fix="Leave at least one slide for training")
        chosen = sorted(set(val_slides))
    elif len(slides) >= 2:
        order = [slides[i] for i in np.random.default_rng([seed, 1]).permutation(len(slides))]
        chosen, held = [], 0
        for name in order:
            if len(chosen) == len(slides) - 1 or held >= val_fraction * len(samples):
                break
            chosen.append(name)
            held += len(by_slide[name])
        chosen.sort()
    else:
        return _block_split(samples, val_fraction=val_fraction, seed=seed, target_blocks=target_blocks,
                            classes=classes)
    val = sorted(i for n in chosen for i in by_slide[n])
    val_set = set(val)
    train = [i for i in range(len(samples)) if i not in val_set]
    return Split("slides", train, val, [n for n in slides if n not in chosen], chosen)


STRATIFY_TRIALS = 256  # seeded block orders tried by the class-stratified block choice


def _block_mass(samples: list[Sample], blocks: dict[tuple[int, int], list[int]], keys: list[tuple[int, int]],
                classes: list[str] | tuple[str, ...]) -> np.ndarray:
    """blocks x classes: the labelled level-0 area of each class in each block's tiles."""
    names = list(classes) or sorted({n for s in samples for n, _ in s.class_fractions})
    column = {n: j for j, n in enumerate(names)}
    mass = np.zeros((len(keys), len(names)))
    for b, key in enumerate(keys):
        for i in blocks[key]:
            s = samples[i]
            for name, fraction in s.class_fractions:
                if name in column:
                    mass[b, column[name]] += fraction * s.width * s.height
    return mass


def _choose_blocks(blocks: dict[tuple[int, int], list[int]], keys: list[tuple[int, int]], mass: np.ndarray, *,
                   n_samples: int, val_fraction: float, seed: int) -> list[tuple[int, int]]:
    """The validation blocks: seeded orders of the blocks, each filled greedily until `val_fraction` of the
    tiles is held out (a block that would leave no training tile is skipped); of `STRATIFY_TRIALS` orders the
    one that leaves the fewest classes without validation (or without training) area, and then holds its
    worst class out nearest `val_fraction` of its area, wins (the first order on ties, and the only one
    when the tiles carry no class fractions). With one slide the blocks are few and a
    plain random choice often holds out most of a rare class, or none of it (the demo's keratin)."""
    totals = mass.sum(axis=0)
    present = totals > 0
    rng = np.random.default_rng([seed, 2])
    best, best_cost = None, (math.inf, math.inf)
    for _trial in range(STRATIFY_TRIALS if present.any() else 1):
        order = rng.permutation(len(keys))
        chosen, held = [], 0
        for b in order:
            if held >= val_fraction * n_samples:
                break
            if held + len(blocks[keys[b]]) >= n_samples:
                continue
            chosen.append(int(b))
            held += len(blocks[keys[b]])
        if not chosen:
            continue
        share = mass[chosen].sum(axis=0)[present] / totals[present]
        # first: how many classes are left without validation or without training pixels; then the worst share
        cost = (int(((share <= 0) | (share >= 1)).sum()), float(np.abs(share - val_fraction).max())) \
            if present.any() else (0, 0.0)
        if best is None or cost < best_cost:
            best, best_cost = chosen, cost
    return [keys[b] for b in best] if best is not None else []


def _block_split(samples: list[Sample], *, val_fraction: float, seed: int, target_blocks: int,
                 classes: list[str] | tuple[str, ...] = ()) -> Split:
    if len(samples) < 2:
        raise InputError(f"only {len(samples)} labelled tile(s): too few to hold any out for validation",
                         fix="Tile more of the slide (smaller tiles, a lower tissue threshold) or add slides")
    x0 = min(s.x for s in samples)
    y0 = min(s.y for s in samples)
    x1 = max(s.x + s.width for s in samples)
    y1 = max(s.y + s.height for s in samples)
    tile_extent = max(max(s.width, s.height) for s in samples)
    area_per_block = (x1 - x0) * (y1 - y0) / target_blocks
    block = max(tile_extent, math.sqrt(area_per_block))
    block = tile_extent * max(1, round(block / tile_extent))

    def block_of(s: Sample) -> tuple[int, int]:
        cx, cy = s.x + s.width / 2, s.y + s.height / 2
        return int((cx - x0) // block), int((cy - y0) // block)

    blocks: dict[tuple[int, int], list[int]] = {}
    for i, s in enumerate(samples):
        blocks.setdefault(block_of(s), []).append(i)
    keys = sorted(blocks)
    if len(keys) < 2:
        block = tile_extent
        blocks = {}
        for i, s in enumerate(samples):
            blocks.setdefault(block_of(s), []).append(i)
        keys = sorted(blocks)
    if len(keys) < 2:
        raise InputError("all labelled tiles of the one slide lie in one place, so no spatially separate "
                         "validation block exists", fix="Tile more of the slide, or add a second slide")
    mass = _block_mass(samples, blocks, keys, classes)
    val: list[int] = []
    for key in _choose_blocks(blocks, keys, mass, n_samples=len(samples), val_fraction=val_fraction, seed=seed):
        val.extend(blocks[key])
    if not val:
        val.extend(blocks[min(keys, key=lambda k: len(blocks[k]))])
    val.sort()
    val_set = set(val)
    # a grid of tile-sized cells, so the overlap test stays fast with 100,000+ tiles
    cells: dict[tuple[int, int], list[Sample]] = {}

    def covered(s: Sample) -> list[tuple[int, int]]:
        cx0, cy0 = int((s.x - x0) // tile_extent), int((s.y - y0) // tile_extent)
        cx1, cy1 = int((s.x + s.width - x0) // tile_extent), int((s.y + s.height - y0) // tile_extent)
        return [(cx, cy) for cx in range(cx0, cx1 + 1) for cy in range(cy0, cy1 + 1)]

    for i in val:
        for cell in covered(samples[i]):
            cells.setdefault(cell, []).append(samples[i])
    train, excluded = [], 0
    for i, s in enumerate(samples):
        if i in val_set:
            continue
        if any(s.overlaps(v) for cell in covered(s) for v in cells.get(cell, ())):
            excluded += 1
            continue
        train.append(i)
    if not train:
        raise InputError("no training tile is left once the validation blocks and the tiles overlapping them "
                         "are taken out", fix="Lower --val-fraction, tile more of the slide, or add a slide")
    slide = samples[0].slide
    return Split("blocks", train, val, [slide], [slide], block_size_px=float(block), excluded=excluded)


# --- class weights -----------------------------------------------------------------------------


def class_fractions(samples: list[Sample], classes: ClassTable) -> np.ndarray:
    """Mean fraction of labelled (non-ignore) pixels per trainable class, from the manifests."""
    totals = np.zeros(classes.num_trainable, np.float64)
    for s in samples:
        fr = dict(s.class_fractions)
        for entry in classes.trainable:
            totals[entry.label] += fr.get(entry.name, 0.0)
    total = totals.sum()
    return totals / total if total > 0 else totals


def auto_class_weights(fractions: np.ndarray, *, max_ratio: float = 50.0) -> np.ndarray:
    """Median-frequency balancing: weight = median(fraction) / fraction, absent classes weight 1,
    clipped to [1/max_ratio, max_ratio] and scaled to mean 1."""
    present = fractions > 0
    weights = np.ones_like(fractions)
    if present.any():
        median = float(np.median(fractions[present]))
        weights[present] = median / fractions[present]
    weights = np.clip(weights, 1 / max_ratio, max_ratio)
    return weights / weights.mean()
