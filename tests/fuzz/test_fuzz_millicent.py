"""Fuzzing the Millicent decoders: scrip, requests (plain and sealed), replies, broker messages.

Bad input gets a refusal (a reply with a reason, or :class:`DecodeError` /
:class:`MillicentError`), never a crash; whatever decodes re-encodes to the
same bytes. Mutations of valid encodings reach past the first checks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
from collections.abc import Callable
from typing import Any

from fuzzing import cbor_or_bytes, mutations
from hypothesis import given, settings
from hypothesis import strategies as st

from cardnet.crypto import profile
from cardnet.protocols import millicent as mc
from cardnet.services.millicent import broker as mb
from cardnet.services.millicent import vendor as mv
from cardnet.services.millicent import wallet as mw
from cardnet.store import SqliteStore, StoreError
from cardnet.wire import HEADER_BYTES, DecodeError
from conftest import mutate

EXAMPLES = int(os.environ.get("CARDNET_FUZZ_EXAMPLES", "300"))
VID = bytes.fromhex("00000000000000a1")
NOW = 1_800_000_000
SECRETS = {0: b"s" * 32}
MASTERS = {i: bytes([i]) * 32 for i in range(256)}
VENDOR = mc.Vendor(VID, SECRETS, 0, MASTERS, {"page": mc.Product(3, b"hello")}, 3600)
SCRIP = mc.mint(SECRETS, index=0, vendor=VID, value=10, serial=1, customer_id=b"\x01" * 8, expiry=NOW + 60)
SECRET = mc.customer_secret(MASTERS, b"\x01" * 8)
VALID = {
    level: mc.make_request(SCRIP, rid=b"r" * 16, level=level, secret=SECRET, price=3, product="page")
    for level in mc.Level
}


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=400) | st.integers(0, 2**32).map(lambda s: mutate(SCRIP.encode(), random.Random(s))))
def test_scrip_decode_never_crashes_and_round_trips(raw: bytes) -> None:
    try:
        s = mc.Scrip.decode(raw)
    except DecodeError:
        return
    assert s.encode() == raw
    status, _ = VENDOR.check_scrip(raw, NOW)
    assert status in mc.Status


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.sampled_from(list(mc.Level)), st.integers(0, 2**32), st.booleans())
def test_vendor_prepare_refuses_garbage_with_a_reply(level: mc.Level, seed: int, random_bytes: bool) -> None:
    mt, param = VALID[level]
    r = random.Random(seed)
    data = r.randbytes(r.randint(0, 300)) if random_bytes else mutate(param, r)
    out = VENDOR.prepare(mt, data, NOW)
    if isinstance(out, mc.Candidate):
        if out.refusal is None:
            # Only a request that still proves everything is accepted: it must be the valid one's content.
            assert out.scrip.encode() == SCRIP.encode() and out.price == 3
            return
        rmt, reply = VENDOR.refuse(out, *out.refusal)
        opened = mc.open_reply(rmt, reply, rid=out.rid, level=out.level, secret=out.secret)
        assert opened.status != mc.Status.OK
        return
    _, reply = mc.refusal(out)
    assert mc.REPLY_SCHEMA.decode(reply)["status"] != mc.Status.OK


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.sampled_from([mc.REPLY.code, mc.SEALED_REPLY.code]), st.binary(max_size=400))
def test_open_reply_never_crashes(mtype: int, data: bytes) -> None:
    with contextlib.suppress(mc.MillicentError):
        mc.open_reply(mtype, data, rid=b"r" * 16, level=mc.Level.PRIVATE, secret=SECRET)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.integers(0, 2**32))
def test_mutated_replies_never_pass_as_accepted_at_level_2(seed: int) -> None:
    c = VENDOR.prepare(*VALID[mc.Level.THEFT], NOW)
    assert isinstance(c, mc.Candidate)
    mt, reply = VENDOR.accept(c, [5, 6], NOW)
    bad = mutate(reply, random.Random(seed))
    try:
        out = mc.open_reply(mt, bad, rid=b"r" * 16, level=mc.Level.THEFT, secret=SECRET)
    except mc.MillicentError:
        return
    if out.status == mc.Status.OK:  # only the genuine reply (or an equal re-encoding) passes the MAC
        assert out.change is not None and out.change.value == 7


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    st.sampled_from([mc.PURCHASE.code, mc.OPEN.code, mc.REDEEM.code, 0x07FF]),
    st.binary(max_size=300),
)
def test_broker_handles_garbage_with_a_refusal(mtype: int, data: bytes) -> None:
    from cardnet.wire import Message, Uid

    core = mb.BrokerCore(SqliteStore(":memory:", durable=False), rng=random.Random(1).randbytes)
    u = Uid(b"\x00" * 12, 1)
    reply = core.handle(Message(u, u, mtype, data), NOW)
    assert reply.mtype in (mc.PURCHASED.code, mc.OPENED.code, mc.REDEEMED.code)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    st.sampled_from(
        [
            mc.REQUEST_SCHEMA,
            mc.REPLY_SCHEMA,
            mc.SEALED_SCHEMA,
            mc.PURCHASE_SCHEMA,
            mc.PURCHASED_SCHEMA,
            mc.REDEEM_SCHEMA,
            mc.REDEEMED_SCHEMA,
            mc.OPEN_SCHEMA,
            mc.OPENED_SCHEMA,
            mc.BULK_BUY_SCHEMA,
            mc.BULK_SOLD_SCHEMA,
            mc.CATALOGUE_ASK_SCHEMA,
            mc.CATALOGUE_SCHEMA,
        ]
    ),
    st.binary(max_size=300),
)
def test_every_millicent_schema_decodes_strictly(schema: object, data: bytes) -> None:
    assert hasattr(schema, "decode")
    try:
        fields = schema.decode(data)  # type: ignore[attr-defined]
    except DecodeError:
        return
    assert schema.encode(fields) == data  # type: ignore[attr-defined]


CATALOGUE_VENDOR = mc.Vendor(
    VID, SECRETS, 0, MASTERS, {f"p{n}": mc.Product(n + 1, b"x") for n in range(mc.CATALOGUE_PAGE + 5)}, 3600
)
ASK_AFTER = mc.CATALOGUE_ASK_SCHEMA.encode({"after": "p1"})
CATALOGUE_PAGE = CATALOGUE_VENDOR.catalogue_page(ASK_AFTER)[1]


@settings(max_examples=EXAMPLES, deadline=None)
@given(cbor_or_bytes() | mutations(ASK_AFTER))
def test_the_vendor_answers_any_catalogue_ask_with_a_catalogue(data: bytes) -> None:
    mt, param = CATALOGUE_VENDOR.catalogue_page(data)
    f = mc.CATALOGUE_SCHEMA.decode(param)
    assert mt == mc.CATALOGUE.code and f["vendor"] == VID
    assert (f["status"] == mc.Status.OK) == (f.get("detail") is None)
    assert len(param) + HEADER_BYTES <= 14_252  # docs/millicent.md: the largest catalogue answer


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.sampled_from([mc.CATALOGUE.code, mc.REPLY.code]), cbor_or_bytes() | mutations(CATALOGUE_PAGE))
def test_open_catalogue_refuses_garbage_with_its_error_only(mtype: int, data: bytes) -> None:
    try:
        f = mc.open_catalogue(mtype, data, after="p1")
    except mc.MillicentError:
        return
    names = [p["name"] for p in f["products"]]
    assert names == sorted(set(names)) and all(n > "p1" for n in names)
    assert mc.CATALOGUE_SCHEMA.encode(f) == data


# --- the hand-rolled fast paths agree with the schemas -------------------------------------------

CODECS = [mc.REQUEST_CODEC, mc.REPLY_CODEC, mc.SEALED_CODEC]
ACCEPT = VENDOR.accept(VENDOR.prepare(*VALID[mc.Level.THEFT], NOW), 5, NOW)[1]  # type: ignore[arg-type]
SAMPLES = [VALID[mc.Level.VALIDATION][1], VALID[mc.Level.THEFT][1], VALID[mc.Level.PRIVATE][1], ACCEPT]


@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(
    st.sampled_from(CODECS),
    st.binary(max_size=400)
    | st.tuples(st.sampled_from(SAMPLES), st.integers(0, 2**32)).map(lambda t: mutate(t[0], random.Random(t[1]))),
)
def test_flat_codec_accepts_only_what_the_schema_accepts_and_decodes_the_same(codec: mc.FlatCodec, raw: bytes) -> None:
    fast = codec.fast_decode(raw)
    try:
        slow = codec.schema.decode(raw)
    except DecodeError:
        assert fast is None
        return
    if fast is not None:
        assert fast == slow
        assert codec.encode(fast) == raw == codec.schema.encode(slow)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    st.fixed_dictionaries(
        {"rid": st.binary(min_size=16, max_size=16), "status": st.integers(0, 255)},
        optional={
            "scrip_id": st.binary(min_size=8, max_size=8),
            "change": st.binary(min_size=54, max_size=300),
            "content": st.binary(max_size=300),
            "detail": st.text(max_size=40),
            "mac": st.binary(min_size=16, max_size=16),
        },
    )
)
def test_flat_codec_encodes_like_the_schema(values: dict[str, object]) -> None:
    try:
        expected = mc.REPLY_SCHEMA.encode(values)
    except DecodeError:
        with contextlib.suppress(DecodeError):
            mc.REPLY_CODEC.encode(values)
            raise AssertionError("the fast encoder took what the schema refuses") from None
        return
    assert mc.REPLY_CODEC.encode(values) == expected
    assert mc.REPLY_CODEC.decode(expected) == mc.REPLY_SCHEMA.decode(expected)


def test_the_hot_reply_is_the_generic_reply() -> None:
    c = VENDOR.prepare(*VALID[mc.Level.THEFT], NOW)
    assert isinstance(c, mc.Candidate)
    _, fast = VENDOR.accept(c, 5, NOW)
    f = mc.REPLY_SCHEMA.decode(fast)
    assert set(f) == {"rid", "status", "scrip_id", "change", "content", "mac"}
    assert f["mac"] == profile.hmac_sha256(SECRET, mc.reply_mac_input(f), mc.MAC_BYTES)
    generic = {k: v for k, v in f.items() if k != "mac"}
    generic["mac"] = profile.hmac_sha256(SECRET, mc.reply_mac_input(generic), mc.MAC_BYTES)
    assert mc.REPLY_SCHEMA.encode(generic) == fast
    out = mc.open_reply(mc.REPLY.code, fast, rid=b"r" * 16, level=mc.Level.THEFT, secret=SECRET)
    assert out.status == mc.Status.OK and out.change is not None and out.change.value == 7


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(min_size=1, max_size=64), st.binary(max_size=200), st.integers(16, 32))
def test_kept_hmac_states_give_the_profiles_hmac(key: bytes, data: bytes, length: int) -> None:
    macs = profile.HmacKeys(limit=2)
    expected = profile.hmac_sha256(key, data, length)
    assert macs.mac(key, data, length) == expected == macs.mac(key, data, length)
    assert macs.check(key, data, expected) and not macs.check(key, data + b"x", expected)
    assert not macs.check(key, data, expected[:15])


REQUESTS = [
    VALID[mc.Level.VALIDATION][1],
    VALID[mc.Level.THEFT][1],
    mc.make_request(
        SCRIP, rid=b"i" * 16, level=mc.Level.THEFT, secret=SECRET, price=3, op=mc.Op.ISSUE, for_customer=b"c" * 8
    )[1],
    mc.make_request(SCRIP, rid=b"p" * 16, level=mc.Level.THEFT, secret=SECRET, price=30, product="é" * 11)[1],
]


@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(
    st.binary(max_size=200)
    | st.tuples(st.sampled_from(REQUESTS), st.integers(0, 2**32)).map(lambda t: mutate(t[0], random.Random(t[1])))
)
def test_the_fixed_offset_request_decoder_accepts_only_what_the_schema_accepts(raw: bytes) -> None:
    fast = mc.decode_request_fast(raw)
    try:
        slow = mc.REQUEST_SCHEMA.decode(raw)
    except DecodeError:
        assert fast is None
        return
    assert fast is None or fast == slow


def test_the_fixed_offset_request_decoder_takes_the_usual_requests() -> None:
    for raw in REQUESTS[:3]:
        assert mc.decode_request_fast(raw) == mc.REQUEST_SCHEMA.decode(raw)
    assert mc.decode_request_fast(REQUESTS[3]) is None  # price 30 and a 22-byte product: the codec's path
    assert profile.sha256(REQUESTS[0]) == hashlib.sha256(REQUESTS[0]).digest()  # the copied state: plain SHA-256


# --- records read back from the services' stores -------------------------------------------------------

_LICENCE = {
    "index": 128,
    "scrip_secret": "ab" * 32,
    "redeem_key": "cd" * 32,
    "customer_masters": {"0": "ef" * 32},
    "discount_pct": 10,
}
_AGREEMENT = {
    "customer_id": "01" * 8,
    "customer_secret": "02" * 32,
    "order_key": "03" * 32,
    "discount_pct": 10,
    "vendor_at": "127.0.0.1:7200",
    "denomination": 100,
    "pieces": 10,
}
_SALE = {
    "vendor": VID.hex(),
    "address": "127.0.0.1:7200",
    "mtype": mc.REQUEST.code,
    "request": "00",
    "issue_rid": "72" * 16,
    "piece": SCRIP.encode().hex(),
    "value": 3,
    "want_secret": 1,
    "digest": "64" * 32,
}
_SPEND = {
    "kind": "spend",
    "to": "127.0.0.1:7200",
    "mtype": VALID[mc.Level.THEFT][0],
    "param": VALID[mc.Level.THEFT][1].hex(),
    "level": 2,
    "scrip": SCRIP.encode().hex(),
    "vendor": VID.hex(),
}
_BUY = {"kind": "buy", "to": "127.0.0.1:7100", "param": "00", "vendor": VID.hex(), "value": 10}
# Each decoder of a stored record, with a valid record of its kind (a JSON object, or bytes).
STORED: dict[str, tuple[Callable[[bytes], object], dict[str, Any] | bytes]] = {
    "spent": (mv.parse_spent, mv.spent_record(b"d" * 32, mc.REPLY.code, b"reply")),
    "account": (mb.parse_account, b"\x04" * 65 + (7).to_bytes(8, "big")),
    "stock": (mv.stored_scrip, SCRIP.encode()),
    "licence": (mb._Licence, _LICENCE),
    "agreement": (mb._Bulk, _AGREEMENT),
    "sale": (mb.parse_sale, _SALE),
    "spend": (mw.parse_pending, _SPEND),
    "buy": (mw.parse_pending, _BUY),
}
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def damaged_records(draw: st.DrawFn) -> tuple[str, bytes]:
    """A kind of record and bytes for it: random, a mutated valid one, or (JSON kinds) a field replaced."""
    kind = draw(st.sampled_from(sorted(STORED)))
    _decode, valid = STORED[kind]
    how = draw(st.sampled_from(["random", "mutated", "field"]))
    raw = valid if isinstance(valid, bytes) else json.dumps(valid).encode()
    if how == "random":
        return kind, draw(st.binary(max_size=200))
    if how == "mutated" or isinstance(valid, bytes):
        return kind, mutate(raw, random.Random(draw(st.integers(0, 2**32))))
    rec = dict(valid)
    key = draw(st.sampled_from(sorted(rec)))
    if draw(st.booleans()):
        del rec[key]
    else:
        rec[key] = draw(_JSON)
    return kind, json.dumps(rec).encode()


def test_stored_record_examples_decode() -> None:
    for decode, valid in STORED.values():
        decode(valid if isinstance(valid, bytes) else json.dumps(valid).encode())


@settings(max_examples=EXAMPLES * 3, deadline=None)
@given(damaged_records())
def test_stored_record_decoders_raise_only_the_stores_error(case: tuple[str, bytes]) -> None:
    """Damaged bytes in a vendor's, broker's or wallet's store give ``StoreError("damaged")``, nothing else."""
    kind, raw = case
    try:
        STORED[kind][0](raw)
    except StoreError as exc:
        assert exc.reason == "damaged" and "damaged" in str(exc)
