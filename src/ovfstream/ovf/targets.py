"""Target profiles: what each import destination reads, as one table of presets.

``pack --target NAME`` takes OVF version, manifest digest, virtual hardware family, disk
controller, NIC type, firmware handling, default guest OS id and what to leave out from the
preset of that name; ``verify --target NAME`` lints an existing package against the same
knowledge.  Every value carries a one-line reason and its source: the consumer's own import
code where it is open source (Proxmox pve-storage, virt-v2v, oVirt engine, VirtualBox
ovfreader.cpp, Xen Orchestra ova-read.js, Google compute-image-tools), else vendor
documentation or a public issue that quotes the consumer's error.

Rules of the table:

* The preset's values never violate its own :class:`Limit` s (a test checks it), so every
  conflict comes from an explicit flag or spec key, which wins over the preset unless the
  target cannot honour it: a ``Limit`` of severity ``error`` makes that a UsageError naming
  the option and the target (and, in ``verify``, an error finding); ``warning`` is for what
  the target ignores or what only part of its versions refuse.
* ``generic`` is the widest common denominator and reproduces ``pack`` without ``--target``
  byte for byte; its limits are warnings about the consumers that would not honour a flag.
* What a preset is told nothing about stays the project default (FORMATS 5.1: OVF 1.0
  elements in the default namespace, memory in ``byte * 2^20``, exact capacities with units,
  vendor extensions ``ovf:required="false"``, no ExtraConfig, BootOrderSection, nvram or
  compression, the boot disk first).

Nothing here reads files or prints; the lint works on a parsed descriptor plus what the
caller (verify.py) knows about the manifest and the members.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from lxml import etree

from ..errors import Finding, UsageError, location
from .namespaces import (
    CONTROLLER_RTS,
    NS_OVF1,
    NS_OVF2,
    NS_OVF09,
    NS_VMW,
    RT_CDROM,
    RT_CPU,
    RT_DISK,
    RT_ETHERNET,
    RT_FLOPPY,
    RT_IDE,
    RT_MEMORY,
    RT_OTHER_STORAGE,
    RT_SCSI,
    RT_SOUND,
    RT_USB,
)
from .model import GUEST_OS, NIC_ADAPTERS, SCSI_TYPES, DiskSlot, Nic, VirtualMachine

__all__ = ["Setting", "Limit", "Target", "TARGETS", "RULES", "get_target", "target_names",
           "table", "check_pack", "explain", "LintInput", "lint"]

Severity = Literal["error", "warning"]


RULES: dict[str, str] = {
    "target.ovf_version": "verify --target: the envelope's OVF version is one the target does "
                          "not read (Proxmox and virt-v2v register only envelope/1)",
    "target.digest": "verify --target: the manifest's algorithm or line form is one the target "
                     "rejects or skips (vSphere C# client SHA1 only; vCenter 'Invalid OVF "
                     "checksum algorithm'; virt-v2v skips SHA512)",
    "target.hw_version": "verify --target: VirtualSystemType names no hardware family the "
                         "target supports ('Unsupported hardware family', 'No supported "
                         "hardware versions among')",
    "target.controller": "verify --target: a disk controller type, subtype, count or parent "
                         "link the target refuses or maps to something that does not boot",
    "target.nic": "verify --target: a NIC type the target does not map, or a NIC it drops",
    "target.units": "verify --target: memory or capacity allocation units the target rejects "
                    "or misreads (VirtualBox's exact list, GCE and XO need them, virt-v2v and "
                    "Proxmox ignore them)",
    "target.firmware": "verify --target: firmware or secure boot the target ignores or cannot "
                       "set (VirtualBox, XO ignore vmw:Config firmware; virt-v2v wants exactly "
                       "bios or efi)",
    "target.names": "verify --target: a VM name, id, href, diskId or HostResource the target "
                    "cannot read (oVirt needs VirtualSystem ovf:id; Proxmox's character sets)",
    "target.order": "verify --target: members or disks in an order the target cannot read "
                    "(VirtualBox streams disks in tar order; GCE boots the first disk it sorts)",
    "target.limits": "verify --target: more disks or bytes than the target imports (AWS: 21 "
                     "volumes; ESXi 6.0 host client: 1 GB)",
    "target.compression": "verify --target: compressed files the target refuses",
    "target.item": "verify --target: an Item or vendor element the target refuses unless it is "
                   "ovf:required=\"false\" (VirtualBox 'Unknown resource type'), or ExtraConfig",
    "target.os": "verify --target: a guest OS id the target cannot map (no vmw:osType)",
    "target.ignored": "verify --target: a part of the package the target ignores (CD-ROM, "
                      "properties, secure boot...) (warning)",
}


@dataclass(frozen=True)
class Setting:
    """One preset value: what it is, why, and where that is known from."""

    value: Any
    reason: str
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {"value": self.value, "reason": self.reason, "source": self.source}


@dataclass(frozen=True)
class Limit:
    """A value the target cannot honour (error) or ignores / only partly honours (warning).

    ``field``/``values`` name what triggers it, in the tokens both pack and verify derive:
    ``ovf_version`` 1.0|2.0, ``digest`` sha1|sha256|sha512, ``controller`` scsi:MODEL|sata|
    nvme|ide, ``nic`` vmxnet3|e1000|e1000e, ``firmware`` efi, ``secure_boot`` true, ``cdrom``
    true, ``properties`` true.  ``when`` adds a second token that must also be present.
    ``says`` is the consumer's own wording where it is known (quoted), else what happens.
    """

    rule: str
    field: str
    values: tuple[str, ...]
    severity: Severity
    says: str
    source: str
    when: tuple[str, str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "field": self.field, "values": list(self.values),
                "when": list(self.when) if self.when else None, "severity": self.severity,
                "says": self.says, "source": self.source}


@dataclass(frozen=True)
class Target:
    name: str
    title: str
    ovf_version: Setting          # "1.0"
    digest: Setting               # "sha256" | "sha1"
    hw_version: Setting           # int: vmx-NN (feature floors; what VMware reads)
    system_type: Setting          # VirtualSystemType text
    controller: Setting           # "scsi:pvscsi", "sata"...
    nic: Setting                  # "vmxnet3" | "e1000"
    firmware: Setting             # how bios/efi/secure boot are expressed and honoured
    os: Setting                   # default guest (key of GUEST_OS) and how the id is read
    leave_out: Setting            # what is not written for this target
    windows: Setting | None = None    # {"controller":..., "nic":...} for Windows guests
    hw_max: int | None = None     # newest vmx-NN the oldest release of the target knows
    hw_families: frozenset[int] | None = None  # vmx-NN values the target knows at all
    hw_since: Mapping[int, str] = field(default_factory=dict)  # vmx-NN -> release needing it
    max_disks: int | None = None
    limits: tuple[Limit, ...] = ()
    lint: tuple[str, ...] = ()    # descriptor checks of verify --target (see _LINTS)
    hint: str = ""                # printed after pack: how to import

    # -- values ----------------------------------------------------------------------------
    def slot(self, os_key: str | None) -> DiskSlot:
        text = self._for_guest("controller", os_key)
        controller, _, scsi_type = text.partition(":")
        return DiskSlot(controller=controller, scsi_type=scsi_type or "lsilogic")  # type: ignore[arg-type]

    def nic_type(self, os_key: str | None) -> str:
        return self._for_guest("nic", os_key)

    def _for_guest(self, what: str, os_key: str | None) -> str:
        if self.windows is not None and os_key is not None and os_key.startswith("windows"):
            return str(self.windows.value[what])
        return str(getattr(self, what).value)

    def settings(self) -> dict[str, Setting]:
        names = ("ovf_version", "digest", "hw_version", "system_type", "controller", "nic",
                 "firmware", "os", "leave_out", "windows")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title,
                "settings": {k: s.as_dict() for k, s in self.settings().items()},
                "hw_max": self.hw_max, "max_disks": self.max_disks,
                "limits": [lim.as_dict() for lim in self.limits],
                "lint": [{"check": name, "rule": _LINTS[name][0], "what": _LINTS[name][1]}
                         for name in self.lint],
                "hint": self.hint}


# ---------------------------------------------------------------------------------------------
# Sources quoted more than once

_SRC_NS = ("proxmox/pve-storage:src/PVE/GuestImport/OVF.pm registerNs('ovf', …/envelope/1); "
           "libguestfs/virt-v2v:input/OVF.ml xpathctx_of_ovf; BlackArch/blackarch#1937")
_SRC_VMX = ("Broadcom vSphere Automation API Vm_Hardware_Upgrade_RequestBody; "
            "vmware/govmomi:vim25/types/hardware_version.go")
_SRC_HA = "home-assistant/operating-system#826, #1674, #3654"
_SRC_VBOX = "VirtualBox/virtualbox:src/VBox/Main/xml/ovfreader.cpp"
_SRC_PVE = "proxmox/pve-storage:src/PVE/GuestImport/OVF.pm"
_SRC_V2V = "libguestfs/virt-v2v:input/OVF.ml, input/OVA.ml, input/input_ova.ml"
_SRC_XO = "vatesfr/xen-orchestra:packages/xo-vmdk-to-vhd/src/ova-read.js"
_SRC_GCE = "GoogleCloudPlatform/compute-image-tools:cli_tools/gce_ovf_import/ovf_utils/ovf_utils.go"
_SRC_OPENVMDK = "vmware/open-vmdk:templates/template-hw21.ovf, ova-compose/ova-compose.py"

# ESXi release that first runs each VMware hardware family (vmx-12 and vmx-16 are
# Workstation-only families ESXi never ran).
_ESXI = {4: "3.5", 7: "4.0", 8: "5.0", 9: "5.1", 10: "5.5", 11: "6.0", 13: "6.5", 14: "6.7",
         15: "6.7 U2", 17: "7.0", 18: "7.0 U1", 19: "7.0 U2", 20: "8.0", 21: "8.0 U2"}
_ESXI_FAMILIES = frozenset(_ESXI)

_OS_VMWARE = ("OperatingSystemSection ovf:id (CIM) + vmw:osType; an unknown vmw:osType stops "
              "the import ('The guest operating system ... is not supported'), a missing one is "
              "mapped from the CIM id with a warning")
_OS_SRC_VMWARE = "EMCECS/ECS-CommunityEdition#555; Banno/packer-post-processor-vsphere-ova#9"
_LEAVE_OUT_COMMON = ("no ExtraConfig, vmw:BootOrderSection, nvram file or ovf:compression; "
                     "vendor Items and vmw:Config ovf:required=\"false\"")
_LEAVE_OUT_SRC = ("josenk/terraform-provider-esxi#102; kubernetes-sigs/image-builder#619; "
                  "vmware/pyvmomi-community-samples#540; EMCECS/ECS-CommunityEdition#329; "
                  "sexibytes/sexigraf#240")

# Limits shared by several presets ------------------------------------------------------------
_L_OVF2_VMWARE = Limit(
    "target.ovf_version", "ovf_version", ("2.0",), "warning",
    "VMware rejects OVF-2.0-only elements (\"Unsupported element 'StorageItem'\"); an "
    "envelope/2 with classic Items is not known to be read", "BlackArch/blackarch#1937")
_L_PVSCSI_WS = Limit(
    "target.controller", "controller", ("scsi:pvscsi",), "error",
    "\"VMware Workstation supports the pvscsi controller natively; it just won't import an OVA "
    "that uses it\"", "coreos/scripts#817")
_L_SHA512_VCENTER = Limit(
    "target.digest", "digest", ("sha512",), "warning",
    "ovftool offers SHA512, but vCenter's acceptance of it is not evidenced; SHA256 is",
    "vmware/open-vmdk:README.md (--checksum-type); williamlam.com 2016/11")
_L_COMPRESSED = ("\"OVF package with compressed disks is currently not supported for OVF "
                 "import\"", "EMCECS/ECS-CommunityEdition#329")


def _ignored(field_name: str, value: str, says: str, source: str) -> Limit:
    return Limit("target.ignored" if field_name in ("cdrom", "properties") else "target.firmware",
                 field_name, (value,), "warning", says, source)


_VMWARE_LINT = ("vmware_family", "vmware_controllers", "vmware_nics", "vmware_items",
                "vmware_os", "vmware_firmware", "no_compression")


def _vsphere_firmware(hw_note: str) -> Setting:
    return Setting(
        "vmw:Config firmware=efi when --firmware efi (BIOS: nothing); "
        "bootOptions.efiSecureBootEnabled=true with --secure-boot" + hw_note,
        "the keys VMware's own exports and templates carry; BootOrderSection made vSphere "
        "deploy EFI VMs as BIOS",
        _SRC_OPENVMDK + "; kubernetes-sigs/image-builder#619")


TARGETS: dict[str, Target] = {}


def _add(target: Target) -> None:
    TARGETS[target.name] = target


_add(Target(
    name="generic",
    title="widest common denominator (the default: pack without --target)",
    ovf_version=Setting("1.0", "Proxmox and virt-v2v read only envelope/1; VMware rejects "
                        "OVF-2.0-only elements", _SRC_NS),
    digest=Setting("sha256", "canonical SHA256(name)= hex is read by vCenter 6.5+, "
                   "Workstation, VirtualBox, virt-v2v; Proxmox and XO ignore the manifest; "
                   "what vCenter refuses is a malformed token, not SHA256", _SRC_HA),
    hw_version=Setting(14, "vmx-14 (ESXi 6.7+): HA's vmx-10 was refused as 'Unsupported "
                       "hardware family' on newer VMware; non-VMware importers ignore it",
                       "home-assistant/operating-system#3163; " + _SRC_VMX),
    system_type=Setting("vmx-14", "VMware's family name; VirtualBox, Proxmox, virt-v2v, XO "
                        "and GCE ignore it", _SRC_VBOX + "; " + _SRC_PVE),
    controller=Setting("scsi:lsilogic", "the one SCSI model every importer maps: VMware, "
                       "VirtualBox (LsiLogic), Proxmox (scsiN), virt-v2v, XO, GCE",
                       "home-assistant/operating-system#1674; " + _SRC_VBOX),
    nic=Setting("e1000", "VirtualBox does not map VmxNet3; Proxmox maps e1000, e1000e, "
                "vmxnet3; virt-v2v recognises E1000 by name", _SRC_VBOX + "; " + _SRC_PVE),
    firmware=Setting("vmw:Config firmware=efi when --firmware efi; read by VMware, Proxmox "
                     "(bios=ovmf) and virt-v2v; VirtualBox and XO ignore it",
                     "the only firmware key more than one importer reads",
                     _SRC_OPENVMDK + "; " + _SRC_PVE + "; " + _SRC_V2V),
    os=Setting("other-linux-64", "CIM 101 'Linux 64-Bit' + otherLinux64Guest: known to every "
               "ESXi and mapped by Proxmox (l26), oVirt (Other Linux)",
               _SRC_PVE + "; oVirt/ovirt-engine OvfOvaReader.java"),
    leave_out=Setting(_LEAVE_OUT_COMMON, "what some importer refuses", _LEAVE_OUT_SRC),
    limits=(
        Limit("target.ovf_version", "ovf_version", ("2.0", "0.9"), "warning",
              "Proxmox and virt-v2v (oVirt) read only envelope/1: no name, CPUs or disks",
              _SRC_NS),
        Limit("target.digest", "digest", ("sha512",), "warning",
              "virt-v2v skips SHA512 lines (\"unable to parse line from manifest file\")",
              _SRC_V2V),
        Limit("target.controller", "controller", ("scsi:pvscsi",), "warning",
              "Workstation will not import pvscsi; VirtualBox makes it LsiLogic",
              "coreos/scripts#817; " + _SRC_VBOX),
        Limit("target.controller", "controller", ("nvme",), "warning",
              "Proxmox attaches NVMe disks as SATA; older VirtualBox releases refuse it",
              _SRC_PVE + "; " + _SRC_VBOX),
        Limit("target.nic", "nic", ("vmxnet3",), "warning",
              "VirtualBox does not map VmxNet3 (the guest gets the OS type's default adapter)",
              _SRC_VBOX),
        Limit("target.firmware", "firmware", ("efi",), "warning",
              "VirtualBox and Xen Orchestra ignore vmw:Config firmware=efi and boot BIOS",
              _SRC_VBOX + "; vatesfr/xen-orchestra#8162"),
    ),
    lint=("memory_units_mib", "units_present", "vs_names", "no_compression"),
))

_add(Target(
    name="vsphere8",
    title="VMware vSphere 8 (vCenter / ESXi 8.0 and later)",
    ovf_version=Setting("1.0", "every VMware template is OVF 1.0; 2.0-only elements are "
                        "rejected", _SRC_OPENVMDK + "; BlackArch/blackarch#1937"),
    digest=Setting("sha256", "ovftool 4.2+ default; vCenter 8 rejects only malformed tokens "
                   "(\"Invalid OVF checksum algorithm: SHA1 .\")",
                   "nextcloud/vm#2607; " + _SRC_HA + "; williamlam.com 2016/11"),
    hw_version=Setting(20, "vmx-20 runs on every ESXi 8.0; vmx-21 needs 8.0 U2", _SRC_VMX),
    system_type=Setting("vmx-20", "VMware hardware family", _SRC_VMX),
    controller=Setting("scsi:pvscsi", "VirtualSCSI (PVSCSI), open-vmdk's default; Linux has "
                       "vmw_pvscsi in-kernel", _SRC_OPENVMDK),
    nic=Setting("vmxnet3", "open-vmdk's default; in-kernel on Linux", _SRC_OPENVMDK),
    windows=Setting({"controller": "scsi:lsilogicsas", "nic": "e1000"},
                    "[inference] Windows has no in-box PVSCSI/VMXNET3 driver: a vSphere export "
                    "of a Windows guest uses lsilogicsas + E1000",
                    "libguestfs/virt-v2v:tests/test-i-ova-two-disks.ovf"),
    firmware=_vsphere_firmware("; EFI needs vmx-8+, secure boot vmx-13+"),
    os=Setting("other4xlinux-64", "other4xLinux64Guest, open-vmdk's default guest id; "
               + _OS_VMWARE, _SRC_OPENVMDK + "; " + _OS_SRC_VMWARE),
    leave_out=Setting(_LEAVE_OUT_COMMON, "ExtraConfig is filtered or refused by ovftool; "
                      "BootOrderSection and nvram broke EFI deploys", _LEAVE_OUT_SRC),
    hw_max=21, hw_families=_ESXI_FAMILIES, hw_since={21: "ESXi 8.0 U2"},
    limits=(_L_OVF2_VMWARE, _L_SHA512_VCENTER),
    lint=_VMWARE_LINT + ("vmware_manifest",),
    hint="deploy: vSphere Client > Deploy OVF Template > NAME.ova, or govc import.ova NAME.ova",
))

_add(Target(
    name="vsphere7",
    title="VMware vSphere 7 (vCenter / ESXi 7.0 and later)",
    ovf_version=TARGETS["vsphere8"].ovf_version,
    digest=Setting("sha256", "ovftool 4.2+ default; vCenter 7 rejects only malformed tokens "
                   "(\"Invalid OVF checksum algorithm: SHA256 .\")", _SRC_HA),
    hw_version=Setting(17, "vmx-17 runs on every ESXi 7.0 (Fedora CoreOS chose it as 'oldest "
                       "supported ESXi 7.0'); vmx-19 needs 7.0 U2",
                       _SRC_VMX + "; coreos/fedora-coreos-tracker#1119"),
    system_type=Setting("vmx-17", "VMware hardware family", _SRC_VMX),
    controller=TARGETS["vsphere8"].controller,
    nic=TARGETS["vsphere8"].nic,
    windows=TARGETS["vsphere8"].windows,
    firmware=_vsphere_firmware("; EFI needs vmx-8+, secure boot vmx-13+"),
    os=TARGETS["vsphere8"].os,
    leave_out=TARGETS["vsphere8"].leave_out,
    hw_max=19, hw_families=_ESXI_FAMILIES,
    hw_since={18: "ESXi 7.0 U1", 19: "ESXi 7.0 U2"},
    limits=(_L_OVF2_VMWARE, _L_SHA512_VCENTER),
    lint=_VMWARE_LINT + ("vmware_manifest",),
    hint="deploy: vSphere Client > Deploy OVF Template > NAME.ova, or govc import.ova NAME.ova",
))

_add(Target(
    name="vsphere6",
    title="VMware vSphere 6.x (ESXi 6.0 / 6.5 / 6.7, incl. the C# client)",
    ovf_version=TARGETS["vsphere8"].ovf_version,
    digest=Setting("sha1", "the vSphere C# client and PowerCLI accept SHA1 only (\"The following "
                   "manifest file entry (line 1) is invalid: SHA256\"); ESXi 6.0 lacks SHA256",
                   "williamlam.com 2016/11; heelpbook.net 2019; sonicwall KB 180411180839044"),
    hw_version=Setting(11, "vmx-11 runs on ESXi 6.0, 6.5 and 6.7; secure boot and NVMe need "
                       "vmx-13 (drops 6.0)", _SRC_VMX + "; nextcloud/vm#556"),
    system_type=Setting("vmx-11", "VMware hardware family", _SRC_VMX),
    controller=Setting("scsi:lsilogic", "LSI Logic: every 6.x host and guest has it", _SRC_HA),
    nic=Setting("vmxnet3", "VMXNET3 exists from vmx-7", "VMware vSphere 6.7 VM compatibility "
                "table (GUID-789C3913)"),
    windows=Setting({"controller": "scsi:lsilogicsas", "nic": "e1000"},
                    TARGETS["vsphere8"].windows.reason,  # type: ignore[union-attr]
                    TARGETS["vsphere8"].windows.source),  # type: ignore[union-attr]
    firmware=_vsphere_firmware("; secure boot needs --hw-version 13 (ESXi 6.5+)"),
    os=Setting("other3xlinux-64", "[inference] other3xLinux64Guest: a guest id ESXi 6.x "
               "knows (the 4.x/5.x ids are newer); " + _OS_VMWARE,
               "Broadcom GuestOsIdentifier ('Since'); " + _OS_SRC_VMWARE),
    leave_out=TARGETS["vsphere8"].leave_out,
    hw_max=15, hw_families=_ESXI_FAMILIES,
    hw_since={13: "ESXi 6.5 (drops 6.0)", 14: "ESXi 6.7", 15: "ESXi 6.7 U2"},
    limits=(
        Limit("target.digest", "digest", ("sha256", "sha512"), "warning",
              "the C# client, PowerCLI Get-OvfConfiguration and ESXi 6.0 refuse it (\"The "
              "following manifest file entry (line 1) is invalid: SHA256\"); the 6.5/6.7 web "
              "client accepts SHA256", "williamlam.com 2016/11; heelpbook.net 2019"),
        _L_OVF2_VMWARE,
    ),
    lint=_VMWARE_LINT + ("vmware_manifest", "size_1gb"),
    hint="deploy: vSphere (Web) Client > Deploy OVF Template > NAME.ova, or ovftool NAME.ova "
         "vi://...",
))

_add(Target(
    name="workstation",
    title="VMware Workstation / Fusion / Player",
    ovf_version=Setting("1.0", "Fusion: 'Only OVF 1.0 and later'; 2.0 items fail ('Unsupported "
                        "element StorageItem')", "VMware Fusion 8 docs; BlackArch/blackarch#1937"),
    digest=Setting("sha256", "Player 12.5.5 imports SHA256 OVAs", "turnkeylinux/tracker#827"),
    hw_version=Setting(17, "vmx-17 boot-tested on Workstation 16.2.4 (use --hw-version 14 for "
                       "older releases)", "coreos/fedora-coreos-config#2019"),
    system_type=Setting("vmx-17", "VMware hardware family", _SRC_VMX),
    controller=Setting("scsi:lsilogic", "never pvscsi in an OVA (Workstation refuses it); LSI "
                       "Logic works", "coreos/scripts#817; " + _SRC_HA),
    nic=Setting("vmxnet3", "Linux guests: VMXNET3 (in-kernel driver)",
                "home-assistant/operating-system:buildroot-external/board/pc/ova/home-assistant.ovf"),
    windows=Setting({"controller": "scsi:lsilogic", "nic": "e1000"},
                    "Windows guests: E1000 (in-box driver)", "home-assistant/operating-system#1674"),
    firmware=Setting("vmw:Config firmware=efi when --firmware efi (the vSphere dialect)",
                     "HA's OVA sets EFI for Workstation this way",
                     "home-assistant/operating-system:buildroot-external/board/pc/ova/"
                     "home-assistant.ovf"),
    os=Setting("other-linux-64", "otherLinux64Guest: known to every Workstation release; "
               + _OS_VMWARE, _OS_SRC_VMWARE),
    leave_out=TARGETS["vsphere8"].leave_out,
    hw_max=21, hw_families=_ESXI_FAMILIES | {12, 16},
    hw_since={18: "a newer Workstation (vmx-18+ not verified)",
              19: "a newer Workstation (vmx-18+ not verified)",
              20: "Workstation 17 (not verified)", 21: "Workstation 17.5 (not verified)"},
    limits=(_L_OVF2_VMWARE, _L_PVSCSI_WS),
    lint=("vmware_family", "vmware_controllers", "vmware_nics", "vmware_items", "vmware_os",
          "vmware_firmware"),
    hint="import: File > Open NAME.ova (Workstation/Player) or File > Import (Fusion)",
))

_VBOX_IGNORES = ("VirtualBox does not read vmw:Config firmware: the VM is created with BIOS "
                 "(set EFI after import: VBoxManage modifyvm VM --firmware efi)")
_add(Target(
    name="virtualbox",
    title="Oracle VirtualBox (Import Appliance, VBoxManage import)",
    ovf_version=Setting("1.0", "VirtualBox reads 0.9, 1.0 and 2.0; 1.0 keeps the package "
                        "readable elsewhere", _SRC_VBOX),
    digest=Setting("sha256", "the IPRT manifest reader takes SHA1, SHA256, SHA512; HA's "
                   "OVF 1.0 + SHA256 OVA imports into VirtualBox 6.1",
                   "VirtualBox/virtualbox:src/VBox/Main/src-server/ApplianceImplImport.cpp; "
                   "home-assistant/operating-system#2121"),
    hw_version=Setting(14, "not read by VirtualBox; kept for the feature floors", _SRC_VBOX),
    system_type=Setting("virtualbox-2.2", "what VirtualBox writes; with 'virtualbox' in it, "
                        "E1000 maps to the 82540EM (PRO/1000 MT Desktop) adapter",
                        _SRC_VBOX + "; VirtualBox/virtualbox:src/VBox/Main/src-server/"
                        "ApplianceImplExport.cpp"),
    controller=Setting("sata", "ResourceType 20 'AHCI' (VirtualBox's own spelling): one SATA "
                       "controller, what VirtualBox exports", _SRC_VBOX + " (ResourceType 20 "
                       "accepted only as AHCI/vmware.sata.ahci, VirtioSCSI, NVMe)"),
    nic=Setting("e1000", "E1000 maps to an Intel PRO/1000; VmxNet3 is not mapped", _SRC_VBOX),
    firmware=Setting("BIOS only from the descriptor: " + _VBOX_IGNORES,
                     "EFI would need a vbox:Machine section, which overrides most OVF values "
                     "and whose mandatory children are not known: not written",
                     _SRC_VBOX + " (vbox:Machine)"),
    os=Setting("other-linux-64", "VirtualBox maps the CIM ovf:id to its OS type", _SRC_VBOX),
    leave_out=Setting("no vbox:Machine section; " + _LEAVE_OUT_COMMON,
                      "a required Item of a type VirtualBox does not handle aborts the import "
                      "(\"Unknown resource type %d in hardware item\")", _SRC_VBOX),
    limits=(
        Limit("target.controller", "controller", ("nvme",), "warning",
              "the current ovfreader.cpp maps NVMe; older VirtualBox releases stop with "
              "'Host resource of type \"Other Storage Device (20)\" is supported with SATA "
              "AHCI controllers only'", _SRC_VBOX),
        Limit("target.controller", "controller", ("scsi:pvscsi",), "warning",
              "VirtualBox makes any SCSI subtype but BusLogic and lsilogicsas an LsiLogic "
              "controller", _SRC_VBOX),
        Limit("target.nic", "nic", ("vmxnet3",), "warning",
              "VmxNet3 is not mapped: the guest gets the OS type's default adapter", _SRC_VBOX),
        _ignored("firmware", "efi", _VBOX_IGNORES, _SRC_VBOX),
        _ignored("secure_boot", "true", "VirtualBox does not read "
                 "bootOptions.efiSecureBootEnabled", _SRC_VBOX),
        _ignored("properties", "true", "VirtualBox ignores ProductSection properties and the "
                 "OVF environment", _SRC_VBOX),
    ),
    lint=("vbox_memory_units", "vbox_controllers", "vbox_items", "disk_order"),
    hint="import: VBoxManage import NAME.ova (or File > Import Appliance)",
))

_add(Target(
    name="aws",
    title="AWS VM Import/Export (ec2 import-image)",
    ovf_version=Setting("1.0", "[inference] AWS does not document what it reads; its own "
                        "exports are VMware-style OVF 1.0", "aws/aws-cli#6801"),
    digest=Setting("sha256", "no evidence the manifest is read; SHA256 is the common default",
                   "AWS VM Import prerequisites"),
    hw_version=Setting(14, "[inference] any VMware family; not documented as read",
                       "AWS VM Import prerequisites"),
    system_type=Setting("vmx-14", "VMware hardware family", _SRC_VMX),
    controller=Setting("scsi:lsilogic", "boot disk first, on LSI Logic unit 0; the root "
                       "partition must be on the disk with the MBR",
                       "AWS VM Import limitations (docs.amazonaws.cn)"),
    nic=Setting("e1000", "the broad default; AWS replaces the NIC with ENA/Xen drivers",
                "AWS VM Import prerequisites"),
    firmware=Setting("vmw:Config firmware=efi when --firmware efi, but AWS takes the boot mode "
                     "from the API (--boot-mode uefi|legacy-bios)",
                     "firmware is an ImportImage parameter", "AWS EC2 API ImportImage BootMode"),
    os=Setting("other-linux-64", "the OS must be in AWS's supported table; the id in the OVF "
               "is not documented as read", "AWS VM Import prerequisites"),
    leave_out=Setting(_LEAVE_OUT_COMMON, "VMware dialect", _LEAVE_OUT_SRC),
    max_disks=21,
    limits=(
        Limit("target.firmware", "firmware", ("efi",), "warning",
              "AWS takes the boot mode from the API: import with --boot-mode uefi",
              "AWS EC2 API ImportImage BootMode"),
        _ignored("secure_boot", "true", "AWS does not read secure boot from the package",
                 "AWS EC2 API ImportImage"),
        Limit("target.ovf_version", "ovf_version", ("2.0",), "warning",
              "AWS does not document reading OVF 2.0 (its exports are 1.0)", "aws/aws-cli#6801"),
    ),
    lint=("memory_units_mib",),
    hint="import: aws s3 cp NAME.ova s3://BUCKET/ && aws ec2 import-image --disk-containers "
         "Format=ova,UserBucket={S3Bucket=BUCKET,S3Key=NAME.ova} [--boot-mode uefi]",
))

_add(Target(
    name="gce",
    title="Google Compute Engine (gcloud migration vms machine-image-imports / OVF import)",
    ovf_version=Setting("1.0", "the GCE importer reads the first VirtualHardwareSection of a "
                        "VMware-dialect OVF", _SRC_GCE),
    digest=Setting("sha256", "the common default", _SRC_GCE),
    hw_version=Setting(14, "[inference] ignored by the importer", _SRC_GCE),
    system_type=Setting("vmx-14", "VMware hardware family", _SRC_VMX),
    controller=Setting("scsi:lsilogic", "disks are ordered by controller InstanceID then "
                       "AddressOnParent; the first is the boot disk", _SRC_GCE),
    nic=Setting("e1000", "the broad default; GCE replaces the NIC", _SRC_GCE),
    firmware=Setting("vmw:Config firmware=efi when --firmware efi; UEFI and secure boot are "
                     "chosen by the import command", "import flags decide", "gcloud reference"),
    os=Setting("other-linux-64", "the OS comes from a vmw:osType map (e.g. rhel7_64Guest -> "
               "rhel-7); unmapped ids stop with 'Use --os flag'", _SRC_GCE),
    leave_out=Setting(_LEAVE_OUT_COMMON, "VMware dialect", _LEAVE_OUT_SRC),
    limits=(
        Limit("target.firmware", "firmware", ("efi",), "warning",
              "UEFI is chosen by the import command, not read from the package",
              "gcloud compute instances import reference"),
        _ignored("secure_boot", "true", "secure boot is an import option (--secure-boot...), "
                 "not read from the package", "gcloud reference"),
        Limit("target.ovf_version", "ovf_version", ("2.0",), "warning",
              "the importer is written for VMware-dialect OVF 1.0", _SRC_GCE),
    ),
    lint=("memory_units_required", "gce_os", "gce_order"),
    hint="import: gsutil cp NAME.ova gs://BUCKET/ && gcloud migration vms "
         "machine-image-imports create NAME --source-file=gs://BUCKET/NAME.ova "
         "(pass --os if the guest is not recognised)",
))

_PVE_LSI = ("Proxmox's OVF import never sets scsihw, so SCSI disks land on the default LSI "
            "controller, and \"OVMF is built without LSI drivers\": the EFI VM does not boot "
            "(use --controller sata, or set scsihw after import)")
_add(Target(
    name="proxmox",
    title="Proxmox VE (storage Import of OVA/OVF, qm importovf)",
    ovf_version=Setting("1.0", "OVF.pm registers only envelope/1: an envelope/2 descriptor "
                        "yields no name, CPUs or disks", _SRC_PVE + " registerNs"),
    digest=Setting("sha256", "ignored: only the .ovf and the disk member are extracted",
                   "proxmox/pve-storage:src/PVE/Storage/DirPlugin.pm get_import_metadata"),
    hw_version=Setting(14, "VirtualSystemType is ignored; vmx-14 keeps the package "
                       "VMware-importable", _SRC_PVE),
    system_type=Setting("vmx-14", "ignored by Proxmox", _SRC_PVE),
    controller=Setting("sata", "ResourceType 20 becomes sataN, which boots with SeaBIOS and "
                       "OVMF; SCSI becomes scsiN on the default LSI controller, which OVMF cannot "
                       "boot", _SRC_PVE + " (parent type 5/6/20 -> ide/scsi/sata); "
                       "proxmox/qemu-server:src/PVE/QemuServer.pm scsihw default lsi; "
                       "proxmox/pve-storage:src/PVE/Storage/ESXiPlugin.pm"),
    nic=Setting("e1000", "ResourceSubType lowercased in {e1000, e1000e, vmxnet3}, else e1000",
                _SRC_PVE),
    firmware=Setting("vmw:Config firmware=efi -> bios=ovmf plus an efidisk (warning "
                     "efi-state-lost); secure boot is not read", "what OVF.pm maps", _SRC_PVE),
    os=Setting("other-linux-64", "ostype from the CIM ovf:id (101 -> l26; Windows codes -> "
               "w2k...win11; unknown -> other)", _SRC_PVE),
    leave_out=Setting("nothing beyond the common rules; Proxmox ignores the manifest, "
                      "certificate, ProductSection, network names and CD-ROMs",
                      "what the importer reads", _SRC_PVE + "; proxmox/pve-manager:"
                      "www/manager6/window/GuestImport.js"),
    limits=(
        Limit("target.ovf_version", "ovf_version", ("2.0", "0.9"), "error",
              "Proxmox reads only the envelope/1 namespace: an OVF 2.0 descriptor imports "
              "with no name, CPUs, memory or disks", _SRC_PVE + " registerNs"),
        Limit("target.controller", "controller",
              ("scsi:lsilogic", "scsi:lsilogicsas", "scsi:buslogic", "scsi:pvscsi"), "warning",
              _PVE_LSI, "proxmox/pve-storage:src/PVE/Storage/ESXiPlugin.pm; "
              "proxmox/qemu-server:src/PVE/QemuServer.pm", when=("firmware", "efi")),
        Limit("target.controller", "controller", ("nvme",), "warning",
              "Proxmox attaches NVMe (ResourceType 20) disks as SATA", _SRC_PVE),
        _ignored("secure_boot", "true", "Proxmox does not read secure boot", _SRC_PVE),
        _ignored("cdrom", "true", "Proxmox ignores CD-ROM drives (GUI warning "
                 "cdrom-image-ignored)", "proxmox/pve-manager:www/manager6/window/"
                 "GuestImport.js"),
        _ignored("properties", "true", "Proxmox ignores ProductSection properties", _SRC_PVE),
    ),
    lint=("memory_units_mib", "pve_names", "pve_units"),
    hint="import: upload NAME.ova to a directory storage's 'Import' content (PVE 8.3+, "
         "libpve-storage-perl >= 8.2.8), then Import; or extract it and run "
         "qm importovf VMID NAME.ovf STORAGE",
))

_add(Target(
    name="ovirt",
    title="oVirt / RHV OVA import (virt-v2v -i ova; also MTV/Forklift)",
    ovf_version=Setting("1.0", "virt-v2v registers only envelope/1", _SRC_V2V),
    digest=Setting("sha256", "virt-v2v checks SHA1 and SHA256 lines and skips SHA512 ones",
                   _SRC_V2V + " (regex ^(SHA1|SHA256)\\((.*)\\)= ([0-9a-fA-F]+)\\r?$)"),
    hw_version=Setting(14, "[inference] ignored by virt-v2v", _SRC_V2V),
    system_type=Setting("vmx-14", "VMware dialect: oVirt supports only VMware-made OVAs",
                        "oVirt/ovirt-site#855"),
    controller=Setting("scsi:lsilogic", "controller types 5/6/20 are read; the VMware dialect",
                       _SRC_V2V),
    nic=Setting("e1000", "E1000 is recognised by name; others lower-cased", _SRC_V2V),
    firmware=Setting("vmw:Config firmware exactly 'efi' or 'bios' (anything else aborts); "
                     "secure boot is always false", "what input/OVF.ml reads", _SRC_V2V),
    os=Setting("other-linux-64", "OS from ovirt:id or the CIM ovf:id (101 -> Other Linux)",
               "oVirt/ovirt-engine OvfOvaReader.java"),
    leave_out=Setting("no oVirt dialect (ovirt: namespace, qcow2); " + _LEAVE_OUT_COMMON,
                      "only VMware-made OVAs are supported; virt-v2v reads disks at tar "
                      "offsets (one header block per member)",
                      "oVirt/ovirt-site#855; " + _SRC_V2V),
    limits=(
        Limit("target.ovf_version", "ovf_version", ("2.0", "0.9"), "error",
              "virt-v2v reads only the envelope/1 namespace: an OVF 2.0 descriptor has no "
              "name, memory, CPUs or disks for it", _SRC_V2V),
        Limit("target.digest", "digest", ("sha512",), "warning",
              "virt-v2v skips SHA512 lines (\"unable to parse line from manifest file\"): "
              "nothing is checked", _SRC_V2V),
        _ignored("secure_boot", "true", "virt-v2v always imports with secure boot off",
                 _SRC_V2V),
    ),
    lint=("memory_units_mib", "v2v_names", "v2v_units", "v2v_firmware", "v2v_compression",
          "v2v_manifest"),
    hint="import: oVirt Administration Portal > Virtual Machines > Import > Source: Virtual "
         "Appliance (OVA), or virt-v2v -i ova NAME.ova -o ...",
))

_add(Target(
    name="xcpng",
    title="XCP-ng / Xen Orchestra OVA import",
    ovf_version=Setting("1.0", "ova-read.js strips namespace prefixes (1.0 and 2.0 parse); "
                        "1.0 keeps the package readable elsewhere", _SRC_XO),
    digest=Setting("sha256", "not read", _SRC_XO),
    hw_version=Setting(14, "ignored", _SRC_XO),
    system_type=Setting("vmx-14", "ignored by Xen Orchestra", _SRC_XO),
    controller=Setting("scsi:lsilogic", "disks need a ResourceType 17 Item with HostResource "
                       "and AddressOnParent; the controller is not mapped", _SRC_XO),
    nic=Setting("e1000", "NICs are read only with AutomaticAllocation true and a Connection",
                _SRC_XO),
    firmware=Setting("BIOS only: XO ignores vmw:Config firmware=efi and boots BIOS",
                     "an EFI-only image does not boot", "vatesfr/xen-orchestra#8162"),
    os=Setting("other-linux-64", "not read", _SRC_XO),
    leave_out=Setting(_LEAVE_OUT_COMMON + "; member names of at most 100 bytes, no PAX",
                      "XO reads header[0:100] and skips PaxHeader/ and dot names", _SRC_XO),
    limits=(
        Limit("target.firmware", "firmware", ("efi",), "error",
              "Xen Orchestra ignores vmw:Config firmware=efi and boots the VM with BIOS "
              "(xen-orchestra#8162, open): an EFI-only image does not boot; pack a hybrid "
              "image with --firmware bios, or switch the VM to UEFI in XO after import",
              "vatesfr/xen-orchestra#8162"),
        _ignored("properties", "true", "Xen Orchestra ignores ProductSection properties",
                 _SRC_XO),
    ),
    lint=("memory_units_required", "xo_names", "xo_nics", "xo_disks"),
    hint="import: Xen Orchestra > Import > VM > drop NAME.ova",
))


def target_names() -> tuple[str, ...]:
    return tuple(TARGETS)


def get_target(name: object, *, what: str = "target") -> Target:
    """The preset called ``name``; UsageError naming ``what`` and the known names."""
    if isinstance(name, str) and name in TARGETS:
        return TARGETS[name]
    raise UsageError("%s: %r is not allowed (one of: %s)"
                     % (what, name, ", ".join(TARGETS)))


def table() -> list[dict[str, Any]]:
    """Every preset as plain JSON types (``ovfstream targets --json``)."""
    return [t.as_dict() for t in TARGETS.values()]


# ---------------------------------------------------------------------------------------------
# pack: preset fields, and what a VM + pack options ask of a target

def vm_fields(target: Target, os_key: str | None, *, hw_given: bool) -> dict[str, Any]:
    """The VirtualMachine fields a preset sets (before spec keys and flags apply)."""
    fields: dict[str, Any] = {
        "hw_version": target.hw_version.value,
        "default_slot": target.slot(os_key),
        "nics": (Nic(adapter=target.nic_type(os_key)),),  # type: ignore[arg-type]
        "os": os_key if os_key is not None else target.os.value,
        "sata_subtype": "AHCI" if target.name == "virtualbox" else "vmware.sata.ahci",
    }
    system_type = target.system_type.value
    if not hw_given and system_type != "vmx-%02d" % target.hw_version.value:
        fields["system_type"] = system_type  # an explicit hw_version writes vmx-NN
    return fields


def _slot_token(slot: DiskSlot) -> str:
    return "scsi:" + slot.scsi_type if slot.controller == "scsi" else slot.controller


def _pack_tokens(vm: VirtualMachine, ovf_version: str, digest: str, disks: int
                 ) -> dict[str, set[str]]:
    tokens: dict[str, set[str]] = {
        "ovf_version": {ovf_version}, "digest": {digest},
        "controller": {_slot_token(vm.slot_for(i)) for i in range(max(disks, 1))},
        "nic": {n.adapter for n in vm.nics}}
    if vm.firmware == "efi":
        tokens["firmware"] = {"efi"}
    if vm.secure_boot:
        tokens["secure_boot"] = {"true"}
    if vm.cdrom:
        tokens["cdrom"] = {"true"}
    if vm.product is not None and vm.product.properties:
        tokens["properties"] = {"true"}
    return tokens


def _matches(limit: Limit, tokens: Mapping[str, set[str]]) -> list[str]:
    hits = sorted(v for v in tokens.get(limit.field, ()) if v in limit.values)
    if hits and limit.when is not None and limit.when[1] not in tokens.get(limit.when[0], ()):
        return []
    return hits


_OPTION = {"ovf_version": "--ovf-version", "digest": "--digest", "controller": "--controller",
           "nic": "--nic", "firmware": "--firmware", "secure_boot": "--secure-boot",
           "cdrom": "--cdrom", "properties": "product.properties", "hw_version": "--hw-version"}


def check_pack(target: Target, vm: VirtualMachine, *, ovf_version: str, digest: str,
               disks: int, stem: str | None = None) -> list[str]:
    """Raise UsageError for what ``target`` cannot honour; return warnings for the rest.

    ``stem`` is the name the package's files derive from (``STEM-disk1.vmdk``)."""
    tokens = _pack_tokens(vm, ovf_version, digest, disks)
    if target.name == "proxmox" and stem is not None and not _PVE_HREF.match(stem):
        raise UsageError("-o %s: target proxmox: the disk files would be named %s-disk1.vmdk "
                         "and Proxmox says \"referenced path '%s-disk1.vmdk' is invalid\" (a "
                         "flat name of [ a-zA-Z0-9-.+=_]): choose another output name [%s]"
                         % (stem, stem, stem, _SRC_PVE))
    warnings: list[str] = []
    for limit in target.limits:
        for value in _matches(limit, tokens):
            option = _OPTION[limit.field] + ("" if value == "true" else " " + value)
            text = "%s: target %s: %s [%s]" % (option, target.name, limit.says, limit.source)
            if limit.severity == "error":
                raise UsageError(text + " (cannot be honoured)")
            warnings.append(text)
    hw = vm.hw_version
    if vm.system_type is None and target.hw_families is not None:
        if hw not in target.hw_families:
            raise UsageError("--hw-version %d: target %s: vmx-%02d is not a hardware family it "
                             "runs (\"Unsupported hardware family 'vmx-%02d'\") [%s]"
                             % (hw, target.name, hw, hw, "nextcloud/vm#556; " + _SRC_VMX))
        if target.hw_max is not None and hw > target.hw_max:
            raise UsageError("--hw-version %d: target %s runs at most vmx-%02d (\"Unsupported "
                             "hardware family 'vmx-%02d'\"; vCenter: \"No supported hardware "
                             "versions among [vmx-%02d]\") [%s]"
                             % (hw, target.name, target.hw_max, hw, hw,
                                "bitnami/vms#1555; " + _SRC_VMX))
        if hw in target.hw_since:
            warnings.append("--hw-version %d: target %s: vmx-%02d needs %s [%s]"
                            % (hw, target.name, hw, target.hw_since[hw], _SRC_VMX))
    if target.max_disks is not None and disks > target.max_disks:
        raise UsageError("%d disks: target %s imports at most %d (\"A VM import task fails for "
                         "VMs with more than 21 volumes attached\") [AWS VM Import limitations]"
                         % (disks, target.name, target.max_disks))
    if target.name == "gce" and vm.os in ("other-linux-64", "other-linux", "other-64", "other"):
        warnings.append("--os %s: target gce maps vmw:osType to a GCE OS and otherwise stops "
                        "with 'Use --os flag': name the guest (--os) or pass --os to gcloud "
                        "[%s]" % (vm.os, _SRC_GCE))
    return warnings


