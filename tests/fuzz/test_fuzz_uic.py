"""Fuzzing the UIC payload (cardnet.protocols.smc.uic_wire): bad input is refused with ProtocolError, never a crash.

The decoder gets random bytes, random CBOR, maps with the right keys and any values, and mutated valid encodings:
it either returns a payload, which then re-encodes to exactly the same bytes within the declared size bound, or
raises :class:`ProtocolError`, nothing else. The payload's constructor and a module's ``receive_round`` are held
to the same rule, and a refused round leaves the module as it was.

Set ``CARDNET_FUZZ_EXAMPLES`` (e.g. 20000) for a long hunt.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import cbor2
import fuzzing
import pytest
from fuzzing import cbor_or_bytes, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.smc.uic import Uic
from cardnet.protocols.smc.uic_wire import (
    UicPayload,
    decode_payload,
    encode_payload,
    max_payload_bytes,
    max_rounds,
)
from conftest import mutate

FUZZ = fuzz_settings(200)
BOUND = 8  # a small input bound, so that mutations and random values cross it
sizes = st.integers(1, 9)

cbor_values = fuzzing.cbor_values(binary=12, text=8, items=6, leaves=16)
raw_bytes = cbor_or_bytes(cbor_values)
small_ints = st.integers(-2, 2**10) | st.integers(0, 2**64 + 1)
near_miss_maps = st.fixed_dictionaries(
    {
        0: small_ints,
        1: small_ints,
        2: small_ints,
        3: small_ints,
        4: st.lists(st.binary(max_size=BOUND + 2), max_size=10),
    },
    optional={5: cbor_values},
)


@st.composite
def payloads(draw: st.DrawFn) -> UicPayload:
    """Any valid payload of a run among 1..9 modules with inputs of at most BOUND bytes."""
    n = draw(sizes)
    sender = draw(st.integers(0, n - 1))
    known = [draw(st.none() | st.binary(max_size=BOUND)) for _ in range(n)]
    known[sender] = draw(st.binary(max_size=BOUND))
    return UicPayload(
        round=draw(st.integers(1, max_rounds(n))),
        sender=sender,
        trusted=frozenset(draw(st.sets(st.integers(0, n - 1)))) | {sender},
        known=tuple(known),
    )


def decode_or_refuse(raw: Any, n: int) -> UicPayload | None:
    try:
        p = decode_payload(raw, n=n, max_input_bytes=BOUND)
    except ProtocolError as exc:
        assert exc.reason and str(exc).startswith("UIC payload")
        return None
    assert len(p.known) == n
    assert encode_payload(p, max_input_bytes=BOUND) == raw  # one encoding per payload
    assert len(raw) <= max_payload_bytes(n, BOUND)
    return p


@FUZZ
@given(raw=raw_bytes, n=sizes)
def test_random_bytes_are_refused_cleanly(raw: bytes, n: int) -> None:
    decode_or_refuse(raw, n)


@FUZZ
@given(fields=near_miss_maps, n=sizes)
def test_maps_with_the_right_keys_and_any_values_are_refused_cleanly(fields: dict[int, Any], n: int) -> None:
    decode_or_refuse(cbor2.dumps(fields, canonical=True), n)
    decode_or_refuse(cbor2.dumps(fields), n)  # keys possibly out of order


@FUZZ
@given(payload=payloads(), seed=st.integers(0, 2**32))
def test_mutated_valid_payloads_are_refused_cleanly(payload: UicPayload, seed: int) -> None:
    r = random.Random(seed)
    n = len(payload.known)
    raw = mutate(encode_payload(payload, max_input_bytes=BOUND), r)
    decode_or_refuse(raw, n)
    decode_or_refuse(raw, r.randint(1, 9))  # read as a run of another size


@FUZZ
@given(payload=payloads())
def test_valid_payloads_round_trip_within_the_size_bound(payload: UicPayload) -> None:
    n = len(payload.known)
    raw = encode_payload(payload, max_input_bytes=BOUND)
    assert decode_payload(raw, n=n, max_input_bytes=BOUND) == payload
    assert len(raw) <= max_payload_bytes(n, BOUND)


@pytest.mark.parametrize("n", [1, 2, 4, 5, 8, 9, 23, 24, 64])
@pytest.mark.parametrize("bound", [0, 8, 23, 24, 255, 256, 1024])
def test_the_size_bound_is_reached_exactly(n: int, bound: int) -> None:
    """The last round's payload of the last module, trusting and knowing all, every input at the bound."""
    worst = UicPayload(round=max_rounds(n), sender=n - 1, trusted=frozenset(range(n)), known=(b"x" * bound,) * n)
    assert len(encode_payload(worst, max_input_bytes=bound)) == max_payload_bytes(n, bound)


