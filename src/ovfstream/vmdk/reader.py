"""Reader for stream-optimized VMDK files: header, descriptor, marker walk, tables, extraction.

Implements the reading side of the VMware "Virtual Disk Format 5.0" technote, section
"Stream-Optimized Compressed Sparse Extents", as distilled in ../shared/FORMATS.md section 1,
for the three layouts found in the wild:

- ours and the spec's: grains, a GT marker + GT after each 32 MiB span, GD marker + GD, footer
  marker + footer, end-of-stream marker; the head's gdOffset is GD_AT_END;
- qemu's and open-vmdk's: GD and GTs (no markers) in the head before overHead, grains after,
  no footer; qemu pads the file with zero sectors after the last grain (read as the
  end-of-stream marker) and writes no marker at all for an empty disk.

Everything read from the file is bounded before it is trusted: no offset, length or count
outside the member's byte range or the capacity is followed, no grain inflates past its size,
and memory stays constant in the size of the file (one grain, one table, one chunk at a time).
Every malformed input raises :class:`VmdkFormatError` with a rule id from :data:`RULES`;
valid input this module does not handle raises :class:`UnsupportedError`.
"""

from __future__ import annotations

import io
import os
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO


from ..atomic import atomic_output
from ..errors import Finding, FormatError, UnsupportedError, VmdkFormatError, location
from ..regular import open_regular
from .contentid import ContentId, fold_content_id, grain_digest
from .layout import (
    FLAG_COMPRESSED,
    FLAG_MARKERS,
    FLAG_NEWLINE_TEST,
    GD_AT_END,
    GRAIN_BYTES,
    GRAIN_SECTORS,
    GTES_PER_GT,
    MAGIC,
    MARKER,
    MARKER_EOS,
    MARKER_FOOTER,
    MARKER_GD,
    MARKER_GT,
    MAX_GRAIN_PAYLOAD,
    NEWLINE_CHECK,
    SECTOR,
    Header,
    sectors_for,
)

try:  # ISA-L inflate is several times faster than zlib's; same stream format.
    from isal import isal_zlib as _inflate_mod

    _INFLATE_ERRORS: tuple[type[BaseException], ...] = (_inflate_mod.error, zlib.error)
except ImportError:  # pragma: no cover - isal is a declared dependency
    _inflate_mod = zlib  # type: ignore[assignment]
    _INFLATE_ERRORS = (zlib.error,)

__all__ = [
    "RULES",
    "MAX_CAPACITY_SECTORS",
    "VmdkReader",
    "Descriptor",
    "Extent",
    "VerifyReport",
    "ExtractResult",
    "ContentId",
    "grain_digest",
    "fold_content_id",
    "extract_raw",
    "extract_zst",
    "write_raw",
    "write_zst",
]

RULES: dict[str, str] = {
    "vmdk.header.magic": "the file does not start with the sparse-extent magic KDMV",
    "vmdk.header.version": "header version is not 1, 2 or 3",
    "vmdk.header.flags": "header flags are inconsistent",
    "vmdk.header.grain": "grainSize is not a usable grain size",
    "vmdk.header.gt": "numGTEsPerGT is not 512",
    "vmdk.header.descriptor": "descriptorOffset/descriptorSize out of range or past overHead",
    "vmdk.header.capacity": "capacity is zero",
    "vmdk.header.overhead": "overHead is before the descriptor's end or past the end of the file",
    "vmdk.header.newline": "the newline-check bytes are damaged (file transferred in text mode?)",
    "vmdk.header.compression": "compressAlgorithm is not 1 (deflate)",
    "vmdk.header.gd": "gdOffset (head or footer) points outside the file or the head area",
    "vmdk.descriptor.encoding": "the embedded descriptor is not ASCII/UTF-8 text",
    "vmdk.descriptor.createtype": "the descriptor's createType is not streamOptimized",
    "vmdk.descriptor.cid": "the descriptor lacks CID or parentCID (qemu refuses the file)",
    "vmdk.descriptor.extent": "the descriptor does not have exactly one extent matching the capacity",
    "vmdk.footer": "the footer is missing, or differs from the header",
    "vmdk.marker.type": "a metadata marker has an unknown type or comes out of order",
    "vmdk.marker.size": "a metadata marker announces a wrong number of sectors",
    "vmdk.grain.lba": "a grain's LBA is not grain-aligned or not below the capacity",
    "vmdk.grain.order": "grain LBAs are not strictly increasing in file order",
    "vmdk.grain.size": "a grain's compressed size is larger than a deflated grain can be",
    "vmdk.grain.inflate": "a grain is not one zlib stream inflating to exactly one grain",
    "vmdk.truncated": "the file ends inside a header, marker, grain or table",
    "vmdk.eos": "the end-of-stream marker is missing",
    "vmdk.trailing": "non-zero bytes follow the end-of-stream marker",
    "vmdk.gd.entry": "a grain-directory entry does not point at a grain table",
    "vmdk.gt.entry": "a grain-table entry does not point at the grain marker for its LBA",
}

