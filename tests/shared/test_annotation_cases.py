"""The QuPath cases of ../shared/data/cases (derived classes, class names, cells with nuclei), each
through the real command lines of every tool that takes annotations or class names, outputs read
back with the one reader the tools use (`read_annotation_file`)."""

import json
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import box, shape
from typer.testing import CliRunner

from slidemill.merge_annotations.cli import app as merge_app
from slidemill.postprocess.cli import app as postprocess_app
from slidemill.shared.annotations import read_annotation_file
from slidemill.shared.classes import ClassTable
from slidemill.shared.contracts import Report, TileSet, load_contract
from slidemill.shared.testing import write_prediction
from slidemill.shared.tiletable import tile_records
from slidemill.tile.cli import app as tile_app
from slidemill.to_qupath import file_problems
from slidemill.to_qupath.cli import app as to_qupath_app

runner = CliRunner()
CLASS_NAMES = ["Tumör region", "Stroma, loose", "Keratin/Horn", "Glas (Hintergrund)"]


def invoke(app, *args):
    return runner.invoke(app, [str(a) for a in args])



@pytest.fixture(scope="module")
def slide(handout) -> Path:
    return handout / "slides" / "CMU-1-Small-Region.svs"


def case(cases: Path, name: str) -> Path:
    return cases / name / "CMU-1-Small-Region.geojson"


def tile(tmp_path, slide, annotations, *extra):
    out = tmp_path / "tiles"
    result = invoke(tile_app, slide, "--out", out, "--annotations", annotations, "--mpp", 8, "--tile-size", 32,
                    "--overlap", 0, "--all-tiles", "--workers", 1, *extra)
    assert result.exit_code == 0, result.output
    return load_contract(out / "tileset.json", TileSet), load_contract(out / "report.json", Report)


def to_qupath(tmp_path, source):
    out = tmp_path / "qupath"
    result = invoke(to_qupath_app, source, "--out", out)
    assert result.exit_code == 0, result.output
    (path,) = sorted(out.glob("*.geojson"))
    assert file_problems(path) == []
    return read_annotation_file(path), load_contract(out / "report.json", Report), json.loads(path.read_text())


def merge(tmp_path, source, *extra, name="merged.geojson"):
    out = tmp_path / name
    result = invoke(merge_app, source, "--out", out, *extra)
    return result, out


# --- derived classes -----------------------------------------------------------------------


def test_derived_classes_are_each_their_own_class_in_tile(tmp_path, cases, slide):
    tileset, _ = tile(tmp_path, slide, case(cases, "derived-classes"))
    classes = {c.name: c for c in tileset.classes.trainable}
    assert set(classes) == {"Stroma", "Tumor: Negative", "Tumor: Positive"}
    assert len({c.label for c in classes.values()}) == 3
    assert tuple(classes["Tumor: Positive"].color) == (200, 0, 0)  # the file's colours
    assert tuple(classes["Tumor: Negative"].color) == (112, 112, 225)
    assert tuple(classes["Stroma"].color) == (150, 200, 150)
    painted = {name for t in tile_records(tmp_path / "tiles") for name, f in t.class_fractions.items() if f > 0}
    assert {"Stroma", "Tumor: Negative", "Tumor: Positive"} <= painted


def test_derived_classes_kept_through_to_qupath_and_merge(tmp_path, cases):
    source = case(cases, "derived-classes")
    read, _, data = to_qupath(tmp_path, source)
    assert [s.class_name for s in read.shapes] == ["Tumor: Positive", "Tumor: Negative", "Stroma"]
    assert [f["properties"]["classification"] for f in data["features"]] == [
        {"names": ["Tumor", "Positive"], "color": [200, 0, 0]},
        {"names": ["Tumor", "Negative"], "color": [112, 112, 225]},
        {"name": "Stroma", "color": [150, 200, 150]}]
    # the objects keep their own ids as they came
    assert [f["id"] for f in data["features"]] == [f"f0000000-0000-4000-8000-00000000000{i}" for i in (1, 2, 3)]
    result, out = merge(tmp_path, source, "--max-gap-px", 1000)  # a gap that would join them, were they one class
    assert result.exit_code == 0, result.output
    merged = read_annotation_file(out)
    assert sorted(s.class_name for s in merged.shapes) == ["Stroma", "Tumor: Negative", "Tumor: Positive"]
    assert {s.class_name: s.color for s in merged.shapes}["Tumor: Negative"] == (112, 112, 225)
    result, out = merge(tmp_path, source, "--classes", "Tumor: Positive", name="one.geojson")
    assert result.exit_code == 0, result.output
    assert [s.class_name for s in read_annotation_file(out).shapes] == ["Tumor: Positive"]


