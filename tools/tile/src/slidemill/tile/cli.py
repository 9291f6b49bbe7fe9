"""`slidemill-tile SLIDE --out DIR`: typer only; the work is in api.run."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from slidemill.shared.cli import (
    AllowUpsamplingOption,
    ChannelOption,
    DebugOption,
    DicomSeriesOption,
    LogFormat,
    LogFormatOption,
    OverwriteOption,
    SlideMppOption,
    TissueMode,
    TissueModeOption,
    TOption,
    WorkersOption,
    ZOption,
    cli_run,
    option_error,
    tool_app,
    version_option,
)

app = tool_app("slidemill-tile", "Cut a whole-slide image into tiles at a chosen resolution, keep the tissue, and "
               "turn QuPath GeoJSON (or ASAP / ImageScope XML) annotations into per-tile class masks.")


def _interrupt(signum, frame):  # a workflow engine's SIGTERM cleans up like Ctrl-C
    raise KeyboardInterrupt


@app.command()
def main(
    out: Annotated[Path, typer.Option("--out", help="Output folder (written all at once at the end).",
                                      show_default=False)],
    slide: Annotated[Path | None, typer.Argument(
        help="The slide: any format large-image reads, a DICOM folder, PNG/JPEG (or --qupath-project).",
        metavar="SLIDE", show_default=False)] = None,
    annotations: Annotated[list[Path] | None, typer.Option(
        "--annotations", help="Annotation file (QuPath GeoJSON any version, ASAP XML, ImageScope XML), "
        "level-0 pixels. Repeat for several.")] = None,
    qupath_project: Annotated[Path | None, typer.Option(
        "--qupath-project", help="A QuPath project (folder or project.qpproj) instead of SLIDE: every image with "
        "annotations exported by the project's scripts/export-slidemill.groovy becomes DIR/<entryID>/.",
        show_default=False)] = None,
    slide_dirs: Annotated[list[Path] | None, typer.Option(
        "--slide-dir", help="With --qupath-project: a folder to look for slides that are not where the project "
        "says, by file name. Repeat for several.", show_default=False)] = None,
    list_images: Annotated[bool, typer.Option(
        "--list-images", help="With --qupath-project: tile nothing, write the list of the project's images to "
        "--out (.json or .tsv: entry ID, name, slide found, how, exported annotations), which the workflows "
        "fan out over.")] = False,
    classes: Annotated[Path | None, typer.Option(
        "--classes", help='Class table JSON {"classes": [{"name", "label", "color", "ignore"}]}; default: the '
        "annotation class names, sorted, labels 0..n-1, Ignore* = 255.")] = None,
    mpp: Annotated[float | None, typer.Option("--mpp", help="Microns per pixel of the tiles [default: 0.5].",
                                              min=0.0)] = None,
    magnification: Annotated[float | None, typer.Option(
        "--magnification", help="Magnification of the tiles (20 means 0.5 um/px), instead of --mpp.", min=0.0)] = None,
    tile_size: Annotated[int, typer.Option("--tile-size", help="Tile width and height in pixels.", min=16,
                                           max=8192)] = 512,
    overlap: Annotated[int | None, typer.Option(
        "--overlap", help="Overlap of neighbouring tiles in pixels [default: tile size / 8].", min=0,
        show_default=False)] = None,
    tissue_threshold: Annotated[float, typer.Option(
        "--tissue-threshold", help="Keep tiles with at least this fraction of tissue.", min=0.0, max=1.0)] = 0.5,
    all_tiles: Annotated[bool, typer.Option("--all-tiles", help="Keep every tile, tissue or not.")] = False,
    annotated_only: Annotated[bool, typer.Option("--annotated-only",
                                                 help="Keep only tiles touching an annotation.")] = False,
    background: Annotated[str | None, typer.Option(
        "--background", help="Class of pixels no annotation covers; default: ignore (255, sparse annotation).")] = None,
    unclassified_class: Annotated[str | None, typer.Option(
        "--unclassified-class", help="Class of annotations without a class; default: they are skipped.")] = None,
    png_compression: Annotated[int, typer.Option(
        "--png-compression", help="PNG deflate level: 1 = fastest, up to 12 = smallest, 0 = none.",
        min=0, max=12)] = 1,
    store: Annotated[str, typer.Option(
        "--store", help="How tiles are kept: png (a PNG per tile and mask), zarr (one zip container of every tile "
        "and mask: copy it to a training node that cannot see the slides), refs (positions and masks only: train "
        "reads the pixels from the slide, and can draw random patches).")] = "png",
    codec: Annotated[str, typer.Option(
        "--codec", help="Image codec of --store zarr: blosc-lz4 (lossless) or jpeg-q95 (lossy, about 5x "
        "smaller).")] = "blosc-lz4",
    workers: WorkersOption = 0,  # an upper bound: small jobs (under 32 tiles a worker) use fewer
    slide_mpp: SlideMppOption = None,
    channel: ChannelOption = None,
    z: ZOption = None,
    t: TOption = None,
    dicom_series: DicomSeriesOption = None,
    allow_upsampling: AllowUpsamplingOption = False,
    tissue_mode: TissueModeOption = TissueMode.auto,
    overwrite: OverwriteOption = False,
    log_format: LogFormatOption = LogFormat.text,
    debug: DebugOption = False,
    version: version_option("slidemill-tile") = False,
) -> None:
    """Tiles, masks, tissue mask, preview and a tileset manifest in DIR."""
    signal.signal(signal.SIGTERM, _interrupt)
    # large-image's in-process tile cache; without this it looks for a memcached server and logs about it
    os.environ.setdefault("LARGE_IMAGE_CACHE_BACKEND", "python")
    with cli_run("slidemill-tile", log_format=log_format, debug=debug):
        from pydantic import ValidationError

        from slidemill.shared.errors import InputError
        from slidemill.shared.slide import open_slide  # noqa: F401 - fail fast on a broken install

        from .config import OPTIONS, TileConfig

        if (slide is None) == (qupath_project is None):
            raise InputError("give either a SLIDE or --qupath-project PROJECT" if slide is None else
                             "give a SLIDE or --qupath-project, not both",
                             fix="See slidemill-tile --help")
        if slide is not None and not slide.exists():
            from slidemill.shared.errors import MissingInputError

            raise MissingInputError("slide does not exist", path=slide,
                                    fix="Check the path and that the folder is mounted")
        if list_images:
            if qupath_project is None:
                raise InputError("--list-images lists the images of a QuPath project", path=slide,
                                 fix="Pass --qupath-project PROJECT instead of SLIDE")
            from .project import write_image_list

            rows = write_image_list(qupath_project, out, search_dirs=slide_dirs or [], overwrite=overwrite)
            found = sum(1 for r in rows if r["found_by"])
            typer.echo(f"{out}: {len(rows)} images, {found} with their slide found, "
                       f"{sum(1 for r in rows if r['annotations'])} with exported annotations")
            return
        if qupath_project is not None and annotations:
            raise InputError("--annotations cannot be given with --qupath-project (the project's export is used)",
                             path=qupath_project, fix="Leave out --annotations")
        try:
            config = TileConfig(slide=slide or qupath_project, out=out, annotations=annotations or [],
                                classes_file=classes, mpp=mpp,
                                magnification=magnification, tile_size_px=tile_size, overlap_px=overlap,
                                tissue_threshold=tissue_threshold, all_tiles=all_tiles, annotated_only=annotated_only,
                                background_class=background, unclassified_class=unclassified_class, workers=workers,
                                slide_mpp=slide_mpp, png_compression=png_compression, overwrite=overwrite,
                                channels=channel or None, z=z, t=t, dicom_series=dicom_series,
                                allow_upsampling=allow_upsampling, tissue_mode=tissue_mode.value,
                                store=store, image_codec=codec)
        except ValidationError as exc:
            raise option_error(exc, OPTIONS, tool="slidemill-tile") from None
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


if __name__ == "__main__":
    app()
