"""ova/tar.py: ustar headers checked against Python's tarfile and GNU tar; hostile archives."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovfstream.errors import TarFormatError, UsageError
from ovfstream.ova.tar import (
    BLOCK,
    END_OF_ARCHIVE,
    MAX_MTIME,
    MAX_OCTAL_SIZE,
    RULES,
    TarEntry,
    decode_header,
    encode_header,
    padding_for,
)
from ovfstream.ova.reader import TarReader

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
