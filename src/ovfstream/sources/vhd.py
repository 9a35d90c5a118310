"""VHD images (qemu-img's "vpc"), fixed and dynamic, as a source of spans.

Follows Microsoft's "Virtual Hard Disk Image Format Specification" (version 1.0, 2006):
"Hard Disk Footer Format" (512 big-endian bytes at the end of every VHD, and a copy at 0 in a
dynamic one; the checksum is the one's complement of the byte sum without its own field),
"Dynamic Disk Header Format" (1024 bytes at the footer's data offset, cookie ``cxsparse``),
"Block Allocation Table and Data Blocks" (one big-endian uint32 per block: the sector of the
block, 0xFFFFFFFF when unallocated; a block is its sector bitmap, padded to 512 bytes, then
its data; bit 7 of bitmap byte 0 is the block's first sector).

* A fixed disk is its data followed by the footer (511 bytes in old Virtual PC files): read
  like a raw file, its holes found by SEEK_DATA/SEEK_HOLE.
* A dynamic disk's unallocated blocks are holes, never read.  Inside an allocated block a
  sector whose bitmap bit is 0 reads as zeros: a block whose bitmap is all ones (what qemu
  and Hyper-V write) is one pread, an all-zero one is a hole, a mixed one is read sector run
  by sector run with its bitmap read again.
* A differencing disk (type 4) reads its parent through the parent locators that name a
  file ("W2ru" relative, then "W2ku" absolute; UTF-16LE), opened with ``open_source`` up to
  ``MAX_CHAIN_DEPTH`` links, its footer's unique id checked against the child's record: a
  block the child lacks, and a sector whose bitmap bit is 0, read from the parent.
"""

from __future__ import annotations

import array
import heapq
import os
import struct
import sys
from typing import Iterator

from ..errors import FormatError
from .base import DiskSource, fill_zeros
from .blocks import BlockTableSource, Claim, check_disjoint, coalesce, union
from .raw import data_extents

__all__ = ["VhdSource", "VhdFormatError", "RULES", "vhd_virtual_size"]

RULES = {
    "vhd.footer": "the VHD footer is not valid: cookie 'conectix', file format version "
                  "1.0, a known disk type, its checksum, a size whose data fits in the file",
    "vhd.dynamic": "the dynamic disk header is not valid: cookie 'cxsparse' inside the file, "
                   "version 1.0, its checksum, a power-of-two block size, enough table entries "
                   "for the disk's size",
    "vhd.bat": "a block allocation table entry points outside the file, or two blocks (or a "
               "block and the headers or the table) share bytes",
    "vhd.parent": "a differencing VHD's parent cannot be used: no locator names a file that "
                  "exists, its unique id is not the one the child recorded, or the chain is "
                  "deeper than 16 links",
}


class VhdFormatError(FormatError):
    """A VHD footer, dynamic header or allocation table breaks the format."""


SECTOR = 512
FOOTER_BYTES = 512
FOOTER_COOKIE = b"conectix"
DYNAMIC_COOKIE = b"cxsparse"
VERSION_1_0 = 0x00010000
DISK_FIXED, DISK_DYNAMIC, DISK_DIFFERENCING = 2, 3, 4
DYNAMIC_HEADER_BYTES = 1024
UNALLOCATED = 0xFFFFFFFF
MIN_BLOCK_BYTES = SECTOR              # the spec sets no bounds; qemu accepts powers of 2 >= 512
MAX_BLOCK_BYTES = 256 << 20
MAX_BLOCKS = 1 << 22                  # 8 TiB of 2 MiB blocks: past VHD's 2040 GiB; bounds the BAT
MAX_GEOMETRY_SECTORS = 65535 * 16 * 255
MAX_CHAIN_DEPTH = 16
MAX_LOCATOR_BYTES = 64 << 10          # a path, in UTF-16: far more than any file system allows
LOCATOR_CODES = (b"W2ru", b"W2ku")    # relative, then absolute path (UTF-16LE)
BLOCK_ABSENT, BLOCK_FULL, BLOCK_MIXED = 0, 1, 2  # absent: not allocated or every bit 0
# Creator applications whose footer "current size" is the disk size (qemu block/vpc.c); the
# others (Virtual PC's "vpc ", older qemu's "qemu"...) size the disk by its CHS geometry.
CURRENT_SIZE_CREATORS = (b"win ", b"qem2", b"d2v ", b"CTXS", b"tap\x00")

