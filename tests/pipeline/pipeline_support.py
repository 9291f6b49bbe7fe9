"""Helpers of the pipeline tests: which tools exist, and whether a command line is one a tool accepts.

A command line is checked with the tool's own parser (the click command behind its typer app, found
through the console-script entry point the container's ENTRYPOINT names), without running the tool:
`make_context` converts and range-checks every option, checks choices and required arguments, and
rejects unknown options, exactly as `slidemill-<tool> ARGS...` would before doing any work.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import typer

try:  # recent typer carries its own copy of click; its commands raise that copy's exceptions
    from typer import _click as click
except ImportError:  # pragma: no cover - typer on the real click
    import click

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# The pipeline's tools, in pipeline order, as folder names under tools/.
PIPELINE = ["tile", "train", "infer", "postprocess", "merge_annotations", "to_qupath"]
# Options whose value is written, not read: the checker does not create them.
OUTPUT_OPTIONS = {"--out", "-o", "--project"}
FILE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".png", ".jpg", ".geojson", ".json", ".xml",
                 ".pt", ".onnx", ".gz", ".dcm"}


def command_name(tool: str) -> str:
    """`merge_annotations` -> `slidemill-merge-annotations`."""
    return f"slidemill-{tool.replace('_', '-')}"


def tool_of(command: str) -> str:
    """`slidemill-merge-annotations` (or a path to it) -> `merge_annotations`."""
    name = Path(command).name
    if not name.startswith("slidemill-"):
        raise ValueError(f"{command!r} is not a slidemill command")
    return name.removeprefix("slidemill-").replace("-", "_")


def run_step(argv: list[str], *, cwd: Path, timings: dict[str, float], name: str, env: dict | None = None,
             timeout: int = 900) -> subprocess.CompletedProcess:
    """Run one pipeline command, record its wall time in `timings[name]`, and fail the test (with the
    end of its stderr) unless it exits 0."""
    t0 = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    timings[name] = round(time.perf_counter() - t0, 1)
    if result.returncode != 0:
        pytest.fail(f"{Path(argv[0]).name} failed with exit {result.returncode}: `{' '.join(argv)}`\n"
                    f"stderr (end): {result.stderr[-3000:]}")
    return result


def installed(tool: str) -> bool:
    return (BIN / command_name(tool)).exists()


def missing_tools(tools=PIPELINE) -> list[str]:
    return [command_name(t) for t in tools if not installed(t)]


def require_tools(tools=PIPELINE) -> None:
    missing = missing_tools(tools)
    if missing:
        pytest.skip(f"not installed yet (no {', '.join(str(BIN / m) for m in missing)}): "
                    "this check runs once every pipeline tool has landed")


def click_command(tool: str):
    name = command_name(tool)
    found = list(entry_points(group="console_scripts", name=name))
    if not found:
        raise LookupError(f"{name} has no console-script entry point (is tools/{tool} installed?)")
    app = found[0].load()
    return typer.main.get_command(app) if isinstance(app, typer.Typer) else app


def _split(command, args: list[str]) -> tuple[list[str], list[str]]:
    """(positional arguments, values of options that are read) of `args` under `command`'s options."""
    options = {name: p for p in command.params if getattr(p, "param_type_name", "") == "option"
               for name in p.opts + p.secondary_opts}
    positional, read_values = [], []
    i = 0
    while i < len(args):
        arg = args[i]
        name = arg.split("=", 1)[0]
        if arg.startswith("-") and name in options:
            option = options[name]
            if option.is_flag or option.count:
                i += 1
                continue
            values = [arg.split("=", 1)[1]] if "=" in arg else args[i + 1: i + 1 + option.nargs]
            if name not in OUTPUT_OPTIONS:
                read_values += values
            i += 1 if "=" in arg else 1 + option.nargs
        else:
            positional.append(arg)
            i += 1
    return positional, read_values


def materialise_inputs(command, args: list[str]) -> None:
    """Create the absolute input paths a command line names (files by suffix, otherwise folders),
    so that a parser which checks existence sees them; outputs (--out, --project) are left alone."""
    positional, values = _split(command, args)
    for value in positional + values:
        if not value.startswith("/"):
            continue
        path = Path(value)
        if path.exists():
            continue
        if path.suffix.lower() in FILE_SUFFIXES:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
        else:
            path.mkdir(parents=True, exist_ok=True)


def check_command_line(argv: list[str], *, where: str = ""):
    """Fail the test unless the tool named by argv[0] accepts argv[1:] (parsed, not run)."""
    tool = tool_of(argv[0])
    command = click_command(tool)
    args = list(argv[1:])
    materialise_inputs(command, args)
    shown = shlex.join([Path(argv[0]).name, *args])
    try:
        return command.make_context(command_name(tool), args)
    except (typer.Exit, SystemExit):
        pytest.fail(f"{where}: `{shown}` only prints and exits (--help or --version?)")
    except click.ClickException as exc:
        pytest.fail(f"{where}: {command_name(tool)} rejects `{shown}`: {exc.format_message()}")


def meta(tool: str) -> dict | None:
    """tools/<tool>/meta.yml, validated by its schema (`ToolMeta`), as a dict."""
    from slidemill.shared.inventory import load_tool_meta

    path = REPO / "tools" / tool / "meta.yml"
    if not path.exists():
        return None
    try:
        return load_tool_meta(path).model_dump()
    except ValueError as exc:
        pytest.fail(f"nothing can be checked against tools/{tool}/meta.yml: {exc}")


def dockerfile_targets(text: str) -> dict[str, dict]:
    """{target: {"entrypoint": [...], "runs": [...], "user": str}} of every `FROM ... AS target` stage."""
    stages: dict[str, dict] = {}
    current = None
    for raw in _logical_lines(text):
        line = raw.strip()
        m = re.match(r"(?i)FROM\s+\S+(?:\s+AS\s+(\S+))?", line)
        if m:
            current = {"entrypoint": None, "runs": [], "user": None}
            stages[m.group(1) or f"<stage {len(stages)}>"] = current
            continue
        if current is None:
            continue
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "ENTRYPOINT":
            import json

            current["entrypoint"] = json.loads(rest)
        elif keyword == "RUN":
            current["runs"].append(rest.strip())
        elif keyword == "USER":
            current["user"] = rest.strip()
    return stages


def _logical_lines(text: str) -> list[str]:
    lines, buf = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not buf:
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        lines.append(buf + line)
        buf = ""
    return lines
