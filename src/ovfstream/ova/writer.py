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
The OVF folder form (FolderWriter) writes the same members as files side by side, each under
a temporary name, all renamed into place together at the end.

Each writer takes a member as ``with writer.member(name) as sink: ...``: the body writes the
bytes into the sink; after the block, ``sink.size`` and ``sink.hexdigest()`` are final (and
the member's header is in place).  ``finish(front)`` writes the descriptor, manifest and
certificate last.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Callable

from ..atomic import AtomicFiles, signals_held

from ..manifest import DIGESTS
from . import tar

__all__ = ["MemberSink", "KnownDigestSink", "Sink", "SeekableOvaWriter", "StreamingOvaWriter",
           "FolderWriter", "FrontMembers"]


# One thread digests large writes while the caller's thread writes the same bytes: the
# digest is sequential (SHA-256 cannot be split), but it need not wait for the write, which
# with O_DIRECT is mostly the disk's time.  hashlib releases the GIL for large updates.
_OVERLAP_BYTES = 1 << 20  # below this, a hand-off costs more than it saves
_digester: tuple[int, ThreadPoolExecutor] | None = None
_digester_lock = threading.Lock()


def _digest_thread() -> ThreadPoolExecutor:
    """This process's digest thread: a child forked by a process pool inherits the parent's
    executor but not its thread, and would wait on it forever."""
    global _digester
    with _digester_lock:
        if _digester is None or _digester[0] != os.getpid():
            _digester = (os.getpid(),
                         ThreadPoolExecutor(max_workers=1, thread_name_prefix="ovfstream-digest"))
        return _digester[1]


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
            digesting = _digest_thread().submit(self._hasher.update, data)
            try:
                self._write(data)
            finally:
                digesting.result()  # the caller may reuse ``data`` once write() returns
        self.size += n

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()


class KnownDigestSink:
    """Counts and writes a member whose digest is already known, without hashing it: repack
    copies a disk member byte for byte and its digest is the input manifest's, which is
    checked against the input's bytes (on another core) before the output is committed."""

    def __init__(self, write: Callable[[bytes | bytearray | memoryview], object],
                 hexdigest: str) -> None:
        self._write = write
        self._digest = hexdigest
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._write(data)
        self.size += len(data)

    def hexdigest(self) -> str:
        return self._digest


Sink = MemberSink | KnownDigestSink


def _sink(write: Callable[[bytes | bytearray | memoryview], object], algorithm: str,
          digest: str | None) -> Sink:
    return MemberSink(write, algorithm) if digest is None else KnownDigestSink(write, digest)


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

    @contextlib.contextmanager
    def member(self, name: str, digest: str | None = None) -> Iterator[Sink]:
        """Stream one member into the sink; its header is patched once the size is known."""
        tar.check_member_name(name)
        header_at = self._f.tell()
        self._f.write(bytes(tar.BLOCK))  # placeholder until the size is known
        sink = _sink(self._f.write, self._algorithm, digest)
        yield sink
        self._f.write(bytes(tar.padding_for(sink.size)))
        end = self._f.tell()
        self._f.seek(header_at)
        self._f.write(tar.encode_header(name, sink.size, mtime=self._mtime))
        self._f.seek(end)

    def finish(self, front: Sequence[tuple[str, bytes]]) -> None:
        """Write the front members (exactly their reserved sizes) and the end of archive."""
        self._f.write(tar.END_OF_ARCHIVE)
        self._f.seek(0)
        for (name, size), (_, data) in zip(self._front.slots, front, strict=True):
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
        import tempfile  # (here and below: only a streamed package spools)
        self._dir = tempfile.mkdtemp(prefix="ovfstream-", dir=spool_dir)
        self._spooled: list[tuple[str, str, int]] = []

    @contextlib.contextmanager
    def member(self, name: str, digest: str | None = None) -> Iterator[Sink]:
        tar.check_member_name(name)
        path = os.path.join(self._dir, "%d" % len(self._spooled))
        with open(path, "wb") as f:
            sink = _sink(f.write, self._algorithm, digest)
            yield sink
        self._spooled.append((name, path, sink.size))

    def finish(self, front: Sequence[tuple[str, bytes]]) -> None:
        import shutil
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
        import shutil
        with signals_held():  # a second signal waits until the spool folder is gone
            shutil.rmtree(self._dir, ignore_errors=True)


class FolderWriter:
    """The OVF folder form: each member a file beside the descriptor, written under a
    temporary name; ``finish`` renames them all into place together (the disks, certificate,
    manifest, and the descriptor last: its presence says the folder is complete), so a
    failure leaves the previous package as it was."""

    def __init__(self, group: AtomicFiles, folder: str, *, algorithm: str,
                 stale: Sequence[str] = (), mtime: int | None = None) -> None:
        self._group = group
        self._folder = folder
        self._algorithm = algorithm
        self._stale = stale          # names removed at the commit unless written again
        self._mtime = mtime          # given each file when set

    @contextlib.contextmanager
    def member(self, name: str, digest: str | None = None) -> Iterator[Sink]:
        f = self._group.open(os.path.join(self._folder, name))
        sink = _sink(f.write, self._algorithm, digest)
        yield sink
        if self._mtime is not None:
            f.flush()
            with contextlib.suppress(AttributeError, OSError, ValueError):  # /dev/null sink
                os.utime(f.fileno(), (self._mtime, self._mtime))
        self._group.close(f)

    def finish(self, front: Sequence[tuple[str, bytes]]) -> None:
        written = {name for name, _ in front}
        for name in self._stale:
            if name not in written:  # e.g. an earlier signed pack's certificate
                self._group.remove_stale(os.path.join(self._folder, name))
        for name, data in reversed(front):
            with self.member(name) as sink:
                sink.write(data)
