"""QuPath-flavoured GeoJSON, written feature by feature.

Every feature is what QuPath 0.4-0.6 imports without error (QUPATH.md): a deterministic UUID, an
`objectType`, a classification `{name, color: [r, g, b]}`, a valid Polygon or MultiPolygon with
closed rings on a 0.01 px grid (so QuPath 0.6's own snapping changes nothing), and finite numeric
measurements only. The file is also a valid slidemill `annotations` file (QuPath ignores the extra
top-level members), streamed to a temporary file and renamed into place; gzip output is byte-stable
(no name, no time in the header). Output is pure ASCII, so any platform charset reads it.
"""

from __future__ import annotations

import gzip
import io
import itertools
import json
import logging
import math
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon

from slidemill.shared.annotations import (
    COORDINATE_DECIMALS,
    FEATURE_NAMESPACE,
    AnnotationShape,
    geometry_dict,
    make_valid_polygonal,
    measure,
    snap_polygonal,
)
from slidemill.shared.classes import default_color
from slidemill.shared.files import atomic_write

log = logging.getLogger(__name__)

_GRID = 10.0 ** -COORDINATE_DECIMALS
_BATCH = 4096
_POLYGONAL_IDS = [3, 6]  # shapely type ids of Polygon and MultiPolygon
_EXPONENT = re.compile(r"\d[eE]|nan|inf", re.IGNORECASE)
_INTEGRAL = re.compile(r"(-?\d+)\.0(?=[,\]])")


@dataclass
class WriteStats:
    written: int = 0
    dropped: int = 0
    resnapped: int = 0
    renamed_ids: int = 0
    per_class: dict[str, int] = field(default_factory=dict)


def class_colors(records: Iterable[AnnotationShape]) -> dict[str, tuple[int, int, int]]:
    """The class table of the output: one colour per class name, the first one the input gives
    (QuPath's own colour for its built-in classes, a distinct fallback colour otherwise)."""
    colors: dict[str, tuple[int, int, int]] = {}
    missing: list[str] = []
    for record in records:
        name = record.class_name
        if not name:
            continue
        if name not in colors and record.color is not None:
            colors[name] = tuple(int(c) for c in record.color)
        elif name not in colors and name not in missing:
            missing.append(name)
    for index, name in enumerate(n for n in missing if n not in colors):
        colors[name] = default_color(name, index)
    return colors


def snap(geom: Polygon | MultiPolygon) -> tuple[Polygon | MultiPolygon | None, bool]:
    """`geom` on the 0.01 px grid and valid: the fast point-wise rounding when that stays valid,
    else the shared topology-preserving snap. Returns (geometry or None, whether the slow path ran)."""
    fast = shapely.set_precision(geom, _GRID, mode="pointwise")
    if isinstance(fast, Polygon | MultiPolygon) and not fast.is_empty and fast.is_valid:
        return fast, False
    polygonal, _ = make_valid_polygonal(geom)
    return (snap_polygonal(polygonal) if polygonal is not None else None), True


def _snap_batch(geoms: list[Polygon | MultiPolygon], stats: WriteStats) -> list[Polygon | MultiPolygon | None]:
    """`snap` for many geometries at once (vectorised fast path, per-geometry slow path)."""
    array = shapely.force_2d(np.asarray(geoms, dtype=object) if geoms else np.empty(0, dtype=object))
    fast = shapely.set_precision(array, _GRID, mode="pointwise")
    kinds = shapely.get_type_id(fast)
    good = shapely.is_valid(fast) & ~shapely.is_empty(fast) & np.isin(kinds, _POLYGONAL_IDS)
    out: list[Polygon | MultiPolygon | None] = list(fast)
    for i in np.flatnonzero(~good):
        out[i], _ = snap(array[i])
        stats.resnapped += 1
    return out


def _unique_id(fid: str, seen: set[str]) -> tuple[str, bool]:
    if fid not in seen:
        seen.add(fid)
        return fid, False
    n = 1
    while True:
        candidate = str(uuid.uuid5(FEATURE_NAMESPACE, f"{fid}#{n}"))
        if candidate not in seen:
            seen.add(candidate)
            return candidate, True
        n += 1


