"""Helpers for the to-qupath tests: small annotation files of every kind."""

import json
from pathlib import Path

from slidemill.shared.annotations import make_feature
from slidemill.shared.contracts import AnnotationSet, Provenance, SlideRef, save_contract
from slidemill.shared.testing import example_shapes, sample_classes


def ours(path: Path, slide: str = "slide-a.svs", *, shapes=None, mpp: float = 0.5) -> Path:
    """A slidemill annotations file (what postprocess writes) about `slide`."""
    classes = sample_classes()
    shapes = example_shapes(2000, 1500) if shapes is None else shapes
    features = [make_feature(s.geometry, s.class_name, classes=classes, color=s.color, mpp=mpp) for s in shapes]
    annotation_set = AnnotationSet(
        slide=SlideRef(name=slide, width=2000, height=1500, mpp=mpp), mpp=mpp,
        features=[f for f in features if f is not None],
        provenance=Provenance(tool="slidemill-postprocess", version="0.1.0"))
    return save_contract(annotation_set, path)


def plain(path: Path, features: list[dict]) -> Path:
    """A QuPath-style GeoJSON FeatureCollection (no slidemill schema)."""
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def polygon_feature(coords, props=None, geometry_type="Polygon") -> dict:
    return {"type": "Feature", "geometry": {"type": geometry_type, "coordinates": coords},
            "properties": {"objectType": "annotation", **(props or {})}}


def square(x=0.0, y=0.0, size=10.0) -> list:
    return [[[x, y], [x + size, y], [x + size, y + size], [x, y + size], [x, y]]]


def make_slide_files(tmp_path) -> dict[str, Path]:
    """Empty stand-ins for slide files (to-qupath never opens a slide, it only points QuPath at it)."""
    folder = tmp_path / "slides dir"
    folder.mkdir()
    out = {}
    for name in ("slide-a.svs", "slide-b.tiff", "old.ndpi"):
        (folder / name).write_bytes(b"")
        out[name] = folder / name
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (to show a project was left exactly as it was)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

