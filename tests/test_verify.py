"""``verify`` (library and CLI) on our own packages and on every kind of damage.

Damage is made by hand, member by member: a flipped byte in each member, truncation, members
out of order, a lying ``ovf:size``, missing and extra files, hostile tar headers (names,
links, devices, duplicates, sizes past the end, bad checksums, PAX), XXE descriptors and
hostile VMDK members.  Each damage must be reported with its rule id and make the CLI exit 1.

The hostile-tar matrix and the package builders here are imported by test_inspect.py and
test_extract.py, which run the same archives through their own operation.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import re
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Iterable, Sequence

import pytest

from ovfstream import cli
from ovfstream.convert import convert
from ovfstream.errors import Finding
from ovfstream.ova.tar import END_OF_ARCHIVE, RULES as TAR_RULES, encode_header, padding_for
from ovfstream.ovf.model import VirtualMachine
from ovfstream.pack import Signer, pack
from ovfstream.verify import RULES as VERIFY_RULES, VerifyResult, verify
from ovfstream.vmdk.reader import RULES as VMDK_RULES

from ovfs_testlib import DISKS, make_signer, schema_dir, write_disk

SCHEMAS = schema_dir()  # None without ../shared: --strict runs our own structural rules only
NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.timezone.utc)   # inside the test cert's validity
SECTOR = 512
Members = list[tuple[str, bytes]]


# -- builders ---------------------------------------------------------------------------------

def read_members(path: Path) -> Members:
    """(name, bytes) of every member, in order, read by Python's tarfile (a real reader)."""
    out = []
    with tarfile.open(path) as t:
        for info in t.getmembers():
            f = t.extractfile(info)
            assert f is not None
            out.append((info.name, f.read()))
    return out


def tar_bytes(parts: Iterable[tuple[str, bytes] | bytes], *, end: bytes = END_OF_ARCHIVE) -> bytes:
    """A ustar archive: (name, data) members get our encoder's header; raw bytes go in as they are."""
    out = bytearray()
    for part in parts:
        if isinstance(part, bytes):
            out += part
            continue
        name, data = part
        out += encode_header(name, len(data), mtime=1700000000) + data + bytes(padding_for(len(data)))
    return bytes(out + end)


def write_tar(path: Path, parts: Iterable[tuple[str, bytes] | bytes], **kw: bytes) -> Path:
    path.write_bytes(tar_bytes(parts, **kw))
    return path


def raw_header(name: bytes, size: int, *, typeflag: bytes = b"0", linkname: bytes = b"",
               checksum_delta: int = 0) -> bytes:
    """A ustar header with any name/type, which encode_header (rightly) refuses to write."""
    h = bytearray(encode_header("x", size, mtime=1700000000))
    h[0:100] = name.ljust(100, b"\0")
    h[156:157] = typeflag
    h[157:257] = linkname.ljust(100, b"\0")
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % (sum(h) + checksum_delta)
    return bytes(h)


def pax_record(key: bytes, value: bytes) -> bytes:
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 2
    while len(b"%d" % n) + len(body) != n:
        n += 1
    return b"%d" % n + body


def manifest_for(members: Members, names: Sequence[str], algorithm: str = "sha256") -> bytes:
    data = dict(members)
    return b"".join(b"%s(%s)= %s\n" % (algorithm.upper().encode(), n.encode(),
                                        hashlib.new(algorithm, data[n]).hexdigest().encode())
                    for n in names)


def replace(members: Members, name: str, data: bytes) -> Members:
    assert name in dict(members)
    return [(n, data if n == name else d) for n, d in members]


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def first_grain(vmdk: bytes) -> tuple[int, int]:
    """(marker offset, compressed size) of the first grain: header overHead (u64 at 64)."""
    overhead_sectors = struct.unpack_from("<Q", vmdk, 64)[0]
    pos = overhead_sectors * SECTOR
    _lba, size = struct.unpack_from("<QI", vmdk, pos)
    assert 0 < size < 70000, "the first sector after overHead is a grain marker"
    return pos, size


