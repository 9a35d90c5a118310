"""cert.py: signing checked by openssl, the real ovftool 4.1 .cert, tampering, hostile input."""

from __future__ import annotations

import binascii
import datetime as dt
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from ovfstream import cert as cert_module
from ovfstream.cert import (
    MAX_CERTIFICATES,
    RULES,
    CertFile,
    check_signature,
    load_signing_key,
    parse_certificate_file,
    sign_manifest,
)
from ovfstream.errors import CertificateFormatError, UnsupportedError, UsageError

from ovfs_testlib import SHARED, needs_shared

CORPUS = SHARED / "ovf-corpus" / "virtualbox"
NOW = dt.datetime(2025, 6, 1, tzinfo=dt.timezone.utc)
MF = b"SHA256(app.ovf)= " + b"ab" * 32 + b"\nSHA256(app-disk1.vmdk)= " + b"cd" * 32 + b"\n"
OPENSSL = shutil.which("openssl")


def make_cert(subject: str, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, *,
              issuer: str | None = None, issuer_key: object = None,
              not_before: dt.datetime = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
              not_after: dt.datetime = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc),
              ) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or subject)])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name)
            .public_key(key.public_key()).serial_number(1000)
            .not_valid_before(not_before).not_valid_after(not_after)
            .sign(issuer_key or key, hashes.SHA256()))  # type: ignore[arg-type]


def pem(*objs: object) -> bytes:
    out = b""
    for o in objs:
        if isinstance(o, x509.Certificate):
            out += o.public_bytes(serialization.Encoding.PEM)
        else:
            out += o.private_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    return out


@pytest.fixture(scope="module")
def signer() -> tuple[rsa.RSAPrivateKey, x509.Certificate]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key, make_cert("ovfstream test signer", key)


def rules(findings: list) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(f.rule, f.severity) for f in findings]


def errors(findings: list) -> list[str]:  # type: ignore[type-arg]
    return [f.rule for f in findings if f.severity == "error"]


# -- signing ---------------------------------------------------------------------------------
@pytest.mark.parametrize("digest", ["sha256", "sha1", "sha512"])
def test_sign_layout_and_self_check(signer: tuple[rsa.RSAPrivateKey, x509.Certificate],
                                    digest: str) -> None:
    key, cert = signer
    out = sign_manifest(MF, private_key_pem=pem(key), certificate_chain_pem=pem(cert),
                        digest=digest, mf_name="app.mf")
    first, rest = out.split(b"\n", 1)
    assert first.startswith(b"%s(app.mf)= " % digest.upper().encode())
    assert len(first.split(b"= ")[1]) == 512     # 2048-bit RSA: 256 bytes, 512 hex digits
    assert rest == pem(cert)
    parsed = parse_certificate_file(out, path="app.cert")
    assert (parsed.algorithm, parsed.mf_name, parsed.canonical) == (digest, "app.mf", True)
    findings = check_signature(MF, parsed, mf_name="app.mf", now=NOW)
    assert errors(findings) == []
    expected = [("cert.subject", "info")] + ([("cert.algorithm", "warning")] if digest == "sha1" else []) \
        + [("cert.self_signed", "warning")]
    assert rules(findings) == expected
    # deterministic: PKCS#1 v1.5
    assert out == sign_manifest(MF, private_key_pem=pem(key), certificate_chain_pem=pem(cert),
                                digest=digest, mf_name="app.mf")


