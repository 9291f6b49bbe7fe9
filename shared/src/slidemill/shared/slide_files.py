"""Which files and folders are slides, by name alone: no slide library is imported here, so every
command's start (batches, folder listings) can use it, and slide opening uses the same rules."""

from __future__ import annotations

from pathlib import Path

DICOM_SUFFIXES = {".dcm", ".dicom"}
# what a folder of slides is searched for (README "Formats"); a DICOM series is a folder of its own
SLIDE_SUFFIXES = {".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".qptiff", ".dcm", ".png",
                  ".jpg", ".jpeg"}


def is_dicom_file(path: Path) -> bool:
    return path.suffix.lower() in DICOM_SUFFIXES


def is_dicom_folder(path: Path) -> bool:
    """A folder holding at least one DICOM file (a series, or several to choose from)."""
    return path.is_dir() and any(is_dicom_file(p) for p in path.iterdir())