# cookie, features, file format version, data offset, timestamp, creator application,
# creator version, creator host OS, original size, current size, cylinders, heads,
# sectors per track, disk type, checksum
_FOOTER = struct.Struct(">8sIIQI4sI4sQQHBBII")
_CHECKSUM_AT = 64
# cookie, data offset, table offset, header version, max table entries, block size, checksum
_DYNAMIC = struct.Struct(">8sQQIIII")
_DYNAMIC_CHECKSUM_AT = 36
_UNIQUE_ID = slice(68, 84)         # in the footer
_PARENT_UNIQUE_ID = slice(40, 56)  # in the dynamic header
_PARENT_NAME = slice(64, 576)      # parent unicode name, UTF-16BE
# platform code, platform data space, platform data length, platform data offset
_LOCATOR = struct.Struct(">4sII4xQ")
_LOCATORS_AT = 576


def _checksum(data: bytes, at: int) -> int:
    """One's complement of the sum of every byte but the 4-byte checksum field at ``at``."""
    return ~(sum(data) - sum(data[at:at + 4])) & 0xFFFFFFFF


def vhd_virtual_size(creator_app: bytes, current_size: int, cylinders: int, heads: int,
                     sectors_per_track: int) -> int:
    """The disk size in bytes, as qemu-img reads it (block/vpc.c), so that ``qemu-img
    compare`` agrees with what we write.  Virtual PC sizes a disk by its CHS geometry and
    writes a "current size" that is often larger; Hyper-V, Disk2vhd, XenServer and qemu's
    ``force_size`` images ("qem2") mean the current size.  qemu takes the geometry unless
    the creator is one of the latter, or the geometry is the largest CHS can say (a bigger
    disk); the size counts whole sectors."""
    chs_sectors = cylinders * heads * sectors_per_track
    if creator_app in CURRENT_SIZE_CREATORS or chs_sectors == MAX_GEOMETRY_SECTORS:
        return current_size // SECTOR * SECTOR
    return chs_sectors * SECTOR


