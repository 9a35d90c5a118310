"""Image formats recognised by their magic, so that a container is never packed as raw.

A qcow2, VMDK, VHD(X), VDI, QED, Parallels, LUKS, compressed or tar file handed to ``pack`` or
``convert`` would otherwise "succeed" and ship the container's own bytes as the guest's disk
(issue 7).  Signatures, each from its format's specification:

* qcow/qcow2: ``QFI\\xfb`` at 0, big-endian version at 4, crypt_method at 32 (QEMU
  docs/interop/qcow2.txt);
* VMDK: ``KDMV`` (hosted sparse extent, stream-optimized included) or ``COWD`` (ESX sparse)
  at 0; a text descriptor starts ``# Disk DescriptorFile`` (VMware Virtual Disk Format 5.0);
* VHDX: ``vhdxfile`` at 0 (MS-VHDX 2.2.1); VHD: footer cookie ``conectix`` in the last 512
  (or 511) bytes, or at 0 for the copy a dynamic disk keeps (VHD specification, "Hard Disk
  Footer Format");
* VDI: pre-header signature 0xbeda107f (little-endian) at 64 (VirtualBox VDICore.h);
* QED: ``QED\\0`` at 0; Parallels: ``WithoutFreeSpace``/``WithouFreSpacExt`` at 0;
* LUKS: ``LUKS\\xba\\xbe`` at 0 (cryptsetup on-disk format) -- also what a whole-disk LUKS
  guest looks like, hence the ``--input-format raw`` hint;
* zstd ``28 b5 2f fd`` (or a skippable frame ``5? 2a 4d 18``, as pzstd writes), gzip ``1f 8b 08``, xz ``fd 37 7a 58 5a 00``, bzip2 ``BZh1..9`` +
  block magic; ustar ``ustar`` at 257 (an OVA is a tar).

The probe reads at most the first 4 KiB and the last 512 bytes: a hole costs nothing.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from ..errors import UnsupportedError, UsageError

__all__ = ["INPUT_FORMATS", "RULES", "ImageFormat", "detect_format", "check_input_format",
           "require_input_format"]

RULES: dict[str, str] = {
    "source.format": "the input is a disk-image container (qcow2, VMDK, VHD/VHDX, VDI, LUKS, "
                     "compressed, tar...), not a raw disk; refused unless --input-format raw",
}

# What --input-format accepts: "auto" detects; "raw" takes the bytes as they are; a format
# name (qemu-img's; "vhd" is an alias of "vpc") insists on that format.
INPUT_FORMATS = ("auto", "raw", "qcow2", "vmdk", "vpc", "vhd", "vhdx", "zstd")
ALIASES = {"vhd": "vpc"}

_PROBE_BYTES = 4096


@dataclass(frozen=True)
class ImageFormat:
    name: str      # qemu-img's name for it where it has one
    detail: str    # what was seen, for the message


def _head_format(head: bytes) -> ImageFormat | None:
    if head[:4] == b"QFI\xfb" and len(head) >= 36:
        version = struct.unpack_from(">I", head, 4)[0]
        crypt = struct.unpack_from(">I", head, 32)[0]
        name = "qcow2" if version >= 2 else "qcow"
        detail = "%s version %d" % (name, version)
        if crypt:
            detail += ", encrypted (%s)" % {1: "AES", 2: "LUKS"}.get(crypt, "method %d" % crypt)
        return ImageFormat(name, detail)
    if head[:4] == b"KDMV":
        version = struct.unpack_from("<I", head, 4)[0] if len(head) >= 8 else 0
        return ImageFormat("vmdk", "VMDK sparse extent (KDMV, version %d)" % version)
    if head[:4] == b"COWD":
        return ImageFormat("vmdk", "VMDK ESX sparse extent (COWD)")
    if head.lstrip(b"\xef\xbb\xbf").startswith(b"# Disk DescriptorFile"):
        return ImageFormat("vmdk", "VMDK text descriptor")
    if head[:8] == b"vhdxfile":
        return ImageFormat("vhdx", "VHDX file type identifier")
    if head[:8] == b"conectix":
        return ImageFormat("vpc", "VHD footer copy at the start (dynamic or differencing VHD)")
    if len(head) >= 68 and struct.unpack_from("<I", head, 64)[0] == 0xBEDA107F:
        return ImageFormat("vdi", "VirtualBox VDI signature")
    if head[:4] == b"QED\x00":
        return ImageFormat("qed", "QED header")
    if head[:16] in (b"WithoutFreeSpace", b"WithouFreSpacExt"):
        return ImageFormat("parallels", "Parallels disk header")
    if head[:6] == b"LUKS\xba\xbe":
        return ImageFormat("luks", "LUKS header")
    if head[:4] == b"\x28\xb5\x2f\xfd":
        return ImageFormat("zstd", "zstandard frame")
    if head[1:4] == b"\x2a\x4d\x18" and head[0] & 0xF0 == 0x50:  # pzstd starts with one
        return ImageFormat("zstd", "zstandard skippable frame")
    if head[:3] == b"\x1f\x8b\x08":
        return ImageFormat("gzip", "gzip stream")
    if head[:6] == b"\xfd7zXZ\x00":
        return ImageFormat("xz", "xz stream")
    if head[:3] == b"BZh" and head[3:4].isdigit() and head[4:10] == b"1AY&SY":
        return ImageFormat("bzip2", "bzip2 stream")
    if head[257:262] == b"ustar":
        return ImageFormat("tar", "tar archive (an OVA?)")
    return None


def detect_format(fd: int, size_bytes: int) -> ImageFormat | None:
    """The container format of the open image ``fd`` of ``size_bytes``, or None for raw."""
    head = os.pread(fd, min(_PROBE_BYTES, size_bytes), 0)
    found = _head_format(head)
    if found is not None or size_bytes < 512:
        return found
    tail = os.pread(fd, 512, size_bytes - 512)
    # A fixed VHD is the raw disk followed by a 512-byte footer (511 in old Virtual PC files).
    if tail[:8] == b"conectix" or tail[1:9] == b"conectix":
        return ImageFormat("vpc", "VHD footer at the end (fixed VHD)")
    return None


def require_input_format(input_format: str) -> None:
    """UsageError for an --input-format value that is not offered."""
    if input_format not in INPUT_FORMATS:
        raise UsageError("--input-format %r: allowed %s"
                         % (input_format, ", ".join(INPUT_FORMATS)))


def check_input_format(path: str, fd: int, size_bytes: int, input_format: str) -> None:
    """UsageError for an unknown --input-format; UnsupportedError for a detected container."""
    require_input_format(input_format)
    if input_format == "raw":
        return
    found = detect_format(fd, size_bytes)
    if found is not None:
        raise UnsupportedError(
            "%s: [source.format] this is a %s image (%s), which ovfstream does not read: "
            "convert it first (qemu-img convert -O raw), or pass --input-format raw if these "
            "bytes really are the guest's disk" % (path, found.name, found.detail))
