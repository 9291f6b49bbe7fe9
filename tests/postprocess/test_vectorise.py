"""Vectorising: exact pixel-corner placement, holes as holes, one feature per region, chunked == whole."""

import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon, box

from slidemill.postprocess.vectorise import MaskOps, clean_mask, vectorise_mask, vectorise_raster


def pixel_union(mask: np.ndarray):
    """The reference: the union of the labelled pixels' squares (one box per run of a row)."""
    boxes = []
    for y, row in enumerate(np.asarray(mask, bool)):
        edges = np.flatnonzero(np.diff(np.concatenate([[0], row.astype(np.int8), [0]])))
        boxes += [box(x0, y, x1, y + 1) for x0, x1 in zip(edges[::2], edges[1::2], strict=True)]
    return shapely.unary_union(boxes)


def random_labels(rng, h, w, n_classes=3):
    import cv2

    noise = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2.0)
    labels = np.full((h, w), 255, np.uint8)
    labels[noise > 0.49] = 0
    labels[noise > 0.51] = 1
    labels[noise < 0.47] = n_classes - 1
    labels[rng.random((h, w)) < 0.02] = 1  # single-pixel speckle, diagonal contacts
    return labels


def test_square_block_becomes_its_pixel_corners():
    mask = np.zeros((10, 12), np.uint8)
    mask[2:7, 3:9] = 1
    (poly,) = vectorise_mask(mask)
    assert poly.equals(box(3, 2, 9, 7))
    assert sorted(set(poly.exterior.coords)) == [(3, 2), (3, 7), (9, 2), (9, 7)]


def test_hole_is_an_interior_ring_and_island_is_its_own_polygon():
    mask = np.zeros((20, 20), np.uint8)
    mask[2:18, 2:18] = 1
    mask[6:14, 6:14] = 0
    mask[9:11, 9:11] = 1  # island in the hole
    polys = sorted(vectorise_mask(mask), key=lambda p: -p.area)
    assert len(polys) == 2
    outer, island = polys
    assert len(outer.interiors) == 1
    assert Polygon(outer.interiors[0]).equals(box(6, 6, 14, 14))
    assert outer.area == 16 * 16 - 8 * 8
    assert island.equals(box(9, 9, 11, 11))


def test_diagonal_contacts_give_valid_polygons():
    mask = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]], np.uint8)
    polys = vectorise_mask(mask)
    assert all(p.is_valid and isinstance(p, Polygon) for p in polys)
    assert shapely.unary_union(polys).equals(pixel_union(mask))
    assert sum(p.area for p in polys) == 5


def test_random_masks_are_exact_and_valid():
    rng = np.random.default_rng(7)
    for trial in range(60):
        mask = rng.random((13, 17)) < rng.uniform(0.2, 0.8)
        polys = vectorise_mask(mask, offset=(5, 3))
        assert all(p.is_valid and isinstance(p, Polygon) for p in polys), trial
        got = shapely.unary_union(polys) if polys else Polygon()
        want = shapely.affinity.translate(pixel_union(mask), 5, 3) if mask.any() else Polygon()
        assert got.equals(want), trial
        assert sum(p.area for p in polys) == mask.sum()  # no overlaps between the pieces


@pytest.mark.parametrize("ops", [MaskOps(), MaskOps(smooth_sigma_px=1.5), MaskOps(1.0, 2, 3)])
def test_chunked_equals_whole_and_memory_is_bounded_by_the_chunk(ops):
    rng = np.random.default_rng(3)
    labels = random_labels(rng, 230, 310)
    windows = []

    def read(y0, y1, x0, x1):
        windows.append((y1 - y0, x1 - x0))
        return labels[y0:y1, x0:x1]

    chunked, stats = vectorise_raster(read, *labels.shape, [0, 1, 2], ops, chunk_px=64)
    assert stats.chunks == 4 * 5 and stats.pieces_stitched > 0
    assert max(max(w) for w in windows) <= 64 + 2 * ops.halo_px
    whole, _ = vectorise_raster(lambda *a: labels, *labels.shape, [0, 1, 2], ops, chunk_px=4096)
    for value in (0, 1, 2):
        a = sorted(shapely.normalize(p).wkt for p in chunked[value])
        b = sorted(shapely.normalize(p).wkt for p in whole[value])
        assert a == b
        if ops.identity:  # and both are the labelled pixels exactly
            assert shapely.unary_union(whole[value]).equals(pixel_union(labels == value))


def test_clean_mask_opening_closing_smoothing():
    mask = np.zeros((40, 40), np.uint8)
    mask[5:30, 5:30] = 1
    mask[35, 35] = 1  # speck
    mask[15:17, 5:30] = 0  # 2-px gap through the square
    opened = clean_mask(mask, MaskOps(open_radius_px=1))
    assert opened[35, 35] == 0 and opened[10, 10] == 1
    closed = clean_mask(mask, MaskOps(close_radius_px=2))
    assert closed[15:17, 8:27].all()
    smooth = clean_mask(mask, MaskOps(smooth_sigma_px=1.0))
    assert smooth[35, 35] == 0 and smooth[20, 20] == 1
    assert smooth[5, 5] == 0  # the square's corner is rounded off
