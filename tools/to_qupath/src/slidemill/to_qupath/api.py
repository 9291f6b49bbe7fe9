"""`run(config)`: annotations into QuPath GeoJSON per slide and, optionally, a QuPath project.

Usable from a notebook:

    from slidemill.to_qupath import ToQuPathConfig, run
    result = run(ToQuPathConfig(annotations=["a.geojson"], out_dir="qupath", project_dir="project"))
    print(result.import_command)
"""

from __future__ import annotations

import gzip
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from slidemill.shared.annotations import (
    WriteStats,
    annotations_header,
    class_colors,
    feature_lines,
    not_kept,
    read_annotation_file,
    write_feature_collection,
)
from slidemill.shared.classes import QUPATH_COLORS
from slidemill.shared.cli import Progress, package_version
from slidemill.shared.contracts import Provenance, ReportItem
from slidemill.shared.errors import InputError, MissingInputError, OutputError
from slidemill.shared.files import atomic_write, require_file
from slidemill.shared.lifecycle import ToolRun

from .config import ToQuPathConfig
from .project import (
    SCRIPT_FILE,
    Project,
    add_images,
    class_colour_conflicts,
    import_command,
    legacy_object_files,
    merged_classes,
    objects_file,
    open_project,
    save_project,
)
from .slide_matching import SlideGroup, find_slide, group_by_slide

log = logging.getLogger(__name__)

TOOL = "slidemill-to-qupath"


@dataclass
class SlideOutput:
    image_name: str | None
    path: Path
    features: int
    dropped: int
    slide: Path | None = None
    entry_id: int | None = None


@dataclass
class ToQuPathResult:
    out_dir: Path
    slides: list[SlideOutput] = field(default_factory=list)
    project: Path | None = None
    import_command: str | None = None
    warnings: list[str] = field(default_factory=list)


def _check_inputs(config: ToQuPathConfig, life: ToolRun) -> None:
    for path in config.annotations:
        require_file(path, "annotations file")
    names: dict[str, Path] = {}
    for slide in config.slides:
        if not slide.exists():
            raise MissingInputError("slide does not exist", path=slide,
                                    fix="Check the --slide path and that its folder is mounted")
        if _is_search_folder(slide):
            continue
        if slide.name in names and names[slide.name].resolve() != slide.resolve():
            raise InputError(f"has the same name as the slide {names[slide.name]}", path=slide,
                             fix="QuPath and slidemill tell slides apart by name: convert them in separate runs")
        names[slide.name] = slide
    life.check_output()
    out = config.out_dir
    if config.project_dir is not None and config.project_dir.resolve() == out.resolve():
        raise InputError("is both --out and --project", path=out, fix="Give them different folders")


def _header(group: SlideGroup, config: ToQuPathConfig) -> dict:
    slide_ref = next((i.slide for i in group.inputs if i.slide is not None), None)
    provenance = Provenance(
        tool=TOOL, version=package_version(TOOL), inputs=[str(i.path) for i in group.inputs],
        parameters={k: v for k, v in {"object_type": config.object_type, "lock": config.lock,
                                       "qupath_version": config.qupath_version}.items() if v is not None},
    )
    return annotations_header(slide=slide_ref, mpp=group.mpp, provenance=provenance)


def _is_search_folder(path: Path) -> bool:
    """A --slide folder is a folder of slides to search, unless it is one slide (a DICOM series)."""
    return path.is_dir() and not any(p.suffix.lower() in {".dcm", ".dicom"} for p in path.iterdir())


def _resolve_slides(groups: list[SlideGroup], project: Project | None, search: list[Path]) -> None:
    """Every slide must be found for a project: given, in a given folder, beside its annotations, or
    already in the project."""
    known = {e.get("imageName") for e in project.images} if project is not None else set()
    for group in groups:
        slide = find_slide(group, search + [Path.cwd()])
        if project is None or slide is not None or group.image_name in known:
            continue
        first = group.inputs[0].path
        if group.image_name is None:
            raise InputError(
                "does not name its slide (it is not a slidemill annotations file) and no --slide matches it",
                path=first, fix="Pass the slide with --slide /path/to/slide (its name without extension "
                "should begin the annotation file's name, or give a single --slide)")
        raise MissingInputError(
            f"is about slide {group.image_name}, which was not given and is not beside the annotations, "
            "in the current folder or in the project", path=first,
            fix=f"Pass --slide /path/to/{group.image_name}")


