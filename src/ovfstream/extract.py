"""``ovfstream extract``: get the disks (and descriptor, manifest) back out of a package.

A package goes into a folder: the descriptor, manifest and certificate as they are, and
each disk as a sparse raw image (default), as the VMDK member itself, or as raw compressed
with zstandard.  Names come from the package's own safe-checked members, so nothing is
written outside the folder; every file is written under a fresh temporary name and renamed
when whole, and no output may be a file being read.  A bare VMDK goes to one raw (or .zst)
file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .atomic import atomic_output
from .errors import UsageError
from .outputs import Inputs
from .ova.tar import check_member_name
from .ovf.reader import parse_descriptor
from .package import open_package
from .vmdk.reader import ExtractResult, VmdkReader, extract_raw, extract_zst

__all__ = ["extract", "ExtractSummary", "FORMATS"]

FORMATS = ("raw", "vmdk", "zst")


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


def _disk(reader: VmdkReader, out: str, fmt: str) -> ExtractResult:
    return extract_zst(reader, out) if fmt == "zst" else extract_raw(reader, out)


def extract(source: str | os.PathLike[str], output: str | os.PathLike[str], *,
            format: str = "raw", parallel: int | None = None) -> ExtractSummary:
    """Extract a package into the folder ``output`` (created if missing), or a bare VMDK
    into the file ``output``.  ``parallel`` is accepted for symmetry; inflation is serial."""
    if format not in FORMATS:
        raise UsageError("--format %r: allowed %s" % (format, ", ".join(FORMATS)))
    src, out = os.fspath(source), os.fspath(output)
    summary = ExtractSummary(src, out)
    if src.lower().endswith(".vmdk"):
        if format == "vmdk":
            raise UsageError("--format vmdk: the source already is a VMDK")
        read = Inputs()
        read.add(src)
        read.check_output(out)  # extract x.vmdk -o x.vmdk (or a link to it)
        with VmdkReader(src) as reader:
            result = _disk(reader, out, format)
        summary.disks.append(result)
        summary.files.append((out, os.path.getsize(out)))
        return summary

    pkg = open_package(src)
    descriptor, _ = parse_descriptor(pkg.read_small(pkg.descriptor),
                                     path=pkg.location(pkg.descriptor))
    if os.path.exists(out) and not os.path.isdir(out):
        raise UsageError("-o %s: extracting a package needs a folder" % out)
    os.makedirs(out, exist_ok=True)
    disk_hrefs = {f.href for f in descriptor.files
                  if any(d.file_ref == f.id for d in descriptor.disks)}
    # The folder form's folder may hold anything (the source raw images, other packages):
    # take only the package's own files from it.  Every OVA member is extracted.
    stem = os.path.splitext(pkg.descriptor.name)[0]
    own = {pkg.descriptor.name, stem + ".mf", stem + ".cert", *(f.href for f in descriptor.files)}
    read = Inputs()  # an output may not be a file being read (the OVA, the folder's members)
    read.add(pkg.path)
    for m in pkg.members:
        if pkg.form == "ova" or m.name in own:
            read.add(m.path)
    for m in pkg.members:
        if pkg.form == "ovf" and m.name not in own:
            continue
        check_member_name(m.name, path=pkg.path)  # the folder form lists files; re-check
        target = os.path.join(out, m.name)
        if m.name in disk_hrefs and format != "vmdk":
            stem = os.path.splitext(m.name)[0]
            target = os.path.join(out, stem + (".raw.zst" if format == "zst" else ".raw"))
            read.check_output(target)
            with VmdkReader(m.path, name=pkg.path if pkg.form == "ova" else m.path,
                            member=m.name if pkg.form == "ova" else None,
                            base_offset=m.offset, size=m.size) as reader:
                summary.disks.append(_disk(reader, target, format))
        else:
            read.check_output(target)
            with pkg.open(m) as f, atomic_output(target, fsync=False) as dst:
                _copy_exact(f, dst, m.size)
        summary.files.append((target, os.path.getsize(target)))
    return summary


def _copy_exact(src, dst, n: int) -> None:  # type: ignore[no-untyped-def]
    left = n
    while left:
        chunk = src.read(min(left, 8 << 20))
        if not chunk:
            raise OSError("unexpected end of file with %d bytes left" % left)
        dst.write(chunk)
        left -= len(chunk)
