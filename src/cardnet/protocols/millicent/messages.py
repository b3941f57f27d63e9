"""Millicent's messages: schemas and codes, the hot path's flat codecs, MAC inputs, readers of the broker's answers.

See the package's docstring (``cardnet.protocols.millicent``) and docs/millicent.md."""

from __future__ import annotations

import itertools
import struct
from typing import Any

from cardnet.crypto import profile
from cardnet.crypto.errors import CryptoError
from cardnet.protocols.millicent.scrip import (
    _U32,
    CONTENT_MAX_BYTES,
    CUSTOMER_ID_BYTES,
    MAC_BYTES,
    MAX_VALUE,
    RID_BYTES,
    SCRIP_ID_BYTES,
    SCRIP_MAX_BYTES,
    SCRIP_MIN_BYTES,
    VENDOR_BYTES,
    MillicentError,
    Status,
)
from cardnet.wire import (
    HEADER_BYTES,
    Bool,
    Bytes,
    DecodeError,
    Field,
    ListOf,
    Nested,
    Schema,
    Text,
    UInt,
    head_bytes,
    max_encoded_bytes,
    register,
)

# --- messages -----------------------------------------------------------------------

_SCRIP = Bytes(SCRIP_MAX_BYTES, SCRIP_MIN_BYTES)
REQUEST_SCHEMA = Schema(
    "millicent.request",
    [
        Field(0, "scrip", _SCRIP),
        Field(1, "rid", Bytes(RID_BYTES, RID_BYTES)),
        Field(2, "op", UInt(2)),
        Field(3, "price", UInt(MAX_VALUE)),
        Field(4, "product", Text(128)),
        Field(5, "mac", Bytes(MAC_BYTES, MAC_BYTES), optional=True),
        Field(6, "for_customer", Bytes(CUSTOMER_ID_BYTES, CUSTOMER_ID_BYTES), optional=True),
    ],
)
SEALED_SCHEMA = Schema(
    "millicent.sealed",
    [
        Field(0, "customer_id", Bytes(CUSTOMER_ID_BYTES, CUSTOMER_ID_BYTES)),
        Field(1, "rid", Bytes(RID_BYTES, RID_BYTES)),
        Field(2, "box", Bytes(64 * 1024)),
    ],
)
REPLY_SCHEMA = Schema(
    "millicent.reply",
    [
        Field(0, "rid", Bytes(RID_BYTES, RID_BYTES)),
        Field(1, "status", UInt(255)),
        Field(2, "scrip_id", Bytes(SCRIP_ID_BYTES, SCRIP_ID_BYTES), optional=True),
        Field(3, "change", _SCRIP, optional=True),
        Field(4, "content", Bytes(CONTENT_MAX_BYTES), optional=True),
        Field(5, "issued", _SCRIP, optional=True),
        Field(6, "issued_secret", Bytes(128), optional=True),
        Field(7, "detail", Text(200), optional=True),
        Field(8, "mac", Bytes(MAC_BYTES, MAC_BYTES), optional=True),
    ],
)

