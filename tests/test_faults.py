"""Faults on the write side (issue 8, items 7, 9, 10, 12): inputs that would hang (FIFOs),
SIGTERM/SIGHUP mid-run, a source that changes while it is read, stdout closed for -o -.

Every run that could hang on a regression goes through a subprocess with a timeout."""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ovfstream import cli
from ovfstream.sources import base as base_mod, raw as source_mod
from ovfstream.convert import convert
from ovfstream.errors import FormatError, UsageError
from ovfstream.pack import pack

from ovfs_testlib import make_signer, write_disk

MIB = 1 << 20
OVFSTREAM = [sys.executable, "-m", "ovfstream"]


def disk(path: Path, size: int = 3 * MIB, seed: int = 1) -> Path:
    return write_disk(path, size, [(0, "random", 200000), (2 * MIB, "text", 300000)], seed=seed)


def run(*argv: str | os.PathLike[str], timeout: float = 20, **kw: object
        ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(OVFSTREAM + [os.fspath(a) for a in argv], capture_output=True,
                          text=True, timeout=timeout, **kw)  # type: ignore[call-overload]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# -- item 9: a FIFO (or other non-regular node) as an input is refused, never opened ---------

@pytest.mark.parametrize("role", ["pack-disk", "convert-source", "spec", "sign-key", "sign-cert"])
def test_fifo_input_is_refused_without_hanging(tmp_path, role):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    raw = disk(tmp_path / "d.raw")
    out = tmp_path / "o.ova"
    if role == "convert-source":
        argv = ["convert", fifo, "-o", tmp_path / "o.vmdk"]
    elif role == "pack-disk":
        argv = ["pack", raw, fifo, "-o", out]
    elif role == "spec":
        os.rename(fifo, tmp_path / "vm.toml")
        argv = ["pack", raw, "-o", out, "--spec", tmp_path / "vm.toml"]
    else:
        signer = make_signer()
        key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
        key.write_bytes(signer.private_key_pem)
        cert.write_bytes(signer.certificate_chain_pem)
        target = key if role == "sign-key" else cert
        target.unlink()
        os.rename(fifo, target)
        argv = ["pack", raw, "-o", out, "--sign-key", key, "--sign-cert", cert]
    proc = run(*argv, "--quiet")
    assert proc.returncode == 2, proc.stderr
    assert "FIFO" in proc.stderr and "Traceback" not in proc.stderr
    assert [p for p in listing(tmp_path) if p.startswith("o") or "partial" in p] == []


def test_character_device_as_a_disk_is_refused(tmp_path):
    proc = run("convert", "/dev/zero", "-o", tmp_path / "z.vmdk", "--quiet")
    assert proc.returncode == 2 and "character device" in proc.stderr
    assert listing(tmp_path) == []


# -- item 10: SIGTERM and SIGHUP clean up as SIGINT does ------------------------------------

def _busy_disk(path: Path) -> Path:
    """128 MiB that deflate cannot shrink: seconds of zlib-9 on one worker, so a signal
    sent once the output's temporary exists lands mid-run."""
    block = random.Random(5).randbytes(MIB)
    with open(path, "wb") as f:
        for _ in range(128):
            f.write(block)
    return path


def _wait_for(predicate, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the run to start writing")
        time.sleep(0.02)


SLOW = ["--quiet", "--parallel", "1", "--engine", "zlib", "--level", "9"]


@pytest.mark.parametrize("case", ["pack-ova-TERM", "pack-folder-TERM", "convert-TERM",
                                  "pack-stream-TERM", "pack-ova-HUP"])
def test_signal_mid_run_leaves_nothing(tmp_path, case):
    what, _, sig_name = case.rpartition("-")
    signum = getattr(signal, "SIG" + sig_name)
    raw = _busy_disk(tmp_path / "d.raw")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    spool = tmp_path / "spool"
    spool.mkdir()
    stdout = subprocess.DEVNULL
    if what == "pack-ova":
        argv = ["pack", raw, "-o", out_dir / "t.ova"]
    elif what == "pack-folder":
        argv = ["pack", raw, "-o", out_dir / "t.ovf"]
    elif what == "convert":
        argv = ["convert", raw, "-o", out_dir / "t.vmdk"]
    else:
        argv = ["pack", raw, "-o", "-", "--spool-dir", spool]
        stdout = open(out_dir / "stream.ova", "wb")  # type: ignore[assignment]
    proc = subprocess.Popen(OVFSTREAM + [os.fspath(a) for a in argv] + SLOW, stdout=stdout,
                            stderr=subprocess.PIPE, text=True)
    try:
        if what == "pack-stream":  # the disk's spool file exists: the run is mid-disk
            _wait_for(lambda: any(any(p.iterdir()) for p in spool.iterdir()))
        else:
            _wait_for(lambda: any(p.name.endswith(".partial") for p in out_dir.iterdir()))
        proc.send_signal(signum)
        code = proc.wait(timeout=20)
        err = proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
        if stdout is not subprocess.DEVNULL:
            stdout.close()  # type: ignore[union-attr]
    assert code == 128 + signum, err
    assert "terminated" in err and "Traceback" not in err
    if what == "pack-stream":
        assert list(spool.iterdir()) == [] and (out_dir / "stream.ova").stat().st_size == 0
    else:
        assert listing(out_dir) == []


# The windows where a signal used to leave files behind, hit on purpose: the process sends
# the signal to itself from inside the window (a hook in a small driver script).
_DRIVER = """
import os, signal, sys, tempfile
from ovfstream import atomic, cli
window, argv = sys.argv[1], sys.argv[2:]
made = []

def kill(signum):
    os.kill(os.getpid(), signum)

real_create, real_mkdtemp, real_lock, real_unlink = (
    atomic._create_temp, tempfile.mkdtemp, atomic._folder_lock, os.unlink)

def create(final):  # right after the temporary exists, before it is registered
    made.append(real_create(final))
    if window == "created" or (window == "cleanup" and len(made) == 2):
        kill(signal.SIGTERM)
    return made[-1]

def mkdtemp(*a, **k):  # right after the spool folder exists
    folder = real_mkdtemp(*a, **k)
    kill(signal.SIGTERM)
    return folder

def lock(folder):  # inside the commit, before the first rename
    kill(signal.SIGTERM)
    return real_lock(folder)

def unlink(path, *a, **k):  # a Ctrl-C while the first temporary is being removed
    real_unlink(path, *a, **k)
    if path.endswith(".partial") and not made[-1:] == [None]:
        made.append(None)
        kill(signal.SIGINT)

atomic._create_temp, tempfile.mkdtemp, atomic._folder_lock = create, mkdtemp, lock
if window == "cleanup":
    os.unlink = unlink
    # A run started with SIGINT ignored (a background job without job control) keeps it
    # ignored, as ovfstream means to (nohup): this window is about a Ctrl-C, so take it back.
    signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(cli.main(argv))
"""


@pytest.mark.parametrize("case", ["created-convert", "created-ova", "created-ovf",
                                  "spool-stream", "commit-ovf", "cleanup-ovf"])
def test_signal_inside_a_cleanup_window_leaves_nothing(tmp_path, case):
    window, _, form = case.partition("-")
    raws = [disk(tmp_path / "a.raw"), disk(tmp_path / "b.raw", seed=2)]
    out_dir, spool = tmp_path / "out", tmp_path / "spool"
    out_dir.mkdir()
    spool.mkdir()
    if form == "convert":
        argv = ["convert", raws[0], "-o", out_dir / "t.vmdk"]
    elif form == "stream":
        argv = ["pack", raws[0], "-o", "-", "--spool-dir", spool]
    else:
        argv = ["pack", *raws, "-o", out_dir / ("t." + form)]
    with open(out_dir / "stream.ova" if form == "stream" else os.devnull, "wb") as stdout:
        proc = subprocess.run([sys.executable, "-c", _DRIVER, window,
                               *[os.fspath(a) for a in argv], "--quiet", "--parallel", "1"],
                              stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=30)
    left = listing(out_dir)
    if form == "stream":
        assert left == ["stream.ova"] and (out_dir / "stream.ova").stat().st_size == 0
        left = listing(spool)
    assert left == [], proc.stderr
    if window == "cleanup":  # the Ctrl-C waited until every temporary was gone
        assert proc.returncode == 130 and "interrupted" in proc.stderr, proc.stderr
    else:
        assert proc.returncode == 128 + signal.SIGTERM, proc.stderr
        assert "terminated (SIGTERM)" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_nohup_keeps_sighup_ignored(tmp_path):
    """A SIGHUP ignored when we start (nohup) stays ignored."""
    raw = _busy_disk(tmp_path / "d.raw")
    out = tmp_path / "t.vmdk"
    proc = subprocess.Popen(OVFSTREAM + ["convert", str(raw), "-o", str(out)] + SLOW,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    try:
        _wait_for(lambda: any(p.name.endswith(".partial") for p in tmp_path.iterdir()))
        proc.send_signal(signal.SIGHUP)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
    assert code == 0 and out.is_file()


def test_signal_handlers_are_restored_after_main(tmp_path, capsys):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)
    assert cli.main(["convert", str(disk(tmp_path / "d.raw")), "-o", str(tmp_path / "o.vmdk"),
                     "--quiet"]) == 0
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGHUP)) == before


