"""Fixtures of the train tool's tests: small synthetic tilesets (see train_synthetic.py)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from train_synthetic import make_tileset

# The tests share a 2-core machine with other jobs: one compute thread per process avoids the
# OpenMP oversubscription that makes torch many times slower there (and keeps runs comparable).
# Subprocesses of these tests get OMP_NUM_THREADS=1 in their own environment (not set globally here:
# other tools' tests run in the same session).

# A fast encoder that learns the synthetic task in a few CPU epochs (efficientnet-b0's batch-norm
# statistics move too slowly for such a short schedule).
FAST_ENCODER = "tu-mobilenetv3_small_100"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tileset(tmp_path_factory) -> Path:
    """One slide, 512 x 512 px at 0.5 um/px, 64 px tiles (64 tiles), sparse labels (ignore stripes)."""
    return make_tileset(tmp_path_factory.mktemp("ts") / "slide-a", sparse=True)


@pytest.fixture(scope="session")
def small_tileset(tmp_path_factory) -> Path:
    """One slide, 256 x 256 px, 64 px tiles (16 tiles): for runs that only need to run."""
    return make_tileset(tmp_path_factory.mktemp("ts") / "small", width=256, height=256, seed=3)


@pytest.fixture(scope="session")
def fast_encoder() -> str:
    return FAST_ENCODER
