"""Package-level fuzzing of verify, inspect and extract with the hostile classes of issue 8.

Each example is a small OVA built from a good one by a random list of damages: output-name
collisions (``t-disk1.raw``, case variants, ``.raw.zst``), markup and control characters in
names and hrefs, disks extract cannot read (descriptor-only FLAT naming /etc/passwd,
monolithic sparse, capacity over 64 TiB, huge declared capacity with little data), VMDK
descriptors with long runs of spaces or huge numbers or hostile ``ddb`` values, many Disks on
one member, a foreign ovf:format, flipped grain bytes, truncation, a stale manifest.

Every command runs through the real CLI (``cli.main``) with rich drawing for a terminal:
  - no exception escapes; exit codes are 0, 1 or 2; ``--json`` parses;
  - nothing a terminal would act on is printed (after rich's own styling);
  - extract is all or nothing: on failure neither the folder nor a temporary is left;
  - verify --deep and extract agree: a package verify passes, extract reads back whole.
Bounded: a fixed number of examples of a few hundred KB each (CI: derandomized).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import struct
import tempfile
import unicodedata
import zlib
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ovfstream import cli

from test_verify import Built, _build, manifest_for, tar_bytes

SGR = re.compile(r"\x1b\[[0-9;]*m")
DISK = "fz-disk1.vmdk"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return _build(tmp_path_factory.mktemp("fz"), "fz", ["odd_size"])


# -- damages ----------------------------------------------------------------------------------

def _sub1(pattern: bytes, repl, data: bytes) -> bytes:  # type: ignore[no-untyped-def]
    out, n = re.subn(pattern, repl, data, count=1)
    return out


def _vmdk_with_descriptor(vmdk: bytes, text: bytes) -> bytes:
    """The VMDK with its embedded descriptor replaced (cut to fit its sectors)."""
    offset = struct.unpack_from("<Q", vmdk, 28)[0] * 512
    room = struct.unpack_from("<Q", vmdk, 36)[0] * 512
    text = text[:room]
    return vmdk[:offset] + text + bytes(room - len(text)) + vmdk[offset + room:]


def _descriptor_text(vmdk: bytes) -> bytes:
    offset = struct.unpack_from("<Q", vmdk, 28)[0] * 512
    room = struct.unpack_from("<Q", vmdk, 36)[0] * 512
    return vmdk[offset:offset + room].split(b"\0", 1)[0]


HOSTILE_TEXT = ["[/bold]", "[red on red]hidden[/]", "[link=https://e.example]x[/link]",
                "&#x9b;2J", "&#x202e;cod.exe", "&#x7f;", ":warning:", "&#x85;"]
HOSTILE_RAW = ["[/x]", "\x1b[2J", "\x1b]8;;https://e.example\x07", "\x9b31m", "\u202e", "\x7f",
               "[red on red]"]


def damage(kind: str, arg: int, members: dict[str, bytes], order: list[str]) -> None:
    desc = members["fz.ovf"]
    disk = members[DISK]
    if kind in ("spaces", "ddb", "grain", "flags", "capacity") and (
            disk[:4] != b"KDMV" or len(disk) != len(dict(BASE_MEMBERS)[DISK])):
        return  # an earlier damage made it something else: nothing to edit in place
    if kind == "collision":
        name = ["fz-disk1.raw", "FZ-DISK1.raw", "fz-disk1.raw.zst", "Fz-Disk1.RAW.ZST"][arg % 4]
        if name not in members:
            members[name] = b"not the disk\n"
            order.append(name)
    elif kind == "name":
        text = HOSTILE_TEXT[arg % len(HOSTILE_TEXT)].encode()
        members["fz.ovf"] = _sub1(rb"(<(?:\w+:)?Name>)[^<]*", lambda m: m.group(1) + text, desc)
    elif kind == "href":
        text = HOSTILE_TEXT[arg % len(HOSTILE_TEXT)].encode()
        members["fz.ovf"] = _sub1(rb"</((?:\w+:)?)References>", lambda m: (
            b'<%sFile ovf:href="h%s.vmdk" ovf:id="h%d"/></%sReferences>'
            % (m.group(1), text, arg, m.group(1))), desc)
    elif kind == "flat":
        members[DISK] = (b'# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n'
                         b'createType="monolithicFlat"\nRW 6169 FLAT "/etc/passwd" 0\n')
    elif kind == "flags":
        members[DISK] = disk[:8] + struct.pack("<I", [0x3, 0x1, 0x10003][arg % 3]) + disk[12:]
    elif kind == "capacity":
        sectors = [(1 << 37) + 128, (4 << 40) // 512, 1 << 60][arg % 3]
        members[DISK] = disk[:12] + struct.pack("<Q", sectors) + disk[20:]
    elif kind == "spaces":
        line = [b"RW 1 x" + b" " * 3000 + b"y", b"ddb.c = a" + b" " * 3000 + b"b",
                b"RW " + b"9" * 4000 + b" SPARSE"][arg % 3]
        members[DISK] = _vmdk_with_descriptor(disk, line + b"\n" + _descriptor_text(disk))
    elif kind == "ddb":
        value = HOSTILE_RAW[arg % len(HOSTILE_RAW)].encode()
        members[DISK] = _vmdk_with_descriptor(disk, re.sub(
            rb'ddb.adapterType = "[^"]*"', b'ddb.adapterType = "' + value + b'"',
            _descriptor_text(disk)))
    elif kind == "dup-disks":
        members["fz.ovf"] = _sub1(rb"<((?:\w+:)?)Disk [^>]*/>", lambda m: m.group(0) + b"".join(
            m.group(0).replace(b'diskId="vmdisk1"', b'diskId="d%d"' % i)
            for i in range(1 + arg % 40)), desc)
    elif kind == "format":
        members["fz.ovf"] = _sub1(rb'format="[^"]*"', b'format="http://e.example/qcow2"', desc)
    elif kind == "grain":
        overhead = struct.unpack_from("<Q", disk, 64)[0] * 512
        size = struct.unpack_from("<I", disk, overhead + 8)[0]
        pos = overhead + 12 + arg % max(size, 1)
        members[DISK] = disk[:pos] + bytes([disk[pos] ^ 0xFF]) + disk[pos + 1:]
    elif kind == "truncate":
        members[DISK] = disk[:max(512, len(disk) * (arg % 100) // 100)]


KINDS = ["collision", "name", "href", "flat", "flags", "capacity", "spaces", "ddb", "dup-disks",
         "format", "grain", "truncate"]


@st.composite
def hostile_packages(draw: st.DrawFn) -> tuple[list[tuple[str, int]], bool]:
    damages = draw(st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 10_000)),
                            min_size=1, max_size=3))
    return damages, draw(st.booleans())


BASE_MEMBERS: list[tuple[str, bytes]] = []


def build(base: Built, damages: list[tuple[str, int]], fresh_manifest: bool) -> bytes:
    BASE_MEMBERS[:] = base.members
    members = dict(base.members)
    order = [n for n, _ in base.members]
    for kind, arg in damages:
        damage(kind, arg, members, order)
    if fresh_manifest:
        names = [n for n in order if n != "fz.mf"]
        members["fz.mf"] = manifest_for(list(members.items()), names)
    return tar_bytes([(n, members[n]) for n in order])


# -- properties -------------------------------------------------------------------------------

def acted_on(c: str) -> bool:
    return (unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")
            or unicodedata.bidirectional(c) in ("LRE", "RLE", "LRO", "RLO", "PDF", "LRI",
                                                "RLI", "FSI", "PDI", "LRM", "RLM", "ALM"))


@contextlib.contextmanager
def terminal_env() -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("FORCE_COLOR", "NO_COLOR", "TERM", "COLUMNS")}
    os.environ.update(FORCE_COLOR="1", TERM="xterm-256color", COLUMNS="200")
    os.environ.pop("NO_COLOR", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(argv))
    assert code in (0, 1, 2), (argv, code)
    for text in (out.getvalue(), err.getvalue()):
        bare = SGR.sub("", text)
        bad = [c for c in bare if c != "\n" and acted_on(c)]
        assert not bad, (argv, bad, text[:2000])
        assert "\x1b]8;" not in text
    return code, out.getvalue(), err.getvalue()


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=hostile_packages())
def test_hostile_packages_through_the_cli(base: Built, case: tuple[list[tuple[str, int]], bool]
                                          ) -> None:
    damages, fresh_manifest = case
    data = build(base, damages, fresh_manifest)
    with tempfile.TemporaryDirectory() as tmp, terminal_env():
        work = Path(tmp)
        src = work / "fz.ova"
        src.write_bytes(data)
        code, out, _err = run("verify", str(src), "--deep", "--json")
        doc = json.loads(out)
        assert (code == 0) == doc["ok"]
        verified = code == 0
        event("verify %s" % ("ok" if verified else "fails"))
        run("verify", str(src))
        code, out, _err = run("inspect", str(src))
        if code == 0:
            assert out.strip()
        for fmt in ("raw", "zst", "vmdk"):
            before = listing(work)
            dest = work / ("out-" + fmt)
            code, _out, err = run("extract", str(src), "-o", str(dest), "--format", fmt)
            event("extract %s: exit %d" % (fmt, code))
            if code == 0:
                assert dest.is_dir() and not [p for p in listing(dest) if "partial" in p]
            else:
                assert listing(work) == before, err       # all or nothing
                # what verify passes, extract reads back
                assert not (verified and fmt != "vmdk"), (damages, err)
