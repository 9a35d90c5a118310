"""VmdkReader on real qemu-img stream VMDKs and on spec-layout files from a tiny test writer.

The spec-layout writer below (GD at end, GT after each span, footer, EOS) follows
../shared/FORMATS.md section 1; qemu-img reads its output too, which keeps it honest. The
hostile tests in test_reader_hostile.py tamper with its output.
"""

from __future__ import annotations

import filecmp
import io
import shutil
import struct
import subprocess
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import xxhash
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ovfstream.errors import VmdkFormatError
from ovfstream.vmdk.layout import (
    EOS_SECTOR,
    GD_AT_END,
    GRAIN_BYTES,
    MARKER,
    MARKER_FOOTER,
    MARKER_GD,
    MARKER_GT,
    SECTOR,
    Header,
    metadata_marker,
)
from ovfstream.vmdk.extract import extract_raw, extract_zst
from ovfstream.vmdk.reader import (
    RULES,
    ContentId,
    VmdkReader,
    fold_content_id,
    grain_digest,
)

QEMU_IMG = shutil.which("qemu-img")
needs_qemu = pytest.mark.skipif(QEMU_IMG is None, reason="qemu-img not installed")
MiB = 1 << 20
SHARED = Path(__file__).resolve().parents[2] / ".." / "shared"


# ---------------------------------------------------------------------------------------------
# A tiny spec-layout writer (test-only; tampering hooks for the hostile tests)

DESCRIPTOR = """# Disk DescriptorFile
version=1
encoding="UTF-8"
CID=12345678
parentCID=ffffffff
createType="streamOptimized"

# Extent description
RDONLY {sectors} SPARSE "test.vmdk"

# The Disk Data Base
#DDB

ddb.adapterType = "lsilogic"
ddb.virtualHWVersion = "4"
"""


@dataclass
class Built:
    data: bytearray
    capacity_sectors: int
    grains: dict[int, int] = field(default_factory=dict)     # lba -> marker byte offset
    gts: list[int] = field(default_factory=list)             # GT marker byte offsets
    gd_marker: int = 0
    footer_marker: int = 0
    eos: int = 0

    def bytes(self) -> bytes:
        return bytes(self.data)