_ONE_GB = 1 << 30
_SIZE_1GB = ("the ESXi 6.0 host client deploys only files under 1 GB (\"postNFCData "
             "failed\"); 6.5 fixed it [vmware-archive/photon-controller#78]")


def check_packed_size(target: Target, shown: str, size: int) -> list[str]:
    """pack's warnings about the finished package's size, known only at the end (the same
    check verify --target makes: the target's ``size_1gb`` lint)."""
    if "size_1gb" in target.lint and size >= _ONE_GB:
        return ["%s is %d bytes: target %s: %s" % (shown, size, target.name, _SIZE_1GB)]
    return []


def explain(exc: UsageError, target: Target, *, hw_given: bool) -> UsageError:
    """A model error caused by the preset's hardware version, with the target named."""
    text = str(exc)
    need = re.search(r"needs hw_version (\d+)", text)
    if hw_given or need is None:
        return exc
    hw, want = target.hw_version.value, int(need.group(1))
    since = _ESXI.get(want)
    return UsageError("%s; target %s sets vmx-%02d%s: give --hw-version %d (hw_version) to "
                      "override it%s" % (
                          text, target.name, hw,
                          " (ESXi %s)" % _ESXI[hw] if hw in _ESXI and target.hw_families else "",
                          want, ", which needs ESXi %s" % since
                          if since and target.hw_families else ""))


