"""Random patches from refs tilesets: every epoch new positions inside the annotated area.

A refs tileset keeps no copy of the image pixels, but it keeps the labelled annotation shapes
(`shapes.json`), so a patch can be cut anywhere: the image from the slide (through the shared
tileset reader, the same pixels a tile there would have) and the mask drawn by the shared
pixel-centre rasterizer (the same mask slidemill-tile would draw there).

Draw `(index, epoch)` (seeded by `(seed, epoch, index)`, so repeatable whatever the worker count):
1. a class, uniformly among the trainable classes that have shapes (class-balanced);
2. a shape of that class, weighted by its area, over every training slide;
3. a point inside it (uniform, by rejection in its bounding box);
4. the patch centred on that point, snapped to the tileset's tile-pixel grid (so the slide read
   and the rasterizer are exact), redrawn (up to `MAX_TRIES`) while it overlaps a validation tile
   of the same slide, so validation never leaks into training.
Pixels past the slide's edge are padding in the image and ignore in the mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from shapely.geometry import Point

from slidemill.shared.classes import IGNORE_LABEL, ClassTable
from slidemill.shared.errors import InputError
from slidemill.shared.rasterize import Rasterizer
from slidemill.shared.tilestore import TilesetReader, read_shapes, resolve_in

from .data import Sample

MAX_TRIES = 50


@dataclass
class _SlideShapes:
    reader: TilesetReader
    slide: str
    fill: int
    shapes: list  # LabelledShape
    rasterizer: Rasterizer | None = None
    stain: object = None  # the slide's StainNormaliser (None: no stain normalisation)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["rasterizer"] = None
        return state


class RandomPatches:
    """`draw(index, epoch)` -> (RGB (T, T, 3) uint8, mask (T, T) uint8), a fresh patch each epoch."""

    def __init__(self, readers: list[TilesetReader], classes: ClassTable, tile_size_px: int, *, seed: int,
                 exclude: list[Sample] = (), stains: list = ()):
        """`stains`: each reader's slide's stain normaliser (same order; empty: none), applied to the patch image."""
        self.tile_px, self.seed = tile_size_px, seed
        self.sources: list[_SlideShapes] = []
        stains = list(stains) or [None] * len(readers)
        for reader, stain in zip(readers, stains, strict=True):
            store = reader.tileset.store
            if store.kind != "refs" or store.shapes is None:
                raise InputError("random patches need refs tilesets cut with annotations (their shapes are kept)",
                                 path=reader.manifest,
                                 fix="Tile with --store refs --annotations ..., or train with --patches tiles")
            shapes, fill = read_shapes(resolve_in(reader.base, store.shapes))
            self.sources.append(_SlideShapes(reader, reader.tileset.slide.name, fill, shapes, stain=stain))
        trainable = {c.label for c in classes.trainable}
        # (source, shape) per class label, with areas for the weighted choice
        self.by_class: dict[int, list[tuple[int, int, float]]] = {}
        for si, source in enumerate(self.sources):
            for hi, shape in enumerate(source.shapes):
                if shape.label in trainable and shape.geometry.area > 0:
                    self.by_class.setdefault(shape.label, []).append((si, hi, shape.geometry.area))
        if not self.by_class:
            raise InputError("the training tilesets have no annotated shape of a trainable class to draw patches in",
                             path=readers[0].manifest if readers else None,
                             fix="Annotate some regions, or train with --patches tiles")
        self.labels = sorted(self.by_class)
        self.exclude: dict[str, list[tuple[float, float, float, float]]] = {}
        for s in exclude:
            self.exclude.setdefault(s.slide, []).append((s.x, s.y, s.x + s.width, s.y + s.height))

    def describe(self) -> dict:
        """What the model card records about the sampling."""
        names = {}
        for source in self.sources:
            for shape in source.shapes:
                names.setdefault(shape.label, shape.class_name)
        return {"patches": "random", "class_balanced": True, "classes": [names[label] for label in self.labels],
                "position": "uniform inside a shape of the drawn class (area-weighted), patch centred on it",
                "seed": self.seed, "seeded_by": "(seed, epoch, index)", "validation_tiles_avoided": True,
                "max_tries": MAX_TRIES}

    def _overlaps_validation(self, slide: str, x0: float, y0: float, size: float) -> bool:
        return any(x0 < bx1 and bx0 < x0 + size and y0 < by1 and by0 < y0 + size
                   for bx0, by0, bx1, by1 in self.exclude.get(slide, ()))

    def position(self, index: int, epoch: int) -> tuple[int, int, int]:
        """(source, col_px, row_px): the patch's top-left in tile-grid pixels of its source."""
        rng = np.random.default_rng([self.seed, 11, epoch, index])
        for _ in range(MAX_TRIES):
            label = self.labels[rng.integers(len(self.labels))]
            choices = self.by_class[label]
            areas = np.array([c[2] for c in choices])
            si, hi, _ = choices[rng.choice(len(choices), p=areas / areas.sum())]
            source = self.sources[si]
            geom = source.shapes[hi].geometry
            x0, y0, x1, y1 = geom.bounds
            for _ in range(1000):
                px, py = rng.uniform(x0, x1), rng.uniform(y0, y1)
                if geom.contains(Point(px, py)):
                    break
            else:
                point = geom.representative_point()
                px, py = point.x, point.y
            scale = source.reader.tileset.mapping.scale
            col = math.floor(px / scale - self.tile_px / 2)
            row = math.floor(py / scale - self.tile_px / 2)
            if not self._overlaps_validation(source.slide, col * scale, row * scale, self.tile_px * scale):
                return si, col, row
        raise InputError(f"no random patch position outside the validation tiles was found in {MAX_TRIES} tries",
                         fix="Hold out whole slides (--val-slides), lower --val-fraction, or use --patches tiles")

    def draw(self, index: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        si, col, row = self.position(index, epoch)
        source = self.sources[si]
        if source.rasterizer is None:
            source.rasterizer = Rasterizer(source.shapes, fill=source.fill)
        t = self.tile_px
        scale = source.reader.tileset.mapping.scale
        image = source.reader.read_image_at(col * scale, row * scale)
        if source.stain is not None:
            image = source.stain(image)
        mask = source.rasterizer.mask(col, row, t, t, scale)
        slide = source.reader.tileset.slide
        # pixels whose top-left corner lies outside the slide are padding: ignore
        cols_in = max(0, min(t, math.ceil(slide.width / scale - 1e-9) - col))
        rows_in = max(0, min(t, math.ceil(slide.height / scale - 1e-9) - row))
        mask[:, cols_in:] = IGNORE_LABEL
        mask[rows_in:, :] = IGNORE_LABEL
        if col < 0:
            mask[:, :min(t, -col)] = IGNORE_LABEL
        if row < 0:
            mask[:min(t, -row), :] = IGNORE_LABEL
        return image, mask