# Customer <-> broker.
OPEN_SCHEMA = Schema("millicent.open", [Field(0, "pub", Bytes(profile.PUBLIC_KEY_BYTES, profile.PUBLIC_KEY_BYTES))])
OPENED_SCHEMA = Schema(
    "millicent.opened",
    [
        Field(0, "customer_id", Bytes(CUSTOMER_ID_BYTES, CUSTOMER_ID_BYTES), optional=True),
        Field(1, "status", UInt(255)),
        Field(2, "detail", Text(200), optional=True),
        Field(3, "key_box", Bytes(256), optional=True),  # the account's reply key, sealed (HPKE) to its key
    ],
)
PURCHASE_SCHEMA = Schema(
    "millicent.purchase",
    [
        Field(0, "customer_id", Bytes(CUSTOMER_ID_BYTES, CUSTOMER_ID_BYTES)),
        Field(1, "vendor", Bytes(VENDOR_BYTES, VENDOR_BYTES)),
        Field(2, "value", UInt(MAX_VALUE)),
        Field(3, "rid", Bytes(RID_BYTES, RID_BYTES)),
        Field(4, "want_secret", UInt(1)),
        Field(5, "sig", Bytes(profile.SIGNATURE_BYTES, profile.SIGNATURE_BYTES)),
    ],
)
PURCHASED_SCHEMA = Schema(
    "millicent.purchased",
    [
        Field(0, "rid", Bytes(RID_BYTES, RID_BYTES)),
        Field(1, "status", UInt(255)),
        Field(2, "scrip", _SCRIP, optional=True),
        Field(3, "secret_box", Bytes(1024), optional=True),
        Field(4, "balance", UInt(MAX_VALUE), optional=True),
        Field(5, "detail", Text(200), optional=True),
        Field(6, "mac", Bytes(MAC_BYTES, MAC_BYTES), optional=True),  # under the account's reply key
    ],
)
REDEEM_MAX_ITEMS = 10_000  # scrip ids in one redemption batch (a vendor with more sends several batches)
REDEEM_SCHEMA = Schema(
    "millicent.redeem",
    [
        Field(0, "vendor", Bytes(VENDOR_BYTES, VENDOR_BYTES)),
        Field(1, "batch", Bytes(RID_BYTES, RID_BYTES)),
        Field(2, "items", ListOf(Bytes(SCRIP_ID_BYTES + 8, SCRIP_ID_BYTES + 8), REDEEM_MAX_ITEMS)),
        Field(3, "mac", Bytes(MAC_BYTES, MAC_BYTES)),
    ],
)
REDEEMED_SCHEMA = Schema(
    "millicent.redeemed",
    [
        Field(0, "batch", Bytes(RID_BYTES, RID_BYTES)),
        Field(1, "status", UInt(255)),
        Field(2, "paid", UInt(MAX_VALUE), optional=True),
        Field(3, "duplicates", UInt(10_000), optional=True),
        Field(4, "detail", Text(200), optional=True),
        Field(5, "mac", Bytes(MAC_BYTES, MAC_BYTES), optional=True),  # under the licence's redeem key
    ],
)
# Broker <-> vendor: bulk purchase of scrip (the broker pays the vendor out of band, at a discount).
MAX_PIECES = 1000  # pieces of scrip in one bulk order
BULK_KEY_BYTES = 32
BULK_BUY_SCHEMA = Schema(
    "millicent.bulk_buy",
    [
        Field(0, "broker", Bytes(CUSTOMER_ID_BYTES, CUSTOMER_ID_BYTES)),  # the broker's customer id at the vendor
        Field(1, "order", Bytes(RID_BYTES, RID_BYTES)),
        Field(2, "value", UInt(MAX_VALUE)),  # total face value bought
        Field(3, "pieces", UInt(MAX_PIECES)),
        Field(4, "discount_pct", UInt(100)),
        Field(5, "mac", Bytes(MAC_BYTES, MAC_BYTES)),
    ],
)
BULK_SOLD_SCHEMA = Schema(
    "millicent.bulk_sold",
    [
        Field(0, "order", Bytes(RID_BYTES, RID_BYTES)),
        Field(1, "status", UInt(255)),
        Field(2, "scrip", ListOf(_SCRIP, MAX_PIECES), optional=True),
        Field(3, "price", UInt(MAX_VALUE), optional=True),  # what the broker owes for the order
        Field(4, "detail", Text(200), optional=True),
        Field(5, "mac", Bytes(MAC_BYTES, MAC_BYTES), optional=True),
    ],
)

# Customer <-> vendor, before paying: what the vendor sells and at what price, a page at a time, by name.
PRODUCT_NAME_MAX_BYTES = 128  # a product's name in UTF-8 (what a request can name)
CATALOGUE_PAGE = 100  # products in one catalogue answer
CATALOGUE_ASK_SCHEMA = Schema(
    "millicent.catalogue_ask", [Field(0, "after", Text(PRODUCT_NAME_MAX_BYTES), optional=True)]
)
CATALOGUE_ENTRY_SCHEMA = Schema(
    "millicent.catalogue_entry",
    [Field(0, "name", Text(PRODUCT_NAME_MAX_BYTES)), Field(1, "price", UInt(MAX_VALUE))],
)
CATALOGUE_SCHEMA = Schema(
    "millicent.catalogue",
    [
        Field(0, "vendor", Bytes(VENDOR_BYTES, VENDOR_BYTES)),
        Field(1, "status", UInt(255)),
        Field(2, "products", ListOf(Nested(CATALOGUE_ENTRY_SCHEMA), CATALOGUE_PAGE)),
        Field(3, "more", Bool()),
        Field(4, "detail", Text(200), optional=True),
    ],
)

