"""Stain normalisation through tile -> train: two slides of the same tissue stained by two labs (the same
H, E concentrations rendered through two stain matrices by Beer-Lambert) come closer in colour, every tile
of a slide goes through its slide's one fixed transform (masks untouched), and what cannot be normalised is
refused naming the tileset."""

import json
from pathlib import Path

import numpy as np
import pytest

from slidemill.shared.contracts import TileSet, load_contract, save_contract
from slidemill.shared.errors import InputError
from slidemill.shared.stain import StainNormaliser, pool_stain
from slidemill.shared.testing import (
    HE_STAINS,
    OTHER_LAB_STAINS,
    example_shapes,
    qupath_geojson,
    stained_renderer,
    write_synthetic_slide,
)
from slidemill.shared.tiletable import tile_records
from slidemill.train.config import TrainConfig
from slidemill.train.data import load_tilesets
from slidemill.train.loader import TileDataset
from slidemill.train.stain import plan_stain

W = H = 1024  # level-0 px at 0.5 um/px; tiles of 64 px at 1 um/px
T = 64
SLIDES = {"lab-a.tiff": HE_STAINS, "lab-b.tiff": OTHER_LAB_STAINS}


def _tile(root: Path, name: str, stains, *, texture: float = 0.15, mpp: float = 1.0, size: int = W) -> Path:
    from slidemill.tile import TileConfig, run

    shapes = example_shapes(size, size, seed=1)
    ann = root / "shapes.geojson"
    if not ann.exists():
        ann.write_text(json.dumps(qupath_geojson(shapes)))
    slide = write_synthetic_slide(root / name, size, size, mpp=0.5, shapes=shapes,
                                  render=stained_renderer(shapes, stains, seed=1, texture=texture))
    out = root / f"tiles-{name}"
    run(TileConfig(slide=slide, out=out, annotations=[ann], mpp=mpp, tile_size_px=T, overlap_px=0, workers=1))
    return out


@pytest.fixture(scope="module")
def labs(tmp_path_factory):
    """The two stainings, tiled by slidemill-tile (which records each slide's fits)."""
    root = tmp_path_factory.mktemp("labs")
    return root, [_tile(root, name, stains) for name, stains in SLIDES.items()]


def _config(tilesets, method, reference=None):
    return TrainConfig(tilesets=tilesets, out=Path("unused"), stain_normalisation=method, stain_reference=reference)


def _labelled_pixels(dataset: TileDataset, data) -> dict[str, np.ndarray]:
    """Every labelled pixel (mask != ignore) of every tile, per slide, as the dataset feeds them."""
    out: dict[str, list] = {}
    for i, sample in enumerate(data.samples):
        image, mask = dataset.load(i, 0)
        out.setdefault(sample.slide, []).append(image[mask != 255])
    return {k: np.concatenate(v).astype(np.float64) for k, v in out.items()}


