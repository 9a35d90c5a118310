"""Inputs other than raw against qemu-img, one run (issue 9's speed target; not a timed test).

    python benches/inputs.py [--image PATH] [--repeat 3] [--workers 2] [--json out.json]
                             [--image-size 8G --image-data 1.2G] [--cache DIR]

The OS image of make_image.py (ext4, Debian-like files) is compressed once with
``qemu-img convert -c -O qcow2`` (zlib clusters, what Packer and diskimage-builder ship).  Then,
interleaved ``--repeat`` times (a noisy neighbour hits every case alike), medians of:

- ``qemu-img convert -O vmdk -o subformat=streamOptimized`` of the qcow2, of an empty qcow2
  overlay on it (a backing chain: every cluster reads through), and of the raw;
- ``ovfstream pack -pN`` of each of them to an OVA.

It prints the ratio qemu-img / ovfstream for each input, of wall time and of the process
tree's CPU time (steadier on a shared machine): the target is that the qcow2 ratio
is at least the raw one (inflating the clusters in the workers keeps ovfstream ahead by as
much as with raw input).  Correctness is part of the run: ovfstream's VMDK of the qcow2 is
checked once with ``qemu-img compare`` against the qcow2 and ``qemu-img check``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import compare  # noqa: E402  (benches/ is not a package)
import make_image  # noqa: E402

MIB = 1 << 20
QEMU_VMDK = ["-O", "vmdk", "-o", "subformat=streamOptimized"]


def ensure_qcow2(raw: Path, out: Path) -> Path:
    """The zlib-compressed qcow2 of ``raw`` (reused while newer than the raw)."""
    if out.exists() and out.stat().st_mtime >= raw.stat().st_mtime:
        return out
    tmp = out.with_name(out.name + ".tmp")
    subprocess.run(["qemu-img", "convert", "-q", "-c", "-f", "raw", "-O", "qcow2", str(raw),
                    str(tmp)], check=True)
    os.replace(tmp, out)
    return out


def ensure_overlay(base: Path, out: Path) -> Path:
    """An empty qcow2 overlay on ``base`` (remade when older than the base)."""
    if out.exists() and out.stat().st_mtime >= base.stat().st_mtime:
        return out
    out.unlink(missing_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base.resolve()),
                    "-F", "qcow2", str(out)], check=True)
    return out


def warm_file(path: Path) -> int:
    """Read a whole (non-sparse) file once: the page cache starts warm for every case."""
    n = 0
    with open(path, "rb", buffering=0) as f:
        while block := f.read(8 * MIB):
            n += len(block)
    return n


def check_once(qcow2: Path, work: Path) -> None:
    vmdk = work / "check.vmdk"
    compare.run_child(compare.ovfs_cmd("convert", str(qcow2), "-o", str(vmdk), "--quiet"),
                      env=compare.ovfs_env())
    for args in (["compare", "-q", str(qcow2), str(vmdk)], ["check", "-q", str(vmdk)]):
        subprocess.run(["qemu-img", *args], check=True, timeout=600)
    vmdk.unlink()


LABELS = ("qcow2", "overlay", "raw")


def bench(raw: Path, qcow2: Path, overlay: Path, work: Path, *, repeat: int, workers: int
          ) -> dict[str, Any]:
    env = compare.ovfs_env()
    np = str(workers)
    cases: dict[str, tuple[list[str], dict[str, str] | None, Path]] = {}
    for label, src, fmt in (("qcow2", qcow2, "qcow2"), ("overlay", overlay, "qcow2"),
                            ("raw", raw, "raw")):
        cases["qemu-img convert %s" % label] = (
            ["qemu-img", "convert", "-f", fmt, *QEMU_VMDK, str(src), str(work / "q.vmdk")],
            None, work / "q.vmdk")
        cases["ovfstream pack -p%s %s" % (np, label)] = (
            compare.ovfs_cmd("pack", str(src), "-o", str(work / "o.ova"), "--parallel", np,
                             "--json", "--quiet"), env, work / "o.ova")
    walls: dict[str, list[float]] = {name: [] for name in cases}
    cpus: dict[str, list[float]] = {name: [] for name in cases}
    rss: dict[str, int] = {name: 0 for name in cases}
    for round_ in range(repeat):
        for name, (cmd, case_env, out) in cases.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            run = compare.run_child(cmd, env=case_env)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            # CPU seconds of the whole process tree (a loaded machine moves wall time, far
            # less this): the launcher's few milliseconds included.
            cpus[name].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
            walls[name].append(run.wall)
            rss[name] = max(rss[name], run.maxrss_bytes)
            out.unlink(missing_ok=True)
            print("  round %d  %-32s %7.2f s" % (round_ + 1, name, run.wall), flush=True)
    med = {name: float(statistics.median(w)) for name, w in walls.items()}
    cpu = {name: float(statistics.median(c)) for name, c in cpus.items()}
    ratios = {label: med["qemu-img convert %s" % label] / med["ovfstream pack -p%s %s"
                                                            % (np, label)]
              for label in LABELS}
    cpu_ratios = {label: cpu["qemu-img convert %s" % label] / cpu["ovfstream pack -p%s %s"
                                                                 % (np, label)]
                  for label in LABELS}
    return {"median_s": med, "median_cpu_s": cpu, "cpu_ratio_qemu_over_ovfstream": cpu_ratios,
            "min_s": {n: min(w) for n, w in walls.items()},
            "max_s": {n: max(w) for n, w in walls.items()}, "peak_rss_bytes": rss,
            "ratio_qemu_over_ovfstream": ratios, "repeat": repeat, "workers": workers,
            "qcow2_bytes": qcow2.stat().st_size, "load_avg_before": os.getloadavg()}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--image", type=Path, help="a raw OS image (default: make_image.py's ext4)")
    p.add_argument("--image-size", default="8G")
    p.add_argument("--image-data", default="1.2G")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cache", type=Path, default=Path(os.environ.get(
        "OVFSTREAM_BENCH_CACHE", os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                              "ovfstream-bench"))))
    p.add_argument("--json", type=Path, help="write the results here too")
    args = p.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    raw = args.image or make_image.ensure_image(
        "ext4", args.cache / ("os-%s-%s.img" % (args.image_size, args.image_data)),
        size_bytes=make_image.parse_size(args.image_size),
        data_bytes=make_image.parse_size(args.image_data))
    qcow2 = ensure_qcow2(raw, args.cache / (raw.name + ".qcow2"))
    overlay = ensure_overlay(qcow2, args.cache / (raw.name + ".overlay.qcow2"))
    work = args.cache / "inputs-work"
    work.mkdir(exist_ok=True)
    print("raw %s: %d MiB of data; qcow2 %s: %d MiB" % (
        raw, compare.warm(raw) // MIB, qcow2, warm_file(qcow2) // MIB), flush=True)
    check_once(qcow2, work)
    doc = bench(raw, qcow2, overlay, work, repeat=args.repeat, workers=args.workers)
    print()
    for name, wall in doc["median_s"].items():
        print("%-34s median %7.2f s  (min %.2f, max %.2f)  CPU %6.2f s  peak RSS %4d MiB" % (
            name, wall, doc["min_s"][name], doc["max_s"][name], doc["median_cpu_s"][name],
            doc["peak_rss_bytes"][name] // MIB))
    for label, ratio in doc["ratio_qemu_over_ovfstream"].items():
        print("qemu-img / ovfstream on %-5s: wall %.2fx, CPU %.2fx" % (
            label, ratio, doc["cpu_ratio_qemu_over_ovfstream"][label]))
    print("load average before the run: %.2f %.2f %.2f" % doc["load_avg_before"])
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
