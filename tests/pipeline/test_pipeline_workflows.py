"""Every command line in run-local.sh, the Nextflow pipeline and the Argo WorkflowTemplate is one its
tool accepts, every engine runs every step, and the Argo file is a valid WorkflowTemplate.

Commands are checked with each tool's own parser (see pipeline_support), not by running them. The
Argo file is validated with hera's models of Argo's API (hera 7, generated from Argo's OpenAPI spec):
`WorkflowTemplate.model_validate`, plus a round trip through the models that must give the file back
unchanged, so a misspelt or misplaced key (which the models would silently drop) fails too.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from pipeline_support import BIN, PIPELINE, REPO, check_command_line, command_name, dockerfile_targets, installed
from workflow_files import (
    ARGO,
    MAIN_NF,
    NEXTFLOW_CONFIG,
    RUN_LOCAL,
    argo_command_lines,
    argo_document,
    argo_templates,
    image_tool,
    nextflow_command_lines,
    nextflow_processes,
    run_local_dry_run,
)

from slidemill.shared.qupath_project import EXPORT_DIR, java_file_uri

SOURCES = ["run-local", "run-local-model-shards", "run-local-project", "nextflow", "argo"]
# main.nf processes that run a tool under another name: the QuPath project's list, tile and import
PROCESS_TOOL = {"LIST_IMAGES": "tile", "TILE_PROJECT": "tile", "TO_QUPATH_PROJECT": "to_qupath"}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    root = tmp_path_factory.mktemp("wf")
    slides = root / "slides"
    slides.mkdir()
    for name in ["case-01.svs", "case-02.tiff"]:
        (slides / name).write_bytes(b"placeholder")
    (slides / "case-01.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    (slides / "notes.txt").write_text("not a slide")
    # a QuPath project of three images: case-01 (exported), case-02, and case-03 whose slide is gone
    images = [{"serverBuilder": {"builderType": "uri", "uri": java_file_uri(path), "args": []}, "entryID": i,
               "randomizedName": f"r{i}", "imageName": path.name, "metadata": {}}
              for i, path in enumerate([slides / "case-01.svs", slides / "case-02.tiff", root / "gone" / "case-03.svs"],
                                       start=1)]
    project = root / "project"
    (project / EXPORT_DIR).mkdir(parents=True)
    (project / "project.qpproj").write_text(json.dumps(
        {"version": "0.5.1", "createTimestamp": 1, "modifyTimestamp": 1,
         "uri": java_file_uri(project / "project.qpproj"), "lastID": 3, "images": images}))
    (project / EXPORT_DIR / "1.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    return root


def _nextflow_values(root) -> dict[str, str]:
    s = root / "nf"
    return {
        "id": "case-01",
        "slide": f"{s}/case-01.svs",
        "annotations": f"{s}/annotations/case-01.geojson",
        "task.cpus": "4",
        "tilesets": f"{s}/tilesets/case-01.tiles {s}/tilesets/case-02.tiles",
        "model": f"{s}/model",
        "shard": "1",
        "nshards": "4",
        "predictions": f"{s}/predictions/prediction-0 {s}/predictions/prediction-1",
        "shapes": f"{s}/case-01.shapes.geojson",
        "slide_args": f"--slide {s}/slides/case-01.svs --slide {s}/slides/case-02.svs",
        "project": f"{s}/project",
        "slide_dir_args": f"--slide-dir {s}/slide-dirs/slides",
    }


def _argo_values(root) -> dict[str, str]:
    data = f"{root}/argo/data"
    return {
        "inputs.parameters.slide": "case-01.svs",
        "inputs.parameters.shard": "2",
        "inputs.parameters.shards": "4",
        "=sprig.regexReplaceAll('\\\\.[^.]+$', inputs.parameters.slide, '')": "case-01",
        "=workflow.parameters.model != '' ? workflow.parameters.model : '/data/runs/' + workflow.parameters.run "
        "+ '/model'": "/data/runs/slidemill/model",
        "inputs.parameters.slide-path": "/data/slides/case-01.svs",
        "=workflow.parameters['qupath-project'] != '' ? workflow.parameters['qupath-project'] : '/data/runs/' + "
        "workflow.parameters.run + '/qupath-project'": "/data/runs/slidemill/qupath-project",
        "_data": data,
    }


def _entrypoints() -> dict[str, list[str]]:
    targets = dockerfile_targets((REPO / "docker" / "Dockerfile").read_text())
    return {name.replace("-", "_"): stage["entrypoint"] for name, stage in targets.items() if stage["entrypoint"]}


def commands_of(source: str, root) -> list:
    if source == "run-local":
        return run_local_dry_run(["--slides", str(root / "slides"), "--out", str(root / "out-a"),
                                  "--mpp", "1.0", "--tile-size", "256", "--epochs", "3", "--workers", "2"])
    if source == "run-local-model-shards":
        return run_local_dry_run(["--slides", str(root / "slides"), "--out", str(root / "out-b"),
                                  "--model", str(root / "model"), "--shards", "3", "--device", "cpu",
                                  "--slide-mpp", "0.25", "--postprocess-args", "--min-area-um2 50",
                                  "--merge-args", "--max-gap-um 4"])
    if source == "run-local-project":
        return run_local_dry_run(["--qupath-project", str(root / "project"), "--out", str(root / "out-c"),
                                  "--slide-dir", str(root / "slides"), "--bin", str(BIN), "--mpp", "1.0",
                                  "--epochs", "3", "--workers", "2"])
    if source == "nextflow":
        return nextflow_command_lines(_nextflow_values(root), {"shard_args": ["--shard 1/4", ""]})
    if source == "argo":
        values = _argo_values(root)
        data = values.pop("_data")
        lines = argo_command_lines(values, _entrypoints())
        for line in lines:  # the volume mounted at /data, and the train step's shell glob
            line.argv = [a.replace("/data/", f"{data}/").replace("/tiles/*/", "/tiles/case-01.svs/")
                         for a in line.argv]
        return lines
    raise ValueError(source)


@pytest.mark.parametrize("tool", PIPELINE)
@pytest.mark.parametrize("source", SOURCES)
def test_every_command_line_is_accepted_by_its_tool(source, tool, sandbox):
    if source == "run-local-model-shards" and tool in {"tile", "train"}:
        pytest.skip("with --model, run-local.sh neither tiles nor trains")
    lines = [c for c in commands_of(source, sandbox) if c.tool == tool]
    assert lines, f"{source} never runs {command_name(tool)}"
    if not installed(tool):
        pytest.skip(f"{command_name(tool)} is not installed yet: its command lines are checked once it lands")
    for line in lines:
        check_command_line(line.argv, where=line.where)


@pytest.mark.parametrize("source", SOURCES)
def test_steps_run_in_pipeline_order(source, sandbox):
    order = {tool: i for i, tool in enumerate(PIPELINE)}
    tools = [c.tool for c in commands_of(source, sandbox)]
    if source.startswith("run-local"):  # the shell runs them in order: each step after the one before
        seen = [order[t] for t in tools]
        first_use = sorted(set(seen), key=seen.index)
        assert first_use == sorted(first_use), tools
    expected = set(PIPELINE) - ({"tile", "train"} if source == "run-local-model-shards" else set())
    assert set(tools) == expected


# --- run-local.sh --------------------------------------------------------------------------------


def test_run_local_shards_each_slide_and_postprocesses_the_shards_together(sandbox):
    lines = commands_of("run-local-model-shards", sandbox)
    infer = [c for c in lines if c.tool == "infer"]
    assert [c.argv[c.argv.index("--shard") + 1] for c in infer] == ["0/3", "1/3", "2/3"] * 2
    posts = [c for c in lines if c.tool == "postprocess"]
    assert len(posts) == 2  # one per slide, over its three shards' predictions
    for post, slide in zip(posts, ["case-01", "case-02"], strict=True):
        assert [Path(a).name for a in post.argv[1:4]] == [f"prediction-shard{i}" for i in range(3)]
        assert slide in post.argv[1]
        assert "--min-area-um2" in post.argv
    merges = [c for c in lines if c.tool == "merge_annotations"]
    assert len(merges) == 2  # one per slide, over its one post-processed file
    for merge in merges:
        assert len([a for a in merge.argv if a.endswith(".geojson")]) == 2  # the input + --out


def test_run_local_trains_only_on_annotated_slides(sandbox):
    lines = commands_of("run-local", sandbox)
    tiles = [c for c in lines if c.tool == "tile"]
    assert len(tiles) == 1 and tiles[0].argv[1].endswith("case-01.svs")
    assert tiles[0].argv[tiles[0].argv.index("--annotations") + 1].endswith("case-01.geojson")
    assert len([c for c in lines if c.tool == "infer"]) == 2  # but infers every slide


@pytest.mark.parametrize("args, message", [
    ([], "--slides DIR is required"),
    (["--slides", "/no/such/folder", "--out", "x"], "/no/such/folder: the slides folder does not exist"),
    (["--slides", "{slides}", "--out", "{out}", "--shards", "0"], "--shards must be a whole number"),
    (["--slides", "{slides}", "--out", "{out}", "--model", "/no/model"], "/no/model: not a model folder"),
    (["--slides", "{empty}", "--out", "{out}"], "no slides found"),
    (["--bogus"], "unknown option '--bogus'"),
    (["--slides", "{twins}", "--out", "{out}"], "would both write OUT/slides/case; rename one"),
])
def test_run_local_usage_errors_exit_2(args, message, sandbox, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "twins").mkdir()
    for name in ["case.svs", "case.tiff"]:
        (tmp_path / "twins" / name).write_bytes(b"x")
    args = [a.format(slides=sandbox / "slides", out=tmp_path / "out", empty=tmp_path / "empty",
                     twins=tmp_path / "twins") for a in args]
    result = subprocess.run(["bash", str(RUN_LOCAL), *args], capture_output=True, text=True, timeout=60,
                            env={"PATH": f"{REPO / '.venv' / 'bin'}:/usr/bin:/bin"})
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_run_local_project_tiles_it_once_and_writes_each_image_back_into_it(sandbox):
    """--qupath-project: the images are listed, tiled in one run (the exported one), and each image whose
    slide is found is inferred and written into the same project by its own slide, results named by entry."""
    lines = commands_of("run-local-project", sandbox)
    out, project = sandbox / "out-c", sandbox / "project"
    listing, tiling = [c.argv for c in lines if c.tool == "tile"]
    assert "--list-images" in listing and listing[listing.index("--out") + 1] == str(out / "images.tsv")
    for argv in (listing, tiling):
        assert argv[argv.index("--qupath-project") + 1] == str(project)
    assert listing[listing.index("--slide-dir") + 1] == str(sandbox / "slides")
    [train] = [c.argv for c in lines if c.tool == "train"]
    assert train[1:train.index("--out")] == [str(out / "tiles" / "1")]  # the one exported image
    slides = {"1": sandbox / "slides" / "case-01.svs", "2": sandbox / "slides" / "case-02.tiff"}
    infers = [c.argv for c in lines if c.tool == "infer"]
    assert [(a[1], a[a.index("--out") + 1]) for a in infers] == [
        (str(slides[e]), str(out / "slides" / f"{e}.partial" / "prediction")) for e in ("1", "2")]
    to_qupath = [c.argv for c in lines if c.tool == "to_qupath"]
    assert [(a[a.index("--slide") + 1], a[a.index("--project") + 1]) for a in to_qupath] == [
        (str(slides[e]), str(project)) for e in ("1", "2")]  # entry 3's slide is gone: not inferred
    result = subprocess.run(["bash", str(RUN_LOCAL), "--qupath-project", str(project), "--out", str(out),
                             "--bin", str(BIN), "--dry-run"], capture_output=True, text=True, timeout=60)
    assert "entry 3 (case-03.svs) was not found there" in result.stderr, result.stderr


def test_run_local_project_image_without_its_slide_fails_and_the_run_says_so(tmp_path):
    """A real run (no step reaches a tool): the image whose slide is nowhere fails at find-slide, exit 2,
    with FAILED.txt and its summary row; the project is left as it was."""
    gone = tmp_path / "scanner" / "case.svs"
    project = tmp_path / "project"
    project.mkdir()
    images = [{"serverBuilder": {"builderType": "uri", "uri": java_file_uri(gone), "args": []}, "entryID": 7,
               "randomizedName": "r7", "imageName": "case.svs", "metadata": {}}]
    (project / "project.qpproj").write_text(json.dumps({"version": "0.5.1", "createTimestamp": 1,
                                                        "modifyTimestamp": 1, "lastID": 7, "images": images}))
    before = (project / "project.qpproj").read_bytes()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "model-card.json").write_text("{}")
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(RUN_LOCAL), "--qupath-project", str(project), "--out", str(out),
                             "--model", str(tmp_path / "model"), "--bin", str(BIN)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    rows = [line.split("\t") for line in (out / "summary.tsv").read_text().splitlines()[1:]]
    assert [row[:4] for row in rows] == [["7", "failed", "find-slide", "2"]]
    assert f"{gone}: the slide of entry 7 (case.svs) was not found there" in rows[0][4]
    assert "step: find-slide" in (out / "slides" / "7.failed" / "FAILED.txt").read_text()
    assert (project / "project.qpproj").read_bytes() == before
    assert sorted(p.name for p in project.iterdir()) == ["project.qpproj"]


def test_run_local_project_with_nothing_exported_stops_with_the_qupath_command(tmp_path):
    """The first run on a project nobody exported yet: tile writes the export script into it, and the
    workflow stops (exit 2) passing on the QuPath command that runs it; no model, no image inferred."""
    from slidemill.shared.qupath_project import EXPORT_SCRIPT, EXPORT_SCRIPT_FILE

    slide = tmp_path / "slides" / "case.svs"
    slide.parent.mkdir()
    slide.write_bytes(b"placeholder")
    project = tmp_path / "project"
    project.mkdir()
    images = [{"serverBuilder": {"builderType": "uri", "uri": java_file_uri(slide), "args": []}, "entryID": 1,
               "randomizedName": "r1", "imageName": "case.svs", "metadata": {}}]
    (project / "project.qpproj").write_text(json.dumps({"version": "0.5.1", "createTimestamp": 1,
                                                        "modifyTimestamp": 1, "lastID": 1, "images": images}))
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(RUN_LOCAL), "--qupath-project", str(project), "--out", str(out),
                             "--bin", str(BIN)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "the QuPath project could not be tiled (exit 2)" in result.stderr
    assert f"Run `QuPath script --project={project / 'project.qpproj'}" in result.stderr, result.stderr
    assert (project / EXPORT_SCRIPT_FILE).read_text() == EXPORT_SCRIPT
    assert not (out / "model").exists() and not (out / "slides" / "1").exists()


@pytest.mark.parametrize("args, message", [
    (["--slides", "{slides}", "--qupath-project", "{project}", "--out", "{out}"], "not both"),
    (["--qupath-project", "{tmp}/no-project", "--out", "{out}"], "the QuPath project does not exist"),
    (["--qupath-project", "{project}", "--out", "{out}", "--annotations", "{slides}"],
     "--annotations cannot be given with --qupath-project"),
    (["--qupath-project", "{project}", "--out", "{out}", "--slide-dir", "{tmp}/none"], "the --slide-dir folder does "
                                                                                        "not exist"),
    (["--slides", "{slides}", "--out", "{out}", "--slide-dir", "{slides}"], "--slide-dir goes with --qupath-project"),
])
def test_run_local_project_usage_errors_exit_2(args, message, sandbox, tmp_path):
    args = [a.format(slides=sandbox / "slides", project=sandbox / "project", out=tmp_path / "out", tmp=tmp_path)
            for a in args]
    result = subprocess.run(["bash", str(RUN_LOCAL), *args, "--bin", str(BIN)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_run_local_help():
    result = subprocess.run(["bash", str(RUN_LOCAL), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "--slides DIR" in result.stdout and "--shards N" in result.stdout and "set -uo" not in result.stdout


# --- Nextflow ------------------------------------------------------------------------------------


def test_nextflow_processes_labels_stubs_and_containers():
    processes = nextflow_processes(MAIN_NF.read_text())
    tools = {"TILE", "TRAIN", "INFER", "POSTPROCESS", "MERGE_ANNOTATIONS", "TO_QUPATH"}
    assert set(processes) == tools | set(PROCESS_TOOL)
    config = NEXTFLOW_CONFIG.read_text()
    for name, process in processes.items():
        tool = PROCESS_TOOL.get(name, name.lower())
        assert process.labels == (["gpu"] if tool in {"train", "infer"} else ["cpu"]), name
        assert process.stub, f"process {name} needs a stub: block that creates its outputs"
        m = re.search(rf"withName:\s*{name}\s*\{{\s*container\s*=\s*\"([^\"]+)\"", config)
        assert m, f"nextflow.config gives process {name} no container"
        assert image_tool(m.group(1).replace("${params.registry}", "r").replace("${params.image_tag}", "t")) == tool
        if tool in {"train", "infer"}:
            assert "-gpu" in m.group(1)
    for profile in ["docker", "singularity", "slurm"]:
        assert re.search(rf"^\s*{profile}\s*\{{", config, re.M), f"no {profile} profile"
    assert "--gpus all" in config and "--nv" in config and "--gres=gpu:1" in config
    # a failed slide is dropped and the others go on; a failed training stops the run
    assert "task.exitStatus == 2 || task.attempt > 1 ? 'ignore' : 'retry'" in config
    assert re.search(r"withName: TRAIN \{ errorStrategy = .*'terminate'", config)


def test_nextflow_shards_a_large_slide_and_postprocesses_the_shards_together():
    text = MAIN_NF.read_text()
    assert "nextflow.enable.dsl = 2" in text
    assert re.search(r"params\.large_slide_mb", text) and re.search(r"params\.shards", text)
    assert "groupKey(id, n)" in text and "groupTuple(remainder: false)" in text  # wait for every shard of a slide
    assert re.search(r"parts = INFER\.out\.prediction", text)  # grouped straight from infer
    assert re.search(r"POSTPROCESS\(parts\)", text)
    assert re.search(r"MERGE_ANNOTATIONS\(POSTPROCESS\.out\.annotations\)", text)
    braces = text.count("{") - text.count("}")
    assert braces == 0, "unbalanced braces in main.nf"


# --- Argo ----------------------------------------------------------------------------------------


def test_argo_file_is_a_valid_workflow_template():
    from hera.workflows.models import WorkflowTemplate

    doc = argo_document()
    assert doc["apiVersion"] == "argoproj.io/v1alpha1" and doc["kind"] == "WorkflowTemplate"
    model = WorkflowTemplate.model_validate(doc)
    back = json.loads(model.model_dump_json(by_alias=True, exclude_none=True))
    assert back == json.loads(json.dumps(doc)), "keys the WorkflowTemplate model does not know (misspelt or misplaced)"


def test_hera_round_trip_catches_a_misspelt_key():
    from hera.workflows.models import WorkflowTemplate

    doc = argo_document()
    doc["spec"]["templates"][-1]["contianer"] = doc["spec"]["templates"][-1].pop("container")
    back = json.loads(WorkflowTemplate.model_validate(doc).model_dump_json(by_alias=True, exclude_none=True))
    assert back != json.loads(json.dumps(doc))


def test_argo_references_resolve():
    doc = argo_document()
    templates = argo_templates(doc)
    assert doc["spec"]["entrypoint"] in templates
    workflow_params = {p["name"] for p in doc["spec"]["arguments"]["parameters"]}
    assert {"slides", "large-slides"} <= workflow_params
    text = ARGO.read_text()
    for used in set(re.findall(r"workflow\.parameters\.([\w-]+)", text)) | set(
            re.findall(r"workflow\.parameters\['([\w-]+)'\]", text)):
        assert used in workflow_params, f"workflow parameter {used} is used but not declared"
    for name, template in templates.items():
        declared = {p["name"] for p in template.get("inputs", {}).get("parameters", [])}
        body = yaml.safe_dump(template)
        for used in re.findall(r"inputs\.parameters\.([\w-]+)", body):
            assert used in declared, f"template {name} uses input {used} it does not declare"
        for task in template.get("dag", {}).get("tasks", []):
            assert task["template"] in templates, f"{name}/{task['name']}: no template {task['template']}"
            target = templates[task["template"]]
            needed = {p["name"] for p in target.get("inputs", {}).get("parameters", []) if "value" not in p}
            given = {p["name"] for p in task.get("arguments", {}).get("parameters", [])}
            assert needed == given, f"{name}/{task['name']}: gives {given}, template needs {needed}"
            names = {t["name"] for t in template["dag"]["tasks"]}
            for dep in re.findall(r"[\w-]+", re.sub(r"\.(Succeeded|Skipped|Failed|Errored|Daemoned)", "",
                                                       task.get("depends", ""))):
                assert dep in names, f"{name}/{task['name']} depends on unknown task {dep}"


def test_argo_gpu_for_train_and_infer_and_the_dag():
    templates = argo_templates(argo_document())
    for name in ["train", "infer"]:
        resources = templates[name]["container"]["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == "1", name
        assert templates[name]["container"]["image"].endswith("-gpu")
    for name in ["tile", "postprocess-one", "postprocess-four", "merge-annotations", "to-qupath"]:
        assert "nvidia.com/gpu" not in templates[name]["container"]["resources"].get("limits", {})
    pipeline = {t["name"]: t for t in templates["pipeline"]["dag"]["tasks"]}
    assert pipeline["slide"]["withParam"] == "{{workflow.parameters.slides}}"
    assert pipeline["large-slide"]["template"] == "slide-sharded"
    sharded = {t["name"]: t for t in templates["slide-sharded"]["dag"]["tasks"]}
    shards = sharded["infer"]["withItems"]
    # every shard's prediction is post-processed in one task, as the slide's one raster
    assert sharded["postprocess"]["template"] == "postprocess-four" and "withItems" not in sharded["postprocess"]
    infer_out = templates["infer"]["container"]["args"][templates["infer"]["container"]["args"].index("--out") + 1]
    post_args = templates["postprocess-four"]["container"]["args"]
    post_inputs = post_args[:post_args.index("--out")]
    assert post_inputs == [infer_out.replace("{{inputs.parameters.shard}}", i) for i in shards]
    assert len(shards) == 4
    assert {p["value"] for p in sharded["infer"]["arguments"]["parameters"] if p["name"] == "shards"} == {"4"}
    assert "to-qupath" in {t["name"] for t in templates["slide-whole"]["dag"]["tasks"]}
    # one failed slide never stops the others, and a failed tile step only leaves its slide out of training
    assert templates["pipeline"]["dag"]["failFast"] is False
    assert pipeline["tile"]["continueOn"] == {"failed": True} and "tile.Failed" in pipeline["train"]["depends"]
    assert templates["to-qupath"]["synchronization"]["mutexes"], "project updates must not race"


def test_argo_runs_as_the_images_non_root_user():
    spec = argo_document()["spec"]
    user = dockerfile_targets((REPO / "docker" / "Dockerfile").read_text())["tile"]["user"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert str(spec["securityContext"]["runAsUser"]) == user.split(":")[0]


@pytest.mark.parametrize("args", [["--no-such-option"], ["--epochs", "0"], ["--device", "tpu"], []])
def test_the_checker_rejects_what_the_tool_rejects(args, tmp_path):
    """A green command-line check means something: the same checker fails a line the tool refuses."""
    if not installed("train"):
        pytest.skip("slidemill-train is not installed yet")
    argv = [command_name("train"), str(tmp_path / "tiles"), "--out", str(tmp_path / "model"), *args]
    if not args:
        argv = [command_name("train"), str(tmp_path / "tiles")]  # --out missing
    with pytest.raises(pytest.fail.Exception, match="rejects"):
        check_command_line(argv, where="test")


def test_argo_infer_accepts_every_shard_the_dags_ask_for(sandbox):
    """The DAG tasks pass shard/shards to the infer template: each combination is a valid --shard."""
    if not installed("infer"):
        pytest.skip("slidemill-infer is not installed yet")
    templates = argo_templates(argo_document())
    combos = set()
    for template in templates.values():
        for task in template.get("dag", {}).get("tasks", []):
            if task["template"] != "infer":
                continue
            given = {p["name"]: p["value"] for p in task["arguments"]["parameters"]}
            shards = [given["shard"]] if given["shard"] != "{{item}}" else task["withItems"]
            combos |= {(shard, given["shards"]) for shard in shards}
    assert combos == {("0", "1"), ("0", "4"), ("1", "4"), ("2", "4"), ("3", "4")}
    for shard, count in sorted(combos):
        values = _argo_values(sandbox) | {"inputs.parameters.shard": shard, "inputs.parameters.shards": count}
        data = values.pop("_data")
        line = next(c for c in argo_command_lines(values, _entrypoints()) if c.tool == "infer")
        check_command_line([a.replace("/data/", f"{data}/") for a in line.argv], where=f"{line.where} {shard}/{count}")


GROOVY_PARSE = """
import org.codehaus.groovy.control.*
args.each { f ->
    def unit = new CompilationUnit()
    unit.addSource(new File(f))
    unit.compile(Phases.SEMANTIC_ANALYSIS)
}
"""


def test_nextflow_files_parse_as_groovy(tmp_path):
    """Nextflow cannot run here, but its files are Groovy: a syntax error shows up in Groovy's parser.
    Runs where `groovy` is installed (Debian: apt-get install groovy); skipped, saying so, elsewhere."""
    groovy, java = shutil.which("groovy"), shutil.which("java")
    if not groovy or not java:
        pytest.skip("groovy is not installed (apt-get install groovy): main.nf and nextflow.config are checked "
                    "by the static tests above only")
    env = {**os.environ, "JAVA_HOME": str(Path(java).resolve().parents[1])}
    script = tmp_path / "parse.groovy"
    script.write_text(GROOVY_PARSE)
    broken = tmp_path / "broken.nf"
    broken.write_text(MAIN_NF.read_text().replace("groupTuple(remainder: false)", "groupTuple(remainder: false"))
    result = subprocess.run([groovy, str(script), str(MAIN_NF), str(NEXTFLOW_CONFIG)], capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    result = subprocess.run([groovy, str(script), str(broken)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0 and "unexpected token" in result.stderr  # the check can fail


# --- a QuPath project as the input of Nextflow and Argo ------------------------------------------


def test_nextflow_project_mode_lists_tiles_once_and_writes_each_image_into_the_project():
    from slidemill.tile.project import IMAGE_LIST_COLUMNS

    text = MAIN_NF.read_text()
    processes = nextflow_processes(text)
    assert "--list-images --out images.tsv" in processes["LIST_IMAGES"].script
    assert re.search(r"LIST_IMAGES\(project, dirs\)\.images\.splitCsv\(header: true, sep: '\\t'\)", text)
    assert set(re.findall(r"row\.(\w+)", text)) <= set(IMAGE_LIST_COLUMNS)  # the list's own columns
    assert "TRAIN(TILE_PROJECT.out.tilesets.collect())" in text  # one tile run, one class table
    # each image's predictions joined with its own slide by entry ID, one image at a time into the project
    assert "MERGE_ANNOTATIONS.out.annotations.map { f -> tuple(f.baseName, f) }.join(slides)" in text
    assert "TO_QUPATH_PROJECT(merged, project)" in text
    body = processes["TO_QUPATH_PROJECT"].body
    assert re.search(r"^\s*maxForks 1$", body, re.M)
    assert "--slide ${slide} --project ${project}" in processes["TO_QUPATH_PROJECT"].script
    # a project that cannot be listed or tiled (nothing exported yet) stops the run, saying why
    assert re.search(r"withName: 'LIST_IMAGES\|TILE_PROJECT' \{ errorStrategy = .*'terminate'",
                     NEXTFLOW_CONFIG.read_text())


def test_argo_project_mode_is_its_own_dag_over_the_listed_images():
    from slidemill.tile.project import IMAGE_LIST_COLUMNS

    templates = argo_templates(argo_document())
    pipeline = {t["name"]: t for t in templates["pipeline"]["dag"]["tasks"]}
    for name in ["tile", "tile-large", "train", "slide", "large-slide"]:  # slides mode only without a project
        assert "'{{workflow.parameters.qupath-project}}' == ''" in pipeline[name]["when"], name
    assert pipeline["project"]["when"] == "'{{workflow.parameters.qupath-project}}' != ''"
    project = {t["name"]: t for t in templates[pipeline["project"]["template"]]["dag"]["tasks"]}
    assert project["images"]["template"] == "list-images" and project["tile"]["template"] == "tile-project"
    image = project["image"]
    assert image["withParam"] == "{{tasks.images.outputs.parameters.images}}"
    assert "images" in image["depends"] and "train.Succeeded" in image["depends"]
    given = {p["name"]: p["value"] for p in image["arguments"]["parameters"]}
    assert given == {"slide": "{{item.id}}", "slide-path": "{{item.slide}}"}  # results by entry ID
    assert {"id", "slide"} <= set(IMAGE_LIST_COLUMNS)
    listing = templates["list-images"]
    args = listing["container"]["args"]
    [output] = listing["outputs"]["parameters"]
    assert "--list-images" in args and output["valueFrom"]["path"] == args[args.index("--out") + 1]
    assert output["valueFrom"]["path"].endswith(".json")  # withParam takes a JSON list
    to_qupath = templates["to-qupath"]["container"]["args"]
    assert to_qupath[to_qupath.index("--slide") + 1] == "{{inputs.parameters.slide-path}}"
    assert "workflow.parameters['qupath-project']" in to_qupath[to_qupath.index("--project") + 1]


def test_argo_list_images_gives_the_json_list_the_project_dag_fans_out_over(sandbox, tmp_path):
    """The list-images template's command line, run: a JSON list with every entry, each slide where found."""
    if not installed("tile"):
        pytest.skip("slidemill-tile is not installed yet")
    values = _argo_values(sandbox) | {"workflow.parameters.qupath-project": str(sandbox / "project")}
    data = values.pop("_data")
    [line] = [c for c in argo_command_lines(values, _entrypoints()) if c.where.endswith("template list-images")]
    argv = [a.replace("/data/", f"{data}/").replace("/tmp/images.json", str(tmp_path / "images.json"))
            for a in line.argv]
    result = subprocess.run([str(BIN / Path(argv[0]).name), *argv[1:]], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "images.json").read_text())
    assert [(r["id"], r["slide"], r["found_by"]) for r in rows] == [
        ("1", str(sandbox / "slides" / "case-01.svs"), "uri"), ("2", str(sandbox / "slides" / "case-02.tiff"), "uri"),
        ("3", str(sandbox / "gone" / "case-03.svs"), "")]
