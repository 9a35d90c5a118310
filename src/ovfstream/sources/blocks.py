"""What block-table formats (VHD, VHDX) share: file ranges that must not overlap, and
virtual block runs coalesced into a source's extents.

A hostile allocation table can point two blocks at the same bytes, or a block at the table
itself; such an image is refused rather than read twice (every allocated byte is read once).
"""

from __future__ import annotations

import os
from typing import Callable, Iterable

from ..errors import FormatError
from .base import DiskSource, Extent

__all__ = ["BlockTableSource", "Claim", "check_disjoint", "coalesce", "union"]


class BlockTableSource(DiskSource):
    """A source whose image is one file with its own tables: the constructor opens it,
    ``_open`` (the format's) reads the tables, and a failure closes whatever was opened."""

    error: type[FormatError] = FormatError  # the format's FormatError subclass

    def __init__(self, path: str | os.PathLike[str], *, size: int | None = None,
                 depth: int = 0) -> None:
        self._open_file(path)
        try:
            self._open(depth)
        except BaseException:
            self.close()
            raise
        self._sized()

    def _open(self, depth: int) -> None:
        raise NotImplementedError

    def _error(self, rule: str, detail: str, offset: int | None = None) -> FormatError:
        return self.error(rule, detail, path=self.path, offset=offset)

Claim = tuple[int, int, object]  # [start, end) in the file, and what claims it (for messages)


def check_disjoint(claims: Iterable[Claim], *, path: str, rule: str,
                   error: type[FormatError] = FormatError,
                   describe: Callable[[object], str] = str) -> None:
    """``error(rule)`` at the first overlap of ``claims``, which come sorted by start."""
    prev_end, prev_what = 0, None
    for start, end, what in claims:
        if start < prev_end:
            raise error(rule, "%s (bytes %d..%d) overlaps %s, which ends at byte %d"
                        % (describe(what), start, end, describe(prev_what), prev_end),
                        path=path, offset=start)
        prev_end, prev_what = end, what


def coalesce(ranges: Iterable[Extent]) -> list[Extent]:
    """Sorted, disjoint ``ranges`` with the adjacent ones joined."""
    out: list[Extent] = []
    for start, end in ranges:
        if out and out[-1][1] == start:
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out


def union(a: list[Extent], b: list[Extent]) -> list[Extent]:
    """The sorted, disjoint ranges covering what ``a`` or ``b`` (each sorted, disjoint) do."""
    out: list[Extent] = []
    for start, end in sorted(a + b):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out
