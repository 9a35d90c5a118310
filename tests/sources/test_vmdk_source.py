"""VMDK inputs (sources/vmdk.py): every subformat qemu-img writes, ovfstream's own stream files,
and hostile ones.  Every image is made by the real qemu-img from a generated raw disk; each
conversion is checked with ``qemu-img compare`` against the input and ``qemu-img check``."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ovfstream import cli
from ovfstream.convert import convert
from ovfstream.errors import FormatError, UnsupportedError
from ovfstream.pack import pack
from ovfstream.sources import open_source
from ovfstream.sources.vmdk import VmdkSource
from ovfstream.verify import verify
from ovfstream.vmdk.layout import MARKER, SECTOR, Header

from ovfs_testlib import REPRODUCIBLE_ENGINE, tool, write_disk

MiB = 1 << 20
GiB = 1 << 30
SUBFORMATS = ["monolithicSparse", "streamOptimized", "monolithicFlat", "twoGbMaxExtentSparse",
              "twoGbMaxExtentFlat"]
LAYOUT = [(0, "text", 200_000), (5 * MiB, "random", 3 * MiB), (33 * MiB - 700, "text", 1400),
          (20 * MiB, "zero", MiB), (40 * MiB - 1000, "random", 1000)]


def qemu(*args: object, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([tool("qemu-img"), *map(str, args)], capture_output=True, text=True,
                          timeout=60)
    if ok:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def make_vmdk(raw: Path, subformat: str, name: str | None = None, *extra: str) -> Path:
    out = raw.with_name((name or subformat) + ".vmdk")
    qemu("convert", "-q", "-f", "raw", "-O", "vmdk", "-o", "subformat=" + subformat, *extra,
         raw, out)
    return out


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return write_disk(tmp_path_factory.mktemp("vmdk") / "disk.raw", 40 * MiB, LAYOUT)


def converted(image: Path, tmp_path: Path, name: str = "out.vmdk") -> Path:
    out = tmp_path / name
    # (outputs of separate runs are compared)
    assert cli.main(["convert", str(image), "-o", str(out), "--quiet",
                     "--engine", REPRODUCIBLE_ENGINE]) == 0
    assert qemu("compare", image, out, ok=False).returncode == 0
    qemu("check", out)
    return out


def content_id(vmdk: Path) -> str:
    result = verify(vmdk, deep=True)
    assert result.ok, [str(f) for f in result.findings]
    return result.content_ids[str(vmdk)]


# ---------------------------------------------------------------------------------------------
# Every producer's layout reads back as the same disk

@pytest.mark.interop
@pytest.mark.parametrize("subformat", SUBFORMATS)
def test_qemu_subformats_convert_to_the_same_disk(raw, subformat, tmp_path):
    image = make_vmdk(raw, subformat)
    out = converted(image, tmp_path)
    assert qemu("compare", "-f", "raw", raw, out, ok=False).returncode == 0
    with open_source(image) as src:
        assert isinstance(src, VmdkSource) and src.size_bytes == raw.stat().st_size
        # holes are never read: the extents are the grains (or flat data) that exist
        assert src.data_bytes < 10 * MiB


@pytest.mark.interop
@pytest.mark.parametrize("adapter", ["ide", "lsilogic", "buslogic"])
def test_adapter_types(raw, adapter, tmp_path):
    image = make_vmdk(raw, "monolithicSparse", "ad-" + adapter, "-o", "adapter_type=" + adapter)
    converted(image, tmp_path)


@pytest.mark.interop
@pytest.mark.parametrize("subformat", ["twoGbMaxExtentSparse", "twoGbMaxExtentFlat"])
def test_split_extents_over_2_gib(subformat, tmp_path):
    raw = write_disk(tmp_path / "big.raw", 5 * GiB, [(2 * GiB - 5000, "random", 20000),
                                                    (4 * GiB + 100, "text", 3000),
                                                    (5 * GiB - 7000, "random", 7000)])
    image = make_vmdk(raw, subformat)
    extents = [line for line in image.read_text().splitlines() if line.startswith("RW ")]
    assert len(extents) == 3
    with open_source(image) as src:
        assert len(src.files) == 4   # the descriptor and its three extent files
    converted(image, tmp_path)


@pytest.mark.interop
@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized"])
def test_over_4_gib_with_a_partial_last_grain(subformat, tmp_path):
    size = 4 * GiB + 3 * 65536 + 5 * SECTOR
    raw = write_disk(tmp_path / "odd.raw", size, [(4 * GiB - 100, "random", 300),
                                                  (size - 3000, "random", 3000)])
    out = converted(make_vmdk(raw, subformat), tmp_path)
    assert qemu("compare", "-f", "raw", raw, out, ok=False).returncode == 0


@pytest.mark.interop
def test_ovfstream_stream_vmdk_round_trips(raw, tmp_path):
    ours = tmp_path / "ours.vmdk"
    convert(raw, ours)            # GD at the end, found through the footer
    again = converted(ours, tmp_path, "again.vmdk")
    assert content_id(again) == content_id(ours)
    (tmp_path / "next").mkdir()
    third = converted(again, tmp_path / "next", "again.vmdk")  # the name is in the descriptor
    assert third.read_bytes() == again.read_bytes()   # VMDK in, VMDK out: a fixed point


@pytest.mark.interop
def test_pack_a_vmdk_then_verify(raw, tmp_path):
    image = make_vmdk(raw, "streamOptimized")
    ova = tmp_path / "vm.ova"
    pack([image], ova)
    result = verify(ova, deep=True)
    assert result.ok, [str(f) for f in result.findings]
    assert list(result.content_ids.values()) == [content_id(converted(raw, tmp_path, "r.vmdk"))]


# ---------------------------------------------------------------------------------------------
# Property: any small disk reads back byte for byte from both sparse layouts

@pytest.mark.interop
@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size_grains=st.integers(1, 40), tail=st.integers(0, 127),
       writes=st.lists(st.tuples(st.integers(0, 40 * 65536), st.integers(1, 70000)),
                       max_size=4),
       seed=st.integers(0, 1000))
def test_property_sparse_and_stream_read_back(tmp_path_factory, size_grains, tail, writes, seed):
    tool("qemu-img")
    folder = tmp_path_factory.mktemp("prop")
    size = size_grains * 65536 + tail * SECTOR
    layout = [(min(off, size - 1), "random", min(n, size - min(off, size - 1)))
              for off, n in writes]
    raw = write_disk(folder / "p.raw", size, layout, seed=seed)
    expected = raw.read_bytes()
    for subformat in ("monolithicSparse", "streamOptimized"):
        image = make_vmdk(raw, subformat)
        with open_source(image) as src:
            assert src.size_bytes == size
            got = src.read_at(0, size)
        assert got == expected, subformat


# ---------------------------------------------------------------------------------------------
# Hostile inputs: exit 1 (format) or 2 (usage), a message naming file, offset and rule

def refused(image: Path, tmp_path: Path, rule: str, capsys, *, code: int = 1) -> str:
    out = tmp_path / "refused.vmdk"
    assert cli.main(["convert", str(image), "-o", str(out), "--quiet"]) == code
    err = capsys.readouterr().err
    assert rule in err and "Traceback" not in err, err
    assert not out.exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".refused")]
    return err


def sparse_tables(image: Path) -> tuple[Header, int, int]:
    """(header, byte offset of the GD, byte offset of GD entry 0's grain table)."""
    data = image.read_bytes()
    h = Header.unpack(data[:SECTOR])
    gd = h.gd_offset_sectors * SECTOR
    return h, gd, struct.unpack_from("<I", data, gd)[0] * SECTOR


def patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.interop
def test_truncated_stream_without_footer_through_the_real_command(raw, tmp_path):
    ours = tmp_path / "ours.vmdk"
    convert(raw, ours)
    with open(ours, "r+b") as f:
        f.truncate(ours.stat().st_size - 3 * SECTOR)
    out = tmp_path / "x.vmdk"
    proc = subprocess.run([sys.executable, "-m", "ovfstream", "convert", str(ours), "-o",
                           str(out)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 1, proc.stderr
    assert "vmdk.footer" in proc.stderr and str(ours) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.interop
def test_gt_entry_past_the_end_of_the_file(raw, tmp_path, capsys):
    image = make_vmdk(raw, "monolithicSparse", "gt-eof")
    _h, _gd, gt = sparse_tables(image)
    patch(image, gt, struct.pack("<I", 0x7FFFFFF0))
    err = refused(image, tmp_path, "vmdk.gt.entry", capsys)
    assert "@0x%x" % gt in err


@pytest.mark.interop
def test_gd_entry_pointing_into_the_header(raw, tmp_path, capsys):
    image = make_vmdk(raw, "monolithicSparse", "gd-head")
    _h, gd, _gt = sparse_tables(image)
    patch(image, gd, struct.pack("<I", 1))
    refused(image, tmp_path, "vmdk.gd.entry", capsys)


@pytest.mark.interop
def test_two_gt_entries_sharing_a_grain(raw, tmp_path, capsys):
    image = make_vmdk(raw, "monolithicSparse", "shared")
    _h, _gd, gt = sparse_tables(image)
    first = struct.unpack_from("<I", image.read_bytes(), gt)[0]
    assert first
    patch(image, gt + 4, struct.pack("<I", first))
    refused(image, tmp_path, "vmdk.gt.grains", capsys)


@pytest.mark.interop
def test_grain_inflating_to_the_wrong_size(raw, tmp_path, capsys):
    ours = tmp_path / "ours.vmdk"
    convert(raw, ours)
    at = 128 * SECTOR          # the first grain marker (overHead)
    lba, size = struct.unpack_from("<QI", ours.read_bytes(), at)
    short = zlib.compress(b"x" * 1000)
    assert len(short) < size
    patch(ours, at, struct.pack("<QI", lba, len(short)) + short)
    refused(ours, tmp_path / "", "vmdk.grain.inflate", capsys)


@pytest.mark.interop
def test_stream_gt_entry_at_another_grain_marker(raw, tmp_path, capsys):
    image = make_vmdk(raw, "streamOptimized", "swap")      # qemu: GD and GTs in the head
    _h, _gd, gt = sparse_tables(image)
    data = image.read_bytes()
    first, second = struct.unpack_from("<II", data, gt)
    assert first and second
    patch(image, gt, struct.pack("<II", second, first))   # each at the other's marker
    refused(image, tmp_path, "vmdk.gt.entry", capsys)


def flat_copy(raw: Path, tmp_path: Path, text_change: tuple[str, str],
              folder_name: str = "flat") -> Path:
    folder = tmp_path / folder_name
    folder.mkdir()
    image = make_vmdk(raw, "monolithicFlat", "f")
    descriptor = folder / "f.vmdk"
    descriptor.write_text(image.read_text().replace(*text_change))
    os.link(raw.with_name("f-flat.vmdk"), folder / "f-flat.vmdk")
    return descriptor


@pytest.mark.interop
@pytest.mark.parametrize("name", ["missing-flat.vmdk", "../f-flat.vmdk", "/dev/zero",
                                  "/etc/passwd"])
def test_extent_names_missing_or_outside_the_folder(raw, tmp_path, name, capsys):
    descriptor = flat_copy(raw, tmp_path, ('"f-flat.vmdk"', '"%s"' % name))
    err = refused(descriptor, tmp_path, "vmdk.extent.file", capsys)
    assert str(descriptor) in err


@pytest.mark.interop
def test_flat_extent_smaller_than_its_descriptor_line(raw, tmp_path, capsys):
    sectors = raw.stat().st_size // SECTOR
    descriptor = flat_copy(raw, tmp_path, ("RW %d FLAT" % sectors, "RW %d FLAT" % (sectors + 1)))
    refused(descriptor, tmp_path, "vmdk.extent.size", capsys)


@pytest.mark.interop
def test_flat_offset_is_honoured(raw, tmp_path):
    sectors = raw.stat().st_size // SECTOR
    folder = tmp_path / "off"
    folder.mkdir()
    with open(raw, "rb") as src, open(folder / "data.bin", "wb") as dst:
        dst.write(b"\xee" * (8 * SECTOR))
        dst.write(src.read())
    descriptor = folder / "o.vmdk"
    descriptor.write_text('# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n'
                          'createType="monolithicFlat"\n\nRW %d FLAT "data.bin" 8\n'
                          'RW 2048 ZERO\n' % sectors)
    with open_source(descriptor) as src:
        assert src.size_bytes == raw.stat().st_size + MiB
        assert src.read_at(0, raw.stat().st_size) == raw.read_bytes()
        assert src.extents[-1][1] <= raw.stat().st_size   # the ZERO extent is a hole


@pytest.mark.interop
def test_sparse_extent_capacity_differs_from_the_descriptor(raw, tmp_path, capsys):
    image = make_vmdk(raw, "twoGbMaxExtentSparse", "tg")
    sectors = raw.stat().st_size // SECTOR
    image.write_text(image.read_text().replace("RW %d SPARSE" % sectors,
                                               "RW %d SPARSE" % (sectors - 128)))
    refused(image, tmp_path, "vmdk.extent.size", capsys)


@pytest.mark.interop
def test_unread_extent_types_and_bad_lines(raw, tmp_path, capsys):
    sectors = raw.stat().st_size // SECTOR
    vmfs = flat_copy(raw, tmp_path, ("FLAT", "VMFS"))
    with pytest.raises(UnsupportedError, match="type VMFS is not read"):
        VmdkSource(vmfs)
    bad = flat_copy(raw, tmp_path, ('RW %d FLAT "f-flat.vmdk"' % sectors,
                                    'RW %d FLAT f-flat.vmdk' % sectors), "bad")
    refused(bad, tmp_path, "vmdk.descriptor.extent", capsys)


def qemu_io(image: Path, *commands: str) -> None:
    args = [tool("qemu-io")]
    for c in commands:
        args += ["-c", c]
    proc = subprocess.run(args + [str(image)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def make_child(parent: Path, name: str, *options: str) -> Path:
    child = parent.with_name(name)
    qemu("create", "-q", "-f", "vmdk", *options, "-b", parent.name, "-F", "vmdk", child)
    return child


@pytest.mark.interop
@pytest.mark.parametrize("subformat", ["monolithicSparse", "streamOptimized"])
def test_delta_chains_read_through_their_parents(raw, subformat, tmp_path):
    base = make_vmdk(raw, subformat, "base-" + subformat)
    child = make_child(base, "child-%s.vmdk" % subformat)
    qemu_io(child, "write -P 0x55 1M 100k", "write -P 0x66 39M 64k")
    # zeroed_grain=on: a zeroed GT entry hides the parent's data below it
    grandchild = make_child(child, "grand-%s.vmdk" % subformat, "-o", "zeroed_grain=on")
    qemu_io(grandchild, "write -z 5M 1M", "write -P 0x77 6M 3k")
    with open_source(grandchild) as src:
        assert len(src.files) == 3         # every file of the chain: alias checks, closing
    out = converted(grandchild, tmp_path)
    assert qemu("compare", child, out, ok=False).returncode == 1   # the grandchild's writes


@pytest.mark.interop
def test_parent_missing_changed_or_looping(raw, tmp_path, capsys):
    base = make_vmdk(raw, "monolithicSparse", "pbase")
    child = make_child(base, "pchild.vmdk")
    qemu_io(child, "write -P 0x55 1M 64k")
    moved = base.with_name("pbase-moved.vmdk")
    base.rename(moved)
    err = refused(child, tmp_path, "vmdk.parent.missing", capsys)
    assert "pbase.vmdk" in err and str(child) in err
    moved.rename(base)
    qemu_io(base, "write -P 0x11 0 512")    # the base changes: qemu gives it a new CID
    refused(child, tmp_path, "vmdk.parent.cid", capsys)
    # Descriptors naming each other: the depth bound ends the loop.
    first, second = tmp_path / "one.vmdk", tmp_path / "two.vmdk"
    for me, other in ((first, second), (second, first)):
        me.write_text('# Disk DescriptorFile\nversion=1\nCID=0000000a\nparentCID=0000000a\n'
                      'parentFileNameHint="%s"\ncreateType="monolithicFlat"\nRW 2048 ZERO\n'
                      % other.name)
    refused(first, tmp_path, "vmdk.parent.depth", capsys)
    proc = subprocess.run([sys.executable, "-m", "ovfstream", "convert", str(first), "-o",
                           str(tmp_path / "loop.vmdk")], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 1 and "vmdk.parent.depth" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "loop.vmdk").exists()


@pytest.mark.interop
def test_output_onto_a_parent_is_refused(raw, tmp_path, capsys):
    base = make_vmdk(raw, "monolithicSparse", "abase")
    child = make_child(base, "achild.vmdk")
    before = base.read_bytes()
    assert cli.main(["convert", str(child), "-o", str(base), "--quiet"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert base.read_bytes() == before


@pytest.mark.interop
def test_output_onto_an_extent_file_is_refused(raw, tmp_path, capsys):
    folder = tmp_path / "alias"
    folder.mkdir()
    image = make_vmdk(raw, "twoGbMaxExtentFlat", "a")
    extent = raw.with_name("a-f001.vmdk")
    before = extent.stat().st_mtime_ns
    assert cli.main(["convert", str(image), "-o", str(extent), "--quiet"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert extent.stat().st_mtime_ns == before
    assert cli.main(["pack", str(image), "-o", str(extent), "--quiet"]) == 2


def test_not_a_vmdk_at_all(tmp_path, capsys):
    bogus = tmp_path / "b.vmdk"
    bogus.write_bytes(b"# Disk DescriptorFile\n\xff\xfe")
    with pytest.raises(FormatError, match="vmdk.descriptor.file"):
        VmdkSource(bogus)
    empty = tmp_path / "e.vmdk"
    empty.write_text("# Disk DescriptorFile\nversion=1\n")
    with pytest.raises(FormatError, match="no extent lines"):
        VmdkSource(empty)


@pytest.mark.interop
def test_every_gd_entry_naming_one_table_costs_little(tmp_path, capsys):
    raw = write_disk(tmp_path / "wide.raw", 64 * GiB, [(0, "random", 70000)])
    image = make_vmdk(raw, "monolithicSparse", "wide")
    h, gd, _gt = sparse_tables(image)
    n_spans = -(-h.capacity_sectors // (128 * 512))
    data = image.read_bytes()
    first_gt = struct.unpack_from("<I", data, gd)[0]
    empty_gt = struct.unpack_from("<I", data, gd + 4)[0]
    patch(image, gd, struct.pack("<I", empty_gt) * n_spans)     # 4096 spans, one empty table
    with open_source(image) as src:
        assert src.extents == []
    patch(image, gd, struct.pack("<I", first_gt) * n_spans)     # ... one table with grains
    refused(image, tmp_path, "vmdk.gt.grains", capsys)
