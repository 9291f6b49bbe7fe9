"""Masks are exact: every tile's mask equals the matching window of the whole-slide truth mask, at
several resolutions, with holes, overlaps, Ignore*, background and padding."""

import json
import math

import numpy as np
import pytest
import shapely
from shapely.geometry import Point, box

from slidemill.shared.classes import ClassTable
from slidemill.shared.testing import SyntheticShape, qupath_geojson, truth_mask
from slidemill.tile import iter_tiles, plan_tiles

WIDTH, HEIGHT, MPP = 1200, 1000, 0.25  # as in conftest.py

TILE, OVERLAP = 128, 16


def centre_truth(shapes, labels, scale, fill=255):
    """Reference mask from shapely alone: pixel (u, v) takes the label of the last shape (largest
    first) that contains its centre ((u + 0.5) * scale, (v + 0.5) * scale)."""
    h, w = math.ceil(HEIGHT / scale - 1e-9), math.ceil(WIDTH / scale - 1e-9)
    v, u = np.mgrid[0:h, 0:w]
    cx, cy = (u + 0.5) * scale, (v + 0.5) * scale
    out = np.full((h, w), fill, np.uint8)
    for s in sorted(shapes, key=lambda s: -s.geometry.area):
        if s.class_name in labels:
            out[shapely.contains_xy(s.geometry, cx, cy)] = labels[s.class_name]
    return out


def assemble(tiles):
    """The tiles' masks pasted back on the grid (overlaps must agree)."""
    stride = TILE - OVERLAP
    grid_w = max(t.col * stride + TILE for t in tiles)
    grid_h = max(t.row * stride + TILE for t in tiles)
    out = np.full((grid_h, grid_w), 255, np.uint8)
    for t in tiles:
        y, x = t.row * stride, t.col * stride
        out[y:y + TILE, x:x + TILE] = t.mask
    return out


def tiles_and_labels(synthetic, geojson, mpp, **options):
    options = {"mpp": mpp, "tile_size_px": TILE, "overlap_px": OVERLAP, "all_tiles": True, **options}
    plan = plan_tiles(synthetic, annotations=[geojson], **options)
    tiles = list(iter_tiles(synthetic, plan=plan))
    return plan, tiles, {c.name: c.label for c in plan.classes.classes}


@pytest.mark.parametrize("mpp", [MPP, 0.5, 0.37, 1.0])
def test_tile_masks_equal_the_pixel_centre_truth_at_every_resolution(synthetic, synthetic_geojson, shapes, mpp):
    plan, tiles, labels = tiles_and_labels(synthetic, synthetic_geojson, mpp)
    assert sorted(labels) == sorted(["Immune cells", "Stroma", "Tissue", "Tumor", "Ignore*"])
    assert labels["Ignore*"] == 255 and sorted(v for k, v in labels.items() if k != "Ignore*") == [0, 1, 2, 3]
    assert len(tiles) == plan.grid_cols * plan.grid_rows
    scale = mpp / MPP
    truth = centre_truth(shapes, labels, scale)
    stride = TILE - OVERLAP
    for tile in tiles:  # every tile, overlaps included, is the exact window of the whole-slide truth
        y, x = tile.row * stride, tile.col * stride
        expected = np.full((TILE, TILE), 255, np.uint8)  # padding past the slide is ignore
        part = truth[y:y + TILE, x:x + TILE]
        expected[:part.shape[0], :part.shape[1]] = part
        assert np.array_equal(tile.mask, expected), (tile.row, tile.col, int((tile.mask != expected).sum()))
        assert tile.pad_right_px == TILE - part.shape[1] and tile.pad_bottom_px == TILE - part.shape[0]
        for name, fraction in tile.class_fractions.items():  # the manifest's fractions are the mask's
            assert fraction == pytest.approx((tile.mask == labels[name]).mean(), abs=1e-6)
        assert sum(tile.class_fractions.values()) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize("mpp", [MPP, 0.37])
def test_against_shared_truth_mask_only_outline_pixels_differ(synthetic, synthetic_geojson, shapes, mpp):
    """`slidemill.shared.testing.truth_mask` draws with cv2.fillPoly, which also fills every pixel the
    outline touches (about half a pixel of dilation). Our masks must equal it everywhere except on
    pixels whose centre lies within one pixel of an outline, and those must be few."""
    plan, tiles, labels = tiles_and_labels(synthetic, synthetic_geojson, mpp)
    scale = mpp / MPP
    ref = truth_mask(sorted(shapes, key=lambda s: -s.geometry.area), labels, WIDTH, HEIGHT, scale, fill=255)
    ours = assemble(tiles)[:ref.shape[0], :ref.shape[1]]
    v, u = np.nonzero(ours != ref)
    outlines = shapely.unary_union([s.geometry.boundary for s in shapes])
    distance = shapely.distance(outlines, shapely.points((u + 0.5) * scale, (v + 0.5) * scale))
    assert np.all(distance <= 1.0 * scale + 1e-9)
    perimeter_px = sum(s.geometry.length for s in shapes) / scale
    print(f"mpp {mpp}: {len(u)} pixels differ from cv2's truth_mask, perimeter {perimeter_px:.0f} px")
    assert len(u) < 1.5 * perimeter_px


