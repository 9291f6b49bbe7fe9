"""train reads every tile store (same pixels for the lossless ones) and draws random patches from
refs tilesets: seeded, class-balanced, outside the validation tiles, pixels and masks exact."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import Point

from slidemill.shared.classes import IGNORE_LABEL
from slidemill.shared.errors import InputError
from slidemill.shared.rasterize import whole_mask
from slidemill.shared.slide import open_slide
from slidemill.shared.testing import example_shapes, qupath_geojson, write_synthetic_slide
from slidemill.shared.tilestore import read_shapes
from slidemill.train.data import load_tilesets, split_samples
from slidemill.train.loader import TileDataset, read_tile

W, H, T = 1024, 768, 64  # level-0 px at 0.25 um/px; tiles of 64 px at 0.5 um/px


@pytest.fixture(scope="module")
def cut(tmp_path_factory):
    """The same slide cut into the three stores (with the tile tool, as a user would)."""
    from slidemill.tile import TileConfig, run

    root = tmp_path_factory.mktemp("stores")
    shapes = example_shapes(W, H, seed=5)
    (root / "slides").mkdir()
    slide = write_synthetic_slide(root / "slides" / "s.tiff", W, H, mpp=0.25, shapes=shapes, tile=128, seed=5)
    ann = root / "s.geojson"
    ann.write_text(json.dumps(qupath_geojson(shapes, flavour="0.4")))
    out = {}
    for store in ("png", "zarr", "refs"):
        out[store] = root / "tilesets" / store
        run(TileConfig(slide=slide, out=out[store], annotations=[ann], mpp=0.5, tile_size_px=T, overlap_px=0,
                       tissue_threshold=0.05, workers=1, store=store))
    return slide, out


def test_train_reads_every_store_alike(cut):
    _, out = cut
    data = {store: load_tilesets([path]) for store, path in out.items()}
    n = len(data["png"].samples)
    assert n > 20 and all(len(d.samples) == n for d in data.values())
    for i in range(n):
        ref = read_tile(data["png"].samples[i], T, 4)
        for store in ("zarr", "refs"):
            got = read_tile(data[store].samples[i], T, 4)
            assert np.array_equal(ref[0], got[0]) and np.array_equal(ref[1], got[1]), (store, i)


def test_refs_slide_given_again(cut, tmp_path):
    import shutil

    slide, out = cut
    moved = tmp_path / "refs"
    shutil.copytree(out["refs"], moved)
    with pytest.raises(InputError, match="--slide"):
        load_tilesets([moved])
    data = load_tilesets([moved], slides=[slide.parent])
    ref = read_tile(load_tilesets([out["png"]]).samples[3], T, 4)
    got = read_tile(data.samples[3], T, 4)
    assert np.array_equal(ref[0], got[0]) and np.array_equal(ref[1], got[1])


def _patches(cut, seed=0, exclude=()):
    from slidemill.train.patches import RandomPatches

    _, out = cut
    data = load_tilesets([out["refs"]])
    return data, RandomPatches(data.readers, data.classes, T, seed=seed, exclude=list(exclude))


def test_random_patches_are_exact_and_repeatable(cut):
    slide_path, out = cut
    data, patches = _patches(cut, seed=7)
    shapes, fill = read_shapes(out["refs"] / "shapes.json")
    truth = whole_mask(shapes, W, H, 2.0, fill=fill)  # the whole slide's mask at 0.5 um/px
    slide = open_slide(slide_path)
    positions = set()
    for index in range(12):
        image, mask = patches.draw(index, epoch=1)
        again = patches.draw(index, epoch=1)
        assert np.array_equal(image, again[0]) and np.array_equal(mask, again[1])  # seeded
        _, col, row = patches.position(index, 1)
        positions.add((col, row))
        assert np.array_equal(image, slide.read_region(col * 2.0, row * 2.0, T, T, 2.0))
        expected = np.full((T, T), IGNORE_LABEL, np.uint8)  # outside the slide: ignore
        r0, c0 = max(row, 0), max(col, 0)
        r1, c1 = min(row + T, truth.shape[0]), min(col + T, truth.shape[1])
        expected[r0 - row:r1 - row, c0 - col:c1 - col] = truth[r0:r1, c0:c1]
        assert np.array_equal(mask, expected)
    assert len(positions) == 12
    other = {patches.position(i, 2)[1:] for i in range(12)}
    assert other != positions  # a new epoch, new patches


def test_random_patches_are_class_balanced(cut):
    data, patches = _patches(cut, seed=1)
    drawn = {}
    scale = 2.0
    for index in range(400):
        si, col, row = patches.position(index, 0)
        cx, cy = (col + T / 2) * scale, (row + T / 2) * scale  # the drawn point, to within a pixel
        for label in patches.labels:
            if any(s.label == label and s.geometry.buffer(scale * 1.5).contains(Point(cx, cy))
                   for s in patches.sources[si].shapes):
                drawn[label] = drawn.get(label, 0) + 1
    # every class's shapes receive their share of the centres (1/k of draws at least, up to noise),
    # though their areas differ by two orders of magnitude
    areas = {}
    for s in patches.sources[0].shapes:
        areas[s.label] = areas.get(s.label, 0) + s.geometry.area
    assert max(areas.values()) / min(areas.values()) > 10
    for label in patches.labels:
        assert drawn.get(label, 0) >= 400 / len(patches.labels) * 0.8, (label, drawn)


def test_random_patches_avoid_validation_tiles(cut):
    data, _ = _patches(cut)
    split = split_samples(data.samples, val_fraction=0.3, val_slides=[], seed=0)
    val = [data.samples[i] for i in split.val]
    _, patches = _patches(cut, exclude=val)
    for index in range(100):
        _, col, row = patches.position(index, 3)
        x0, y0, size = col * 2.0, row * 2.0, T * 2.0
        assert not any(x0 < v.x + v.width and v.x < x0 + size and y0 < v.y + v.height and v.y < y0 + size
                       for v in val)


def test_dataset_hook_and_refusal(cut):
    _, out = cut
    data, patches = _patches(cut)
    dataset = TileDataset(data.samples, T, 4, augment=None, seed=0, patches=patches)
    image, mask = dataset.load(5, 2)
    assert np.array_equal(image, patches.draw(5, 2)[0]) and np.array_equal(mask, patches.draw(5, 2)[1])
    from slidemill.train.patches import RandomPatches

    zarr_data = load_tilesets([out["zarr"]])
    with pytest.raises(InputError, match="refs"):
        RandomPatches(zarr_data.readers, zarr_data.classes, T, seed=0)


def test_training_with_random_patches_records_the_sampling(cut, tmp_path, fast_encoder):
    from slidemill.train import TrainConfig, run

    _, out = cut
    result = run(TrainConfig(tilesets=[out["refs"]], out=tmp_path / "model", encoder=fast_encoder, epochs=1,
                             batch_size=8, seed=2, patches="random", augment="none"))
    sampling = result.card.training.parameters["sampling"]
    assert sampling["patches"] == "random" and sampling["class_balanced"] and sampling["seed"] == 2
    assert sampling["per_epoch"] == result.card.split.train_tiles
    assert math.isfinite(result.card.mean_iou or 0.0)
    assert Path(tmp_path / "model" / "model-card.json").is_file()
