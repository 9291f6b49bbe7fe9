"""Benchmark of the shared annotation writer (used by to-qupath, postprocess and merge-annotations)
against the obvious whole-string baseline.

    .venv/bin/python benchmarks/to_qupath.py                  # 100,000 features
    .venv/bin/python benchmarks/to_qupath.py --features 20000 # a quick look

Input: N small polygons (octagons, 3 classes, a few with more than 2 decimals) as shapely geometries.
- slidemill: `slidemill.shared.annotations.feature_lines` + `write_feature_collection` (vectorised
  snapping, GEOS GeoJSON text, streamed in batches to a temporary file renamed into place);
- baseline: one pydantic-validated contract `Feature` per polygon (snapped on its own with the
  topology-preserving snap, coordinates rounded in Python), then the whole AnnotationSet dumped as
  one JSON string and written in one go.
Both outputs are checked with `slidemill.to_qupath.file_problems` (QuPath's rules) on a sample.
A third line runs the whole tool (`run`, reading and validating the written slidemill file first).

Each measurement runs in its own fresh process; peak memory is that process's peak resident set size
minus its resident size right after the imports and the input are built. Prints on stdout.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _shapes(n: int):
    import numpy as np
    import shapely

    i = np.arange(n)
    centres = shapely.points((i % 1000) * 40.0 + 0.123, (i // 1000) * 40.0 + 0.456)
    return list(shapely.buffer(centres, 12.3456, quad_segs=2)), ["Tumor", "Stroma", "Immune cells"]


def _measure(mode: str, n: int, out: Path) -> dict:
    from slidemill.shared.annotations import AnnotationShape, class_colors, feature_lines, write_feature_collection

    geoms, names = _shapes(n)
    base = _rss_mb()
    t0 = time.perf_counter()
    if mode == "slidemill":
        records = [AnnotationShape(geometry=g, class_name=names[k % 3]) for k, g in enumerate(geoms)]
        write_feature_collection(out, feature_lines(records, colors=class_colors(records), mpp=0.25),
                                 header={"schema": "slidemill/annotations", "schema_version": "1.0"})
    elif mode == "baseline":
        from slidemill.shared.contracts import AnnotationSet, dump_contract
        from slidemill.shared.testing import sample_classes

        classes = sample_classes()
        features = [_baseline_feature(g, names[k % 3], classes, 0.25) for k, g in enumerate(geoms)]
        text = dump_contract(AnnotationSet(features=[f for f in features if f is not None]), indent=None)
        out.write_text(text)
    else:  # the whole tool on a slidemill file written beforehand (not timed)
        from slidemill.to_qupath import ToQuPathConfig, run

        source = out.with_name("source.geojson")
        t0 = time.perf_counter()
        run(ToQuPathConfig(annotations=[source], out_dir=out.with_name("tool-out"), overwrite=True), argv=[])
        out = out.with_name("tool-out") / "source.geojson"
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "peak_mb": _rss_mb() - base, "size_mb": out.stat().st_size / 1e6}


def _baseline_feature(geom, class_name, classes, mpp):
    """One contract Feature the straightforward way: snap, round, measure, validate with pydantic."""
    from slidemill.shared.annotations import feature_id, geometry_dict, measure, snap_polygonal
    from slidemill.shared.contracts import Feature

    snapped = snap_polygonal(geom)
    if snapped is None:
        return None
    geometry = geometry_dict(snapped)
    props = {"objectType": "annotation", "measurements": measure(snapped, mpp),
             "classification": {"name": class_name, "color": list(classes.by_name(class_name).color)}}
    return Feature.model_validate({"type": "Feature", "id": feature_id(geometry, class_name, "annotation"),
                                   "geometry": geometry, "properties": props})


def _child(mode: str, n: int, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--features", str(n), "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _check(path: Path, sample: int = 2000) -> int:
    from slidemill.to_qupath.rules import features_problems

    data = json.loads(path.read_bytes())
    features = data["features"]
    step = max(1, len(features) // sample)
    return sum(bool(p) for p in features_problems(features[::step]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=100_000)
    parser.add_argument("--child")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args.child, args.features, args.out)))
        return
    n = args.features
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ours = _child("slidemill", n, tmp / "ours.geojson")
        base = _child("baseline", n, tmp / "baseline.geojson")
        (tmp / "source.geojson").write_bytes((tmp / "ours.geojson").read_bytes())
        tool = _child("tool", n, tmp / "tool.geojson")
        bad_ours, bad_base = _check(tmp / "ours.geojson"), _check(tmp / "baseline.geojson")
    print(f"to-qupath writer, {n:,} features (octagons, 3 classes), one process each")
    print(f"  slidemill (vectorised, streamed): {ours['seconds']:7.2f} s  peak +{ours['peak_mb']:7.1f} MB  "
          f"file {ours['size_mb']:.1f} MB  QuPath-rule failures in sample: {bad_ours}")
    print(f"  baseline  (make_feature + dump):  {base['seconds']:7.2f} s  peak +{base['peak_mb']:7.1f} MB  "
          f"file {base['size_mb']:.1f} MB  QuPath-rule failures in sample: {bad_base}")
    print(f"  speed-up {base['seconds'] / ours['seconds']:.1f}x, peak memory ratio "
          f"{max(base['peak_mb'], 0.1) / max(ours['peak_mb'], 0.1):.1f}x")
    print(f"  whole tool (read + validate + write the slidemill file): {tool['seconds']:.2f} s "
          f"({n / tool['seconds']:,.0f} features/s)")


if __name__ == "__main__":
    main()
