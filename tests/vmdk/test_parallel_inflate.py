"""verify --deep and extract inflate grains in worker threads (pipeline.ordered_map): the
files written, the content ids and the first error are the same for any number of workers."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from ovfstream import cli
from ovfstream.convert import convert
from ovfstream.errors import VmdkFormatError
from ovfstream.extract import extract
from ovfstream.pack import pack
from ovfstream.verify import verify
from ovfstream.vmdk.extract import extract_raw
from ovfstream.vmdk.layout import SECTOR, sectors_for
from ovfstream.vmdk.reader import VmdkReader

from ovfs_testlib import DISKS, write_disk


@pytest.fixture(scope="module")
def disk(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("par")
    size, layout = DISKS["mixed"]
    raw = write_disk(folder / "mixed.raw", size, layout)
    convert(raw, folder / "mixed.vmdk")
    return folder / "mixed.vmdk"


@pytest.mark.parametrize("fmt", ["raw", "zst"])
def test_extract_is_the_same_for_any_worker_count(disk, tmp_path, fmt):
    outs = []
    for workers in (1, 2, 3):
        out = tmp_path / ("w%d.%s" % (workers, fmt))
        summary = extract(disk, out, format=fmt, parallel=workers)
        outs.append((out.read_bytes(), summary.as_dict()["disks"][0]["grains"]))
    assert outs[0] == outs[1] == outs[2]


def test_extract_of_a_package_is_the_same_for_any_worker_count(disk, tmp_path):
    ova = tmp_path / "vm.ova"
    pack([disk], ova)
    first = tmp_path / "one"
    second = tmp_path / "two"
    extract(ova, first, parallel=1)
    extract(ova, second, parallel=2)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes()


def test_verify_deep_reports_the_same_content_id(disk, tmp_path):
    ova = tmp_path / "vm.ova"
    pack([disk], ova)
    for target in (disk, ova):
        results = [verify(target, deep=True, parallel=w) for w in (1, 2, 4)]
        assert all(r.ok for r in results)
        ids = [r.content_ids for r in results]
        assert ids[0] and ids[0] == ids[1] == ids[2]
        assert [[str(f) for f in r.findings] for r in results].count(
            [str(f) for f in results[0].findings]) == 3
    assert cli.main(["verify", str(disk), "--deep", "--parallel", "2", "--quiet"]) == 0
    assert cli.main(["verify", str(disk), "--deep", "--parallel", "0", "--quiet"]) == 2


def _break(vmdk: Path, out: Path) -> Path:
    """A copy whose first grain inflates to 1000 bytes and whose fourth grain's LBA goes
    backwards: a worker's error (grain 1) comes before the walk's (grain 4)."""
    data = bytearray(vmdk.read_bytes())
    at = 128 * SECTOR
    grains = []
    pos = at
    while len(grains) < 4:
        lba, size = struct.unpack_from("<QI", data, pos)
        grains.append((pos, lba))
        pos += sectors_for(12 + size) * SECTOR
    short = zlib.compress(b"x" * 1000)
    data[at:at + 12 + len(short)] = struct.pack("<QI", grains[0][1], len(short)) + short
    struct.pack_into("<Q", data, grains[3][0], grains[0][1])
    out.write_bytes(bytes(data))
    return out


def test_the_first_error_is_the_same_for_any_worker_count(disk, tmp_path):
    broken = _break(disk, tmp_path / "broken.vmdk")
    reports = []
    for workers in (1, 2, 4):
        with VmdkReader(broken) as reader:
            reports.append([str(f) for f in reader.verify(deep=True, workers=workers).findings])
        with VmdkReader(broken) as reader, pytest.raises(VmdkFormatError) as exc:
            extract_raw(reader, tmp_path / "x.raw", workers=workers)
        assert exc.value.rule == "vmdk.grain.inflate"
        assert not (tmp_path / "x.raw").exists()
    assert reports[0] == reports[1] == reports[2]
    assert any("vmdk.grain.inflate" in f for f in reports[0])


@pytest.mark.parametrize("sparse", [True, False])
def test_write_raw_to_a_file_or_to_memory_gives_the_same_bytes(disk, tmp_path, sparse):
    import io

    from ovfstream.vmdk.extract import write_raw
    on_disk = tmp_path / "disk.raw"
    with VmdkReader(disk) as reader:
        extract_raw(reader, on_disk, sparse=sparse, workers=2)
    memory = io.BytesIO()
    with VmdkReader(disk) as reader:
        result = write_raw(reader, memory, path="<memory>", sparse=sparse, workers=2)
    assert memory.getvalue() == on_disk.read_bytes()
    assert result.size_bytes == on_disk.stat().st_size
