"""OVF descriptor writer: VirtualMachine + packed disks -> deterministic descriptor bytes.

Implements DMTF DSP0243 (OVF 1.x, and 2.x on request) as narrowed by FORMATS.md section 5 and
5.1, the dialect every importer reads the same way:

* OVF 1.0 envelope by default; ``ovf_version="2.0"`` switches to the ``envelope/2`` namespace
  with the same RASD ``Item``s (still valid in DSP8023 2.0.1; VMware rejects the 2.0-only
  StorageItem/EthernetPortItem, so we never write them).
* OVF elements in the default namespace (``<Envelope xmlns="…/envelope/1" xmlns:ovf="…">``,
  ``<References>``), attributes ``ovf:``-qualified: the form ovftool, vCenter and VirtualBox
  write, and the only one namespace-unaware readers (esxi-utils' OvfFile, scripts matching
  tag names) understand (FORMATS 5.1).
* Every ``Disk`` carries ``ovf:capacityAllocationUnits`` (``byte`` when no 2^N divides the
  capacity): Proxmox drops the size of a disk without units.
* Envelope order References, DiskSection, NetworkSection, VirtualSystem; inside the
  VirtualSystem the order ovftool writes (OperatingSystemSection, VirtualHardwareSection,
  ProductSection, AnnotationSection, EulaSection).
* RASD/VSSD children in alphabetical order (the CIM XSD types are sequences in that order)
  with ElementName and InstanceID always present; vendor extensions (``vmw:Config``,
  ``vmw:CoresPerSocket``) carry ``ovf:required="false"``.
* ``ovf:transport`` sits on the VirtualHardwareSection: that is where DSP0243 declares it
  (section 11.1) and where ovftool writes it; ProductSection has no such attribute.

Output is a pure function of the inputs: no clock, no randomness, no host names.  No UUID is
written: the VirtualSystem is identified by the VM name (FORMATS 5.1), so the disks' content
ids only matter to the VMDK writer.

Disk controllers: disks that ask for the same controller (kind, and model for SCSI) share one
controller instance until its unit limit is reached, then the next instance of that kind is
added (SCSI 15 units -- unit 7 is the controller itself --, SATA 30, NVMe 15, IDE 2 per
channel; at most 4 controllers of a kind, 2 IDE channels).  The boot disk (disks[0]) is unit 0
of the first controller.  The CD-ROM goes on SATA when the VM has a SATA controller, else on
IDE.

Sizing: the OVA writer reserves the descriptor's space before the disks' sizes are known;
:func:`reserve_size` bounds the length over every size up to 2**64-1 and :func:`pad_to` pads
the final rendering with whitespace after the root element (XML's trailing ``Misc``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from lxml import etree

from ..errors import UsageError
from .namespaces import (
    ENVELOPE_NS,
    NS_OVF1,
    NS_OVF2,
    NS_RASD,
    NS_VMW,
    NS_VSSD,
    RT_CDROM,
    RT_CPU,
    RT_DISK,
    RT_ETHERNET,
    RT_IDE,
    RT_MEMORY,
    RT_OTHER_STORAGE,
    RT_SCSI,
    VMDK_STREAM_FORMAT,
)
from .model import (
    NIC_ADAPTERS,
    SCSI_TYPES,
    DiskEntry,
    DiskSlot,
    VirtualMachine,
)

__all__ = [
    "NS_OVF1",
    "NS_OVF2",
    "NS_RASD",
    "NS_VSSD",
    "NS_VMW",
    "VMDK_STREAM_FORMAT",
    "OvfVersion",
    "capacity_with_units",
    "render_descriptor",
    "reserve_size",
    "pad_to",
]


OvfVersion = Literal["1.0", "2.0"]
_ENVELOPE_NS = ENVELOPE_NS
_OVF_NAMESPACES = frozenset({NS_OVF1, NS_OVF2})
# Carried elements are our own serialization of an already parsed (and checked) descriptor;
# parsed again with nothing external ever loaded.
def _carried_parser() -> etree.XMLParser:
    # One per call: lxml parsers are not safe to share between threads.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                           remove_comments=True, remove_pis=True)


_MAX_U64 = 2**64 - 1
# Bytes added to the computed bound: the bound is exact for the fields that vary, the
# margin only absorbs a future formatting change that forgets to update reserve_size.
_RESERVE_MARGIN = 64


@dataclass(frozen=True)
class _ControllerKind:
    label: str                 # ElementName / Description stem
    resource_type: int
    subtype: str | None        # IDE has none: vSphere rejects ResourceSubType PIIX4
    units: tuple[int, ...]     # AddressOnParent values a device may take
    max_count: int             # controllers of this bus family per VM


_SCSI_UNITS = tuple(u for u in range(16) if u != 7)   # unit 7 is the initiator
_SATA = _ControllerKind("SATA", RT_OTHER_STORAGE, "vmware.sata.ahci", tuple(range(30)), 4)
_NVME = _ControllerKind("NVMe", RT_OTHER_STORAGE, "vmware.nvme.controller", tuple(range(15)), 4)
_IDE = _ControllerKind("IDE", RT_IDE, None, (0, 1), 2)


def _kind_of(slot: DiskSlot) -> _ControllerKind:
    if slot.controller == "scsi":
        return _ControllerKind("SCSI", RT_SCSI, SCSI_TYPES[slot.scsi_type][0], _SCSI_UNITS, 4)
    return {"sata": _SATA, "nvme": _NVME, "ide": _IDE}[slot.controller]


def _family(kind: _ControllerKind) -> str:
    # SCSI models share the 4 SCSI buses; SATA, NVMe and IDE each have their own numbering.
    return kind.label


@dataclass
class _Controller:
    kind: _ControllerKind
    bus: int              # rasd:Address: the bus number within its family
    used: int = 0         # devices attached so far
    instance_id: int = 0

    def reserve_first(self) -> int:
        self.used = 1
        return 0

    def next_unit(self) -> int | None:
        if self.used >= len(self.kind.units):
            return None
        unit = self.kind.units[self.used]
        self.used += 1
        return unit


class _Plan:
    """Controller instances and (controller, unit) of each disk and of the CD-ROM."""

    def __init__(self, slots: Sequence[DiskSlot], cdrom: bool) -> None:
        self.controllers: list[_Controller] = []
        self.disk_places: list[tuple[_Controller, int]] = []
        self.cdrom_place: tuple[_Controller, int] | None = None
        for i, slot in enumerate(slots):
            self.disk_places.append(self._attach(_kind_of(slot), "disk %d" % (i + 1)))
        if cdrom:
            has_sata = any(c.kind is _SATA for c in self.controllers)
            self.cdrom_place = self._attach(_SATA if has_sata else _IDE, "the CD-ROM")

    def _attach(self, kind: _ControllerKind, what: str) -> tuple[_Controller, int]:
        for ctl in self.controllers:
            if ctl.kind == kind:
                unit = ctl.next_unit()
                if unit is not None:
                    return ctl, unit
        buses = [c.bus for c in self.controllers if _family(c.kind) == _family(kind)]
        if len(buses) >= kind.max_count:
            raise UsageError("controller: no room for %s: %d %s controllers of %d units "
                             "each are full" % (what, kind.max_count, kind.label,
                                                len(kind.units)))
        ctl = _Controller(kind, bus=len(buses))
        self.controllers.append(ctl)
        # A fresh controller always has its first unit free.
        return ctl, ctl.kind.units[ctl.reserve_first()]


@dataclass(frozen=True)
class _DiskRow:
    """Text of one disk's variable attributes (real or maximum-width values)."""

    entry: DiskEntry
    size: str
    capacity: str
    units: str
    populated: str


