"""slidemill-train: the command is made from TrainConfig (slidemill.shared.command); the work is in
api.run (torch is imported only when training starts, so --help stays instant)."""

from __future__ import annotations

import sys

import typer

from slidemill.shared.cli import tool_app
from slidemill.shared.command import config_command

from .config import TrainConfig

TOOL = "slidemill-train"

app = tool_app(
    TOOL,
    "Train a segmentation model on one or more tilesets and export it to ONNX with a model card.\n\n"
    "Writes MODEL_DIR/model.onnx, model-card.json, checkpoints/{last,best}.pt, metrics.csv, curves.png and "
    "report.json. Validation never leaks: whole slides are held out when there are two or more, spatially "
    "separated blocks when there is one. A killed run continues with --resume.",
)


def main(config: TrainConfig) -> None:
    from .api import run

    result = run(config, argv=sys.argv)
    iou = "n/a" if result.mean_iou is None else f"{result.mean_iou:.4f}"
    typer.echo(f"{result.out}: {result.card.architecture}/{result.card.encoder}, {result.epochs_run} epoch(s), "
               f"best epoch {result.best_epoch}, mean validation IoU {iou}")


config_command(app, TrainConfig, tool=TOOL, main=main)
