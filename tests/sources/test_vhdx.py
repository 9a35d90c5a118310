"""VhdxSource on fixed and dynamic VHDXs made by the real qemu-img, and on tampered ones.

Every image comes from a generated raw disk (ovfs_testlib); a round trip is ovfstream
convert, then qemu-img compare against the VHDX and qemu-img check of the VMDK.  Hostile
images are qemu-img's with one field changed, CRC-32C recomputed where the test is about
another rule (the CRC-32C itself is checked against RFC 3720's test vectors below).
"""

from __future__ import annotations

import struct
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ovfstream.convert import convert
from ovfstream.errors import FormatError, UnsupportedError
from ovfstream.sources import open_source
from ovfstream.sources.crc32c import crc32c
from ovfstream.sources.vhdx import (BAT_REGION, FILE_PARAMETERS, METADATA_REGION,
                                    VIRTUAL_DISK_SIZE, VhdxSource)

from ovfs_testlib import MIB, write_disk

from .qemu_images import (TamperedImage, assert_cli_refuses, assert_pack_verifies,
                          assert_refused, assert_round_trip, qemu_convert, read_all)

pytestmark = pytest.mark.interop

KIB = 1024
SUBFORMATS = {
    "dynamic": ["subformat=dynamic"],
    "fixed": ["subformat=fixed"],
    "dynamic-1M": ["subformat=dynamic", "block_size=1M"],
    "dynamic-8M": ["subformat=dynamic", "block_size=8M"],
    "dynamic-32M": ["subformat=dynamic", "block_size=32M"],
}


def _vhdx(make_disk, tmp_path: Path, disk: str, subformat: str) -> Path:
    return qemu_convert(make_disk(disk), tmp_path / (disk + ".vhdx"), "vhdx",
                        SUBFORMATS[subformat])


def test_crc32c_test_vectors():
    # RFC 3720 B.4: 32 bytes of zeros, of ones, ascending; and the classic check value.
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(bytes(range(32))) == 0x46DD794E
    assert crc32c(b"123456789") == 0xE3069283


@pytest.mark.parametrize("subformat", sorted(SUBFORMATS))
@pytest.mark.parametrize("disk", ["mixed", "odd_size", "empty"])
def test_qemu_vhdxs_round_trip(make_disk, tmp_path, disk, subformat):
    image = _vhdx(make_disk, tmp_path, disk, subformat)
    assert_round_trip(image, "vhdx", tmp_path / "out.vmdk")


def test_dynamic_holes_are_never_read(make_disk, tmp_path):
    image = _vhdx(make_disk, tmp_path, "mixed", "dynamic-1M")
    with open_source(image) as source:
        # data at 5-8, 33 (100 bytes each side), 40-42 and 100 MiB (qemu-img leaves the
        # explicit zeros at 70 MiB unallocated): 1 MiB blocks 5-7, 32-33, 40-42 and 99.
        assert source.extents == [(5 * MIB, 8 * MIB), (32 * MIB, 34 * MIB),
                                  (40 * MIB, 43 * MIB), (99 * MIB, 100 * MIB)]


@pytest.mark.parametrize("subformat", ["dynamic-1M", "dynamic-32M", "fixed"])
def test_sparse_disk_over_4_gib_across_sector_bitmap_entries(tmp_path, subformat):
    # Past 4 GiB the BAT interleaves a sector bitmap entry after every chunk (4096 1 MiB
    # blocks, 128 32 MiB blocks); the last block is partial (VHDX sizes are whole MiB for
    # qemu-img, so the partial part is the block, not the grain).
    size = (5 << 30) + 3 * MIB
    raw = write_disk(tmp_path / "big.raw", size, [(4608 * MIB, "random", 70_000),
                                                  (size - 5000, "text", 5000),
                                                  (MIB, "text", 1000)])
    image = qemu_convert(raw, tmp_path / "big.vhdx", "vhdx", SUBFORMATS[subformat])
    assert_round_trip(image, "vhdx", tmp_path / "big.vmdk")
    with open_source(image) as source:
        assert source.size_bytes == size and source.data_bytes <= 3 * 32 * MIB


def test_pack_of_a_vhdx_verifies(make_disk, tmp_path):
    assert_pack_verifies(_vhdx(make_disk, tmp_path, "mixed", "dynamic"), tmp_path / "a.ova")


# -- tampering -----------------------------------------------------------------------------

def _fix_crc(data: bytearray, at: int, length: int) -> None:
    struct.pack_into("<I", data, at + 4, 0)
    struct.pack_into("<I", data, at + 4, crc32c(bytes(data[at:at + length])))


