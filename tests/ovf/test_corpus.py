"""The OVF reader against the real-world descriptors in ../shared/ovf-corpus (see its SOURCES.md).

Every descriptor must read in lax mode without an exception; for several of them concrete
facts, read by hand from the files, are checked; strict mode must agree with the "schema
result" column of SOURCES.md (a V file gives no ``ovf.xsd`` finding, an I file gives some).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ovfstream.errors import Finding
from ovfstream.ovf.reader import RULES, parse_descriptor
from ovfstream.ovf.summary import Descriptor, summary_text

from ovfs_testlib import SHARED, needs_shared

# Every test here reads ../shared: skipped with the reason when it is absent, failed in CI.
pytestmark = needs_shared("ovf-corpus", "ovf-schemas")
CORPUS = SHARED / "ovf-corpus"
SCHEMAS = SHARED / "ovf-schemas"
ALL = sorted(CORPUS.rglob("*.ovf"))
GIB = 1 << 30


def read(name: str, *, strict: bool = False) -> tuple[Descriptor, list[Finding]]:
    path = CORPUS / name
    return parse_descriptor(path.read_bytes(), path=str(path), strict=strict,
                            schema_dir=SCHEMAS if strict else None)


def rules(findings: list[Finding], severity: str | None = None) -> set[str]:
    return {f.rule for f in findings if severity is None or f.severity == severity}


def test_corpus_is_there() -> None:
    assert len(ALL) >= 26, ALL
    assert (CORPUS / "govmomi" / "negative" / "dup_instanceid.ovf") in ALL


@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(CORPUS)))
def test_every_descriptor_reads_lax(path: Path) -> None:
    desc, findings = parse_descriptor(path.read_bytes(), path=str(path))
    assert desc.ovf_version in ("1.x", "2.x", "0.9")
    assert desc.systems, "every corpus file holds at least one VirtualSystem"
    for vs in desc.systems:
        assert vs.id
        assert vs.name
        assert vs.cpus is None or 1 <= vs.cpus <= 128
        assert vs.memory_mib is None or 16 <= vs.memory_mib <= 1 << 20
        for d in vs.disks:
            assert d.capacity_bytes is None or d.capacity_bytes >= 1 << 20
    for d in desc.disks:
        assert d.disk_id
    for f in findings:
        assert f.rule in RULES, f
        assert f.severity in ("error", "warning", "info")
        assert f.file == str(path)
    # The JSON form and the table rows exist for every file.
    json.dumps(desc.as_dict())
    rows = summary_text(desc)
    assert rows[0][0] == "OVF" and all(isinstance(v, str) for _, v in rows)


# Files that SOURCES.md lists as valid must also be clean in lax mode: no error findings.
CLEAN = [p for p in ALL if "negative" not in p.parts]


@pytest.mark.parametrize("path", CLEAN, ids=lambda p: str(p.relative_to(CORPUS)))
def test_positive_files_have_no_reference_errors(path: Path) -> None:
    _, findings = parse_descriptor(path.read_bytes(), path=str(path))
    assert not rules(findings, "error"), findings


def test_esx_export_vmx20_efi() -> None:
    desc, findings = read("govmomi/esxvmovf-25262174.ovf")
    assert findings == []
    (vs,) = desc.systems
    assert vs.name == "esxvm-sb-62272164-rZ0"
    assert (vs.cpus, vs.memory_mib, vs.hw_version) == (2, 8192, "vmx-20")
    assert (vs.firmware, vs.secure_boot) == ("efi", False)
    assert (vs.os_id, vs.os_type) == (104, "vmkernel8Guest")
    assert vs.annotation == "ESX VM"
    (disk,) = vs.disks
    assert disk.capacity_bytes == 32 * GIB  # ovf:capacity="32" byte * 2^30
    assert disk.controller == "scsi VirtualSCSI"
    assert disk.file_ref == "file1"
    assert desc.files[0].href == "disk-0.vmdk" and desc.files[0].size == 706671104
    (nic,) = vs.nics
    assert nic.adapter_type == "VmxNet3" and nic.connected is True
    assert nic.network == "vxw-dvs-34-virtualwire-3-sid-1300002-sc2-01-tr-build01-vc30-dynamic"


def test_chinese_characters() -> None:
    desc, findings = read("govmomi/chinese_characters.ovf")
    assert findings == []
    (vs,) = desc.systems
    assert vs.name == "虚拟机" and vs.id == "虚拟机"
    assert desc.files[0].href == "虚拟机-1.vmdk"
    assert desc.files[0].size is None
    assert (vs.cpus, vs.cores_per_socket, vs.memory_mib) == (1, 1, 40)
    assert desc.disks[0].capacity_bytes == 41943040  # capacityAllocationUnits="byte"
    assert vs.disks[0].controller == "scsi lsilogicsas"
    assert vs.os_description == "Microsoft Windows Server 2008 R2 (64-bit)"


def test_studio_vapp_collection_lists_both_systems() -> None:
    desc, findings = read("govmomi/StudioVappEulaOvf.ovf")
    assert desc.root == "VirtualSystemCollection" and desc.root_id == "VSC ovfid"
    assert [vs.id for vs in desc.systems] == ["ubuntu8.04", "ubuntu8.04 1"]
    for vs in desc.systems:
        assert vs.eula is True
        assert (vs.cpus, vs.memory_mib, vs.hw_version) == (1, 256, "vmx-07")
        assert vs.disks[0].capacity_bytes == 2 * GIB
        assert vs.product is not None and vs.product.product == "ubuntu8.04"
        assert vs.product.full_version == "1.0.0.0 alpha"
        # The class="vm" ProductSection qualifies its keys: vm.vmname, vm.ip.
        assert [p.key for p in vs.product.properties] == ["vm.vmname", "vm.ip"]
    assert desc.systems[1].product.properties[0].default == "ubuntu8.04_1"  # type: ignore[union-attr]
    assert [d.disk_id for d in desc.systems[1].disks] == ["ubuntu8.04_1_system"]
    assert not rules(findings, "error")


def test_vcf_properties_and_blank_disk() -> None:
    desc, findings = read("govmomi/Vcf-License-Server-9.1.0.0.25262073.ovf")
    assert findings == []
    (vs,) = desc.systems
    assert (vs.firmware, vs.secure_boot, vs.hw_version) == ("efi", True, "vmx-13")
    assert [d.capacity_bytes for d in desc.disks] == [4 * GIB] * 3
    assert desc.disks[2].file_ref is None  # ovf:fileRef="" is a blank disk, not a broken ref
    assert vs.product is not None and vs.product.version == "9.1.0.0"
    props = {p.key: p for p in vs.product.properties}
    assert props["hostname"].user_configurable and props["hostname"].type == "string"
    # ProductSection ovf:class="vm": the guest sees the key as "vm.vmname".
    assert props["vm.vmname"].default == "VCF_License_Server_Appliance"
    assert not props["vm.vmname"].user_configurable
    assert len(vs.product.properties) == 14


def test_cot_v09_legacy_namespace() -> None:
    desc, findings = read("cot/v0.9.ovf")
    assert desc.ovf_version == "0.9"
    assert desc.namespace == "http://www.vmware.com/schema/ovf/1/envelope"
    (vs,) = desc.systems
    assert vs.id == "v0.9" and vs.name == "foo"  # no <Name>: VirtualSystemIdentifier
    assert (vs.cpus, vs.memory_mib) == (1, 8192)  # AllocationUnits "MegaBytes"
    assert vs.os_type == "other26xLinux64Guest" and vs.os_id == 107
    assert vs.eula is True and vs.annotation is not None and vs.annotation.startswith("Hello world!")
    (disk,) = vs.disks
    assert disk.capacity_bytes == 1073741824 and disk.controller == "scsi lsilogic"
    assert disk.format_uri == "http://www.vmware.com/specifications/vmdk.html#sparse"
    assert [n.adapter_type for n in vs.nics] == ["PCNet32"] and desc.networks == ("bridged",)
    assert findings == []


def test_joomla_09_without_namespace_children() -> None:
    desc, findings = read("virtualbox/joomla-1.1.4-ovf.ovf")
    assert desc.ovf_version == "0.9"
    assert [f.href for f in desc.files] == ["joomla-1.1.4-ovf-0.vmdk", "joomla-1.1.4-ovf-1.vmdk"]
    (vs,) = desc.systems
    assert (vs.cpus, vs.memory_mib) == (1, 256)
    assert [(d.disk_id, d.capacity_bytes, d.populated_bytes) for d in vs.disks] == [
        ("disk1", 1610612736, 639434752), ("disk2", 10737418240, 7536640)]
    assert findings == []


def test_cot_ovf20_virtualbox() -> None:
    desc, findings = read("cot/ubuntu.2.0.ovf")
    assert desc.ovf_version == "2.x"
    (vs,) = desc.systems
    assert (vs.cpus, vs.memory_mib, vs.hw_version) == (1, 512, "virtualbox-2.2")
    # StorageItem (sasd:) and EthernetPortItem (epasd:) are read like rasd Items.
    (disk,) = vs.disks
    assert disk.capacity_bytes == 8 * GIB and disk.controller == "sata"
    assert [(n.network, n.adapter_type) for n in vs.nics] == [("NAT", "E1000")]
    assert vs.firmware == "bios"  # vbox:Machine without a Firmware element
    assert findings == []


def test_virtualbox_winxp() -> None:
    desc, findings = read("virtualbox/winxp.ovf")
    (vs,) = desc.systems
    assert vs.name == "Windows 5.1 XP 1"
    assert (vs.cpus, vs.memory_mib, vs.os_id, vs.os_description) == (1, 895, 67, "WindowsXP")
    assert vs.firmware == "bios"
    assert [(d.disk_id, d.capacity_bytes, d.controller, d.address) for d in vs.disks] == [
        ("vmdisk1", 10485760000, "ide", "0:0"), ("vmdisk2", 2147483648, "ide", "0:1")]
    assert desc.files[0].size == 4948965888
    assert [n.adapter_type for n in vs.nics] == ["PCNet32"]
    assert findings == []


def test_csr1000v_default_configuration() -> None:
    desc, findings = read("cot/csr1000v.ovf")
    assert [o.id for o in desc.deployment_options] == ["1CPU-4GB", "2CPU-4GB", "4CPU-4GB", "4CPU-8GB"]
    assert desc.default_configuration == "1CPU-4GB"
    (vs,) = desc.systems
    # Items repeat InstanceID 1 and 2 per configuration: the default one wins, no duplicate.
    assert (vs.cpus, vs.memory_mib) == (1, 4096)
    assert "ovf.instanceid.unique" not in rules(findings)
    assert vs.hw_version == "vmx-08 vmx-09 vmx-10 vmx-11 Cisco:Internal:VMCloud-01"
    assert len(vs.nics) == 3
    assert vs.product is not None and len(vs.product.properties) == 27
    assert findings == []


def test_iosv_blank_disk_and_gib_memory_units() -> None:
    desc, findings = read("cot/iosv.ovf")
    flash = next(d for d in desc.disks if d.disk_id == "flash2")
    assert flash.file_ref is None and flash.capacity_bytes == 128 << 20
    (vs,) = desc.systems
    assert vs.memory_mib == 384 and len(vs.nics) == 2  # default profile: 2 NICs
    assert findings == []


def test_chunked_gzip_and_strings_files() -> None:
    desc, _ = read("govmomi/Nostalgia-chunkdisk.ovf")
    assert desc.files[0].chunk_size == 7516192768
    assert desc.systems[0].firmware == "bios"
    desc, _ = read("virtualbox/tdAppliance1-t4-ovftool-4.1.0.ovf")
    assert [f.compression for f in desc.files] == ["gzip", "gzip"]
    assert [d.capacity_bytes for d in desc.disks] == [60 * GIB, 20 * GIB]
    # external.ovf: the message bundle is referenced by <Strings ovf:fileRef>, so not unused.
    _, findings = read("govmomi/external.ovf")
    assert "ovf.file.unused" not in rules(findings)


def test_two_disks_and_xen() -> None:
    desc, _ = read("virt-v2v/test-i-ova-two-disks.ovf")
    assert [d.capacity_bytes for d in desc.systems[0].disks] == [50 * GIB, 450 * GIB]
    assert desc.systems[0].firmware == "bios"
    desc, findings = read("xenadmin/sample_app.ovf")
    assert rules(findings) == {"ovf.xml.encoding"}
    (vs,) = desc.systems
    assert (vs.name, vs.cpus, vs.memory_mib, vs.hw_version) == ("Web server", 1, 64, "xen-3.0-unknown")
    assert vs.disks[0].capacity_bytes == 10485760  # ResourceType 19 with HostResource


def test_negative_dup_instanceid() -> None:
    _, findings = read("govmomi/negative/dup_instanceid.ovf")
    dup = [f for f in findings if f.rule == "ovf.instanceid.unique"]
    assert len(dup) == 1 and "'6'" in dup[0].message and dup[0].severity == "error"
    # Its href "../../../vmdk/valid_disk.vmdk" climbs out of the package.
    assert any(f.rule == "ovf.file.href" and f.severity == "error" for f in findings)


def test_negative_invalid_no_ref() -> None:
    desc, findings = read("govmomi/negative/invalid_no_ref.ovf")
    assert desc.files == ()
    (ref,) = [f for f in findings if f.rule == "ovf.ref.file"]
    assert "file1" in ref.message and ref.severity == "error"


# -- strict mode against SOURCES.md ----------------------------------------------------------

VALID = ["govmomi/ttylinux-pc_i486-16.1.ovf", "govmomi/esxvmovf-25262174.ovf",
         "govmomi/Vcf-License-Server-9.1.0.0.25262073.ovf", "govmomi/trivial.ovf",
         "govmomi/chinese_characters.ovf", "cot/csr1000v.ovf", "cot/minimal.ovf",
         "virtualbox/tdAppliance1-t4-ovftool-4.1.0.ovf", "virt-v2v/test-i-ova-two-disks.ovf"]
INVALID = {  # file -> a word of the first reason SOURCES.md gives
    "govmomi/StudioVappEulaOvf.ovf": "IpAssignmentSection",
    "govmomi/vbox1.ovf": "CIM_ResourceAllocationSettingData",
    "govmomi/external.ovf": "RandomSection",
    "govmomi/negative/invalid_no_ref.ovf": "DiskSection",
    "govmomi/negative/dup_instanceid.ovf": "InstanceId",
    "virtualbox/winxp.ovf": "Machine",
    "cot/ubuntu.2.0.ovf": "ElementName",
}


@pytest.mark.parametrize("name", VALID)
def test_strict_valid_files(name: str) -> None:
    _, findings = read(name, strict=True)
    assert "ovf.xsd" not in rules(findings), findings


@pytest.mark.parametrize("name", sorted(INVALID))
def test_strict_invalid_files(name: str) -> None:
    _, findings = read(name, strict=True)
    xsd = [f for f in findings if f.rule == "ovf.xsd"]
    assert xsd and all(f.severity == "error" for f in xsd)
    versions = {"2.0.1"} if name.startswith("cot/ubuntu.2.0") else {"1.0.0", "1.1.1"}
    for version in versions:  # every schema of the namespace is named and fails
        assert any(f.message.startswith("XSD %s:" % version) for f in xsd), version
    assert any(INVALID[name] in f.message for f in xsd), xsd
    # Lax reading of the same bytes reports no schema findings at all.
    _, lax = read(name)
    assert "ovf.xsd" not in rules(lax)


def test_strict_xenadmin_is_an_error() -> None:
    # SOURCES.md: "XML parse error" for strict parsers; lax mode only warns.
    _, findings = read("xenadmin/sample_app.ovf", strict=True)
    assert {f.severity for f in findings if f.rule == "ovf.xml.encoding"} == {"error"}


def test_strict_09_is_not_validated() -> None:
    _, findings = read("cot/v0.9.ovf", strict=True)
    assert [(f.rule, f.severity) for f in findings] == [("ovf.xsd", "info")]
