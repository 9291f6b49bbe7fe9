"""With --overlap 0, the tiles of a slide at a non-integer scale put side by side are exactly one
large read of the slide at that scale: no seam from the resampling at tile edges."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from slidemill.shared.contracts import TileSet, load_contract
from slidemill.shared.slide import open_slide
from slidemill.shared.tiletable import tile_records
from slidemill.tile import TileConfig, run


@pytest.mark.parametrize("mpp", [0.37, 0.7, 1.3])  # 1.48, 2.8 and 5.2 level-0 px per tile pixel
def test_tiles_without_overlap_equal_crops_of_one_large_read(synthetic, tmp_path, mpp):
    out = tmp_path / "tiles"
    run(TileConfig(slide=synthetic, out=out, mpp=mpp, tile_size_px=64, overlap_px=0, all_tiles=True, workers=1))
    tileset = load_contract(out / "tileset.json", TileSet)
    slide = open_slide(synthetic)
    scale = tileset.mapping.scale
    cols = max(t.col for t in tile_records(out)) + 1
    rows = max(t.row for t in tile_records(out)) + 1
    big = slide.read_region(0, 0, cols * 64, rows * 64, scale)
    differing = 0
    for record in tile_records(out):
        image = cv2.cvtColor(cv2.imread(str(out / record.image), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
        crop = big[record.row * 64:(record.row + 1) * 64, record.col * 64:(record.col + 1) * 64]
        differing += int((image != crop).any(axis=2).sum())
    assert len(tile_records(out)) == rows * cols > 4
    assert differing == 0


@pytest.mark.parametrize("mpp", [0.25, 0.5, 0.37, 1.3])  # aligned with level 0, whole factor 2, 1.48, 5.2
def test_tiles_read_in_strips_equal_tiles_read_one_by_one(synthetic, synthetic_geojson, mpp):
    """A batch is read as one region per run of neighbouring tiles in a grid row, then cut: every tile
    equals the one read alone (overlap 16; every fourth tile left out, so gaps split the runs)."""
    from slidemill.tile import plan_tiles
    from slidemill.tile.render import render_batch

    plan = plan_tiles(synthetic, annotations=[synthetic_geojson], mpp=mpp, tile_size_px=96, overlap_px=16,
                      all_tiles=True)
    specs = [spec for i, spec in enumerate(plan.specs) if i % 4 != 3]
    assert len(specs) > 5
    slide = plan.renderer.open()
    reads = []
    slide.read_region = (lambda f: lambda *a, **k: reads.append(a) or f(*a, **k))(slide.read_region)
    batched = render_batch(plan.renderer, specs)
    strips = len(reads)
    del slide.read_region
    for spec, image, mask in batched:
        alone, alone_mask = plan.renderer.render(spec)
        assert image.flags.c_contiguous and image.shape == (96, 96, 3)
        assert np.array_equal(image, alone), spec
        assert np.array_equal(mask, alone_mask)
    if mpp in (0.37, 1.3):  # resampled: one region per run of neighbours, not per tile
        rows = len({spec.row for spec in specs})
        assert rows <= strips < len(specs)
