"""The virtual machine an OVF descriptor describes: frozen, validated value objects.

Implements the option side of DMTF DSP0243 (OVF 1.x/2.x) as narrowed by FORMATS.md section 5
and 5.1 ("the default descriptor"): what a VM may declare (CPUs, memory, guest OS, firmware,
disk controllers, NICs, CD-ROM, product properties, EULA) and which combinations each VMware
virtual hardware version (``vmx-NN``) accepts.  Every check raises :class:`UsageError` naming
the field, the bad value and what is allowed; nothing here touches files, clocks or randomness.

The writer (:mod:`ovfstream.ovf.writer`) turns a :class:`VirtualMachine` plus one
:class:`DiskEntry` per packed disk into descriptor bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from ..errors import UsageError

__all__ = [
    "GUEST_OS",
    "GuestOs",
    "NIC_ADAPTERS",
    "CONTROLLERS",
    "SCSI_TYPES",
    "FIRMWARES",
    "PROPERTY_TYPES",
    "TRANSPORTS",
    "HW_VERSION_MIN",
    "HW_VERSION_MAX",
    "SATA_SUBTYPES",
    "Nic",
    "Property",
    "Product",
    "DiskSlot",
    "VirtualMachine",
    "DiskEntry",
    "CarriedSection",
    "CARRIED_PLACES",
]

Adapter = Literal["vmxnet3", "e1000", "e1000e"]
Controller = Literal["scsi", "sata", "ide", "nvme"]
ScsiType = Literal["lsilogic", "lsilogicsas", "pvscsi", "buslogic"]
Firmware = Literal["bios", "efi"]

# NIC name -> (RASD ResourceSubType, lowest vmx version that has the device).
# ResourceSubType spellings are the ones ovftool writes and VirtualBox/Proxmox map.
NIC_ADAPTERS: dict[str, tuple[str, int]] = {
    "e1000": ("E1000", 4),
    "e1000e": ("E1000e", 8),
    "vmxnet3": ("VmxNet3", 7),
}

CONTROLLERS: tuple[str, ...] = ("scsi", "sata", "ide", "nvme")
# Lowest vmx version per controller: SATA (AHCI) arrived with vmx-10, NVMe with vmx-13.
CONTROLLER_MIN_HW: dict[str, int] = {"scsi": 4, "ide": 4, "sata": 10, "nvme": 13}

# SCSI model -> (RASD ResourceSubType, lowest vmx version).  pvscsi is "VirtualSCSI" in OVF.
SCSI_TYPES: dict[str, tuple[str, int]] = {
    "lsilogic": ("lsilogic", 4),
    "buslogic": ("buslogic", 4),
    "lsilogicsas": ("lsilogicsas", 7),
    "pvscsi": ("VirtualSCSI", 7),
}

FIRMWARES: tuple[str, ...] = ("bios", "efi")
# EFI firmware exists from vmx-8 (ESXi 5.0); secure boot and NVMe need vmx-13 (ESXi 6.5).
EFI_MIN_HW = 8
SECURE_BOOT_MIN_HW = 13

HW_VERSION_MIN = 4
HW_VERSION_MAX = 21

# ResourceSubType spellings of a SATA (AHCI) controller: VMware's, which VirtualBox also
# maps, and VirtualBox's own (what it writes; older releases read only that one).
SATA_SUBTYPES: tuple[str, ...] = ("vmware.sata.ahci", "AHCI")
_SYSTEM_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,63}$")

# Property type name accepted from users -> (ovf:type written, is a password).  The written
# names are DSP0243's (section 9.5: uint8..sint64, real32/real64, string, boolean); "int",
# "real" and "password" are friendly aliases.  vSphere shows a password field for
# ovf:password="true" on a string property.
PROPERTY_TYPES: dict[str, tuple[str, bool]] = {
    "string": ("string", False),
    "password": ("string", True),
    "boolean": ("boolean", False),
    "int": ("sint32", False),
    "real": ("real64", False),
    "uint8": ("uint8", False), "sint8": ("sint8", False),
    "uint16": ("uint16", False), "sint16": ("sint16", False),
    "uint32": ("uint32", False), "sint32": ("sint32", False),
    "uint64": ("uint64", False), "sint64": ("sint64", False),
    "real32": ("real32", False), "real64": ("real64", False),
}
_INT_RANGES: dict[str, tuple[int, int]] = {
    "uint8": (0, 2**8 - 1), "sint8": (-2**7, 2**7 - 1),
    "uint16": (0, 2**16 - 1), "sint16": (-2**15, 2**15 - 1),
    "uint32": (0, 2**32 - 1), "sint32": (-2**31, 2**31 - 1),
    "uint64": (0, 2**64 - 1), "sint64": (-2**63, 2**63 - 1),
}

# OVF environment transports (DSP0243 11.1): VMware's guestinfo RPC channel and the ISO
# image (the latter needs a CD-ROM drive to carry it).
TRANSPORTS: tuple[str, ...] = ("com.vmware.guestInfo", "iso")

_MAX_U64 = 2**64 - 1
_MAX_CPUS = 768                 # vmx-20+ limit; older versions are lower but ESXi says so
_MAX_MEMORY_MIB = 24 * 1024 * 1024  # 24 TiB, the vmx-20+ limit
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}$")
_HEX32_RE = re.compile(r"^[0-9a-f]{32}$")
# Characters XML 1.0 cannot carry at all (lxml refuses them): C0 controls but tab/LF/CR,
# surrogates, U+FFFE/U+FFFF.
_NOT_XML_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_CONTROL_RE = re.compile("[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class GuestOs:
    """One guest OS: DMTF CIM_OperatingSystem.OsType value, VMware guest id, display text."""

    cim_id: int        # ovf:id of OperatingSystemSection (CIM_OperatingSystem OsType ValueMap)
    vmw_os_type: str   # vmw:osType (vim.vm.GuestOsDescriptor.GuestOsIdentifier)
    description: str


# CIM OsType values from the CIM_OperatingSystem ValueMap (checked against the table the GCE
# OVF importer and check_esxi carry: 1 Other, 36 LINUX, 78 FreeBSD 64-Bit, 80 RedHat
# Enterprise Linux 64-Bit, 85 SLES 64-Bit, 93 Ubuntu, 94 Ubuntu 64-Bit, 96 Debian 64-Bit,
# 101 Linux 64-Bit, 102 Other 64-Bit, 107 CentOS 64-bit, 109 Oracle Linux 64-bit,
# 117 Microsoft Windows Server 2016, 121 Microsoft Windows 10 64-bit) and with ovftool
# exports seen in the wild (debian10_64Guest -> 96, otherLinux64Guest -> 101,
# windows9_64Guest -> 121).  Distributions without a CIM value of their own take their
# family's (Rocky/Alma -> RHEL 80, Fedora -> Linux 64-Bit 101); Windows Server 2019/2022 and
# Windows 11 take the newest verified value of their line (117, 121) -- importers use the
# CIM id to pick a hardware profile, and vmw:osType carries the exact guest for VMware.
GUEST_OS: dict[str, GuestOs] = {
    "debian10-64": GuestOs(96, "debian10_64Guest", "Debian GNU/Linux 10 (64-bit)"),
    "debian11-64": GuestOs(96, "debian11_64Guest", "Debian GNU/Linux 11 (64-bit)"),
    "debian12-64": GuestOs(96, "debian12_64Guest", "Debian GNU/Linux 12 (64-bit)"),
    "ubuntu-64": GuestOs(94, "ubuntu64Guest", "Ubuntu Linux (64-bit)"),
    "ubuntu": GuestOs(93, "ubuntuGuest", "Ubuntu Linux (32-bit)"),
    "rhel7-64": GuestOs(80, "rhel7_64Guest", "Red Hat Enterprise Linux 7 (64-bit)"),
    "rhel8-64": GuestOs(80, "rhel8_64Guest", "Red Hat Enterprise Linux 8 (64-bit)"),
    "rhel9-64": GuestOs(80, "rhel9_64Guest", "Red Hat Enterprise Linux 9 (64-bit)"),
    "centos-64": GuestOs(107, "centos64Guest", "CentOS 4/5 or later (64-bit)"),
    "centos7-64": GuestOs(107, "centos7_64Guest", "CentOS 7 (64-bit)"),
    "centos8-64": GuestOs(107, "centos8_64Guest", "CentOS 8 (64-bit)"),
    "rockylinux-64": GuestOs(80, "rockylinux_64Guest", "Rocky Linux (64-bit)"),
    "almalinux-64": GuestOs(80, "almalinux_64Guest", "AlmaLinux (64-bit)"),
    "oraclelinux-64": GuestOs(109, "oracleLinux64Guest", "Oracle Linux (64-bit)"),
    "sles15-64": GuestOs(85, "sles15_64Guest", "SUSE Linux Enterprise 15 (64-bit)"),
    "fedora-64": GuestOs(101, "fedora64Guest", "Red Hat Fedora (64-bit)"),
    "other-linux-64": GuestOs(101, "otherLinux64Guest", "Other Linux (64-bit)"),
    "other-linux": GuestOs(36, "otherLinuxGuest", "Other Linux (32-bit)"),
    "other3xlinux-64": GuestOs(101, "other3xLinux64Guest", "Other 3.x Linux (64-bit)"),
    "other4xlinux-64": GuestOs(101, "other4xLinux64Guest", "Other 4.x Linux (64-bit)"),
    "other5xlinux-64": GuestOs(101, "other5xLinux64Guest", "Other 5.x or later Linux (64-bit)"),
    "other6xlinux-64": GuestOs(101, "other6xLinux64Guest", "Other 6.x or later Linux (64-bit)"),
    "freebsd-64": GuestOs(78, "freebsd64Guest", "FreeBSD (64-bit)"),
    "windows9-64": GuestOs(121, "windows9_64Guest", "Microsoft Windows 10 (64-bit)"),
    "windows11-64": GuestOs(121, "windows11_64Guest", "Microsoft Windows 11 (64-bit)"),
    "windows2016srv-64": GuestOs(117, "windows9Server64Guest", "Microsoft Windows Server 2016 (64-bit)"),
    "windows2019srv-64": GuestOs(117, "windows2019srv_64Guest", "Microsoft Windows Server 2019 (64-bit)"),
    "windows2022srv-64": GuestOs(117, "windows2019srvNext_64Guest", "Microsoft Windows Server 2022 (64-bit)"),
    "other-64": GuestOs(102, "otherGuest64", "Other (64-bit)"),
    "other": GuestOs(1, "otherGuest", "Other (32-bit)"),
}


def _allowed(values: object) -> str:
    return ", ".join(str(v) for v in values)  # type: ignore[attr-defined]


def _fail(field_name: str, value: object, allowed: str) -> UsageError:
    return UsageError("%s: %r is not allowed (%s)" % (field_name, value, allowed))


def _check_int(field_name: str, value: object, lo: int, hi: int) -> None:
    # bool is an int subclass; True as a CPU count is a spec typo, not a number.
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise _fail(field_name, value, "an integer from %d to %d" % (lo, hi))


def _check_text(field_name: str, value: object, *, single_line: bool = False,
                max_len: int = 1 << 20, empty_ok: bool = True) -> None:
    if not isinstance(value, str):
        raise _fail(field_name, value, "a string")
    if not empty_ok and not value.strip():
        raise _fail(field_name, value, "a non-empty string")
    if len(value) > max_len:
        raise _fail(field_name, value[:40] + "...", "at most %d characters" % max_len)
    bad = (_CONTROL_RE if single_line else _NOT_XML_RE).search(value)
    if bad:
        raise _fail(field_name, value, "text without the control character %r" % bad.group())


def _check_choice(field_name: str, value: object, choices: object) -> None:
    if not isinstance(value, str) or value not in choices:  # type: ignore[operator]
        raise _fail(field_name, value, "one of: " + _allowed(choices))


@dataclass(frozen=True, kw_only=True)
class Nic:
    """One virtual Ethernet adapter connected to a named network."""

    network: str = "VM Network"
    adapter: Adapter = "e1000"

    def __post_init__(self) -> None:
        _check_text("nic.network", self.network, single_line=True, max_len=255, empty_ok=False)
        _check_choice("nic.type", self.adapter, NIC_ADAPTERS)


@dataclass(frozen=True, kw_only=True)
class Property:
    """A ProductSection property (reaches the guest through the OVF environment)."""

    key: str
    type: str = "string"
    default: str = ""
    user_configurable: bool = True
    label: str = ""
    description: str = ""
    qualifiers: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.key, str) or not _KEY_RE.match(self.key):
            raise _fail("property.key", self.key,
                        "letters, digits, '_', '.', '-', starting with a letter, digit or '_'")
        _check_choice("property.type", self.type, PROPERTY_TYPES)
        _check_text("property.default", self.default)
        if not isinstance(self.user_configurable, bool):
            raise _fail("property.user_configurable", self.user_configurable, "true or false")
        _check_text("property.label", self.label, single_line=True, max_len=1024)
        _check_text("property.description", self.description)
        _check_text("property.qualifiers", self.qualifiers, single_line=True)
        ovf_type = self.ovf_type
        if self.default == "":
            return
        if ovf_type == "boolean" and self.default not in ("true", "false"):
            raise _fail("property.default", self.default, "true or false for a boolean property")
        if ovf_type in _INT_RANGES:
            lo, hi = _INT_RANGES[ovf_type]
            try:
                number = int(self.default, 10)
            except ValueError:
                number = None
            if number is None or not lo <= number <= hi:
                raise _fail("property.default", self.default,
                            "an integer from %d to %d for type %s" % (lo, hi, self.type))
        if ovf_type in ("real32", "real64"):
            try:
                float(self.default)
            except ValueError:
                raise _fail("property.default", self.default,
                            "a decimal number for type %s" % self.type) from None

    @property
    def ovf_type(self) -> str:
        return PROPERTY_TYPES[self.type][0]

    @property
    def password(self) -> bool:
        return PROPERTY_TYPES[self.type][1]


@dataclass(frozen=True, kw_only=True)
class Product:
    """ProductSection: what the appliance is, and its deploy-time properties."""

    product: str = ""
    vendor: str = ""
    version: str = ""
    full_version: str = ""
    product_url: str = ""
    vendor_url: str = ""
    properties: tuple[Property, ...] = ()
    transport: str | None = "com.vmware.guestInfo"

    def __post_init__(self) -> None:
        for name in ("product", "vendor", "version", "full_version", "product_url", "vendor_url"):
            _check_text("product." + name, getattr(self, name), single_line=True, max_len=4096)
        if not isinstance(self.properties, tuple) or not all(
                isinstance(p, Property) for p in self.properties):
            raise _fail("product.properties", self.properties, "a tuple of Property")
        seen: set[str] = set()
        for prop in self.properties:
            if prop.key in seen:
                raise _fail("product.properties.key", prop.key, "each key once")
            seen.add(prop.key)
        if self.transport is not None:
            tokens = self.transport.split(",") if isinstance(self.transport, str) else [None]
            for token in tokens:
                if token not in TRANSPORTS:
                    raise _fail("product.transport", self.transport,
                                "none, or a comma-separated list of: " + _allowed(TRANSPORTS))

    @property
    def transports(self) -> tuple[str, ...]:
        return tuple(self.transport.split(",")) if self.transport else ()


# Where a carried element goes: an Envelope section (before the VirtualSystem; ``Strings``
# after it), a VirtualSystem section (after the modeled ones), or a VirtualHardwareSection
# extension element (after the Items).
CARRIED_PLACES: tuple[str, ...] = ("envelope", "system", "hardware")


@dataclass(frozen=True)
class CarriedSection:
    """A descriptor element ovfstream does not model, carried over as written (repack):
    ProductSection with its properties, EulaSection, AnnotationSection, vendor sections,
    vmw:Config extensions.  ``xml`` is the element serialized with its namespace
    declarations; the writer moves it into the envelope namespace it writes (OVF 1 <-> 2)."""

    place: str
    kind: str             # local name, for messages ("ProductSection")
    xml: bytes

    def __post_init__(self) -> None:
        _check_choice("carried.place", self.place, CARRIED_PLACES)
        if not isinstance(self.xml, bytes) or not self.xml.startswith(b"<"):
            raise _fail("carried.xml", self.xml[:40], "one serialized XML element")


@dataclass(frozen=True, kw_only=True)
class DiskSlot:
    """Where a disk is attached: controller kind and, for SCSI, the controller model."""

    controller: Controller = "scsi"
    scsi_type: ScsiType = "lsilogic"

    def __post_init__(self) -> None:
        _check_choice("controller", self.controller, CONTROLLERS)
        _check_choice("scsi_type", self.scsi_type, SCSI_TYPES)

    def min_hw_version(self) -> int:
        if self.controller == "scsi":
            return SCSI_TYPES[self.scsi_type][1]
        return CONTROLLER_MIN_HW[self.controller]

    def check_hw(self, hw_version: int, field_name: str = "controller") -> None:
        need = self.min_hw_version()
        if hw_version < need:
            what = self.scsi_type if self.controller == "scsi" else self.controller
            raise UsageError("%s: %r needs hw_version %d or newer (vmx-%02d), got %d"
                             % (field_name, what, need, need, hw_version))


@dataclass(frozen=True, kw_only=True)
class VirtualMachine:
    """Everything the descriptor says about the VM except the disks' sizes.

    ``disk_slots[i]`` places disk i; disks beyond that tuple use ``default_slot``.
    """

    name: str
    annotation: str = ""
    cpus: int = 1
    cores_per_socket: int = 1
    memory_mib: int = 1024
    os: str = "other-linux-64"
    firmware: Firmware = "bios"
    secure_boot: bool = False
    disk_slots: tuple[DiskSlot, ...] = ()
    default_slot: DiskSlot = field(default_factory=DiskSlot)
    nics: tuple[Nic, ...] = (Nic(),)
    cdrom: bool = False
    hw_version: int = 14
    product: Product | None = None
    eula: str | None = None
    # Target dialect (ovf/targets.py): VirtualSystemType written instead of "vmx-NN"
    # (VirtualBox's "virtualbox-2.2"), and how SATA controllers are spelled.
    system_type: str | None = None
    sata_subtype: str = "vmware.sata.ahci"
    # Carried over from a package being repacked (above); ``hardware_transport`` is the
    # VirtualHardwareSection's ovf:transport when no modeled Product gives one.
    carried: tuple[CarriedSection, ...] = ()
    hardware_transport: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise UsageError for the first field that is out of range or inconsistent."""
        # VMware caps display names at 80 characters; the name is also the VirtualSystem id.
        _check_text("name", self.name, single_line=True, max_len=80, empty_ok=False)
        _check_text("annotation", self.annotation)
        _check_int("hw_version", self.hw_version, HW_VERSION_MIN, HW_VERSION_MAX)
        _check_int("cpus", self.cpus, 1, _MAX_CPUS)
        _check_int("cores_per_socket", self.cores_per_socket, 1, _MAX_CPUS)
        if self.cpus % self.cores_per_socket:
            raise _fail("cores_per_socket", self.cores_per_socket,
                        "a divisor of cpus (%d)" % self.cpus)
        _check_int("memory", self.memory_mib, 4, _MAX_MEMORY_MIB)
        if self.memory_mib % 4:
            # ESXi refuses memory sizes that are not a multiple of 4 MiB.
            raise _fail("memory", self.memory_mib, "a multiple of 4 MiB")
        _check_choice("os", self.os, GUEST_OS)
        _check_choice("firmware", self.firmware, FIRMWARES)
        if self.firmware == "efi" and self.hw_version < EFI_MIN_HW:
            raise UsageError("firmware: 'efi' needs hw_version %d or newer, got %d"
                             % (EFI_MIN_HW, self.hw_version))
        if not isinstance(self.secure_boot, bool):
            raise _fail("secure_boot", self.secure_boot, "true or false")
        if self.secure_boot and self.firmware != "efi":
            raise _fail("secure_boot", True, "only with firmware 'efi'")
        if self.secure_boot and self.hw_version < SECURE_BOOT_MIN_HW:
            raise UsageError("secure_boot: needs hw_version %d or newer, got %d"
                             % (SECURE_BOOT_MIN_HW, self.hw_version))
        if not isinstance(self.disk_slots, tuple) or not all(
                isinstance(s, DiskSlot) for s in self.disk_slots):
            raise _fail("disk_slots", self.disk_slots, "a tuple of DiskSlot")
        if not isinstance(self.default_slot, DiskSlot):
            raise _fail("controller", self.default_slot, "a DiskSlot")
        self.default_slot.check_hw(self.hw_version)
        for i, slot in enumerate(self.disk_slots):
            slot.check_hw(self.hw_version, "disk_slots[%d]" % i)
        if not isinstance(self.nics, tuple) or not all(isinstance(n, Nic) for n in self.nics):
            raise _fail("nics", self.nics, "a tuple of Nic")
        if len(self.nics) > 10:
            raise _fail("nics", len(self.nics), "at most 10 adapters")
        for i, nic in enumerate(self.nics):
            need = NIC_ADAPTERS[nic.adapter][1]
            if self.hw_version < need:
                raise UsageError("nics[%d].type: %r needs hw_version %d or newer, got %d"
                                 % (i, nic.adapter, need, self.hw_version))
        if not isinstance(self.cdrom, bool):
            raise _fail("cdrom", self.cdrom, "true or false")
        if self.product is not None:
            if not isinstance(self.product, Product):
                raise _fail("product", self.product, "a Product or None")
            if "iso" in self.product.transports and not self.cdrom:
                raise _fail("product.transport", self.product.transport,
                            "'iso' only with cdrom = true (the ISO needs a drive)")
        if self.eula is not None:
            _check_text("eula", self.eula, empty_ok=False)
        if self.system_type is not None and (
                not isinstance(self.system_type, str) or not _SYSTEM_TYPE_RE.match(self.system_type)):
            raise _fail("system_type", self.system_type,
                        "None or 1-64 letters, digits, '.', '_', '-', spaces")
        _check_choice("sata_subtype", self.sata_subtype, SATA_SUBTYPES)
        if not isinstance(self.carried, tuple) or not all(
                isinstance(c, CarriedSection) for c in self.carried):
            raise _fail("carried", self.carried, "a tuple of CarriedSection")
        if self.hardware_transport is not None:
            _check_text("hardware_transport", self.hardware_transport, single_line=True,
                        max_len=1024, empty_ok=False)

    @property
    def guest(self) -> GuestOs:
        return GUEST_OS[self.os]

    def slot_for(self, index: int) -> DiskSlot:
        """The slot of disk number ``index`` (0 = boot disk)."""
        return self.disk_slots[index] if index < len(self.disk_slots) else self.default_slot


