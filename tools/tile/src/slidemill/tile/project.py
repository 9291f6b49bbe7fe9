"""`slidemill-tile --qupath-project PROJECT --out DIR`: one tileset per image of a QuPath project.

The annotations come from the project's export (`slidemill/annotations/<entryID>.geojson`, written by
`scripts/export-slidemill.groovy` run in QuPath; see `slidemill.shared.qupath_project`). Every image with
an exported file and a slide that can be found is tiled into `DIR/<entryID>/` with one class table for
the whole project (classes named as in the annotations, colours from the project's
`classifiers/classes.json`); every other image is listed in `DIR/report.json` with the reason, never
skipped in silence. A project without any export gets the script written into it, and exit 2 with the
command that runs it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from slidemill.shared.annotations import AnnotationShape, read_annotation_file
from slidemill.shared.classes import ClassTable
from slidemill.shared.cli import package_version
from slidemill.shared.contracts import ReportItem
from slidemill.shared.errors import InputError, SlidemillError
from slidemill.shared.files import prepare_output_dir, prepare_output_file, write_text_atomic
from slidemill.shared.qupath_project import (
    EXPORT_DIR,
    QuPathProject,
    export_command,
    read_project,
    uri_to_path,
    write_export_script,
)
from slidemill.shared.report import ReportBuilder

from .config import TileConfig

log = logging.getLogger(__name__)

TOOL = "slidemill-tile"


@dataclass
class ProjectResult:
    out: Path
    items: list[ReportItem] = field(default_factory=list)  # one per image of the project, in project order

    @property
    def tiled(self) -> list[ReportItem]:
        return [i for i in self.items if i.status == "ok"]


def project_class_table(project: QuPathProject, annotations: list[list[AnnotationShape]],
                        config: TileConfig) -> ClassTable:
    """One class table for every image: the classes the exported annotations (the annotation objects of
    each image) use, ordered and labelled as tile orders a single slide's, coloured as the project's class
    list colours them."""
    names: set[str] = set()
    colours: dict[str, tuple[int, int, int]] = {}
    for shapes in annotations:
        for shape in shapes:
            name = shape.class_name or config.unclassified_class
            if name:
                names.add(name)
                if shape.color:
                    colours.setdefault(name, shape.color)
    if config.background_class:
        names.add(config.background_class)
    colours.update({name: rgb for name, rgb in project.classes if rgb is not None})
    ordered = sorted(names, key=lambda n: (n.lower(), n))
    table = ClassTable.from_names(ordered, background={config.background_class} if config.background_class else set())
    return ClassTable(classes=[c.model_copy(update={"color": colours[c.name]}) if c.name in colours and not c.ignore
                               else c for c in table.classes])


IMAGE_LIST_COLUMNS = ["id", "name", "slide", "found_by", "annotations"]


def image_list(project_path: Path, *, search_dirs: list[Path] | None = None) -> list[dict[str, str]]:
    """Every image of the project, in project order, as the workflows fan out over them: `id` (entry ID),
    `name` (image name), `slide` (the slide found for it, found the way `read_project` finds slides; when
    none is found, the path its URI names, so the step that opens it fails naming where the project
    says it is), `found_by` ("uri", "relative to the project", "search folder", or "" when not found) and
    `annotations` (its exported `slidemill/annotations/<entryID>.geojson`, or ""). Paths are absolute, a
    found slide's with its links resolved (a workflow engine may stage it through a link of its own).
    Raises InputError for a project that does not parse."""
    project = read_project(project_path, search_dirs=search_dirs or [])
    rows = []
    for image in project.images:
        if image.slide is not None:
            slide = str(image.slide.resolve())  # the file itself: a staged link may not be there later
        else:
            named = uri_to_path(image.uri) if image.uri else None
            slide = str(named) if named is not None else ""
            log.warning("entry %s (%s): %s", image.entry_id, image.name, image.problem or (
                f"the slide was not found at {image.uri}, relative to the project, or in the --slide-dir folders "
                "given"))
        rows.append({"id": image.entry_id, "name": image.name, "slide": slide, "found_by": image.found_by or "",
                     "annotations": str(image.annotations) if image.annotations is not None else ""})
    return rows


def write_image_list(project_path: Path, out: Path, *, search_dirs: list[Path] | None = None,
                     overwrite: bool = False) -> list[dict[str, str]]:
    """Write `image_list` to `out`: `.json` a JSON array of objects (Argo's `withParam`), `.tsv` a header
    line of `IMAGE_LIST_COLUMNS` and one tab-separated line per image (the shell and Nextflow's
    `splitCsv`). Raises InputError for another suffix, or for a TSV value holding a tab or a line
    break (it could not be read back as it is)."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in {".json", ".tsv"}:
        raise InputError("is neither .json nor .tsv, so the list's format cannot be told", path=out,
                         fix="With --list-images, give --out images.json or --out images.tsv")
    prepare_output_file(out, overwrite=overwrite)
    rows = image_list(project_path, search_dirs=search_dirs)
    if suffix == ".json":
        text = "[\n" + ",\n".join(json.dumps(row, ensure_ascii=False) for row in rows) + ("\n" if rows else "") + "]\n"
    else:
        lines = ["\t".join(IMAGE_LIST_COLUMNS)]
        for row in rows:
            values = [row[c] for c in IMAGE_LIST_COLUMNS]
            bad = [c for c, v in zip(IMAGE_LIST_COLUMNS, values, strict=True) if "\t" in v or "\n" in v or "\r" in v]
            if bad:
                raise InputError(f"entry {row['id']} has a tab or line break in its {', '.join(bad)}, which a "
                                 "tab-separated list cannot hold", path=out,
                                 fix="Give --out images.json instead, or rename the file")
            lines.append("\t".join(values))
        text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, text)
    return rows


