"""QuPath projects (`project.qpproj`, `classifiers/classes.json`), created or updated without clobbering.

An existing project is read and checked completely before anything is written; a folder that is
not a QuPath project or a project file that does not parse is refused (exit 2) and left untouched.
Images already in the project keep their entry, entry ID and data folder; a slide already there is
reused (found by its file: the entry's URI, or where QuPath finds it after the project folder moved;
see `find_entry`); `lastID` stays the largest ID ever given; the previous `project.qpproj` is kept as
`project.qpproj.backup` (the name QuPath itself uses). A rerun with the same inputs changes nothing:
new entries get a `randomizedName` derived from the project and the image, and the project file is
only rewritten (with a new `modifyTimestamp`) when its content changes.
`data/<entryID>/data.qpdata` is Java-serialized and never written: each image's objects are written to
`slidemill/objects/<entryID>.geojson` (entry IDs are unique, image names need not be) and go in with
the import script (`scripts/import-slidemill.groovy`), run headless by QuPath, which loads each entry's
file by `getProjectEntry().getID()`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shlex
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slidemill.shared.classes import QUPATH_COLORS, argb_int_to_rgb, rgb_to_argb_int
from slidemill.shared.errors import InputError
from slidemill.shared.files import write_bytes_atomic, write_text_atomic
from slidemill.shared.qupath_project import entry_uri, java_file_uri, read_project
from slidemill.shared.slide import dicom_target

from .config import QUPATH_RELEASES

log = logging.getLogger(__name__)

PROJECT_FILE = "project.qpproj"
BACKUP_FILE = "project.qpproj.backup"
CLASSES_FILE = "classifiers/classes.json"
SCRIPT_FILE = "scripts/import-slidemill.groovy"
OBJECTS_DIR = "slidemill/objects"  # <entryID>.geojson, beside slidemill/annotations/ that the export writes
LEGACY_GEOJSON_DIR = "geojson"  # <image name without extension>.geojson, before objects went by entry ID

OPENSLIDE = "qupath.lib.images.servers.openslide.OpenslideServerBuilder"
BIOFORMATS = "qupath.lib.images.servers.bioformats.BioFormatsServerBuilder"
_OPENSLIDE_EXTENSIONS = {".svs", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif"}
_BIOFORMATS_EXTENSIONS = {".czi", ".vsi", ".lif", ".nd2", ".ome.tif", ".ome.tiff", ".ome.zarr", ".qptiff"}
# QuPath's own class list of a new project (PathClassFactory order)
DEFAULT_CLASSES = ["Tumor", "Stroma", "Immune cells", "Necrosis", "Other", "Region*", "Ignore*",
                   "Positive", "Negative"]

IMPORT_SCRIPT = """\
// Written by slidemill-to-qupath. Adds the objects of slidemill/objects/<entry ID>.geojson to each image
// of this project (entry IDs are unique in a project; image names need not be). Run it headless for
// every image, and save the results, with
//   QuPath script --project=<this project's project.qpproj> --save <this script>
// Running it again replaces the objects it added before (their ids are fixed), never duplicates them.
import qupath.lib.io.PathIO

def entry = getProjectEntry()
def name = entry.getImageName()
def f = new File(buildFilePath(PROJECT_BASE_DIR, 'slidemill', 'objects', entry.getID() + '.geojson'))
if (!f.exists()) { println "no objects for ${name} (entry ${entry.getID()})"; return }
def objects = PathIO.readObjects(f.toPath())
def ids = objects.collect { it.getID() } as Set
def previous = getAllObjects(false).findAll { it.getID() in ids }
if (previous) removeObjects(previous, true)
addObjects(objects)
resolveHierarchy()
println "${name} (entry ${entry.getID()}): ${objects.size()} objects from ${f.getName()}"
"""


def provider_for(slide: Path) -> str | None:
    """The image server QuPath should use; None lets QuPath pick one (generic TIFF, PNG, DICOM)."""
    lower = slide.name.lower()
    if any(lower.endswith(ext) for ext in _BIOFORMATS_EXTENSIONS):
        return BIOFORMATS
    if slide.suffix.lower() in _OPENSLIDE_EXTENSIONS:
        return OPENSLIDE
    return None


def image_file(slide: Path) -> Path:
    """A slide folder (a DICOM series) is opened through a .dcm file of its one series, as
    `open_slide` opens it; a folder of several series is refused (SlideError, exit 2)."""
    if slide.is_dir():
        return dicom_target(slide, None)[0]
    return slide


def _stable_uuid4(*parts: str) -> str:
    """A UUID with version-4 layout, but derived from `parts` so reruns give the same one."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()[:16]
    return str(uuid.UUID(bytes=digest, version=4))


