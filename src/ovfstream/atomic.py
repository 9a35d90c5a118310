"""Write-to-temporary-then-rename: a failed operation never leaves a file under the final name.

Every output is written under a fresh temporary name beside it, ``.NAME.<random>.partial``,
created with ``O_CREAT|O_EXCL|O_NOFOLLOW``: never an existing file, never through a planted
symbolic link, never shared with a concurrent run.  The rename into place is the only step
another process can see.  Several files that make one result (the OVF folder form) are all
written first and renamed together at the end, under a lock on their folder, so a failure
leaves the previous set untouched and two concurrent runs never interleave their renames.

What may already exist under an output's name: nothing, a regular file (replaced whole by
the rename; a symbolic link at the name is itself replaced, its target left alone), or
``/dev/null`` (reached directly or through links: the output is discarded, for timing runs).
Anything else (a directory, FIFO, socket, other character or block device) is refused with
a UsageError naming the path and its type: a rename would destroy the node.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os
import secrets
import signal
import stat
import threading
from typing import Any, BinaryIO, Callable, Iterator

from .errors import UsageError

__all__ = ["atomic_output", "AtomicFiles", "output_kind", "node_kind", "TEMP_SUFFIX",
           "signals_held", "held_until_released"]

TEMP_SUFFIX = ".partial"
_NAME_MAX = 255  # bytes in one path component (Linux, and most file systems)
_HOLD = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
Handler = Callable[[int, Any], object]
_holds = 0                                  # signals_held() blocks open on the main thread
_deferred: list[tuple[Handler, int]] = []   # (handler, signal) that arrived inside them


def node_kind(mode: int) -> str:
    """A file type in words, for messages."""
    for test, name in ((stat.S_ISREG, "regular file"), (stat.S_ISDIR, "directory"),
                       (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISLNK, "symbolic link")):
        if test(mode):
            return name
    return "special file"


def _is_dev_null(st: os.stat_result) -> bool:
    if not stat.S_ISCHR(st.st_mode):
        return False
    try:
        null = os.stat(os.devnull)
    except OSError:
        return False
    return stat.S_ISCHR(null.st_mode) and st.st_rdev == null.st_rdev


def output_kind(path: str | os.PathLike[str]) -> str:
    """``"new"``, ``"file"`` (a regular file to replace) or ``"null"`` (/dev/null: discard).

    Raises UsageError for an existing node that a rename would destroy.  Symbolic links are
    followed for the test: a link to /dev/null discards, a link to a FIFO is refused.
    """
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "new"  # (or a dangling link, replaced); a missing folder fails at the open
    if stat.S_ISREG(st.st_mode):
        return "file"
    if _is_dev_null(st):
        return "null"
    raise UsageError("%s: the output exists and is a %s; an output must be a new or regular "
                     "file (replaced whole, by rename) or /dev/null (discarded)"
                     % (os.fspath(path), node_kind(st.st_mode)))


def _token() -> str:
    return secrets.token_hex(4)


def _temp_name(final: str) -> str:
    head, base = os.path.split(final)
    token = _token()
    room = _NAME_MAX - len(".." + token + TEMP_SUFFIX)
    while len(os.fsencode(base)) > room:  # a long name: shorten the temporary's copy of it
        base = base[:-1]
    return os.path.join(head, ".%s.%s%s" % (base, token, TEMP_SUFFIX))


def _create_temp(final: str) -> tuple[str, int]:
    """A new file under a fresh temporary name beside ``final``: (name, fd)."""
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
             | getattr(os, "O_CLOEXEC", 0))
    for _ in range(64):
        temp = _temp_name(final)
        try:
            return temp, os.open(temp, flags, 0o666)
        except FileExistsError:  # taken (by anyone, or a planted link): draw another name
            continue
        except (FileNotFoundError, NotADirectoryError) as exc:
            # Name the output and its folder, not the temporary the user never asked for.
            folder = os.path.dirname(final) or "."
            raise type(exc)(exc.errno, "the output's folder %s does not exist or is not a "
                            "folder" % folder, final) from None
    raise FileExistsError(errno.EEXIST, "no free temporary name beside it", final)


class _Discard(io.RawIOBase):
    """The output of ``-o /dev/null``: counts and drops bytes; seek and truncate work."""

    def __init__(self) -> None:
        super().__init__()
        self._pos = self._end = 0

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[no-untyped-def,override]
        with memoryview(data) as view:
            n = view.nbytes
        self._pos += n
        self._end = max(self._end, self._pos)
        return n

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._end}[whence]
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def truncate(self, size: int | None = None) -> int:
        self._end = self._pos if size is None else size
        return self._end


class _Entry:
    def __init__(self, final: str, temp: str | None, f: BinaryIO) -> None:
        self.final, self.temp, self.f = final, temp, f


def held_until_released(handler: Handler) -> Handler:
    """``handler`` for signal.signal, made to wait while a :func:`signals_held` block runs
    (it then runs as the block ends).  The thread mask alone cannot hold a signal: the
    kernel hands it to any thread that has it unblocked (a worker, a progress bar), and
    Python then runs the handler on the main thread wherever that is."""
    def held(signum: int, frame: Any) -> object:
        if _holds:
            _deferred.append((handler, signum))
            return None
        return handler(signum, frame)
    return held


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """SIGINT/SIGTERM/SIGHUP wait until the block is done (then act as usual): a temporary
    is created and registered for removal as one step, a cleanup or the renames run whole.
    Handlers wrapped by :func:`held_until_released` wait on the main thread; the thread
    mask holds the rest (a default action that would kill the process mid-rename)."""
    global _holds
    main = threading.current_thread() is threading.main_thread()
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _HOLD)
    except (AttributeError, OSError, ValueError):  # pragma: no cover - not POSIX
        old = None
    if main:
        _holds += 1
    try:
        yield
    finally:
        if old is not None:  # a signal pending in the kernel reaches its handler: deferred
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if main:
            _holds -= 1
            # (no call between the count and the clearing: a handler cannot run in between)
            if not _holds and _deferred:
                handler, signum = _deferred[0]
                del _deferred[:]
                handler(signum, None)  # Terminated / KeyboardInterrupt, now


def _act_on_held_signal() -> None:
    """Inside signals_held(), before a point of no return: a signal that has arrived acts
    now (its handler raises) rather than after the step it would have stopped."""
    if threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(AttributeError, OSError, ValueError):  # not POSIX
        for signum in signal.sigpending() & _HOLD:   # blocked in this thread: take it
            handler = signal.getsignal(signum)
            if signal.sigtimedwait([signum], 0) is not None and callable(handler):
                handler(signum, None)  # a held_until_released handler queues it
    if _deferred:
        handler, signum = _deferred[0]
        del _deferred[:]
        handler(signum, None)


class AtomicFiles:
    """Files written under temporary names, put in place together by :meth:`commit`.

    ``with AtomicFiles() as group:`` commits when the block ends normally and removes every
    temporary when it raises (KeyboardInterrupt included); a file already in place under a
    final name is not touched until the commit.  The renames run in the order the files were
    opened, with SIGINT/SIGTERM/SIGHUP held and an exclusive flock on each folder involved.
    """

    def __init__(self, *, fsync: bool = True) -> None:
        self._fsync = fsync
        self._entries: list[_Entry] = []
        self._stale: list[str] = []
        self._done = False

    def open(self, path: str | os.PathLike[str]) -> BinaryIO:
        """A new temporary for ``path`` (or a discarding sink for /dev/null)."""
        final = os.fspath(path)
        with signals_held():  # a signal between the creation and the append would leak it
            if output_kind(final) == "null":
                entry = _Entry(final, None, _Discard())  # type: ignore[arg-type]
            else:
                temp, fd = _create_temp(final)
                try:
                    f = open(fd, "wb")
                except BaseException:
                    os.close(fd)
                    os.unlink(temp)
                    raise
                entry = _Entry(final, temp, f)
            self._entries.append(entry)
        return entry.f

    def remove_stale(self, path: str | os.PathLike[str]) -> None:
        """At the commit, remove the regular file ``path`` if there is one (an old member)."""
        self._stale.append(os.fspath(path))

    def close(self, f: BinaryIO) -> None:
        """Flush, fsync and close a file once it is complete (frees its descriptor early)."""
        if f.closed:
            return
        f.flush()
        if self._fsync and not isinstance(f, _Discard):
            os.fsync(f.fileno())
        f.close()

    def commit(self) -> None:
        for entry in self._entries:
            self.close(entry.f)
        folders = sorted({os.path.dirname(os.path.abspath(e.final))
                          for e in self._entries if e.temp is not None})
        with signals_held(), contextlib.ExitStack() as locks:
            if len(self._entries) > 1:
                for folder in folders:
                    locks.enter_context(_folder_lock(folder))
            _act_on_held_signal()  # arrived before the first rename: nothing goes in place
            for stale in self._stale:
                if output_kind(stale) == "file":
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(stale)
            for entry in self._entries:
                if entry.temp is None:
                    continue
                output_kind(entry.final)  # still no directory/FIFO/device to destroy
                os.replace(entry.temp, entry.final)
                entry.temp = None
        self._done = True
        if self._fsync:
            for folder in folders:
                _fsync_dir(folder)

    def abort(self) -> None:
        with signals_held():  # a second signal waits until every temporary is gone
            for entry in self._entries:
                with contextlib.suppress(OSError):
                    entry.f.close()
                if entry.temp is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.temp)
                    entry.temp = None
            self._done = True

    def current_temp(self) -> str | None:
        """The temporary being written (the last one opened and not closed), for messages."""
        for entry in reversed(self._entries):
            if entry.temp is not None and not entry.f.closed:
                return entry.temp
        return None

    def __enter__(self) -> "AtomicFiles":
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
            return
        temp = self.current_temp()
        self.abort()
        if (isinstance(exc, OSError) and exc.filename is None and exc.errno is not None
                and temp is not None):
            # a failed write() names no file: say which one (ENOSPC, EFBIG, EIO...)
            raise OSError(exc.errno, exc.strerror, temp) from exc


@contextlib.contextmanager
def _folder_lock(folder: str) -> Iterator[None]:
    """An exclusive flock on the folder itself: concurrent commits into it take turns."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
                     | getattr(os, "O_CLOEXEC", 0))
    except OSError:  # pragma: no cover - the renames will say what is wrong
        yield
        return
    try:
        with contextlib.suppress(OSError):  # no flock here (some network file systems)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _fsync_dir(folder: str) -> None:
    """Make the renames durable; some file systems refuse fsync on a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[BinaryIO]:
    """Open a fresh temporary beside ``path``; on success fsync and rename it to ``path``.

    On any exception (KeyboardInterrupt included) the temporary is removed and the exception
    goes on; an existing ``path`` is left untouched.  See the module notes for what may
    already exist under ``path``.
    """
    with AtomicFiles(fsync=fsync) as group:
        yield group.open(path)
