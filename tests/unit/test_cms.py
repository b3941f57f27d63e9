"""CMS SignedData (crypto/cms.py): round trips, determinism, every refusal, and the real ``openssl cms -verify``."""

from __future__ import annotations

import os
import random
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import algos as asn1_algos
from asn1crypto import cms as asn1_cms
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.x509.oid import NameOID

from cardnet.crypto import cms, pki, profile
from cardnet.crypto.errors import CryptoError
from cardnet.crypto.pki import CertificateAuthority, Role
from cardnet.wire.ids import Uid
from conftest import openssl

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=1)
BILL = b"SPEED bill #42: 3 x coffee\r\n\x00\xff total 7.50"


def seeded(seed: int) -> profile.Rng:
    return random.Random(seed).randbytes


CA = CertificateAuthority.create("cms test root", now=NOW, rng=seeded(1))
OTHER_CA = CertificateAuthority.create("cms other root", now=NOW, rng=seeded(2))
KEY = profile.generate_private_key(seeded(10))
OTHER_KEY = profile.generate_private_key(seeded(11))
CERT = CA.issue(Role.DEVICE, Uid(bytes(range(12)), 0), KEY.public_key(), now=NOW, name="merchant till")
CERT_DER = pki.cert_to_der(CERT)
OTHER_CERT_DER = pki.cert_to_der(CA.issue(Role.DEVICE, Uid(b"\x07" * 12, 0), OTHER_KEY.public_key(), now=NOW))


def signer(key: profile.PrivateKey) -> Callable[[bytes], bytes]:
    return lambda data: profile.sign(key, data)


SIGNED = cms.sign(BILL, CERT_DER, signer(KEY))
SIGNED_NO_CERT = cms.sign(BILL, CERT_DER, signer(KEY), with_cert=False)


def refused(call: Callable[[], object], *words: str) -> CryptoError:
    with pytest.raises(CryptoError) as err:
        call()
    assert err.value.reason == "bad_cms", str(err.value)
    for word in words:
        assert word in str(err.value), str(err.value)
    return err.value


def edited(der: bytes, edit: Callable[[Any], None]) -> bytes:
    """``der`` parsed with asn1crypto, changed by ``edit(signed_data)``, re-encoded (a well-formed variant)."""
    info = asn1_cms.ContentInfo.load(der)
    edit(info["content"])
    out: bytes = info.dump(force=True)
    return out


def flip(der: bytes, at: int) -> bytes:
    data = bytearray(der)
    data[at] ^= 0x01
    return bytes(data)


# --- round trips ------------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [BILL, b"", b"x", bytes(range(256)) * 40])
def test_round_trip(content: bytes) -> None:
    der = cms.sign(content, CERT_DER, signer(KEY))
    assert cms.verify(der) == cms.Signed(content=content, signer_cert_der=CERT_DER)


def test_sign_is_deterministic() -> None:
    assert cms.sign(BILL, CERT_DER, signer(KEY)) == SIGNED
    assert cms.sign(BILL, CERT_DER, signer(KEY), with_cert=False) == SIGNED_NO_CERT
    assert cms.sign(BILL + b".", CERT_DER, signer(KEY)) != SIGNED


def test_the_shape() -> None:
    """The fields docs/crypto.md promises, read back with asn1crypto."""
    info = asn1_cms.ContentInfo.load(SIGNED)
    assert info["content_type"].native == "signed_data"
    sd = info["content"]
    assert sd["version"].native == "v1"
    assert [a["algorithm"].native for a in sd["digest_algorithms"]] == ["sha256"]
    assert sd["encap_content_info"]["content_type"].native == "data"
    assert sd["encap_content_info"]["content"].native == BILL
    assert [c.chosen.dump() for c in sd["certificates"]] == [CERT_DER]
    (si,) = sd["signer_infos"]
    assert si["sid"].name == "issuer_and_serial_number"
    assert si["sid"].chosen["serial_number"].native == CERT.serial_number
    assert si["signature_algorithm"]["algorithm"].dotted == "1.2.840.10045.4.3.2"  # ecdsa-with-SHA256
    assert si["signed_attrs"].native is None
    # the signature is over the content itself (no signed attributes)
    r, s = decode_dss_signature(si["signature"].native)
    assert r.to_bytes(32, "big") + s.to_bytes(32, "big") == profile.sign(KEY, BILL)
    assert asn1_cms.ContentInfo.load(SIGNED_NO_CERT)["content"]["certificates"].native is None


