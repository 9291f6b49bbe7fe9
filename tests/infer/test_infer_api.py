"""infer: seamless blending, alignment with the truth, sharding and regions, through the API."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import tifffile
from infer_support import (
    MEAN,
    ORACLE_CLASSES,
    SLIDE_H,
    SLIDE_MPP,
    SLIDE_W,
    STD,
    conv_onnx,
    oracle_colours,
    oracle_weights,
    random_conv,
    shapes_for_tests,
    write_model_dir,
)
from shapely import affinity

from slidemill.infer import InferConfig, run
from slidemill.shared.contracts import Prediction, Report, load_contract
from slidemill.shared.geometry import Region
from slidemill.shared.slide import open_slide
from slidemill.shared.testing import SyntheticShape, truth_mask

TRUTH_LABELS = {name: i for i, name in enumerate(ORACLE_CLASSES) if i > 0}


def read_rasters(out):
    labels = tifffile.imread(out / "labels.tiff")
    probs = tifffile.imread(out / "probabilities.tiff")
    return labels, probs


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=0, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=0, keepdims=True)


# --- seamless ----------------------------------------------------------------------------------


def test_pure_convolution_is_stitched_seamlessly(slide_path, tmp_path):
    """A translation-equivariant model: the stitched probabilities equal the convolution of the
    whole image (padded like the slide edges) to within uint8 rounding, with no tile grid."""
    weight, bias = random_conv(classes=2, k=5, seed=3)
    model = write_model_dir(tmp_path / "conv", conv_onnx(weight, bias), ["A", "B"], mpp=SLIDE_MPP, tile=96)
    result = run(InferConfig(slide=slide_path, model_dir=model, out=tmp_path / "out", tissue_only=False,
                             overlap=0.5, batch_size=16))
    _, probs = read_rasters(tmp_path / "out")
    assert probs.shape == (SLIDE_H, SLIDE_W, 2)
    assert result.report.counts["predicted_pixels"] == SLIDE_W * SLIDE_H

    pad = 2
    slide = open_slide(slide_path)
    image = slide.read_region(-pad, -pad, SLIDE_W + 2 * pad, SLIDE_H + 2 * pad, 1.0).astype(np.float32)
    x = (image / 255.0 - np.asarray(MEAN, np.float32)) / np.asarray(STD, np.float32)
    logits = np.zeros((2, SLIDE_H, SLIDE_W), np.float32)
    for c in range(2):
        acc = np.full(x.shape[:2], bias[c], np.float32)
        for ch in range(3):
            acc += cv2.filter2D(x[:, :, ch], cv2.CV_32F, weight[c, ch].astype(np.float32),
                                borderType=cv2.BORDER_CONSTANT)
        logits[c] = acc[pad:-pad, pad:-pad]
    expected = np.rint(softmax(logits) * 255).transpose(1, 2, 0)
    diff = np.abs(probs.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= 1, f"largest difference {diff.max()} at {np.unravel_index(diff.argmax(), diff.shape)}"
    assert diff.mean() < 0.02
    # the model alone, on tiles and without blending, does differ near tile edges: the test has teeth
    assert np.abs(np.diff(expected[..., 0], axis=1)).max() > 1


# --- alignment ---------------------------------------------------------------------------------


@pytest.mark.parametrize("model_mpp", [0.5, 1.0, 0.8, 0.35])
def test_labels_match_known_shapes_at_level0(slide_path, tmp_path, model_mpp):
    w, b = oracle_weights(oracle_colours())
    model = write_model_dir(tmp_path / "oracle", conv_onnx(w, b), ORACLE_CLASSES, mpp=model_mpp, tile=128)
    run(InferConfig(slide=slide_path, model_dir=model, out=tmp_path / "out", batch_size=16))
    prediction = load_contract(tmp_path / "out" / "prediction.json", Prediction)
    scale = model_mpp / SLIDE_MPP
    assert prediction.mapping.scale == pytest.approx(scale)
    assert (prediction.mapping.origin_x, prediction.mapping.origin_y) == (0, 0)
    assert prediction.region == Region(x=0, y=0, width=SLIDE_W, height=SLIDE_H)
    labels, probs = read_rasters(tmp_path / "out")
    assert labels.shape == (prediction.labels.height, prediction.labels.width)
    assert labels.shape == (int(np.ceil(SLIDE_H / scale)), int(np.ceil(SLIDE_W / scale)))
    assert probs.shape == labels.shape + (len(ORACLE_CLASSES),)
    truth = truth_mask(shapes_for_tests(), TRUTH_LABELS, SLIDE_W, SLIDE_H, scale, fill=0)
    for name, label in TRUTH_LABELS.items():
        assert iou(labels == label, truth == label) >= 0.98, (name, iou(labels == label, truth == label))
    # sub-pixel check: the tumour's centre of mass, mapped to level 0, is where the shape's is
    tumour = next(s.geometry for s in shapes_for_tests() if s.class_name == "Tumor")
    rows, cols = np.nonzero(labels == TRUTH_LABELS["Tumor"])
    cx, cy = prediction.mapping.to_level0(cols.mean() + 0.5, rows.mean() + 0.5)
    assert abs(cx - tumour.centroid.x) < 0.2 * scale and abs(cy - tumour.centroid.y) < 0.2 * scale, (cx, cy)
    # tissue-only: tissue is always predicted (glass far from it is not: see the glass-only test)
    assert (labels[truth > 0] != 255).all()
    # probabilities are consistent with the labels where predicted
    predicted = labels != 255
    assert (probs.argmax(axis=2)[predicted] == labels[predicted]).mean() > 0.99
    assert (probs[~predicted] == 0).all()


def test_region_is_predicted_at_its_level0_place(slide_path, tmp_path, oracle_dir):
    w, b = oracle_weights(oracle_colours())
    model = write_model_dir(tmp_path / "oracle", conv_onnx(w, b), ORACLE_CLASSES, mpp=1.0, tile=128)
    region = Region(x=301, y=207, width=701, height=500)
    run(InferConfig(slide=slide_path, model_dir=model, out=tmp_path / "out", region=region, tissue_only=False))
    prediction = load_contract(tmp_path / "out" / "prediction.json", Prediction)
    assert prediction.region == region
    assert prediction.mapping.to_level0(0, 0) == (301, 207)
    labels, _ = read_rasters(tmp_path / "out")
    assert labels.shape == (250, 351)
    shapes = [SyntheticShape(s.class_name, affinity.translate(s.geometry, -301, -207), s.color)
              for s in shapes_for_tests()]
    truth = truth_mask(shapes, TRUTH_LABELS, region.width, region.height, 2.0, fill=0)
    for label in (1, 2, 3):
        assert iou(labels == label, truth == label) >= 0.98
    assert iou(labels == 0, truth == 0) >= 0.95


# --- sharding, chunking ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unsharded(slide_path, oracle_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("unsharded") / "out"
    run(InferConfig(slide=slide_path, model_dir=oracle_dir, out=out, batch_size=7))
    return out


@pytest.mark.parametrize("count", [2, 3])
def test_shards_together_equal_one_unsharded_run(slide_path, oracle_dir, unsharded, tmp_path, count):
    full_labels, full_probs = read_rasters(unsharded)
    full = load_contract(unsharded / "prediction.json", Prediction)
    stitched = np.full_like(full_labels, 254)
    stitched_probs = np.zeros_like(full_probs)
    for index in range(count):
        out = tmp_path / f"shard{index}"
        run(InferConfig(slide=slide_path, model_dir=oracle_dir, out=out, batch_size=5,
                        shard={"index": index, "count": count}))
        pred = load_contract(out / "prediction.json", Prediction)
        assert pred.shard.index == index and pred.shard.count == count
        assert pred.mapping.scale == full.mapping.scale and pred.mapping.origin_x == full.mapping.origin_x
        labels, probs = read_rasters(out)
        assert labels.shape == (pred.labels.height, pred.labels.width)
        row0 = round((pred.mapping.origin_y - full.mapping.origin_y) / full.mapping.scale)
        assert row0 % 512 == 0
        # the shard's level-0 region covers its raster
        assert pred.region.y <= pred.mapping.origin_y
        assert pred.region.y + pred.region.height >= min(pred.mapping.to_level0(0, labels.shape[0])[1], SLIDE_H)
        assert (stitched[row0:row0 + labels.shape[0]] == 254).all(), "shards overlap"
        stitched[row0:row0 + labels.shape[0]] = labels
        stitched_probs[row0:row0 + labels.shape[0]] = probs
    assert (stitched != 254).all(), "shards leave a gap"
    np.testing.assert_array_equal(stitched, full_labels)
    np.testing.assert_array_equal(stitched_probs, full_probs)


def test_column_chunks_give_the_same_result(slide_path, oracle_dir, unsharded, tmp_path):
    """A small accumulator budget processes the raster in narrow column chunks: same bytes out."""
    result = run(InferConfig(slide=slide_path, model_dir=oracle_dir, out=tmp_path / "out", memory_budget_mb=8,
                             batch_size=3, workers=1))
    assert result.report.counts["chunk_width_px"] == 512
    labels, probs = read_rasters(tmp_path / "out")
    full_labels, full_probs = read_rasters(unsharded)
    np.testing.assert_array_equal(labels, full_labels)
    np.testing.assert_array_equal(probs, full_probs)


# --- outputs -----------------------------------------------------------------------------------


def test_outputs_are_tiled_pyramids_with_manifest_and_report(unsharded):
    prediction = load_contract(unsharded / "prediction.json", Prediction)
    report = load_contract(unsharded / "report.json", Report)
    assert prediction.labels.file == "labels.tiff" and prediction.probabilities.bands == len(ORACLE_CLASSES)
    assert prediction.tissue_only and prediction.shard is None
    assert [c.name for c in prediction.classes.trainable] == ORACLE_CLASSES
    for name, bands in (("labels.tiff", 1), ("probabilities.tiff", len(ORACLE_CLASSES))):
        with tifffile.TiffFile(unsharded / name) as tif:
            page = tif.pages[0]
            assert (page.tilewidth, page.tilelength) == (512, 512)
            assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
            levels = tif.series[0].levels
            assert levels[0].shape[:2] == (SLIDE_H, SLIDE_W)
            assert [lv.shape[:2] for lv in levels[1:]] == [(576, 768), (288, 384)]
            assert (levels[0].shape[2] if bands > 1 else 1) == bands
            import zarr

            store = page.aszarr()
            z = zarr.open(store, mode="r")
            block = z[512:1024, 0:512]
            store.close()
        full = tifffile.imread(unsharded / name)
        np.testing.assert_array_equal(block, full[512:1024, 0:512])
    # the reduced label level is the nearest-neighbour subsample of level 0
    with tifffile.TiffFile(unsharded / "labels.tiff") as tif:
        level1 = tif.series[0].levels[1].asarray()
    np.testing.assert_array_equal(level1, tifffile.imread(unsharded / "labels.tiff")[::2, ::2])
    preview = cv2.imread(str(unsharded / "preview.png"))
    # two panels (slide, overlay) of at most 1024 px each under a title line, and the legend
    assert preview is not None and preview.shape[0] <= 1024 + 40 and preview.shape[1] > 2 * 100
    assert report.tool == "slidemill-infer" and report.counts["tiles"] > 0
    assert report.environment["provider"] == "CPUExecutionProvider"
    assert report.counts["pixels_Tumor"] > 0
    assert not list(unsharded.glob(".*")), "no spill or temporary file is left behind"
    json.loads((unsharded / "prediction.json").read_text())


def test_flip_tta_agrees_with_plain_for_a_flip_invariant_model(slide_path, oracle_dir, tmp_path):
    region = Region(x=400, y=300, width=600, height=500)
    plain = run(InferConfig(slide=slide_path, model_dir=oracle_dir, out=tmp_path / "plain", region=region))
    tta = run(InferConfig(slide=slide_path, model_dir=oracle_dir, out=tmp_path / "tta", region=region, tta="flips"))
    assert tta.report.counts["model_calls"] == 4 * plain.report.counts["model_calls"]
    a, pa = read_rasters(tmp_path / "plain")
    b, pb = read_rasters(tmp_path / "tta")
    assert (a == b).mean() > 0.999
    assert np.abs(pa.astype(int) - pb.astype(int)).max() <= 1


def test_glass_only_region_predicts_nothing(slide_path, oracle_dir, tmp_path):
    result = run(InferConfig(slide=slide_path, model_dir=oracle_dir, out=tmp_path / "out",
                             region=Region(x=0, y=0, width=100, height=90)))
    labels, probs = read_rasters(tmp_path / "out")
    assert (labels == 255).all() and (probs == 0).all()
    assert result.report.counts["tiles"] == 0
    assert any("no tissue" in w for w in result.report.warnings)


@pytest.mark.parametrize("where", ["model", "writer", "reader"])
def test_a_failure_mid_run_leaves_no_output(slide_path, oracle_dir, tmp_path, monkeypatch, where):
    """An error in the model, the writer thread or a reader thread stops the run cleanly: the error
    reaches the caller and neither the output folder nor its staging folder is left behind."""
    import slidemill.infer.api as api_module
    import slidemill.infer.onnx_session as model_module
    import slidemill.infer.pipeline as pipeline_module

    calls = {"n": 0}

    def fail_later(original):
        def wrapper(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] > 3:
                raise RuntimeError(f"{where} broke")
            return original(*args, **kwargs)
        return wrapper

    if where == "model":
        monkeypatch.setattr(model_module.Session, "run", fail_later(model_module.Session.run))
    elif where == "writer":
        monkeypatch.setattr(pipeline_module, "deflate", fail_later(pipeline_module.deflate))
    else:
        monkeypatch.setattr(api_module, "normalise", fail_later(api_module.normalise))
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match=f"{where} broke"):
        run(InferConfig(slide=slide_path, model_dir=oracle_dir, out=out, batch_size=2))
    assert not out.exists()
    assert not list(tmp_path.glob(".out.*"))


def test_tissue_only_leaves_glass_unpredicted_pixel_by_pixel(slide_path, oracle_dir, tmp_path):
    """Glass inside a predicted tile is 'not predicted' (255), not the nearest class: only a border of
    about one tissue-detector pixel (4 um) around the tissue is predicted beyond it."""
    run(InferConfig(slide=slide_path, model_dir=oracle_dir, out=tmp_path / "out"))
    labels, _ = read_rasters(tmp_path / "out")
    tissue = next(s.geometry for s in shapes_for_tests() if s.class_name == "Tissue")
    x0, y0, x1, y1 = (round(v) for v in tissue.bounds)
    assert (labels[y0 + 2:y1 - 2, x0 + 2:x1 - 2] != 255).all()
    border = round(3 * 4.0 / SLIDE_MPP)  # a dilated detector pixel, with room for its rounding
    far_glass = np.ones(labels.shape, bool)
    far_glass[max(0, y0 - border):y1 + border, max(0, x0 - border):x1 + border] = False
    assert far_glass.any() and (labels[far_glass] == 255).all()
    unsharded_cells = run(InferConfig(slide=slide_path, model_dir=oracle_dir, out=tmp_path / "everywhere",
                                      tissue_only=False))
    everywhere, _ = read_rasters(tmp_path / "everywhere")
    assert unsharded_cells.report.counts["tiles"] > 0 and (everywhere != 255).all()