def import_command(qpproj: Path, script: Path) -> str:
    return (f"QuPath script --project={shlex.quote(str(qpproj.resolve()))} "
            f"--save {shlex.quote(str(script.resolve()))}")


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Project:
    """A QuPath project as read from disk (or a new one), with the edits planned for it."""

    folder: Path
    data: dict[str, Any]
    original_bytes: bytes | None = None
    classes: dict[str, Any] | None = None
    original_classes_bytes: bytes | None = None
    new_entries: list[str] = field(default_factory=list)
    reused_entries: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # entry ID -> the slide file QuPath would open for it (at its URI, or relative to a moved project)
    located: dict[int, Path] = field(default_factory=dict)

    @property
    def qpproj(self) -> Path:
        return self.folder / PROJECT_FILE

    @property
    def is_new(self) -> bool:
        return self.original_bytes is None

    @property
    def images(self) -> list[dict[str, Any]]:
        return self.data["images"]


def _refuse(what: str, path: Path, fix: str) -> InputError:
    return InputError(what, path=path, fix=fix + ". The project was left as it was")


def open_project(path: Path, *, qupath_version: str = "0.5") -> Project:
    """Read and check a QuPath project folder (or its project.qpproj); a new one if the folder is
    missing or empty. Raises InputError (nothing written) for anything that is not a QuPath project."""
    path = Path(path)
    if path.is_file() and path.suffix == ".qpproj":
        path = path.parent
    elif path.exists() and not path.is_dir():
        raise _refuse("is a file, not a QuPath project folder", path,
                      "Give the project's folder (the one holding project.qpproj) or a new folder")
    folder = path.resolve()
    qpproj = folder / PROJECT_FILE
    if not qpproj.exists():
        if folder.is_dir() and not _only_our_files(folder):
            raise _refuse("is not a QuPath project (it has files but no project.qpproj)", folder,
                          "Give an existing QuPath project folder, or an empty or new folder for a new project")
        now = _now_ms()
        data = {"version": QUPATH_RELEASES[qupath_version], "createTimestamp": now, "modifyTimestamp": now,
                "uri": java_file_uri(qpproj), "lastID": 0, "images": []}
        project = Project(folder=folder, data=data)
        if folder.is_dir():
            _read_classes(project)  # left by an earlier run that was stopped before project.qpproj
        return project
    fix = "Open the project in QuPath once (it repairs and re-saves the file), or restore project.qpproj.backup"
    try:
        original = qpproj.read_bytes()
        data = json.loads(original)
    except OSError as exc:
        raise _refuse(f"cannot be read ({exc.strerror})", qpproj, "Check its permissions") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _refuse(f"is not valid JSON, so it is not a readable QuPath project file ({exc})", qpproj, fix) from None
    _check_project(data, qpproj, fix)
    project = Project(folder=folder, data=data, original_bytes=original)
    _read_classes(project)
    project.located = {int(image.entry_id): image.slide for image in read_project(qpproj).images
                       if image.slide is not None}
    return project


def _only_our_files(folder: Path) -> bool:
    """True when every file under `folder` is one this tool writes before project.qpproj (a new project
    whose first run was stopped part-way), so the folder may still become a new project."""
    for path in folder.rglob("*"):
        if path.is_dir():
            continue
        relative = path.relative_to(folder).as_posix()
        ours = (relative in (CLASSES_FILE, SCRIPT_FILE)
                or (any(relative.startswith(d + "/") and relative.count("/") == d.count("/") + 1
                        for d in (OBJECTS_DIR, LEGACY_GEOJSON_DIR)) and relative.endswith(".geojson"))
                or (path.name.startswith(".") and path.name.endswith(".tmp")))
        if not ours:
            return False
    return True


def _check_project(data: Any, qpproj: Path, fix: str) -> None:
    if not isinstance(data, dict):
        raise _refuse("is JSON but not a QuPath project (not an object)", qpproj, fix)
    images = data.get("images", [])
    if not isinstance(images, list):
        raise _refuse("is not a QuPath project file ('images' is not a list)", qpproj, fix)
    for index, entry in enumerate(images):
        if not isinstance(entry, dict):
            raise _refuse(f"is not a QuPath project file (image {index} is not an object)", qpproj, fix)
        entry_id = entry.get("entryID")
        if not isinstance(entry_id, int) or isinstance(entry_id, bool) or entry_id < 1:
            raise _refuse(f"is not a QuPath project file (image {index} has no entryID)", qpproj, fix)
    ids = [e["entryID"] for e in images]
    if len(set(ids)) != len(ids):
        raise _refuse("has two images with the same entryID", qpproj, fix)
    last = data.get("lastID", 0)
    if not isinstance(last, int) or isinstance(last, bool):
        raise _refuse("is not a QuPath project file ('lastID' is not an integer)", qpproj, fix)
    for key in ("createTimestamp", "modifyTimestamp"):
        if key in data and (not isinstance(data[key], int) or isinstance(data[key], bool)):
            raise _refuse(f"is not a QuPath project file ('{key}' is not a number)", qpproj, fix)
    if "version" in data and not isinstance(data["version"], str):
        raise _refuse("is not a QuPath project file ('version' is not a string)", qpproj, fix)


