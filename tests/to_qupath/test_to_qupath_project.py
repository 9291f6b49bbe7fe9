"""QuPath projects: created as QUPATH.md describes, updated without clobbering, refused when not a project."""

import json
import shlex
import time
import uuid
from pathlib import Path

import pytest
from shapely.geometry import box, shape
from to_qupath_helpers import ours, plain, polygon_feature, snapshot, square

from slidemill.shared.errors import InputError
from slidemill.shared.testing import SyntheticShape
from slidemill.to_qupath import ToQuPathConfig, file_problems, run
from slidemill.to_qupath.project import (
    BIOFORMATS,
    IMPORT_SCRIPT,
    OPENSLIDE,
    java_file_uri,
    provider_for,
)
from slidemill.to_qupath.slide_matching import qupath_name_without_extension


def convert(tmp_path, inputs, project, *, name="out", slides=(), **options):
    return run(ToQuPathConfig(annotations=list(inputs), out_dir=tmp_path / name, project_dir=project,
                              slides=list(slides), overwrite=True, **options))


def qpproj(project: Path) -> dict:
    return json.loads((project / "project.qpproj").read_text())


def import_file(project: Path, entry: dict) -> Path:
    """The file the import script loads for `entry`: it builds PROJECT_BASE_DIR/slidemill/objects/<entry ID>.geojson
    (checked line by line in test_new_project_is_what_qupath_writes)."""
    assert "buildFilePath(PROJECT_BASE_DIR, 'slidemill', 'objects', entry.getID() + '.geojson')" in IMPORT_SCRIPT
    return project / "slidemill" / "objects" / f"{entry['entryID']}.geojson"


def test_new_project_is_what_qupath_writes(tmp_path, slide_files):
    a, b = slide_files["slide-a.svs"], slide_files["slide-b.tiff"]
    inputs = [ours(tmp_path / "a.geojson", "slide-a.svs"), ours(tmp_path / "b.geojson", "slide-b.tiff")]
    project = tmp_path / "my project"
    before_ms = int(time.time() * 1000)
    result = convert(tmp_path, inputs, project, slides=[a, b], qupath_version="0.6")
    data = qpproj(project)
    assert list(data) == ["version", "createTimestamp", "modifyTimestamp", "uri", "lastID", "images"]
    assert data["version"] == "0.6.0"
    assert before_ms <= data["createTimestamp"] == data["modifyTimestamp"] <= int(time.time() * 1000)
    assert data["uri"] == f"file:{project.resolve().as_posix().replace(' ', '%20')}/project.qpproj"
    assert data["lastID"] == 2
    first, second = data["images"]
    assert first == {
        "serverBuilder": {"builderType": "uri", "providerClassName": OPENSLIDE,
                          "uri": java_file_uri(a), "args": []},
        "entryID": 1, "randomizedName": first["randomizedName"], "imageName": "slide-a.svs", "metadata": {}}
    assert uuid.UUID(first["randomizedName"]).version == 4
    assert first["serverBuilder"]["uri"].startswith("file:/") and "%20" in first["serverBuilder"]["uri"]
    assert "providerClassName" not in second["serverBuilder"]  # generic TIFF: QuPath picks the reader
    assert (second["entryID"], second["imageName"]) == (2, "slide-b.tiff")
    assert first["randomizedName"] != second["randomizedName"]

    # classes: QuPath's own list plus ours, colours as signed ARGB integers
    classes = json.loads((project / "classifiers" / "classes.json").read_text())["pathClasses"]
    by_name = {c["name"]: c["color"] for c in classes}
    assert by_name["Tumor"] == -3670016 and by_name["Stroma"] == -6895466 and by_name["Ignore*"] == -4934476
    assert "Tissue" in by_name and all(isinstance(v, int) and v < 0 for v in by_name.values())

    # objects: one QuPath GeoJSON per image, named as the import script looks for it (by entry ID)
    assert [s.entry_id for s in result.slides] == [1, 2]
    for entry, slide_output in zip(data["images"], result.slides, strict=True):
        copy = import_file(project, entry)
        assert copy.read_bytes() == slide_output.path.read_bytes()
        assert file_problems(copy) == []
    assert sorted(p.name for p in (project / "slidemill" / "objects").iterdir()) == ["1.geojson", "2.geojson"]

    script = (project / "scripts" / "import-slidemill.groovy").read_text()
    assert script == IMPORT_SCRIPT
    for line in ("import qupath.lib.io.PathIO",
                 "def entry = getProjectEntry()",
                 "def f = new File(buildFilePath(PROJECT_BASE_DIR, 'slidemill', 'objects', "
                 "entry.getID() + '.geojson'))",
                 'if (!f.exists()) { println "no objects for ${name} (entry ${entry.getID()})"; return }',
                 "def objects = PathIO.readObjects(f.toPath())", "addObjects(objects)", "resolveHierarchy()"):
        assert line in script
    assert shlex.split(result.import_command) == [
        "QuPath", "script", f"--project={project.resolve()}/project.qpproj",
        "--save", f"{project.resolve()}/scripts/import-slidemill.groovy"]
    assert not (project / "data").exists()  # data.qpdata is Java-serialized: never written


