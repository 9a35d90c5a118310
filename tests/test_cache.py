"""Span cache (cache.py): hits give the cold build's bytes; bad entries are misses and get
rewritten; processes share a folder; the size cap prunes least recently used first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ovfstream
from ovfstream import cli
from ovfstream.cache import SpanCache

from ovfs_testlib import MIB, make_cache_entry_lie, write_disk

# ISA-L's bytes are reproducible (cacheable, the same in every process) only with the
# compiled core's stream placement: not run when OVFSTREAM_PURE=1 selects the twin.
pytestmark = pytest.mark.native_core

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(autouse=True)
def _epoch(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1")


def _pack(raw: Path, out: Path, **kw) -> tuple[bytes, dict | None]:
    out.parent.mkdir(parents=True, exist_ok=True)
    result = ovfstream.pack([raw], out, fsync=False, **kw)
    return out.read_bytes(), result.disks[0].stats.cache


def _entries(cache: Path) -> list[Path]:
    return sorted(cache.glob("chunks-v2/*/*.span"))


@pytest.mark.parametrize("engine", ["isal", "zlib"])
@pytest.mark.parametrize("parallel", [1, 2])
def test_warm_build_is_the_cold_build(make_disk, tmp_path, engine, parallel):
    raw = make_disk("mixed")
    cold, info = _pack(raw, tmp_path / "cold" / "a.ova", engine=engine, parallel=parallel)
    assert info is None
    cache = tmp_path / "cache"
    first, info = _pack(raw, tmp_path / "first" / "a.ova", engine=engine, parallel=parallel,
                        cache=cache)
    assert first == cold and info["misses"] == 4 and info["stored"] == 4 and info["hits"] == 0
    warm, info = _pack(raw, tmp_path / "warm" / "a.ova", engine=engine, parallel=parallel,
                       cache=cache)
    assert warm == cold and info["hits"] == 4 and info["misses"] == 0
    other = 3 - parallel  # entries written at one worker count serve the other
    again, _ = _pack(raw, tmp_path / "other" / "a.ova", engine=engine, parallel=other,
                     cache=cache)
    assert again == cold


def test_convert_uses_the_cache_and_reports_it(make_disk, tmp_path):
    raw = make_disk("mixed")
    outs = [tmp_path / d / "a.vmdk" for d in ("cold", "first", "warm")]
    for out in outs:
        out.parent.mkdir()
    cold = ovfstream.convert(raw, outs[0], fsync=False)
    ovfstream.convert(raw, outs[1], fsync=False, cache=tmp_path / "c")
    warm = ovfstream.convert(raw, outs[2], fsync=False, cache=tmp_path / "c")
    assert warm.stats.cache["hits"] == 4
    assert warm.as_dict()["cache"]["hits"] == 4 and "cache" not in cold.as_dict()
    assert outs[0].read_bytes() == outs[1].read_bytes() == outs[2].read_bytes()
    assert warm.stats.content_id == cold.stats.content_id


def test_a_span_that_moved_still_hits(tmp_path):
    # The same 2 MiB at span 0 of one disk and at span 2 (other LBAs) of another.
    a = write_disk(tmp_path / "a.raw", 100 * MIB, [(MIB, "text", 2 * MIB)], seed=5)
    b = write_disk(tmp_path / "b.raw", 100 * MIB, [(64 * MIB + MIB, "text", 2 * MIB)], seed=5)
    cold, _ = _pack(b, tmp_path / "cold" / "x.ova", engine="zlib")
    _pack(a, tmp_path / "warm-a" / "x.ova", engine="zlib", cache=tmp_path / "c")
    warm, info = _pack(b, tmp_path / "warm-b" / "x.ova", engine="zlib", cache=tmp_path / "c")
    assert info["hits"] == 1 and warm == cold


def test_a_change_recompresses_only_its_chunk(tmp_path):
    """One span of data, one byte changed: the other chunks of the span still hit, and the
    span (cached chunks beside a fresh one) is the cold build's."""
    from ovfstream.cache import CHUNK_GRAINS
    chunk = CHUNK_GRAINS * 64 * 1024
    raw = write_disk(tmp_path / "a.raw", 40 * MIB, [(0, "text", 32 * MIB)], seed=9)
    cache = tmp_path / "c"
    _, info = _pack(raw, tmp_path / "first" / "x.ova", cache=cache)
    assert info["misses"] == 32 * MIB // chunk and info["hits"] == 0
    with open(raw, "r+b") as f:  # one byte in the fourth chunk
        f.seek(3 * chunk + 12345)
        f.write(b"\xff")
    cold, _ = _pack(raw, tmp_path / "cold" / "x.ova")
    warm, info = _pack(raw, tmp_path / "warm" / "x.ova", cache=cache, parallel=2)
    assert warm == cold
    assert info["misses"] == 1 and info["hits"] == 32 * MIB // chunk - 1
    assert info["chunk_bytes"] == chunk


