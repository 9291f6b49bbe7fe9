"""slidemill-infer: whole-slide overlap-tile inference with onnxruntime.

Re-exports `run`, `InferConfig` and `InferResult`, loaded on first use so that `--help` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .api import InferResult, run
    from .config import InferConfig

__all__ = ["InferConfig", "InferResult", "run"]


def __getattr__(name: str):
    if name in ("InferResult", "run"):
        from . import api

        return getattr(api, name)
    if name == "InferConfig":
        from .config import InferConfig

        return InferConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
