"""A raw disk compressed with zstandard (``disk.raw.zst``): ``zstd``, ``zstd -T0``, ``pzstd``.

The file is one or more frames (RFC 8878), skippable frames (pzstd's) between them.  Opening
it walks every frame header and block header in one sequential read of the compressed file,
which gives:

* the virtual size: the frames' declared content sizes; a frame written without one (``cat
  disk | zstd``) needs ``size`` (``--size BYTES``), else a UsageError says so;
* bounds: a raw or RLE block's size is exact and a compressed block holds at most 128 KiB, so
  a frame claiming more (or less) than its blocks can hold -- a decompression bomb's lie --
  is refused before anything is decompressed (``zstd.size``), as is a cut-short or malformed
  frame (``zstd.frame``), a frame that needs a dictionary, or a window above 128 MiB (the
  decoder's memory);
* the sample key: xxh3-128 of the compressed bytes (plus settings and size), a function of
  the content that needs no second decompression.  The same disk compressed at another
  level therefore gets other VMDK descriptor ids (CID, uuid) than its raw file or another
  .zst would; its content id (and qemu-img compare) is the same.

The disk is then decompressed once, in order, straight into the span buffers
(sources/sequential.py): no temporary raw copy, memory that of the spans in flight plus the
decoder's window.  The holes are unknown, so every span is read; the encoder still drops the
zero grains.  ``check_format`` refuses a compressed container (.qcow2.zst, .vmdk.zst,
.ova.zst...) by the first 4 KiB of decompressed data.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import xxhash
import zstandard

from ..errors import FormatError, UnsupportedError, UsageError
from .base import OpenFile
from .detect import _head_format
from .sequential import SequentialSource
from .stdin import check_size

__all__ = ["ZstdSource", "Frame", "RULES"]

RULES = {
    "zstd.frame": "a zstd frame or block header is malformed or cut short, or its data does "
                  "not decompress",
    "zstd.size": "the zstd frames hold another size than they declare or than --size says "
                 "(cut short, too long, or a frame claiming more than its blocks can hold)",
}

_MAGIC = 0xFD2FB528
_SKIPPABLE, _SKIPPABLE_MASK = 0x184D2A50, 0xFFFFFFF0
_BLOCK_MAX = 128 << 10
WINDOW_LIMIT = 1 << 27  # the decoder's default limit (ZSTD_WINDOWLOG_LIMIT_DEFAULT)
_WALK_CHUNK = 4 << 20
_READ_SIZE = 1 << 20


@dataclass(frozen=True)
class Frame:
    offset: int                # of its magic number in the file
    content_size: int | None   # declared (None: not recorded)
    least: int                 # bytes its blocks decompress to at least ...
    most: int                  # ... and at most


class _Walk:
    """The compressed file read forward once, in chunks into one reused buffer (a fresh
    4 MiB buffer per chunk would cost more in page faults than the read), hashed as it goes."""

    def __init__(self, file: OpenFile) -> None:
        self.file = file
        self.hasher = xxhash.xxh3_128()
        self.buf = bytearray(_WALK_CHUNK)
        self.base = 0      # file offset of buf[0]
        self.filled = 0    # bytes of buf that hold the file
        self.read_to = 0   # bytes read (and hashed) so far

    def peek(self, pos: int, n: int) -> bytes:
        """Up to ``n`` (< 4 MiB) bytes at ``pos``, fewer at the end of the file; ``pos``
        never goes back before an earlier peek's."""
        while pos + n > self.base + self.filled and self.read_to < self.file.size:
            keep = max(0, self.read_to - pos)  # already read bytes at pos and after
            self.buf[:keep] = self.buf[self.filled - keep:self.filled]
            self.base = self.read_to - keep
            want = min(len(self.buf) - keep, self.file.size - self.read_to)
            with memoryview(self.buf)[keep:keep + want] as view:
                self.file.pread_into(view, self.read_to)
                self.hasher.update(view)
            self.filled = keep + want
            self.read_to += want
        start = pos - self.base
        return bytes(self.buf[start:min(start + n, self.filled)]) if start < self.filled else b""


class _Compressed:
    """The compressed file as the decoder reads it: forward, by pread (no shared seek)."""

    def __init__(self, file: OpenFile) -> None:
        self.file = file
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        n = self.file.size - self.pos if n < 0 else min(n, self.file.size - self.pos)
        data = self.file.pread(n, self.pos) if n > 0 else b""
        self.pos += len(data)
        return data


