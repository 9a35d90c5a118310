"""ovfstream: raw disk images to stream-optimized VMDKs and OVF/OVA appliances in one pass."""

from .convert import ConvertResult, convert
from .errors import (CertificateFormatError, DigestMismatchError, FormatError, Finding,
                     ManifestFormatError, OvfFormatError, OvfstreamError, TarFormatError,
                     UnsupportedError, UsageError, VmdkFormatError)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "convert", "ConvertResult",
    "OvfstreamError", "UsageError", "UnsupportedError", "FormatError", "VmdkFormatError",
    "TarFormatError", "ManifestFormatError", "CertificateFormatError", "OvfFormatError",
    "DigestMismatchError", "Finding",
]
