"""``ovfstream repack``: an OVA or OVF folder -> a new OVA, OVA stream or OVF folder, without
recompressing its stream-optimized disks.

The descriptor is re-rendered by the OVF writer from the parsed input (the lax reader's
summary, mapped onto the VirtualMachine model) plus the caller's overrides, OVF 1.0 or 2.0.
What the model does not hold (ProductSection and its properties, EulaSection,
AnnotationSection, vendor sections, vmw:Config extensions) is carried over as written
(model.CarriedSection), moved into the envelope namespace being written; a carried element
that would break the DMTF schema rules there (ovf/validate.py) is dropped with a warning.
Hardware Items the model does not render (sound, USB, video...) and deployment options are
dropped with a warning.

Disks: a stream-optimized VMDK whose grains are zlib streams is copied grain by grain into
the spec layout (vmdk/copy.py), keeping its CID/uuid/longContentID; any other disk (a
monolithicSparse VMDK, a raw image, another format that sources/ reads) is re-encoded
through the normal pipeline.  One pass writes the package: digests run while writing, the
output is atomic exactly as pack's (pack.package_writer).  The input's manifest is checked
first: a mismatch is refused (``repack.manifest``), so a damaged package is never re-signed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

from lxml import etree

from .cache import SpanCache, open_cache
from .engine import get_engine
from .errors import DigestMismatchError, FormatError, UnsupportedError, UsageError
from .manifest import parse_manifest
from .ovf import validate
from .ovf.model import (
    GUEST_OS,
    NIC_ADAPTERS,
    SATA_SUBTYPES,
    SCSI_TYPES,
    CarriedSection,
    DiskSlot,
    Nic,
    VirtualMachine,
)
from .ovf.namespaces import (
    NS_OVF1,
    NS_OVF2,
    NS_VMW,
    RT_CDROM,
    RT_CPU,
    RT_DISK,
    RT_DVD,
    RT_ETHERNET,
    RT_IDE,
    RT_MEMORY,
    RT_NVME,
    RT_OTHER_STORAGE,
    RT_SAS,
    RT_SATA,
    RT_SCSI,
)
from .ovf.reader import parse_descriptor_tree
from .ovf.spec import vm_from_mapping
from .ovf.summary import Descriptor, DiskInfo, NicInfo, VirtualSystemInfo
from .ovf.writer import OvfVersion, render_descriptor, reserve_size
from .pack import (
    Front,
    Output,
    PackedFile,
    Progress,
    Signer,
    _preset,
    adapter_for,
    check_outputs,
    check_settings,
    disk_entries,
    output_form,
    package_writer,
    progress_of,
    signing_key_of,
    source_date_epoch,
    stream_stem,
)
from .package import Member, Package, hash_members, open_package
from .pipeline import check_workers
from .sources import DiskSource, open_source
from .vmdk.copy import (
    CopyStats,
    GrainCheck,
    LayoutDiffers,
    copies_as_is,
    copy_member,
    copy_stream_vmdk,
    populated_bytes,
    table_grains,
    zlib_grains,
)
from .vmdk.reader import VmdkReader
from .vmdk.writer import DiskStats, write_stream_vmdk

__all__ = ["repack", "RepackResult", "RepackedDisk", "RULES"]

PathLike = str | os.PathLike[str]

RULES: dict[str, str] = {
    "repack.manifest": "the input's manifest names a member that is missing or whose digest "
                       "does not match (refused: a damaged package is never re-signed)",
    "repack.input": "the input cannot be repacked as it is: not one VirtualSystem, a disk "
                    "without a file, or a file the package does not hold",
}

# Modeled hardware: the Items the writer renders from the model.  Others are dropped.
_MODELED_RTS = frozenset({RT_CPU, RT_MEMORY, RT_IDE, RT_SCSI, RT_OTHER_STORAGE, RT_SATA,
                          RT_SAS, RT_NVME, RT_DISK, RT_CDROM, RT_DVD, RT_ETHERNET})
_MODELED_CONFIGS = frozenset({"firmware", "bootOptions.efiSecureBootEnabled",
                              "uefi.secureBoot.enabled"})
_READ_BUFFER = 4 << 20
# Override key -> the VirtualSystem section it replaces.
_REPLACES = {"annotation": "AnnotationSection", "product": "ProductSection",
             "eula": "EulaSection", "eula_file": "EulaSection"}
_SCSI_BY_SUBTYPE = {sub.lower(): name for name, (sub, _) in SCSI_TYPES.items()}
_NIC_BY_SUBTYPE = {sub.lower(): name for name, (sub, _) in NIC_ADAPTERS.items()}


@dataclass(frozen=True)
class RepackedDisk:
    source: str                     # the input member (package:member or the folder's file)
    file_name: str
    copied: CopyStats | None        # grains copied, or
    encoded: DiskStats | None       # re-encoded through the pipeline

    def as_dict(self) -> dict[str, object]:
        detail = (self.copied.as_dict() if self.copied is not None
                  else {"action": "re-encoded", **(self.encoded.as_dict() if self.encoded else {})})
        return {"source": self.source, "file": self.file_name, **detail}


@dataclass(frozen=True)
class RepackResult:
    input: str
    output: str
    form: str
    ovf_version: str
    digest_algorithm: str
    files: tuple[PackedFile, ...]
    disks: tuple[RepackedDisk, ...]
    mtime: int
    seconds: float
    warnings: tuple[str, ...] = ()
    carried: tuple[str, ...] = ()   # kinds of the sections carried over as written
    target: str | None = None
    engine: dict[str, object] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {
            "operation": "repack", "input": self.input, "output": self.output,
            "form": self.form, "target": self.target, "ovf_version": self.ovf_version,
            "digest": self.digest_algorithm, "mtime": self.mtime,
            "warnings": list(self.warnings), "carried": list(self.carried),
            "files": [{"name": f.name, "size": f.size, self.digest_algorithm: f.digest}
                      for f in self.files],
            "disks": [d.as_dict() for d in self.disks], "engine": self.engine,
            "seconds": round(self.seconds, 6), "size_bytes": sum(f.size for f in self.files)}


def repack(package: PathLike, output: PathLike | BinaryIO, *,
           overrides: Mapping[str, object] | None = None, ovf_version: str | None = None,
           digest: str | None = None, target: str | None = None,
           signer: Signer | None = None, parallel: int | None = None, engine: str = "isal",
           level: int | None = None, mtime: int | None = None, fsync: bool = True,
           spool_dir: PathLike | None = None, progress: Progress | None = None,
           inputs: Sequence[PathLike] = (), check_manifest: bool = True,
           input_format: str = "auto", cache: SpanCache | PathLike | None = None,
           cache_max: int | None = None) -> RepackResult:
    """Repack ``package`` (an .ova, an .ovf with its folder, or a folder with one .ovf) into
    ``output`` (``NAME.ova``, ``DIR/NAME.ovf`` or a binary stream), as pack writes them.

    ``overrides`` holds pack's VM keys (name, cpus, memory, os, nics, controller...: the
    spec keys) applied on the input's VM.  ``ovf_version`` and ``digest`` default to the
    target's when one is given, else the input's (its envelope version; its manifest's
    digest, SHA256 without one).  The tar mtime is ``mtime``, else $SOURCE_DATE_EPOCH, else
    the input descriptor's (its tar header's, or the .ovf file's), so OVA -> folder -> OVA
    gives the same bytes.  A manifest that does not match is refused (``repack.manifest``)
    unless ``check_manifest`` is False (then it is a warning); a signature is not carried
    (sign again with ``signer``).  ``input_format`` is pack's, for the disks re-encoded;
    ``cache``/``cache_max`` too (the span cache, cache.py: copied disks do not use it).
    """
    args = dict(overrides=overrides, ovf_version=ovf_version, digest=digest, target=target,
                signer=signer, parallel=parallel, engine=engine, level=level, mtime=mtime,
                fsync=fsync, spool_dir=spool_dir, progress=progress, inputs=inputs,
                check_manifest=check_manifest, input_format=input_format, cache=cache,
                cache_max=cache_max)
    try:
        return _repack(package, output, trust_tables=True, **args)  # type: ignore[arg-type]
    except LayoutDiffers:
        pass
    # A disk's grain markers disagree with its tables: nothing was put in place (the output
    # is atomic, a stream is spooled until the end); redo it from the markers (outside the
    # handler, so the first attempt's frames and buffers are gone).
    return _repack(package, output, trust_tables=False, **args)  # type: ignore[arg-type]


def _repack(package: PathLike, output: PathLike | BinaryIO, *, trust_tables: bool,
            overrides: Mapping[str, object] | None, ovf_version: str | None,
            digest: str | None, target: str | None, signer: Signer | None,
            parallel: int | None, engine: str, level: int | None, mtime: int | None,
            fsync: bool, spool_dir: PathLike | None, progress: Progress | None,
            inputs: Sequence[PathLike], check_manifest: bool, input_format: str,
            cache: SpanCache | PathLike | None, cache_max: int | None) -> RepackResult:
    started = time.perf_counter()
    span_cache = open_cache(cache, cache_max)
    pkg = open_package(package)
    data = pkg.read_small(pkg.descriptor)
    desc, findings, root = parse_descriptor_tree(data, path=pkg.location(pkg.descriptor))
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        first = errors[0]
        raise FormatError(first.rule, "%s (and %d more error(s)); verify lists them"
                          % (first.message, len(errors) - 1), path=first.file)
    warnings: list[str] = []
    manifest = _ManifestCheck(pkg)
    vs, vs_el = _one_system(pkg, desc, root)
    disks, members = _disk_members(pkg, desc, vs, warnings)

    preset = _preset(target)
    if ovf_version is None and preset is None:
        ovf_version = "2.0" if desc.ovf_version == "2.x" else "1.0"
    if digest is None and preset is None:
        digest = manifest.algorithm
    version, digest = check_settings(ovf_version, digest, preset)
    out = output_form(output, what="repack")
    base, carried = _vm_of(vs, vs_el, root, disks, out.stem, warnings)
    vm = _apply(base, dict(overrides or {}))
    if out.form == "ova-stream":
        out = dataclasses.replace(out, stem=stream_stem(vm.name))
    if preset is not None:
        from .ovf.targets import check_pack
        warnings += check_pack(preset, vm, ovf_version=version, digest=digest,
                               disks=len(disks), stem=out.stem)
    names = tuple("%s-disk%d.vmdk" % (out.stem, i + 1) for i in range(len(disks)))
    capacities = [_capacity(pkg, m, d) for m, d in zip(members, disks)]
    vm, kinds = _checked_carried(vm, carried, names, capacities, version, warnings)
    if pkg.form == "ova" and signer is None and pkg.member(_stem(pkg) + ".cert"):
        warnings.append("%s is signed; the output is not (pass --sign-key/--sign-cert to sign "
                        "it again)" % pkg.path)
    read = sorted({m.path for m in pkg.members})
    check_outputs(out, [out.stem + ext for ext in (".ovf", ".mf", ".cert")] + list(names),
                  [(p, None) for p in read], inputs)
    if mtime is None:
        epoch = source_date_epoch()
        mtime = epoch if epoch is not None else pkg.descriptor.mtime
    workers = check_workers(parallel)
    eng = get_engine(engine, level)
    placeholder = disk_entries(vm, names, capacities, [None] * len(names))
    front = Front(out.stem, out.form, digest, reserve_size(vm, placeholder, ovf_version=version),
                  names, signing_key_of(signer))

    done: list[RepackedDisk] = []
    disk_files: list[PackedFile] = []
    with contextlib.ExitStack() as stack:
        plans = [_copyable(pkg, member, stack, file_name=name,
                           adapter_type=adapter_for(vm.slot_for(i)), trust_tables=trust_tables)
                 for i, (member, name) in enumerate(zip(members, names))]
        # A member copied byte for byte digests the input as it is read (one read serves
        # the check and the copy); the other members' digests are checked on the other
        # core while the package is written.  A mismatch fails the run before anything is
        # renamed into place or streamed.
        observers = [manifest.take(member.name) if plan is not None and plan.as_is else None
                     for member, plan in zip(members, plans)]
        stack.enter_context(manifest.running())
        with package_writer(out, front, mtime=mtime, fsync=fsync, spool_dir=spool_dir,
                            stamp=out.form == "ovf") as writer:
            for i, (member, name) in enumerate(zip(members, names)):
                report = None if progress is None else progress_of(progress, name)
                slot = vm.slot_for(i)
                plan = plans[i]
                # A member copied as it is keeps its bytes, so its digest is the input
                # manifest's (checked against the input before the commit): not hashed again.
                known = (manifest.digest_of(member.name, digest) if plan is not None
                         and plan.as_is and plan.head is None and check_manifest else None)
                with writer.member(name, known) as sink:
                    if plan is not None:
                        copied = plan.copy(sink.write, report, observers[i])
                        result = RepackedDisk(pkg.location(member), name, copied, None)
                    else:
                        src = _open_member_source(pkg, member, stack, spool_dir,
                                                  input_format)
                        stats = write_stream_vmdk(src, sink.write, file_name=name, engine=eng,
                                                  workers=workers,
                                                  adapter_type=adapter_for(slot),
                                                  progress=report, cache=span_cache)
                        src.check_unchanged()
                        result = RepackedDisk(pkg.location(member), name, None, stats)
                done.append(result)
                disk_files.append(PackedFile(name, sink.size, sink.hexdigest()))
            written = [(f.size, _populated(d), _content_id(d)) for f, d in zip(disk_files, done)]
            descriptor = render_descriptor(vm, disk_entries(vm, names, capacities, written),
                                           ovf_version=version)
            front_data = front.render(descriptor, disk_files)
            manifest.judge(check_manifest, warnings)
            writer.finish(front_data)

    if span_cache is not None and span_cache.max_bytes is not None:
        span_cache.prune()
    files = front.files(front_data) + disk_files
    if preset is not None and out.form != "ovf":
        from .ovf.targets import check_packed_size
        warnings += check_packed_size(preset, out.shown, sum(f.size for f in files))
    return RepackResult(input=pkg.path, output=out.shown, form=out.form, ovf_version=version,
                        digest_algorithm=digest, files=tuple(files), disks=tuple(done),
                        mtime=mtime, seconds=time.perf_counter() - started,
                        warnings=tuple(warnings), carried=kinds,
                        target=preset.name if preset else None, engine=eng.describe())


def _stem(pkg: Package) -> str:
    return os.path.splitext(pkg.descriptor.name)[0]


def _populated(d: RepackedDisk) -> int:
    if d.copied is not None:
        return d.copied.populated_bytes
    return d.encoded.populated_bytes if d.encoded is not None else 0


def _content_id(d: RepackedDisk) -> str | None:
    # A copied disk's content id would need every grain inflated; it is not written into
    # the descriptor, so it is left out rather than computed.
    return d.encoded.content_id if d.encoded is not None else None


# -- the input ------------------------------------------------------------------------------

class _ManifestCheck:
    """The input's manifest against its members: hashed in a thread while the output is
    written (hashlib and reads release the GIL), judged before the output is committed."""

    def __init__(self, pkg: Package) -> None:
        self.pkg = pkg
        self.mf = pkg.member(_stem(pkg) + ".mf")
        self.entries = [] if self.mf is None else \
            parse_manifest(pkg.read_small(self.mf), path=pkg.location(self.mf))[0]
        # The output's default digest: the input's, SHA256 without a manifest.
        self.algorithm = self.entries[0].algorithm if self.entries else "sha256"
        self._stop = threading.Event()
        self._digests: dict[str, dict[str, str]] = {}
        self._observed: dict[str, dict[str, hashlib._Hash]] = {}
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def take(self, name: str) -> Callable[[memoryview], None] | None:
        """The digest of member ``name`` computed by whoever reads all of its bytes in order
        (the copy), through the function returned; None when the manifest lists it not."""
        algorithms = sorted({e.algorithm for e in self.entries if e.name == name})
        if not algorithms or name in self._observed:
            return None
        hashers = self._observed[name] = {a: hashlib.new(a) for a in algorithms}

        def observe(view: memoryview) -> None:
            for h in hashers.values():
                h.update(view)
        return observe

    def _run(self) -> None:
        listed = [self.pkg.member(e.name) for e in self.entries if e.name not in self._observed]
        try:
            self._digests = hash_members(self.pkg, [m for m in listed if m is not None],
                                         {e.algorithm for e in self.entries}, stop=self._stop)
        except (OSError, FormatError) as exc:  # raised in the caller's thread by judge()
            self._error = exc

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        if self.entries:
            self._thread = threading.Thread(target=self._run, name="ovfstream-manifest")
            self._thread.start()
        try:
            yield
        finally:
            self._stop.set()  # a failed run does not wait for the whole input's digest
            if self._thread is not None:
                self._thread.join()

    def digest_of(self, name: str, algorithm: str) -> str | None:
        """The manifest's digest of ``name`` in ``algorithm``, if it lists one."""
        return next((e.hexdigest for e in self.entries
                     if e.name == name and e.algorithm == algorithm), None)

    def judge(self, required: bool, warnings: list[str]) -> None:
        if self._thread is None:
            return
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self.mf is None:  # unreachable: no manifest, no thread
            return
        for name, hashers in self._observed.items():
            self._digests[name] = {a: h.hexdigest() for a, h in hashers.items()}
        problems = []
        for e in self.entries:
            got = self._digests.get(e.name, {}).get(e.algorithm)
            if self.pkg.member(e.name) is None:
                problems.append("%s is listed but not in the package" % e.name)
            elif got != e.hexdigest:
                problems.append("%s: %s %s... in the manifest, %s... in the package"
                                % (e.name, e.algorithm.upper(), e.hexdigest[:16],
                                   (got or "?")[:16]))
        if not problems:
            return
        text = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
        where = self.pkg.location(self.mf)
        if required:
            raise DigestMismatchError("repack.manifest", text + " (refused: pass "
                                      "--no-manifest-check to repack it anyway)", path=where)
        warnings.append("%s: manifest does not match: %s" % (where, text))