def test_cert_der_path_without_an_embedded_certificate() -> None:
    assert cms.verify(SIGNED_NO_CERT, cert_der=CERT_DER) == cms.Signed(BILL, CERT_DER)
    assert cms.verify(SIGNED, cert_der=CERT_DER).content == BILL  # embedded and given: the same bytes
    refused(lambda: cms.verify(SIGNED_NO_CERT), "no certificate is embedded")


def test_verify_takes_bytes_like() -> None:
    assert cms.verify(bytearray(SIGNED), cert_der=memoryview(CERT_DER)).content == BILL


# --- refusals ---------------------------------------------------------------------------------------


def test_tampered_content_byte() -> None:
    at = SIGNED.index(BILL)
    for i in (0, len(BILL) // 2, len(BILL) - 1):
        refused(lambda i=i: cms.verify(flip(SIGNED, at + i)), "signature")
    at = SIGNED_NO_CERT.index(BILL)
    refused(lambda: cms.verify(flip(SIGNED_NO_CERT, at), cert_der=CERT_DER), "signature")


def test_tampered_signature() -> None:
    refused(lambda: cms.verify(flip(SIGNED, len(SIGNED) - 1)), "signature")  # the last byte of s
    refused(lambda: cms.verify(flip(SIGNED, len(SIGNED) - 40)), "signature")  # inside r


def test_high_s_twin_refused() -> None:
    """ECDSA accepts (r, n - s); cardnet refuses it, so a SignedData has one valid signature."""
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

    def twin(sd: Any) -> None:
        r, s = decode_dss_signature(sd["signer_infos"][0]["signature"].native)
        sd["signer_infos"][0]["signature"] = encode_dss_signature(r, n - s)

    refused(lambda: cms.verify(edited(SIGNED, twin)), "high-s")


def test_swapped_certificate_another_keys() -> None:
    """The embedded certificate replaced by another key's: its issuerAndSerialNumber differs from the sid."""

    def swap(sd: Any) -> None:
        sd["certificates"] = [asn1_x509.Certificate.load(OTHER_CERT_DER)]

    refused(lambda: cms.verify(edited(SIGNED, swap)), "issuerAndSerialNumber")
    refused(lambda: cms.verify(SIGNED_NO_CERT, cert_der=OTHER_CERT_DER), "issuerAndSerialNumber")
    refused(lambda: cms.verify(SIGNED, cert_der=OTHER_CERT_DER), "not the cert_der given")


def test_impostor_certificate_with_the_same_issuer_and_serial() -> None:
    """A certificate naming the same issuer and serial but holding another key: the signature check refuses it."""
    impostor = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "impostor")]))
        .issuer_name(CERT.issuer)
        .serial_number(CERT.serial_number)
        .public_key(OTHER_KEY.public_key())
        .not_valid_before(NOW)
        .not_valid_after(LATER)
        .sign(OTHER_KEY, hashes.SHA256())
    )
    impostor_der = impostor.public_bytes(serialization.Encoding.DER)

    def swap(sd: Any) -> None:
        sd["certificates"] = [asn1_x509.Certificate.load(impostor_der)]

    refused(lambda: cms.verify(edited(SIGNED, swap)), "bad signature")
    refused(lambda: cms.verify(SIGNED_NO_CERT, cert_der=impostor_der), "bad signature")


def test_sign_refuses_a_signer_without_the_certified_key() -> None:
    with pytest.raises(CryptoError) as err:
        cms.sign(BILL, CERT_DER, signer(OTHER_KEY))
    assert err.value.reason == "bad_signature"
    with pytest.raises(CryptoError) as err:
        cms.sign(BILL, CERT_DER, lambda data: b"\x01" * 70)
    assert err.value.reason == "bad_signature"
    refused(lambda: cms.sign(BILL, b"not a certificate", signer(KEY)), "certificate")


def test_oversize_refused() -> None:
    refused(lambda: cms.verify(b"\x30" + b"\x00" * cms.MAX_CMS_BYTES), "limit")
    refused(lambda: cms.sign(b"\x00" * cms.MAX_CMS_BYTES, CERT_DER, signer(KEY)), "limit")
    near = cms.MAX_CMS_BYTES - len(SIGNED) + len(BILL)  # about the largest content that fits (lengths grow)
    while not _fits(near):  # the estimate is an upper bound: the overhead only grows with the content
        near -= 1
    der = cms.sign(b"\x00" * near, CERT_DER, signer(KEY))
    assert cms.MAX_CMS_BYTES - 8 <= len(der) <= cms.MAX_CMS_BYTES
    assert cms.verify(der).content == b"\x00" * near
    refused(lambda: cms.sign(b"\x00" * (near + 1), CERT_DER, signer(KEY)), "limit")


def _fits(size: int) -> bool:
    try:
        cms.sign(b"\x00" * size, CERT_DER, signer(KEY))
    except CryptoError:
        return False
    return True


