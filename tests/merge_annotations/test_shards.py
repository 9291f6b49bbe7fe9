"""End to end over the tool boundary: postprocess the shards (or tiles) of a prediction, merge them,
and get what postprocessing the whole prediction gives."""

import json
from pathlib import Path

import pytest
from shapely.geometry import shape

from slidemill.merge_annotations import MergeConfig
from slidemill.merge_annotations import run as merge
from slidemill.postprocess import PostprocessConfig
from slidemill.postprocess import run as postprocess
from slidemill.shared.geometry import Region
from slidemill.shared.shapes import union_area_iou
from slidemill.shared.testing import example_shapes, truth_mask, write_prediction

LABELS = {"Tumor": 0, "Stroma": 1, "Immune cells": 2}
W0, H0, SCALE = 1600, 1200, 2.0  # level-0 slide, raster at 2 level-0 px per pixel (800 x 600)


@pytest.fixture(scope="module")
def labels():
    shapes = [s for s in example_shapes(W0, H0, seed=3) if s.class_name in LABELS]
    return truth_mask(shapes, LABELS, W0, H0, scale=SCALE, fill=255)


def predict(folder, labels, rows, cols, shard=None):
    """The prediction of raster rows/cols (a shard or tile), placed where it lies on the slide."""
    (r0, r1), (c0, c1) = rows, cols
    region = Region(x=int(c0 * SCALE), y=int(r0 * SCALE), width=int((c1 - c0) * SCALE),
                    height=int((r1 - r0) * SCALE))
    from slidemill.shared.contracts import SlideRef

    slide = SlideRef(name="slide.tiff", width=W0, height=H0, mpp=0.25)
    return write_prediction(folder, labels[r0:r1, c0:c1], scale=SCALE, origin=(c0 * SCALE, r0 * SCALE), mpp=0.5,
                            slide=slide, region=region, shard=shard, tile=256)


def features(path):
    return json.loads(Path(path).read_text())["features"]


def by_class(path):
    out = {name: [] for name in LABELS}
    for f in features(path):
        out[f["properties"]["classification"]["name"]].append(shape(f["geometry"]))
    return out


def test_two_adjacent_tiles_merge_into_exactly_the_whole_prediction(tmp_path, labels):
    h, w = labels.shape
    whole = postprocess(PostprocessConfig(prediction=predict(tmp_path / "whole", labels, (0, h), (0, w)),
                                          out=tmp_path / "whole.geojson"))
    parts = [postprocess(PostprocessConfig(prediction=predict(tmp_path / f"t{i}", labels, (0, h), cols),
                                           out=tmp_path / f"t{i}.geojson"))
             for i, cols in enumerate([(0, 372), (372, w)])]
    merged = merge(MergeConfig(inputs=[p.out for p in parts], out=tmp_path / "merged.geojson"))
    # same shapes, same coordinates, same ids: the merge is exact
    assert features(merged.out) == features(whole.out)
    assert merged.features_per_class == whole.features_per_class


@pytest.mark.parametrize("options", [{}, {"smooth_px": 1.5, "open_px": 1, "close_px": 1}])
def test_merged_shards_equal_the_unsharded_output(tmp_path, labels, options):
    h, w = labels.shape
    overlap = 24
    bands = [(0, 200 + overlap), (200 - overlap, 400 + overlap), (400 - overlap, h)]
    whole = postprocess(PostprocessConfig(prediction=predict(tmp_path / "whole", labels, (0, h), (0, w)),
                                          out=tmp_path / "whole.geojson", **options))
    shards = [postprocess(PostprocessConfig(
        prediction=predict(tmp_path / f"s{i}", labels, rows, (0, w), shard=(i, 3)),
        out=tmp_path / f"s{i}.geojson", **options)) for i, rows in enumerate(bands)]
    merged = merge(MergeConfig(inputs=[s.out for s in shards], out=tmp_path / "merged.geojson"))
    want, got = by_class(whole.out), by_class(merged.out)
    for name in LABELS:
        assert union_area_iou(got[name], want[name]) >= 0.999, name
    assert merged.features_per_class == whole.features_per_class
    if not options:
        assert features(merged.out) == features(whole.out)
