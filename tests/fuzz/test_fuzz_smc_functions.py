"""Fuzzing the SMC functions: decoders refuse bad bytes cleanly, every F is total, and the results keep their laws.

The terms decoder, every function's input decoder and result decoder get random bytes, random CBOR and mutated
valid encodings: each decodes (and what decodes re-encodes to the same bytes) or raises :class:`ProtocolError`,
never anything else. Every F runs on random vectors of valid inputs and None (and of arbitrary bytes) and
always returns a result its own decoders read. Properties: sum is Python's sum, the median lies between the
least and the greatest present input, the second price never exceeds the first and both auctions pick the same
winner, votes add up, and an exchange delivers every expected item or none.

Set ``CARDNET_FUZZ_EXAMPLES`` (e.g. 20000) for a long hunt.
"""

from __future__ import annotations

import os
import random
from datetime import timedelta
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.smc import functions as fx
from cardnet.protocols.smc.registry import Agreement, FunctionSpec
from cardnet.protocols.smc.uic_wire import MAX_MODULES
from conftest import mutate

EXAMPLES = int(os.environ.get("CARDNET_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow])
BALLOT = fx.vote_function(["yes", "no", "maybe"])
SPECS: dict[str, FunctionSpec] = {**{s.name: s for s in fx.REGISTRY}, "vote_ballot": BALLOT}

cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.binary(max_size=80) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.integers(0, 10), kids, max_size=6),
    max_leaves=16,
)
raw_bytes = st.binary(max_size=300) | cbor_values.map(cbor2.dumps)

ints = st.integers(fx.INT_MIN, fx.INT_MAX)
bids = st.integers(0, fx.INT_MAX) | st.integers(0, 20)  # small ones tie often
INPUTS: dict[str, st.SearchStrategy[Any]] = {
    "sum": ints,
    "median": ints,
    "vote": st.integers(0, 255) | st.integers(0, 3),
    "vote_ballot": st.sampled_from(["yes", "no", "maybe", 0, 1, 2]),
    "auction": bids,
    "auction2": bids,
}


def encoded(name: str) -> st.SearchStrategy[bytes]:
    return INPUTS[name].map(SPECS[name].encode_input)


def vectors(entry: st.SearchStrategy[bytes]) -> st.SearchStrategy[list[bytes | None]]:
    return st.lists(st.none() | entry, max_size=12) | st.lists(st.none() | entry, min_size=60, max_size=MAX_MODULES)


VALID_TERMS = fx.REGISTRY.terms("exchange", n=4, t=1).encode()
SAMPLES = [
    VALID_TERMS,
    *(SPECS[n].encode_input(v) for n, v in [("sum", -(2**63)), ("median", 7), ("vote", 200), ("auction", 10**12)]),
    fx.EXCHANGE.encode_input({"item": "x", "to": [1], "expect": {"1": "00" * 32}, "key": "11" * 32}),
    *(SPECS[n].evaluate([SPECS[n].encode_input(v) for v in vs]) for n, vs in [("sum", [1, 2]), ("vote", [1, 1])]),
    fx.AUCTION2.evaluate([b"\x05", b"\x07", None]),
]


def decodes_or_refuses(fn: Any, raw: bytes) -> object | None:
    try:
        return fn(raw)
    except ProtocolError as exc:
        assert exc.reason and str(exc)
        return None


# --- decoders ---------------------------------------------------------------------------------------------------


def terms_or_refuse(raw: bytes) -> None:
    terms = decodes_or_refuses(Agreement.decode, raw)
    if isinstance(terms, Agreement):
        assert terms.encode() == raw  # one encoding per terms
        decodes_or_refuses(lambda _: fx.REGISTRY.check(terms), raw)


@FUZZ
@given(raw=raw_bytes)
def test_terms_decoder_refuses_random_bytes_cleanly(raw: bytes) -> None:
    terms_or_refuse(raw)


@FUZZ
@given(seed=st.integers(0, 2**32))
def test_terms_decoder_refuses_mutated_terms_cleanly(seed: int) -> None:
    r = random.Random(seed)
    terms_or_refuse(mutate(r.choice(SAMPLES) if r.random() < 0.3 else VALID_TERMS, r))


