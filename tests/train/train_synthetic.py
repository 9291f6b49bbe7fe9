"""Synthetic tilesets for the train tool's tests and benchmark: textured shapes on an H&E-like background.

A "slide" is rendered in memory at the tiles' resolution: pale eosin-pink background with mottling,
tumour nests (purple, crowded dark nuclei), stroma bands (deep pink with fibre streaks); it is cut into
tiles and written as a TileSet (tileset.json + tiles/*.png + masks/*.png) through the shared contracts,
exactly as slidemill-tile lays one out.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from slidemill.shared.classes import IGNORE_LABEL, ClassTable
from slidemill.shared.contracts import SlideRef, TileRecord, TileSet, TilingParams, save_contract
from slidemill.shared.geometry import PixelMapping

CLASS_NAMES = ("Other", "Tumor", "Stroma")


def render_slide(width: int, height: int, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """RGB image (H x W x 3 uint8) and label mask (0 Other, 1 Tumor, 2 Stroma)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((height, width), np.uint8)
    # stroma: a few thick bands at random angles
    for _ in range(max(3, width * height // 50_000)):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        angle = rng.uniform(0, np.pi)
        length, thick = rng.uniform(0.3, 0.7) * max(width, height), rng.uniform(18, 40)
        dx, dy = np.cos(angle) * length / 2, np.sin(angle) * length / 2
        cv2.line(labels, (int(cx - dx), int(cy - dy)), (int(cx + dx), int(cy + dy)), 2, int(thick))
    # tumour nests: ellipses, drawn over stroma
    for _ in range(max(4, width * height // 16_000)):
        centre = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        axes = (int(rng.uniform(15, 45)), int(rng.uniform(15, 45)))
        cv2.ellipse(labels, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)

    # mottled background, low-frequency tone variation
    low = cv2.resize(rng.normal(0, 1, (height // 32 + 2, width // 32 + 2)).astype(np.float32), (width, height),
                     interpolation=cv2.INTER_CUBIC)
    image = np.empty((height, width, 3), np.float32)
    palette = {0: (228, 185, 212), 1: (150, 80, 170), 2: (225, 110, 160)}
    for label, colour in palette.items():
        image[labels == label] = colour
    image += low[..., None] * 6
    # tumour texture: many dark nuclei
    nuclei = np.zeros((height, width), np.uint8)
    ys, xs = np.nonzero(labels == 1)
    for k in rng.integers(0, len(ys), len(ys) // 30) if len(ys) else []:
        cv2.circle(nuclei, (int(xs[k]), int(ys[k])), int(rng.integers(2, 4)), 1, -1)
    dark = (nuclei == 1) & (labels == 1)
    image[dark] = image[dark] * 0.5 + np.array((60, 20, 90), np.float32) * 0.5
    # stroma texture: fibre streaks
    fibres = np.zeros((height, width), np.uint8)
    ys, xs = np.nonzero(labels == 2)
    for k in rng.integers(0, len(ys), len(ys) // 60) if len(ys) else []:
        x, y, a = int(xs[k]), int(ys[k]), rng.uniform(0, np.pi)
        cv2.line(fibres, (x, y), (int(x + 8 * np.cos(a)), int(y + 8 * np.sin(a))), 1, 1)
    streak = (fibres == 1) & (labels == 2)
    image[streak] += 20
    # scattered nuclei in the background too (so colour alone is not the whole story)
    for _ in range(int(width * height / 2500)):
        x, y = int(rng.uniform(0, width)), int(rng.uniform(0, height))
        if labels[y, x] == 0:
            cv2.circle(image, (x, y), 2, (120, 60, 150), -1)
    image += rng.normal(0, 5, image.shape).astype(np.float32)
    return np.clip(image, 0, 255).astype(np.uint8), labels


def make_tileset(folder: str | Path, *, slide: str = "synthetic-a.tiff", width: int = 512, height: int = 512,
                 tile: int = 64, overlap: int = 0, mpp: float = 0.5, slide_mpp: float = 0.25, seed: int = 0,
                 class_names: tuple[str, ...] = CLASS_NAMES, sparse: bool = False) -> Path:
    """Write a tileset folder; returns it. Tile pixel (u, v) is level-0 (x + u * scale, y + v * scale)."""
    folder = Path(folder)
    (folder / "tiles").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    image, labels = render_slide(width, height, seed=seed)
    mask = labels.copy()
    if sparse:  # unlabelled stripes, as sparse QuPath annotations leave them
        rng = np.random.default_rng(seed + 99)
        for _ in range(4):
            y = int(rng.uniform(0, height - 20))
            mask[y:y + 20, :] = IGNORE_LABEL
    classes = ClassTable.from_names(list(class_names))
    names = {c.label: c.name for c in classes.classes}
    scale = mpp / slide_mpp
    stride = tile - overlap
    records = []
    for row, y in enumerate(range(0, height - tile + 1, stride)):
        for col, x in enumerate(range(0, width - tile + 1, stride)):
            name = f"r{row:05d}_c{col:05d}.png"
            cv2.imwrite(str(folder / "tiles" / name), cv2.cvtColor(image[y:y + tile, x:x + tile], cv2.COLOR_RGB2BGR))
            m = mask[y:y + tile, x:x + tile]
            cv2.imwrite(str(folder / "masks" / name), m)
            counts = np.bincount(m.ravel(), minlength=256)
            fractions = {names[v]: round(float(counts[v]) / m.size, 6) for v in names if counts[v]}
            records.append(TileRecord(index=len(records), col=col, row=row, x=x * scale, y=y * scale,
                                      width=tile * scale, height=tile * scale, tissue_fraction=1.0,
                                      class_fractions=fractions, image=f"tiles/{name}", mask=f"masks/{name}"))
    tileset = TileSet(
        slide=SlideRef(name=slide, width=int(width * scale), height=int(height * scale), mpp=slide_mpp,
                       mpp_source="file", vendor="synthetic"),
        params=TilingParams(mpp=mpp, tile_size_px=tile, overlap_px=overlap, tissue_threshold=None),
        mapping=PixelMapping(scale=scale), classes=classes, tiles=records)
    save_contract(tileset, folder / "tileset.json")
    return folder
