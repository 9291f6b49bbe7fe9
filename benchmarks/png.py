"""Benchmark of tile's own PNG encoder (`slidemill.tile.pngenc.encode_png`: "sub" filter + libdeflate)
against the libraries that could replace it, on real H&E tiles and on their masks.

    .venv/bin/python benchmarks/png.py            # 64 tiles of 512 px from demo/CMU-1-Small-Region.svs
    .venv/bin/python benchmarks/png.py --tiles 16 # a quick look

Encoders, each at its fastest setting and decoded back to check it is lossless:
- slidemill: encode_png(level=1);
- cv2: cv2.imencode(".png", IMWRITE_PNG_COMPRESSION=1) (zlib, adaptive filters);
- imagecodecs: imagecodecs.png_encode(level=1) (libpng);
- cv2 at its default compression 3, for size.
Prints one line per encoder: megapixels per second (best of --repeat rounds, one thread), total size,
and the ratios against slidemill's (speed: encoder / slidemill, size: encoder / slidemill).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import imagecodecs
import numpy as np

REPO = Path(__file__).resolve().parents[1]


def tiles(count: int, size: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    from slidemill.shared.slide import open_slide
    from slidemill.shared.tissue import detect_tissue

    slide = open_slide(REPO / "demo" / "CMU-1-Small-Region.svs")
    images, masks = [], []
    for i in range(count):
        x = (i * 331) % max(1, slide.width - size)
        y = (i * 547) % max(1, slide.height - size)
        rgb = slide.read_region(x, y, size, size, 1.0)
        images.append(rgb)
        masks.append(detect_tissue(rgb, slide.mpp).astype(np.uint8))  # a label-like mask: few values, blobs
    return images, masks


def main() -> int:
    from slidemill.tile.pngenc import encode_png

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cv2.setNumThreads(1)
    images, masks = tiles(args.tiles, args.size)
    encoders = {
        "slidemill": lambda a: encode_png(a, 1),
        "cv2-1": lambda a: cv2.imencode(".png", a[..., ::-1] if a.ndim == 3 else a,
                                        [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes(),
        "imagecodecs-1": lambda a: imagecodecs.png_encode(a, level=1),
        "cv2-3": lambda a: cv2.imencode(".png", a[..., ::-1] if a.ndim == 3 else a,
                                        [cv2.IMWRITE_PNG_COMPRESSION, 3])[1].tobytes(),
    }
    megapixels = len(images) * args.size * args.size / 1e6
    for what, arrays in (("tiles (RGB)", images), ("masks", masks)):
        rows = {}
        for name, encode in encoders.items():
            best, size = float("inf"), 0
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                blobs = [encode(a) for a in arrays]
                best = min(best, time.perf_counter() - t0)
                size = sum(len(b) for b in blobs)
            for a, b in zip(arrays[:4], blobs[:4], strict=False):  # lossless, as every reader decodes it
                decoded = imagecodecs.png_decode(b)
                assert np.array_equal(decoded, a), f"{name} is not lossless"
            rows[name] = (megapixels / best, size)
        base_speed, base_size = rows["slidemill"]
        print(f"{what}: {len(arrays)} x {args.size}^2")
        for name, (speed, size) in rows.items():
            print(f"  {name:14s} {speed:8.1f} MP/s  {size / 1e6:8.2f} MB  speed x{speed / base_speed:5.2f}  "
                  f"size x{size / base_size:5.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