def test_pixel_centre_rule_on_exact_ties():
    """Centres exactly on an edge: the left/top edge is inside, the right/bottom edge outside, so two
    boxes sharing an edge split the pixels between them and a 50 x 50 box covers 2,500 pixels."""
    from slidemill.shared.rasterize import LabelledShape, whole_mask

    a = LabelledShape(box(10.5, 10.5, 60.5, 60.5), 1, "A")
    b = LabelledShape(box(60.5, 10.5, 110.5, 60.5), 2, "B")
    mask = whole_mask([a, b], 128, 128)
    assert (mask == 1).sum() == 2500 and (mask == 2).sum() == 2500
    assert mask[10, 10] == 1 and mask[10, 60] == 2 and mask[60, 10] == 255 and mask[9, 10] == 255
    # a box from 10.7 to 60.2: centres 11.5 .. 59.5 (cv2.fillPoly would fill 10 .. 60)
    mask = whole_mask([LabelledShape(box(10.7, 10.7, 60.2, 60.2), 1, "A")], 80, 80)
    cols = np.nonzero(mask[30] == 1)[0]
    assert (cols.min(), cols.max()) == (11, 59)


def _write(path, shapes):
    path.write_text(json.dumps(qupath_geojson(shapes)))
    return path


def test_holes_overlaps_ignore_and_background(tmp_path, synthetic):
    """A Stroma region with a hole; a Tumor disc overlapping the Stroma (the smaller shape wins, whatever
    the file order); an Ignore* patch over the tumour; --background for the rest."""
    stroma = SyntheticShape("Stroma", box(100, 100, 700, 700).difference(box(300, 300, 500, 500)), (0, 0, 0))
    tumor = SyntheticShape("Tumor", Point(600, 600).buffer(80), (0, 0, 0))
    ignore = SyntheticShape("Ignore*", box(590, 590, 610, 610), (0, 0, 0))
    ann = _write(tmp_path / "a.geojson", [ignore, tumor, stroma])  # file order: smallest first
    tiles = list(iter_tiles(synthetic, annotations=[ann], mpp=MPP, tile_size_px=256, overlap_px=0,
                            all_tiles=True, background_class="Other"))
    plan = plan_tiles(synthetic, annotations=[ann], mpp=MPP, tile_size_px=256, overlap_px=0, all_tiles=True,
                      background_class="Other")
    labels = {c.name: c.label for c in plan.classes.classes}
    assert labels == {"Other": 0, "Stroma": 1, "Tumor": 2, "Ignore*": 255}
    full = np.full((1024, 1280), 255, np.uint8)
    for t in tiles:
        full[t.row * 256:(t.row + 1) * 256, t.col * 256:(t.col + 1) * 256] = t.mask
    assert full[400, 400] == labels["Other"]  # the hole shows the background
    assert full[200, 200] == labels["Stroma"]
    assert full[620, 620] == labels["Tumor"]  # drawn over the larger stroma
    assert full[600, 600] == 255  # Ignore* over the tumour
    assert full[50, 50] == labels["Other"]
    assert np.all(full[HEIGHT:, :] == 255) and np.all(full[:, WIDTH:] == 255)  # padding stays ignore
    expected = centre_truth([stroma, tumor, ignore], labels, 1.0, fill=labels["Other"])
    assert np.array_equal(full[:HEIGHT, :WIDTH], expected)
    edge = next(t for t in tiles if t.col == 4 and t.row == 3)
    assert (edge.pad_right_px, edge.pad_bottom_px) == (1280 - WIDTH, 1024 - HEIGHT)


def test_sparse_default_and_user_class_table(tmp_path, synthetic):
    tumor = SyntheticShape("Tumor", box(10, 10, 60, 60), (0, 0, 0))
    ann = _write(tmp_path / "a.geojson", [tumor])
    table = ClassTable.from_names(["Stroma", "Tumor"])
    tile = next(iter_tiles(synthetic, annotations=[ann], class_table=table, mpp=MPP, tile_size_px=128,
                           overlap_px=0, all_tiles=True))
    assert tile.mask[30, 30] == 1 and tile.mask[100, 100] == 255
    assert tile.class_fractions == {"Ignore*": pytest.approx(1 - 2500 / 128**2), "Tumor": pytest.approx(2500 / 128**2)}


def test_tiles_inside_a_shape_are_filled_and_holes_still_cut():
    """A tile whose pixel centres all lie inside a shape is filled without the crossing test; a tile
    holding the shape's hole, or touching its edge, is drawn pixel by pixel. Both equal the
    pixel-centre truth."""
    from shapely.geometry import Polygon

    from slidemill.shared.rasterize import LabelledShape, Rasterizer

    ring = Polygon([(0, 0), (400, 0), (400, 400), (0, 400)], [[(200, 200), (230, 200), (230, 230), (200, 230)]])
    raster = Rasterizer([LabelledShape(ring, 1, "A")], fill=0)
    for col, row, scale in [(1, 1, 1.0), (190, 190, 1.0), (0, 0, 1.0), (370, 10, 1.0), (7, 9, 3.3)]:
        mask = raster.mask(col, row, 32, 32, scale)
        cx = (col + np.arange(32) + 0.5) * scale
        cy = (row + np.arange(32) + 0.5) * scale
        truth = shapely.contains_xy(ring, cx[None, :], cy[:, None]).astype(np.uint8)
        assert np.array_equal(mask, truth), (col, row, scale)
