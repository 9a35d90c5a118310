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

from ..errors import UsageError
from .base import DiskSource, Extent
from .detect import check_input_format, require_input_format

__all__ = ["RawSource", "data_extents"]


class RawSource(DiskSource):
    """An open raw image: its size, data extents and span reads.  Thread-safe (pread)."""

    format = "raw"

    def __init__(self, path: str | os.PathLike[str], *, input_format: str = "auto") -> None:
        require_input_format(input_format)  # a usage error before anything is opened
        self._open_file(path, block_devices=True)
        try:
            st = self._file.stat
            self.size_bytes = self._file.size
            if stat.S_ISREG(st.st_mode):
                self.extents = data_extents(self._file.fd, 0, self.size_bytes)
            else:  # a block device (open_regular_fd let nothing else through)
                self.extents = [(0, self.size_bytes)] if self.size_bytes else []
        except BaseException:
            self.close()
            raise
        if self.size_bytes == 0:
            self.close()
            raise UsageError("%s: the disk image is empty (0 bytes); a disk needs a capacity"
                             % self.path)
        self.input_format = input_format
        self._sized()

    def check_format(self) -> None:
        """Refuse a qcow2, VMDK, VHD... (UnsupportedError, rule source.format) unless the
        source was opened with input_format="raw": never pack a container's bytes as if they
        were the guest's disk.  pack and convert call it once their outputs are checked, so
        that an output aliasing an input is the usage error it is first."""
        check_input_format(self.path, self._file.fd, self.size_bytes, self.input_format)

    def _read_extent(self, offset: int, view: memoryview) -> None:
        self._file.pread_into(view, offset)


def data_extents(fd: int, start: int, end: int) -> list[Extent]:
    """Data ranges of the regular file ``fd`` inside [start, end), by SEEK_DATA/SEEK_HOLE;
    one extent over the whole range where the file system cannot tell."""
    extents: list[Extent] = []
    pos = start
    while pos < end:
        try:
            first = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after pos
                break
            if exc.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return [(start, end)]
            raise
        if first >= end:
            break
        last = min(os.lseek(fd, first, os.SEEK_HOLE), end)
        if last <= first:
            break
        extents.append((first, last))
        pos = last
    return extents
