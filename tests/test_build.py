"""ovfstream build / pack_many: jobs files, byte identity with single packs, failures."""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

import ovfstream
from ovfstream import cli
from ovfstream.build import load_jobs, pack_many
from ovfstream.errors import UsageError

JOBS = """
[[appliance]]
output = "out/web.ova"
disks = ["web.raw"]
name = "web"
cpus = 2
nics = ["VM Network:vmxnet3"]
eula_file = "EULA.txt"

[appliance.product]
product = "Web"
vendor = "ACME"

[[appliance]]
output = "out/db/db.ovf"
disks = ["db.raw", "web.raw"]
target = "vsphere8"
memory = 2048
"""


@pytest.fixture(autouse=True)
def _epoch(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1")


@pytest.fixture
def farm(make_disk, tmp_path):
    (tmp_path / "web.raw").symlink_to(make_disk("mixed"))
    (tmp_path / "db.raw").symlink_to(make_disk("odd_size"))
    (tmp_path / "EULA.txt").write_text("Be nice.\n")
    (tmp_path / "out" / "db").mkdir(parents=True)
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(JOBS)
    return jobs


def _single_packs(tmp_path: Path) -> dict[str, bytes]:
    """The same appliances from `ovfstream pack` with spec files of the same keys."""
    (tmp_path / "single" / "db").mkdir(parents=True)
    (tmp_path / "web.json").write_text(json.dumps({
        "name": "web", "cpus": 2, "nics": ["VM Network:vmxnet3"], "eula_file": "EULA.txt",
        "product": {"product": "Web", "vendor": "ACME"}}))
    (tmp_path / "db.yaml").write_text(yaml.safe_dump({"target": "vsphere8", "memory": 2048}))
    assert cli.main(["pack", str(tmp_path / "web.raw"), "-o", str(tmp_path / "single/web.ova"),
                     "--spec", str(tmp_path / "web.json"), "-q"]) == 0
    assert cli.main(["pack", str(tmp_path / "db.raw"), str(tmp_path / "web.raw"), "-o",
                     str(tmp_path / "single/db/db.ovf"), "--spec", str(tmp_path / "db.yaml"),
                     "-q"]) == 0
    return {p.name: p.read_bytes() for p in (tmp_path / "single").rglob("*") if p.is_file()}


def _built(tmp_path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}


def test_build_gives_the_bytes_of_single_packs(farm, tmp_path, capsys):
    assert cli.main(["build", str(farm), "--json", "--parallel", "2"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["succeeded"] == 2 and doc["failed"] == 0
    assert [j["job"] for j in doc["jobs"]] == ["appliance[0] (web)", "appliance[1]"]
    assert doc["jobs"][1]["result"]["target"] == "vsphere8"
    built = _built(tmp_path)
    assert sorted(built) == ["db-disk1.vmdk", "db-disk2.vmdk", "db.mf", "db.ovf", "web.ova"]
    assert built == _single_packs(tmp_path)
    assert b"Be nice." in built["web.ova"]


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_pack_many_on_any_executor(farm, tmp_path, kind):
    single = _single_packs(tmp_path)
    pool = ThreadPoolExecutor(2) if kind == "thread" else ProcessPoolExecutor(2)
    with pool:
        result = pack_many(farm, executor=pool, parallel=1, fsync=False,
                           cache=tmp_path / "cache")
    assert result.failed == 0 and result.cache["entries"] > 0
    assert _built(tmp_path) == single


def test_yaml_and_json_jobs_files(farm, tmp_path):
    import tomllib
    table = tomllib.loads(JOBS)
    (tmp_path / "jobs.yaml").write_text(yaml.safe_dump(table))
    (tmp_path / "jobs.json").write_text(json.dumps(table))
    for path in ("jobs.yaml", "jobs.json"):
        jobs = load_jobs(tmp_path / path)
        assert [j.output for j in jobs] == [str(tmp_path / "out/web.ova"),
                                            str(tmp_path / "out/db/db.ovf")]
        assert jobs[0].vm.eula == "Be nice.\n" and jobs[1].target == "vsphere8"


def test_one_failing_job_does_not_stop_the_others(farm, tmp_path, capsys):
    text = JOBS.replace('disks = ["db.raw", "web.raw"]', 'disks = ["db.raw", "missing.raw"]')
    farm.write_text(text)
    assert cli.main(["build", str(farm), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [j["ok"] for j in doc["jobs"]] == [True, False]
    assert doc["jobs"][1]["kind"] == "os" and "missing.raw" in doc["jobs"][1]["error"]
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == ["web.ova"]
    assert cli.main(["build", str(farm)]) == 1
    err = capsys.readouterr().err
    assert "FAILED appliance[1]" in err and "1 built, 1 failed" in err


def test_a_bad_disk_format_fails_that_job_only(farm, tmp_path, qemu_img):
    qemu_img("create", "-q", "-f", "vdi", str(tmp_path / "bad.vdi"), "1M")
    farm.write_text(JOBS.replace('disks = ["db.raw", "web.raw"]', 'disks = ["bad.vdi"]'))
    result = pack_many(farm, fsync=False)
    assert [o.ok for o in result.jobs] == [True, False]
    assert result.jobs[1].kind in ("unsupported", "format")
    assert not (tmp_path / "out/db/db.ovf").exists()


@pytest.mark.parametrize("bad, message", [
    ('color = "red"', "appliance[0] (web): unknown key 'color'"),
    ('cpus = "many"', "appliance[0] (web): cpus"),
    ('output = "out/web.zip"', "must end in .ova or .ovf"),
])
def test_a_bad_job_is_a_usage_error_before_anything_runs(farm, tmp_path, bad, message):
    key = bad.split(" =")[0]
    lines = [line for line in JOBS.splitlines() if not line.startswith(key + " =")]
    at = lines.index('name = "web"')
    farm.write_text("\n".join(lines[:at] + [bad] + lines[at:]))
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        pack_many(farm)
    assert not list((tmp_path / "out").rglob("*.ova"))
    assert cli.main(["build", str(farm)]) == 2


def test_two_jobs_writing_one_output_and_a_job_writing_an_input(farm, tmp_path):
    farm.write_text(JOBS.replace("out/db/db.ovf", "out/web.ova"))
    with pytest.raises(UsageError, match=r"appliance\[0\] \(web\) and appliance\[1\] both write"):
        load_jobs(farm)
    farm.write_text(JOBS + '\n[[appliance]]\noutput = "x/y.ova"\ndisks = ["out/db/db.mf"]\n')
    with pytest.raises(UsageError, match=r"appliance\[2\] reads .*db.mf, which appliance\[1\]"):
        load_jobs(farm)


@pytest.mark.parametrize("text, message", [
    ("", "appliance: missing"),
    ("appliance = 3", "appliance: missing or not a list"),
    ("[[appliance]]\ndisks = ['a']", r"appliance\[0\].output: missing"),
    ("[[appliance]]\noutput = 'a.ova'", r"appliance\[0\].disks: missing"),
    ("other = 1", "unknown key 'other'"),
    ("appliance = [1]", r"appliance\[0\] must be a table"),
])
def test_jobs_file_shape(tmp_path, text, message):
    (tmp_path / "j.toml").write_text(text)
    with pytest.raises(UsageError, match=message):
        load_jobs(tmp_path / "j.toml")


def test_errors_cross_process_boundaries_whole():
    """A worker's FormatError reaches the client with its rule, file and offset."""
    import pickle
    from ovfstream.sources.base import SourceChangedError
    exc = SourceChangedError("source.changed", "shrank", path="/x/a.raw", offset=4096)
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is SourceChangedError and str(back) == str(exc)
    assert (back.rule, back.path, back.offset) == ("source.changed", "/x/a.raw", 4096)
