"""Polygon operations that more than one tool needs: dissolving same-class shapes, closing gaps,
dropping speckle, filling small holes, measuring overlap, and the objects of an `annotations` file.

All functions work in whatever planar coordinates they are given (raster pixels or level-0 pixels);
distances and areas are in those units. Every function returns valid `Polygon`s only (never a
GeometryCollection, never an empty geometry), so a caller can turn each one into one GeoJSON feature.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from .annotations import DERIVED_CLASS_JOINER, AnnotationShape, make_valid_polygonal
from .classes import ClassTable

# Segments per quarter circle of the discs used to close gaps.
QUAD_SEGS = 8
# Groups at least this large are checked for being a coverage (edge-matched, non-overlapping tiles).
COVERAGE_MIN_GROUP = 64
# Shapes whose neighbours are checked for overlaps before trying the coverage union.
COVERAGE_SAMPLE = 256


def polygon_parts(geom: BaseGeometry | None) -> list[Polygon]:
    """The non-empty Polygons of `geom` (a Polygon, MultiPolygon or collection)."""
    if geom is None or geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    out: list[Polygon] = []
    for part in getattr(geom, "geoms", []):
        out.extend(polygon_parts(part))
    return out


def valid_parts(geom: BaseGeometry | None) -> tuple[list[Polygon], bool]:
    """The polygonal content of `geom` as valid Polygons, and whether it had to be repaired."""
    polygonal, repaired = make_valid_polygonal(geom)
    return polygon_parts(polygonal), repaired


def drop_collinear(geom: Polygon | MultiPolygon) -> Polygon | MultiPolygon:
    """The same shape without vertices that lie on a straight line between their neighbours."""
    return shapely.simplify(geom, 0.0, preserve_topology=True)


def gap_radius(max_gap: float, quad_segs: int = QUAD_SEGS) -> float:
    """Buffer radius that bridges every gap up to `max_gap`: half the gap, enlarged so the polygonal
    disc shapely buffers with contains the true disc (its inscribed radius is r * cos(pi / 4q))."""
    if max_gap <= 0:
        return 0.0
    return max_gap / 2.0 / math.cos(math.pi / (4 * quad_segs))


def close_gaps(geom: Polygon | MultiPolygon, max_gap: float, *, quad_segs: int = QUAD_SEGS) -> list[Polygon]:
    """Morphological closing (buffer out, buffer back in) that bridges gaps up to `max_gap`.
    The original shape is always kept whole: the result is its union with the closing."""
    radius = gap_radius(max_gap, quad_segs)
    if radius <= 0:
        return valid_parts(geom)[0]
    closed = geom.buffer(radius, quad_segs=quad_segs).buffer(-radius, quad_segs=quad_segs)
    merged = shapely.unary_union([geom, closed])
    return [drop_collinear(p) for p in valid_parts(merged)[0]]


def dissolve(polygons: Iterable[BaseGeometry], *, max_gap: float = 0.0,
             quad_segs: int = QUAD_SEGS) -> list[Polygon]:
    """Union shapes that overlap, touch, or lie within `max_gap` of each other; split the result
    into its Polygons (holes kept).

    Without a gap this is one union of everything (GEOS's cascaded union, or its coverage union
    when the shapes are edge-matched tiles). With a gap, shapes are first grouped by proximity (an
    STR-tree query and connected components) and each group is unioned and closed on its own;
    groups lie more than the closing's reach apart, so this equals closing the whole union."""
    arr = _valid_polygon_array(polygons)
    if not len(arr):
        return []
    parts = list(arr)
    radius = gap_radius(max_gap, quad_segs)
    tree = shapely.STRtree(arr)
    if radius <= 0:
        if len(arr) == 1:
            return parts
        left, right = tree.query(arr[:COVERAGE_SAMPLE], predicate="intersects")
        union = union_group(arr, try_coverage=not _sample_overlaps(arr, left, right))
        return sort_polygons(drop_collinear(p) for p in valid_parts(union)[0])
    left, right = tree.query(arr, predicate="dwithin", distance=2 * radius)
    labels = connected_labels(len(arr), left, right)
    coverage_likely = not _sample_overlaps(arr, left, right)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    out: list[Polygon] = []
    for group in np.split(order, bounds):
        union = union_group(arr[group], try_coverage=coverage_likely)
        out.extend(close_gaps(union, max_gap, quad_segs=quad_segs))
    return sort_polygons(out)


def _valid_polygon_array(geoms: Iterable[BaseGeometry | None]) -> np.ndarray:
    """The valid, non-empty Polygons of `geoms` as an object array (checked in one vectorised call;
    only the others go through the repair)."""
    given = list(geoms)
    arr = np.empty(len(given), dtype=object)
    arr[:] = given
    if not len(arr):
        return arr
    ok = (shapely.get_type_id(arr) == 3) & shapely.is_valid(arr) & ~shapely.is_empty(arr)
    if ok.all():
        return arr
    parts: list[Polygon] = list(arr[ok])
    for geom in arr[~ok]:
        parts.extend(valid_parts(geom)[0])
    out = np.empty(len(parts), dtype=object)
    out[:] = parts
    return out


