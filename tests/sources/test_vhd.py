"""VhdSource on fixed and dynamic VHDs made by the real qemu-img ("vpc"), and on tampered ones.

Every image comes from a generated raw disk (ovfs_testlib); a round trip is ovfstream
convert, then qemu-img compare against the VHD and qemu-img check of the VMDK.  Hostile
images are qemu-img's with one field changed (checksums recomputed where the test is about
another rule).
"""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ovfstream.convert import convert
from ovfstream.errors import UnsupportedError
from ovfstream.sources import open_source
from ovfstream.sources.vhd import VhdSource, vhd_virtual_size

from ovfs_testlib import MIB, write_disk

from .qemu_images import (TamperedImage, assert_cli_refuses, assert_pack_verifies,
                          assert_refused, assert_round_trip, qemu_convert, read_all)

pytestmark = pytest.mark.interop

SUBFORMATS = {
    "fixed": ["subformat=fixed"],
    "fixed-force-size": ["subformat=fixed", "force_size=on"],
    "dynamic": ["subformat=dynamic"],
    "dynamic-force-size": ["subformat=dynamic", "force_size=on"],
}


def _vhd(make_disk, tmp_path: Path, disk: str, subformat: str) -> Path:
    return qemu_convert(make_disk(disk), tmp_path / (disk + ".vhd"), "vpc", SUBFORMATS[subformat])


@pytest.mark.parametrize("subformat", sorted(SUBFORMATS))
@pytest.mark.parametrize("disk", ["mixed", "odd_size", "sector_tail", "empty"])
def test_qemu_vhds_round_trip(make_disk, tmp_path, disk, subformat):
    image = _vhd(make_disk, tmp_path, disk, subformat)
    assert_round_trip(image, "vpc", tmp_path / "out.vmdk")


def test_dynamic_holes_are_never_read(make_disk, tmp_path):
    image = _vhd(make_disk, tmp_path, "mixed", "dynamic-force-size")
    with open_source(image) as source:
        # mixed writes data at 5, 33, 40 and 100 MiB: 2 MiB blocks 2-3, 16, 20-21 and 49
        # (its explicit zeros at 70 MiB qemu-img leaves unallocated).
        assert source.extents == [(4 * MIB, 8 * MIB), (32 * MIB, 34 * MIB),
                                  (40 * MIB, 44 * MIB), (98 * MIB, 100 * MIB)]
        assert source.size_bytes == 100 * MIB


def test_sparse_disk_over_4_gib_with_a_partial_last_block(tmp_path):
    size = (5 << 30) + 3 * MIB + 1536  # the last 2 MiB block and 64 KiB grain are partial
    raw = write_disk(tmp_path / "big.raw", size, [(4608 * MIB, "random", 70_000),
                                                  (size - 5000, "text", 5000)])
    for subformat in ("dynamic-force-size", "fixed-force-size"):
        image = qemu_convert(raw, tmp_path / (subformat + ".vhd"), "vpc", SUBFORMATS[subformat])
        assert_round_trip(image, "vpc", tmp_path / (subformat + ".vmdk"))
        with open_source(image) as source:
            assert source.size_bytes == size and source.data_bytes < 8 * MIB


def test_pack_of_a_vhd_verifies(make_disk, tmp_path):
    assert_pack_verifies(_vhd(make_disk, tmp_path, "mixed", "dynamic"), tmp_path / "a.ova")


def test_virtual_size_follows_qemu():
    # Virtual PC ("vpc ") and older qemu ("qemu"): the CHS geometry; Hyper-V ("win "), qemu's
    # force_size ("qem2"): the current size; the largest geometry: the current size.
    assert vhd_virtual_size(b"vpc ", 10 * MIB, 20, 16, 63) == 20 * 16 * 63 * 512
    assert vhd_virtual_size(b"qemu", 10 * MIB, 20, 16, 63) == 20 * 16 * 63 * 512
    assert vhd_virtual_size(b"win ", 10 * MIB, 20, 16, 63) == 10 * MIB
    assert vhd_virtual_size(b"qem2", 10 * MIB + 100, 20, 16, 63) == 10 * MIB
    assert vhd_virtual_size(b"vpc ", 3 << 40, 65535, 16, 255) == 3 << 40


# -- tampering helpers ---------------------------------------------------------------------

def _sum_checksum(data: bytearray, at: int) -> None:
    struct.pack_into(">I", data, at, 0)
    struct.pack_into(">I", data, at, ~sum(data) & 0xFFFFFFFF)


