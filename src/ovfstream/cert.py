"""The OVF package certificate (`X.cert`): signing the manifest and checking a signature.

Implements ../shared/FORMATS.md section 4 (DMTF DSP0243 "OVF", section 5.2 "Package
signing"): the file is one line ``SHA256(X.mf)= <hex of the RSA PKCS#1 v1.5 signature over the
exact .mf bytes>`` followed by the signer certificate and any intermediates in PEM.  The token
names the hash used for the signature, independent of the manifest's own lines, so
`openssl dgst -sha256 -verify pub.pem -signature sig.bin X.mf` checks it.

Reading tolerates what ovftool writes: the same line spellings as the manifest (spaces, CRLF,
uppercase hex) and trailing space padding (ovftool 4.1 pads the .cert to 100 KiB).  This module
never reads the clock: `check_signature` takes `now` from its caller.
"""

from __future__ import annotations

import binascii
import datetime as _dt
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from .errors import CertificateFormatError, Finding, UnsupportedError, UsageError, location
from .ovf.namespaces import DIGEST_OF_TOKEN

__all__ = [
    "CertFile",
    "RULES",
    "MAX_CERT_BYTES",
    "MAX_CERTIFICATES",
    "SigningKey",
    "load_signing_key",
    "sign_manifest",
    "parse_certificate_file",
    "check_signature",
]

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha512": hashes.SHA512}
_TOKENS = DIGEST_OF_TOKEN

# A signer certificate plus a few intermediates is a few KiB; ovftool pads to 100 KiB.
MAX_CERT_BYTES = 1 << 20
# A signer and its intermediates are a handful; more is not a chain anyone issued, and each
# one costs a decode and a signature check.
MAX_CERTIFICATES = 100

RULES: dict[str, str] = {
    "cert.format": "the .cert is not one 'ALGO(X.mf)= hex' line followed by PEM certificates, "
                   "or holds more than 100 certificates (error)",
    "cert.pem": "a PEM certificate block is missing or does not decode (error)",
    "cert.algorithm": ("the signature hash is not SHA1/SHA256/SHA512, or the signer key is not "
                       "RSA (error); a SHA1 signature (warning)"),
    "cert.signature": "the signature does not verify over the manifest bytes with the signer's key (error)",
    "cert.name": "the signature line names a file other than the package's manifest (error)",
    "cert.self_signed": "the signer certificate is self-signed: integrity only, no identity (warning)",
    "cert.chain": "a certificate in the file did not issue the one before it (warning)",
    "cert.expired": "a certificate's notAfter is before now (warning)",
    "cert.not_yet_valid": "a certificate's notBefore is after now (warning)",
    "cert.subject": "who signed: subject, issuer, validity (info)",
}

_LINE = re.compile(rb"\A[ \t]*([A-Za-z0-9_-]+)[ \t]*\((.+)\)[ \t]*=[ \t]*([0-9A-Za-z]+)[ \t]*\Z")
_BEGIN = b"-----BEGIN CERTIFICATE-----"
_END = b"-----END CERTIFICATE-----"
_BASE64_LINE = re.compile(rb"\A[A-Za-z0-9+/=]*\Z")


@dataclass(frozen=True)
class CertFile:
    """A parsed .cert: the signature line and the certificates, signer first."""

    algorithm: str                          # "sha1", "sha256" or "sha512"
    mf_name: str
    signature: bytes
    certificates: tuple[x509.Certificate, ...]
    canonical: bool = True                  # the signature line was canonical, LF-terminated


def _token(algorithm: str) -> str:
    if algorithm not in _HASHES:
        raise UsageError("signature digest %r is not one of %s" % (algorithm, ", ".join(_HASHES)))
    return algorithm.upper()


