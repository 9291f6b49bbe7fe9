"""tile fits both stain models once per slide on its tissue thumbnail and records them in the tileset; a
slide that is not brightfield RGB, or has too little stain, records why not (never a crash)."""

import json

from slidemill.shared.contracts import TileSet, load_contract
from slidemill.shared.slide import open_slide
from slidemill.shared.stain import fit_slide_stain
from slidemill.shared.testing import HE_STAINS, example_shapes, stained_renderer, write_synthetic_slide
from slidemill.shared.tissue import slide_tissue
from slidemill.tile import TileConfig, run

SIZE = 512


def _tile(slide, out, **options):
    run(TileConfig(slide=slide, out=out, tile_size_px=64, overlap_px=0, workers=1, **options))
    return load_contract(out / "tileset.json", TileSet), json.loads((out / "report.json").read_text())


def test_a_brightfield_slide_records_both_fits_of_its_thumbnail(tmp_path):
    shapes = example_shapes(SIZE, SIZE, seed=4)
    slide = write_synthetic_slide(tmp_path / "he.tiff", SIZE, SIZE, mpp=0.5, shapes=shapes,
                                  render=stained_renderer(shapes, HE_STAINS, seed=4))
    tileset, report = _tile(slide, tmp_path / "tiles", mpp=1.0, tissue_mpp=2.0)
    assert tileset.schema_version == "1.2" and tileset.stain.not_fitted == {}
    # exactly the shared fit of the shared thumbnail rule, at the --tissue-mpp given
    opened = open_slide(slide)
    expected = fit_slide_stain(opened, slide_tissue(opened, tissue_mpp=2.0), tissue_mpp=2.0)
    assert tileset.stain == expected and tileset.stain.thumbnail_scale == 4.0
    assert tileset.stain.macenko.pixels > 500 and tileset.stain.reinhard.pixels > 500
    assert report["environment"]["stain_fitted"] == "macenko,reinhard" and report["warnings"] == []


def test_too_little_stain_is_recorded_with_the_reason(tmp_path):
    """Pale tissue (optical density under Macenko's 0.15 in red): no Macenko fit, a Reinhard one; the run
    succeeds and says why."""
    shapes = example_shapes(SIZE, SIZE, seed=4)
    render = stained_renderer(shapes, HE_STAINS, concentrations={"Tissue": (0.05, 0.15)}, seed=4, texture=0)
    slide = write_synthetic_slide(tmp_path / "pale.tiff", SIZE, SIZE, mpp=0.5, shapes=shapes, render=render)
    tileset, report = _tile(slide, tmp_path / "tiles", mpp=1.0)
    assert tileset.stain.macenko is None and tileset.stain.reinhard is not None and tileset.tile_count > 0
    assert "too few to fit a Macenko stain model" in tileset.stain.not_fitted["macenko"]
    assert report["environment"]["stain_fitted"] == "reinhard"
    assert any("Macenko stain model(s) not fitted" in w for w in report["warnings"])



def test_dark_field_grey_and_multichannel_slides_record_none_and_why(tmp_path, cases):
    darkfield, report = _tile(cases / "fluorescence" / "DAPI-387.ndpi", tmp_path / "dapi", mpp=4.0)
    assert darkfield.params.tissue_mode == "darkfield" and darkfield.stain.macenko is None
    assert set(darkfield.stain.not_fitted) == {"macenko", "reinhard"}
    assert all("dark-field" in r for r in darkfield.stain.not_fitted.values())
    assert report["environment"]["stain_fitted"] == "none"
    assert any("not fitted: the slide is dark-field" in w for w in report["warnings"])

    grey, _ = _tile(cases / "uint16" / "gray16.tif", tmp_path / "grey", mpp=2.0, all_tiles=True)
    assert grey.stain.reinhard is None and all("grey" in r for r in grey.stain.not_fitted.values())

    picked, _ = _tile(cases / "multichannel" / "multi-channel.ome.tif", tmp_path / "multi", mpp=1.0, slide_mpp=1.0,
                      all_tiles=True, channels=["0", "1", "2"])
    assert picked.stain.macenko is None
    assert all("multichannel" in r for r in picked.stain.not_fitted.values())