# VMware's own limit is 62 TiB; the bound keeps the GD (4 bytes per 32 MiB) at <= 8 MiB.
MAX_CAPACITY_SECTORS = 1 << 37
MAX_DESCRIPTOR_SECTORS = 20480          # VirtualBox rejects more
_ZEROED_GTE = 1                         # version-2 "zeroed grain" GT entry
_FLAG_ZEROED_GTE = 0x4
_KNOWN_INCOMPAT_FLAGS = FLAG_COMPRESSED | FLAG_MARKERS
_INCOMPAT_MASK = 0xFFFF0000             # bits 16+ change the layout; unknown ones are unsupported
_CHUNK = 1 << 20
_MAX_FINDINGS = 100                     # per verify run: a broken file must not fill memory
_TRAILING_CHECK_LIMIT = 64 << 20        # bytes after EOS we read to prove they are zero
_ZERO_GRAIN = bytes(GRAIN_BYTES)
_GD_MARKER_SLACK = 128                  # sectors a writer may round its GD up by


# Content id: in contentid.py, shared with the writer (re-exported here).


# ---------------------------------------------------------------------------------------------
# Embedded descriptor

# Lines are split with str methods, never with a backtracking regex over the whole line: a
# line of a million spaces must cost one pass (a regex with \s* around a lazy group was
# quadratic).  The patterns below only ever match one whitespace-free token.
_ACCESS = ("RW", "RDONLY", "NOACCESS")
_WORD_RE = re.compile(r"\w+")
_KEY_RE = re.compile(r"[A-Za-z0-9_.]+")
_MAX_NUMBER_DIGITS = 20                 # a u64; int() of a longer string is refused or slow


def _number(token: str) -> int | None:
    if not token or len(token) > _MAX_NUMBER_DIGITS or not (token.isascii() and token.isdigit()):
        return None
    return int(token)


def _parse_extent(line: str) -> "Extent | None":
    """``ACCESS SECTORS TYPE ["FILE" [OFFSET]]`` (line already stripped), or None."""
    parts = line.split(None, 3)
    if len(parts) < 3 or parts[0] not in _ACCESS or not _WORD_RE.fullmatch(parts[2]):
        return None
    sectors = _number(parts[1])
    if sectors is None:
        return None
    file_name = None
    if len(parts) == 4:
        rest = parts[3]
        end = rest.find('"', 1)
        if not rest.startswith('"') or end < 0:
            return None
        file_name = rest[1:end]
        tail = rest[end + 1:]
        if tail and (not tail[0].isspace() or _number(tail.strip()) is None):
            return None
    return Extent(parts[0], sectors, parts[2], file_name)


@dataclass(frozen=True)
class Extent:
    """One extent line: ``RW 2048 SPARSE "disk.vmdk"``."""

    access: str
    sectors: int
    kind: str
    file_name: str | None


@dataclass(frozen=True)
class Descriptor:
    """The embedded descriptor's text and the fields readers act on."""

    text: str
    entries: dict[str, str]          # header key=value lines (version, CID, createType...)
    ddb: dict[str, str]              # ddb.* entries
    extents: tuple[Extent, ...]
    bad_lines: tuple[str, ...]       # lines that are neither comment, key=value nor extent

    @property
    def create_type(self) -> str | None:
        return self.entries.get("createType")

    @property
    def cid(self) -> str | None:
        return self.entries.get("CID")

    @property
    def parent_cid(self) -> str | None:
        return self.entries.get("parentCID")

    @classmethod
    def parse(cls, text: str) -> "Descriptor":
        entries: dict[str, str] = {}
        ddb: dict[str, str] = {}
        extents: list[Extent] = []
        bad: list[str] = []
        for raw_line in text.splitlines():
            line = raw_line.strip()
            if not line or line.startswith("#"):
                continue
            extent = _parse_extent(line)
            if extent is not None:
                extents.append(extent)
                continue
            key, eq, value = line.partition("=")
            key = key.rstrip()
            if eq and _KEY_RE.fullmatch(key):
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                (ddb if key.startswith("ddb.") else entries)[key] = value
                continue
            bad.append(line[:80])
        return cls(text, entries, ddb, tuple(extents), tuple(bad))


# ---------------------------------------------------------------------------------------------
# Results

@dataclass
class VerifyReport:
    """What :meth:`VmdkReader.verify` found; ``ok`` when no finding is an error."""

    findings: list[Finding] = field(default_factory=list)
    grains: int = 0                  # grain markers in the stream
    zero_grains: int = 0             # stored grains that inflate to zeros (deep only)
    populated_bytes: int = 0         # 64 KiB per stored non-zero grain (deep only)
    content_id: str | None = None    # hex xxh3-128 (deep only, when the walk completed)
    layout: str = ""                 # "stream" (GD at end) or "head" (qemu/open-vmdk)

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)


@dataclass(frozen=True)
class ExtractResult:
    """What an extraction wrote."""

    path: str
    size_bytes: int                  # virtual disk size written
    bytes_written: int               # data bytes written (holes excluded for sparse output)
    grains: int                      # grain markers read
    zero_grains: int                 # stored grains that were all zero
    hole_bytes: int                  # bytes left as holes (sparse) or written as zeros


# ---------------------------------------------------------------------------------------------
# Bounded input over a file or a member's byte range


