"""The API and the command: a prediction folder in, a valid annotations file and report out."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon, box, shape

from slidemill.postprocess import PostprocessConfig, run
from slidemill.shared.annotations import read_annotation_set
from slidemill.shared.contracts import Report, load_contract
from slidemill.shared.testing import example_shapes, truth_mask, write_prediction

BIN = Path(sys.executable).parent / "slidemill-postprocess"
TWO_CLASSES = ("--classes", "Tumor", "--classes", "Stroma")  # one class name per option
REPO = Path(__file__).resolve().parents[2]
LABELS = {"Tumor": 0, "Stroma": 1, "Immune cells": 2}


def cli(*args):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=120)


def features_of(path, cls=None):
    data = json.loads(Path(path).read_text())
    return [f for f in data["features"] if cls is None or f["properties"]["classification"]["name"] == cls]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A 1600 x 1200 level-0 slide predicted at 2 level-0 px per raster px (800 x 600 raster)."""
    shapes = [s for s in example_shapes(1600, 1200) if s.class_name in LABELS]
    labels = truth_mask(shapes, LABELS, 1600, 1200, scale=2.0, fill=255)
    folder = write_prediction(tmp_path_factory.mktemp("pred") / "prediction", labels, scale=2.0, mpp=0.5)
    return folder, labels


def test_exact_level0_placement_with_holes(tmp_path):
    labels = np.full((40, 50), 255, np.uint8)
    labels[5:25, 10:40] = 0  # Tumor block with a hole
    labels[10:15, 20:30] = 255
    labels[30:35, 2:8] = 1  # Stroma block
    folder = write_prediction(tmp_path / "p", labels, scale=4.0, origin=(1000.0, 2000.0), mpp=1.0)
    result = run(PostprocessConfig(prediction=folder, out=tmp_path / "a.geojson"))
    assert result.features_per_class == {"Tumor": 1, "Stroma": 1, "Immune cells": 0}
    aset = read_annotation_set(result.out)
    stroma, tumor = aset.features  # classes by name
    assert tumor.properties.classification.name == "Tumor"
    geom = shape(tumor.geometry.model_dump())
    # raster corner (i, j) -> level-0 (1000 + 4 i, 2000 + 4 j)
    want = box(1040, 2020, 1160, 2100).difference(box(1080, 2040, 1120, 2060))
    assert isinstance(geom, Polygon) and len(geom.interiors) == 1
    assert geom.equals(want)
    assert shape(stroma.geometry.model_dump()).equals(box(1008, 2120, 1032, 2140))
    # measurements at the level-0 resolution (1.0 / 4 = 0.25 µm per level-0 px)
    assert tumor.properties.measurements["Area µm^2"] == pytest.approx(want.area * 0.25 ** 2)
    assert tumor.properties.measurements["Perimeter µm"] == pytest.approx(want.length * 0.25)
    assert aset.slide.name == "slide.tiff" and aset.mpp == 0.25
    assert aset.provenance.tool == "slidemill-postprocess"
    report = load_contract(result.report, Report)
    assert result.report.name == "a.report.json" and report.counts["features"] == 2


def test_synthetic_slide_regions_match_the_truth(tmp_path, synthetic):
    folder, labels = synthetic
    result = run(PostprocessConfig(prediction=folder, out=tmp_path / "a.geojson", chunk_px=256))
    shapes = {s.class_name: s.geometry for s in example_shapes(1600, 1200)}
    for name, value in LABELS.items():
        feats = features_of(result.out, name)
        got = shapely.unary_union([shape(f["geometry"]) for f in feats])
        # exactly the labelled pixels: area in level-0 px = pixels x 2 x 2
        assert got.area == pytest.approx((labels == value).sum() * 4)
        truth = shapes[name]  # pixel edges at 2 level-0 px: small blobs lose a little
        assert got.intersection(truth).area / got.union(truth).area > (0.97 if name != "Immune cells" else 0.93)
    tumor = [shape(f["geometry"]) for f in features_of(result.out, "Tumor")]
    assert len(tumor) == 1 and len(tumor[0].interiors) == 1  # the tumour disc keeps its hole
    assert len(features_of(result.out, "Immune cells")) == 3


