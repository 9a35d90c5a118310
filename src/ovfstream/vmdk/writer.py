"""Stream-optimized VMDK writer: header, framed spans, GT after each span, GD, footer, EOS.

Layout per VMware "Virtual Disk Format 5.0" (stream-optimized sparse extents) and
../shared/FORMATS.md 1.3: the head's gdOffset is GD_AT_END, grains of each 32 MiB span in
increasing LBA order followed by that span's GT marker + GT (omitted for a span with no
grain: its GD entry stays 0), then the GD marker + GD, footer marker + footer (a header copy
with the real gdOffset), and the end-of-stream sector.  Nothing follows it.

The bytes go to a ``write`` callable in one forward pass: no seek, nothing read back, so the
same code writes a file, an OVA member behind a digest, or a pipe.
"""

from __future__ import annotations

import functools
import mmap
import threading
import time
from array import array
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from ..buffers import HUGE_PAGE, anonymous
from ..engine import CORE as _codec
from ..engine import NATIVE, Engine
from ..errors import UnsupportedError, UsageError
from ..pipeline import ordered_map
from ..sources.base import DiskSource, SpanPlan
from . import layout as L
from .contentid import ContentId
from .copied import encode_copied_span
from .descriptor import render_descriptor

if TYPE_CHECKING:
    from ..cache import CacheSession, SpanCache

__all__ = ["StreamVmdkWriter", "DiskStats", "write_stream_vmdk", "encode_plan", "NATIVE"]

Write = Callable[[bytes | bytearray | memoryview], object]
# (source, engine) -> (plan, framed, bytes used, gt_rel, prints, payload, grains copied) per
# span, in order
RemoteSpans = Callable[[DiskSource, Engine],
                       Iterator[tuple[SpanPlan, bytes, int, bytes, bytes, int, int]]]
# (framed buffer, bytes of it used, gt_rel, prints, payload, grains copied): one span encoded
Encoded = tuple[Any, int, bytes, bytes, int, int]