class _Input:
    """Reads [base, base+size) of a binary file, sequentially or (when seekable) anywhere."""

    def __init__(self, f: BinaryIO, base: int, size: int | None, seekable: bool) -> None:
        self.f = f
        self.base = base
        self.size = size
        self.seekable = seekable
        self.pos = 0                      # next byte of the member the file object will give

    def read(self, n: int) -> bytes:
        """Up to n bytes at pos (fewer only at the end of the member)."""
        if self.size is not None:
            n = max(0, min(n, self.size - self.pos))
        parts: list[bytes] = []
        left = n
        while left > 0:
            chunk = self.f.read(left)
            if not chunk:
                break
            parts.append(chunk)
            left -= len(chunk)
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self.pos += len(data)
        return data

    def seek(self, offset: int) -> None:
        """Move to offset: by seeking when possible, else by reading forward."""
        if offset == self.pos:
            return
        if self.seekable:
            self.f.seek(self.base + offset)
            self.pos = offset
            return
        if offset < self.pos:
            raise UnsupportedError("a non-seekable input can be read only once, front to back")
        while self.pos < offset:
            if not self.read(min(_CHUNK, offset - self.pos)):
                break

    def pread(self, offset: int, n: int) -> bytes:
        self.seek(offset)
        return self.read(n)


def _is_zero(data: bytes) -> bool:
    n = len(data)
    return data == _ZERO_GRAIN if n == GRAIN_BYTES else data == bytes(n)


# ---------------------------------------------------------------------------------------------
# Walk events

_EV_GRAIN = 0
_EV_GT = 1
_EV_GD = 2
_EV_FOOTER = 3
_EV_EOS = 4


