"""read_annotation_file: QuPath GeoJSON of every flavour, ASAP XML and Aperio ImageScope XML."""

import gzip
import json

import pytest
import shapely
from shapely.geometry import Polygon, box

from slidemill.shared.annotations import bgr_int_to_rgb, read_annotation_file
from slidemill.shared.errors import InputError
from slidemill.shared.testing import qupath_geojson

TCGA = "TCGA-EJ-5519-01Z-00-DX1"


def test_tcga_imagescope_and_qupath_exports_give_the_same_polygons(handout):
    """The ImageScope file has 4 layers: layer 2 is empty (no regions), layers 1, 3 and 4 hold one region
    each. QuPath exported them as 3 features: layer 1 (the big outline, self-intersecting at one
    vertex) -> "Tumor"; layer 3 -> "Negative"; layer 4, whose region crosses itself, was split by
    QuPath's repair into a 3-part MultiPolygon -> "Other". QuPath also dropped collinear vertices and
    rounded to 2 decimals, so the shapes must agree to within that rounding, not vertex by vertex."""
    xml = read_annotation_file(handout / "annotations" / f"{TCGA}.imagescope.xml")
    qp = read_annotation_file(handout / "annotations" / f"{TCGA}.qupath.json")
    assert len(xml.shapes) == len(qp.shapes) == 3
    assert xml.repaired == 2 and qp.repaired == 0  # layers 1 and 4 self-intersect
    pairs = {}
    for q in qp.shapes:
        match = [x for x in xml.shapes if x.geometry.intersection(q.geometry).area > 0.99 * q.geometry.area
                 and abs(x.geometry.area - q.geometry.area) < 1e-4 * q.geometry.area]
        assert len(match) == 1, q.class_name
        x = match[0]
        pairs[q.class_name] = x
        assert x.geometry.geom_type == q.geometry.geom_type
        if q.geometry.geom_type == "MultiPolygon":
            assert len(x.geometry.geoms) == len(q.geometry.geoms) == 3
        assert x.geometry.hausdorff_distance(q.geometry) < 0.01  # QuPath's 2-decimal rounding
        assert x.geometry.symmetric_difference(q.geometry).area < 1e-6 * q.geometry.area + 50
    # layer names / colours: LineColor is a BGR int (65280 green, 255 red, 16776960 cyan)
    assert pairs["Tumor"].class_name == "CaP" and pairs["Tumor"].color == (0, 255, 0)
    assert pairs["Negative"].class_name is None and pairs["Negative"].color == (255, 0, 0)
    assert pairs["Other"].class_name is None and pairs["Other"].color == (0, 255, 255)
    assert {q.class_name: q.color for q in qp.shapes} == {
        "Tumor": (200, 0, 0), "Other": (255, 200, 0), "Negative": (112, 112, 225)}


def test_bgr_int():
    assert bgr_int_to_rgb(255) == (255, 0, 0)
    assert bgr_int_to_rgb(65280) == (0, 255, 0)
    assert bgr_int_to_rgb(16711680) == (0, 0, 255)


def test_asap_polygon(handout):
    result = read_annotation_file(handout / "annotations" / "asap-polygon.xml")
    assert len(result.shapes) == 1
    shape = result.shapes[0]
    assert shape.class_name is None  # PartOfGroup="None"
    assert shape.color == (0xF4, 0xFA, 0x58)
    assert shape.geometry.exterior.coords[0] == pytest.approx((22851.3281, 16551.1797))
    assert len(shape.geometry.exterior.coords) == 7  # 6 points, closed


