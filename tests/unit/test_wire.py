"""Unit tests for the wire layer: Uid, Message, deterministic CBOR Schema, mtype registry.

Every ``DecodeError`` reason the wire layer promises is triggered here by a
concrete input, so a change of reason (which scripts match on) fails a test.
Round-trip properties per field type are checked with hypothesis.
"""

from __future__ import annotations

import struct
from typing import Any

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cardnet.errors import CardnetError
from cardnet.wire import (
    HEADER_BYTES,
    Bool,
    Bytes,
    DecodeError,
    Field,
    Int,
    ListOf,
    Message,
    MType,
    Nested,
    Schema,
    Text,
    Uid,
    UidType,
    UInt,
    by_name,
    lookup,
    register,
)
from cardnet.wire import mtypes as mtypes_mod
from cardnet.wire.cbor import MAX_NESTING, FieldType, dumps, loads_one
from cardnet.wire.ids import CARD_PORT, DOMAIN_BYTES, MAX_PORT, UID_BYTES
from cardnet.wire.message import DEFAULT_MAX_PARAM, MAX_MTYPE

DOMAIN = bytes(range(1, 13))
ALICE = Uid(DOMAIN, 0)
BOB = Uid(b"\xb0" * 12, 7)


def reason_of(exc_info: pytest.ExceptionInfo[DecodeError]) -> str:
    return exc_info.value.reason


# --------------------------------------------------------------------------- Uid


class TestUid:
    def test_sizes(self) -> None:
        assert (DOMAIN_BYTES, UID_BYTES, MAX_PORT, CARD_PORT) == (12, 16, 2**32 - 1, 0)

    def test_bytes_layout_is_domain_then_big_endian_port(self) -> None:
        uid = Uid(DOMAIN, 0x01020304)
        raw = bytes(uid)
        assert len(raw) == 16
        assert raw[:12] == DOMAIN
        assert raw[12:] == b"\x01\x02\x03\x04"
        assert Uid.from_bytes(raw) == uid

    def test_from_bytes_accepts_bytes_like(self) -> None:
        # Typed as bytes; bytearray and memoryview (e.g. a transport's buffer) work at run time.
        raw = bytes(BOB)
        assert Uid.from_bytes(bytearray(raw)) == BOB  # type: ignore[arg-type]
        assert Uid.from_bytes(memoryview(raw)) == BOB  # type: ignore[arg-type]
        assert type(Uid.from_bytes(memoryview(raw)).domain) is bytes  # type: ignore[arg-type]

    @pytest.mark.parametrize("n", [0, 1, 12, 15, 17, 32])
    def test_from_bytes_wrong_length(self, n: int) -> None:
        with pytest.raises(DecodeError) as ei:
            Uid.from_bytes(b"\x00" * n)
        assert reason_of(ei) == "bad_uid"
        assert "16 bytes" in str(ei.value)

    def test_text_form(self) -> None:
        uid = Uid(b"\x00" * 11 + b"\x2a", 0)
        assert str(uid) == "00000000000000000000002a:00000000"
        assert Uid.parse(str(uid)) == uid
        assert str(Uid(b"\xff" * 12, MAX_PORT)) == "ffffffffffffffffffffffff:ffffffff"

    def test_parse_lenient_forms(self) -> None:
        # A bare domain means the card (port 0); case and surrounding whitespace do not matter.
        assert Uid.parse("00000000000000000000002a") == Uid(b"\x00" * 11 + b"\x2a", 0)
        assert Uid.parse("  0102030405060708090A0B0C:0000000A\n") == Uid(DOMAIN, 10)

    @pytest.mark.parametrize(
        "text",
        [
            "",
            ":",
            "xyz",
            ":00000000",
            "0102030405060708090a0b0c:",
            "0102030405060708090a0b:00000000",  # short domain
            "0102030405060708090a0b0c0d:00000000",  # long domain
            "0102030405060708090a0b0c:0000000",  # short port
            "0102030405060708090a0b0c:000000000",  # long port
            "0102030405060708090a0b0c:00000000:00000000",
            "zz02030405060708090a0b0c:00000000",  # not hex
            "0102030405060708090a0b0c:0000000g",
            "0102030405060708090a0b0c:+0000001",  # int(x, 16) would take these ...
            "0102030405060708090a0b0c:-0000000",
            "0102030405060708090a0b0c:0x000001",
            "0102030405060708090a0b0c:0000_001",
            "0102030405060708090a0b0c: 0000001",
            "0102030405060708090a0b0c:\u0660\u0660\u0660\u0660\u0660\u0660\u0660\u0661",
            "01 02030405060708090a0b0c:00000000",  # ... and bytes.fromhex these
            "0102030405060708090a0b\u0661c:00000000",
        ],
    )
    def test_parse_errors(self, text: str) -> None:
        with pytest.raises(DecodeError) as ei:
            Uid.parse(text)
        assert reason_of(ei) == "bad_uid"
        assert repr(text) in str(ei.value)

    @pytest.mark.parametrize("n", [0, 11, 13, 16])
    def test_domain_length(self, n: int) -> None:
        with pytest.raises(DecodeError) as ei:
            Uid(b"\x00" * n, 0)
        assert reason_of(ei) == "bad_uid"

    @pytest.mark.parametrize("domain", [bytearray(12), "a" * 12, None, list(range(12))])
    def test_domain_must_be_bytes(self, domain: Any) -> None:
        with pytest.raises(DecodeError):
            Uid(domain, 0)

    @pytest.mark.parametrize("port", [0, 1, MAX_PORT])
    def test_port_range_ok(self, port: int) -> None:
        assert Uid(DOMAIN, port).port == port

    @pytest.mark.parametrize("port", [-1, MAX_PORT + 1, 2**64])
    def test_port_range_refused(self, port: int) -> None:
        with pytest.raises(DecodeError) as ei:
            Uid(DOMAIN, port)
        assert reason_of(ei) == "bad_uid"

    @pytest.mark.parametrize("port", [True, False, 1.0, "1", None])
    def test_port_must_be_int_not_bool(self, port: Any) -> None:
        with pytest.raises(DecodeError) as ei:
            Uid(DOMAIN, port)
        assert reason_of(ei) == "bad_uid"

    def test_helpers(self) -> None:
        card = Uid.card(DOMAIN)
        assert card.is_card and card.port == 0
        app = card.with_port(5)
        assert not app.is_card and app.domain == DOMAIN
        assert app.card_uid() == card
        assert app.short() == "…090a0b0c:5"
        assert sorted([Uid(DOMAIN, 2), Uid(DOMAIN, 1)]) == [Uid(DOMAIN, 1), Uid(DOMAIN, 2)]
        assert len({Uid(DOMAIN, 1), Uid(DOMAIN, 1)}) == 1
        with pytest.raises(AttributeError):
            card.port = 3  # type: ignore[misc]

    @given(st.binary(min_size=12, max_size=12), st.integers(0, MAX_PORT))
    def test_roundtrip_property(self, domain: bytes, port: int) -> None:
        uid = Uid(domain, port)
        assert Uid.from_bytes(bytes(uid)) == uid
        assert Uid.parse(str(uid)) == uid
        assert Uid.parse(str(uid).upper()) == uid
        assert len(str(uid)) == 33


