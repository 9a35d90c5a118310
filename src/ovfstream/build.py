"""``ovfstream build JOBS``: many appliances in one run, here or on a cluster's workers.

A jobs file (TOML, YAML or JSON, read by ovf/spec.py like a spec file) holds an
``appliance`` list; each entry has ``output``, ``disks`` and any key of the pack spec file
(name, cpus, memory, nics, product, target, ...), plus ``ovf_version`` and ``digest``.
Relative paths (output, disks, eula_file) are taken from the jobs file's folder.  Every job
is checked before any runs: an unknown key, a bad value, two jobs writing the same file or
one job writing another's disk is a UsageError naming the job.

Each job is exactly ``pack(disks, output, vm=..., target=...)`` with the VM a spec file of
the same keys would give, so its output is byte for byte that of a single ``pack`` run.
Jobs run one after the other here (each with ``parallel`` threads), or all at once on an
executor (a Dask client's workers: whole jobs, inputs and outputs on shared storage).  A job
that fails is reported with its error and leaves no output (pack writes to a temporary); the
others go on.
"""

from __future__ import annotations

import contextlib
import glob
import os
import time
from concurrent.futures import Executor, Future, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from .atomic import TEMP_SUFFIX
from .cache import SpanCache, open_cache
from .errors import OvfstreamError, UsageError
from .farm import worker_failures
from .ovf.model import VirtualMachine
from .ovf.spec import SPEC_KEYS, absolute_eula, load_table, vm_from_layers

__all__ = ["pack_many", "load_jobs", "Job", "JobOutcome", "BuildResult", "JOB_KEYS"]

JOB_KEYS: tuple[str, ...] = ("output", "disks", "ovf_version", "digest") + SPEC_KEYS
_LEVEL_KEYS = ("appliance",)


@dataclass(frozen=True)
class Job:
    """One appliance: what ``pack`` gets.  ``label`` names it in messages."""

    label: str
    output: str
    disks: tuple[str, ...]
    vm: VirtualMachine
    target: str | None = None
    ovf_version: str | None = None
    digest: str | None = None


@dataclass(frozen=True)
class JobOutcome:
    job: Job
    ok: bool
    result: dict[str, Any] | None = None   # PackResult.as_dict()
    error: str | None = None
    kind: str | None = None                # usage, format, unsupported, os, worker

    def as_dict(self) -> dict[str, object]:
        doc: dict[str, object] = {"job": self.job.label, "output": self.job.output,
                                  "ok": self.ok}
        if self.ok:
            doc["result"] = self.result
        else:
            doc["error"], doc["kind"] = self.error, self.kind
        return doc


@dataclass(frozen=True)
class BuildResult:
    jobs: tuple[JobOutcome, ...]
    executor: str
    seconds: float
    cache: dict[str, object] | None = field(default=None)

    @property
    def failed(self) -> int:
        return sum(not o.ok for o in self.jobs)

    def as_dict(self) -> dict[str, object]:
        return {"operation": "build", "executor": self.executor, "jobs": [
                    o.as_dict() for o in self.jobs],
                "succeeded": len(self.jobs) - self.failed, "failed": self.failed,
                "seconds": round(self.seconds, 6), "cache": self.cache}


def _label(index: int, entry: Mapping[str, Any]) -> str:
    name = entry.get("name") if isinstance(entry, Mapping) else None
    return "appliance[%d]%s" % (index, " (%s)" % name if isinstance(name, str) else "")


