"""Benchmark of postprocess and merge-annotations against plain whole-input baselines.

    .venv/bin/python benchmarks/postprocess.py                 # 20,000 x 20,000 raster, 100,000 tiles
    .venv/bin/python benchmarks/postprocess.py --size 4000 --tiles 20000   # a quick look

1. Vectorise a synthetic label raster (3 classes + 255, blobs with holes, tiled zlib TIFF as
   slidemill-infer writes it):
   - slidemill: `vectorise_raster` reading 2048 px chunks from the TIFF, exact pixel-corner polygons,
     stitched across chunks;
   - baseline: `tifffile.imread` of the whole raster, then `cv2.findContours` per class on the whole
     array (pixel-centre contours, no polygons built, nothing stitched: the cheapest possible).
2. Merge tile polygons (square patch annotations on a 256 px grid, 3 classes in large regions):
   - slidemill: `slidemill.shared.shapes.dissolve` per class (the merge-annotations core);
   - baseline: `shapely.unary_union` of each class's polygons.
   A second line does the same with overlapping tiles (288 px tiles at a 256 px stride).

Each measurement runs in its own fresh process (`--repeat N`: N times, the fastest shown); peak
memory is that process's peak resident set size minus the resident size right after the imports
(printed once). Every measurement is repeated with half the input to show how time grows when the
input doubles. Everything prints on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TILE = 512


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --- inputs ------------------------------------------------------------------------------------


def blobs(height: int, width: int, seed: int = 0) -> list[tuple[int, int, int, int, int, int]]:
    """(cx, cy, rx, ry, class, hole radius) of the synthetic tissue blobs, about one per 40,000 px²."""
    rng = np.random.default_rng(seed)
    n = max(1, height * width // 40_000)
    out = []
    for _ in range(n):
        r = int(np.clip(rng.lognormal(3.6, 0.7), 4, 400))
        rx, ry = r, int(max(3, r * rng.uniform(0.5, 1.0)))
        hole = int(0.35 * min(rx, ry)) if rng.random() < 0.3 else 0
        out.append((int(rng.integers(0, width)), int(rng.integers(0, height)), rx, ry, int(rng.integers(0, 3)), hole))
    return out


def write_label_raster(path: Path, height: int, width: int, seed: int = 0) -> Path:
    """A tiled zlib uint8 TIFF, drawn tile by tile (the blobs of each tile found through a bin grid)."""
    import cv2
    import tifffile

    shapes = blobs(height, width, seed)
    bins: dict[tuple[int, int], list[int]] = {}
    for index, (cx, cy, rx, ry, _, _) in enumerate(shapes):
        r = max(rx, ry)
        for ty in range(max(0, (cy - r) // TILE), min((height - 1) // TILE, (cy + r) // TILE) + 1):
            for tx in range(max(0, (cx - r) // TILE), min((width - 1) // TILE, (cx + r) // TILE) + 1):
                bins.setdefault((ty, tx), []).append(index)

    def tiles():
        for ty in range(math.ceil(height / TILE)):
            for tx in range(math.ceil(width / TILE)):
                tile = np.full((TILE, TILE), 255, np.uint8)
                for index in bins.get((ty, tx), []):
                    cx, cy, rx, ry, cls, hole = shapes[index]
                    centre = (cx - tx * TILE, cy - ty * TILE)
                    cv2.ellipse(tile, centre, (rx, ry), 0, 0, 360, cls, -1)
                    if hole:
                        cv2.circle(tile, centre, hole, 255, -1)
                yield tile

    tifffile.imwrite(path, tiles(), shape=(height, width), dtype=np.uint8, tile=(TILE, TILE), compression="zlib",
                     metadata=None, bigtiff=height * width > 2**31)
    return path


def tile_polygons(count: int, *, size: int = 256, stride: int = 256, seed: int = 0):
    """`count` square tile polygons on a grid; a smooth random field gives each its class, so
    same-class tiles form large regions (like a model's patch classifications)."""
    import cv2
    import shapely

    gx = int(math.ceil(math.sqrt(count * 1.6)))
    gy = int(math.ceil(count / gx))
    rng = np.random.default_rng(seed)
    field = cv2.resize(rng.random((gy // 8 + 2, gx // 8 + 2)).astype(np.float32), (gx, gy),
                       interpolation=cv2.INTER_CUBIC)
    classes = np.digitize(field, [0.42, 0.58]).ravel()[:count]
    xs, ys = np.meshgrid(np.arange(gx), np.arange(gy))
    xs, ys = xs.ravel()[:count] * stride, ys.ravel()[:count] * stride
    polys = shapely.box(xs, ys, xs + size, ys + size)
    return {c: polys[classes == c] for c in range(3)}


# --- measurements (each in its own process) ----------------------------------------------------


def measure(kind: str, arg: str) -> dict:
    import cv2
    import shapely
    import tifffile

    from slidemill.postprocess.vectorise import MaskOps, vectorise_file
    from slidemill.shared.shapes import dissolve

    idle = _rss_mb()
    if kind.startswith("vectorise"):
        from slidemill.shared.contracts import RasterFile

        workers = int(kind.split("-")[1]) if "-" in kind else 1
        with tifffile.TiffFile(arg) as tif:
            h, w = tif.pages[0].shape
        t0 = time.perf_counter()
        result, _ = vectorise_file([(Path(arg), RasterFile(file="labels.tiff", width=w, height=h))], [0, 1, 2],
                                   MaskOps(), chunk_px=2048, workers=workers)
        items = sum(len(v) for v in result.values())
    elif kind == "baseline-vectorise":
        t0 = time.perf_counter()
        labels = tifffile.imread(arg)
        items = 0
        for value in (0, 1, 2):
            contours, _ = cv2.findContours((labels == value).view(np.uint8), cv2.RETR_CCOMP,
                                           cv2.CHAIN_APPROX_SIMPLE)
            items += len(contours)
    elif kind in {"merge", "baseline-merge", "merge-overlap", "baseline-merge-overlap"}:
        size = 288 if kind.endswith("overlap") else 256
        groups = tile_polygons(int(arg), size=size)
        t0 = time.perf_counter()
        if kind.startswith("merge"):
            items = sum(len(dissolve(list(p))) for p in groups.values())
        else:
            items = sum(len(shapely.get_parts(shapely.unary_union(p))) for p in groups.values())
    else:
        raise SystemExit(f"unknown measurement {kind}")
    elapsed = time.perf_counter() - t0
    worker_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0  # the largest worker process
    return {"kind": kind, "time_s": round(elapsed, 3), "peak_mb": round(_rss_mb() - idle, 1),
            "idle_mb": round(idle, 1), "worker_peak_mb": round(worker_mb, 1), "items": items}


REPEAT = 1


def run_measurement(kind: str, arg: str) -> dict:
    """The fastest of REPEAT runs, each in a fresh process (the peak memory of that run)."""
    runs = []
    for _ in range(REPEAT):
        out = subprocess.run([sys.executable, __file__, "--measure", kind, arg], capture_output=True, text=True,
                             check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return min(runs, key=lambda r: r["time_s"])


# --- the report --------------------------------------------------------------------------------


def line(label: str, ours: dict, base: dict) -> str:
    workers = f" (+ up to {ours['worker_peak_mb']:.0f} MB per worker process)" if ours["worker_peak_mb"] else ""
    return (f"{label:<44} slidemill {ours['time_s']:8.2f} s {ours['peak_mb']:8.1f} MB{workers} | baseline "
            f"{base['time_s']:8.2f} s {base['peak_mb']:8.1f} MB | time ratio {ours['time_s'] / base['time_s']:5.2f}x, "
            f"memory ratio {ours['peak_mb'] / max(base['peak_mb'], 0.1):5.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=20_000, help="raster side in pixels (default 20000)")
    parser.add_argument("--tiles", type=int, default=100_000, help="tile polygons to merge (default 100000)")
    parser.add_argument("--workdir", type=Path, default=None, help="where the synthetic rasters go (temporary)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement; the fastest is shown")
    parser.add_argument("--measure", nargs=2, metavar=("KIND", "ARG"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return 0
    global REPEAT
    REPEAT = max(1, args.repeat)

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        rows: list[str] = []
        results: dict[str, dict] = {}
        for label, h in (("half", args.size // 2), ("full", args.size)):
            path = Path(tmp) / f"labels-{label}.tiff"
            t0 = time.perf_counter()
            write_label_raster(path, h, args.size)
            print(f"wrote a {args.size} x {h} label raster in {time.perf_counter() - t0:.1f} s "
                  f"({path.stat().st_size / 1e6:.0f} MB)", flush=True)
            base = run_measurement("baseline-vectorise", str(path))
            results[f"baseline-vectorise-{label}"] = base
            for workers in (1, 2):
                ours = run_measurement(f"vectorise-{workers}", str(path))
                results[f"vectorise-{workers}-{label}"] = ours
                rows.append(line(f"vectorise {args.size} x {h} px, {workers} proc. ({ours['items']} polygons)",
                                 ours, base))
                print(rows[-1], flush=True)
            path.unlink()
        for variant in ("", "-overlap"):
            for label, n in (("half", args.tiles // 2), ("full", args.tiles)):
                ours = run_measurement(f"merge{variant}", str(n))
                base = run_measurement(f"baseline-merge{variant}", str(n))
                results[f"merge{variant}-{label}"], results[f"baseline-merge{variant}-{label}"] = ours, base
                what = "overlapping tiles" if variant else "edge-sharing tiles"
                rows.append(line(f"merge {n} {what} ({ours['items']} shapes)", ours, base))
                print(rows[-1], flush=True)
    print()
    print(f"python process after imports: {results['vectorise-1-full']['idle_mb']:.0f} MB resident (not counted "
          "above); a worker process's figure is its whole resident size, imports included")
    for name in ("vectorise-1", "vectorise-2", "baseline-vectorise", "merge", "baseline-merge", "merge-overlap",
                 "baseline-merge-overlap"):
        half, full = results[f"{name}-half"], results[f"{name}-full"]
        print(f"input doubled, {name:<24} time x{full['time_s'] / max(half['time_s'], 1e-9):.2f}, "
              f"memory x{full['peak_mb'] / max(half['peak_mb'], 0.1):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
