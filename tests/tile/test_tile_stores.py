"""The three tile stores (png, zarr, refs): the same pixels for the lossless ones, read back through
the one shared reader; killed runs leave nothing complete; old manifests still read."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from slidemill.shared.contracts import TileSet, load_contract
from slidemill.shared.errors import ContractError, MissingInputError
from slidemill.shared.testing import write_synthetic_slide
from slidemill.shared.tilestore import open_tileset
from slidemill.shared.tiletable import ROWS_NAME, read_tile_table, tile_records

CMD = str(Path(sys.executable).parent / "slidemill-tile")
OPTIONS = {"tile_size_px": 96, "overlap_px": 16, "mpp": 0.5, "tissue_threshold": 0.05}


@pytest.fixture(scope="module")
def reference(synthetic, synthetic_geojson):
    """Every tile cut from the slide in memory (no store involved)."""
    from slidemill.tile import iter_tiles

    return list(iter_tiles(synthetic, annotations=[synthetic_geojson], **OPTIONS))


def _run(synthetic, synthetic_geojson, out, **extra):
    from slidemill.tile import TileConfig, run

    return run(TileConfig(slide=synthetic, out=out, annotations=[synthetic_geojson], workers=1, **OPTIONS, **extra))


@pytest.mark.parametrize("store", ["png", "zarr", "refs"])
def test_lossless_stores_give_the_cut_pixels(tmp_path, synthetic, synthetic_geojson, reference, store):
    from slidemill.tile import iter_tiles

    out = tmp_path / store
    result = _run(synthetic, synthetic_geojson, out, store=store)
    tileset = load_contract(out / "tileset.json", TileSet)
    assert tileset.store.kind == store and tileset.schema_version == "1.2"
    assert len(tile_records(out)) == len(reference) > 10
    if store == "png":
        assert (out / "tiles").is_dir() and not (out / "tiles.zarr.zip").exists()
    else:
        assert not (out / "tiles").exists() and (out / "tiles.zarr.zip").is_file()
        assert all(t.image is None and t.mask is None for t in tile_records(out))
    if store == "refs":
        assert tileset.store.slide_path == f"../../{synthetic.parent.name}/{synthetic.name}" or \
            (out / tileset.store.slide_path).resolve() == synthetic.resolve()
        assert (out / "shapes.json").is_file()
    read = list(iter_tiles(out))  # the tile tool's API reads a tileset through the shared reader
    for ref, got, record in zip(reference, read, tile_records(out), strict=True):
        assert np.array_equal(ref.image, got.image)
        assert np.array_equal(ref.mask, got.mask)
        assert (got.x, got.y) == (ref.x, ref.y) == (record.x, record.y)
        assert record.class_fractions == ref.class_fractions
    assert result.tiles_written == len(reference)


def test_lossy_container_is_close_and_masks_exact(tmp_path, synthetic, synthetic_geojson, reference):
    out = tmp_path / "jpeg"
    _run(synthetic, synthetic_geojson, out, store="zarr", image_codec="jpeg-q95")
    reader = open_tileset(out)
    assert reader.tileset.store.lossless is False and reader.tileset.store.image_codec == "jpeg-q95"
    for i, ref in enumerate(reference):
        image, mask = reader.read(i)
        assert np.array_equal(mask, ref.mask)
        mse = np.mean((image.astype(float) - ref.image) ** 2)
        assert 0 < mse and 10 * np.log10(255 ** 2 / mse) > 38  # lossy, but high quality


def test_container_is_a_plain_zarr(tmp_path, synthetic, synthetic_geojson, reference):
    import zarr
    from imagecodecs.numcodecs import register_codecs

    register_codecs(verbose=False)
    out = tmp_path / "z"
    _run(synthetic, synthetic_geojson, out, store="zarr")
    group = zarr.open_group(zarr.ZipStore(str(out / "tiles.zarr.zip"), mode="r"), mode="r")
    assert group["images"].shape == (len(reference), 96, 96, 3)
    assert np.array_equal(group["images"][3], reference[3].image)
    assert np.array_equal(group["masks"][len(reference) - 1], reference[-1].mask)


def test_refs_slide_moved(tmp_path, synthetic, synthetic_geojson, reference):
    out = tmp_path / "deep" / "refs"
    _run(synthetic, synthetic_geojson, out, store="refs")
    moved = tmp_path / "elsewhere"
    shutil.copytree(out, moved)  # the relative slide path no longer resolves
    with pytest.raises(MissingInputError, match="--slide"):
        open_tileset(moved)
    for given in (synthetic, synthetic.parent):  # the slide file, or its folder
        image, mask = open_tileset(moved, slide=given).read(2)
        assert np.array_equal(image, reference[2].image) and np.array_equal(mask, reference[2].mask)


def test_refs_without_annotations_stores_positions_only(tmp_path, synthetic):
    from slidemill.tile import TileConfig, iter_tiles, run

    out = tmp_path / "refs"
    run(TileConfig(slide=synthetic, out=out, store="refs", workers=1, **OPTIONS))
    reader = open_tileset(out)
    assert reader.tileset.classes is None and not (out / "shapes.json").exists()
    ref = list(iter_tiles(synthetic, **OPTIONS))
    image, mask = reader.read(len(ref) - 1)
    assert mask is None and np.array_equal(image, ref[-1].image)


def test_schema_1_0_manifest_reads_as_png(tmp_path, synthetic, synthetic_geojson, reference):
    out = tmp_path / "old"
    _run(synthetic, synthetic_geojson, out, store="png")
    data = json.loads((out / "tileset.json").read_text())
    data["schema_version"] = "1.0"
    del data["store"]
    (out / "tileset.json").write_text(json.dumps(data))
    reader = open_tileset(out)
    assert reader.tileset.store.kind == "png"
    image, mask = reader.read(1)
    assert np.array_equal(image, reference[1].image) and np.array_equal(mask, reference[1].mask)


@pytest.mark.parametrize(("store", "sig", "workers"), [("zarr", signal.SIGKILL, 1), ("refs", signal.SIGKILL, 1),
                                                       ("png", signal.SIGKILL, 1), ("zarr", signal.SIGTERM, 1),
                                                       ("zarr", signal.SIGKILL, 2), ("zarr", signal.SIGTERM, 2)])
def test_killed_run_leaves_nothing_complete(tmp_path, store, sig, workers, synthetic_geojson):
    slide = write_synthetic_slide(tmp_path / "big.tiff", 3000, 3000, mpp=0.25, tile=256)
    out = tmp_path / "out"
    # refs reads no pixel: the masks are its work, so it gets annotations
    extra = ["--annotations", str(synthetic_geojson)] if store == "refs" else []
    proc = subprocess.Popen([CMD, str(slide), "--out", str(out), "--tile-size", "32", "--overlap", "0",
                             "--all-tiles", "--mpp", "0.25", "--workers", str(workers), "--store", store, *extra],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not any(p.name.startswith(".out.") for p in tmp_path.iterdir()):
        time.sleep(0.02)
    time.sleep(0.3)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert not out.exists()
    if sig == signal.SIGTERM:
        assert proc.returncode == 130, err
        assert [p.name for p in tmp_path.iterdir()] == ["big.tiff"]
    else:  # nothing cleans up after SIGKILL: what is left is a hidden staging folder, never out/
        left = [p.name for p in tmp_path.iterdir() if p.name != "big.tiff"]
        assert all(name.startswith(".out.") and name.endswith(".partial") for name in left)
        # killed while the tiles came: the manifest (written last) is not there to vouch for the rows
        assert not any((tmp_path / name / "tileset.json").exists() for name in left)
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_rows_are_streamed_to_a_rows_file_and_read_back_exactly(tmp_path, synthetic, synthetic_geojson, reference):
    """Schema 1.2: the manifest holds the count and the rows file's name, no row; the rows file has one
    TileRecord a line in index order, and the reader's table gives each record back unchanged."""
    out = tmp_path / "refs"
    _run(synthetic, synthetic_geojson, out, store="refs")
    data = json.loads((out / "tileset.json").read_text())
    assert data["tiles"] == [] and data["tiles_file"] == ROWS_NAME and data["tile_count"] == len(reference)
    lines = (out / ROWS_NAME).read_text().splitlines()
    assert len(lines) == len(reference)
    written = [json.loads(line) for line in lines]
    assert [w["index"] for w in written] == list(range(len(reference)))
    reader = open_tileset(out)
    assert len(reader) == len(reference)
    for line, record, ref in zip(written, reader.records(), reference, strict=True):
        assert record.model_dump(exclude_none=True) == line
        assert (record.x, record.y, record.row, record.col) == (ref.x, ref.y, ref.row, ref.col)
        assert record.class_fractions == ref.class_fractions
    table = reader.table
    assert table.rows["x"].tolist() == [r.x for r in reference]
    assert table.rows.nbytes + table.fractions.nbytes < 200 * len(reference)  # compact columns, not objects


