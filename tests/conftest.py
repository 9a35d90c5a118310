"""Shared fixtures over ovfs_testlib: generated disks and the real tools."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import settings

from ovfs_testlib import DISKS, Layout, require_shared, run, tool, write_disk

# CI explores the same examples on every run (a green main stays green); developers'
# runs explore new ones, and what they find becomes a regression test.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs_shared(*folders): reads ../shared/<folder>; skipped with the reason "
        "when absent, a failure under OVFSTREAM_REQUIRE_SHARED=1 (CI)")
    config.addinivalue_line(
        "markers", "native_core: tests the compiled core itself (ISA-L stream placement, the "
        "GIL-free span encoder); skipped when OVFSTREAM_PURE=1 runs the pure-Python twin")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # tryfirst: before the skip of an empty parametrization (a corpus that is not there), so
    # that CI reports the missing folder rather than "got empty parameter set".
    for mark in item.iter_markers("needs_shared"):
        require_shared(*mark.args)
    if item.get_closest_marker("native_core") is not None:
        from ovfstream.engine import PURE
        if PURE:
            pytest.skip("OVFSTREAM_PURE=1: the pure-Python twin runs; this tests the compiled core")


@pytest.fixture
def make_disk(tmp_path: Path) -> Callable[..., Path]:
    def make(name: str, size: int | None = None, layout: Layout | None = None,
             seed: int = 1) -> Path:
        if size is None:
            size, layout = DISKS[name]
        return write_disk(tmp_path / (name + ".raw"), size, layout or [], seed=seed)
    return make


@pytest.fixture
def qemu_img() -> Callable[..., subprocess.CompletedProcess[str]]:
    exe = tool("qemu-img")

    def call(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
        return run(exe, *args)
    return call
