"""Several slides, or a folder of them, in one call of tile or infer (slidemill.shared.batch): one output
folder per slide, each the same as a one-slide run; infer loads its model once per call."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from typer.testing import CliRunner

from slidemill.shared.contracts import Report, TileSet, load_contract
from slidemill.shared.testing import example_shapes, write_synthetic_slide
from slidemill.shared.tiletable import tile_records

HERE = Path(__file__).resolve().parent
runner = CliRunner()
TILE = ["--tile-size", "64", "--overlap", "0", "--mpp", "0.5", "--workers", "1"]


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("slides") / "slides"
    folder.mkdir()
    for seed, name in enumerate(("a.tiff", "b.tiff")):
        write_synthetic_slide(folder / name, 256, 192, mpp=0.5, shapes=example_shapes(256, 192, seed=seed), seed=seed)
    (folder / "notes.txt").write_text("not a slide")
    return folder


def _tile_app():
    from slidemill.tile.cli import app

    return app


def test_tile_a_folder_of_slides_gives_one_tileset_per_slide_equal_to_one_slide_runs(slides, tmp_path):
    batch = runner.invoke(_tile_app(), [str(slides), "--out", str(tmp_path / "batch"), *TILE])
    assert batch.exit_code == 0, batch.output
    assert sorted(p.name for p in (tmp_path / "batch").iterdir()) == ["a", "b", "report.json"]
    report = load_contract(tmp_path / "batch" / "report.json", Report)
    assert [(i.id, i.name, i.status) for i in report.items] == [("a", "a.tiff", "ok"), ("b", "b.tiff", "ok")]
    for name in ("a", "b"):
        one = runner.invoke(_tile_app(), [str(slides / f"{name}.tiff"), "--out", str(tmp_path / name), *TILE])
        assert one.exit_code == 0, one.output
        single = load_contract(tmp_path / name / "tileset.json", TileSet)
        batched = load_contract(tmp_path / "batch" / name / "tileset.json", TileSet)
        assert batched.tile_count == single.tile_count
        rows = tile_records(tmp_path / name)
        assert tile_records(tmp_path / "batch" / name) == rows and batched.slide.name == f"{name}.tiff"
        assert report.items[["a", "b"].index(name)].counts == {"tiles_written": len(rows)}
        for record in rows:
            image = record.image
            assert (tmp_path / "batch" / name / image).read_bytes() == (tmp_path / name / image).read_bytes()


def test_tile_slides_that_would_share_a_folder_are_refused_before_any_work(slides, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "a.tiff").write_bytes((slides / "a.tiff").read_bytes())
    out = tmp_path / "out"
    result = runner.invoke(_tile_app(), [str(slides / "a.tiff"), str(other / "a.tiff"), "--out", str(out), *TILE])
    assert result.exit_code == 2, result.output
    assert "would both be written to" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_tile_batch_goes_on_past_a_bad_slide_and_says_which(slides, tmp_path):
    bad = tmp_path / "c.svs"
    bad.write_bytes(b"not a slide at all")
    out = tmp_path / "out"
    result = runner.invoke(_tile_app(), [str(slides / "a.tiff"), str(bad), "--out", str(out), *TILE])
    assert result.exit_code == 2, result.output
    assert "1 of 2 slide(s) failed (c.svs)" in " ".join(result.output.split())
    report = load_contract(out / "report.json", Report)
    assert report.status == "failed" and [(i.id, i.status) for i in report.items] == [("a", "ok"), ("c", "failed")]
    assert (out / "a" / "tileset.json").is_file() and not (out / "c").exists()


def test_infer_several_slides_loads_the_model_once_and_predicts_each_as_alone(slides, tmp_path, monkeypatch):
    sys.path.insert(0, str(HERE / "infer"))
    from infer_support import ORACLE_CLASSES, conv_onnx, oracle_colours, oracle_weights, write_model_dir

    import slidemill.infer.api as api
    from slidemill.infer.cli import app

    w, b = oracle_weights(oracle_colours())
    model = write_model_dir(tmp_path / "model", conv_onnx(w, b), ORACLE_CLASSES, mpp=0.5, tile=128)
    loads = []
    original = api.load_model
    monkeypatch.setattr(api, "load_model", lambda folder: loads.append(folder) or original(folder))
    api._LOADED.clear()
    batch = runner.invoke(app, [str(slides / "a.tiff"), str(slides / "b.tiff"), str(model), "--out",
                                str(tmp_path / "batch"), "--workers", "1"])
    assert batch.exit_code == 0, batch.output
    assert len(loads) == 1, "one model load for the whole call"
    report = load_contract(tmp_path / "batch" / "report.json", Report)
    assert [(i.id, i.status) for i in report.items] == [("a", "ok"), ("b", "ok")]
    for name in ("a", "b"):
        api._LOADED.clear()
        one = runner.invoke(app, [str(slides / f"{name}.tiff"), str(model), "--out", str(tmp_path / name),
                                  "--workers", "1"])
        assert one.exit_code == 0, one.output
        assert np.array_equal(tifffile.imread(tmp_path / "batch" / name / "labels.tiff"),
                              tifffile.imread(tmp_path / name / "labels.tiff"))
    assert len(loads) == 3
