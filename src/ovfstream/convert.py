"""``ovfstream convert``: one raw image to one bare stream-optimized VMDK."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .atomic import atomic_output
from .engine import get_engine
from .errors import UsageError
from .outputs import Inputs
from .pipeline import check_workers
from .sources import open_source
from .vmdk.writer import DiskStats, write_stream_vmdk

if TYPE_CHECKING:
    from .cache import SpanCache

__all__ = ["convert", "ConvertResult"]


@dataclass(frozen=True)
class ConvertResult:
    source: str
    output: str
    stats: DiskStats
    workers: int

    def as_dict(self) -> dict[str, object]:
        return {"operation": "convert", "source": self.source, "output": self.output,
                "workers": self.workers, **self.stats.as_dict()}


def convert(source: str | os.PathLike[str], output: str | os.PathLike[str], *,
            parallel: int | None = None, engine: str = "isal", level: int | None = None,
            adapter_type: str = "lsilogic", fsync: bool = True,
            progress: Callable[[int, int], None] | None = None,
            input_format: str = "auto", size: int | None = None,
            cache: SpanCache | str | os.PathLike[str] | None = None,
            cache_max: int | None = None, recompress: bool = False) -> ConvertResult:
    """Convert a disk image (raw file or block device, qcow2...) into a stream-optimized VMDK.

    ``input_format="auto"`` reads the formats sources/ has a reader for and refuses any other
    container (UnsupportedError, rule ``source.format``); ``"raw"`` takes the bytes as they are.
    ``source`` ``"-"`` reads a raw disk of ``size`` bytes from standard input; ``size`` is
    also the size of a zstd image whose frames do not record it (sources/stdin.py, zst.py).

    Writes a fresh temporary beside ``output`` and renames it on success; a failure leaves
    no ``output``.  ``output`` may not be the source (UsageError); ``/dev/null`` discards.
    A source that changes while it is read fails (rule ``source.changed``).

    ``cache``: a span cache folder (or SpanCache): spans it holds are not compressed again,
    with the same output bytes; ``cache_max`` caps it after the run (cache.py).

    A zlib qcow2's compressed clusters of 64 KiB are copied into the VMDK's grains as they
    are (vmdk/copied.py); ``recompress`` sends every grain through the engine instead.
    """
    workers = check_workers(parallel)
    eng = get_engine(engine, level)
    span_cache = None
    if cache is not None:  # the cache module loads only when one is used
        from .cache import open_cache
        span_cache = open_cache(cache, cache_max)
    out = os.fspath(output)
    if out == "-":
        raise UsageError("convert -o -: a bare VMDK is written to a file; use pack -o - to stream")
    name = os.path.basename(out)
    with open_source(source, input_format=input_format, size=size) as src:
        read = Inputs()
        for f in src.files:
            read.add(f.path, f.stat)
        read.check_output(out)
        src.check_format()
        with atomic_output(out, fsync=fsync, direct=True) as f:
            stats = write_stream_vmdk(src, f.write, file_name=name, engine=eng,
                                      workers=workers, adapter_type=adapter_type,
                                      progress=progress, cache=span_cache,
                                      recompress=recompress)
            src.check_unchanged()
    if span_cache is not None and span_cache.max_bytes is not None:
        span_cache.prune()
    return ConvertResult(os.fspath(source), out, stats, workers)