def _existing_project(folder: Path, slide: Path) -> Path:
    """A project as QuPath leaves it: two images (IDs 3 and 7, one deleted since: lastID 9), data folders,
    a class list with a class of the user's own, and members slidemill does not know."""
    folder.mkdir()
    data = {
        "version": "0.4.4", "createTimestamp": 1700000000000, "modifyTimestamp": 1700000100000,
        "uri": "file:/somewhere/else/project.qpproj", "lastID": 9, "maskImageNames": False,
        "images": [
            {"serverBuilder": {"builderType": "uri", "providerClassName": OPENSLIDE, "uri": java_file_uri(slide),
                               "args": ["--series", "0"]},
             "entryID": 3, "randomizedName": "0d1b2c3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "imageName": "old.ndpi",
             "description": "reviewed by Dr. X", "metadata": {"stain": "HE"}},
            {"serverBuilder": {"builderType": "uri", "uri": "file:/data/slide-a.svs", "args": []},
             "entryID": 7, "randomizedName": "1d1b2c3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d", "imageName": "slide-a.svs",
             "metadata": {}},
        ]}
    (folder / "project.qpproj").write_text(json.dumps(data, indent=2))
    for entry_id in (3, 7):
        (folder / "data" / str(entry_id)).mkdir(parents=True)
        (folder / "data" / str(entry_id) / "data.qpdata").write_bytes(b"\xac\xed\x00\x05java-serialized")
        (folder / "data" / str(entry_id) / "thumbnail.jpg").write_bytes(b"jpeg")
    (folder / "classifiers").mkdir()
    (folder / "classifiers" / "classes.json").write_text(json.dumps(
        {"pathClasses": [{"name": "Tumor", "color": -65536}, {"name": "Mitosis", "color": -16711936}]}))
    return folder


