"""The CLI conventions, on a small typer app built the way every tool builds its own."""

import json
import logging
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from slidemill.shared.cli import (
    DebugOption,
    LogFormat,
    LogFormatOption,
    Progress,
    cli_run,
    tool_app,
    version_option,
)
from slidemill.shared.errors import InputError

app = tool_app("slidemill-example", "An example tool.")


@app.command()
def main(
    path: Annotated[Path, typer.Argument(help="An input.")],
    crash: bool = False,
    version: version_option("slidemill-shared") = False,
    log_format: LogFormatOption = LogFormat.text,
    debug: DebugOption = False,
) -> None:
    with cli_run("slidemill-example", log_format=log_format, debug=debug):
        if crash:
            raise RuntimeError("boom")
        if not path.exists():
            raise InputError("does not exist", path=path, fix="Check the path")
        logging.getLogger("slidemill.example").info("read %s", path)


runner = CliRunner()


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("slidemill-shared ")


def test_user_error_is_one_paragraph_exit_2(tmp_path):
    result = runner.invoke(app, [str(tmp_path / "missing.svs")])
    assert result.exit_code == 2
    assert "missing.svs: does not exist. Check the path." in result.output
    assert "Traceback" not in result.output


def test_unexpected_error_exit_1_and_traceback_only_with_debug(tmp_path):
    result = runner.invoke(app, [str(tmp_path), "--crash"])
    assert result.exit_code == 1
    assert "unexpected error: RuntimeError: boom" in result.output
    assert "Traceback" not in result.output
    debug = runner.invoke(app, [str(tmp_path), "--crash", "--debug"])
    assert debug.exit_code == 1 and isinstance(debug.exception, RuntimeError)


def test_bad_usage_is_exit_2():
    assert runner.invoke(app, ["a", "--log-format", "xml"]).exit_code == 2


def test_json_logs(tmp_path, capfd):
    from slidemill.shared.cli import configure_logging

    configure_logging(LogFormat.json)
    logging.getLogger("slidemill.example").info("hello %s", "world")
    line = capfd.readouterr().err.strip().splitlines()[-1]
    entry = json.loads(line)
    assert entry["message"] == "hello world" and entry["level"] == "info"
    configure_logging(LogFormat.text)


def test_progress_logs_plain_lines_off_a_terminal(caplog):
    caplog.set_level(logging.INFO)
    with Progress(3, "tiling", "tiles", interval_s=0.0) as progress:
        for _ in range(3):
            progress.advance()
    messages = [r.getMessage() for r in caplog.records]
    assert any("tiling: 3/3 tiles" in m for m in messages)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_user_error_in_both_formats(tmp_path, fmt):
    result = runner.invoke(app, [str(tmp_path / "x"), "--log-format", fmt])
    assert result.exit_code == 2
    assert "x: does not exist" in result.output


def test_option_errors_name_options_as_typed():
    from pydantic import BaseModel, Field, ValidationError, model_validator

    from slidemill.shared.cli import option_error

    class Config(BaseModel):
        tile_size_px: int = Field(512, ge=16)
        overlap_px: int = 64

        @model_validator(mode="after")
        def _fits(self):
            if self.overlap_px >= self.tile_size_px:
                raise ValueError(f"overlap_px {self.overlap_px} must be smaller than tile_size_px {self.tile_size_px}")
            return self

    names = {"tile_size_px": "--tile-size", "overlap_px": "--overlap"}
    with pytest.raises(ValidationError) as err:
        Config(tile_size_px=64, overlap_px=64)
    error = option_error(err.value, names, tool="slidemill-tile")
    assert error.paragraph() == "--overlap 64 must be smaller than --tile-size 64. See slidemill-tile --help."
    with pytest.raises(ValidationError) as err:
        Config(tile_size_px=8)
    assert option_error(err.value, names).paragraph().startswith("--tile-size 8: input should be greater than")
