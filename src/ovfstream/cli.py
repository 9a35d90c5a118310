"""The ``ovfstream`` command line: argparse, ``main(argv) -> int``.

The only module that prints or exits.  Exit codes: 0 success, 1 the input failed a check
(or a format error), 2 usage error.  ``--json`` prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from typing import Any, Iterator, Sequence

from .display import printable, rich_text
from .errors import FormatError, OvfstreamError, UnsupportedError, UsageError

EXIT_OK, EXIT_CHECK, EXIT_USAGE = 0, 1, 2


# In help texts, replaced by the target presets' names when help is printed: a run that
# prints no help never loads the presets (ovf/targets.py and lxml).
_TARGET_NAMES = "{target names}"


class _Formatter(argparse.HelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help
        if text and _TARGET_NAMES in text:
            from .ovf.targets import target_names
            text = text.replace(_TARGET_NAMES, ", ".join(target_names()))
        return text


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:  # argparse exits 2 itself; keep it, say it our way
        raise UsageError(message)


class _Version(argparse.Action):
    """--version: the text is made when asked for (the version lookup reads pyproject.toml
    or the installed metadata)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0,
                         help=help or "show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        from . import __version__
        from .vmdk.writer import NATIVE  # the compiled core, or the pure-Python twin (slower)
        sys.stdout.write("ovfstream %s (%s, Python %s)\n" % (
            __version__, "native core" if NATIVE else
            "pure-Python core: ovfstream._grains is absent",
            ".".join(map(str, sys.version_info[:3]))))
        parser.exit()


def _common(p: argparse.ArgumentParser, *, engine: bool = True) -> None:
    p.add_argument("--parallel", type=int, default=None, metavar="N",
                   help="worker threads (default: the CPUs available)")
    if engine:
        p.add_argument("--engine", default=None, choices=("isal", "zlib", "libdeflate"),
                       help="deflate engine (default isal: ISA-L, reproducible at levels 1-2; "
                            "zlib and libdeflate at every level)")
        p.add_argument("--level", type=int, default=None,
                       help="compression level (isal 1-3, default 1; zlib 1-9, default 6; "
                            "libdeflate 1-12, default 6)")
        p.add_argument("--compression", default=None, choices=("fast", "balanced", "small"),
                       help="intent instead of --engine/--level: fast = isal 1 (default), "
                            "balanced = libdeflate 6 (smaller than qemu-img's zlib-6, ~2.5x "
                            "its speed per core), small = libdeflate 10 (~0.97x zlib-6's size)")
        p.add_argument("--input-format", default="auto", metavar="FORMAT",
                       help="auto (default): detect by content (raw, qcow2, vmdk, vhd/vpc, "
                            "vhdx, zstd) and refuse what is not read (VDI, LUKS, gzip...); raw: "
                            "take the bytes as they are; a format name: insist on it")
        p.add_argument("--size", type=_size_arg, default=None, metavar="BYTES",
                       help="the virtual size of a disk read from standard input (-), or of "
                            "a zstd image whose frames do not record it; bytes, or with a "
                            "binary K, M, G or T suffix (1K = 1024)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no summary")


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def _size_arg(text: str) -> int:
    """--size: a whole number of bytes, or with a binary K/M/G/T suffix (64M = 64 MiB)."""
    digits = text.strip()
    unit = digits[-1:].upper() if digits[-1:].isalpha() else ""
    if unit:
        digits = digits[:-1]
    if unit not in _SIZE_UNITS or not digits.isdigit() or not digits.isascii():
        raise argparse.ArgumentTypeError("%r: allowed a whole number of bytes, optionally "
                                         "with a K, M, G or T suffix (binary)" % text)
    return int(digits) * _SIZE_UNITS[unit]


def _cache_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", metavar="DIR",
                   help="span cache folder: spans whose raw bytes it holds are not compressed "
                        "again (same output bytes); may be shared by concurrent runs")
    p.add_argument("--cache-max", metavar="SIZE", type=_size_arg,
                   help="after the run, delete the least recently used cache entries until "
                        "the folder holds at most SIZE (e.g. 20G)")


def _recompress_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recompress", action="store_true",
                   help="compress every grain with the engine; by default a zlib qcow2's "
                        "compressed 64 KiB clusters are copied into the VMDK as they are")


