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
    overlap_px: int | None = Field(
        None, ge=0, le=8191, description="overlap of neighbouring tiles in tile pixels; default: tile_size_px // 8")
    tissue_threshold: float = Field(0.5, ge=0, le=1, description="minimum tissue fraction of a kept tile")
    all_tiles: bool = Field(False, description="keep every tile of the grid, tissue or not")
    annotated_only: bool = Field(False, description="keep only tiles that touch an annotation")
    background_class: str | None = Field(
        None, description="class of pixels no annotation covers; default: ignore (sparse annotation)")
    unclassified_class: str | None = Field(
        None, description="class of annotations without a class; default: such annotations are skipped")
    workers: int = Field(0, ge=0, le=512, description="worker processes; 0 = one per CPU core")
    slide_mpp: float | None = Field(None, gt=0, le=1000, description="level-0 microns per pixel, overriding the file")
    channels: list[str] | None = Field(
        None, description="channels to read, by name or 0-based index: 1 (grey) or 3 (R, G, B); default: the "
        "file's own grey or RGB, and an error for a file of other channels")
    z: int | None = Field(None, ge=0, description="Z plane to read (files with several)")
    t: int | None = Field(None, ge=0, description="time point to read (files with several)")
    dicom_series: str | None = Field(None, description="SeriesInstanceUID to read from a folder of several")
    allow_upsampling: bool = Field(False, description="allow tiles more than 2x finer than the slide")
    tissue_mode: Literal["auto", "brightfield", "darkfield"] = Field(
        "auto", description="tissue darker than glass (brightfield) or brighter than a dark background "
        "(darkfield, fluorescence); auto: darkfield when the thumbnail's median grey is below 100")
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
        if self.channels is not None and len(self.channels) not in (1, 3):
            raise ValueError(f"channels was given {len(self.channels)} times; give it once (grey) or three "
                             "times (R, G, B)")
        if self.overlap_px is None:
            self.overlap_px = self.tile_size_px // 8
        if self.overlap_px >= self.tile_size_px:
            raise ValueError(f"overlap_px {self.overlap_px} must be smaller than tile_size_px {self.tile_size_px}")
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


# config field -> option, for error messages (slidemill.shared.cli.option_error)
OPTIONS = {"mpp": "--mpp", "magnification": "--magnification", "tile_size_px": "--tile-size",
           "overlap_px": "--overlap", "tissue_threshold": "--tissue-threshold", "classes_file": "--classes",
           "background_class": "--background", "unclassified_class": "--unclassified-class",
           "slide_mpp": "--slide-mpp", "png_compression": "--png-compression", "channels": "--channel",
           "dicom_series": "--dicom-series", "tissue_mode": "--tissue-mode", "allow_upsampling": "--allow-upsampling",
           "all_tiles": "--all-tiles", "annotated_only": "--annotated-only", "workers": "--workers",
           "z": "--z", "t": "--t"}
