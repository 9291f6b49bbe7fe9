"""Small synthetic slides with known shapes, shared by the tile tests."""

import json
from pathlib import Path

import pytest

from slidemill.shared.testing import example_shapes, qupath_geojson, write_synthetic_slide

WIDTH, HEIGHT, MPP = 1200, 1000, 0.25


@pytest.fixture(scope="session")
def shapes():
    return example_shapes(WIDTH, HEIGHT, seed=3)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory, shapes) -> Path:
    """A zlib pyramid (lossless, so pixels can be compared) with the example shapes drawn in."""
    return write_synthetic_slide(tmp_path_factory.mktemp("slide") / "synthetic.tiff", WIDTH, HEIGHT, mpp=MPP,
                                 shapes=shapes, tile=256, seed=3)


@pytest.fixture(scope="session")
def synthetic_geojson(tmp_path_factory, shapes) -> Path:
    path = tmp_path_factory.mktemp("ann") / "synthetic.geojson"
    path.write_text(json.dumps(qupath_geojson(shapes, flavour="0.4")))
    return path
