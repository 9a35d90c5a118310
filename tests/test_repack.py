"""repack: OVA/OVF folder -> OVA/OVF folder; stream VMDK grains copied, never recompressed.

Packages are made by pack (and by hand around qemu-img's VMDKs); results are read back by
qemu-img (check, compare), tarfile, verify --strict --deep and the DMTF XSDs."""

from __future__ import annotations

import io
import os
import re
import sys
import tarfile
from pathlib import Path

import pytest
from lxml import etree

from ovfstream import cli
from ovfstream.errors import (DigestMismatchError, FormatError, TarFormatError,
                              UnsupportedError, UsageError)
from ovfstream.ova.tar import END_OF_ARCHIVE, encode_header, padding_for
from ovfstream.ovf.model import Product, Property, VirtualMachine
from ovfstream.ovf.reader import parse_descriptor_tree
from ovfstream.pack import pack
from ovfstream.repack import _checked_carried, _one_system, _vm_of, repack
from ovfstream.package import open_package
from ovfstream.verify import verify
from ovfstream.vmdk.copy import copy_stream_vmdk
from ovfstream.vmdk.layout import GD_AT_END
from ovfstream.vmdk.reader import VmdkReader

from ovfs_testlib import SHARED, assert_descriptor_valid, make_signer, needs_shared

MIB = 1 << 20
MTIME = 1_700_000_000

VM = VirtualMachine(
    name="web", cpus=2, memory_mib=2048, annotation="Web front end", eula="You agree.",
    product=Product(product="Web Appliance", vendor="ACME", version="1.4",
                    properties=(Property(key="hostname", default="web", label="Host name"),)))


@pytest.fixture
def packed(make_disk, tmp_path):
    disk = make_disk("mixed")
    out = tmp_path / "src" / "web.ova"
    out.parent.mkdir()
    pack([disk], out, vm=VM, engine="zlib", mtime=MTIME, fsync=False)
    return disk, out


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf.getmembers()}  # type: ignore[union-attr]


