"""The validated settings of one postprocess run (sizes in microns, or in raster pixels with `_px`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class PostprocessConfig(BaseModel):
    """Everything `slidemill-postprocess` needs; usable from a notebook as `run(PostprocessConfig(...))`."""

    model_config = ConfigDict(extra="forbid")

    prediction: list[Path] = Field(
        min_length=1, description="prediction folder written by slidemill-infer (or its prediction.json); or every "
        "shard's folder of one sharded run, post-processed together as one raster")
    out: Path = Field(description="output annotations file (.geojson); the report goes beside it")
    smooth_um: float | None = Field(None, ge=0, le=10_000, description="Gaussian smoothing sigma in microns")
    smooth_px: float | None = Field(None, ge=0, le=1_000, description="Gaussian smoothing sigma in raster pixels")
    open_um: float | None = Field(None, ge=0, le=10_000,
                                  description="opening radius in microns: removes specks and thin spurs")
    open_px: int | None = Field(None, ge=0, le=1_000, description="opening radius in raster pixels")
    close_um: float | None = Field(None, ge=0, le=10_000,
                                   description="closing radius in microns: fills narrow gaps and notches")
    close_px: int | None = Field(None, ge=0, le=1_000, description="closing radius in raster pixels")
    min_area_um2: float = Field(0.0, ge=0, description="shapes smaller than this area (µm²) are dropped")
    fill_holes_um2: float = Field(0.0, ge=0, description="holes smaller than this area (µm²) are filled")
    simplify_um: float = Field(0.0, ge=0, le=10_000,
                               description="coverage simplification tolerance in microns, about the square root of "
                               "the area of the corners cut off (0 keeps the pixel outline)")
    classes: list[str] | None = Field(None, description="class names to vectorise (each exactly as the class "
                                      "table spells it); all trainable classes but background ones if unset")
    include_background: bool = Field(False, description="also vectorise the classes marked background (glass)")
    chunk_px: int = Field(2048, ge=64, le=65_536,
                          description="side of the square raster chunk processed at a time (bounds memory)")
    workers: int = Field(1, ge=0, le=256, description="processes vectorising chunks at once; 0 = one per CPU core")
    overwrite: bool = Field(False, description="replace an existing output file")

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