def test_output_is_valid_geojson_for_qupath(tmp_path, synthetic):
    jsonschema = pytest.importorskip("jsonschema")
    folder, _ = synthetic
    result = run(PostprocessConfig(prediction=folder, out=tmp_path / "a.geojson", smooth_um=2, open_um=2,
                                   simplify_um=1, min_area_um2=50))
    data = json.loads(result.out.read_text())
    schema = json.loads((REPO / "schemas" / "annotations.schema.json").read_text())
    jsonschema.validate(data, schema)
    assert data["type"] == "FeatureCollection" and data["features"]
    for f in data["features"]:
        assert f["geometry"]["type"] in {"Polygon", "MultiPolygon"}
        geom = shape(f["geometry"])
        assert geom.is_valid and not geom.is_empty
        rings = f["geometry"]["coordinates"]
        assert all(r[0] == r[-1] and len(r) >= 4 for r in rings)
        assert set(f["properties"]["measurements"]) == {"Area µm^2", "Perimeter µm"}
        assert f["properties"]["classification"]["color"]


def test_cleanup_options(tmp_path):
    labels = np.full((100, 100), 255, np.uint8)
    labels[10:60, 10:60] = 0
    labels[30:33, 30:33] = 255  # 9 px hole
    labels[15:35, 70:90] = 0  # 400 px square
    labels[80, 80] = 0  # speck
    labels[90:92, 5:7] = 1
    folder = write_prediction(tmp_path / "p", labels, mpp=1.0)
    plain = run(PostprocessConfig(prediction=folder, out=tmp_path / "plain.geojson"))
    assert plain.features_per_class == {"Tumor": 3, "Stroma": 1, "Immune cells": 0}
    cleaned = run(PostprocessConfig(prediction=folder, out=tmp_path / "c.geojson", min_area_um2=401,
                                    fill_holes_um2=10, classes=["Tumor"]))
    assert cleaned.features_per_class == {"Tumor": 1}
    (big,) = [shape(f["geometry"]) for f in features_of(cleaned.out)]
    assert big.equals(box(10, 10, 60, 60))  # hole filled, exactly
    report = json.loads(cleaned.report.read_text())
    assert report["counts"]["holes_filled"] == 1 and report["counts"]["shapes_dropped_small"] == 2
    opened = run(PostprocessConfig(prediction=folder, out=tmp_path / "o.geojson", open_px=2, classes=["Tumor"]))
    assert opened.features_per_class == {"Tumor": 2}  # the speck is gone


def test_smoothing_and_simplify_reduce_vertices(tmp_path):
    import cv2

    labels = np.full((300, 300), 255, np.uint8)
    cv2.circle(labels, (150, 150), 100, 0, -1)
    folder = write_prediction(tmp_path / "p", labels, mpp=1.0)
    raw = run(PostprocessConfig(prediction=folder, out=tmp_path / "raw.geojson"))
    simple = run(PostprocessConfig(prediction=folder, out=tmp_path / "s.geojson", smooth_um=2, simplify_um=1.5))
    (g_raw,) = [shape(f["geometry"]) for f in features_of(raw.out)]
    (g_simple,) = [shape(f["geometry"]) for f in features_of(simple.out)]
    assert len(g_simple.exterior.coords) < len(g_raw.exterior.coords) / 3
    assert g_simple.is_valid
    assert g_simple.symmetric_difference(g_raw).area / g_raw.area < 0.02