def capacity_with_units(capacity_bytes: int) -> tuple[int, str]:
    """(ovf:capacity, ovf:capacityAllocationUnits) with the largest 2^N (N in 30, 20, 10)
    dividing the size; (bytes, "byte") when none does."""
    for shift in (30, 20, 10):
        if capacity_bytes % (1 << shift) == 0:
            return capacity_bytes >> shift, "byte * 2^%d" % shift
    return capacity_bytes, "byte"


def _row(entry: DiskEntry) -> _DiskRow:
    capacity, units = capacity_with_units(entry.capacity_bytes)
    return _DiskRow(entry, str(entry.file_size_bytes), str(capacity), units,
                    str(entry.populated_bytes))


def _widest_row(entry: DiskEntry) -> _DiskRow:
    # For each unit the largest capacity it can express; keep the longest attribute text.
    candidates = [(str(_MAX_U64), "byte")] + [
        (str(_MAX_U64 >> shift), "byte * 2^%d" % shift) for shift in (10, 20, 30)]
    best = max(candidates, key=lambda c: len(c[0]) + len(c[1]))
    top = str(_MAX_U64)
    return _DiskRow(entry, top, best[0], best[1], top)


def _check_inputs(vm: VirtualMachine, disks: Sequence[DiskEntry], ovf_version: str) -> None:
    if ovf_version not in _ENVELOPE_NS:
        raise UsageError("ovf_version: %r is not allowed (one of: 1.0, 2.0)" % (ovf_version,))
    if not isinstance(vm, VirtualMachine):
        raise UsageError("vm: %r is not allowed (a VirtualMachine)" % (vm,))
    vm.validate()
    seen: dict[str, set[str]] = {"file_id": set(), "disk_id": set(), "href": set()}
    for i, disk in enumerate(disks):
        if not isinstance(disk, DiskEntry):
            raise UsageError("disks[%d]: %r is not allowed (a DiskEntry)" % (i, disk))
        for name in seen:
            value = getattr(disk, name)
            if value in seen[name]:
                raise UsageError("disks[%d].%s: %r is not allowed (each %s once)"
                                 % (i, name, value, name))
            seen[name].add(value)
        disk.slot.check_hw(vm.hw_version, "disks[%d].slot" % i)


