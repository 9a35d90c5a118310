"""OVA assembly in one pass: reserved front members, streamed disks, back-patched headers.

../shared/FORMATS.md section 2: ustar only (never PAX), the descriptor first, the manifest
(and certificate) right after it, then the referenced files in References order.  Every byte
of a member passes through one MemberSink that counts it, feeds the manifest digest and
writes it: nothing is read back.

Seekable output: the descriptor's and manifest's slots are reserved at the front (the
descriptor's from a render with the widest numbers, padded with whitespace at the end), each
disk follows a placeholder header that is patched once its size is known, and the front is
written last.  Streaming output (a pipe): the disks are spooled compressed to a temporary
folder while being digested, then the archive goes out in order; the bytes are the same.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Callable

from ..manifest import DIGESTS
from . import tar

__all__ = ["MemberSink", "SeekableOvaWriter", "StreamingOvaWriter", "FrontMembers"]


# One thread digests large writes while the caller's thread writes the same bytes: the
# digest is sequential (SHA-256 cannot be split), but it need not wait for the write, which
# with O_DIRECT is mostly the disk's time.  hashlib releases the GIL for large updates.
_HASHER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ovfstream-digest")
_OVERLAP_BYTES = 1 << 20  # below this, a hand-off costs more than it saves


class MemberSink:
    """Counts, digests and writes one member's bytes (in order; the digest of a large write
    runs on its own thread meanwhile, and is done when write() returns)."""

    def __init__(self, write: Callable[[bytes | bytearray | memoryview], object],
                 algorithm: str) -> None:
        if algorithm not in DIGESTS:
            raise ValueError(algorithm)
        self._write = write
        self._hasher = hashlib.new(algorithm)
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        with memoryview(data) as view:
            n = view.nbytes
        if n < _OVERLAP_BYTES:
            self._hasher.update(data)
            self._write(data)
        else:
            digesting = _HASHER.submit(self._hasher.update, data)
            try:
                self._write(data)
            finally:
                digesting.result()  # the caller may reuse ``data`` once write() returns
        self.size += n

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()


@dataclass(frozen=True)
class FrontMembers:
    """The members before the disks: (name, reserved size) in archive order."""

    slots: tuple[tuple[str, int], ...]

    def span_bytes(self) -> int:
        return sum(tar.BLOCK + size + tar.padding_for(size) for _, size in self.slots)


class SeekableOvaWriter:
    """Writes an OVA into a seekable file object positioned at 0."""

    def __init__(self, f: BinaryIO, *, front: FrontMembers, mtime: int, algorithm: str) -> None:
        self._f = f
        self._front = front
        self._mtime = mtime
        self._algorithm = algorithm
        f.seek(front.span_bytes())

    def add_member(self, name: str, produce: Callable[[MemberSink], None]) -> tuple[int, str]:
        """Stream one member: ``produce`` writes its bytes into the sink.  (size, digest)."""
        tar.check_member_name(name)
        header_at = self._f.tell()
        self._f.write(bytes(tar.BLOCK))  # placeholder until the size is known
        sink = MemberSink(self._f.write, self._algorithm)
        produce(sink)
        self._f.write(bytes(tar.padding_for(sink.size)))
        end = self._f.tell()
        self._f.seek(header_at)
        self._f.write(tar.encode_header(name, sink.size, mtime=self._mtime))
        self._f.seek(end)
        return sink.size, sink.hexdigest()

    def finish(self, front_data: list[bytes]) -> None:
        """Write the front members (exactly their reserved sizes) and the end of archive."""
        self._f.write(tar.END_OF_ARCHIVE)
        self._f.seek(0)
        for (name, size), data in zip(self._front.slots, front_data, strict=True):
            if len(data) != size:
                raise ValueError("front member %s: %d bytes for a %d-byte slot"
                                 % (name, len(data), size))
            self._f.write(tar.encode_header(name, size, mtime=self._mtime))
            self._f.write(data)
            self._f.write(bytes(tar.padding_for(size)))


class StreamingOvaWriter:
    """Spools members to a temporary folder while digesting, then streams the archive."""

    def __init__(self, out: BinaryIO, *, mtime: int, algorithm: str,
                 spool_dir: str | None = None) -> None:
        self._out = out
        self._mtime = mtime
        self._algorithm = algorithm
        self._dir = tempfile.mkdtemp(prefix="ovfstream-", dir=spool_dir)
        self._spooled: list[tuple[str, str, int]] = []

    def add_member(self, name: str, produce: Callable[[MemberSink], None]) -> tuple[int, str]:
        tar.check_member_name(name)
        path = os.path.join(self._dir, "%d" % len(self._spooled))
        with open(path, "wb") as f:
            sink = MemberSink(f.write, self._algorithm)
            produce(sink)
        self._spooled.append((name, path, sink.size))
        return sink.size, sink.hexdigest()

    def finish(self, front: list[tuple[str, bytes]]) -> None:
        for name, data in front:
            self._out.write(tar.encode_header(name, len(data), mtime=self._mtime))
            self._out.write(data)
            self._out.write(bytes(tar.padding_for(len(data))))
        for name, path, size in self._spooled:
            self._out.write(tar.encode_header(name, size, mtime=self._mtime))
            with open(path, "rb") as f:
                shutil.copyfileobj(f, self._out, 8 << 20)
            self._out.write(bytes(tar.padding_for(size)))
            os.unlink(path)
        self._out.write(tar.END_OF_ARCHIVE)
        self._out.flush()

    def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