@dataclass(frozen=True, kw_only=True)
class DiskEntry:
    """What the packer hands the writer for one packed disk (all sizes in bytes)."""

    file_id: str          # References/File ovf:id and Disk ovf:fileRef
    href: str             # File ovf:href: the OVA member / file name beside the .ovf
    file_size_bytes: int  # File ovf:size: exact size of the .vmdk
    capacity_bytes: int   # virtual disk size
    populated_bytes: int  # Disk ovf:populatedSize: bytes of non-zero grains
    disk_id: str          # Disk ovf:diskId, referenced as ovf:/disk/<diskId>
    content_id_hex: str   # xxh3-128 of the disk content, 32 lowercase hex
    slot: DiskSlot = field(default_factory=DiskSlot)

    def __post_init__(self) -> None:
        for name in ("file_id", "disk_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _ID_RE.match(value):
                raise _fail(name, value, "1-100 of letters, digits, '.', '_', '-'")
        href = self.href
        # The href is also an OVA member name: ustar's 100-byte name field, no folders.
        if (not isinstance(href, str) or not href or not href.isascii() or "/" in href
                or "\\" in href or href in (".", "..") or len(href) > 100
                or _CONTROL_RE.search(href)):
            raise _fail("href", href, "a plain ASCII file name of at most 100 bytes")
        _check_int("file_size_bytes", self.file_size_bytes, 0, _MAX_U64)
        _check_int("capacity_bytes", self.capacity_bytes, 1, _MAX_U64)
        _check_int("populated_bytes", self.populated_bytes, 0, self.capacity_bytes)
        if not isinstance(self.content_id_hex, str) or not _HEX32_RE.match(self.content_id_hex):
            raise _fail("content_id_hex", self.content_id_hex, "32 lowercase hex digits")
        if not isinstance(self.slot, DiskSlot):
            raise _fail("slot", self.slot, "a DiskSlot")
