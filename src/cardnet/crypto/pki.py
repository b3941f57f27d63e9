"""cardnet's PKI: the CA, role certificates that bind a ``Uid``, chains, the blocklist.

Theory of operation (TRN section 3.1, TENeT section 4.2):

* One authority holds the root key (:class:`CertificateAuthority`). It certifies
  every other key: ticketing **agents** (who sign token objects), **devices**
  (cards, wallets, gates) and **service** devices (authority, TTP, broker,
  vendor). A certificate is an ordinary X.509 v3 certificate (ECDSA P-256 /
  SHA-256) that ``openssl verify`` accepts; cardnet adds two things to it:
  the device ``Uid`` (SubjectAlternativeName URI ``urn:cardnet:uid:<uid>`` and
  the subject CN) and the role (an ExtendedKeyUsage OID under cardnet's private
  arc, :data:`CARDNET_ARC`). docs/crypto.md describes the profile field by field.
* :func:`verify_chain` is the one place a peer's certificate is judged. It
  checks, in this order: structure, every signature up to a trusted root,
  CA flags and path lengths of issuers, validity periods at the given ``now``,
  the leaf's role and key usage, the expected role and ``Uid``, and optionally a
  blocklist. Any failure raises :class:`~cardnet.crypto.errors.PkiError` with a
  stable ``reason``; success returns a :class:`VerifiedPeer`.
* The authority revokes by publishing a signed :class:`Blocklist`: a numbered
  *epoch* and the set of blocked Uids. A card remembers the highest epoch it has
  seen (design section 3); this module only makes epochs comparable and
  blocklists verifiable.

Nothing here reads a clock or draws randomness of its own: ``now`` and ``rng``
are arguments. ``now`` is a timezone-aware :class:`datetime` or Unix seconds.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import itertools
import os
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final, NoReturn, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from cardnet.crypto import profile
from cardnet.crypto.errors import CryptoError, PkiError
from cardnet.wire import cbor
from cardnet.wire.errors import DecodeError
from cardnet.wire.ids import UID_BYTES, Uid

__all__ = [
    "AGENT_OID",
    "CARDNET_ARC",
    "DEVICE_OID",
    "DEFAULT_LEAF_DAYS",
    "MAX_BLOCKLIST_BYTES",
    "MAX_BLOCKLIST_UIDS",
    "MAX_CERT_BYTES",
    "MAX_CHAIN_CERTS",
    "ROLE_ARC",
    "SERVICE_OID",
    "HOST_OID",
    "UID_URI_PREFIX",
    "Blocklist",
    "CertificateAuthority",
    "Instant",
    "Role",
    "VerifiedPeer",
    "cert_from_der",
    "cert_from_pem",
    "cert_to_der",
    "chain_from_pem",
    "chain_to_pem",
    "role_of",
    "uid_of",
    "verify_chain",
]

# --- identifiers and limits ---------------------------------------------------

#: cardnet's private OID arc: ``2.25.<UUID as integer>`` (ITU-T X.667), UUID
#: 23669908-541c-459e-b31e-d9d684002dc2. Needs no registration.
CARDNET_ARC: Final = "2.25.47055698000568186308154992552044408258"
#: Roles live under ``<arc>.1``; ``.1.1`` is reserved for the CA, which is
#: marked by BasicConstraints instead of an EKU.
ROLE_ARC: Final = CARDNET_ARC + ".1"
AGENT_OID: Final = x509.ObjectIdentifier(ROLE_ARC + ".2")
DEVICE_OID: Final = x509.ObjectIdentifier(ROLE_ARC + ".3")
SERVICE_OID: Final = x509.ObjectIdentifier(ROLE_ARC + ".4")
HOST_OID: Final = x509.ObjectIdentifier(ROLE_ARC + ".5")

#: SubjectAlternativeName URI prefix; the URI is this plus ``str(uid)``.
UID_URI_PREFIX: Final = "urn:cardnet:uid:"

#: Longest chain a peer may present (leaf, intermediates, optionally the root).
MAX_CHAIN_CERTS: Final = 4
#: Largest DER certificate accepted (cardnet's are about 600 bytes).
MAX_CERT_BYTES: Final = 8 * 1024
#: Largest CA file read (its key and chain as PEM); a larger file is no CA file.
MAX_CA_FILE_BYTES: Final = (MAX_CHAIN_CERTS + 1) * 3 * MAX_CERT_BYTES
#: Most Uids one blocklist may hold (about 1.1 MiB encoded).
MAX_BLOCKLIST_UIDS: Final = 65_536
#: Upper bound on any validity period, in days.
MAX_VALID_DAYS: Final = 100 * 366
#: Default lifetime of a leaf certificate, in days (never beyond the CA's own).
DEFAULT_LEAF_DAYS: Final = 730
#: Default lifetime of a subordinate CA, in days.
DEFAULT_SUBORDINATE_DAYS: Final = 1825

_MAX_NAME_CHARS = 64  # RFC 5280 ub-common-name / ub-organization-name
_SERIAL_BYTES = 20
_UNDERSTOOD_EXTENSIONS = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
    }
)
# Low-level failures a certificate object may raise when one of its lazily
# parsed parts is read; each becomes PkiError("bad_certificate") at one boundary.
# Found by tests/fuzz/test_fuzz_pki.py: cryptography 48 raises KeyError for a
# name attribute with an unknown ASN.1 string tag, and *warns* about quirks it
# still accepts (negative serials, country names of the wrong length, ...).
# _check_structure records those warnings and refuses the certificate, so the
# outcome does not depend on the process's warning filters.
_PARSE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,
    TypeError,
    LookupError,
    Warning,
    UnsupportedAlgorithm,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    x509.InvalidVersion,
)

Instant = datetime | int | float
"""A point in time: a timezone-aware datetime, or Unix seconds."""


class Role(enum.Enum):
    """What a certified key may do (TRN section 3.1 entities)."""

    CA = "ca"  #: the certification authority (root or subordinate): certifies keys, signs blocklists
    AGENT = "agent"  #: a ticketing agent: creates and signs token objects
    DEVICE = "device"  #: a token device: card, wallet, gate
    SERVICE = "service"  #: a service device: authority, TTP, broker, vendor
    HOST = "host"  #: a host process: its TLS identity towards other hosts (Uid = card domain | 0xffffffff)


_ROLE_OIDS: Final = {Role.AGENT: AGENT_OID, Role.DEVICE: DEVICE_OID, Role.SERVICE: SERVICE_OID, Role.HOST: HOST_OID}
_OID_ROLES: Final = {oid: role for role, oid in _ROLE_OIDS.items()}

_ExtT = TypeVar("_ExtT", bound=x509.ExtensionType)


# --- small helpers ------------------------------------------------------------


def _utc(now: Instant) -> datetime:
    if isinstance(now, datetime):
        if now.tzinfo is None or now.utcoffset() is None:
            raise ValueError("now must be timezone-aware (e.g. datetime.now(UTC)); a naive datetime is ambiguous")
        return now.astimezone(UTC)
    if isinstance(now, bool) or not isinstance(now, (int, float)):
        raise TypeError(f"now must be a datetime or Unix seconds, got {type(now).__name__}")
    return datetime.fromtimestamp(now, UTC)


def _describe(cert: x509.Certificate) -> str:
    """A short human label for a certificate in error messages."""
    try:
        return f"'{cert.subject.rfc4514_string()}' (serial {cert.serial_number:x})"
    except _PARSE_ERRORS:
        return "an unreadable certificate"


def _bad(cert: x509.Certificate, what: str) -> NoReturn:
    raise PkiError(
        "bad_certificate",
        f"certificate {_describe(cert)} {what}: it was not issued by a cardnet CA or is damaged; "
        "re-issue it with CertificateAuthority.issue",
    )


def _ext(cert: x509.Certificate, cls: type[_ExtT]) -> _ExtT | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None
    except _PARSE_ERRORS as exc:
        _bad(cert, f"has malformed extensions ({exc})")


def _refuse_warned(caught: list[warnings.WarningMessage]) -> None:
    """A certificate the parser warned about (recorded, never shown: a peer's bytes must not write to stderr) is
    refused."""
    if caught:
        raise PkiError(
            "bad_certificate",
            f"a certificate is malformed ({caught[0].message}): send it exactly as the CA issued it",
        )


def _check_structure(cert: x509.Certificate) -> None:
    """Every part cardnet reads parses cleanly, and no critical extension is unknown (RFC 5280 section 4.2)."""
    # catch_warnings swaps process-global state (not thread-safe before Python 3.14); at
    # worst another thread's warning is recorded here or lost, never a check skipped.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            version = cert.version
            serial = cert.serial_number
            extensions = list(cert.extensions)
            _ = (cert.subject, cert.issuer, cert.not_valid_before_utc, cert.not_valid_after_utc)
            cert.public_key()
        except _PARSE_ERRORS as exc:
            raise PkiError(
                "bad_certificate", f"a certificate cannot be parsed ({exc}): send it exactly as the CA issued it"
            ) from None
    _refuse_warned(caught)
    if version is not x509.Version.v3:
        _bad(cert, "is not an X.509 v3 certificate")
    if serial <= 0:
        _bad(cert, "has a serial number that is not positive (RFC 5280 section 4.1.2.2)")
    for ext in extensions:
        if ext.critical and ext.oid not in _UNDERSTOOD_EXTENSIONS:
            _bad(cert, f"carries the critical extension {ext.oid.dotted_string}, which cardnet does not understand")


def _is_ca(cert: x509.Certificate) -> bool:
    bc = _ext(cert, x509.BasicConstraints)
    return bc is not None and bc.ca


def _key_id(cert: x509.Certificate) -> bytes | None:
    ski = _ext(cert, x509.SubjectKeyIdentifier)
    return None if ski is None else ski.digest


def _serial(rng: profile.Rng) -> int:
    """A positive serial of at most 159 bits from ``rng`` (RFC 5280 allows 20 octets)."""
    return (int.from_bytes(rng(_SERIAL_BYTES), "big") >> 1) or 1


def _check_days(valid_days: int) -> None:
    if isinstance(valid_days, bool) or not isinstance(valid_days, int) or not 1 <= valid_days <= MAX_VALID_DAYS:
        raise ValueError(f"valid_days must be an int in 1..{MAX_VALID_DAYS}, got {valid_days!r}")


def _check_label(label: str, what: str) -> None:
    if not isinstance(label, str) or not 1 <= len(label) <= _MAX_NAME_CHARS or not label.isprintable():
        raise ValueError(f"{what} must be 1..{_MAX_NAME_CHARS} printable characters, got {label!r}")


def _check_p256(key: object) -> profile.PublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise TypeError(f"cardnet certifies P-256 public keys only, got {type(key).__name__}")
    if not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"cardnet certifies P-256 public keys only, got curve {key.curve.name}")
    return key


# --- reading certificates -----------------------------------------------------


def cert_to_der(cert: x509.Certificate) -> bytes:
    """The certificate's DER bytes (what goes on the wire)."""
    return cert.public_bytes(serialization.Encoding.DER)


def cert_from_der(raw: bytes | bytearray | memoryview) -> x509.Certificate:
    """Parse one DER certificate strictly; only :class:`PkiError` (``bad_certificate``) escapes.

    Every part cardnet later reads (subject, issuer, validity, extensions,
    public key) is parsed here, so garbage is refused at the boundary.
    """
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise PkiError("bad_certificate", f"a certificate is DER bytes, got {type(raw).__name__}")
    if len(raw) > MAX_CERT_BYTES:
        raise PkiError("bad_certificate", f"a certificate of {len(raw)} bytes is over the {MAX_CERT_BYTES}-byte limit")
    return _parsed(bytes(raw))


@functools.lru_cache(maxsize=1024)
def _parsed(raw: bytes) -> x509.Certificate:
    """The strict parse of :func:`cert_from_der`, remembered by DER bytes (a certificate object is immutable, and
    cards parse the same few certificates, their roots above all, on every message). Failures are not kept."""
    with warnings.catch_warnings(record=True) as caught:  # (its quirks warn at the parse too: refused below)
        warnings.simplefilter("always")
        try:
            cert = x509.load_der_x509_certificate(raw)
        except _PARSE_ERRORS as exc:
            raise PkiError(
                "bad_certificate", f"not a DER X.509 certificate ({exc}): send the certificate exactly as issued"
            ) from None
    _refuse_warned(caught)
    _check_structure(cert)
    return cert


def cert_from_pem(data: bytes) -> x509.Certificate:
    """Parse exactly one PEM certificate; only :class:`PkiError` escapes."""
    chain = chain_from_pem(data)
    if len(chain) != 1:
        raise PkiError("bad_certificate", f"expected one PEM certificate, found {len(chain)}")
    return chain[0]


def chain_to_pem(chain: Sequence[x509.Certificate]) -> bytes:
    """Concatenated PEM blocks, leaf first (the order ``openssl`` and TLS use)."""
    return b"".join(cert.public_bytes(serialization.Encoding.PEM) for cert in chain)


def chain_from_pem(data: bytes) -> list[x509.Certificate]:
    """Every ``CERTIFICATE`` block in ``data``, in order; only :class:`PkiError` escapes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            certs = x509.load_pem_x509_certificates(bytes(data))
        except _PARSE_ERRORS as exc:
            raise PkiError("bad_certificate", f"no readable PEM certificate ({exc})") from None
    _refuse_warned(caught)
    for cert in certs:
        _check_structure(cert)
    return certs


def uid_of(cert: x509.Certificate) -> Uid:
    """The ``Uid`` a cardnet leaf certificate binds.

    It is read from the single SubjectAlternativeName URI
    ``urn:cardnet:uid:<24 hex>:<8 hex>`` (lower-case, exactly ``str(uid)``), and
    the subject CN must be the same text. Raises ``PkiError("bad_certificate")``
    when either is missing, malformed or they disagree.
    """
    san = _ext(cert, x509.SubjectAlternativeName)
    if san is None:
        _bad(cert, "has no SubjectAlternativeName, so it binds no cardnet Uid")
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier) if u.startswith(UID_URI_PREFIX)]
    if len(uris) != 1:
        _bad(cert, f"must name exactly one {UID_URI_PREFIX}… URI, found {len(uris)}")
    text = uris[0][len(UID_URI_PREFIX) :]
    try:
        uid = Uid.parse(text)
    except DecodeError:
        _bad(cert, f"names {uris[0]!r}, which is not a Uid")
    if str(uid) != text:
        _bad(cert, f"names {uris[0]!r}, which is not the canonical form {UID_URI_PREFIX}{uid}")
    try:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except _PARSE_ERRORS as exc:  # pragma: no cover - subject is parsed eagerly by the loaders
        _bad(cert, f"has an unreadable subject ({exc})")
    if len(cns) != 1 or cns[0].value != text:
        _bad(cert, f"has a subject CN that differs from its Uid {text}")
    return uid


def role_of(cert: x509.Certificate) -> Role:
    """The cardnet role of a certificate.

    A certificate with BasicConstraints ``CA=true`` is :attr:`Role.CA` (and must
    carry no leaf role); any other must carry exactly one cardnet role OID in its
    ExtendedKeyUsage. Raises ``PkiError("bad_certificate")`` otherwise.
    """
    eku = _ext(cert, x509.ExtendedKeyUsage)
    roles = {_OID_ROLES[oid] for oid in eku if oid in _OID_ROLES} if eku is not None else set()
    if _is_ca(cert):
        if roles:
            _bad(cert, "is a CA certificate but also carries a leaf role")
        return Role.CA
    if len(roles) != 1:
        _bad(cert, f"must carry exactly one cardnet role OID (under {ROLE_ARC}) in ExtendedKeyUsage")
    return roles.pop()


# --- verifying chains ---------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class VerifiedPeer:
    """What :func:`verify_chain` vouches for: this ``uid`` in this ``role`` holds ``public_key``."""

    uid: Uid
    role: Role
    public_key: profile.PublicKey
    certificate: x509.Certificate


def _check_signed_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    try:
        child.verify_directly_issued_by(parent)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        return False
    return True


def _refuse_signature(child: x509.Certificate, issuers: Sequence[x509.Certificate]) -> NoReturn:
    """``child`` names ``issuers`` by subject but none of their keys verifies it: say why."""
    aki = _ext(child, x509.AuthorityKeyIdentifier)
    claimed = None if aki is None else aki.key_identifier
    if claimed is not None and all(_key_id(issuer) != claimed for issuer in issuers):
        raise PkiError(
            "unknown_ca",
            f"certificate {_describe(child)} was issued by a key that is not trusted (another CA with the "
            f"name '{child.issuer.rfc4514_string()}'): get the device certified by the CA this network trusts",
        )
    raise PkiError(
        "bad_signature",
        f"the signature on certificate {_describe(child)} does not verify with its issuer's key: the certificate "
        "was altered after issue or forged; refuse this peer",
    )


def _find_anchor(top: x509.Certificate, roots: Sequence[x509.Certificate]) -> x509.Certificate:
    named = [root for root in roots if root.subject == top.issuer]
    if not named:
        raise PkiError(
            "unknown_ca",
            f"certificate {_describe(top)} was issued by '{top.issuer.rfc4514_string()}', which is not a trusted "
            "root: get it certified by the CA this network trusts, or add that CA's root if you do trust it",
        )
    for root in named:
        if _check_signed_by(top, root):
            # Like openssl without -partial_chain: an anchor is a self-signed root, and its
            # self-signature must hold, so a damaged or edited trust store is noticed.
            if root.issuer != root.subject:
                raise PkiError(
                    "bad_certificate",
                    f"trusted root {_describe(root)} is not self-signed: configure the CA's root certificate as "
                    "the trust anchor, not an intermediate",
                )
            if not _self_signature_ok(cert_to_der(root)):
                raise PkiError(
                    "bad_signature",
                    f"trusted root {_describe(root)} does not verify its own signature: the trust store is damaged; "
                    "reinstall the CA's root certificate",
                )
            return root
    _refuse_signature(top, named)


@functools.lru_cache(maxsize=64)
def _self_signature_ok(der: bytes) -> bool:
    """A self-signed root's own signature holds (cached: roots are few and checked on every chain)."""
    cert = x509.load_der_x509_certificate(der)
    return _check_signed_by(cert, cert)


def _check_issuer(cert: x509.Certificate, below: int, where: str) -> None:
    """``cert`` signs ``below`` intermediates and then the leaf: it must be a CA allowed that depth."""
    bc = _ext(cert, x509.BasicConstraints)
    if bc is None or not bc.ca:
        raise PkiError(
            "wrong_usage",
            f"{where} {_describe(cert)} issued another certificate but is not a CA (BasicConstraints CA=false): "
            "only CA certificates may issue; re-issue the chain from a CA",
        )
    ku = _ext(cert, x509.KeyUsage)
    if ku is not None and not ku.key_cert_sign:
        raise PkiError("wrong_usage", f"{where} {_describe(cert)} is a CA whose KeyUsage forbids signing certificates")
    if bc.path_length is not None and below > bc.path_length:
        raise PkiError(
            "wrong_usage",
            f"{where} {_describe(cert)} allows {bc.path_length} intermediate CAs below it, the chain has {below}",
        )


def _check_time(cert: x509.Certificate, at: datetime) -> None:
    if at < cert.not_valid_before_utc:
        raise PkiError(
            "not_yet_valid",
            f"certificate {_describe(cert)} is valid only from {cert.not_valid_before_utc.isoformat()}, "
            f"now is {at.isoformat()}: check the host clock, or wait",
        )
    if at > cert.not_valid_after_utc:
        raise PkiError(
            "expired",
            f"certificate {_describe(cert)} expired at {cert.not_valid_after_utc.isoformat()}, "
            f"now is {at.isoformat()}: have the CA renew it",
        )


def verify_chain(
    chain: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    *,
    now: Instant,
    role: Role | None = None,
    uid: Uid | None = None,
    blocklist: Blocklist | None = None,
) -> VerifiedPeer:
    """Verify a peer's chain (``chain[0]`` the leaf, then intermediates, the root optional) against ``roots``.

    ``role``/``uid`` are what the caller expects the peer to be (``None``: any).
    ``blocklist`` must already have been verified with :meth:`Blocklist.verify`;
    a leaf it blocks is refused with ``blocked``. Returns a :class:`VerifiedPeer`
    or raises :class:`PkiError` whose ``reason`` is ``bad_certificate``,
    ``unknown_ca``, ``bad_signature``, ``wrong_usage``, ``not_yet_valid``,
    ``expired``, ``uid_mismatch`` or ``blocked``.
    """
    at = _utc(now)
    if not chain:
        raise PkiError("bad_certificate", "the peer presented no certificate: it must send its certificate chain")
    if len(chain) > MAX_CHAIN_CERTS:
        raise PkiError(
            "bad_certificate", f"the peer presented {len(chain)} certificates, at most {MAX_CHAIN_CERTS} are accepted"
        )
    if not roots:
        raise PkiError("unknown_ca", "no trusted root is configured: load the CA's root certificate first")
    for cert in chain:
        _check_structure(cert)
    for root in roots:
        _check_structure(root)

    # 1. Signatures, from the leaf up to a trusted root. A root the peer sent along is dropped.
    path = list(chain)
    root_ders = {cert_to_der(root) for root in roots}
    if len(path) > 1 and cert_to_der(path[-1]) in root_ders:
        path.pop()
    for i in range(len(path) - 1):
        child, parent = path[i], path[i + 1]
        if child.issuer != parent.subject:
            raise PkiError(
                "unknown_ca",
                f"certificate #{i} {_describe(child)} was issued by '{child.issuer.rfc4514_string()}', but the next "
                "certificate in the chain is a different CA: send the chain leaf first, each issuer after its child",
            )
        if not _check_signed_by(child, parent):
            _refuse_signature(child, [parent])
    anchor = _find_anchor(path[-1], roots)

    # 2. Issuers are CAs, within their path lengths.
    for j in range(1, len(path)):
        _check_issuer(path[j], below=j - 1, where=f"intermediate #{j}")
    _check_issuer(anchor, below=len(path) - 1, where="trusted root")

    # 3. Every certificate on the path is valid now.
    for cert in [*path, anchor]:
        _check_time(cert, at)

    # 4. The leaf: role, key usage, Uid, key.
    leaf = path[0]
    leaf_role = role_of(leaf)
    if leaf_role is Role.CA:
        raise PkiError(
            "wrong_usage",
            f"certificate {_describe(leaf)} is a CA certificate and cannot identify a peer: "
            "present the device's own (leaf) certificate",
        )
    ku = _ext(leaf, x509.KeyUsage)
    if ku is None or not ku.digital_signature:
        raise PkiError("wrong_usage", f"certificate {_describe(leaf)} does not allow digital signatures")
    if role is not None and leaf_role is not role:
        raise PkiError(
            "wrong_usage",
            f"certificate {_describe(leaf)} is for a {leaf_role.value}, but a {role.value} was expected here: "
            "this peer may not play that part",
        )
    leaf_uid = uid_of(leaf)
    if uid is not None and leaf_uid != uid:
        raise PkiError(
            "uid_mismatch",
            f"certificate {_describe(leaf)} belongs to {leaf_uid}, but the peer claims to be {uid}: "
            "the host routed the message wrongly or the peer is impersonating another",
        )
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        _bad(leaf, "does not certify a P-256 key")
    if blocklist is not None and blocklist.is_blocked(leaf_uid):
        raise PkiError(
            "blocked",
            f"{leaf_uid} is on the authority's blocklist (epoch {blocklist.epoch}): refuse this peer",
        )
    return VerifiedPeer(uid=leaf_uid, role=leaf_role, public_key=key, certificate=leaf)


MAX_VERIFIED = 1024  # chain checks remembered (process-wide; cleared when full)
_verified: dict[tuple[bytes, tuple[bytes, ...], Role | None, Uid | None], tuple[VerifiedPeer, datetime, datetime]] = {}


def verified(
    cert_der: bytes,
    roots_der: Sequence[bytes],
    *,
    now: Instant,
    role: Role | None = None,
    uid: Uid | None = None,
    blocklist: Blocklist | None = None,
) -> VerifiedPeer:
    """:func:`verify_chain` of one DER leaf certificate against DER roots, remembering the outcome.

    A check made before (the same bytes, the same roots, the same expected role and Uid) is not made again
    while every certificate involved is within its validity period at ``now``: a signature is a property of
    the bytes, so only time and the blocklist (checked every time) can change the answer. Cards check the same
    few peers on every message of an exchange or a trace. Refusals are not remembered.
    """
    at = _utc(now)
    key = (bytes(cert_der), tuple(bytes(r) for r in roots_der), role, uid)
    hit = _verified.get(key)
    if hit is None or not hit[1] <= at <= hit[2]:
        leaf = cert_from_der(cert_der)
        roots = [cert_from_der(r) for r in roots_der]
        got = verify_chain([leaf], roots, now=at, role=role, uid=uid)
        every = [leaf, *roots]
        since = max(c.not_valid_before_utc for c in every)
        until = min(c.not_valid_after_utc for c in every)
        if len(_verified) >= MAX_VERIFIED:
            _verified.clear()
        hit = (got, since, until)
        _verified[key] = hit
    peer = hit[0]
    if blocklist is not None and blocklist.is_blocked(peer.uid):
        raise PkiError(
            "blocked", f"{peer.uid} is on the authority's blocklist (epoch {blocklist.epoch}): refuse this peer"
        )
    return peer


# --- the blocklist ------------------------------------------------------------

_BLOCKLIST_CONTEXT: Final = b"cardnet/blocklist/v1\x00"
_BODY_FIELDS: Final = [
    cbor.Field(0, "epoch", cbor.UInt()),
    cbor.Field(1, "uids", cbor.ListOf(cbor.UidType(), MAX_BLOCKLIST_UIDS)),
    cbor.Field(2, "issued_at", cbor.UInt()),
]
_BLOCKLIST_BODY: Final = cbor.Schema("blocklist.body", _BODY_FIELDS)
_BLOCKLIST: Final = cbor.Schema(
    "blocklist",
    [*_BODY_FIELDS, cbor.Field(3, "signature", cbor.Bytes(profile.SIGNATURE_BYTES, profile.SIGNATURE_BYTES))],
)
#: Largest encoded blocklist (each Uid is 17 bytes in CBOR, plus the small header).
MAX_BLOCKLIST_BYTES: Final = 128 + MAX_BLOCKLIST_UIDS * (UID_BYTES + 1)


@dataclass(frozen=True, kw_only=True, slots=True)
class Blocklist:
    """The authority's signed list of blocked Uids at one ``epoch``.

    A blocked card Uid (port 0) blocks every Uid of its domain. Epochs grow by
    one per publication; a card keeps the highest it has seen. ``issued_at`` is
    Unix seconds. Build one with :meth:`CertificateAuthority.sign_blocklist`.
    """

    epoch: int
    uids: frozenset[Uid]
    issued_at: int
    signature: bytes

    def __post_init__(self) -> None:
        for name in ("epoch", "issued_at"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**64:
                raise DecodeError("wrong_type", f"blocklist {name} must be an unsigned 64-bit int, got {value!r}")
        if not isinstance(self.uids, frozenset) or not all(isinstance(u, Uid) for u in self.uids):
            raise DecodeError("wrong_type", "blocklist uids must be a frozenset of Uid")
        if len(self.uids) > MAX_BLOCKLIST_UIDS:
            raise DecodeError("oversize", f"a blocklist holds at most {MAX_BLOCKLIST_UIDS} Uids")
        if not isinstance(self.signature, bytes) or len(self.signature) != profile.SIGNATURE_BYTES:
            raise DecodeError("wrong_type", f"a blocklist signature is {profile.SIGNATURE_BYTES} bytes")

    def _body(self) -> dict[str, object]:
        return {"epoch": self.epoch, "uids": sorted(self.uids, key=bytes), "issued_at": self.issued_at}

    @staticmethod
    def signed_bytes_for(epoch: int, uids: frozenset[Uid], issued_at: int) -> bytes:
        """The exact bytes the CA signs: a context string and the CBOR body."""
        body = {"epoch": epoch, "uids": sorted(uids, key=bytes), "issued_at": issued_at}
        return _BLOCKLIST_CONTEXT + _BLOCKLIST_BODY.encode(body)

    def signed_bytes(self) -> bytes:
        return self.signed_bytes_for(self.epoch, self.uids, self.issued_at)

    def encode(self) -> bytes:
        """Deterministic CBOR map ``{0: epoch, 1: [uid, …] (sorted), 2: issued_at, 3: signature}``."""
        return _BLOCKLIST.encode({**self._body(), "signature": self.signature})

    @classmethod
    def decode(cls, raw: bytes | bytearray | memoryview) -> Blocklist:
        """Strictly decode :meth:`encode`'s output; only :class:`DecodeError` escapes.

        Decoding does not check the signature: call :meth:`verify` next.
        """
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise DecodeError("wrong_type", f"a blocklist is bytes, got {type(raw).__name__}")
        if len(raw) > MAX_BLOCKLIST_BYTES:
            raise DecodeError("oversize", f"a blocklist is at most {MAX_BLOCKLIST_BYTES} bytes, got {len(raw)}")
        fields = _BLOCKLIST.decode(bytes(raw))
        uids: list[Uid] = fields["uids"]
        keys = [bytes(u) for u in uids]
        if any(a >= b for a, b in itertools.pairwise(keys)):
            raise DecodeError(
                "not_deterministic", "blocklist uids must be sorted ascending, without duplicates: re-encode it"
            )
        return cls(
            epoch=fields["epoch"], uids=frozenset(uids), issued_at=fields["issued_at"], signature=fields["signature"]
        )

    def verify(self, issuer: x509.Certificate | profile.PublicKey) -> None:
        """Return None if the CA (its certificate or public key) signed this blocklist, else raise ``PkiError``."""
        try:
            key = issuer.public_key() if isinstance(issuer, x509.Certificate) else issuer
        except _PARSE_ERRORS as exc:
            raise PkiError("bad_certificate", f"the CA certificate's key cannot be read ({exc})") from None
        if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
            raise PkiError("bad_certificate", "a blocklist is verified with the CA's P-256 key; this is another key")
        try:
            profile.verify(key, self.signature, self.signed_bytes())
        except CryptoError:
            raise PkiError(
                "bad_signature",
                f"the blocklist (epoch {self.epoch}) does not verify with this CA's key: it was altered or signed "
                "by another CA; fetch a fresh one from the authority",
            ) from None

    def is_blocked(self, uid: Uid) -> bool:
        """True if ``uid`` or its card (``domain|0``) is listed."""
        return uid in self.uids or uid.card_uid() in self.uids

    contains = is_blocked

    def __contains__(self, uid: object) -> bool:
        return isinstance(uid, Uid) and self.is_blocked(uid)

    def supersedes(self, other: Blocklist) -> bool:
        """True if this blocklist is newer (a higher epoch) than ``other``."""
        return self.epoch > other.epoch


# --- the certification authority ---------------------------------------------


def _tls_name(name: str) -> x509.GeneralName:
    """An IP address or a DNS name for a TLS certificate's SAN."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        if not name or len(name) > 253 or not all(part.isalnum() or "-" in part for part in name.split(".")):
            raise ValueError(f"{name!r} is neither an IP address nor a DNS name") from None
        return x509.DNSName(name)


def _key_usage(*, signer: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not signer,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not signer,
        key_cert_sign=signer,
        crl_sign=signer,
        encipher_only=False,
        decipher_only=False,
    )


class CertificateAuthority:
    """A CA: its certificate and (hidden) private key. Build with :meth:`create` or :meth:`load`.

    The private key is never returned by any attribute; :meth:`save` is the only
    way it leaves the object. A production CA key belongs in an HSM
    (docs/crypto.md).
    """

    __slots__ = ("__key", "_certificate", "_parents", "_rng")

    def __init__(
        self,
        certificate: x509.Certificate,
        key: profile.PrivateKey,
        *,
        parents: Sequence[x509.Certificate] = (),
        rng: profile.Rng = profile.system_rng,
    ) -> None:
        """Wrap a CA certificate and its key; ``parents``: its issuers' certificates, root excluded."""
        _check_structure(certificate)
        public = certificate.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(public.curve, ec.SECP256R1):
            raise PkiError("bad_key", f"CA certificate {_describe(certificate)} does not hold a P-256 key")
        if not isinstance(key, ec.EllipticCurvePrivateKey) or (
            profile.public_bytes(key.public_key()) != profile.public_bytes(public)
        ):
            raise PkiError("bad_key", "the private key does not belong to the CA certificate")
        if not _is_ca(certificate):
            raise PkiError("wrong_usage", f"certificate {_describe(certificate)} is not a CA (BasicConstraints)")
        self.__key = key
        self._certificate = certificate
        self._parents = tuple(parents)
        self._rng = rng

    # -- creation --

    @classmethod
    def create(
        cls,
        name: str,
        *,
        now: Instant,
        valid_days: int = 3650,
        rng: profile.Rng = profile.system_rng,
        path_length: int | None = None,
    ) -> CertificateAuthority:
        """A new self-signed root CA named ``CN=<name>``, valid ``valid_days`` from ``now``."""
        _check_label(name, "a CA name")
        _check_days(valid_days)
        key = profile.generate_private_key(rng)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        start = _utc(now).replace(microsecond=0)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(_serial(rng))
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=valid_days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(_key_usage(signer=True), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256(), ecdsa_deterministic=True)
        )
        return cls(cert, key, rng=rng)

    def create_subordinate(
        self,
        name: str,
        *,
        now: Instant,
        valid_days: int = DEFAULT_SUBORDINATE_DAYS,
        rng: profile.Rng | None = None,
    ) -> CertificateAuthority:
        """A subordinate CA (``pathlen=0``) certified by this one, e.g. one per region or issuing site."""
        _check_label(name, "a CA name")
        _check_days(valid_days)
        bc = _ext(self._certificate, x509.BasicConstraints)
        if bc is not None and bc.path_length == 0:
            raise PkiError(
                "wrong_usage",
                f"CA {self.name!r} has pathlen=0 and may not certify other CAs: create subordinates from the root",
            )
        rng = rng or self._rng
        start = self._issuable_from(now)
        key = profile.generate_private_key(rng)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            self._builder(start, valid_days, rng)
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .public_key(key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(signer=True), critical=True)
            .add_extension(ski, critical=False)
            .sign(self.__key, hashes.SHA256(), ecdsa_deterministic=True)
        )
        return CertificateAuthority(cert, key, parents=self.intermediates, rng=rng)

    # -- what it shows --

    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    @property
    def public_key(self) -> profile.PublicKey:
        return _check_p256(self._certificate.public_key())

    @property
    def name(self) -> str:
        cns = self._certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(cns[0].value) if cns else self._certificate.subject.rfc4514_string()

    @property
    def intermediates(self) -> tuple[x509.Certificate, ...]:
        """What a holder presents after its leaf: this CA's certificate unless it is a root, then its parents'."""
        if self._certificate.issuer == self._certificate.subject:
            return self._parents
        return (self._certificate, *self._parents)

    def __repr__(self) -> str:
        return f"CertificateAuthority(name={self.name!r}, serial={self._certificate.serial_number:x})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a CertificateAuthority holds a private key and cannot be pickled or copied: use save()")

    # -- issuing --

    def _issuable_from(self, now: Instant) -> datetime:
        start = _utc(now).replace(microsecond=0)
        try:
            _check_time(self._certificate, start)
        except PkiError as exc:
            raise PkiError(exc.reason, f"this CA cannot sign now: {exc}") from None
        return start

    def _builder(self, start: datetime, valid_days: int, rng: profile.Rng) -> x509.CertificateBuilder:
        ca_ski = _ext(self._certificate, x509.SubjectKeyIdentifier)
        end = min(start + timedelta(days=valid_days), self._certificate.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            .issuer_name(self._certificate.subject)
            .serial_number(_serial(rng))
            .not_valid_before(start)
            .not_valid_after(end)
        )
        if ca_ski is not None:
            aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
            builder = builder.add_extension(aki, critical=False)
        return builder

    def issue(
        self,
        role: Role,
        uid: Uid,
        public_key: profile.PublicKey,
        *,
        now: Instant,
        valid_days: int = DEFAULT_LEAF_DAYS,
        name: str | None = None,
        rng: profile.Rng | None = None,
        tls_names: Sequence[str] = (),
    ) -> x509.Certificate:
        """Certify that ``uid`` in ``role`` holds ``public_key``, valid from ``now`` for ``valid_days``
        (cut at this CA's own expiry). ``name`` is an optional label placed in the subject's O attribute;
        keep personal data out of it (TRN section 4.2: devices are not tied to persons).

        ``tls_names`` (IP addresses or DNS names) make the certificate usable for mutual TLS
        between hosts: they go into the SAN and the EKU gains serverAuth and clientAuth.
        """
        if not isinstance(role, Role) or role is Role.CA:
            raise ValueError(
                f"issue() makes AGENT, DEVICE or SERVICE certificates, not {role!r}: use create_subordinate()"
            )
        if not isinstance(uid, Uid):
            raise TypeError(f"uid must be a Uid, got {type(uid).__name__}")
        key = _check_p256(public_key)
        _check_days(valid_days)
        if name is not None:
            _check_label(name, "a certificate name")
        rng = rng or self._rng
        start = self._issuable_from(now)
        text = str(uid)
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, name)] if name is not None else []
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, text))
        sans: list[x509.GeneralName] = [_tls_name(n) for n in tls_names]
        tls_usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if tls_names else []
        return (
            self._builder(start, valid_days, rng)
            .subject_name(x509.Name(attrs))
            .public_key(key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signer=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([_ROLE_OIDS[role], *tls_usages]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(UID_URI_PREFIX + text), *sans]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key), critical=False)
            .sign(self.__key, hashes.SHA256(), ecdsa_deterministic=True)
        )

    def sign_blocklist(self, epoch: int, uids: Iterable[Uid], *, now: Instant) -> Blocklist:
        """Sign the blocklist of ``epoch`` (use the previous epoch + 1) listing ``uids``."""
        issued_at = int(self._issuable_from(now).timestamp())
        blocked = frozenset(uids)
        if not all(isinstance(u, Uid) for u in blocked):
            raise TypeError("a blocklist lists Uid values")
        if len(blocked) > MAX_BLOCKLIST_UIDS:
            raise ValueError(f"a blocklist holds at most {MAX_BLOCKLIST_UIDS} Uids, got {len(blocked)}")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < 2**64:
            raise ValueError(f"epoch must be an unsigned 64-bit int, got {epoch!r}")
        signature = profile.sign(self.__key, Blocklist.signed_bytes_for(epoch, blocked, issued_at))
        return Blocklist(epoch=epoch, uids=blocked, issued_at=issued_at, signature=signature)

    # -- persistence --

    def save(self, path: str | os.PathLike[str], *, password: bytes | None = None, overwrite: bool = False) -> None:
        """Write the CA certificate, its PKCS#8 key (encrypted if ``password``) and its parents as PEM.

        The file is created with mode 0600 and replaced atomically; an existing
        file is refused unless ``overwrite``.
        """
        target = Path(path)
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} exists: pass overwrite=True to replace a CA file")
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        )
        key_pem = self.__key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        data = chain_to_pem([self._certificate]) + key_pem + chain_to_pem(self._parents)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        password: bytes | None = None,
        rng: profile.Rng = profile.system_rng,
    ) -> CertificateAuthority:
        """Read a file written by :meth:`save`. Refuses a file that is no CA file (said so, with how one is made),
        and a CA file whose private key group or others may access."""
        source = Path(path)
        with source.open("rb") as fh:  # bounded: --ca /dev/zero is refused, not read for ever
            data = fh.read(MAX_CA_FILE_BYTES + 1)
        if len(data) > MAX_CA_FILE_BYTES:
            data = b""  # far larger than any CA file: said to be none
        has_key = b"PRIVATE KEY-----" in data
        has_cert = b"-----BEGIN CERTIFICATE-----" in data
        if not has_key:
            what = "a certificate but no private key" if has_cert else "no PEM certificate or private key"
            err = PkiError(
                "bad_certificate",
                f"{source} is not a CA file: it holds {what}, and a CA file holds the CA's certificate and its "
                "private key (PEM), as `cardnet ca create` writes them",
            )
            err.hint = (
                "give the CA file that `cardnet ca create FILE` wrote (not the CA certificate `cardnet ca cert FILE` "
                "prints), or make one: cardnet ca create FILE"
            )
            raise err
        mode = source.stat().st_mode
        if os.name == "posix" and mode & 0o077:
            err = PkiError(
                "bad_key",
                f"{source} holds a CA private key but is accessible to group/others (mode {mode & 0o777:o})",
            )
            err.hint = f"run chmod 600 {source}"
            raise err
        try:
            certs = chain_from_pem(data)
        except PkiError as exc:
            raise PkiError(exc.reason, f"{source} is not a readable CA file: {exc}") from None
        if not certs:
            raise PkiError("bad_certificate", f"{source} holds a private key but no CA certificate: was it written "
                           "by `cardnet ca create`?")  # fmt: skip
        try:
            key = serialization.load_pem_private_key(data, password=password)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise PkiError(
                "bad_key", f"cannot read the CA private key in {source} ({exc}): check the password"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError("bad_key", f"the key in {source} is not an EC key")
        return cls(certs[0], key, parents=certs[1:], rng=rng)
