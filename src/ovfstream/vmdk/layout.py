"""Stream-optimized VMDK byte layout: header, markers, tables, geometry.  No I/O.

Follows the VMware "Virtual Disk Format 5.0" technote, section "Stream-Optimized Compressed
Sparse Extents", with the reader-driven choices of ../shared/FORMATS.md section 1:
version 3, flags 0x30001, zlib-wrapped grains, GD at the end.  Little-endian throughout;
every table offset counts 512-byte sectors from the start of the file.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SECTOR = 512
MAGIC = b"KDMV"                       # u32 0x564d444b little-endian
VERSION = 3                           # ESXi refuses v1 stream disks
FLAG_NEWLINE_TEST = 0x1               # bit 0: the \n \x20 \r \n check bytes are valid
FLAG_REDUNDANT_GT = 0x2               # bit 1: a redundant GD/GT copy exists (never ours)
FLAG_COMPRESSED = 0x10000             # bit 16: grains are compressed
FLAG_MARKERS = 0x20000                # bit 17: markers frame the stream
FLAG_ZEROED_GTE = 0x4                 # bit 2: a GT entry of 1 means "grain reads as zeros"
KNOWN_INCOMPAT_FLAGS = FLAG_COMPRESSED | FLAG_MARKERS
INCOMPAT_MASK = 0xFFFF0000            # bits 16+ change the layout: unknown ones are unsupported
GTE_ZEROED = 1                        # the GT entry value FLAG_ZEROED_GTE gives a meaning
FLAGS = FLAG_NEWLINE_TEST | FLAG_COMPRESSED | FLAG_MARKERS   # 0x00030001
GRAIN_SECTORS = 128                   # grainSize: 64 KiB grains
GRAIN_BYTES = GRAIN_SECTORS * SECTOR
GTES_PER_GT = 512                     # numGTEsPerGT; qemu rejects > 512
GT_BYTES = GTES_PER_GT * 4
GT_SECTORS = GT_BYTES // SECTOR       # 4
SPAN_GRAINS = GTES_PER_GT             # one GT covers one span
SPAN_BYTES = SPAN_GRAINS * GRAIN_BYTES  # 32 MiB of virtual disk
DESCRIPTOR_OFFSET = 1                 # descriptorOffset, sectors
DESCRIPTOR_SECTORS = 20               # descriptorSize; VirtualBox rejects > 20480
OVERHEAD_SECTORS = 128                # overHead: first grain-stream sector, grain aligned
GD_AT_END = 0xFFFFFFFFFFFFFFFF        # header gdOffset of a stream written in one pass
NEWLINE_CHECK = b"\n \r\n"
COMPRESS_DEFLATE = 1
MAX_GRAIN_PAYLOAD = GRAIN_BYTES + 1024  # zlib bound for 64 KiB plus slack

# Marker types (u32 at byte 12 of a metadata marker)
MARKER_EOS = 0
MARKER_GT = 1
MARKER_GD = 2
MARKER_FOOTER = 3

# Largest offset a u32 GT/GD entry can hold: the file may not pass 2 TiB.
MAX_FILE_SECTORS = 0xFFFFFFFF

# Header: magic, version, flags, capacity, grainSize, descriptorOffset, descriptorSize,
# numGTEsPerGT, rgdOffset, gdOffset, overHead, uncleanShutdown, 4 newline-check bytes,
# compressAlgorithm, then padding to 512.
HEADER = struct.Struct("<4sIIQQQQIQQQB4sH")
MARKER = struct.Struct("<QII")  # val (LBA or sectors), size (payload bytes), type

# Byte offsets of the header fields (a footer is a header: the same offsets), for messages
# that point at the field; tests/vmdk/test_layout.py checks them against HEADER.
AT_VERSION = 4
AT_FLAGS = 8
AT_CAPACITY = 12
AT_GRAIN_SIZE = 20
AT_DESCRIPTOR_OFFSET = 28
AT_DESCRIPTOR_SIZE = 36
AT_GTES_PER_GT = 44
AT_RGD_OFFSET = 48
AT_GD_OFFSET = 56
AT_OVERHEAD = 64
AT_UNCLEAN = 72
AT_NEWLINE_CHECK = 73
AT_COMPRESS_ALGORITHM = 77
# ... and of a marker's fields: a grain marker's size field, a metadata marker's type, and
# where a grain marker's compressed data starts.
AT_MARKER_SIZE = 8
AT_MARKER_TYPE = 12
AT_GRAIN_DATA = 12


@dataclass(frozen=True)
class Header:
    """The 512-byte SparseExtentHeader, as fields with their units."""

    capacity_sectors: int            # capacity
    gd_offset_sectors: int           # gdOffset (GD_AT_END in a stream's head)
    descriptor_offset_sectors: int = DESCRIPTOR_OFFSET
    descriptor_sectors: int = DESCRIPTOR_SECTORS
    overhead_sectors: int = OVERHEAD_SECTORS
    grain_sectors: int = GRAIN_SECTORS
    gtes_per_gt: int = GTES_PER_GT
    rgd_offset_sectors: int = 0
    version: int = VERSION
    flags: int = FLAGS
    unclean_shutdown: int = 0
    newline_check: bytes = NEWLINE_CHECK
    compress_algorithm: int = COMPRESS_DEFLATE
    magic: bytes = MAGIC

    def pack(self) -> bytes:
        raw = HEADER.pack(self.magic, self.version, self.flags, self.capacity_sectors,
                          self.grain_sectors, self.descriptor_offset_sectors,
                          self.descriptor_sectors, self.gtes_per_gt, self.rgd_offset_sectors,
                          self.gd_offset_sectors, self.overhead_sectors,
                          self.unclean_shutdown, self.newline_check, self.compress_algorithm)
        return raw + bytes(SECTOR - len(raw))

    @classmethod
    def unpack(cls, sector: bytes) -> "Header":
        """Decode without judging: the reader validates every field it will trust."""
        (magic, version, flags, capacity, grain, desc_off, desc_size, gtes, rgd, gd,
         overhead, unclean, newline, algo) = HEADER.unpack_from(sector, 0)
        return cls(capacity_sectors=capacity, gd_offset_sectors=gd,
                   descriptor_offset_sectors=desc_off, descriptor_sectors=desc_size,
                   overhead_sectors=overhead, grain_sectors=grain, gtes_per_gt=gtes,
                   rgd_offset_sectors=rgd, version=version, flags=flags,
                   unclean_shutdown=unclean, newline_check=newline,
                   compress_algorithm=algo, magic=magic)


def metadata_marker(kind: int, sectors_following: int) -> bytes:
    """A GT/GD/footer/EOS marker sector: val = sectors of table that follow, size 0, type."""
    return MARKER.pack(sectors_following, 0, kind) + bytes(SECTOR - MARKER.size)


EOS_SECTOR = metadata_marker(MARKER_EOS, 0)


GRAIN_MARKER = struct.Struct("<QI")  # a grain's marker: LBA, compressed bytes that follow


def frame_grain(out: bytearray | memoryview, pos: int, lba: int,
                payload: tuple[bytes | bytearray | memoryview, ...]) -> int:
    """Write a grain at ``pos`` of ``out``: marker, the ``payload`` pieces (one zlib stream),
    zeros to the sector's end; return where the next grain starts.  A bytearray grows when
    ``pos`` is its end; a fixed buffer must have the room."""
    size = sum(len(piece) for piece in payload)
    end = pos + sectors_for(GRAIN_MARKER.size + size) * SECTOR
    at = pos + GRAIN_MARKER.size
    out[pos:at] = GRAIN_MARKER.pack(lba, size)
    for piece in payload:
        out[at:at + len(piece)] = piece
        at += len(piece)
    out[at:end] = bytes(end - at)
    return end


def sectors_for(n_bytes: int) -> int:
    """Whole sectors needed to hold n_bytes."""
    return (n_bytes + SECTOR - 1) // SECTOR


# The most one grain frames to: its marker and the largest payload, padded to the sector.
MAX_FRAMED_GRAIN = sectors_for(GRAIN_MARKER.size + MAX_GRAIN_PAYLOAD) * SECTOR


def capacity_sectors_for(size_bytes: int) -> int:
    """Virtual capacity of a raw image: its size rounded up to a whole sector."""
    return sectors_for(size_bytes)


def n_spans_for(capacity_sectors: int) -> int:
    """GD entries (one per 32 MiB span) covering the capacity."""
    n_grains = (capacity_sectors + GRAIN_SECTORS - 1) // GRAIN_SECTORS
    return (n_grains + GTES_PER_GT - 1) // GTES_PER_GT


def geometry(capacity_sectors: int, adapter_type: str) -> tuple[int, int, int]:
    """(cylinders, heads, sectors) as VMware writes them: 16 heads for IDE, 255 otherwise."""
    heads = 16 if adapter_type == "ide" else 255
    sectors_per_track = 63
    cylinders = min(65535, -(-capacity_sectors // (heads * sectors_per_track)))
    return cylinders, heads, sectors_per_track
