"""The crypto profile: every primitive cardnet uses, in one place.

All of it comes from the ``cryptography`` package; nothing is hand-rolled.

==============================  ==============================================
use                             algorithm
==============================  ==============================================
signatures                      ECDSA P-256 / SHA-256, deterministic (RFC 6979),
                                encoded as raw ``r || s`` (64 bytes)
public-key encryption           HPKE (RFC 9180) base mode, DHKEM(P-256),
                                HKDF-SHA256, AES-256-GCM: 65 + 16 bytes overhead
key agreement                   ECDH P-256 (ephemeral, for sessions)
symmetric encryption            AES-256-GCM, 96-bit nonce = 4-byte prefix +
                                8-byte big-endian counter (never random)
MAC / hash / KDF                HMAC-SHA256, SHA-256, HKDF-SHA256
==============================  ==============================================

Randomness is an argument (``rng(n) -> n bytes``) wherever this module makes
something random of its own (keys), so the simulator can seed it. HPKE's
ephemeral key comes from ``cryptography`` itself (it has no seed input).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import constant_time, hashes, hmac, serialization
from cryptography.hazmat.primitives import hpke as _hpke
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cardnet.crypto.errors import CryptoError

Rng = Callable[[int], bytes]
PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey

CURVE = ec.SECP256R1()
_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 65
HPKE_OVERHEAD = 65 + 16
AEAD_TAG_BYTES = 16
AEAD_KEY_BYTES = 32
HMAC_BYTES = 32
_ECDSA = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)
_SUITE = _hpke.Suite(_hpke.KEM.P256, _hpke.KDF.HKDF_SHA256, _hpke.AEAD.AES_256_GCM)


def system_rng(n: int) -> bytes:
    """The operating system's CSPRNG; the default where no seeded rng is given."""
    return os.urandom(n)


# --- keys -------------------------------------------------------------------


def generate_private_key(rng: Rng = system_rng) -> PrivateKey:
    """A P-256 key whose scalar is drawn from ``rng`` (48 bytes, reduced: bias < 2^-128)."""
    scalar = int.from_bytes(rng(48), "big") % (_ORDER - 1) + 1
    return ec.derive_private_key(scalar, CURVE)


def public_bytes(key: PublicKey) -> bytes:
    """SEC1 uncompressed point, 65 bytes."""
    return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def load_public(raw: bytes) -> PublicKey:
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(CURVE, raw)
    except (ValueError, TypeError) as exc:
        raise CryptoError("bad_key", f"not a P-256 public key: {exc}") from None


