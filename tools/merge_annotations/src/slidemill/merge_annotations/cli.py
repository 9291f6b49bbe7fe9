"""`slidemill-merge-annotations IN.geojson... --out OUT.geojson`: the command is made from MergeConfig
(slidemill.shared.command); the work is in api.run."""

from __future__ import annotations

import sys

import typer

from slidemill.shared.cli import tool_app
from slidemill.shared.command import config_command

from .config import MergeConfig

TOOL = "slidemill-merge-annotations"

app = tool_app(TOOL, "Merge annotation files of one slide (shards, tiles): same-class shapes that overlap, touch "
               "or lie within --max-gap-um become one shape.")


def main(config: MergeConfig) -> None:
    from .api import run

    result = run(config, argv=sys.argv)
    typer.echo(f"{result.out}: {result.features} features from {result.shapes_in} shapes "
               + ", ".join(f"{k} {v}" for k, v in result.features_per_class.items()))


config_command(app, MergeConfig, tool=TOOL, main=main, doc="Merge IN.geojson files into OUT.geojson.")
