"""``extract`` (library and CLI): every disk comes back byte-identical (raw, checked with
filecmp and ``qemu-img compare``), ``--format vmdk`` gives the member bytes, ``--format zst``
decompresses to the raw; outputs are atomic; hostile packages write nothing, anywhere."""

from __future__ import annotations

import filecmp
import importlib
import json
import os
import tarfile
from pathlib import Path

import pytest
import zstandard

from ovfstream.convert import convert
from ovfstream.errors import OvfFormatError, TarFormatError, UsageError, VmdkFormatError
from ovfstream.extract import extract
from ovfstream.pack import pack

from ovfs_testlib import DISKS, write_disk
from test_verify import (HOSTILE, HOSTILE_VMDK, LAUGHS, XXE, Built, _build, first_grain, flip,
                         hostile_descriptor_ova, hostile_ova, hostile_vmdk_ova, read_members,
                         replace, run_cli, write_tar)

PRESETS = ["empty", "all_zero_written", "random", "mixed", "odd_size", "sector_tail"]
CHUNK = 4 << 20


def sector_ceil(n: int) -> int:
    return -(-n // 512) * 512


def assert_same_disk(source: Path, extracted: Path) -> None:
    """extracted == source, except that a size that is not a whole number of sectors is
    rounded up (FORMATS.md 1.1 capacity) and the added tail must be zero."""
    size = source.stat().st_size
    assert extracted.stat().st_size == sector_ceil(size)
    if size % 512 == 0:
        assert filecmp.cmp(source, extracted, shallow=False)
        return
    with open(source, "rb") as a, open(extracted, "rb") as b:
        left = size
        while left:
            n = min(left, CHUNK)
            assert a.read(n) == b.read(n)
            left -= n
        assert b.read() == bytes(sector_ceil(size) - size)


def assert_zst_is(source: Path, zst: Path) -> None:
    size = source.stat().st_size
    with open(source, "rb") as a, open(zst, "rb") as z:
        reader = zstandard.ZstdDecompressor().stream_reader(z)
        left = size
        while left:
            want = min(left, CHUNK)
            got = b""
            while len(got) < want:
                more = reader.read(want - len(got))
                assert more, "zst ends early"
                got += more
            assert got == a.read(want)
            left -= want
        tail = reader.read(1 << 20)
        assert tail == bytes(sector_ceil(size) - size) and reader.read(1) == b""


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture(scope="module")
def every(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """One OVA holding a disk of every preset (holes, zero grains, random, text, odd sizes)."""
    return _build(tmp_path_factory.mktemp("every"), "every", PRESETS)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return _build(tmp_path_factory.mktemp("small"), "small", ["odd_size"])


def disk_names(built: Built) -> list[str]:
    return ["%s-disk%d.vmdk" % (built.stem, i + 1) for i in range(len(built.raws))]


def test_raw_round_trip_every_disk(every: Built, tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    summary = extract(every.path, out)
    stems = [n[:-len(".vmdk")] for n in disk_names(every)]
    assert listing(out) == sorted(["every.ovf", "every.mf", *(s + ".raw" for s in stems)])
    assert (out / "every.ovf").read_bytes() == every.data("every.ovf")
    assert (out / "every.mf").read_bytes() == every.data("every.mf")
    for raw, stem in zip(every.raws, stems):
        assert_same_disk(raw, out / (stem + ".raw"))
    # holes stay holes: the 64 MiB empty disk takes (almost) no blocks
    empty = out / (stems[PRESETS.index("empty")] + ".raw")
    assert empty.stat().st_size == 64 << 20 and empty.stat().st_blocks * 512 < 1 << 20
    doc = summary.as_dict()
    assert json.loads(json.dumps(doc)) == doc
    assert [d["capacity_bytes"] for d in doc["disks"]] == [sector_ceil(r.stat().st_size)  # type: ignore[index]
                                                           for r in every.raws]
    # the CLI does the same, into a fresh folder, and says what it wrote in --json
    code, stdout, err = run_cli(capsys, "extract", every.path, "-o", tmp_path / "cli", "--json")
    assert code == 0, err
    files = {Path(f["path"]).name: f["size"] for f in json.loads(stdout)["files"]}
    assert files == {p.name: p.stat().st_size for p in (tmp_path / "cli").iterdir()}
    for stem in stems:
        assert filecmp.cmp(out / (stem + ".raw"), tmp_path / "cli" / (stem + ".raw"), shallow=False)


@pytest.mark.interop
def test_qemu_img_compare(every: Built, tmp_path: Path, qemu_img) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    extract(every.path, out)
    vmdks = tmp_path / "vmdk"
    extract(every.path, vmdks, format="vmdk")
    for raw, name in zip(every.raws, disk_names(every)):
        stem = name[:-len(".vmdk")]
        cmp = qemu_img("compare", "-f", "raw", "-F", "raw", raw, out / (stem + ".raw"))
        assert cmp.returncode == 0, cmp.stdout + cmp.stderr
        cmp = qemu_img("compare", "-f", "raw", "-F", "vmdk", out / (stem + ".raw"), vmdks / name)
        assert cmp.returncode == 0, cmp.stdout + cmp.stderr


def test_format_vmdk_gives_the_member_bytes(every: Built, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, _o, err = run_cli(capsys, "extract", every.path, "-o", out, "--format", "vmdk")
    assert code == 0, err
    with tarfile.open(every.path) as t:
        names = t.getnames()
        assert listing(out) == sorted(names)
        for name in names:
            f = t.extractfile(name)
            assert f is not None and (out / name).read_bytes() == f.read(), name


def test_format_zst_decompresses_to_the_raw(every: Built, tmp_path: Path) -> None:
    out = tmp_path / "out"
    extract(every.path, out, format="zst")
    for raw, name in zip(every.raws, disk_names(every)):
        zst = out / (name[:-len(".vmdk")] + ".raw.zst")
        assert zst.read_bytes()[:4] == b"\x28\xb5\x2f\xfd"          # a zstd frame
        assert_zst_is(raw, zst)
    assert not list(out.glob("*.partial"))


@pytest.mark.parametrize("preset", ["mixed", "odd_size"])
def test_bare_vmdk(tmp_path: Path, capsys: pytest.CaptureFixture[str], preset: str) -> None:
    raw = write_disk(tmp_path / "a.raw", *DISKS[preset])
    vmdk = tmp_path / "a.vmdk"
    convert(raw, vmdk, fsync=False)
    summary = extract(vmdk, tmp_path / "back.raw")
    assert summary.files == [(str(tmp_path / "back.raw"), sector_ceil(raw.stat().st_size))]
    assert_same_disk(raw, tmp_path / "back.raw")
    code, _o, err = run_cli(capsys, "extract", vmdk, "-o", tmp_path / "back.zst", "--format", "zst")
    assert code == 0, err
    assert_zst_is(raw, tmp_path / "back.zst")
    code, _o, err = run_cli(capsys, "extract", vmdk, "-o", tmp_path / "x.vmdk", "--format", "vmdk")
    assert code == 2 and "--format vmdk" in err and not (tmp_path / "x.vmdk").exists()
    assert not list(tmp_path.glob("*.partial"))


def test_folder_form(tmp_path: Path) -> None:
    raw = write_disk(tmp_path / "a.raw", *DISKS["mixed"])
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    pack([raw], pkg / "app.ovf", fsync=False)
    # the folder holds other things too: they are not part of the package
    (pkg / "a.raw").write_bytes(raw.read_bytes())
    (pkg / "notes.txt").write_text("not referenced\n")
    for source, out in ((pkg / "app.ovf", tmp_path / "o1"), (pkg, tmp_path / "o2")):
        extract(source, out)
        assert listing(out) == ["app-disk1.raw", "app.mf", "app.ovf"]
        assert_same_disk(raw, out / "app-disk1.raw")
        assert (out / "app.ovf").read_bytes() == (pkg / "app.ovf").read_bytes()


# -- atomic outputs ---------------------------------------------------------------------------

def corrupt_disk_ova(folder: Path, base: Built) -> Path:
    name = disk_names(base)[0]
    data = base.data(name)
    pos, size = first_grain(data)
    folder.mkdir(parents=True, exist_ok=True)
    return write_tar(folder / (base.stem + ".ova"),
                     replace(base.members, name, flip(data, pos + 12 + size // 2, 0xFF)))


@pytest.mark.parametrize("fmt", ["raw", "zst"])
def test_corrupt_disk_leaves_no_partial(small: Built, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    path = corrupt_disk_ova(tmp_path / "pkg", small)
    out = tmp_path / "out"
    with pytest.raises(VmdkFormatError) as info:
        extract(path, out, format=fmt)
    assert info.value.rule == "vmdk.grain.inflate"
    assert info.value.path == str(path) and info.value.member == "small-disk1.vmdk"
    # all or nothing: not the descriptor and manifest that were whole before the failure
    # (they were left behind), not the folder extract created
    assert not out.exists()
    code, _o, err = run_cli(capsys, "extract", path, "-o", tmp_path / "cli", "--format", fmt)
    assert code == 1 and "[vmdk.grain.inflate]" in err
    assert not (tmp_path / "cli").exists()
    assert listing(tmp_path) == ["pkg", "pkg/small.ova"]


@pytest.mark.parametrize("case", ["inflate-bomb", "footer-gd-past-eof"])
def test_hostile_vmdk_member_leaves_no_partial(small: Built, tmp_path: Path, case: str) -> None:
    rule = HOSTILE_VMDK[case][1]
    path = hostile_vmdk_ova(tmp_path / "pkg", small, case)
    out = tmp_path / "out"
    for fmt in ("raw", "zst"):
        with pytest.raises(VmdkFormatError) as info:
            extract(path, out, format=fmt)
        assert info.value.rule == rule
        assert not out.exists()


def test_bad_grain_directory_does_not_matter_to_extract(small: Built, tmp_path: Path) -> None:
    """extract follows the markers, not the GD/GT (verify reports the bad entry): the disk
    still comes back whole."""
    path = hostile_vmdk_ova(tmp_path / "pkg", small, "gd-entry-past-eof")
    extract(path, tmp_path / "out")
    assert_same_disk(small.raws[0], tmp_path / "out" / "small-disk1.raw")


def test_corrupt_bare_vmdk_leaves_nothing(tmp_path: Path) -> None:
    raw = write_disk(tmp_path / "a.raw", *DISKS["random"])
    vmdk = tmp_path / "a.vmdk"
    convert(raw, vmdk, fsync=False)
    data = vmdk.read_bytes()
    pos, size = first_grain(data)
    vmdk.write_bytes(flip(data, pos + 12 + size // 2, 0xFF))
    before = listing(tmp_path)
    for target, fmt in ((tmp_path / "back.raw", "raw"), (tmp_path / "back.zst", "zst")):
        with pytest.raises(VmdkFormatError):
            extract(vmdk, target, format=fmt)
    assert listing(tmp_path) == before


# -- hostile packages write nothing, anywhere -------------------------------------------------

@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tar_member_writes_nothing(small: Built, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str], case: str) -> None:
    rule, needle = HOSTILE[case]
    pkg = tmp_path / "pkg"
    path = hostile_ova(pkg, small, case)
    out = pkg / "out"
    before = listing(tmp_path)
    with pytest.raises(TarFormatError) as info:
        extract(path, out)
    assert info.value.rule == rule and needle in info.value.detail
    for fmt in ("raw", "vmdk", "zst"):
        code, _o, err = run_cli(capsys, "extract", path, "-o", out, "--format", fmt)
        assert code == 1 and "[%s]" % rule in err and str(path) in err
    # neither DIR nor anything beside it or above it was written
    assert listing(tmp_path) == before
    assert not Path("/tmp/ovfstream-absolute.txt").exists()


@pytest.mark.parametrize("descriptor", [XXE, LAUGHS], ids=["xxe", "billion-laughs"])
def test_hostile_descriptor_writes_nothing(small: Built, tmp_path: Path, descriptor: bytes) -> None:
    path = hostile_descriptor_ova(tmp_path / "pkg", small, descriptor)
    before = listing(tmp_path)
    with pytest.raises(OvfFormatError):
        extract(path, tmp_path / "pkg" / "out")
    assert listing(tmp_path) == before


@pytest.mark.parametrize("keep", [100, 2000, 60000])
def test_truncated_ova_writes_nothing(small: Built, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str], keep: int) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    path = pkg / "cut.ova"
    path.write_bytes(small.path.read_bytes()[:keep])     # in a header, the descriptor, the disk
    before = listing(tmp_path)
    with pytest.raises(TarFormatError) as info:
        extract(path, pkg / "out")
    assert info.value.rule == "ova.tar.truncated"
    code, _o, err = run_cli(capsys, "extract", path, "-o", pkg / "out")
    assert code == 1 and "[ova.tar.truncated]" in err
    assert listing(tmp_path) == before


def test_names_stay_inside_the_folder(small: Built, tmp_path: Path) -> None:
    """Every file extract writes is directly inside DIR (the reference: tarfile's listing)."""
    out = tmp_path / "deep" / "out"
    summary = extract(small.path, out)
    assert {Path(p).parent for p, _n in summary.files} == {out}
    assert listing(tmp_path) == ["deep", "deep/out", "deep/out/small-disk1.raw",
                                 "deep/out/small.mf", "deep/out/small.ovf"]
    assert [n for n, _d in read_members(small.path)] == ["small.ovf", "small.mf", "small-disk1.vmdk"]


def test_usage_errors(small: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a_file = tmp_path / "file"
    a_file.write_bytes(b"x")
    with pytest.raises(UsageError):
        extract(small.path, a_file)
    assert run_cli(capsys, "extract", small.path, "-o", a_file)[0] == 2
    with pytest.raises(UsageError):
        extract(small.path, tmp_path / "o", format="qcow2")
    assert run_cli(capsys, "extract", small.path, "-o", tmp_path / "o", "--format", "qcow2")[0] == 2
    assert run_cli(capsys, "extract", small.path)[0] == 2
    assert not (tmp_path / "o").exists() and a_file.read_bytes() == b"x"
    code, _o, err = run_cli(capsys, "extract", tmp_path / "missing.ova", "-o", tmp_path / "o")
    assert code == 1 and "missing.ova" in err and not (tmp_path / "o").exists()
    assert os.listdir(tmp_path) == ["file"]


# -- all or nothing (issue 8, item 11) --------------------------------------------------------

def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("fmt", ["raw", "zst", "vmdk"])
def test_failed_extract_leaves_an_existing_folder_as_it_was(small: Built, tmp_path: Path,
                                                            fmt: str) -> None:
    """A folder that existed (with files, one of them named like an output) is exactly as it
    was after a failed extract: no new file, no temporary, the old small.ovf not replaced."""
    path = corrupt_disk_ova(tmp_path / "pkg", small)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_bytes(b"mine\n")
    (out / "small.ovf").write_bytes(b"an older descriptor\n")
    before = tree(out)
    if fmt == "vmdk":   # nothing inflates: fail while writing instead (the last member)
        with pytest.raises(OSError):
            _fail_on_last_copy(path, out)
    else:
        with pytest.raises(VmdkFormatError):
            extract(path, out, format=fmt)
    assert tree(out) == before and sorted(os.listdir(out)) == ["keep.txt", "small.ovf"]


def _fail_on_last_copy(path: Path, out: Path) -> None:
    module = importlib.import_module("ovfstream.extract")   # the package attribute is the function
    real = module._copy_exact
    calls = []

    def copy(src, dst, n):  # type: ignore[no-untyped-def]
        calls.append(n)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        real(src, dst, n)

    module._copy_exact = copy
    try:
        extract(path, out, format="vmdk")
    finally:
        module._copy_exact = real


def test_interrupted_extract_leaves_nothing(small: Built, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (or SIGTERM, which unwinds the same way) while the disk is inflated: neither the
    descriptor and manifest already written nor the folders created are left."""
    from ovfstream.vmdk.reader import VmdkReader

    def interrupted(self, fn, *, workers=1):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt
        yield  # a generator, as the real walk

    monkeypatch.setattr(VmdkReader, "map_grains", interrupted)
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(KeyboardInterrupt):
        extract(small.path, out)
    assert os.listdir(tmp_path) == []


def test_successful_extract_into_an_existing_folder(small: Built, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_bytes(b"mine\n")
    extract(small.path, out)
    assert sorted(os.listdir(out)) == ["keep.txt", "small-disk1.raw", "small.mf", "small.ovf"]
    assert (out / "keep.txt").read_bytes() == b"mine\n"
