"""The shortcuts of the hot paths give exactly what the plain code gives: a session state advanced record by record
encodes to the bytes a fresh state encodes to, and memoized decodes answer only for the exact bytes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cardnet.protocols import session as sess
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.trn.token import Token, mint
from cardnet.wire.ids import Uid


def _state(**extra: object) -> sess.Session:
    fields: dict[str, object] = {
        "peer": Uid(b"\x01" * 12),
        "initiator": True,
        "phase": sess.OPEN,
        "nonce_a": b"\x02" * 16,
        "eph_a": b"\x04" + b"\x03" * 64,
        "k_send": b"\x05" * 32,
        "k_recv": b"\x06" * 32,
    }
    fields.update(extra)
    return sess.Session(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize("extra", [{}, {"opened": 1_700_000_000, "peer_until": 1_800_000_000}, {"cert_a": b"c" * 300}])
def test_advanced_state_encodes_as_a_fresh_one(extra: dict[str, object]) -> None:
    state = _state(**extra)
    state.encode()
    for ctr in (*range(1, 30), 23, 24, 255, 256, 65535, 65536, 2**32, 2**64 - 1):
        state = sess._advanced(state, send_ctr=ctr)
        assert state.encode() == replace(state).encode()
        state = sess._advanced(state, recv_ctr=ctr)
        raw = state.encode()
        assert raw == replace(state).encode()
        assert sess.Session.decode(raw) == state


def test_advanced_state_out_of_range_is_refused_as_before() -> None:
    state = _state()
    state.encode()
    with pytest.raises(ValueError):
        sess._advanced(state, send_ctr=2**64).encode()
    with pytest.raises(ValueError):
        replace(state, send_ctr=2**64).encode()


def test_token_memo_answers_only_for_the_exact_bytes() -> None:
    token = mint(b"\x07" * 16, Uid(b"\x08" * 12), b"body", lambda data: b"\x09" * 64)
    raw = token.encode()
    assert Token.decode(raw) == token
    assert Token.decode(raw) == token
    with pytest.raises(ProtocolError):
        Token.decode(raw[:-1])
    other = raw[:-1] + b"x"
    assert Token.decode(other).body == b"bodx"


def test_a_memo_keeps_what_was_worked_out_and_starts_over_when_full() -> None:
    from cardnet.wire.memo import Memo

    calls: list[bytes] = []

    def work(key: bytes) -> int:
        calls.append(key)
        return len(key)

    memo: Memo[bytes, int] = Memo(entries=2)
    assert memo.worked(b"ab", work) == 2 and memo.worked(b"ab", work) == 2 and calls == [b"ab"]
    memo.worked(b"abc", work)
    memo.worked(b"abcd", work)  # full: starts over with this one
    assert list(memo) == [b"abcd"]
    assert memo.worked(b"ab", work) == 2 and calls == [b"ab", b"abc", b"abcd", b"ab"]

    def fails(key: bytes) -> int:
        raise ValueError("damaged")

    with pytest.raises(ValueError):
        memo.worked(b"xyz", fails)
    assert b"xyz" not in memo  # a failure is never remembered


def test_a_token_check_is_remembered_only_for_that_token_and_key_and_only_when_good() -> None:
    from cardnet.bench.crypto_ops import counting
    from cardnet.crypto import profile

    key, other = profile.generate_private_key(), profile.generate_private_key()
    token = mint(b"\x07" * 16, Uid(b"\x01" * 12, 0), b"seat 12", lambda data: profile.sign(key, data))
    with counting() as counts:
        token.verify(key.public_key())
        token.verify(key.public_key())  # the same token under the same key: remembered
        Token.decode(token.encode()).verify(key.public_key())  # equal bytes decode to an equal token
    assert counts["verify"] == 1
    bad = [
        (token, other.public_key()),  # another key
        (replace(token, body=b"seat 13"), key.public_key()),  # altered body, same signature
        (replace(token, oid=b"\x08" * 16), key.public_key()),
        (replace(token, issuer=Uid(b"\x02" * 12, 0)), key.public_key()),
        (replace(token, sig=profile.sign(other, b"x")), key.public_key()),
    ]
    for _ in range(2):  # a failed check is not remembered: it fails again, and does the work again
        for altered, public in bad:
            with counting() as counts, pytest.raises(ProtocolError) as exc:
                altered.verify(public)
            assert exc.value.reason == "bad_token" and counts["verify"] == 1
