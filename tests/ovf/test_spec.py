"""VM spec files and flag mappings: TOML/YAML/JSON loading, key-path errors, overrides."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ovfstream.errors import UsageError
from ovfstream.ovf.model import DiskEntry, DiskSlot, Nic, Product, Property, VirtualMachine
from ovfstream.ovf.spec import load_spec, parse_nic, parse_slot, vm_from_mapping
from ovfstream.ovf.writer import render_descriptor

from ovfs_testlib import assert_descriptor_valid

TOML = """
name = "web"
annotation = "Built by CI"
cpus = 4
cores_per_socket = 2
memory = 4096
os = "debian12-64"
firmware = "efi"
secure_boot = true
controller = "scsi"
scsi_type = "pvscsi"
disk_slots = ["sata", {controller = "scsi", scsi_type = "lsilogicsas"}]
nics = ["VM Network", "lan:vmxnet3", {network = "dmz", type = "e1000e"}]
cdrom = true
hw_version = "vmx-17"
eula_file = "legal/eula.txt"

[product]
product = "Web"
vendor = "Example"
version = "1.0"
full_version = "1.0.0-1"
product_url = "https://example.com/web"
vendor_url = "https://example.com"
transport = "com.vmware.guestInfo"

[[product.properties]]
key = "guestinfo.hostname"
label = "Host name"
description = "The FQDN"

