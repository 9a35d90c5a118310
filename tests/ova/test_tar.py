"""ova/tar.py: ustar headers checked against Python's tarfile and GNU tar; hostile archives."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ovfstream.errors import TarFormatError, UsageError
from ovfstream.ova.tar import (
    BLOCK,
    END_OF_ARCHIVE,
    MAX_MTIME,
    MAX_OCTAL_SIZE,
    RULES,
    TarEntry,
    TarReader,
    decode_header,
    encode_header,
    iter_members,
    padding_for,
)

MTIME = 1_700_000_000
GNU_TAR = shutil.which("tar")
needs_gnu_tar = pytest.mark.skipif(GNU_TAR is None, reason="GNU tar not installed")


# -- helpers ---------------------------------------------------------------------------------
def build(members: list[tuple[str, bytes]], *, end: bytes = END_OF_ARCHIVE) -> bytes:
    out = bytearray()
    for name, data in members:
        out += encode_header(name, len(data), mtime=MTIME) + data + bytes(padding_for(len(data)))
    return bytes(out + end)


def rechecksum(header: bytes | bytearray) -> bytes:
    """Recompute the checksum of a hand-edited header (so only the edit is judged)."""
    h = bytearray(header)
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\x00 " % sum(h)
    return bytes(h)


def edit(header: bytes, offset: int, value: bytes) -> bytes:
    h = bytearray(header)
    h[offset:offset + len(value)] = value
    return rechecksum(h)


class Pipe(io.RawIOBase):
    """A non-seekable stream that returns short reads, like a pipe."""

    def __init__(self, data: bytes, chunk: int = 300) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._chunk = chunk

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        n = min(len(buffer), self._chunk, len(self._data) - self._pos)
        buffer[:n] = self._data[self._pos:self._pos + n]
        self._pos += n
        return n


def walk(data: bytes, *, seekable: bool, read_data: bool = True, allow_pax: bool = False,
         ) -> tuple[list[tuple[TarEntry, bytes | None]], TarReader]:
    fileobj = io.BytesIO(data) if seekable else Pipe(data)
    reader = TarReader(fileobj, path="t.ova", allow_pax=allow_pax)  # type: ignore[arg-type]
    out: list[tuple[TarEntry, bytes | None]] = []
    for entry in reader.members():
        out.append((entry, reader.open_member(entry).read() if read_data else None))
    return out, reader


def tarfile_archive(*infos: tuple[tarfile.TarInfo, bytes | None],
                    fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8") as tf:
        for info, data in infos:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def info(name: str, size: int = 0, type_: bytes = tarfile.REGTYPE, **kw: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.type = type_
    ti.mtime = MTIME
    for k, v in kw.items():
        setattr(ti, k, v)
    return ti


def rule_of(data: bytes, *, seekable: bool = True, allow_pax: bool = False) -> str:
    with pytest.raises(TarFormatError) as exc:
        walk(data, seekable=seekable, allow_pax=allow_pax)
    return exc.value.rule


# -- encoding --------------------------------------------------------------------------------
def test_padding_for() -> None:
    assert [padding_for(n) for n in (0, 1, 511, 512, 513, 1024)] == [0, 511, 1, 0, 511, 0]


def test_header_layout_is_what_tarfile_reads() -> None:
    header = encode_header("web.ovf", 12345, mtime=MTIME)
    assert len(header) == BLOCK
    ti = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    assert (ti.name, ti.size, ti.mtime, ti.type, ti.mode, ti.uid, ti.gid) == \
        ("web.ovf", 12345, MTIME, tarfile.REGTYPE, 0o644, 0, 0)
    assert header[257:265] == b"ustar\x0000"
    # checksum: 6 octal digits, NUL, space
    assert header[154:156] == b"\x00 " and int(header[148:154], 8) == \
        sum(header[:148]) + 8 * 32 + sum(header[156:])


@needs_gnu_tar
@pytest.mark.interop
def test_header_is_byte_identical_to_gnu_tar_numeric_owner(tmp_path: Path) -> None:
    (tmp_path / "disk1.vmdk").write_bytes(b"x" * 777)
    os.chmod(tmp_path / "disk1.vmdk", 0o644)
    subprocess.run([GNU_TAR, "--format=ustar", "--numeric-owner", "--owner=0", "--group=0",
                    "--mtime=@%d" % MTIME, "-cf", "g.tar", "disk1.vmdk"], cwd=tmp_path, check=True)
    gnu = (tmp_path / "g.tar").read_bytes()[:BLOCK]
    assert encode_header("disk1.vmdk", 777, mtime=MTIME) == gnu


def test_big_member_uses_gnu_base256_size() -> None:
    size = 9 * 2**30 + 7
    header = encode_header("disk1.vmdk", size, mtime=MTIME)
    assert header[124] == 0x80 and int.from_bytes(header[125:136], "big") == size
    ti = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    assert ti.size == size and ti.name == "disk1.vmdk"
    entry = decode_header(header)
    assert entry is not None and entry.size == size and entry.size_base256
    # one below 8 GiB still fits in octal
    small = encode_header("d", MAX_OCTAL_SIZE, mtime=0)
    assert small[124:136] == b"77777777777\x00"


@needs_gnu_tar
@pytest.mark.interop
def test_gnu_tar_lists_and_extracts_our_archive(tmp_path: Path) -> None:
    members = [("app.ovf", b"<Envelope/>\n"), ("app.mf", b"SHA256(app.ovf)= 00\n"),
               ("app-disk1.vmdk", bytes(range(256)) * 5)]
    (tmp_path / "a.ova").write_bytes(build(members))
    listing = subprocess.run([GNU_TAR, "-tvf", "a.ova"], cwd=tmp_path, check=True,
                             capture_output=True, text=True)
    lines = listing.stdout.splitlines()
    assert [line.split()[-1] for line in lines] == [n for n, _ in members]
    assert [int(line.split()[2]) for line in lines] == [len(d) for _, d in members]
    assert all(line.startswith("-rw-r--r-- 0/0") for line in lines)
    assert listing.stderr == ""
    for name, data in members:
        out = subprocess.run([GNU_TAR, "-xOf", "a.ova", name], cwd=tmp_path, check=True,
                             capture_output=True)
        assert out.stdout == data


@needs_gnu_tar
@pytest.mark.interop
def test_gnu_tar_reads_9gib_member_sparse(tmp_path: Path) -> None:
    size = 9 * 2**30 + 5
    path = tmp_path / "big.ova"
    with open(path, "wb") as f:
        f.write(encode_header("big.vmdk", size, mtime=MTIME))
        f.seek(BLOCK + size + padding_for(size))
        f.write(encode_header("after.txt", 2, mtime=MTIME) + b"ok" + bytes(510) + END_OF_ARCHIVE)
    listing = subprocess.run([GNU_TAR, "-tvf", str(path)], check=True, capture_output=True, text=True)
    rows = [line.split() for line in listing.stdout.splitlines()]
    assert [(r[2], r[-1]) for r in rows] == [(str(size), "big.vmdk"), ("2", "after.txt")]
    with tarfile.open(path) as tf:
        assert [(m.name, m.size) for m in tf.getmembers()] == [("big.vmdk", size), ("after.txt", 2)]
    with open(path, "rb") as f:
        reader = TarReader(f, path=path)
        entries = list(reader.members())
    assert [(e.name, e.size, e.size_base256) for e in entries] == \
        [("big.vmdk", size, True), ("after.txt", 2, False)]
    assert reader.end_of_archive and not reader.findings


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "/abs", "../x", "a\\b", "a\x00b",
                                  "caf\u00e9.ovf", "new\nline", "x" * 101])
def test_encode_refuses_bad_names(name: str) -> None:
    with pytest.raises(TarFormatError) as exc:
        encode_header(name, 1, mtime=MTIME)
    assert exc.value.rule == "ova.member.name"


def test_encode_accepts_100_byte_name() -> None:
    header = encode_header("n" * 100, 1, mtime=MTIME)
    assert tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape").name == "n" * 100


@pytest.mark.parametrize("kwargs", [dict(size=-1, mtime=0), dict(size=2**88, mtime=0),
                                    dict(size=1, mtime=-1), dict(size=1, mtime=MAX_MTIME + 1),
                                    dict(size=1, mtime=0, mode=0o10000)])
def test_encode_refuses_out_of_range_numbers(kwargs: dict[str, int]) -> None:
    with pytest.raises(UsageError):
        encode_header("a", **kwargs)


names = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E,
                                        blacklist_characters="/\\"),
                min_size=1, max_size=100).filter(lambda n: n not in (".", ".."))
sizes = st.one_of(st.integers(0, 2**40), st.integers(MAX_OCTAL_SIZE - 2, MAX_OCTAL_SIZE + 2),
                  st.integers(2**33, 2**70))


@settings(max_examples=400, deadline=None)
@given(name=names, size=sizes, mtime=st.integers(0, MAX_MTIME), mode=st.integers(0, 0o7777))
def test_round_trip_encode_decode(name: str, size: int, mtime: int, mode: int) -> None:
    header = encode_header(name, size, mtime=mtime, mode=mode)
    entry = decode_header(header, path="x", offset=1024)
    assert entry is not None
    assert (entry.name, entry.size, entry.mtime, entry.mode, entry.type, entry.format) == \
        (name, size, mtime, mode, "0", "ustar")
    assert entry.size_base256 == (size > MAX_OCTAL_SIZE)
    assert (entry.header_offset, entry.data_offset) == (1024, 1536)
    ti = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    assert (ti.name, ti.size, ti.mtime, ti.mode) == (name, size, mtime, mode)


# -- reading ---------------------------------------------------------------------------------
MEMBERS = [("a.ovf", b"descriptor"), ("a.mf", b""), ("a-disk1.vmdk", os.urandom(3000)),
           ("tail", b"x" * 512)]


@pytest.mark.parametrize("seekable", [True, False])
def test_reader_returns_members_and_data(seekable: bool) -> None:
    got, reader = walk(build(MEMBERS), seekable=seekable)
    assert [(e.name, d) for e, d in got] == MEMBERS
    assert [e.header_offset for e, _ in got] == [0, 1024, 1536, 5120]
    assert reader.end_of_archive and reader.findings == []
    assert reader.end_offset == 5120 + 1024


@pytest.mark.parametrize("seekable", [True, False])
def test_reader_skips_unread_and_half_read_members(seekable: bool) -> None:
    data = build(MEMBERS)
    fileobj = io.BytesIO(data) if seekable else Pipe(data)
    reader = TarReader(fileobj, path="t.ova")  # type: ignore[arg-type]
    seen = []
    for entry in reader.members():
        if entry.name == "a-disk1.vmdk":
            assert reader.open_member(entry).read(100) == MEMBERS[2][1][:100]
        if entry.name == "tail":
            chunks: list[bytes] = []
            assert reader.read_member(entry, chunks.append, chunk_bytes=100) == 512
            assert b"".join(chunks) == b"x" * 512 and len(chunks) >= 6
        seen.append(entry.name)
    assert seen == [n for n, _ in MEMBERS]
    assert reader.end_of_archive


def test_iter_members_lists_and_reading_a_stale_entry_is_refused() -> None:
    data = build(MEMBERS)
    assert [e.name for e in iter_members(io.BytesIO(data), path="t.ova")] == [n for n, _ in MEMBERS]
    reader = TarReader(io.BytesIO(data))
    it = reader.members()
    first = next(it)
    next(it)
    with pytest.raises(UsageError):
        reader.open_member(first)


def test_tarfile_written_ustar_archive_is_read() -> None:
    data = tarfile_archive((info("x.ovf", 3), b"abc"), (info("y.vmdk", 700), b"y" * 700))
    got, reader = walk(data, seekable=True)
    assert [(e.name, d) for e, d in got] == [("x.ovf", b"abc"), ("y.vmdk", b"y" * 700)]
    assert reader.end_of_archive  # tarfile pads to a 10240-byte record; extra zeros are fine


def test_gnu_and_v7_magic_are_read() -> None:
    data = tarfile_archive((info("x.ovf", 3), b"abc"), fmt=tarfile.GNU_FORMAT)
    got, _ = walk(data, seekable=True)
    assert got[0][0].format == "gnu" and got[0][1] == b"abc"
    v7 = edit(encode_header("x.ovf", 3, mtime=MTIME), 257, bytes(8))
    entry = decode_header(v7)
    assert entry is not None and entry.format == "v7"


def test_signed_checksum_is_accepted() -> None:
    h = bytearray(encode_header("x.ovf", 3, mtime=MTIME))
    h[265:268] = b"\xff\xfe\xfd"            # uname with high bytes
    h[148:156] = b" " * 8
    signed = sum(b - 256 if b >= 128 else b for b in h)
    h[148:156] = b"%06o\x00 " % signed
    assert tarfile.TarInfo.frombuf(bytes(h), "utf-8", "surrogateescape").name == "x.ovf"
    entry = decode_header(bytes(h))
    assert entry is not None and entry.name == "x.ovf"


# -- one test per rule -----------------------------------------------------------------------
def test_rules_are_documented() -> None:
    assert set(RULES) == {"ova.tar.checksum", "ova.tar.header", "ova.tar.truncated", "ova.tar.pax",
                          "ova.tar.end", "ova.tar.zero", "ova.member.name", "ova.member.type",
                          "ova.member.duplicate"}


@pytest.mark.parametrize("seekable", [True, False])
def test_rule_ova_tar_checksum(seekable: bool) -> None:
    data = bytearray(build(MEMBERS))
    data[1024 + 3] ^= 0x01                  # second header's name, checksum left alone
    with pytest.raises(TarFormatError) as exc:
        walk(bytes(data), seekable=seekable)
    assert exc.value.rule == "ova.tar.checksum" and exc.value.offset == 1024
    assert exc.value.path == "t.ova"
    with pytest.raises(tarfile.ReadError):  # the real reader agrees the header is bad
        tarfile.open(fileobj=io.BytesIO(bytes(data[1024:]))).getmembers()


@pytest.mark.parametrize("cut", [512 + 5,              # inside the first member's data
                                 1024 + 100,           # inside the second header
                                 2048 + 3000 + 10,     # after data, inside its padding
                                 2048 + 1500])         # inside data
@pytest.mark.parametrize("seekable", [True, False])
def test_rule_ova_tar_truncated(cut: int, seekable: bool) -> None:
    data = build(MEMBERS)[:cut]
    assert rule_of(data, seekable=seekable) == "ova.tar.truncated"


def test_truncated_is_found_before_reading_when_size_is_known() -> None:
    data = build([("big", b"z" * 5000)])[:3000]
    reader = TarReader(io.BytesIO(data), path="t.ova")
    with pytest.raises(TarFormatError) as exc:
        next(reader.members())
    assert exc.value.rule == "ova.tar.truncated" and exc.value.offset == 0


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a/b", "dir\\x", "caf\u00e9"])
def test_rule_ova_member_name_from_tarfile(name: str) -> None:
    data = tarfile_archive((info(name, 1), b"x"))
    assert rule_of(data) == "ova.member.name"


def test_rule_ova_member_name_ustar_prefix_and_nul() -> None:
    long_path = "d" * 60 + "/" + "f" * 60       # tarfile splits this into prefix + name
    data = tarfile_archive((info(long_path, 1), b"x"))
    assert data[345:350] == b"ddddd"
    assert rule_of(data) == "ova.member.name"
    hidden = edit(encode_header("a.ovf", 0, mtime=MTIME), 6, b"\x00../evil")
    assert tarfile.TarInfo.frombuf(hidden, "utf-8", "surrogateescape").name == "a.ovf"
    assert rule_of(hidden + END_OF_ARCHIVE) == "ova.member.name"


@pytest.mark.parametrize("type_,extra", [(tarfile.SYMTYPE, {"linkname": "/etc/passwd"}),
                                         (tarfile.LNKTYPE, {"linkname": "a"}),
                                         (tarfile.DIRTYPE, {}), (tarfile.FIFOTYPE, {}),
                                         (tarfile.CHRTYPE, {"devmajor": 1, "devminor": 3}),
                                         (tarfile.BLKTYPE, {}), (tarfile.CONTTYPE, {})])
def test_rule_ova_member_type(type_: bytes, extra: dict[str, object]) -> None:
    data = tarfile_archive((info("a", 1), b"x"), (info("node", 0, type_, **extra), None))
    with pytest.raises(TarFormatError) as exc:
        walk(data, seekable=True)
    assert exc.value.rule == "ova.member.type" and exc.value.offset == 1024


def test_rule_ova_member_type_gnu_sparse_and_volume() -> None:
    for flag in (b"S", b"V", b"M"):
        header = edit(encode_header("s", 0, mtime=MTIME), 156, flag)
        assert rule_of(header + END_OF_ARCHIVE) == "ova.member.type"


def test_rule_ova_member_duplicate() -> None:
    data = build([("a.ovf", b"1"), ("a.mf", b""), ("a.ovf", b"2")])
    with pytest.raises(TarFormatError) as exc:
        walk(data, seekable=True)
    assert exc.value.rule == "ova.member.duplicate" and exc.value.offset == 1536


def test_rule_ova_tar_pax_and_skipping_with_allow_pax() -> None:
    data = tarfile_archive((info("x.ovf", 2), b"ok"), (info("n" * 150, 3), b"abc"),
                           (info("after", 1), b"!"), fmt=tarfile.PAX_FORMAT)
    assert rule_of(data) == "ova.tar.pax"
    got, _ = walk(data, seekable=True, allow_pax=True)
    assert [(e.name, d, e.pax) for e, d in got] == \
        [("x.ovf", b"ok", False), ("n" * 150, b"abc", True), ("after", b"!", False)]
    pax_global = tarfile_archive((info("x.ovf", 2, pax_headers={"comment": "hi"}), b"ok"),
                                 fmt=tarfile.PAX_FORMAT)
    assert rule_of(pax_global) == "ova.tar.pax"


@pytest.mark.parametrize("seekable", [True, False])
def test_rule_ova_tar_pax_gnu_longname(seekable: bool) -> None:
    data = tarfile_archive((info("l" * 120, 3), b"abc"), (info("next", 1), b"n"),
                           fmt=tarfile.GNU_FORMAT)
    assert rule_of(data, seekable=seekable) == "ova.tar.pax"
    got, _ = walk(data, seekable=seekable, allow_pax=True)
    assert [(e.name, d) for e, d in got] == [("l" * 120, b"abc"), ("next", b"n")]


@pytest.mark.parametrize("seekable", [True, False])
def test_pax_size_record_overrides_the_header_size(seekable: bool) -> None:
    # A PAX 'size' record (how PAX writers store >= 8 GiB) must be honoured to find the next
    # header; tarfile, the reference reader, does the same.
    record = b"size=1000\n"
    record = b"%d " % (len(record) + 3) + record
    pax = edit(encode_header("PaxHeader", len(record), mtime=MTIME), 156, b"x")
    body = b"q" * 1000
    data = (pax + record + bytes(padding_for(len(record)))
            + encode_header("big", 0, mtime=MTIME) + body + bytes(padding_for(1000))
            + encode_header("next", 1, mtime=MTIME) + b"n" + bytes(511) + END_OF_ARCHIVE)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        assert [(m.name, m.size) for m in tf.getmembers()] == [("big", 1000), ("next", 1)]
    got, _ = walk(data, seekable=seekable, allow_pax=True)
    assert [(e.name, e.size, d) for e, d in got] == [("big", 1000, body), ("next", 1, b"n")]
    bad = edit(pax, 124, b"%011o\x00" % 5) + b"5 x\n\n" + bytes(507)
    assert rule_of(bad + END_OF_ARCHIVE, allow_pax=True) == "ova.tar.pax"
    huge = b"size=" + b"9" * 5000 + b"\n"
    huge = b"%d " % (len(huge) + 5) + huge
    bad = edit(pax, 124, b"%011o\x00" % len(huge)) + huge + bytes(padding_for(len(huge)))
    assert rule_of(bad + END_OF_ARCHIVE, allow_pax=True) == "ova.tar.pax"


@pytest.mark.parametrize("seekable", [True, False])
def test_rule_ova_tar_end(seekable: bool) -> None:
    for end, complete in ((END_OF_ARCHIVE, True), (END_OF_ARCHIVE + bytes(9216), True),
                          (bytes(512), False), (b"", False), (bytes(700), False)):
        got, reader = walk(build(MEMBERS, end=end), seekable=seekable)
        assert len(got) == len(MEMBERS)
        assert reader.end_of_archive is complete
        rules = [(f.rule, f.severity) for f in reader.findings]
        assert rules == ([] if complete else [("ova.tar.end", "warning")])


def test_rule_ova_tar_zero_lone_zero_block() -> None:
    data = build(MEMBERS[:1], end=bytes(512)) + build(MEMBERS[1:2])
    assert rule_of(data) == "ova.tar.zero"
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:   # tarfile stops early: readers disagree
        assert [m.name for m in tf.getmembers()] == ["a.ovf"]


@pytest.mark.parametrize("offset,value", [(124, b"12345678z01\x00"),    # size not octal
                                          (124, b"\xff" + bytes(11)),   # negative base-256
                                          (124, b"\x81" + bytes(11)),   # base-256 high bits
                                          (257, b"ustaR\x00"),          # unknown magic
                                          (100, b"0006x4\x00\x00")])   # mode not octal
def test_rule_ova_tar_header(offset: int, value: bytes) -> None:
    header = edit(encode_header("a", 0, mtime=MTIME), offset, value)
    assert rule_of(header + END_OF_ARCHIVE) == "ova.tar.header"


# devmajor/devminor mean nothing for a regular file, but tarfile refuses the archive when they
# are not numbers (a fuzz example: devmajor's terminator flipped to 0x01): refused here too.
@pytest.mark.parametrize("offset,value", [(329, b"0000000\x01"), (337, b"00z00\x00\x00\x00")])
def test_rule_ova_tar_header_device_numbers(offset: int, value: bytes) -> None:
    header = edit(encode_header("a", 0, mtime=MTIME), offset, value)
    assert rule_of(header + END_OF_ARCHIVE) == "ova.tar.header"
    with pytest.raises(tarfile.ReadError):
        tarfile.open(fileobj=io.BytesIO(header + END_OF_ARCHIVE)).getmembers()


def test_rule_ova_tar_header_prefix_in_gnu_header() -> None:
    header = edit(encode_header("a", 0, mtime=MTIME), 257, b"ustar  \x00")
    assert decode_header(header) is not None
    header = edit(header, 345, b"evil")
    assert rule_of(header + END_OF_ARCHIVE) == "ova.tar.header"


# -- fuzz ------------------------------------------------------------------------------------
SEED = build([("a.ovf", b"<x/>"), ("a.mf", b"SHA256(a.ovf)= 00\n"), ("d.vmdk", b"v" * 1300)])
# issue 8: names that are valid in a tar but hostile downstream (an extract output-name
# collision, case variants, rich markup); mutations then break them in every other way
SEED_NAMES = build([("t.ovf", b"<x/>"), ("t-disk1.vmdk", b"v" * 700), ("t-disk1.raw", b"r"),
                    ("T-DISK1.raw.zst", b"z"), ("[red on red]x", b"m"), ("[bold]", b"")])
SEED_PAX = tarfile_archive((info("p" * 120, 5), b"12345"), (info("b", 2), b"bb"),
                           fmt=tarfile.PAX_FORMAT)


def outcome(data: bytes, *, seekable: bool, allow_pax: bool, read_data: bool = True
            ) -> tuple[str, list[tuple[str, int, bytes | None]], bool]:
    try:
        got, reader = walk(data, seekable=seekable, allow_pax=allow_pax, read_data=read_data)
    except TarFormatError as exc:
        assert exc.rule in RULES
        return exc.rule, [], False
    return "ok", [(e.name, e.size, d) for e, d in got], reader.end_of_archive


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from([SEED, SEED_PAX, SEED_NAMES])))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete", "rechecksum"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[pos] = draw(st.sampled_from([0, 0x20, 0x30, 0x37, 0x38, 0x2F, 0x80, 0xFF]))
        elif kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(max_size=600))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 600))]
        elif kind == "rechecksum":
            # re-validate a header block so the mutation reaches the field checks
            start = pos - pos % BLOCK
            if start + BLOCK <= len(data):
                data[start:start + BLOCK] = rechecksum(data[start:start + BLOCK])
    return bytes(data)


@settings(max_examples=1500, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated(), allow_pax=st.booleans(), pipe_reads=st.booleans())
def test_fuzz_mutated_archives(data: bytes, allow_pax: bool, pipe_reads: bool) -> None:
    seek = outcome(data, seekable=True, allow_pax=allow_pax)
    pipe = outcome(data, seekable=False, allow_pax=allow_pax, read_data=pipe_reads)
    # The same verdict whether or not we can seek, and whether or not the data was read.
    assert (seek[0], seek[2]) == (pipe[0], pipe[2])
    assert [(n, s) for n, s, _ in seek[1]] == [(n, s) for n, s, _ in pipe[1]]
    if pipe_reads:
        assert seek[1] == pipe[1]
    event(seek[0])
    if seek[0] == "ok" and seek[1]:
        # Whatever we accept, the reference reader reads the same way.
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            assert [(m.name, m.size) for m in tf.getmembers()] == [(n, s) for n, s, _ in seek[1]]
            for m, (_, _, body) in zip(tf.getmembers(), seek[1]):
                extracted = tf.extractfile(m)
                assert extracted is not None and extracted.read() == body


@settings(max_examples=500, deadline=2000)
@given(data=st.binary(max_size=3000))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    outcome(data, seekable=True, allow_pax=True)
    outcome(data, seekable=False, allow_pax=False)
