"""The run report every tool writes: what it read, wrote, counted and how long it took."""

from __future__ import annotations

import contextlib
import logging
import platform
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from .contracts import Report, ReportItem, save_contract

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class ReportBuilder:
    """Collects a run's facts; `write` saves them as a `report` contract file."""

    def __init__(self, tool: str, version: str, argv: list[str] | None = None):
        self.tool, self.version = tool, version
        self.command = list(sys.argv if argv is None else argv)
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.counts: dict[str, float] = {}
        self.timings_s: dict[str, float] = {}
        self.warnings: list[str] = []
        self.environment: dict[str, str] = {"python": platform.python_version(), "platform": platform.platform()}
        self.items: list[ReportItem] = []
        self._started_at, self._t0 = _now(), time.perf_counter()

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings_s[name] = round(self.timings_s.get(name, 0.0) + time.perf_counter() - t0, 4)

    def count(self, name: str, value: float) -> None:
        self.counts[name] = value

    def warn(self, message: str) -> None:
        log.warning(message)
        self.warnings.append(message)

    def build(self, *, status: str = "ok", error: str | None = None) -> Report:
        return Report(tool=self.tool, version=self.version, command=self.command, status=status,
                      started_at=self._started_at, finished_at=_now(),
                      duration_s=round(time.perf_counter() - self._t0, 4), inputs=self.inputs,
                      outputs=self.outputs, counts=self.counts, timings_s=self.timings_s,
                      warnings=self.warnings, environment=self.environment, error=error, items=self.items)

    def write(self, path: str | Path, **kwargs) -> Report:
        report = self.build(**kwargs)
        save_contract(report, path)
        return report
