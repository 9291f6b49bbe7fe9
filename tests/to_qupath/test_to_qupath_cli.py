"""The command line: what it prints, its exit codes, and that a refused run writes nothing."""

import json
import shlex
import subprocess
import sys
from pathlib import Path

from to_qupath_helpers import ours, plain, polygon_feature, snapshot, square
from typer.testing import CliRunner

from slidemill.shared.contracts import Report, load_contract
from slidemill.to_qupath import file_problems
from slidemill.to_qupath.cli import app

BIN = Path(sys.executable).parent / "slidemill-to-qupath"
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_project_run_prints_the_one_import_command(tmp_path, slide_files):
    source = ours(tmp_path / "a.geojson", "slide-a.svs")
    project = tmp_path / "qupath project"
    result = subprocess.run([str(BIN), str(source), "--out", str(tmp_path / "out"), "--project", str(project),
                             "--slide", str(slide_files["slide-a.svs"]), "--log-format", "json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert shlex.split(line) == ["QuPath", "script", f"--project={project.resolve()}/project.qpproj",
                                 "--save", f"{project.resolve()}/scripts/import-slidemill.groovy"]
    assert all(json.loads(log)["level"] for log in result.stderr.splitlines())  # logs are JSON lines
    report = load_contract(tmp_path / "out" / "report.json", Report)
    assert report.counts["project_entries_new"] == 1
    assert str(project.resolve() / "project.qpproj") in report.outputs


def test_plain_run_prints_a_summary(tmp_path):
    result = invoke(ours(tmp_path / "a.geojson", "slide-a.svs"), "--out", tmp_path / "out",
                    "--object-type", "detection", "--gzip")
    assert result.exit_code == 0, result.output
    assert "4 objects for 1 slide(s)" in result.stdout
    assert file_problems(tmp_path / "out" / "slide-a.geojson.gz") == []


def test_existing_out_needs_overwrite(tmp_path):
    source = ours(tmp_path / "a.geojson")
    assert invoke(source, "--out", tmp_path / "out").exit_code == 0
    result = invoke(source, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "--overwrite" in result.output
    assert invoke(source, "--out", tmp_path / "out", "--overwrite").exit_code == 0


def test_missing_slide_is_exit_2_and_writes_nothing(tmp_path):
    source = ours(tmp_path / "a.geojson", "slide-a.svs")
    result = invoke(source, "--out", tmp_path / "out", "--project", tmp_path / "project")
    assert result.exit_code == 2
    assert "slide-a.svs" in result.output and "--slide" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "project").exists()
    result = invoke(source, "--out", tmp_path / "out", "--slide", tmp_path / "nowhere.svs")
    assert result.exit_code == 2 and "nowhere.svs: slide does not exist" in result.output


def test_broken_project_file_is_exit_2_with_one_paragraph(tmp_path, slide_files):
    project = tmp_path / "project"
    project.mkdir()
    (project / "project.qpproj").write_text("{ not json")
    before = snapshot(project)
    result = invoke(ours(tmp_path / "a.geojson"), "--out", tmp_path / "out", "--project", project,
                    "--slide", slide_files["slide-a.svs"])
    assert result.exit_code == 2
    message = result.output.strip()
    assert message.startswith("error: ") and "\n" not in message
    assert "project.qpproj: is not valid JSON" in message and "left as it was" in message
    assert snapshot(project) == before and not (tmp_path / "out").exists()


def test_invalid_annotations_contract_is_exit_2(tmp_path):
    bad = tmp_path / "bad.geojson"
    bad.write_text(json.dumps({"schema": "slidemill/annotations", "schema_version": "1.0",
                               "type": "FeatureCollection", "features": [{"type": "Feature"}]}))
    result = invoke(bad, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "bad.geojson: is not a valid slidemill/annotations file" in result.output
    newer = tmp_path / "newer.geojson"
    newer.write_text(json.dumps({"schema": "slidemill/annotations", "schema_version": "2.0",
                                 "type": "FeatureCollection", "features": []}))
    result = invoke(newer, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "schema_version 2.0 is not supported" in result.output
    assert not (tmp_path / "out").exists()


def test_not_annotations_at_all_is_exit_2(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    result = invoke(text, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "notes.txt" in result.output
    broken = tmp_path / "cut.geojson.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage")
    result = invoke(broken, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "cut.geojson.gz: cannot be read" in result.output
    assert not (tmp_path / "out").exists()


def test_two_slides_with_the_same_output_name_are_refused(tmp_path):
    a = ours(tmp_path / "a.geojson", "same.svs")
    b = ours(tmp_path / "b.geojson", "same.ndpi")
    result = invoke(a, b, "--out", tmp_path / "out")
    assert result.exit_code == 2 and "same.geojson" in result.output


def test_several_files_for_one_slide_are_written_together(tmp_path):
    a = ours(tmp_path / "a.geojson", "slide-a.svs")
    extra = plain(tmp_path / "slide-a.extra.json", [polygon_feature(square(5000, 5000), {"classification": "Tumor"})])
    # the plain export names no slide: its file name matches the slide the other file names
    result = invoke(a, extra, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    features = json.loads((tmp_path / "out" / "slide-a.geojson").read_text())["features"]
    assert len(features) == 5
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json", "slide-a.geojson"]


def test_two_slides_with_the_same_name_are_refused(tmp_path):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "s.svs").write_bytes(b"")
    result = invoke(ours(tmp_path / "a.geojson", "s.svs"), "--out", tmp_path / "out",
                    "--slide", tmp_path / "x" / "s.svs", "--slide", tmp_path / "y" / "s.svs")
    assert result.exit_code == 2 and "same name" in result.output


def test_folder_that_is_not_a_project_is_exit_2_and_untouched(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "table.csv").write_text("a,b\n")
    result = invoke(ours(tmp_path / "a.geojson"), "--out", tmp_path / "out", "--project", folder)
    assert result.exit_code == 2
    assert "results: is not a QuPath project" in result.output and "Traceback" not in result.output
    assert snapshot(folder) == {"table.csv": b"a,b\n"} and not (tmp_path / "out").exists()
