"""run() and iter_tiles(): the same tiles, exact positions, padding, workers, determinism."""

import json

import cv2
import jsonschema
import numpy as np
import pytest

from slidemill.shared.contracts import TileSet, load_contract
from slidemill.shared.slide import open_slide
from slidemill.shared.tiletable import tile_records
from slidemill.tile import TileConfig, iter_tiles, plan_tiles, run

TILE = 256


@pytest.fixture(scope="module")
def written(tmp_path_factory, synthetic, synthetic_geojson):
    out = tmp_path_factory.mktemp("run") / "tiles-out"
    config = TileConfig(slide=synthetic, out=out, annotations=[synthetic_geojson], mpp=0.37, tile_size_px=TILE,
                        overlap_px=32, tissue_threshold=0.55, workers=1)
    result = run(config, argv=["slidemill-tile", "test"])
    return config, result, out


def test_output_folder_and_manifest(written, repo):
    config, result, out = written
    assert sorted(p.name for p in out.iterdir()) == ["masks", "preview.png", "report.json", "tiles", "tiles.jsonl",
                                                      "tileset.json", "tissue.png"]
    tileset = load_contract(out / "tileset.json", TileSet)
    schema = json.loads((repo / "schemas" / "tileset.schema.json").read_text())
    jsonschema.validate(json.loads((out / "tileset.json").read_text()), schema)
    assert len(tile_records(out)) == result.tiles_written > 0
    assert tileset.params.tile_size_px == TILE and tileset.params.overlap_px == 32
    assert tileset.params.tissue_threshold == 0.55 and tileset.params.mpp == 0.37
    assert tileset.mapping.scale == pytest.approx(0.37 / 0.25)
    assert tileset.slide.name == "synthetic.tiff" and tileset.slide.mpp == 0.25
    assert [c.name for c in tileset.classes.classes] == ["Immune cells", "Stroma", "Tissue", "Tumor", "Ignore*"]
    for record in tile_records(out):
        assert record.tissue_fraction >= 0.55
        assert (out / record.image).is_file() and (out / record.mask).is_file()
        assert record.image == f"tiles/r{record.row:05d}_c{record.col:05d}.png"
        stride = TILE - 32
        assert record.x == pytest.approx(record.col * stride * tileset.mapping.scale)
        assert record.width == pytest.approx(TILE * tileset.mapping.scale)
    # exactly the grid tiles with enough tissue were kept, and some were not
    every = plan_tiles(config.model_copy(update={"all_tiles": True}))
    enough = [(s.row, s.col) for s in every.specs if s.tissue_fraction >= 0.55]
    assert [(r.row, r.col) for r in tile_records(out)] == enough
    assert len(tile_records(out)) < tileset_grid(out) == len(every)
    tissue = cv2.imread(str(out / "tissue.png"), cv2.IMREAD_GRAYSCALE)
    assert set(np.unique(tissue)) <= {0, 255} and 0.3 < (tissue > 0).mean() < 0.95
    preview = cv2.imread(str(out / "preview.png"))
    assert preview is not None and preview.shape[2] == 3
    report = json.loads((out / "report.json").read_text())
    assert report["schema"] == "slidemill/report" and report["counts"]["tiles_written"] == len(tile_records(out))
    assert report["counts"]["annotations_used"] == 4 and report["counts"]["annotations_repaired"] == 0


def tileset_grid(out):
    report = json.loads((out / "report.json").read_text())
    return report["counts"]["grid_tiles"]