def test_update_keeps_everything_and_adds_what_is_new(tmp_path, slide_files):
    project = _existing_project(tmp_path / "project", slide_files["old.ndpi"])
    before = snapshot(project)
    previous = qpproj(project)
    inputs = [ours(tmp_path / "a.geojson", "slide-a.svs"), ours(tmp_path / "b.geojson", "slide-b.tiff"),
              ours(tmp_path / "old.geojson", "old.ndpi")]
    result = convert(tmp_path, inputs, project, slides=[slide_files["slide-b.tiff"], slide_files["old.ndpi"]])
    data = qpproj(project)
    # existing images: same entries (IDs, names, descriptions, args), same data folders
    assert data["images"][:2] == previous["images"]
    assert [e["entryID"] for e in data["images"]] == [3, 7, 10]
    assert data["images"][2]["imageName"] == "slide-b.tiff"
    assert data["lastID"] == 10
    assert {k: data[k] for k in ("version", "createTimestamp", "uri", "maskImageNames")} == \
        {k: previous[k] for k in ("version", "createTimestamp", "uri", "maskImageNames")}
    assert data["modifyTimestamp"] > previous["modifyTimestamp"]
    for name, content in before.items():
        if name.startswith("data/"):
            assert (project / name).read_bytes() == content
    # the previous project file is kept
    assert (project / "project.qpproj.backup").read_bytes() == before["project.qpproj"]
    # slide-a was found in the project by name (its file was not given), old.ndpi by its file
    assert [s.entry_id for s in result.slides] == [7, 10, 3]
    # the user's classes and colours stay; ours are added
    classes = json.loads((project / "classifiers" / "classes.json").read_text())["pathClasses"]
    assert classes[:2] == [{"name": "Tumor", "color": -65536}, {"name": "Mitosis", "color": -16711936}]
    assert {"Stroma", "Immune cells", "Tissue"} <= {c["name"] for c in classes}
    assert any("QuPath will show the project's colour" in w for w in result.warnings)


def test_rerun_changes_nothing(tmp_path, slide_files):
    project = _existing_project(tmp_path / "project", slide_files["old.ndpi"])
    inputs = [ours(tmp_path / "b.geojson", "slide-b.tiff")]
    convert(tmp_path, inputs, project, slides=[slide_files["slide-b.tiff"]])
    first = snapshot(project)
    time.sleep(0.01)
    result = convert(tmp_path, inputs, project, slides=[slide_files["slide-b.tiff"]], name="again")
    assert snapshot(project) == first  # no new entry, no new timestamp, no new randomizedName
    assert result.import_command
    # a new project is stable too
    fresh = tmp_path / "fresh"
    convert(tmp_path, inputs, fresh, slides=[slide_files["slide-b.tiff"]], name="f1")
    once = snapshot(fresh)
    convert(tmp_path, inputs, fresh, slides=[slide_files["slide-b.tiff"]], name="f2")
    assert snapshot(fresh) == once


def test_slide_found_beside_its_annotations_or_already_in_the_project(tmp_path, slide_files):
    folder = slide_files["slide-a.svs"].parent
    result = convert(tmp_path, [ours(folder / "a.geojson", "slide-a.svs")], tmp_path / "p1")
    assert qpproj(tmp_path / "p1")["images"][0]["serverBuilder"]["uri"] == java_file_uri(slide_files["slide-a.svs"])
    assert result.slides[0].slide == slide_files["slide-a.svs"].resolve()


def test_project_given_as_its_qpproj_file(tmp_path, slide_files):
    project = _existing_project(tmp_path / "project", slide_files["old.ndpi"])
    convert(tmp_path, [ours(tmp_path / "a.geojson", "old.ndpi")], project / "project.qpproj")
    assert [e["entryID"] for e in qpproj(project)["images"]] == [3, 7]
    assert import_file(project, qpproj(project)["images"][0]).exists()  # old.ndpi is entry 3
    assert sorted(p.name for p in (project / "slidemill" / "objects").iterdir()) == ["3.geojson"]


@pytest.mark.parametrize("damage", ["not json", "a list", "no entry id", "images not a list", "bad classes"])
def test_broken_project_is_refused_and_left_as_it_was(tmp_path, slide_files, damage):
    project = _existing_project(tmp_path / "project", slide_files["old.ndpi"])
    qp = project / "project.qpproj"
    if damage == "not json":
        qp.write_text('{"version": "0.5.1", "images": [')
    elif damage == "a list":
        qp.write_text("[]")
    elif damage == "no entry id":
        qp.write_text(json.dumps({"version": "0.5.1", "lastID": 1, "images": [{"imageName": "a.svs"}]}))
    elif damage == "images not a list":
        qp.write_text(json.dumps({"version": "0.5.1", "images": {}}))
    else:
        (project / "classifiers" / "classes.json").write_text("{broken")
    before = snapshot(project)
    with pytest.raises(InputError) as info:
        convert(tmp_path, [ours(tmp_path / "a.geojson", "old.ndpi")], project)
    assert "left as it was" in str(info.value)
    assert snapshot(project) == before
    assert not (tmp_path / "out").exists()


