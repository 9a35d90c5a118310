"""The stream writer against the real qemu-img, and its byte layout per FORMATS.md 1."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest

from ovfstream import convert
from ovfstream.vmdk import layout as L

from ovfs_testlib import REPRODUCIBLE_ENGINE

pytestmark = pytest.mark.interop


@pytest.mark.parametrize("name", ["empty", "all_zero_written", "random", "mixed", "odd_size",
                                  "sector_tail"])
def test_qemu_check_and_compare(name, make_disk, qemu_img, tmp_path):
    raw = make_disk(name)
    out = tmp_path / (name + ".vmdk")
    convert(raw, out, parallel=2, fsync=False)
    check = qemu_img("check", out)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "No errors" in check.stdout
    cmp = qemu_img("compare", "-f", "raw", "-F", "vmdk", raw, out)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    info = qemu_img("info", "--output=json", out)
    assert '"format": "vmdk"' in info.stdout.replace('"format-specific"', "")
    assert '"create-type": "streamOptimized"' in info.stdout
    # virtual size: the raw size rounded up to a sector
    assert '"virtual-size": %d' % (-(-raw.stat().st_size // 512) * 512) in info.stdout


def test_six_gib_sparse_with_data_beyond_4gib(make_disk, qemu_img, tmp_path):
    raw = make_disk("big", 6 << 30, [(0, "text", 1 << 20), ((4 << 30) + 12345, "random", 3 << 20),
                                     ((6 << 30) - 65536, "text", 65536)])
    out = tmp_path / "big.vmdk"
    result = convert(raw, out, parallel=2, fsync=False)
    assert result.stats.hole_bytes_skipped > (5 << 30)  # holes are never read
    assert qemu_img("check", out).returncode == 0
    cmp = qemu_img("compare", "-f", "raw", "-F", "vmdk", raw, out)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr


def _sectors(path: Path) -> bytes:
    return path.read_bytes()


def test_layout_header_footer_eos(make_disk, tmp_path):
    raw = make_disk("mixed")
    out = tmp_path / "m.vmdk"
    convert(raw, out, parallel=1, fsync=False)
    data = out.read_bytes()
    assert len(data) % 512 == 0
    head = L.Header.unpack(data[:512])
    assert head.magic == b"KDMV" and head.version == 3 and head.flags == 0x30001
    assert head.gd_offset_sectors == L.GD_AT_END
    assert head.overhead_sectors == 128 and head.grain_sectors == 128
    assert head.gtes_per_gt == 512 and head.newline_check == b"\n \r\n"
    assert head.capacity_sectors == 100 * 2048
    # the end: footer marker, footer, EOS — nothing after it
    assert data[-512:] == bytes(512)
    footer_marker = struct.unpack_from("<QII", data, len(data) - 1536)
    assert footer_marker == (1, 0, L.MARKER_FOOTER)
    foot = L.Header.unpack(data[-1024:-512])
    assert foot.gd_offset_sectors not in (0, L.GD_AT_END)
    gd_marker = struct.unpack_from("<QII", data, (foot.gd_offset_sectors - 1) * 512)
    assert gd_marker[2] == L.MARKER_GD and gd_marker[0] == 1  # 4 spans * 4 bytes: one sector
    gd = struct.unpack_from("<4I", data, foot.gd_offset_sectors * 512)
    # spans 0 (5-8 MiB random) 1 (text at 33 MiB - 100, 40 MiB) 2 (70 MiB zeros only) 3 (tail)
    assert gd[0] and gd[1] and gd[3] and gd[2] == 0
    for entry in (gd[0], gd[1], gd[3]):
        marker = struct.unpack_from("<QII", data, (entry - 1) * 512)
        assert marker == (4, 0, L.MARKER_GT)
        table = struct.unpack_from("<512I", data, entry * 512)
        lbas = []
        for sector in table:
            if sector:
                lba, size = struct.unpack_from("<QI", data, sector * 512)
                assert data[sector * 512 + 12:sector * 512 + 14][:1] == b"\x78"  # zlib wrapper
                lbas.append(lba)
        assert lbas == sorted(lbas) and lbas
    text = data[512:512 * 21].rstrip(b"\0").decode()
    for needle in ('createType="streamOptimized"', "parentCID=ffffffff", 'RDONLY 204800 SPARSE "m.vmdk"',
                   'ddb.adapterType = "lsilogic"', 'ddb.toolsVersion = "2147483647"',
                   'ddb.virtualHWVersion = "4"', 'ddb.geometry.heads = "255"'):
        assert needle in text


def test_parallel_outputs_identical(make_disk, tmp_path):
    raw = make_disk("mixed")
    digests = set()
    for n in (1, 2, 3, 8):
        out = tmp_path / ("p%d" % n) / "disk.vmdk"
        out.parent.mkdir()
        convert(raw, out, parallel=n, fsync=False, engine=REPRODUCIBLE_ENGINE)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_zlib_engine_and_levels_read_back(make_disk, qemu_img, tmp_path):
    raw = make_disk("mixed")
    sizes = {}
    for engine, level in (("zlib", 1), ("zlib", 9), ("isal", 3), ("isal", 2)):
        out = tmp_path / ("%s%d.vmdk" % (engine, level))
        sizes[(engine, level)] = convert(raw, out, engine=engine, level=level,
                                         fsync=False).stats.bytes_written
        assert qemu_img("compare", "-f", "raw", "-F", "vmdk", raw, out).returncode == 0
    assert sizes[("zlib", 9)] <= sizes[("zlib", 1)]


def test_ide_adapter_geometry(make_disk, tmp_path):
    out = tmp_path / "ide.vmdk"
    convert(make_disk("odd_size"), out, adapter_type="ide", fsync=False)
    text = out.read_bytes()[512:512 * 21]
    assert b'ddb.adapterType = "ide"' in text and b'ddb.geometry.heads = "16"' in text
