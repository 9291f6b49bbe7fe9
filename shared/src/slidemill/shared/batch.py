"""Several slides in one call: `slidemill-tile A.svs B.svs --out OUT`, or a folder of slides.

Each slide is run as the one-slide command would run it, into `OUT/<slide name without extension>/`
(the run's own lifecycle: staged, complete or absent), and `OUT/report.json` lists every slide as an
item (ok, or failed with the error paragraph). Two slides whose names give the same folder are refused
before any work. A slide that fails is recorded and the others go on; the call then ends with the
first failure's exit code (2 for a user error), naming the failed slides. One slide given as a file
(or a DICOM series folder) is the plain one-slide run, unchanged.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

from .cli import package_version
from .contracts import ReportItem, save_contract
from .errors import InputError, SlidemillError
from .files import prepare_output_dir
from .report import ReportBuilder
from .slide_files import SLIDE_SUFFIXES, is_dicom_folder

log = logging.getLogger(__name__)

def expand_slides(given: list[Path]) -> list[Path]:
    """The slides named: files and DICOM series folders as given, a folder of slides as its slide files
    and DICOM series subfolders (sorted by name)."""
    slides: list[Path] = []
    for path in given:
        if path.is_dir() and not is_dicom_folder(path):
            found = sorted((p for p in path.iterdir() if (p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES
                                                           and not p.name.startswith(".")) or is_dicom_folder(p)),
                           key=lambda p: p.name)
            if not found:
                raise InputError("is a folder that holds no slide", path=path,
                                 fix=f"Give slide files, or a folder holding {', '.join(sorted(SLIDE_SUFFIXES))} files")
            slides.extend(found)
        else:
            slides.append(path)
    return slides


def is_batch(given: list[Path]) -> bool:
    return len(given) != 1 or (given[0].is_dir() and not is_dicom_folder(given[0]))


def slide_stem(path: Path) -> str:
    """A slide's output folder name: its file name without the extension (`a.ome.tiff` -> `a`)."""
    name = path.name
    return re.sub(r"(\.ome)?\.[A-Za-z0-9]+$", "", name) if path.is_file() or "." in name else name


def run_batch(tool: str, slides: list[Path], out: Path, *, overwrite: bool,
              run_one: Callable[[Path, Path], dict[str, float]], argv: list[str] | None = None) -> list[ReportItem]:
    """Run `run_one(slide, out / stem)` for every slide (it returns the slide's counts) and write
    `out/report.json` listing them; raise the first failure after all ran."""
    folders: dict[str, Path] = {}
    for slide in slides:
        stem = slide_stem(slide)
        if stem in folders:
            raise InputError(f"and {folders[stem]} would both be written to {out / stem}", path=slide,
                             fix="Rename one of them, or run them in separate calls")
        folders[stem] = slide
    prepare_output_dir(out, overwrite=overwrite)
    report = ReportBuilder(tool, package_version(tool), argv)
    report.inputs = [str(s) for s in slides]
    out.mkdir(parents=True, exist_ok=True)
    first: BaseException | None = None
    for stem, slide in folders.items():
        log.info("%s: slide %s into %s", tool, slide, out / stem)
        try:
            counts = run_one(slide, out / stem)
        except Exception as exc:  # noqa: BLE001 - one slide's failure is recorded; the others go on
            first = first or exc
            reason = exc.paragraph() if isinstance(exc, SlidemillError) else f"{type(exc).__name__}: {exc}"
            log.error("%s not done: %s", slide, reason)
            report.items.append(ReportItem(id=stem, name=slide.name, status="failed", reason=reason,
                                           inputs=[str(slide)]))
            continue
        report.items.append(ReportItem(id=stem, name=slide.name, status="ok", inputs=[str(slide)],
                                       outputs=[f"{stem}/report.json"], counts=counts))
        report.outputs.append(str(out / stem))
    failed = [i for i in report.items if i.status != "ok"]
    report.count("slides", len(slides))
    report.count("slides_done", len(slides) - len(failed))
    report.count("slides_failed", len(failed))
    save_contract(report.build(status="failed" if failed else "ok",
                               error=None if not failed else f"{len(failed)} of {len(slides)} slide(s) failed"),
                  out / "report.json")
    if failed:
        names = ", ".join(i.name for i in failed)
        if isinstance(first, SlidemillError):
            raise InputError(f"{len(failed)} of {len(slides)} slide(s) failed ({names}); the first: "
                             f"{first.paragraph()}", path=out / "report.json",
                             fix="The other slides are done; see the report's items") from None
        raise first
    return report.items
