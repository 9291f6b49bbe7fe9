"""Inputs, split and augmentation (no network involved)."""

import json
import shutil

import numpy as np
import pytest
from train_synthetic import make_tileset

from slidemill.shared.errors import InputError, MissingInputError
from slidemill.train import augment
from slidemill.train.data import auto_class_weights, class_fractions, load_tilesets, split_samples


def test_load_tileset(tileset):
    data = load_tilesets([tileset])
    assert len(data.samples) == 64
    assert data.mpp == 0.5 and data.tile_size_px == 64
    assert [c.name for c in data.classes.trainable] == ["Other", "Tumor", "Stroma"]
    assert data.slides == ["synthetic-a.tiff"]
    # the manifest file itself is accepted too
    assert len(load_tilesets([tileset / "tileset.json"]).samples) == 64


def test_one_slide_is_split_into_separate_blocks_without_overlap(tmp_path):
    # overlapping tiles (stride 48): tiles along a block edge would share pixels with validation tiles
    ts = make_tileset(tmp_path / "ov", width=512, height=512, tile=64, overlap=16)
    samples = load_tilesets([ts]).samples
    split = split_samples(samples, val_fraction=0.2, val_slides=[], seed=0)
    assert split.strategy == "blocks" and split.block_size_px
    assert split.train and split.val
    assert not set(split.train) & set(split.val)
    assert len(split.val) >= 0.2 * len(samples)
    assert split.excluded > 0  # the band of tiles touching validation blocks was left out
    assert len(split.train) + len(split.val) + split.excluded == len(samples)
    for i in split.train:
        for j in split.val:
            assert not samples[i].overlaps(samples[j]), (samples[i], samples[j])
    # deterministic for a seed, different for another
    again = split_samples(samples, val_fraction=0.2, val_slides=[], seed=0)
    assert again.val == split.val
    other = split_samples(samples, val_fraction=0.2, val_slides=[], seed=5)
    assert other.val != split.val


