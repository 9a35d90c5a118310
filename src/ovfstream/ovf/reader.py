"""Hardened, lax reader for OVF descriptors: bytes -> :class:`~.summary.Descriptor` + findings.

Implements the read side of DMTF DSP0243 (OVF 1.x, 2.x) and VMware's pre-DMTF OVF 0.9
(envelope namespace ``http://www.vmware.com/schema/ovf/1/envelope``, ``<Section xsi:type=
"ovf:DiskSection_Type">`` style), as summarised in FORMATS.md section 5 and DESIGN.md
"Reading side".

Safety (the descriptor is untrusted input, often downloaded):

- a size limit before anything is parsed (``ovf.xml.size``);
- any DOCTYPE or entity declaration is refused outright (``ovf.xml.dtd``): no OVF needs one,
  and refusing is the only way to be sure that XXE (external file / URL / parameter entities)
  and entity expansion bombs do nothing.  The reader decodes the bytes itself (BOM, XML 1.0
  Appendix F signature, declared encoding: UTF-8/16/32 in either byte order, EBCDIC, any
  codec Python knows), scans the *text* for a declaration, and hands libxml2 that same text
  as UTF-8 with the encoding forced, so the parser never sees a character the scan did not.
  libxml2 (2.14) opens an external parameter entity even with ``load_dtd=False`` in some
  option combinations, so a scan of the raw bytes in a few encodings was not enough;
- lxml runs with entity resolution, DTD loading/validation and network access off, without
  ``huge_tree`` (libxml2's depth and text-size limits stay on), and with a resolver that
  answers every load request with nothing (and makes the parse fail ``ovf.xml.dtd``), so
  even a parser bug cannot open a file or a URL; the parsed tree is checked for a DOCTYPE
  once more;
- counts are capped (``ovf.limit``: 10,000 each of Files, Disks, Networks, VirtualSystems,
  Items, Properties and deployment Configurations) and every check is linear in the size of
  the descriptor, so a small hostile file cannot make the reader slow.

Laxness (what real importers accept, so ``inspect`` works on what is out there): vendor
sections and unknown elements are skipped; RASD children may come in any order, in any
namespace (rasd, sasd, epasd) and as ``InstanceId`` (OVF 0.9 and old VMware) as well as
``InstanceID``; envelope children without a namespace (VirtualBox's copy of an 0.9 appliance)
are accepted; a declared ``encoding="utf-16"`` on 8-bit bytes (XenServer's XenOVF) is read as
UTF-8 with a warning.  What is wrong but survivable becomes a :class:`~ovfstream.errors.Finding`;
only input that is not an XML OVF envelope at all raises :class:`~ovfstream.errors.OvfFormatError`.

Strict mode additionally runs ovfstream's own structural rules (:mod:`.validate`, always:
``ovf.struct.*`` findings) and, when the DMTF XSDs are installed (:mod:`.schema`), reports each
schema error as an ``ovf.xsd`` finding.
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import re
from collections import ChainMap
from collections.abc import Container, Iterator, Mapping

from lxml import etree

from ..errors import Finding, OvfFormatError, Severity, location
from . import schema, validate
from .namespaces import (
    NS_OVF09,
    NS_VBOX,
    NS_VMW,
    NS_XSI,
    RT_CDROM as _RT_CDROM,
    RT_CPU as _RT_CPU,
    RT_DVD as _RT_DVD,
    RT_ETHERNET as _RT_ETHERNET,
    RT_IDE as _RT_IDE,
    RT_MEMORY as _RT_MEMORY,
    RT_NVME as _RT_NVME,
    RT_OTHER_STORAGE as _RT_OTHER_STORAGE,
    RT_SAS as _RT_SAS,
    RT_SATA as _RT_SATA,
    RT_SCSI as _RT_SCSI,
)
from .summary import (
    DeploymentOption,
    Descriptor,
    DiskInfo,
    FileRef,
    NicInfo,
    ProductInfo,
    PropertyInfo,
    VirtualSystemInfo,
)

__all__ = ["parse_descriptor", "parse_descriptor_tree", "RULES", "MAX_DESCRIPTOR_BYTES", "MAX_ENTRIES", "NS_OVF09",
           "parse_units"]

# Descriptors seen in the wild are 300 bytes to a few hundred KiB (big ProductSections with
# EULAs); 16 MiB is far above any real one and keeps a hostile one cheap.
MAX_DESCRIPTOR_BYTES = 16 << 20
# Real descriptors declare a handful of Files, Disks, Networks and Items (the largest seen:
# a few hundred ProductSection Properties).  Ten thousand of any kind is far beyond them and
# keeps what verify and inspect do per entry (lookups, findings, output lines) cheap.
MAX_ENTRIES = 10_000


_VERSION_OF_NS = {schema.NS_OVF1: "1.x", schema.NS_OVF2: "2.x", NS_OVF09: "0.9"}

RULES: dict[str, str] = {
    "ovf.xml.size": "the descriptor is larger than the reader's limit (16 MiB by default)",
    "ovf.xml.dtd": "the descriptor has a DOCTYPE or entity declaration, in any encoding, or the "
                   "parser asked to load an external resource (refused: XXE / entity bombs)",
    "ovf.xml.syntax": "the descriptor is not well-formed XML, or its bytes do not decode in "
                      "their (detected or declared) encoding",
    "ovf.limit": "the descriptor declares more than 10,000 of one kind: Files, Disks, "
                 "Networks, VirtualSystems, Items, Properties or deployment Configurations "
                 "(refused)",
    "ovf.xml.encoding": "the declared encoding does not match the bytes; read as UTF-8 "
                        "(warning; error when strict)",
    "ovf.envelope": "the root element is not an OVF Envelope",
    "ovf.envelope.namespace": "the Envelope is in an unknown namespace; read as OVF 1.x (warning)",
    "ovf.content": "the Envelope holds no VirtualSystem or VirtualSystemCollection (warning)",
    "ovf.id.unique": "a File has no id, or two Files, Disks or Networks share one id or name",
    "ovf.file.href": "a File href is unsafe (absolute, '..', backslash, non-http URL: error) "
                     "or leaves the package (http(s) URL, subfolder: warning)",
    "ovf.file.size": "a File ovf:size or ovf:chunkSize is not a non-negative integer",
    "ovf.file.unused": "a File is referenced by no Disk, HostResource or fileRef (warning)",
    "ovf.disk.id": "a Disk has no ovf:diskId",
    "ovf.disk.capacity": "a Disk capacity is missing or not an integer (error), or a "
                         "${property} resolved at deploy time (info)",
    "ovf.units": "an AllocationUnits / capacityAllocationUnits value is not understood, "
                 "more than 2^80 bytes per unit, or missing (warning)",
    "ovf.value": "a numeric field (VirtualQuantity, ResourceType, populatedSize, OS id...) is "
                 "not an integer (warning)",
    "ovf.ref.file": "a Disk ovf:fileRef names no File in References",
    "ovf.ref.disk": "a HostResource ovf:/disk/X or ovf:/file/X names no Disk or File",
    "ovf.ref.parent": "a rasd:Parent names no InstanceID in the same VirtualHardwareSection",
    "ovf.ref.network": "a NIC's rasd:Connection names no Network in the NetworkSection (warning)",
    "ovf.instanceid.unique": "two Items of one VirtualHardwareSection share an InstanceID for "
                             "a common deployment configuration",
    "ovf.item.instanceid": "an Item has no InstanceID (warning)",
    "ovf.xsd": "strict mode: the descriptor breaks the DMTF XSD of its OVF version",
}


_ITEM_KINDS = frozenset({"Item", "StorageItem", "EthernetPortItem"})
_MAX_XSD_FINDINGS = 100  # per schema version; a broken file can produce thousands of lines

# Searched in the decoded text (what libxml2 is given), case-insensitively and anywhere: a
# DOCTYPE has no business in an OVF, even inside a CDATA section.
_DTD_TEXT = re.compile(r"<!\s*(?:DOCTYPE|ENTITY)", re.IGNORECASE)
# Byte-order marks, the UTF-32-LE one before the UTF-16-LE one it starts with.
_BOMS = ((b"\x00\x00\xfe\xff", "utf-32-be"), (b"\xff\xfe\x00\x00", "utf-32-le"),
         (b"\xef\xbb\xbf", "utf-8"), (b"\xfe\xff", "utf-16-be"), (b"\xff\xfe", "utf-16-le"))
# XML 1.0 Appendix F: the first four bytes of "<?xml" (or "<") without a BOM.  UCS-4 in the
# unusual 2143 and 3412 byte orders has no Python codec (None: refused).
_SIGNATURES: dict[bytes, str | None] = {
    b"\x00\x00\x00\x3c": "utf-32-be", b"\x3c\x00\x00\x00": "utf-32-le",
    b"\x00\x3c\x00\x3f": "utf-16-be", b"\x3c\x00\x3f\x00": "utf-16-le",
    b"\x00\x00\x3c\x00": None, b"\x00\x3c\x00\x00": None}
_EBCDIC_SIGNATURE = b"\x4c\x6f\xa7\x94"  # "<?xm" in EBCDIC: the declaration names the page
_WIDE_ENCODINGS = ("utf-16", "utf16", "utf-32", "utf32", "ucs-2", "ucs2", "ucs-4", "ucs4",
                   "iso-10646")
# Python codecs that are not character encodings an XML file can be written in.
_NOT_XML_CODECS = frozenset({"unicode-escape", "raw-unicode-escape", "idna", "punycode",
                             "undefined", "mbcs", "oem"})  # codecs.CodecInfo.name spellings
_DECLARED_ENCODING = re.compile(
    r"""\A<\?xml[^>]{0,200}?\sencoding\s*=\s*["']([A-Za-z][A-Za-z0-9._\-]{0,63})["']""")

_DECIMAL = re.compile(r"\s*\+?(\d{1,30})\s*\Z")
_PROPERTY_REF = re.compile(r"\s*\$\{[^}]*\}\s*\Z")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")

# Named memory/capacity units seen in the wild (VirtualBox writes "MegaBytes"; old VMware
# "MB").  Like VMware and VirtualBox, decimal-looking names mean binary multiples.
_NAMED_UNITS = {
    "b": 1, "byte": 1, "bytes": 1,
    "kb": 1 << 10, "kib": 1 << 10, "kilobyte": 1 << 10, "kilobytes": 1 << 10,
    "mb": 1 << 20, "mib": 1 << 20, "megabyte": 1 << 20, "megabytes": 1 << 20,
    "gb": 1 << 30, "gib": 1 << 30, "gigabyte": 1 << 30, "gigabytes": 1 << 30,
    "tb": 1 << 40, "tib": 1 << 40, "terabyte": 1 << 40, "terabytes": 1 << 40,
}
_UNIT_FACTOR = re.compile(r"(\d{1,3})\^(\d{1,3})\Z|(\d{1,20})\Z")
# 2^80 bytes (a yobibyte) per unit is beyond any real unit; stacked factors past it
# ("byte * 2^80 * 2^80 ...") would make integers too large to print or to divide into a float.
_MAX_UNIT_BYTES = 1 << 80


def parse_units(text: str | None) -> int | None:
    """Bytes per unit of a DSP0004 programmatic unit ("byte * 2^20", "byte*10^6",
    "byte * 1024") or a common name ("MegaBytes", "MB", "GiB"); None if not understood or
    more than 2^80 bytes per unit.

    ``None`` or an empty string means plain bytes."""
    if text is None or not text.strip():
        return 1
    compact = "".join(text.split()).lower()
    if compact in _NAMED_UNITS:
        return _NAMED_UNITS[compact]
    parts = compact.split("*")
    if parts[0] not in ("byte", "bytes"):
        return None
    factor = 1
    for part in parts[1:]:
        m = _UNIT_FACTOR.match(part)
        if m is None:
            return None
        if m.group(3) is not None:
            factor *= int(m.group(3))
        else:
            base, exp = int(m.group(1)), int(m.group(2))
            if base not in (2, 10) or exp > 80:
                return None
            factor *= base ** exp
        if factor > _MAX_UNIT_BYTES:  # checked per factor: the product stays small
            return None
    return factor if factor > 0 else None


def _host_resource(text: str | None) -> tuple[str, str] | None:
    """``ovf:/disk/ID`` or ``ovf:/file/ID`` (any case, extra slashes, surrounding space) as
    ("disk" | "file", ID); None for anything else.  Plain string operations, linear time:
    the regex it replaces backtracked quadratically over runs of spaces."""
    if not text:
        return None
    value = text.strip()
    if value[:4].lower() == "ovf:":
        value = value[4:]
    if not value.startswith("/"):
        return None
    kind, sep, ref = value.lstrip("/").partition("/")
    kind = kind.lower()
    if not sep or kind not in ("disk", "file") or not ref:
        return None
    return kind, ref


def _clip(text: str, limit: int = 200) -> str:
    """Untrusted text quoted in a message, cut to a readable length."""
    return text if len(text) <= limit else text[:limit] + "..."


# ---------------------------------------------------------------------------------------------
# Parsing the bytes


def _syntax(detail: str, path: str, offset: int | None = None) -> OvfFormatError:
    return OvfFormatError("ovf.xml.syntax", detail, path=path, offset=offset)


def _codec(name: str, path: str) -> str:
    try:
        info = codecs.lookup(name)
    except LookupError:
        raise _syntax("unsupported encoding %r" % name, path) from None
    if info.name in _NOT_XML_CODECS or not getattr(info, "_is_text_encoding", True):
        raise _syntax("unsupported encoding %r" % name, path)
    return info.name


def _decode(data: bytes, path: str, findings: list[Finding], strict: bool
            ) -> tuple[str, int, str]:
    """The document as text: (text, offset of the text's first byte, codec name).

    The encoding comes from, in order: a byte-order mark; the Appendix F signature of the
    first four bytes (UTF-16/UTF-32 without BOM, EBCDIC); the declaration of an
    ASCII-compatible document; else UTF-8.
    """
    for bom, codec in _BOMS:
        if data.startswith(bom):
            return _decode_as(data, len(bom), codec, path), len(bom), codec
    head = data[:4]
    if head in _SIGNATURES:
        wide = _SIGNATURES[head]
        if wide is None:
            raise _syntax("UCS-4 in the 2143/3412 byte order is not supported", path, 0)
        return _decode_as(data, 0, wide, path), 0, wide
    if head == _EBCDIC_SIGNATURE:
        found = _DECLARED_ENCODING.match(data[:256].decode("cp037"))
        if found is None:
            raise _syntax("EBCDIC document without an encoding declaration", path, 0)
        codec = _codec(found.group(1), path)
        return _decode_as(data, 0, codec, path), 0, codec
    found = _DECLARED_ENCODING.match(data[:256].decode("latin-1"))
    if found is None:
        return _decode_as(data, 0, "utf-8", path), 0, "utf-8"
    declared = found.group(1)
    if declared.lower().startswith(_WIDE_ENCODINGS):
        # One byte per character, yet declared UTF-16/32 (the signature check saw "<?xml" in
        # ASCII): XenServer's XenOVF writes this, and real importers read it as UTF-8.
        # Strict mode reports it as an error: a strict XML parser rejects the file.
        text = _decode_as(data, 0, "utf-8", path)
        findings.append(Finding("ovf.xml.encoding", "error" if strict else "warning",
                                location(path), None, "declared encoding %r but the bytes are "
                                "8-bit; read as UTF-8" % declared))
        return text, 0, "utf-8"
    codec = _codec(declared, path)
    return _decode_as(data, 0, codec, path), 0, codec


def _decode_as(data: bytes, start: int, codec: str, path: str) -> str:
    try:
        return data[start:].decode(codec)
    except UnicodeDecodeError as exc:
        raise _syntax("the bytes are not valid %s: %s" % (codec, exc.reason), path,
                      start + exc.start) from None


class _RefuseLoads(etree.Resolver):
    """Answers every request libxml2 makes for an external resource (DTD, entity, XInclude)
    with an empty document and remembers it: nothing is ever opened or fetched."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[str] = []

    def resolve(self, system_url: str | None, public_id: str | None, context: object) -> object:
        self.requests.append(system_url or public_id or "?")
        return self.resolve_string("", context)


def _parser() -> tuple[etree.XMLParser, _RefuseLoads]:
    # One parser per call: lxml parsers are not safe to share between threads.  The text is
    # always handed over as UTF-8 (see _parse_xml): the declared encoding is ignored.
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                             dtd_validation=False, huge_tree=False, remove_comments=False,
                             remove_pis=False, collect_ids=False, encoding="utf-8")
    refuse = _RefuseLoads()
    parser.resolvers.add(refuse)
    return parser, refuse


def _syntax_error(err: etree.XMLSyntaxError, path: str) -> OvfFormatError:
    line, column = err.position if err.position else (err.lineno or 0, 0)
    # libxml2's message repeats the position at its end; keep one copy.
    message = re.sub(r",? line \d+, column \d+\s*\Z", "", err.msg or "") or "not well-formed"
    return _syntax("line %d, column %d: %s" % (line, column, message), path)


def _parse_xml(data: bytes, path: str, findings: list[Finding], strict: bool) -> etree._Element:
    text, start, codec = _decode(data, path, findings, strict)
    dtd = _DTD_TEXT.search(text)
    if dtd is not None:
        offset = start + len(text[:dtd.start()].encode(codec, "replace"))
        raise OvfFormatError("ovf.xml.dtd", "DOCTYPE/ENTITY declarations are not allowed in "
                             "an OVF descriptor (refused, not parsed)", path=path, offset=offset)
    if codec == "utf-8":
        utf8 = data[start:] if start else data
    else:
        try:
            utf8 = text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate from a lax codec (UTF-7)
            raise _syntax("the text holds an unpaired surrogate", path) from None
    parser, refuse = _parser()
    try:
        root = etree.fromstring(utf8, parser)
    except etree.XMLSyntaxError as err:
        if refuse.requests:
            raise _load_refused(refuse, path) from None
        raise _syntax_error(err, path) from None
    if refuse.requests:
        raise _load_refused(refuse, path)
    docinfo = root.getroottree().docinfo
    if docinfo.doctype or docinfo.internalDTD is not None:
        # Unreachable after the text scan; kept so that a gap in it fails closed.
        raise OvfFormatError("ovf.xml.dtd", "DOCTYPE declarations are not allowed in an OVF "
                             "descriptor", path=path)
    return root


def _load_refused(refuse: _RefuseLoads, path: str) -> OvfFormatError:
    return OvfFormatError("ovf.xml.dtd", "the parser asked for the external resource %r "
                          "(refused; nothing was opened)" % _clip(refuse.requests[0]), path=path)


# ---------------------------------------------------------------------------------------------
# Lax element access


class _Doc:
    """The parsed envelope plus the lookups every part of the reader shares."""

    def __init__(self, root: etree._Element, path: str, findings: list[Finding]) -> None:
        self.root = root
        self.path = path
        self.findings = findings
        ns = etree.QName(root).namespace or ""
        # Envelope-structure elements may be in the envelope's namespace, any OVF namespace,
        # or none at all (VirtualBox's joomla 0.9 copy has unprefixed children, no default ns).
        self.struct_ns = {ns, schema.NS_OVF1, schema.NS_OVF2, NS_OVF09, ""}
        self.ns = ns
        self.counts: dict[str, int] = {}

    def add(self, rule: str, severity: Severity, message: str,
            el: etree._Element | None = None) -> None:
        line = getattr(el, "sourceline", None) if el is not None else None
        text = ("line %d: %s" % (line, message)) if line else message
        self.findings.append(Finding(rule, severity, location(self.path), None, text))

    def count(self, what: str, el: etree._Element) -> None:
        """Count one entry of a kind; refuse the descriptor past MAX_ENTRIES (``ovf.limit``)."""
        seen = self.counts[what] = self.counts.get(what, 0) + 1
        if seen > MAX_ENTRIES:
            raise OvfFormatError("ovf.limit", "line %s: more than %d %s in the descriptor "
                                 "(refused)" % (el.sourceline, MAX_ENTRIES, what),
                                 path=self.path)

    def kind(self, el: etree._Element) -> str | None:
        """The OVF element kind: local name, or for 0.9 ``Section``/``Content`` the xsi:type
        ("ovf:DiskSection_Type" -> "DiskSection").  None for comments, PIs, vendor elements."""
        if not isinstance(el.tag, str):
            return None
        qn = etree.QName(el)
        if (qn.namespace or "") not in self.struct_ns:
            return None
        name = qn.localname
        if name in ("Section", "Content"):
            xsi_type = el.get("{%s}type" % NS_XSI)
            if xsi_type:
                name = xsi_type.rpartition(":")[2]
                if name.endswith("_Type"):
                    name = name[:-5]
        return name

    def children(self, el: etree._Element, *kinds: str) -> Iterator[etree._Element]:
        for child in el:
            if self.kind(child) in kinds:
                yield child

    def child(self, el: etree._Element, kind: str) -> etree._Element | None:
        return next(self.children(el, kind), None)

    def text(self, el: etree._Element, kind: str) -> str | None:
        c = self.child(el, kind)
        if c is None or c.text is None:
            return None
        value = c.text.strip()
        return value or None

    def attr(self, el: etree._Element, name: str) -> str | None:
        """``ovf:NAME`` in whichever OVF namespace the file uses, else an unprefixed NAME."""
        for ns in (self.ns, schema.NS_OVF1, schema.NS_OVF2, NS_OVF09):
            if ns:
                value = el.get("{%s}%s" % (ns, name))
                if value is not None:
                    return value
        return el.get(name)

    def integer(self, text: str | None, what: str, el: etree._Element | None,
                rule: str = "ovf.value", severity: Severity = "warning") -> int | None:
        if text is None or not text.strip():
            return None
        m = _DECIMAL.match(text)
        if m is None:
            self.add(rule, severity, "%s %r is not a non-negative integer" % (what, text[:80]), el)
            return None
        return int(m.group(1))


def _bool(text: str | None) -> bool | None:
    if text is None:
        return None
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    return None


# ---------------------------------------------------------------------------------------------
# Envelope-level sections


def _read_files(doc: _Doc) -> list[FileRef]:
    files: list[FileRef] = []
    seen: set[str] = set()
    for refs in doc.children(doc.root, "References"):
        for el in doc.children(refs, "File"):
            doc.count("Files", el)
            file_id = doc.attr(el, "id") or ""
            href = doc.attr(el, "href") or ""
            if not file_id:
                doc.add("ovf.id.unique", "error", "File without ovf:id (href %r)" % _clip(href),
                        el)
            elif file_id in seen:
                doc.add("ovf.id.unique", "error", "File id %r is used twice" % _clip(file_id), el)
            seen.add(file_id)
            _check_href(doc, href, el)
            files.append(FileRef(
                id=file_id, href=href,
                # A wrong size breaks every OVA reader that trusts it: an error, not a warning.
                size=doc.integer(doc.attr(el, "size"), "File ovf:size", el, "ovf.file.size",
                                 "error"),
                compression=doc.attr(el, "compression") or None,
                chunk_size=doc.integer(doc.attr(el, "chunkSize"), "File ovf:chunkSize", el,
                                       "ovf.file.size", "error")))
    return files


def _check_href(doc: _Doc, href: str, el: etree._Element) -> None:
    if not href.strip():
        doc.add("ovf.file.href", "error", "File has no ovf:href", el)
        return
    if any(ord(c) < 0x20 or ord(c) == 0x7f for c in href):
        doc.add("ovf.file.href", "error", "href %r holds control characters" % _clip(href), el)
        return
    scheme = _URL.match(href)
    # A one-letter "scheme" is a Windows drive letter (C:\x), handled as an absolute path below.
    if scheme is not None and len(scheme.group(0)) > 2:
        if scheme.group(0).lower() in ("http:", "https:"):
            doc.add("ovf.file.href", "warning", "href %r is an external URL: the package is "
                    "not self-contained" % _clip(href), el)
        else:
            doc.add("ovf.file.href", "error", "href %r uses a URL scheme other than http(s)"
                    % _clip(href), el)
        return
    if "\\" in href:
        doc.add("ovf.file.href", "error", "href %r holds a backslash (a Windows path)"
                % _clip(href), el)
    elif href.startswith("/") or (scheme is not None):
        doc.add("ovf.file.href", "error", "href %r is an absolute path" % _clip(href), el)
    elif ".." in href.split("/"):
        doc.add("ovf.file.href", "error", "href %r climbs out of the package with '..'"
                % _clip(href), el)
    elif "/" in href:
        doc.add("ovf.file.href", "warning", "href %r names a subfolder: valid beside an .ovf, "
                "impossible inside an OVA" % _clip(href), el)


def _read_disks(doc: _Doc, parent: etree._Element, file_ids: set[str]) -> list[DiskInfo]:
    disks: list[DiskInfo] = []
    for section in doc.children(parent, "DiskSection"):
        for el in doc.children(section, "Disk"):
            doc.count("Disks", el)
            disk_id = doc.attr(el, "diskId") or ""
            if not disk_id:
                doc.add("ovf.disk.id", "error", "Disk without ovf:diskId", el)
            file_ref = (doc.attr(el, "fileRef") or "").strip() or None  # "" = blank disk
            if file_ref is not None and file_ref not in file_ids:
                doc.add("ovf.ref.file", "error", "Disk %r: fileRef %r names no File in "
                        "References" % (_clip(disk_id), _clip(file_ref)), el)
            disks.append(DiskInfo(
                disk_id=disk_id, file_ref=file_ref,
                capacity_bytes=_capacity(doc, el, disk_id),
                populated_bytes=doc.integer(doc.attr(el, "populatedSize"),
                                            "Disk %r populatedSize" % _clip(disk_id), el),
                format_uri=doc.attr(el, "format") or None))
    return disks


def _capacity(doc: _Doc, el: etree._Element, disk_id: str) -> int | None:
    raw = doc.attr(el, "capacity")
    if raw is None or not raw.strip():
        doc.add("ovf.disk.capacity", "error", "Disk %r has no ovf:capacity" % _clip(disk_id), el)
        return None
    if _PROPERTY_REF.match(raw):
        doc.add("ovf.disk.capacity", "info", "Disk %r capacity %s is a property resolved at "
                "deploy time" % (_clip(disk_id), _clip(raw.strip())), el)
        return None
    value = doc.integer(raw, "Disk %r capacity" % _clip(disk_id), el, "ovf.disk.capacity", "error")
    if value is None:
        return None
    units_text = doc.attr(el, "capacityAllocationUnits")
    units = parse_units(units_text)
    if units is None:
        doc.add("ovf.units", "warning", "Disk %r capacityAllocationUnits %r not understood"
                % (_clip(disk_id), _clip(units_text or "")), el)
        return None
    return value * units


def _read_networks(doc: _Doc) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()  # a set beside the list: membership in the list was quadratic
    for section in doc.children(doc.root, "NetworkSection"):
        for el in doc.children(section, "Network"):
            name = doc.attr(el, "name")
            if name is None:
                continue
            if name in seen:
                doc.add("ovf.id.unique", "error", "Network %r is declared twice" % _clip(name),
                        el)
            else:
                doc.count("Networks", el)
                seen.add(name)
                names.append(name)
    return names


def _read_deployment_options(doc: _Doc) -> tuple[list[DeploymentOption], str | None]:
    options: list[DeploymentOption] = []
    for section in doc.children(doc.root, "DeploymentOptionSection"):
        for el in doc.children(section, "Configuration"):
            doc.count("deployment Configurations", el)
            options.append(DeploymentOption(id=doc.attr(el, "id") or "",
                                            label=doc.text(el, "Label"),
                                            default=_bool(doc.attr(el, "default")) is True))
    # DSP0243 9.8: without an explicit default, the first Configuration is the default.
    default = next((o.id for o in options if o.default), options[0].id if options else None)
    return options, default


# ---------------------------------------------------------------------------------------------
# VirtualSystem and its VirtualHardwareSection


class _Item:
    """One RASD Item, its children keyed by lower-case local name, any namespace."""

    def __init__(self, el: etree._Element, doc: _Doc) -> None:
        self.el = el
        self.fields: dict[str, str] = {}
        self.children: list[etree._Element] = []
        for child in el:
            if not isinstance(child.tag, str):
                continue
            self.children.append(child)
            key = etree.QName(child).localname.lower()  # InstanceId (0.9) == InstanceID
            if key not in self.fields:
                self.fields[key] = (child.text or "").strip()
        configuration = doc.attr(el, "configuration")
        self.configurations = frozenset(configuration.split()) if configuration else None
        self.instance_id = self.fields.get("instanceid") or None
        self.resource_type = doc.integer(self.fields.get("resourcetype"), "ResourceType", el)
        if doc.kind(el) == "EthernetPortItem" and self.resource_type is None:
            self.resource_type = _RT_ETHERNET

    def get(self, name: str) -> str | None:
        return self.fields.get(name.lower()) or None


def _check_items(doc: _Doc, items: list[_Item], disk_ids: Container[str],
                 file_ids: Container[str], networks: Container[str]) -> None:
    # The same InstanceID under different ovf:configuration values is how DSP0243 overrides
    # an Item per deployment option (csr1000v); only a clash for one configuration (or two
    # unconditional Items) is a duplicate.  The first Item per (InstanceID, configuration)
    # is kept in a dict, so many Items sharing one InstanceID stay linear.
    ids: set[str] = set()
    unconditional: dict[str, _Item] = {}
    per_configuration: dict[tuple[str, str], tuple[int, _Item]] = {}
    for position, item in enumerate(items):
        if item.instance_id is None:
            doc.add("ovf.item.instanceid", "warning", "Item without InstanceID", item.el)
            continue
        iid = item.instance_id
        ids.add(iid)
        first: _Item | None = None
        if item.configurations is None:
            first = unconditional.setdefault(iid, item)
        else:
            earliest: tuple[int, _Item] | None = None
            for configuration in item.configurations:
                seen = per_configuration.setdefault((iid, configuration), (position, item))
                if seen[1] is not item and (earliest is None or seen[0] < earliest[0]):
                    earliest = seen
            first = earliest[1] if earliest is not None else item
        if first is not item:
            doc.add("ovf.instanceid.unique", "error", "InstanceID %r is used by two Items"
                    " (first on line %s)" % (_clip(iid), first.el.sourceline), item.el)
    for item in items:
        parent = item.get("Parent")
        if parent is not None and parent not in ids:
            doc.add("ovf.ref.parent", "error", "Item %r: Parent %r names no InstanceID in this "
                    "VirtualHardwareSection" % (_clip(item.instance_id or ""), _clip(parent)),
                    item.el)
        for child in item.children:
            if etree.QName(child).localname != "HostResource":
                continue
            resource = _host_resource(child.text)
            if resource is None:
                continue
            kind, ref = resource
            if ref not in (disk_ids if kind == "disk" else file_ids):
                doc.add("ovf.ref.disk", "error", "Item %r: HostResource %r names no %s"
                        % (_clip(item.instance_id or ""), _clip((child.text or "").strip()),
                           "Disk in DiskSection" if kind == "disk" else "File in References"),
                        item.el)
        connection = item.get("Connection")
        if item.resource_type == _RT_ETHERNET and connection and connection not in networks:
            doc.add("ovf.ref.network", "warning", "Item %r: Connection %r names no Network in "
                    "NetworkSection" % (_clip(item.instance_id or ""), _clip(connection)), item.el)


def _active_items(items: list[_Item], configuration: str | None) -> list[_Item]:
    """The Items of the default deployment configuration, in document order: an Item with
    ovf:configuration replaces the unconditional Item of the same InstanceID."""
    chosen: dict[object, _Item] = {}
    for item in items:
        key: object = item.instance_id if item.instance_id is not None else id(item)
        if item.configurations is None:
            chosen.setdefault(key, item)
        elif configuration is not None and configuration in item.configurations:
            chosen[key] = item
    keep = {id(i) for i in chosen.values()}
    return [i for i in items if id(i) in keep]


def _controller_name(item: _Item) -> str | None:
    sub = item.get("ResourceSubType")
    rt = item.resource_type
    if rt == _RT_IDE:
        return "ide"
    if rt == _RT_SCSI:
        return ("scsi " + sub) if sub else "scsi"
    if rt in (_RT_SATA, _RT_SAS, _RT_NVME):
        return {_RT_SATA: "sata", _RT_SAS: "sas", _RT_NVME: "nvme"}[rt]
    if rt == _RT_OTHER_STORAGE:
        low = (sub or "").lower()
        if "sata" in low or "ahci" in low:
            return "sata"
        if "nvme" in low:
            return "nvme"
        return ("other " + sub) if sub else "other"
    return None


def _vmw_configs(doc: _Doc, parent: etree._Element) -> dict[str, str]:
    values: dict[str, str] = {}
    for el in parent:
        if isinstance(el.tag, str) and el.tag in ("{%s}Config" % NS_VMW, "{%s}ExtraConfig" % NS_VMW):
            key = el.get("{%s}key" % NS_VMW)
            value = el.get("{%s}value" % NS_VMW)
            if key is not None and value is not None:
                values.setdefault(key, value)
    return values


def _firmware(doc: _Doc, vs: etree._Element, configs: dict[str, str]) -> tuple[str | None, bool | None]:
    firmware: str | None = None
    raw = configs.get("firmware")
    if raw is not None:
        firmware = "efi" if "efi" in raw.lower() else ("bios" if "bios" in raw.lower() else None)
    secure = _bool(configs.get("bootOptions.efiSecureBootEnabled")
                   or configs.get("uefi.secureBoot.enabled"))
    if firmware is None:
        # VirtualBox: vbox:Machine/Hardware/Firmware@type ("BIOS", "EFI", "EFI64"...); the
        # element is only written when it differs from the BIOS default.
        for machine in vs:
            if isinstance(machine.tag, str) and machine.tag == "{%s}Machine" % NS_VBOX:
                firmware = "bios"
                for fw in machine.iter("{*}Firmware"):
                    kind = (fw.get("type") or "").lower()
                    firmware = "efi" if "efi" in kind else "bios"
                    break
                break
    if firmware is None:
        # OVF 2.x BootDeviceSection: BootConfig settings name the boot method in text only.
        for section in doc.children(vs, "BootDeviceSection"):
            words = " ".join(t.lower() for t in section.itertext())
            if re.search(r"\bu?efi\b", words):
                firmware = "efi"
            elif re.search(r"\bbios\b", words):
                firmware = "bios"
    return firmware, secure


def _read_product(doc: _Doc, vs: etree._Element) -> ProductInfo | None:
    sections = list(doc.children(vs, "ProductSection"))
    if not sections:
        return None
    fields: dict[str, str | None] = {}
    properties: list[PropertyInfo] = []
    for section in sections:
        for name in ("Product", "Vendor", "Version", "FullVersion", "ProductUrl", "VendorUrl"):
            if fields.get(name) is None:
                fields[name] = doc.text(section, name)
        klass = doc.attr(section, "class")
        instance = doc.attr(section, "instance")
        # Properties can also sit inside Category groupings in some exports; DSP0243 puts
        # them directly in the section, so look at both levels.
        props = list(doc.children(section, "Property"))
        for category in doc.children(section, "Category"):
            props.extend(doc.children(category, "Property"))
        for prop in props:
            doc.count("Properties", prop)
            key = doc.attr(prop, "key") or ""
            full = ".".join(x for x in (klass, key, instance) if x)
            properties.append(PropertyInfo(
                key=full, type=doc.attr(prop, "type"), default=doc.attr(prop, "value"),
                user_configurable=_bool(doc.attr(prop, "userConfigurable")) is True,
                label=doc.text(prop, "Label")))
    return ProductInfo(product=fields["Product"], vendor=fields["Vendor"],
                       version=fields["Version"], full_version=fields["FullVersion"],
                       product_url=fields["ProductUrl"], vendor_url=fields["VendorUrl"],
                       properties=tuple(properties))


def _memory_mib(doc: _Doc, item: _Item) -> int | None:
    quantity = doc.integer(item.get("VirtualQuantity"), "memory VirtualQuantity", item.el)
    if quantity is None:
        return None
    units_text = item.get("AllocationUnits")
    if units_text is None:
        # virt-v2v and Proxmox ignore the units and take MiB; do the same, but say so.
        doc.add("ovf.units", "warning", "memory Item has no AllocationUnits; MiB assumed",
                item.el)
        return quantity
    units = parse_units(units_text)
    if units is None:
        doc.add("ovf.units", "warning", "memory AllocationUnits %r not understood"
                % _clip(units_text),
                item.el)
        return None
    return quantity * units // (1 << 20)


def _read_system(doc: _Doc, vs: etree._Element, env_disks: dict[str, DiskInfo],
                 file_ids: set[str], networks: set[str], configuration: str | None) -> VirtualSystemInfo:
    doc.count("VirtualSystems", vs)
    vs_id = doc.attr(vs, "id")
    local_disks = {d.disk_id: d for d in _read_disks(doc, vs, file_ids)}  # lax: 2.x allows it
    # A view, not a merged copy: copying every envelope Disk per VirtualSystem was quadratic.
    disks_by_id: Mapping[str, DiskInfo] = ChainMap(local_disks, env_disks)

    os_id = os_type = os_description = None
    os_section = doc.child(vs, "OperatingSystemSection")
    if os_section is not None:
        os_id = doc.integer(doc.attr(os_section, "id"), "OperatingSystemSection ovf:id", os_section)
        os_type = os_section.get("{%s}osType" % NS_VMW)
        os_description = doc.text(os_section, "Description")

    sections = list(doc.children(vs, "VirtualHardwareSection"))
    hw_version = identifier = None
    cpus = cores = memory = None
    disks: list[DiskInfo] = []
    nics: list[NicInfo] = []
    configs: dict[str, str] = {}
    cdrom = False
    transport = sata_subtype = None
    for number, vhs in enumerate(sections):
        items = []
        for el in vhs:
            if doc.kind(el) in _ITEM_KINDS:
                doc.count("Items", el)
                items.append(_Item(el, doc))
        _check_items(doc, items, disks_by_id, file_ids, networks)
        if number:  # further sections describe other virtualization types; check only
            continue
        configs = _vmw_configs(doc, vhs)
        transport = doc.attr(vhs, "transport")
        system = doc.child(vhs, "System")
        if system is not None:
            fields = _Item(system, doc)
            hw_version = fields.get("VirtualSystemType")
            identifier = fields.get("VirtualSystemIdentifier")
        active = _active_items(items, configuration)
        by_instance = {i.instance_id: i for i in active if i.instance_id is not None}
        for item in active:
            rt = item.resource_type
            if rt == _RT_CPU and cpus is None:
                cpus = doc.integer(item.get("VirtualQuantity"), "CPU VirtualQuantity", item.el)
                cores = doc.integer(item.get("CoresPerSocket"), "CoresPerSocket", item.el)
            elif rt == _RT_MEMORY and memory is None:
                memory = _memory_mib(doc, item)
            elif rt in (_RT_CDROM, _RT_DVD):
                cdrom = True
            elif rt == _RT_ETHERNET:
                nics.append(NicInfo(network=item.get("Connection"),
                                    adapter_type=item.get("ResourceSubType"),
                                    connected=_bool(item.get("AutomaticAllocation"))))
            else:
                # Disk drives are ResourceType 17, but XenOVF writes 19 (storage extent) and
                # CIM allows 31 (logical disk): any Item whose HostResource names a Disk is one.
                disk = _attached_disk(item, disks_by_id, by_instance)
                if disk is not None:
                    disks.append(disk)
                elif _controller_name(item) == "sata" and sata_subtype is None:
                    sata_subtype = item.get("ResourceSubType")

    firmware, secure_boot = _firmware(doc, vs, configs)
    annotation = None
    for section in doc.children(vs, "AnnotationSection"):
        annotation = doc.text(section, "Annotation")
        break
    return VirtualSystemInfo(
        id=vs_id, name=doc.text(vs, "Name") or identifier or vs_id,
        os_id=os_id, os_type=os_type, os_description=os_description,
        cpus=cpus, cores_per_socket=cores, memory_mib=memory,
        firmware=firmware, secure_boot=secure_boot, hw_version=hw_version,
        disks=tuple(disks), nics=tuple(nics), product=_read_product(doc, vs),
        eula=doc.child(vs, "EulaSection") is not None, annotation=annotation, cdrom=cdrom,
        transport=transport, sata_subtype=sata_subtype)


def _attached_disk(item: _Item, disks_by_id: Mapping[str, DiskInfo],
                   by_instance: dict[str, _Item]) -> DiskInfo | None:
    for child in item.children:
        if etree.QName(child).localname != "HostResource":
            continue
        resource = _host_resource(child.text)
        if resource is None or resource[0] != "disk" or resource[1] not in disks_by_id:
            continue
        parent = by_instance.get(item.get("Parent") or "")
        controller = _controller_name(parent) if parent is not None else None
        unit = item.get("AddressOnParent")
        bus = None if parent is None else (parent.get("Address") or parent.get("BusNumber"))
        address = unit if bus is None or unit is None else "%s:%s" % (bus, unit)
        return dataclasses.replace(disks_by_id[resource[1]], controller=controller,
                                   address=address)
    return None


def _systems(doc: _Doc, entity: etree._Element) -> Iterator[etree._Element]:
    """Every VirtualSystem in a content entity, collections flattened, document order."""
    kind = doc.kind(entity)
    if kind == "VirtualSystem":
        yield entity
    elif kind == "VirtualSystemCollection":
        for child in entity:
            if doc.kind(child) in ("VirtualSystem", "VirtualSystemCollection"):
                yield from _systems(doc, child)


def _referenced_files(doc: _Doc) -> set[str]:
    """File ids named anywhere: any ovf:fileRef attribute (Disk, Strings, Icon...) and any
    HostResource ovf:/file/X."""
    names: set[str] = set()
    for el in doc.root.iter():
        if not isinstance(el.tag, str):
            continue
        for key, value in el.attrib.items():
            if key == "fileRef" or key.endswith("}fileRef"):
                names.add(value.strip())
        if el.tag.endswith("}HostResource"):
            resource = _host_resource(el.text)
            if resource is not None and resource[0] == "file":
                names.add(resource[1])
    return names


# ---------------------------------------------------------------------------------------------
# Entry point


def parse_descriptor(data: bytes, *, path: str, strict: bool = False,
                     schema_dir: str | os.PathLike[str] | None = None,
                     max_bytes: int = MAX_DESCRIPTOR_BYTES) -> tuple[Descriptor, list[Finding]]:
    """Read an OVF descriptor.

    Returns the summary and the findings (errors that did not stop reading, warnings, infos).
    Raises :class:`OvfFormatError` (``ovf.xml.size``, ``ovf.xml.dtd``, ``ovf.xml.syntax``,
    ``ovf.envelope``) when the bytes are not a readable OVF envelope at all.  ``strict`` adds
    the structural rules (``ovf.struct.*``) and the DMTF XSDs when installed (``ovf.xsd``);
    it raises :class:`~ovfstream.errors.UnsupportedError` only when a schema folder named by
    ``schema_dir`` or ``$OVFSTREAM_SCHEMA_DIR`` holds no schema.
    """
    descriptor, findings, _root = parse_descriptor_tree(data, path=path, strict=strict,
                                                        schema_dir=schema_dir, max_bytes=max_bytes)
    return descriptor, findings


def parse_descriptor_tree(data: bytes, *, path: str, strict: bool = False,
                          schema_dir: str | os.PathLike[str] | None = None,
                          max_bytes: int = MAX_DESCRIPTOR_BYTES
                          ) -> tuple[Descriptor, list[Finding], etree._Element]:
    """:func:`parse_descriptor` plus the parsed Envelope element (what repack carries the
    sections it does not model from)."""
    data = bytes(data)
    if len(data) > max_bytes:
        raise OvfFormatError("ovf.xml.size", "descriptor is %d bytes, more than the limit of %d"
                             % (len(data), max_bytes), path=path)
    findings: list[Finding] = []
    root = _parse_xml(data, path, findings, strict)

    qname = etree.QName(root)
    if qname.localname != "Envelope":
        raise OvfFormatError("ovf.envelope", "root element is <%s>, not an OVF Envelope"
                             % qname.localname[:80], path=path)
    namespace = qname.namespace or ""
    doc = _Doc(root, path, findings)
    version = _VERSION_OF_NS.get(namespace)
    if version is None:
        doc.add("ovf.envelope.namespace", "warning", "Envelope namespace %r is not an OVF "
                "namespace; read as OVF 1.x" % namespace[:200], root)
        version = "1.x"

    files = _read_files(doc)
    file_ids = {f.id for f in files}
    disks = _read_disks(doc, root, file_ids)
    disk_index: dict[str, DiskInfo] = {}
    for disk in disks:
        if disk.disk_id and disk.disk_id in disk_index:
            doc.add("ovf.id.unique", "error", "Disk id %r is used twice" % _clip(disk.disk_id))
        disk_index.setdefault(disk.disk_id, disk)
    networks = _read_networks(doc)
    options, default_configuration = _read_deployment_options(doc)

    content = next((el for el in root if doc.kind(el) in ("VirtualSystem",
                                                          "VirtualSystemCollection")), None)
    systems: list[VirtualSystemInfo] = []
    if content is None:
        doc.add("ovf.content", "warning", "the Envelope holds no VirtualSystem or "
                "VirtualSystemCollection", root)
    else:
        network_names = set(networks)  # once, not per VirtualSystem
        for vs in _systems(doc, content):
            systems.append(_read_system(doc, vs, disk_index, file_ids, network_names,
                                        default_configuration))

    referenced = _referenced_files(doc)
    for f in files:
        if f.id and f.id not in referenced:
            doc.add("ovf.file.unused", "warning", "File %r (%s) is referenced by nothing"
                    % (_clip(f.id), _clip(f.href)))

    if strict:
        _validate(doc, version, schema_dir)

    descriptor = Descriptor(
        ovf_version=version, namespace=namespace, files=tuple(files), disks=tuple(disks),
        networks=tuple(networks), systems=tuple(systems),
        root=(doc.kind(content) or "") if content is not None else "",
        root_id=doc.attr(content, "id") if content is not None else None,
        deployment_options=tuple(options), default_configuration=default_configuration)
    return descriptor, findings, root


def _validate(doc: _Doc, version: str, schema_dir: str | os.PathLike[str] | None) -> None:
    if version == "0.9" or doc.ns not in (schema.NS_OVF1, schema.NS_OVF2):
        doc.add("ovf.xsd", "info", "no DMTF schema exists for namespace %r; not validated"
                % doc.ns[:200])
        return
    # Our own structural rules always; the DMTF XSDs on top when they are installed.
    doc.findings.extend(validate.check_findings(doc.root, path=doc.path))
    _, versions = schema.versions_for(doc.ns, schema_dir)
    if not versions:
        return
    results = schema.validate(doc.root, versions=versions, schema_dir=schema_dir)
    for schema_version, errors in results.items():
        for line in errors[:_MAX_XSD_FINDINGS]:
            doc.findings.append(Finding("ovf.xsd", "error", location(doc.path), None,
                                        "XSD %s: %s" % (schema_version, line)))
        if len(errors) > _MAX_XSD_FINDINGS:
            doc.findings.append(Finding("ovf.xsd", "error", location(doc.path), None,
                                        "XSD %s: %d more errors not listed"
                                        % (schema_version, len(errors) - _MAX_XSD_FINDINGS)))
