"""What every disk source gives the VMDK writer: a virtual disk cut into 32 MiB spans.

A source knows the virtual disk's size and which byte ranges of it may hold data (its
``extents``: a raw file's data extents, a qcow2's allocated clusters, a VHD's present
blocks...); everything outside them reads as zeros and is never read.  The writer asks for
``spans()`` (those that touch an extent), then calls ``read_span`` from its worker threads,
each with its own buffer, in any order -- unless the source is ``sequential`` (a pipe, a
zstd stream), in which case the source itself hands the spans out in order.

Every format module subclasses ``DiskSource`` and fills in the constructor (size, extents,
files) and ``_read_extent``; spans, zero-filling, the sample key, change detection and
closing are shared here.
"""

from __future__ import annotations

import bisect
import os
import stat
import struct
from dataclasses import dataclass
from typing import Iterable

import xxhash

from ..errors import FormatError
from ..regular import open_regular_fd
from ..vmdk.layout import GRAIN_BYTES, SPAN_BYTES, SPAN_GRAINS, capacity_sectors_for

__all__ = ["DiskSource", "OpenFile", "SpanPlan", "Extent", "SourceChangedError", "RULES",
           "ZEROS", "fill_zeros", "plan_spans"]

RULES = {
    "source.changed": "a disk image changed while it was read (shrank, grew, or was "
                      "modified): the output would mix old and new data, so none is written",
}


class SourceChangedError(FormatError):
    """A source changed under the reader (short read, size or mtime moved)."""


