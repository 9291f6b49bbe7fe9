"""Annotation I/O, in one place: the object model (`model`), the one reader (`reading`: slidemill,
QuPath GeoJSON of every version, ASAP and ImageScope XML) and the one streaming writer (`writing`),
used by tile, postprocess, merge-annotations and to-qupath alike."""

from .objects import (
    DERIVED_CLASS_JOINER,
    OBJECT_TYPES,
    AnnotationShape,
    ReadResult,
    join_class_names,
    make_valid_polygonal,
)
from .reading import (
    load_json,
    polygons_from_dicts,
    read_annotation_file,
    read_annotation_set,
    read_bytes,
    shapes_from_geojson,
)
from .writing import (
    COORDINATE_DECIMALS,
    FEATURE_NAMESPACE,
    WriteStats,
    annotations_header,
    class_colors,
    feature_id,
    feature_lines,
    geometry_dict,
    make_feature,
    measure,
    not_kept,
    qupath_features,
    snap_polygonal,
    write_annotations,
    write_feature_collection,
)
from .xml_formats import bgr_int_to_rgb, hex_to_rgb

__all__ = [
    "COORDINATE_DECIMALS", "DERIVED_CLASS_JOINER", "FEATURE_NAMESPACE", "OBJECT_TYPES", "AnnotationShape",
    "ReadResult", "WriteStats", "annotations_header", "bgr_int_to_rgb", "class_colors", "feature_id",
    "feature_lines", "geometry_dict", "hex_to_rgb", "join_class_names", "load_json", "make_feature",
    "make_valid_polygonal", "measure", "not_kept", "polygons_from_dicts", "qupath_features", "read_annotation_file",
    "read_annotation_set", "read_bytes", "shapes_from_geojson", "snap_polygonal", "write_annotations",
    "write_feature_collection",
]
