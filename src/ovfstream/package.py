"""Opening a package for reading: an .ova file, an .ovf file with its folder, or a folder.

Gives the list of members (name, size, where the bytes are) without reading any data, so
that inspect, verify and extract share one safe way in.  OVA members come from our own
ustar walk (ova/tar.py): unsafe names, links, devices, duplicates and truncation are
refused there.  In the folder form only the descriptor's own folder is ever opened, and a
name with a separator or '..' is refused the same way as in a tar.
"""

from __future__ import annotations

import hashlib
import os
import threading
import unicodedata
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

from .errors import Finding, FormatError, TarFormatError, UsageError
from .ova import tar
from .ova.reader import TarReader
from .ova.tar import check_member_name
from .regular import open_regular, open_regular_fd

if TYPE_CHECKING:
    from .ovf.summary import Descriptor
    from .vmdk.reader import VmdkReader

__all__ = ["Member", "Package", "open_package", "MAX_SMALL_MEMBER", "FORMATS", "own_members",
           "extract_plan", "output_collisions", "hash_members"]

# Descriptors, manifests and certificates are read whole; nothing larger is accepted.
MAX_SMALL_MEMBER = 16 << 20

FORMATS = ("raw", "vmdk", "zst")        # extract's --format: how each disk comes out


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    offset: int           # data offset inside the OVA; 0 for a file of the folder form
    path: str             # the file holding the bytes (the OVA, or the folder's file)
    index: int            # position in the archive (folder form: descriptor 0, rest sorted)
    mtime: int = 0        # the tar header's mtime, or the file's (whole seconds)


@dataclass
class Package:
    path: str
    form: str                        # "ova" or "ovf"
    members: list[Member]
    descriptor: Member
    findings: list[Finding] = field(default_factory=list)
    # name -> member: a lookup per File reference must not scan the list (N x N for N files)
    _by_name: dict[str, Member] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_name = {}
        for m in self.members:
            self._by_name.setdefault(m.name, m)

    def member(self, name: str) -> Member | None:
        return self._by_name.get(name)

    def location(self, member: Member | None = None) -> str:
        return self.path + (":" + member.name if member is not None and self.form == "ova" else "")

    def open(self, member: Member, *, buffering: int = -1) -> BinaryIO:
        """The member's file positioned at its first byte (``buffering``: as open())."""
        f = os.fdopen(open_regular_fd(member.path), "rb", buffering=buffering)
        try:
            f.seek(member.offset)
        except BaseException:
            f.close()
            raise
        return f

    def open_vmdk(self, member: Member, fileobj: BinaryIO | None = None) -> "VmdkReader":
        """A VMDK reader over ``member``: inside the OVA (errors name the OVA and the member)
        or the folder's file; over ``fileobj`` (the member's file, which the caller closes)
        when given."""
        from .vmdk.reader import VmdkReader
        inside = self.form == "ova"
        return VmdkReader(fileobj if fileobj is not None else member.path,
                          name=self.path if inside else member.path,
                          member=member.name if inside else None,
                          base_offset=member.offset, size=member.size)

    def read_small(self, member: Member) -> bytes:
        if member.size > MAX_SMALL_MEMBER:
            raise TarFormatError("ova.member.size", "%s is %d bytes, more than the %d a "
                                 "descriptor, manifest or certificate may have"
                                 % (member.name, member.size, MAX_SMALL_MEMBER),
                                 path=self.path, member=member.name)
        with self.open(member) as f:
            data = f.read(member.size)
        if len(data) != member.size:
            raise TarFormatError("ova.tar.truncated", "%s: %d of %d bytes"
                                 % (member.name, len(data), member.size),
                                 path=self.path, member=member.name)
        return data


def _open_ova(path: str) -> Package:
    members: list[Member] = []
    with open_regular(path) as f:
        reader = TarReader(f, path=path)
        for entry in reader.members():
            members.append(Member(entry.name, entry.size, entry.data_offset, path, len(members),
                                  entry.mtime))
        findings = list(reader.findings)
    ovfs = [m for m in members if m.name.lower().endswith(".ovf")]
    if not ovfs:
        raise TarFormatError("ova.descriptor.missing", "no .ovf descriptor among %d members"
                             % len(members), path=path)
    if len(ovfs) > 1:
        findings.append(Finding("ova.descriptor.many", "warning", path, ovfs[1].offset,
                                "%d descriptors; the first, %s, is used"
                                % (len(ovfs), ovfs[0].name)))
    return Package(path, "ova", members, ovfs[0], findings)


