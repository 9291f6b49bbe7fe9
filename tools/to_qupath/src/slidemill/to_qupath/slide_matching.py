"""Reading the annotation files and finding the slide each one is about.

A slidemill `annotations` file is validated against its contract and names its slide
(`slide.name`); a plain QuPath GeoJSON export (any version) or an ASAP/ImageScope XML file does not,
so its slide is the `--slide` whose name (without extension) starts its file name, or the only
`--slide` given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from slidemill.shared.annotations import AnnotationShape, ReadResult
from slidemill.shared.errors import InputError

_MULTIPART_EXTENSIONS = (".ome.tif", ".ome.tiff", ".tar.gz")
_ANNOTATION_SUFFIXES = (".gz", ".geojson", ".json", ".xml")


def qupath_name_without_extension(name: str) -> str:
    """The name QuPath's `GeneralTools.getNameWithoutExtension` gives (the import script relies on it)."""
    lower = name.lower()
    for ext in _MULTIPART_EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)]
    index = name.rfind(".")
    if index >= 0 and re.fullmatch(r"\.\w+", name[index:], flags=re.ASCII):
        return name[:index]
    return name


def annotation_stem(path: Path) -> str:
    """`a.geojson.gz` -> `a`, `b.qupath.json` -> `b.qupath`."""
    name = path.name
    for suffix in _ANNOTATION_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return name


@dataclass
class SlideGroup:
    """Everything written for one slide: its name, where the slide file is, and the inputs about it."""

    image_name: str | None
    stem: str
    inputs: list[ReadResult] = field(default_factory=list)
    slide_path: Path | None = None

    @property
    def records(self) -> list[AnnotationShape]:
        return [r for i in self.inputs for r in i.shapes]

    @property
    def mpp(self) -> float | None:
        return next((i.mpp for i in self.inputs if i.mpp), None)


def _match_by_name(input_file: ReadResult, names: list[str]) -> str | None:
    """The slide name (without extension) that begins the annotation file's name; the longest wins."""
    stem = annotation_stem(input_file.path)
    best: str | None = None
    for name in names:
        slide_stem = qupath_name_without_extension(name)
        if stem == slide_stem or stem.startswith(slide_stem + "."):
            if best is None or len(slide_stem) > len(qupath_name_without_extension(best)):
                best = name
    return best


def group_by_slide(inputs: list[ReadResult], slides: list[Path]) -> list[SlideGroup]:
    """One group per slide, in the order the slides first appear in the inputs. A file that does not
    name its slide goes with the slide (given with --slide, or named by another input) whose name
    begins its file name, else with the only --slide given, else on its own (named after the file)."""
    by_name = {s.name: s for s in slides}
    named = [i.slide.name if i.slide is not None else None for i in inputs]
    known = list(by_name) + [n for n in named if n and n not in by_name]
    groups: dict[str, SlideGroup] = {}
    for input_file, name in zip(inputs, named, strict=True):
        if name is None:
            name = _match_by_name(input_file, known) or (slides[0].name if len(slides) == 1 else None)
        stem = qupath_name_without_extension(name) if name else annotation_stem(input_file.path)
        group = groups.get(stem)
        if group is None:
            group = groups[stem] = SlideGroup(image_name=name, stem=stem)
        elif group.image_name != name:
            raise InputError(
                f"is about {name or 'an unnamed slide'}, but {group.inputs[0].path} is about "
                f"{group.image_name or 'an unnamed slide'} and both would be written as {stem}.geojson",
                path=input_file.path, fix="Convert them in separate runs (each with its own --out)")
        group.inputs.append(input_file)
        if name and group.slide_path is None and name in by_name:
            group.slide_path = by_name[name]
    return list(groups.values())


def find_slide(group: SlideGroup, search_dirs: list[Path]) -> Path | None:
    """The slide file of `group`: given with --slide, else beside an annotation file or in `search_dirs`."""
    if group.slide_path is not None or not group.image_name:
        return group.slide_path
    candidates = [i.path.parent / group.image_name for i in group.inputs]
    candidates += [d / group.image_name for d in search_dirs]
    for candidate in candidates:
        if candidate.exists():
            group.slide_path = candidate.resolve()
            return group.slide_path
    return None