# --------------------------------------------------------------------------- Message


class TestMessage:
    def test_header_is_34_bytes(self) -> None:
        assert HEADER_BYTES == 34
        raw = Message(ALICE, BOB, 1).encode()
        assert len(raw) == 34
        assert Message(ALICE, BOB, 1).size == 34

    def test_layout_offsets(self) -> None:
        msg = Message(ALICE, BOB, 0xABCD, b"param")
        raw = msg.encode()
        assert raw[0:16] == bytes(ALICE)
        assert raw[16:32] == bytes(BOB)
        assert raw[32:34] == b"\xab\xcd"
        assert raw[34:] == b"param"
        assert struct.unpack(">16s16sH", raw[:34]) == (bytes(ALICE), bytes(BOB), 0xABCD)
        assert msg.size == len(raw) == 39

    def test_roundtrip(self) -> None:
        msg = Message(ALICE, BOB, 0x0301, dumps({0: b"x"}))
        raw = msg.encode()
        assert Message.decode(raw) == msg
        assert Message.decode(bytearray(raw)) == msg  # type: ignore[arg-type]
        decoded = Message.decode(memoryview(raw))  # type: ignore[arg-type]
        assert decoded == msg and type(decoded.param) is bytes

    @pytest.mark.parametrize("n", [0, 1, 16, 32, 33])
    def test_truncated(self, n: int) -> None:
        raw = Message(ALICE, BOB, 1, b"abc").encode()[:n]
        with pytest.raises(DecodeError) as ei:
            Message.decode(raw)
        assert reason_of(ei) == "truncated"

    def test_oversize_via_max_param(self) -> None:
        raw = Message(ALICE, BOB, 1, b"\x00" * 100).encode()
        assert Message.decode(raw, max_param=100).param == b"\x00" * 100
        with pytest.raises(DecodeError) as ei:
            Message.decode(raw, max_param=99)
        assert reason_of(ei) == "oversize"
        assert "99" in str(ei.value)
        assert Message.decode(Message(ALICE, BOB, 1).encode(), max_param=0).param == b""

    def test_default_limit_is_16_mib_frame(self) -> None:
        assert DEFAULT_MAX_PARAM + HEADER_BYTES == 16 * 1024 * 1024

    @pytest.mark.parametrize("mtype", [0, 1, MAX_MTYPE])
    def test_mtype_range_ok(self, mtype: int) -> None:
        msg = Message(ALICE, BOB, mtype)
        assert Message.decode(msg.encode()).mtype == mtype

    @pytest.mark.parametrize("mtype", [-1, MAX_MTYPE + 1, 2**32])
    def test_mtype_range_refused(self, mtype: int) -> None:
        with pytest.raises(DecodeError) as ei:
            Message(ALICE, BOB, mtype)
        assert reason_of(ei) == "bad_mtype"

    def test_reply(self) -> None:
        r = Message(ALICE, BOB, 1, b"q").reply(2, b"a")
        assert (r.src, r.dst, r.mtype, r.param) == (BOB, ALICE, 2, b"a")

    @given(
        st.binary(min_size=16, max_size=16),
        st.binary(min_size=16, max_size=16),
        st.integers(0, MAX_MTYPE),
        st.binary(max_size=200),
    )
    def test_roundtrip_property(self, src: bytes, dst: bytes, mtype: int, param: bytes) -> None:
        msg = Message(Uid.from_bytes(src), Uid.from_bytes(dst), mtype, param)
        raw = msg.encode()
        assert raw == src + dst + mtype.to_bytes(2, "big") + param
        assert Message.decode(raw) == msg


