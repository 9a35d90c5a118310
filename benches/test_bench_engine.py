"""The grain engine, one 32 MiB span per call (src/_native/grains.pyx).

- ``zero_grain_map`` on an all-zero span (the memcmp scan at memory bandwidth) and on a span
  of real data (the scan exits on each grain's first word);
- ``encode_span`` with ISA-L levels 1 and 2, zlib levels 1 and 6 and libdeflate levels 1, 6
  and 10 on a span of real data: one core's deflate throughput, the number every performance
  target is made of.

Each benchmark also checks its result, so a broken engine fails here instead of looking fast.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import pytest
import xxhash

from conftest import SPAN_BYTES, record
from ovfstream import _grains, grains_py
from ovfstream.engine import get_engine

GRAIN = 64 * 1024
N_GRAINS = SPAN_BYTES // GRAIN


@pytest.mark.parametrize("kind", ["zero", "real"])
def test_zero_scan(benchmark: Any, machine: dict[str, Any], real_span: bytes, kind: str) -> None:
    span = bytes(SPAN_BYTES) if kind == "zero" else real_span
    want = grains_py.zero_grain_map(span, N_GRAINS)  # the pure-Python reference
    got = benchmark(_grains.zero_grain_map, span, N_GRAINS)
    assert got == want
    if kind == "zero":
        assert got == b"\x01" * N_GRAINS
    record(benchmark, machine, SPAN_BYTES, kind=kind, zero_grains=sum(got))


# zlib-6 runs at ~30-60 MB/s, libdeflate-10 at ~20: a few rounds of a 32 MiB span already
# take seconds.
ENGINES = [("isal", 1, 5), ("isal", 2, 5), ("zlib", 1, 3), ("zlib", 6, 2),
           ("libdeflate", 1, 3), ("libdeflate", 6, 2), ("libdeflate", 10, 1)]


@pytest.mark.parametrize("engine,level,rounds", ENGINES,
                         ids=["%s-%d" % (e, lv) for e, lv, _ in ENGINES])
def test_encode_span(benchmark: Any, machine: dict[str, Any], real_span: bytes, engine: str,
                     level: int, rounds: int) -> None:
    eng = get_engine(engine, level)
    first_lba = 7 * N_GRAINS * 128  # span 7: the LBAs in the markers are not all zero
    framed, gt_rel, prints, payload = benchmark.pedantic(
        _grains.encode_span, args=(real_span, first_lba, N_GRAINS, eng.compress,
                                   xxhash.xxh3_64_intdigest),
        rounds=rounds, iterations=1, warmup_rounds=1)
    zero = grains_py.zero_grain_map(real_span, N_GRAINS)
    n_data = N_GRAINS - sum(zero)
    assert len(prints) == 16 * n_data
    entries = struct.unpack("<%dI" % N_GRAINS, gt_rel)
    assert [e == 0 for e in entries] == [bool(z) for z in zero]
    # Inflate every grain back from the framed buffer: markers, lengths and payloads agree.
    for i, rel in enumerate(entries):
        if not rel:
            continue
        pos = (rel - 1) * 512
        lba, length = struct.unpack_from("<QI", framed, pos)
        assert lba == first_lba + i * 128
        grain = zlib.decompress(bytes(framed[pos + 12:pos + 12 + length]))
        assert grain == real_span[i * GRAIN:(i + 1) * GRAIN]
    record(benchmark, machine, n_data * GRAIN, engine=eng.describe(),
           data_grains=n_data, payload_bytes=payload,
           ratio=round(payload / (n_data * GRAIN), 4), framed_bytes=len(framed))
