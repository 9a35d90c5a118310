"""Disk image inputs: every format one module, all yielding the same 32 MiB spans.

``open_source`` detects the format by content (``detect``) unless ``input_format`` names it,
and opens the module that reads it.  A detected format no module reads (VDI, QED, LUKS,
gzip...) opens as raw, whose ``check_format`` then refuses it -- after pack and convert have
checked their outputs, so an output aliasing an input is reported as that first.
"""

from __future__ import annotations

import importlib
import os

from ..errors import UsageError
from .base import DiskSource, SpanPlan
from .detect import ALIASES, detect_format, require_input_format
from .raw import RawSource

__all__ = ["open_source", "DiskSource", "SpanPlan", "READERS"]

# format name (qemu-img's, as detect reports it) -> "module:class" of its reader; a detected
# format without an entry (VDI, QED, LUKS, gzip...) is refused by the raw source.
READERS: dict[str, str] = {
    "raw": "raw:RawSource",
    "qcow2": "qcow2:Qcow2Source",
    "vmdk": "vmdk:VmdkSource",
    "vpc": "vhd:VhdSource",
    "vhdx": "vhdx:VhdxSource",
    "zstd": "zst:ZstdSource",
    "stdin": "stdin:StdinSource",  # the path "-"
}


def reader_class(name: str) -> type[DiskSource] | None:
    """The class that reads format ``name``, or None when no module reads it."""
    where = READERS.get(name)
    if where is None:
        return None
    module, _, cls = where.partition(":")
    # Imported on first use: a raw-only run never loads the other readers.
    return getattr(importlib.import_module("." + module, __name__), cls)  # type: ignore[no-any-return]


def open_source(path: str | os.PathLike[str], *, input_format: str = "auto",
                size: int | None = None, depth: int = 0) -> DiskSource:
    """The disk image at ``path`` as a source of spans.

    ``input_format``: ``auto`` (by content), ``raw`` (the bytes as they are, whatever they
    look like) or a format name (refused when the content is another format).  ``size`` is
    the virtual size of a source that cannot know it (stdin, a zstd frame without its content
    size).  ``depth`` counts backing-file links followed so far (qcow2, VMDK, VHD chains).
    """
    require_input_format(input_format)
    input_format = ALIASES.get(input_format, input_format)
    name = os.fspath(path)
    if name == "-":
        stdin = reader_class("stdin")
        return stdin(name, size=size, input_format=input_format)  # type: ignore[call-arg,misc]
    if input_format == "raw":
        return RawSource(name, input_format="raw")
    probe = RawSource(name, input_format=input_format)
    try:
        found = detect_format(probe.files[0].fd, probe.size_bytes)
    except BaseException:
        probe.close()
        raise
    detected = found.name if found is not None else "raw"
    if input_format not in ("auto", detected):
        probe.close()
        raise UsageError("%s: --input-format %s, but the content is %s"
                         % (name, input_format, found.detail if found else "raw (no known "
                            "image signature)"))
    cls = reader_class(detected) if detected != "raw" else None
    if cls is None:
        return probe  # raw, or a container whose check_format refuses it
    probe.close()
    return cls(name, size=size, depth=depth)  # type: ignore[call-arg]