# --------------------------------------------------------------------------- Schema

INNER = Schema("t.inner", [Field(0, "who", UidType()), Field(1, "n", UInt(1000), optional=True)])
ALL = Schema(
    "t.all",
    [
        Field(0, "b", Bytes(8, min_len=2)),
        Field(1, "t", Text(6)),
        Field(2, "u", UInt(1000)),
        Field(3, "i", Int(-5, 5)),
        Field(4, "f", Bool()),
        Field(5, "id", UidType()),
        Field(6, "xs", ListOf(UInt(), 3)),
        Field(7, "in", Nested(INNER)),
        Field(8, "opt", Text(10), optional=True),
    ],
)
GOOD: dict[str, Any] = {
    "b": b"ab",
    "t": "hi",
    "u": 7,
    "i": -5,
    "f": True,
    "id": BOB,
    "xs": [1, 2],
    "in": {"who": ALICE},
}


def wire_of(values: dict[str, Any]) -> dict[int, Any]:
    """The CBOR map of ``GOOD``-like values, with Uids as bytes (for hand-made bad params)."""
    return ALL.to_cbor(values, "t")


def bad(obj: object) -> bytes:
    """Deterministic CBOR of any object, even one no schema allows."""
    return cbor2.dumps(obj, canonical=True)


def decode_reason(raw: bytes, schema: Schema = ALL) -> str:
    with pytest.raises(DecodeError) as ei:
        schema.decode(raw)
    return reason_of(ei)


