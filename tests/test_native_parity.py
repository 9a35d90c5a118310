"""The native span encoder against its pure-Python twin: byte parity on random spans."""

from __future__ import annotations

import json
import platform
import random
import zlib

import pytest
import xxhash
from hypothesis import assume, given, settings, strategies as st

from ovfstream import grains_py
from ovfstream.engine import get_engine

native = pytest.importorskip("ovfstream._grains")
GRAIN = 65536
# The compiled core itself (not run when OVFSTREAM_PURE=1 selects the twin).
pytestmark = pytest.mark.native_core


def _span(kinds: list[int], seed: int) -> bytearray:
    rng = random.Random(seed)
    buf = bytearray(len(kinds) * GRAIN)
    for i, kind in enumerate(kinds):
        if kind == 1:
            buf[i * GRAIN:(i + 1) * GRAIN] = rng.randbytes(GRAIN)
        elif kind == 2:  # one non-zero byte at a random place: still a data grain
            buf[i * GRAIN + rng.randrange(GRAIN)] = rng.randrange(1, 256)
        elif kind == 3:
            buf[i * GRAIN:(i + 1) * GRAIN] = (b"grain text " * 6000)[:GRAIN]
    return buf


@settings(max_examples=40, deadline=None)
@given(kinds=st.lists(st.integers(0, 3), min_size=0, max_size=24), seed=st.integers(0, 2**32),
       first_lba=st.integers(0, 2**40).map(lambda x: x * 128))
def test_encode_span_parity(kinds, seed, first_lba):
    span = _span(kinds, seed)
    compress = get_engine("isal", 1).compress
    a = native.encode_span(span, first_lba, len(kinds), compress, xxhash.xxh3_64_intdigest)
    b = grains_py.encode_span(span, first_lba, len(kinds), compress, xxhash.xxh3_64_intdigest)
    assert bytes(a[0]) == bytes(b[0]) and a[1:] == b[1:]
    assert len(a[2]) == 16 * sum(1 for k in kinds if k)
    base = random.Random(seed).randrange(1, 2**31)
    assert native.relocate_gt(a[1], base, 512) == grains_py.relocate_gt(b[1], base, 512)


def test_zero_map_parity_single_byte_positions():
    span = bytearray(4 * GRAIN)
    for pos in (0, 7, 8, GRAIN - 1, GRAIN, 3 * GRAIN + 12345, 4 * GRAIN - 1):
        span[pos] = 1
        assert native.zero_grain_map(span, 4) == grains_py.zero_grain_map(span, 4)
        span[pos] = 0
    assert native.zero_grain_map(span, 4) == b"\x01" * 4


def test_marker_and_payload_framing():
    span = _span([0, 1, 3], 5)
    framed, gt_rel, prints, payload = native.encode_span(
        span, 1280, 3, get_engine("zlib", 6).compress, xxhash.xxh3_64_intdigest)
    rel = [int.from_bytes(gt_rel[i:i + 4], "little") for i in range(0, 12, 4)]
    assert rel[0] == 0 and rel[1] == 1 and rel[2] > 1
    assert len(framed) % 512 == 0
    for i, r in ((1, rel[1]), (2, rel[2])):
        off = (r - 1) * 512
        lba = int.from_bytes(framed[off:off + 8], "little")
        size = int.from_bytes(framed[off + 8:off + 12], "little")
        assert lba == 1280 + 128 * i
        assert zlib.decompress(bytes(framed[off + 12:off + 12 + size])) == bytes(span[i * GRAIN:(i + 1) * GRAIN])
    assert payload == sum(int.from_bytes(framed[(r - 1) * 512 + 8:(r - 1) * 512 + 12], "little")
                          for r in rel if r)


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        native.encode_span(bytearray(GRAIN), 0, 2, zlib.compress, xxhash.xxh3_64_intdigest)
    with pytest.raises(ValueError):
        native.encode_span(bytearray(b"x" * GRAIN), 0, 1, lambda b: b"", xxhash.xxh3_64_intdigest)
    with pytest.raises(OverflowError):
        native.relocate_gt((5).to_bytes(4, "little"), 2**32, 512)


def _native_encoder(level: int):
    encoder = get_engine("isal", level).span_encoder
    if encoder is None:
        pytest.fail("the GIL-free ISA-L span encoder did not pass its self-test here")
    return encoder


@settings(max_examples=25, deadline=None)
@given(kinds=st.lists(st.integers(0, 3), min_size=0, max_size=12), seed=st.integers(0, 2**32),
       level=st.integers(1, 3))
