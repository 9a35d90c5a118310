"""Dask farm (farm.py, build.py): a real scheduler and two worker processes on this machine.

Whole jobs on the workers (build --executor dask://), one disk's spans encoded by the
workers (pack --executor dask://), both byte-identical to local runs; a worker killed in the
middle of a pack either is recovered from (same bytes) or fails cleanly with no output.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

import ovfstream
from ovfstream import cli
from ovfstream.build import pack_many
from ovfstream.farm import WorkerLostError, open_executor

from ovfs_testlib import MIB, REPRODUCIBLE_ENGINE, write_disk

distributed = pytest.importorskip("distributed", reason="Dask distributed is not installed "
                                  "(pip install 'ovfstream[dask]'; the test extra has it)")

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(autouse=True)
def _epoch(monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1")


@pytest.fixture(scope="module")
def cluster():
    """Scheduler + 2 worker processes (1 thread each), stopped at the end of the module."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(SRC) + (os.pathsep + old if old else "")
    # no SOURCE_DATE_EPOCH in the workers: build passes the client's to them
    try:
        with distributed.LocalCluster(processes=True, n_workers=2, threads_per_worker=1,
                                      dashboard_address=None, host="127.0.0.1",
                                      silence_logs=50) as lc:
            with distributed.Client(lc, timeout=30) as client:
                client.wait_for_workers(2, timeout=30)
                yield lc, client
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def _address(lc) -> str:
    return "dask://" + lc.scheduler_address.removeprefix("tcp://")


def _local_pack(raw: Path, out: Path, **kw) -> bytes:
    out.parent.mkdir(parents=True, exist_ok=True)
    ovfstream.pack([raw], out, fsync=False, **kw)
    return out.read_bytes()


@pytest.mark.native_core  # the span cache holds reproducible (native ISA-L) bytes only
def test_pack_spread_over_workers_gives_the_local_bytes(cluster, make_disk, tmp_path, capsys):
    lc, _ = cluster
    raw = make_disk("mixed")
    local = _local_pack(raw, tmp_path / "local" / "a.ova", parallel=2)
    out = tmp_path / "farm" / "a.ova"
    out.parent.mkdir()
    assert cli.main(["pack", str(raw), "-o", str(out), "--executor", _address(lc), "-q",
                     "--cache", str(tmp_path / "cache")]) == 0
    assert out.read_bytes() == local
    # the workers filled the shared cache; a local pack now hits it
    again = _local_pack(raw, tmp_path / "again" / "a.ova", cache=tmp_path / "cache")
    assert again == local
    assert len(list((tmp_path / "cache").glob("chunks-v2/*/*.span"))) == 4


def test_build_sends_whole_jobs_to_the_workers(cluster, make_disk, tmp_path, capsys):
    lc, _ = cluster
    (tmp_path / "a.raw").symlink_to(make_disk("mixed"))
    (tmp_path / "b.raw").symlink_to(make_disk("odd_size"))
    (tmp_path / "jobs.yaml").write_text(
        "appliance:\n"
        "  - {output: out/a.ova, disks: [a.raw], name: a, cpus: 2}\n"
        "  - {output: out/b.ova, disks: [b.raw, a.raw], name: b, target: proxmox}\n"
        "  - {output: out/c.ova, disks: [missing.raw], name: c}\n")
    (tmp_path / "out").mkdir()
    assert cli.main(["build", str(tmp_path / "jobs.yaml"), "--executor", _address(lc),
                     "--json", "--parallel", "1", "--engine", REPRODUCIBLE_ENGINE]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert [j["ok"] for j in doc["jobs"]] == [True, True, False]
    assert "missing.raw" in doc["jobs"][2]["error"]
    for name, disks, extra in (("a", ["a.raw"], ["--cpus", "2"]),
                               ("b", ["b.raw", "a.raw"], ["--target", "proxmox"])):
        single = tmp_path / "single" / (name + ".ova")
        single.parent.mkdir(exist_ok=True)
        assert cli.main(["pack", *[str(tmp_path / d) for d in disks], "-o", str(single),
                         "--name", name, *extra, "-q", "--engine", REPRODUCIBLE_ENGINE]) == 0
        assert (tmp_path / "out" / (name + ".ova")).read_bytes() == single.read_bytes()
    assert not (tmp_path / "out" / "c.ova").exists()


def test_a_worker_killed_mid_pack(cluster, tmp_path):
    """Kill one worker process once the first span is written, with the rest in flight:
    Dask reruns its spans elsewhere (same bytes) or the pack fails with WorkerLostError;
    never a wrong or partial output."""
    lc, client = cluster
    raw = write_disk(tmp_path / "big.raw", 16 * 32 * MIB,
                     [(i * 32 * MIB, "text", MIB) for i in range(16)])
    local = _local_pack(raw, tmp_path / "local" / "a.ova", engine="zlib")
    pids = list(client.run(os.getpid).values())
    out = tmp_path / "farm" / "a.ova"
    out.parent.mkdir()
    killed: list[int] = []

    def kill_once(name: str, n: int, total: int) -> None:
        if not killed:
            killed.append(pids[0])
            os.kill(pids[0], signal.SIGKILL)
    try:
        with open_executor(_address(lc)) as executor:
            ovfstream.pack([raw], out, fsync=False, engine="zlib", executor=executor,
                           progress=kill_once)
    except WorkerLostError as exc:
        assert "worker was lost" in str(exc)
        assert not out.exists()
    else:
        assert out.read_bytes() == local
    assert killed
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".partial")]
    client.wait_for_workers(2, timeout=30)  # the nanny restarts the killed worker
    assert pids[0] not in client.run(os.getpid).values()


