"""VHDX images, fixed and dynamic, as a source of spans.

Follows [MS-VHDX] (Microsoft Open Specifications, v20240423): 2.2 header section (the file
type identifier ``vhdxfile`` at 0; two 4 KiB headers at 64 KiB and 128 KiB, CRC-32C, the one
with the higher sequence number current; two 64 KiB region tables at 192 KiB and 256 KiB),
2.3 log (a non-zero LogGuid means entries to replay), 2.5 BAT (64-bit little-endian entries:
state in bits 0-2, file offset in MiB in bits 20-63; a sector-bitmap entry after every
``chunk ratio`` payload entries), 2.6 metadata region (file parameters, virtual disk size,
logical and physical sector size, page 83 data).

Payload blocks NOT_PRESENT, UNDEFINED, ZERO and UNMAPPED are holes, never read; FULLY_PRESENT
blocks are read, one pread per run of blocks that lie end to end in the file.  Refused
clearly: differencing disks (``vhdx.parent``) and images whose log was not replayed
(``vhdx.log``, an image not closed cleanly: its blocks may be stale).
"""

from __future__ import annotations

import array
import bisect
import struct
import sys
import uuid

from ..errors import FormatError, UnsupportedError
from .blocks import BlockTableSource, Claim, check_disjoint, coalesce
from .crc32c import crc32c

__all__ = ["VhdxSource", "VhdxFormatError", "RULES"]

RULES = {
    "vhdx.header": "the VHDX file type identifier or both headers are not valid (signature "
                   "'head', CRC-32C, version 1), or the file is too short for them",
    "vhdx.region": "no valid region table (signature 'regi', CRC-32C), a missing BAT or "
                   "metadata region, an unknown required region, or a region not 1 MiB "
                   "aligned, outside the file or overlapping another",
    "vhdx.metadata": "the metadata table or one of its items is not valid: missing required "
                     "items, unknown required items, an item outside the region, a block "
                     "size, sector size or disk size the format does not allow",
    "vhdx.bat": "the block allocation table is too short for the disk, or an entry has an "
                "unknown state, points outside the file, or shares bytes with another block "
                "or the headers",
    "vhdx.log": "the log holds entries that were never replayed (the image was not closed "
                "cleanly): reading it as is could give stale data",
    "vhdx.parent": "a differencing VHDX needs its parent; ovfstream does not read VHDX "
                   "chains: merge it first",
}


class VhdxFormatError(FormatError):
    """A VHDX header, region table, metadata item or BAT entry breaks the format."""


KIB, MIB = 1 << 10, 1 << 20
SIGNATURE = b"vhdxfile"
HEADER_AT = (64 * KIB, 128 * KIB)
HEADER_BYTES = 4 * KIB
REGION_TABLE_AT = (192 * KIB, 256 * KIB)
REGION_TABLE_BYTES = 64 * KIB
HEADER_SECTION_BYTES = 1 * MIB
MAX_TABLE_ENTRIES = 2047
METADATA_TABLE_BYTES = 64 * KIB
MAX_ITEM_BYTES = 1 * MIB
MIN_BLOCK_BYTES, MAX_BLOCK_BYTES = 1 * MIB, 256 * MIB
MAX_DISK_BYTES = 64 << 40
SECTOR_BITMAP_SECTORS = 1 << 23  # one sector bitmap block (1 MiB) describes 2^23 sectors
BAT_READ_BYTES = 4 * MIB         # the BAT is read in pieces of this size

# Payload block states (2.5.1.1); sector bitmap entries are never read (no parent).
NOT_PRESENT, UNDEFINED, ZERO, UNMAPPED, FULLY_PRESENT, PARTIALLY_PRESENT = 0, 1, 2, 3, 6, 7
HOLE_STATES = (NOT_PRESENT, UNDEFINED, ZERO, UNMAPPED)


def _guid(text: str) -> bytes:
    """A GUID as the file stores it (the first three fields little-endian)."""
    return uuid.UUID(text).bytes_le