def errors(result: VerifyResult) -> set[str]:
    return {f.rule for f in result.errors}


def warnings(result: VerifyResult) -> set[str]:
    return {f.rule for f in result.findings if f.severity == "warning"}


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str | os.PathLike[str]) -> tuple[int, str, str]:
    code = cli.main([os.fspath(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def expect_verify(path: Path, rules: set[str], capsys: pytest.CaptureFixture[str], *,
                  exact: bool = True, deep: bool = False) -> VerifyResult:
    """verify reports exactly (or at least) these error rules, and the CLI exits 1 naming them."""
    for rule in rules:
        assert rule in KNOWN_RULES, rule
    result = verify(path, deep=deep, now=NOW)
    got = errors(result)
    assert (got == rules) if exact else (rules <= got), (rules, result.findings)
    assert not result.ok
    code, _out, err = run_cli(capsys, "verify", path, *(["--deep"] if deep else []))
    assert code == 1, err
    for rule in rules:
        assert "[%s]" % rule in err, err
    code, out, _err = run_cli(capsys, "verify", path, "--json", *(["--deep"] if deep else []))
    doc = json.loads(out)
    assert code == 1 and doc["ok"] is False and rules <= {f["rule"] for f in doc["findings"]}
    return result


def _all_rules() -> set[str]:
    from ovfstream.cert import RULES as CERT_RULES
    from ovfstream.manifest import RULES as MF_RULES
    from ovfstream.ovf.reader import RULES as OVF_RULES
    return set(VERIFY_RULES) | set(TAR_RULES) | set(VMDK_RULES) | set(CERT_RULES) \
        | set(MF_RULES) | set(OVF_RULES)


KNOWN_RULES = _all_rules()


# -- fixtures ---------------------------------------------------------------------------------

class Built:
    """One packed OVA kept as bytes; tests write modified copies into their own tmp_path."""

    def __init__(self, path: Path, raws: list[Path], content_ids: list[str]) -> None:
        self.path = path
        self.raws = raws
        self.content_ids = content_ids
        self.members = read_members(path)
        self.stem = path.stem

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.members]

    def data(self, name: str) -> bytes:
        return dict(self.members)[name]


def _build(folder: Path, stem: str, presets: Sequence[str], **kw: object) -> Built:
    folder.mkdir(parents=True, exist_ok=True)
    raws = [write_disk(folder / ("%s.raw" % p), *DISKS[p], seed=i + 3) for i, p in enumerate(presets)]
    out = folder / ("%s.ova" % stem)
    result = pack(raws, out, vm=VirtualMachine(name=stem), fsync=False, mtime=1700000000, **kw)  # type: ignore[arg-type]
    return Built(out, raws, [d.stats.content_id for d in result.disks])


@pytest.fixture(scope="module")
def signer() -> Signer:
    return make_signer()


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Unsigned, one small disk: the base for layout damage."""
    return _build(tmp_path_factory.mktemp("small"), "small", ["odd_size"])


@pytest.fixture(scope="module")
def signed(tmp_path_factory: pytest.TempPathFactory, signer: Signer) -> Built:
    """Signed, two disks: the base for the flipped-byte matrix."""
    return _build(tmp_path_factory.mktemp("signed"), "sig", ["odd_size", "sector_tail"], signer=signer)


# -- clean packages ---------------------------------------------------------------------------

@pytest.mark.parametrize("ovf_version,signed_pkg", [("1.0", False), ("2.0", False), ("1.0", True),
                                                    ("2.0", True)])
def test_own_ova_verifies_clean(tmp_path: Path, signer: Signer, capsys: pytest.CaptureFixture[str],
                                ovf_version: str, signed_pkg: bool) -> None:
    raws = [write_disk(tmp_path / "a.raw", *DISKS["mixed"]),
            write_disk(tmp_path / "b.raw", *DISKS["odd_size"])]
    out = tmp_path / "clean.ova"
    packed = pack(raws, out, ovf_version=ovf_version, fsync=False,
                  signer=signer if signed_pkg else None)
    for strict in (False, True):
        for deep in (False, True):
            result = verify(out, strict=strict, deep=deep, schema_dir=SCHEMAS, now=NOW)
            assert result.ok and not result.errors, result.findings
            # a self-signed test certificate is the only thing worth a warning
            assert warnings(result) <= {"cert.self_signed"}, result.findings
            assert result.digests_checked == 3 and result.bytes_hashed > 0
            assert result.descriptor is not None
    # deep recomputes each disk's content id from the inflated grains: it equals pack's
    ids = sorted(result.content_ids.values())
    assert ids == sorted(d.stats.content_id for d in packed.disks)
    assert ("cert.self_signed" in warnings(result)) == signed_pkg
    code, out_text, err = run_cli(capsys, "verify", out, "--strict", "--deep", "--json",
                                  *(("--schema-dir", SCHEMAS) if SCHEMAS else ()))
    assert code == 0, err
    doc = json.loads(out_text)
    assert doc["ok"] is True and doc["errors"] == 0 and doc["digests_checked"] == 3
    code, _o, err = run_cli(capsys, "verify", out)
    assert code == 0 and "OK" in err


def test_folder_form_verifies_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = write_disk(tmp_path / "d.raw", *DISKS["mixed"])
    folder = tmp_path / "pkg"
    folder.mkdir()
    pack([raw], folder / "app.ovf", fsync=False)
    for target in (folder / "app.ovf", folder):
        result = verify(target, strict=True, deep=True, schema_dir=SCHEMAS, now=NOW)
        assert result.ok and not result.findings, result.findings
        assert result.digests_checked == 2
        assert run_cli(capsys, "verify", target, "--deep")[0] == 0
    # the folder form is checked too: damage the disk file beside the descriptor
    disk = folder / "app-disk1.vmdk"
    pos, size = first_grain(disk.read_bytes())
    disk.write_bytes(flip(disk.read_bytes(), pos + 12 + size // 2))
    expect_verify(folder / "app.ovf", {"mf.digest.mismatch"}, capsys)


def test_bare_vmdk_verifies_clean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw = write_disk(tmp_path / "d.raw", *DISKS["mixed"])
    vmdk = tmp_path / "d.vmdk"
    converted = convert(raw, vmdk, fsync=False)
    result = verify(vmdk, deep=True)
    assert result.ok and not result.findings, result.findings
    assert list(result.content_ids.values()) == [converted.stats.content_id]
    assert run_cli(capsys, "verify", vmdk, "--deep")[0] == 0
    # a marker damaged in the bare file is reported with its VMDK rule
    pos, _size = first_grain(vmdk.read_bytes())
    vmdk.write_bytes(flip(vmdk.read_bytes(), pos))          # LBA no longer grain-aligned
    expect_verify(vmdk, {"vmdk.grain.lba"}, capsys)


def test_bare_vmdk_with_damaged_header_is_a_finding(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    raw = write_disk(tmp_path / "d.raw", *DISKS["odd_size"])
    vmdk = tmp_path / "d.vmdk"
    convert(raw, vmdk, fsync=False)
    vmdk.write_bytes(flip(vmdk.read_bytes(), 4, 0x04))     # version 3 -> 7
    expect_verify(vmdk, {"vmdk.header.version"}, capsys)


# -- one flipped byte in any member -----------------------------------------------------------

def _disk_name(built: Built, i: int) -> str:
    return "%s-disk%d.vmdk" % (built.stem, i)


def _flip_case(built: Built, case: str) -> tuple[str, bytes, set[str], set[str]]:
    """(member, damaged bytes, error rules, extra error rules under --deep)."""
    stem = built.stem
    if case == "descriptor":
        name = stem + ".ovf"
        data = built.data(name)
        at = data.index(b"Virtual disk information")
        return name, flip(data, at), {"mf.digest.mismatch"}, set()
    if case == "descriptor-padding":
        name = stem + ".ovf"
        data = built.data(name)
        return name, flip(data, len(data) - 2, 0x20 ^ 0x09), {"mf.digest.mismatch"}, set()  # ' ' -> '\t'
    if case == "manifest":
        name = stem + ".mf"
        data = built.data(name)
        at = data.index(b"= ", data.index(b"disk1")) + 2      # first hex digit of disk1's digest
        new = b"0" if data[at:at + 1] != b"0" else b"1"
        damaged = data[:at] + new + data[at + 1:]
        return name, damaged, {"mf.digest.mismatch", "cert.signature"}, set()
    if case == "cert":
        name = stem + ".cert"
        data = built.data(name)
        at = data.index(b"= ") + 2
        new = b"0" if data[at:at + 1] != b"0" else b"1"
        return name, data[:at] + new + data[at + 1:], {"cert.signature"}, set()
    kind, index = case.rsplit("-", 1)
    name = _disk_name(built, int(index))
    data = built.data(name)
    pos, size = first_grain(data)
    if kind == "grain":      # inside a deflate payload: only the digest sees it without --deep
        return name, flip(data, pos + 12 + size // 2), {"mf.digest.mismatch"}, {"vmdk.grain.inflate"}
    if kind == "header":     # version 3 -> 7
        return name, flip(data, 4, 0x04), {"mf.digest.mismatch", "vmdk.header.version"}, set()
    if kind == "marker":     # the grain's LBA becomes odd
        return name, flip(data, pos), {"mf.digest.mismatch", "vmdk.grain.lba"}, set()
    raise AssertionError(case)


FLIP_CASES = ["descriptor", "descriptor-padding", "manifest", "cert",
              "grain-1", "grain-2", "header-1", "header-2", "marker-1", "marker-2"]


@pytest.mark.parametrize("case", FLIP_CASES)
def test_flipped_byte_in_any_member(signed: Built, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str], case: str) -> None:
    name, damaged, rules, deep_rules = _flip_case(signed, case)
    path = write_tar(tmp_path / "sig.ova", replace(signed.members, name, damaged))
    result = expect_verify(path, rules, capsys)
    # the digest finding names the member whose bytes no longer match its line
    blamed = _disk_name(signed, 1) if case == "manifest" else name
    digest_findings = [f for f in result.errors if f.rule == "mf.digest.mismatch"]
    assert [f.file for f in digest_findings] == ["%s:%s" % (path, blamed)] * len(digest_findings)
    if deep_rules:
        expect_verify(path, rules | deep_rules, capsys, deep=True)


def test_rebuilt_archive_is_still_clean(signed: Built, tmp_path: Path) -> None:
    """The control for the matrix above: re-taring the same members changes nothing."""
    path = write_tar(tmp_path / "sig.ova", signed.members)
    result = verify(path, deep=True, now=NOW)
    assert result.ok and warnings(result) <= {"cert.self_signed"}, result.findings
    assert sorted(result.content_ids.values()) == sorted(signed.content_ids)


# -- truncation -------------------------------------------------------------------------------

def _cut_points(built: Built) -> dict[str, int]:
    sizes = [len(d) for _, d in built.members]
    starts = []
    pos = 0
    for s in sizes:
        starts.append(pos + SECTOR)
        pos += SECTOR + s + padding_for(s)
    return {"in-first-header": 100, "in-descriptor": starts[0] + 700,
            "in-second-header": starts[1] - 300, "in-disk": starts[2] + sizes[2] // 2,
            "disk-last-byte": starts[2] + sizes[2] - 1}


@pytest.mark.parametrize("where", ["in-first-header", "in-descriptor", "in-second-header",
                                   "in-disk", "disk-last-byte"])
def test_truncated_ova(small: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       where: str) -> None:
    data = small.path.read_bytes()
    cut = _cut_points(small)[where]
    path = tmp_path / "cut.ova"
    path.write_bytes(data[:cut])
    result = expect_verify(path, {"ova.tar.truncated"}, capsys)
    assert result.errors[0].file.startswith(str(path))


def test_truncated_to_nothing_and_end_blocks(small: Built, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.ova"
    empty.write_bytes(b"")
    expect_verify(empty, {"ova.descriptor.missing"}, capsys)
    # Cut exactly after the last member: every byte is there, only the end blocks are not.
    data = small.path.read_bytes()
    assert data.endswith(END_OF_ARCHIVE)
    no_end = tmp_path / "noend.ova"
    no_end.write_bytes(data[:-len(END_OF_ARCHIVE)])
    result = verify(no_end, now=NOW)
    assert result.ok and warnings(result) == {"ova.tar.end"}, result.findings


# -- manifest, sizes, references ---------------------------------------------------------------

def test_manifest_lists_missing_file(small: Built, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    mf = small.data("small.mf") + b"SHA256(ghost-disk9.vmdk)= " + b"ab" * 32 + b"\n"
    path = write_tar(tmp_path / "small.ova", replace(small.members, "small.mf", mf))
    result = expect_verify(path, {"mf.file.missing"}, capsys)
    assert "ghost-disk9.vmdk" in result.errors[0].message


def test_wrong_ovf_size(small: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    disk = _disk_name(small, 1)
    real = len(small.data(disk))
    desc = small.data("small.ovf")
    needle = b'ovf:size="%d"' % real
    assert desc.count(needle) == 1
    desc = desc.replace(needle, b'ovf:size="%d"' % (real + 512))
    members = replace(small.members, "small.ovf", desc)
    # the manifest is rewritten too, so that only the size rule can fire
    members = replace(members, "small.mf", manifest_for(members, ["small.ovf", disk]))
    path = write_tar(tmp_path / "small.ova", members)
    result = expect_verify(path, {"ova.file.size"}, capsys)
    assert str(real) in result.errors[0].message and str(real + 512) in result.errors[0].message


@pytest.mark.parametrize("writer", ["ours", "tarfile"])
def test_descriptor_not_first(small: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              writer: str) -> None:
    order = [small.members[2], small.members[0], small.members[1]]     # disk, ovf, mf
    path = tmp_path / "small.ova"
    if writer == "ours":
        write_tar(path, order)
    else:
        with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as t:
            for name, data in order:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                info.mtime = 1700000000
                t.addfile(info, io.BytesIO(data))
    result = expect_verify(path, {"ova.member.order"}, capsys)
    assert any("small.ovf" in f.message for f in result.errors)


def test_manifest_and_cert_in_the_middle_vs_at_the_end(signed: Built, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    ovf, mf, cert, d1, d2 = signed.members
    assert [ovf[0], mf[0], cert[0], d1[0], d2[0]] == ["sig.ovf", "sig.mf", "sig.cert",
                                                      _disk_name(signed, 1), _disk_name(signed, 2)]
    middle = write_tar(tmp_path / "middle.ova", [ovf, d1, mf, cert, d2])
    expect_verify(middle, {"ova.member.order"}, capsys)
    split = write_tar(tmp_path / "split.ova", [ovf, mf, d1, d2, cert])
    expect_verify(split, {"ova.member.order"}, capsys)
    at_end = write_tar(tmp_path / "end.ova", [ovf, d1, d2, mf, cert])
    result = verify(at_end, deep=True, now=NOW)
    assert result.ok and warnings(result) <= {"cert.self_signed"}, result.findings
    assert run_cli(capsys, "verify", at_end)[0] == 0


def test_referenced_file_missing(small: Built, tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    disk = _disk_name(small, 1)
    members = [(n, d) for n, d in small.members if n != disk]
    members = replace(members, "small.mf", manifest_for(members, ["small.ovf"]))
    path = write_tar(tmp_path / "small.ova", members)
    result = expect_verify(path, {"ova.file.missing"}, capsys)
    assert disk in result.errors[0].message
    # with the manifest line kept, the manifest says so as well
    path2 = write_tar(tmp_path / "small2.ova", [(n, d) for n, d in small.members if n != disk])
    expect_verify(path2, {"ova.file.missing", "mf.file.missing"}, capsys)


def test_unreferenced_extra_member_is_a_warning(small: Built, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = write_tar(tmp_path / "small.ova", small.members + [("notes.txt", b"hello\n")])
    result = verify(path, now=NOW)
    assert result.ok and warnings(result) == {"ova.file.extra"}, result.findings
    assert [f.file for f in result.findings] == ["%s:notes.txt" % path]
    code, _out, err = run_cli(capsys, "verify", path)
    assert code == 0 and "[ova.file.extra]" in err


def test_missing_manifest_is_a_warning(small: Built, tmp_path: Path) -> None:
    path = write_tar(tmp_path / "small.ova", [m for m in small.members if m[0] != "small.mf"])
    result = verify(path, now=NOW)
    assert result.ok and warnings(result) == {"mf.missing"} and result.digests_checked == 0


def test_folder_form_never_leaves_its_folder(small: Built, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A folder-form descriptor whose File href climbs out of the folder: the file beside
    the folder is never opened; the reference is simply missing."""
    (tmp_path / "outside.vmdk").write_bytes(small.data("small-disk1.vmdk"))
    folder = tmp_path / "pkg"
    folder.mkdir()
    desc = small.data("small.ovf").replace(b'ovf:href="small-disk1.vmdk"', b'ovf:href="../outside.vmdk"')
    (folder / "small.ovf").write_bytes(desc)
    result = expect_verify(folder / "small.ovf", {"ovf.file.href", "ova.file.missing"}, capsys)
    missing = [f for f in result.errors if f.rule == "ova.file.missing"]
    assert "../outside.vmdk" in missing[0].message and not result.content_ids


# -- hostile tar members ----------------------------------------------------------------------

def _hostile_parts(case: str) -> list[tuple[str, bytes] | bytes]:
    """The member(s) appended after a package's good members, for each hostile case."""
    payload = b"owned\n"
    pad = bytes(padding_for(len(payload)))
    if case == "dotdot":
        return [raw_header(b"..", len(payload)) + payload + pad]
    if case == "parent-escape":
        return [raw_header(b"../escaped.txt", len(payload)) + payload + pad]
    if case == "absolute":
        return [raw_header(b"/tmp/ovfstream-absolute.txt", len(payload)) + payload + pad]
    if case == "subdir-escape":
        return [raw_header(b"sub/../../escaped.txt", len(payload)) + payload + pad]
    if case == "symlink":
        return [raw_header(b"small-disk1.vmdk.lnk", 0, typeflag=b"2", linkname=b"/etc/passwd")]
    if case == "symlink-then-write":   # the classic: a link, then a file written through it
        return [raw_header(b"link", 0, typeflag=b"2", linkname=b".."),
                raw_header(b"link/escaped.txt", len(payload)) + payload + pad]
    if case == "hardlink":
        return [raw_header(b"hard", 0, typeflag=b"1", linkname=b"/etc/passwd")]
    if case == "chardev":
        return [raw_header(b"null", 0, typeflag=b"3")]
    if case == "blockdev":
        return [raw_header(b"sda", 0, typeflag=b"4")]
    if case == "fifo":
        return [raw_header(b"pipe", 0, typeflag=b"6")]
    if case == "directory":
        return [raw_header(b"dir", 0, typeflag=b"5")]
    if case == "duplicate":
        return [("small-disk1.vmdk", payload)]
    if case == "size-past-eof":
        return [encode_header("big.vmdk", 1 << 30, mtime=0) + payload]
    if case == "bad-checksum":
        return [raw_header(b"notes.txt", len(payload), checksum_delta=1) + payload + pad]
    if case == "pax":
        records = pax_record(b"path", b"renamed.txt")
        return [raw_header(b"PaxHeaders/x", len(records), typeflag=b"x") + records
                + bytes(padding_for(len(records))),
                ("notes.txt", payload)]
    if case == "gnu-longname":
        longname = b"n" * 150 + b"\0"
        return [raw_header(b"././@LongLink", len(longname), typeflag=b"L") + longname
                + bytes(padding_for(len(longname))), ("notes.txt", payload)]
    raise AssertionError(case)


# case -> (rule, a word the message must carry)
HOSTILE: dict[str, tuple[str, str]] = {
    "dotdot": ("ova.member.name", ".."),
    "parent-escape": ("ova.member.name", "../escaped.txt"),
    "absolute": ("ova.member.name", "/tmp/ovfstream-absolute.txt"),
    "subdir-escape": ("ova.member.name", "'/'"),
    "symlink": ("ova.member.type", "symbolic link"),
    "symlink-then-write": ("ova.member.type", "symbolic link"),
    "hardlink": ("ova.member.type", "hard link"),
    "chardev": ("ova.member.type", "character device"),
    "blockdev": ("ova.member.type", "block device"),
    "fifo": ("ova.member.type", "fifo"),
    "directory": ("ova.member.type", "directory"),
    "duplicate": ("ova.member.duplicate", "small-disk1.vmdk"),
    "size-past-eof": ("ova.tar.truncated", "big.vmdk"),
    "bad-checksum": ("ova.tar.checksum", "checksum"),
    "pax": ("ova.tar.pax", "PAX"),
    "gnu-longname": ("ova.tar.pax", "GNU long-name"),
}


def hostile_ova(folder: Path, base: Built, case: str) -> Path:
    """base's good members, then the hostile part; in its own folder (nothing else there)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "small.ova"
    write_tar(path, [*base.members, *_hostile_parts(case)])
    return path


def test_hostile_archives_are_what_they_claim(small: Built, tmp_path: Path) -> None:
    """The crafted archives, read by Python's tarfile: the hostile member is really there."""
    expected_types = {"symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE,
                      "chardev": tarfile.CHRTYPE, "blockdev": tarfile.BLKTYPE,
                      "fifo": tarfile.FIFOTYPE, "directory": tarfile.DIRTYPE}
    for case, kind in expected_types.items():
        with tarfile.open(hostile_ova(tmp_path / case, small, case)) as t:
            assert t.getmembers()[-1].type == kind
    with tarfile.open(hostile_ova(tmp_path / "pe", small, "parent-escape")) as t:
        assert t.getmembers()[-1].name == "../escaped.txt"
    with tarfile.open(hostile_ova(tmp_path / "pax", small, "pax")) as t:
        assert t.getmembers()[-1].name == "renamed.txt"
    with tarfile.open(hostile_ova(tmp_path / "dup", small, "duplicate")) as t:
        assert [m.name for m in t.getmembers()].count("small-disk1.vmdk") == 2


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_tar_member(small: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            case: str) -> None:
    rule, needle = HOSTILE[case]
    path = hostile_ova(tmp_path / "pkg", small, case)
    result = expect_verify(path, {rule}, capsys)
    assert needle in result.errors[0].message, result.errors[0]
    assert result.errors[0].file.startswith(str(path))


# -- hostile descriptors and VMDK members -----------------------------------------------------

XXE = b"""<?xml version="1.0"?>
<!DOCTYPE Envelope [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"><References/>
<VirtualSystem id="&xxe;"><Info>&xxe;</Info></VirtualSystem></Envelope>
"""

LAUGHS = (b'<?xml version="1.0"?>\n<!DOCTYPE lolz [<!ENTITY lol "lol">'
          + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                     for i in range(1, 10))
          + b']>\n<Envelope xmlns="http://schemas.dmtf.org/ovf/envelope/1"><Info>&lol9;</Info>'
            b"</Envelope>\n")


def hostile_descriptor_ova(folder: Path, base: Built, descriptor: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    members = replace(base.members, "small.ovf", descriptor)
    members = replace(members, "small.mf", manifest_for(members, ["small.ovf", "small-disk1.vmdk"]))
    return write_tar(folder / "small.ova", members)


@pytest.mark.parametrize("descriptor", [XXE, LAUGHS], ids=["xxe", "billion-laughs"])
def test_hostile_descriptor(small: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           descriptor: bytes) -> None:
    path = hostile_descriptor_ova(tmp_path, small, descriptor)
    result = expect_verify(path, {"ovf.xml.dtd"}, capsys)
    assert result.descriptor is None
    code, out, err = run_cli(capsys, "verify", path, "--json")
    assert code == 1 and "root:" not in out + err and "lollol" not in out + err


def bomb_member(vmdk: bytes) -> bytes:
    """The first grain's payload replaced by a zlib bomb (10 MiB of zeros), zero-padded to
    the original compressed size so that every offset after it stays valid."""
    pos, size = first_grain(vmdk)
    bomb = zlib.compress(bytes(10 << 20), 9)
    assert len(bomb) < size
    out = bytearray(vmdk)
    out[pos + 12:pos + 12 + size] = bomb + bytes(size - len(bomb))
    return bytes(out)


def gd_past_eof_member(vmdk: bytes) -> bytes:
    """The first grain-directory entry pointing far past the end of the file."""
    footer = len(vmdk) - 2 * SECTOR                      # footer: the second-to-last sector
    gd_sector = struct.unpack_from("<Q", vmdk, footer + 56)[0]
    out = bytearray(vmdk)
    struct.pack_into("<I", out, gd_sector * SECTOR, len(vmdk) // SECTOR + 1000)
    return bytes(out)


def footer_gd_past_eof_member(vmdk: bytes) -> bytes:
    out = bytearray(vmdk)
    struct.pack_into("<Q", out, len(vmdk) - 2 * SECTOR + 56, len(vmdk) // SECTOR + 1000)
    return bytes(out)


HOSTILE_VMDK = {"inflate-bomb": (bomb_member, "vmdk.grain.inflate", True),
                "gd-entry-past-eof": (gd_past_eof_member, "vmdk.gd.entry", False),
                "footer-gd-past-eof": (footer_gd_past_eof_member, "vmdk.header.gd", False)}


def hostile_vmdk_ova(folder: Path, base: Built, case: str) -> Path:
    """A package whose disk member is hostile but whose manifest is right for it."""
    make, _rule, _deep = HOSTILE_VMDK[case]
    folder.mkdir(parents=True, exist_ok=True)
    disk = _disk_name(base, 1)
    members = replace(base.members, disk, make(base.data(disk)))
    members = replace(members, "small.mf", manifest_for(members, ["small.ovf", disk]))
    return write_tar(folder / "small.ova", members)


@pytest.mark.parametrize("case", sorted(HOSTILE_VMDK))
def test_hostile_vmdk_member(small: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             case: str) -> None:
    import tracemalloc
    _make, rule, deep_only = HOSTILE_VMDK[case]
    path = hostile_vmdk_ova(tmp_path, small, case)
    if deep_only:   # the structure walk does not inflate; only --deep sees the bomb
        assert verify(path, now=NOW).ok
    tracemalloc.start()
    try:
        result = expect_verify(path, {rule}, capsys, deep=True)
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, peak        # bounded: the bomb is never inflated whole
    assert result.errors[0].file == "%s:small-disk1.vmdk" % path


# -- CLI usage and odd inputs ----------------------------------------------------------------

def test_cli_usage_and_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "verify")[0] == 2
    assert run_cli(capsys, "verify", tmp_path / "a.ova", "--bogus")[0] == 2
    code, _o, err = run_cli(capsys, "verify", tmp_path / "missing.ova")
    assert code == 1 and "missing.ova" in err
    junk = tmp_path / "junk.ova"
    junk.write_bytes(b"this is not a tar archive at all\n" * 40)
    expect_verify(junk, {"ova.tar.header"}, capsys)   # 'r archiv' is no octal checksum


def test_findings_are_findings(small: Built, tmp_path: Path) -> None:
    path = write_tar(tmp_path / "small.ova", small.members + [("notes.txt", b"x")])
    result = verify(path, now=NOW)
    assert all(isinstance(f, Finding) for f in result.findings)
    doc = result.as_dict()
    assert json.loads(json.dumps(doc)) == doc
    assert doc["warnings"] == 1 and doc["errors"] == 0 and doc["ok"] is True
    assert re.fullmatch(r"warning: .*small\.ova:notes\.txt: \[ova\.file\.extra\] .+",
                        str(result.findings[0]))
