"""The class table: which label value and colour each class name has.

Trainable classes have labels 0..n-1 (a model's output channel i is label i). The `ignore`
entry (unlabelled pixels of sparse annotations, QuPath's `Ignore*`) has label 255 and is
never trained on or predicted. A trainable class may be marked `background` (glass, slide
background): it is trained and predicted like any class, but postprocess does not turn it into
shapes unless asked. Class names are kept byte for byte: any character is allowed, a derived
QuPath class is one name "Tumor: Positive".
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

IGNORE_LABEL = 255
IGNORE_NAME = "Ignore*"

RGB = Annotated[
    tuple[Annotated[int, Field(ge=0, le=255)], Annotated[int, Field(ge=0, le=255)],
          Annotated[int, Field(ge=0, le=255)]],
    Field(description="colour as [r, g, b], each 0-255"),
]

# QuPath's built-in classes and their colours (QuPath 0.4-0.6, PathClassFactory).
QUPATH_COLORS: dict[str, tuple[int, int, int]] = {
    "Tumor": (200, 0, 0),
    "Stroma": (150, 200, 150),
    "Immune cells": (160, 90, 160),
    "Necrosis": (50, 50, 50),
    "Other": (255, 200, 0),
    "Region*": (0, 0, 180),
    "Ignore*": (180, 180, 180),
    "Positive": (250, 62, 62),
    "Negative": (112, 112, 225),
}

# Names people use for "do not learn from this" besides QuPath's own.
IGNORE_ALIASES = {"ignore*", "ignore", "unlabelled", "unlabeled"}
# Class names that mean the glass around the tissue (compared without case); others are marked in the table.
BACKGROUND_NAMES = {"background", "glass", "background*"}

# Colours for classes QuPath has no built-in colour for: distinct, readable on H&E.
_FALLBACK_COLORS = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (214, 39, 40),
]


def rgb_to_argb_int(rgb: tuple[int, int, int]) -> int:
    """QuPath's signed 32-bit ARGB integer for an opaque colour."""
    r, g, b = rgb
    value = (0xFF << 24) | (r << 16) | (g << 8) | b
    return value - (1 << 32) if value >= 1 << 31 else value


def argb_int_to_rgb(value: int) -> tuple[int, int, int]:
    value &= 0xFFFFFFFF
    return (value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF


def is_ignore_name(name: str) -> bool:
    return name.strip().lower() in IGNORE_ALIASES


def is_background_name(name: str) -> bool:
    return name.strip().lower() in BACKGROUND_NAMES


def default_color(name: str, index: int = 0) -> tuple[int, int, int]:
    if name in QUPATH_COLORS:
        return QUPATH_COLORS[name]
    return _FALLBACK_COLORS[index % len(_FALLBACK_COLORS)]


class ClassEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="class name as QuPath shows it")
    label: int = Field(ge=0, le=255, description="pixel value in masks and label rasters")
    color: RGB
    ignore: bool = Field(False, description="true for the one entry that is never trained on")
    background: bool = Field(False, description="glass / slide background: trained and predicted, but not "
                             "vectorised by postprocess unless asked (schema 1.1)")


class ClassTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    classes: list[ClassEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> ClassTable:
        names = [c.name for c in self.classes]
        labels = [c.label for c in self.classes]
        dup_names = sorted({n for n in names if names.count(n) > 1})
        if dup_names:
            raise ValueError(f"class names appear twice: {dup_names}")
        dup_labels = sorted({v for v in labels if labels.count(v) > 1})
        if dup_labels:
            raise ValueError(f"class labels appear twice: {dup_labels}")
        if any(c.ignore and c.background for c in self.classes):
            raise ValueError("the ignore class cannot also be a background class")
        ignores = [c for c in self.classes if c.ignore]
        if len(ignores) > 1:
            raise ValueError("more than one class is marked ignore")
        if ignores and ignores[0].label != IGNORE_LABEL:
            raise ValueError(f"the ignore class must have label {IGNORE_LABEL}")
        trainable = sorted(c.label for c in self.classes if not c.ignore)
        if not trainable:
            raise ValueError("the class table has no trainable class")
        if trainable != list(range(len(trainable))):
            raise ValueError(
                f"trainable class labels must be 0..{len(trainable) - 1} without gaps, got {trainable}"
            )
        return self

    @classmethod
    def from_names(cls, names: list[str], *, with_ignore: bool = True,
                   background: set[str] | frozenset[str] = frozenset()) -> ClassTable:
        """Labels in the order given, QuPath's colours where it has one; ignore aliases map to 255.
        Classes in `background`, and those named like glass ("Background", "Glass"), are marked background."""
        entries: list[ClassEntry] = []
        seen: set[str] = set()
        for name in names:
            if name in seen or is_ignore_name(name):
                continue
            seen.add(name)
            entries.append(ClassEntry(name=name, label=len(entries), color=default_color(name, len(entries)),
                                      background=name in background or is_background_name(name)))
        if with_ignore:
            entries.append(ClassEntry(name=IGNORE_NAME, label=IGNORE_LABEL,
                                      color=QUPATH_COLORS[IGNORE_NAME], ignore=True))
        return cls(classes=entries)

    @property
    def trainable(self) -> list[ClassEntry]:
        return sorted((c for c in self.classes if not c.ignore), key=lambda c: c.label)

    @property
    def num_trainable(self) -> int:
        return len(self.trainable)

    @property
    def background(self) -> list[ClassEntry]:
        return [c for c in self.trainable if c.background]

    @property
    def ignore_entry(self) -> ClassEntry | None:
        return next((c for c in self.classes if c.ignore), None)

    def by_name(self, name: str) -> ClassEntry | None:
        """The entry of `name`; any ignore alias finds the ignore entry."""
        for entry in self.classes:
            if entry.name == name:
                return entry
        if is_ignore_name(name):
            return self.ignore_entry
        return None

    def by_label(self, label: int) -> ClassEntry | None:
        return next((c for c in self.classes if c.label == label), None)

    def palette(self) -> dict[int, tuple[int, int, int]]:
        return {c.label: tuple(c.color) for c in self.classes}
