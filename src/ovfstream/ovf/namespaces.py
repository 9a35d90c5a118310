"""One table of the names OVF packages use: XML namespaces, RASD resource type codes, digests.

The writer, the lax reader, the structural validator, the target lint, the manifest and the
certificate all import them from here, so a URI or a code is spelled once (DSP0243, the CIM
schemas it imports, FORMATS.md sections 4-5).  Names only: no I/O, no logic.
"""

from __future__ import annotations

__all__ = [
    "NS_OVF1", "NS_OVF2", "NS_OVF09", "NS_RASD", "NS_VSSD", "NS_VMW", "NS_VBOX", "NS_XSI",
    "NS_XML", "NS_CIM", "NS_EPASD", "NS_SASD", "NS_BOOTC", "NS_BOOTS", "NS_XENC", "NS_XENC11",
    "ENVELOPE_NS", "VMDK_STREAM_FORMAT",
    "RT_OTHER", "RT_CPU", "RT_MEMORY", "RT_IDE", "RT_SCSI", "RT_ETHERNET", "RT_FLOPPY",
    "RT_CDROM", "RT_DVD", "RT_DISK", "RT_OTHER_STORAGE", "RT_USB", "RT_SOUND",
    "RT_SATA", "RT_SAS", "RT_NVME", "CONTROLLER_RTS",
    "DIGESTS", "DIGEST_HEX_LENGTHS", "DIGEST_OF_TOKEN",
]

# -- XML namespaces -----------------------------------------------------------------------------
NS_OVF1 = "http://schemas.dmtf.org/ovf/envelope/1"
NS_OVF2 = "http://schemas.dmtf.org/ovf/envelope/2"
NS_OVF09 = "http://www.vmware.com/schema/ovf/1/envelope"      # VMware's pre-DMTF OVF 0.9
NS_RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
NS_VSSD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData"
NS_EPASD = ("http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/"
            "CIM_EthernetPortAllocationSettingData")
NS_SASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_StorageAllocationSettingData"
NS_BOOTC = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_BootConfigSetting"
NS_BOOTS = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_BootSourceSetting"
NS_CIM = "http://schemas.dmtf.org/wbem/wscim/1/common"
NS_VMW = "http://www.vmware.com/schema/ovf"
NS_VBOX = "http://www.virtualbox.org/ovf/machine"
NS_XML = "http://www.w3.org/XML/1998/namespace"
NS_XSI = "http://www.w3.org/2001/XMLSchema-instance"
NS_XENC = "http://www.w3.org/2001/04/xmlenc#"
NS_XENC11 = "http://www.w3.org/2009/xmlenc11#"

# OVF version written -> envelope namespace.
ENVELOPE_NS: dict[str, str] = {"1.0": NS_OVF1, "2.0": NS_OVF2}

# Disk ovf:format of a stream-optimized VMDK.
VMDK_STREAM_FORMAT = "http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"

# -- RASD ResourceType values (CIM_ResourceAllocationSettingData ValueMap, FORMATS 5) -----------
RT_OTHER = 1
RT_CPU = 3
RT_MEMORY = 4
RT_IDE = 5
RT_SCSI = 6
RT_ETHERNET = 10
RT_FLOPPY = 14
RT_CDROM = 15
RT_DVD = 16
RT_DISK = 17
RT_OTHER_STORAGE = 20       # SATA (AHCI) and NVMe controllers as VMware and VirtualBox write them
RT_USB = 23
RT_SOUND = 35
RT_SATA, RT_SAS, RT_NVME = 32, 33, 34   # CIM 2.x values some exporters use
# The controller kinds a disk Item's rasd:Parent may name.
CONTROLLER_RTS = frozenset({RT_IDE, RT_SCSI, RT_OTHER_STORAGE})

# -- digests ------------------------------------------------------------------------------------
# hashlib name -> manifest/certificate token.  SHA256 is the default of vSphere 6.5+ and OVF
# 2.x; SHA1 is for old consumers only; SHA512 is accepted by ovftool 4.x.
DIGESTS: dict[str, str] = {"sha1": "SHA1", "sha256": "SHA256", "sha512": "SHA512"}
DIGEST_HEX_LENGTHS: dict[str, int] = {"sha1": 40, "sha256": 64, "sha512": 128}
DIGEST_OF_TOKEN: dict[str, str] = {token: name for name, token in DIGESTS.items()}