BAT_REGION = _guid("2DC27766-F623-4200-9D64-115E9BFD4A08")
METADATA_REGION = _guid("8B7CA206-4790-4B9A-B8FE-575F050F886E")
FILE_PARAMETERS = _guid("CAA16737-FA36-4D43-B3B6-33F0AA44E76B")
VIRTUAL_DISK_SIZE = _guid("2FA54224-CD1B-4876-B211-5DBED83BF4B8")
PAGE_83_DATA = _guid("BECA12AB-B2E6-4523-93EF-C309E000C746")
LOGICAL_SECTOR_SIZE = _guid("8141BF1D-A96F-4709-BA47-F233A8FAAB5F")
PHYSICAL_SECTOR_SIZE = _guid("CDA348C7-445D-4471-9CC9-E9885251C556")
PARENT_LOCATOR = _guid("A8D35F2D-B30B-454D-ABF7-D3D84834AB0C")
# item -> (name, exact length in bytes); all of them are required in a VHDX
KNOWN_ITEMS = {
    FILE_PARAMETERS: ("file parameters", 8),
    VIRTUAL_DISK_SIZE: ("virtual disk size", 8),
    PAGE_83_DATA: ("page 83 data", 16),
    LOGICAL_SECTOR_SIZE: ("logical sector size", 4),
    PHYSICAL_SECTOR_SIZE: ("physical sector size", 4),
}

# signature, checksum, sequence number, file write GUID, data write GUID, log GUID,
# log version, version, log length, log offset
_HEADER = struct.Struct("<4sIQ16s16s16sHHIQ")
# signature, checksum, entry count; then entries: GUID, file offset, length, required
_REGION_TABLE = struct.Struct("<4sII4x")
_REGION_ENTRY = struct.Struct("<16sQII")
# signature, entry count; then entries: item id, offset, length, flags
_METADATA_TABLE = struct.Struct("<8s2xH20x")
_METADATA_ENTRY = struct.Struct("<16sIII4x")
IS_REQUIRED = 4  # metadata entry flag bit 2


def _crc_ok(data: bytes, at: int = 4) -> bool:
    """The CRC-32C of ``data`` with its checksum field (at ``at``) zeroed matches it."""
    stored = struct.unpack_from("<I", data, at)[0]
    return crc32c(data[:at] + bytes(4) + data[at + 4:]) == stored