def input_or_refuse(spec: FunctionSpec, raw: bytes) -> None:
    if decodes_or_refuses(spec.decode_input, raw) is not None:
        # what decodes is canonical: checking it again and re-encoding its value give the same bytes
        if len(raw) <= spec.max_input_bytes:
            assert spec.check_input(raw) == raw
        if spec.name != "exchange":
            assert spec.encode_input(spec.decode_input(raw)) == raw
    for read in (spec.render, spec.to_json):  # result decoders: the same discipline
        decodes_or_refuses(read, raw)


@pytest.mark.parametrize("name", list(SPECS))
@FUZZ
@given(raw=raw_bytes)
def test_input_and_result_decoders_refuse_random_bytes_cleanly(name: str, raw: bytes) -> None:
    input_or_refuse(SPECS[name], raw)


@pytest.mark.parametrize("name", list(SPECS))
@FUZZ
@given(seed=st.integers(0, 2**32))
def test_input_and_result_decoders_refuse_mutated_encodings_cleanly(name: str, seed: int) -> None:
    r = random.Random(seed)
    input_or_refuse(SPECS[name], mutate(r.choice(SAMPLES), r))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=30),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=5),
    max_leaves=12,
)
exchange_like = st.fixed_dictionaries(
    {},
    optional={
        "item": st.text(max_size=20) | st.integers(),
        "item_hex": st.text("0123456789abcdefg", max_size=10),
        "to": st.lists(st.integers(-2, 70) | st.text(max_size=3), max_size=4),
        "expect": st.dictionaries(st.text(max_size=3), st.text("0123456789abcdef", max_size=64), max_size=3),
        "key": st.sampled_from(["11" * 32, "1" * 63, "zz" * 32]),
    },
)


@pytest.mark.parametrize("name", list(SPECS))
@FUZZ
@given(value=json_values | st.text(max_size=40) | exchange_like | exchange_like.map(repr))
def test_input_encoders_answer_or_explain(name: str, value: object) -> None:
    spec = SPECS[name]
    raw = decodes_or_refuses(spec.encode_input, value)
    if isinstance(raw, bytes):
        assert spec.check_input(raw) == raw


# --- every F is total, and its results keep their laws ----------------------------------------------------------


def evaluate(spec: FunctionSpec, vector: list[bytes | None]) -> Any:
    result = spec.evaluate(vector)
    assert spec.evaluate(list(vector)) == result
    assert isinstance(spec.render(result), str)
    return spec.to_json(result)


def present(name: str, vector: list[bytes | None]) -> list[Any]:
    return [SPECS[name].decode_input(v) for v in vector if v is not None]


@FUZZ
@given(vector=vectors(encoded("sum")))
def test_sum_is_pythons_sum(vector: list[bytes | None]) -> None:
    got = evaluate(fx.SUM, vector)
    values = present("sum", vector)
    assert got == {
        "total": sum(values),
        "count": len(values),
        "missing": [i for i, v in enumerate(vector) if v is None],
    }


@FUZZ
@given(vector=vectors(encoded("median")))
def test_the_median_lies_between_the_least_and_the_greatest_input(vector: list[bytes | None]) -> None:
    got = evaluate(fx.MEDIAN, vector)
    values = sorted(present("median", vector))
    if not values:
        assert got["median"] is None
        return
    assert values[0] <= got["median"] <= values[-1]
    assert sum(v < got["median"] for v in values) <= (len(values) - 1) // 2 < sum(v <= got["median"] for v in values)


@pytest.mark.parametrize("name", ["vote", "vote_ballot"])
@FUZZ
@given(data=st.data())
def test_votes_add_up_and_the_winner_has_the_most(name: str, data: st.DataObject) -> None:
    vector = data.draw(vectors(encoded(name)))
    got = evaluate(SPECS[name], vector)
    choices = present(name, vector)
    assert sum(got["counts"].values()) == got["votes"] == len(choices)
    if choices:
        best = max(got["counts"].values())
        assert got["counts"][str(got["winner"])] == best
        leaders = [k for k, v in got["counts"].items() if v == best]
        assert [str(c) for c in got["tied"]] == (leaders if len(leaders) > 1 else [])
        assert str(got["winner"]) == leaders[0]  # the lowest choice of the leaders (counts are in choice order)
    else:
        assert got["winner"] is None


