"""OVF descriptor writer: strict XSD validity (DMTF 1.0.0, 1.1.1, 2.0.1), FORMATS 5.1
semantics checked with XPath, determinism, reservation bound and padding."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

from ovfstream.errors import UsageError
from ovfstream.ovf.model import (
    GUEST_OS,
    DiskEntry,
    DiskSlot,
    Nic,
    Product,
    Property,
    VirtualMachine,
)
from ovfstream.ovf.writer import (
    NS_OVF1,
    NS_OVF2,
    NS_RASD,
    NS_VMW,
    NS_VSSD,
    VMDK_STREAM_FORMAT,
    capacity_with_units,
    pad_to,
    render_descriptor,
    reserve_size,
)

from ovfs_testlib import assert_descriptor_valid

MAX_U64 = 2**64 - 1
SCHEMAS = {"1.0": ("1.0.0", "1.1.1"), "2.0": ("2.0.1",)}
CONTROLLER_TYPES = {5, 6, 20}


def make_disks(vm: VirtualMachine, n: int, *, sizes: tuple[int, int, int] | None = None,
               cid: str = "0123456789abcdef0123456789abcdef") -> list[DiskEntry]:
    disks = []
    for i in range(n):
        file_size, capacity, populated = sizes or (
            1000 + 7 * i, (i + 1) << (30 - 10 * (i % 3)), 65536 * i)
        disks.append(DiskEntry(
            file_id="file%d" % (i + 1), href="%s-disk%d.vmdk" % (vm.name, i + 1),
            file_size_bytes=file_size, capacity_bytes=capacity,
            populated_bytes=min(populated, capacity), disk_id="vmdisk%d" % (i + 1),
            content_id_hex=cid, slot=vm.slot_for(i)))
    return disks


def assert_valid(data: bytes, ovf_version: str) -> None:
    # Our structural rules always, the DMTF XSDs as well when ../shared has them.
    assert_descriptor_valid(data, SCHEMAS[ovf_version])


def check_semantics(data: bytes, vm: VirtualMachine, disks: list[DiskEntry],
                    ovf_version: str) -> etree._Element:
    """The FORMATS 5.1 promises, read back with XPath."""
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n')
    assert data.count(b"<?xml") == 1
    root = etree.fromstring(data)
    ovf = NS_OVF1 if ovf_version == "1.0" else NS_OVF2
    ns = {"ovf": ovf, "rasd": NS_RASD, "vssd": NS_VSSD, "vmw": NS_VMW}
    assert root.tag == "{%s}Envelope" % ovf
    # The dialect of ovftool/vCenter/VirtualBox: OVF elements unprefixed in the default
    # namespace, OVF attributes ovf:-qualified (FORMATS 5.1).
    assert root.nsmap[None] == ovf and root.nsmap["ovf"] == ovf
    for el in root.iter(etree.Element):
        if etree.QName(el).namespace == ovf:
            assert el.prefix is None, el.tag
    assert b" ovf:" in data and b"<ovf:" not in data and b"</ovf:" not in data

    def x(path: str, node: etree._Element = root) -> list:
        return node.xpath(path, namespaces=ns)

    def attr(el: etree._Element, name: str) -> str | None:
        return el.get("{%s}%s" % (ovf, name))

    # Envelope section order.
    tags = [etree.QName(c).localname for c in root]
    expected = ["References"] + (["DiskSection"] if disks else []) + (
        ["NetworkSection"] if vm.nics else []) + ["VirtualSystem"]
    assert tags == expected

    files = x("ovf:References/ovf:File")
    assert [(attr(f, "id"), attr(f, "href"), attr(f, "size")) for f in files] == [
        (d.file_id, d.href, str(d.file_size_bytes)) for d in disks]
    disk_els = x("ovf:DiskSection/ovf:Disk")
    assert len(disk_els) == len(disks)
    for el, d in zip(disk_els, disks):
        assert attr(el, "diskId") == d.disk_id and attr(el, "fileRef") == d.file_id
        assert attr(el, "format") == VMDK_STREAM_FORMAT
        assert attr(el, "populatedSize") == str(d.populated_bytes)
        units = attr(el, "capacityAllocationUnits")  # always written: Proxmox needs it
        shift = 0 if units == "byte" else int(units.removeprefix("byte * 2^"))
        assert units == "byte" or units == "byte * 2^%d" % shift and shift in (10, 20, 30)
        assert int(attr(el, "capacity")) << shift == d.capacity_bytes
        # The largest unit was chosen.
        bigger = [s for s in (10, 20, 30) if s > shift]
        assert all(d.capacity_bytes % (1 << s) for s in bigger)

    nets = [attr(n, "name") for n in x("ovf:NetworkSection/ovf:Network")]
    assert nets == list(dict.fromkeys(n.network for n in vm.nics))

    (vs,) = x("ovf:VirtualSystem")
    assert attr(vs, "id") == vm.name
    assert x("string(ovf:Name)", vs) == vm.name
    assert x("string(ovf:VirtualHardwareSection/ovf:System/vssd:VirtualSystemIdentifier)",
             vs) == vm.name
    assert x("string(ovf:VirtualHardwareSection/ovf:System/vssd:VirtualSystemType)",
             vs) == "vmx-%02d" % vm.hw_version
    (os_el,) = x("ovf:OperatingSystemSection", vs)
    assert attr(os_el, "id") == str(GUEST_OS[vm.os].cim_id)
    assert os_el.get("{%s}osType" % NS_VMW) == GUEST_OS[vm.os].vmw_os_type

    items = x("ovf:VirtualHardwareSection/ovf:Item", vs)
    by_id: dict[str, etree._Element] = {}
    for item in items:
        rasd = [c for c in item if etree.QName(c).namespace == NS_RASD]
        names = [etree.QName(c).localname for c in rasd]
        assert names == sorted(names), names
        assert "ElementName" in names and "InstanceID" in names
        # Vendor extensions come after the RASD sequence and are optional.
        tail = list(item)[len(rasd):]
        assert all(etree.QName(c).namespace == NS_VMW for c in tail)
        assert all(c.get("{%s}required" % ovf) == "false" for c in tail)
        iid = x("string(rasd:InstanceID)", item)
        assert iid not in by_id, "duplicate InstanceID %s" % iid
        by_id[iid] = item

    def of_type(rt: int) -> list:
        return [i for i in items if x("string(rasd:ResourceType)", i) == str(rt)]

    (cpu,) = of_type(3)
    assert x("string(rasd:VirtualQuantity)", cpu) == str(vm.cpus)
    cores = x("vmw:CoresPerSocket", cpu)
    if vm.cores_per_socket > 1:
        assert [c.text for c in cores] == [str(vm.cores_per_socket)]
    else:
        assert cores == []
    (mem,) = of_type(4)
    assert x("string(rasd:AllocationUnits)", mem) == "byte * 2^20"
    assert x("string(rasd:VirtualQuantity)", mem) == str(vm.memory_mib)

    for ide in of_type(5):
        assert x("rasd:ResourceSubType", ide) == []
    for ctl in of_type(6):
        assert x("string(rasd:ResourceSubType)", ctl) in (
            "lsilogic", "lsilogicsas", "VirtualSCSI", "buslogic")
    for ctl in of_type(20):
        assert x("string(rasd:ResourceSubType)", ctl) in (
            "vmware.sata.ahci", "vmware.nvme.controller")

    disk_items = of_type(17)
    assert [x("string(rasd:HostResource)", i) for i in disk_items] == [
        "ovf:/disk/%s" % d.disk_id for d in disks]
    attached = disk_items + of_type(15)
    seen_addresses = set()
    for item in attached:
        parent = by_id[x("string(rasd:Parent)", item)]
        assert int(x("string(rasd:ResourceType)", parent)) in CONTROLLER_TYPES
        address = (x("string(rasd:Parent)", item), x("string(rasd:AddressOnParent)", item))
        assert address not in seen_addresses
        seen_addresses.add(address)
        if x("string(rasd:ResourceType)", parent) == "6":
            assert address[1] != "7"  # the SCSI initiator's own unit
    for d, item in zip(disks, disk_items):
        parent = by_id[x("string(rasd:Parent)", item)]
        kind = {"scsi": "6", "ide": "5", "sata": "20", "nvme": "20"}[d.slot.controller]
        assert x("string(rasd:ResourceType)", parent) == kind
    # Boot disk is unit 0 of the first controller item.
    if disks:
        controllers = [i for i in items
                       if int(x("string(rasd:ResourceType)", i)) in CONTROLLER_TYPES]
        assert x("string(rasd:Parent)", disk_items[0]) == x("string(rasd:InstanceID)",
                                                             controllers[0])
        assert x("string(rasd:AddressOnParent)", disk_items[0]) == "0"

    cds = of_type(15)
    assert len(cds) == (1 if vm.cdrom else 0)
    for cd in cds:
        parent = by_id[x("string(rasd:Parent)", cd)]
        assert x("string(rasd:ResourceType)", parent) in ("5", "20")
        assert x("string(rasd:ResourceSubType)", parent) in ("", "vmware.sata.ahci")

    nics = of_type(10)
    assert [(x("string(rasd:Connection)", i), x("string(rasd:ResourceSubType)", i))
            for i in nics] == [
        (n.network, {"e1000": "E1000", "e1000e": "E1000e", "vmxnet3": "VmxNet3"}[n.adapter])
        for n in vm.nics]
    assert all(x("string(rasd:AutomaticAllocation)", i) == "true" for i in nics)

    configs = x("ovf:VirtualHardwareSection/vmw:Config", vs)
    assert all(c.get("{%s}required" % ovf) == "false" for c in configs)
    pairs = {c.get("{%s}key" % NS_VMW): c.get("{%s}value" % NS_VMW) for c in configs}
    want = {}
    if vm.firmware == "efi":
        want["firmware"] = "efi"
    if vm.secure_boot:
        want["bootOptions.efiSecureBootEnabled"] = "true"
    assert pairs == want

    (hw,) = x("ovf:VirtualHardwareSection", vs)
    transport = vm.product.transport if vm.product is not None else None
    assert attr(hw, "transport") == (transport or None)

    products = x("ovf:ProductSection", vs)
    assert len(products) == (vm.product is not None)
    if vm.product is not None:
        props = x("ovf:Property", products[0])
        assert [attr(p, "key") for p in props] == [p.key for p in vm.product.properties]
        for el, prop in zip(props, vm.product.properties):
            assert attr(el, "type") == prop.ovf_type
            assert attr(el, "value") == prop.default
            assert attr(el, "userConfigurable") == str(prop.user_configurable).lower()
            assert attr(el, "password") == ("true" if prop.password else None)
            assert x("string(ovf:Label)", el) == prop.label
    assert x("string(ovf:AnnotationSection/ovf:Annotation)", vs) == vm.annotation
    assert len(x("ovf:AnnotationSection", vs)) == bool(vm.annotation)
    eulas = x("ovf:EulaSection/ovf:License", vs)
    assert [e.text for e in eulas] == ([] if vm.eula is None else [vm.eula])
    return root


# -- option matrix -------------------------------------------------------------------------

SLOTS = [DiskSlot(controller="scsi", scsi_type=t)
         for t in ("lsilogic", "lsilogicsas", "pvscsi", "buslogic")] + [
    DiskSlot(controller=c) for c in ("sata", "nvme", "ide")]
FIRMWARE = [("bios", False), ("efi", False), ("efi", True)]
PRODUCT = Product(
    product="Web <Appliance> & co", vendor="Example", version="1.2", full_version="1.2.3-4",
    product_url="https://example.com/p?a=1&b=2", vendor_url="https://example.com",
    properties=(
        Property(key="guestinfo.hostname", label="Host name", description="FQDN"),
        Property(key="admin.password", type="password", label="Password"),
        Property(key="debug", type="boolean", default="false", user_configurable=False),
        Property(key="port", type="int", default="8443", qualifiers="MinValue(1)"),
        Property(key="ratio", type="real", default="0.5"),
    ))


@pytest.mark.parametrize("ovf_version", ["1.0", "2.0"])
@pytest.mark.parametrize("firmware,secure_boot", FIRMWARE)
@pytest.mark.parametrize("slot", SLOTS, ids=lambda s: "%s-%s" % (s.controller, s.scsi_type))
@pytest.mark.parametrize("cdrom", [False, True])
def test_matrix_validates(slot: DiskSlot, firmware: str, secure_boot: bool, cdrom: bool,
                          ovf_version: str) -> None:
    vm = VirtualMachine(name="web", firmware=firmware, secure_boot=secure_boot,  # type: ignore[arg-type]
                        default_slot=slot, cdrom=cdrom, cpus=4, cores_per_socket=2,
                        memory_mib=2048)
    disks = make_disks(vm, 2)
    data = render_descriptor(vm, disks, ovf_version=ovf_version)  # type: ignore[arg-type]
    assert_valid(data, ovf_version)
    check_semantics(data, vm, disks, ovf_version)


@pytest.mark.parametrize("ovf_version", ["1.0", "2.0"])
@pytest.mark.parametrize("with_product,eula,annotation", list(itertools.product(
    [False, True], [None, "You agree.\nLine two & <three>."], ["", "built by CI\n\"quoted\""])))
def test_sections_validate(with_product: bool, eula: str | None, annotation: str,
                           ovf_version: str) -> None:
    vm = VirtualMachine(name="app 1", product=PRODUCT if with_product else None, eula=eula,
                        annotation=annotation, os="debian12-64",
                        nics=(Nic(), Nic(network="lan", adapter="vmxnet3"),
                              Nic(network="lan", adapter="e1000e")))
    disks = make_disks(vm, 1)
    data = render_descriptor(vm, disks, ovf_version=ovf_version)  # type: ignore[arg-type]
    assert_valid(data, ovf_version)
    check_semantics(data, vm, disks, ovf_version)


@pytest.mark.parametrize("os_name", sorted(GUEST_OS))
def test_every_guest_os_validates(os_name: str) -> None:
    vm = VirtualMachine(name="g", os=os_name)
    data = render_descriptor(vm, make_disks(vm, 1))
    assert_valid(data, "1.0")
    check_semantics(data, vm, make_disks(vm, 1), "1.0")


def test_guest_os_ids_are_the_cim_values() -> None:
    # DMTF CIM_OperatingSystem.OsType ValueMap entries importers key on.
    expect = {"other": 1, "other-linux": 36, "freebsd-64": 78, "rhel8-64": 80,
              "sles15-64": 85, "ubuntu": 93, "ubuntu-64": 94, "debian12-64": 96,
              "other-linux-64": 101, "other-64": 102, "centos7-64": 107,
              "windows9-64": 121}
    assert {k: GUEST_OS[k].cim_id for k in expect} == expect
    required = {"debian10-64", "debian11-64", "debian12-64", "ubuntu-64", "ubuntu", "rhel7-64",
                "rhel8-64", "rhel9-64", "centos-64", "centos7-64", "rockylinux-64",
                "almalinux-64", "sles15-64", "fedora-64", "other-linux-64", "other-linux",
                "other5xlinux-64", "other6xlinux-64", "freebsd-64", "windows9-64",
                "windows2019srv-64", "windows2022srv-64", "windows11-64", "other-64", "other"}
    assert required <= set(GUEST_OS)
    assert all(0 <= g.cim_id <= 0xFFFF and g.vmw_os_type.endswith(("Guest", "Guest64"))
               for g in GUEST_OS.values())


def test_no_disks_no_nics() -> None:
    vm = VirtualMachine(name="empty", nics=())
    data = render_descriptor(vm, [])
    assert_valid(data, "1.0")
    check_semantics(data, vm, [], "1.0")


# -- hypothesis: random VMs and disk sets ------------------------------------------------------

slot_st = st.sampled_from(SLOTS)
HEX32 = st.binary(min_size=16, max_size=16).map(bytes.hex)
nic_st = st.builds(Nic, network=st.sampled_from(["VM Network", "lan", "dmz net", "a&b<c>"]),
                   adapter=st.sampled_from(["e1000", "e1000e", "vmxnet3"]))
size_st = st.one_of(st.integers(0, MAX_U64), st.sampled_from([0, 1, 512, 1 << 30, MAX_U64]))
capacity_st = st.one_of(
    st.integers(1, MAX_U64),
    st.builds(lambda n, s: max(1, (n << s) & MAX_U64), st.integers(1, 1 << 34),
              st.sampled_from([9, 10, 20, 30, 32])))


@st.composite
def vm_and_disks(draw: st.DrawFn) -> tuple[VirtualMachine, list[DiskEntry]]:
    firmware, secure_boot = draw(st.sampled_from(FIRMWARE))
    cores = draw(st.sampled_from([1, 2, 4]))
    n_disks = draw(st.integers(0, 5))
    slots = tuple(draw(st.lists(slot_st, max_size=n_disks)))
    default = draw(slot_st)
    # IDE holds 4 devices (2 channels x 2); keep the draw importable.
    used_ide = sum(1 for i in range(n_disks)
                   if (slots[i] if i < len(slots) else default).controller == "ide")
    cdrom = draw(st.booleans()) and used_ide < 4
    if used_ide > 4:
        default = DiskSlot()
        slots = tuple(s for s in slots if s.controller != "ide")
    vm = VirtualMachine(
        name=draw(st.sampled_from(["web", "my vm", "x" * 80, "ünïcode-vm"])),
        cpus=cores * draw(st.integers(1, 8)), cores_per_socket=cores,
        memory_mib=4 * draw(st.integers(1, 1 << 20)), os=draw(st.sampled_from(sorted(GUEST_OS))),
        firmware=firmware, secure_boot=secure_boot, disk_slots=slots, default_slot=default,
        nics=tuple(draw(st.lists(nic_st, max_size=4))), cdrom=cdrom,
        hw_version=draw(st.integers(13, 21)),
        product=draw(st.sampled_from([None, PRODUCT])),
        eula=draw(st.sampled_from([None, "terms"])),
        annotation=draw(st.sampled_from(["", "note"])))
    disks = []
    for i in range(n_disks):
        capacity = draw(capacity_st)
        disks.append(DiskEntry(
            file_id="file%d" % i, href="d%d.vmdk" % i, file_size_bytes=draw(size_st),
            capacity_bytes=capacity,
            # xs:long: populatedSize above 2**63-1 cannot be written (8 EiB of data).
            populated_bytes=draw(st.integers(0, min(capacity, 2**63 - 1))),
            disk_id="vmdisk%d" % i, content_id_hex=draw(HEX32),
            slot=vm.slot_for(i)))
    return vm, disks


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=vm_and_disks(), ovf_version=st.sampled_from(["1.0", "2.0"]))
def test_random_vms_validate(case: tuple[VirtualMachine, list[DiskEntry]],
                             ovf_version: str) -> None:
    vm, disks = case
    data = render_descriptor(vm, disks, ovf_version=ovf_version)  # type: ignore[arg-type]
    assert_valid(data, ovf_version)
    check_semantics(data, vm, disks, ovf_version)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=vm_and_disks(), ovf_version=st.sampled_from(["1.0", "2.0"]),
       data=st.data())
def test_reserve_size_bounds_any_sizes(case: tuple[VirtualMachine, list[DiskEntry]],
                                       ovf_version: str, data: st.DataObject) -> None:
    vm, disks = case
    reserved = reserve_size(vm, disks, ovf_version=ovf_version)  # type: ignore[arg-type]
    final = []
    for d in disks:
        capacity = data.draw(capacity_st)
        final.append(dataclasses.replace(
            d, file_size_bytes=data.draw(size_st), capacity_bytes=capacity,
            populated_bytes=data.draw(st.integers(0, capacity)),
            content_id_hex=data.draw(HEX32)))
    rendered = render_descriptor(vm, final, ovf_version=ovf_version)  # type: ignore[arg-type]
    assert len(rendered) <= reserved
    padded = pad_to(rendered, reserved)
    assert len(padded) == reserved
    etree.fromstring(padded)  # still one well-formed document


@pytest.mark.parametrize("capacity", [
    MAX_U64, (MAX_U64 >> 10) << 10, (MAX_U64 >> 20) << 20, (MAX_U64 >> 30) << 30,
    1 << 63, 1, 1023, 1024])
def test_reserve_size_extremes(capacity: int) -> None:
    vm = VirtualMachine(name="big", cdrom=True, product=PRODUCT, eula="e")
    small = make_disks(vm, 3, sizes=(1, 1, 0))
    reserved = reserve_size(vm, small)
    big = make_disks(vm, 3, sizes=(MAX_U64, capacity, capacity),
                     cid="ffffffffffffffffffffffffffffffff")
    rendered = render_descriptor(vm, big)
    assert len(render_descriptor(vm, small)) < len(rendered) <= reserved
    if capacity == (MAX_U64 >> 10) << 10:
        # The widest capacity text: the reservation is exact plus the fixed margin.
        assert reserved - len(rendered) == 64


def test_capacity_units() -> None:
    assert capacity_with_units(10 << 30) == (10, "byte * 2^30")
    assert capacity_with_units(3 << 20) == (3, "byte * 2^20")
    assert capacity_with_units(5 << 10) == (5, "byte * 2^10")
    assert capacity_with_units(1536) == (1536, "byte")
    assert capacity_with_units(512) == (512, "byte")
    assert capacity_with_units(1 << 40) == (1 << 10, "byte * 2^30")


# -- padding -------------------------------------------------------------------------------------

@pytest.mark.parametrize("ovf_version", ["1.0", "2.0"])
def test_padded_descriptor_parses_and_validates(ovf_version: str) -> None:
    vm = VirtualMachine(name="pad", product=PRODUCT)
    disks = make_disks(vm, 2)
    data = render_descriptor(vm, disks, ovf_version=ovf_version)  # type: ignore[arg-type]
    size = reserve_size(vm, disks, ovf_version=ovf_version)  # type: ignore[arg-type]
    padded = pad_to(data, size)
    assert len(padded) == size and padded.startswith(data)
    assert padded[len(data):].strip() == b"" and padded.endswith(b"\n")
    parser = etree.XMLParser(no_network=True, resolve_entities=False)
    root = etree.fromstring(padded, parser)
    assert etree.tostring(root) == etree.tostring(etree.fromstring(data))
    assert_valid(padded, ovf_version)
    assert pad_to(data, len(data)) == data
    assert pad_to(data, len(data) + 1) == data + b"\n"


def test_pad_to_refuses_what_does_not_fit() -> None:
    vm = VirtualMachine(name="pad")
    data = render_descriptor(vm, make_disks(vm, 1))
    with pytest.raises(ValueError, match="does not fit"):
        pad_to(data, len(data) - 1)
    with pytest.raises(ValueError):
        pad_to(data, -1)
    with pytest.raises(ValueError, match="end tag"):
        pad_to(data + b"junk", len(data) + 100)


# -- determinism ------------------------------------------------------------------------------

def test_same_input_same_bytes() -> None:
    def build() -> bytes:
        vm = VirtualMachine(name="det", cdrom=True, product=PRODUCT, eula="e", cpus=2,
                            disk_slots=(DiskSlot(controller="sata"),),
                            nics=(Nic(network="a"), Nic(network="b", adapter="vmxnet3")))
        return render_descriptor(vm, make_disks(vm, 3))
    first = build()
    assert all(build() == first for _ in range(5))
    # Content ids do not change the descriptor (nothing derived from them is written).
    vm = VirtualMachine(name="det")
    assert render_descriptor(vm, make_disks(vm, 2, cid="0" * 32)) == render_descriptor(
        vm, make_disks(vm, 2, cid="f" * 32))


def test_instance_ids_and_controller_sharing() -> None:
    # 20 SCSI disks: 15 units per controller (unit 7 is the initiator), so 2 controllers.
    vm = VirtualMachine(name="many")
    disks = make_disks(vm, 20)
    data = render_descriptor(vm, disks)
    assert_valid(data, "1.0")
    root = check_semantics(data, vm, disks, "1.0")
    ns = {"rasd": NS_RASD, "ovf": NS_OVF1}
    scsi = root.xpath("//ovf:Item[rasd:ResourceType='6']", namespaces=ns)
    assert [s.findtext("{%s}Address" % NS_RASD) for s in scsi] == ["0", "1"]
    units = [int(i.findtext("{%s}AddressOnParent" % NS_RASD))
             for i in root.xpath("//ovf:Item[rasd:ResourceType='17']", namespaces=ns)]
    assert units == [0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4]
    ids = root.xpath("//ovf:Item/rasd:InstanceID/text()", namespaces=ns)
    assert ids == [str(i) for i in range(1, len(ids) + 1)]


def test_cdrom_placement() -> None:
    ns = {"rasd": NS_RASD, "ovf": NS_OVF1}
    for slot, parent_type in ((DiskSlot(controller="sata"), "20"), (DiskSlot(), "5"),
                              (DiskSlot(controller="ide"), "5")):
        vm = VirtualMachine(name="cd", cdrom=True, default_slot=slot)
        disks = make_disks(vm, 1)
        root = etree.fromstring(render_descriptor(vm, disks))
        (cd,) = root.xpath("//ovf:Item[rasd:ResourceType='15']", namespaces=ns)
        assert cd.get("{%s}required" % NS_OVF1) == "false"
        parent = cd.findtext("{%s}Parent" % NS_RASD)
        (ctl,) = root.xpath("//ovf:Item[rasd:InstanceID='%s']" % parent, namespaces=ns)
        assert ctl.findtext("{%s}ResourceType" % NS_RASD) == parent_type
    # IDE: 4 devices at most (2 channels x master/slave); a fifth is refused by name.
    vm = VirtualMachine(name="ide", default_slot=DiskSlot(controller="ide"), cdrom=True)
    render_descriptor(vm, make_disks(vm, 3))
    with pytest.raises(UsageError, match="CD-ROM"):
        render_descriptor(vm, make_disks(vm, 4))


# -- refusals --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,field", [
    ({"name": ""}, "name"),
    ({"name": "a\nb"}, "name"),
    ({"name": "x" * 81}, "name"),
    ({"cpus": 0}, "cpus"),
    ({"cpus": True}, "cpus"),
    ({"cpus": 3, "cores_per_socket": 2}, "cores_per_socket"),
    ({"memory_mib": 3}, "memory"),
    ({"memory_mib": 1022}, "memory"),
    ({"hw_version": 22}, "hw_version"),
    ({"hw_version": 3}, "hw_version"),
    ({"os": "plan9"}, "os"),
    ({"firmware": "uefi"}, "firmware"),
    ({"secure_boot": True}, "secure_boot"),
    ({"firmware": "efi", "secure_boot": True, "hw_version": 12}, "secure_boot"),
    ({"default_slot": DiskSlot(controller="nvme"), "hw_version": 12}, "controller"),
    ({"default_slot": DiskSlot(controller="sata"), "hw_version": 9}, "controller"),
    ({"disk_slots": (DiskSlot(controller="nvme"),), "hw_version": 11}, "disk_slots[0]"),
    ({"nics": (Nic(adapter="e1000e"),), "hw_version": 7}, "nics[0].type"),
    ({"product": Product(transport="iso")}, "product.transport"),
    ({"eula": ""}, "eula"),
])
def test_vm_refusals_name_the_field(kwargs: dict, field: str) -> None:
    kwargs = {"name": "vm", **kwargs}
    with pytest.raises(UsageError) as info:
        VirtualMachine(**kwargs)
    assert str(info.value).startswith(field + ":"), str(info.value)


def test_part_refusals() -> None:
    with pytest.raises(UsageError, match=r"^nic\.type: 'rtl8139'.*e1000"):
        Nic(adapter="rtl8139")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=r"^nic\.network"):
        Nic(network="")
    with pytest.raises(UsageError, match=r"^property\.type: 'float'"):
        Property(key="k", type="float")
    with pytest.raises(UsageError, match=r"^property\.default: 'maybe'"):
        Property(key="k", type="boolean", default="maybe")
    with pytest.raises(UsageError, match=r"^property\.default: '300'"):
        Property(key="k", type="uint8", default="300")
    with pytest.raises(UsageError, match=r"^property\.key"):
        Property(key="bad key")
    with pytest.raises(UsageError, match=r"^product\.transport: 'ftp'"):
        Product(transport="ftp")
    with pytest.raises(UsageError, match=r"^product\.properties\.key: 'a'"):
        Product(properties=(Property(key="a"), Property(key="a")))
    with pytest.raises(UsageError, match=r"^scsi_type: 'megaraid'"):
        DiskSlot(scsi_type="megaraid")  # type: ignore[arg-type]
    good = dict(file_id="f", href="d.vmdk", file_size_bytes=1, capacity_bytes=512,
                populated_bytes=0, disk_id="d", content_id_hex="0" * 32)
    DiskEntry(**good)
    for key, value in (("href", "../d.vmdk"), ("href", "a/b.vmdk"), ("href", "é.vmdk"),
                       ("href", "x" * 101), ("file_id", "a b"), ("disk_id", ""),
                       ("file_size_bytes", -1), ("file_size_bytes", 2**64),
                       ("capacity_bytes", 0), ("populated_bytes", 513),
                       ("content_id_hex", "0" * 31), ("content_id_hex", "G" * 32)):
        with pytest.raises(UsageError, match="^%s:" % key):
            DiskEntry(**{**good, key: value})


def test_writer_refusals() -> None:
    vm = VirtualMachine(name="w")
    disks = make_disks(vm, 2)
    with pytest.raises(UsageError, match="^ovf_version: '2.1'"):
        render_descriptor(vm, disks, ovf_version="2.1")  # type: ignore[arg-type]
    dup = [disks[0], dataclasses.replace(disks[1], disk_id=disks[0].disk_id)]
    with pytest.raises(UsageError, match=r"^disks\[1\]\.disk_id"):
        render_descriptor(vm, dup)
    dup = [disks[0], dataclasses.replace(disks[1], href=disks[0].href)]
    with pytest.raises(UsageError, match=r"^disks\[1\]\.href"):
        render_descriptor(vm, dup)
    old = VirtualMachine(name="old", hw_version=9)
    nvme = [dataclasses.replace(disks[0], slot=DiskSlot(controller="nvme"))]
    with pytest.raises(UsageError, match=r"^disks\[0\]\.slot: 'nvme' needs hw_version 13"):
        render_descriptor(old, nvme)
    # Five NVMe controllers' worth of disks: no room.
    nv = VirtualMachine(name="nv", default_slot=DiskSlot(controller="nvme"))
    render_descriptor(nv, make_disks(nv, 60))
    with pytest.raises(UsageError, match="no room for disk 61"):
        render_descriptor(nv, make_disks(nv, 61))


# -- the project's own reader reads what we write ---------------------------------------------

def test_round_trip_through_reader() -> None:
    reader = pytest.importorskip("ovfstream.ovf.reader")
    vm = VirtualMachine(name="rt", cpus=4, cores_per_socket=2, memory_mib=4096,
                        os="debian12-64", firmware="efi", secure_boot=True, cdrom=True,
                        nics=(Nic(network="lan", adapter="vmxnet3"),), product=PRODUCT,
                        eula="terms")
    disks = make_disks(vm, 2)
    data = render_descriptor(vm, disks)
    desc, findings = reader.parse_descriptor(data, path="rt.ovf", strict=True)
    assert [f for f in findings if f.severity in ("error", "warning")] == []
    (system,) = desc.systems
    assert (system.name, system.cpus, system.memory_mib, system.os_id) == (
        "rt", 4, 4096, 96)
    assert [d.capacity_bytes for d in desc.disks] == [d.capacity_bytes for d in disks]
    assert [f.size for f in desc.files] == [d.file_size_bytes for d in disks]
