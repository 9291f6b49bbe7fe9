"""The one annotation writer: QuPath-flavoured GeoJSON, streamed feature by feature.

Every feature is what QuPath 0.4-0.6 imports without error (QUPATH.md): a UUID (the object's own
when it came with one, else a deterministic one from its content), an `objectType`, a
classification `{name, color: [r, g, b]}` (`{names: [...], color}` for a derived class, as QuPath
writes it), a valid Polygon or MultiPolygon with closed rings on a 0.01 px grid (so QuPath 0.6's
own snapping changes nothing), its plane, a cell's `nucleusGeometry`, the object's name, colour,
lock, metadata and other properties, and finite numeric measurements only (non-finite ones are
counted in `WriteStats`). The file is also a valid slidemill `annotations` file (QuPath ignores
the extra top-level members), streamed to a temporary file and renamed into place; gzip output is
byte-stable (no name, no time in the header). Output is pure ASCII, so any platform charset reads it.
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
from shapely.geometry import MultiPolygon, Polygon, mapping

from ..classes import ClassTable, default_color
from ..files import atomic_write
from .objects import OBJECT_TYPES, AnnotationShape, make_valid_polygonal

log = logging.getLogger(__name__)

# A fixed namespace makes feature ids a function of their content, so reruns give identical files.
FEATURE_NAMESPACE = uuid.UUID("6f1c1d0e-5a8e-4f7b-9d1e-51d3e1111a11")
COORDINATE_DECIMALS = 2
_GRID = 10.0 ** -COORDINATE_DECIMALS
_BATCH = 4096
_POLYGONAL_IDS = [3, 6]  # shapely type ids of Polygon and MultiPolygon
_EXPONENT = re.compile(r"\d[eE]|nan|inf", re.IGNORECASE)
_INTEGRAL = re.compile(r"(-?\d+)\.0(?=[,\]])")


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
    """The deterministic id of a feature without one: a UUID5 of its written geometry, class and type."""
    key = json.dumps([geometry, class_name, object_type], separators=(",", ":"), sort_keys=True)
    return str(uuid.uuid5(FEATURE_NAMESPACE, key))


def measure(geom: Polygon | MultiPolygon, mpp: float | None) -> dict[str, float]:
    """Area and perimeter in µm² and µm when the resolution is known, else in pixels."""
    if mpp:
        return {"Area µm^2": round(geom.area * mpp * mpp, 3), "Perimeter µm": round(geom.length * mpp, 3)}
    return {"Area px^2": round(geom.area, 3), "Perimeter px": round(geom.length, 3)}


@dataclass
class WriteStats:
    """What a write did: features written, dropped (vanished on the 0.01 px grid), re-snapped the slow
    way, ids renamed (duplicates), per class, and what could not be kept (non-finite measurements,
    nucleus outlines that vanished, object types QuPath does not import)."""

    written: int = 0
    dropped: int = 0
    resnapped: int = 0
    renamed_ids: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    measurements_dropped: int = 0
    nuclei_written: int = 0
    nuclei_dropped: int = 0
    types_changed: int = 0

    def not_kept(self) -> list[str]:
        """One sentence per kind of thing that was not kept as it came (for the log and the report)."""
        out = []
        if self.measurements_dropped:
            out.append(f"{self.measurements_dropped} non-finite measurement value(s) (NaN, infinity) were left "
                       "out: QuPath's importer takes numbers only")
        if self.nuclei_dropped:
            out.append(f"{self.nuclei_dropped} nucleus outline(s) vanished on the 0.01 px grid and were left out")
        if self.types_changed:
            out.append(f"{self.types_changed} object(s) of a type QuPath does not import were written as "
                       "annotations")
        return out


def not_kept(reads: Iterable[Any], stats: WriteStats | None = None) -> tuple[dict[str, int], list[str]]:
    """Report counts and log sentences for everything the inputs held that the output does not keep:
    points, lines and other non-areas skipped on reading (`ReadResult.skipped_kinds`), and what the
    writer left out (`WriteStats.not_kept`). Every count is given, zeros included."""
    kinds: dict[str, int] = {"points": 0, "lines": 0, "other": 0}
    for read in reads:
        for kind, n in read.skipped_kinds.items():
            kinds[kind] = kinds.get(kind, 0) + n
    counts = {f"objects_not_kept.{kind}": n for kind, n in kinds.items()}
    messages = []
    if kinds["points"] or kinds["lines"]:
        messages.append(f"{kinds['points']} point and {kinds['lines']} line object(s) were left out: slidemill "
                        "keeps areas (polygons) only")
    if stats is not None:
        counts.update({"measurements_not_kept": stats.measurements_dropped, "nuclei_kept": stats.nuclei_written,
                       "nuclei_not_kept": stats.nuclei_dropped, "object_types_changed": stats.types_changed})
        messages.extend(stats.not_kept())
    return counts, messages


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


def _text(value: Any) -> str | None:
    """A name as QuPath wants it: a non-empty string, or nothing."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return value if isinstance(value, str) else str(value)