# ---------------------------------------------------------------------------------------------
# verify --target: lint a descriptor (and what verify knows of the package) against a target

@dataclass(frozen=True)
class LintInput:
    """What ``verify`` hands the lint besides the descriptor."""

    path: str                                   # where descriptor findings point
    manifest_path: str | None = None
    manifest: bytes | None = None               # raw .mf bytes, when there is one
    algorithms: frozenset[str] = frozenset()    # digest algorithms of the parsed lines
    members: tuple[str, ...] = ()               # OVA member names in tar order ("" = folder)
    package_bytes: int | None = None            # size of the .ova


_RT_NAMES = {RT_IDE: "ide", RT_SCSI: "scsi", RT_OTHER_STORAGE: "other storage"}
_VMWARE_SCSI = {"lsilogic": 4, "buslogic": 4, "lsilogicsas": 7, "VirtualSCSI": 7}
_VMWARE_RT20 = {"vmware.sata.ahci": 10, "vmware.nvme.controller": 13}
_VMWARE_NICS = {"E1000": 4, "PCNet32": 4, "VmxNet": 4, "VmxNet2": 7, "VmxNet3": 7,
                "E1000e": 8}
_VBOX_MEMORY_UNITS = ("MegaBytes", "MB", "byte * 2^20", "GigaBytes", "GB", "byte * 2^30")
_VBOX_RT20 = ("ahci", "vmware.sata.ahci", "virtioscsi", "virtio-scsi", "nvme",
              "vmware.nvme.controller")
