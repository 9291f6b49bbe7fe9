"""The GeoJSON to-qupath writes: every QUPATH.md rule, determinism, round trips, real exports, 100k features."""

import json
import time
import tracemalloc
import uuid

import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon, shape
from to_qupath_helpers import ours, plain, polygon_feature, square

from slidemill.shared.annotations import (
    AnnotationShape,
    feature_id,
    feature_lines,
    geometry_dict,
    load_json,
    read_annotation_file,
    read_annotation_set,
    write_feature_collection,
)
from slidemill.shared.contracts import AnnotationSet, Report, load_contract
from slidemill.shared.testing import example_shapes, qupath_geojson
from slidemill.to_qupath import ToQuPathConfig, feature_problems, file_problems, run
from slidemill.to_qupath.rules import features_problems


def convert(tmp_path, *inputs, name="out", **options):
    out = tmp_path / name
    result = run(ToQuPathConfig(annotations=list(inputs), out_dir=out, **options))
    return out, result


def features_of(path):
    """The output's features as JSON (gzip or not: the shared reader's loader)."""
    return load_json(path)["features"]


def iou(a, b) -> float:
    return a.intersection(b).area / a.union(b).area


# --- every feature is what QuPath imports ---------------------------------------------------


def test_every_feature_follows_qupaths_rules(tmp_path):
    out, result = convert(tmp_path, ours(tmp_path / "pred.geojson"))
    path = out / "slide-a.geojson"
    assert [s.path for s in result.slides] == [path]
    assert file_problems(path) == []
    features = features_of(path)
    assert len(features) == 4
    for feature in features:
        assert uuid.UUID(feature["id"])
        props = feature["properties"]
        assert props["objectType"] == "annotation"
        assert set(props["classification"]) == {"name", "color"}
        assert all(isinstance(c, int) for c in props["classification"]["color"])
        assert all(isinstance(v, int | float) for v in props["measurements"].values())
        assert "Area µm^2" in props["measurements"]
        assert feature["geometry"]["type"] in {"Polygon", "MultiPolygon"}
    # pure ASCII (QuPath 0.4 reads with the platform charset), one feature per line
    assert path.read_bytes().decode("ascii").count("\n") == len(features) + 2
    # the file is also a slidemill annotations file naming its slide
    assert read_annotation_set(path).slide.name == "slide-a.svs"
    report = load_contract(out / "report.json", Report)
    assert report.counts["features_written"] == 4 and report.status == "ok"


def test_ids_are_the_shared_feature_id_of_the_written_content(tmp_path):
    out, _ = convert(tmp_path, ours(tmp_path / "pred.geojson"))
    for feature in features_of(out / "slide-a.geojson"):
        geom = shape(feature["geometry"])
        props = feature["properties"]
        assert feature["id"] == feature_id(geometry_dict(geom), props["classification"]["name"], props["objectType"])


def test_same_input_gives_byte_identical_output(tmp_path):
    source = plain(tmp_path / "a.geojson", [
        polygon_feature(square(0.123456, 7.891011, 33.3333), {"classification": {"name": "Tumor"}}),
        polygon_feature(square(100, 100), {"classification": "Stroma", "measurements": {"x": 1}})])
    for gz in (False, True):
        first, _ = convert(tmp_path, source, name=f"one-{gz}", gzip=gz)
        second, _ = convert(tmp_path, source, name=f"two-{gz}", gzip=gz)
        suffix = ".geojson.gz" if gz else ".geojson"
        assert (first / f"a{suffix}").read_bytes() == (second / f"a{suffix}").read_bytes()


def test_duplicate_shapes_get_distinct_ids(tmp_path):
    same = polygon_feature(square(), {"classification": {"name": "Tumor", "color": [200, 0, 0]}})
    out, result = convert(tmp_path, plain(tmp_path / "a.geojson", [same, same, same]))
    ids = [f["id"] for f in features_of(out / "a.geojson")]
    assert len(set(ids)) == 3
    assert file_problems(out / "a.geojson") == []


# --- one test per failure rule of QUPATH.md: the input has it, the output never does --------


