"""The command: a real run, and every bad input of the issue (exit 2, one paragraph, nothing written)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from shapely.geometry import box

from slidemill.shared.contracts import TileSet, load_contract
from slidemill.shared.testing import SyntheticShape, qupath_geojson, write_synthetic_slide
from slidemill.shared.tiletable import tile_records
from slidemill.tile import TileConfig

CMD = str(Path(sys.executable).parent / "slidemill-tile")


def tile(*args, timeout=120):
    return subprocess.run([CMD, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def assert_user_error(result, out: Path, *words):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr  # one paragraph
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no staging left


def test_cli_run_on_the_real_svs(handout, tmp_path):
    out = tmp_path / "cmu"
    result = tile(handout / "slides" / "CMU-1-Small-Region.svs", "--out", out, "--magnification", 10,
                  "--tile-size", 256, "--overlap", 0, "--log-format", "json")
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    tileset = load_contract(out / "tileset.json", TileSet)
    assert tileset.slide.vendor == "aperio" and tileset.slide.mpp == pytest.approx(0.499)
    assert tileset.params.mpp == 1.0 and tileset.classes is None
    assert 0 < len(tile_records(out)) < 30 and not (out / "masks").exists()
    for line in result.stderr.splitlines():
        json.loads(line)  # every log line is JSON
    # rerun: refused without --overwrite, replaced with it
    again = tile(handout / "slides" / "CMU-1-Small-Region.svs", "--out", out)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    again = tile(handout / "slides" / "CMU-1-Small-Region.svs", "--out", out, "--overwrite", "--mpp", 2,
                 "--tile-size", 128, "--overlap", 0)
    assert again.returncode == 0, again.stderr
    assert load_contract(out / "tileset.json", TileSet).params.mpp == 2.0


def test_cli_with_annotations_and_classes(tmp_path, synthetic, synthetic_geojson):
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"classes": [
        {"name": "Tumor", "label": 0, "color": [200, 0, 0]},
        {"name": "Stroma", "label": 1, "color": [150, 200, 150]},
        {"name": "Immune cells", "label": 2, "color": [160, 90, 160]},
        {"name": "Tissue", "label": 3, "color": [1, 2, 3]},
        {"name": "Ignore*", "label": 255, "color": [180, 180, 180], "ignore": True}]}))
    out = tmp_path / "out"
    result = tile(synthetic, "--out", out, "--annotations", synthetic_geojson, "--classes", classes, "--mpp", 0.5,
                  "--tile-size", 256, "--overlap", 32, "--workers", 2)
    assert result.returncode == 0, result.stderr
    tileset = load_contract(out / "tileset.json", TileSet)
    assert [c.name for c in tileset.classes.classes][:2] == ["Tumor", "Stroma"]
    assert all(r.mask for r in tile_records(out))
    assert any(r.class_fractions.get("Tumor", 0) > 0 for r in tile_records(out))


def test_missing_slide(tmp_path):
    out = tmp_path / "out"
    assert_user_error(tile(tmp_path / "nope.svs", "--out", out), out, "nope.svs", "does not exist")


def test_truncated_slide(tmp_path, synthetic):
    broken = tmp_path / "broken.tiff"
    data = synthetic.read_bytes()
    broken.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert_user_error(tile(broken, "--out", out), out, "broken.tiff", "truncated")


def test_not_a_slide(tmp_path):
    fake = tmp_path / "fake.svs"
    fake.write_bytes(b"this is not a slide" * 100)
    out = tmp_path / "out"
    assert_user_error(tile(fake, "--out", out), out, "fake.svs")


def test_no_mpp_then_slide_mpp(tmp_path):
    slide = write_synthetic_slide(tmp_path / "nompp.tiff", 600, 500, mpp=None, tile=256)
    out = tmp_path / "out"
    assert_user_error(tile(slide, "--out", out), out, "nompp.tiff", "--slide-mpp")
    result = tile(slide, "--out", out, "--slide-mpp", 0.25, "--tile-size", 256, "--overlap", 0, "--all-tiles")
    assert result.returncode == 0, result.stderr
    tileset = load_contract(out / "tileset.json", TileSet)
    assert tileset.slide.mpp == 0.25 and tileset.slide.mpp_source == "user"


def test_annotation_file_of_another_kind(tmp_path, synthetic):
    bad = tmp_path / "notes.txt"
    bad.write_text("tumour in the upper left\n")
    out = tmp_path / "out"
    assert_user_error(tile(synthetic, "--out", out, "--annotations", bad), out, "notes.txt", "GeoJSON")


def test_annotations_outside_the_slide(tmp_path, synthetic):
    far = tmp_path / "other-slide.geojson"
    far.write_text(json.dumps(qupath_geojson([SyntheticShape("Tumor", box(50000, 50000, 51000, 51000), (0, 0, 0))])))
    out = tmp_path / "out"
    assert_user_error(tile(synthetic, "--out", out, "--annotations", far), out, "other-slide.geojson",
                      "outside the slide")


def test_class_missing_from_classes(tmp_path, synthetic, synthetic_geojson):
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"classes": [{"name": "Tumor", "label": 0, "color": [200, 0, 0]}]}))
    out = tmp_path / "out"
    assert_user_error(tile(synthetic, "--out", out, "--annotations", synthetic_geojson, "--classes", classes), out,
                      "classes.json", "'Stroma'", "Add the missing classes")


def test_invalid_class_table_and_options(tmp_path, synthetic, synthetic_geojson):
    classes = tmp_path / "classes.json"
    classes.write_text(json.dumps({"classes": [{"name": "Tumor", "label": 3, "color": [200, 0, 0]}]}))
    out = tmp_path / "out"
    assert_user_error(tile(synthetic, "--out", out, "--annotations", synthetic_geojson, "--classes", classes), out,
                      "classes.json", "0..0")
    assert_user_error(tile(synthetic, "--out", out, "--mpp", 0.5, "--magnification", 20), out,
                      "either --mpp or --magnification")
    assert_user_error(tile(synthetic, "--out", out, "--tile-size", 64, "--overlap", 64), out,
                      "--overlap 64 must be smaller than --tile-size 64")


def test_default_overlap_follows_the_tile_size(tmp_path, synthetic):
    """--tile-size alone works for every allowed size: the default overlap is an eighth of it."""
    out = tmp_path / "out"
    result = tile(synthetic, "--out", out, "--tile-size", 64, "--mpp", 2.0, "--all-tiles")
    assert result.returncode == 0, result.stderr
    params = json.loads((out / "tileset.json").read_text())["params"]
    assert (params["tile_size_px"], params["overlap_px"]) == (64, 8)
    assert TileConfig(slide=synthetic, tile_size_px=16).overlap_px == 2


def test_unclassified_annotations(tmp_path, synthetic, handout):
    raw = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"objectType": "annotation"},
           "geometry": {"type": "Polygon", "coordinates": [[[10, 10], [200, 10], [200, 200], [10, 10]]]}}]}
    ann = tmp_path / "plain.geojson"
    ann.write_text(json.dumps(raw))
    out = tmp_path / "out"
    assert_user_error(tile(synthetic, "--out", out, "--annotations", ann), out, "plain.geojson",
                      "--unclassified-class")
    result = tile(synthetic, "--out", out, "--annotations", ann, "--unclassified-class", "Tumor", "--all-tiles",
                  "--tile-size", 256, "--overlap", 0, "--annotated-only")
    assert result.returncode == 0, result.stderr
    tileset = load_contract(out / "tileset.json", TileSet)
    assert [c.name for c in tileset.classes.classes] == ["Tumor", "Ignore*"]
    assert len(tile_records(out)) == 1


def test_failure_mid_run_leaves_nothing(tmp_path, synthetic, monkeypatch):
    from slidemill.tile import TileConfig, render, run

    calls = {"n": 0}
    original = render.TileRenderer.write

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(render.TileRenderer, "write", flaky)
    out = tmp_path / "out"
    with pytest.raises(OSError):
        run(TileConfig(slide=synthetic, out=out, tile_size_px=128, overlap_px=0, all_tiles=True, workers=1))
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_sigterm_leaves_nothing(tmp_path):
    """A workflow engine stopping the job (SIGTERM) mid-run: no output folder, no staging folder."""
    import signal
    import time

    slide = write_synthetic_slide(tmp_path / "big.tiff", 3000, 3000, mpp=0.25, tile=256)
    out = tmp_path / "out"
    proc = subprocess.Popen([CMD, str(slide), "--out", str(out), "--tile-size", "64", "--overlap", "0",
                             "--all-tiles", "--mpp", "0.25", "--workers", "1"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.startswith(".out.") for p in tmp_path.iterdir()):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["big.tiff"]
    shutil.rmtree(tmp_path, ignore_errors=True)



def test_slides_that_cannot_be_read_as_they_are_exit_2_leaving_nothing(tmp_path, cases, synthetic):
    out = tmp_path / "out"
    assert_user_error(tile(cases / "dpi-resolution" / "crop-300dpi.tif", "--out", out), out, "300 dpi",
                      "--slide-mpp")
    assert_user_error(tile(cases / "multichannel" / "multi-channel.ome.tif", "--out", out, "--slide-mpp", 1), out,
                      "3 channel(s)", "--channel")
    assert_user_error(tile(cases / "two-dicom-series", "--out", out), out, "2 DICOM series", "--dicom-series")
    assert_user_error(tile(synthetic, "--out", out, "--mpp", 0.1), out, "finer", "--allow-upsampling")
    odd = tmp_path / "slide.czi"
    odd.write_bytes(b"ZISRAWFILE" + bytes(100))
    assert_user_error(tile(odd, "--out", out), out, "Zeiss CZI", ".czi", ".svs")
    assert not out.exists()


def test_fluorescence_slide_is_tiled_darkfield(tmp_path, cases):
    out = tmp_path / "out"
    result = tile(cases / "fluorescence" / "DAPI-387.ndpi", "--out", out, "--mpp", 4, "--tile-size", 64)
    assert result.returncode == 0, result.stderr
    tileset = load_contract(out / "tileset.json", TileSet)
    assert tileset.params.tissue_mode == "darkfield" and len(tile_records(out)) > 0
    assert tileset.slide.mpp_source == "vendor" and tileset.slide.pixels.alpha
    assert json.loads((out / "report.json").read_text())["environment"]["tissue_mode"] == "darkfield"
    # forcing brightfield finds nothing, and the empty tileset says why and what to do
    empty = tmp_path / "empty"
    result = tile(cases / "fluorescence" / "DAPI-387.ndpi", "--out", empty, "--mpp", 4, "--tile-size", 64,
                  "--tissue-mode", "brightfield")
    assert result.returncode == 0, result.stderr
    assert tile_records(empty) == []
    warning = " ".join(json.loads((empty / "report.json").read_text())["warnings"])
    assert "tileset is empty" in warning and "--tissue-mode darkfield" in warning


def test_channel_choice_and_window_are_recorded(tmp_path, cases):
    out = tmp_path / "out"
    result = tile(cases / "multichannel" / "multi-channel.ome.tif", "--out", out, "--slide-mpp", 1, "--mpp", 1,
                  "--tile-size", 64, "--all-tiles", "--channel", "0", "--channel", "1", "--channel", "2")
    assert result.returncode == 0, result.stderr
    pixels = load_contract(out / "tileset.json", TileSet).slide.pixels
    assert [c.frame for c in pixels.channels] == [0, 1, 2] and pixels.window_source == "slide-percentiles"
    assert all(c.window is not None for c in pixels.channels)