class TestSchema:
    def test_roundtrip_all_field_types(self) -> None:
        raw = ALL.encode(GOOD)
        assert ALL.decode(raw) == GOOD
        assert ALL.decode(bytearray(raw)) == GOOD  # type: ignore[arg-type]
        assert ALL.decode(memoryview(raw)) == GOOD  # type: ignore[arg-type]
        assert ALL.encode(dict(reversed(list(GOOD.items())))) == raw

    def test_wire_form_uses_small_int_keys(self) -> None:
        raw = ALL.encode(GOOD)
        assert raw[0] == 0xA8  # a map of 8 entries (the optional one omitted)
        assert cbor2.loads(raw) == {
            0: b"ab",
            1: "hi",
            2: 7,
            3: -5,
            4: True,
            5: bytes(BOB),
            6: [1, 2],
            7: {0: bytes(ALICE)},
        }

    def test_optional_fields(self) -> None:
        assert "opt" not in ALL.decode(ALL.encode(GOOD))
        assert ALL.encode({**GOOD, "opt": None}) == ALL.encode(GOOD)
        with_opt = ALL.decode(ALL.encode({**GOOD, "opt": "note"}))
        assert with_opt["opt"] == "note"
        assert ALL.decode(ALL.encode({**GOOD, "in": {"who": ALICE, "n": 3}}))["in"] == {"who": ALICE, "n": 3}

    def test_required_none_is_refused_on_encode(self) -> None:
        with pytest.raises(DecodeError) as ei:
            ALL.encode({**GOOD, "t": None})
        assert reason_of(ei) == "wrong_type"

    def test_duplicate_field_key_or_name_refused(self) -> None:
        with pytest.raises(ValueError, match="duplicate"):
            Schema("x", [Field(0, "a", Bool()), Field(0, "b", Bool())])
        with pytest.raises(ValueError, match="duplicate"):
            Schema("x", [Field(0, "a", Bool()), Field(1, "a", Bool())])

    # --- each field type: accepted and refused values (decode side)

    @pytest.mark.parametrize(
        ("value", "reason"),
        [(b"", "undersize"), (b"a", "undersize"), (b"x" * 9, "oversize"), ("ab", "wrong_type"), (1, "wrong_type")],
    )
    def test_bytes_field(self, value: object, reason: str) -> None:
        assert decode_reason(bad({**wire_of(GOOD), 0: value})) == reason
        assert ALL.decode(bad({**wire_of(GOOD), 0: b"x" * 8}))["b"] == b"x" * 8

    @pytest.mark.parametrize(
        ("value", "reason"),
        [("x" * 7, "oversize"), ("ééé" + "x", "oversize"), (b"hi", "wrong_type"), (0, "wrong_type")],
    )
    def test_text_field(self, value: object, reason: str) -> None:
        assert decode_reason(bad({**wire_of(GOOD), 1: value})) == reason
        # The limit counts UTF-8 bytes, not characters.
        assert ALL.decode(bad({**wire_of(GOOD), 1: "ééé"}))["t"] == "ééé"
        assert ALL.decode(bad({**wire_of(GOOD), 1: ""}))["t"] == ""

    @pytest.mark.parametrize(
        ("value", "reason"),
        [(-1, "wrong_type"), (1001, "oversize"), (True, "wrong_type"), (1.0, "wrong_type"), ("1", "wrong_type")],
    )
    def test_uint_field(self, value: object, reason: str) -> None:
        assert decode_reason(bad({**wire_of(GOOD), 2: value})) == reason
        assert ALL.decode(bad({**wire_of(GOOD), 2: 1000}))["u"] == 1000
        assert ALL.decode(bad({**wire_of(GOOD), 2: 0}))["u"] == 0

    def test_uint_default_is_uint64(self) -> None:
        s = Schema("u64", [Field(0, "v", UInt())])
        assert s.decode(s.encode({"v": 2**64 - 1})) == {"v": 2**64 - 1}
        # 2**64 only fits CBOR as a bignum (tag 2): too big for the field.
        assert decode_reason(bad({0: 2**64}), s) == "oversize"

    @pytest.mark.parametrize(
        ("value", "reason"), [(-6, "oversize"), (6, "oversize"), (False, "wrong_type"), (b"\x01", "wrong_type")]
    )
    def test_int_field(self, value: object, reason: str) -> None:
        assert decode_reason(bad({**wire_of(GOOD), 3: value})) == reason
        assert ALL.decode(bad({**wire_of(GOOD), 3: 5}))["i"] == 5

    def test_int_default_is_int64(self) -> None:
        s = Schema("i64", [Field(0, "v", Int())])
        for v in (-(2**63), 2**63 - 1, 0, -1):
            assert s.decode(s.encode({"v": v})) == {"v": v}
        assert decode_reason(bad({0: -(2**63) - 1}), s) == "oversize"
        assert decode_reason(bad({0: 2**63}), s) == "oversize"

    @pytest.mark.parametrize("value", [0, 1, None, "true", b"\x01"])
    def test_bool_field(self, value: object) -> None:
        assert decode_reason(bad({**wire_of(GOOD), 4: value})) == "wrong_type"
        assert ALL.decode(bad({**wire_of(GOOD), 4: False}))["f"] is False

    @pytest.mark.parametrize("value", [b"\x00" * 15, b"\x00" * 17, b"", str(BOB), 5, [bytes(BOB)]])
    def test_uid_field(self, value: object) -> None:
        assert decode_reason(bad({**wire_of(GOOD), 5: value})) == "wrong_type"
        decoded = ALL.decode(bad({**wire_of(GOOD), 5: bytes(ALICE)}))["id"]
        assert isinstance(decoded, Uid) and decoded == ALICE

    def test_uid_field_encode_wants_a_uid(self) -> None:
        with pytest.raises(DecodeError) as ei:
            ALL.encode({**GOOD, "id": bytes(BOB)})
        assert reason_of(ei) == "wrong_type"

    @pytest.mark.parametrize(
        ("value", "reason"),
        [([1, 2, 3, 4], "oversize"), ([1, -1], "wrong_type"), ([1, "a"], "wrong_type"), (b"", "wrong_type")],
    )
    def test_list_field(self, value: object, reason: str) -> None:
        assert decode_reason(bad({**wire_of(GOOD), 6: value})) == reason
        assert ALL.decode(bad({**wire_of(GOOD), 6: []}))["xs"] == []

    def test_list_field_encode(self) -> None:
        assert ALL.encode({**GOOD, "xs": (1, 2)}) == ALL.encode(GOOD)
        for value, reason in (([1, 2, 3, 4], "oversize"), ({1, 2}, "wrong_type"), ([True], "wrong_type")):
            with pytest.raises(DecodeError) as ei:
                ALL.encode({**GOOD, "xs": value})
            assert reason_of(ei) == reason

    def test_list_item_error_names_its_path(self) -> None:
        with pytest.raises(DecodeError, match=r"t\.all\.xs\[1\]"):
            ALL.decode(bad({**wire_of(GOOD), 6: [1, -1]}))

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            ({}, "missing_key"),
            ({0: bytes(ALICE), 9: 1}, "unknown_key"),
            ({0: bytes(ALICE), 1: 1001}, "oversize"),
            ({0: b"short"}, "wrong_type"),
            ([bytes(ALICE)], "wrong_type"),
        ],
    )
    def test_nested_field(self, value: object, reason: str) -> None:
        assert decode_reason(bad({**wire_of(GOOD), 7: value})) == reason

    def test_nested_error_names_its_path(self) -> None:
        with pytest.raises(DecodeError, match=r"t\.all\.in\.n"):
            ALL.decode(bad({**wire_of(GOOD), 7: {0: bytes(ALICE), 1: 1001}}))

    def test_nesting_depth_is_bounded(self) -> None:
        t: FieldType = UInt()
        for _ in range(MAX_NESTING + 2):
            t = ListOf(t, 1)
        deep = Schema("deep", [Field(0, "v", t)])
        value: Any = 1
        for _ in range(MAX_NESTING + 2):
            value = [value]
        assert decode_reason(bad({0: value}), deep) == "oversize"

    # --- every DecodeError reason, triggered by a concrete input

    @pytest.mark.parametrize("cut", [0, 1, 5, -1])
    def test_reason_truncated(self, cut: int) -> None:
        raw = ALL.encode(GOOD)
        assert decode_reason(raw[:cut]) == "truncated"

    def test_reason_trailing_bytes(self) -> None:
        assert decode_reason(ALL.encode(GOOD) + b"\x00") == "trailing_bytes"
        assert decode_reason(ALL.encode(GOOD) * 2) == "trailing_bytes"

    @pytest.mark.parametrize("obj", [[1], 1, b"", "map", None, True])
    def test_reason_wrong_type_top_level(self, obj: object) -> None:
        assert decode_reason(bad(obj)) == "wrong_type"

    @pytest.mark.parametrize("key", [9, 24, -1, 2**64, "b", b"\x00", True, 0.0, None])
    def test_reason_unknown_key(self, key: object) -> None:
        # Alone: True == 1 and 0.0 == 0 in a Python dict, so they cannot join GOOD's keys.
        assert decode_reason(bad({key: 1})) == "unknown_key"
        assert decode_reason(bad({**wire_of(GOOD), 9: 1})) == "unknown_key"

    def test_reason_unknown_key_on_encode(self) -> None:
        with pytest.raises(DecodeError) as ei:
            ALL.encode({**GOOD, "nope": 1})
        assert reason_of(ei) == "unknown_key"

    def test_reason_missing_key(self) -> None:
        m = wire_of(GOOD)
        del m[2]
        with pytest.raises(DecodeError, match="'u'") as ei:
            ALL.decode(bad(m))
        assert reason_of(ei) == "missing_key"
        values = dict(GOOD)
        del values["u"]
        with pytest.raises(DecodeError) as ei:
            ALL.encode(values)
        assert reason_of(ei) == "missing_key"

    def test_reason_oversize_and_undersize(self) -> None:
        assert decode_reason(bad({**wire_of(GOOD), 0: b"x" * 9})) == "oversize"
        assert decode_reason(bad({**wire_of(GOOD), 0: b"x"})) == "undersize"
        with pytest.raises(DecodeError) as ei:
            ALL.encode({**GOOD, "b": b"x" * 9})
        assert reason_of(ei) == "oversize"

    @pytest.mark.parametrize(
        "tamper",
        [
            # 7 as a one-byte head is 0x07; 0x18 0x07 is the same number, not shortest.
            pytest.param(lambda raw: raw.replace(b"\x02\x07", b"\x02\x18\x07", 1), id="non-shortest-int"),
            pytest.param(lambda raw: raw.replace(b"\x02\x07", b"\x02\x19\x00\x07", 1), id="non-shortest-int16"),
            pytest.param(lambda raw: raw.replace(b"\x00\x42ab", b"\x00\x58\x02ab"), id="non-shortest-length"),
            pytest.param(lambda raw: raw.replace(b"\x00\x42ab", b"\x00\x5f\x41a\x41b\xff"), id="indefinite-bytes"),
            pytest.param(lambda raw: raw.replace(b"\x01\x62hi", b"\x01\x7f\x62hi\xff"), id="indefinite-text"),
            pytest.param(lambda raw: b"\xbf" + raw[1:] + b"\xff", id="indefinite-map"),
            pytest.param(lambda raw: raw.replace(b"\x06\x82\x01\x02", b"\x06\x9f\x01\x02\xff"), id="indefinite-array"),
            pytest.param(lambda raw: raw.replace(b"\x02\x07", b"\x02\xc2\x41\x07", 1), id="bignum-for-small-int"),
        ],
    )
    def test_reason_not_deterministic(self, tamper: Any) -> None:
        raw = ALL.encode(GOOD)
        tampered = tamper(raw)
        assert tampered != raw
        # The tampered param means the same thing ...
        assert cbor2.loads(tampered) == cbor2.loads(raw)
        # ... but is not the one deterministic encoding of it.
        assert decode_reason(tampered) == "not_deterministic"

    @pytest.mark.parametrize(
        "wrap",
        [
            pytest.param(lambda raw: b"\xd9\xd9\xf7" + raw, id="self-describe-map"),
            pytest.param(lambda raw: b"\xc6" + raw, id="unknown-tag-map"),
            pytest.param(lambda raw: raw.replace(b"\x06\x82", b"\x06\xd9\xd9\xf7\x82", 1), id="tagged-array"),
            pytest.param(lambda raw: raw.replace(b"\x07\xa1", b"\x07\xc6\xa1", 1), id="tagged-nested"),
        ],
    )
    def test_tags_are_refused(self, wrap: Any) -> None:
        # No schema type is a CBOR tag: whatever a tag wraps, the param is refused (the reason
        # depends on what cbor2 turns the tagged item into, e.g. an immutable map -> wrong_type).
        with pytest.raises(DecodeError):
            ALL.decode(wrap(ALL.encode(GOOD)))

    def test_reason_not_deterministic_unsorted_keys(self) -> None:
        s = Schema("two", [Field(0, "a", UInt()), Field(1, "b", UInt())])
        assert s.encode({"b": 2, "a": 1}) == b"\xa2\x00\x01\x01\x02"
        assert decode_reason(b"\xa2\x01\x02\x00\x01", s) == "not_deterministic"

    def test_reason_not_deterministic_duplicate_keys(self) -> None:
        s = Schema("two", [Field(0, "a", UInt()), Field(1, "b", UInt())])
        assert decode_reason(b"\xa3\x00\x01\x00\x01\x01\x02", s) == "not_deterministic"
        one = Schema("one", [Field(0, "a", UInt()), Field(1, "b", UInt(), optional=True)])
        assert decode_reason(b"\xa2\x00\x01\x00\x05", one) == "not_deterministic"  # not "last one wins"

    @pytest.mark.parametrize(
        "raw",
        [
            b"\xff",  # a break with nothing to break
            b"\x1c",  # reserved additional information
            b"\xa1\x00\x61\xff",  # text that is not UTF-8
            b"\xa1\x00\xc1\xfb\x7f\xef\xff\xff\xff\xff\xff\xff",  # an epoch datetime no calendar holds
            b"\xa1\x00\xd8\x25\x41x",  # a UUID of one byte
            b"\xa1\x00\xd8\x1d\x05",  # a shared reference to nothing
            b"\x81" * 1000 + b"\x00",  # nesting beyond any decoder's patience
        ],
    )
    def test_reason_bad_cbor(self, raw: bytes) -> None:
        assert decode_reason(raw) == "bad_cbor"

    def test_loads_one_wants_bytes(self) -> None:
        with pytest.raises(DecodeError) as ei:
            loads_one("a0")  # type: ignore[arg-type]
        assert reason_of(ei) == "wrong_type"
        assert loads_one(b"\xa0") == {}

    def test_decode_error_type(self) -> None:
        with pytest.raises(DecodeError) as ei:
            ALL.decode(b"")
        err = ei.value
        assert isinstance(err, CardnetError) and isinstance(err, ValueError)
        assert repr(err).startswith("DecodeError('truncated', ")

    def test_dumps_is_deterministic(self) -> None:
        assert dumps({1: 1, 0: 0}) == dumps({0: 0, 1: 1}) == b"\xa2\x00\x00\x01\x01"
        assert dumps(23) == b"\x17" and dumps(24) == b"\x18\x18" and dumps(256) == b"\x19\x01\x00"