@FUZZ
@given(vector=vectors(encoded("auction")))
def test_the_second_price_never_exceeds_the_first(vector: list[bytes | None]) -> None:
    first, second = evaluate(fx.AUCTION, vector), evaluate(fx.AUCTION2, vector)
    assert first["winner"] == second["winner"] and first["bids"] == second["bids"]
    if first["winner"] is None:
        assert first["price"] is second["price"] is None and first["bids"] == 0
        return
    bids = {i: fx.AUCTION.decode_input(v) for i, v in enumerate(vector) if v is not None}
    assert first["price"] == bids[first["winner"]] == max(bids.values())
    assert first["winner"] == min(i for i, b in bids.items() if b == first["price"])
    assert 0 <= second["price"] <= first["price"]
    others = sorted(b for i, b in bids.items() if i != first["winner"])
    assert second["price"] == (others[-1] if others else 0)


ITEMS = st.binary(max_size=40)


@st.composite
def exchanges(draw: st.DrawFn) -> tuple[list[bytes | None], list[bytes]]:
    """A random exchange among 2..6 parties: a random matching, honest or with one fault drawn in."""
    n = draw(st.integers(2, 6))
    items = [draw(ITEMS) for _ in range(n)]
    pairs = draw(st.sets(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(lambda p: p[0] != p[1])))
    fault = draw(st.sampled_from(["none", "none", "missing", "wrong_item", "mismatch", "junk"]))
    victim = draw(st.integers(0, n - 1))
    vector: list[bytes | None] = []
    for j in range(n):
        expect = {str(i): fx.item_hash(items[i]).hex() for i, k in sorted(pairs) if k == j}
        to = sorted(k for i, k in pairs if i == j)
        item = items[j] + (b"!" if fault == "wrong_item" and j == victim else b"")
        if fault == "mismatch" and j == victim:
            to = [*to, n] if to else [n]
        key = bytes([j]) * 32
        vector.append(fx.EXCHANGE.encode_input({"item_hex": item.hex(), "to": to, "expect": expect, "key": key}))
    if fault == "missing":
        vector[victim] = None
    if fault == "junk":
        vector[victim] = draw(raw_bytes)
    return vector, items


@FUZZ
@given(case=exchanges())
def test_an_exchange_delivers_every_expected_item_or_none(case: tuple[list[bytes | None], list[bytes]]) -> None:
    vector, items = case
    result = fx.EXCHANGE.evaluate(vector)
    got = evaluate(fx.EXCHANGE, vector)
    inputs = [decodes_or_refuses(fx.EXCHANGE.decode_input, v) if v is not None else None for v in vector]
    wanted = [(j, i) for j, x in enumerate(inputs) if isinstance(x, fx.ExchangeInput) for i, _ in x.expect]
    if not got["ok"]:
        assert got["deliveries"] == [] and got["reason"] in fx.ABORT_REASONS
        return
    assert all(isinstance(x, fx.ExchangeInput) for x in inputs)
    assert sorted((d["to"], d["from"]) for d in got["deliveries"]) == sorted(wanted)
    for j, raw in enumerate(vector):
        assert raw is not None
        outcome = fx.open_exchange(result, me=j, my_input=raw)
        assert outcome.ok and all(items[i] == item for i, item in outcome.items)
        assert sorted(i for i, _ in outcome.items) == sorted(i for k, i in wanted if k == j)


@pytest.mark.parametrize("name", list(SPECS))
@FUZZ
@given(vector=st.lists(st.none() | st.binary(max_size=40) | st.sampled_from(SAMPLES), max_size=12))
def test_every_f_is_total_even_on_bytes_that_are_no_input(name: str, vector: list[bytes | None]) -> None:
    evaluate(SPECS[name], vector)


@pytest.mark.parametrize("name", [n for n in SPECS if n != "exchange"])
@FUZZ
@given(data=st.data())
def test_every_f_is_total_on_valid_inputs_and_none(name: str, data: st.DataObject) -> None:
    evaluate(SPECS[name], data.draw(vectors(encoded(name))))
