"""Synthetic slides with known shapes, for tests and benchmarks of every tool.

`write_synthetic_slide` renders a tiled pyramidal TIFF tile by tile (memory bounded by the tile,
not the slide) with an H&E-like textured background and class-coloured shapes whose level-0
geometry is exactly known, so a test can compare a tool's output with the truth.

`stained_renderer` draws the same content as two labs would stain it: per class a haematoxylin and an
eosin concentration, rendered through a stain matrix by Beer-Lambert's law (I = Io exp(-M c)), so two
slides of one tissue differ only in their stain colours.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tifffile
from shapely import affinity
from shapely.geometry import MultiPolygon, Point, Polygon, box

from .geometry import grid_starts

BACKGROUND_RGB = (236, 226, 234)  # glass, faintly pink
TISSUE_RGB = (222, 160, 200)  # eosin-pink stroma


@dataclass(frozen=True)
class SyntheticShape:
    class_name: str
    geometry: Polygon | MultiPolygon
    color: tuple[int, int, int]


def example_shapes(width: int, height: int, seed: int = 0) -> list[SyntheticShape]:
    """A tissue region with a tumour disc (with a hole), a stroma band and immune blobs."""
    rng = np.random.default_rng(seed)
    w, h = width, height
    tissue = box(0.08 * w, 0.1 * h, 0.92 * w, 0.9 * h)
    tumour = Point(0.35 * w, 0.45 * h).buffer(0.18 * min(w, h), 64)
    tumour = tumour.difference(Point(0.35 * w, 0.45 * h).buffer(0.06 * min(w, h), 64))
    stroma = box(0.6 * w, 0.2 * h, 0.8 * w, 0.8 * h)
    blobs = [Point(rng.uniform(0.15, 0.85) * w, rng.uniform(0.72, 0.85) * h).buffer(0.03 * min(w, h), 32)
             for _ in range(3)]
    immune = MultiPolygon([b for b in blobs]).buffer(0)
    return [
        SyntheticShape("Tissue", tissue, TISSUE_RGB),
        SyntheticShape("Tumor", tumour, (120, 40, 150)),
        SyntheticShape("Stroma", stroma, (240, 120, 170)),
        SyntheticShape("Immune cells", immune, (60, 30, 110)),
    ]


def _polygon_rings(geom: Polygon | MultiPolygon) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    polys = geom.geoms if isinstance(geom, MultiPolygon) else [geom]
    for poly in polys:
        yield np.asarray(poly.exterior.coords), [np.asarray(r.coords) for r in poly.interiors]


def centre_mask(geom: Polygon | MultiPolygon, x0: float, y0: float, w: int, h: int, scale: float) -> np.ndarray:
    """Boolean (h, w) mask of the pixels whose centre lies inside `geom` (level-0 coordinates), for
    pixel (i, j) covering [x0 + i*scale, x0 + (i+1)*scale) x [y0 + j*scale, ...): its centre is
    (x0 + (i + 0.5) * scale, y0 + (j + 0.5) * scale).

    Exact scanline rasterisation by the even-odd rule over every ring (shells and holes): along each
    row of pixel centres, the crossings of the ring edges are found in closed form and a pixel is
    inside when an odd number of crossings lie at or left of its centre. Half-open conventions (an
    edge covers centre rows in [y_min, y_max), a crossing at x counts for centres >= x) make a
    centre on a shared edge belong to exactly one of two shapes that share the edge.
    """
    toggles = np.zeros((h, w + 1), np.int32)
    for exterior, holes in _polygon_rings(geom):
        for ring in [exterior, *holes]:
            pts = (np.asarray(ring, np.float64)[:, :2] - (x0, y0)) / scale
            ax, ay, bx, by = pts[:-1, 0], pts[:-1, 1], pts[1:, 0], pts[1:, 1]
            lo, hi = np.minimum(ay, by), np.maximum(ay, by)
            # centre rows j with lo <= j + 0.5 < hi
            j0 = np.clip(np.ceil(lo - 0.5), 0, h).astype(np.int64)
            j1 = np.clip(np.ceil(hi - 0.5), 0, h).astype(np.int64)
            n = np.maximum(j1 - j0, 0)
            if not n.any():
                continue
            edge = np.repeat(np.arange(len(n)), n)
            rows = j0[edge] + (np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n))
            yc = rows + 0.5
            t = (yc - ay[edge]) / (by[edge] - ay[edge])
            xc = ax[edge] + t * (bx[edge] - ax[edge])
            cols = np.clip(np.ceil(xc - 0.5), 0, w).astype(np.int64)  # first centre i + 0.5 >= xc
            np.add.at(toggles, (rows, cols), 1)
    return (np.cumsum(toggles[:, :w], axis=1) & 1).astype(bool)


def render_tile(x0: float, y0: float, w: int, h: int, scale: float, shapes: Sequence[SyntheticShape],
                *, seed: int = 0, noise: float = 6.0) -> np.ndarray:
    """RGB pixels [x0, x0 + w*scale) x [y0, ...) of the synthetic slide at `scale` level-0 px per pixel.
    Pixel (i, j) takes a shape's colour exactly when its centre lies inside the shape
    (`centre_mask`; later shapes are drawn over earlier ones)."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = BACKGROUND_RGB
    window = box(x0, y0, x0 + w * scale, y0 + h * scale)
    for s in shapes:
        if not s.geometry.intersects(window):
            continue
        img[centre_mask(s.geometry, x0, y0, w, h, scale)] = s.color
    if noise:
        rng = np.random.default_rng([seed, int(x0), int(y0), int(scale * 1000)])
        jitter = rng.normal(0, noise, (h, w, 1)).astype(np.float32)
        img = np.clip(img.astype(np.float32) + jitter, 0, 255).astype(np.uint8)
    return img


