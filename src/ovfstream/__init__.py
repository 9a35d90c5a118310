"""ovfstream: raw disk images to stream-optimized VMDKs and OVF/OVA appliances in one pass.

The public operations, one module each: ``pack``, ``convert``, ``verify``, ``inspect``,
``extract``, and ``pack_many`` (many appliances, build.py; the span cache is cache.py).
They take typed keyword options, return result objects, raise the exceptions of
:mod:`ovfstream.errors`, and are safe to call from several threads at once.
"""

import sys
import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what __getattr__ below loads on first use, spelled out for type checkers
    from .build import BuildResult, pack_many
    from .cache import SpanCache
    from .convert import ConvertResult, convert
    from .errors import (CertificateFormatError, DigestMismatchError, FormatError, Finding,
                         ManifestFormatError, OvfFormatError, OvfstreamError, TarFormatError,
                         UnsupportedError, UsageError, VmdkFormatError)
    from .extract import ExtractSummary, extract
    from .inspect import InspectResult, inspect
    from .ovf.model import DiskSlot, Nic, Product, Property, VirtualMachine
    from .pack import PackResult, Signer, pack
    from .repack import RepackResult, repack
    from .verify import VerifyResult, verify

# Public name -> the module that defines it.  The package imports none of them up front:
# a command line run loads only what its command uses (``ovfstream pack`` never imports
# the signing, reading or build-farm modules), which is most of a short run's start-up.
_HOMES = {
    "pack_many": "build", "BuildResult": "build", "SpanCache": "cache",
    "convert": "convert", "ConvertResult": "convert",
    "extract": "extract", "ExtractSummary": "extract",
    "inspect": "inspect", "InspectResult": "inspect",
    "DiskSlot": "ovf.model", "Nic": "ovf.model", "Product": "ovf.model",
    "Property": "ovf.model", "VirtualMachine": "ovf.model",
    "pack": "pack", "PackResult": "pack", "Signer": "pack",
    "repack": "repack", "RepackResult": "repack",
    "verify": "verify", "VerifyResult": "verify",
    **{name: "errors" for name in (
        "CertificateFormatError", "DigestMismatchError", "FormatError", "Finding",
        "ManifestFormatError", "OvfFormatError", "OvfstreamError", "TarFormatError",
        "UnsupportedError", "UsageError", "VmdkFormatError")},
}


def __getattr__(name: str) -> object:
    if name == "__version__":  # looked up on first use (it may read pyproject.toml)
        value = globals()[name] = _version()
        return value
    import importlib
    import importlib.util
    home = _HOMES.get(name)
    if home is None:
        # A submodule (ovfstream.errors, .cache, ...), reachable as an attribute as it was
        # when this file imported everything up front.
        if name.startswith("_") or importlib.util.find_spec("." + name, __name__) is None:
            raise AttributeError("module 'ovfstream' has no attribute %r" % name)
        return importlib.import_module("." + name, __name__)
    value = getattr(importlib.import_module("." + home, __name__), name)
    globals()[name] = value  # once: later lookups do not come back here
    return value


class _Package(types.ModuleType):
    """The package module.  Importing a submodule binds it as an attribute of its package
    (``import ovfstream.pack`` sets ``ovfstream.pack``); where a public function has its
    module's name (pack, convert, verify, ...), the function keeps the name, as it did when
    this file imported everything up front."""

    def __setattr__(self, name: str, value: object) -> None:
        if (isinstance(value, types.ModuleType) and _HOMES.get(name) == name
                and hasattr(value, name)):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES) | {"__version__"})



def _version() -> str:
    """The version pyproject.toml declares, its one home.

    Run from a source tree (src/ovfstream, editable or not installed): read that tree's
    pyproject.toml, so a bumped version shows without reinstalling and another installed
    copy cannot lend its number.  Installed from a wheel or sdist: the installed
    distribution's metadata, which the build copied from pyproject.toml.
    """
    from pathlib import Path
    here = Path(__file__).resolve().parent
    project = here.parent.parent / "pyproject.toml"
    if here.parent.name == "src" and project.is_file():
        import sys
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # a declared dependency below 3.11
            import tomli as tomllib
        try:
            table = tomllib.loads(project.read_text(encoding="utf-8")).get("project", {})
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
            table = {}
        if table.get("name") == "ovfstream" and isinstance(table.get("version"), str):
            return str(table["version"])
    from importlib import metadata
    try:
        return metadata.version("ovfstream")
    except metadata.PackageNotFoundError:
        return "0+unknown"  # neither installed nor in its source tree (e.g. copied files)



__all__ = [
    "__version__",
    "pack", "PackResult", "Signer",
    "pack_many", "BuildResult", "SpanCache",
    "repack", "RepackResult",
    "convert", "ConvertResult",
    "verify", "VerifyResult",
    "inspect", "InspectResult",
    "extract", "ExtractSummary",
    "VirtualMachine", "DiskSlot", "Nic", "Product", "Property",
    "OvfstreamError", "UsageError", "UnsupportedError", "FormatError", "VmdkFormatError",
    "TarFormatError", "ManifestFormatError", "CertificateFormatError", "OvfFormatError",
    "DigestMismatchError", "Finding",
]
