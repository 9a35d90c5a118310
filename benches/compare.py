"""Side-by-side comparison: ovfstream against qemu-img and the usual shell chain, one run.

    python benches/compare.py [--image PATH] [--dense PATH] [--repeat 3] [--json out.json]
                              [--empty-100g] [--rss-scale]

Measures what DESIGN.md "Performance targets" promises, on the SAME inputs in the SAME run,
each case repeated --repeat times with the cases interleaved (so a noisy neighbour hits all of
them alike), reporting medians:

- ``qemu-img convert -O vmdk -o subformat=streamOptimized`` alone;
- the chain used today: that convert, an OVF from a template, ``sha256sum`` into a manifest and
  ``tar`` of the three, as one bash script timed end to end;
- ``ovfstream convert`` at --parallel N and 1, and ``ovfstream pack`` at --parallel N, as
  subprocesses (interpreter start included: that is what users run; it fsyncs its output,
  which qemu-img and the chain do not);
- the engine bound (issue 12): the wall time of pure ISA-L level 1 on the very grains
  ovfstream compresses (holes and all-zero grains skipped), held in memory, with N threads and
  nothing else; and the engine's thread CPU time alone (plus for pack the CPU time of sha256
  over the VMDK bytes), divided by the workers;
- ``ovfstream convert`` once more with buffered writes (OVFSTREAM_DIRECT_IO=0): what O_DIRECT
  saves, system time included; ``vmdk-convert -n N -c 1`` (open-vmdk) when it is installed;
- peak RSS of each child (``wait4`` rusage).

Correctness is part of the run: ``qemu-img compare`` and ``qemu-img check`` of ovfstream's VMDK
against the source, and the OVA's member order and manifest digest, once per input.

Optional: ``--empty-100g`` times ``ovfstream convert`` of an empty sparse 100 GiB file (target
< 1 s); ``--rss-scale`` compares peak RSS for the 1 GiB dense file and an 8 GiB sparse file
holding that data at four offsets (target: flat, <= 256 MiB).
"""

from __future__ import annotations

import argparse
import compileall
import functools
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SRC = REPO / "src"
sys.path.insert(0, str(HERE))
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

import make_image  # noqa: E402  (benches/ is not a package)

GIB = 1 << 30
MIB = 1 << 20
QEMU_VMDK = ["-O", "vmdk", "-o", "subformat=streamOptimized"]

# A minimal OVF 1.0 descriptor of the kind image pipelines keep as a template; the chain fills
# in the VMDK size with sed, as those scripts do.
OVF_TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1"
    xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
    xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData">
  <References><File ovf:id="file1" ovf:href="chain-disk1.vmdk" ovf:size="@SIZE@"/></References>
  <DiskSection><Info>Virtual disks</Info>
    <Disk ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:capacity="@CAPACITY@"
      ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="chain"><Info>A virtual machine</Info>
    <VirtualHardwareSection><Info>Virtual hardware</Info>
      <System><vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID><vssd:VirtualSystemType>vmx-14</vssd:VirtualSystemType></System>
      <Item><rasd:ElementName>2 CPUs</rasd:ElementName><rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType><rasd:VirtualQuantity>2</rasd:VirtualQuantity></Item>
      <Item><rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits><rasd:ElementName>2048 MB</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>2048</rasd:VirtualQuantity></Item>
      <Item><rasd:ElementName>SCSI controller</rasd:ElementName><rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>lsilogic</rasd:ResourceSubType><rasd:ResourceType>6</rasd:ResourceType></Item>
      <Item><rasd:AddressOnParent>0</rasd:AddressOnParent><rasd:ElementName>disk1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource><rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent><rasd:ResourceType>17</rasd:ResourceType></Item>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""

CHAIN_SCRIPT = r"""set -euo pipefail
cd "$WORK"
qemu-img convert -O vmdk -o subformat=streamOptimized "$SRC" chain-disk1.vmdk
size=$(stat -c %s chain-disk1.vmdk)
sed "s/@SIZE@/$size/" chain.ovf.in > chain.ovf
for f in chain.ovf chain-disk1.vmdk; do
  printf 'SHA256(%s)= %s\n' "$f" "$(sha256sum "$f" | cut -d' ' -f1)"
done > chain.mf
tar --format=ustar -cf chain.ova chain.ovf chain.mf chain-disk1.vmdk
"""


