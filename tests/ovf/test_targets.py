"""Target presets (ovf/targets.py): the table itself, the descriptors each preset writes
(validated by our rules and the DMTF XSDs, read back by our reader, compared field by field
with real descriptors of that producer/consumer in ../shared/ovf-corpus), the conflicts a
target cannot honour, and verify --target's lint on our packages and on the corpus."""

from __future__ import annotations

import hashlib
import re
import tarfile
from pathlib import Path

import pytest
from lxml import etree

from ovfstream.errors import UsageError
from ovfstream.ovf import targets
from ovfstream.ovf.model import GUEST_OS, DiskEntry, VirtualMachine
from ovfstream.ovf.reader import _parse_xml, parse_descriptor
from ovfstream.ovf.spec import vm_from_layers, vm_from_mapping
from ovfstream.ovf.targets import TARGETS, LintInput, check_pack, get_target, lint
from ovfstream.ovf.writer import NS_RASD, NS_VMW, NS_VSSD, render_descriptor
from ovfstream.pack import pack
from ovfstream.rules import ALL_RULES
from ovfstream.verify import verify

from ovfs_testlib import REPRODUCIBLE_ENGINE, SHARED, assert_descriptor_valid, needs_shared

WANTED = ("vsphere8", "vsphere7", "vsphere6", "workstation", "virtualbox", "aws", "gce",
          "proxmox", "ovirt", "xcpng", "generic")
NS = {"o": "http://schemas.dmtf.org/ovf/envelope/1", "rasd": NS_RASD, "vssd": NS_VSSD,
      "vmw": NS_VMW}
CORPUS = SHARED / "ovf-corpus"
MIB = 1 << 20

# What each preset writes, as our reader reports it: (VirtualSystemType, disk controller,
# NIC ResourceSubType, manifest token).
EXPECTED = {
    "generic": ("vmx-14", "scsi lsilogic", "E1000", "SHA256"),
    "vsphere8": ("vmx-20", "scsi VirtualSCSI", "VmxNet3", "SHA256"),
    "vsphere7": ("vmx-17", "scsi VirtualSCSI", "VmxNet3", "SHA256"),
    "vsphere6": ("vmx-11", "scsi lsilogic", "VmxNet3", "SHA1"),
    "workstation": ("vmx-17", "scsi lsilogic", "VmxNet3", "SHA256"),
    "virtualbox": ("virtualbox-2.2", "sata", "E1000", "SHA256"),
    "aws": ("vmx-14", "scsi lsilogic", "E1000", "SHA256"),
    "gce": ("vmx-14", "scsi lsilogic", "E1000", "SHA256"),
    "proxmox": ("vmx-14", "sata", "E1000", "SHA256"),
    "ovirt": ("vmx-14", "scsi lsilogic", "E1000", "SHA256"),
    "xcpng": ("vmx-14", "scsi lsilogic", "E1000", "SHA256"),
}


def preset_vm(name: str, **layer: object) -> VirtualMachine:
    base = {"name": "app", "cpus": 2, "memory": 2048, "nics": ["VM Network", "backend"]}
    base.update(layer)
    return vm_from_layers([base], name=None, target=name)


def entries(vm: VirtualMachine, n: int = 2) -> list[DiskEntry]:
    return [DiskEntry(file_id="file%d" % (i + 1), href="app-disk%d.vmdk" % (i + 1),
                      file_size_bytes=70000 + i, capacity_bytes=(i + 1) << 30,
                      populated_bytes=65536, disk_id="vmdisk%d" % (i + 1),
                      content_id_hex="0" * 32, slot=vm.slot_for(i)) for i in range(n)]


def descriptor(name: str, **layer: object) -> bytes:
    vm = preset_vm(name, **layer)
    t = get_target(name)
    return render_descriptor(vm, entries(vm), ovf_version=t.ovf_version.value)


def tiny_disk(tmp_path: Path, name: str = "d.raw", size: int = 4 * MIB) -> Path:
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(size)
        f.write(b"boot" * 4096)
    return path


# ---------------------------------------------------------------------------------------------
# The table


def test_every_wanted_target_is_there() -> None:
    assert set(WANTED) <= set(TARGETS) and targets.target_names()[0] == "generic"


