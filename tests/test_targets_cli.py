"""The command line of issue 11: ``ovfstream targets [NAME] [--json]``, ``pack --target``
(and ``target`` in a spec file), ``verify --target``; and the rule ids of the target lint."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ovfstream import cli
from ovfstream.ovf import targets
from ovfstream.rules import ALL_RULES

MIB = 1 << 20
ROOT = Path(__file__).resolve().parents[1]


def _disk(tmp_path: Path, name: str = "d.raw") -> Path:
    path = tmp_path / name
    with open(path, "wb") as f:
        f.truncate(4 * MIB)
        f.write(b"boot" * 1024)
    return path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_every_target(capsys) -> None:
    for command in ("pack", "verify"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert ", ".join(targets.TARGETS) in text, command


def test_targets_prints_the_table(capsys) -> None:
    code, out, err = _run(capsys, "targets")
    assert code == 0 and err == ""
    for name in targets.TARGETS:
        assert re.search(r"^%s: " % name, out, re.M), name
    assert out.count("why: ") >= 9 * len(targets.TARGETS)   # every value has its reason
    assert "proxmox/pve-storage:src/PVE/GuestImport/OVF.pm" in out
    code, out, _ = _run(capsys, "targets", "proxmox")
    assert code == 0 and out.startswith("proxmox: ") and "vsphere8:" not in out
    assert re.search(r"^  refuses +ovf_version 2\.0\|0\.9: ", out, re.M)


def test_targets_json(capsys) -> None:
    code, out, _ = _run(capsys, "targets", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["operation"] == "targets"
    assert [t["name"] for t in doc["targets"]] == list(targets.TARGETS)
    for t in doc["targets"]:
        for key in ("ovf_version", "digest", "hw_version", "system_type", "controller", "nic",
                    "firmware", "os", "leave_out"):
            setting = t["settings"][key]
            assert set(setting) == {"value", "reason", "source"} and setting["source"], key
        assert all(lim["rule"] in ALL_RULES for lim in t["limits"])
        assert all(check["rule"] in ALL_RULES for check in t["lint"])


def test_targets_unknown_name_is_a_usage_error(capsys) -> None:
    code, _, err = _run(capsys, "targets", "esx")
    assert code == 2 and "targets NAME: 'esx' is not allowed (one of: generic, vsphere8" in err


def test_pack_target_conflicts_name_flag_and_target(capsys, tmp_path) -> None:
    raw = str(_disk(tmp_path))
    out = str(tmp_path / "x.ova")
    for args, needle in (
            (["--target", "vsphere6", "--firmware", "efi", "--secure-boot"],
             "secure_boot: needs hw_version 13 or newer, got 11; target vsphere6 sets vmx-11"),
            (["--target", "proxmox", "--ovf-version", "2.0"],
             "--ovf-version 2.0: target proxmox: Proxmox reads only the envelope/1"),
            (["--target", "xcpng", "--firmware", "efi"],
             "--firmware efi: target xcpng: Xen Orchestra ignores"),
            (["--target", "workstation", "--scsi-type", "pvscsi"],
             "--controller scsi:pvscsi: target workstation"),
            (["--target", "vsphere7", "--hw-version", "vmx-20"],
             "--hw-version 20: target vsphere7 runs at most vmx-19"),
            (["--target", "nope"], "--target: 'nope' is not allowed (one of: generic")):
        code, _, err = _run(capsys, "pack", raw, "-o", out, "--quiet", *args)
        assert code == 2 and needle in err, (args, err)
        assert "Traceback" not in err
    assert not Path(out).exists()


def test_pack_target_warns_prints_hint_and_json(capsys, tmp_path) -> None:
    raw = str(_disk(tmp_path))
    code, _, err = _run(capsys, "pack", raw, "-o", str(tmp_path / "vb.ova"), "--target",
                        "virtualbox", "--firmware", "efi", "--controller", "nvme")
    assert code == 0
    assert "ovfstream: warning: --controller nvme: target virtualbox" in err
    assert "ovfstream: warning: --firmware efi: target virtualbox" in err
    assert "virtualbox import: VBoxManage import vb.ova" in err
    code, out, err = _run(capsys, "pack", raw, "-o", str(tmp_path / "p.ova"), "--target",
                          "proxmox", "--cdrom", "--json")
    doc = json.loads(out)
    assert code == 0 and doc["target"] == "proxmox" and doc["digest"] == "sha256"
    assert len(doc["warnings"]) == 1 and "CD-ROM" in doc["warnings"][0]
    assert "warning" not in err            # --json carries them
    # The preset's digest, and the default without --target.
    code, out, _ = _run(capsys, "pack", raw, "-o", str(tmp_path / "s.ova"), "--target",
                        "vsphere6", "--json")
    assert json.loads(out)["digest"] == "sha1"
    code, out, _ = _run(capsys, "pack", raw, "-o", str(tmp_path / "n.ova"), "--json")
    doc = json.loads(out)
    assert (doc["digest"], doc["ovf_version"], doc["target"], doc["warnings"]) == (
        "sha256", "1.0", None, [])


def test_spec_file_target_and_flag_override(capsys, tmp_path) -> None:
    raw = str(_disk(tmp_path))
    spec = tmp_path / "vm.toml"
    spec.write_text('name = "web"\ntarget = "vsphere8"\nnics = ["VM Network"]\n')
    code, out, _ = _run(capsys, "pack", raw, "-o", str(tmp_path / "a.ova"), "--spec",
                        str(spec), "--json")
    assert code == 0 and json.loads(out)["target"] == "vsphere8"
    code, out, _ = _run(capsys, "inspect", str(tmp_path / "a.ova"), "--json")
    vs = json.loads(out)["descriptor"]["systems"][0]
    assert (vs["hw_version"], vs["nics"][0]["adapter_type"]) == ("vmx-20", "VmxNet3")
    # --target wins over the spec's target; the spec's other keys stay.
    code, out, _ = _run(capsys, "pack", raw, "-o", str(tmp_path / "b.ova"), "--spec",
                        str(spec), "--target", "proxmox", "--json")
    assert code == 0 and json.loads(out)["target"] == "proxmox"
    code, out, _ = _run(capsys, "inspect", str(tmp_path / "b.ova"), "--json")
    vs = json.loads(out)["descriptor"]["systems"][0]
    assert (vs["name"], vs["disks"][0]["controller"], vs["nics"][0]["adapter_type"]) == (
        "web", "sata", "E1000")
    spec.write_text('name = "web"\ntarget = "esx9"\n')
    code, _, err = _run(capsys, "pack", raw, "-o", str(tmp_path / "c.ova"), "--spec",
                        str(spec))
    assert code == 2 and "target (in %s): 'esx9' is not allowed" % spec in err


def test_verify_target_exit_codes_and_json(capsys, tmp_path) -> None:
    raw = str(_disk(tmp_path))
    vb = str(tmp_path / "vb.ova")
    assert _run(capsys, "pack", raw, "-o", vb, "--target", "virtualbox", "--quiet")[0] == 0
    code, _, err = _run(capsys, "verify", vb, "--target", "virtualbox")
    assert code == 0 and "OK, 0 error(s), 0 warning(s)" in err
    code, _, err = _run(capsys, "verify", vb, "--target", "vsphere7")
    assert code == 1
    assert "[target.hw_version]" in err and "Unsupported hardware family 'virtualbox-2.2'" in err
    code, out, _ = _run(capsys, "verify", vb, "--target", "vsphere7", "--json")
    doc = json.loads(out)
    assert doc["target"] == "vsphere7" and not doc["ok"]
    rules = [f["rule"] for f in doc["findings"] if f["rule"].startswith("target.")]
    assert rules and len(rules) == len(set(rules))            # one finding per rule
    code, _, err = _run(capsys, "verify", vb, "--target", "esx")
    assert code == 2 and "--target: 'esx' is not allowed" in err


def test_target_rule_ids_are_documented() -> None:
    used: set[str] = set()
    for path in (ROOT / "src" / "ovfstream").rglob("*.py"):
        used |= set(re.findall(r'"(target\.[a-z_]+)"', path.read_text()))
    assert used == set(targets.RULES)           # every id used is listed, every listed is used
    assert set(targets.RULES) <= set(ALL_RULES)
    docs = (ROOT / "docs" / "rules.md").read_text()
    assert all("`%s`" % rule in docs for rule in targets.RULES)