@dataclass(frozen=True)
class SigningKey:
    """A private key and its certificate chain, loaded and checked once.

    Loading validates the RSA key, which takes seconds for large keys (about 20 s for 16384
    bits): ``pack`` loads once, asks :meth:`cert_size` for the space to reserve before any
    digest is known, and signs at the end.
    """

    key: rsa.RSAPrivateKey
    certificates: tuple[x509.Certificate, ...]
    digest: str = "sha256"

    def _chain_pem(self) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.certificates)

    def _line_prefix(self, mf_name: str) -> bytes:
        if not mf_name or re.search(r"[\x00-\x1f\x7f()]", mf_name):
            raise UsageError("manifest name %r cannot appear in a .cert line" % mf_name)
        return b"%s(%s)= " % (_token(self.digest).encode("ascii"), mf_name.encode("utf-8"))

    def cert_size(self, mf_name: str) -> int:
        """Exact length of :meth:`sign`'s output: a PKCS#1 v1.5 signature is always as long
        as the modulus, so nothing needs to be signed to know it."""
        modulus_bytes = (self.key.key_size + 7) // 8
        return len(self._line_prefix(mf_name)) + 2 * modulus_bytes + 1 + len(self._chain_pem())

    def sign(self, mf_bytes: bytes, *, mf_name: str) -> bytes:
        """The .cert bytes: ``TOKEN(mf_name)= <hex signature>\\n`` then the chain in PEM."""
        prefix = self._line_prefix(mf_name)
        signature = self.key.sign(mf_bytes, padding.PKCS1v15(), _HASHES[self.digest]())
        return prefix + binascii.hexlify(signature) + b"\n" + self._chain_pem()


def load_signing_key(*, private_key_pem: bytes, certificate_chain_pem: bytes,
                     digest: str = "sha256", password: bytes | None = None) -> SigningKey:
    """Load and check the key and chain once.  Raises UsageError for unreadable keys or
    certificates or a key that does not match the chain's first certificate,
    UnsupportedError for a non-RSA key (ovftool and vCenter verify RSA only)."""
    _token(digest)
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise UsageError("cannot load the private key: %s" % exc) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise UnsupportedError("OVF signatures are RSA PKCS#1 v1.5; the key is %s"
                               % type(key).__name__)
    certificates = _load_chain_for_signing(certificate_chain_pem)
    if certificates[0].public_key().public_numbers() != key.public_key().public_numbers():
        raise UsageError("the first certificate of the chain does not match the private key")
    return SigningKey(key, tuple(certificates), digest)


def sign_manifest(mf_bytes: bytes, *, private_key_pem: bytes, certificate_chain_pem: bytes,
                  mf_name: str, digest: str = "sha256", password: bytes | None = None) -> bytes:
    """The .cert bytes: ``TOKEN(mf_name)= <hex signature>\\n`` then the chain in PEM.

    The signature is RSA PKCS#1 v1.5 over the exact manifest bytes (deterministic, so the same
    inputs give the same .cert).  The first certificate of the chain must hold the private
    key's public key.  Errors as :func:`load_signing_key`; to sign more than once, load once.
    """
    _token(digest)
    if not mf_name or re.search(r"[\x00-\x1f\x7f()]", mf_name):
        raise UsageError("manifest name %r cannot appear in a .cert line" % mf_name)
    return load_signing_key(private_key_pem=private_key_pem,
                            certificate_chain_pem=certificate_chain_pem, digest=digest,
                            password=password).sign(mf_bytes, mf_name=mf_name)


