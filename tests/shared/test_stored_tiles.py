"""Tiles decoded straight from a TIFF's stored tiles equal `Slide.read_region`, wherever the grid
aligns with a stored level; elsewhere the general path is taken."""

from pathlib import Path

import numpy as np
import pytest

from slidemill.shared.slide import open_slide
from slidemill.shared.stored_tiles import StoredLevels, aligned_level, read_tile_pixels
from slidemill.shared.testing import write_synthetic_slide

DATA = Path("../shared/data/slides")


@pytest.mark.parametrize("compression", ["zlib", "jpeg"])
def test_direct_path_equals_read_region(tmp_path, compression):
    path = write_synthetic_slide(tmp_path / f"s-{compression}.tiff", 1100, 900, mpp=0.25, tile=128,
                                 compression=compression)
    slide = open_slide(path)
    stored = StoredLevels(slide)
    assert stored.available(0) and stored.available(1)
    calls = {"n": 0}
    original = stored.read

    def counting(*args):
        calls["n"] += 1
        return original(*args)

    stored.read = counting
    # origins on and off the stored tile grid, tiles crossing the slide's edge, two levels
    for scale, x, y, size in [(1.0, 0, 0, 96), (1.0, 77, 131, 200), (1.0, 1000, 850, 160), (2.0, 64, 30, 100),
                              (2.0, -40, 10, 64), (4.0, 1024, 800, 50)]:
        assert aligned_level(slide, x, y, scale) is not None
        got = read_tile_pixels(slide, stored, x, y, size, size, scale)
        assert np.array_equal(got, slide.read_region(x, y, size, size, scale)), (scale, x, y)
    assert calls["n"] == 6
    # off-level scales and fractional positions resample read_region's way, from the stored tiles
    # decoded directly (one more call each)
    for scale, x, y in [(1.5, 0, 0), (1.0, 10.5, 3), (3.0, 9, 9)]:
        assert aligned_level(slide, x, y, scale) is None
        got = read_tile_pixels(slide, stored, x, y, 64, 64, scale)
        assert np.array_equal(got, slide.read_region(x, y, 64, 64, scale))
    assert calls["n"] == 9


def test_real_slides(tmp_path):
    import pickle

    for name in ("CMU-1-Small-Region.svs", "yb10kx5k.zstd.tiff", "boxes.tiff"):
        slide = open_slide(DATA / name)
        stored = pickle.loads(pickle.dumps(StoredLevels(slide)))  # as a worker process receives it
        assert stored.available(0), name
        for x, y in [(0, 0), (250, 130), (slide.width - 100, slide.height - 60)]:
            got = read_tile_pixels(slide, stored, x, y, 128, 128, 1.0)
            assert np.array_equal(got, slide.read_region(x, y, 128, 128, 1.0)), (name, x, y)


def test_non_tiff_takes_the_general_path(tmp_path):
    import cv2

    png = tmp_path / "plain.png"
    cv2.imwrite(str(png), np.full((300, 200, 3), 90, np.uint8))
    slide = open_slide(png, mpp=0.5)
    stored = StoredLevels(slide)
    assert not stored.available(0)
    assert np.array_equal(read_tile_pixels(slide, stored, 10, 10, 64, 64, 1.0), slide.read_region(10, 10, 64, 64, 1.0))


def test_a_channel_choice_takes_the_general_path(tmp_path):
    """Stored tiles are the file's RGB; a slide read as other channels (here B, G, R) must not take them."""
    path = write_synthetic_slide(tmp_path / "rgb.tiff", 400, 300, mpp=0.5, tile=128)
    swapped = open_slide(path, channels=["blue", "green", "red"])
    stored = StoredLevels(swapped)
    assert not stored.available(0)
    got = read_tile_pixels(swapped, stored, 10, 20, 64, 64, 1.0)
    plain = open_slide(path)
    assert np.array_equal(got, plain.read_region(10, 20, 64, 64, 1.0)[:, :, ::-1])


@pytest.mark.parametrize("scale", [2.0, 4.0, 8.0, 6.5])
def test_ndpi_reads_through_the_slide_reader(cases, scale):
    """NDPI's stored "tiles" are pieces of one JPEG stream that cannot be decoded alone: the direct path
    declines them (it used to stop the fluorescence case with "Not a JPEG file"), and every read, aligned
    with a level or resampled, gives the slide reader's pixels."""
    slide = open_slide(cases / "fluorescence" / "DAPI-387.ndpi")
    stored = StoredLevels(slide)
    assert not any(stored.available(level) for level in range(len(slide.levels)))
    for x, y in [(0, 0), (1000, 1200)]:
        got = read_tile_pixels(slide, stored, x, y, 128, 96, scale)
        assert np.array_equal(got, slide.read_region(x, y, 128, 96, scale))


def test_tile_without_data_is_padding(tmp_path):
    """A stored tile of byte count 0 (a sparse TIFF) reads as the pad value; every other pixel of a
    read that covers it is still the stored tiles' own, whether the read lies wholly inside the page."""
    path = write_synthetic_slide(tmp_path / "s.tiff", 512, 384, mpp=0.25, tile=128, compression="zlib")
    slide = open_slide(path)
    stored = StoredLevels(slide)
    full = stored.read(0, 0, 0, 512, 384)
    assert np.array_equal(full, slide.read_region(0, 0, 512, 384, 1.0))
    page = stored._open()[0]
    counts = np.array(page.counts)
    counts[1 * page.across + 2] = 0  # the stored tile at (tx 2, ty 1): x 256-383, y 128-255
    page.counts = counts
    stored._cache.clear()
    stored._cached = 0
    for x, y, w, h in [(200, 100, 250, 200), (0, 0, 512, 384), (300, 200, 40, 30)]:
        got = stored.read(0, x, y, w, h, pad_value=7)
        want = full[y:y + h, x:x + w].copy()
        hole = want[max(128 - y, 0):max(256 - y, 0), max(256 - x, 0):max(384 - x, 0)]
        hole[...] = 7
        assert np.array_equal(got, want), (x, y, w, h)