_VBOX_HANDLED = frozenset({RT_CPU, RT_MEMORY, RT_IDE, RT_SCSI, RT_ETHERNET, RT_FLOPPY,
                           RT_CDROM, RT_DISK, RT_OTHER_STORAGE, RT_USB, RT_SOUND})
_PVE_HREF = re.compile(r"[ a-zA-Z0-9\-.+=_]+\Z")
_PVE_ID = re.compile(r"[A-Za-z0-9\-._~]+\Z")
_PVE_SUFFIXES = (".qcow2", ".raw", ".vmdk")
_BYTE_POWER = re.compile(r"\s*byte\s*\*\s*\d+\s*\^\s*\d+\s*\Z")
_V2V_UNIT = re.compile(r"\s*byte(\s*\*\s*\d+(\s*\^\s*\d+)?)*\s*\Z")
_XO_UNIT = re.compile(r"(\^([0-9]+)\s*\Z)|(\A\s*[kKmMgGtT])")
_HOST_RESOURCE = re.compile(r"\A(?:ovf:)?/disk/(.+)\Z")
_V2V_MF = re.compile(rb"\A(SHA1|SHA256)\((.*)\)= ([0-9a-fA-F]+)\r?\Z")
_MF_SPACED = re.compile(rb"\A\s*([A-Za-z0-9_-]+)(\s+)\(")


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else ""


