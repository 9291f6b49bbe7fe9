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
