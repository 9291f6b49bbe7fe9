"""`make demo`'s script on the bundled sample: it finishes, prints where to look, and leaves the QuPath
project, the preview PNGs and every step's report (valid against schemas/report.schema.json) in one folder."""

import json
import subprocess
import time

import jsonschema
import pytest
from pipeline_support import BIN, REPO, require_tools

pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_pipeline_into_one_folder(tmp_path):
    require_tools()
    out = tmp_path / "demo-output"
    t0 = time.perf_counter()
    result = subprocess.run(["bash", str(REPO / "demo" / "run-demo.sh"), str(out)], capture_output=True, text=True,
                            env={"BIN": str(BIN), "PATH": "/usr/bin:/bin"}, timeout=600)
    took = time.perf_counter() - t0
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert took < 600, f"the demo took {took:.0f} s; it must finish within 10 minutes"
    for line in ["Where to look", "previews/", "reports/", "qupath-project/project.qpproj", "QuPath script --project="]:
        assert line in result.stdout, line

    project = json.loads((out / "qupath-project" / "project.qpproj").read_text())
    assert [image["imageName"] for image in project["images"]] == ["CMU-1-Small-Region.svs"]
    entry_id = project["images"][0]["entryID"]
    assert (out / "qupath-project" / "slidemill" / "objects" / f"{entry_id}.geojson").is_file()
    previews = sorted(p.name for p in (out / "previews").glob("*.png"))
    assert previews == ["1-tiles-and-annotations.png", "2-training-curves.png", "3-prediction.png"]
    schema = json.loads((REPO / "schemas" / "report.schema.json").read_text())
    reports = sorted((out / "reports").glob("*.report.json"))
    assert [r.name.split("-", 1)[1] for r in reports] == [
        "tile.report.json", "train.report.json", "infer.report.json", "postprocess.report.json",
        "merge-annotations.report.json", "to-qupath.report.json"]
    for report in reports:
        data = json.loads(report.read_text())
        jsonschema.validate(data, schema, cls=jsonschema.Draft202012Validator)
        assert data["status"] == "ok", report.name
    # the sparse annotation's tissue classes come back as shapes on the slide
    shapes = json.loads((out / "slides" / "CMU-1-Small-Region" / "CMU-1-Small-Region.geojson").read_text())
    classes = {f["properties"]["classification"]["name"] for f in shapes["features"]}
    assert "Epithelium" in classes and classes <= {"Epithelium", "Stroma", "Other"}
