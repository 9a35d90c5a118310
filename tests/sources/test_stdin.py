"""A raw disk on standard input (sources/stdin.py) through the real CLI, and the turn-taking
of sequential sources (sources/sequential.py) under failures at --parallel 1, 2, 4.

Every run that could hang on a regression goes through a subprocess with a timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import zstandard

from ovfs_testlib import MIB, REPRODUCIBLE_ENGINE, write_disk

OVFSTREAM = [sys.executable, "-m", "ovfstream"]
SPAN = 32 * MIB


def run(*argv: str | os.PathLike[str], stdin: object = subprocess.DEVNULL, timeout: float = 60,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(OVFSTREAM + [os.fspath(a) for a in argv], stdin=stdin,  # type: ignore[arg-type]
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    return write_disk(tmp_path / "d.raw", 3 * MIB + 12345,
                      [(0, "text", 200_000), (2 * MIB, "random", 300_000),
                       (3 * MIB, "random", 12345)])


def compare(qemu_img, raw: Path, vmdk: Path) -> None:  # type: ignore[no-untyped-def]
    proc = qemu_img("compare", "-f", "raw", "-F", "vmdk", raw, vmdk)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = qemu_img("check", vmdk)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_convert_from_a_redirected_file_and_from_a_pipe(disk, tmp_path, qemu_img):
    size = str(disk.stat().st_size)
    with open(disk, "rb") as f:
        proc = run("convert", "-", "-o", tmp_path / "a.vmdk", "--size", size, "--json", stdin=f)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["source"] == "-" and doc["bytes_read"] == disk.stat().st_size
    compare(qemu_img, disk, tmp_path / "a.vmdk")

    cat = subprocess.Popen(["cat", str(disk)], stdout=subprocess.PIPE)
    try:
        proc = run("convert", "-", "-o", tmp_path / "b.vmdk", "--size", size, stdin=cat.stdout)
    finally:
        cat.stdout.close()  # type: ignore[union-attr]
        cat.wait(timeout=10)
    assert proc.returncode == 0, proc.stderr
    compare(qemu_img, disk, tmp_path / "b.vmdk")
    # same stream, same settings, same name: same bytes, piped or redirected
    (tmp_path / "c").mkdir()
    with open(disk, "rb") as f:
        assert run("convert", "-", "-o", tmp_path / "c" / "b.vmdk", "--size", size,
                   stdin=f).returncode == 0
    assert (tmp_path / "c" / "b.vmdk").read_bytes() == (tmp_path / "b.vmdk").read_bytes()


@pytest.mark.parametrize("parallel", ["1", "2", "4"])
def test_same_bytes_at_every_parallelism(parallel, tmp_path):
    raw = write_disk(tmp_path / "d.raw", 2 * SPAN + 5 * MIB,
                     [(i * SPAN + 1000, "text", 300_000) for i in range(3)])
    outs = []
    for p in ("1", parallel):
        folder = tmp_path / ("p" + p + "-" + str(len(outs)))
        folder.mkdir()
        with open(raw, "rb") as f:
            proc = run("convert", "-", "-o", folder / "d.vmdk", "--size",
                       str(raw.stat().st_size), "--parallel", p,
                       "--engine", REPRODUCIBLE_ENGINE, stdin=f)
        assert proc.returncode == 0, proc.stderr
        outs.append((folder / "d.vmdk").read_bytes())
    assert outs[0] == outs[1]


def test_pack_from_stdin_to_a_file_and_to_stdout(disk, tmp_path):
    size = str(disk.stat().st_size)
    ova = tmp_path / "vm.ova"
    with open(disk, "rb") as f:
        proc = run("pack", "-", "-o", ova, "--size", size, "--json", stdin=f)
    assert proc.returncode == 0, proc.stderr
    assert run("verify", ova, "--deep").returncode == 0
    with tarfile.open(ova) as t:  # a stream has no date: mtime 0 ...
        assert {m.mtime for m in t.getmembers()} == {0}

    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")  # ... unless one is given
    streamed = tmp_path / "streamed.ova"
    cat = subprocess.Popen(["cat", str(disk)], stdout=subprocess.PIPE)
    try:
        with open(streamed, "wb") as out:
            proc = subprocess.run(OVFSTREAM + ["pack", "-", "-o", "-", "--size", size],
                                  stdin=cat.stdout, stdout=out, stderr=subprocess.PIPE,
                                  timeout=60, env=env)
    finally:
        cat.stdout.close()  # type: ignore[union-attr]
        cat.wait(timeout=10)
    assert proc.returncode == 0, proc.stderr
    assert run("verify", streamed, "--deep").returncode == 0
    with tarfile.open(streamed) as t:
        assert {m.mtime for m in t.getmembers()} == {1700000000}


@pytest.mark.parametrize("delta", [-1, 512, 1, 5 * MIB])
def test_stream_shorter_or_longer_than_size_fails(delta, disk, tmp_path):
    size = disk.stat().st_size + delta
    for command, out in (("convert", tmp_path / "x.vmdk"), ("pack", tmp_path / "x.ova")):
        with open(disk, "rb") as f:
            proc = run(command, "-", "-o", out, "--size", str(size), stdin=f)
        assert proc.returncode == 1, proc.stderr
        assert "Traceback" not in proc.stderr
        assert "-@0x%x: [stdin.size]" % min(size, disk.stat().st_size) in proc.stderr
        assert ("ended after" if delta > 0 else "goes on after") in proc.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == ["d.raw"]


def test_size_is_required_and_checked(disk, tmp_path):
    out = tmp_path / "x.vmdk"
    with open(disk, "rb") as f:
        proc = run("convert", "-", "-o", out, stdin=f)
    assert proc.returncode == 2 and "needs --size BYTES" in proc.stderr, proc.stderr
    for bad in ("0", "-5", "12Q", "1.5G", "", "K"):
        with open(disk, "rb") as f:
            proc = run("convert", "-", "-o", out, "--size=" + bad, stdin=f)
        assert proc.returncode == 2, (bad, proc.stderr)
        assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_size_suffixes_are_binary(tmp_path, qemu_img):
    raw = write_disk(tmp_path / "d.raw", 4 * MIB, [(MIB, "text", 100_000)])
    with open(raw, "rb") as f:
        proc = run("convert", "-", "-o", tmp_path / "x.vmdk", "--size", "4m", "--json",
                   stdin=f)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["size_bytes"] == 4 * MIB
    compare(qemu_img, raw, tmp_path / "x.vmdk")


def test_a_container_on_stdin_is_refused_unless_raw(disk, tmp_path, qemu_img):
    image = tmp_path / "d.qcow2"
    assert qemu_img("convert", "-f", "raw", "-O", "qcow2", disk, image).returncode == 0
    size = str(image.stat().st_size)
    with open(image, "rb") as f:
        proc = run("convert", "-", "-o", tmp_path / "x.vmdk", "--size", size, stdin=f)
    assert proc.returncode == 1 and "[source.format]" in proc.stderr, proc.stderr
    assert "holds a qcow2 image" in proc.stderr and not (tmp_path / "x.vmdk").exists()
    with open(image, "rb") as f:  # the user says these bytes are the disk
        proc = run("convert", "-", "-o", tmp_path / "x.vmdk", "--size", size,
                   "--input-format", "raw", stdin=f)
    assert proc.returncode == 0, proc.stderr
    with open(image, "rb") as f:
        proc = run("convert", "-", "-o", tmp_path / "y.vmdk", "--size", size,
                   "--input-format", "qcow2", stdin=f)
    assert proc.returncode == 2 and "read as a raw disk" in proc.stderr, proc.stderr
    zst = tmp_path / "d.raw.zst"  # decompress it first: zstd -dc | ovfstream ...
    zst.write_bytes(zstandard.ZstdCompressor().compress(disk.read_bytes()))
    with open(zst, "rb") as f:
        proc = run("convert", "-", "-o", tmp_path / "z.vmdk", "--size", "1M", stdin=f)
    assert proc.returncode == 1 and "holds a zstd image" in proc.stderr, proc.stderr


def test_stdin_is_one_disk_and_never_the_output(disk, tmp_path):
    size = str(disk.stat().st_size)
    with open(disk, "rb") as f:
        proc = run("pack", "-", "-", "-o", tmp_path / "x.ova", "--size", size, stdin=f)
    assert proc.returncode == 2 and "one disk only" in proc.stderr, proc.stderr
    before = disk.read_bytes()
    with open(disk, "rb") as f, open(disk, "ab") as same:  # pack - -o - < d.raw >> d.raw
        proc = subprocess.run(OVFSTREAM + ["pack", "-", "-o", "-", "--size", size], stdin=f,
                              stdout=same, stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 2 and "also an input" in proc.stderr, proc.stderr
    assert disk.read_bytes() == before


def test_terminal_stdin_is_refused(tmp_path):
    import pty
    leader, follower = pty.openpty()
    try:
        proc = run("convert", "-", "-o", tmp_path / "x.vmdk", "--size", "1M", stdin=follower)
    finally:
        os.close(leader)
        os.close(follower)
    assert proc.returncode == 2 and "standard input is a terminal" in proc.stderr, proc.stderr


# -- the turn-taking under failures: no deadlock, the first failure reported -----------------

FAULT_SCRIPT = r"""
import dataclasses, json, sys, threading
from ovfstream.engine import get_engine
from ovfstream.errors import OvfstreamError
from ovfstream.sources.stdin import StdinSource
from ovfstream.sources.zst import ZstdSource
from ovfstream.vmdk.writer import write_stream_vmdk

