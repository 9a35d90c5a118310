"""Deflate engines behind one callable: buffer -> zlib-wrapped deflate bytes.

Grains must be zlib-wrapped (RFC 1950): qemu, VirtualBox and open-vmdk refuse raw deflate
(../shared/FORMATS.md 1.3).  ISA-L level 1 through the ``isal`` package is the default: about
7x zlib-6 per core and it releases the GIL, so worker threads scale.  Its levels 0-2 give the
same bytes on every x86 code path; level 3 does not (DESIGN.md, determinism).
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from typing import Callable

from .errors import UsageError

__all__ = ["Engine", "get_engine", "ENGINES"]

try:
    from isal import isal_zlib as _isal_zlib
    import isal as _isal
except ImportError:  # pragma: no cover - isal is a hard dependency; the fallback is for odd platforms
    _isal_zlib = None
    _isal = None

ENGINES = ("isal", "zlib")
# ISA-L level 0 (static Huffman only) expands random grains to ~80 KiB, past what a
# grain may hold, so it is not offered.
_LEVELS = {"isal": range(1, 4), "zlib": range(1, 10)}
_DEFAULT_LEVEL = {"isal": 1, "zlib": 6}


@dataclass(frozen=True)
class Engine:
    """A named deflate engine at one level; ``compress`` is what the grain encoder calls."""

    name: str
    level: int
    version: str
    compress: Callable[[memoryview], bytes]
    reproducible: bool  # same bytes on every CPU code path of this engine build

    def describe(self) -> dict[str, object]:
        return {"engine": self.name, "level": self.level, "version": self.version,
                "reproducible_across_cpus": self.reproducible}


def get_engine(name: str = "isal", level: int | None = None) -> Engine:
    """The engine ``name`` at ``level`` (None: its default), or UsageError naming what is allowed."""
    if name not in ENGINES:
        raise UsageError("--engine %r: allowed engines are %s" % (name, ", ".join(ENGINES)))
    if level is None:
        level = _DEFAULT_LEVEL[name]
    allowed = _LEVELS[name]
    if level not in allowed:
        raise UsageError("--level %r for engine %s: allowed %d..%d"
                         % (level, name, allowed.start, allowed.stop - 1))
    if name == "isal":
        if _isal_zlib is None:
            raise UsageError("--engine isal: the isal package is not installed; use --engine zlib")
        return Engine("isal", level, "isal %s (ISA-L)" % _isal.__version__,
                      functools.partial(_isal_zlib.compress, level=level), level <= 2)  # levels 1-2: same bytes on every x86 code path
    return Engine("zlib", level, "zlib %s" % zlib.ZLIB_RUNTIME_VERSION,
                  functools.partial(zlib.compress, level=level), True)

