"""The VMDK text descriptor: rendered for the stream-optimized files ovfstream writes (embedded
at sector 1), parsed for every VMDK it reads (embedded, or a descriptor file naming extents).

VMware "Virtual Disk Format 5.0", "The Descriptor File"; the fields every reader needs are in
../shared/FORMATS.md 1.4: qemu refuses a file without CID/parentCID, VirtualBox wants
version=1, createType and one extent line, vSphere guest customization wants
ddb.toolsVersion.  CID, ddb.uuid and ddb.longContentID derive from a 16-byte disk key, never
from the clock or randomness, so the same disk and settings give the same bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import xxhash

from ..errors import UsageError
from .layout import geometry

__all__ = ["ADAPTER_TYPES", "render_descriptor", "derived_ids", "Descriptor", "Extent"]

ADAPTER_TYPES = ("lsilogic", "buslogic", "ide", "legacyESX")


def derived_ids(disk_key: bytes) -> tuple[str, str, str]:
    """(CID, longContentID, uuid text) from the disk key."""
    cid = xxhash.xxh3_64_intdigest(b"vmdk-cid" + disk_key) & 0xFFFFFFFF
    if cid in (0xFFFFFFFF, 0xFFFFFFFE):  # reserved: "no parent" / "content unknown"
        cid = 0x0FFFFFFF
    long_content_id = xxhash.xxh3_128_hexdigest(b"vmdk-longContentID" + disk_key)
    raw = xxhash.xxh3_128_digest(b"vmdk-uuid" + disk_key)
    uuid_text = " ".join("%02x" % b for b in raw[:8]) + "-" + " ".join("%02x" % b for b in raw[8:])
    return "%08x" % cid, long_content_id, uuid_text


def render_descriptor(*, capacity_sectors: int, file_name: str, disk_key: bytes,
                      adapter_type: str = "lsilogic",
                      ids: tuple[str, str, str] | None = None) -> bytes:
    """The descriptor text; ``ids`` (CID, longContentID, uuid text) replaces the ones derived
    from ``disk_key`` (repack carries a copied disk's own)."""
    if adapter_type not in ADAPTER_TYPES:
        raise UsageError("--adapter-type %r: allowed %s" % (adapter_type, ", ".join(ADAPTER_TYPES)))
    if not file_name or any(c in file_name for c in '"\n\r\0') or not file_name.isascii():
        raise UsageError("VMDK file name %r: must be non-empty ASCII without quotes or newlines"
                         % file_name)
    cid, long_content_id, uuid_text = ids if ids is not None else derived_ids(disk_key)
    cylinders, heads, sectors = geometry(capacity_sectors, adapter_type)
    lines = [
        "# Disk DescriptorFile",
        "version=1",
        'encoding="UTF-8"',
        "CID=%s" % cid,
        "parentCID=ffffffff",
        'createType="streamOptimized"',
        "",
        "# Extent description",
        'RDONLY %d SPARSE "%s"' % (capacity_sectors, file_name),
        "",
        "# The Disk Data Base",
        "#DDB",
        "",
        'ddb.adapterType = "%s"' % adapter_type,
        'ddb.geometry.cylinders = "%d"' % cylinders,
        'ddb.geometry.heads = "%d"' % heads,
        'ddb.geometry.sectors = "%d"' % sectors,
        'ddb.longContentID = "%s"' % long_content_id,
        'ddb.toolsInstallType = "4"',
        'ddb.toolsVersion = "2147483647"',  # "unknown/unmanaged": lets vSphere customize
        'ddb.uuid = "%s"' % uuid_text,
        'ddb.virtualHWVersion = "4"',
    ]
    return ("\n".join(lines) + "\n").encode("ascii")


# ---------------------------------------------------------------------------------------------
# Parsing (a stream VMDK's embedded descriptor, or a descriptor file naming extent files)


# Lines are split with str methods, never with a backtracking regex over the whole line: a
# line of a million spaces must cost one pass (a regex with \s* around a lazy group was
# quadratic).  The patterns below only ever match one whitespace-free token.
_ACCESS = ("RW", "RDONLY", "NOACCESS")
_WORD_RE = re.compile(r"\w+")
_KEY_RE = re.compile(r"[A-Za-z0-9_.]+")
_MAX_NUMBER_DIGITS = 20                 # a u64; int() of a longer string is refused or slow


def _number(token: str) -> int | None:
    if not token or len(token) > _MAX_NUMBER_DIGITS or not (token.isascii() and token.isdigit()):
        return None
    return int(token)


def _parse_extent(line: str) -> "Extent | None":
    """``ACCESS SECTORS TYPE ["FILE" [OFFSET]]`` (line already stripped), or None."""
    parts = line.split(None, 3)
    if len(parts) < 3 or parts[0] not in _ACCESS or not _WORD_RE.fullmatch(parts[2]):
        return None
    sectors = _number(parts[1])
    if sectors is None:
        return None
    file_name = None
    offset = 0
    if len(parts) == 4:
        rest = parts[3]
        end = rest.find('"', 1)
        if not rest.startswith('"') or end < 0:
            return None
        file_name = rest[1:end]
        tail = rest[end + 1:]
        if tail:
            number = _number(tail.strip()) if tail[0].isspace() else None
            if number is None:
                return None
            offset = number
    return Extent(parts[0], sectors, parts[2], file_name, offset)


@dataclass(frozen=True)
class Extent:
    """One extent line: ``RW 2048 SPARSE "disk.vmdk"`` or ``RW 2048 FLAT "disk-flat.vmdk" 0``."""

    access: str
    sectors: int
    kind: str
    file_name: str | None
    offset: int = 0                  # FLAT: the extent's first sector in its file


@dataclass(frozen=True)
class Descriptor:
    """The embedded descriptor's text and the fields readers act on."""

    text: str
    entries: dict[str, str]          # header key=value lines (version, CID, createType...)
    ddb: dict[str, str]              # ddb.* entries
    extents: tuple[Extent, ...]
    bad_lines: tuple[str, ...]       # lines that are neither comment, key=value nor extent

    @property
    def create_type(self) -> str | None:
        return self.entries.get("createType")

    @property
    def cid(self) -> str | None:
        return self.entries.get("CID")

    @property
    def parent_cid(self) -> str | None:
        return self.entries.get("parentCID")

    @classmethod
    def parse(cls, text: str) -> "Descriptor":
        entries: dict[str, str] = {}
        ddb: dict[str, str] = {}
        extents: list[Extent] = []
        bad: list[str] = []
        for raw_line in text.splitlines():
            line = raw_line.strip()
            if not line or line.startswith("#"):
                continue
            extent = _parse_extent(line)
            if extent is not None:
                extents.append(extent)
                continue
            key, eq, value = line.partition("=")
            key = key.rstrip()
            if eq and _KEY_RE.fullmatch(key):
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    value = value[1:-1]
                (ddb if key.startswith("ddb.") else entries)[key] = value
                continue
            bad.append(line[:80])
        return cls(text, entries, ddb, tuple(extents), tuple(bad))
