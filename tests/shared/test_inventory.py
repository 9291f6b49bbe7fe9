"""One inventory of the tools: every tools/<tool>/meta.yml follows `ToolMeta`, and the packaging, the image
build and the umbrella command agree with it."""

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from slidemill.shared.inventory import ToolMeta, load_tool_meta, repository_tools
from slidemill.shared.schemas import schema_text
from slidemill.shared.umbrella import installed_tools

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TOOLS = repository_tools(REPO)


def test_every_tool_folder_has_a_valid_meta_yml():
    folders = sorted(p.parent.name for p in (REPO / "tools").glob("*/pyproject.toml"))
    assert sorted(m.package for m in TOOLS) == folders


def test_checked_in_schema_is_current():
    path = REPO / "schemas" / "tool-meta.schema.json"
    assert path.read_text() == schema_text("tool-meta"), f"{path} is out of date: run `make schemas`"


def test_meta_yml_validates_with_the_published_schema():
    import jsonschema
    import yaml

    schema = json.loads((REPO / "schemas" / "tool-meta.schema.json").read_text())
    for path in sorted(REPO.glob("tools/*/meta.yml")):
        jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(path.read_text()))


@pytest.mark.parametrize("change, message", [
    (lambda d: d["container"].update(entrypoint=["slidemill-other"]), "entrypoint"),
    (lambda d: d["container"].update(flavours=["cpu"], gpu=True), "gpu"),
    (lambda d: d.update(extra_key=1), "extra"),
    (lambda d: d["inputs"].append(dict(d["inputs"][0])), "unique"),
])
def test_inconsistent_meta_is_refused(tmp_path, change, message):
    import yaml

    data = yaml.safe_load((REPO / "tools" / "infer" / "meta.yml").read_text())
    change(data)
    bad = tmp_path / "infer" / "meta.yml"
    bad.parent.mkdir()
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=message):
        load_tool_meta(bad)


@pytest.mark.parametrize("meta", TOOLS, ids=lambda m: m.name)
def test_packaging_declares_the_command_and_the_umbrella_entry_point(meta: ToolMeta):
    project = tomllib.loads((REPO / "tools" / meta.package / "pyproject.toml").read_text())["project"]
    target = f"slidemill.{meta.package}.cli:app"
    assert project["scripts"] == {meta.console_script: target}
    assert project["entry-points"]["slidemill.tools"] == {meta.name: target}


def test_build_script_reads_the_same_tools_and_flavours():
    result = subprocess.run(["bash", str(REPO / "docker" / "build.sh"), "--list"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    listed = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert listed == {m.name: " ".join(m.container.flavours) for m in TOOLS}


def test_umbrella_finds_every_installed_tool():
    assert sorted(installed_tools()) == [m.name for m in TOOLS]
    result = subprocess.run([str(BIN / "slidemill"), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for meta in TOOLS:
        assert f"  {meta.name} " in result.stdout


@pytest.mark.parametrize("meta", TOOLS, ids=lambda m: m.name)
def test_umbrella_runs_what_the_tool_runs(meta: ToolMeta, tmp_path):
    for args in (["--version"], [str(tmp_path / "missing.input"), "--out", str(tmp_path / "out")]):
        if meta.name == "infer" and args[0] != "--version":
            args = [args[0], str(tmp_path / "no-model"), *args[1:]]
        direct = subprocess.run([str(BIN / meta.console_script), *args], capture_output=True, text=True, timeout=120)
        umbrella = subprocess.run([str(BIN / "slidemill"), meta.name, *args], capture_output=True, text=True,
                                  timeout=120)
        assert (umbrella.returncode, umbrella.stdout) == (direct.returncode, direct.stdout)
        assert umbrella.stderr.replace(f"slidemill {meta.name}", meta.console_script) == direct.stderr


def test_umbrella_refuses_an_unknown_tool():
    result = subprocess.run([str(BIN / "slidemill"), "segment"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "'segment'" in result.stderr and "tile" in result.stderr and "Traceback" not in result.stderr
