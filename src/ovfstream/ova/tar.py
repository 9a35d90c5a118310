"""Our own ustar header encoder and streaming decoder for OVA packages.  Never PAX.

Implements ../shared/FORMATS.md section 2 ("OVA (single-file package)") on top of POSIX.1-1988
ustar (IEEE Std 1003.1, "pax" utility, "ustar Interchange Format"), plus the one GNU extension
every reader understands: a base-256 size field for members of 8 GiB or more (first byte 0x80,
then the size big-endian).  GNU tar, bsdtar and Python's tarfile all read it; PAX extended
headers are what ovftool and oVirt refuse, so we never write them.

Header layout (512 bytes; numbers are octal ASCII, NUL-terminated):

    offset size field          offset size field
       0  100 name               257    6 magic "ustar\\0"
     100    8 mode               263    2 version "00"
     108    8 uid                265   32 uname
     116    8 gid                297   32 gname
     124   12 size               329    8 devmajor
     136   12 mtime              337    8 devminor
     148    8 chksum             345  155 prefix (ustar only)
     156    1 typeflag           500   12 padding
     157  100 linkname

Header bytes only, no I/O: reading an archive (the header walk, PAX handling, bounded member
reads) is ova/reader.py.  Every refusal is a `TarFormatError` with one of the rule ids in
`RULES` (the reader raises the walk's own: truncation, PAX, end blocks, types, duplicates).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from ..errors import TarFormatError, UsageError

__all__ = [
    "BLOCK",
    "END_OF_ARCHIVE",
    "RULES",
    "MAX_OCTAL_SIZE",
    "MAX_MTIME",
    "padding_for",
    "check_member_name",
    "encode_header",
    "decode_header",
    "TarEntry",
]

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)   # two zero blocks close a ustar archive

# Stable rule ids raised (or reported) by this module: rule -> one-line meaning.
RULES: dict[str, str] = {
    "ova.tar.checksum": "header checksum does not match the header bytes (signed or unsigned sum)",
    "ova.tar.header": "a header field is malformed: non-octal number, negative base-256, unknown magic",
    "ova.tar.truncated": "a header, member data or its padding runs past the end of the file",
    "ova.tar.pax": "PAX ('x'/'g') or GNU long-name ('L'/'K') header: ovftool and oVirt reject them",
    "ova.tar.end": "the two zero blocks that end the archive are missing (warning, reported as a Finding)",
    "ova.tar.zero": "a lone zero block followed by another header: tarfile stops there, GNU tar goes on",
    "ova.member.name": ("member name is empty, '.', '..', absolute, has '/', backslash, NUL, "
                        "control or non-ASCII bytes, or is longer than 100 bytes"),
    "ova.member.type": "member is not a regular file (link, directory, device, fifo, sparse, volume...)",
    "ova.member.duplicate": "two members carry the same name",
}

# Field offsets and widths (POSIX ustar).
_NAME = slice(0, 100)
_MODE = slice(100, 108)
_UID = slice(108, 116)
_GID = slice(116, 124)
_SIZE = slice(124, 136)
_MTIME = slice(136, 148)
_CHKSUM = slice(148, 156)
_TYPEFLAG = 156
_LINKNAME = slice(157, 257)
_MAGIC = slice(257, 263)
_VERSION = slice(263, 265)
_UNAME = slice(265, 297)
_GNAME = slice(297, 329)
_DEVMAJOR = slice(329, 337)
_DEVMINOR = slice(337, 345)
_PREFIX = slice(345, 500)

_USTAR_MAGIC = b"ustar\x00"
_USTAR_VERSION = b"00"
_GNU_MAGIC = b"ustar "          # GNU tar's pre-POSIX header: magic "ustar " + version " \0"
_V7_MAGIC = bytes(6)

MAX_NAME_BYTES = 100
MAX_OCTAL_SIZE = 8 ** 11 - 1     # 11 octal digits + NUL: sizes below 8 GiB
MAX_BASE256 = 2 ** 88 - 1        # 0x80 then 11 big-endian bytes
MAX_MTIME = 8 ** 11 - 1          # year 2242; mtime is never written in base-256 (see encode_header)
MAX_EXTENDED_BYTES = 1 << 20     # cap on a PAX / GNU long-name payload we read into memory

_REGULAR_TYPES = (b"0", b"\x00")          # '\0' is the pre-POSIX (v7) spelling of a regular file
_PAX_TYPES = (b"x", b"g")
_GNU_LONG_TYPES = (b"L", b"K")

TarFormat = Literal["ustar", "gnu", "v7"]


def padding_for(size: int) -> int:
    """Zero bytes that follow `size` bytes of member data up to the next 512-byte boundary."""
    return -size % BLOCK


def _name_problem(raw: bytes, *, max_bytes: int | None) -> str | None:
    """Why `raw` is not a safe flat OVA member name, or None when it is."""
    if not raw:
        return "empty name"
    if max_bytes is not None and len(raw) > max_bytes:
        return "name is %d bytes, more than %d" % (len(raw), max_bytes)
    if raw in (b".", b".."):
        return "name %r is a directory reference" % raw.decode("ascii")
    if b"\x00" in raw:
        return "name contains NUL"
    if b"/" in raw:
        # Covers absolute names, '../x' and 'dir/x': an OVA is flat (FORMATS.md 2).
        return "name %r contains '/'" % raw.decode("ascii", "backslashreplace")
    if b"\\" in raw:
        return "name %r contains a backslash" % raw.decode("ascii", "backslashreplace")
    for byte in raw:
        if byte >= 0x80:
            return "name %r is not ASCII" % raw.decode("ascii", "backslashreplace")
        if byte < 0x20 or byte == 0x7F:
            # A newline in a name would also break the manifest's one-line-per-file format.
            return "name %r contains a control character" % raw.decode("ascii", "backslashreplace")
    return None


def check_member_name(name: str, *, path: str | os.PathLike[str] | None = None,
                      offset: int | None = None) -> bytes:
    """Return `name` as ASCII bytes, or raise TarFormatError `ova.member.name`."""
    try:
        raw = name.encode("ascii")
    except UnicodeEncodeError:
        raise TarFormatError("ova.member.name", "name %r is not ASCII" % name,
                             path=path, offset=offset) from None
    problem = _name_problem(raw, max_bytes=MAX_NAME_BYTES)
    if problem is not None:
        raise TarFormatError("ova.member.name", problem, path=path, offset=offset)
    return raw


def _octal_field(value: int, width: int) -> bytes:
    """`width - 1` zero-padded octal digits and a NUL, as GNU tar and tarfile write them."""
    return b"%0*o\x00" % (width - 1, value)


def _checksums(block: bytes) -> tuple[int, int]:
    """(unsigned, signed) byte sums with the checksum field counted as 8 spaces.

    Some historic tars summed signed chars; GNU tar and tarfile accept either sum.
    """
    unsigned = sum(block) - sum(block[_CHKSUM]) + 8 * 0x20
    high = sum(1 for b in block[:148] if b >= 0x80) + sum(1 for b in block[156:] if b >= 0x80)
    return unsigned, unsigned - 256 * high


def encode_header(name: str, size: int, *, mtime: int, mode: int = 0o644) -> bytes:
    """One 512-byte ustar header for a regular file (typeflag '0').

    - uid/gid 0 and empty uname/gname: what `tar --owner=0 --group=0 --numeric-owner` writes
      (the reproducible-builds recipe); readers fall back to the numeric ids, and no OVA reader
      we know (ovftool, VirtualBox, oVirt, tarfile, GNU tar, bsdtar) looks at the names.
    - size in octal below 8 GiB, else GNU base-256 (0x80 then 11 bytes big-endian).
    - mtime outside 0..8**11-1 raises UsageError rather than being clamped: the value comes
      from SOURCE_DATE_EPOCH or an input file, and silently changing it would make two
      "reproducible" builds disagree about what they wrote.
    - a name that is not a flat ASCII name of at most 100 bytes raises TarFormatError
      `ova.member.name` (never a ustar prefix split: OVA names carry no '/').
    """
    raw_name = check_member_name(name)
    if size < 0 or size > MAX_BASE256:
        raise UsageError("tar member size %d is outside 0..2**88-1" % size)
    if mtime < 0 or mtime > MAX_MTIME:
        raise UsageError("tar mtime %d is outside 0..%d (11 octal digits)" % (mtime, MAX_MTIME))
    if mode < 0 or mode > 0o7777:
        raise UsageError("tar mode %o is outside 0..0o7777" % mode)

    header = bytearray(BLOCK)
    header[0:len(raw_name)] = raw_name
    header[_MODE] = _octal_field(mode, 8)
    header[_UID] = _octal_field(0, 8)
    header[_GID] = _octal_field(0, 8)
    if size <= MAX_OCTAL_SIZE:
        header[_SIZE] = _octal_field(size, 12)
    else:
        header[_SIZE] = b"\x80" + size.to_bytes(11, "big")
    header[_MTIME] = _octal_field(mtime, 12)
    header[_TYPEFLAG] = ord("0")
    header[_MAGIC] = _USTAR_MAGIC
    header[_VERSION] = _USTAR_VERSION
    header[_DEVMAJOR] = _octal_field(0, 8)
    header[_DEVMINOR] = _octal_field(0, 8)
    header[_CHKSUM] = b" " * 8
    checksum = sum(header)
    # 6 octal digits, NUL, space: the historic layout GNU tar writes (FORMATS.md 2).
    header[_CHKSUM] = b"%06o\x00 " % checksum
    return bytes(header)


@dataclass(frozen=True)
class TarEntry:
    """One member header as read from an archive.

    Offsets are absolute byte offsets in the archive.  `header_offset` is the member's own
    ustar header; when PAX / GNU long-name headers preceded it (only with allow_pax=True),
    `extended_offset` is the first of those.
    """

    name: str
    size: int
    type: str                   # typeflag character: '0' (or '\\0') for regular files
    mtime: int
    mode: int
    uid: int
    gid: int
    header_offset: int
    data_offset: int
    format: TarFormat           # "ustar", "gnu" or "v7" magic
    size_base256: bool = False  # size field was GNU base-256 (members >= 8 GiB)
    pax: bool = False           # name or size came from a PAX / GNU long-name header
    extended_offset: int | None = None

    @property
    def end_offset(self) -> int:
        """Offset just after the member's data padding: where the next header starts."""
        return self.data_offset + self.size + padding_for(self.size)

    @property
    def is_regular(self) -> bool:
        return self.type in ("0", "\x00")


