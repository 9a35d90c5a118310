"""Raw disk images as a source of 32 MiB spans.

Regular files (sparse-aware: SEEK_DATA/SEEK_HOLE find the data extents, and a hole is never
read), block devices (one extent over the whole device) and sizes that are not a multiple of
64 KiB or of 512 (the tail is zero-padded to the sector, then to the grain).  Reads are
``os.preadv`` into a caller-owned buffer; nothing maps the whole disk.

A source that changes while it is read is an error (``source.changed``), never a silent mix:
an end of file inside the size taken at the open fails the read, and ``check_unchanged``
compares size and mtime once every span is read.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from dataclasses import dataclass

import xxhash

from .errors import FormatError, UsageError
from .regular import open_regular_fd
from .sources.detect import check_input_format, require_input_format
from .vmdk.layout import GRAIN_BYTES, SPAN_BYTES, SPAN_GRAINS, capacity_sectors_for

__all__ = ["RawSource", "Extent", "SourceChangedError", "RULES"]

RULES = {
    "source.changed": "a disk image changed while it was read (shrank, grew, or was "
                      "modified): the output would mix old and new data, so none is written",
}


class SourceChangedError(FormatError):
    """A raw source changed under the reader (short read, size or mtime moved)."""


Extent = tuple[int, int]  # [start, end) in bytes
_ZEROS = bytes(SPAN_BYTES)  # calloc'ed: copying from it touches no private pages


@dataclass(frozen=True)
class SpanPlan:
    index: int            # span number (GD entry)
    n_grains: int         # grains of virtual disk in this span (512 but for the last span)
    extents: tuple[Extent, ...]  # data ranges inside the span, relative to the span start


class RawSource:
    """An open raw image: its size, data extents and span reads.  Thread-safe (pread)."""

    def __init__(self, path: str | os.PathLike[str], *, input_format: str = "auto") -> None:
        require_input_format(input_format)  # a usage error before anything is opened
        self.path = os.fspath(path)
        self._fd = open_regular_fd(self.path, block_devices=True)
        try:
            st = os.fstat(self._fd)
            if stat.S_ISREG(st.st_mode):
                self.size_bytes = st.st_size
                self.extents = self._data_extents(self.size_bytes)
            else:  # a block device (open_regular_fd let nothing else through)
                self.size_bytes = os.lseek(self._fd, 0, os.SEEK_END)
                self.extents = [(0, self.size_bytes)] if self.size_bytes else []
            self.mtime = int(st.st_mtime)
            self.file_stat = st  # identity, and the stamp that check_unchanged compares
        except BaseException:
            os.close(self._fd)
            raise
        if self.size_bytes == 0:
            os.close(self._fd)
            raise UsageError("%s: the disk image is empty (0 bytes); a disk needs a capacity"
                             % self.path)
        self.input_format = input_format
        self.capacity_sectors = capacity_sectors_for(self.size_bytes)
        self.n_grains = -(-self.size_bytes // GRAIN_BYTES)
        self.n_spans = -(-self.n_grains // SPAN_GRAINS)
        self.data_bytes = sum(end - start for start, end in self.extents)

    def check_format(self) -> None:
        """Refuse a qcow2, VMDK, VHD... (UnsupportedError, rule source.format) unless the
        source was opened with input_format="raw": never pack a container's bytes as if they
        were the guest's disk.  pack and convert call it once their outputs are checked, so
        that an output aliasing an input is the usage error it is first."""
        check_input_format(self.path, self._fd, self.size_bytes, self.input_format)

    def check_unchanged(self) -> None:
        """SourceChangedError if the image's size or (for a file) mtime moved since the open.

        Called once all spans are read: with the short-read check in read_span this catches
        a source truncated, extended or rewritten while it was packed.
        """
        st = os.fstat(self._fd)
        if stat.S_ISREG(st.st_mode):
            size = st.st_size
        else:
            size = os.lseek(self._fd, 0, os.SEEK_END)
        if size != self.size_bytes:
            raise SourceChangedError("source.changed", "the size changed from %d to %d bytes "
                                     "while it was read" % (self.size_bytes, size), path=self.path)
        if stat.S_ISREG(st.st_mode) and st.st_mtime_ns != self.file_stat.st_mtime_ns:
            raise SourceChangedError("source.changed", "modified while it was read (mtime "
                                     "changed); its image would mix old and new data",
                                     path=self.path)

    def _data_extents(self, size: int) -> list[Extent]:
        """Data ranges by SEEK_DATA/SEEK_HOLE; one whole-file extent where unsupported."""
        extents: list[Extent] = []
        pos = 0
        while pos < size:
            try:
                start = os.lseek(self._fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after pos
                    break
                if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                    return [(0, size)]
                raise
            end = min(os.lseek(self._fd, start, os.SEEK_HOLE), size)
            if end <= start:
                break
            extents.append((start, end))
            pos = end
        return extents

    def spans(self) -> list[SpanPlan]:
        """Spans that hold data, in order; a span wholly in a hole is absent (GD entry 0)."""
        plans: dict[int, list[Extent]] = {}
        for start, end in self.extents:
            first, last = start // SPAN_BYTES, (end - 1) // SPAN_BYTES
            for index in range(first, last + 1):
                base = index * SPAN_BYTES
                plans.setdefault(index, []).append(
                    (max(start, base) - base, min(end, base + SPAN_BYTES) - base))
        return [SpanPlan(index, min(SPAN_GRAINS, self.n_grains - index * SPAN_GRAINS),
                         tuple(plans[index])) for index in sorted(plans)]

    def read_span(self, plan: SpanPlan, buf: bytearray) -> memoryview:
        """Fill ``buf`` with the span's bytes (holes and the tail past EOF as zeros)."""
        n_bytes = plan.n_grains * GRAIN_BYTES
        view = memoryview(buf)[:n_bytes]
        base = plan.index * SPAN_BYTES
        filled = 0
        for start, end in plan.extents:
            if start > filled:
                view[filled:start] = _ZEROS[:start - filled]
            pos = start
            while pos < end:
                try:
                    got = os.preadv(self._fd, [view[pos:end]], base + pos)
                except OSError as exc:  # EIO...: name the file
                    raise OSError(exc.errno, exc.strerror, self.path) from exc
                if got == 0:  # end of file inside the size taken at the open
                    raise SourceChangedError(
                        "source.changed", "shrank while it was read: end of file at byte %d "
                        "of %d" % (base + pos, self.size_bytes), path=self.path,
                        offset=base + pos)
                pos += got
            filled = end
        if filled < n_bytes:
            view[filled:n_bytes] = _ZEROS[:n_bytes - filled]
        return view

    def sample_key(self, **settings: object) -> bytes:
        """A 16-byte key for the IDs in the VMDK descriptor, known before the data streams.

        The VMDK descriptor sits at the head of the stream and the OVA digests every byte as
        it is written, so its CID/uuid cannot wait for the full content id.  This key covers
        the settings, the exact size, the data-extent map and the first 64 KiB of data in
        every 32 MiB span that holds data (1/512 of the data at most): the same image and
        settings always give the same key, and real images that differ almost always differ
        in it (file-system superblocks and metadata live in those grains).
        """
        hasher = xxhash.xxh3_128()
        hasher.update(repr(sorted(settings.items())).encode())
        hasher.update(struct.pack("<Q", self.size_bytes))
        for start, end in self.extents:
            hasher.update(struct.pack("<QQ", start, end))
        for plan in self.spans():
            start = plan.index * SPAN_BYTES + plan.extents[0][0]
            hasher.update(self.read_at(start, min(GRAIN_BYTES, self.size_bytes - start)))
        return hasher.digest()

    def read_at(self, offset: int, length: int) -> bytes:
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "RawSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
