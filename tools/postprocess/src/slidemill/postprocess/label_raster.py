"""Reading the prediction: its manifest, and its label raster chunk by chunk."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from slidemill.shared.contracts import Prediction, RasterFile, load_contract
from slidemill.shared.errors import ContractError, InputError, MissingInputError
from slidemill.shared.files import resolve_in

log = logging.getLogger(__name__)

MANIFEST = "prediction.json"


def load_prediction(path: Path) -> tuple[Path, Prediction]:
    """The prediction folder and its validated manifest (`path` is the folder or its prediction.json)."""
    path = Path(path)
    if not path.exists():
        raise MissingInputError("prediction folder does not exist", path=path,
                                fix="Give the --out folder of slidemill-infer")
    manifest = path if path.is_file() else path / MANIFEST
    if not manifest.exists():
        raise MissingInputError(f"has no {MANIFEST}", path=path,
                                fix="Give the --out folder of slidemill-infer (it holds prediction.json)")
    return manifest.parent, load_contract(manifest, Prediction)


class LabelRaster:
    """The label raster of a prediction, read window by window (never whole unless asked)."""

    def __init__(self, path: Path, spec: RasterFile):
        import tifffile
        import zarr

        self.path = path
        if not path.exists():
            raise MissingInputError("label raster named in prediction.json does not exist", path=path,
                                    fix="Copy the whole slidemill-infer output folder, or re-run slidemill-infer")
        try:
            self._tif = tifffile.TiffFile(path)
            page = self._tif.pages[0]
            shape, dtype = tuple(page.shape), page.dtype
            self._array = zarr.open(page.aszarr(), mode="r")
        except Exception as exc:  # noqa: BLE001 - tifffile raises many types for a broken file
            raise InputError(f"is not a readable TIFF ({type(exc).__name__}: {exc})", path=path,
                             fix="Re-run slidemill-infer to write the label raster again") from None
        if len(shape) == 3 and shape[-1] == 1:
            self._squeeze = True
            shape = shape[:2]
        else:
            self._squeeze = False
        if len(shape) != 2:
            self.close()
            raise InputError(f"has shape {shape}, but a label raster has one band", path=path,
                             fix="Give the labels.tiff of slidemill-infer, not the probabilities")
        if dtype != np.uint8:
            self.close()
            raise InputError(f"has pixel type {dtype}, but labels are uint8", path=path,
                             fix="Re-run slidemill-infer to write the label raster again")
        if shape != (spec.height, spec.width):
            self.close()
            raise ContractError(
                f"is {shape[1]} x {shape[0]} pixels, but prediction.json says {spec.width} x {spec.height}",
                path=path, fix="The raster and its manifest do not belong together; re-run slidemill-infer")
        self.height, self.width = shape

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels [y0, y1) x [x0, x1), all inside the raster."""
        window = self._array[y0:y1, x0:x1]
        if self._squeeze:
            window = window[..., 0]
        return np.ascontiguousarray(window, dtype=np.uint8)

    def close(self) -> None:
        self._tif.close()

    def __enter__(self) -> LabelRaster:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_labels(folder: Path, prediction: Prediction) -> LabelRaster:
    return LabelRaster(resolve_in(folder, prediction.labels.file), prediction.labels)


# --- the shards of one prediction, read as one raster -------------------------------------------


def combine_shards(loaded: list[tuple[Path, Prediction]]) -> tuple[Prediction, list[tuple[Path, Prediction]]]:
    """The prediction that the shards `loaded` ((folder, manifest) each, any order) make together,
    and the shards in raster order (top to bottom).

    slidemill-infer's shards are bands of whole raster rows of one region raster, so every shard of
    one run must be given, each once, from the same slide, model, classes, resolution and region, and
    their rasters must stack exactly (each shard's `mapping` starts where the one above ends).
    Otherwise `InputError` (exit 2) naming the file and what differs. One prediction is returned as it is.
    """
    if len(loaded) == 1:
        return loaded[0][1], loaded
    first_folder, first = loaded[0]
    for folder, p in loaded:
        if p.shard is None or p.shard.count == 1:
            raise InputError("is a whole prediction, but several predictions were given; only the shards of one "
                             "sharded slidemill-infer run are post-processed together", path=folder,
                             fix="Give one prediction folder, or every --shard I/N output of one slide")
    counts = {p.shard.count for _, p in loaded}
    if len(counts) != 1:
        raise InputError(f"the predictions are shards of runs with different shard counts {sorted(counts)}",
                         path=first_folder, fix="Give the shards of one sharded slidemill-infer run")
    count = counts.pop()
    seen: dict[int, Path] = {}
    for folder, p in loaded:
        if p.shard.index in seen:
            raise InputError(f"is shard {p.shard.index}/{count} again (also {seen[p.shard.index]})", path=folder,
                             fix="Give each shard once")
        seen[p.shard.index] = folder
    missing = [i for i in range(count) if i not in seen]
    if missing:
        raise InputError(f"shard(s) {', '.join(f'{i}/{count}' for i in missing)} of this slide are missing; "
                         "post-processing part of a slide would cut shapes at the shard borders",
                         path=first_folder, fix="Give every shard's prediction folder of the slide")

    def same(p: Prediction) -> tuple:
        return (p.slide.name, p.slide.width, p.slide.height, p.model.onnx_sha256, p.classes, p.mpp,
                p.mapping.scale, p.mapping.origin_x, p.region.x, p.region.width, p.labels.width, p.tissue_only)

    for folder, p in loaded:
        if same(p) != same(first):
            raise InputError("is not a shard of the same run as the others (slide, model, classes, resolution "
                             "or region differ)", path=folder, fix="Give the shards of one slidemill-infer run")
    ordered = sorted(loaded, key=lambda item: item[1].shard.index)
    scale = first.mapping.scale
    top = ordered[0][1]
    row = 0
    for folder, p in ordered:
        offset = (p.mapping.origin_y - top.mapping.origin_y) / scale
        if abs(offset - row) > 1e-6:
            raise InputError(f"shard {p.shard.index}/{count} starts at raster row {offset:g}, but the shards "
                             f"above it end at row {row}: the shards do not stack", path=folder,
                             fix="Give the shards of one slidemill-infer run, unchanged")
        row += p.labels.height
    last = ordered[-1][1]
    region = top.region.model_copy(update={"height": last.region.y + last.region.height - top.region.y})
    labels = top.labels.model_copy(update={"height": row})
    combined = top.model_copy(update={"shard": None, "region": region, "labels": labels, "probabilities": None})
    return combined, ordered


class StackedLabels:
    """The label rasters of stacked shards read as one raster (window by window)."""

    def __init__(self, parts: list[tuple[Path, RasterFile]]):
        self._parts: list[tuple[int, int, LabelRaster]] = []
        top = 0
        try:
            for path, spec in parts:
                self._parts.append((top, top + spec.height, LabelRaster(path, spec)))
                top += spec.height
        except BaseException:
            self.close()
            raise
        self.height = top
        self.width = parts[0][1].width

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels [y0, y1) x [x0, x1) of the stacked raster, all inside it."""
        pieces = [raster.read(max(y0, a) - a, min(y1, b) - a, x0, x1)
                  for a, b, raster in self._parts if a < y1 and b > y0]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)

    def close(self) -> None:
        for _, _, raster in self._parts:
            raster.close()

    def __enter__(self) -> StackedLabels:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
