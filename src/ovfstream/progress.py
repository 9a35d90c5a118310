"""Progress bars on stderr, only when stderr is a terminal (the CLI's concern, not the library's)."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

Report = Callable[[str, int, int], None]  # (label, advance bytes, total bytes)


@contextlib.contextmanager
def progress_bars(*, enabled: bool) -> Iterator[Report | None]:
    """Yield a report(label, advance, total) callback with one bar per label, or None when
    disabled or stderr is not a terminal."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)
    from .display import printable
    # markup=False and printable(): a label (a file name) is shown literally, never styled
    with Progress(TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True)) as bar:
        tasks: dict[str, int] = {}

        def report(label: str, advance: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(printable(label), total=total)
            bar.update(tasks[label], advance=advance, total=total)

        yield report