def _ns(el: etree._Element) -> str:
    return (etree.QName(el).namespace or "") if isinstance(el.tag, str) else ""


def _ovf_attr(el: etree._Element, name: str) -> str | None:
    for ns in (NS_OVF1, NS_OVF2, NS_OVF09):
        value = el.get("{%s}%s" % (ns, name))
        if value is not None:
            return value
    return el.get(name)


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    return int(text) if text.isdigit() and len(text) < 20 else None


@dataclass
class _Item:
    el: etree._Element
    fields: dict[str, str]

    @property
    def rt(self) -> int | None:
        return _int(self.fields.get("ResourceType"))

    def get(self, name: str) -> str | None:
        return self.fields.get(name)

    @property
    def line(self) -> int:
        return self.el.sourceline or 0

    @property
    def required(self) -> bool:
        return (_ovf_attr(self.el, "required") or "true").strip().lower() not in ("false", "0")


def _item(el: etree._Element) -> _Item:
    fields: dict[str, str] = {}
    for child in el:
        name = _local(child)
        if name and name not in fields:
            fields[name] = (child.text or "").strip()
    return _Item(el, fields)


class _Lint:
    def __init__(self, target: Target, root: etree._Element, info: LintInput) -> None:
        self.t = target
        self.root = root
        self.info = info
        self.findings: list[Finding] = []
        self.ns = _ns(root)
        kids = [c for c in root if isinstance(c.tag, str)]
        self.files = [f for refs in kids if _local(refs) == "References"
                      for f in refs if _local(f) == "File"]
        self.disks = [d for sec in kids if _local(sec) == "DiskSection"
                      for d in sec if _local(d) == "Disk"]
        self.vs = next((c for c in root.iter() if _local(c) == "VirtualSystem"
                        and _ns(c) in (NS_OVF1, NS_OVF2, NS_OVF09, "")), None)
        self.vhs = None if self.vs is None else next(
            (c for c in self.vs if _local(c) == "VirtualHardwareSection"), None)
        self.items: list[_Item] = []
        self.system: dict[str, str] = {}
        self.configs: list[etree._Element] = []
        if self.vhs is not None:
            for el in self.vhs:
                name = _local(el)
                if name in ("Item", "StorageItem", "EthernetPortItem"):
                    self.items.append(_item(el))
                elif name == "System":
                    self.system = _item(el).fields
                elif _ns(el) == NS_VMW and name in ("Config", "ExtraConfig"):
                    self.configs.append(el)
        self.by_id = {i.get("InstanceID") or i.get("InstanceId"): i for i in self.items}
        self.disk_items = [i for i in self.items if i.rt == RT_DISK
                           or (i.get("HostResource") or "").find("disk/") >= 0]
        self.nic_items = [i for i in self.items if i.rt == RT_ETHERNET]
        self.controllers = [i for i in self.items if i.rt in CONTROLLER_RTS]
        # The newest family of VirtualSystemType the target runs (None: none, or not VMware).
        self.vmx = self._runnable_vmx()

    def _runnable_vmx(self) -> int | None:
        families = self.t.hw_families or _ESXI_FAMILIES
        known = [int(v[4:]) for v in self.vmx_versions()
                 if re.fullmatch(r"vmx-\d{1,3}", v) and int(v[4:]) in families
                 and (self.t.hw_max is None or int(v[4:]) <= self.t.hw_max)]
        return max(known) if known else None

    # -- helpers ---------------------------------------------------------------------------
    def add(self, rule: str, severity: Severity, text: str, line: int | None = None,
            where: str | None = None) -> None:
        message = "target %s: %s" % (self.t.name, text)
        if line:
            message = "line %d: %s" % (line, message)
        self.findings.append(Finding(rule, severity, location(where or self.info.path), None,
                                     message))

    def firmware(self) -> str | None:
        for el in self.configs:
            if el.get("{%s}key" % NS_VMW) == "firmware":
                return el.get("{%s}value" % NS_VMW)
        return None

    def secure_boot(self) -> bool:
        return any(el.get("{%s}key" % NS_VMW) == "bootOptions.efiSecureBootEnabled"
                   and (el.get("{%s}value" % NS_VMW) or "").lower() == "true"
                   for el in self.configs)

    def vmx_versions(self) -> list[str]:
        return (self.system.get("VirtualSystemType") or "").split()

    def controller_token(self, ctl: _Item) -> str:
        sub = (ctl.get("ResourceSubType") or "").strip()
        if ctl.rt == RT_IDE:
            return "ide"
        if ctl.rt == RT_SCSI:
            return "scsi:" + {"virtualscsi": "pvscsi"}.get(sub.lower(), sub.lower() or "lsilogic")
        low = sub.lower()
        if "sata" in low or "ahci" in low:
            return "sata"
        if "nvme" in low:
            return "nvme"
        return "other:" + low

    def disk_controllers(self) -> list[_Item]:
        seen: dict[int, _Item] = {}
        for disk in self.disk_items:
            parent = self.by_id.get(disk.get("Parent"))
            if parent is not None and parent.rt in CONTROLLER_RTS:
                seen.setdefault(id(parent), parent)
        return list(seen.values())

    def tokens(self) -> dict[str, set[str]]:
        tokens: dict[str, set[str]] = {
            "ovf_version": {"2.0" if self.ns == NS_OVF2 else "0.9" if self.ns == NS_OVF09
                            else "1.0"},
            "digest": set(self.info.algorithms),
            "controller": {self.controller_token(c) for c in self.disk_controllers()},
            "nic": {(n.get("ResourceSubType") or "").lower() for n in self.nic_items}}
        if (self.firmware() or "").lower() == "efi":
            tokens["firmware"] = {"efi"}
        if self.secure_boot():
            tokens["secure_boot"] = {"true"}
        if any(i.rt == RT_CDROM for i in self.items):
            tokens["cdrom"] = {"true"}
        if self.vs is not None and any(_local(p) == "Property" for s in self.vs
                                       if _local(s) == "ProductSection" for p in s.iter()):
            tokens["properties"] = {"true"}
        return tokens

    # -- the run ---------------------------------------------------------------------------
    def one_per_rule(self) -> list[Finding]:
        """One finding per rule id: its most severe (then first) problem, and how many more."""
        by_rule: dict[str, list[Finding]] = {}
        for f in self.findings:
            by_rule.setdefault(f.rule, []).append(f)
        out = []
        for rule, found in by_rule.items():
            first = min(found, key=lambda f: (f.severity != "error", found.index(f)))
            if len(found) > 1:
                first = Finding(rule, first.severity, first.file, first.offset,
                                "%s (+%d more %s finding%s)" % (first.message, len(found) - 1,
                                                               rule, "s"[:len(found) - 2]))
            out.append(first)
        return out

    def run(self) -> list[Finding]:
        tokens = self.tokens()
        for limit in self.t.limits:
            for value in _matches(limit, tokens):
                where = self.info.manifest_path if limit.field == "digest" else None
                self.add(limit.rule, limit.severity, "%s %s: %s [%s]" % (
                    limit.field, value, limit.says, limit.source), where=where)
        if self.t.max_disks is not None and len(self.disk_items) > self.t.max_disks:
            self.add("target.limits", "error", "%d disks: \"A VM import task fails for VMs "
                     "with more than 21 volumes attached\" [AWS VM Import limitations]"
                     % len(self.disk_items))
        for name in self.t.lint:
            getattr(self, "lint_" + name)()
        return self.one_per_rule()

    # -- VMware ----------------------------------------------------------------------------
    def lint_vmware_family(self) -> None:
        versions = self.vmx_versions()
        if not versions:
            self.add("target.hw_version", "warning", "no VirtualSystemType: the host uses its "
                     "highest hardware version, which older hosts' exports cannot run "
                     "[openshift/installer#4613]")
            return
        if self.vmx is not None:
            return
        shown = ", ".join(versions)
        if all(re.fullmatch(r"vmx-\d{1,3}", v) for v in versions):
            says = ("\"No supported hardware versions among [%s]\"" % shown
                    if self.t.name in ("vsphere7", "vsphere8") else
                    "\"The OVF package requires unsupported hardware. Details: Unsupported "
                    "hardware family '%s'\"" % versions[0])
            self.add("target.hw_version", "error", "VirtualSystemType %s: %s; the oldest "
                     "release of this target runs at most vmx-%02d [bitnami/vms#1555; "
                     "nextcloud/vm#556; %s]" % (shown, says, self.t.hw_max or 21, _SRC_VMX))
        else:
            self.add("target.hw_version", "error", "VirtualSystemType %s: \"Unsupported "
                     "hardware family '%s'\" (not a vmx-NN family) [owncloud-archive/vm#53]"
                     % (shown, next(v for v in versions if not v.startswith("vmx-"))))

    def lint_vmware_controllers(self) -> None:
        vmx = self.vmx
        for ctl in self.controllers:
            sub = ctl.get("ResourceSubType")
            if ctl.rt == RT_IDE and sub:
                self.add("target.controller", "error", "IDE controller with ResourceSubType "
                         "%r: vSphere says \"Value ''%s'' of ResourceSubType element not found "
                         "in []\" (write IDE without a subtype) [inverse-inc/packetfence#5522]"
                         % (sub, sub), ctl.line)
            elif ctl.rt in (RT_SCSI, RT_OTHER_STORAGE):
                table = _VMWARE_SCSI if ctl.rt == RT_SCSI else _VMWARE_RT20
                if sub not in table:
                    self.add("target.controller", "error", "%s controller ResourceSubType %r "
                             "is not one VMware knows (%s; all lower case but VirtualSCSI) "
                             "[%s]" % (_RT_NAMES[ctl.rt], sub, ", ".join(table),
                                       _SRC_OPENVMDK), ctl.line)
                elif vmx is not None and vmx < table[sub]:
                    self.add("target.controller", "error", "%s needs vmx-%02d, the package "
                             "declares vmx-%02d [VMware VM compatibility table]"
                             % (sub, table[sub], vmx), ctl.line)
        for disk in self.disk_items:
            parent = self.by_id.get(disk.get("Parent"))
            if parent is None or parent.rt not in CONTROLLER_RTS:
                self.add("target.controller", "error", "disk Item's Parent %r is not a disk "
                         "controller: vSphere says \"VALUE_ILLEGAL: Value ''%s'' of Parent "
                         "element does not refer to a ref of type DiskControllerReference.\" "
                         "[home-assistant/operating-system#826]"
                         % (disk.get("Parent"), disk.get("Parent")), disk.line)

    def lint_vmware_nics(self) -> None:
        vmx = self.vmx
        for nic in self.nic_items:
            sub = nic.get("ResourceSubType") or ""
            if sub not in _VMWARE_NICS:
                self.add("target.nic", "warning", "NIC ResourceSubType %r is not a VMware "
                         "adapter (E1000, E1000e, VmxNet3...) [FORMATS: ovftool exports]"
                         % sub, nic.line)
            elif vmx is not None and vmx < _VMWARE_NICS[sub]:
                self.add("target.nic", "error", "%s needs vmx-%02d, the package declares "
                         "vmx-%02d [VMware VM compatibility table]"
                         % (sub, _VMWARE_NICS[sub], vmx), nic.line)

    def lint_vmware_items(self) -> None:
        for el in self.configs:
            required = (_ovf_attr(el, "required") or "true").lower() not in ("false", "0")
            if _local(el) == "ExtraConfig":
                self.add("target.item", "warning", "vmw:ExtraConfig %r: ovftool stops with "
                         "\"ExtraConfig options exists in source (use --allowExtraConfig option "
                         "to allow this)\", vCenter filters or warns [josenk/terraform-provider-"
                         "esxi#102; GNS3/gns3-vm#40]" % el.get("{%s}key" % NS_VMW), el.sourceline)
            elif required:
                self.add("target.item", "warning", "vmw:Config %r without ovf:required=\"false\""
                         ": ESXi failed on a required vmw:Config it did not know "
                         "[sexibytes/sexigraf#240]" % el.get("{%s}key" % NS_VMW), el.sourceline)

    def lint_vmware_os(self) -> None:
        section = self._os_section()
        if section is not None and section.get("{%s}osType" % NS_VMW) is None:
            self.add("target.os", "warning", "OperatingSystemSection without vmw:osType: "
                     "ovftool maps the CIM id %s and warns \"The specified operating system "
                     "identifier ... is not supported on the selected host. It will be mapped "
                     "to ... 'Other (32-bit)'\" [Banno/packer-post-processor-vsphere-ova#9]"
                     % _ovf_attr(section, "id"), section.sourceline)

    def _os_section(self) -> etree._Element | None:
        if self.vs is None:
            return None
        return next((c for c in self.vs if _local(c) == "OperatingSystemSection"), None)

    def lint_vmware_firmware(self) -> None:
        vmx = self.vmx
        if self.secure_boot() and vmx is not None and vmx < 13:
            self.add("target.firmware", "error", "secure boot needs vmx-13 (ESXi 6.5), the "
                     "package declares vmx-%02d [VMware vSphere 6.5 secure boot prerequisites]"
                     % vmx)
        if self.vs is not None and any(_local(c) == "BootOrderSection" for c in self.vs):
            self.add("target.firmware", "warning", "vmw:BootOrderSection: with it vSphere "
                     "deployed an EFI VM as BIOS [kubernetes-sigs/image-builder#619]")
        if any(el.get("{%s}key" % NS_VMW) == "nvram" for el in self.configs):
            self.add("target.firmware", "warning", "vmw:ExtraConfig nvram: removing it (and the "
                     ".nvram File) fixed a 405 deploy failure "
                     "[vmware/pyvmomi-community-samples#540]")

    def lint_no_compression(self) -> None:
        for f in self.files:
            comp = _ovf_attr(f, "compression")
            if comp and comp.strip().lower() != "identity":
                self.add("target.compression", "error", "File %r has ovf:compression=%r: %s [%s]"
                         % ((_ovf_attr(f, "href"), comp) + _L_COMPRESSED), f.sourceline)

    def lint_vmware_manifest(self) -> None:
        data = self.info.manifest
        if not data:
            return
        for number, line in enumerate(data.split(b"\n"), 1):
            m = _MF_SPACED.match(line)
            if m is not None:
                token = m.group(1).decode("ascii", "replace")
                self.add("target.digest", "error", "manifest line %d writes '%s (name) = hex': "
                         "vCenter says \"Invalid OVF checksum algorithm: %s .\" (write "
                         "%s(name)= hex) [home-assistant/operating-system#826; nextcloud/vm#2607]"
                         % (number, token, token, token), where=self.info.manifest_path)
                return  # one finding per rule: the first bad line says it

    def lint_size_1gb(self) -> None:
        size = self.info.package_bytes
        if size is not None and size >= _ONE_GB:
            self.add("target.limits", "warning", "the OVA is %d bytes: %s" % (size, _SIZE_1GB))

    # -- units -----------------------------------------------------------------------------
    def _memory(self) -> _Item | None:
        return next((i for i in self.items if i.rt == RT_MEMORY), None)

    def lint_memory_units_mib(self) -> None:
        mem = self._memory()
        if mem is None:
            return
        units = mem.get("AllocationUnits")
        compact = "".join((units or "").split()).lower()
        if compact not in ("byte*2^20", "megabytes", "mb"):
            self.add("target.units", "error", "memory AllocationUnits %r: virt-v2v and Proxmox "
                     "take VirtualQuantity as MiB and ignore the units, so %s would import as "
                     "%s MiB (write byte * 2^20) [%s; %s]"
                     % (units, mem.get("VirtualQuantity"), mem.get("VirtualQuantity"),
                        _SRC_V2V, _SRC_PVE), mem.line)

    def lint_memory_units_required(self) -> None:
        mem = self._memory()
        if mem is None:
            return
        units = mem.get("AllocationUnits")
        if not units:
            self.add("target.units", "error", "memory Item without AllocationUnits: the GCE "
                     "importer stops with \"memory allocation unit not specified\"; Xen "
                     "Orchestra needs it too [%s; %s]" % (_SRC_GCE, _SRC_XO), mem.line)
        elif self.t.name == "xcpng" and not _XO_UNIT.search(units):
            self.add("target.units", "error", "memory AllocationUnits %r: Xen Orchestra reads "
                     "an exponent (/\\^([0-9]+)$/) or a k/m/g/t prefix [%s]" % (units, _SRC_XO),
                     mem.line)
        else:
            self.lint_memory_units_mib()

    def lint_vbox_memory_units(self) -> None:
        mem = self._memory()
        if mem is not None and (mem.get("AllocationUnits") or "") not in _VBOX_MEMORY_UNITS:
            self.add("target.units", "error", "memory AllocationUnits %r: VirtualBox says "
                     "'Invalid allocation unit \"%s\" specified with memory size item, line %d' "
                     "(it accepts %s) [%s]" % (mem.get("AllocationUnits"),
                                               mem.get("AllocationUnits") or "", mem.line,
                                               ", ".join(_VBOX_MEMORY_UNITS), _SRC_VBOX),
                     mem.line)

    def lint_units_present(self) -> None:
        # generic only: Proxmox drops the size of a Disk without units (pve_units says more).
        for d in self.disks:
            if not _ovf_attr(d, "capacityAllocationUnits"):
                self.add("target.units", "warning", "Disk %r has no capacityAllocationUnits: "
                         "Proxmox drops the size from its import metadata [%s]"
                         % (_ovf_attr(d, "diskId"), _SRC_PVE), d.sourceline)
                return

    def lint_pve_units(self) -> None:
        for d in self.disks:
            units = _ovf_attr(d, "capacityAllocationUnits")
            if not units or not _BYTE_POWER.match(units):
                self.add("target.units", "warning", "Disk %r capacityAllocationUnits %r: "
                         "Proxmox knows the size only for 'byte * N^M' (it still imports) "
                         "[%s]" % (_ovf_attr(d, "diskId"), units, _SRC_PVE), d.sourceline)
                return

    def lint_v2v_units(self) -> None:
        for d in self.disks:
            units = _ovf_attr(d, "capacityAllocationUnits")
            if units and not _V2V_UNIT.match(units):
                self.add("target.units", "error", "Disk %r capacityAllocationUnits %r: the "
                         "oVirt engine says \"Unsupported capacity unit\" (base must be byte) "
                         "[oVirt/ovirt-engine OvfOvaReader.java]"
                         % (_ovf_attr(d, "diskId"), units), d.sourceline)
                return

    # -- names -----------------------------------------------------------------------------
    def lint_vs_names(self) -> None:
        # The common denominator: oVirt needs ovf:id, virt-v2v takes the name from <Name>,
        # Proxmox from <Name> else ovf:id, XO from VirtualSystemIdentifier.
        if self.vs is None:
            return
        has_name = any(_local(c) == "Name" and (c.text or "").strip() for c in self.vs)
        missing = [what for what, ok in (("ovf:id", _ovf_attr(self.vs, "id")),
                                         ("<Name>", has_name),
                                         ("VirtualSystemIdentifier",
                                          self.system.get("VirtualSystemIdentifier")))
                   if not ok]
        if missing:
            self.add("target.names", "warning", "VirtualSystem without %s: oVirt needs the id, "
                     "virt-v2v names the VM from <Name>, Xen Orchestra from "
                     "VirtualSystemIdentifier [%s; oVirt/ovirt-engine OvfOvaReader.java; %s]"
                     % (", ".join(missing), _SRC_V2V, _SRC_XO), self.vs.sourceline)

    def lint_v2v_names(self) -> None:
        if self.vs is None:
            return
        if not _ovf_attr(self.vs, "id"):
            self.add("target.names", "error", "VirtualSystem without ovf:id: the oVirt engine "
                     "dereferences it unconditionally [oVirt/ovirt-engine OvfOvaReader.java]",
                     self.vs.sourceline)
        elif not any(_local(c) == "Name" and (c.text or "").strip() for c in self.vs):
            self.add("target.names", "warning", "VirtualSystem without <Name>: virt-v2v warns "
                     "and names the VM after the disk [%s]" % _SRC_V2V, self.vs.sourceline)
        for disk in self.disk_items:
            if not _HOST_RESOURCE.match((disk.get("HostResource") or "").strip()):
                self.add("target.names", "error", "HostResource %r: virt-v2v says \"could not "
                         "parse disk rasd:HostResource from OVF document\" [%s]"
                         % (disk.get("HostResource"), _SRC_V2V), disk.line)
                return

    def lint_pve_names(self) -> None:
        for f in self.files:
            href = _ovf_attr(f, "href") or ""
            if not _PVE_HREF.match(href) or (self.info.members and not href.lower().endswith(
                    _PVE_SUFFIXES)):
                self.add("target.names", "error", "href %r: Proxmox says \"referenced path "
                         "'%s' is invalid\" (a flat name of [ a-zA-Z0-9-.+=_], inside an OVA "
                         "ending .vmdk, .qcow2 or .raw) [%s; proxmox/pve-storage:src/PVE/"
                         "Storage.pm OVA_CONTENT_RE_1]" % (href, href, _SRC_PVE), f.sourceline)
        for d in self.disks:
            for attr in ("diskId", "fileRef"):
                value = _ovf_attr(d, attr)
                if value and not _PVE_ID.match(value):
                    self.add("target.names", "error", "Disk %s %r: Proxmox accepts only "
                             "[A-Za-z0-9-._~] [%s]" % (attr, value, _SRC_PVE), d.sourceline)
        for disk in self.disk_items:
            text = (disk.get("HostResource") or "").strip()
            m = re.fullmatch(r"(?:ovf:)?/(disk|file)/(.+)", text)
            if m is None or not _PVE_ID.match(m.group(2)):
                self.add("target.names", "error", "HostResource %r: Proxmox says \"invalid host "
                         "resource %s, skipping\" and drops the disk [%s]"
                         % (text, text, _SRC_PVE), disk.line)

    def lint_xo_names(self) -> None:
        if self.vhs is not None and not self.system.get("VirtualSystemIdentifier"):
            self.add("target.names", "warning", "no VirtualSystemIdentifier: Xen Orchestra "
                     "names the VM from it, not from <Name> [%s]" % _SRC_XO, self.vhs.sourceline)

    # -- VirtualBox ------------------------------------------------------------------------
    def lint_vbox_controllers(self) -> None:
        kinds: dict[str, int] = {}
        for ctl in self.controllers:
            sub = (ctl.get("ResourceSubType") or "").strip()
            if ctl.rt == RT_OTHER_STORAGE and sub.lower() not in _VBOX_RT20:
                self.add("target.controller", "error", "VirtualBox says 'Host resource of type "
                         "\"Other Storage Device (20)\" is supported with SATA AHCI or Virtio-"
                         "SCSI or NVMe controllers only, line %d (subtype:%s)' [%s]"
                         % (ctl.line, sub, _SRC_VBOX), ctl.line)
                continue
            if ctl.rt == RT_IDE and sub and sub.upper() not in ("PIIX3", "PIIX4", "ICH6"):
                self.add("target.controller", "warning", "IDE subtype %r: VirtualBox knows "
                         "PIIX3, PIIX4, ICH6 and uses PIIX4 otherwise [%s]" % (sub, _SRC_VBOX),
                         ctl.line)
            if not (ctl.get("InstanceID") or ctl.get("InstanceId")):
                self.add("target.controller", "error", "controller without InstanceID: "
                         "VirtualBox says \"Element InstanceID is absent\" [%s]" % _SRC_VBOX,
                         ctl.line)
            kind = self.controller_token(ctl).split(":")[0]
            kinds[kind] = kinds.get(kind, 0) + 1
            if kinds[kind] == 2 and kind != "ide":  # IDE: two channels are one controller
                self.add("target.controller", "error", "a second %s controller: VirtualBox "
                         "supports a maximum of one %s controller [%s]"
                         % (kind.upper(), kind.upper(), _SRC_VBOX), ctl.line)

    def lint_vbox_items(self) -> None:
        for item in self.items:
            if item.required and item.rt not in _VBOX_HANDLED:
                self.add("target.item", "error", "required Item of ResourceType %s: VirtualBox "
                         "says \"Unknown resource type %s in hardware item, line %d\" (mark it "
                         "ovf:required=\"false\") [%s]"
                         % (item.get("ResourceType"), item.get("ResourceType"), item.line,
                            _SRC_VBOX), item.line)
                return

    # -- order -----------------------------------------------------------------------------
    def lint_disk_order(self) -> None:
        members = [m for m in self.info.members if m]
        if not members:
            return
        by_id = {_ovf_attr(f, "id"): _ovf_attr(f, "href") for f in self.files}
        wanted = [by_id.get(_ovf_attr(d, "fileRef")) for d in self.disks]
        wanted = [w for w in wanted if w in members]
        in_tar = sorted(wanted, key=members.index)
        if wanted != in_tar:
            self.add("target.order", "error", "disk members are in the tar as %s but the "
                     "descriptor lists %s: VirtualBox reads disks in tar order while it "
                     "streams the OVA [%s; VirtualBox/virtualbox:src/VBox/Main/src-server/"
                     "ApplianceImplImport.cpp]" % (in_tar, wanted, _SRC_VBOX))

    def lint_gce_order(self) -> None:
        # The importer sorts disks by (controller InstanceID, AddressOnParent); the first boots.
        keys = []
        for n, disk in enumerate(self.disk_items):
            parent = self.by_id.get(disk.get("Parent"))
            ctl = _int(parent.get("InstanceID")) if parent is not None else None
            keys.append((ctl or 0, _int(disk.get("AddressOnParent")) or 0, n))
        if keys and min(keys)[2] != 0:
            self.add("target.order", "warning", "GCE boots the disk of the lowest controller "
                     "InstanceID and AddressOnParent, which is not the first disk Item [%s]"
                     % _SRC_GCE)

    def lint_gce_os(self) -> None:
        section = self._os_section()
        if section is not None and section.get("{%s}osType" % NS_VMW) is None:
            self.add("target.os", "warning", "no vmw:osType: the GCE importer maps the guest "
                     "from it and otherwise asks 'Use --os flag' [%s]" % _SRC_GCE,
                     section.sourceline)

    # -- virt-v2v --------------------------------------------------------------------------
    def lint_v2v_firmware(self) -> None:
        value = self.firmware()
        if value is not None and value not in ("efi", "bios"):
            self.add("target.firmware", "error", "virt-v2v says \"unknown Config:firmware value "
                     "%s (expected \\\"bios\\\" or \\\"efi\\\")\" [%s]" % (value, _SRC_V2V))

    def lint_v2v_compression(self) -> None:
        for f in self.files:
            comp = (_ovf_attr(f, "compression") or "").strip()
            if comp and comp not in ("gzip", "identity"):
                self.add("target.compression", "error", "virt-v2v says \"unsupported "
                         "compression in OVF: %s\" [%s]" % (comp, _SRC_V2V), f.sourceline)

    def lint_v2v_manifest(self) -> None:
        data = self.info.manifest
        if not data:
            return
        for number, line in enumerate(data.split(b"\n"), 1):
            if line.strip() and not _V2V_MF.match(line):
                self.add("target.digest", "warning", "manifest line %d: virt-v2v says \"unable "
                         "to parse line from manifest file\" and does not check it [%s]"
                         % (number, _SRC_V2V), where=self.info.manifest_path)
                return

    # -- Xen Orchestra ---------------------------------------------------------------------
    def lint_xo_nics(self) -> None:
        for nic in self.nic_items:
            auto = (nic.get("AutomaticAllocation") or "").strip().lower()
            if auto not in ("true", "1") or not nic.get("Connection"):
                self.add("target.nic", "warning", "NIC without AutomaticAllocation true and a "
                         "Connection: Xen Orchestra drops it [%s]" % _SRC_XO, nic.line)

    def lint_xo_disks(self) -> None:
        for disk in self.disk_items:
            if not _HOST_RESOURCE.match((disk.get("HostResource") or "").strip()) or \
                    not disk.get("AddressOnParent"):
                self.add("target.controller", "error", "disk Item without AddressOnParent or "
                         "an (ovf:)/disk/ HostResource: Xen Orchestra drops it (\"No disk "
                         "found\" when none is left) [%s]" % _SRC_XO, disk.line)


