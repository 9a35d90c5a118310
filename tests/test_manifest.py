"""manifest.py: canonical rendering, tolerant parsing of real manifests, one test per rule."""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ovfstream.errors import ManifestFormatError, UsageError
from ovfstream.manifest import (
    DIGESTS,
    MAX_MANIFEST_BYTES,
    RULES,
    ManifestEntry,
    manifest_size,
    parse_manifest,
    render_manifest,
)

from ovfs_testlib import SHARED, needs_shared

CORPUS = SHARED / "ovf-corpus"
H256 = hashlib.sha256(b"x").hexdigest()
H1 = hashlib.sha1(b"x").hexdigest()


def rules(findings: list) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(f.rule, f.severity) for f in findings]


# -- rendering -------------------------------------------------------------------------------
def test_render_canonical_lines() -> None:
    out = render_manifest([("app.ovf", "sha256", H256), ("app-disk1.vmdk", "sha1", H1)])
    assert out == ("SHA256(app.ovf)= %s\nSHA1(app-disk1.vmdk)= %s\n" % (H256, H1)).encode()
    assert manifest_size(["app.ovf"], "sha256") + manifest_size(["app-disk1.vmdk"], "sha1") == len(out)


@pytest.mark.parametrize("entry", [("a", "md5", "0" * 32), ("a", "SHA256", H256),
                                   ("a", "sha256", H256.upper()), ("a", "sha256", H256[:-1]),
                                   ("a", "sha1", H256), ("a\nb", "sha256", H256), ("", "sha256", H256),
                                   ("a", "sha256", "g" * 64)])
def test_render_refuses_bad_entries(entry: tuple[str, str, str]) -> None:
    with pytest.raises(UsageError):
        render_manifest([entry])


def test_manifest_size_refuses_unknown_algorithm() -> None:
    with pytest.raises(UsageError):
        manifest_size(["a"], "sha384")


@pytest.mark.interop
@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="coreutils sha256sum missing")
def test_coreutils_tag_output_is_accepted_as_bsd_style(tmp_path: Path) -> None:
    (tmp_path / "f.vmdk").write_bytes(b"payload")
    out = subprocess.run(["sha256sum", "--tag", "f.vmdk"], cwd=tmp_path, check=True,
                         capture_output=True).stdout
    assert out.startswith(b"SHA256 (f.vmdk) = ")
    entries, findings = parse_manifest(out)
    assert entries[0].hexdigest == hashlib.sha256(b"payload").hexdigest()
    assert rules(findings) == [("mf.line.canonical", "warning")]


@pytest.mark.interop
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl CLI missing")
def test_openssl_dgst_output(tmp_path: Path) -> None:
    # OpenSSL 1.x prints the canonical 'SHA256(f)= h'; OpenSSL 3 prints 'SHA2-256(f)= h', the
    # token FORMATS.md 3 warns about: it must be reported, never silently taken.
    (tmp_path / "f.vmdk").write_bytes(b"payload")
    out = subprocess.run(["openssl", "dgst", "-sha256", "f.vmdk"], cwd=tmp_path, check=True,
                         capture_output=True).stdout
    entries, findings = parse_manifest(out)
    if out.startswith(b"SHA2-256"):
        assert entries == [] and rules(findings) == [("mf.algorithm", "error")]
    else:
        assert out == render_manifest([("f.vmdk", "sha256", hashlib.sha256(b"payload").hexdigest())])
        assert findings == []


# -- real manifests --------------------------------------------------------------------------
@needs_shared("ovf-corpus")
def test_corpus_cot_sha256_is_canonical() -> None:
    entries, findings = parse_manifest((CORPUS / "cot" / "ubuntu.2.0.mf").read_bytes(), path="u.mf")
    assert findings == []
    assert [(e.name, e.algorithm, e.canonical) for e in entries] == \
        [("ubuntu.2.0.ovf", "sha256", True), ("ubuntu.2.0-disk1.vmdk", "sha256", True)]
    assert entries[0].hexdigest == "4aacc96f73bc1e0912414b80a576f62fa8d22386a2c34c489e88ee42ec71de9b"


@needs_shared("ovf-corpus")
def test_corpus_ovf_digest_matches_cot_and_ovftool() -> None:
    for folder, stem in (("cot", "ubuntu.2.0"), ("virtualbox", "tdAppliance1-t4-ovftool-4.1.0"),
                         ("govmomi", "ttylinux-pc_i486-16.1")):
        entries, _ = parse_manifest((CORPUS / folder / (stem + ".mf")).read_bytes())
        ovf = [e for e in entries if e.name == stem + ".ovf"][0]
        actual = hashlib.new(ovf.algorithm, (CORPUS / folder / (stem + ".ovf")).read_bytes())
        assert actual.hexdigest() == ovf.hexdigest, folder


