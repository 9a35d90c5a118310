"""Fixtures for the pytest-benchmark suites in benches/ (outside the default test paths).

    python -m pytest benches -p no:cacheprovider --benchmark-only

Inputs are real system files (make_image.py), cached in $OVFSTREAM_BENCH_CACHE (default
TMPDIR/ovfstream-bench) so repeated runs time the same bytes.  Every benchmark records its
throughput and the machine in ``benchmark.extra_info``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
for p in (str(SRC), str(HERE)):
    if p not in sys.path:
        sys.path.insert(0, p)

import make_image  # noqa: E402
from compare import machine_facts  # noqa: E402

MIB = 1 << 20
SPAN_BYTES = 32 * MIB


def bench_cache() -> Path:
    path = Path(os.environ.get("OVFSTREAM_BENCH_CACHE")
                or Path(tempfile.gettempdir()) / "ovfstream-bench")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def machine() -> dict[str, Any]:
    facts = machine_facts()
    facts["loadavg_start"] = list(facts["loadavg_start"])
    return facts


@pytest.fixture(scope="session")
def dense_256m() -> Path:
    """256 MiB of concatenated system files, no holes (cached by its stamp)."""
    return make_image.ensure_image("dense", bench_cache() / "dense-256m.raw", size_bytes=256 * MIB)


@pytest.fixture(scope="session")
def real_span(dense_256m: Path) -> bytes:
    """One 32 MiB span of real data: the binaries and libraries at the front of the dense file."""
    with open(dense_256m, "rb") as f:
        data = f.read(SPAN_BYTES)
    if len(data) != SPAN_BYTES:
        raise RuntimeError("%s is shorter than one span" % dense_256m)
    return data


def record(benchmark: Any, machine: dict[str, Any], nbytes: int, **extra: Any) -> None:
    """Throughput from the median round, plus the machine, into extra_info."""
    benchmark.extra_info.update(extra)
    benchmark.extra_info["bytes_per_round"] = nbytes
    benchmark.extra_info["machine"] = machine
    stats = getattr(benchmark, "stats", None)
    median = getattr(getattr(stats, "stats", None), "median", None)
    if median:
        benchmark.extra_info["mb_per_s"] = round(nbytes / median / 1e6, 1)
