"""The one geometry model: resolution, tile grid and the raster <-> level-0 mapping.

Level-0 pixels (origin top-left, x right, y down) are the only coordinates outside a tool.
A raster or tile at `mpp` microns per pixel maps to level 0 by
`level0 = origin + raster * scale` with `scale = mpp / slide_mpp` (level-0 pixels per raster pixel),
where raster coordinates are pixel *corners* (pixel (i, j) covers [i, i+1) x [j, j+1)).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field


class PixelMapping(BaseModel):
    """Raster pixel corners to level-0 pixel corners: level0 = origin + raster * scale."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    origin_x: float = Field(0.0, description="level-0 x of the raster's top-left corner")
    origin_y: float = Field(0.0, description="level-0 y of the raster's top-left corner")
    scale: float = Field(gt=0, description="level-0 pixels per raster pixel")

    def to_level0(self, x: float, y: float) -> tuple[float, float]:
        return self.origin_x + x * self.scale, self.origin_y + y * self.scale

    def to_raster(self, x: float, y: float) -> tuple[float, float]:
        return (x - self.origin_x) / self.scale, (y - self.origin_y) / self.scale


class Region(BaseModel):
    """A rectangle in level-0 pixels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x: int = Field(ge=0)
    y: int = Field(ge=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)

    @classmethod
    def parse(cls, text: str) -> Region:
        """`X,Y,W,H` as a user types it on the command line."""
        parts = text.replace(" ", "").split(",")
        if len(parts) != 4 or not all(p.lstrip("-").isdigit() for p in parts):
            raise ValueError(f"expected X,Y,W,H as four integers, got {text!r}")
        x, y, w, h = (int(p) for p in parts)
        return cls(x=x, y=y, width=w, height=h)

    def clipped(self, width: int, height: int) -> Region | None:
        x1, y1 = min(self.x + self.width, width), min(self.y + self.height, height)
        if x1 <= self.x or y1 <= self.y:
            return None
        return Region(x=self.x, y=self.y, width=x1 - self.x, height=y1 - self.y)


def magnification_to_mpp(magnification: float) -> float:
    """The usual convention: 10x is 1.0 um/px, 20x is 0.5, 40x is 0.25."""
    return 10.0 / magnification


def grid_starts(extent: int, tile: int, stride: int) -> list[int]:
    """Tile origins along one axis so that tiles cover [0, extent); the last may overhang (padded)."""
    if extent <= 0:
        return []
    count = max(1, math.ceil((extent - tile) / stride) + 1) if extent > tile else 1
    return [i * stride for i in range(count)]