def build_stream(disk: bytes, *, capacity_sectors: int | None = None, level: int = 6,
                 pad_last: bool = True, descriptor: str | None = None,
                 extra_grains: dict[int, bytes] | None = None) -> Built:
    """Spec layout: header, descriptor, grains + GT per span, GD, footer, EOS.

    extra_grains: LBA -> raw grain data stored even when all zero (for zero-grain tests).
    """
    cap = capacity_sectors if capacity_sectors is not None else -(-len(disk) // SECTOR)
    n_grains = -(-cap // 128)
    n_spans = -(-n_grains // 512)
    text = (descriptor if descriptor is not None else DESCRIPTOR.format(sectors=cap)).encode()
    head = Header(capacity_sectors=cap, gd_offset_sectors=GD_AT_END, descriptor_sectors=20)
    out = bytearray(head.pack())
    out += text + bytes(20 * SECTOR - len(text))
    out += bytes(128 * SECTOR - len(out))
    b = Built(out, cap)
    gd = [0] * n_spans
    extra = extra_grains or {}
    for span in range(n_spans):
        gt = [0] * 512
        for i in range(512):
            g = span * 512 + i
            if g >= n_grains:
                break
            lba = g * 128
            chunk = extra.get(lba, disk[g * GRAIN_BYTES:(g + 1) * GRAIN_BYTES])
            if lba not in extra and chunk.count(0) == len(chunk):
                continue
            # qemu/open-vmdk cut the last grain at the capacity (whole sectors); we pad to 64 KiB
            chunk = chunk + bytes((GRAIN_BYTES if pad_last else -len(chunk) % SECTOR)
                                  - (len(chunk) if pad_last else 0))
            payload = zlib.compress(chunk, level)
            gt[i] = len(out) // SECTOR
            b.grains[lba] = len(out)
            rec = MARKER.pack(lba, len(payload), 0)[:12] + payload
            out += rec + bytes(-len(rec) % SECTOR)
        if any(gt):
            b.gts.append(len(out))
            out += metadata_marker(MARKER_GT, 4)
            gd[span] = len(out) // SECTOR
            out += struct.pack("<512I", *gt)
    gd_sectors = -(-n_spans * 4 // SECTOR)
    b.gd_marker = len(out)
    out += metadata_marker(MARKER_GD, gd_sectors)
    gd_at = len(out) // SECTOR
    table = struct.pack("<%dI" % n_spans, *gd)
    out += table + bytes(gd_sectors * SECTOR - len(table))
    b.footer_marker = len(out)
    out += metadata_marker(MARKER_FOOTER, 1)
    out += Header(capacity_sectors=cap, gd_offset_sectors=gd_at, descriptor_sectors=20).pack()
    b.eos = len(out)
    out += EOS_SECTOR
    return b


# ---------------------------------------------------------------------------------------------
# Reference content id, computed straight from a raw image (independent of the reader)

def reference_content_id(raw: bytes | Path) -> str:
    data = raw.read_bytes() if isinstance(raw, Path) else raw
    cap = -(-len(data) // SECTOR)
    h = xxhash.xxh3_128()
    h.update(struct.pack("<Q", cap))
    for g in range(-(-len(data) // GRAIN_BYTES)):
        chunk = data[g * GRAIN_BYTES:(g + 1) * GRAIN_BYTES]
        if chunk.count(0) != len(chunk):
            chunk += bytes(GRAIN_BYTES - len(chunk))
            h.update(struct.pack("<QQ", g * 128, xxhash.xxh3_64_intdigest(chunk)))
    return h.hexdigest()


def qemu_stream(raw: Path, out: Path) -> Path:
    subprocess.run([QEMU_IMG, "convert", "-f", "raw", "-O", "vmdk", "-o",
                    "subformat=streamOptimized", str(raw), str(out)], check=True)
    return out


def padded(raw: Path, tmp: Path) -> Path:
    """The source as a VMDK reader sees it: size rounded up to a whole sector."""
    size = raw.stat().st_size
    if size % SECTOR == 0:
        return raw
    copy = tmp / (raw.name + ".padded")
    shutil.copyfile(raw, copy)
    with open(copy, "r+b") as f:
        f.truncate(size + (-size % SECTOR))
    return copy


def write_sparse(path: Path, size: int, pieces: list[tuple[int, bytes]]) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in pieces:
            f.seek(off)
            f.write(data)
    return path


def rand(n: int, seed: int) -> bytes:
    # Deterministic pseudo-random bytes (incompressible enough for deflate).
    out = bytearray()
    i = 0
    while len(out) < n:
        out += xxhash.xxh3_128_digest(b"%d:%d" % (seed, i))
        i += 1
    return bytes(out[:n])


def check_roundtrip(vmdk: Path, source: Path, tmp: Path) -> None:
    """extract_raw is byte-identical to the (sector-padded) source; verify --deep is clean."""
    src = padded(source, tmp)
    out = tmp / (vmdk.name + ".raw")
    with VmdkReader(vmdk) as r:
        res = extract_raw(r, out)
    assert res.size_bytes == src.stat().st_size
    assert out.stat().st_size == src.stat().st_size
    assert filecmp.cmp(out, src, shallow=False)
    assert not Path(str(out) + ".partial").exists()
    with VmdkReader(vmdk) as r:
        report = r.verify(deep=True)
    assert [f for f in report.findings if f.severity == "error"] == []
    assert report.content_id == reference_content_id(src)
    if QEMU_IMG:
        subprocess.run([QEMU_IMG, "compare", "-q", "-f", "raw", "-F", "raw", str(out),
                        str(src)], check=True)


SOURCES = {
    "empty": (10 * MiB, []),
    "zeros-written": (3 * MiB, [(0, bytes(3 * MiB))]),
    "random": (2 * MiB, [(0, b"")]),
    "mixed": (40 * MiB + 12345 * SECTOR, [(0, b"")]),
    "odd-size": (5 * MiB + 777, [(5 * MiB - 1000, b"")]),
    "tiny": (1000, [(0, b"hello")]),
}


def make_source(kind: str, tmp: Path) -> Path:
    size, _ = SOURCES[kind]
    path = tmp / (kind + ".raw")
    if kind == "random":
        return write_sparse(path, size, [(0, rand(size, 1))])
    if kind == "mixed":
        return write_sparse(path, size, [
            (0, rand(70000, 2)),                         # crosses a grain boundary
            (GRAIN_BYTES * 3, bytes(GRAIN_BYTES)),       # written zeros
            (33 * MiB + 100, b"x" * 200000),             # second span, compressible
            (size - 4000, rand(4000, 3)),                # partial last grain
        ])
    if kind == "odd-size":
        return write_sparse(path, size, [(size - 1500, rand(1500, 4))])
    return write_sparse(path, size, SOURCES[kind][1])


# ---------------------------------------------------------------------------------------------
# qemu-img made files

@needs_qemu
@pytest.mark.interop
@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_qemu_stream_roundtrip(kind: str, tmp_path: Path) -> None:
    src = make_source(kind, tmp_path)
    vmdk = qemu_stream(src, tmp_path / (kind + ".vmdk"))
    check_roundtrip(vmdk, src, tmp_path)
    with VmdkReader(vmdk) as r:
        assert r.header.gd_offset_sectors != GD_AT_END      # qemu's head layout
        assert r.descriptor.create_type == "streamOptimized"
        assert r.descriptor.extents[0].sectors == r.capacity_sectors
        assert r.capacity_bytes == src.stat().st_size + (-src.stat().st_size % SECTOR)


@needs_qemu
@pytest.mark.interop
@pytest.mark.slow
def test_qemu_6gib_sparse_data_beyond_4gib(tmp_path: Path) -> None:
    size = 6 << 30
    pieces = [(0, rand(5000, 5)), ((4 << 30) + 12345, rand(100000, 6)), (size - 70000, b"z" * 70000)]
    src = write_sparse(tmp_path / "big.raw", size, pieces)
    vmdk = qemu_stream(src, tmp_path / "big.vmdk")
    out = tmp_path / "big.out"
    with VmdkReader(vmdk) as r:
        res = extract_raw(r, out)
        report = r.verify(deep=True)
    assert out.stat().st_size == size
    assert out.stat().st_blocks * 512 < 8 * MiB               # holes stayed holes
    assert res.bytes_written < 8 * MiB
    assert report.ok and report.grains == res.grains
    subprocess.run([QEMU_IMG, "compare", "-q", "-f", "raw", "-F", "raw", str(out), str(src)],
                   check=True)
    with open(out, "rb") as f:
        for off, data in pieces:
            f.seek(off)
            assert f.read(len(data)) == data
    # content id from the pieces alone (the rest is holes)
    cid = ContentId(size // SECTOR)
    grains: dict[int, bytearray] = {}
    for off, data in pieces:
        for g in range(off // GRAIN_BYTES, -(-(off + len(data)) // GRAIN_BYTES)):
            grains.setdefault(g, bytearray(GRAIN_BYTES))
        for g in grains:
            lo, hi = max(off, g * GRAIN_BYTES), min(off + len(data), (g + 1) * GRAIN_BYTES)
            if lo < hi:
                grains[g][lo - g * GRAIN_BYTES:hi - g * GRAIN_BYTES] = data[lo - off:hi - off]
    for g in sorted(grains):
        cid.add(g * 128, xxhash.xxh3_64_intdigest(bytes(grains[g])))
    assert report.content_id == cid.hexdigest()


@needs_qemu
@pytest.mark.interop
def test_extract_zst_matches_source(tmp_path: Path) -> None:
    src = make_source("mixed", tmp_path)
    vmdk = qemu_stream(src, tmp_path / "m.vmdk")
    out = tmp_path / "m.raw.zst"
    with VmdkReader(vmdk) as r:
        res = extract_zst(r, out, level=1)
    # concatenated frames (holes are frames of their own): read across them, as zstd -d does
    with open(out, "rb") as f:
        data = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True).read()
    assert data == padded(src, tmp_path).read_bytes()
    assert res.size_bytes == len(data)
    assert out.stat().st_size < 1 * MiB


# ---------------------------------------------------------------------------------------------
# Spec layout (our test writer), checked against qemu-img as well

def spec_disk() -> bytes:
    disk = bytearray(70 * MiB + 3 * SECTOR)
    disk[0:70000] = rand(70000, 7)
    disk[40 * MiB:40 * MiB + 5] = b"hello"
    disk[-700:] = rand(700, 8)
    return bytes(disk)


@pytest.mark.parametrize("pad_last", [True, False])
def test_spec_layout_roundtrip(tmp_path: Path, pad_last: bool) -> None:
    disk = spec_disk()
    vmdk = tmp_path / "spec.vmdk"
    vmdk.write_bytes(build_stream(disk, pad_last=pad_last).bytes())
    src = tmp_path / "spec.raw"
    src.write_bytes(disk)
    check_roundtrip(vmdk, src, tmp_path)
    with VmdkReader(vmdk) as r:
        footer = r.footer()
        assert footer is not None and footer.gd_offset_sectors != GD_AT_END
        assert r.verify().layout == "stream"
    if QEMU_IMG:
        # qemu follows the footer's GD: the test writer makes files a real reader accepts.
        subprocess.run([QEMU_IMG, "compare", "-q", "-f", "vmdk", "-F", "raw", str(vmdk),
                        str(src)], check=True)


def test_content_id_independent_of_compression_and_layout(tmp_path: Path) -> None:
    disk = spec_disk()
    ids = set()
    for level, pad in ((1, True), (9, False)):
        with VmdkReader(io.BytesIO(build_stream(disk, level=level, pad_last=pad).bytes())) as r:
            ids.add(r.verify(deep=True).content_id)
    # A stored all-zero grain does not change the id either.
    extra = build_stream(disk, extra_grains={128 * 100: bytes(GRAIN_BYTES)})
    with VmdkReader(io.BytesIO(extra.bytes())) as r:
        rep = r.verify(deep=True)
        assert rep.zero_grains == 1 and rep.ok
        ids.add(rep.content_id)
    assert ids == {reference_content_id(disk)}


def test_fold_content_id_matches_incremental() -> None:
    grain = rand(GRAIN_BYTES, 9)
    cid = ContentId(4096)
    cid.add(128, grain_digest(grain))
    assert fold_content_id(4096, [(128, grain_digest(grain))]) == cid.digest()
    assert grain_digest(b"ab") == xxhash.xxh3_64_intdigest(b"ab" + bytes(GRAIN_BYTES - 2))
    assert fold_content_id(4096, []) != fold_content_id(4097, [])


def test_iter_grains_trims_padded_last_grain() -> None:
    disk = rand(3 * SECTOR, 10)
    with VmdkReader(io.BytesIO(build_stream(disk).bytes())) as r:
        assert list(r.iter_grains()) == [(0, disk)]


def test_zero_grains_become_holes_and_nonsparse_writes_zeros(tmp_path: Path) -> None:
    disk = bytearray(4 * GRAIN_BYTES)
    disk[GRAIN_BYTES * 2:GRAIN_BYTES * 2 + 3] = b"abc"
    b = build_stream(bytes(disk), extra_grains={0: bytes(GRAIN_BYTES)})
    for sparse in (True, False):
        out = tmp_path / ("o%d.raw" % sparse)
        with VmdkReader(io.BytesIO(b.bytes())) as r:
            res = extract_raw(r, out, sparse=sparse)
        assert out.read_bytes() == bytes(disk)
        assert (res.grains, res.zero_grains) == (2, 1)
        assert res.bytes_written == (GRAIN_BYTES if sparse else len(disk))


def test_descriptor_fields() -> None:
    with VmdkReader(io.BytesIO(build_stream(b"x" * 512).bytes()), name="a.vmdk") as r:
        d = r.descriptor
        assert d.cid == "12345678" and d.parent_cid == "ffffffff"
        assert d.entries["encoding"] == "UTF-8"
        assert d.ddb == {"ddb.adapterType": "lsilogic", "ddb.virtualHWVersion": "4"}
        assert d.extents[0].sectors == 1 and d.extents[0].file_name == "test.vmdk"
        assert r.descriptor_text.startswith("# Disk DescriptorFile")
        assert r.descriptor_findings() == []


def test_descriptor_createtype_and_cid_findings() -> None:
    text = DESCRIPTOR.format(sectors=1).replace("streamOptimized", "monolithicSparse")
    text = text.replace("CID=12345678\n", "")
    with VmdkReader(io.BytesIO(build_stream(b"x", descriptor=text).bytes())) as r:
        rules = {f.rule for f in r.verify().findings}
    assert {"vmdk.descriptor.createtype", "vmdk.descriptor.cid"} <= rules


def test_descriptor_extent_mismatch_is_warning() -> None:
    text = DESCRIPTOR.format(sectors=999)
    with VmdkReader(io.BytesIO(build_stream(b"x", descriptor=text).bytes())) as r:
        rep = r.verify()
    assert [(f.rule, f.severity) for f in rep.findings] == [("vmdk.descriptor.extent",
                                                             "warning")]
    assert rep.ok


class NonSeekable(io.RawIOBase):
    """A pipe-like reader: small reads, no seek."""

    def __init__(self, data: bytes) -> None:
        self._b = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buf: bytearray) -> int:  # type: ignore[override]
        n = min(len(buf), 1000)
        chunk = self._b.read(n)
        buf[:len(chunk)] = chunk
        return len(chunk)


def test_non_seekable_stream() -> None:
    disk = spec_disk()
    data = build_stream(disk).bytes()
    with VmdkReader(NonSeekable(data), name="-") as r:  # type: ignore[arg-type]
        assert r.size is None
        got = dict(r.iter_grains())
    assert got[0] == disk[:GRAIN_BYTES] and len(got) == 4
    with VmdkReader(io.BufferedReader(NonSeekable(data))) as r:  # type: ignore[arg-type]
        rep = r.verify(deep=True)
        assert rep.content_id == reference_content_id(disk)
        assert [f.severity for f in rep.findings] == ["info"]


class RangeGuard(io.RawIOBase):
    """A file that fails the test if anyone reads outside [lo, hi)."""

    def __init__(self, data: bytes, lo: int, hi: int) -> None:
        self._b = io.BytesIO(data)
        self.lo, self.hi = lo, hi

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, off: int, whence: int = 0) -> int:
        return self._b.seek(off, whence)

    def tell(self) -> int:
        return self._b.tell()

    def readinto(self, buf: bytearray) -> int:  # type: ignore[override]
        pos = self._b.tell()
        chunk = self._b.read(len(buf))
        if chunk:
            assert self.lo <= pos and pos + len(chunk) <= self.hi, (pos, len(chunk))
        buf[:len(chunk)] = chunk
        return len(chunk)


def test_member_inside_ova_read_in_place(tmp_path: Path) -> None:
    disk = spec_disk()
    vmdk_bytes = build_stream(disk).bytes()
    ova = tmp_path / "pkg.ova"
    with tarfile.open(ova, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in (("pkg.ovf", b"<Envelope/>" * 100), ("disk1.vmdk", vmdk_bytes),
                              ("after.bin", b"\xff" * 5000)):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with tarfile.open(ova) as tar:
        member = tar.getmember("disk1.vmdk")
    base, size = member.offset_data, member.size
    raw = ova.read_bytes()
    guard = RangeGuard(raw, base, base + size)
    with VmdkReader(guard, name=str(ova), member="disk1.vmdk", base_offset=base,  # type: ignore[arg-type]
                    size=size) as r:
        rep = r.verify(deep=True)
        assert rep.ok and rep.content_id == reference_content_id(disk)
        out = tmp_path / "d.raw"
        extract_raw(r, out)
    assert out.read_bytes() == disk
    # The member cut short inside the package: the reader must not borrow the next bytes.
    with pytest.raises(VmdkFormatError) as exc:
        with VmdkReader(io.BytesIO(raw), name="pkg.ova", member="disk1.vmdk",
                        base_offset=base, size=size - SECTOR) as r:
            list(r.iter_grains())
    assert exc.value.rule in ("vmdk.eos", "vmdk.footer")
    assert str(exc.value).startswith("pkg.ova:disk1.vmdk@0x")
    assert exc.value.offset is not None and exc.value.offset < size


def test_rules_documented() -> None:
    src = (Path(__file__).resolve().parents[2] / "src" / "ovfstream" / "vmdk" / "reader.py")
    text = src.read_text()
    for rule in RULES:
        assert rule.startswith("vmdk.")
    # every rule the module raises is listed
    import re
    raised = set(re.findall(r'"(vmdk\.[a-z_.]+)"', text))
    assert raised <= set(RULES)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 3 * 512 * 128 + 700),
       st.lists(st.tuples(st.integers(0, 3 * 512 * 128 * SECTOR), st.binary(min_size=1,
                                                                            max_size=3000)),
                max_size=6),
       st.booleans())
def test_property_random_sparse_disks_roundtrip(sectors: int, writes: list[tuple[int, bytes]],
                                                pad_last: bool) -> None:
    size = sectors * SECTOR - (sectors % 7)       # also sizes that are not whole sectors
    disk = bytearray(size)
    for off, data in writes:
        if off < size:
            disk[off:off + len(data)] = data[:size - off]
    disk_b = bytes(disk)
    with VmdkReader(io.BytesIO(build_stream(disk_b, pad_last=pad_last).bytes())) as r:
        rep = r.verify(deep=True)
        assert rep.ok, rep.findings
        assert rep.content_id == reference_content_id(disk_b)
        got = bytearray(r.capacity_bytes)
        for lba, grain in r.iter_grains():
            got[lba * SECTOR:lba * SECTOR + len(grain)] = grain
    assert bytes(got[:size]) == disk_b and not any(got[size:])
