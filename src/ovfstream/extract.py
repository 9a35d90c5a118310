"""``ovfstream extract``: get the disks (and descriptor, manifest) back out of a package.

A package goes into a folder: the descriptor, manifest and certificate as they are, and
each disk as a sparse raw image (default), as the VMDK member itself, or as raw compressed
with zstandard.  Names come from the package's own safe-checked members, so nothing is
written outside the folder, and no output may be a file being read.

All or nothing: every file is written under a fresh temporary name inside the folder and the
whole set is renamed into place only once every disk has been read back (atomic.AtomicFiles).
On any failure (a format error in the last disk, ENOSPC, Ctrl-C, SIGTERM) the temporaries
are removed, a folder that extract created is removed again, and a folder that existed is
left as it was.  Two members that would land on one output name (a member ``t-disk1.raw``
beside the disk ``t-disk1.vmdk``; names compared without case) refuse the package before
anything is written.  A bare VMDK goes to one raw (or .zst) file, also renamed when whole.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

from .atomic import AtomicFiles, atomic_output
from .errors import FormatError, UsageError
from .outputs import Inputs
from .ova.tar import check_member_name
from .ovf.reader import parse_descriptor
from .package import FORMATS, extract_plan, open_package, output_collisions
from .pipeline import check_workers
from .vmdk.extract import ExtractResult, extract_raw, extract_zst, write_raw, write_zst
from .vmdk.reader import VmdkReader

__all__ = ["extract", "ExtractSummary", "FORMATS"]


@dataclass
class ExtractSummary:
    source: str
    output: str
    files: list[tuple[str, int]] = field(default_factory=list)   # (path, bytes on disk)
    disks: list[ExtractResult] = field(default_factory=list)

    def summary_lines(self) -> list[str]:
        return ["%s: %d bytes" % (p, n) for p, n in self.files]

    def as_dict(self) -> dict[str, object]:
        return {"operation": "extract", "source": self.source, "output": self.output,
                "files": [{"path": p, "size": n} for p, n in self.files],
                "disks": [{"path": d.path, "capacity_bytes": d.size_bytes,
                           "data_bytes": d.bytes_written, "grains": d.grains,
                           "zero_grains": d.zero_grains, "hole_bytes": d.hole_bytes}
                          for d in self.disks]}


def _disk(reader: VmdkReader, out: str, fmt: str, workers: int) -> ExtractResult:
    return (extract_zst(reader, out, workers=workers) if fmt == "zst"
            else extract_raw(reader, out, workers=workers))


def extract(source: str | os.PathLike[str], output: str | os.PathLike[str], *,
            format: str = "raw", parallel: int | None = None) -> ExtractSummary:
    """Extract a package into the folder ``output`` (created if missing), or a bare VMDK
    into the file ``output``.  ``parallel`` threads inflate the grains (default: the CPUs
    available); the files written are the same whatever their number."""
    if format not in FORMATS:
        raise UsageError("--format %r: allowed %s" % (format, ", ".join(FORMATS)))
    workers = check_workers(parallel)
    src, out = os.fspath(source), os.fspath(output)
    summary = ExtractSummary(src, out)
    if src.lower().endswith(".vmdk"):
        if format == "vmdk":
            raise UsageError("--format vmdk: the source already is a VMDK")
        read = Inputs()
        read.add(src)
        read.check_output(out)  # extract x.vmdk -o x.vmdk (or a link to it)
        with VmdkReader(src) as reader:
            result = _disk(reader, out, format, workers)
        summary.disks.append(result)
        summary.files.append((out, os.path.getsize(out)))
        return summary

    pkg = open_package(src)
    descriptor, _ = parse_descriptor(pkg.read_small(pkg.descriptor),
                                     path=pkg.location(pkg.descriptor))
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError("-o %s: extracting a package needs a folder" % out)
    plan = extract_plan(pkg, descriptor, format)
    for first, second, name in output_collisions(plan)[:1]:
        raise FormatError("ova.file.collision", "%s and %s would both be extracted as %s "
                          "(--format %s): one would overwrite the other; nothing was written"
                          % (first, second, name, format), path=pkg.path)
    read = Inputs()  # an output may not be a file being read (the OVA, the folder's members)
    read.add(pkg.path)
    targets = []
    for m, name, _is_disk in plan:
        check_member_name(m.name, path=pkg.path)  # the folder form lists files; re-check
        read.add(m.path)
        targets.append(os.path.join(out, name))
    for target in targets:
        read.check_output(target)
    created = _make_folder(out)
    try:
        with AtomicFiles(fsync=False) as group:
            for (m, _name, is_disk), target in zip(plan, targets):
                dst = group.open(target)
                if is_disk:
                    with pkg.open_vmdk(m) as reader:
                        write = write_zst if format == "zst" else write_raw
                        summary.disks.append(write(reader, dst, path=target, workers=workers))
                else:
                    with pkg.open(m) as f:
                        _copy_exact(f, dst, m.size)
                group.close(dst)   # whole: free its descriptor (renamed at the end)
    except BaseException:
        for folder in reversed(created):   # ours and (now) empty: gone again
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise
    summary.files = [(target, os.path.getsize(target)) for target in targets]
    return summary


def _make_folder(out: str) -> list[str]:
    """Create ``out`` and its missing parents; the folders created, outermost first."""
    missing = []
    here = os.path.abspath(out)
    while not os.path.isdir(here):
        missing.append(here)
        parent = os.path.dirname(here)
        if parent == here:
            break
        here = parent
    os.makedirs(out, exist_ok=True)
    return missing[::-1]


def _copy_exact(src, dst, n: int) -> None:  # type: ignore[no-untyped-def]
    left = n
    while left:
        chunk = src.read(min(left, 8 << 20))
        if not chunk:
            raise OSError("unexpected end of file with %d bytes left" % left)
        dst.write(chunk)
        left -= len(chunk)
