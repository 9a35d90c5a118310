"""Raw deflate inflated into the caller's buffer, with where the stream ended.

libdeflate's ``libdeflate_deflate_decompress_ex``, called in the ``deflate`` package's own
extension (the libdeflate build every other qcow2 cluster is inflated with) through ctypes,
which releases the GIL for the call.  The package's Python API returns new bytes and does
not say how much input the stream took; copying a qcow2 cluster into a VMDK grain needs that
length, and inflating straight into the span buffer saves a copy of every cluster.

Where that symbol cannot be loaded, the standard library's zlib does the same job (slower,
one copy more): whether a cluster is copied must never depend on the machine, or the same
image and settings would give other bytes there.
"""

from __future__ import annotations

import ctypes
import threading
import zlib

__all__ = ["NATIVE", "inflate_into", "SUCCESS", "BAD_DATA", "INSUFFICIENT_SPACE"]

SUCCESS, BAD_DATA, INSUFFICIENT_SPACE = 0, 1, 3   # enum libdeflate_result


def _load() -> tuple[object, object, object] | None:
    try:
        from deflate import _deflate
        lib = ctypes.CDLL(_deflate.__file__)  # already loaded: the same handle
        alloc, free = lib.libdeflate_alloc_decompressor, lib.libdeflate_free_decompressor
        inflate = lib.libdeflate_deflate_decompress_ex
    except (ImportError, OSError, AttributeError):
        return None
    alloc.restype, alloc.argtypes = ctypes.c_void_p, []
    free.restype, free.argtypes = None, [ctypes.c_void_p]
    size_p = ctypes.POINTER(ctypes.c_size_t)
    inflate.restype = ctypes.c_int
    inflate.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_void_p,
                        ctypes.c_size_t, size_p, size_p]
    return alloc, free, inflate


_LIB = _load()
NATIVE = _LIB is not None  # libdeflate through ctypes; else zlib (same results)
_local = threading.local()


class _Decompressor:
    """One thread's libdeflate decompressor (not thread-safe), freed with the thread."""

    def __init__(self) -> None:
        assert _LIB is not None
        self.handle = _LIB[0]()  # type: ignore[operator]
        if not self.handle:
            raise MemoryError("libdeflate_alloc_decompressor failed")
        self.used = ctypes.c_size_t()
        self.made = ctypes.c_size_t()

    def __del__(self) -> None:
        if _LIB is not None and self.handle:
            _LIB[1](self.handle)  # type: ignore[operator]
            self.handle = None


def inflate_into(data: bytes, out: memoryview) -> tuple[int, int, int]:
    """Inflate the raw deflate stream at the start of ``data`` into writable ``out``:
    (libdeflate result, input bytes the stream took, bytes written).  SUCCESS means the
    stream ended inside ``data`` and fit in ``out``; INSUFFICIENT_SPACE that it makes more."""
    if _LIB is None:
        return _zlib_inflate_into(data, out)
    d = getattr(_local, "decompressor", None)
    if d is None:
        d = _local.decompressor = _Decompressor()
    target = (ctypes.c_char * len(out)).from_buffer(out)
    try:
        rc = _LIB[2](d.handle, data, len(data), target, len(out),  # type: ignore[index,operator]
                     ctypes.byref(d.used), ctypes.byref(d.made))
    finally:
        del target  # the buffer export ends here: the caller's mmap may close later
    return rc, d.used.value, d.made.value


def _zlib_inflate_into(data: bytes, out: memoryview) -> tuple[int, int, int]:
    """inflate_into with the standard library: the same three outcomes."""
    inflater = zlib.decompressobj(-15)
    try:
        made = inflater.decompress(data, len(out) + 1)
    except zlib.error:
        return BAD_DATA, 0, 0
    if len(made) > len(out):
        return INSUFFICIENT_SPACE, 0, len(out)
    if not inflater.eof:  # the stream goes on past ``data`` (or stopped short of its end)
        return BAD_DATA, 0, len(made)
    out[:len(made)] = made
    return SUCCESS, len(data) - len(inflater.unused_data), len(made)
