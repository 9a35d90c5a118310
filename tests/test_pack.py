"""pack end to end, read back by the real readers: tarfile, GNU tar, the DMTF XSDs, qemu-img."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import resource
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from lxml import etree

from ovfstream import cli
from ovfstream.errors import UsageError
from ovfstream.ovf.model import DiskSlot, Nic, Product, Property, VirtualMachine
from ovfstream.pack import Signer, pack

from ovfs_testlib import REPRODUCIBLE_ENGINE, assert_descriptor_valid, make_signer, run, tool

NS = {"ovf": "http://schemas.dmtf.org/ovf/envelope/1",
      "ovf2": "http://schemas.dmtf.org/ovf/envelope/2",
      "rasd": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"}


def _members(path: Path) -> list[tarfile.TarInfo]:
    with tarfile.open(path) as t:
        return t.getmembers()


def _read(path: Path, name: str) -> bytes:
    with tarfile.open(path) as t:
        f = t.extractfile(name)
        assert f is not None
        return f.read()


def _no_pax(path: Path) -> None:
    data = path.read_bytes()
    pos = 0
    while pos + 512 <= len(data):
        block = data[pos:pos + 512]
        if block == bytes(512):
            break
        assert block[156:157] == b"0", "type %r at %d" % (block[156:157], pos)
        assert block[257:263] == b"ustar\0"
        size = int(block[124:136].rstrip(b"\0 ") or b"0", 8)
        pos += 512 + size + (-size % 512)
    assert data[pos:pos + 1024] == bytes(1024)


@pytest.mark.interop
def test_single_disk_ova_read_by_real_readers(make_disk, qemu_img, tmp_path):
    raw = make_disk("mixed")
    out = tmp_path / "web.ova"
    vm = VirtualMachine(name="web", cpus=2, memory_mib=4096, os="debian12-64",
                        nics=(Nic(network="lan", adapter="vmxnet3"),))
    result = pack([raw], out, vm=vm, parallel=2, fsync=False)
    members = _members(out)
    assert [m.name for m in members] == ["web.ovf", "web.mf", "web-disk1.vmdk"]
    assert all(m.type == tarfile.REGTYPE and not m.pax_headers for m in members)
    _no_pax(out)
    listing = run(tool("tar"), "-tvf", out)
    assert listing.returncode == 0 and listing.stdout.count("\n") == 3

    descriptor = _read(out, "web.ovf")
    root = etree.fromstring(descriptor)
    files = root.findall("ovf:References/ovf:File", NS)
    sizes = {m.name: m.size for m in members}
    assert [(f.get("{%s}href" % NS["ovf"]), int(f.get("{%s}size" % NS["ovf"]))) for f in files] \
        == [("web-disk1.vmdk", sizes["web-disk1.vmdk"])]
    assert_descriptor_valid(descriptor, ("1.0.0", "1.1.1"))

    manifest = _read(out, "web.mf").decode()
    expected = "".join("SHA256(%s)= %s\n" % (n, hashlib.sha256(_read(out, n)).hexdigest())
                       for n in ("web.ovf", "web-disk1.vmdk"))
    assert manifest == expected
    assert {f.name: f.digest for f in result.files}["web-disk1.vmdk"] in manifest

    vmdk = tmp_path / "extracted.vmdk"
    vmdk.write_bytes(_read(out, "web-disk1.vmdk"))
    assert qemu_img("check", vmdk).returncode == 0
    cmp = qemu_img("compare", "-f", "raw", "-F", "vmdk", raw, vmdk)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    disk = root.find("ovf:DiskSection/ovf:Disk", NS)
    assert disk.get("{%s}populatedSize" % NS["ovf"]) == str(result.disks[0].stats.populated_bytes)


def test_member_equals_convert_output(make_disk, tmp_path):
    from ovfstream import convert
    raw = make_disk("odd_size")
    out = tmp_path / "a.ova"
    pack([raw], out, fsync=False, engine=REPRODUCIBLE_ENGINE)
    bare = tmp_path / "a-disk1.vmdk"
    convert(raw, bare, fsync=False, engine=REPRODUCIBLE_ENGINE)
    assert _read(out, "a-disk1.vmdk") == bare.read_bytes()


def test_reproducible_across_runs_parallel_and_stdout(make_disk, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    raw = make_disk("mixed")
    digests = set()
    for n in (1, 2, 3):
        out = tmp_path / str(n) / "appliance.ova"
        out.parent.mkdir()
        pack([raw], out, parallel=n, fsync=False, engine=REPRODUCIBLE_ENGINE)
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    stream = io.BytesIO()
    pack([raw], stream, parallel=2, spool_dir=tmp_path, engine=REPRODUCIBLE_ENGINE)
    digests.add(hashlib.sha256(stream.getvalue()).hexdigest())
    assert len(digests) == 1
    assert _members(out)[0].mtime == 1700000000
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("ovfstream-")]  # spool cleaned


def test_default_mtime_is_newest_input(make_disk, tmp_path, monkeypatch):
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    a, b = make_disk("odd_size"), make_disk("random")
    os.utime(a, (1600000000, 1600000000))
    os.utime(b, (1650000000, 1650000000))
    out = tmp_path / "t.ova"
    pack([a, b], out, fsync=False)
    assert {m.mtime for m in _members(out)} == {1650000000}


@pytest.mark.interop
def test_several_disks_controllers_and_ovf2(make_disk, qemu_img, tmp_path):
    raws = [make_disk("mixed"), make_disk("odd_size"), make_disk("random")]
    vm = VirtualMachine(name="multi", hw_version=19, firmware="efi", secure_boot=True,
                        disk_slots=(DiskSlot(controller="nvme"), DiskSlot(controller="sata"),
                                    DiskSlot(controller="scsi", scsi_type="pvscsi")),
                        cdrom=True,
                        product=Product(product="Multi", vendor="ACME", version="1.0",
                                        properties=(Property(key="hostname", default="multi"),)),
                        eula="Use it well.")
    for version, ns, schemas in (("1.0", NS["ovf"], {"1.0.0", "1.1.1"}),
                                 ("2.0", NS["ovf2"], {"2.0.1"})):
        out = tmp_path / ("multi%s.ova" % version)
        pack(raws, out, vm=vm, ovf_version=version, fsync=False)
        names = [m.name for m in _members(out)]
        assert names[:2] == ["multi%s.ovf" % version, "multi%s.mf" % version]
        assert names[2:] == ["multi%s-disk%d.vmdk" % (version, i) for i in (1, 2, 3)]
        descriptor = _read(out, names[0])
        assert_descriptor_valid(descriptor, sorted(schemas))
        root = etree.fromstring(descriptor)
        hrefs = [f.get("{%s}href" % ns) for f in root.iter("{%s}File" % ns)]
        assert hrefs == names[2:]
        for i, raw in enumerate(raws):
            vmdk = tmp_path / ("d%d.vmdk" % i)
            vmdk.write_bytes(_read(out, names[2 + i]))
            assert qemu_img("compare", "-f", "raw", "-F", "vmdk", raw, vmdk).returncode == 0


def test_ovf_folder_form(make_disk, tmp_path):
    raw = make_disk("odd_size")
    folder = tmp_path / "out"
    folder.mkdir()
    pack([raw], folder / "app.ovf", fsync=False)
    assert sorted(p.name for p in folder.iterdir()) == ["app-disk1.vmdk", "app.mf", "app.ovf"]
    manifest = (folder / "app.mf").read_text()
    for name in ("app.ovf", "app-disk1.vmdk"):
        assert "SHA256(%s)= %s\n" % (name, hashlib.sha256((folder / name).read_bytes()).hexdigest()) in manifest
    assert_descriptor_valid((folder / "app.ovf").read_bytes(), ("1.0.0",))


@pytest.mark.parametrize("algorithm,length", [("sha1", 40), ("sha512", 128)])
def test_digest_choice(make_disk, tmp_path, algorithm, length):
    out = tmp_path / "d.ova"
    pack([make_disk("odd_size")], out, digest=algorithm, fsync=False)
    lines = _read(out, "d.mf").decode().splitlines()
    assert len(lines) == 2
    for line in lines:
        token, _, hexdigest = line.partition(")= ")
        assert token.startswith(algorithm.upper() + "(") and len(hexdigest) == length
        name = token[len(algorithm) + 1:]
        assert hashlib.new(algorithm, _read(out, name)).hexdigest() == hexdigest


def test_signed_package(make_disk, tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    signer = make_signer()
    key_public = x509.load_pem_x509_certificate(signer.certificate_chain_pem).public_key()
    out = tmp_path / "s.ova"
    pack([make_disk("odd_size")], out, signer=signer, fsync=False)
    assert [m.name for m in _members(out)][:3] == ["s.ovf", "s.mf", "s.cert"]
    mf, cert_file = _read(out, "s.mf"), _read(out, "s.cert").decode()
    first = cert_file.splitlines()[0]
    assert first.startswith("SHA256(s.mf)= ")
    signature = bytes.fromhex(first.split("= ")[1])
    key_public.verify(signature, mf, padding.PKCS1v15(), hashes.SHA256())  # raises if bad
    assert "-----BEGIN CERTIFICATE-----" in cert_file


def test_failed_pack_leaves_nothing(make_disk, tmp_path, monkeypatch):
    from ovfstream.sources import raw as source_mod
    good = make_disk("random")
    second = make_disk("mixed")
    out = tmp_path / "fail.ova"
    out_dir = tmp_path / "f"
    out_dir.mkdir()
    real = source_mod.RawSource.read_span

    def failing(self, plan, buf):
        if self.path == str(second):
            raise OSError(5, "Input/output error", str(second))
        return real(self, plan, buf)
    monkeypatch.setattr(source_mod.RawSource, "read_span", failing)
    for target in (out, out_dir / "fail.ovf"):
        with pytest.raises(OSError) as info:
            pack([good, second], target, fsync=False)
        assert str(second) in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".raw") == ["f"]
    assert list(out_dir.iterdir()) == []


def test_unreadable_disk_is_a_clear_error(make_disk, tmp_path):
    out = tmp_path / "x.ova"
    code = cli.main(["pack", str(make_disk("random")), str(tmp_path), "-o", str(out), "--quiet"])
    assert code == 2 and not out.exists()
    code = cli.main(["pack", str(make_disk("random")), str(tmp_path / "missing.raw"), "-o",
                     str(out), "--quiet"])
    assert code == 1 and not out.exists()


def test_full_file_system_midway(make_disk, tmp_path):
    raw = make_disk("random")
    out = tmp_path / "full.ova"
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20));"
              "from ovfstream.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", script, "pack", str(raw), "-o", str(out), "--quiet"],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == 1, proc.stderr
    assert "File too large" in proc.stderr
    assert re.search(r"\.full\.ova\.[0-9a-f]+\.partial", proc.stderr)  # names the temporary
    assert sorted(p.name for p in tmp_path.iterdir()) == [raw.name]  # no OUT, no temporary


def test_cli_json_and_spec_file(make_disk, tmp_path, capsys):
    spec = tmp_path / "vm.toml"
    spec.write_text('name = "fromspec"\ncpus = 4\nmemory = 2048\nos = "ubuntu-64"\n'
                    'nics = ["lan:vmxnet3"]\n[product]\nproduct = "Web"\nvendor = "ACME"\n')
    out = tmp_path / "j.ova"
    code = cli.main(["pack", str(make_disk("odd_size")), "-o", str(out), "--spec", str(spec),
                     "--cpus", "2", "--json"])
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    assert [f["name"] for f in doc["files"]] == ["j.ovf", "j.mf", "j-disk1.vmdk"]
    assert doc["files"][2]["size"] == _members(out)[2].size
    disk = doc["disks"][0]
    assert disk["capacity_bytes"] == 3 * 2**20 + 12800 and len(disk["content_id"]) == 32
    root = etree.fromstring(_read(out, "j.ovf"))
    assert root.find("ovf:VirtualSystem/ovf:Name", NS).text == "fromspec"
    quantities = {i.findtext("rasd:ResourceType", namespaces=NS): i.findtext("rasd:VirtualQuantity", namespaces=NS)
                  for i in root.iter("{%s}Item" % NS["ovf"])}
    assert quantities["3"] == "2" and quantities["4"] == "2048"  # the flag beat the file


def test_bad_options_name_the_key(make_disk, tmp_path, capsys):
    raw = str(make_disk("odd_size"))
    for args, needle in ((["--memory", "3"], "memory"), (["--nic", "x:bogus"], "nics[0]"),
                         (["--os", "plan9"], "os"), (["--digest", "md5"], "--digest"),
                         (["--ovf-version", "3.0"], "--ovf-version")):
        code = cli.main(["pack", raw, "-o", str(tmp_path / "b.ova"), *args])
        assert code == 2
        assert needle in capsys.readouterr().err
    with pytest.raises(UsageError):
        pack([raw], tmp_path / "b.tar")
