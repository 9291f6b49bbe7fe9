"""Shapes that hold together, each with a known answer:

- the shards of a prediction post-processed together equal the unsharded prediction (a 160 µm² shape
  on the cut survives --min-area-um2 100, a hole on the cut is filled, smoothing bites no notch);
- every shape lies on the slide (or inside its --region), and its measurements are of the clipped shape;
- smoothing and simplification keep the classes a partition: no area covered twice, none left uncovered,
  and a shape simplified below one raster pixel is counted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import box, shape

from slidemill.postprocess import PostprocessConfig, run
from slidemill.shared.contracts import Report, SlideRef, load_contract
from slidemill.shared.geometry import Region
from slidemill.shared.testing import write_prediction

BIN = Path(sys.executable).parent / "slidemill-postprocess"
TUMOR, STROMA, IMMUNE = 0, 1, 2  # labels of testing.sample_classes()
NONE = 255


def cli(*args):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=120)


def shapes_of(path) -> list[tuple[str, object, dict]]:
    data = json.loads(Path(path).read_text())
    return [(f["properties"]["classification"]["name"], shape(f["geometry"]), f["properties"]["measurements"])
            for f in data["features"]]


def geometry_of(path) -> list:
    """Features without what names the inputs (ids hash the content, so they compare too)."""
    data = json.loads(Path(path).read_text())
    return [(f["id"], f["geometry"], f["properties"]) for f in data["features"]]


def report_of(out) -> Report:
    return load_contract(Path(out).with_suffix(".report.json"), Report)


# --- shards post-processed together ----------------------------------------------------------------

W, H, CUT = 200, 120, 60  # raster px; the shards are rows [0, 60) and [60, 120)
SCALE, MPP = 2.0, 1.0  # level-0 px per raster px; µm per raster px (a raster pixel is 1 µm²)


def sharded_labels() -> np.ndarray:
    labels = np.full((H, W), NONE, np.uint8)
    labels[CUT - 5:CUT + 5, 10:26] = TUMOR  # 16 x 10 = 160 µm², half on each side of the cut
    labels[CUT - 15:CUT + 15, 40:70] = STROMA  # 30 x 30 with a 4 x 4 hole on the cut
    labels[CUT - 2:CUT + 2, 53:57] = NONE
    labels[20:100, 100:180] = TUMOR  # a large square across the cut: smoothing must not notch it
    return labels


def write_shards(root: Path, labels: np.ndarray, bands, name="slide.tiff"):
    slide = SlideRef(name=name, width=int(W * SCALE), height=int(H * SCALE), mpp=MPP / SCALE)
    folders = []
    for i, (r0, r1) in enumerate(bands):
        region = Region(x=0, y=int(r0 * SCALE), width=int(W * SCALE), height=int((r1 - r0) * SCALE))
        folders.append(write_prediction(root / f"shard-{i}", labels[r0:r1], scale=SCALE, origin=(0, r0 * SCALE),
                                        mpp=MPP, slide=slide, region=region,
                                        shard=None if len(bands) == 1 else (i, len(bands)), tile=64))
    return folders


OPTIONS = {"min_area_um2": 100.0, "fill_holes_um2": 20.0, "smooth_px": 1.5}


def test_shards_postprocessed_together_equal_the_unsharded_prediction(tmp_path):
    labels = sharded_labels()
    [whole] = write_shards(tmp_path / "whole", labels, [(0, H)])
    shards = write_shards(tmp_path / "sharded", labels, [(0, CUT), (CUT, H)])
    want = run(PostprocessConfig(prediction=whole, out=tmp_path / "whole.geojson", **OPTIONS))
    # given in any order
    got = run(PostprocessConfig(prediction=shards[::-1], out=tmp_path / "sharded.geojson", **OPTIONS))
    assert geometry_of(got.out) == geometry_of(want.out)
    # and whatever the chunks and worker processes (chunk edges cross the cut)
    chunked = run(PostprocessConfig(prediction=shards, out=tmp_path / "chunked.geojson", chunk_px=64, workers=2,
                                    **OPTIONS))
    assert geometry_of(chunked.out) == geometry_of(want.out)
    found = shapes_of(got.out)
    # the known answers: the 160 µm² shape on the cut is kept whole, the 16 µm² hole on the cut filled
    small = [m for name, g, m in found if name == "Tumor" and g.bounds[2] <= 26 * SCALE]
    assert len(small) == 1 and small[0]["Area µm^2"] >= 100  # survived --min-area-um2 100 (smoothed corners)
    ring = [g for name, g, _ in found if name == "Stroma"]
    assert len(ring) == 1 and len(ring[0].interiors) == 0
    big = [g for name, g, _ in found if name == "Tumor" and g.bounds[0] >= 100 * SCALE]
    assert len(big) == 1
    # no notch at the cut: the square's left and right sides are straight through the cut rows
    left = big[0].intersection(box(0, (CUT - 10) * SCALE, W * SCALE, (CUT + 10) * SCALE)).bounds
    assert (left[0], left[2]) == (100 * SCALE, 180 * SCALE)


def test_the_known_answers_without_smoothing(tmp_path):
    labels = sharded_labels()
    shards = write_shards(tmp_path / "sharded", labels, [(0, CUT), (CUT, H)])
    got = run(PostprocessConfig(prediction=shards, out=tmp_path / "s.geojson", min_area_um2=100.0,
                                fill_holes_um2=20.0))
    areas = sorted((name, m["Area µm^2"]) for name, _, m in shapes_of(got.out))
    assert areas == [("Stroma", 900.0), ("Tumor", 160.0), ("Tumor", 6400.0)]
    # each shard alone loses the 160 µm² shape (two halves of 80) and keeps the hole (two halves of 8)
    alone = [run(PostprocessConfig(prediction=s, out=tmp_path / f"alone{i}.geojson", min_area_um2=100.0,
                                   fill_holes_um2=20.0)) for i, s in enumerate(shards)]
    pieces = [(name, m["Area µm^2"]) for a in alone for name, _, m in shapes_of(a.out)]
    # (the hole's halves are notches of 2 x 4 in each half ring: 450 - 8)
    assert sorted(pieces) == [("Stroma", 442.0), ("Stroma", 442.0), ("Tumor", 3200.0), ("Tumor", 3200.0)]
    assert any("post-processed alone" in w for w in report_of(alone[0].out).warnings)


def test_shards_that_do_not_make_one_prediction_exit_2(tmp_path):
    labels = sharded_labels()
    three = write_shards(tmp_path / "three", labels, [(0, 40), (40, 80), (80, H)])
    out = tmp_path / "out.geojson"
    result = cli(three[0], three[2], "--out", out)
    assert result.returncode == 2 and "1/3" in result.stderr and "missing" in result.stderr
    result = cli(three[0], three[1], three[1], three[2], "--out", out)
    assert result.returncode == 2 and "again" in result.stderr
    other = write_shards(tmp_path / "other", labels, [(0, 40), (40, 80), (80, H)], name="other.tiff")
    result = cli(three[0], other[1], three[2], "--out", out)
    assert result.returncode == 2 and "not a shard of the same run" in result.stderr
    [whole] = write_shards(tmp_path / "whole", labels, [(0, H)])
    result = cli(whole, three[1], "--out", out)
    assert result.returncode == 2 and "whole prediction" in result.stderr
    assert not out.exists()
    ok = cli(*three, "--out", out, "--min-area-um2", "100")
    assert ok.returncode == 0, ok.stderr


# --- clipped to the slide and the region ----------------------------------------------------------


def test_shapes_are_clipped_to_the_slide_and_measured_after_clipping(tmp_path):
    # a 2050 x 2046 slide at 4 level-0 px per raster px: the raster is 513 x 512, its last column
    # and row reach to 2052 and 2048
    w0, h0, scale, mpp0 = 2050, 2046, 4.0, 0.25
    labels = np.full((512, 513), TUMOR, np.uint8)
    labels[500:, 500:] = STROMA  # the corner: level-0 [2000, 2050] x [2000, 2046] once clipped
    slide = SlideRef(name="s.tiff", width=w0, height=h0, mpp=mpp0)
    folder = write_prediction(tmp_path / "p", labels, scale=scale, mpp=mpp0 * scale, slide=slide,
                              region=Region(x=0, y=0, width=w0, height=h0))
    result = run(PostprocessConfig(prediction=folder, out=tmp_path / "a.geojson"))
    found = shapes_of(result.out)
    assert max(g.bounds[2] for _, g, _ in found) == w0 and max(g.bounds[3] for _, g, _ in found) == h0
    [(_, corner, m)] = [f for f in found if f[0] == "Stroma"]
    assert corner.equals(box(2000, 2000, 2050, 2046))
    assert m["Area µm^2"] == 50 * 46 * mpp0 ** 2 == 143.75
    assert m["Perimeter µm"] == 2 * (50 + 46) * mpp0
    [(_, rest, m)] = [f for f in found if f[0] == "Tumor"]
    assert m["Area µm^2"] == (w0 * h0 - 50 * 46) * mpp0 ** 2
    assert report_of(result.out).counts["shapes_clipped"] == 2


def test_shapes_are_clipped_to_the_region(tmp_path):
    region = Region(x=101, y=203, width=1001, height=802)  # 250.25 x 200.5 raster px at scale 4
    scale, mpp0 = 4.0, 0.25
    labels = np.full((201, 251), TUMOR, np.uint8)
    slide = SlideRef(name="s.tiff", width=2000, height=2000, mpp=mpp0)
    folder = write_prediction(tmp_path / "p", labels, scale=scale, origin=(101, 203), mpp=mpp0 * scale,
                              slide=slide, region=region)
    result = run(PostprocessConfig(prediction=folder, out=tmp_path / "a.geojson"))
    [(_, geom, m)] = shapes_of(result.out)
    assert geom.equals(box(101, 203, 1102, 1005))
    assert m["Area µm^2"] == 1001 * 802 * mpp0 ** 2


# --- the classes stay a partition -----------------------------------------------------------------


def blob_labels(h=160, w=200, seed=0, with_none=False) -> np.ndarray:
    """Every pixel a class (or, with_none, some not predicted): blobs of three classes, and single pixels."""
    import cv2

    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(size=(h, w, 3)).astype(np.float32), (0, 0), 4)
    labels = np.argmax(noise, axis=2).astype(np.uint8)
    ys, xs = rng.integers(0, h, 60), rng.integers(0, w, 60)
    labels[ys, xs] = (labels[ys, xs] + 1) % 3  # one-pixel islands
    if with_none:
        labels[noise[..., 0] > 0.25] = NONE
    return labels


def partition_areas(path, rect) -> tuple[float, float, float]:
    """(area covered by two classes, area of `rect` covered by none, area outside `rect`), level-0 px²."""
    geoms = [g for _, g, _ in shapes_of(path)]
    union = shapely.union_all(geoms)
    return sum(g.area for g in geoms) - union.area, box(*rect).difference(union).area, union.difference(box(*rect)).area


@pytest.mark.parametrize("options", [{"simplify_um": 1.5}, {"smooth_px": 2.0}, {"smooth_px": 1.0, "simplify_um": 3.0},
                                     {"simplify_um": 1.5, "fill_holes_um2": 30.0, "min_area_um2": 2.0},
                                     {"close_px": 2, "simplify_um": 1.5}, {"open_px": 1, "close_px": 1}])
def test_smoothing_and_simplification_keep_a_partition(tmp_path, options):
    labels = blob_labels()
    h, w = labels.shape
    folder = write_prediction(tmp_path / "p", labels, scale=2.0, mpp=1.0)
    result = run(PostprocessConfig(prediction=folder, out=tmp_path / "a.geojson", **options))
    twice, none, outside = partition_areas(result.out, (0, 0, 2 * w, 2 * h))
    if "min_area_um2" in options or "open_px" in options:  # what is dropped or opened away is left uncovered
        assert twice == 0 and outside == 0
    else:
        assert (twice, none, outside) == (0, 0, 0)


def test_simplification_shares_borders_with_what_is_not_predicted(tmp_path):
    labels = blob_labels(with_none=True, seed=1)
    h, w = labels.shape
    folder = write_prediction(tmp_path / "p", labels, scale=2.0, mpp=1.0)
    exact = run(PostprocessConfig(prediction=folder, out=tmp_path / "exact.geojson"))
    simple = run(PostprocessConfig(prediction=folder, out=tmp_path / "s.geojson", simplify_um=2.0))
    twice, _, outside = partition_areas(simple.out, (0, 0, 2 * w, 2 * h))
    assert twice == 0 and outside == 0
    # fewer vertices, and the region's outline where classes reach it is exact
    def vertices(path):
        return sum(len(g.exterior.coords) + sum(len(r.coords) for r in g.interiors) for _, g, _ in shapes_of(path))
    assert vertices(simple.out) < vertices(exact.out) / 2
    edge = box(0, 0, 2 * w, 2 * h).exterior
    on_edge = [shapely.union_all([g for _, g, _ in shapes_of(p)]).boundary.intersection(edge).length
               for p in (exact.out, simple.out)]
    assert on_edge[0] == on_edge[1] > 0


def test_shapes_simplified_below_one_pixel_are_counted(tmp_path):
    labels = np.full((60, 60), TUMOR, np.uint8)
    labels[5:55:6, 5:55:6] = STROMA  # 81 one-pixel squares
    folder = write_prediction(tmp_path / "p", labels, scale=2.0, mpp=1.0)
    result = run(PostprocessConfig(prediction=folder, out=tmp_path / "a.geojson", simplify_um=1.5))
    found = shapes_of(result.out)
    pixel = 2.0 * 2.0  # level-0 px² per raster pixel
    below = sum(1 for name, g, _ in found if g.area < pixel - 1e-9)
    counts = report_of(result.out).counts
    assert below == counts["shapes_below_one_pixel_after_simplify"]
    assert below + counts["shapes_vanished_on_simplify"] > 0
    assert len([f for f in found if f[0] == "Stroma"]) + counts["shapes_vanished_on_simplify"] == 81
    twice, none, outside = partition_areas(result.out, (0, 0, 120, 120))
    assert (twice, none, outside) == (0, 0, 0)


def test_nested_holes_fill_innermost_first_and_never_overlap(tmp_path):
    labels = np.full((50, 50), NONE, np.uint8)
    labels[10:40, 10:40] = TUMOR
    labels[16:34, 16:34] = NONE  # Tumor's 18 x 18 hole ...
    labels[18:32, 18:32] = STROMA  # ... holds a Stroma square with a 6 x 6 hole ...
    labels[22:28, 22:28] = NONE
    labels[24:26, 24:26] = TUMOR  # ... holding a 2 x 2 Tumor island
    folder = write_prediction(tmp_path / "p", labels, scale=2.0, mpp=1.0)  # 1 µm² per raster pixel
    result = run(PostprocessConfig(prediction=folder, out=tmp_path / "a.geojson", fill_holes_um2=400.0))
    found = shapes_of(result.out)
    areas = sorted((name, m["Area µm^2"]) for name, _, m in found)
    # Stroma's hole is filled but for the island; Tumor's hole is filled but for the Stroma square
    assert areas == [("Stroma", 192.0), ("Tumor", 4.0), ("Tumor", 704.0)]
    twice, none, outside = partition_areas(result.out, (0, 0, 100, 100))
    assert twice == 0 and none == 100 * 100 - 4 * 30 * 30 and outside == 0
    assert report_of(result.out).counts["holes_filled"] == 2
