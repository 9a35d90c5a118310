"""Reading an OVA: a streaming, validating walk over its ustar headers (ova/tar.py decodes them).

`TarReader` walks headers only.  On a seekable file it seeks over member data; on a pipe it
reads and discards it, unless the caller consumes the current member through
`TarReader.open_member` / `TarReader.read_member` before asking for the next one.  Memory is
bounded: member data is never held whole (only PAX / GNU long-name payloads, which are capped).
Every refusal is a `TarFormatError` with one of the rule ids in `ova.tar.RULES`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator
from typing import BinaryIO

from ..errors import Finding, TarFormatError, UsageError, location
from .tar import (
    BLOCK,
    MAX_EXTENDED_BYTES,
    TarEntry,
    _name_problem,
    decode_header,
    padding_for,
)

__all__ = ["TarReader", "iter_members"]


def _parse_pax_records(data: bytes, *, path: str | os.PathLike[str] | None,
                       offset: int) -> dict[bytes, bytes]:
    """PAX records '<len> <key>=<value>\\n' (POSIX pax, "pax Extended Header")."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        if not any(data[pos:]):
            break                                   # trailing NUL padding some writers leave
        space = data.find(b" ", pos, pos + 21)
        length_text = data[pos:space] if space > pos else b""
        if not length_text.isdigit():
            raise TarFormatError("ova.tar.pax", "bad PAX record length at byte %d" % pos,
                                 path=path, offset=offset)
        length = int(length_text)
        end = pos + length
        if length <= space - pos + 1 or end > len(data) or data[end - 1:end] != b"\n":
            raise TarFormatError("ova.tar.pax", "bad PAX record at byte %d" % pos,
                                 path=path, offset=offset)
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq:
            raise TarFormatError("ova.tar.pax", "PAX record without '=' at byte %d" % pos,
                                 path=path, offset=offset)
        records[key] = value
        pos = end
    return records


class _BoundedReader(io.RawIOBase):
    """Reads exactly one member's data from the archive, never past it."""

    def __init__(self, owner: "TarReader", entry: TarEntry) -> None:
        self._owner = owner
        self._entry = entry

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview | bytearray) -> int:  # type: ignore[override]
        return self._owner._readinto_current(self._entry, buffer)


