"""Regression tests for defects that independent readers found (issue 7, section 3).

- ``ovf:populatedSize`` of a dense disk whose size is not a multiple of 64 KiB counts the
  partial last grain only up to the capacity (it may not exceed ``ovf:capacity``).
- The descriptor is in the dialect namespace-unaware readers understand: OVF elements in the
  default namespace, OVF attributes ``ovf:``-qualified, units on every Disk.  The reader here
  is ``xml.dom.minidom``, which matches qualified names exactly as the ``esxi-utils``
  package's OvfFile does (it compares ``prefix:local`` tag strings).
- ``pack -o -`` names its members after ``--name``.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
from pathlib import Path
from xml.dom import minidom

from ovfstream import cli
from ovfstream.ovf.model import VirtualMachine
from ovfstream.pack import pack, stream_stem
from ovfstream.verify import verify

from ovfs_testlib import write_disk


def _descriptor(ova: Path) -> bytes:
    with tarfile.open(ova) as t:
        first = t.getmembers()[0]
        assert first.name.endswith(".ovf")
        f = t.extractfile(first)
        assert f is not None
        return f.read()


def test_dense_disk_not_a_multiple_of_64k_packs_and_verifies(tmp_path):
    raw = write_disk(tmp_path / "d.raw", 1_000_000, [(0, "random", 1_000_000)])
    out = tmp_path / "d.ova"
    result = pack([raw], out, vm=VirtualMachine(name="d"), parallel=2)
    capacity = -(-1_000_000 // 512) * 512  # 1,000,448: whole sectors
    assert result.disks[0].stats.populated_bytes == capacity
    dom = minidom.parseString(_descriptor(out))
    (disk,) = dom.getElementsByTagName("Disk")
    assert disk.getAttribute("ovf:populatedSize") == str(capacity)
    assert disk.getAttribute("ovf:capacity") == str(capacity >> 10)  # 977 KiB exactly
    assert disk.getAttribute("ovf:capacityAllocationUnits") == "byte * 2^10"
    report = verify(out, deep=True)
    assert report.ok, [str(f) for f in report.findings]
    assert not [f for f in report.findings if f.rule == "disk.populated"]


def test_sparse_partial_last_grain_counts_only_the_capacity(tmp_path):
    # Data only in the partial last grain: populated = the bytes of that grain inside the disk.
    size = 3 * (1 << 20) + 4096 + 512
    raw = write_disk(tmp_path / "t.raw", size, [(size - 1000, "random", 1000)])
    result = pack([raw], tmp_path / "t.ova", vm=VirtualMachine(name="t"), parallel=1)
    assert result.disks[0].stats.populated_bytes == size % 65536
    assert verify(tmp_path / "t.ova", deep=True).ok


def test_descriptor_reads_namespace_unaware(tmp_path):
    raw = write_disk(tmp_path / "w.raw", 4 << 20, [(0, "text", 100_000)])
    out = tmp_path / "w.ova"
    assert cli.main(["pack", str(raw), "-o", str(out), "--name", "web", "--nic",
                     "VM Network:e1000", "--quiet"]) == 0
    text = _descriptor(out)
    assert b"<ovf:" not in text and b"</ovf:" not in text
    dom = minidom.parseString(text)
    env = dom.documentElement
    assert env.tagName == "Envelope"
    assert env.getAttribute("xmlns") == "http://schemas.dmtf.org/ovf/envelope/1"
    (ref,) = dom.getElementsByTagName("References")
    (file_el,) = ref.getElementsByTagName("File")
    assert file_el.getAttribute("ovf:href") == "w-disk1.vmdk"
    (disk,) = dom.getElementsByTagName("Disk")
    assert disk.getAttribute("ovf:capacityAllocationUnits") == "byte * 2^20"
    assert disk.getAttribute("ovf:capacity") == "4"
    (system,) = dom.getElementsByTagName("VirtualSystem")
    assert system.getAttribute("ovf:id") == "web"
    (network,) = dom.getElementsByTagName("Network")
    assert network.getAttribute("ovf:name") == "VM Network"
    items = dom.getElementsByTagName("Item")
    types = sorted(int(i.getElementsByTagName("rasd:ResourceType")[0].firstChild.data)
                   for i in items)
    assert types == [3, 4, 6, 10, 17]


def test_stream_members_follow_the_vm_name(tmp_path):
    raw = write_disk(tmp_path / "s.raw", 2 << 20, [(0, "text", 70_000)])
    proc = subprocess.run([sys.executable, "-m", "ovfstream", "pack", str(raw), "-o", "-",
                           "--name", "web-01", "--quiet"], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as t:
        names = t.getnames()
    assert names == ["web-01.ovf", "web-01.mf", "web-01-disk1.vmdk"]
    proc = subprocess.run([sys.executable, "-m", "ovfstream", "pack", str(raw), "-o", "-",
                           "--quiet"], capture_output=True, timeout=120)
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as t:
        assert t.getnames()[0] == "appliance.ovf"


def test_stream_stem_is_a_safe_member_name():
    assert stream_stem("web") == "web"
    assert stream_stem("Web Server (prod)") == "Web_Server_prod"
    assert stream_stem("[/bold]") == "bold"
    assert stream_stem("../../etc") == "etc"
    assert stream_stem("日本") == "appliance"
    assert len(stream_stem("x" * 300)) == 80
