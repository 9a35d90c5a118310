"""The content id: the name of a virtual disk's content, whatever the compression or writer.

xxh3-128 over the capacity in sectors (u64 LE), then for each non-zero 64 KiB grain in
increasing LBA order its LBA in sectors (u64 LE) and the xxh3-64 of its bytes (u64 LE; a
partial last grain zero-padded to 64 KiB).  The writer folds the (LBA, digest) pairs its
workers computed per span; ``verify --deep`` recomputes it from the inflated grains.
"""

from __future__ import annotations

import struct
from typing import Iterable

import xxhash

from .layout import GRAIN_BYTES

__all__ = ["ContentId", "grain_digest", "fold_content_id"]

_LBA_DIGEST = struct.Struct("<QQ")
_U64 = struct.Struct("<Q")
_ZERO_GRAIN = bytes(GRAIN_BYTES)



def grain_digest(grain: bytes | bytearray | memoryview) -> int:
    """xxh3-64 of a grain's content, a partial last grain zero-padded to 64 KiB."""
    n = len(grain)
    if n == GRAIN_BYTES:
        return xxhash.xxh3_64_intdigest(grain)
    h = xxhash.xxh3_64()
    h.update(grain)
    h.update(_ZERO_GRAIN[: GRAIN_BYTES - n])
    return h.intdigest()


class ContentId:
    """Incremental content id: xxh3-128 over capacity, then (LBA, xxh3-64) per non-zero grain.

    Feed non-zero 64 KiB grains in strictly increasing LBA order; all-zero grains are left out,
    so the id names the virtual disk whatever the compression or the writer.
    """

    def __init__(self, capacity_sectors: int) -> None:
        self._h = xxhash.xxh3_128()
        self._h.update(_U64.pack(capacity_sectors))

    def add(self, lba: int, digest: int) -> None:
        """Fold one non-zero grain: its LBA in sectors and its :func:`grain_digest`."""
        self._h.update(_LBA_DIGEST.pack(lba, digest))

    def add_packed(self, pairs: bytes | bytearray) -> None:
        """Fold pairs already packed as little-endian (u64 LBA, u64 digest), LBA order."""
        self._h.update(pairs)

    def digest(self) -> bytes:
        return self._h.digest()

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def fold_content_id(capacity_sectors: int, grains: Iterable[tuple[int, int]]) -> bytes:
    """The 16-byte content id from (lba, grain_digest) pairs of the non-zero grains, LBA order."""
    cid = ContentId(capacity_sectors)
    for lba, digest in grains:
        cid.add(lba, digest)
    return cid.digest()
