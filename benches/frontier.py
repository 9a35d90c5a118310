"""The size/speed frontier: every engine and level against qemu-img on one OS image.

    python benches/frontier.py [--image PATH | --image-size 4G --image-data 600M]
                               [--workers 2] [--only isal:1-3,zlib:1-9,libdeflate:1-12]
                               [--json out.json] [--plot frontier.png] [--cache DIR]

One run of each (a frontier, not a race: quote the figures with the machine and the load
average this prints), on the SAME image in the SAME run:

1. ``qemu-img convert -O vmdk -o subformat=streamOptimized``: wall and VMDK size (zlib-6);
2. ``ovfstream convert --engine E --level L --parallel N --json --quiet`` for every engine
   and level: wall (fork to exit, interpreter start and fsync included, as compare.py) and
   VMDK size over qemu-img's;
3. per core: the thread CPU time of ``get_engine(E, L).compress`` alone over a sample of the
   image's non-zero grains (every ``--sample-every``-th), as MB/s, and the compressed payload
   over zlib-6's on the same grains;
4. 1 -> 2 threads: wall of encode_span over that sample in spans of 128 grains, 1 worker then
   2 (the callable path for zlib and libdeflate, the GIL retaken per grain; ISA-L's native
   GIL-free span encoder for reference), the best of 3 interleaved rounds.

Checks: ``qemu-img check`` of every output; ``qemu-img compare`` against the image of the
outputs of the presets (fast, balanced, small) and of every engine's default level
(``--compare-all``: every output).  A failed check exits 1.

The plot (``--plot``, needs matplotlib) draws size over qemu-img's against wall time at
``--parallel N``, one line per engine through its levels, qemu-img as a point, the presets
marked, and the 1.00 / 0.975 size lines of issue 14's targets.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
for _p in (str(SRC), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import make_image  # noqa: E402
from compare import QEMU_VMDK, machine_facts, ovfs_cmd, ovfs_env, run_child, warm  # noqa: E402

GIB = 1 << 30
MIB = 1 << 20
GRAIN = 65536
SPAN_GRAINS_HERE = 128  # 8 MiB spans: enough of them in the sample to keep 2 workers busy


def parse_only(text: str) -> list[tuple[str, int]]:
    """'isal:1-3,libdeflate:6' -> [(isal, 1), (isal, 2), (isal, 3), (libdeflate, 6)]."""
    out = []
    for part in text.split(","):
        name, _, levels = part.partition(":")
        lo, _, hi = levels.partition("-")
        out += [(name, lv) for lv in range(int(lo), int(hi or lo) + 1)]
    return out


def all_levels() -> list[tuple[str, int]]:
    from ovfstream.engine import ENGINES, _LEVELS
    return [(name, lv) for name in ENGINES for lv in _LEVELS[name]]


# ------------------------------------------------------------------------ per-core figures

def sample_grains(path: Path, every: int) -> list[bytes]:
    """Every ``every``-th non-zero grain that ovfstream compresses (its own span reads)."""
    from ovfstream import _grains
    from ovfstream.sources.raw import RawSource
    from ovfstream.vmdk.layout import SPAN_BYTES
    buf = bytearray(SPAN_BYTES)
    out: list[bytes] = []
    seen = 0
    with RawSource(path) as src:
        for plan in src.spans():
            view = src.read_span(plan, buf)
            zmap = _grains.zero_grain_map(view, plan.n_grains)
            for i in range(plan.n_grains):
                if not zmap[i]:
                    if seen % every == 0:
                        out.append(bytes(view[i * GRAIN:(i + 1) * GRAIN]))
                    seen += 1
    return out


def per_core(grains: list[bytes], levels: list[tuple[str, int]], log: Any) -> dict[str, Any]:
    from ovfstream.engine import get_engine
    nbytes = len(grains) * GRAIN
    rows: dict[str, Any] = {}
    for name, level in [("zlib", 6)] + [k for k in levels if k != ("zlib", 6)]:
        compress = get_engine(name, level).compress
        t0 = time.thread_time()
        payload = sum(len(compress(g)) for g in grains)
        cpu = time.thread_time() - t0
        rows["%s-%d" % (name, level)] = {"cpu_s": round(cpu, 3),
                                         "mb_per_s_per_core": round(nbytes / cpu / 1e6, 1),
                                         "payload_bytes": payload}
        log("per core %-14s %7.1f MB/s  payload %d" % ("%s-%d" % (name, level),
                                                       nbytes / cpu / 1e6, payload))
    base = rows["zlib-6"]["payload_bytes"]
    for row in rows.values():
        row["payload_over_zlib6"] = round(row["payload_bytes"] / base, 4)
    return {"sample_bytes": nbytes, "grains": len(grains), "rows": rows}


def scaling(grains: list[bytes], keys: list[tuple[str, int]], log: Any,
            rounds: int = 3) -> dict[str, Any]:
    """Wall of encode_span over the sample with 1 and 2 worker threads, best of ``rounds``."""
    import xxhash
    from ovfstream import _grains
    from ovfstream.engine import get_engine
    spans = [b"".join(grains[i:i + SPAN_GRAINS_HERE])
             for i in range(0, len(grains) - SPAN_GRAINS_HERE + 1, SPAN_GRAINS_HERE)]
    out: dict[str, Any] = {}
    for name, level in keys:
        engine = get_engine(name, level)
        local = threading.local()

        def encode(span: bytes, engine: Any = engine, local: Any = local) -> int:
            n = len(span) // GRAIN
            if engine.span_encoder is not None:
                stream = getattr(local, "stream", None)
                if stream is None:
                    stream = local.stream = engine.span_encoder.new_stream()
                return engine.span_encoder.encode_span(span, 0, n, stream)[3]
            return _grains.encode_span(span, 0, n, engine.compress, xxhash.xxh3_64_intdigest)[3]

        walls: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(rounds):
            for workers in (1, 2):
                with ThreadPoolExecutor(workers) as pool:
                    t0 = time.perf_counter()
                    list(pool.map(encode, spans))
                    walls[workers].append(time.perf_counter() - t0)
        key = "%s-%d" % (name, level)
        out[key] = {"path": "native span encoder" if engine.span_encoder is not None
                    else "callable (GIL retaken per grain)",
                    "wall_1_s": round(min(walls[1]), 3), "wall_2_s": round(min(walls[2]), 3),
                    "scaling": round(min(walls[1]) / min(walls[2]), 2)}
        log("scaling %-14s %s: 1 -> 2 threads %.2fx" % (key, out[key]["path"],
                                                        out[key]["scaling"]))
    return {"span_grains": SPAN_GRAINS_HERE, "spans": len(spans), "rows": out}


# --------------------------------------------------------------------------- the frontier

def qemu_check(vmdk: Path) -> bool:
    return subprocess.run(["qemu-img", "check", "-f", "vmdk", str(vmdk)],
                          capture_output=True).returncode == 0


def qemu_compare(src: Path, vmdk: Path) -> bool:
    return subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "vmdk", str(src), str(vmdk)],
                          capture_output=True).returncode == 0


def children_cpu() -> float:
    """CPU seconds of every waited-for descendant so far: run_child's launcher waits for the
    command, so the delta around a run is that run's CPU time (plus the launcher's ~10 ms)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def frontier(src: Path, work: Path, levels: list[tuple[str, int]], *, workers: int,
             compare_all: bool, log: Any) -> dict[str, Any]:
    from ovfstream.engine import PRESETS, _DEFAULT_LEVEL
    work.mkdir(parents=True, exist_ok=True)
    env = ovfs_env()
    log("warming the page cache (%d MiB of data)" % (warm(src) // MIB))
    run_child(ovfs_cmd("--version"), env=env)  # byte-compile once, outside the timings
    qemu_out = work / "qemu.vmdk"
    qemu_out.unlink(missing_ok=True)
    run = run_child(["qemu-img", "convert", *QEMU_VMDK, str(src), str(qemu_out)])
    qemu = {"wall_s": round(run.wall, 3), "output_bytes": qemu_out.stat().st_size}
    qemu_out.unlink()
    log("qemu-img convert %8.2f s  %d bytes" % (run.wall, qemu["output_bytes"]))
    wanted = set(PRESETS.values()) | {(n, lv) for n, lv in _DEFAULT_LEVEL.items()}
    rows: dict[str, Any] = {}
    failed: list[str] = []
    out = work / "ovfs.vmdk"
    for name, level in levels:
        out.unlink(missing_ok=True)
        cpu0 = children_cpu()
        run = run_child(ovfs_cmd("convert", str(src), "-o", str(out), "--engine", name,
                                 "--level", str(level), "--parallel", str(workers), "--json",
                                 "--quiet"), env=env)
        cpu = children_cpu() - cpu0
        doc = json.loads(run.stdout)
        size = out.stat().st_size
        key = "%s-%d" % (name, level)
        row = {"engine": name, "level": level, "wall_s": round(run.wall, 3),
               "inner_s": doc["seconds"], "cpu_s": round(cpu, 3),
               # about the worker count when the run had the cores to itself; less means
               # another job took them (or the engine does not scale)
               "cores_used": round(cpu / run.wall, 2), "output_bytes": size,
               "size_over_qemu": round(size / qemu["output_bytes"], 4),
               "speed_over_qemu": round(qemu["wall_s"] / run.wall, 2),
               "peak_rss_mib": run.maxrss_bytes // MIB,
               "reproducible_across_cpus": doc["engine"]["reproducible_across_cpus"],
               "qemu_img_check": qemu_check(out)}
        if compare_all or (name, level) in wanted:
            row["qemu_img_compare"] = qemu_compare(src, out)
        if not row["qemu_img_check"] or row.get("qemu_img_compare") is False:
            failed.append(key)
        rows[key] = row
        log("%-14s %7.2f s  %4.2f cores  %.4fx size  %5.1fx speed  check %s%s" % (
            key, run.wall, row["cores_used"], row["size_over_qemu"], row["speed_over_qemu"],
            row["qemu_img_check"],
            "  compare %s" % row["qemu_img_compare"] if "qemu_img_compare" in row else ""))
    out.unlink(missing_ok=True)
    return {"qemu_img": qemu, "rows": rows, "failed": failed,
            "presets": {k: "%s-%d" % v for k, v in PRESETS.items()}}


# ------------------------------------------------------------------------------ reporting

def markdown(doc: dict[str, Any]) -> str:
    f = doc["frontier"]
    pc = doc.get("per_core", {}).get("rows", {})
    sc = doc.get("scaling", {}).get("rows", {})
    presets = {v: k for k, v in f["presets"].items()}
    lines = ["| engine level | wall -p%d | cores used | × qemu-img speed | size vs qemu-img "
             "| MB/s per core | payload vs zlib-6 | 1→2 threads | same bytes on every x86 CPU |"
             % doc["workers"],
             "|---|---|---|---|---|---|---|---|---|",
             "| qemu-img convert (zlib 6) | %.2f s | | 1.0 | 1.000 | | | | |"
             % f["qemu_img"]["wall_s"]]
    for key, r in f["rows"].items():
        name = key + (" (`%s`)" % presets[key] if key in presets else "")
        p = pc.get(key, {})
        lines.append("| %s | %.2f s | %.2f | %.1f | %.3f | %s | %s | %s | %s |" % (
            name, r["wall_s"], r["cores_used"], r["speed_over_qemu"], r["size_over_qemu"],
            p.get("mb_per_s_per_core", ""), p.get("payload_over_zlib6", ""),
            "%.2f×" % sc[key]["scaling"] if key in sc else "",
            "yes" if r["reproducible_across_cpus"] else "no"))
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no plot: matplotlib is not installed (pip install matplotlib)", file=sys.stderr)
        return False
    f = doc["frontier"]
    fig, ax = plt.subplots(figsize=(9, 6), dpi=110)
    by_engine: dict[str, list[tuple[float, float, int]]] = {}
    for r in f["rows"].values():
        by_engine.setdefault(r["engine"], []).append((r["wall_s"], r["size_over_qemu"],
                                                      r["level"]))
    for name, pts in by_engine.items():
        pts.sort(key=lambda p: p[2])
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
        for x, y, lv in pts:
            ax.annotate(str(lv), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.plot([f["qemu_img"]["wall_s"]], [1.0], marker="s", color="black", linestyle="none",
            label="qemu-img (zlib 6)")
    for preset, key in f["presets"].items():
        r = f["rows"].get(key)
        if r:
            ax.annotate(preset, (r["wall_s"], r["size_over_qemu"]), textcoords="offset points",
                        xytext=(8, -14), fontsize=9, fontweight="bold")
    ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    ax.axhline(0.975, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter
    seconds = FuncFormatter(lambda x, _: "%g" % x)
    ax.xaxis.set_major_formatter(seconds)
    ax.xaxis.set_minor_formatter(seconds)
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("wall seconds, ovfstream convert --parallel %d (log scale)" % doc["workers"])
    ax.set_ylabel("VMDK size / qemu-img's")
    m = doc["machine"]
    ax.set_title("Size against time: %s (%.0f MiB of data)\n%s, %d CPUs, commit %s" % (
        Path(doc["image"]).name, doc["data_bytes"] / MIB, m["cpu_model"], m["nproc"],
        (m["git_commit"] or "?")[:7]), fontsize=10)
    ax.grid(True, which="both", linewidth=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> int:
    cache = Path(os.environ.get("OVFSTREAM_BENCH_CACHE")
                 or Path(tempfile.gettempdir()) / "ovfstream-bench")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", type=Path, help="raw OS image (default: made by make_image.py)")
    p.add_argument("--image-size", type=make_image.parse_size, default=4 * GIB)
    p.add_argument("--image-data", type=make_image.parse_size, default=600 * MIB)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--only", help="engine:levels list, e.g. isal:1,libdeflate:5-7")
    p.add_argument("--sample-every", type=int, default=8,
                   help="per-core figures on every Nth non-zero grain (default 8)")
    p.add_argument("--skip-per-core", action="store_true")
    p.add_argument("--compare-all", action="store_true", help="qemu-img compare every output")
    p.add_argument("--cache", type=Path, default=cache)
    p.add_argument("--json", type=Path)
    p.add_argument("--plot", type=Path, help="write the size/time plot here (PNG)")
    args = p.parse_args(argv)
    if shutil.which("qemu-img") is None:
        raise SystemExit("qemu-img is needed (apt-get install qemu-utils)")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    args.cache.mkdir(parents=True, exist_ok=True)
    image = args.image
    if image is None:
        image = args.cache / ("os-ext4-%d-%d.img" % (args.image_size, args.image_data))
        log("making %s (cached by its stamp)" % image)
        make_image.ensure_image("ext4", image, size_bytes=args.image_size,
                                data_bytes=args.image_data)
    levels = parse_only(args.only) if args.only else all_levels()
    doc: dict[str, Any] = {"machine": machine_facts(), "image": str(image),
                           "workers": args.workers, "command": " ".join(sys.argv)}
    from ovfstream.engine import get_engine
    doc["versions"] = {n: get_engine(n).version for n in ("isal", "zlib", "libdeflate")}
    doc["frontier"] = frontier(image, args.cache / "work" / "frontier", levels,
                               workers=args.workers, compare_all=args.compare_all, log=log)
    if not args.skip_per_core:
        grains = sample_grains(image, args.sample_every)
        doc["per_core"] = per_core(grains, levels, log)
        scale_keys = [k for k in [("isal", 1), ("zlib", 6), ("libdeflate", 1), ("libdeflate", 6),
                                  ("libdeflate", 10)] if k in levels]
        doc["scaling"] = scaling(grains, scale_keys, log)
    from ovfstream.sources.raw import RawSource
    with RawSource(image) as src:
        doc["data_bytes"] = src.data_bytes
    doc["machine"]["loadavg_end"] = os.getloadavg()
    print(markdown(doc))
    print("\nmachine: %s, %d CPUs; load average %s at start, %s at end" % (
        doc["machine"]["cpu_model"], doc["machine"]["nproc"],
        "/".join("%.2f" % x for x in doc["machine"]["loadavg_start"]),
        "/".join("%.2f" % x for x in doc["machine"]["loadavg_end"])))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    if args.plot and plot(doc, args.plot):
        log("plot written to %s" % args.plot)
    if doc["frontier"]["failed"]:
        log("CORRECTNESS CHECK FAILED for: %s" % ", ".join(doc["frontier"]["failed"]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