def test_folder_that_is_not_a_project_is_refused(tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a project")
    with pytest.raises(InputError, match="is not a QuPath project"):
        convert(tmp_path, [ours(tmp_path / "a.geojson")], folder)
    assert snapshot(folder) == {"notes.txt": b"not a project"}


def test_slide_that_cannot_be_found_is_refused(tmp_path):
    project = tmp_path / "project"
    with pytest.raises(InputError, match=r"slide-a\.svs.*--slide"):
        convert(tmp_path, [ours(tmp_path / "a.geojson", "slide-a.svs")], project)
    assert not project.exists() and not (tmp_path / "out").exists()
    source = plain(tmp_path / "export.geojson", [polygon_feature(square(), {"classification": "Tumor"})])
    with pytest.raises(InputError, match="does not name its slide"):
        convert(tmp_path, [source], project)


def test_plain_export_matched_to_its_slide_by_name(tmp_path, slide_files):
    source = plain(tmp_path / "slide-b.qupath.geojson", [polygon_feature(square(), {"classification": "Tumor"})])
    result = convert(tmp_path, [source], tmp_path / "project",
                     slides=[slide_files["slide-a.svs"], slide_files["slide-b.tiff"]])
    assert [s.image_name for s in result.slides] == ["slide-b.tiff"]
    assert import_file(tmp_path / "project", qpproj(tmp_path / "project")["images"][0]).exists()
    names = [e["imageName"] for e in qpproj(tmp_path / "project")["images"]]
    assert names == ["slide-b.tiff", "slide-a.svs"]  # a given slide without objects still gets its entry


def test_gzip_output_keeps_a_plain_copy_in_the_project(tmp_path, slide_files):
    result = convert(tmp_path, [ours(tmp_path / "a.geojson", "slide-a.svs")], tmp_path / "project",
                     slides=[slide_files["slide-a.svs"]], gzip=True)
    assert result.slides[0].path.name == "slide-a.geojson.gz"
    assert file_problems(result.slides[0].path) == []
    assert file_problems(tmp_path / "project" / "slidemill" / "objects" / "1.geojson") == []


def test_names_and_uris_as_java_and_qupath_write_them(tmp_path):
    assert qupath_name_without_extension("CMU-1.svs") == "CMU-1"
    assert qupath_name_without_extension("x.ome.tiff") == "x"
    assert qupath_name_without_extension("x.OME.TIF") == "x"
    assert qupath_name_without_extension("no_extension") == "no_extension"
    assert qupath_name_without_extension("odd.name with space") == "odd.name with space"
    assert qupath_name_without_extension("TCGA-EJ-5519.2bd1b2b4-b1b1.svs") == "TCGA-EJ-5519.2bd1b2b4-b1b1"
    assert java_file_uri(Path("/data/my slides/a#1.svs")) == "file:/data/my%20slides/a%231.svs"
    assert java_file_uri(Path("/data/ü.svs")) == "file:/data/ü.svs"  # Java keeps non-ASCII letters
    assert provider_for(Path("a.svs")) == OPENSLIDE and provider_for(Path("a.MRXS")) == OPENSLIDE
    assert provider_for(Path("a.ome.tif")) == BIOFORMATS and provider_for(Path("a.czi")) == BIOFORMATS
    assert provider_for(Path("a.tiff")) is None and provider_for(Path("a.png")) is None


def test_a_new_project_stopped_part_way_can_be_finished(tmp_path, slide_files):
    project = tmp_path / "project"
    (project / "slidemill" / "objects").mkdir(parents=True)
    (project / "slidemill" / "objects" / "1.geojson").write_text("{}")  # what a stopped first run leaves
    (project / "scripts").mkdir()
    (project / "scripts" / "import-slidemill.groovy").write_text("// half")
    convert(tmp_path, [ours(tmp_path / "a.geojson", "slide-a.svs")], project, slides=[slide_files["slide-a.svs"]])
    assert [e["imageName"] for e in qpproj(project)["images"]] == ["slide-a.svs"]
    assert file_problems(project / "slidemill" / "objects" / "1.geojson") == []
    assert (project / "scripts" / "import-slidemill.groovy").read_text() == IMPORT_SCRIPT


def test_slide_in_the_project_under_another_path_is_reused_with_a_warning(tmp_path, slide_files):
    project = _existing_project(tmp_path / "project", slide_files["old.ndpi"])
    moved = tmp_path / "elsewhere" / "slide-a.svs"
    moved.parent.mkdir()
    moved.write_bytes(b"")
    result = convert(tmp_path, [ours(tmp_path / "a.geojson", "slide-a.svs")], project, slides=[moved])
    assert [e["entryID"] for e in qpproj(project)["images"]] == [3, 7]
    assert qpproj(project)["images"][1]["serverBuilder"]["uri"] == "file:/data/slide-a.svs"
    assert any("reused as it is" in w for w in result.warnings)


def test_empty_annotations_still_give_a_valid_file_and_an_entry(tmp_path, slide_files):
    source = ours(tmp_path / "a.geojson", "slide-a.svs", shapes=[])
    result = convert(tmp_path, [source], tmp_path / "project", slides=[slide_files["slide-a.svs"]])
    assert result.slides[0].features == 0
    data = json.loads(result.slides[0].path.read_text())
    assert data["type"] == "FeatureCollection" and data["features"] == []
    assert [e["imageName"] for e in qpproj(tmp_path / "project")["images"]] == ["slide-a.svs"]


def test_slides_found_in_a_given_folder(tmp_path, slide_files):
    folder = slide_files["slide-a.svs"].parent
    inputs = [ours(tmp_path / "a.geojson", "slide-a.svs"), ours(tmp_path / "b.geojson", "slide-b.tiff")]
    result = convert(tmp_path, inputs, tmp_path / "project", slides=[folder])
    assert [s.slide for s in result.slides] == [slide_files["slide-a.svs"].resolve(),
                                                slide_files["slide-b.tiff"].resolve()]
    uris = [e["serverBuilder"]["uri"] for e in qpproj(tmp_path / "project")["images"]]
    assert uris == [java_file_uri(slide_files["slide-a.svs"]), java_file_uri(slide_files["slide-b.tiff"])]


def test_built_in_class_with_another_colour_is_reported(tmp_path):
    source = plain(tmp_path / "a.geojson", [polygon_feature(square(), {"classification": {
        "name": "Tumor", "color": [1, 2, 3]}})])
    result = run(ToQuPathConfig(annotations=[source], out_dir=tmp_path / "out"))
    assert any("QuPath's built-in Tumor is [200, 0, 0]" in w for w in result.warnings)


def test_unknown_slide_leaves_an_existing_project_as_it_was(tmp_path, slide_files):
    project = _existing_project(tmp_path / "project", slide_files["old.ndpi"])
    before = snapshot(project)
    inputs = [ours(tmp_path / "old.geojson", "old.ndpi"), ours(tmp_path / "new.geojson", "never-seen.svs")]
    with pytest.raises(InputError, match=r"never-seen\.svs"):
        convert(tmp_path, inputs, project)
    assert snapshot(project) == before


def _boxes_of(path: Path) -> list[tuple]:
    features = json.loads(path.read_text())["features"]
    return sorted(tuple(round(v) for v in shape(f["geometry"]).bounds) for f in features)


def _qupath_project(folder: Path, slides: list[Path]) -> Path:
    """A project as QuPath writes it, one entry per slide (IDs 1.., data folders), saved at `folder`."""
    folder.mkdir(parents=True)
    images = [{"serverBuilder": {"builderType": "uri", "providerClassName": OPENSLIDE, "uri": java_file_uri(s),
                                 "args": []},
               "entryID": i, "randomizedName": str(uuid.UUID(int=i, version=4)), "imageName": s.name,
               "metadata": {}} for i, s in enumerate(slides, 1)]
    (folder / "project.qpproj").write_text(json.dumps(
        {"version": "0.5.1", "createTimestamp": 1700000000000, "modifyTimestamp": 1700000000000,
         "uri": java_file_uri(folder / "project.qpproj"), "lastID": len(slides), "images": images}, indent=2))
    for i in range(1, len(slides) + 1):
        (folder / "data" / str(i)).mkdir(parents=True)
        (folder / "data" / str(i) / "data.qpdata").write_bytes(b"\xac\xed\x00\x05java-serialized")
    return folder


def _same_name_slides(root: Path) -> list[Path]:
    """Two different slides both named scan.svs, in a/ and b/ (stand-ins: to-qupath never opens them)."""
    slides = []
    for sub in ("a", "b"):
        (root / sub).mkdir(parents=True)
        (root / sub / "scan.svs").write_bytes(sub.encode())
        slides.append(root / sub / "scan.svs")
    return slides


# one known square per slide, so that whose objects an entry gets can be told
SQUARES = {"a": SyntheticShape("Tumor", box(100, 100, 300, 300), (200, 0, 0)),
           "b": SyntheticShape("Stroma", box(1200, 800, 1500, 1100), (150, 200, 150))}


def _predictions(tmp_path: Path) -> dict[str, Path]:
    return {sub: ours(tmp_path / f"pred-{sub}.geojson", "scan.svs", shapes=[SQUARES[sub]]) for sub in SQUARES}


def test_two_images_of_the_same_name_each_get_their_own_objects(tmp_path):
    slides = _same_name_slides(tmp_path / "slides")
    project = _qupath_project(tmp_path / "project", slides)
    before = snapshot(project)
    preds = _predictions(tmp_path)
    for sub, slide in zip(SQUARES, slides, strict=True):  # one run per slide, as the workflows run it
        result = convert(tmp_path, [preds[sub]], project, slides=[slide], name=f"out-{sub}")
        assert [s.entry_id for s in result.slides] == [{"a": 1, "b": 2}[sub]]
        assert result.warnings == []
        (item,) = json.loads((tmp_path / f"out-{sub}" / "report.json").read_text())["items"]
        entry_id = {"a": "1", "b": "2"}[sub]
        assert (item["id"], item["name"], item["status"]) == (entry_id, "scan.svs", "ok")
        assert item["counts"] == {"features": 1}
        assert item["outputs"] == [str(project.resolve() / "slidemill" / "objects" / f"{entry_id}.geojson")]
        assert item["inputs"] == [str(preds[sub]), str(slide)]
    # the project is as QuPath left it: same bytes, same entries, data/ untouched
    ours = ("slidemill/objects/", "scripts/", "classifiers/")
    assert {k: v for k, v in snapshot(project).items() if not k.startswith(ours)} == before
    for entry, sub in zip(qpproj(project)["images"], SQUARES, strict=True):
        assert _boxes_of(import_file(project, entry)) == [tuple(round(v) for v in SQUARES[sub].geometry.bounds)]
    # a rerun of either changes nothing
    first = snapshot(project)
    convert(tmp_path, [preds["b"]], project, slides=[slides[1]], name="again")
    assert snapshot(project) == first


def test_a_second_image_of_the_same_name_gets_a_new_entry(tmp_path):
    slides = _same_name_slides(tmp_path / "slides")
    preds = _predictions(tmp_path)
    project = tmp_path / "project"
    convert(tmp_path, [preds["a"]], project, slides=[slides[0]], name="o1")
    result = convert(tmp_path, [preds["b"]], project, slides=[slides[1]], name="o2")
    entries = qpproj(project)["images"]
    assert [(e["entryID"], e["imageName"], e["serverBuilder"]["uri"]) for e in entries] == [
        (1, "scan.svs", java_file_uri(slides[0])), (2, "scan.svs", java_file_uri(slides[1]))]
    assert any("another file" in w and "entry of its own" in w for w in result.warnings)
    assert _boxes_of(import_file(project, entries[0])) == [(100, 100, 300, 300)]
    assert _boxes_of(import_file(project, entries[1])) == [(1200, 800, 1500, 1100)]


def test_a_moved_project_finds_its_entries_relative_to_itself(tmp_path):
    """Project and slides moved together (lab/ -> moved lab/): the URIs point at the old place, and each
    slide is matched to its own entry where QuPath would find it, relative to the project."""
    lab = tmp_path / "lab"
    slides = _same_name_slides(lab / "slides")
    _qupath_project(lab / "project", slides)
    moved = tmp_path / "moved lab"
    lab.rename(moved)
    project = moved / "project"
    before = snapshot(project)
    preds = _predictions(tmp_path)
    for sub in SQUARES:
        result = convert(tmp_path, [preds[sub]], project, slides=[moved / "slides" / sub / "scan.svs"], name=sub)
        assert [s.entry_id for s in result.slides] == [{"a": 1, "b": 2}[sub]] and result.warnings == []
    assert (project / "project.qpproj").read_bytes() == before["project.qpproj"]  # URIs left for QuPath to update
    entries = qpproj(project)["images"]
    assert _boxes_of(import_file(project, entries[0])) == [(100, 100, 300, 300)]
    assert _boxes_of(import_file(project, entries[1])) == [(1200, 800, 1500, 1100)]


def test_which_of_two_images_of_the_same_name_is_meant_must_be_known(tmp_path):
    slides = _same_name_slides(tmp_path / "slides")
    project = _qupath_project(tmp_path / "project", slides)
    before = snapshot(project)
    preds = _predictions(tmp_path)
    # the slide not given: its name matches two entries
    with pytest.raises(InputError, match=r"2 images named scan\.svs \(entries 1, 2\).*--slide"):
        convert(tmp_path, [preds["a"]], project)
    # both entries' slides gone, and a scan.svs from elsewhere given: it could be either
    for slide in slides:
        slide.unlink()
    elsewhere = tmp_path / "elsewhere" / "scan.svs"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(b"c")
    with pytest.raises(InputError, match=r"entries 1, 2\) whose slides cannot be found"):
        convert(tmp_path, [preds["a"]], project, slides=[elsewhere])
    assert snapshot(project) == before and not (tmp_path / "out").exists()


def test_objects_an_older_version_wrote_by_image_name_are_reported(tmp_path, slide_files):
    project = _existing_project(tmp_path / "project", slide_files["old.ndpi"])
    (project / "geojson").mkdir()
    (project / "geojson" / "old.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    result = convert(tmp_path, [ours(tmp_path / "a.geojson", "old.ndpi")], project)
    (warning,) = [w for w in result.warnings if "older slidemill-to-qupath" in w]
    assert "geojson/old.geojson" in warning and "slidemill/objects/<entryID>.geojson" in warning
    assert (project / "geojson" / "old.geojson").exists()  # reported, not deleted
    assert import_file(project, qpproj(project)["images"][0]).exists()


def test_a_dicom_folder_is_pointed_at_its_one_series(tmp_path, handout):
    """QuPath is given a file of the folder's one series; a folder of two series is refused, never one of
    them picked in silence (the same rule open_slide applies)."""
    import shutil

    from slidemill.to_qupath.project import image_file

    both = handout / "cases" / "two-dicom-series"
    with pytest.raises(InputError, match="2 DICOM series"):
        image_file(both)
    one = tmp_path / "one-series"
    one.mkdir()
    shutil.copy(both / "sm_image.dcm", one / "sm_image.dcm")
    assert image_file(one) == one / "sm_image.dcm"
