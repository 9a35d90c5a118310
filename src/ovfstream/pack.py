"""``ovfstream pack``: raw disks + a VM description -> OVA (file or stream) or OVF folder.

One pass over each input byte: every disk streams through the grain engine into its OVA
member while the member's digest runs; the descriptor and manifest, which need the final
sizes and digests, go into space reserved at the front (DESIGN.md, OVA assembly).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import BinaryIO, Callable, Sequence

from .atomic import AtomicFiles, atomic_output, output_kind
from .cache import SpanCache, open_cache
from .cert import load_signing_key
from .engine import get_engine
from .errors import UsageError
from .farm import remote_spans
from .manifest import DIGESTS, manifest_size, render_manifest
from .ova.writer import FrontMembers, MemberSink, SeekableOvaWriter, StreamingOvaWriter
from .ovf.model import DiskEntry, VirtualMachine
from .outputs import Inputs
from .ovf.spec import vm_from_layers
from .ovf.targets import check_pack, check_packed_size, get_target
from .ovf.writer import pad_to, render_descriptor, reserve_size
from .pipeline import check_workers
from .sources import DiskSource, open_source
from .vmdk.writer import DiskStats, write_stream_vmdk

__all__ = ["pack", "PackResult", "PackedFile", "PackedDisk", "Signer"]

PathLike = str | os.PathLike[str]
Progress = Callable[[str, int, int], None]  # (disk file name, advance bytes, total bytes)


@dataclass(frozen=True)
class Signer:
    """Signs the manifest into X.cert (FORMATS.md 4)."""

    private_key_pem: bytes
    certificate_chain_pem: bytes
    digest: str = "sha256"
    password: bytes | None = None


@dataclass(frozen=True)
class PackedFile:
    name: str
    size: int
    digest: str


@dataclass(frozen=True)
class PackedDisk:
    source: str
    file_name: str
    stats: DiskStats


@dataclass(frozen=True)
class PackResult:
    output: str
    form: str                 # "ova", "ova-stream" or "ovf"
    ovf_version: str
    digest_algorithm: str
    files: tuple[PackedFile, ...]
    disks: tuple[PackedDisk, ...]
    workers: int
    mtime: int
    seconds: float
    engine: dict[str, object] = field(default_factory=dict)
    target: str | None = None             # the preset checked against (ovf/targets.py)
    warnings: tuple[str, ...] = ()        # what the target ignores or only partly honours
    hint: str = ""                        # how the target imports the package

    def as_dict(self) -> dict[str, object]:
        data_read = sum(d.stats.bytes_read for d in self.disks)
        return {
            "operation": "pack", "output": self.output, "form": self.form,
            "target": self.target, "warnings": list(self.warnings), "hint": self.hint,
            "ovf_version": self.ovf_version, "digest": self.digest_algorithm,
            "workers": self.workers, "mtime": self.mtime, "engine": self.engine,
            "files": [{"name": f.name, "size": f.size, self.digest_algorithm: f.digest}
                      for f in self.files],
            "disks": [{"source": d.source, "file": d.file_name, **d.stats.as_dict()}
                      for d in self.disks],
            "seconds": round(self.seconds, 6),
            "read_gb_per_s": round(data_read / self.seconds / 1e9, 3) if self.seconds else None,
            "size_bytes": sum(f.size for f in self.files),
        }


def _output_form(output: PathLike | BinaryIO) -> tuple[str, str, str]:
    """(form, display name, stem) for the output argument."""
    if hasattr(output, "write"):
        name = getattr(output, "name", "-")
        return "ova-stream", str(name), "appliance"
    path = os.fspath(output)  # type: ignore[arg-type]
    if path == "-":
        raise UsageError("pack: pass a binary file object (sys.stdout.buffer) for -o -")
    base = os.path.basename(path)
    stem, ext = os.path.splitext(base)
    if ext.lower() == ".ova":
        return "ova", path, stem
    if ext.lower() == ".ovf":
        return "ovf", path, stem
    raise UsageError("-o %s: the output must end in .ova or .ovf, or be - for a stream" % path)


_UNSAFE_MEMBER_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def stream_stem(vm_name: str) -> str:
    """The member stem of an OVA written to a stream: the VM name made a plain ASCII file
    name (runs of other characters become ``_``; at most 80 bytes, so ``-diskN.vmdk`` still
    fits ustar's 100-byte name), or ``appliance`` when nothing usable is left."""
    stem = _UNSAFE_MEMBER_CHARS.sub("_", vm_name).strip("._")[:80].rstrip("._")
    return stem or "appliance"


def _default_mtime(sources: Sequence[DiskSource]) -> int:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is not None:
        if not epoch.isdigit():
            raise UsageError("SOURCE_DATE_EPOCH=%r: allowed a whole number of seconds" % epoch)
        return int(epoch)
    return max(src.mtime for src in sources)


def _adapter_for(controller: str, scsi_type: str) -> str:
    # The VMDK's ddb.adapterType knows only these four; SATA/NVMe/pvscsi/SAS disks say
    # lsilogic, as VMware's own exports do.
    if controller == "ide":
        return "ide"
    if controller == "scsi" and scsi_type == "buslogic":
        return "buslogic"
    return "lsilogic"


def pack(disks: Sequence[PathLike], output: PathLike | BinaryIO, *,
         vm: VirtualMachine | None = None, ovf_version: str | None = None,
         digest: str | None = None, target: str | None = None,
         parallel: int | None = None, engine: str = "isal", level: int | None = None,
         mtime: int | None = None, signer: Signer | None = None, fsync: bool = True,
         spool_dir: PathLike | None = None, progress: Progress | None = None,
         inputs: Sequence[PathLike] = (), input_format: str = "auto",
         size: int | None = None,
         cache: SpanCache | PathLike | None = None, cache_max: int | None = None,
         executor: Executor | None = None) -> PackResult:
    """Pack raw ``disks`` (boot disk first) into an OVA, an OVA stream or an OVF folder.

    ``output``: ``NAME.ova`` (written under a fresh temporary name beside it, renamed on
    success), ``DIR/NAME.ovf`` (the folder form: NAME.ovf, NAME.mf and the VMDKs side by side,
    all renamed into place together at the end; a stale NAME.cert of an earlier signed pack is
    removed), or a writable binary file object (the OVA streamed in order).  Member names
    derive from NAME (``appliance`` for a stream).  The tar mtime is ``mtime``, else
    $SOURCE_DATE_EPOCH, else the newest input's mtime (0 for standard input, which has
    none): same inputs and settings, same bytes.

    No output may be one of the disks or of ``inputs`` (other files this pack read: spec,
    key, certificate): UsageError.  A disk that changes while it is read fails the pack
    (SourceChangedError, rule ``source.changed``) and leaves no output.

    ``target`` (ovf/targets.py: vsphere8, proxmox, ...) supplies ``ovf_version`` and
    ``digest`` when they are None, builds the default VM from its preset, and checks the VM
    and options against it before anything is read: what the target cannot honour is a
    UsageError naming the option and the target, what it ignores a warning in the result.
    Without a target: OVF 1.0, SHA256 and no checks (the output of ``target="generic"``).

    A disk ``"-"`` is a raw disk of ``size`` bytes read from standard input (once: at most one
    ``"-"``; its tar mtime is 0, see above); ``size`` is also the size of every zstd disk whose
    frames do not record it, and must agree with those whose frames do.

    ``cache`` (a folder or a SpanCache): spans found there are not compressed again; the
    bytes are the same (cache.py).  ``cache_max`` caps the folder after the pack (LRU).
    ``executor`` (any concurrent.futures.Executor, e.g. a Dask client's): its workers read
    and encode the spans from the disks' paths, which they must see (farm.py); same bytes.
    """
    started = time.perf_counter()
    if not disks:
        raise UsageError("pack: at least one disk image is needed")
    preset = get_target(target, what="--target") if target is not None else None
    if ovf_version is None:
        ovf_version = preset.ovf_version.value if preset is not None else "1.0"
    if digest is None:
        digest = preset.digest.value if preset is not None else "sha256"
    if digest not in DIGESTS:
        raise UsageError("--digest %r: allowed %s" % (digest, ", ".join(DIGESTS)))
    if ovf_version not in ("1.0", "2.0"):
        raise UsageError("--ovf-version %r: allowed 1.0, 2.0" % (ovf_version,))
    if sum(os.fspath(d) == "-" for d in disks) > 1:
        raise UsageError("pack: standard input (-) can be read as one disk only")
    workers = check_workers(parallel)
    eng = get_engine(engine, level)
    span_cache = open_cache(cache, cache_max)
    form, shown, stem = _output_form(output)
    if vm is None:
        vm = (VirtualMachine(name=stem) if preset is None
              else vm_from_layers([], name=stem, target=preset.name))
    elif form == "ova-stream":
        stem = stream_stem(vm.name)  # a stream has no file name: members follow the VM
    warnings: list[str] = []
    if preset is not None:
        warnings = check_pack(preset, vm, ovf_version=ovf_version, digest=digest,  # type: ignore[arg-type]
                              disks=len(disks), stem=stem)

    with contextlib.ExitStack() as stack:
        sources = [stack.enter_context(open_source(d, input_format=input_format, size=size))
                   for d in disks]
        if mtime is None:
            mtime = _default_mtime(sources)
        names = ["%s-disk%d.vmdk" % (stem, i + 1) for i in range(len(sources))]
        ovf_name, mf_name, cert_name = stem + ".ovf", stem + ".mf", stem + ".cert"
        _check_outputs(form, output, shown, [ovf_name, mf_name, cert_name, *names],
                       sources, inputs)
        for src in sources:
            src.check_format()

        def entries(stats: Sequence[DiskStats | None], sizes: Sequence[int]) -> list[DiskEntry]:
            return [DiskEntry(file_id="file%d" % (i + 1), href=names[i],
                              file_size_bytes=sizes[i],
                              capacity_bytes=src.capacity_sectors * 512,
                              populated_bytes=st.populated_bytes if st else 0,
                              disk_id="vmdisk%d" % (i + 1),
                              content_id_hex=st.content_id if st else "0" * 32,
                              slot=vm.slot_for(i))
                    for i, (src, st) in enumerate(zip(sources, stats))]

        placeholder = entries([None] * len(sources), [0] * len(sources))
        ovf_reserved = reserve_size(vm, placeholder, ovf_version=ovf_version)  # type: ignore[arg-type]
        mf_size = manifest_size([ovf_name, *names], digest)
        slots = [(ovf_name, ovf_reserved), (mf_name, mf_size)]
        signing_key = None
        if signer is not None:
            # Loaded once (a 16384-bit key takes ~20 s to validate); its size is known
            # without signing, so only the final manifest is signed.
            signing_key = load_signing_key(private_key_pem=signer.private_key_pem,
                                           certificate_chain_pem=signer.certificate_chain_pem,
                                           digest=signer.digest, password=signer.password)
            slots.append((cert_name, signing_key.cert_size(mf_name)))

        def encode_into(i: int) -> Callable[[MemberSink], DiskStats]:
            src = sources[i]
            slot = vm.slot_for(i)  # type: ignore[union-attr]
            name = names[i]
            report = None if progress is None else (lambda n, total: progress(name, n, total))

            remote = None if executor is None else remote_spans(
                executor, path=os.fspath(disks[i]), input_format=input_format,
                cache_root=span_cache.root if span_cache is not None else None)

            def produce(sink: MemberSink) -> DiskStats:
                disk_stats = write_stream_vmdk(
                    src, sink.write, file_name=names[i], engine=eng, workers=workers,
                    adapter_type=_adapter_for(slot.controller, slot.scsi_type), progress=report,
                    cache=span_cache if executor is None else None, remote=remote)
                src.check_unchanged()  # before anything is renamed into place or streamed
                return disk_stats
            return produce

        def finish_front(stats: list[DiskStats], disk_files: list[tuple[int, str]]
                         ) -> list[tuple[str, bytes]]:
            descriptor = render_descriptor(vm, entries(stats, [s for s, _ in disk_files]),  # type: ignore[arg-type]
                                           ovf_version=ovf_version)  # type: ignore[arg-type]
            if form != "ovf":
                descriptor = pad_to(descriptor, ovf_reserved)
            manifest = render_manifest([(ovf_name, digest, _digest_of(descriptor, digest))] +
                                       [(n, digest, d) for n, (_, d) in zip(names, disk_files)])
            front = [(ovf_name, descriptor), (mf_name, manifest)]
            if signing_key is not None:
                front.append((cert_name, signing_key.sign(manifest, mf_name=mf_name)))
            front_out[:] = front
            return front

        stats: list[DiskStats] = []
        front_out: list[tuple[str, bytes]] = []
        disk_files: list[tuple[int, str]] = []

        def run_disks(add_member: Callable[[str, Callable[[MemberSink], None]], tuple[int, str]]
                      ) -> None:
            for i in range(len(sources)):
                produce = encode_into(i)
                holder: list[DiskStats] = []
                disk_files.append(add_member(names[i], lambda sink: holder.append(produce(sink))))
                stats.append(holder[0])

        if form == "ova":
            with atomic_output(shown, fsync=fsync) as f:
                writer = SeekableOvaWriter(f, front=FrontMembers(tuple(slots)), mtime=mtime,
                                           algorithm=digest)
                run_disks(writer.add_member)
                writer.finish([data for _, data in finish_front(stats, disk_files)])
        elif form == "ova-stream":
            streamer = StreamingOvaWriter(output, mtime=mtime, algorithm=digest,  # type: ignore[arg-type]
                                          spool_dir=os.fspath(spool_dir) if spool_dir else None)
            try:
                run_disks(streamer.add_member)
                streamer.finish(finish_front(stats, disk_files))
            finally:
                streamer.close()
        else:
            # Every file goes to a temporary first; they are renamed into place together at
            # the end (disks, certificate, manifest, the descriptor last: its presence says
            # the folder is complete), so a failure leaves the previous package as it was.
            folder = os.path.dirname(os.path.abspath(shown))
            with AtomicFiles(fsync=fsync) as group:
                def add_file(name: str, produce: Callable[[MemberSink], None]) -> tuple[int, str]:
                    f = group.open(os.path.join(folder, name))
                    sink = MemberSink(f.write, digest)
                    produce(sink)
                    group.close(f)
                    return sink.size, sink.hexdigest()
                run_disks(add_file)
                front = finish_front(stats, disk_files)
                if signer is None:  # an earlier signed pack's certificate would not match
                    group.remove_stale(os.path.join(folder, cert_name))
                for name, data in reversed(front):
                    add_file(name, lambda sink, data=data: sink.write(data))

    if span_cache is not None and span_cache.max_bytes is not None:
        span_cache.prune()
    files = [PackedFile(name, len(data), _digest_of(data, digest)) for name, data in front_out]
    files += [PackedFile(n, size, d) for n, (size, d) in zip(names, disk_files)]
    if preset is not None and form != "ovf":  # the OVA's size is known only now
        warnings += check_packed_size(preset, shown, sum(f.size for f in files))
    return PackResult(output=shown, form=form, ovf_version=ovf_version, digest_algorithm=digest,  # type: ignore[arg-type]
                      files=tuple(files),
                      disks=tuple(PackedDisk(os.fspath(src), n, st)
                                  for src, n, st in zip(disks, names, stats)),
                      workers=workers, mtime=mtime, seconds=time.perf_counter() - started,
                      engine=eng.describe(), target=preset.name if preset else None,
                      warnings=tuple(warnings),
                      hint=preset.hint.replace("NAME", stem) if preset else "")


def _check_outputs(form: str, output: PathLike | BinaryIO, shown: str, folder_names: list[str],
                   sources: Sequence[DiskSource], inputs: Sequence[PathLike]) -> None:
    """Before any work: no output is an input, and none would destroy a non-regular node."""
    read = Inputs()
    for src in sources:
        for f in src.files:
            read.add(f.path, f.stat)
    for path in inputs:
        read.add(path)
    if form == "ova-stream":  # stdout redirected onto an input (>> disk.raw)
        try:
            st = os.fstat(output.fileno())  # type: ignore[union-attr]
        except (AttributeError, OSError, ValueError):
            return  # no descriptor (a BytesIO...): nothing on disk to protect
        if stat.S_ISREG(st.st_mode):
            read.check_output(shown, st)
        return
    if form == "ova":
        targets = [shown]
    else:
        folder = os.path.dirname(os.path.abspath(shown))
        targets = [os.path.join(folder, name) for name in folder_names]
    for target in targets:
        output_kind(target)
        read.check_output(target)


def _digest_of(data: bytes, algorithm: str) -> str:
    return hashlib.new(algorithm, data).hexdigest()
