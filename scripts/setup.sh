#!/usr/bin/env bash
# Prepares this checkout on a fresh Debian/Ubuntu machine: installs the system tools the demo
# and the tests run (qemu-utils, GNU tar, openssl, gcc, e2fsprogs, python3-venv, python3-dev)
# with apt when they are missing (root or sudo), then a project virtual environment .venv/
# holding this package (editable, the Cython core built in place) and its test extra.
#
# The interpreter is $PYTHON if set, else the distribution's /usr/bin/python3, else python3 on
# PATH.  Nothing is ever pip-installed into that interpreter: Debian 12 and Ubuntu 24.04 mark
# it externally managed (PEP 668), and a project must not change the system's Python.
# Safe to run again: apt only runs when a tool is missing, pip only when pyproject.toml,
# setup.py, the .pyx or the base interpreter changed (a stamp in .venv/) or the build is gone.
set -euo pipefail
cd "$(dirname "$0")/.."
# mkfs.ext4 lives in /sbin or /usr/sbin, which a plain user's PATH may lack.
export PATH="$PATH:/usr/sbin:/sbin"

say() { echo "setup: $*" >&2; }

if [ -n "${PYTHON:-}" ]; then
    base=$(command -v "$PYTHON" || true)
    [ -n "$base" ] || { say "PYTHON=$PYTHON is not an executable"; exit 1; }
elif [ -x /usr/bin/python3 ]; then
    base=/usr/bin/python3
else
    base=$(command -v python3 || true)
fi

need=()
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
command -v tar >/dev/null 2>&1 || need+=(tar)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v mkfs.ext4 >/dev/null 2>&1 || need+=(e2fsprogs)
if [ -z "$base" ]; then
    need+=(python3 python3-venv python3-dev)
else
    # Debian splits venv/ensurepip and the C headers out of the interpreter package; name
    # the versioned packages unless the base is the distribution's default python3.
    pyver=$("$base" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    if [ "$(readlink -f "$base")" = "$(readlink -f /usr/bin/python3 2>/dev/null || true)" ]; then
        venv_pkg=python3-venv dev_pkg=python3-dev
    else
        venv_pkg=python$pyver-venv dev_pkg=python$pyver-dev
    fi
    "$base" -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=("$venv_pkg")
    include=$("$base" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    [ -f "$include/Python.h" ] || need+=("$dev_pkg")
fi
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        say "missing ${need[*]}: install them (apt-get install ${need[*]}) or run as root"
        exit 1
    fi
    command -v apt-get >/dev/null 2>&1 || { say "missing ${need[*]} and no apt-get"; exit 1; }
    say "apt-get install ${need[*]}"
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    [ -n "$base" ] || base=$(command -v python3)
fi

venv=.venv
vpy=$venv/bin/python
# The stamp names what the environment was built from: the base interpreter and the files
# that decide what pip installs and compiles.
stamp=$( { "$base" -c 'import sys; print(sys.executable, sys.version)'
           cat pyproject.toml setup.py src/_native/grains.pyx; } | sha256sum | cut -d' ' -f1)
if [ -x "$vpy" ] && [ "$(cat "$venv/.ovfstream-stamp" 2>/dev/null)" = "$stamp" ] \
        && "$vpy" -c 'import ovfstream._grains' >/dev/null 2>&1; then
    exit 0  # up to date
fi
if [ ! -x "$vpy" ] || ! "$vpy" -c 'import sys; sys.exit(sys.base_prefix == sys.prefix)' 2>/dev/null \
        || [ "$("$vpy" -c 'import sys; print(sys.version)')" != "$("$base" -c 'import sys; print(sys.version)')" ]; then
    say "creating $venv from $base"
    rm -rf "$venv"
    "$base" -m venv "$venv"
fi
rm -f "$venv/.ovfstream-stamp"
say "installing ovfstream (editable, builds the native core) and its test extra into $venv"
# -I: the venv's own site-packages only (no user site, no PYTHONPATH).
"$vpy" -I -m pip install -q --disable-pip-version-check -e '.[test]'
"$vpy" -I -c 'import ovfstream._grains' || { say "the native core did not build"; exit 1; }
echo "$stamp" > "$venv/.ovfstream-stamp"
