"""vmdk/copy.py's byte copy (copy_member) and table plan (table_grains, GrainCheck): the
member's bytes as they are, every byte seen by the digest, markers checked against the
tables, threads gone whatever happens."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from ovfstream.convert import convert
from ovfstream.errors import VmdkFormatError
from ovfstream.vmdk.copy import (GrainCheck, LayoutDiffers, copy_member, table_grains,
                                 zlib_grains)
from ovfstream.vmdk.reader import VmdkReader


@pytest.fixture
def stream_vmdk(make_disk, tmp_path) -> Path:
    out = tmp_path / "disk.vmdk"
    convert(make_disk("mixed"), out, engine="zlib", fsync=False)
    return out


def _copied(path: Path, *, base: int, size: int, start: int = 0, chunk: int = 64 << 10,
            observe=None, check=None) -> bytes:
    pieces: list[bytes] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        copy_member(fd, base, size, lambda v: pieces.append(bytes(v)), start=start,
                    observe=observe, check=check, chunk=chunk)
    finally:
        os.close(fd)
    return b"".join(pieces)


@pytest.mark.parametrize("start", [0, 512, 70_000])
def test_copy_member_gives_the_bytes_from_start_and_digests_all(tmp_path, start):
    data = os.urandom(300_000)
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 1000 + data + b"y" * 77)
    seen = hashlib.sha256()
    offsets: list[int] = []
    got = _copied(path, base=1000, size=len(data), start=start, observe=seen.update,
                  check=lambda at, view: offsets.append(at))
    assert got == data[start:]
    assert seen.hexdigest() == hashlib.sha256(data).hexdigest()
    assert offsets == list(range(0, len(data), 64 << 10))


def test_copy_member_of_a_short_file_is_refused_and_stops_its_threads(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(200_000))
    before = threading.active_count()
    with pytest.raises(VmdkFormatError) as exc:
        _copied(path, base=0, size=300_000, observe=hashlib.sha256().update)
    assert exc.value.rule == "vmdk.truncated"
    assert threading.active_count() == before


def test_a_failed_write_stops_the_reader(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(os.urandom(1 << 20))
    before = threading.active_count()
    fd = os.open(path, os.O_RDONLY)

    def write(view):
        raise OSError(28, "No space left on device")
    try:
        with pytest.raises(OSError):
            copy_member(fd, 0, 1 << 20, write, observe=hashlib.sha256().update, chunk=4096)
    finally:
        os.close(fd)
    assert threading.active_count() == before


def test_table_grains_place_the_grains_the_markers_walk(stream_vmdk):
    with VmdkReader(stream_vmdk) as reader:
        placed = table_grains(reader)
    with VmdkReader(stream_vmdk) as reader:
        walked, _ = zlib_grains(reader)  # type: ignore[misc]
    assert placed is not None and len(placed) == len(walked) > 0
    assert [(lba, pos) for lba, pos, _ in placed] == [(lba, pos) for lba, pos, _ in walked]
    # each placed size fills the sectors the marker's size needs
    assert all(-(-(12 + w) // 512) == -(-(12 + p) // 512)
               for (_, _, p), (_, _, w) in zip(placed, walked))
    data = stream_vmdk.read_bytes()
    check = GrainCheck(placed, lambda at, n: data[at:at + n])
    _copied(stream_vmdk, base=0, size=len(data), chunk=4096, check=check)  # crossing markers
    check.finish()
    assert check.payload_bytes == sum(w for _, _, w in walked)


def test_table_grains_declines_a_gap_no_grain_can_fill(stream_vmdk):
    """Each span's GT 1000 sectors further on (its GD entry moved, the table the same): the
    last grain of a span would have to fill 500 KiB, more than any grain can; the planner
    declines (the marker walk decides) instead of sizing a buffer from the tables."""
    from array import array
    with VmdkReader(stream_vmdk) as reader:
        real_gd, real_gt = reader.grain_directory, reader.grain_table

        def moved_gd(gd):
            entries = array("I", real_gd(gd))
            return array("I", [e + 1000 if e else 0 for e in entries]).tobytes()
        reader.grain_directory = moved_gd  # type: ignore[method-assign]
        reader.grain_table = lambda entry, span, gd: real_gt(entry - 1000, span, gd)  # type: ignore[method-assign]
        assert table_grains(reader) is None


def test_a_marker_that_disagrees_with_the_tables_is_caught(stream_vmdk):
    with VmdkReader(stream_vmdk) as reader:
        placed = table_grains(reader)
    assert placed
    lba, pos, size = placed[0]
    wrong = [(lba + 128, pos, size)] + placed[1:]
    data = stream_vmdk.read_bytes()
    with pytest.raises(LayoutDiffers):
        _copied(stream_vmdk, base=0, size=len(data),
                check=GrainCheck(wrong, lambda at, n: data[at:at + n]))
    short = GrainCheck(placed + [(1 << 40, len(data) * 2, 100)], lambda at, n: b"")
    _copied(stream_vmdk, base=0, size=len(data), check=short)
    with pytest.raises(LayoutDiffers):
        short.finish()


def test_table_grains_declines_the_head_layout(stream_vmdk, tmp_path, qemu_img):
    raw = tmp_path / "raw.img"
    qemu_img("convert", "-O", "raw", str(stream_vmdk), str(raw))
    head = tmp_path / "qemu.vmdk"
    qemu_img("convert", "-O", "vmdk", "-o", "subformat=streamOptimized", str(raw), str(head))
    with VmdkReader(head) as reader:
        assert table_grains(reader) is None
