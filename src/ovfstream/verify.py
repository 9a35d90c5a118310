"""``ovfstream verify``: is this package sound, before an import fails at night?

Checks, each a Finding with a rule id (docs/rules.md): the tar layout and member order
(FORMATS.md 2), safe names, every referenced file present with ``ovf:size`` equal to its
member, the manifest (parsed tolerantly, every digest checked), the certificate (RSA
PKCS#1 v1.5 over the exact manifest bytes), each VMDK's structure, and the descriptor's
cross references.  ``strict`` adds the descriptor's structural validation (ovfstream's own
rules, plus the DMTF XSDs when installed; ``validators`` says which ran); ``deep`` inflates
every grain.

Digests: each member's data is read once, front to back, in large reads, at hashlib speed.
The VMDK structure walk then reads only marker sectors and tables (``deep`` reads the
payloads again to inflate them; by then they are in the page cache).
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from dataclasses import dataclass, field

from .errors import FormatError, Finding, UnsupportedError, location
from .manifest import parse_manifest
from .ovf import targets
from .ovf.reader import _parse_xml as parse_xml  # the same hardened parse, for the target lint
from .ovf.reader import parse_descriptor
from .ovf.summary import Descriptor
from .ovf.validate import strict_validators
from .package import (FORMATS, Member, Package, extract_plan, hash_members, open_package,
                      output_collisions)
from .pipeline import check_workers
from .vmdk.reader import VerifyReport, VmdkReader

__all__ = ["verify", "VerifyResult", "RULES"]

RULES: dict[str, str] = {
    "ova.member.order": "the descriptor is not the first member, or the manifest/certificate "
                        "are neither right after it nor at the end",
    "ova.file.missing": "a file the descriptor references is not in the package",
    "ova.file.size": "a member's size differs from its File ovf:size",
    "ova.file.extra": "a member that nothing references (warning)",
    "ova.descriptor.missing": "no .ovf descriptor in the package",
    "ova.descriptor.many": "more than one .ovf in the package (warning)",
    "ova.member.size": "a descriptor, manifest or certificate larger than 16 MiB",
    "mf.missing": "the package has no manifest (warning)",
    "mf.file.missing": "the manifest lists a file that is not in the package",
    "mf.file.unlisted": "a package file the manifest does not list",
    "mf.digest.mismatch": "a file's digest differs from the manifest's",
    "ova.file.collision": "two members would be extracted under one name (e.g. a member "
                          "t-disk1.raw beside the disk t-disk1.vmdk; names compared without "
                          "case): extract refuses the package",
    "disk.capacity": "the VMDK's capacity differs from the descriptor's Disk ovf:capacity",
    "disk.populated": "ovf:populatedSize differs from the bytes of non-zero grains (deep; warning)",
    "disk.format": "a Disk's ovf:format is not a VMDK: extract cannot read it back",
    "disk.unsupported": "a disk file extract cannot read back: not a stream-optimized VMDK "
                        "(descriptor-only, monolithic sparse, COW...) or beyond the reader's "
                        "limits (e.g. capacity over 64 TiB)",
    # verify --target NAME: raised by ovf/targets.py's lint, listed there.
    **targets.RULES,
}

_VMDK_FORMAT_HINT = "vmdk"


@dataclass
class VerifyResult:
    path: str
    findings: list[Finding] = field(default_factory=list)
    descriptor: Descriptor | None = None
    digests_checked: int = 0
    bytes_hashed: int = 0
    seconds: float = 0.0
    content_ids: dict[str, str] = field(default_factory=dict)
    # --strict: what judged the descriptor ("structure", "dmtf-xsd 1.1.1", ...)
    validators: list[str] = field(default_factory=list)
    target: str | None = None   # --target: the preset the package was linted against

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    def as_dict(self) -> dict[str, object]:
        return {"operation": "verify", "path": self.path, "ok": self.ok,
                "errors": len(self.errors),
                "warnings": sum(f.severity == "warning" for f in self.findings),
                "digests_checked": self.digests_checked, "bytes_hashed": self.bytes_hashed,
                "seconds": round(self.seconds, 6),
                "hash_gb_per_s": round(self.bytes_hashed / self.seconds / 1e9, 3)
                if self.seconds else None,
                "content_ids": self.content_ids,
                "validators": self.validators, "target": self.target,
                "findings": [f.as_dict() for f in self.findings]}


def _order_findings(pkg: Package) -> list[Finding]:
    if pkg.form != "ova":
        return []
    names = [m.name for m in pkg.members]
    findings = []
    if names[0] != pkg.descriptor.name:
        findings.append(Finding("ova.member.order", "error", pkg.path, pkg.members[0].offset - 512,
                                "the first member is %s; the descriptor %s must come first "
                                "(ovftool, ESXi and oVirt read it first)"
                                % (names[0], pkg.descriptor.name)))
    extras = [i for i, n in enumerate(names) if n.lower().endswith((".mf", ".cert"))]
    if extras:
        after_descriptor = extras == list(range(1, 1 + len(extras)))
        at_end = extras == list(range(len(names) - len(extras), len(names)))
        if not (after_descriptor or at_end):
            findings.append(Finding("ova.member.order", "error", pkg.path, None,
                                    "manifest/certificate at positions %s: they go right after "
                                    "the descriptor or both at the very end" % extras))
    return findings


def verify(path: str | os.PathLike[str], *, strict: bool = False, deep: bool = False,
           schema_dir: str | os.PathLike[str] | None = None,
           now: _dt.datetime | None = None, target: str | None = None,
           parallel: int | None = None) -> VerifyResult:
    """Verify an .ova, an .ovf (with its folder) or a bare .vmdk; findings, never a traceback.

    ``now`` judges certificate validity periods (default: the current time; pass it to pin).
    ``target`` (ovf/targets.py) adds ``target.*`` findings: what that importer refuses
    (error) or ignores (warning) in this package.  ``parallel``: threads that inflate the
    grains for ``deep`` (default: the CPUs available; the result is the same whatever it is).
    """
    started = time.perf_counter()
    workers = check_workers(parallel)
    text = os.fspath(path)
    preset = targets.get_target(target, what="--target") if target is not None else None
    result = VerifyResult(text, target=preset.name if preset else None)
    if text.lower().endswith(".vmdk"):
        # Header errors are raised when the reader opens: they are findings here too, and
        # the reader is closed either way.  UnsupportedError (not a stream VMDK) goes on.
        try:
            with VmdkReader(text) as reader:
                _verify_disk(result, reader, deep=deep, name=text, workers=workers)
        except FormatError as exc:
            result.findings.append(exc.finding())
        result.seconds = time.perf_counter() - started
        return result
    try:
        pkg = open_package(text)
    except FormatError as exc:
        result.findings.append(exc.finding())
        result.seconds = time.perf_counter() - started
        return result
    result.findings += pkg.findings
    result.findings += _order_findings(pkg)

    desc_member = pkg.descriptor
    try:
        desc_bytes = pkg.read_small(desc_member)
        descriptor, desc_findings = parse_descriptor(desc_bytes,
                                                     path=pkg.location(desc_member),
                                                     strict=strict, schema_dir=schema_dir)
    except FormatError as exc:
        result.findings.append(exc.finding())
        result.seconds = time.perf_counter() - started
        return result
    result.descriptor = descriptor
    result.findings += desc_findings
    if strict:
        result.validators = strict_validators(descriptor.namespace, schema_dir)

    stem = os.path.splitext(desc_member.name)[0]
    mf_member = pkg.member(stem + ".mf")
    cert_member = pkg.member(stem + ".cert")
    referenced: dict[str, int | None] = {f.href: f.size for f in descriptor.files}
    for href, size in referenced.items():
        m = pkg.member(href)
        if m is None:
            if "://" not in href:
                result.findings.append(Finding("ova.file.missing", "error", pkg.path, None,
                                                "the descriptor references %s; the package "
                                                "has no such file" % href))
            continue
        if size is not None and size != m.size:
            result.findings.append(Finding("ova.file.size", "error", pkg.location(m), None,
                                            "ovf:size says %d bytes, the file has %d"
                                            % (size, m.size)))
    known = {desc_member.name, *(m.name for m in (mf_member, cert_member) if m)}
    for m in pkg.members:
        if m.name not in known and m.name not in referenced and pkg.form == "ova":
            result.findings.append(Finding("ova.file.extra", "warning", pkg.location(m), None,
                                            "not referenced by the descriptor"))

    # Manifest and digests
    entries = []
    mf_bytes = b""
    if mf_member is None:
        result.findings.append(Finding("mf.missing", "warning", pkg.path, None,
                                        "no %s.mf: nothing proves the files are intact" % stem))
    else:
        try:
            mf_bytes = pkg.read_small(mf_member)
            entries, mf_findings = parse_manifest(mf_bytes, path=pkg.location(mf_member))
            result.findings += mf_findings
        except FormatError as exc:
            result.findings.append(exc.finding())
    entry_names = {e.name for e in entries}
    to_hash = [m for m in pkg.members if m.name in entry_names]
    algorithms = {e.algorithm for e in entries}
    digests = hash_members(pkg, to_hash, algorithms) if to_hash else {}
    result.bytes_hashed = sum(m.size for m in to_hash)
    listed = set()
    for e in entries:
        listed.add(e.name)
        got = digests.get(e.name, {}).get(e.algorithm)
        if got is None:
            result.findings.append(Finding("mf.file.missing", "error",
                                            pkg.location(mf_member), None,
                                            "line %d lists %s, which is not in the package"
                                            % (e.line_no, e.name)))
        elif got != e.hexdigest.lower():
            result.findings.append(Finding("mf.digest.mismatch", "error",
                                            location(pkg.path, e.name if pkg.form == "ova" else None),
                                            None, "%s is %s, the manifest says %s"
                                            % (e.algorithm.upper(), got, e.hexdigest.lower())))
        else:
            result.digests_checked += 1
    if mf_member is not None:
        for name in [desc_member.name, *referenced]:
            if name not in listed and pkg.member(name) is not None:
                result.findings.append(Finding("mf.file.unlisted", "error",
                                                pkg.location(mf_member), None,
                                                "%s is not listed" % name))
    if cert_member is not None and mf_member is not None:
        try:
            from .cert import check_signature, parse_certificate_file  # only when signed
            cert = parse_certificate_file(pkg.read_small(cert_member),
                                          path=pkg.location(cert_member))
            result.findings += check_signature(
                mf_bytes, cert, mf_name=mf_member.name, path=pkg.location(cert_member),
                now=now or _dt.datetime.now(_dt.timezone.utc))
        except FormatError as exc:
            result.findings.append(exc.finding())

    # What extract would write: no two members may land on one name, in any --format.
    clashes: set[tuple[str, str, str]] = set()
    for fmt in FORMATS:
        for first, second, name in output_collisions(extract_plan(pkg, descriptor, fmt)):
            if (first, second, name.casefold()) not in clashes:
                clashes.add((first, second, name.casefold()))
                result.findings.append(Finding(
                    "ova.file.collision", "error", pkg.path, None,
                    "%s and %s would both be extracted as %s (--format %s): one would "
                    "overwrite the other" % (first, second, name, fmt)))

    if preset is not None:
        result.findings += targets.lint(preset, parse_xml(
            desc_bytes, pkg.location(desc_member), [], False), targets.LintInput(
                path=pkg.location(desc_member),
                manifest_path=pkg.location(mf_member) if mf_member else None,
                manifest=mf_bytes or None, algorithms=frozenset(e.algorithm for e in entries),
                members=tuple(m.name for m in pkg.members) if pkg.form == "ova" else (),
                package_bytes=os.path.getsize(pkg.path) if pkg.form == "ova" else None))

    # Disks: each member is read once, however many Disks name it; what extract cannot read
    # back is an error.
    by_file = {f.id: f.href for f in descriptor.files}
    checked: dict[str, tuple[int, VerifyReport] | None] = {}
    for disk in descriptor.disks:
        href = by_file.get(disk.file_ref or "")
        m = pkg.member(href) if href else None
        if m is None:
            continue
        if disk.format_uri and _VMDK_FORMAT_HINT not in disk.format_uri.lower():
            result.findings.append(Finding("disk.format", "error", pkg.location(m), None,
                                            "Disk %s: format %s; extract reads only "
                                            "stream-optimized VMDKs"
                                            % (disk.disk_id, disk.format_uri)))
            continue
        if m.name not in checked:
            checked[m.name] = _verify_member_disk(result, pkg, m, deep=deep, workers=workers)
        done = checked[m.name]
        if done is not None:
            _check_declared(result, pkg.location(m), disk, done[0], done[1], deep=deep)
    result.seconds = time.perf_counter() - started
    return result


def _verify_member_disk(result: VerifyResult, pkg: Package, m: Member, *, deep: bool,
                        workers: int) -> tuple[int, VerifyReport] | None:
    """Open and check one disk member; (capacity, report), or None when it cannot be read."""
    try:
        reader = pkg.open_vmdk(m)
    except FormatError as exc:
        result.findings.append(exc.finding())
        return None
    except UnsupportedError as exc:
        detail = str(exc)
        where = pkg.location(m) + ": "
        detail = detail[len(where):] if detail.startswith(where) else detail
        result.findings.append(Finding("disk.unsupported", "error", pkg.location(m), None,
                                        "extract cannot read it back: %s" % detail))
        return None
    with reader:
        report = _verify_disk(result, reader, deep=deep, name=pkg.location(m), workers=workers)
        return reader.capacity_bytes, report


def _verify_disk(result: VerifyResult, reader: VmdkReader, *, deep: bool, name: str,
                 workers: int) -> VerifyReport:
    report = reader.verify(deep=deep, workers=workers)
    result.findings += report.findings
    if report.content_id:
        result.content_ids[name] = report.content_id
    return report


def _check_declared(result: VerifyResult, name: str, declared: object, capacity_bytes: int,
                    report: VerifyReport, *, deep: bool) -> None:
    """A Disk's ovf:capacity and ovf:populatedSize against the VMDK that it names."""
    capacity = getattr(declared, "capacity_bytes", None)
    if capacity is not None and capacity != capacity_bytes:
        result.findings.append(Finding("disk.capacity", "error", name, None,
                                        "the descriptor says %d bytes, the VMDK holds %d"
                                        % (capacity, capacity_bytes)))
    populated = getattr(declared, "populated_bytes", None)
    if deep and populated is not None and report.ok and populated != report.populated_bytes:
        result.findings.append(Finding("disk.populated", "warning", name, None,
                                        "ovf:populatedSize says %d, the non-zero grains hold %d"
                                        % (populated, report.populated_bytes)))
