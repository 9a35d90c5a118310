"""The ``ovfstream`` command line: argparse, ``main(argv) -> int``.

The only module that prints or exits.  Exit codes: 0 success, 1 the input failed a check
(or a format error), 2 usage error.  ``--json`` prints one JSON document on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

from . import __version__
from .errors import FormatError, OvfstreamError, UnsupportedError, UsageError

EXIT_OK, EXIT_CHECK, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse exits 2 itself; keep it, say it our way
        raise UsageError(message)


def _common(p: argparse.ArgumentParser, *, engine: bool = True) -> None:
    p.add_argument("--parallel", type=int, default=None, metavar="N",
                   help="worker threads (default: the CPUs available)")
    if engine:
        p.add_argument("--engine", default="isal", choices=("isal", "zlib"),
                       help="deflate engine (default isal: ISA-L, reproducible at levels 1-2)")
        p.add_argument("--level", type=int, default=None,
                       help="compression level (isal 1-3, default 1; zlib 1-9, default 6)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no summary")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ovfstream",
                     description="Raw disk images to stream-optimized VMDKs and OVF/OVA "
                                 "appliances, in one pass.")
    parser.add_argument("--version", action="version", version="ovfstream " + __version__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("convert", help="raw image -> bare stream-optimized VMDK")
    p.add_argument("source", help="raw disk image (file or block device)")
    p.add_argument("-o", "--output", required=True, help="DST.vmdk")
    p.add_argument("--adapter-type", default="lsilogic",
                   choices=("lsilogic", "buslogic", "ide", "legacyESX"),
                   help="ddb.adapterType in the VMDK descriptor (default lsilogic)")
    _common(p)

    p = sub.add_parser("extract", help="VMDK or package -> raw (sparse) disks")
    p.add_argument("source", help="a .vmdk, .ova, .ovf or OVF directory")
    p.add_argument("-o", "--output", required=True,
                   help="DST.raw for a .vmdk; a directory for a package")
    p.add_argument("--format", default="raw", choices=("raw", "vmdk", "zst"),
                   help="disk output: sparse raw (default), the VMDK member itself, or raw "
                        "compressed with zstandard")
    _common(p, engine=False)
    return parser


def _emit_json(doc: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert
    from .progress import progress_bar
    with progress_bar(os.path.basename(args.source), enabled=not args.quiet) as bar:
        result = convert(args.source, args.output, parallel=args.parallel, engine=args.engine,
                         level=args.level, adapter_type=args.adapter_type, progress=bar)
    if args.json:
        _emit_json(result.as_dict())
    elif not args.quiet:
        s = result.stats
        print("%s -> %s: %d grains, %.1f MiB written, %.2f s, %.3f GB/s read"
              % (args.source, args.output, s.grains_written, s.bytes_written / 2**20,
                 s.seconds, s.bytes_read / s.seconds / 1e9 if s.seconds else 0.0),
              file=sys.stderr)
    return EXIT_OK


def _cmd_extract(args: argparse.Namespace) -> int:
    from .extract import extract
    result = extract(args.source, args.output, format=args.format, parallel=args.parallel)
    if args.json:
        _emit_json(result.as_dict())
    elif not args.quiet:
        for line in result.summary_lines():
            print(line, file=sys.stderr)
    return EXIT_OK


COMMANDS = {"convert": _cmd_convert, "extract": _cmd_extract}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 check failed, 2 usage)."""
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except UsageError as exc:
        print("ovfstream: error: %s" % exc, file=sys.stderr)
        return EXIT_USAGE
    except (FormatError, UnsupportedError) as exc:
        print("ovfstream: %s" % exc, file=sys.stderr)
        return EXIT_CHECK
    except OvfstreamError as exc:
        print("ovfstream: %s" % exc, file=sys.stderr)
        return EXIT_CHECK
    except OSError as exc:
        print("ovfstream: %s" % exc, file=sys.stderr)
        return EXIT_CHECK
    except KeyboardInterrupt:
        print("ovfstream: interrupted", file=sys.stderr)
        return 130


def main_entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    main_entry()