def test_trailing_bytes_and_truncation() -> None:
    refused(lambda: cms.verify(SIGNED + b"\x00"), "parse")
    refused(lambda: cms.verify(SIGNED[:-1]), "parse")
    refused(lambda: cms.verify(b""), "parse")


def test_not_strict_der() -> None:
    indefinite = b"\x30\x80" + SIGNED[4:] + b"\x00\x00"  # BER indefinite length for the outer SEQUENCE
    assert SIGNED[:2] == b"\x30\x82"
    refused(lambda: cms.verify(indefinite), "DER")
    long_length = b"\x30\x83\x00" + SIGNED[2:]  # a length in more bytes than it needs
    refused(lambda: cms.verify(long_length))


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        (lambda sd: sd["encap_content_info"].__setitem__("content_type", "signed_data"), "content type"),
        (lambda sd: sd["encap_content_info"].__setitem__("content", None), "detached"),
        (lambda sd: sd["signer_infos"].append(sd["signer_infos"][0].copy()), "2 signers"),
        (lambda sd: sd.__setitem__("signer_infos", []), "0 signers"),
        (lambda sd: sd["signer_infos"][0].__setitem__("version", "v3"), "version"),
        (lambda sd: sd.__setitem__("version", "v3"), "version"),
        (
            lambda sd: sd["signer_infos"][0].__setitem__(
                "signed_attrs", [{"type": "content_type", "values": ["data"]}]
            ),
            "signed attributes",
        ),
        (
            lambda sd: sd["signer_infos"][0].__setitem__(
                "unsigned_attrs", [{"type": "content_type", "values": ["data"]}]
            ),
            "unsigned attributes",
        ),
        (
            lambda sd: sd["signer_infos"][0].__setitem__(
                "digest_algorithm", asn1_algos.DigestAlgorithm({"algorithm": "sha384"})
            ),
            "sha384",
        ),
        (
            lambda sd: sd.__setitem__("digest_algorithms", [asn1_algos.DigestAlgorithm({"algorithm": "sha512"})]),
            "sha512",
        ),
        (
            lambda sd: sd["signer_infos"][0].__setitem__(
                "signature_algorithm", asn1_algos.SignedDigestAlgorithm({"algorithm": "sha384_ecdsa"})
            ),
            "sha384_ecdsa",
        ),
        (
            lambda sd: sd["signer_infos"][0].__setitem__(
                "digest_algorithm",
                asn1_algos.DigestAlgorithm({"algorithm": "sha256"}),  # NULL parameters
            ),
            "parameters",
        ),
        (lambda sd: sd["certificates"].append(sd["certificates"][0].copy()), "2 certificates"),
    ],
)
def test_every_other_shape_refused(edit: Callable[[Any], None], words: str) -> None:
    refused(lambda: cms.verify(edited(SIGNED, edit)), words)


def test_wrong_outer_content_type() -> None:
    data = asn1_cms.ContentInfo({"content_type": "data", "content": BILL}).dump()
    refused(lambda: cms.verify(data), "content type")


def test_garbage_and_wrong_types() -> None:
    for raw in (b"\x00", b"\x30\x80\x00\x00", b"\x30" * 5000, b"\x30\x80" * 5000, os.urandom(300)):
        refused(lambda raw=raw: cms.verify(raw))
    refused(lambda: cms.verify("text"))  # type: ignore[arg-type]
    refused(lambda: cms.verify(SIGNED_NO_CERT, cert_der=b"\x30\x00"), "certificate")


# --- the real openssl ---------------------------------------------------------------------------------


