"""A minimal, fast, lossless PNG writer for 8-bit RGB tiles and single-channel masks.

Every row uses PNG's "sub" filter (each byte minus the same channel of the pixel to its left, one
numpy subtraction for the whole image) and the stream is compressed by libdeflate (through
imagecodecs, already a slidemill dependency). `benchmarks/png.py` (32 H&E tiles of 512 px from
CMU-1-Small-Region, one thread): 4.5x the speed of cv2.imencode at compression 1 and 3.7x that of
imagecodecs.png_encode (libpng) at level 1, for files 7 % larger (their adaptive filters pack H&E
better); on masks 1.9x the speed and 26 % smaller. Speed is what the PNG store pays for, so the
trade is kept. The files are plain PNG (IHDR, one IDAT, IEND) that every reader opens.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import imagecodecs
import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(tag: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload))


def encode_png(image: np.ndarray, level: int = 1) -> bytes:
    """PNG bytes of a uint8 (H, W) grey or (H, W, 3) RGB image; `level` 0-12 (libdeflate)."""
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"expected uint8 (H, W) or (H, W, 3), got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    ch = 1 if image.ndim == 2 else 3
    rows = np.ascontiguousarray(image).reshape(h, w * ch)
    filtered = np.empty((h, w * ch + 1), np.uint8)
    filtered[:, 0] = 1  # filter type "sub"
    filtered[:, 1:1 + ch] = rows[:, :ch]
    np.subtract(rows[:, ch:], rows[:, :-ch], out=filtered[:, 1 + ch:])  # wraps modulo 256, as PNG wants
    data = imagecodecs.deflate_encode(filtered.tobytes(), level=level)  # zlib stream (header + adler32)
    header = struct.pack(">IIBBBBB", w, h, 8, 2 if ch == 3 else 0, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def write_png(path: str | Path, image: np.ndarray, level: int = 1) -> None:
    with open(path, "wb") as handle:
        handle.write(encode_png(image, level))
