"""qcow2 inputs (issue 9): every variant made by the real qemu-img / qemu-io from generated
disks, converted by ovfstream, then judged by ``qemu-img compare`` and ``qemu-img check``.
Hostile images are qemu-made ones with one field patched."""

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
from ovfstream.errors import FormatError, OvfstreamError, UnsupportedError
from ovfstream.pack import pack
from ovfstream.sources import open_source
from ovfstream.sources.qcow2 import (EXTENTS_PER_SPAN, OFFSET_MASK, RULES, Qcow2Source,
                                     _bounded)
from ovfstream.verify import verify
from ovfstream.vmdk.layout import SPAN_BYTES

from ovfs_testlib import DISKS, GRAIN, MIB, tool, write_disk

pytestmark = pytest.mark.interop

TIMEOUT = 60


def sh(*args: object) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([os.fspath(a) for a in args], capture_output=True, text=True,
                          timeout=TIMEOUT)
    assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
    return proc


def qemu_img(*args: object) -> subprocess.CompletedProcess[str]:
    return sh(tool("qemu-img"), *args)


def qemu_io(image: Path, fmt: str, *commands: str) -> None:
    args: list[object] = [tool("qemu-io"), "-f", fmt]
    for c in commands:
        args += ["-c", c]
    sh(*args, image)


def check_vmdk(image: Path, vmdk: Path) -> None:
    """The VMDK holds exactly the qcow2's guest disk, and qemu-img finds it sound."""
    qemu_img("compare", "-q", image, vmdk)
    qemu_img("check", "-q", "-f", "vmdk", vmdk)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    size, layout = DISKS["mixed"]
    return write_disk(tmp_path_factory.mktemp("qcow2") / "mixed.raw", size, layout)


VARIANTS = {
    "v2": ["-o", "compat=0.10"],
    "v3": [],
    "deflate": ["-c"],
    "zstd": ["-c", "-o", "compression_type=zstd"],
    "cluster-4k": ["-o", "cluster_size=4k"],
    "cluster-2m": ["-o", "cluster_size=2M"],
    "deflate-4k": ["-c", "-o", "cluster_size=4k"],
    "extended-l2": ["-o", "extended_l2=on,cluster_size=128k"],
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_qemu_variants_convert_exactly(mixed: Path, variant: str, tmp_path: Path) -> None:
    image = tmp_path / (variant + ".qcow2")
    qemu_img("convert", "-q", "-f", "raw", "-O", "qcow2", *VARIANTS[variant], mixed, image)
    out = tmp_path / "out.vmdk"
    result = convert(image, out)
    check_vmdk(image, out)
    raw = convert(mixed, tmp_path / "raw.vmdk")
    # Extents differ (clusters against file-system blocks), so the descriptor IDs may differ;
    # the guest content may not.
    assert result.stats.content_id == raw.stats.content_id
    assert result.stats.populated_bytes == raw.stats.populated_bytes


def test_same_vmdk_bytes_as_raw_when_the_extents_agree(tmp_path: Path) -> None:
    # 64 KiB-aligned random regions: the raw file's data extents are the qcow2's clusters.
    layout = [(0, "random", 3 * GRAIN), (10 * GRAIN, "random", GRAIN),
              (40 * MIB, "random", 5 * GRAIN), (70 * MIB - GRAIN, "random", 2 * GRAIN)]
    raw = write_disk(tmp_path / "d.raw", 80 * MIB, layout)
    image = tmp_path / "d.qcow2"
    qemu_img("convert", "-q", "-f", "raw", "-O", "qcow2", raw, image)
    with open_source(raw) as a, open_source(image) as b:
        assert a.extents == b.extents
    (tmp_path / "r").mkdir()
    (tmp_path / "q").mkdir()
    convert(raw, tmp_path / "r" / "d.vmdk")  # same file name: the descriptor names it
    convert(image, tmp_path / "q" / "d.vmdk")
    assert (tmp_path / "r" / "d.vmdk").read_bytes() == (tmp_path / "q" / "d.vmdk").read_bytes()


def test_zero_clusters_are_holes_never_read(tmp_path: Path) -> None:
    image = tmp_path / "z.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", image, "64M")
    qemu_io(image, "qcow2", "write -P 0x5a 0 4M", "write -z 1M 2M", "write -z 30M 8M")
    with open_source(image) as src:
        assert src.format == "qcow2"
        assert src.extents == [(0, MIB), (3 * MIB, 4 * MIB)]
    out = tmp_path / "z.vmdk"
    convert(image, out)
    check_vmdk(image, out)


