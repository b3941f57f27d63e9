"""Fuzzing every wire decoder with hypothesis.

The contract (DESIGN.md section 8): bad input gets a :class:`DecodeError`,
never another exception and never a hang; and whatever a decoder accepts
re-encodes to exactly the bytes (or canonical text) it came from, so there is
one wire form per value.

Inputs are random bytes, random CBOR built from arbitrary data (to get past
the CBOR parser into the schema checks), and mutations of valid encodings
(bit flips, truncations, insertions, deletions, overwrites). Each test keeps
``max_examples`` small so the file stays fast; set ``CARDNET_FUZZ_EXAMPLES``
(e.g. 20000) for a long hunt.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import cbor2
from fuzzing import budget, fuzz_settings
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cardnet.wire import (
    Bool,
    Bytes,
    DecodeError,
    Field,
    Int,
    ListOf,
    Message,
    Nested,
    Schema,
    Text,
    Uid,
    UidType,
    UInt,
)
from cardnet.wire.cbor import FieldType, dumps, loads_one
from cardnet.wire.ids import MAX_PORT
from cardnet.wire.message import HEADER_BYTES, MAX_MTYPE

N = budget(300)

FUZZ = fuzz_settings(300, deadline_s=2, large_data=True)

# --------------------------------------------------------------------------- a rich schema

INNER = Schema(
    "fuzz.inner",
    [
        Field(0, "who", UidType()),
        Field(1, "amount", UInt(10**12)),
        Field(2, "tags", ListOf(Text(16), 4), optional=True),
    ],
)
RICH = Schema(
    "fuzz.rich",
    [
        Field(0, "oid", Bytes(32, min_len=32)),
        Field(1, "src", UidType()),
        Field(2, "delta", Int(-1000, 1000)),
        Field(3, "flag", Bool(), optional=True),
        Field(4, "note", Text(64), optional=True),
        Field(5, "parts", ListOf(Nested(INNER), 8)),
        Field(6, "sigs", ListOf(Bytes(64), 3), optional=True),
        Field(7, "matrix", ListOf(ListOf(UInt(), 4), 4), optional=True),
        Field(8, "child", Nested(INNER), optional=True),
        Field(23, "big", UInt(), optional=True),
    ],
)

uids = st.builds(Uid, st.binary(min_size=12, max_size=12), st.integers(0, MAX_PORT))


def values_for(ftype: FieldType) -> st.SearchStrategy[Any]:
    """Valid Python values of a field type (mirrors the type's limits)."""
    if isinstance(ftype, Bytes):
        return st.binary(min_size=ftype.min_len, max_size=ftype.max_len)
    if isinstance(ftype, Text):
        return st.text(max_size=ftype.max_len // 4)
    if isinstance(ftype, UInt):
        return st.integers(0, ftype.max_value)
    if isinstance(ftype, Int):
        return st.integers(ftype.min_value, ftype.max_value)
    if isinstance(ftype, Bool):
        return st.booleans()
    if isinstance(ftype, UidType):
        return uids
    if isinstance(ftype, ListOf):
        return st.lists(values_for(ftype.item), max_size=ftype.max_items)
    if isinstance(ftype, Nested):
        return schema_values(ftype.schema)
    raise AssertionError(f"no strategy for {ftype!r}")


def schema_values(schema: Schema) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {f.name: values_for(f.type) for f in schema.fields if not f.optional},
        optional={f.name: values_for(f.type) for f in schema.fields if f.optional},
    )


rich_values = schema_values(RICH)
valid_rich = rich_values.map(RICH.encode)

# Arbitrary CBOR-able data: gets random input past the CBOR parser into the schema checks.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.integers(-30, 30)
    | st.floats(allow_nan=True)
    | st.binary(max_size=40)
    | st.text(max_size=10)
)
cbor_data = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.integers(-2, 25) | st.text(max_size=2), inner, max_size=6)
    ),
    max_leaves=20,
)
cbor_maps = st.dictionaries(st.integers(0, 25), cbor_data, max_size=8)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[bytes]) -> bytes:
    """A valid encoding with a few random edits."""
    buf = bytearray(draw(base))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite", "dup"]))
        pos = draw(st.integers(0, len(buf)))
        if op == "flip" and buf:
            i = min(pos, len(buf) - 1)
            buf[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "truncate":
            del buf[pos:]
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=9))
        elif op == "delete":
            del buf[pos : pos + draw(st.integers(1, 9))]
        elif op == "overwrite" and buf:
            i = min(pos, len(buf) - 1)
            # Heads that matter most: lengths, indefinite markers, tags, breaks, floats.
            buf[i] = draw(st.sampled_from([0x00, 0x17, 0x18, 0x1B, 0x5F, 0x7F, 0x9F, 0xBF, 0xC2, 0xD8, 0xF9, 0xFF]))
        elif op == "dup":
            buf[pos:pos] = buf[pos : pos + draw(st.integers(1, 16))]
    return bytes(buf)


