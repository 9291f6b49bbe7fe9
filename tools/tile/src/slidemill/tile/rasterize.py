"""The pixel-centre rasterizer lives in `slidemill.shared.rasterize` (train draws masks of random
patches with it too); re-exported here for tile's own modules."""

from slidemill.shared.rasterize import LabelledShape, Rasterizer, draw_order, edges_of, fill_centres, whole_mask

__all__ = ["LabelledShape", "Rasterizer", "draw_order", "edges_of", "fill_centres", "whole_mask"]
