"""The PKI (crypto/pki.py): issuing, verifying, every refusal reason, the blocklist, CA files, openssl interop."""

from __future__ import annotations

import base64
import copy
import dataclasses
import pickle
import random
import shutil
import stat
import subprocess
import warnings
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from cardnet.crypto import pki, profile
from cardnet.crypto.errors import CryptoError, PkiError
from cardnet.crypto.pki import Blocklist, CertificateAuthority, Role
from cardnet.wire import cbor
from cardnet.wire.errors import DecodeError
from cardnet.wire.ids import Uid

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LATER = NOW + timedelta(days=1)
OPENSSL = "/usr/bin/openssl"
LEAF_ROLES = [Role.AGENT, Role.DEVICE, Role.SERVICE]


def seeded(seed: int) -> profile.Rng:
    return random.Random(seed).randbytes


def uid(n: int, port: int = 0) -> Uid:
    return Uid(n.to_bytes(12, "big"), port)


def new_key(seed: int) -> profile.PrivateKey:
    return profile.generate_private_key(seeded(seed))


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("cardnet test root", now=NOW, rng=seeded(1))


@pytest.fixture(scope="module")
def device_key() -> profile.PrivateKey:
    return new_key(10)


@pytest.fixture(scope="module")
def device_cert(ca: CertificateAuthority, device_key: profile.PrivateKey) -> x509.Certificate:
    return ca.issue(Role.DEVICE, uid(42), device_key.public_key(), now=NOW, name="Gate 3")


def refused(reason: str, call: Callable[[], object]) -> PkiError:
    with pytest.raises(PkiError) as err:
        call()
    assert err.value.reason == reason, str(err.value)
    assert len(str(err.value)) > 20  # says what was wrong and what to do
    return err.value


