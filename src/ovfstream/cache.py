"""Span cache: the framed grains of each 4 MiB piece of a span, kept on disk, keyed by its
raw bytes.

A nightly rebuild of an image in which a few MiB changed compresses only the pieces that
changed: every span is still read and hashed, and a piece whose key is in the cache takes
its framed bytes from there instead of from the engine.  A hit gives the bytes a cold build
gives, so the output is the same either way.

The unit is a chunk of CHUNK_GRAINS grains (4 MiB), not the whole 32 MiB span: a change of
1 MiB then costs 4 MiB of compression, not 32 (measured on the OS image with 4 MiB changed
in 1 MiB pieces: 0.36 s of CPU spent on misses with span entries, 0.05 s with chunks).  A
span's framed bytes are its chunks' framed bytes one after the other (grains are
independent and in LBA order), so chunks from the cache and chunks from the engine are
placed side by side in the span's buffer.

Key: xxh3-128 over everything that shapes the framed bytes -- the framing version below, the
engine's name, version string and level, the chunk's grain count -- and the chunk's raw
bytes.  The position of the chunk is not part of it: entries hold grain-marker LBAs and
content-id fingerprints *relative to the chunk*, and a hit adds the chunk's first LBA back,
so a chunk that moved (a file system that grew) still hits.  Only engines whose bytes are the
same on every run and CPU use the cache (Engine.reproducible): with the others a cached span
could differ from what this machine would compute.

An entry file (``DIR/chunks-v2/ab/cdef....span``) is a header, the framed chunk, its grain
table (1 + sector within the chunk, or 0), the fingerprints, then an xxh3-128 of all of it.
It is written under a temporary name and renamed (atomic.py), so readers never see half an
entry, and processes may share one folder.  Anything that does not check out -- truncated,
zeroed, a flipped byte, a header whose sizes do not fit, a grain table that points outside
the chunk or at a marker of another grain -- is a miss: the chunk is compressed again and
the entry replaced.  A hit touches the entry's mtime; ``prune`` deletes the least recently used
entries until the folder fits its cap.

The key is a fast hash, not a cryptographic one: a cache folder is trusted like the build
machine's own files (whoever can write it can change packages built from it).
"""

from __future__ import annotations

import contextlib
import os
import re
import struct
import threading
import time
from array import array
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator

import xxhash

from .atomic import TEMP_SUFFIX, atomic_output
from .engine import CORE
from .errors import UsageError
from .vmdk import layout as L

if TYPE_CHECKING:
    from .sources.base import DiskSource, SpanPlan

__all__ = ["SpanCache", "CacheSession", "FRAMING_VERSION", "open_cache"]

# Bump when the framed bytes of a span change for the same engine output (marker layout,
# padding, the grain table's meaning): old entries then simply stop matching.
FRAMING_VERSION = 2  # 2: entries hold 4 MiB chunks (1: whole spans, in spans-v1/)
CHUNK_GRAINS = 64
_MAGIC = b"OVFSPAN2"
# magic, key, framing version, n_grains, framed bytes, grain-table bytes, print bytes, payload
_HEAD = struct.Struct("<8s16sIIQIIQ")
_DIGEST_BYTES = 16
# The engine's buffers are sized by the same per-grain bound (L.MAX_FRAMED_GRAIN), so chunks
# placed one after another never outgrow a span buffer.
_MAX_FRAMED = CHUNK_GRAINS * L.MAX_FRAMED_GRAIN
_MAX_ENTRY = _HEAD.size + _MAX_FRAMED + 4 * CHUNK_GRAINS + 16 * CHUNK_GRAINS + _DIGEST_BYTES
_SUBDIR = "chunks-v2"
_KEY_PIECE = 256 << 10  # encode_from hashes a chunk from reads of this size
# Folders of earlier framing versions: nothing in them can hit again; prune empties them.
_OLD_SUBDIRS = ("spans-v1",)
_ENTRY_RE = re.compile(r"^[0-9a-f]{30}\.span$")
# A temporary older than this belongs to a process that died mid-write.
_STALE_TEMP_SECONDS = 3600

