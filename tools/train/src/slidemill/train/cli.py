"""slidemill-train: the command line (typer only; the work is in api.run)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from slidemill.shared.cli import (
    DebugOption,
    Device,
    DeviceOption,
    LogFormat,
    LogFormatOption,
    OverwriteOption,
    cli_run,
    split_names,
    tool_app,
    version_option,
)

from .config import DEFAULT_ARCH, DEFAULT_ENCODER, DEFAULT_EPOCHS, DEFAULT_LR

app = tool_app(
    "slidemill-train",
    "Train a segmentation model on one or more tilesets and export it to ONNX with a model card.\n\n"
    "Writes MODEL_DIR/model.onnx, model-card.json, checkpoints/{last,best}.pt, metrics.csv, curves.png and "
    "report.json. Validation never leaks: whole slides are held out when there are two or more, spatially "
    "separated blocks when there is one. A killed run continues with --resume.",
)


@app.command()
def main(
    tilesets: Annotated[list[Path], typer.Argument(
        help="Tileset folders written by slidemill-tile (tileset.json, tiles/, masks/).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.", show_default=False)],
    arch: Annotated[str, typer.Option(
        "--arch", help="Architecture: unet, unetplusplus, fpn, deeplabv3plus (or any other "
        "segmentation-models-pytorch architecture).")] = DEFAULT_ARCH,
    encoder: Annotated[str, typer.Option("--encoder", help="segmentation-models-pytorch encoder.")] = DEFAULT_ENCODER,
    encoder_weights: Annotated[str, typer.Option(
        "--encoder-weights", help="none (random), imagenet (downloaded by the library; needs internet once) or "
        "PATH of a local encoder state-dict file.")] = "none",
    epochs: Annotated[int | None, typer.Option(
        "--epochs", min=1, help=f"Epochs (passes over the training tiles) [default: {DEFAULT_EPOCHS}; with "
        "--time-limit as many as fit, and --epochs is then an upper bound].", show_default=False)] = None,
    time_limit: Annotated[float | None, typer.Option(
        "--time-limit", min=0.01, help="Minutes of training (validation included) for this call: the learning-rate "
        "schedule is fitted to the budget from the first steps' measured time and stops at its end; the best "
        "checkpoint is kept. With --resume, the budget of the continued part.", show_default=False)] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Tiles per optimisation step.")] = 8,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Peak learning rate (AdamW; linear warmup over 5% of "
                                      "the steps, then cosine decay per step).")] = DEFAULT_LR,
    val_fraction: Annotated[float | None, typer.Option(
        "--val-fraction", min=0.0, max=1.0, help="Fraction of tiles held out for validation [default: 0.2].",
        show_default=False)] = None,
    val_slides: Annotated[list[str] | None, typer.Option(
        "--val-slides", help="Slide name(s) to validate on, instead of --val-fraction (repeat the option or "
        "separate names by commas).", show_default=False)] = None,
    class_weights: Annotated[str, typer.Option(
        "--class-weights", help="auto: cross-entropy weights from the training tiles' class fractions "
        "(median-frequency balancing), or none.")] = "auto",
    sampling: Annotated[str, typer.Option(
        "--sampling", help="balanced: tiles holding rare classes are drawn more often; uniform: every tile "
        "once per epoch.")] = "balanced",
    augment: Annotated[str, typer.Option(
        "--augment", help="standard (flips, 90-degree rotations, HED stain jitter, brightness/contrast, blur), "
        "geometry (flips and rotations only) or none.")] = "standard",
    hed_jitter: Annotated[float, typer.Option(
        "--hed-jitter", min=0.0, max=0.5, help="Strength s of standard's HED stain jitter: each stain's optical "
        "density is scaled by U[1-s, 1+s] and shifted by U[-s, s]; 0 turns stain jitter off.")] = 0.05,
    stain_normalisation: Annotated[str, typer.Option(
        "--stain-normalisation", help="none, macenko or reinhard: map every tile to one target's stain colours "
        "with its own slide's transform (fitted by slidemill-tile); infer applies the same.")] = "none",
    stain_reference: Annotated[Path | None, typer.Option(
        "--stain-reference", help="RGB image or slide whose stain fit is the target [default: the median of the "
        "training slides' fits].", show_default=False)] = None,
    patches: Annotated[str, typer.Option(
        "--patches", help="tiles (the tileset's tiles) or random: with refs tilesets (slidemill-tile --store refs), "
        "each epoch patches at random positions inside the annotated area, class-balanced, seeded by --seed.")
    ] = "tiles",
    slide: Annotated[list[Path] | None, typer.Option(
        "--slide", help="The slide of a refs tileset (file, or a folder holding it), when the tileset's relative "
        "path to it no longer resolves. Repeat for several.", show_default=False)] = None,
    device: DeviceOption = Device.auto,
    amp: Annotated[bool | None, typer.Option(
        "--amp/--no-amp", help="Mixed precision (float16 autocast) [default: on with CUDA, off on the CPU].",
        show_default=False)] = None,
    threads: Annotated[int, typer.Option(
        "--threads", min=0, help="torch compute threads; 0 = torch's default (OMP_NUM_THREADS, else one per "
        "core). Results are bitwise repeatable for one thread count, whatever --workers.")] = 0,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue from the last checkpoint of an interrupted (or finished) run into --out.")] = False,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of every random choice.")] = 0,
    workers: Annotated[int, typer.Option(
        "--workers", min=0, help="Data-loading worker processes; 0 = automatic: one per CPU core on CUDA, none on "
        "the CPU (the model needs the cores; tiles are read between steps).")] = 0,
    early_stopping_patience: Annotated[int, typer.Option(
        "--early-stopping-patience", min=0, help="Stop after this many epochs without a better mean validation "
        "IoU; 0 never stops early.")] = 0,
    overwrite: OverwriteOption = False,
    log_format: LogFormatOption = LogFormat.text,
    debug: DebugOption = False,
    version: version_option("slidemill-train") = False,
) -> None:
    with cli_run("slidemill-train", log_format=log_format, debug=debug):
        from pydantic import ValidationError

        from slidemill.shared.cli import option_error
        from slidemill.shared.errors import InputError

        from .api import run
        from .config import TrainConfig

        names = split_names(val_slides)
        if names and val_fraction is not None:
            raise InputError("--val-fraction and --val-slides were both given",
                             fix="Give one: a fraction of tiles, or the slides to validate on")
        values = {"tilesets": tilesets, "out": out, "arch": arch, "encoder": encoder,
                  "encoder_weights": encoder_weights, "epochs": epochs, "time_limit_min": time_limit,
                  "batch_size": batch_size, "lr": lr, "sampling": sampling, "threads": threads,
                  "val_slides": names, "class_weights": class_weights, "augment": augment,
                  "hed_jitter": hed_jitter, "stain_normalisation": stain_normalisation,
                  "stain_reference": stain_reference,
                  "device": device.value, "amp": amp, "patches": patches, "slides": slide or [],
                  "resume": resume, "seed": seed, "workers": workers,
                  "early_stopping_patience": early_stopping_patience, "overwrite": overwrite}
        if val_fraction is not None:
            values["val_fraction"] = val_fraction
        try:
            config = TrainConfig(**values)
        except ValidationError as exc:
            raise option_error(exc, tool="slidemill-train") from None
        result = run(config, argv=sys.argv)
        iou = "n/a" if result.mean_iou is None else f"{result.mean_iou:.4f}"
        typer.echo(f"{result.out}: {result.card.architecture}/{result.card.encoder}, {result.epochs_run} epoch(s), "
                   f"best epoch {result.best_epoch}, mean validation IoU {iou}")