def build_cert(
    *,
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    signer: ec.EllipticCurvePrivateKey,
    extensions: list[tuple[x509.ExtensionType, bool]],
    start: datetime = NOW,
    days: int = 30,
) -> x509.Certificate:
    """A certificate made by hand, for shapes CertificateAuthority refuses to make."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(1234)
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
    )
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(signer, hashes.SHA256())


def leaf_extensions(role: Role, who: Uid, *, ca_cert: x509.Certificate) -> list[tuple[x509.ExtensionType, bool]]:
    ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        ),
        (x509.ExtendedKeyUsage([pki.DEVICE_OID if role is Role.DEVICE else pki.AGENT_OID]), False),
        (x509.SubjectAlternativeName([x509.UniformResourceIdentifier(pki.UID_URI_PREFIX + str(who))]), False),
        (x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False),
    ]


def cn(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


# --- issuing and verifying ------------------------------------------------------------------------


@pytest.mark.parametrize("role", LEAF_ROLES)
def test_issue_and_verify_each_role(ca: CertificateAuthority, role: Role) -> None:
    key = new_key(20)
    who = uid(7, port=3 if role is Role.AGENT else 0)
    cert = ca.issue(role, who, key.public_key(), now=NOW)
    peer = pki.verify_chain([cert], [ca.certificate], now=LATER, role=role, uid=who)
    assert peer.uid == who
    assert peer.role is role
    assert profile.public_bytes(peer.public_key) == profile.public_bytes(key.public_key())
    assert peer.certificate == cert
    assert pki.role_of(cert) is role
    assert pki.uid_of(cert) == who
    # role and uid are optional expectations
    assert pki.verify_chain([cert], [ca.certificate], now=LATER).role is role


def test_root_certificate_profile(ca: CertificateAuthority) -> None:
    root = ca.certificate
    assert root.subject == root.issuer == cn("cardnet test root")
    assert ca.name == "cardnet test root"
    bc = root.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = root.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and not ku.value.digital_signature
    ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = root.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert root.not_valid_before_utc == NOW
    assert root.not_valid_after_utc == NOW + timedelta(days=3650)
    assert isinstance(root.signature_hash_algorithm, hashes.SHA256)
    assert pki.role_of(root) is Role.CA
    refused("bad_certificate", lambda: pki.uid_of(root))
    assert ca.intermediates == ()


def test_leaf_certificate_profile(ca: CertificateAuthority, device_cert: x509.Certificate) -> None:
    text = "00000000000000000000002a:00000000"
    assert device_cert.subject.rfc4514_string() == f"CN={text},O=Gate 3"
    assert device_cert.issuer == ca.certificate.subject
    exts = device_cert.extensions
    bc = exts.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = exts.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and ku.value.key_agreement and not ku.value.key_cert_sign
    eku = exts.get_extension_for_class(x509.ExtendedKeyUsage)
    assert not eku.critical and list(eku.value) == [pki.DEVICE_OID]
    assert pki.DEVICE_OID.dotted_string == "2.25.47055698000568186308154992552044408258.1.3"
    san = exts.get_extension_for_class(x509.SubjectAlternativeName)
    assert not san.critical
    assert san.value.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:cardnet:uid:{text}"]
    aki = exts.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    exts.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert 0 < device_cert.serial_number < 2**159
    assert device_cert.not_valid_after_utc == NOW + timedelta(days=pki.DEFAULT_LEAF_DAYS)
    assert len(pki.cert_to_der(device_cert)) < 700


def test_issue_is_deterministic_under_a_seeded_rng() -> None:
    def make() -> tuple[bytes, bytes]:
        authority = CertificateAuthority.create("seeded", now=NOW, rng=seeded(5))
        leaf = authority.issue(Role.DEVICE, uid(1), new_key(6).public_key(), now=NOW)
        return pki.cert_to_der(authority.certificate), pki.cert_to_der(leaf)

    assert make() == make()


def test_serials_differ(ca: CertificateAuthority, device_key: profile.PrivateKey) -> None:
    serials = {ca.issue(Role.DEVICE, uid(1), device_key.public_key(), now=NOW).serial_number for _ in range(5)}
    assert len(serials) == 5


def test_leaf_never_outlives_its_ca() -> None:
    short = CertificateAuthority.create("short", now=NOW, valid_days=10, rng=seeded(3))
    leaf = short.issue(Role.DEVICE, uid(1), new_key(4).public_key(), now=NOW, valid_days=365)
    assert leaf.not_valid_after_utc == short.certificate.not_valid_after_utc


def test_time_may_be_unix_seconds(ca: CertificateAuthority, device_cert: x509.Certificate) -> None:
    assert pki.verify_chain([device_cert], [ca.certificate], now=LATER.timestamp()).uid == uid(42)
    assert pki.verify_chain([device_cert], [ca.certificate], now=int(LATER.timestamp())).uid == uid(42)
    with pytest.raises(ValueError, match="timezone-aware"):
        pki.verify_chain([device_cert], [ca.certificate], now=datetime(2026, 1, 2))


def test_issue_refuses_bad_arguments(ca: CertificateAuthority, device_key: profile.PrivateKey) -> None:
    pub = device_key.public_key()
    with pytest.raises(ValueError, match="create_subordinate"):
        ca.issue(Role.CA, uid(1), pub, now=NOW)
    with pytest.raises(ValueError, match="P-256"):
        ca.issue(Role.DEVICE, uid(1), ec.generate_private_key(ec.SECP384R1()).public_key(), now=NOW)
    with pytest.raises(TypeError, match="P-256"):
        ca.issue(Role.DEVICE, uid(1), ed25519.Ed25519PrivateKey.generate().public_key(), now=NOW)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="valid_days"):
        ca.issue(Role.DEVICE, uid(1), pub, now=NOW, valid_days=0)
    with pytest.raises(ValueError, match="name"):
        ca.issue(Role.DEVICE, uid(1), pub, now=NOW, name="")
    with pytest.raises(ValueError, match="CA name"):
        CertificateAuthority.create("x" * 65, now=NOW)


def test_expired_ca_cannot_issue(ca: CertificateAuthority, device_key: profile.PrivateKey) -> None:
    after = ca.certificate.not_valid_after_utc + timedelta(seconds=1)
    refused("expired", lambda: ca.issue(Role.DEVICE, uid(1), device_key.public_key(), now=after))
    before = NOW - timedelta(seconds=1)
    refused("not_yet_valid", lambda: ca.sign_blocklist(1, [], now=before))


# --- refusals -------------------------------------------------------------------------------------


def test_expired(ca: CertificateAuthority, device_cert: x509.Certificate) -> None:
    end = device_cert.not_valid_after_utc
    pki.verify_chain([device_cert], [ca.certificate], now=end)  # the last second is still valid (RFC 5280)
    refused("expired", lambda: pki.verify_chain([device_cert], [ca.certificate], now=end + timedelta(seconds=1)))


def test_not_yet_valid(ca: CertificateAuthority, device_cert: x509.Certificate) -> None:
    pki.verify_chain([device_cert], [ca.certificate], now=NOW)
    refused(
        "not_yet_valid",
        lambda: pki.verify_chain([device_cert], [ca.certificate], now=NOW - timedelta(seconds=1)),
    )


def test_expired_root_refuses_the_chain(device_key: profile.PrivateKey) -> None:
    root = CertificateAuthority.create("old root", now=NOW, valid_days=5, rng=seeded(8))
    leaf = root.issue(Role.DEVICE, uid(1), device_key.public_key(), now=NOW)
    refused("expired", lambda: pki.verify_chain([leaf], [root.certificate], now=NOW + timedelta(days=6)))


def test_unknown_ca_other_name(ca: CertificateAuthority, device_key: profile.PrivateKey) -> None:
    rogue = CertificateAuthority.create("rogue root", now=NOW, rng=seeded(2))
    cert = rogue.issue(Role.DEVICE, uid(42), device_key.public_key(), now=NOW)
    err = refused("unknown_ca", lambda: pki.verify_chain([cert], [ca.certificate], now=LATER))
    assert "rogue root" in str(err)


def test_unknown_ca_same_name_other_key(ca: CertificateAuthority, device_key: profile.PrivateKey) -> None:
    twin = CertificateAuthority.create(ca.name, now=NOW, rng=seeded(99))
    assert twin.certificate.subject == ca.certificate.subject
    cert = twin.issue(Role.DEVICE, uid(42), device_key.public_key(), now=NOW)
    refused("unknown_ca", lambda: pki.verify_chain([cert], [ca.certificate], now=LATER))
    # ...and trusting both roots accepts it from the right one
    assert pki.verify_chain([cert], [ca.certificate, twin.certificate], now=LATER).uid == uid(42)


def test_no_roots_is_unknown_ca(device_cert: x509.Certificate) -> None:
    refused("unknown_ca", lambda: pki.verify_chain([device_cert], [], now=LATER))


def test_forged_signature_claiming_the_real_ca_key(ca: CertificateAuthority, device_key: profile.PrivateKey) -> None:
    """A forger copies the CA's name and key identifier but signs with its own key."""
    forger = new_key(77)
    forged = build_cert(
        subject=cn(str(uid(42))),
        issuer=ca.certificate.subject,
        public_key=device_key.public_key(),
        signer=forger,
        extensions=leaf_extensions(Role.DEVICE, uid(42), ca_cert=ca.certificate),
    )
    refused("bad_signature", lambda: pki.verify_chain([forged], [ca.certificate], now=LATER))


