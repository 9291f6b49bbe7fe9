"""merge-annotations: same-class shapes merged (gap closing), shards stitched, classes and slides kept apart."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
from shapely.geometry import Point, Polygon, box, mapping

from slidemill.merge_annotations import MergeConfig, run
from slidemill.shared.annotations import read_annotation_file, read_annotation_set, write_annotations
from slidemill.shared.contracts import AnnotationSet, Provenance, Report, SlideRef, load_contract, save_contract
from slidemill.shared.shapes import annotation_objects
from slidemill.shared.testing import qupath_geojson, sample_classes

BIN = Path(sys.executable).parent / "slidemill-merge-annotations"
REPO = Path(__file__).resolve().parents[2]
SLIDE = SlideRef(name="slide.tiff", width=5000, height=4000, mpp=0.5)


def cli(*args):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, timeout=120)


def write_set(path, polys_by_class, slide=SLIDE, mpp=0.5):
    classes = sample_classes()
    write_annotations(path, annotation_objects(polys_by_class, classes=classes), classes=classes, mpp=mpp,
                      slide=slide, provenance=Provenance(tool="test", version="0"))
    return path


def geoms(path, cls=None):
    """The output's shapes, read by the one reader the tools use."""
    return [s.geometry for s in read_annotation_file(path).shapes if cls is None or s.class_name == cls]


def test_adjacent_tiles_merge_into_exactly_the_whole_region(tmp_path):
    region = box(100, 100, 300, 180).union(box(150, 180, 260, 400)).difference(box(180, 120, 220, 160))
    left, right = region.intersection(box(0, 0, 200, 1000)), region.intersection(box(200, 0, 1000, 1000))
    a = write_set(tmp_path / "a.geojson", {"Tumor": [left]})
    b = write_set(tmp_path / "b.geojson", {"Tumor": [right]})
    whole = write_set(tmp_path / "whole.geojson", {"Tumor": [region]})
    result = run(MergeConfig(inputs=[a, b], out=tmp_path / "m.geojson"))
    assert result.features == 1
    (merged,) = geoms(result.out)
    assert merged.equals(region) and len(merged.interiors) == 1
    # and the feature is the very one written for the whole region (same coordinates, same id)
    assert json.loads(result.out.read_text())["features"] == json.loads(whole.read_text())["features"]


def test_gap_closing_merges_only_within_the_gap(tmp_path):
    a = write_set(tmp_path / "a.geojson", {"Tumor": [box(0, 0, 100, 100), box(110, 0, 210, 100)],
                                           "Stroma": [box(300, 0, 400, 100)]})
    near = run(MergeConfig(inputs=[a], out=tmp_path / "near.geojson", max_gap_um=5))  # 10 px at 0.5 µm/px
    assert near.features_per_class == {"Stroma": 1, "Tumor": 1}
    (tumor,) = geoms(near.out, "Tumor")
    # the originals are kept whole and the gap is bridged (a disc closing: only its ends are rounded in)
    assert tumor.covers(box(0, 0, 100, 100)) and tumor.covers(box(110, 0, 210, 100))
    assert tumor.covers(box(100, 6, 110, 94)) and tumor.area < 210 * 100
    far = run(MergeConfig(inputs=[a], out=tmp_path / "far.geojson", max_gap_um=4.9))
    assert far.features_per_class == {"Stroma": 1, "Tumor": 2}
    exact = run(MergeConfig(inputs=[a], out=tmp_path / "px.geojson", max_gap_px=10))
    assert exact.features_per_class["Tumor"] == 1


def test_different_classes_never_merge_and_overlaps_count_once(tmp_path):
    a = write_set(tmp_path / "a.geojson", {"Tumor": [box(0, 0, 100, 100)], "Stroma": [box(50, 0, 150, 100)]})
    b = write_set(tmp_path / "b.geojson", {"Tumor": [box(60, 0, 160, 100)], "Stroma": [box(140, 0, 240, 100)]})
    result = run(MergeConfig(inputs=[a, b], out=tmp_path / "m.geojson", max_gap_um=50))
    assert result.features_per_class == {"Stroma": 1, "Tumor": 1}
    (tumor,), (stroma,) = geoms(result.out, "Tumor"), geoms(result.out, "Stroma")
    assert tumor.equals(box(0, 0, 160, 100)) and stroma.equals(box(50, 0, 240, 100))
    aset = read_annotation_set(result.out)
    areas = {f.properties.classification.name: f.properties.measurements["Area µm^2"] for f in aset.features}
    assert areas == {"Tumor": pytest.approx(160 * 100 * 0.25), "Stroma": pytest.approx(190 * 100 * 0.25)}


def test_classes_filter_min_area_and_unclassified(tmp_path):
    data = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": mapping(box(0, 0, 10, 10)), "properties": {}},
        {"type": "Feature", "geometry": mapping(box(10, 0, 20, 10)), "properties": {}},
        {"type": "Feature", "geometry": mapping(box(100, 0, 300, 200)),
         "properties": {"classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        {"type": "Feature", "geometry": mapping(box(400, 0, 402, 2)),
         "properties": {"classification": {"name": "Tumor", "color": [200, 0, 0]}}},
    ]}
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(data))
    both = run(MergeConfig(inputs=[path], out=tmp_path / "all.geojson", slide_mpp=0.5, min_area_um2=2))
    assert both.features_per_class == {"Tumor": 1, "unclassified": 1}
    (unclassified,) = [g for g in geoms(both.out) if g.area == 200]
    assert unclassified.equals(box(0, 0, 20, 10))
    only = run(MergeConfig(inputs=[path], out=tmp_path / "t.geojson", classes=["Tumor"]))
    assert only.features_per_class == {"Tumor": 2}
    assert read_annotation_set(only.out).mpp is None  # no resolution known: measured in pixels
    assert "Area px^2" in read_annotation_set(only.out).features[0].properties.measurements


