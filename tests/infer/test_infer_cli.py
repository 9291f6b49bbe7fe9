"""The slidemill-infer command: a full run, determinism, and every bad input exits 2 leaving nothing."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
from infer_support import ORACLE_CLASSES, conv_onnx, oracle_colours, oracle_weights, random_conv, write_model_dir
from typer.testing import CliRunner

from slidemill.infer.cli import app
from slidemill.shared.contracts import ModelCard, Prediction, Report, load_contract, save_contract
from slidemill.shared.testing import write_synthetic_slide

BIN = Path(sys.executable).parent / "slidemill-infer"
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def assert_refused(result, out: Path, *words: str) -> None:
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "Traceback" not in text
    for word in words:
        assert word in text, (word, text)
    assert not out.exists(), "a refused run must not create its output"
    assert not list(out.parent.glob(f".{out.name}.*")), "no staging folder left behind"


def test_cli_run_writes_a_valid_prediction_folder_deterministically(slide_path, oracle_dir, tmp_path):
    out = tmp_path / "pred"
    args = [str(BIN), str(slide_path), str(oracle_dir), "--out", str(out), "--region", "200,150,900,700",
            "--log-format", "json", "--batch-size", "4", "--workers", "2"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().startswith(str(out)) and "CPUExecutionProvider" in first.stdout
    lines = [json.loads(line) for line in first.stderr.splitlines() if line.strip()]
    assert any("CPUExecutionProvider" in line["message"] for line in lines)
    for name in ("prediction.json", "labels.tiff", "probabilities.tiff", "preview.png", "report.json"):
        assert (out / name).is_file(), name
    prediction = load_contract(out / "prediction.json", Prediction)
    report = load_contract(out / "report.json", Report)
    assert report.status == "ok" and report.command[1:3] == [str(slide_path), str(oracle_dir)]
    assert prediction.model.onnx_sha256 == hashlib.sha256((oracle_dir / "model.onnx").read_bytes()).hexdigest()
    digests = {n: hashlib.sha256((out / n).read_bytes()).hexdigest()
               for n in ("prediction.json", "labels.tiff", "probabilities.tiff", "preview.png")}

    again = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "--overwrite" in again.stderr  # refuses to replace without --overwrite
    again = subprocess.run(args + ["--overwrite"], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    for name, digest in digests.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest, f"{name} differs between runs"


def test_checksum_mismatch(slide_path, oracle_dir, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.onnx").write_bytes((oracle_dir / "model.onnx").read_bytes() + b"\0")
    (model / "model-card.json").write_bytes((oracle_dir / "model-card.json").read_bytes())
    assert_refused(invoke(slide_path, model, "--out", tmp_path / "out"), tmp_path / "out", "sha256", "model.onnx")


def test_input_channels_disagree_with_card(slide_path, tmp_path):
    weight, bias = random_conv(classes=2)
    weight4 = np.concatenate([weight, weight[:, :1]], axis=1)
    model = write_model_dir(tmp_path / "model", conv_onnx(weight4, bias, channels_in=4), ["A", "B"], mpp=0.5, tile=64)
    assert_refused(invoke(slide_path, model, "--out", tmp_path / "out"), tmp_path / "out", "4 input channels")


def test_output_classes_disagree_with_card(slide_path, tmp_path):
    weight, bias = random_conv(classes=3)
    model = write_model_dir(tmp_path / "model", conv_onnx(weight, bias), ["A", "B"], mpp=0.5, tile=64)
    assert_refused(invoke(slide_path, model, "--out", tmp_path / "out"), tmp_path / "out", "3 classes", "2 trainable")


def test_card_names_a_missing_input(slide_path, oracle_dir, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.onnx").write_bytes((oracle_dir / "model.onnx").read_bytes())
    card = load_contract(oracle_dir / "model-card.json", ModelCard)
    card = card.model_copy(update={"onnx": card.onnx.model_copy(update={"input_name": "pixels"})})
    save_contract(card, model / "model-card.json")
    assert_refused(invoke(slide_path, model, "--out", tmp_path / "out"), tmp_path / "out", "'pixels'")


def test_model_folder_without_card_or_onnx(slide_path, oracle_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_refused(invoke(slide_path, empty, "--out", tmp_path / "out"), tmp_path / "out", "model-card.json")
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    (lonely / "model-card.json").write_bytes((oracle_dir / "model-card.json").read_bytes())
    assert_refused(invoke(slide_path, lonely, "--out", tmp_path / "out"), tmp_path / "out", "model.onnx")


def test_slide_without_mpp_needs_slide_mpp(oracle_dir, tmp_path):
    slide = write_synthetic_slide(tmp_path / "nompp.tiff", 400, 300, mpp=None)
    out = tmp_path / "out"
    assert_refused(invoke(slide, oracle_dir, "--out", out), out, "microns per pixel", "--slide-mpp")
    result = invoke(slide, oracle_dir, "--out", out, "--slide-mpp", "0.5")
    assert result.exit_code == 0, result.output
    prediction = load_contract(out / "prediction.json", Prediction)
    assert prediction.slide.mpp == 0.5 and prediction.slide.mpp_source == "user"


@pytest.mark.parametrize(("region", "words"), [
    ("5000,5000,100,100", ["outside the slide", "1536 x 1152"]),
    ("10,10,100", ["X,Y,W,H"]),
    ("10,10,0,100", ["X,Y,W,H"]),
    ("-5,10,100,100", ["X,Y,W,H"]),
])
def test_bad_region(slide_path, oracle_dir, tmp_path, region, words):
    out = tmp_path / "out"
    assert_refused(invoke(slide_path, oracle_dir, "--out", out, "--region", region), out, *words)


@pytest.mark.parametrize(("shard", "words"), [
    ("3/3", ["out of range"]),
    ("1/0", ["at least 1"]),
    ("a/2", ["I/N"]),
    ("5/6", ["cannot be split into 6 shards", "at most 3"]),
])
def test_bad_shard(slide_path, oracle_dir, tmp_path, shard, words):
    out = tmp_path / "out"
    assert_refused(invoke(slide_path, oracle_dir, "--out", out, "--shard", shard), out, *words)


@pytest.mark.skipif("CUDAExecutionProvider" in onnxruntime.get_available_providers(), reason="CUDA is present")
def test_cuda_without_cuda_provider(slide_path, oracle_dir, tmp_path):
    out = tmp_path / "out"
    assert_refused(invoke(slide_path, oracle_dir, "--out", out, "--device", "cuda"), out, "onnxruntime-gpu")


def test_existing_output_is_kept_without_overwrite(slide_path, oracle_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = invoke(slide_path, oracle_dir, "--out", out)
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert (out / "keep.txt").read_text() == "mine"


def test_oracle_card_is_what_the_tests_think(oracle_dir):
    card = load_contract(oracle_dir / "model-card.json", ModelCard)
    assert [c.name for c in card.classes.trainable] == ORACLE_CLASSES
    weight, _ = oracle_weights(oracle_colours())
    assert weight.shape == (len(ORACLE_CLASSES), 3, 1, 1)


def test_io_binding_path_gives_the_plain_result(oracle_dir):
    """The I/O binding path (used on CUDA) exercised on the CPU: same outputs as session.run."""
    from slidemill.infer.onnx_session import create_session, load_model

    session = create_session(load_model(oracle_dir), device="cpu", threads=1)
    assert session.provider == "CPUExecutionProvider" and not session.io_binding
    batch = np.random.default_rng(0).normal(0, 1, (3, 3, 128, 128)).astype(np.float32)
    plain = session.run(batch)
    session.io_binding = True
    np.testing.assert_array_equal(session.run(batch), plain)


def test_fp16_on_cpu_warns_and_runs_in_float32(slide_path, oracle_dir, tmp_path):
    from slidemill.infer import InferConfig, run
    from slidemill.shared.geometry import Region

    result = run(InferConfig(slide=slide_path, model_dir=oracle_dir, out=tmp_path / "out", fp16=True, device="cpu",
                             region=Region(x=300, y=300, width=300, height=300)))
    assert any("--fp16 is only used on CUDA" in w for w in result.report.warnings)
    assert result.report.environment["fp16"] == "false"


def test_the_slide_options_of_tile_work_here_too(oracle_dir, tmp_path, handout):
    """A slide finer than 2x the model needs --allow-upsampling; several channels need --channel; the
    pixel meaning read is the one recorded in prediction.json."""
    fine = write_synthetic_slide(tmp_path / "coarse.tiff", 300, 200, mpp=2.0)  # model at 0.5 um/px: 4x finer
    out = tmp_path / "out"
    assert_refused(invoke(fine, oracle_dir, "--out", out), out, "4x finer", "--allow-upsampling")
    assert_refused(invoke(fine, oracle_dir, "--out", out, "--overlap", "0.95"), out, "--overlap")
    cases = handout / "cases"
    if not cases.is_dir():
        pytest.skip("no cases folder in the handout")
    multi = cases / "multichannel" / "multi-channel.ome.tif"
    assert_refused(invoke(multi, oracle_dir, "--out", out, "--slide-mpp", "0.25"), out, "3 channel(s)", "--channel")
    result = invoke(multi, oracle_dir, "--out", out, "--slide-mpp", "0.25", "--channel", "2", "--everywhere")
    assert result.exit_code == 0, result.output
    pixels = load_contract(out / "prediction.json", Prediction).slide.pixels
    assert [(c.name, c.frame) for c in pixels.channels] == [("channel 2", 2)]
    # a model trained on tiles of channel 2 reads channel 2 without being told (its card says so)
    card_path = oracle_dir / "model-card.json"
    card = load_contract(card_path, ModelCard)
    trained = tmp_path / "model-ch2"
    shutil.copytree(oracle_dir, trained)
    save_contract(card.model_copy(update={"input": card.input.model_copy(update={"slide_channels": ["channel 2"]})}),
                  trained / "model-card.json")
    result = invoke(multi, trained, "--out", tmp_path / "o2", "--slide-mpp", "0.25", "--everywhere")
    assert result.exit_code == 0, result.output
    pixels = load_contract(tmp_path / "o2" / "prediction.json", Prediction).slide.pixels
    assert [(c.name, c.frame) for c in pixels.channels] == [("channel 2", 2)]
    folder = cases / "two-dicom-series"
    assert_refused(invoke(folder, oracle_dir, "--out", tmp_path / "d"), tmp_path / "d", "2 DICOM series",
                   "--dicom-series")