def test_tampered_certificate_bytes(ca: CertificateAuthority, device_cert: x509.Certificate) -> None:
    der = pki.cert_to_der(device_cert)
    # Move the bound Uid from ...2a to ...2b, in the CN (first occurrence): still parses, no longer signed.
    text = str(uid(42)).encode()
    at = der.index(text) + 23
    assert der[at : at + 1] == b"a"
    tampered = pki.cert_from_der(der[:at] + b"b" + der[at + 1 :])
    refused("bad_signature", lambda: pki.verify_chain([tampered], [ca.certificate], now=LATER))
    # Flip a bit in the signature value (the certificate's last byte).
    flipped = pki.cert_from_der(der[:-1] + bytes([der[-1] ^ 0x01]))
    refused("bad_signature", lambda: pki.verify_chain([flipped], [ca.certificate], now=LATER))


def test_damaged_trust_store_root(ca: CertificateAuthority, device_cert: x509.Certificate) -> None:
    der = pki.cert_to_der(ca.certificate)
    damaged = pki.cert_from_der(der[:-1] + bytes([der[-1] ^ 0x01]))  # same name and key, broken self-signature
    refused("bad_signature", lambda: pki.verify_chain([device_cert], [damaged], now=LATER))


def test_trust_anchor_must_be_self_signed(ca: CertificateAuthority, device_key: profile.PrivateKey) -> None:
    sub = ca.create_subordinate("region", now=NOW)
    leaf = sub.issue(Role.DEVICE, uid(1), device_key.public_key(), now=NOW)
    refused("bad_certificate", lambda: pki.verify_chain([leaf], [sub.certificate], now=LATER))


def test_wrong_role(ca: CertificateAuthority, device_cert: x509.Certificate) -> None:
    pki.verify_chain([device_cert], [ca.certificate], now=LATER, role=Role.DEVICE)
    for expected in (Role.AGENT, Role.SERVICE, Role.CA):
        with pytest.raises(PkiError) as err:
            pki.verify_chain([device_cert], [ca.certificate], now=LATER, role=expected)
        assert err.value.reason == "wrong_usage"
        assert expected.value in str(err.value)


def test_ca_certificate_as_leaf(ca: CertificateAuthority) -> None:
    refused("wrong_usage", lambda: pki.verify_chain([ca.certificate], [ca.certificate], now=LATER))
    refused("wrong_usage", lambda: pki.verify_chain([ca.certificate], [ca.certificate], now=LATER, role=Role.CA))


def test_subordinate_ca_as_leaf(ca: CertificateAuthority) -> None:
    sub = ca.create_subordinate("region", now=NOW)
    refused("wrong_usage", lambda: pki.verify_chain([sub.certificate], [ca.certificate], now=LATER))


def test_uid_mismatch(ca: CertificateAuthority, device_cert: x509.Certificate) -> None:
    err = refused(
        "uid_mismatch", lambda: pki.verify_chain([device_cert], [ca.certificate], now=LATER, uid=uid(42, port=1))
    )
    assert str(uid(42)) in str(err)


def test_leaf_used_as_issuer_is_wrong_usage(
    ca: CertificateAuthority, device_key: profile.PrivateKey, device_cert: x509.Certificate
) -> None:
    """A device (CA=false) signs a certificate for an accomplice: the chain must not verify."""
    accomplice = new_key(31)
    ski = x509.SubjectKeyIdentifier.from_public_key(device_key.public_key())
    exts = leaf_extensions(Role.DEVICE, uid(9), ca_cert=ca.certificate)
    exts[-1] = (x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), False)
    rogue_leaf = build_cert(
        subject=cn(str(uid(9))),
        issuer=device_cert.subject,
        public_key=accomplice.public_key(),
        signer=device_key,
        extensions=exts,
    )
    refused("wrong_usage", lambda: pki.verify_chain([rogue_leaf, device_cert], [ca.certificate], now=LATER))