def private_to_der(key: PrivateKey) -> bytes:
    """PKCS#8 DER, for the card's own store only (never for an API result)."""
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def private_from_der(raw: bytes) -> PrivateKey:
    try:
        key = serialization.load_der_private_key(raw, password=None)
    except (ValueError, TypeError) as exc:
        raise CryptoError("bad_key", f"stored private key is unreadable: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CryptoError("bad_key", "stored private key is not an EC key")
    return key


# --- signatures -------------------------------------------------------------


def sign(key: PrivateKey, data: bytes) -> bytes:
    """ECDSA P-256/SHA-256 (RFC 6979 deterministic), raw ``r || s``, 64 bytes, low-s.

    ECDSA also accepts ``(r, n - s)``; cardnet signs with the smaller ``s`` and
    ``verify`` refuses the other one, so every signature has one encoding
    (nothing can be made "new" by flipping ``s``).
    """
    r, s = decode_dss_signature(key.sign(data, _ECDSA))
    if s > _ORDER // 2:
        s = _ORDER - s
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def verify(key: PublicKey, signature: bytes, data: bytes) -> None:
    """Return None or raise :class:`CryptoError` (``bad_signature``)."""
    if len(signature) != SIGNATURE_BYTES:
        raise CryptoError("bad_signature", f"a signature is {SIGNATURE_BYTES} bytes")
    r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
    if s > _ORDER // 2:
        raise CryptoError("bad_signature", "high-s signature refused: cardnet signatures are low-s")
    der = encode_dss_signature(r, s)
    try:
        key.verify(der, data, _ECDSA)
    except InvalidSignature:
        raise CryptoError("bad_signature", "the signature does not match the data and key") from None


# --- HPKE -------------------------------------------------------------------


def hpke_seal(recipient: PublicKey, plaintext: bytes, info: bytes = b"") -> bytes:
    """Encrypt to a public key (HPKE base mode). Output is ``enc(65) || ct || tag(16)``."""
    return _SUITE.encrypt(plaintext, recipient, info=info)


def hpke_open(key: PrivateKey, sealed: bytes, info: bytes = b"") -> bytes:
    if len(sealed) < HPKE_OVERHEAD:
        raise CryptoError("bad_ciphertext", f"an HPKE envelope is at least {HPKE_OVERHEAD} bytes")
    try:
        return _SUITE.decrypt(sealed, key, info=info)
    except (InvalidTag, ValueError) as exc:
        raise CryptoError("bad_ciphertext", f"cannot open the envelope: {exc or 'bad tag'}") from None


# --- ECDH, HKDF, HMAC, SHA-256 ----------------------------------------------


def ecdh(key: PrivateKey, peer: PublicKey) -> bytes:
    return key.exchange(ec.ECDH(), peer)


def hkdf(ikm: bytes, *, salt: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


_SHA256 = hashes.SHA256()
_SHA256_EMPTY = hashes.Hash(_SHA256)


def sha256(data: bytes) -> bytes:
    h = _SHA256_EMPTY.copy()  # a copied initial state: cheaper than a new hash object
    h.update(data)
    return h.finalize()


def hmac_sha256(key: bytes, data: bytes, length: int = HMAC_BYTES) -> bytes:
    """HMAC-SHA256, optionally truncated to ``length`` bytes (state why where used)."""
    h = hmac.HMAC(key, hashes.SHA256())
    h.update(data)
    return h.finalize()[:length]


def hmac_verify(key: bytes, data: bytes, tag: bytes) -> None:
    """Constant-time check of a (possibly truncated, 16..32 bytes) HMAC-SHA256 tag."""
    if not 16 <= len(tag) <= HMAC_BYTES:
        raise CryptoError("bad_tag", "a MAC tag is 16 to 32 bytes")
    if not constant_time.bytes_eq(hmac_sha256(key, data, len(tag)), tag):
        raise CryptoError("bad_tag", "the MAC does not match")


class HmacKeys:
    """:func:`hmac_sha256` (truncated to ``length``) with the keyed state kept per key.

    A service that MACs with few keys again and again (a Millicent vendor's
    master scrip secrets, a returning customer's secret) keeps each key's HMAC
    state and copies it, which saves the per-call key schedule and object
    set-up (about a third of an HMAC on 38 bytes). At most ``limit`` keys are
    kept. Same algorithm, same output as :func:`hmac_sha256` (tested).
    """

    __slots__ = ("_limit", "_states")

    def __init__(self, limit: int = 4096) -> None:
        self._states: dict[bytes, hmac.HMAC] = {}
        self._limit = limit

    def mac(self, key: bytes, data: bytes, length: int = HMAC_BYTES) -> bytes:
        state = self._states.get(key)
        if state is None:
            if len(self._states) >= self._limit:
                self._states.clear()
            state = self._states[key] = hmac.HMAC(key, _SHA256)
        h = state.copy()
        h.update(data)
        return h.finalize()[:length]

    def check(self, key: bytes, data: bytes, tag: bytes) -> bool:
        """Constant-time: is ``tag`` (16..32 bytes) the truncated MAC of ``data``?"""
        return 16 <= len(tag) <= HMAC_BYTES and constant_time.bytes_eq(self.mac(key, data, len(tag)), tag)


RECORD_TAG_BYTES = 16


class RecordMac:
    """A record's integrity tag: HMAC-SHA256 over (key, value) under one kept key state, truncated to
    ``RECORD_TAG_BYTES`` (a card tags every record of its store with a key only it holds, docs/card.md).

    The key is length-prefixed, so no byte can move between key and value unnoticed.
    """

    __slots__ = ("_state",)

    def __init__(self, key: bytes) -> None:
        self._state = hmac.HMAC(key, _SHA256)

    def tag(self, key: bytes, value: bytes) -> bytes:
        h = self._state.copy()
        h.update(len(key).to_bytes(4, "big") + key + value)  # one call: the same bytes as three updates
        return h.finalize()[:RECORD_TAG_BYTES]

    def check(self, key: bytes, value: bytes, tag: bytes) -> bool:
        """Constant-time: is ``tag`` the record's tag?"""
        return constant_time.bytes_eq(self.tag(key, value), tag)


# --- AES-256-GCM with counter nonces ----------------------------------------


class CounterAead:
    """AES-256-GCM where the nonce is ``prefix(4) || counter(8)``.

    The caller supplies the counter (a record number); a key must never see
    the same (prefix, counter) twice, which is why the counter is explicit and
    monotonic in every user of this class, and why there are no random nonces.
    """

    MAX_COUNTER = 2**64 - 1

    def __init__(self, key: bytes, prefix: bytes = b"\x00\x00\x00\x00") -> None:
        if len(key) != AEAD_KEY_BYTES:
            raise CryptoError("bad_key", f"an AES-256-GCM key is {AEAD_KEY_BYTES} bytes")
        if len(prefix) != 4:
            raise CryptoError("bad_key", "a nonce prefix is 4 bytes")
        self._aead = AESGCM(key)
        self._prefix = prefix

    def _nonce(self, counter: int) -> bytes:
        if not 0 <= counter <= self.MAX_COUNTER:
            raise CryptoError("counter_exhausted", "record counter out of range: rekey the session")
        return self._prefix + counter.to_bytes(8, "big")

    def seal(self, counter: int, plaintext: bytes, aad: bytes = b"") -> bytes:
        return self._aead.encrypt(self._nonce(counter), plaintext, aad)

    def open(self, counter: int, ciphertext: bytes, aad: bytes = b"") -> bytes:
        try:
            return self._aead.decrypt(self._nonce(counter), ciphertext, aad)
        except InvalidTag:
            raise CryptoError("bad_tag", "record failed authentication (forged, replayed or reordered)") from None
