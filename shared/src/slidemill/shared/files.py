"""Safe file handling: atomic writes, staged output folders, manifest-relative paths.

A killed run must never leave a file (or a folder) that looks complete, so every output is
written under a temporary name in the same folder and renamed into place.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from .errors import ContractError, MissingInputError, OutputError


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside `path`; on success flush, fsync and rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    binary = "b" in mode
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def prepare_output_file(path: str | Path, *, overwrite: bool) -> Path:
    """Check that an output file may be written: refuse to replace one unless `overwrite`."""
    path = Path(path)
    if path.is_dir():
        raise OutputError("is a folder, but a file is expected here", path=path,
                          fix="Give a file name for --out")
    if path.exists() and not overwrite:
        raise OutputError("already exists", path=path,
                          fix="Pass --overwrite to replace it, or choose another --out")
    return path


def sha256_of(path: str | Path) -> str:
    """The hex SHA-256 of a file's bytes (`hashlib.file_digest`, read in chunks)."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def prepare_output_dir(path: str | Path, *, overwrite: bool, fix: str | None = None) -> Path:
    """Check that an output folder may be written, before any slow work: refuse a file in its place, and
    a non-empty folder unless `overwrite` (`fix` replaces the advice for that case)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError("exists and is not a folder", path=path, fix="Remove it or choose another --out")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise OutputError("already exists and is not empty", path=path,
                          fix=fix or "Pass --overwrite to replace it, or choose another --out")
    return path


def check_relative_path(value: str) -> str:
    """A manifest path: relative, forward slashes, and never leaving the manifest's folder."""
    if not value:
        raise ValueError("path is empty")
    if "\\" in value:
        raise ValueError(f"path {value!r} uses backslashes; use '/'")
    posix = PurePosixPath(value)
    if posix.is_absolute() or (len(value) > 1 and value[1] == ":"):
        raise ValueError(f"path {value!r} is absolute; manifest paths are relative to the manifest")
    if any(part == ".." for part in posix.parts):
        raise ValueError(f"path {value!r} leaves the manifest's folder ('..')")
    return value


def resolve_in(base: str | Path, relative: str) -> Path:
    """The file a manifest-relative path names, checked to stay inside `base`."""
    try:
        check_relative_path(relative)
    except ValueError as exc:
        raise ContractError(str(exc), path=base) from None
    return Path(base) / relative


def require_file(path: str | Path, what: str = "input file") -> Path:
    """An existing regular file, or a clear error naming it."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError(f"{what} does not exist", path=path,
                                fix="Check the path and that the folder is mounted")
    if path.is_dir():
        raise MissingInputError(f"is a folder, but the {what} must be a file", path=path,
                                fix="Give the file inside it")
    return path
