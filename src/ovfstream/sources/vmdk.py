"""VMDK inputs as a source of 32 MiB spans: hosted sparse, stream-optimized, flat, split.

What a ``.vmdk`` path can be (VMware "Virtual Disk Format 5.0"):

* a hosted sparse extent (``KDMV``): monolithicSparse (uncompressed grains, GD/GT in the
  head) or streamOptimized from any producer -- ovfstream's and VMware's (the head says
  GD_AT_END: the GD is found through the footer at the end of the file), qemu-img's (the GD
  and GTs in the head), VirtualBox's.  The header and every table entry are checked by
  vmdk/reader.py's VmdkReader (``hosted=True``); a grain's location comes from its GT entry,
  so holes are never read and the grains are not walked;
* a descriptor file (monolithicFlat, twoGbMaxExtentSparse/Flat): its extent lines name FLAT
  files (an offset into the file, holes found with SEEK_DATA), SPARSE files (hosted sparse
  extents, as above) and ZERO ranges, resolved inside the descriptor's folder.

A delta disk (parentFileNameHint, parentCID) reads through its parent, opened with
``open_source`` one level deeper (at most MAX_PARENT_DEPTH): where the child's GT entry is 0
the parent's bytes show; a zeroed entry reads as zeros.  The parent's CID must be the
child's parentCID.  Refused: ESX COWD/VMFS/SESPARSE extents, extent files outside the
descriptor's folder.  Compressed grains are inflated in ``_read_extent``, i.e. in the
writer's worker threads (zlib/ISA-L release the GIL); every read is a pread, so the source is
thread-safe.  Memory: the GD (<= 8 MiB at 64 TiB) and one 2 KiB GT per span that holds
grains, never more entries than the file has room for grains.
"""

from __future__ import annotations

import bisect
import os
import stat
import struct
import sys
from array import array

from ..errors import UnsupportedError, VmdkFormatError
from ..vmdk.descriptor import Descriptor
from ..vmdk.layout import (
    AT_GRAIN_DATA,
    FLAG_COMPRESSED,
    FLAG_ZEROED_GTE,
    GD_AT_END,
    GTE_ZEROED,
    MAGIC,
    MAX_GRAIN_PAYLOAD,
    SECTOR,
)
from ..vmdk.reader import MAX_CAPACITY_SECTORS, VmdkReader
from .base import DiskSource, Extent, OpenFile
from .raw import data_extents

__all__ = ["VmdkSource", "RULES"]

RULES: dict[str, str] = {
    "vmdk.descriptor.file": "a VMDK descriptor file is larger than 4 MiB or not UTF-8 text",
    "vmdk.extent.file": "an extent file the descriptor names is missing, absolute, or outside "
                        "the descriptor's folder",
    "vmdk.extent.size": "an extent file holds fewer sectors than its descriptor line gives, or "
                        "a sparse extent's capacity differs from them",
    "vmdk.gt.grains": "the grain tables list more grains than the file has room for, or two "
                      "entries share file sectors",
    "vmdk.parent.missing": "a delta disk's parentFileNameHint is absent or names no file",
    "vmdk.parent.cid": "a delta disk's parentCID is not its parent's CID (the parent changed "
                       "after the delta was taken)",
    "vmdk.parent.depth": "a chain of delta disks deeper than 16 (a loop?)",
}

MAX_DESCRIPTOR_FILE_BYTES = 4 << 20     # 62 TiB in 2 GiB pieces is ~1.6 MB of extent lines
MAX_EXTENT_FILES = 512                  # each is an open descriptor while the source lives
MAX_PARENT_DEPTH = 16                   # links below the top disk (qcow2's MAX_CHAIN_DEPTH too)
_DESCRIPTOR_SIGNATURE = b"# Disk DescriptorFile"
_NO_PARENT = "ffffffff"
_READ_TYPES = ("FLAT", "SPARSE", "ZERO")


