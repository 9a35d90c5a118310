"""Work on other machines: executors by name, and one disk's spans encoded by workers.

``--executor local`` runs here; ``--executor dask://HOST:PORT`` connects to a Dask
distributed scheduler (the optional extra ``ovfstream[dask]``) and uses its workers through
the standard ``concurrent.futures.Executor`` interface, so the library takes any executor.

Spreading one disk (``pack DISK --executor ...``): the local process opens the disk too (for
the span plan, the sample key of the descriptor and the change check) and sends each worker
only what it needs to read and encode one span itself -- the path, the input format, the
span plan, the engine's name and level (and the version string it must match), the cache
folder and ``recompress`` (a qcow2's compressed clusters are copied there as here); the
worker opens the disk on the shared storage, reads the span, encodes it (through the cache
when there is one) and returns the framed bytes, the grain table relative to the span, the
fingerprints, the payload size and how many grains it copied.  The local writer places them in order, so the
output is the local pack's, byte for byte.  At most ``window`` spans are in flight: the
memory is bounded by the window, not the disk.

Worker loss: Dask reschedules the task of a worker that died (up to its
``distributed.scheduler.allowed-failures``); if that runs out, the pack fails with
WorkerLostError (exit 1) and, as for any failure, leaves no output.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import os
import re
import threading
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, Iterator

from .errors import OvfstreamError, UnsupportedError, UsageError
from .sources.base import DiskSource, SourceChangedError, SpanPlan
from .vmdk import layout as L

__all__ = ["open_executor", "remote_spans", "encode_remote_span", "SpanTask",
           "WorkerLostError", "worker_failures", "DEFAULT_WINDOW"]

DEFAULT_WINDOW = 8  # spans in flight: up to ~33 MB each comes back
_DASK_RE = re.compile(r"^dask://([^/\s:]+|\[[0-9a-fA-F:]+\]):(\d{1,5})/?$")


class WorkerLostError(OvfstreamError):
    """A worker died (or the scheduler went away) and the work was not finished elsewhere."""


def worker_failures() -> tuple[type[BaseException], ...]:
    """Exceptions an executor raises when its workers, not the work, failed."""
    kinds: list[type[BaseException]] = [concurrent.futures.CancelledError,
                                        concurrent.futures.BrokenExecutor]
    with contextlib.suppress(ImportError):
        from distributed import KilledWorker
        from distributed.comm.core import CommClosedError
        kinds += [KilledWorker, CommClosedError]
    return tuple(kinds)


@contextlib.contextmanager
def open_executor(spec: str | None, *, timeout: float = 30.0) -> Iterator[Executor | None]:
    """None for ``local`` (or None); a Dask client's executor for ``dask://HOST:PORT``."""
    if spec is None or spec == "local":
        yield None
        return
    match = _DASK_RE.match(spec)
    if match is None:
        raise UsageError("--executor %r: allowed local or dask://HOST:PORT" % spec)
    try:
        from distributed import Client
    except ImportError:
        raise UsageError("--executor %s: Dask is not installed (pip install 'ovfstream[dask]')"
                         % spec) from None
    address = "tcp://%s:%s" % match.groups()
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise WorkerLostError("--executor %s: cannot reach the scheduler at %s (%s)"
                              % (spec, address, exc)) from None
    try:
        yield client.get_executor()
    finally:
        client.close()


@dataclass(frozen=True)
class SpanTask:
    """What a worker needs to read and encode spans of one disk on its own."""

    path: str                 # absolute, on storage the workers share
    input_format: str
    size_bytes: int           # the virtual size the client saw
    file_size: int            # the top file's size and mtime when the client opened it
    mtime_ns: int
    engine: str
    level: int
    engine_version: str
    cache_root: str | None
    recompress: bool = False  # copy a qcow2's compressed grains unless set (vmdk/copied.py)


_local = threading.local()


def _take_buffer() -> bytearray:
    buf = getattr(_local, "framed", None)
    if buf is None:
        from .vmdk.writer import _codec
        buf = _local.framed = bytearray(_codec.SPAN_FRAMED_BYTES)
    return buf


