"""The DMTF DSP8023 XSDs as an extra layer of strict validation, when they are installed.

``verify --strict`` always runs ovfstream's own structural rules (:mod:`.validate`); these
schemas are DMTF's and not shipped, so they are looked up, in this order, in a folder holding
``ovf-1.0.0/``, ``ovf-1.1.1/`` and/or ``ovf-2.0.1/`` (the layout of the project's
../shared/ovf-schemas):

1. the ``schema_dir`` argument (``--schema-dir``);
2. ``$OVFSTREAM_SCHEMA_DIR``;
3. the per-user data folder ``$XDG_DATA_HOME/ovfstream/ovf-schemas`` (default
   ``~/.local/share/ovfstream/ovf-schemas``);
4. ``shared/ovf-schemas`` beside a source checkout.

A folder named explicitly (1, 2) must hold the schemas, else :class:`UnsupportedError`; the
others are used when present and silently skipped when not.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from lxml import etree

from ..errors import UnsupportedError
from .namespaces import NS_OVF1, NS_OVF2

if TYPE_CHECKING:  # pathlib loads when a schema is looked for, not with every reader
    from pathlib import Path

__all__ = ["NS_OVF1", "NS_OVF2", "find_schema_dir", "available_versions", "schema_for",
           "validate", "versions_for", "ENTRY_POINTS", "user_schema_dir"]


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


def user_schema_dir() -> Path:
    """The per-user folder for the schemas: ``$XDG_DATA_HOME/ovfstream/ovf-schemas``."""
    from pathlib import Path
    data_home = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"),
                                                                ".local", "share")
    return Path(data_home) / "ovfstream" / "ovf-schemas"


def available_versions(folder: str | os.PathLike[str]) -> tuple[str, ...]:
    """The schema versions whose entry point the folder holds."""
    from pathlib import Path
    return tuple(v for v, entry in ENTRY_POINTS.items() if (Path(folder) / entry).is_file())


def _checkout_candidates() -> list[Path]:
    from pathlib import Path
    here = Path(__file__).resolve()
    # src/ovfstream/ovf/schema.py -> <checkout>/../shared/ovf-schemas (or <dir>/shared/...)
    out: list[Path] = []
    for parent in here.parents:
        out.append(parent.parent / "shared" / "ovf-schemas")
        out.append(parent / "shared" / "ovf-schemas")
    return out


def find_schema_dir(schema_dir: str | os.PathLike[str] | None = None, *,
                    required: bool = True) -> Path | None:
    """The schema folder to use (see the module text for the order).

    An explicit ``schema_dir`` or ``$OVFSTREAM_SCHEMA_DIR`` without any schema raises
    :class:`UnsupportedError`.  Otherwise, when nothing is found: raise if ``required``, else
    return None.
    """
    explicit = schema_dir if schema_dir is not None else os.environ.get("OVFSTREAM_SCHEMA_DIR")
    if explicit:
        from pathlib import Path
        folder = Path(explicit)
        if available_versions(folder):
            return folder
        source = "--schema-dir" if schema_dir is not None else "OVFSTREAM_SCHEMA_DIR"
        raise UnsupportedError(
            "%s %s holds no DMTF OVF schema (expected %s)"
            % (source, folder, ", ".join(ENTRY_POINTS.values())))
    candidates = [user_schema_dir(), *_checkout_candidates()]
    for folder in candidates:
        if available_versions(folder):
            return folder
    if not required:
        return None
    raise UnsupportedError(
        "XSD validation needs the DMTF OVF schemas: pass schema_dir / --schema-dir, set "
        "OVFSTREAM_SCHEMA_DIR, or install them in %s (a folder holding ovf-1.0.0/, "
        "ovf-1.1.1/, ovf-2.0.1/)" % user_schema_dir())


def schema_for(version: str, schema_dir: str | os.PathLike[str] | None = None) -> etree.XMLSchema:
    """The compiled XSD for an envelope schema version ("1.0.0", "1.1.1", "2.0.1"), cached."""
    base = find_schema_dir(schema_dir)
    assert base is not None
    if not (base / ENTRY_POINTS[version]).is_file():
        raise UnsupportedError("%s has no OVF %s schema (%s)"
                               % (base, version, ENTRY_POINTS[version]))
    key = (str(base), version)
    with _lock:
        schema = _cache.get(key)
        if schema is None:
            parser = etree.XMLParser(no_network=True, resolve_entities=False)
            schema = etree.XMLSchema(etree.parse(str(base / ENTRY_POINTS[version]), parser))
            _cache[key] = schema
    return schema


def versions_for(namespace: str, schema_dir: str | os.PathLike[str] | None = None,
                 ) -> tuple[Path | None, tuple[str, ...]]:
    """(folder, versions) of the XSDs that apply to an envelope namespace and are installed;
    (None, ()) when none is (or the namespace has no DMTF schema)."""
    wanted = _FOR_NAMESPACE.get(namespace, ())
    if not wanted:
        return None, ()
    folder = find_schema_dir(schema_dir, required=False)
    if folder is None:
        return None, ()
    have = available_versions(folder)
    return folder, tuple(v for v in wanted if v in have)


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