def _one_system(pkg: Package, desc: Descriptor, root: etree._Element
                ) -> tuple[VirtualSystemInfo, etree._Element]:
    ns = etree.QName(root).namespace or ""
    if desc.root != "VirtualSystem" or len(desc.systems) != 1 or ns not in (NS_OVF1, NS_OVF2):
        raise UnsupportedError("%s: repack takes an OVF 1.x/2.x descriptor with one "
                               "VirtualSystem (this one: %s, %s)"
                               % (pkg.path, desc.ovf_version, desc.root or "no content"))
    vs_el = next(el for el in root if _local(el, ns) == "VirtualSystem")
    return desc.systems[0], vs_el


def _disk_members(pkg: Package, desc: Descriptor, vs: VirtualSystemInfo, warnings: list[str]
                  ) -> tuple[list[DiskInfo], list[Member]]:
    files = {f.id: f for f in desc.files}
    disks = list(vs.disks)
    if not disks:
        raise FormatError("repack.input", "the VirtualSystem attaches no disk",
                          path=pkg.location(pkg.descriptor))
    members = []
    for d in disks:
        ref = files.get(d.file_ref or "")
        if ref is None:
            raise FormatError("repack.input", "Disk %r has no file (a blank disk is not "
                              "repacked)" % d.disk_id, path=pkg.location(pkg.descriptor))
        m = pkg.member(ref.href)
        if m is None or ref.compression or ref.chunk_size:
            raise FormatError("repack.input", "Disk %r: file %r is %s" % (
                d.disk_id, ref.href, "not in the package" if m is None
                else "compressed or chunked (not read)"), path=pkg.path)
        members.append(m)
    used = {d.file_ref for d in disks}
    for f in desc.files:
        if f.id not in used:
            warnings.append("File %s (%s) is not an attached disk: not carried over"
                            % (f.id, f.href))
    attached = {d.disk_id for d in disks}
    for d in desc.disks:
        if d.disk_id not in attached:
            warnings.append("Disk %s is attached to no Item: not carried over" % d.disk_id)
    return disks, members


