"""The SMC functions and their registry: results on concrete vectors, the terms and their checks, the code hash."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import cbor2
import pytest

from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.smc import functions as fx
from cardnet.protocols.smc.registry import (
    MAX_TERMS_BYTES,
    Agreement,
    FunctionSpec,
    Registry,
    code_hash_of,
)
from cardnet.protocols.smc.uic_wire import MAX_INPUT_BYTES, MAX_MODULES

REG = fx.REGISTRY


def run(name: str, values: Sequence[object | None], spec: FunctionSpec | None = None) -> Any:
    """F over the inputs ``values`` (None: missing), as every module computes it; the result as scripts see it."""
    spec = spec or REG.get(name)
    vector = [None if v is None else spec.encode_input(v) for v in values]
    result = spec.evaluate(vector)
    assert spec.evaluate(list(vector)) == result  # deterministic: every module computes the same bytes
    assert isinstance(spec.render(result), str)
    return spec.to_json(result)


def refused(reason: str, fn: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ProtocolError) as e:
        fn(*args, **kwargs)
    assert e.value.reason == reason, e.value
    return str(e.value)


# --- sum and median ----------------------------------------------------------------------------------------------


def test_sum_adds_the_present_inputs_and_names_the_missing() -> None:
    assert run("sum", ["5", None, -3, "  +40 "]) == {"total": 42, "count": 3, "missing": [1]}
    assert run("sum", [None, None]) == {"total": 0, "count": 0, "missing": [0, 1]}
    top = 2**63 - 1
    assert run("sum", [top] * 3) == {"total": 3 * top, "count": 3, "missing": []}  # past 64 bits: exact
    assert REG.get("sum").render(REG.get("sum").evaluate([b"\x05", None])) == "sum = 5 over 1 inputs (missing: 1)"


def test_median_takes_the_lower_middle_of_an_even_count() -> None:
    assert run("median", [7, 1, 4]) == {"median": 4, "count": 3, "missing": []}
    assert run("median", [10, 1, 4, 7]) == {"median": 4, "count": 4, "missing": []}  # 4 and 7 in the middle: 4
    assert run("median", [None, -5, None, -9]) == {"median": -9, "count": 2, "missing": [0, 2]}
    assert run("median", [None, None, None]) == {"median": None, "count": 0, "missing": [0, 1, 2]}
    median = REG.get("median")
    assert median.render(median.evaluate([None])) == "no inputs, no median (missing: 0)"


def test_an_undecodable_entry_counts_as_missing() -> None:
    vector = [b"\x05", b"\x18\x05", b"not cbor", b"\xf5", b"\x03"]  # 5, 5 not shortest, junk, true, 3
    assert REG.get("sum").to_json(REG.get("sum").evaluate(vector)) == {"total": 8, "count": 2, "missing": [1, 2, 3]}


def test_f_refuses_vectors_the_terms_never_allow() -> None:
    refused("bad_vector", REG.get("sum").evaluate, [None] * (MAX_MODULES + 1))
    refused("bad_vector", REG.get("median").evaluate, ["5"])


# --- vote -------------------------------------------------------------------------------------------------------


def test_vote_counts_choices_and_breaks_ties_by_the_lowest_choice() -> None:
    got = run("vote", [3, "1", None, 3, 1, 0])
    assert got == {"counts": {"0": 1, "1": 2, "3": 2}, "winner": 1, "tied": [1, 3], "votes": 5, "missing": [2]}
    assert run("vote", [2, 2, 0]) == {"counts": {"0": 1, "2": 2}, "winner": 2, "tied": [], "votes": 3, "missing": []}
    assert run("vote", [None, None]) == {"counts": {}, "winner": None, "tied": [], "votes": 0, "missing": [0, 1]}
    vote = REG.get("vote")
    line = vote.render(vote.evaluate([b"\x03", b"\x01"]))
    assert line == "winner: 1 (1: 1, 3: 1; tie with 3 broken by the lowest choice; none missing)"


def test_a_declared_ballot_counts_every_choice_by_label() -> None:
    ballot = fx.vote_function(["yes", "no", "abstain"])
    got = run("vote", ["no", "yes", None, 1, " abstain "], spec=ballot)
    assert got == {
        "counts": {"yes": 1, "no": 2, "abstain": 1},
        "winner": "no",
        "tied": [],
        "votes": 4,
        "missing": [2],
    }
    empty = run("vote", [], spec=ballot)
    assert empty["counts"] == {"yes": 0, "no": 0, "abstain": 0} and empty["winner"] is None
    message = refused("bad_input", ballot.encode_input, "maybe")
    assert "yes, no, abstain" in message
    refused("bad_input", ballot.encode_input, 3)
    refused("bad_input", ballot.decode_input, b"\x03")
    # the ballot is part of the code: other labels (or the plain ballot) give another hash
    assert ballot.code_hash != fx.vote_function(["yes", "no"]).code_hash != REG.get("vote").code_hash
    assert ballot.code_hash == fx.vote_function(["yes", "no", "abstain"]).code_hash
    with pytest.raises(ValueError, match="distinct"):
        fx.vote_function(["yes", "yes"])
    with pytest.raises(ValueError, match="look like a number"):
        fx.vote_function(["yes", "2"])


# --- auctions ---------------------------------------------------------------------------------------------------


def test_first_price_auction_highest_bid_wins_and_pays_it() -> None:
    assert run("auction", [10, 30, None, 30, 5]) == {"winner": 1, "price": 30, "bids": 4, "missing": [2]}
    assert run("auction", [None, 7]) == {"winner": 1, "price": 7, "bids": 1, "missing": [0]}
    assert run("auction", [None, None]) == {"winner": None, "price": None, "bids": 0, "missing": [0, 1]}


def test_second_price_auction_pays_the_second_highest_bid() -> None:
    assert run("auction2", [10, 50, None, 30, 5]) == {"winner": 1, "price": 30, "bids": 4, "missing": [2]}
    assert run("auction2", [30, 10, 30]) == {"winner": 0, "price": 30, "bids": 3, "missing": []}  # a tie at the top
    assert run("auction2", [None, 99]) == {"winner": 1, "price": 0, "bids": 1, "missing": [0]}  # reserve price 0
    assert run("auction2", [None]) == {"winner": None, "price": None, "bids": 0, "missing": [0]}
    a2 = REG.get("auction2")
    line = a2.render(a2.evaluate([a2.encode_input(8), None]))
    assert line == "party 0 wins and pays 0 (1 bid; missing: 1)"


def test_bids_are_non_negative_whole_numbers() -> None:
    message = refused("bad_input", REG.get("auction").encode_input, "-1")
    assert "a bid: a whole number 0.." in message
    refused("bad_input", REG.get("auction2").encode_input, 1.5)
    refused("bad_input", REG.get("auction").encode_input, True)
    refused("bad_input", REG.get("auction").decode_input, cbor2.dumps(-1))


# --- integer inputs ---------------------------------------------------------------------------------------------


def test_integer_inputs_say_what_is_wrong_and_what_is_expected() -> None:
    s = REG.get("sum")
    assert s.encode_input("42") == cbor2.dumps(42) == s.encode_input(42)
    message = refused("bad_input", s.encode_input, "forty-two")
    assert "expected an integer: a whole number" in message and "like 42" in message and "forty-two" in message
    refused("bad_input", s.encode_input, str(2**63))
    refused("bad_input", s.encode_input, "4.2e1")
    refused("bad_input", s.encode_input, "٤٢")  # Arabic-Indic digits: ASCII only
    refused("bad_input", s.encode_input, [42])
    assert s.check_input(cbor2.dumps(-(2**63))) == cbor2.dumps(-(2**63))
    refused("not_deterministic", s.check_input, b"\x18\x05")
    refused("trailing_bytes", s.check_input, b"\x05\x05")
    refused("truncated", s.check_input, b"\x19\x01")
    refused("input_too_large", s.check_input, b"\x00" * 10)
    refused("bad_input", s.check_input, bytearray(b"\x05"))


# --- exchange ---------------------------------------------------------------------------------------------------

ITEMS = [b"a song", b"a coin", b"a ticket", b"a voucher"]
KEYS = [bytes([k + 1]) * 32 for k in range(4)]


def exchange_input(i: int, *, to: Sequence[int], expect: dict[int, bytes], item: bytes | None = None) -> bytes:
    """Party i's input as its CLI would take it: JSON with hex hashes and key."""
    text = json.dumps(
        {
            "item_hex": (ITEMS[i] if item is None else item).hex(),
            "to": list(to),
            "expect": {str(j): fx.item_hash(h).hex() for j, h in expect.items()},
            "key": KEYS[i].hex(),
        }
    )
    return fx.EXCHANGE.encode_input(text)