P = "millicent"
REQUEST = register(0x0701, "millicent.request", P, REQUEST_SCHEMA)
SEALED_REQUEST = register(0x0702, "millicent.sealed_request", P, SEALED_SCHEMA)
REPLY = register(0x0703, "millicent.reply", P, REPLY_SCHEMA)
SEALED_REPLY = register(0x0704, "millicent.sealed_reply", P, SEALED_SCHEMA)
OPEN = register(0x0710, "millicent.open", P, OPEN_SCHEMA)
OPENED = register(0x0711, "millicent.opened", P, OPENED_SCHEMA)
PURCHASE = register(0x0712, "millicent.purchase", P, PURCHASE_SCHEMA)
PURCHASED = register(0x0713, "millicent.purchased", P, PURCHASED_SCHEMA)
REDEEM = register(0x0714, "millicent.redeem", P, REDEEM_SCHEMA)
REDEEMED = register(0x0715, "millicent.redeemed", P, REDEEMED_SCHEMA)
BULK_BUY = register(0x0716, "millicent.bulk_buy", P, BULK_BUY_SCHEMA)
BULK_SOLD = register(0x0717, "millicent.bulk_sold", P, BULK_SOLD_SCHEMA)
CATALOGUE_ASK = register(0x0718, "millicent.catalogue_ask", P, CATALOGUE_ASK_SCHEMA)
CATALOGUE = register(0x0719, "millicent.catalogue", P, CATALOGUE_SCHEMA)


# --- receive limits: the largest request each server takes (bytes of one message, its 34-byte header included) ----
# A frame above its server's limit is refused at its header, never read (docs/millicent.md, "Receive limits").


def _message_bytes(schema: Schema) -> int:
    return HEADER_BYTES + max_encoded_bytes(schema)


_GCM_TAG_BYTES = 16  # a sealed request's box is the level-2 request's params, sealed (AES-256-GCM) with this tag
_SEALED_BOX_BYTES = max_encoded_bytes(REQUEST_SCHEMA) + _GCM_TAG_BYTES
VENDOR_MAX_REQUEST = max(
    _message_bytes(REQUEST_SCHEMA),  # 537: a level-2 request, scrip with 255 bytes of properties, 128-byte product
    _message_bytes(SEALED_SCHEMA)  # 586: the same, sealed (level 3); the schema's box bound is the reply's
    - max_encoded_bytes(SEALED_SCHEMA.by_name["box"].type)
    + head_bytes(_SEALED_BOX_BYTES)
    + _SEALED_BOX_BYTES,
    _message_bytes(BULK_BUY_SCHEMA),  # 98
    _message_bytes(CATALOGUE_ASK_SCHEMA),  # 166
)
BROKER_MAX_REQUEST = max(_message_bytes(OPEN_SCHEMA), _message_bytes(PURCHASE_SCHEMA))  # a purchase: 152
BROKER_MAX_REDEEM = _message_bytes(REDEEM_SCHEMA)  # REDEEM_MAX_ITEMS (10,000) items: 170,085
# With margin (a message kind may grow a field): any larger frame is no Millicent request.
VENDOR_RECV_LIMIT = 4096
BROKER_RECV_LIMIT = 4096
BROKER_REDEEM_RECV_LIMIT = 256 * 1024


def request_too_large(mtype: int, size: int, limit: int, server: str) -> tuple[int, bytes]:
    """``(mtype, param)`` of the answer to a request begun above ``server``'s receive limit (``vendor`` or
    ``broker``), refused at its header: unread, for no request id, in words (the connection is then closed). A
    vendor answers ``millicent.reply`` ``malformed``; a broker answers in the kind of the request
    (``opened``, ``redeemed``, else ``purchased``), refused."""
    words = (
        f"the request (mtype 0x{mtype:04x}) is {size} bytes, above this {server}'s limit of {limit}: it was not "
        "read and the connection is closed; no Millicent request is that large"
    )[:200]
    if server == "vendor":
        return REPLY.code, REPLY_SCHEMA.encode({"rid": bytes(RID_BYTES), "status": int(Status.MALFORMED),
                                                "detail": words})  # fmt: skip
    if mtype == OPEN.code:
        return OPENED.code, OPENED_SCHEMA.encode({"status": 1, "detail": words})
    if mtype == REDEEM.code:
        return REDEEMED.code, REDEEMED_SCHEMA.encode({"batch": bytes(RID_BYTES), "status": 1, "detail": words})
    return PURCHASED.code, PURCHASED_SCHEMA.encode({"rid": bytes(RID_BYTES), "status": 1, "detail": words})


