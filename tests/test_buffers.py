"""buffers.py: the large I/O buffers are private anonymous memory, zero-filled, page-aligned,
with transparent huge pages asked for (Linux's /proc/self/smaps says which a mapping is)."""

from __future__ import annotations

import ctypes
import mmap
import sys

import pytest

from ovfstream import buffers
from ovfstream.buffers import HUGE_PAGE, anonymous

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads /proc/self/smaps")

MIB = 1 << 20


def _smaps_entry(address: int) -> tuple[str, list[str]]:
    """(the permissions, the VmFlags) of the mapping holding ``address``."""
    with open("/proc/self/smaps", encoding="ascii", errors="replace") as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        head = line.split()
        if "-" not in head[0] or ":" in head[0]:
            continue
        start, end = (int(x, 16) for x in head[0].split("-"))
        if start <= address < end:
            for flags in lines[i + 1:]:
                if flags.startswith("VmFlags:"):
                    return head[1], flags.split()[1:]
    raise AssertionError("no mapping holds %#x" % address)


def _thp_offered() -> bool:
    """A kernel built without transparent huge pages refuses MADV_HUGEPAGE (the helper then
    gives small pages); one with them says "always", "madvise" or "never" here."""
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled", encoding="ascii") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def test_a_buffer_is_private_zero_filled_and_page_aligned():
    buf = anonymous(8 * MIB)
    try:
        address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
        assert address % mmap.PAGESIZE == 0  # O_DIRECT takes it as it is
        assert buf[:] == bytes(8 * MIB)
        buf[:MIB] = b"\x5a" * MIB
        perms, vm_flags = _smaps_entry(address)
        assert perms.endswith("p"), perms  # not the shared (shmem) map of mmap.mmap(-1, n)
        if buffers._HUGEPAGE is not None and _thp_offered():
            assert "hg" in vm_flags  # MADV_HUGEPAGE: huge pages where the kernel has them
        buf.madvise(mmap.MADV_DONTNEED, 2 * HUGE_PAGE, 2 * HUGE_PAGE)  # a released tail
        assert buf[2 * HUGE_PAGE:4 * HUGE_PAGE] == bytes(2 * HUGE_PAGE)  # reads back as zeros
        assert buf[:MIB] == b"\x5a" * MIB
    finally:
        buf.close()


def test_shared_anonymous_memory_is_what_the_helper_avoids():
    # The control: Python's default anonymous map is shared, so the test above can fail.
    buf = mmap.mmap(-1, MIB)
    try:
        buf[:1] = b"x"
        perms, _ = _smaps_entry(ctypes.addressof(ctypes.c_char.from_buffer(buf)))
        assert perms.endswith("s")
    finally:
        buf.close()
