"""Ordered, bounded parallel map: spans -> worker threads -> results in input order.

The writer consumes results strictly in order; at most ``window`` spans are in flight, so
memory is constant in disk size.  A worker's exception is re-raised on the caller's thread
when its result is due; closing the iterator early cancels what has not started and waits
for what has, so no thread outlives the call.
"""

from __future__ import annotations

import collections
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

from .errors import UsageError

__all__ = ["ordered_map", "default_workers", "check_workers"]

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """The CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def check_workers(parallel: int | None) -> int:
    if parallel is None:
        return default_workers()
    if isinstance(parallel, bool) or not isinstance(parallel, int) or not 1 <= parallel <= 256:
        raise UsageError("--parallel %r: allowed a whole number from 1 to 256" % (parallel,))
    return parallel


def ordered_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int,
                window: int | None = None) -> Iterator[R]:
    """Yield fn(item) for each item, in order, computed by ``workers`` threads."""
    if workers <= 1:
        for item in items:
            yield fn(item)
        return
    window = window or 2 * workers
    pending: collections.deque[Future[R]] = collections.deque()
    source = iter(items)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ovfstream") as pool:
        try:
            for item in source:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()
