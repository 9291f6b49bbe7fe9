"""The settings of one to-qupath run; the command line is made from this model (slidemill.shared.command)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from slidemill.shared.command import Cli, overwrite_field

QUPATH_RELEASES: dict[str, str] = {"0.4": "0.4.4", "0.5": "0.5.1", "0.6": "0.6.0"}


class ToQuPathConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    annotations: Annotated[list[Path], Cli(argument=True, metavar="ANNOTATIONS")] = Field(
        min_length=1, description="annotation files: slidemill annotations GeoJSON (they name their slide), QuPath "
        "GeoJSON of any version (.geojson, .json, .gz), ASAP or ImageScope XML")
    out_dir: Annotated[Path, Cli("--out")] = Field(
        description="output folder: <slide name without extension>.geojson per slide and report.json")
    slides: Annotated[list[Path], Cli("--slide")] = Field(
        default_factory=list, description="a slide file, or a folder of slides to search by name (repeat for "
        "several); matched to the annotations by file name (slidemill files name their slide) or, for plain "
        "QuPath/XML files, by the annotation file's name. Needed with --project for slides that are not beside "
        "their annotations or already in the project")
    project_dir: Annotated[Path | None, Cli("--project")] = Field(
        None, description="QuPath project folder to create or update, or its project.qpproj (never clobbered; the "
        "previous project.qpproj is kept as project.qpproj.backup)")
    object_type: Literal["annotation", "detection"] | None = Field(
        None, description="write every object as this QuPath type (detections are lighter for many objects); "
        "default: each object keeps its own type")
    lock: bool = Field(False, description="lock the annotations in QuPath, so they cannot be moved or edited by "
                       "accident")
    qupath_version: Literal["0.4", "0.5", "0.6"] = Field(
        "0.5", description="QuPath release a new project is written for (an existing project keeps its own)")
    gzip: bool = Field(False, description="write <name>.geojson.gz in --out (the project's copy stays plain "
                       ".geojson, which QuPath's importer needs)")
    overwrite: bool = overwrite_field("output folder")
