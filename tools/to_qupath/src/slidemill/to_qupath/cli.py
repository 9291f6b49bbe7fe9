"""`slidemill-to-qupath`: the command is made from ToQuPathConfig (slidemill.shared.command); the work is
in api.run."""

from __future__ import annotations

import typer

from slidemill.shared.cli import tool_app
from slidemill.shared.command import config_command

from .config import ToQuPathConfig

TOOL = "slidemill-to-qupath"

app = tool_app(TOOL, "Annotations into QuPath-flavoured GeoJSON per slide and, with --project, a QuPath project "
               "(0.4-0.6) plus the script that imports every object headless.")


def main(config: ToQuPathConfig) -> None:
    from .api import run

    result = run(config)
    if result.import_command:
        typer.echo(result.import_command)
    else:
        total = sum(s.features for s in result.slides)
        typer.echo(f"{total} objects for {len(result.slides)} slide(s) in {result.out_dir}")


config_command(app, ToQuPathConfig, tool=TOOL, main=main,
               doc="Write QuPath GeoJSON for each slide; with --project, print the one command that imports it all.")

if __name__ == "__main__":
    app()
