"""The same checks over every tool that exists: help, version, exit 2 on a missing input."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = sorted(p.parent.name for p in (REPO / "tools").glob("*/pyproject.toml"))
BIN = Path(sys.executable).parent


def command(tool: str) -> str:
    return str(BIN / f"slidemill-{tool.replace('_', '-')}")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=120)


if not TOOLS:
    pytest.skip("no tools yet", allow_module_level=True)


@pytest.mark.parametrize("tool", TOOLS)
def test_help(tool):
    result = run(command(tool), "--help")
    assert result.returncode == 0, result.stderr
    assert "--log-format" in result.stdout and "--version" in result.stdout


@pytest.mark.parametrize("tool", TOOLS)
def test_version(tool):
    result = run(command(tool), "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"slidemill-{tool.replace('_', '-')} ")


@pytest.mark.parametrize("tool", TOOLS)
def test_missing_input_is_exit_2_with_one_paragraph(tool, tmp_path):
    missing = tmp_path / "does-not-exist.input"
    args = [command(tool), str(missing)]
    if tool in {"infer"}:
        args.append(str(tmp_path / "no-model"))
    args += ["--out", str(tmp_path / "out")]
    result = run(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "does-not-exist.input" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