class TarReader:
    """Streaming, validating walk over an OVA's tar headers.

        reader = TarReader(f, path="app.ova")
        for entry in reader.members():
            if entry.name.endswith(".mf"):
                data = reader.open_member(entry).read()   # bounded by entry.size
        reader.findings    # e.g. a warning `ova.tar.end`

    Use `open_member` / `read_member` only on the entry just yielded, before asking for the
    next; whatever the caller leaves unread is skipped (seek on a seekable file, read and
    discarded on a pipe).  `file_size` (taken from the file when it is seekable) lets the
    reader refuse a member whose data runs past the end before reading any of it.
    """

    def __init__(self, fileobj: BinaryIO, *, path: str | os.PathLike[str] | None = None,
                 file_size: int | None = None, allow_pax: bool = False) -> None:
        self._f = fileobj
        self.path = os.fspath(path) if path is not None else None
        self.allow_pax = allow_pax
        self._seekable = _is_seekable(fileobj)
        self._base = fileobj.tell() if self._seekable else 0
        if file_size is None and self._seekable:
            end = fileobj.seek(0, os.SEEK_END)
            fileobj.seek(self._base)
            file_size = end - self._base
        self.file_size = file_size
        self._pos = 0                        # archive offset of the stream position
        self._current: TarEntry | None = None
        self._consumed = 0                   # bytes of the current member's data read
        self.findings: list[Finding] = []
        self.end_offset: int | None = None   # offset of the end-of-archive blocks, when found
        self.end_of_archive = False          # both zero blocks present

    # -- low level -------------------------------------------------------------------------
    def _read_exact(self, n: int, *, what: str, offset: int) -> bytes:
        chunks = []
        remaining = n
        while remaining:
            chunk = self._f.read(remaining)
            if not chunk:
                raise TarFormatError("ova.tar.truncated",
                                     "%s: %d of %d bytes before end of file" % (what, n - remaining, n),
                                     path=self.path, offset=offset)
            chunks.append(chunk)
            remaining -= len(chunk)
        self._pos += n
        return b"".join(chunks)

    def _read_block(self, offset: int) -> bytes:
        """The next 512-byte block; b"" at a clean end of file; short reads are completed."""
        block = self._f.read(BLOCK)
        while 0 < len(block) < BLOCK:
            more = self._f.read(BLOCK - len(block))
            if not more:
                raise TarFormatError("ova.tar.truncated",
                                     "header: %d of 512 bytes before end of file" % len(block),
                                     path=self.path, offset=offset)
            block += more
        self._pos += len(block)
        return block

    def _skip(self, n: int, *, what: str, offset: int) -> None:
        if n == 0:
            return
        if self._seekable:
            if self.file_size is not None and self._pos + n > self.file_size:
                raise TarFormatError("ova.tar.truncated", "%s runs past the end of file" % what,
                                     path=self.path, offset=offset)
            self._f.seek(self._base + self._pos + n)
            self._pos += n
            return
        remaining = n
        while remaining:
            chunk = self._f.read(min(remaining, 1 << 20))
            if not chunk:
                raise TarFormatError("ova.tar.truncated",
                                     "%s: %d of %d bytes before end of file" % (what, n - remaining, n),
                                     path=self.path, offset=offset)
            remaining -= len(chunk)
            self._pos += len(chunk)

    def _readinto_current(self, entry: TarEntry, buffer: memoryview | bytearray) -> int:
        if entry is not self._current:
            raise UsageError("tar member %r is no longer the current member" % entry.name)
        left = entry.size - self._consumed
        if left <= 0:
            return 0
        view = memoryview(buffer).cast("B")[:left]
        n = self._f.readinto(view) if hasattr(self._f, "readinto") else _readinto_fallback(self._f, view)
        if not n:
            raise TarFormatError("ova.tar.truncated",
                                 "member data: %d of %d bytes before end of file"
                                 % (self._consumed, entry.size),
                                 path=self.path, member=entry.name, offset=self._pos)
        self._consumed += n
        self._pos += n
        return n

    def _finish_current(self) -> None:
        entry = self._current
        if entry is None:
            return
        left = entry.size - self._consumed
        self._skip(left + padding_for(entry.size), what="member %r data and padding" % entry.name,
                   offset=self._pos)
        self._current = None

    def _check_fits(self, entry: TarEntry) -> None:
        if self.file_size is not None and entry.end_offset > self.file_size:
            raise TarFormatError("ova.tar.truncated",
                                 "member %r: %d data bytes and padding end at 0x%x, past the "
                                 "end of file at 0x%x" % (entry.name, entry.size, entry.end_offset,
                                                          self.file_size),
                                 path=self.path, member=entry.name, offset=entry.header_offset)

    # -- public ----------------------------------------------------------------------------
    def open_member(self, entry: TarEntry) -> io.BufferedReader:
        """A reader of exactly `entry.size` bytes of the current member's data."""
        if entry is not self._current:
            raise UsageError("open_member(%r): only the member just yielded can be read" % entry.name)
        return io.BufferedReader(_BoundedReader(self, entry), buffer_size=1 << 16)

    def read_member(self, entry: TarEntry, sink: Callable[[bytes], object], *,
                    chunk_bytes: int = 1 << 20) -> int:
        """Feed the current member's remaining data to `sink` in chunks; returns bytes fed."""
        if entry is not self._current:
            raise UsageError("read_member(%r): only the member just yielded can be read" % entry.name)
        buffer = bytearray(min(chunk_bytes, max(entry.size, 1)))
        total = 0
        while True:
            n = self._readinto_current(entry, buffer)
            if not n:
                return total
            sink(bytes(buffer[:n]))
            total += n

    def members(self) -> Iterator[TarEntry]:
        """Yield each regular-file member; raise TarFormatError on anything unsafe."""
        seen: set[str] = set()
        pending_name: str | None = None
        pending_size: int | None = None
        extended_offset: int | None = None
        while True:
            self._finish_current()
            offset = self._pos
            if self.file_size is not None and offset >= self.file_size:
                self._report_end(offset, "the archive ends after its last member without the two zero blocks")
                return
            block = self._read_block(offset)
            if not block:
                self._report_end(offset, "the archive ends after its last member without the two zero blocks")
                return
            entry = decode_header(block, path=self.path, offset=offset)
            if entry is None:
                self._after_zero_block(offset)
                return
            if entry.type in ("x", "g", "L", "K"):
                extended_offset = offset if extended_offset is None else extended_offset
                name, size = self._extended(entry)
                if entry.type in ("x", "L"):
                    pending_name = name if name is not None else pending_name
                    pending_size = size if size is not None else pending_size
                continue
            if pending_name is not None or pending_size is not None:
                entry = self._apply_extended(entry, pending_name, pending_size, extended_offset)
                pending_name = pending_size = None
                extended_offset = None
            if not entry.is_regular:
                raise TarFormatError("ova.member.type",
                                     "member %r has type %r (%s); an OVA holds regular files only"
                                     % (entry.name, entry.type, _TYPE_NAMES.get(entry.type, "unknown")),
                                     path=self.path, member=entry.name, offset=offset)
            if entry.name in seen:
                raise TarFormatError("ova.member.duplicate", "a second member named %r" % entry.name,
                                     path=self.path, member=entry.name, offset=offset)
            seen.add(entry.name)
            self._check_fits(entry)
            self._current = entry
            self._consumed = 0
            yield entry

    # -- helpers ---------------------------------------------------------------------------
    def _extended(self, entry: TarEntry) -> tuple[str | None, int | None]:
        kind = "PAX" if entry.type in ("x", "g") else "GNU long-name"
        if not self.allow_pax:
            raise TarFormatError("ova.tar.pax",
                                 "%s header (type %r): ovftool and oVirt reject them" % (kind, entry.type),
                                 path=self.path, offset=entry.header_offset)
        if entry.size > MAX_EXTENDED_BYTES:
            raise TarFormatError("ova.tar.pax", "%s header of %d bytes is too large" % (kind, entry.size),
                                 path=self.path, offset=entry.header_offset)
        self._check_fits(entry)
        data = self._read_exact(entry.size, what="%s header data" % kind, offset=entry.data_offset)
        self._skip(padding_for(entry.size), what="%s header padding" % kind,
                   offset=entry.data_offset + entry.size)
        if entry.type == "K" or entry.type == "g":
            return None, None          # link names and global records do not affect a member
        if entry.type == "L":
            raw = data.split(b"\x00", 1)[0]
            return self._long_name(raw, entry.header_offset), None
        records = _parse_pax_records(data, path=self.path, offset=entry.header_offset)
        name = None
        size = None
        if b"path" in records:
            name = self._long_name(records[b"path"], entry.header_offset)
        if b"size" in records:
            text = records[b"size"]
            if not text.isdigit() or len(text) > 27:      # 27 digits > 2**88: no real size
                raise TarFormatError("ova.tar.pax", "PAX size %r is not a number" % text[:30],
                                     path=self.path, offset=entry.header_offset)
            size = int(text)
        return name, size

    def _long_name(self, raw: bytes, offset: int) -> str:
        problem = _name_problem(raw, max_bytes=None)
        if problem is not None:
            raise TarFormatError("ova.member.name", problem, path=self.path, offset=offset)
        return raw.decode("ascii")

    def _apply_extended(self, entry: TarEntry, name: str | None, size: int | None,
                        extended_offset: int | None) -> TarEntry:
        return TarEntry(name=name if name is not None else entry.name,
                        size=size if size is not None else entry.size,
                        type=entry.type, mtime=entry.mtime, mode=entry.mode, uid=entry.uid,
                        gid=entry.gid, header_offset=entry.header_offset,
                        data_offset=entry.data_offset, format=entry.format,
                        size_base256=entry.size_base256, pax=True, extended_offset=extended_offset)

    def _report_end(self, offset: int, message: str) -> None:
        self.end_offset = offset
        self.findings.append(Finding("ova.tar.end", "warning", location(self.path), offset, message))

    def _after_zero_block(self, offset: int) -> None:
        try:
            second = self._read_block(offset + BLOCK)
        except TarFormatError:
            second = b"\x00"      # a partial block after the first zero block
        self.end_offset = offset
        if not second or not any(second) and len(second) < BLOCK:
            self.findings.append(Finding("ova.tar.end", "warning", location(self.path), offset,
                                         "only one of the two end-of-archive zero blocks"))
            return
        if any(second):
            raise TarFormatError("ova.tar.zero",
                                 "a lone zero block at 0x%x is followed by more data: readers "
                                 "disagree on whether the archive ends there" % offset,
                                 path=self.path, offset=offset + BLOCK)
        self.end_of_archive = True


_TYPE_NAMES = {
    "1": "hard link", "2": "symbolic link", "3": "character device", "4": "block device",
    "5": "directory", "6": "fifo", "7": "contiguous file", "D": "GNU dump directory",
    "M": "GNU multi-volume continuation", "N": "GNU old long name", "S": "GNU sparse file",
    "V": "GNU volume label",
}


def _is_seekable(fileobj: BinaryIO) -> bool:
    try:
        return bool(fileobj.seekable())
    except (AttributeError, ValueError, OSError):
        return False


def _readinto_fallback(fileobj: BinaryIO, view: memoryview) -> int:
    data = fileobj.read(len(view))
    view[:len(data)] = data
    return len(data)


def iter_members(fileobj: BinaryIO, *, path: str | os.PathLike[str] | None = None,
                 file_size: int | None = None, allow_pax: bool = False) -> Iterator[TarEntry]:
    """Walk the member headers of an archive, skipping each member's data.

    A convenience over `TarReader(...).members()` for callers that only need the listing; use
    TarReader itself to read member data or to see the `ova.tar.end` finding.
    """
    return TarReader(fileobj, path=path, file_size=file_size, allow_pax=allow_pax).members()
