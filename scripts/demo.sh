#!/usr/bin/env bash
# The main job, from a fresh machine: set up (scripts/setup.sh: system tools, .venv/), make a
# sample disk (ext4 with real files in a 2 GiB sparse image), pack it into an OVA, verify it
# (strict + deep), show it, extract the disk and compare it with the source using the real
# qemu-img.  Needs nothing beside the checkout: strict verification uses the built-in
# structural rules, plus the DMTF XSDs when they are installed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PATH:/usr/sbin:/sbin"
PY=.venv/bin/python
out=${1:-sample}
mkdir -p "$out"
if [ ! -f "$out/disk.raw" ]; then
    staging=$(mktemp -d)
    cp -a /usr/share/doc "$staging/doc" 2>/dev/null || true
    cp -a /usr/include "$staging/include" 2>/dev/null || true
    truncate -s 2G "$out/disk.raw.tmp"
    mkfs.ext4 -F -q -E root_owner=0:0 -d "$staging" "$out/disk.raw.tmp"
    rm -rf "$staging"
    mv "$out/disk.raw.tmp" "$out/disk.raw"
fi
"$PY" -m ovfstream pack "$out/disk.raw" -o "$out/sample.ova" --name sample --cpus 2 \
    --memory 2048 --os debian12-64 --nic "VM Network:vmxnet3" --firmware efi
"$PY" -m ovfstream verify "$out/sample.ova" --strict --deep
"$PY" -m ovfstream inspect "$out/sample.ova"
"$PY" -m ovfstream extract "$out/sample.ova" -o "$out/extracted" --quiet
qemu-img compare -f raw -F raw "$out/disk.raw" "$out/extracted/sample-disk1.raw"
echo "demo: $out/sample.ova packed, verified and round-tripped"
