"""One error tree for every tool.

A `SlidemillError` is a problem the user can fix: the CLI prints it as one paragraph and exits 2.
Each class also inherits the matching built-in exception, so library users can catch either.
"""

from __future__ import annotations

from pathlib import Path


class SlidemillError(Exception):
    """A user-fixable problem: names the file, says what is wrong and what to do."""

    def __init__(self, what: str, *, path: str | Path | None = None, fix: str | None = None):
        self.what = what
        self.path = None if path is None else Path(path)
        self.fix = fix
        super().__init__(self.paragraph())

    def paragraph(self) -> str:
        parts = [f"{self.path}: {self.what}" if self.path is not None else self.what]
        if self.fix:
            parts.append(self.fix)
        text = " ".join(p.rstrip(".") + "." for p in parts)
        return " ".join(text.split())


class InputError(SlidemillError, ValueError):
    """An input file or option is invalid."""


class MissingInputError(InputError, FileNotFoundError):
    """An input file or folder does not exist."""


class ContractError(InputError):
    """A JSON file does not follow its slidemill contract (schema, version, fields, paths)."""


class SlideError(InputError):
    """A slide cannot be opened or lacks what the tool needs (for example microns per pixel)."""


class OutputError(SlidemillError, OSError):
    """An output cannot be written (exists without --overwrite, not writable, ...)."""


class WorkerError(SlidemillError, RuntimeError):
    """A worker process ended before its work was done (killed, out of memory, failed to start)."""