class VhdxSource(BlockTableSource):
    """An open fixed or dynamic VHDX.  Thread-safe (pread; the run tables are read-only)."""

    format = "vhdx"
    error = VhdxFormatError

    def _open(self, depth: int) -> None:
        file_size = self._file.size
        if file_size < HEADER_SECTION_BYTES:
            raise self._error("vhdx.header", "the file is %d bytes, shorter than the 1 MiB "
                              "header section" % file_size, 0)
        if self._file.pread(8, 0) != SIGNATURE:
            raise self._error("vhdx.header", "no file type identifier 'vhdxfile' at 0", 0)
        claims: list[Claim] = [(0, HEADER_SECTION_BYTES, "the header section")]
        log_at, log_bytes = self._read_header()
        if log_bytes:
            claims.append((log_at, log_at + log_bytes, "the log"))
        regions = self._read_regions()
        for guid, (at, length) in regions.items():
            name = {BAT_REGION: "the BAT region", METADATA_REGION: "the metadata region"}.get(
                guid, "region %s" % uuid.UUID(bytes_le=guid))
            claims.append((at, at + length, name))
        check_disjoint(sorted(claims), path=self.path, rule="vhdx.region",
                       error=VhdxFormatError)
        self._read_metadata(*regions[METADATA_REGION])
        runs = self._read_bat(*regions[BAT_REGION])
        block = self._block_bytes
        run_claims = sorted((at, at + min(count * block, self.size_bytes - first * block),
                             "blocks %d..%d" % (first, first + count - 1))
                            for first, count, at in runs)
        check_disjoint(sorted(claims + run_claims), path=self.path, rule="vhdx.bat",
                       error=VhdxFormatError)
        self._run_first = array.array("q", (r[0] for r in runs))
        self._run_count = array.array("q", (r[1] for r in runs))
        self._run_at = array.array("q", (r[2] for r in runs))
        self.extents = coalesce((first * block, min((first + count) * block, self.size_bytes))
                                for first, count, _ in runs)

    # -- header section --------------------------------------------------------------------

    def _read_header(self) -> tuple[int, int]:
        """Pick the current header (2.2.2); refuse a log to replay.  The log's range."""
        valid = []
        for at in HEADER_AT:
            data = self._file.pread(HEADER_BYTES, at)
            if data[:4] == b"head" and _crc_ok(data):
                valid.append((_HEADER.unpack_from(data), data, at))
        if not valid:
            raise self._error("vhdx.header", "neither header (at 64 KiB and 128 KiB) has the "
                              "signature 'head' and a matching CRC-32C", HEADER_AT[0])
        valid.sort(key=lambda v: v[0][2])
        if len(valid) == 2 and valid[0][0][2] == valid[1][0][2] and valid[0][1] != valid[1][1]:
            raise self._error("vhdx.header", "both headers have sequence number %d but differ"
                              % valid[0][0][2], HEADER_AT[1])
        fields, _, at = valid[-1]
        (_, _, _, _, _, log_guid, log_version, version, log_bytes, log_at) = fields
        if version != 1:
            raise self._error("vhdx.header", "version %d, expected 1" % version, at + 66)
        if log_guid != bytes(16):
            raise UnsupportedError(
                "%s@0x%x: [vhdx.log] the log holds entries never replayed (log GUID %s): the "
                "image was not closed cleanly; replay it first by opening it read-write "
                "(qemu-img check -r all, or attach it in Hyper-V), then convert"
                % (self.path, at + 48, uuid.UUID(bytes_le=log_guid)))
        if log_bytes:
            self._check_range("vhdx.header", "the log", log_at, log_bytes, at + 72)
        return log_at, log_bytes

    def _check_range(self, rule: str, what: str, at: int, length: int, field_at: int) -> None:
        """A range of the file the format aligns to 1 MiB, after the header section."""
        if at % MIB or length % MIB or at < HEADER_SECTION_BYTES:
            raise self._error(rule, "%s at %d (%d bytes): offset and length must be multiples "
                              "of 1 MiB, after the first MiB" % (what, at, length), field_at)
        if at + length > self._file.size:
            raise self._error(rule, "%s at %d (%d bytes) ends past the end of the file (%d "
                              "bytes)" % (what, at, length, self._file.size), field_at)

    def _read_regions(self) -> dict[bytes, tuple[int, int]]:
        """The first valid region table's entries: GUID -> (file offset, length)."""
        for table_at in REGION_TABLE_AT:
            data = self._file.pread(REGION_TABLE_BYTES, table_at)
            if data[:4] == b"regi" and _crc_ok(data):
                break
        else:
            raise self._error("vhdx.region", "neither region table (at 192 KiB and 256 KiB) "
                              "has the signature 'regi' and a matching CRC-32C",
                              REGION_TABLE_AT[0])
        _, _, count = _REGION_TABLE.unpack_from(data)
        if count > MAX_TABLE_ENTRIES:
            raise self._error("vhdx.region", "%d entries, at most %d allowed"
                              % (count, MAX_TABLE_ENTRIES), table_at + 8)
        regions: dict[bytes, tuple[int, int]] = {}
        for i in range(count):
            entry_at = _REGION_TABLE.size + i * _REGION_ENTRY.size
            guid, at, length, required = _REGION_ENTRY.unpack_from(data, entry_at)
            name = "region %s" % uuid.UUID(bytes_le=guid)
            if guid in regions:
                raise self._error("vhdx.region", "%s is listed twice" % name, table_at + entry_at)
            if guid not in (BAT_REGION, METADATA_REGION) and required & 1:
                raise UnsupportedError(
                    "%s@0x%x: [vhdx.region] %s is marked required and this reader does not "
                    "know it (a newer VHDX feature)" % (self.path, table_at + entry_at, name))
            if length == 0:
                raise self._error("vhdx.region", "%s is empty" % name, table_at + entry_at)
            self._check_range("vhdx.region", name, at, length, table_at + entry_at)
            regions[guid] = (at, length)
        for guid, name in ((BAT_REGION, "BAT"), (METADATA_REGION, "metadata")):
            if guid not in regions:
                raise self._error("vhdx.region", "no %s region" % name, table_at)
        return regions

    # -- metadata --------------------------------------------------------------------------

    def _read_metadata(self, region_at: int, region_bytes: int) -> None:
        table = self._file.pread(METADATA_TABLE_BYTES, region_at)
        signature, count = _METADATA_TABLE.unpack_from(table)
        if signature != b"metadata":
            raise self._error("vhdx.metadata", "no table signature 'metadata'", region_at)
        if count > MAX_TABLE_ENTRIES:
            raise self._error("vhdx.metadata", "%d entries, at most %d allowed"
                              % (count, MAX_TABLE_ENTRIES), region_at + 10)
        items: dict[bytes, bytes] = {}
        for i in range(count):
            entry_at = region_at + _METADATA_TABLE.size + i * _METADATA_ENTRY.size
            guid, offset, length, flags = _METADATA_ENTRY.unpack_from(table, entry_at - region_at)
            name = KNOWN_ITEMS.get(guid, ("item %s" % uuid.UUID(bytes_le=guid), 0))[0]
            if guid in items:
                raise self._error("vhdx.metadata", "%s is listed twice" % name, entry_at)
            if guid == PARENT_LOCATOR:
                raise self._unsupported_parent(entry_at)
            if guid not in KNOWN_ITEMS:
                if flags & IS_REQUIRED:
                    raise UnsupportedError(
                        "%s@0x%x: [vhdx.metadata] %s is marked required and this reader does "
                        "not know it (a newer VHDX feature)" % (self.path, entry_at, name))
                continue
            if length != KNOWN_ITEMS[guid][1]:
                raise self._error("vhdx.metadata", "%s is %d bytes, expected %d"
                                  % (name, length, KNOWN_ITEMS[guid][1]), entry_at + 20)
            if offset < METADATA_TABLE_BYTES or offset + length > region_bytes:
                raise self._error("vhdx.metadata", "%s at %d (%d bytes) lies outside the "
                                  "%d-byte region after its table"
                                  % (name, offset, length, region_bytes), entry_at + 16)
            items[guid] = self._file.pread(length, region_at + offset)
        for guid, (name, _) in KNOWN_ITEMS.items():
            if guid not in items:
                raise self._error("vhdx.metadata", "no %s item" % name, region_at)
        block_bytes, param_flags = struct.unpack("<II", items[FILE_PARAMETERS])
        if param_flags & 2:  # HasParent
            raise self._unsupported_parent(region_at)
        if not (MIN_BLOCK_BYTES <= block_bytes <= MAX_BLOCK_BYTES
                and block_bytes & (block_bytes - 1) == 0):
            raise self._error("vhdx.metadata", "block size %d: a power of two from 1 MiB to "
                              "256 MiB expected" % block_bytes, region_at)
        logical = struct.unpack("<I", items[LOGICAL_SECTOR_SIZE])[0]
        physical = struct.unpack("<I", items[PHYSICAL_SECTOR_SIZE])[0]
        for what, value in (("logical", logical), ("physical", physical)):
            if value not in (512, 4096):
                raise self._error("vhdx.metadata", "%s sector size %d: 512 or 4096 expected"
                                  % (what, value), region_at)
        size = struct.unpack("<Q", items[VIRTUAL_DISK_SIZE])[0]
        if size == 0 or size % logical or size > MAX_DISK_BYTES:
            raise self._error("vhdx.metadata", "virtual disk size %d: a non-zero multiple of "
                              "the %d-byte logical sector, at most 64 TiB, expected"
                              % (size, logical), region_at)
        self.size_bytes = size
        self._block_bytes = block_bytes
        self._chunk_ratio = SECTOR_BITMAP_SECTORS * logical // block_bytes

    def _unsupported_parent(self, offset: int) -> UnsupportedError:
        return UnsupportedError(
            "%s@0x%x: [vhdx.parent] a differencing VHDX (it has a parent): ovfstream does not "
            "read VHDX chains; merge it first (qemu-img convert -O vhdx, or Hyper-V "
            "Merge-VHD), then convert the result" % (self.path, offset))

    # -- BAT -------------------------------------------------------------------------------

    def _read_bat(self, bat_at: int, bat_bytes: int) -> list[tuple[int, int, int]]:
        """Runs of present payload blocks that lie end to end in the file: (first block,
        block count, file offset).  Entries are read in 4 MiB pieces; an all-zero piece
        (NOT_PRESENT everywhere) costs one comparison."""
        block, ratio = self._block_bytes, self._chunk_ratio
        n_payload = -(-self.size_bytes // block)
        n_entries = n_payload + (n_payload - 1) // ratio  # the last chunk needs no bitmap entry
        if n_entries * 8 > bat_bytes:
            raise self._error("vhdx.bat", "the BAT region holds %d entries; a %d-byte disk of "
                              "%d-byte blocks needs %d" % (bat_bytes // 8, self.size_bytes,
                                                           block, n_entries), bat_at)
        file_size = self._file.size
        runs: list[tuple[int, int, int]] = []
        piece_entries = BAT_READ_BYTES // 8
        zero_piece = bytes(BAT_READ_BYTES)
        for piece_first in range(0, n_entries, piece_entries):
            n = min(piece_entries, n_entries - piece_first)
            data = self._file.pread(n * 8, bat_at + piece_first * 8)
            if data == zero_piece[:n * 8]:
                continue
            entries = array.array("Q")
            entries.frombytes(data)
            if sys.byteorder == "big":
                entries.byteswap()
            for i, entry in enumerate(entries):
                if not entry:
                    continue
                index = piece_first + i
                chunk, pos = divmod(index, ratio + 1)
                if pos == ratio:
                    continue  # a sector bitmap entry: only a differencing disk reads them
                block_index = chunk * ratio + pos
                state, at = entry & 7, (entry >> 20) * MIB
                entry_at = bat_at + index * 8
                if state in HOLE_STATES:
                    continue
                if state != FULLY_PRESENT:
                    raise self._error("vhdx.bat", "payload block %d has state %d%s"
                                      % (block_index, state, " (partially present: only a "
                                         "differencing disk has those)"
                                         if state == PARTIALLY_PRESENT else ", unknown"),
                                      entry_at)
                length = min(block, self.size_bytes - block_index * block)
                if at < HEADER_SECTION_BYTES or at + length > file_size:
                    raise self._error("vhdx.bat", "payload block %d at %d (%d bytes) lies "
                                      "outside the file's data (%d bytes, the first MiB "
                                      "excluded)" % (block_index, at, length, file_size),
                                      entry_at)
                last = runs[-1] if runs else None
                if (last is not None and last[0] + last[1] == block_index
                        and last[2] + last[1] * block == at):
                    runs[-1] = (last[0], last[1] + 1, last[2])
                else:
                    runs.append((block_index, 1, at))
        return runs

    # -- reading ---------------------------------------------------------------------------

    def _read_extent(self, offset: int, view: memoryview) -> None:
        block, pos, n = self._block_bytes, 0, len(view)
        while pos < n:
            here = offset + pos
            run = bisect.bisect_right(self._run_first, here // block) - 1
            first, count, at = self._run_first[run], self._run_count[run], self._run_at[run]
            within = here - first * block  # an extent covers present runs only
            take = min(n - pos, count * block - within)
            self._file.pread_into(view[pos:pos + take], at + within)
            pos += take
