"""Throughput of `slidemill-tile`'s stores against the JPEG decode ceiling and a plain loop, in one run.

    .venv/bin/python benchmarks/tile.py [--size 20480] [--tile-size 512] [--workers 0] [--keep DIR]
                                        [--memory-tiles 100000] [--rounds 3] [--skip-plain]
                                        [--content synthetic|he]
    .venv/bin/python benchmarks/tile.py --tiles 100000     # the memory run only

Generates a JPEG-compressed pyramidal TIFF (`write_synthetic_slide`, 256 x 256 JPEG tiles, quality
90, 0.25 um/px) of SIZE x SIZE pixels (synthetic shapes and noise, or with `--content he` real H&E:
CMU-1-Small-Region mirrored over the plane) with the example annotations (written as QuPath
GeoJSON, so every store also draws and writes masks), then measures on the same file:

1. the ceiling: decoding every JPEG tile of level 0 of the file (tifffile + imagecodecs, one thread);
2. `slidemill-tile SLIDE --out DIR --annotations A --mpp 0.25 --all-tiles --overlap 0 --tile-size T
   --workers N --store S` for S = png, zarr (blosc-lz4 and jpeg-q95) and refs, and zarr again with
   one worker (the real command in a subprocess: start-up, tissue detection, manifest and report
   included). The grid is level 0's, so tiles come from decoding the stored tiles directly;
   then rounds of (zarr with N workers, zarr with 1), each after measuring the machine's own
   N-process scaling on the same decoding (N processes decoding shares of level 0 at once against
   one decoding all): the baseline for the workers' scaling, since shared or throttled cores give
   less than N;
3. reading the refs tileset back as train does (`open_tileset(...).read(i)`: image from the slide,
   mask from the container) in N processes, against the decode ceiling x N;
4. an unaligned grid (--mpp 0.37): tiles read one region each against read in strips (one region
   per run of neighbours in a row, cut in memory), CPU seconds in one process;
5. the plain loop people write: `openslide.OpenSlide.read_region((x, y), 0, (T, T))` and
   `.convert("RGB").save(png)` with PIL's defaults, one process, no masks;
6. memory: a refs run of at least MEMORY_TILES tiles (64 px tiles), peak resident memory of its
   largest process next to a run of 1/16 the tiles, and of reading each back as train does
   (train's dataset index, then tiles read); `--tiles N` runs this part alone.

Megapixels per second count the tile pixels delivered (T x T per tile). The machine's load is
printed with the figures: other work slows the wall-clock ones.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


HE_SOURCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"


def he_render(source: Path = HE_SOURCE):
    """A `write_synthetic_slide` renderer that lays real H&E (level 0 of `source`, 2220 x 2967 px of
    CMU-1) over the plane, mirrored at its edges so the mosaic has no seams; level `scale` samples
    every `scale`-th pixel."""
    import numpy as np
    import tifffile

    with tifffile.TiffFile(source) as tif:
        image = tif.pages[0].asarray()[..., :3]
    height, width = image.shape[:2]

    def fold(v, n):
        v = v % (2 * n)
        return np.where(v < n, v, 2 * n - 1 - v)

    def render(x0, y0, w, h, scale):
        ys = fold(y0 + np.arange(h) * scale, height)
        xs = fold(x0 + np.arange(w) * scale, width)
        return np.ascontiguousarray(image[np.ix_(ys, xs)])

    return render


def make_slide(path: Path, size: int, content: str = "synthetic") -> float:
    from slidemill.shared.testing import write_synthetic_slide

    t0 = time.perf_counter()
    render = he_render() if content == "he" else None
    write_synthetic_slide(path, size, size, mpp=0.25, tile=256, compression="jpeg", render=render)
    return time.perf_counter() - t0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


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


def _level0_chunks(slide: Path) -> tuple[list[bytes], bytes, int]:
    """Level 0's JPEG tiles as read from the file: (tiles, JPEG tables, pixels per tile)."""
    import tifffile

    with tifffile.TiffFile(slide) as tif:
        page = tif.pages[0]
        fh = tif.filehandle
        chunks = []
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
            fh.seek(offset)
            chunks.append(fh.read(count))
        return chunks, page.jpegtables, page.tilewidth * page.tilelength