Extent = tuple[int, int]  # [start, end) in bytes of the virtual disk
ZEROS = bytes(SPAN_BYTES)  # calloc'ed: copying from it touches no private pages
_ZEROS_VIEW = memoryview(ZEROS)  # sliced without a copy (slicing ZEROS itself copies)
# Where the sample key looks in each span: four grains spread over it.
_SAMPLE_OFFSETS = (0, SPAN_BYTES // 4, SPAN_BYTES // 2, 3 * SPAN_BYTES // 4)


class OpenFile:
    """One file a source reads: its descriptor and the stat taken at the open."""

    def __init__(self, path: str | os.PathLike[str], *, block_devices: bool = False) -> None:
        self.path = os.fspath(path)
        self.fd = open_regular_fd(self.path, block_devices=block_devices)
        try:
            self.stat = os.fstat(self.fd)
            self.size = (self.stat.st_size if stat.S_ISREG(self.stat.st_mode)
                         else os.lseek(self.fd, 0, os.SEEK_END))
        except BaseException:
            os.close(self.fd)
            raise

    def pread_into(self, view: memoryview, offset: int) -> None:
        """Fill ``view`` from ``offset``; an end of file inside it is SourceChangedError
        (the file shrank: every caller checked its bounds against ``size`` first)."""
        pos, n = 0, len(view)
        while pos < n:
            try:
                got = os.preadv(self.fd, [view[pos:]], offset + pos)
            except OSError as exc:  # EIO...: name the file
                raise OSError(exc.errno, exc.strerror, self.path) from exc
            if got == 0:
                raise SourceChangedError(
                    "source.changed", "shrank while it was read: end of file at byte %d of %d"
                    % (offset + pos, self.size), path=self.path, offset=offset + pos)
            pos += got

    def pread(self, n: int, offset: int) -> bytes:
        out = bytearray(n)
        self.pread_into(memoryview(out), offset)
        return bytes(out)

    def check_unchanged(self) -> None:
        now = os.fstat(self.fd)
        size = now.st_size if stat.S_ISREG(now.st_mode) else os.lseek(self.fd, 0, os.SEEK_END)
        if size != self.size:
            raise SourceChangedError("source.changed", "the size changed from %d to %d bytes "
                                     "while it was read" % (self.size, size), path=self.path)
        if stat.S_ISREG(now.st_mode) and now.st_mtime_ns != self.stat.st_mtime_ns:
            raise SourceChangedError("source.changed", "modified while it was read (mtime "
                                     "changed); its image would mix old and new data",
                                     path=self.path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass(frozen=True)
class SpanPlan:
    index: int            # span number (GD entry)
    n_grains: int         # grains of virtual disk in this span (512 but for the last span)
    extents: tuple[Extent, ...]  # data ranges inside the span, relative to the span start


def fill_zeros(view: memoryview) -> None:
    """Fill ``view`` (of any length) with zeros, 32 MiB at a time."""
    for start in range(0, len(view), SPAN_BYTES):
        piece = view[start:start + SPAN_BYTES]
        piece[:] = _ZEROS_VIEW[:len(piece)]


def plan_spans(extents: Iterable[Extent], n_grains: int) -> list[SpanPlan]:
    """Spans that hold data, in order; a span wholly outside ``extents`` is absent."""
    plans: dict[int, list[Extent]] = {}
    for start, end in extents:
        first, last = start // SPAN_BYTES, (end - 1) // SPAN_BYTES
        for index in range(first, last + 1):
            base = index * SPAN_BYTES
            plans.setdefault(index, []).append(
                (max(start, base) - base, min(end, base + SPAN_BYTES) - base))
    return [SpanPlan(index, min(SPAN_GRAINS, n_grains - index * SPAN_GRAINS),
                     tuple(plans[index])) for index in sorted(plans)]


class DiskSource:
    """A virtual disk read span by span.  Subclasses set, in their constructor:

    ``path`` (what messages name), ``format`` (``raw``, ``qcow2``...), ``size_bytes`` (the
    virtual disk's size), ``extents`` (sorted, disjoint data ranges), ``files`` (every file
    the source reads, opened with ``open_file``: alias checks, change detection, closing),
    ``mtime``; then call ``_sized()``.  They implement ``_read_extent(offset, view)``: fill ``view``
    with the virtual disk's bytes at ``offset``; ``view`` lies inside one extent and one span.
    """

    path: str
    format: str
    size_bytes: int
    extents: list[Extent]
    files: list["OpenFile"]
    mtime: int
    sequential = False  # True: spans must be read in order (the source enforces it)

    def _open_file(self, path: str | os.PathLike[str], *, block_devices: bool = False) -> None:
        """Open the one file a single-file source reads: ``path``, ``files``, ``mtime``."""
        self._file = OpenFile(path, block_devices=block_devices)
        self.path = self._file.path
        self.files = [self._file]
        self.mtime = int(self._file.stat.st_mtime)

    def _sized(self) -> None:
        self.capacity_sectors = capacity_sectors_for(self.size_bytes)
        self.n_grains = -(-self.size_bytes // GRAIN_BYTES)
        self.n_spans = -(-self.n_grains // SPAN_GRAINS)
        self.data_bytes = sum(end - start for start, end in self.extents)

    @property
    def file_stat(self) -> os.stat_result:
        """The stat of the file named ``path`` (the top of a chain)."""
        return self.files[0].stat

    # -- reading ---------------------------------------------------------------------------

    def spans(self) -> list[SpanPlan]:
        return plan_spans(self.extents, self.n_grains)

    def read_span(self, plan: SpanPlan, buf: bytearray) -> memoryview:
        """Fill ``buf`` with the span's bytes (outside the extents, zeros)."""
        view = memoryview(buf)[:plan.n_grains * GRAIN_BYTES]
        self.read_into(plan.index * SPAN_BYTES, view)
        return view

    def _read_extent(self, offset: int, view: memoryview) -> None:
        raise NotImplementedError

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the virtual disk at ``offset`` (zeros outside the extents);
        a random-access read, for the sample key.  Sequential sources override it."""
        out = bytearray(length)
        self.read_into(offset, memoryview(out), zeroed=True)
        return bytes(out)

    def read_into(self, offset: int, view: memoryview, *, zeroed: bool = False) -> None:
        """Fill ``view`` with the virtual disk's bytes at ``offset`` (zeros outside the
        extents; ``zeroed``: the caller's buffer is zeros already).  An overlay (qcow2) reads
        its backing file through this."""
        end = offset + len(view)
        filled = offset
        extents = self.extents
        for i in range(max(0, bisect.bisect_right(extents, (offset,)) - 1), len(extents)):
            start, stop = extents[i]
            if start >= end:
                break
            lo, hi = max(start, offset), min(stop, end)
            if lo < hi:
                if not zeroed and lo > filled:
                    fill_zeros(view[filled - offset:lo - offset])
                self._read_extent(lo, view[lo - offset:hi - offset])
                filled = hi
        if not zeroed and filled < end:
            fill_zeros(view[filled - offset:])

    def sample_key(self, **settings: object) -> bytes:
        """A 16-byte key for the IDs in the VMDK descriptor, known before the data streams.

        The VMDK descriptor sits at the head of the stream and the OVA digests every byte as
        it is written, so its CID/uuid cannot wait for the full content id.  This key covers
        the settings, the exact size and, in every 32 MiB span that may hold data, the grains
        at four fixed offsets (0, 8, 16 and 24 MiB into the span; 1/128 of the data at most)
        that are not all zeros, with their positions: real images that differ almost always
        differ there (file-system superblocks, group descriptors and metadata).

        It is a function of the disk's content alone, never of where the source found data:
        ext4 reports an unwritten extent as data while its zero pages sit in the page cache
        and as a hole once they are evicted, so a key over the extent map (as before) gave the
        same disk other IDs, and other bytes, depending on the cache.  A sampled grain inside
        a hole reads as zeros and counts like one that was read: the same disk read from raw,
        qcow2, VMDK or VHD gets the same key.
        """
        hasher = xxhash.xxh3_128()
        hasher.update(repr(sorted(settings.items())).encode())
        hasher.update(struct.pack("<Q", self.size_bytes))
        for plan in self.spans():
            base = plan.index * SPAN_BYTES
            for offset in _SAMPLE_OFFSETS:
                start = base + offset
                length = min(GRAIN_BYTES, self.size_bytes - start)
                if length <= 0:
                    break
                grain = self.read_at(start, length)
                if grain != _ZEROS_VIEW[:length]:
                    hasher.update(struct.pack("<QI", start, length))
                    hasher.update(grain)
        return hasher.digest()

    def stop(self) -> None:
        """The writer gives up before the last span: a sequential source wakes the workers
        waiting for their turn; a random-access one has nothing to do."""

    # -- checks ----------------------------------------------------------------------------

    def check_format(self) -> None:
        """Refuse what this source must not read as it was opened; only raw has a check."""

    def check_unchanged(self) -> None:
        """SourceChangedError if any file the source read changed size or mtime since it was
        opened (called once every span is read)."""
        for f in self.files:
            f.check_unchanged()

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Close every file the source opened; safe to call twice."""
        for f in getattr(self, "files", ()):
            f.close()

    def __enter__(self) -> "DiskSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

