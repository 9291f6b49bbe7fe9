"""Reading a QuPath project: its images, where their slides are now, their exported annotations, its classes.

A project (`project.qpproj`, see `../shared/QUPATH.md`) lists its images by URI and entry ID; the objects
of each image live in `data/<entryID>/data.qpdata`, which is Java-serialised and readable only by QuPath.
So the annotations come out through a script run in QuPath (`EXPORT_SCRIPT`, written into the project as
`scripts/export-slidemill.groovy`) that writes each image's annotations as QuPath GeoJSON to
`slidemill/annotations/<entryID>.geojson` (entry IDs are unique in a project; image names need not be).

Slides are found the way QuPath finds them after a project folder has moved (`DefaultProject`): at the
URI; else at the same place relative to the project as when the project was saved (the project's own
`uri` says where that was); else by file name in the folders the user gives. The search by name is
refused for a file name that several images of the project share: which of them a file found by that
name is cannot be told, so those images are "not found" (`problem` says why), never given one slide.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote, urlparse

from .errors import InputError, MissingInputError
from .files import write_text_atomic

PROJECT_FILE = "project.qpproj"
CLASSES_FILE = "classifiers/classes.json"
EXPORT_SCRIPT_FILE = "scripts/export-slidemill.groovy"
EXPORT_DIR = "slidemill/annotations"

# characters java.io.File.toURI() leaves as they are in a path (RFC 2396 pchar and '/')
_URI_SAFE = "/-_.!~*'()$&+,;=:@"

EXPORT_SCRIPT = """\
// Written by slidemill. For the image it runs on, writes every annotation (classes, names, colours,
// measurements as QuPath has them) as QuPath GeoJSON to
//   <project folder>/slidemill/annotations/<entry ID>.geojson
// an empty FeatureCollection when the image has none. Run it for every image of the project with
//   QuPath script --project=<this project's project.qpproj> <this script>
// It changes nothing in the project. The file appears complete or not at all (written, then renamed).
import java.nio.file.Files
import java.nio.file.StandardCopyOption

def entry = getProjectEntry()
def dir = new File(buildFilePath(PROJECT_BASE_DIR, 'slidemill', 'annotations'))
dir.mkdirs()
def target = new File(dir, entry.getID() + '.geojson')
def partial = new File(dir, entry.getID() + '.geojson.part')
def annotations = getAnnotationObjects()
exportObjectsToGeoJson(annotations, partial.getAbsolutePath(), "FEATURE_COLLECTION")
Files.move(partial.toPath(), target.toPath(), StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE)
println "${entry.getImageName()} (entry ${entry.getID()}): ${annotations.size()} annotations -> ${target}"
"""


def java_file_uri(path: Path) -> str:
    """`file:/abs/path` as Java's `File.toURI().toString()` writes it: spaces and other characters a URI
    path may not hold percent-encoded (%20), non-ASCII letters kept as they are."""
    text = Path(path).resolve().as_posix()
    return "file:" + "".join(c if ord(c) > 127 and c.isprintable() and not c.isspace() else quote(c, safe=_URI_SAFE)
                             for c in text)


def uri_to_path(uri: str) -> Path | None:
    """The local path of a `file:` URI (`file:/a%20b/x.svs`, `file:///a/x.svs`); None for other schemes."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    path = unquote(parsed.path)
    if os.name == "nt" and path.startswith("/") and len(path) > 2 and path[2] == ":":  # file:/C:/x
        path = path[1:]
    return Path(path)


def export_command(project_file: Path, script: Path) -> str:
    """The headless command that runs the export script over every image of the project."""
    return f"QuPath script --project={shlex.quote(str(project_file.resolve()))} {shlex.quote(str(script.resolve()))}"


@dataclass(frozen=True)
class ProjectImage:
    """One image (entry) of a project.

    `slide` is the slide file found for it (None when it was not found), `found_by` how
    ("uri", "relative to the project", "search folder"), `annotations` its exported GeoJSON (None when
    the export script has not written one), `problem` why no slide was found when that is more than
    "not there" (several images of the project share its file name, so a search by name cannot tell)."""

    entry_id: str
    name: str
    uri: str | None
    slide: Path | None
    found_by: str | None
    annotations: Path | None
    problem: str | None = None


@dataclass(frozen=True)
class QuPathProject:
    folder: Path
    file: Path
    version: str | None
    images: list[ProjectImage]
    classes: list[tuple[str, tuple[int, int, int]]]  # classifiers/classes.json: (name, RGB), in order

    @property
    def export_script(self) -> Path:
        return self.folder / EXPORT_SCRIPT_FILE

    @property
    def exported(self) -> list[ProjectImage]:
        return [image for image in self.images if image.annotations is not None]


def _server_uri(builder: Any) -> str | None:
    """The image URI of a serverBuilder; wrapped servers (rotated, sparse, pyramidalised) nest theirs."""
    if not isinstance(builder, dict):
        return None
    if isinstance(builder.get("uri"), str):
        return builder["uri"]
    for key in ("builder", "serverBuilder"):
        found = _server_uri(builder.get(key))
        if found:
            return found
    return None


