"""A stream-optimized VMDK's virtual disk written back out: sparse raw, or raw in zstd frames.

Grains come from :class:`~.reader.VmdkReader` in file order (inflated and validated there);
all-zero grains and unwritten ranges become holes (raw) or RLE zero frames (zstd), so time and
memory follow the stored grains, not the capacity.  Outputs go through atomic.atomic_output:
nothing is left under the output name on any error.
"""

from __future__ import annotations

import functools
import io
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from ..atomic import atomic_output
from .layout import SECTOR
from .reader import VmdkReader, is_zero

__all__ = ["ExtractResult", "extract_raw", "extract_zst", "write_raw", "write_zst"]

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ExtractResult:
    """What an extraction wrote."""

    path: str
    size_bytes: int                  # virtual disk size written
    bytes_written: int               # data bytes written (holes excluded for sparse output)
    grains: int                      # grain markers read
    zero_grains: int                 # stored grains that were all zero
    hole_bytes: int                  # bytes left as holes (sparse) or written as zeros


def extract_raw(reader: VmdkReader, out_path: str | os.PathLike[str], *,
                sparse: bool = True, workers: int = 1) -> ExtractResult:
    """Write the virtual disk as a raw image of exactly capacity bytes.

    Unwritten and all-zero grains become holes (sparse=True) or written zeros. The image is
    written under a temporary name and renamed to OUT only when complete.
    """
    with atomic_output(out_path, fsync=False) as out:
        return write_raw(reader, out, path=os.fspath(out_path), sparse=sparse, workers=workers)


def write_raw(reader: VmdkReader, out: BinaryIO, *, path: str,
              sparse: bool = True, workers: int = 1) -> ExtractResult:
    """extract_raw into an open, seekable, empty file (``path`` names it in the result).

    ``workers`` threads inflate the grains and each pwrites its own grain at the grain's
    offset: the bytes are the same whatever their number, and a grain is freed by the thread
    that made it (handing 64 KiB grains to the main thread to write cost 20x the page
    faults: each worker's malloc arena grew and shrank per grain).  An output without a
    descriptor (/dev/null's discard, an in-memory file) is written here, in order."""
    total = reader.capacity_bytes
    out.flush()
    try:
        fd: int | None = out.fileno()
    except (OSError, io.UnsupportedOperation):
        fd = None
    grains = zero_grains = written = 0
    cursor = 0          # bytes of the image accounted for (data written or hole)
    for lba, placed in reader.map_grains(functools.partial(_place, fd), workers=workers):
        grains += 1
        if placed is None:
            zero_grains += 1
            continue
        start = lba * SECTOR
        if not sparse and start > cursor:
            _zeros_at(out, fd, cursor, start - cursor)
        if isinstance(placed, bytes):
            out.seek(start)
            out.write(placed)
            placed = len(placed)
        written += placed
        cursor = start + placed
    if not sparse and total > cursor:
        _zeros_at(out, fd, cursor, total - cursor)
    if fd is None:
        out.truncate(total)
    else:
        os.ftruncate(fd, total)
    holes = total - written
    return ExtractResult(path, total, written if sparse else total, grains, zero_grains, holes)


def _place(fd: int | None, lba: int, grain: bytes) -> int | bytes | None:
    """In the inflating thread: None for a zero grain; else write it at its offset and give
    its length -- or, without a descriptor to write to, give the grain to the main thread."""
    if is_zero(grain):
        return None
    if fd is None:
        return grain
    _pwrite_all(fd, memoryview(grain), lba * SECTOR)
    return len(grain)


def _zeros_at(out: BinaryIO, fd: int | None, offset: int, n: int) -> None:
    if fd is None:
        out.seek(offset)
        _write_zeros(out, n)
    else:
        _pwrite_zeros(fd, offset, n)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _pwrite_zeros(fd: int, offset: int, n: int) -> None:
    zeros = memoryview(bytes(min(n, _CHUNK)))
    while n > 0:
        k = min(n, len(zeros))
        _pwrite_all(fd, zeros[:k], offset)
        offset, n = offset + k, n - k


class _DataGrains:
    """The non-zero grains of a walk as (byte offset, bytes), counting what it passes over."""

    def __init__(self, reader: VmdkReader, workers: int) -> None:
        self._reader = reader
        self._workers = workers
        self.grains = 0
        self.zero_grains = 0

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        for lba, grain in self._reader.iter_grains(workers=self._workers):
            self.grains += 1
            if is_zero(grain):
                self.zero_grains += 1
                continue
            yield lba * SECTOR, grain


