"""infer applies the model card's stain normalisation: it fits the slide by tile's rule (the very parameters
tile recorded for that slide) and feeds the model StainNormaliser(fit, card target) of every tile; a slide
that cannot be fitted is refused (exit 2) naming it."""

import json

import numpy as np
import pytest
import tifffile
from infer_support import conv_onnx, write_model_dir

from slidemill.infer import InferConfig, run
from slidemill.shared.contracts import ModelCard, Prediction, StainNormalisation, TileSet, load_contract, save_contract
from slidemill.shared.errors import InputError
from slidemill.shared.stain import StainNormaliser
from slidemill.shared.testing import (
    HE_STAINS,
    OTHER_LAB_STAINS,
    example_shapes,
    stained_renderer,
    write_synthetic_slide,
)

SIZE, MPP, TILE = 512, 1.0, 128


@pytest.fixture(scope="module")
def stained(tmp_path_factory):
    """Two stainings of one tissue at 1 um/px, each tiled by slidemill-tile at its own resolution."""
    from slidemill.tile import TileConfig
    from slidemill.tile import run as tile

    root = tmp_path_factory.mktemp("stained")
    shapes = example_shapes(SIZE, SIZE, seed=2)
    out = {}
    for name, stains in (("a", HE_STAINS), ("b", OTHER_LAB_STAINS)):
        slide = write_synthetic_slide(root / f"{name}.tiff", SIZE, SIZE, mpp=MPP, shapes=shapes,
                                      render=stained_renderer(shapes, stains, seed=2))
        tile(TileConfig(slide=slide, out=root / f"tiles-{name}", mpp=MPP, tile_size_px=64, overlap_px=0, workers=1))
        out[name] = (slide, load_contract(root / f"tiles-{name}" / "tileset.json", TileSet).stain)
    return root, out


def _channel_model(folder, target, method):
    """Logit c = the model's input channel c with mean 0 and std 1, i.e. the fed pixel's channel / 255: the
    predicted label is the channel where the (normalised) pixel is brightest."""
    weight = np.eye(3)[:, :, None, None]
    model = write_model_dir(folder, conv_onnx(weight, np.zeros(3)), ["Red", "Green", "Blue"], mpp=MPP, tile=TILE)
    card = load_contract(model / "model-card.json", ModelCard)
    normalization = card.input.normalization.model_copy(update={"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)})
    stain = StainNormalisation(method=method, target=target, target_source="reference", reference="a.tiff",
                               tissue_mpp=4.0)
    card = card.model_copy(update={"input": card.input.model_copy(
        update={"normalization": normalization, "stain_normalisation": stain})})
    save_contract(card, model / "model-card.json")
    return model


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_infer_fits_what_tile_recorded_and_feeds_normalised_pixels(stained, tmp_path, method):
    root, slides = stained
    fit_a, (slide_b, fit_b) = slides["a"][1], slides["b"]
    model = _channel_model(tmp_path / "model", fit_a.get(method), method)
    result = run(InferConfig(slide=slide_b, model_dir=model, out=tmp_path / "pred", workers=1))
    prediction = load_contract(tmp_path / "pred" / "prediction.json", Prediction)
    assert prediction == result.prediction and prediction.schema_version == "1.2"
    # the slide's fit, made again by infer, is exactly the one tile recorded
    assert prediction.stain.source == fit_b.get(method)
    assert prediction.stain.target == fit_a.get(method) and prediction.stain.thumbnail_scale == 4.0
    # every predicted pixel's label is the brightest channel of the normalised pixel (where one channel leads
    # by at least one grey level), not of the slide's own pixel
    pixels = tifffile.imread(slide_b, level=0)
    normalised = StainNormaliser(fit_b.get(method), fit_a.get(method))(pixels).astype(int)
    labels = tifffile.imread(tmp_path / "pred" / "labels.tiff", level=0)
    ordered = np.sort(normalised, axis=2)
    clear = (labels != 255) & (ordered[..., 2] - ordered[..., 1] >= 1)
    assert clear.mean() > 0.3
    assert np.array_equal(labels[clear], normalised.argmax(2)[clear])
    raw_clear = clear & (np.sort(pixels.astype(int), axis=2)[..., 2] - np.sort(pixels.astype(int), axis=2)[..., 1]
                         >= 1)
    assert (pixels.argmax(2)[raw_clear] != labels[raw_clear]).mean() > 0.2  # the transform changed the answer


def test_a_slide_that_cannot_be_fitted_is_refused(stained, tmp_path, handout):
    _, slides = stained
    grey = handout / "cases" / "uint16" / "gray16.tif"
    model = _channel_model(tmp_path / "model", slides["a"][1].macenko, "macenko")
    with pytest.raises(InputError, match="cannot be stain-normalised.*grey") as info:
        run(InferConfig(slide=grey, model_dir=model, out=tmp_path / "pred", slide_mpp=1.0))
    assert str(grey) in str(info.value) and "--stain-normalisation none" in str(info.value)
    assert not (tmp_path / "pred").exists()


def test_a_card_without_stain_normalisation_feeds_the_slide_as_it_is(stained, tmp_path):
    _, slides = stained
    model = _channel_model(tmp_path / "model", slides["a"][1].macenko, "macenko")
    card = json.loads((model / "model-card.json").read_text())
    del card["input"]["stain_normalisation"]
    card["schema_version"] = "1.1"  # a card written before stain normalisation
    (model / "model-card.json").write_text(json.dumps(card))
    result = run(InferConfig(slide=slides["b"][0], model_dir=model, out=tmp_path / "pred", workers=1))
    assert result.prediction.stain is None
    pixels = tifffile.imread(slides["b"][0], level=0).astype(int)
    labels = tifffile.imread(tmp_path / "pred" / "labels.tiff", level=0)
    ordered = np.sort(pixels, axis=2)
    clear = (labels != 255) & (ordered[..., 2] - ordered[..., 1] >= 1)
    assert clear.mean() > 0.3 and np.array_equal(labels[clear], pixels.argmax(2)[clear])
