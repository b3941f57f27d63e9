"""The crypto profile (crypto/profile.py): round trips, refusals and the sizes docs/crypto.md states."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from cardnet.crypto import profile
from cardnet.crypto.errors import CryptoError


def seeded(seed: int) -> profile.Rng:
    return random.Random(seed).randbytes


@pytest.fixture(scope="module")
def key() -> profile.PrivateKey:
    return profile.generate_private_key(seeded(1))


@pytest.fixture(scope="module")
def other_key() -> profile.PrivateKey:
    return profile.generate_private_key(seeded(2))


# --- keys -----------------------------------------------------------------------


def test_seeded_key_generation_is_reproducible() -> None:
    a = profile.generate_private_key(seeded(42))
    b = profile.generate_private_key(seeded(42))
    c = profile.generate_private_key(seeded(43))
    assert profile.private_to_der(a) == profile.private_to_der(b)
    assert profile.public_bytes(a.public_key()) == profile.public_bytes(b.public_key())
    assert profile.public_bytes(a.public_key()) != profile.public_bytes(c.public_key())
    assert isinstance(a.curve, ec.SECP256R1)


def test_public_key_is_65_bytes_and_round_trips(key: profile.PrivateKey) -> None:
    raw = profile.public_bytes(key.public_key())
    assert len(raw) == profile.PUBLIC_KEY_BYTES == 65
    assert raw[0] == 0x04
    assert profile.public_bytes(profile.load_public(raw)) == raw


@pytest.mark.parametrize("raw", [b"", b"\x04" + b"\x00" * 64, b"\x05" + b"\x01" * 64, b"\x04" * 10])
def test_load_public_refuses_garbage(raw: bytes) -> None:
    with pytest.raises(CryptoError) as err:
        profile.load_public(raw)
    assert err.value.reason == "bad_key"


def test_private_key_der_round_trip(key: profile.PrivateKey) -> None:
    again = profile.private_from_der(profile.private_to_der(key))
    assert profile.public_bytes(again.public_key()) == profile.public_bytes(key.public_key())
    with pytest.raises(CryptoError) as err:
        profile.private_from_der(b"not a key")
    assert err.value.reason == "bad_key"


# --- signatures -----------------------------------------------------------------


def test_sign_verify_round_trip(key: profile.PrivateKey) -> None:
    sig = profile.sign(key, b"transfer oid=7")
    assert len(sig) == profile.SIGNATURE_BYTES == 64
    profile.verify(key.public_key(), sig, b"transfer oid=7")


def test_signature_is_deterministic(key: profile.PrivateKey) -> None:
    assert profile.sign(key, b"same") == profile.sign(key, b"same")
    assert profile.sign(key, b"same") != profile.sign(key, b"other")


def test_verify_refuses_tampered_data(key: profile.PrivateKey) -> None:
    sig = profile.sign(key, b"pay 10")
    with pytest.raises(CryptoError) as err:
        profile.verify(key.public_key(), sig, b"pay 11")
    assert err.value.reason == "bad_signature"


@pytest.mark.parametrize("index", [0, 31, 32, 63])
def test_verify_refuses_tampered_signature(key: profile.PrivateKey, index: int) -> None:
    sig = bytearray(profile.sign(key, b"pay 10"))
    sig[index] ^= 0x01
    with pytest.raises(CryptoError) as err:
        profile.verify(key.public_key(), bytes(sig), b"pay 10")
    assert err.value.reason == "bad_signature"


def test_verify_refuses_wrong_key_and_wrong_length(key: profile.PrivateKey, other_key: profile.PrivateKey) -> None:
    sig = profile.sign(key, b"m")
    with pytest.raises(CryptoError):
        profile.verify(other_key.public_key(), sig, b"m")
    for bad in (sig[:63], sig + b"\x00", b""):
        with pytest.raises(CryptoError) as err:
            profile.verify(key.public_key(), bad, b"m")
        assert err.value.reason == "bad_signature"


# --- HPKE -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 32, 1000])
def test_hpke_seal_open_round_trip_with_81_bytes_overhead(key: profile.PrivateKey, size: int) -> None:
    plaintext = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
    sealed = profile.hpke_seal(key.public_key(), plaintext, info=b"trn.session")
    assert len(sealed) - len(plaintext) == profile.HPKE_OVERHEAD == 81
    assert profile.hpke_open(key, sealed, info=b"trn.session") == plaintext


def test_hpke_is_randomised(key: profile.PrivateKey) -> None:
    assert profile.hpke_seal(key.public_key(), b"x") != profile.hpke_seal(key.public_key(), b"x")


@pytest.mark.parametrize("index", [0, 30, 64, 65, 70, -1])
def test_hpke_refuses_tampering(key: profile.PrivateKey, index: int) -> None:
    sealed = bytearray(profile.hpke_seal(key.public_key(), b"secret product key"))
    sealed[index] ^= 0x80
    with pytest.raises(CryptoError) as err:
        profile.hpke_open(key, bytes(sealed))
    assert err.value.reason == "bad_ciphertext"


def test_hpke_refuses_wrong_key_wrong_info_and_short_input(
    key: profile.PrivateKey, other_key: profile.PrivateKey
) -> None:
    sealed = profile.hpke_seal(key.public_key(), b"m", info=b"a")
    attempts: list[Callable[[], object]] = [
        lambda: profile.hpke_open(other_key, sealed, info=b"a"),
        lambda: profile.hpke_open(key, sealed, info=b"b"),
        lambda: profile.hpke_open(key, sealed[: profile.HPKE_OVERHEAD - 1]),
        lambda: profile.hpke_open(key, b""),
    ]
    for attempt in attempts:
        with pytest.raises(CryptoError) as err:
            attempt()
        assert err.value.reason == "bad_ciphertext"


# --- CounterAead ----------------------------------------------------------------


def test_counter_aead_round_trip_adds_a_16_byte_tag() -> None:
    aead = profile.CounterAead(bytes(32), prefix=b"sess")
    ct = aead.seal(7, b"record", aad=b"hdr")
    assert len(ct) == len(b"record") + profile.AEAD_TAG_BYTES == 6 + 16
    assert aead.open(7, ct, aad=b"hdr") == b"record"


def test_counter_aead_refuses_wrong_counter_aad_key_prefix_and_tampering() -> None:
    aead = profile.CounterAead(bytes(32))
    ct = aead.seal(1, b"record", aad=b"hdr")
    tampered = bytes([ct[0] ^ 1]) + ct[1:]
    attempts: list[Callable[[], object]] = [
        lambda: aead.open(2, ct, aad=b"hdr"),  # replayed or reordered
        lambda: aead.open(1, ct, aad=b"other"),
        lambda: aead.open(1, tampered, aad=b"hdr"),
        lambda: profile.CounterAead(b"\x01" * 32).open(1, ct, aad=b"hdr"),
        lambda: profile.CounterAead(bytes(32), prefix=b"\x00\x00\x00\x01").open(1, ct, aad=b"hdr"),
    ]
    for attempt in attempts:
        with pytest.raises(CryptoError) as err:
            attempt()
        assert err.value.reason == "bad_tag"


def test_counter_aead_bounds() -> None:
    aead = profile.CounterAead(bytes(32))
    aead.seal(profile.CounterAead.MAX_COUNTER, b"last")
    for counter in (-1, profile.CounterAead.MAX_COUNTER + 1):
        with pytest.raises(CryptoError) as err:
            aead.seal(counter, b"x")
        assert err.value.reason == "counter_exhausted"
    with pytest.raises(CryptoError) as err:
        profile.CounterAead(bytes(16))
    assert err.value.reason == "bad_key"
    with pytest.raises(CryptoError):
        profile.CounterAead(bytes(32), prefix=b"abc")


# --- HMAC, HKDF, SHA-256 --------------------------------------------------------


def test_hmac_full_and_truncated() -> None:
    full = profile.hmac_sha256(b"k", b"scrip")
    short = profile.hmac_sha256(b"k", b"scrip", 16)
    assert len(full) == profile.HMAC_BYTES == 32
    assert short == full[:16]
    profile.hmac_verify(b"k", b"scrip", full)
    profile.hmac_verify(b"k", b"scrip", short)


def test_hmac_verify_refuses() -> None:
    short = profile.hmac_sha256(b"k", b"scrip", 16)
    for key, data, tag in (
        (b"k", b"scrip!", short),
        (b"K", b"scrip", short),
        (b"k", b"scrip", bytes([short[0] ^ 1]) + short[1:]),
        (b"k", b"scrip", short[:15]),  # shorter than 16 bytes: refused outright
        (b"k", b"scrip", profile.hmac_sha256(b"k", b"scrip") + b"\x00"),
    ):
        with pytest.raises(CryptoError) as err:
            profile.hmac_verify(key, data, tag)
        assert err.value.reason == "bad_tag"


def test_hmac_known_answer() -> None:
    # RFC 4231 test case 2
    tag = profile.hmac_sha256(b"Jefe", b"what do ya want for nothing?")
    assert tag.hex() == "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"


def test_sha256_and_hkdf() -> None:
    assert profile.sha256(b"abc").hex() == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    a = profile.hkdf(b"ikm", salt=b"s", info=b"i")
    assert len(a) == 32
    assert a == profile.hkdf(b"ikm", salt=b"s", info=b"i")
    assert a != profile.hkdf(b"ikm", salt=b"s", info=b"j")
    assert len(profile.hkdf(b"ikm", salt=b"s", info=b"i", length=64)) == 64


def test_ecdh_agrees(key: profile.PrivateKey, other_key: profile.PrivateKey) -> None:
    assert profile.ecdh(key, other_key.public_key()) == profile.ecdh(other_key, key.public_key())


def test_signatures_are_low_s_and_the_high_s_twin_is_refused() -> None:
    from cardnet.crypto.profile import _ORDER

    key = profile.generate_private_key()
    for i in range(20):
        data = b"msg %d" % i
        sig = profile.sign(key, data)
        s = int.from_bytes(sig[32:], "big")
        assert s <= _ORDER // 2
        profile.verify(key.public_key(), sig, data)
        twin = sig[:32] + (_ORDER - s).to_bytes(32, "big")
        with pytest.raises(CryptoError) as e:
            profile.verify(key.public_key(), twin, data)
        assert e.value.reason == "bad_signature"
