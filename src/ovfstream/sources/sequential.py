"""Sources read once, front to back: standard input, a zstd-compressed raw disk.

The VMDK writer calls ``read_span`` from its worker threads in submission order but
concurrently (pipeline.ordered_map).  A stream has one position, so span i must take the
stream's next bytes: each ``read_span`` waits for its turn, reads (outside the lock: the other
workers keep encoding meanwhile) and passes the turn on.  Memory stays that of the spans in
flight: nothing is read ahead.

No worker may wait for a turn that never comes: a failed read records the failure and wakes
every waiter, and ``stop()`` (the writer gave up early: an encoder failed, the output broke,
Ctrl-C) does the same, so closing the pipeline joins every thread.  The waiters raise
``StreamStopped``; the writer reports the first failure, in span order.

A stream's holes are unknown: the extents are the whole disk, every span is read (the encoder
still drops zero grains), and a random-access ``read_at`` is refused.
"""

from __future__ import annotations

import threading

from ..errors import OvfstreamError, UnsupportedError
from .base import DiskSource, SpanPlan

__all__ = ["SequentialSource", "StreamStopped"]


class StreamStopped(OvfstreamError):
    """Raised to a reader waiting for its turn once the stream failed or was stopped."""


class SequentialSource(DiskSource):
    """A DiskSource whose bytes come from one forward-only stream.

    Subclasses set the usual attributes with ``extents = [(0, size_bytes)]``, call
    ``_sized()`` and implement ``_read_stream(view)`` (fill ``view`` with the stream's next
    bytes; a FormatError when it ends first) and ``_check_end()`` (the stream holds nothing
    after ``size_bytes``; a FormatError when it does).
    """

    sequential = True
    _pos = 0          # stream bytes consumed by read_span so far
    _next_span = 0    # the span whose turn it is
    _failure: BaseException | None = None

    def _start_turns(self) -> None:
        self._turn = threading.Condition()

    # -- what subclasses implement ---------------------------------------------------------

    def _read_stream(self, view: memoryview) -> None:
        raise NotImplementedError

    def _check_end(self) -> None:
        raise NotImplementedError

    # -- spans in order --------------------------------------------------------------------

    def read_span(self, plan: SpanPlan, buf: bytearray) -> memoryview:
        with self._turn:
            if plan.index < self._next_span:
                raise ValueError("span %d asked again: a stream is read once" % plan.index)
            while self._next_span != plan.index and self._failure is None:
                self._turn.wait()
            if self._failure is not None:
                raise StreamStopped("%s: span %d not read: the stream stopped before it (%s)"
                                    % (self.path, plan.index, self._failure))
        try:
            view = DiskSource.read_span(self, plan, buf)
            if plan.index == self.n_spans - 1:
                self._check_end()
        except BaseException as exc:
            self._fail(exc)
            raise
        with self._turn:
            self._next_span = plan.index + 1
            self._turn.notify_all()
        return view

    def _read_extent(self, offset: int, view: memoryview) -> None:
        if offset != self._pos:  # the writer's spans cover the disk in order, once
            raise ValueError("stream read at %d, but its position is %d" % (offset, self._pos))
        self._read_stream(view)
        self._pos += len(view)

    def read_at(self, offset: int, length: int) -> bytes:
        raise UnsupportedError("%s: a stream is read once, front to back: no read at %d"
                               % (self.path, offset))

    def _fail(self, exc: BaseException) -> None:
        with self._turn:
            if self._failure is None:
                self._failure = exc
            self._turn.notify_all()

    def stop(self) -> None:
        """Wake every reader waiting for its turn (they raise StreamStopped)."""
        self._fail(StreamStopped("stopped by the writer"))