def test_native_isal_span_encoder_parity(kinds, seed, level):
    """The GIL-free encoder gives the callable path's bytes (engine.compress: one grain at a
    time through a per-thread stream state, xxh3_64)."""
    span = _span(kinds, seed)
    engine = get_engine("isal", level)
    a = _native_encoder(level).encode_span(span, 128 * 512 * 3, len(kinds))
    b = grains_py.encode_span(span, 128 * 512 * 3, len(kinds), engine.compress,
                              xxhash.xxh3_64_intdigest)
    assert bytes(a[0]) == bytes(b[0]) and a[1:] == b[1:]


def test_native_encoder_rejects_bad_spans():
    encoder = _native_encoder(1)
    with pytest.raises(ValueError):
        encoder.encode_span(bytearray(GRAIN), 0, 2)
    with pytest.raises(ValueError):
        encoder.compress_grain(bytes(100))


def test_convert_identical_with_and_without_native_encoder(make_disk, tmp_path, monkeypatch):
    from ovfstream import convert, engine as engine_mod
    raw = make_disk("mixed")
    outputs = []
    for flag in ("1", "0"):
        monkeypatch.setenv("OVFSTREAM_NATIVE_ENGINE", flag)
        engine_mod._native_isal_encoder.cache_clear()
        out = tmp_path / flag / "d.vmdk"
        out.parent.mkdir()
        result = convert(raw, out, parallel=2, fsync=False)
        assert result.stats.engine["native_span_encoder"] is (flag == "1")
        outputs.append(out.read_bytes())
    engine_mod._native_isal_encoder.cache_clear()
    assert outputs[0] == outputs[1]


def test_encode_span_into_reused_buffer_matches_fresh_one():
    encoder = _native_encoder(1)
    out = bytearray(native.SPAN_FRAMED_BYTES)
    for seed in (1, 2):  # the second span overwrites the first's bytes in the same buffer
        span = _span([1, 3, 0, 2, 3], seed)
        n, gt_rel, prints, payload = encoder.encode_span_into(out, span, 0, 5)
        fresh = encoder.encode_span(span, 0, 5)
        assert bytes(out[:n]) == bytes(fresh[0]) and (gt_rel, prints, payload) == fresh[1:]
    with pytest.raises(ValueError):
        encoder.encode_span_into(bytearray(100), _span([1], 3), 0, 1)


def test_native_path_is_active_on_linux_x86_64():
    # A dependency upgrade that hides the C entry points (or breaks byte parity) must fail
    # here at once instead of silently making every pack slower.
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("the native span encoder is required on Linux x86-64 only")
    engine = get_engine("isal", 1)
    assert engine.span_encoder is not None, engine.native_unavailable
    assert engine.native_unavailable is None
    assert engine.describe()["native_span_encoder"] is True


def test_fallback_is_said_once_on_stderr_and_in_json(make_disk, tmp_path, monkeypatch, capsys):
    from ovfstream import cli, engine as engine_mod
    raw = make_disk("odd_size")
    monkeypatch.setenv("OVFSTREAM_NATIVE_ENGINE", "0")
    engine_mod._native_isal_encoder.cache_clear()
    try:
        assert cli.main(["convert", str(raw), "-o", str(tmp_path / "a.vmdk")]) == 0
        err = capsys.readouterr().err
        assert err.count("native span encoder is not used") == 1
        assert "OVFSTREAM_NATIVE_ENGINE=0" in err
        assert cli.main(["pack", str(raw), "-o", str(tmp_path / "b.ova"), "--json"]) == 0
        captured = capsys.readouterr()
        assert captured.err.count("native span encoder is not used") == 1
        doc = json.loads(captured.out)
        engine = doc["disks"][0]["engine"] if "disks" in doc else doc["engine"]
        assert engine["native_span_encoder"] is False
        assert engine["native_unavailable"] == "turned off by OVFSTREAM_NATIVE_ENGINE=0"
        assert cli.main(["convert", str(raw), "-o", str(tmp_path / "c.vmdk"), "--quiet"]) == 0
        assert "native" not in capsys.readouterr().err
        # The zlib engine has no native span encoder by design: nothing to say.
        assert cli.main(["convert", str(raw), "-o", str(tmp_path / "d.vmdk"), "--engine",
                         "zlib", "--level", "1"]) == 0
        assert "native" not in capsys.readouterr().err
    finally:
        engine_mod._native_isal_encoder.cache_clear()


def test_big_endian_hosts_take_the_callable_path(monkeypatch):
    from ovfstream import engine as engine_mod
    monkeypatch.setattr(engine_mod.sys, "byteorder", "big")
    engine_mod._native_isal_encoder.cache_clear()
    try:
        engine = get_engine("isal", 1)
        assert engine.span_encoder is None and engine.native_unavailable == "big-endian host"
    finally:
        monkeypatch.undo()
        engine_mod._native_isal_encoder.cache_clear()


