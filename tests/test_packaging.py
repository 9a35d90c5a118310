"""Packaging: the version's one home, and the release path as a user meets it.

The first tests need nothing but this checkout.  The ``packaging`` ones run
scripts/build-wheels.sh (the sdist from the tracked files, the wheel built from that sdist in an
isolated environment, auditwheel), then install the wheel into fresh virtual environments with
no compiler (CC=false) and binaries only, through pip and through pipx, and pack -> verify with
the installed command; the sdist alone with no compiler fails with a message that says what to
do, or installs the pure-Python build when asked.  They need the package index (build
isolation fetches setuptools and Cython; the venvs fetch the dependencies; pip's cache keeps
it short): without it they skip with the reason, except in CI (CI=true), where they fail.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

import ovfstream

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]
MIB = 1 << 20


# --- the version: pyproject.toml, read at run time --------------------------------------------

def test_version_is_pyprojects():
    assert ovfstream.__version__ == VERSION
    out = subprocess.run([sys.executable, "-m", "ovfstream", "--version"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    # The number, then which core runs (for bug reports) and on which Python.
    from ovfstream.vmdk.writer import NATIVE
    core = "native core" if NATIVE else "pure-Python core: ovfstream._grains is absent"
    assert out == "ovfstream %s (%s, Python %d.%d.%d)\n" % ((VERSION, core) + sys.version_info[:3])


def _version_in(tree: Path, monkeypatch: pytest.MonkeyPatch, installed: str | None) -> str:
    """ovfstream._version() run as if its file were tree/src/ovfstream/__init__.py, with
    ``installed`` as the installed distribution's version (None: not installed)."""
    def fake_version(name: str) -> str:
        assert name == "ovfstream"
        if installed is None:
            raise metadata.PackageNotFoundError(name)
        return installed
    monkeypatch.setattr(metadata, "version", fake_version)
    init = tree / "src" / "ovfstream" / "__init__.py"
    init.parent.mkdir(parents=True, exist_ok=True)
    namespace: dict[str, object] = {"__file__": str(init)}
    exec(inspect.getsource(ovfstream._version), namespace)
    return namespace["_version"]()  # type: ignore[operator]


@pytest.mark.parametrize("pyproject,installed,expect", [
    # A source tree (editable or not installed) says its own pyproject's version, even when
    # another copy is installed: bumping it needs no reinstall.
    ('[project]\nname = "ovfstream"\nversion = "9.8.7"\n', "0.1.0", "9.8.7"),
    ('[project]\nname = "ovfstream"\nversion = "9.8.7"\n', None, "9.8.7"),
    # Not ovfstream's pyproject, an unreadable one, or none: the installed metadata.
    ('[project]\nname = "other"\nversion = "5"\n', "0.1.0", "0.1.0"),
    ('[project\nname = ', "0.1.0", "0.1.0"),
    ('[project]\nname = "ovfstream"\ndynamic = ["version"]\n', "0.1.0", "0.1.0"),
    (None, "0.1.0", "0.1.0"),
    # Neither: a version that says so rather than a crash at import.
    (None, None, "0+unknown"),
])
def test_version_sources(tmp_path, monkeypatch, pyproject, installed, expect):
    if pyproject is not None:
        (tmp_path / "pyproject.toml").write_text(pyproject)
    assert _version_in(tmp_path, monkeypatch, installed) == expect


def test_installed_layout_reads_metadata(tmp_path, monkeypatch):
    # site-packages/ovfstream/__init__.py: a pyproject two levels up is not ours to read.
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "ovfstream"\nversion = "9"\n')
    site = tmp_path / "site-packages"
    namespace: dict[str, object] = {"__file__": str(site / "ovfstream" / "__init__.py")}
    monkeypatch.setattr(metadata, "version", lambda name: "1.2.3")
    exec(inspect.getsource(ovfstream._version), namespace)
    assert namespace["_version"]() == "1.2.3"  # type: ignore[operator]


