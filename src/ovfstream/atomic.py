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

``direct=True`` writes the temporary with O_DIRECT where its file system takes it (DirectFile):
the large sequential writes of a VMDK or an OVA then skip the copy into the page cache (and
its reclaim), which cost more system time than everything else the kernel did for a convert.
Where O_DIRECT is refused (tmpfs, some network file systems) the writes are buffered as
before; OVFSTREAM_DIRECT_IO=0 forces buffered writes.  The bytes are the same either way.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import functools
import io
import os
import signal
import stat
import threading
from typing import Any, BinaryIO, Callable, Iterator

from .buffers import anonymous
from .errors import UsageError

__all__ = ["atomic_output", "AtomicFiles", "DirectFile", "output_kind", "node_kind",
           "TEMP_SUFFIX", "signals_held", "held_until_released"]

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
    return os.urandom(4).hex()  # what secrets.token_hex(4) gives, without loading random


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


_O_DIRECT = getattr(os, "O_DIRECT", 0)
_STATX_DIOALIGN = 0x2000
_STAGE_BYTES = 1 << 20  # staging for small or unaligned writes, one O_DIRECT write when full


@functools.lru_cache(maxsize=None)
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:  # pragma: no cover - no C library to ask
        return None


def dio_alignment(fd: int) -> tuple[int, int] | None:
    """(memory, offset) alignment O_DIRECT needs on ``fd``'s file, from statx's
    STATX_DIOALIGN (Linux 6.1+); None when the file system does not offer direct I/O.  An
    older kernel or C library that cannot say gets 4096 for both: safe on every device."""
    libc = _libc()
    statx = getattr(libc, "statx", None) if libc is not None else None
    if statx is None:
        return (4096, 4096)
    buf = ctypes.create_string_buffer(256)
    if statx(fd, b"", 0x1000, _STATX_DIOALIGN, buf) != 0:  # AT_EMPTY_PATH
        return (4096, 4096)
    mask = int.from_bytes(buf.raw[0:4], "little")
    if not mask & _STATX_DIOALIGN:
        return (4096, 4096)
    mem, off = (int.from_bytes(buf.raw[152:156], "little"),
                int.from_bytes(buf.raw[156:160], "little"))
    if not (mem and off):
        return None
    return (max(mem, 1), off)


