"""Untrusted text reaches the terminal literally: rich markup is never interpreted and control
characters (C0, DEL, C1 with CSI 0x9b, ESC, bidi overrides, lone surrogates) are shown as
escapes, on every printing path (inspect's table and findings, verify's findings, extract's
summary, error messages, progress bars), with rich forced to draw for a terminal.  ``--json``
keeps the exact text."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import unicodedata

import pytest

from ovfstream.progress import progress_bars

from ovfs_testlib import DISKS, write_disk
from test_verify import Built, _build, hostile_descriptor_ova, run_cli
from vmdk.test_reader import DESCRIPTOR, build_stream

SGR = re.compile(r"\x1b\[[0-9;]*m")       # rich's own styling, the only escape allowed out

# XML 1.0 allows C1 characters and DEL (not ESC): they arrive through the descriptor.
HOSTILE_NAME_XML = ("[red on red]hidden[/] [link=https://evil.example]click[/link] [/bold] "
                    "c1&#x9b;2J del&#x7f; bidi&#x202e;txt.exe :warning:")
HOSTILE_NAME = ("[red on red]hidden[/] [link=https://evil.example]click[/link] [/bold] "
                "c1\x9b2J del\x7f bidi\u202etxt.exe :warning:")
HOSTILE_NAME_SHOWN = ("[red on red]hidden[/] [link=https://evil.example]click[/link] [/bold] "
                      "c1\\x9b2J del\\x7f bidi\\u202etxt.exe :warning:")


def acted_on(c: str) -> bool:
    """A character a terminal acts on (the test's own oracle, independent of display.py)."""
    return (unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp")
            or unicodedata.bidirectional(c) in ("LRE", "RLE", "LRO", "RLO", "PDF", "LRI",
                                                "RLI", "FSI", "PDI", "LRM", "RLM", "ALM"))


def assert_terminal_safe(text: str) -> None:
    """Nothing a terminal acts on is left once rich's SGR styling is taken out."""
    bare = SGR.sub("", text)
    bad = [c for c in bare if c != "\n" and acted_on(c)]
    assert not bad, bad
    assert "\x1b]8;" not in text                          # no OSC 8 hyperlink from [link=]


@pytest.fixture
def terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """rich draws as for a terminal (styles, links), as a user at a console would see it."""
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "1000")                 # no folding inside the checks


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Built:
    return _build(tmp_path_factory.mktemp("small"), "small", ["odd_size"])


def hostile_name_ova(folder: Path, base: Built) -> Path:
    desc = base.data("small.ovf")
    desc, n = re.subn(rb"<((?:\w+:)?)Name>small</", lambda m: b"<%sName>%s</" % (
        m.group(1), HOSTILE_NAME_XML.encode()), desc)
    assert n == 1
    # an href that is not there: verify's finding repeats it
    desc, n = re.subn(rb"</((?:\w+:)?)References>", lambda m: (
        b'<%sFile %shref="gone&#x9b;[2J[blink].vmdk" %sid="file9"/></%sReferences>'
        % ((m.group(1),) * 4)), desc)
    assert n == 1
    return hostile_descriptor_ova(folder, base, desc)


# -- the helper ------------------------------------------------------------------------------

@pytest.mark.parametrize("raw,shown", [
    ("plain [bold]x[/bold] é", "plain [bold]x[/bold] é"),
    ("\x1b[2J", "\\x1b[2J"), ("a\x9bb", "a\\x9bb"), ("\x7f", "\\x7f"), ("\x00\t\n\r", "\\x00\\x09\\x0a\\x0d"),
    ("\x85", "\\x85"), ("\u202e", "\\u202e"), ("\u2066\u2069", "\\u2066\\u2069"),
    ("\u2028", "\\u2028"), ("bad\udcffname", "bad\\udcffname"),
])
def test_printable(raw: str, shown: str) -> None:
    from ovfstream.display import printable
    assert printable(raw) == shown
    assert not any(acted_on(c) for c in printable(raw))


# -- through the CLI, rich forced to a terminal ------------------------------------------------

def test_pack_name_markup_inspects(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   terminal: None) -> None:
    """Our own `pack --name '[/bold]'` made a package that inspect crashed on (MarkupError)."""
    raw = write_disk(tmp_path / "d.raw", *DISKS["odd_size"])
    out = tmp_path / "t.ova"
    code, _o, err = run_cli(capsys, "pack", raw, "-o", out, "--name", "[/bold]", "-q")
    assert code == 0, err
    code, stdout, err = run_cli(capsys, "inspect", out)
    assert code == 0, err
    assert "VirtualSystem [/bold]" in SGR.sub("", stdout)
    assert_terminal_safe(stdout + err)


