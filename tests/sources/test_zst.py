"""zstd-compressed raw disks (sources/zst.py): read back by qemu-img, hostile frames refused.

Disks are generated (ovfs_testlib), compressed by the zstandard package and by the real
zstd/pzstd CLIs when installed; hostile frames are built byte by byte after RFC 8878.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from ovfstream import cli
from ovfstream.convert import convert
from ovfstream.errors import FormatError, UnsupportedError, UsageError
from ovfstream.sources import open_source
from ovfstream.sources.zst import ZstdSource

from ovfs_testlib import MIB, REPRODUCIBLE_ENGINE, tool, write_disk

OVFSTREAM = [sys.executable, "-m", "ovfstream"]
MAGIC = struct.pack("<I", 0xFD2FB528)


def compress_frames(data: bytes, *, pieces: int = 1, level: int = 3, content_size: bool = True,
                    checksum: bool = False, skippable: bool = False) -> bytes:
    """``data`` as ``pieces`` concatenated frames (a skippable frame between them if asked)."""
    cctx = zstandard.ZstdCompressor(level=level, write_content_size=content_size,
                                    write_checksum=checksum)
    step = -(-len(data) // pieces)
    out = bytearray()
    for start in range(0, len(data), step):
        if content_size:
            out += cctx.compress(data[start:start + step])
        else:  # streamed: the frame cannot know its size
            obj = cctx.compressobj()
            out += obj.compress(data[start:start + step]) + obj.flush()
        if skippable:
            out += struct.pack("<II", 0x184D2A5E, 6) + b"pzstd!"
    return bytes(out)


@pytest.fixture
def disk(make_disk):
    return make_disk("mixed")


def check_against_raw(raw: Path, vmdk: Path, qemu_img) -> None:
    proc = qemu_img("compare", "-f", "raw", "-F", "vmdk", raw, vmdk)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = qemu_img("check", vmdk)
    assert proc.returncode == 0, proc.stdout + proc.stderr


VARIANTS = {
    "one-frame": dict(),
    "no-content-size": dict(content_size=False),
    "multi-frame": dict(pieces=5, skippable=True, checksum=True),
    "many-small-frames": dict(pieces=37, content_size=False),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_zstandard_frames_convert_to_the_same_disk(variant, disk, qemu_img, tmp_path):
    opts = VARIANTS[variant]
    data = disk.read_bytes()
    zst = tmp_path / "disk.raw.zst"
    zst.write_bytes(compress_frames(data, **opts))
    size = None if opts.get("content_size", True) else len(data)
    out = tmp_path / "z.vmdk"
    result = convert(zst, out, size=size, parallel=2)
    check_against_raw(disk, out, qemu_img)
    plain = convert(disk, tmp_path / "r.vmdk", parallel=2)
    # The same content id; the descriptor ids differ: the zstd key hashes the compressed
    # file (every byte of it), the raw key samples 64 KiB per span of the raw file.
    assert result.stats.content_id == plain.stats.content_id
    assert result.stats.disk_key != plain.stats.disk_key
    assert result.stats.size_bytes == len(data)
    assert result.stats.bytes_read == len(data)  # holes unknown: every byte decompressed
    assert result.stats.grains_written == plain.stats.grains_written  # zero grains dropped


def test_level_19_and_zero_heavy(make_disk, qemu_img, tmp_path):
    for name, level in (("odd_size", 19), ("empty", 3), ("all_zero_written", 1)):
        raw = make_disk(name)
        zst = tmp_path / (name + ".raw.zst")
        zst.write_bytes(compress_frames(raw.read_bytes(), level=level))
        out = tmp_path / (name + ".vmdk")
        result = convert(zst, out)
        check_against_raw(raw, out, qemu_img)
        if name != "odd_size":
            assert result.stats.grains_written == 0
            assert zst.stat().st_size < 64 << 10  # all zeros: a few RLE blocks


def test_missing_content_size_needs_size(disk, tmp_path):
    zst = tmp_path / "d.raw.zst"
    zst.write_bytes(compress_frames(disk.read_bytes(), content_size=False))
    with pytest.raises(UsageError, match=r"does not record its content size.*--size BYTES"):
        convert(zst, tmp_path / "x.vmdk")
    assert cli.main(["convert", str(zst), "-o", str(tmp_path / "x.vmdk"), "-q"]) == 2
    assert sorted(os.listdir(tmp_path)) == ["d.raw.zst", "mixed.raw"]


def test_size_must_agree_with_declared_sizes(disk, tmp_path):
    zst = tmp_path / "d.raw.zst"
    zst.write_bytes(compress_frames(disk.read_bytes()))
    with open_source(zst, size=disk.stat().st_size) as src:  # agreeing: fine
        assert src.size_bytes == disk.stat().st_size
    with pytest.raises(FormatError, match=r"\[zstd\.size\] the frames declare"):
        convert(zst, tmp_path / "x.vmdk", size=disk.stat().st_size + 512)


@pytest.mark.parametrize("parallel", [1, 2, 4])
def test_same_bytes_at_every_parallelism(parallel, disk, tmp_path):
    zst = tmp_path / "d.raw.zst"
    zst.write_bytes(compress_frames(disk.read_bytes(), pieces=3))
    (tmp_path / "one").mkdir()
    (tmp_path / "n").mkdir()
    convert(zst, tmp_path / "one" / "d.vmdk", parallel=1, engine=REPRODUCIBLE_ENGINE)
    convert(zst, tmp_path / "n" / "d.vmdk", parallel=parallel, engine=REPRODUCIBLE_ENGINE)
    assert (tmp_path / "one" / "d.vmdk").read_bytes() == (tmp_path / "n" / "d.vmdk").read_bytes()


def cli_zstd(*args: str, **kw: object) -> None:
    exe = tool("zstd")
    subprocess.run([exe, "-q", "-f", *args], check=True, timeout=60, **kw)  # type: ignore[call-overload]


@pytest.mark.parametrize("how", ["zstd", "zstd -T0 -19", "pzstd", "pipe"])
def test_real_zstd_cli_output(how, make_disk, qemu_img, tmp_path):
    raw = make_disk("odd_size")
    zst = tmp_path / "d.raw.zst"
    size = None
    if how == "pzstd":
        exe = tool("pzstd")
        subprocess.run([exe, "-q", "-p", "2", str(raw), "-o", str(zst)], check=True, timeout=60)
        size = str(raw.stat().st_size)  # its frames do not record their content size
    elif how == "pipe":  # stdin -> no content size in the frame
        with open(raw, "rb") as src, open(zst, "wb") as dst:
            cli_zstd("-c", stdin=src, stdout=dst)
        size = str(raw.stat().st_size)
    else:
        cli_zstd(*how.split()[1:], str(raw), "-o", str(zst))
    out = tmp_path / "d.vmdk"
    argv = [*OVFSTREAM, "convert", str(zst), "-o", str(out), "--json"]
    proc = subprocess.run(argv + (["--size", size] if size else []), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    check_against_raw(raw, out, qemu_img)
    if size:  # and without --size: exit 2, saying so
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and "--size BYTES" in proc.stderr, proc.stderr


def test_pack_reads_a_zst_disk(disk, tmp_path, qemu_img):
    zst = tmp_path / "d.raw.zst"
    zst.write_bytes(compress_frames(disk.read_bytes(), pieces=2))
    ova = tmp_path / "vm.ova"
    assert cli.main(["pack", str(zst), "-o", str(ova), "-q"]) == 0
    assert cli.main(["verify", str(ova), "--deep", "-q"]) == 0


@pytest.mark.parametrize("kind", ["qcow2", "vmdk"])
def test_compressed_container_is_refused(kind, tmp_path, qemu_img):
    raw = write_disk(tmp_path / "d.raw", 2 * MIB, [(0, "text", 100000)])
    image = tmp_path / ("d." + kind)
    assert qemu_img("convert", "-f", "raw", "-O", kind, raw, image).returncode == 0
    zst = tmp_path / ("d.%s.zst" % kind)
    zst.write_bytes(compress_frames(image.read_bytes()))
    out = tmp_path / "x.vmdk"
    with pytest.raises(UnsupportedError, match=r"holds a %s image.*decompress it first" % kind):
        convert(zst, out)
    assert not out.exists()


# -- hostile frames --------------------------------------------------------------------------

def frame_header(*, fcs: int | None, window_exp: int = 10, dict_id: int = 0,
                 reserved: bool = False) -> bytes:
    """A frame header: window descriptor, optional dictionary id and 8-byte content size."""
    d = (3 << 6 if fcs is not None else 0) | (1 if dict_id else 0) | (0x08 if reserved else 0)
    out = MAGIC + bytes([d, window_exp << 3])
    if dict_id:
        out += bytes([dict_id])
    if fcs is not None:
        out += struct.pack("<Q", fcs)
    return out


def rle_block(n: int, *, last: bool = True, byte: int = 0) -> bytes:
    return (int(last) | 1 << 1 | n << 3).to_bytes(3, "little") + bytes([byte])


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*OVFSTREAM, *args], capture_output=True, text=True, timeout=timeout)


def assert_refused(zst: Path, tmp_path: Path, pattern: str, *extra: str, code: int = 1) -> str:
    out = tmp_path / "out.vmdk"
    proc = run_cli("convert", str(zst), "-o", str(out), *extra)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())
    import re
    assert re.search(pattern, proc.stderr), proc.stderr
    return proc.stderr


def test_bomb_claiming_a_huge_content_size(tmp_path):
    zst = tmp_path / "bomb.raw.zst"
    zst.write_bytes(frame_header(fcs=1 << 50, window_exp=7) + rle_block(128 << 10))
    assert zst.stat().st_size < 32
    assert_refused(zst, tmp_path, r"bomb\.raw\.zst@0x0: \[zstd\.size\] frame 1 declares "
                                  r"1125899906842624 bytes.*exactly 131072")


def test_bomb_without_content_size_and_a_huge_size(tmp_path):
    zst = tmp_path / "bomb.raw.zst"
    zst.write_bytes(frame_header(fcs=None, window_exp=7) + rle_block(128 << 10, last=False)
                    + rle_block(64 << 10))
    assert_refused(zst, tmp_path, r"\[zstd\.size\] --size says 1099511627776 bytes, but the "
                                  r"frames hold exactly 196608", "--size", "1T")
    # the right size: a disk of zeros
    out = tmp_path / "ok.vmdk"
    proc = run_cli("convert", str(zst), "-o", str(out), "--size", "192K", "--json")
    assert proc.returncode == 0, proc.stderr


def test_content_size_lie_inside_the_bounds(disk, tmp_path):
    data = disk.read_bytes()
    good = bytearray(compress_frames(data))
    assert good[4] == 0x80  # a 4-byte content size after the window descriptor
    struct.pack_into("<I", good, 6, len(data) - 4096)
    zst = tmp_path / "lie.raw.zst"
    zst.write_bytes(bytes(good))
    assert_refused(zst, tmp_path, r"lie\.raw\.zst@0x0: \[zstd\.frame\] frame 1 \(disk byte "
                                  r"\d+\) does not decompress")


def test_truncated_frame(disk, tmp_path):
    data = compress_frames(disk.read_bytes(), pieces=2)
    zst = tmp_path / "cut.raw.zst"
    zst.write_bytes(data[:len(data) * 3 // 4])
    assert_refused(zst, tmp_path, r"cut\.raw\.zst@0x[0-9a-f]+: \[zstd\.frame\] frame \d cut short")


def test_corrupt_block_with_checksum(make_disk, tmp_path):
    raw = make_disk("odd_size")
    data = bytearray(compress_frames(raw.read_bytes(), checksum=True, level=19))
    for i in range(200, 260):  # inside the first (compressed, text) block
        data[i] ^= 0xA5
    zst = tmp_path / "bad.raw.zst"
    zst.write_bytes(bytes(data))
    assert_refused(zst, tmp_path, r"bad\.raw\.zst@0x0: \[zstd\.frame\] frame 1 .*does not "
                                  r"decompress")


@pytest.mark.parametrize("case", ["garbage-after", "reserved-bit", "reserved-block",
                                  "oversized-block", "dictionary", "huge-window", "empty"])
def test_malformed_frames(case, tmp_path):
    ok = frame_header(fcs=65536, window_exp=7) + rle_block(65536)
    blob, pattern, code = {
        "garbage-after": (ok + b"GARBAGE!", r"@0x12: \[zstd\.frame\] not a zstd frame", 1),
        "reserved-bit": (frame_header(fcs=1, reserved=True) + rle_block(1),
                         r"@0x4: \[zstd\.frame\] frame 1: reserved bit", 1),
        "reserved-block": (frame_header(fcs=4) + (1 | 3 << 1 | 4 << 3).to_bytes(3, "little"),
                           r"\[zstd\.frame\] frame 1: block of the reserved type", 1),
        "oversized-block": (frame_header(fcs=None, window_exp=0) + rle_block(2048),
                            r"\[zstd\.frame\] frame 1: block of 2048 bytes, above the 1024", 1),
        "dictionary": (frame_header(fcs=1, dict_id=7) + rle_block(1),
                       r"needs zstd dictionary 7", 1),
        "huge-window": (frame_header(fcs=None, window_exp=21) + rle_block(1),
                        r"needs a 2048 MiB window.*decompress it first", 1),
        "empty": (frame_header(fcs=0) + (1).to_bytes(3, "little"),
                  r"the frames hold 0 bytes: the disk image is empty", 2),
    }[case]
    zst = tmp_path / "h.raw.zst"
    zst.write_bytes(blob)
    assert_refused(zst, tmp_path, pattern, *(["--size", "1"] if case != "empty" else []),
                   code=code)


def test_hostile_frames_are_refused_at_open_without_reading_the_data(tmp_path):
    # Millions of tiny blocks: the walk is linear in the compressed size, memory flat.
    n = 200_000
    blob = frame_header(fcs=None, window_exp=7) + rle_block(1, last=False) * (n - 1) + rle_block(1)
    zst = tmp_path / "many.raw.zst"
    zst.write_bytes(blob)
    with ZstdSource(zst, size=n) as src:
        assert src.size_bytes == n and len(src.frames) == 1
    with pytest.raises(FormatError, match=r"\[zstd\.size\]"):
        ZstdSource(zst, size=n + 1)


def test_input_format_zstd_is_insisted_on(disk, tmp_path):
    with pytest.raises(UsageError, match="--input-format zstd, but the content is raw"):
        convert(disk, tmp_path / "x.vmdk", input_format="zstd")
    zst = tmp_path / "d.raw.zst"
    zst.write_bytes(compress_frames(disk.read_bytes()[:4 * MIB]))
    convert(zst, tmp_path / "x.vmdk", input_format="zstd")


def test_changed_while_read_is_refused(disk, tmp_path, monkeypatch):
    zst = tmp_path / "d.raw.zst"
    zst.write_bytes(compress_frames(disk.read_bytes()))
    from ovfstream.vmdk import writer
    real = writer.write_stream_vmdk

    def touch_then_write(src, *a, **kw):  # type: ignore[no-untyped-def]
        stats = real(src, *a, **kw)
        with open(zst, "ab") as f:
            f.write(struct.pack("<II", 0x184D2A50, 0))
        return stats
    monkeypatch.setattr(sys.modules["ovfstream.convert"], "write_stream_vmdk", touch_then_write)
    with pytest.raises(FormatError, match=r"source\.changed"):
        convert(zst, tmp_path / "x.vmdk")
    assert not (tmp_path / "x.vmdk").exists()