def test_callable_encode_span_into_parity_with_dirty_reused_buffers():
    """The callable path into a caller's buffer (both cores) frames the same bytes as
    encode_span, whatever the buffer held before."""
    compress = get_engine("zlib", 1).compress
    out_native = bytearray(b"\xa5" * native.SPAN_FRAMED_BYTES)
    out_py = bytearray(b"\x5a" * grains_py.SPAN_FRAMED_BYTES)
    for seed, kinds in ((1, [1, 3, 0, 2, 3]), (2, [3, 0, 0, 1])):
        span = _span(kinds, seed)
        a = native.encode_span_into(out_native, span, 256, len(kinds), compress,
                                    xxhash.xxh3_64_intdigest)
        b = grains_py.encode_span_into(out_py, span, 256, len(kinds), compress,
                                       xxhash.xxh3_64_intdigest)
        fresh = grains_py.encode_span(span, 256, len(kinds), compress, xxhash.xxh3_64_intdigest)
        assert a == b and a[0] == len(fresh[0]) and a[1:] == fresh[1:]
        assert out_native[:a[0]] == out_py[:b[0]] == fresh[0]
    for codec in (native, grains_py):
        with pytest.raises(ValueError):
            codec.encode_span_into(bytearray(100), _span([1], 3), 0, 1, compress,
                                   xxhash.xxh3_64_intdigest)


def test_engine_encoder_is_one_interface_for_every_path():
    """engine.encoder: new_stream() + encode_span_into() for the native and callable paths,
    with the same bytes for ISA-L level 1 either way."""
    span = _span([1, 3, 0, 2], 7)
    results = []
    for eng in (get_engine("isal", 1), get_engine("zlib", 6), get_engine("libdeflate", 6)):
        encoder = eng.encoder
        out = bytearray(native.SPAN_FRAMED_BYTES)
        n, gt_rel, prints, payload = encoder.encode_span_into(out, span, 0, 4,
                                                              encoder.new_stream())
        assert zlib.decompress(bytes(out[12:12 + int.from_bytes(out[8:12], "little")])) \
            == bytes(span[:GRAIN])
        results.append((bytes(out[:n]), gt_rel, prints, payload))
    from ovfstream.engine import CallableSpanEncoder
    isal_callable = CallableSpanEncoder(get_engine("isal", 1).compress)
    out = bytearray(native.SPAN_FRAMED_BYTES)
    n, *rest = isal_callable.encode_span_into(out, span, 0, 4, isal_callable.new_stream())
    assert (bytes(out[:n]), *rest) == results[0]


def test_span_path_without_the_second_adler_pass_gives_the_same_bytes():
    """The span path trusts ISA-L's own trailer (the start-up self-test checked this build's
    trailers against an independent Adler-32 and zlib's inflate); checking every grain again
    changes nothing but the time."""
    encoder = _native_encoder(1)
    span = _span([1, 3, 0, 2, 3, 1], 11)
    assert encoder.check_trailer is False
    fast = encoder.encode_span(span, 0, 6)
    encoder.check_trailer = True
    try:
        checked = encoder.encode_span(span, 0, 6)
    finally:
        encoder.check_trailer = False
    assert bytes(fast[0]) == bytes(checked[0]) and fast[1:] == checked[1:]
    framed, gt_rel = fast[0], fast[1]
    for i in range(6):
        rel = int.from_bytes(gt_rel[4 * i:4 * i + 4], "little")
        if rel:
            off = (rel - 1) * 512
            size = int.from_bytes(framed[off + 8:off + 12], "little")
            payload = bytes(framed[off + 12:off + 12 + size])
            grain = bytes(span[i * GRAIN:(i + 1) * GRAIN])
            assert zlib.decompress(payload) == grain  # zlib checks the trailer itself
            assert int.from_bytes(payload[-4:], "big") == zlib.adler32(grain)


