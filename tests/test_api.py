"""The public surface: pinned __all__, and the README's library example runs as written."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest

import ovfstream

from ovfs_testlib import REPRODUCIBLE_ENGINE, write_disk

ROOT = Path(__file__).resolve().parents[1]


def test_all_is_pinned():
    assert sorted(ovfstream.__all__) == sorted([
        "__version__", "pack", "PackResult", "Signer", "pack_many", "BuildResult", "SpanCache",
        "repack", "RepackResult", "convert", "ConvertResult", "verify",
        "VerifyResult", "inspect", "InspectResult", "extract", "ExtractSummary",
        "VirtualMachine", "DiskSlot", "Nic", "Product", "Property", "OvfstreamError",
        "UsageError", "UnsupportedError", "FormatError", "VmdkFormatError", "TarFormatError",
        "ManifestFormatError", "CertificateFormatError", "OvfFormatError",
        "DigestMismatchError", "Finding"])
    for name in ovfstream.__all__:
        assert hasattr(ovfstream, name)


def test_readme_library_example(make_disk, tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    raw = make_disk("mixed")
    (tmp_path / "disk.raw").symlink_to(raw)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {})
    assert (tmp_path / "web.ova").stat().st_size > 0


def test_pack_from_several_threads(make_disk, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1")
    raw = make_disk("mixed")
    errors: list[BaseException] = []

    def job(i: int) -> None:
        try:
            (tmp_path / str(i)).mkdir()
            ovfstream.pack([raw], tmp_path / str(i) / "t.ova", parallel=2, fsync=False,
                           engine=REPRODUCIBLE_ENGINE)
        except BaseException as exc:  # collected and re-raised below on the test's thread
            errors.append(exc)
    threads = [threading.Thread(target=job, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    blobs = {(tmp_path / str(i) / "t.ova").read_bytes() for i in range(3)}
    assert len(blobs) == 1


def test_readme_spec_example_loads(tmp_path):
    from ovfstream.ovf.spec import load_spec, vm_from_mapping
    readme = (ROOT / "README.md").read_text()
    (tmp_path / "web.toml").write_text(re.search(r"```toml\n(.*?)```", readme, re.S).group(1))
    (tmp_path / "EULA.txt").write_text("Be nice.\n")
    vm = vm_from_mapping(load_spec(tmp_path / "web.toml"))
    assert vm.name == "web" and vm.secure_boot and vm.hw_version == 19
    assert [s.controller for s in vm.disk_slots] == ["nvme", "sata", "scsi"]
    assert vm.eula == "Be nice.\n" and vm.product is not None and vm.product.properties


def test_names_and_submodules_load_on_first_use():
    """The package imports nothing up front; its public names and its submodules are
    attributes all the same, and a function keeps its name over its module's."""
    code = (
        "import sys, ovfstream\n"
        "assert 'ovfstream.cert' not in sys.modules and 'ovfstream.pack' not in sys.modules\n"
        "assert ovfstream.errors.UsageError is ovfstream.UsageError\n"
        "assert ovfstream.cache.SpanCache is ovfstream.SpanCache\n"
        "import ovfstream.pack, ovfstream.verify\n"
        "assert callable(ovfstream.pack) and callable(ovfstream.verify)\n"
        "assert ovfstream.pack.__module__ == 'ovfstream.pack'\n"
        "assert set(ovfstream.__all__) <= set(dir(ovfstream))\n"
        "try:\n    ovfstream.no_such_name\nexcept AttributeError:\n    pass\n"
        "else:\n    raise SystemExit('no AttributeError')\n")
    import subprocess
    import sys
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("extra, loaded", [
    ((), set()),
    (("--target", "proxmox"), {"ovfstream.ovf.targets"}),
    (("--spec", "SPEC"), {"ovfstream.ovf.targets"}),  # the spec names a target
    (("--cache", "CACHE"), {"ovfstream.cache"}),
])
def test_a_pack_loads_only_what_it_uses(tmp_path, extra, loaded):
    """Start-up is paid on every job of a build farm: a pack imports the target presets only
    for a target (~3 ms), the span cache only with --cache, signing never unless asked."""
    import os
    import subprocess
    import sys
    disk = write_disk(tmp_path / "d.raw", 4 << 20, [(0, "text", 4096)])
    spec = tmp_path / "vm.toml"
    spec.write_text('name = "vm"\ntarget = "proxmox"\n')
    fill = {"SPEC": str(spec), "CACHE": str(tmp_path / "cache")}
    argv = ["pack", str(disk), "-o", str(tmp_path / "a.ova"), "-q",
            *[fill.get(a, a) for a in extra]]
    watched = ("ovfstream.ovf.targets", "ovfstream.cache", "ovfstream.cert")
    code = ("import sys\nfrom ovfstream import cli\n"
            "code = cli.main(%r)\n"
            "print(code, *sorted(m for m in %r if m in sys.modules))\n" % (argv, watched))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "SOURCE_DATE_EPOCH": "1"})
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["0", *sorted(loaded)], run.stdout + run.stderr
