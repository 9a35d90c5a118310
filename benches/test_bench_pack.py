"""Whole operations in-process on 256 MiB of dense real data: convert and pack, 1 and 2 workers.

``fsync=False`` so the figures are the pipeline's (read, scan, deflate, frame, digest, write),
not the shared disk's flush; ``benches/compare.py`` times the CLI as users run it, fsync
included.  Each benchmark checks its output (qemu-img compare when qemu-img is present, the
OVA's member order and size otherwise), so a fast wrong answer fails.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

import ovfstream
from conftest import record
from ovfstream.pack import pack

WORKERS = [1, 2]


def _same_disk(src: Path, vmdk: Path) -> None:
    if shutil.which("qemu-img") is None:
        return
    res = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "vmdk", str(src), str(vmdk)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("workers", WORKERS, ids=["p%d" % n for n in WORKERS])
def test_convert(benchmark: Any, machine: dict[str, Any], dense_256m: Path, tmp_path: Path,
                 workers: int) -> None:
    out = tmp_path / "disk.vmdk"

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        out.unlink(missing_ok=True)
        return (dense_256m, out), {"parallel": workers, "fsync": False}

    result = benchmark.pedantic(ovfstream.convert, setup=setup, rounds=3, iterations=1,
                                warmup_rounds=1)
    size = dense_256m.stat().st_size
    assert result.stats.bytes_read == size
    assert result.stats.bytes_written == out.stat().st_size
    if workers == max(WORKERS):
        _same_disk(dense_256m, out)
    record(benchmark, machine, size, workers=workers, engine=result.stats.engine,
           output_bytes=result.stats.bytes_written,
           ratio=round(result.stats.bytes_written / size, 4))


@pytest.mark.parametrize("workers", WORKERS, ids=["p%d" % n for n in WORKERS])
def test_pack(benchmark: Any, machine: dict[str, Any], dense_256m: Path, tmp_path: Path,
              workers: int) -> None:
    out = tmp_path / "bench.ova"

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        out.unlink(missing_ok=True)
        return ([dense_256m], out), {"parallel": workers, "fsync": False, "mtime": 0}

    result = benchmark.pedantic(pack, setup=setup, rounds=3, iterations=1, warmup_rounds=1)
    size = dense_256m.stat().st_size
    with tarfile.open(out, "r:") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["bench.ovf", "bench.mf", "bench-disk1.vmdk"]
    assert members[2].size == result.disks[0].stats.bytes_written
    record(benchmark, machine, size, workers=workers, engine=result.engine,
           output_bytes=out.stat().st_size, ratio=round(out.stat().st_size / size, 4))
