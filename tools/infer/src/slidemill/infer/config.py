"""The validated settings of one inference run."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from slidemill.shared.contracts import Shard
from slidemill.shared.errors import InputError
from slidemill.shared.geometry import Region

BLOCK_PX = 512  # TIFF tile size of the output rasters, and the unit shards are made of


class InferConfig(BaseModel):
    """Everything `slidemill.infer.run` needs. Geometry (tile size, resolution, normalisation) comes
    from the model card, never from here."""

    model_config = ConfigDict(extra="forbid")

    slide: Path = Field(description="the whole-slide image (file, or DICOM series folder)")
    model_dir: Path = Field(description="folder with model-card.json and the ONNX file it names")
    out: Path = Field(description="output folder (prediction.json, labels.tiff, probabilities.tiff, ...)")
    overlap: float = Field(0.5, ge=0.0, le=0.9, description="fraction of the tile size neighbouring tiles share")
    batch_size: int = Field(8, ge=1, le=4096, description="tiles per model call")
    tissue_only: bool = Field(True, description="predict only tiles with tissue; other pixels get label 255")
    tta: Literal["none", "flips"] = Field(
        "none", description="test-time augmentation: flips averages the 4 horizontal/vertical flips")
    region: Region | None = Field(None, description="level-0 rectangle to predict; null is the whole slide")
    shard: Shard | None = Field(None, description="predict only this part (a band of output blocks) of the region")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto uses CUDA when onnxruntime has it")
    fp16: bool = Field(False, description="on CUDA, run the model in float16 (inputs and outputs stay float32)")
    workers: int = Field(0, ge=0, le=256, description="tile reading threads; 0 means one per CPU core")
    slide_mpp: float | None = Field(None, gt=0, description="level-0 microns per pixel of the slide (override)")
    channels: list[str] | None = Field(
        None, description="channels to read, by name or 0-based index: 1 (grey) or 3 (R, G, B), as when tiling")
    z: int | None = Field(None, ge=0, description="Z plane to read (files with several)")
    t: int | None = Field(None, ge=0, description="time point to read (files with several)")
    dicom_series: str | None = Field(None, description="SeriesInstanceUID to read from a folder of several")
    allow_upsampling: bool = Field(False, description="allow a model more than 2x finer than the slide")
    tissue_mode: Literal["auto", "brightfield", "darkfield"] = Field(
        "auto", description="tissue detection for --tissue-only: brightfield, darkfield (fluorescence) or auto")
    overwrite: bool = Field(False, description="replace an existing output folder")
    memory_budget_mb: int = Field(
        64, ge=8, le=65536, description="size of the probability accumulators in MB (sets the column chunk width)")
    preview_size_px: int = Field(1024, ge=64, le=8192, description="longest side of each of preview.png's two "
                                 "panels (slide, overlay) in pixels")


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


# config field -> option, for error messages (slidemill.shared.cli.option_error)
OPTIONS = {"overlap": "--overlap", "batch_size": "--batch-size", "tissue_only": "--tissue-only", "tta": "--tta",
           "region": "--region", "shard": "--shard", "device": "--device", "fp16": "--fp16", "workers": "--workers",
           "slide_mpp": "--slide-mpp", "channels": "--channel", "dicom_series": "--dicom-series",
           "allow_upsampling": "--allow-upsampling", "tissue_mode": "--tissue-mode", "model_dir": "MODEL_DIR"}
