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
from libc.stdint cimport uint8_t, uint32_t, uint64_t
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


cdef inline bint _all_zero(const uint8_t* p, size_t n) noexcept nogil:
    # The buffer is zero iff its first word is zero and it equals itself shifted by one
    # word: memcmp is vectorised by libc, so this runs at memory bandwidth.
    cdef uint64_t first
    memcpy(&first, p, 8)
    if first != 0:
        return False
    return memcmp(p, p + 8, n - 8) == 0


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
    if n_grains < 0 or n_grains > SPAN_GRAINS or n_grains * GRAIN_BYTES > span.shape[0]:
        raise ValueError("span holds %d bytes, fewer than %d grains (max %d)"
                         % (span.shape[0], n_grains, SPAN_GRAINS))
    cdef const uint8_t* base = &span[0] if span.shape[0] else NULL
    cdef uint8_t zero_flags[512]
    cdef Py_ssize_t i, n_data = 0
    with nogil:
        for i in range(n_grains):
            zero_flags[i] = _all_zero(base + i * GRAIN_BYTES, GRAIN_BYTES)
            n_data += not zero_flags[i]

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
        framed_len = ((MARKER_BYTES + n_payload + SECTOR - 1) // SECTOR) * SECTOR
        with nogil:
            # grain marker: u64 LBA, u32 compressed length, then the payload at byte 12
            memcpy(out + pos, &lba, 8)
            memcpy(out + pos + 8, &length, 4)
            memcpy(out + pos + MARKER_BYTES, payload, n_payload)
            memset(out + pos + MARKER_BYTES + n_payload, 0, framed_len - MARKER_BYTES - n_payload)
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