def _distance(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The colour statistics' distance of two slides: the largest difference of the per-channel (R, G, B) means,
    and of the per-channel standard deviations, over their labelled pixels."""
    return float(np.abs(a.mean(0) - b.mean(0)).max()), float(np.abs(a.std(0) - b.std(0)).max())


# Measured (1024 x 1024 px slides, tiles of 64 px at 1 um/px; see README "Stain normalisation"): the two
# stainings' channel means differ by up to 77.2 grey levels and their standard deviations by 8.3. Normalised
# to the pooled target: means within 2.8 (Macenko) and 3.2 (Reinhard), deviations within 1.6 and 4.0; lab-b
# normalised to lab-a as --stain-reference: means within 4.7 (Macenko) and 4.1 (Reinhard) of lab-a's,
# deviations within 1.9 and 6.4. The means must come ten times closer, the deviations closer at all.
@pytest.mark.parametrize("method", ["macenko", "reinhard"])
@pytest.mark.parametrize("reference", [False, True])
def test_two_stainings_of_one_tissue_come_closer(labs, method, reference):
    root, tilesets = labs
    data = load_tilesets(tilesets)
    plan = plan_stain(_config(tilesets, method, root / "lab-a.tiff" if reference else None), data,
                      ["lab-a.tiff", "lab-b.tiff"])
    raw = _labelled_pixels(TileDataset(data.samples, T, 4, augment=None, seed=0), data)
    normalised = _labelled_pixels(TileDataset(data.samples, T, 4, augment=None, seed=0, stains=plan.normalisers),
                                  data)
    mean_before, spread_before = _distance(raw["lab-a.tiff"], raw["lab-b.tiff"])
    assert mean_before > 60 and spread_before > 6  # the two labs' colours really differ
    if reference:  # lab-b to lab-a's colours
        mean_after, spread_after = _distance(raw["lab-a.tiff"], normalised["lab-b.tiff"])
    else:  # both to the pooled target
        mean_after, spread_after = _distance(normalised["lab-a.tiff"], normalised["lab-b.tiff"])
    assert mean_after < mean_before / 10, (mean_before, mean_after)
    assert spread_after < spread_before, (spread_before, spread_after)


def test_the_target_is_the_reference_fit_or_the_median_of_the_training_slides(labs):
    root, tilesets = labs
    data = load_tilesets(tilesets)
    fits = [ts.stain.macenko for ts in data.tilesets]
    # the reference fitted by the slides' own rule (tissue thumbnail): lab-a as a reference is lab-a's tile fit
    plan = plan_stain(_config(tilesets, "macenko", root / "lab-a.tiff"), data, ["lab-a.tiff", "lab-b.tiff"])
    assert plan.card.target == fits[0] and plan.card.target_source == "reference"
    assert plan.card.reference == "lab-a.tiff" and len(plan.card.reference_sha256) == 64
    # pooled over the training split's slides only: one slide is its own fit, two the median (here the mean)
    plan = plan_stain(_config(tilesets, "macenko"), data, ["lab-b.tiff"])
    assert plan.card.target == fits[1] and plan.card.pooled_slides == ["lab-b.tiff"]
    plan = plan_stain(_config(tilesets, "reinhard"), data, ["lab-a.tiff", "lab-b.tiff"])
    stacked = np.array([ts.stain.reinhard.lab_mean for ts in data.tilesets])
    assert np.allclose(plan.card.target.lab_mean, stacked.mean(0), rtol=0, atol=1e-9)
    pooled = pool_stain(fits)
    matrix = (np.asarray(fits[0].stain_matrix) + np.asarray(fits[1].stain_matrix)) / 2
    assert np.allclose(pooled.stain_matrix, matrix / np.linalg.norm(matrix, axis=0), atol=1e-12)
    assert np.allclose(np.linalg.norm(pooled.stain_matrix, axis=0), 1.0)


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """The two stainings without texture, tiled at the slide's own resolution (no resampling): every pixel of
    a class has one RGB value."""
    root = tmp_path_factory.mktemp("flat")
    return [_tile(root, "flat-a.tiff", HE_STAINS, texture=0, mpp=0.5, size=512),
            _tile(root, "flat-b.tiff", OTHER_LAB_STAINS, texture=0, mpp=0.5, size=512)]


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_every_tile_of_a_slide_goes_through_one_fixed_transform_and_keeps_its_mask(flat, method):
    """After normalisation each class still has exactly one value in every tile of its slide (a pixel value
    maps to the same output whatever tile it is in), the classes stay apart, and the masks are the tile
    tool's, untouched."""
    data = load_tilesets(flat)
    plan = plan_stain(_config(flat, method), data, ["flat-a.tiff"])
    raw = TileDataset(data.samples, T, 4, augment=None, seed=0)
    normalised = TileDataset(data.samples, T, 4, augment=None, seed=0, stains=plan.normalisers)
    for slide in ("flat-a.tiff", "flat-b.tiff"):
        rows = []
        for i, sample in enumerate(data.samples):
            if sample.slide != slide:
                continue
            image, mask = raw.load(i, 0)
            out, out_mask = normalised.load(i, 0)
            assert np.array_equal(mask, out_mask)
            rows.append(np.concatenate([image.reshape(-1, 3), out.reshape(-1, 3)], axis=1))
        pairs = np.unique(np.concatenate(rows), axis=0)  # (input RGB, output RGB) over all the slide's tiles
        inputs = np.unique(pairs[:, :3], axis=0)
        assert len(inputs) >= 5  # glass and the four classes' colours
        assert len(pairs) == len(inputs)  # one output per input colour
        assert len(np.unique(pairs[:, 3:], axis=0)) == len(inputs)  # and no two classes merged


def _older_tileset(tileset: Path, folder: Path) -> Path:
    """The tileset as slidemill-tile 1.1 wrote it: no stain member."""
    folder.mkdir()
    data = json.loads((tileset / "tileset.json").read_text())
    data["schema_version"] = "1.1"
    del data["stain"]
    data["tiles"] = [r.model_dump(mode="json") for r in tile_records(tileset)]  # 1.1 kept the rows inline
    del data["tiles_file"], data["tile_count"]
    (folder / "tileset.json").write_text(json.dumps(data))
    for entry in ("tiles", "masks"):
        (folder / entry).symlink_to(tileset / entry)
    return folder


def test_tilesets_without_a_fit_are_refused_naming_them(labs, tmp_path):
    root, tilesets = labs
    old = _older_tileset(tilesets[1], tmp_path / "old")
    loaded = load_tilesets([tilesets[0], old])
    assert loaded.tilesets[1].stain is None
    with pytest.raises(InputError, match="records no stain fit") as info:
        plan_stain(_config([tilesets[0], old], "macenko"), loaded, ["lab-a.tiff"])
    assert str(old) in str(info.value) and "Tile the slide again" in str(info.value)
    assert plan_stain(_config([tilesets[0], old], "none"), loaded, ["lab-a.tiff"]) is None
    # a slide whose fit failed (recorded with the reason)
    failed = tmp_path / "failed"
    failed.mkdir()
    ts = load_contract(tilesets[1] / "tileset.json", TileSet)
    reason = "the tissue thumbnail has only 12 stained pixels, too few to fit a Macenko stain model"
    stain = ts.stain.model_copy(update={"macenko": None, "not_fitted": {"macenko": reason}})
    save_contract(ts.model_copy(update={"stain": stain}), failed / "tileset.json")
    for entry in ("tiles", "masks", "tiles.jsonl"):
        (failed / entry).symlink_to(tilesets[1] / entry)
    loaded = load_tilesets([tilesets[0], failed])
    with pytest.raises(InputError, match="has no macenko stain fit.*only 12 stained pixels") as info:
        plan_stain(_config([tilesets[0], failed], "macenko"), loaded, ["lab-a.tiff"])
    assert str(failed) in str(info.value)
    assert plan_stain(_config([tilesets[0], failed], "reinhard"), loaded, ["lab-a.tiff"]) is not None


def test_a_reference_without_stain_is_refused(labs, tmp_path):
    import cv2

    root, tilesets = labs
    glass = tmp_path / "glass.png"
    cv2.imwrite(str(glass), np.full((256, 256, 3), 238, np.uint8))
    with pytest.raises(InputError, match="cannot be the stain reference") as info:
        plan_stain(_config(tilesets, "macenko", glass), load_tilesets(tilesets), ["lab-a.tiff"])
    assert str(glass) in str(info.value) and "--stain-reference" in str(info.value)


def test_the_normaliser_is_the_shared_one(labs):
    """plan_stain's transform of a slide is StainNormaliser(the slide's recorded fit, the target)."""
    _, tilesets = labs
    data = load_tilesets(tilesets)
    plan = plan_stain(_config(tilesets, "reinhard"), data, ["lab-a.tiff"])
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for ts, normaliser in zip(data.tilesets, plan.normalisers, strict=True):
        expected = StainNormaliser(ts.stain.reinhard, plan.card.target)(image)
        assert np.array_equal(normaliser(image), expected)


def test_training_records_the_normalisation_and_infer_applies_the_same(labs, tmp_path, fast_encoder):
    """A tiny run (1 epoch): the card holds the method, the target (one training slide: its own fit) and the
    augmentation; infer on the other slide fits exactly the parameters tile recorded for it."""
    pytest.importorskip("torch")
    from typer.testing import CliRunner

    from slidemill.infer import InferConfig
    from slidemill.infer import run as infer
    from slidemill.shared.contracts import ModelCard
    from slidemill.train.cli import app

    root, tilesets = labs
    out = tmp_path / "model"
    result = CliRunner().invoke(app, [str(t) for t in tilesets] + [
        "--out", str(out), "--encoder", fast_encoder, "--epochs", "1", "--batch-size", "8", "--val-slides",
        "lab-b.tiff", "--stain-normalisation", "macenko", "--augment", "standard", "--hed-jitter", "0.1"])
    assert result.exit_code == 0, result.output
    card = load_contract(out / "model-card.json", ModelCard)
    recorded = {name: load_contract(t / "tileset.json", TileSet).stain for name, t in zip(SLIDES, tilesets,
                                                                                           strict=True)}
    stain = card.input.stain_normalisation
    assert card.schema_version == "1.2" and stain.method == "macenko"
    assert stain.target_source == "training-slides" and stain.pooled_slides == ["lab-a.tiff"]
    assert stain.target == recorded["lab-a.tiff"].macenko and stain.tissue_mpp == 4.0
    assert json.loads((out / "report.json").read_text())["environment"]["stain_normalisation"] == "macenko"
    augmentation = card.training.parameters["augmentation"]
    assert augmentation["pipeline"] == "standard" and augmentation["stain"]["alpha"] == [0.9, 1.1]

    prediction = infer(InferConfig(slide=root / "lab-b.tiff", model_dir=out, out=tmp_path / "pred")).prediction
    assert prediction.stain.source == recorded["lab-b.tiff"].macenko  # the very numbers tile recorded
    assert prediction.stain.target == stain.target and prediction.stain.method == "macenko"
    report = json.loads((tmp_path / "pred" / "report.json").read_text())
    assert report["environment"]["stain_normalisation"] == "macenko"


def test_stain_options_are_checked(labs, tmp_path):
    from typer.testing import CliRunner

    from slidemill.train.cli import app

    _, tilesets = labs
    result = CliRunner().invoke(app, [str(tilesets[0]), "--out", str(tmp_path / "m"), "--stain-reference",
                                      str(tilesets[0])])
    assert result.exit_code == 2 and "--stain-normalisation" in result.output
    result = CliRunner().invoke(app, [str(tilesets[0]), "--out", str(tmp_path / "m"), "--augment", "colour"])
    assert result.exit_code == 2
    old = _older_tileset(tilesets[1], tmp_path / "old")
    result = CliRunner().invoke(app, [str(tilesets[0]), str(old), "--out", str(tmp_path / "m"),
                                      "--stain-normalisation", "reinhard"])
    assert result.exit_code == 2 and "records no stain fit" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "m").exists()


