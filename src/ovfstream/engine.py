"""Deflate engines behind one callable: buffer -> zlib-wrapped deflate bytes.

Grains must be zlib-wrapped (RFC 1950): qemu, VirtualBox and open-vmdk refuse raw deflate
(../shared/FORMATS.md 1.3).  ISA-L level 1 through the ``isal`` package is the default: about
7x zlib-6 per core and it releases the GIL, so worker threads scale.  Its levels 0-2 give the
same bytes on every x86 code path; level 3 does not (DESIGN.md, determinism).
"""

from __future__ import annotations

import ctypes
import functools
import os
import random
import sys
import threading
import zlib
from dataclasses import dataclass
from typing import Any, Callable

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
    # A native span encoder that runs whole spans without the GIL, or None (callable path).
    span_encoder: Any = None
    # Why an engine that has a native span encoder runs without it (same bytes, slower).
    native_unavailable: str | None = None

    def describe(self) -> dict[str, object]:
        return {"engine": self.name, "level": self.level, "version": self.version,
                "reproducible_across_cpus": self.reproducible,
                "native_span_encoder": self.span_encoder is not None,
                "native_unavailable": self.native_unavailable}


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
        encoder, why_not = _native_isal_encoder(level)
        if encoder is not None:
            compress: Callable[[memoryview], bytes] = _per_thread_compress(encoder)
        else:
            # python-isal keeps the stream state on the C stack, so ISA-L's use of its address
            # (see _grains.IsalStream) reaches the bytes: not reproducible.
            compress = functools.partial(_isal_zlib.compress, level=level)
        return Engine("isal", level, "isal %s (ISA-L %s)" % (_isal.__version__, _isal_c_version()),
                      compress,
                      # levels 1-2: the same bytes on every x86 code path and every run, with
                      # the stream states the native encoder places (level 3 varies by CPU)
                      level <= 2 and encoder is not None,
                      encoder, why_not)
    return Engine("zlib", level, "zlib %s" % zlib.ZLIB_RUNTIME_VERSION,
                  functools.partial(zlib.compress, level=level), True)



def _per_thread_compress(encoder: Any) -> Callable[[memoryview], bytes]:
    """encoder.compress_grain with one stream state per calling thread."""
    local = threading.local()

    def compress(grain: memoryview) -> bytes:
        stream = getattr(local, "stream", None)
        if stream is None:
            stream = local.stream = encoder.new_stream()
        return encoder.compress_grain(grain, stream)
    return compress


def _isal_c_version() -> str:
    try:
        from isal import _isal
        return str(_isal.ISAL_VERSION)
    except ImportError:  # pragma: no cover - older isal packages
        return "?"


def _c_address(module_file: str, symbol: str) -> int:
    """The address of a C function exported by an already imported extension module."""
    lib = ctypes.CDLL(module_file)  # dlopen of a loaded library returns the same handle
    return ctypes.cast(getattr(lib, symbol), ctypes.c_void_p).value or 0


@functools.lru_cache(maxsize=None)
def _native_isal_encoder(level: int) -> tuple[Any, str | None]:
    """(the GIL-free span encoder for ISA-L ``level``, None), or (None, why it cannot be
    used): the callable path then gives the same bytes, slower, and the CLI says why.

    It calls the isal and xxhash packages' own C entry points.  Before it is trusted, on
    sample grains (random, text, sparse, periodic): every grain inflates back to itself;
    the random one (no matches, so the stream's address cannot matter) gives exactly
    isal_zlib.compress's bytes; two stream states at different addresses give the same
    bytes; fingerprints equal xxhash's.  OVFSTREAM_NATIVE_ENGINE=0 turns it off.
    """
    if os.environ.get("OVFSTREAM_NATIVE_ENGINE", "1") == "0":
        return None, "turned off by OVFSTREAM_NATIVE_ENGINE=0"
    if sys.byteorder != "little":
        # The framing writes the marker and grain-table words in host order.
        return None, "big-endian host"
    try:
        from . import _grains
    except ImportError as exc:
        return None, "the compiled core (ovfstream._grains) is not built: %s" % exc
    try:
        import xxhash
        from xxhash import _xxhash
        encoder = _grains.IsalSpanEncoder(
            _c_address(_isal_zlib.__file__, "isal_deflate_init"),
            _c_address(_isal_zlib.__file__, "isal_deflate"),
            _c_address(_isal_zlib.__file__, "isal_adler32"),
            _c_address(_xxhash.__file__, "XXH3_64bits"), level)
    except (ImportError, AttributeError, OSError, ValueError) as exc:
        return None, ("the isal/xxhash packages do not export the C entry points it calls "
                      "(%s: %s)" % (type(exc).__name__, exc))
    rng = random.Random(level)
    incompressible = rng.randbytes(65536)
    samples = [incompressible, (b"ovfstream grain %d\n" * 4000)[:65536],
               bytes(65535) + b"\x01", bytes(range(256)) * 256]
    try:
        first, second = encoder.new_stream(), encoder.new_stream()
        for grain in samples:
            out = encoder.compress_grain(grain, first)
            if (zlib.decompress(out) != grain or encoder.compress_grain(grain, second) != out
                    or encoder.fingerprint(grain) != xxhash.xxh3_64_intdigest(grain)):
                return None, ("its start-up self-test failed (isal %s, ISA-L %s)"
                              % (_isal.__version__, _isal_c_version()))
        if encoder.compress_grain(incompressible, first) != _isal_zlib.compress(
                incompressible, level=level):
            return None, ("its start-up self-test gave bytes other than isal_zlib.compress "
                          "(isal %s, ISA-L %s)" % (_isal.__version__, _isal_c_version()))
    except (ValueError, MemoryError, zlib.error) as exc:
        return None, "its start-up self-test failed (%s)" % exc
    return encoder, None
