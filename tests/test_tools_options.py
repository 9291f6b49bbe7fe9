"""Options declared once (slidemill.shared.command): every tool's command is made from its config, so the
two cannot drift, and its --help reads whole in an 80-column terminal."""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
import typer

from slidemill.shared.command import FRAME_OPTIONS, bounds, cli_of, command_fields, help_text

BIN = Path(sys.executable).parent
CONFIGS = {"postprocess": "PostprocessConfig", "merge_annotations": "MergeConfig", "to_qupath": "ToQuPathConfig",
           "infer": "InferConfig", "tile": "TileConfig", "train": "TrainConfig"}
# options of a command that are not config fields (what the command does with them instead)
COMMAND_ONLY = {"tile": {"qupath_project", "slide_dirs", "list_images"}}


def _config(tool: str):
    return getattr(importlib.import_module(f"slidemill.{tool}.config"), CONFIGS[tool])


def _command(tool: str):
    return typer.main.get_command(importlib.import_module(f"slidemill.{tool}.cli").app)


@pytest.mark.parametrize("tool", sorted(CONFIGS))
def test_every_config_field_is_a_parameter_and_back_with_the_same_bounds(tool):
    config, command = _config(tool), _command(tool)
    params = {p.name: p for p in command.params}
    fields = command_fields(config)
    assert set(params) == set(fields) | set(FRAME_OPTIONS) | COMMAND_ONLY.get(tool, set())
    for name, info in fields.items():
        param, limits = params[name], bounds(info)
        tp = info.annotation
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        is_list = typing.get_origin(tp) is list or cli_of(info).batch  # a batch argument takes several slides
        assert (param.multiple or param.nargs == -1) == is_list, name
        if not is_list and not cli_of(info).argument and cli_of(info).parse is None:
            # the command's range is the config's (an open end: the command takes it, the config refuses it)
            assert param.min == limits.get("ge", limits.get("gt")), name
            assert param.max == limits.get("le", limits.get("lt")), name
        if typing.get_origin(tp) is typing.Literal:  # the choices checked while parsing, and shown
            assert param.type_descriptor.annotation == tp and param.metavar == "|".join(typing.get_args(tp)), name
        if not info.is_required() and info.default_factory is None and not is_list:
            # the command's default is the config's, or none where the config applies its own (shown_default)
            assert param.default == (None if cli_of(info).shown_default is not None else info.default), name
        assert param.required == (info.is_required() and not cli_of(info).optional), name


def _normal(text: str) -> str:
    """Whitespace folded; a word the terminal wrapped at its hyphen joined again."""
    return re.sub(r"-\s+", "-", " ".join(text.split()))


@pytest.mark.parametrize("tool", sorted(CONFIGS))
def test_help_at_80_columns_holds_every_description_whole_and_every_default(tool):
    result = subprocess.run([str(BIN / f"slidemill-{tool.replace('_', '-')}"), "--help"], capture_output=True,
                            text=True, timeout=60, env={**os.environ, "COLUMNS": "80"})
    assert result.returncode == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    assert "…" not in result.stdout
    shown = _normal(result.stdout)
    for name, info in command_fields(_config(tool)).items():
        assert _normal(help_text(info.description)) in shown, (name, info.description)
        spec = cli_of(info)
        if spec.shown_default is not None:
            assert re.search(rf"\[default: \(?{re.escape(spec.shown_default)}", shown), name
        elif info.default not in (None, False) and info.default_factory is None and not info.is_required():
            default = getattr(info.default, "value", info.default)
            if default is True:  # a flag's default is shown by its name
                default = cli_of(info).names[0].lstrip("-")
            assert re.search(rf"\[default: {re.escape(str(default))}[;\]]", shown), (name, default)
    assert not re.search(r"\w \.(\s|$)", shown), "no stray space before a full stop"
