"""`slidemill-tile SLIDE --out DIR`: the command is made from TileConfig (slidemill.shared.command), plus
the two options of a QuPath project run; the work is in api.run (project.run_project)."""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from slidemill.shared.cli import tool_app
from slidemill.shared.command import build_config, config_command

from .config import TileConfig

TOOL = "slidemill-tile"

app = tool_app(TOOL, "Cut a whole-slide image into tiles at a chosen resolution, keep the tissue, and turn QuPath "
               "GeoJSON (or ASAP / ImageScope XML) annotations into per-tile class masks.")

PROJECT_OPTIONS = [
    inspect.Parameter("qupath_project", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Path | None, typer.Option(
            "--qupath-project", metavar="PATH", show_default=False,
            help="A QuPath project (folder or project.qpproj) instead of SLIDE: every image with annotations "
            "exported by the project's scripts/export-slidemill.groovy becomes DIR/<entryID>/.")]),
    inspect.Parameter("slide_dirs", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        list[Path] | None, typer.Option(
            "--slide-dir", metavar="PATH", show_default=False,
            help="With --qupath-project: a folder to look for slides that are not where the project says, by "
            "file name. Repeat for several.")]),
    inspect.Parameter("list_images", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[
        bool, typer.Option(
            "--list-images",
            help="With --qupath-project: tile nothing, write the list of the project's images to --out (.json or "
            ".tsv: entry ID, name, slide found, how, exported annotations), which the workflows fan out over.")]),
]


def main(values: dict[str, Any], qupath_project: Path | None, slide_dirs: list[Path] | None,
         list_images: bool) -> dict | None:
    from slidemill.shared.errors import InputError, MissingInputError
    from slidemill.shared.slide import open_slide  # noqa: F401 - fail fast on a broken install

    # large-image's in-process tile cache; without this it looks for a memcached server and logs about it
    os.environ.setdefault("LARGE_IMAGE_CACHE_BACKEND", "python")
    slide = values.get("slide")
    if (slide is None) == (qupath_project is None):
        raise InputError("give either a SLIDE or --qupath-project PROJECT" if slide is None else
                         "give a SLIDE or --qupath-project, not both", fix=f"See {TOOL} --help")
    if slide is not None and not slide.exists():
        raise MissingInputError("slide does not exist", path=slide, fix="Check the path and that the folder is mounted")
    if list_images:
        if qupath_project is None:
            raise InputError("--list-images lists the images of a QuPath project", path=slide,
                             fix="Pass --qupath-project PROJECT instead of SLIDE")
        from .project import write_image_list

        out = values["out"]
        rows = write_image_list(qupath_project, out, search_dirs=slide_dirs or [],
                                overwrite=bool(values.get("overwrite")))
        found = sum(1 for r in rows if r["found_by"])
        typer.echo(f"{out}: {len(rows)} images, {found} with their slide found, "
                   f"{sum(1 for r in rows if r['annotations'])} with exported annotations")
        return None
    if qupath_project is not None and values.get("annotations"):
        raise InputError("--annotations cannot be given with --qupath-project (the project's export is used)",
                         path=qupath_project, fix="Leave out --annotations")
    config = build_config(TileConfig, {**values, "slide": slide or qupath_project}, tool=TOOL)
    if qupath_project is not None:
        from .project import run_project

        done = run_project(qupath_project, config, search_dirs=slide_dirs or [], argv=sys.argv)
        tiled = done.tiled
        typer.echo(f"{done.out}: {len(tiled)} of {len(done.items)} images tiled, "
                   f"{sum(i.counts['tiles_written'] for i in tiled):.0f} tiles; see {done.out / 'report.json'}")
        return
    from .api import run

    result = run(config, argv=sys.argv)
    typer.echo(f"{result.out}: {result.tiles_written} tiles, {result.megapixels:.1f} MP in {result.seconds:.1f} s")
    return {"tiles_written": result.tiles_written}


config_command(app, TileConfig, tool=TOOL, main=main, extra=PROJECT_OPTIONS,
               doc="Tiles, masks, tissue mask, preview and a tileset manifest in DIR.")

if __name__ == "__main__":
    app()
