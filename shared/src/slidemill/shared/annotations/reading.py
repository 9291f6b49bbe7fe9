"""The one annotation reader: `read_annotation_file(path)` for every format slidemill takes.

- slidemill `annotations` files (validated against their contract, naming their slide and mpp);
- QuPath GeoJSON of any version: a FeatureCollection, a bare array, a single Feature or a bare
  geometry; 0.2's type-in-`id`, 0.3's `object_type`, 0.4+'s `objectType`; a classification as
  `{name, color}`, `{names: [...], color}` (a derived class), 0.2's `{name, colorRGB, parentClass}`
  or a plain string; measurements as an object or 0.3's `[{name, value}]` list;
- ASAP XML and Aperio ImageScope XML (see `xml_formats`).

Plain or gzipped, with or without a UTF-8 byte-order mark: the format is found from the content,
never from the name. Points and lines cannot be areas: they are skipped and counted per kind
(`ReadResult.skipped_kinds`), as is anything else without a polygon; invalid polygons are repaired
(as QuPath repairs them on import) and counted.
"""

from __future__ import annotations

import gzip
import json
import math
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from pydantic import ValidationError
from shapely.geometry import MultiPolygon, Polygon, shape

from ..classes import argb_int_to_rgb
from ..contracts import AnnotationSet, describe_validation_error, parse_contract
from ..errors import ContractError, InputError
from ..files import require_file
from .objects import AnnotationShape, ReadResult, join_class_names, make_valid_polygonal
from .xml_formats import shapes_from_asap, shapes_from_imagescope

_FIX = ("Give a slidemill annotations file, a QuPath GeoJSON export (File > Export objects as GeoJSON), "
        "an ASAP XML file or an Aperio ImageScope XML file")
_QUPATH_V02_TYPES = {
    "PathAnnotationObject": "annotation", "PathDetectionObject": "detection",
    "PathCellObject": "cell", "PathTileObject": "tile", "TMACoreObject": "tmaCore",
}
# properties read into their own fields; everything else is kept as it came in `properties`
_KNOWN_PROPERTIES = {"objectType", "object_type", "name", "classification", "color", "isLocked",
                     "measurements", "metadata"}
_BOM = b"\xef\xbb\xbf"


def read_bytes(path: str | Path, what: str = "annotation file") -> bytes:
    """The content of a plain or gzipped file, without a UTF-8 byte-order mark."""
    path = require_file(path, what)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"cannot be read ({exc})", path=path, fix=_FIX) from None
    return raw[len(_BOM):] if raw.startswith(_BOM) else raw


def load_json(path: str | Path, *, fix: str = _FIX) -> Any:
    """JSON of a plain or gzipped file; an InputError naming the file when it cannot be parsed."""
    raw = read_bytes(path)
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"is not valid JSON ({exc})", path=path, fix=fix) from None


# --- GeoJSON properties ------------------------------------------------------------------------


def _rgb(value: Any) -> tuple[int, int, int] | None:
    if isinstance(value, list | tuple) and len(value) >= 3 and all(isinstance(c, int | float) for c in value[:3]):
        return int(value[0]), int(value[1]), int(value[2])
    if isinstance(value, int) and not isinstance(value, bool):
        return argb_int_to_rgb(value)
    return None


def _legacy_names(cls: dict[str, Any]) -> list[str]:
    """0.2/0.3's `{name, parentClass: {...}}` chain, outermost parent first."""
    names: list[str] = []
    node: Any = cls
    while isinstance(node, dict) and isinstance(node.get("name"), str):
        names.insert(0, node["name"])
        node = node.get("parentClass")
    return names


def classification(props: dict[str, Any]) -> tuple[str | None, tuple[str, ...] | None, tuple[int, int, int] | None]:
    """(full class name, derived parts or None, class colour) of a feature's properties."""
    cls = props.get("classification")
    if isinstance(cls, str):
        return (cls, None, None) if cls.strip() else (None, None, None)
    if not isinstance(cls, dict):
        return None, None, None
    names = cls.get("names")
    if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
        parts = tuple(n.strip() for n in names)
    elif isinstance(cls.get("parentClass"), dict):
        parts = tuple(_legacy_names(cls))
    elif isinstance(cls.get("name"), str | int | float) and not isinstance(cls["name"], bool) \
            and str(cls["name"]).strip():
        parts = (str(cls["name"]),)
    else:
        return None, None, None
    color = _rgb(cls.get("color"))
    if color is None:
        color = _rgb(cls.get("colorRGB"))
    return join_class_names(parts) if len(parts) > 1 else parts[0], (parts if len(parts) > 1 else None), color