# Every lint check: name -> (rule id, what it looks at).  Targets list the names they run.
_LINTS: dict[str, tuple[str, str]] = {
    "vmware_family": ("target.hw_version", "VirtualSystemType names a vmx-NN family the "
                      "target's oldest release runs"),
    "vmware_controllers": ("target.controller", "IDE without subtype; SCSI/SATA/NVMe subtypes "
                           "VMware knows, their vmx floor; disk Parent is a controller"),
    "vmware_nics": ("target.nic", "NIC subtypes VMware knows and their vmx floor"),
    "vmware_items": ("target.item", "vmw:Config ovf:required=\"false\"; no ExtraConfig"),
    "vmware_os": ("target.os", "vmw:osType present"),
    "vmware_firmware": ("target.firmware", "secure boot on vmx-13+; no BootOrderSection, "
                        "no nvram"),
    "vmware_manifest": ("target.digest", "canonical 'ALG(name)= hex' lines"),
    "no_compression": ("target.compression", "no ovf:compression"),
    "size_1gb": ("target.limits", "OVA under 1 GB (ESXi 6.0 host client)"),
    "memory_units_mib": ("target.units", "memory in MiB (virt-v2v/Proxmox ignore units)"),
    "memory_units_required": ("target.units", "memory AllocationUnits present and readable"),
    "vbox_memory_units": ("target.units", "memory AllocationUnits one of VirtualBox's strings"),
    "units_present": ("target.units", "capacityAllocationUnits on every Disk"),
    "pve_units": ("target.units", "capacityAllocationUnits 'byte * N^M'"),
    "v2v_units": ("target.units", "capacityAllocationUnits based on byte"),
    "vs_names": ("target.names", "VirtualSystem ovf:id, <Name>, VirtualSystemIdentifier"),
    "v2v_names": ("target.names", "VirtualSystem ovf:id (oVirt), <Name>, HostResource form"),
    "pve_names": ("target.names", "href, diskId, fileRef, HostResource character sets"),
    "xo_names": ("target.names", "VirtualSystemIdentifier present"),
    "vbox_controllers": ("target.controller", "ResourceType 20 subtypes, one controller per "
                         "kind, InstanceIDs"),
    "vbox_items": ("target.item", "required Items of handled types only"),
    "disk_order": ("target.order", "disk members in descriptor order"),
    "gce_order": ("target.order", "the first disk Item is the one GCE boots"),
    "gce_os": ("target.os", "vmw:osType present"),
    "v2v_firmware": ("target.firmware", "firmware value exactly bios or efi"),
    "v2v_compression": ("target.compression", "compression gzip or identity only"),
    "v2v_manifest": ("target.digest", "manifest lines virt-v2v parses"),
    "xo_nics": ("target.nic", "NICs with AutomaticAllocation and Connection"),
    "xo_disks": ("target.controller", "disk Items with AddressOnParent and HostResource"),
}