class _Builder:
    def __init__(self, vm: VirtualMachine, rows: Sequence[_DiskRow], ovf_version: str) -> None:
        self.vm = vm
        self.rows = rows
        self.ns = _ENVELOPE_NS[ovf_version]
        self.plan = _Plan([r.entry.slot for r in rows], vm.cdrom)
        self.next_id = 1

    # -- small helpers -------------------------------------------------------------------
    def o(self, name: str) -> str:
        return "{%s}%s" % (self.ns, name)

    def sub(self, parent: etree._Element, tag: str, text: str | None = None,
            **attrs: str) -> etree._Element:
        el = etree.SubElement(parent, self.o(tag))
        for key, value in attrs.items():
            el.set(self.o(key), value)
        if text is not None:
            el.text = text
        return el

    def section(self, parent: etree._Element, name: str, info: str) -> etree._Element:
        el = self.sub(parent, name)
        self.sub(el, "Info", info)
        return el

    def item(self, parent: etree._Element, fields: dict[str, str], *,
             required: bool = True) -> etree._Element:
        el = self.sub(parent, "Item")
        if not required:
            el.set(self.o("required"), "false")
        fields = dict(fields, InstanceID=str(self.next_id))
        self.next_id += 1
        # CIM RASD is an xs:sequence in alphabetical element order (FORMATS 5).
        for key in sorted(fields):
            etree.SubElement(el, "{%s}%s" % (NS_RASD, key)).text = fields[key]
        return el

    def vmw_config(self, parent: etree._Element, key: str, value: str) -> None:
        el = etree.SubElement(parent, "{%s}Config" % NS_VMW)
        el.set(self.o("required"), "false")
        el.set("{%s}key" % NS_VMW, key)
        el.set("{%s}value" % NS_VMW, value)

    # -- the document --------------------------------------------------------------------
    def build(self) -> etree._Element:
        # Elements take the default namespace, attributes the ovf: prefix (same URI).
        root = etree.Element(self.o("Envelope"), nsmap={
            None: self.ns, "ovf": self.ns, "rasd": NS_RASD, "vssd": NS_VSSD, "vmw": NS_VMW})
        refs = self.sub(root, "References")
        for row in self.rows:
            self.sub(refs, "File", href=row.entry.href, id=row.entry.file_id, size=row.size)
        if self.rows:
            disks = self.section(root, "DiskSection", "Virtual disk information")
            for row in self.rows:
                self.sub(disks, "Disk", capacity=row.capacity,
                         capacityAllocationUnits=row.units, diskId=row.entry.disk_id,
                         fileRef=row.entry.file_id, format=VMDK_STREAM_FORMAT,
                         populatedSize=row.populated)
        networks = list(dict.fromkeys(nic.network for nic in self.vm.nics))
        if networks:
            section = self.section(root, "NetworkSection", "The list of logical networks")
            for name in networks:
                net = self.sub(section, "Network", name=name)
                self.sub(net, "Description", "The %s network" % name)
        self.carry(root, "envelope", strings=False)
        self.virtual_system(root)
        self.carry(root, "envelope", strings=True)
        return root

    # -- carried elements (repack) -------------------------------------------------------
    def carry(self, parent: etree._Element, place: str, *, strings: bool | None = None) -> None:
        for section in self.vm.carried:
            if section.place != place:
                continue
            el = etree.fromstring(section.xml, _carried_parser())
            if strings is not None and (etree.QName(el).localname == "Strings") != strings:
                continue
            extra = {prefix: uri for prefix, uri in el.nsmap.items()
                     if prefix is not None and uri not in _OVF_NAMESPACES
                     and uri not in parent.nsmap.values()}
            self.graft(parent, el, extra)

    def graft(self, parent: etree._Element, el: etree._Element,
              nsmap: dict[str, str] | None = None) -> None:
        """Copy ``el`` under ``parent``: OVF 1/2 names move to the envelope namespace being
        written; whitespace-only text is dropped so pretty printing indents it as ours."""
        child = etree.SubElement(parent, self.rename(el.tag), nsmap=nsmap or None)
        for key, value in el.attrib.items():
            child.set(self.rename(key), value)
        if el.text and el.text.strip():
            child.text = el.text
        for sub in el:
            if isinstance(sub.tag, str):
                self.graft(child, sub)
                if sub.tail and sub.tail.strip():
                    child[-1].tail = sub.tail

    def rename(self, name: str) -> str:
        qname = etree.QName(name)
        if qname.namespace in _OVF_NAMESPACES:
            return self.o(qname.localname)
        return name

    def virtual_system(self, root: etree._Element) -> None:
        vm = self.vm
        system = self.sub(root, "VirtualSystem", id=vm.name)
        self.sub(system, "Info", "A virtual machine")
        self.sub(system, "Name", vm.name)
        guest = vm.guest
        os_section = self.sub(system, "OperatingSystemSection", id=str(guest.cim_id))
        os_section.set("{%s}osType" % NS_VMW, guest.vmw_os_type)
        self.sub(os_section, "Info", "The kind of installed guest operating system")
        self.sub(os_section, "Description", guest.description)
        self.hardware(system)
        if vm.product is not None:
            self.product(system)
        if vm.annotation:
            section = self.section(system, "AnnotationSection", "A human-readable annotation")
            self.sub(section, "Annotation", vm.annotation)
        if vm.eula is not None:
            section = self.section(system, "EulaSection", "End User License Agreement")
            self.sub(section, "License", vm.eula)
        self.carry(system, "system")

    def hardware(self, system: etree._Element) -> None:
        vm = self.vm
        hw = self.section(system, "VirtualHardwareSection", "Virtual hardware requirements")
        transport = vm.product.transport if vm.product is not None else vm.hardware_transport
        if transport:
            hw.set(self.o("transport"), transport)
        vssd = self.sub(hw, "System")
        for key, value in (("ElementName", "Virtual Hardware Family"), ("InstanceID", "0"),
                           ("VirtualSystemIdentifier", vm.name),
                           ("VirtualSystemType", vm.system_type or "vmx-%02d" % vm.hw_version)):
            etree.SubElement(vssd, "{%s}%s" % (NS_VSSD, key)).text = value

        cpu = self.item(hw, {
            "AllocationUnits": "hertz * 10^6", "Description": "Number of Virtual CPUs",
            "ElementName": "%d virtual CPU(s)" % vm.cpus, "ResourceType": str(RT_CPU),
            "VirtualQuantity": str(vm.cpus)})
        if vm.cores_per_socket > 1:
            cores = etree.SubElement(cpu, "{%s}CoresPerSocket" % NS_VMW)
            cores.set(self.o("required"), "false")
            cores.text = str(vm.cores_per_socket)
        # Units exactly "byte * 2^20": VirtualBox accepts only a few spellings, GCE needs them.
        self.item(hw, {
            "AllocationUnits": "byte * 2^20", "Description": "Memory Size",
            "ElementName": "%dMB of memory" % vm.memory_mib, "ResourceType": str(RT_MEMORY),
            "VirtualQuantity": str(vm.memory_mib)})

        for ctl in self.plan.controllers:
            ctl.instance_id = self.next_id
            fields = {"Address": str(ctl.bus), "Description": "%s Controller" % ctl.kind.label,
                      "ElementName": "%s Controller %d" % (ctl.kind.label, ctl.bus),
                      "ResourceType": str(ctl.kind.resource_type)}
            if ctl.kind.subtype is not None:
                # SATA's spelling is the target's (VirtualBox writes and reads "AHCI").
                fields["ResourceSubType"] = (vm.sata_subtype if ctl.kind is _SATA
                                             else ctl.kind.subtype)
            self.item(hw, fields)

        for n, (row, (ctl, unit)) in enumerate(zip(self.rows, self.plan.disk_places), 1):
            self.item(hw, {
                "AddressOnParent": str(unit), "ElementName": "Hard Disk %d" % n,
                "HostResource": "ovf:/disk/%s" % row.entry.disk_id,
                "Parent": str(ctl.instance_id), "ResourceType": str(RT_DISK)})

        if self.plan.cdrom_place is not None:
            ctl, unit = self.plan.cdrom_place
            # An empty client-device drive, as ovftool exports one; optional so that a
            # reader without CD support still imports the VM.
            self.item(hw, {
                "AddressOnParent": str(unit), "AutomaticAllocation": "false",
                "ElementName": "CD/DVD Drive 1", "Parent": str(ctl.instance_id),
                "ResourceSubType": "vmware.cdrom.remotepassthrough",
                "ResourceType": str(RT_CDROM)}, required=False)

        for n, nic in enumerate(vm.nics, 1):
            subtype = NIC_ADAPTERS[nic.adapter][0]
            self.item(hw, {
                "AutomaticAllocation": "true", "Connection": nic.network,
                "Description": '%s ethernet adapter on "%s"' % (subtype, nic.network),
                "ElementName": "Network adapter %d" % n, "ResourceSubType": subtype,
                "ResourceType": str(RT_ETHERNET)})

        if vm.firmware == "efi":
            self.vmw_config(hw, "firmware", "efi")
            if vm.secure_boot:
                self.vmw_config(hw, "bootOptions.efiSecureBootEnabled", "true")
        self.carry(hw, "hardware")

    def product(self, system: etree._Element) -> None:
        product = self.vm.product
        if product is None:
            return
        section = self.section(system, "ProductSection",
                               "Information about the installed software")
        for tag, value in (("Product", product.product), ("Vendor", product.vendor),
                           ("Version", product.version), ("FullVersion", product.full_version),
                           ("ProductUrl", product.product_url),
                           ("VendorUrl", product.vendor_url)):
            if value:
                self.sub(section, tag, value)
        for prop in product.properties:
            el = self.sub(section, "Property", key=prop.key, type=prop.ovf_type)
            if prop.qualifiers:
                el.set(self.o("qualifiers"), prop.qualifiers)
            el.set(self.o("userConfigurable"), "true" if prop.user_configurable else "false")
            el.set(self.o("value"), prop.default)
            if prop.password:
                el.set(self.o("password"), "true")
            if prop.label:
                self.sub(el, "Label", prop.label)
            if prop.description:
                self.sub(el, "Description", prop.description)


