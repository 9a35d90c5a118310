"""vmdk/copied.py: a span of copied deflate streams and engine grains frames like the engine's
own span -- the same grain table positions and fingerprints, every grain inflating to the
span's bytes -- whichever grains are copied."""

from __future__ import annotations

import random
import struct
import threading
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from ovfstream.engine import get_engine
from ovfstream.vmdk import layout as L
from ovfstream.vmdk.copied import ZLIB_HEAD, encode_copied_span
from ovfstream.vmdk.writer import _codec, encode_span_into

N = 8
G = L.GRAIN_BYTES


def _span(kinds: list[int], seed: int) -> bytearray:
    rng = random.Random(seed)
    out = bytearray()
    for kind in kinds:  # 0 zeros, 1 text, 2 random
        out += (bytes(G) if kind == 0 else rng.randbytes(G) if kind == 2 else
                (b"grain %d of a span " % rng.randrange(1000) * 4000)[:G])
    return out


def _deflate(grain: bytes | memoryview) -> memoryview:
    deflater = zlib.compressobj(6, zlib.DEFLATED, -12)  # what qemu writes
    return memoryview(deflater.compress(grain) + deflater.flush())


@settings(max_examples=25, deadline=None)
@given(kinds=st.lists(st.integers(0, 2), min_size=N, max_size=N),
       copied=st.sets(st.integers(0, N - 1)), seed=st.integers(0, 1000),
       lba=st.sampled_from([0, 5 * L.SPAN_GRAINS * L.GRAIN_SECTORS]))
def test_mixed_span_frames_like_the_engine(kinds, copied, seed, lba):
    engine = get_engine("isal", 1)
    local = threading.local()
    span = memoryview(_span(kinds, seed))
    streams = {i: _deflate(span[i * G:(i + 1) * G]) for i in copied}

    def run(out, view, first_lba, n):
        return encode_span_into(engine, local, out, view, first_lba, n)
    mixed = bytearray(_codec.SPAN_FRAMED_BYTES)
    n, gt_rel, prints, payload, n_copied = encode_copied_span(run, mixed, span, lba, N, streams)
    plain = bytearray(_codec.SPAN_FRAMED_BYTES)
    _, gt_plain, prints_plain, _ = run(memoryview(plain), span, lba, N)
    assert prints == prints_plain
    gt = struct.unpack("<%dI" % N, gt_rel)
    assert [bool(x) for x in gt] == [bool(x) for x in struct.unpack("<%dI" % N, gt_plain)]
    assert n_copied == sum(1 for i in copied if kinds[i] != 0)
    total = 0
    for i, rel in enumerate(gt):
        if not rel:
            assert kinds[i] == 0
            continue
        at = (rel - 1) * L.SECTOR
        grain_lba, size = L.GRAIN_MARKER.unpack_from(mixed, at)
        data = bytes(mixed[at + 12:at + 12 + size])
        assert grain_lba == lba + i * L.GRAIN_SECTORS
        assert zlib.decompress(data) == span[i * G:(i + 1) * G]
        if i in copied:
            assert data[:2] == ZLIB_HEAD and data[2:-4] == streams[i]
        total += size
    assert total == payload
    assert n % L.SECTOR == 0 and not any(mixed[n:n + 4096])


def test_frame_grain_pads_to_the_sector():
    out = bytearray()
    end = L.frame_grain(out, 0, 1234, (b"ab", b"cde"))
    assert end == len(out) == L.SECTOR
    assert out[:17] == struct.pack("<QI", 1234, 5) + b"abcde" and not any(out[17:])
    fixed = bytearray(b"\xff" * 2048)
    assert L.frame_grain(memoryview(fixed), 512, 7, (b"x" * 600,)) == 512 + 1024
    assert fixed[:512] == b"\xff" * 512 and not any(fixed[512 + 12 + 600:1536])