def _capacity(pkg: Package, member: Member, disk: DiskInfo) -> int:
    """The disk's capacity: the VMDK header's for a stream VMDK, else the source's size
    (known once it is opened; the descriptor's value until then)."""
    try:
        with pkg.open_vmdk(member) as reader:
            return reader.capacity_bytes
    except (UnsupportedError, FormatError):
        pass
    if disk.capacity_bytes:
        return disk.capacity_bytes
    return max(member.size, 512)


@dataclass(frozen=True)
class _CopyPlan:
    """A stream VMDK member whose grains are copied: as it is when it is already in the
    spec layout under this name (copies_as_is), else re-framed grain by grain."""

    member: Member
    reader: VmdkReader
    fd: int                 # the member's file (reader's), for large positioned reads
    grains: int
    payload: int            # (with ``check``: counted as the copy reads the markers)
    populated: int
    as_is: bool             # the member's bytes after the head are what re-framing gives
    head: bytes | None      # and, when not None, the head to write instead of the input's
    file_name: str
    adapter_type: str
    check: GrainCheck | None = None  # the markers, checked while copying (table layout)

    def copy(self, write: Callable[[bytes | bytearray | memoryview], object],
             progress: Callable[[int, int], None] | None,
             observe: Callable[[memoryview], object] | None = None) -> CopyStats:
        if not self.as_is:
            return copy_stream_vmdk(self.reader, write, file_name=self.file_name,
                                    adapter_type=self.adapter_type,
                                    populated_bytes=self.populated, progress=progress)
        started = time.perf_counter()
        if self.head is not None:
            write(self.head)
        total = self.member.size

        def counted(data: bytes | bytearray | memoryview) -> None:
            write(data)
            if progress is not None:
                progress(len(data), total)
        copy_member(self.fd, self.member.offset, total, counted,
                    start=0 if self.head is None else len(self.head), observe=observe,
                    check=self.check)
        payload = self.payload
        if self.check is not None:
            self.check.finish()
            payload = self.check.payload_bytes
        return CopyStats(capacity_bytes=self.reader.capacity_bytes,
                         bytes_written=self.member.size, grains_copied=self.grains,
                         payload_bytes=payload, populated_bytes=self.populated,
                         input_layout="spec, copied as is" if self.head is None
                         else "spec, new head, grains and tables copied as they are",
                         ids_carried=True,
                         seconds=time.perf_counter() - started)


