"""slidemill-postprocess: a prediction's label raster to clean polygons (QuPath-ready GeoJSON)."""

from .api import PostprocessResult, run
from .config import PostprocessConfig
from .vectorise import MaskOps, clean_mask, vectorise_mask, vectorise_raster

__all__ = ["MaskOps", "PostprocessConfig", "PostprocessResult", "clean_mask", "run", "vectorise_mask",
           "vectorise_raster"]
