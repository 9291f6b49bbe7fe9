"""slidemill tile: slides and QuPath/ASAP/ImageScope annotations into training tiles and class masks.

    from slidemill.tile import iter_tiles
    for tile in iter_tiles("slide.svs", annotations=["slide.geojson"], mpp=0.5):
        tile.image, tile.mask, tile.x, tile.y, tile.class_fractions
"""

from slidemill.shared.tissue import detect_tissue

from .api import TileResult, draw_preview, iter_tiles, plan_tiles, read_tileset, run
from .config import TileConfig
from .plan import Tile, TilePlan
from .render import TileSpec

__all__ = ["Tile", "TileConfig", "TilePlan", "TileResult", "TileSpec", "detect_tissue", "draw_preview",
           "iter_tiles", "plan_tiles", "read_tileset", "run"]