def test_a_worker_killed_mid_build_job(cluster, tmp_path):
    """Kill the worker running a whole job: Dask reruns the job on the other worker (same
    bytes as a local pack) or reports it failed; no output and no temporary is left over."""
    lc, client = cluster
    client.wait_for_workers(2, timeout=30)
    raw = write_disk(tmp_path / "big.raw", 16 * 32 * MIB,
                     [(i * 32 * MIB, "text", MIB) for i in range(16)])
    local = _local_pack(raw, tmp_path / "local" / "a.ova", engine="zlib", parallel=1)
    (tmp_path / "out").mkdir()
    (tmp_path / "jobs.json").write_text(json.dumps(
        {"appliance": [{"output": "out/a.ova", "disks": ["big.raw"]}]}))
    pids = client.run(os.getpid)
    killed: list[int] = []

    def kill_the_busy_worker() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not killed:
            busy = [w for w, tasks in client.processing().items() if tasks]
            if busy and list((tmp_path / "out").glob(".a.ova.*.partial")):
                killed.append(pids[busy[0]])
                os.kill(pids[busy[0]], signal.SIGKILL)
            time.sleep(0.02)
    killer = threading.Thread(target=kill_the_busy_worker)
    killer.start()
    try:
        with open_executor(_address(lc)) as executor:
            result = pack_many(tmp_path / "jobs.json", executor=executor, engine="zlib",
                               parallel=1, fsync=False)
    finally:
        killer.join()
    assert killed, "the job ended before a worker could be killed"
    outcome = result.jobs[0]
    if outcome.ok:
        assert (tmp_path / "out" / "a.ova").read_bytes() == local
    else:
        assert outcome.kind == "worker" and not (tmp_path / "out" / "a.ova").exists()
    assert not list((tmp_path / "out").glob(".*.partial"))
    client.wait_for_workers(2, timeout=30)


def test_spread_over_a_process_pool_too(make_disk, tmp_path):
    """pack(executor=) takes any concurrent.futures.Executor."""
    raw = make_disk("odd_size")
    local = _local_pack(raw, tmp_path / "local" / "a.ova", engine=REPRODUCIBLE_ENGINE)
    with ProcessPoolExecutor(2) as pool:
        farm = _local_pack(raw, tmp_path / "farm" / "a.ova", executor=pool,
                           engine=REPRODUCIBLE_ENGINE)
    assert farm == local


def test_a_worker_that_sees_another_file_fails_the_pack(tmp_path):
    from ovfstream.errors import FormatError
    from ovfstream.farm import SpanTask, encode_remote_span
    from ovfstream.sources import open_source
    raw = write_disk(tmp_path / "a.raw", 4 * MIB, [(0, "text", MIB)])
    with open_source(raw) as src:
        plan = src.spans()[0]
        st = src.files[0].stat
    engine = ovfstream.engine.get_engine("zlib")
    task = SpanTask(str(raw), "auto", 4 * MIB, st.st_size, st.st_mtime_ns + 1, "zlib", 6,
                    engine.version, None)
    with pytest.raises(FormatError, match="source.changed"):
        encode_remote_span(task, plan)
    bad = SpanTask(str(raw), "auto", 4 * MIB, st.st_size, st.st_mtime_ns, "zlib", 6,
                   "zlib 0.0", None)
    with pytest.raises(ovfstream.UnsupportedError, match="could differ"):
        encode_remote_span(bad, plan)


def test_executor_names(tmp_path):
    with pytest.raises(ovfstream.UsageError, match="allowed local or dask://HOST:PORT"):
        with open_executor("spark://x:1"):
            pass
    with open_executor("local") as executor:
        assert executor is None
    with pytest.raises(WorkerLostError, match="cannot reach the scheduler"):
        with open_executor("dask://127.0.0.1:9", timeout=1):
            pass
