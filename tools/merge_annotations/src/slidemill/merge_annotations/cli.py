"""`slidemill-merge-annotations IN.geojson... --out OUT.geojson`: typer only; the work is in api.run."""

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
    SlideMppOption,
    cli_run,
    tool_app,
    version_option,
)

app = tool_app("slidemill-merge-annotations", "Merge annotation files of one slide (shards, tiles): "
               "same-class shapes that overlap, touch or lie within --max-gap-um become one shape.")


@app.command()
def main(
    inputs: Annotated[list[Path], typer.Argument(help="Annotation files (.geojson) of one slide.",
                                                 metavar="IN.geojson...", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Merged annotations file (.geojson); the report goes "
                                      "to the same name ending in .report.json.", show_default=False)],
    max_gap_um: Annotated[float | None, typer.Option(min=0.0, help="Merge same-class shapes at most this far "
                                                     "apart (µm); 0 merges only touching or overlapping shapes.")
                          ] = None,
    max_gap_px: Annotated[float | None, typer.Option(min=0.0, help="The same in level-0 pixels.")] = None,
    classes: Annotated[list[str] | None, typer.Option(
        "--classes", help="Only this class; repeat the option for several. Each value is one class name, exactly "
        "as the class table spells it (commas, colons and spaces included).")] = None,
    min_area_um2: Annotated[float, typer.Option(min=0.0, help="Drop merged shapes smaller than this (µm²).")
                            ] = 0.0,
    slide_mpp: SlideMppOption = None,
    overwrite: OverwriteOption = False,
    version: version_option("slidemill-merge-annotations") = False,
    log_format: LogFormatOption = LogFormat.text,
    debug: DebugOption = False,
) -> None:
    """Merge IN.geojson files into OUT.geojson."""
    with cli_run("slidemill-merge-annotations", log_format=log_format, debug=debug):
        from pydantic import ValidationError

        from slidemill.shared.cli import option_error

        from .api import run
        from .config import MergeConfig

        try:
            config = MergeConfig(inputs=inputs, out=out, max_gap_um=max_gap_um, max_gap_px=max_gap_px,
                                 classes=classes or None, min_area_um2=min_area_um2, slide_mpp=slide_mpp,
                                 overwrite=overwrite)
        except ValidationError as exc:
            raise option_error(exc, tool="slidemill-merge-annotations") from None
        result = run(config, argv=sys.argv)
        typer.echo(f"{result.out}: {result.features} features from {result.shapes_in} shapes "
                   + ", ".join(f"{k} {v}" for k, v in result.features_per_class.items()))
