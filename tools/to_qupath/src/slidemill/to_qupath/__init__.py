"""slidemill to-qupath: annotations into QuPath GeoJSON, a QuPath project and its headless import script."""

from .api import SlideOutput, ToQuPathResult, run
from .config import ToQuPathConfig
from .rules import feature_problems, file_problems

__all__ = ["SlideOutput", "ToQuPathConfig", "ToQuPathResult", "feature_problems", "file_problems", "run"]
