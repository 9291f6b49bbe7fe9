"""The synthetic renderer and truth masks (the oracles of the other tests) follow the pixel-centre
rule they document: a pixel takes a shape's colour or label exactly when its centre lies inside it,
checked against shapely's point-in-polygon on every pixel centre."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from shapely import affinity
from shapely.geometry import MultiPolygon, Point, box

from slidemill.shared.testing import SyntheticShape, centre_mask, example_shapes, render_tile, truth_mask


def random_shapes(seed: int, n: int = 40, size: float = 200.0, offset=(0.0, 0.0)):
    """Squares of random size, position and rotation, discs with holes, and multi-part shapes, at
    random (non-integer) coordinates."""
    rng = np.random.default_rng(seed)
    shapes = []
    for k in range(n):
        cx, cy = rng.uniform(-10, size + 10, 2)
        cx, cy = cx + offset[0], cy + offset[1]
        r = rng.uniform(0.2, 0.15 * size)
        kind = k % 3
        if kind == 0:
            geom = affinity.rotate(box(cx - r, cy - r, cx + r, cy + r), rng.uniform(0, 90))
        elif kind == 1:
            geom = Point(cx, cy).buffer(r, 16).difference(Point(cx + r / 4, cy).buffer(r / 2, 8))
        else:
            geom = MultiPolygon([box(cx, cy, cx + r, cy + r / 2), box(cx + r + 1.3, cy, cx + 2 * r, cy + r)])
        shapes.append(geom)
    return shapes


def centres(x0, y0, w, h, scale):
    xs = x0 + (np.arange(w) + 0.5) * scale
    ys = y0 + (np.arange(h) + 0.5) * scale
    return np.meshgrid(xs, ys)


@pytest.mark.parametrize("scale, x0, y0", [(1.0, 0.0, 0.0), (2.0, 0.0, 0.0), (1.37, 3.25, -7.5), (0.5, 10.0, 20.0)])
def test_centre_mask_is_point_in_polygon_on_pixel_centres(scale, x0, y0):
    w, h = 170, 150
    gx, gy = centres(x0, y0, w, h, scale)
    wrong = total = 0
    for geom in random_shapes(seed=int(scale * 100), size=min(w, h) * scale, offset=(x0, y0)):
        want = shapely.contains_xy(geom, gx, gy)
        got = centre_mask(geom, x0, y0, w, h, scale)
        wrong += int((got != want).sum())
        total += int(want.sum())
    assert total > 10_000  # the shapes do cover pixels
    assert wrong == 0


def test_render_tile_colours_exactly_the_pixels_whose_centre_is_inside():
    # squares at random positions: the renderer the tests build on used to colour 9.4% of such
    # pixels although their centre lay outside the square
    rng = np.random.default_rng(7)
    squares = [box(x, y, x + s, y + s) for x, y, s in zip(rng.uniform(0, 240, 60), rng.uniform(0, 240, 60),
                                                          rng.uniform(0.3, 12, 60), strict=True)]
    x0, y0, w, h, scale = 0.0, 0.0, 256, 256, 1.0
    gx, gy = centres(x0, y0, w, h, scale)
    coloured = outside = 0
    for sq in squares:
        img = render_tile(x0, y0, w, h, scale, [SyntheticShape("A", sq, (0, 0, 0))], noise=0)
        got = (img == 0).all(axis=2)
        want = shapely.contains_xy(sq, gx, gy)
        coloured += int(got.sum())
        outside += int((got & ~want).sum())
        assert (got == want).all()
    assert coloured > 1000
    assert outside == 0


def test_truth_mask_labels_by_pixel_centre_later_shapes_on_top():
    w0, h0, scale = 400, 300, 2.0
    shapes = example_shapes(w0, h0, seed=1)
    labels = {"Tumor": 1, "Stroma": 2, "Immune cells": 3}
    mask = truth_mask(shapes, labels, w0, h0, scale=scale, fill=255)
    assert mask.shape == (150, 200)
    gx, gy = centres(0.0, 0.0, 200, 150, scale)
    want = np.full((150, 200), 255, np.uint8)
    for s in shapes:
        if s.class_name in labels:
            want[shapely.contains_xy(s.geometry, gx, gy)] = labels[s.class_name]
    assert (mask == want).all()