def test_cli_runs_and_is_deterministic(tmp_path, synthetic):
    folder, _ = synthetic
    out = tmp_path / "a.geojson"
    result = cli(folder, "--out", out, "--smooth-px", "1", *TWO_CLASSES, "--chunk-px", "300")
    assert result.returncode == 0, result.stderr
    assert "a.geojson" in result.stdout
    first = out.read_bytes()
    assert {f["properties"]["classification"]["name"] for f in features_of(out)} == {"Tumor", "Stroma"}
    assert (tmp_path / "a.report.json").exists()
    again = cli(folder, "--out", out, "--smooth-px", "1", "--classes", "Tumor", "--classes", "Stroma",
                "--overwrite")
    assert again.returncode == 0, again.stderr
    assert out.read_bytes() == first  # same inputs, same bytes, whatever the chunk size
    parallel = cli(folder, "--out", out, "--smooth-px", "1", *TWO_CLASSES, "--chunk-px", "200",
                   "--workers", "2", "--overwrite")
    assert parallel.returncode == 0, parallel.stderr
    assert out.read_bytes() == first  # and whatever the number of worker processes


def refused(result, out, *words):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    for word in words:
        assert word in result.stderr
    assert not out.exists() and not out.with_suffix(".report.json").exists()


def test_bad_inputs_exit_2_and_write_nothing(tmp_path):
    labels = np.zeros((64, 64), np.uint8)
    out = tmp_path / "out.geojson"
    folder = write_prediction(tmp_path / "missing-raster", labels)
    (folder / "labels.tiff").unlink()
    refused(cli(folder, "--out", out), out, "labels.tiff", "does not exist")

    folder = write_prediction(tmp_path / "wrong-size", labels)
    manifest = json.loads((folder / "prediction.json").read_text())
    manifest["labels"]["width"] = 100
    (folder / "prediction.json").write_text(json.dumps(manifest))
    refused(cli(folder, "--out", out), out, "labels.tiff", "64 x 64", "100 x 64")

    folder = write_prediction(tmp_path / "not-a-tiff", labels)
    (folder / "labels.tiff").write_bytes(b"not a tiff")
    refused(cli(folder, "--out", out), out, "labels.tiff", "not a readable TIFF")

    folder = write_prediction(tmp_path / "bad-manifest", labels)
    (folder / "prediction.json").write_text('{"schema": "slidemill/prediction", "schema_version": "1.0"}')
    refused(cli(folder, "--out", out), out, "prediction.json")

    refused(cli(tmp_path / "empty-dir-missing", "--out", out), out, "empty-dir-missing")
    good = write_prediction(tmp_path / "good", labels)
    refused(cli(good, "--out", out, "--classes", "Nope"), out, "Nope", "Tumor")
    refused(cli(good, "--out", out, "--open-um", "1", "--open-px", "1"), out, "--open-um")
    out.write_text("keep me")
    result = cli(good, "--out", out)
    assert result.returncode == 2 and "--overwrite" in result.stderr and out.read_text() == "keep me"


def test_reads_a_pyramidal_label_tiff_as_infer_writes_it(tmp_path):
    """Level 0 as the first page, reduced levels as its SubIFDs, 512 px zlib tiles."""
    import tifffile

    labels = np.full((700, 600), 255, np.uint8)
    labels[100:300, 50:500] = 2
    folder = write_prediction(tmp_path / "p", labels, mpp=1.0)
    with tifffile.TiffWriter(folder / "labels.tiff") as tif:
        tif.write(labels, tile=(512, 512), compression="zlib", photometric="minisblack", subifds=1, metadata=None)
        tif.write(labels[::2, ::2], tile=(512, 512), compression="zlib", photometric="minisblack", subfiletype=1,
                  metadata=None)
    result = run(PostprocessConfig(prediction=folder, out=tmp_path / "a.geojson", chunk_px=256))
    assert result.features_per_class == {"Tumor": 0, "Stroma": 0, "Immune cells": 1}
    (geom,) = [shape(f["geometry"]) for f in features_of(result.out)]
    assert geom.equals(box(50, 100, 500, 300))