class VhdSource(BlockTableSource):
    """An open fixed, dynamic or differencing VHD.  Thread-safe (pread; the tables are read-only)."""

    format = "vpc"
    error = VhdFormatError
    _parent: DiskSource | None = None

    # -- footer ----------------------------------------------------------------------------

    def _read_footer(self) -> tuple[bytes, int]:
        """The footer's 512 bytes and their offset: the copy at 0 when there is one (a
        dynamic disk, as qemu reads it), else the end of the file (511 bytes in old files)."""
        file_size = self._file.size
        if file_size < FOOTER_BYTES - 1:
            raise self._error("vhd.footer", "the file is %d bytes, smaller than a footer"
                              % file_size, 0)
        head = self._file.pread(min(FOOTER_BYTES, file_size), 0)
        if head[:8] == FOOTER_COOKIE and len(head) == FOOTER_BYTES:
            return head, 0
        tail = self._file.pread(min(FOOTER_BYTES, file_size), max(0, file_size - FOOTER_BYTES))
        if len(tail) == FOOTER_BYTES and tail[:8] == FOOTER_COOKIE:
            return tail, file_size - FOOTER_BYTES
        if tail[-511:][:8] == FOOTER_COOKIE:  # the old 511-byte footer: its reserved tail is short
            return tail[-511:] + b"\x00", file_size - FOOTER_BYTES + 1
        raise self._error("vhd.footer", "no footer cookie 'conectix' at the start or in the "
                          "last 512 bytes", max(0, file_size - FOOTER_BYTES))

    def _open(self, depth: int) -> None:
        self._depth = depth  # links followed to reach this disk (a parent opens at depth + 1)
        footer, at = self._read_footer()
        (_, _, version, data_offset, _, creator_app, _, _, _, current_size, cylinders, heads,
         sectors_per_track, disk_type, checksum) = _FOOTER.unpack_from(footer)
        if _checksum(footer, _CHECKSUM_AT) != checksum:
            raise self._error("vhd.footer", "footer checksum 0x%08x, the bytes sum to 0x%08x"
                              % (checksum, _checksum(footer, _CHECKSUM_AT)), at + _CHECKSUM_AT)
        if version != VERSION_1_0:
            raise self._error("vhd.footer", "file format version 0x%08x, expected 0x%08x"
                              % (version, VERSION_1_0), at + 12)
        if disk_type not in (DISK_FIXED, DISK_DYNAMIC, DISK_DIFFERENCING):
            raise self._error("vhd.footer", "disk type %d: 2 (fixed), 3 (dynamic) or 4 "
                              "(differencing) expected" % disk_type, at + 60)
        self.disk_type = disk_type
        self.unique_id = footer[_UNIQUE_ID]
        self.size_bytes = vhd_virtual_size(creator_app, current_size, cylinders, heads,
                                           sectors_per_track)
        if self.size_bytes == 0:
            raise self._error("vhd.footer", "the disk size is 0 (current size %d, geometry "
                              "%d/%d/%d)" % (current_size, cylinders, heads, sectors_per_track),
                              at + 48)
        if disk_type == DISK_FIXED:
            data_bytes = at  # the data ends where the footer begins
            if self.size_bytes > data_bytes:
                raise self._error("vhd.footer", "the disk is %d bytes but the file holds %d "
                                  "before its footer" % (self.size_bytes, data_bytes), at + 48)
            self.extents = data_extents(self._file.fd, 0, self.size_bytes)
            self._read_extent = self._read_fixed  # type: ignore[method-assign]
        else:
            self._open_dynamic(data_offset, at)

    # -- dynamic disks ---------------------------------------------------------------------

    def _open_dynamic(self, header_at: int, footer_at: int) -> None:
        file_size = self._file.size
        if header_at > file_size - DYNAMIC_HEADER_BYTES:
            raise self._error("vhd.dynamic", "the dynamic header offset %d is past the end of "
                              "the file (%d bytes)" % (header_at, file_size), footer_at + 16)
        header = self._file.pread(DYNAMIC_HEADER_BYTES, header_at)
        (cookie, _, table_at, version, max_entries, block_bytes,
         checksum) = _DYNAMIC.unpack_from(header)
        if cookie != DYNAMIC_COOKIE:
            raise self._error("vhd.dynamic", "cookie %r, expected %r" % (cookie, DYNAMIC_COOKIE),
                              header_at)
        if _checksum(header, _DYNAMIC_CHECKSUM_AT) != checksum:
            raise self._error("vhd.dynamic", "header checksum 0x%08x, the bytes sum to 0x%08x"
                              % (checksum, _checksum(header, _DYNAMIC_CHECKSUM_AT)),
                              header_at + _DYNAMIC_CHECKSUM_AT)
        if version != VERSION_1_0:
            raise self._error("vhd.dynamic", "header version 0x%08x, expected 0x%08x"
                              % (version, VERSION_1_0), header_at + 24)
        if not (MIN_BLOCK_BYTES <= block_bytes <= MAX_BLOCK_BYTES
                and block_bytes & (block_bytes - 1) == 0):
            raise self._error("vhd.dynamic", "block size %d: a power of two from %d to %d "
                              "expected" % (block_bytes, MIN_BLOCK_BYTES, MAX_BLOCK_BYTES),
                              header_at + 32)
        n_blocks = -(-self.size_bytes // block_bytes)
        if max_entries < n_blocks:
            raise self._error("vhd.dynamic", "%d table entries of %d bytes cannot hold a disk "
                              "of %d bytes" % (max_entries, block_bytes, self.size_bytes),
                              header_at + 28)
        if n_blocks > MAX_BLOCKS:
            raise self._error("vhd.bat", "%d blocks of %d bytes: more than the %d this reader "
                              "accepts" % (n_blocks, block_bytes, MAX_BLOCKS), header_at + 28)
        table_bytes = 4 * n_blocks
        if table_at > file_size - table_bytes:
            raise self._error("vhd.bat", "the %d-byte table at %d is past the end of the file "
                              "(%d bytes)" % (table_bytes, table_at, file_size), header_at + 16)
        bat = array.array("I")
        bat.frombytes(self._file.pread(table_bytes, table_at))
        if sys.byteorder == "little":
            bat.byteswap()
        self._bat = bat
        self._block_bytes = block_bytes
        # The bitmap holds one bit per sector, padded to whole sectors.
        self._bitmap_bytes = -(-(block_bytes // SECTOR // 8) // SECTOR) * SECTOR
        self._check_claims(footer_at, header_at, table_at, table_bytes)
        self._kinds = bytearray(n_blocks)  # BLOCK_ABSENT, BLOCK_FULL or BLOCK_MIXED
        present: list[tuple[int, int]] = []
        for index, entry in enumerate(bat):
            if entry != UNALLOCATED:
                self._kinds[index] = kind = self._bitmap_kind(index, entry)
                if kind != BLOCK_ABSENT:
                    start = index * block_bytes
                    present.append((start, min(start + block_bytes, self.size_bytes)))
        self.extents = coalesce(present)
        if self.disk_type == DISK_DIFFERENCING:
            self._parent = parent = self._open_parent(header, header_at)
            self.files += parent.files
            self.mtime = max(self.mtime, parent.mtime)
            self.extents = union(self.extents, [(start, min(end, self.size_bytes))
                                                for start, end in parent.extents
                                                if start < self.size_bytes])

    def _open_parent(self, header: bytes, header_at: int) -> DiskSource:
        """The parent a locator names: W2ru (relative to this file) first, then W2ku."""
        from . import open_source  # the package imports its readers lazily

        name = header[_PARENT_NAME].decode("utf-16-be", "replace").split("\x00")[0]
        if self._depth + 1 >= MAX_CHAIN_DEPTH:
            raise self._error("vhd.parent", "parent %r: the chain is deeper than %d links"
                              % (name, MAX_CHAIN_DEPTH), header_at + _LOCATORS_AT)
        tried = []
        for code in LOCATOR_CODES:
            for i in range(8):
                entry_at = _LOCATORS_AT + i * _LOCATOR.size
                found, _, length, at = _LOCATOR.unpack_from(header, entry_at)
                if found != code:
                    continue
                if length > MAX_LOCATOR_BYTES or at + length > self._file.size:
                    raise self._error("vhd.parent", "parent locator %d (%d bytes at %d) lies "
                                      "outside the file or is too long" % (i, length, at),
                                      header_at + entry_at)
                text = self._file.pread(length, at).decode("utf-16-le", "replace")
                text = text.split("\x00")[0].replace("\\", "/")
                path = os.path.join(os.path.dirname(self.path), text)
                tried.append(path)
                if os.path.exists(path):
                    return self._checked_parent(open_source(path, depth=self._depth + 1),
                                                header, header_at)
        raise self._error("vhd.parent", "parent %r not found (tried: %s)"
                          % (name, ", ".join(tried) or "no W2ru/W2ku locator"),
                          header_at + _LOCATORS_AT)

    def _checked_parent(self, parent: DiskSource, header: bytes,
                        header_at: int) -> DiskSource:
        want = header[_PARENT_UNIQUE_ID]
        problem = None
        try:
            parent.check_format()  # a container no module reads is not a parent read as raw
        except BaseException:
            parent.close()
            raise
        if parent.sequential:
            problem = "a %s stream cannot be read at random" % parent.format
        elif getattr(parent, "unique_id", want) != want:
            problem = ("its unique id %s is not the %s this disk recorded (the parent changed)"
                       % (parent.unique_id.hex(), want.hex()))  # type: ignore[attr-defined]
        if problem is not None:
            parent.close()
            raise self._error("vhd.parent", "parent %s: %s" % (parent.path, problem),
                              header_at + _PARENT_UNIQUE_ID.start)
        return parent

    def _block_data_bytes(self, index: int) -> int:
        """The bytes of block ``index`` that hold the disk (the last block may hold fewer)."""
        return min(self._block_bytes, self.size_bytes - index * self._block_bytes)

    def _check_claims(self, footer_at: int, header_at: int, table_at: int,
                      table_bytes: int) -> None:
        """Every allocated block inside the file, none sharing bytes with another or with
        the footer copy, the dynamic header or the table."""
        file_size = self._file.size
        headers: list[Claim] = sorted([
            (footer_at, footer_at + FOOTER_BYTES, "the footer"),
            (header_at, header_at + DYNAMIC_HEADER_BYTES, "the dynamic header"),
            (table_at, table_at + table_bytes, "the block allocation table")])
        # Sorted by file offset, the block index packed under the offset (one int each).
        order = sorted(entry << 22 | index for index, entry in enumerate(self._bat)
                       if entry != UNALLOCATED)

        def blocks() -> Iterator[Claim]:
            for packed in order:
                entry, index = packed >> 22, packed & (MAX_BLOCKS - 1)
                start = entry * SECTOR
                end = start + self._bitmap_bytes + self._block_data_bytes(index)
                if end > file_size:
                    raise self._error("vhd.bat", "block %d at sector %d ends at byte %d, past "
                                      "the end of the file (%d bytes)"
                                      % (index, entry, end, file_size), table_at + 4 * index)
                yield start, end, index

        check_disjoint(heapq.merge(headers, blocks()), path=self.path, rule="vhd.bat",
                       error=VhdFormatError,
                       describe=lambda w: "block %d" % w if isinstance(w, int) else str(w))

    def _bitmap_kind(self, index: int, entry: int) -> int:
        """BLOCK_FULL (every bit of the block's disk sectors 1), BLOCK_ABSENT (every bit 0)
        or BLOCK_MIXED."""
        n_sectors = -(-self._block_data_bytes(index) // SECTOR)
        bitmap = self._file.pread(-(-n_sectors // 8), entry * SECTOR)
        whole, rest = divmod(n_sectors, 8)
        tail = bitmap[whole] >> (8 - rest) if rest else None  # the bits of the last sectors
        if bitmap.count(0xFF, 0, whole) == whole and tail in (None, (1 << rest) - 1):
            return BLOCK_FULL
        if bitmap.count(0, 0, whole) == whole and tail in (None, 0):
            return BLOCK_ABSENT
        return BLOCK_MIXED

    # -- reading ---------------------------------------------------------------------------

    def _read_fixed(self, offset: int, view: memoryview) -> None:
        self._file.pread_into(view, offset)

    def _read_extent(self, offset: int, view: memoryview) -> None:
        block_bytes, pos, n = self._block_bytes, 0, len(view)
        while pos < n:
            index, within = divmod(offset + pos, block_bytes)
            take = min(n - pos, block_bytes - within)
            kind = self._kinds[index]
            if kind == BLOCK_FULL:
                data_at = self._bat[index] * SECTOR + self._bitmap_bytes
                self._file.pread_into(view[pos:pos + take], data_at + within)
            elif kind == BLOCK_MIXED:
                self._read_mixed(index, within, view[pos:pos + take])
            else:  # only a differencing disk's extents hold absent blocks
                self._read_parent(offset + pos, view[pos:pos + take])
            pos += take

    def _read_parent(self, offset: int, view: memoryview) -> None:
        """The parent's bytes (zeros without a parent: a dynamic disk's clear bits)."""
        if self._parent is None:
            fill_zeros(view)
        else:
            self._parent.read_into(offset, view)

    def _read_mixed(self, index: int, within: int, view: memoryview) -> None:
        """Sectors whose bitmap bit is 1 from the block, the others from the parent (zeros
        without one)."""
        block_at = self._bat[index] * SECTOR
        bitmap = self._file.pread(self._bitmap_bytes, block_at)
        data_at = block_at + self._bitmap_bytes
        pos, n = 0, len(view)
        while pos < n:
            sector = (within + pos) // SECTOR
            run_end = min(n, (sector + 1) * SECTOR - within)
            bit = bitmap[sector >> 3] >> (7 - (sector & 7)) & 1
            # Extend the run while the next sectors have the same bit.
            while run_end < n:
                nxt = (within + run_end) // SECTOR
                if (bitmap[nxt >> 3] >> (7 - (nxt & 7)) & 1) != bit:
                    break
                run_end = min(n, run_end + SECTOR)
            if bit:
                self._file.pread_into(view[pos:run_end], data_at + within + pos)
            else:
                self._read_parent(index * self._block_bytes + within + pos, view[pos:run_end])
            pos = run_end