def test_intermediate_chain(ca: CertificateAuthority, device_key: profile.PrivateKey) -> None:
    sub = ca.create_subordinate("region east", now=NOW)
    assert sub.intermediates == (sub.certificate,)
    assert pki.role_of(sub.certificate) is Role.CA
    leaf = sub.issue(Role.SERVICE, uid(5), device_key.public_key(), now=NOW)
    chain = [leaf, *sub.intermediates]
    assert pki.verify_chain(chain, [ca.certificate], now=LATER, role=Role.SERVICE).uid == uid(5)
    # the root may be sent along
    assert pki.verify_chain([*chain, ca.certificate], [ca.certificate], now=LATER).uid == uid(5)
    # without the intermediate the issuer is unknown
    refused("unknown_ca", lambda: pki.verify_chain([leaf], [ca.certificate], now=LATER))
    # out of order
    refused("unknown_ca", lambda: pki.verify_chain([sub.certificate, leaf], [ca.certificate], now=LATER))


def test_path_length_is_enforced(ca: CertificateAuthority, device_key: profile.PrivateKey) -> None:
    sub = ca.create_subordinate("region", now=NOW)  # pathlen 0: may not certify CAs
    refused("wrong_usage", lambda: sub.create_subordinate("branch", now=NOW))
    # A hand-made CA under a pathlen=0 root: the chain is refused.
    root_key, inter_key = new_key(80), new_key(81)
    root_ski = x509.SubjectKeyIdentifier.from_public_key(root_key.public_key())
    signer_usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    root = build_cert(
        subject=cn("strict root"),
        issuer=cn("strict root"),
        public_key=root_key.public_key(),
        signer=root_key,
        extensions=[(x509.BasicConstraints(ca=True, path_length=0), True), (signer_usage, True), (root_ski, False)],
        days=3650,
    )
    inter = build_cert(
        subject=cn("too deep"),
        issuer=cn("strict root"),
        public_key=inter_key.public_key(),
        signer=root_key,
        extensions=[
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (signer_usage, True),
            (x509.SubjectKeyIdentifier.from_public_key(inter_key.public_key()), False),
            (x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski), False),
        ],
        days=3650,
    )
    leaf = CertificateAuthority(inter, inter_key).issue(Role.DEVICE, uid(5), device_key.public_key(), now=NOW)
    refused("wrong_usage", lambda: pki.verify_chain([leaf, inter], [root], now=LATER))
    direct = CertificateAuthority(root, root_key).issue(Role.DEVICE, uid(5), device_key.public_key(), now=NOW)
    assert pki.verify_chain([direct], [root], now=LATER).uid == uid(5)