def _pem_blocks(data: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(start, end, body) of each ``BEGIN CERTIFICATE`` line + newline ... ``END CERTIFICATE``
    block, in order.  Plain ``find`` calls, linear time: the lazy regex this replaces
    rescanned to the end of the data from every BEGIN line that had no END."""
    pos = 0
    while True:
        begin = data.find(_BEGIN, pos)
        if begin < 0:
            return
        body = begin + len(_BEGIN)
        if data.startswith(b"\n", body):
            body += 1
        elif data.startswith(b"\r\n", body):
            body += 2
        else:
            pos = begin + 1  # not a block opening: left to the caller's "outside blocks" check
            continue
        end = data.find(_END, body)
        if end < 0:
            return  # no END after this BEGIN, so none after any later one either
        yield begin, end + len(_END), data[body:end]
        pos = end + len(_END)


def _load_chain_for_signing(chain_pem: bytes) -> list[x509.Certificate]:
    blocks = [chain_pem[start:end] for start, end, _ in _pem_blocks(chain_pem)]
    if not blocks:
        raise UsageError("the certificate chain holds no PEM CERTIFICATE block")
    try:
        return [x509.load_pem_x509_certificate(block + b"\n") for block in blocks]
    except ValueError as exc:
        raise UsageError("cannot load a certificate of the chain: %s" % exc) from None


def parse_certificate_file(data: bytes, *, path: str | os.PathLike[str] | None = None) -> CertFile:
    """Parse a .cert; raise CertificateFormatError (`cert.format`, `cert.pem`, `cert.algorithm`)."""
    if len(data) > MAX_CERT_BYTES:
        raise CertificateFormatError("cert.format", "certificate file is %d bytes, more than %d"
                                     % (len(data), MAX_CERT_BYTES), path=path, offset=0)
    # The signature line is the first non-blank line.
    start = 0
    while True:
        end = data.find(b"\n", start)
        line_end = len(data) if end < 0 else end
        raw_line = data[start:line_end]
        if raw_line.strip(b" \t\r"):
            break
        if end < 0:
            raise CertificateFormatError("cert.format", "empty certificate file", path=path, offset=0)
        start = end + 1
    line = raw_line[:-1] if raw_line.endswith(b"\r") else raw_line
    match = _LINE.match(line)
    if match is None:
        raise CertificateFormatError("cert.format", "first line is not 'ALGO(X.mf)= hex': %r"
                                     % line[:120], path=path, offset=start)
    token, raw_name, raw_hex = match.groups()
    algorithm = _TOKENS.get(token.decode("ascii").upper())
    if algorithm is None:
        raise CertificateFormatError("cert.algorithm", "signature algorithm %r is not SHA1, SHA256 "
                                     "or SHA512" % token.decode("ascii"), path=path, offset=start)
    if len(raw_hex) % 2 or not re.fullmatch(rb"[0-9a-fA-F]+", raw_hex):
        raise CertificateFormatError("cert.format", "signature is not an even number of hex digits",
                                     path=path, offset=start)
    try:
        mf_name = raw_name.decode("utf-8")
    except UnicodeDecodeError:
        raise CertificateFormatError("cert.format", "manifest name is not UTF-8",
                                     path=path, offset=start) from None
    canonical = (start == 0 and end >= 0 and raw_line == b"%s(%s)= %s" % (
        token.upper(), raw_name, raw_hex.lower()))
    signature = binascii.unhexlify(raw_hex)

    rest_start = line_end + 1
    rest = data[rest_start:]
    certificates: list[x509.Certificate] = []
    pos = 0
    for start, end, body in _pem_blocks(rest):
        _only_whitespace(rest[pos:start], path=path, offset=rest_start + pos)
        if len(certificates) == MAX_CERTIFICATES:
            raise CertificateFormatError("cert.format", "more than %d certificates"
                                         % MAX_CERTIFICATES, path=path, offset=rest_start + start)
        for body_line in body.split(b"\n"):
            if not _BASE64_LINE.match(body_line.strip(b" \t\r")):
                raise CertificateFormatError("cert.pem", "certificate block has non-base64 text",
                                             path=path, offset=rest_start + start)
        certificates.append(_load_certificate(rest[start:end] + b"\n", path=path,
                                              offset=rest_start + start))
        pos = end
    _only_whitespace(rest[pos:], path=path, offset=rest_start + pos)
    if not certificates:
        raise CertificateFormatError("cert.pem", "no PEM certificate after the signature line",
                                     path=path, offset=rest_start)
    return CertFile(algorithm, mf_name, signature, tuple(certificates), canonical)


def _load_certificate(block: bytes, *, path: str | os.PathLike[str] | None,
                      offset: int) -> x509.Certificate:
    """Load one PEM certificate and decode now every field the checks use.

    cryptography parses lazily: a certificate that loads may still fail when its subject or
    key is first read.  Touching them here keeps every decoding error inside the parser.
    """
    try:
        cert = x509.load_pem_x509_certificate(block)
        cert.subject.rfc4514_string()
        cert.issuer.rfc4514_string()
        cert.not_valid_before_utc.isoformat()
        cert.not_valid_after_utc.isoformat()
        cert.public_key()
        cert.version  # an out-of-range version raises InvalidVersion, not ValueError
    except UnsupportedAlgorithm as exc:
        raise CertificateFormatError("cert.algorithm", "certificate key or signature algorithm is "
                                     "not supported: %s" % exc, path=path, offset=offset) from None
    except (ValueError, KeyError, TypeError, x509.InvalidVersion) as exc:
        # KeyError: cryptography maps a name attribute's ASN.1 string tag through a table;
        # TypeError: a tag the attribute's OID may not have (a BIT STRING country name)
        raise CertificateFormatError("cert.pem", "certificate block does not decode: %s" % exc,
                                     path=path, offset=offset) from None
    return cert


def _only_whitespace(text: bytes, *, path: str | os.PathLike[str] | None, offset: int) -> None:
    # Anything else (a private key pasted by mistake, `openssl x509 -text` output, a second
    # signature line) has no defined meaning to readers: refuse it rather than guess.
    stripped = text.strip(b" \t\r\n")
    if stripped:
        where = text.find(stripped[:1])
        raise CertificateFormatError("cert.format", "unexpected text outside certificate blocks: %r"
                                     % stripped[:60], path=path, offset=offset + where)


def check_signature(mf_bytes: bytes, cert_file: CertFile, *, mf_name: str,
                    now: _dt.datetime, path: str | os.PathLike[str] | None = None) -> list[Finding]:
    """Check the .cert against the manifest bytes.  Findings, never an exception for bad input.

    `now` (timezone-aware) is required: library code reads no clock, the CLI passes the time.
    Expiry is a warning, not an error: OVF signatures carry no timestamp, so a certificate that
    expired after signing says nothing about the package's integrity, and ovftool likewise only
    warns.  No trust store is consulted: chains are checked for internal consistency only.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise UsageError("check_signature needs a timezone-aware 'now'")
    where = location(path)
    findings: list[Finding] = []
    signer = cert_file.certificates[0]
    if cert_file.mf_name != mf_name:
        findings.append(Finding("cert.name", "error", where, 0,
                                "signature line names %r, the package manifest is %r"
                                % (cert_file.mf_name, mf_name)))
    findings.append(Finding("cert.subject", "info", where, None,
                            "signed by %s, issued by %s, valid %s to %s, %s signature"
                            % (signer.subject.rfc4514_string(), signer.issuer.rfc4514_string(),
                               signer.not_valid_before_utc.isoformat(),
                               signer.not_valid_after_utc.isoformat(),
                               cert_file.algorithm.upper())))
    if cert_file.algorithm == "sha1":
        findings.append(Finding("cert.algorithm", "warning", where, 0,
                                "SHA1 signature: collisions are practical; sign with SHA256"))
    key = signer.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        findings.append(Finding("cert.algorithm", "error", where, None,
                                "signer key is %s; OVF signatures are RSA PKCS#1 v1.5"
                                % type(key).__name__))
    else:
        try:
            key.verify(cert_file.signature, mf_bytes, padding.PKCS1v15(),
                       _HASHES[cert_file.algorithm]())
        except InvalidSignature:
            findings.append(Finding("cert.signature", "error", where, 0,
                                    "the %s signature does not verify over the manifest bytes with "
                                    "the key of %s" % (cert_file.algorithm.upper(),
                                                       signer.subject.rfc4514_string())))
    for index, cert in enumerate(cert_file.certificates):
        label = "signer" if index == 0 else "certificate %d" % (index + 1)
        if now > cert.not_valid_after_utc:
            findings.append(Finding("cert.expired", "warning", where, None,
                                    "%s %s expired on %s" % (label, cert.subject.rfc4514_string(),
                                                             cert.not_valid_after_utc.isoformat())))
        if now < cert.not_valid_before_utc:
            findings.append(Finding("cert.not_yet_valid", "warning", where, None,
                                    "%s %s is valid only from %s" % (label, cert.subject.rfc4514_string(),
                                                                    cert.not_valid_before_utc.isoformat())))
    if _issued_by(signer, signer):
        findings.append(Finding("cert.self_signed", "warning", where, None,
                                "signer certificate %s is self-signed: the signature proves "
                                "integrity, not who made the package" % signer.subject.rfc4514_string()))
    for child, parent in zip(cert_file.certificates, cert_file.certificates[1:]):
        if not _issued_by(child, parent):
            findings.append(Finding("cert.chain", "warning", where, None,
                                    "%s was not issued by the next certificate %s"
                                    % (child.subject.rfc4514_string(), parent.subject.rfc4514_string())))
    return findings


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    if child.issuer != parent.subject:
        return False
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True