@pytest.mark.parametrize("name", WANTED)
def test_every_value_has_a_reason_and_a_source(name: str) -> None:
    t = TARGETS[name]
    for key, setting in t.settings().items():
        assert setting.reason.strip() and setting.source.strip(), (name, key)
    for limit in t.limits:
        assert limit.says and limit.source and limit.rule in ALL_RULES, limit
    assert t.ovf_version.value == "1.0"   # PROFILES: every preset emits envelope/1
    assert t.os.value in GUEST_OS and t.digest.value in ("sha1", "sha256")


@pytest.mark.parametrize("name", WANTED)
def test_a_preset_never_trips_its_own_limits(name: str) -> None:
    t = TARGETS[name]
    for os_key in (None, "windows2022srv-64", "debian12-64"):
        layer = {"os": os_key} if os_key else {}
        vm = vm_from_layers([layer], name="app", target=name)
        warnings = check_pack(t, vm, ovf_version=t.ovf_version.value, digest=t.digest.value,
                              disks=2)
        if name == "gce" and os_key is None:   # GCE needs to be told the guest
            assert len(warnings) == 1 and "Use --os flag" in warnings[0]
        else:
            assert warnings == [], warnings


def test_open_source_consumers_are_cited_with_their_files() -> None:
    text = repr(targets.table())
    for cited in ("proxmox/pve-storage:src/PVE/GuestImport/OVF.pm", "libguestfs/virt-v2v:input/OVF.ml",
                  "vatesfr/xen-orchestra:packages/xo-vmdk-to-vhd/src/ova-read.js",
                  "compute-image-tools:cli_tools/gce_ovf_import/ovf_utils/ovf_utils.go",
                  "VirtualBox/virtualbox:src/VBox/Main/xml/ovfreader.cpp"):
        assert cited in text, cited


# ---------------------------------------------------------------------------------------------
# Each preset's descriptor: valid, and read back as written


@pytest.mark.parametrize("name", WANTED)
def test_preset_descriptor_is_valid_and_reads_back(name: str) -> None:
    firmware = "bios" if name == "xcpng" else "efi"
    data = descriptor(name, firmware=firmware)
    assert_descriptor_valid(data, ("1.0.0", "1.1.1"))
    desc, findings = parse_descriptor(data, path="t.ovf", strict=True)
    assert [f for f in findings if f.severity != "info"] == []
    vs = desc.systems[0]
    system_type, controller, nic, _ = EXPECTED[name]
    assert (vs.name, vs.cpus, vs.memory_mib) == ("app", 2, 2048)
    # BIOS is the absence of vmw:Config firmware (every importer's default).
    assert vs.hw_version == system_type and vs.firmware == (None if firmware == "bios"
                                                             else firmware)
    assert [d.controller for d in vs.disks] == [controller, controller]
    assert [d.address for d in vs.disks] == ["0:0", "0:1"]   # boot disk first, unit 0
    assert [(n.network, n.adapter_type, n.connected) for n in vs.nics] == [
        ("VM Network", nic, True), ("backend", nic, True)]
    assert [d.capacity_bytes for d in vs.disks] == [1 << 30, 2 << 30]
    os_key = get_target(name).os.value
    assert (vs.os_id, vs.os_type) == (GUEST_OS[os_key].cim_id, GUEST_OS[os_key].vmw_os_type)


def test_virtualbox_writes_virtualbox_spellings() -> None:
    root = etree.fromstring(descriptor("virtualbox"))
    assert root.findtext(".//vssd:VirtualSystemType", namespaces=NS) == "virtualbox-2.2"
    subtypes = [i.findtext("rasd:ResourceSubType", namespaces=NS)
                for i in root.iterfind(".//o:Item", NS)
                if i.findtext("rasd:ResourceType", namespaces=NS) == "20"]
    assert subtypes == ["AHCI"]
    # An explicit hardware version wins over the preset's family name.
    vm = preset_vm("virtualbox", hw_version=17)
    assert b"<vssd:VirtualSystemType>vmx-17<" in render_descriptor(vm, entries(vm))