def run(config: ToQuPathConfig, *, argv: list[str] | None = None) -> ToQuPathResult:
    """Validate everything (inputs, slides, the existing project), then write; see the module docstring.
    The lifecycle (output refused or replaced, staging, report, failed report) is slidemill.shared.lifecycle's."""
    with ToolRun(TOOL, argv, out=config.out_dir, kind="folder", overwrite=config.overwrite) as life:
        result = _convert(config, life)
    result.warnings = list(life.report.warnings)
    log.info("wrote %d features for %d slide(s) to %s", sum(s.features for s in result.slides), len(result.slides),
             config.out_dir)
    return result


def _convert(config: ToQuPathConfig, life: ToolRun) -> ToQuPathResult:
    """The steps of one conversion: read the inputs, group them by slide, add the slides to the project,
    write one QuPath GeoJSON per slide, copy each into the project by entry ID, count."""
    report = life.report
    _check_inputs(config, life)
    project = (open_project(config.project_dir, qupath_version=config.qupath_version)
               if config.project_dir is not None else None)
    with report.timed("read"):
        inputs = [read_annotation_file(path) for path in config.annotations]
    _note_inputs(config, inputs, report)
    slide_files = [s for s in config.slides if not _is_search_folder(s)]
    groups = _slide_groups(inputs, slide_files, [s for s in config.slides if _is_search_folder(s)], project,
                           report)
    colors = class_colors(r for g in groups for r in g.records)
    entries = _add_to_project(project, groups, slide_files, colors, config, report) if project is not None else {}
    _warn_builtin_colours(colors, report)
    suffix = ".geojson.gz" if config.gzip else ".geojson"
    total = sum(len(g.records) for g in groups)
    staging = life.start()
    result, stats = _write_slides(groups, entries, colors, config, staging, suffix, total, report)
    if project is not None:
        with report.timed("project"):
            _write_into_project(project, groups, entries, result, colors, staging, suffix, report)
        result.project = project.qpproj
        result.import_command = import_command(project.qpproj, project.folder / SCRIPT_FILE)
    _count(report, inputs, groups, total, stats, colors, project)
    report.outputs.append(str(config.out_dir / "report.json"))
    return result


def _note_inputs(config: ToQuPathConfig, inputs: list, report) -> None:
    for input_file in inputs:
        report.inputs.append(str(input_file.path))
        for reason in input_file.skipped_reasons[:5]:
            report.warn(f"{input_file.path}: skipped {reason}")
        if input_file.skipped > 5:
            report.warn(f"{input_file.path}: skipped {input_file.skipped - 5} more features")
    report.inputs.extend(str(s) for s in config.slides)


def _slide_groups(inputs: list, slide_files: list[Path], search: list[Path], project, report) -> list:
    """The inputs grouped by slide, each slide found (given, in the project, or in the search folders)."""
    groups = group_by_slide(inputs, slide_files)
    _resolve_slides(groups, project, search)
    for group in groups:
        mpps = sorted({i.mpp for i in group.inputs if i.mpp})
        if len(mpps) > 1:
            report.warn(f"{group.stem}: the inputs give different microns per pixel {mpps}; measurements use "
                        f"{group.mpp}")
    for name in sorted({s.name for s in slide_files} - {g.image_name for g in groups}):
        report.warn(f"--slide {name} matches no annotation file; it gets no objects")
    return groups


def _add_to_project(project, groups: list, slide_files: list[Path], colors: dict, config: ToQuPathConfig,
                    report) -> dict[str, dict]:
    """The project's entry of every slide (existing entries matched by URI, new ones added), by image name."""
    slides = [(g.image_name, g.slide_path) for g in groups]
    slides += [(s.name, s.resolve()) for s in slide_files if s.name not in {g.image_name for g in groups}]
    entries = add_images(project, slides)
    for warning in project.warnings + class_colour_conflicts(project, colors):
        report.warn(warning)
    legacy = legacy_object_files(project)
    if legacy:
        report.warn(f"{project.folder}: {', '.join(legacy[:5])}{' and more' if len(legacy) > 5 else ''} were "
                    "written by an older slidemill-to-qupath for the import by image name; the import script "
                    "now loads slidemill/objects/<entryID>.geojson and no longer reads them (run "
                    "slidemill-to-qupath again for those slides, then delete geojson/)")
    version = project.data.get("version")
    if not project.is_new and isinstance(version, str) and not version.startswith(config.qupath_version + "."):
        log.info("%s was written by QuPath %s; it keeps that version", project.qpproj, version)
    return entries


