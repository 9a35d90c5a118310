"""Same bytes under load (issue 7, section 2).

The cause found: ISA-L 2.x levels 1 and 2 hash the third byte of every new deflate stream
from the address of the stream state instead of from the data (see _grains.IsalStream), so
the compressed bytes -- never the data they inflate to -- followed the heap: which thread
and arena malloc'ed the state.  The first tests pin the mechanism (and skip, saying so, on
an ISA-L that no longer does it); the rest are the stress the issue asked for.

Output may depend only on the input bytes and the settings: never on the worker count,
scheduling, the heap's history or what else runs on the machine.  These tests repeat the
same encodes across threads while other threads allocate, fill and free memory of the sizes
the encoder itself allocates (so that recycled, dirty memory reaches it), and while other
processes keep both CPUs busy with vector-heavy compression, and require one result.

They are bounded by a count of encodes, not by time, and each takes a few seconds.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest
from isal import isal_zlib

from ovfstream import _grains, grains_py
from ovfstream.convert import convert
from ovfstream.engine import get_engine

from ovfs_testlib import write_disk

GRAIN = 65536
# The compiled core itself (not run when OVFSTREAM_PURE=1 selects the twin).
pytestmark = pytest.mark.native_core
_LOAD = ("import os, sys\n"
         "from isal import isal_zlib\n"
         "data = os.urandom(1 << 20) + bytes(range(256)) * 4096\n"
         "for _ in range(int(sys.argv[1])):\n"
         "    isal_zlib.compress(data, 1)\n")


def _mixed_span(n_grains: int, seed: int) -> bytes:
    """Text, random runs over zeros, short repeats and small alphabets: the data whose
    compressed bytes are most sensitive to the matcher's choices."""
    rng = random.Random(seed)
    words = [rng.randbytes(rng.randint(1, 10)).hex().encode() for _ in range(400)]
    out = bytearray()
    for i in range(n_grains):
        kind = i % 5
        if kind == 0:
            grain = b" ".join(rng.choice(words) for _ in range(14000))[:GRAIN].ljust(GRAIN, b".")
        elif kind == 1:
            grain = bytearray(GRAIN)
            for _ in range(30):
                at, n = rng.randrange(GRAIN), rng.randint(1, 4000)
                grain[at:at + n] = rng.randbytes(min(n, GRAIN - at))
        elif kind == 2:
            unit = rng.randbytes(rng.randint(50, 900))
            grain = (unit * (GRAIN // len(unit) + 1))[:GRAIN]
        elif kind == 3:
            grain = bytes(rng.choices(b"ACGT", k=GRAIN))
        else:
            grain = bytes(GRAIN)  # a zero grain: skipped
        assert len(grain) == GRAIN
        out += grain
    return bytes(out)


class _Churn:
    """Threads that allocate, dirty and free buffers of the encoder's own sizes."""

    SIZES = (65536, 70000, 262_208, 282_624, 1 << 20, 34_340_864)

    def __init__(self, n_threads: int) -> None:
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(n_threads)]

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        kept: list[bytearray] = []
        while not self.stop.is_set():
            buf = bytearray(rng.choice(self.SIZES))
            buf[::4096] = bytes([rng.randrange(1, 256)]) * len(buf[::4096])
            kept.append(buf)
            if len(kept) > 12:
                kept.pop(rng.randrange(len(kept)))

    def __enter__(self) -> "_Churn":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


class _CpuLoad:
    """Processes that keep every CPU busy with ISA-L (vector registers in use) meanwhile."""

    def __init__(self, n_procs: int, rounds: int = 400) -> None:
        self.cmd = [sys.executable, "-c", _LOAD, str(rounds)]
        self.n = n_procs
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> "_CpuLoad":
        self.procs = [subprocess.Popen(self.cmd) for _ in range(self.n)]
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def _probe_grain() -> bytes:
    """A compressible grain whose bytes show where ISA-L put its third byte: bytes 0..7
    recur at 9, and a third byte filed in the bucket of bytes 0..3 overwrites the entry
    that finds them (a literal and a shorter match instead of one match)."""
    rng = random.Random(17)
    grain = bytearray(rng.choices(b"ACGT", k=GRAIN))
    grain[0:17] = b"QRSTUVWX" + b"Z" + b"QRSTUVWX"
    return bytes(grain)


def _data_bucket(grain: bytes, at: int, mask: int) -> int:
    """ISA-L's bucket for the 4 bytes at ``at``: CRC-32C of them, masked."""
    return _grains.stream_bucket(int.from_bytes(grain[at:at + 4], "little") << 16, mask)


@pytest.mark.parametrize("level,mask", [(1, 8191), (2, 32767)])
def test_isal_bytes_follow_the_stream_address(level, mask):
    encoder = get_engine("isal", level).span_encoder
    grain = _probe_grain()
    colliding = _data_bucket(grain, 0, mask)
    assert colliding != 0
    hit = encoder.compress_grain(grain, encoder.new_stream(colliding))
    ours = encoder.compress_grain(grain, encoder.new_stream())  # bucket 0
    elsewhere = encoder.compress_grain(grain, encoder.new_stream(_data_bucket(grain, 5, mask)))
    assert zlib.decompress(hit) == zlib.decompress(ours) == grain
    if hit == ours:
        pytest.skip("this ISA-L build no longer reads the stream's address (fixed upstream?)")
    # Only a state whose address collides with the data's bucket changes the bytes: the
    # heap decided, before every state was placed in bucket 0.
    assert len(hit) == len(ours) + 1 and ours == elsewhere


def test_every_stream_state_lies_in_one_bucket():
    encoder = get_engine("isal", 1).span_encoder
    grain = _probe_grain()
    streams = []
    results: set[bytes] = set()
    lock = threading.Lock()

    def work() -> None:
        stream = encoder.new_stream()
        out = encoder.compress_grain(grain, stream)
        with lock:
            streams.append(stream)
            results.add(out)

    # Threads, and states made while other allocations come and go, land anywhere in the
    # address space -- and always in bucket 0.
    with _Churn(2):
        threads = [threading.Thread(target=work) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len({s.address for s in streams}) == 16
    assert {_grains.stream_bucket(s.address, 8191) for s in streams} == {0}
    assert {s.address % 65536 for s in streams} == {0}
    assert len(results) == 1
    # The engine's per-grain callable is the same path.
    assert get_engine("isal", 1).compress(grain) in results


def _digest(framed: bytes | bytearray | memoryview, gt_rel: bytes, prints: bytes) -> str:
    return hashlib.sha256(bytes(framed) + gt_rel + prints).hexdigest()


def _run_threads(fn, n_threads: int, per_thread: int) -> list[str]:
    results: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work() -> None:
        try:
            for _ in range(per_thread):
                digest = fn()
                with lock:
                    results.append(digest)
        except BaseException as exc:  # re-raised on the test's thread below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("level", [1, 2])
def test_native_span_encodes_agree_across_threads_under_churn_and_load(level):
    encoder = get_engine("isal", level).span_encoder
    assert encoder is not None, get_engine("isal", level).native_unavailable
    span = _mixed_span(160, seed=level)
    reference = _digest(*encoder.encode_span(span, 0, 160)[:3])

    def once() -> str:
        framed, gt_rel, prints, _ = encoder.encode_span(span, 0, 160)
        return _digest(framed, gt_rel, prints)

    with _CpuLoad(2), _Churn(3):
        results = _run_threads(once, n_threads=4, per_thread=12)
    assert len(results) == 48
    assert set(results) == {reference}


def test_callable_path_agrees_with_native_under_churn_and_load():
    engine = get_engine("isal", 1)
    span = _mixed_span(80, seed=9)
    native = _digest(*engine.span_encoder.encode_span(span, 0, 80)[:3])

    def once() -> str:
        framed, gt_rel, prints, _ = grains_py.encode_span(
            span, 0, 80, engine.compress, __import__("xxhash").xxh3_64_intdigest)
        return _digest(framed, gt_rel, prints)

    with _CpuLoad(2), _Churn(2):
        results = _run_threads(once, n_threads=3, per_thread=6)
    assert set(results) == {native}


def test_grain_bytes_do_not_depend_on_the_heap(monkeypatch):
    # The same grain compressed right after grains of other content, with the allocator's
    # free lists full of dirty buffers of the stream's sizes, gives the same bytes.
    span = _mixed_span(40, seed=3)
    grains = [span[i * GRAIN:(i + 1) * GRAIN] for i in range(40) if any(span[i * GRAIN:(i + 1) * GRAIN])]
    encoder = get_engine("isal", 1).span_encoder
    reference = [encoder.compress_grain(g) for g in grains]
    rng = random.Random(5)
    for _ in range(200):
        dirty = [bytearray(os.urandom(16)) * (n // 16) for n in (262_208, 282_624)]
        del dirty
        k = rng.randrange(len(grains))
        encoder.compress_grain(grains[rng.randrange(len(grains))])
        assert encoder.compress_grain(grains[k]) == reference[k]
        assert isal_zlib.compress(grains[k], 1) == reference[k]


def test_convert_gives_one_digest_for_every_worker_count_under_load(tmp_path: Path):
    mib = 1 << 20
    raw = write_disk(tmp_path / "mixed.raw", 96 * mib + 4321, [
        (0, "text", 9 * mib + 777), (12 * mib, "random", 3 * mib), (20 * mib, "zero", 4 * mib),
        (33 * mib - 100, "text", 20 * mib), (70 * mib, "random", 5 * mib + 3),
        (96 * mib - 50, "text", 4371)], seed=11)
    digests = set()
    with _CpuLoad(2, rounds=2000), _Churn(1):
        for run, workers in enumerate((1, 2, 3, 4, 2, 3, 4, 2)):
            out = tmp_path / "out.vmdk"
            convert(raw, out, parallel=workers, fsync=False)
            digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
            out.unlink()
    assert len(digests) == 1