# --- class names with commas, slashes, non-ASCII ------------------------------------------


def test_class_names_kept_byte_for_byte_in_tile_and_to_qupath(tmp_path, cases, slide):
    source = case(cases, "class-names")
    tileset, _ = tile(tmp_path, slide, source)
    assert {c.name for c in tileset.classes.trainable} == set(CLASS_NAMES)
    read, _, _ = to_qupath(tmp_path, source)
    assert {s.class_name for s in read.shapes} == {*CLASS_NAMES, "Ignore*"}


def test_every_class_name_is_selectable_in_merge_and_unknown_ones_are_exit_2(tmp_path, cases):
    source = case(cases, "class-names")
    for name in CLASS_NAMES:
        result, out = merge(tmp_path, source, "--classes", name, "--overwrite")
        assert result.exit_code == 0, result.output
        assert {s.class_name for s in read_annotation_file(out).shapes} == {name}
    result, out = merge(tmp_path, source, "--classes", "Stroma, loose", "--classes", "Keratin/Horn", "--overwrite")
    assert {s.class_name for s in read_annotation_file(out).shapes} == {"Stroma, loose", "Keratin/Horn"}
    for unknown in ("Stroma", "Tumor region"):
        result, out = merge(tmp_path, source, "--classes", unknown, name="unknown.geojson")
        assert result.exit_code == 2 and not out.exists(), result.output
        assert repr(unknown) in result.output and "'Stroma, loose'" in result.output


def test_every_class_name_is_selectable_in_postprocess_and_unknown_ones_are_exit_2(tmp_path):
    labels = np.full((40, 80), 255, np.uint8)
    for label in range(4):
        labels[10:30, 20 * label + 5:20 * label + 15] = label
    folder = write_prediction(tmp_path / "prediction", labels, classes=ClassTable.from_names(CLASS_NAMES))
    for label, name in enumerate(CLASS_NAMES):
        out = tmp_path / f"{label}.geojson"
        result = invoke(postprocess_app, folder, "--out", out, "--classes", name)
        assert result.exit_code == 0, result.output
        (only,) = read_annotation_file(out).shapes
        assert only.class_name == name
        assert only.geometry.equals(box(20 * label + 5, 10, 20 * label + 15, 30))
    for unknown in ("Stroma", "Stroma,loose"):
        out = tmp_path / "unknown.geojson"
        result = invoke(postprocess_app, folder, "--out", out, "--classes", unknown)
        assert result.exit_code == 2 and not out.exists(), result.output
        assert repr(unknown) in result.output and "'Stroma, loose'" in result.output


# --- cells with nuclei ---------------------------------------------------------------------


def test_tile_skips_cells_and_says_so(tmp_path, cases, slide):
    tileset, report = tile(tmp_path, slide, case(cases, "cells-with-nuclei"))
    assert [c.name for c in tileset.classes.trainable] == ["Stroma"]
    assert report.counts["annotations_used"] == 1 and report.counts["annotations_unclassified_skipped"] == 1
    assert any("skipped 12 detection/cell/tile object(s)" in w for w in report.warnings), report.warnings


def _cells(path: Path) -> list[dict]:
    return [f for f in json.loads(path.read_text())["features"] if f["properties"]["objectType"] == "cell"]


def test_cells_keep_their_nucleus_class_and_measurements_through_to_qupath_and_merge(tmp_path, cases):
    source = case(cases, "cells-with-nuclei")
    given = _cells(source)
    assert len(given) == 12
    read, report, data = to_qupath(tmp_path, source)
    assert [s.object_type for s in read.shapes] == ["annotation", "annotation"] + ["cell"] * 12
    assert read.shapes[0].name == "ROI 1" and read.shapes[0].class_name is None
    assert report.counts["nuclei_kept"] == 12 and report.counts["nuclei_not_kept"] == 0
    result, out = merge(tmp_path, source)
    assert result.exit_code == 0, result.output
    merged = read_annotation_file(out)
    assert sorted(s.object_type for s in merged.shapes) == ["annotation", "annotation"] + ["cell"] * 12
    assert {s.name for s in merged.shapes if s.object_type == "annotation"} == {"ROI 1", None}
    for written in (_cells(tmp_path / "qupath" / "CMU-1-Small-Region.geojson"), _cells(out)):
        assert len(written) == 12
        for want, got in zip(given, written, strict=True):
            assert got["id"] == want["id"]
            assert got["properties"]["classification"] == want["properties"]["classification"]
            for key, value in want["properties"]["measurements"].items():
                assert got["properties"]["measurements"][key] == value
            assert shape(got["nucleusGeometry"]).equals(shape(want["nucleusGeometry"]))
            assert shape(got["geometry"]).equals(shape(want["geometry"]))