def test_prune_clears_what_earlier_framing_versions_left(tmp_path):
    old = tmp_path / "c" / "spans-v1" / "ab"
    old.mkdir(parents=True)
    (old / ("0" * 30 + ".span")).write_bytes(b"x" * 1000)
    cache = SpanCache(tmp_path / "c")
    report = cache.prune()
    assert not list(old.iterdir()) and report["entries"] == 0


@pytest.mark.parametrize("damage", ["flip", "truncate", "zero", "header", "empty"])
def test_a_bad_entry_is_a_miss_and_is_replaced(make_disk, tmp_path, damage):
    raw = make_disk("mixed")
    cold, _ = _pack(raw, tmp_path / "cold" / "a.ova")
    cache = tmp_path / "c"
    _pack(raw, tmp_path / "warm" / "a.ova", cache=cache)
    victim = max(_entries(cache), key=lambda p: p.stat().st_size)
    good = victim.read_bytes()
    data = bytearray(good)
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "truncate":
        data = data[:len(data) - 1000]
    elif damage == "zero":
        data = bytearray(len(data))
    elif damage == "header":
        data[40:48] = (10 ** 12).to_bytes(8, "little")  # a framed size past any span
    else:
        data = bytearray()
    victim.write_bytes(bytes(data))
    again, info = _pack(raw, tmp_path / "again" / "a.ova", cache=cache)
    assert again == cold
    assert info["hits"] == 3 and info["misses"] == 1 and info["stored"] == 1
    assert victim.read_bytes() == good  # replaced by a good entry


def test_an_entry_that_checks_out_but_lies_about_its_grains_is_refused(make_disk, tmp_path):
    """A well-digested entry whose grain table points at another grain's marker (a writer
    bug or a hand-made file) is never copied into a package."""
    raw = make_disk("mixed")
    cold, _ = _pack(raw, tmp_path / "cold" / "a.ova")
    cache = tmp_path / "c"
    _pack(raw, tmp_path / "warm" / "a.ova", cache=cache)
    make_cache_entry_lie(cache)
    again, info = _pack(raw, tmp_path / "again" / "a.ova", cache=cache)
    assert again == cold and info["misses"] == 1


def test_two_processes_share_one_cache(make_disk, tmp_path):
    raw = make_disk("mixed")
    cold, _ = _pack(raw, tmp_path / "cold" / "a.ova")
    cache = tmp_path / "c"
    code = ("import sys, ovfstream; ovfstream.pack([sys.argv[1]], sys.argv[2], parallel=2, "
            "fsync=False, cache=sys.argv[3])")
    env = {**os.environ, "PYTHONPATH": str(SRC), "SOURCE_DATE_EPOCH": "1"}
    outs = [tmp_path / ("p%d" % i) / "a.ova" for i in range(2)]
    procs = []
    for out in outs:
        out.parent.mkdir()
        procs.append(subprocess.Popen([sys.executable, "-c", code, str(raw), str(out),
                                       str(cache)], env=env))
    for p in procs:
        assert p.wait(timeout=60) == 0
    assert all(out.read_bytes() == cold for out in outs)
    warm, info = _pack(raw, tmp_path / "warm" / "a.ova", cache=cache)
    assert warm == cold and info["hits"] == 4
    assert not list(cache.glob("chunks-v2/*/.*.partial"))


