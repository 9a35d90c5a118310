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
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
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
    framed = PyByteArray_FromStringAndSize(NULL, SPAN_GRAINS * MAX_FRAMED)
    n_framed, gt_rel, prints, payload_total = encode_span_into(
        framed, span, first_lba, n_grains, compress, fingerprint)
    PyByteArray_Resize(framed, n_framed)
    return framed, gt_rel, prints, payload_total


def encode_span_into(uint8_t[::1] out not None, const uint8_t[::1] span not None,
                     uint64_t first_lba, Py_ssize_t n_grains, compress, fingerprint):
    """encode_span into a caller-owned buffer of at least n_data * MAX_FRAMED_BYTES bytes
    (SPAN_FRAMED_BYTES always suffices), so buffers are reused span after span.  Returns
    (framed bytes used, gt_rel, prints, payload_bytes)."""
    cdef uint8_t zero_flags[512]
    cdef Py_ssize_t i, n_data = _scan_span(span, n_grains, zero_flags)
    if out.shape[0] < n_data * MAX_FRAMED:
        raise ValueError("output buffer of %d bytes, %d needed"
                         % (out.shape[0], n_data * MAX_FRAMED))
    gt_rel = bytearray(n_grains * 4)
    prints = bytearray(n_data * 16)
    cdef uint8_t* dst = &out[0] if out.shape[0] else NULL
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
            memcpy(dst + pos + MARKER_BYTES, payload, n_payload)
            framed_len = _frame(dst + pos, lba, length)
        gt[i] = <uint32_t>(pos // SECTOR + 1)
        fp[2 * k] = lba
        fp[2 * k + 1] = digest
        k += 1
        pos += framed_len
        payload_total += n_payload
    return pos, bytes(gt_rel), bytes(prints), payload_total


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


cdef bint _grain_lbas_agree(const uint8_t* framed, Py_ssize_t n_framed, const uint8_t* table,
                            Py_ssize_t n_grains, const uint8_t* fp, Py_ssize_t n_prints,
                            uint64_t base) noexcept nogil:
    cdef uint64_t lba, want, p_lba
    cdef uint32_t rel, size
    cdef Py_ssize_t i, at, k = 0, last_end = 0
    for i in range(n_grains):
        memcpy(&rel, table + 4 * i, 4)
        if not rel:
            continue
        at = <Py_ssize_t>(rel - 1) * SECTOR
        if at < last_end or at + MARKER_BYTES > n_framed or k >= n_prints:
            return False
        memcpy(&lba, framed + at, 8)
        memcpy(&size, framed + at + 8, 4)
        want = <uint64_t>i * GRAIN_SECTORS + base
        if (lba != want or size == 0 or size > MAX_PAYLOAD
                or at + MARKER_BYTES + <Py_ssize_t>size > n_framed):
            return False
        memcpy(&p_lba, fp + 16 * k, 8)
        if p_lba != want:
            return False
        last_end = at + MARKER_BYTES + size
        k += 1
    return k == n_prints


MAX_SHIFT_GRAINS = 1 << 32  # far above a span's 512; keeps 4 * n_grains from wrapping


def shift_grain_lbas(uint8_t[::1] framed not None, const uint8_t[::1] gt_rel not None,
                     uint8_t[::1] prints not None, int64_t delta, Py_ssize_t n_grains):
    """Add ``delta`` to the LBA of every grain marker in ``framed`` and of every fingerprint
    in ``prints``, in place, once the grain table, markers and fingerprints are checked to
    agree (the cache's entries, cache.py); False, with nothing changed, if they do not.

    ``gt_rel``: n_grains u32, 1 + the marker's sector in ``framed``, or 0 (no grain).  Each
    marker must hold the LBA its table slot implies (``i * 128``, plus ``-delta`` when delta
    is negative: the chunk is being made relative), a payload length of 1..MAX_PAYLOAD that
    fits in ``framed``, and start after the previous marker's payload; ``prints`` must hold
    one (LBA, fingerprint) pair per grain, with the same LBAs in the same order.  ``delta``
    outside the int64 range is an OverflowError.  Reference twin in grains_py."""
    cdef Py_ssize_t n_framed = framed.shape[0], n_prints = prints.shape[0] // 16
    # (n_grains bounded first: 4 * n_grains must not wrap)
    if (n_grains < 0 or n_grains > MAX_SHIFT_GRAINS or gt_rel.shape[0] != 4 * n_grains
            or prints.shape[0] != 16 * n_prints):
        return False
    cdef uint8_t* dst = &framed[0] if n_framed else NULL
    cdef uint8_t* fp = &prints[0] if n_prints else NULL
    cdef const uint8_t* table = &gt_rel[0] if n_grains else NULL
    cdef uint64_t base = <uint64_t>(-delta) if delta < 0 else 0
    cdef uint64_t lba
    cdef uint32_t rel
    cdef Py_ssize_t i, k = 0
    cdef bint ok
    with nogil:
        ok = _grain_lbas_agree(dst, n_framed, table, n_grains, fp, n_prints, base)
        if ok:
            for i in range(n_grains):
                memcpy(&rel, table + 4 * i, 4)
                if rel:
                    lba = <uint64_t>i * GRAIN_SECTORS + base + <uint64_t>delta
                    memcpy(dst + <Py_ssize_t>(rel - 1) * SECTOR, &lba, 8)
                    memcpy(fp + 16 * k, &lba, 8)
                    k += 1
    return ok


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

    #include <sys/mman.h>
    #ifndef MAP_ANONYMOUS
    #define MAP_ANONYMOUS MAP_ANON
    #endif
    #if defined(__linux__) && !defined(MAP_FIXED_NOREPLACE)
    #define MAP_FIXED_NOREPLACE 0x100000
    #endif
    #ifndef MAP_FIXED_NOREPLACE
    #define MAP_FIXED_NOREPLACE 0   /* a plain hint; the address is checked below */
    #endif

    /* The hash table bucket ISA-L's level 1-2 deflate body takes for the third byte of a new
       stream: CRC-32C (the x86 crc32 instruction, 32-bit operand, seed 0) of bits 16..47 of
       the isal_zstream's address, masked to the level's table (see IsalStream). */
    static uint32_t ovfs_stream_bucket(uintptr_t address, uint32_t mask) {
        uint32_t value = (uint32_t)(address >> 16), crc = 0;
        int i, bit;
        for (i = 0; i < 4; i++) {
            crc ^= (value >> (8 * i)) & 0xffu;
            for (bit = 0; bit < 8; bit++)
                crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
        }
        return crc & mask;
    }

    /* An anonymous read-write mapping of `size` bytes at a 64 KiB-aligned address whose
       bucket is `bucket`: the nearest such address to where the kernel would put it that is
       free.  NULL when none is found (or the kernel refuses every one). */
    static void *ovfs_map_stream(size_t size, uint32_t mask, uint32_t bucket) {
        const uintptr_t step = 0x10000, low = (uintptr_t)1 << 32;
        const uintptr_t high = ((uintptr_t)1 << 47) - (uintptr_t)size - step;  /* user space */
        void *probe = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        uintptr_t start, candidate;
        long k;
        int side;
        if (probe == MAP_FAILED)
            return NULL;
        start = (uintptr_t)probe & ~(step - 1);
        munmap(probe, size);
        for (k = 0; k < (1L << 20); k++) {
            for (side = 0; side < 2; side++) {
                void *got;
                if (k == 0 && side)
                    continue;
                candidate = side ? start - (uintptr_t)k * step : start + (uintptr_t)k * step;
                if (candidate < low || candidate > high
                        || ovfs_stream_bucket(candidate, mask) != bucket)
                    continue;
                got = mmap((void *)candidate, size, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
                if (got == MAP_FAILED)
                    continue;
                if ((uintptr_t)got == candidate)
                    return got;
                munmap(got, size);  /* the kernel took it as a hint and went elsewhere */
            }
        }
        return NULL;
    }
    static void ovfs_unmap_stream(void *stream, size_t size) { munmap(stream, size); }
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
    uint32_t ovfs_stream_bucket(uintptr_t address, uint32_t mask) noexcept nogil
    void *ovfs_map_stream(size_t size, uint32_t mask, uint32_t bucket) noexcept nogil
    void ovfs_unmap_stream(void *stream, size_t size) noexcept nogil



DEF IGZIP_ZLIB = 3
DEF FULL_FLUSH = 2
DEF HIST_BITS = 15
# level_buf sizes python-isal uses for its default memory level (ISAL_DEF_LVLn_DEFAULT):
# they bound how many tokens ISA-L buffers per block, so they shape the output bytes.
_LEVEL_BUF_BYTES = {1: 4096 + 2 * 8192 + 4 * 65536,
                    2: 4096 + 2 * 32768 + 4 * 65536,
                    3: 4096 + 4 * 4096 + 2 * 32768 + 4 * 65536}
# Hash-table masks of levels 1 and 2 (IGZIP_LVL1_HASH_SIZE 8 Ki, IGZIP_LVL2_HASH_SIZE 32 Ki
# entries); level 3 takes another body that does not read the stream's address.
_STREAM_BUCKET_MASK = {1: 8191, 2: 32767, 3: 0}
# Every stream sits at an address of this bucket (see IsalStream).
STREAM_BUCKET = 0


cdef class IsalStream:
    """One ISA-L deflate stream state and its level buffer, at a chosen kind of address.

    ISA-L 2.x levels 1 and 2 (igzip_icf_body_h1_gr_bt.asm, ``.write_first_byte``, every x86
    variant) hash the third byte of a new stream from a register that holds the address of
    the ``isal_zstream`` instead of the data: byte 2 is looked up in, and inserted into, the
    hash bucket CRC-32C(bits 16..47 of that address) & mask.  The compressed bytes (never the
    data they inflate to) therefore depend on where the state lies in memory -- on the heap's
    history, the thread, ASLR.  Here every state is mapped at a 64 KiB-aligned address whose
    bucket is ``bucket`` (STREAM_BUCKET), so every thread and every process gets the same
    bytes for the same grain.  Not thread-safe: one stream per thread.
    """

    cdef ovfs_isal_zstream *zst
    cdef uint8_t *level_buf
    cdef readonly uint32_t level
    cdef readonly uint32_t bucket
    cdef uint32_t level_buf_bytes

    def __cinit__(self, int level, uint32_t bucket=STREAM_BUCKET):
        if level not in _LEVEL_BUF_BYTES:
            raise ValueError("ISA-L level %r: allowed 1..3" % level)
        cdef uint32_t mask = _STREAM_BUCKET_MASK[level]
        if bucket > mask:
            raise ValueError("bucket %d: the level-%d table has %d" % (bucket, level, mask + 1))
        self.level = level
        self.bucket = bucket
        self.level_buf_bytes = _LEVEL_BUF_BYTES[level]
        with nogil:
            self.zst = <ovfs_isal_zstream *>ovfs_map_stream(sizeof(ovfs_isal_zstream), mask,
                                                            bucket)
        self.level_buf = <uint8_t *>malloc(self.level_buf_bytes)
        if self.zst == NULL or self.level_buf == NULL:
            raise MemoryError("no room for an ISA-L stream state at a bucket-%d address" % bucket)

    def __dealloc__(self):
        if self.zst != NULL:
            ovfs_unmap_stream(self.zst, sizeof(ovfs_isal_zstream))
            self.zst = NULL
        free(self.level_buf)
        self.level_buf = NULL

    @property
    def address(self):
        """Where the state lies (tests check its bucket)."""
        return <uintptr_t>self.zst


def stream_bucket(uintptr_t address, uint32_t mask):
    """The bucket ISA-L levels 1-2 take for a new stream's third byte when the stream state
    lies at ``address`` (see IsalStream)."""
    return ovfs_stream_bucket(address, mask)


cdef class IsalSpanEncoder:
    """encode_span's twin that runs each span without the GIL (see the note above)."""

    cdef ovfs_deflate_init_fn deflate_init
    cdef ovfs_deflate_fn deflate
    cdef ovfs_adler32_fn adler32
    cdef ovfs_xxh3_fn xxh3
    cdef readonly uint32_t level
    cdef uint32_t level_buf_bytes
    # Recompute every grain's Adler-32 in the span path too (see _compress); off by default.
    cdef public bint check_trailer

    def __init__(self, uintptr_t deflate_init, uintptr_t deflate, uintptr_t adler32,
                 uintptr_t xxh3, int level, bint check_trailer=False):
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
        self.check_trailer = check_trailer

    def new_stream(self, uint32_t bucket=STREAM_BUCKET):
        """A stream state for this encoder's level, for one thread to reuse span after span."""
        return IsalStream(self.level, bucket)

    cdef IsalStream _stream_for(self, stream):
        if stream is None:
            return IsalStream(self.level)
        if not isinstance(stream, IsalStream) or (<IsalStream>stream).level != self.level:
            raise ValueError("a stream of this encoder's level (%d) is needed" % self.level)
        return <IsalStream>stream

    cdef int _compress(self, ovfs_isal_zstream *zst, uint8_t *level_buf, const uint8_t *grain,
                       uint8_t *out, uint32_t room, uint32_t *n_out,
                       bint check_trailer) noexcept nogil:
        """One zlib stream for one 64 KiB grain, as isal_zlib.compress(grain, level) makes
        it: 0 on success, else a negative code.

        ``check_trailer`` recomputes the Adler-32 of the grain (isal_adler32, another ISA-L
        routine than the one isal_deflate keeps its running sum with) and compares it with
        the trailer.  compress_grain -- the start-up self-test and the per-grain callable --
        does; the span path does not: that second pass over every byte (~5 % of the time)
        would only test ISA-L against itself again, which the self-test already did for this
        build (and zlib.decompress there checks the trailer with zlib's own Adler-32)."""
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
        if not check_trailer:
            return 0
        # A finished zlib stream ends with the Adler-32 of its input, big-endian.
        adler = self.adler32(1, grain, GRAIN_BYTES)
        tail = ((<uint32_t>out[n_out[0] - 4] << 24) | (<uint32_t>out[n_out[0] - 3] << 16) |
                (<uint32_t>out[n_out[0] - 2] << 8) | <uint32_t>out[n_out[0] - 1])
        if tail != adler:
            return -3
        return 0

    def compress_grain(self, const uint8_t[::1] grain not None, stream=None):
        """One grain through the native path (the engine's per-grain callable and the
        start-up self-test); ``stream`` from new_stream(), else a fresh one."""
        if grain.shape[0] != GRAIN_BYTES:
            raise ValueError("a grain is %d bytes" % GRAIN_BYTES)
        cdef IsalStream st = self._stream_for(stream)
        out = bytearray(MAX_PAYLOAD)
        cdef uint8_t *o = <uint8_t *>PyByteArray_AS_STRING(out)
        cdef uint32_t n = 0
        cdef int rc
        with nogil:
            rc = self._compress(st.zst, st.level_buf, &grain[0], o, MAX_PAYLOAD, &n, True)
        if rc != 0:
            raise ValueError("ISA-L deflate failed (%d)" % rc)
        return bytes(out[:n])

    def fingerprint(self, const uint8_t[::1] grain not None):
        cdef uint64_t h
        with nogil:
            h = self.xxh3(&grain[0], grain.shape[0])
        return h

    def encode_span(self, const uint8_t[::1] span not None, uint64_t first_lba,
                    Py_ssize_t n_grains, stream=None):
        """Same contract and bytes as encode_span(span, first_lba, n_grains, compress_grain,
        xxh3_64); the GIL is released for the whole span."""
        framed = PyByteArray_FromStringAndSize(NULL, SPAN_GRAINS * MAX_FRAMED)
        n_framed, gt_rel, prints, payload_total = self.encode_span_into(
            framed, span, first_lba, n_grains, stream)
        PyByteArray_Resize(framed, n_framed)
        return framed, gt_rel, prints, payload_total

    def encode_span_into(self, uint8_t[::1] out not None, const uint8_t[::1] span not None,
                         uint64_t first_lba, Py_ssize_t n_grains, stream=None):
        """encode_span into a caller-owned buffer of at least SPAN_FRAMED_BYTES, so that
        buffers are reused instead of faulted in afresh for every span; ``stream`` is the
        calling thread's IsalStream (a fresh one when None).  Returns (framed bytes used,
        gt_rel, prints, payload_bytes)."""
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
        if not n_data:
            return 0, bytes(gt_rel), bytes(prints), 0
        cdef IsalStream st = self._stream_for(stream)
        with nogil:
            for i in range(n_grains):
                if zero_flags[i]:
                    continue
                rc = self._compress(st.zst, st.level_buf, base + i * GRAIN_BYTES,
                                    dst + pos + MARKER_BYTES, MAX_PAYLOAD, &n_payload,
                                    self.check_trailer)
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
        if failed_at >= 0:
            raise ValueError("ISA-L deflate failed (%d) on grain %d of the span" % (rc, failed_at))
        return pos, bytes(gt_rel), bytes(prints), payload_total