def _read_classes(project: Project) -> None:
    path = project.folder / CLASSES_FILE
    if not path.exists():
        return
    fix = "Fix or delete classifiers/classes.json (QuPath rewrites it from its class list)"
    try:
        original = path.read_bytes()
        data = json.loads(original)
    except OSError as exc:
        raise _refuse(f"cannot be read ({exc.strerror})", path, "Check its permissions") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _refuse(f"is not valid JSON ({exc})", path, fix) from None
    classes = data.get("pathClasses") if isinstance(data, dict) else None
    if not isinstance(classes, list) or not all(isinstance(c, dict) and isinstance(c.get("name"), str)
                                                for c in classes):
        raise _refuse("is not a QuPath class list (no 'pathClasses' list of {name, color})", path, fix)
    project.classes = data
    project.original_classes_bytes = original


def objects_file(entry: dict[str, Any]) -> str:
    """Where the import script looks for an entry's objects, relative to the project folder:
    `slidemill/objects/<entryID>.geojson` (entry IDs are unique in a project; image names need not be)."""
    return f"{OBJECTS_DIR}/{entry['entryID']}.geojson"


def legacy_object_files(project: Project) -> list[str]:
    """`geojson/*.geojson` files an older slidemill wrote for the import by image name (which the
    import script no longer reads), relative to the project folder."""
    folder = project.folder / LEGACY_GEOJSON_DIR
    if project.is_new or not folder.is_dir():
        return []
    return sorted(f"{LEGACY_GEOJSON_DIR}/{p.name}" for p in folder.glob("*.geojson") if p.is_file())


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _ids(entries: list[dict[str, Any]]) -> str:
    return ", ".join(str(e.get("entryID")) for e in entries)


def find_entry(project: Project, image_name: str, file: Path | None) -> dict[str, Any] | None:
    """The project's entry for the slide `file` (None: only its name is known), or None for a slide the
    project does not have.

    By the slide first: the entry whose URI is the file's (as Java writes it), else the entry whose slide
    QuPath would open (at its URI, or relative to the project when the project folder has moved; see
    `slidemill.shared.qupath_project.read_project`) is this same file. Then by image name, among the
    entries whose slide cannot be found (an entry whose slide is found elsewhere is another image of
    the same name): one such entry is reused with a warning; several are refused (InputError), since
    which of them this slide is cannot be told."""
    images = project.images
    if file is not None:
        uri = java_file_uri(file)
        entry = next((e for e in images if entry_uri(e) == uri), None)
        if entry is None:
            entry = next((e for e in images if e["entryID"] in project.located
                          and _same_file(project.located[e["entryID"]], file)), None)
            if entry is not None:
                log.info("%s is entry %s of the project (its URI %s, found at %s)", file, entry["entryID"],
                         entry_uri(entry), project.located[entry["entryID"]])
        if entry is not None:
            return entry
    same_name = [e for e in images if e.get("imageName") == image_name]
    unfound = [e for e in same_name if e["entryID"] not in project.located]
    candidates = unfound if file is not None else same_name
    if len(candidates) > 1:
        if file is None:
            raise InputError(f"has {len(candidates)} images named {image_name} (entries {_ids(candidates)}), so "
                             "which one the annotations are about cannot be told from the name",
                             path=project.qpproj, fix=f"Pass the slide's file with --slide /path/to/{image_name}")
        raise InputError(f"has {len(candidates)} images named {image_name} (entries {_ids(candidates)}) whose "
                         f"slides cannot be found, so which one {file} is cannot be told", path=project.qpproj,
                         fix="Open the project in QuPath and point those images at their files (QuPath asks "
                         "for them), then run again")
    if candidates:
        entry = candidates[0]
        if file is not None:
            project.warnings.append(
                f"{image_name} is already in the project as entry {entry.get('entryID')} pointing at "
                f"{entry_uri(entry)}, where no slide is; that entry is reused as it is (not pointed at "
                f"{java_file_uri(file)})")
        return entry
    if same_name:
        project.warnings.append(
            f"{image_name}: the project's entry {_ids(same_name)} of the same name is another file "
            f"({', '.join(str(project.located[e['entryID']]) for e in same_name)}); {file} gets an entry of its "
            "own")
    return None