class DirectFile(io.RawIOBase):
    """A write-only file whose forward stream of writes goes out with O_DIRECT.

    The stream (the append position) keeps at most one partly filled block in a page-aligned
    staging buffer; a large write whose memory is aligned enough (the encoder's page-aligned
    framed spans) goes straight from the caller's buffer.  Writes behind the stream (an OVA
    member header patched once its size is known, the front members written last) are
    buffered writes; any part of them that falls into the staged block is patched there.  A
    forward seek past what was written goes on from the block holding the new position (the
    bytes skipped are zeros).
    close() writes the last partial block buffered and fsyncs when asked.  If the kernel
    refuses an O_DIRECT write (EINVAL), the file falls back to buffered writes for good.
    """

    def __init__(self, fd: int, alignment: tuple[int, int]) -> None:
        super().__init__()
        self._fd = fd
        self._mem_align, self._align = alignment
        self._stage = anonymous(_STAGE_BYTES)
        self._stage_at = 0       # file offset of the staging buffer's first byte (aligned)
        self._staged = 0         # bytes staged
        self._pos = 0            # the file position (seek/tell)
        self._end = 0            # the end of what was written or staged
        self._staged_dirty = False  # staged bytes changed since the last flush
        self._direct = True
        self.direct_bytes = 0    # written with O_DIRECT (for tests and the bench)

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._end}[whence]
        if base + offset < 0:
            raise OSError(errno.EINVAL, "negative seek position")
        self._pos = base + offset
        return self._pos

    def _set_direct(self, on: bool) -> None:
        flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
        fcntl.fcntl(self._fd, fcntl.F_SETFL, (flags | _O_DIRECT) if on else (flags & ~_O_DIRECT))

    def _pwrite_all(self, view: memoryview, offset: int) -> None:
        while len(view):
            n = os.pwrite(self._fd, view, offset)
            view, offset = view[n:], offset + n

    def _buffered(self, view: memoryview, offset: int) -> None:
        if self._direct:
            self._set_direct(False)
        try:
            self._pwrite_all(view, offset)
        finally:
            if self._direct:
                self._set_direct(True)

    def _direct_write(self, view: memoryview, offset: int) -> None:
        """An aligned write with O_DIRECT, or buffered once the kernel has refused it."""
        if self._direct:
            try:
                self._pwrite_all(view, offset)
                self.direct_bytes += len(view)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._direct = False
                self._set_direct(False)
        self._pwrite_all(view, offset)

    def _direct_writev(self, head: memoryview, body: memoryview, offset: int) -> None:
        """``head`` then ``body`` at ``offset`` in one O_DIRECT write (both aligned): a small
        O_DIRECT write of its own costs a round trip to the disk (1-4 ms each measured here,
        for the 2.5 KB grain table after each span), on the writer's critical path."""
        if self._direct:
            try:
                n = os.pwritev(self._fd, [head, body], offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._direct = False
                self._set_direct(False)
            else:
                self.direct_bytes += n
                if n < len(head):  # a short write: the rest one piece at a time
                    self._direct_write(head[n:], offset + n)
                    n = len(head)
                n -= len(head)
                if n < len(body):
                    self._direct_write(body[n:], offset + len(head) + n)
                return
        self._pwrite_all(head, offset)
        self._pwrite_all(body, offset + len(head))

    def _flush_stage(self, n: int) -> None:
        """Write the first ``n`` staged bytes (a multiple of the alignment) and keep the rest."""
        with memoryview(self._stage) as stage:
            self._direct_write(stage[:n], self._stage_at)
            rest = self._staged - n
            if rest:
                stage[:rest] = stage[n:self._staged]
        self._stage_at += n
        self._staged -= n

    def _aligned(self, view: memoryview) -> bool:
        """Whether O_DIRECT can take ``view``'s memory as it is."""
        return not view.readonly and (
            ctypes.addressof(ctypes.c_char.from_buffer(view)) % self._mem_align == 0)

    def _append(self, view: memoryview) -> None:
        """Write ``view`` at the end of the stream (stage_at + staged)."""
        align = self._align
        while len(view):
            if (self._staged and self._staged % align == 0 and len(view) >= _STAGE_BYTES
                    and self._aligned(view)):
                # whole blocks staged (a member's header, a span's grain table) before a
                # large aligned write: both in one write, the large one straight from the
                # caller's memory
                n = len(view) - len(view) % align
                with memoryview(self._stage) as stage:
                    self._direct_writev(stage[:self._staged], view[:n], self._stage_at)
                self._stage_at += self._staged + n
                self._staged = 0
                view = view[n:]
                continue
            if self._staged == 0 and len(view) >= align and self._aligned(view):
                n = len(view) - len(view) % align
                self._direct_write(view[:n], self._stage_at)
                self._stage_at += n
                view = view[n:]
                continue
            room = _STAGE_BYTES - self._staged
            if self._staged % align and len(view) >= align:
                room = min(room, align - self._staged % align)  # complete the block, then
            k = min(room, len(view))                           # go direct if aligned
            self._stage[self._staged:self._staged + k] = view[:k]
            self._staged += k
            view = view[k:]
            full = self._staged - self._staged % align
            if full and (self._staged == _STAGE_BYTES or len(view)):
                self._flush_stage(full)

    def write(self, data) -> int:  # type: ignore[no-untyped-def,override]
        with memoryview(data) as raw:
            view = raw.cast("B")
            n = len(view)
            self._staged_dirty = True
            pos = self._pos
            stream_end = self._stage_at + self._staged
            if pos < stream_end:
                # behind the stream: buffered, except what lands in the staged block
                k = min(n, stream_end - pos)
                head = max(0, min(k, self._stage_at - pos))
                if head:
                    self._buffered(view[:head], pos)
                if k > head:
                    at = pos + head - self._stage_at
                    self._stage[at:at + k - head] = view[head:k]
                view, pos = view[k:], pos + k
            if len(view) and pos > stream_end:
                # A forward seek: what lies between was never written (zeros).  Complete
                # the staged block with them; past it, start the stream afresh at the block
                # that holds ``pos``, its head staged as zeros.
                gap = pos - stream_end
                if self._staged % self._align:
                    fill = min(gap, self._align - self._staged % self._align)
                    self._stage[self._staged:self._staged + fill] = bytes(fill)
                    self._staged += fill
                    gap -= fill
                if gap:
                    if self._staged:
                        self._flush_stage(self._staged)
                    self._stage_at = pos - pos % self._align
                    self._staged = pos - self._stage_at
                    self._stage[:self._staged] = bytes(self._staged)
            if len(view):
                self._append(view)
            self._pos += n
            self._end = max(self._end, self._pos)
        return n

    def flush(self) -> None:
        """Write what is staged: whole blocks with O_DIRECT, the partial block buffered (it
        stays staged, so the stream goes on from an aligned offset)."""
        if self._staged and not self.closed and self._staged_dirty:
            full = self._staged - self._staged % self._align
            if full:
                self._flush_stage(full)
            if self._staged and self._staged_dirty:
                with memoryview(self._stage) as stage:
                    self._buffered(stage[:self._staged], self._stage_at)
        self._staged_dirty = False  # (close after fsync writes nothing again)

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self._staged = 0  # IOBase.close flushes again: nothing left to write
            with contextlib.suppress(BufferError):  # a failed write's traceback still
                self._stage.close()                 # holds a view of it: freed with it
            os.close(self._fd)
            super().close()


def _open_output(fd: int, direct: bool) -> BinaryIO:
    """A file object over a new temporary's descriptor: DirectFile when asked and allowed."""
    if direct and _O_DIRECT and os.environ.get("OVFSTREAM_DIRECT_IO", "1") != "0":
        alignment = dio_alignment(fd)
        if alignment is not None and alignment[1] <= _STAGE_BYTES:
            try:
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | _O_DIRECT)
            except OSError:
                pass  # refused here (tmpfs before Linux 6.6...): buffered writes
            else:
                return DirectFile(fd, alignment)  # type: ignore[return-value]
    return open(fd, "wb")


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

    def __init__(self, *, fsync: bool = True, direct: bool = False) -> None:
        self._fsync = fsync
        self._direct = direct
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
                    f = _open_output(fd, self._direct)
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
            # The temporaries go before their files are closed: a close that fails in a way
            # other than OSError must not leave one behind.
            for entry in self._entries:
                if entry.temp is not None:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.temp)
                    entry.temp = None
            self._done = True
            for entry in self._entries:
                with contextlib.suppress(OSError):
                    entry.f.close()

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
def atomic_output(path: str | os.PathLike[str], *, fsync: bool = True,
                  direct: bool = False) -> Iterator[BinaryIO]:
    """Open a fresh temporary beside ``path``; on success fsync and rename it to ``path``.
    ``direct``: write it with O_DIRECT where allowed (DirectFile; same bytes).

    On any exception (KeyboardInterrupt included) the temporary is removed and the exception
    goes on; an existing ``path`` is left untouched.  See the module notes for what may
    already exist under ``path``.
    """
    with AtomicFiles(fsync=fsync, direct=direct) as group:
        yield group.open(path)
