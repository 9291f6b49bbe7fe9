"""On the bundled real slide (CMU-1-Small-Region.svs, 2220 x 2967 px at 0.499 µm/px), inferred at
2 µm/px (4.008 level-0 px per raster pixel: the raster's last row reaches y = 2969.94) with a fixed
5x5 convolution: every shape lies on the slide, and coverage simplification leaves no area covered
by two classes (the per-polygon simplification covered 80,483 µm² twice at --simplify-um 6)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import shapely
from pipeline_support import BIN, REPO, require_tools
from shapely.geometry import shape

sys.path.insert(0, str(REPO / "tests" / "infer"))
from infer_support import conv_onnx, random_conv, write_model_dir

SLIDE = REPO / "demo" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="module")
def prediction(tmp_path_factory):
    require_tools(["infer", "postprocess"])
    root = tmp_path_factory.mktemp("demo-shapes")
    weight, bias = random_conv(classes=3, k=5, seed=1)
    model = write_model_dir(root / "model", conv_onnx(weight, bias), ["A", "B", "C"], mpp=2.0, tile=128)
    result = subprocess.run([str(BIN / "slidemill-infer"), str(SLIDE), str(model), "--out", str(root / "pred"),
                             "--workers", "1", "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return root


def test_shapes_lie_on_the_slide_and_simplified_classes_never_overlap(prediction):
    out = prediction / "shapes.geojson"
    result = subprocess.run([str(BIN / "slidemill-postprocess"), str(prediction / "pred"), "--out", str(out),
                             "--simplify-um", "6"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    manifest = json.loads((prediction / "pred" / "prediction.json").read_text())
    assert manifest["labels"]["height"] * manifest["mapping"]["scale"] > 2969.9  # the raster overhangs
    geoms = [shape(f["geometry"]) for f in data["features"]]
    assert len(geoms) > 1000
    bounds = shapely.bounds(geoms)
    assert bounds[:, :2].min() >= 0 and bounds[:, 2].max() <= 2220 and bounds[:, 3].max() == 2967
    # no two shapes share interior points (an exact predicate, not a difference of float areas)
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    pairs = left < right
    shared = shapely.relate_pattern([geoms[i] for i in left[pairs]],
                                    [geoms[j] for j in right[pairs]], "T********")
    assert pairs.sum() > 1000 and int(shared.sum()) == 0