@needs_shared("ovf-corpus")
def test_corpus_govmomi_bsd_style_is_accepted_with_warnings() -> None:
    data = (CORPUS / "govmomi" / "ttylinux-pc_i486-16.1.mf").read_bytes()
    entries, findings = parse_manifest(data, path="tty.mf")
    assert [(e.name, e.algorithm, e.canonical, e.line_no) for e in entries] == [
        ("ttylinux-pc_i486-16.1.ovf", "sha1", False, 1),
        ("ttylinux-pc_i486-16.1-disk1.vmdk", "sha1", False, 2)]
    assert rules(findings) == [("mf.line.canonical", "warning")] * 2
    assert findings[1].offset == data.index(b"\n") + 1 and findings[0].file == "tty.mf"


@needs_shared("ovf-corpus")
def test_corpus_space_padded_ovftool_manifest() -> None:
    entries, findings = parse_manifest((CORPUS / "virtualbox" / "tdAppliance1-t2.mf").read_bytes())
    assert [(e.name, e.canonical) for e in entries] == [("tdAppliance1-t2-disk1.vmdk", True)]
    assert rules(findings) == [("mf.line.canonical", "warning")]
    assert "padded" in findings[0].message


@needs_shared("ovf-corpus")
def test_corpus_ovftool_410_manifest() -> None:
    entries, findings = parse_manifest(
        (CORPUS / "virtualbox" / "tdAppliance1-t4-ovftool-4.1.0.mf").read_bytes())
    assert findings == [] and len(entries) == 3 and all(e.algorithm == "sha256" for e in entries)


# -- tolerance and rules ---------------------------------------------------------------------
@pytest.mark.parametrize("line", [b"SHA256 (a.ovf) = %s\n", b"SHA256(a.ovf) = %s\n",
                                  b"SHA256(a.ovf)=%s\n", b"SHA256(a.ovf)= %s\r\n",
                                  b"  SHA256(a.ovf)= %s\n", b"sha256(a.ovf)= %s\n",
                                  b"SHA256(a.ovf)= %s   \n", b"SHA256(a.ovf)= %s"])
def test_variants_are_accepted_as_non_canonical(line: bytes) -> None:
    data = line % H256.encode()
    entries, findings = parse_manifest(data)
    assert len(entries) == 1 and entries[0].hexdigest == H256 and not entries[0].canonical
    assert rules(findings) == [("mf.line.canonical", "warning")]


def test_uppercase_hex_is_lowered_and_reported() -> None:
    entries, findings = parse_manifest(b"SHA256(a)= %s\n" % H256.upper().encode())
    assert entries[0].hexdigest == H256
    assert rules(findings) == [("mf.line.canonical", "warning")]


def test_name_with_parentheses_and_spaces() -> None:
    entries, findings = parse_manifest(b"SHA1(disk (copy) 1.vmdk)= %s\n" % H1.encode())
    assert findings == [] and entries[0].name == "disk (copy) 1.vmdk"


def test_rule_mf_line_format() -> None:
    data = b"SHA256(a)= %s\nthis is not a line\nSHA256 a = %s\nSHA256(b)= xyz\n" % (
        H256.encode(), H256.encode())
    entries, findings = parse_manifest(data)
    assert [e.name for e in entries] == ["a"]
    assert rules(findings) == [("mf.line.format", "error")] * 3
    assert [f.offset for f in findings] == [data.index(b"this"), data.index(b"SHA256 a"),
                                            data.index(b"SHA256(b)")]


@pytest.mark.parametrize("name", [b"\xff", b"a\rb", b"a\x00", b"\x1b[2J"])
def test_rule_mf_line_format_bad_name(name: bytes) -> None:
    entries, findings = parse_manifest(b"SHA1(%s)= %s\n" % (name, H1.encode()))
    assert entries == [] and rules(findings) == [("mf.line.format", "error")]


@pytest.mark.parametrize("token", [b"SHA2-256", b"MD5", b"SHA384", b"SHA-256"])
def test_rule_mf_algorithm(token: bytes) -> None:
    entries, findings = parse_manifest(b"%s(a)= %s\n" % (token, H256.encode()))
    assert entries == [] and rules(findings) == [("mf.algorithm", "error")]


