"""Hostile VMDKs: one test per rule id, truncation at every kind of point, bit-flip fuzzing.

Only VmdkFormatError or UnsupportedError may escape the reader, with bounded memory.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ovfstream.errors import FormatError, UnsupportedError, VmdkFormatError
from ovfstream.vmdk.layout import GRAIN_BYTES, MARKER, SECTOR, Header, metadata_marker
from ovfstream.vmdk.extract import extract_raw
from ovfstream.vmdk.reader import RULES, VmdkReader

from .test_reader import DESCRIPTOR, build_stream, rand

MiB = 1 << 20


def small_disk() -> bytes:
    disk = bytearray(33 * MiB + 5 * SECTOR)     # two spans, partial last grain
    disk[0:70000] = rand(70000, 11)
    disk[GRAIN_BYTES * 5:GRAIN_BYTES * 5 + 10] = b"0123456789"
    disk[32 * MiB:32 * MiB + 3000] = rand(3000, 12)
    disk[-100:] = b"e" * 100
    return bytes(disk)


DISK = small_disk()
BUILT = build_stream(DISK)
GOOD = BUILT.bytes()


def read_all(data: bytes, *, deep: bool = True) -> None:
    """Everything a caller may do with a VMDK; raises on bad input."""
    with VmdkReader(io.BytesIO(data), name="h.vmdk") as r:
        for _lba, _grain in r.iter_grains():
            pass
        rep = r.verify(deep=deep)
        errors = [f for f in rep.findings if f.severity == "error"]
        if errors:
            f = errors[0]
            raise VmdkFormatError(f.rule, f.message, path=f.file, offset=f.offset)


def expect(rule: str, data: bytes | bytearray) -> VmdkFormatError:
    assert rule in RULES
    with pytest.raises(VmdkFormatError) as exc:
        read_all(bytes(data))
    assert exc.value.rule == rule, str(exc.value)
    assert exc.value.offset is None or 0 <= exc.value.offset <= len(data)
    return exc.value


def patch_header(data: bytes, **fields: object) -> bytearray:
    h = Header.unpack(data[:SECTOR])
    out = bytearray(data)
    out[:SECTOR] = Header(**{**h.__dict__, **fields}).pack()
    return out


def grain_record(lba: int, payload: bytes, size_field: int | None = None) -> bytes:
    rec = MARKER.pack(lba, len(payload) if size_field is None else size_field, 0)[:12] + payload
    return rec + bytes(-len(rec) % SECTOR)


def test_good_file_passes() -> None:
    read_all(GOOD)


# -- header ----------------------------------------------------------------------------------

def test_bad_magic() -> None:
    expect("vmdk.header.magic", b"XXXX" + GOOD[4:])


def test_descriptor_only_vmdk_is_unsupported() -> None:
    with pytest.raises(UnsupportedError):
        VmdkReader(io.BytesIO(b"# Disk DescriptorFile\nversion=1\n" + bytes(600)))


@pytest.mark.parametrize("version", [0, 4, 0xFFFFFFFF])
def test_bad_version(version: int) -> None:
    expect("vmdk.header.version", patch_header(GOOD, version=version))


def test_newline_damaged() -> None:
    expect("vmdk.header.newline", patch_header(GOOD, newline_check=b"\n \n\n"))


@pytest.mark.parametrize("flags", [0x1, 0x10001, 0x20001, 0x1030001])
def test_non_stream_or_unknown_flags_unsupported(flags: int) -> None:
    with pytest.raises(UnsupportedError):
        VmdkReader(io.BytesIO(bytes(patch_header(GOOD, flags=flags))))


def test_grain_size() -> None:
    expect("vmdk.header.grain", patch_header(GOOD, grain_sectors=100))
    with pytest.raises(UnsupportedError):
        VmdkReader(io.BytesIO(bytes(patch_header(GOOD, grain_sectors=64))))


def test_gtes_per_gt() -> None:
    expect("vmdk.header.gt", patch_header(GOOD, gtes_per_gt=1024))


def test_capacity_zero_and_huge() -> None:
    expect("vmdk.header.capacity", patch_header(GOOD, capacity_sectors=0))
    with pytest.raises(UnsupportedError):
        VmdkReader(io.BytesIO(bytes(patch_header(GOOD, capacity_sectors=1 << 60))))


@pytest.mark.parametrize("fields", [dict(descriptor_sectors=0), dict(descriptor_sectors=30000),
                                    dict(descriptor_offset_sectors=0)])
def test_descriptor_bounds(fields: dict[str, int]) -> None:
    expect("vmdk.header.descriptor", patch_header(GOOD, **fields))


def test_descriptor_past_overhead() -> None:
    expect("vmdk.header.overhead", patch_header(GOOD, descriptor_offset_sectors=1 << 62))
    expect("vmdk.header.overhead", patch_header(GOOD, overhead_sectors=1 << 40))


def test_compress_algorithm() -> None:
    expect("vmdk.header.compression", patch_header(GOOD, compress_algorithm=2))


def test_table_past_eof() -> None:
    # A head gdOffset past the end of the file (qemu layout) ...
    expect("vmdk.header.gd", patch_header(GOOD, gd_offset_sectors=len(GOOD) // SECTOR + 10))
    # ... and a footer whose gdOffset is past it.
    data = bytearray(GOOD)
    footer = BUILT.footer_marker + SECTOR
    struct.pack_into("<Q", data, footer + 56, len(GOOD) // SECTOR + 10)
    expect("vmdk.header.gd", data)


def test_descriptor_not_utf8() -> None:
    data = bytearray(GOOD)
    data[SECTOR + 3] = 0xFF
    expect("vmdk.descriptor.encoding", data)


# -- footer and metadata markers -------------------------------------------------------------

def test_footer_differs_from_header() -> None:
    data = bytearray(GOOD)
    struct.pack_into("<Q", data, BUILT.footer_marker + SECTOR + 12, 12345)
    expect("vmdk.footer", data)


def test_footer_gd_not_after_gd_marker() -> None:
    data = bytearray(GOOD)
    gd = struct.unpack_from("<Q", data, BUILT.footer_marker + SECTOR + 56)[0]
    struct.pack_into("<Q", data, BUILT.footer_marker + SECTOR + 56, gd - 1)
    expect("vmdk.footer", data)


def test_missing_footer() -> None:
    data = GOOD[:BUILT.footer_marker] + GOOD[BUILT.eos:]
    expect("vmdk.footer", data)


def test_unknown_marker_type() -> None:
    data = bytearray(GOOD)
    data[BUILT.gts[0]:BUILT.gts[0] + SECTOR] = MARKER.pack(4, 0, 7) + bytes(SECTOR - 16)
    expect("vmdk.marker.type", data)


def test_gt_marker_wrong_size() -> None:
    data = bytearray(GOOD)
    data[BUILT.gts[0]:BUILT.gts[0] + SECTOR] = metadata_marker(1, 5)
    expect("vmdk.marker.size", data)


def test_gd_marker_huge_size() -> None:
    data = bytearray(GOOD)
    data[BUILT.gd_marker:BUILT.gd_marker + SECTOR] = metadata_marker(2, 1 << 40)
    expect("vmdk.marker.size", data)


def test_grain_after_footer() -> None:
    rec = grain_record(128 * 600, zlib.compress(b"a" * GRAIN_BYTES))
    data = GOOD[:BUILT.eos] + rec + GOOD[BUILT.eos:]
    expect("vmdk.marker.type", data)


# -- grains ----------------------------------------------------------------------------------

def same_size_grain(lba: int, new_lba: int, payload: bytes | None = None,
                    size_field: int | None = None) -> bytearray:
    """The grain at lba re-labelled / re-filled, occupying exactly its old sectors."""
    start = BUILT.grains[lba]
    old_size = struct.unpack_from("<I", GOOD, start + 8)[0]
    data = bytearray(GOOD)
    struct.pack_into("<Q", data, start, new_lba)
    if payload is not None:
        assert -(-(12 + len(payload)) // SECTOR) == -(-(12 + old_size) // SECTOR)
        data[start + 12:start + 12 + len(payload)] = payload
        struct.pack_into("<I", data, start + 8, len(payload))
    if size_field is not None:
        struct.pack_into("<I", data, start + 8, size_field)
    return data


LBAS = sorted(BUILT.grains)


def test_lba_out_of_order() -> None:
    err = expect("vmdk.grain.order", same_size_grain(LBAS[1], 0))
    assert err.offset == BUILT.grains[LBAS[1]]


def test_lba_beyond_capacity() -> None:
    expect("vmdk.grain.lba", same_size_grain(LBAS[-1], BUILT.capacity_sectors + 128 * 7))


def test_lba_not_grain_aligned() -> None:
    expect("vmdk.grain.lba", same_size_grain(LBAS[1], LBAS[1] + 1))


def test_huge_compressed_size() -> None:
    expect("vmdk.grain.size", same_size_grain(LBAS[0], LBAS[0], size_field=0xFFFFFFF0))


def test_grain_past_eof() -> None:
    last = BUILT.grains[LBAS[-1]]
    expect("vmdk.truncated", GOOD[:last + 2 * SECTOR])


def make_with_grain(payload: bytes, *, lba: int = 0) -> bytes:
    """A one-grain spec-layout file whose grain payload is exactly payload."""
    b = build_stream(b"q" * SECTOR, capacity_sectors=4096)
    start = b.grains[0]
    end = b.gts[0]
    return b.bytes()[:start] + grain_record(lba, payload) + b.bytes()[end:]


def test_inflate_bomb_is_bounded() -> None:
    bomb = zlib.compress(bytes(10 * MiB), 9)
    assert len(bomb) < 65536
    data = make_with_grain(bomb)
    tracemalloc.start()
    try:
        err = expect("vmdk.grain.inflate", data)
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "more than" in err.detail
    assert peak < 4 * MiB


def test_grain_short_inflation() -> None:
    expect("vmdk.grain.inflate", make_with_grain(zlib.compress(b"a" * 1000)))


def test_raw_deflate_refused() -> None:
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    raw = c.compress(b"a" * GRAIN_BYTES) + c.flush()
    expect("vmdk.grain.inflate", make_with_grain(raw))


def test_corrupt_deflate_checksum() -> None:
    good = bytearray(zlib.compress(rand(GRAIN_BYTES, 13)))
    good[-1] ^= 0xFF
    expect("vmdk.grain.inflate", make_with_grain(bytes(good)))


def test_cut_deflate_stream() -> None:
    expect("vmdk.grain.inflate", make_with_grain(zlib.compress(rand(GRAIN_BYTES, 14))[:-100]))


def test_garbage_after_deflate_stream() -> None:
    expect("vmdk.grain.inflate", make_with_grain(zlib.compress(b"a" * GRAIN_BYTES) + b"junk"))


# -- end of stream ---------------------------------------------------------------------------

def test_missing_eos() -> None:
    expect("vmdk.eos", GOOD[:BUILT.eos])


def test_trailing_garbage() -> None:
    expect("vmdk.trailing", GOOD + bytes(5000) + b"x")


def test_trailing_zeros_tolerated() -> None:
    read_all(GOOD + bytes(70000))


# -- tables (verify) -------------------------------------------------------------------------

def test_gd_entry_past_eof() -> None:
    data = bytearray(GOOD)
    gd = BUILT.gd_marker + SECTOR
    struct.pack_into("<I", data, gd, len(GOOD) // SECTOR + 100)
    expect("vmdk.gd.entry", data)


def test_gd_entry_not_at_gt() -> None:
    data = bytearray(GOOD)
    gd = BUILT.gd_marker + SECTOR
    struct.pack_into("<I", data, gd, BUILT.grains[0] // SECTOR + 1)
    expect("vmdk.gd.entry", data)


def test_gt_entry_points_elsewhere() -> None:
    data = bytearray(GOOD)
    gt = BUILT.gts[0] + SECTOR
    struct.pack_into("<I", data, gt + 4, BUILT.grains[0] // SECTOR)
    expect("vmdk.gt.entry", data)


def test_gt_entry_for_missing_grain() -> None:
    data = bytearray(GOOD)
    gt = BUILT.gts[0] + SECTOR
    struct.pack_into("<I", data, gt + 4 * 300, BUILT.grains[0] // SECTOR)
    expect("vmdk.gt.entry", data)


def test_verify_reports_instead_of_raising() -> None:
    with VmdkReader(io.BytesIO(bytes(same_size_grain(LBAS[1], 0)))) as r:
        rep = r.verify(deep=True)
    assert not rep.ok and rep.findings[0].rule == "vmdk.grain.order"


# -- truncation and fuzzing ------------------------------------------------------------------

@pytest.mark.parametrize("cut", sorted({0, 3, 511, 512, 600, 128 * SECTOR, 128 * SECTOR + 12,
                                        BUILT.gts[0] + 100, BUILT.gd_marker,
                                        BUILT.footer_marker + 700, BUILT.eos, len(GOOD) - 1}))
def test_truncated_at_structural_points(cut: int) -> None:
    with pytest.raises(VmdkFormatError):
        read_all(GOOD[:cut])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(GOOD) - 1))
def test_truncated_anywhere(cut: int) -> None:
    with pytest.raises(VmdkFormatError):
        read_all(GOOD[:cut], deep=False)


# Small file for fast fuzzing: one span, three grains and a partial one.
FUZZ_DISK = bytearray(5 * GRAIN_BYTES + 3 * SECTOR)
FUZZ_DISK[:3000] = rand(3000, 15)
FUZZ_DISK[2 * GRAIN_BYTES:2 * GRAIN_BYTES + 9] = b"ninebytes"
FUZZ_DISK[-10:] = b"0123456789"
FUZZ = build_stream(bytes(FUZZ_DISK)).bytes()


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(FUZZ) - 1), st.integers(0, 7)),
                min_size=1, max_size=8))
def test_bit_flips_only_format_errors(flips: list[tuple[int, int]]) -> None:
    data = bytearray(FUZZ)
    for pos, bit in flips:
        data[pos] ^= 1 << bit
    try:
        read_all(bytes(data))
    except (FormatError, UnsupportedError):
        pass


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, len(FUZZ) // 4 - 1), st.sampled_from([0, 1, 0x7F, 0x80, 0xFFFFFFFF,
                                                            0x7FFFFFFF, 128, 4096]))
def test_word_overwrites_only_format_errors(word: int, value: int) -> None:
    data = bytearray(FUZZ)
    struct.pack_into("<I", data, word * 4, value)
    try:
        read_all(bytes(data))
    except (FormatError, UnsupportedError):
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=2048))
def test_random_head_bytes(blob: bytes) -> None:
    data = blob + FUZZ[len(blob):]
    try:
        read_all(data)
    except (FormatError, UnsupportedError):
        pass


def test_extract_leaves_no_partial_on_error(tmp_path: Path) -> None:
    bad = bytes(same_size_grain(LBAS[1], 0))
    out = tmp_path / "x.raw"
    with VmdkReader(io.BytesIO(bad)) as r, pytest.raises(VmdkFormatError):
        extract_raw(r, out)
    assert not out.exists() and not Path(str(out) + ".partial").exists()


def test_descriptor_text_template_is_utf8() -> None:
    # Guard for the fixture itself: the template must stay ASCII for the encoding test.
    assert DESCRIPTOR.isascii()


# -- issue 8: super-linear descriptors, zst output, hostile classes --------------------------

def build_sparse(capacity_sectors: int, grains: dict[int, bytes], *,
                 descriptor: str | None = None, descriptor_sectors: int = 20) -> bytes:
    """A spec-layout stream VMDK holding only ``grains`` (LBA -> 64 KiB of data): its cost
    follows the grains, not the capacity (build_stream walks every grain of the capacity)."""
    from ovfstream.vmdk.layout import (EOS_SECTOR, GD_AT_END, MARKER_FOOTER, MARKER_GD,
                                       MARKER_GT)
    text = (descriptor if descriptor is not None
            else DESCRIPTOR.format(sectors=capacity_sectors)).encode()
    assert len(text) <= descriptor_sectors * SECTOR
    overhead = -(-(1 + descriptor_sectors) // 128) * 128            # whole grains
    head = dict(capacity_sectors=capacity_sectors, descriptor_sectors=descriptor_sectors,
                overhead_sectors=overhead)
    out = bytearray(Header(gd_offset_sectors=GD_AT_END, **head).pack())
    out += text + bytes(descriptor_sectors * SECTOR - len(text))
    out += bytes(overhead * SECTOR - len(out))
    n_spans = -(-(-(-capacity_sectors // 128)) // 512)
    gd: dict[int, int] = {}
    spans: dict[int, list[int]] = {}
    for lba in sorted(grains):
        spans.setdefault(lba // (128 * 512), []).append(lba)
    for span, lbas in sorted(spans.items()):
        gt = [0] * 512
        for lba in lbas:
            gt[lba // 128 % 512] = len(out) // SECTOR
            out += grain_record(lba, zlib.compress(grains[lba]))
        out += metadata_marker(MARKER_GT, 4)
        gd[span] = len(out) // SECTOR
        out += struct.pack("<512I", *gt)
    gd_sectors = -(-n_spans * 4 // SECTOR)
    out += metadata_marker(MARKER_GD, gd_sectors)
    gd_at = len(out) // SECTOR
    table = bytearray(gd_sectors * SECTOR)
    for span, sector in gd.items():
        struct.pack_into("<I", table, span * 4, sector)
    out += table + metadata_marker(MARKER_FOOTER, 1)
    out += Header(gd_offset_sectors=gd_at, **head).pack() + EOS_SECTOR
    return bytes(out)


def test_build_sparse_is_a_good_file() -> None:
    grains = {0: rand(GRAIN_BYTES, 21), 128 * 700: b"x" * GRAIN_BYTES}
    data = build_sparse(128 * 1000 + 7, grains)
    read_all(data)
    with VmdkReader(io.BytesIO(data)) as r:
        assert dict(r.iter_grains()) == {0: grains[0], 128 * 700: grains[128 * 700]}


def run_bounded(code: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """Run python code in a child: a regression to super-linear time fails at the timeout
    instead of hanging the run (a regex cannot be interrupted in-process)."""
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail("still running after %s s" % timeout)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_descriptor_lines_of_spaces_parse_in_linear_time() -> None:
    """A line with a million spaces took > 60 s (80k: 12.8 s): backtracking regexes."""
    run_bounded(textwrap.dedent('''
        import time
        from ovfstream.vmdk.descriptor import Descriptor
        n = 1_000_000
        lines = ["RW 1 x" + " " * n + "y", "RW 1 SPARSE \\"a\\"" + " " * n + "z",
                 "k=b" + " " * n + "c", "a" + " " * n + "=b", "ddb.x = \\"" + " " * n,
                 "RW" + " " * n + "1" + " " * n + "FLAT"]
        started = time.perf_counter()
        d = Descriptor.parse("\\n".join(lines))
        assert [e.kind for e in d.extents] == ["FLAT"] and len(d.bad_lines) == 2
        assert d.entries == {"k": "b" + " " * n + "c", "a": "b"} and d.ddb == {"ddb.x": '"'}
        assert time.perf_counter() - started < 2, time.perf_counter() - started
    '''), timeout=20)


def test_descriptor_of_spaces_through_the_cli(tmp_path: Path) -> None:
    """The same, end to end: a VMDK whose embedded descriptor is one 1 MB line of spaces."""
    text = DESCRIPTOR.format(sectors=128 * 8) + "ddb.comment = a" + " " * (1 << 20) + "b\n"
    path = tmp_path / "spaces.vmdk"
    path.write_bytes(build_sparse(128 * 8, {0: b"q" * GRAIN_BYTES}, descriptor=text,
                                  descriptor_sectors=-(-len(text) // SECTOR)))
    for command in ("verify", "inspect"):
        try:
            proc = subprocess.run([sys.executable, "-m", "ovfstream", command, str(path)],
                                  capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("%s: still running after 30 s" % command)
        assert proc.returncode == 0, proc.stderr


def test_extent_with_a_huge_number_is_a_finding() -> None:
    """int() of a 5000-digit sector count raised ValueError (a traceback); now the line is
    simply not an extent."""
    text = DESCRIPTOR.format(sectors="9" * 5000)
    data = build_sparse(128 * 8, {0: b"q" * GRAIN_BYTES}, descriptor=text)
    expect("vmdk.descriptor.extent", data)


# zstd output -------------------------------------------------------------------------------

ZST_MAGIC = b"\x28\xb5\x2f\xfd"


def zst_frames(data: bytes) -> Iterator[tuple[int, bytes | None]]:
    """(decoded size, decoded bytes or None for an all-zero RLE frame) per frame, walking the
    frame and block headers of RFC 8878 ourselves; RLE frames are checked without decoding."""
    import zstandard
    pos = 0
    while pos < len(data):
        assert data[pos:pos + 4] == ZST_MAGIC, pos
        fhd = data[pos + 4]
        fcs_size = {0: 1 if fhd & 0x20 else 0, 1: 2, 2: 4, 3: 8}[fhd >> 6]
        did_size = {0: 0, 1: 1, 2: 2, 3: 4}[fhd & 3]
        start = pos
        pos += 5 + (0 if fhd & 0x20 else 1) + did_size
        fcs = int.from_bytes(data[pos:pos + fcs_size], "little") if fcs_size else None
        if fcs_size == 2:
            fcs += 256                                  # type: ignore[operator]
        pos += fcs_size
        first = int.from_bytes(data[pos:pos + 3], "little")
        if fcs is not None and (first >> 1) & 3 == 1 and data[pos + 3] == 0:
            # an RLE frame of zeros: every block must be RLE of 0x00, 128 KiB but the last
            n_blocks = -(-fcs // (128 << 10))
            last = fcs - (n_blocks - 1) * (128 << 10)
            block = ((128 << 10) << 3 | 2).to_bytes(3, "little") + b"\0"
            tail = (last << 3 | 3).to_bytes(3, "little") + b"\0"
            end = pos + 4 * n_blocks
            assert data[pos:end - 4] == block * (n_blocks - 1) and data[end - 4:end] == tail
            pos = end
            yield fcs, None
            continue
        while True:
            header = int.from_bytes(data[pos:pos + 3], "little")
            kind, size = (header >> 1) & 3, header >> 3
            pos += 3 + (1 if kind == 1 else size)
            if header & 1:
                break
        pos += 4 if fhd & 4 else 0
        out = zstandard.ZstdDecompressor().decompressobj().decompress(data[start:pos])
        assert fcs is None or fcs == len(out)
        yield len(out), out


def check_zst(data: bytes, capacity_bytes: int, grains: dict[int, bytes]) -> int:
    """The frames decode to the disk: the grains at their LBAs, zeros elsewhere; returns the
    number of frames."""
    by_offset = sorted((lba * SECTOR, g) for lba, g in grains.items())
    pos = 0
    frames = 0
    for size, decoded in zst_frames(data):
        frames += 1
        inside = [(o, g) for o, g in by_offset if o < pos + size and o + len(g) > pos]
        if decoded is None:
            assert not [g for o, g in inside if g.count(0) != len(g)], (pos, size)
        else:
            expected = bytearray(size)
            for o, g in inside:
                part = g[max(0, pos - o):pos + size - o]
                at = max(0, o - pos)
                expected[at:at + len(part)] = part
            assert decoded == bytes(expected), pos
        pos += size
    assert pos == capacity_bytes
    return frames


def test_zst_of_4_tib_declared_follows_the_data(tmp_path: Path) -> None:
    """A 600 KB VMDK declaring 4 TiB took 521 s as zst (time grew with the capacity): holes
    are now frames of RLE blocks written without touching the zeros."""
    capacity = (4 << 40) // SECTOR
    step = capacity // 10 // 128 * 128
    grains = {i * step: bytes([0x41 + i]) * GRAIN_BYTES for i in range(10)}
    grains[128 * 3] = rand(GRAIN_BYTES, 31)                         # close together: one
    grains[128 * 5] = rand(GRAIN_BYTES, 32)                         # compressor frame
    data = build_sparse(capacity, grains)
    assert len(data) < 800_000                                      # the GD is 512 KiB
    src = tmp_path / "big.vmdk"
    src.write_bytes(data)
    # in a child, through the CLI: a regression (minutes) fails at the timeout; ~0.1 s now
    try:
        proc = subprocess.run([sys.executable, "-m", "ovfstream", "extract", str(src), "-o",
                               str(tmp_path / "big.zst"), "--format", "zst", "--json"],
                              capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        pytest.fail("extract --format zst of 4 TiB declared: still running after 30 s")
    assert proc.returncode == 0, proc.stderr
    disk = json.loads(proc.stdout)["disks"][0]
    assert disk["capacity_bytes"] == 4 << 40 and disk["grains"] == len(grains)
    out = (tmp_path / "big.zst").read_bytes()
    assert len(out) < (4 << 40) // (128 << 10) * 4 + (1 << 20)   # 4 bytes per 128 KiB of hole
    assert check_zst(out, 4 << 40, grains) < 2 * len(grains) + 2


@pytest.mark.interop
def test_zst_frames_read_by_the_zstd_tool(tmp_path: Path) -> None:
    """zstd -d reads the concatenated frames back into exactly the disk (partial last grain,
    holes longer and shorter than the frame cut, zero-written grains)."""
    from ovfs_testlib import tool
    from ovfstream.vmdk.extract import extract_zst
    import random
    rng = random.Random(5)
    capacity = (96 << 20) // SECTOR + 3
    clusters = [0, 100, 700, 760, 1400]                  # grain numbers; 64 KiB each
    picked = sorted({c + rng.randrange(90) for c in clusters for _ in range(25)}
                    | {capacity // 128})
    grains = {g * 128: (rng.randbytes(GRAIN_BYTES) if rng.random() < 0.5 else
                        bytes([rng.randrange(256)]) * GRAIN_BYTES) for g in picked}
    src = tmp_path / "d.vmdk"
    src.write_bytes(build_sparse(capacity, grains))
    with VmdkReader(src) as r:
        extract_zst(r, tmp_path / "d.zst", level=1)
    raw = bytearray(capacity * SECTOR)
    for lba, g in grains.items():
        raw[lba * SECTOR:lba * SECTOR + len(g)] = g[:len(raw) - lba * SECTOR]
    proc = subprocess.run([tool("zstd"), "-dc", str(tmp_path / "d.zst")], capture_output=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == bytes(raw)
    assert check_zst((tmp_path / "d.zst").read_bytes(), len(raw), grains) > 2


def second_grain_corrupt() -> bytes:
    """GOOD with the second grain's deflate payload damaged: the first grain is fine."""
    start = BUILT.grains[LBAS[1]]
    size = struct.unpack_from("<I", GOOD, start + 8)[0]
    data = bytearray(GOOD)
    data[start + 12 + size // 2] ^= 0xFF
    return bytes(data)


def test_zst_format_error_after_the_first_grain(tmp_path: Path) -> None:
    """The error after the first grain came out as zstandard.ZstdError (the frame was closed
    on the way out with fewer bytes than its declared size); now it is the FormatError."""
    from ovfstream.vmdk.extract import extract_zst
    src = tmp_path / "c.vmdk"
    src.write_bytes(second_grain_corrupt())
    with VmdkReader(src) as r, pytest.raises(VmdkFormatError) as info:
        extract_zst(r, tmp_path / "c.zst")
    assert info.value.rule == "vmdk.grain.inflate"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.vmdk"]


def test_zst_interrupted_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after the first grain (KeyboardInterrupt raised inside the walk, as SIGINT
    does): the interruption goes on as itself and nothing is left."""
    from ovfstream.vmdk.extract import extract_zst
    src = tmp_path / "g.vmdk"
    src.write_bytes(GOOD)

    original = VmdkReader.iter_grains

    def grains_then_interrupt(self: VmdkReader, *, workers: int = 1
                              ) -> Iterator[tuple[int, bytes]]:
        walk = original(self, workers=workers)
        yield next(walk)
        yield next(walk)
        raise KeyboardInterrupt

    monkeypatch.setattr(VmdkReader, "iter_grains", grains_then_interrupt)
    with VmdkReader(src) as r, pytest.raises(KeyboardInterrupt):
        extract_zst(r, tmp_path / "g.zst")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.vmdk"]


# The issue-8 classes in a generator: hostile descriptor lines (long runs of spaces, huge
# numbers, markup and control characters in ddb values, FLAT extents naming files, several
# extents), hostile header fields (capacity up to past the 64 TiB limit, non-stream flags),
# grains anywhere.  Whatever is read must come out the same as raw and as zst.

_LINES = st.one_of(
    st.builds(lambda head, n, tail: head + " " * n + tail,
              st.sampled_from(["RW 1 x", "ddb.c = a", "k=", "RW", 'RDONLY 8 SPARSE "a"', "#"]),
              st.integers(0, 30000), st.sampled_from(["", "y", "=b", '"', " 1", "\t2"])),
    st.builds(lambda access, digits, kind, name: "%s %s %s%s" % (access, digits, kind, name),
              st.sampled_from(["RW", "RDONLY", "NOACCESS", "rw"]),
              st.sampled_from(["0", "2048", "9" * 25, "9" * 5000, "٣"]),
              st.sampled_from(["SPARSE", "FLAT", "VMFS", "ZERO"]),
              st.sampled_from(["", ' "/etc/passwd" 0', ' "x.vmdk"', ' "a b" 9' + "9" * 30])),
    st.builds(lambda key, value: '%s = "%s"' % (key, value),
              st.sampled_from(["ddb.adapterType", "createType", "CID", "parentCID", "ddb.uuid"]),
              st.sampled_from(["[/bold]", "[red on red]x[/]", "\x1b[2J", "\x9b31m", "\u202e",
                               "streamOptimized", "monolithicFlat", "ffffffff", ""])),
)


@st.composite
def hostile_vmdks(draw: st.DrawFn) -> tuple[bytes, int, dict[int, bytes]]:
    capacity = draw(st.sampled_from([128 * 40 + 3, 128 * 512 * 3, (64 << 30) // SECTOR,
                                     (1 << 37) + 128]))
    lines = draw(st.lists(_LINES, max_size=4))
    base_lines = DESCRIPTOR.format(sectors=capacity).splitlines()
    drop = draw(st.one_of(st.just(set()), st.sets(st.integers(0, len(base_lines) - 1),
                                                  max_size=2)))
    text = "\n".join([l for i, l in enumerate(base_lines) if i not in drop] + lines) + "\n"
    n_grains = -(-capacity // 128)
    picks = draw(st.lists(st.integers(0, min(n_grains, 1 << 20) - 1), max_size=4, unique=True))
    grains = {g * 128: draw(st.sampled_from([b"a" * GRAIN_BYTES, rand(GRAIN_BYTES, g),
                                             bytes(GRAIN_BYTES)])) for g in picks}
    data = build_sparse(min(capacity, (1 << 37) - 128) if capacity > 1 << 37 else capacity,
                        grains, descriptor=text,
                        descriptor_sectors=max(1, -(-len(text.encode()) // SECTOR)))
    out = bytearray(data)
    if capacity > 1 << 37:                                  # past the limit: head and footer
        struct.pack_into("<Q", out, 12, capacity)
    if draw(st.integers(0, 5)) == 0:
        struct.pack_into("<I", out, 8, draw(st.sampled_from([0x3, 0x30001, 0x10001, 0x20003])))
    return bytes(out), capacity, grains


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=hostile_vmdks())
def test_hostile_descriptor_and_header_classes(tmp_path_factory: pytest.TempPathFactory,
                                               case: tuple[bytes, int, dict[int, bytes]]) -> None:
    from ovfstream.vmdk.extract import extract_zst
    data, capacity, grains = case
    started = time.perf_counter()
    try:
        read_all(data)
    except (FormatError, UnsupportedError) as exc:
        event("refused: %s" % getattr(exc, "rule", "unsupported"))
        return
    finally:
        assert time.perf_counter() - started < 5      # linear: milliseconds
    event("read, capacity %d sectors" % capacity)
    folder = tmp_path_factory.mktemp("x")
    with VmdkReader(io.BytesIO(data)) as r:
        extract_raw(r, folder / "d.raw")
    with VmdkReader(io.BytesIO(data)) as r:
        extract_zst(r, folder / "d.zst", level=1)
    raw_size = (folder / "d.raw").stat().st_size
    assert raw_size == capacity * SECTOR
    with open(folder / "d.raw", "rb") as raw:
        for lba, grain in grains.items():
            want = grain[:raw_size - lba * SECTOR]
            assert os.pread(raw.fileno(), len(want), lba * SECTOR) == want
    # the zst: frames walked and compared without decoding the zero runs
    check_zst((folder / "d.zst").read_bytes(), raw_size, grains)