class ZstdSource(SequentialSource):
    """A zstd-compressed raw disk, decompressed once into the spans, in order."""

    format = "zstd"

    def __init__(self, path: str | os.PathLike[str], *, size: int | None = None,
                 depth: int = 0) -> None:
        self._open_file(path)
        try:
            walk = _Walk(self._file)
            self.frames = self._walk_frames(walk)
            self._file_hash = walk.hasher.digest()
            self.size_bytes = self._virtual_size(size)
            self.extents = [(0, self.size_bytes)]
            self._compressed = _Compressed(self._file)
            self._decoder = self._open_decoder(self._compressed)
        except BaseException:
            self.close()
            raise
        self._start_turns()
        self._sized()

    # -- the frame walk --------------------------------------------------------------------

    def _error(self, rule: str, detail: str, offset: int) -> FormatError:
        return FormatError(rule, detail, path=self.path, offset=offset)

    def _walk_frames(self, walk: _Walk) -> list[Frame]:
        frames: list[Frame] = []
        pos, end = 0, self._file.size
        while pos < end:
            head = walk.peek(pos, 8)
            if len(head) < 4:
                raise self._error("zstd.frame", "%d stray bytes after the last frame"
                                  % len(head), pos)
            magic = struct.unpack_from("<I", head)[0]
            if magic & _SKIPPABLE_MASK == _SKIPPABLE:
                if len(head) < 8:
                    raise self._error("zstd.frame", "skippable frame header cut short", pos)
                skip_to = pos + 8 + struct.unpack_from("<I", head, 4)[0]
                if skip_to > end:
                    raise self._error("zstd.frame", "skippable frame of %d bytes runs past the "
                                      "end of the file (%d bytes)" % (skip_to - pos, end), pos)
                walk.peek(skip_to, 0)  # hashed like every other byte
                pos = skip_to
                continue
            if magic != _MAGIC:
                raise self._error("zstd.frame", "not a zstd frame: magic number 0x%08x "
                                  "(expected 0x%08x)" % (magic, _MAGIC), pos)
            frame, pos = self._walk_frame(walk, pos, len(frames) + 1)
            frames.append(frame)
        if not frames:
            raise UsageError("%s: no zstd frame holds data: the disk image is empty" % self.path)
        return frames

    def _walk_frame(self, walk: _Walk, start: int, number: int) -> tuple[Frame, int]:
        """Frame ``number`` at ``start``: its header and every block header (RFC 8878 3.1.1);
        returns it and the offset after it."""
        end = self._file.size
        what = "frame %d" % number
        descriptor = walk.peek(start, 5)[4:]  # from start: the walk never goes back
        if not descriptor:
            raise self._error("zstd.frame", what + ": header cut short", start)
        d = descriptor[0]
        fcs_flag, single, checksum, dict_flag = d >> 6, (d >> 5) & 1, (d >> 2) & 1, d & 3
        if d & 0x08:
            raise self._error("zstd.frame", what + ": reserved bit of the frame header "
                              "descriptor is set (0x%02x)" % d, start + 4)
        dict_bytes = (0, 1, 2, 4)[dict_flag]
        fcs_bytes = (1 if single else 0, 2, 4, 8)[fcs_flag]
        header_len = 5 + (0 if single else 1) + dict_bytes + fcs_bytes
        header = walk.peek(start, header_len)
        if len(header) < header_len:
            raise self._error("zstd.frame", what + ": header cut short", start)
        at = 5
        window = 0
        if not single:
            exponent, mantissa = header[at] >> 3, header[at] & 7
            base = 1 << (10 + exponent)
            window = base + (base >> 3) * mantissa
            at += 1
        dict_id = int.from_bytes(header[at:at + dict_bytes], "little")
        at += dict_bytes
        content_size: int | None = None
        if fcs_bytes:
            content_size = int.from_bytes(header[at:at + fcs_bytes], "little")
            content_size += 256 if fcs_bytes == 2 else 0
        if single:
            window = content_size or 0
        if dict_id:
            raise UnsupportedError("%s: %s at offset %d needs zstd dictionary %d, which "
                                   "ovfstream does not take: decompress it first (zstd -d -D "
                                   "DICT)" % (self.path, what, start, dict_id))
        if window > WINDOW_LIMIT:
            raise UnsupportedError("%s: %s at offset %d needs a %d MiB window, more than the "
                                   "%d MiB ovfstream decodes with: decompress it first (zstd "
                                   "-d --long=31)" % (self.path, what, start, window >> 20,
                                                      WINDOW_LIMIT >> 20))
        block_max = min(max(window, 1 << 10), _BLOCK_MAX)
        least = compressed = 0
        pos = start + header_len
        while True:
            raw = walk.peek(pos, 3)
            if len(raw) < 3:
                raise self._error("zstd.frame", "%s cut short: the file ends inside a block "
                                  "header (frame at offset %d)" % (what, start), pos)
            value = int.from_bytes(raw, "little")
            last, kind, size = value & 1, (value >> 1) & 3, value >> 3
            if kind == 3:
                raise self._error("zstd.frame", "%s: block of the reserved type 3" % what, pos)
            if size > block_max:
                raise self._error("zstd.frame", "%s: block of %d bytes, above the %d the frame "
                                  "allows" % (what, size, block_max), pos)
            if kind == 2:
                compressed += 1
            else:
                least += size
            pos += 3 + (1 if kind == 1 else size)
            if pos > end:
                raise self._error("zstd.frame", "%s cut short: a block runs past the end of "
                                  "the file (%d bytes; frame at offset %d)" % (what, end, start),
                                  end)
            if last:
                break
        if checksum:
            pos += 4
            if pos > end:
                raise self._error("zstd.frame", "%s cut short: its checksum is missing" % what,
                                  end)
        walk.peek(pos, 0)
        most = least + compressed * block_max
        if content_size is not None and not least <= content_size <= most:
            raise self._error("zstd.size", "%s declares %d bytes of content, but its blocks "
                              "hold %s" % (what, content_size, _between(least, most)), start)
        return Frame(start, content_size, least, most), pos

    def _virtual_size(self, size: int | None) -> int:
        unknown = [f for f in self.frames if f.content_size is None]
        if size is not None:
            size = check_size(size, self.path)
        if not unknown:
            declared = sum(f.content_size or 0 for f in self.frames)
            if size is not None and size != declared:
                raise self._error("zstd.size", "the frames declare %d bytes; --size says %d"
                                  % (declared, size), 0)
            if declared == 0:
                raise UsageError("%s: the frames hold 0 bytes: the disk image is empty"
                                 % self.path)
            return declared
        if size is None:
            raise UsageError("%s: zstd frame %d (offset %d) does not record its content size "
                             "(compressed from a stream?): give the disk's size with --size "
                             "BYTES" % (self.path, self.frames.index(unknown[0]) + 1,
                                        unknown[0].offset))
        least = sum(f.least if f.content_size is None else f.content_size for f in self.frames)
        most = sum(f.most if f.content_size is None else f.content_size for f in self.frames)
        if not least <= size <= most:
            raise self._error("zstd.size", "--size says %d bytes, but the frames hold %s"
                              % (size, _between(least, most)), 0)
        return size

    # -- decompression ---------------------------------------------------------------------

    def _open_decoder(self, compressed: _Compressed) -> "zstandard.ZstdDecompressionReader":
        return zstandard.ZstdDecompressor(max_window_size=WINDOW_LIMIT).stream_reader(
            compressed, read_size=_READ_SIZE, read_across_frames=True, closefd=False)

    def _frame_at(self, disk_offset: int, compressed: int) -> tuple[str, int]:
        """Where a decompression failure lies: the frame holding ``disk_offset`` when the
        declared sizes tell, else the compressed bytes read so far."""
        start = 0
        for number, frame in enumerate(self.frames, 1):
            if frame.content_size is None:
                break
            if disk_offset < start + frame.content_size:
                return "frame %d (disk byte %d)" % (number, disk_offset), frame.offset
            start += frame.content_size
        return ("the compressed data before offset %d (disk byte %d)"
                % (compressed, disk_offset), compressed)

    def _fill(self, decoder: "zstandard.ZstdDecompressionReader", compressed: _Compressed,
              view: memoryview, at: int) -> int:
        """Decompress into ``view`` until it is full or the data ends; the bytes filled."""
        got, n = 0, len(view)
        while got < n:
            try:
                step = decoder.readinto(view[got:])
            except zstandard.ZstdError as exc:
                where, offset = self._frame_at(at + got, compressed.pos)
                raise self._error("zstd.frame", "%s does not decompress: %s" % (where, exc),
                                  offset) from None
            if step == 0:
                break
            got += step
        return got

    def _read_stream(self, view: memoryview) -> None:
        got = self._fill(self._decoder, self._compressed, view, self._pos)
        if got < len(view):
            raise self._error("zstd.size", "the frames end after %d bytes of the %d expected"
                              % (self._pos + got, self.size_bytes), self._compressed.pos)

    def _check_end(self) -> None:
        extra = self._fill(self._decoder, self._compressed, memoryview(bytearray(1)),
                           self.size_bytes)
        if extra:
            raise self._error("zstd.size", "the frames hold more than the %d bytes expected"
                              % self.size_bytes, self._compressed.pos)

    # -- key and checks --------------------------------------------------------------------

    def sample_key(self, **settings: object) -> bytes:
        """Settings, size and the compressed file's xxh3-128 (hashed by the frame walk)."""
        hasher = xxhash.xxh3_128()
        hasher.update(repr(sorted(settings.items())).encode())
        hasher.update(struct.pack("<Q", self.size_bytes))
        hasher.update(self._file_hash)
        return hasher.digest()

    def check_format(self) -> None:
        """Refuse a container compressed with zstd (.qcow2.zst, .vmdk.zst, .ova.zst...) by the
        first 4 KiB of decompressed data, read with a decoder of its own."""
        compressed = _Compressed(self._file)
        head = bytearray(min(4096, self.size_bytes))
        with self._open_decoder(compressed) as decoder:
            got = self._fill(decoder, compressed, memoryview(head), 0)
        found = _head_format(bytes(head[:got]))
        if found is not None:
            raise UnsupportedError(
                "%s: [source.format] the zstd data holds a %s image (%s), not a raw disk: "
                "decompress it first (zstd -d), then convert that" % (self.path, found.name,
                                                                      found.detail))


def _between(least: int, most: int) -> str:
    return "exactly %d" % least if least == most else "between %d and %d" % (least, most)
