"""qcow2 images (versions 2 and 3) as a source of 32 MiB spans.

Layout per QEMU's docs/interop/qcow2.txt: a big-endian header in the first cluster, header
extensions after it, an L1 table of L2-table offsets, L2 tables of cluster descriptors (8
bytes each, or 16 with extended L2 entries: the descriptor and a 32-subcluster bitmap of
"allocated" and "reads as zeros").  A descriptor says where a guest cluster lives: nowhere
(read through to the backing file, or zeros), zeros, a host cluster, or a compressed cluster
(raw deflate or a zstd frame, per the header's compression type).

Every number is checked before it is used: header fields, the L1 table (it must cover the
virtual size and fit QEMU's own 32 MiB limit), every L1/L2 entry (reserved bits, alignment,
inside the file, not the header cluster).  The L2 tables are walked once at the open to find
the data extents (coalesced, at most a few per 32 MiB span, so a hostile checkerboard cannot
grow the list) and read again per span through a small cache; a hole or a zero cluster is
never read, each allocated byte is read once, compressed clusters are inflated in the worker
threads that read them (libdeflate and zstd release the GIL).

Copying compressed clusters: a 64 KiB deflate cluster is a VMDK grain's deflate stream as it
is.  ``read_span_deflate`` reads a span as ``read_span`` does and also hands back, for each
grain that is one such cluster of this file, the cluster's raw deflate bytes up to the end of
the stream (libdeflate says where it ended while it inflates the cluster into the span:
sources/rawinflate.py), so that the VMDK writer frames them instead of compressing the grain
again (vmdk/copied.py).

Backing chains: the backing file (relative names against the overlay's folder) opens through
``open_source`` with the format the header extension names (by content when none), to a
bounded depth; a loop or a missing link is a ``qcow2.backing`` error naming both files.
"""

from __future__ import annotations

import contextvars
import heapq
import mmap
import os
import struct
import sys
import threading
from array import array
from collections import OrderedDict
from typing import Iterable, Iterator

import deflate
import zstandard

from ..errors import FormatError, UnsupportedError, UsageError
from ..vmdk.layout import GRAIN_BYTES, MAX_GRAIN_PAYLOAD, SPAN_BYTES
from . import rawinflate
from .base import DiskSource, Extent, OpenFile, SpanPlan, fill_zeros

__all__ = ["Qcow2Source", "RULES", "MAX_CHAIN_DEPTH"]

RULES: dict[str, str] = {
    "qcow2.header": "the qcow2 header is truncated, or a field is out of range (magic, "
                    "version, cluster_bits, size, header_length, feature bits, extensions)",
    "qcow2.l1": "the L1 table does not cover the virtual size, is larger than 32 MiB, lies "
                "outside the file, or an entry has reserved bits set or points outside the file",
    "qcow2.l2": "an L2 entry has reserved bits set, is misaligned, or its subcluster bitmap "
                "is inconsistent",
    "qcow2.cluster": "a data cluster lies outside the file or overlaps the header",
    "qcow2.compressed": "a compressed cluster lies outside the file, or does not inflate to "
                        "exactly one cluster (its deflate stream corrupt, or not ending "
                        "inside its sectors)",
    "qcow2.backing": "the backing file is missing, loops back into the chain, is nested "
                     "deeper than 16, or cannot be opened as the format the header names",
}

MAGIC = b"QFI\xfb"
V2_HEADER_BYTES = 72
V3_HEADER_BYTES = 104
MAX_L1_BYTES = 32 << 20       # QEMU's own limit (QCOW_MAX_L1_SIZE)
MAX_BACKING_NAME = 1023       # the spec's limit on backing_file_size
MAX_CHAIN_DEPTH = 16
EXT_END, EXT_BACKING_FORMAT, EXT_FEATURE_NAMES = 0, 0xE2792ACA, 0x6803F857

