"""qcow2's compressed clusters copied into VMDK grains (issue 9's qcow2 speed): images made by
the real qemu-img / qemu-io, judged by ``qemu-img compare``/``check`` and ``verify --deep
--strict``; copied grains are the clusters' own deflate bytes; --recompress, worker counts
and the span cache never change what the settings say the bytes are; hostile clusters fail
with the qcow2.compressed rule and leave nothing behind."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from ovfstream import cli
from ovfstream.convert import convert
from ovfstream.pack import pack
from ovfstream.sources.qcow2 import COMPRESSED, MAX_COPIED_STREAM
from ovfstream.verify import verify
from ovfstream.vmdk.reader import VmdkReader

from ovfs_testlib import GRAIN, MIB, REPRODUCIBLE_ENGINE, write_disk

from .test_qcow2 import _first_l2, _patch, check_vmdk, qemu_img, qemu_io

pytestmark = pytest.mark.interop

SIZE = 40 * MIB + 4096           # two spans; the last grain is partial
LAYOUT = [(0, "text", 3 * GRAIN), (5 * GRAIN, "random", 2 * GRAIN),
          (9 * GRAIN, "zero", GRAIN), (12 * GRAIN + 100, "text", 20000),
          (33 * MIB, "text", MIB), (40 * MIB - GRAIN, "text", GRAIN + 4096)]


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(raw, its zlib qcow2): text clusters compressed, random ones stored, zeros absent."""
    folder = tmp_path_factory.mktemp("copy")
    raw = write_disk(folder / "d.raw", SIZE, LAYOUT)
    image = folder / "d.qcow2"
    qemu_img("convert", "-q", "-c", "-f", "raw", "-O", "qcow2", raw, image)
    return raw, image


def _to(tmp_path: Path, sub: str, source: Path, **kw: object) -> tuple[Path, object]:
    (tmp_path / sub).mkdir()
    out = tmp_path / sub / "d.vmdk"  # one file name: the descriptor names it
    kw.setdefault("engine", REPRODUCIBLE_ENGINE)  # outputs of separate runs are compared
    return out, convert(source, out, **kw).stats


def _stream_of(image: Path, entry_at: int) -> bytes:
    """The deflate stream of the compressed cluster whose L2 entry is at ``entry_at``."""
    data = image.read_bytes()
    entry = struct.unpack_from(">Q", data, entry_at)[0]
    assert entry & COMPRESSED
    coffset = entry & ((1 << 54) - 1)  # 64 KiB clusters: x = 62 - 8
    inflater = zlib.decompressobj(-15)
    assert len(inflater.decompress(data[coffset:coffset + 2 * GRAIN])) == GRAIN
    assert inflater.eof
    return data[coffset:coffset + 2 * GRAIN - len(inflater.unused_data)]


def test_copied_grains_give_the_disk(disk: tuple[Path, Path], tmp_path: Path) -> None:
    raw, image = disk
    out, stats = _to(tmp_path, "a", image, parallel=1)
    # text grains: 3 + 1 + 16 + 1 full ones (the partial last grain goes through the engine)
    assert stats.grains_copied == 21
    assert stats.grains_written == 21 + 2 + 1
    check_vmdk(image, out)
    qemu_img("compare", "-q", raw, out)
    assert verify(out, deep=True, strict=True).ok
    again, _ = _to(tmp_path, "b", image, parallel=3)
    assert again.read_bytes() == out.read_bytes()
    ova = tmp_path / "d.ova"
    result = pack([image], ova, parallel=2)
    assert result.disks[0].stats.grains_copied == 21
    assert result.as_dict()["disks"][0]["grains_copied"] == 21
    assert verify(ova, deep=True, strict=True).ok


