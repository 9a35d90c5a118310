#!/usr/bin/env bash
# Installs what ovfstream and its tests need on a fresh Debian/Ubuntu machine (root or sudo):
# qemu-utils (the real VMDK reader the interop tests run), GNU tar, openssl, a C compiler
# for the Cython core; then the package itself, editable, with its test extra.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
command -v tar >/dev/null 2>&1 || need+=(tar)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v cc >/dev/null 2>&1 || need+=(gcc)
command -v mkfs.ext4 >/dev/null 2>&1 || need+=(e2fsprogs)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
PY=${PYTHON:-python3}
"$PY" -m pip install -q --disable-pip-version-check -e '.[test]'