def test_repack_of_a_pack_output_gives_the_same_bytes(packed, tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    _, src = packed
    (tmp_path / "out").mkdir()
    result = repack(src, tmp_path / "out" / "web.ova", fsync=False)
    assert (tmp_path / "out" / "web.ova").read_bytes() == src.read_bytes()
    assert [d.copied is not None for d in result.disks] == [True]
    assert result.disks[0].copied.input_layout == "spec, copied as is"  # type: ignore[union-attr]
    assert set(result.carried) == {"ProductSection", "AnnotationSection", "EulaSection"}
    assert result.warnings == () and result.mtime == MTIME


def test_ova_to_folder_to_ova_gives_the_same_bytes(packed, tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    _, src = packed
    folder = tmp_path / "folder"
    folder.mkdir()
    repack(src, folder / "web.ovf", fsync=False)
    assert sorted(os.listdir(folder)) == ["web-disk1.vmdk", "web.mf", "web.ovf"]
    assert {int(os.stat(folder / n).st_mtime) for n in os.listdir(folder)} == {MTIME}
    (tmp_path / "again").mkdir()
    repack(folder, tmp_path / "again" / "web.ova", fsync=False)
    assert (tmp_path / "again" / "web.ova").read_bytes() == src.read_bytes()


def test_copy_stream_vmdk_of_our_layout_gives_our_bytes(packed):
    _, src = packed
    data = members(src)["web-disk1.vmdk"]
    out = io.BytesIO()
    stats = copy_stream_vmdk(VmdkReader(io.BytesIO(data)), out.write,
                             file_name="web-disk1.vmdk", adapter_type="lsilogic",
                             populated_bytes=0)
    assert out.getvalue() == data and stats.ids_carried and stats.grains_copied > 0


def test_a_new_name_writes_a_new_head_over_the_same_grains(packed, tmp_path, monkeypatch):
    # A new name changes the VMDK head only; renamed and back under the first name, the
    # package is the original again.
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    _, src = packed
    first = repack(src, tmp_path / "other.ova", fsync=False)
    assert first.disks[0].copied.input_layout.startswith("spec, new head")  # type: ignore[union-attr]
    (tmp_path / "back").mkdir()
    repack(tmp_path / "other.ova", tmp_path / "back" / "web.ova", fsync=False)
    assert (tmp_path / "back" / "web.ova").read_bytes() == src.read_bytes()


def test_overrides_ovf2_sha1_signed(packed, tmp_path, qemu_img):
    disk, src = packed
    out = tmp_path / "db.ova"
    result = repack(src, out, overrides={"name": "db", "memory": 4096, "cpus": 4},
                    ovf_version="2.0", digest="sha1", signer=make_signer(), fsync=False)
    assert [f.name for f in result.files] == ["db.ovf", "db.mf", "db.cert", "db-disk1.vmdk"]
    check = verify(out, strict=True, deep=True)
    assert check.ok, [str(f) for f in check.findings]
    files = members(out)
    assert files["db.mf"].startswith(b"SHA1(db.ovf)= ")
    descriptor = files["db.ovf"]
    assert_descriptor_valid(descriptor, ["2.0.1"])
    root = etree.fromstring(descriptor)
    assert etree.QName(root).namespace == "http://schemas.dmtf.org/ovf/envelope/2"
    text = descriptor.decode()
    assert "<Name>db</Name>" in text and ">4096<" in text and "4 virtual CPU(s)" in text
    # the carried sections moved into the envelope/2 namespace, as written
    assert '<Property ovf:key="hostname"' in text and "<License>You agree.</License>" in text
    # the disk is the same disk, and its grains are the input's (not recompressed)
    vmdk = tmp_path / "db-disk1.vmdk"
    vmdk.write_bytes(files["db-disk1.vmdk"])
    assert qemu_img("check", vmdk).returncode == 0
    assert qemu_img("compare", "-f", "raw", "-F", "vmdk", disk, vmdk).returncode == 0
    old = VmdkReader(io.BytesIO(members(src)["web-disk1.vmdk"]))
    new = VmdkReader(io.BytesIO(files["db-disk1.vmdk"]))
    assert list(old.grains()) and [(l, p) for l, _, _, p in old.grains()] == \
        [(l, p) for l, _, _, p in new.grains()]
    assert new.descriptor.cid == old.descriptor.cid
    assert new.descriptor.ddb["ddb.uuid"] == old.descriptor.ddb["ddb.uuid"]


def _hand_ova(path: Path, descriptor: bytes, disk_name: str, disk: bytes) -> None:
    """An OVA of a descriptor and one disk, without a manifest."""
    with open(path, "wb") as f:
        for name, data in ((path.stem + ".ovf", descriptor), (disk_name, disk)):
            f.write(encode_header(name, len(data), mtime=MTIME) + data +
                    bytes(padding_for(len(data))))
        f.write(END_OF_ARCHIVE)


def _with_disk(src: Path, tmp_path: Path, vmdk: Path) -> Path:
    """pack's package with its disk replaced by ``vmdk`` (the File size fixed up)."""
    files = members(src)
    data = vmdk.read_bytes()
    descriptor = re.sub(rb'ovf:size="\d+"', b'ovf:size="%d"' % len(data), files["web.ovf"])
    out = tmp_path / "hand.ova"
    _hand_ova(out, descriptor, "web-disk1.vmdk", data)
    return out


def test_qemu_img_stream_vmdk_is_reframed_not_recompressed(packed, tmp_path, qemu_img):
    disk, src = packed
    theirs = tmp_path / "qemu.vmdk"
    assert qemu_img("convert", "-f", "raw", "-O", "vmdk", "-o", "subformat=streamOptimized",
                    disk, theirs).returncode == 0
    assert VmdkReader(theirs).header.gd_offset_sectors != GD_AT_END  # GD at the head
    hand = _with_disk(src, tmp_path, theirs)
    out = tmp_path / "out.ova"
    result = repack(hand, out, fsync=False)
    assert result.disks[0].copied is not None and result.disks[0].copied.input_layout == "head"
    vmdk = tmp_path / "out.vmdk"
    vmdk.write_bytes(members(out)["out-disk1.vmdk"])
    reader = VmdkReader(vmdk)
    assert reader.header.gd_offset_sectors == GD_AT_END
    assert reader.verify().ok
    assert qemu_img("check", vmdk).returncode == 0
    assert qemu_img("compare", "-f", "raw", "-F", "vmdk", disk, vmdk).returncode == 0
    # qemu's compressed grains, byte for byte
    assert [p for *_, p in VmdkReader(theirs).grains()] == [p for *_, p in reader.grains()]
    assert verify(out, strict=True, deep=True).ok


def test_monolithic_sparse_member_is_reencoded(packed, tmp_path, qemu_img):
    disk, src = packed
    sparse = tmp_path / "sparse.vmdk"
    assert qemu_img("convert", "-f", "raw", "-O", "vmdk", disk, sparse).returncode == 0
    hand = _with_disk(src, tmp_path, sparse)
    out = tmp_path / "out.ova"
    result = repack(hand, out, engine="zlib", fsync=False)
    assert result.disks[0].copied is None and result.disks[0].encoded is not None
    vmdk = tmp_path / "out.vmdk"
    vmdk.write_bytes(members(out)["out-disk1.vmdk"])
    assert qemu_img("compare", "-f", "raw", "-F", "vmdk", disk, vmdk).returncode == 0


def test_raw_disk_member_is_reencoded(packed, tmp_path, qemu_img):
    disk, src = packed
    hand = _with_disk(src, tmp_path, disk)
    out = tmp_path / "out.ova"
    result = repack(hand, out, engine="zlib", fsync=False)
    assert result.disks[0].encoded is not None
    vmdk = tmp_path / "out.vmdk"
    vmdk.write_bytes(members(out)["out-disk1.vmdk"])
    assert qemu_img("compare", "-f", "raw", "-F", "vmdk", disk, vmdk).returncode == 0


# -- hostile inputs: refused, nothing left under the output name ----------------------------

def _nothing_left(folder: Path, before: set[str]) -> None:
    assert set(os.listdir(folder)) == before


def test_truncated_ova_is_refused(packed, tmp_path):
    _, src = packed
    cut = tmp_path / "cut.ova"
    cut.write_bytes(src.read_bytes()[:-5000])
    before = set(os.listdir(tmp_path))
    with pytest.raises((TarFormatError, FormatError)):
        repack(cut, tmp_path / "out.ova", fsync=False)
    _nothing_left(tmp_path, before)


def test_manifest_mismatch_is_refused_by_default(packed, tmp_path, capsys):
    _, src = packed
    data = bytearray(src.read_bytes())
    at = data.index(b"KDMV") + 512 * 130      # inside the first grain's payload
    data[at] ^= 0xFF
    bad = tmp_path / "bad.ova"
    bad.write_bytes(bytes(data))
    before = set(os.listdir(tmp_path))
    with pytest.raises(DigestMismatchError) as exc:
        repack(bad, tmp_path / "out.ova", fsync=False)
    assert exc.value.rule == "repack.manifest" and "web-disk1.vmdk" in str(exc.value)
    _nothing_left(tmp_path, before)
    assert cli.main(["repack", str(bad), "-o", str(tmp_path / "out.ova"), "-q"]) == 1
    assert "[repack.manifest]" in capsys.readouterr().err
    _nothing_left(tmp_path, before)


def test_manifest_mismatch_of_a_member_copied_as_is_is_refused(packed, tmp_path):
    # Same name: the member would be copied as it is with the manifest's digest, which the
    # background check must refute before anything is committed.
    _, src = packed
    data = bytearray(src.read_bytes())
    data[data.index(b"KDMV") + 512 * 130] ^= 0xFF
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    bad = tmp_path / "in" / "web.ova"
    bad.write_bytes(bytes(data))
    with pytest.raises(DigestMismatchError):
        repack(bad, tmp_path / "out" / "web.ova", fsync=False)
    assert os.listdir(tmp_path / "out") == []
    result = repack(bad, tmp_path / "out" / "web.ova", check_manifest=False, fsync=False)
    assert any("manifest does not match" in w for w in result.warnings)
    assert verify(tmp_path / "out" / "web.ova").ok  # the new manifest hashes what was written


def test_damaged_grain_marker_leaves_nothing(packed, tmp_path):
    _, src = packed
    data = bytearray(src.read_bytes())
    grain = data.index(b"KDMV") + 512 * 128    # the first grain marker
    data[grain:grain + 8] = (7).to_bytes(8, "little")  # an LBA that is not grain-aligned
    bad = tmp_path / "bad.ova"
    bad.write_bytes(bytes(data))
    before = set(os.listdir(tmp_path))
    with pytest.raises(FormatError):
        repack(bad, tmp_path / "out.ova", check_manifest=False, fsync=False)
    _nothing_left(tmp_path, before)


def test_cli_repack_json_and_stream(packed, tmp_path, capsys):
    _, src = packed
    out = tmp_path / "x.ova"
    assert cli.main(["repack", str(src), "-o", str(out), "--memory", "8192", "--json"]) == 0
    import json
    doc = json.loads(capsys.readouterr().out)
    assert doc["operation"] == "repack" and doc["disks"][0]["action"] == "copied"
    assert b">8192<" in members(out)["x.ovf"]


# -- carried sections -----------------------------------------------------------------------

def _corpus() -> list[Path]:
    folder = SHARED / "ovf-corpus"
    return sorted(folder.rglob("*.ovf")) if folder.is_dir() else []


@needs_shared("ovf-corpus", "ovf-schemas")
@pytest.mark.parametrize("path", _corpus(), ids=lambda p: p.name)
def test_corpus_unmodeled_sections_survive_and_stay_valid(path, tmp_path):
    data = path.read_bytes()
    try:
        desc, findings, root = parse_descriptor_tree(data, path=str(path))
    except FormatError:
        pytest.skip("not readable")
    pkg = open_package(path)
    try:
        vs, vs_el = _one_system(pkg, desc, root)
    except UnsupportedError:
        pytest.skip("not one OVF 1.x/2.x VirtualSystem")
    if not vs.disks:
        pytest.skip("no attached disk")
    warnings: list[str] = []
    try:
        vm, carried = _vm_of(vs, vs_el, root, vs.disks, "corpus", warnings)
    except UsageError as exc:  # a VM the model cannot hold is refused with a message
        assert "override it with the VM flags" in str(exc)
        return
    for version in ("1.0", "2.0"):
        names = tuple("corpus-disk%d.vmdk" % (i + 1) for i in range(len(vs.disks)))
        kept_vm, kinds = _checked_carried(vm, carried, names, [MIB] * len(names), version,
                                          warnings)
        from ovfstream.pack import disk_entries
        from ovfstream.ovf.writer import render_descriptor
        out = render_descriptor(kept_vm, disk_entries(kept_vm, names, [MIB] * len(names),
                                                      [None] * len(names)),
                                ovf_version=version)
        assert_descriptor_valid(out, ["1.0.0", "1.1.1"] if version == "1.0" else ["2.0.1"])
        # every carried kind is in the output or named in a warning
        for c in carried:
            assert c in kept_vm.carried or any(c.kind in w for w in warnings)
        for c in kept_vm.carried:
            assert ("<" + c.kind).encode() in out or (":" + c.kind).encode() in out


def test_repack_to_a_stream_gives_the_ova_bytes(packed, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    _, src = packed
    out = io.BytesIO()
    result = repack(src, out, fsync=False)  # members named after the VM: web
    assert result.form == "ova-stream" and out.getvalue() == src.read_bytes()


def test_a_product_override_replaces_the_carried_section(packed, tmp_path):
    _, src = packed
    out = tmp_path / "p.ova"
    repack(src, out, overrides={"product": {"product": "Other", "vendor": "X"},
                                "annotation": "new"}, fsync=False)
    text = members(out)["p.ovf"].decode()
    assert text.count("<ProductSection") == 1 and "<Product>Other</Product>" in text
    assert text.count("<AnnotationSection") == 1 and "<Annotation>new</Annotation>" in text
    assert "<License>You agree.</License>" in text  # still carried
    assert_descriptor_valid(members(out)["p.ovf"])


def test_rule_repack_input_a_disk_file_the_package_lacks(packed, tmp_path):
    _, src = packed
    hand = tmp_path / "hand.ova"
    _hand_ova(hand, members(src)["web.ovf"], "other.bin", b"x")
    with pytest.raises(FormatError) as exc:
        repack(hand, tmp_path / "out.ova", fsync=False)
    assert exc.value.rule == "repack.input" and "not in the package" in str(exc.value)
    assert not (tmp_path / "out.ova").exists()


def test_ovf_09_is_refused_clearly(tmp_path):
    (tmp_path / "old.ovf").write_bytes(
        b'<?xml version="1.0"?><Envelope xmlns="http://www.vmware.com/schema/ovf/1/envelope">'
        b'<References/><Content xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        b'xsi:type="VirtualSystem_Type" id="a"><Info>x</Info></Content></Envelope>')
    with pytest.raises(UnsupportedError) as exc:
        repack(tmp_path / "old.ovf", tmp_path / "out.ova", fsync=False)
    assert "one VirtualSystem" in str(exc.value)


def test_qcow2_member_is_reencoded(packed, tmp_path, qemu_img):
    disk, src = packed
    image = tmp_path / "disk.qcow2"
    assert qemu_img("convert", "-f", "raw", "-O", "qcow2", disk, image).returncode == 0
    out = tmp_path / "out.ova"
    result = repack(_with_disk(src, tmp_path, image), out, engine="zlib", fsync=False)
    assert result.disks[0].encoded is not None
    vmdk = tmp_path / "out.vmdk"
    vmdk.write_bytes(members(out)["out-disk1.vmdk"])
    assert qemu_img("compare", "-f", "raw", "-F", "vmdk", disk, vmdk).returncode == 0


# -- the byte copy: one read serves the manifest check, the tables plan it ----------------

def test_renamed_copy_of_a_tampered_member_is_refused(packed, tmp_path, capsys):
    # A new name: a new head over the input's bytes, the input digested as it is copied;
    # one byte changed in a grain fails the check and leaves nothing.
    _, src = packed
    data = bytearray(src.read_bytes())
    data[data.index(b"KDMV") + 512 * 130] ^= 0x01
    bad = tmp_path / "in.ova"
    bad.write_bytes(bytes(data))
    (tmp_path / "out").mkdir()
    with pytest.raises(DigestMismatchError):
        repack(bad, tmp_path / "out" / "renamed.ova", fsync=False)
    assert os.listdir(tmp_path / "out") == []
    assert cli.main(["repack", str(bad), "-o", str(tmp_path / "out" / "renamed.ova"),
                     "--name", "renamed", "-q"]) == 1
    assert "[repack.manifest]" in capsys.readouterr().err
    assert os.listdir(tmp_path / "out") == []


@pytest.mark.parametrize("tables", ["misplaced", "unreadable"])
def test_tables_the_planner_cannot_trust_are_copied_from_the_walk(packed, tmp_path,
                                                                  monkeypatch, tables):
    """Markers that disagree with the tables (caught while copying: LayoutDiffers), or
    tables that do not read (a GD entry outside the file): the marker walk plans the copy,
    and the bytes are the same."""
    from ovfstream.errors import VmdkFormatError
    module = sys.modules["ovfstream.repack"]  # (the package exports a function of that name)
    real = module.table_grains
    calls = []

    def planner(reader):
        calls.append(reader)
        if tables == "unreadable":
            raise VmdkFormatError("vmdk.gd.entry", "GD entry 0 points outside the file")
        grains = real(reader)  # the first grain said to hold another LBA
        lba, pos, size = grains[0]
        return [(lba + 128, pos, size)] + grains[1:]
    monkeypatch.setattr(module, "table_grains", planner)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    _, src = packed
    (tmp_path / "out").mkdir()
    result = repack(src, tmp_path / "out" / "web.ova", fsync=False)
    assert (tmp_path / "out" / "web.ova").read_bytes() == src.read_bytes()
    assert len(calls) == 1 and result.disks[0].copied.grains_copied > 0  # type: ignore[union-attr]


@pytest.mark.parametrize("direct", ["0", "1"])
def test_repack_bytes_do_not_depend_on_direct_io(packed, tmp_path, monkeypatch, direct):
    monkeypatch.setenv("OVFSTREAM_DIRECT_IO", direct)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    _, src = packed
    (tmp_path / "out").mkdir()
    repack(src, tmp_path / "out" / "web.ova", fsync=False)
    renamed = repack(src, tmp_path / "out" / "other.ova", overrides={"memory": 4096},
                     fsync=False)
    assert (tmp_path / "out" / "web.ova").read_bytes() == src.read_bytes()
    assert verify(tmp_path / "out" / "other.ova", deep=True).ok
    assert renamed.disks[0].copied.payload_bytes > 0  # type: ignore[union-attr]