def _job(index: int, entry: object, base: Path, where: str) -> Job:
    if not isinstance(entry, Mapping):
        raise UsageError("%s: appliance[%d] must be a table with output, disks and spec keys"
                         % (where, index))
    label = _label(index, entry)
    for key in entry:
        if key not in JOB_KEYS:
            raise UsageError("%s: %s: unknown key %r (allowed: %s)"
                             % (where, label, key, ", ".join(JOB_KEYS)))
    output = entry.get("output")
    if not isinstance(output, str) or not output:
        raise UsageError("%s: %s.output: missing or not a path (an .ova or .ovf)"
                         % (where, label))
    disks = entry.get("disks")
    if isinstance(disks, str):
        disks = [disks]
    if (not isinstance(disks, (list, tuple)) or not disks
            or not all(isinstance(d, str) and d for d in disks)):
        raise UsageError("%s: %s.disks: missing or not a list of paths" % (where, label))
    out = str(base / output)
    stem, ext = os.path.splitext(os.path.basename(out))
    if ext.lower() not in (".ova", ".ovf"):
        raise UsageError("%s: %s.output %s: must end in .ova or .ovf" % (where, label, output))
    spec = absolute_eula({k: v for k, v in entry.items() if k in SPEC_KEYS},
                         base / "jobs")
    options = {}
    for key in ("ovf_version", "digest"):
        value = entry.get(key)
        if value is not None and not isinstance(value, str):
            raise UsageError("%s: %s.%s: %r is not a string" % (where, label, key, value))
        options[key] = value
    try:
        from .ovf.targets import get_target
        target = spec.get("target")
        target = get_target(target, what="target").name if target is not None else None
        vm = vm_from_layers([spec], name=stem, target=target)
    except UsageError as exc:
        raise UsageError("%s: %s: %s" % (where, label, exc)) from None
    return Job(label, out, tuple(str(base / d) for d in disks), vm, target, **options)


def load_jobs(path: str | os.PathLike[str]) -> list[Job]:
    """The jobs of a jobs file, every one checked (UsageError names the job and key)."""
    where = os.fspath(path)
    table = load_table(path, what="jobs", keys=_LEVEL_KEYS)
    for key in table:
        if key not in _LEVEL_KEYS:
            raise UsageError("%s: unknown key %r (allowed: appliance, a list of jobs)"
                             % (where, key))
    entries = table.get("appliance")
    if not isinstance(entries, list) or not entries:
        raise UsageError("%s: appliance: missing or not a list of jobs" % where)
    base = Path(where).resolve().parent
    jobs = [_job(i, entry, base, where) for i, entry in enumerate(entries)]
    check_jobs(jobs)
    return jobs


def _written(job: Job) -> list[str]:
    """Every final file a job writes."""
    out = os.path.abspath(job.output)
    if out.lower().endswith(".ova"):
        return [out]
    folder, stem = os.path.dirname(out), os.path.splitext(os.path.basename(out))[0]
    names = [stem + ".ovf", stem + ".mf", stem + ".cert"]
    names += ["%s-disk%d.vmdk" % (stem, i + 1) for i in range(len(job.disks))]
    return [os.path.join(folder, n) for n in names]


def check_jobs(jobs: Sequence[Job]) -> None:
    """Before anything runs: no two jobs write one file, no job writes another's disk."""
    owner: dict[str, Job] = {}
    for job in jobs:
        for path in _written(job):
            key = os.path.normcase(os.path.realpath(path))
            other = owner.get(key)
            if other is not None:
                raise UsageError("%s and %s both write %s: give each job its own output"
                                 % (other.label, job.label, path))
            owner[key] = job
    for job in jobs:
        for disk in job.disks:
            other = owner.get(os.path.normcase(os.path.realpath(disk)))
            if other is not None:
                raise UsageError("%s reads %s, which %s writes" % (job.label, disk, other.label))


def run_job(job: Job, settings: dict[str, Any]) -> dict[str, Any]:
    """One job (here or on a worker): pack's result as a plain dict."""
    from .pack import pack
    result = pack(list(job.disks), job.output, vm=job.vm, target=job.target,
                  ovf_version=job.ovf_version, digest=job.digest, **settings)
    return result.as_dict()