def _executor_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--executor", default="local", metavar="local|dask://HOST:PORT",
                   help="local (default) or a Dask scheduler whose workers " + what +
                        " (inputs and outputs on storage they share; pip install "
                        "'ovfstream[dask]')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ovfstream",
                     description="Raw disk images to stream-optimized VMDKs and OVF/OVA "
                                 "appliances, in one pass.")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("convert", help="raw image -> bare stream-optimized VMDK")
    p.add_argument("source", help="disk image (file or block device), or - for a raw disk on "
                                  "standard input (with --size)")
    p.add_argument("-o", "--output", required=True, help="DST.vmdk")
    p.add_argument("--adapter-type", default="lsilogic",
                   choices=("lsilogic", "buslogic", "ide", "legacyESX"),
                   help="ddb.adapterType in the VMDK descriptor (default lsilogic)")
    _cache_options(p)
    _recompress_option(p)
    _common(p)

    p = sub.add_parser("pack", help="raw disks + VM description -> OVA, OVA stream or OVF folder")
    p.add_argument("disks", nargs="+", metavar="DISK",
                   help="disk images, boot disk first; - reads one from standard input "
                        "(with --size)")
    p.add_argument("-o", "--output", required=True,
                   help="NAME.ova, DIR/NAME.ovf (folder form) or - (OVA on stdout)")
    p.add_argument("--spec", help="VM description file (.toml, .yaml, .json); flags override it")
    p.add_argument("--target", metavar="NAME",
                   help="import target preset (ovfstream targets): " + _TARGET_NAMES + "; "
                        "flags and spec keys override it; default: generic")
    vm = p.add_argument_group("virtual machine (override --spec)")
    vm.add_argument("--name", help="VM name (default: the output's name)")
    vm.add_argument("--annotation")
    vm.add_argument("--cpus", type=int)
    vm.add_argument("--cores-per-socket", type=int)
    vm.add_argument("--memory", type=int, metavar="MIB", help="memory in MiB")
    vm.add_argument("--os", help="guest OS, e.g. debian12-64, ubuntu-64, rhel9-64, "
                                 "windows2022srv-64, other-linux-64")
    vm.add_argument("--firmware", help="bios or efi")
    vm.add_argument("--secure-boot", action="store_const", const=True, default=None,
                    help="UEFI secure boot (needs --firmware efi)")
    vm.add_argument("--controller", help="disk controller: scsi, sata, ide or nvme")
    vm.add_argument("--scsi-type", help="lsilogic, lsilogicsas, pvscsi or buslogic")
    vm.add_argument("--nic", action="append", metavar="NETWORK[:TYPE]",
                    help="a NIC on NETWORK (TYPE vmxnet3, e1000, e1000e); repeatable")
    vm.add_argument("--cdrom", action="store_const", const=True, default=None,
                    help="add a CD-ROM drive")
    vm.add_argument("--hw-version", help="virtual hardware version N or vmx-N (default 14)")
    p.add_argument("--ovf-version", default=None,
                   help="1.0 (default, widest support) or 2.0")
    p.add_argument("--digest", default=None,
                   help="manifest digest: sha1, sha256 (default), sha512; --target may change it")
    p.add_argument("--sign-key", metavar="KEY.pem", help="sign the manifest into NAME.cert")
    p.add_argument("--sign-cert", metavar="CERT.pem", help="signer certificate (+ chain)")
    p.add_argument("--spool-dir", help="where -o - keeps compressed disks until they stream")
    _cache_options(p)
    _recompress_option(p)
    _executor_option(p, "read and encode the disks' spans")
    _common(p)

    r = sub.add_parser("repack", help="OVA or OVF folder -> OVA, OVA stream or OVF folder, "
                                      "stream-optimized disks copied without recompressing")
    r.add_argument("package", metavar="IN", help="an .ova, an .ovf (its folder holds the rest) "
                                                 "or a package folder")
    r.add_argument("-o", "--output", required=True,
                   help="NAME.ova, DIR/NAME.ovf (folder form) or - (OVA on stdout)")
    r.add_argument("--target", metavar="NAME", help="import target preset: " + _TARGET_NAMES)
    r_vm = r.add_argument_group("virtual machine (override the input's)")
    for action in vm._group_actions:  # pack's VM flags, the same spelling and checks
        r_vm._add_action(action)
    for flag in ("--ovf-version", "--digest", "--sign-key", "--sign-cert", "--spool-dir"):
        r._add_action(next(a for a in p._actions if flag in a.option_strings))
    r.add_argument("--no-manifest-check", action="store_true",
                   help="repack even when the input's manifest does not match (a warning)")
    _cache_options(r)
    _common(r)

    p = sub.add_parser("build", help="many appliances from a jobs file, here or on Dask workers")
    p.add_argument("jobs", metavar="JOBS",
                   help="jobs file (.toml, .yaml, .json): an appliance list, each with output, "
                        "disks and pack spec keys; paths relative to the file")
    _cache_options(p)
    _executor_option(p, "run whole jobs")
    _common(p)

    p = sub.add_parser("cache", help="span cache folder: stats, prune")
    csub = p.add_subparsers(dest="cache_command", required=True, parser_class=_Parser)
    c = csub.add_parser("stats", help="entries, bytes, oldest and newest use")
    c.add_argument("folder", metavar="DIR")
    c.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    c = csub.add_parser("prune", help="delete least recently used entries down to --max")
    c.add_argument("folder", metavar="DIR")
    c.add_argument("--max", metavar="SIZE", default=None, type=_size_arg,
                   help="keep at most SIZE (e.g. 20G; 0 empties it); without it only stale "
                        "temporaries go")
    c.add_argument("--json", action="store_true", help="print one JSON document on stdout")

    p = sub.add_parser("extract", help="VMDK or package -> raw (sparse) disks")
    p.add_argument("source", help="a .vmdk, .ova, .ovf or OVF directory")
    p.add_argument("-o", "--output", required=True,
                   help="DST.raw for a .vmdk; a directory for a package")
    p.add_argument("--format", default="raw", choices=("raw", "vmdk", "zst"),
                   help="disk output: sparse raw (default), the VMDK member itself, or raw "
                        "compressed with zstandard")
    _common(p, engine=False)

    p = sub.add_parser("verify", help="check a package or VMDK: layout, digests, signature, "
                                      "VMDK structure, references")
    p.add_argument("package", help="an .ova, an .ovf (its folder holds the rest), a package "
                                   "folder, or a .vmdk")
    p.add_argument("--strict", action="store_true",
                   help="also validate the descriptor's structure (built-in DSP0243 rules; "
                        "plus the DMTF OVF XSDs when installed)")
    p.add_argument("--deep", action="store_true",
                   help="also inflate every grain: content id, populated size")
    p.add_argument("--parallel", type=int, default=None, metavar="N",
                   help="threads inflating grains for --deep (default: the CPUs available)")
    p.add_argument("--target", metavar="NAME",
                   help="also lint against what this importer reads (target.* findings): "
                        + _TARGET_NAMES)
    p.add_argument("--schema-dir", help="folder with the DMTF XSDs (ovf-1.0.0/, ovf-1.1.1/, "
                                        "ovf-2.0.1/) for --strict; default: "
                                        "$OVFSTREAM_SCHEMA_DIR, then "
                                        "$XDG_DATA_HOME/ovfstream/ovf-schemas, then "
                                        "../shared/ovf-schemas beside a source checkout")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="print errors only")

    p = sub.add_parser("targets", help="the import target presets: values, reasons, sources")
    p.add_argument("name", nargs="?", help="one preset (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")

    p = sub.add_parser("inspect", help="what a package or VMDK declares, on one screen")
    p.add_argument("package", help="an .ova, an .ovf, a package folder, or a .vmdk")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    return parser


