"""Annotation shapes in and out: QuPath GeoJSON of every version, and slidemill's own contract.

Reading accepts what QuPath 0.2-0.6 exports (a FeatureCollection, a Feature, a list of features or a
bare geometry; `objectType`, 0.3's `object_type`, 0.2's type-in-`id`; a classification as an object
with `color` or legacy `colorRGB`, or as a plain string), plain or gzipped. Writing produces only
what QuPath's parser accepts (see QUPATH.md): valid polygons, closed rings, two decimals, a
classification with an RGB colour, numeric measurements, and deterministic ids.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import MultiPolygon, Polygon, mapping, shape
from shapely.geometry.base import BaseGeometry

from .classes import ClassTable, argb_int_to_rgb, default_color
from .contracts import AnnotationSet, Feature, parse_contract
from .errors import InputError
from .files import require_file

log = logging.getLogger(__name__)

# A fixed namespace makes feature ids a function of their content, so reruns give identical files.
FEATURE_NAMESPACE = uuid.UUID("6f1c1d0e-5a8e-4f7b-9d1e-51d3e1111a11")
COORDINATE_DECIMALS = 2
_QUPATH_V02_TYPES = {
    "PathAnnotationObject": "annotation", "PathDetectionObject": "detection",
    "PathCellObject": "cell", "PathTileObject": "tile",
}


@dataclass
class AnnotationShape:
    """One annotation: a polygonal geometry in level-0 pixels, its class and QuPath properties."""

    geometry: Polygon | MultiPolygon
    class_name: str | None = None
    color: tuple[int, int, int] | None = None
    object_type: str = "annotation"
    name: str | None = None
    measurements: dict[str, float] = field(default_factory=dict)
    locked: bool = False
    metadata: dict[str, str] | None = None


@dataclass
class ReadResult:
    shapes: list[AnnotationShape]
    repaired: int = 0
    skipped: int = 0
    skipped_reasons: list[str] = field(default_factory=list)

    def skip(self, reason: str) -> None:
        self.skipped += 1
        self.skipped_reasons.append(reason)

    def polygonal(self, geom: BaseGeometry | None, skip_reason: str) -> Polygon | MultiPolygon | None:
        """`geom` repaired if needed (and counted), or None after counting it as skipped."""
        polygonal, repaired = make_valid_polygonal(geom)
        if polygonal is None:
            self.skip(skip_reason)
            return None
        self.repaired += int(repaired)
        return polygonal


def make_valid_polygonal(geom: BaseGeometry | None) -> tuple[Polygon | MultiPolygon | None, bool]:
    """The polygonal part of `geom`, repaired if invalid; (None, _) when nothing polygonal is left."""
    if geom is None or geom.is_empty:
        return None, False
    repaired = False
    if not geom.is_valid:
        geom = shapely.make_valid(geom, method="structure", keep_collapsed=False)
        repaired = True
    if isinstance(geom, Polygon | MultiPolygon):
        return (geom if not geom.is_empty else None), repaired
    parts = [g for g in getattr(geom, "geoms", []) if isinstance(g, Polygon | MultiPolygon) and not g.is_empty]
    if not parts:
        return None, repaired
    merged = shapely.unary_union(parts)
    if isinstance(merged, Polygon | MultiPolygon) and not merged.is_empty:
        return merged, True
    return None, True


# --- reading -----------------------------------------------------------------------------------


def load_json(path: Path, *, fix: str = "Export them from QuPath with File > Export objects as GeoJSON") -> Any:
    """JSON of a plain or gzipped file; an InputError naming the file when it cannot be read or parsed."""
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        return json.loads(raw)
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot be read ({exc})", path=path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"is not valid JSON ({exc})", path=path, fix=fix) from None


def _classification(props: dict[str, Any]) -> tuple[str | None, tuple[int, int, int] | None]:
    cls = props.get("classification")
    if cls is None:
        return None, None
    if isinstance(cls, str):
        return cls, None
    if isinstance(cls, dict):
        name = cls.get("name") or (cls.get("names") or [None])[0]
        color = cls.get("color")
        if isinstance(color, list | tuple) and len(color) >= 3:
            return name, (int(color[0]), int(color[1]), int(color[2]))
        if isinstance(color, int):
            return name, argb_int_to_rgb(color)
        if isinstance(cls.get("colorRGB"), int):
            return name, argb_int_to_rgb(cls["colorRGB"])
        return name, None
    return None, None


def _measurements(props: dict[str, Any]) -> dict[str, float]:
    raw = props.get("measurements")
    items: list[tuple[Any, Any]] = []
    if isinstance(raw, dict):
        items = list(raw.items())
    elif isinstance(raw, list):  # before 0.4: [{"name": ..., "value": ...}]
        items = [(m.get("name"), m.get("value")) for m in raw if isinstance(m, dict)]
    out = {}
    for key, value in items:
        if isinstance(key, str) and isinstance(value, int | float) and math.isfinite(value):
            out[key] = float(value)
    return out


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


def shapes_from_geojson(data: Any, *, source: str = "<geojson>") -> ReadResult:
    """Shapes of any QuPath GeoJSON flavour; lines and points are skipped, invalid polygons repaired."""
    result = ReadResult(shapes=[])
    features = _features_of(data)
    if not features and not (isinstance(data, dict) and data.get("type") == "FeatureCollection"):
        raise InputError("holds no GeoJSON features", path=source,
                         fix="Give a QuPath GeoJSON export (a FeatureCollection, a Feature or a list of them)")
    for index, feature in enumerate(features):
        props = feature.get("properties") or {}
        object_type = (props.get("objectType") or props.get("object_type")
                       or _QUPATH_V02_TYPES.get(str(feature.get("id")), "annotation"))
        try:
            geom = shape(feature["geometry"]) if feature.get("geometry") else None
        except (KeyError, TypeError, ValueError, shapely.errors.GEOSException) as exc:
            result.skip(f"feature {index}: unreadable geometry ({exc})")
            continue
        kind = feature.get("geometry", {}).get("type") if isinstance(feature.get("geometry"), dict) else None
        polygonal = result.polygonal(geom, f"feature {index}: not a polygon ({kind})")
        if polygonal is None:
            continue
        name, color = _classification(props)
        result.shapes.append(AnnotationShape(
            geometry=polygonal, class_name=name, color=color, object_type=str(object_type),
            name=props.get("name"), measurements=_measurements(props), locked=bool(props.get("isLocked")),
            metadata=({str(k): str(v) for k, v in props["metadata"].items()}
                      if isinstance(props.get("metadata"), dict) and props["metadata"] else None),
        ))
    return result


def read_geojson(path: str | Path) -> ReadResult:
    """Shapes from a GeoJSON file (`.geojson`, `.json`, gzipped or not) of any QuPath version or slidemill."""
    path = require_file(path, "annotation file")
    return shapes_from_geojson(load_json(path), source=str(path))


def read_annotation_set(path: str | Path) -> AnnotationSet:
    """A slidemill `annotations` file, validated against its contract."""
    path = require_file(path, "annotations file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot be read ({exc.strerror})", path=path) from None
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    return parse_contract(data, AnnotationSet, path=path)


def shapes_from_set(annotation_set: AnnotationSet) -> list[AnnotationShape]:
    out = []
    for feature in annotation_set.features:
        props = feature.properties
        cls = props.classification
        out.append(AnnotationShape(
            geometry=shape(feature.geometry.model_dump()),
            class_name=cls.name if cls else None, color=tuple(cls.color) if cls else None,
            object_type=props.objectType, name=props.name, measurements=dict(props.measurements),
            locked=bool(props.isLocked),
        ))
    return out


# --- writing -----------------------------------------------------------------------------------


def snap_polygonal(geom: Polygon | MultiPolygon, decimals: int = COORDINATE_DECIMALS) -> Polygon | MultiPolygon | None:
    """Round to `decimals` on a grid that keeps the geometry valid (QuPath 0.6 snaps to 0.01 and
    throws on what becomes invalid)."""
    snapped = shapely.set_precision(geom, 10.0 ** -decimals, mode="valid_output")
    polygonal, _ = make_valid_polygonal(snapped)
    return polygonal


def geometry_dict(geom: Polygon | MultiPolygon) -> dict[str, Any]:
    """GeoJSON geometry with plain lists, rounded coordinates and closed rings."""
    data = mapping(geom)

    def rnd(v: float) -> float:
        r = round(float(v), COORDINATE_DECIMALS)
        return int(r) if r.is_integer() else r

    def ring(coords) -> list[list[float]]:
        return [[rnd(x), rnd(y)] for x, y, *_ in coords]

    if data["type"] == "Polygon":
        return {"type": "Polygon", "coordinates": [ring(r) for r in data["coordinates"]]}
    return {"type": "MultiPolygon", "coordinates": [[ring(r) for r in poly] for poly in data["coordinates"]]}


def feature_id(geometry: dict[str, Any], class_name: str | None, object_type: str) -> str:
    key = json.dumps([geometry, class_name, object_type], separators=(",", ":"), sort_keys=True)
    return str(uuid.uuid5(FEATURE_NAMESPACE, key))


def measure(geom: Polygon | MultiPolygon, mpp: float | None) -> dict[str, float]:
    """Area and perimeter in µm² and µm when the resolution is known, else in pixels."""
    if mpp:
        return {"Area µm^2": round(geom.area * mpp * mpp, 3), "Perimeter µm": round(geom.length * mpp, 3)}
    return {"Area px^2": round(geom.area, 3), "Perimeter px": round(geom.length, 3)}


def make_feature(
    geom: Polygon | MultiPolygon,
    class_name: str | None,
    *,
    classes: ClassTable | None = None,
    color: tuple[int, int, int] | None = None,
    object_type: str = "annotation",
    mpp: float | None = None,
    measurements: dict[str, float] | None = None,
    name: str | None = None,
    locked: bool = False,
) -> Feature | None:
    """A contract Feature QuPath imports without error, or None if nothing valid is left after snapping."""
    snapped = snap_polygonal(geom)
    if snapped is None:
        return None
    geometry = geometry_dict(snapped)
    props: dict[str, Any] = {"objectType": object_type}
    if name:
        props["name"] = name
    if class_name:
        entry = classes.by_name(class_name) if classes else None
        rgb = tuple(entry.color) if entry else (color or default_color(class_name))
        props["classification"] = {"name": class_name, "color": list(rgb)}
    if locked:
        props["isLocked"] = True
    values = measure(snapped, mpp)
    values.update({k: v for k, v in (measurements or {}).items() if math.isfinite(v)})
    props["measurements"] = values
    return Feature.model_validate({
        "type": "Feature", "id": feature_id(geometry, class_name, object_type),
        "geometry": geometry, "properties": props,
    })