def ring(n: int) -> list[bytes]:
    """i gives to i + 1 and expects the item of i - 1 (the paper's measured workload: four parties)."""
    return [exchange_input(i, to=[(i + 1) % n], expect={(i - 1) % n: ITEMS[(i - 1) % n]}) for i in range(n)]


def test_a_ring_exchange_delivers_every_item_sealed_to_its_receiver() -> None:
    vector = ring(4)
    result = fx.EXCHANGE.evaluate(vector)
    assert fx.EXCHANGE.evaluate(list(vector)) == result
    for i in range(4):
        got = fx.open_exchange(result, me=i, my_input=vector[i])
        assert got == fx.ExchangeOutcome(ok=True, reason=None, parties=(), items=(((i - 1) % 4, ITEMS[(i - 1) % 4]),))
    public: Any = fx.EXCHANGE.to_json(result)
    assert public["ok"] and [(d["to"], d["from"]) for d in public["deliveries"]] == [(0, 3), (1, 0), (2, 1), (3, 2)]
    assert all(ITEMS[d["from"]].hex() not in d["sealed"] for d in public["deliveries"])  # hosts see ciphertext
    # another party's key opens nothing of mine
    refused("bad_seal", fx.open_exchange, result, me=0, my_input=vector[1])
    assert fx.EXCHANGE.render(result) == "exchange done: 4 items delivered, each sealed to its receiver"


