"""What an OVF package declares, as read back from its descriptor (for ``inspect``/``verify``).

Read-side records only: frozen dataclasses filled by :mod:`ovfstream.ovf.reader` from any
dialect it accepts (DMTF DSP0243 OVF 1.x and 2.x, VMware's pre-DMTF 0.9, VirtualBox and
VMware vendor extensions).  Every value that a descriptor may omit or spell in a way we could
not understand is ``None`` rather than a guess; the reader reports why as a Finding.

Sequences are tuples so that the records stay immutable and hashable; :meth:`Descriptor.as_dict`
turns everything into plain JSON types (tuples become lists).  :func:`summary_text` gives the
rows the CLI prints for ``inspect``; nothing here prints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, cast

__all__ = [
    "FileRef",
    "DiskInfo",
    "NicInfo",
    "PropertyInfo",
    "ProductInfo",
    "DeploymentOption",
    "VirtualSystemInfo",
    "Descriptor",
    "summary_text",
]


@dataclass(frozen=True)
class FileRef:
    """One References/File: ``ovf:id``, ``ovf:href``, ``ovf:size`` (bytes), ``ovf:compression``
    (e.g. "gzip") and ``ovf:chunkSize`` (bytes per chunk of a split file)."""

    id: str
    href: str
    size: int | None = None
    compression: str | None = None
    chunk_size: int | None = None


@dataclass(frozen=True)
class DiskInfo:
    """One DiskSection/Disk; inside a VirtualSystemInfo also where the VM attaches it.

    ``capacity_bytes`` has ``ovf:capacityAllocationUnits`` applied; it is None when the
    capacity is a ``${property}`` resolved at deploy time or cannot be read.
    ``controller`` is e.g. "scsi lsilogic", "ide", "sata", "nvme"; ``address`` is
    "BUS:UNIT" (controller address : AddressOnParent) or just the unit when the bus is unknown.
    """

    disk_id: str
    file_ref: str | None = None
    capacity_bytes: int | None = None
    populated_bytes: int | None = None
    format_uri: str | None = None
    controller: str | None = None
    address: str | None = None


@dataclass(frozen=True)
class NicInfo:
    """One ethernet Item (ResourceType 10): ``rasd:Connection``, ``rasd:ResourceSubType`` and
    ``rasd:AutomaticAllocation`` (connected at power on; None when absent)."""

    network: str | None
    adapter_type: str | None
    connected: bool | None


@dataclass(frozen=True)
class PropertyInfo:
    """One ProductSection/Property.  ``key`` is fully qualified as OVF guests see it:
    ``class.key.instance`` when the ProductSection has ``ovf:class``/``ovf:instance``."""

    key: str
    type: str | None
    default: str | None
    user_configurable: bool
    label: str | None


@dataclass(frozen=True)
class ProductInfo:
    """The VirtualSystem's product branding and all its properties (from every ProductSection)."""

    product: str | None = None
    vendor: str | None = None
    version: str | None = None
    full_version: str | None = None
    product_url: str | None = None
    vendor_url: str | None = None
    properties: tuple[PropertyInfo, ...] = ()


@dataclass(frozen=True)
class DeploymentOption:
    """One DeploymentOptionSection/Configuration."""

    id: str
    label: str | None
    default: bool


@dataclass(frozen=True)
class VirtualSystemInfo:
    """One VirtualSystem, with the hardware of the default deployment configuration.

    ``memory_mib`` has ``rasd:AllocationUnits`` applied; ``hw_version`` is the
    ``vssd:VirtualSystemType`` text as written (it may list several, "vmx-08 vmx-09");
    ``firmware`` is "bios", "efi" or None when the descriptor does not say.
    """

    id: str | None
    name: str | None
    os_id: int | None = None
    os_type: str | None = None
    os_description: str | None = None
    cpus: int | None = None
    cores_per_socket: int | None = None
    memory_mib: int | None = None
    firmware: str | None = None
    secure_boot: bool | None = None
    hw_version: str | None = None
    disks: tuple[DiskInfo, ...] = ()
    nics: tuple[NicInfo, ...] = ()
    product: ProductInfo | None = None
    eula: bool = False
    annotation: str | None = None
    cdrom: bool = False               # a CD/DVD drive Item (ResourceType 15 or 16)
    transport: str | None = None      # VirtualHardwareSection ovf:transport
    sata_subtype: str | None = None   # a SATA controller's ResourceSubType as written