# zstd output (RFC 8878).  Feeding a hole's zeros through the compressor costs ~10 GB/s of
# scanning: a 600 KB VMDK declaring 4 TiB took minutes.  So a hole of at least
# _ZST_HOLE_FRAME bytes ends the compressor's frame and is written as a frame of our own made
# of RLE blocks (4 bytes per 128 KiB, the same bytes zstd emits for zeros), built without
# touching the zeros; the data after it starts a new compressor frame.  Shorter holes go
# through the compressor (at most _ZST_HOLE_FRAME of zeros per data grain: the cost follows
# the data).  The frames are concatenated, as RFC 8878 section 3.1 allows.
_ZST_MAGIC = b"\x28\xb5\x2f\xfd"
_ZST_BLOCK = 128 << 10                  # Block_Maximum_Size
_ZST_HOLE_FRAME = 4 << 20               # > zstd's window at level 3: nothing is lost by a cut
# Frame_Header_Descriptor 0xC0: 8-byte Frame_Content_Size, not single-segment, no checksum,
# no dictionary; Window_Descriptor 0x38: 2**17 = 128 KiB, which every decoder accepts.
_ZST_ZERO_HEADER = _ZST_MAGIC + b"\xc0\x38"
_ZST_RLE_ZERO_BLOCK = (_ZST_BLOCK << 3 | 1 << 1).to_bytes(3, "little") + b"\0"
_ZST_RLE_ZERO_BLOCKS = _ZST_RLE_ZERO_BLOCK * 8192      # 1 GiB of zeros in 32 KiB


def _write_zst_zero_frame(out: BinaryIO, n: int) -> None:
    """One zstd frame that decodes to n (> 0) zero bytes, in time proportional to n / 128 KiB
    with a tiny constant (32 KiB writes per GiB)."""
    out.write(_ZST_ZERO_HEADER + struct.pack("<Q", n))
    full, last = divmod(n, _ZST_BLOCK)
    if last == 0:
        full, last = full - 1, _ZST_BLOCK
    per_write = len(_ZST_RLE_ZERO_BLOCKS) // len(_ZST_RLE_ZERO_BLOCK)
    while full >= per_write:
        out.write(_ZST_RLE_ZERO_BLOCKS)
        full -= per_write
    out.write(_ZST_RLE_ZERO_BLOCK * full)
    out.write((last << 3 | 1 << 1 | 1).to_bytes(3, "little") + b"\0")     # Last_Block set


def extract_zst(reader: VmdkReader, out_path: str | os.PathLike[str], *,
                level: int = 3, workers: int = 1) -> ExtractResult:
    """Write the virtual disk as zstd-compressed raw: concatenated frames (see above) that
    ``zstd -d`` turns into exactly capacity bytes.  Time and memory follow the stored grains,
    not the capacity.  On any error (or KeyboardInterrupt) nothing is left under OUT or a
    temporary name, and the error itself goes on: no frame is finished on the way out."""
    with atomic_output(out_path, fsync=False) as out:
        return write_zst(reader, out, path=os.fspath(out_path), level=level, workers=workers)


def write_zst(reader: VmdkReader, out: BinaryIO, *, path: str, level: int = 3,
              workers: int = 1) -> ExtractResult:
    """extract_zst into an open file (``path`` names it in the result)."""
    import zstandard

    total = reader.capacity_bytes
    walk = _DataGrains(reader, workers)
    data = 0
    cctx = zstandard.ZstdCompressor(level=level)
    frame = None                    # the compressor frame being written, if any

    def hole(n: int) -> None:
        nonlocal frame
        if n >= _ZST_HOLE_FRAME or (frame is None and n > 0):
            if frame is not None:
                out.write(frame.flush())
                frame = None
            _write_zst_zero_frame(out, n)
        elif n > 0:
            _write_zeros(_Compressing(frame, out), n)

    cursor = 0
    for start, grain in walk:
        hole(start - cursor)
        if frame is None:
            frame = cctx.compressobj()
        out.write(frame.compress(grain))
        data += len(grain)
        cursor = start + len(grain)
    hole(total - cursor)
    if frame is not None:
        out.write(frame.flush())
    return ExtractResult(path, total, total, walk.grains, walk.zero_grains, total - data)


class _Compressing:
    """write() into a zstd compressobj, its output into a file."""

    def __init__(self, frame: "object", out: BinaryIO) -> None:
        self._frame = frame
        self._out = out

    def write(self, data: "bytes | memoryview") -> None:
        self._out.write(self._frame.compress(data))  # type: ignore[attr-defined]


def _write_zeros(out: "io.RawIOBase | BinaryIO | object", n: int) -> None:
    zeros = memoryview(bytes(min(n, _CHUNK))) if n > 0 else memoryview(b"")
    while n > 0:
        k = min(n, len(zeros))
        out.write(zeros[:k])  # type: ignore[attr-defined]
        n -= k

