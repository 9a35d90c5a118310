"""Benchmark inputs made from this machine's own files: an ext4 OS-like image and a dense file.

    python benches/make_image.py --kind ext4  --out os.img    [--size 8G] [--data 1.2G]
    python benches/make_image.py --kind dense --out dense.raw [--size 1G]

``ext4``: a sparse file of --size formatted by ``mkfs.ext4 -d STAGING``, where STAGING holds
about --data bytes of real files (binaries, libraries, headers, docs, Python packages) copied
from the system, the way an OS image is mostly such files.  ``dense``: --size bytes of the same
kind of content concatenated, no holes.  Both are what DESIGN.md "Performance targets" measures.

Reproducible on one machine: files are chosen by a sorted walk; the file system gets a fixed
UUID and directory hash seed, root ownership and a fake clock (E2FSPROGS_FAKE_TIME,
SOURCE_DATE_EPOCH); mtimes are set to that epoch; atime and ctime, which mkfs copies from the
staging inodes and which userspace cannot set, are rewritten afterwards with debugfs.  The
content itself follows the installed packages, so another machine makes another image.

A stamp file ``OUT.stamp`` records the parameters; an existing OUT with a matching stamp is
kept as is (the 8 GiB image takes a minute or two to make).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

__all__ = ["parse_size", "source_roots", "iter_source_files", "make_ext4", "make_dense",
           "ensure_image", "main"]

EPOCH = 1700000000  # 2023-11-14T22:13:20Z: the fixed clock of every generated image
FS_UUID = "0b5e5a3c-0000-4000-8000-0000000000e4"
HASH_SEED = "0b5e5a3c-0000-4000-8000-0000000000a5"
STAMP_VERSION = 1  # bump when the recipe changes so cached images are rebuilt
CHUNK = 1 << 20
# Names debugfs can take unquoted-safe inside double quotes; anything else is skipped so the
# timestamp rewrite can address every inode by path.
_SAFE_NAME = re.compile(r"^[A-Za-z0-9._+\-@,:=~%]+$")
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'8G', '1.2G', '256M', '4096' -> bytes (binary units; a trailing 'iB' or 'B' is allowed)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if m is None:
        raise argparse.ArgumentTypeError("size %r: expected a number with K, M, G or T" % text)
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def source_roots() -> list[Path]:
    """Where real files come from, smallest and most varied first so each gets its share."""
    candidates = [Path("/usr/bin"), Path("/usr/include"), Path("/usr/share"),
                  Path(sysconfig.get_paths()["purelib"]), Path("/usr/lib")]
    seen: list[Path] = []
    for c in candidates:
        if c.is_dir() and c.resolve() not in [s.resolve() for s in seen]:
            seen.append(c)
    return seen


def iter_source_files(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Regular files and symlinks under root, sorted walk, names debugfs can address."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if _SAFE_NAME.match(d))
        for name in sorted(filenames):
            if not _SAFE_NAME.match(name):
                continue
            path = Path(dirpath) / name
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                yield path, st


def _readable(path: Path) -> bool:
    return os.access(path, os.R_OK)


def _stage(staging: Path, data_bytes: int) -> tuple[int, int]:
    """Copy about data_bytes of real files into staging; returns (files, bytes)."""
    roots = source_roots()
    total = n_files = 0
    copy_round = 0
    while total < data_bytes * 0.98:  # each root stops just short of its share
        before = total
        for i, root in enumerate(roots):
            # an even share of what is left for each remaining root, so /usr/lib does not
            # crowd out binaries, headers and docs
            quota = (data_bytes - total) // (len(roots) - i)
            taken = 0
            prefix = root.relative_to(root.anchor)
            dest_root = staging / ("copy%d" % copy_round if copy_round else "") / prefix
            for path, st in iter_source_files(root):
                if taken >= quota - (1 << 20):
                    break
                dest = dest_root / path.relative_to(root)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if stat.S_ISLNK(st.st_mode):
                    os.symlink(os.readlink(path), dest)
                    n_files += 1
                    continue
                if not _readable(path) or taken + st.st_size > quota + (1 << 20):
                    continue  # would overshoot the share; a smaller file further on may fit
                try:
                    shutil.copyfile(path, dest, follow_symlinks=False)
                except OSError:
                    continue
                os.chmod(dest, stat.S_IMODE(st.st_mode) & 0o7755)
                taken += st.st_size
                n_files += 1
            total += taken
        if total == before:
            raise RuntimeError("no readable files under %s" % ", ".join(map(str, roots)))
        copy_round += 1  # the system holds less than asked: repeat into copyN/
    return n_files, total


def _fix_times(staging: Path) -> list[str]:
    """Set every staged mtime/atime to EPOCH (deepest first, so dirs keep theirs)."""
    rel: list[str] = []
    for dirpath, dirnames, filenames in os.walk(staging, topdown=False):
        for name in sorted(filenames) + sorted(dirnames):
            p = Path(dirpath) / name
            rel.append("/" + str(p.relative_to(staging)))
            os.utime(p, (EPOCH, EPOCH), follow_symlinks=False)
    os.utime(staging, (EPOCH, EPOCH))
    return sorted(rel)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["E2FSPROGS_FAKE_TIME"] = str(EPOCH)
    env["SOURCE_DATE_EPOCH"] = str(EPOCH)
    return env


def make_ext4(out: Path, *, size_bytes: int, data_bytes: int) -> dict[str, int]:
    """Write the ext4 image; returns facts about it."""
    if data_bytes > size_bytes * 0.8:
        raise SystemExit("--data %d does not fit in a %d-byte file system" % (data_bytes, size_bytes))
    staging = Path(tempfile.mkdtemp(prefix=".stage-", dir=out.parent))
    os.chmod(staging, 0o755)  # becomes the image's root directory
    try:
        n_files, n_bytes = _stage(staging, data_bytes)
        paths = _fix_times(staging)
        tmp = out.with_name(out.name + ".tmp")
        with open(tmp, "wb") as f:
            f.truncate(size_bytes)
        subprocess.run(["mkfs.ext4", "-F", "-q", "-L", "benchroot", "-U", FS_UUID,
                        "-E", "root_owner=0:0,hash_seed=%s" % HASH_SEED,
                        "-d", str(staging), str(tmp)], check=True, env=_env())
        # mkfs copies each staged inode's ctime (and atime, which its own reads move);
        # rewrite both so two runs give the same bytes.
        when = "@%d" % EPOCH
        script = "".join('sif "%s" %s %s\n' % (p, field, when)
                         for p in ["/", "/lost+found", *paths] for field in ("ctime", "atime"))
        subprocess.run(["debugfs", "-w", "-f", "-", str(tmp)], input=script.encode(),
                       check=True, env=_env(), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"files": n_files, "data_bytes": n_bytes}


def make_dense(out: Path, *, size_bytes: int) -> dict[str, int]:
    """Write size_bytes of concatenated system files, every block allocated."""
    tmp = out.with_name(out.name + ".tmp")
    written = 0
    with open(tmp, "wb") as f:
        while written < size_bytes:
            before = written
            for root in source_roots():
                for path, st in iter_source_files(root):
                    if written >= size_bytes:
                        break
                    if not stat.S_ISREG(st.st_mode) or not _readable(path):
                        continue
                    try:
                        with open(path, "rb") as src:
                            while written < size_bytes:
                                block = src.read(min(CHUNK, size_bytes - written))
                                if not block:
                                    break
                                f.write(block)
                                written += len(block)
                    except OSError:
                        continue
            if written == before:
                raise RuntimeError("no readable system files to fill %s" % out)
    os.replace(tmp, out)
    return {"data_bytes": written}


def ensure_image(kind: str, out: str | os.PathLike[str], *, size_bytes: int | None = None,
                 data_bytes: int | None = None) -> Path:
    """Make (or reuse, when the stamp matches) the image and return its path."""
    path = Path(out).resolve()
    if size_bytes is None:
        size_bytes = 8 << 30 if kind == "ext4" else 1 << 30
    if kind == "ext4" and data_bytes is None:
        data_bytes = int(1.2 * (1 << 30))
    params = {"version": STAMP_VERSION, "kind": kind, "size": size_bytes,
              "data": data_bytes if kind == "ext4" else None}
    stamp = path.with_name(path.name + ".stamp")
    if path.exists() and stamp.exists():
        try:
            old = json.loads(stamp.read_text())
        except ValueError:
            old = {}
        if {k: old.get(k) for k in params} == params and path.stat().st_size == size_bytes:
            return path
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    if kind == "ext4":
        facts = make_ext4(path, size_bytes=size_bytes, data_bytes=data_bytes or 0)
    elif kind == "dense":
        facts = make_dense(path, size_bytes=size_bytes)
    else:
        raise SystemExit("--kind %r: expected ext4 or dense" % kind)
    stamp.write_text(json.dumps({**params, **facts}, indent=1) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kind", required=True, choices=("ext4", "dense"))
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=parse_size, default=None,
                   help="file size (default 8G for ext4, 1G for dense)")
    p.add_argument("--data", type=parse_size, default=None,
                   help="ext4: bytes of real files to copy in (default 1.2G)")
    args = p.parse_args(argv)
    path = ensure_image(args.kind, args.out, size_bytes=args.size, data_bytes=args.data)
    st = path.stat()
    print("%s: %d bytes, %d allocated" % (path, st.st_size, st.st_blocks * 512), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