@dataclass(frozen=True)
class Descriptor:
    """The whole descriptor.

    ``ovf_version`` is "1.x", "2.x" or "0.9" (from the envelope namespace); ``root`` is the
    kind of the Envelope's content entity ("VirtualSystem", "VirtualSystemCollection" or ""
    when there is none) and ``root_id`` its ``ovf:id``.  ``systems`` lists every VirtualSystem,
    those inside (nested) VirtualSystemCollections included, in document order.
    """

    ovf_version: str
    namespace: str
    files: tuple[FileRef, ...] = ()
    disks: tuple[DiskInfo, ...] = ()
    networks: tuple[str, ...] = ()
    systems: tuple[VirtualSystemInfo, ...] = ()
    root: str = ""
    root_id: str | None = None
    deployment_options: tuple[DeploymentOption, ...] = ()
    default_configuration: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON types only (dicts, lists, str, int, bool, None)."""
        return cast("dict[str, Any]", _jsonable(self))


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _size(n: int | None) -> str:
    """Bytes as an exact count plus a binary-unit hint ("34359738368 (32 GiB)")."""
    if n is None:
        return "?"
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            value = n / (1 << shift)
            text = ("%d" % value) if n % (1 << shift) == 0 else ("%.1f" % value)
            return "%d (%s %s)" % (n, text, unit)
    return "%d" % n


def _opt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def summary_text(desc: Descriptor) -> list[tuple[str, str]]:
    """(label, value) rows describing the package, in a stable order, for a two-column table.

    Rows of a VirtualSystem are prefixed by its row ("VM") and indented by two spaces.
    """
    rows: list[tuple[str, str]] = [("OVF", "%s (%s)" % (desc.ovf_version, desc.namespace))]
    if desc.root:
        rows.append(("Content", "%s %s" % (desc.root, _opt(desc.root_id))))
    for f in desc.files:
        extras = [x for x in (f.compression, None if f.chunk_size is None
                              else "chunks of %d" % f.chunk_size) if x]
        rows.append(("File", "%s: %s, %s bytes%s" % (
            f.id, f.href, _opt(f.size), (" (%s)" % ", ".join(extras)) if extras else "")))
    for d in desc.disks:
        rows.append(("Disk", "%s: capacity %s, file %s, format %s" % (
            d.disk_id, _size(d.capacity_bytes), _opt(d.file_ref), _opt(d.format_uri))))
    if desc.networks:
        rows.append(("Networks", ", ".join(desc.networks)))
    if desc.deployment_options:
        rows.append(("Deployment options", ", ".join(
            o.id + (" (default)" if o.id == desc.default_configuration else "")
            for o in desc.deployment_options)))
    for vs in desc.systems:
        rows.append(("VM", "%s (id %s)" % (_opt(vs.name), _opt(vs.id))))
        os_text = " ".join(x for x in (vs.os_type, None if vs.os_id is None else "#%d" % vs.os_id,
                                        vs.os_description and "(%s)" % vs.os_description) if x)
        rows.append(("  OS", os_text or "-"))
        cpu_text = _opt(vs.cpus)
        if vs.cores_per_socket:
            cpu_text += " (%d per socket)" % vs.cores_per_socket
        rows.append(("  CPUs", cpu_text))
        rows.append(("  Memory", "-" if vs.memory_mib is None else "%d MiB" % vs.memory_mib))
        rows.append(("  Hardware", _opt(vs.hw_version)))
        fw = _opt(vs.firmware)
        if vs.secure_boot is not None:
            fw += ", secure boot %s" % _opt(vs.secure_boot)
        rows.append(("  Firmware", fw))
        for d in vs.disks:
            rows.append(("  Disk", "%s: %s on %s %s" % (
                d.disk_id, _size(d.capacity_bytes), _opt(d.controller), _opt(d.address))))
        for n in vs.nics:
            rows.append(("  NIC", "%s on %s%s" % (
                _opt(n.adapter_type), _opt(n.network),
                "" if n.connected is None else (", connected" if n.connected else ", not connected"))))
        if vs.product is not None:
            p = vs.product
            rows.append(("  Product", " ".join(x for x in (p.product, p.full_version or p.version,
                                                            p.vendor and "by " + p.vendor) if x) or "-"))
            if p.properties:
                rows.append(("  Properties", "%d (%d user-configurable)" % (
                    len(p.properties), sum(1 for q in p.properties if q.user_configurable))))
        if vs.eula:
            rows.append(("  EULA", "yes"))
        if vs.annotation:
            first = vs.annotation.strip().splitlines()[0] if vs.annotation.strip() else ""
            rows.append(("  Annotation", first))
    return rows