# stain vectors (rows R, G, B; columns haematoxylin, eosin) in optical density: Ruifrok & Johnston's
# (Anal Quant Cytol Histol 2001), and another lab's bluer haematoxylin and more orange eosin
HE_STAINS = ((0.65, 0.07), (0.70, 0.99), (0.29, 0.11))
OTHER_LAB_STAINS = ((0.40, 0.05), (0.75, 0.80), (0.52, 0.60))
# (haematoxylin, eosin) concentrations of the example shapes' classes
HE_CONCENTRATIONS = {"Tissue": (0.35, 0.8), "Tumor": (1.3, 0.45), "Stroma": (0.2, 1.25), "Immune cells": (1.8, 0.3)}
STAIN_IO = 240.0  # transmitted light of the Beer-Lambert rendering (glass)

Renderer = Callable[[float, float, int, int, float], np.ndarray]


def stained_renderer(shapes: Sequence[SyntheticShape], stains=HE_STAINS, *, concentrations=None,
                     seed: int = 0, texture: float = 0.15) -> Renderer:
    """A `render(x0, y0, w, h, scale)` for `write_synthetic_slide`: pixel (i, j) takes the (H, E)
    concentrations of the last shape whose centre-rule mask holds it (glass: none), times a per-pixel
    texture exp(N(0, texture)) per stain seeded by (seed, x0, y0, scale) (the same for any `stains`), and
    is rendered as round(Io exp(-M c)) with M the 3 x 2 `stains`, each column scaled to unit length."""
    matrix = np.asarray(stains, np.float64)
    matrix = matrix / np.linalg.norm(matrix, axis=0, keepdims=True)
    table = dict(HE_CONCENTRATIONS if concentrations is None else concentrations)

    def render(x0: float, y0: float, w: int, h: int, scale: float) -> np.ndarray:
        conc = np.zeros((h, w, 2), np.float64)
        window = box(x0, y0, x0 + w * scale, y0 + h * scale)
        for s in shapes:
            if s.class_name in table and s.geometry.intersects(window):
                conc[centre_mask(s.geometry, x0, y0, w, h, scale)] = table[s.class_name]
        if texture:
            rng = np.random.default_rng([seed, int(x0), int(y0), int(scale * 1000)])
            conc *= np.exp(rng.normal(0, texture, (h, w, 2)))
        rgb = STAIN_IO * np.exp(-(conc @ matrix.T))
        return np.clip(np.round(rgb), 0, 255).astype(np.uint8)

    return render