# (bytes used, gt_rel, prints, payload bytes): what an encoder framing into a given buffer
# returns; it is called as compress_into(out, raw, first_lba, n_grains)
Encoded = tuple[int, bytes, bytes, int]
CompressInto = Callable[[memoryview, memoryview, int, int], Encoded]


def _read_fully(fd: int, views: list[memoryview], offset: int) -> bool:
    """Fill ``views`` from ``offset`` on; False at an early end of file."""
    want = sum(v.nbytes for v in views)
    got = 0
    while got < want:
        rest, skip = [], got
        for v in views:
            if skip >= v.nbytes:
                skip -= v.nbytes
                continue
            rest.append(v[skip:])
            skip = 0
        n = os.preadv(fd, rest, offset + got)
        if n == 0:
            return False
        got += n
    return True


@dataclass(frozen=True)
class _Entry:
    framed: memoryview  # where load put the framed bytes; LBAs relative to the chunk
    gt_rel: bytes
    prints: memoryview  # LBAs relative to the chunk (writable)
    payload: int


class SpanCache:
    """A cache folder (created if missing); ``max_bytes`` caps it after each run (LRU)."""

    def __init__(self, root: str | os.PathLike[str], *, max_bytes: int | None = None) -> None:
        self.root = os.fspath(root)
        if max_bytes is not None and max_bytes < 0:
            raise UsageError("--cache-max %d: allowed 0 or more bytes" % max_bytes)
        self.max_bytes = max_bytes
        self._dir = os.path.join(self.root, _SUBDIR)
        try:
            os.makedirs(self._dir, exist_ok=True)
        except FileExistsError:
            raise UsageError("--cache %s: exists and is not a folder" % self.root) from None
        except NotADirectoryError:
            raise UsageError("--cache %s: a part of the path is not a folder" % self.root
                             ) from None
        if not os.path.isdir(self._dir):
            raise UsageError("--cache %s: exists and is not a folder" % self.root)

    def __repr__(self) -> str:
        return "SpanCache(%r, max_bytes=%r)" % (self.root, self.max_bytes)

    def __reduce__(self) -> tuple[object, ...]:  # sent to remote workers by path
        return (_reopen, (self.root, self.max_bytes))

    def path_for(self, key: bytes) -> str:
        text = key.hex()
        return os.path.join(self._dir, text[:2], text[2:] + ".span")

    def session(self, engine: object) -> "CacheSession":
        """The cache as one engine setting sees it, with counters for one run."""
        return CacheSession(self, engine)

    # -- entries ---------------------------------------------------------------------------

    def load(self, key: bytes, n_grains: int, into: memoryview | None = None
             ) -> _Entry | None:
        """The entry for ``key`` if it exists and checks out, else None.  The framed bytes
        are read to the start of ``into`` (the span's framed buffer, at the chunk's place:
        no copy afterwards), else of a new bytearray; an entry longer than ``into`` is a
        miss."""
        path = self.path_for(key)
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            size = os.fstat(fd).st_size
            if not _HEAD.size + _DIGEST_BYTES <= size <= _MAX_ENTRY:
                return None
            head = os.pread(fd, _HEAD.size, 0)
            if len(head) != _HEAD.size:
                return None
            magic, stored_key, version, grains, n_framed, n_gt, n_prints, payload = \
                _HEAD.unpack(head)
            if (magic != _MAGIC or stored_key != key or version != FRAMING_VERSION
                    or grains != n_grains or n_framed > n_grains * L.MAX_FRAMED_GRAIN
                    or n_framed % L.SECTOR or n_gt != 4 * n_grains
                    or n_prints > 16 * n_grains or n_prints % 16
                    or _HEAD.size + n_framed + n_gt + n_prints + _DIGEST_BYTES != size
                    or (into is not None and n_framed > into.nbytes)):
                return None
            framed = (into if into is not None else memoryview(bytearray(n_framed)))[:n_framed]
            tail = bytearray(n_gt + n_prints + _DIGEST_BYTES)
            if not _read_fully(fd, [framed, memoryview(tail)], _HEAD.size):
                return None
        except OSError:
            return None
        finally:
            os.close(fd)
        digest = xxhash.xxh3_128(head)
        digest.update(framed)
        digest.update(memoryview(tail)[:-_DIGEST_BYTES])
        if digest.digest() != bytes(tail[-_DIGEST_BYTES:]):
            return None
        return _Entry(framed, bytes(tail[:n_gt]), memoryview(tail)[n_gt:n_gt + n_prints],
                      payload)

    def store(self, key: bytes, n_grains: int, framed: bytes | bytearray, gt_rel: bytes,
              prints: bytes | bytearray, payload: int) -> None:
        """Write an entry (LBAs already relative) under a temporary name, then rename."""
        path = self.path_for(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        head = _HEAD.pack(_MAGIC, key, FRAMING_VERSION, n_grains, len(framed), len(gt_rel),
                          len(prints), payload)
        digest = xxhash.xxh3_128()
        for part in (head, framed, gt_rel, prints):
            digest.update(part)
        # No fsync: an entry lost or zeroed by a crash is caught by its digest and rewritten.
        with atomic_output(path, fsync=False) as f:
            for part in (head, framed, gt_rel, prints, digest.digest()):
                f.write(part)

    def touch(self, key: bytes) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.path_for(key))  # LRU: a hit is a use

    # -- the folder as a whole -------------------------------------------------------------

    def _scan(self) -> Iterator[tuple[str, os.stat_result, str]]:
        """(path, stat, kind) of every file the folder holds: kind is "entry", "temporary"
        (a write under way or abandoned), or "old" (left by an earlier framing version:
        it can never hit again)."""
        for sub in (_SUBDIR, *_OLD_SUBDIRS):
            current = sub == _SUBDIR
            try:
                shards = sorted(os.scandir(os.path.join(self.root, sub)), key=lambda e: e.name)
            except OSError:
                continue
            for shard in shards:
                if not shard.is_dir(follow_symlinks=False):
                    continue
                try:
                    names = list(os.scandir(shard.path))
                except OSError:
                    continue
                for entry in names:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if not current:
                        yield entry.path, st, "old"
                    elif _ENTRY_RE.match(entry.name):
                        yield entry.path, st, "entry"
                    elif entry.name.endswith(TEMP_SUFFIX):
                        yield entry.path, st, "temporary"

    def stats(self) -> dict[str, object]:
        entries = [(st.st_mtime, st.st_size) for _, st, kind in self._scan() if kind == "entry"]
        times = [t for t, _ in entries]
        return {"cache": self.root, "entries": len(entries),
                "bytes": sum(s for _, s in entries), "max_bytes": self.max_bytes,
                "oldest_use": min(times) if times else None,
                "newest_use": max(times) if times else None}

    def prune(self, max_bytes: int | None = None) -> dict[str, object]:
        """Delete least recently used entries until the folder holds at most ``max_bytes``
        (default: the cap given at construction; None: only stale temporaries and what earlier
        framing versions left go)."""
        cap = self.max_bytes if max_bytes is None else max_bytes
        now = time.time()
        entries: list[tuple[float, int, str]] = []
        removed = freed = 0
        for path, st, kind in self._scan():
            if kind == "entry":
                entries.append((st.st_mtime, st.st_size, path))
            elif kind == "old" or now - st.st_mtime > _STALE_TEMP_SECONDS:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        total = sum(size for _, size, _ in entries)
        if cap is not None:
            entries.sort()
            for _, size, path in entries:
                if total <= cap:
                    break
                try:
                    os.unlink(path)
                except FileNotFoundError:  # another process pruned it first
                    pass
                except OSError:
                    continue
                total -= size
                removed += 1
                freed += size
        return {"cache": self.root, "removed": removed, "freed_bytes": freed,
                "entries": len(entries) - removed, "bytes": total, "max_bytes": cap}