def measurements(props: dict[str, Any]) -> tuple[dict[str, float], int]:
    """Numeric measurements (non-finite ones included) and how many values were not numbers."""
    raw = props.get("measurements")
    items: list[tuple[Any, Any]] = []
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):  # before 0.4: [{"name": ..., "value": ...}]
        items = [(m.get("name"), m.get("value")) for m in raw if isinstance(m, dict)]
    out: dict[str, float] = {}
    not_numbers = 0
    for key, value in items:
        if isinstance(key, str) and isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
        else:
            not_numbers += 1
    return out, not_numbers


def _features_of(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, list):
        out: list[dict[str, Any]] = []
        for item in data:
            out.extend(_features_of(item))
        return out
    if not isinstance(data, dict):
        return []
    kind = data.get("type")
    if kind == "FeatureCollection":
        return _features_of(data.get("features") or [])
    if kind == "Feature":
        return [data]
    if "coordinates" in data or kind == "GeometryCollection":  # a bare geometry becomes an annotation
        return [{"type": "Feature", "geometry": data, "properties": {}}]
    return []


# --- geometries --------------------------------------------------------------------------------


def polygons_from_dicts(geometries: list[dict[str, Any]]) -> list[Polygon | MultiPolygon]:
    """Shapely geometries of GeoJSON Polygon/MultiPolygon dicts, built in one vectorised call for the
    Polygons (100,000 shapes in a fraction of a second)."""
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


def _flat_polygonal(geometry: Any) -> bool:
    """A Polygon/MultiPolygon dict whose positions are all [x, y] number pairs (the fast path)."""
    if not isinstance(geometry, dict) or geometry.get("type") not in ("Polygon", "MultiPolygon"):
        return False
    polygons = [geometry.get("coordinates")] if geometry["type"] == "Polygon" else geometry.get("coordinates")
    if not isinstance(polygons, list) or not polygons:
        return False
    for polygon in polygons:
        if not isinstance(polygon, list) or not polygon:
            return False
        for ring in polygon:
            if not isinstance(ring, list) or len(ring) < 4 or ring[0] != ring[-1]:
                return False
            first = ring[0]
            if not (isinstance(first, list) and len(first) == 2):
                return False
    return True


def _geometries(raw: list[Any]) -> list[Any]:
    """Shapely geometries of GeoJSON geometry dicts (None where there is none); a dict that cannot
    be read gives the exception instead."""
    out: list[Any] = [None] * len(raw)
    fast = [i for i, g in enumerate(raw) if _flat_polygonal(g)]
    if fast:
        try:
            for i, geom in zip(fast, polygons_from_dicts([raw[i] for i in fast]), strict=True):
                out[i] = geom
        except (ValueError, TypeError, shapely.errors.GEOSException):
            fast = []
    done = set(fast)
    for i, geometry in enumerate(raw):
        if i in done or not geometry:
            continue
        try:
            out[i] = shape(geometry)
        except (KeyError, TypeError, ValueError, AttributeError, shapely.errors.GEOSException) as exc:
            out[i] = exc
    return out


def _plane(plane: dict[str, Any] | None) -> dict[str, int] | None:
    """QuPath's `{c, z, t}` plane; None for the default plane (c -1, z 0, t 0) or none given."""
    if not plane:
        return None
    out = {"c": -1, "z": 0, "t": 0}
    for key in out:
        value = plane.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = int(value)
    return None if out == {"c": -1, "z": 0, "t": 0} else out


def _kind(geometry: Any) -> str:
    kind = geometry.get("type") if isinstance(geometry, dict) else None
    if kind in ("Point", "MultiPoint"):
        return "points"
    if kind in ("LineString", "MultiLineString"):
        return "lines"
    return "other"


def _repair(result: ReadResult, geoms: list[Any], valid: np.ndarray, index: int, what: str,
            kind: str) -> Polygon | MultiPolygon | None:
    geom = geoms[index]
    if isinstance(geom, Exception):
        result.skip(f"{what}: unreadable geometry ({geom})", kind)
        return None
    if geom is not None and valid[index] and isinstance(geom, Polygon | MultiPolygon) and not geom.is_empty:
        return geom
    given = getattr(geom, "geom_type", None) if geom is not None and not isinstance(geom, Exception) else None
    return result.polygonal(geom, f"{what}: not a polygon ({given or 'no geometry'})", kind)