def test_a_general_matching_exchange() -> None:
    """Party 0 sells one item to both 1 and 2; each pays 0 with its own item."""
    vector = [
        exchange_input(0, to=[1, 2], expect={1: ITEMS[1], 2: ITEMS[2]}),
        exchange_input(1, to=[0], expect={0: ITEMS[0]}),
        exchange_input(2, to=[0], expect={0: ITEMS[0]}),
    ]
    result = fx.EXCHANGE.evaluate(vector)
    assert fx.open_exchange(result, me=0, my_input=vector[0]).items == ((1, ITEMS[1]), (2, ITEMS[2]))
    assert fx.open_exchange(result, me=2, my_input=vector[2]).items == ((0, ITEMS[0]),)


def aborted(vector: Sequence[bytes | None], reason: str, parties: list[int]) -> None:
    result = fx.EXCHANGE.evaluate(vector)
    assert fx.EXCHANGE.to_json(result) == {
        "ok": False,
        "reason": reason,
        "parties": parties,
        "digest": None,
        "deliveries": [],
    }
    for i, raw in enumerate(vector):
        if raw is not None and raw != b"junk":
            assert fx.open_exchange(result, me=i, my_input=raw).items == ()  # nobody gets anything
    assert "nobody receives anything" in fx.EXCHANGE.render(result)


def test_exchange_aborts_for_everyone_when_an_input_is_missing() -> None:
    vector: list[bytes | None] = list(ring(4))
    vector[2] = None
    aborted(vector, "missing", [2])


def test_exchange_aborts_when_an_item_does_not_match_its_description() -> None:
    vector = ring(3)
    vector[1] = exchange_input(1, to=[2], expect={0: ITEMS[0]}, item=b"a forged coin")
    aborted(vector, "wrong_item", [1])


def test_exchange_aborts_when_the_parties_disagree_on_who_gives_to_whom() -> None:
    vector = ring(3)
    vector[0] = exchange_input(0, to=[2], expect={2: ITEMS[2]})  # 0 gives to 2, who expects nothing from 0
    aborted(vector, "mismatch", [0, 1, 2])
    vector = ring(3)
    vector[0] = exchange_input(0, to=[1, 0], expect={2: ITEMS[2], 0: ITEMS[0]})  # to itself
    aborted(vector, "mismatch", [0])
    vector = ring(3)
    vector[2] = exchange_input(2, to=[0, 5], expect={1: ITEMS[1]})  # party 5 is not in a run of 3
    aborted(vector, "mismatch", [2])
    aborted([*ring(3)[:2], b"junk"], "bad_input", [2])


def test_exchange_inputs_are_checked_with_reasons() -> None:
    enc = fx.EXCHANGE.encode_input
    key = KEYS[0].hex()
    refused("bad_input", enc, "{not json")
    refused("bad_input", enc, json.dumps([1, 2]))
    message = refused("bad_input", enc, json.dumps({"item": "x", "key": key, "color": "red"}))
    assert "color" in message
    refused("bad_input", enc, json.dumps({"item": "x", "item_hex": "00", "key": key}))
    refused("bad_input", enc, json.dumps({"item": "x", "key": "00"}))
    refused("bad_input", enc, json.dumps({"item": "x", "key": key, "to": [1, 1]}))
    refused("bad_input", enc, json.dumps({"item": "x", "key": key, "expect": {"1": "ab"}}))
    refused("bad_input", enc, json.dumps({"item": "x", "key": key, "to": [64]}))
    big = {"item_hex": (b"x" * fx.EXCHANGE_MAX_INPUT_BYTES).hex(), "key": key}
    refused("input_too_large", enc, big)
    small = enc({"item": "x" * 100, "key": key})
    message = refused("input_too_large", enc, {"item": "x" * 100, "key": key}, max_input_bytes=len(small) - 1)
    assert f"the agreed bound is {len(small) - 1}" in message
    assert fx.decode_exchange_input(small) == fx.ExchangeInput(item=b"x" * 100, to=(), expect=(), key=KEYS[0])
    # expect as a list of pairs, in any order, is the same input
    h1, h2 = fx.item_hash(b"1").hex(), fx.item_hash(b"2").hex()
    assert enc({"item": "x", "key": key, "expect": [[2, h2], [1, h1]]}) == enc(
        {"item": "x", "key": key, "expect": {"1": h1, "2": h2}}
    )
    unsorted = cbor2.dumps({0: b"x", 1: [2, 1], 2: [], 3: KEYS[0]}, canonical=True)
    refused("bad_input", fx.decode_exchange_input, unsorted)


