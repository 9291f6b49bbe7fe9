"""The XML annotation formats (read through `slidemill.shared.annotations.read_annotation_file`).

- ASAP XML (`<ASAP_Annotations>`): each `<Annotation>` of type Polygon, Rectangle or Spline is one
  shape; its class is its `PartOfGroup` (no class when "None"), its colour its own `Color` (or its
  group's).
- Aperio ImageScope XML (`<Annotations>`): each `<Annotation>` (a "layer") is one shape, the union of
  its `<Region>`s minus those marked `NegativeROA="1"` (holes). `LineColor` is a Windows COLORREF,
  i.e. an integer 0x00BBGGRR. A layer's class is its `Name`, else the name of its first attribute
  other than "Description" (ImageScope's attribute columns), else the value of its first non-empty
  attribute, else no class. Self-intersecting regions are repaired (as QuPath does on import).

Coordinates are level-0 pixels in every format. Points, rulers and arrows are skipped and counted.
"""

from __future__ import annotations

import logging
import math
import xml.etree.ElementTree as ET

import shapely
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from .objects import AnnotationShape, ReadResult

log = logging.getLogger(__name__)

def bgr_int_to_rgb(value: int) -> tuple[int, int, int]:
    """A Windows COLORREF (0x00BBGGRR, as ImageScope writes `LineColor`) as (r, g, b)."""
    value = int(value) & 0xFFFFFF
    return value & 0xFF, (value >> 8) & 0xFF, (value >> 16) & 0xFF


def hex_to_rgb(text: str | None) -> tuple[int, int, int] | None:
    """`#RRGGBB` (ASAP) as (r, g, b); None when absent or malformed."""
    if not text:
        return None
    text = text.strip().lstrip("#")
    if len(text) != 6:
        return None
    try:
        return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        out = float(value) if value is not None else None
    except ValueError:
        return None
    return out if out is not None and math.isfinite(out) else None


def _points(element: ET.Element, tag: str, *, ordered: bool = False) -> list[tuple[float, float]]:
    items = list(element.iter(tag))
    if ordered:
        items.sort(key=lambda e: _float(e.get("Order")) or 0.0)
    points = []
    for item in items:
        x, y = _float(item.get("X")), _float(item.get("Y"))
        if x is not None and y is not None:
            points.append((x, y))
    return points


def _ellipse(p0: tuple[float, float], p1: tuple[float, float], segments: int = 64) -> Polygon:
    cx, cy = (p0[0] + p1[0]) / 2, (p0[1] + p1[1]) / 2
    rx, ry = abs(p1[0] - p0[0]) / 2, abs(p1[1] - p0[1]) / 2
    return Polygon([(cx + rx * math.cos(2 * math.pi * i / segments), cy + ry * math.sin(2 * math.pi * i / segments))
                    for i in range(segments)])


def _add(result: ReadResult, geom: BaseGeometry | None, what: str, **props) -> None:
    polygonal = result.polygonal(geom, f"{what}: no area left")
    if polygonal is not None:
        result.shapes.append(AnnotationShape(geometry=polygonal, **props))


# --- ASAP --------------------------------------------------------------------------------------


def shapes_from_asap(root: ET.Element) -> ReadResult:
    result = ReadResult(shapes=[], format="asap")
    group_colors = {g.get("Name"): hex_to_rgb(g.get("Color")) for g in root.iter("Group")}
    for index, ann in enumerate(root.iter("Annotation")):
        kind = (ann.get("Type") or "Polygon").strip().lower()
        name = ann.get("Name") or f"Annotation {index}"
        what = f"annotation {name!r}"
        if kind not in {"polygon", "rectangle", "spline"}:
            result.skip(f"{what}: a {kind}, not an area", "points" if kind in {"dot", "pointset"} else "other")
            continue
        points = _points(ann, "Coordinate", ordered=True)
        if len(points) < 3:
            result.skip(f"{what}: fewer than 3 points")
            continue
        group = ann.get("PartOfGroup")
        class_name = group if group and group.strip() and group.strip().lower() != "none" else None
        color = hex_to_rgb(ann.get("Color")) or group_colors.get(group)
        _add(result, Polygon(points), what, class_name=class_name, color=color, name=ann.get("Name"))
    return result


# --- Aperio ImageScope -------------------------------------------------------------------------


def _imagescope_class(ann: ET.Element) -> str | None:
    name = (ann.get("Name") or "").strip()
    if name:
        return name
    attributes = [a for a in ann.findall("./Attributes/Attribute")]
    for attr in attributes:
        attr_name = (attr.get("Name") or "").strip()
        if attr_name and attr_name.lower() != "description":
            return attr_name
    for attr in attributes:
        value = (attr.get("Value") or "").strip()
        if value:
            return value
    return None


def _imagescope_region(region: ET.Element) -> Polygon | None:
    points = _points(region, "Vertex")
    kind = (region.get("Type") or "0").strip()
    if kind == "2" and len(points) == 2:  # ellipse: two corners of its bounding box
        return _ellipse(points[0], points[1])
    if kind == "1" and len(points) == 2:  # rectangle given by two corners
        (x0, y0), (x1, y1) = points
        return Polygon([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
    if len(points) < 3:  # rulers, arrows, points
        return None
    return Polygon(points)


def shapes_from_imagescope(root: ET.Element) -> ReadResult:
    result = ReadResult(shapes=[], format="imagescope")
    for index, ann in enumerate(root.findall("./Annotation")):
        ann_id = ann.get("Id") or str(index + 1)
        what = f"annotation layer {ann_id}"
        positive, negative = [], []
        for region in ann.iter("Region"):
            poly = _imagescope_region(region)
            if poly is None:
                result.skip(f"{what} region {region.get('Id')}: not an area")
                continue
            fixed = result.polygonal(poly, f"{what} region {region.get('Id')}: no area left")
            if fixed is None:
                continue
            (negative if region.get("NegativeROA", "0").strip() == "1" else positive).append(fixed)
        if not positive:
            if negative:
                result.skip(f"{what}: only negative (hole) regions")
            continue
        geom = shapely.unary_union(positive) if len(positive) > 1 else positive[0]
        if negative:
            geom = geom.difference(shapely.unary_union(negative))
        color = None
        if ann.get("LineColor") not in (None, ""):
            try:
                color = bgr_int_to_rgb(int(ann.get("LineColor")))
            except ValueError:
                color = None
        _add(result, geom, what, class_name=_imagescope_class(ann), color=color, name=ann.get("Name") or None)
    return result
