"""slidemill-infer: the command is made from InferConfig (slidemill.shared.command); the work is in api.run."""

from __future__ import annotations

import sys

import typer

from slidemill.shared.cli import tool_app
from slidemill.shared.command import config_command

from .config import InferConfig

TOOL = "slidemill-infer"

app = tool_app(
    TOOL,
    "Predict a whole slide with a slidemill model: overlapping tiles at the model's resolution, "
    "probabilities blended with a smooth window, label and probability rasters as tiled pyramidal "
    "TIFFs with their exact level-0 mapping (prediction.json), a preview and a report.",
)


def main(config: InferConfig) -> dict:
    from .api import run

    result = run(config, argv=sys.argv)
    p = result.prediction
    typer.echo(f"{result.out}: labels {p.labels.width} x {p.labels.height} at {p.mpp} um/px, "
               f"{int(result.report.counts.get('tiles', 0))} tiles on {result.report.environment.get('provider')}")
    return {"tiles": result.report.counts.get("tiles", 0)}


config_command(app, InferConfig, tool=TOOL, main=main)
