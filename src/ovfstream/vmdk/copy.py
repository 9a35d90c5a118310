"""Stream-optimized VMDK -> stream-optimized VMDK without inflating: grains copied, re-framed.

repack's fast path.  Each stored grain's zlib stream is copied as it is; only the framing is
rewritten into the spec layout StreamVmdkWriter writes (GD_AT_END head, grains in LBA order,
a GT after each span, GD, footer, end-of-stream), whatever layout the producer used (qemu-img
puts the GD and GTs at the head and may omit the end-of-stream marker).  The input is checked
by the reader's marker walk (order, bounds, sizes, footer); a grain whose payload does not
start with a zlib header (CM 8, valid FCHECK, no preset dictionary) is not copied: the caller
re-encodes that disk (:func:`zlib_grains` tells it before anything is written).

The embedded descriptor keeps the input's CID, ddb.longContentID and ddb.uuid (the content is
the same); an id the input lacks or spells oddly is derived from a key of the input's header
and descriptor text, so the output is still a function of the input only.
"""

from __future__ import annotations

import re
import time
from array import array
from dataclasses import dataclass
from typing import Callable, Sequence

import xxhash

from ..errors import VmdkFormatError
from . import layout as L
from .descriptor import derived_ids, render_descriptor
from .reader import VmdkReader
from .writer import StreamVmdkWriter

__all__ = ["CopyStats", "is_zlib_head", "zlib_grains", "carried_ids", "copy_stream_vmdk",
           "copies_as_is", "copy_member"]

Write = Callable[[bytes | bytearray | memoryview], object]

_GRAIN_HEAD = L.GRAIN_MARKER                 # grain marker: LBA, payload bytes
_CID_RE = re.compile(r"[0-9a-fA-F]{8}\Z")
_LONG_ID_RE = re.compile(r"[0-9a-fA-F]{32}\Z")
_UUID_RE = re.compile(r"(?:[0-9a-fA-F]{2} ){7}[0-9a-fA-F]{2}-(?:[0-9a-fA-F]{2} ){7}[0-9a-fA-F]{2}\Z")


@dataclass(frozen=True)
class CopyStats:
    """What copying one disk did; sizes in bytes."""

    capacity_bytes: int
    bytes_written: int         # VMDK bytes
    grains_copied: int
    payload_bytes: int         # compressed grain bytes copied
    populated_bytes: int       # virtual bytes the stored grains cover (capacity-capped)
    input_layout: str          # "stream" (GD at the end) or "head" (qemu-img, open-vmdk)
    ids_carried: bool          # CID, longContentID and uuid all came from the input
    seconds: float

    def as_dict(self) -> dict[str, object]:
        return {"action": "copied", "capacity_bytes": self.capacity_bytes,
                "bytes_written": self.bytes_written, "grains_copied": self.grains_copied,
                "payload_bytes": self.payload_bytes, "populated_bytes": self.populated_bytes,
                "input_layout": self.input_layout, "ids_carried": self.ids_carried,
                "seconds": round(self.seconds, 6)}


def is_zlib_head(payload: bytes) -> bool:
    """RFC 1950: CM 8 (deflate), CINFO <= 7, FCHECK makes the first two bytes a multiple of
    31, FDICT clear (no reader has the dictionary)."""
    return (len(payload) >= 2 and payload[0] & 0x0F == 8 and payload[0] >> 4 <= 7
            and (payload[0] << 8 | payload[1]) % 31 == 0 and not payload[1] & 0x20)


Grain = tuple[int, int, int]       # LBA, marker offset, compressed size


def zlib_grains(reader: VmdkReader) -> tuple[list[Grain], int] | None:
    """(the grains, populated bytes) when every grain starts as a zlib stream, else None;
    from the marker sectors only: nothing is inflated and no grain's body is read."""
    h = reader.header
    populated = 0
    grains: list[Grain] = []
    for lba, pos, size, head in reader.grains(payloads=False):
        if not is_zlib_head(head):
            return None
        grains.append((lba, pos, size))
        populated += min(h.grain_sectors, h.capacity_sectors - lba) * L.SECTOR
    return grains, populated


def _descriptor(reader: VmdkReader, file_name: str, adapter_type: str
                ) -> tuple[bytes, bool]:
    ids, all_carried = carried_ids(reader)
    return render_descriptor(capacity_sectors=reader.header.capacity_sectors,
                             file_name=file_name, disk_key=b"", adapter_type=adapter_type,
                             ids=ids), all_carried