# --------------------------------------------------------------------------- running children

@dataclass
class Run:
    wall: float
    maxrss_bytes: int
    stdout: str
    user_s: float = 0.0
    sys_s: float = 0.0


# A forked child's peak RSS counts the parent's pages it shared before exec, so a child of
# this (large) process would report at least our own RSS.  A minimal interpreter (-S -I,
# ~10 MiB) forks and times the command instead and writes (wall, maxrss KiB, exit code).
_LAUNCHER = """
import os, sys, time
result, cmd = sys.argv[1], sys.argv[2:]
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(cmd[0], cmd)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(result, "w") as f:
    f.write("%r %d %d %r %r" % (wall, usage.ru_maxrss, os.waitstatus_to_exitcode(status),
                                usage.ru_utime, usage.ru_stime))
"""


def run_child(cmd: Sequence[str], *, env: dict[str, str] | None = None,
              cwd: str | os.PathLike[str] | None = None) -> Run:
    """Run cmd; return its wall time (fork to exit), its own peak RSS and its stdout."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".run") as result:
        subprocess.run([sys.executable, "-S", "-I", "-c", _LAUNCHER, result.name, *cmd],
                       stdout=out, stderr=err, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                       check=True)
        wall_text, rss_kib, code, user_s, sys_s = result.read().split()
        out.seek(0)
        err.seek(0)
        text = out.read().decode(errors="replace")
        if int(code) != 0:
            raise SystemExit("command failed (%s): %s\n%s%s" % (
                code, " ".join(cmd), text, err.read().decode(errors="replace")))
    return Run(float(wall_text), int(rss_kib) * 1024, text, float(user_s), float(sys_s))


def ovfs_env() -> dict[str, str]:
    """The children's environment: the package from SRC, its bytecode up to date.  An
    interpreter told not to write bytecode (PYTHONDONTWRITEBYTECODE, as on some build
    machines) compiles every changed module again at each start: 30-50 ms per run measured
    here, which is not ovfstream's time; an installed package has its bytecode."""
    compile_package()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@functools.lru_cache(maxsize=None)
def compile_package() -> None:
    compileall.compile_dir(str(SRC / "ovfstream"), quiet=1)


def ovfs_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ovfstream", *args]


# --------------------------------------------------------------------------- engine bound

def warm(path: Path) -> int:
    """Read the data extents once so every case starts from the same (warm) page cache."""
    from ovfstream.sources.raw import RawSource
    n = 0
    with RawSource(path) as src, open(path, "rb", buffering=0) as f:
        for start, end in src.extents:
            f.seek(start)
            left = end - start
            while left > 0:
                block = f.read(min(8 * MIB, left))
                if not block:
                    break
                left -= len(block)
                n += len(block)
    return n


def drop_cached(path: Path) -> None:
    """Take ``path``'s pages out of the page cache (POSIX_FADV_DONTNEED, no root needed), so
    the next run reads it from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # only clean pages are dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def deflate_cpu(path: Path, *, engine: str = "isal", level: int = 1) -> tuple[float, int]:
    """Thread CPU seconds of the engine alone on the grains ovfstream compresses, and their bytes.

    The spans and their reads are ovfstream's own (RawSource), all-zero grains are found with
    the native scan, so exactly the same 64 KiB buffers go through the same callable.
    """
    from ovfstream import _grains
    from ovfstream.engine import get_engine
    from ovfstream.sources.raw import RawSource
    from ovfstream.vmdk.layout import GRAIN_BYTES, SPAN_BYTES
    compress = get_engine(engine, level).compress
    buf = bytearray(SPAN_BYTES)
    cpu = 0.0
    nbytes = 0
    with RawSource(path) as src:
        for plan in src.spans():
            view = src.read_span(plan, buf)
            zmap = _grains.zero_grain_map(view, plan.n_grains)
            grains = [view[i * GRAIN_BYTES:(i + 1) * GRAIN_BYTES]
                      for i in range(plan.n_grains) if not zmap[i]]
            t0 = time.thread_time()
            for g in grains:
                compress(g)
            cpu += time.thread_time() - t0
            nbytes += len(grains) * GRAIN_BYTES
    return cpu, nbytes


def nonzero_grains(path: Path) -> list[bytes]:
    """Every non-zero grain ovfstream compresses (its own span reads and zero scan), in
    memory: the engine-bound run then does nothing but compress."""
    from ovfstream import _grains
    from ovfstream.sources.raw import RawSource
    from ovfstream.vmdk.layout import GRAIN_BYTES, SPAN_BYTES
    buf = bytearray(SPAN_BYTES)
    grains: list[bytes] = []
    with RawSource(path) as src:
        for plan in src.spans():
            view = src.read_span(plan, buf)
            zmap = _grains.zero_grain_map(view, plan.n_grains)
            grains += [bytes(view[i * GRAIN_BYTES:(i + 1) * GRAIN_BYTES])
                       for i in range(plan.n_grains) if not zmap[i]]
    return grains


def engine_bound_wall(grains: list[bytes], workers: int) -> float:
    """Wall seconds of pure ISA-L level 1 (isal_zlib.compress, which releases the GIL) on
    ``grains`` with ``workers`` threads, each taking every workers-th grain: nothing else
    (no reads, framing, fingerprints or writes).  The engine bound of issue 12."""
    import threading
    from isal import isal_zlib
    start = threading.Barrier(workers + 1)

    def work(k: int) -> None:
        start.wait()
        for grain in grains[k::workers]:
            isal_zlib.compress(grain, 1)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def sha256_cpu(path: Path) -> float:
    """Thread CPU seconds of sha256 over a file's bytes (reads not counted)."""
    h = hashlib.sha256()
    cpu = 0.0
    with open(path, "rb", buffering=0) as f:
        while True:
            block = f.read(8 * MIB)
            if not block:
                break
            t0 = time.thread_time()
            h.update(block)
            cpu += time.thread_time() - t0
    return cpu


def output_dir_facts(folder: Path) -> dict[str, Any]:
    """The output folder's file system and whether ovfstream writes it with O_DIRECT there
    (statx's direct-I/O alignment; ovfstream falls back to buffered writes where refused)."""
    from ovfstream import atomic
    folder.mkdir(parents=True, exist_ok=True)
    fs = subprocess.run(["df", "-T", str(folder)], capture_output=True, text=True)
    lines = fs.stdout.split("\n")
    fs_type = lines[1].split()[1] if fs.returncode == 0 and len(lines) > 1 else "?"
    probe = folder / ".dio-probe"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        align = atomic.dio_alignment(fd)
    finally:
        os.close(fd)
        probe.unlink()
    return {"path": str(folder), "fs_type": fs_type, "dio_alignment": align,
            "note": ("O_DIRECT output (memory/offset alignment %s)" % (align,) if align
                     else "buffered output (no O_DIRECT here)")}


# --------------------------------------------------------------------------- checks

def check_outputs(src: Path, vmdk: Path, ova: Path) -> dict[str, Any]:
    """qemu-img compare/check of the VMDK; OVA member order and manifest digest of the disk."""
    cmp = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "vmdk", str(src), str(vmdk)],
                         capture_output=True, text=True)
    chk = subprocess.run(["qemu-img", "check", "-f", "vmdk", str(vmdk)],
                         capture_output=True, text=True)
    with tarfile.open(ova, "r:") as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        mf_member = next((m for m in members if m.name.endswith(".mf")), None)
        disk = next((m for m in members if m.name.endswith(".vmdk")), None)
        ok_ova = False
        if mf_member is not None and disk is not None and len(names) >= 2:
            mf = tar.extractfile(mf_member).read().decode()  # type: ignore[union-attr]
            h = hashlib.sha256()
            stream = tar.extractfile(disk)
            while block := stream.read(8 * MIB):  # type: ignore[union-attr]
                h.update(block)
            want = "SHA256(%s)= %s" % (disk.name, h.hexdigest())
            ok_ova = (names[0].endswith(".ovf") and names[1].endswith(".mf")
                      and want in mf.splitlines())
    return {"qemu_img_compare": cmp.returncode == 0,
            "qemu_img_compare_output": (cmp.stdout + cmp.stderr).strip(),
            "qemu_img_check": chk.returncode == 0,
            "ova_members": names, "ova_order_and_manifest": ok_ova}


# --------------------------------------------------------------------------- one input

@dataclass
class Case:
    name: str
    walls: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    inner: list[float] = field(default_factory=list)  # ovfstream's own `seconds` (no startup)
    sys: list[float] = field(default_factory=list)    # the child's system CPU seconds
    user: list[float] = field(default_factory=list)
    out_size: int = 0

    def summary(self) -> dict[str, Any]:
        return {"wall_median_s": _med(self.walls), "wall_min_s": min(self.walls),
                "wall_max_s": max(self.walls), "walls_s": [round(w, 3) for w in self.walls],
                "inner_median_s": _med(self.inner) if self.inner else None,
                "peak_rss_bytes": max(self.rss) if self.rss else None,
                "sys_median_s": _med(self.sys) if self.sys else None,
                "user_median_s": _med(self.user) if self.user else None,
                "output_bytes": self.out_size}


def _med(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def bench_input(label: str, src: Path, work: Path, *, repeat: int, workers: int,
                log: Any) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    env = ovfs_env()
    size = src.stat().st_size
    (work / "chain.ovf.in").write_text(OVF_TEMPLATE.replace("@CAPACITY@", str(size)))
    qemu_out = work / "qemu.vmdk"
    conv_out = work / "ovfs.vmdk"
    pack_out = work / "ovfs.ova"
    np = str(workers)
    cases = {
        "qemu-img convert": (["qemu-img", "convert", *QEMU_VMDK, str(src), str(qemu_out)],
                             qemu_out, None),
        "chain (qemu-img+sha256sum+tar)": (["bash", "-c", CHAIN_SCRIPT], work / "chain.ova",
                                           {**os.environ, "WORK": str(work), "SRC": str(src)}),
        "ovfstream convert -p%s" % np: (ovfs_cmd("convert", str(src), "-o", str(conv_out),
                                                 "--parallel", np, "--json", "--quiet"),
                                        conv_out, env),
        "ovfstream convert -p1": (ovfs_cmd("convert", str(src), "-o", str(conv_out),
                                           "--parallel", "1", "--json", "--quiet"),
                                  conv_out, env),
        "ovfstream pack -p%s" % np: (ovfs_cmd("pack", str(src), "-o", str(pack_out),
                                              "--parallel", np, "--json", "--quiet"),
                                     pack_out, env),
        # The same convert with buffered writes (the page-cache copy O_DIRECT avoids).
        "ovfstream convert -p%s buffered" % np: (
            ovfs_cmd("convert", str(src), "-o", str(conv_out), "--parallel", np, "--json",
                     "--quiet"), conv_out, {**env, "OVFSTREAM_DIRECT_IO": "0"}),
    }
    if shutil.which("vmdk-convert"):  # open-vmdk, at its fastest setting
        vc_out = work / "vmdk-convert.vmdk"
        cases["vmdk-convert -n%s -c1" % np] = (
            ["vmdk-convert", "-n", np, "-c", "1", str(src), str(vc_out)], vc_out, None)
    results = {name: Case(name) for name in cases}
    log("[%s] warming the page cache (%d MiB of data)" % (label, warm(src) // MIB))
    run_child(ovfs_cmd("--version"), env=env)  # byte-compile once, outside the timings
    deflate: list[float] = []
    sha: list[float] = []
    bound_walls: list[float] = []
    grain_bytes = 0
    grains = nonzero_grains(src)
    for r in range(repeat):
        for name, (cmd, out, case_env) in cases.items():
            for p in (out, work / "chain-disk1.vmdk"):
                p.unlink(missing_ok=True)
            run = run_child(cmd, env=case_env)
            c = results[name]
            c.walls.append(run.wall)
            c.rss.append(run.maxrss_bytes)
            c.sys.append(run.sys_s)
            c.user.append(run.user_s)
            c.out_size = out.stat().st_size
            if name.startswith("ovfstream"):
                c.inner.append(float(json.loads(run.stdout)["seconds"]))
            log("[%s] %d/%d %-34s %8.2f s  rss %4d MiB" % (label, r + 1, repeat, name, run.wall,
                                                          run.maxrss_bytes // MIB))
        # the last ovfstream convert above left conv_out: the engine bound runs on the same bytes
        cpu, grain_bytes = deflate_cpu(src)
        deflate.append(cpu)
        sha.append(sha256_cpu(conv_out))
        bound_walls.append(engine_bound_wall(grains, workers))
        log("[%s] %d/%d engine bound: %.2f s wall with %d threads; deflate %.2f s CPU on %d "
            "MiB, sha256 %.2f s CPU" % (label, r + 1, repeat, bound_walls[-1], workers, cpu,
                                       grain_bytes // MIB, sha[-1]))
    # conv_out is the -p1 output; its bytes do not depend on the worker count (DESIGN.md).
    checks = check_outputs(src, conv_out, pack_out)
    log("[%s] qemu-img compare: %s, check: %s, OVA: %s" % (
        label, checks["qemu_img_compare"], checks["qemu_img_check"],
        checks["ova_order_and_manifest"]))

    med = {name: _med(c.walls) for name, c in results.items()}
    inner = {name: _med(c.inner) for name, c in results.items() if c.inner}
    q = med["qemu-img convert"]
    conv_n, conv_1 = "ovfstream convert -p%s" % np, "ovfstream convert -p1"
    pack_n = "ovfstream pack -p%s" % np
    bound_conv = _med(deflate) / workers
    bound_pack = (_med(deflate) + _med(sha)) / workers
    bound_wall = _med(bound_walls)
    conv_buf = "ovfstream convert -p%s buffered" % np
    ratios = {
        # issue 12: the bound as a wall (pure ISA-L level 1, N threads, nothing else)
        "convert_wall_over_bound_wall": med[conv_n] / bound_wall,
        "convert_inner_over_bound_wall": inner[conv_n] / bound_wall,
        "pack_over_convert_inner": inner[pack_n] / inner[conv_n],
        "convert_buffered_over_direct_wall": med[conv_buf] / med[conv_n],
        "convert_sys_s_direct": _med(results[conv_n].sys),
        "convert_sys_s_buffered": _med(results[conv_buf].sys),
        "qemu_over_ovfstream_pack": q / med[pack_n],
        "qemu_over_ovfstream_convert": q / med[conv_n],
        "size_ovfstream_vmdk_over_qemu": results[conv_n].out_size / results["qemu-img convert"].out_size,
        "size_ovfstream_ova_over_qemu": results[pack_n].out_size / results["qemu-img convert"].out_size,
        "convert_wall_over_engine_bound": med[conv_n] / bound_conv,
        "convert_inner_over_engine_bound": inner[conv_n] / bound_conv,
        "pack_wall_over_engine_bound": med[pack_n] / bound_pack,
        "pack_inner_over_engine_bound": inner[pack_n] / bound_pack,
        "scaling_1_to_N_wall": med[conv_1] / med[conv_n],
        "scaling_1_to_N_inner": inner[conv_1] / inner[conv_n],
        "pack_over_convert_wall": med[pack_n] / med[conv_n],
        "chain_over_pack_wall": med["chain (qemu-img+sha256sum+tar)"] / med[pack_n],
        "peak_rss_mib_ovfstream_pN": max(max(results[n].rss) for n in (conv_n, pack_n)) / MIB,
    }
    vc = "vmdk-convert -n%s -c1" % np
    if vc in results:
        ratios["vmdk_convert_over_ovfstream_convert"] = med[vc] / med[conv_n]
        ratios["size_vmdk_convert_over_qemu"] = (results[vc].out_size
                                                 / results["qemu-img convert"].out_size)
    for p in (qemu_out, conv_out, pack_out, work / "chain.ova", work / "chain-disk1.vmdk",
              work / "vmdk-convert.vmdk"):
        p.unlink(missing_ok=True)
    return {
        "input": {"label": label, "path": str(src), "size_bytes": size,
                  "allocated_bytes": src.stat().st_blocks * 512,
                  "nonzero_grain_bytes": grain_bytes},
        "cases": {name: c.summary() for name, c in results.items()},
        "output_dir": output_dir_facts(work),
        "engine_bound": {"engine": "isal-1", "workers": workers, "wall_s": bound_wall,
                         "walls_s": [round(w, 3) for w in bound_walls],
                         "deflate_cpu_s": _med(deflate), "sha256_cpu_s": _med(sha),
                         "deflate_mb_per_s_per_core": grain_bytes / _med(deflate) / 1e6,
                         "convert_bound_s": bound_conv, "pack_bound_s": bound_pack},
        "ratios": ratios,
        "checks": checks,
    }


# --------------------------------------------------------------------------- extra cases

def bench_empty(work: Path, *, repeat: int, workers: int, log: Any) -> dict[str, Any]:
    src = work / "empty-100g.raw"
    out = work / "empty-100g.vmdk"
    with open(src, "wb") as f:
        f.truncate(100 * GIB)
    walls, inner, rss = [], [], []
    try:
        for _ in range(repeat):
            out.unlink(missing_ok=True)
            run = run_child(ovfs_cmd("convert", str(src), "-o", str(out), "--parallel",
                                     str(workers), "--json", "--quiet"), env=ovfs_env())
            walls.append(run.wall)
            inner.append(float(json.loads(run.stdout)["seconds"]))
            rss.append(run.maxrss_bytes)
        size = out.stat().st_size
        log("[empty-100g] %.3f s wall (%.3f s inside), %d KiB VMDK" % (_med(walls), _med(inner),
                                                                        size // 1024))
        return {"wall_median_s": _med(walls), "inner_median_s": _med(inner),
                "walls_s": walls, "peak_rss_bytes": max(rss), "output_bytes": size}
    finally:
        src.unlink(missing_ok=True)
        out.unlink(missing_ok=True)


def make_spread(dense: Path, out: Path) -> Path:
    """An 8 GiB sparse file holding the dense file's bytes at four offsets (cached)."""
    offsets = [0, 5 * GIB // 2, 5 * GIB, 7 * GIB]
    stamp = out.with_name(out.name + ".stamp")
    key = json.dumps({"dense": str(dense), "dense_size": dense.stat().st_size,
                      "dense_mtime": int(dense.stat().st_mtime), "offsets": offsets})
    if out.exists() and stamp.exists() and stamp.read_text() == key:
        return out
    n = dense.stat().st_size
    with open(dense, "rb") as s, open(out, "wb") as d:
        d.truncate(8 * GIB)
        for off in offsets:
            s.seek(0)
            d.seek(off)
            left = min(n, 8 * GIB - off)
            while left > 0:
                block = s.read(min(8 * MIB, left))
                if not block:
                    break
                d.write(block)
                left -= len(block)
    stamp.write_text(key)
    return out


def bench_rss_scale(dense: Path, work: Path, *, workers: int, log: Any) -> dict[str, Any]:
    spread = make_spread(dense, dense.with_name("spread-8g.raw"))
    res: dict[str, Any] = {}
    for label, src in (("dense", dense), ("spread-8g", spread)):
        out = work / ("rss-%s.vmdk" % label)
        out.unlink(missing_ok=True)
        run = run_child(ovfs_cmd("convert", str(src), "-o", str(out), "--parallel",
                                 str(workers), "--json", "--quiet"), env=ovfs_env())
        doc = json.loads(run.stdout)
        res[label] = {"size_bytes": src.stat().st_size, "data_bytes": doc["bytes_read"],
                      "peak_rss_bytes": run.maxrss_bytes, "wall_s": run.wall}
        log("[rss] %-9s %5d MiB of data: peak RSS %d MiB" % (label, doc["bytes_read"] // MIB,
                                                              run.maxrss_bytes // MIB))
        out.unlink(missing_ok=True)
    res["rss_ratio_8g_over_1g"] = (res["spread-8g"]["peak_rss_bytes"]
                                   / res["dense"]["peak_rss_bytes"])
    return res


# --------------------------------------------------------------------------- machine facts

def machine_facts() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        import isal
        isal_version = isal.__version__
    except ImportError:
        isal_version = None

    def out(cmd: Sequence[str]) -> str | None:
        try:
            return subprocess.run(list(cmd), capture_output=True, text=True, cwd=REPO,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None
    dirty = out(["git", "status", "--porcelain", "--untracked-files=no"])
    return {
        "nproc": os.cpu_count(), "cpus_available": len(os.sched_getaffinity(0)),
        "cpu_model": model, "mem_total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "python": platform.python_version(), "platform": platform.platform(),
        "isal": isal_version, "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "qemu_img": (out(["qemu-img", "--version"]) or "").splitlines()[0:1],
        "git_commit": out(["git", "rev-parse", "HEAD"]), "git_dirty": bool(dirty),
        "loadavg_start": os.getloadavg(),
    }


# --------------------------------------------------------------------------- report

# DESIGN.md "Performance targets": (target, higher is better) per input and figure.  The OS
# image carries the speed-vs-qemu and size targets, dense data the engine-bound and scaling ones.
TARGETS: dict[str, dict[str, tuple[float, bool]]] = {
    "os-ext4": {
        "qemu_over_ovfstream_pack": (20.0, True),
        "qemu_over_ovfstream_convert": (20.0, True),           # issue 12
        "convert_wall_over_bound_wall": (1.35, False),         # issue 12
        "pack_over_convert_wall": (1.12, False),               # issue 12
        "size_ovfstream_vmdk_over_qemu": (1.07, False),        # issue 12 (DESIGN: 1.06)
        "size_ovfstream_ova_over_qemu": (1.07, False),
        "peak_rss_mib_ovfstream_pN": (256.0, False),
    },
    "dense": {
        "convert_wall_over_engine_bound": (1.15, False),
        "convert_inner_over_engine_bound": (1.15, False),
        "pack_wall_over_engine_bound": (1.15, False),
        "pack_inner_over_engine_bound": (1.15, False),
        "scaling_1_to_N_wall": (1.8, True),
        "scaling_1_to_N_inner": (1.8, True),
        "peak_rss_mib_ovfstream_pN": (256.0, False),
    },
}


def print_report(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    # wide enough for the tables even when stdout is a file or a pipe
    con = Console(width=None if sys.stdout.isatty() else 132)
    m = doc["machine"]
    con.print("[bold]machine[/]: %s, %s CPUs (%s available), Python %s, isal %s, zlib %s, %s, "
              "commit %s%s; load %s -> %s" % (
                  m["cpu_model"], m["nproc"], m["cpus_available"], m["python"], m["isal"],
                  m["zlib"], " ".join(m["qemu_img"]), (m["git_commit"] or "?")[:12],
                  " (dirty)" if m["git_dirty"] else "",
                  "/".join("%.2f" % x for x in m["loadavg_start"]),
                  "/".join("%.2f" % x for x in m.get("loadavg_end", ()))))
    for res in doc["inputs"]:
        inp = res["input"]
        t = Table(title="%s: %s (%.1f GiB virtual, %.0f MiB allocated, %.0f MiB non-zero grains)" % (
            inp["label"], inp["path"], inp["size_bytes"] / GIB, inp["allocated_bytes"] / MIB,
            inp["nonzero_grain_bytes"] / MIB))
        for col in ("case", "median s", "min s", "max s", "inside s", "sys s", "peak RSS MiB",
                    "output MiB"):
            t.add_column(col, justify="left" if col == "case" else "right")
        for name, c in res["cases"].items():
            t.add_row(name, "%.2f" % c["wall_median_s"], "%.2f" % c["wall_min_s"],
                      "%.2f" % c["wall_max_s"],
                      "%.2f" % c["inner_median_s"] if c["inner_median_s"] is not None else "",
                      "%.2f" % c["sys_median_s"] if c.get("sys_median_s") is not None else "",
                      "%d" % (c["peak_rss_bytes"] // MIB), "%.1f" % (c["output_bytes"] / MIB))
        eb = res["engine_bound"]
        t.add_row("engine bound: isal-1 alone, %d threads (wall)" % eb["workers"],
                  "%.2f" % eb["wall_s"], "%.2f" % min(eb["walls_s"]), "%.2f" % max(eb["walls_s"]),
                  "", "", "", "")
        t.add_row("engine CPU convert (isal-1 / %d)" % eb["workers"],
                  "%.2f" % eb["convert_bound_s"], "", "", "", "", "", "")
        t.add_row("engine CPU pack (+sha256) / %d" % eb["workers"],
                  "%.2f" % eb["pack_bound_s"], "", "", "", "", "", "")
        con.print(t)
        if "vmdk-convert -n%d -c1" % eb["workers"] not in res["cases"]:
            con.print("vmdk-convert (open-vmdk) is not installed: its column is left out")
        od = res.get("output_dir")
        if od:
            con.print("outputs in %s (%s): %s; the 'buffered' case forces buffered writes "
                      "(OVFSTREAM_DIRECT_IO=0)" % (od["path"], od["fs_type"], od["note"]))
        r = Table(title="%s: ratios" % inp["label"])
        r.add_column("ratio")
        r.add_column("value", justify="right")
        r.add_column("target", justify="right")
        for name, value in res["ratios"].items():
            target = TARGETS.get(inp["label"], {}).get(name)
            if target is None:
                r.add_row(name, "%.2f" % value, "")
                continue
            ok = value >= target[0] if target[1] else value <= target[0]
            r.add_row(name, "%.2f" % value, "%s %.2f %s" % (">=" if target[1] else "<=",
                                                            target[0], "ok" if ok else "MISSED"))
        ch = res["checks"]
        r.add_row("qemu-img compare / check / OVA", "%s / %s / %s" % (
            ch["qemu_img_compare"], ch["qemu_img_check"], ch["ova_order_and_manifest"]), "all True")
        con.print(r)
    if "empty_100g" in doc:
        e = doc["empty_100g"]
        con.print("empty 100 GiB sparse: %.3f s wall (%.3f s inside), peak RSS %d MiB, %d KiB "
                  "VMDK (target < 1 s)" % (e["wall_median_s"], e["inner_median_s"],
                                           e["peak_rss_bytes"] // MIB, e["output_bytes"] // 1024))
    if "rss_scale" in doc:
        s = doc["rss_scale"]
        con.print("peak RSS: dense %d MiB file %d MiB, 8 GiB file with %d MiB of data %d MiB, "
                  "ratio %.2f (target: flat, <= 256 MiB)" % (
                      s["dense"]["size_bytes"] // MIB,
                      s["dense"]["peak_rss_bytes"] // MIB, s["spread-8g"]["data_bytes"] // MIB,
                      s["spread-8g"]["peak_rss_bytes"] // MIB, s["rss_ratio_8g_over_1g"]))


def main(argv: Sequence[str] | None = None) -> int:
    cache = Path(os.environ.get("OVFSTREAM_BENCH_CACHE")
                 or Path(tempfile.gettempdir()) / "ovfstream-bench")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image", type=Path, default=None,
                   help="ext4 OS image (default: made by make_image.py in the cache dir)")
    p.add_argument("--image-size", type=make_image.parse_size, default=8 * GIB)
    p.add_argument("--image-data", type=make_image.parse_size, default=int(1.2 * GIB))
    p.add_argument("--dense", type=Path, default=None,
                   help="dense raw file (default: made by make_image.py in the cache dir)")
    p.add_argument("--dense-size", type=make_image.parse_size, default=GIB)
    p.add_argument("--skip-image", action="store_true")
    p.add_argument("--skip-dense", action="store_true")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workers", type=int, default=2, help="the N of the -pN cases (default 2)")
    p.add_argument("--empty-100g", action="store_true", help="time an empty sparse 100 GiB disk")
    p.add_argument("--rss-scale", action="store_true",
                   help="peak RSS: the dense file vs 8 GiB holding it at four offsets")
    p.add_argument("--cache", type=Path, default=cache, help="where inputs and outputs go")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    if shutil.which("qemu-img") is None:
        raise SystemExit("qemu-img is needed (apt-get install qemu-utils)")
    args.cache.mkdir(parents=True, exist_ok=True)
    work = args.cache / "work"

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    doc: dict[str, Any] = {"machine": machine_facts(), "repeat": args.repeat,
                           "workers": args.workers, "inputs": []}
    inputs: list[tuple[str, Path]] = []
    if not args.skip_image:
        image = args.image or args.cache / ("os-ext4-%d-%d.img" % (args.image_size, args.image_data))
        if args.image is None:
            log("making %s (cached by its stamp)" % image)
            make_image.ensure_image("ext4", image, size_bytes=args.image_size,
                                    data_bytes=args.image_data)
        inputs.append(("os-ext4", image))
    dense = args.dense or args.cache / ("dense-%d.raw" % args.dense_size)
    if (not args.skip_dense or args.rss_scale) and args.dense is None:
        make_image.ensure_image("dense", dense, size_bytes=args.dense_size)
    if not args.skip_dense:
        inputs.append(("dense", dense))
    for label, path in inputs:
        doc["inputs"].append(bench_input(label, path, work / label, repeat=args.repeat,
                                         workers=args.workers, log=log))
    if args.empty_100g:
        doc["empty_100g"] = bench_empty(work, repeat=args.repeat, workers=args.workers, log=log)
    if args.rss_scale:
        doc["rss_scale"] = bench_rss_scale(dense, work, workers=args.workers, log=log)
    doc["machine"]["loadavg_end"] = os.getloadavg()
    print_report(doc)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    bad = [r["input"]["label"] for r in doc["inputs"]
           if not (r["checks"]["qemu_img_compare"] and r["checks"]["qemu_img_check"]
                   and r["checks"]["ova_order_and_manifest"])]
    if bad:
        log("CORRECTNESS CHECK FAILED for: %s" % ", ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