def _copyable(pkg: Package, member: Member, stack: contextlib.ExitStack, *, file_name: str,
              adapter_type: str, trust_tables: bool = True) -> _CopyPlan | None:
    """How to copy ``member``'s grains; None when the disk must be re-encoded (not a
    stream-optimized VMDK, or grains that are not zlib streams).  ``trust_tables``: a
    GD-at-end stream whose tables place it in the spec layout is planned from them (a few
    reads), its markers checked while it is copied (LayoutDiffers: plan again without)."""
    try:
        scan = pkg.open_vmdk(member)
    except UnsupportedError:
        return None
    except FormatError:
        if _looks_like_vmdk(pkg, member):
            raise  # a damaged stream VMDK: refused, not re-encoded from what we can guess
        return None
    # Grains are read in order: a large buffer turns ~3 small reads per grain into few.
    f = stack.enter_context(pkg.open(member, buffering=_READ_BUFFER))
    reader = pkg.open_vmdk(member, fileobj=f)
    fd = f.fileno()

    def read_at(offset: int, n: int) -> bytes:
        return os.pread(fd, n, member.offset + offset)
    with scan:
        placed = None
        if trust_tables:
            try:
                placed = table_grains(scan)
            except FormatError:  # tables that do not read: the marker walk decides, as before
                placed = None
        if placed is not None:
            as_is, head = copies_as_is(scan, placed, member.size, read_at,
                                       file_name=file_name, adapter_type=adapter_type)
            if as_is:
                return _CopyPlan(member, reader, fd, len(placed), 0,
                                 populated_bytes(scan.header, placed), True, head,
                                 file_name, adapter_type, GrainCheck(placed, read_at))
        found = zlib_grains(scan)
    if found is None:
        f.close()  # re-encoded from another open: do not hold this one until the end
        return None
    grains, populated = found
    as_is, head = copies_as_is(reader, grains, member.size, read_at,
                               file_name=file_name, adapter_type=adapter_type)
    return _CopyPlan(member, reader, fd, len(grains), sum(g[2] for g in grains), populated,
                     as_is, head, file_name, adapter_type)


