"""The exception hierarchy and the Finding record shared by every reader and writer.

Every error that comes from bad input names the file, the member inside a package when
there is one, the byte offset when it is known, and a stable dotted rule id
(``vmdk.grain.order``, ``ova.member.order``, ``mf.line.format``...) listed in
docs/rules.md.  One printable form::

    app.ova:disk1.vmdk@0x10400: [vmdk.grain.order] LBA 256 after LBA 384
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "OvfstreamError",
    "UsageError",
    "UnsupportedError",
    "FormatError",
    "VmdkFormatError",
    "TarFormatError",
    "ManifestFormatError",
    "CertificateFormatError",
    "OvfFormatError",
    "DigestMismatchError",
    "Finding",
    "Severity",
    "location",
]

Severity = Literal["error", "warning", "info"]


def location(path: str | os.PathLike[str] | None, member: str | None = None,
             offset: int | None = None) -> str:
    """``path:member@0xOFFSET`` with the parts that are known."""
    text = os.fspath(path) if path is not None else "<stream>"
    if member:
        text += ":" + member
    if offset is not None:
        text += "@0x%x" % offset
    return text


class OvfstreamError(Exception):
    """Base of every error ovfstream raises on purpose."""


class UsageError(OvfstreamError, ValueError):
    """An option or argument is not allowed (names the option, the value, what is allowed)."""


class UnsupportedError(OvfstreamError):
    """Valid input that ovfstream does not handle (said, never silently mangled)."""


class FormatError(OvfstreamError):
    """Input bytes break a rule of their format."""

    def __init__(self, rule: str, detail: str, *, path: str | os.PathLike[str] | None = None,
                 member: str | None = None, offset: int | None = None) -> None:
        self.rule = rule
        self.detail = detail
        self.path = os.fspath(path) if path is not None else None
        self.member = member
        self.offset = offset
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return "%s: [%s] %s" % (location(self.path, self.member, self.offset), self.rule, self.detail)

    def __reduce__(self) -> tuple[object, ...]:
        # Whole across processes (farm workers): the default would call cls(message).
        return (type(self), (self.rule, self.detail),
                {"path": self.path, "member": self.member, "offset": self.offset})

    def located(self, *, path: str | os.PathLike[str] | None = None,
                member: str | None = None, offset_base: int = 0) -> "FormatError":
        """Re-anchor an error raised on a member to the package that contains it."""
        offset = None if self.offset is None else self.offset + offset_base
        return type(self)(self.rule, self.detail,
                          path=path if path is not None else self.path,
                          member=member if member is not None else self.member,
                          offset=offset)

    def finding(self, severity: Severity = "error") -> "Finding":
        return Finding(self.rule, severity, location(self.path, self.member), self.offset, self.detail)


class VmdkFormatError(FormatError):
    """A VMDK header, marker, table or grain breaks the stream-optimized format."""


class TarFormatError(FormatError):
    """An OVA tar header or member layout is unsafe or malformed."""


class ManifestFormatError(FormatError):
    """A .mf manifest line cannot be understood."""


class CertificateFormatError(FormatError):
    """A .cert file cannot be understood."""


class OvfFormatError(FormatError):
    """The OVF descriptor is not well-formed, unsafe, or inconsistent."""


class DigestMismatchError(FormatError):
    """A digest in a manifest does not match the bytes it names."""


@dataclass(frozen=True)
class Finding:
    """One result of a check: what rule, how bad, where, and what was seen."""

    rule: str
    severity: Severity
    file: str
    offset: int | None
    message: str

    def __str__(self) -> str:
        where = self.file + ("" if self.offset is None else "@0x%x" % self.offset)
        return "%s: %s: [%s] %s" % (self.severity, where, self.rule, self.message)

    def as_dict(self) -> dict[str, object]:
        return {"rule": self.rule, "severity": self.severity, "file": self.file,
                "offset": self.offset, "message": self.message}