class FlatCodec:
    """Hand-rolled deterministic CBOR for a flat schema (byte strings, text and unsigned integers).

    The hot messages (request, reply) are decoded and encoded here without
    building CBOR objects twice. It is a *fast path* only: :meth:`decode`
    returns None for anything that is not plainly valid and in deterministic
    form (shortest heads, definite lengths, keys increasing, nothing after the
    map), and the caller then takes ``schema.decode``, which names the fault;
    whatever it accepts the schema accepts with the same fields (a property
    test checks that). :meth:`encode` falls back to ``schema.encode`` for
    anything unusual, so its errors are the schema's.
    """

    __slots__ = ("_by_key", "_required", "_sorted", "schema")

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        spec: dict[int, tuple[str, int, int, int]] = {}
        for f in schema.fields:
            t = f.type
            if isinstance(t, Bytes):
                spec[f.key] = (f.name, 2, t.min_len, t.max_len)
            elif isinstance(t, Text):
                spec[f.key] = (f.name, 3, 0, t.max_len)
            elif isinstance(t, UInt):
                spec[f.key] = (f.name, 0, 0, t.max_value)
            else:  # pragma: no cover - a schema this codec was not written for
                raise TypeError(f"{schema.name}.{f.name}: FlatCodec handles bytes, text and uint only")
            if not 0 <= f.key < 24:  # pragma: no cover
                raise TypeError(f"{schema.name}.{f.name}: keys are 0..23 (one byte)")
        self._by_key = spec
        self._sorted = tuple((k, *spec[k]) for k in sorted(spec))
        self._required = frozenset(f.name for f in schema.fields if not f.optional)

    def decode(self, raw: bytes) -> dict[str, Any]:
        """Strict decode: the fast path, else the schema's (only :class:`DecodeError` escapes)."""
        out = self.fast_decode(raw)
        return out if out is not None else self.schema.decode(raw)

    def fast_decode(self, raw: bytes) -> dict[str, Any] | None:
        if type(raw) is not bytes or not raw:
            return None
        n = len(raw)
        h = raw[0]
        count = h & 0x1F
        if h & 0xE0 != 0xA0 or count >= 24:
            return None
        by_key = self._by_key
        out: dict[str, Any] = {}
        i, prev = 1, -1
        for _ in range(count):
            if i + 2 > n:
                return None
            key = raw[i]
            spec = by_key.get(key) if key > prev else None
            if spec is None:
                return None
            prev = key
            h = raw[i + 1]
            i += 2
            if h >> 5 != spec[1]:
                return None
            v = h & 0x1F
            if v >= 24:
                if v == 24:
                    if i >= n or raw[i] < 24:
                        return None
                    v = raw[i]
                    i += 1
                elif 25 <= v <= 27:
                    w = 1 << (v - 24)  # 2, 4 or 8 bytes
                    if i + w > n:
                        return None
                    v = int.from_bytes(raw[i : i + w], "big")
                    i += w
                    if v < 1 << (4 * w):  # not the shortest head (256, 65536, 2**32)
                        return None
                else:
                    return None
            if spec[1] == 0:
                if v > spec[3]:
                    return None
                out[spec[0]] = v
                continue
            if not spec[2] <= v <= spec[3] or i + v > n:
                return None
            value = raw[i : i + v]
            i += v
            if spec[1] == 3:
                try:
                    out[spec[0]] = value.decode("utf-8")
                except UnicodeDecodeError:
                    return None
            else:
                out[spec[0]] = value
        if i != n or not self._required.issubset(out.keys()):
            return None
        return out

    def encode(self, values: dict[str, Any]) -> bytes:
        """Deterministic CBOR of ``values`` (what ``schema.encode`` gives, checked the same way)."""
        parts: list[bytes] = []
        for key, name, major, lo, hi in self._sorted:
            v = values.get(name)
            if v is None:
                continue
            if major == 0:
                if type(v) is not int or not 0 <= v <= hi:
                    return self.schema.encode(values)
                parts.append(bytes((key,)) + cbor_head(0, v))
                continue
            if major == 3:
                if type(v) is not str:
                    return self.schema.encode(values)
                try:
                    v = v.encode("utf-8")
                except UnicodeEncodeError:
                    return self.schema.encode(values)
            elif type(v) is not bytes:
                return self.schema.encode(values)
            if not lo <= len(v) <= hi:
                return self.schema.encode(values)
            parts.append(bytes((key,)) + cbor_head(major, len(v)) + v)
        if len(parts) != len(values) or len(parts) >= 24:
            return self.schema.encode(values)  # unknown names or None values: the schema explains
        return bytes((0xA0 | len(parts),)) + b"".join(parts)


