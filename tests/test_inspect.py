"""``inspect`` (library and CLI): our packages in every form, a bare VMDK, every real-world
descriptor of ../shared/ovf-corpus (disks absent), and hostile archives (refused, exit 1)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from ovfstream.errors import OvfFormatError, TarFormatError, VmdkFormatError
from ovfstream.convert import convert
from ovfstream.inspect import InspectResult, inspect
from ovfstream.ovf.model import Nic, VirtualMachine
from ovfstream.pack import pack

from ovfs_testlib import DISKS, SHARED, needs_shared, write_disk
from test_verify import (HOSTILE, LAUGHS, XXE, Built, flip, hostile_descriptor_ova,
                         hostile_ova, run_cli, write_tar)

CORPUS = SHARED / "ovf-corpus"
ALL = sorted(CORPUS.rglob("*.ovf"))


def labels(result: InspectResult) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for label, value in result.rows():
        assert isinstance(label, str) and isinstance(value, str)
        out.setdefault(label.strip(), []).append(value)
    return out


def check_json(result: InspectResult) -> dict[str, object]:
    doc = result.as_dict()
    assert json.loads(json.dumps(doc)) == doc
    return doc


def test_own_ova(tmp_path: Path, signer: object, capsys: pytest.CaptureFixture[str]) -> None:
    raws = [write_disk(tmp_path / "a.raw", *DISKS["mixed"]),
            write_disk(tmp_path / "b.raw", *DISKS["odd_size"])]
    out = tmp_path / "web.ova"
    vm = VirtualMachine(name="webvm", cpus=3, memory_mib=3072, nics=(Nic(network="lan"),))
    packed = pack(raws, out, vm=vm, fsync=False, signer=signer)  # type: ignore[arg-type]
    result = inspect(out)
    assert result.form == "ova" and result.path == str(out)
    assert [n for n, _ in result.members] == ["web.ovf", "web.mf", "web.cert", "web-disk1.vmdk",
                                             "web-disk2.vmdk"]
    assert [(n, s) for n, s in result.members] == [(f.name, f.size) for f in packed.files]
    assert result.manifest == "web.mf" and result.certificate == "web.cert"
    rows = labels(result)
    assert rows["Manifest"] == ["web.mf"] and rows["Certificate"] == ["web.cert"]
    assert len(rows["Member"]) == 5 and len(rows["Disk"]) >= 2
    text = "\n".join(v for values in rows.values() for v in values)
    assert "webvm" in text and "3072 MiB" in text and "lan" in text
    doc = check_json(result)
    descriptor = doc["descriptor"]
    assert isinstance(descriptor, dict)
    code, stdout, err = run_cli(capsys, "inspect", out, "--json")
    assert code == 0, err
    assert json.loads(stdout) == doc
    code, stdout, err = run_cli(capsys, "inspect", out)
    assert code == 0 and "webvm" in stdout and "web-disk2.vmdk" in stdout


@pytest.fixture(scope="module")
def signer() -> object:
    from test_verify import make_signer
    return make_signer()


def test_folder_form_and_bare_ovf(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = write_disk(tmp_path / "a.raw", *DISKS["odd_size"])
    folder = tmp_path / "pkg"
    folder.mkdir()
    pack([raw], folder / "app.ovf", fsync=False)
    for target in (folder, folder / "app.ovf"):
        result = inspect(target)
        assert result.form == "ovf" and result.manifest == "app.mf" and result.certificate is None
        assert [n for n, _ in result.members] == ["app.ovf", "app-disk1.vmdk", "app.mf"]
        check_json(result)
        assert run_cli(capsys, "inspect", target, "--json")[0] == 0
    # the descriptor alone (disks absent) still inspects
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(folder / "app.ovf", lone / "app.ovf")
    result = inspect(lone / "app.ovf")
    assert result.members == [("app.ovf", (folder / "app.ovf").stat().st_size)]
    assert result.manifest is None and "Disk" in labels(result)


def test_bare_vmdk(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = write_disk(tmp_path / "a.raw", *DISKS["odd_size"])
    vmdk = tmp_path / "a.vmdk"
    convert(raw, vmdk, fsync=False, adapter_type="ide")
    result = inspect(vmdk)
    assert result.form == "vmdk" and result.descriptor is None and result.vmdk is not None
    capacity = DISKS["odd_size"][0]
    assert result.vmdk["Capacity"] == "%d bytes" % (-(-capacity // 512) * 512)
    assert result.vmdk["Create type"] == "streamOptimized" and result.vmdk["Adapter"] == "ide"
    assert result.vmdk["Version"] == 3 and result.vmdk["GD"] == "at end (stream)"
    assert result.members == [("a.vmdk", vmdk.stat().st_size)] and not result.findings
    rows = labels(result)
    assert "Manifest" not in rows and rows["CID"] == [result.vmdk["CID"]]
    doc = check_json(result)
    code, stdout, _err = run_cli(capsys, "inspect", vmdk, "--json")
    assert code == 0 and json.loads(stdout) == doc
    vmdk.write_bytes(flip(vmdk.read_bytes(), 0))            # magic
    with pytest.raises(VmdkFormatError) as info:
        inspect(vmdk)
    assert info.value.rule == "vmdk.header.magic"
    code, _out, err = run_cli(capsys, "inspect", vmdk)
    assert code == 1 and "[vmdk.header.magic]" in err


@needs_shared("ovf-corpus")
def test_corpus_is_there() -> None:
    assert len(ALL) >= 26, ALL


@needs_shared("ovf-corpus")
@pytest.mark.parametrize("path", ALL, ids=lambda p: str(p.relative_to(CORPUS)))
def test_every_corpus_descriptor(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = inspect(path)
    assert result.form == "ovf" and result.descriptor is not None
    rows = labels(result)
    assert rows["Package"] == ["%s (ovf)" % os.path.abspath(path)] and "OVF" in rows
    assert result.members[0] == (path.name, path.stat().st_size)
    doc = check_json(result)
    code, stdout, err = run_cli(capsys, "inspect", path, "--json")
    assert code == 0, err
    assert json.loads(stdout) == doc
    code, stdout, err = run_cli(capsys, "inspect", path)
    assert code == 0 and stdout.strip(), err


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tar_member(small: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            case: str) -> None:
    rule, needle = HOSTILE[case]
    path = hostile_ova(tmp_path / "pkg", small, case)
    with pytest.raises(TarFormatError) as info:
        inspect(path)
    assert info.value.rule == rule and needle in info.value.detail
    assert info.value.path == str(path)
    code, out, err = run_cli(capsys, "inspect", path)
    assert code == 1 and "[%s]" % rule in err and str(path) in err and not out
    assert run_cli(capsys, "inspect", path, "--json")[0] == 1


@pytest.mark.parametrize("descriptor", [XXE, LAUGHS], ids=["xxe", "billion-laughs"])
def test_hostile_descriptor(small: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           descriptor: bytes) -> None:
    path = hostile_descriptor_ova(tmp_path, small, descriptor)
    with pytest.raises(OvfFormatError) as info:
        inspect(path)
    assert info.value.rule == "ovf.xml.dtd"
    code, out, err = run_cli(capsys, "inspect", path, "--json")
    assert code == 1 and "[ovf.xml.dtd]" in err and "root:" not in out + err


def test_inspect_is_lax_about_member_order(small: Built, tmp_path: Path) -> None:
    """inspect is lax: a package verify would fail (members out of order) still summarises."""
    path = write_tar(tmp_path / "small.ova", [small.members[2], small.members[0], small.members[1]])
    result = inspect(path)
    assert [n for n, _ in result.members] == ["small-disk1.vmdk", "small.ovf", "small.mf"]
    assert result.descriptor is not None


def test_cli_usage_and_bad_input(small: Built, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "inspect")[0] == 2
    assert run_cli(capsys, "inspect", tmp_path / "x.ova", "--deep")[0] == 2
    assert run_cli(capsys, "inspect", tmp_path / "missing.ova")[0] == 1
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "a.ovf").write_bytes(b"<x/>")
    (tmp_path / "two" / "b.ovf").write_bytes(b"<x/>")
    code, _out, err = run_cli(capsys, "inspect", tmp_path / "two")
    assert code == 2 and "exactly one .ovf" in err
    cut = tmp_path / "cut.ova"
    cut.write_bytes(small.path.read_bytes()[:60000])
    code, _out, err = run_cli(capsys, "inspect", cut)
    assert code == 1 and "[ova.tar.truncated]" in err
    notxml = tmp_path / "n.ovf"
    notxml.write_bytes(b"\x00\x01 not xml")
    assert run_cli(capsys, "inspect", notxml)[0] == 1


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Built:
    from test_verify import _build
    return _build(tmp_path_factory.mktemp("small"), "small", ["odd_size"])

