"""Fuzzing the PKI decoders and verifiers with hypothesis.

The contract: ``cert_from_der`` refuses bad input with :class:`PkiError` only,
``Blocklist.decode`` with :class:`DecodeError` only; a certificate or
blocklist that was changed in any way never verifies. Inputs are random
bytes, random CBOR maps and mutations (flips, overwrites, truncations,
insertions, deletions) of valid encodings. ``CARDNET_FUZZ_EXAMPLES`` sets the
number of examples (default 300).
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import cbor2
from fuzzing import fuzz_settings, mutations
from hypothesis import example, given
from hypothesis import strategies as st

from cardnet.crypto import pki, profile
from cardnet.crypto.errors import PkiError
from cardnet.crypto.pki import Blocklist, CertificateAuthority, Role
from cardnet.wire import cbor
from cardnet.wire.errors import DecodeError
from cardnet.wire.ids import MAX_PORT, Uid

FUZZ = fuzz_settings(300, deadline_s=2, large_data=True)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
LATER = NOW + timedelta(days=1)
CA = CertificateAuthority.create("fuzz root", now=NOW, rng=random.Random(1).randbytes)
OTHER_CA = CertificateAuthority.create("fuzz root", now=NOW, rng=random.Random(2).randbytes)
DEVICE = Uid(bytes(range(12)), 0)
LEAF = CA.issue(Role.DEVICE, DEVICE, profile.generate_private_key(random.Random(3).randbytes).public_key(), now=NOW)
LEAF_DER = pki.cert_to_der(LEAF)
ROOT_DER = pki.cert_to_der(CA.certificate)
BLOCKLIST = CA.sign_blocklist(9, [Uid(bytes(12), 0), Uid(b"\x01" * 12, 4), DEVICE], now=NOW)
BLOCKLIST_RAW = BLOCKLIST.encode()

uids = st.builds(Uid, st.binary(min_size=12, max_size=12), st.integers(0, MAX_PORT))


# --- certificates ---------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=2048))
@example(b"")
@example(b"\x30\x80\x00\x00")
@example(LEAF_DER[:-1])
def test_cert_from_der_raises_only_pki_error(raw: bytes) -> None:
    try:
        cert = pki.cert_from_der(raw)
    except PkiError as err:
        assert err.reason == "bad_certificate"
    else:
        assert pki.cert_to_der(cert) == raw


def _judge(raw: bytes, original: bytes, roots: list[Any]) -> None:
    try:
        cert = pki.cert_from_der(raw)
    except PkiError:
        return
    try:
        peer = pki.verify_chain([cert], roots, now=LATER)
    except PkiError:
        return
    assert raw == original, "a modified certificate verified"
    assert peer.uid == DEVICE


@FUZZ
@given(mutations(LEAF_DER))
def test_mutated_leaf_never_verifies(raw: bytes) -> None:
    _judge(raw, LEAF_DER, [CA.certificate])


@FUZZ
@given(mutations(ROOT_DER))
def test_mutated_root_never_anchors_the_leaf(raw: bytes) -> None:
    """A damaged root in the trust store: the leaf verifies only if the root is intact."""
    try:
        root = pki.cert_from_der(raw)
    except PkiError:
        return
    try:
        pki.verify_chain([LEAF], [root], now=LATER)
    except PkiError:
        return
    assert raw == ROOT_DER


@FUZZ
@given(mutations(LEAF_DER))
def test_mutated_leaf_never_verifies_under_another_ca(raw: bytes) -> None:
    try:
        cert = pki.cert_from_der(raw)
    except PkiError:
        return
    try:
        pki.verify_chain([cert], [OTHER_CA.certificate], now=LATER)
    except PkiError:
        return
    raise AssertionError("a certificate verified under a CA that never issued it")


# --- blocklists -----------------------------------------------------------------

cbor_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**65), 2**65)
    | st.binary(max_size=70)
    | st.text(max_size=8)
    | st.floats(allow_nan=False)
)
cbor_values = st.recursive(
    cbor_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.integers(-1, 6), inner, max_size=5),
    max_leaves=12,
)
blocklist_like = st.fixed_dictionaries(
    {},
    optional={
        0: st.integers(-2, 2**64) | cbor_values,
        1: st.lists(st.binary(min_size=15, max_size=17) | uids.map(bytes), max_size=4) | cbor_values,
        2: st.integers(-2, 2**64) | cbor_values,
        3: st.binary(min_size=62, max_size=66) | cbor_values,
        4: cbor_values,
    },
)


def _decode(raw: bytes) -> Blocklist | None:
    try:
        return Blocklist.decode(raw)
    except DecodeError:
        return None


@FUZZ
@given(st.binary(max_size=512))
@example(b"")
@example(BLOCKLIST_RAW[:-1])
@example(b"\xbf\xff")
@example(b"\x9b" + b"\xff" * 8)
def test_blocklist_decode_random_bytes(raw: bytes) -> None:
    bl = _decode(raw)
    if bl is not None:
        assert bl.encode() == raw


@FUZZ
@given(blocklist_like.map(lambda d: cbor2.dumps(d, canonical=True)) | cbor_values.map(cbor.dumps))
def test_blocklist_decode_random_cbor(raw: bytes) -> None:
    bl = _decode(raw)
    if bl is not None:
        assert bl.encode() == raw
        try:
            bl.verify(CA.certificate)
        except PkiError as err:
            assert err.reason == "bad_signature"
        else:
            raise AssertionError("a random blocklist verified")


@FUZZ
@given(mutations(BLOCKLIST_RAW))
def test_mutated_blocklist_never_verifies(raw: bytes) -> None:
    bl = _decode(raw)
    if bl is None:
        return
    assert bl.encode() == raw  # one encoding per value
    try:
        bl.verify(CA.certificate)
    except PkiError as err:
        assert err.reason == "bad_signature"
    else:
        assert raw == BLOCKLIST_RAW, "a modified blocklist verified"


@FUZZ
@given(st.integers(0, 2**64 - 1), st.frozensets(uids, max_size=20), st.integers(0, 3650 * 86400))
def test_blocklist_round_trip(epoch: int, blocked: frozenset[Uid], seconds: int) -> None:
    bl = CA.sign_blocklist(epoch, blocked, now=NOW + timedelta(seconds=seconds))
    again = Blocklist.decode(bl.encode())
    assert again == bl
    again.verify(CA.certificate)
    for u in blocked:
        assert again.is_blocked(u)
        assert again.is_blocked(u.with_port(7)) == (u.with_port(7) in blocked or u.card_uid() in blocked)
