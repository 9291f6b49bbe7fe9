import gzip
import json

import pytest
import shapely
from shapely.geometry import Polygon, box, shape

from slidemill.shared.annotations import (
    geometry_dict,
    load_json,
    make_feature,
    read_annotation_file,
    read_annotation_set,
    shapes_from_geojson,
)
from slidemill.shared.contracts import save_contract
from slidemill.shared.errors import InputError
from slidemill.shared.testing import SAMPLES, example_shapes, qupath_geojson


@pytest.mark.parametrize("flavour", ["0.2", "0.3", "0.4"])
def test_reads_every_qupath_flavour(flavour):
    truth = example_shapes(1000, 800)
    result = shapes_from_geojson(qupath_geojson(truth, flavour=flavour))
    assert [s.class_name for s in result.shapes] == [s.class_name for s in truth]
    assert [s.color for s in result.shapes] == [s.color for s in truth]
    assert all(s.object_type == "annotation" for s in result.shapes)
    for got, want in zip(result.shapes, truth, strict=True):
        assert got.geometry.symmetric_difference(want.geometry).area < 1e-6


def test_string_classification_bare_geometry_and_gzip(tmp_path):
    data = [{"type": "Feature", "geometry": json.loads(shapely.to_geojson(box(0, 0, 10, 10))),
             "properties": {"classification": "Stroma", "measurements": {"a": 1, "b": "NaN"}}},
            json.loads(shapely.to_geojson(box(20, 20, 30, 30)))]
    path = tmp_path / "a.geojson.gz"
    path.write_bytes(gzip.compress(json.dumps(data).encode()))
    result = read_annotation_file(path)
    assert [s.class_name for s in result.shapes] == ["Stroma", None]
    assert result.shapes[0].measurements == {"a": 1.0}


def test_invalid_polygon_repaired_and_lines_skipped():
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}
    line = {"type": "LineString", "coordinates": [[0, 0], [5, 5]]}
    result = shapes_from_geojson({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": bowtie, "properties": {"objectType": "annotation"}},
        {"type": "Feature", "geometry": line, "properties": {}}]})
    assert result.repaired == 1 and result.skipped == 1
    assert result.shapes[0].geometry.is_valid
    assert result.shapes[0].geometry.area == pytest.approx(50)


def test_real_qupath_exports(handout):
    single = read_annotation_file(handout / "annotations" / "qupath-polygon.json")
    assert len(single.shapes) == 1 and single.shapes[0].object_type == "annotation"
    tcga = read_annotation_file(handout / "annotations" / "TCGA-EJ-5519-01Z-00-DX1.qupath.json")
    assert [s.class_name for s in tcga.shapes] == ["Tumor", "Other", "Negative"]
    assert tcga.shapes[0].color == (200, 0, 0)
    assert tcga.shapes[0].locked


def test_not_geojson(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("<xml/>")
    with pytest.raises(InputError, match="a.json: is not valid JSON"):
        load_json(path)
    path.write_text('{"hello": 1}')
    with pytest.raises(InputError, match="no GeoJSON features"):
        read_annotation_file(path)


def test_make_feature_is_what_qupath_accepts():
    # a polygon whose rounding to 0.01 would self-intersect
    tricky = Polygon([(0, 0), (10, 0), (10, 10), (5.001, 5.004), (5.004, 5.001), (0, 10)])
    feature = make_feature(tricky, "Tumor", mpp=0.5)
    geom = shape(feature.geometry.model_dump())
    assert geom.is_valid
    for ring in feature.geometry.coordinates:
        assert ring[0] == ring[-1] and len(ring) >= 4
        assert all(round(v, 2) == v for point in ring for v in point)
    assert feature.properties.classification.color == (200, 0, 0)
    assert feature.properties.measurements["Area µm^2"] == pytest.approx(geom.area * 0.25, rel=1e-6)
    again = make_feature(tricky, "Tumor", mpp=0.5)
    assert again.id == feature.id
    assert make_feature(tricky, "Stroma", mpp=0.5).id != feature.id


def test_geometry_dict_keeps_holes():
    poly = box(0, 0, 10, 10).difference(box(2, 2, 4, 4))
    assert len(geometry_dict(poly)["coordinates"]) == 2


def test_annotation_set_file_round_trip(tmp_path):
    path = save_contract(SAMPLES["annotations"](), tmp_path / "a.geojson", indent=None)
    loaded = read_annotation_set(path)
    assert loaded.features[0].properties.classification.name == "Tumor"
    # the contract file is also plain QuPath-flavoured GeoJSON
    assert read_annotation_file(path).shapes[0].class_name == "Tumor"


def test_every_container_bom_and_gzip_give_the_same_objects(tmp_path):
    feature = {"type": "Feature", "id": "0b9c1f0e-1111-4222-8333-444455556666",
               "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]},
               "properties": {"objectType": "detection", "name": "n", "color": [1, 2, 3], "isLocked": True,
                              "classification": {"names": ["Tumor", "Positive"], "color": [250, 62, 62]},
                              "measurements": {"m": 2}, "metadata": {"k": "v"}, "custom": [1, 2]}}
    texts = {"collection.geojson": {"type": "FeatureCollection", "features": [feature]},
             "array.json": [feature], "single.json": feature}
    shapes = []
    for name, data in texts.items():
        raw = json.dumps(data).encode()
        for variant, content in (("", raw), ("bom-", b"\xef\xbb\xbf" + raw), ("gz-", gzip.compress(raw))):
            path = tmp_path / f"{variant}{name}"
            path.write_bytes(content)
            (one,) = read_annotation_file(path).shapes
            shapes.append(one)
    for one in shapes:
        assert (one.class_name, one.class_names, one.color) == ("Tumor: Positive", ("Tumor", "Positive"), (250, 62, 62))
        assert (one.object_type, one.name, one.object_color, one.locked) == ("detection", "n", (1, 2, 3), True)
        assert one.id == feature["id"] and one.measurements == {"m": 2.0} and one.metadata == {"k": "v"}
        assert one.properties == {"custom": [1, 2]} and one.geometry.equals(box(0, 0, 10, 10))


def test_legacy_derived_classes_and_planes():
    legacy = {"name": "Positive", "colorRGB": -377282, "parentClass": {"name": "Tumor", "colorRGB": -3670016}}
    result = shapes_from_geojson({"type": "Feature", "properties": {"classification": legacy},
                                  "geometry": {"type": "Polygon", "plane": {"c": -1, "z": 3, "t": 0},
                                               "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 0]]]}})
    (one,) = result.shapes
    assert (one.class_name, one.class_names, one.color) == ("Tumor: Positive", ("Tumor", "Positive"), (250, 62, 62))
    assert one.plane == {"c": -1, "z": 3, "t": 0} and one.plane_key == (-1, 3, 0)


def test_connected_labels_group_exactly_the_connected_nodes():
    import numpy as np

    from slidemill.shared.shapes import connected_labels

    # 0-1-2 chained, 3 alone, 4-5 joined by an edge given once in each direction
    labels = connected_labels(6, np.array([0, 1, 4, 5]), np.array([1, 2, 5, 4]))
    assert labels[0] == labels[1] == labels[2]
    assert labels[4] == labels[5]
    assert len({labels[0], labels[3], labels[4]}) == 3