def add_images(project: Project, slides: list[tuple[str, Path | None]]) -> dict[str, dict[str, Any]]:
    """Entries for `slides` ((image name, slide file or None)): an image already in the project (see
    `find_entry`) is reused as it is; others are appended with the next entry ID. Raises InputError for
    a slide the project does not have and whose file was not given, or that matches several entries."""
    images = project.images
    last_id = max([project.data.get("lastID", 0)] + [e["entryID"] for e in images])
    result: dict[str, dict[str, Any]] = {}
    for image_name, slide in slides:
        file = image_file(slide) if slide is not None else None
        entry = find_entry(project, image_name, file)
        if entry is not None:
            # a missing map breaks QuPath 0.4/0.5 later; adding empty ones changes nothing else
            entry.setdefault("metadata", {})
            if isinstance(entry.get("serverBuilder"), dict):
                entry["serverBuilder"].setdefault("args", [])
            project.reused_entries.append(image_name)
            result[image_name] = entry
            continue
        if slide is None:
            raise InputError(f"slide {image_name} is not in the project and its file was not given",
                             path=project.folder, fix=f"Pass --slide /path/to/{image_name}")
        uri = java_file_uri(file)
        last_id += 1
        builder: dict[str, Any] = {"builderType": "uri"}
        provider = provider_for(slide)
        if provider:
            builder["providerClassName"] = provider
        builder["uri"] = uri
        builder["args"] = []
        entry = {"serverBuilder": builder, "entryID": last_id,
                 "randomizedName": _stable_uuid4(project.data.get("uri", ""), uri, str(last_id)),
                 "imageName": image_name, "metadata": {}}
        images.append(entry)
        project.located[last_id] = file
        project.new_entries.append(image_name)
        result[image_name] = entry
    project.data["lastID"] = max(last_id, project.data.get("lastID", 0))
    return result


def merged_classes(project: Project, colors: dict[str, tuple[int, int, int]]) -> dict[str, Any]:
    """The project's class list plus the classes of `colors` it lacks. A new project starts from
    QuPath's own list; classes already listed keep their colour."""
    if project.classes is not None:
        data = copy.deepcopy(project.classes)
    else:
        data = {"pathClasses": [{"name": n, "color": rgb_to_argb_int(colors.get(n, QUPATH_COLORS[n]))}
                                for n in DEFAULT_CLASSES]}
    present = {c["name"] for c in data["pathClasses"]}
    for name, rgb in colors.items():
        if name not in present:
            data["pathClasses"].append({"name": name, "color": rgb_to_argb_int(rgb)})
            present.add(name)
    return data


def class_colour_conflicts(project: Project, colors: dict[str, tuple[int, int, int]]) -> list[str]:
    """Classes the project already lists with another colour (QuPath shows the project's colour)."""
    out = []
    for entry in (project.classes or {}).get("pathClasses", []):
        name, value = entry.get("name"), entry.get("color")
        if name in colors and isinstance(value, int) and argb_int_to_rgb(value) != tuple(colors[name]):
            out.append(f"class {name!r} is {list(colors[name])} in the annotations but "
                       f"{list(argb_int_to_rgb(value))} in the project; QuPath will show the project's colour")
    return out


def _json_text(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=True) + "\n"


def save_project(project: Project, classes: dict[str, Any]) -> list[Path]:
    """Write what changed: classes.json, the import script, and project.qpproj last (after backing up
    the previous one). Returns the files written."""
    written: list[Path] = []
    folder = project.folder
    classes_text = _json_text(classes).encode()
    if classes_text != project.original_classes_bytes:
        write_bytes_atomic(folder / CLASSES_FILE, classes_text)
        written.append(folder / CLASSES_FILE)
    script = folder / SCRIPT_FILE
    if not script.exists() or script.read_text(encoding="utf-8", errors="replace") != IMPORT_SCRIPT:
        write_text_atomic(script, IMPORT_SCRIPT)
        written.append(script)
    if project.is_new:
        write_text_atomic(project.qpproj, _json_text(project.data))
        written.append(project.qpproj)
        return written
    previous = json.loads(project.original_bytes)
    if previous == project.data:
        log.info("%s: unchanged", project.qpproj)
        return written
    project.data.setdefault("createTimestamp", project.data.get("modifyTimestamp", _now_ms()))
    project.data["modifyTimestamp"] = _now_ms()
    project.data.setdefault("version", QUPATH_RELEASES["0.5"])
    project.data.setdefault("uri", java_file_uri(project.qpproj))
    write_bytes_atomic(folder / BACKUP_FILE, project.original_bytes)
    written.append(folder / BACKUP_FILE)
    write_text_atomic(project.qpproj, _json_text(project.data))
    written.append(project.qpproj)
    return written
