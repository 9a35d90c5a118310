"""verify agrees with extract (issue 8): what extract cannot read back is an error, output
names that would collide are an error, and the work stays linear in the package (each member
list walked a bounded number of times, each disk member verified once however many Disks
name it)."""

from __future__ import annotations

import importlib
import re
import struct
import sys
from pathlib import Path
from typing import Iterator

import pytest

from ovfstream.errors import FormatError, UnsupportedError
from ovfstream.extract import extract
from ovfstream.vmdk.reader import VmdkReader

from test_verify import (NOW, SCHEMAS, Built, _build, errors, manifest_for, replace, run_cli,
                         write_tar)

DISK = "small-disk1.vmdk"
verify_module = importlib.import_module("ovfstream.verify")  # the package attribute is the function


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return _build(tmp_path_factory.mktemp("small"), "small", ["odd_size"])


def with_disk(folder: Path, base: Built, data: bytes) -> Path:
    """base with its disk member replaced and the manifest made right for it."""
    folder.mkdir(parents=True, exist_ok=True)
    desc, n = re.subn(rb'(href="%s" [^>]*size=")\d+"' % DISK.encode(),
                      lambda m: m.group(1) + b'%d"' % len(data), base.data("small.ovf"))
    assert n == 1
    members = replace(replace(base.members, DISK, data), "small.ovf", desc)
    members = replace(members, "small.mf", manifest_for(members, ["small.ovf", DISK]))
    return write_tar(folder / "small.ova", members)


def flat_descriptor(_vmdk: bytes) -> bytes:
    """A descriptor-only VMDK whose FLAT extent names /etc/passwd."""
    return (b'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
            b'createType="monolithicFlat"\n\nRW 6169 FLAT "/etc/passwd" 0\n')


def monolithic_sparse(vmdk: bytes) -> bytes:
    """Flags without 'compressed' and 'markers': a monolithic sparse extent (in a package that
    declares it stream-optimized)."""
    out = bytearray(vmdk)
    struct.pack_into("<I", out, 8, 0x3)
    return bytes(out)


def over_64_tib(vmdk: bytes) -> bytes:
    out = bytearray(vmdk)
    struct.pack_into("<Q", out, 12, (1 << 37) + 128)
    return bytes(out)


UNREADABLE = {"flat-etc-passwd": flat_descriptor, "monolithic-sparse": monolithic_sparse,
              "over-64-tib": over_64_tib}


@pytest.fixture
def no_passwd() -> Iterator[list[str]]:
    """Records any open of /etc/passwd (an audit hook stays installed; it is inert after)."""
    opened: list[str] = []
    active = [True]

    def hook(event: str, args: tuple[object, ...]) -> None:
        if active[0] and event == "open" and args and str(args[0]) == "/etc/passwd":
            opened.append(str(args[0]))

    sys.addaudithook(hook)
    yield opened
    active[0] = False


