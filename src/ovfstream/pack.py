"""``ovfstream pack``: raw disks + a VM description -> OVA (file or stream) or OVF folder.

One pass over each input byte: every disk streams through the grain engine into its OVA
member while the member's digest runs; the descriptor and manifest, which need the final
sizes and digests, go into space reserved at the front (DESIGN.md, OVA assembly).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import stat
import time
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Callable, Sequence

from .atomic import AtomicFiles, atomic_output, output_kind, signals_held
from .engine import get_engine
from .errors import UsageError
from .manifest import DIGESTS, manifest_size, render_manifest
from .outputs import Inputs
from .ova.writer import FolderWriter, FrontMembers, SeekableOvaWriter, StreamingOvaWriter
from .ovf.model import DiskEntry, DiskSlot, VirtualMachine
from .ovf.spec import vm_from_layers
from .ovf.writer import OvfVersion, pad_to, render_descriptor, reserve_size
from .pipeline import check_workers
from .sources import DiskSource, open_source
from .vmdk.writer import DiskStats, write_stream_vmdk

if TYPE_CHECKING:  # signing (cryptography) loads only when a package is signed, the
    from .cache import SpanCache  # target presets only for --target (_preset), the cache
    from .cert import SigningKey  # module only with a cache
    from .ovf.targets import Target

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


@dataclass(frozen=True)
class Output:
    """Where a package goes: the form, the name shown in messages, the member stem, and the
    stream for ``ova-stream``."""

    form: str                       # "ova", "ova-stream" or "ovf"
    shown: str
    stem: str
    stream: BinaryIO | None = None

    @property
    def folder(self) -> str:
        return os.path.dirname(os.path.abspath(self.shown))


def output_form(output: PathLike | BinaryIO, *, what: str = "pack") -> Output:
    """The output argument as an :class:`Output` (``.ova``, ``.ovf`` or a binary stream)."""
    if not isinstance(output, (str, os.PathLike)):
        return Output("ova-stream", str(getattr(output, "name", "-")), "appliance", output)
    path = os.fspath(output)
    if path == "-":
        raise UsageError("%s: pass a binary file object (sys.stdout.buffer) for -o -" % what)
    stem, ext = os.path.splitext(os.path.basename(path))
    if ext.lower() == ".ova":
        return Output("ova", path, stem)
    if ext.lower() == ".ovf":
        return Output("ovf", path, stem)
    raise UsageError("-o %s: the output must end in .ova or .ovf, or be - for a stream" % path)


_UNSAFE_MEMBER_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def stream_stem(vm_name: str) -> str:
    """The member stem of an OVA written to a stream: the VM name made a plain ASCII file
    name (runs of other characters become ``_``; at most 80 bytes, so ``-diskN.vmdk`` still
    fits ustar's 100-byte name), or ``appliance`` when nothing usable is left."""
    stem = _UNSAFE_MEMBER_CHARS.sub("_", vm_name).strip("._")[:80].rstrip("._")
    return stem or "appliance"


def source_date_epoch() -> int | None:
    """$SOURCE_DATE_EPOCH as a whole number of seconds, or None when unset."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is None:
        return None
    if not epoch.isdigit():
        raise UsageError("SOURCE_DATE_EPOCH=%r: allowed a whole number of seconds" % epoch)
    return int(epoch)


def _default_mtime(sources: Sequence[DiskSource]) -> int:
    epoch = source_date_epoch()
    return epoch if epoch is not None else max(src.mtime for src in sources)


def adapter_for(slot: DiskSlot) -> str:
    """The VMDK's ddb.adapterType for a disk slot.  It knows only four; SATA/NVMe/pvscsi/SAS
    disks say lsilogic, as VMware's own exports do."""
    if slot.controller == "ide":
        return "ide"
    if slot.controller == "scsi" and slot.scsi_type == "buslogic":
        return "buslogic"
    return "lsilogic"


def _preset(target: str | None) -> Target | None:
    """The preset named ``target`` (ovf/targets.py, loaded only then), None without one."""
    if target is None:
        return None
    from .ovf.targets import get_target
    return get_target(target, what="--target")


def check_settings(ovf_version: str | None, digest: str | None, preset: Target | None
                   ) -> tuple[OvfVersion, str]:
    """(OVF version, digest) from the arguments, else the target's, else 1.0 and SHA256."""
    if ovf_version is None:
        ovf_version = preset.ovf_version.value if preset is not None else "1.0"
    if digest is None:
        digest = preset.digest.value if preset is not None else "sha256"
    if digest not in DIGESTS:
        raise UsageError("--digest %r: allowed %s" % (digest, ", ".join(DIGESTS)))
    if ovf_version == "1.0":
        return "1.0", digest
    if ovf_version == "2.0":
        return "2.0", digest
    raise UsageError("--ovf-version %r: allowed 1.0, 2.0" % (ovf_version,))


@dataclass(frozen=True)
class Front:
    """The members before the disks: descriptor, manifest and (signed) certificate.

    Their slots are reserved before any disk is written (the descriptor's from a render with
    the widest numbers); :meth:`render` fills them once the disks' sizes and digests are known.
    """

    stem: str
    form: str
    digest: str
    ovf_reserved: int
    disk_names: tuple[str, ...]
    signing_key: SigningKey | None = None

    @property
    def ovf_name(self) -> str:
        return self.stem + ".ovf"

    @property
    def mf_name(self) -> str:
        return self.stem + ".mf"

    @property
    def cert_name(self) -> str:
        return self.stem + ".cert"

    def members(self) -> FrontMembers:
        slots = [(self.ovf_name, self.ovf_reserved),
                 (self.mf_name, manifest_size([self.ovf_name, *self.disk_names], self.digest))]
        if self.signing_key is not None:
            slots.append((self.cert_name, self.signing_key.cert_size(self.mf_name)))
        return FrontMembers(tuple(slots))

    def render(self, descriptor: bytes, disk_files: Sequence[PackedFile]
               ) -> list[tuple[str, bytes]]:
        if self.form != "ovf":
            descriptor = pad_to(descriptor, self.ovf_reserved)
        manifest = render_manifest(
            [(self.ovf_name, self.digest, _digest_of(descriptor, self.digest))] +
            [(f.name, self.digest, f.digest) for f in disk_files])
        front = [(self.ovf_name, descriptor), (self.mf_name, manifest)]
        if self.signing_key is not None:
            front.append((self.cert_name, self.signing_key.sign(manifest, mf_name=self.mf_name)))
        return front

    def files(self, front: Sequence[tuple[str, bytes]]) -> list[PackedFile]:
        return [PackedFile(name, len(data), _digest_of(data, self.digest)) for name, data in front]


def signing_key_of(signer: Signer | None) -> SigningKey | None:
    # Loaded once (a 16384-bit key takes ~20 s to validate); its size is known without
    # signing, so only the final manifest is signed.
    if signer is None:
        return None
    from .cert import load_signing_key
    return load_signing_key(private_key_pem=signer.private_key_pem,
                            certificate_chain_pem=signer.certificate_chain_pem,
                            digest=signer.digest, password=signer.password)


PackageWriter = SeekableOvaWriter | StreamingOvaWriter | FolderWriter


@contextlib.contextmanager
def package_writer(out: Output, front: Front, *, mtime: int, fsync: bool,
                   spool_dir: PathLike | None, stamp: bool = False) -> Iterator[PackageWriter]:
    """The writer of ``out``'s form; on leaving the block without an error the package is
    in place (renamed, or streamed), on an error nothing is left.  ``stamp``: the folder
    form's files get ``mtime`` as their modification time (repack: a folder repacked into an
    OVA then keeps the tar mtime it came with)."""
    if out.form == "ova":
        with atomic_output(out.shown, fsync=fsync, direct=True) as f:
            yield SeekableOvaWriter(f, front=front.members(), mtime=mtime,
                                    algorithm=front.digest)
    elif out.stream is not None:
        with contextlib.ExitStack() as cleanup:
            with signals_held():  # the spool folder exists only with its removal registered
                streamer = StreamingOvaWriter(out.stream, mtime=mtime, algorithm=front.digest,
                                              spool_dir=os.fspath(spool_dir) if spool_dir
                                              else None)
                cleanup.callback(streamer.close)
            yield streamer
    else:
        with AtomicFiles(fsync=fsync, direct=True) as group:
            # An unsigned re-pack removes an earlier signed pack's certificate: it would not
            # match the new manifest.
            yield FolderWriter(group, out.folder, algorithm=front.digest,
                               stale=(front.cert_name,), mtime=mtime if stamp else None)


def pack(disks: Sequence[PathLike], output: PathLike | BinaryIO, *,
         vm: VirtualMachine | None = None, ovf_version: str | None = None,
         digest: str | None = None, target: str | None = None,
         parallel: int | None = None, engine: str = "isal", level: int | None = None,
         mtime: int | None = None, signer: Signer | None = None, fsync: bool = True,
         spool_dir: PathLike | None = None, progress: Progress | None = None,
         inputs: Sequence[PathLike] = (), input_format: str = "auto",
         size: int | None = None,
         cache: SpanCache | PathLike | None = None, cache_max: int | None = None,
         executor: Executor | None = None, recompress: bool = False) -> PackResult:
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
    A zlib qcow2's compressed clusters of 64 KiB are copied into the VMDK's grains as they
    are (vmdk/copied.py); ``recompress`` sends every grain through the engine instead.
    """
    started = time.perf_counter()
    if not disks:
        raise UsageError("pack: at least one disk image is needed")
    preset = _preset(target)
    version, digest = check_settings(ovf_version, digest, preset)
    if sum(os.fspath(d) == "-" for d in disks) > 1:
        raise UsageError("pack: standard input (-) can be read as one disk only")
    workers = check_workers(parallel)
    eng = get_engine(engine, level)
    span_cache = None
    if cache is not None:
        from .cache import open_cache
        span_cache = open_cache(cache, cache_max)
    out = output_form(output)
    if vm is None:
        vm = (VirtualMachine(name=out.stem) if preset is None
              else vm_from_layers([], name=out.stem, target=preset.name))
    elif out.form == "ova-stream":  # a stream has no file name: members follow the VM
        out = dataclasses.replace(out, stem=stream_stem(vm.name))
    warnings: list[str] = []
    if preset is not None:
        from .ovf.targets import check_pack
        warnings = check_pack(preset, vm, ovf_version=version, digest=digest,
                              disks=len(disks), stem=out.stem)

    with contextlib.ExitStack() as stack:
        sources = [stack.enter_context(open_source(d, input_format=input_format, size=size))
                   for d in disks]
        if mtime is None:
            mtime = _default_mtime(sources)
        names = tuple("%s-disk%d.vmdk" % (out.stem, i + 1) for i in range(len(sources)))
        check_outputs(out, [out.stem + ext for ext in (".ovf", ".mf", ".cert")] + list(names),
                      [(f.path, f.stat) for src in sources for f in src.files], inputs)
        for src in sources:
            src.check_format()
        capacities = [src.capacity_sectors * 512 for src in sources]
        placeholder = disk_entries(vm, names, capacities, [None] * len(sources))
        front = Front(out.stem, out.form, digest,
                      reserve_size(vm, placeholder, ovf_version=version), names,
                      signing_key_of(signer))
        stats: list[DiskStats] = []
        disk_files: list[PackedFile] = []
        if executor is not None:
            from .farm import remote_spans
        with package_writer(out, front, mtime=mtime, fsync=fsync, spool_dir=spool_dir) as writer:
            for i, (src, name) in enumerate(zip(sources, names)):
                report = None if progress is None else progress_of(progress, name)
                remote = None if executor is None else remote_spans(
                    executor, path=os.fspath(disks[i]), input_format=input_format,
                    cache_root=span_cache.root if span_cache is not None else None,
                    recompress=recompress)
                with writer.member(name) as sink:
                    stats.append(write_stream_vmdk(
                        src, sink.write, file_name=name, engine=eng, workers=workers,
                        adapter_type=adapter_for(vm.slot_for(i)), progress=report,
                        cache=span_cache if executor is None else None, remote=remote,
                        recompress=recompress))
                    src.check_unchanged()  # before anything is renamed into place or streamed
                disk_files.append(PackedFile(name, sink.size, sink.hexdigest()))
            descriptor = render_descriptor(
                vm, disk_entries(vm, names, capacities,
                                 [(f.size, st.populated_bytes, st.content_id)
                                  for f, st in zip(disk_files, stats)]),
                ovf_version=version)
            front_data = front.render(descriptor, disk_files)
            writer.finish(front_data)

    if span_cache is not None and span_cache.max_bytes is not None:
        span_cache.prune()
    files = front.files(front_data) + disk_files
    if preset is not None and out.form != "ovf":  # the OVA's size is known only now
        from .ovf.targets import check_packed_size
        warnings += check_packed_size(preset, out.shown, sum(f.size for f in files))
    return PackResult(output=out.shown, form=out.form, ovf_version=version,
                      digest_algorithm=digest, files=tuple(files),
                      disks=tuple(PackedDisk(os.fspath(src), n, st)
                                  for src, n, st in zip(disks, names, stats)),
                      workers=workers, mtime=mtime, seconds=time.perf_counter() - started,
                      engine=eng.describe(), target=preset.name if preset else None,
                      warnings=tuple(warnings),
                      hint=preset.hint.replace("NAME", out.stem) if preset else "")


def progress_of(progress: Progress, name: str) -> Callable[[int, int], None]:
    def report(n: int, total: int) -> None:
        progress(name, n, total)
    return report


def disk_entries(vm: VirtualMachine, names: Sequence[str], capacities: Sequence[int],
                 written: Sequence[tuple[int, int, str | None] | None]) -> list[DiskEntry]:
    """One DiskEntry per disk; ``written[i]`` is (VMDK size, populated bytes, content id), or
    None before the disk is written (the entry then reserves the descriptor's space)."""
    entries = []
    for i, (name, capacity, done) in enumerate(zip(names, capacities, written, strict=True)):
        size, populated, content_id = done if done is not None else (0, 0, None)
        entries.append(DiskEntry(file_id="file%d" % (i + 1), href=name, file_size_bytes=size,
                                 capacity_bytes=capacity, populated_bytes=populated,
                                 disk_id="vmdisk%d" % (i + 1),
                                 content_id_hex=content_id or "0" * 32, slot=vm.slot_for(i)))
    return entries


def check_outputs(out: Output, folder_names: Sequence[str],
                  read_files: Sequence[tuple[str, os.stat_result | None]],
                  inputs: Sequence[PathLike]) -> None:
    """Before any work: no output is an input, and none would destroy a non-regular node.
    ``read_files``: (path, stat or None) of every file read."""
    read = Inputs()
    for path, st in read_files:
        read.add(path, st)
    for path in inputs:
        read.add(path)
    if out.stream is not None:  # stdout redirected onto an input (>> disk.raw)
        try:
            st = os.fstat(out.stream.fileno())
        except (AttributeError, OSError, ValueError):
            return  # no descriptor (a BytesIO...): nothing on disk to protect
        if stat.S_ISREG(st.st_mode):
            read.check_output(out.shown, st)
        return
    if out.form == "ova":
        targets = [out.shown]
    else:
        targets = [os.path.join(out.folder, name) for name in folder_names]
    for target in targets:
        output_kind(target)
        read.check_output(target)


def _digest_of(data: bytes, algorithm: str) -> str:
    return hashlib.new(algorithm, data).hexdigest()
