"""CMS SignedData (RFC 5652, DER): SPEED's bill, payment order and receipt as objects a stock tool checks.

An arbitrator who holds the authority's root certificate checks one with
``openssl cms -verify -binary -inform DER -in bill.der -CAfile root.pem -purpose any -out content.bin``
(docs/crypto.md, "CMS SignedData").

The one shape :func:`sign` makes and :func:`verify` accepts (anything else is refused)::

    ContentInfo { contentType id-signedData,
      SignedData { version 1, digestAlgorithms { sha256 (no parameters) },
        encapContentInfo { eContentType id-data, eContent OCTET STRING (present: not detached) },
        certificates [0] { the signer's certificate }   -- optional (``with_cert``)
        signerInfos { SignerInfo { version 1, sid issuerAndSerialNumber,
          digestAlgorithm sha256, signatureAlgorithm ecdsa-with-SHA256 (no parameters),
          signature ECDSA-Sig-Value (DER, low-s) } } } }      -- no signed or unsigned attributes, no CRLs

Without signed attributes the signature is over the content itself (RFC 5652 section 5.4), so a card signs
the content with its own key (``StepContext.sign``) and the result is deterministic: no signing time, no clock.

The structure is built and parsed with ``asn1crypto``: built once per certificate as a template whose two OCTET
STRING values (content, signature) are filled in and whose enclosing DER lengths are recomputed (checked against
asn1crypto's own encoding when made, so the bytes are asn1crypto's for any length). :func:`verify`
accepts exactly the bytes :func:`sign` would make for the same content, certificate and signature (strict DER,
one encoding per object) and does not check the certificate chain: callers do that with
:mod:`cardnet.crypto.pki`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from asn1crypto import algos as asn1_algos
from asn1crypto import cms as asn1_cms
from asn1crypto import core as asn1_core
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from cardnet.crypto import pki, profile
from cardnet.crypto.errors import CryptoError, PkiError

__all__ = ["MAX_CMS_BYTES", "Signed", "sign", "verify"]

MAX_CMS_BYTES: Final = 64 * 1024  # refuse anything larger before parsing

_SIGNED_DATA = "signed_data"  # asn1crypto's names for id-signedData, id-data, sha256, ecdsa-with-SHA256
_DATA = "data"
_SHA256 = "sha256"
_ECDSA_SHA256 = "sha256_ecdsa"
_SCALAR_BYTES = profile.SIGNATURE_BYTES // 2


@dataclass(frozen=True, slots=True)
class Signed:
    """What :func:`verify` found: the signed content and the certificate whose key made the signature."""

    content: bytes
    signer_cert_der: bytes  # the certificate whose key made the signature


def _bad(what: str) -> CryptoError:
    return CryptoError("bad_cms", f"not a cardnet CMS SignedData: {what}")


# --- building -------------------------------------------------------------------------------------


class _AlgorithmIdentifier(asn1_core.Sequence):  # type: ignore[misc]  # asn1crypto has no type stubs
    """An AlgorithmIdentifier whose absent parameters stay absent (asn1crypto's DigestAlgorithm writes NULL)."""

    _fields: ClassVar[list[tuple[Any, ...]]] = [
        ("algorithm", asn1_algos.DigestAlgorithmId),
        ("parameters", asn1_core.Any, {"optional": True}),
    ]


_SHA256_DER: Final = _AlgorithmIdentifier({"algorithm": _SHA256}).dump()


def _sha256() -> Any:
    """sha256 with absent parameters, as RFC 5754 section 2 says to generate (and openssl does)."""
    return asn1_algos.DigestAlgorithm.load(_SHA256_DER)


def _build(content: bytes, cert: Any, signature_der: bytes, *, with_cert: bool) -> bytes:
    """The DER ContentInfo of the one shape this module makes (``cert``: a parsed asn1crypto Certificate)."""
    tbs = cert["tbs_certificate"]
    signer_info = asn1_cms.SignerInfo(
        {
            "version": "v1",
            "sid": asn1_cms.SignerIdentifier(
                name="issuer_and_serial_number",
                value=asn1_cms.IssuerAndSerialNumber({"issuer": tbs["issuer"], "serial_number": tbs["serial_number"]}),
            ),
            "digest_algorithm": _sha256(),
            "signature_algorithm": asn1_algos.SignedDigestAlgorithm({"algorithm": _ECDSA_SHA256}),
            "signature": signature_der,
        }
    )
    fields: dict[str, Any] = {
        "version": "v1",
        "digest_algorithms": [_sha256()],
        "encap_content_info": {"content_type": _DATA, "content": content},
        "signer_infos": [signer_info],
    }
    if with_cert:
        fields["certificates"] = [asn1_cms.CertificateChoices(name="certificate", value=cert)]
    info = asn1_cms.ContentInfo({"content_type": _SIGNED_DATA, "content": asn1_cms.SignedData(fields)})
    out: bytes = info.dump()
    return out


# A template: the DER of one element as (tag, parts), each part constant bytes, a slot (0: the content, 1: the
# signature) or an inner template whose length is worked out again when encoded.
_Tpl = tuple[int, list[Any]]
_CONTENT, _SIGNATURE = 0, 1
_MARK_CONTENT, _MARK_SIGNATURE = 300, 72  # the markers' lengths when the template is made (any would do)


def _der_length(n: int) -> bytes:
    """DER's length octets: short form below 128, else the fewest big-endian bytes after 0x80 | their count."""
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _fill(tpl: _Tpl, slots: tuple[bytes, bytes]) -> bytes:
    """The element ``tpl`` describes with ``slots`` in its slots (every enclosing length recomputed)."""
    tag, parts = tpl
    body = b"".join([p if type(p) is bytes else slots[p] if type(p) is int else _fill(p, slots) for p in parts])
    n = len(body)
    return bytes((tag, n)) + body if n < 0x80 else bytes((tag,)) + _der_length(n) + body


def _split(der: bytes, start: int, end: int, slots: dict[int, tuple[int, int]]) -> list[Any] | None:
    """The elements in ``der[start:end]`` as template parts, given where each slot's value lies (slot -> its
    start and end); None if a slot is not exactly one element's value (the template cannot be made)."""
    parts: list[Any] = []
    pos = start
    while pos < end:
        tag, vs, ve = _tlv(der, pos, end)
        if tag & 0x1F == 0x1F:  # a high tag number: not in this shape
            return None
        inside = [k for k, (a, b) in slots.items() if pos < b and a < ve]  # slots overlapping this element
        if not inside:
            if parts and isinstance(parts[-1], bytes):
                parts[-1] += der[pos:ve]
            else:
                parts.append(der[pos:ve])
        elif len(inside) == 1 and slots[inside[0]] == (vs, ve):
            parts.append((tag, [inside[0]]))
        elif tag & 0x20 and all(vs <= slots[k][0] and slots[k][1] <= ve for k in inside):  # constructed: go in
            inner = _split(der, vs, ve, slots)
            if inner is None:
                return None
            parts.append((tag, inner))
        else:
            return None
        pos = ve
    return parts


@functools.lru_cache(maxsize=256)
def _template(cert_der: bytes, with_cert: bool) -> _Tpl | None:
    """The shape asn1crypto encodes for this certificate, with the content's and the signature's OCTET STRING
    values as slots; None if it cannot be made (then :func:`_encode` has asn1crypto build every encoding).

    DER encodes an OCTET STRING's bytes as they are, and every length as the minimal count of the bytes inside,
    so the encoding of any content and signature is this template filled: the two values, and the lengths of
    the elements that hold them recomputed. It is made once per certificate from asn1crypto's own encoding (with
    random markers in the slots) and checked against asn1crypto for a content and a signature of other lengths, so
    sign and verify never need asn1crypto's object building whatever the content's or the signature's length.
    """
    cert, _, _ = _asn1_cert(cert_der)
    mark_c, mark_s = os.urandom(_MARK_CONTENT), os.urandom(_MARK_SIGNATURE)
    built = _build(mark_c, cert, mark_s, with_cert=with_cert)
    if built.count(mark_c) != 1 or built.count(mark_s) != 1:
        return None  # (random markers this long: never)
    i, j = built.find(mark_c), built.find(mark_s)
    try:
        tag, vs, ve = _tlv(built, 0, len(built))
        parts = _split(built, vs, ve, {_CONTENT: (i, i + len(mark_c)), _SIGNATURE: (j, j + len(mark_s))})
    except ValueError:
        return None
    if parts is None or ve != len(built):
        return None
    tpl: _Tpl = (tag, parts)
    if _fill(tpl, (mark_c, mark_s)) != built:
        return None
    c, s = os.urandom(5), os.urandom(200)  # other lengths, each across DER's short/long length forms from its marker's
    return tpl if _fill(tpl, (c, s)) == _build(c, cert, s, with_cert=with_cert) else None


def _encode(content: bytes, cert_der: bytes, signature_der: bytes, *, with_cert: bool) -> bytes:
    """The DER ContentInfo :func:`_build` makes, from the certificate's template (asn1crypto only if none)."""
    tpl = _template(cert_der, with_cert)
    if tpl is None:
        cert, _, _ = _asn1_cert(cert_der)
        return _build(content, cert, signature_der, with_cert=with_cert)
    return _fill(tpl, (content, signature_der))


@functools.lru_cache(maxsize=256)
def _p256_key(cert_der: bytes) -> profile.PublicKey:
    """The certificate's P-256 public key (the certificate parsed strictly by :func:`pki.cert_from_der`)."""
    try:
        key = pki.cert_from_der(cert_der).public_key()
    except PkiError as err:
        raise _bad(f"the signer's certificate is unusable ({err})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise _bad("the signer's certificate does not hold a P-256 key (cardnet signs with ECDSA P-256/SHA-256)")
    return key


@functools.lru_cache(maxsize=256)
def _asn1_cert(cert_der: bytes) -> tuple[Any, bytes, int]:
    """``cert_der`` parsed by asn1crypto, its issuer (DER Name) and its serial number."""
    try:
        cert = asn1_x509.Certificate.load(cert_der, strict=True)
        tbs = cert["tbs_certificate"]
        return cert, bytes(tbs["issuer"].dump()), int(tbs["serial_number"].native)
    except Exception as exc:  # asn1crypto raises ValueError, TypeError, KeyError... on garbage
        raise _bad(f"the signer's certificate does not parse ({type(exc).__name__}: {exc})") from None


def sign(content: bytes, cert_der: bytes, signer: Callable[[bytes], bytes], *, with_cert: bool = True) -> bytes:
    """CMS SignedData (DER) over ``content`` (eContentType id-data, encapsulated, not detached), one signer
    identified by issuerAndSerialNumber of ``cert_der``, digest SHA-256, signature ecdsa-with-SHA256,
    NO signed attributes (so the signature is over the content itself and the result is deterministic:
    no signing time). ``signer(data)`` returns the raw 64-byte r||s ECDSA P-256/SHA-256 signature over
    ``data`` (what cardnet.crypto.profile.sign(key, data) returns, and what a card's StepContext.sign(data)
    returns: cards never hand out their key); convert it to the DER ECDSA-Sig-Value CMS needs with
    cryptography's encode_dss_signature. ``with_cert``: embed the signer's certificate in ``certificates``.

    The signature is checked against the certificate's key before anything is returned, so a signer that
    does not hold the certified key (or that signs high-s) raises :class:`CryptoError` (``bad_signature``);
    a certificate that does not parse, or a result over :data:`MAX_CMS_BYTES`, raises ``bad_cms``.
    """
    if not isinstance(content, bytes) or not isinstance(cert_der, bytes):
        raise TypeError("content and cert_der are bytes")
    key = _p256_key(cert_der)
    _asn1_cert(cert_der)  # (parses, or refuses the certificate)
    raw = signer(content)
    if not isinstance(raw, bytes) or len(raw) != profile.SIGNATURE_BYTES:
        raise CryptoError("bad_signature", f"the signer must return a raw {profile.SIGNATURE_BYTES}-byte r||s")
    try:
        profile.verify(key, raw, content)
    except CryptoError as err:
        raise CryptoError("bad_signature", f"the signer's signature does not verify under cert_der: {err}") from None
    r = int.from_bytes(raw[:_SCALAR_BYTES], "big")
    s = int.from_bytes(raw[_SCALAR_BYTES:], "big")
    der = _encode(content, cert_der, encode_dss_signature(r, s), with_cert=with_cert)
    if len(der) > MAX_CMS_BYTES:
        raise _bad(f"the SignedData would be {len(der)} bytes, over the {MAX_CMS_BYTES}-byte limit")
    return der


# --- parsing and checking -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Parts:
    content: bytes
    embedded_cert: bytes | None
    sid_issuer: bytes  # DER Name
    sid_serial: int
    signature_der: bytes


def _algorithm(alg: Any, expected: str, what: str) -> None:
    name = alg["algorithm"].native
    if name != expected:
        raise _bad(f"the {what} is {name}, expected {expected}")
    if not isinstance(alg["parameters"], asn1_core.Void):  # absent; an explicit NULL is refused too
        raise _bad(f"the {what} carries parameters (RFC 5754/5758: absent)")


def _absent(field: Any) -> bool:
    """An optional field that is not there (without converting a present one to Python values: costly)."""
    return isinstance(field, asn1_core.Void)


def _check_shape(info: Any) -> _Parts:
    """Every field of ``info`` (a parsed asn1crypto ContentInfo) is what :func:`sign` makes."""
    if info["content_type"].native != _SIGNED_DATA:
        raise _bad(f"the content type is {info['content_type'].native}, expected signed_data")
    sd = info["content"]
    if sd["version"].native != "v1":
        raise _bad(f"SignedData version is {sd['version'].native}, expected v1")
    if len(sd["digest_algorithms"]) != 1:
        raise _bad(f"{len(sd['digest_algorithms'])} digest algorithms, expected exactly one (sha256)")
    _algorithm(sd["digest_algorithms"][0], _SHA256, "digest algorithm")
    eci = sd["encap_content_info"]
    if eci["content_type"].native != _DATA:
        raise _bad(f"the encapsulated content type is {eci['content_type'].native}, expected data")
    if eci["content"].native is None:
        raise _bad("the content is detached (absent); cardnet encapsulates it")
    content = bytes(eci["content"].native)
    if not _absent(sd["crls"]):
        raise _bad("it carries revocation information (CRLs); cardnet's carries none")
    embedded: bytes | None = None
    certs = sd["certificates"]
    if not _absent(certs):
        if len(certs) != 1:
            raise _bad(f"{len(certs)} certificates embedded, expected at most one (the signer's)")
        if certs[0].name != "certificate":
            raise _bad(f"the embedded certificate is a {certs[0].name}, expected an X.509 certificate")
        embedded = bytes(certs[0].chosen.dump())
    if len(sd["signer_infos"]) != 1:
        raise _bad(f"{len(sd['signer_infos'])} signers, expected exactly one")
    si = sd["signer_infos"][0]
    if si["version"].native != "v1":
        raise _bad(f"SignerInfo version is {si['version'].native}, expected v1")
    if si["sid"].name != "issuer_and_serial_number":
        raise _bad(f"the signer is identified by {si['sid'].name}, expected issuerAndSerialNumber")
    _algorithm(si["digest_algorithm"], _SHA256, "signer's digest algorithm")
    if not _absent(si["signed_attrs"]):
        raise _bad("signed attributes are present; cardnet signs the content itself")
    if not _absent(si["unsigned_attrs"]):
        raise _bad("unsigned attributes are present; cardnet adds none")
    _algorithm(si["signature_algorithm"], _ECDSA_SHA256, "signature algorithm")
    sid = si["sid"].chosen
    return _Parts(
        content=content,
        embedded_cert=embedded,
        sid_issuer=bytes(sid["issuer"].dump()),
        sid_serial=int(sid["serial_number"].native),
        signature_der=bytes(si["signature"].native),
    )


def _parse(der: bytes) -> _Parts:
    try:
        info = asn1_cms.ContentInfo.load(der, strict=True)  # strict: trailing bytes are an error
        return _check_shape(info)  # (strict DER: verify compares the input with the one encoding sign makes)
    except CryptoError:
        raise
    except Exception as exc:  # asn1crypto raises ValueError, TypeError, KeyError, ... on garbage
        raise _bad(f"it does not parse ({type(exc).__name__}: {exc})") from None


def _raw_signature(signature_der: bytes) -> bytes:
    """The DER ECDSA-Sig-Value as the profile's raw r||s (refused if either scalar is out of range)."""
    try:
        r, s = decode_dss_signature(signature_der)
    except (ValueError, TypeError) as exc:
        raise _bad(f"the signature is not an ECDSA-Sig-Value ({exc})") from None
    if encode_dss_signature(r, s) != signature_der:
        raise _bad("the signature is not in DER form")
    limit = 1 << (8 * _SCALAR_BYTES)
    if not (0 < r < limit and 0 < s < limit):
        raise _bad("the signature's r or s is out of range for P-256")
    return r.to_bytes(_SCALAR_BYTES, "big") + s.to_bytes(_SCALAR_BYTES, "big")


def verify(der: bytes, *, cert_der: bytes | None = None) -> Signed:
    """Parse and check a SignedData made by ``sign``: the signature over the content with the signer's key
    (the embedded certificate matching the SignerInfo's issuerAndSerialNumber, or ``cert_der`` when given,
    which must then match the sid). Raise CryptoError (cardnet.crypto.errors) with reason "bad_cms" and a
    message saying what is wrong for ANYTHING malformed or not matching: wrong content type, detached
    content, not exactly one signer, signed attributes present, unknown algorithms, bad signature, a
    certificate that does not match sid, trailing bytes, input that is not strict DER (parse, re-encode with
    dump(force=True) and compare to the input), larger than MAX_CMS_BYTES. Never let any other exception
    escape (asn1crypto raises ValueError/TypeError/KeyError etc. on garbage: catch and convert).
    It does NOT check the certificate chain: callers do that with cardnet.crypto.pki.

    When ``cert_der`` is given and a certificate is also embedded, the two must be the same bytes. The
    signature must be low-s (as :func:`cardnet.crypto.profile.sign` makes it), and the input must be exactly
    the bytes :func:`sign` makes for its content, certificate and signature: one encoding per object.
    """
    if not isinstance(der, (bytes, bytearray, memoryview)):
        raise _bad(f"expected DER bytes, got {type(der).__name__}")
    if cert_der is not None and not isinstance(cert_der, (bytes, bytearray, memoryview)):
        raise _bad(f"cert_der must be DER bytes, got {type(cert_der).__name__}")
    der = bytes(der)
    if len(der) > MAX_CMS_BYTES:
        raise _bad(f"{len(der)} bytes is over the {MAX_CMS_BYTES}-byte limit")
    given = None if cert_der is None else bytes(cert_der)
    return _verify_canonical(der, given) or _verify_parsed(der, given)


def _verify_parsed(der: bytes, cert_der: bytes | None) -> Signed:
    """:func:`verify` by asn1crypto's full parse: says what is wrong with anything it refuses."""
    parts = _parse(der)
    if cert_der is None:
        if parts.embedded_cert is None:
            raise _bad("no certificate is embedded and none was given (pass cert_der=)")
        signer_der = parts.embedded_cert
    else:
        signer_der = bytes(cert_der)
        if parts.embedded_cert is not None and parts.embedded_cert != signer_der:
            raise _bad("the embedded certificate is not the cert_der given")
    key = _p256_key(signer_der)
    _, issuer, serial = _asn1_cert(signer_der)
    if issuer != parts.sid_issuer or serial != parts.sid_serial:
        raise _bad("the certificate does not match the signer's issuerAndSerialNumber")
    raw = _raw_signature(parts.signature_der)
    try:
        profile.verify(key, raw, parts.content)
    except CryptoError as err:
        raise _bad(f"bad signature: {err}") from None
    try:
        canonical = _encode(parts.content, signer_der, parts.signature_der, with_cert=parts.embedded_cert is not None)
    except Exception as exc:  # it parsed and checked out above; this is a backstop, never expected
        raise _bad(f"it cannot be re-encoded ({type(exc).__name__}: {exc})") from None
    if canonical != der:
        raise _bad("not strict DER in the one encoding cardnet makes (field order, lengths or optional fields differ)")
    return Signed(content=parts.content, signer_cert_der=signer_der)


# --- the fast path: the one encoding ``sign`` makes, recognised without asn1crypto ------------------------------


def _tlv(der: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """The DER element at ``pos`` (before ``end``): its tag, where its value starts and where it ends."""
    if pos + 2 > end:
        raise ValueError("truncated")
    tag, n = der[pos], der[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        if not 1 <= k <= 3 or pos + k > end:
            raise ValueError("bad length")
        n = int.from_bytes(der[pos : pos + k], "big")
        pos += k
    if pos + n > end:
        raise ValueError("overruns")
    return tag, pos, pos + n


def _canonical_fields(der: bytes) -> tuple[bytes, bytes | None, bytes]:
    """Where content, embedded certificate and signature lie if ``der`` has the shape :func:`sign` makes (only
    the element headers are read: whether ``der`` *is* that encoding is decided by rebuilding it)."""
    _, s, e = _tlv(der, 0, len(der))  # into ContentInfo
    _, _, s = _tlv(der, s, e)  # past contentType
    _, s, e = _tlv(der, s, e)  # into [0]
    _, s, e = _tlv(der, s, e)  # into SignedData
    _, _, s = _tlv(der, s, e)  # past version
    _, _, s = _tlv(der, s, e)  # past digestAlgorithms
    _, eci, after = _tlv(der, s, e)  # into encapContentInfo
    _, _, i = _tlv(der, eci, after)  # past eContentType
    _, i, ie = _tlv(der, i, after)  # into [0] eContent
    _, i, ie = _tlv(der, i, ie)  # the OCTET STRING's value
    content = der[i:ie]
    cert: bytes | None = None
    tag, s, se = _tlv(der, after, e)
    if tag == 0xA0:  # certificates [0]: the signer's
        cert = _element(der, s, se)
        tag, s, se = _tlv(der, se, e)
    _, s, se = _tlv(der, s, se)  # signerInfos SET -> the SignerInfo
    signature = b""
    while s < se:  # its last element is the signature
        _, v, s = _tlv(der, s, se)
        signature = der[v:s]
    return content, cert, signature


def _element(der: bytes, s: int, e: int) -> bytes:
    """The whole first element (header and value) in ``der[s:e]``."""
    _, _, end = _tlv(der, s, e)
    return der[s:end]


def _verify_canonical(der: bytes, cert_der: bytes | None) -> Signed | None:
    """``verify``'s result when ``der`` is exactly what :func:`sign` makes for its content, its signer's certificate
    and a valid signature; None for anything else (the full parse then says what is wrong).

    ``verify`` accepts only that one encoding anyway (it rebuilds it and compares), so recognising it by
    rebuilding it from the fields found by a walk of the element headers, and comparing, accepts exactly what the
    full parse accepts, at a fraction of asn1crypto's cost (the SPEED parties check several SignedData a purchase).
    """
    try:
        content, embedded, signature = _canonical_fields(der)
    except (ValueError, IndexError):
        return None
    signer_der = cert_der if cert_der is not None else embedded
    if signer_der is None:
        return None
    try:
        if _encode(content, signer_der, signature, with_cert=embedded is not None) != der:
            return None
        profile.verify(_p256_key(signer_der), _raw_signature(signature), content)
    except Exception:  # whatever fails here, the full parse fails too and says what (this path only accepts)
        return None
    return Signed(content=content, signer_cert_der=signer_der)