def write_synthetic_slide(
    path: str | Path,
    width: int,
    height: int,
    *,
    mpp: float | None = 0.5,
    shapes: Sequence[SyntheticShape] | None = None,
    tile: int = 256,
    levels: int | None = None,
    compression: str | None = "zlib",
    noise: float = 6.0,
    seed: int = 0,
    render: Renderer | None = None,
) -> Path:
    """A tiled pyramidal TIFF (one page per level, readable by openslide and large-image) rendered
    tile by tile. `mpp=None` writes no resolution. `render(x0, y0, w, h, scale)` draws the pixels
    (default: `render_tile` of the shapes). Returns the path."""
    path = Path(path)
    shapes = list(example_shapes(width, height, seed) if shapes is None else shapes)
    if levels is None:
        levels = max(1, int(math.ceil(math.log2(max(width, height) / tile))) + 1)
    options: dict = {"tile": (tile, tile), "photometric": "rgb", "compression": compression,
                     "metadata": None}
    if compression == "jpeg":
        options["compressionargs"] = {"level": 90}
    with tifffile.TiffWriter(path, bigtiff=width * height * 3 > 2**31) as tif:
        for level in range(levels):
            ds = 2**level
            lw, lh = math.ceil(width / ds), math.ceil(height / ds)
            if level > 0 and max(lw, lh) < 16:
                break

            def tiles(lw=lw, lh=lh, ds=ds) -> Iterator[np.ndarray]:
                for ty in grid_starts(lh, tile, tile):
                    for tx in grid_starts(lw, tile, tile):
                        if render is not None:
                            yield render(tx * ds, ty * ds, tile, tile, ds)
                        else:
                            yield render_tile(tx * ds, ty * ds, tile, tile, ds, shapes, seed=seed, noise=noise)

            extra = {}
            if mpp is not None:
                extra = {"resolution": (1e4 / (mpp * ds), 1e4 / (mpp * ds)), "resolutionunit": "CENTIMETER"}
            tif.write(tiles(), shape=(lh, lw, 3), dtype=np.uint8, subfiletype=1 if level else 0,
                      **options, **extra)
    return path


def truth_mask(shapes: Sequence[SyntheticShape], class_labels: dict[str, int], width: int, height: int,
               scale: float = 1.0, *, fill: int = 0) -> np.ndarray:
    """Label raster (ceil(height / scale) x ceil(width / scale), uint8) of the shapes at `scale`
    level-0 px per pixel: a pixel takes a shape's label exactly when its centre lies inside the shape
    (`centre_mask`; later shapes drawn over earlier ones, `fill` elsewhere)."""
    h, w = math.ceil(height / scale), math.ceil(width / scale)
    out = np.full((h, w), fill, np.uint8)
    for s in shapes:
        if s.class_name not in class_labels:
            continue
        out[centre_mask(s.geometry, 0.0, 0.0, w, h, scale)] = class_labels[s.class_name]
    return out


def qupath_geojson(shapes: Sequence[SyntheticShape], *, flavour: str = "0.4") -> dict | list:
    """The shapes as QuPath would export them: flavour "0.4" (objectType, RGB colour), "0.3"
    (object_type) or "0.2" (type in id, colorRGB, list measurements, a bare list of features)."""
    from shapely.geometry import mapping

    from .classes import rgb_to_argb_int

    features = []
    for s in shapes:
        geometry = json.loads(json.dumps(mapping(s.geometry)))
        if flavour == "0.2":
            props = {"classification": {"name": s.class_name, "colorRGB": rgb_to_argb_int(s.color)},
                     "isLocked": False, "measurements": []}
            features.append({"type": "Feature", "id": "PathAnnotationObject", "geometry": geometry,
                             "properties": props})
        else:
            key = "objectType" if flavour != "0.3" else "object_type"
            props = {key: "annotation", "classification": {"name": s.class_name, "color": list(s.color)}}
            features.append({"type": "Feature", "geometry": geometry, "properties": props})
    if flavour == "0.2":
        return features
    return {"type": "FeatureCollection", "features": features}


def scaled(shapes: Sequence[SyntheticShape], factor: float) -> list[SyntheticShape]:
    return [SyntheticShape(s.class_name, affinity.scale(s.geometry, factor, factor, origin=(0, 0)), s.color)
            for s in shapes]


# --- small valid examples of every contract (tests and docs build on these) ---------------------


def sample_classes():
    from .classes import ClassTable

    return ClassTable.from_names(["Tumor", "Stroma", "Immune cells"])


def sample_slide_ref(name: str = "slide.tiff"):
    from .contracts import SlideRef

    return SlideRef(name=name, width=4000, height=3000, mpp=0.25, mpp_source="file", vendor="aperio",
                    reader="openslide")


def sample_tileset():
    from .contracts import TileRecord, TileSet, TilingParams
    from .geometry import PixelMapping

    tiles = [TileRecord(index=0, col=0, row=0, x=0, y=0, width=1024, height=1024, tissue_fraction=0.8,
                        class_fractions={"Tumor": 0.25, "Ignore*": 0.75},
                        image="tiles/0_0.png", mask="masks/0_0.png")]
    return TileSet(slide=sample_slide_ref(), params=TilingParams(mpp=0.5, tile_size_px=512, overlap_px=64,
                   tissue_threshold=0.5), mapping=PixelMapping(scale=2.0), classes=sample_classes(),
                   tissue_mask="tissue.png", preview="preview.png", tiles=tiles)


