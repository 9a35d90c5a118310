"""Inputs against outputs: an output may never be one of the files being read.

Files are compared by identity (``st_dev``, ``st_ino``, following symbolic links), so a hard
link, a symbolic link or another spelling of an input's path is caught as well as the path
itself.  Temporaries cannot alias anything: atomic.py creates each one new, ``O_EXCL``.

Also here: the exception that SIGTERM/SIGHUP raise.  (Input files are opened by regular.py.)
"""

from __future__ import annotations

import os

from .errors import UsageError

__all__ = ["Inputs", "Terminated"]

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
