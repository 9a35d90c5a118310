"""ovfstream: raw disk images to stream-optimized VMDKs and OVF/OVA appliances in one pass.

The public operations, one module each: ``pack``, ``convert``, ``verify``, ``inspect``,
``extract``.  They take typed keyword options, return result objects, raise the exceptions
of :mod:`ovfstream.errors`, and are safe to call from several threads at once.
"""

from .convert import ConvertResult, convert
from .errors import (CertificateFormatError, DigestMismatchError, FormatError, Finding,
                     ManifestFormatError, OvfFormatError, OvfstreamError, TarFormatError,
                     UnsupportedError, UsageError, VmdkFormatError)
from .extract import ExtractSummary, extract
from .inspect import InspectResult, inspect
from .ovf.model import DiskSlot, Nic, Product, Property, VirtualMachine
from .pack import PackResult, Signer, pack
from .verify import VerifyResult, verify

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "pack", "PackResult", "Signer",
    "convert", "ConvertResult",
    "verify", "VerifyResult",
    "inspect", "InspectResult",
    "extract", "ExtractSummary",
    "VirtualMachine", "DiskSlot", "Nic", "Product", "Property",
    "OvfstreamError", "UsageError", "UnsupportedError", "FormatError", "VmdkFormatError",
    "TarFormatError", "ManifestFormatError", "CertificateFormatError", "OvfFormatError",
    "DigestMismatchError", "Finding",
]