def _u32_array(raw: bytes) -> array:
    table = array("I")
    table.frombytes(raw)
    if sys.byteorder == "big":  # pragma: no cover - the tables are little-endian
        table.byteswap()
    return table


class _Piece:
    """One extent of the virtual disk: [start, end) in bytes, its data ranges (relative)."""

    start: int
    end: int
    extents: list[Extent]

    def read(self, offset: int, view: memoryview) -> None:
        raise NotImplementedError

    def holes(self, offset: int, end: int) -> list[Extent]:
        """Where a parent shows through: only a sparse extent has such holes."""
        return []


class _ZeroPiece(_Piece):
    def __init__(self, start: int, end: int) -> None:
        self.start, self.end, self.extents = start, end, []

    def read(self, offset: int, view: memoryview) -> None:  # only where a parent has data
        view[:] = bytes(len(view))


class _FlatPiece(_Piece):
    """A FLAT extent: ``sectors`` of ``file`` from sector ``offset``, holes by SEEK_DATA."""

    def __init__(self, start: int, end: int, file: OpenFile, offset_sectors: int) -> None:
        self.start, self.end, self.file = start, end, file
        self.base = offset_sectors * SECTOR
        length = end - start
        self.extents = [(lo - self.base, hi - self.base) for lo, hi in
                        data_extents(file.fd, self.base, self.base + length)]

    def read(self, offset: int, view: memoryview) -> None:
        self.file.pread_into(view, self.base + offset)


