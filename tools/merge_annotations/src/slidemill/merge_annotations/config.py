"""The validated settings of one merge-annotations run; the command line is made from this model
(slidemill.shared.command)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from slidemill.shared.command import Cli, SlideMpp, overwrite_field


class MergeConfig(BaseModel):
    """Everything `slidemill-merge-annotations` needs; usable from a notebook as `run(MergeConfig(...))`."""

    model_config = ConfigDict(extra="forbid")

    inputs: Annotated[list[Path], Cli(argument=True, metavar="IN.geojson")] = Field(
        min_length=1, description="annotation files (slidemill or QuPath GeoJSON) of one slide")
    out: Annotated[Path, Cli("--out", "-o")] = Field(
        description="merged annotations file (.geojson); the report goes to the same name ending in .report.json")
    max_gap_um: float | None = Field(None, ge=0, le=100_000,
                                     description="merge same-class shapes at most this far apart (µm); 0 merges "
                                     "only touching or overlapping shapes")
    max_gap_px: float | None = Field(None, ge=0, le=1_000_000,
                                     description="the same in level-0 pixels (needs no resolution)")
    classes: list[str] | None = Field(
        None, description="only this class; repeat the option for several. Each value is one class name, exactly "
        "as the class table spells it (commas, colons and spaces included); default: every class")
    min_area_um2: float = Field(0.0, ge=0, description="drop merged shapes smaller than this area (µm²)")
    slide_mpp: SlideMpp = Field(None, description="level-0 microns per pixel when the inputs lack it "
                                "(or to override it)")
    overwrite: bool = overwrite_field("output file")

    @model_validator(mode="after")
    def _one_gap(self) -> MergeConfig:
        if self.max_gap_um is not None and self.max_gap_px is not None:
            raise ValueError("give --max-gap-um or --max-gap-px, not both")
        return self
