"""Reading the annotation files and finding the slide each one is about.

A slidemill `annotations` file is validated against its contract and names its slide
(`slide.name`); a plain QuPath GeoJSON export (any version) or an ASAP/ImageScope XML file does not,
so its slide is the `--slide` whose name (without extension) starts its file name, or the only
`--slide` given.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from pydantic import ValidationError
from shapely.geometry import MultiPolygon, Polygon, shape

from slidemill.shared.annotations import AnnotationShape, make_valid_polygonal, shapes_from_geojson
from slidemill.shared.contracts import AnnotationSet, describe_validation_error
from slidemill.shared.errors import ContractError, InputError
from slidemill.shared.files import require_file

log = logging.getLogger(__name__)

OBJECT_TYPES = {"annotation", "detection", "cell", "tile"}
_MULTIPART_EXTENSIONS = (".ome.tif", ".ome.tiff", ".tar.gz")
_ANNOTATION_SUFFIXES = (".gz", ".geojson", ".json", ".xml")


@dataclass
class InputFile:
    path: Path
    kind: str  # "slidemill", "qupath" or "xml"
    records: list[AnnotationShape]
    slide_name: str | None = None
    mpp: float | None = None
    slide_ref: Any = None
    repaired: int = 0
    skipped: int = 0
    skipped_reasons: list[str] = field(default_factory=list)


def qupath_name_without_extension(name: str) -> str:
    """The name QuPath's `GeneralTools.getNameWithoutExtension` gives (the import script relies on it)."""
    lower = name.lower()
    for ext in _MULTIPART_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    index = name.rfind(".")
    if index >= 0 and re.fullmatch(r"\.\w+", name[index:], flags=re.ASCII):
        return name[:index]
    return name


def annotation_stem(path: Path) -> str:
    """`a.geojson.gz` -> `a`, `b.qupath.json` -> `b.qupath`."""
    name = path.name
    for suffix in _ANNOTATION_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return name


def _finite_numbers(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}


def polygons_from_dicts(geometries: list[dict[str, Any]]) -> list[Polygon | MultiPolygon]:
    """Shapely geometries of validated GeoJSON Polygon/MultiPolygon dicts, built in one vectorised call
    for the Polygons (100,000 shapes in a fraction of a second)."""
    out: list[Any] = [None] * len(geometries)
    index: list[int] = []
    coords: list[Any] = []
    ring_ends: list[int] = [0]
    polygon_ends: list[int] = [0]
    for i, geometry in enumerate(geometries):
        if geometry["type"] != "Polygon":
            out[i] = shape(geometry)
            continue
        index.append(i)
        for ring in geometry["coordinates"]:
            coords.extend(ring)
            ring_ends.append(len(coords))
        polygon_ends.append(len(ring_ends) - 1)
    if index:
        built = shapely.from_ragged_array(
            shapely.GeometryType.POLYGON, np.asarray(coords, dtype=np.float64).reshape(-1, 2),
            (np.asarray(ring_ends, dtype=np.int64), np.asarray(polygon_ends, dtype=np.int64)))
        for i, geom in zip(index, built, strict=True):
            out[i] = geom
    return out


def _records_from_set(annotation_set: AnnotationSet, raw_features: list[dict[str, Any]], result: InputFile) -> None:
    geometries = polygons_from_dicts([f["geometry"] for f in raw_features])
    valid = shapely.is_valid(np.asarray(geometries, dtype=object)) if geometries else []
    for index, (feature, geom, ok) in enumerate(zip(annotation_set.features, geometries, valid, strict=True)):
        props = feature.properties
        if not ok or geom.is_empty:
            geom, repaired = make_valid_polygonal(geom)
            if geom is None:
                result.skipped += 1
                result.skipped_reasons.append(f"feature {index}: nothing polygonal left after repair")
                continue
            result.repaired += int(repaired)
        cls = props.classification
        result.records.append(AnnotationShape(
            geometry=geom, class_name=cls.name if cls else None,
            color=tuple(cls.color) if cls else None, object_type=props.objectType, name=props.name,
            measurements=_finite_numbers(props.measurements), locked=bool(props.isLocked),
            metadata=dict(props.metadata) if props.metadata else None,
        ))