@pytest.mark.parametrize("case", sorted(UNREADABLE))
def test_what_extract_cannot_read_is_an_error(small: Built, tmp_path: Path, case: str,
                                             capsys: pytest.CaptureFixture[str],
                                             no_passwd: list[str]) -> None:
    """verify --strict --deep reported these as info and passed the package; extract refuses
    them.  Now both refuse, and the FLAT extent's target is never opened."""
    path = with_disk(tmp_path / "pkg", small, UNREADABLE[case](small.data(DISK)))
    for strict, deep in ((False, False), (True, True)):
        result = verify_module.verify(path, strict=strict, deep=deep, schema_dir=SCHEMAS, now=NOW)
        assert not result.ok and errors(result) == {"disk.unsupported"}, result.findings
        assert result.errors[0].file == "%s:%s" % (path, DISK)
    code, _o, err = run_cli(capsys, "verify", path, "--strict", "--deep",
                            *(["--schema-dir", SCHEMAS] if SCHEMAS else []))
    assert code == 1 and "[disk.unsupported]" in err
    with pytest.raises(UnsupportedError):
        extract(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert no_passwd == []


def test_disk_format_not_vmdk_is_an_error(small: Built, tmp_path: Path) -> None:
    desc = small.data("small.ovf")
    desc, n = re.subn(rb'format="[^"]*"', b'format="http://example.com/qcow2"', desc)
    assert n == 1
    members = replace(small.members, "small.ovf", desc)
    members = replace(members, "small.mf", manifest_for(members, ["small.ovf", DISK]))
    path = write_tar(tmp_path / "small.ova", members)
    result = verify_module.verify(path, now=NOW)
    assert errors(result) == {"disk.format"}, result.findings


# -- output names ----------------------------------------------------------------------------

@pytest.mark.parametrize("extra,fmt", [("small-disk1.raw", "raw"), ("SMALL-disk1.RAW", "raw"),
                                       ("small-disk1.raw.zst", "zst")])
def test_extract_name_collision(small: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                extra: str, fmt: str) -> None:
    """A member t-disk1.raw silently overwrote the extracted disk (exit 0; verify warned).
    Now verify says so as an error, and extract refuses the package, writing nothing."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    path = write_tar(pkg / "small.ova", small.members + [(extra, b"not the disk\n")])
    result = verify_module.verify(path, now=NOW)
    assert "ova.file.collision" in errors(result), result.findings
    clash = [f for f in result.errors if f.rule == "ova.file.collision"][0]
    assert DISK in clash.message and extra in clash.message
    out = tmp_path / "out"
    with pytest.raises(FormatError) as info:
        extract(path, out, format=fmt)
    assert info.value.rule == "ova.file.collision"
    assert not out.exists()
    code, _o, err = run_cli(capsys, "extract", path, "-o", out, "--format", fmt)
    assert code == 1 and "[ova.file.collision]" in err and not out.exists()
    # --format vmdk keeps the member names: nothing collides, everything comes out
    extract(path, out, format="vmdk")
    assert (out / extra).read_bytes() == b"not the disk\n"
    assert (out / DISK).read_bytes() == small.data(DISK)


def test_two_disks_one_output_name(small: Built, tmp_path: Path) -> None:
    """Two disk members whose stems are equal (d.vmdk, d.img) would both become d.raw."""
    desc = small.data("small.ovf")
    disk = small.data(DISK)
    m = re.search(rb"<((?:\w+:)?)File [^>]*/>", desc)
    assert m is not None
    second = m.group(0).replace(DISK.encode(), b"small-disk1.img").replace(b'id="file1"',
                                                                           b'id="file2"')
    desc = desc.replace(m.group(0), m.group(0) + second)
    d = re.search(rb"<((?:\w+:)?)Disk [^>]*/>", desc)
    assert d is not None
    desc = desc.replace(d.group(0), d.group(0) + d.group(0).replace(b'"file1"', b'"file2"')
                        .replace(b'diskId="vmdisk1"', b'diskId="vmdisk2"'))
    members = replace(small.members, "small.ovf", desc) + [("small-disk1.img", disk)]
    members = replace(members, "small.mf", manifest_for(members, ["small.ovf", DISK,
                                                                  "small-disk1.img"]))
    path = write_tar(tmp_path / "small.ova", members)
    assert "ova.file.collision" in errors(verify_module.verify(path, now=NOW))
    with pytest.raises(FormatError):
        extract(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# -- linear work -----------------------------------------------------------------------------

class CountingList(list):  # type: ignore[type-arg]
    """A list that counts the times it is walked whole."""

    walks = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        CountingList.walks += 1
        return super().__iter__()


def many_members(folder: Path, base: Built, n: int) -> Path:
    """base plus n small members, each with a File reference and a manifest line."""
    desc = base.data("small.ovf")
    m = re.search(rb"<((?:\w+:)?)References>", desc)
    assert m is not None
    files = b"".join(b'<%sFile ovf:href="m%d.txt" ovf:id="x%d"/>' % (m.group(1), i, i)
                     for i in range(n))
    desc = desc.replace(m.group(0), m.group(0) + files)
    extra = [("m%d.txt" % i, b"%d\n" % i) for i in range(n)]
    members = replace(base.members, "small.ovf", desc) + extra
    members = replace(members, "small.mf",
                      manifest_for(members, ["small.ovf", DISK, *(e for e, _ in extra)]))
    folder.mkdir(parents=True, exist_ok=True)
    return write_tar(folder / "small.ova", members)


def test_member_lookups_do_not_grow_with_the_package(small: Built, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """N members with N File references and N manifest lines: every lookup scanned the member
    list (and rebuilt the set of manifest names per member), N x N (80k: 94 s).  The number
    of whole walks over the members must not depend on N."""
    real_open = verify_module.open_package

    def counting_open(path):  # type: ignore[no-untyped-def]
        pkg = real_open(path)
        pkg.members = CountingList(pkg.members)
        return pkg

    monkeypatch.setattr(verify_module, "open_package", counting_open)
    walks = []
    for n in (50, 400):
        path = many_members(tmp_path / str(n), small, n)
        CountingList.walks = 0
        result = verify_module.verify(path, now=NOW)
        assert result.ok and result.digests_checked == n + 2, result.findings
        walks.append(CountingList.walks)
    assert walks[0] == walks[1] and walks[1] < 20, walks


def test_many_disks_on_one_member_are_read_once(small: Built, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """verify --deep inflated the member once per Disk pointing at it."""
    desc = small.data("small.ovf")
    d = re.search(rb"<((?:\w+:)?)Disk [^>]*/>", desc)
    assert d is not None
    copies = b"".join(d.group(0).replace(b'diskId="vmdisk1"', b'diskId="dup%d"' % i)
                      for i in range(300))
    desc = desc.replace(d.group(0), d.group(0) + copies)
    members = replace(small.members, "small.ovf", desc)
    members = replace(members, "small.mf", manifest_for(members, ["small.ovf", DISK]))
    path = write_tar(tmp_path / "small.ova", members)
    calls = []
    real = VmdkReader.verify

    def counting(self, **kw):  # type: ignore[no-untyped-def]
        calls.append(kw)
        return real(self, **kw)

    monkeypatch.setattr(VmdkReader, "verify", counting)
    result = verify_module.verify(path, deep=True, now=NOW)
    assert len(calls) == 1, len(calls)
    assert "disk.capacity" not in errors(result) and result.content_ids
