"""The validated settings of one merge-annotations run."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator


class MergeConfig(BaseModel):
    """Everything `slidemill-merge-annotations` needs; usable from a notebook as `run(MergeConfig(...))`."""

    model_config = ConfigDict(extra="forbid")

    inputs: list[Path] = Field(min_length=1, description="annotation files (slidemill or QuPath GeoJSON) of one slide")
    out: Path = Field(description="output annotations file (.geojson); the report goes beside it")
    max_gap_um: float | None = Field(None, ge=0, le=100_000,
                                     description="same-class shapes at most this far apart (µm) become one")
    max_gap_px: float | None = Field(None, ge=0, le=1_000_000,
                                     description="the same in level-0 pixels (needs no resolution)")
    classes: list[str] | None = Field(None, description="only these classes are merged and written; all if unset")
    min_area_um2: float = Field(0.0, ge=0, description="merged shapes smaller than this area (µm²) are dropped")
    slide_mpp: float | None = Field(None, gt=0, description="level-0 microns per pixel when the inputs lack it "
                                    "(or to override it)")
    overwrite: bool = Field(False, description="replace an existing output file")

    @model_validator(mode="after")
    def _one_gap(self) -> MergeConfig:
        if self.max_gap_um is not None and self.max_gap_px is not None:
            raise ValueError("give --max-gap-um or --max-gap-px, not both")
        return self