def _reopen(root: str, max_bytes: int | None) -> SpanCache:
    return SpanCache(root, max_bytes=max_bytes)


def open_cache(cache: "SpanCache | str | os.PathLike[str] | None",
               max_bytes: int | None = None) -> SpanCache | None:
    """The API's ``cache=`` argument (a folder or a SpanCache) as a SpanCache, or None."""
    if cache is None or isinstance(cache, SpanCache):
        if cache is not None and max_bytes is not None:
            cache.max_bytes = max_bytes
        return cache
    return SpanCache(cache, max_bytes=max_bytes)


class CacheSession:
    """One run's use of the cache with one engine setting: lookups, stores and counters."""

    def __init__(self, cache: SpanCache, engine: object) -> None:
        self.cache = cache
        name, level, version = engine.name, engine.level, engine.version  # type: ignore[attr-defined]
        self.enabled = bool(engine.reproducible)  # type: ignore[attr-defined]
        self.why_not = None if self.enabled else (
            "engine %s level %s does not give the same bytes on every run and CPU" % (name, level))
        self._prefix = ("ovfstream span cache\0%d\0%s\0%s\0%d\0"
                        % (FRAMING_VERSION, name, version, level)).encode()
        self._lock = threading.Lock()
        self._local = threading.local()  # each worker thread's key-read buffer
        self.hits = self.misses = self.stored = self.store_errors = 0

    def _hasher(self, n_grains: int) -> Any:
        """The key's hash, fed with the settings; the chunk's raw bytes follow."""
        return xxhash.xxh3_128(self._prefix + struct.pack("<I", n_grains))

    def key(self, view: memoryview, n_grains: int) -> bytes:
        hasher = self._hasher(n_grains)
        hasher.update(view)
        return hasher.digest()

    def encode_into(self, out: memoryview, view: memoryview, first_lba: int, n_grains: int,
                    compress_into: CompressInto) -> Encoded:
        """``compress_into(out, view, first_lba, n_grains)``'s result, chunk by chunk from the
        cache where it has them: each chunk's framed bytes go to ``out`` right after the
        previous chunk's, whether read from an entry or framed by the engine there."""
        if not self.enabled:
            return compress_into(out, view, first_lba, n_grains)

        def chunk(start: int, n: int) -> tuple[bytes, Callable[[], tuple[memoryview, bytes]]]:
            raw = view[start * L.GRAIN_BYTES:(start + n) * L.GRAIN_BYTES]
            key = self.key(raw, n)
            return key, lambda: (raw, key)
        return self._encode_chunks(out, first_lba, n_grains, chunk, compress_into)

    def encode_from(self, source: DiskSource, plan: SpanPlan, buf: Any, out: memoryview,
                    compress_into: CompressInto) -> Encoded:
        """encode_into for a span of a random-access ``source``, reading what a hit needs
        only: a chunk's key is hashed from small pieces read into a buffer that stays in the
        CPU cache (measured on the OS image's 1.4 GB, two threads: 0.08 s against 0.15 s
        for 32 MiB reads into the span buffer, and that much less memory traffic beside
        the writer's), and a chunk is read whole into ``buf`` only for the engine, on a
        miss -- its key taken again from that read, so an entry holds what was compressed.
        A chunk outside the plan's extents is zeros: it frames to nothing."""
        first_lba = plan.index * L.SPAN_GRAINS * L.GRAIN_SECTORS
        if not self.enabled:
            return compress_into(out, source.read_span(plan, buf), first_lba, plan.n_grains)
        base = plan.index * L.SPAN_BYTES
        piece = getattr(self._local, "piece", None)
        if piece is None:
            piece = self._local.piece = memoryview(bytearray(_KEY_PIECE))

        def chunk(start: int, n: int) -> tuple[bytes, Callable[[], tuple[memoryview, bytes]]] | None:
            lo, hi = start * L.GRAIN_BYTES, (start + n) * L.GRAIN_BYTES
            if not any(s < hi and lo < e for s, e in plan.extents):
                return None
            hasher = self._hasher(n)
            for at in range(lo, hi, _KEY_PIECE):
                part = piece[:min(_KEY_PIECE, hi - at)]
                source.read_into(base + at, part)
                hasher.update(part)

            def whole() -> tuple[memoryview, bytes]:
                raw = memoryview(buf)[lo:hi]
                source.read_into(base + lo, raw)
                return raw, self.key(raw, n)
            return hasher.digest(), whole
        return self._encode_chunks(out, first_lba, plan.n_grains, chunk, compress_into)

    def _encode_chunks(self, out: memoryview, first_lba: int, n_grains: int,
                       chunk: Callable[[int, int], tuple[bytes, Callable[[], tuple[
                           memoryview, bytes]]] | None],
                       compress_into: CompressInto) -> Encoded:
        """The chunk loop of encode_into/encode_from: ``chunk(start, n)`` gives the key of
        the chunk of ``n`` grains from grain ``start`` and how to get its raw bytes and the
        key to keep them under, for the engine (None: zeros, nothing to frame)."""
        pos = payload = 0
        table = array("I")
        prints = bytearray()
        hits = misses = stored = 0
        for start in range(0, n_grains, CHUNK_GRAINS):
            n = min(CHUNK_GRAINS, n_grains - start)
            lba = first_lba + start * L.GRAIN_SECTORS
            keyed = chunk(start, n)
            if keyed is None:
                table.frombytes(bytes(4 * n))  # no grain of it in the table
                continue
            key, raw_of = keyed
            dest = out[pos:]
            entry = self.cache.load(key, n, dest)
            if entry is not None and CORE.shift_grain_lbas(entry.framed, entry.gt_rel,
                                                           entry.prints, lba, n):
                self.cache.touch(key)
                hits += 1
                used, gt_rel, chunk_prints, chunk_payload = (
                    entry.framed.nbytes, entry.gt_rel, entry.prints, entry.payload)
            else:  # absent or bad (a bad one is replaced here)
                raw, store_key = raw_of()
                used, gt_rel, chunk_prints, chunk_payload = compress_into(dest, raw, lba, n)
                if used:  # a chunk of zero grains frames to nothing: no entry, no miss
                    misses += 1
                    stored += self._store(store_key, n, dest[:used], gt_rel, chunk_prints,
                                          chunk_payload, lba)
            chunk_table = array("I")
            chunk_table.frombytes(gt_rel)
            shift = pos // L.SECTOR  # entries are 1 + sector within the chunk, or 0
            table.extend(rel + shift if rel else 0 for rel in chunk_table)
            prints += chunk_prints
            payload += chunk_payload
            pos += used
        with self._lock:
            self.hits += hits
            self.misses += misses
            self.stored += stored
            self.store_errors += misses - stored
        return pos, table.tobytes(), bytes(prints), payload

    def _store(self, key: bytes, n_grains: int, framed: memoryview, gt_rel: bytes,
               prints: bytes, payload: int, first_lba: int) -> bool:
        """Keep a chunk the engine framed at ``first_lba``; False if it could not be kept."""
        rel_framed, rel_prints = bytearray(framed), bytearray(prints)
        if not CORE.shift_grain_lbas(rel_framed, gt_rel, rel_prints, -first_lba, n_grains):
            return False
        try:
            self.cache.store(key, n_grains, rel_framed, gt_rel, rel_prints, payload)
        except OSError:  # a full or read-only cache slows the build, never fails it
            return False
        return True

    def describe(self) -> dict[str, object]:
        return {"folder": self.cache.root, "used": self.enabled, "why_not": self.why_not,
                "chunk_bytes": CHUNK_GRAINS * L.GRAIN_BYTES,
                "hits": self.hits, "misses": self.misses, "stored": self.stored,
                "store_errors": self.store_errors}
