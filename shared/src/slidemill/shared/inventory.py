"""The inventory of slidemill's tools: one `tools/<tool>/meta.yml` per tool, all of one schema.

Each meta.yml (in the manner of an nf-core module's meta.yml) names the tool's command, its inputs and
outputs, the container flavours it is built in and whether it uses a GPU. `ToolMeta` is that schema
(published as `schemas/tool-meta.schema.json`); the container build (`docker/build.sh`), the pipeline
tests and the README table read the files instead of repeating what they say.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

TOOL_NAME = r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$"


class Port(BaseModel):
    """One input or output of a tool."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="the argument or option it comes from, "
                      "in snake case (`model_dir`, `annotations`)")
    type: Literal["file", "folder", "value"]
    format: str = Field(min_length=1, description="what it holds: a slidemill contract kind "
                        "(`slidemill/tileset`), a file format (`png`, `geojson`) or several joined by `|`")
    pattern: str | None = Field(None, description="glob of its file or folder name, where it has one")
    optional: bool
    description: str = Field(min_length=1)


class Container(BaseModel):
    model_config = ConfigDict(extra="forbid")

    entrypoint: list[str] = Field(min_length=1, description="the image's ENTRYPOINT: the tool's command")
    gpu: bool = Field(description="the GPU flavour of the image uses an NVIDIA GPU when one is present")
    flavours: list[Literal["cpu", "gpu"]] = Field(min_length=1, description="image flavours `docker/build.sh` "
                                                  "builds (`gpu`: CUDA base image, tag suffix `-gpu`), written "
                                                  "on one line as a flow list: `flavours: [cpu, gpu]`")


class ToolMeta(BaseModel):
    """`tools/<package>/meta.yml`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=TOOL_NAME, description="the tool's name: `slidemill NAME`, image `slidemill/NAME`, "
                      "Dockerfile target NAME")
    description: str = Field(min_length=1)
    command: str = Field(min_length=1, description="synopsis of the command line")
    container: Container
    keywords: list[str] = Field(default_factory=list)
    inputs: list[Port] = Field(min_length=1)
    outputs: list[Port] = Field(min_length=1)

    @property
    def package(self) -> str:
        """The folder under `tools/` and the module `slidemill.<package>`."""
        return self.name.replace("-", "_")

    @property
    def console_script(self) -> str:
        return f"slidemill-{self.name}"

    @model_validator(mode="after")
    def _consistent(self) -> ToolMeta:
        if self.container.entrypoint != [self.console_script]:
            raise ValueError(f"container.entrypoint must be [{self.console_script!r}], the tool's command")
        if self.container.gpu and "gpu" not in self.container.flavours:
            raise ValueError("container.gpu is true but the flavours have no gpu image")
        if not self.command.startswith(self.console_script):
            raise ValueError(f"command must start with {self.console_script}")
        for side, ports in (("inputs", self.inputs), ("outputs", self.outputs)):
            names = [p.name for p in ports]
            if len(set(names)) < len(names):
                raise ValueError(f"{side} names must be unique: {names}")
        return self


def load_tool_meta(path: str | Path) -> ToolMeta:
    """Read and validate one meta.yml (needs PyYAML, which the test tools and build hosts have).

    Raises `ValueError` naming the file when it is not valid YAML or not a valid `ToolMeta`.
    """
    import yaml
    from pydantic import ValidationError

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        meta = ToolMeta.model_validate(data)
    except (yaml.YAMLError, ValidationError) as exc:
        raise ValueError(f"{path} is not a valid tool meta.yml: {exc}") from None
    if path.parent.name != meta.package:
        raise ValueError(f"{path}: name {meta.name!r} belongs in tools/{meta.package}/meta.yml")
    return meta


def repository_tools(repo: str | Path) -> list[ToolMeta]:
    """Every `tools/*/meta.yml` of a source checkout, sorted by name."""
    return sorted((load_tool_meta(p) for p in Path(repo).glob("tools/*/meta.yml")), key=lambda m: m.name)