class VmdkReader:
    """A stream-optimized VMDK file, or a VMDK member read in place inside an OVA.

    ``source`` is a path or a binary file object (seekable or not). For a member, pass the
    open package file with ``base_offset`` (where the member's bytes start) and ``size`` (its
    length); offsets in errors are then relative to the member and nothing outside
    [base_offset, base_offset + size) is read. ``name``/``member`` only label messages.
    """

    def __init__(self, source: str | os.PathLike[str] | BinaryIO, *, name: str | None = None,
                 member: str | None = None, base_offset: int = 0,
                 size: int | None = None) -> None:
        if base_offset < 0 or (size is not None and size < 0):
            raise ValueError("base_offset and size must not be negative")
        self._owned: BinaryIO | None = None
        if isinstance(source, (str, os.PathLike)):
            f: BinaryIO = open_regular(source)      # a FIFO or device is refused, not read
            self._owned = f
            self.name = name if name is not None else os.fspath(source)
        else:
            f = source
            self.name = name if name is not None else str(getattr(source, "name", "<stream>"))
        self.member = member
        try:
            seekable = bool(f.seekable()) if hasattr(f, "seekable") else False
            if seekable:
                end = f.seek(0, io.SEEK_END)
                avail = max(0, end - base_offset)
                size = avail if size is None else min(size, avail)
                f.seek(base_offset)
            self._in = _Input(f, base_offset, size, seekable)
            self._walked = False
            self.header = self._read_header()
            self.descriptor = self._read_descriptor()
        except BaseException:
            self.close()
            raise

    # -- plumbing ------------------------------------------------------------------------

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()
            self._owned = None

    def __enter__(self) -> "VmdkReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _error(self, rule: str, detail: str, offset: int | None) -> VmdkFormatError:
        return VmdkFormatError(rule, detail, path=self.name, member=self.member, offset=offset)

    def _unsupported(self, detail: str) -> UnsupportedError:
        return UnsupportedError("%s: %s" % (location(self.name, self.member), detail))

    @property
    def size(self) -> int | None:
        """Bytes in the file or member (None for a non-seekable input of unknown size)."""
        return self._in.size

    @property
    def seekable(self) -> bool:
        return self._in.seekable

    @property
    def capacity_sectors(self) -> int:
        return self.header.capacity_sectors

    @property
    def capacity_bytes(self) -> int:
        return self.header.capacity_sectors * SECTOR

    @property
    def descriptor_text(self) -> str:
        return self.descriptor.text

    @property
    def n_spans(self) -> int:
        """GD entries: one grain table per numGTEsPerGT grains."""
        h = self.header
        n_grains = -(-h.capacity_sectors // h.grain_sectors)
        return -(-n_grains // h.gtes_per_gt)

    def _read_exact(self, offset: int, n: int, what: str) -> bytes:
        data = self._in.pread(offset, n)
        if len(data) != n:
            raise self._error("vmdk.truncated", "file ends inside %s (%d of %d bytes)"
                              % (what, len(data), n), offset)
        return data

    # -- header --------------------------------------------------------------------------

    def _read_header(self) -> Header:
        sector = self._in.pread(0, SECTOR)
        if len(sector) < 4 or sector[:4] != MAGIC:
            if sector.startswith(b"# Disk DescriptorFile"):
                raise self._unsupported("a descriptor-only VMDK (flat or split extents); "
                                        "only stream-optimized files are read")
            if sector[:4] == b"COWD":
                raise self._unsupported("an ESX COW sparse VMDK; only stream-optimized files "
                                        "are read")
            if len(sector) < SECTOR:
                raise self._error("vmdk.truncated", "file is shorter than the 512-byte header "
                                  "(%d bytes)" % len(sector), 0)
            raise self._error("vmdk.header.magic", "magic %r, expected %r"
                              % (sector[:4], MAGIC), 0)
        if len(sector) < SECTOR:
            raise self._error("vmdk.truncated", "file ends inside the header (%d bytes)"
                              % len(sector), 0)
        h = Header.unpack(sector)
        self._check_header(h, 0, head=True)
        return h

    def _check_header(self, h: Header, offset: int, *, head: bool) -> None:
        """Validate every header field the reader will trust; offset locates the sector."""
        def err(rule: str, detail: str, field_offset: int) -> VmdkFormatError:
            return self._error(rule, detail, offset + field_offset)

        if h.version not in (1, 2, 3):
            raise err("vmdk.header.version", "version %d, expected 1, 2 or 3" % h.version, 4)
        if h.flags & FLAG_NEWLINE_TEST and h.newline_check != NEWLINE_CHECK:
            raise err("vmdk.header.newline", "newline-check bytes %r, expected %r (CR/LF "
                      "translation damaged the file)" % (h.newline_check, NEWLINE_CHECK), 73)
        unknown = h.flags & _INCOMPAT_MASK & ~_KNOWN_INCOMPAT_FLAGS
        if unknown:
            raise self._unsupported("unknown incompatible header flags 0x%x" % unknown)
        if not h.flags & FLAG_COMPRESSED or not h.flags & FLAG_MARKERS:
            raise self._unsupported("flags 0x%x: not a stream-optimized VMDK (needs compressed "
                                    "grains and markers); monolithic/non-compressed sparse "
                                    "extents are not read" % h.flags)
        if h.compress_algorithm != 1:
            raise err("vmdk.header.compression", "compressAlgorithm %d, expected 1 (deflate)"
                      % h.compress_algorithm, 77)
        if h.grain_sectors != GRAIN_SECTORS:
            if h.grain_sectors < 1 or h.grain_sectors & (h.grain_sectors - 1):
                raise err("vmdk.header.grain", "grainSize %d is not a power of two"
                          % h.grain_sectors, 20)
            raise self._unsupported("grainSize %d sectors; only 128 (64 KiB) is read"
                                    % h.grain_sectors)
        if h.gtes_per_gt != GTES_PER_GT:
            raise err("vmdk.header.gt", "numGTEsPerGT %d, expected 512" % h.gtes_per_gt, 44)
        if h.capacity_sectors == 0:
            raise err("vmdk.header.capacity", "capacity is 0 sectors", 12)
        if h.capacity_sectors > MAX_CAPACITY_SECTORS:
            raise self._unsupported("capacity %d sectors is over %d (64 TiB)"
                                    % (h.capacity_sectors, MAX_CAPACITY_SECTORS))
        if h.descriptor_offset_sectors < 1 or h.descriptor_sectors < 1 \
                or h.descriptor_sectors > MAX_DESCRIPTOR_SECTORS:
            raise err("vmdk.header.descriptor", "descriptor at sector %d, %d sectors (a stream "
                      "VMDK embeds 1..%d sectors after the header)"
                      % (h.descriptor_offset_sectors, h.descriptor_sectors,
                         MAX_DESCRIPTOR_SECTORS), 28)
        desc_end = h.descriptor_offset_sectors + h.descriptor_sectors
        if h.overhead_sectors < desc_end:
            raise err("vmdk.header.overhead", "overHead %d is before the descriptor's end %d"
                      % (h.overhead_sectors, desc_end), 64)
        size = self._in.size
        if size is not None and h.overhead_sectors * SECTOR > size:
            raise err("vmdk.header.overhead", "overHead sector %d is past the end of the file "
                      "(%d bytes)" % (h.overhead_sectors, size), 64)
        if head and h.gd_offset_sectors != GD_AT_END:
            self._check_gd_offset(h.gd_offset_sectors, h, offset + 56)

    def _check_gd_offset(self, gd: int, h: Header, where: int) -> None:
        gd_bytes = self.n_spans_for(h) * 4
        desc_end = h.descriptor_offset_sectors + h.descriptor_sectors
        size = self._in.size
        if gd == 0 or gd == GD_AT_END:
            raise self._error("vmdk.header.gd", "gdOffset %#x does not locate a grain "
                              "directory" % gd, where)
        if gd < h.overhead_sectors:
            # Head layout (qemu, open-vmdk): the GD lies between the descriptor and overHead.
            if gd < desc_end or gd * SECTOR + gd_bytes > h.overhead_sectors * SECTOR:
                raise self._error("vmdk.header.gd", "grain directory at sector %d (%d bytes) "
                                  "overlaps the descriptor or passes overHead %d"
                                  % (gd, gd_bytes, h.overhead_sectors), where)
        elif size is not None and gd * SECTOR + gd_bytes > size:
            raise self._error("vmdk.header.gd", "grain directory at sector %d (%d bytes) is "
                              "past the end of the file (%d bytes)" % (gd, gd_bytes, size), where)

    @staticmethod
    def n_spans_for(h: Header) -> int:
        n_grains = -(-h.capacity_sectors // h.grain_sectors)
        return -(-n_grains // h.gtes_per_gt)

    # -- descriptor ----------------------------------------------------------------------

    def _read_descriptor(self) -> Descriptor:
        h = self.header
        offset = h.descriptor_offset_sectors * SECTOR
        raw = self._read_exact(offset, h.descriptor_sectors * SECTOR, "the embedded descriptor")
        raw = raw.split(b"\0", 1)[0]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self._error("vmdk.descriptor.encoding", "descriptor byte %d is not UTF-8 (%s)"
                              % (exc.start, exc.reason), offset + exc.start) from None
        return Descriptor.parse(text)

    def descriptor_findings(self) -> list[Finding]:
        """What readers would object to in the embedded descriptor."""
        d = self.descriptor
        out: list[Finding] = []
        where = location(self.name, self.member)
        offset = self.header.descriptor_offset_sectors * SECTOR
        if d.create_type != "streamOptimized":
            out.append(Finding("vmdk.descriptor.createtype", "error", where, offset,
                               "createType %r in a stream-optimized file" % d.create_type))
        if d.cid is None or d.parent_cid is None:
            out.append(Finding("vmdk.descriptor.cid", "error", where, offset,
                               "descriptor lacks %s" % ("CID" if d.cid is None else "parentCID")))
        if len(d.extents) != 1:
            out.append(Finding("vmdk.descriptor.extent", "error", where, offset,
                               "%d extent lines, expected 1" % len(d.extents)))
        elif d.extents[0].sectors != self.header.capacity_sectors:
            out.append(Finding("vmdk.descriptor.extent", "warning", where, offset,
                               "extent of %d sectors, header capacity %d sectors (the header "
                               "wins)" % (d.extents[0].sectors, self.header.capacity_sectors)))
        return out

    # -- footer --------------------------------------------------------------------------

    def _check_footer(self, footer: Header, offset: int) -> None:
        h = self.header
        if footer.magic != MAGIC:
            raise self._error("vmdk.footer", "footer magic %r" % footer.magic, offset)
        for name in ("version", "flags", "capacity_sectors", "grain_sectors", "gtes_per_gt",
                     "descriptor_offset_sectors", "descriptor_sectors", "overhead_sectors"):
            if getattr(footer, name) != getattr(h, name):
                raise self._error("vmdk.footer", "footer %s %d differs from the header's %d"
                                  % (name, getattr(footer, name), getattr(h, name)), offset)
        if h.gd_offset_sectors != GD_AT_END and footer.gd_offset_sectors != h.gd_offset_sectors:
            raise self._error("vmdk.footer", "footer gdOffset %d differs from the header's %d"
                              % (footer.gd_offset_sectors, h.gd_offset_sectors), offset + 56)
        if footer.newline_check != h.newline_check or \
                footer.compress_algorithm != h.compress_algorithm:
            raise self._error("vmdk.footer", "footer newline-check or compressAlgorithm differs "
                              "from the header's", offset + 73)
        self._check_gd_offset(footer.gd_offset_sectors, h, offset + 56)

    # -- the marker walk -----------------------------------------------------------------

    def _walk(self, *, payloads: bool = True) -> Iterator[tuple[int, int, int, bytes]]:
        """Markers in file order as (event, byte offset, value, payload); raises on bad input.

        Grain: (GRAIN, marker offset, LBA, compressed bytes; the marker sector when
        payloads=False).
        GT/GD: (kind, marker offset, data sector, b""). Footer: (FOOTER, marker offset,
        0, footer sector). EOS: (EOS, offset, 0, b"") always last.
        """
        if self._walked and not self._in.seekable:
            raise self._unsupported("a non-seekable input can be walked only once")
        self._walked = True
        h = self.header
        size = self._in.size
        gd_at_end = h.gd_offset_sectors == GD_AT_END
        gt_sectors = sectors_for(h.gtes_per_gt * 4)
        gd_sectors = sectors_for(self.n_spans * 4)
        pos = h.overhead_sectors * SECTOR
        self._in.seek(pos)
        if self._in.pos != pos:
            raise self._error("vmdk.header.overhead", "overHead sector %d is past the end of "
                              "the file" % h.overhead_sectors, 64)
        prev_lba = -1
        footer_seen = False
        gd_data: int | None = None
        while True:
            sector = self._in.read(SECTOR)
            if len(sector) < SECTOR:
                if sector:
                    raise self._error("vmdk.truncated", "file ends inside a marker sector", pos)
                if not gd_at_end:
                    # qemu writes no end-of-stream marker for an empty disk and open-vmdk's
                    # head layout does not need one: the tables are authoritative there.
                    self.eos_missing = True
                    yield _EV_EOS, pos, 0, b""
                    return
                raise self._error("vmdk.eos", "file ends without an end-of-stream marker", pos)
            val, size_field, kind = MARKER.unpack_from(sector, 0)
            if size_field:
                lba = val
                if footer_seen:
                    raise self._error("vmdk.marker.type", "grain marker after the footer", pos)
                if lba % h.grain_sectors:
                    raise self._error("vmdk.grain.lba", "LBA %d is not a multiple of the grain "
                                      "size %d" % (lba, h.grain_sectors), pos)
                if lba >= h.capacity_sectors:
                    raise self._error("vmdk.grain.lba", "LBA %d is not below the capacity %d"
                                      % (lba, h.capacity_sectors), pos)
                if lba <= prev_lba:
                    raise self._error("vmdk.grain.order", "LBA %d after LBA %d" % (lba, prev_lba),
                                      pos)
                if size_field > MAX_GRAIN_PAYLOAD:
                    raise self._error("vmdk.grain.size", "compressed size %d is over %d"
                                      % (size_field, MAX_GRAIN_PAYLOAD), pos + 8)
                total = sectors_for(12 + size_field) * SECTOR
                if size is not None and pos + total > size:
                    raise self._error("vmdk.truncated", "grain of %d compressed bytes at LBA %d "
                                      "passes the end of the file" % (size_field, lba), pos)
                prev_lba = lba
                if payloads:
                    if total > SECTOR:
                        rest = self._in.read(total - SECTOR)
                        if len(rest) != total - SECTOR:
                            raise self._error("vmdk.truncated", "file ends inside the grain at "
                                              "LBA %d" % lba, pos)
                        payload = (sector[12:] + rest)[:size_field]
                    else:
                        payload = sector[12:12 + size_field]
                    yield _EV_GRAIN, pos, lba, payload
                else:  # the marker sector (repack reads the size and the payload's head)
                    yield _EV_GRAIN, pos, lba, sector
                pos += total
                self._in.seek(pos)
                continue
            if kind == MARKER_EOS:
                if val != 0:
                    raise self._error("vmdk.marker.size", "end-of-stream marker with value %d"
                                      % val, pos)
                if gd_at_end and not footer_seen:
                    raise self._error("vmdk.footer", "header says the GD is at the end but no "
                                      "footer precedes the end-of-stream marker", pos)
                self._check_trailing(pos + SECTOR)
                yield _EV_EOS, pos, 0, b""
                return
            if footer_seen:
                raise self._error("vmdk.marker.type", "marker type %d after the footer (only "
                                  "the end-of-stream marker may follow it)" % kind, pos)
            if kind == MARKER_GT:
                if val != gt_sectors:
                    raise self._error("vmdk.marker.size", "grain-table marker announces %d "
                                      "sectors, a table is %d" % (val, gt_sectors), pos)
                event = _EV_GT
            elif kind == MARKER_GD:
                if not gd_sectors <= val <= gd_sectors + _GD_MARKER_SLACK:
                    raise self._error("vmdk.marker.size", "grain-directory marker announces %d "
                                      "sectors, the directory is %d" % (val, gd_sectors), pos)
                if gd_data is not None:
                    raise self._error("vmdk.marker.type", "a second grain-directory marker", pos)
                gd_data = pos // SECTOR + 1
                event = _EV_GD
            elif kind == MARKER_FOOTER:
                if val != 1:
                    raise self._error("vmdk.marker.size", "footer marker announces %d sectors, "
                                      "expected 1" % val, pos)
                footer_sector = self._in.read(SECTOR)
                if len(footer_sector) != SECTOR:
                    raise self._error("vmdk.truncated", "file ends inside the footer", pos)
                footer = Header.unpack(footer_sector)
                self._check_footer(footer, pos + SECTOR)
                if gd_data is not None and footer.gd_offset_sectors != gd_data:
                    raise self._error("vmdk.footer", "footer gdOffset %d, the grain directory "
                                      "follows its marker at sector %d"
                                      % (footer.gd_offset_sectors, gd_data), pos + SECTOR + 56)
                footer_seen = True
                yield _EV_FOOTER, pos, 0, footer_sector
                pos += 2 * SECTOR
                continue
            else:
                raise self._error("vmdk.marker.type", "unknown marker type %d" % kind, pos + 12)
            end = pos + SECTOR + val * SECTOR
            if size is not None and end > size:
                raise self._error("vmdk.truncated", "table of %d sectors passes the end of the "
                                  "file" % val, pos)
            yield event, pos, pos // SECTOR + 1, b""
            pos = end
            self._in.seek(pos)
            if self._in.pos != pos:
                raise self._error("vmdk.truncated", "file ends inside a table", pos)

    eos_missing = False

    def _check_trailing(self, pos: int) -> None:
        """Zero padding after the end-of-stream sector is tolerated (qemu pads); data is not."""
        checked = 0
        while checked < _TRAILING_CHECK_LIMIT:
            chunk = self._in.read(min(_CHUNK, _TRAILING_CHECK_LIMIT - checked))
            if not chunk:
                return
            if chunk.count(0) != len(chunk):
                first = len(chunk) - len(chunk.lstrip(b"\0"))
                raise self._error("vmdk.trailing", "non-zero byte after the end-of-stream "
                                  "marker", pos + checked + first)
            checked += len(chunk)

    # -- grains --------------------------------------------------------------------------

    def _grain_bytes_at(self, lba: int) -> int:
        """Bytes of the virtual disk a grain at lba covers (less for the last partial grain)."""
        return min(self.header.grain_sectors, self.header.capacity_sectors - lba) * SECTOR

    def inflate(self, payload: bytes, lba: int, offset: int) -> bytes:
        """Inflate one grain; never allocates more than one grain, whatever the payload says."""
        grain_bytes = self.header.grain_sectors * SECTOR
        need = self._grain_bytes_at(lba)
        if len(payload) < 2 or payload[0] & 0x0F != 8 or (payload[0] << 8 | payload[1]) % 31:
            raise self._error("vmdk.grain.inflate", "grain at LBA %d is not zlib-wrapped deflate "
                              "(qemu, VirtualBox and open-vmdk need the wrapper)" % lba,
                              offset + 12)
        d = _inflate_mod.decompressobj()
        try:
            out = d.decompress(payload, grain_bytes)
            if not d.eof and d.unconsumed_tail:
                # Output stopped at the limit: any further byte makes it larger than a grain.
                if d.decompress(d.unconsumed_tail, 1):
                    raise self._error("vmdk.grain.inflate", "grain at LBA %d inflates to more "
                                      "than %d bytes" % (lba, grain_bytes), offset + 12)
        except _INFLATE_ERRORS as exc:
            raise self._error("vmdk.grain.inflate", "grain at LBA %d: %s" % (lba, exc),
                              offset + 12) from None
        if not d.eof:
            raise self._error("vmdk.grain.inflate", "grain at LBA %d: deflate stream is cut "
                              "short" % lba, offset + 12)
        if d.unused_data.strip(b"\0"):
            raise self._error("vmdk.grain.inflate", "grain at LBA %d: %d bytes after the end of "
                              "its deflate stream" % (lba, len(d.unused_data)), offset + 12)
        n = len(out)
        if n != grain_bytes and not (need < grain_bytes and need <= n):
            raise self._error("vmdk.grain.inflate", "grain at LBA %d inflates to %d bytes, "
                              "expected %d" % (lba, n, grain_bytes if need == grain_bytes
                                               else need), offset + 12)
        return out if n == need else out[:need]

    def iter_grains(self) -> Iterator[tuple[int, bytes]]:
        """(LBA in sectors, inflated grain) per stored grain, in file order.

        Each grain is 64 KiB except the last grain of a capacity that is not a multiple of
        64 KiB, which is cut at the capacity. Works on non-seekable input (once).
        """
        for event, pos, value, payload in self._walk():
            if event == _EV_GRAIN:
                yield value, self.inflate(payload, value, pos)

    def grains(self, *, payloads: bool = True) -> Iterator[tuple[int, int, int, bytes]]:
        """(LBA, marker offset, compressed size, payload) per stored grain in file order,
        checked as every walk is (order, bounds, markers, footer, end of stream).
        payloads=False gives only the payload's first bytes (those in the marker's sector)
        and reads none of the rest."""
        for event, pos, value, payload in self._walk(payloads=payloads):
            if event != _EV_GRAIN:
                continue
            if payloads:
                yield value, pos, len(payload), payload
            else:
                size = MARKER.unpack_from(payload, 0)[1]
                yield value, pos, size, payload[12:12 + size]

    def footer(self) -> Header | None:
        """The footer header (GD at end), found by the marker walk; None when there is none."""
        for event, _pos, _value, payload in self._walk(payloads=False):
            if event == _EV_FOOTER:
                return Header.unpack(payload)
        return None

    # -- verify --------------------------------------------------------------------------

    def verify(self, *, deep: bool = False) -> VerifyReport:
        """Check everything checkable and return findings instead of raising.

        Always: header, descriptor, the whole marker walk and, on seekable input, every GD
        entry and GT entry against the grain markers. deep=True also inflates every grain and
        computes the content id. Header errors are raised at open time, not reported here.
        """
        report = VerifyReport(layout="stream" if self.header.gd_offset_sectors == GD_AT_END
                              else "head")
        report.findings.extend(self.descriptor_findings())
        cid = ContentId(self.header.capacity_sectors) if deep else None
        footer: Header | None = None
        try:
            for event, pos, value, payload in self._walk(payloads=deep):
                if event == _EV_GRAIN:
                    report.grains += 1
                    if cid is not None:
                        grain = self.inflate(payload, value, pos)
                        if _is_zero(grain):
                            report.zero_grains += 1
                        else:
                            # a partial last grain covers only up to the capacity
                            report.populated_bytes += self._grain_bytes_at(value)
                            cid.add(value, grain_digest(grain))
                elif event == _EV_FOOTER:
                    footer = Header.unpack(payload)
        except FormatError as exc:
            report.findings.append(exc.finding())
            return report
        if self.eos_missing:
            report.findings.append(Finding("vmdk.eos", "warning", location(self.name, self.member),
                                           self.size, "no end-of-stream marker (qemu omits it "
                                           "for an empty disk; VMware readers expect one)"))
        if cid is not None:
            report.content_id = cid.hexdigest()
        if not self._in.seekable:
            report.findings.append(Finding("vmdk.gd.entry", "info",
                                           location(self.name, self.member), None,
                                           "grain tables not cross-checked: input not seekable"))
            return report
        gd = self.header.gd_offset_sectors
        if gd == GD_AT_END:
            gd = footer.gd_offset_sectors if footer is not None else GD_AT_END
        try:
            self._check_tables(gd, report.findings)
        except FormatError as exc:
            report.findings.append(exc.finding())
        return report

    def _table_location(self, entry: int, span: int, gd_offset: int) -> None:
        """A GD entry must point at a GT inside the file: in the head or after a GT marker."""
        h = self.header
        size = self._in.size if self._in.size is not None else 0
        where = gd_offset * SECTOR + span * 4
        desc_end = h.descriptor_offset_sectors + h.descriptor_sectors
        gt_bytes = h.gtes_per_gt * 4
        if entry < desc_end or entry * SECTOR + gt_bytes > size:
            raise self._error("vmdk.gd.entry", "GD entry %d points at sector %d, outside the "
                              "file's table area" % (span, entry), where)
        if entry < h.overhead_sectors:
            if entry * SECTOR + gt_bytes > h.overhead_sectors * SECTOR:
                raise self._error("vmdk.gd.entry", "GD entry %d: the table at sector %d passes "
                                  "overHead %d" % (span, entry, h.overhead_sectors), where)
        else:
            marker = self._read_exact((entry - 1) * SECTOR, SECTOR, "a grain-table marker")
            val, size_field, kind = MARKER.unpack_from(marker, 0)
            if size_field or kind != MARKER_GT or val != sectors_for(gt_bytes):
                raise self._error("vmdk.gd.entry", "GD entry %d points at sector %d, which does "
                                  "not follow a grain-table marker" % (span, entry), where)

    def _check_tables(self, gd_offset: int, findings: list[Finding]) -> None:
        """Every GT entry points at the grain marker of its LBA, and every grain is listed."""
        h = self.header
        n_spans = self.n_spans
        gtes = h.gtes_per_gt
        gt_struct = struct.Struct("<%dI" % gtes)
        zeroed_ok = bool(h.flags & _FLAG_ZEROED_GTE)
        where_name = location(self.name, self.member)
        gd_chunk_entries = 16384
        gd_cache: tuple[int, tuple[int, ...]] = (-1, ())

        def gd_entry(span: int) -> int:
            nonlocal gd_cache
            first = span - span % gd_chunk_entries
            if gd_cache[0] != first:
                count = min(gd_chunk_entries, n_spans - first)
                raw = self._read_exact(gd_offset * SECTOR + first * 4, count * 4,
                                       "the grain directory")
                gd_cache = (first, struct.unpack("<%dI" % count, raw))
            return gd_cache[1][span - first]

        def load(span: int) -> tuple[int, ...]:
            entry = gd_entry(span)
            if entry == 0:
                return ()
            self._table_location(entry, span, gd_offset)
            return gt_struct.unpack(self._read_exact(entry * SECTOR, gtes * 4, "a grain table"))

        def add(rule: str, offset: int | None, message: str) -> bool:
            findings.append(Finding(rule, "error", where_name, offset, message))
            return len(findings) >= _MAX_FINDINGS

        def finish(span: int, table: tuple[int, ...], matched: set[int]) -> bool:
            """Entries of a finished span that no grain marker answered."""
            if not table:
                return False
            entry_off = gd_entry(span) * SECTOR
            for i, sector in enumerate(table):
                if sector and i not in matched and not (zeroed_ok and sector == _ZEROED_GTE):
                    lba = (span * gtes + i) * h.grain_sectors
                    if add("vmdk.gt.entry", entry_off + i * 4, "GT entry for LBA %d points at "
                           "sector %d, which holds no grain marker for it" % (lba, sector)):
                        return True
            return False

        cur = -1
        table: tuple[int, ...] = ()
        matched: set[int] = set()
        for event, pos, lba, _payload in self._walk(payloads=False):
            if event != _EV_GRAIN:
                continue
            g = lba // h.grain_sectors
            span, index = divmod(g, gtes)
            if span != cur:
                if finish(cur, table, matched):
                    return
                for between in range(cur + 1, span):
                    if finish(between, load(between), set()):
                        return
                cur, table, matched = span, load(span), set()
            if not table:
                if add("vmdk.gt.entry", pos, "grain at LBA %d has no grain table (GD entry %d is "
                       "0): readers that follow the tables see zeros" % (lba, span)):
                    return
            elif table[index] != pos // SECTOR:
                if add("vmdk.gt.entry", gd_entry(span) * SECTOR + index * 4,
                       "GT entry for LBA %d is %d, the grain marker is at sector %d"
                       % (lba, table[index], pos // SECTOR)):
                    return
            else:
                matched.add(index)
        if finish(cur, table, matched):
            return
        for between in range(cur + 1, n_spans):
            if finish(between, load(between), set()):
                return


# ---------------------------------------------------------------------------------------------
# Extraction


def extract_raw(reader: VmdkReader, out_path: str | os.PathLike[str], *,
                sparse: bool = True) -> ExtractResult:
    """Write the virtual disk as a raw image of exactly capacity bytes.

    Unwritten and all-zero grains become holes (sparse=True) or written zeros. The image is
    written under a temporary name and renamed to OUT only when complete.
    """
    with atomic_output(out_path, fsync=False) as out:
        return write_raw(reader, out, path=os.fspath(out_path), sparse=sparse)


def write_raw(reader: VmdkReader, out: BinaryIO, *, path: str,
              sparse: bool = True) -> ExtractResult:
    """extract_raw into an open, seekable, empty file (``path`` names it in the result)."""
    total = reader.capacity_bytes
    walk = _DataGrains(reader)
    written = 0
    cursor = 0          # bytes of the image accounted for (data written or hole)
    for start, grain in walk:
        if not sparse and start > cursor:
            _write_zeros(out, start - cursor)
        out.seek(start)
        out.write(grain)
        written += len(grain)
        cursor = start + len(grain)
    if not sparse and total > cursor:
        out.seek(cursor)
        _write_zeros(out, total - cursor)
    out.truncate(total)
    holes = total - written
    return ExtractResult(path, total, written if sparse else total, walk.grains,
                         walk.zero_grains, holes)


class _DataGrains:
    """The non-zero grains of a walk as (byte offset, bytes), counting what it passes over."""

    def __init__(self, reader: VmdkReader) -> None:
        self._reader = reader
        self.grains = 0
        self.zero_grains = 0

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        for lba, grain in self._reader.iter_grains():
            self.grains += 1
            if _is_zero(grain):
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
                level: int = 3) -> ExtractResult:
    """Write the virtual disk as zstd-compressed raw: concatenated frames (see above) that
    ``zstd -d`` turns into exactly capacity bytes.  Time and memory follow the stored grains,
    not the capacity.  On any error (or KeyboardInterrupt) nothing is left under OUT or a
    temporary name, and the error itself goes on: no frame is finished on the way out."""
    with atomic_output(out_path, fsync=False) as out:
        return write_zst(reader, out, path=os.fspath(out_path), level=level)


def write_zst(reader: VmdkReader, out: BinaryIO, *, path: str, level: int = 3) -> ExtractResult:
    """extract_zst into an open file (``path`` names it in the result)."""
    import zstandard

    total = reader.capacity_bytes
    walk = _DataGrains(reader)
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