_H1, _H2, _H4, _H8 = (
    struct.Struct(">BB").pack,
    struct.Struct(">BH").pack,
    struct.Struct(">BI").pack,
    struct.Struct(">BQ").pack,
)


def cbor_head(major: int, n: int) -> bytes:
    """The shortest CBOR head of major type ``major`` with argument ``n``."""
    m = major << 5
    if n < 24:
        return bytes((m | n,))
    if n < 0x100:
        return _H1(m | 24, n)
    if n < 0x10000:
        return _H2(m | 25, n)
    if n < 0x100000000:
        return _H4(m | 26, n)
    return _H8(m | 27, n)


def decode_request_fast(raw: bytes) -> dict[str, Any] | None:
    """The usual request, read at fixed offsets; None for any other layout (then take :data:`REQUEST_CODEC`).

    The usual layout: ``map(5..7) {0: scrip (54..255 bytes), 1: rid (16),
    2: op (0..2), 3: price (0..23), 4: product (text, 0..23 bytes),
    [5: mac (16)], [6: for_customer (8)]}`` in deterministic CBOR. Whatever
    this accepts, ``REQUEST_SCHEMA.decode`` accepts with the same fields (a
    property test checks that).
    """
    if type(raw) is not bytes:
        return None
    n = len(raw)
    head = raw[0] if n else 0
    if not 0xA5 <= head <= 0xA7 or n < 82 or raw[1] != 0 or raw[2] != 0x58 or raw[3] < SCRIP_MIN_BYTES:
        return None
    e = 4 + raw[3]  # end of the scrip
    if n < e + 24 or raw[e] != 1 or raw[e + 1] != 0x50 or raw[e + 18] != 2 or raw[e + 20] != 3 or raw[e + 22] != 4:
        return None
    op, price, t = raw[e + 19], raw[e + 21], raw[e + 23]
    if op > 2 or price >= 24 or not 0x60 <= t <= 0x77:
        return None
    i = e + 24 + t - 0x60
    try:
        product = raw[e + 24 : i].decode("utf-8")
    except UnicodeDecodeError:
        return None
    out: dict[str, Any] = {"scrip": raw[4:e], "rid": raw[e + 2 : e + 18], "op": op, "price": price, "product": product}
    if i + 18 <= n and raw[i] == 5 and raw[i + 1] == 0x50:
        out["mac"] = raw[i + 2 : i + 18]
        i += 18
    if i + 10 <= n and raw[i] == 6 and raw[i + 1] == 0x48:
        out["for_customer"] = raw[i + 2 : i + 10]
        i += 10
    if i != n or head != 0xA0 | len(out):
        return None
    return out


REQUEST_CODEC = FlatCodec(REQUEST_SCHEMA)
REPLY_CODEC = FlatCodec(REPLY_SCHEMA)
SEALED_CODEC = FlatCodec(SEALED_SCHEMA)


def length_prefixed(*parts: bytes) -> bytes:
    """Length-prefixed concatenation (unambiguous MAC input)."""
    out: list[bytes] = []
    for p in parts:
        out.append(_U32(len(p)))
        out.append(p)
    return b"".join(out)


_OP_PRICE = struct.Struct(">IBQ").pack  # len 9, op, price: the length-prefixed op/price part of a request MAC


def request_mac_input(f: dict[str, Any]) -> bytes:
    rid, scrip = f["rid"], f["scrip"]
    product = f["product"].encode("utf-8", "surrogatepass")
    fc = f.get("for_customer") or b""
    return b"".join(
        (
            b"MCRQ",
            _U32(len(rid)),
            rid,
            _U32(len(scrip)),
            scrip,
            _OP_PRICE(9, f["op"], f["price"]),
            _U32(len(product)),
            product,
            _U32(len(fc)),
            fc,
        )
    )


