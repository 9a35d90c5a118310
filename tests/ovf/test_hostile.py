"""Hostile descriptors of issue 8, generated here: XXE in every encoding with proof that no
file is opened, stacked allocation units, counts past the caps, inputs that made the reader
super-linear, and untrusted text that must come out as plain data.

Proof that nothing is opened: the external entity names a FIFO made by the test.  Opening a
FIFO for reading blocks until a writer comes, so a parser that tries hangs; after the parse
the test opens the FIFO for writing without blocking, which succeeds only if some reader has
it open (and releases that reader).  Parses run in a thread or a subprocess with a timeout,
so a regression fails instead of hanging the suite.
"""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pytest

from ovfstream.errors import OvfFormatError
from ovfstream.ovf import reader
from ovfstream.ovf.reader import MAX_ENTRIES, RULES, parse_descriptor
from ovfstream.ovf.summary import summary_text

from ovfs_testlib import needs_shared

NS1 = "http://schemas.dmtf.org/ovf/envelope/1"
RASD = "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"
SCHEMAS = Path(__file__).resolve().parents[2] / ".." / "shared" / "ovf-schemas"

# (label, Python codec, declared encoding, byte-order mark)
ENCODINGS = [
    ("utf-8", "utf-8", "UTF-8", False), ("utf-8-bom", "utf-8", "UTF-8", True),
    ("utf-16-le-bom", "utf-16-le", "UTF-16", True), ("utf-16-be-bom", "utf-16-be", "UTF-16", True),
    ("utf-16-le", "utf-16-le", "UTF-16", False), ("utf-16-be", "utf-16-be", "UTF-16", False),
    ("utf-32-le-bom", "utf-32-le", "UTF-32", True), ("utf-32-be-bom", "utf-32-be", "UTF-32", True),
    ("utf-32-le", "utf-32-le", "UTF-32", False), ("utf-32-be", "utf-32-be", "UTF-32", False),
    ("ebcdic-037", "cp037", "IBM037", False), ("ebcdic-500", "cp500", "IBM500", False),
    ("utf-7", "utf-7", "UTF-7", False), ("latin-1", "latin-1", "ISO-8859-1", False),
]
ATTACKS = {
    "parameter entity": ('<!DOCTYPE Envelope [<!ENTITY %% p SYSTEM "%s"> %%p;]>', ""),
    "general entity": ('<!DOCTYPE Envelope [<!ENTITY e SYSTEM "%s">]>', "&e;"),
    "external subset": ('<!DOCTYPE Envelope SYSTEM "%s">', ""),
}


def encoded(text: str, codec: str, declared: str, bom: bool) -> bytes:
    """``text`` after an XML declaration naming ``declared``, in ``codec``."""
    doc = ('\ufeff' if bom else "") + '<?xml version="1.0" encoding="%s"?>\n' % declared + text
    data = doc.encode(codec)
    if codec == "utf-7":
        data = data.replace(b"<!", b"+ADw-!")  # "<" in UTF-7's base64 form: no ASCII "<!D"
        assert data.decode("utf-7") == doc
    return data


def xxe_document(attack: str, target: str, codec: str, declared: str, bom: bool) -> bytes:
    dtd, use = ATTACKS[attack]
    body = ('%s\n<Envelope xmlns="%s" xmlns:ovf="%s"><VirtualSystem ovf:id="vm"><Info>x</Info>'
            '<Name>n%s</Name></VirtualSystem></Envelope>' % (dtd % target, NS1, NS1, use))
    return encoded(body, codec, declared, bom)


def xxe_cases(target: str) -> list[tuple[str, bytes]]:
    """Every attack in every encoding, aimed at ``target`` (also used by the fuzzers)."""
    return [("%s/%s" % (attack, label), xxe_document(attack, target, codec, declared, bom))
            for attack in ATTACKS for label, codec, declared, bom in ENCODINGS]


@pytest.fixture
def fifo(tmp_path: Path) -> str:
    path = tmp_path / "entity.fifo"
    os.mkfifo(path)
    return str(path)