# Written by hand: lxml's own declaration uses single quotes, which some line-oriented
# readers of OVF files do not expect; every OVF producer writes this exact line.
_XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def _serialize(root: etree._Element) -> bytes:
    return _XML_DECLARATION + etree.tostring(root, encoding="UTF-8", pretty_print=True)


def render_descriptor(vm: VirtualMachine, disks: Sequence[DiskEntry], *,
                      ovf_version: OvfVersion = "1.0") -> bytes:
    """The OVF descriptor for ``vm`` with ``disks`` (boot disk first), UTF-8 with an XML
    declaration.  Same inputs, same bytes."""
    _check_inputs(vm, disks, ovf_version)
    return _serialize(_Builder(vm, [_row(d) for d in disks], ovf_version).build())


def reserve_size(vm: VirtualMachine, disks: Sequence[DiskEntry], *,
                 ovf_version: OvfVersion = "1.0") -> int:
    """An upper bound of ``len(render_descriptor(vm, disks'))`` for any ``disks'`` that
    differ from ``disks`` only in sizes (each up to 2**64-1) and content ids.

    Rendered once with the widest text every size field can take, plus a small margin.
    """
    _check_inputs(vm, disks, ovf_version)
    widest = _serialize(_Builder(vm, [_widest_row(d) for d in disks], ovf_version).build())
    return len(widest) + _RESERVE_MARGIN


def pad_to(descriptor: bytes, size: int) -> bytes:
    """``descriptor`` grown to exactly ``size`` bytes with whitespace after the root element
    (XML 1.0 production [27] Misc allows it); ValueError when it does not fit."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ValueError("size: %r is not allowed (a byte count >= 0)" % (size,))
    if len(descriptor) > size:
        raise ValueError("descriptor of %d bytes does not fit in %d reserved bytes"
                         % (len(descriptor), size))
    if not descriptor.rstrip().endswith(b">"):
        raise ValueError("descriptor does not end with its root element's end tag")
    pad = size - len(descriptor)
    if pad == 0:
        return descriptor
    # Spaces, then one newline so the padded file still ends like a text file.
    return descriptor + b" " * (pad - 1) + b"\n"