kind, fault, path, size, parallel = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
engine = get_engine("zlib", 1)
compress = engine.compress
calls = [0]
lock = threading.Lock()

def failing(grain):
    with lock:
        calls[0] += 1
        n = calls[0]
    if n == 40:  # a grain of the second span with data
        raise RuntimeError("encoder failed")
    return compress(grain)

if fault == "encoder":
    engine = dataclasses.replace(engine, compress=failing, span_encoder=None)
written = [0]

def write(data):
    written[0] += len(data)
    if fault == "write" and written[0] > 1 << 20:
        raise OSError(28, "No space left on device")

f = open(path, "rb")
src = StdinSource(size=size, fd=f.fileno()) if kind == "stdin" else ZstdSource(path, size=size)
try:
    write_stream_vmdk(src, write, file_name="x.vmdk", engine=engine, workers=parallel)
    outcome = "ok"
except (OvfstreamError, OSError, RuntimeError) as exc:
    outcome = "%s: %s" % (type(exc).__name__, exc)
src.close()
print(json.dumps({"outcome": outcome, "threads": threading.active_count()}))
"""


@pytest.fixture(scope="module")
def span_disk(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("spans")
    return write_disk(folder / "d.raw", 6 * SPAN, [(i * SPAN, "text", 2 * MIB) for i in range(6)])


@pytest.mark.parametrize("parallel", [1, 2, 4])
@pytest.mark.parametrize("kind,fault", [("stdin", "encoder"), ("stdin", "write"),
                                        ("stdin", "short"), ("zstd", "encoder"),
                                        ("zstd", "write"), ("zstd", "corrupt")])
def test_failures_wake_every_worker(kind, fault, parallel, span_disk, tmp_path):
    path, size = span_disk, span_disk.stat().st_size
    if fault == "short":
        size += SPAN  # the stream ends a whole span early
    if kind == "zstd":
        data = span_disk.read_bytes()
        cctx = zstandard.ZstdCompressor(level=1, write_checksum=True)
        frames = [bytearray(cctx.compress(data[i:i + SPAN])) for i in range(0, len(data), SPAN)]
        if fault == "corrupt":  # the third span's frame: its checksum fails
            frames[2][-1] ^= 0xFF
        path = tmp_path / "d.raw.zst"
        path.write_bytes(b"".join(frames))
    proc = subprocess.run([sys.executable, "-c", FAULT_SCRIPT, kind, fault, str(path),
                           str(size), str(parallel)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    expected = {"encoder": "RuntimeError: encoder failed",
                "write": "OSError: [Errno 28] No space left on device",
                "short": "FormatError: -@0xc000000: [stdin.size] the stream ended after",
                "corrupt": "FormatError: %s@0x%x: [zstd.frame] frame 3" % (
                    path, sum(len(f) for f in frames[:2]) if kind == "zstd" else 0)}[fault]
    assert doc["outcome"].startswith(expected), doc
    assert doc["threads"] == 1  # every worker joined


def test_stop_wakes_a_reader_whose_turn_never_comes(tmp_path):
    # The pipeline cancelled span 0 before it started while span 1 already runs: stop()
    # (the writer giving up) must release span 1's worker.
    import threading

    from ovfstream.sources.sequential import StreamStopped
    from ovfstream.sources.stdin import StdinSource
    raw = write_disk(tmp_path / "d.raw", 2 * SPAN, [(0, "text", 1000)])
    with open(raw, "rb") as f, StdinSource(size=2 * SPAN, fd=f.fileno()) as src:
        plans = src.spans()
        assert [p.index for p in plans] == [0, 1]  # holes unknown: every span
        seen: list[BaseException] = []

        def second() -> None:
            try:
                src.read_span(plans[1], bytearray(SPAN))
            except StreamStopped as exc:
                seen.append(exc)
        worker = threading.Thread(target=second, daemon=True)
        worker.start()
        worker.join(0.2)
        assert worker.is_alive()  # waiting for span 0
        src.stop()
        worker.join(10)
        assert not worker.is_alive() and seen and "span 1 not read" in str(seen[0])
