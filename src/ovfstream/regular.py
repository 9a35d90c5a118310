"""Opening the files ovfstream reads: regular files (disks: or block devices), never blocking.

A FIFO named ``x.ova``, ``x.vmdk``, ``x.ovf`` or ``disk.raw`` (or a character device) would
hang the reader in ``open()`` or feed it forever.  The path is checked with ``stat`` before
it is opened, then opened with ``O_NONBLOCK`` (opening a FIFO cannot block) and checked again
on the open descriptor -- type and identity -- so a node swapped in between the two is
refused too; then the descriptor is made blocking again.  Refusals are UsageErrors (exit 2):
the operand is not something ovfstream reads.  One place for packages, members, VMDKs, raw
disks, spec files, keys and certificates.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from .atomic import node_kind
from .errors import UsageError

__all__ = ["open_regular", "open_regular_fd", "check_regular", "read_regular"]

_REGULAR = "a regular file"
_DISK = "a regular file or block device (a disk image is read by offset)"


def _accepts(mode: int, block_devices: bool) -> bool:
    return stat.S_ISREG(mode) or (block_devices and stat.S_ISBLK(mode))


def _refuse(path: str | os.PathLike[str], mode: int, block_devices: bool) -> UsageError:
    return UsageError("%s: a %s, not %s" % (os.fspath(path), node_kind(mode),
                                             _DISK if block_devices else _REGULAR))


def check_regular(path: str | os.PathLike[str], *, block_devices: bool = False
                  ) -> os.stat_result:
    """stat(path), following links; UsageError unless it is a regular file (or, with
    ``block_devices``, a block device)."""
    st = os.stat(path)
    if not _accepts(st.st_mode, block_devices):
        raise _refuse(path, st.st_mode, block_devices)
    return st


def open_regular_fd(path: str | os.PathLike[str], *, block_devices: bool = False) -> int:
    """A blocking read-only descriptor of ``path``, refused (before it can block) unless it
    is a regular file or, with ``block_devices``, a block device."""
    before = check_regular(path, block_devices=block_devices)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        now = os.fstat(fd)
        if not _accepts(now.st_mode, block_devices):
            raise _refuse(path, now.st_mode, block_devices)
        if (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
            raise UsageError("%s: replaced by another file while being opened" % os.fspath(path))
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a regular file for binary reading; anything else is refused before it can block."""
    return os.fdopen(open_regular_fd(path), "rb")


def read_regular(path: str | os.PathLike[str]) -> bytes:
    """The bytes of a small regular file (a key, a certificate)."""
    with open_regular(path) as f:
        return f.read()
