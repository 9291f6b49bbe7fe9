"""slidemill's train tool: segmentation models from tilesets, validated without leakage, exported to ONNX."""

from .api import TrainResult, run
from .config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "run"]
