"""pipeline.ordered_map: results in input order, bounded in flight, errors on the caller's
thread when due, nothing left running after an early close."""

from __future__ import annotations

import random
import threading
import time

import pytest

from ovfstream.errors import UsageError
from ovfstream.pipeline import check_workers, default_workers, ordered_map


@pytest.mark.parametrize("workers", [1, 2, 4, 8])
def test_results_come_in_input_order_whatever_finishes_first(workers):
    rng = random.Random(workers)
    delays = [rng.random() / 500 for _ in range(60)]

    def work(i: int) -> int:
        time.sleep(delays[i])  # later items often finish first
        return i * i

    assert list(ordered_map(work, range(60), workers=workers)) == [i * i for i in range(60)]


def test_at_most_window_items_are_in_flight():
    lock = threading.Lock()
    running = peak = 0

    def work(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.002)
        with lock:
            running -= 1
        return i

    submitted = []

    def items():
        for i in range(40):
            submitted.append(i)
            yield i

    consumed = 0
    for value in ordered_map(work, items(), workers=4, window=3):
        # The input is pulled lazily: never more than window items ahead of the consumer.
        assert len(submitted) - consumed <= 3
        assert value == consumed
        consumed += 1
    assert peak <= 3 and consumed == 40


def test_a_workers_error_is_raised_when_its_result_is_due():
    def work(i: int) -> int:
        if i == 5:
            raise ValueError("item 5")
        return i

    got = []
    with pytest.raises(ValueError, match="item 5"):
        for value in ordered_map(work, range(20), workers=3):
            got.append(value)
    assert got == [0, 1, 2, 3, 4]  # everything before the failure, in order


def test_closing_early_leaves_no_thread_running():
    started = []
    gate = threading.Event()

    def work(i: int) -> int:
        started.append(i)
        gate.wait(5)
        return i

    before = {t for t in threading.enumerate() if t.name.startswith("ovfstream")}
    results = ordered_map(work, range(1000), workers=2, window=4)
    gate.set()
    assert next(results) == 0
    results.close()  # cancels what has not started, waits for what has
    after = {t for t in threading.enumerate() if t.name.startswith("ovfstream")}
    assert after <= before
    assert len(started) < 1000


def test_check_workers():
    assert check_workers(None) == default_workers() >= 1
    assert check_workers(3) == 3
    for bad in (0, 257, -1, True, 2.0, "2"):
        with pytest.raises(UsageError, match="--parallel"):
            check_workers(bad)  # type: ignore[arg-type]
