"""The validated settings of one inference run; the command line is made from this model
(slidemill.shared.command)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import ConfigDict, Field

from slidemill.shared.command import (
    API_ONLY,
    Cli,
    DeviceName,
    SlideOptions,
    device_field,
    overwrite_field,
    workers_field,
)
from slidemill.shared.contracts import Shard
from slidemill.shared.errors import InputError
from slidemill.shared.geometry import Region

BLOCK_PX = 512  # TIFF tile size of the output rasters, and the unit shards are made of


def parse_shard(text: str) -> Shard:
    """`I/N` as typed on the command line (0-based index I of N shards)."""
    parts = text.replace(" ", "").split("/")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise InputError(f"--shard expects I/N with whole numbers (for example 0/4), got {text!r}",
                         fix="Give the 0-based shard index and the shard count, like 2/8")
    index, count = int(parts[0]), int(parts[1])
    if count < 1:
        raise InputError(f"--shard {text}: the shard count must be at least 1", fix="Use for example 0/4")
    if index >= count:
        raise InputError(f"--shard {text}: shard index {index} is out of range for {count} shards",
                         fix=f"Shard indices are 0-based: use 0/{count} to {count - 1}/{count}")
    return Shard(index=index, count=count)


def parse_region(text: str) -> Region:
    try:
        return Region.parse(text)
    except ValueError as exc:
        reason = str(exc).split("\n")[0]
        raise InputError(f"--region {text!r} is not a level-0 rectangle X,Y,W,H ({reason})",
                         fix="Give four whole numbers: left, top, width, height in level-0 pixels, "
                             "with width and height above 0") from None


class InferConfig(SlideOptions):
    """Everything `slidemill.infer.run` needs. Geometry (tile size, resolution, normalisation) comes
    from the model card, never from here."""

    model_config = ConfigDict(extra="forbid")

    slide: Annotated[Path, Cli(argument=True, metavar="SLIDE", must_exist="slide", batch=True)] = Field(
        description="whole-slide image (or DICOM series folder); several slides, or a folder of them, are each "
        "predicted into OUT/<slide name>/ with the model loaded once")
    model_dir: Annotated[Path, Cli(argument=True, metavar="MODEL_DIR", must_exist="model folder")] = Field(
        description="model folder: model-card.json and the ONNX file it names")
    out: Annotated[Path, Cli("--out")] = Field(
        description="output folder (prediction.json, labels.tiff, probabilities.tiff, preview.png, report.json)")
    overlap: float = Field(0.5, ge=0.0, le=0.9, description="fraction of the tile size neighbouring tiles share")
    batch_size: int = Field(8, ge=1, le=4096, description="tiles per model call")
    tissue_only: Annotated[bool, Cli("--tissue-only", off="--everywhere")] = Field(
        True, description="predict only where a tissue detector finds tissue (other pixels get label 255), or "
        "everywhere")
    tta: Literal["none", "flips"] = Field(
        "none", description="test-time augmentation: flips averages the 4 horizontal/vertical flips")
    region: Annotated[Region | None, Cli(parse=parse_region, metavar="X,Y,W,H")] = Field(
        None, description="predict only this level-0 rectangle; default: the whole slide")
    shard: Annotated[Shard | None, Cli(parse=parse_shard, metavar="I/N")] = Field(
        None, description="predict shard I (0-based) of N: a band of the region holding about 1/N of the tissue. "
        "The N outputs together equal one unsharded run")
    device: DeviceName = device_field("auto uses CUDA when onnxruntime has it")
    fp16: bool = Field(False, description="on CUDA, run the model in float16 (inputs and outputs stay float32)")
    workers: int = workers_field(0, "tile reading threads")
    overwrite: bool = overwrite_field("output folder")
    memory_budget_mb: Annotated[int, API_ONLY] = Field(
        64, ge=8, le=65536, description="size of the probability accumulators in MB (sets the column chunk width)")
    preview_size_px: Annotated[int, API_ONLY] = Field(
        1024, ge=64, le=8192, description="longest side of each of preview.png's two panels (slide, overlay) in "
        "pixels")