def copies_as_is(reader: VmdkReader, grains: Sequence[Grain], member_size: int,
                 read_at: Callable[[int, int], bytes], *, file_name: str,
                 adapter_type: str) -> tuple[bool, bytes | None]:
    """Whether :func:`copy_stream_vmdk` would write the input's own bytes past the head (up
    to the unused bytes after each payload): every grain where it would put it, the same
    tables, footer and end, the same size; and the head it would write there.  With the
    same body the member's bytes after the head can be copied as they are: (True, None)
    when the head is the same too, (True, head) when only the head differs (a new name),
    (False, None) otherwise.  The metadata is made by StreamVmdkWriter itself, fed
    placeholder grain blocks."""
    descriptor, _ = _descriptor(reader, file_name, adapter_type)
    spans: dict[int, list[Grain]] = {}
    for grain in grains:
        spans.setdefault(grain[0] // (L.GRAIN_SECTORS * L.GTES_PER_GT), []).append(grain)
    placeholder = bytearray(max((sum(_framed_bytes(g[2]) for g in span)
                                 for span in spans.values()), default=0))
    expected: list[tuple[int, bytes]] = []
    written = 0

    def record(data: bytes | bytearray | memoryview) -> None:
        nonlocal written
        if not (isinstance(data, memoryview) and data.obj is placeholder):
            expected.append((written, bytes(data)))
        written += len(data)

    writer = StreamVmdkWriter(record, capacity_sectors=reader.header.capacity_sectors,
                              descriptor=descriptor)
    writer.start()
    for index, span in sorted(spans.items()):
        gt = array("I", bytes(4 * L.GTES_PER_GT))
        at = written
        for lba, pos, size in span:
            if pos != at:
                return False, None
            gt[lba // L.GRAIN_SECTORS % L.GTES_PER_GT] = (at - written) // L.SECTOR + 1
            at += _framed_bytes(size)
        with memoryview(placeholder) as view:
            writer.add_span(index, view[:at - written], gt.tobytes())
    writer.finish()
    if written != member_size:
        return False, None
    (_, head), body = expected[0], expected[1:]   # start() writes the head in one piece
    if not all(read_at(offset, len(data)) == data for offset, data in body):
        return False, None
    return True, (None if read_at(0, len(head)) == head else head)


def _framed_bytes(size: int) -> int:
    return L.sectors_for(_GRAIN_HEAD.size + size) * L.SECTOR


def copy_member(read_at: Callable[[int, int], bytes], size: int, write: Write, *,
                start: int = 0, chunk: int = 8 << 20) -> None:
    """The member's bytes from ``start`` on as they are, in large reads."""
    done = start
    while done < size:
        data = read_at(done, min(chunk, size - done))
        if not data:
            raise VmdkFormatError("vmdk.truncated", "the file ends %d bytes early"
                                  % (size - done), offset=done)
        write(data)
        done += len(data)


def carried_ids(reader: VmdkReader) -> tuple[tuple[str, str, str], bool]:
    """((CID, longContentID, uuid), all three carried) for the copy's descriptor."""
    d = reader.descriptor
    cid = d.cid or ""
    long_id = d.ddb.get("ddb.longContentID", "")
    uuid_text = d.ddb.get("ddb.uuid", "")
    key = xxhash.xxh3_128_digest(b"repack" + reader.header.pack() + d.text.encode("utf-8"))
    derived = derived_ids(key)
    ok = (bool(_CID_RE.match(cid)) and cid.lower() not in ("ffffffff", "fffffffe"),
          bool(_LONG_ID_RE.match(long_id)), bool(_UUID_RE.match(uuid_text)))
    ids = (cid.lower() if ok[0] else derived[0], long_id.lower() if ok[1] else derived[1],
           uuid_text.lower() if ok[2] else derived[2])
    return ids, all(ok)


def copy_stream_vmdk(reader: VmdkReader, write: Write, *, file_name: str, adapter_type: str,
                     populated_bytes: int,
                     progress: Callable[[int, int], None] | None = None) -> CopyStats:
    """Copy ``reader``'s grains into a spec-layout stream VMDK through ``write``, one pass."""
    started = time.perf_counter()
    h = reader.header
    descriptor, all_carried = _descriptor(reader, file_name, adapter_type)
    writer = StreamVmdkWriter(write, capacity_sectors=h.capacity_sectors, descriptor=descriptor)
    writer.start()
    span = -1
    framed = bytearray()
    gt = array("I", bytes(4 * L.GTES_PER_GT))
    grains = payload_total = 0
    total = reader.size or 0
    for lba, pos, _size, payload in reader.grains():
        if not is_zlib_head(payload):  # zlib_grains said otherwise: the file changed
            raise VmdkFormatError("vmdk.grain.inflate", "grain at LBA %d is not a zlib stream "
                                  "(it was when the disk was scanned)" % lba,
                                  path=reader.name, member=reader.member, offset=pos + 12)
        s, i = divmod(lba // L.GRAIN_SECTORS, L.GTES_PER_GT)
        if s != span:
            if framed:
                writer.add_span(span, framed, gt.tobytes())
                if progress is not None:
                    progress(len(framed), total)
            span, framed = s, bytearray()
            gt = array("I", bytes(4 * L.GTES_PER_GT))
        gt[i] = len(framed) // L.SECTOR + 1
        L.frame_grain(framed, len(framed), lba, (payload,))
        grains += 1
        payload_total += len(payload)
    if framed:
        writer.add_span(span, framed, gt.tobytes())
        if progress is not None:
            progress(len(framed), total)
    writer.finish()
    return CopyStats(capacity_bytes=h.capacity_sectors * L.SECTOR,
                     bytes_written=writer.sector * L.SECTOR, grains_copied=grains,
                     payload_bytes=payload_total, populated_bytes=populated_bytes,
                     input_layout="stream" if h.gd_offset_sectors == L.GD_AT_END else "head",
                     ids_carried=all_carried, seconds=time.perf_counter() - started)
