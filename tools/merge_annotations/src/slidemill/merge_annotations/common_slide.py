"""What the inputs of a merge agree on: the slide and the resolution each file says it is about."""

from __future__ import annotations

import math

from slidemill.shared.annotations import ReadResult
from slidemill.shared.contracts import SlideRef
from slidemill.shared.errors import InputError


def slide_key(slide: SlideRef) -> tuple[str, int, int]:
    return slide.name, slide.width, slide.height


def common_slide(files: list[ReadResult]) -> SlideRef | None:
    """The one slide all inputs are about; refuses inputs from different slides."""
    seen: dict[tuple[str, int, int], ReadResult] = {}
    for f in files:
        if f.slide is not None:
            seen.setdefault(slide_key(f.slide), f)
    if len(seen) > 1:
        listing = "; ".join(f"{f.path} is {name} ({w} x {h} px)" for (name, w, h), f in seen.items())
        raise InputError(f"the inputs come from different slides ({listing}), and shapes of different slides "
                         "must never be merged", fix="Run one merge per slide, giving only that slide's files")
    return next(iter(seen.values())).slide if seen else None


def common_mpp(files: list[ReadResult], override: float | None) -> float | None:
    """Level-0 microns per pixel: `override`, else the one the inputs agree on (refused if they differ)."""
    if override is not None:
        return override
    values = {f.path: f.mpp for f in files if f.mpp is not None}
    if not values:
        return None
    first = next(iter(values.values()))
    for path, value in values.items():
        if not math.isclose(value, first, rel_tol=1e-6):
            raise InputError(f"the inputs disagree on microns per pixel ({path} says {value}, another {first})",
                             fix="Give only files of one slide, or set the resolution with --slide-mpp")
    return first