def test_qupath_02_exports_and_invalid_geometries_are_repaired_or_skipped(tmp_path):
    from slidemill.shared.testing import example_shapes

    old = tmp_path / "old.geojson"
    old.write_text(json.dumps(qupath_geojson(example_shapes(1000, 800), flavour="0.2")))
    bowtie = Polygon([(0, 0), (100, 100), (100, 0), (0, 100), (0, 0)])
    bad = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": mapping(bowtie), "properties": {"classification": "Tumor"}},
        {"type": "Feature", "geometry": mapping(Point(5, 5)), "properties": {"classification": "Tumor"}},
        {"type": "Feature", "geometry": {"type": "LineString", "coordinates": [[0, 0], [1, 1]]}, "properties": {}},
    ]}
    messy = tmp_path / "messy.geojson"
    messy.write_text(json.dumps(bad))
    result = run(MergeConfig(inputs=[old, messy], out=tmp_path / "m.geojson"))
    assert result.repaired == 1 and result.skipped == 2
    report = load_contract(result.report, Report)
    assert report.counts["shapes_repaired"] == 1 and report.counts["features_skipped"] == 2
    assert any("skipped" in w for w in report.warnings)
    for g in geoms(result.out):
        assert g.is_valid and g.geom_type in {"Polygon", "MultiPolygon"}
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((REPO / "schemas" / "annotations.schema.json").read_text())
    jsonschema.validate(json.loads(result.out.read_text()), schema)


@pytest.mark.parametrize("size", [64, 70])  # tiles that share edges (a coverage), and overlapping tiles
def test_many_tiles_merge_like_a_plain_union(tmp_path, size):
    rng = np.random.default_rng(0)
    tiles = [box(x * 64, y * 64, x * 64 + size, y * 64 + size) for y in range(30) for x in range(30)
             if rng.random() < 0.6]
    path = write_set(tmp_path / "tiles.geojson", {"Tumor": tiles})
    result = run(MergeConfig(inputs=[path], out=tmp_path / "m.geojson"))
    merged = geoms(result.out)
    assert shapely.unary_union(merged).equals(shapely.unary_union(tiles))
    assert sum(g.area for g in merged) == pytest.approx(shapely.unary_union(tiles).area)  # no overlaps


def refused(result, out, *words):
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    for word in words:
        assert word in result.stderr
    assert not out.exists() and not out.with_suffix(".report.json").exists()


def test_bad_inputs_exit_2_and_write_nothing(tmp_path):
    out = tmp_path / "out.geojson"
    a = write_set(tmp_path / "a.geojson", {"Tumor": [box(0, 0, 10, 10)]})
    other = write_set(tmp_path / "other.geojson", {"Tumor": [box(0, 0, 10, 10)]},
                      slide=SlideRef(name="other.svs", width=5000, height=4000, mpp=0.5))
    refused(cli(a, other, "--out", out), out, "different slides", "other.svs")
    points = tmp_path / "points.geojson"
    points.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": mapping(Point(1, 1)), "properties": {}}]}))
    refused(cli(points, "--out", out), out, "points.geojson", "no polygons")
    notjson = tmp_path / "broken.geojson"
    notjson.write_text('{"type": "FeatureCollection", "features": [')
    refused(cli(a, notjson, "--out", out), out, "broken.geojson", "not valid JSON")
    wrong = tmp_path / "report.json"
    save_contract(load_contract_sample(), wrong)
    refused(cli(wrong, "--out", out), out, "report.json", "annotations")
    plain = tmp_path / "plain.geojson"
    plain.write_text(json.dumps(qupath_geojson([])))
    refused(cli(plain, "--out", out, "--max-gap-um", "3"), out, "--slide-mpp")
    refused(cli(a, tmp_path / "missing.geojson", "--out", out), out, "missing.geojson")
    ok = cli(a, "--out", out)
    assert ok.returncode == 0, ok.stderr
    assert AnnotationSet.model_validate_json(out.read_text()).slide == SLIDE


def load_contract_sample():
    from slidemill.shared.testing import sample_report

    return sample_report()


def test_gzipped_input_and_disagreeing_resolutions(tmp_path):
    import gzip

    a = write_set(tmp_path / "a.geojson", {"Tumor": [box(0, 0, 10, 10)]})
    zipped = tmp_path / "a.geojson.gz"
    zipped.write_bytes(gzip.compress(a.read_bytes()))
    result = run(MergeConfig(inputs=[zipped], out=tmp_path / "z.geojson"))
    assert result.features == 1
    other = write_set(tmp_path / "b.geojson", {"Tumor": [box(0, 0, 10, 10)]}, mpp=0.25)
    out = tmp_path / "m.geojson"
    refused(cli(a, other, "--out", out), out, "microns per pixel")
    forced = cli(a, other, "--out", out, "--slide-mpp", "0.5")  # the user says which is right
    assert forced.returncode == 0, forced.stderr