def test_random_patches_are_normalised_with_their_slides_transform(labs, tmp_path):
    from slidemill.shared.classes import ClassTable
    from slidemill.tile import TileConfig, run
    from slidemill.train.patches import RandomPatches

    root, tilesets = labs
    refs = tmp_path / "refs"
    run(TileConfig(slide=root / "lab-b.tiff", out=refs, annotations=[root / "shapes.geojson"], mpp=1.0,
                   tile_size_px=T, overlap_px=0, workers=1, store="refs"))
    data = load_tilesets([refs])
    plan = plan_stain(_config([refs], "reinhard", root / "lab-a.tiff"), data, ["lab-b.tiff"])
    classes: ClassTable = data.classes
    plain = RandomPatches(data.readers, classes, T, seed=4)
    normalised = RandomPatches(data.readers, classes, T, seed=4, stains=plan.normalisers)
    for index in range(4):
        image, mask = plain.draw(index, 0)
        out, out_mask = normalised.draw(index, 0)
        assert np.array_equal(out, plan.normalisers[0](image)) and np.array_equal(mask, out_mask)
        assert not np.array_equal(out, image)


def test_augmentation_pipelines_and_hed_strength():
    from slidemill.train import augment

    rng = np.random.default_rng(0)
    image = rng.integers(60, 240, (32, 32, 3), dtype=np.uint8)
    mask = rng.integers(0, 3, (32, 32), dtype=np.uint8)
    # the default strength is the standard pipeline as it was (Tellez et al.'s HED-light, 0.05)
    for seed in range(5):
        a = augment.make_augment("standard")(image, mask, np.random.default_rng(seed))
        b = augment.standard(image, mask, np.random.default_rng(seed))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # geometry moves pixels only: no colour that was not in the tile, the mask moved alike (plus ignored pixels)
    colours = {tuple(c) for c in image.reshape(-1, 3)}
    for seed in range(5):
        moved, moved_mask = augment.make_augment("geometry")(image, mask, np.random.default_rng(seed))
        assert {tuple(c) for c in moved.reshape(-1, 3)} <= colours
        assert set(np.unique(moved_mask)) <= {*np.unique(mask).tolist(), 255}
        ref_image, ref_mask = augment.move(image, mask, np.random.default_rng(seed))
        assert np.array_equal(moved, ref_image) and np.array_equal(moved_mask, ref_mask)
    assert augment.make_augment("none") is None
    assert augment.describe_augment("standard", 0)["stain"] is None
    assert augment.describe_augment("geometry")["stain"] is None
    strong = augment.hed_jitter(image, np.random.default_rng(3), sigma=0.3, bias=0.3)
    light = augment.hed_jitter(image, np.random.default_rng(3), sigma=0.01, bias=0.01)
    assert np.abs(strong.astype(int) - image).mean() > np.abs(light.astype(int) - image).mean()