def test_iter_tiles_yields_exactly_what_was_written(written):
    config, result, out = written
    load_contract(out / "tileset.json", TileSet)  # the manifest validates
    tiles = list(iter_tiles(config))
    assert len(tiles) == len(tile_records(out))
    for tile, record in zip(tiles, tile_records(out), strict=True):
        assert (tile.row, tile.col, tile.x, tile.y) == (record.row, record.col, record.x, record.y)
        assert tile.tissue_fraction == record.tissue_fraction
        assert tile.class_fractions == record.class_fractions
        image = cv2.cvtColor(cv2.imread(str(out / record.image), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
        mask = cv2.imread(str(out / record.mask), cv2.IMREAD_UNCHANGED)
        assert np.array_equal(tile.image, image)  # PNG is lossless
        assert mask.dtype == np.uint8 and mask.ndim == 2
        assert np.array_equal(tile.mask, mask)
    assert not any(p.name.endswith(".partial") for p in out.parent.iterdir())


def test_workers_give_identical_files(written, tmp_path, monkeypatch):
    from slidemill.tile import api

    monkeypatch.setattr(api, "MIN_TILES_PER_WORKER", 1)
    config, result, out = written
    other = run(config.model_copy(update={"out": tmp_path / "two", "workers": 2}))
    assert other.tiles_written == result.tiles_written
    assert json.loads((tmp_path / "two" / "report.json").read_text())["counts"]["workers"] == 2
    assert (tmp_path / "two" / "tileset.json").read_bytes() == (out / "tileset.json").read_bytes()
    for sub in ("tiles", "masks"):
        names = sorted(p.name for p in (out / sub).iterdir())
        assert names == sorted(p.name for p in (tmp_path / "two" / sub).iterdir())
        for name in names:
            assert (out / sub / name).read_bytes() == (tmp_path / "two" / sub / name).read_bytes(), name
    # and iter_tiles over worker processes yields the same
    first = next(iter_tiles(config, workers=2))
    assert np.array_equal(first.image, cv2.cvtColor(cv2.imread(str(out / "tiles" / f"{first.spec.stem}.png")),
                                                    cv2.COLOR_BGR2RGB))


def test_tiles_map_back_to_the_slide_exactly(synthetic):
    """At the slide's own resolution a tile is the level-0 pixels at (x, y); at half resolution it is
    the stored level-1 pixels at (x / 2, y / 2); edge tiles are padded with white, never stretched."""
    slide = open_slide(synthetic)
    full = slide.read_level(0, 0, 0, slide.width, slide.height)
    tiles = list(iter_tiles(synthetic, mpp=0.25, tile_size_px=TILE, overlap_px=0, all_tiles=True))
    for tile in tiles:
        x, y = int(tile.x), int(tile.y)
        window = full[y:y + TILE, x:x + TILE]
        h, w = window.shape[:2]
        assert np.array_equal(tile.image[:h, :w], window)
        assert (tile.pad_right_px, tile.pad_bottom_px) == (TILE - w, TILE - h)
        assert np.all(tile.image[h:, :] == 255) and np.all(tile.image[:, w:] == 255)
        assert tile.mask is None and tile.class_fractions == {}
    half = next(t for t in iter_tiles(synthetic, mpp=0.5, tile_size_px=TILE, overlap_px=0, all_tiles=True)
                if t.row == 1 and t.col == 1)
    assert half.pad_bottom_px == 12  # the slide is 1000 px high: 512..1000 is 244 pixels at half size
    assert np.array_equal(half.image[:244], slide.read_level(1, 256, 256, TILE, 244))
    assert np.all(half.image[244:] == 255)


def test_plan_random_access_and_magnification(synthetic):
    plan = plan_tiles(synthetic, magnification=20, tile_size_px=TILE, overlap_px=0, all_tiles=True)
    assert plan.scale == pytest.approx(2.0)  # 20x = 0.5 um/px on a 0.25 um/px slide
    assert len(plan) == plan.grid_cols * plan.grid_rows == 3 * 2
    tile = plan.tile(len(plan) - 1)
    assert tile.image.shape == (TILE, TILE, 3)


def test_annotated_only(synthetic, tmp_path):
    from shapely.geometry import box

    from slidemill.shared.testing import SyntheticShape, qupath_geojson

    ann = tmp_path / "a.geojson"
    ann.write_text(json.dumps(qupath_geojson([SyntheticShape("Tumor", box(300, 300, 340, 340), (0, 0, 0))])))
    tiles = list(iter_tiles(synthetic, annotations=[ann], mpp=0.25, tile_size_px=TILE, overlap_px=0,
                            all_tiles=True, annotated_only=True))
    assert [(t.row, t.col) for t in tiles] == [(1, 1)]


def test_run_is_deterministic(written, tmp_path):
    config, _, out = written
    run(config.model_copy(update={"out": tmp_path / "again"}))
    assert (tmp_path / "again" / "tileset.json").read_bytes() == (out / "tileset.json").read_bytes()
    assert (tmp_path / "again" / "preview.png").read_bytes() == (out / "preview.png").read_bytes()


def test_report_counts_repaired_and_skipped_annotations(synthetic, tmp_path):
    def feature(coords, name, object_type="annotation"):
        return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [coords]},
                "properties": {"objectType": object_type, "classification": {"name": name, "color": [200, 0, 0]}}}

    bowtie = [[100, 100], [300, 300], [300, 100], [100, 300], [100, 100]]
    square = [[400, 400], [500, 400], [500, 500], [400, 500], [400, 400]]
    far = [[9000, 9000], [9100, 9000], [9100, 9100], [9000, 9000]]
    ann = tmp_path / "a.geojson"
    ann.write_text(json.dumps({"type": "FeatureCollection", "features": [
        feature(bowtie, "Tumor"), feature(square, "Stroma", "detection"), feature(far, "Tumor"),
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {}}]}))
    result = run(TileConfig(slide=synthetic, out=tmp_path / "out", annotations=[ann], tile_size_px=256,
                            overlap_px=0, all_tiles=True, mpp=0.25, workers=1))
    counts = json.loads((tmp_path / "out" / "report.json").read_text())["counts"]
    assert counts["annotations_repaired"] == 1 and counts["annotations_skipped"] == 1  # the point
    assert counts["annotations_used"] == 1 and counts["annotations_outside_slide"] == 1
    assert any("detection" in w for w in result.warnings) and any("repaired" in w for w in result.warnings)
    tileset = load_contract(tmp_path / "out" / "tileset.json", TileSet)
    assert [c.name for c in tileset.classes.classes] == ["Tumor", "Ignore*"]  # the detection's class is not used
    # the repaired bow-tie keeps both triangles: 2 x (200 x 100 / 2) pixels over all tiles
    tumour_px = sum(t.class_fractions.get("Tumor", 0) * 256**2 for t in tile_records(tmp_path / "out"))
    assert tumour_px == pytest.approx(20000, rel=0.01)


