# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Span encoder: the hot loop of stream-optimized VMDK writing.

One call per 32 MiB span (512 grains of 64 KiB), never per grain from Python:
find the all-zero grains with a word scan (GIL released), compress the others through the
engine callable, and frame each as a grain marker (u64 LBA, u32 compressed length, payload)
padded to the sector, into one contiguous buffer.  VMware "Virtual Disk Format 5.0",
stream-optimized compressed sparse extents; choices per ../shared/FORMATS.md section 1.

Pure: buffers in, buffers and offsets out; no files, no module state.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_FromStringAndSize, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset

DEF SECTOR = 512
DEF GRAIN_BYTES = 65536
DEF GRAIN_SECTORS = 128
DEF MARKER_BYTES = 12
# Largest zlib output for 64 KiB (deflate stored-block bound + wrapper) with slack; a
# compressed grain longer than this would not be a sane engine result.
DEF MAX_PAYLOAD = 65536 + 1024
DEF MAX_FRAMED = ((MARKER_BYTES + MAX_PAYLOAD + SECTOR - 1) // SECTOR) * SECTOR

SPAN_GRAINS = 512
MAX_FRAMED_BYTES = MAX_FRAMED
SPAN_FRAMED_BYTES = SPAN_GRAINS * MAX_FRAMED  # the most one span can frame to


cdef inline bint _all_zero(const uint8_t* p, size_t n) noexcept nogil:
    # The buffer is zero iff its first word is zero and it equals itself shifted by one
    # word: memcmp is vectorised by libc, so this runs at memory bandwidth.
    cdef uint64_t first
    memcpy(&first, p, 8)
    if first != 0:
        return False
    return memcmp(p, p + 8, n - 8) == 0


cdef Py_ssize_t _scan_span(const uint8_t[::1] span, Py_ssize_t n_grains,
                           uint8_t* zero_flags) except -1:
    """Check the span's size, flag its all-zero grains (GIL released); the data grains."""
    if n_grains < 0 or n_grains > SPAN_GRAINS or n_grains * GRAIN_BYTES > span.shape[0]:
        raise ValueError("span holds %d bytes, fewer than %d grains (max %d)"
                         % (span.shape[0], n_grains, SPAN_GRAINS))
    cdef const uint8_t* base = &span[0] if span.shape[0] else NULL
    cdef Py_ssize_t i, n_data = 0
    with nogil:
        for i in range(n_grains):
            zero_flags[i] = _all_zero(base + i * GRAIN_BYTES, GRAIN_BYTES)
            n_data += not zero_flags[i]
    return n_data


cdef inline Py_ssize_t _frame(uint8_t* dst, uint64_t lba, uint32_t n_payload) noexcept nogil:
    """Around a payload already at dst + 12: the grain marker (u64 LBA, u32 compressed
    length) before it and zeros to the sector end after it.  The framed length."""
    cdef Py_ssize_t framed_len = ((MARKER_BYTES + n_payload + SECTOR - 1) // SECTOR) * SECTOR
    memcpy(dst, &lba, 8)
    memcpy(dst + 8, &n_payload, 4)
    memset(dst + MARKER_BYTES + n_payload, 0, framed_len - MARKER_BYTES - n_payload)
    return framed_len


def zero_grain_map(const uint8_t[::1] span not None, Py_ssize_t n_grains):
    """bytes with 1 for each all-zero grain of ``span`` (reference twin in grains_py)."""
    if n_grains < 0 or n_grains * GRAIN_BYTES > span.shape[0]:
        raise ValueError("span holds %d bytes, fewer than %d grains" % (span.shape[0], n_grains))
    out = bytearray(n_grains)
    cdef uint8_t* flags = <uint8_t*>PyByteArray_AS_STRING(out)
    cdef const uint8_t* base = &span[0] if span.shape[0] else NULL
    cdef Py_ssize_t i
    with nogil:
        for i in range(n_grains):
            flags[i] = _all_zero(base + i * GRAIN_BYTES, GRAIN_BYTES)
    return bytes(out)


def encode_span(const uint8_t[::1] span not None, uint64_t first_lba, Py_ssize_t n_grains,
                compress, fingerprint):
    """Frame the non-zero grains of one span.

    span         n_grains * 64 KiB of disk data (a partial last grain already zero-padded)
    first_lba    sector number of the span's first grain
    compress     engine callable: buffer -> zlib-wrapped deflate bytes
    fingerprint  callable: buffer -> int (xxh3-64 of the grain, for the content id)

    Returns (framed, gt_rel, prints, payload_bytes):
      framed        bytearray: grain markers + payloads, each padded to a sector
      gt_rel        bytes, n_grains little-endian u32: 1 + the sector of the grain's marker
                    inside ``framed``, 0 for a zero grain (the writer adds the base sector)
      prints        bytes: (u64 LBA, u64 xxh3-64) little-endian per non-zero grain, LBA order
      payload_bytes sum of the compressed lengths
    """
    cdef uint8_t zero_flags[512]
    cdef Py_ssize_t i, n_data = _scan_span(span, n_grains, zero_flags)
    cdef const uint8_t* base = &span[0] if span.shape[0] else NULL

    framed = PyByteArray_FromStringAndSize(NULL, n_data * MAX_FRAMED)
    gt_rel = bytearray(n_grains * 4)
    prints = bytearray(n_data * 16)
    cdef uint8_t* out = <uint8_t*>PyByteArray_AS_STRING(framed)
    cdef uint32_t* gt = <uint32_t*>PyByteArray_AS_STRING(gt_rel)
    cdef uint64_t* fp = <uint64_t*>PyByteArray_AS_STRING(prints)
    cdef Py_ssize_t pos = 0, n_payload, framed_len, payload_total = 0, k = 0
    cdef uint64_t lba, digest
    cdef uint32_t length
    cdef const char* payload
    view = memoryview(span)
    for i in range(n_grains):
        if zero_flags[i]:
            continue
        grain = view[i * GRAIN_BYTES:(i + 1) * GRAIN_BYTES]
        compressed = compress(grain)
        if not isinstance(compressed, bytes):
            compressed = bytes(compressed)
        n_payload = PyBytes_GET_SIZE(compressed)
        if n_payload <= 0 or n_payload > MAX_PAYLOAD:
            raise ValueError("engine returned %d bytes for a 64 KiB grain" % n_payload)
        digest = fingerprint(grain)
        payload = PyBytes_AS_STRING(compressed)
        lba = first_lba + <uint64_t>i * GRAIN_SECTORS
        length = <uint32_t>n_payload
        with nogil:
            memcpy(out + pos + MARKER_BYTES, payload, n_payload)
            framed_len = _frame(out + pos, lba, length)
        gt[i] = <uint32_t>(pos // SECTOR + 1)
        fp[2 * k] = lba
        fp[2 * k + 1] = digest
        k += 1
        pos += framed_len
        payload_total += n_payload
    PyByteArray_Resize(framed, pos)
    return framed, bytes(gt_rel), bytes(prints), payload_total


def relocate_gt(const uint8_t[::1] gt_rel not None, uint64_t base_sector, Py_ssize_t n_entries):
    """The span's grain table: n_entries u32, ``base_sector + rel - 1`` where rel != 0.

    ``gt_rel`` comes from encode_span (1 + sector inside the framed buffer, 0 = absent);
    entries past its end are 0 (the last span of a disk may hold fewer grains).
    """
    cdef Py_ssize_t n_rel = gt_rel.shape[0] // 4, i
    if n_rel > n_entries:
        raise ValueError("%d grain-table entries, more than %d" % (n_rel, n_entries))
    out = bytearray(n_entries * 4)
    cdef uint32_t* table = <uint32_t*>PyByteArray_AS_STRING(out)
    cdef uint32_t rel
    cdef uint64_t sector
    for i in range(n_rel):
        memcpy(&rel, &gt_rel[0] + 4 * i, 4)
        if rel:
            sector = base_sector + rel - 1
            if sector > 0xFFFFFFFF:
                raise OverflowError("grain at sector %d does not fit in a u32 grain-table entry"
                                    % sector)
            table[i] = <uint32_t>sector
    return bytes(out)


# ---------------------------------------------------------------------------------------
# The whole span without the GIL: ISA-L deflate and xxh3 called through C function pointers.
#
# The callable path above takes the GIL back after every grain to call the engine and the
# fingerprint, and with several workers the threads queue on it.  The ``isal`` and
# ``xxhash`` packages we depend on export their C entry points (isal_deflate_init,
# isal_deflate, isal_adler32, XXH3_64bits); engine.py looks them up with ctypes in those
# very modules and hands the addresses here, so the bytes come from the same ISA-L build as
# isal_zlib.compress.  engine.py checks byte parity with isal_zlib.compress on sample
# grains before it uses this path, and falls back to the callable path otherwise.
#
# Only the public head of struct isal_zstream is declared (ISA-L 2.x ABI, igzip_lib.h):
# 64 bytes of fields, then the library's internal state, given generous room.

cdef extern from *:
    """
    #include <stdint.h>
    typedef struct ovfs_isal_zstream {
        uint8_t *next_in; uint32_t avail_in; uint32_t total_in;
        uint8_t *next_out; uint32_t avail_out; uint32_t total_out;
        void *hufftables; uint32_t level; uint32_t level_buf_size; uint8_t *level_buf;
        uint16_t end_of_stream; uint16_t flush; uint16_t gzip_flag; uint16_t hist_bits;
        uint64_t internal_state[32768];  /* ISA-L 2.3x needs about 82 KiB */
    } ovfs_isal_zstream;
    typedef void (*ovfs_deflate_init_fn)(ovfs_isal_zstream *);
    typedef int (*ovfs_deflate_fn)(ovfs_isal_zstream *);
    typedef uint32_t (*ovfs_adler32_fn)(uint32_t, const unsigned char *, uint64_t);
    typedef uint64_t (*ovfs_xxh3_fn)(const void *, size_t);
    """
    ctypedef struct ovfs_isal_zstream:
        uint8_t *next_in
        uint32_t avail_in
        uint32_t total_in
        uint8_t *next_out
        uint32_t avail_out
        uint32_t total_out
        void *hufftables
        uint32_t level
        uint32_t level_buf_size
        uint8_t *level_buf
        uint16_t end_of_stream
        uint16_t flush
        uint16_t gzip_flag
        uint16_t hist_bits
    ctypedef void (*ovfs_deflate_init_fn)(ovfs_isal_zstream *) noexcept nogil
    ctypedef int (*ovfs_deflate_fn)(ovfs_isal_zstream *) noexcept nogil
    ctypedef uint32_t (*ovfs_adler32_fn)(uint32_t, const unsigned char *, uint64_t) noexcept nogil
    ctypedef uint64_t (*ovfs_xxh3_fn)(const void *, size_t) noexcept nogil



DEF IGZIP_ZLIB = 3
DEF FULL_FLUSH = 2
DEF HIST_BITS = 15
# level_buf sizes python-isal uses for its default memory level (ISAL_DEF_LVLn_DEFAULT):
# they bound how many tokens ISA-L buffers per block, so they shape the output bytes.
_LEVEL_BUF_BYTES = {1: 4096 + 2 * 8192 + 4 * 65536,
                    2: 4096 + 2 * 32768 + 4 * 65536,
                    3: 4096 + 4 * 4096 + 2 * 32768 + 4 * 65536}


cdef class IsalSpanEncoder:
    """encode_span's twin that runs each span without the GIL (see the note above)."""

    cdef ovfs_deflate_init_fn deflate_init
    cdef ovfs_deflate_fn deflate
    cdef ovfs_adler32_fn adler32
    cdef ovfs_xxh3_fn xxh3
    cdef uint32_t level
    cdef uint32_t level_buf_bytes

    def __init__(self, uintptr_t deflate_init, uintptr_t deflate, uintptr_t adler32,
                 uintptr_t xxh3, int level):
        if level not in _LEVEL_BUF_BYTES:
            raise ValueError("ISA-L level %r: allowed 1..3" % level)
        if not (deflate_init and deflate and adler32 and xxh3):
            raise ValueError("a C entry point is missing")
        self.deflate_init = <ovfs_deflate_init_fn>deflate_init
        self.deflate = <ovfs_deflate_fn>deflate
        self.adler32 = <ovfs_adler32_fn>adler32
        self.xxh3 = <ovfs_xxh3_fn>xxh3
        self.level = level
        self.level_buf_bytes = _LEVEL_BUF_BYTES[level]

    cdef int _compress(self, ovfs_isal_zstream *zst, uint8_t *level_buf, const uint8_t *grain,
                       uint8_t *out, uint32_t room, uint32_t *n_out) noexcept nogil:
        """One zlib stream for one 64 KiB grain, as isal_zlib.compress(grain, level) makes
        it: 0 on success, else a negative code."""
        cdef uint32_t adler, tail
        self.deflate_init(zst)
        zst.level = self.level
        zst.level_buf = level_buf
        zst.level_buf_size = self.level_buf_bytes
        zst.hist_bits = HIST_BITS
        zst.gzip_flag = IGZIP_ZLIB
        zst.next_in = <uint8_t *>grain
        zst.avail_in = GRAIN_BYTES
        zst.flush = FULL_FLUSH
        zst.end_of_stream = 1
        zst.next_out = out
        zst.avail_out = room
        if self.deflate(zst) != 0:
            return -1
        if zst.avail_in != 0 or zst.avail_out == 0:
            return -2
        n_out[0] = room - zst.avail_out
        if n_out[0] < 6:
            return -3
        # A finished zlib stream ends with the Adler-32 of its input, big-endian.
        adler = self.adler32(1, grain, GRAIN_BYTES)
        tail = ((<uint32_t>out[n_out[0] - 4] << 24) | (<uint32_t>out[n_out[0] - 3] << 16) |
                (<uint32_t>out[n_out[0] - 2] << 8) | <uint32_t>out[n_out[0] - 1])
        if tail != adler:
            return -3
        return 0

    def compress_grain(self, const uint8_t[::1] grain not None):
        """One grain through the native path (for the parity self-test)."""
        if grain.shape[0] != GRAIN_BYTES:
            raise ValueError("a grain is %d bytes" % GRAIN_BYTES)
        cdef ovfs_isal_zstream *zst = <ovfs_isal_zstream *>malloc(sizeof(ovfs_isal_zstream))
        cdef uint8_t *level_buf = <uint8_t *>malloc(self.level_buf_bytes)
        out = bytearray(MAX_PAYLOAD)
        cdef uint8_t *o = <uint8_t *>PyByteArray_AS_STRING(out)
        cdef uint32_t n = 0
        cdef int rc
        if zst == NULL or level_buf == NULL:
            free(zst)
            free(level_buf)
            raise MemoryError()
        with nogil:
            rc = self._compress(zst, level_buf, &grain[0], o, MAX_PAYLOAD, &n)
        free(zst)
        free(level_buf)
        if rc != 0:
            raise ValueError("ISA-L deflate failed (%d)" % rc)
        return bytes(out[:n])

    def fingerprint(self, const uint8_t[::1] grain not None):
        cdef uint64_t h
        with nogil:
            h = self.xxh3(&grain[0], grain.shape[0])
        return h

    def encode_span(self, const uint8_t[::1] span not None, uint64_t first_lba,
                    Py_ssize_t n_grains):
        """Same contract and bytes as encode_span(span, first_lba, n_grains, isal-level,
        xxh3_64); the GIL is released for the whole span."""
        framed = PyByteArray_FromStringAndSize(NULL, SPAN_GRAINS * MAX_FRAMED)
        n_framed, gt_rel, prints, payload_total = self.encode_span_into(
            framed, span, first_lba, n_grains)
        PyByteArray_Resize(framed, n_framed)
        return framed, gt_rel, prints, payload_total

    def encode_span_into(self, uint8_t[::1] out not None, const uint8_t[::1] span not None,
                         uint64_t first_lba, Py_ssize_t n_grains):
        """encode_span into a caller-owned buffer of at least SPAN_FRAMED_BYTES, so that
        buffers are reused instead of faulted in afresh for every span.  Returns
        (framed bytes used, gt_rel, prints, payload_bytes)."""
        cdef uint8_t zero_flags[512]
        cdef Py_ssize_t i, n_data = _scan_span(span, n_grains, zero_flags)
        cdef const uint8_t* base = &span[0] if span.shape[0] else NULL
        if out.shape[0] < n_data * MAX_FRAMED:
            raise ValueError("output buffer of %d bytes, %d needed"
                             % (out.shape[0], n_data * MAX_FRAMED))
        gt_rel = bytearray(n_grains * 4)
        prints = bytearray(n_data * 16)
        cdef uint8_t* dst = &out[0]
        cdef uint32_t* gt = <uint32_t*>PyByteArray_AS_STRING(gt_rel)
        cdef uint64_t* fp = <uint64_t*>PyByteArray_AS_STRING(prints)
        cdef Py_ssize_t pos = 0, framed_len, payload_total = 0, k = 0, failed_at = -1
        cdef uint64_t lba
        cdef uint32_t n_payload = 0
        cdef int rc = 0
        cdef ovfs_isal_zstream *zst = NULL
        cdef uint8_t *level_buf = NULL
        if n_data:
            zst = <ovfs_isal_zstream *>malloc(sizeof(ovfs_isal_zstream))
            level_buf = <uint8_t *>malloc(self.level_buf_bytes)
            if zst == NULL or level_buf == NULL:
                free(zst)
                free(level_buf)
                raise MemoryError()
        with nogil:
            for i in range(n_grains):
                if zero_flags[i]:
                    continue
                rc = self._compress(zst, level_buf, base + i * GRAIN_BYTES,
                                    dst + pos + MARKER_BYTES, MAX_PAYLOAD, &n_payload)
                if rc != 0:
                    failed_at = i
                    break
                lba = first_lba + <uint64_t>i * GRAIN_SECTORS
                framed_len = _frame(dst + pos, lba, n_payload)
                gt[i] = <uint32_t>(pos // SECTOR + 1)
                fp[2 * k] = lba
                fp[2 * k + 1] = self.xxh3(base + i * GRAIN_BYTES, GRAIN_BYTES)
                k += 1
                pos += framed_len
                payload_total += n_payload
        free(zst)
        free(level_buf)
        if failed_at >= 0:
            raise ValueError("ISA-L deflate failed (%d) on grain %d of the span" % (rc, failed_at))
        return pos, bytes(gt_rel), bytes(prints), payload_total
