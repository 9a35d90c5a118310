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

import mmap
import os
import queue
import re
import threading
import time
from array import array
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import compress
from typing import Callable, Sequence

import xxhash

from ..buffers import anonymous
from ..errors import VmdkFormatError
from . import layout as L
from .descriptor import derived_ids, render_descriptor
from .reader import VmdkReader
from .writer import StreamVmdkWriter

__all__ = ["CopyStats", "is_zlib_head", "zlib_grains", "carried_ids", "copy_stream_vmdk",
           "copies_as_is", "copy_member", "table_grains", "GrainCheck", "LayoutDiffers",
           "populated_bytes"]

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
    grains: list[Grain] = []
    for lba, pos, size, head in reader.grains(payloads=False):
        if not is_zlib_head(head):
            return None
        grains.append((lba, pos, size))
    return grains, populated_bytes(reader.header, grains)


def populated_bytes(header: L.Header, grains: Sequence[Grain]) -> int:
    """The virtual bytes ``grains`` cover, the last one capped at the capacity."""
    return sum(min(header.grain_sectors, header.capacity_sectors - g[0])
               for g in grains) * L.SECTOR


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
    # Stands for each span's grain bytes (never read: record() skips it).  An anonymous map
    # of the largest span the writer frames: its pages are never touched, so it costs none.
    placeholder = anonymous(L.GTES_PER_GT * L.MAX_FRAMED_GRAIN)
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
    # One pass in file order (the spec layout has its spans in LBA order there, each grain
    # right after the one before): ~21,000 grains for an OS image, so no call per grain.
    per_span = L.GRAIN_SECTORS * L.GTES_PER_GT
    round_up = _GRAIN_HEAD.size + L.SECTOR - 1
    with memoryview(placeholder) as view:
        index = -1
        gt = array("I")
        at = span_start = 0
        for lba, pos, size in grains:
            if lba // per_span != index:
                if index >= 0:
                    writer.add_span(index, view[:at - span_start], gt.tobytes())
                if lba // per_span < index:
                    return False, None
                index = lba // per_span
                gt = array("I", bytes(4 * L.GTES_PER_GT))
                at = span_start = written
            if pos != at or at - span_start >= len(view):
                return False, None
            gt[lba // L.GRAIN_SECTORS % L.GTES_PER_GT] = (at - span_start) // L.SECTOR + 1
            at += (size + round_up) // L.SECTOR * L.SECTOR
        if index >= 0:
            if at - span_start > len(view):
                return False, None
            writer.add_span(index, view[:at - span_start], gt.tobytes())
    writer.finish()
    if written != member_size:
        return False, None
    (_, head), body = expected[0], expected[1:]   # start() writes the head in one piece
    if not all(read_at(offset, len(data)) == data for offset, data in body):
        return False, None
    return True, (None if read_at(0, len(head)) == head else head)


class LayoutDiffers(Exception):
    """The grain markers disagree with the tables :func:`table_grains` read (a damaged or
    unusual input): the caller redoes the copy from the marker walk."""


def table_grains(reader: VmdkReader) -> list[Grain] | None:
    """The grains where a GD-at-end stream's tables put them, in file order, each sized to
    fill its sectors up to the next grain (or its span's GT marker), without the marker walk:
    a few table reads instead of one read per grain.  None when the tables cannot be read
    that way (another layout, zeroed entries, grains out of LBA order); the markers are
    checked as the member is copied (:class:`GrainCheck`)."""
    h = reader.header
    if h.gd_offset_sectors != L.GD_AT_END or reader.size is None:
        return None
    footer, _ = reader.tail_footer()
    gd = footer.gd_offset_sectors
    entries = array("I", reader.grain_directory(gd))
    grains: list[Grain] = []
    per_gt, grain_sectors = h.gtes_per_gt, h.grain_sectors
    head = _GRAIN_HEAD.size
    for span, entry in enumerate(entries):
        if not entry:
            continue
        table = array("I", reader.grain_table(entry, span, gd))
        first = span * per_gt
        # The stored grains in LBA order: their sectors and grain numbers.  In the spec
        # layout the sectors rise with the LBA; anything else goes to the marker walk.
        sectors = list(compress(table, table))
        if not sectors:
            continue
        numbers = list(compress(range(first, first + len(table)), table))
        # each grain fills its sectors up to the next grain, the last one up to the span's GT
        # marker (the sector before the GT)
        stops = sectors[1:] + [entry - 1]
        sizes = [(stop - sector) * L.SECTOR - head for sector, stop in zip(sectors, stops)]
        # A gap wider than a grain can fill is not the spec layout (and a size from the
        # tables must not size a buffer unbounded), nor are sectors that do not rise with the
        # LBA (a size <= 0), a zeroed entry or a grain past the capacity: the marker walk
        # decides.
        if (sectors[0] == L.GTE_ZEROED or min(sizes) <= 0
                or max(sizes) >= L.MAX_GRAIN_PAYLOAD + L.SECTOR
                or numbers[-1] * grain_sectors >= h.capacity_sectors
                or grains and (numbers[0] * grain_sectors <= grains[-1][0]
                               or sectors[0] * L.SECTOR <= grains[-1][1])):
            return None
        grains.extend(zip([g * grain_sectors for g in numbers],
                          [sector * L.SECTOR for sector in sectors], sizes))
    return grains


class GrainCheck:
    """Checks, piece by piece as the member is read, that each grain marker is what
    :func:`table_grains` placed there: its LBA, a size that fills its sectors, within the
    limit, and a zlib head.  Raises :class:`LayoutDiffers` otherwise."""

    def __init__(self, grains: Sequence[Grain], read_at: Callable[[int, int], bytes]) -> None:
        self._grains = grains
        self._read_at = read_at
        self._next = 0
        self.payload_bytes = 0
        self._heads: dict[bytes, bool] = {}

    def __call__(self, offset: int, view: memoryview) -> None:
        grains = self._grains
        end = offset + len(view)
        i = self._next
        unpack = _GRAIN_HEAD.unpack_from
        while i < len(grains) and grains[i][1] < end:
            lba, pos, room = grains[i]
            if pos + _GRAIN_HEAD.size + 2 <= end:
                at = pos - offset
                marker_lba, size = unpack(view, at)
                head = bytes(view[at + 12:at + 14])
            else:  # the marker crosses into the next piece
                raw = self._read_at(pos, _GRAIN_HEAD.size + 2)
                marker_lba, size = unpack(raw, 0)
                head = raw[12:14]
            if (marker_lba != lba or not room - L.SECTOR < size <= room or size < 2
                    or size > L.MAX_GRAIN_PAYLOAD or not self._zlib(head)):
                raise LayoutDiffers("grain marker at byte %d" % pos)
            self.payload_bytes += size
            i += 1
        self._next = i

    def _zlib(self, head: bytes) -> bool:
        ok = self._heads.get(head)
        if ok is None:
            ok = self._heads[head] = is_zlib_head(head)
        return ok

    def finish(self) -> None:
        if self._next != len(self._grains):
            raise LayoutDiffers("%d grains not seen" % (len(self._grains) - self._next))


_FIRST_PIECE = 1 << 20


def copy_member(fd: int, base: int, size: int, write: Write, *, start: int = 0,
                observe: Callable[[memoryview], object] | None = None,
                check: Callable[[int, memoryview], None] | None = None,
                chunk: int = 8 << 20, depth: int = 4) -> None:
    """The member's bytes [start, size) (at ``base`` in ``fd``) through ``write``, as they
    are.  A thread reads ahead into page-aligned buffers (a cold input's reads overlap the
    writes; O_DIRECT output takes them without a copy) and runs ``check(offset, piece)`` on
    each piece; ``observe`` sees every byte from 0 (the input's digest) on another thread
    while the piece is written."""
    first = 0 if observe is not None or check is not None else start - start % L.SECTOR
    free: queue.Queue[mmap.mmap | None] = queue.Queue()
    for _ in range(depth):
        free.put(anonymous(chunk))
    full: queue.Queue[tuple[mmap.mmap, int, int] | BaseException | None] = queue.Queue()
    stop = threading.Event()

    def read_ahead() -> None:
        at = first
        try:
            while at < size and not stop.is_set():
                buf = free.get()
                if buf is None or stop.is_set():
                    return
                # The pieces grow from 1 MiB to ``chunk`` (1, 1, 2, 4, 8...): the writes
                # start after a small read, not after a whole chunk read into fresh pages
                # (6 ms measured, against 0.8 ms into a reused buffer).
                n = min(chunk, max(_FIRST_PIECE, at - first), size - at)
                got = 0
                view = memoryview(buf)
                while got < n:
                    k = os.preadv(fd, [view[got:n]], base + at + got)
                    if not k:
                        raise VmdkFormatError("vmdk.truncated", "the file ends %d bytes "
                                              "early" % (size - at - got), offset=at + got)
                    got += k
                if check is not None:
                    check(at, view[:n])
                full.put((buf, at, n))
                at += n
        except BaseException as exc:  # handed to the writing thread, which raises it
            full.put(exc)
            return
        full.put(None)

    reader = threading.Thread(target=read_ahead, name="ovfstream-copy-read")
    observer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ovfstream-copy-digest") \
        if observe is not None else None
    pending: list[tuple[mmap.mmap, Future[object] | None]] = []  # written, maybe digesting
    reader.start()
    if observer is not None:
        observer.submit(int)  # its thread starts beside the first read, not after it (~5 ms)
    try:
        while True:
            item = full.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            buf, at, n = item
            view = memoryview(buf)[:n]
            seen = observer.submit(observe, view) if observer is not None else None
            pending.append((buf, seen))
            if at + n > start:
                write(view[max(0, start - at):])
            # A buffer goes back to the reader once its digest is done; half of them may wait.
            while pending and (len(pending) > depth // 2 or pending[0][1] is None
                               or pending[0][1].done()):
                done, seen = pending.pop(0)
                if seen is not None:
                    seen.result()
                free.put(done)
        for _, seen in pending:
            if seen is not None:
                seen.result()
    finally:
        stop.set()
        free.put(None)  # wakes a reader waiting for a buffer
        reader.join()
        if observer is not None:
            observer.shutdown(wait=True)


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