def read_input(path: Path) -> InputFile:
    """Read one annotation file of any supported kind (the format is found from the content)."""
    path = require_file(path, "annotations file")
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"cannot be read ({exc})", path=path) from None
    head = raw[:64].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head[:1] not in (b"{", b"["):
        from slidemill.shared.annotation_formats import read_annotation_file

        read = read_annotation_file(path)
        return _from_shapes(path, "xml", read)
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"is not valid JSON ({exc})", path=path,
                         fix="Give a slidemill annotations file or a QuPath GeoJSON export") from None
    if isinstance(data, dict) and "schema" in data:
        try:
            annotation_set = AnnotationSet.model_validate(data)
        except ValidationError as exc:
            raise ContractError(f"is not a valid slidemill/annotations file: {describe_validation_error(exc)}",
                                path=path, fix="Re-create it with the slidemill tool that writes it") from None
        result = InputFile(path=path, kind="slidemill", records=[],
                           slide_name=annotation_set.slide.name if annotation_set.slide else None,
                           mpp=annotation_set.mpp or (annotation_set.slide.mpp if annotation_set.slide else None),
                           slide_ref=annotation_set.slide)
        _records_from_set(annotation_set, data["features"], result)
        return result
    return _from_shapes(path, "qupath", shapes_from_geojson(data, source=str(path)))


def _from_shapes(path: Path, kind: str, read) -> InputFile:
    result = InputFile(path=path, kind=kind, records=[], repaired=read.repaired, skipped=read.skipped,
                       skipped_reasons=list(read.skipped_reasons))
    for s in read.shapes:
        object_type = s.object_type if s.object_type in OBJECT_TYPES else "annotation"
        result.records.append(AnnotationShape(
            geometry=s.geometry, class_name=_text(s.class_name), color=s.color, object_type=object_type,
            name=_text(s.name), measurements=_finite_numbers(s.measurements), locked=s.locked,
        ))
    return result


def _text(value: Any) -> str | None:
    """A name as QuPath wants it: a non-empty string, or nothing."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value if isinstance(value, str) else str(value)


@dataclass
class SlideGroup:
    """Everything written for one slide: its name, where the slide file is, and the inputs about it."""

    image_name: str | None
    stem: str
    inputs: list[InputFile] = field(default_factory=list)
    slide_path: Path | None = None

    @property
    def records(self) -> list[AnnotationShape]:
        return [r for i in self.inputs for r in i.records]

    @property
    def mpp(self) -> float | None:
        return next((i.mpp for i in self.inputs if i.mpp), None)


def _match_by_name(input_file: InputFile, names: list[str]) -> str | None:
    """The slide name (without extension) that begins the annotation file's name; the longest wins."""
    stem = annotation_stem(input_file.path)
    best: str | None = None
    for name in names:
        slide_stem = qupath_name_without_extension(name)
        if stem == slide_stem or stem.startswith(slide_stem + "."):
            if best is None or len(slide_stem) > len(qupath_name_without_extension(best)):
                best = name
    return best


def group_by_slide(inputs: list[InputFile], slides: list[Path]) -> list[SlideGroup]:
    """One group per slide, in the order the slides first appear in the inputs. A file that does not
    name its slide goes with the slide (given with --slide, or named by another input) whose name
    begins its file name, else with the only --slide given, else on its own (named after the file)."""
    by_name = {s.name: s for s in slides}
    known = list(by_name) + [i.slide_name for i in inputs if i.slide_name and i.slide_name not in by_name]
    groups: dict[str, SlideGroup] = {}
    for input_file in inputs:
        if input_file.slide_name is None:
            match = _match_by_name(input_file, known) or (slides[0].name if len(slides) == 1 else None)
            if match is not None:
                input_file.slide_name = match
        name = input_file.slide_name
        stem = qupath_name_without_extension(name) if name else annotation_stem(input_file.path)
        group = groups.get(stem)
        if group is None:
            group = groups[stem] = SlideGroup(image_name=name, stem=stem)
        elif group.image_name != name:
            raise InputError(
                f"is about {name or 'an unnamed slide'}, but {group.inputs[0].path} is about "
                f"{group.image_name or 'an unnamed slide'} and both would be written as {stem}.geojson",
                path=input_file.path, fix="Convert them in separate runs (each with its own --out)")
        group.inputs.append(input_file)
        if name and group.slide_path is None and name in by_name:
            group.slide_path = by_name[name]
    return list(groups.values())


def find_slide(group: SlideGroup, search_dirs: list[Path]) -> Path | None:
    """The slide file of `group`: given with --slide, else beside an annotation file or in `search_dirs`."""
    if group.slide_path is not None or not group.image_name:
        return group.slide_path
    candidates = [i.path.parent / group.image_name for i in group.inputs]
    candidates += [d / group.image_name for d in search_dirs]
    for candidate in candidates:
        if candidate.exists():
            group.slide_path = candidate.resolve()
            return group.slide_path
    return None
