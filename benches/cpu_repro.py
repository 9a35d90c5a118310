"""Same bytes on every x86 code path? Every engine and level, natively and on emulated CPUs.

    python benches/cpu_repro.py [--image PATH] [--grains 64] [--cpus qemu64,Nehalem,...]
                                [--jobs 2] [--json out.json]

The deflate engines pick code at run time by CPUID: ISA-L has SSE/AVX/AVX2/AVX-512 variants
of its deflate bodies, libdeflate of its Adler-32 (and of nothing else it runs while
compressing, by its source; measured here all the same), and zlib has none.  A claim that
an engine's output is reproducible is a claim about every one of those paths, so this runs
the same grains through ``get_engine(name, level).compress`` for every engine and level

- natively (on this project's machines: AVX-512 with VNNI and VPCLMULQDQ), and
- under ``qemu-x86_64 -cpu MODEL`` (Debian's ``qemu-user``) for CPU models that switch
  those paths on one at a time: ``qemu64`` (the x86-64 baseline, SSE2/SSE3 only),
  ``Nehalem`` (+SSSE3/SSE4.2), ``Westmere`` (+PCLMULQDQ), ``SandyBridge`` (+AVX),
  ``Haswell`` (+AVX2, BMI2).  qemu's TCG does not emulate AVX-512, so that path is only
  the native run's (and AVX-VNNI only where the host has it),

and compares the SHA-256 of each engine/level's compressed stream.  Each run also reports
what the CPU offered: CPUID leaf 1/7 bits and libdeflate's own dispatch word
(``libdeflate_x86_cpu_features``), so the table shows which paths were really taken.  Every
compressed grain is inflated back (zlib) in every run.  The ISA-L runs use the native span
encoder's fixed-address stream states; a run where it is unavailable says so.

Grains: every 16th non-zero grain of ``--image`` (default: a 64 MiB dense file of this
machine's files, made by make_image.py in the bench cache) up to ``--grains``, plus six
synthetic ones (random, text, runs, a single byte, a period-3 and a period-4096 pattern).
It takes a few minutes (TCG runs the slow levels 20-40x slower than the host).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import mmap
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
for _p in (str(SRC), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

GRAIN = 65536
DEFAULT_CPUS = ("qemu64", "Nehalem", "Westmere", "SandyBridge", "Haswell")
# CPUID bits that select deflate code paths: (leaf, subleaf, register index, bit, name).
_CPUID_BITS = [(1, 0, 2, 1, "pclmulqdq"), (1, 0, 2, 9, "ssse3"), (1, 0, 2, 19, "sse4.1"),
               (1, 0, 2, 20, "sse4.2"), (1, 0, 2, 28, "avx"), (7, 0, 1, 5, "avx2"),
               (7, 0, 1, 8, "bmi2"), (7, 0, 1, 16, "avx512f"), (7, 0, 1, 30, "avx512bw"),
               (7, 0, 1, 31, "avx512vl"), (7, 0, 2, 10, "vpclmulqdq"),
               (7, 0, 2, 11, "avx512vnni"), (7, 1, 0, 4, "avxvnni")]


# ------------------------------------------------------------------------- what the CPU says

def cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    """(eax, ebx, ecx, edx) of the CPUID instruction, run from a small executable mapping
    (x86-64 SysV: leaf in edi, subleaf in esi, the four results stored through rdx)."""
    code = bytes([
        0x53,                    # push rbx (callee-saved; cpuid clobbers it)
        0x49, 0x89, 0xd0,        # mov r8, rdx
        0x89, 0xf8,              # mov eax, edi
        0x89, 0xf1,              # mov ecx, esi
        0x0f, 0xa2,              # cpuid
        0x41, 0x89, 0x00,        # mov [r8], eax
        0x41, 0x89, 0x58, 0x04,  # mov [r8+4], ebx
        0x41, 0x89, 0x48, 0x08,  # mov [r8+8], ecx
        0x41, 0x89, 0x50, 0x0c,  # mov [r8+12], edx
        0x5b,                    # pop rbx
        0xc3,                    # ret
    ])
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    try:
        page.write(code)
        address = ctypes.addressof(ctypes.c_char.from_buffer(page))
        func = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32,
                                ctypes.POINTER(ctypes.c_uint32))(address)
        out = (ctypes.c_uint32 * 4)()
        func(leaf, subleaf, out)
        result = tuple(out)
        del func
        return result  # type: ignore[return-value]
    finally:
        try:
            page.close()
        except BufferError:  # the ctypes view still counts as an export until collected
            pass


def cpu_features() -> list[str]:
    if platform.machine() not in ("x86_64", "AMD64"):
        return []
    max_leaf = cpuid(0)[0]
    found = []
    for leaf, sub, reg, bit, name in _CPUID_BITS:
        if leaf <= max_leaf and cpuid(leaf, sub)[reg] >> bit & 1:
            found.append(name)
    return found


def libdeflate_dispatch() -> str | None:
    """libdeflate's own CPU feature word after it has run once (bit 31: detected)."""
    try:
        from deflate import _deflate
        lib = ctypes.CDLL(_deflate.__file__)
        return hex(ctypes.c_uint32.in_dll(lib, "libdeflate_x86_cpu_features").value)
    except (ImportError, OSError, ValueError, AttributeError):
        return None


