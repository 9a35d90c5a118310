"""Outputs (issue 8, items 2-6): what may stand under an output's name, temporaries that are
fresh and never followed, outputs that would destroy an input, concurrent runs to one output,
and a folder-form re-pack that fails without touching the previous package."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from ovfstream import atomic, cli
from ovfstream.sources import raw as source_mod
from ovfstream.atomic import atomic_output
from ovfstream.convert import convert
from ovfstream.errors import UsageError
from ovfstream.pack import pack
from ovfstream.verify import verify

from ovfs_testlib import REPRODUCIBLE_ENGINE, make_signer, write_disk
from test_verify import read_members, tar_bytes

MIB = 1 << 20
EPOCH = "1700000000"


def disk(path: Path, size: int = 3 * MIB, seed: int = 1) -> Path:
    return write_disk(path, size, [(0, "random", 200000), (2 * MIB, "text", 300000)], seed=seed)


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def no_temporaries(*folders: Path) -> None:
    for folder in folders:
        assert [p.name for p in folder.iterdir() if p.name.endswith(".partial")] == []


def make_node(path: Path, kind: str) -> socket.socket | None:
    """A non-regular node at ``path``; a socket is returned to be closed by the caller."""
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        return s
    elif kind == "link-to-dev-zero":
        path.symlink_to("/dev/zero")
    else:
        raise ValueError(kind)
    return None


def main(capsys: pytest.CaptureFixture[str], *argv: str | os.PathLike[str]) -> tuple[int, str]:
    code = cli.main([os.fspath(a) for a in argv])
    return code, capsys.readouterr().err


# -- item 2: an output that exists and is not a regular file ------------------------------------

NODE_KINDS = ["fifo", "socket", "directory", "link-to-dev-zero"]
KIND_WORDS = {"fifo": "FIFO", "socket": "socket", "directory": "directory",
              "link-to-dev-zero": "character device"}


@pytest.mark.parametrize("kind", NODE_KINDS)
@pytest.mark.parametrize("command", ["convert", "extract", "pack"])
def test_non_regular_output_is_refused_and_kept(tmp_path, capsys, kind, command):
    raw = disk(tmp_path / "d.raw")
    if command == "extract":
        vmdk = tmp_path / "d.vmdk"
        convert(raw, vmdk, fsync=False)
        out, argv = tmp_path / "back.raw", ["extract", vmdk]
    elif command == "convert":
        out, argv = tmp_path / "out.vmdk", ["convert", raw]
    else:
        out, argv = tmp_path / "out.ova", ["pack", raw]
    before = listing(tmp_path)
    sock = make_node(out, kind)
    try:
        code, err = main(capsys, *argv, "-o", out, "--quiet")
        assert code == 2, err
        assert str(out) in err and KIND_WORDS[kind] in err
        mode = os.lstat(out).st_mode
        assert {"fifo": stat.S_ISFIFO, "socket": stat.S_ISSOCK, "directory": stat.S_ISDIR,
                "link-to-dev-zero": stat.S_ISLNK}[kind](mode)
        assert listing(tmp_path) == sorted(before + [out.name])
    finally:
        if sock is not None:
            sock.close()


def test_folder_member_that_is_a_directory_is_refused_before_any_work(tmp_path, capsys):
    raw = disk(tmp_path / "d.raw")
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "t-disk1.vmdk").mkdir()
    code, err = main(capsys, "pack", raw, "-o", folder / "t.ovf", "--quiet")
    assert code == 2 and "t-disk1.vmdk" in err and "directory" in err
    assert listing(folder) == ["t-disk1.vmdk"]


@pytest.mark.parametrize("command", ["convert", "extract", "pack"])
def test_output_through_a_link_to_dev_null_is_discarded(tmp_path, capsys, command):
    raw = disk(tmp_path / "d.raw")
    sink = tmp_path / ("null.ova" if command == "pack" else "null.out")
    sink.symlink_to(os.devnull)
    if command == "extract":
        vmdk = tmp_path / "d.vmdk"
        convert(raw, vmdk, fsync=False)
        argv = ["extract", vmdk]
    else:
        argv = [command, raw]
    before = listing(tmp_path)
    code, err = main(capsys, *argv, "-o", sink, "--quiet")
    assert code == 0, err
    assert sink.is_symlink() and os.readlink(sink) == os.devnull
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    assert listing(tmp_path) == before


def test_dev_null_itself_is_written_in_place(tmp_path, capsys, monkeypatch):
    # Run as root, the old code renamed a regular file over /dev/null.  A regression must
    # not do that to the machine running the tests: renames into /dev fail here instead.
    raw = disk(tmp_path / "d.raw")
    dev = Path(os.devnull)
    real_replace, real_rename = os.replace, os.rename

    def guarded(real):  # type: ignore[no-untyped-def]
        def call(src, dst, *args, **kw):  # type: ignore[no-untyped-def]
            if os.path.dirname(os.path.abspath(dst)) == str(dev.parent):
                raise AssertionError("rename onto %s" % dst)
            return real(src, dst, *args, **kw)
        return call
    monkeypatch.setattr(os, "replace", guarded(real_replace))
    monkeypatch.setattr(os, "rename", guarded(real_rename))
    before = {p.name for p in dev.parent.iterdir()}
    try:
        code, err = main(capsys, "convert", raw, "-o", dev, "--quiet")
    except AssertionError:
        code, err = -1, "renamed onto /dev/null"
    finally:
        for p in dev.parent.iterdir():  # a regression's temporary: take it away again
            if p.name not in before and p.is_file() and p.name.endswith(".partial"):
                p.unlink()
    assert code == 0, err
    assert stat.S_ISCHR(os.lstat(dev).st_mode)
    assert {p.name for p in dev.parent.iterdir()} == before


def test_a_symlink_at_the_output_is_replaced_not_followed(tmp_path):
    raw = disk(tmp_path / "d.raw")
    target = tmp_path / "elsewhere.vmdk"
    target.write_bytes(b"keep me")
    out = tmp_path / "out.vmdk"
    out.symlink_to(target)
    convert(raw, out, fsync=False)
    assert not out.is_symlink() and out.stat().st_size > 65536
    assert target.read_bytes() == b"keep me"


# -- item 3: temporaries are fresh, unique, and never followed --------------------------------

@pytest.mark.parametrize("command", ["convert", "pack"])
def test_planted_partial_symlink_is_not_followed(tmp_path, capsys, command):
    raw = disk(tmp_path / "d.raw")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / ("out.ova" if command == "pack" else "out.vmdk")
    Path(str(out) + ".partial").symlink_to(victim)
    code, err = main(capsys, command, raw, "-o", out, "--quiet")
    assert code == 0, err
    assert victim.read_bytes() == b"precious"
    assert out.is_file() and not out.is_symlink()
    assert os.readlink(str(out) + ".partial") == str(victim)  # someone else's: left alone


def test_temporary_name_already_taken_draws_another(tmp_path, monkeypatch):
    raw = disk(tmp_path / "d.raw")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "out.vmdk"
    tokens = iter(["0000aaaa", "0000aaaa", "0000bbbb"])
    monkeypatch.setattr(atomic, "_token", lambda: next(tokens))
    planted = tmp_path / ".out.vmdk.0000aaaa.partial"
    planted.symlink_to(victim)
    dangling = tmp_path / "dangling"  # a link to a missing file: O_CREAT would create it
    convert(raw, out, fsync=False)
    assert victim.read_bytes() == b"precious" and not dangling.exists()
    assert os.readlink(planted) == str(victim)
    assert out.is_file() and out.stat().st_size > 65536
    assert listing(tmp_path) == sorted(["d.raw", "victim", planted.name, "out.vmdk"])


def test_temporary_names_are_unique_and_hidden_beside_the_output(tmp_path):
    out = tmp_path / "x.bin"
    with atomic_output(out, fsync=False) as a, atomic_output(out, fsync=False) as b:
        names = [p.name for p in tmp_path.iterdir()]
        assert len(names) == 2 and all(n.startswith(".x.bin.") and n.endswith(".partial")
                                       for n in names)
        a.write(b"first")
        b.write(b"second")
    # b commits first (the inner block), then a: the last rename wins, whole
    assert listing(tmp_path) == ["x.bin"] and out.read_bytes() == b"first"


def test_long_output_name_gets_a_temporary_that_fits(tmp_path):
    out = tmp_path / ("n" * 250 + ".vmdk")
    with atomic_output(out, fsync=False) as f:
        f.write(b"x")
    assert listing(tmp_path) == [out.name]


def test_output_bytes_do_not_depend_on_the_temporary_name(tmp_path, monkeypatch):
    raw = disk(tmp_path / "d.raw")
    outs = []
    for i, token in enumerate(["11111111", "22222222"]):
        monkeypatch.setattr(atomic, "_token", lambda token=token: token)
        out = tmp_path / ("o%d" % i) / "same.vmdk"
        out.parent.mkdir()
        convert(raw, out, fsync=False, engine=REPRODUCIBLE_ENGINE)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


# -- item 4: an output that is an input --------------------------------------------------------

def test_pack_onto_its_own_input(tmp_path, capsys):
    src = disk(tmp_path / "in.ova")  # a raw image that happens to be named .ova
    before = src.read_bytes()
    code, err = main(capsys, "pack", src, "-o", src, "--quiet")
    assert code == 2 and "also an input" in err
    assert src.read_bytes() == before and listing(tmp_path) == ["in.ova"]


def test_convert_of_a_file_named_like_the_old_temporary(tmp_path, capsys):
    src = disk(tmp_path / "d.raw.partial")
    before = src.read_bytes()
    code, err = main(capsys, "convert", src, "-o", tmp_path / "d.raw", "--quiet")
    assert code == 0, err
    assert src.read_bytes() == before
    assert listing(tmp_path) == ["d.raw", "d.raw.partial"]


@pytest.mark.parametrize("how", ["same", "hardlink", "symlink"])
def test_convert_onto_its_source(tmp_path, capsys, how):
    src = disk(tmp_path / "d.raw")
    before = src.read_bytes()
    out = {"same": src, "hardlink": tmp_path / "h.vmdk", "symlink": tmp_path / "s.vmdk"}[how]
    if how == "hardlink":
        os.link(src, out)
    elif how == "symlink":
        out.symlink_to(src)
    code, err = main(capsys, "convert", src, "-o", out, "--quiet")
    assert code == 2 and "also an input" in err
    assert src.read_bytes() == before


def test_extract_vmdk_onto_itself(tmp_path, capsys):
    vmdk = tmp_path / "x.vmdk"
    convert(disk(tmp_path / "d.raw"), vmdk, fsync=False)
    before = vmdk.read_bytes()
    code, err = main(capsys, "extract", vmdk, "-o", vmdk, "--quiet")
    assert code == 2 and "also an input" in err
    assert vmdk.read_bytes() == before


def test_folder_pack_that_would_write_over_its_disk(tmp_path, capsys):
    folder = tmp_path / "f"
    folder.mkdir()
    src = disk(folder / "t-disk1.vmdk")
    before = src.read_bytes()
    code, err = main(capsys, "pack", src, "-o", folder / "t.ovf", "--quiet")
    assert code == 2 and "t-disk1.vmdk" in err and "also an input" in err
    assert src.read_bytes() == before and listing(folder) == ["t-disk1.vmdk"]


def test_folder_pack_that_would_write_over_its_signing_key(tmp_path, capsys):
    signer = make_signer()
    folder = tmp_path / "f"
    folder.mkdir()
    key = folder / "t.cert"  # the key, under the name the signed package's certificate takes
    key.write_bytes(signer.private_key_pem)
    cert = tmp_path / "c.pem"
    cert.write_bytes(signer.certificate_chain_pem)
    code, err = main(capsys, "pack", disk(tmp_path / "d.raw"), "-o", folder / "t.ovf",
                     "--sign-key", key, "--sign-cert", cert, "--quiet")
    assert code == 2 and "t.cert" in err
    assert key.read_bytes() == signer.private_key_pem and listing(folder) == ["t.cert"]


def test_extract_ova_into_its_own_folder_with_a_member_named_like_it(tmp_path, capsys):
    folder = tmp_path / "f"
    folder.mkdir()
    built = tmp_path / "t.ova"
    pack([disk(tmp_path / "d.raw")], built, fsync=False, mtime=1700000000)
    ova = folder / "t.ova"
    ova.write_bytes(tar_bytes(read_members(built) + [("t.ova", b"not the package")]))
    before = ova.read_bytes()
    code, err = main(capsys, "extract", ova, "-o", folder, "--quiet")
    assert code == 2 and "also an input" in err
    assert ova.read_bytes() == before


def test_stream_redirected_onto_an_input(tmp_path):
    src = disk(tmp_path / "d.raw")
    before = src.read_bytes()
    with open(src, "ab") as stdout:
        proc = subprocess.run([sys.executable, "-m", "ovfstream", "pack", str(src), "-o", "-",
                               "--quiet"], stdout=stdout, stderr=subprocess.PIPE, text=True,
                              timeout=60)
    assert proc.returncode == 2 and "also an input" in proc.stderr
    assert src.read_bytes() == before


# -- item 5: two runs to one output -------------------------------------------------------------

def _busy_disk(path: Path, seed: int) -> Path:
    """32 MiB that deflate cannot shrink (a 1 MiB random block, repeated): about half a
    second of packing, so two runs started together overlap."""
    import random
    block = random.Random(seed).randbytes(MIB)
    with open(path, "wb") as f:
        for _ in range(32):
            f.write(block)
    return path


def _pack_cmd(raw: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "ovfstream", "pack", str(raw), "-o", str(out), "--quiet",
            "--parallel", "1"]


@pytest.mark.parametrize("form", ["ova", "ovf"])
def test_concurrent_packs_leave_one_whole_package(tmp_path, form):
    env = dict(os.environ, SOURCE_DATE_EPOCH=EPOCH)
    raws = [_busy_disk(tmp_path / ("%s.raw" % n), seed) for seed, n in enumerate("ab")]
    solos = []
    for raw in raws:
        folder = tmp_path / ("solo-" + raw.stem)
        folder.mkdir()
        subprocess.run(_pack_cmd(raw, folder / ("t." + form)), env=env, check=True, timeout=60)
        solos.append(snapshot(folder))
    assert solos[0] != solos[1]
    shared = tmp_path / "shared"
    shared.mkdir()
    for _ in range(2):
        procs = [subprocess.Popen(_pack_cmd(raw, shared / ("t." + form)), env=env,
                                  stderr=subprocess.PIPE, text=True) for raw in raws]
        results = [(p.wait(timeout=60), p.stderr.read()) for p in procs]  # type: ignore[union-attr]
        for p in procs:
            p.stderr.close()  # type: ignore[union-attr]
        assert [code for code, _ in results] == [0, 0], results
        assert snapshot(shared) in solos
        no_temporaries(shared)


# -- item 6: a failed folder re-pack leaves the previous package as it was -----------------------

def _read_fails_for(monkeypatch: pytest.MonkeyPatch, victim: Path) -> None:
    real = source_mod.RawSource.read_span

    def failing(self, plan, buf):  # type: ignore[no-untyped-def]
        if self.path == str(victim) and plan.index >= 1:
            raise OSError(5, "Input/output error", str(victim))
        return real(self, plan, buf)
    monkeypatch.setattr(source_mod.RawSource, "read_span", failing)


def test_failed_folder_repack_keeps_the_old_package(tmp_path, monkeypatch):
    folder = tmp_path / "f"
    folder.mkdir()
    one = disk(tmp_path / "one.raw", seed=1)
    two = disk(tmp_path / "two.raw", 40 * MIB, seed=2)
    write_disk(two, 40 * MIB, [(0, "random", MIB), (36 * MIB, "random", MIB)], seed=2)
    pack([one, two], folder / "t.ovf", fsync=False)
    good = snapshot(folder)
    assert sorted(good) == ["t-disk1.vmdk", "t-disk2.vmdk", "t.mf", "t.ovf"]
    disk(one, seed=7)  # new content: the re-pack's first disk differs from the old one
    _read_fails_for(monkeypatch, two)
    with pytest.raises(OSError):
        pack([one, two], folder / "t.ovf", fsync=False)
    assert snapshot(folder) == good
    assert verify(folder / "t.ovf", deep=True).ok


def test_failed_folder_repack_by_file_size_limit_keeps_the_old_package(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    small = disk(tmp_path / "small.raw")
    big = tmp_path / "big.raw"
    write_disk(big, 8 * MIB, [(0, "random", 8 * MIB)], seed=5)
    pack([small], folder / "t.ovf", fsync=False)
    good = snapshot(folder)
    script = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, 4 << 20));"
              "from ovfstream.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", script, "pack", str(small), str(big), "-o",
                           str(folder / "t.ovf"), "--quiet"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "File too large" in proc.stderr
    assert snapshot(folder) == good


def test_unsigned_repack_removes_the_stale_certificate(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    raw = disk(tmp_path / "d.raw")
    pack([raw], folder / "t.ovf", fsync=False, signer=make_signer())
    assert sorted(listing(folder)) == ["t-disk1.vmdk", "t.cert", "t.mf", "t.ovf"]
    disk(raw, seed=9)
    pack([raw], folder / "t.ovf", fsync=False)
    assert listing(folder) == ["t-disk1.vmdk", "t.mf", "t.ovf"]
    assert verify(folder / "t.ovf").ok


def test_group_commit_renames_in_order_and_abort_removes_everything(tmp_path):
    (tmp_path / "a").write_bytes(b"old a")
    with pytest.raises(RuntimeError):
        with atomic.AtomicFiles(fsync=False) as group:
            group.open(tmp_path / "a").write(b"new a")
            group.open(tmp_path / "b").write(b"new b")
            raise RuntimeError("midway")
    assert listing(tmp_path) == ["a"] and (tmp_path / "a").read_bytes() == b"old a"
    with atomic.AtomicFiles(fsync=False) as group:
        group.open(tmp_path / "a").write(b"new a")
        group.open(tmp_path / "b").write(b"new b")
        group.remove_stale(tmp_path / "c")  # absent: nothing to do
    assert snapshot(tmp_path) == {"a": b"new a", "b": b"new b"}


def test_output_kind_words(tmp_path):
    make_node(tmp_path / "p", "fifo")
    with pytest.raises(UsageError, match="FIFO"):
        atomic.output_kind(tmp_path / "p")
    assert atomic.output_kind(tmp_path / "missing") == "new"
    assert atomic.output_kind(os.devnull) == "null"


def test_missing_output_folder_names_the_output_not_the_temporary(tmp_path, capsys):
    from ovfstream import cli
    raw = tmp_path / "d.raw"
    raw.write_bytes(b"\x01" * 70000)
    out = tmp_path / "missing" / "x.ova"
    assert cli.main(["pack", str(raw), "-o", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert str(out) in err and "does not exist" in err and ".partial" not in err
    assert cli.main(["convert", str(raw), "-o", str(tmp_path / "missing" / "x.vmdk")]) == 1
    assert ".partial" not in capsys.readouterr().err
