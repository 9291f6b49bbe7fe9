"""slidemill-merge-annotations: stitch shards' and tiles' annotations, merge nearby same-class shapes."""

from .api import MergeResult, run
from .config import MergeConfig

__all__ = ["MergeConfig", "MergeResult", "run"]