class StreamVmdkWriter:
    """Frames spans into a stream-optimized VMDK, forward only."""

    def __init__(self, write: Write, *, capacity_sectors: int, descriptor: bytes) -> None:
        if capacity_sectors <= 0:
            raise UsageError("capacity must be at least one sector")
        if len(descriptor) > L.DESCRIPTOR_SECTORS * L.SECTOR:
            raise UsageError("VMDK descriptor of %d bytes exceeds its %d reserved sectors"
                             % (len(descriptor), L.DESCRIPTOR_SECTORS))
        self._write = write
        self.capacity_sectors = capacity_sectors
        self.n_spans = L.n_spans_for(capacity_sectors)
        self._gd = array("I", bytes(4 * self.n_spans))
        self._descriptor = descriptor
        self._last_span = -1
        self.sector = 0  # sectors written so far == the next sector's number
        self.finished = False

    def _emit(self, data: bytes | bytearray | memoryview) -> None:
        self._write(data)
        self.sector += len(data) // L.SECTOR

    def start(self) -> None:
        head = L.Header(capacity_sectors=self.capacity_sectors, gd_offset_sectors=L.GD_AT_END)
        prefix = bytearray(L.OVERHEAD_SECTORS * L.SECTOR)
        prefix[:L.SECTOR] = head.pack()
        start = L.DESCRIPTOR_OFFSET * L.SECTOR
        prefix[start:start + len(self._descriptor)] = self._descriptor
        self._emit(prefix)

    def add_span(self, index: int, framed: bytes | bytearray | memoryview, gt_rel: bytes) -> None:
        """Append one span's framed grains; ``gt_rel`` holds 1 + sector-in-``framed`` or 0."""
        if not self._last_span < index < self.n_spans:
            raise ValueError("span %d after span %d (of %d): spans go in increasing order"
                             % (index, self._last_span, self.n_spans))
        self._last_span = index
        if not framed:
            return
        base = self.sector
        self._emit(framed)
        if self.sector + 1 + L.GT_SECTORS > L.MAX_FILE_SECTORS:
            raise UnsupportedError("the VMDK would pass 2 TiB, beyond what a u32 grain-table "
                                   "entry can address")
        table = _codec.relocate_gt(gt_rel, base, L.GTES_PER_GT)
        self._emit(L.metadata_marker(L.MARKER_GT, L.GT_SECTORS))
        self._gd[index] = self.sector
        self._emit(table)

    def finish(self) -> None:
        gd_bytes = self._gd.tobytes()
        gd_bytes += bytes(-len(gd_bytes) % L.SECTOR)
        self._emit(L.metadata_marker(L.MARKER_GD, len(gd_bytes) // L.SECTOR))
        gd_offset = self.sector
        self._emit(gd_bytes)
        self._emit(L.metadata_marker(L.MARKER_FOOTER, 1))
        self._emit(L.Header(capacity_sectors=self.capacity_sectors,
                            gd_offset_sectors=gd_offset).pack())
        self._emit(L.EOS_SECTOR)
        self.finished = True


@dataclass
class DiskStats:
    """What encoding one disk did; sizes in bytes."""

    capacity_bytes: int       # the capacity in whole sectors
    size_bytes: int           # the raw image's exact size
    bytes_read: int           # data-extent bytes read (holes are never read)
    hole_bytes_skipped: int
    bytes_written: int        # VMDK bytes
    grains_written: int
    zero_grains_skipped: int  # all-zero grains found in data extents
    payload_bytes: int        # compressed grain bytes, without markers and padding
    content_id: str           # xxh3-128 hex of the virtual disk's content
    disk_key: str             # what CID/uuid/longContentID derive from
    seconds: float
    engine: dict[str, object] = field(default_factory=dict)
    last_grain_written: bool = False  # the disk's last grain holds data
    cache: dict[str, object] | None = None  # span cache use (cache.py), when one was given
    grains_copied: int = 0    # grains whose deflate stream was copied from the source

    @property
    def populated_bytes(self) -> int:
        """Bytes of the virtual disk that non-zero grains cover: a partial last grain counts
        only up to the capacity (ovf:populatedSize may not exceed ovf:capacity)."""
        full = self.grains_written * L.GRAIN_BYTES
        if self.last_grain_written:
            full -= -self.capacity_bytes % L.GRAIN_BYTES
        return full

    def as_dict(self) -> dict[str, object]:
        return {
            "capacity_bytes": self.capacity_bytes, "size_bytes": self.size_bytes,
            "bytes_read": self.bytes_read, "hole_bytes_skipped": self.hole_bytes_skipped,
            "bytes_written": self.bytes_written, "grains_written": self.grains_written,
            "grains_copied": self.grains_copied,
            "zero_grains_skipped": self.zero_grains_skipped,
            "populated_bytes": self.populated_bytes, "payload_bytes": self.payload_bytes,
            "content_id": self.content_id, "disk_key": self.disk_key,
            "seconds": round(self.seconds, 6),
            "read_gb_per_s": round(self.bytes_read / self.seconds / 1e9, 3) if self.seconds else None,
            "engine": self.engine,
            **({"cache": self.cache} if self.cache is not None else {}),
        }


# Pages kept mapped past what a span used: the next span of the buffer may frame a little
# more without faulting them in again (measured: 59k -> 46k page faults for a convert of the
# OS image at the same peak RSS).
_TAIL_SLACK = 4 << 20


def _release_tail(buffer: mmap.mmap, used: int) -> None:
    """Give the kernel back the pages of ``buffer`` past the first ``used`` bytes and a slack
    (from a huge-page boundary: a huge page released in part is split, which costs more;
    counted from the buffer's start, which kernels since 6.7 place on a 2 MiB boundary for
    maps this large, and older ones may not: then only the cost differs)."""
    start = -(-(used + _TAIL_SLACK) // HUGE_PAGE) * HUGE_PAGE
    if start < len(buffer):
        buffer.madvise(mmap.MADV_DONTNEED, start, len(buffer) - start)


def encode_span_into(engine: Engine, local: threading.local, out: Any, view: memoryview,
                     first_lba: int, n_grains: int) -> tuple[int, bytes, bytes, int]:
    """Frame ``n_grains`` grains of ``view`` at the start of ``out`` (at least
    n_grains * MAX_FRAMED_BYTES long): (bytes of it used, gt_rel, prints, payload).
    ``local`` keeps the calling thread's engine state.  One interface whatever the engine's
    path (engine.encoder: the native span encoder, or the span codec around a per-grain
    callable)."""
    encoder = engine.encoder
    streams = local.__dict__.setdefault("streams", {})
    if encoder not in streams:  # this thread's state (ISA-L: at a fixed kind of address)
        streams[encoder] = encoder.new_stream()
    return encoder.encode_span_into(out, view, first_lba, n_grains, streams[encoder])  # type: ignore[no-any-return]


def encode_plan(source: DiskSource, plan: SpanPlan, buf: Any, engine: Engine,
                local: threading.local, take_buffer: Callable[[], Any], *,
                session: CacheSession | None = None, recompress: bool = False) -> Encoded:
    """Read one span of ``source`` into ``buf`` and encode it (in a worker thread, here or
    on a remote worker: farm.py).  A qcow2's compressed clusters of one grain are copied
    (vmdk/copied.py) unless ``recompress``; a span holding any bypasses the cache, which
    keys engine output by the raw bytes.  Else the span's grains go through the engine, or
    with a cache ``session`` through it: the chunks it holds come from there (cache.py).
    Returns (buffer from ``take_buffer``, bytes of it used, gt_rel, prints, payload, grains
    copied)."""
    first_lba = plan.index * L.SPAN_GRAINS * L.GRAIN_SECTORS
    compress_into = functools.partial(encode_span_into, engine, local)
    if not recompress and getattr(source, "copies_deflate", False):
        view, streams = source.read_span_deflate(plan, buf)  # type: ignore[attr-defined]
        if streams:
            out = take_buffer()
            return (out, *encode_copied_span(compress_into, out, view, first_lba,
                                             plan.n_grains, streams))
    elif session is not None and not source.sequential:  # a hit reads only what it hashes
        out = take_buffer()
        with memoryview(out) as dest:
            return (out, *session.encode_from(source, plan, buf, dest, compress_into), 0)
    else:
        view = source.read_span(plan, buf)
    out = take_buffer()
    if session is None:
        return (out, *compress_into(out, view, first_lba, plan.n_grains), 0)
    with memoryview(out) as dest:
        return (out, *session.encode_into(dest, view, first_lba, plan.n_grains, compress_into),
                0)


def write_stream_vmdk(source: DiskSource, write: Write, *, file_name: str, engine: Engine,
                      workers: int, adapter_type: str = "lsilogic",
                      progress: Callable[[int, int], None] | None = None,
                      cache: SpanCache | None = None,
                      remote: RemoteSpans | None = None, recompress: bool = False) -> DiskStats:
    """Encode ``source`` as a stream-optimized VMDK through ``write``, in one pass.

    A qcow2's compressed clusters that are whole grains are copied, not recompressed
    (vmdk/copied.py), unless ``recompress``: then every grain goes through ``engine``.
    ``cache``: spans whose raw bytes it holds are taken from it, not compressed (cache.py).
    ``remote``: encodes the spans elsewhere (farm.py) and yields them in order; the
    descriptor, framing of the stream and content id stay here."""
    started = time.perf_counter()
    disk_key = source.sample_key(engine=engine.name, level=engine.level,
                                 adapter_type=adapter_type, file_name=file_name)
    descriptor = render_descriptor(capacity_sectors=source.capacity_sectors, file_name=file_name,
                                   disk_key=disk_key, adapter_type=adapter_type)
    writer = StreamVmdkWriter(write, capacity_sectors=source.capacity_sectors,
                              descriptor=descriptor)
    local = threading.local()
    # Framed-output buffers go back to this pool once written: a reused buffer's pages are
    # already mapped, a new 33 MB one costs thousands of page faults.  They are anonymous
    # maps so that the part past what a span used can be handed back to the kernel (RSS
    # follows the data, not the 33 MB worst case).
    pool: list[mmap.mmap] = []
    pool_lock = threading.Lock()

    def take_buffer() -> mmap.mmap:
        with pool_lock:
            return pool.pop() if pool else anonymous(_codec.SPAN_FRAMED_BYTES)

    session = cache.session(engine) if cache is not None else None

    def encode(plan: SpanPlan) -> tuple[SpanPlan, bytearray | mmap.mmap, int, bytes, bytes,
                                        int, int]:
        buf = getattr(local, "buf", None)
        if buf is None:  # this thread's span buffer, made once (an anonymous map: its
            buf = local.buf = anonymous(L.SPAN_BYTES)  # pages fault in as read)
        return (plan, *encode_plan(source, plan, buf, engine, local, take_buffer,
                                   session=session, recompress=recompress))

    content_id = ContentId(source.capacity_sectors)
    grains = zero_grains = payload_total = copied_total = 0
    last_lba = (source.n_grains - 1) * L.GRAIN_SECTORS
    last_grain_written = False
    writer.start()
    # While this thread writes one span (with O_DIRECT: the disk's time, ~15 ms for 14 MB
    # here; with window=workers+1 the pending spans were exactly the running ones, so a
    # worker done meanwhile sat idle), one more span waits queued for the first free worker.
    # Each span in flight holds a framed buffer of up to 33 MB, so no more.
    results = (remote(source, engine) if remote is not None else
               ordered_map(encode, source.spans(), workers=workers, window=workers + 2))
    try:
        for plan, framed, n_framed, gt_rel, prints, payload, copied in results:
            with memoryview(framed) as used:
                writer.add_span(plan.index, used[:n_framed], gt_rel)
            if isinstance(framed, mmap.mmap):
                _release_tail(framed, n_framed)
                with pool_lock:
                    pool.append(framed)
            content_id.add_packed(prints)
            n = len(prints) // 16
            if n and int.from_bytes(prints[-16:-8], "little") == last_lba:
                last_grain_written = True
            grains += n
            zero_grains += plan.n_grains - n
            payload_total += payload
            copied_total += copied
            if progress is not None:
                progress(sum(end - start for start, end in plan.extents), source.data_bytes)
    except BaseException:
        # Before the pipeline joins its threads: a sequential source's workers may be
        # waiting for a span whose turn will never come (sources/sequential.py).
        source.stop()
        raise
    finally:
        results.close()  # joins every worker before their buffers go
        for buffer in pool:
            buffer.close()
    writer.finish()
    return DiskStats(
        capacity_bytes=source.capacity_sectors * L.SECTOR, size_bytes=source.size_bytes,
        bytes_read=source.data_bytes, hole_bytes_skipped=source.size_bytes - source.data_bytes,
        bytes_written=writer.sector * L.SECTOR, grains_written=grains,
        zero_grains_skipped=zero_grains, payload_bytes=payload_total,
        content_id=content_id.hexdigest(), disk_key=disk_key.hex(),
        seconds=time.perf_counter() - started, engine=engine.describe(),
        last_grain_written=last_grain_written,
        cache=session.describe() if session is not None else None, grains_copied=copied_total)
