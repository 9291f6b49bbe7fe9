"""Vector clean-up of the vectorised classes, together, so they stay a partition of the raster.

All coordinates are raster pixel corners (see vectorise). The classes' polygons come out of the
raster as a coverage: no two overlap, and they (with what is not predicted or not selected) tile the
raster exactly. Every step here keeps that true:

- `clip`: shapes are cut to the region the prediction covers (the raster's last row and column may
  reach past the slide or the `--region` by under one pixel);
- `fill_holes`: a small hole is filled except where a shape (or a smaller filled hole) of another
  class lies in it;
- `simplify`: coverage simplification (GEOS, Visvalingam-Whyatt) of all classes at once, with what is
  not predicted as one more member, so a border two classes share is simplified once and stays shared
  and the region's outline stays exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import shapely
from shapely.geometry import Polygon, box

from slidemill.shared.shapes import polygon_parts

Rect = tuple[float, float, float, float]  # x0, y0, x1, y1


def _array(polygons: Sequence[Polygon]) -> np.ndarray:
    arr = np.empty(len(polygons), dtype=object)
    arr[:] = list(polygons)
    return arr


def densify(polygons: Sequence[Polygon]) -> list[Polygon]:
    """Every pixel corner along the outline becomes a vertex (outlines run along pixel edges, so a
    border two shapes share then has the same vertices in both: an edge-matched coverage)."""
    if not polygons:
        return []
    return list(shapely.segmentize(_array(polygons), 1.0))


def clip(polygons: Sequence[Polygon], rect: Rect) -> tuple[list[Polygon], int]:
    """The polygons cut to `rect`, and how many reached past it. Polygons inside are returned as they are."""
    if not polygons:
        return [], 0
    arr = _array(polygons)
    bounds = shapely.bounds(arr)
    x0, y0, x1, y1 = rect
    inside = (bounds[:, 0] >= x0) & (bounds[:, 1] >= y0) & (bounds[:, 2] <= x1) & (bounds[:, 3] <= y1)
    out: list[Polygon] = []
    window = box(*rect)
    for poly, ok in zip(arr, inside, strict=True):
        if ok:
            out.append(poly)
        else:
            out.extend(p for p in polygon_parts(shapely.intersection(poly, window)) if p.area > 0)
    return out, int((~inside).sum())


def fill_holes(by_class: Mapping[int, Sequence[Polygon]], max_hole_area: float
               ) -> tuple[dict[int, list[Polygon]], int]:
    """Holes smaller than `max_hole_area` (raster px²) filled, keeping the classes a partition: a
    filled hole becomes its class's area except where a shape of any class lies in it (kept as it is;
    one of its own class merges with the fill) or a smaller filled hole of another class lies in it
    (the innermost fill wins), so no area is ever covered twice. Returns the polygons per class and
    how many holes were filled."""
    out = {k: list(v) for k, v in by_class.items()}
    if max_hole_area <= 0:
        return out, 0
    holes = []  # (area, label, hole)
    for label, polys in out.items():
        for poly in polys:
            for ring in poly.interiors:
                hole = Polygon(ring)
                if hole.area < max_hole_area:
                    holes.append((hole.area, label, hole))
    if not holes:
        return out, 0
    everything = [(k, p) for k, polys in out.items() for p in polys]
    tree = shapely.STRtree(_array([p for _, p in everything]))
    pieces: list[tuple[int, Polygon]] = []
    for _, label, hole in sorted(holes, key=lambda h: (h[0], h[1], h[2].wkb)):  # innermost first
        taken = [everything[int(i)][1] for i in tree.query(hole, predicate="intersects")]
        taken += [p for _, p in pieces if p.intersects(hole)]
        rest = shapely.difference(hole, shapely.union_all(_array(taken))) if taken else hole
        pieces.extend((label, p) for p in polygon_parts(rest) if p.area > 0)
    for label in {label for label, _ in pieces}:
        mine = [p for k, p in pieces if k == label]
        polys = _array(out[label])
        # the class's shapes the fills touch (the holed shape, islands inside) merge with them
        hit = np.zeros(len(polys), bool)
        if len(polys):
            own = shapely.STRtree(polys)
            for piece in mine:
                hit[own.query(piece, predicate="intersects")] = True
        merged = shapely.union_all(_array([*polys[hit], *mine]))
        out[label] = [*polys[~hit], *polygon_parts(merged)]
    return out, len(holes)


def simplify(by_class: Mapping[int, Sequence[Polygon]], tolerance: float, rect: Rect
             ) -> tuple[dict[int, list[Polygon]], int, int]:
    """Coverage simplification of every class at once (`shapely.coverage_simplify`, tolerance in
    raster px, about the square root of the area of the triangles removed). What `rect` holds beyond
    the classes' shapes (not predicted, other classes) takes part as one more member and is then left
    out, and `rect`'s outline is kept exact (`simplify_boundary=False`). The polygons must be an
    edge-matched coverage (`densify`, then `clip`).

    Returns the polygons per class, how many shapes degenerated below one raster pixel of area
    (kept: they are still their share of the partition) and how many vanished entirely (dropped)."""
    out = {k: [] for k in by_class}
    members = [(k, p) for k, polys in by_class.items() for p in polys]
    if tolerance <= 0 or not members:
        return {k: list(v) for k, v in by_class.items()}, 0, 0
    arr = _array([p for _, p in members])
    # the members are an edge-matched coverage, so their union is the fast coverage union
    rest = polygon_parts(shapely.difference(box(*rect), shapely.coverage_union_all(arr)))
    simplified = shapely.coverage_simplify(_array([*arr, *rest]), tolerance, simplify_boundary=False)[:len(arr)]
    areas_before, areas_after = shapely.area(arr), shapely.area(simplified)
    degenerate = vanished = 0
    for (label, _), geom, before, after in zip(members, simplified, areas_before, areas_after, strict=True):
        parts = polygon_parts(geom)
        if not parts:
            vanished += 1
            continue
        if after < min(1.0, before) - 1e-9:
            degenerate += 1
        out[label].extend(parts)
    return out, degenerate, vanished
