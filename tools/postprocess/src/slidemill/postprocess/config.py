"""The validated settings of one postprocess run (sizes in microns, or in raster pixels with `_px`); the
command line is made from this model (slidemill.shared.command)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from slidemill.shared.command import Cli, overwrite_field, workers_field


class PostprocessConfig(BaseModel):
    """Everything `slidemill-postprocess` needs; usable from a notebook as `run(PostprocessConfig(...))`."""

    model_config = ConfigDict(extra="forbid")

    prediction: Annotated[list[Path], Cli(argument=True, metavar="PREDICTION_DIR")] = Field(
        min_length=1, description="output folder of slidemill-infer (holds prediction.json); for a sharded slide, "
        "every shard's folder, post-processed together as one raster")
    out: Annotated[Path, Cli("--out", "-o")] = Field(
        description="annotations file to write (.geojson); the report goes to the same name ending in .report.json")
    smooth_um: float | None = Field(None, ge=0, le=10_000, description="Gaussian smoothing sigma in microns")
    smooth_px: float | None = Field(None, ge=0, le=1_000, description="Gaussian smoothing sigma in raster pixels")
    open_um: float | None = Field(None, ge=0, le=10_000,
                                  description="opening radius in microns: removes specks and thin spurs")
    open_px: int | None = Field(None, ge=0, le=1_000, description="opening radius in raster pixels")
    close_um: float | None = Field(None, ge=0, le=10_000,
                                   description="closing radius in microns: fills narrow gaps and notches")
    close_px: int | None = Field(None, ge=0, le=1_000, description="closing radius in raster pixels")
    min_area_um2: float = Field(0.0, ge=0, description="drop shapes smaller than this area (µm²)")
    fill_holes_um2: float = Field(0.0, ge=0, description="fill holes smaller than this area (µm²)")
    simplify_um: float = Field(0.0, ge=0, le=10_000,
                               description="coverage simplification tolerance in microns, about the square root of "
                               "the area of the corners cut off: borders two classes share stay shared (0 keeps the "
                               "exact pixel outline)")
    classes: list[str] | None = Field(
        None, description="only this class; repeat the option for several. Each value is one class name, exactly "
        "as the class table spells it (commas, colons and spaces included); default: all trainable classes but "
        "the background ones")
    include_background: bool = Field(
        False, description="also vectorise the classes the class table marks as background (glass); by default "
        "they are left out, unless named with --classes")
    chunk_px: int = Field(2048, ge=64, le=65_536,
                          description="side of the square raster chunk processed at a time in pixels (bounds memory)")
    workers: int = workers_field(1, "processes vectorising chunks at once")
    overwrite: bool = overwrite_field("output file")

    @field_validator("prediction", mode="before")
    @classmethod
    def _one_or_more(cls, value):
        return [value] if isinstance(value, (str, Path)) else value

    @model_validator(mode="after")
    def _one_unit_each(self) -> PostprocessConfig:
        for name in ("smooth", "open", "close"):
            if getattr(self, f"{name}_um") is not None and getattr(self, f"{name}_px") is not None:
                raise ValueError(f"give --{name}-um or --{name}-px, not both")
        return self
