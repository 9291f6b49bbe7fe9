"""Throughput of `slidemill-tile` against a plain loop and against the JPEG decode ceiling.

    .venv/bin/python benchmarks/tile.py [--size 20480] [--tile-size 512] [--workers 0] [--keep DIR]

Generates a synthetic JPEG-compressed pyramidal TIFF (`write_synthetic_slide`, 256 x 256 JPEG tiles,
quality 90, 0.25 um/px) of SIZE x SIZE pixels, then measures, in one run, on the same file:

1. `slidemill-tile SLIDE --out DIR --mpp 0.25 --all-tiles --overlap 0 --tile-size T --workers N`
   (the real command in a subprocess: start-up, tissue detection, manifest and report included),
   every level-0 tile written as a lossless PNG;
2. the plain loop people write: `openslide.OpenSlide.read_region((x, y), 0, (T, T))` for the same
   tiles, `.convert("RGB").save(png)` with PIL's defaults, one process;
3. the ceiling: decoding every JPEG tile of level 0 of the file (tifffile + imagecodecs, one thread)
   and nothing else.

Megapixels per second count the tile pixels delivered (T x T per tile). Prints the three rates and
the ratios slidemill / plain loop and slidemill / (ceiling x workers).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def make_slide(path: Path, size: int) -> float:
    from slidemill.shared.testing import write_synthetic_slide

    t0 = time.perf_counter()
    write_synthetic_slide(path, size, size, mpp=0.25, tile=256, compression="jpeg")
    return time.perf_counter() - t0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_slidemill(slide: Path, out: Path, tile: int, workers: int) -> tuple[float, float]:
    """Wall seconds and CPU seconds (all processes) of one slidemill-tile run."""
    cmd = [str(BIN / "slidemill-tile"), str(slide), "--out", str(out), "--mpp", "0.25", "--all-tiles",
           "--overlap", "0", "--tile-size", str(tile), "--workers", str(workers), "--overwrite"]
    t0, c0 = time.perf_counter(), _children_cpu()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0, _children_cpu() - c0


def run_plain_loop(slide: Path, out: Path, tile: int, size: int) -> tuple[float, float, int]:
    import openslide

    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    osr = openslide.OpenSlide(str(slide))
    count = 0
    for y in range(0, size, tile):
        for x in range(0, size, tile):
            region = osr.read_region((x, y), 0, (tile, tile))
            region.convert("RGB").save(out / f"{y}_{x}.png")
            count += 1
    osr.close()
    return time.perf_counter() - t0, time.process_time() - c0, count


def run_decode_ceiling(slide: Path) -> tuple[float, float, float]:
    """Wall and CPU seconds to decode every JPEG tile of level 0, and the megapixels decoded."""
    import imagecodecs
    import tifffile

    with tifffile.TiffFile(slide) as tif:
        page = tif.pages[0]
        tables = page.jpegtables
        fh = tif.filehandle
        chunks = []
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
            fh.seek(offset)
            chunks.append(fh.read(count))
        tw, tl = page.tilewidth, page.tilelength
    t0, c0 = time.perf_counter(), time.process_time()
    for data in chunks:
        imagecodecs.jpeg8_decode(data, tables=tables)
    return time.perf_counter() - t0, time.process_time() - c0, len(chunks) * tw * tl / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=20480, help="slide width and height (>= 20000)")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=0, help="slidemill-tile workers; 0 = one per core")
    parser.add_argument("--keep", type=Path, help="keep the slide and outputs in this folder")
    args = parser.parse_args()
    from slidemill.shared.cli import worker_count

    workers = worker_count(args.workers)
    work = args.keep or Path(tempfile.mkdtemp(prefix="slidemill-bench-tile-"))
    work.mkdir(parents=True, exist_ok=True)
    slide = work / "synthetic-jpeg.tiff"
    try:
        if not slide.exists():
            seconds = make_slide(slide, args.size)
            print(f"slide: {args.size} x {args.size} px JPEG pyramid, {slide.stat().st_size / 1e6:.0f} MB, "
                  f"made in {seconds:.1f} s")
        t = args.tile_size
        n_tiles = (-(-args.size // t)) ** 2
        megapixels = n_tiles * t * t / 1e6

        decode_s, decode_cpu, decoded_mp = run_decode_ceiling(slide)
        ceiling = decoded_mp / decode_s
        print(f"decode ceiling (level-0 JPEG tiles, 1 thread): {decoded_mp:.0f} MP in {decode_s:.1f} s "
              f"= {ceiling:.1f} MP/s ({decoded_mp / decode_cpu:.1f} MP per CPU-second)")

        ours_s, ours_cpu = run_slidemill(slide, work / "slidemill-out", t, workers)
        ours = megapixels / ours_s
        print(f"slidemill-tile ({workers} worker(s), {n_tiles} tiles of {t} px, PNG): {megapixels:.0f} MP in "
              f"{ours_s:.1f} s = {ours:.1f} MP/s ({megapixels / ours_cpu:.1f} MP per CPU-second, "
              "start-up, tissue detection and manifest included)")
        rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"slidemill-tile peak memory of its largest process: {rss_mb:.0f} MB "
              f"(the slide is {args.size * args.size * 3 / 1e6:.0f} MB of pixels)")

        plain_s, plain_cpu, count = run_plain_loop(slide, work / "plain-out", t, args.size)
        plain_mp = count * t * t / 1e6
        plain = plain_mp / plain_s
        print(f"plain loop (openslide read_region + PIL PNG save, 1 process): {plain_mp:.0f} MP in "
              f"{plain_s:.1f} s = {plain:.1f} MP/s ({plain_mp / plain_cpu:.1f} MP per CPU-second)")

        print(f"ratio slidemill / plain loop: {ours / plain:.2f}x wall-clock, "
              f"{(megapixels / ours_cpu) / (plain_mp / plain_cpu):.2f}x per CPU-second")
        print(f"ratio slidemill / decode ceiling: {ours / ceiling:.2f} "
              f"(of ceiling x {workers} workers: {ours / (ceiling * workers):.2f})")
        load = os.getloadavg()
        print(f"cpu cores: {os.cpu_count()}, load average during the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
              "(other work on the machine slows the wall-clock figures, not the per-CPU-second ones)")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