def fifo_was_opened(path: str) -> bool:
    """True if some reader holds the FIFO open; also lets a blocked reader go (EOF)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no reader
            return False
        raise
    os.close(fd)
    return True


def run_guarded(work: Callable[[], None], fifo: str, label: str, wait: float = 5) -> None:
    """Run ``work`` in a thread; fail if it opened the FIFO or did not finish (the FIFO
    check also lets a reader blocked on it go, so a regression fails instead of hanging)."""
    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(wait)
    opened = fifo_was_opened(fifo)
    thread.join(5)
    assert not opened, "%s: the entity's file was opened" % label
    assert not thread.is_alive(), "%s: did not finish" % label


def parse_guarded(data: bytes, fifo: str, **kw: Any) -> dict[str, Any]:
    """parse_descriptor in a thread; fail if it opened the FIFO or did not finish."""
    out: dict[str, Any] = {}

    def work() -> None:
        try:
            out["result"] = parse_descriptor(data, path="h.ovf", **kw)
        except OvfFormatError as exc:
            out["error"] = exc

    run_guarded(work, fifo, "the parser")
    return out


# -- XXE -----------------------------------------------------------------------------------


def test_cases_cover_every_encoding_and_attack() -> None:
    labels = [label for label, _ in xxe_cases("/x")]
    assert len(labels) == len(set(labels)) == len(ATTACKS) * len(ENCODINGS)


@pytest.mark.parametrize("case", range(len(ATTACKS) * len(ENCODINGS)))
def test_xxe_refused_in_every_encoding_and_nothing_opened(case: int, fifo: str) -> None:
    label, data = xxe_cases(fifo)[case]
    out = parse_guarded(data, fifo)
    assert "error" in out, label
    assert out["error"].rule == "ovf.xml.dtd", (label, out["error"])


@pytest.mark.parametrize("label,codec,declared,bom", ENCODINGS)
def test_the_same_encodings_read_a_good_descriptor(label: str, codec: str, declared: str,
                                                   bom: bool) -> None:
    # The decoding that makes the scan exact must not refuse honest files.
    text = ('<Envelope xmlns="%s" xmlns:ovf="%s"><VirtualSystem ovf:id="vm"><Info>x</Info>'
            '<Name>caf\u00e9 &lt;!DOCTYPE&gt;</Name></VirtualSystem></Envelope>' % (NS1, NS1))
    desc, findings = parse_descriptor(encoded(text, codec, declared, bom), path="g.ovf")
    assert desc.systems[0].name == "caf\u00e9 <!DOCTYPE>" and findings == [], label


@pytest.mark.parametrize("data,detail", [
    (b"\x00\x00\x3c\x00rest", "UCS-4"),
    (b'<?xml version="1.0" encoding="no-such-codec"?><Envelope/>', "unsupported encoding"),
    (b'<?xml version="1.0" encoding="rot13"?><Envelope/>', "unsupported encoding"),
    (b'<?xml version="1.0" encoding="unicode_escape"?><Envelope/>', "unsupported encoding"),
    ('<?xml version="1.0" encoding="UTF-16"?><E/>'.encode("utf-16-le")[:-1], "not valid"),
    (b"\x4c\x6f\xa7\x94\x40\x40", "EBCDIC"),
])
def test_undecodable_bytes_are_syntax_errors(data: bytes, detail: str) -> None:
    with pytest.raises(OvfFormatError) as info:
        parse_descriptor(data, path="e.ovf")
    assert info.value.rule == "ovf.xml.syntax" and detail in info.value.detail


def test_resolver_layer_alone_opens_nothing(fifo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Take the text scan away (as if it had a gap): the resolver and the DOCTYPE check after
    # the parse must still refuse, and libxml2 must still open nothing.
    class Never:
        @staticmethod
        def search(text: str) -> None:
            return None

    monkeypatch.setattr(reader, "_DTD_TEXT", Never)
    for attack in ATTACKS:
        out = parse_guarded(xxe_document(attack, fifo, "utf-8", "UTF-8", False), fifo)
        assert "error" in out, attack
        assert out["error"].rule in ("ovf.xml.dtd", "ovf.xml.syntax"), (attack, out["error"])


def test_parser_asks_the_resolver_and_gets_nothing(fifo: str) -> None:
    parser, refuse = reader._parser()
    doc = ('<!DOCTYPE E SYSTEM "%s" [<!ENTITY %% p SYSTEM "%s"> %%p;]><E/>' % (fifo, fifo))
    from lxml import etree

    thread = threading.Thread(target=lambda: etree.fromstring(doc.encode(), parser),
                              daemon=True)
    thread.start()
    thread.join(5)
    assert not fifo_was_opened(fifo)
    thread.join(5)
    assert not thread.is_alive()
    assert set(refuse.requests) <= {fifo}


@needs_shared("ovf-schemas")
def test_strict_schema_validation_ignores_schema_location_hints(fifo: str) -> None:
    data = ('<?xml version="1.0"?>\n<Envelope xmlns="%s" xmlns:ovf="%s" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'xsi:schemaLocation="%s %s" xsi:noNamespaceSchemaLocation="%s"><References/>'
            '<VirtualSystem ovf:id="vm"><Info>x</Info></VirtualSystem></Envelope>'
            % (NS1, NS1, NS1, fifo, fifo)).encode()
    out = parse_guarded(data, fifo, strict=True, schema_dir=SCHEMAS)
    assert "result" in out


def _ova(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _cli(*args: str | Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ovfstream", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("label,codec,declared,bom", [
    ("utf-32-le-bom", "utf-32-le", "UTF-32", True), ("ebcdic-037", "cp037", "IBM037", False)])
def test_cli_refuses_hostile_descriptor_and_opens_nothing(tmp_path: Path, fifo: str, label: str,
                                                          codec: str, declared: str,
                                                          bom: bool) -> None:
    data = xxe_document("parameter entity", fifo, codec, declared, bom)
    ova = _ova(tmp_path / "x.ova", [("x.ovf", data)])
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "x.ovf").write_bytes(data)
    runs = [("verify", ova), ("verify", "--json", ova), ("inspect", ova),
            ("inspect", "--json", folder / "x.ovf"), ("verify", folder),
            ("extract", ova, "-o", tmp_path / "out")]
    for args in runs:
        try:
            proc = _cli(*args)
        finally:
            opened = fifo_was_opened(fifo)
        assert not opened, args
        assert proc.returncode == 1, (args, proc.stdout, proc.stderr)
        assert "ovf.xml.dtd" in proc.stdout + proc.stderr, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr, args


@pytest.mark.parametrize("label,codec,declared,bom", [
    ("utf-16-le", "utf-16-le", "UTF-16", False), ("utf-16-be-bom", "utf-16-be", "UTF-16", True),
    ("utf-32-le-bom", "utf-32-le", "UTF-32", True), ("utf-32-be", "utf-32-be", "UTF-32", False)])
def test_api_verify_and_inspect_refuse_and_open_nothing(tmp_path: Path, fifo: str, label: str,
                                                        codec: str, declared: str,
                                                        bom: bool) -> None:
    from ovfstream import inspect, verify

    data = xxe_document("parameter entity", fifo, codec, declared, bom)
    ova = _ova(tmp_path / "x.ova", [("x.ovf", data)])
    out: dict[str, Any] = {}

    def work() -> None:
        out["verify"] = verify(ova)
        try:
            inspect(ova)
        except OvfFormatError as exc:
            out["inspect"] = exc

    run_guarded(work, fifo, label, wait=10)
    assert [f.rule for f in out["verify"].errors] == ["ovf.xml.dtd"], label
    assert out["inspect"].rule == "ovf.xml.dtd", label


def test_cli_entity_at_dev_zero_does_not_hang(tmp_path: Path) -> None:
    for label, codec, declared, bom in (ENCODINGS[8], ENCODINGS[10]):  # UTF-32, EBCDIC
        data = xxe_document("parameter entity", "/dev/zero", codec, declared, bom)
        ova = _ova(tmp_path / ("z-%s.ova" % label), [("z.ovf", data)])
        proc = _cli("verify", ova, timeout=20)
        assert proc.returncode == 1 and "ovf.xml.dtd" in proc.stdout + proc.stderr, label


# -- stacked allocation units (ValueError/OverflowError before) -------------------------------

BASE = """<?xml version="1.0" encoding="UTF-8"?>
<Envelope xmlns="{ns}" xmlns:ovf="{ns}" xmlns:rasd="{rasd}">
  <References><File ovf:href="d.vmdk" ovf:id="file1" ovf:size="1"/></References>
  <DiskSection><Info>d</Info>
    <Disk ovf:capacity="8" ovf:capacityAllocationUnits="{disk_units}" ovf:diskId="vmdisk1"
          ovf:fileRef="file1"/>
  </DiskSection>
  <NetworkSection><Info>n</Info>{networks}</NetworkSection>
  <VirtualSystem ovf:id="vm"><Info>x</Info><Name>{name}</Name>
    <AnnotationSection><Info>a</Info><Annotation>{annotation}</Annotation></AnnotationSection>
    <VirtualHardwareSection><Info>h</Info>
      <Item><rasd:AllocationUnits>{memory_units}</rasd:AllocationUnits>
        <rasd:InstanceID>2</rasd:InstanceID><rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>4096</rasd:VirtualQuantity></Item>
      <Item><rasd:HostResource>{host_resource}</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID><rasd:ResourceType>17</rasd:ResourceType></Item>
      {items}
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"""


def descriptor(**fields: str) -> bytes:
    values = {"ns": NS1, "rasd": RASD, "disk_units": "byte * 2^30", "memory_units": "byte * 2^20",
              "networks": '<Network ovf:name="VM Network"><Description>n</Description></Network>',
              "name": "web", "annotation": "hello", "host_resource": "ovf:/disk/vmdisk1",
              "items": ""}
    values.update(fields)
    return BASE.format(**values).encode("utf-8")


def test_base_is_clean() -> None:
    desc, findings = parse_descriptor(descriptor(), path="b.ovf")
    assert findings == []
    assert desc.disks[0].capacity_bytes == 8 << 30 and desc.systems[0].memory_mib == 4096


@pytest.mark.parametrize("units", [
    "byte * 2^80 * 2^80", "byte * 2^80 * 2^80 * 2^80 * 2^80", "byte" + " * 2^80" * 60,
    "byte" + "*10^80" * 40, "byte * 10^80 * 10^80", "byte * 2^80 * 2", "byte * 99999999999999999999 * 99999",
])
def test_stacked_units_are_a_finding_not_a_traceback(units: str) -> None:
    data = descriptor(disk_units=units, memory_units=units)
    desc, findings = parse_descriptor(data, path="u.ovf")
    assert [(f.rule, f.severity) for f in findings] == [("ovf.units", "warning")] * 2
    assert desc.disks[0].capacity_bytes is None and desc.systems[0].memory_mib is None
    summary_text(desc)
    json.dumps(desc.as_dict())
    assert all(len(f.message) < 400 for f in findings)


def test_largest_accepted_unit_still_prints() -> None:
    desc, findings = parse_descriptor(descriptor(disk_units="byte * 2^80",
                                                 memory_units="byte * 2^40 * 2^40"), path="u.ovf")
    assert findings == [] and desc.disks[0].capacity_bytes == 8 << 80
    rows = dict(summary_text(desc))
    assert rows["Disk"].startswith("vmdisk1: capacity %d (" % (8 << 80))
    json.dumps(desc.as_dict())


# -- super-linear inputs: each finishes far inside its bound (the fixed code needs < 0.1 s) --


def timed(data: bytes) -> tuple[float, list[str]]:
    start = time.perf_counter()
    desc, findings = parse_descriptor(data, path="t.ovf")
    summary_text(desc)
    return time.perf_counter() - start, sorted({f.rule for f in findings})


def test_host_resource_with_many_spaces_is_linear() -> None:
    # Before: a backtracking regex, 8 s for these 30,000 spaces (87 s for 100,000).
    seconds, rules = timed(descriptor(host_resource="ovf:/disk/vmdisk1" + " " * 30_000 + "x"))
    assert rules == ["ovf.ref.disk"] and seconds < 1.0
    seconds, rules = timed(descriptor(host_resource="  ovf:/disk/vmdisk1" + " " * 30_000))
    assert rules == [] and seconds < 1.0  # trailing space is still the same reference


def test_repeated_unit_factors_are_linear() -> None:
    # Before: every factor multiplied into an ever larger integer, 7 s for 12,000 of them.
    seconds, rules = timed(descriptor(disk_units="byte" + "*10^80" * 12_000))
    assert rules == ["ovf.units"] and seconds < 1.0


def test_items_sharing_one_instance_id_are_linear() -> None:
    # Before: each Item was compared with every earlier Item of its InstanceID, 4.5 s here.
    def items(n: int) -> str:
        return "".join('<Item ovf:configuration="c%d"><rasd:InstanceID>4</rasd:InstanceID>'
                       '</Item>\n' % i for i in range(n))

    seconds, rules = timed(descriptor(items=items(MAX_ENTRIES - 2)))
    assert rules == [] and seconds < 2.0
    # A clash is still found, against the first Item with a shared configuration.
    clash = '<Item ovf:configuration="x c7 c3 y"><rasd:InstanceID>4</rasd:InstanceID></Item>'
    _, findings = parse_descriptor(descriptor(items=items(20) + clash), path="t.ovf")
    (finding,) = findings
    assert finding.rule == "ovf.instanceid.unique"
    first_line = descriptor(items=items(20)).decode().splitlines().index(
        next(line for line in descriptor(items=items(20)).decode().splitlines()
             if 'configuration="c3"' in line)) + 1
    assert finding.message.endswith("(first on line %d)" % first_line), finding.message


def test_many_networks_and_systems_are_linear() -> None:
    networks = "".join('<Network ovf:name="n%d"/>' % i for i in range(MAX_ENTRIES - 1))
    seconds, rules = timed(descriptor(networks=networks + '<Network ovf:name="VM Network"/>'))
    assert rules == [] and seconds < 1.0


# -- caps --------------------------------------------------------------------------------------

OVER = MAX_ENTRIES + 1
CAPPED = {
    "Files": lambda: descriptor().replace(b"</References>", b"".join(
        b'<File ovf:href="f%d" ovf:id="f%d"/>' % (i, i) for i in range(OVER)) + b"</References>"),
    "Disks": lambda: descriptor().replace(b"</DiskSection>", b"".join(
        b'<Disk ovf:capacity="1" ovf:diskId="d%d"/>' % i for i in range(OVER)) + b"</DiskSection>"),
    "Networks": lambda: descriptor(networks="".join(
        '<Network ovf:name="n%d"/>' % i for i in range(OVER))),
    "Items": lambda: descriptor(items="<Item/>" * OVER),
    "Properties": lambda: descriptor().replace(b"<AnnotationSection>", b"<ProductSection>" +
                                               b'<Property ovf:key="k"/>' * OVER +
                                               b"</ProductSection><AnnotationSection>"),
    "deployment Configurations": lambda: descriptor().replace(
        b"<VirtualSystem ", b"<DeploymentOptionSection>" +
        b'<Configuration ovf:id="c"/>' * OVER + b"</DeploymentOptionSection><VirtualSystem "),
    "VirtualSystems": lambda: descriptor().replace(
        b'<VirtualSystem ovf:id="vm">', b'<VirtualSystemCollection ovf:id="all">' +
        b'<VirtualSystem ovf:id="v"/>' * OVER + b'<VirtualSystem ovf:id="vm">').replace(
        b"</VirtualSystem>\n</Envelope>", b"</VirtualSystem></VirtualSystemCollection></Envelope>"),
}


@pytest.mark.parametrize("what", sorted(CAPPED))
def test_more_than_max_entries_is_refused(what: str) -> None:
    start = time.perf_counter()
    with pytest.raises(OvfFormatError) as info:
        parse_descriptor(CAPPED[what](), path="c.ovf")
    assert info.value.rule == "ovf.limit" and what in info.value.detail
    assert "more than %d" % MAX_ENTRIES in info.value.detail
    assert time.perf_counter() - start < 2.0


def test_max_entries_itself_is_allowed() -> None:
    desc, _ = parse_descriptor(descriptor(items="<Item/>" * (MAX_ENTRIES - 2)), path="c.ovf")
    assert desc.systems


# -- untrusted text comes out as plain data ------------------------------------------------------


def test_markup_and_controls_come_out_literally() -> None:
    name = "[/bold][red on red]x[/] [link=https://example.org]y[/link]"
    annotation = "\u009b31m C1 \u0085 next"
    desc, findings = parse_descriptor(descriptor(name=name, annotation=annotation), path="m.ovf")
    assert findings == []
    assert desc.systems[0].name == name and desc.systems[0].annotation == annotation
    rows = summary_text(desc)
    assert ("VM", "%s (id vm)" % name) in rows
    assert json.loads(json.dumps(desc.as_dict()))["systems"][0]["name"] == name


def test_messages_quote_untrusted_values_briefly() -> None:
    long_ref = "ovf:/disk/" + "z" * 100_000
    _, findings = parse_descriptor(descriptor(host_resource=long_ref), path="l.ovf")
    (finding,) = findings
    assert finding.rule == "ovf.ref.disk" and len(finding.message) < 600
    assert all(rule.startswith("ovf.") for rule in RULES)


# -- N members with N File references (verify; the quadratic was in package.py/verify.py) ----


def test_package_member_lookup_does_not_scan() -> None:
    from ovfstream.package import Member, Package

    members = [Member("m%d" % i, 0, 0, "/x", i) for i in range(20_000)]
    pkg = Package("/x.ova", "ova", members, members[0])
    start = time.perf_counter()
    assert all(pkg.member("m%d" % i) is members[i] for i in range(20_000))
    assert pkg.member("absent") is None
    assert time.perf_counter() - start < 1.0  # a list scan: 2 * 10^8 comparisons, seconds


def test_verify_many_members_and_references(tmp_path: Path) -> None:
    # Before: 8.6 s here (a name lookup scanned every member, and the manifest's name set
    # was rebuilt once per member); after: about 1 s, most of it the tar walk.
    import hashlib

    from ovfstream import verify

    n = MAX_ENTRIES
    refs = "".join('<File ovf:href="m%d.img" ovf:id="f%d" ovf:size="0"/>' % (i, i)
                   for i in range(n))
    ovf = ('<?xml version="1.0"?><Envelope xmlns="%s" xmlns:ovf="%s"><References>%s'
           '</References><VirtualSystem ovf:id="vm"><Info>x</Info></VirtualSystem></Envelope>'
           % (NS1, NS1, refs)).encode()
    empty = hashlib.sha256(b"").hexdigest()
    mf = ("SHA256(t.ovf)= %s\n" % hashlib.sha256(ovf).hexdigest() +
          "".join("SHA256(m%d.img)= %s\n" % (i, empty) for i in range(n))).encode()
    ova = _ova(tmp_path / "t.ova", [("t.ovf", ovf), ("t.mf", mf)] +
               [("m%d.img" % i, b"") for i in range(n)])
    start = time.perf_counter()
    result = verify(ova)
    assert time.perf_counter() - start < 5.0
    assert result.errors == [] and result.digests_checked == n + 1