def run_decode_ceiling(slide: Path) -> tuple[float, float, float]:
    """Wall and CPU seconds to decode every JPEG tile of level 0, and the megapixels decoded."""
    import imagecodecs

    chunks, tables, pixels = _level0_chunks(slide)
    t0, c0 = time.perf_counter(), time.process_time()
    for data in chunks:
        imagecodecs.jpeg8_decode(data, tables=tables)
    return time.perf_counter() - t0, time.process_time() - c0, len(chunks) * pixels / 1e6


_DECODE: dict = {}


def _load_chunks(slide: Path) -> None:
    _DECODE["chunks"], _DECODE["tables"], _ = _level0_chunks(slide)


def _decode_share(args) -> float:
    import imagecodecs

    k, n = args
    if n == 0:  # warm-up
        return 0.0
    for data in _DECODE["chunks"][k::n]:
        imagecodecs.jpeg8_decode(data, tables=_DECODE["tables"])
    return 0.0


def decode_scaling(slide: Path, workers: int) -> float:
    """How much faster `workers` processes decode level 0's JPEG tiles at once (each an even share)
    than one process decodes them all, wall-clock, now: what this machine's cores give to CPU-bound
    work at this moment (shared or throttled cores give less than `workers`)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(workers, initializer=_load_chunks, initargs=(slide,)) as pool:
        pool.map(_decode_share, [(0, 0)] * (4 * workers), chunksize=1)
        time.sleep(0.5)
        t0 = time.perf_counter()
        pool.map(_decode_share, [(0, 1)], chunksize=1)
        one = time.perf_counter() - t0
        t0 = time.perf_counter()
        pool.map(_decode_share, [(k, workers) for k in range(workers)], chunksize=1)
        return one / (time.perf_counter() - t0)


def write_annotations(path: Path, size: int) -> None:
    import json

    from slidemill.shared.testing import example_shapes, qupath_geojson

    path.write_text(json.dumps(qupath_geojson(example_shapes(size, size), flavour="0.4")))


def unaligned_reads(slide: Path, tile: int, mpp: float = 0.37, count: int = 600) -> tuple[float, float, int]:
    """CPU seconds to read `count` tiles (a block of whole grid rows) of a grid at `mpp` that aligns with
    no stored level, one read per tile (`TileRenderer.render`) and in strips (`read_images`, as tile's
    workers do): (one by one, in strips, tiles)."""
    from slidemill.tile import plan_tiles

    plan = plan_tiles(slide, mpp=mpp, tile_size_px=tile, overlap_px=0, all_tiles=True)
    renderer = plan.renderer
    start = (len(plan) // 2 // plan.grid_cols) * plan.grid_cols  # whole rows from the middle of the slide
    specs = plan.specs[start:start + count]
    renderer.read_images(specs[:4])  # warm: slide open, caches
    c0 = time.process_time()
    for spec in specs:
        renderer.render(spec)
    single = time.process_time() - c0
    c0 = time.process_time()
    for k in range(0, len(specs), 64):  # a worker's batch
        renderer.read_images(specs[k:k + 64])
    return single, time.process_time() - c0, len(specs)


def run_tile(slide: Path, out: Path, tile: int, workers: int, store: str, annotations: Path,
             *extra: str) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (all processes) and peak RSS in MB (largest process) of one run."""
    cmd = [str(BIN / "slidemill-tile"), str(slide), "--out", str(out), "--mpp", "0.25", "--all-tiles",
           "--overlap", "0", "--tile-size", str(tile), "--workers", str(workers), "--overwrite",
           "--store", store, "--annotations", str(annotations), *extra]
    # a fresh interpreter per run, so ru_maxrss is this run's own. It is its children's subreaper (Linux), so
    # the fork server that outlives the command by a moment (and with it its workers' CPU) is waited for here
    code = ("import ctypes, os, resource, subprocess, sys, time; t0 = time.perf_counter(); "
            "sys.platform == 'linux' and ctypes.CDLL(None).prctl(36, 1, 0, 0, 0); "  # PR_SET_CHILD_SUBREAPER
            "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
            "exec('while True:\\n try: os.wait()\\n except ChildProcessError: break'); "
            "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "print(time.perf_counter() - t0, u.ru_utime + u.ru_stime, u.ru_maxrss / 1024)")
    result = subprocess.run([sys.executable, "-c", code, *cmd], check=True, capture_output=True, text=True)
    wall, cpu, rss = map(float, result.stdout.split())
    return wall, cpu, rss


_READERS: dict = {}


def _read_share(args) -> tuple[int, float]:
    path, start, stop = args
    from slidemill.shared.tilestore import open_tileset

    if path not in _READERS:  # once per process, as a DataLoader worker holds its dataset
        _READERS[path] = open_tileset(path)
        _READERS[path].read(0)
    reader = _READERS[path]
    c0 = time.process_time()
    for i in range(start, stop):
        reader.read(i)
    return stop - start, time.process_time() - c0


def read_back(tileset: Path, workers: int) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (all processes) and tiles read: every tile (image + mask) of a
    tileset in `workers` processes."""
    import multiprocessing

    from slidemill.shared.tilestore import open_tileset

    n = len(open_tileset(tileset))
    bounds = [round(n * k / workers) for k in range(workers + 1)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        # start-up (imports, opening the slide) outside the timing: one task per process
        pool.map(_read_share, [(tileset, 0, 1)] * workers, chunksize=1)
        time.sleep(0.5)
        pool.map(_read_share, [(tileset, 0, 1)] * (4 * workers), chunksize=1)
        t0 = time.perf_counter()
        parts = pool.map(_read_share, [(tileset, bounds[k], bounds[k + 1]) for k in range(workers)], chunksize=1)
    return time.perf_counter() - t0, sum(p[1] for p in parts), sum(p[0] for p in parts)


_READ_ALL = """
import resource, sys, time
from slidemill.shared.tilestore import open_tileset
from slidemill.train.data import load_tilesets
t0 = time.perf_counter()
data = load_tilesets([sys.argv[1]])
index_s = time.perf_counter() - t0
reader = open_tileset(sys.argv[1])
step = max(1, len(reader) // 5000)
for i in range(0, len(reader), step):
    image, mask = reader.read(i)
print(len(data.samples), len(reader), index_s, time.perf_counter() - t0,
      resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def read_all(tileset: Path) -> tuple[int, float, float, float]:
    """Train's dataset index (`load_tilesets`) and tiles read (`open_tileset(...).read(i)`, every
    tile up to 5,000, else an even sample of 5,000) in a fresh process: (tiles, seconds to build the
    index, seconds in all, peak RSS in MB)."""
    result = subprocess.run([sys.executable, "-c", _READ_ALL, str(tileset)], check=True, capture_output=True,
                            text=True)
    samples, count, index_s, total_s, rss = result.stdout.split()
    assert int(samples) == int(count)
    return int(count), float(index_s), float(total_s), float(rss)


def memory_runs(work: Path, tiles: int, workers: int, size: int = 0, slide: Path | None = None) -> None:
    """Peak resident memory of `slidemill-tile --store refs` (64 px tiles, masks drawn) at `tiles`
    tiles and at 1/16 of them, and of reading each tileset back as train does: memory should not
    grow with the tile count."""
    mt = 64
    side = max(size, math.ceil(math.sqrt(tiles)) * mt)
    big = work / "memory.tiff"
    if slide is not None and side == size:
        big = slide
    elif not big.exists():
        make_slide(big, side)
    write_annotations(work / "memory.geojson", side)
    for tile_px in (mt * 4, mt):
        count = (-(-side // tile_px)) ** 2
        out = work / f"out-memory-{tile_px}"
        wall, _, rss = run_tile(big, out, tile_px, workers, "refs", work / "memory.geojson")
        print(f"memory: slidemill-tile --store refs, {count} tiles of {tile_px} px with masks ({workers} worker(s)): "
              f"{wall:.1f} s, peak {rss:.0f} MB in the largest process")
        read, index_s, total_s, read_rss = read_all(out)
        print(f"memory: reading it back ({read} tiles: train's index in {index_s:.1f} s, then up to 5,000 "
              f"tiles read, {total_s:.1f} s in all): peak {read_rss:.0f} MB")


def scaling_rounds(slide: Path, work: Path, tile: int, workers: int, annotations: Path, rounds: int,
                   megapixels: float) -> None:
    """`rounds` pairs of zarr runs, N workers then 1, back to back: each pair's wall-clock ratio (the
    machine's load changes less within a pair) and CPU-seconds of each, with the load average and, as
    the baseline, the machine's own scaling right before (`decode_scaling`)."""
    ratios, machine = [], []
    for r in range(rounds):
        load = os.getloadavg()[0]
        machine.append(decode_scaling(slide, workers))
        wall_n, cpu_n, _ = run_tile(slide, work / "out-scale-n", tile, workers, "zarr", annotations)
        wall_1, cpu_1, _ = run_tile(slide, work / "out-scale-1", tile, 1, "zarr", annotations)
        ratios.append(wall_1 / wall_n)
        print(f"scaling round {r + 1}: zarr {workers} workers {megapixels / wall_n:.1f} MP/s ({cpu_n:.1f} CPU-s), "
              f"1 worker {megapixels / wall_1:.1f} MP/s ({cpu_1:.1f} CPU-s): {ratios[-1]:.2f}x; JPEG decoding in "
              f"{workers} processes at once just before: {machine[-1]:.2f}x one (load average {load:.1f} before)")
    order = sorted(range(rounds), key=lambda k: ratios[k])
    mid = order[len(order) // 2]
    print(f"ratio zarr {workers} workers / 1 worker over {rounds} round(s): median {ratios[mid]:.2f}, "
          f"best {max(ratios):.2f} (aim >= 1.7 with 2); the machine's own {workers}-process scaling in those "
          f"rounds: {min(machine):.2f}-{max(machine):.2f}; tile's scaling as a share of the machine's, median "
          f"{sorted(r / m for r, m in zip(ratios, machine, strict=True))[len(ratios) // 2]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=20480, help="slide width and height (>= 20000)")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--workers", type=int, default=0, help="slidemill-tile workers; 0 = one per core")
    parser.add_argument("--memory-tiles", type=int, default=100_000, help="tiles of the memory run (0: skip)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of the worker-scaling pair (zarr with N workers, then with 1), each its own ratio")
    parser.add_argument("--tiles", type=int, default=0,
                        help="only the memory run, at this many tiles (e.g. 100000): peak RSS of tile and reader")
    parser.add_argument("--keep", type=Path, help="keep the slide and outputs in this folder")
    parser.add_argument("--content", choices=["synthetic", "he"], default="synthetic",
                        help="the slide's pixels: synthetic (shapes and noise, testing.render_tile) or he (real H&E, "
                             "CMU-1-Small-Region from ../shared/data mirrored over the plane); the codecs' speeds "
                             "depend on it")
    parser.add_argument("--skip-plain", action="store_true",
                        help="leave out the plain loop (the slowest part: ~100 s at the default size)")
    args = parser.parse_args()
    from slidemill.shared.cli import worker_count

    workers = worker_count(args.workers)
    work = args.keep or Path(tempfile.mkdtemp(prefix="slidemill-bench-tile-"))
    work.mkdir(parents=True, exist_ok=True)
    slide = work / ("synthetic-jpeg.tiff" if args.content == "synthetic" else "he-jpeg.tiff")
    annotations = work / "synthetic.geojson"
    try:
        if args.tiles:
            memory_runs(work, args.tiles, workers)
            load = os.getloadavg()
            print(f"cpu cores: {os.cpu_count()}, load average: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
            return
        if not slide.exists():
            seconds = make_slide(slide, args.size, args.content)
            print(f"slide: {args.size} x {args.size} px JPEG pyramid of {args.content} pixels, "
                  f"{slide.stat().st_size / 1e6:.0f} MB, "
                  f"made in {seconds:.1f} s")
        write_annotations(annotations, args.size)
        t = args.tile_size
        n_tiles = (-(-args.size // t)) ** 2
        megapixels = n_tiles * t * t / 1e6

        decode_s, decode_cpu, decoded_mp = run_decode_ceiling(slide)
        ceiling = decoded_mp / decode_s
        print(f"decode ceiling (level-0 JPEG tiles, 1 thread): {decoded_mp:.0f} MP in {decode_s:.1f} s "
              f"= {ceiling:.1f} MP/s ({decoded_mp / decode_cpu:.1f} MP per CPU-second)")

        rates: dict[str, float] = {}
        runs = [("png", workers, ()), ("zarr", workers, ()), ("zarr", workers, ("--codec", "jpeg-q95")),
                ("refs", workers, ()), ("zarr", 1, ())]
        for store, n, extra in runs:
            label = f"{store}{' ' + extra[1] if extra else ''}, {n} worker(s)"
            wall, cpu, rss = run_tile(slide, work / f"out-{store}-{n}-{len(extra)}", t, n, store, annotations, *extra)
            rates[label] = megapixels / wall
            out = work / f"out-{store}-{n}-{len(extra)}"
            size_mb = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 1e6
            files = sum(1 for f in out.rglob("*") if f.is_file())
            print(f"slidemill-tile --store {label}: {n_tiles} tiles of {t} px + masks, {megapixels:.0f} MP in "
                  f"{wall:.1f} s = {rates[label]:.1f} MP/s ({megapixels / cpu:.1f} MP per CPU-second; "
                  f"{size_mb:.0f} MB in {files} files; peak {rss:.0f} MB)")
        png, zarr_n, zarr_1 = (rates[f"png, {workers} worker(s)"], rates[f"zarr, {workers} worker(s)"],
                               rates["zarr, 1 worker(s)"])
        read_s, read_cpu, count = read_back(work / f"out-refs-{workers}-0", workers)
        refs_read = count * t * t / 1e6 / read_s
        refs_cpu = count * t * t / 1e6 / read_cpu
        print(f"refs tileset read back as train reads it ({workers} process(es), image from the slide + mask): "
              f"{count} tiles in {read_s:.1f} s = {refs_read:.1f} MP/s ({refs_cpu:.1f} MP per CPU-second)")

        single_s, strips_s, count = unaligned_reads(slide, 256)
        print(f"unaligned grid (--mpp 0.37, 256 px, 1.48 level-0 px per tile px): {count} tiles read one by one in "
              f"{single_s:.1f} CPU-s, in strips of a batch in {strips_s:.1f} CPU-s: {single_s / strips_s:.2f}x")

        plain = None
        if not args.skip_plain:
            plain_s, plain_cpu, count = run_plain_loop(slide, work / "plain-out", t, args.size)
            plain_mp = count * t * t / 1e6
            plain = plain_mp / plain_s
            print(f"plain loop (openslide read_region + PIL PNG save, 1 process, no masks): {plain_mp:.0f} MP in "
                  f"{plain_s:.1f} s = {plain:.1f} MP/s ({plain_mp / plain_cpu:.1f} MP per CPU-second)")

        print(f"ratio refs read / (decode ceiling x {workers}): {refs_read / (ceiling * workers):.2f} wall-clock, "
              f"{refs_cpu / (decoded_mp / decode_cpu):.2f} per CPU-second (aim >= 0.5)")
        print(f"ratio zarr / png store ({workers} worker(s), masks written): {zarr_n / png:.2f} (aim >= 2)")
        print(f"ratio zarr {workers} workers / 1 worker: {zarr_n / zarr_1:.2f} (aim >= 1.7 with 2)")
        scaling_rounds(slide, work, t, workers, annotations, args.rounds, megapixels)
        if plain is not None:
            print(f"ratio png store / plain loop: {png / plain:.2f}; zarr / plain loop: {zarr_n / plain:.2f}")

        if args.memory_tiles:
            memory_runs(work, args.memory_tiles, workers, args.size, slide)
        load = os.getloadavg()
        print(f"cpu cores: {os.cpu_count()}, load average after the run: {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} "
              "(other work on the machine slows the wall-clock figures, not the per-CPU-second ones)")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