@pytest.mark.parametrize("name", WANTED)
def test_preset_package_verifies_clean_against_its_target(name: str, tmp_path: Path) -> None:
    vm = preset_vm(name, os="debian12-64")
    out = tmp_path / ("%s.ova" % name)
    result = pack([tiny_disk(tmp_path)], out, vm=vm, target=name, fsync=False)
    assert result.target == name and result.warnings == ()
    assert result.digest_algorithm == get_target(name).digest.value
    with tarfile.open(out) as tar:
        manifest = tar.extractfile("%s.mf" % name).read().decode()  # type: ignore[union-attr]
    assert all(line.startswith(EXPECTED[name][3] + "(") for line in manifest.splitlines())
    report = verify(out, strict=True, target=name)
    assert [str(f) for f in report.findings if f.severity != "info"] == []
    assert report.target == name


def test_generic_is_the_default_byte_for_byte(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1764115200")
    disk = tiny_disk(tmp_path)
    digests = []
    for sub, target in (("a", None), ("b", "generic")):
        (tmp_path / sub).mkdir()
        pack([disk], tmp_path / sub / "x.ova", target=target, fsync=False,
             engine=REPRODUCIBLE_ENGINE)
        digests.append(hashlib.sha256((tmp_path / sub / "x.ova").read_bytes()).hexdigest())
    assert digests[0] == digests[1]


# ---------------------------------------------------------------------------------------------
# Flags over presets; what a target cannot honour


def test_explicit_values_override_the_preset() -> None:
    vm = preset_vm("vsphere8", controller="scsi", scsi_type="lsilogic",
                   nics=["a", "b:e1000e"], os="debian12-64", hw_version="vmx-19")
    assert (vm.default_slot.controller, vm.default_slot.scsi_type) == ("scsi", "lsilogic")
    assert [n.adapter for n in vm.nics] == ["vmxnet3", "e1000e"]  # untyped NIC: the preset's
    assert vm.hw_version == 19 and vm.os == "debian12-64"
    # A SCSI model alone means a SCSI controller even where the preset says SATA.
    vm = preset_vm("proxmox", scsi_type="pvscsi")
    assert (vm.default_slot.controller, vm.default_slot.scsi_type) == ("scsi", "pvscsi")


def test_windows_guests_get_drivers_they_have() -> None:
    vm = preset_vm("vsphere8", os="windows2022srv-64")
    assert vm.default_slot.scsi_type == "lsilogicsas" and vm.nics[0].adapter == "e1000"
    assert preset_vm("workstation", os="windows11-64").nics[0].adapter == "e1000"
    assert preset_vm("workstation").nics[0].adapter == "vmxnet3"


def test_spec_target_key() -> None:
    vm = vm_from_mapping({"name": "s", "target": "vsphere7", "cpus": 4})
    assert (vm.hw_version, vm.cpus, vm.default_slot.scsi_type) == (17, 4, "pvscsi")
    with pytest.raises(UsageError, match="^target: 'esx' is not allowed"):
        vm_from_mapping({"name": "s", "target": "esx"})
    with pytest.raises(UsageError, match="^target: give it where"):
        vm_from_mapping({"target": "vsphere7"}, base=VirtualMachine(name="b"))


def test_secure_boot_on_vmx_11_names_both() -> None:
    with pytest.raises(UsageError) as info:
        preset_vm("vsphere6", firmware="efi", secure_boot=True)
    text = str(info.value)
    assert text.startswith("secure_boot: needs hw_version 13")
    assert "target vsphere6 sets vmx-11" in text and "--hw-version 13" in text
    vm = preset_vm("vsphere6", firmware="efi", secure_boot=True, hw_version=13)
    warnings = check_pack(TARGETS["vsphere6"], vm, ovf_version="1.0", digest="sha1", disks=1)
    assert warnings and "vmx-13 needs ESXi 6.5" in warnings[0]
    with pytest.raises(UsageError, match="^controller: 'nvme' needs hw_version 13.*vsphere6"):
        preset_vm("vsphere6", controller="nvme")


@pytest.mark.parametrize("name, layer, options, match", [
    ("proxmox", {}, {"ovf_version": "2.0"}, r"^--ovf-version 2\.0: target proxmox: .*envelope/1"),
    ("ovirt", {}, {"ovf_version": "2.0"}, r"^--ovf-version 2\.0: target ovirt: virt-v2v"),
    ("xcpng", {"firmware": "efi"}, {}, r"^--firmware efi: target xcpng: Xen Orchestra ignores"),
    ("workstation", {"scsi_type": "pvscsi"}, {},
     r"^--controller scsi:pvscsi: target workstation: \"VMware Workstation supports"),
    ("vsphere6", {"hw_version": 17}, {}, r"^--hw-version 17: target vsphere6 runs at most vmx-15"),
    ("vsphere8", {"hw_version": 12}, {}, r"^--hw-version 12: .*not a hardware family it runs"),
    ("aws", {}, {"disks": 22}, r"^22 disks: target aws imports at most 21"),
])
def test_what_a_target_cannot_honour_is_a_usage_error(name, layer, options, match) -> None:
    t = TARGETS[name]
    vm = preset_vm(name, **layer)
    kwargs = {"ovf_version": "1.0", "digest": t.digest.value, "disks": 1, **options}
    with pytest.raises(UsageError, match=match):
        check_pack(t, vm, **kwargs)


@pytest.mark.parametrize("name, layer, options, needle", [
    ("virtualbox", {"controller": "nvme"}, {}, "--controller nvme: target virtualbox"),
    ("virtualbox", {"firmware": "efi"}, {}, "VBoxManage modifyvm"),
    ("virtualbox", {"nics": ["n:vmxnet3"]}, {}, "VmxNet3 is not mapped"),
    ("proxmox", {"controller": "scsi", "firmware": "efi"}, {}, "OVMF is built without LSI"),
    ("proxmox", {"cdrom": True}, {}, "--cdrom: target proxmox: Proxmox ignores CD-ROM"),
    ("ovirt", {}, {"digest": "sha512"}, "unable to parse line from manifest file"),
    ("vsphere6", {}, {"digest": "sha256"}, "line 1) is invalid: SHA256"),
    ("aws", {"firmware": "efi"}, {}, "--boot-mode uefi"),
    ("generic", {"nics": ["n:vmxnet3"]}, {}, "VirtualBox does not map VmxNet3"),
])
def test_what_a_target_ignores_is_a_warning(name, layer, options, needle) -> None:
    t = TARGETS[name]
    vm = preset_vm(name, **layer)
    kwargs = {"ovf_version": "1.0", "digest": t.digest.value, "disks": 1, **options}
    warnings = check_pack(t, vm, **kwargs)
    assert any(needle in w for w in warnings), warnings


def test_pack_refuses_before_reading_anything(tmp_path: Path) -> None:
    # 22 disks that do not exist: the target's limit is judged first.
    missing = [tmp_path / ("d%d.raw" % i) for i in range(22)]
    with pytest.raises(UsageError, match="target aws imports at most 21"):
        pack(missing, tmp_path / "x.ova", target="aws", fsync=False)
    assert not (tmp_path / "x.ova").exists()
    with pytest.raises(UsageError, match=r"^--target: 'nope' is not allowed \(one of: generic"):
        pack(missing[:1], tmp_path / "x.ova", target="nope", fsync=False)


def test_pack_takes_ovf_version_and_digest_from_the_target(tmp_path: Path) -> None:
    disk = tiny_disk(tmp_path)
    result = pack([disk], tmp_path / "a.ova", target="vsphere6", fsync=False)
    assert (result.ovf_version, result.digest_algorithm, result.target) == ("1.0", "sha1",
                                                                             "vsphere6")
    assert "a.ova" in result.hint
    result = pack([disk], tmp_path / "b.ova", target="vsphere6", digest="sha256", fsync=False)
    assert result.digest_algorithm == "sha256" and result.warnings
    data = result.as_dict()
    assert data["target"] == "vsphere6" and data["warnings"] == list(result.warnings)


# ---------------------------------------------------------------------------------------------
# verify --target on packages that break a target


def _package(tmp_path: Path, name: str, target: str | None = None, **layer: object) -> Path:
    out = tmp_path / ("%s.ova" % name)
    vm = vm_from_layers([layer], name=name, target=target)
    pack([tiny_disk(tmp_path, name + ".raw")], out, vm=vm, target=target, fsync=False)
    return out


def _target_findings(path: Path, target: str) -> dict[str, tuple[str, str]]:
    found = {}
    for f in verify(path, target=target).findings:
        if f.rule.startswith("target."):
            assert f.rule not in found, "one finding per rule"
            found[f.rule] = (f.severity, f.message)
    return found


def test_verify_target_reports_in_the_targets_words(tmp_path: Path) -> None:
    vbox = _package(tmp_path, "vb", "virtualbox")
    found = _target_findings(vbox, "vsphere8")
    assert found["target.hw_version"][0] == "error"
    assert "Unsupported hardware family 'virtualbox-2.2'" in found["target.hw_version"][1]
    assert "'AHCI' is not one VMware knows" in found["target.controller"][1]

    v8 = _package(tmp_path, "v8", "vsphere8")
    found = _target_findings(v8, "vsphere7")
    assert set(found) == {"target.hw_version"}
    assert "No supported hardware versions among [vmx-20]" in found["target.hw_version"][1]
    assert "\"VMware Workstation supports the pvscsi" in _target_findings(
        v8, "workstation")["target.controller"][1]

    efi = _package(tmp_path, "efi", "generic", firmware="efi", controller="scsi")
    assert _target_findings(efi, "xcpng")["target.firmware"][0] == "error"
    assert "OVMF is built without LSI" in _target_findings(efi, "proxmox")[
        "target.controller"][1]
    assert "VBoxManage modifyvm" in _target_findings(efi, "virtualbox")["target.firmware"][1]


def test_verify_target_ovf2_and_sha512(tmp_path: Path) -> None:
    out = tmp_path / "o2.ova"
    pack([tiny_disk(tmp_path)], out, ovf_version="2.0", digest="sha512", fsync=False)
    found = _target_findings(out, "ovirt")
    assert found["target.ovf_version"][0] == "error"
    assert found["target.digest"][0] == "warning" and "unable to parse line" in found[
        "target.digest"][1]
    assert _target_findings(out, "proxmox")["target.ovf_version"][0] == "error"
    assert "target.ovf_version" not in _target_findings(out, "virtualbox")


def test_verify_target_tar_order_for_virtualbox(tmp_path: Path) -> None:
    # Two disks whose members come in the reverse of the descriptor's order.
    src = tmp_path / "two.ova"
    vm = vm_from_layers([{}], name="two", target="virtualbox")
    pack([tiny_disk(tmp_path, "a.raw"), tiny_disk(tmp_path, "b.raw", 5 * MIB)], src, vm=vm,
         fsync=False)
    swapped = tmp_path / "swapped.ova"
    with tarfile.open(src) as tin, tarfile.open(swapped, "w", format=tarfile.USTAR_FORMAT) as tout:
        members = tin.getmembers()
        for m in members[:2] + members[2:][::-1]:
            tout.addfile(m, tin.extractfile(m))
    found = _target_findings(swapped, "virtualbox")
    assert found["target.order"][0] == "error" and "tar order" in found["target.order"][1]
    assert "target.order" not in _target_findings(src, "virtualbox")


def test_lint_reports_one_finding_per_rule(tmp_path: Path) -> None:
    data = descriptor("generic", nics=["a:vmxnet3"])
    root = _parse_xml(data, "x.ovf", [], False)
    # Two disks whose Parent names no controller: two target.controller problems, one finding.
    for item in root.iterfind(".//o:Item", NS):
        if item.findtext("rasd:ResourceType", namespaces=NS) == "17":
            item.find("rasd:Parent", NS).text = "99"
    found = [f for f in lint("vsphere8", root, LintInput(path="x.ovf")) if f.rule ==
             "target.controller"]
    assert len(found) == 1 and "(+1 more target.controller finding)" in found[0].message


# ---------------------------------------------------------------------------------------------
# The corpus: real descriptors of each producer/consumer


def _corpus_root(name: str) -> etree._Element:
    path = CORPUS / name
    return _parse_xml(path.read_bytes(), str(path), [], False)


def _items(root: etree._Element) -> list[dict[str, str]]:
    out = []
    for item in root.iter("{%s}Item" % NS["o"]):
        out.append({etree.QName(c).localname: (c.text or "") for c in item
                    if etree.QName(c).namespace == NS_RASD})
    return out


def _by_type(root: etree._Element, rt: str) -> list[dict[str, str]]:
    return [i for i in _items(root) if i.get("ResourceType") == rt]


def _compare_vmware_dialect(ours: etree._Element, real: etree._Element) -> None:
    """The fields every VMware importer reads, as the real export writes them."""
    assert etree.QName(ours).namespace == etree.QName(real).namespace == NS["o"]
    assert ours.nsmap[None] == real.nsmap[None]          # elements in the default namespace
    for kind in ("3", "4"):
        o, r = _by_type(ours, kind)[0], _by_type(real, kind)[0]
        for key in ("AllocationUnits", "ResourceType"):  # Description is free text
            assert o[key] == r[key], (kind, key)
        assert o["ElementName"] and r["ElementName"]     # required, free text
    o_disk, r_disk = ours.find(".//o:Disk", NS), real.find(".//o:Disk", NS)
    key = "{%s}format" % NS["o"]
    assert o_disk.get(key) == r_disk.get(key)
    units = "{%s}capacityAllocationUnits" % NS["o"]      # the power follows the capacity
    assert re.fullmatch(r"byte \* 2\^(20|30)", o_disk.get(units))
    assert re.fullmatch(r"byte \* 2\^(20|30)", r_disk.get(units))
    assert set(r_disk.attrib) - {"{%s}populatedSize" % NS["o"]} <= set(o_disk.attrib)
    o_hd, r_hd = _by_type(ours, "17")[0], _by_type(real, "17")[0]
    assert o_hd["HostResource"].startswith("ovf:/disk/") and r_hd["HostResource"].startswith(
        "ovf:/disk/")
    assert {"AddressOnParent", "Parent", "InstanceID"} <= set(o_hd) & set(r_hd)
    o_nic, r_nic = _by_type(ours, "10")[0], _by_type(real, "10")[0]
    assert o_nic["AutomaticAllocation"] == r_nic["AutomaticAllocation"] == "true"
    assert o_nic["Connection"] and r_nic["Connection"]   # the network name mapped at deploy
    o_sys, r_sys = (x.find(".//o:System", NS) for x in (ours, real))
    assert [etree.QName(c).localname for c in o_sys] == [etree.QName(c).localname for c in r_sys]
    assert o_sys.findtext("vssd:ElementName", namespaces=NS) == "Virtual Hardware Family"
    os_o, os_r = ours.find(".//o:OperatingSystemSection", NS), real.find(
        ".//o:OperatingSystemSection", NS)
    assert os_o.get("{%s}osType" % NS_VMW) and os_r.get("{%s}osType" % NS_VMW)


def _controller(root: etree._Element) -> tuple[str, str | None]:
    hd = _by_type(root, "17")[0]
    parent = next(i for i in _items(root) if i.get("InstanceID") == hd["Parent"])
    return parent["ResourceType"], parent.get("ResourceSubType")


def _firmware_configs(root: etree._Element) -> list[tuple[str | None, str | None]]:
    return [(c.get("{%s}required" % NS["o"]), c.get("{%s}key" % NS_VMW))
            for c in root.iter("{%s}Config" % NS_VMW)
            if c.get("{%s}key" % NS_VMW) in ("firmware", "bootOptions.efiSecureBootEnabled")]


@needs_shared("ovf-corpus")
def test_vsphere8_matches_an_esxi8_export() -> None:
    real = _corpus_root("govmomi/esxvmovf-25262174.ovf")      # vSphere export, vmx-20, EFI
    ours = etree.fromstring(descriptor("vsphere8", firmware="efi", secure_boot=True))
    _compare_vmware_dialect(ours, real)
    for root in (ours, real):
        assert root.findtext(".//vssd:VirtualSystemType", namespaces=NS) == "vmx-20"
        assert _controller(root) == ("6", "VirtualSCSI")
        assert _by_type(root, "10")[0]["ResourceSubType"] == "VmxNet3"
        assert ("false", "firmware") in _firmware_configs(root)
        assert ("false", "bootOptions.efiSecureBootEnabled") in _firmware_configs(root)
    assert not [f for f in lint("vsphere8", real, LintInput(path="esx.ovf"))
                if f.severity == "error"]
    hw = [f for f in lint("vsphere7", real, LintInput(path="esx.ovf"))
          if f.rule == "target.hw_version"]
    assert "No supported hardware versions among [vmx-20]" in hw[0].message


@needs_shared("ovf-corpus")
def test_vsphere7_matches_open_vmdk_ova_compose() -> None:
    real = _corpus_root("govmomi/Vcf-License-Server-9.1.0.0.25262073.ovf")  # ova-compose
    ours = etree.fromstring(descriptor("vsphere7"))
    _compare_vmware_dialect(ours, real)
    assert _by_type(real, "10")[0]["ResourceSubType"] == _by_type(ours, "10")[0][
        "ResourceSubType"] == "VmxNet3"
    assert [f.rule for f in lint("vsphere7", real, LintInput(path="vcf.ovf"))
            if f.severity == "error"] == []


@needs_shared("ovf-corpus")
def test_vsphere6_and_workstation_match_ovftool_exports() -> None:
    for corpus, target in (("virtualbox/tdAppliance1-t2.ovf", "workstation"),       # Fusion
                           ("virtualbox/tdAppliance1-t4-ovftool-4.1.0.ovf", "vsphere6"),
                           ("govmomi/ttylinux-pc_i486-16.1.ovf", "vsphere6")):
        real = _corpus_root(corpus)
        ours = etree.fromstring(descriptor(target))
        _compare_vmware_dialect(ours, real)
        # vmx-11 (or older) is what ovftool 4.0/4.1 wrote: the family vsphere6 chooses.
        assert int(real.findtext(".//vssd:VirtualSystemType", namespaces=NS)[4:]) <= 11
    # The manifests ovftool 4.x writes: canonical ALG(name)= hex, as ours.
    for mf, token in (("virtualbox/tdAppliance1-t2.mf", "SHA1"),
                      ("virtualbox/tdAppliance1-t4-ovftool-4.1.0.mf", "SHA256")):
        lines = [ln for ln in (CORPUS / mf).read_text().splitlines() if ln.strip()]
        assert all(re.fullmatch(token + r"\([^)]+\)= [0-9a-f]+", ln) for ln in lines)
    # ovftool 4.1 gzip-compressed its disks: vSphere 6.5 refuses that.
    real = _corpus_root("virtualbox/tdAppliance1-t4-ovftool-4.1.0.ovf")
    comp = [f for f in lint("vsphere6", real, LintInput(path="t4.ovf"))
            if f.rule == "target.compression"]
    assert comp and "compressed disks is currently not supported" in comp[0].message
    assert not [f for f in lint("ovirt", real, LintInput(path="t4.ovf"))
                if f.rule == "target.compression"]           # virt-v2v reads gzip


@needs_shared("ovf-corpus")
def test_vsphere_rejects_a_bsd_style_manifest_from_the_corpus() -> None:
    real = _corpus_root("govmomi/ttylinux-pc_i486-16.1.ovf")
    mf = (CORPUS / "govmomi/ttylinux-pc_i486-16.1.mf").read_bytes()     # "SHA1 (x) = h"
    info = LintInput(path="tty.ovf", manifest_path="tty.mf", manifest=mf,
                     algorithms=frozenset({"sha1"}))
    found = {f.rule: f for f in lint("vsphere8", real, info)}
    assert found["target.digest"].severity == "error"
    assert "Invalid OVF checksum algorithm: SHA1 ." in found["target.digest"].message
    assert found["target.digest"].file == "tty.mf"
    assert "target.digest" not in {f.rule for f in lint("workstation", real, info)}


@needs_shared("ovf-corpus")
def test_virtualbox_matches_virtualbox_exports() -> None:
    ours = etree.fromstring(descriptor("virtualbox"))
    for corpus in ("govmomi/vbox1.ovf", "virtualbox/winxp.ovf", "cot/ubuntu.2.0.ovf"):
        real = _corpus_root(corpus)
        for root in (ours, real):
            assert root.findtext(".//{*}VirtualSystemType") == "virtualbox-2.2"
            mem = [i for i in root.iter("{*}Item") if i.findtext("{*}ResourceType") == "4"][0]
            assert mem.findtext("{*}AllocationUnits") in ("MegaBytes", "byte * 2^20")
            os_id = root.find(".//{*}OperatingSystemSection").get("{%s}id" % etree.QName(
                root).namespace)
            assert os_id.isdigit()
        assert [f.rule for f in lint("virtualbox", real, LintInput(path=corpus))
                if f.severity == "error"] == [], corpus
    # VirtualBox's own SATA spelling (its OVF 2.0 export) and NIC type.
    real = _corpus_root("cot/ubuntu.2.0.ovf")
    real_sata = [i for i in real.iter("{*}Item") if i.findtext("{*}ResourceType") == "20"]
    assert real_sata[0].findtext("{*}ResourceSubType") == _controller(ours)[1] == "AHCI"
    real_nic = [i for i in real.iter("{*}EthernetPortItem")][0]
    assert real_nic.findtext("{*}ResourceSubType") == _by_type(ours, "10")[0][
        "ResourceSubType"] == "E1000"
    # What VMware says of VirtualBox's own export.
    found = {f.rule: f.message for f in lint("vsphere8", _corpus_root("govmomi/vbox1.ovf"),
                                              LintInput(path="vbox1.ovf"))}
    assert "Value ''PIIX4'' of ResourceSubType element not found in []" in found[
        "target.controller"]
    assert "Unsupported hardware family 'virtualbox-2.2'" in found["target.hw_version"]


@needs_shared("ovf-corpus")
def test_ovirt_matches_what_virt_v2v_reads() -> None:
    real = _corpus_root("virt-v2v/test-i-ova-two-disks.ovf")   # a VMware OVA virt-v2v imports
    ours = etree.fromstring(descriptor("ovirt", firmware="efi"))
    _compare_vmware_dialect(ours, real)
    for root in (ours, real):
        vs = root.find(".//o:VirtualSystem", NS)
        assert vs.get("{%s}id" % NS["o"]) and vs.findtext("o:Name", namespaces=NS)
        fw = [c.get("{%s}value" % NS_VMW) for c in root.iter("{%s}Config" % NS_VMW)
              if c.get("{%s}key" % NS_VMW) == "firmware"]
        assert fw and fw[0] in ("bios", "efi")               # virt-v2v: exactly one of these
        assert _by_type(root, "10")[0]["ResourceSubType"] == "E1000"
        assert all(re.fullmatch(r"ovf:/disk/\S+", d["HostResource"])
                   for d in _by_type(root, "17"))
    assert [f for f in lint("ovirt", real, LintInput(path="v2v.ovf"))
            if f.severity == "error"] == []
    # The same VMware export, as the oldest vSphere 6 sees it: vmx-10 on 6.0 is fine.
    assert [f for f in lint("vsphere6", real, LintInput(path="v2v.ovf"))] == []


@needs_shared("ovf-corpus")
def test_ovf2_corpus_descriptor_is_refused_by_proxmox_and_ovirt() -> None:
    real = _corpus_root("cot/ubuntu.2.0.ovf")
    for target in ("proxmox", "ovirt"):
        found = {f.rule: f for f in lint(target, real, LintInput(path="u.ovf"))}
        assert found["target.ovf_version"].severity == "error", target


def test_proxmox_refuses_file_names_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"referenced path 'web\(1\)-disk1\.vmdk' is invalid"):
        pack([tmp_path / "absent.raw"], tmp_path / "web(1).ova", target="proxmox", fsync=False)
    # The same name is fine for a target without that rule (the disk is missing, though).
    with pytest.raises(OSError):
        pack([tmp_path / "absent.raw"], tmp_path / "web(1).ova", target="vsphere8", fsync=False)


def test_ovf09_is_not_read_by_proxmox_or_ovirt() -> None:
    root = etree.fromstring(b'<Envelope xmlns="http://www.vmware.com/schema/ovf/1/envelope">'
                            b'<References/></Envelope>')
    for target in ("proxmox", "ovirt"):
        found = {f.rule: f.severity for f in lint(target, root, LintInput(path="old.ovf"))}
        assert found == {"target.ovf_version": "error"}, target


def test_packed_size_warning_follows_the_targets_size_lint():
    from ovfstream.ovf.targets import check_packed_size, get_target
    vsphere6 = get_target("vsphere6")
    (text,) = check_packed_size(vsphere6, "big.ova", 1 << 30)
    assert text.startswith("big.ova is 1073741824 bytes: target vsphere6:") and "postNFCData" in text
    assert check_packed_size(vsphere6, "small.ova", (1 << 30) - 1) == []
    assert check_packed_size(get_target("vsphere8"), "big.ova", 5 << 30) == []