def sample_model_card():
    from .contracts import ClassMetrics, DataSplit, ModelCard, ModelInput, Normalization, OnnxFile

    return ModelCard(
        name="unet-efficientnet-b0", architecture="unet", encoder="efficientnet-b0", classes=sample_classes(),
        input=ModelInput(mpp=0.5, tile_size_px=512,
                         normalization=Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))),
        onnx=OnnxFile(file="model.onnx", sha256="0" * 64, opset=17, max_abs_diff=1e-5),
        split=DataSplit(strategy="slides", train_slides=["a.svs"], val_slides=["b.svs"], train_tiles=10, val_tiles=3),
        metrics={"Tumor": ClassMetrics(dice=0.9, iou=0.82)}, mean_iou=0.82,
    )


def sample_prediction():
    from .contracts import ModelRef, Prediction, RasterFile
    from .geometry import PixelMapping, Region

    return Prediction(
        slide=sample_slide_ref(), model=ModelRef(name="m", architecture="unet", encoder="efficientnet-b0",
                                                 onnx_sha256="0" * 64),
        classes=sample_classes(), mpp=0.5, mapping=PixelMapping(scale=2.0),
        region=Region(x=0, y=0, width=4000, height=3000),
        labels=RasterFile(file="labels.tiff", width=2000, height=1500),
        probabilities=RasterFile(file="probabilities.tiff", width=2000, height=1500, bands=3),
    )


def sample_annotations():
    from .annotations import make_feature
    from .contracts import AnnotationSet, Provenance

    classes = sample_classes()
    feature = make_feature(box(10, 10, 110.123, 60).difference(box(40, 20, 60, 40)), "Tumor", classes=classes, mpp=0.25)
    return AnnotationSet(slide=sample_slide_ref(), mpp=0.25, features=[feature],
                         provenance=Provenance(tool="slidemill-postprocess", version="0.1.0"))


def sample_report():
    from .contracts import Report

    return Report(tool="slidemill-tile", version="0.1.0", command=["slidemill-tile", "a.svs"],
                  started_at="2026-01-01T00:00:00Z", finished_at="2026-01-01T00:00:01Z", duration_s=1.0,
                  counts={"tiles": 3})


SAMPLES = {
    "tileset": sample_tileset, "model": sample_model_card, "prediction": sample_prediction,
    "annotations": sample_annotations, "report": sample_report,
}


def write_prediction(folder: str | Path, labels: np.ndarray, *, classes=None, mpp: float = 0.5,
                     scale: float = 1.0, origin: tuple[float, float] = (0.0, 0.0), slide=None, region=None,
                     shard: tuple[int, int] | None = None, tile: int = 512) -> Path:
    """A prediction folder as slidemill-infer writes it (prediction.json + tiled zlib labels.tiff)
    around a given uint8 label raster; returns the folder. `scale` is level-0 px per raster px."""
    from .contracts import ModelRef, Prediction, RasterFile, Shard, SlideRef, save_contract
    from .geometry import PixelMapping, Region

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.ascontiguousarray(labels, dtype=np.uint8)
    h, w = labels.shape
    tifffile.imwrite(folder / "labels.tiff", labels, tile=(tile, tile), compression="zlib", metadata=None)
    if region is None:
        region = Region(x=int(origin[0]), y=int(origin[1]), width=math.ceil(w * scale), height=math.ceil(h * scale))
    if slide is None:
        slide = SlideRef(name="slide.tiff", width=region.x + region.width, height=region.y + region.height,
                         mpp=mpp / scale, mpp_source="file", vendor="synthetic", reader="tifffile")
    prediction = Prediction(
        slide=slide, model=ModelRef(name="m", architecture="unet", encoder="resnet18", onnx_sha256="0" * 64),
        classes=classes or sample_classes(), mpp=mpp,
        mapping=PixelMapping(origin_x=origin[0], origin_y=origin[1], scale=scale), region=region,
        shard=None if shard is None else Shard(index=shard[0], count=shard[1]),
        labels=RasterFile(file="labels.tiff", width=w, height=h))
    save_contract(prediction, folder / "prediction.json")
    return folder