class _SparsePiece(_Piece):
    """A hosted sparse extent (KDMV): its GD/GT say where each grain is in the file."""

    def __init__(self, start: int, file: OpenFile) -> None:
        self.start, self.file = start, file
        with open(file.fd, "rb", closefd=False) as f:  # the reader's checks, not a 2nd parser
            reader = VmdkReader(f, name=file.path, hosted=True)
            self.reader = reader
            h = reader.header
            self.compressed = bool(h.flags & FLAG_COMPRESSED)
            self.grain_sectors = h.grain_sectors
            self.grain_bytes = h.grain_sectors * SECTOR
            self.gtes = h.gtes_per_gt
            self.capacity_bytes = h.capacity_sectors * SECTOR
            self.end = start + self.capacity_bytes
            gd_offset = h.gd_offset_sectors
            if gd_offset == GD_AT_END:
                footer, _at = reader.tail_footer()
                gd_offset = footer.gd_offset_sectors
            self.zeroed = bool(h.flags & FLAG_ZEROED_GTE)
            self.extents: list[Extent] = []
            self.tables = self._load_tables(reader, gd_offset)

    def _fail(self, rule: str, detail: str, offset: int | None) -> VmdkFormatError:
        return VmdkFormatError(rule, detail, path=self.file.path, offset=offset)

    def _load_tables(self, reader: VmdkReader, gd_offset: int) -> dict[int, array]:
        """span -> its GT, for the spans whose GT has a non-zero entry; every entry checked,
        and ``extents`` built on the way.  Time and memory follow the grains: an empty GT or
        one of zeroed entries is looked at once however many GD entries point at it, and a GT
        with grains may be pointed at once (a second pointer would share its grains)."""
        h = reader.header
        n_grains = -(-h.capacity_sectors // h.grain_sectors)
        size = self.file.size
        # Room for grains: a compressed grain takes at least a sector, a plain one a grain.
        room = (size // SECTOR) if self.compressed else (size // self.grain_bytes)
        gd = _u32_array(reader.grain_directory(gd_offset))
        zeroed = self.zeroed
        first_grain_sector = h.overhead_sectors
        tables: dict[int, array] = {}
        seen: dict[int, tuple[array | None, bool]] = {}   # GT sector -> (table, has grains)
        sectors: list[int] = []
        extents = self.extents
        for span, entry in enumerate(gd):
            if not entry:
                continue
            if entry in seen:
                gt, has_grains = seen[entry]
                if has_grains:
                    raise self._fail("vmdk.gt.grains", "GD entries %d and more point at the "
                                     "grain table at sector %d: spans would share its grains"
                                     % (span, entry), gd_offset * SECTOR + span * 4)
            else:
                gt = _u32_array(reader.grain_table(entry, span, gd_offset))
                zeros = gt.count(0)
                has_grains = zeros + (gt.count(GTE_ZEROED) if zeroed else 0) < len(gt)
                if zeros == len(gt):
                    gt = None               # all holes: as if the GD entry were 0
                seen[entry] = (gt, has_grains)
            if gt is None:
                continue
            tables[span] = gt
            if not has_grains:             # zeroed grains only: they hide a parent's data
                continue
            for i, sector in enumerate(gt):
                if not sector or (zeroed and sector == GTE_ZEROED):
                    continue
                where = entry * SECTOR + i * 4
                g = span * self.gtes + i
                if g >= n_grains:
                    raise self._fail("vmdk.gt.entry", "GT entry %d of span %d points at sector "
                                     "%d, but its grain lies past the capacity" % (i, span, sector),
                                     where)
                need = SECTOR if self.compressed else min(
                    self.grain_bytes, self.capacity_bytes - g * self.grain_bytes)
                if sector < first_grain_sector or sector * SECTOR + need > size:
                    raise self._fail("vmdk.gt.entry", "GT entry for LBA %d points at sector %d, "
                                     "outside the grains (sectors %d..%d of the file)"
                                     % (g * self.grain_sectors, sector, first_grain_sector,
                                        size // SECTOR), where)
                sectors.append(sector)
                if len(sectors) > room:
                    raise self._fail("vmdk.gt.grains", "the grain tables list more than %d "
                                     "grains, more than a %d-byte file holds" % (room, size),
                                     where)
                lo = g * self.grain_bytes
                hi = min(lo + self.grain_bytes, self.capacity_bytes)
                if extents and extents[-1][1] == lo:
                    extents[-1] = (extents[-1][0], hi)
                else:
                    extents.append((lo, hi))
        sectors.sort()
        step = 1 if self.compressed else self.grain_sectors
        for a, b in zip(sectors, sectors[1:]):
            if b - a < step:
                raise self._fail("vmdk.gt.grains", "two grain-table entries point at sectors "
                                 "%d and %d: their grains overlap" % (a, b), b * SECTOR)
        return tables

    def _raw_entry(self, g: int) -> int:
        table = self.tables.get(g // self.gtes)
        return 0 if table is None else table[g % self.gtes]

    def _entry(self, g: int) -> int:
        """Grain g's sector, 0 when it reads as zeros (a hole or a zeroed grain)."""
        sector = self._raw_entry(g)
        return 0 if sector == GTE_ZEROED and self.zeroed else sector

    def holes(self, offset: int, end: int) -> list[Extent]:
        """The parts of [offset, end) no GT entry covers (0: neither a grain nor zeroed),
        where a delta disk's parent shows through."""
        out: list[Extent] = []
        gb = self.grain_bytes
        for g in range(offset // gb, -(-end // gb)):
            if not self._raw_entry(g):
                lo, hi = max(g * gb, offset), min((g + 1) * gb, end)
                if out and out[-1][1] == lo:
                    out[-1] = (out[-1][0], hi)
                else:
                    out.append((lo, hi))
        return out

    def read(self, offset: int, view: memoryview) -> None:
        pos, n, gb = 0, len(view), self.grain_bytes
        while pos < n:
            g, within = divmod(offset + pos, gb)
            take = min(gb - within, n - pos)
            sector = self._entry(g)
            if not sector:
                view[pos:pos + take] = bytes(take)
            elif self.compressed:
                grain = self._inflate(g, sector)
                view[pos:pos + take] = grain[within:within + take]
            else:
                # Grains stored back to back in the file: one pread for the whole run.
                nxt = sector + self.grain_sectors
                while pos + take < n and self._entry(g + 1) == nxt:
                    g += 1
                    take += min(gb, n - pos - take)
                    nxt += self.grain_sectors
                self.file.pread_into(view[pos:pos + take], sector * SECTOR + within)
            pos += take

    def _inflate(self, g: int, sector: int) -> bytes:
        """The grain marker at ``sector`` (checked to be grain ``g``'s), inflated."""
        at = sector * SECTOR
        head = self.file.pread(min(SECTOR, self.file.size - at), at)
        lba, size_field = struct.unpack_from("<QI", head, 0) if len(head) >= AT_GRAIN_DATA \
            else (None, 0)
        want = g * self.grain_sectors
        if lba != want:
            raise self._fail("vmdk.gt.entry", "the GT entry for LBA %d points at sector %d, "
                             "whose grain marker is for LBA %s" % (want, sector, lba), at)
        if not 0 < size_field <= MAX_GRAIN_PAYLOAD or at + AT_GRAIN_DATA + size_field \
                > self.file.size:
            raise self._fail("vmdk.grain.size", "grain at LBA %d: compressed size %d does not "
                             "fit (at most %d, inside the file)"
                             % (want, size_field, MAX_GRAIN_PAYLOAD), at)
        payload = head[AT_GRAIN_DATA:AT_GRAIN_DATA + size_field]
        if len(payload) < size_field:
            payload += self.file.pread(size_field - len(payload), at + len(head))
        return self.reader.inflate(payload, want, at)


class VmdkSource(DiskSource):
    """A VMDK disk (sparse, stream-optimized, or a descriptor with its extents)."""

    format = "vmdk"

    def __init__(self, path: str | os.PathLike[str], *, size: int | None = None,
                 depth: int = 0) -> None:
        self.files = []
        self._parent: DiskSource | None = None
        top = OpenFile(path)
        self.files.append(top)
        self.path = top.path
        try:
            head = top.pread(min(SECTOR, top.size), 0)
            if head[:4] == MAGIC:
                piece = _SparsePiece(0, top)
                descriptor = piece.reader.descriptor
                pieces: list[_Piece] = [piece]
            elif head[:4] == b"COWD":
                raise UnsupportedError("%s: an ESX sparse (COWD) VMDK extent: not read; convert "
                                       "it with vmkfstools or qemu-img first" % top.path)
            else:
                descriptor, pieces = self._descriptor_pieces(top)
            self.cid = (descriptor.cid or "").lower()
            self._pieces = pieces
            self._starts = [p.start for p in pieces]
            self.size_bytes = pieces[-1].end
            self.extents = [(p.start + lo, p.start + hi) for p in pieces for lo, hi in p.extents]
            if _has_parent(descriptor):
                self._open_parent(descriptor, depth)
            self.mtime = max(int(f.stat.st_mtime) for f in self.files)
        except BaseException:
            self.close()
            raise
        self._sized()

    def _open_parent(self, d: Descriptor, depth: int) -> None:
        """A delta disk: open the disk its parentFileNameHint names (relative to this file's
        folder, or absolute: delta disks live apart from their base), check that its CID is
        this disk's parentCID, and show its data where this disk has no grain."""
        hint = d.entries.get("parentFileNameHint")
        where = "parentFileNameHint %r (parentCID %s)" % (hint, d.parent_cid)
        if not hint or "\0" in hint:
            raise VmdkFormatError("vmdk.parent.missing", "a delta disk (parentCID %s) without a "
                                  "parentFileNameHint" % d.parent_cid, path=self.path)
        if depth >= MAX_PARENT_DEPTH:
            raise VmdkFormatError("vmdk.parent.depth", "%s: the chain of parents is deeper than "
                                  "%d (a loop?)" % (where, MAX_PARENT_DEPTH), path=self.path)
        name = os.path.join(os.path.dirname(os.path.abspath(self.path)), hint)
        if not os.path.exists(name):
            raise VmdkFormatError("vmdk.parent.missing", "%s: %s does not exist"
                                  % (where, name), path=self.path)
        from . import open_source  # the parent may be any VMDK layout
        parent = open_source(name, depth=depth + 1)
        self.files += parent.files          # alias checks, change detection, closing
        if not isinstance(parent, VmdkSource):
            raise UnsupportedError("%s: %s: the parent is a %s image; a VMDK's parent is a "
                                   "VMDK" % (self.path, where, parent.format))
        if parent.cid != (d.parent_cid or "").lower():
            raise VmdkFormatError("vmdk.parent.cid", "%s: the parent's CID is %s: it changed "
                                  "after this delta was taken, so the chain would mix two "
                                  "states" % (where, parent.cid or "absent"), path=self.path)
        self._parent = parent
        self.extents = _union(self.extents, [(lo, min(hi, self.size_bytes))
                                             for lo, hi in parent.extents
                                             if lo < self.size_bytes])

    def _descriptor_pieces(self, top: OpenFile) -> tuple[Descriptor, list[_Piece]]:
        if top.size > MAX_DESCRIPTOR_FILE_BYTES:
            raise VmdkFormatError("vmdk.descriptor.file", "%d bytes: a descriptor file is text of "
                                  "at most %d bytes" % (top.size, MAX_DESCRIPTOR_FILE_BYTES),
                                  path=top.path)
        raw = top.pread(top.size, 0)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise VmdkFormatError("vmdk.descriptor.file", "byte %d is not UTF-8 (%s)"
                                  % (exc.start, exc.reason), path=top.path,
                                  offset=exc.start) from None
        if not text.startswith(_DESCRIPTOR_SIGNATURE.decode()):
            raise VmdkFormatError("vmdk.header.magic", "neither a sparse extent (KDMV) nor a "
                                  "descriptor file (# Disk DescriptorFile)", path=top.path,
                                  offset=0)
        d = Descriptor.parse(text)
        for line in d.bad_lines:
            if line.split(None, 1)[0] in ("RW", "RDONLY", "NOACCESS"):
                raise VmdkFormatError("vmdk.descriptor.extent", "extent line %r: expected "
                                      'ACCESS SECTORS TYPE "FILE" [OFFSET]' % line,
                                      path=top.path)
        if not d.extents:
            raise VmdkFormatError("vmdk.descriptor.extent", "no extent lines", path=top.path)
        if len(d.extents) > MAX_EXTENT_FILES:
            raise UnsupportedError("%s: %d extents; at most %d are read"
                                   % (top.path, len(d.extents), MAX_EXTENT_FILES))
        total = sum(e.sectors for e in d.extents)
        if not 0 < total <= MAX_CAPACITY_SECTORS:
            raise VmdkFormatError("vmdk.descriptor.extent", "the extents add up to %d sectors "
                                  "(allowed 1..%d)" % (total, MAX_CAPACITY_SECTORS),
                                  path=top.path)
        folder = os.path.dirname(os.path.abspath(top.path))
        pieces: list[_Piece] = []
        start = 0
        for e in d.extents:
            end = start + e.sectors * SECTOR
            what = '%s %d %s "%s"' % (e.access, e.sectors, e.kind, e.file_name or "")
            if e.kind not in _READ_TYPES:
                raise UnsupportedError("%s: extent %s: type %s is not read (FLAT, SPARSE and "
                                       "ZERO are; VMFS and ESX sparse extents live on a "
                                       "datastore)" % (top.path, what, e.kind))
            if e.access == "NOACCESS":
                raise UnsupportedError("%s: extent %s: NOACCESS extents are not read"
                                       % (top.path, what))
            if e.sectors == 0:
                raise VmdkFormatError("vmdk.descriptor.extent", "extent %s has 0 sectors"
                                      % what, path=top.path)
            if e.kind == "ZERO":
                pieces.append(_ZeroPiece(start, end))
            else:
                f = self._open_extent(top.path, folder, e.file_name, what)
                if e.kind == "FLAT":
                    if f.size < (e.offset + e.sectors) * SECTOR:
                        raise VmdkFormatError(
                            "vmdk.extent.size", "%d bytes, the descriptor's extent %s needs "
                            "%d from sector %d" % (f.size, what, e.sectors * SECTOR, e.offset),
                            path=f.path)
                    pieces.append(_FlatPiece(start, end, f, e.offset))
                else:
                    piece = _SparsePiece(start, f)
                    if piece.end != end:
                        raise VmdkFormatError(
                            "vmdk.extent.size", "capacity %d sectors, the descriptor's extent "
                            "%s gives %d" % (piece.capacity_bytes // SECTOR, what, e.sectors),
                            path=f.path)
                    if _has_parent(piece.reader.descriptor):
                        raise UnsupportedError("%s: a delta extent inside a descriptor's disk: "
                                               "the parent belongs in the descriptor" % f.path)
                    pieces.append(piece)
            start = end
        return d, pieces

    def _open_extent(self, desc: str, folder: str, name: str | None, what: str) -> OpenFile:
        """The extent file: relative to the descriptor, inside its folder, a regular file."""
        # A descriptor is input like any other: a name reaching outside its folder (absolute,
        # or ../) would pack an unrelated local file (/etc/shadow, /dev/sda) into the output.
        if not name or "\0" in name or os.path.isabs(name):
            raise VmdkFormatError("vmdk.extent.file", "extent %s: the file name must be relative "
                                  "to the descriptor's folder" % what, path=desc)
        full = os.path.normpath(os.path.join(folder, name))
        if os.path.commonpath([folder, full]) != folder:
            raise VmdkFormatError("vmdk.extent.file", "extent %s: %s is outside the "
                                  "descriptor's folder %s" % (what, full, folder), path=desc)
        try:
            f = OpenFile(full)
        except FileNotFoundError:
            raise VmdkFormatError("vmdk.extent.file", "extent %s: %s does not exist"
                                  % (what, full), path=desc) from None
        self.files.append(f)
        if not stat.S_ISREG(f.stat.st_mode):  # pragma: no cover - OpenFile refuses it first
            raise VmdkFormatError("vmdk.extent.file", "extent %s is not a regular file" % what,
                                  path=desc)
        return f

    def _read_extent(self, offset: int, view: memoryview) -> None:
        pos, n = 0, len(view)
        i = bisect.bisect_right(self._starts, offset) - 1
        while pos < n:
            piece = self._pieces[i]
            take = min(n - pos, piece.end - (offset + pos))
            rel = offset + pos - piece.start
            part = view[pos:pos + take]
            at = 0
            if self._parent is not None:
                for lo, hi in piece.holes(rel, rel + take):
                    if lo > rel + at:
                        piece.read(rel + at, part[at:lo - rel])
                    self._from_parent(piece.start + lo, part[lo - rel:hi - rel])
                    at = hi - rel
            if at < take:
                piece.read(rel + at, part[at:])
            pos += take
            i += 1

    def _from_parent(self, offset: int, view: memoryview) -> None:
        """The parent's bytes into ``view`` (zeros past its end: a parent may be smaller)."""
        assert self._parent is not None
        have = max(0, min(len(view), self._parent.size_bytes - offset))
        if have:
            self._parent.read_into(offset, view[:have])
        if have < len(view):
            view[have:] = bytes(len(view) - have)


def _has_parent(d: Descriptor) -> bool:
    return "parentFileNameHint" in d.entries or \
        (d.parent_cid or _NO_PARENT).lower() != _NO_PARENT


def _union(a: list[Extent], b: list[Extent]) -> list[Extent]:
    """Two sorted lists of disjoint ranges merged into one."""
    out: list[Extent] = []
    for lo, hi in sorted(a + b):
        if out and lo <= out[-1][1]:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out