def _annotation_objects(path: Path) -> list[AnnotationShape]:
    return [s for s in read_annotation_file(path).shapes if s.object_type == "annotation"]


def run_project(project_path: Path, config: TileConfig, *, search_dirs: list[Path] | None = None,
                argv: list[str] | None = None) -> ProjectResult:
    """Tile every exported image of the project at `project_path` into `config.out/<entryID>/` with the
    options of `config` (its `slide` and `annotations` are ignored). Raises InputError when nothing can
    be tiled (no export yet: the export script is written into the project first)."""
    from .api import run

    if config.out is None:
        raise InputError("no output folder given", fix="Pass --out DIR")
    out = prepare_output_dir(config.out, overwrite=config.overwrite,
                             fix="Pass --overwrite to replace its tilesets, or choose another --out")
    project = read_project(project_path, search_dirs=search_dirs or [])
    if not project.exported:
        script = write_export_script(project)
        raise InputError(
            f"has no exported annotations yet ({len(project.images)} image(s), no {EXPORT_DIR}/<entryID>.geojson); "
            f"the export script was written to {script}", path=project.file,
            fix=f"Run `{export_command(project.file, script)}` (QuPath writes each image's annotations), "
                "then run slidemill-tile --qupath-project again")
    report = ReportBuilder(TOOL, package_version(TOOL), argv)
    result = ProjectResult(out=out)
    usable, objects = [], {}
    for image in project.images:
        reason = None
        if image.annotations is None:
            reason = (f"no exported annotations ({EXPORT_DIR}/{image.entry_id}.geojson is missing): run the "
                      "export script again")
        elif image.slide is None:
            reason = image.problem or (f"the slide was not found at {image.uri}, relative to the project, or in "
                                       "the --slide-dir folders given")
        else:
            objects[image.entry_id] = _annotation_objects(image.annotations)
            if not objects[image.entry_id]:
                reason = "the image has no annotations in QuPath"
        if reason is None:
            usable.append(image)
        else:
            result.items.append(ReportItem(id=image.entry_id, name=image.name, status="skipped", reason=reason))
    classes = config.class_table
    if classes is None and config.classes_file is None and usable:
        classes = project_class_table(project, [objects[i.entry_id] for i in usable], config)
    out.mkdir(parents=True, exist_ok=True)
    for image in usable:
        folder = out / image.entry_id
        log.info("entry %s (%s): %s (found by %s)", image.entry_id, image.name, image.slide, image.found_by)
        inputs = [str(image.slide), str(image.annotations)]
        try:
            tiled = run(config.model_copy(update={"slide": image.slide, "annotations": [image.annotations],
                                                  "out": folder, "class_table": classes}), argv=argv)
        except SlidemillError as exc:
            log.error("entry %s (%s) not tiled: %s", image.entry_id, image.name, exc.paragraph())
            result.items.append(ReportItem(id=image.entry_id, name=image.name, status="failed",
                                           reason=exc.paragraph(), inputs=inputs))
            continue
        result.items.append(ReportItem(id=image.entry_id, name=image.name, status="ok", inputs=inputs,
                                       outputs=[f"{image.entry_id}/tileset.json"],
                                       counts={"tiles_written": tiled.tiles_written}))
    order = {image.entry_id: i for i, image in enumerate(project.images)}
    result.items.sort(key=lambda item: order[item.id])
    for item in result.items:
        if item.status != "ok":
            report.warn(f"entry {item.id} ({item.name}) {item.status}: {item.reason}")
    report.items = result.items
    report.inputs = [str(project.file)]
    report.outputs = [str(out / item.outputs[0]) for item in result.tiled]
    report.counts.update({"images": len(project.images), "images_tiled": len(result.tiled),
                          "images_skipped": sum(i.status == "skipped" for i in result.items),
                          "images_failed": sum(i.status == "failed" for i in result.items),
                          "tiles_written": sum(i.counts["tiles_written"] for i in result.tiled)})
    report.environment["qupath_project"] = str(project.file)
    report.environment["qupath_project_version"] = str(project.version)
    report.write(out / "report.json", status="ok" if result.tiled else "failed")
    if not result.tiled:
        reasons = "; ".join(f"entry {i.id} ({i.name}): {i.reason}" for i in result.items)
        raise InputError(f"has no image that could be tiled: {reasons}", path=project.file,
                         fix="Pass --slide-dir with the folder that holds the slides, or export the annotations "
                             f"again; the list is in {out / 'report.json'}")
    return result
