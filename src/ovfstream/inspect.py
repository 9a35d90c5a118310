"""``ovfstream inspect``: what a package (or a bare VMDK) declares, on one screen.

Lax by design: any producer's descriptor gives a summary (ovf/reader.py); problems found on
the way are listed as findings, and ``verify`` is the command that judges.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .errors import Finding
from .ovf.reader import parse_descriptor
from .ovf.summary import Descriptor, summary_text
from .package import open_package, own_members
from .vmdk.reader import VmdkReader

__all__ = ["inspect", "InspectResult"]


@dataclass
class InspectResult:
    path: str
    form: str                                   # "ova", "ovf" or "vmdk"
    descriptor: Descriptor | None
    members: list[tuple[str, int]] = field(default_factory=list)  # (name, size) in order
    manifest: str | None = None
    certificate: str | None = None
    vmdk: dict[str, object] | None = None       # header facts of a bare VMDK
    findings: list[Finding] = field(default_factory=list)

    def rows(self) -> list[tuple[str, str]]:
        rows: list[tuple[str, str]] = [("Package", "%s (%s)" % (self.path, self.form))]
        if self.descriptor is not None:
            rows += summary_text(self.descriptor)
        if self.vmdk is not None:
            rows += [(k, str(v)) for k, v in self.vmdk.items()]
        if self.form != "vmdk":
            rows.append(("Manifest", self.manifest or "none"))
            rows.append(("Certificate", self.certificate or "none"))
        for name, size in self.members:
            rows.append(("Member", "%s, %d bytes" % (name, size)))
        return rows

    def as_dict(self) -> dict[str, object]:
        return {"operation": "inspect", "path": self.path, "form": self.form,
                "descriptor": self.descriptor.as_dict() if self.descriptor else None,
                "members": [{"name": n, "size": s} for n, s in self.members],
                "manifest": self.manifest, "certificate": self.certificate,
                "vmdk": self.vmdk, "findings": [f.as_dict() for f in self.findings]}


def inspect(path: str | os.PathLike[str]) -> InspectResult:
    """Summarise an .ova, an .ovf (with its folder), a package folder or a bare .vmdk."""
    text = os.fspath(path)
    if text.lower().endswith(".vmdk"):
        with VmdkReader(text) as reader:
            h = reader.header
            facts: dict[str, object] = {
                "Capacity": "%d bytes" % reader.capacity_bytes,
                "Create type": reader.descriptor.create_type,
                "Version": h.version, "Flags": "0x%08x" % h.flags,
                "Grain": "%d sectors" % h.grain_sectors,
                "GD": "at end (stream)" if h.gd_offset_sectors == 0xFFFFFFFFFFFFFFFF
                      else "sector %d" % h.gd_offset_sectors,
                "CID": reader.descriptor.cid,
                "Adapter": reader.descriptor.ddb.get("ddb.adapterType"),
            }
            findings = reader.descriptor_findings()
        return InspectResult(text, "vmdk", None, [(os.path.basename(text), os.path.getsize(text))],
                             vmdk=facts, findings=findings)
    pkg = open_package(text)
    descriptor, findings = parse_descriptor(pkg.read_small(pkg.descriptor),
                                            path=pkg.location(pkg.descriptor))
    stem = os.path.splitext(pkg.descriptor.name)[0]
    mf = pkg.member(stem + ".mf")
    cert = pkg.member(stem + ".cert")
    members = own_members(pkg, descriptor)  # a folder may hold other files: the package's own
    return InspectResult(pkg.path, pkg.form, descriptor,
                         [(m.name, m.size) for m in members],
                         manifest=mf.name if mf else None, certificate=cert.name if cert else None,
                         findings=pkg.findings + findings)
