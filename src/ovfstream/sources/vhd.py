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
* Differencing disks (type 4) are refused (``vhd.parent``): their sectors mix the child and
  its parent at sector granularity; merge them first.
"""

from __future__ import annotations

import array
import heapq
import os
import struct
import sys
from typing import Iterator

from ..errors import FormatError, UnsupportedError
from .base import DiskSource, OpenFile
from .blocks import Claim, check_disjoint, coalesce
from .raw import file_data_extents

__all__ = ["VhdSource", "VhdFormatError", "RULES", "vhd_virtual_size"]

RULES = {
    "vhd.footer": "the VHD footer is not valid: cookie 'conectix', file format version "
                  "1.0, a known disk type, its checksum, a size whose data fits in the file",
    "vhd.dynamic": "the dynamic disk header is not valid: cookie 'cxsparse' inside the file, "
                   "version 1.0, its checksum, a power-of-two block size, enough table entries "
                   "for the disk's size",
    "vhd.bat": "a block allocation table entry points outside the file, or two blocks (or a "
               "block and the headers or the table) share bytes",
    "vhd.parent": "a differencing VHD (disk type 4) needs its parent; ovfstream does not read "
                  "those chains: merge the disk into its parent first",
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
_PARENT_NAME = slice(64, 576)  # parent unicode name, UTF-16BE


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


class VhdSource(DiskSource):
    """An open fixed or dynamic VHD.  Thread-safe (pread; the tables are read-only)."""

    format = "vpc"

    def __init__(self, path: str | os.PathLike[str], *, size: int | None = None,
                 depth: int = 0) -> None:
        self._file = OpenFile(path)
        self.path = self._file.path
        self.files = [self._file]
        try:
            self.mtime = int(self._file.stat.st_mtime)
            self._open()
        except BaseException:
            self.close()
            raise
        self._sized()

    def _error(self, rule: str, detail: str, offset: int | None = None) -> VhdFormatError:
        return VhdFormatError(rule, detail, path=self.path, offset=offset)

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

    def _open(self) -> None:
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
            self.extents = file_data_extents(self._file.fd, self.size_bytes)
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
        if self.disk_type == DISK_DIFFERENCING:
            parent = header[_PARENT_NAME].decode("utf-16-be", "replace").split("\x00")[0]
            raise UnsupportedError(
                "%s: [vhd.parent] a differencing VHD (parent %r): ovfstream does not read VHD "
                "chains; merge it into its parent first (Hyper-V Merge-VHD, vhd-util "
                "coalesce), then convert the parent" % (self.path, parent))
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
        self._partial = bytearray(n_blocks)  # 1: a block whose bitmap mixes 0s and 1s
        self._check_claims(footer_at, header_at, table_at, table_bytes)
        present: list[tuple[int, int]] = []
        for index, entry in enumerate(bat):
            if entry == UNALLOCATED:
                continue
            kind = self._bitmap_kind(index, entry)
            if kind == "zeros":
                continue
            if kind == "mixed":
                self._partial[index] = 1
            start = index * block_bytes
            present.append((start, min(start + block_bytes, self.size_bytes)))
        self.extents = coalesce(present)

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

    def _bitmap_kind(self, index: int, entry: int) -> str:
        """``ones``, ``zeros`` or ``mixed``: the bitmap bits of the block's disk sectors."""
        n_sectors = -(-self._block_data_bytes(index) // SECTOR)
        bitmap = self._file.pread(-(-n_sectors // 8), entry * SECTOR)
        whole, rest = divmod(n_sectors, 8)
        tail = bitmap[whole] >> (8 - rest) if rest else None  # the bits of the last sectors
        if bitmap.count(0xFF, 0, whole) == whole and tail in (None, (1 << rest) - 1):
            return "ones"
        if bitmap.count(0, 0, whole) == whole and tail in (None, 0):
            return "zeros"
        return "mixed"

    # -- reading ---------------------------------------------------------------------------

    def _read_fixed(self, offset: int, view: memoryview) -> None:
        self._file.pread_into(view, offset)

    def _read_extent(self, offset: int, view: memoryview) -> None:
        block_bytes, pos, n = self._block_bytes, 0, len(view)
        while pos < n:
            index, within = divmod(offset + pos, block_bytes)
            take = min(n - pos, block_bytes - within)
            if self._partial[index]:
                self._read_mixed(index, within, view[pos:pos + take])
            else:  # an extent holds allocated blocks only
                data_at = self._bat[index] * SECTOR + self._bitmap_bytes
                self._file.pread_into(view[pos:pos + take], data_at + within)
            pos += take

    def _read_mixed(self, index: int, within: int, view: memoryview) -> None:
        """Sectors whose bitmap bit is 1 from the block, the others zeros."""
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
                view[pos:run_end] = bytes(run_end - pos)
            pos = run_end
