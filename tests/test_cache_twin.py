"""The span cache's entry check through the pure-Python twin (grains_py.shift_grain_lbas):
what a pure-Python install runs.  test_cache.py covers the cache with the compiled core; it
needs ISA-L's bytes reproducible, which only the core makes them, so it is native-only.
Here the engine is zlib (the same bytes everywhere), and the twin is put in place of the
core in the native run too: these run in both runs."""

from __future__ import annotations

from pathlib import Path

import ovfstream.cache
from ovfstream import grains_py
from ovfstream.pack import pack

from ovfs_testlib import make_cache_entry_lie


def _pack(raw: Path, out: Path, **kw) -> tuple[bytes, dict | None]:
    out.parent.mkdir(parents=True, exist_ok=True)
    result = pack([raw], out, fsync=False, engine="zlib", mtime=1, **kw)
    return out.read_bytes(), result.disks[0].stats.cache


def test_the_twin_gives_the_cold_bytes_and_refuses_a_lying_entry(make_disk, tmp_path,
                                                                 monkeypatch):
    monkeypatch.setattr(ovfstream.cache, "CORE", grains_py)
    raw = make_disk("mixed")
    cold, _ = _pack(raw, tmp_path / "cold" / "a.ova")
    cache = tmp_path / "c"
    first, info = _pack(raw, tmp_path / "first" / "a.ova", cache=cache)
    assert first == cold and info["misses"] > 0 and info["hits"] == 0
    warm, info = _pack(raw, tmp_path / "warm" / "a.ova", cache=cache)
    assert warm == cold and info["hits"] > 0 and info["misses"] == info["stored"] == 0
    # an entry whose digest checks out but whose grain table points at another grain's
    # marker is a miss, recompressed and replaced, never packaged
    make_cache_entry_lie(cache)
    again, info = _pack(raw, tmp_path / "again" / "a.ova", cache=cache)
    assert again == cold and info["misses"] == 1