@pytest.mark.parametrize("store", ["png", "zarr"])
def test_manifest_with_inline_rows_still_reads(tmp_path, synthetic, synthetic_geojson, reference, store):
    """A 1.1 manifest (rows inline in `tiles`, no rows file) reads to the same records and pixels."""
    from slidemill.train.data import load_tilesets

    out = tmp_path / store
    _run(synthetic, synthetic_geojson, out, store=store)
    data = json.loads((out / "tileset.json").read_text())
    data["schema_version"] = "1.1"
    data["tiles"] = [json.loads(line) for line in (out / ROWS_NAME).read_text().splitlines()]
    del data["tiles_file"], data["tile_count"]
    (out / ROWS_NAME).unlink()
    (out / "tileset.json").write_text(json.dumps(data))
    reader = open_tileset(out)
    assert [r.model_dump(exclude_none=True) for r in reader.records()] == data["tiles"]
    for i in (0, len(reference) - 1):
        image, mask = reader.read(i)
        assert np.array_equal(image, reference[i].image) and np.array_equal(mask, reference[i].mask)
    samples = load_tilesets([out]).samples
    assert [(s.x, s.y) for s in samples] == [(r.x, r.y) for r in reference]


def test_incomplete_or_bad_rows_file_is_refused(tmp_path, synthetic, synthetic_geojson, reference):
    out = tmp_path / "zarr"
    _run(synthetic, synthetic_geojson, out, store="zarr")
    rows = out / ROWS_NAME
    lines = rows.read_text().splitlines(keepends=True)
    rows.write_text("".join(lines[:-1]))  # a copy cut short
    with pytest.raises(ContractError, match=f"holds {len(lines) - 1} tile rows but its manifest lists {len(lines)}"):
        open_tileset(out)
    rows.write_text("".join(lines + lines[-1:]))
    with pytest.raises(ContractError, match="more than"):
        open_tileset(out)
    swapped = [lines[1], lines[0], *lines[2:]]
    rows.write_text("".join(swapped))
    with pytest.raises(ContractError, match="0..n-1 in order"):
        open_tileset(out)
    rows.write_text("".join([*lines[:3], '{"index": 3}\n', *lines[4:]]))
    with pytest.raises(ContractError, match="line 4 is not a valid tile row"):
        open_tileset(out)
    rows.unlink()
    with pytest.raises(MissingInputError, match="tiles.jsonl"):
        read_tile_table(out / "tileset.json", load_contract(out / "tileset.json", TileSet))


