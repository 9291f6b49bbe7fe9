import json

import pytest

from slidemill.shared.classes import IGNORE_LABEL, ClassEntry, ClassTable, argb_int_to_rgb, rgb_to_argb_int
from slidemill.shared.contracts import (
    CONTRACTS,
    AnnotationSet,
    ModelCard,
    Prediction,
    TileSet,
    dump_contract,
    load_contract,
    parse_contract,
    save_contract,
)
from slidemill.shared.errors import ContractError, MissingInputError
from slidemill.shared.testing import SAMPLES


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_round_trip(kind, tmp_path):
    sample = SAMPLES[kind]()
    path = save_contract(sample, tmp_path / f"{kind}.json")
    loaded = load_contract(path, CONTRACTS[kind])
    assert loaded == sample
    data = json.loads(path.read_text())
    assert data["schema"] == f"slidemill/{kind}"
    assert data["schema_version"] == CONTRACTS[kind].VERSION
    assert dump_contract(loaded) == path.read_text()


def _tileset_dict():
    return json.loads(dump_contract(SAMPLES["tileset"]()))


def test_minor_version_accepted_major_refused():
    data = _tileset_dict()
    data["schema_version"] = "1.7"
    assert parse_contract(json.dumps(data), TileSet).schema_version == "1.7"
    data["schema_version"] = "2.0"
    with pytest.raises(ContractError, match=r"schema_version 2.0 is not supported.*version 1.x"):
        parse_contract(json.dumps(data), TileSet, path="x/tileset.json")


def test_a_1_0_tileset_and_prediction_still_read():
    """Written before pixel meaning, resolution sources and tissue modes were recorded."""
    data = _tileset_dict()
    data["schema_version"] = "1.0"
    data["slide"] = {k: v for k, v in data["slide"].items() if k not in ("pixels", "series")} | {"mpp_source": "file"}
    data["params"].pop("tissue_mode", None)
    old = parse_contract(json.dumps(data), TileSet)
    assert old.slide.pixels is None and old.params.tissue_mode is None and old.slide.mpp_source == "file"
    prediction = json.loads(dump_contract(SAMPLES["prediction"]()))
    prediction["schema_version"] = "1.0"
    prediction["slide"].pop("pixels", None)
    assert parse_contract(json.dumps(prediction), Prediction).slide.pixels is None


def test_wrong_kind_is_named():
    data = _tileset_dict()
    with pytest.raises(ContractError, match="'slidemill/tileset' file, but a 'slidemill/model' file is expected"):
        parse_contract(json.dumps(data), ModelCard)


def test_missing_field_is_named():
    data = _tileset_dict()
    del data["slide"]
    with pytest.raises(ContractError, match="slide: Field required"):
        parse_contract(json.dumps(data), TileSet, path="tileset.json")


def test_not_a_contract_and_invalid_json(tmp_path):
    with pytest.raises(ContractError, match="no 'schema' member"):
        parse_contract("{}", TileSet)
    bad = tmp_path / "t.json"
    bad.write_text('{"schema": "slidemill/tileset", ')
    with pytest.raises(ContractError, match=r"t.json: is not valid JSON"):
        load_contract(bad, TileSet)
    with pytest.raises(MissingInputError, match="does not exist"):
        load_contract(tmp_path / "nope.json", TileSet)


@pytest.mark.parametrize("path", ["/abs/tile.png", "../outside.png", "tiles/../../x.png", "C:/x.png", "a\\b.png"])
def test_manifest_paths_must_stay_inside(path):
    data = _tileset_dict()
    data["tiles"][0]["image"] = path
    with pytest.raises(ContractError, match="tiles.0.image"):
        parse_contract(json.dumps(data), TileSet)


def _table(*entries):
    return ClassTable(classes=[ClassEntry(name=n, label=v, color=(1, 2, 3), ignore=i) for n, v, i in entries])


def test_class_table_rules():
    with pytest.raises(ValueError, match="labels appear twice"):
        _table(("A", 0, False), ("B", 0, False))
    with pytest.raises(ValueError, match="names appear twice"):
        _table(("A", 0, False), ("A", 1, False))
    with pytest.raises(ValueError, match="without gaps"):
        _table(("A", 0, False), ("B", 2, False))
    with pytest.raises(ValueError, match="ignore class must have label 255"):
        _table(("A", 0, False), ("Ignore*", 1, True))
    table = ClassTable.from_names(["Tumor", "Ignore*", "Stroma", "Tumor", "Mystery"])
    assert [(c.name, c.label) for c in table.classes] == [("Tumor", 0), ("Stroma", 1), ("Mystery", 2), ("Ignore*", 255)]
    assert table.by_name("Tumor").color == (200, 0, 0)
    assert table.by_name("unlabelled").label == IGNORE_LABEL
    assert table.num_trainable == 3


def test_class_table_duplicate_labels_refused_in_a_file():
    data = _tileset_dict()
    data["classes"]["classes"][1]["label"] = 0
    with pytest.raises(ContractError, match="labels appear twice"):
        parse_contract(json.dumps(data), TileSet)


@pytest.mark.parametrize("rgb,argb", [((200, 0, 0), -3670016), ((150, 200, 150), -6895466), ((255, 200, 0), -14336),
                                      ((0, 0, 180), -16777036), ((180, 180, 180), -4934476)])
def test_qupath_colour_ints(rgb, argb):
    assert rgb_to_argb_int(rgb) == argb
    assert argb_int_to_rgb(argb) == rgb


def test_annotation_rings_must_be_closed():
    data = json.loads(dump_contract(SAMPLES["annotations"]()))
    data["features"][0]["geometry"]["coordinates"][0][-1] = [0, 0]
    with pytest.raises(ContractError, match="not closed"):
        parse_contract(json.dumps(data), AnnotationSet)
    data["features"][0]["geometry"] = {"type": "GeometryCollection", "geometries": []}
    with pytest.raises(ContractError):
        parse_contract(json.dumps(data), AnnotationSet)


def test_large_tileset_loads_fast(tmp_path):
    import time

    sample = SAMPLES["tileset"]()
    tile = sample.tiles[0]
    tiles = [tile.model_copy(update={"index": i, "col": i % 400, "row": i // 400}) for i in range(100_000)]
    big = sample.model_copy(update={"tiles": tiles})
    path = save_contract(big, tmp_path / "tileset.json", indent=None)
    t0 = time.perf_counter()
    loaded = load_contract(path, TileSet)
    elapsed = time.perf_counter() - t0
    assert len(loaded.tiles) == 100_000
    assert elapsed < 10, f"loading 100,000 tiles took {elapsed:.1f}s"


def test_model_card_1_0_still_reads_and_1_1_adds_honest_metrics():
    """A card written before 1.1 (no pixel counts, flags, confusion matrix, warnings) reads with the new
    fields at their 'unknown' defaults; a new card says 1.1."""
    from slidemill.shared.contracts import ModelCard, parse_contract

    data = json.loads(dump_contract(SAMPLES["model"]()))
    assert data["schema_version"] == "1.2"
    old = {k: v for k, v in data.items() if k not in ("confusion_matrix", "majority_baseline_mean_iou", "warnings",
                                                       "reproducibility")}
    old["schema_version"] = "1.0"
    old["metrics"] = {name: {"dice": m["dice"], "iou": m["iou"]} for name, m in data["metrics"].items()}
    card = parse_contract(json.dumps(old), ModelCard)
    assert card.schema_version == "1.0" and card.confusion_matrix is None and card.warnings == []
    for m in card.metrics.values():
        assert m.val_pixels is None and m.train_pixels is None and not m.no_validation_pixels
