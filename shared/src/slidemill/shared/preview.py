"""The one preview renderer of slidemill: class overlays, a legend naming every colour, side-by-side panels.

Used by tile (annotations, tissue and kept tiles on a thumbnail) and infer (the slide beside the
predicted labels). Images are RGB uint8 arrays (H x W x 3); nothing here reads a slide.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from .classes import ClassTable
from .errors import OutputError
from .files import write_bytes_atomic

RGB = tuple[int, int, int]
LegendEntry = tuple[str, RGB]

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_PAD = 8
BACKGROUND: RGB = (255, 255, 255)
INK: RGB = (20, 20, 20)


def class_entries(classes: ClassTable, *, labels: Sequence[int] | None = None) -> list[LegendEntry]:
    """(name, colour) of each trainable class, in label order; only `labels` when given."""
    keep = None if labels is None else {int(v) for v in labels}
    return [(c.name, tuple(int(v) for v in c.color)) for c in sorted(classes.classes, key=lambda c: c.label)
            if not c.ignore and (keep is None or c.label in keep)]


def blend_labels(image: np.ndarray, labels: np.ndarray, classes: ClassTable, *, alpha: float = 0.45) -> np.ndarray:
    """`image` with each labelled pixel mixed with its class colour (weight `alpha`); ignore classes and
    labels without a class (255: not predicted) are left as they are. `labels`: H x W uint8, same size."""
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels {labels.shape} and image {image.shape[:2]} differ in size")
    lut = np.zeros((256, 3), np.float32)
    has = np.zeros(256, bool)
    for entry in classes.classes:
        lut[entry.label] = entry.color
        has[entry.label] = not entry.ignore
    out = image.astype(np.float32)
    on = has[labels]
    out[on] = (1 - alpha) * out[on] + alpha * lut[labels[on]]
    return out.round().astype(np.uint8)


def _text_size(text: str, scale: float) -> tuple[int, int]:
    (w, h), baseline = cv2.getTextSize(text, _FONT, scale, 1)
    return w, h + baseline


def legend_panel(entries: Sequence[LegendEntry], *, height: int, title: str = "", scale: float = 0.5) -> np.ndarray:
    """A white column listing each entry as a colour swatch and its name (RGB, at least `height` tall)."""
    lines = ([title] if title else []) + [name for name, _ in entries]
    line_h = max(_text_size("Ag", scale)[1], 14) + 6
    swatch = line_h - 6
    width = _PAD * 3 + swatch + max([_text_size(t, scale)[0] for t in lines] + [40])
    panel = np.full((max(height, _PAD * 2 + line_h * len(lines)), width, 3), BACKGROUND, np.uint8)
    y = _PAD
    if title:
        cv2.putText(panel, title, (_PAD, y + line_h - 8), _FONT, scale, INK, 1, cv2.LINE_AA)
        y += line_h
    for name, color in entries:
        cv2.rectangle(panel, (_PAD, y), (_PAD + swatch, y + swatch), tuple(int(v) for v in color), -1)
        cv2.rectangle(panel, (_PAD, y), (_PAD + swatch, y + swatch), INK, 1)
        cv2.putText(panel, name, (_PAD * 2 + swatch, y + swatch - 3), _FONT, scale, INK, 1, cv2.LINE_AA)
        y += line_h
    return panel


def _pad_to(image: np.ndarray, height: int) -> np.ndarray:
    if image.shape[0] >= height:
        return image
    pad = np.full((height - image.shape[0], image.shape[1], 3), BACKGROUND, np.uint8)
    return np.concatenate([image, pad])


def compose(panels: Sequence[tuple[str, np.ndarray]], entries: Sequence[LegendEntry], *,
            legend_title: str = "legend") -> np.ndarray:
    """Panels side by side, each under its title, then the legend: one RGB image a person can read."""
    scale = 0.55
    title_h = _text_size("Ag", scale)[1] + _PAD * 2
    columns = []
    for title, image in panels:
        head = np.full((title_h, image.shape[1], 3), BACKGROUND, np.uint8)
        cv2.putText(head, title, (_PAD // 2, title_h - _PAD), _FONT, scale, INK, 1, cv2.LINE_AA)
        columns.append(np.concatenate([head, image]))
    height = max(c.shape[0] for c in columns)
    legend = legend_panel(entries, height=height, title=legend_title)
    height = max(height, legend.shape[0])
    gap = np.full((height, _PAD, 3), BACKGROUND, np.uint8)
    parts = []
    for column in columns:
        parts += [_pad_to(column, height), gap]
    parts.append(_pad_to(legend, height))
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


def encode_png(image: np.ndarray, path: Path | None = None) -> bytes:
    """PNG bytes of an RGB image (`path` only names the file in an error)."""
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OutputError("cannot encode the preview image", path=path)
    return png.tobytes()


def write_preview(path: Path, image: np.ndarray) -> None:
    """Write an RGB preview as PNG, atomically."""
    write_bytes_atomic(path, encode_png(image, path))