def test_asap_groups_and_point_sets(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text("""<?xml version="1.0"?><ASAP_Annotations><Annotations>
      <Annotation Name="t" Type="Polygon" PartOfGroup="tumor" Color="#FF0000"><Coordinates>
        <Coordinate Order="2" X="10" Y="10"/><Coordinate Order="0" X="0" Y="0"/><Coordinate Order="1" X="10" Y="0"/>
        <Coordinate Order="3" X="0" Y="10"/></Coordinates></Annotation>
      <Annotation Name="p" Type="PointSet" PartOfGroup="tumor"><Coordinates>
        <Coordinate Order="0" X="1" Y="1"/></Coordinates></Annotation>
      </Annotations><AnnotationGroups><Group Name="tumor" Color="#00FF00"/></AnnotationGroups></ASAP_Annotations>""")
    result = read_annotation_file(path)
    assert [s.class_name for s in result.shapes] == ["tumor"]
    assert result.shapes[0].geometry.equals(box(0, 0, 10, 10))  # points sorted by Order
    assert result.skipped == 1


def test_imagescope_negative_region_is_a_hole_and_ellipses(tmp_path):
    path = tmp_path / "s.xml"
    path.write_text("""<Annotations MicronsPerPixel="0.25">
      <Annotation Id="1" Name="Tumor" LineColor="255"><Regions>
        <Region Id="1" Type="0" NegativeROA="0"><Vertices>
          <Vertex X="0" Y="0"/><Vertex X="100" Y="0"/><Vertex X="100" Y="100"/><Vertex X="0" Y="100"/>
        </Vertices></Region>
        <Region Id="2" Type="0" NegativeROA="1"><Vertices>
          <Vertex X="40" Y="40"/><Vertex X="60" Y="40"/><Vertex X="60" Y="60"/><Vertex X="40" Y="60"/>
        </Vertices></Region>
        <Region Id="3" Type="2" NegativeROA="0"><Vertices><Vertex X="200" Y="0"/><Vertex X="300" Y="50"/>
        </Vertices></Region>
      </Regions></Annotation>
      <Annotation Id="2" Name="" LineColor="65280">
      <Attributes><Attribute Name="Description" Value="Stroma"/></Attributes>
      <Regions><Region Id="1" Type="1"><Vertices><Vertex X="0" Y="200"/><Vertex X="10" Y="200"/><Vertex X="10" Y="210"/>
        <Vertex X="0" Y="210"/></Vertices></Region></Regions></Annotation>
    </Annotations>""")
    result = read_annotation_file(path)
    tumor, stroma = result.shapes
    assert tumor.class_name == "Tumor" and tumor.color == (255, 0, 0)
    squares = box(0, 0, 100, 100).difference(box(40, 40, 60, 60))
    assert tumor.geometry.geom_type == "MultiPolygon"
    square = [g for g in tumor.geometry.geoms if g.bounds[0] == 0][0]
    assert square.equals(squares) and len(square.interiors) == 1
    ellipse = [g for g in tumor.geometry.geoms if g.bounds[0] >= 199][0]
    assert ellipse.area == pytest.approx(3.14159 * 50 * 25, rel=0.01)
    assert stroma.class_name == "Stroma" and stroma.color == (0, 255, 0)  # from the attribute value


@pytest.mark.parametrize("flavour", ["0.2", "0.3", "0.4"])
def test_every_qupath_flavour_gives_the_same_shapes(tmp_path, shapes, flavour):
    path = tmp_path / "a.geojson"
    path.write_text(json.dumps(qupath_geojson(shapes, flavour=flavour)))
    result = read_annotation_file(path)
    assert [s.class_name for s in result.shapes] == [s.class_name for s in shapes]
    assert [s.color for s in result.shapes] == [s.color for s in shapes]
    for got, want in zip(result.shapes, shapes, strict=True):
        assert got.geometry.equals(want.geometry)


def test_gzip_string_classification_and_bare_feature(tmp_path):
    feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [5, 0], [5, 5], [0, 0]]]},
               "properties": {"classification": "Tumor"}}
    path = tmp_path / "a.geojson.gz"
    path.write_bytes(gzip.compress(json.dumps(feature).encode()))
    result = read_annotation_file(path)
    assert result.shapes[0].class_name == "Tumor" and result.shapes[0].object_type == "annotation"


def test_invalid_polygons_are_repaired_and_counted(tmp_path):
    bowtie = [[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [bowtie]},
         "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}}}]}))
    result = read_annotation_file(path)
    assert result.repaired == 1
    assert result.shapes[0].geometry.is_valid
    assert result.shapes[0].geometry.area == pytest.approx(50)  # both triangles kept, not one
    assert not Polygon(bowtie).is_valid and shapely.is_valid(result.shapes[0].geometry)


@pytest.mark.parametrize("content", [b"not an annotation file\n", b"\x89PNG\r\n\x1a\n\x00",
                                     b"<html><body>hi</body></html>", b"<?xml version='1.0'?><Annotations",
                                     b'{"schema": "slidemill/report"}'])
def test_anything_else_is_an_input_error_naming_the_file(tmp_path, content):
    path = tmp_path / "weird.txt"
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        read_annotation_file(path)
    assert "weird.txt" in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_annotation_file(tmp_path / "nope.geojson")
