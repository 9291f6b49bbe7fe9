"""slidemill-infer: whole-slide overlap-tile inference with onnxruntime."""

from .api import InferResult, run
from .config import InferConfig

__all__ = ["InferConfig", "InferResult", "run"]