# -- item 12: a source that changes while it is read ---------------------------------------------

def _changing_disk(path: Path) -> Path:
    """96 MiB: three spans of data, so a change can land after the first one is read."""
    block = random.Random(3).randbytes(MIB)
    with open(path, "wb") as f:
        for _ in range(96):
            f.write(block)
    return path


def _change_at_span(monkeypatch: pytest.MonkeyPatch, victim: Path, index: int, how: str) -> None:
    real = source_mod.RawSource.read_span
    done: list[bool] = []

    def hooked(self, plan, buf):  # type: ignore[no-untyped-def]
        if self.path == str(victim) and plan.index == index and not done:
            done.append(True)
            st = os.stat(victim)
            if how == "shrink":
                os.truncate(victim, 40 * MIB)
            elif how == "grow":
                with open(victim, "ab") as f:
                    f.write(b"more" * 1000)
            else:  # rewritten in place, same size; the mtime moves on (set: no clock tick race)
                with open(victim, "r+b") as f:
                    f.write(b"\xff" * 4096)
                os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        return real(self, plan, buf)
    monkeypatch.setattr(source_mod.RawSource, "read_span", hooked)


@pytest.mark.parametrize("how", ["shrink", "grow", "rewrite"])
@pytest.mark.parametrize("form", ["convert", "ova", "ovf", "stream"])
def test_source_changing_during_the_run_fails_and_writes_nothing(tmp_path, monkeypatch, how,
                                                                 form):
    raw = _changing_disk(tmp_path / "d.raw")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    _change_at_span(monkeypatch, raw, 1 if how != "shrink" else 2, how)
    stream = io.BytesIO()
    with pytest.raises(FormatError) as info:
        if form == "convert":
            convert(raw, out_dir / "d.vmdk", parallel=1, fsync=False)
        elif form == "stream":
            pack([raw], stream, parallel=1, fsync=False, spool_dir=out_dir)
        else:
            pack([raw], out_dir / ("t." + form), parallel=1, fsync=False)
    assert info.value.rule == "source.changed" and info.value.path == str(raw)
    assert listing(out_dir) == [] and stream.getvalue() == b""


