"""The header field offsets in vmdk/layout.py agree with the HEADER struct they describe."""

from __future__ import annotations

import struct

from ovfstream.vmdk import layout as L


def test_field_offsets_match_the_header_struct():
    fields = ["magic", "version", "flags", "capacity", "grain", "desc_off", "desc_size", "gtes",
              "rgd", "gd", "overhead", "unclean", "newline", "compress"]
    offsets, pos = {}, 0
    for name, code in zip(fields, L.HEADER.format.lstrip("<").replace("4s", "s")):
        size = 4 if code == "s" else struct.calcsize("<" + code)
        offsets[name] = pos
        pos += size
    assert (L.AT_VERSION, L.AT_FLAGS, L.AT_CAPACITY, L.AT_GRAIN_SIZE, L.AT_DESCRIPTOR_OFFSET,
            L.AT_DESCRIPTOR_SIZE, L.AT_GTES_PER_GT, L.AT_RGD_OFFSET, L.AT_GD_OFFSET,
            L.AT_OVERHEAD, L.AT_UNCLEAN, L.AT_NEWLINE_CHECK, L.AT_COMPRESS_ALGORITHM) == tuple(
        offsets[n] for n in fields[1:])
    assert pos == L.HEADER.size
    # a grain marker is LBA u64, size u32, data; a metadata marker has its type where data goes
    assert struct.calcsize("<Q") == L.AT_MARKER_SIZE
    assert L.AT_MARKER_TYPE == L.AT_GRAIN_DATA == struct.calcsize("<QI")


def test_a_header_field_lands_at_its_offset():
    raw = L.Header(capacity_sectors=0x1122, gd_offset_sectors=0x3344).pack()
    assert struct.unpack_from("<Q", raw, L.AT_GD_OFFSET)[0] == 0x3344
    assert struct.unpack_from("<Q", raw, L.AT_CAPACITY)[0] == 0x1122
    assert raw[L.AT_NEWLINE_CHECK:L.AT_NEWLINE_CHECK + 4] == L.NEWLINE_CHECK