# --- the terms --------------------------------------------------------------------------------------------------


def test_terms_round_trip_in_at_most_max_terms_bytes() -> None:
    terms = REG.terms("exchange", n=4, t=1)
    assert terms.max_input_bytes == fx.EXCHANGE_MAX_INPUT_BYTES and terms.code_hash == fx.EXCHANGE.code_hash
    raw = terms.encode()
    assert Agreement.decode(raw) == terms and len(raw) <= MAX_TERMS_BYTES
    assert raw == cbor2.dumps(cbor2.loads(raw), canonical=True)
    largest = Agreement(function="f" * 32, code_hash=b"\xff" * 32, n=64, t=64, max_input_bytes=MAX_INPUT_BYTES)
    assert len(largest.encode()) == MAX_TERMS_BYTES
    assert terms.digest() == Agreement.decode(raw).digest() != REG.terms("exchange", n=5, t=1).digest()


def test_the_terms_decoder_is_strict() -> None:
    raw = REG.terms("sum", n=3, t=1).encode()
    refused("trailing_bytes", Agreement.decode, raw + b"\x00")
    refused("truncated", Agreement.decode, raw[:-1])
    fields = cbor2.loads(raw)
    refused("missing_key", Agreement.decode, cbor2.dumps({k: v for k, v in fields.items() if k != 3}))
    refused("unknown_key", Agreement.decode, cbor2.dumps({**fields, 9: 0}))
    refused("oversize", Agreement.decode, cbor2.dumps({**fields, 2: 65}))
    refused("undersize", Agreement.decode, cbor2.dumps({**fields, 1: b"\x00" * 31}))
    refused("not_deterministic", Agreement.decode, cbor2.dumps(dict(sorted(fields.items(), reverse=True))))
    message = refused("bad_terms", Agreement.decode, cbor2.dumps({**fields, 0: "Sum!"}))
    assert "a-z" in message
    refused("bad_terms", Agreement, function="sum", code_hash=b"x", n=3, t=1, max_input_bytes=9)
    refused("bad_terms", Agreement, function="sum", code_hash=bytes(32), n=True, t=1, max_input_bytes=9)


def terms_for(**changes: Any) -> Agreement:
    fields: dict[str, Any] = {"function": "median", "code_hash": fx.MEDIAN.code_hash, "n": 5, "t": 2}
    return Agreement(**{**fields, "max_input_bytes": fx.MEDIAN.max_input_bytes, **changes})


def test_the_terms_check_refuses_each_fault_with_its_reason() -> None:
    assert REG.check(terms_for()) is fx.MEDIAN
    assert REG.check(terms_for(max_input_bytes=3)) is fx.MEDIAN  # a smaller bound is fine
    message = refused("unknown_function", REG.check, terms_for(function="mean"))
    assert "known: auction, auction2, exchange, median, sum, vote" in message
    message = refused("code_hash_mismatch", REG.check, terms_for(code_hash=fx.SUM.code_hash))
    assert fx.MEDIAN.code_hash.hex()[:16] in message and "same cardnet version" in message
    assert "at least 2 parties" in refused("too_few_parties", REG.check, terms_for(n=1, t=0))
    message = refused("too_many_faults", REG.check, terms_for(n=4, t=2))
    assert "t < n/2" in message and "at most 1" in message
    refused("too_many_faults", REG.check, terms_for(n=2, t=1))
    assert REG.check(terms_for(n=2, t=0)) is fx.MEDIAN
    message = refused("bound_too_large", REG.check, terms_for(max_input_bytes=10))
    assert "at most 9" in message
    refused("bound_too_small", REG.check, terms_for(max_input_bytes=0))
    refused("bound_too_small", REG.check, terms_for(function="exchange", code_hash=fx.EXCHANGE.code_hash, n=5))
    refused("too_many_faults", REG.terms, "sum", n=3, t=2)