# ------------------------------------------------------------------------------- the child

def child(sample: Path) -> dict[str, Any]:
    """Compress every grain of ``sample`` with every engine and level; digests per engine."""
    from ovfstream.engine import ENGINES, _LEVELS, get_engine
    data = sample.read_bytes()
    grains = [memoryview(data)[i:i + GRAIN] for i in range(0, len(data), GRAIN)]
    results: dict[str, str] = {}
    notes: dict[str, str] = {}
    bad_inflate: list[str] = []
    started = time.perf_counter()
    for name in ENGINES:
        for level in _LEVELS[name]:
            engine = get_engine(name, level)
            if engine.native_unavailable:
                notes["%s-%d" % (name, level)] = engine.native_unavailable
            digest = hashlib.sha256()
            for grain in grains:
                out = bytes(engine.compress(grain))
                if zlib.decompress(out) != grain:
                    bad_inflate.append("%s-%d" % (name, level))
                digest.update(len(out).to_bytes(4, "little") + out)
            results["%s-%d" % (name, level)] = digest.hexdigest()
    return {"results": results, "notes": notes, "inflate_failures": sorted(set(bad_inflate)),
            "cpuid": cpu_features(), "libdeflate_dispatch": libdeflate_dispatch(),
            "seconds": round(time.perf_counter() - started, 2), "grains": len(grains)}


# ------------------------------------------------------------------------------ the parent

def synthetic_grains() -> list[bytes]:
    rng = random.Random(14)
    words = [b"grain", b"stream", b"kernel", b"/usr/lib", b"\n", b"0x1f", b"Lorem", b"ipsum"]
    text = bytearray()
    while len(text) < GRAIN:
        text += rng.choice(words) + b" "
    runs = bytearray()
    while len(runs) < GRAIN:
        runs += bytes([rng.randrange(256)]) * rng.randrange(1, 300)
    return [rng.randbytes(GRAIN), bytes(text[:GRAIN]), bytes(runs[:GRAIN]),
            bytes(GRAIN - 1) + b"\x01", (b"abc" * GRAIN)[:GRAIN],
            (rng.randbytes(4096) * 16)[:GRAIN]]


def sample_grains(image: Path, limit: int, every: int = 16) -> list[bytes]:
    """Every ``every``-th non-zero grain of ``image`` (holes skipped), at most ``limit``."""
    out: list[bytes] = []
    seen = 0
    with open(image, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while offset < size and len(out) < limit:
            try:
                start = os.lseek(f.fileno(), offset, os.SEEK_DATA)
            except OSError:  # ENXIO: no data past offset
                break
            end = os.lseek(f.fileno(), start, os.SEEK_HOLE)
            pos = start - start % GRAIN
            while pos < end and len(out) < limit:
                grain = os.pread(f.fileno(), GRAIN, pos).ljust(GRAIN, b"\0")
                if grain.count(0) != GRAIN:
                    if seen % every == 0:
                        out.append(grain)
                    seen += 1
                pos += GRAIN
            offset = max(end, pos)
    return out


def run_child(sample: Path, cpu: str | None, timeout: float) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(sample)]
    if cpu is not None:
        cmd = [shutil.which("qemu-x86_64") or "qemu-x86_64", "-cpu", cpu] + cmd
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        return {"error": "exit %d: %s" % (proc.returncode, proc.stderr.strip()[-500:])}
    doc = json.loads(proc.stdout)
    warnings = [line for line in proc.stderr.splitlines() if "warning" in line]
    if warnings:  # TCG says which of the model's features it cannot give
        doc["qemu_warnings"] = len(warnings)
    return doc