INCOMPAT_DIRTY, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE = 1, 2, 4
INCOMPAT_COMPRESSION, INCOMPAT_EXTL2 = 8, 16
KNOWN_INCOMPAT = 31
COMPRESSION_DEFLATE, COMPRESSION_ZSTD = 0, 1

COPIED, COMPRESSED, ZERO_FLAG = 1 << 63, 1 << 62, 1
OFFSET_MASK = 0x00FFFFFFFFFFFE00           # bits 9-55: a cluster-aligned host offset
L1_RESERVED = ((1 << 64) - 1) & ~(OFFSET_MASK | COPIED)
L2_RESERVED = ((1 << 62) - 1) & ~(OFFSET_MASK | ZERO_FLAG)   # bits 1-8 and 56-61
SUBCLUSTERS = 32

# What a guest (sub)cluster is: read through to the backing file (or zeros), zeros, a host
# cluster, a compressed cluster.
HOLE, ZERO, DATA, PACKED = range(4)
# A copied stream becomes a grain of 2 zlib header bytes, the stream and a 4-byte Adler-32;
# a longer stream (a hostile or odd encoder's) is recompressed instead.
MAX_COPIED_STREAM = MAX_GRAIN_PAYLOAD - 6
EXTENTS_PER_SPAN = 8          # beyond this, a span's extents collapse into one (reads stay exact)
L2_CACHE_BYTES = 8 << 20

# The files of the chain being opened in this context: (st_dev, st_ino) -> path.  A backing
# file that is already in it is a loop.
_OPENING: contextvars.ContextVar[tuple[tuple[tuple[int, int], str], ...]] = \
    contextvars.ContextVar("qcow2_opening", default=())


