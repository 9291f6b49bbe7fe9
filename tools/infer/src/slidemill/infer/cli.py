"""slidemill-infer: the command line (typer only; the work is in api.run)."""

from __future__ import annotations

import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from slidemill.shared.cli import (
    AllowUpsamplingOption,
    ChannelOption,
    DebugOption,
    Device,
    DeviceOption,
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
    existing_path,
    tool_app,
    version_option,
)

app = tool_app(
    "slidemill-infer",
    "Predict a whole slide with a slidemill model: overlapping tiles at the model's resolution, "
    "probabilities blended with a smooth window, label and probability rasters as tiled pyramidal "
    "TIFFs with their exact level-0 mapping (prediction.json), a preview and a report.",
)


class Tta(StrEnum):
    none = "none"
    flips = "flips"


@app.command()
def main(
    slide: Annotated[Path, typer.Argument(help="Whole-slide image (or DICOM series folder).", show_default=False)],
    model_dir: Annotated[Path, typer.Argument(
        help="Model folder: model-card.json and the ONNX file it names.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Output folder.", show_default=False)],
    overlap: Annotated[float, typer.Option(
        "--overlap", min=0.0, max=0.9, help="Fraction of the tile size neighbouring tiles share.")] = 0.5,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=4096, help="Tiles per model call.")] = 8,
    tissue_only: Annotated[bool, typer.Option(
        "--tissue-only/--everywhere",
        help="Predict only where a tissue detector finds tissue (other pixels get label 255), or everywhere.")] = True,
    tta: Annotated[Tta, typer.Option("--tta", help="Test-time augmentation: flips averages 4 flips.")] = Tta.none,
    region: Annotated[str | None, typer.Option(
        "--region", metavar="X,Y,W,H", help="Predict only this level-0 rectangle.", show_default=False)] = None,
    shard: Annotated[str | None, typer.Option(
        "--shard", metavar="I/N", help="Predict shard I (0-based) of N: a band of the region holding about 1/N "
        "of the tissue. The N outputs together equal one unsharded run.", show_default=False)] = None,
    device: DeviceOption = Device.auto,
    fp16: Annotated[bool, typer.Option("--fp16", help="On CUDA, run the model in float16.")] = False,
    workers: WorkersOption = 0,
    slide_mpp: SlideMppOption = None,
    channel: ChannelOption = None,
    z: ZOption = None,
    t: TOption = None,
    dicom_series: DicomSeriesOption = None,
    allow_upsampling: AllowUpsamplingOption = False,
    tissue_mode: TissueModeOption = TissueMode.auto,
    overwrite: OverwriteOption = False,
    version: version_option("slidemill-infer") = False,
    log_format: LogFormatOption = LogFormat.text,
    debug: DebugOption = False,
) -> None:
    with cli_run("slidemill-infer", log_format=log_format, debug=debug):
        from pydantic import ValidationError

        from slidemill.shared.cli import option_error

        from .api import run
        from .config import OPTIONS, InferConfig, parse_region, parse_shard

        existing_path(slide, "slide")
        existing_path(model_dir, "model folder")
        try:
            config = InferConfig(
                slide=slide, model_dir=model_dir, out=out, overlap=overlap, batch_size=batch_size,
                tissue_only=tissue_only, tta=tta.value, region=parse_region(region) if region else None,
                shard=parse_shard(shard) if shard else None, device=device.value, fp16=fp16, workers=workers,
                slide_mpp=slide_mpp, overwrite=overwrite, channels=channel or None, z=z, t=t,
                dicom_series=dicom_series, allow_upsampling=allow_upsampling, tissue_mode=tissue_mode.value,
            )
        except ValidationError as exc:
            raise option_error(exc, OPTIONS, tool="slidemill-infer") from None
        result = run(config, argv=sys.argv)
        p = result.prediction
        typer.echo(f"{result.out}: labels {p.labels.width} x {p.labels.height} at {p.mpp} um/px, "
                   f"{int(result.report.counts.get('tiles', 0))} tiles on {result.report.environment.get('provider')}")