def test_inspect_hostile_names(small: Built, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               terminal: None) -> None:
    path = hostile_name_ova(tmp_path, small)
    code, stdout, err = run_cli(capsys, "inspect", path)
    assert code == 0, err
    plain = SGR.sub("", stdout)
    assert HOSTILE_NAME_SHOWN in plain.replace("\n", "") or HOSTILE_NAME_SHOWN in plain
    assert "\\x9b[2J[blink].vmdk" in plain                 # the File row
    assert_terminal_safe(stdout + err)
    # --json keeps the exact text (JSON escapes it)
    code, stdout, _err = run_cli(capsys, "inspect", path, "--json")
    doc = json.loads(stdout)
    assert code == 0 and HOSTILE_NAME in json.dumps(doc, ensure_ascii=False)
    assert "\x9b" not in stdout and "\\u009b" in stdout


def test_verify_findings_hostile_href(small: Built, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str], terminal: None) -> None:
    path = hostile_name_ova(tmp_path, small)
    code, stdout, err = run_cli(capsys, "verify", path)
    assert code == 1 and "[ova.file.missing]" in err
    assert "gone\\x9b[2J[blink].vmdk" in err
    assert_terminal_safe(stdout + err)
    code, stdout, _err = run_cli(capsys, "verify", path, "--json")
    messages = [f["message"] for f in json.loads(stdout)["findings"]]
    assert any("gone\x9b[2J[blink].vmdk" in m for m in messages)


def test_bare_vmdk_ddb_value(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             terminal: None) -> None:
    """`ddb.adapterType "[/x]"` crashed inspect; an ESC in it reached the terminal raw."""
    text = DESCRIPTOR.replace('ddb.adapterType = "lsilogic"',
                              'ddb.adapterType = "[/x]\x1b[2J\x1b]8;;https://e.example\x07"')
    data = build_stream(b"a" * 70000, descriptor=text.format(sectors=137)).bytes()
    vmdk = tmp_path / "d.vmdk"
    vmdk.write_bytes(data)
    code, stdout, err = run_cli(capsys, "inspect", vmdk)
    assert code == 0, err
    assert "[/x]\\x1b[2J\\x1b]8;;https://e.example\\x07" in SGR.sub("", stdout)
    assert_terminal_safe(stdout + err)
    code, stdout, _err = run_cli(capsys, "inspect", vmdk, "--json")
    assert json.loads(stdout)["vmdk"]["Adapter"] == "[/x]\x1b[2J\x1b]8;;https://e.example\x07"


def test_error_messages_escaped(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                terminal: None) -> None:
    name = tmp_path / "x\x1b[2J[red on red]\x9b.ova"
    name.write_bytes(b"not a tar archive at all\n" * 40)
    for command in ("verify", "inspect", "extract"):
        code, _o, err = run_cli(capsys, command, name, *(["-o", tmp_path / "o"]
                                                         if command == "extract" else []))
        assert code == 1 and "x\\x1b[2J[red on red]\\x9b.ova" in err, err
        assert "[ova.tar.header]" in err
        assert_terminal_safe(err)


def test_progress_label_literal(capsys: pytest.CaptureFixture[str], terminal: None,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    with progress_bars(enabled=True) as report:
        assert report is not None
        report("[/bold]\x1b[2Jdisk\x9b.raw", 10, 100)
        report("[/bold]\x1b[2Jdisk\x9b.raw", 90, 100)
    err = capsys.readouterr().err
    assert "[/bold]\\x1b[2Jdisk\\x9b.raw" in SGR.sub("", err)
    bare = re.sub(r"\x1b\[\??[0-9;]*[A-Za-z]", "", err)     # rich's cursor moves, styles
    assert "\x9b" not in bare and "\x1b" not in bare


def test_real_process_undecodable_path(tmp_path: Path, small: Built) -> None:
    """A path with bytes that are not UTF-8 (a surrogate once decoded) is shown escaped, and a
    UTF-8 stdout does not fail on it (it did: UnicodeEncodeError)."""
    folder = os.path.join(os.fsencode(tmp_path), b"pkg\xff[red]")
    os.mkdir(folder)
    with open(os.path.join(folder, b"small.ovf"), "wb") as f:
        f.write(small.data("small.ovf"))
    env = {**os.environ, "FORCE_COLOR": "1", "TERM": "xterm", "PYTHONIOENCODING": "utf-8",
           "COLUMNS": "1000"}
    env.pop("NO_COLOR", None)
    proc = subprocess.run([sys.executable, "-m", "ovfstream", "inspect", folder],
                          capture_output=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode("utf-8")
    assert "pkg\\udcff[red]" in SGR.sub("", out)
    assert "Traceback" not in proc.stderr.decode("utf-8", "replace")