def entry_uri(entry: Any) -> str | None:
    """The image URI of one `images` entry of project.qpproj (through wrapped servers); None if it has none."""
    return _server_uri(entry.get("serverBuilder")) if isinstance(entry, dict) else None


def _find_slide(uri: str | None, folder: Path, saved_folder: Path | None, search_dirs: list[Path],
                shared_names: frozenset[str] | set[str] = frozenset()) -> tuple[Path | None, str | None]:
    path = uri_to_path(uri) if uri else None
    if path is None:
        return None, None
    if path.exists():
        return path, "uri"
    if saved_folder is not None:
        try:
            relative = Path(os.path.relpath(path, saved_folder))
        except ValueError:  # another drive
            relative = None
        if relative is not None:
            candidate = Path(os.path.normpath(folder / relative))
            if candidate.exists():
                return candidate, "relative to the project"
    name = PurePosixPath(path.as_posix()).name
    if name in shared_names:  # several images of this name: a file found by it could be any of them
        return None, None
    for directory in search_dirs:
        candidate = directory / name
        if candidate.exists():
            return candidate, "search folder"
    return None, None


def _read_classes(folder: Path) -> list[tuple[str, tuple[int, int, int]]]:
    from .classes import argb_int_to_rgb

    path = folder / CLASSES_FILE
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        classes = []
        for item in data["pathClasses"]:
            color = item.get("color")
            rgb = argb_int_to_rgb(int(color)) if color is not None else None
            classes.append((str(item["name"]), rgb))
        return classes
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"is not a QuPath class list ({type(exc).__name__}: {exc})", path=path,
                         fix='Open the project in QuPath and save its classes, or remove the file') from None


def locate_project(path: Path) -> Path:
    """The project.qpproj of a project folder (or the file itself); MissingInputError/InputError otherwise."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError("QuPath project does not exist", path=path,
                                fix="Give the project's folder (the one holding project.qpproj) or the file")
    file = path / PROJECT_FILE if path.is_dir() else path
    if not file.is_file() or file.suffix != ".qpproj":
        raise InputError("is not a QuPath project (no project.qpproj)", path=path,
                         fix="Give the project's folder (the one holding project.qpproj) or the file")
    return file


def read_project(path: Path, *, search_dirs: list[Path] | tuple[Path, ...] = ()) -> QuPathProject:
    """Read a QuPath project folder (or its project.qpproj): every image with the slide found for it
    and its exported annotations, and the project's class list. Raises InputError naming the file for a
    project that does not parse."""
    file = locate_project(path).resolve()
    folder = file.parent
    fix = "Open the project in QuPath once (it repairs and re-saves the file), or restore project.qpproj.backup"
    try:
        data = json.loads(file.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot be read as a QuPath project ({exc})", path=file, fix=fix) from None
    if not isinstance(data, dict) or not isinstance(data.get("images", []), list):
        raise InputError("is JSON but not a QuPath project (no list of images)", path=file, fix=fix)
    saved = uri_to_path(data["uri"]) if isinstance(data.get("uri"), str) else None
    saved_folder = saved.parent if saved is not None else None
    dirs = [Path(d) for d in search_dirs]
    file_names: dict[str, int] = {}
    for raw in data.get("images", []):
        path = uri_to_path(entry_uri(raw) or "") if isinstance(raw, dict) else None
        if path is not None:
            name = PurePosixPath(path.as_posix()).name
            file_names[name] = file_names.get(name, 0) + 1
    shared_names = {name for name, count in file_names.items() if count > 1}
    images, seen = [], set()
    for raw in data.get("images", []):
        if not isinstance(raw, dict) or "entryID" not in raw:
            raise InputError("has an image without an entryID", path=file, fix=fix)
        entry_id = str(raw["entryID"])
        if entry_id in seen:
            raise InputError(f"lists entry ID {entry_id} twice", path=file, fix=fix)
        seen.add(entry_id)
        uri = entry_uri(raw)
        slide, found_by = _find_slide(uri, folder, saved_folder, dirs, shared_names)
        problem = None
        path = uri_to_path(uri) if uri else None
        name = PurePosixPath(path.as_posix()).name if path is not None else None
        if slide is None and dirs and name in shared_names:
            problem = (f"the slide is not at {uri} nor relative to the project, and {file_names[name]} images of "
                       f"the project are files named {name}, so a file of that name in the --slide-dir folders "
                       "could be any of them")
        exported = folder / EXPORT_DIR / f"{entry_id}.geojson"
        images.append(ProjectImage(entry_id=entry_id, name=str(raw.get("imageName") or entry_id), uri=uri,
                                   slide=slide, found_by=found_by,
                                   annotations=exported if exported.is_file() else None, problem=problem))
    return QuPathProject(folder=folder, file=file, version=data.get("version"), images=images,
                         classes=_read_classes(folder))


def write_export_script(project: QuPathProject) -> Path:
    """Write (or refresh) `scripts/export-slidemill.groovy` in the project; the project file is untouched."""
    path = project.export_script
    if not path.exists() or path.read_text(encoding="utf-8") != EXPORT_SCRIPT:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, EXPORT_SCRIPT)
    return path
