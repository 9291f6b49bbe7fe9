"""`slidemill-postprocess PREDICTION_DIR --out ANNOTATIONS.geojson`: the command is made from
PostprocessConfig (slidemill.shared.command); the work is in api.run."""

from __future__ import annotations

import sys

import typer

from slidemill.shared.cli import tool_app
from slidemill.shared.command import config_command

from .config import PostprocessConfig

TOOL = "slidemill-postprocess"

app = tool_app(TOOL, "Turn a prediction's label raster into clean polygons: smoothed, free of speckle, holes "
               "kept, placed exactly in level-0 pixels (an annotations GeoJSON).")


def main(config: PostprocessConfig) -> None:
    from .api import run

    result = run(config, argv=sys.argv)
    typer.echo(f"{result.out}: {result.features} features "
               + ", ".join(f"{k} {v}" for k, v in result.features_per_class.items()))


config_command(app, PostprocessConfig, tool=TOOL, main=main,
               doc="Vectorise PREDICTION_DIR's label raster into ANNOTATIONS.geojson.")