class Dynamic(TamperedImage):
    """A qemu-img dynamic VHD opened for tampering: footer copy, header, BAT."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.header_at = struct.unpack_from(">Q", self.data, 16)[0]
        self.table_at = struct.unpack_from(">Q", self.data, self.header_at + 16)[0]
        self.block_bytes = struct.unpack_from(">I", self.data, self.header_at + 32)[0]

    def bat(self, index: int) -> int:
        return struct.unpack_from(">I", self.data, self.table_at + 4 * index)[0]

    def set_bat(self, index: int, sector: int) -> None:
        struct.pack_into(">I", self.data, self.table_at + 4 * index, sector)

    def set_footer(self, fmt: str, at: int, value: int, *, fix: bool = True) -> None:
        for base in (0, len(self.data) - 512):
            struct.pack_into(fmt, self.data, base + at, value)
            if fix:
                footer = bytearray(self.data[base:base + 512])
                _sum_checksum(footer, 64)
                self.data[base:base + 512] = footer

    def set_header(self, fmt: str, at: int, value: int, *, fix: bool = True) -> None:
        struct.pack_into(fmt, self.data, self.header_at + at, value)
        if fix:
            header = bytearray(self.data[self.header_at:self.header_at + 1024])
            _sum_checksum(header, 36)
            self.data[self.header_at:self.header_at + 1024] = header



@pytest.fixture
def dynamic(make_disk, tmp_path) -> Dynamic:
    return Dynamic(_vhd(make_disk, tmp_path, "mixed", "dynamic-force-size"))


def test_mixed_sector_bitmap_reads_zeros_for_clear_bits(dynamic, tmp_path):
    raw = bytes(read_all(dynamic.path))
    block = 2  # holds the random data at 5 MiB
    bitmap_at = dynamic.bat(block) * 512
    dynamic.data[bitmap_at] = 0x0F            # sectors 0-3 clear, 4-7 set
    dynamic.data[bitmap_at + 5] = 0x00        # sectors 40-47 clear
    third = dynamic.bat(3) * 512
    dynamic.data[third:third + 512] = bytes(512)  # block 3: every bit clear, a hole
    image = dynamic.save("mixed-bitmap.vhd")
    expected = bytearray(raw)
    base = block * dynamic.block_bytes
    expected[base:base + 4 * 512] = bytes(4 * 512)
    expected[base + 40 * 512:base + 48 * 512] = bytes(8 * 512)
    expected[3 * dynamic.block_bytes:4 * dynamic.block_bytes] = bytes(dynamic.block_bytes)
    with open_source(image) as source:
        assert (3 * dynamic.block_bytes, 4 * dynamic.block_bytes) not in source.extents
        assert source.extents[0] == (4 * MIB, 6 * MIB)
    assert read_all(image) == bytes(expected)
    convert(image, tmp_path / "mixed.vmdk")


def test_old_511_byte_footer(make_disk, tmp_path):
    image = _vhd(make_disk, tmp_path, "odd_size", "fixed")
    short = tmp_path / "short-footer.vhd"
    short.write_bytes(image.read_bytes()[:-1])  # the reserved last byte is zero
    assert read_all(short) == read_all(image)
    assert isinstance(open_source(short), VhdSource)


def test_bad_footer_checksum(dynamic, tmp_path):
    dynamic.set_footer(">I", 64, 0x12345678, fix=False)
    assert_refused(dynamic.save("footer-checksum.vhd"), "vhd.footer", tmp_path)


def test_bad_version_and_disk_type(dynamic, tmp_path):
    dynamic.set_footer(">I", 12, 0x00020000)
    assert_refused(dynamic.save("version.vhd"), "vhd.footer", tmp_path)
    dynamic.set_footer(">I", 12, 0x00010000)
    dynamic.set_footer(">I", 60, 7)
    assert "disk type 7" in assert_refused(dynamic.save("type.vhd"), "vhd.footer", tmp_path)


def test_bad_dynamic_header_checksum(dynamic, tmp_path):
    dynamic.set_header(">I", 36, 1, fix=False)
    assert_refused(dynamic.save("header-checksum.vhd"), "vhd.dynamic", tmp_path)


@pytest.mark.parametrize("block_bytes", [0, 3 * MIB, 1 << 31, 256])
def test_block_size_not_allowed(dynamic, tmp_path, block_bytes):
    dynamic.set_header(">I", 32, block_bytes)
    assert "block size %d" % block_bytes in assert_refused(
        dynamic.save("block-size.vhd"), "vhd.dynamic", tmp_path)


def test_too_few_table_entries(dynamic, tmp_path):
    dynamic.set_header(">I", 28, 10)
    assert_refused(dynamic.save("entries.vhd"), "vhd.dynamic", tmp_path)


def test_bat_entry_past_the_end(dynamic, tmp_path):
    dynamic.set_bat(2, len(dynamic.data) // 512)
    assert_refused(dynamic.save("bat-eof.vhd"), "vhd.bat", tmp_path)


def test_two_blocks_sharing_bytes(dynamic, tmp_path):
    dynamic.set_bat(16, dynamic.bat(2))
    assert "overlaps" in assert_refused(dynamic.save("bat-alias.vhd"), "vhd.bat", tmp_path)


def test_block_over_the_table(dynamic, tmp_path):
    dynamic.set_bat(2, dynamic.table_at // 512)
    assert_refused(dynamic.save("bat-table.vhd"), "vhd.bat", tmp_path)


def test_table_past_the_end(dynamic, tmp_path):
    dynamic.set_header(">Q", 16, len(dynamic.data) - 8)
    assert_refused(dynamic.save("table-eof.vhd"), "vhd.bat", tmp_path)


def test_truncated_dynamic_vhd(dynamic, tmp_path):
    image = dynamic.path.with_name("truncated.vhd")
    image.write_bytes(bytes(dynamic.data[:len(dynamic.data) // 2]))
    assert_refused(image, "vhd.bat", tmp_path)
    image.write_bytes(bytes(dynamic.data[:300]))  # shorter than a footer
    assert_refused(image, "vhd.footer", tmp_path)


def test_fixed_disk_larger_than_its_data(make_disk, tmp_path):
    image = _vhd(make_disk, tmp_path, "odd_size", "fixed-force-size")
    fixed = TamperedImage(image)
    end = len(fixed.data) - 512
    struct.pack_into(">Q", fixed.data, end + 48, 1 << 40)
    footer = bytearray(fixed.data[end:])
    _sum_checksum(footer, 64)
    fixed.data[end:] = footer
    assert_refused(fixed.save("fixed-short.vhd"), "vhd.footer", tmp_path)


def _child_of(parent: Path, child: Path, locator: str, *, code: bytes = b"W2ru") -> Dynamic:
    """``child`` (a qemu-img dynamic VHD) made a differencing disk of ``parent``: disk type
    4, the parent's unique id, and one parent locator appended before the end footer."""
    vhd = Dynamic(child)
    name = locator.encode("utf-16-le")
    locator_at = len(vhd.data) - 512
    vhd.data[locator_at:locator_at] = name + bytes(-len(name) % 512)
    vhd.set_footer(">I", 60, 4)
    struct.pack_into(">4sII4xQ", vhd.data, vhd.header_at + 576, code, 1, len(name), locator_at)
    vhd.data[vhd.header_at + 40:vhd.header_at + 56] = parent.read_bytes()[68:84]
    vhd.set_header(">I", 60, 0)  # recompute the header checksum
    return vhd