def cms_verify(
    tmp_path: Path, der: bytes, *, ca: CertificateAuthority = CA, certfile: bytes | None = None
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """``openssl cms -verify`` as an arbitrator runs it (docs/crypto.md), at ``LATER``."""
    (tmp_path / "f.der").write_bytes(der)
    (tmp_path / "ca.pem").write_bytes(pki.chain_to_pem([ca.certificate]))
    out = tmp_path / "content.bin"
    out.unlink(missing_ok=True)
    args = [openssl(), "cms", "-verify", "-inform", "DER", "-in", str(tmp_path / "f.der"), "-CAfile",
            str(tmp_path / "ca.pem"), "-purpose", "any", "-binary", "-attime", str(int(LATER.timestamp())),
            "-out", str(out)]  # fmt: skip
    if certfile is not None:
        (tmp_path / "signer.pem").write_bytes(certfile)
        args += ["-certfile", str(tmp_path / "signer.pem")]
    return subprocess.run(args, capture_output=True, text=True, timeout=30, check=False), out


def test_openssl_cms_verify_accepts_it(tmp_path: Path) -> None:
    result, out = cms_verify(tmp_path, SIGNED)
    assert result.returncode == 0, result.stderr
    assert "Verification successful" in result.stderr
    assert out.read_bytes() == BILL  # byte for byte: -binary keeps the CR LF and the NUL


def test_openssl_cms_verify_with_the_certificate_given_separately(tmp_path: Path) -> None:
    result, out = cms_verify(tmp_path, SIGNED_NO_CERT, certfile=pki.chain_to_pem([CERT]))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == BILL


def test_openssl_cms_verify_refuses_tampering(tmp_path: Path) -> None:
    result, _ = cms_verify(tmp_path, flip(SIGNED, SIGNED.index(BILL) + 3))
    assert result.returncode != 0
    assert "Verification failure" in result.stderr
    result, _ = cms_verify(tmp_path, flip(SIGNED, len(SIGNED) - 1))
    assert result.returncode != 0


def test_openssl_cms_verify_refuses_another_ca(tmp_path: Path) -> None:
    result, _ = cms_verify(tmp_path, SIGNED, ca=OTHER_CA)
    assert result.returncode != 0


def test_what_openssl_signs_with_attributes_or_detached_is_refused(tmp_path: Path) -> None:
    """openssl's own defaults (signed attributes with a signing time; detached content) are not cardnet's shape."""
    (tmp_path / "content").write_bytes(BILL)
    (tmp_path / "cert.pem").write_bytes(pki.chain_to_pem([CERT]))
    (tmp_path / "key.pem").write_bytes(
        KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    base = [openssl(), "cms", "-sign", "-binary", "-md", "sha256", "-outform", "DER", "-in", str(tmp_path / "content"),
            "-signer", str(tmp_path / "cert.pem"), "-inkey", str(tmp_path / "key.pem")]  # fmt: skip
    for extra, words in ((["-nodetach"], "signed attributes"), ([], "detached")):
        made = subprocess.run([*base, *extra], capture_output=True, timeout=30, check=False)
        assert made.returncode == 0, made.stderr
        refused(lambda made=made: cms.verify(made.stdout), words)


def test_signing_and_verifying_contents_of_new_lengths_needs_no_asn1crypto_building(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The encoding comes from one template per certificate (lengths recomputed), so a content or a signature of
    a length not seen before costs no asn1crypto object building (the SPEED simulation spent a quarter of its
    CPU there: 469 templates for 728 signatures, one per new length). Each certificate's template is made once."""
    key = profile.generate_private_key(seeded(12))
    cert_der = pki.cert_to_der(CA.issue(Role.DEVICE, Uid(b"\x0c" * 12, 0), key.public_key(), now=NOW, name="fresh"))
    real_build = cms._build
    built: list[int] = []

    def counted(content: bytes, cert: Any, signature_der: bytes, *, with_cert: bool) -> bytes:
        built.append(len(content))
        return real_build(content, cert, signature_der, with_cert=with_cert)

    monkeypatch.setattr(cms, "_build", counted)
    for with_cert in (True, False):
        cms.verify(cms.sign(b"first" * 20, cert_der, signer(key), with_cert=with_cert), cert_der=cert_der)
    made = len(built)  # the two templates (and their checks)
    for length in [0, 1, 5, 16, 100, 127, 128, 129, 255, 256, 1000, 4096, 40_000, *range(300, 340)]:
        content = os.urandom(length)
        for with_cert in (True, False):
            der = cms.sign(content, cert_der, signer(key), with_cert=with_cert)
            assert cms.verify(der, cert_der=cert_der) == cms.Signed(content, cert_der)
    assert len(built) == made, f"asn1crypto built {len(built) - made} SignedData for contents of new lengths"


@pytest.mark.parametrize("with_cert", [True, False])
@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 127, 128, 255, 256, 300, 65_535, 65_536, 70_000])
def test_the_spliced_template_is_exactly_what_asn1crypto_builds(length: int, with_cert: bool) -> None:
    """sign and verify take the encoding from a cached template with the content and signature spliced in
    (cms._encode): for every length around DER's length-encoding steps it is byte for byte asn1crypto's own."""
    content = os.urandom(length)
    for _ in range(3):  # signatures of 70, 71 and 72 bytes (DER drops leading zeros of r and s)
        r, s = decode_dss_signature(encode_dss_signature(*[random.getrandbits(255) | 1 for _ in range(2)]))
        sig = encode_dss_signature(r, s)
        cert, _, _ = cms._asn1_cert(CERT_DER)
        assert cms._encode(content, CERT_DER, sig, with_cert=with_cert) == cms._build(
            content, cert, sig, with_cert=with_cert
        )
