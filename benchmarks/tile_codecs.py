"""What bounds `--store zarr` against `--store png`: the CPU per 512 px tile of each step the two
stores do not share, on real H&E and on the benchmark's synthetic slide, in one process.

    .venv/bin/python benchmarks/tile_codecs.py [--synthetic SLIDE.tiff]

Tiles: CMU-1-Small-Region (../shared/data/slides) cut into 512 px tiles, and, with --synthetic, the
same count from the middle of level 0 of a slide `benchmarks/tile.py --keep DIR` made. Per tile: JPEG
decoding (what both stores pay for reading the slide; the tiles JPEG-encoded at quality 90 first),
tile's PNG encoder at level 1 (`pngenc.encode_png`, the png store) and blosc-lz4 (the zarr store's
lossless codec, as `tilestore.image_codec` makes it). (decode + png) / (decode + blosc) is what the
zarr/png ratio could reach if masks, files and start-up cost nothing.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile

from slidemill.shared.tilestore import LOSSLESS_CODEC, image_codec
from slidemill.tile.pngenc import encode_png

HE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"


def tiles(image: np.ndarray, n: int = 512) -> list[np.ndarray]:
    return [np.ascontiguousarray(image[y:y + n, x:x + n, :3]) for y in range(0, image.shape[0] - n + 1, n)
            for x in range(0, image.shape[1] - n + 1, n)]


def per_tile_ms(fn, items, rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        c0 = time.process_time()
        for item in items:
            fn(item)
        best = min(best, time.process_time() - c0)
    return best / len(items) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthetic", type=Path, help="a slide benchmarks/tile.py made (synthetic-jpeg.tiff)")
    args = parser.parse_args()
    with tifffile.TiffFile(HE) as tif:
        sets = [("H&E (CMU-1-Small-Region)", tiles(tif.pages[0].asarray()))]
    if args.synthetic:
        with tifffile.TiffFile(args.synthetic) as tif:
            level = tif.series[0].levels[0]
            h, w = level.shape[:2]
            n = len(sets[0][1])
            side = 512 * int(np.ceil(np.sqrt(n)))
            y0, x0 = (h - side) // 2, (w - side) // 2
            region = tifffile.imread(args.synthetic, key=0)[y0:y0 + side, x0:x0 + side]
        sets.append(("synthetic (benchmarks/tile.py)", tiles(region)[:n]))
    blosc = image_codec(LOSSLESS_CODEC)
    for name, items in sets:
        jpegs = [imagecodecs.jpeg8_encode(t, level=90) for t in items]
        decode = per_tile_ms(imagecodecs.jpeg8_decode, jpegs)
        png = per_tile_ms(lambda t: encode_png(t, 1), items)
        lz4 = per_tile_ms(lambda t: blosc.encode(t[None]), items)
        raw = sum(t.nbytes for t in items)
        png_ratio = raw / sum(len(encode_png(t, 1)) for t in items)
        lz4_ratio = raw / sum(len(blosc.encode(t[None])) for t in items)
        print(f"{name}: {len(items)} tiles of 512 px, CPU ms per tile: JPEG decode {decode:.2f}, PNG encode {png:.2f} "
              f"(raw/stored {png_ratio:.2f}), blosc-lz4 {lz4:.2f} (raw/stored {lz4_ratio:.2f}); "
              f"(decode + png) / (decode + blosc) = {(decode + png) / (decode + lz4):.2f}")


if __name__ == "__main__":
    main()