# --- what cannot be kept is counted and said -------------------------------------------------


def test_points_lines_and_non_finite_measurements_are_counted(tmp_path):
    square = [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]
    source = tmp_path / "mixed.geojson"
    source.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square, "plane": {"c": -1, "z": 2, "t": 1}},
         "properties": {"objectType": "detection", "measurements": {"ok": 1.5, "bad": float("nan")},
                        "color": [1, 2, 3], "myTool": {"score": 0.9}}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {}},
        {"type": "Feature", "geometry": {"type": "MultiPoint", "coordinates": [[5, 5], [6, 6]]}, "properties": {}},
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [5, 5]]}, "properties": {}},
    ]}))
    read, report, data = to_qupath(tmp_path, source)
    assert report.counts["objects_not_kept.points"] == 2 and report.counts["objects_not_kept.lines"] == 1
    assert report.counts["measurements_not_kept"] == 1
    assert any("2 point and 1 line object(s) were left out" in w for w in report.warnings)
    assert any("non-finite measurement" in w for w in report.warnings)
    (feature,) = data["features"]
    assert feature["geometry"]["plane"] == {"c": -1, "z": 2, "t": 1}
    assert feature["properties"]["color"] == [1, 2, 3] and feature["properties"]["myTool"] == {"score": 0.9}
    assert feature["properties"]["measurements"]["ok"] == 1.5 and "bad" not in feature["properties"]["measurements"]
    assert read.shapes[0].plane_key == (-1, 2, 1)
    result, out = merge(tmp_path, source, "--slide-mpp", 0.5)
    assert result.exit_code == 0, result.output
    merged = load_contract(out.with_suffix(".report.json"), Report)
    assert merged.counts["objects_not_kept.points"] == 2 and merged.counts["measurements_not_kept"] == 1


def test_shapes_on_different_planes_never_merge(tmp_path):
    def square(x, z):
        return {"type": "Feature", "geometry": {"type": "Polygon", "plane": {"c": -1, "z": z, "t": 0},
                                                "coordinates": [[[x, 0], [x + 10, 0], [x + 10, 10], [x, 10], [x, 0]]]},
                "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}}

    source = tmp_path / "stack.geojson"
    source.write_text(json.dumps([square(0, 0), square(10, 0), square(0, 1)]))
    result, out = merge(tmp_path, source)
    assert result.exit_code == 0, result.output
    merged = read_annotation_file(out).shapes
    assert sorted((s.plane_key[1], s.geometry.area) for s in merged) == [(0, 200.0), (1, 100.0)]


# --- background classes --------------------------------------------------------------------


def test_postprocess_leaves_background_classes_out_unless_asked(tmp_path):
    labels = np.full((40, 80), 255, np.uint8)
    labels[:, :40] = 0  # Background (glass)
    labels[10:30, 50:70] = 1  # Gland
    classes = ClassTable.from_names(["Background", "Gland"])
    assert [c.name for c in classes.background] == ["Background"]
    folder = write_prediction(tmp_path / "prediction", labels, classes=classes)
    out = tmp_path / "default.geojson"
    result = invoke(postprocess_app, folder, "--out", out)
    assert result.exit_code == 0, result.output
    assert [s.class_name for s in read_annotation_file(out).shapes] == ["Gland"]
    report = load_contract(tmp_path / "default.report.json", Report)
    assert report.counts["classes_background_not_vectorised"] == 1
    assert any("'Background'" in w and "--include-background" in w for w in report.warnings)
    for extra in (["--include-background"], ["--classes", "Background", "--classes", "Gland"]):
        out = tmp_path / "all.geojson"
        result = invoke(postprocess_app, folder, "--out", out, "--overwrite", *extra)
        assert result.exit_code == 0, result.output
        assert sorted(s.class_name for s in read_annotation_file(out).shapes) == ["Background", "Gland"]


def test_tile_marks_its_background_class_and_older_manifests_still_read(tmp_path, cases, slide):
    tileset, _ = tile(tmp_path, slide, case(cases, "derived-classes"), "--background", "Glas")
    assert [c.name for c in tileset.classes.background] == ["Glas"]
    data = json.loads((tmp_path / "tiles" / "tileset.json").read_text())
    assert data["schema_version"] == "1.2"
    data["schema_version"] = "1.0"
    for entry in data["classes"]["classes"]:
        del entry["background"]  # as 1.0 wrote it
    old = TileSet.model_validate(data)
    assert old.classes.background == []
