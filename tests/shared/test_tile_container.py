"""The tile container's zip writer: batches of entries written by several processes at once, each
at the next free offset, and entries put by the writing process, make one zip that Python's zipfile
checks entry by entry (CRC-32 included) and a zarr group that reads every chunk back; ZIP64 where
the entries outnumber 65,535."""

import multiprocessing
import zipfile

import numpy as np
import pytest
import zarr

from slidemill.shared.tilestore import ContainerWriter, EntryBatch, encode_chunk, image_codec, mask_codec


def _tile(i: int, px: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels that differ from tile to tile and from pixel to pixel."""
    values = (np.arange(px * px * 3, dtype=np.int64).reshape(px, px, 3) * 7 + i * 131) % 256
    return values.astype(np.uint8), (values[..., 0] % 5).astype(np.uint8)


def _encoded(i: int, px: int) -> tuple[bytes, bytes]:
    image, mask = _tile(i, px)
    return encode_chunk(image_codec("blosc-lz4"), image), encode_chunk(mask_codec(), mask)


def _append_batch(args):
    """A worker's part: encode tiles [lo, hi) and append them as one batch."""
    appender, date_time, lo, hi, px = args
    batch = EntryBatch(date_time)
    for i in range(lo, hi):
        batch.add(i, *_encoded(i, px))
    return appender.append(batch), batch.entries


_APPENDER = None


def _init(appender):
    global _APPENDER
    _APPENDER = appender


def _append_in_worker(args):
    return _append_batch((_APPENDER, *args))


def _check(path, tiles, read=None):
    """The zip checks out entry by entry, and zarr reads back the tiles `read` (all by default)."""
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None  # every entry's local header and CRC-32
        names = archive.namelist()
    assert len(names) == len(set(names)) == 2 * len(tiles) + 4  # .zgroup, .zattrs, two .zarray
    group = zarr.open_group(zarr.ZipStore(str(path), mode="r"), mode="r")
    for i in range(len(tiles)) if read is None else read:
        assert np.array_equal(group["images"][i], tiles[i][0]) and np.array_equal(group["masks"][i], tiles[i][1])


def test_batches_from_two_processes_and_puts_make_one_valid_zip(tmp_path):
    px, count = 16, 60
    tiles = [_tile(i, px) for i in range(count)]
    path = tmp_path / "tiles.zarr.zip"
    writer = ContainerWriter(path, count, px, codec="blosc-lz4", masks=True)
    writer.put(0, *_encoded(0, px))  # before the workers: at the end of the file, by this process
    context = multiprocessing.get_context("spawn")
    appender = writer.appender(context)
    jobs = [(writer.date_time, lo, min(lo + 7, count - 1), px) for lo in range(1, count - 1, 7)]
    with context.Pool(2, initializer=_init, initargs=(appender,)) as pool:
        for at, entries in pool.imap(_append_in_worker, jobs):
            writer.listed(at, entries)
    writer.put(count - 1, *_encoded(count - 1, px))  # after them, through the shared end
    writer.close()
    _check(path, tiles)


def test_more_entries_than_a_plain_zip_holds_use_zip64(tmp_path):
    px, count = 1, 33_000  # 66,004 entries
    tiles = [_tile(i, px) for i in range(count)]
    path = tmp_path / "tiles.zarr.zip"
    writer = ContainerWriter(path, count, px, codec="blosc-lz4", masks=True)
    for i in range(100):
        writer.put(i, *_encoded(i, px))
    appender = writer.appender(multiprocessing.get_context("spawn"))
    for lo in range(100, count, 4000):
        writer.listed(*_append_batch((appender, writer.date_time, lo, min(lo + 4000, count), px)))
    writer.close()
    with open(path, "rb") as handle:
        assert b"PK\x06\x06" in handle.read()[-200:]  # the ZIP64 end of central directory record
    _check(path, tiles, read=[0, 99, 100, 4099, 4100, count - 1])


def test_an_aborted_container_is_not_a_zip(tmp_path):
    """A failed run aborts the writer: no central directory, so nothing can read it as complete."""
    path = tmp_path / "tiles.zarr.zip"
    writer = ContainerWriter(path, 2, 8, codec="blosc-lz4", masks=True)
    writer.put(0, *_encoded(0, 8))
    writer.abort()
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(path)


def _take_the_lock_and_die(end):
    import os
    import signal

    end.get_lock().acquire()
    os.kill(os.getpid(), signal.SIGKILL)


def test_close_does_not_wait_for_a_lock_a_killed_worker_held(tmp_path):
    """A worker killed while it held the counter's lock never releases it; closing (or aborting)
    afterwards must not wait for it."""
    path = tmp_path / "tiles.zarr.zip"
    writer = ContainerWriter(path, 1, 8, codec="blosc-lz4", masks=True)
    context = multiprocessing.get_context("spawn")
    appender = writer.appender(context)
    worker = context.Process(target=_take_the_lock_and_die, args=(appender.end,))
    worker.start()
    worker.join(60)
    writer.close()  # would block for ever reading the counter through its lock
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None