def test_refs_slide_path_goes_up_but_is_never_absolute(tmp_path, synthetic_geojson, reference, synthetic):
    """The slide of a refs tileset lives outside it: its path may go up with '..' (the one manifest path
    that may), so a project folder holding slides/ and tilesets/ moves as a whole; an absolute path is
    refused when the manifest is read, and the tileset's own files never leave its folder."""
    project = tmp_path / "project"
    (project / "slides").mkdir(parents=True)
    shutil.copy(synthetic, project / "slides" / synthetic.name)
    out = project / "tilesets" / "a"
    from slidemill.tile import TileConfig, run

    run(TileConfig(slide=project / "slides" / synthetic.name, out=out, annotations=[synthetic_geojson], workers=1,
                   store="refs", **OPTIONS))
    data = json.loads((out / "tileset.json").read_text())
    assert data["store"]["slide_path"] == f"../../slides/{synthetic.name}"
    moved = tmp_path / "moved"
    shutil.move(project, moved)  # the whole project moves: the relative path still resolves
    image, mask = open_tileset(moved / "tilesets" / "a").read(2)
    assert np.array_equal(image, reference[2].image) and np.array_equal(mask, reference[2].mask)
    for bad in (str(moved / "slides" / synthetic.name), "C:/slides/x.tiff", "..\\slides\\x.tiff"):
        data["store"]["slide_path"] = bad
        (moved / "tilesets" / "a" / "tileset.json").write_text(json.dumps(data))
        with pytest.raises(ContractError, match="must be relative"):
            open_tileset(moved / "tilesets" / "a")
    data["store"]["slide_path"] = f"../../slides/{synthetic.name}"
    data["tiles_file"] = "../rows.jsonl"
    (moved / "tilesets" / "a" / "tileset.json").write_text(json.dumps(data))
    with pytest.raises(ContractError, match="leaves the manifest's folder"):
        open_tileset(moved / "tilesets" / "a")