def _convert_one(tmp_path, feature):
    assert feature_problems({**feature, "id": str(uuid.uuid4())}), "the test input should break a QuPath rule"
    out, _ = convert(tmp_path, plain(tmp_path / "a.geojson", [feature]))
    assert file_problems(out / "a.geojson") == []
    (written,) = features_of(out / "a.geojson")
    return written


def test_classification_without_colour_gets_the_class_tables_colour(tmp_path):
    written = _convert_one(tmp_path, polygon_feature(square(), {"classification": {"name": "Tumor"}}))
    assert written["properties"]["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
    (tmp_path / "x").mkdir()
    other = _convert_one(tmp_path / "x", polygon_feature(square(), {"classification": {"name": "Gland"}}))
    assert other["properties"]["classification"]["name"] == "Gland"
    assert len(other["properties"]["classification"]["color"]) == 3


def test_integer_class_colour_becomes_rgb(tmp_path):
    feature = polygon_feature(square(), {"classification": {"name": "Stroma", "color": -6895466}})
    written = _convert_one(tmp_path, feature)
    assert written["properties"]["classification"] == {"name": "Stroma", "color": [150, 200, 150]}


def test_open_ring_is_closed(tmp_path):
    ring = [[0, 0], [10, 0], [10, 10], [0, 10]]
    written = _convert_one(tmp_path, polygon_feature([ring], {"classification": "Tumor"}))
    (out_ring,) = written["geometry"]["coordinates"]
    assert out_ring[0] == out_ring[-1] and len(out_ring) == 5
    assert shape(written["geometry"]).area == pytest.approx(100)


def test_invalid_polygon_is_made_valid(tmp_path):
    bowtie = [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]
    written = _convert_one(tmp_path, polygon_feature(bowtie, {"classification": "Tumor"}))
    geom = shape(written["geometry"])
    assert geom.is_valid and geom.area == pytest.approx(50)


def test_polygon_that_rounding_would_make_invalid_stays_valid(tmp_path):
    # valid as given, but self-intersecting once rounded to QuPath 0.6's 0.01 px grid
    tricky = Polygon([(0, 0), (10, 0), (10, 1), (5, 0.004), (0, 1)])
    assert tricky.is_valid and not shapely.set_precision(tricky, 0.01, mode="pointwise").is_valid
    feature = polygon_feature(json.loads(shapely.to_geojson(tricky))["coordinates"], {"classification": "Tumor"})
    out, result = convert(tmp_path, plain(tmp_path / "a.geojson", [feature]))
    assert file_problems(out / "a.geojson") == []
    assert load_contract(out / "report.json", Report).counts["features_resnapped"] == 1


def test_geometry_collection_becomes_its_polygonal_part(tmp_path):
    collection = {"type": "GeometryCollection", "geometries": [
        {"type": "Polygon", "coordinates": square(0, 0, 10)},
        {"type": "LineString", "coordinates": [[0, 0], [50, 50]]},
        {"type": "Polygon", "coordinates": square(20, 0, 10)}]}
    feature = {"type": "Feature", "geometry": collection,
               "properties": {"objectType": "annotation", "classification": "Tumor"}}
    written = _convert_one(tmp_path, feature)
    assert written["geometry"]["type"] == "MultiPolygon"
    assert shape(written["geometry"]).area == pytest.approx(200)


def test_string_measurements_are_dropped(tmp_path):
    feature = polygon_feature(square(), {"classification": "Tumor",
                                         "measurements": {"Ki67 %": "NaN", "Name": "x", "Count": 3}})
    written = _convert_one(tmp_path, feature)
    measurements = written["properties"]["measurements"]
    assert measurements["Count"] == 3
    assert "Ki67 %" not in measurements and "Name" not in measurements


def test_more_than_two_decimals_are_rounded(tmp_path):
    written = _convert_one(tmp_path, polygon_feature(square(0.123456, 0.987654, 10.00049), {"classification": "Tumor"}))
    for x, y in written["geometry"]["coordinates"][0]:
        assert round(x, 2) == x and round(y, 2) == y


def test_z_coordinates_are_dropped(tmp_path):
    ring = [[0, 0, 5], [10, 0, 5], [10, 10, 5], [0, 10, 5], [0, 0, 5]]
    written = _convert_one(tmp_path, polygon_feature([ring], {"classification": "Tumor", "measurements": "x"}))
    assert all(len(p) == 2 for p in written["geometry"]["coordinates"][0])


def test_the_checker_catches_every_rule():
    good = {"type": "Feature", "id": str(uuid.uuid4()),
            "geometry": {"type": "Polygon", "coordinates": square()},
            "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]},
                           "measurements": {"a": 1.5}}}
    assert feature_problems(good) == []

    def broken(**changes):
        feature = json.loads(json.dumps(good))
        for key, value in changes.items():
            target = feature["properties"] if key in {"classification", "measurements", "objectType"} else feature
            target[key] = value
        return " ".join(feature_problems(feature))

    assert "no colour" in broken(classification={"name": "Tumor"})
    assert "one integer" in broken(classification={"name": "Tumor", "color": -3670016})
    assert "not closed" in broken(geometry={"type": "Polygon", "coordinates": [square()[0][:-1]]})
    assert "at least 4" in broken(geometry={"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [0, 0]]]})
    assert "invalid polygon" in broken(geometry={"type": "Polygon", "coordinates": [
        [[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]})
    assert "GeometryCollection" in broken(geometry={"type": "GeometryCollection", "geometries": []})
    assert "not finite numbers" in broken(measurements={"a": "NaN"})
    assert "more than 2 decimals" in broken(geometry={"type": "Polygon", "coordinates": square(0.001)})
    assert "not a UUID" in broken(id="PathAnnotationObject")
    assert "objectType" in broken(objectType="PathAnnotationObject")


# --- reading goes both ways ---------------------------------------------------------------


def test_round_trip_ours_to_qupath_to_ours_keeps_every_shape_and_class(tmp_path):
    source = ours(tmp_path / "pred.geojson")
    before = read_annotation_set(source)
    out, _ = convert(tmp_path, source)
    after_contract = read_annotation_set(out / "slide-a.geojson")  # the annotations contract reader
    after_qupath = read_annotation_file(out / "slide-a.geojson").shapes  # the QuPath-flavour reader
    assert len(before.features) == len(after_contract.features) == len(after_qupath) == 4
    for want, got, got_qupath in zip(before.features, after_contract.features, after_qupath, strict=True):
        a, b = shape(want.geometry.model_dump()), shape(got.geometry.model_dump())
        assert iou(a, b) == 1.0 and iou(a, got_qupath.geometry) == 1.0
        assert want.properties.classification == got.properties.classification
        assert got_qupath.class_name == want.properties.classification.name
        assert list(got_qupath.color) == list(want.properties.classification.color)
    # and once more through the tool: a fixed point
    again, _ = convert(tmp_path, out / "slide-a.geojson", name="again")
    assert features_of(again / "slide-a.geojson") == features_of(out / "slide-a.geojson")


@pytest.mark.parametrize("flavour", ["0.2", "0.3", "0.4"])
def test_every_qupath_flavour_converts(tmp_path, flavour):
    truth = example_shapes(3000, 2000)
    source = tmp_path / f"export-{flavour}.json"
    source.write_text(json.dumps(qupath_geojson(truth, flavour=flavour)))
    out, _ = convert(tmp_path, source)
    path = out / f"export-{flavour}.geojson"
    assert file_problems(path) == []
    back = read_annotation_file(path).shapes
    assert [s.class_name for s in back] == [t.class_name for t in truth]
    assert [s.color for s in back] == [t.color for t in truth]
    for got, want in zip(back, truth, strict=True):
        assert iou(got.geometry, want.geometry) > 0.9999  # only rounded to 0.01 px


def test_every_real_export_in_the_handout(tmp_path, handout):
    folder = handout / "annotations"
    files = sorted(folder.iterdir())
    assert len(files) == 4
    for source in files:
        expected = read_annotation_file(source).shapes
        out, result = convert(tmp_path, source, name=source.name)
        (slide_output,) = result.slides
        assert file_problems(slide_output.path) == [], source.name
        back = read_annotation_file(slide_output.path).shapes
        assert len(back) == len(expected) > 0
        assert [s.class_name for s in back] == [s.class_name for s in expected]
        for got, want in zip(back, expected, strict=True):
            assert iou(got.geometry, want.geometry) > 0.999
    tcga_out = tmp_path / "TCGA-EJ-5519-01Z-00-DX1.qupath.json"
    tcga = read_annotation_file(tcga_out / "TCGA-EJ-5519-01Z-00-DX1.qupath.geojson")
    assert [s.class_name for s in tcga.shapes] == ["Tumor", "Other", "Negative"]
    assert tcga.shapes[0].locked  # QuPath's lock survives


# --- options ------------------------------------------------------------------------------


def test_object_type_and_lock(tmp_path):
    source = ours(tmp_path / "pred.geojson")
    out, _ = convert(tmp_path, source, name="det", object_type="detection", lock=True)
    features = features_of(out / "slide-a.geojson")
    assert {f["properties"]["objectType"] for f in features} == {"detection"}
    assert not any("isLocked" in f["properties"] for f in features)  # QuPath locks only annotations
    out, _ = convert(tmp_path, source, name="ann", lock=True)
    assert all(f["properties"]["isLocked"] is True for f in features_of(out / "slide-a.geojson"))


# --- large outputs --------------------------------------------------------------------------


def _records(n):
    squares = shapely.box(np.arange(n) % 1000 * 20.0, np.arange(n) // 1000 * 20.0,
                          np.arange(n) % 1000 * 20.0 + 10.5, np.arange(n) // 1000 * 20.0 + 10.25)
    return (AnnotationShape(geometry=g, class_name="Tumor", object_type="detection") for g in squares)


def test_100k_features_are_written_in_seconds_and_validate(tmp_path):
    n = 100_000
    t0 = time.perf_counter()
    path = write_feature_collection(
        tmp_path / "big.geojson", feature_lines(_records(n), colors={"Tumor": (200, 0, 0)}, mpp=0.25),
        header={"schema": "slidemill/annotations", "schema_version": "1.0"})
    seconds = time.perf_counter() - t0
    # generous: about 3 s on a quiet 2-core machine
    assert seconds < 30, seconds
    data = json.loads(path.read_bytes())
    written = AnnotationSet.model_validate(data)  # the annotations contract accepts it
    assert len(written.features) == n
    assert len({f.id for f in written.features}) == n
    assert all(not p for p in features_problems(data["features"]))  # QuPath's rules hold for every feature
    first = written.features[0].properties
    assert first.measurements["Area µm^2"] == pytest.approx(10.5 * 10.25 * 0.0625, abs=1e-3)
    assert first.classification.name == "Tumor" and first.objectType == "detection"


def test_the_whole_tool_handles_many_features(tmp_path):
    source = tmp_path / "many.geojson"
    write_feature_collection(source, feature_lines(_records(5000), colors={"Tumor": (200, 0, 0)}),
                             header={"schema": "slidemill/annotations", "schema_version": "1.0",
                                     "slide": {"name": "many.svs", "width": 100000, "height": 100000}})
    out, result = convert(tmp_path, source)
    assert result.slides[0].features == 5000
    assert file_problems(out / "many.geojson") == []
    # the tool is a fixed point on its own output
    assert features_of(out / "many.geojson") == features_of(source)


def test_writing_is_streamed_not_built_in_memory(tmp_path):
    consumed = 0

    def records(n):
        nonlocal consumed
        for record in _records(n):
            consumed += 1
            yield record

    lines = feature_lines(records(100_000), colors={})
    next(lines)
    assert consumed <= 5000  # one batch is read, not the whole input

    n = 100_000
    text = ('{"type":"Feature","id":"00000000-0000-4000-8000-%012d","geometry":{"type":"Polygon",'
            '"coordinates":[[[0,0],[1,0],[1,1],[0,0]]]},"properties":{"objectType":"annotation"}}')
    tracemalloc.start()
    try:
        path = write_feature_collection(tmp_path / "a.geojson", (text % i for i in range(n)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = path.stat().st_size
    assert peak < size / 5, (peak, size)  # bounded by one batch of lines, not by the file
    assert len(features_of(path)) == n
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed into place


def test_odd_names_and_object_types_are_made_qupath_safe(tmp_path):
    feature = polygon_feature(square(), {"classification": {"name": 7, "color": [1, 2, 3]}, "name": 42,
                                         "objectType": "region"})
    written = _convert_one(tmp_path, feature)
    assert written["properties"]["objectType"] == "annotation"
    assert written["properties"]["classification"]["name"] == "7" and written["properties"]["name"] == "42"