def test_version_has_one_home():
    # No second copy of the number in the package or setup.py.
    pattern = re.compile(r"""["']%s["']""" % re.escape(VERSION))
    for path in [ROOT / "setup.py", *sorted((ROOT / "src" / "ovfstream").rglob("*.py"))]:
        assert not pattern.search(path.read_text(encoding="utf-8")), path


# --- the release path: sdist, wheel, fresh venvs ------------------------------------------------

def _cannot(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail("%s (CI must run the packaging tests)" % reason)
    pytest.skip(reason)


def _run(*args: str | os.PathLike[str], timeout: float = 180, env: dict[str, str] | None = None,
         cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        pytest.fail("%s exited %d\n--- stdout\n%s\n--- stderr\n%s"
                    % (" ".join(map(str, args)), proc.returncode, proc.stdout[-4000:],
                       proc.stderr[-4000:]))
    return proc


def _no_compiler_env(**extra: str) -> dict[str, str]:
    """The environment of a machine without a C compiler or Cython in reach."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(CC="false", CXX="false", LDSHARED="false", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.update(extra)
    return env


def _venv(path: Path) -> Path:
    _run(sys.executable, "-m", "venv", path, timeout=120)
    return path / "bin"


def _raw_disk(path: Path) -> Path:
    """16 MiB: text, random bytes, a partial grain, holes; made here, never committed."""
    import random
    rng = random.Random(13)
    with open(path, "wb") as f:
        f.write(b"ovfstream packaging test\n" * 4000)
        f.seek(3 * MIB)
        f.write(rng.randbytes(MIB))
        f.seek(9 * MIB + 4096)
        f.write(bytes(range(256)) * 300)
        f.truncate(16 * MIB)
    return path


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scripts/build-wheels.sh run on this checkout for the test's interpreter."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        _cannot("needs a git checkout (scripts/build-wheels.sh packs the tracked files)")
    probe = tmp_path_factory.mktemp("probe")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--retries",
                           "0", "--timeout", "15", "--only-binary", ":all:", "-d", str(probe),
                           "setuptools>=77"], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        _cannot("the package index is not reachable (pip download setuptools: %s)"
                % (proc.stderr.strip().splitlines() or ["exit %d" % proc.returncode])[-1])
    out = tmp_path_factory.mktemp("dist")
    _run("bash", ROOT / "scripts" / "build-wheels.sh", "--out", out, sys.executable,
         timeout=600)
    return out


def _only(directory: Path, pattern: str) -> Path:
    found = sorted(directory.glob(pattern))
    assert len(found) == 1, (pattern, found)
    return found[0]


def _tracked() -> set[str]:
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True,
                         check=True, timeout=60).stdout.decode()
    return {name for name in out.split("\0") if name}


@pytest.mark.packaging
@pytest.mark.interop
def test_sdist_holds_the_sources_and_nothing_else(dist):
    sdist = _only(dist, "ovfstream-%s.tar.gz" % VERSION)
    prefix = "ovfstream-%s/" % VERSION
    with tarfile.open(sdist) as tar:
        members = {m.name[len(prefix):]: m for m in tar.getmembers() if m.isfile()}
        pkg_info = tar.extractfile(prefix + "PKG-INFO").read().decode()  # type: ignore[union-attr]
    names = set(members)
    tracked = _tracked()
    # Every source the build, the tests and the metadata need, from git's list.
    wanted = {n for n in tracked
              if n in ("LICENSE", "README.md", "pyproject.toml", "setup.py", "MANIFEST.in",
                       "src/_native/grains.pyx", "src/ovfstream/py.typed")
              or (n.startswith(("src/ovfstream/", "tests/")) and n.endswith(".py"))
              or (n.startswith("docs/") and n.endswith(".md"))}
    assert {"src/_native/grains.pyx", "LICENSE", "README.md", "docs/rules.md",
            "tests/conftest.py", "tests/test_packaging.py"} <= wanted
    assert wanted <= names, sorted(wanted - names)
    # Beyond them only the metadata setuptools writes: nothing generated, untracked or stray
    # (grains.c, .so, caches, .venv, sample/, benches/, scripts/).
    generated = {"PKG-INFO", "setup.cfg"} | {n for n in names
                                              if n.startswith("src/ovfstream.egg-info/")}
    assert names - wanted - generated == set()
    assert not any(n.endswith((".c", ".so", ".o", ".pyc")) for n in names)
    assert max(m.size for m in members.values()) < 256 * 1024  # no data blobs
    assert sdist.stat().st_size < 1 * MIB
    assert "\nVersion: %s\n" % VERSION in pkg_info
    assert "\nLicense-Expression: Apache-2.0\n" in pkg_info
    assert (ROOT / "LICENSE").read_text().split()[:4] == ["Apache", "License", "Version", "2.0,"]


@pytest.mark.packaging
@pytest.mark.interop
def test_wheel_is_repaired_and_carries_the_core(dist):
    wheel = _only(dist, "ovfstream-%s-*.whl" % VERSION)
    tag = "cp%d%d" % sys.version_info[:2]
    if sys.platform == "linux" and os.uname().machine == "x86_64":
        # auditwheel found nothing but libc, at glibc symbol versions <= 2.17.
        assert wheel.name == ("ovfstream-%s-%s-%s-manylinux2014_x86_64.manylinux_2_17_x86_64.whl"
                              % (VERSION, tag, tag)), wheel.name
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        wheel_meta = zf.read("ovfstream-%s.dist-info/METADATA" % VERSION).decode()
    cores = [n for n in names if re.fullmatch(r"ovfstream/_grains\.[^/]+\.so", n)]
    assert len(cores) == 1, sorted(names)
    assert "ovfstream-%s.dist-info/licenses/LICENSE" % VERSION in names
    assert "ovfstream/grains_py.py" in names and "ovfstream/py.typed" in names
    assert not any(n.endswith((".pyx", ".c")) or n.startswith(("tests/", "src/")) for n in names)
    assert not any(".libs/" in n for n in names)  # nothing vendored: only libc is used
    assert "\nVersion: %s\n" % VERSION in wheel_meta


@pytest.mark.packaging
@pytest.mark.interop
def test_wheel_installs_without_compiler_and_round_trips(dist, tmp_path):
    wheel = _only(dist, "ovfstream-%s-*.whl" % VERSION)
    bin_dir = _venv(tmp_path / "venv")
    env = _no_compiler_env()
    _run(bin_dir / "python", "-I", "-m", "pip", "install", "-q", "--only-binary", ":all:", wheel,
         env=env)
    # Installed with no compiler and without Cython; the core is the wheel's.
    probe = _run(bin_dir / "python", "-I", "-c",
                 "import importlib.util, ovfstream, ovfstream._grains as g\n"
                 "from ovfstream.vmdk.writer import NATIVE\n"
                 "print(importlib.util.find_spec('Cython') is None)\n"
                 "print(g.__file__)\nprint(ovfstream.__version__)\nprint(NATIVE)",
                 env=env, cwd=tmp_path)
    no_cython, core, version, native = probe.stdout.split("\n")[:4]
    assert no_cython == "True"
    assert Path(core).is_relative_to(tmp_path / "venv"), core
    assert version == VERSION and native == "True"
    out = _run(bin_dir / "ovfstream", "--version", env=env, cwd=tmp_path).stdout
    assert out.startswith("ovfstream %s (native core, Python " % VERSION), out

    disk = _raw_disk(tmp_path / "disk.raw")
    env["SOURCE_DATE_EPOCH"] = "1700000000"
    _run(bin_dir / "ovfstream", "pack", disk, "-o", tmp_path / "wheel.ova", "--name", "pkg", "-q",
         env=env, cwd=tmp_path)
    _run(bin_dir / "ovfstream", "verify", "--deep", "--strict", "-q", tmp_path / "wheel.ova",
         env=env, cwd=tmp_path)
    # The same bytes as this checkout's own build makes.
    (tmp_path / "tree").mkdir()
    _run(sys.executable, "-m", "ovfstream", "pack", disk, "-o", tmp_path / "tree" / "wheel.ova",
         "--name", "pkg", "-q", env=dict(os.environ, SOURCE_DATE_EPOCH="1700000000"))
    digest = [hashlib.sha256(p.read_bytes()).hexdigest()
              for p in (tmp_path / "wheel.ova", tmp_path / "tree" / "wheel.ova")]
    assert digest[0] == digest[1]


@pytest.mark.packaging
@pytest.mark.interop
def test_pipx_install_gives_a_working_command(dist, tmp_path):
    wheel = _only(dist, "ovfstream-%s-*.whl" % VERSION)
    pipx_bin = _venv(tmp_path / "pipx-venv")
    _run(pipx_bin / "python", "-I", "-m", "pip", "install", "-q", "pipx")
    home = tmp_path / "pipx"
    env = _no_compiler_env(PIPX_HOME=str(home / "home"), PIPX_BIN_DIR=str(home / "bin"),
                           PIPX_MAN_DIR=str(home / "man"))
    _run(pipx_bin / "pipx", "install", "--python", pipx_bin / "python",
         "--pip-args=--only-binary=:all:", wheel, env=env)
    command = home / "bin" / "ovfstream"
    out = _run(command, "--version", env=env, cwd=tmp_path).stdout
    assert out.startswith("ovfstream %s (native core, " % VERSION), out
    disk = _raw_disk(tmp_path / "disk.raw")
    _run(command, "convert", disk, "-o", tmp_path / "disk.vmdk", "-q", env=env, cwd=tmp_path)
    _run(command, "verify", "--deep", "-q", tmp_path / "disk.vmdk", env=env, cwd=tmp_path)


@pytest.mark.packaging
@pytest.mark.interop
def test_sdist_without_compiler_says_what_to_do_or_installs_pure_python(dist, tmp_path):
    sdist = _only(dist, "ovfstream-%s.tar.gz" % VERSION)
    bin_dir = _venv(tmp_path / "venv")
    failed = _run(bin_dir / "python", "-I", "-m", "pip", "install", sdist,
                  env=_no_compiler_env(), check=False)
    assert failed.returncode != 0
    said = failed.stdout + failed.stderr
    assert "the native core (src/_native/grains.pyx -> ovfstream._grains) did not compile" in said
    assert "apt-get install gcc python3-dev" in said and "OVFSTREAM_PURE_PYTHON=1" in said
    # Asked for: the pure-Python build, which packs and verifies through grains_py.
    env = _no_compiler_env(OVFSTREAM_PURE_PYTHON="1")
    _run(bin_dir / "python", "-I", "-m", "pip", "install", "-q", sdist, env=env)
    probe = _run(bin_dir / "python", "-I", "-c",
                 "import importlib.util, ovfstream.vmdk.writer as w\n"
                 "print(importlib.util.find_spec('ovfstream._grains'), w.NATIVE)",
                 env=env, cwd=tmp_path)
    assert probe.stdout == "None False\n"
    out = _run(bin_dir / "ovfstream", "--version", env=env, cwd=tmp_path).stdout
    assert out.startswith("ovfstream %s (pure-Python core: " % VERSION), out
    disk = _raw_disk(tmp_path / "disk.raw")
    env["SOURCE_DATE_EPOCH"] = "1700000000"
    _run(bin_dir / "ovfstream", "pack", disk, "-o", tmp_path / "pure.ova", "--name", "pkg",
         "--engine", "zlib", "-q", env=env, cwd=tmp_path)
    _run(bin_dir / "ovfstream", "verify", "--deep", "-q", tmp_path / "pure.ova", env=env,
         cwd=tmp_path)
    # The twin's bytes are the native core's (zlib: reproducible on both paths).
    (tmp_path / "tree").mkdir()
    _run(sys.executable, "-m", "ovfstream", "pack", disk, "-o", tmp_path / "tree" / "pure.ova",
         "--name", "pkg", "--engine", "zlib", "-q",
         env=dict(os.environ, SOURCE_DATE_EPOCH="1700000000"))
    assert (tmp_path / "pure.ova").read_bytes() == (tmp_path / "tree" / "pure.ova").read_bytes()