def reply_mac_input(f: dict[str, Any]) -> bytes:
    return b"MCRP" + length_prefixed(
        f["rid"],
        bytes([f["status"]]),
        f.get("scrip_id") or b"",
        f.get("change") or b"",
        f.get("content") or b"",
        f.get("issued") or b"",
        f.get("issued_secret") or b"",
        (f.get("detail") or "").encode("utf-8", "surrogatepass"),
    )


def box_key(secret: bytes, rid: bytes, customer_id: bytes) -> profile.CounterAead:
    """Level 3: one AES-256-GCM key per request (HKDF of the customer secret and the request id).

    Counter 0 seals the request, 1 the reply, 2 an issued customer secret: a
    (key, nonce) pair is never reused as long as request ids are unique.
    """
    key = profile.hkdf(secret, salt=rid, info=b"millicent box\x00" + customer_id)
    return profile.CounterAead(key)


def open_catalogue(mtype: int, param: bytes, *, after: str | None = None) -> dict[str, Any]:
    """A vendor's catalogue page (the answer to a ``millicent.catalogue_ask`` sent with ``after``), checked:
    fields, status OK, names in increasing order and after ``after`` (so paging ends). MillicentError if not.

    It is neither MACed nor signed, and need not be: a customer may hold no secret of the vendor yet, and a
    Millicent vendor has no key pair. A forged page can only mislead about what is sold: a purchase at a price
    that is not the vendor's is refused ``wrong_price`` with the vendor's MACed price, nothing spent.
    """
    if mtype != CATALOGUE.code:
        raise MillicentError("bad_reply", f"expected a catalogue, got mtype 0x{mtype:04x}")
    try:
        f = CATALOGUE_SCHEMA.decode(param)
    except DecodeError as exc:
        raise MillicentError("bad_reply", f"the catalogue is unreadable: {exc}") from None
    if f["status"] != Status.OK:
        why = "store_failed" if f["status"] == Status.UNAVAILABLE else "refused"
        raise MillicentError(why, f"the vendor refused: {f.get('detail', '')}")
    names = [p["name"] for p in f["products"]]
    if any(b <= a for a, b in itertools.pairwise(names)) or (after is not None and names and names[0] <= after):
        raise MillicentError("bad_reply", "the catalogue's products are not in name order after the last page")
    if f["more"] and not names:
        raise MillicentError("bad_reply", "the catalogue says more products follow but gave none")
    return f


def redeem_mac_input(vendor: bytes, batch: bytes, items: list[bytes]) -> bytes:
    return b"MCRD" + length_prefixed(vendor, batch, b"".join(items))


def redeemed_mac_input(vendor: bytes, f: dict[str, Any]) -> bytes:
    """What the broker MACs in its answer to a redemption: the vendor, the batch, the verdict and the sums."""
    sums = struct.pack(">BQI", f["status"], f.get("paid", 0), f.get("duplicates", 0))
    return b"MCRA" + length_prefixed(vendor, f["batch"], sums, f.get("detail", "").encode())


def open_redeemed(mtype: int, param: bytes, *, vendor: bytes, batch: bytes, key: bytes) -> dict[str, Any]:
    """Check the broker's answer to the redemption ``batch``: its fields, if MACed with the licence's redeem key.

    Raises :class:`MillicentError` otherwise: anyone on the wire could answer "paid", and a vendor that forgot
    its redeemable rows on such an answer would never be paid for them.
    """
    if mtype != REDEEMED.code:
        raise MillicentError("bad_reply", f"mtype 0x{mtype:04x} is not the broker's answer to a redemption")
    try:
        f = REDEEMED_SCHEMA.decode(param)
    except DecodeError as exc:
        raise MillicentError("bad_reply", f"the broker's answer is unreadable: {exc}") from None
    if f["batch"] != batch:
        raise MillicentError("bad_reply", "the answer is to another redemption batch")
    broker_macd(key, redeemed_mac_input(vendor, f), f)
    return f


def broker_macd(key: bytes, mac_input: bytes, f: dict[str, Any]) -> None:
    """A broker's answer ``f`` carries a MAC over ``mac_input`` under ``key``, or :class:`MillicentError`."""
    if "mac" not in f:
        raise MillicentError("unauthenticated", f"an answer without the broker's MAC ({f.get('detail', '')!r})")
    try:
        profile.hmac_verify(key, mac_input, f["mac"])
    except CryptoError:
        raise MillicentError("unauthenticated", "the answer's MAC does not check: not the broker's answer") from None
