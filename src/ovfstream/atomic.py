"""Write-to-temporary-then-rename: a failed operation never leaves a file under the final name."""

from __future__ import annotations

import contextlib
import os
from typing import BinaryIO, Iterator

__all__ = ["atomic_output", "partial_name"]


def partial_name(path: str | os.PathLike[str]) -> str:
    return os.fspath(path) + ".partial"


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[BinaryIO]:
    """Open ``path.partial`` for writing; on success fsync and rename it to ``path``.

    On any exception (KeyboardInterrupt included) the partial file is removed and the
    exception goes on; an existing ``path`` is left untouched.
    """
    final = os.fspath(path)
    temp = partial_name(final)
    f = open(temp, "wb")
    try:
        yield f
        f.flush()
        if fsync:
            os.fsync(f.fileno())
        f.close()
        os.replace(temp, final)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            f.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        if isinstance(exc, OSError) and exc.filename is None and exc.errno is not None:
            # a failed write() names no file: say which one (ENOSPC, EFBIG, EIO...)
            raise OSError(exc.errno, exc.strerror, temp) from exc
        raise
