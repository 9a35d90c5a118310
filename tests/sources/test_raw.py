"""Raw source (sources/raw.py): the readahead hint for the next span."""

from __future__ import annotations

import os

import ovfstream
from ovfstream.sources import open_source

from ovfs_testlib import MIB, write_disk


def _disk(tmp_path):
    # Data in spans 0, 2 and 3 (span 1 is a hole: never read, never hinted).
    return write_disk(tmp_path / "d.raw", 130 * MIB, [(MIB, "text", MIB), (70 * MIB, "random", MIB),
                                                     (100 * MIB, "text", 2 * MIB)], seed=3)


def test_each_span_after_the_first_is_hinted_before_it_is_read(tmp_path, monkeypatch):
    raw = _disk(tmp_path)
    with open_source(raw) as source:
        plans = source.spans()
    calls: list[tuple[int, int, int]] = []
    real = os.posix_fadvise

    def record(fd: int, offset: int, length: int, advice: int) -> None:
        if advice == os.POSIX_FADV_WILLNEED:
            calls.append((offset, length, advice))
        real(fd, offset, length, advice)
    monkeypatch.setattr(os, "posix_fadvise", record)
    result = ovfstream.convert(raw, tmp_path / "d.vmdk", fsync=False, parallel=2)
    want = [(start, end - start, os.POSIX_FADV_WILLNEED)
            for plan in plans[1:] for start, end in plan.extents]
    assert [p.index for p in plans] == [0, 2, 3] and calls == want
    assert result.stats.grains_written > 0


def test_a_refused_hint_loses_nothing(tmp_path, monkeypatch):
    raw = _disk(tmp_path)
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
    ovfstream.convert(raw, tmp_path / "a" / "d.vmdk", fsync=False)

    def refuse(*args: object) -> None:
        raise OSError(22, "Invalid argument")
    monkeypatch.setattr(os, "posix_fadvise", refuse)
    ovfstream.convert(raw, tmp_path / "b" / "d.vmdk", fsync=False)
    assert (tmp_path / "a" / "d.vmdk").read_bytes() == (tmp_path / "b" / "d.vmdk").read_bytes()