def test_bad_certificate_shapes(ca: CertificateAuthority, device_key: profile.PrivateKey) -> None:
    refused("bad_certificate", lambda: pki.verify_chain([], [ca.certificate], now=LATER))
    leaf = ca.issue(Role.DEVICE, uid(1), device_key.public_key(), now=NOW)
    refused("bad_certificate", lambda: pki.verify_chain([leaf] * 5, [ca.certificate], now=LATER))

    def hand_made(exts: list[tuple[x509.ExtensionType, bool]], subject: str = str(uid(1))) -> x509.Certificate:
        return build_cert(
            subject=cn(subject),
            issuer=ca.certificate.subject,
            public_key=device_key.public_key(),
            signer=new_key(999),  # a stranger's key: these tests look at the shape only
            extensions=exts,
        )

    base = leaf_extensions(Role.DEVICE, uid(1), ca_cert=ca.certificate)
    no_san = [e for e in base if not isinstance(e[0], x509.SubjectAlternativeName)]
    no_eku = [e for e in base if not isinstance(e[0], x509.ExtendedKeyUsage)]
    refused("bad_certificate", lambda: pki.uid_of(hand_made(no_san)))
    refused("bad_certificate", lambda: pki.role_of(hand_made(no_eku)))
    refused("bad_certificate", lambda: pki.uid_of(hand_made(base, subject="someone else")))
    upper = [
        (
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(pki.UID_URI_PREFIX + str(uid(0xAB)).upper())]),
            False,
        )
        if isinstance(e[0], x509.SubjectAlternativeName)
        else e
        for e in base
    ]
    refused("bad_certificate", lambda: pki.uid_of(hand_made(upper, subject=str(uid(0xAB)))))
    garbage_uri = [
        (x509.SubjectAlternativeName([x509.UniformResourceIdentifier(pki.UID_URI_PREFIX + "zz")]), False)
        if isinstance(e[0], x509.SubjectAlternativeName)
        else e
        for e in base
    ]
    refused("bad_certificate", lambda: pki.uid_of(hand_made(garbage_uri)))
    two_roles = [
        (x509.ExtendedKeyUsage([pki.DEVICE_OID, pki.SERVICE_OID]), False)
        if isinstance(e[0], x509.ExtendedKeyUsage)
        else e
        for e in base
    ]
    refused("bad_certificate", lambda: pki.role_of(hand_made(two_roles)))
    unknown_critical = [*base, (x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00"), True)]
    refused("bad_certificate", lambda: pki.verify_chain([hand_made(unknown_critical)], [ca.certificate], now=LATER))


def test_leaf_without_digital_signature_is_wrong_usage(ca: CertificateAuthority) -> None:
    key = new_key(55)
    # a correctly signed leaf from this CA's key, but with keyAgreement only
    exts = leaf_extensions(Role.DEVICE, uid(3), ca_cert=ca.certificate)
    exts[1] = (
        x509.KeyUsage(
            digital_signature=False,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=True,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        ),
        True,
    )
    # CertificateAuthority never makes this shape and keeps its key private: build a root by hand.
    root_key = new_key(56)
    root_ski = x509.SubjectKeyIdentifier.from_public_key(root_key.public_key())
    root = build_cert(
        subject=cn("hand root"),
        issuer=cn("hand root"),
        public_key=root_key.public_key(),
        signer=root_key,
        extensions=[
            (x509.BasicConstraints(ca=True, path_length=None), True),
            (root_ski, False),
        ],
        days=3650,
    )
    exts[-1] = (x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski), False)
    leaf = build_cert(
        subject=cn(str(uid(3))), issuer=cn("hand root"), public_key=key.public_key(), signer=root_key, extensions=exts
    )
    refused("wrong_usage", lambda: pki.verify_chain([leaf], [root], now=LATER))
    # the same shape with digitalSignature verifies: the check above is about KeyUsage only
    exts[1] = leaf_extensions(Role.DEVICE, uid(3), ca_cert=ca.certificate)[1]
    good = build_cert(
        subject=cn(str(uid(3))), issuer=cn("hand root"), public_key=key.public_key(), signer=root_key, extensions=exts
    )
    assert pki.verify_chain([good], [root], now=LATER).uid == uid(3)


def test_trust_anchor_must_be_a_ca(ca: CertificateAuthority, device_cert: x509.Certificate) -> None:
    """A self-signed non-CA certificate placed in the trust store does not become an issuer."""
    key = new_key(60)
    fake_root = build_cert(
        subject=ca.certificate.subject,
        issuer=ca.certificate.subject,
        public_key=key.public_key(),
        signer=key,
        extensions=[(x509.BasicConstraints(ca=False, path_length=None), True)],
    )
    exts = leaf_extensions(Role.DEVICE, uid(4), ca_cert=ca.certificate)
    exts.pop()  # no AKI
    leaf = build_cert(
        subject=cn(str(uid(4))), issuer=ca.certificate.subject, public_key=new_key(61).public_key(), signer=key,
        extensions=exts,
    )  # fmt: skip
    refused("wrong_usage", lambda: pki.verify_chain([leaf], [fake_root], now=LATER))


def test_blocked_peer(ca: CertificateAuthority, device_key: profile.PrivateKey) -> None:
    app = uid(42, port=5)
    cert = ca.issue(Role.DEVICE, app, device_key.public_key(), now=NOW)
    blocklist = ca.sign_blocklist(2, [uid(42)], now=NOW)  # the card: every port of its domain
    refused("blocked", lambda: pki.verify_chain([cert], [ca.certificate], now=LATER, blocklist=blocklist))
    clean = ca.sign_blocklist(3, [uid(43)], now=NOW)
    assert pki.verify_chain([cert], [ca.certificate], now=LATER, blocklist=clean).uid == app


# --- encodings ------------------------------------------------------------------------------------


def test_der_and_pem_round_trips(ca: CertificateAuthority, device_cert: x509.Certificate) -> None:
    der = pki.cert_to_der(device_cert)
    assert pki.cert_from_der(der) == device_cert
    assert pki.cert_from_der(bytearray(der)) == device_cert
    pem = pki.chain_to_pem([device_cert, ca.certificate])
    assert pem.count(b"-----BEGIN CERTIFICATE-----") == 2
    assert pki.chain_from_pem(pem) == [device_cert, ca.certificate]
    assert pki.cert_from_pem(pki.chain_to_pem([device_cert])) == device_cert
    refused("bad_certificate", lambda: pki.cert_from_pem(pem))


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x30", b"\x30\x00", b"hello", b"\x30\x82\xff\xff" + b"\x00" * 10, "text", None, b"\x00" * 9000],
)
def test_cert_from_der_refuses_garbage(raw: object) -> None:
    refused("bad_certificate", lambda: pki.cert_from_der(raw))  # type: ignore[arg-type]


def test_cert_from_der_refuses_trailing_bytes(device_cert: x509.Certificate) -> None:
    refused("bad_certificate", lambda: pki.cert_from_der(pki.cert_to_der(device_cert) + b"\x00"))


