"""Strict validation of OVF descriptors against the DMTF DSP8023 XSDs.

The schemas are not shipped with ovfstream (they are DMTF's); they are looked up in a folder
holding ``ovf-1.0.0/``, ``ovf-1.1.1/`` and ``ovf-2.0.1/`` as laid out in the project's
../shared/ovf-schemas: the ``schema_dir`` argument, else ``$OVFSTREAM_SCHEMA_DIR``, else the
``shared/ovf-schemas`` folder beside a source checkout.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from lxml import etree

from ..errors import UnsupportedError

__all__ = ["NS_OVF1", "NS_OVF2", "find_schema_dir", "schema_for", "validate", "ENTRY_POINTS"]

NS_OVF1 = "http://schemas.dmtf.org/ovf/envelope/1"
NS_OVF2 = "http://schemas.dmtf.org/ovf/envelope/2"

# version label -> entry point relative to the schema folder.  The 1.0.0 XenAdmin copy has
# location-less imports, so its locally written wrapper is the entry point.
ENTRY_POINTS = {
    "1.0.0": "ovf-1.0.0/local-wrapper.xsd",
    "1.1.1": "ovf-1.1.1/dsp8023_1.1.1.xsd",
    "2.0.1": "ovf-2.0.1/dsp8023_2.0.1.xsd",
}
_FOR_NAMESPACE = {NS_OVF1: ("1.0.0", "1.1.1"), NS_OVF2: ("2.0.1",)}

_cache: dict[tuple[str, str], etree.XMLSchema] = {}
_lock = threading.Lock()


def find_schema_dir(schema_dir: str | os.PathLike[str] | None = None) -> Path:
    candidates: list[Path] = []
    if schema_dir is not None:
        candidates.append(Path(schema_dir))
    elif os.environ.get("OVFSTREAM_SCHEMA_DIR"):
        candidates.append(Path(os.environ["OVFSTREAM_SCHEMA_DIR"]))
    else:
        here = Path(__file__).resolve()
        # src/ovfstream/ovf/schema.py -> <checkout>/../shared/ovf-schemas
        for parent in here.parents:
            candidates.append(parent.parent / "shared" / "ovf-schemas")
            candidates.append(parent / "shared" / "ovf-schemas")
    for cand in candidates:
        if (cand / ENTRY_POINTS["1.1.1"]).is_file():
            return cand
    raise UnsupportedError(
        "strict OVF validation needs the DMTF OVF schemas: pass schema_dir / --schema-dir or "
        "set OVFSTREAM_SCHEMA_DIR to a folder holding ovf-1.0.0/, ovf-1.1.1/ and ovf-2.0.1/ "
        "(looked in: %s)" % ", ".join(str(c) for c in candidates[:4]))


def schema_for(version: str, schema_dir: str | os.PathLike[str] | None = None) -> etree.XMLSchema:
    """The compiled XSD for an envelope schema version ("1.0.0", "1.1.1", "2.0.1"), cached."""
    base = find_schema_dir(schema_dir)
    key = (str(base), version)
    with _lock:
        schema = _cache.get(key)
        if schema is None:
            parser = etree.XMLParser(no_network=True, resolve_entities=False)
            schema = etree.XMLSchema(etree.parse(str(base / ENTRY_POINTS[version]), parser))
            _cache[key] = schema
    return schema


def validate(document: etree._ElementTree | etree._Element | bytes, *,
             versions: tuple[str, ...] | None = None,
             schema_dir: str | os.PathLike[str] | None = None) -> dict[str, list[str]]:
    """Validate against every schema matching the envelope namespace (or ``versions``).

    Returns {version: [error lines]}; an empty list means valid.  lxml schema objects are
    not thread-safe to share while validating, so validation holds the module lock.
    """
    if isinstance(document, bytes):
        parser = etree.XMLParser(no_network=True, resolve_entities=False, load_dtd=False)
        root = etree.fromstring(document, parser)
    elif isinstance(document, etree._ElementTree):
        root = document.getroot()
    else:
        root = document
    if versions is None:
        versions = _FOR_NAMESPACE.get(etree.QName(root).namespace or "", ())
        if not versions:
            return {"?": ["root element %s is not an OVF 1.x or 2.x Envelope" % root.tag]}
    results: dict[str, list[str]] = {}
    for version in versions:
        schema = schema_for(version, schema_dir)
        with _lock:
            ok = schema.validate(root)
            errors = [] if ok else ["line %d: %s" % (e.line, e.message) for e in schema.error_log]
        results[version] = errors
    return results
