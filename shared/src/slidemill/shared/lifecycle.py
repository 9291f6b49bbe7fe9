"""One run lifecycle for every tool: check, claim the output, stage, report; a failed report on failure.

A tool's `run(config)` holds its algorithm's steps inside one `ToolRun`:

    with ToolRun(TOOL, argv, out=config.out, kind="file", overwrite=config.overwrite) as life:
        inputs = check(config)                 # 1. every input validated; a failure writes nothing
        stage = life.start()                   # 2. the output refused (exists, no --overwrite) or claimed,
        write(stage / life.out.name, ...)      # 3. everything written into the staging folder
        life.report.count(...)
    # 4. on leaving: the staged output moved into place, the report written (last)

- `kind="folder"`: the output is a folder; the staging folder `.<name>.*.partial` beside it becomes the
  folder in one rename, with `report.json` inside (written last, before the rename).
- `kind="file"`: the output is one file; the tool writes `stage / out.name` (and may write other files
  into `stage`, moved beside `out` in the same way); the report is `<out stem>.report.json` beside it.
- A failure before `start()` (a refused input or output) leaves nothing at all: exit 2 with the paragraph.
- A failure after `begin()`/`start()` removes the staging folder; when the run is a command-line run
  (inside `slidemill.shared.cli.cli_run`) a failed report (`status: failed`, `error`: the paragraph the
  user sees) is written, so a workflow engine finds why: for a file output where its report goes
  (`<out stem>.report.json`), for a folder output beside the folder (`<out>.report.json`), so the folder
  itself never appears unless complete and an earlier complete folder (--overwrite) is left whole. A
  later successful run removes such a failed report. From a notebook the exception is raised and nothing
  is left.
- SIGTERM (a workflow engine stopping the job) is turned into KeyboardInterrupt while the run lasts, so
  it cleans up like Ctrl-C: no staging and nothing that looks complete is left, and no report either.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Literal

from .cli import package_version
from .contracts import Report, save_contract
from .errors import InputError, SlidemillError
from .files import prepare_output_dir, prepare_output_file
from .report import ReportBuilder
from .shapes import report_path_for

log = logging.getLogger(__name__)

REPORT_NAME = "report.json"

# set by slidemill.shared.cli.cli_run: a command-line run leaves a failed report behind on failure
failed_reports = contextvars.ContextVar("slidemill_failed_reports", default=False)


def is_failed_report(path: Path) -> bool:
    """True when `path` is a failed run's report (slidemill/report with status failed)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("schema") == "slidemill/report" and data.get("status") == "failed"


def error_paragraph(exc: BaseException) -> str:
    """What the user is told: a SlidemillError's paragraph, else the exception's type and text."""
    if isinstance(exc, SlidemillError):
        return exc.paragraph()
    return f"unexpected error: {type(exc).__name__}: {exc}"


def _interrupt(signum, frame):
    raise KeyboardInterrupt


class ToolRun:
    """The lifecycle of one tool run (see the module docs). `report` is the run's ReportBuilder; after
    a successful `with` block, `final` is the Report written."""

    def __init__(self, tool: str, argv: list[str] | None, *, out: str | Path, kind: Literal["folder", "file"],
                 overwrite: bool, report: ReportBuilder | None = None):
        self.tool, self.kind, self.overwrite = tool, kind, overwrite
        self.out = Path(out)
        self.report = report or ReportBuilder(tool, package_version(tool), argv)
        self.report_path = self.out / REPORT_NAME if kind == "folder" else report_path_for(self.out)
        # where a failed run's report goes: a folder appears only complete, so its failed report lies beside it
        self.failed_report_path = report_path_for(self.out) if kind == "folder" else self.report_path
        self.stage: Path | None = None
        self.begun = False
        self.final: Report | None = None
        self._previous_handler = None

    # --- the steps ---------------------------------------------------------------------------------

    def check_output(self) -> None:
        """Refuse the output (exists without --overwrite, a file where a folder goes, ...) before any
        slow work; `start` checks it again."""
        if self.kind == "folder":
            prepare_output_dir(self.out, overwrite=self.overwrite)
            return
        prepare_output_file(self.out, overwrite=self.overwrite)
        if self.report_path.resolve() == self.out.resolve():
            raise InputError("--out must not end in .report.json (the report is written beside it)", path=self.out,
                             fix="Use a .geojson name")

    def begin(self) -> None:
        """The inputs are checked and the work begins: from here a failure leaves a failed report (for a
        tool whose long work comes before its output is staged, as train's)."""
        self.begun = True

    def start(self) -> Path:
        """Claim the output and make the staging folder; from here a failure leaves a failed report."""
        self.check_output()
        self.begun = True
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.stage = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".partial", dir=self.out.parent))
        return self.stage

    def _finish(self) -> None:
        stage = self.stage
        if self.kind == "folder":
            self.final = self.report.write(stage / REPORT_NAME)
            os.chmod(stage, 0o755)
            if self.out.exists():
                old = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
                os.replace(self.out, old)
                os.replace(stage, self.out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(stage, self.out)
        else:
            for path in sorted(stage.iterdir()):
                os.replace(path, self.out.parent / path.name)
            self.final = self.report.write(self.report_path)
            shutil.rmtree(stage, ignore_errors=True)
        self.stage = None
        if self.kind == "folder" and is_failed_report(self.failed_report_path):
            self.failed_report_path.unlink(missing_ok=True)  # an earlier failed run's, now answered

    def _fail(self, exc: BaseException) -> None:
        if self.stage is not None:
            shutil.rmtree(self.stage, ignore_errors=True)
        self.stage = None
        if not self.begun or isinstance(exc, KeyboardInterrupt | SystemExit) or not failed_reports.get():
            return
        try:
            self.final = self.report.build(status="failed", error=error_paragraph(exc))
            save_contract(self.final, self.failed_report_path)
        except OSError as write_error:  # the failure itself may be an unwritable output
            log.warning("could not write the failed report %s: %s", self.failed_report_path, write_error)

    # --- the context --------------------------------------------------------------------------------

    def __enter__(self) -> ToolRun:
        if threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, _interrupt)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc is None:
                if self.stage is None:
                    raise RuntimeError(f"{self.tool}: ToolRun ended without start()")
                try:
                    self._finish()
                except BaseException as finish_error:
                    self._fail(finish_error)
                    raise
            else:
                self._fail(exc)
        finally:
            if self._previous_handler is not None:
                signal.signal(signal.SIGTERM, self._previous_handler)
                self._previous_handler = None


@contextlib.contextmanager
def command_line_run():
    """Within this block, tool runs write a failed report on failure (cli_run uses it)."""
    token = failed_reports.set(True)
    try:
        yield
    finally:
        failed_reports.reset(token)
