"""The SMC functions cardnet ships: sum, median, vote, first- and second-price auctions, and fair exchange.

Each is a :class:`~cardnet.protocols.smc.registry.FunctionSpec` in :data:`REGISTRY`. ``F`` runs on the vector the
modules decided by UIC: one entry per party, its input bytes or None (bottom: the party's input never arrived,
so the party is faulty or its host withheld it). Every ``F`` here is pure and total: it reads no clock, draws no
randomness, and returns a result for every vector the terms allow (0..64 entries, each valid input bytes or
None); every module computes the same result bytes from the same vector. Missing inputs are handled by one
stated rule per function, the same on every module. An entry that does not decode counts as missing (honest
modules never decide one: each checks its host's input with :meth:`FunctionSpec.check_input` before UIC).

Inputs and results are deterministic CBOR (RFC 8949 section 4.2); input and result decoders are strict and raise
only :class:`ProtocolError`. Formats, bounds and rules are tabled in docs/smc.md, section "Functions".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from cardnet.crypto import profile
from cardnet.crypto.errors import CryptoError
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.smc.registry import FunctionSpec, Registry, Vector
from cardnet.protocols.smc.uic_wire import MAX_MODULES
from cardnet.wire import Bool, Bytes, DecodeError, Field, Int, ListOf, Nested, Schema, Text, UInt
from cardnet.wire.cbor import dumps, loads_one

T = TypeVar("T")

INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1
INT_INPUT_BYTES: Final = 9  # the longest CBOR integer in INT_MIN..INT_MAX: a head byte and 8 bytes
MAX_CHOICES: Final = 256  # vote: choices 0..255 (a CBOR integer of at most 2 bytes)
MAX_LABEL_BYTES: Final = 64
EXCHANGE_MAX_INPUT_BYTES: Final = 8192  # one party's item, its routing, its descriptions and its seal key
SEAL_KEY_BYTES: Final = 32
_SEAL_INFO: Final = b"cardnet/smc/exchange/v1/seal"
_DIGEST_LABEL: Final = b"cardnet/smc/exchange/v1/vector\x00"
_INT_TEXT: Final = re.compile(r"[+-]?[0-9]{1,20}")
_INDEX: Final = UInt(MAX_MODULES - 1)
_INDICES: Final = ListOf(_INDEX, MAX_MODULES)


# --- shared helpers ------------------------------------------------------------------------------------------


def _bad(name: str, message: str) -> ProtocolError:
    return ProtocolError("bad_input", f"{name}: {message}")


def _check_vector(vector: Vector) -> None:
    """The domain of every ``F``: at most MAX_MODULES entries, each bytes or None (the terms allow no more)."""
    if len(vector) > MAX_MODULES or not all(v is None or isinstance(v, bytes) for v in vector):
        raise ProtocolError("bad_vector", f"F takes 0..{MAX_MODULES} entries, each input bytes or None")


def _present(vector: Vector, decode: Callable[[bytes], T]) -> tuple[list[tuple[int, T]], list[int]]:
    """(index, decoded input) of each present entry, and the indices of missing ones (None or undecodable)."""
    _check_vector(vector)
    values: list[tuple[int, T]] = []
    missing: list[int] = []
    for i, raw in enumerate(vector):
        if raw is None:
            missing.append(i)
            continue
        try:
            values.append((i, decode(raw)))
        except ProtocolError:
            missing.append(i)
    return values, missing


def _parse_int(name: str, value: object, lo: int, hi: int, what: str) -> int:
    """A whole number in lo..hi from CLI text (``"42"``, ``"-7"``) or a Python/JSON integer."""
    expected = f"{what}: a whole number {lo}..{hi}, like {42 if lo <= 42 <= hi else lo}"
    if isinstance(value, str):
        text = value.strip()
        if _INT_TEXT.fullmatch(text) is None:
            raise _bad(name, f"expected {expected}, got {value!r:.40}")
        number = int(text)
    elif type(value) is int:
        number = value
    else:
        raise _bad(name, f"expected {expected}, got a {type(value).__name__}")
    if not lo <= number <= hi:
        raise _bad(name, f"{number} is out of range: expected {expected}")
    return number


def _decode_int(name: str, raw: bytes, lo: int, hi: int) -> int:
    """Strictly one canonical CBOR integer in lo..hi."""
    try:
        obj = loads_one(raw)
    except DecodeError as exc:
        raise ProtocolError(exc.reason, f"{name} input: {exc}") from None
    if type(obj) is not int:
        raise _bad(name, f"an input is one CBOR integer, got {type(obj).__name__}")
    if not lo <= obj <= hi:
        raise _bad(name, f"an input is {lo}..{hi}, got {obj}")
    if dumps(obj) != bytes(raw):
        raise ProtocolError("not_deterministic", f"{name} input: not the shortest CBOR encoding of {obj}")
    return obj


def _decode_map(schema: Schema, raw: bytes) -> dict[str, Any]:
    try:
        return schema.decode(raw)
    except DecodeError as exc:
        raise ProtocolError(exc.reason, f"{schema.name}: {exc}") from None


def _missing_text(missing: Sequence[int]) -> str:
    return f"missing: {', '.join(map(str, missing))}" if missing else "none missing"


def _int_input(value: object) -> bytes:
    return dumps(_parse_int("sum/median", value, INT_MIN, INT_MAX, "an integer"))


def _decode_int_input(raw: bytes) -> int:
    return _decode_int("sum/median", raw, INT_MIN, INT_MAX)


# --- sum -----------------------------------------------------------------------------------------------------

SUM_RESULT = Schema(
    "smc.sum.result",
    [
        Field(0, "total", Int(INT_MIN * MAX_MODULES, INT_MAX * MAX_MODULES)),
        Field(1, "count", UInt(MAX_MODULES)),
        Field(2, "missing", _INDICES),
    ],
)


def _sum(vector: Vector) -> bytes:
    """The sum of the present inputs; missing ones are left out (the sum of none is 0)."""
    values, missing = _present(vector, _decode_int_input)
    return SUM_RESULT.encode({"total": sum(v for _, v in values), "count": len(values), "missing": missing})


def _sum_json(result: bytes) -> object:
    return _decode_map(SUM_RESULT, result)


def _render_sum(result: bytes) -> str:
    r = _decode_map(SUM_RESULT, result)
    return f"sum = {r['total']} over {r['count']} inputs ({_missing_text(r['missing'])})"


# --- median --------------------------------------------------------------------------------------------------

MEDIAN_RESULT = Schema(
    "smc.median.result",
    [
        Field(0, "median", Int(INT_MIN, INT_MAX), optional=True),
        Field(1, "count", UInt(MAX_MODULES)),
        Field(2, "missing", _INDICES),
    ],
)


def _median(vector: Vector) -> bytes:
    """The median of the present inputs; of an even count, the lower of the two middle values (so the median is
    always one of the inputs and an integer); no median when no input is present."""
    values, missing = _present(vector, _decode_int_input)
    ordered = sorted(v for _, v in values)
    median = ordered[(len(ordered) - 1) // 2] if ordered else None
    return MEDIAN_RESULT.encode({"median": median, "count": len(ordered), "missing": missing})


def _median_json(result: bytes) -> object:
    r = _decode_map(MEDIAN_RESULT, result)
    return {"median": r.get("median"), "count": r["count"], "missing": r["missing"]}


def _render_median(result: bytes) -> str:
    r = _decode_map(MEDIAN_RESULT, result)
    if "median" not in r:
        return f"no inputs, no median ({_missing_text(r['missing'])})"
    return f"median = {r['median']} of {r['count']} inputs ({_missing_text(r['missing'])})"


# --- vote ----------------------------------------------------------------------------------------------------

VOTE_COUNT = Schema("smc.vote.count", [Field(0, "choice", UInt(MAX_CHOICES - 1)), Field(1, "votes", UInt(MAX_MODULES))])
VOTE_RESULT = Schema(
    "smc.vote.result",
    [
        Field(0, "counts", ListOf(Nested(VOTE_COUNT), MAX_CHOICES)),
        Field(1, "winner", UInt(MAX_CHOICES - 1), optional=True),
        Field(2, "tied", ListOf(UInt(MAX_CHOICES - 1), MAX_CHOICES)),
        Field(3, "votes", UInt(MAX_MODULES)),
        Field(4, "missing", _INDICES),
    ],
)


def vote_function(choices: Sequence[str] = ()) -> FunctionSpec:
    """``vote`` over a declared ballot: ``choices`` are labels (choice k is ``choices[k]``), or none for the
    plain ballot of small integers 0..255. The labels go into the code hash, so modules only agree on terms if
    they hold the same ballot."""
    labels = tuple(choices)
    if len(labels) > MAX_CHOICES or len(set(labels)) != len(labels):
        raise ValueError(f"a ballot has at most {MAX_CHOICES} distinct choices")
    for label in labels:
        if not isinstance(label, str) or not 1 <= len(label.encode()) <= MAX_LABEL_BYTES or not label.isprintable():
            raise ValueError(f"a choice is 1..{MAX_LABEL_BYTES} bytes of printable text, got {label!r:.80}")
        if _INT_TEXT.fullmatch(label):
            raise ValueError(f"a choice label must not look like a number (it would shadow an index): {label!r}")
    top = len(labels) - 1 if labels else MAX_CHOICES - 1
    shown = ", ".join(labels) if labels else f"0..{top}"

    def name_of(choice: int) -> str | int:
        return labels[choice] if labels else choice

    def parse(value: object) -> bytes:
        if labels and isinstance(value, str) and value.strip() in labels:
            return dumps(labels.index(value.strip()))
        return dumps(_parse_int("vote", value, 0, top, f"a choice ({shown}) or its number"))

    def decode(raw: bytes) -> int:
        return _decode_int("vote", raw, 0, top)

    def compute(vector: Vector) -> bytes:
        """Votes per choice; missing inputs abstain. Winner: the most votes, a tie going to the lowest choice
        number; no winner without votes."""
        votes, missing = _present(vector, decode)
        tally = dict.fromkeys(range(len(labels)), 0)
        for _, choice in votes:
            tally[choice] = tally.get(choice, 0) + 1
        best = max(tally.values(), default=0)
        leaders = sorted(c for c, k in tally.items() if k == best and k > 0)
        counts = [{"choice": c, "votes": tally[c]} for c in sorted(tally)]
        fields = {"counts": counts, "votes": len(votes), "missing": missing}
        fields["tied"] = leaders if len(leaders) > 1 else []
        return VOTE_RESULT.encode({**fields, "winner": leaders[0] if leaders else None})

    def to_json(result: bytes) -> object:
        r = _decode_map(VOTE_RESULT, result)
        if any(c["choice"] > top for c in r["counts"]) or any(c > top for c in r["tied"]):
            raise ProtocolError("bad_result", f"vote result names a choice outside the ballot ({shown})")
        winner = r.get("winner")
        if winner is not None and winner > top:
            raise ProtocolError("bad_result", f"vote result names a winner outside the ballot ({shown})")
        return {
            "counts": {str(name_of(c["choice"])): c["votes"] for c in r["counts"]},
            "winner": None if winner is None else name_of(winner),
            "tied": [name_of(c) for c in r["tied"]],
            "votes": r["votes"],
            "missing": r["missing"],
        }

    def render(result: bytes) -> str:
        r: Any = to_json(result)
        counts = ", ".join(f"{k}: {v}" for k, v in r["counts"].items())
        if r["winner"] is None:
            return f"no votes, no winner ({_missing_text(r['missing'])})"
        tie = f"; tie with {', '.join(map(str, r['tied'][1:]))} broken by the lowest choice" if r["tied"] else ""
        return f"winner: {r['winner']} ({counts}{tie}; {_missing_text(r['missing'])})"

    return FunctionSpec(
        name="vote",
        summary=f"votes per choice ({shown}) and the winner",
        max_input_bytes=2,
        parse_input=parse,
        decode_input=decode,
        compute=compute,
        render_result=render,
        result_to_json=to_json,
        params=dumps(list(labels)) if labels else b"",
    )


# --- sealed-bid auctions -------------------------------------------------------------------------------------

AUCTION_RESULT = Schema(
    "smc.auction.result",
    [
        Field(0, "winner", _INDEX, optional=True),
        Field(1, "price", UInt(INT_MAX), optional=True),
        Field(2, "bids", UInt(MAX_MODULES)),
        Field(3, "missing", _INDICES),
    ],
)


def _bid_input(value: object) -> bytes:
    return dumps(_parse_int("auction", value, 0, INT_MAX, "a bid"))


def _decode_bid(raw: bytes) -> int:
    return _decode_int("auction", raw, 0, INT_MAX)


def _auction(vector: Vector, *, second_price: bool) -> bytes:
    """The highest bid wins, a tie going to the lowest party index. First price: the winner pays its bid.
    Second price: the highest other bid (equal to the winner's in a tie), or 0 if it is the only bid (a reserve
    price of 0). Missing inputs do not bid; without bids there is no winner and no price."""
    bids, missing = _present(vector, _decode_bid)
    ranked = sorted(bids, key=lambda bid: (-bid[1], bid[0]))
    fields: dict[str, object] = {"bids": len(bids), "missing": missing}
    if ranked:
        fields["winner"], fields["price"] = ranked[0]
        if second_price:
            fields["price"] = ranked[1][1] if len(ranked) > 1 else 0
    return AUCTION_RESULT.encode(fields)


def _first_price(vector: Vector) -> bytes:
    return _auction(vector, second_price=False)


def _second_price(vector: Vector) -> bytes:
    return _auction(vector, second_price=True)


def _auction_json(result: bytes) -> object:
    r = _decode_map(AUCTION_RESULT, result)
    if ("winner" in r) != ("price" in r):
        raise ProtocolError("bad_result", "an auction result has both a winner and a price, or neither")
    return {"winner": r.get("winner"), "price": r.get("price"), "bids": r["bids"], "missing": r["missing"]}


def _render_auction(result: bytes) -> str:
    r: Any = _auction_json(result)
    if r["winner"] is None:
        return f"no bids, no winner ({_missing_text(r['missing'])})"
    bids = f"{r['bids']} bid{'s' if r['bids'] != 1 else ''}"
    return f"party {r['winner']} wins and pays {r['price']} ({bids}; {_missing_text(r['missing'])})"


# --- fair exchange -------------------------------------------------------------------------------------------

EXPECT = Schema("smc.exchange.expect", [Field(0, "source", _INDEX), Field(1, "sha256", Bytes(32, 32))])
EXCHANGE_INPUT = Schema(
    "smc.exchange.input",
    [
        Field(0, "item", Bytes(EXCHANGE_MAX_INPUT_BYTES)),
        Field(1, "to", ListOf(_INDEX, MAX_MODULES)),
        Field(2, "expect", ListOf(Nested(EXPECT), MAX_MODULES)),
        Field(3, "key", Bytes(SEAL_KEY_BYTES, SEAL_KEY_BYTES)),
    ],
)
DELIVERY = Schema(
    "smc.exchange.delivery",
    [
        Field(0, "receiver", _INDEX),
        Field(1, "source", _INDEX),
        Field(2, "sealed", Bytes(EXCHANGE_MAX_INPUT_BYTES + 16)),
    ],
)
EXCHANGE_RESULT = Schema(
    "smc.exchange.result",
    [
        Field(0, "ok", Bool()),
        Field(1, "reason", Text(16), optional=True),
        Field(2, "parties", _INDICES),
        Field(3, "digest", Bytes(32, 32), optional=True),
        Field(4, "deliveries", ListOf(Nested(DELIVERY), MAX_MODULES * MAX_MODULES)),
    ],
)
ABORT_REASONS: Final = ("missing", "bad_input", "mismatch", "wrong_item")


@dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeInput:
    """One party's exchange input: its ``item``, the parties it gives it to (``to``), what it expects from whom
    (``expect``: source index and SHA-256 of the item), and the key its deliveries are sealed under."""

    item: bytes
    to: tuple[int, ...]
    expect: tuple[tuple[int, bytes], ...]
    key: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class ExchangeOutcome:
    """What one party gets from an exchange result: ``items`` (source, item) if ``ok``, else the abort ``reason``
    and the ``parties`` it names."""

    ok: bool
    reason: str | None
    parties: tuple[int, ...]
    items: tuple[tuple[int, bytes], ...]


def item_hash(item: bytes) -> bytes:
    """The description of an item another party expects: its SHA-256."""
    return profile.sha256(item)


def _hex(name: str, value: object, size: int | None, what: str) -> bytes:
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str) and re.fullmatch(r"(?:[0-9a-fA-F]{2})*", value):
        raw = bytes.fromhex(value)
    else:
        raise _bad(name, f"{what} is hexadecimal text, got {value!r:.40}")
    if size is not None and len(raw) != size:
        raise _bad(name, f"{what} is {size} bytes ({2 * size} hex digits), got {len(raw)}")
    return raw


def _index(value: object, what: str) -> int:
    return _parse_int("exchange", value, 0, MAX_MODULES - 1, what)


def _exchange_input(value: object) -> bytes:
    """From a JSON object (text or parsed): ``{"item": text | "item_hex": hex, "to": [indices],
    "expect": {"index": sha256 hex} or [[index, sha256 hex]], "key": 64 hex digits}``."""
    example = '{"item": "...", "to": [1], "expect": {"1": "<sha256 hex>"}, "key": "<64 hex digits>"}'
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError) as exc:
            raise _bad("exchange", f"the input is a JSON object like {example}: {exc}") from None
    if not isinstance(value, dict):
        raise _bad("exchange", f"the input is a JSON object like {example}")
    unknown = sorted(set(map(str, value)) - {"item", "item_hex", "to", "expect", "key"})
    if unknown or ("item" in value) == ("item_hex" in value) or "key" not in value:
        raise _bad("exchange", f"give exactly one of item/item_hex, and key, to, expect (unknown: {unknown})")
    item = value.get("item")
    if "item_hex" in value:
        item = _hex("exchange", value["item_hex"], None, "item_hex")
    elif isinstance(item, str):
        item = item.encode()
    if not isinstance(item, bytes):
        raise _bad("exchange", "item is text (or bytes); use item_hex for binary items")
    to, expect = value.get("to", []), value.get("expect", {})
    if not isinstance(to, list):
        raise _bad("exchange", "to is a list of the party indices that receive this party's item")
    pairs = list(expect.items()) if isinstance(expect, dict) else expect
    if not isinstance(pairs, list) or not all(isinstance(p, list | tuple) and len(p) == 2 for p in pairs):
        raise _bad("exchange", 'expect maps a party index to the SHA-256 of its item: {"1": "<64 hex digits>"}')
    targets = sorted({_index(j, "a receiver in to") for j in to})
    wanted = {_index(i, "a source in expect"): _hex("exchange", h, 32, "an expected SHA-256") for i, h in pairs}
    if len(targets) != len(to) or len(wanted) != len(pairs):
        raise _bad("exchange", "a party appears twice in to, or twice in expect")
    fields = {
        "item": item,
        "to": targets,
        "expect": [{"source": i, "sha256": wanted[i]} for i in sorted(wanted)],
        "key": _hex("exchange", value["key"], SEAL_KEY_BYTES, "key"),
    }
    try:
        return EXCHANGE_INPUT.encode(fields)
    except DecodeError as exc:
        raise ProtocolError(
            "input_too_large" if exc.reason == "oversize" else "bad_input", f"exchange: {exc}"
        ) from None


def decode_exchange_input(raw: bytes) -> ExchangeInput:
    """Strictly decode one exchange input (``to`` and ``expect`` in increasing index order, no repeats)."""
    f = _decode_map(EXCHANGE_INPUT, raw)
    expect = tuple((e["source"], e["sha256"]) for e in f["expect"])
    sources = [i for i, _ in expect]
    if f["to"] != sorted(set(f["to"])) or sources != sorted(set(sources)):
        raise _bad("exchange", "to and expect list parties in increasing order, each once")
    return ExchangeInput(item=f["item"], to=tuple(f["to"]), expect=expect, key=f["key"])


def _seal_key(key: bytes, digest: bytes, source: int, receiver: int) -> bytes:
    """A key used for one item only: fresh per (receiver's key, decided vector, source, receiver)."""
    pair = source.to_bytes(2, "big") + receiver.to_bytes(2, "big")
    return profile.hkdf(key, salt=digest, info=_SEAL_INFO + pair)


def _exchange(vector: Vector) -> bytes:
    """All or nothing. The exchange happens only if every input is present and decodes, the parties agree on
    who gives to whom (i lists j in ``to`` exactly when j lists i in ``expect``, never itself), and every item
    matches the SHA-256 its receiver expects. Then each receiver gets each item it expects, sealed under its own
    key; else everyone gets the same abort (reason and the parties at fault) and no item."""
    _check_vector(vector)
    n = len(vector)

    def abort(reason: str, parties: Sequence[int]) -> bytes:
        return EXCHANGE_RESULT.encode(
            {"ok": False, "reason": reason, "parties": sorted(set(parties)), "deliveries": []}
        )

    missing = [i for i, raw in enumerate(vector) if raw is None]
    if missing:
        return abort("missing", missing)
    inputs: list[ExchangeInput] = []
    for i, raw in enumerate(vector):
        try:
            inputs.append(decode_exchange_input(raw or b""))
        except ProtocolError:
            return abort("bad_input", [i])
    gives = {(i, j) for i, x in enumerate(inputs) for j in x.to}
    takes = {(i, j) for j, x in enumerate(inputs) for i, _ in x.expect}
    odd = (gives ^ takes) | {(i, j) for i, j in gives | takes if i == j or max(i, j) >= n}
    if odd:
        return abort("mismatch", [k for pair in odd for k in pair if k < n])
    wrong = [i for j, x in enumerate(inputs) for i, h in x.expect if item_hash(inputs[i].item) != h]
    if wrong:
        return abort("wrong_item", wrong)
    digest = profile.sha256(_DIGEST_LABEL + dumps(list(vector)))
    deliveries = [
        {
            "receiver": j,
            "source": i,
            "sealed": profile.CounterAead(_seal_key(x.key, digest, i, j)).seal(0, inputs[i].item),
        }
        for j, x in enumerate(inputs)
        for i, _ in x.expect
    ]
    return EXCHANGE_RESULT.encode({"ok": True, "parties": [], "digest": digest, "deliveries": deliveries})


def _exchange_result(result: bytes) -> dict[str, Any]:
    r = _decode_map(EXCHANGE_RESULT, result)
    if r["ok"] != ("digest" in r) or r["ok"] == ("reason" in r) or (not r["ok"] and r["deliveries"]):
        raise ProtocolError("bad_result", "an exchange result is ok with a digest, or an abort with a reason only")
    return r


def _exchange_json(result: bytes) -> object:
    r = _exchange_result(result)
    deliveries = [{"to": d["receiver"], "from": d["source"], "sealed": d["sealed"].hex()} for d in r["deliveries"]]
    out: dict[str, object] = {"ok": r["ok"], "reason": r.get("reason"), "parties": r["parties"]}
    return {**out, "digest": r["digest"].hex() if r["ok"] else None, "deliveries": deliveries}


def _render_exchange(result: bytes) -> str:
    r = _exchange_result(result)
    if r["ok"]:
        return f"exchange done: {len(r['deliveries'])} items delivered, each sealed to its receiver"
    named = f": parties {', '.join(map(str, r['parties']))}" if r["parties"] else ""
    return f"exchange aborted ({r['reason']}{named}); nobody receives anything"


def open_exchange(result: bytes, *, me: int, my_input: bytes) -> ExchangeOutcome:
    """Party ``me``'s part of an exchange result, opened with the seal key in ``my_input`` (its own input bytes)."""
    r = _exchange_result(result)
    key = decode_exchange_input(my_input).key
    items = []
    for d in r["deliveries"]:
        if d["receiver"] == me:
            sealer = profile.CounterAead(_seal_key(key, r["digest"], d["source"], me))
            try:
                items.append((d["source"], sealer.open(0, d["sealed"])))
            except CryptoError as exc:  # not sealed under this key
                raise ProtocolError("bad_seal", f"item from party {d['source']} does not open with my key") from exc
    return ExchangeOutcome(ok=r["ok"], reason=r.get("reason"), parties=tuple(r["parties"]), items=tuple(items))


# --- the registry --------------------------------------------------------------------------------------------

SUM = FunctionSpec(
    name="sum",
    summary="the sum of the parties' integers",
    max_input_bytes=INT_INPUT_BYTES,
    parse_input=_int_input,
    decode_input=_decode_int_input,
    compute=_sum,
    render_result=_render_sum,
    result_to_json=_sum_json,
)
MEDIAN = FunctionSpec(
    name="median",
    summary="the median of the parties' integers (the lower middle one of an even count)",
    max_input_bytes=INT_INPUT_BYTES,
    parse_input=_int_input,
    decode_input=_decode_int_input,
    compute=_median,
    render_result=_render_median,
    result_to_json=_median_json,
)
VOTE = vote_function()
AUCTION = FunctionSpec(
    name="auction",
    summary="sealed-bid first-price auction: the highest bid wins and pays its bid",
    max_input_bytes=INT_INPUT_BYTES,
    parse_input=_bid_input,
    decode_input=_decode_bid,
    compute=_first_price,
    render_result=_render_auction,
    result_to_json=_auction_json,
)
AUCTION2 = FunctionSpec(
    name="auction2",
    summary="sealed-bid second-price (Vickrey) auction: the highest bid wins and pays the second-highest",
    max_input_bytes=INT_INPUT_BYTES,
    parse_input=_bid_input,
    decode_input=_decode_bid,
    compute=_second_price,
    render_result=_render_auction,
    result_to_json=_auction_json,
)
EXCHANGE = FunctionSpec(
    name="exchange",
    summary="fair exchange (Avoine et al.): every item to the party expecting it, or nothing to anyone",
    max_input_bytes=EXCHANGE_MAX_INPUT_BYTES,
    min_input_bytes=len(EXCHANGE_INPUT.encode({"item": b"", "to": [], "expect": [], "key": bytes(32)})),
    parse_input=_exchange_input,
    decode_input=decode_exchange_input,
    compute=_exchange,
    render_result=_render_exchange,
    result_to_json=_exchange_json,
)
REGISTRY: Final = Registry([SUM, MEDIAN, VOTE, AUCTION, AUCTION2, EXCHANGE])
"""The functions every cardnet host knows."""
