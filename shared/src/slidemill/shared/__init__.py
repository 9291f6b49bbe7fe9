"""slidemill's shared package: contracts, slide opening, GeoJSON, files and CLI conventions."""

from .classes import IGNORE_LABEL, IGNORE_NAME, QUPATH_COLORS, ClassEntry, ClassTable
from .contracts import (
    AnnotationSet,
    ModelCard,
    Prediction,
    Report,
    SlideRef,
    TileRecord,
    TileSet,
    load_contract,
    save_contract,
)
from .errors import ContractError, InputError, MissingInputError, OutputError, SlideError, SlidemillError
from .geometry import PixelMapping, Region
from .slide import Slide, open_slide

__all__ = [
    "IGNORE_LABEL", "IGNORE_NAME", "QUPATH_COLORS", "AnnotationSet", "ClassEntry", "ClassTable",
    "ContractError", "InputError", "MissingInputError", "ModelCard", "OutputError", "PixelMapping",
    "Prediction", "Region", "Report", "Slide", "SlideError", "SlideRef", "SlidemillError", "TileRecord",
    "TileSet", "load_contract", "open_slide", "save_contract",
]
