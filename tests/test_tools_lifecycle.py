"""The one run lifecycle (slidemill.shared.lifecycle), the same over all six tools: a run that fails after
its inputs were accepted leaves a failed report and no output; SIGTERM mid-run leaves nothing at all.

Each case builds a tiny valid input, then makes one of the tool's own steps (after the output was claimed)
raise, or send the process SIGTERM, and runs the command in this process."""

from __future__ import annotations

import importlib
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import box
from typer.testing import CliRunner

from slidemill.shared.contracts import Report, load_contract
from slidemill.shared.testing import example_shapes, sample_classes, write_prediction, write_synthetic_slide

HERE = Path(__file__).resolve().parent
runner = CliRunner()


def _postprocess(tmp: Path) -> tuple[list, Path, str]:
    labels = np.full((60, 80), 255, np.uint8)
    labels[10:30, 10:50] = 0
    folder = write_prediction(tmp / "prediction", labels, mpp=1.0)
    return [folder], tmp / "out.geojson", "vectorise_file"


def _annotations(path: Path) -> Path:
    from slidemill.shared.annotations import write_annotations
    from slidemill.shared.contracts import Provenance, SlideRef
    from slidemill.shared.shapes import annotation_objects

    classes = sample_classes()
    write_annotations(path, annotation_objects({"Tumor": [box(0, 0, 100, 100), box(100, 0, 200, 100)]},
                                               classes=classes),
                      classes=classes, mpp=0.5, slide=SlideRef(name="slide.tiff", width=500, height=500, mpp=0.5),
                      provenance=Provenance(tool="test", version="0"))
    return path


def _merge(tmp: Path) -> tuple[list, Path, str]:
    return [_annotations(tmp / "in.geojson")], tmp / "out.geojson", "dissolve"


def _to_qupath(tmp: Path) -> tuple[list, Path, str]:
    return [_annotations(tmp / "in.geojson")], tmp / "out", "feature_lines"


def _tile(tmp: Path) -> tuple[list, Path, str]:
    slide = write_synthetic_slide(tmp / "slide.tiff", 256, 256, mpp=0.5, shapes=example_shapes(256, 256))
    return [slide, "--tile-size", 64, "--overlap", 0, "--mpp", 0.5, "--all-tiles", "--workers", 1], \
        tmp / "out", "draw_preview"


def _infer(tmp: Path) -> tuple[list, Path, str]:
    sys.path.insert(0, str(HERE / "infer"))
    from infer_support import ORACLE_CLASSES, conv_onnx, oracle_colours, oracle_weights, write_model_dir

    slide = write_synthetic_slide(tmp / "slide.tiff", 256, 256, mpp=0.5, shapes=example_shapes(256, 256))
    w, b = oracle_weights(oracle_colours())
    model = write_model_dir(tmp / "model", conv_onnx(w, b), ORACLE_CLASSES, mpp=0.5, tile=128)
    return [slide, model, "--workers", 1], tmp / "out", "predict"


def _train(tmp: Path) -> tuple[list, Path, str]:
    sys.path.insert(0, str(HERE / "train"))
    from train_synthetic import make_tileset

    tileset = make_tileset(tmp / "tileset", width=128, height=128, seed=3)
    encoder = "tu-mobilenetv3_small_100"  # tests/train/conftest.py FAST_ENCODER
    args = [tileset, "--encoder", encoder, "--epochs", 1, "--batch-size", 4, "--threads", 1]
    return args, tmp / "model", "engine.fit"


CASES = {"postprocess": _postprocess, "merge_annotations": _merge, "to_qupath": _to_qupath, "tile": _tile,
         "infer": _infer, "train": _train}
FILE_OUTPUT = {"postprocess", "merge_annotations"}


def _invoke(tool: str, tmp: Path, monkeypatch, action):
    args, out, step = CASES[tool](tmp)
    module = importlib.import_module(f"slidemill.{tool}.api")
    owner, name = module, step
    if "." in step:
        owner_name, name = step.split(".")
        owner = importlib.import_module(f"slidemill.{tool}.{owner_name}")

    def broken(*a, **k):
        action()
        raise AssertionError("not reached")

    monkeypatch.setattr(owner, name, broken)
    app = importlib.import_module(f"slidemill.{tool}.cli").app
    result = runner.invoke(app, [str(a) for a in args] + ["--out", str(out)])
    return result, out


def _left(tmp: Path, out: Path) -> list[str]:
    """Staging folders and half-written files beside the output."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def _disk_on_fire():
    raise OSError("disk on fire")


@pytest.mark.parametrize("tool", sorted(CASES))
def test_failure_after_start_leaves_a_failed_report_and_no_output(tool, tmp_path, monkeypatch):
    result, out = _invoke(tool, tmp_path, monkeypatch, _disk_on_fire)
    assert result.exit_code == 1, result.output
    assert not out.exists(), "a failed run must not leave its output"
    assert _left(tmp_path, out) == []
    report_path = out.with_suffix(".report.json") if tool in FILE_OUTPUT else out.with_name(f"{out.name}.report.json")
    report = load_contract(report_path, Report)
    assert report.status == "failed" and report.tool == f"slidemill-{tool.replace('_', '-')}"
    assert report.error == "unexpected error: OSError: disk on fire"


def _sigterm():
    os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.parametrize("tool", sorted(CASES))
def test_sigterm_mid_run_leaves_nothing(tool, tmp_path, monkeypatch):
    before, handler = {p.name for p in tmp_path.iterdir()}, signal.getsignal(signal.SIGTERM)
    result, out = _invoke(tool, tmp_path, monkeypatch, _sigterm)
    assert result.exit_code == 130, result.output
    created = {p.name for p in tmp_path.iterdir()} - before
    inputs = {"prediction", "in.geojson", "slide.tiff", "model", "tileset"}
    assert created - inputs == set(), "no output, staging or report after SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is handler, "the run's SIGTERM handler lasts as long as the run"


def test_a_later_successful_run_removes_the_failed_report(tmp_path, monkeypatch):
    result, out = _invoke("to_qupath", tmp_path, monkeypatch, _disk_on_fire)
    failed = tmp_path / "out.report.json"
    assert result.exit_code == 1 and failed.is_file()
    monkeypatch.undo()
    again = runner.invoke(importlib.import_module("slidemill.to_qupath.cli").app,
                          [str(tmp_path / "in.geojson"), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert load_contract(out / "report.json", Report).status == "ok" and not failed.exists()
