"""Deflate engines behind one callable: buffer -> zlib-wrapped deflate bytes.

Grains must be zlib-wrapped (RFC 1950): qemu, VirtualBox and open-vmdk refuse raw deflate
(../shared/FORMATS.md 1.3).  ISA-L level 1 through the ``isal`` package is the default: about
7x zlib-6 per core and it releases the GIL, so worker threads scale.  Its levels 0-2 give the
same bytes on every x86-64 CPU with SSE4.2 (x86-64-v2: Intel since 2008, AMD since 2011);
a CPU without it takes ISA-L's baseline C path, whose hash differs, and so gets other bytes
(benches/cpu_repro.py); level 3 differs by CPU (DESIGN.md, determinism).

libdeflate through the ``deflate`` package spans the rest of the size/speed frontier: level 6
is smaller than zlib-6 at about 2.5x its speed, levels 10-12 are ~3 % smaller still at zlib-9
speed or below.  Each call releases the GIL.  Its bytes depend only on the bundled libdeflate
build, never on the CPU (its only runtime dispatch while compressing is the Adler-32).

Which bytes are the same on every x86 code path was measured, not assumed: benches/cpu_repro.py
compresses the same grains natively and under qemu-user's emulated CPUs (SSE2 only,
+PCLMULQDQ, +AVX, +AVX2/BMI2; AVX-512 natively) for every engine and level; ``REPRODUCIBLE``
below records what it found.  ``PRESETS`` maps the intent flags to engine and level.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import sys
import threading
import zlib
from dataclasses import dataclass
from typing import Any, Callable

from . import grains_py
from .errors import UsageError

__all__ = ["Engine", "CallableSpanEncoder", "get_engine", "resolve_engine", "ENGINES", "PRESETS",
           "REPRODUCIBLE", "CORE", "NATIVE", "PURE"]

# OVFSTREAM_PURE=1 runs the pure-Python twin (grains_py) even where the compiled core is
# built; CI runs the suite a second time with it, so the twin keeps giving the native bytes.
# (OVFSTREAM_PURE_PYTHON=1 is setup.py's: it leaves the extension out of the build.)
PURE = os.environ.get("OVFSTREAM_PURE", "") not in ("", "0")


def _load_core() -> tuple[Any, str | None]:
    """(the span codec module: ovfstream._grains or grains_py, why not the compiled one)."""
    if PURE:
        return grains_py, "OVFSTREAM_PURE=1 runs the pure-Python core"
    if sys.byteorder != "little":  # the native framing writes host-order words
        return grains_py, "big-endian host"
    try:
        from . import _grains
    except ImportError as exc:
        return grains_py, "the compiled core (ovfstream._grains) is not built: %s" % exc
    return _grains, None


CORE, _CORE_UNAVAILABLE = _load_core()
NATIVE = _CORE_UNAVAILABLE is None

try:
    from isal import isal_zlib as _isal_zlib
    import isal as _isal
except ImportError:  # pragma: no cover - isal is a hard dependency; the fallback is for odd platforms
    _isal_zlib = None
    _isal = None

try:
    import deflate as _deflate
except ImportError:  # pragma: no cover - deflate is a hard dependency
    _deflate = None

ENGINES = ("isal", "zlib", "libdeflate")
# ISA-L level 0 (static Huffman only) expands random grains to ~80 KiB, past what a
# grain may hold, so it is not offered; libdeflate level 0 stores, which is no use either.
_LEVELS = {"isal": range(1, 4), "zlib": range(1, 10), "libdeflate": range(1, 13)}
_DEFAULT_LEVEL = {"isal": 1, "zlib": 6, "libdeflate": 6}

# Levels whose bytes were the same natively (AVX-512) and under every emulated CPU model of
# benches/cpu_repro.py (qemu64, Nehalem, Westmere, SandyBridge, Haswell).  ISA-L levels 1-2
# only with SSE4.2 (qemu64, and Nehalem without it, gave other bytes: ISA-L's baseline path)
# and the native encoder's fixed stream addresses (see get_engine); level 3 gave three
# outputs (up to AVX, AVX2, AVX-512).
REPRODUCIBLE = {"isal": frozenset({1, 2}), "zlib": frozenset(range(1, 10)),
                "libdeflate": frozenset(range(1, 13))}

# --compression: intent -> (engine, level), chosen from the frontier that benches/frontier.py
# measured on an ext4 OS image (README "Engines"; sizes against qemu-img's zlib-6 VMDK, speeds
# per core): fast is the fastest (ISA-L 1: 1.09x, ~680 MB/s); balanced is smaller than qemu-img
# at ~2.6x its speed per core (libdeflate 6: 0.992x, 158 MB/s; level 5 is faster but larger
# than zlib-6 on source text: C headers 1.013x); small is the fastest level at most 0.975x
# (libdeflate 10: 0.971x, 19 MB/s; 11-12 save 0.2 % more at 1.6-2.2x the time).  All three
# are reproducible across CPUs (ISA-L 1: with SSE4.2).
PRESETS = {"fast": ("isal", 1), "balanced": ("libdeflate", 6), "small": ("libdeflate", 10)}


class CallableSpanEncoder:
    """The native span encoder's interface over a per-grain ``compress`` callable: the span
    codec (CORE) scans and frames, the callable compresses one grain at a time (the GIL
    taken back per grain), xxh3-64 fingerprints."""

    def __init__(self, compress: Callable[[memoryview], bytes]) -> None:
        import xxhash
        self._compress = compress
        self._fingerprint = xxhash.xxh3_64_intdigest

    def new_stream(self) -> None:
        return None  # the callable keeps its own per-thread state, if any

    def encode_span_into(self, out: Any, span: Any, first_lba: int, n_grains: int,
                         stream: None = None) -> tuple[int, bytes, bytes, int]:
        return CORE.encode_span_into(out, span, first_lba, n_grains, self._compress,  # type: ignore[no-any-return]
                                     self._fingerprint)


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
    # Why a level that is reproducible elsewhere is not on this CPU (ISA-L without SSE4.2).
    cpu_note: str | None = None

    @functools.cached_property
    def encoder(self) -> Any:
        """What the VMDK writer calls, whatever the path: new_stream() once per thread, then
        encode_span_into(out, span, first_lba, n_grains, stream) span after span."""
        if self.span_encoder is not None:
            return self.span_encoder
        return CallableSpanEncoder(self.compress)

    def describe(self) -> dict[str, object]:
        return {"engine": self.name, "level": self.level, "version": self.version,
                "reproducible_across_cpus": self.reproducible,
                "native_span_encoder": self.span_encoder is not None,
                "native_unavailable": self.native_unavailable,
                "cpu_note": self.cpu_note}


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
        cpu_note = _isal_cpu_note() if level in REPRODUCIBLE["isal"] else None
        return Engine("isal", level, "isal %s (ISA-L %s)" % (_isal.__version__, _isal_c_version()),
                      compress,
                      # levels 1-2: the same bytes on every x86-64 CPU with SSE4.2 and every
                      # run, with the stream states the native encoder places (level 3 varies
                      # by CPU)
                      level in REPRODUCIBLE["isal"] and encoder is not None and cpu_note is None,
                      encoder, why_not, cpu_note)
    if name == "libdeflate":
        if _deflate is None:
            raise UsageError("--engine libdeflate: the deflate package is not installed; "
                             "use --engine isal or zlib")
        # deflate.zlib_compress allocates a compressor per call (the GIL held: ~1 % of the
        # time, measured against a reused one) and releases the GIL while it compresses.
        return Engine("libdeflate", level, _libdeflate_version(),
                      functools.partial(_deflate.zlib_compress, compresslevel=level),
                      level in REPRODUCIBLE["libdeflate"])
    return Engine("zlib", level, "zlib %s" % zlib.ZLIB_RUNTIME_VERSION,
                  functools.partial(zlib.compress, level=level),
                  level in REPRODUCIBLE["zlib"])


def resolve_engine(engine: str | None = None, level: int | None = None,
                   compression: str | None = None) -> tuple[str, int | None]:
    """(engine, level) from the command line: ``compression`` is an intent preset (PRESETS)
    and excludes an explicit engine or level; without it, the engine defaults to isal and
    the level to the engine's default (None)."""
    if compression is None:
        return engine or "isal", level
    if compression not in PRESETS:
        raise UsageError("--compression %r: allowed presets are %s"
                         % (compression, ", ".join(PRESETS)))
    if engine is not None or level is not None:
        preset_engine, preset_level = PRESETS[compression]
        raise UsageError("--compression %s chooses the engine and level itself (%s level %d): "
                         "give either --compression or --engine/--level, not both"
                         % (compression, preset_engine, preset_level))
    return PRESETS[compression]