class Vhdx(TamperedImage):
    """A qemu-img VHDX opened for tampering: headers, region tables, metadata, BAT."""

    HEADERS = (64 * KIB, 128 * KIB)
    TABLES = (192 * KIB, 256 * KIB)

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.regions = {}
        count = struct.unpack_from("<I", self.data, self.TABLES[0] + 8)[0]
        for i in range(count):
            at = self.TABLES[0] + 16 + 32 * i
            guid, offset, length, _ = struct.unpack_from("<16sQII", self.data, at)
            self.regions[guid] = (offset, length, at)
        self.metadata_at = self.regions[METADATA_REGION][0]
        self.bat_at = self.regions[BAT_REGION][0]

    def set_headers(self, fmt: str, at: int, value, *, fix: bool = True,
                    which=HEADERS) -> None:
        for base in which:
            struct.pack_into(fmt, self.data, base + at, value)
            if fix:
                _fix_crc(self.data, base, 4 * KIB)

    def set_region(self, guid: bytes, fmt: str, at: int, value, *, fix: bool = True) -> None:
        entry = self.regions[guid][2]
        for base in self.TABLES:
            struct.pack_into(fmt, self.data, base - self.TABLES[0] + entry + at, value)
            if fix:
                _fix_crc(self.data, base, 64 * KIB)

    def metadata_item(self, guid: bytes) -> int:
        """The file offset of a metadata item's data."""
        count = struct.unpack_from("<H", self.data, self.metadata_at + 10)[0]
        for i in range(count):
            item, offset, _, _ = struct.unpack_from("<16sIII", self.data,
                                                    self.metadata_at + 32 + 32 * i)
            if item == guid:
                return self.metadata_at + offset
        raise KeyError(guid)

    def bat(self, index: int) -> int:
        return struct.unpack_from("<Q", self.data, self.bat_at + 8 * index)[0]

    def set_bat(self, index: int, value: int) -> None:
        struct.pack_into("<Q", self.data, self.bat_at + 8 * index, value)



@pytest.fixture
def vhdx(make_disk, tmp_path) -> Vhdx:
    return Vhdx(_vhdx(make_disk, tmp_path, "mixed", "dynamic-1M"))


def test_one_bad_header_or_region_table_is_survived(vhdx, tmp_path):
    want = read_all(vhdx.path)
    vhdx.set_headers("<Q", 8, 99, fix=False, which=vhdx.HEADERS[:1])
    vhdx.set_region(BAT_REGION, "<I", 24, 1, fix=False)  # both copies' checksums break...
    table = vhdx.TABLES[1]
    vhdx.data[table:table + 64 * KIB] = vhdx.path.read_bytes()[table:table + 64 * KIB]
    assert read_all(vhdx.save("one-bad.vhdx")) == want  # ...the second copy is restored


def test_bad_header_checksums(vhdx, tmp_path):
    vhdx.set_headers("<Q", 8, 99, fix=False)
    assert_refused(vhdx.save("headers.vhdx"), "vhdx.header", tmp_path)


def test_bad_identifier(vhdx, tmp_path):
    # Detection no longer sees a VHDX; the reader itself still refuses the file.
    vhdx.data[:8] = b"vhdxfilX"
    image = vhdx.save("identifier.vhdx")
    with pytest.raises(FormatError, match=r"@0x0: \[vhdx.header\] no file type identifier"):
        VhdxSource(image)


def test_bad_region_tables(vhdx, tmp_path):
    vhdx.set_region(BAT_REGION, "<I", 24, 1, fix=False)
    assert_refused(vhdx.save("regions.vhdx"), "vhdx.region", tmp_path)


def test_overlapping_regions(vhdx, tmp_path):
    vhdx.set_region(BAT_REGION, "<Q", 16, vhdx.metadata_at)
    assert "overlaps" in assert_refused(vhdx.save("overlap.vhdx"), "vhdx.region", tmp_path)


def test_unaligned_region(vhdx, tmp_path):
    vhdx.set_region(BAT_REGION, "<Q", 16, vhdx.bat_at + 4096)
    assert_refused(vhdx.save("unaligned.vhdx"), "vhdx.region", tmp_path)


def test_unknown_required_region(vhdx, tmp_path):
    vhdx.set_region(BAT_REGION, "16s", 0, uuid.uuid4().bytes_le)
    vhdx.set_region(BAT_REGION, "<I", 28, 1)
    assert_refused(vhdx.save("required.vhdx"), "vhdx.region", tmp_path, UnsupportedError)


def test_log_not_empty(vhdx, tmp_path):
    vhdx.set_headers("16s", 48, uuid.uuid4().bytes_le)
    text = assert_refused(vhdx.save("log.vhdx"), "vhdx.log", tmp_path, UnsupportedError)
    assert "qemu-img check -r all" in text


@pytest.mark.parametrize("block_bytes", [0, 512 * KIB, 3 * MIB, 512 * MIB])
def test_block_size_not_allowed(vhdx, tmp_path, block_bytes):
    struct.pack_into("<I", vhdx.data, vhdx.metadata_item(FILE_PARAMETERS), block_bytes)
    assert "block size %d" % block_bytes in assert_refused(
        vhdx.save("block.vhdx"), "vhdx.metadata", tmp_path)


