"""Hostile VMDKs: one test per rule id, truncation at every kind of point, bit-flip fuzzing.

Only VmdkFormatError or UnsupportedError may escape the reader, with bounded memory.
"""

from __future__ import annotations

import io
import struct
import tracemalloc
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ovfstream.errors import FormatError, UnsupportedError, VmdkFormatError
from ovfstream.vmdk.layout import GRAIN_BYTES, MARKER, SECTOR, Header, metadata_marker
from ovfstream.vmdk.reader import RULES, VmdkReader, extract_raw

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
