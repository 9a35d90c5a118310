"""Opening the files verify, inspect and extract read: regular files only, never blocking.

A FIFO named ``x.ova``, ``x.vmdk`` or ``x.ovf`` (or a device) would hang the reader in
``open()`` or feed it forever.  The path is checked with ``stat`` before it is opened, then
opened with ``O_NONBLOCK`` (opening a FIFO cannot block) and checked again on the open
descriptor, so a node swapped in between the two is refused too.  Refusals are UsageErrors
(exit 2): the operand, or the package folder's descriptor, is not something ovfstream reads.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from .errors import UsageError

__all__ = ["open_regular", "check_regular"]

_KINDS = ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
          (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


def _refuse(path: str, mode: int) -> UsageError:
    kind = next((name for test, name in _KINDS if test(mode)), "special file")
    return UsageError("%s: a %s, not a regular file; packages and disks are read from regular "
                      "files only" % (path, kind))


def check_regular(path: str | os.PathLike[str]) -> os.stat_result:
    """stat(path), following links; UsageError unless it is a regular file."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(os.fspath(path), st.st_mode)
    return st


def open_regular(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a regular file for binary reading; anything else is refused before it can block."""
    check_regular(path)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(os.fspath(path), st.st_mode)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