def test_a_copied_grain_is_the_clusters_deflate_stream(disk: tuple[Path, Path],
                                                       tmp_path: Path) -> None:
    raw, image = disk
    out, _ = _to(tmp_path, "a", image)
    _, entry_at = _first_l2(image)            # guest cluster 0: text, compressed by qemu
    stream = _stream_of(image, entry_at)
    grain0 = raw.read_bytes()[:GRAIN]
    with VmdkReader(out) as reader:
        lba, _, size, payload = next(iter(reader.grains()))
    assert lba == 0 and size == len(payload) == len(stream) + 6
    assert payload == b"\x78\x01" + stream + zlib.adler32(grain0).to_bytes(4, "big")


def test_recompress_gives_the_raw_inputs_bytes(disk: tuple[Path, Path], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    raw, image = disk
    from_raw, _ = _to(tmp_path, "r", raw)
    forced, stats = _to(tmp_path, "q", image, recompress=True)
    assert stats.grains_copied == 0
    assert forced.read_bytes() == from_raw.read_bytes()
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    ovas = {}
    for sub, source, extra in (("r", raw, []), ("q", image, ["--recompress"]), ("c", image, [])):
        (tmp_path / sub).mkdir(exist_ok=True)
        ovas[sub] = tmp_path / sub / "d.ova"
        assert cli.main(["pack", str(source), "-o", str(ovas[sub]), "-q", "--engine",
                         REPRODUCIBLE_ENGINE, *extra]) == 0
    assert ovas["q"].read_bytes() == ovas["r"].read_bytes()
    assert ovas["c"].read_bytes() != ovas["r"].read_bytes()


def test_the_span_cache_never_serves_engine_bytes_for_copied_grains(
        disk: tuple[Path, Path], tmp_path: Path) -> None:
    _, image = disk
    cache = tmp_path / "cache"
    plain, _ = _to(tmp_path, "plain", image)
    # The engine's bytes of every span go into the cache first...
    _to(tmp_path, "forced", image, recompress=True, cache=cache)
    # ...and copying with that cache (twice: after its own run too) gives the bytes without.
    for sub in ("c1", "c2"):
        out, stats = _to(tmp_path, sub, image, cache=cache)
        assert out.read_bytes() == plain.read_bytes()
        assert stats.grains_copied == 21
    forced_again, stats = _to(tmp_path, "forced2", image, recompress=True, cache=cache)
    assert stats.cache is not None
    if stats.cache["used"]:  # (the engine's bytes are cached only where reproducible)
        assert stats.cache["hits"] > 0 and stats.cache["misses"] == 0
    assert forced_again.read_bytes() == (tmp_path / "forced" / "d.vmdk").read_bytes()


def test_backing_chain_with_a_compressed_overlay(tmp_path: Path) -> None:
    base_raw = write_disk(tmp_path / "a.raw", 4 * MIB, [(0, "random", 4 * MIB)])
    top_raw = write_disk(tmp_path / "b.raw", 4 * MIB, [(0, "random", 4 * MIB),
                                                       (MIB, "text", 2 * GRAIN + 500)])
    base = tmp_path / "base.qcow2"
    qemu_img("convert", "-q", "-f", "raw", "-O", "qcow2", base_raw, base)
    overlay = tmp_path / "top.qcow2"
    qemu_img("convert", "-q", "-c", "-f", "raw", "-B", base.name, "-F", "qcow2", "-O", "qcow2",
             top_raw, overlay)
    out, stats = _to(tmp_path, "o", overlay)
    assert stats.grains_copied == 3    # the overlay's three clusters, none of the base's
    qemu_img("compare", "-q", top_raw, out)
    qemu_img("check", "-q", "-f", "vmdk", out)
    assert verify(out, deep=True, strict=True).ok


@pytest.mark.parametrize("depth", [1, 2])
def test_a_base_images_compressed_clusters_are_copied_through_the_chain(
        tmp_path: Path, depth: int) -> None:
    """A cloud image's usual shape: a compressed base and an overlay (or two) with the
    changes.  The base's deflate clusters the overlays leave visible are copied as they are;
    one the top overlay wrote over, or zeroed, is not; the overlay's own compressed cluster
    is."""
    size = 4 * MIB
    base_raw = write_disk(tmp_path / "base.raw", size, [(0, "text", 8 * GRAIN),
                                                        (2 * MIB, "random", GRAIN)])
    base = tmp_path / "base.qcow2"
    qemu_img("convert", "-q", "-c", "-f", "raw", "-O", "qcow2", base_raw, base)
    below = base
    for level in range(depth):  # empty overlays: every cluster reads through
        top = tmp_path / ("top%d.qcow2" % level)
        qemu_img("create", "-q", "-f", "qcow2", "-b", below.name, "-F", "qcow2", top)
        below = top
    # over the base's text: grain 1 plain, grain 2 zeroed, grain 3 compressed anew
    qemu_io(below, "qcow2", "write -P 0x5a %d %d" % (GRAIN, GRAIN),
            "write -z %d %d" % (2 * GRAIN, GRAIN),
            "write -c -P 0x33 %d %d" % (3 * GRAIN, GRAIN))
    flat = tmp_path / "flat.raw"
    qemu_img("convert", "-q", "-O", "raw", below, flat)
    out, stats = _to(tmp_path, "o", below)
    # the base's grains 0 and 4-7 through the chain, and the top's grain 3
    assert stats.grains_copied == 6
    check_vmdk(below, out)
    qemu_img("compare", "-q", flat, out)
    assert verify(out, deep=True, strict=True).ok
    with VmdkReader(out) as reader:  # grain 0 is the base cluster's own stream
        lba, _, size0, payload = next(iter(reader.grains()))
    stream = _stream_of(base, _first_l2(base)[1])
    assert lba == 0 and payload[2:-4] == stream
    forced, none = _to(tmp_path, "r", below, recompress=True)
    from_flat, _ = _to(tmp_path, "f", flat)
    assert none.grains_copied == 0 and forced.read_bytes() == from_flat.read_bytes()


@pytest.mark.parametrize("case", ["subclusters", "short_backing"])
def test_a_base_cluster_only_part_of_which_shows_is_not_copied(tmp_path: Path,
                                                               case: str) -> None:
    """What the read-through must not copy: a base cluster an extended-L2 overlay covers in
    part (a subcluster written or zeroed), and a backing file's last cluster cut short by
    its size.  Those grains go through the engine; the rest of the base is copied."""
    if case == "subclusters":
        n = 8 * GRAIN
        opts, size = "cluster_size=64k,extended_l2=on", None
    else:  # 5 whole clusters and 4.5 KiB of a sixth
        n = 5 * GRAIN + 4608
        opts, size = "cluster_size=64k", str(3 * MIB)
    base_raw = write_disk(tmp_path / "base.raw", n, [(0, "text", n)])
    base = tmp_path / "base.qcow2"
    qemu_img("convert", "-q", "-c", "-f", "raw", "-O", "qcow2", base_raw, base)
    top = tmp_path / "top.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", "-o", opts, "-b", base.name, "-F", "qcow2", top,
             *([size] if size else []))
    if case == "subclusters":  # grains 0 and 3 in part, grain 6 whole
        qemu_io(top, "qcow2", "write -P 1 4096 512", "write -z %d 2048" % (3 * GRAIN),
                "write -z %d %d" % (6 * GRAIN, GRAIN))
    out, stats = _to(tmp_path, "o", top)
    assert stats.grains_copied == (8 - 3 if case == "subclusters" else 5)
    check_vmdk(top, out)
    assert verify(out, deep=True, strict=True).ok


