"""Pure-Python twin of the native span encoder (src/_native/grains.pyx).

The reference: tests check byte parity with the native module, and ovfstream falls back to
it when the extension is not built (slowly: it exists for correctness, not speed).
"""

from __future__ import annotations

import mmap
import struct
from typing import Callable

from .vmdk.layout import (GRAIN_BYTES, GRAIN_MARKER, GRAIN_SECTORS, MAX_FRAMED_GRAIN,
                          MAX_GRAIN_PAYLOAD, SECTOR, SPAN_GRAINS, frame_grain)

MAX_PAYLOAD = MAX_GRAIN_PAYLOAD
MAX_FRAMED_BYTES = MAX_FRAMED_GRAIN
SPAN_FRAMED_BYTES = SPAN_GRAINS * MAX_FRAMED_BYTES
_ZERO_GRAIN = bytes(GRAIN_BYTES)


def zero_grain_map(span: bytes | bytearray | memoryview, n_grains: int) -> bytes:
    view = memoryview(span)
    if n_grains < 0 or n_grains * GRAIN_BYTES > len(view):
        raise ValueError("span holds %d bytes, fewer than %d grains" % (len(view), n_grains))
    return bytes(int(view[i * GRAIN_BYTES:(i + 1) * GRAIN_BYTES] == _ZERO_GRAIN)
                 for i in range(n_grains))


def encode_span(span: bytes | bytearray | memoryview, first_lba: int, n_grains: int,
                compress: Callable[[memoryview], bytes],
                fingerprint: Callable[[memoryview], int]) -> tuple[bytearray, bytes, bytes, int]:
    framed = bytearray(SPAN_FRAMED_BYTES)
    n, gt_rel, prints, payload_total = encode_span_into(framed, span, first_lba, n_grains,
                                                        compress, fingerprint)
    del framed[n:]
    return framed, gt_rel, prints, payload_total


def encode_span_into(out: bytearray | memoryview | mmap.mmap,
                     span: bytes | bytearray | memoryview, first_lba: int, n_grains: int,
                     compress: Callable[[memoryview], bytes],
                     fingerprint: Callable[[memoryview], int]) -> tuple[int, bytes, bytes, int]:
    view = memoryview(span)
    if n_grains < 0 or n_grains > SPAN_GRAINS or n_grains * GRAIN_BYTES > len(view):
        raise ValueError("span holds %d bytes, fewer than %d grains (max %d)"
                         % (len(view), n_grains, SPAN_GRAINS))
    grains = [view[i * GRAIN_BYTES:(i + 1) * GRAIN_BYTES] for i in range(n_grains)]
    n_data = sum(1 for grain in grains if grain != _ZERO_GRAIN)
    dst = memoryview(out).cast("B")
    if len(dst) < n_data * MAX_FRAMED_BYTES:
        raise ValueError("output buffer of %d bytes, %d needed"
                         % (len(dst), n_data * MAX_FRAMED_BYTES))
    pos = 0
    gt_rel = [0] * n_grains
    prints = bytearray()
    payload_total = 0
    for i, grain in enumerate(grains):
        if grain == _ZERO_GRAIN:
            continue
        payload = bytes(compress(grain))
        if not 0 < len(payload) <= MAX_PAYLOAD:
            raise ValueError("engine returned %d bytes for a 64 KiB grain" % len(payload))
        lba = first_lba + i * GRAIN_SECTORS
        gt_rel[i] = pos // SECTOR + 1
        pos = frame_grain(dst, pos, lba, (payload,))
        prints += struct.pack("<QQ", lba, fingerprint(grain))
        payload_total += len(payload)
    return pos, struct.pack("<%dI" % n_grains, *gt_rel), bytes(prints), payload_total


def relocate_gt(gt_rel: bytes, base_sector: int, n_entries: int) -> bytes:
    rel = struct.unpack("<%dI" % (len(gt_rel) // 4), gt_rel)
    if len(rel) > n_entries:
        raise ValueError("%d grain-table entries, more than %d" % (len(rel), n_entries))
    table = [base_sector + r - 1 if r else 0 for r in rel] + [0] * (n_entries - len(rel))
    if table and max(table) > 0xFFFFFFFF:
        raise OverflowError("grain at sector %d does not fit in a u32 grain-table entry"
                            % max(table))
    return struct.pack("<%dI" % n_entries, *table)


MAX_SHIFT_GRAINS = 1 << 32


def shift_grain_lbas(framed: bytearray | memoryview | mmap.mmap, gt_rel: bytes,
                     prints: bytearray | memoryview, delta: int, n_grains: int) -> bool:
    """Add ``delta`` to every grain marker's LBA and every fingerprint's LBA, in place, once
    the grain table, markers and fingerprints are checked to agree; False, nothing changed,
    if they do not (the native twin's docstring has the rules)."""
    if not -(1 << 63) <= delta < 1 << 63:  # as the native one's int64 argument
        raise OverflowError("delta %d does not fit in an int64" % delta)
    n_prints = len(prints) // 16
    if (not 0 <= n_grains <= MAX_SHIFT_GRAINS or len(gt_rel) != 4 * n_grains
            or len(prints) != 16 * n_prints):
        return False
    base = -delta if delta < 0 else 0
    places = []
    last_end = 0
    for i, (rel,) in enumerate(struct.iter_unpack("<I", gt_rel)):
        if not rel:
            continue
        at = (rel - 1) * SECTOR
        k = len(places)
        if at < last_end or at + GRAIN_MARKER.size > len(framed) or k >= n_prints:
            return False
        lba, size = GRAIN_MARKER.unpack_from(framed, at)
        want = i * GRAIN_SECTORS + base
        end = at + GRAIN_MARKER.size + size
        if lba != want or not 0 < size <= MAX_PAYLOAD or end > len(framed):
            return False
        if struct.unpack_from("<Q", prints, 16 * k)[0] != want:
            return False
        places.append((at, want + delta))
        last_end = end
    if len(places) != n_prints:
        return False
    for k, (at, lba) in enumerate(places):
        struct.pack_into("<Q", framed, at, lba)
        struct.pack_into("<Q", prints, 16 * k, lba)
    return True
