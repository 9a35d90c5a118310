"""The disk's O_DIRECT write rate, alone and with page-cache reads beside it (not a test).

    python benches/write_rate.py --dir DIR --read FILE [--mib 528] [--piece-mib 12] [--repeat 3]

Writes ``--mib`` MiB to a new file in DIR with O_DIRECT, in pieces of ``--piece-mib`` MiB
from four page-aligned buffers (the way the VMDK writer hands over framed spans), then
fsyncs; meanwhile 0, 1 or 2 threads read FILE (which should be cached: read it once first)
32 MiB at a time, the way the workers of a warm cache rebuild read every span.  Each case
runs with two kinds of buffer: ``mmap.mmap(-1, n)``'s shared anonymous map (what the writer
used before buffers.py) and buffers.anonymous's private map with huge pages asked for (what
it uses now).  Prints the write rate of each case, interleaved ``--repeat`` times.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import sys
import threading
import time
from pathlib import Path

MIB = 1 << 20
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ovfstream.buffers import anonymous  # noqa: E402  (the writer's own buffers)


def _reader(path: str, stop: threading.Event) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        buf = memoryview(bytearray(32 * MIB))
        offset = 0
        while not stop.is_set():
            if not os.preadv(fd, [buf], offset):
                offset = 0
                continue
            offset = (offset + len(buf)) % max(size, 1)
    finally:
        os.close(fd)


def write_rate(folder: str, total: int, piece: int, readers: int, read_path: str,
               private: bool) -> float:
    """GB/s of one O_DIRECT write pass of ``total`` bytes with ``readers`` reading threads,
    from private huge-page buffers or shared ones."""
    buffers = [anonymous(piece) if private else mmap.mmap(-1, piece) for _ in range(4)]
    for buf in buffers:
        buf.write(os.urandom(piece))
    path = os.path.join(folder, "write-rate.tmp")
    stop = threading.Event()
    threads = [threading.Thread(target=_reader, args=(read_path, stop)) for _ in range(readers)]
    for t in threads:
        t.start()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
    try:
        started = time.perf_counter()
        for i, offset in enumerate(range(0, total, piece)):
            os.pwrite(fd, buffers[i % 4], offset)
        os.fsync(fd)
        seconds = time.perf_counter() - started
    finally:
        os.close(fd)
        stop.set()
        for t in threads:
            t.join()
        os.unlink(path)
        os.sync()  # the freed blocks are trimmed now, not during the next case
        for buf in buffers:
            buf.close()
    return total / seconds / 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, help="a folder on the disk to measure")
    ap.add_argument("--read", required=True, help="a large file to read meanwhile (cached)")
    ap.add_argument("--mib", type=int, default=528)
    ap.add_argument("--piece-mib", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    piece = a.piece_mib * MIB
    total = a.mib * MIB // piece * piece
    rates: dict[tuple[int, bool], list[float]] = {
        (readers, private): [] for readers in (0, 1, 2) for private in (False, True)}
    for _ in range(a.repeat):
        for readers, private in rates:
            rates[readers, private].append(write_rate(a.dir, total, piece, readers, a.read,
                                                      private))
    for (readers, private), values in rates.items():
        print("O_DIRECT writes of %d MiB pieces from %s buffers, %d reading thread(s): "
              "median %.2f GB/s (%s)"
              % (a.piece_mib, "private huge-page" if private else "shared", readers,
                 statistics.median(values), ", ".join("%.2f" % v for v in values)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