def _looks_like_vmdk(pkg: Package, member: Member) -> bool:
    with pkg.open(member) as f:
        return f.read(4) == b"KDMV"


def _open_member_source(pkg: Package, member: Member, stack: contextlib.ExitStack,
                        spool_dir: PathLike | None, input_format: str) -> DiskSource:
    """The member as a disk source of whatever format sources/ reads (checked)."""
    path = _member_file(pkg, member, stack, spool_dir)
    try:
        src = stack.enter_context(open_source(path, input_format=input_format))
        src.check_format()
    except (UnsupportedError, FormatError) as exc:
        if path == member.path:
            raise
        # Messages name the package member, not the copy read in its place.
        text = str(exc).replace(path, pkg.location(member))
        if isinstance(exc, FormatError):
            raise FormatError(exc.rule, exc.detail, path=pkg.path, member=member.name) from None
        raise UnsupportedError(text) from None
    return src


def _member_file(pkg: Package, member: Member, stack: contextlib.ExitStack,
                 spool_dir: PathLike | None) -> str:
    """A path a disk source can open: the folder's file, or the OVA member copied out (a
    source reads a whole file; the copy holds the member's bytes as they are)."""
    if pkg.form != "ova":
        return member.path
    import tempfile  # here: only a member spooled out of a stream needs it
    folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="ovfstream-repack-",
                                                             dir=spool_dir))
    path = os.path.join(folder, "disk")
    with pkg.open(member) as src, open(path, "wb") as dst:
        left = member.size
        while left:
            chunk = src.read(min(left, 8 << 20))
            if not chunk:
                raise FormatError("ova.tar.truncated", "member data ends %d bytes early"
                                  % left, path=pkg.path, member=member.name)
            dst.write(chunk)
            left -= len(chunk)
    return path