def _merged(parent_raw: bytes, child: Dynamic, child_raw: bytes) -> bytes:
    """What a differencing disk reads: the child's sectors whose bitmap bit is 1, else the
    parent's (computed sector by sector, independently of the reader)."""
    out = bytearray(parent_raw)
    per_block = child.block_bytes // 512
    for index in range(len(out) // child.block_bytes):
        if child.bat(index) == 0xFFFFFFFF:
            continue
        bitmap = child.data[child.bat(index) * 512:child.bat(index) * 512 + 512]
        for sector in range(per_block):
            if bitmap[sector // 8] & (0x80 >> sector % 8):
                at = index * child.block_bytes + sector * 512
                out[at:at + 512] = child_raw[at:at + 512]
    return bytes(out)


@pytest.fixture
def chain(tmp_path):
    """A parent and a child VHD of the same 16 MiB disk, from different raw disks."""
    size = 16 * MIB
    parent_raw = write_disk(tmp_path / "p.raw", size, [(0, "random", 3 * MIB),
                                                       (9 * MIB, "text", 500_000)], seed=2)
    child_raw = write_disk(tmp_path / "c.raw", size, [(2 * MIB, "random", MIB + 5000),
                                                      (12 * MIB, "text", 100)], seed=3)
    options = SUBFORMATS["dynamic-force-size"]
    parent = qemu_convert(parent_raw, tmp_path / "base.vhd", "vpc", options)
    child = qemu_convert(child_raw, tmp_path / "child-q.vhd", "vpc", options)
    return parent, parent_raw, child, child_raw


def test_differencing_vhd_reads_its_parent(chain, tmp_path, qemu_img):
    parent, parent_raw, child, child_raw = chain
    vhd = _child_of(parent, child, ".\\base.vhd")
    bitmap_at = vhd.bat(1) * 512
    vhd.data[bitmap_at] = 0x0F  # block 1's first four sectors come from the parent
    image = vhd.save("child.vhd")
    want = _merged(parent_raw.read_bytes(), vhd, child_raw.read_bytes())
    assert want[2 * MIB:2 * MIB + 2048] == parent_raw.read_bytes()[2 * MIB:2 * MIB + 2048]
    assert read_all(image) == want
    expected = tmp_path / "expected.raw"
    expected.write_bytes(want)
    out = tmp_path / "child.vmdk"
    convert(image, out)
    proc = qemu_img("compare", "-f", "raw", "-F", "vmdk", expected, out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open_source(image) as source:
        assert len(source.files) == 2  # both files checked for changes, both closed


def test_differencing_vhd_by_absolute_locator(chain, tmp_path):
    parent, parent_raw, child, child_raw = chain
    vhd = _child_of(parent, child, str(parent), code=b"W2ku")
    want = _merged(parent_raw.read_bytes(), vhd, child_raw.read_bytes())
    assert read_all(vhd.save("child.vhd")) == want


def test_differencing_vhd_with_a_missing_parent(chain, tmp_path):
    parent, _, child, _ = chain
    vhd = _child_of(parent, child, "gone.vhd")
    text = assert_refused(vhd.save("orphan.vhd"), "vhd.parent", tmp_path)
    assert "gone.vhd" in text and "not found" in text


def test_differencing_vhd_whose_parent_changed(chain, tmp_path):
    parent, _, child, _ = chain
    other = Dynamic(child)
    vhd = _child_of(other.path, child, "base.vhd")  # records the child's own id, not base's
    assert "unique id" in assert_refused(vhd.save("stale.vhd"), "vhd.parent", tmp_path)


def test_a_chain_that_loops_is_bounded(chain, tmp_path):
    _, _, child, _ = chain
    vhd = _child_of(child, child, "loop.vhd")
    vhd.data[vhd.header_at + 40:vhd.header_at + 56] = vhd.data[68:84]  # its own id
    vhd.set_header(">I", 60, 0)
    assert "deeper than" in assert_refused(vhd.save("loop.vhd"), "vhd.parent", tmp_path)


def test_garbage_after_the_cookie(tmp_path):
    image = tmp_path / "garbage.vhd"
    image.write_bytes(b"conectix" + bytes(range(256)) * 8)
    assert_refused(image, "vhd.footer", tmp_path)


def test_refusal_through_the_real_command(dynamic, tmp_path):
    dynamic.set_bat(2, len(dynamic.data) // 512 + 100)
    assert_cli_refuses(dynamic.save("hostile.vhd"), tmp_path / "hostile.vmdk", "vhd.bat")


# -- properties ----------------------------------------------------------------------------

@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size_kib=st.integers(64, 6 * 1024),
       writes=st.lists(st.tuples(st.floats(0, 1), st.sampled_from(["random", "text", "zero"]),
                                 st.integers(1, 300_000)), max_size=4),
       subformat=st.sampled_from(sorted(SUBFORMATS)))
def test_reads_what_qemu_wrote(tmp_path_factory, size_kib, writes, subformat):
    folder = tmp_path_factory.mktemp("prop")
    size = size_kib * 1024
    layout = [(int(at * (size - 1)), kind, min(n, size - int(at * (size - 1))))
              for at, kind, n in writes]
    raw = write_disk(folder / "d.raw", size, layout)
    image = qemu_convert(raw, folder / "d.vhd", "vpc", SUBFORMATS[subformat])
    got = read_all(image)
    want = raw.read_bytes()
    assert got[:len(want)] == want and not any(got[len(want):])
    with open_source(image) as source:  # whatever lies outside the extents is zeros
        for start, end in zip([0] + [e for _, e in source.extents],
                              [s for s, _ in source.extents] + [source.size_bytes]):
            assert not any(got[start:end])


def test_differencing_vhd_whose_parent_is_a_container_not_read(chain, tmp_path, qemu_img):
    parent, parent_raw, child, _ = chain
    vdi = tmp_path / "base.vdi"
    assert qemu_img("convert", "-f", "raw", "-O", "vdi", parent_raw, vdi).returncode == 0
    vhd = _child_of(parent, child, "base.vdi")
    with pytest.raises(UnsupportedError, match=r"base.vdi: \[source.format\] this is a vdi"):
        convert(vhd.save("on-vdi.vhd"), tmp_path / "x.vmdk")
    assert not (tmp_path / "x.vmdk").exists()
