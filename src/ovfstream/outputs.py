"""Inputs against outputs: an output may never be one of the files being read.

Files are compared by identity (``st_dev``, ``st_ino``, following symbolic links), so a hard
link, a symbolic link or another spelling of an input's path is caught as well as the path
itself.  Temporaries cannot alias anything: atomic.py creates each one new, ``O_EXCL``.

Also here: the type check of small input files (spec, key, certificate) before they are
opened, so that a FIFO cannot hang a run, and the exception that SIGTERM/SIGHUP raise.
"""

from __future__ import annotations

import os
import stat

from .atomic import node_kind
from .errors import UsageError

__all__ = ["Inputs", "Terminated", "read_input_file", "check_input_node"]

FileId = tuple[int, int]


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived: unwinds (and cleans up) exactly as Ctrl-C does."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class Inputs:
    """The identities of the files an operation reads, to refuse them as outputs."""

    def __init__(self) -> None:
        self._by_id: dict[FileId, str] = {}

    def add(self, path: str | os.PathLike[str], st: os.stat_result | None = None) -> None:
        """Record ``path`` (its ``st`` if already known, e.g. from fstat of the open file)."""
        if st is None:
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                return  # not there: nothing to protect (its reader says so)
        self._by_id.setdefault((st.st_dev, st.st_ino), os.fspath(path))

    def check_output(self, path: str | os.PathLike[str],
                     st: os.stat_result | None = None) -> None:
        """UsageError when ``path`` is (or resolves to) one of the inputs."""
        if st is None:
            try:
                st = os.stat(path)
            except (FileNotFoundError, NotADirectoryError):
                return
        source = self._by_id.get((st.st_dev, st.st_ino))
        if source is not None:
            shown = os.fspath(path)
            same = "" if os.path.abspath(shown) == os.path.abspath(source) else \
                " (the same file as %s)" % source
            raise UsageError("%s: this output is also an input%s; writing it would destroy "
                             "what is being read" % (shown, same))

    def check_outputs(self, paths: list[str]) -> None:
        for path in paths:
            self.check_output(path)


def check_input_node(path: str | os.PathLike[str], *, allowed: str = "a regular file"
                     ) -> os.stat_result:
    """Stat ``path`` (following links) and refuse anything but a regular file: a FIFO or a
    device would block or never end.  Returns the stat result."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise UsageError("%s: a %s, not %s" % (os.fspath(path), node_kind(st.st_mode), allowed))
    return st


def read_input_file(path: str | os.PathLike[str], inputs: Inputs | None = None) -> bytes:
    """The bytes of a small input file (a key, a certificate), checked to be a regular file
    and opened non-blocking, so that a FIFO swapped in after the check cannot hang."""
    check_input_node(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError("%s: a %s, not a regular file" % (os.fspath(path),
                                                                node_kind(st.st_mode)))
        if inputs is not None:
            inputs.add(path, st)
        os.set_blocking(fd, True)
        with open(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)
