"""Helpers for the source tests: images made by the real qemu-img from generated raw disks,
and the round trip every reader must pass (ovfstream convert, then qemu-img compare against
the image and qemu-img check of the VMDK)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Sequence

import pytest

from ovfstream import cli
from ovfstream.convert import convert
from ovfstream.errors import FormatError
from ovfstream.sources import open_source

from ovfs_testlib import tool

TIMEOUT = 60


def qemu(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("qemu-img"), *map(os.fspath, args)], capture_output=True,
                          text=True, timeout=TIMEOUT)


def qemu_convert(raw: Path, out: Path, fmt: str, options: Sequence[str] = ()) -> Path:
    """``raw`` converted by qemu-img to ``fmt`` with ``-o`` options at ``out``."""
    args = ["convert", "-q", "-f", "raw", "-O", fmt]
    if options:
        args += ["-o", ",".join(options)]
    proc = qemu(*args, raw, out)
    assert proc.returncode == 0, proc.stderr
    return out


def virtual_size(image: Path, fmt: str) -> int:
    proc = qemu("info", "--output=json", "-f", fmt, image)
    assert proc.returncode == 0, proc.stderr
    return int(json.loads(proc.stdout)["virtual-size"])


def assert_round_trip(image: Path, fmt: str, out: Path) -> None:
    """convert ``image`` (qemu-img format ``fmt``) to ``out``: qemu-img reads the same disk
    from both, of the same size, and finds the VMDK clean."""
    with open_source(image) as source:
        assert source.format == fmt
        assert source.size_bytes == virtual_size(image, fmt)
    assert cli.main(["convert", str(image), "-o", str(out), "--quiet"]) == 0
    proc = qemu("compare", "-f", fmt, "-F", "vmdk", image, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert virtual_size(out, "vmdk") == virtual_size(image, fmt)
    proc = qemu("check", "-f", "vmdk", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def assert_pack_verifies(image: Path, ova: Path) -> None:
    assert cli.main(["pack", str(image), "-o", str(ova), "--quiet"]) == 0
    assert cli.main(["verify", str(ova), "--deep", "--quiet"]) == 0


def assert_cli_refuses(image: Path, out: Path, rule: str) -> None:
    """The real command, in a subprocess: exit 1, the file and the rule named, no
    traceback, nothing under the output name."""
    proc = subprocess.run([sys.executable, "-m", "ovfstream", "convert", str(image), "-o",
                           str(out)], capture_output=True, text=True, timeout=TIMEOUT,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert proc.returncode == 1, proc.stderr
    assert str(image) in proc.stderr and "[%s]" % rule in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not [p for p in out.parent.iterdir()
                                     if p.name.startswith(out.name)]


def read_all(image: Path) -> bytes:
    """The whole virtual disk as our source reads it (small images only)."""
    with open_source(image) as source:
        return source.read_at(0, source.size_bytes)


def assert_refused(image: Path, rule: str, tmp_path: Path, kind: type = FormatError) -> str:
    """convert refuses ``image`` with ``kind``, naming the file, the offset and ``rule``,
    and leaves nothing under the output name; the message."""
    out = tmp_path / "refused.vmdk"
    with pytest.raises(kind) as info:
        convert(image, out)
    text = str(info.value)
    assert str(image) in text and "[%s]" % rule in text and "@0x" in text, text
    if kind is FormatError:
        assert info.value.rule == rule
    assert not out.exists()
    return text


class TamperedImage:
    """An image's bytes, to change and save under a new name beside it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data = bytearray(path.read_bytes())

    def save(self, name: str) -> Path:
        out = self.path.with_name(name)
        out.write_bytes(bytes(self.data))
        return out