def qemu_version() -> str | None:
    exe = shutil.which("qemu-x86_64")
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    return out.splitlines()[0] if out else None


def print_table(doc: dict[str, Any]) -> None:
    runs = doc["runs"]
    labels = list(runs)
    print("| engine-level | " + " | ".join(labels) + " | outputs | same on all |")
    print("|---" * (len(labels) + 3) + "|")
    keys = next((r["results"] for r in runs.values() if "results" in r), {})
    for key in keys:
        digests = [runs[label].get("results", {}).get(key) for label in labels]
        first = digests[0]
        cells = ["%s%s" % (d[:8] if d else "error", "" if d == first else " (differs)")
                 for d in digests]
        print("| %s | %s | %d | %s |" % (key, " | ".join(cells), len(set(digests)),
                                        "yes" if doc["same"][key] else "**no**"))
    print()
    for label, r in runs.items():
        if "error" in r:
            print("- %s: %s" % (label, r["error"]))
            continue
        print("- %s: libdeflate dispatch %s; CPUID %s; %.1f s%s%s" % (
            label, r["libdeflate_dispatch"], ",".join(r["cpuid"]) or "baseline", r["seconds"],
            "; native encoder unavailable: %s" % r["notes"] if r["notes"] else "",
            "; INFLATE FAILED: %s" % r["inflate_failures"] if r["inflate_failures"] else ""))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--image", type=Path, help="take the grains from this raw image")
    p.add_argument("--grains", type=int, default=64, help="real grains to take (default 64)")
    p.add_argument("--cpus", default=",".join(DEFAULT_CPUS),
                   help="qemu-x86_64 -cpu models (default %(default)s); empty: native only")
    p.add_argument("--jobs", type=int, default=2, help="emulated runs at once (default 2)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    if args.child is not None:
        json.dump(child(args.child), sys.stdout)
        return 0
    cpus = [c for c in args.cpus.split(",") if c]
    if cpus and shutil.which("qemu-x86_64") is None:
        raise SystemExit("qemu-x86_64 is needed for --cpus (apt-get install qemu-user)")
    image = args.image
    if image is None:
        import make_image
        from conftest import bench_cache
        image = make_image.ensure_image("dense", bench_cache() / "dense-64m.raw",
                                        size_bytes=64 << 20)
    grains = sample_grains(image, args.grains) + synthetic_grains()
    with tempfile.TemporaryDirectory(prefix="cpu-repro-") as tmp:
        sample = Path(tmp) / "grains.bin"
        sample.write_bytes(b"".join(grains))
        runs: dict[str, Any] = {"native": run_child(sample, None, args.timeout)}
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            emulated = dict(zip(cpus, pool.map(lambda c: run_child(sample, c, args.timeout),
                                               cpus)))
    runs.update(("qemu " + cpu, r) for cpu, r in emulated.items())
    from ovfstream.engine import get_engine
    versions = {name: get_engine(name).version for name in ("isal", "zlib", "libdeflate")}
    keys = list(runs["native"].get("results", {}))
    same = {k: len({r.get("results", {}).get(k) for r in runs.values()}) == 1 for k in keys}
    doc = {"image": str(image), "grains": len(grains), "qemu": qemu_version(),
           "host_cpu": platform.processor() or platform.machine(), "versions": versions,
           "runs": runs, "same": same}
    print_table(doc)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    failed = any("error" in r or r["inflate_failures"] for r in runs.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
