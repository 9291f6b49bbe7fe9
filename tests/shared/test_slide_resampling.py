"""A region read with resampling equals the same pixels of a larger read, at every resolution: the
anti-aliasing blur sees the real neighbours (read as a margin), not a mirrored border."""

from __future__ import annotations

import numpy as np
import pytest

from slidemill.shared.slide import open_slide
from slidemill.shared.testing import write_synthetic_slide


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("resample") / "slide.tiff"
    # noise makes every pixel differ from its neighbours, so a blur over the wrong border shows
    return open_slide(write_synthetic_slide(path, 1200, 900, mpp=0.25, tile=128, noise=20.0))


@pytest.mark.parametrize("scale", [1.5, 2.7, 3.0, 5.3, 0.6])
def test_tiles_equal_crops_of_one_large_read(slide, scale):
    tile = 48
    nx, ny = 4, 3
    x0, y0 = 37.0, 11.0  # not on a pixel of any level
    big = slide.read_region(x0, y0, nx * tile, ny * tile, scale)
    differing = 0
    for j in range(ny):
        for i in range(nx):
            one = slide.read_region(x0 + i * tile * scale, y0 + j * tile * scale, tile, tile, scale)
            crop = big[j * tile:(j + 1) * tile, i * tile:(i + 1) * tile]
            differing += int((one != crop).any(axis=2).sum())
    assert differing == 0


def test_tiles_over_the_slide_edge_equal_crops_of_one_large_read(slide):
    # the last tiles reach past the slide: both reads see pad_value there, not a mirrored border
    scale, tile = 2.7, 64
    w = -(-slide.width // int(tile * scale)) + 1
    big = slide.read_region(0.0, 0.0, w * tile, tile, scale)
    for i in range(w):
        one = slide.read_region(i * tile * scale, 0.0, tile, tile, scale)
        assert np.array_equal(one, big[:, i * tile:(i + 1) * tile]), i