@pytest.mark.interop
@pytest.mark.skipif(OPENSSL is None, reason="openssl CLI missing")
@pytest.mark.parametrize("digest", ["sha256", "sha1"])
def test_openssl_verifies_what_we_sign(tmp_path: Path, signer: tuple[rsa.RSAPrivateKey, x509.Certificate],
                                       digest: str) -> None:
    key, cert = signer
    out = sign_manifest(MF, private_key_pem=pem(key), certificate_chain_pem=pem(cert),
                        digest=digest, mf_name="X.mf")
    (tmp_path / "X.mf").write_bytes(MF)
    (tmp_path / "X.cert").write_bytes(out)
    hexsig = out.split(b"\n", 1)[0].split(b"= ")[1]
    (tmp_path / "sig.bin").write_bytes(binascii.unhexlify(hexsig))
    subprocess.run([OPENSSL, "x509", "-in", "X.cert", "-pubkey", "-noout", "-out", "pub.pem"],
                   cwd=tmp_path, check=True)
    ok = subprocess.run([OPENSSL, "dgst", "-" + digest, "-verify", "pub.pem", "-signature", "sig.bin",
                         "X.mf"], cwd=tmp_path, capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == "Verified OK"
    (tmp_path / "X.mf").write_bytes(MF + b"\n")
    bad = subprocess.run([OPENSSL, "dgst", "-" + digest, "-verify", "pub.pem", "-signature", "sig.bin",
                          "X.mf"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode != 0 and "Verification failure" in bad.stdout


@pytest.mark.interop
@pytest.mark.skipif(OPENSSL is None, reason="openssl CLI missing")
def test_we_verify_what_openssl_signs(tmp_path: Path, signer: tuple[rsa.RSAPrivateKey, x509.Certificate]
                                      ) -> None:
    key, cert = signer
    (tmp_path / "key.pem").write_bytes(pem(key))
    (tmp_path / "X.mf").write_bytes(MF)
    subprocess.run([OPENSSL, "dgst", "-sha256", "-sign", "key.pem", "-out", "sig.bin", "X.mf"],
                   cwd=tmp_path, check=True)
    sig = (tmp_path / "sig.bin").read_bytes()
    cert_bytes = b"SHA256(X.mf)= " + binascii.hexlify(sig) + b"\n" + pem(cert)
    findings = check_signature(MF, parse_certificate_file(cert_bytes), mf_name="X.mf", now=NOW)
    assert errors(findings) == []


def test_sign_with_encrypted_key_and_chain(signer: tuple[rsa.RSAPrivateKey, x509.Certificate]) -> None:
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca = make_cert("test CA", ca_key)
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = make_cert("leaf", leaf_key, issuer="test CA", issuer_key=ca_key)
    encrypted = leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(b"pw"))
    out = sign_manifest(MF, private_key_pem=encrypted, certificate_chain_pem=pem(leaf, ca),
                        mf_name="app.mf", password=b"pw")
    parsed = parse_certificate_file(out)
    assert [c.subject for c in parsed.certificates] == [leaf.subject, ca.subject]
    assert rules(check_signature(MF, parsed, mf_name="app.mf", now=NOW)) == [("cert.subject", "info")]
    # A second certificate that did not issue the signer's certificate.
    wrong = CertFile(parsed.algorithm, parsed.mf_name, parsed.signature,
                     (leaf, signer[1]))
    assert ("cert.chain", "warning") in rules(check_signature(MF, wrong, mf_name="app.mf", now=NOW))
    with pytest.raises(UsageError):
        sign_manifest(MF, private_key_pem=encrypted, certificate_chain_pem=pem(leaf),
                      mf_name="app.mf", password=b"wrong")


def test_sign_refusals(signer: tuple[rsa.RSAPrivateKey, x509.Certificate]) -> None:
    key, cert = signer
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(UsageError):          # certificate of another key
        sign_manifest(MF, private_key_pem=pem(other), certificate_chain_pem=pem(cert), mf_name="a.mf")
    with pytest.raises(UsageError):
        sign_manifest(MF, private_key_pem=b"junk", certificate_chain_pem=pem(cert), mf_name="a.mf")
    with pytest.raises(UsageError):
        sign_manifest(MF, private_key_pem=pem(key), certificate_chain_pem=b"", mf_name="a.mf")
    with pytest.raises(UsageError):
        sign_manifest(MF, private_key_pem=pem(key), certificate_chain_pem=pem(cert), mf_name="a.mf",
                      digest="md5")
    with pytest.raises(UsageError):
        sign_manifest(MF, private_key_pem=pem(key), certificate_chain_pem=pem(cert), mf_name="a\n.mf")
    ec_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(UnsupportedError):
        sign_manifest(MF, private_key_pem=pem(ec_key), certificate_chain_pem=pem(make_cert("e", ec_key)),
                      mf_name="a.mf")


@pytest.mark.parametrize("key_size", [1024, 1032, 2048])
@pytest.mark.parametrize("mf_name", ["a.mf", "\u00e9t\u00e9 appliance.mf"])
def test_cert_size_is_exact_without_signing(key_size: int, mf_name: str,
                                            signer: tuple[rsa.RSAPrivateKey, x509.Certificate]
                                            ) -> None:
    key = signer[0] if key_size == 2048 else rsa.generate_private_key(65537, key_size)
    chain = pem(make_cert("size", key), signer[1])
    for digest in ("sha1", "sha256", "sha512"):
        loaded = load_signing_key(private_key_pem=pem(key), certificate_chain_pem=chain,
                                  digest=digest)
        out = loaded.sign(MF, mf_name=mf_name)
        assert loaded.cert_size(mf_name) == len(out)
        assert out == sign_manifest(MF, private_key_pem=pem(key), certificate_chain_pem=chain,
                                    mf_name=mf_name, digest=digest)


def test_pack_loads_the_signing_key_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A 16384-bit key takes ~20 s to load and validate; pack loaded it twice (44 s).
    from ovfs_testlib import make_signer
    from ovfstream.pack import pack
    from ovfstream.verify import verify

    loads = []
    real = cert_module.serialization.load_pem_private_key

    def counting(data: bytes, password: bytes | None = None, **kw: object) -> object:
        loads.append(1)
        return real(data, password=password, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(cert_module.serialization, "load_pem_private_key", counting)
    raw = tmp_path / "d.raw"
    raw.write_bytes(b"\x01" * 65536)
    out = tmp_path / "s.ova"
    pack([raw], out, signer=make_signer(), parallel=1, fsync=False)
    assert len(loads) == 1
    result = verify(out)
    assert result.ok and "cert.signature" not in {f.rule for f in result.findings}


# -- hostile certificate files (issue 8) ------------------------------------------------------

BEGIN = b"-----BEGIN CERTIFICATE-----"
END = b"-----END CERTIFICATE-----"


@pytest.mark.parametrize("line,tail,rule", [
    (BEGIN + b"\n", b"", "cert.format"),            # 160 KiB of BEGIN lines: 3.5 s before
    (BEGIN + b"\r\n", b"", "cert.format"),
    (BEGIN, b"", "cert.format"),                     # BEGIN without its line end
    (BEGIN + b"\n", END + b"\n", "cert.pem"),        # one END at the very end
    (BEGIN + b" " * 3 + b"\n", b"", "cert.format"),
])
def test_repeated_begin_lines_are_linear(line: bytes, tail: bytes, rule: str) -> None:
    data = b"SHA256(a.mf)= 00\n" + line * ((160 << 10) // len(line)) + tail
    start = time.perf_counter()
    assert rule_of(data) == rule
    assert time.perf_counter() - start < 1.0


def test_too_many_certificates(signer: tuple[rsa.RSAPrivateKey, x509.Certificate]) -> None:
    line = b"SHA256(a.mf)= 00\n"
    block = pem(signer[1])
    assert len(parse_certificate_file(line + block * MAX_CERTIFICATES).certificates) == MAX_CERTIFICATES
    start = time.perf_counter()
    assert rule_of(line + block * (MAX_CERTIFICATES + 1)) == "cert.format"
    assert rule_of(line + block * ((1 << 20) // len(block) - 1)) == "cert.format"
    assert time.perf_counter() - start < 2.0


def test_chain_blocks_for_signing_are_found_like_before(
        signer: tuple[rsa.RSAPrivateKey, x509.Certificate]) -> None:
    # Text around blocks (openssl x509 -text output) and a stray BEGIN line are ignored when
    # reading the signer's chain, as with the regex this replaced.
    key, cert = signer
    chain = b"subject=CN=x\n" + BEGIN + b"junk" + pem(cert) + b"trailer\n" + BEGIN + b"\n"
    loaded = load_signing_key(private_key_pem=pem(key), certificate_chain_pem=chain)
    assert loaded.certificates == (cert,)


# -- the real ovftool 4.1.0 certificate ------------------------------------------------------
@needs_shared("ovf-corpus")
def test_real_ovftool_cert_parses_and_verifies() -> None:
    data = (CORPUS / "tdAppliance1-t4-ovftool-4.1.0.cert").read_bytes()
    mf = (CORPUS / "tdAppliance1-t4-ovftool-4.1.0.mf").read_bytes()
    assert len(data) == 102400                     # ovftool pads the .cert with spaces
    parsed = parse_certificate_file(data, path="t4.cert")
    assert (parsed.algorithm, parsed.mf_name, len(parsed.signature)) == \
        ("sha1", "tdAppliance1-t4-ovftool-4.1.0.mf", 128)
    assert len(parsed.certificates) == 1
    assert parsed.certificates[0].subject.rfc4514_string().startswith("CN=beispiel.example.org")
    findings = check_signature(mf, parsed, mf_name="tdAppliance1-t4-ovftool-4.1.0.mf", now=NOW)
    assert errors(findings) == []                  # the corpus .mf is byte-exact: it verifies
    assert rules(findings) == [("cert.subject", "info"), ("cert.algorithm", "warning"),
                               ("cert.self_signed", "warning")]
    tampered = check_signature(mf.replace(b"19f651", b"19f652"), parsed,
                               mf_name="tdAppliance1-t4-ovftool-4.1.0.mf", now=NOW)
    assert errors(tampered) == ["cert.signature"]


# -- check rules -----------------------------------------------------------------------------
@pytest.fixture()
def signed(signer: tuple[rsa.RSAPrivateKey, x509.Certificate]) -> CertFile:
    key, cert = signer
    return parse_certificate_file(sign_manifest(MF, private_key_pem=pem(key),
                                                certificate_chain_pem=pem(cert), mf_name="app.mf"))


@pytest.mark.parametrize("change", ["one byte", "appended LF", "CRLF"])
def test_rule_cert_signature_tampered_manifest(signed: CertFile, change: str) -> None:
    mf = {"one byte": MF.replace(b"ab", b"ac", 1), "appended LF": MF + b"\n",
          "CRLF": MF.replace(b"\n", b"\r\n")}[change]
    assert errors(check_signature(mf, signed, mf_name="app.mf", now=NOW)) == ["cert.signature"]


def test_rule_cert_signature_tampered_signature(signed: CertFile) -> None:
    flipped = bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
    for sig in (flipped, signed.signature[:-1], b"\x00"):
        bad = CertFile(signed.algorithm, signed.mf_name, sig, signed.certificates)
        assert errors(check_signature(MF, bad, mf_name="app.mf", now=NOW)) == ["cert.signature"]
    wrong_algo = CertFile("sha512", signed.mf_name, signed.signature, signed.certificates)
    assert errors(check_signature(MF, wrong_algo, mf_name="app.mf", now=NOW)) == ["cert.signature"]


def test_rule_cert_signature_other_signer(signed: CertFile) -> None:
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other = CertFile(signed.algorithm, signed.mf_name, signed.signature,
                     (make_cert("impostor", other_key),))
    assert errors(check_signature(MF, other, mf_name="app.mf", now=NOW)) == ["cert.signature"]


def test_rule_cert_name(signed: CertFile) -> None:
    findings = check_signature(MF, signed, mf_name="other.mf", now=NOW)
    assert errors(findings) == ["cert.name"]


def test_rule_cert_algorithm_non_rsa_signer(signed: CertFile) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    bad = CertFile("sha256", "app.mf", signed.signature, (make_cert("ec", ec_key),))
    assert errors(check_signature(MF, bad, mf_name="app.mf", now=NOW)) == ["cert.algorithm"]


def test_rule_cert_expired_and_not_yet_valid(signer: tuple[rsa.RSAPrivateKey, x509.Certificate]) -> None:
    key, _ = signer
    cert = make_cert("short", key, not_before=dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc),
                     not_after=dt.datetime(2024, 2, 1, tzinfo=dt.timezone.utc))
    parsed = parse_certificate_file(sign_manifest(MF, private_key_pem=pem(key),
                                                  certificate_chain_pem=pem(cert), mf_name="a.mf"))
    inside = dt.datetime(2024, 1, 15, tzinfo=dt.timezone.utc)
    assert errors(check_signature(MF, parsed, mf_name="a.mf", now=inside)) == []
    assert "cert.expired" not in [f.rule for f in check_signature(MF, parsed, mf_name="a.mf", now=inside)]
    late = check_signature(MF, parsed, mf_name="a.mf", now=NOW)
    assert ("cert.expired", "warning") in rules(late) and errors(late) == []
    early = check_signature(MF, parsed, mf_name="a.mf", now=dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc))
    assert ("cert.not_yet_valid", "warning") in rules(early)
    with pytest.raises(UsageError):
        check_signature(MF, parsed, mf_name="a.mf", now=dt.datetime(2024, 1, 15))


def test_rule_cert_self_signed_only_for_self_signed(signed: CertFile) -> None:
    assert ("cert.self_signed", "warning") in rules(check_signature(MF, signed, mf_name="app.mf", now=NOW))
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = make_cert("leaf", leaf_key, issuer="CA", issuer_key=ca_key)
    sig = leaf_key.sign(MF, padding.PKCS1v15(), hashes.SHA256())
    findings = check_signature(MF, CertFile("sha256", "app.mf", sig, (leaf,)), mf_name="app.mf", now=NOW)
    assert [f.rule for f in findings] == ["cert.subject"]


# -- parse rules -----------------------------------------------------------------------------
def rule_of(data: bytes) -> str:
    with pytest.raises(CertificateFormatError) as exc:
        parse_certificate_file(data, path="x.cert")
    return exc.value.rule


def test_parse_tolerates_variants(signer: tuple[rsa.RSAPrivateKey, x509.Certificate]) -> None:
    key, cert = signer
    good = sign_manifest(MF, private_key_pem=pem(key), certificate_chain_pem=pem(cert), mf_name="a.mf")
    line, rest = good.split(b"\n", 1)
    token, hexsig = line.split(b"= ")
    for variant in (b"SHA256 (a.mf) = " + hexsig.upper() + b"\r\n" + rest.replace(b"\n", b"\r\n"),
                    b"\n\n" + good + b" " * 5000, line + b"\n\n" + rest + b"\n\n"):
        parsed = parse_certificate_file(variant)
        assert parsed.mf_name == "a.mf" and errors(check_signature(MF, parsed, mf_name="a.mf", now=NOW)) == []
        assert parsed.canonical is (variant.startswith(line + b"\n"))


@pytest.mark.parametrize("data", [b"", b"   \n  ", b"not a signature line\n",
                                  b"SHA256(a.mf)= abc\n", b"SHA256(a.mf)= zz\n",
                                  b"SHA256(a.mf)= 00\nsome text\n",
                                  b"SHA256(\xff.mf)= 00\n"])
def test_rule_cert_format(data: bytes, signer: tuple[rsa.RSAPrivateKey, x509.Certificate]) -> None:
    assert rule_of(data + pem(signer[1]) if data.strip() else data) == "cert.format"


def test_rule_cert_format_text_around_blocks(signer: tuple[rsa.RSAPrivateKey, x509.Certificate]) -> None:
    key, cert = signer
    good = sign_manifest(MF, private_key_pem=pem(key), certificate_chain_pem=pem(cert), mf_name="a.mf")
    assert rule_of(good + pem(key)) == "cert.format"          # a private key pasted by mistake
    assert rule_of(good + b"SHA256(b.mf)= 00\n") == "cert.format"
    assert rule_of(bytes(1 << 20) + b"x") == "cert.format"    # size limit


def test_rule_cert_pem(signer: tuple[rsa.RSAPrivateKey, x509.Certificate]) -> None:
    line = b"SHA256(a.mf)= 00\n"
    assert rule_of(line) == "cert.pem"                              # no certificate
    body = pem(signer[1])
    assert rule_of(line + body.replace(b"MII", b"MI!", 1)) == "cert.pem"   # not base64
    assert rule_of(line + body[:40] + body[200:]) == "cert.pem"     # DER does not decode


@pytest.mark.parametrize("token", [b"MD5", b"SHA2-256", b"SHA384"])
def test_rule_cert_algorithm(token: bytes, signer: tuple[rsa.RSAPrivateKey, x509.Certificate]) -> None:
    assert rule_of(token + b"(a.mf)= 00\n" + pem(signer[1])) == "cert.algorithm"


def test_rules_are_documented() -> None:
    assert set(RULES) == {"cert.format", "cert.pem", "cert.algorithm", "cert.signature", "cert.name",
                          "cert.self_signed", "cert.chain", "cert.expired", "cert.not_yet_valid",
                          "cert.subject"}


# -- fuzz ------------------------------------------------------------------------------------
REAL = ((CORPUS / "tdAppliance1-t4-ovftool-4.1.0.cert").read_bytes().rstrip(b" ")
        if CORPUS.is_dir() else b"")  # the tests that use it need ../shared


@st.composite
def mutated_cert(draw: st.DrawFn) -> bytes:
    data = bytearray(REAL)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data) - 1)) if data else 0
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        if kind == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[pos:]
        elif kind == "insert":
            data[pos:pos] = draw(st.sampled_from([
                b"\n", b" ", b"-----BEGIN CERTIFICATE-----\n", b"-----END CERTIFICATE-----",
                b"=", b"A", b"\xff",
                # issue 8: runs of BEGIN lines (quadratic before), CRLF and bare markers
                b"-----BEGIN CERTIFICATE-----\n" * 2000, b"-----BEGIN CERTIFICATE-----\r\n" * 500,
                b"-----BEGIN CERTIFICATE-----" * 500, REAL[REAL.find(b"-----BEGIN"):] * 3]))
        else:
            del data[pos:pos + draw(st.integers(1, 64))]
    return bytes(data)


@needs_shared("ovf-corpus")
@settings(max_examples=600, deadline=None)
@given(data=st.one_of(st.binary(max_size=300), mutated_cert()))
def test_fuzz_parse_only_certificate_format_error(data: bytes) -> None:
    mf = (CORPUS / "tdAppliance1-t4-ovftool-4.1.0.mf").read_bytes()
    start = time.perf_counter()
    try:
        parsed = parse_certificate_file(data, path="f.cert")
    except CertificateFormatError as exc:
        assert exc.rule in RULES
        return
    finally:
        assert time.perf_counter() - start < 1.0
    # Whatever parses can be checked without an exception.
    for f in check_signature(mf, parsed, mf_name=parsed.mf_name, now=NOW):
        assert f.rule in RULES


def _corpus_cert_with_der_patch(marker_hex: str, delta: int, value: int) -> bytes:
    """The ovftool corpus .cert with one byte of its certificate's DER replaced."""
    import base64
    text = (CORPUS / "tdAppliance1-t4-ovftool-4.1.0.cert").read_bytes()
    head, _, rest = text.partition(b"-----BEGIN CERTIFICATE-----\n")
    body, _, tail = rest.partition(b"-----END CERTIFICATE-----")
    der = bytearray(base64.b64decode(body))
    der[der.index(bytes.fromhex(marker_hex)) + delta] = value
    return (head + b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(der)) +
            b"-----END CERTIFICATE-----" + tail)


@needs_shared("ovf-corpus")
@pytest.mark.parametrize("marker_hex,delta,value", [
    # Found by the fuzzer: a version INTEGER of 10 made cryptography raise InvalidVersion,
    # which is not a ValueError, straight through the parser.
    ("a003020102", 4, 10),
    # Found by the fuzzer: a name attribute whose string tag is not a string type (0x10)
    # made cryptography raise KeyError while rendering the subject.
    ("0603550406130244", 5, 0x10),
    # Found by the fuzzer in CI: the country name as a BIT STRING (0x03) made cryptography
    # raise TypeError (only X500_UNIQUE_IDENTIFIER may be one).
    ("0603550406130244", 5, 0x03),
])
def test_undecodable_certificate_fields_are_format_errors(marker_hex: str, delta: int,
                                                         value: int) -> None:
    with pytest.raises(CertificateFormatError) as info:
        parse_certificate_file(_corpus_cert_with_der_patch(marker_hex, delta, value))
    assert info.value.rule == "cert.pem"