# -- the VM ---------------------------------------------------------------------------------

def _apply(base: VirtualMachine, overrides: dict[str, object]) -> VirtualMachine:
    overrides = {k: v for k, v in overrides.items() if v is not None}
    # A modeled value given replaces the section carried for it.
    replaced = {_REPLACES[k] for k in overrides if k in _REPLACES}
    if replaced:
        base = dataclasses.replace(base, carried=tuple(
            c for c in base.carried if c.kind not in replaced or c.place != "system"))
    if {"controller", "scsi_type"} & set(overrides) and base.disk_slots:
        # The input's per-disk slots would hide the new default slot.
        base = dataclasses.replace(base, default_slot=base.disk_slots[0], disk_slots=())
    if "target" in overrides:
        raise UsageError("target: pass it as repack's target, not as a VM override")
    return vm_from_mapping(overrides, base=base) if overrides else base


def _vm_of(vs: VirtualSystemInfo, vs_el: etree._Element, root: etree._Element,
           disks: Sequence[DiskInfo], stem: str, warnings: list[str]
           ) -> tuple[VirtualMachine, tuple[CarriedSection, ...]]:
    """The input's VM as the model holds it, and the sections carried as written."""
    ns = etree.QName(root).namespace or ""
    fields: dict[str, object] = {}
    name = vs.name or vs.id or stem
    fields["name"] = name if 0 < len(name) <= 80 and name.isprintable() else stem
    if fields["name"] != name:
        warnings.append("VM name %r cannot be written; %r used (--name sets one)"
                        % (name[:40], stem))
    cpus = vs.cpus or 1
    fields["cpus"] = cpus
    cores = vs.cores_per_socket or 1
    fields["cores_per_socket"] = cores if cpus % cores == 0 else 1
    memory = vs.memory_mib or 1024
    fields["memory_mib"] = max(4, -(-memory // 4) * 4)
    fields["os"] = _os_key(vs, warnings)
    firmware = vs.firmware or "bios"
    fields["firmware"] = firmware
    fields["secure_boot"] = bool(vs.secure_boot) and firmware == "efi"
    hw, system_type = _hw_version(vs.hw_version)
    fields["hw_version"] = hw
    fields["system_type"] = system_type
    slots = [_slot(d, warnings) for d in disks]
    if all(s == slots[0] for s in slots):
        fields["default_slot"] = slots[0]
    else:
        fields["default_slot"], fields["disk_slots"] = slots[0], tuple(slots)
    fields["nics"] = tuple(_nic(n, warnings) for n in vs.nics)
    fields["cdrom"] = vs.cdrom
    if vs.sata_subtype in SATA_SUBTYPES:
        fields["sata_subtype"] = vs.sata_subtype
    if vs.transport:
        fields["hardware_transport"] = vs.transport
    carried = tuple(_carried(root, vs_el, ns, warnings))
    fields["carried"] = carried
    try:
        return VirtualMachine(**fields), carried  # type: ignore[arg-type]
    except UsageError as exc:
        raise UsageError("the input's VM cannot be written as it is (%s); override it with "
                         "the VM flags" % exc) from None


def _os_key(vs: VirtualSystemInfo, warnings: list[str]) -> str:
    for key, guest in GUEST_OS.items():
        if vs.os_type and guest.vmw_os_type.lower() == vs.os_type.lower():
            return key
    for key, guest in GUEST_OS.items():
        if vs.os_id is not None and guest.cim_id == vs.os_id:
            warnings.append("guest OS %s (CIM %s) is not in the table; %s used (--os sets one)"
                            % (vs.os_type or "-", vs.os_id, key))
            return key
    warnings.append("guest OS %s (CIM %s) is not in the table; other-64 used (--os sets one)"
                    % (vs.os_type or "-", vs.os_id))
    return "other-64"


def _hw_version(text: str | None) -> tuple[int, str | None]:
    """(hw_version, system_type): the highest vmx-NN named, else the text as the system
    type (VirtualBox's "virtualbox-2.2") on the default hardware version."""
    versions = []
    for token in (text or "").split():
        if token.startswith("vmx-") and token[4:].isdigit() and 4 <= int(token[4:]) <= 21:
            versions.append(int(token[4:]))
    if versions:
        return max(versions), None
    if text and text.strip() and len(text.strip()) <= 64:
        return 14, text.strip()
    return 14, None


def _slot(disk: DiskInfo, warnings: list[str]) -> DiskSlot:
    kind, _, sub = (disk.controller or "").partition(" ")
    if kind in ("ide", "sata", "nvme"):
        return DiskSlot(controller=kind)  # type: ignore[arg-type]
    if kind == "sas":
        return DiskSlot(controller="scsi", scsi_type="lsilogicsas")
    if kind == "scsi":
        scsi = _SCSI_BY_SUBTYPE.get(sub.lower(), "lsilogic")
        return DiskSlot(controller="scsi", scsi_type=scsi)  # type: ignore[arg-type]
    warnings.append("disk %s on controller %r: SCSI lsilogic used (--controller sets one)"
                    % (disk.disk_id, disk.controller))
    return DiskSlot()


def _nic(nic: NicInfo, warnings: list[str]) -> Nic:
    network = nic.network or "VM Network"
    subtype = (nic.adapter_type or "").lower()
    adapter = _NIC_BY_SUBTYPE.get(subtype)
    if adapter is None:
        warnings.append("NIC type %r on %s: e1000 used (--nic sets one)" % (subtype, network))
        adapter = "e1000"
    return Nic(network=network, adapter=adapter)  # type: ignore[arg-type]


def _local(el: etree._Element, ns: str) -> str | None:
    if not isinstance(el.tag, str):
        return None
    q = etree.QName(el)
    return q.localname if q.namespace == ns else None


def _carry(place: str, el: etree._Element) -> CarriedSection:
    return CarriedSection(place, etree.QName(el).localname, etree.tostring(el))


def _carried(root: etree._Element, vs_el: etree._Element, ns: str, warnings: list[str]
             ) -> Iterator[CarriedSection]:
    """The elements the model does not render, in document order, with their place."""
    for el in root:
        kind = _local(el, ns)
        if not isinstance(el.tag, str) or kind in ("References", "DiskSection",
                                                    "NetworkSection", "VirtualSystem"):
            continue
        if kind == "DeploymentOptionSection":
            warnings.append("DeploymentOptionSection dropped: repack writes the default "
                            "configuration only")
            continue
        yield _carry("envelope", el)
    hardware = [el for el in vs_el if _local(el, ns) == "VirtualHardwareSection"]
    for el in vs_el:
        kind = _local(el, ns)
        if not isinstance(el.tag, str) or kind in ("Info", "Name", "OperatingSystemSection",
                                                    "VirtualHardwareSection"):
            continue
        yield _carry("system", el)
    for extra in hardware[1:]:
        warnings.append("a second VirtualHardwareSection (line %s) dropped" % extra.sourceline)
    if not hardware:
        return
    for el in hardware[0]:
        kind = _local(el, ns)
        if not isinstance(el.tag, str) or kind in ("Info", "System"):
            continue
        if kind == "Item":
            rt = el.findtext("{*}ResourceType")
            host = (el.findtext("{*}HostResource") or "").strip().lower()
            if "/disk/" in host:
                continue  # a disk drive, whatever its ResourceType (XenOVF writes 19)
            if rt is None or not rt.strip().isdigit() or int(rt) not in _MODELED_RTS:
                warnings.append("hardware Item %r (ResourceType %s) dropped: repack writes "
                                "the hardware it models" % (el.findtext("{*}ElementName"),
                                                            (rt or "-").strip()))
            continue
        if kind is not None:
            continue  # an OVF element the writer renders itself
        q = etree.QName(el)
        if q.namespace == NS_VMW and q.localname in ("Config", "ExtraConfig") and \
                el.get("{%s}key" % NS_VMW) in _MODELED_CONFIGS:
            continue
        yield _carry("hardware", el)


def _checked_carried(vm: VirtualMachine, carried: Sequence[CarriedSection],
                     names: Sequence[str], capacities: Sequence[int], version: OvfVersion,
                     warnings: list[str]) -> tuple[VirtualMachine, tuple[str, ...]]:
    """Keep the carried elements that stay valid in the descriptor being written (our
    structural DSP0243/XSD rules, ovf/validate.py); drop the others with a warning."""
    carried = [c for c in carried if c in vm.carried]  # an override may have replaced one
    if not carried:
        return vm, ()
    entries = disk_entries(vm, names, capacities, [None] * len(names))

    def issues(candidate: VirtualMachine) -> set[tuple[str, str]]:
        doc = render_descriptor(candidate, entries, ovf_version=version)
        report = validate.check(etree.fromstring(doc))
        return {(i.rule, i.message) for i in report.issues}

    bare = dataclasses.replace(vm, carried=())
    whole = issues(vm)
    if not whole:
        return vm, tuple(c.kind for c in carried)
    base = issues(bare)
    kept = []
    for c in carried:
        new = issues(dataclasses.replace(bare, carried=(c,))) - base
        if new:
            rule, message = sorted(new)[0]
            warnings.append("%s (%s) dropped: it would break the OVF %s schema there: [%s] %s"
                            % (c.kind, c.place, version, rule, message))
        else:
            kept.append(c)
    return dataclasses.replace(vm, carried=tuple(kept)), tuple(c.kind for c in kept)

