"""Test helpers: generated raw disks (sparse files, holes, zero grains, random and
compressible data, partial last grain) and the real tools the interop tests need."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Sequence

import pytest

from ovfstream.engine import PURE

# An engine whose bytes are the same in every thread and process, for tests that compare
# the bytes of separate encodes: ISA-L through python-isal (the pure-Python twin,
# OVFSTREAM_PURE=1) keeps its stream state on the C stack, and the state's address reaches
# the bytes (engine.py), rarely but really; the compiled core places the state, so there the
# default engine is tested as it is.
REPRODUCIBLE_ENGINE = "libdeflate" if PURE else "isal"

# ../shared beside the checkout: the real-world OVF corpus and the DMTF OVF schemas.  It is
# not part of the repository: tests that read it carry ``needs_shared`` (or call
# ``require_shared``), which skip with a visible reason when it is absent, so a clean clone is
# green; CI (.ci/run) sets OVFSTREAM_REQUIRE_SHARED=1, which turns those skips into failures.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
REQUIRE_SHARED_ENV = "OVFSTREAM_REQUIRE_SHARED"
GRAIN = 65536


def require_shared(*parts: str) -> Path:
    """``SHARED/parts[0]`` (or SHARED): skip the calling test when a named folder is absent,
    fail instead under OVFSTREAM_REQUIRE_SHARED=1."""
    for part in parts or ("",):
        path = SHARED / part
        if not path.is_dir():
            reason = "needs ../shared/%s beside the checkout (%s is absent)" % (part, path)
            if os.environ.get(REQUIRE_SHARED_ENV) == "1":
                pytest.fail(reason + "; %s=1 makes this a failure" % REQUIRE_SHARED_ENV,
                            pytrace=False)
            pytest.skip(reason)
    return SHARED / parts[0] if parts else SHARED


# ``@needs_shared("ovf-corpus")`` on a test, or ``pytestmark = needs_shared(...)`` on a
# module: conftest.py applies require_shared() before the test runs.
needs_shared = pytest.mark.needs_shared


def schema_dir() -> Path | None:
    """The DMTF schema folder when ../shared/ovf-schemas is present, else None: strict
    validation then runs ovfstream's own structural rules only.  (.ci/run checks that the
    folder exists before any test runs.)"""
    folder = SHARED / "ovf-schemas"
    return folder if folder.is_dir() else None


def assert_descriptor_valid(data: bytes, versions: Sequence[str] | None = None) -> None:
    """Our structural validation always; the DMTF XSDs too when ../shared has them."""
    from lxml import etree

    from ovfstream.ovf import schema, validate
    root = etree.fromstring(data)
    report = validate.check(root, tuple(versions) if versions else None)
    assert report.issues == [], [i.text(report.versions) for i in report.issues[:5]]
    folder = schema_dir()
    if folder is None and os.environ.get(REQUIRE_SHARED_ENV) == "1":
        require_shared("ovf-schemas")  # fails: CI must not drop the XSD layer silently
    if folder is not None:
        results = schema.validate(root, versions=tuple(versions) if versions else None,
                                  schema_dir=folder)
        for version, errors in results.items():
            assert errors == [], "XSD %s: %s" % (version, "\n".join(errors[:5]))


def _text_block(rng: random.Random, n: int) -> bytes:
    words = [b"ovf", b"disk", b"grain", b"stream", b"kernel", b"/usr/lib", b"\n", b"0x1f",
             b"appliance", b"Lorem", b"ipsum"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


Layout = Sequence[tuple[int, str, int]]  # (offset, kind, length): kind random|text|zero


def write_disk(path: Path, size: int, layout: Layout, *, seed: int = 1) -> Path:
    """A sparse raw image of ``size`` bytes with the given written regions (rest: holes)."""
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, kind, length in layout:
            f.seek(offset)
            if kind == "random":
                f.write(rng.randbytes(length))
            elif kind == "text":
                f.write(_text_block(rng, length))
            elif kind == "zero":  # explicit zeros: data extents that hold zero grains
                f.write(bytes(length))
            else:
                raise ValueError(kind)
    return path


MIB = 1 << 20

DISKS: dict[str, tuple[int, Layout]] = {
    "empty": (64 * MIB, []),
    "all_zero_written": (8 * MIB, [(0, "zero", 8 * MIB)]),
    "random": (8 * MIB, [(0, "random", 8 * MIB)]),
    "mixed": (100 * MIB, [(5 * MIB, "random", 3 * MIB), (40 * MIB, "text", 2 * MIB + 12345),
                          (70 * MIB, "zero", MIB), (33 * MIB - 100, "text", 300),
                          (100 * MIB - 1000, "random", 1000)]),
    "odd_size": (3 * MIB + 12345, [(0, "text", 100000), (3 * MIB, "random", 12345)]),
    "sector_tail": (2 * MIB + 4096 + 512, [(2 * MIB, "random", 4096 + 512)]),
}


def tool(name: str) -> str:
    """The path of a real tool the interop tests need; in CI its absence fails the test."""
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("%s is required in CI (.ci/run installs it)" % name)
        pytest.skip("%s not installed" % name)
    return found


def run(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([os.fspath(a) for a in args], capture_output=True, text=True)


def make_signer(common_name: str = "ovfstream test") -> "Signer":
    """A fresh RSA-2048 key and a self-signed certificate valid 2026-2036."""
    import datetime

    from ovfstream.pack import Signer
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(7).not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=3650)).sign(key, hashes.SHA256()))
    return Signer(private_key_pem=key.private_bytes(serialization.Encoding.PEM,
                                                    serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()),
                  certificate_chain_pem=cert.public_bytes(serialization.Encoding.PEM))


def make_cache_entry_lie(cache: Path) -> Path:
    """Swap the grain-table entries of the first two grains of the cache's largest entry and
    seal it with a fresh digest: an entry that checks out but points at another grain's
    marker (a writer bug or a hand-made file).  Returns the entry's path."""
    import struct

    import xxhash

    from ovfstream.cache import _HEAD
    victim = max(cache.glob("chunks-v2/*/*.span"), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes()[:-16])
    fields = _HEAD.unpack_from(data)
    gt_at = _HEAD.size + fields[4]
    table = list(struct.unpack_from("<%dI" % fields[3], data, gt_at))
    used = [i for i, v in enumerate(table) if v]
    table[used[0]], table[used[1]] = table[used[1]], table[used[0]]
    struct.pack_into("<%dI" % fields[3], data, gt_at, *table)
    victim.write_bytes(bytes(data) + xxhash.xxh3_128_digest(bytes(data)))
    return victim
