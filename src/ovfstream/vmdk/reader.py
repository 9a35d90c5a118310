"""Reader for stream-optimized VMDK files: header, embedded descriptor, marker walk, tables.

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
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, TypeVar


from ..errors import Finding, FormatError, UnsupportedError, VmdkFormatError, location
from ..pipeline import ordered_map
from ..regular import open_regular
from .contentid import ContentId, fold_content_id, grain_digest
from .descriptor import Descriptor
from .layout import (
    AT_CAPACITY,
    AT_COMPRESS_ALGORITHM,
    AT_DESCRIPTOR_OFFSET,
    AT_GD_OFFSET,
    AT_GRAIN_DATA,
    AT_GRAIN_SIZE,
    AT_GTES_PER_GT,
    AT_MARKER_SIZE,
    AT_MARKER_TYPE,
    AT_NEWLINE_CHECK,
    AT_OVERHEAD,
    AT_VERSION,
    FLAG_COMPRESSED,
    FLAG_MARKERS,
    FLAG_NEWLINE_TEST,
    FLAG_ZEROED_GTE,
    GD_AT_END,
    GRAIN_BYTES,
    GRAIN_SECTORS,
    GTES_PER_GT,
    GTE_ZEROED,
    INCOMPAT_MASK,
    KNOWN_INCOMPAT_FLAGS,
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

R = TypeVar("R")

__all__ = [
    "RULES",
    "MAX_CAPACITY_SECTORS",
    "VmdkReader",
    "VerifyReport",
    "ContentId",
    "grain_digest",
    "fold_content_id",
    "is_zero",
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
_CHUNK = 1 << 20
_MAX_FINDINGS = 100                     # per verify run: a broken file must not fill memory
_TRAILING_CHECK_LIMIT = 64 << 20        # bytes after EOS we read to prove they are zero
_ZERO_GRAIN = bytes(GRAIN_BYTES)
_BATCH_GRAINS = 16                      # grains per inflate task (1 MiB inflated)
_TAIL_SEARCH_BYTES = 64 << 10          # zero padding tolerated after a stream's EOS marker
_GD_MARKER_SLACK = 128                  # sectors a writer may round its GD up by


# Content id: in contentid.py, shared with the writer (re-exported here).


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


def is_zero(data: bytes) -> bool:
    """True when the grain (or a partial last grain) holds only zero bytes."""
    n = len(data)
    return data == _ZERO_GRAIN if n == GRAIN_BYTES else data == bytes(n)


def _digest_unless_zero(_lba: int, grain: bytes) -> int | None:
    """verify --deep's per-grain work (in the workers): None for a zero grain."""
    return None if is_zero(grain) else grain_digest(grain)


