"""Sharded runs give the same shapes as unsharded ones through every shipped way of running them.

The workflows' own command lines (run-local.sh run as it is; the Nextflow processes' scripts and the
Argo templates' arguments read out of the files, as Nextflow and Argo are not installed here) run
for real on a synthetic slide 2048 pixels high, so 4 shards cut it exactly at rows 512, 1024 and
1536, with a model whose output is a known function of the pixels (a nearest-colour 1x1
convolution: the label raster is the slide's colour map exactly). On the cuts lie a 160 µm² shape
(which each shard alone would split into two 80 µm² pieces below `--min-area-um2 100`), a ring
whose 16 µm² hole is cut in two, and a large square whose sides smoothing must not notch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pipeline_support import BIN, REPO, dockerfile_targets, require_tools, tool_of
from shapely.geometry import box, shape
from workflow_files import (
    MAIN_NF,
    RUN_LOCAL,
    argo_command_lines,
    nextflow_params,
    nextflow_processes,
    substitute_groovy,
)

sys.path.insert(0, str(REPO / "tests" / "infer"))
from infer_support import conv_onnx, oracle_weights, write_model_dir

from slidemill.shared.testing import SyntheticShape, write_synthetic_slide

W, H, MPP = 256, 2048, 0.5  # level-0 px, µm per px; the model works at the slide's resolution
COLOURS = {"Tissue": (222, 160, 200), "Tumor": (110, 30, 150), "Stroma": (250, 110, 40)}
SHAPES = [
    SyntheticShape("Tissue", box(0, 0, W, H), COLOURS["Tissue"]),
    # 32 x 20 px = 160 µm², 10 rows on each side of the cut at 512
    SyntheticShape("Tumor", box(20, 502, 52, 522), COLOURS["Tumor"]),
    # 60 x 60 px = 900 µm² with an 8 x 8 px = 16 µm² hole cut in two at 1024
    SyntheticShape("Stroma", box(100, 994, 160, 1054).difference(box(126, 1020, 134, 1028)), COLOURS["Stroma"]),
    # 140 x 120 px across the cut at 1536
    SyntheticShape("Tumor", box(60, 1480, 200, 1600), COLOURS["Tumor"]),
]
SHARDS = 4


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    require_tools(["infer", "postprocess", "merge_annotations", "to_qupath"])
    root = tmp_path_factory.mktemp("sharded")
    slides = root / "slides"
    slides.mkdir()
    slide = write_synthetic_slide(slides / "case.tiff", W, H, mpp=MPP, shapes=SHAPES, tile=256, noise=0)
    names = list(COLOURS)
    weight, bias = oracle_weights([COLOURS[n] for n in names])
    model = write_model_dir(root / "model", conv_onnx(weight, bias, channels_in=3), names, mpp=MPP, tile=128)
    return root, slide, model


def shapes_and_areas(path: Path) -> list[tuple[str, dict, dict]]:
    data = json.loads(path.read_text())
    found = [(f["properties"]["classification"]["name"], f["geometry"], f["properties"]["measurements"])
             for f in data["features"]]
    return sorted(found, key=lambda item: json.dumps(item, sort_keys=True))


def check_known_answers(found, *, hole_filled: bool, smoothed: bool) -> None:
    by_class: dict[str, list] = {}
    for name, geometry, measurements in found:
        by_class.setdefault(name, []).append((shape(geometry), measurements["Area µm^2"]))
    small = [a for g, a in by_class["Tumor"] if g.bounds[3] < 600]
    assert len(small) == 1  # one whole shape, not two pieces, and not dropped
    assert small[0] >= 100 if smoothed else small[0] == 160.0
    [(ring, area)] = by_class["Stroma"]
    assert len(ring.interiors) == (0 if hole_filled else 1)
    if not smoothed:
        assert area == (900.0 if hole_filled else 884.0)
    [square] = [g for g, _ in by_class["Tumor"] if g.bounds[1] > 1400]
    band = square.intersection(box(0, 1500, W, 1572)).bounds  # the rows around the cut at 1536
    assert (band[0], band[2]) == (60.0, 200.0)  # no notch at the cut


def run_tool(argv: list[str], cwd: Path) -> None:
    argv = [str(BIN / Path(argv[0]).name), *argv[1:]]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}"


# --- run-local.sh --------------------------------------------------------------------------------


def test_run_local_sharded_equals_unsharded(inputs):
    root, slide, model = inputs
    post = "--min-area-um2 100 --fill-holes-um2 20 --smooth-px 1.5"
    outputs = []
    for shards in (1, SHARDS):
        out = root / f"local-{shards}"
        cmd = ["bash", str(RUN_LOCAL), "--slides", str(slide.parent), "--out", str(out), "--model", str(model),
               "--shards", str(shards), "--device", "cpu", "--workers", "1", "--bin", str(BIN),
               "--postprocess-args", post]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr
        outputs.append(shapes_and_areas(out / "slides" / "case" / "case.geojson"))
    assert outputs[0] == outputs[1]
    check_known_answers(outputs[1], hole_filled=True, smoothed=True)


# --- Nextflow ------------------------------------------------------------------------------------


def nextflow_script(process: str, values: dict[str, str]) -> list[str]:
    """The one slidemill command of a main.nf process, with its variables replaced."""
    import shlex

    text = MAIN_NF.read_text()
    proc = nextflow_processes(text)[process]
    table = {f"params.{k}": v for k, v in nextflow_params(text).items()} | values
    if "shard_args" in proc.script_defs:  # the one `def` of INFER, evaluated as Groovy would
        assert proc.script_defs["shard_args"] == "nshards > 1 ? \"--shard ${shard}/${nshards}\" : ''"
        table["shard_args"] = f"--shard {values['shard']}/{values['nshards']}" if int(values["nshards"]) > 1 else ""
    [line] = [ln.strip() for ln in proc.script.strip().splitlines() if ln.strip()]
    return shlex.split(substitute_groovy(line, table, f"main.nf {process}"))


def test_nextflow_sharded_equals_unsharded(inputs):
    root, slide, model = inputs
    outputs = []
    for shards in (1, SHARDS):
        work = root / f"nf-{shards}"
        predictions = []
        for shard in range(shards):
            task = work / f"infer-{shard}"
            task.mkdir(parents=True)
            run_tool(nextflow_script("INFER", {"id": "case", "slide": str(slide), "model": str(model),
                                               "shard": str(shard), "nshards": str(shards), "task.cpus": "1"}), task)
            predictions.append(str(task / f"prediction-{shard}"))
        task = work / "postprocess"
        task.mkdir()
        argv = nextflow_script("POSTPROCESS", {"id": "case", "predictions": " ".join(predictions)})
        assert argv[1:1 + shards] == predictions  # every shard in the one step
        run_tool(argv, task)
        shapes = task / "case.shapes.geojson"
        # the known answers before merge-annotations, whose --max-gap-um closing rounds the hole's corners
        check_known_answers(shapes_and_areas(shapes), hole_filled=False, smoothed=False)
        task = work / "merge"
        task.mkdir()
        run_tool(nextflow_script("MERGE_ANNOTATIONS", {"id": "case", "shapes": str(shapes)}), task)
        outputs.append(shapes_and_areas(task / "case.geojson"))
    assert outputs[0] == outputs[1]


# --- Argo ----------------------------------------------------------------------------------------


def argo_lines(data: Path, shard: int, shards: int) -> dict[str, list[str]]:
    """Template name -> its command line, for one slide (and one shard of infer)."""
    targets = dockerfile_targets((REPO / "docker" / "Dockerfile").read_text())
    entrypoints = {name.replace("-", "_"): stage["entrypoint"] for name, stage in targets.items()
                   if stage["entrypoint"]}
    values = {
        "inputs.parameters.slide": "case.tiff", "inputs.parameters.shard": str(shard),
        "inputs.parameters.shards": str(shards),
        "=sprig.regexReplaceAll('\\\\.[^.]+$', inputs.parameters.slide, '')": "case",
        "=workflow.parameters.model != '' ? workflow.parameters.model : '/data/runs/' + workflow.parameters.run "
        "+ '/model'": "/data/model",
        "inputs.parameters.slide-path": "/data/slides/case.tiff",
        "=workflow.parameters['qupath-project'] != '' ? workflow.parameters['qupath-project'] : '/data/runs/' + "
        "workflow.parameters.run + '/qupath-project'": "/data/runs/slidemill/qupath-project",
    }
    out = {}
    for line in argo_command_lines(values, entrypoints):
        name = line.where.removeprefix("slidemill.yaml template ")
        argv = [a.replace("/data/", f"{data}/") for a in line.argv]
        if tool_of(argv[0]) == "infer":
            argv[argv.index("--device") + 1] = "cpu"  # no GPU here; the device does not change the labels
            argv[argv.index("--workers") + 1] = "1"
        out[name] = argv
    return out


def test_argo_sharded_equals_unsharded(inputs):
    root, slide, model = inputs
    from workflow_files import argo_document, argo_templates

    templates = argo_templates(argo_document())
    outputs = []
    for dag, shards in (("slide-whole", 1), ("slide-sharded", SHARDS)):
        data = root / f"argo-{shards}"
        (data / "slides").mkdir(parents=True)
        (data / "slides" / "case.tiff").symlink_to(slide)
        (data / "model").symlink_to(model)
        tasks = {t["name"]: t for t in templates[dag]["dag"]["tasks"]}
        items = tasks["infer"].get("withItems", ["0"])
        assert len(items) == shards
        for item in items:
            run_tool(argo_lines(data, int(item), shards)["infer"], data)
        for step in ("postprocess", "merge-annotations"):
            run_tool(argo_lines(data, 0, shards)[tasks[step]["template"]], data)
        run = data / "runs" / "slidemill"
        check_known_answers(shapes_and_areas(run / "annotations" / "case.tiff.geojson"), hole_filled=False,
                            smoothed=False)
        outputs.append(shapes_and_areas(run / "merged" / "case.tiff.geojson"))
    assert outputs[0] == outputs[1]
