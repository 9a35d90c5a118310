"""The engines on the size/speed frontier (issue 14): libdeflate beside isal and zlib, level
checks, the --compression presets, and what the CLI says about each."""

from __future__ import annotations

import json
import random
import zlib

import pytest

from ovfstream import cli, convert
from ovfstream.engine import ENGINES, PRESETS, REPRODUCIBLE, get_engine, resolve_engine
from ovfstream.errors import UsageError

GRAIN = 65536


def _grains() -> list[bytes]:
    rng = random.Random(14)
    text = b" ".join(rng.choice([b"ovf", b"grain", b"stream", b"/usr/lib", b"\n"])
                     for _ in range(20000))[:GRAIN]
    return [rng.randbytes(GRAIN), text, bytes(GRAIN - 1) + b"\x01", (b"abc" * GRAIN)[:GRAIN]]


@pytest.mark.parametrize("level", range(1, 13))
def test_libdeflate_every_level_makes_zlib_streams(level):
    engine = get_engine("libdeflate", level)
    assert (engine.name, engine.level) == ("libdeflate", level)
    for grain in _grains():
        out = engine.compress(memoryview(grain))
        assert out[0] & 0x0F == 8, "a zlib (RFC 1950) header: method 8, deflate"
        assert zlib.decompress(bytes(out)) == grain
    assert engine.reproducible and engine.describe()["reproducible_across_cpus"] is True


def test_libdeflate_default_level_and_version_name_the_build():
    engine = get_engine("libdeflate")
    assert engine.level == 6
    import deflate
    assert engine.version.startswith("deflate %s (libdeflate bundled, build " % deflate.__version__)
    described = engine.describe()
    # Everything a cache key of compressed spans needs: engine, level, the build's identity.
    assert (described["engine"], described["level"], described["version"]) == (
        "libdeflate", 6, engine.version)
    assert described["native_span_encoder"] is False and described["native_unavailable"] is None


def test_higher_libdeflate_levels_are_smaller():
    text = _grains()[1]
    sizes = [len(get_engine("libdeflate", level).compress(memoryview(text)))
             for level in (1, 6, 12)]
    assert sizes[0] > sizes[1] >= sizes[2]


@pytest.mark.parametrize("name,bad,allowed", [("libdeflate", 0, "1..12"), ("libdeflate", 13, "1..12"),
                                              ("isal", 4, "1..3"), ("zlib", 0, "1..9")])
def test_levels_out_of_range_name_the_allowed_range(name, bad, allowed):
    with pytest.raises(UsageError, match="--level %d for engine %s: allowed %s"
                       % (bad, name, allowed.replace(".", r"\."))):
        get_engine(name, bad)


def test_unknown_engine_names_every_engine():
    with pytest.raises(UsageError) as err:
        get_engine("brotli", 1)
    assert all(name in str(err.value) for name in ("isal", "zlib", "libdeflate"))
    assert ENGINES == ("isal", "zlib", "libdeflate")


@pytest.mark.native_core
def test_presets_map_to_engines_and_levels():
    assert PRESETS == {"fast": ("isal", 1), "balanced": ("libdeflate", 6),
                       "small": ("libdeflate", 10)}
    for preset, (name, level) in PRESETS.items():
        assert resolve_engine(compression=preset) == (name, level)
        # The presets only ever choose reproducible engine levels.
        assert level in REPRODUCIBLE[name]
    assert get_engine(*PRESETS["fast"]).reproducible  # with the native ISA-L encoder


def test_resolve_engine_defaults_and_conflicts():
    assert resolve_engine() == ("isal", None)
    assert resolve_engine("zlib", 3) == ("zlib", 3)
    assert resolve_engine(None, 2) == ("isal", 2)  # --level alone applies to the default engine
    with pytest.raises(UsageError, match="allowed presets are fast, balanced, small"):
        resolve_engine(compression="tiny")
    for engine, level in (("zlib", None), (None, 3), ("libdeflate", 10)):
        with pytest.raises(UsageError, match="not both"):
            resolve_engine(engine, level, "small")


@pytest.mark.interop
# Level 12 runs at ~10 MB/s (slower still on random data): it gets the small disk.
@pytest.mark.parametrize("level,disk", [(1, "mixed"), (6, "mixed"), (12, "odd_size")])
def test_libdeflate_vmdk_read_by_qemu_img(make_disk, qemu_img, tmp_path, level, disk):
    raw = make_disk(disk)
    out = tmp_path / "d.vmdk"
    stats = convert(raw, out, engine="libdeflate", level=level, parallel=2, fsync=False).stats
    assert stats.engine["engine"] == "libdeflate" and stats.engine["level"] == level
    check = qemu_img("check", out)
    assert check.returncode == 0, check.stdout + check.stderr
    cmp = qemu_img("compare", "-f", "raw", "-F", "vmdk", raw, out)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr


# ------------------------------------------------------------------------------ command line