[[product.properties]]
key = "port"
type = "int"
default = 8443
user_configurable = false
"""

EXPECTED = VirtualMachine(
    name="web", annotation="Built by CI", cpus=4, cores_per_socket=2, memory_mib=4096,
    os="debian12-64", firmware="efi", secure_boot=True,
    default_slot=DiskSlot(controller="scsi", scsi_type="pvscsi"),
    disk_slots=(DiskSlot(controller="sata"), DiskSlot(scsi_type="lsilogicsas")),
    nics=(Nic(), Nic(network="lan", adapter="vmxnet3"), Nic(network="dmz", adapter="e1000e")),
    cdrom=True, hw_version=17, eula="Terms & conditions\n",
    product=Product(product="Web", vendor="Example", version="1.0", full_version="1.0.0-1",
                    product_url="https://example.com/web", vendor_url="https://example.com",
                    properties=(Property(key="guestinfo.hostname", label="Host name",
                                         description="The FQDN"),
                                Property(key="port", type="int", default="8443",
                                         user_configurable=False))))


def _as_plain(text: str) -> dict:
    import tomllib
    return tomllib.loads(text)


@pytest.fixture()
def spec_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "specs"
    (folder / "legal").mkdir(parents=True)
    (folder / "legal" / "eula.txt").write_text("Terms & conditions\n", encoding="utf-8")
    return folder


@pytest.mark.parametrize("suffix", [".toml", ".yaml", ".yml", ".json"])
def test_load_each_format(spec_dir: Path, suffix: str, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml
    plain = _as_plain(TOML)
    path = spec_dir / ("vm" + suffix)
    if suffix == ".toml":
        path.write_text(TOML, encoding="utf-8")
    elif suffix == ".json":
        path.write_text(json.dumps(plain), encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(plain), encoding="utf-8")
    # eula_file resolves against the spec's folder, not the working directory.
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    mapping = load_spec(path)
    assert Path(mapping["eula_file"]).is_absolute()
    vm = vm_from_mapping(mapping)
    assert vm == EXPECTED
    disks = [DiskEntry(file_id="file%d" % i, href="web-disk%d.vmdk" % i, file_size_bytes=100,
                       capacity_bytes=1 << 30, populated_bytes=0, disk_id="vmdisk%d" % i,
                       content_id_hex="ab" * 16, slot=vm.slot_for(i)) for i in range(3)]
    assert_descriptor_valid(render_descriptor(vm, disks), ("1.0.0", "1.1.1"))


def test_empty_file_and_top_level_shape(tmp_path: Path) -> None:
    empty = tmp_path / "e.yaml"
    empty.write_text("", encoding="utf-8")
    assert load_spec(empty) == {}
    listy = tmp_path / "l.json"
    listy.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(UsageError, match="must hold a table"):
        load_spec(listy)


@pytest.mark.parametrize("name,text", [
    ("bad.toml", "name = \n"), ("bad.json", "{\"name\": }"), ("bad.yaml", "name: [1,\n")])
def test_parse_errors_name_the_file(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UsageError, match=r"^spec: .*%s cannot be parsed" % name):
        load_spec(path)


def test_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "vm.ini"
    path.write_text("[x]\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"^spec: .*vm\.ini"):
        load_spec(path)


@pytest.mark.parametrize("mapping,prefix", [
    ({"colour": "red"}, "colour: unknown key"),
    ({"cpus": "2"}, "cpus: '2' is not allowed (an integer)"),
    ({"cpus": 0}, "cpus: 0 is not allowed"),
    ({"memory": 3}, "memory: 3 is not allowed"),
    ({"secure_boot": "yes"}, "secure_boot: 'yes' is not allowed (true or false)"),
    ({"hw_version": "vmx-x"}, "hw_version: 'vmx-x'"),
    ({"hw_version": 99}, "hw_version: 99"),
    ({"os": "beos"}, "os: 'beos' is not allowed (one of: "),
    ({"firmware": "efi", "secure_boot": True, "hw_version": 11}, "secure_boot: needs"),
    ({"controller": "nvme", "hw_version": 12}, "controller: 'nvme' needs hw_version 13"),
    ({"scsi_type": "megaraid"}, "scsi_type: 'megaraid'"),
    ({"nics": "lan"}, "nics: 'lan' is not allowed (a list)"),
    ({"nics": ["a", "lan:rtl8139"]}, "nics[1]: 'lan:rtl8139'"),
    ({"nics": [{"network": "a", "type": "x"}]}, "nics[0].type: 'x'"),
    ({"nics": [{"net": "a"}]}, "nics[0].net: unknown key"),
    ({"nics": [{"network": 5}]}, "nics[0].network: 5"),
    ({"disk_slots": ["floppy"]}, "disk_slots[0]: 'floppy'"),
    ({"disk_slots": ["sata:pvscsi"]}, "disk_slots[0]: 'sata:pvscsi'"),
    ({"disk_slots": ["ide", {"controller": "usb"}]}, "disk_slots[1].controller: 'usb'"),
    ({"product": "x"}, "product: 'x' is not allowed (a table"),
    ({"product": {"colour": 1}}, "product.colour: unknown key"),
    ({"product": {"vendor": 3}}, "product.vendor: 3"),
    ({"product": {"transport": "ftp"}}, "product.transport: 'ftp'"),
    ({"product": {"properties": {"key": "a"}}}, "product.properties: "),
    ({"product": {"properties": [{"key": "a"}, {"key": "b", "type": "float"}]}},
     "product.properties[1].type: 'float'"),
    ({"product": {"properties": [{"key": "a", "default": "x", "type": "boolean"}]}},
     "product.properties[0].default: 'x'"),
    ({"product": {"properties": [{"label": "no key"}]}}, "product.properties[0].key: missing"),
    ({"product": {"properties": [{"key": "a b"}]}}, "product.properties[0].key: 'a b'"),
    ({"product": {"properties": [{"key": "a", "user_configurable": "yes"}]}},
     "product.properties[0].user_configurable: 'yes'"),
    ({"product": {"properties": [{"key": "a", "colour": 1}]}},
     "product.properties[0].colour: unknown key"),
    ({"eula": "x", "eula_file": "y"}, "eula_file: give either"),
    ({"eula_file": "/nonexistent/eula.txt"}, "eula_file: '/nonexistent/eula.txt'"),
])
def test_errors_name_the_key_path(mapping: dict, prefix: str) -> None:
    with pytest.raises(UsageError) as info:
        vm_from_mapping({"name": "vm", **mapping})
    assert str(info.value).startswith(prefix), str(info.value)


def test_name_required_without_base() -> None:
    with pytest.raises(UsageError, match="^name: missing"):
        vm_from_mapping({"cpus": 2})
    assert vm_from_mapping({"cpus": 2}, base=VirtualMachine(name="b")).name == "b"


def test_eula_file_encoding(tmp_path: Path) -> None:
    path = tmp_path / "eula.txt"
    path.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UsageError, match="^eula_file: .*UTF-8"):
        vm_from_mapping({"name": "a", "eula_file": str(path)})
    path.write_bytes("\ufeffLicence\n".encode())
    assert vm_from_mapping({"name": "a", "eula_file": "eula.txt"},
                           base_dir=tmp_path).eula == "Licence\n"


def test_flags_override_file() -> None:
    base = vm_from_mapping(_as_plain(TOML.replace('eula_file = "legal/eula.txt"', "")))
    flags = {"cpus": 8, "memory": None, "scsi_type": "lsilogic", "nics": ["prod:vmxnet3"],
             "product": {"version": "2.0"}, "eula": "new terms"}
    vm = vm_from_mapping(flags, base=base)
    assert vm.cpus == 8
    assert vm.memory_mib == base.memory_mib == 4096          # None = flag not given
    assert vm.cores_per_socket == 2 and vm.os == "debian12-64" and vm.secure_boot
    # scsi_type alone keeps the file's controller kind.
    assert vm.default_slot == DiskSlot(controller="scsi", scsi_type="lsilogic")
    assert vm.disk_slots == base.disk_slots
    assert vm.nics == (Nic(network="prod", adapter="vmxnet3"),)
    assert base.product is not None and vm.product is not None
    assert vm.product.version == "2.0" and vm.product.vendor == "Example"
    assert vm.product.properties == base.product.properties
    assert vm.eula == "new terms"
    # Cross-field checks still apply to the combination.
    with pytest.raises(UsageError, match="^secure_boot"):
        vm_from_mapping({"firmware": "bios"}, base=base)
    # The base is left untouched (frozen values).
    assert base.cpus == 4
    # Controller flag with no base keeps the default SCSI model.
    assert vm_from_mapping({"name": "c", "controller": "sata"}).default_slot == DiskSlot(
        controller="sata")


def test_hw_version_forms() -> None:
    assert vm_from_mapping({"name": "a", "hw_version": "vmx-10"}).hw_version == 10
    assert vm_from_mapping({"name": "a", "hw_version": 19}).hw_version == 19
    with pytest.raises(UsageError, match="^hw_version: True"):
        vm_from_mapping({"name": "a", "hw_version": True})


def test_parse_nic_and_slot() -> None:
    assert parse_nic("VM Network") == Nic()
    assert parse_nic("lan:vmxnet3") == Nic(network="lan", adapter="vmxnet3")
    assert parse_nic("a:b:e1000e") == Nic(network="a:b", adapter="e1000e")
    for bad in (":vmxnet3", "", "lan:virtio"):
        with pytest.raises(UsageError, match="^nics: "):
            parse_nic(bad)
    assert parse_slot("nvme") == DiskSlot(controller="nvme")
    assert parse_slot("scsi:pvscsi") == DiskSlot(scsi_type="pvscsi")
    with pytest.raises(UsageError, match="^disk_slots: 'scsi:'"):
        parse_slot("scsi:")


# -- hostile spec files (issue 8) ------------------------------------------------------------

DEPTH = 100_000


@pytest.mark.parametrize("name,text", [
    ("list.json", "[" * DEPTH + "]" * DEPTH),
    ("value.json", '{"name": ' + "[" * DEPTH + "]" * DEPTH + "}"),
    ("flow.yaml", "name: " + "[" * DEPTH + "]" * DEPTH),
    ("map.yaml", "name: " + "{a: " * 20_000 + "1" + "}" * 20_000),
    ("array.toml", "name = " + "[" * DEPTH + "]" * DEPTH),
    ("table.toml", "name = " + "{a=" * 20_000 + "1" + "}" * 20_000),
])
def test_deep_nesting_is_a_usage_error_naming_the_file(tmp_path: Path, name: str,
                                                       text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        load_spec(path)  # RecursionError before
    assert str(path) in str(info.value) and "nested too deeply" in str(info.value)


def test_nesting_below_the_limit_is_reported_briefly(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_text('{"name": ' + "[" * 500 + "]" * 500 + "}")
    with pytest.raises(UsageError) as info:
        vm_from_mapping(load_spec(path))
    assert str(info.value).startswith("name: [[[") and len(str(info.value)) < 300


def test_yaml_alias_bomb_is_quoted_briefly(tmp_path: Path) -> None:
    # Nine levels of ten aliases: 10^9 strings if walked, a few hundred bytes on disk.
    lines = ["nics:", "  - &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += ["  - &a%d [%s]" % (i, ", ".join(["*a%d" % (i - 1)] * 10)) for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nname: *a8\n")
    start = time.perf_counter()
    with pytest.raises(UsageError) as info:
        vm_from_mapping(load_spec(path))
    assert time.perf_counter() - start < 2.0  # repr() of the value walked all of it before
    assert len(str(info.value)) < 400


def test_oversize_or_endless_spec_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    path.write_text('annotation = "%s"\n' % ("x" * (2 << 20)))
    with pytest.raises(UsageError) as info:
        load_spec(path)
    assert "larger than" in str(info.value)
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")
    with pytest.raises(UsageError):
        load_spec(zero)  # read to the limit, not forever


@pytest.mark.parametrize("name,text", [
    ("int.json", '{"cpus": %s}' % ("9" * 5000)),
    ("int.yaml", "cpus: %s\n" % ("9" * 5000)),
    ("int.toml", "cpus = %s\n" % ("9" * 5000)),
])
def test_huge_integers_are_usage_errors(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        vm_from_mapping(load_spec(path))
    assert len(str(info.value)) < 600