def test_source_change_exit_code_and_message(tmp_path, monkeypatch, capsys):
    raw = _changing_disk(tmp_path / "d.raw")
    _change_at_span(monkeypatch, raw, 2, "shrink")
    out = tmp_path / "t.ova"
    code = cli.main(["pack", str(raw), "-o", str(out), "--quiet", "--parallel", "1"])
    err = capsys.readouterr().err
    assert code == 1 and "[source.changed]" in err and str(raw) in err and "shrank" in err
    assert listing(tmp_path) == ["d.raw"]


def test_unchanged_source_passes_the_end_check(tmp_path):
    raw = disk(tmp_path / "d.raw")
    with source_mod.RawSource(raw) as src:
        src.check_unchanged()
        os.utime(raw, ns=(0, src.file_stat.st_mtime_ns + 1))
        with pytest.raises(base_mod.SourceChangedError, match="modified"):
            src.check_unchanged()


def test_read_error_names_the_source(tmp_path, monkeypatch):
    raw = disk(tmp_path / "d.raw")

    def eio(*args: object) -> int:
        raise OSError(5, "Input/output error")
    monkeypatch.setattr(source_mod.os, "preadv", eio)
    with pytest.raises(OSError) as info:
        convert(raw, tmp_path / "o.vmdk", fsync=False)
    assert info.value.filename == str(raw)
    assert listing(tmp_path) == ["d.raw"]


# -- item 7 (write side): stdout closed --------------------------------------------------------

def test_stream_to_a_closed_stdout_is_a_clear_error(tmp_path):
    raw = disk(tmp_path / "d.raw")
    proc = subprocess.run(["bash", "-c", 'exec "$@" >&-', "sh", *OVFSTREAM, "pack", str(raw),
                           "-o", "-", "--spool-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "stdout is closed" in proc.stderr and "Traceback" not in proc.stderr
    assert listing(tmp_path) == ["d.raw"]


def test_json_to_a_closed_stdout_is_a_clear_error(tmp_path):
    raw = disk(tmp_path / "d.raw")
    proc = subprocess.run(["bash", "-c", 'exec "$@" >&-', "sh", *OVFSTREAM, "convert", str(raw),
                           "-o", str(tmp_path / "o.vmdk"), "--json"],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "stdout is closed" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_usage_error_for_a_directory_disk_names_its_type(tmp_path):
    with pytest.raises(UsageError, match="directory"):
        pack([tmp_path], tmp_path / "x.ova")