def test_differencing_vhdx_is_refused_clearly(vhdx, tmp_path):
    struct.pack_into("<I", vhdx.data, vhdx.metadata_item(FILE_PARAMETERS) + 4, 2)
    assert "merge" in assert_refused(vhdx.save("child.vhdx"), "vhdx.parent", tmp_path,
                               UnsupportedError)


def test_bat_region_too_small_for_the_disk(make_disk, tmp_path):
    # 100 MiB of 1 MiB blocks need 100 entries; a disk size of 64 TiB needs far more than
    # the 1 MiB region holds.
    vhdx = Vhdx(_vhdx(make_disk, tmp_path, "mixed", "dynamic-1M"))
    struct.pack_into("<Q", vhdx.data, vhdx.metadata_item(VIRTUAL_DISK_SIZE), 64 << 40)
    assert_refused(vhdx.save("bat-small.vhdx"), "vhdx.bat", tmp_path)


def test_bat_entry_past_the_end(vhdx, tmp_path):
    vhdx.set_bat(5, (len(vhdx.data) // MIB + 10) << 20 | 6)
    assert_refused(vhdx.save("bat-eof.vhdx"), "vhdx.bat", tmp_path)


def test_bat_entry_in_the_header_section_or_over_the_bat(vhdx, tmp_path):
    vhdx.set_bat(5, 0 << 20 | 6)
    assert_refused(vhdx.save("bat-zero.vhdx"), "vhdx.bat", tmp_path)
    vhdx.set_bat(5, vhdx.bat_at | 6)
    assert "overlaps" in assert_refused(vhdx.save("bat-bat.vhdx"), "vhdx.bat", tmp_path)


def test_two_blocks_sharing_bytes(vhdx, tmp_path):
    vhdx.set_bat(40, vhdx.bat(5))
    assert "overlaps" in assert_refused(vhdx.save("alias.vhdx"), "vhdx.bat", tmp_path)


@pytest.mark.parametrize("state", [4, 5, 7])
def test_block_states_not_allowed(vhdx, tmp_path, state):
    vhdx.set_bat(5, vhdx.bat(5) & ~7 | state)
    assert_refused(vhdx.save("state.vhdx"), "vhdx.bat", tmp_path)


@pytest.mark.parametrize("state", [0, 1, 2, 3])
def test_hole_states_are_zeros(vhdx, tmp_path, state):
    want = bytearray(read_all(vhdx.path))
    vhdx.set_bat(5, vhdx.bat(5) & ~7 | state)
    want[5 * MIB:6 * MIB] = bytes(MIB)
    image = vhdx.save("hole.vhdx")
    with open_source(image) as source:
        assert (5 * MIB, 8 * MIB) not in source.extents
    assert read_all(image) == bytes(want)


def test_truncated_vhdx(vhdx, tmp_path):
    image = vhdx.path.with_name("truncated.vhdx")
    for size in (len(vhdx.data) - MIB, 2 * MIB, 300 * KIB, 1000):
        image.write_bytes(bytes(vhdx.data[:size]))
        with pytest.raises(FormatError) as info:
            convert(image, tmp_path / "t.vmdk")
        assert info.value.rule.startswith("vhdx.") and str(image) in str(info.value)


def test_garbage_after_the_identifier(tmp_path):
    image = tmp_path / "garbage.vhdx"
    image.write_bytes(b"vhdxfile" + bytes(range(256)) * 8192)
    assert_refused(image, "vhdx.header", tmp_path)


def test_refusal_through_the_real_command(vhdx, tmp_path):
    vhdx.set_headers("16s", 48, uuid.uuid4().bytes_le)
    assert_cli_refuses(vhdx.save("hostile.vhdx"), tmp_path / "hostile.vmdk", "vhdx.log")


# -- properties ----------------------------------------------------------------------------

@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size_mib=st.integers(1, 24),
       writes=st.lists(st.tuples(st.floats(0, 1), st.sampled_from(["random", "text", "zero"]),
                                 st.integers(1, 2_000_000)), max_size=4),
       subformat=st.sampled_from(sorted(SUBFORMATS)))
def test_reads_what_qemu_wrote(tmp_path_factory, size_mib, writes, subformat):
    folder = tmp_path_factory.mktemp("prop")
    size = size_mib * MIB
    layout = [(int(at * (size - 1)), kind, min(n, size - int(at * (size - 1))))
              for at, kind, n in writes]
    raw = write_disk(folder / "d.raw", size, layout)
    image = qemu_convert(raw, folder / "d.vhdx", "vhdx", SUBFORMATS[subformat])
    got = read_all(image)
    assert got == raw.read_bytes()
    with open_source(image) as source:  # whatever lies outside the extents is zeros
        for start, end in zip([0] + [e for _, e in source.extents],
                              [s for s, _ in source.extents] + [source.size_bytes]):
            assert not any(got[start:end])