def _fault(kind: str, framed: bytes, gt_rel: bytes, prints: bytes
           ) -> tuple[bytearray, bytes, bytearray, int]:
    """A valid chunk with one fault that exactly one rule of shift_grain_lbas catches:
    (framed, gt_rel, prints, n_grains)."""
    import struct
    f, p = bytearray(framed), bytearray(prints)
    table = list(struct.unpack("<%dI" % (len(gt_rel) // 4), gt_rel))
    n = len(table)
    used = [i for i, v in enumerate(table) if v]
    at = [(table[i] - 1) * 512 for i in used]
    size = [struct.unpack_from("<I", f, a + 8)[0] for a in at]
    if kind == "marker_lba":
        struct.pack_into("<Q", f, at[1], struct.unpack_from("<Q", f, at[1])[0] + 128)
    elif kind == "length_zero":
        struct.pack_into("<I", f, at[1] + 8, 0)
    elif kind == "length_over_max":  # the buffer made long enough: only the bound says no
        struct.pack_into("<I", f, at[-1] + 8, grains_py.MAX_PAYLOAD + 1)
        f += bytes(at[-1] + 12 + grains_py.MAX_PAYLOAD + 1 - len(f))
    elif kind == "payload_past_end":
        del f[at[-1] + 12 + size[-1] - 1:]
    elif kind == "marker_past_end":
        table[used[-1]] = len(f) // 512 + 1
    elif kind == "overlapping":  # grain 0's payload runs one byte into grain 1's marker
        struct.pack_into("<I", f, at[0] + 8, at[1] - at[0] - 12 + 1)
    elif kind == "print_lba":
        struct.pack_into("<Q", p, 16, struct.unpack_from("<Q", p, 16)[0] + 1)
    elif kind == "print_missing":
        del p[-16:]
    elif kind == "print_extra":
        p += p[-16:]
    elif kind == "print_ragged":
        p += bytes(5)
    elif kind == "table_length":
        table.append(0)
    elif kind == "n_grains_absurd":
        n = 1 << 40
    else:
        assert kind == "none", kind
    return f, struct.pack("<%dI" % len(table), *table), p, n


FAULTS = ("none", "marker_lba", "length_zero", "length_over_max", "payload_past_end",
          "marker_past_end", "overlapping", "print_lba", "print_missing", "print_extra",
          "print_ragged", "table_length", "n_grains_absurd")


@settings(max_examples=150, deadline=None)
@given(kinds=st.lists(st.integers(0, 3), min_size=1, max_size=16), seed=st.integers(0, 2**32),
       fault=st.sampled_from(FAULTS), chunk_lba=st.integers(0, 2**34).map(lambda x: x * 128))
def test_shift_grain_lbas_parity(kinds, seed, fault, chunk_lba):
    """The cache's check-and-relocate (cache.py) agrees with its twin on valid and damaged
    chunks of any layout: same verdict, same bytes, nothing changed on a refusal, and making
    an entry relative then placing it back gives the bytes the engine framed."""
    if fault != "none":
        assume(sum(k != 0 for k in kinds) >= 2)  # the faults are placed on two data grains
    span = _span(kinds, seed)
    compress = get_engine("isal", 1).compress
    framed, gt_rel, prints, _ = native.encode_span(span, chunk_lba, len(kinds), compress,
                                                   xxhash.xxh3_64_intdigest)
    framed, gt_rel, prints, n = _fault(fault, bytes(framed), gt_rel, prints)
    results = []
    for core in (native, grains_py):
        f, p = bytearray(framed), bytearray(prints)
        ok = core.shift_grain_lbas(f, gt_rel, p, -chunk_lba, n)  # store: make it relative
        if not ok:
            assert (f, p) == (framed, prints)  # a refusal changes nothing
        results.append((ok, bytes(f), bytes(p)))
    assert results[0] == results[1]
    ok, rel_framed, rel_prints = results[0]
    if fault == "none":
        assert ok
    if ok:
        for core in (native, grains_py):  # load: place it back where it was framed
            f, p = bytearray(rel_framed), bytearray(rel_prints)
            assert core.shift_grain_lbas(f, gt_rel, p, chunk_lba, n)
            assert (f, p) == (framed, prints)
            # an entry is relative: loading it as if it were absolute is refused
            if chunk_lba and any(kinds):
                assert not core.shift_grain_lbas(bytearray(framed), gt_rel, bytearray(prints),
                                                 chunk_lba, n)


@pytest.mark.parametrize("core", ["native", "twin"])
@pytest.mark.parametrize("kind", FAULTS)
def test_shift_grain_lbas_refuses_each_fault(core, kind):
    """Each rule of the cache's check, alone: a chunk with one fault is refused (nothing
    changed) by the native call and by its twin, so a rule dropped from either fails here."""
    impl = native if core == "native" else grains_py
    chunk_lba = 128 * 64 * 5
    span = _span([3, 1, 0, 3, 2, 3], 7)
    framed, gt_rel, prints, _ = native.encode_span(span, chunk_lba, 6,
                                                   get_engine("isal", 1).compress,
                                                   xxhash.xxh3_64_intdigest)
    f, table, p, n = _fault(kind, bytes(framed), gt_rel, prints)
    before = (bytes(f), bytes(p))
    ok = impl.shift_grain_lbas(f, table, p, -chunk_lba, n)
    assert ok is (kind == "none")
    if not ok:
        assert (bytes(f), bytes(p)) == before
    else:
        assert bytes(f) != before[0] and bytes(p) != before[1]
        assert impl.shift_grain_lbas(f, table, p, chunk_lba, n)
        assert (bytes(f), bytes(p)) == before


def test_shift_grain_lbas_delta_must_fit_int64():
    for impl in (native, grains_py):
        with pytest.raises(OverflowError):
            impl.shift_grain_lbas(bytearray(), b"", bytearray(), 1 << 63, 0)
        assert impl.shift_grain_lbas(bytearray(), b"", bytearray(), -(1 << 63), 0)
