"""The validated settings of one tiling run (the CLI builds this; notebooks may too)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slidemill.shared.classes import ClassTable
from slidemill.shared.geometry import magnification_to_mpp
from slidemill.shared.tissue import TISSUE_MPP

DEFAULT_MPP = 0.5


class TileConfig(BaseModel):
    """Everything `run` and `iter_tiles` need. Units are in the field names."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    slide: Path = Field(description="the slide file (or DICOM series folder)")
    out: Path | None = Field(None, description="output folder (only `run` writes; `iter_tiles` ignores it)")
    annotations: list[Path] = Field(
        default_factory=list, description="QuPath GeoJSON, ASAP XML or ImageScope XML files, level-0 pixels")
    classes_file: Path | None = Field(None, description="a JSON class table {\"classes\": [...]}; "
                                      "default: the class names of the annotations, sorted")
    class_table: ClassTable | None = Field(None, description="the class table itself (API use; wins over classes_file)")
    mpp: float | None = Field(None, gt=0, le=1000, description="microns per pixel of the tiles (default 0.5)")
    magnification: float | None = Field(
        None, gt=0, le=1000, description="objective magnification of the tiles (10x = 1 um/px); instead of mpp")
    tile_size_px: int = Field(512, ge=16, le=8192, description="tile width and height in tile pixels")
    overlap_px: int = Field(64, ge=0, le=8191, description="overlap of neighbouring tiles in tile pixels")
    tissue_threshold: float = Field(0.5, ge=0, le=1, description="minimum tissue fraction of a kept tile")
    all_tiles: bool = Field(False, description="keep every tile of the grid, tissue or not")
    annotated_only: bool = Field(False, description="keep only tiles that touch an annotation")
    background_class: str | None = Field(
        None, description="class of pixels no annotation covers; default: ignore (sparse annotation)")
    unclassified_class: str | None = Field(
        None, description="class of annotations without a class; default: such annotations are skipped")
    workers: int = Field(0, ge=0, le=512, description="worker processes; 0 = one per CPU core")
    slide_mpp: float | None = Field(None, gt=0, le=1000, description="level-0 microns per pixel, overriding the file")
    tissue_mpp: float = Field(TISSUE_MPP, gt=0, le=1000, description="microns per pixel of the tissue detection")
    store: Literal["png", "refs", "zarr"] = Field(
        "png", description="png: a PNG file per tile and mask; zarr: one zip container of all tiles (the format "
        "to copy to a training node); refs: positions and masks only, train reads the pixels from the slide")
    image_codec: Literal["blosc-lz4", "jpeg-q95"] = Field(
        "blosc-lz4", description="zarr store's image codec: blosc-lz4 (lossless) or jpeg-q95 (lossy, 4:4:4)")
    png_compression: int = Field(1, ge=0, le=12, description="PNG deflate level of tiles and masks (1 = fastest)")
    overwrite: bool = Field(False, description="replace an existing output folder")

    @model_validator(mode="after")
    def _check(self) -> TileConfig:
        if self.mpp is not None and self.magnification is not None:
            raise ValueError("give either mpp or magnification, not both")
        if self.overlap_px >= self.tile_size_px:
            raise ValueError(f"overlap_px ({self.overlap_px}) must be smaller than tile_size_px ({self.tile_size_px})")
        return self

    @property
    def target_mpp(self) -> float:
        if self.mpp is not None:
            return self.mpp
        if self.magnification is not None:
            return magnification_to_mpp(self.magnification)
        return DEFAULT_MPP

    @property
    def stride_px(self) -> int:
        return self.tile_size_px - self.overlap_px
