"""The settings of one to-qupath run."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

QUPATH_RELEASES: dict[str, str] = {"0.4": "0.4.4", "0.5": "0.5.1", "0.6": "0.6.0"}


class ToQuPathConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    annotations: list[Path] = Field(
        min_length=1, description="annotation files: slidemill `annotations` GeoJSON, QuPath GeoJSON of any "
        "version (plain or gzipped), ASAP or ImageScope XML")
    out_dir: Path = Field(description="folder for <slide name without extension>.geojson[.gz] and report.json")
    slides: list[Path] = Field(
        default_factory=list, description="slide files (or folders of slides to search); matched to the "
        "annotations by file name (slidemill files name their slide) or, for plain QuPath/XML files, by the "
        "annotation file's name")
    project_dir: Path | None = Field(
        None, description="QuPath project folder to create or update (or its project.qpproj)")
    object_type: Literal["annotation", "detection"] | None = Field(
        None, description="QuPath object type of every written object; None keeps each object's own type")
    lock: bool = Field(False, description="lock annotations so they cannot be moved or edited by accident")
    qupath_version: Literal["0.4", "0.5", "0.6"] = Field(
        "0.5", description="QuPath release a new project is written for (an existing project keeps its own)")
    gzip: bool = Field(False, description="write out_dir/<name>.geojson.gz instead of .geojson")
    overwrite: bool = Field(False, description="replace an existing, non-empty out_dir")