def _remove_orphans(job: Job) -> None:
    """Temporaries of this job's outputs left by a worker killed mid-write (SIGKILL leaves
    no chance to clean up): the build owns these names while it runs."""
    for path in _written(job):
        head, base = os.path.split(path)
        for temp in glob.glob(os.path.join(glob.escape(head), "." + glob.escape(base)
                                           + ".*" + TEMP_SUFFIX)):
            with contextlib.suppress(OSError):
                os.unlink(temp)


def _kind(exc: BaseException) -> str:
    from .errors import FormatError, UnsupportedError
    if isinstance(exc, UsageError):
        return "usage"
    if isinstance(exc, FormatError):
        return "format"
    if isinstance(exc, UnsupportedError):
        return "unsupported"
    if isinstance(exc, OSError):
        return "os"
    return "worker"


def pack_many(jobs: str | os.PathLike[str] | Sequence[Job], *,
              executor: Executor | None = None, cache: SpanCache | str | os.PathLike[str] | None
              = None, cache_max: int | None = None, parallel: int | None = None,
              engine: str = "isal", level: int | None = None, input_format: str = "auto",
              size: int | None = None, fsync: bool = True, recompress: bool = False,
              on_done: Callable[[JobOutcome], None] | None = None,
              progress: Callable[[str, int, int], None] | None = None) -> BuildResult:
    """Pack every job (a jobs file, or Job values); one failing job does not stop the others.

    ``executor``: None runs the jobs here, one after the other, each with ``parallel``
    threads; any concurrent.futures.Executor (a Dask client's ``get_executor()``, a
    ProcessPoolExecutor) gets every job at once.  ``cache`` is passed to every job (a folder
    on storage every worker shares).  ``on_done`` is called with each outcome as it is
    known; ``progress`` (local runs) as pack's.
    """
    started = time.perf_counter()
    job_list = load_jobs(jobs) if isinstance(jobs, (str, os.PathLike)) else list(jobs)
    check_jobs(job_list)
    span_cache = open_cache(cache, cache_max)
    settings: dict[str, Any] = {"parallel": parallel, "engine": engine, "level": level,
                                "input_format": input_format, "size": size, "fsync": fsync,
                                "cache": span_cache, "recompress": recompress}
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch is not None:  # this process's, not the workers' environment, as a local pack
        if not epoch.isdigit():
            raise UsageError("SOURCE_DATE_EPOCH=%r: allowed a whole number of seconds" % epoch)
        settings["mtime"] = int(epoch)
    from .engine import get_engine
    from .pipeline import check_workers
    check_workers(parallel)
    get_engine(engine, level)  # a bad engine or level is one usage error, not N failures
    expected = (OvfstreamError, OSError) + worker_failures()
    outcomes: list[JobOutcome] = []

    def finish(job: Job, get: Callable[[], dict[str, Any]]) -> None:
        try:
            outcome = JobOutcome(job, True, result=get())
        except expected as exc:
            outcome = JobOutcome(job, False, error=str(exc) or type(exc).__name__,
                                 kind=_kind(exc))
        if executor is not None:  # an attempt on a worker that died may have left one
            _remove_orphans(job)
        outcomes.append(outcome)
        if on_done is not None:
            on_done(outcome)

    if executor is None:
        for job in job_list:
            finish(job, lambda job=job: run_job(job, {**settings, "progress": progress}))
    else:
        futures: dict[Future[dict[str, Any]], Job] = {
            executor.submit(run_job, job, settings): job for job in job_list}
        try:
            for future in as_completed(futures):  # reported as they finish...
                finish(futures[future], future.result)
        finally:
            for future in futures:
                future.cancel()
        order = {id(job): i for i, job in enumerate(job_list)}  # ...listed in the file's order
        outcomes.sort(key=lambda o: order[id(o.job)])
    cache_doc = None
    if span_cache is not None:
        if span_cache.max_bytes is not None:
            span_cache.prune()
        cache_doc = span_cache.stats()
    name = "local" if executor is None else type(executor).__name__
    return BuildResult(tuple(outcomes), name, time.perf_counter() - started, cache_doc)