def _parse_number(field: bytes, what: str, *, path: str | os.PathLike[str] | None,
                  offset: int) -> tuple[int, bool]:
    """A numeric header field: octal ASCII or GNU base-256.  Returns (value, was_base256)."""
    if field and field[0] & 0x80:
        if field[0] != 0x80:
            # 0xFF is a negative number; other lead bytes carry value bits that GNU tar reads
            # and tarfile refuses.  Readers that disagree on a size could be shown different
            # members, so only the form everyone reads the same way is accepted.
            raise TarFormatError("ova.tar.header",
                                 "%s field is base-256 with lead byte 0x%02x, not 0x80" % (what, field[0]),
                                 path=path, offset=offset)
        return int.from_bytes(field[1:], "big"), True
    # Octal: optional leading spaces, digits, then NUL or space terminators (GNU tar, tarfile).
    text = field.split(b"\x00", 1)[0].strip(b" ")
    if not text:
        return 0, False
    if any(c not in b"01234567" for c in text):
        raise TarFormatError("ova.tar.header", "%s field %r is not octal" % (what, field),
                             path=path, offset=offset)
    return int(text, 8), False


def decode_header(block: bytes, *, path: str | os.PathLike[str] | None = None,
                  offset: int = 0) -> TarEntry | None:
    """Decode and validate one 512-byte header.  None for an all-zero block.

    Checks checksum, magic, numeric fields and the name's safety.  It does not refuse
    non-regular types or PAX headers (the reader does, since it knows the options); the
    returned entry carries the raw typeflag.  Names from the ustar prefix field are joined with
    '/', which `ova.member.name` then refuses.
    """
    if len(block) != BLOCK:
        raise TarFormatError("ova.tar.truncated", "header is %d bytes, not 512" % len(block),
                             path=path, offset=offset)
    if not any(block):
        return None
    stored, _ = _parse_number(block[_CHKSUM], "chksum", path=path, offset=offset)
    unsigned, signed = _checksums(block)
    if stored not in (unsigned, signed):
        raise TarFormatError("ova.tar.checksum",
                             "stored checksum %o, header sums to %o" % (stored, unsigned),
                             path=path, offset=offset)
    magic = block[_MAGIC]
    fmt: TarFormat
    if magic == _USTAR_MAGIC:
        fmt = "ustar"
    elif magic == _GNU_MAGIC:
        fmt = "gnu"
    elif magic == _V7_MAGIC:
        fmt = "v7"
    else:
        raise TarFormatError("ova.tar.header", "unknown magic %r" % magic, path=path, offset=offset)

    typeflag = block[_TYPEFLAG:_TYPEFLAG + 1]
    mode, _ = _parse_number(block[_MODE], "mode", path=path, offset=offset)
    uid, _ = _parse_number(block[_UID], "uid", path=path, offset=offset)
    gid, _ = _parse_number(block[_GID], "gid", path=path, offset=offset)
    size, base256 = _parse_number(block[_SIZE], "size", path=path, offset=offset)
    mtime, _ = _parse_number(block[_MTIME], "mtime", path=path, offset=offset)
    # Meaningless for a regular file, but tarfile parses them in every header and refuses the
    # archive when they are not numbers: accept only what it reads too.
    _parse_number(block[_DEVMAJOR], "devmajor", path=path, offset=offset)
    _parse_number(block[_DEVMINOR], "devminor", path=path, offset=offset)

    name_field = block[_NAME]
    raw_name, nul, rest = name_field.partition(b"\x00")
    if nul and any(rest):
        # Every reader truncates at the NUL; bytes after it are a smuggling attempt or garbage.
        raise TarFormatError("ova.member.name", "name field has bytes after its NUL",
                             path=path, offset=offset)
    prefix = block[_PREFIX].split(b"\x00", 1)[0]
    if fmt == "ustar":
        if prefix:
            raw_name = prefix + b"/" + raw_name
    elif prefix and typeflag in _REGULAR_TYPES:
        # GNU headers keep atime/ctime there and v7 has no prefix, yet tarfile still prepends
        # it to the name: refuse what readers would name differently.
        raise TarFormatError("ova.tar.header",
                             "%s header with bytes in the ustar prefix field" % fmt,
                             path=path, offset=offset)
    # Extended headers ('x', 'g', 'L', 'K') carry synthetic names (e.g. './PaxHeaders.123/x',
    # '././@LongLink') that readers never use; the reader judges the name they announce.
    # Non-regular members are refused by type (`ova.member.type`, the more useful message:
    # tarfile names every directory 'd/'), so only regular members' names are judged here.
    if typeflag in _REGULAR_TYPES:
        problem = _name_problem(raw_name, max_bytes=None)
        if problem is not None:
            raise TarFormatError("ova.member.name", problem, path=path, offset=offset)
    name = raw_name.decode("ascii", "backslashreplace")
    return TarEntry(name=name, size=size, type=typeflag.decode("latin-1"), mtime=mtime,
                    mode=mode, uid=uid, gid=gid, header_offset=offset,
                    data_offset=offset + BLOCK, format=fmt, size_base256=base256)
