"""`slidemill-tile --qupath-project`: every exported image of a QuPath project tiled with one class table,
the others listed with their reason, and a first run on a project without export writing the script."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from slidemill.shared.annotations import load_json
from slidemill.shared.qupath_project import EXPORT_DIR, EXPORT_SCRIPT, EXPORT_SCRIPT_FILE, java_file_uri
from slidemill.shared.testing import example_shapes, qupath_geojson, write_synthetic_slide
from slidemill.tile.cli import app

W, H = 640, 512


def make_project(folder, slides):
    images = [{"serverBuilder": {"builderType": "uri", "uri": java_file_uri(s), "args": []}, "entryID": i,
               "randomizedName": f"r{i}", "imageName": s.name, "metadata": {}} for i, s in enumerate(slides, 1)]
    folder.mkdir(parents=True)
    (folder / "project.qpproj").write_text(json.dumps(
        {"version": "0.5.1", "createTimestamp": 1, "modifyTimestamp": 1,
         "uri": java_file_uri(folder / "project.qpproj"), "lastID": len(slides), "images": images}))
    (folder / "classifiers").mkdir()
    # the project colours Tumor its own way; Stroma keeps QuPath's colour
    (folder / "classifiers" / "classes.json").write_text(json.dumps(
        {"pathClasses": [{"name": "Tumor", "color": -16744448}, {"name": "Stroma", "color": -6895466},
                         {"name": "Necrosis", "color": -13487566}]}))


def export(folder, entry_id, shapes):
    path = folder / EXPORT_DIR / f"{entry_id}.geojson"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(qupath_geojson(shapes, flavour="0.4")))


def tile(*args):
    return CliRunner().invoke(app, [*map(str, args), "--mpp", "1.0", "--tile-size", "128", "--overlap", "0",
                                    "--annotated-only", "--workers", "1"])


@pytest.fixture
def project(tmp_path):
    """Four images: two slides both named slide.tiff (in a/ and b/), one never exported, one whose file is gone."""
    shapes = [s for s in example_shapes(W, H, seed=1) if s.class_name in {"Tumor", "Stroma"}]
    slides = []
    for name in ("a/slide.tiff", "b/slide.tiff", "c/unannotated.tiff", "d/moved.tiff"):
        path = tmp_path / "slides" / name
        path.parent.mkdir(parents=True)
        slides.append(write_synthetic_slide(path, W, H, mpp=0.5, shapes=shapes, seed=len(slides)))
    folder = tmp_path / "project"
    make_project(folder, slides)
    return folder, slides, shapes


def test_first_run_writes_the_export_script_and_says_how_to_run_it(project, tmp_path):
    folder, _, _ = project
    result = tile("--qupath-project", folder, "--out", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "QuPath script --project=" in result.output and "export-slidemill.groovy" in result.output
    assert (folder / EXPORT_SCRIPT_FILE).read_text() == EXPORT_SCRIPT
    assert not (tmp_path / "out").exists()


def test_every_exported_image_is_tiled_with_one_class_table(project, tmp_path):
    folder, slides, shapes = project
    for entry in (1, 2, 4):
        export(folder, entry, shapes)
    shutil.move(slides[3].parent, tmp_path / "elsewhere")  # entry 4's slide is no longer where the project says
    out = tmp_path / "out"
    result = tile("--qupath-project", folder / "project.qpproj", "--out", out)
    assert result.exit_code == 0, result.output
    report = load_json(out / "report.json")
    assert [(i["id"], i["status"]) for i in report["items"]] == [("1", "ok"), ("2", "ok"), ("3", "skipped"),
                                                                ("4", "skipped")]
    assert "no exported annotations" in report["items"][2]["reason"]
    assert "not found" in report["items"][3]["reason"]
    assert report["counts"]["images_tiled"] == 2 and len(report["warnings"]) == 2
    tables = [load_json(out / e / "tileset.json")["classes"] for e in ("1", "2")]
    assert tables[0] == tables[1]
    colours = {c["name"]: c["color"] for c in tables[0]["classes"]}
    assert colours["Tumor"] == [0, 128, 0] and colours["Stroma"] == [150, 200, 150]
    assert "Necrosis" not in colours  # listed in the project, annotated nowhere: not a class to train
    # the two images of the same name are two tilesets, each from its own slide
    assert [load_json(out / e / "tileset.json")["slide"]["name"] for e in ("1", "2")] == ["slide.tiff"] * 2
    assert load_json(out / "1" / "report.json")["inputs"][0] == str(slides[0])
    assert load_json(out / "2" / "report.json")["inputs"][0] == str(slides[1])

    # the user says where the moved slide is: now all three exported images are tiled
    again = tile("--qupath-project", folder, "--out", out, "--overwrite", "--slide-dir", tmp_path / "elsewhere")
    assert again.exit_code == 0, again.output
    items = load_json(out / "report.json")["items"]
    assert [(i["id"], i["status"]) for i in items] == [("1", "ok"), ("2", "ok"), ("3", "skipped"), ("4", "ok")]


def test_nothing_tileable_is_exit_2(project, tmp_path):
    folder, slides, shapes = project
    export(folder, 3, [])  # exported, but the image has no annotations
    result = tile("--qupath-project", folder, "--out", tmp_path / "out")
    assert result.exit_code == 2
    assert "no image that could be tiled" in result.output and "no annotations in QuPath" in result.output


def test_slide_and_project_are_exclusive(project, tmp_path):
    folder, slides, _ = project
    assert tile(slides[0], "--qupath-project", folder, "--out", tmp_path / "o").exit_code == 2
    assert tile("--out", tmp_path / "o").exit_code == 2


def test_list_images_names_every_image_its_slide_and_its_export(project, tmp_path):
    """--list-images tiles nothing: every image of the project with the slide found for it (or the path its
    URI names), how it was found and its export, as JSON (Argo) and TSV (shell, Nextflow) of the same rows."""
    folder, slides, shapes = project
    export(folder, 2, shapes)
    shutil.move(slides[3].parent, tmp_path / "elsewhere")
    before = sorted(p.relative_to(folder) for p in folder.rglob("*"))
    run = CliRunner().invoke(app, ["--qupath-project", str(folder), "--list-images", "--out",
                                   str(tmp_path / "images.json")])
    assert run.exit_code == 0, run.output
    rows = load_json(tmp_path / "images.json")
    exported = str(folder / EXPORT_DIR / "2.geojson")
    assert rows == [
        {"id": "1", "name": "slide.tiff", "slide": str(slides[0]), "found_by": "uri", "annotations": ""},
        {"id": "2", "name": "slide.tiff", "slide": str(slides[1]), "found_by": "uri", "annotations": exported},
        {"id": "3", "name": "unannotated.tiff", "slide": str(slides[2]), "found_by": "uri", "annotations": ""},
        {"id": "4", "name": "moved.tiff", "slide": str(slides[3]), "found_by": "", "annotations": ""}]
    run = CliRunner().invoke(app, ["--qupath-project", str(folder), "--list-images", "--out",
                                   str(tmp_path / "images.tsv"), "--slide-dir", str(tmp_path / "elsewhere")])
    assert run.exit_code == 0, run.output
    lines = (tmp_path / "images.tsv").read_text().splitlines()
    assert lines[0].split("\t") == ["id", "name", "slide", "found_by", "annotations"]
    assert [line.split("\t") for line in lines[1:]] == [
        [r["id"], r["name"], r["slide"], r["found_by"], r["annotations"]] for r in rows[:3]] + [
        ["4", "moved.tiff", str(tmp_path / "elsewhere" / "moved.tiff"), "search folder", ""]]
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before  # nothing written into the project
    assert not (tmp_path / "images").exists()


@pytest.mark.parametrize("args, message", [
    (["--out", "{tmp}/images.txt"], "is neither .json nor .tsv"),
    (["--out", "{tmp}/taken.tsv"], "already exists"),
])
def test_list_images_refuses_what_it_cannot_write(project, tmp_path, args, message):
    folder, _, _ = project
    (tmp_path / "taken.tsv").write_text("x")
    run = CliRunner().invoke(app, ["--qupath-project", str(folder), "--list-images",
                                   *[a.format(tmp=tmp_path) for a in args]])
    assert run.exit_code == 2 and message in run.output, run.output
    assert (tmp_path / "taken.tsv").read_text() == "x"


def test_list_images_tsv_refuses_a_tab_in_a_value(project, tmp_path):
    folder, _, _ = project
    data = load_json(folder / "project.qpproj")
    data["images"][0]["imageName"] = "slide\t1.tiff"
    (folder / "project.qpproj").write_text(json.dumps(data))
    run = CliRunner().invoke(app, ["--qupath-project", str(folder), "--list-images", "--out",
                                   str(tmp_path / "images.tsv")])
    assert run.exit_code == 2 and "entry 1 has a tab or line break in its name" in run.output, run.output
    assert not (tmp_path / "images.tsv").exists()
    run = CliRunner().invoke(app, ["--qupath-project", str(folder), "--list-images", "--out",
                                   str(tmp_path / "images.json")])
    assert run.exit_code == 0 and load_json(tmp_path / "images.json")[0]["name"] == "slide\t1.tiff"