def shapes_from_geojson(data: Any, *, source: str | Path = "<geojson>") -> ReadResult:
    """Objects of any QuPath GeoJSON flavour (see the module docs), in file order."""
    features = _features_of(data)
    if not features and not (isinstance(data, dict) and data.get("type") == "FeatureCollection"):
        raise InputError("holds no GeoJSON features", path=source,
                         fix="Give a QuPath GeoJSON export (a FeatureCollection, a Feature or a list of them)")
    result = ReadResult(shapes=[], path=Path(source) if not str(source).startswith("<") else None)
    raw_geoms = [f.get("geometry") for f in features]
    geoms = _geometries(raw_geoms)
    nuclei_at = [i for i, f in enumerate(features) if f.get("nucleusGeometry")]
    nuclei = dict(zip(nuclei_at, _geometries([features[i]["nucleusGeometry"] for i in nuclei_at]), strict=True))
    arr = np.empty(len(geoms), dtype=object)
    arr[:] = [g if isinstance(g, Polygon | MultiPolygon) else None for g in geoms]
    valid = shapely.is_valid(arr) if len(arr) else np.zeros(0, bool)
    for index, feature in enumerate(features):
        props = feature.get("properties") if isinstance(feature.get("properties"), dict) else {}
        geometry = raw_geoms[index]
        polygonal = _repair(result, geoms, valid, index, f"feature {index}", _kind(geometry))
        if polygonal is None:
            continue
        object_type = (props.get("objectType") or props.get("object_type")
                       or _QUPATH_V02_TYPES.get(str(feature.get("id")), "annotation"))
        class_name, class_names, color = classification(props)
        values, _ = measurements(props)
        nucleus = None
        if index in nuclei:
            nucleus_geom = nuclei[index]
            if not isinstance(nucleus_geom, Exception):
                nucleus, repaired = make_valid_polygonal(nucleus_geom)
                result.repaired += int(repaired)
        fid = feature.get("id")
        plane = geometry.get("plane") if isinstance(geometry, dict) else None
        plane = plane if isinstance(plane, dict) else None
        metadata = props.get("metadata")
        result.shapes.append(AnnotationShape(
            geometry=polygonal, class_name=class_name, color=color, object_type=str(object_type),
            name=props.get("name"), measurements=values, locked=bool(props.get("isLocked")),
            metadata=({str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, dict) and metadata
                      else None),
            id=str(fid) if isinstance(fid, str) and str(fid) not in _QUPATH_V02_TYPES else None,
            class_names=class_names, object_color=_rgb(props.get("color")), nucleus=nucleus,
            plane=_plane(plane),
            properties={k: v for k, v in props.items() if k not in _KNOWN_PROPERTIES} or None,
        ))
    return result


# --- slidemill files ---------------------------------------------------------------------------


def _slidemill(data: dict[str, Any], path: Path) -> ReadResult:
    """A slidemill annotations file: validated against its contract, then read like any GeoJSON."""
    try:
        annotation_set = AnnotationSet.model_validate(data)
    except ValidationError as exc:
        raise ContractError(f"is not a valid slidemill/annotations file: {describe_validation_error(exc)}",
                            path=path, fix="Re-create it with the slidemill tool that writes it") from None
    result = shapes_from_geojson(data, source=path)
    result.format = "slidemill"
    result.slide = annotation_set.slide
    mpp = annotation_set.mpp or (annotation_set.slide.mpp if annotation_set.slide else None)
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise ContractError(f"has an invalid 'mpp' ({mpp!r})", path=path, fix="Re-create it with slidemill")
    result.mpp = mpp
    return result


def read_annotation_file(path: str | Path) -> ReadResult:
    """Objects (level-0 pixels) of a slidemill, QuPath GeoJSON, ASAP XML or ImageScope XML file.

    The format is recognised from the content; anything else is an InputError naming the file, a
    slidemill file that breaks its contract a ContractError (both exit 2)."""
    path = require_file(path, "annotation file")
    raw = read_bytes(path)
    head = raw[:4096].lstrip(b" \t\r\n")
    if head[:1] in (b"{", b"["):
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"looks like JSON but is not valid JSON ({exc})", path=path, fix=_FIX) from None
        if isinstance(data, dict) and "schema" in data:
            return _slidemill(data, path)
        result = shapes_from_geojson(data, source=path)
        result.path = path
        return result
    if head[:1] == b"<":
        try:
            root = ET.fromstring(raw)
        except ET.ParseError as exc:
            raise InputError(f"looks like XML but is not valid XML ({exc})", path=path, fix=_FIX) from None
        if root.tag == "ASAP_Annotations":
            result, result.format = shapes_from_asap(root), "asap"
        elif root.tag == "Annotations":
            result, result.format = shapes_from_imagescope(root), "imagescope"
        else:
            raise InputError(f"is an XML file of an unknown kind (root element <{root.tag}>)", path=path, fix=_FIX)
        result.path = path
        return result
    raise InputError("is neither GeoJSON nor an ASAP or ImageScope XML annotation file", path=path, fix=_FIX)


def read_annotation_set(path: str | Path) -> AnnotationSet:
    """A slidemill `annotations` file as its contract model (validation for tests and notebooks)."""
    return parse_contract(read_bytes(path, "annotations file"), AnnotationSet, path=path)
