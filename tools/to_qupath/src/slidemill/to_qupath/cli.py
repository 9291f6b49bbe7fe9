"""`slidemill-to-qupath`: typer only; the work is in api.run."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from slidemill.shared.cli import (
    DebugOption,
    LogFormat,
    LogFormatOption,
    OverwriteOption,
    cli_run,
    tool_app,
    version_option,
)

TOOL = "slidemill-to-qupath"

app = tool_app(TOOL, "Annotations into QuPath-flavoured GeoJSON per slide and, with --project, a QuPath project "
               "(0.4-0.6) plus the script that imports every object headless.")


class ObjectType(StrEnum):
    annotation = "annotation"
    detection = "detection"


class QuPathVersion(StrEnum):
    v04 = "0.4"
    v05 = "0.5"
    v06 = "0.6"


@app.command()
def main(
    annotations: Annotated[list[Path], typer.Argument(
        help="Annotation files: slidemill annotations GeoJSON (they name their slide), QuPath GeoJSON of any "
        "version (.geojson, .json, .gz), ASAP or ImageScope XML.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Output folder: <slide name without extension>.geojson per "
                                      "slide and report.json.", show_default=False)],
    slide: Annotated[list[Path] | None, typer.Option(
        "--slide", help="A slide file, or a folder of slides to search by name (repeat for several). Needed "
        "with --project for slides that are not beside their annotations or already in the project.")] = None,
    project: Annotated[Path | None, typer.Option(
        "--project", help="QuPath project folder to create or update (never clobbered; the previous "
        "project.qpproj is kept as project.qpproj.backup).")] = None,
    object_type: Annotated[ObjectType | None, typer.Option(
        "--object-type", help="Write every object as this QuPath type (detections are lighter for many "
        "objects). Default: each object keeps its own type.")] = None,
    lock: Annotated[bool, typer.Option("--lock", help="Lock the annotations in QuPath.")] = False,
    qupath_version: Annotated[QuPathVersion, typer.Option(
        "--qupath-version", help="QuPath release a new project is written for.")] = QuPathVersion.v05,
    gzip_out: Annotated[bool, typer.Option("--gzip", help="Write <name>.geojson.gz in --out (the project's "
                                           "copy stays plain .geojson, which QuPath's importer needs).")] = False,
    overwrite: OverwriteOption = False,
    version: version_option(TOOL) = False,
    log_format: LogFormatOption = LogFormat.text,
    debug: DebugOption = False,
) -> None:
    """Write QuPath GeoJSON for each slide; with --project, print the one command that imports it all."""
    with cli_run(TOOL, log_format=log_format, debug=debug):
        from .api import run
        from .config import ToQuPathConfig

        config = ToQuPathConfig(
            annotations=annotations, out_dir=out, slides=slide or [], project_dir=project,
            object_type=object_type.value if object_type else None, lock=lock,
            qupath_version=qupath_version.value, gzip=gzip_out, overwrite=overwrite)
        result = run(config)
        if result.import_command:
            typer.echo(result.import_command)
        else:
            total = sum(s.features for s in result.slides)
            typer.echo(f"{total} objects for {len(result.slides)} slide(s) in {result.out_dir}")


if __name__ == "__main__":
    app()
