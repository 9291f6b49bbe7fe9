"""The one object model of annotation files: an `AnnotationShape` per object, a `ReadResult` per file.

An object keeps what its file said about it (QUPATH.md): QuPath's object type, id, name, the
object's own colour, its classification (a derived class `{"names": ["Tumor", "Positive"]}` is the
one class "Tumor: Positive", joined as QuPath's `PathClass.toString` joins it), measurements (any
number, non-finite ones included, so a writer can count what it cannot write), metadata, the lock,
a cell's `nucleusGeometry`, the image plane (`geometry.plane`, z-stacks and time series) and any
other property as it came. Geometries are shapely polygons in level-0 pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

# QuPath's PathClass.derivedClassToString: parent.toString() + ": " + name
DERIVED_CLASS_JOINER = ": "
OBJECT_TYPES = ("annotation", "detection", "cell", "tile")


def join_class_names(names: list[str] | tuple[str, ...]) -> str:
    """QuPath's name of a derived class: `["Tumor", "Positive"]` -> "Tumor: Positive"."""
    return DERIVED_CLASS_JOINER.join(n.strip() for n in names)


@dataclass(slots=True)
class AnnotationShape:
    """One object as its file gave it: a polygonal geometry in level-0 pixels and its QuPath properties.

    `class_name` is the full class name ("Tumor: Positive" for a derived class, whose parts are
    `class_names`); `color` the class colour, `object_color` the object's own (`properties.color`).
    `properties` holds every other property of the feature, untouched (None when there is none)."""

    geometry: Polygon | MultiPolygon
    class_name: str | None = None
    color: tuple[int, int, int] | None = None
    object_type: str = "annotation"
    name: str | None = None
    measurements: dict[str, float] = field(default_factory=dict)
    locked: bool = False
    metadata: dict[str, str] | None = None
    id: str | None = None
    class_names: tuple[str, ...] | None = None
    object_color: tuple[int, int, int] | None = None
    nucleus: Polygon | MultiPolygon | None = None
    plane: dict[str, int] | None = None
    properties: dict[str, Any] | None = None

    @property
    def plane_key(self) -> tuple[int, int, int]:
        """(c, z, t) of the object's plane; QuPath's default plane is (-1, 0, 0)."""
        plane = self.plane or {}
        return int(plane.get("c", -1)), int(plane.get("z", 0)), int(plane.get("t", 0))


@dataclass
class ReadResult:
    """Everything one annotation file holds: its objects, the slide and resolution it names (slidemill
    files only), and what was repaired or skipped (with the reason, and per geometry kind)."""

    shapes: list[AnnotationShape]
    path: Path | None = None
    format: str = "geojson"  # "slidemill", "geojson" (QuPath), "asap" or "imagescope"
    slide: Any = None  # a contracts.SlideRef for slidemill files
    mpp: float | None = None
    repaired: int = 0
    skipped: int = 0
    skipped_reasons: list[str] = field(default_factory=list)
    skipped_kinds: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str, kind: str = "other") -> None:
        self.skipped += 1
        self.skipped_reasons.append(reason)
        self.skipped_kinds[kind] = self.skipped_kinds.get(kind, 0) + 1

    def polygonal(self, geom: BaseGeometry | None, skip_reason: str,
                  kind: str = "other") -> Polygon | MultiPolygon | None:
        """`geom` repaired if needed (and counted), or None after counting it as skipped."""
        polygonal, repaired = make_valid_polygonal(geom)
        if polygonal is None:
            self.skip(skip_reason, kind)
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
