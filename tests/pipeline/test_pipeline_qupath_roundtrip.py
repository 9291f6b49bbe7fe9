"""The QuPath round trip: a project in, the same project out.

The test makes a QuPath project as QuPath leaves it (project.qpproj, data/<entryID>/, the class list) of
two images that have the same file name, `scan.tiff`, in two folders (entry IDs are unique, image names
need not be), with each image's annotations in `slidemill/annotations/<entryID>.geojson` as the export
script writes them. Then the lab folder (project and slides) is moved, as when a project is copied to
another machine: the project's URIs point at the old place. The shell workflow runs on the project as
its input (`workflows/run-local.sh --qupath-project`), and with it the real command lines: tile
--list-images, tile --qupath-project -> train -> infer -> postprocess -> merge-annotations -> to-qupath
--project (the same project, one run per image). Afterwards the project lists the same two entries (IDs,
URIs, randomizedName, names: project.qpproj byte for byte), QuPath's own files are as they were, and the
file each entry's import loads holds the predictions of that entry's slide.

The two slides differ in shape (wide and tall), so whose predictions an entry got is known exactly: the
slide each file names, and the extent its objects cover. Tiny slides and one epoch of a tiny model keep
it to seconds; how good the model is is the other pipeline tests' business.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from pipeline_support import BIN, PIPELINE, require_tools, run_step
from shapely.geometry import Point, box, shape
from shapely.ops import unary_union

from slidemill.shared.qupath_project import EXPORT_DIR, java_file_uri, read_project
from slidemill.shared.testing import TISSUE_RGB, SyntheticShape, qupath_geojson, write_synthetic_slide

MPP = 0.5  # level-0 microns per pixel of the slides; tiles and model at 1.0
# entry ID -> (folder, level-0 width, height): a wide slide and a tall one, both named scan.tiff
SLIDES = {1: ("a", 512, 320), 2: ("b", 320, 512)}
PROJECT_CLASSES = [{"name": "Tumor", "color": -3670016}, {"name": "Stroma", "color": -6895466},
                   {"name": "Tissue", "color": -2187064}]
TRAIN_ARGS = ["--arch", "linknet", "--encoder", "timm-mobilenetv3_small_minimal_100", "--encoder-weights", "none",
              "--batch-size", "4", "--lr", "0.01", "--augment", "none", "--seed", "0"]
RUN_LOCAL = Path(__file__).resolve().parents[2] / "workflows" / "run-local.sh"


def shapes_of(entry_id: int) -> list[SyntheticShape]:
    """Tissue over most of the slide; a tumour disc on the wide slide, a stroma band on the tall one."""
    _, w, h = SLIDES[entry_id]
    tissue = SyntheticShape("Tissue", box(0.06 * w, 0.06 * h, 0.94 * w, 0.94 * h), TISSUE_RGB)
    if entry_id == 1:
        return [tissue, SyntheticShape("Tumor", Point(0.3 * w, 0.5 * h).buffer(0.3 * h, 32), (120, 40, 150))]
    return [tissue, SyntheticShape("Stroma", box(0.55 * w, 0.15 * h, 0.85 * w, 0.85 * h), (240, 120, 170))]


def write_exported(project: Path, entry_id: int) -> None:
    """What scripts/export-slidemill.groovy writes: a FeatureCollection of the image's annotations
    (QuPath 0.4+ GeoJSON, each with its UUID), moved into place as <entryID>.geojson."""
    collection = qupath_geojson(shapes_of(entry_id), flavour="0.4")
    for feature in collection["features"]:
        feature["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{entry_id}/{feature['properties']['classification']}"))
    path = project / EXPORT_DIR / f"{entry_id}.geojson"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(collection, indent=2))


def make_lab(lab: Path) -> Path:
    """lab/slides/{a,b}/scan.tiff and lab/project/, as QuPath 0.5 writes a project of the two."""
    images = []
    for entry_id, (folder, w, h) in SLIDES.items():
        (lab / "slides" / folder).mkdir(parents=True)
        slide = write_synthetic_slide(lab / "slides" / folder / "scan.tiff", w, h, mpp=MPP,
                                      shapes=shapes_of(entry_id), tile=128, seed=entry_id)
        images.append({"serverBuilder": {"builderType": "uri", "providerClassName":
                                         "qupath.lib.images.servers.bioformats.BioFormatsServerBuilder",
                                         "uri": java_file_uri(slide), "args": []},
                       "entryID": entry_id, "randomizedName": str(uuid.UUID(int=0x5EED + entry_id, version=4)),
                       "imageName": slide.name, "metadata": {}})
    project = lab / "project"
    (project / "classifiers").mkdir(parents=True)
    (project / "project.qpproj").write_text(json.dumps(
        {"version": "0.5.1", "createTimestamp": 1733000000000, "modifyTimestamp": 1733000500000,
         "uri": java_file_uri(project / "project.qpproj"), "lastID": len(SLIDES), "images": images}, indent=2))
    (project / "classifiers" / "classes.json").write_text(json.dumps({"pathClasses": PROJECT_CLASSES}, indent=2))
    for entry_id in SLIDES:
        data = project / "data" / str(entry_id)
        data.mkdir(parents=True)
        (data / "data.qpdata").write_bytes(b"\xac\xed\x00\x05" + bytes([entry_id]) * 64)  # Java-serialised
        (data / "server.json").write_text("{}")
        (data / "thumbnail.jpg").write_bytes(b"\xff\xd8\xff\xe0 thumbnail")
        write_exported(project, entry_id)
    return project


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def roundtrip(tmp_path_factory):
    require_tools(PIPELINE)
    root = tmp_path_factory.mktemp("roundtrip")
    make_lab(root / "lab")
    (root / "lab").rename(root / "moved lab")  # the URIs in project.qpproj now point at the old place
    project = root / "moved lab" / "project"
    before = files_of(project)
    timings: dict[str, float] = {}
    out = root / "out"
    argv = ["bash", str(RUN_LOCAL), "--qupath-project", str(project), "--out", str(out), "--bin", str(BIN),
            "--mpp", "1.0", "--tile-size", "64", "--epochs", "1", "--workers", "1", "--device", "cpu",
            "--tile-args", "--overlap 0", "--infer-args", "--overlap 0", "--train-args", " ".join(TRAIN_ARGS)]
    result = run_step(argv, cwd=root, timings=timings, name="run-local.sh", timeout=900)
    print("round trip:", timings, "\n", result.stdout)
    report = json.loads((out / "tiles" / "report.json").read_text())
    assert [(item["id"], item["status"]) for item in report["items"]] == [("1", "ok"), ("2", "ok")], report
    slides = {int(item["id"]): Path(item["inputs"][0]) for item in report["items"]}  # where tile found them
    summary = [line.split("\t") for line in (out / "summary.tsv").read_text().splitlines()]
    after = files_of(project)
    again = run_step(argv, cwd=root, timings=timings, name="run-local.sh again", timeout=300)
    assert "0 slide(s) done, 2 skipped" in again.stdout and files_of(project) == after  # a rerun resumes
    printed = {}
    for entry_id in slides:  # what to-qupath printed on stdout: the one import command
        log = (out / "slides" / str(entry_id) / "logs" / "to-qupath.log").read_text()
        printed[entry_id] = "\n".join(line for line in log.splitlines() if not re.match(r"\d\d:\d\d:\d\d ", line))
    return out, project, before, slides, printed, summary


def test_tile_found_each_slide_relative_to_the_moved_project(roundtrip):
    out, _, _, slides, _, _ = roundtrip
    lab = out.parent / "moved lab"
    assert slides == {e: lab / "slides" / folder / "scan.tiff" for e, (folder, _, _) in SLIDES.items()}
    listed = [line.split("\t") for line in (out / "images.tsv").read_text().splitlines()[1:]]
    assert listed == [[str(e), "scan.tiff", str(slides[e]), "relative to the project",
                       str(lab / "project" / EXPORT_DIR / f"{e}.geojson")] for e in SLIDES]
    for entry_id, (_, w, h) in SLIDES.items():
        tileset = json.loads((out / "tiles" / str(entry_id) / "tileset.json").read_text())
        assert (tileset["slide"]["name"], tileset["slide"]["width"], tileset["slide"]["height"]) == ("scan.tiff", w, h)


def test_the_workflow_names_each_images_results_by_its_entry(roundtrip):
    out, _, _, _, _, summary = roundtrip
    assert summary == [["slide", "status", "step", "exit_code", "message"], ["1", "ok", "", "0", ""],
                       ["2", "ok", "", "0", ""]]
    assert sorted(p.name for p in (out / "slides").iterdir()) == ["1", "2"]  # not one scan/ for both


def test_the_project_lists_the_same_two_entries_and_keeps_qupaths_files(roundtrip):
    _, project, before, _, _, _ = roundtrip
    after = files_of(project)
    assert after["project.qpproj"] == before["project.qpproj"]  # same IDs, URIs, randomizedName, timestamps
    assert "project.qpproj.backup" not in after  # nothing was rewritten, so nothing backed up
    for name, content in before.items():
        if name.startswith(("data/", EXPORT_DIR + "/")):
            assert after[name] == content, f"{name} was changed"
    entries = json.loads(after["project.qpproj"])["images"]
    assert [(e["entryID"], e["imageName"]) for e in entries] == [(1, "scan.tiff"), (2, "scan.tiff")]
    classes = json.loads(after["classifiers/classes.json"])["pathClasses"]
    assert classes[:len(PROJECT_CLASSES)] == PROJECT_CLASSES  # the project's classes keep their colours
    # what slidemill added: its import script and one objects file per entry, nothing else
    added = sorted(set(after) - set(before))
    assert added == ["scripts/import-slidemill.groovy", "slidemill/objects/1.geojson", "slidemill/objects/2.geojson"]


def test_each_entrys_import_loads_the_predictions_of_its_own_slide(roundtrip):
    from slidemill.to_qupath import file_problems
    from slidemill.to_qupath.project import IMPORT_SCRIPT

    out, project, _, slides, printed, _ = roundtrip
    # the import script loads PROJECT_BASE_DIR/slidemill/objects/<entry ID>.geojson for each entry
    assert "buildFilePath(PROJECT_BASE_DIR, 'slidemill', 'objects', entry.getID() + '.geojson')" in IMPORT_SCRIPT
    assert (project / "scripts" / "import-slidemill.groovy").read_text() == IMPORT_SCRIPT
    extents = {}
    for entry in read_project(project).images:
        entry_id = int(entry.entry_id)
        assert entry.slide == slides[entry_id] and entry.found_by == "relative to the project"
        loaded = project / "slidemill" / "objects" / f"{entry_id}.geojson"
        assert file_problems(loaded) == []
        # the same bytes as that slide's own to-qupath output, whose chain started from that slide
        assert loaded.read_bytes() == (out / "slides" / str(entry_id) / "qupath" / "scan.geojson").read_bytes()
        data = json.loads(loaded.read_text())
        _, w, h = SLIDES[entry_id]
        assert (data["slide"]["name"], data["slide"]["width"], data["slide"]["height"]) == ("scan.tiff", w, h)
        assert data["features"], f"entry {entry_id} got no predictions"
        covered = unary_union([shape(f["geometry"]) for f in data["features"]])
        assert box(0, 0, w, h).buffer(1e-6).covers(covered)
        extents[entry_id] = covered.bounds
        prediction = json.loads((out / "slides" / str(entry_id) / "prediction" / "prediction.json").read_text())
        assert (prediction["slide"]["width"], prediction["slide"]["height"]) == (w, h)
        assert printed[entry_id].startswith("QuPath script --project=") and "--save" in printed[entry_id]
        (item,) = json.loads((out / "slides" / str(entry_id) / "qupath" / "report.json").read_text())["items"]
        assert (item["id"], item["outputs"]) == (str(entry_id), [str(loaded)])
    # the wide slide's objects reach past the tall slide's width, the tall one's past the wide one's height
    assert extents[1][2] > SLIDES[2][1] and extents[2][3] > SLIDES[1][2], extents
