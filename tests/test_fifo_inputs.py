"""A FIFO (or another non-regular file) where a package or disk is expected: verify, inspect
and extract hung in open() on ``*.ova``, ``*.vmdk``, ``*.ovf`` and on a folder holding a FIFO
named ``*.ovf``.  Now each is refused at once with exit 2 (a usage error: ovfstream reads
regular files only), naming the path and its type, and extract writes nothing.

Each command runs in a child process with a timeout, so a regression fails instead of
hanging the test run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ovfstream.errors import UsageError

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")


def run(*argv: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([sys.executable, "-m", "ovfstream", *map(os.fspath, argv)],
                              capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("%s: still running after 20 s (blocked on a FIFO?)" % " ".join(map(str, argv)))


@pytest.mark.parametrize("form", ["x.ova", "x.vmdk", "x.ovf", "folder"])
def test_fifo_refused(tmp_path: Path, form: str) -> None:
    work = tmp_path / "in"
    work.mkdir()
    if form == "folder":
        os.mkfifo(work / "x.ovf")
        source, fifo = work, work / "x.ovf"
    else:
        os.mkfifo(work / form)
        source = fifo = work / form
    for argv in (["verify", source], ["verify", source, "--json"], ["inspect", source],
                 ["extract", source, "-o", tmp_path / "out" / ("x.raw" if form == "x.vmdk"
                                                               else "dir")]):
        proc = run(*argv)
        assert proc.returncode == 2, (argv, proc.stdout, proc.stderr)
        assert "%s: a FIFO, not a regular file" % fifo in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    assert sorted(os.listdir(work)) == ["x.ovf" if form == "folder" else form]


def test_devices_and_folders_refused(tmp_path: Path) -> None:
    from ovfstream.regular import open_regular
    for path in ("/dev/zero", "/dev/null", tmp_path):
        with pytest.raises(UsageError) as info:
            open_regular(path)
        assert "not a regular file" in str(info.value)
    proc = run("verify", "/dev/zero")          # a .ova-less name: the type is what counts
    assert proc.returncode == 2 and "character device" in proc.stderr