Draw = Callable[[st.SearchStrategy[Any]], Any]


def _head(draw: Draw, major: int, n: int) -> bytes:
    """A CBOR head for ``n``, in the shortest form or (when drawn) any longer one."""
    widths = [w for w, limit in ((1, 2**8), (2, 2**16), (4, 2**32), (8, 2**64)) if n < limit]
    choices = ([0] if n < 24 else []) + widths
    width = draw(st.sampled_from(choices))
    if width == 0:
        return bytes([major << 5 | n])
    return bytes([major << 5 | {1: 24, 2: 25, 4: 26, 8: 27}[width]]) + n.to_bytes(width, "big")


def _chunks(draw: Draw, value: Any) -> list[Any]:
    cuts = sorted(draw(st.lists(st.integers(0, len(value)), max_size=3)))
    bounds = [0, *cuts, len(value)]
    return [value[a:b] for a, b in itertools.pairwise(bounds)]


def loose_encode(draw: Draw, obj: Any) -> bytes:
    """Any valid CBOR encoding of ``obj`` (ints, bools, bytes, text, lists, int-keyed maps):
    heads of any width, definite or indefinite lengths, map keys in any order."""
    if isinstance(obj, bool):
        return b"\xf5" if obj else b"\xf4"
    if isinstance(obj, int):
        return _head(draw, 0, obj) if obj >= 0 else _head(draw, 1, -1 - obj)
    if isinstance(obj, (bytes, str)):
        major = 2 if isinstance(obj, bytes) else 3

        def definite(v: bytes | str) -> bytes:
            raw = v if isinstance(v, bytes) else v.encode()
            return _head(draw, major, len(raw)) + raw

        if draw(st.booleans()):
            return definite(obj)
        # Indefinite length: definite chunks of the same major type (text cut between characters).
        return bytes([major << 5 | 31]) + b"".join(definite(c) for c in _chunks(draw, obj)) + b"\xff"
    if isinstance(obj, list):
        items = b"".join(loose_encode(draw, v) for v in obj)
        return _head(draw, 4, len(obj)) + items if draw(st.booleans()) else b"\x9f" + items + b"\xff"
    if isinstance(obj, dict):
        keys = draw(st.permutations(list(obj)))
        items = b"".join(loose_encode(draw, k) + loose_encode(draw, obj[k]) for k in keys)
        return _head(draw, 5, len(obj)) + items if draw(st.booleans()) else b"\xbf" + items + b"\xff"
    raise AssertionError(f"cannot encode {obj!r}")


# --------------------------------------------------------------------------- helpers


def rich_decodes_canonically(raw: bytes) -> None:
    """``RICH.decode`` raises DecodeError or returns values that re-encode to ``raw``."""
    try:
        values = RICH.decode(raw)
    except DecodeError:
        return
    assert RICH.encode(values) == raw


def uid_canonical_text(text: str) -> str:
    """The text :meth:`Uid.parse` accepts, written as ``str(Uid)`` would write it."""
    t = text.strip().lower()
    return t if ":" in t else t + ":00000000"


# --------------------------------------------------------------------------- Message and Uid


@FUZZ
@given(st.binary(max_size=120))
@example(b"")
@example(b"\x00" * HEADER_BYTES)
@example(b"\xff" * (HEADER_BYTES + 1))
def test_message_decode_random(raw: bytes) -> None:
    try:
        msg = Message.decode(raw, max_param=64)
    except DecodeError as exc:
        assert exc.reason in ("truncated", "oversize")
        return
    assert msg.encode() == raw
    assert 0 <= msg.mtype <= MAX_MTYPE