def test_plan_pickles_for_dataloader_workers(synthetic, synthetic_geojson):
    """A PyTorch DataLoader with spawned workers pickles the dataset: the plan travels without its open
    slide and reopens it on first use, giving the same tiles."""
    import pickle

    plan = plan_tiles(synthetic, annotations=[synthetic_geojson], mpp=0.5, tile_size_px=128, overlap_px=0)
    clone = pickle.loads(pickle.dumps(plan))
    assert clone.renderer._slide is None and len(clone) == len(plan) > 0
    a, b = plan.tile(len(plan) - 1), clone.tile(len(plan) - 1)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert a.class_fractions == b.class_fractions


def test_an_all_tissue_image_keeps_its_edge_tiles(tmp_path):
    """Padding past the slide is neither tissue nor glass: the partial edge tiles of an image that is
    all tissue pass the default threshold (44 of 128 px inside would fail it if padding counted)."""
    from PIL import Image

    path = tmp_path / "all-tissue.png"
    Image.fromarray(np.full((200, 300, 3), (200, 100, 150), np.uint8)).save(path)
    plan = plan_tiles(TileConfig(slide=path, slide_mpp=0.5, mpp=0.5, tile_size_px=128, overlap_px=0))
    assert [(s.row, s.col) for s in plan.specs] == [(r, c) for r in range(2) for c in range(3)]
    assert all(s.tissue_fraction == 1.0 for s in plan.specs)