def _coordinates_text(geom: Polygon | MultiPolygon, text: str) -> str:
    """The `coordinates` JSON of a snapped geometry exactly as `json.dumps(geometry_dict(geom))` writes it
    (integral values as integers), taken from GEOS's GeoJSON writer; the Python path if GEOS wrote
    anything unexpected (an exponent)."""
    coords = text[text.index('"coordinates":') + 14:-1]
    if _EXPONENT.search(coords):
        return _dumps(geometry_dict(geom)["coordinates"])
    coords = _INTEGRAL.sub(r"\1", coords)
    return coords.replace("[-0,", "[0,").replace(",-0]", ",0]")


def feature_lines(
    records: Iterable[AnnotationShape],
    *,
    colors: dict[str, tuple[int, int, int]],
    mpp: float | None = None,
    object_type: str | None = None,
    lock: bool = False,
    stats: WriteStats | None = None,
) -> Iterator[str]:
    """One compact JSON line per QuPath-valid feature, in input order; records whose geometry vanishes on
    the 0.01 px grid are dropped. Work is done in batches, so memory is bounded by the batch size.
    The id is `slidemill.shared.annotations.feature_id` of the written geometry, class and type."""
    stats = stats if stats is not None else WriteStats()
    seen: set[str] = set()
    iterator = iter(records)
    while True:
        batch = list(itertools.islice(iterator, _BATCH))
        if not batch:
            return
        snapped = _snap_batch([r.geometry for r in batch], stats)
        present = [g for g in snapped if g is not None]
        texts = iter(shapely.to_geojson(np.asarray(present, dtype=object)) if present else [])
        for record, geom in zip(batch, snapped, strict=True):
            if geom is None:
                stats.dropped += 1
                continue
            coords = _coordinates_text(geom, next(texts))
            kind = object_type or record.object_type or "annotation"
            props: dict[str, Any] = {"objectType": kind}
            if record.name:
                props["name"] = str(record.name)
            if record.class_name:
                rgb = colors.get(record.class_name) or default_color(record.class_name)
                props["classification"] = {"name": record.class_name, "color": [int(c) for c in rgb]}
                stats.per_class[record.class_name] = stats.per_class.get(record.class_name, 0) + 1
            if kind == "annotation" and (lock or record.locked):
                props["isLocked"] = True
            values = measure(geom, mpp)
            values.update({k: float(v) for k, v in record.measurements.items()
                           if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)})
            props["measurements"] = values
            if record.metadata:
                props["metadata"] = {str(k): str(v) for k, v in record.metadata.items() if v is not None}
            geometry_type = geom.geom_type
            key = (f'[{{"coordinates":{coords},"type":"{geometry_type}"}},'
                   f"{_dumps(record.class_name)},{_dumps(kind)}]")
            fid, renamed = _unique_id(str(uuid.uuid5(FEATURE_NAMESPACE, key)), seen)
            stats.renamed_ids += int(renamed)
            stats.written += 1
            yield (f'{{"type":"Feature","id":"{fid}","geometry":{{"type":"{geometry_type}",'
                   f'"coordinates":{coords}}},"properties":{_dumps(props)}}}')


def qupath_features(records: Iterable[AnnotationShape], **kwargs: Any) -> Iterator[dict[str, Any]]:
    """`feature_lines` as dicts (for notebooks and tests; the writer streams the lines themselves)."""
    for line in feature_lines(records, **kwargs):
        yield json.loads(line)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)


def write_feature_collection(
    path: str | Path,
    lines: Iterable[str],
    *,
    header: dict[str, Any] | None = None,
    compress: bool = False,
) -> Path:
    """Stream a FeatureCollection (one feature per line) to a temporary file, then rename it to `path`.

    `header` holds extra top-level members (slidemill's schema, slide, provenance), written before
    `features`. Memory stays bounded by one batch of features, not by the file."""
    path = Path(path)
    members = {"type": "FeatureCollection", **{k: v for k, v in (header or {}).items() if v is not None}}
    opening = "{" + ", ".join(f"{_dumps(k)}: {_dumps(v)}" for k, v in members.items()) + ', "features": ['
    with atomic_write(path, "wb") as raw:
        binary: Any = raw
        gz = None
        if compress:
            gz = binary = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
        text = io.TextIOWrapper(binary, encoding="ascii", newline="\n", write_through=False)
        text.write(opening)
        batch: list[str] = []
        first = True
        for line in lines:
            batch.append(line)
            if len(batch) >= _BATCH:
                text.write(("\n" if first else ",\n") + ",\n".join(batch))
                first, batch = False, []
        if batch:
            text.write(("\n" if first else ",\n") + ",\n".join(batch))
        text.write("\n]}\n")
        text.flush()
        text.detach()
        if gz is not None:
            gz.close()
    return path
