"""Fuzzing ``cms.verify`` with hypothesis.

The contract: ``verify`` raises :class:`CryptoError` (``bad_cms``) and nothing else on any input; what it
accepts always carries the signed content unchanged; and a changed SignedData never passes ``verify`` and then
the chain check of the certificate it returns (``verify`` does not check the chain: a certificate whose
unsigned-for fields were changed but whose key, issuer and serial were not still carries a good signature, and
it is ``pki.verify_chain`` that refuses it; the fuzzer found exactly that). Inputs are
random bytes, random DER-looking prefixes and mutations (flips, overwrites, truncations, insertions,
deletions) of valid SignedData, with and without the embedded certificate. ``CARDNET_FUZZ_EXAMPLES`` sets the
number of examples (default 200).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from fuzzing import fuzz_settings, mutations
from hypothesis import example, given
from hypothesis import strategies as st

from cardnet.crypto import cms, pki, profile
from cardnet.crypto.errors import CryptoError, PkiError
from cardnet.crypto.pki import CertificateAuthority, Role
from cardnet.wire.ids import Uid

FUZZ = fuzz_settings(200, deadline_s=None, large_data=True)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(days=1)
CA = CertificateAuthority.create("fuzz cms root", now=NOW, rng=random.Random(1).randbytes)
KEY = profile.generate_private_key(random.Random(3).randbytes)
CERT_DER = pki.cert_to_der(CA.issue(Role.DEVICE, Uid(bytes(range(12)), 0), KEY.public_key(), now=NOW))
BILL = b"SPEED payment order: 12.00 to merchant 7"
SIGNED = cms.sign(BILL, CERT_DER, lambda data: profile.sign(KEY, data))
SIGNED_NO_CERT = cms.sign(BILL, CERT_DER, lambda data: profile.sign(KEY, data), with_cert=False)


def _chain_refused(cert_der: bytes) -> bool:
    try:
        pki.verify_chain([pki.cert_from_der(cert_der)], [CA.certificate], now=LATER)
    except PkiError:
        return True
    return False


def _judge(raw: bytes, original: bytes, cert_der: bytes | None = None) -> None:
    try:
        signed = cms.verify(raw, cert_der=cert_der)
    except CryptoError as err:
        assert err.reason == "bad_cms"
        assert str(err)
        return
    assert signed.content == BILL, "verify returned content that was never signed"
    if signed.signer_cert_der != CERT_DER:  # a changed certificate: the chain check must refuse it
        assert _chain_refused(signed.signer_cert_der), "a changed certificate passed verify and the chain check"
    else:
        assert raw == original, "a modified SignedData verified"


@FUZZ
@given(st.binary(max_size=2048))
@example(b"")
@example(b"\x30\x80\x00\x00")
@example(b"\x30\x80" * 2000)
@example(b"\x30\x84\xff\xff\xff\xff")
@example(SIGNED[:-1])
@example(SIGNED + b"\x00")
def test_random_bytes_raise_only_crypto_error(raw: bytes) -> None:
    _judge(raw, SIGNED)


@FUZZ
@given(st.sampled_from([b"\x30\x82", b"\x30\x81", b"\x30\x80", SIGNED[:19], SIGNED[:40]]), st.binary(max_size=600))
def test_der_looking_prefixes(prefix: bytes, rest: bytes) -> None:
    _judge(prefix + rest, SIGNED)


@FUZZ
@given(mutations(SIGNED))
def test_mutated_signed_data_never_verifies(raw: bytes) -> None:
    _judge(raw, SIGNED)


@FUZZ
@given(mutations(SIGNED_NO_CERT))
def test_mutated_signed_data_without_certificate_never_verifies(raw: bytes) -> None:
    _judge(raw, SIGNED_NO_CERT, cert_der=CERT_DER)


@FUZZ
@given(mutations(CERT_DER))
def test_a_mutated_certificate_given_never_verifies(cert_der: bytes) -> None:
    try:
        signed = cms.verify(SIGNED_NO_CERT, cert_der=cert_der)
    except CryptoError as err:
        assert err.reason == "bad_cms"
    else:
        assert signed == cms.Signed(BILL, cert_der)
        assert cert_der == CERT_DER or _chain_refused(cert_der)


@FUZZ
@given(st.binary(max_size=300))
def test_sign_then_verify(content: bytes) -> None:
    der = cms.sign(content, CERT_DER, lambda data: profile.sign(KEY, data))
    assert cms.verify(der) == cms.Signed(content, CERT_DER)


def _parsed(raw: bytes, cert_der: bytes | None) -> cms.Signed | str:
    try:
        return cms._verify_parsed(raw, cert_der)
    except CryptoError as err:
        return err.reason


@FUZZ
@given(
    st.sampled_from([(SIGNED, None), (SIGNED_NO_CERT, CERT_DER), (SIGNED, CERT_DER)]).flatmap(
        lambda pair: st.tuples(st.one_of(st.just(pair[0]), mutations(pair[0])), st.just(pair[1]))
    )
)
def test_the_fast_path_accepts_exactly_what_the_full_parse_accepts(case: tuple[bytes, bytes | None]) -> None:
    """``verify`` first recognises the one encoding ``sign`` makes by its element headers and a rebuild; whatever
    it accepts so, the full asn1crypto parse accepts with the same result (and what it passes on, the parse judges)."""
    raw, cert_der = case
    fast = cms._verify_canonical(raw, cert_der)
    if fast is not None:
        assert _parsed(raw, cert_der) == fast
    if raw in (SIGNED, SIGNED_NO_CERT):
        assert fast == cms.Signed(BILL, CERT_DER)  # the encoding sign makes takes the fast path
    _judge(raw, SIGNED if raw[: len(SIGNED)] == SIGNED[: len(raw)] else SIGNED_NO_CERT, cert_der)


def test_the_fast_path_passes_a_changed_or_foreign_certificate_on_to_the_full_parse() -> None:
    other_key = profile.generate_private_key(random.Random(4).randbytes)
    other = pki.cert_to_der(CA.issue(Role.DEVICE, Uid(bytes(range(1, 13)), 0), other_key.public_key(), now=NOW))
    assert cms._verify_canonical(SIGNED, other) is None  # embedded cert is not the one given
    assert cms._verify_canonical(SIGNED_NO_CERT, other) is None  # another key: the signature fails
    assert cms._verify_canonical(SIGNED_NO_CERT, None) is None  # no certificate at all
    for cert in (other, None):
        try:
            cms.verify(SIGNED_NO_CERT, cert_der=cert)
        except CryptoError as err:
            assert err.reason == "bad_cms"
        else:
            raise AssertionError("verified under the wrong certificate")


# A second signer whose certificate has other lengths (a long name): templates are per certificate.
LONG_KEY = profile.generate_private_key(random.Random(5).randbytes)
LONG_CERT_DER = pki.cert_to_der(
    CA.issue(Role.DEVICE, Uid(b"\x05" * 12, 0), LONG_KEY.public_key(), now=NOW, name="a till " + "x" * 56)
)
SIGNERS = [(CERT_DER, KEY), (LONG_CERT_DER, LONG_KEY)]


def _contents() -> st.SearchStrategy[bytes]:
    """Any content: short ones drawn byte by byte, long ones (past DER's 1-, 2- and 3-byte lengths) at random."""
    big = st.integers(0, 70_000).flatmap(lambda n: st.randoms(use_true_random=False).map(lambda r: r.randbytes(n)))
    return st.binary(max_size=400) | big


@FUZZ
@given(
    _contents(),
    st.sampled_from(SIGNERS),
    st.booleans(),
    st.integers(1, 2**256 - 1) | st.integers(1, 2**64),  # r and s: DER drops their leading zeros
    st.integers(1, 2**256 - 1) | st.integers(1, 2**64),
    st.one_of(st.none(), st.binary(max_size=200)),  # or any bytes (what verify's fast path rebuilds from)
)
def test_the_encoding_is_byte_for_byte_what_asn1crypto_builds(
    content: bytes, signer: tuple[bytes, profile.PrivateKey], with_cert: bool, r: int, s: int, other: bytes | None
) -> None:
    """``cms._encode`` fills the certificate's one template (lengths recomputed) instead of building the
    SignedData with asn1crypto: for any content and signature it is asn1crypto's encoding exactly."""
    cert_der, _ = signer
    signature = encode_dss_signature(r, s) if other is None else other
    cert, _, _ = cms._asn1_cert(cert_der)
    expected = cms._build(content, cert, signature, with_cert=with_cert)
    assert cms._encode(content, cert_der, signature, with_cert=with_cert) == expected


@fuzz_settings(50, deadline_s=None, large_data=True)
@given(_contents(), st.sampled_from(SIGNERS), st.booleans())
def test_sign_makes_what_asn1crypto_builds_and_verify_takes_it(
    content: bytes, signer: tuple[bytes, profile.PrivateKey], with_cert: bool
) -> None:
    cert_der, key = signer
    made: list[bytes] = []

    def sign(data: bytes) -> bytes:
        made.append(profile.sign(key, data))
        return made[-1]

    der = cms.sign(content, cert_der, sign, with_cert=with_cert)
    half = len(made[0]) // 2
    signature = encode_dss_signature(int.from_bytes(made[0][:half], "big"), int.from_bytes(made[0][half:], "big"))
    cert, _, _ = cms._asn1_cert(cert_der)
    assert der == cms._build(content, cert, signature, with_cert=with_cert)
    assert cms.verify(der, cert_der=None if with_cert else cert_der) == cms.Signed(content, cert_der)
    assert cms._verify_parsed(der, None if with_cert else cert_der) == cms.Signed(content, cert_der)
