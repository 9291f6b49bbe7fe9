"""`slidemill-postprocess PREDICTION_DIR --out ANNOTATIONS.geojson`: typer only; the work is in api.run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from slidemill.shared.cli import (
    DebugOption,
    LogFormat,
    LogFormatOption,
    OverwriteOption,
    WorkersOption,
    cli_run,
    tool_app,
    version_option,
)

app = tool_app("slidemill-postprocess", "Turn a prediction's label raster into clean polygons: smoothed, "
               "free of speckle, holes kept, placed exactly in level-0 pixels (an annotations GeoJSON).")


@app.command()
def main(
    prediction: Annotated[list[Path], typer.Argument(
        help="Output folder of slidemill-infer (holds prediction.json); for a sharded slide, every shard's "
        "folder, post-processed together as one raster.", metavar="PREDICTION_DIR...", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Annotations file to write (.geojson); the report "
                                      "goes to the same name ending in .report.json.", show_default=False)],
    smooth_um: Annotated[float | None, typer.Option(min=0.0, help="Gaussian smoothing sigma in microns.")] = None,
    smooth_px: Annotated[float | None, typer.Option(min=0.0, help="Gaussian smoothing sigma in raster pixels.")
                         ] = None,
    open_um: Annotated[float | None, typer.Option(min=0.0, help="Opening radius in microns (removes specks "
                                                  "and spurs).")] = None,
    open_px: Annotated[int | None, typer.Option(min=0, help="Opening radius in raster pixels.")] = None,
    close_um: Annotated[float | None, typer.Option(min=0.0, help="Closing radius in microns (fills narrow "
                                                   "gaps).")] = None,
    close_px: Annotated[int | None, typer.Option(min=0, help="Closing radius in raster pixels.")] = None,
    min_area_um2: Annotated[float, typer.Option(min=0.0, help="Drop shapes smaller than this (µm²).")] = 0.0,
    fill_holes_um2: Annotated[float, typer.Option(min=0.0, help="Fill holes smaller than this (µm²).")] = 0.0,
    simplify_um: Annotated[float, typer.Option(min=0.0, help="Coverage simplification tolerance in microns: "
                                               "borders two classes share stay shared (0 keeps the exact pixel "
                                               "outline).")] = 0.0,
    classes: Annotated[list[str] | None, typer.Option(
        "--classes", help="Only this class; repeat the option for several. Each value is one class name, exactly "
        "as the class table spells it (commas, colons and spaces included).")] = None,
    include_background: Annotated[bool, typer.Option(
        "--include-background", help="Also vectorise the classes the class table marks as background (glass); "
        "by default they are left out, unless named with --classes.")] = False,
    chunk_px: Annotated[int, typer.Option(min=64, help="Raster chunk side in pixels (bounds memory).")] = 2048,
    workers: WorkersOption = 1,
    overwrite: OverwriteOption = False,
    version: version_option("slidemill-postprocess") = False,
    log_format: LogFormatOption = LogFormat.text,
    debug: DebugOption = False,
) -> None:
    """Vectorise PREDICTION_DIR's label raster into ANNOTATIONS.geojson."""
    with cli_run("slidemill-postprocess", log_format=log_format, debug=debug):
        from pydantic import ValidationError

        from slidemill.shared.cli import option_error

        from .api import run
        from .config import PostprocessConfig

        try:
            config = PostprocessConfig(
                prediction=prediction, out=out, smooth_um=smooth_um, smooth_px=smooth_px, open_um=open_um,
                open_px=open_px, close_um=close_um, close_px=close_px, min_area_um2=min_area_um2,
                fill_holes_um2=fill_holes_um2, simplify_um=simplify_um, classes=classes or None,
                include_background=include_background,
                chunk_px=chunk_px, workers=workers, overwrite=overwrite)
        except ValidationError as exc:
            raise option_error(exc, tool="slidemill-postprocess") from None
        result = run(config, argv=sys.argv)
        typer.echo(f"{result.out}: {result.features} features "
                   + ", ".join(f"{k} {v}" for k, v in result.features_per_class.items()))