def test_extended_l2_subclusters(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    qemu_img("create", "-q", "-f", "raw", base, "8M")
    qemu_io(base, "raw", "write -P 0x11 0 8M")
    for name, backing in (("x.qcow2", []), ("xo.qcow2", ["-b", base, "-F", "raw"])):
        image = tmp_path / name
        qemu_img("create", "-q", "-f", "qcow2", "-o", "extended_l2=on", *backing, image, "8M")
        qemu_io(image, "qcow2", "write -P 0x66 4k 8k", "write -z 100k 4k",
                "write -P 0x77 1M 2k", "write -z 3M 64k")
        out = tmp_path / (name + ".vmdk")
        convert(image, out)
        check_vmdk(image, out)


def test_backing_chain_of_three(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    qemu_img("create", "-q", "-f", "raw", base, "64M")
    qemu_io(base, "raw", "write -P 0x11 0 40M")
    mid = tmp_path / "mid.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", mid, "64M")
    qemu_io(mid, "qcow2", "write -P 0x22 1M 3M", "write -z 10M 5M", "write -P 0x33 39M 4M")
    top = tmp_path / "top.qcow2"  # larger than its backing: zeros past the base's end
    qemu_img("create", "-q", "-f", "qcow2", "-b", mid, "-F", "qcow2", top, "80M")
    qemu_io(top, "qcow2", "write -P 0x44 2M 1536k", "write -z 20M 100k", "write -P 0x55 70M 1M")
    with open_source(top) as src:
        assert [f.path for f in src.files] == [str(top), str(mid), str(base)]
        assert src.size_bytes == 80 * MIB
    out = tmp_path / "top.vmdk"
    convert(top, out)
    check_vmdk(top, out)
    # Through the CLI, and an OVA that verifies.
    ova = tmp_path / "top.ova"
    assert cli.main(["pack", str(top), "-o", str(ova), "--quiet"]) == 0
    assert verify(ova, deep=True).ok
    # An output that is a file of the chain is refused before anything is written.
    before = base.read_bytes()
    assert cli.main(["convert", str(top), "-o", str(base), "--quiet"]) == 2
    assert cli.main(["pack", str(top), "-o", str(mid), "--quiet"]) == 2
    assert base.read_bytes() == before


def test_large_disk_with_a_partial_last_grain_stays_sparse(tmp_path: Path) -> None:
    size = (4 << 30) + 12345 * 512
    image = tmp_path / "big.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", image, str(size))
    qemu_io(image, "qcow2", "write -P 0x88 0 1M", "write -P 0x99 %d 70000" % (size - 70000))
    out = tmp_path / "big.vmdk"
    result = convert(image, out)
    assert result.stats.bytes_read < 3 * MIB and out.stat().st_size < MIB
    check_vmdk(image, out)
    ova = tmp_path / "big.ova"
    pack([image], ova)
    assert verify(ova, deep=True).ok