@pytest.mark.parametrize("raw", ["text", 7, None, [b"\xa0"]])
def test_what_is_not_bytes_is_refused(raw: object) -> None:
    with pytest.raises(ProtocolError):
        decode_payload(raw, n=3)  # type: ignore[arg-type]


@FUZZ
@given(
    rnd=small_ints | st.booleans(),
    sender=small_ints | st.none(),
    trusted=st.frozensets(small_ints, max_size=4) | st.sets(st.integers(0, 3)) | st.none(),
    known=st.tuples(*[st.none() | st.binary(max_size=3) | st.integers(0, 3)] * 3) | st.lists(st.none(), max_size=3),
)
def test_the_payload_refuses_bad_fields_cleanly(rnd: Any, sender: Any, trusted: Any, known: Any) -> None:
    try:
        p = UicPayload(round=rnd, sender=sender, trusted=trusted, known=known)
    except ProtocolError as exc:
        assert exc.reason == "bad_payload"
    else:
        assert decode_payload(encode_payload(p), n=len(p.known)) == p


@FUZZ
@given(data=st.data())
def test_a_module_refuses_bad_rounds_cleanly_and_unchanged(data: st.DataObject) -> None:
    """Decodable payloads of any content, from any key, fed to a module in its first round."""
    n = data.draw(st.integers(2, 5), label="n")
    me = data.draw(st.integers(0, n - 1), label="me")
    m = Uic(n, (n - 1) // 2, me, b"mine", max_input_bytes=BOUND)
    received = data.draw(st.dictionaries(st.integers(-1, n), payloads(), max_size=n), label="received")
    before = (m.round, m.status, m.trusted, m.known)
    try:
        m.receive_round(1, received)
    except ProtocolError as exc:
        assert exc.reason in ("wrong_sender", "wrong_round", "bad_payload", "conflicting_value")
        assert (m.round, m.status, m.trusted, m.known) == before
    else:
        assert m.round == 1 and m.status in ("running", "halted", "decided")


def test_the_mutation_fuzzer_reaches_both_outcomes() -> None:
    """Mutations of valid payloads both decode (mostly to other valid payloads) and are refused for several
    reasons: the fuzzing above does not pass by refusing everything for one trivial reason."""
    outcomes = Counter[str]()
    for seed in range(600):
        r = random.Random(seed)
        n = r.randint(1, 9)
        s = r.randrange(n)
        known = tuple(r.randbytes(r.randint(0, BOUND)) if k == s or r.random() < 0.6 else None for k in range(n))
        trusted = frozenset(k for k in range(n) if k == s or r.random() < 0.7)
        raw = mutate(encode_payload(UicPayload(round=1, sender=s, trusted=trusted, known=known)), r)
        decode_or_refuse(raw, n)
        try:
            decode_payload(raw, n=n, max_input_bytes=BOUND)
            outcomes["decoded"] += 1
        except ProtocolError as exc:
            outcomes[exc.reason] += 1
    assert outcomes["decoded"] >= 10, outcomes
    assert {"truncated", "trailing_bytes", "bad_cbor"} <= set(outcomes), outcomes
    assert len(outcomes) >= 6, outcomes