def _warn_builtin_colours(colors: dict, report) -> None:
    for name, rgb in colors.items():
        if name in QUPATH_COLORS and tuple(rgb) != QUPATH_COLORS[name]:
            report.warn(f"class {name!r} is {list(rgb)} in the annotations, but QuPath's built-in {name} is "
                        f"{list(QUPATH_COLORS[name])}; a QuPath that knows the class shows its own colour")


def _write_slides(groups: list, entries: dict, colors: dict, config: ToQuPathConfig, staging: Path, suffix: str,
                  total: int, report) -> tuple[ToQuPathResult, WriteStats]:
    """One QuPath GeoJSON per slide in `staging`."""
    result = ToQuPathResult(out_dir=config.out_dir)
    stats = WriteStats()
    with report.timed("write"), Progress(total, "writing QuPath GeoJSON", "features") as progress:
        for group in groups:
            before = (stats.written, stats.dropped)
            features = feature_lines(
                _counted(group.records, progress), colors=colors, mpp=group.mpp, object_type=config.object_type,
                lock=config.lock, stats=stats)
            path = write_feature_collection(staging / f"{group.stem}{suffix}", features,
                                            header=_header(group, config), compress=config.gzip)
            written, dropped = stats.written - before[0], stats.dropped - before[1]
            entry = entries.get(group.image_name) if group.image_name else None
            result.slides.append(SlideOutput(
                image_name=group.image_name, path=config.out_dir / path.name, features=written,
                dropped=dropped, slide=group.slide_path, entry_id=entry["entryID"] if entry else None))
            report.outputs.append(str(config.out_dir / path.name))
            if dropped:
                report.warn(f"{group.stem}: {dropped} features vanished on the 0.01 px grid and were left out")
    return result, stats


def _write_into_project(project, groups: list, entries: dict, result: ToQuPathResult, colors: dict,
                        staging: Path, suffix: str, report) -> None:
    """Each slide's objects to PROJECT/slidemill/objects/<entryID>.geojson, then the project file."""
    try:
        for group, output in zip(groups, result.slides, strict=True):
            entry = entries[group.image_name]  # by entry ID: two images may have the same name
            target = project.folder / objects_file(entry)
            _copy_plain(staging / f"{group.stem}{suffix}", target)
            report.outputs.append(str(target))
            report.items.append(ReportItem(
                id=str(entry["entryID"]), name=group.image_name, status="ok",
                inputs=[str(i.path) for i in group.inputs] + ([str(group.slide_path)] if group.slide_path else []),
                outputs=[str(target)], counts={"features": output.features}))
        written_files = save_project(project, merged_classes(project, colors))
    except PermissionError as exc:
        raise OutputError(f"cannot be written ({exc.strerror})", path=exc.filename or project.folder,
                          fix="Check the project folder's permissions") from None
    report.outputs.extend(str(p) for p in written_files)


def _count(report, inputs: list, groups: list, total: int, stats: WriteStats, colors: dict, project) -> None:
    report.count("input_files", len(inputs))
    report.count("slides", len(groups))
    report.count("features_in", total)
    report.count("features_written", stats.written)
    report.count("features_dropped", stats.dropped)
    report.count("features_skipped_on_read", sum(i.skipped for i in inputs))
    report.count("features_repaired_on_read", sum(i.repaired for i in inputs))
    report.count("features_resnapped", stats.resnapped)
    report.count("duplicate_ids_renamed", stats.renamed_ids)
    report.count("classes", len(colors))
    counts, messages = not_kept(inputs, stats)
    for key, value in counts.items():
        report.count(key, value)
    for message in messages:
        report.warn(message)
    if project is not None:
        report.count("project_entries_new", len(project.new_entries))
        report.count("project_entries_reused", len(project.reused_entries))


def _counted(records: list, progress: Progress, every: int = 1000):
    """The records, advancing `progress` every `every` of them."""
    for start in range(0, len(records), every):
        yield from records[start:start + every]
        progress.advance(len(records[start:start + every]))


def _copy_plain(source: Path, target: Path) -> None:
    """The project's copy is always plain .geojson: QuPath's PathIO.readObjects reads no .gz."""
    with atomic_write(target, "wb") as out:
        if source.name.endswith(".gz"):
            with gzip.open(source, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
        else:
            with open(source, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
