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
from ovfstream.vmdk.copy import (GrainCheck, LayoutDiffers, copies_as_is, copy_member,
                                 table_grains, zlib_grains)
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


@pytest.mark.parametrize("damage", ["swap", "zeroed", "duplicate", "past-capacity"])
def test_table_grains_declines_tables_that_are_not_the_spec_layout(stream_vmdk, damage):
    """One span's table changed: two grains' sectors swapped (sectors that do not rise with
    the LBA), an entry of 1 (a zeroed grain), two entries naming one sector, or a grain
    past the capacity.  Each is declined (the marker walk decides), never planned."""
    from array import array
    with VmdkReader(stream_vmdk) as reader:
        real_gt = reader.grain_table
        capacity_grains = reader.header.capacity_sectors // reader.header.grain_sectors

        def changed(entry, span, gd):
            table = array("I", real_gt(entry, span, gd))
            used = [i for i, sector in enumerate(table) if sector]
            if span == 0 and len(used) >= 2:
                a, b = used[0], used[1]
                if damage == "swap":
                    table[a], table[b] = table[b], table[a]
                elif damage == "zeroed":
                    table[a] = 1
                elif damage == "duplicate":
                    table[b] = table[a]
            if damage == "past-capacity" and span == capacity_grains // len(table):
                # the first grain past the capacity, in the last sector before the GT
                # marker: every size still fits, only the LBA is wrong
                assert used and entry - 2 > table[used[-1]]
                table[capacity_grains % len(table)] = entry - 2
            return table.tobytes()
        assert table_grains(reader) is not None
        reader.grain_table = changed  # type: ignore[method-assign]
        assert table_grains(reader) is None


def test_copies_as_is_knows_the_spec_layout_and_a_new_head(stream_vmdk):
    with VmdkReader(stream_vmdk) as reader:
        placed = table_grains(reader)
        assert placed
        data = stream_vmdk.read_bytes()

        def read_at(at, n):
            return data[at:at + n]

        same = copies_as_is(reader, placed, len(data), read_at, file_name=stream_vmdk.name,
                            adapter_type="lsilogic")
        renamed = copies_as_is(reader, placed, len(data), read_at, file_name="other.vmdk",
                               adapter_type="lsilogic")
        # a grain moved one sector: the layout the writer would give differs
        lba, pos, size = placed[-1]
        moved = copies_as_is(reader, placed[:-1] + [(lba, pos + 512, size)], len(data),
                             read_at, file_name=stream_vmdk.name, adapter_type="lsilogic")
        # two spans in the wrong order
        spans = sorted({g[0] // (128 * 512) for g in placed})
        reordered = None
        if len(spans) >= 2:
            first = [g for g in placed if g[0] // (128 * 512) == spans[0]]
            reordered = copies_as_is(reader, placed[len(first):] + first, len(data), read_at,
                                     file_name=stream_vmdk.name, adapter_type="lsilogic")
    assert same == (True, None)
    assert renamed[0] is True and renamed[1] is not None and b"other.vmdk" in renamed[1]
    assert moved == (False, None)
    assert reordered in (None, (False, None))