def test_rule_mf_algorithm_mixed() -> None:
    entries, findings = parse_manifest(b"SHA1(a)= %s\nSHA256(b)= %s\n" % (H1.encode(), H256.encode()))
    assert len(entries) == 2 and rules(findings) == [("mf.algorithm.mixed", "warning")]


@pytest.mark.parametrize("token,hexdigest", [(b"SHA256", H1), (b"SHA1", H256), (b"SHA512", H256)])
def test_rule_mf_digest_length(token: bytes, hexdigest: str) -> None:
    entries, findings = parse_manifest(b"%s(a)= %s\n" % (token, hexdigest.encode()))
    assert entries == [] and rules(findings) == [("mf.digest.length", "error")]


def test_rule_mf_duplicate() -> None:
    data = render_manifest([("a", "sha256", H256), ("b", "sha256", H256), ("a", "sha256", "0" * 64)])
    entries, findings = parse_manifest(data)
    assert [(e.name, e.hexdigest) for e in entries] == [("a", H256), ("b", H256)]
    assert rules(findings) == [("mf.duplicate", "error")] and "line 1" in findings[0].message


def test_rule_mf_empty() -> None:
    for data in (b"", b"\n\n", b"   "):
        entries, findings = parse_manifest(data)
        assert entries == [] and ("mf.empty", "warning") in rules(findings)


def test_rule_mf_size() -> None:
    line = render_manifest([("a", "sha256", H256)])
    parse_manifest(line * (MAX_MANIFEST_BYTES // len(line)))     # at the limit: fine (findings)
    with pytest.raises(ManifestFormatError) as exc:
        parse_manifest(bytes(MAX_MANIFEST_BYTES + 1), path="big.mf")
    assert exc.value.rule == "mf.size" and exc.value.path == "big.mf"


def test_rules_are_documented() -> None:
    assert set(RULES) == {"mf.size", "mf.line.format", "mf.line.canonical", "mf.algorithm",
                          "mf.algorithm.mixed", "mf.digest.length", "mf.duplicate", "mf.empty"}


# -- properties ------------------------------------------------------------------------------
names = st.text(st.characters(blacklist_categories=("Cs", "Cc")),
                min_size=1, max_size=60)


@st.composite
def manifests(draw: st.DrawFn) -> list[tuple[str, str, str]]:
    chosen = draw(st.lists(names, min_size=1, max_size=8, unique=True))
    algorithm = draw(st.sampled_from(sorted(DIGESTS)))
    return [(n, algorithm, hashlib.new(algorithm, n.encode()).hexdigest()) for n in chosen]


@settings(max_examples=200, deadline=None)
@given(entries=manifests())
def test_render_parse_round_trip(entries: list[tuple[str, str, str]]) -> None:
    data = render_manifest(entries)
    assert len(data) == manifest_size([n for n, _, _ in entries], entries[0][1])
    parsed, findings = parse_manifest(data)
    assert findings == []
    assert parsed == [ManifestEntry(n, a, h, i, True) for i, (n, a, h) in enumerate(entries, 1)]


@settings(max_examples=1000, deadline=None)
@given(data=st.one_of(st.binary(max_size=400),
                      st.lists(st.sampled_from([b"SHA256", b"SHA1", b"sha512", b"(", b")", b"=",
                                                b" ", b"\r", b"\n", b"a.ovf", H1.encode(), b"\xff",
                                                b"\x00", b"\x1f", "\u00e9".encode(),
                                                H256.encode(), b"\t", b"X",
                                                # issue 8: long runs a regex could backtrack on
                                                b")" * 4000, b" " * 4000, b"(" * 4000,
                                                b")= " * 2000, b"A" * 4000, b"\n" * 4000]),
                               max_size=40).map(b"".join)))
def test_fuzz_parse_only_findings(data: bytes) -> None:
    start = time.perf_counter()
    entries, findings = parse_manifest(data, path="f.mf")
    assert time.perf_counter() - start < 1.0
    for f in findings:
        assert f.rule in RULES and f.severity in ("error", "warning")
    for e in entries:
        assert re.fullmatch(r"[0-9a-f]+", e.hexdigest) and e.algorithm in DIGESTS
        # An accepted line re-renders to something the parser calls canonical.
        again, more = parse_manifest(render_manifest([(e.name, e.algorithm, e.hexdigest)]))
        assert more == [] and again[0].hexdigest == e.hexdigest and again[0].name == e.name
