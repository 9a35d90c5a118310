"""CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), the checksum of VHDX headers,
region tables and log entries (MS-VHDX 2.2.2: "CRC-32C ... as specified in RFC 3720").

No installed package offers it (isal and zlib give CRC-32 only); the structures it covers
are 4 KiB and 64 KiB, so a byte-table loop costs milliseconds per image.
"""

from __future__ import annotations

__all__ = ["crc32c"]


def _table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _table()


def crc32c(data: bytes | bytearray | memoryview) -> int:
    """The CRC-32C of ``data`` (check value: crc32c(b"123456789") == 0xE3069283)."""
    table = _TABLE
    crc = 0xFFFFFFFF
    for byte in bytes(data):
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF
