"""verify --deep and extract of one stream VMDK at --parallel 1 and 2, A/B interleaved.

    python benches/inflate_ab.py DISK.vmdk [--rounds 5]

Each round runs both commands at 1 then 2 workers as subprocesses (the CLI as users run it)
and records wall seconds and the children's user+sys CPU seconds; the medians are printed.
CPU seconds do not depend on the machine's load, wall seconds do: on a busy machine read the
CPU column (parallel overhead) and re-measure the wall on a quiet one.  Correctness is checked:
both worker counts give the same content id and byte-identical raw images.
Make an input with ``python benches/make_image.py --kind dense --out dense.raw`` and
``ovfstream convert dense.raw -o dense.vmdk``.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def _run(args: list[str]) -> tuple[float, float, str]:
    """(wall s, children's user+sys s, stdout) of one ovfstream command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ovfstream", *args], capture_output=True,
                          text=True, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vmdk")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    times: dict[tuple[str, int], list[tuple[float, float]]] = {}
    ids: set[str] = set()
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(args.vmdk))) as tmp:
        outs = {p: os.path.join(tmp, "p%d.raw" % p) for p in (1, 2)}
        for _ in range(args.rounds):
            for par in (1, 2):
                wall, cpu, out = _run(["verify", args.vmdk, "--deep", "--json",
                                       "--parallel", str(par)])
                ids.update(json.loads(out)["content_ids"].values())
                times.setdefault(("verify --deep", par), []).append((wall, cpu))
                if os.path.exists(outs[par]):
                    os.unlink(outs[par])
                wall, cpu, _ = _run(["extract", args.vmdk, "-o", outs[par], "--quiet",
                                     "--parallel", str(par)])
                times.setdefault(("extract", par), []).append((wall, cpu))
        if len(ids) != 1 or not filecmp.cmp(outs[1], outs[2], shallow=False):
            print("MISMATCH: content ids %s, or the raw images differ" % sorted(ids))
            return 1
    print("%-14s %3s %10s %10s   (medians of %d interleaved rounds)"
          % ("command", "-p", "wall s", "cpu s", args.rounds))
    for (command, par), rows in times.items():
        print("%-14s %3d %10.2f %10.2f" % (command, par, statistics.median(w for w, _ in rows),
                                           statistics.median(c for _, c in rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
