"""The text descriptor embedded at sector 1 of a stream-optimized VMDK.

VMware "Virtual Disk Format 5.0", "The Descriptor File"; the fields every reader needs are in
../shared/FORMATS.md 1.4: qemu refuses a file without CID/parentCID, VirtualBox wants
version=1, createType and one extent line, vSphere guest customization wants
ddb.toolsVersion.  CID, ddb.uuid and ddb.longContentID derive from a 16-byte disk key, never
from the clock or randomness, so the same disk and settings give the same bytes.
"""

from __future__ import annotations

import xxhash

from ..errors import UsageError
from .layout import geometry

__all__ = ["ADAPTER_TYPES", "render_descriptor", "derived_ids"]

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
