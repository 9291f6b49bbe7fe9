"""What QuPath 0.4-0.6 accepts in a GeoJSON feature (QUPATH.md), as a checker.

`feature_problems(feature)` lists every reason QuPath's importer would fail on (or silently mangle)
one feature; `file_problems(path)` does the same for a whole file. The writer never produces any
of them; the tests (and anyone holding a file of unknown origin) check with these functions.
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import shape

OBJECT_TYPES = {"annotation", "detection", "cell", "tile"}
POLYGONAL = {"Polygon", "MultiPolygon"}
GEOMETRY_TYPES = POLYGONAL | {"Point", "MultiPoint", "LineString", "MultiLineString"}
MAX_DECIMALS = 2


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _ring_problems(ring: Any, where: str) -> list[str]:
    if not isinstance(ring, list) or not ring:
        return [f"{where}: a ring is not a list of [x, y] positions"]
    try:
        points = np.asarray(ring, dtype=np.float64)
    except (ValueError, TypeError):
        return [f"{where}: a ring is not a list of [x, y] positions of numbers"]
    if points.ndim != 2 or points.shape[1] < 2:
        return [f"{where}: a ring is not a list of [x, y] positions"]
    problems = []
    if len(ring) < 4:
        problems.append(f"{where}: a ring has {len(ring)} points (QuPath needs at least 4)")
    if ring[0] != ring[-1]:
        problems.append(f"{where}: a ring is not closed (first and last points differ)")
    xy = points[:, :2]
    if not np.isfinite(xy).all():
        problems.append(f"{where}: a coordinate is not a finite number")
    elif not (np.round(xy, MAX_DECIMALS) == xy).all():
        bad = xy[(np.round(xy, MAX_DECIMALS) != xy).any(axis=1)][0].tolist()
        problems.append(f"{where}: a coordinate has more than {MAX_DECIMALS} decimals ({bad})")
    return problems


def _structure_problems(geometry: Any, where: str) -> list[str]:
    """Everything about a geometry that needs no geometry engine."""
    if not isinstance(geometry, dict):
        return [f"{where}: missing or not an object"]
    kind = geometry.get("type")
    if kind == "GeometryCollection":
        return [f"{where}: a GeometryCollection (QuPath 0.6 requires 'coordinates')"]
    if kind not in GEOMETRY_TYPES:
        return [f"{where}: unknown geometry type {kind!r}"]
    if "coordinates" not in geometry:
        return [f"{where}: no 'coordinates'"]
    if kind not in POLYGONAL:
        return []
    coords = geometry["coordinates"]
    polygons = [coords] if kind == "Polygon" else coords
    if not isinstance(polygons, list) or not polygons:
        return [f"{where}: empty {kind}"]
    problems: list[str] = []
    for polygon in polygons:
        if not isinstance(polygon, list) or not polygon:
            problems.append(f"{where}: a polygon without rings")
            continue
        for ring in polygon:
            problems.extend(_ring_problems(ring, where))
    return problems


def _validity_problems(geometries: list[Any], where: str = "geometry") -> list[list[str]]:
    """Per geometry (structurally sound GeoJSON Polygon/MultiPolygon dicts): invalid as given, or
    invalid once QuPath 0.6 snaps it to its 0.01 px grid. Vectorised: 100,000 shapes in about a second."""
    if not geometries:
        return []
    from slidemill.shared.annotations import polygons_from_dicts

    try:
        geoms = np.asarray(polygons_from_dicts(geometries), dtype=object)
    except (ValueError, TypeError, shapely.errors.GEOSException):
        geoms = np.asarray([_shape_or_none(g) for g in geometries], dtype=object)
    valid = shapely.is_valid(geoms)
    snapped = shapely.set_precision(geoms, 0.01, mode="pointwise")
    snapped_ok = shapely.is_valid(snapped) & ~shapely.is_empty(snapped)
    out: list[list[str]] = []
    for geom, ok, ok_snapped in zip(geoms, valid, snapped_ok, strict=True):
        if geom is None:
            out.append([f"{where}: unreadable"])
        elif not ok:
            out.append([f"{where}: invalid polygon ({shapely.is_valid_reason(geom)})"])
        elif not ok_snapped:
            out.append([f"{where}: becomes invalid on QuPath 0.6's 0.01 px grid"])
        else:
            out.append([])
    return out


def _shape_or_none(geometry: dict) -> Any:
    try:
        return shape(geometry)
    except (ValueError, TypeError, shapely.errors.GEOSException):
        return None


def _classification_problems(cls: Any) -> list[str]:
    if cls is None or isinstance(cls, str):
        return [] if cls is None or cls.strip() else ["classification: empty name"]
    if not isinstance(cls, dict):
        return ["classification: neither an object nor a string"]
    problems = []
    names = cls.get("names")
    if names is not None:  # a derived class, as QuPath 0.4+ writes it
        if not (isinstance(names, list) and names and all(isinstance(n, str) and n.strip() for n in names)):
            problems.append("classification: 'names' is not a list of non-empty names")
    elif not isinstance(cls.get("name"), str) or not cls["name"].strip():
        problems.append("classification: no name")
    color = cls.get("color")
    if color is None:
        problems.append("classification: no colour ('Unable to parse PathClass' in QuPath 0.4-0.6)")
    elif isinstance(color, int | float):
        problems.append("classification: colour is one integer (QuPath wants [r, g, b])")
    elif not (isinstance(color, list) and len(color) == 3
              and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)):
        problems.append(f"classification: colour {color!r} is not [r, g, b] with integers 0-255")
    return problems


def _property_problems(feature: Any) -> list[str]:
    if not isinstance(feature, dict) or feature.get("type") != "Feature":
        return ["not a GeoJSON Feature"]
    problems: list[str] = []
    fid = feature.get("id")
    try:
        uuid.UUID(str(fid))
    except ValueError:
        problems.append(f"id {fid!r} is not a UUID")
    props = feature.get("properties")
    if not isinstance(props, dict):
        return problems + ["properties: missing"]
    if props.get("objectType") not in OBJECT_TYPES:
        problems.append(f"objectType {props.get('objectType')!r} is not one of {sorted(OBJECT_TYPES)}")
    problems.extend(_classification_problems(props.get("classification")))
    measurements = props.get("measurements", {})
    if not isinstance(measurements, dict):
        problems.append("measurements: not an object (a list is QuPath 0.3 and older)")
    else:
        bad = sorted(k for k, v in measurements.items() if not _is_number(v))
        if bad:
            problems.append(f"measurements: values that are not finite numbers: {bad}")
    if any(v is None for v in props.values()):
        problems.append("properties: a null value")
    return problems


def features_problems(features: list[Any]) -> list[list[str]]:
    """`feature_problems` of many features, with the geometry checks vectorised."""
    out: list[list[str]] = []
    pending: list[tuple[int, str, dict]] = []
    for index, feature in enumerate(features):
        problems = _property_problems(feature)
        if isinstance(feature, dict):
            for where in ("geometry", "nucleusGeometry"):
                if where == "nucleusGeometry" and where not in feature:
                    continue
                geometry = feature.get(where)
                structure = _structure_problems(geometry, where)
                problems.extend(structure)
                if not structure and geometry.get("type") in POLYGONAL:
                    pending.append((index, where, geometry))
        out.append(problems)
    for where in ("geometry", "nucleusGeometry"):
        items = [(i, g) for i, w, g in pending if w == where]
        for (index, _), problems in zip(items, _validity_problems([g for _, g in items], where), strict=True):
            out[index].extend(problems)
    return out


def feature_problems(feature: Any) -> list[str]:
    """Every QuPath import failure rule of QUPATH.md this feature breaks (empty: QuPath accepts it)."""
    return features_problems([feature])[0]


def file_problems(path: str | Path, *, limit: int = 20) -> list[str]:
    """Problems of a whole GeoJSON file, each prefixed with the feature's index (at most `limit`)."""
    from slidemill.shared.annotations import load_json

    data = load_json(path)
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            return ["FeatureCollection without a 'features' list"]
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        return ["neither a FeatureCollection, a Feature nor a list of features"]
    problems: list[str] = []
    ids: set[Any] = set()
    for index, (feature, found) in enumerate(zip(features, features_problems(features), strict=True)):
        problems.extend(f"feature {index}: {problem}" for problem in found)
        fid = feature.get("id") if isinstance(feature, dict) else None
        if fid in ids:
            problems.append(f"feature {index}: id {fid} appears twice")
        ids.add(fid)
        if len(problems) >= limit:
            break
    return problems[:limit]
