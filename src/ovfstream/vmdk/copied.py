"""A span whose grains are partly deflate streams copied from the source, never recompressed.

A qcow2's compressed cluster of 64 KiB is a raw deflate stream of exactly one VMDK grain
(sources/qcow2.py ``read_span_deflate`` finds it and checks it inflates to the grain).  Its
grain is the usual marker, then a zlib wrapper (RFC 1950) around the stream as it is: the
header 0x78 0x01 (deflate, a 32 KiB window, which covers any deflate stream's distances; no
dictionary) and the big-endian Adler-32 of the inflated grain.  The other grains -- raw
clusters, backing data, a partial last grain -- go through the engine in runs, into the same
buffer; an all-zero grain is skipped either way.  The grain table and fingerprints come out
as the engine's own would: one framed buffer per span, LBA order.
"""

from __future__ import annotations

import struct
from array import array
from typing import Any, Callable

import deflate

from ..engine import CORE
from . import layout as L
from .contentid import grain_digest

__all__ = ["ZLIB_HEAD", "encode_copied_span"]

ZLIB_HEAD = b"\x78\x01"     # CM 8, CINFO 7 (32 KiB window), FLEVEL 0, FCHECK: 0x7801 % 31 == 0
_PRINT = struct.Struct("<QQ")

# (out, span view, first LBA, n_grains) -> (framed bytes used, gt_rel, prints, payload)
EncodeRun = Callable[[memoryview, memoryview, int, int], tuple[int, bytes, bytes, int]]


def encode_copied_span(encode_run: EncodeRun, out: Any, view: memoryview, first_lba: int,
                       n_grains: int, streams: dict[int, memoryview]
                       ) -> tuple[int, bytes, bytes, int, int]:
    """Frame one span into ``out``: the grains in ``streams`` (index in the span -> raw
    deflate stream of that grain's bytes in ``view``) copied, the others through
    ``encode_run``.  (framed bytes used, gt_rel, prints, payload, grains copied)."""
    G = L.GRAIN_BYTES
    copy = [i for i in sorted(streams)
            if i < n_grains and not CORE.zero_grain_map(view[i * G:(i + 1) * G], 1)[0]]
    gt = array("I", bytes(4 * n_grains))
    prints = bytearray()
    pos = payload = 0
    start = 0
    with memoryview(out) as dst:
        for i in copy + [n_grains]:
            if i > start:  # the engine's grains before this one
                n, gt_run, prints_run, payload_run = encode_run(
                    dst[pos:], view[start * G:i * G], first_lba + start * L.GRAIN_SECTORS,
                    i - start)
                if n:
                    run = array("I")
                    run.frombytes(gt_run)
                    base = pos // L.SECTOR
                    for j, rel in enumerate(run):
                        if rel:
                            gt[start + j] = rel + base
                    prints += prints_run
                    payload += payload_run
                    pos += n
            if i == n_grains:
                break
            grain = view[i * G:(i + 1) * G]
            lba = first_lba + i * L.GRAIN_SECTORS
            stream = streams[i]
            gt[i] = pos // L.SECTOR + 1
            pos = L.frame_grain(dst, pos, lba,
                                (ZLIB_HEAD, stream, deflate.adler32(grain).to_bytes(4, "big")))
            prints += _PRINT.pack(lba, grain_digest(grain))
            payload += len(ZLIB_HEAD) + len(stream) + 4
            start = i + 1
    return pos, gt.tobytes(), bytes(prints), payload, len(copy)
