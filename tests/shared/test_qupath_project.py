"""Reading QuPath projects: images, slides found as QuPath finds them after a move, exported annotations,
the class list, and the export script."""

import json
import shutil
from pathlib import Path

import pytest

from slidemill.shared.errors import InputError, MissingInputError
from slidemill.shared.qupath_project import (
    EXPORT_DIR,
    EXPORT_SCRIPT,
    EXPORT_SCRIPT_FILE,
    export_command,
    java_file_uri,
    read_project,
    uri_to_path,
    write_export_script,
)


def make_project(folder: Path, slides: list[Path], *, classes=None, wrapped=False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i, slide in enumerate(slides, start=1):
        builder = {"builderType": "uri", "uri": java_file_uri(slide), "args": []}
        if wrapped and i == 1:  # a rotated image: QuPath nests the original server's builder
            builder = {"builderType": "rotated", "rotation": "ROTATE_90", "builder": builder}
        images.append({"serverBuilder": builder, "entryID": i, "randomizedName": f"r{i}",
                       "imageName": slide.name, "metadata": {}})
    data = {"version": "0.5.1", "createTimestamp": 1, "modifyTimestamp": 1,
            "uri": java_file_uri(folder / "project.qpproj"), "lastID": len(slides), "images": images}
    (folder / "project.qpproj").write_text(json.dumps(data))
    if classes is not None:
        (folder / "classifiers").mkdir()
        (folder / "classifiers" / "classes.json").write_text(json.dumps({"pathClasses": classes}))
    return folder / "project.qpproj"


@pytest.fixture
def layout(tmp_path):
    """lab/project/ with its slides in lab/slides/ (two images of the same name in two folders)."""
    lab = tmp_path / "lab"
    (lab / "slides" / "a").mkdir(parents=True)
    (lab / "slides" / "b").mkdir(parents=True)
    one, two = lab / "slides" / "a" / "slide 1.svs", lab / "slides" / "b" / "slide 1.svs"
    one.write_bytes(b"x")
    two.write_bytes(b"y")
    make_project(lab / "project", [one, two], classes=[{"name": "Tumor", "color": -3670016},
                                                       {"name": "Tumör: Positive", "color": -377282}])
    return lab


def test_uri_round_trip():
    path = Path("/data/my slides/ü #1.svs")
    assert uri_to_path(java_file_uri(path)) == path
    assert uri_to_path("file:///data/x.svs") == Path("/data/x.svs")
    assert uri_to_path("https://host/x.svs") is None


def test_images_slides_and_classes(layout):
    project = read_project(layout / "project")
    assert [(i.entry_id, i.name, i.found_by) for i in project.images] == [("1", "slide 1.svs", "uri"),
                                                                       ("2", "slide 1.svs", "uri")]
    assert [i.slide for i in project.images] == [layout / "slides/a/slide 1.svs", layout / "slides/b/slide 1.svs"]
    assert project.classes == [("Tumor", (200, 0, 0)), ("Tumör: Positive", (250, 62, 62))]
    assert project.exported == []


def test_moved_project_finds_slides_relative_to_itself(layout, tmp_path):
    moved = tmp_path / "elsewhere" / "lab"
    shutil.move(layout, moved)
    project = read_project(moved / "project" / "project.qpproj")
    assert [i.found_by for i in project.images] == ["relative to the project"] * 2
    assert [i.slide for i in project.images] == [moved / "slides/a/slide 1.svs", moved / "slides/b/slide 1.svs"]


def test_slides_found_by_name_in_the_folders_given(tmp_path):
    gone = tmp_path / "scanner" / "case.ndpi"
    gone.parent.mkdir()
    gone.write_bytes(b"x")
    make_project(tmp_path / "p", [gone], wrapped=True)
    shutil.rmtree(gone.parent)
    assert read_project(tmp_path / "p").images[0].slide is None
    copy = tmp_path / "copies" / "case.ndpi"
    copy.parent.mkdir()
    copy.write_bytes(b"x")
    image = read_project(tmp_path / "p", search_dirs=[tmp_path / "nothing", copy.parent]).images[0]
    assert (image.slide, image.found_by) == (copy, "search folder")


def test_exported_annotations_by_entry_id(layout):
    export = layout / "project" / EXPORT_DIR
    export.mkdir(parents=True)
    (export / "2.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    (export / "1.geojson.part").write_text("{")  # an export still being written is not an export
    project = read_project(layout / "project")
    assert [i.annotations for i in project.images] == [None, export / "2.geojson"]


def test_export_script_is_written_once_and_names_the_command(layout):
    project = read_project(layout / "project")
    before = (layout / "project" / "project.qpproj").read_bytes()
    path = write_export_script(project)
    assert path == layout / "project" / EXPORT_SCRIPT_FILE and path.read_text() == EXPORT_SCRIPT
    mtime = path.stat().st_mtime_ns
    write_export_script(project)
    assert path.stat().st_mtime_ns == mtime
    assert (layout / "project" / "project.qpproj").read_bytes() == before
    command = export_command(project.file, path)
    assert command.startswith("QuPath script --project=") and command.endswith("export-slidemill.groovy")
    # the script writes by entry ID into the folder read_project looks in, via a partial file
    assert "'slidemill', 'annotations'" in EXPORT_SCRIPT and "entry.getID() + '.geojson'" in EXPORT_SCRIPT
    assert EXPORT_DIR == "slidemill/annotations" and "ATOMIC_MOVE" in EXPORT_SCRIPT


@pytest.mark.parametrize("content, message", [("{", "cannot be read"), ('{"images": 3}', "not a QuPath project"),
                                              ('{"images": [{"imageName": "x"}]}', "entryID")])
def test_broken_projects_are_refused(tmp_path, content, message):
    (tmp_path / "project.qpproj").write_text(content)
    with pytest.raises(InputError, match=message):
        read_project(tmp_path)


def test_not_a_project(tmp_path):
    with pytest.raises(MissingInputError):
        read_project(tmp_path / "missing")
    with pytest.raises(InputError, match="no project.qpproj"):
        read_project(tmp_path)


def test_a_file_name_several_images_share_is_not_searched_by_name(tmp_path):
    """Two images named case.ndpi, both gone from where the project says: a case.ndpi in a --slide-dir
    folder could be either, so neither gets it (a unique name is still found by name)."""
    slides = [tmp_path / "scanner" / d / n for d, n in (("a", "case.ndpi"), ("b", "case.ndpi"), ("c", "other.ndpi"))]
    for slide in slides:
        slide.parent.mkdir(parents=True)
        slide.write_bytes(b"x")
    make_project(tmp_path / "p", slides)
    shutil.rmtree(tmp_path / "scanner")
    copies = tmp_path / "copies"
    copies.mkdir()
    for name in ("case.ndpi", "other.ndpi"):
        (copies / name).write_bytes(b"x")
    images = read_project(tmp_path / "p", search_dirs=[copies]).images
    assert [(i.slide, i.found_by) for i in images] == [(None, None), (None, None),
                                                        (copies / "other.ndpi", "search folder")]
    assert [bool(i.problem) for i in images] == [True, True, False]
    assert "2 images of the project are files named case.ndpi" in images[0].problem
