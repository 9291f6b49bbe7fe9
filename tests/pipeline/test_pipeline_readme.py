"""The README's pipeline sections stay true: the tools table equals every tool's meta.yml, and every
example command line (tools, docker run, run-local.sh, Nextflow, Argo) is one its program accepts."""

from __future__ import annotations

import re
import shlex
import subprocess

import pytest
from pipeline_support import PIPELINE, REPO, check_command_line, command_name, installed, meta
from workflow_files import MAIN_NF, NEXTFLOW_CONFIG, RUN_LOCAL, argo_document, nextflow_params

README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert m, f"README.md has no '## {title}' section"
    return m.group(1)


def table_rows() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in section("Tools: inputs and outputs").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`slidemill-"):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    return rows


def code_lines(title: str) -> list[str]:
    """Shell lines of the ``` blocks of a README section, continuation lines joined."""
    lines = []
    for block in re.findall(r"^```\n(.*?)^```", section(title), re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line:
                lines.append(line)
    return lines


def load_meta(tool: str) -> dict:
    spec = meta(tool)
    if spec is None:
        pytest.skip(f"tools/{tool}/meta.yml does not exist yet")
    return spec


def tokens(cell: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", cell))


def is_placeholder(token: str) -> bool:
    """SLIDE, DIR/, TILESET_DIR..., OUT.geojson, --annotations: words of the command, not patterns."""
    return token.startswith("-") or token.endswith("/") or bool(re.fullmatch(r"[A-Z_]+(\.[a-z]+)?(\.\.\.)?", token))


@pytest.mark.parametrize("tool", PIPELINE)
def test_table_lists_exactly_what_meta_yml_declares(tool):
    meta = load_meta(tool)
    rows = table_rows()
    assert command_name(tool) in rows, f"README's tools table has no row for {command_name(tool)}"
    for side, cell in zip(["inputs", "outputs"], rows[command_name(tool)], strict=True):
        declared = meta.get(side) or []
        patterns = {str(item["pattern"]) for item in declared}
        listed = tokens(cell)
        missing = sorted(patterns - listed)
        assert not missing, f"{command_name(tool)} {side}: meta.yml declares {missing}, the README table does not"
        stale = sorted(t for t in listed - patterns if not is_placeholder(t) and ("*" in t or "." in t))
        assert not stale, f"{command_name(tool)} {side}: the README lists {stale}, meta.yml does not"
        if any(item.get("optional") for item in declared if side == "inputs"):
            assert "optional" in cell, f"{command_name(tool)}: say which inputs are optional"


def test_quick_start_comes_first_with_the_two_commands():
    quick = section("Quick start")
    assert "make demo" in quick and "make test" in quick
    titles = re.findall(r"^## (.+)$", README, re.M)
    assert titles[-3:] == ["Quick start", "Running the pipeline", "Tools: inputs and outputs"]
    running = section("Running the pipeline")
    for sub in ["### Shell", "### Docker", "### Nextflow", "### Argo Workflows"]:
        assert sub in running


def _make_lab(lab) -> None:
    """The README's example QuPath project: lab/project of lab/slides/{a,b}/scan.svs, both exported."""
    import json

    from slidemill.shared.qupath_project import EXPORT_DIR, java_file_uri

    if (lab / "project").exists():
        return
    (lab / "project" / EXPORT_DIR).mkdir(parents=True)
    images = []
    for entry_id, folder in enumerate("ab", start=1):
        slide = lab / "slides" / folder / "scan.svs"
        slide.parent.mkdir(parents=True)
        slide.write_bytes(b"placeholder")
        images.append({"serverBuilder": {"builderType": "uri", "uri": java_file_uri(slide), "args": []},
                       "entryID": entry_id, "randomizedName": f"r{entry_id}", "imageName": slide.name, "metadata": {}})
        exported = lab / "project" / EXPORT_DIR / f"{entry_id}.geojson"
        exported.write_text('{"type": "FeatureCollection", "features": []}')
    (lab / "project" / "project.qpproj").write_text(json.dumps(
        {"version": "0.5.1", "createTimestamp": 1, "modifyTimestamp": 1, "lastID": 2, "images": images}))


def _localise(argv: list[str], tmp_path) -> list[str]:
    """out/... -> a temporary folder, demo/... -> the repository's bundled sample (absolute), lab/... -> the
    example QuPath project, made in a temporary folder."""
    out = []
    for a in argv:
        if a.startswith("lab/"):
            _make_lab(tmp_path / "lab")
            a = str(tmp_path / a)
        elif a.startswith("out/"):
            a = str(tmp_path / a)
        elif a.startswith("demo/") or a == "demo":
            a = str(REPO / a)
        out.append(a)
    return out


def test_tool_and_docker_examples_are_accepted(tmp_path):
    checked = set()
    for line in code_lines("Running the pipeline"):
        argv = shlex.split(line)
        if argv[0].startswith("slidemill-"):
            tool_argv = argv
        elif argv[:2] == ["docker", "run"]:
            image_at = next(i for i, a in enumerate(argv) if re.match(r"slidemill/[a-z-]+:", a))
            tool = re.match(r"slidemill/([a-z-]+):", argv[image_at]).group(1)
            tool_argv = [f"slidemill-{tool}", *argv[image_at + 1:]]
        else:
            continue
        tool = tool_argv[0].removeprefix("slidemill-").replace("-", "_")
        checked.add(tool)
        if installed(tool):
            check_command_line(_localise(tool_argv, tmp_path), where=f"README: {line}")
    assert checked == set(PIPELINE), f"README shows no example for {set(PIPELINE) - checked}"


def test_run_local_examples_are_accepted(tmp_path):
    lines = [ln for ln in code_lines("Running the pipeline") if ln.startswith("workflows/run-local.sh")]
    assert len(lines) >= 2
    for line in lines:
        argv = _localise(shlex.split(line), tmp_path)
        result = subprocess.run(["bash", str(RUN_LOCAL), *argv[1:], "--dry-run"], capture_output=True, text=True,
                                cwd=REPO, timeout=60)
        assert result.returncode == 0, f"README: {line}: {result.stderr}"
        for printed in result.stdout.splitlines():
            command = shlex.split(printed)
            tool = command[0].rsplit("/", 1)[-1].removeprefix("slidemill-").replace("-", "_")
            if installed(tool):
                check_command_line(command, where=f"README: {line}")


def test_nextflow_and_argo_examples_name_real_parameters():
    params = set(nextflow_params(MAIN_NF.read_text()))
    config = NEXTFLOW_CONFIG.read_text()
    argo_params = {p["name"] for p in argo_document()["spec"]["arguments"]["parameters"]}
    for line in code_lines("Running the pipeline"):
        argv = shlex.split(line)
        if argv[:2] == ["nextflow", "run"]:
            assert (REPO / argv[2]).exists()
            for i, a in enumerate(argv):
                if a == "-profile":
                    for profile in argv[i + 1].split(","):
                        assert re.search(rf"^\s*{profile}\s*\{{", config, re.M), f"no profile {profile}"
                elif a.startswith("--"):
                    assert a[2:] in params, f"README: main.nf has no params.{a[2:]}"
        if argv[:2] == ["argo", "submit"]:
            assert "workflowtemplate/slidemill" in argv
            for i, a in enumerate(argv):
                if a == "-p":
                    name = argv[i + 1].split("=", 1)[0]
                    assert name in argo_params, f"README: the WorkflowTemplate has no parameter {name}"
        if argv[:2] == ["kubectl", "apply"]:
            assert (REPO / argv[-1]).exists()