def _usage_error(capsys, argv):
    assert cli.main(argv) == 2
    return capsys.readouterr().err


def test_cli_engine_errors_name_the_allowed_values(make_disk, tmp_path, capsys):
    raw = str(make_disk("odd_size"))
    out = str(tmp_path / "d.vmdk")
    err = _usage_error(capsys, ["convert", raw, "-o", out, "--engine", "brotli"])
    assert "--engine" in err and all(n in err for n in ("'isal'", "'zlib'", "'libdeflate'"))
    err = _usage_error(capsys, ["convert", raw, "-o", out, "--engine", "libdeflate",
                                "--level", "13"])
    assert "--level 13 for engine libdeflate: allowed 1..12" in err
    err = _usage_error(capsys, ["convert", raw, "-o", out, "--compression", "tiny"])
    assert "--compression" in err and all(n in err for n in ("'fast'", "'balanced'", "'small'"))
    err = _usage_error(capsys, ["convert", raw, "-o", out, "--compression", "small",
                                "--level", "3"])
    assert "--compression small chooses the engine and level itself (libdeflate level 10)" in err
    err = _usage_error(capsys, ["pack", raw, "-o", str(tmp_path / "a.ova"),
                                "--compression", "fast", "--engine", "zlib"])
    assert "not both" in err
    assert not (tmp_path / "d.vmdk").exists() and not (tmp_path / "a.ova").exists()


@pytest.mark.parametrize("argv,want", [
    (["--compression", "balanced"], ("libdeflate", 6)),
    (["--compression", "small"], ("libdeflate", 10)),
    (["--compression", "fast"], ("isal", 1)),
    (["--engine", "libdeflate"], ("libdeflate", 6)),
    (["--engine", "libdeflate", "--level", "2"], ("libdeflate", 2)),
    ([], ("isal", 1)),
])
@pytest.mark.native_core
def test_cli_json_reports_the_engine_chosen(make_disk, tmp_path, capsys, argv, want):
    raw = make_disk("odd_size")
    assert cli.main(["convert", str(raw), "-o", str(tmp_path / "d.vmdk"), "--json",
                     *argv]) == 0
    engine = json.loads(capsys.readouterr().out)["engine"]
    assert (engine["engine"], engine["level"]) == want
    assert engine["reproducible_across_cpus"] is True
    assert engine["version"] == get_engine(*want).version


def test_cli_pack_with_a_preset(make_disk, tmp_path, capsys):
    raw = make_disk("odd_size")
    assert cli.main(["pack", str(raw), "-o", str(tmp_path / "a.ova"), "--json",
                     "--compression", "small"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert (doc["engine"]["engine"], doc["engine"]["level"]) == ("libdeflate", 10)


# ----------------------------------------------------------------- ISA-L without SSE4.2

def test_isal_cpu_note_from_cpuinfo(tmp_path):
    from ovfstream.engine import _isal_cpu_note
    with_sse42 = tmp_path / "v2"
    with_sse42.write_text("processor\t: 0\nflags\t\t: fpu sse2 ssse3 sse4_1 sse4_2 avx\n")
    baseline = tmp_path / "v1"  # qemu64/kvm64, Core 2, K10: no SSE4.2
    baseline.write_text("processor\t: 0\nflags\t\t: fpu sse sse2 pni cx16\n")
    assert _isal_cpu_note("x86_64", str(with_sse42)) is None
    assert "lacks SSE4.2" in _isal_cpu_note("x86_64", str(baseline))
    assert "unknown" in _isal_cpu_note("x86_64", str(tmp_path / "absent"))
    assert "x86-64 CPUs only" in _isal_cpu_note("aarch64", str(with_sse42))


@pytest.mark.native_core
def test_isal_on_a_cpu_without_sse42_is_not_called_reproducible(make_disk, tmp_path, capsys,
                                                                monkeypatch):
    from ovfstream import engine as engine_mod
    note = ("this CPU lacks SSE4.2: ISA-L takes its baseline code path, whose bytes differ "
            "from those of every CPU with SSE4.2")
    monkeypatch.setattr(engine_mod, "_isal_cpu_note", lambda: note)
    for level in (1, 2):
        engine = get_engine("isal", level)
        assert not engine.reproducible and engine.describe()["cpu_note"] == note
    assert get_engine("isal", 3).cpu_note is None  # level 3 is never called reproducible
    assert get_engine("libdeflate").reproducible and get_engine("zlib").reproducible
    raw = make_disk("odd_size")
    assert cli.main(["convert", str(raw), "-o", str(tmp_path / "a.vmdk"), "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("lacks SSE4.2") == 1
    assert json.loads(captured.out)["engine"]["reproducible_across_cpus"] is False
    assert cli.main(["convert", str(raw), "-o", str(tmp_path / "b.vmdk"), "--engine",
                     "libdeflate"]) == 0
    assert "SSE4.2" not in capsys.readouterr().err