def test_chain_from_pem_refuses_garbage() -> None:
    refused(
        "bad_certificate", lambda: pki.chain_from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----")
    )
    refused("bad_certificate", lambda: pki.chain_from_pem(b"no PEM block at all"))


# --- the blocklist --------------------------------------------------------------------------------


def test_blocklist_sign_verify_encode_decode(ca: CertificateAuthority) -> None:
    uids = [uid(3), uid(1, port=9), uid(2)]
    bl = ca.sign_blocklist(7, uids, now=NOW)
    assert bl.epoch == 7
    assert bl.uids == frozenset(uids)
    assert bl.issued_at == int(NOW.timestamp())
    assert len(bl.signature) == 64
    bl.verify(ca.certificate)
    bl.verify(ca.public_key)
    raw = bl.encode()
    assert Blocklist.decode(raw) == bl
    assert Blocklist.decode(raw).encode() == raw
    # {0: 7, 1: [3 x 16-byte uids], 2: issued_at, 3: 64-byte sig}
    assert len(raw) == 1 + 2 + (2 + 3 * 17) + (1 + 5) + (1 + 2 + 64)


def test_blocklist_is_deterministic(ca: CertificateAuthority) -> None:
    a = ca.sign_blocklist(1, [uid(2), uid(1)], now=NOW)
    b = ca.sign_blocklist(1, [uid(1), uid(2), uid(1)], now=NOW)
    assert a.encode() == b.encode()


def test_blocklist_empty(ca: CertificateAuthority) -> None:
    bl = ca.sign_blocklist(0, [], now=NOW)
    bl.verify(ca.certificate)
    assert Blocklist.decode(bl.encode()) == bl
    assert not bl.is_blocked(uid(1))


def test_blocklist_membership(ca: CertificateAuthority) -> None:
    bl = ca.sign_blocklist(1, [uid(1), uid(2, port=7)], now=NOW)
    assert bl.is_blocked(uid(1)) and bl.contains(uid(1)) and uid(1) in bl
    assert bl.is_blocked(uid(1, port=123))  # a blocked card blocks every port of its domain
    assert bl.is_blocked(uid(2, port=7))
    assert not bl.is_blocked(uid(2))  # a blocked application does not block its card
    assert not bl.is_blocked(uid(2, port=8))
    assert "not a uid" not in bl


def test_blocklist_epochs_compare(ca: CertificateAuthority) -> None:
    old = ca.sign_blocklist(4, [], now=NOW)
    new = ca.sign_blocklist(5, [uid(1)], now=NOW)
    assert new.supersedes(old) and not old.supersedes(new) and not old.supersedes(old)
    assert max([new, old], key=lambda b: b.epoch) is new


@pytest.mark.parametrize(
    "change",
    [
        {"epoch": 8},
        {"issued_at": 1},
        {"uids": frozenset({uid(3)})},
        {"uids": frozenset({uid(3), uid(2), uid(1, port=9), uid(4)})},
    ],
)
def test_blocklist_tampered_fields_refused(ca: CertificateAuthority, change: dict[str, object]) -> None:
    bl = ca.sign_blocklist(7, [uid(3), uid(1, port=9), uid(2)], now=NOW)
    forged = dataclasses.replace(bl, **change)  # type: ignore[arg-type]
    refused("bad_signature", lambda: forged.verify(ca.certificate))
    refused("bad_signature", lambda: Blocklist.decode(forged.encode()).verify(ca.certificate))


def test_blocklist_tampered_bytes_and_other_ca(ca: CertificateAuthority) -> None:
    bl = ca.sign_blocklist(7, [uid(3)], now=NOW)
    raw = bytearray(bl.encode())
    raw[-1] ^= 0x01
    refused("bad_signature", lambda: Blocklist.decode(bytes(raw)).verify(ca.certificate))
    twin = CertificateAuthority.create(ca.name, now=NOW, rng=seeded(99))
    refused("bad_signature", lambda: twin.sign_blocklist(7, [uid(3)], now=NOW).verify(ca.certificate))
    refused("bad_signature", lambda: bl.verify(twin.certificate))


def test_blocklist_high_s_twin_refused(ca: CertificateAuthority) -> None:
    """ECDSA's (r, n - s) also verifies; the blocklist accepts only the low-s form, so its encoding is unique."""
    bl = ca.sign_blocklist(7, [uid(3)], now=NOW)
    order = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    s = int.from_bytes(bl.signature[32:], "big")
    assert s <= order // 2
    twin_sig = bl.signature[:32] + (order - s).to_bytes(32, "big")
    with pytest.raises(CryptoError):  # the profile itself refuses high-s signatures
        profile.verify(ca.public_key, twin_sig, bl.signed_bytes())
    refused("bad_signature", lambda: dataclasses.replace(bl, signature=twin_sig).verify(ca.certificate))


