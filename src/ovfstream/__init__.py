"""ovfstream: raw disk images to stream-optimized VMDKs and OVF/OVA appliances in one pass.

The public operations, one module each: ``pack``, ``convert``, ``verify``, ``inspect``,
``extract``, and ``pack_many`` (many appliances, build.py; the span cache is cache.py).
They take typed keyword options, return result objects, raise the exceptions of
:mod:`ovfstream.errors`, and are safe to call from several threads at once.
"""

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


__version__ = _version()

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