def _open_folder(descriptor_path: str) -> Package:
    folder = os.path.dirname(os.path.abspath(descriptor_path))
    name = os.path.basename(descriptor_path)
    with open_regular(descriptor_path) as f:       # a FIFO named *.ovf is refused, not read
        st = os.fstat(f.fileno())
    members = [Member(name, st.st_size, 0, descriptor_path, 0, int(st.st_mtime))]
    for entry in sorted(os.listdir(folder)):
        full = os.path.join(folder, entry)
        if entry == name or not os.path.isfile(full) or os.path.islink(full):
            continue
        try:
            check_member_name(entry)
        except TarFormatError:
            continue  # not something a descriptor may reference
        st = os.stat(full)
        members.append(Member(entry, st.st_size, 0, full, len(members), int(st.st_mtime)))
    return Package(os.path.abspath(descriptor_path), "ovf", members, members[0])


def open_package(path: str | os.PathLike[str]) -> Package:
    """An .ova file, an .ovf file (its folder holds the rest), or a folder with one .ovf."""
    text = os.fspath(path)
    if os.path.isdir(text):
        ovfs = sorted(e for e in os.listdir(text) if e.lower().endswith(".ovf"))
        if len(ovfs) != 1:
            raise UsageError("%s: a package folder must hold exactly one .ovf (found %d)"
                             % (text, len(ovfs)))
        return _open_folder(os.path.join(text, ovfs[0]))
    if not os.path.exists(text):
        raise FileNotFoundError(2, "No such file or directory", text)
    if text.lower().endswith(".ovf"):
        return _open_folder(text)
    with open_regular(text) as f:
        head = f.read(tar.BLOCK)
    if text.lower().endswith(".ova") or head[257:262] == b"ustar":
        return _open_ova(text)
    raise UsageError("%s: not an .ova, an .ovf or a package folder" % text)


# -- what extract writes ----------------------------------------------------------------------

def own_members(pkg: Package, descriptor: "Descriptor") -> list[Member]:
    """The members that make the package: every OVA member; in the folder form (whose folder
    may hold anything: the source raw images, other packages) the descriptor, its .mf and
    .cert, and the files the descriptor references."""
    if pkg.form == "ova":
        return list(pkg.members)
    stem = os.path.splitext(pkg.descriptor.name)[0]
    own = {pkg.descriptor.name, stem + ".mf", stem + ".cert", *(f.href for f in descriptor.files)}
    return [m for m in pkg.members if m.name in own]


def disk_hrefs(descriptor: "Descriptor") -> set[str]:
    """The hrefs of the files a Disk points at (the VMDKs extract inflates)."""
    disk_files = {d.file_ref for d in descriptor.disks}
    return {f.href for f in descriptor.files if f.id in disk_files}


def extract_plan(pkg: Package, descriptor: "Descriptor", fmt: str
                 ) -> list[tuple[Member, str, bool]]:
    """(member, output name, is a disk to inflate) for each file ``extract --format fmt``
    writes, in member order: a disk becomes STEM.raw or STEM.raw.zst (fmt "vmdk": the
    member as is); every other member keeps its name."""
    disks = disk_hrefs(descriptor) if fmt != "vmdk" else set()
    plan = []
    for m in own_members(pkg, descriptor):
        if m.name in disks:
            name = os.path.splitext(m.name)[0] + (".raw.zst" if fmt == "zst" else ".raw")
            plan.append((m, name, True))
        else:
            plan.append((m, m.name, False))
    return plan


def _fold(name: str) -> str:
    # Names that one file system would make one file: case-insensitive ones (macOS, Windows,
    # casefolded ext4) and those that normalise Unicode (APFS, HFS+) included.
    return unicodedata.normalize("NFC", name).casefold()


def output_collisions(plan: list[tuple[Member, str, bool]]) -> list[tuple[str, str, str]]:
    """(first member, second member, output name) for each output name the plan uses twice
    (compared without case and Unicode normalisation): one would overwrite the other."""
    seen: dict[str, Member] = {}
    out = []
    for m, name, _disk in plan:
        first = seen.setdefault(_fold(name), m)
        if first is not m:
            out.append((first.name, m.name, name))
    return out


_HASH_CHUNK = 8 << 20


def hash_members(pkg: Package, members: list[Member], algorithms: set[str], *,
                 stop: threading.Event | None = None) -> dict[str, dict[str, str]]:
    """{member: {algorithm: hex}} reading each member once in large sequential reads.
    A set ``stop`` ends the work early (the result is then incomplete)."""
    out: dict[str, dict[str, str]] = {}
    buf = bytearray(_HASH_CHUNK)
    view = memoryview(buf)
    for m in members:
        hashers = {a: hashlib.new(a) for a in sorted(algorithms)}
        with pkg.open(m) as f:
            left = m.size
            while left and not (stop is not None and stop.is_set()):
                n = f.readinto(view[:min(left, _HASH_CHUNK)])
                if not n:
                    raise FormatError("ova.tar.truncated", "member data ends %d bytes early"
                                      % left, path=pkg.path, member=m.name)
                for h in hashers.values():
                    h.update(view[:n])
                left -= n
        out[m.name] = {a: h.hexdigest() for a, h in hashers.items()}
    return out