# --------------------------------------------------------------------------- hypothesis round trips per field type

uids = st.builds(Uid, st.binary(min_size=12, max_size=12), st.integers(0, MAX_PORT))

FIELD_CASES: list[tuple[str, FieldType, st.SearchStrategy[Any]]] = [
    ("bytes", Bytes(64, min_len=1), st.binary(min_size=1, max_size=64)),
    ("text", Text(40), st.text(max_size=10)),
    ("uint", UInt(), st.integers(0, 2**64 - 1)),
    ("uint_small", UInt(300), st.integers(0, 300)),
    ("int", Int(), st.integers(-(2**63), 2**63 - 1)),
    ("bool", Bool(), st.booleans()),
    ("uid", UidType(), uids),
    ("list", ListOf(Int(-(2**40), 2**40), 30), st.lists(st.integers(-(2**40), 2**40), max_size=30)),
    ("list_of_uids", ListOf(UidType(), 4), st.lists(uids, max_size=4)),
    ("nested", Nested(INNER), st.fixed_dictionaries({"who": uids}, optional={"n": st.integers(0, 1000)})),
]


@pytest.mark.parametrize(("ftype", "values"), [(c[1], c[2]) for c in FIELD_CASES], ids=[c[0] for c in FIELD_CASES])
@given(data=st.data())
def test_field_roundtrip_property(ftype: FieldType, values: st.SearchStrategy[Any], data: st.DataObject) -> None:
    schema = Schema("prop", [Field(0, "v", ftype), Field(23, "o", ftype, optional=True)])
    v = data.draw(values, label="v")
    o = data.draw(st.none() | values, label="o")
    fields = {"v": v} if o is None else {"o": o, "v": v}
    raw = schema.encode(fields)
    assert schema.encode(dict(reversed(list(fields.items())))) == raw  # deterministic
    assert raw == dumps(cbor2.loads(raw))  # already the canonical form
    assert schema.decode(raw) == fields
    assert schema.encode(schema.decode(raw)) == raw


