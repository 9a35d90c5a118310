"""A raw disk on standard input (the path ``-``): ``cat disk.raw | ovfstream pack - --size N``.

A stream does not know its length, so ``--size BYTES`` gives the virtual size; a stream that
ends before it or goes on after it is an error (``stdin.size``), raised before anything is
renamed into place.  The bytes are read once, in order (sources/sequential.py).

The VMDK descriptor's ids (``sample_key``) are needed before the data streams, and a stream
cannot be read at 64 KiB in every span as a file is: the key here covers the settings, the
size and the whole first span (32 MiB, or the disk when smaller), read ahead at
``sample_key`` time and served back to the first ``read_span``.  Two disks that agree in their
first 32 MiB and size get the same CID/uuid (the content id in the OVF, which covers every
byte, still tells them apart); the same stream always gets the same bytes.

The tar mtime of ``pack`` does not come from a stream: ``mtime`` is 0 (the epoch) unless
``--mtime`` or SOURCE_DATE_EPOCH says otherwise, so ``pack - < f`` and ``cat f | pack -``
give the same bytes.
"""

from __future__ import annotations

import os
import select
import stat
import struct

import xxhash

from ..errors import FormatError, UnsupportedError, UsageError
from ..vmdk.layout import SPAN_BYTES
from .base import OpenFile
from .detect import _head_format, require_input_format
from .sequential import SequentialSource

__all__ = ["StdinSource", "RULES", "check_size"]

RULES = {
    "stdin.size": "the disk read from standard input is shorter or longer than --size",
}


def check_size(size: object, what: str) -> int:
    """``size`` as a positive whole number of bytes, else a UsageError naming ``what``."""
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise UsageError("%s needs --size BYTES, a whole number of bytes above 0 (got %r)"
                         % (what, size))
    return size


class _StdinFile(OpenFile):
    """Standard input as one of the files a source reads (alias checks against the outputs,
    change detection when it is a regular file); it is not ours to close."""

    def __init__(self, fd: int) -> None:  # adopts fd: nothing to open
        self.path = "-"
        self.fd = fd
        self.stat = os.fstat(fd)
        self.regular = stat.S_ISREG(self.stat.st_mode)
        self.size = self.stat.st_size if self.regular else 0

    def check_unchanged(self) -> None:
        if self.regular:  # `pack - < disk.raw`: the file may still be modified under us
            super().check_unchanged()

    def close(self) -> None:
        self.fd = -1


class StdinSource(SequentialSource):
    """A raw disk of ``size`` bytes read from ``fd`` (standard input by default)."""

    format = "raw"

    def __init__(self, path: str = "-", *, size: int | None = None, depth: int = 0,
                 input_format: str = "auto", fd: int = 0) -> None:
        require_input_format(input_format)
        if input_format not in ("auto", "raw"):
            raise UsageError("-: --input-format %s: standard input is read as a raw disk "
                             "(auto or raw)" % input_format)
        self.input_format = input_format
        self.path = "-"
        self.size_bytes = check_size(size, "%s: a disk read from standard input" % path)
        try:
            self._file = _StdinFile(fd)
        except OSError as exc:  # EBADF: started with stdin closed
            raise UsageError("-: standard input cannot be read (%s)" % exc.strerror) from exc
        mode = self._file.stat.st_mode
        if stat.S_ISDIR(mode) or os.isatty(fd):
            raise UsageError("-: standard input is a %s; pipe or redirect a disk image into it"
                             % ("directory" if stat.S_ISDIR(mode) else "terminal"))
        self.files = [self._file]
        self.mtime = 0
        self.extents = [(0, self.size_bytes)]
        self._head: bytearray | None = None
        self._head_taken = False
        self._head_got = 0  # bytes of the head the stream held
        self._key: bytes | None = None
        self._start_turns()
        self._sized()

    def _read_head(self) -> bytearray:
        """The first span, read ahead once and kept until the first read_span takes it."""
        if self._head is None:
            if self._pos or self._head_taken:
                raise ValueError("the stream's head was read ahead too late")
            head = bytearray(min(SPAN_BYTES, self.size_bytes))
            self._head_got = self._read_fd(memoryview(head), 0, partial=True)
            self._head = head
        return self._head

    def _full_head(self) -> bytearray:
        """The head, or the stdin.size error when the stream ended inside it."""
        head = self._read_head()
        if self._head_got < len(head):
            self._read_fd(memoryview(head)[self._head_got:], self._head_got)  # raises
        return head

    def check_format(self) -> None:
        """Refuse a qcow2, VMDK, zstd... piped in (its first 4 KiB, read ahead) unless the
        source was opened with input_format="raw"; the tail (a fixed VHD's footer) is not
        seen before the end of a stream."""
        if self.input_format == "raw":
            return
        head = self._read_head()  # a stream shorter than --size fails later, when read
        found = _head_format(bytes(head[:min(4096, self._head_got)]))
        if found is not None:
            raise UnsupportedError(
                "-: [source.format] standard input holds a %s image (%s), not a raw disk: "
                "convert or decompress it first, or pass --input-format raw if these bytes "
                "really are the guest's disk" % (found.name, found.detail))

    def sample_key(self, **settings: object) -> bytes:
        """Settings, size and the first span's bytes (read ahead, served back later)."""
        if self._key is None:
            hasher = xxhash.xxh3_128()
            hasher.update(repr(sorted(settings.items())).encode())
            hasher.update(struct.pack("<Q", self.size_bytes))
            hasher.update(self._full_head())
            self._key = hasher.digest()
        return self._key

    def _read_stream(self, view: memoryview) -> None:
        if self._head is not None:  # the first span, read ahead by sample_key
            if self._pos != 0 or len(view) != len(self._head):
                raise ValueError("the read-ahead head is served to the first span only")
            view[:] = self._full_head()
            self._head, self._head_taken = None, True
            return
        self._read_fd(view, self._pos)

    def _read_fd(self, view: memoryview, at: int, *, partial: bool = False) -> int:
        """Fill ``view`` with the stream's next bytes (``at`` of the disk, for messages); the
        bytes read.  An early end is a FormatError, or with ``partial`` a short count."""
        pos, n = 0, len(view)
        while pos < n:
            try:
                got = os.readv(self._file.fd, [view[pos:]])
            except BlockingIOError:  # a non-blocking descriptor inherited from the shell
                select.select([self._file.fd], [], [])
                continue
            except OSError as exc:
                raise OSError(exc.errno, exc.strerror, "-") from exc
            if got == 0:
                if partial:
                    break
                raise FormatError("stdin.size", "the stream ended after %d bytes; --size says "
                                  "%d" % (at + pos, self.size_bytes), path="-", offset=at + pos)
            pos += got
        return pos

    def _check_end(self) -> None:
        while True:
            try:
                extra = os.read(self._file.fd, 1)
            except BlockingIOError:
                select.select([self._file.fd], [], [])
                continue
            break
        if extra:
            raise FormatError("stdin.size", "the stream goes on after the %d bytes --size says; "
                              "give the disk's exact size" % self.size_bytes, path="-",
                              offset=self.size_bytes)