def _sample_overlaps(arr: np.ndarray, left: np.ndarray, right: np.ndarray, sample: int = COVERAGE_SAMPLE) -> bool:
    """Whether some of the first `sample` neighbouring pairs overlap (share area): a cheap sign that
    the shapes are not a coverage, so the full coverage check is not worth its time."""
    pairs = np.flatnonzero(left < right)[:sample]
    if not len(pairs):
        return False
    a, b = arr[left[pairs]], arr[right[pairs]]
    shared = shapely.area(shapely.intersection(a, b))
    return bool(np.any(shared > 1e-9 * np.minimum(shapely.area(a), shapely.area(b))))


def union_group(members: np.ndarray, *, try_coverage: bool = True) -> BaseGeometry:
    """The union of one group of valid polygons. Tiles that share edges without overlapping (a valid
    coverage, such as a grid of patch annotations) take GEOS's coverage union, several times faster
    than the general overlay; anything else (overlapping shards, for example) the general union."""
    if try_coverage and len(members) >= COVERAGE_MIN_GROUP and hasattr(shapely, "coverage_is_valid"):
        if shapely.coverage_is_valid(members):
            return shapely.coverage_union_all(members)
    return shapely.unary_union(members)


def connected_labels(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Connected components of the graph on `n` nodes with edges (left[i], right[i]): one label per node,
    0..k-1 (scipy.sparse.csgraph.connected_components)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    left, right = np.asarray(left, np.intp), np.asarray(right, np.intp)
    graph = coo_matrix((np.ones(len(left), np.int8), (left, right)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def fill_small_holes(polygons: Sequence[Polygon], max_hole_area: float) -> tuple[list[Polygon], int]:
    """Remove interior rings smaller than `max_hole_area`; shapes left inside a filled hole (islands)
    are dropped, being covered now. Returns the polygons and how many holes were filled."""
    if max_hole_area <= 0:
        return list(polygons), 0
    filled_count = 0
    out: list[Polygon] = []
    changed: list[int] = []
    for poly in polygons:
        keep = [r for r in poly.interiors if Polygon(r).area >= max_hole_area]
        if len(keep) != len(poly.interiors):
            filled_count += len(poly.interiors) - len(keep)
            poly = Polygon(poly.exterior, keep)
            changed.append(len(out))
        out.append(poly)
    if changed:
        arr = np.empty(len(out), dtype=object)
        arr[:] = out
        tree = shapely.STRtree(arr)
        covered: set[int] = set()
        for index in changed:
            for other in tree.query(arr[index], predicate="covers"):
                if int(other) != index and int(other) not in changed:
                    covered.add(int(other))
        out = [p for i, p in enumerate(out) if i not in covered]
    return out, filled_count


def drop_small(polygons: Sequence[Polygon], min_area: float) -> tuple[list[Polygon], int]:
    """Polygons with an area of at least `min_area`, and how many were dropped."""
    if min_area <= 0:
        return list(polygons), 0
    kept = [p for p in polygons if p.area >= min_area]
    return kept, len(polygons) - len(kept)


def simplify_polygons(polygons: Sequence[Polygon], tolerance: float) -> list[Polygon]:
    """Douglas-Peucker simplification that keeps each polygon valid (holes stay holes)."""
    if tolerance <= 0:
        return list(polygons)
    out: list[Polygon] = []
    for poly in polygons:
        out.extend(valid_parts(shapely.simplify(poly, tolerance, preserve_topology=True))[0])
    return out


def sort_polygons(polygons: Iterable[Polygon]) -> list[Polygon]:
    """A deterministic order: top to bottom, left to right, larger first."""
    return sorted(polygons, key=lambda p: (round(p.bounds[1], 6), round(p.bounds[0], 6), -round(p.area, 6),
                                           p.wkb))


def union_area_iou(a: Iterable[BaseGeometry], b: Iterable[BaseGeometry]) -> float:
    """Intersection over union of two sets of shapes (1.0 when both are empty)."""
    ua = shapely.unary_union(list(a))
    ub = shapely.unary_union(list(b))
    union = shapely.union(ua, ub).area
    if union == 0:
        return 1.0
    return shapely.intersection(ua, ub).area / union


def annotation_objects(
    polygons_by_class: Mapping[str | None, Sequence[Polygon]],
    *,
    classes: ClassTable | None = None,
    colors: Mapping[str | None, tuple[int, int, int] | None] | None = None,
) -> list[AnnotationShape]:
    """One annotation object per polygon, in a deterministic order (classes by name, unclassified last,
    then shapes top to bottom, left to right), ready for `annotations.write_annotations`. A class's
    colour is the class table's, else `colors`'; a derived class ("Tumor: Positive") keeps its parts."""
    out: list[AnnotationShape] = []
    for class_name in sorted(polygons_by_class, key=lambda n: (n is None, n or "")):
        entry = classes.by_name(class_name) if classes is not None and class_name else None
        color = tuple(entry.color) if entry else (colors or {}).get(class_name)
        parts = tuple(class_name.split(DERIVED_CLASS_JOINER)) if class_name and DERIVED_CLASS_JOINER in class_name \
            else None
        for poly in sort_polygons(polygons_by_class[class_name]):
            out.append(AnnotationShape(geometry=shapely.normalize(poly), class_name=class_name, color=color,
                                       class_names=parts))
    return out


def report_path_for(out: str | Path) -> Path:
    """`annotations.geojson` -> `annotations.report.json` (the suffix replaced)."""
    path = Path(out)
    return path.with_suffix(".report.json") if path.suffix else path.with_name(path.name + ".report.json")
