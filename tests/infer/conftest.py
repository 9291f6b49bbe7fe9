"""Fixtures of the infer tests (the helpers are in infer_support.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from infer_support import (
    ORACLE_CLASSES,
    SLIDE_H,
    SLIDE_MPP,
    SLIDE_W,
    conv_onnx,
    oracle_colours,
    oracle_weights,
    shapes_for_tests,
    write_model_dir,
)

from slidemill.shared.testing import write_synthetic_slide


@pytest.fixture(scope="session")
def slide_path(tmp_path_factory) -> Path:
    return write_synthetic_slide(tmp_path_factory.mktemp("slide") / "synthetic.tiff", SLIDE_W, SLIDE_H,
                                 mpp=SLIDE_MPP, shapes=shapes_for_tests())


@pytest.fixture(scope="session")
def oracle_dir(tmp_path_factory) -> Path:
    """The colour oracle at the slide's own resolution, tiles of 128."""
    w, b = oracle_weights(oracle_colours())
    return write_model_dir(tmp_path_factory.mktemp("oracle"), conv_onnx(w, b), ORACLE_CLASSES, mpp=SLIDE_MPP,
                           tile=128)