def _grain_itself(_lba: int, grain: bytes) -> bytes:
    return grain


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

    ``hosted=True`` also accepts any hosted sparse extent (what sources/vmdk.py reads): the
    uncompressed grains of a monolithicSparse or twoGbMaxExtentSparse extent, without markers,
    and an extent without an embedded descriptor (descriptorOffset and descriptorSize 0).
    Only the header and tables are checked then; the marker walk is for stream files.
    """

    def __init__(self, source: str | os.PathLike[str] | BinaryIO, *, name: str | None = None,
                 member: str | None = None, base_offset: int = 0,
                 size: int | None = None, hosted: bool = False) -> None:
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
        self.hosted = hosted
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
            raise err("vmdk.header.version", "version %d, expected 1, 2 or 3" % h.version, AT_VERSION)
        if h.flags & FLAG_NEWLINE_TEST and h.newline_check != NEWLINE_CHECK:
            raise err("vmdk.header.newline", "newline-check bytes %r, expected %r (CR/LF "
                      "translation damaged the file)" % (h.newline_check, NEWLINE_CHECK), AT_NEWLINE_CHECK)
        unknown = h.flags & INCOMPAT_MASK & ~KNOWN_INCOMPAT_FLAGS
        if unknown:
            raise self._unsupported("unknown incompatible header flags 0x%x" % unknown)
        if self.hosted and not h.flags & (FLAG_COMPRESSED | FLAG_MARKERS):
            pass  # a plain hosted sparse extent: grains stored as they are
        elif not h.flags & FLAG_COMPRESSED or not h.flags & FLAG_MARKERS:
            raise self._unsupported("flags 0x%x: not a stream-optimized VMDK (needs compressed "
                                    "grains and markers); monolithic/non-compressed sparse "
                                    "extents are not read" % h.flags)
        if h.compress_algorithm != 1 and h.flags & FLAG_COMPRESSED:
            raise err("vmdk.header.compression", "compressAlgorithm %d, expected 1 (deflate)"
                      % h.compress_algorithm, AT_COMPRESS_ALGORITHM)
        if h.grain_sectors != GRAIN_SECTORS:
            if h.grain_sectors < 1 or h.grain_sectors & (h.grain_sectors - 1):
                raise err("vmdk.header.grain", "grainSize %d is not a power of two"
                          % h.grain_sectors, AT_GRAIN_SIZE)
            raise self._unsupported("grainSize %d sectors; only 128 (64 KiB) is read"
                                    % h.grain_sectors)
        if h.gtes_per_gt != GTES_PER_GT:
            raise err("vmdk.header.gt", "numGTEsPerGT %d, expected 512" % h.gtes_per_gt, AT_GTES_PER_GT)
        if h.capacity_sectors == 0:
            raise err("vmdk.header.capacity", "capacity is 0 sectors", AT_CAPACITY)
        if h.capacity_sectors > MAX_CAPACITY_SECTORS:
            raise self._unsupported("capacity %d sectors is over %d (64 TiB)"
                                    % (h.capacity_sectors, MAX_CAPACITY_SECTORS))
        no_descriptor = self.hosted and h.descriptor_offset_sectors == h.descriptor_sectors == 0
        if not no_descriptor and (h.descriptor_offset_sectors < 1 or h.descriptor_sectors < 1) \
                or h.descriptor_sectors > MAX_DESCRIPTOR_SECTORS:
            raise err("vmdk.header.descriptor", "descriptor at sector %d, %d sectors (a stream "
                      "VMDK embeds 1..%d sectors after the header)"
                      % (h.descriptor_offset_sectors, h.descriptor_sectors,
                         MAX_DESCRIPTOR_SECTORS), AT_DESCRIPTOR_OFFSET)
        desc_end = self._head_end(h)
        if h.overhead_sectors < desc_end:
            raise err("vmdk.header.overhead", "overHead %d is before the descriptor's end %d"
                      % (h.overhead_sectors, desc_end), AT_OVERHEAD)
        size = self._in.size
        if size is not None and h.overhead_sectors * SECTOR > size:
            raise err("vmdk.header.overhead", "overHead sector %d is past the end of the file "
                      "(%d bytes)" % (h.overhead_sectors, size), AT_OVERHEAD)
        if head and h.gd_offset_sectors != GD_AT_END:
            self._check_gd_offset(h.gd_offset_sectors, h, offset + AT_GD_OFFSET)

    def _check_gd_offset(self, gd: int, h: Header, where: int) -> None:
        gd_bytes = self.n_spans_for(h) * 4
        desc_end = self._head_end(h)
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
    def _head_end(h: Header) -> int:
        """The first sector after the header and the embedded descriptor: tables start there."""
        return max(1, h.descriptor_offset_sectors + h.descriptor_sectors)

    @staticmethod
    def n_spans_for(h: Header) -> int:
        n_grains = -(-h.capacity_sectors // h.grain_sectors)
        return -(-n_grains // h.gtes_per_gt)

    # -- descriptor ----------------------------------------------------------------------

    def _read_descriptor(self) -> Descriptor:
        h = self.header
        offset = h.descriptor_offset_sectors * SECTOR
        if h.descriptor_sectors == 0:  # a hosted extent whose descriptor is a file of its own
            return Descriptor.parse("")
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
                              % (footer.gd_offset_sectors, h.gd_offset_sectors), offset + AT_GD_OFFSET)
        if footer.newline_check != h.newline_check or \
                footer.compress_algorithm != h.compress_algorithm:
            raise self._error("vmdk.footer", "footer newline-check or compressAlgorithm differs "
                              "from the header's", offset + AT_NEWLINE_CHECK)
        self._check_gd_offset(footer.gd_offset_sectors, h, offset + AT_GD_OFFSET)

    def tail_footer(self) -> tuple[Header, int]:
        """The footer of a stream whose head says GD_AT_END, found at the end of the file
        without walking the grains: the last non-zero sector (only the end-of-stream marker
        and zero padding may follow it) is the footer, right after its marker.  Returns
        (footer, byte offset), checked against the header; vmdk.footer when it is not there."""
        size = self._in.size
        if size is None or not self._in.seekable:
            raise self._unsupported("finding the footer needs a seekable input")
        first = self.header.overhead_sectors * SECTOR
        start = max(first, size - _TAIL_SEARCH_BYTES)
        start -= start % SECTOR
        tail = self._in.pread(start, size - start)
        end = len(tail) - len(tail) % SECTOR
        while end > 0 and not any(tail[end - SECTOR:end]):
            end -= SECTOR
        at = start + end - SECTOR         # the last non-zero sector
        if end >= 2 * SECTOR and tail[end - SECTOR:end - SECTOR + 4] == MAGIC \
                and MARKER.unpack_from(tail, end - 2 * SECTOR) == (1, 0, MARKER_FOOTER):
            footer = Header.unpack(tail[end - SECTOR:end])
            self._check_footer(footer, at)
            return footer, at
        raise self._error("vmdk.footer", "the header puts the grain directory at the end, but "
                          "no footer marker and footer end the file (truncated, or the stream "
                          "was never finished)", max(at, 0) if end else size)

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
                              "the file" % h.overhead_sectors, AT_OVERHEAD)
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
                                      % (size_field, MAX_GRAIN_PAYLOAD), pos + AT_MARKER_SIZE)
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
                                      % (footer.gd_offset_sectors, gd_data), pos + SECTOR + AT_GD_OFFSET)
                footer_seen = True
                yield _EV_FOOTER, pos, 0, footer_sector
                pos += 2 * SECTOR
                continue
            else:
                raise self._error("vmdk.marker.type", "unknown marker type %d" % kind, pos + AT_MARKER_TYPE)
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
                              offset + AT_GRAIN_DATA)
        d = _inflate_mod.decompressobj()
        try:
            out = d.decompress(payload, grain_bytes)
            if not d.eof and d.unconsumed_tail:
                # Output stopped at the limit: any further byte makes it larger than a grain.
                if d.decompress(d.unconsumed_tail, 1):
                    raise self._error("vmdk.grain.inflate", "grain at LBA %d inflates to more "
                                      "than %d bytes" % (lba, grain_bytes), offset + AT_GRAIN_DATA)
        except _INFLATE_ERRORS as exc:
            raise self._error("vmdk.grain.inflate", "grain at LBA %d: %s" % (lba, exc),
                              offset + AT_GRAIN_DATA) from None
        if not d.eof:
            raise self._error("vmdk.grain.inflate", "grain at LBA %d: deflate stream is cut "
                              "short" % lba, offset + AT_GRAIN_DATA)
        if d.unused_data.strip(b"\0"):
            raise self._error("vmdk.grain.inflate", "grain at LBA %d: %d bytes after the end of "
                              "its deflate stream" % (lba, len(d.unused_data)), offset + AT_GRAIN_DATA)
        n = len(out)
        if n != grain_bytes and not (need < grain_bytes and need <= n):
            raise self._error("vmdk.grain.inflate", "grain at LBA %d inflates to %d bytes, "
                              "expected %d" % (lba, n, grain_bytes if need == grain_bytes
                                               else need), offset + AT_GRAIN_DATA)
        return out if n == need else out[:need]

    def iter_grains(self, *, workers: int = 1) -> Iterator[tuple[int, bytes]]:
        """(LBA in sectors, inflated grain) per stored grain, in file order.

        Each grain is 64 KiB except the last grain of a capacity that is not a multiple of
        64 KiB, which is cut at the capacity. Works on non-seekable input (once).
        ``workers`` > 1 inflates in that many threads: the same grains, order and errors.
        """
        return self.map_grains(_grain_itself, workers=workers)  # type: ignore[return-value]

    def map_grains(self, fn: Callable[[int, bytes], R], *, workers: int = 1
                   ) -> Iterator[tuple[int, R]]:
        """(LBA, fn(LBA, inflated grain)) per stored grain, in file order; ``fn`` runs in the
        inflating thread, so what it keeps small (a digest, a pwrite's count) is all that
        crosses threads."""
        for (event, _pos, value, _payload), result in self._inflating(workers, fn):
            if event == _EV_GRAIN:
                yield value, result  # type: ignore[misc]

    def _inflating(self, workers: int, post: "Callable[[int, bytes], object] | None"
                   ) -> Iterator[tuple[tuple[int, int, int, bytes], object]]:
        """The marker walk with every grain inflated (then passed through ``post(lba,
        grain)``) by ``workers`` threads (ISA-L/zlib inflate releases the GIL), results in
        file order.

        The walk runs on the calling thread, ahead of the workers by a bounded window, and
        hands them batches of _BATCH_GRAINS grains (one task per 64 KiB grain costs about what
        inflating it does).  An error, the walk's or a grain's, ends its batch and travels in
        file order, so the first error reported is the one a single thread meets first,
        whatever ``workers`` is."""
        def batches() -> Iterator[list[object]]:
            batch: list[object] = []
            try:
                for item in self._walk():
                    batch.append(item)
                    if len(batch) >= _BATCH_GRAINS:
                        yield batch
                        batch = []
            except FormatError as exc:
                batch.append(exc)
            if batch:
                yield batch

        def work(batch: list[object]) -> list[object]:
            out: list[object] = []
            for item in batch:
                if isinstance(item, FormatError):
                    out.append(item)
                    break
                event, pos, value, payload = item  # type: ignore[misc]
                if event != _EV_GRAIN:
                    out.append((item, None))
                    continue
                try:
                    grain = self.inflate(payload, value, pos)
                except FormatError as exc:
                    out.append(exc)
                    break
                out.append((item, post(value, grain) if post is not None else grain))
            return out

        for results in ordered_map(work, batches(), workers=workers):
            for result in results:
                if isinstance(result, FormatError):
                    raise result
                yield result  # type: ignore[misc]

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

    def verify(self, *, deep: bool = False, workers: int = 1) -> VerifyReport:
        """Check everything checkable and return findings instead of raising.

        Always: header, descriptor, the whole marker walk and, on seekable input, every GD
        entry against the grain markers. deep=True also inflates every grain (in ``workers``
        ``workers`` threads: the same report whatever their number) and computes the content
        id. Header errors are raised at open time, not reported here.
        """
        report = VerifyReport(layout="stream" if self.header.gd_offset_sectors == GD_AT_END
                              else "head")
        report.findings.extend(self.descriptor_findings())
        cid = ContentId(self.header.capacity_sectors) if deep else None
        footer: Header | None = None
        walk: Iterator[tuple[tuple[int, int, int, bytes], object]] = (
            self._inflating(workers, _digest_unless_zero) if deep
            else ((item, None) for item in self._walk(payloads=False)))
        try:
            for (event, _pos, value, payload), digest in walk:
                if event == _EV_GRAIN:
                    report.grains += 1
                    if cid is None:
                        continue
                    if digest is None:
                        report.zero_grains += 1
                    else:
                        # a partial last grain covers only up to the capacity
                        report.populated_bytes += self._grain_bytes_at(value)
                        cid.add(value, digest)  # type: ignore[arg-type]
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

    def grain_directory(self, gd_offset: int) -> bytes:
        """The GD's raw entries (4 bytes per span); gd_offset was checked with the header."""
        return self._read_exact(gd_offset * SECTOR, self.n_spans * 4, "the grain directory")

    def grain_table(self, entry: int, span: int, gd_offset: int) -> bytes:
        """The raw GT a GD entry points at, once its location is checked."""
        self._table_location(entry, span, gd_offset)
        return self._read_exact(entry * SECTOR, self.header.gtes_per_gt * 4, "a grain table")

    def _table_location(self, entry: int, span: int, gd_offset: int) -> None:
        """A GD entry must point at a GT inside the file: in the head or after a GT marker."""
        h = self.header
        size = self._in.size if self._in.size is not None else 0
        where = gd_offset * SECTOR + span * 4
        desc_end = self._head_end(h)
        gt_bytes = h.gtes_per_gt * 4
        if entry < desc_end or entry * SECTOR + gt_bytes > size:
            raise self._error("vmdk.gd.entry", "GD entry %d points at sector %d, outside the "
                              "file's table area" % (span, entry), where)
        if entry < h.overhead_sectors:
            if entry * SECTOR + gt_bytes > h.overhead_sectors * SECTOR:
                raise self._error("vmdk.gd.entry", "GD entry %d: the table at sector %d passes "
                                  "overHead %d" % (span, entry, h.overhead_sectors), where)
        elif h.flags & FLAG_MARKERS:
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
        zeroed_ok = bool(h.flags & FLAG_ZEROED_GTE)
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
            return gt_struct.unpack(self.grain_table(entry, span, gd_offset))

        def add(rule: str, offset: int | None, message: str) -> bool:
            findings.append(Finding(rule, "error", where_name, offset, message))
            return len(findings) >= _MAX_FINDINGS

        def finish(span: int, table: tuple[int, ...], matched: set[int]) -> bool:
            """Entries of a finished span that no grain marker answered."""
            if not table:
                return False
            entry_off = gd_entry(span) * SECTOR
            for i, sector in enumerate(table):
                if sector and i not in matched and not (zeroed_ok and sector == GTE_ZEROED):
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
