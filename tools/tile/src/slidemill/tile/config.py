"""The validated settings of one tiling run (the CLI builds this; notebooks may too)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from slidemill.shared.classes import ClassTable
from slidemill.shared.command import API_ONLY, Cli, SlideOptions, overwrite_field, workers_field
from slidemill.shared.geometry import magnification_to_mpp
from slidemill.shared.tissue import TISSUE_MPP

DEFAULT_MPP = 0.5


class TileConfig(SlideOptions):
    """Everything `run` and `iter_tiles` need. Units are in the field names. The command line is made
    from this model (slidemill.shared.command)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    slide: Annotated[Path, Cli(argument=True, metavar="SLIDE", optional=True, batch=True)] = Field(
        description="the slide: any format large-image reads, a DICOM folder, PNG/JPEG (or --qupath-project); "
        "several slides, or a folder of them, are each tiled into DIR/<slide name>/")
    out: Annotated[Path | None, Cli("--out")] = Field(
        None, description="output folder, written all at once at the end (only `run` writes; `iter_tiles` ignores "
        "it)")
    annotations: list[Path] = Field(
        default_factory=list, description="annotation file (QuPath GeoJSON any version, ASAP XML, ImageScope XML), "
        "level-0 pixels; repeat for several")
    classes_file: Annotated[Path | None, Cli("--classes")] = Field(
        None, description='class table JSON {"classes": [{"name", "label", "color", "ignore"}]}; default: the '
        "annotation class names, sorted, labels 0..n-1, Ignore* = 255")
    class_table: Annotated[ClassTable | None, API_ONLY] = Field(
        None, description="the class table itself (API use; wins over classes_file)")
    mpp: Annotated[float | None, Cli(shown_default=str(DEFAULT_MPP))] = Field(
        None, gt=0, le=1000, description="microns per pixel of the tiles")
    magnification: float | None = Field(
        None, gt=0, le=1000, description="magnification of the tiles (20 means 0.5 um/px), instead of --mpp")
    tile_size_px: Annotated[int, Cli("--tile-size")] = Field(
        512, ge=16, le=8192, description="tile width and height in tile pixels")
    overlap_px: Annotated[int | None, Cli("--overlap", shown_default="tile size / 8")] = Field(
        None, ge=0, le=8191, description="overlap of neighbouring tiles in tile pixels")
    tissue_threshold: float = Field(0.5, ge=0, le=1, description="keep tiles with at least this fraction of tissue")
    all_tiles: bool = Field(False, description="keep every tile of the grid, tissue or not")
    annotated_only: bool = Field(False, description="keep only tiles that touch an annotation")
    background_class: Annotated[str | None, Cli("--background")] = Field(
        None, description="class of pixels no annotation covers; default: ignore (255, sparse annotation)")
    unclassified_class: str | None = Field(
        None, description="class of annotations without a class; default: such annotations are skipped")
    workers: int = workers_field(0, "worker processes (an upper bound: small jobs, under 32 tiles a worker, use "
                                 "fewer)", le=512)
    tissue_mpp: Annotated[float, API_ONLY] = Field(TISSUE_MPP, gt=0, le=1000,
                                                   description="microns per pixel of the tissue detection")
    store: Literal["png", "refs", "zarr"] = Field(
        "png", description="how tiles are kept: png (a PNG per tile and mask), zarr (one zip container of every tile "
        "and mask: copy it to a training node that cannot see the slides), refs (positions and masks only: train "
        "reads the pixels from the slide, and can draw random patches)")
    image_codec: Annotated[Literal["blosc-lz4", "jpeg-q95"], Cli("--codec")] = Field(
        "blosc-lz4", description="image codec of --store zarr: blosc-lz4 (lossless) or jpeg-q95 (lossy, 4:4:4, about "
        "5x smaller)")
    png_compression: int = Field(1, ge=0, le=12, description="PNG deflate level of tiles and masks: 1 = fastest, up "
                                 "to 12 = smallest, 0 = none")
    overwrite: bool = overwrite_field("output folder")

    @model_validator(mode="after")
    def _check(self) -> TileConfig:
        if self.mpp is not None and self.magnification is not None:
            raise ValueError("give either --mpp or --magnification, not both")
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