def _valid_uuid(value: str | None) -> str | None:
    if not value:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def _geometry_text(geom: Polygon | MultiPolygon, coords: str, plane: dict[str, int] | None) -> str:
    extra = f',"plane":{_dumps(plane)}' if plane else ""
    return f'{{"type":"{geom.geom_type}","coordinates":{coords}{extra}}}'


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
    The id is the record's own UUID when it has one, else `feature_id` of the written geometry, class
    and type; duplicates are renamed (and counted)."""
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
            if kind not in OBJECT_TYPES:
                kind = "annotation"
                stats.types_changed += 1
            props: dict[str, Any] = {"objectType": kind}
            name = _text(record.name)
            if name:
                props["name"] = name
            if record.object_color is not None:
                props["color"] = [int(c) for c in record.object_color]
            class_name = _text(record.class_name)
            if class_name:
                rgb = colors.get(class_name) or default_color(class_name)
                if record.class_names and len(record.class_names) > 1:
                    props["classification"] = {"names": list(record.class_names), "color": [int(c) for c in rgb]}
                else:
                    props["classification"] = {"name": class_name, "color": [int(c) for c in rgb]}
                stats.per_class[class_name] = stats.per_class.get(class_name, 0) + 1
            if kind == "annotation" and (lock or record.locked):
                props["isLocked"] = True
            values = measure(geom, mpp)
            for key, value in record.measurements.items():
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    values[key] = float(value)
                else:
                    stats.measurements_dropped += 1
            props["measurements"] = values
            if record.metadata:
                props["metadata"] = {str(k): str(v) for k, v in record.metadata.items() if v is not None}
            for key, value in (record.properties or {}).items():
                if value is not None and key not in props:
                    props[key] = value
            geometry = _geometry_text(geom, coords, record.plane)
            key = (f'[{{"coordinates":{coords},"type":"{geom.geom_type}"}},'
                   f"{_dumps(class_name)},{_dumps(kind)}]")
            own = _valid_uuid(record.id)
            fid, renamed = _unique_id(own or str(uuid.uuid5(FEATURE_NAMESPACE, key)), seen)
            stats.renamed_ids += int(renamed)
            stats.written += 1
            nucleus = ""
            if record.nucleus is not None and kind == "cell":
                nucleus_geom, _ = snap(record.nucleus)
                if nucleus_geom is None:
                    stats.nuclei_dropped += 1
                else:
                    text = _coordinates_text(nucleus_geom, shapely.to_geojson(nucleus_geom))
                    nucleus = f',"nucleusGeometry":{_geometry_text(nucleus_geom, text, record.plane)}'
                    stats.nuclei_written += 1
            elif record.nucleus is not None:
                stats.nuclei_dropped += 1
            yield (f'{{"type":"Feature","id":"{fid}","geometry":{geometry}{nucleus},'
                   f'"properties":{_dumps(props)}}}')


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


def annotations_header(*, slide: Any = None, mpp: float | None = None, provenance: Any = None) -> dict[str, Any]:
    """The top-level members that make a FeatureCollection a slidemill `annotations` file."""
    from ..contracts import AnnotationSet

    def dump(model: Any) -> Any:
        return model.model_dump(exclude_none=True) if hasattr(model, "model_dump") else model

    return {"schema": f"slidemill/{AnnotationSet.KIND}", "schema_version": AnnotationSet.VERSION,
            "slide": dump(slide) if slide is not None else None, "mpp": mpp,
            "provenance": dump(provenance) if provenance is not None else None}


def write_annotations(
    path: str | Path,
    records: Iterable[AnnotationShape],
    *,
    colors: dict[str, tuple[int, int, int]] | None = None,
    classes: ClassTable | None = None,
    slide: Any = None,
    mpp: float | None = None,
    provenance: Any = None,
    object_type: str | None = None,
    lock: bool = False,
    compress: bool = False,
    stats: WriteStats | None = None,
) -> WriteStats:
    """Stream `records` into a slidemill `annotations` file that QuPath imports as it is (see the module
    docs). Class colours: `colors`, else the class table's, else the records' own (`class_colors`)."""
    stats = stats if stats is not None else WriteStats()
    records = list(records) if colors is None and classes is None else records
    if colors is None:
        colors = ({c.name: tuple(c.color) for c in classes.classes} if classes is not None
                  else class_colors(records))
    lines = feature_lines(records, colors=colors, mpp=mpp, object_type=object_type, lock=lock, stats=stats)
    write_feature_collection(path, lines, header=annotations_header(slide=slide, mpp=mpp, provenance=provenance),
                             compress=compress)
    return stats


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
):
    """One contract `Feature` exactly as the writer writes it (for notebooks and tests), or None if
    nothing valid is left after snapping to the 0.01 px grid."""
    from ..contracts import Feature

    entry = classes.by_name(class_name) if classes is not None and class_name else None
    rgb = tuple(entry.color) if entry else (color or (default_color(class_name) if class_name else None))
    record = AnnotationShape(geometry=geom, class_name=class_name, color=rgb, object_type=object_type,
                             name=name, measurements=dict(measurements or {}), locked=locked)
    lines = list(feature_lines([record], colors={class_name: rgb} if class_name else {}, mpp=mpp))
    return Feature.model_validate(json.loads(lines[0])) if lines else None