def test_the_registry_holds_one_function_per_name() -> None:
    assert REG.names() == ("auction", "auction2", "exchange", "median", "sum", "vote")
    assert [s.name for s in REG] == list(REG.names()) and len(REG) == 6 and "sum" in REG
    with pytest.raises(ValueError, match="two functions are named 'sum'"):
        Registry([fx.SUM, fx.SUM])
    ballot = fx.vote_function(["red", "blue"])
    mine = REG.replace(ballot)
    assert mine.get("vote") is ballot and REG.get("vote") is fx.VOTE
    refused("code_hash_mismatch", mine.check, REG.terms("vote", n=3, t=1))  # a host with another ballot


# --- the code hash ----------------------------------------------------------------------------------------------


def test_the_code_hash_is_the_same_in_a_fresh_process() -> None:
    program = (
        "from cardnet.protocols.smc.functions import REGISTRY, vote_function\n"
        "for s in [*REGISTRY, vote_function(['yes', 'no'])]: print(s.name, s.code_hash.hex())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "4242"}  # another string hash seed: set orders differ
    out = subprocess.run([sys.executable, "-c", program], env=env, capture_output=True, text=True, check=True)
    theirs = [line.split() for line in out.stdout.splitlines()]
    ours = [[s.name, s.code_hash.hex()] for s in [*REG, fx.vote_function(["yes", "no"])]]
    assert theirs == ours


def test_the_code_hash_survives_running_the_functions() -> None:
    """CPython 3.11 specialises hot bytecode in place; the hash reads the original instructions."""
    for _ in range(200):
        run("sum", [1, 2, None])
        run("vote", [1, 2, 2])
        fx.EXCHANGE.evaluate(ring(3))
    for spec in REG:
        parts = (spec.parse_input, spec.decode_input, spec.compute, spec.render_result, spec.result_to_json)
        again = code_hash_of(parts, name=spec.name, max_input_bytes=spec.max_input_bytes, params=spec.params)
        assert again == spec.code_hash


def make(source: str, *, filename: str = "<smc-test>", module: str = "smc_test_module") -> types.FunctionType:
    """The function ``f`` defined by ``source`` in a fresh module namespace."""
    namespace: dict[str, Any] = {"__name__": module}
    exec(compile(source, filename, "exec"), namespace)
    f = namespace["f"]
    assert isinstance(f, types.FunctionType)
    return f


def digest(f: types.FunctionType, **kwargs: Any) -> bytes:
    return code_hash_of([f], **{"name": "sum", "max_input_bytes": 9, **kwargs})


BASE = '''
LIMIT = 3
def helper(x):
    return x * LIMIT
def f(vector):
    """Adds."""
    return sum(helper(v) for v in vector if v in {"a", "b"})
'''


def test_changing_the_code_changes_the_hash_and_nothing_else_does() -> None:
    base = digest(make(BASE))
    # the same code elsewhere: another file name, other line numbers, another docstring
    moved = BASE.replace('"""Adds."""', '"""Adds up, with more words."""').replace("LIMIT = 3", "\n\n\nLIMIT = 3")
    assert digest(make(moved, filename="/elsewhere/cardnet/functions.py")) == base
    # any change of what runs does change it: the function, a helper it calls, a constant it reads
    assert digest(make(BASE.replace("if v in", "if v not in"))) != base
    assert digest(make(BASE.replace("x * LIMIT", "x + LIMIT"))) != base
    assert digest(make(BASE.replace("LIMIT = 3", "LIMIT = 4"))) != base
    assert digest(make(BASE.replace('{"a", "b"}', '{"a", "c"}'))) != base
    # and so do the name, the bound and the parameters
    assert digest(make(BASE), name="median") != base
    assert digest(make(BASE), max_input_bytes=8) != base
    assert digest(make(BASE), params=b"\x80") != base


def test_a_spec_with_another_f_has_another_hash() -> None:
    def other_sum(vector: Sequence[bytes | None]) -> bytes:
        return fx.SUM.compute(vector[1:])

    forged = replace(fx.SUM, compute=other_sum)
    assert forged.code_hash != fx.SUM.code_hash
    assert replace(fx.SUM).code_hash == fx.SUM.code_hash
    assert replace(fx.SUM, max_input_bytes=8).code_hash != fx.SUM.code_hash
    refused("code_hash_mismatch", Registry([forged]).check, REG.terms("sum", n=3, t=1))