@functools.lru_cache(maxsize=None)
def _libdeflate_version() -> str:
    """The deflate package's version and its extension's digest: the wheel bundles its own
    libdeflate, whose version it does not expose, and the bytes follow that build."""
    from deflate import _deflate as ext
    try:
        with open(ext.__file__, "rb") as f:
            build = hashlib.sha256(f.read()).hexdigest()[:16]
    except OSError:  # pragma: no cover - an extension loaded from somewhere unreadable
        build = "unknown"
    return "deflate %s (libdeflate bundled, build %s)" % (_deflate.__version__, build)



@functools.lru_cache(maxsize=None)
def _isal_cpu_note(machine: str | None = None, cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """None when ISA-L levels 1-2 take the code path whose bytes every x86-64 CPU with SSE4.2
    shares; else why this machine's bytes may differ (said on stderr and in --json)."""
    machine = (machine or os.uname().machine).lower()  # platform.machine(), unimported
    if machine not in ("x86_64", "amd64"):
        return "ISA-L's output was compared across x86-64 CPUs only (this is %s)" % machine
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), None)
    except OSError:
        flags = None
    if flags is None:
        return "this CPU's SSE4.2 support is unknown (no flags in /proc/cpuinfo)"
    if "sse4_2" not in flags:
        return ("this CPU lacks SSE4.2: ISA-L takes its baseline code path, whose bytes differ "
                "from those of every CPU with SSE4.2")
    return None


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
    if not NATIVE:
        return None, _CORE_UNAVAILABLE
    _grains = CORE
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
    incompressible = hashlib.shake_128(b"ovfstream self-test %d" % level).digest(65536)
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
