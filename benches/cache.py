"""Span cache: a rebuild of an OS image in which a few MiB changed, cold against warm.

    python benches/cache.py --image /tmp/farm-bench/os.img --work /tmp/farm-bench \
        [--repeat 5] [--parallel 2] [--change-mib 4] [--command pack|convert] [--out DIR]

The image (make_image.py) is copied (sparse) to WORK/rebuild.img and packed once with
``--cache WORK/cache`` to fill the cache: last night's build.  Each repeat then overwrites
``--change-mib`` MiB of the copy's data, in 1 MiB pieces spread over the image (new random
bytes every repeat, so those spans are misses every time), and runs, interleaved:

- cold: ``ovfstream pack rebuild.img -o cold.ova --parallel N`` (no cache)
- warm: the same with ``--cache WORK/cache``

Outputs go to ``--out`` (default WORK): a tmpfs there (/dev/shm) takes a shared disk's
writeback out of the comparison.  Each run writes over the previous run's output, like a
nightly build over last night's package: the rename then frees the old file, which costs
~0.1 s per 0.5 GB on a file system mounted with ``discard`` (this project's machine).
``--fresh-outputs`` deletes it before each timed run instead, as versioned output names do.
Both are subprocesses (wall includes the interpreter start and the output's fsync), so
they compare what a build farm's job sees.  Both outputs are checked byte-identical on every
repeat (a fast wrong answer fails).  Prints medians, the speedup, the cache hits and misses
and the load average before and after (the machine may be shared: the A/B runs interleave).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

MIB = 1 << 20
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare import ovfs_env  # noqa: E402  (benches/ is not a package)


def _data_extents(path: Path) -> list[tuple[int, int]]:
    out, fd = [], os.open(path, os.O_RDONLY)
    try:
        size, pos = os.fstat(fd).st_size, 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fd, start, os.SEEK_HOLE)
            out.append((start, end))
            pos = end
    finally:
        os.close(fd)
    return out


def _change(path: Path, extents: list[tuple[int, int]], mib: int, seed: int) -> list[int]:
    """Overwrite ``mib`` 1 MiB pieces inside data extents, spread over the image."""
    rng = random.Random(seed)
    big = [(s, e) for s, e in extents if e - s >= MIB]
    picks = [big[(i * len(big)) // mib] for i in range(mib)]
    offsets = []
    with open(path, "r+b") as f:
        for start, end in picks:
            at = start + ((end - start - MIB) // 2) // 4096 * 4096
            f.seek(at)
            f.write(rng.randbytes(MIB))
            offsets.append(at)
    return offsets


def _run(args: list[str]) -> tuple[float, dict]:
    env = {**ovfs_env(), "SOURCE_DATE_EPOCH": "1700000000"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ovfstream", *args, "--json", "-q"], env=env,
                          capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit("ovfstream %s failed: %s" % (" ".join(args), proc.stderr))
    doc = json.loads(proc.stdout)
    # CPU seconds (user + sys): less sensitive than wall to other jobs on a shared machine
    doc["_cpu_s"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, doc


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image", required=True, type=Path)
    p.add_argument("--work", required=True, type=Path)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--change-mib", type=int, default=4)
    p.add_argument("--command", choices=("pack", "convert"), default="pack")
    p.add_argument("--out", type=Path, default=None, help="where the outputs go (default WORK)")
    p.add_argument("--fresh-outputs", action="store_true",
                   help="delete the previous run's output before each timed run (outside the "
                        "timing), as with versioned output names; by default each run writes "
                        "over it, and the rename pays for freeing the old file")
    a = p.parse_args(argv)
    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    outs = a.out or work
    img = work / "rebuild.img"
    subprocess.run(["cp", "--sparse=always", str(a.image), str(img)], check=True)
    extents = _data_extents(img)
    cache = work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    ext = ".ova" if a.command == "pack" else ".vmdk"
    for d in ("cold", "warm"):
        (outs / d).mkdir(parents=True, exist_ok=True)
    common = ["--parallel", str(a.parallel)]
    # last night's build fills the cache
    _run([a.command, str(img), "-o", str(outs / "warm" / ("x" + ext)), *common,
          "--cache", str(cache)])
    load_before = os.getloadavg()
    cold_s, warm_s, hits = [], [], []
    cpu: dict[str, list[float]] = {"cold": [], "warm": []}
    for r in range(a.repeat):
        _change(img, extents, a.change_mib, seed=r + 1)
        runs = [("cold", []), ("warm", ["--cache", str(cache)])]
        if r % 2:
            runs.reverse()  # interleave A/B, alternating which goes first
        for name, extra in runs:
            if a.fresh_outputs:
                (outs / name / ("x" + ext)).unlink(missing_ok=True)
                os.sync()  # the freeing happens here, not inside the timed run
            wall, doc = _run([a.command, str(img), "-o", str(outs / name / ("x" + ext)),
                              *common, *extra])
            (cold_s if name == "cold" else warm_s).append(wall)
            cpu[name].append(doc["_cpu_s"])
            if name == "warm":
                stats = doc["disks"][0] if a.command == "pack" else doc
                hits.append((stats["cache"]["hits"], stats["cache"]["misses"]))
        same = ((outs / "cold" / ("x" + ext)).read_bytes()
                == (outs / "warm" / ("x" + ext)).read_bytes())
        if not same:
            raise SystemExit("repeat %d: warm output differs from the cold output" % r)
        print("repeat %d: cold %.2f s (cpu %.2f), warm %.2f s (cpu %.2f), hits/misses %s"
              % (r, cold_s[-1], cpu["cold"][-1], warm_s[-1], cpu["warm"][-1], hits[-1]),
              flush=True)
    cold, warm = statistics.median(cold_s), statistics.median(warm_s)
    print(json.dumps({
        "command": a.command, "parallel": a.parallel, "change_mib": a.change_mib,
        "data_bytes": sum(e - s for s, e in extents), "repeat": a.repeat, "outputs": str(outs),
        "fresh_outputs": a.fresh_outputs,
        "cold_median_s": round(cold, 3), "warm_median_s": round(warm, 3),
        "speedup": round(cold / warm, 2),
        "cold_cpu_median_s": round(statistics.median(cpu["cold"]), 3),
        "warm_cpu_median_s": round(statistics.median(cpu["warm"]), 3),
        "cpu_ratio": round(statistics.median(cpu["cold"]) / statistics.median(cpu["warm"]), 2),
        "cold_s": [round(x, 3) for x in cold_s],
        "warm_s": [round(x, 3) for x in warm_s], "hits_misses": hits,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "cpus": os.cpu_count()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