@FUZZ
@given(
    mutated(
        st.builds(lambda s, d, m, p: Message(s, d, m, p).encode(), uids, uids, st.integers(0, MAX_MTYPE), valid_rich)
    )
)
def test_message_and_param_mutated(raw: bytes) -> None:
    try:
        msg = Message.decode(raw)
    except DecodeError:
        return
    assert msg.encode() == raw
    rich_decodes_canonically(msg.param)


@FUZZ
@given(st.binary(max_size=40))
def test_uid_from_bytes_random(raw: bytes) -> None:
    try:
        uid = Uid.from_bytes(raw)
    except DecodeError as exc:
        assert exc.reason == "bad_uid"
        assert len(raw) != 16
        return
    assert bytes(uid) == raw


hexish = st.text(alphabet="0123456789abcdefABCDEF:", min_size=0, max_size=40)
nearly_uid = st.builds(
    lambda d, p, junk, pos: (d + ":" + p)[:pos] + junk + (d + ":" + p)[pos:],
    st.text(alphabet="0123456789abcdef", min_size=24, max_size=24),
    st.text(alphabet="0123456789abcdef", min_size=8, max_size=8),
    st.sampled_from(["", " ", "+", "-", "_", "0x", "\u0661", "\u00a0", "\n", ":", "g", "\x00", "\U0001d7ce"]),
    st.integers(0, 33),
)


@FUZZ
@given(st.text(max_size=40) | hexish | nearly_uid)
@example("0" * 24 + ":+0000001")
@example("0" * 24 + ":0000_001")
def test_uid_parse_random(text: str) -> None:
    try:
        uid = Uid.parse(text)
    except DecodeError as exc:
        assert exc.reason == "bad_uid"
        return
    assert str(uid) == uid_canonical_text(text)
    assert Uid.parse(str(uid)) == uid


# --------------------------------------------------------------------------- CBOR and schemas


@FUZZ
@given(st.binary(max_size=200))
@example(b"\x9b\x00\x00\x00\x10\x00\x00\x00\x00")  # an array claiming 2**36 items
@example(b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff")  # a byte string claiming 2**64 - 1 bytes
@example(b"\xd8\x1c\x81\xd8\x1d\x00")  # an array that contains itself
@example(b"\x81" * 5000)
def test_loads_one_random(raw: bytes) -> None:
    try:
        loads_one(raw)
    except DecodeError as exc:
        assert exc.reason in ("truncated", "trailing_bytes", "bad_cbor")


@FUZZ
@given(st.binary(max_size=300))
def test_schema_decode_random_bytes(raw: bytes) -> None:
    rich_decodes_canonically(raw)


@FUZZ
@given(cbor_maps, st.booleans())
def test_schema_decode_random_cbor(obj: dict[int, Any], canonical: bool) -> None:
    rich_decodes_canonically(cbor2.dumps(obj, canonical=canonical))


@FUZZ
@given(rich_values, st.data())
def test_schema_decode_near_valid_maps(values: dict[str, Any], data: st.DataObject) -> None:
    """A valid map with one field replaced by arbitrary data, or an unknown key added."""
    wire = RICH.to_cbor(values, "fuzz")
    key = data.draw(st.sampled_from([*wire, 9, 24]))
    wire[key] = data.draw(cbor_data)
    rich_decodes_canonically(dumps(wire))


@FUZZ
@given(mutated(valid_rich))
def test_schema_decode_mutated(raw: bytes) -> None:
    rich_decodes_canonically(raw)


@FUZZ
@given(rich_values, st.data())
def test_schema_decode_equivalent_encodings(values: dict[str, Any], data: st.DataObject) -> None:
    """The same param in any other valid CBOR form is refused as not_deterministic."""
    canonical = RICH.encode(values)
    raw = loose_encode(data.draw, RICH.to_cbor(values, "fuzz"))
    assert cbor2.loads(raw) == cbor2.loads(canonical)
    if raw == canonical:
        assert RICH.decode(raw) == values
        return
    try:
        RICH.decode(raw)
    except DecodeError as exc:
        assert exc.reason == "not_deterministic", exc
    else:
        raise AssertionError(f"accepted a non-deterministic encoding: {raw.hex()}")


@settings(max_examples=max(50, N // 3), deadline=timedelta(seconds=2))
@given(rich_values)
def test_schema_roundtrip(values: dict[str, Any]) -> None:
    raw = RICH.encode(values)
    assert RICH.decode(raw) == values
    assert RICH.encode(RICH.decode(raw)) == raw
    assert dumps(cbor2.loads(raw)) == raw