def test_container_stores_with_workers_give_the_cut_pixels(tmp_path, synthetic, synthetic_geojson):
    """Two workers write their chunks straight into the zip, each batch at the next free offset:
    the container holds the pixels cut in memory, and it is a zip whose every entry checks out."""
    import zipfile

    from slidemill.tile import TileConfig, api, iter_tiles, run

    options = {"tile_size_px": 48, "overlap_px": 0, "mpp": 0.5, "tissue_threshold": 0.05}
    reference = list(iter_tiles(synthetic, annotations=[synthetic_geojson], **options))
    assert len(reference) >= 2 * api.MIN_TILES_PER_WORKER  # so that two workers are used
    for store in ("zarr", "refs"):
        out = tmp_path / store
        result = run(TileConfig(slide=synthetic, out=out, annotations=[synthetic_geojson], workers=2, store=store,
                                **options))
        assert json.loads((out / "report.json").read_text())["counts"]["workers"] == 2
        with zipfile.ZipFile(out / "tiles.zarr.zip") as archive:
            assert archive.testzip() is None  # every entry's header and CRC-32
            arrays = 2 if store == "zarr" else 1  # images and masks, or masks only
            assert len(archive.namelist()) == len(reference) * arrays + 2 + arrays  # .zgroup, .zattrs, .zarray
        reader = open_tileset(out)
        assert len(reader) == len(reference) == result.tiles_written
        for i, (ref, record) in enumerate(zip(reference, reader.records(), strict=True)):
            image, mask = reader.read(i)
            assert np.array_equal(image, ref.image) and np.array_equal(mask, ref.mask), (store, i)
            assert record.class_fractions == ref.class_fractions


def test_script_without_main_guard_gets_a_paragraph_not_a_broken_pool(tmp_path, synthetic):
    """Worker processes import the calling script again (spawn and forkserver), so an unguarded
    `iter_tiles(..., workers=2)` at a script's top level breaks the pool: the user reads a
    WorkerError that names the script and the `if __name__ == "__main__":` rule."""
    script = tmp_path / "cut_tiles.py"
    script.write_text(
        "from slidemill.tile import iter_tiles\n"
        f"tiles = list(iter_tiles({str(synthetic)!r}, workers=2, tile_size_px=48, overlap_px=0, mpp=0.5,\n"
        "                       tissue_threshold=0.05))\n"
        "print(len(tiles))\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    # the traceback's last line, which Python's resource tracker may follow with a warning of its own
    errors = [line for line in result.stderr.splitlines() if line.startswith("slidemill.shared.errors.WorkerError")]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("slidemill.shared.errors.WorkerError: a worker process cutting tiles of")
    assert str(script) in errors[0] and 'if __name__ == "__main__":' in errors[0] and "workers=1" in errors[0]


def _grandchildren(pid: int) -> list[int]:
    """The processes two levels below `pid` (Linux /proc): the workers the fork server forked."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    children = {p for p, parent in parents.items() if parent == pid}
    return [p for p, parent in parents.items() if parent in children]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc")
def test_a_killed_worker_ends_the_run_with_a_paragraph_and_no_zip(tmp_path):
    """A worker killed mid-run (as the out-of-memory killer does) ends the run promptly with exit 2 and
    the WorkerError paragraph; the container is never finished, and only the failed report is left."""
    slide = write_synthetic_slide(tmp_path / "big.tiff", 3000, 3000, mpp=0.25, tile=256)
    out = tmp_path / "out"
    proc = subprocess.Popen([CMD, str(slide), "--out", str(out), "--tile-size", "32", "--overlap", "0",
                             "--all-tiles", "--mpp", "0.25", "--workers", "2", "--store", "zarr"],
                            stderr=subprocess.PIPE, text=True)
    deadline, workers = time.time() + 60, []
    while time.time() < deadline and len(workers) < 2:
        workers = _grandchildren(proc.pid)
        time.sleep(0.05)
    assert proc.poll() is None and workers, "the run ended before a worker could be killed"
    time.sleep(0.3)
    os.kill(workers[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert "a worker process cutting tiles of big.tiff ended abruptly" in err and "--workers 1" in err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.tiff", "out.report.json"]  # no staging folder
    assert json.loads((tmp_path / "out.report.json").read_text())["status"] == "failed"