def encode_remote_span(task: SpanTask, plan: SpanPlan
                       ) -> tuple[bytes, bytes, bytes, int, bool, int]:
    """On a worker: (framed bytes, gt_rel, prints, payload, cache hit, grains copied) of one
    span."""
    from .cache import SpanCache
    from .engine import get_engine
    from .sources import open_source
    from .vmdk.writer import encode_plan
    engine = get_engine(task.engine, task.level)
    if engine.version != task.engine_version:
        raise UnsupportedError("worker %s: engine %s is %r, the client's is %r: its bytes could "
                               "differ; install the same versions everywhere"
                               % (os.uname().nodename, task.engine, engine.version,
                                  task.engine_version))
    with open_source(task.path, input_format=task.input_format) as source:
        top = source.files[0].stat
        if (source.size_bytes != task.size_bytes or top.st_size != task.file_size
                or top.st_mtime_ns != task.mtime_ns):
            raise SourceChangedError("source.changed", "the worker on %s sees another file "
                                     "(size or mtime differ from the client's): is the storage "
                                     "shared and the disk unchanged?" % os.uname().nodename,
                                     path=task.path)
        buf = getattr(_local, "raw", None)
        if buf is None:
            buf = _local.raw = bytearray(L.SPAN_BYTES)
        session = (SpanCache(task.cache_root).session(engine)
                   if task.cache_root is not None else None)
        out, n, gt_rel, prints, payload, copied = encode_plan(
            source, plan, buf, engine, _local, _take_buffer, session=session,
            recompress=task.recompress)
        with memoryview(out) as used:  # type: ignore[arg-type]
            framed = bytes(used[:n])
        source.check_unchanged()
    return (framed, gt_rel, prints, payload, bool(session is not None and session.hits),
            copied)


def remote_spans(executor: Executor, *, path: str, input_format: str,
                 cache_root: str | None, window: int = DEFAULT_WINDOW,
                 hits: list[int] | None = None, recompress: bool = False) -> Any:
    """A ``remote`` for write_stream_vmdk: the spans of the disk at ``path`` encoded by
    ``executor``'s workers, yielded in order, at most ``window`` in flight."""
    if window < 1:
        raise UsageError("window %d: allowed 1 or more spans in flight" % window)

    def run(source: DiskSource, engine: Any) -> Iterator[tuple[SpanPlan, bytes, int, bytes,
                                                               bytes, int, int]]:
        if source.sequential or path == "-":
            raise UsageError("%s: --executor needs a disk the workers can read at any offset "
                             "(this %s input is read in order)" % (path, source.format))
        top = source.files[0].stat
        task = SpanTask(os.path.abspath(path), input_format, source.size_bytes, top.st_size,
                        top.st_mtime_ns, engine.name, engine.level, engine.version, cache_root,
                        recompress)
        pending: collections.deque[tuple[SpanPlan, Future[Any]]] = collections.deque()
        plans = iter(source.spans())
        lost = worker_failures()

        def result(plan: SpanPlan, future: Future[Any]) -> tuple[SpanPlan, bytes, int, bytes,
                                                                 bytes, int, int]:
            try:
                framed, gt_rel, prints, payload, hit, copied = future.result()
            except lost as exc:
                raise WorkerLostError("%s: span %d (bytes %d..%d): the worker was lost and the "
                                      "executor gave up (%s: %s); nothing was written"
                                      % (path, plan.index, plan.index * L.SPAN_BYTES,
                                         (plan.index + 1) * L.SPAN_BYTES,
                                         type(exc).__name__, exc)) from None
            if hits is not None and hit:
                hits[0] += 1
            return plan, framed, len(framed), gt_rel, prints, payload, copied

        try:
            for plan in plans:
                pending.append((plan, executor.submit(encode_remote_span, task, plan)))
                if len(pending) >= window:
                    yield result(*pending.popleft())
            while pending:
                yield result(*pending.popleft())
        finally:
            for _, future in pending:
                future.cancel()
    return run