class Qcow2Source(DiskSource):
    """An open qcow2 image (and its backing chain).  Thread-safe: pread, a locked cache."""

    format = "qcow2"

    def __init__(self, path: str | os.PathLike[str], *, size: int | None = None,
                 depth: int = 0) -> None:
        self._file = OpenFile(path, block_devices=True)
        self.path = self._file.path
        self.files = [self._file]
        self.backing: DiskSource | None = None
        self._cache: OrderedDict[int, array] = OrderedDict()
        self._lock = threading.Lock()
        # Per thread, while read_span_deflate runs: guest offset -> the deflate stream of a
        # whole compressed cluster read there.
        self._streams = threading.local()
        key = (self._file.stat.st_dev, self._file.stat.st_ino)
        chain = _OPENING.get()
        token = _OPENING.set(chain + ((key, self.path),))
        try:
            for seen, name in chain:
                if seen == key:
                    raise self._error("qcow2.backing", "the backing chain loops: %s -> %s"
                                      % (" -> ".join(n for _, n in chain), self.path))
            self._read_header()
            self._open_backing(depth)
            self.extents = self._chain_extents()
        except BaseException:
            self.close()
            raise
        finally:
            _OPENING.reset(token)
        self.mtime = max(int(f.stat.st_mtime) for f in self.files)
        self._sized()

    # -- errors ----------------------------------------------------------------------------

    def _error(self, rule: str, detail: str, offset: int | None = None) -> FormatError:
        return FormatError(rule, detail, path=self.path, offset=offset)

    # -- header ----------------------------------------------------------------------------

    def _read_header(self) -> None:
        file_size = self._file.size
        if file_size < V2_HEADER_BYTES:
            raise self._error("qcow2.header", "truncated: %d bytes, a header needs %d"
                              % (file_size, V2_HEADER_BYTES), 0)
        head = self._file.pread(min(file_size, 4096), 0)
        (magic, version, backing_offset, backing_size, cluster_bits, size, crypt, l1_size,
         l1_offset) = struct.unpack_from(">4sIQIIQIIQ", head, 0)
        if magic != MAGIC:
            raise self._error("qcow2.header", "magic %r is not %r" % (magic, MAGIC), 0)
        if version not in (2, 3):
            raise self._error("qcow2.header", "version %d; versions 2 and 3 are read" % version, 4)
        if not 9 <= cluster_bits <= 21:
            raise self._error("qcow2.header", "cluster_bits %d outside 9..21" % cluster_bits, 20)
        if crypt:
            raise UnsupportedError(
                "%s@0x20: [qcow2.header] qcow2 version %d, encrypted (%s; crypt_method %d): "
                "ovfstream does not decrypt images; decrypt it first (qemu-img convert "
                "--object secret,... --image-opts ... -O qcow2)"
                % (self.path, version, {1: "AES", 2: "LUKS"}.get(crypt, "unknown method"), crypt))
        self.version = version
        self.cluster_bits = cluster_bits
        self.cluster_size = cs = 1 << cluster_bits
        self.size_bytes = size
        header_length, incompat, compression = V2_HEADER_BYTES, 0, COMPRESSION_DEFLATE
        if version == 3:
            if file_size < V3_HEADER_BYTES:
                raise self._error("qcow2.header", "truncated: %d bytes, a version 3 header "
                                  "needs %d" % (file_size, V3_HEADER_BYTES), 0)
            incompat, = struct.unpack_from(">Q", head, 72)
            refcount_order, header_length = struct.unpack_from(">II", head, 96)
            if refcount_order > 6:
                raise self._error("qcow2.header", "refcount_order %d > 6" % refcount_order, 96)
            if (header_length < V3_HEADER_BYTES or header_length % 8
                    or header_length > min(cs, file_size, len(head))):
                raise self._error("qcow2.header", "header_length %d (a multiple of 8 from "
                                  "104 to the cluster size, inside the file)" % header_length, 100)
            if header_length > V3_HEADER_BYTES:
                compression = head[104]
        self._check_features(incompat, compression, head, header_length, backing_offset)
        self.extended_l2 = bool(incompat & INCOMPAT_EXTL2)
        if self.extended_l2 and cluster_bits < 14:
            raise self._error("qcow2.header", "extended L2 entries need clusters of 16 KiB or "
                              "more (cluster_bits %d)" % cluster_bits, 20)
        self.compression = compression
        # Whether read_span_deflate can find grains to copy: deflate clusters of one grain.
        self.copies_deflate = compression == COMPRESSION_DEFLATE and cs == GRAIN_BYTES
        if size == 0:
            raise UsageError("%s: the qcow2 image's virtual size is 0; a disk needs a capacity"
                             % self.path)
        self.entry_bytes = 16 if self.extended_l2 else 8
        self.l2_entries = cs // self.entry_bytes
        self.l2_bytes = cs
        self.l2_span = cs * self.l2_entries            # virtual bytes one L2 table maps
        max_size = (MAX_L1_BYTES // 8) * self.l2_span
        if size > max_size:
            raise self._error("qcow2.header", "size %d exceeds what a 32 MiB L1 table of "
                              "%d-byte clusters maps (%d)" % (size, cs, max_size), 24)
        self.l1_needed = -(-size // self.l2_span)
        if l1_size < self.l1_needed or l1_size * 8 > MAX_L1_BYTES:
            raise self._error("qcow2.l1", "l1_size %d; the virtual size of %d bytes needs %d "
                              "entries (at most %d)" % (l1_size, size, self.l1_needed,
                                                        MAX_L1_BYTES // 8), 36)
        if l1_offset % cs or l1_offset < cs or l1_offset + self.l1_needed * 8 > file_size:
            raise self._error("qcow2.l1", "l1_table_offset 0x%x must be cluster-aligned, past "
                              "the header and inside the file of %d bytes"
                              % (l1_offset, file_size), 40)
        self.l1 = self._table(l1_offset, self.l1_needed)
        for i, entry in enumerate(self.l1):
            if entry & L1_RESERVED:
                raise self._error("qcow2.l1", "L1 entry %d (0x%016x) has reserved bits set"
                                  % (i, entry), l1_offset + 8 * i)
            l2 = entry & OFFSET_MASK
            if l2 and (l2 % cs or l2 + self.l2_bytes > file_size):
                raise self._error("qcow2.l1", "L1 entry %d: L2 table at 0x%x is misaligned or "
                                  "past the end of the file (%d bytes)" % (i, l2, file_size),
                                  l1_offset + 8 * i)
        self.backing_name = self._backing_name(head, backing_offset, backing_size)
        # Compressed descriptors: host offset in bits 0..x-1, extra sectors in x..61.
        self._coffset_bits = 62 - (cluster_bits - 8)
        self._csectors_mask = (1 << (cluster_bits - 8)) - 1

    def _check_features(self, incompat: int, compression: int, head: bytes,
                        header_length: int, backing_offset: int) -> None:
        self.backing_format: str | None = None
        names = self._extensions(head, header_length, backing_offset)
        if incompat & INCOMPAT_CORRUPT:
            raise self._error("qcow2.header", "the image is marked corrupt (incompatible "
                              "feature bit 1): repair it first (qemu-img check -r all)", 72)
        if incompat & INCOMPAT_DATA_FILE:
            raise UnsupportedError(
                "%s: [qcow2.header] the guest data lives in an external data file "
                "(incompatible feature bit 2), which ovfstream does not read; convert it "
                "first (qemu-img convert -O qcow2)" % self.path)
        unknown = incompat & ~KNOWN_INCOMPAT
        if unknown:
            bits = [b for b in range(64) if unknown >> b & 1]
            raise UnsupportedError(
                "%s@0x48: [qcow2.header] unknown incompatible feature bit(s) %s, which "
                "ovfstream does not read" % (self.path, ", ".join(
                    "%d (%s)" % (b, names[b]) if b in names else str(b) for b in bits)))
        if compression not in (COMPRESSION_DEFLATE, COMPRESSION_ZSTD) or (
                compression and not incompat & INCOMPAT_COMPRESSION):
            raise self._error("qcow2.header", "compression_type %d (0 deflate; 1 zstd with "
                              "incompatible bit 3 set)" % compression, 104)

    def _extensions(self, head: bytes, header_length: int, backing_offset: int
                    ) -> dict[int, str]:
        """Walk the header extensions (bounded by the first cluster); return the names of
        incompatible features from the feature name table."""
        names: dict[int, str] = {}
        end = min(self.cluster_size, self._file.size)
        if backing_offset and backing_offset < end:
            end = backing_offset
        if end > len(head):
            head = self._file.pread(end, 0)
        pos = header_length
        while pos + 8 <= end:
            kind, length = struct.unpack_from(">II", head, pos)
            if kind == EXT_END:
                return names
            if pos + 8 + length > end:
                raise self._error("qcow2.header", "header extension 0x%08x of %d bytes runs "
                                  "past its area (ends at %d)" % (kind, length, end), pos)
            data = head[pos + 8:pos + 8 + length]
            if kind == EXT_BACKING_FORMAT:
                if length == 0 or length > 16:
                    raise self._error("qcow2.header", "backing format name of %d bytes" % length,
                                      pos)
                self.backing_format = data.decode("ascii", "replace")
            elif kind == EXT_FEATURE_NAMES:
                for i in range(0, length - 47, 48):
                    ftype, bit = data[i], data[i + 1]
                    if ftype == 0:
                        names[bit] = data[i + 2:i + 48].split(b"\0")[0].decode("ascii", "replace")
            pos += 8 + length + (-length % 8)
        return names  # no end marker before the area's end: what was read is all there is

    def _backing_name(self, head: bytes, offset: int, length: int) -> str | None:
        if offset == 0:
            return None
        if length == 0 or length > MAX_BACKING_NAME:
            raise self._error("qcow2.backing", "backing_file_size %d (1 to %d bytes)"
                              % (length, MAX_BACKING_NAME), 16)
        if offset + length > min(self.cluster_size, self._file.size):
            raise self._error("qcow2.backing", "backing file name at 0x%x (%d bytes) is outside "
                              "the header cluster" % (offset, length), 8)
        name = self._file.pread(length, offset)
        if b"\0" in name:
            raise self._error("qcow2.backing", "backing file name holds a NUL byte", offset)
        return os.fsdecode(name)

    def _table(self, offset: int, count: int) -> array:
        """``count`` big-endian u64 at ``offset`` (the caller checked the bounds)."""
        table = array("Q", self._file.pread(8 * count, offset))
        if sys.byteorder == "little":
            table.byteswap()
        return table

    # -- backing chain ---------------------------------------------------------------------

    def _open_backing(self, depth: int) -> None:
        from . import open_source  # the package imports this module lazily

        if self.backing_name is None:
            return
        name = self.backing_name
        path = name if os.path.isabs(name) else os.path.join(os.path.dirname(self.path), name)
        if depth + 1 >= MAX_CHAIN_DEPTH:
            raise self._error("qcow2.backing", "the backing chain is deeper than %d files: %s "
                              "-> %s" % (MAX_CHAIN_DEPTH, " -> ".join(
                                  n for _, n in _OPENING.get()), path))
        if not os.path.exists(path):
            raise self._error("qcow2.backing", "its backing file %r (%s) does not exist"
                              % (name, path))
        fmt = self.backing_format or "auto"
        if fmt == "file":
            fmt = "raw"
        try:
            backing = open_source(path, input_format=fmt, depth=depth + 1)
        except UsageError as exc:  # a format the reader does not offer, a content mismatch
            raise self._error("qcow2.backing", "its backing file %s (format %s) cannot be "
                              "read: %s" % (path, fmt, exc)) from None
        self.files += backing.files
        self.backing = backing
        if backing.sequential:
            raise UnsupportedError("%s: [qcow2.backing] a backing file must be readable by "
                                   "offset, not a stream (%s)" % (self.path, path))

    def check_format(self) -> None:
        """A backing file detected as a format no module reads is refused here (after the
        outputs were checked), as it would be given directly."""
        if self.backing is not None:
            self.backing.check_format()

    # -- L2 entries ------------------------------------------------------------------------

    def _l2_table(self, l1_index: int) -> array | None:
        """The L2 table of L1 entry ``l1_index`` (None: not allocated), through the cache."""
        l2_offset = self.l1[l1_index] & OFFSET_MASK
        if not l2_offset:
            return None
        with self._lock:
            table = self._cache.get(l1_index)
            if table is not None:
                self._cache.move_to_end(l1_index)
                return table
        table = self._table(l2_offset, self.l2_bytes // 8)
        with self._lock:
            self._cache[l1_index] = table
            while len(self._cache) > 2 and len(self._cache) * self.l2_bytes > L2_CACHE_BYTES:
                self._cache.popitem(last=False)
        return table

    def _pieces(self, l1_index: int, table: array, i: int
                ) -> list[tuple[int, int, int, int]]:
        """Guest cluster ``i`` of an L2 table as (start, end, kind, where) relative to the
        cluster: ``where`` is the host offset of ``start`` (DATA) or of the compressed data
        (PACKED).  Checks the entry first."""
        cs = self.cluster_size
        k = i * self.entry_bytes // 8
        entry = table[k]
        at = (self.l1[l1_index] & OFFSET_MASK) + i * self.entry_bytes
        bitmap = table[k + 1] if self.extended_l2 else 0
        if entry & COMPRESSED:
            if entry & COPIED or bitmap:
                raise self._error("qcow2.l2", "compressed cluster entry 0x%016x has the copied "
                                  "flag or a subcluster bitmap set" % entry, at)
            coffset = entry & ((1 << self._coffset_bits) - 1)
            if coffset < cs or coffset >= self._file.size:
                raise self._error("qcow2.compressed", "compressed cluster at 0x%x is in the "
                                  "header cluster or past the end of the file (%d bytes)"
                                  % (coffset, self._file.size), at)
            return [(0, cs, PACKED, entry)]
        reserved = L2_RESERVED | (ZERO_FLAG if self.extended_l2 or self.version == 2 else 0)
        if entry & reserved:
            raise self._error("qcow2.l2", "L2 entry 0x%016x has reserved bits set" % entry, at)
        host = entry & OFFSET_MASK
        if host % cs:
            raise self._error("qcow2.l2", "L2 entry: host offset 0x%x is not cluster-aligned"
                              % host, at)
        if not self.extended_l2:
            if entry & ZERO_FLAG:
                return [(0, cs, ZERO, 0)]
            return [(0, cs, DATA, host)] if host else [(0, cs, HOLE, 0)]
        alloc, zero = bitmap & 0xFFFFFFFF, bitmap >> 32
        if alloc & zero or (alloc and not host):
            raise self._error("qcow2.l2", "subcluster bitmap 0x%016x: a subcluster both "
                              "allocated and zero, or allocated without a host cluster"
                              % bitmap, at + 8)
        sc = cs // SUBCLUSTERS
        pieces: list[tuple[int, int, int, int]] = []
        for j in range(SUBCLUSTERS):
            kind = DATA if alloc >> j & 1 else ZERO if zero >> j & 1 else HOLE
            if pieces and pieces[-1][2] == kind:
                pieces[-1] = (pieces[-1][0], (j + 1) * sc, kind, pieces[-1][3])
            else:
                pieces.append((j * sc, (j + 1) * sc, kind, host + j * sc if kind == DATA else 0))
        return pieces

    def _check_data(self, host: int, length: int, at: int) -> None:
        if host < self.cluster_size or host + length > self._file.size:
            raise self._error("qcow2.cluster", "data cluster at 0x%x (%d bytes) is in the "
                              "header cluster or past the end of the file (%d bytes)"
                              % (host, length, self._file.size), at)

    def _own_extents(self) -> Iterator[Extent]:
        """Guest ranges this file holds data for, cluster-granular, coalesced, in order; every
        L2 entry inside the virtual size is checked on the way."""
        cs, size = self.cluster_size, self.size_bytes
        step = self.entry_bytes // 8
        # A plain data entry (copied flag, an aligned offset whose cluster ends inside the
        # file) is checked with one mask and one comparison; anything else goes the long way.
        plain_bad = (L2_RESERVED | COMPRESSED | ZERO_FLAG | (cs - 1)) if step == 1 else -1
        last_host = self._file.size - cs
        run_start = run_end = -1
        for l1_index in range(self.l1_needed):
            table = self._l2_table(l1_index)
            if table is None:
                continue
            base = l1_index * self.l2_span
            count = min(self.l2_entries, -(-(size - base) // cs))
            for i in range(count):
                entry = table[i * step]
                if not entry and (step == 1 or not table[i * step + 1]):
                    continue  # unallocated, no bitmap: the common case, quickly
                start = base + i * cs
                if not entry & plain_bad and entry & OFFSET_MASK <= last_host:
                    held = True
                else:
                    held = self._entry_holds(l1_index, table, i, min(cs, size - start))
                if not held:
                    continue
                if start != run_end:
                    if run_end > 0:
                        yield run_start, run_end
                    run_start = start
                run_end = min(start + cs, size)
        if run_end > 0:
            yield run_start, run_end

    def _entry_holds(self, l1_index: int, table: array, i: int, used: int) -> bool:
        """Check entry ``i`` (its data inside the file for the ``used`` bytes of the cluster
        the disk covers); True when it holds data (host or compressed)."""
        held = False
        for lo, hi, kind, where in self._pieces(l1_index, table, i):
            if kind == DATA and lo < used:
                self._check_data(where, min(hi, used) - lo,
                                 (self.l1[l1_index] & OFFSET_MASK) + i * self.entry_bytes)
            held = held or kind in (DATA, PACKED)
        return held

    def _chain_extents(self) -> list[Extent]:
        own = self._own_extents()
        if self.backing is None:
            return _bounded(own)
        cs, size = self.cluster_size, self.size_bytes
        # The backing's extents within this disk, widened to this file's clusters so that a
        # compressed cluster is never inflated twice for one pass.
        below = ((s // cs * cs, min(-(-e // cs) * cs, size))
                 for s, e in self.backing.extents if s < size)
        return _bounded(heapq.merge(own, below))

    # -- reading ---------------------------------------------------------------------------

    def _read_extent(self, offset: int, view: memoryview) -> None:
        cs, end = self.cluster_size, offset + len(view)
        run_at = run_host = run_len = 0   # pending DATA run: guest offset, host offset, bytes

        def flush() -> None:
            if run_len:
                self._file.pread_into(view[run_at - offset:run_at - offset + run_len], run_host)

        pos = offset
        while pos < end:
            l1_index = pos // self.l2_span
            stop = min(end, (l1_index + 1) * self.l2_span)
            table = self._l2_table(l1_index)
            if table is None:
                flush()
                run_len = 0
                self._hole(pos, view[pos - offset:stop - offset])
                pos = stop
                continue
            while pos < stop:
                i = (pos - l1_index * self.l2_span) // cs
                cstart = l1_index * self.l2_span + i * cs
                for lo, hi, kind, where in self._pieces(l1_index, table, i):
                    a, b = max(pos, cstart + lo), min(stop, cstart + hi)
                    if a >= b:
                        continue
                    if kind == DATA:
                        host = where + (a - cstart - lo)
                        self._check_data(host, b - a, host)
                        if run_len and run_at + run_len == a and run_host + run_len == host:
                            run_len += b - a
                            continue
                        flush()
                        run_at, run_host, run_len = a, host, b - a
                        continue
                    flush()
                    run_len = 0
                    part = view[a - offset:b - offset]
                    if kind == ZERO:
                        fill_zeros(part)
                    elif kind == HOLE:
                        self._hole(a, part)
                    else:
                        streams = getattr(self._streams, "found", None)
                        if (streams is not None and self.copies_deflate
                                and a == cstart and b == cstart + cs):
                            stream = self._inflate_into(where, part)
                            if len(stream) <= MAX_COPIED_STREAM:
                                streams[a] = stream
                        else:
                            part[:] = self._inflate(where)[a - cstart:b - cstart]
                pos = min(stop, cstart + cs)
        flush()

    def _hole(self, offset: int, view: memoryview) -> None:
        """Guest bytes this file does not hold: the backing file's, zeros past its end."""
        n = len(view)
        if self.backing is not None and offset < self.backing.size_bytes:
            take = min(n, self.backing.size_bytes - offset)
            self._read_backing(offset, view[:take])
            if take < n:
                fill_zeros(view[take:])
        else:
            fill_zeros(view)

    def _read_backing(self, offset: int, view: memoryview) -> None:
        """Read through to the backing file.  While this thread collects deflate streams
        (read_span_deflate), a qcow2 backing file that can give them collects its whole
        compressed clusters into the same dict: a guest offset is the same in every file of
        the chain, so a base image's compressed clusters are copied too, never recompressed."""
        backing = self.backing
        assert backing is not None
        found = getattr(self._streams, "found", None)
        if found is None or not (isinstance(backing, Qcow2Source) and backing.copies_deflate):
            backing.read_into(offset, view)
            return
        backing._streams.found = found
        try:
            backing.read_into(offset, view)
        finally:
            backing._streams.found = None

    def read_span_deflate(self, plan: SpanPlan, buf: bytearray | mmap.mmap
                          ) -> tuple[memoryview, dict[int, memoryview]]:
        """``read_span`` and the raw deflate stream of each grain of the span that is one
        compressed cluster of this file (a dict: grain index in the span -> stream), each
        checked to inflate to exactly the grain's bytes in the view (none unless
        ``copies_deflate``)."""
        self._streams.found = found = {}
        try:
            view = self.read_span(plan, buf)
        finally:
            self._streams.found = None
        base = plan.index * SPAN_BYTES
        return view, {(offset - base) // GRAIN_BYTES: stream
                      for offset, stream in found.items()}

    def _compressed(self, entry: int) -> tuple[int, bytes]:
        """(host offset, bytes) of the compressed cluster an L2 ``entry`` describes (checked
        by _pieces).  Its sector count bounds the read: the sectors after the one holding the
        offset, clipped at the end of the file (the last one may end early)."""
        coffset = entry & ((1 << self._coffset_bits) - 1)
        sectors = (entry >> self._coffset_bits & self._csectors_mask) + 1
        limit = min(sectors * 512 - coffset % 512, self._file.size - coffset)
        return coffset, self._file.pread(limit, coffset)

    def _size_error(self, coffset: int, detail: str) -> FormatError:
        return self._error("qcow2.compressed", "compressed cluster does not inflate to one "
                           "cluster of %d bytes: %s" % (self.cluster_size, detail), coffset)

    def _inflate(self, entry: int) -> bytes:
        """The compressed cluster an L2 ``entry`` describes, inflated: exactly one cluster
        or an error."""
        cs = self.cluster_size
        coffset, data = self._compressed(entry)
        try:
            if self.compression == COMPRESSION_ZSTD:
                reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=False)
                out = reader.read(cs + 1)
            else:  # libdeflate: raw deflate into a cluster-sized buffer; more is an error
                out = deflate.deflate_decompress(data, cs)
        except (zstandard.ZstdError, deflate.DeflateError) as exc:
            raise self._size_error(coffset, "corrupt (%s)" % exc) from None
        if len(out) != cs:
            raise self._size_error(coffset, "it makes %s bytes" % (
                "more than %d" % cs if len(out) > cs else len(out)))
        return out

    def _inflate_into(self, entry: int, cluster: memoryview) -> memoryview:
        """Inflate the deflate cluster of ``entry`` into ``cluster`` (one whole cluster, or
        an error) with the same libdeflate; return its stream: the bytes up to the stream's
        end, which must lie inside its sectors."""
        coffset, data = self._compressed(entry)
        rc, used, made = rawinflate.inflate_into(data, cluster)
        if rc == rawinflate.INSUFFICIENT_SPACE:
            raise self._size_error(coffset, "it makes more than %d bytes" % len(cluster))
        if rc != rawinflate.SUCCESS:
            raise self._size_error(coffset, "corrupt, or its stream does not end inside its "
                                   "%d bytes" % len(data))
        if made != len(cluster):
            raise self._size_error(coffset, "it makes %d bytes" % made)
        return memoryview(data)[:used]


def _bounded(extents: Iterable[Extent]) -> list[Extent]:
    """Sorted, possibly overlapping ranges merged; a span holding more than
    EXTENTS_PER_SPAN of them gets one range from its first start to its last end instead
    (the reads stay exact: holes inside are still known from the L2 tables), so the list is
    at most a few entries per 32 MiB span whatever the image's pattern."""
    out: list[Extent] = []
    span, in_span = -1, 0
    for start, end in extents:
        if out and start <= out[-1][1]:
            if end > out[-1][1]:
                out[-1] = (out[-1][0], end)
            continue
        if start // SPAN_BYTES != span:
            span, in_span = start // SPAN_BYTES, 0
        in_span += 1
        if in_span > EXTENTS_PER_SPAN and (out[-1][1] - 1) // SPAN_BYTES == span:
            out[-1] = (out[-1][0], end)  # swallow the gap: the span collapses
            continue
        out.append((start, end))
    return out
