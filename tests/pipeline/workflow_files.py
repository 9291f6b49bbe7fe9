"""Read the command lines out of the workflow files (shell, Nextflow, Argo), with their variables
replaced by concrete values under a sandbox folder, so the tests can hand them to the tools' parsers.

Neither Nextflow nor Argo runs on the test machines; these readers are deliberately strict: an
interpolation they have no value for is an error naming it, so a new variable in a workflow file
cannot slip past the checks.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass

import yaml
from pipeline_support import REPO, tool_of

RUN_LOCAL = REPO / "workflows" / "run-local.sh"
MAIN_NF = REPO / "workflows" / "nextflow" / "main.nf"
NEXTFLOW_CONFIG = REPO / "workflows" / "nextflow" / "nextflow.config"
ARGO = REPO / "workflows" / "argo" / "slidemill.yaml"


@dataclass
class CommandLine:
    where: str  # file and step, for messages
    argv: list[str]

    @property
    def tool(self) -> str:
        return tool_of(self.argv[0])


# --- shell ---------------------------------------------------------------------------------------


def run_local_dry_run(args: list[str]) -> list[CommandLine]:
    """The commands `run-local.sh --dry-run` prints, one per line."""
    result = subprocess.run(["bash", str(RUN_LOCAL), *args, "--dry-run"], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise AssertionError(f"run-local.sh --dry-run failed ({result.returncode}): {result.stderr}")
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    return [CommandLine(f"run-local.sh line {i + 1} of the dry run", shlex.split(line)) for i, line in enumerate(lines)]


# --- Nextflow ------------------------------------------------------------------------------------


@dataclass
class NextflowProcess:
    name: str
    body: str
    labels: list[str]
    script_defs: dict[str, str]  # `def x = ...` lines of the script: block
    script: str  # the triple-quoted command text
    stub: str | None


def nextflow_params(text: str) -> dict[str, str]:
    """`params.x = value` defaults of main.nf (strings unquoted, comments dropped)."""
    params = {}
    for m in re.finditer(r"^params\.(\w+)\s*=\s*(.+?)\s*(?://.*)?$", text, re.M):
        value = m.group(2).strip()
        if value[:1] in "'\"" and value[-1:] == value[:1]:
            value = value[1:-1]
        params[m.group(1)] = value
    return params


def nextflow_processes(text: str) -> dict[str, NextflowProcess]:
    processes = {}
    for m in re.finditer(r"^process\s+(\w+)\s*\{\n(.*?)^\}", text, re.M | re.S):
        name, body = m.group(1), m.group(2)
        labels = re.findall(r"^\s*label\s+'([^']+)'", body, re.M)
        script_part = re.search(r"^\s*script:\s*\n(.*?)(?=^\s*stub:|\Z)", body, re.M | re.S)
        if not script_part:
            raise AssertionError(f"main.nf: process {name} has no script: block")
        defs = dict(re.findall(r"^\s*def\s+(\w+)\s*=\s*(.+)$", script_part.group(1), re.M))
        quoted = re.search(r'"""(.*?)"""', script_part.group(1), re.S)
        if not quoted:
            raise AssertionError(f"main.nf: process {name}'s script is not a triple-quoted string")
        stub = re.search(r'^\s*stub:\s*\n\s*"""(.*?)"""', body, re.M | re.S)
        processes[name] = NextflowProcess(name, body, labels, defs, quoted.group(1),
                                          stub.group(1) if stub else None)
    return processes


def substitute_groovy(template: str, values: dict[str, str], where: str) -> str:
    def one(m: re.Match) -> str:
        expr = m.group(1) or m.group(2)
        if expr not in values:
            raise AssertionError(f"{where}: no test value for ${{{expr}}}; add it to the test's table")
        return values[expr]

    return re.sub(r"\$\{([^}]+)\}|\$(\w+(?:\.\w+)*)", one, template)


def nextflow_command_lines(values: dict[str, str], variants: dict[str, list[str]] | None = None) -> list[CommandLine]:
    """Every `slidemill-*` line of every process script, for each value of the `variants` expressions."""
    text = MAIN_NF.read_text()
    params = nextflow_params(text)
    table = {f"params.{k}": v for k, v in params.items()} | values
    out = []
    for process in nextflow_processes(text).values():
        lines = [ln.strip() for ln in process.script.strip().splitlines() if ln.strip()]
        for line in lines:
            if not line.startswith("slidemill-"):
                raise AssertionError(f"main.nf {process.name}: the script runs {line!r}, not only a slidemill command")
            used = [v for v in (variants or {}) if f"${{{v}}}" in line]
            combos = [{}] if not used else [{used[0]: choice} for choice in variants[used[0]]]
            for combo in combos:
                where = f"main.nf process {process.name}" + (f" with {combo}" if combo else "")
                expanded = substitute_groovy(line, table | combo, where)
                out.append(CommandLine(where, shlex.split(expanded)))
    return out


# --- Argo ----------------------------------------------------------------------------------------


def argo_document() -> dict:
    return yaml.safe_load(ARGO.read_text())


def argo_templates(doc: dict) -> dict[str, dict]:
    return {t["name"]: t for t in doc["spec"]["templates"]}


def image_tool(image: str) -> str:
    """`{{...}}/merge-annotations:{{...}}-gpu` -> `merge_annotations`."""
    m = re.search(r"/([a-z-]+):", image)
    if not m:
        raise AssertionError(f"image {image!r} is not REGISTRY/TOOL:TAG")
    return m.group(1).replace("-", "_")


def substitute_argo(template: str, values: dict[str, str], where: str) -> str:
    def one(m: re.Match) -> str:
        expr = m.group(1).strip()
        if expr not in values:
            raise AssertionError(f"{where}: no test value for {{{{{expr}}}}}; add it to the test's table")
        return values[expr]

    return re.sub(r"\{\{(.+?)\}\}", one, template)


def argo_command_lines(values: dict[str, str], entrypoints: dict[str, list[str]]) -> list[CommandLine]:
    """The command line of every container template: the image's entrypoint + args, or the
    `exec slidemill-...` of a `sh -c` command, with `{{...}}` replaced from `values`."""
    doc = argo_document()
    defaults = {f"workflow.parameters.{p['name']}": str(p.get("value", ""))
                for p in doc["spec"]["arguments"]["parameters"]}
    table = defaults | values
    out = []
    for name, template in argo_templates(doc).items():
        container = template.get("container")
        if not container:
            continue
        where = f"slidemill.yaml template {name}"
        tool = image_tool(container["image"])
        args = [substitute_argo(a, table, where) for a in container.get("args", [])]
        command = container.get("command")
        if command:
            if command != ["sh", "-c"] or len(args) != 1:
                raise AssertionError(f"{where}: a command other than the entrypoint must be [sh, -c] with one script")
            script = args[0].strip()
            if not script.startswith("exec slidemill-"):
                raise AssertionError(f"{where}: the shell script must be `exec slidemill-...`, got {script!r}")
            argv = shlex.split(script.removeprefix("exec "))
        else:
            argv = [*entrypoints[tool], *args]
        if tool_of(argv[0]) != tool:
            raise AssertionError(f"{where}: runs {argv[0]} in the {tool} image")
        out.append(CommandLine(where, argv))
    return out
