"""Reading the inputs of a merge: shapes, and the slide and resolution each file says it is about."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from slidemill.shared.annotations import AnnotationShape, load_json, shapes_from_geojson
from slidemill.shared.contracts import AnnotationSet, SlideRef, describe_validation_error
from slidemill.shared.errors import ContractError, InputError
from slidemill.shared.files import require_file

log = logging.getLogger(__name__)


@dataclass
class InputFile:
    path: Path
    shapes: list[AnnotationShape]
    slide: SlideRef | None = None
    mpp: float | None = None
    repaired: int = 0
    skipped: int = 0
    skipped_reasons: list[str] = field(default_factory=list)


def _header(data: Any, path: Path) -> tuple[SlideRef | None, float | None]:
    """The slide and level-0 mpp a slidemill annotations file names (None for a plain QuPath export)."""
    if not isinstance(data, dict) or "schema" not in data:
        return None, None
    kind = f"slidemill/{AnnotationSet.KIND}"
    if data.get("schema") != kind:
        raise ContractError(f"is a {data.get('schema')!r} file, but annotations ({kind}) are expected", path=path,
                            fix="Give the .geojson written by slidemill-postprocess or slidemill-merge-annotations")
    version = str(data.get("schema_version", ""))
    if version.split(".")[0] != AnnotationSet.VERSION.split(".")[0]:
        raise ContractError(f"has schema_version {version!r}; this slidemill reads {kind} version "
                            f"{AnnotationSet.VERSION.split('.')[0]}.x", path=path,
                            fix="Use the slidemill release that wrote it, or re-create it with this one")
    slide = None
    if data.get("slide") is not None:
        try:
            slide = SlideRef.model_validate(data["slide"])
        except ValidationError as exc:
            raise ContractError(f"has an invalid 'slide': {describe_validation_error(exc)}", path=path,
                                fix="Re-create it with slidemill-postprocess") from None
    mpp = data.get("mpp")
    if mpp is not None and not (isinstance(mpp, int | float) and math.isfinite(mpp) and mpp > 0):
        raise ContractError(f"has an invalid 'mpp' ({mpp!r}); it must be a positive number", path=path,
                            fix="Re-create it with slidemill-postprocess")
    return slide, (float(mpp) if mpp is not None else (slide.mpp if slide else None))


def read_input(path: Path) -> InputFile:
    """One input: its polygonal shapes (invalid ones repaired, non-polygons skipped, both counted)."""
    path = require_file(path, "annotations file")
    data = load_json(path, fix="Give a GeoJSON file written by slidemill-postprocess or exported from QuPath")
    slide, mpp = _header(data, path)
    result = shapes_from_geojson(data, source=str(path))
    return InputFile(path=path, shapes=result.shapes, slide=slide, mpp=mpp, repaired=result.repaired,
                     skipped=result.skipped, skipped_reasons=[f"{path.name}: {r}" for r in result.skipped_reasons])


def slide_key(slide: SlideRef) -> tuple[str, int, int]:
    return slide.name, slide.width, slide.height


def common_slide(files: list[InputFile]) -> SlideRef | None:
    """The one slide all inputs are about; refuses inputs from different slides."""
    seen: dict[tuple[str, int, int], Path] = {}
    for f in files:
        if f.slide is not None:
            seen.setdefault(slide_key(f.slide), f.path)
    if len(seen) > 1:
        listing = "; ".join(f"{p} is {name} ({w} x {h} px)" for (name, w, h), p in seen.items())
        raise InputError(f"the inputs come from different slides ({listing}), and shapes of different slides "
                         "must never be merged", fix="Run one merge per slide, giving only that slide's files")
    if not seen:
        return None
    first = next(iter(seen.values()))
    return next(f.slide for f in files if f.path == first)


def common_mpp(files: list[InputFile], override: float | None) -> float | None:
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