def _emit_json(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def _say(text: str) -> None:
    """One human-readable line on stderr; package text in it is shown escaped (display.py)."""
    print(printable(text), file=sys.stderr)


def _engine_note(args: argparse.Namespace) -> None:
    """Resolve --compression into args.engine/args.level (UsageError when it meets either);
    then say once, on stderr, when the engine runs without its native span encoder: slower,
    and ISA-L's bytes then follow where python-isal's stream state lies in memory (engine.py),
    so they are not reproducible (--json: engine.native_unavailable, reproducible false)."""
    from .engine import get_engine, resolve_engine
    args.engine, args.level = resolve_engine(args.engine, args.level, args.compression)
    engine = get_engine(args.engine, args.level)
    why = engine.native_unavailable
    if why and not args.quiet:
        _say("ovfstream: note: the native span encoder is not used (%s): compression is "
             "slower and its bytes are not reproducible run to run; --engine libdeflate or zlib "
             "are" % why)
    elif engine.cpu_note and not args.quiet:
        _say("ovfstream: note: %s (--json: reproducible_across_cpus false); --engine libdeflate "
             "or zlib give the same bytes on every x86-64 CPU" % engine.cpu_note)


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert
    from .progress import progress_bars
    _engine_note(args)
    with progress_bars(enabled=not args.quiet) as bars:
        label = os.path.basename(args.source)
        report = None if bars is None else (lambda n, total: bars(label, n, total))
        result = convert(args.source, args.output, parallel=args.parallel, engine=args.engine,
                         level=args.level, adapter_type=args.adapter_type, progress=report,
                         input_format=args.input_format, size=args.size,
                         recompress=args.recompress, **_cache_args(args))
    if args.json:
        _emit_json(result.as_dict())
    elif not args.quiet:
        s = result.stats
        _say("%s -> %s: %d grains, %.1f MiB written, %.2f s, %.3f GB/s read"
             % (args.source, args.output, s.grains_written, s.bytes_written / 2**20,
                s.seconds, s.bytes_read / s.seconds / 1e9 if s.seconds else 0.0))
    return EXIT_OK


def _cmd_extract(args: argparse.Namespace) -> int:
    from .extract import extract
    result = extract(args.source, args.output, format=args.format, parallel=args.parallel)
    if args.json:
        _emit_json(result.as_dict())
    elif not args.quiet:
        for line in result.summary_lines():
            _say(line)
    return EXIT_OK


def _vm_from_args(args: argparse.Namespace, stem: str) -> tuple[Any, str | None]:
    """The VM of --spec and the flags, on the preset of --target (or the spec's target):
    (vm, target name or None)."""
    from .ovf.spec import load_spec, vm_from_layers
    spec = load_spec(args.spec) if args.spec else {}
    target = args.target if args.target is not None else spec.get("target")
    if target is not None:  # (the presets load only then)
        from .ovf.targets import get_target
        target = get_target(target, what="--target" if args.target is not None
                            else "target (in %s)" % args.spec).name
    return vm_from_layers([spec, _vm_flags(args)], name=stem, target=target), target


def _vm_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The VM flags pack and repack share, as spec keys (None: not given)."""
    return {"name": args.name, "annotation": args.annotation, "cpus": args.cpus,
            "cores_per_socket": args.cores_per_socket, "memory": args.memory, "os": args.os,
            "firmware": args.firmware, "secure_boot": args.secure_boot,
            "controller": args.controller, "scsi_type": args.scsi_type,
            "nics": args.nic, "cdrom": args.cdrom, "hw_version": args.hw_version}


def _cmd_pack(args: argparse.Namespace) -> int:
    from .pack import pack
    from .progress import progress_bars
    from .regular import check_regular
    if args.output == "-":
        if sys.stdout is None:  # started with stdout closed
            raise UsageError("-o -: stdout is closed; redirect it to a file or a pipe")
        stem, output = "appliance", sys.stdout.buffer
        if sys.stdout.isatty():
            raise UsageError("-o -: stdout is a terminal; redirect it to a file or a pipe")
    else:
        stem, output = os.path.splitext(os.path.basename(args.output))[0], args.output
    if args.spec:
        check_regular(args.spec)  # a FIFO would hang the read
    vm, target = _vm_from_args(args, stem)
    digest = args.digest or "sha256"
    if args.digest is None and target is not None:
        from .ovf.targets import get_target
        digest = get_target(target).digest.value
    signer = _signer(args, digest)
    also_read = [p for p in (args.spec, args.sign_key, args.sign_cert) if p]
    _engine_note(args)
    from .farm import open_executor
    with open_executor(args.executor) as executor, \
            progress_bars(enabled=not args.quiet) as bars:
        result = pack(args.disks, output, vm=vm, ovf_version=args.ovf_version,
                      digest=args.digest, parallel=args.parallel, engine=args.engine,
                      level=args.level, signer=signer, spool_dir=args.spool_dir, progress=bars,
                      inputs=also_read, input_format=args.input_format, target=target,
                      size=args.size, executor=executor, recompress=args.recompress,
                      **_cache_args(args))
    if args.json:
        doc = result.as_dict()
        if args.output == "-":  # stdout carries the OVA: the JSON goes to stderr
            sys.stderr.write(json.dumps(doc, indent=2) + "\n")
        else:
            _emit_json(doc)
    elif not args.quiet:
        for f in result.files:
            _say("%-40s %14d  %s" % (f.name, f.size, f.digest))
        read = sum(d.stats.bytes_read for d in result.disks)
        _say("%s: %d disk(s), %.2f s, %.3f GB/s read" % (
            result.output, len(result.disks), result.seconds,
            read / result.seconds / 1e9 if result.seconds else 0.0))
        if result.hint:
            _say("%s %s" % (result.target, result.hint))
    if not args.json:  # --json carries them in "warnings"
        for warning in result.warnings:
            _say("ovfstream: warning: %s" % warning)
    return EXIT_OK


def _cache_args(args: argparse.Namespace) -> dict[str, Any]:
    if args.cache_max is not None and args.cache is None:
        raise UsageError("--cache-max needs --cache DIR")
    return {"cache": args.cache, "cache_max": args.cache_max}


def _cmd_build(args: argparse.Namespace) -> int:
    from .build import pack_many
    from .farm import open_executor
    _engine_note(args)
    cache = _cache_args(args)
    with contextlib.ExitStack() as stack:
        executor = stack.enter_context(open_executor(args.executor))
        report = _job_reporter(args, stack)
        result = pack_many(args.jobs, executor=executor, parallel=args.parallel,
                           engine=args.engine, level=args.level,
                           input_format=args.input_format, size=args.size, on_done=report,
                           **cache)
    if args.json:
        _emit_json(result.as_dict())
    elif not args.quiet:
        _say("%d job(s): %d built, %d failed, %.2f s" % (
            len(result.jobs), len(result.jobs) - result.failed, result.failed, result.seconds))
    return EXIT_CHECK if result.failed else EXIT_OK


def _job_reporter(args: argparse.Namespace, stack: contextlib.ExitStack) -> Any:
    """A callback per finished job: a line each (failures always, unless --json) and a rich
    bar of jobs done when stderr is a terminal."""
    bar = task = None
    if not args.quiet and not args.json and sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
        bar = stack.enter_context(Progress(TextColumn("jobs"), BarColumn(),
                                           MofNCompleteColumn(), console=Console(stderr=True)))
        task = bar.add_task("jobs", total=None)

    def report(outcome: Any) -> None:
        if bar is not None:
            bar.update(task, advance=1)
        if args.json:
            return
        if outcome.ok:
            if not args.quiet:
                _say("built  %s: %s" % (outcome.job.label, outcome.job.output))
        else:
            _say("FAILED %s: %s: %s" % (outcome.job.label, outcome.job.output, outcome.error))
    return report


def _cmd_cache(args: argparse.Namespace) -> int:
    from .cache import SpanCache
    if not os.path.isdir(args.folder):
        raise UsageError("cache %s: %s is not a folder" % (args.cache_command, args.folder))
    cache = SpanCache(args.folder)
    if args.cache_command == "stats":
        doc = {"operation": "cache stats", **cache.stats()}
    else:
        doc = {"operation": "cache prune", **cache.prune(args.max)}
    if args.json:
        _emit_json(doc)
    else:
        def shown(key: str, value: object) -> object:
            if key.endswith("_use") and isinstance(value, float):  # an mtime: when last used
                return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
            return value
        sys.stdout.write("".join("%-12s %s\n" % (key, shown(key, value))
                                 for key, value in doc.items() if key != "operation"))
    return EXIT_OK


def _signer(args: argparse.Namespace, digest: str) -> Any:
    """The Signer of --sign-key/--sign-cert (signing with ``digest``), or None."""
    from .pack import Signer
    from .regular import read_regular
    if not (args.sign_key or args.sign_cert):
        return None
    if not (args.sign_key and args.sign_cert):
        raise UsageError("--sign-key and --sign-cert go together")
    return Signer(private_key_pem=read_regular(args.sign_key),
                  certificate_chain_pem=read_regular(args.sign_cert), digest=digest)


def _stdout_stream() -> Any:
    if sys.stdout is None:  # started with stdout closed
        raise UsageError("-o -: stdout is closed; redirect it to a file or a pipe")
    if sys.stdout.isatty():
        raise UsageError("-o -: stdout is a terminal; redirect it to a file or a pipe")
    return sys.stdout.buffer


def _cmd_repack(args: argparse.Namespace) -> int:
    from .progress import progress_bars
    from .repack import repack
    output = _stdout_stream() if args.output == "-" else args.output
    signer = _signer(args, args.digest or "sha256")
    _engine_note(args)
    with progress_bars(enabled=not args.quiet) as bars:
        result = repack(args.package, output, overrides=_vm_flags(args),
                        ovf_version=args.ovf_version, digest=args.digest, target=args.target,
                        signer=signer, parallel=args.parallel, engine=args.engine,
                        level=args.level, spool_dir=args.spool_dir, progress=bars,
                        inputs=[p for p in (args.sign_key, args.sign_cert) if p],
                        check_manifest=not args.no_manifest_check,
                        input_format=args.input_format, **_cache_args(args))
    if args.json:
        doc = json.dumps(result.as_dict(), indent=2) + "\n"
        (sys.stderr if args.output == "-" else sys.stdout).write(doc)
    elif not args.quiet:
        for f in result.files:
            _say("%-40s %14d  %s" % (f.name, f.size, f.digest))
        copied = sum(d.copied is not None for d in result.disks)
        _say("%s: %d disk(s) (%d copied, %d re-encoded), %.2f s" % (
            result.output, len(result.disks), copied, len(result.disks) - copied,
            result.seconds))
    if not args.json:
        for warning in result.warnings:
            _say("ovfstream: warning: %s" % warning)
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    from .verify import verify
    result = verify(args.package, strict=args.strict, deep=args.deep, schema_dir=args.schema_dir,
                    target=args.target, parallel=args.parallel)
    if args.json:
        _emit_json(result.as_dict())
    else:
        for f in result.findings:
            if f.severity == "error" or (not args.quiet and f.severity == "warning"):
                _say(str(f))
        if not args.quiet:
            _say("%s: %s, %d error(s), %d warning(s), %d digest(s) checked, %.2f s" % (
                args.package, "OK" if result.ok else "FAILED", len(result.errors),
                sum(f.severity == "warning" for f in result.findings),
                result.digests_checked, result.seconds))
    return EXIT_OK if result.ok else EXIT_CHECK


def _cmd_targets(args: argparse.Namespace) -> int:
    from .ovf.targets import TARGETS, describe, get_target
    chosen = [get_target(args.name, what="targets NAME")] if args.name else list(TARGETS.values())
    if args.json:
        _emit_json({"operation": "targets", "targets": [t.as_dict() for t in chosen]})
        return EXIT_OK
    lines: list[str] = []
    for t in chosen:
        lines += list(describe(t)) + [""]
    sys.stdout.write("\n".join(lines))
    return EXIT_OK


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect import inspect
    result = inspect(args.package)
    if args.json:
        _emit_json(result.as_dict())
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in result.rows():   # Text cells: package text is never parsed as markup
        table.add_row(rich_text(label), rich_text(value))
    console = Console(highlight=False, soft_wrap=True)
    console.print(table)
    for f in result.findings:
        if f.severity != "info":
            console.print(rich_text(f))
    return EXIT_OK


COMMANDS = {"convert": _cmd_convert, "extract": _cmd_extract, "pack": _cmd_pack,
            "repack": _cmd_repack,
            "verify": _cmd_verify, "inspect": _cmd_inspect, "targets": _cmd_targets,
            "build": _cmd_build, "cache": _cmd_cache}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 check failed, 2 usage)."""
    from .outputs import Terminated
    try:
        args = build_parser().parse_args(argv)
        if getattr(args, "json", False) and sys.stdout is None:
            raise UsageError("--json: stdout is closed")
        with _terminate_on_signals():
            return COMMANDS[args.command](args)
    except UsageError as exc:
        _say("ovfstream: error: %s" % exc)
        return EXIT_USAGE
    except (FormatError, UnsupportedError) as exc:
        _say("ovfstream: %s" % exc)
        return EXIT_CHECK
    except OvfstreamError as exc:
        _say("ovfstream: %s" % exc)
        return EXIT_CHECK
    except OSError as exc:
        _say("ovfstream: %s" % exc)
        return EXIT_CHECK
    except Terminated as exc:  # the outputs' temporaries are gone, as on Ctrl-C
        print("ovfstream: terminated (%s)" % signal.Signals(exc.signum).name, file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("ovfstream: interrupted", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _terminate_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind like Ctrl-C (every temporary and spool file removed); a
    second one during that cleanup is ignored.  Only from the main thread; a signal that
    was ignored when we started (``nohup``) stays ignored.  All three wait while a
    temporary is being created and registered, removed, or renamed (atomic.signals_held)."""
    from .atomic import held_until_released
    from .outputs import Terminated

    def handler(signum: int, frame: object) -> None:
        for name in ("SIGTERM", "SIGHUP"):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        raise Terminated(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    wanted = {getattr(signal, n): handler for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n)}
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # Ctrl-C: as before
        wanted[signal.SIGINT] = signal.default_int_handler
    old = {signum: signal.signal(signum, held_until_released(act))
           for signum, act in wanted.items() if signal.getsignal(signum) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for signum, previous in old.items():
            signal.signal(signum, previous)


def main_entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
