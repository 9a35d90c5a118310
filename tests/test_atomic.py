"""atomic.py's O_DIRECT output (DirectFile): the same bytes as buffered writes, always.

The file's stream of forward writes goes out with O_DIRECT in aligned blocks; writes behind
it (an OVA member header patched later, the front members written last), forward seeks and
the last partial block are buffered or staged.  Whatever the mix, the file must hold exactly
what a plain buffered file would, at every alignment a device may ask for, and when the
kernel refuses O_DIRECT (EINVAL) in the middle of a run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import mmap
import os
import random
from pathlib import Path
from typing import Iterator

import pytest

from ovfstream import atomic
from ovfstream.atomic import DirectFile, atomic_output
from ovfstream.convert import convert
from ovfstream.pack import pack

from ovfs_testlib import REPRODUCIBLE_ENGINE, write_disk

MIB = 1 << 20


def _scenario(f, seed: int) -> None:
    """What the VMDK and OVA writers do, shuffled: page-aligned framed spans of sector
    multiples, small unaligned writes, odd lengths, patches behind the stream, forward seeks,
    and the front written last."""
    rng = random.Random(seed)
    f.seek(1536)
    for _ in range(120):
        kind = rng.random()
        if kind < 0.08:
            # from a sector boundary (as in a VMDK member), a grain table and then a span of
            # more than the staging buffer: the two leave in one vectored write (pwritev)
            f.seek(-(-f.tell() // 512) * 512 + 512 * rng.randrange(0, 3))
            f.write(rng.randbytes(rng.choice([512, 2560, 700])))
            framed = mmap.mmap(-1, 3 * MIB)
            n = rng.randrange(MIB, 3 * MIB) // 512 * 512
            framed[:n] = rng.randbytes(n)
            with memoryview(framed) as view:
                f.write(view[:n])
            framed.close()
        elif kind < 0.3:
            framed = mmap.mmap(-1, MIB)
            n = max(512, rng.randrange(1, MIB) // 512 * 512)
            framed[:n] = rng.randbytes(n)
            with memoryview(framed) as view:
                f.write(view[:n])
            framed.close()
        elif kind < 0.55:
            f.write(rng.randbytes(rng.choice([512, 1024, 2560, 7, 4095, 9000])))
        elif kind < 0.75:
            end = f.tell()
            f.seek(rng.randrange(0, end))
            f.write(rng.randbytes(rng.randrange(1, 3000)))
            f.seek(max(end, f.tell()))
        elif kind < 0.85:
            f.seek(f.tell() + rng.randrange(1, 20000))  # a gap: zeros
        else:
            f.write(bytes(rng.randrange(0, 70000)))
    f.seek(0)
    f.write(b"front" * 300)


def _page_aligned(data: bytes) -> mmap.mmap:
    """``data`` in a page-aligned anonymous map (what the writers hand DirectFile)."""
    buf = mmap.mmap(-1, len(data))
    buf[:] = data
    return buf


@contextlib.contextmanager
def _direct_output(path: Path) -> Iterator[DirectFile]:
    """atomic_output with O_DIRECT, or a skip where the file system does not offer it."""
    with atomic_output(path, direct=True) as f:
        if not isinstance(f, DirectFile):
            pytest.skip("O_DIRECT is not offered here")
        yield f


def _written(path: Path, *, direct: bool, seed: int) -> tuple[str, int | None]:
    with atomic_output(path, direct=direct) as f:
        _scenario(f, seed)
        direct_bytes = getattr(f, "direct_bytes", None)
    data = path.read_bytes()
    path.unlink()
    return hashlib.sha256(data).hexdigest(), direct_bytes


@pytest.mark.parametrize("alignment", [None, (512, 512), (4096, 4096), (4096, 512)])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_direct_writes_give_the_buffered_bytes(tmp_path, monkeypatch, alignment, seed):
    if alignment is not None:  # what another device would ask for
        monkeypatch.setattr(atomic, "dio_alignment", lambda fd: alignment)
    buffered, none = _written(tmp_path / "b.bin", direct=False, seed=seed)
    direct, direct_bytes = _written(tmp_path / "d.bin", direct=True, seed=seed)
    assert none is None and direct == buffered
    if direct_bytes is not None and alignment is not None:
        assert direct_bytes > 0 or os.environ.get("OVFSTREAM_DIRECT_IO") == "0"


def test_refused_o_direct_falls_back_to_buffered_writes(tmp_path, monkeypatch):
    real_pwrite = os.pwrite
    refused = []

    def pwrite(fd, data, offset):  # a file system that takes the flag but not the writes
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    real_pwritev = os.pwritev

    def pwritev(fd, buffers, offset):
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(offset)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwritev(fd, buffers, offset)

    buffered, _ = _written(tmp_path / "b.bin", direct=False, seed=4)
    monkeypatch.setattr(atomic, "dio_alignment", lambda fd: (512, 512))
    monkeypatch.setattr(atomic.os, "pwrite", pwrite)
    monkeypatch.setattr(atomic.os, "pwritev", pwritev)
    direct, direct_bytes = _written(tmp_path / "d.bin", direct=True, seed=4)
    assert direct == buffered
    assert len(refused) == 1 and direct_bytes == 0


def test_other_errors_are_not_swallowed(tmp_path, monkeypatch):
    def pwrite(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic, "dio_alignment", lambda fd: (512, 512))
    out = tmp_path / "full.bin"
    with pytest.raises(OSError) as info:
        with atomic_output(out, direct=True) as f:
            if not isinstance(f, DirectFile):
                pytest.skip("O_DIRECT is not offered here")
            monkeypatch.setattr(atomic.os, "pwrite", pwrite)
            f.write(bytes(8192))
    assert info.value.errno == errno.ENOSPC
    assert not out.exists() and not list(tmp_path.iterdir())  # no temporary left


def test_direct_file_is_used_where_the_file_system_offers_it(tmp_path, monkeypatch):
    monkeypatch.delenv("OVFSTREAM_DIRECT_IO", raising=False)
    with atomic_output(tmp_path / "a.bin", direct=True) as f:
        kind = type(f)
        f.write(b"x")
    probe = os.open(tmp_path / "a.bin", os.O_RDONLY)
    try:
        offered = atomic.dio_alignment(probe) is not None
    finally:
        os.close(probe)
    if offered:
        assert kind is DirectFile
    monkeypatch.setenv("OVFSTREAM_DIRECT_IO", "0")
    with atomic_output(tmp_path / "b.bin", direct=True) as f:
        assert not isinstance(f, DirectFile)
        f.write(b"x")
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes() == b"x"


def test_convert_and_pack_bytes_do_not_depend_on_direct_io_or_workers(tmp_path, monkeypatch):
    # The writer's path (framed buffers from the pool, O_DIRECT or buffered, one or more
    # workers) never reaches the bytes: one digest per output kind.
    raw = write_disk(tmp_path / "d.raw", 66 * MIB + 4321, [
        (0, "text", 3 * MIB + 777), (9 * MIB, "random", MIB), (20 * MIB, "zero", MIB),
        (33 * MIB - 100, "text", 4 * MIB), (66 * MIB - 50, "random", 4371)], seed=3)
    digests: dict[str, set[str]] = {"vmdk": set(), "ova": set(), "folder": set()}
    for direct in ("1", "0"):
        monkeypatch.setenv("OVFSTREAM_DIRECT_IO", direct)
        for workers in (1, 2, 4):
            run = tmp_path / ("%s-%d" % (direct, workers))
            run.mkdir()
            convert(raw, run / "disk.vmdk", parallel=workers, fsync=False,
                    engine=REPRODUCIBLE_ENGINE)
            pack([raw], run / "app.ova", parallel=workers, fsync=False, mtime=1700000000,
                 engine=REPRODUCIBLE_ENGINE)
            for kind, name in (("vmdk", "disk.vmdk"), ("ova", "app.ova")):
                digests[kind].add(hashlib.sha256((run / name).read_bytes()).hexdigest())
        folder = tmp_path / ("folder-%s" % direct)
        folder.mkdir()
        pack([raw], folder / "app.ovf", parallel=2, fsync=False, mtime=1700000000,
             engine=REPRODUCIBLE_ENGINE)
        digests["folder"].add(hashlib.sha256(b"".join(
            (folder / name).read_bytes() for name in ("app.ovf", "app.mf", "app-disk1.vmdk"))
        ).hexdigest())
    assert {kind: len(found) for kind, found in digests.items()} == {
        "vmdk": 1, "ova": 1, "folder": 1}


def test_a_large_aligned_write_after_a_staged_header_goes_direct(tmp_path, monkeypatch):
    # An OVA member: its 512-byte header is staged, then the member's large page-aligned
    # pieces must go straight from the caller's memory, not through the staging copy.
    monkeypatch.delenv("OVFSTREAM_DIRECT_IO", raising=False)
    monkeypatch.setattr(atomic, "dio_alignment", lambda fd: (512, 512))
    piece = _page_aligned(random.Random(7).randbytes(4 * MIB))
    out = tmp_path / "o.bin"
    with _direct_output(out) as f:
        f.seek(5120)
        f.write(b"h" * 512)
        with memoryview(piece) as view:
            f.write(view)
        assert f.direct_bytes >= 4 * MIB + 512
    assert out.read_bytes() == bytes(5120) + b"h" * 512 + bytes(piece)


@pytest.mark.parametrize("short", [0, 1024, 2560 + MIB])
def test_a_staged_grain_table_goes_out_with_the_next_span_in_one_write(tmp_path, monkeypatch,
                                                                        short):
    # After each span the VMDK writer appends its 2.5 KB grain table: a small O_DIRECT write of
    # its own costs a disk round trip (1-4 ms here, 43 times per OS image).  It stays staged
    # and leaves with the next span's page-aligned bytes in one vectored write; a short
    # vectored write (``short`` bytes taken) is completed, never lost or repeated.
    monkeypatch.delenv("OVFSTREAM_DIRECT_IO", raising=False)
    monkeypatch.setattr(atomic, "dio_alignment", lambda fd: (512, 512))
    rng = random.Random(11)
    spans = [_page_aligned(rng.randbytes(2 * MIB)) for _ in range(3)]
    tables = [rng.randbytes(2560) for _ in spans]
    calls: list[tuple[str, int]] = []
    real_pwrite, real_pwritev = os.pwrite, os.pwritev

    def pwrite(fd, data, offset):
        calls.append(("pwrite", len(data)))
        return real_pwrite(fd, data, offset)

    def pwritev(fd, buffers, offset):
        calls.append(("pwritev", sum(len(b) for b in buffers)))
        if short and len(calls) == 2:  # the first vectored write stops early
            head, body = buffers
            taken = [head[:short]] if short < len(head) else [head, body[:short - len(head)]]
            return real_pwritev(fd, taken, offset)
        return real_pwritev(fd, buffers, offset)

    monkeypatch.setattr(atomic.os, "pwrite", pwrite)
    monkeypatch.setattr(atomic.os, "pwritev", pwritev)
    out = tmp_path / "o.vmdk"
    with _direct_output(out) as f:
        for span, table in zip(spans, tables):
            with memoryview(span) as view:
                f.write(view)
            f.write(table)
    assert out.read_bytes() == b"".join(bytes(s) + t for s, t in zip(spans, tables))
    assert calls[0] == ("pwrite", 2 * MIB)          # the first span: nothing staged before it
    assert calls[1] == ("pwritev", 2560 + 2 * MIB)  # table 1 with span 2
    if not short:
        assert calls[2] == ("pwritev", 2560 + 2 * MIB)  # table 2 with span 3
        assert calls[3:] == [("pwrite", 2560)]          # the last table when the file closes
    assert f.direct_bytes == 3 * (2 * MIB + 2560)  # all of it direct, once
    for span in spans:
        span.close()


def test_a_refused_vectored_write_falls_back_to_buffered_writes(tmp_path, monkeypatch):
    # A staged table and the span after it are the file's first O_DIRECT write; the kernel
    # refuses it (EINVAL): both go out buffered, and so does everything after.
    monkeypatch.delenv("OVFSTREAM_DIRECT_IO", raising=False)
    monkeypatch.setattr(atomic, "dio_alignment", lambda fd: (512, 512))
    refused = []

    def pwritev(fd, buffers, offset):
        refused.append(offset)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(atomic.os, "pwritev", pwritev)
    span = _page_aligned(random.Random(3).randbytes(2 * MIB))
    out = tmp_path / "o.bin"
    with _direct_output(out) as f:
        f.write(b"t" * 2560)
        with memoryview(span) as view:
            f.write(view)
            f.write(view)
        direct_bytes = f.direct_bytes
    assert out.read_bytes() == b"t" * 2560 + bytes(span) * 2
    assert refused == [0] and direct_bytes == 0
    span.close()