def test_cap_prunes_least_recently_used_first(make_disk, tmp_path):
    raw = make_disk("mixed")
    cache = tmp_path / "c"
    _pack(raw, tmp_path / "a" / "a.ova", cache=cache)
    entries = _entries(cache)
    assert len(entries) == 4
    now = time.time()
    for age, path in enumerate(entries):  # entries[0] used last, entries[3] first
        os.utime(path, (now - 1000 * age, now - 1000 * age))
    sizes = [p.stat().st_size for p in entries]
    report = SpanCache(cache).prune(sizes[0] + sizes[1])
    assert report["removed"] == 2 and report["bytes"] == sizes[0] + sizes[1]
    assert _entries(cache) == sorted(entries[:2])
    # a hit makes an entry recent again: it survives the next prune
    os.utime(entries[0], (now - 5000, now - 5000))
    _pack(raw, tmp_path / "b" / "a.ova", cache=cache)
    assert entries[0].stat().st_mtime > now - 100


def test_cache_max_caps_the_folder_after_the_run(make_disk, tmp_path):
    raw = make_disk("mixed")
    cache = tmp_path / "c"
    ovfstream.pack([raw], tmp_path / "a.ova", fsync=False, cache=cache)
    sizes = sorted(p.stat().st_size for p in _entries(cache))
    # a cap that the largest entry fits under but not all of them: whichever order the
    # parallel run left their mtimes in, some entries go and some stay
    cap = sizes[-1] + sizes[0]
    assert sum(sizes) > cap
    ovfstream.pack([raw], tmp_path / "b.ova", fsync=False, cache=cache, cache_max=cap)
    assert 0 < sum(p.stat().st_size for p in _entries(cache)) <= cap


def test_an_engine_that_is_not_reproducible_does_not_use_the_cache(make_disk, tmp_path):
    raw = make_disk("random")
    _, info = _pack(raw, tmp_path / "a" / "a.ova", engine="isal", level=3, cache=tmp_path / "c")
    assert info["used"] is False and "does not give the same bytes" in info["why_not"]
    assert not _entries(tmp_path / "c")