def lint(target: Target | str, root: etree._Element, info: LintInput) -> list[Finding]:
    """Findings (``target.*``) for a parsed descriptor against ``target``; first
    VirtualSystem, first VirtualHardwareSection, as every importer above reads them."""
    t = get_target(target) if isinstance(target, str) else target
    return _Lint(t, root, info).run()


def _check_table() -> None:
    # Import-time self-check: the table names only known rules, lint checks, values.
    for t in TARGETS.values():
        for name in t.lint:
            assert name in _LINTS and hasattr(_Lint, "lint_" + name), name
        for limit in t.limits:
            assert limit.rule in RULES and limit.field in _OPTION, limit
        assert t.os.value in GUEST_OS and t.nic.value in NIC_ADAPTERS, t.name
        slot = t.slot(None)
        assert slot.controller != "scsi" or slot.scsi_type in SCSI_TYPES


_check_table()


def describe(target: Target) -> Iterator[str]:
    """Plain-text lines of one preset (``ovfstream targets``)."""
    yield "%s: %s" % (target.name, target.title)
    for key, s in target.settings().items():
        value = s.value
        if isinstance(value, Mapping):
            value = ", ".join("%s %s" % kv for kv in value.items())
        yield "  %-12s %s" % (key, value)
        yield "  %-12s   why: %s [%s]" % ("", s.reason, s.source)
    for limit in target.limits:
        when = " with %s %s" % limit.when if limit.when else ""
        yield "  %-12s %s %s%s: %s" % (
            "refuses" if limit.severity == "error" else "warns", limit.field,
            "|".join(limit.values), when, limit.says)
    if target.hw_max is not None:
        yield "  %-12s vmx-%02d at most" % ("hardware", target.hw_max)
    if target.max_disks is not None:
        yield "  %-12s at most %d disks" % ("disks", target.max_disks)
    yield "  %-12s %s" % ("verify", ", ".join(target.lint))
    if target.hint:
        yield "  %-12s %s" % ("import", target.hint)