def test_blocklist_verify_refuses_non_p256_key(ca: CertificateAuthority) -> None:
    bl = ca.sign_blocklist(1, [], now=NOW)
    refused("bad_certificate", lambda: bl.verify(ec.generate_private_key(ec.SECP384R1()).public_key()))


def _raw_blocklist(uids: list[bytes], *, extra: dict[int, object] | None = None) -> bytes:
    return cbor.dumps({0: 1, 1: uids, 2: 0, 3: b"\x00" * 64, **(extra or {})})


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "truncated"),
        (b"\xff", "bad_cbor"),
        (b"\xa0", "missing_key"),
        (_raw_blocklist([bytes(uid(2)), bytes(uid(1))]), "not_deterministic"),  # unsorted
        (_raw_blocklist([bytes(uid(1)), bytes(uid(1))]), "not_deterministic"),  # duplicate
        (_raw_blocklist([b"\x00" * 15]), "wrong_type"),
        (_raw_blocklist([], extra={4: 0}), "unknown_key"),
        (_raw_blocklist([], extra={3: b"\x00" * 63}), "undersize"),
        (_raw_blocklist([]) + b"\x00", "trailing_bytes"),
        (_raw_blocklist([], extra={0: -1}), "wrong_type"),
        (b"\x00" * (pki.MAX_BLOCKLIST_BYTES + 1), "oversize"),
    ],
)
def test_blocklist_decode_is_strict(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        Blocklist.decode(raw)
    assert err.value.reason == reason, str(err.value)


def test_blocklist_decode_accepts_canonical_form() -> None:
    bl = Blocklist.decode(_raw_blocklist([bytes(uid(1)), bytes(uid(2))]))
    assert bl.uids == {uid(1), uid(2)}


def test_blocklist_constructor_validates() -> None:
    with pytest.raises(DecodeError):
        Blocklist(epoch=-1, uids=frozenset(), issued_at=0, signature=bytes(64))
    with pytest.raises(DecodeError):
        Blocklist(epoch=0, uids=frozenset(), issued_at=0, signature=bytes(63))
    with pytest.raises(DecodeError):
        Blocklist(epoch=0, uids={uid(1)}, issued_at=0, signature=bytes(64))  # type: ignore[arg-type]


# --- CA persistence and key hiding ----------------------------------------------------------------


def test_ca_save_load_round_trip(ca: CertificateAuthority, tmp_path: Path, device_key: profile.PrivateKey) -> None:
    path = tmp_path / "root.ca.pem"
    ca.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_bytes()
    assert b"BEGIN CERTIFICATE" in text and b"BEGIN PRIVATE KEY" in text
    loaded = CertificateAuthority.load(path)
    assert loaded.certificate == ca.certificate
    assert loaded.name == ca.name
    cert = loaded.issue(Role.DEVICE, uid(8), device_key.public_key(), now=NOW)
    assert pki.verify_chain([cert], [ca.certificate], now=LATER).uid == uid(8)
    loaded.sign_blocklist(1, [uid(8)], now=NOW).verify(ca.certificate)
    with pytest.raises(FileExistsError):
        ca.save(path)
    ca.save(path, overwrite=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["root.ca.pem"]  # no temporary left behind


def test_ca_save_load_with_password(ca: CertificateAuthority, tmp_path: Path) -> None:
    path = tmp_path / "root.ca.pem"
    ca.save(path, password=b"correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    assert CertificateAuthority.load(path, password=b"correct horse").certificate == ca.certificate
    refused("bad_key", lambda: CertificateAuthority.load(path, password=b"wrong"))
    refused("bad_key", lambda: CertificateAuthority.load(path))


def test_subordinate_save_load_keeps_its_chain(
    ca: CertificateAuthority, tmp_path: Path, device_key: profile.PrivateKey
) -> None:
    sub = ca.create_subordinate("region", now=NOW)
    sub.save(tmp_path / "sub.pem")
    loaded = CertificateAuthority.load(tmp_path / "sub.pem")
    assert loaded.intermediates == sub.intermediates
    leaf = loaded.issue(Role.DEVICE, uid(1), device_key.public_key(), now=NOW)
    assert pki.verify_chain([leaf, *loaded.intermediates], [ca.certificate], now=LATER).uid == uid(1)


def test_ca_load_refuses_open_permissions_and_garbage(ca: CertificateAuthority, tmp_path: Path) -> None:
    path = tmp_path / "ca.pem"
    ca.save(path)
    path.chmod(0o644)
    refused("bad_key", lambda: CertificateAuthority.load(path))
    junk = tmp_path / "junk.pem"
    junk.write_bytes(b"junk")
    junk.chmod(0o600)
    refused("bad_certificate", lambda: CertificateAuthority.load(junk))
    # a certificate with somebody else's key
    other = CertificateAuthority.create("other", now=NOW, rng=seeded(4))
    other_path = tmp_path / "other.pem"
    other.save(other_path)
    mixed = tmp_path / "mixed.pem"
    mixed.write_bytes(
        pki.chain_to_pem([ca.certificate]) + other_path.read_bytes().split(b"-----END CERTIFICATE-----\n")[1]
    )
    mixed.chmod(0o600)
    refused("bad_key", lambda: CertificateAuthority.load(mixed))


def test_ca_hides_its_private_key(ca: CertificateAuthority) -> None:
    for name in dir(ca):
        if name.startswith("_"):
            continue
        value = getattr(ca, name)
        assert not isinstance(value, ec.EllipticCurvePrivateKey), name
    assert "PRIVATE" not in repr(ca)
    with pytest.raises(TypeError):
        pickle.dumps(ca)
    with pytest.raises(TypeError):
        copy.copy(ca)


# --- interop: the real openssl --------------------------------------------------------------------

needs_openssl = pytest.mark.skipif(not Path(OPENSSL).exists() and not shutil.which("openssl"), reason="no openssl")


def openssl_verify(
    tmp_path: Path, root: x509.Certificate, leaf: x509.Certificate, *untrusted: x509.Certificate
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "root.pem").write_bytes(pki.chain_to_pem([root]))
    (tmp_path / "leaf.pem").write_bytes(pki.chain_to_pem([leaf]))
    args = [OPENSSL, "verify", "-attime", str(int(LATER.timestamp())), "-CAfile", str(tmp_path / "root.pem")]
    if untrusted:
        (tmp_path / "untrusted.pem").write_bytes(pki.chain_to_pem(list(untrusted)))
        args += ["-untrusted", str(tmp_path / "untrusted.pem")]
    return subprocess.run([*args, str(tmp_path / "leaf.pem")], capture_output=True, text=True, timeout=30, check=False)


@needs_openssl
@pytest.mark.parametrize("role", LEAF_ROLES)
def test_openssl_verify_accepts_the_chain(ca: CertificateAuthority, tmp_path: Path, role: Role) -> None:
    leaf = ca.issue(role, uid(42), new_key(70).public_key(), now=NOW)
    result = openssl_verify(tmp_path, ca.certificate, leaf)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


@needs_openssl
def test_openssl_verify_strict_and_with_intermediate(ca: CertificateAuthority, tmp_path: Path) -> None:
    sub = ca.create_subordinate("region", now=NOW)
    leaf = sub.issue(Role.DEVICE, uid(42), new_key(71).public_key(), now=NOW)
    result = openssl_verify(tmp_path, ca.certificate, leaf, *sub.intermediates)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout
    strict = subprocess.run(
        [OPENSSL, "verify", "-x509_strict", "-attime", str(int(LATER.timestamp())), "-CAfile",
         str(tmp_path / "root.pem"), "-untrusted", str(tmp_path / "untrusted.pem"), str(tmp_path / "leaf.pem")],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert strict.returncode == 0, strict.stdout + strict.stderr


@needs_openssl
def test_openssl_verify_rejects_a_leaf_from_another_ca(ca: CertificateAuthority, tmp_path: Path) -> None:
    twin = CertificateAuthority.create(ca.name, now=NOW, rng=seeded(99))
    leaf = twin.issue(Role.DEVICE, uid(42), new_key(72).public_key(), now=NOW)
    result = openssl_verify(tmp_path, ca.certificate, leaf)
    assert result.returncode != 0
    assert "OK" not in result.stdout


@needs_openssl
def test_openssl_reads_the_saved_ca_file(ca: CertificateAuthority, tmp_path: Path) -> None:
    ca.save(tmp_path / "ca.pem")
    key = subprocess.run(
        [OPENSSL, "pkey", "-in", str(tmp_path / "ca.pem"), "-pubout"], capture_output=True, timeout=30, check=False
    )
    assert key.returncode == 0, key.stderr
    expected = ca.public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key.stdout == expected


def test_a_certificate_the_parser_warns_about_is_refused_without_a_word_on_stderr() -> None:
    """A negative serial makes cryptography warn at the parse itself (``CryptographyDeprecationWarning``): the
    certificate is refused and the warning is never shown (found by the simulator's malicious hosts, whose tampered
    certificates printed it into ``cardnet sim``'s output)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "negative serial")])
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(0x7F).not_valid_before(NOW).not_valid_after(LATER).sign(key, hashes.SHA256())
    )  # fmt: skip
    der = bytearray(cert.public_bytes(serialization.Encoding.DER))
    at = der.index(bytes([0xA0, 3, 2, 1, 2, 2, 1, 0x7F]))  # version v3, then the serial INTEGER 0x7f
    der[at + 7] = 0xFF  # the serial is now -1
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(der)) + b"-----END CERTIFICATE-----\n"
    for parse, data in ((pki.cert_from_der, bytes(der)), (pki.chain_from_pem, pem)):
        with warnings.catch_warnings(record=True) as shown:
            warnings.simplefilter("always")
            with pytest.raises(PkiError) as refused:
                parse(data)  # type: ignore[operator]
        assert refused.value.reason == "bad_certificate" and "serial" in str(refused.value)
        assert [str(w.message) for w in shown] == []
