"""Everything decided before a single tile is read: inputs validated, annotations loaded and
labelled, the class table, the tissue mask, the tile grid and which tiles are kept."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from pydantic import ValidationError
from shapely.geometry import box

from slidemill.shared.annotations import AnnotationShape, read_annotation_file
from slidemill.shared.classes import IGNORE_LABEL, IGNORE_NAME, QUPATH_COLORS, ClassTable, is_ignore_name
from slidemill.shared.contracts import SlideRef, describe_validation_error
from slidemill.shared.errors import InputError
from slidemill.shared.files import require_file
from slidemill.shared.geometry import PixelMapping, grid_starts
from slidemill.shared.rasterize import LabelledShape
from slidemill.shared.slide import Slide, open_slide
from slidemill.shared.tissue import TissueMap, slide_tissue, tissue_mode

from .config import TileConfig
from .render import TileRenderer, TileSpec, TileSpecs, valid_extent_px

log = logging.getLogger(__name__)



@dataclass
class Tile:
    """One tile as the command writes it: where it lies, its RGB image and its class mask."""

    spec: TileSpec
    image: np.ndarray
    mask: np.ndarray | None
    class_fractions: dict[str, float]

    def __getattr__(self, name):  # tile.x, tile.row, ... straight from the spec
        if name == "spec":
            raise AttributeError(name)
        return getattr(self.spec, name)


@dataclass
class AnnotationStats:
    files: int = 0
    shapes: int = 0
    used: int = 0
    repaired: int = 0
    skipped: int = 0
    unclassified: int = 0
    not_annotation: int = 0
    outside: int = 0
    warnings: list[str] = field(default_factory=list)


def load_class_table(path: Path) -> ClassTable:
    path = require_file(path, "class table")
    try:
        data = json.loads(path.read_bytes())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"is not a readable JSON class table ({exc})", path=path,
                         fix='Write it as {"classes": [{"name": "Tumor", "label": 0, "color": [200, 0, 0]}, ...]}') \
            from None
    try:
        return ClassTable.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"is not a valid class table: {describe_validation_error(exc)}", path=path,
                         fix='Write it as {"classes": [{"name": "Tumor", "label": 0, "color": [200, 0, 0]}, ...]} '
                             "with trainable labels 0..n-1 and an optional ignore entry with label 255") from None


def _load_annotations(config: TileConfig, slide: Slide, stats: AnnotationStats) -> list[AnnotationShape]:
    slide_box = box(0, 0, slide.width, slide.height)
    shapes: list[AnnotationShape] = []
    for path in config.annotations:
        result = read_annotation_file(path)
        stats.files += 1
        stats.shapes += len(result.shapes) + result.skipped
        stats.repaired += result.repaired
        stats.skipped += result.skipped
        for reason in result.skipped_reasons[:5]:
            stats.warnings.append(f"{path}: skipped {reason}")
        if result.repaired:
            stats.warnings.append(f"{path}: repaired {result.repaired} invalid polygon(s) (self-intersections)")
        usable = []
        for shape in result.shapes:
            if shape.object_type != "annotation":
                stats.not_annotation += 1
                continue
            if shape.class_name is None:
                if config.unclassified_class is None:
                    stats.unclassified += 1
                    continue
                shape.class_name = config.unclassified_class
            usable.append(shape)
        if not usable:
            if result.shapes and all(s.class_name is None for s in result.shapes):
                raise InputError("holds only annotations without a class", path=path,
                                 fix="Classify them in QuPath (or set a group/name in ASAP/ImageScope), "
                                     "or pass --unclassified-class NAME to give them a class")
            raise InputError("holds no polygon annotations slidemill can use", path=path,
                             fix="Export the annotations (not detections) from QuPath as GeoJSON")
        inside = [s for s in usable if s.geometry.intersects(slide_box)]
        if not inside:
            minx, miny, maxx, maxy = shapely.unary_union([s.geometry for s in usable]).bounds
            raise InputError(
                f"lies entirely outside the slide {slide.name} ({slide.width} x {slide.height} pixels): the "
                f"annotations span x {minx:.0f}..{maxx:.0f}, y {miny:.0f}..{maxy:.0f}", path=path,
                fix="Check that the annotations belong to this slide and are in level-0 pixels "
                    "(export them from QuPath for this very image)")
        stats.outside += len(usable) - len(inside)
        shapes.extend(inside)
    stats.used = len(shapes)
    if stats.unclassified:
        stats.warnings.append(f"skipped {stats.unclassified} annotation(s) without a class "
                              "(pass --unclassified-class NAME to use them)")
    if stats.not_annotation:
        stats.warnings.append(f"skipped {stats.not_annotation} detection/cell/tile object(s); "
                              "masks come from annotations")
    if stats.outside:
        stats.warnings.append(f"skipped {stats.outside} annotation(s) lying outside the slide")
    return shapes


def _class_table(config: TileConfig, shapes: list[AnnotationShape]) -> ClassTable:
    names = sorted({s.class_name for s in shapes if s.class_name}, key=lambda n: (n.lower(), n))
    if config.background_class:
        names = sorted(set(names) | {config.background_class}, key=lambda n: (n.lower(), n))
    if config.class_table is not None or config.classes_file is not None:
        table = config.class_table if config.class_table is not None else load_class_table(config.classes_file)
        source = config.classes_file or "the class table"
        missing = [n for n in names if table.by_name(n) is None and not is_ignore_name(n)]
        if missing:
            raise InputError(
                f"has no entry for the class(es) {', '.join(repr(m) for m in missing)} that the annotations "
                f"(or --background) use; it has {', '.join(repr(c.name) for c in table.classes)}", path=source,
                fix="Add the missing classes to the class table (or rename them in QuPath), so every tileset "
                    "of the project shares one table")
        return table
    table = ClassTable.from_names(names, background={config.background_class} if config.background_class else set())
    colours = {}
    for s in shapes:
        if s.class_name and s.color and s.class_name not in QUPATH_COLORS:
            colours.setdefault(s.class_name, s.color)
    entries = [c.model_copy(update={"color": colours[c.name]}) if c.name in colours else c for c in table.classes]
    return ClassTable(classes=entries)


@dataclass
class TilePlan:
    """The tiles a run produces, in order; `tile(i)` renders one in this process (random access for a
    PyTorch Dataset), `len(plan)` says how many."""

    config: TileConfig
    slide_ref: SlideRef
    scale: float
    mapping: PixelMapping
    classes: ClassTable | None
    renderer: TileRenderer
    tissue: TissueMap
    thumbnail: np.ndarray
    specs: TileSpecs  # the kept tiles, compact (a sequence of TileSpec)
    grid_cols: int
    grid_rows: int
    annotation_shapes: list[LabelledShape]
    stats: AnnotationStats
    warnings: list[str] = field(default_factory=list)
    tissue_mode: str = "brightfield"
    empty_reason: str | None = None  # why no tile was kept (None when some were)

    def __len__(self) -> int:
        return len(self.specs)

    def tile(self, i: int) -> Tile:
        spec = self.specs[i]
        image, mask = self.renderer.render(spec)
        return Tile(spec=spec, image=image, mask=mask, class_fractions=self.renderer.class_fractions(mask))


def make_plan(config: TileConfig, on_grid: Callable[[int], None] | None = None) -> TilePlan:
    """Validate every input and decide the tiles. Raises a SlidemillError (exit 2) on bad input.
    `on_grid(tiles)` is called with the grid's tile count (an upper bound of the tiles kept) as soon
    as it is known, before the annotations are read and the tissue is found."""
    slide = open_slide(config.slide, mpp=config.slide_mpp, channels=config.channels, z=config.z, t=config.t,
                       dicom_series=config.dicom_series)
    slide_mpp = slide.require_mpp()
    option = "--mpp" if config.mpp is not None or config.magnification is None else "--magnification"
    slide.scale_for(config.target_mpp, allow_upsampling=config.allow_upsampling, option=option)
    t, stride = config.tile_size_px, config.stride_px
    scale = config.target_mpp / slide_mpp
    cols = grid_starts(math.ceil(slide.width / scale - 1e-9), t, stride)
    rows = grid_starts(math.ceil(slide.height / scale - 1e-9), t, stride)
    if on_grid is not None:
        on_grid(len(cols) * len(rows))
    for path in config.annotations:
        require_file(path, "annotation file")
    if config.classes_file is not None and config.class_table is None:
        load_class_table(config.classes_file)  # fail early, before reading annotations
    warnings: list[str] = []
    target_mpp = config.target_mpp
    if scale < 1 - 1e-6:
        warnings.append(f"tiles at {target_mpp} um/px are finer than the slide's own {slide_mpp} um/px: "
                        "they are upsampled")

    stats = AnnotationStats()
    classes = None
    labelled: list[LabelledShape] = []
    fill = IGNORE_LABEL
    if config.annotations:
        shapes = _load_annotations(config, slide, stats)
        warnings.extend(stats.warnings)
        classes = _class_table(config, shapes)
        for s in shapes:
            label = IGNORE_LABEL if is_ignore_name(s.class_name) else classes.by_name(s.class_name).label
            labelled.append(LabelledShape(s.geometry, label, s.class_name))
        if config.background_class and not is_ignore_name(config.background_class):
            fill = classes.by_name(config.background_class).label
    elif config.background_class or config.annotated_only:
        raise InputError("--background and --annotated-only need annotations", path=config.slide,
                         fix="Pass --annotations FILE (QuPath GeoJSON, ASAP or ImageScope XML)")

    # tissue, at low resolution
    tissue = slide_tissue(slide, mode=config.tissue_mode, tissue_mpp=config.tissue_mpp)
    thumbnail, mode = tissue.thumbnail, tissue.mode
    log.info("%s: tissue detection %s (%s)", slide.name, mode,
             "--tissue-mode" if config.tissue_mode != "auto" else "auto: median grey of the thumbnail")

    # the grid's tiles to keep
    if config.annotated_only:  # an Ignore* region alone does not make a tile worth keeping
        tree = shapely.STRtree([s.geometry for s in labelled if s.label != IGNORE_LABEL])
    specs = TileSpecs(len(rows) * len(cols) if config.all_tiles else 0)
    for r, row_px in enumerate(rows):
        pad_bottom = t - valid_extent_px(slide.height, scale, row_px, t)
        for c, col_px in enumerate(cols):
            x, y, size = col_px * scale, row_px * scale, t * scale
            fraction = round(tissue.fraction(x, y, size, size), 6)
            if not config.all_tiles and fraction < config.tissue_threshold:
                continue
            if config.annotated_only and not len(tree.query(box(x, y, x + size, y + size), predicate="intersects")):
                continue
            specs.append(len(specs), r, c, x, y, size, size, t - valid_extent_px(slide.width, scale, col_px, t),
                         pad_bottom, fraction)
    label_names = {c.label: c.name for c in classes.classes} if classes else {}
    label_names.setdefault(IGNORE_LABEL, IGNORE_NAME)
    renderer = TileRenderer(slide_path=Path(config.slide), slide_mpp=config.slide_mpp, scale=scale,
                            tile_size_px=t, stride_px=stride, shapes=labelled if config.annotations else None,
                            fill_label=fill, label_names=label_names,
                            open_options={"pixels": slide.pixels, "dicom_series": slide.series})
    renderer._slide = slide  # reuse the open slide in this process
    if config.annotations:
        renderer.open()
    return TilePlan(config=config, slide_ref=slide.ref(), scale=scale, mapping=PixelMapping(scale=scale),
                    classes=classes, renderer=renderer, tissue=tissue, thumbnail=thumbnail, specs=specs,
                    grid_cols=len(cols), grid_rows=len(rows), annotation_shapes=labelled, stats=stats,
                    warnings=warnings, tissue_mode=mode, empty_reason=_empty_reason(config, tissue, mode, thumbnail)
                    if not specs else None)


def _empty_reason(config: TileConfig, tissue: TissueMap, mode: str, thumbnail: np.ndarray) -> str:
    """Why no tile was kept, in words a user can act on."""
    covered = float(tissue.mask.mean())
    if config.annotated_only:
        return "no tile with tissue touches an annotation (--annotated-only)"
    looks = tissue_mode(thumbnail)
    if looks != mode:
        return (f"{mode} tissue detection (--tissue-mode {config.tissue_mode}) found {covered:.1%} of the slide, but "
                f"the slide looks {looks} (its median grey level decides): pass --tissue-mode {looks}, "
                "or --all-tiles to keep every tile")
    if covered == 0:
        other = "darkfield" if mode == "brightfield" else "brightfield"
        return (f"no tissue was found ({mode} tissue detection); if the slide is {other} (e.g. fluorescence "
                f"for darkfield), pass --tissue-mode {other}, or --all-tiles to keep every tile")
    return (f"tissue covers {covered:.1%} of the slide but no tile holds --tissue-threshold "
            f"{config.tissue_threshold:g} of it; lower --tissue-threshold or pass --all-tiles")