def test_zero_cluster_written_compressed_is_skipped(tmp_path: Path) -> None:
    image = tmp_path / "z.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", image, "1M")
    qemu_io(image, "qcow2", "write -c -P 0 0 64k", "write -c -P 0x41 64k 64k")
    out, stats = _to(tmp_path, "z", image)
    assert (stats.grains_written, stats.grains_copied) == (1, 1)  # the zero one is skipped
    check_vmdk(image, out)


@pytest.mark.parametrize("options", [["-o", "cluster_size=128k"],
                                     ["-o", "compression_type=zstd"]])
def test_clusters_that_are_not_deflate_grains_are_recompressed(
        disk: tuple[Path, Path], tmp_path: Path, options: list[str]) -> None:
    raw, _ = disk
    image = tmp_path / "o.qcow2"
    qemu_img("convert", "-q", "-c", "-f", "raw", "-O", "qcow2", *options, raw, image)
    out, stats = _to(tmp_path, "o", image)
    assert stats.grains_copied == 0
    check_vmdk(image, out)


def test_an_overlong_stream_is_recompressed_not_copied(tmp_path: Path) -> None:
    """A deflate stream longer than a grain may hold (tiny stored blocks) still reads
    right; its grain goes through the engine."""
    image = tmp_path / "l.qcow2"
    qemu_img("create", "-q", "-f", "qcow2", image, "1M")
    qemu_io(image, "qcow2", "write -c -P 0x41 0 64k")
    _, entry_at = _first_l2(image)
    data = bytes(range(256)) * 256
    blocks = b"".join(bytes([i + 16 >= len(data)]) + struct.pack("<HH", 16, 0xFFFF ^ 16)
                      + data[i:i + 16] for i in range(0, len(data), 16))
    assert len(blocks) > MAX_COPIED_STREAM
    at = -(-image.stat().st_size // 512) * 512
    sectors = -(-len(blocks) // 512)
    _patch(image, at, blocks + bytes(sectors * 512 - len(blocks)))
    _patch(image, entry_at, struct.pack(">Q", COMPRESSED | (sectors - 1) << 54 | at))
    raw = tmp_path / "l.raw"
    raw.write_bytes(data + bytes(MIB - GRAIN))
    out, stats = _to(tmp_path, "l", image)
    assert (stats.grains_written, stats.grains_copied) == (1, 0)
    qemu_img("compare", "-q", raw, out)


# -- hostile clusters ------------------------------------------------------------------------
# Guest cluster 1: the sample key (sources/base.py) reads cluster 0 on the main thread before
# the workers; cluster 1 is first read by a worker, through the copying path.

def _hostile(tmp_path: Path) -> tuple[Path, int, int]:
    """(a zlib qcow2 of text, the file offset of guest cluster 1's L2 entry, its cluster's
    offset in the file)."""
    raw = write_disk(tmp_path / "h.raw", 2 * MIB, [(0, "text", 4 * GRAIN)])
    image = tmp_path / "h.qcow2"
    qemu_img("convert", "-q", "-c", "-f", "raw", "-O", "qcow2", raw, image)
    l2, _ = _first_l2(image)
    entry = struct.unpack_from(">Q", image.read_bytes(), l2 + 8)[0]
    assert entry & COMPRESSED
    return image, l2 + 8, entry & ((1 << 54) - 1)


def _place(image: Path, entry_at: int, stream: bytes) -> int:
    """Append ``stream`` at the end of the file as the compressed cluster of the entry at
    ``entry_at`` (its sector count covering it exactly); its offset."""
    at = -(-image.stat().st_size // 512) * 512
    _patch(image, at, stream)
    sectors = -(-len(stream) // 512)
    _patch(image, entry_at, struct.pack(">Q", COMPRESSED | (sectors - 1) << 54 | at))
    return at


def _refused(image: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], offset: int,
             *words: str) -> None:
    for extra in ([], ["--recompress"]):
        for command, out in (("convert", tmp_path / "out.vmdk"), ("pack", tmp_path / "out.ova")):
            assert cli.main([command, str(image), "-o", str(out), "-q", *extra]) == 1
            err = capsys.readouterr().err
            assert str(image) in err and "[qcow2.compressed]" in err, err
            assert "@0x%x" % offset in err and "Traceback" not in err, err
            assert all(w in err for w in words), err
            assert [p.name for p in tmp_path.iterdir() if p.name.startswith("out")] == []


def test_corrupt_deflate_stream(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image, _, coffset = _hostile(tmp_path)
    _patch(image, coffset, b"\xff" * 64)
    _refused(image, tmp_path, capsys, coffset)


def test_stream_running_past_its_sector_count(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    image, entry_at, coffset = _hostile(tmp_path)
    # The sector count says one: the rest of the sector holding the offset, a longer stream.
    _patch(image, entry_at, struct.pack(">Q", COMPRESSED | coffset))
    _refused(image, tmp_path, capsys, coffset, "one cluster")


@pytest.mark.parametrize("length", [GRAIN - 1, GRAIN + 1])
def test_stream_inflating_to_another_size(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          length: int) -> None:
    image, entry_at, _ = _hostile(tmp_path)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -12)
    at = _place(image, entry_at, deflater.compress(b"\1" * length) + deflater.flush())
    _refused(image, tmp_path, capsys, at, "one cluster")


def test_stream_that_does_not_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image, entry_at, _ = _hostile(tmp_path)
    # Exactly one cluster out of two stored blocks, neither of them final: the stream runs
    # on past the end of its sectors (here the end of the file).
    half = GRAIN // 2
    block = b"\0" + struct.pack("<HH", half, 0xFFFF ^ half) + b"x" * half
    at = _place(image, entry_at, block + block)
    _refused(image, tmp_path, capsys, at)
    assert cli.main(["convert", str(image), "-o", str(tmp_path / "out.vmdk"), "-q"]) == 1
    assert "does not end inside" in capsys.readouterr().err


def test_executor_workers_copy_the_same_grains(disk: tuple[Path, Path], tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor
    _, image = disk
    outs = []
    for sub, executor in (("local", None), ("farm", ThreadPoolExecutor(2))):
        (tmp_path / sub).mkdir()
        result = pack([image], tmp_path / sub / "d.ova", mtime=0, executor=executor,
                      engine=REPRODUCIBLE_ENGINE)
        assert result.disks[0].stats.grains_copied == 21
        outs.append((tmp_path / sub / "d.ova").read_bytes())
        if executor is not None:
            executor.shutdown()
    assert outs[0] == outs[1]


def test_the_zlib_fallback_copies_the_same_grains(disk: tuple[Path, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Without libdeflate's symbol the clusters are still copied, with the same bytes: the
    output never depends on what the machine could load."""
    from ovfstream.sources import rawinflate
    _, image = disk
    native, stats = _to(tmp_path, "native", image)
    monkeypatch.setattr(rawinflate, "_LIB", None)
    fallback, again = _to(tmp_path, "zlib", image, parallel=2)
    assert again.grains_copied == stats.grains_copied == 21  # type: ignore[attr-defined]
    assert fallback.read_bytes() == native.read_bytes()


@pytest.mark.parametrize("inflater", ["libdeflate", "zlib"])
def test_rawinflate_reports_where_the_stream_ended(inflater: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import mmap

    from ovfstream.sources import rawinflate
    if inflater == "zlib":
        monkeypatch.setattr(rawinflate, "_LIB", None)
    else:
        assert rawinflate.NATIVE  # the deflate package exports libdeflate's symbols
    deflater = zlib.compressobj(6, zlib.DEFLATED, -12)
    grain = (b"where does it end? " * 4000)[:GRAIN]
    stream = deflater.compress(grain) + deflater.flush()
    buf = mmap.mmap(-1, 2 * GRAIN)
    view = memoryview(buf)
    assert rawinflate.inflate_into(stream + b"slack", view[GRAIN:]) == (
        rawinflate.SUCCESS, len(stream), GRAIN)
    assert buf[GRAIN:] == grain
    assert rawinflate.inflate_into(stream, view[:GRAIN - 1])[0] == rawinflate.INSUFFICIENT_SPACE
    assert rawinflate.inflate_into(stream[:-20], view[:GRAIN])[0] == rawinflate.BAD_DATA
    assert rawinflate.inflate_into(b"\xff" * 64, view[:GRAIN])[0] == rawinflate.BAD_DATA
    view.release()
    buf.close()  # no buffer export outlives a call
