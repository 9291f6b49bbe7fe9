"""Stain normalisation: fitted once per slide, one fixed transform per slide, and a re-stained copy of real
H&E brought back to the original's colours."""

import numpy as np
import pytest

from slidemill.shared.errors import InputError
from slidemill.shared.slide import open_slide
from slidemill.shared.stain import IO, StainNormaliser, StainParameters, fit_stain
from slidemill.shared.tissue import detect_tissue

# stain vectors (columns H, E; rows R, G, B) of another lab's H&E: bluer haematoxylin, pinker eosin
OTHER_LAB = np.array([[0.65, 0.10], [0.70, 0.85], [0.30, 0.52]])


@pytest.fixture(scope="module")
def he(repo):
    """A real H&E crop (CMU-1-Small-Region at 1 um/px), its tissue mask, and the same tissue as another lab
    would have stained it (its Macenko concentrations re-rendered with OTHER_LAB's stain vectors)."""
    slide = open_slide(repo / "demo" / "CMU-1-Small-Region.svs")
    rgb = slide.read_region(0, 0, 512, 512, 2.0)
    mask = detect_tissue(rgb, slide.mpp * 2)
    own = np.asarray(fit_stain(rgb, "macenko", mask=mask).stain_matrix)
    od = -np.log((rgb.reshape(-1, 3).astype(np.float64) + 1) / IO)
    concentrations = np.linalg.lstsq(own, od.T, rcond=None)[0]
    vectors = OTHER_LAB / np.linalg.norm(OTHER_LAB, axis=0)
    other = np.clip(IO * np.exp(-(vectors @ concentrations)).T, 0, 255).round().astype(np.uint8)
    return rgb, mask, other.reshape(rgb.shape)


# Macenko models the re-staining exactly (same concentrations, other stain vectors), so it undoes most of
# it; Reinhard only matches L*a*b* means and spreads, so less of the per-pixel difference goes.
@pytest.mark.parametrize("method, kept", [("macenko", 0.55), ("reinhard", 0.75)])
def test_restained_tissue_comes_back_to_the_reference_colours(he, method, kept):
    rgb, mask, other = he
    normalise = StainNormaliser(fit_stain(other, method, mask=mask), fit_stain(rgb, method, mask=mask))
    back = normalise(other)
    before = np.abs(other.astype(int) - rgb)[mask].mean()
    after = np.abs(back.astype(int) - rgb)[mask].mean()
    assert before > 6 and after < kept * before, (before, after)
    # and the colour statistics of the two stainings are closer
    mean_before = np.abs(other[mask].mean(0) - rgb[mask].mean(0)).max()
    mean_after = np.abs(back[mask].mean(0) - rgb[mask].mean(0)).max()
    assert mean_after < 0.5 * mean_before, (mean_before, mean_after)


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_one_fixed_transform_per_slide(he, method):
    """A pixel maps to the same colour whatever else its tile holds (torchstain's own per-image `normalize`
    re-fits on every tile, so the same tissue changes colour between tiles: shown here for Macenko)."""
    rgb, mask, other = he
    normalise = StainNormaliser(fit_stain(other, method, mask=mask), fit_stain(rgb, method, mask=mask))
    tile_a = other[:256, :256].copy()
    tile_b = tile_a.copy()
    tile_b[128:] = other[256:384, 256:512]  # the lower half holds other tissue
    assert np.array_equal(normalise(tile_a)[:128], normalise(tile_b)[:128])
    if method == "macenko":
        from torchstain.numpy.normalizers import NumpyMacenkoNormalizer

        per_tile = NumpyMacenkoNormalizer()
        per_tile.fit(rgb)
        a, _, _ = per_tile.normalize(tile_a, stains=False)
        b, _, _ = per_tile.normalize(tile_b, stains=False)
        assert np.abs(a[:128].astype(int) - b[:128]).max() > 5


def test_padding_stays_white_and_parameters_round_trip(he):
    rgb, mask, other = he
    params = fit_stain(rgb, "macenko", mask=mask)
    assert StainParameters.model_validate_json(params.model_dump_json()) == params
    normalise = StainNormaliser(fit_stain(other, "macenko", mask=mask), params)
    padded = other.copy()
    padded[:, :40] = 255
    assert (normalise(padded)[:, :40] == 255).all()


def test_too_little_stain_is_refused():
    glass = np.full((64, 64, 3), 235, np.uint8)
    with pytest.raises(InputError, match="too few"):
        fit_stain(glass, "macenko", what="reference.png")
    with pytest.raises(InputError, match="too few"):
        fit_stain(glass, "reinhard", mask=np.zeros((64, 64), bool))


def test_pooling_takes_the_median_of_each_parameter(he):
    from slidemill.shared.stain import pool_stain

    rgb, mask, other = he
    fits = [fit_stain(img, "reinhard", mask=mask) for img in (rgb, other, rgb[::-1].copy())]
    pooled = pool_stain(fits)
    assert pooled.lab_mean == np.median([f.lab_mean for f in fits], axis=0).tolist()
    assert pooled.lab_std == np.median([f.lab_std for f in fits], axis=0).tolist()
    assert pooled.pixels == sum(f.pixels for f in fits)
    assert pool_stain(fits[:1]) == fits[0]
    macenko = [fit_stain(img, "macenko", mask=mask) for img in (rgb, other)]
    pooled = pool_stain(macenko)
    assert np.allclose(np.linalg.norm(pooled.stain_matrix, axis=0), 1.0)
    assert pooled.max_concentrations == np.mean([f.max_concentrations for f in macenko], axis=0).tolist()
    with pytest.raises(ValueError, match="several methods"):
        pool_stain([fits[0], macenko[0]])


def test_older_files_read_without_stain_records():
    """Tilesets, model cards and predictions written before 1.2 carry no stain member: they read as none."""
    import json

    from slidemill.shared.contracts import ModelCard, Prediction, TileSet, dump_contract, parse_contract
    from slidemill.shared.testing import SAMPLES

    for kind, model in (("tileset", TileSet), ("model", ModelCard), ("prediction", Prediction)):
        data = json.loads(dump_contract(SAMPLES[kind]()))
        assert data["schema_version"] == "1.2"
        data["schema_version"] = "1.1"
        old = parse_contract(json.dumps(data), model)
        assert old.schema_version == "1.1"
        stain = {"tileset": lambda o: o.stain, "model": lambda o: o.input.stain_normalisation,
                 "prediction": lambda o: o.stain}[kind](old)
        assert stain is None
