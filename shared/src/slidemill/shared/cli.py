"""The command-line conventions every slidemill tool follows.

- exit 0 on success, 2 for a user error (bad option, missing or invalid input) with one paragraph
  naming the file and the fix and no traceback, 1 for an unexpected failure (traceback with --debug);
- `--version`, `--log-format text|json`, `--debug` spelled the same in every tool;
- a progress bar on a terminal, plain periodic log lines in batch jobs.

A tool's cli.py builds its app with `tool_app` and its command with `slidemill.shared.command.config_command`
(the options made from the tool's config, the shared ones declared once there), which runs the body in
`cli_run(...)`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from enum import StrEnum
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated

import typer

from .errors import SlidemillError

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class LogFormat(StrEnum):
    text = "text"
    json = "json"


def package_version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "0+unknown"


def tool_app(name: str, help_text: str) -> typer.Typer:
    """A typer app with slidemill's settings: no shell-completion options, no rich tracebacks, and plain
    help (click's, wrapped to the terminal: rich's tables cut long words off and read `[default: x]` as
    markup)."""
    return typer.Typer(
        name=name, help=help_text, add_completion=False, no_args_is_help=True, rich_markup_mode=None,
        pretty_exceptions_enable=False, context_settings={"help_option_names": ["-h", "--help"]},
    )


def version_option(dist: str):
    """The `--version` option of one tool's distribution (`slidemill-tile`, ...)."""

    def show(value: bool) -> None:
        if value:
            typer.echo(f"{dist} {package_version(dist)}")
            raise typer.Exit(EXIT_OK)

    return Annotated[bool, typer.Option("--version", callback=show, is_eager=True,
                                        help="Show the version and exit.")]


LogFormatOption = Annotated[LogFormat, typer.Option(
    "--log-format", help="text for people, json (one object per line) for workflow engines.")]
DebugOption = Annotated[bool, typer.Option("--debug", help="Verbose logs, and a traceback on any error.")]


def option_error(exc, options: dict[str, str] | None = None, *, tool: str = "") -> SlidemillError:
    """A pydantic ValidationError of a tool's config as an InputError (exit 2) that names options as
    the user types them: `options` maps config field names to their spellings (`{"tile_size_px":
    "--tile-size"}`); a field without an entry is spelled `--field-name`. Field names inside a
    message are replaced too, so "overlap_px 64 must be smaller than tile_size_px 64" reads
    "--overlap 64 must be smaller than --tile-size 64" (only names in `options` are replaced)."""
    import re

    from .errors import InputError

    options = options or {}

    def spell(field: str) -> str:
        return options.get(field, "--" + field.replace("_", "-"))

    problems = []
    for err in exc.errors()[:3]:
        msg = err["msg"].removeprefix("Value error, ")
        if options:
            msg = re.sub(r"\b(" + "|".join(re.escape(k) for k in sorted(options, key=len, reverse=True)) + r")\b",
                         lambda m: spell(m.group(0)), msg)
        fields = [str(p) for p in err["loc"] if isinstance(p, str)]
        if fields:
            value = err.get("input")
            shown = f" {value}" if isinstance(value, (int, float, str)) and not isinstance(value, bool) else ""
            msg = f"{spell(fields[0])}{shown}: {msg[:1].lower()}{msg[1:]}"
        problems.append(msg)
    more = len(exc.errors()) - 3
    text = "; ".join(problems) + (f"; and {more} more problem(s)" if more > 0 else "")
    return InputError(text, fix=f"See {tool} --help" if tool else None)


def split_names(values: list[str] | None) -> list[str]:
    """A repeatable option of slide names: `--val-slides A --val-slides B` or `--val-slides A,B` (spaces
    trimmed). Never for class names: a class name may contain commas, so class options take one name each."""
    return [n.strip() for v in values or [] for n in v.split(",") if n.strip()]


def worker_count(requested: int) -> int:
    """0 means one per core this process may use."""
    if requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("done", "total", "unit", "rate"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


_LOG_FORMAT = LogFormat.text


def configure_logging(log_format: LogFormat = LogFormat.text, debug: bool = False) -> None:
    global _LOG_FORMAT
    _LOG_FORMAT = LogFormat(log_format)
    handler = logging.StreamHandler(sys.stderr)
    if _LOG_FORMAT is LogFormat.json:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for noisy in ("large_image", "PIL", "tifffile", "matplotlib", "numcodecs", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING if debug else logging.ERROR)


def _user_error(exc: SlidemillError, log_format: LogFormat) -> None:
    if log_format is LogFormat.json:
        print(json.dumps({"level": "error", "message": exc.paragraph(),
                          "path": str(exc.path) if exc.path else None}), file=sys.stderr)
    else:
        print(f"error: {exc.paragraph()}", file=sys.stderr)


@contextlib.contextmanager
def cli_run(tool: str, *, log_format: LogFormat = LogFormat.text, debug: bool = False) -> Iterator[None]:
    """Configure logging and turn errors into slidemill's exit codes; tool runs inside it write a failed
    report on failure (slidemill.shared.lifecycle)."""
    from .lifecycle import command_line_run

    configure_logging(log_format, debug)
    try:
        with command_line_run():
            yield
    except typer.Exit:
        raise
    except SlidemillError as exc:
        if debug:
            log.exception("%s failed", tool)
        _user_error(exc, LogFormat(log_format))
        raise typer.Exit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        print(f"{tool}: interrupted; no output was left half-written", file=sys.stderr)
        raise typer.Exit(130) from None
    except Exception as exc:
        if debug:
            raise
        print(f"{tool}: unexpected error: {type(exc).__name__}: {exc}. This is a bug in slidemill or its "
              "environment; rerun with --debug for the traceback and report it.", file=sys.stderr)
        raise typer.Exit(EXIT_FAILURE) from None


class Progress:
    """Progress of `total` units: a bar on a terminal, a log line every `interval_s` otherwise."""

    def __init__(self, total: int | None, description: str, unit: str = "items", *,
                 interval_s: float = 10.0, enabled: bool = True):
        self.total, self.description, self.unit = total, description, unit
        self.interval_s, self.done = interval_s, 0
        self._start = self._last = time.monotonic()
        self._bar = None
        self._enabled = enabled
        self._tty = enabled and sys.stderr.isatty() and _LOG_FORMAT is LogFormat.text

    def __enter__(self) -> Progress:
        if self._tty:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), transient=False)
            self._bar.start()
            self._task = self._bar.add_task(self.description, total=self.total)
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, advance=n)
            return
        now = time.monotonic()
        if self._enabled and now - self._last >= self.interval_s:
            self._last = now
            self._log()

    def _log(self) -> None:
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = self.done / elapsed
        of = f"/{self.total}" if self.total is not None else ""
        log.info("%s: %d%s %s (%.1f/s)", self.description, self.done, of, self.unit, rate,
                 extra={"done": self.done, "total": self.total, "unit": self.unit, "rate": round(rate, 2)})

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self._enabled and exc[0] is None:
            self._log()


def existing_path(path: Path, what: str) -> Path:
    """For a typer argument: the path must exist (checked in our words, not click's)."""
    from .errors import MissingInputError

    if not path.exists():
        raise MissingInputError(f"{what} does not exist", path=path, fix="Check the path")
    return path