def test_one_slide_split_holds_out_part_of_every_class():
    """A class found in only two places (two blocks of 25) ends up in both training and validation, for any
    seed; the common class is held out in val_fraction of its area, as near as whole blocks allow."""
    from slidemill.train.data import Sample

    rare = {(0, 0), (9, 9)}  # tiles in the blocks at opposite corners (blocks of 2 x 2 tiles)
    samples = [Sample(None, None, "a.svs", 64.0 * c, 64.0 * r, 64.0, 64.0,
                      (("Rare", 1.0),) if (c, r) in rare else (("Common", 0.5), ("Ignore*", 0.5)))
               for r in range(10) for c in range(10)]
    for seed in range(6):
        split = split_samples(samples, val_fraction=0.2, val_slides=[], seed=seed, classes=["Common", "Rare"])
        assert split.block_size_px == 128.0 and len(split.val) == 20  # 5 of the 25 blocks
        rare_val = {(int(samples[i].x // 64), int(samples[i].y // 64)) for i in split.val} & rare
        rare_train = {(int(samples[i].x // 64), int(samples[i].y // 64)) for i in split.train} & rare
        assert len(rare_val) == 1 and len(rare_train) == 1, seed
        assert sum(1 for i in split.val if samples[i].class_fractions[0][0] == "Common") == 19


def test_two_slides_are_split_by_slide(tmp_path):
    a = make_tileset(tmp_path / "a", slide="a.svs", width=256, height=256, seed=1)
    b = make_tileset(tmp_path / "b", slide="b.svs", width=256, height=256, seed=2)
    c = make_tileset(tmp_path / "c", slide="c.svs", width=256, height=256, seed=3)
    samples = load_tilesets([a, b, c]).samples
    split = split_samples(samples, val_fraction=0.2, val_slides=[], seed=0)
    assert split.strategy == "slides"
    assert len(split.val_slides) == 1 and len(split.train_slides) == 2
    assert not {samples[i].slide for i in split.train} & {samples[i].slide for i in split.val}
    named = split_samples(samples, val_fraction=0.2, val_slides=["b.svs"], seed=0)
    assert named.val_slides == ["b.svs"] and {samples[i].slide for i in named.val} == {"b.svs"}
    with pytest.raises(InputError, match="nope.svs"):
        split_samples(samples, val_fraction=0.2, val_slides=["nope.svs"], seed=0)
    with pytest.raises(InputError, match="every slide"):
        split_samples(samples, val_fraction=0.2, val_slides=["a.svs", "b.svs", "c.svs"], seed=0)


def test_auto_class_weights_favour_rare_classes(tileset):
    data = load_tilesets([tileset])
    fractions = class_fractions(data.samples, data.classes)
    assert fractions.sum() == pytest.approx(1.0)
    weights = auto_class_weights(fractions)
    assert weights.mean() == pytest.approx(1.0)
    order = np.argsort(fractions)
    assert list(np.argsort(-weights)) == list(order)  # rarest class, largest weight
    assert auto_class_weights(np.array([0.5, 0.5, 0.0]))[2] > 0  # an absent class gets a finite weight


# --- bad input: one paragraph naming the difference, before any work -----------------------------


def test_different_class_tables_are_refused(tmp_path):
    a = make_tileset(tmp_path / "a", slide="a.svs", width=128, height=128)
    b = make_tileset(tmp_path / "b", slide="b.svs", width=128, height=128, class_names=("Other", "Tumor", "Necrosis"))
    with pytest.raises(InputError) as err:
        load_tilesets([a, b])
    assert "different class table" in str(err.value)
    assert "Necrosis" in str(err.value) and "Stroma" in str(err.value)


def test_different_label_order_is_refused(tmp_path):
    a = make_tileset(tmp_path / "a", slide="a.svs", width=128, height=128)
    b = make_tileset(tmp_path / "b", slide="b.svs", width=128, height=128, class_names=("Tumor", "Other", "Stroma"))
    with pytest.raises(InputError, match="'Other' has label 0 in the first but 1 here"):
        load_tilesets([a, b])


def test_different_resolutions_are_refused(tmp_path):
    a = make_tileset(tmp_path / "a", slide="a.svs", width=128, height=128, mpp=0.5)
    b = make_tileset(tmp_path / "b", slide="b.svs", width=128, height=128, mpp=1.0)
    with pytest.raises(InputError, match="1 microns per pixel .* at 0.5"):
        load_tilesets([a, b])
    c = make_tileset(tmp_path / "c", slide="c.svs", width=128, height=128, tile=32)
    with pytest.raises(InputError, match="tiles of 32 px"):
        load_tilesets([a, c])


def test_empty_tileset_is_refused(tmp_path):
    ts = make_tileset(tmp_path / "e", width=128, height=128)
    manifest = json.loads((ts / "tileset.json").read_text())
    manifest["tiles"] = []
    (ts / "tileset.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="is empty"):
        load_tilesets([ts])


def test_missing_tile_files_are_refused(tmp_path):
    ts = make_tileset(tmp_path / "m", width=128, height=128)
    shutil.rmtree(ts / "masks")
    with pytest.raises(MissingInputError, match="do not exist") as err:
        load_tilesets([ts])
    assert "masks/r00000_c00000.png" in str(err.value) and "and 3 more" in str(err.value)


def test_missing_tileset_is_refused(tmp_path):
    with pytest.raises(MissingInputError, match="nothing-here"):
        load_tilesets([tmp_path / "nothing-here"])


def test_tileset_without_classes_is_refused(tmp_path):
    ts = make_tileset(tmp_path / "n", width=128, height=128)
    manifest = json.loads((ts / "tileset.json").read_text())
    manifest.pop("classes")
    (ts / "tileset.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="no class table"):
        load_tilesets([ts])


# --- augmentation ------------------------------------------------------------------------------


def _pair(seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[:8, :16] = 1  # an asymmetric mark shows where geometry moved it
    mask[40:, 40:] = 255
    image[mask == 1] = (10, 200, 30)
    return image, mask


def test_augmentation_moves_image_and_mask_together_and_is_deterministic():
    image, mask = _pair()
    seen_geometries = set()
    for s in range(64):
        out_img, out_mask = augment.flip_rotate(image, mask, np.random.default_rng([7, s]))
        assert out_img.shape == image.shape and out_mask.shape == mask.shape
        assert set(np.unique(out_mask)) == {0, 1, 255}
        # the mark's pixels in the image still carry the mark's colour
        assert (out_img[out_mask == 1] == (10, 200, 30)).all()
        seen_geometries.add(out_mask.tobytes())
    assert len(seen_geometries) == 8  # 4 rotations x 2 flips
    a = augment.standard(image, mask, np.random.default_rng([1, 2, 3]))
    b = augment.standard(image, mask, np.random.default_rng([1, 2, 3]))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    c = augment.standard(image, mask, np.random.default_rng([1, 2, 4]))
    assert not np.array_equal(a[0], c[0])


def test_shift_moves_pixels_and_labels_alike_and_ignores_what_it_invents():
    """out[y, x] = in[y - dy, x - dx] for image and mask; every vacated pixel is ignored (255) in the mask
    and the reflection of the tile (OpenCV's BORDER_REFLECT_101) in the image; shifts reach a quarter of the
    side, both ways, and the same generator gives the same shift."""
    h = w = 64
    yy, xx = np.mgrid[:h, :w]
    image = np.stack([yy * 4, xx * 4, np.full_like(yy, 7)], axis=-1).astype(np.uint8)  # a pixel names its place
    mask = ((yy // 8 + xx // 8) % 3).astype(np.uint8)
    mask[:5, :9] = 255
    reflect = lambda v, n: np.where(v < 0, -v, np.where(v >= n, 2 * (n - 1) - v, v))  # noqa: E731
    shifts = set()
    for seed in range(300):
        out_img, out_mask = augment.shift(image, mask, np.random.default_rng([5, seed]))
        again = augment.shift(image, mask, np.random.default_rng([5, seed]))
        assert np.array_equal(out_img, again[0]) and np.array_equal(out_mask, again[1])
        # the centre is never vacated (a shift is at most a quarter): where did its pixel come from?
        dy, dx = 32 - int(out_img[32, 32, 0]) // 4, 32 - int(out_img[32, 32, 1]) // 4
        assert max(abs(dy), abs(dx)) <= 16
        shifts.add((dy, dx))
        sy, sx = yy - dy, xx - dx
        inside = (sy >= 0) & (sy < h) & (sx >= 0) & (sx < w)
        assert np.array_equal(out_mask[inside], mask[sy[inside], sx[inside]])
        assert (out_mask[~inside] == 255).all()
        assert np.array_equal(out_img, image[reflect(sy, h), reflect(sx, w)])
    assert {d for d, _ in shifts} >= {-16, 0, 16} and {d for _, d in shifts} >= {-16, 0, 16}


def test_stain_jitter_keeps_an_he_tile_he():
    image, _ = _pair()
    image[:] = (200, 120, 180)
    out = augment.hed_jitter(image, np.random.default_rng(0), sigma=0.05, bias=0.05)
    assert out.dtype == np.uint8 and out.shape == image.shape
    difference = np.abs(out.astype(int) - image.astype(int)).mean()
    assert 0 < difference < 40
    identity = augment.hed_jitter(image, np.random.default_rng(0), sigma=0.0, bias=0.0)
    assert np.abs(identity.astype(int) - image.astype(int)).max() <= 1
    blurred = augment.blur(_pair()[0], np.random.default_rng(0))
    assert blurred.std() < _pair()[0].std()


def test_the_channels_a_tileset_chose_reach_the_model_card():
    """Tiles of a multi-channel slide were read from chosen channels; the card must name them for infer."""
    from slidemill.shared.contracts import ChannelPick, PixelMeaning
    from slidemill.shared.testing import sample_tileset
    from slidemill.train.data import TrainingData

    plain = sample_tileset()
    picked = plain.model_copy(update={"slide": plain.slide.model_copy(update={"pixels": PixelMeaning(
        dtype="uint16", bands=1, frames=3, channels=[ChannelPick(name="DAPI", frame=0, window=(0, 4095))])})})

    def data(tileset):
        return TrainingData(paths=[], tilesets=[tileset], readers=[None], classes=tileset.classes,
                            mpp=tileset.params.mpp,
                            tile_size_px=tileset.params.tile_size_px, samples=[])

    assert data(plain).slide_channels is None
    assert data(picked).slide_channels == ["DAPI"]
