"""The OVF manifest (`X.mf`): canonical rendering and a tolerant, reporting parser.

Implements ../shared/FORMATS.md section 3 (DMTF DSP0243 "OVF", section 5.1 "Package
manifest"): one line per file, ``SHA256(name)= <lowercase hex>``, LF line ends.

We write only the canonical form.  When reading we accept what real producers emit (BSD-style
``SHA1 (x) = h`` from `shasum`/`openssl dgst` pipelines, CRLF from Windows tools, uppercase hex,
blank lines, the space padding some ovftool builds leave at the end) and report each deviation
as a warning Finding, since vCenter is strict about the canonical form.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .errors import Finding, ManifestFormatError, UsageError, location
from .ovf.namespaces import DIGEST_HEX_LENGTHS, DIGEST_OF_TOKEN, DIGESTS

__all__ = [
    "DIGESTS",
    "DIGEST_HEX_LENGTHS",
    "MAX_MANIFEST_BYTES",
    "RULES",
    "ManifestEntry",
    "render_manifest",
    "render_line",
    "manifest_size",
    "parse_manifest",
]

_TOKENS = DIGEST_OF_TOKEN

# A manifest lists a handful of files; anything this large is not one (and is refused before
# we spend memory on it: the OVA reader checks the member size against this first).
MAX_MANIFEST_BYTES = 1 << 20

RULES: dict[str, str] = {
    "mf.size": "manifest larger than MAX_MANIFEST_BYTES (raised as ManifestFormatError)",
    "mf.line.format": "a line that is not 'ALGO(name)= hex' in any accepted spelling (error)",
    "mf.line.canonical": ("a line accepted but not canonical: spaces, CRLF, uppercase hex, "
                          "blank line, padding (warning)"),
    "mf.algorithm": "an algorithm token other than SHA1, SHA256, SHA512 (error)",
    "mf.algorithm.mixed": "lines use different algorithms (warning)",
    "mf.digest.length": "the hex digest has the wrong length for its algorithm (error)",
    "mf.duplicate": "a file is listed twice; the first line is kept (error)",
    "mf.empty": "the manifest lists no file (warning)",
}

# Tolerant line grammar.  The name is greedy so that a name containing ')' still parses: the
# last ')' followed by '=' and hex closes it.  Token: letters, digits, '-', '_' so that
# 'SHA2-256' or 'MD5' parse far enough to be reported as an unknown algorithm.
_LINE = re.compile(rb"\A[ \t]*([A-Za-z0-9_-]+)[ \t]*\((.+)\)[ \t]*=[ \t]*([0-9A-Za-z]+)[ \t]*\Z")
_HEX = re.compile(rb"\A[0-9a-fA-F]+\Z")
_CONTROL = re.compile("[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class ManifestEntry:
    """One accepted manifest line."""

    name: str
    algorithm: str      # key of DIGESTS: "sha1", "sha256", "sha512"
    hexdigest: str      # lowercase
    line_no: int        # 1-based
    canonical: bool     # the line was byte-exact canonical form


def _check_name(name: str) -> bytes:
    if not name:
        raise UsageError("manifest entry with an empty file name")
    if _CONTROL.search(name):
        # A line break would end the line; other control bytes are refused by readers alike.
        raise UsageError("file name %r has a control character" % name)
    return name.encode("utf-8")


def render_line(name: str, algorithm: str, hexdigest: str) -> bytes:
    """One canonical line ``TOKEN(name)= hex\\n``."""
    token = DIGESTS.get(algorithm)
    if token is None:
        raise UsageError("manifest algorithm %r is not one of %s" % (algorithm, ", ".join(DIGESTS)))
    raw_name = _check_name(name)
    if (len(hexdigest) != DIGEST_HEX_LENGTHS[algorithm]
            or not _HEX.match(hexdigest.encode("ascii", "replace")) or hexdigest != hexdigest.lower()):
        raise UsageError("%r is not a lowercase %s hex digest" % (hexdigest, token))
    return b"%s(%s)= %s\n" % (token.encode("ascii"), raw_name, hexdigest.encode("ascii"))


def render_manifest(entries: Sequence[tuple[str, str, str]]) -> bytes:
    """The canonical manifest for (file name, algorithm key, lowercase hex) entries, in order."""
    return b"".join(render_line(name, algorithm, hexdigest) for name, algorithm, hexdigest in entries)


def manifest_size(names: Iterable[str], algorithm: str) -> int:
    """Exact byte length of `render_manifest` for these names, before any digest is known."""
    token = DIGESTS.get(algorithm)
    if token is None:
        raise UsageError("manifest algorithm %r is not one of %s" % (algorithm, ", ".join(DIGESTS)))
    per_line = len(token) + len("()= ") + DIGEST_HEX_LENGTHS[algorithm] + len("\n")
    return sum(per_line + len(_check_name(name)) for name in names)


def parse_manifest(data: bytes, *, path: str | os.PathLike[str] | None = None
                   ) -> tuple[list[ManifestEntry], list[Finding]]:
    """Parse a manifest tolerantly.  Returns the accepted entries and the findings.

    Only a manifest over MAX_MANIFEST_BYTES raises (ManifestFormatError `mf.size`); every other
    problem is a Finding so that `verify` can report all of them at once.  Lines with an error
    are left out of the entries.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestFormatError("mf.size", "manifest is %d bytes, more than %d"
                                  % (len(data), MAX_MANIFEST_BYTES), path=path, offset=0)
    where = location(path)
    entries: list[ManifestEntry] = []
    findings: list[Finding] = []
    seen: dict[str, int] = {}
    blank_lines: list[int] = []
    blank_offset: int | None = None
    offset = 0
    for line_no, raw_line in enumerate(data.split(b"\n"), start=1):
        line_offset = offset
        offset += len(raw_line) + 1
        last = offset > len(data)          # no LF after it
        if last and raw_line == b"":
            break                          # the file ends with LF, as it should
        line = raw_line[:-1] if raw_line.endswith(b"\r") else raw_line
        if not line.strip(b" \t"):
            # Blank lines and the trailing space padding some ovftool builds leave.
            blank_lines.append(line_no)
            blank_offset = line_offset if blank_offset is None else blank_offset
            continue
        match = _LINE.match(line)
        if match is None:
            findings.append(Finding("mf.line.format", "error", where, line_offset,
                                    "line %d is not 'ALGO(name)= hex': %r" % (line_no, _clip(line))))
            continue
        token, raw_name, raw_hex = match.groups()
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            findings.append(Finding("mf.line.format", "error", where, line_offset,
                                    "line %d: file name is not UTF-8: %r" % (line_no, _clip(raw_name))))
            continue
        if _CONTROL.search(name):
            findings.append(Finding("mf.line.format", "error", where, line_offset,
                                    "line %d: file name has a control character: %r"
                                    % (line_no, _clip(raw_name))))
            continue
        algorithm = _TOKENS.get(token.decode("ascii").upper())
        if algorithm is None:
            findings.append(Finding("mf.algorithm", "error", where, line_offset,
                                    "line %d: algorithm %r is not SHA1, SHA256 or SHA512"
                                    % (line_no, token.decode("ascii"))))
            continue
        if not _HEX.match(raw_hex):
            findings.append(Finding("mf.line.format", "error", where, line_offset,
                                    "line %d: digest %r is not hex" % (line_no, _clip(raw_hex))))
            continue
        if len(raw_hex) != DIGEST_HEX_LENGTHS[algorithm]:
            findings.append(Finding("mf.digest.length", "error", where, line_offset,
                                    "line %d: %s digest has %d hex digits, not %d"
                                    % (line_no, DIGESTS[algorithm], len(raw_hex),
                                       DIGEST_HEX_LENGTHS[algorithm])))
            continue
        hexdigest = raw_hex.decode("ascii").lower()
        canonical = (not last and raw_line == b"%s(%s)= %s" % (DIGESTS[algorithm].encode("ascii"),
                                                               raw_name, hexdigest.encode("ascii")))
        if not canonical:
            findings.append(Finding("mf.line.canonical", "warning", where, line_offset,
                                    "line %d is not canonical %s(%s)= <lowercase hex>\\n: %r"
                                    % (line_no, DIGESTS[algorithm], name, _clip(raw_line))))
        if name in seen:
            findings.append(Finding("mf.duplicate", "error", where, line_offset,
                                    "line %d lists %r again (first on line %d)"
                                    % (line_no, name, seen[name])))
            continue
        seen[name] = line_no
        entries.append(ManifestEntry(name, algorithm, hexdigest, line_no, canonical))
    if blank_lines:
        findings.append(Finding("mf.line.canonical", "warning", where, blank_offset,
                                "%d blank or space-padded line(s), first on line %d"
                                % (len(blank_lines), blank_lines[0])))
    algorithms = sorted({e.algorithm for e in entries})
    if len(algorithms) > 1:
        findings.append(Finding("mf.algorithm.mixed", "warning", where, None,
                                "lines mix %s" % ", ".join(DIGESTS[a] for a in algorithms)))
    if not entries and not any(f.severity == "error" for f in findings):
        findings.append(Finding("mf.empty", "warning", where, None, "the manifest lists no file"))
    return entries, findings


def _clip(raw: bytes, limit: int = 120) -> bytes:
    return raw if len(raw) <= limit else raw[:limit] + b"..."