def test_cli_cache_stats_prune_and_flags(make_disk, tmp_path, capsys):
    raw = make_disk("mixed")
    cache = tmp_path / "c"
    assert cli.main(["convert", str(raw), "-o", str(tmp_path / "a.vmdk"), "--cache",
                     str(cache), "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["cache"]["stored"] == 4
    assert cli.main(["cache", "stats", str(cache), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["entries"] == 4 and stats["bytes"] > 0
    assert cli.main(["cache", "stats", str(cache)]) == 0
    assert "entries      4" in capsys.readouterr().out
    assert cli.main(["cache", "prune", str(cache), "--max", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == 4
    assert not _entries(cache)
    assert cli.main(["pack", str(raw), "-o", str(tmp_path / "x.ova"), "--cache-max", "1G"]) == 2
    assert "--cache-max needs --cache" in capsys.readouterr().err
    assert cli.main(["cache", "prune", str(cache), "--max", "lots"]) == 2
    assert cli.main(["cache", "stats", str(tmp_path / "nope")]) == 2
    (tmp_path / "file").write_bytes(b"")
    assert cli.main(["convert", str(raw), "-o", str(tmp_path / "b.vmdk"), "--cache",
                     str(tmp_path / "file")]) == 2


def test_repack_reencodes_through_the_cache(make_disk, tmp_path, monkeypatch):
    """A raw disk member that repack re-encodes: the second run hits, same bytes."""
    import re as _re
    from ovfstream.ova.tar import END_OF_ARCHIVE, encode_header, padding_for
    from ovfstream.repack import repack
    raw = make_disk("mixed")
    packed = tmp_path / "src" / "web.ova"
    packed.parent.mkdir()
    ovfstream.pack([raw], packed, engine="zlib", mtime=1, fsync=False)
    import tarfile
    with tarfile.open(packed) as tf:
        descriptor = tf.extractfile("web.ovf").read()  # type: ignore[union-attr]
    data = raw.read_bytes()
    descriptor = _re.sub(rb'ovf:size="\d+"', b'ovf:size="%d"' % len(data), descriptor)
    hand = tmp_path / "hand.ova"
    with open(hand, "wb") as f:
        for name, blob in (("hand.ovf", descriptor), ("web-disk1.vmdk", data)):
            f.write(encode_header(name, len(blob), mtime=1) + blob + bytes(padding_for(len(blob))))
        f.write(END_OF_ARCHIVE)
    outs = [tmp_path / d / "out.ova" for d in ("cold", "first", "warm")]
    for out in outs:
        out.parent.mkdir()
    repack(hand, outs[0], engine="zlib", fsync=False)
    repack(hand, outs[1], engine="zlib", fsync=False, cache=tmp_path / "c")
    warm = repack(hand, outs[2], engine="zlib", fsync=False, cache=tmp_path / "c")
    assert warm.disks[0].encoded.cache["hits"] == 4
    assert outs[0].read_bytes() == outs[1].read_bytes() == outs[2].read_bytes()
    assert cli.main(["repack", str(hand), "-o", str(tmp_path / "cli.ova"), "--engine", "zlib",
                     "--cache", str(tmp_path / "c"), "-q"]) == 0


class _TwoFacedSource:
    """A random-access source whose bytes change between the key's small reads (``first``)
    and the whole-chunk read a miss makes (``then``): a file written to during the build."""

    sequential = False

    def __init__(self, first: bytes, then: bytes) -> None:
        from ovfstream.cache import _KEY_PIECE
        self._first, self._then, self._piece = first, then, _KEY_PIECE
        self.whole_reads = 0

    def read_into(self, offset: int, view: memoryview) -> None:
        whole = len(view) > self._piece
        self.whole_reads += whole
        data = self._then if whole else self._first
        view[:] = data[offset:offset + len(view)]


def test_a_miss_keeps_what_it_compressed_and_a_hit_reads_only_its_key(tmp_path):
    import threading
    from ovfstream.cache import CHUNK_GRAINS
    from ovfstream.engine import get_engine
    from ovfstream.sources.base import SpanPlan
    from ovfstream.vmdk import layout as L
    from functools import partial

    from ovfstream.vmdk.writer import _codec, encode_span_into
    chunk = CHUNK_GRAINS * L.GRAIN_BYTES
    first = write_disk(tmp_path / "a.raw", chunk, [(0, "text", chunk)], seed=1).read_bytes()
    then = write_disk(tmp_path / "b.raw", chunk, [(0, "text", chunk)], seed=2).read_bytes()
    engine = get_engine("isal", 1)
    compress = partial(encode_span_into, engine, threading.local())
    plan = SpanPlan(0, CHUNK_GRAINS, ((0, chunk),))
    buf = bytearray(chunk)
    cache = SpanCache(tmp_path / "c")

    def run(source):
        session = cache.session(engine)
        out = bytearray(_codec.SPAN_FRAMED_BYTES)
        n, gt, prints, _ = session.encode_from(source, plan, buf, memoryview(out), compress)
        return session, bytes(out[:n]), gt, prints

    session, _, _, _ = run(_TwoFacedSource(first, then))
    assert session.misses == 1 and session.stored == 1
    # kept under the key of the bytes compressed, never under the key of the first read
    key = session.key(memoryview(then), CHUNK_GRAINS)
    assert os.path.exists(cache.path_for(key))
    assert not os.path.exists(cache.path_for(session.key(memoryview(first), CHUNK_GRAINS)))
    steady = _TwoFacedSource(then, then)
    session, framed, gt, prints = run(steady)
    assert session.hits == 1 and steady.whole_reads == 0  # a hit reads only its key
    want = bytearray(_codec.SPAN_FRAMED_BYTES)
    n, want_gt, want_prints, _ = compress(memoryview(want), memoryview(then), 0, CHUNK_GRAINS)
    assert (framed, gt, prints) == (bytes(want[:n]), want_gt, want_prints)