@given(st.text(max_size=20))
def test_text_limit_counts_utf8_bytes_property(text: str) -> None:
    schema = Schema("t", [Field(0, "v", Text(20))])
    if len(text.encode()) <= 20:
        assert schema.decode(schema.encode({"v": text})) == {"v": text}
    else:
        with pytest.raises(DecodeError) as ei:
            schema.encode({"v": text})
        assert reason_of(ei) == "oversize"


# --------------------------------------------------------------------------- registry


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Isolate the global registry: each test sees a copy, whatever other modules registered."""
    monkeypatch.setattr(mtypes_mod, "_BY_CODE", dict(mtypes_mod._BY_CODE))
    monkeypatch.setattr(mtypes_mod, "_BY_NAME", dict(mtypes_mod._BY_NAME))


def free_codes(n: int) -> list[int]:
    """``n`` unregistered codes in the demo range (0x0f00-0x0fff)."""
    codes = [c for c in range(0x0FFF, 0x0EFF, -1) if c not in mtypes_mod._BY_CODE]
    return codes[:n]


PING = Schema("t.ping", [Field(0, "n", UInt()), Field(1, "who", UidType(), optional=True)])


@pytest.mark.usefixtures("registry")
class TestRegistry:
    def test_register_and_lookup(self) -> None:
        (code,) = free_codes(1)
        mt = register(code, "test.ping", "test", PING, privileged=True)
        assert isinstance(mt, MType)
        assert lookup(code) is mt and by_name("test.ping") is mt
        assert (mt.code, mt.name, mt.protocol, mt.schema, mt.privileged) == (code, "test.ping", "test", PING, True)
        assert mt in mtypes_mod.all_mtypes()
        codes = [m.code for m in mtypes_mod.all_mtypes()]
        assert codes == sorted(codes)

    def test_register_same_twice_is_ok(self) -> None:
        (code,) = free_codes(1)
        a = register(code, "test.ping", "test", PING)
        b = register(
            code,
            "test.ping",
            "test",
            Schema("t.ping", [Field(0, "n", UInt()), Field(1, "who", UidType(), optional=True)]),
        )
        assert a == b
        assert lookup(code) == a

    def test_conflicting_code_refused(self) -> None:
        (code,) = free_codes(1)
        register(code, "test.ping", "test", PING)
        with pytest.raises(ValueError, match=r"already test\.ping"):
            register(code, "test.other", "test", PING)
        with pytest.raises(ValueError):
            register(code, "test.ping", "test", Schema("t.pong", [Field(0, "n", UInt())]))
        with pytest.raises(ValueError):
            register(code, "test.ping", "test", PING, privileged=True)
        assert lookup(code).name == "test.ping"
        with pytest.raises(DecodeError):
            by_name("test.other")

    def test_conflicting_name_refused(self) -> None:
        code, other = free_codes(2)
        register(code, "test.ping", "test", PING)
        with pytest.raises(ValueError, match="already"):
            register(other, "test.ping", "test", PING)
        with pytest.raises(DecodeError) as ei:
            lookup(other)
        assert reason_of(ei) == "unknown_mtype"

    @pytest.mark.parametrize("code", [0, -1, MAX_MTYPE + 1])
    def test_code_range(self, code: int) -> None:
        with pytest.raises(ValueError, match=r"1\.\.65535"):
            register(code, "test.bad", "test", PING)

    def test_lookup_unknown(self) -> None:
        (code,) = free_codes(1)
        with pytest.raises(DecodeError) as ei:
            lookup(code)
        assert reason_of(ei) == "unknown_mtype"
        assert f"0x{code:04x}" in str(ei.value)
        with pytest.raises(DecodeError) as ei:
            by_name("test.no-such-mtype")
        assert reason_of(ei) == "unknown_mtype"

    def test_make_parse_roundtrip(self) -> None:
        (code,) = free_codes(1)
        mt = register(code, "test.ping", "test", PING)
        msg = mt.make(ALICE, BOB, n=5, who=ALICE)
        assert (msg.src, msg.dst, msg.mtype) == (ALICE, BOB, code)
        assert mt.parse(msg) == {"n": 5, "who": ALICE}
        assert mt.make_from(ALICE, BOB, {"n": 5, "who": ALICE}) == msg
        wire = Message.decode(msg.encode())
        assert mt.parse(wire) == {"n": 5, "who": ALICE}
        assert mtypes_mod.decode_param(wire) == {"n": 5, "who": ALICE}

    def test_make_validates(self) -> None:
        (code,) = free_codes(1)
        mt = register(code, "test.ping", "test", PING)
        with pytest.raises(DecodeError) as ei:
            mt.make(ALICE, BOB, n=-1)
        assert reason_of(ei) == "wrong_type"
        with pytest.raises(DecodeError) as ei:
            mt.make(ALICE, BOB)
        assert reason_of(ei) == "missing_key"

    def test_parse_of_wrong_mtype(self) -> None:
        code, other = free_codes(2)
        mt = register(code, "test.ping", "test", PING)
        msg = Message(ALICE, BOB, other, PING.encode({"n": 1}))
        with pytest.raises(DecodeError) as ei:
            mt.parse(msg)
        assert reason_of(ei) == "wrong_mtype"
        assert f"0x{other:04x}" in str(ei.value)
        with pytest.raises(DecodeError) as ei:
            mtypes_mod.decode_param(msg)
        assert reason_of(ei) == "unknown_mtype"

    def test_parse_strict(self) -> None:
        (code,) = free_codes(1)
        mt = register(code, "test.ping", "test", PING)
        with pytest.raises(DecodeError) as ei:
            mt.parse(Message(ALICE, BOB, code, PING.encode({"n": 1}) + b"\x00"))
        assert reason_of(ei) == "trailing_bytes"