def test_checkerboard_keeps_the_extent_list_small_and_reads_exact(tmp_path: Path) -> None:
    image = tmp_path / "cb.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", image, "64M")
    qemu_io(image, "qcow2", *["write -P 0x%02x %d 64k" % (i % 250 + 1, i * 2 * GRAIN)
                              for i in range(0, 512, 3)])
    with open_source(image) as src:
        per_span: dict[int, int] = {}
        for start, _ in src.extents:
            per_span[start // SPAN_BYTES] = per_span.get(start // SPAN_BYTES, 0) + 1
        assert max(per_span.values()) <= EXTENTS_PER_SPAN + 1
    out = tmp_path / "cb.vmdk"
    convert(image, out)
    check_vmdk(image, out)


def test_bounded_collapses_a_crowded_span() -> None:
    many = [(i * 2 * GRAIN, i * 2 * GRAIN + GRAIN) for i in range(1000)]
    merged = _bounded(many)
    assert len(merged) <= 4 * (EXTENTS_PER_SPAN + 1)  # 125 MiB: four spans
    covered = [(s, e) for s, e in many]
    assert all(any(a <= s and e <= b for a, b in merged) for s, e in covered)
    assert _bounded([(0, 10), (5, 20), (20, 30), (40, 50)]) == [(0, 30), (40, 50)]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(writes=st.lists(st.tuples(st.integers(0, 63), st.integers(1, 40),
                                 st.sampled_from(["random", "zero", "text"])),
                       min_size=0, max_size=6),
       options=st.sampled_from([[], ["-c"], ["-o", "cluster_size=4k"],
                                ["-c", "-o", "compression_type=zstd,cluster_size=16k"],
                                ["-o", "extended_l2=on"], ["-o", "compat=0.10"]]),
       seed=st.integers(0, 2**16))
def test_random_small_images(tmp_path_factory: pytest.TempPathFactory, writes: list,
                             options: list[str], seed: int) -> None:
    folder = tmp_path_factory.mktemp("prop")
    size = 4 * MIB + 7 * 512
    layout = [(unit * GRAIN, kind, min(length * 4096, size - unit * GRAIN))
              for unit, length, kind in writes]
    raw = write_disk(folder / "r.raw", size, layout, seed=seed)
    image = folder / "r.qcow2"
    qemu_img("convert", "-q", "-f", "raw", "-O", "qcow2", *options, raw, image)
    a = convert(image, folder / "q.vmdk")
    b = convert(raw, folder / "r.vmdk")
    assert a.stats.content_id == b.stats.content_id
    qemu_img("compare", "-q", image, folder / "q.vmdk")


# -- hostile images --------------------------------------------------------------------------

def _plain(tmp_path: Path, *options: str, name: str = "h.qcow2") -> Path:
    raw = write_disk(tmp_path / "h.raw", 4 * MIB, [(0, "random", 300000),
                                                   (2 * MIB, "text", 200000)])
    image = tmp_path / name
    qemu_img("convert", "-q", "-f", "raw", "-O", "qcow2", *options, raw, image)
    raw.unlink()
    return image


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def _first_l2(path: Path, flag: int = 0) -> tuple[int, int]:
    """(file offset of the first L2 table, of its first allocated entry, or of the first
    with ``flag`` set)."""
    head = path.read_bytes()
    l1_offset = struct.unpack_from(">Q", head, 40)[0]
    l2 = struct.unpack_from(">Q", head, l1_offset)[0] & OFFSET_MASK
    for i in range(0, 65536, 8):
        entry = struct.unpack_from(">Q", head, l2 + i)[0]
        if entry and entry & flag == flag:
            return l2, l2 + i
    raise AssertionError("no allocated cluster")


def _expect_refused(image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                    rule: str, *words: str) -> str:
    out = tmp_path / "out.vmdk"
    ova = tmp_path / "out.ova"
    assert cli.main(["convert", str(image), "-o", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert str(image) in err and "[%s]" % rule in err, err
    assert all(w in err for w in words), err
    assert "Traceback" not in err
    assert cli.main(["pack", str(image), "-o", str(ova), "--quiet"]) == 1
    assert "[%s]" % rule in capsys.readouterr().err
    assert not out.exists() and not ova.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("out")] == []
    return err


def test_truncated_header(tmp_path, capsys):
    image = _plain(tmp_path)
    os.truncate(image, 50)
    _expect_refused(image, tmp_path, capsys, "qcow2.header", "truncated")


def test_truncated_image(tmp_path, capsys):
    image = _plain(tmp_path)
    os.truncate(image, image.stat().st_size // 2)
    _expect_refused(image, tmp_path, capsys, "qcow2.cluster", "past the end of the file", "@0x")


def test_l1_offset_past_the_end(tmp_path, capsys):
    image = _plain(tmp_path)
    _patch(image, 40, struct.pack(">Q", 1 << 40))
    _expect_refused(image, tmp_path, capsys, "qcow2.l1", "l1_table_offset", "@0x28")


def test_huge_l1_size(tmp_path, capsys):
    image = _plain(tmp_path)
    _patch(image, 36, struct.pack(">I", 0xFFFFFFFF))
    _expect_refused(image, tmp_path, capsys, "qcow2.l1", "l1_size", "@0x24")


def test_l2_entry_past_the_end(tmp_path, capsys):
    image = _plain(tmp_path)
    _, entry = _first_l2(image)
    _patch(image, entry, struct.pack(">Q", (1 << 63) | (1 << 40)))
    _expect_refused(image, tmp_path, capsys, "qcow2.cluster", "0x%x" % (1 << 40))


def test_l2_entry_with_reserved_bits(tmp_path, capsys):
    image = _plain(tmp_path)
    _, entry = _first_l2(image)
    value = struct.unpack(">Q", image.read_bytes()[entry:entry + 8])[0]
    _patch(image, entry, struct.pack(">Q", value | (1 << 57)))
    _expect_refused(image, tmp_path, capsys, "qcow2.l2", "reserved bits", "@0x%x" % entry)


@pytest.mark.parametrize("payload", [b"short" * 100, b"long" * 20000])
def test_compressed_cluster_of_the_wrong_size(tmp_path, capsys, payload):
    image = _plain(tmp_path, "-c")
    _, entry = _first_l2(image, 1 << 62)
    descriptor = struct.unpack(">Q", image.read_bytes()[entry:entry + 8])[0]
    coffset = descriptor & ((1 << 54) - 1)  # 64 KiB clusters: x = 62 - 8
    deflater = zlib.compressobj(6, zlib.DEFLATED, -15)
    _patch(image, coffset, deflater.compress(payload) + deflater.flush())
    _expect_refused(image, tmp_path, capsys, "qcow2.compressed", "one cluster",
                    "@0x%x" % coffset)


def test_compressed_garbage(tmp_path, capsys):
    image = _plain(tmp_path, "-c", "-o", "compression_type=zstd")
    _, entry = _first_l2(image, 1 << 62)
    coffset = struct.unpack(">Q", image.read_bytes()[entry:entry + 8])[0] & ((1 << 54) - 1)
    _patch(image, coffset, b"\xff" * 64)
    _expect_refused(image, tmp_path, capsys, "qcow2.compressed")


def test_garbage_after_the_magic(tmp_path, capsys):
    image = tmp_path / "g.qcow2"
    image.write_bytes(b"QFI\xfb" + struct.pack(">I", 3) + bytes(range(256)) * 64)
    _expect_refused(image, tmp_path, capsys, "qcow2.header")


def test_backing_loop(tmp_path, capsys):
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", b, "4M")
    qemu_img("create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", a, "4M")
    qemu_img("rebase", "-q", "-u", "-b", "a.qcow2", "-F", "qcow2", b)
    err = _expect_refused(a, tmp_path, capsys, "qcow2.backing", "loops")
    assert str(b) in err


def test_missing_backing_file(tmp_path, capsys):
    base = tmp_path / "gone.raw"
    qemu_img("create", "-q", "-f", "raw", base, "4M")
    image = tmp_path / "o.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-b", "gone.raw", "-F", "raw", image, "4M")
    base.unlink()
    _expect_refused(image, tmp_path, capsys, "qcow2.backing", "does not exist", str(base))


def test_chain_too_deep(tmp_path, capsys):
    previous = tmp_path / "l0.raw"
    qemu_img("create", "-q", "-f", "raw", previous, "1M")
    fmt = "raw"
    for i in range(1, 18):
        layer = tmp_path / ("l%d.qcow2" % i)
        qemu_img("create", "-q", "-f", "qcow2", "-u", "-b", previous.name, "-F", fmt,
                 layer, "1M")
        previous, fmt = layer, "qcow2"
    _expect_refused(previous, tmp_path, capsys, "qcow2.backing", "deeper than 16")


def test_encrypted_is_refused_clearly(tmp_path, capsys):
    image = _plain(tmp_path)
    _patch(image, 32, struct.pack(">I", 2))
    _expect_refused(image, tmp_path, capsys, "qcow2.header", "encrypted", "LUKS")


def test_external_data_file_is_refused_clearly(tmp_path, capsys):
    image = tmp_path / "e.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", "data_file=%s" % (tmp_path / "e.data"), image,
             "4M")
    _expect_refused(image, tmp_path, capsys, "qcow2.header", "external data file")


def test_unknown_incompatible_bit_and_corrupt_bit(tmp_path, capsys):
    image = _plain(tmp_path)
    _patch(image, 72, struct.pack(">Q", 1 << 9))
    _expect_refused(image, tmp_path, capsys, "qcow2.header", "incompatible feature bit(s) 9")
    _patch(image, 72, struct.pack(">Q", 2))
    _expect_refused(image, tmp_path, capsys, "qcow2.header", "corrupt")
    _patch(image, 72, struct.pack(">Q", 1))  # dirty: read as it is
    convert(image, tmp_path / "dirty.vmdk")


def test_refusal_through_the_real_command(tmp_path):
    image = _plain(tmp_path)
    _patch(image, 40, struct.pack(">Q", 1 << 40))
    out = tmp_path / "x.ova"
    proc = subprocess.run([sys.executable, "-m", "ovfstream", "pack", str(image), "-o",
                           str(out)], capture_output=True, text=True, timeout=TIMEOUT,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert proc.returncode == 1, proc.stderr
    assert "[qcow2.l1]" in proc.stderr and str(image) in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flips=st.lists(st.tuples(st.integers(0, 8 * 4096 - 1)), min_size=1, max_size=8))
def test_bit_flips_fail_cleanly(tmp_path_factory, flips):
    folder = tmp_path_factory.mktemp("flip")
    image = _flip_source(folder)
    data = bytearray(image.read_bytes())
    # Flip bits in the header cluster's first 4 KiB, the L1 table and the first L2 table.
    head = bytes(data)
    l1 = struct.unpack_from(">Q", head, 40)[0]
    l2 = struct.unpack_from(">Q", head, l1)[0] & OFFSET_MASK
    regions = [0, l1, l2, l2]
    for (bit,) in flips:
        where = regions[bit // 8192 % 4] + (bit % 8192) // 8
        data[where] ^= 1 << (bit % 8)
    image.write_bytes(bytes(data))
    try:
        with open_source(image) as src:
            src.read_at(0, min(src.size_bytes, 1 << 20))
    except (OvfstreamError, FormatError, UnsupportedError):
        pass


_FLIP_CACHE: dict[str, bytes] = {}


def _flip_source(folder: Path) -> Path:
    if "image" not in _FLIP_CACHE:
        _FLIP_CACHE["image"] = _plain(folder, "-c", name="src.qcow2").read_bytes()
    image = folder / "f.qcow2"
    image.write_bytes(_FLIP_CACHE["image"])
    return image


def test_rules_are_listed():
    from ovfstream.rules import ALL_RULES
    assert set(RULES) <= set(ALL_RULES)
    assert Qcow2Source.format == "qcow2"
