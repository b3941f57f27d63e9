"""Millicent scrip micropayments (Glassman et al. 1995; Coulouris et al. pp. 303-306), sans-I/O.

Theory of operation
-------------------
*Scrip* is vendor-specific cash: ``vendor, value, scrip id, customer id,
expiry, properties, certificate`` (the paper's fields, in that order). The
certificate is HMAC-SHA256 over the other fields, truncated to 128 bits,
keyed with one of the vendor's 256-bit *master scrip secrets*; the secret is
chosen by the first byte of the scrip id (the 8-bit master secret index), so
secrets can be rotated (new scrip under a new index, old scrip still valid
until it expires, then the old secret is dropped).

A customer proves ownership with her *customer secret*
``HMAC(customer master secret, customer id)``, the customer master secret
chosen by the first byte of the customer id. Three protection levels:

1. validation only: scrip in the clear, nothing MACed (theft possible);
2. theft protection: request and reply MACed with the customer secret; the
   vendor checks the MAC with the secret of the scrip's customer id, so
   someone else's scrip is refused as ``stolen``;
3. confidentiality: request and reply sealed (AES-256-GCM) under a key
   derived from the customer secret and the request id.

The vendor validates (certificate, vendor, expiry, customer binding, price)
in :meth:`Vendor.prepare`, which needs no state; the *spent* check is the
service's first-wins insert of the scrip (keyed ``expiry || scrip id`` so the
spent list can be pruned in key order); :meth:`Vendor.accept` then makes the
change scrip and the reply, which the service stores with the spent record
and sends only after that record is durable. A request whose scrip is
already spent gets the stored reply back when it is the very same request
(a customer re-fetching a lost reply), else ``spent``.

A broker gets scrip under a vendor's *licence* (it holds one master scrip
secret and mints) or buys it in *bulk*: ``millicent.bulk_buy`` (value,
pieces, the agreed discount), MACed with an order key the two share, answered
by ``millicent.bulk_sold`` with scrip bound to the broker's own customer id;
the broker then pays with that scrip (``Op.ISSUE``) for scrip bound to a
customer, and never holds a master secret.

The hot path (request decode, accepting reply) has hand-written encoders and
decoders that give exactly the schemas' bytes and fields, or step aside for
the schemas (:func:`decode_request_fast`, :class:`FlatCodec`, ``_buy_reply``).

Nothing here reads a clock or draws randomness: ``now`` (Unix seconds), new
serial numbers and request ids come in as arguments.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from cardnet.crypto import profile
from cardnet.crypto.errors import CryptoError
from cardnet.errors import CardnetError
from cardnet.wire import Bool, Bytes, DecodeError, Field, ListOf, Nested, Schema, Text, UInt, register

# --- sizes --------------------------------------------------------------------------

VERSION = 1
VENDOR_BYTES = 8
SCRIP_ID_BYTES = 8  # master secret index (1) + serial (7)
CUSTOMER_ID_BYTES = 8  # customer master secret index (1) + account number (7)
CERT_BYTES = 16  # HMAC-SHA256 truncated to 128 bits, the paper's digest size
MASTER_SECRET_BYTES = 32  # 256-bit (the paper's 64-bit secrets are too short today)
RID_BYTES = 16  # request id
MAC_BYTES = 16
MAX_PROPERTIES = 255
CONTENT_MAX_BYTES = 60 * 1024  # a product's content in one reply (``millicent.reply.content``): larger is refused
MAX_SERIAL = 2**56 - 1
MAX_VALUE = 2**63 - 1
_HEAD = struct.Struct(">B8sQ8s8sIB")
_U32 = struct.Struct(">I").pack  # version, vendor, value, scrip id, customer id, expiry, len(properties)
SCRIP_MIN_BYTES = _HEAD.size + CERT_BYTES  # 54
SCRIP_MAX_BYTES = SCRIP_MIN_BYTES + MAX_PROPERTIES


class Level(IntEnum):
    """The paper's three protection levels."""

    VALIDATION = 1
    THEFT = 2
    PRIVATE = 3


class Status(IntEnum):
    """The outcome of a request: accepted, or the reason it was refused."""

    OK = 0
    FORGED = 1  # certificate does not verify (or unknown master secret index)
    STOLEN = 2  # the request is not MACed with the secret of the scrip's customer
    SPENT = 3  # the scrip id is in the spent list (and this is not a re-fetch)
    EXPIRED = 4
    WRONG_VENDOR = 5
    INSUFFICIENT = 6  # value below the price
    MALFORMED = 7
    UNKNOWN_PRODUCT = 8
    LEVEL_TOO_LOW = 9  # the vendor requires a higher protection level
    TOO_LARGE = 10  # the reply would be too large to deliver (a product above the frame limit): nothing was spent
    WRONG_PRICE = 11  # the price is not the vendor's (the detail names it: :func:`asked_price`): nothing was spent


class Op(IntEnum):
    BUY = 0  # buy a product; change comes back
    RENEW = 1  # exchange old scrip for new (same value, fresh expiry)
    ISSUE = 2  # pay with own scrip for scrip bound to another customer (broker bulk mode)


class MillicentError(CardnetError):
    """A Millicent object is malformed or a peer's reply does not check (``reason`` says which)."""


# --- scrip --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scrip:
    """One piece of scrip, exactly the paper's fields. ``expiry`` is Unix seconds."""

    vendor: bytes
    value: int
    scrip_id: bytes
    customer_id: bytes
    expiry: int
    properties: bytes
    certificate: bytes

    @property
    def secret_index(self) -> int:
        return self.scrip_id[0]

    @property
    def serial(self) -> int:
        return int.from_bytes(self.scrip_id[1:], "big")

    def body(self) -> bytes:
        """Every field but the certificate, as encoded (what the certificate covers)."""
        return _HEAD.pack(
            VERSION, self.vendor, self.value, self.scrip_id, self.customer_id, self.expiry, len(self.properties)
        ) + bytes(self.properties)

    def encode(self) -> bytes:
        """The compact binary form: 54 bytes + properties (see docs/millicent.md)."""
        return self.body() + self.certificate

    @classmethod
    def decode(cls, raw: bytes) -> Scrip:
        """Strict decode; only :class:`DecodeError` escapes (the certificate is not checked here)."""
        if not isinstance(raw, bytes):
            raise DecodeError("wrong_type", f"scrip must be bytes, got {type(raw).__name__}")
        if len(raw) < SCRIP_MIN_BYTES:
            raise DecodeError("truncated", f"scrip is at least {SCRIP_MIN_BYTES} bytes, got {len(raw)}")
        version, vendor, value, sid, cid, expiry, plen = _HEAD.unpack_from(raw)
        if version != VERSION:
            raise DecodeError("bad_version", f"scrip version {version} is not {VERSION}")
        if len(raw) != SCRIP_MIN_BYTES + plen:
            raise DecodeError(
                "bad_length", f"scrip with {plen} property bytes is {SCRIP_MIN_BYTES + plen} bytes, got {len(raw)}"
            )
        if value > MAX_VALUE:
            raise DecodeError("oversize", f"scrip value {value} is above {MAX_VALUE}")
        end = _HEAD.size + plen
        return cls(vendor, value, sid, cid, expiry, raw[_HEAD.size : end], raw[end:])


def scrip_id(index: int, serial: int) -> bytes:
    if not 0 <= index <= 255 or not 0 <= serial <= MAX_SERIAL:
        raise MillicentError("bad_scrip_id", f"index 0..255 and serial 0..{MAX_SERIAL}, got {index}, {serial}")
    return bytes([index]) + serial.to_bytes(7, "big")


def certify(secret: bytes, body: bytes) -> bytes:
    """The certificate: HMAC-SHA256(master scrip secret, fields) truncated to 128 bits."""
    return profile.hmac_sha256(secret, body, CERT_BYTES)


def mint(
    secrets: dict[int, bytes],
    *,
    index: int,
    vendor: bytes,
    value: int,
    serial: int,
    customer_id: bytes,
    expiry: int,
    properties: bytes = b"",
) -> Scrip:
    """Make scrip (vendor, or a broker under the vendor's licence for ``index``)."""
    if len(vendor) != VENDOR_BYTES or len(customer_id) != CUSTOMER_ID_BYTES:
        raise MillicentError("bad_scrip", f"vendor and customer ids are {VENDOR_BYTES} bytes")
    if not 0 <= value <= MAX_VALUE or not 0 <= expiry < 2**32 or len(properties) > MAX_PROPERTIES:
        raise MillicentError("bad_scrip", "value, expiry or properties out of range")
    if index not in secrets:
        raise MillicentError("no_secret", f"no master scrip secret with index {index}")
    sid = scrip_id(index, serial)
    body = _HEAD.pack(VERSION, vendor, value, sid, customer_id, expiry, len(properties)) + properties
    return Scrip(vendor, value, sid, customer_id, expiry, properties, certify(secrets[index], body))


_OPS = tuple(Op)


def customer_secret(customer_masters: dict[int, bytes], customer_id: bytes) -> bytes:
    """HMAC-SHA256(customer master secret[customer_id[0]], customer id): 32 bytes.

    The paper's ``H(id || secret)`` is a plain hash of secret-suffixed data;
    HMAC is the keyed construction proven to be a PRF.
    """
    if len(customer_id) != CUSTOMER_ID_BYTES:
        raise MillicentError("bad_customer", f"a customer id is {CUSTOMER_ID_BYTES} bytes")
    master = customer_masters.get(customer_id[0])
    if master is None:
        raise MillicentError("unknown_customer", f"no customer master secret with index {customer_id[0]}")
    return profile.hmac_sha256(master, b"millicent customer secret\x00" + customer_id)


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
                parts.append(bytes((key,)) + _head(0, v))
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
            parts.append(bytes((key,)) + _head(major, len(v)) + v)
        if len(parts) != len(values) or len(parts) >= 24:
            return self.schema.encode(values)  # unknown names or None values: the schema explains
        return bytes((0xA0 | len(parts),)) + b"".join(parts)


_H1, _H2, _H4, _H8 = (
    struct.Struct(">BB").pack,
    struct.Struct(">BH").pack,
    struct.Struct(">BI").pack,
    struct.Struct(">BQ").pack,
)


def _head(major: int, n: int) -> bytes:
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


def _lp(*parts: bytes) -> bytes:
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
    return b"MCRP" + _lp(
        f["rid"],
        bytes([f["status"]]),
        f.get("scrip_id") or b"",
        f.get("change") or b"",
        f.get("content") or b"",
        f.get("issued") or b"",
        f.get("issued_secret") or b"",
        (f.get("detail") or "").encode("utf-8", "surrogatepass"),
    )


def _box_key(secret: bytes, rid: bytes, customer_id: bytes) -> profile.CounterAead:
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
        raise MillicentError("refused", f"the vendor refused: {f.get('detail', '')}")
    names = [p["name"] for p in f["products"]]
    if any(b <= a for a, b in itertools.pairwise(names)) or (after is not None and names and names[0] <= after):
        raise MillicentError("bad_reply", "the catalogue's products are not in name order after the last page")
    if f["more"] and not names:
        raise MillicentError("bad_reply", "the catalogue says more products follow but gave none")
    return f


def redeem_mac_input(vendor: bytes, batch: bytes, items: list[bytes]) -> bytes:
    return b"MCRD" + _lp(vendor, batch, b"".join(items))


def redeemed_mac_input(vendor: bytes, f: dict[str, Any]) -> bytes:
    """What the broker MACs in its answer to a redemption: the vendor, the batch, the verdict and the sums."""
    sums = struct.pack(">BQI", f["status"], f.get("paid", 0), f.get("duplicates", 0))
    return b"MCRA" + _lp(vendor, f["batch"], sums, f.get("detail", "").encode())


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
    _broker_macd(key, redeemed_mac_input(vendor, f), f)
    return f


def _broker_macd(key: bytes, mac_input: bytes, f: dict[str, Any]) -> None:
    """A broker's answer ``f`` carries a MAC over ``mac_input`` under ``key``, or :class:`MillicentError`."""
    if "mac" not in f:
        raise MillicentError("unauthenticated", f"an answer without the broker's MAC ({f.get('detail', '')!r})")
    try:
        profile.hmac_verify(key, mac_input, f["mac"])
    except CryptoError:
        raise MillicentError("unauthenticated", "the answer's MAC does not check: not the broker's answer") from None


# --- bulk purchase (broker <-> vendor) ----------------------------------------------------


def bulk_price(value: int, discount_pct: int) -> int:
    """What a broker owes for ``value`` of scrip bought at ``discount_pct`` (the discount rounds down)."""
    return value - value * discount_pct // 100


def denominations(value: int, pieces: int) -> list[int]:
    """``value`` split into ``pieces`` nearly equal pieces (the first ones one larger), all at least 1."""
    if not 1 <= pieces <= MAX_PIECES or value < pieces:
        raise MillicentError("bad_order", f"1..{MAX_PIECES} pieces of at least 1 each, got {pieces} for {value}")
    q, r = divmod(value, pieces)
    return [q + 1] * r + [q] * (pieces - r)


def bulk_buy_mac_input(vendor: bytes, f: dict[str, Any]) -> bytes:
    return b"MCBB" + _lp(
        vendor,
        f["broker"],
        f["order"],
        struct.pack(">QHB", f["value"], f["pieces"], f["discount_pct"]),
    )


def bulk_sold_mac_input(vendor: bytes, f: dict[str, Any]) -> bytes:
    return b"MCBS" + _lp(
        vendor,
        f["order"],
        bytes([f["status"]]),
        _lp(*f.get("scrip", [])),
        (f.get("price") or 0).to_bytes(8, "big"),
        (f.get("detail") or "").encode("utf-8", "surrogatepass"),
    )


def make_bulk_order(
    key: bytes, *, vendor: bytes, broker: bytes, order: bytes, value: int, pieces: int, discount_pct: int
) -> bytes:
    """The broker's bulk order (``millicent.bulk_buy`` param), MACed with the agreement's order key."""
    denominations(value, pieces)  # refuses impossible splits before anything is sent
    f: dict[str, Any] = {
        "broker": broker,
        "order": order,
        "value": value,
        "pieces": pieces,
        "discount_pct": discount_pct,
    }
    f["mac"] = profile.hmac_sha256(key, bulk_buy_mac_input(vendor, f), MAC_BYTES)
    return BULK_BUY_SCHEMA.encode(f)


@dataclass(frozen=True, slots=True)
class BulkSale:
    """A checked ``millicent.bulk_sold`` reply as the broker sees it."""

    status: Status
    scrip: list[Scrip]
    price: int
    detail: str


def open_bulk_sold(
    param: bytes, *, key: bytes, vendor: bytes, broker: bytes, order: bytes, value: int, pieces: int
) -> BulkSale:
    """Check the vendor's answer to bulk order ``order``; raises :class:`MillicentError` if it does not check.

    An accepting answer must be MACed with the order key and hold exactly
    the ordered pieces: scrip of this vendor, bound to the broker, worth
    ``value`` in all.
    """
    try:
        f = BULK_SOLD_SCHEMA.decode(param)
        status = Status(f["status"])
    except (DecodeError, ValueError) as exc:
        raise MillicentError("bad_reply", f"the vendor's bulk reply is unreadable: {exc}") from None
    if f["order"] != order:
        raise MillicentError("bad_reply", "the bulk reply answers another order")
    if status != Status.OK:
        return BulkSale(status, [], 0, f.get("detail", ""))
    try:
        profile.hmac_verify(key, bulk_sold_mac_input(vendor, f), f.get("mac", b""))
    except CryptoError:
        raise MillicentError("bad_reply", "the bulk reply's MAC does not check: not from the vendor") from None
    try:
        scrip = [Scrip.decode(raw) for raw in f.get("scrip", [])]
    except DecodeError as exc:
        raise MillicentError("bad_reply", f"bulk scrip is malformed: {exc}") from None
    if (
        len(scrip) != pieces
        or sum(s.value for s in scrip) != value
        or any(s.vendor != vendor or s.customer_id != broker for s in scrip)
    ):
        raise MillicentError("bad_reply", "the bulk scrip is not what was ordered (pieces, value, vendor or owner)")
    return BulkSale(status, scrip, f.get("price", 0), f.get("detail", ""))


def purchase_sig_input(f: dict[str, Any]) -> bytes:
    return b"MCPU" + _lp(
        f["customer_id"], f["vendor"], f["value"].to_bytes(8, "big"), f["rid"], bytes([f["want_secret"]])
    )


REPLY_KEY_BYTES = 32
REPLY_KEY_INFO = b"millicent reply key"  # HPKE info when the reply key is sealed to the account key (+ customer id)


def purchased_mac_input(digest: bytes, f: dict[str, Any]) -> bytes:
    """What the broker MACs in ``millicent.purchased``: the purchase's digest and every field but the MAC."""
    balance = f.get("balance")
    return b"MCPD" + _lp(
        digest,
        f["rid"],
        bytes([f["status"]]),
        f.get("scrip") or b"",
        f.get("secret_box") or b"",
        b"" if balance is None else balance.to_bytes(8, "big"),
        (f.get("detail") or "").encode("utf-8", "surrogatepass"),
    )


PURCHASE_OK, PURCHASE_REFUSED, PURCHASE_PENDING = 0, 1, 2  # ``millicent.purchased`` status


def make_purchased(key: bytes | None, digest: bytes, out: dict[str, Any]) -> bytes:
    """The broker's ``millicent.purchased`` param, MACed with the account's reply key over the purchase's
    digest (:func:`profile.sha256` of its bytes). ``key`` None (no such account): a plain answer, a hint only.
    """
    if key is not None:
        out["mac"] = profile.hmac_sha256(key, purchased_mac_input(digest, out), MAC_BYTES)
    return PURCHASED_SCHEMA.encode(out)


@dataclass(frozen=True, slots=True)
class Purchased:
    """A checked broker answer to the customer's purchase (always the broker's own: it is MACed)."""

    status: int  # PURCHASE_OK, PURCHASE_REFUSED (final) or PURCHASE_PENDING (ask again); ``detail`` says why
    scrip: Scrip | None
    secret_box: bytes | None
    balance: int | None
    detail: str


def open_purchased(mtype: int, param: bytes, *, purchase: bytes, key: bytes) -> Purchased:
    """Check the broker's answer to ``purchase`` (its exact bytes); raises :class:`MillicentError` unless it is
    MACed with the account's reply key over this very purchase: anyone on the wire could have sent anything else.
    """
    if mtype != PURCHASED.code:
        raise MillicentError("bad_reply", f"mtype 0x{mtype:04x} is not the broker's answer to a purchase")
    try:
        f = PURCHASED_SCHEMA.decode(param)
        rid = PURCHASE_SCHEMA.decode(purchase)["rid"]
    except DecodeError as exc:
        raise MillicentError("bad_reply", f"the broker's answer is unreadable: {exc}") from None
    if f["rid"] != rid:
        raise MillicentError("bad_reply", "the answer is to another purchase")
    _broker_macd(key, purchased_mac_input(profile.sha256(purchase), f), f)
    try:
        scrip = Scrip.decode(f["scrip"]) if "scrip" in f else None
    except DecodeError as exc:
        raise MillicentError("bad_reply", f"the broker's scrip is malformed: {exc}") from None
    if f["status"] == PURCHASE_OK and scrip is None:
        raise MillicentError("bad_reply", "an accepting answer without scrip")
    return Purchased(f["status"], scrip, f.get("secret_box"), f.get("balance"), f.get("detail", ""))


# --- customer side --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """A checked vendor reply as the customer sees it."""

    status: Status
    change: Scrip | None
    content: bytes
    issued: Scrip | None = None
    issued_secret: bytes | None = None
    detail: str = ""
    authentic: bool = False  # MACed with the customer secret (level 2/3): from the vendor; else only a hint


def make_request(
    scrip: Scrip | bytes,
    *,
    rid: bytes,
    level: Level,
    secret: bytes | None,
    price: int,
    product: str = "",
    op: Op = Op.BUY,
    for_customer: bytes | None = None,
) -> tuple[int, bytes]:
    """The customer's purchase request: ``(mtype, param)``. Level 2 and 3 need ``secret``."""
    raw = scrip.encode() if isinstance(scrip, Scrip) else scrip
    f: dict[str, Any] = {"scrip": raw, "rid": rid, "op": int(op), "price": price, "product": product}
    if for_customer is not None:
        f["for_customer"] = for_customer
    if level >= Level.THEFT:
        if secret is None:
            raise MillicentError("no_secret", "levels 2 and 3 need the customer secret")
        f["mac"] = profile.hmac_sha256(secret, request_mac_input(f), MAC_BYTES)
    param = REQUEST_SCHEMA.encode(f)
    if level == Level.PRIVATE:
        assert secret is not None
        cid = raw[25:33]
        box = _box_key(secret, rid, cid).seal(0, param, cid + rid)
        return SEALED_REQUEST.code, SEALED_SCHEMA.encode({"customer_id": cid, "rid": rid, "box": box})
    return REQUEST.code, param


def open_reply(mtype: int, param: bytes, *, rid: bytes, level: Level, secret: bytes | None) -> Outcome:
    """Check and open a vendor reply to request ``rid``; raises :class:`MillicentError` if it does not check."""
    try:
        if mtype == SEALED_REPLY.code:
            outer = SEALED_SCHEMA.decode(param)
            if secret is None or outer["rid"] != rid:
                raise MillicentError("bad_reply", "a sealed reply to another request or without a secret")
            param = _box_key(secret, rid, outer["customer_id"]).open(1, outer["box"], outer["customer_id"] + rid)
        elif mtype != REPLY.code:
            raise MillicentError("bad_reply", f"mtype 0x{mtype:04x} is not a Millicent reply")
        f = REPLY_SCHEMA.decode(param)
    except (DecodeError, CryptoError) as exc:
        raise MillicentError("bad_reply", f"the vendor's reply is unreadable: {exc}") from None
    if f["rid"] != rid:
        raise MillicentError("bad_reply", "the reply answers another request")
    try:
        status = Status(f["status"])
    except ValueError:
        raise MillicentError("bad_reply", f"unknown status {f['status']}") from None
    authentic = False
    if level >= Level.THEFT and (status in (Status.OK, Status.SPENT) or "mac" in f):
        # Level 3 too: a plain (unsealed) reply to a sealed request is only believed if MACed, so whoever sees the
        # request's rid on the wire cannot answer it with a made-up ``ok`` (change, page) or ``spent``.
        if secret is None or "mac" not in f:
            raise MillicentError("bad_reply", f"a level-{int(level)} reply must be MACed")
        try:
            profile.hmac_verify(secret, reply_mac_input(f), f["mac"])
        except CryptoError:
            raise MillicentError("bad_reply", "the reply's MAC does not check: not from the vendor") from None
        authentic = True
    try:
        change = Scrip.decode(f["change"]) if "change" in f else None
        issued = Scrip.decode(f["issued"]) if "issued" in f else None
    except DecodeError as exc:
        raise MillicentError("bad_reply", f"change scrip is malformed: {exc}") from None
    issued_secret = None
    if "issued_secret" in f:
        if secret is None or issued is None:
            raise MillicentError("bad_reply", "an issued secret without scrip or own secret")
        try:
            issued_secret = _box_key(secret, rid, b"issue\x00\x00\x00").open(2, f["issued_secret"], issued.customer_id)
        except CryptoError:
            raise MillicentError("bad_reply", "cannot open the issued customer secret") from None
    return Outcome(status, change, f.get("content", b""), issued, issued_secret, f.get("detail", ""), authentic)


# --- vendor side ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Product:
    price: int
    content: bytes


@dataclass(slots=True)
class Candidate:
    """A request that passed every check but the spent list (the service does that one).

    ``raw`` is the scrip as sent (checked by :meth:`Vendor.check_raw`); its
    fields are read at their fixed offsets, :attr:`scrip` decodes it whole.
    """

    raw: bytes
    rid: bytes
    op: Op
    price: int
    product: str
    level: Level
    secret: bytes | None
    customer_id: bytes  # owner of the scrip
    digest: bytes  # identifies the exact request (a re-fetch sends the same one)
    for_customer: bytes | None = None
    refusal: tuple[Status, str] | None = None  # refused unless it is a re-fetch of a stored reply

    @property
    def scrip(self) -> Scrip:
        return Scrip.decode(self.raw)

    @property
    def scrip_id(self) -> bytes:
        return self.raw[17:25]

    @property
    def secret_index(self) -> int:
        return self.raw[17]

    @property
    def value(self) -> int:
        return int.from_bytes(self.raw[9:17], "big")

    @property
    def spent_key(self) -> bytes:
        """Spent-list key: ``expiry(4) || scrip id(8)``, so key order is expiry order (pruning)."""
        raw = self.raw
        return raw[33:37] + raw[17:25]

    @property
    def change_value(self) -> int:
        return self.value - self.price


@dataclass
class Vendor:
    """The vendor's validation and reply logic (no state but secrets and configuration).

    ``scrip_secrets``: index -> 32-byte master scrip secret (the vendor's own
    and those it licensed to brokers); ``mint_index``: the index new change
    scrip is made under (rotation = pick a new one; keep the old secret until
    the last scrip under it has expired). ``customer_masters``: index ->
    customer master secret. ``min_level``: the lowest level accepted.
    """

    vendor_id: bytes
    scrip_secrets: dict[int, bytes]
    mint_index: int
    customer_masters: dict[int, bytes]
    catalogue: dict[str, Product] = field(default_factory=dict)
    validity_s: int = 7 * 24 * 3600
    min_level: Level = Level.THEFT
    refetch_grace_s: int = 24 * 3600  # spent records (and replies) are kept this long after the scrip expires
    _secrets_cache: dict[bytes, bytes] = field(default_factory=dict, repr=False)
    _macs: profile.HmacKeys = field(default_factory=profile.HmacKeys, repr=False)

    def secret_of(self, customer_id: bytes) -> bytes:
        s = self._secrets_cache.get(customer_id)
        if s is None:
            s = customer_secret(self.customer_masters, customer_id)
            if len(self._secrets_cache) >= 65536:
                self._secrets_cache.clear()
            self._secrets_cache[customer_id] = s
        return s

    def check_raw(self, raw: bytes, now: int, pruned_through: int = 0) -> Status:
        """Certificate, vendor and expiry of encoded scrip (not the spent list); the hot path.

        Works on the bytes at their fixed offsets (see :data:`_HEAD`) without
        building a :class:`Scrip`; the same checks as :meth:`Scrip.decode` plus
        the certificate. ``pruned_through``: scrip expiring at or before it is
        refused whatever ``now`` says (the spent list no longer knows it).
        """
        n = len(raw)
        if n < SCRIP_MIN_BYTES or raw[0] != VERSION or n != SCRIP_MIN_BYTES + raw[37] or raw[9] & 0x80:
            return Status.MALFORMED
        if raw[1:9] != self.vendor_id:
            return Status.WRONG_VENDOR
        secret = self.scrip_secrets.get(raw[17])
        if secret is None or not self._macs.check(secret, raw[:-CERT_BYTES], raw[-CERT_BYTES:]):
            return Status.FORGED
        expiry = int.from_bytes(raw[33:37], "big")
        if expiry <= now or expiry <= pruned_through:
            return Status.EXPIRED
        return Status.OK

    def check_scrip(self, raw: bytes, now: int, pruned_through: int = 0) -> tuple[Status, Scrip | None]:
        """Certificate, vendor and expiry (not the spent list): ``(status, scrip)``."""
        status = self.check_raw(raw, now, pruned_through)
        if status == Status.MALFORMED:
            return status, None
        return status, Scrip.decode(raw)

    def binding_ok(self, customer_id: bytes, mac_input: bytes, mac: bytes) -> bool:
        """Level 2: is ``mac`` the MAC of ``mac_input`` under the secret of ``customer_id``?"""
        try:
            secret = self.secret_of(customer_id)
        except MillicentError:
            return False
        return self._macs.check(secret, mac_input, mac)

    def prepare(self, mtype: int, param: bytes, now: int, pruned_through: int = 0) -> Candidate | tuple[bytes, bytes]:
        """Every check but the spent list. A refusal comes back as ``(rid, reply param)``."""
        level = Level.VALIDATION
        secret: bytes | None = None
        outer_cid: bytes | None = None
        try:
            if mtype == SEALED_REQUEST.code:
                outer = SEALED_CODEC.decode(param)
                outer_cid, rid = outer["customer_id"], outer["rid"]
                try:
                    secret = self.secret_of(outer_cid)
                    param = _box_key(secret, rid, outer_cid).open(0, outer["box"], outer_cid + rid)
                except (MillicentError, CryptoError):
                    return self._plain_reply(rid, Status.STOLEN, "cannot open the request with that customer's secret")
                level = Level.PRIVATE
            f = decode_request_fast(param) or REQUEST_CODEC.decode(param)
        except DecodeError as exc:
            return self._plain_reply(b"\x00" * RID_BYTES, Status.MALFORMED, f"malformed request: {exc.reason}")
        rid = f["rid"]
        if level != Level.PRIVATE and "mac" in f:
            level = Level.THEFT
        raw = f["scrip"]
        status = self.check_raw(raw, now, pruned_through)
        expired = status == Status.EXPIRED and int.from_bytes(raw[33:37], "big") > pruned_through
        if status != Status.OK and not expired:
            return self._plain_reply(rid, status, _DETAIL[status])
        cid = raw[25:33]
        if level == Level.PRIVATE:
            if cid != outer_cid:
                return self._plain_reply(rid, Status.STOLEN, _DETAIL[Status.STOLEN])
        elif level == Level.THEFT:
            try:
                secret = self.secret_of(cid)
            except MillicentError:
                return self._plain_reply(rid, Status.STOLEN, _DETAIL[Status.STOLEN])
            if not self._macs.check(secret, request_mac_input(f), f["mac"]):
                return self._plain_reply(rid, Status.STOLEN, _DETAIL[Status.STOLEN])
        op = _OPS[f["op"]]  # the schema bounds op to the three values
        price = f["price"]
        product = f["product"]
        c = Candidate(raw, rid, op, price, product, level, secret, cid, profile.sha256(param), f.get("for_customer"))
        # Refusals that depend on the clock or the vendor's configuration are decided after the spent
        # list was read: an earlier, identical request may have been accepted (then it gets its reply).
        if expired:
            c.refusal = (Status.EXPIRED, _DETAIL[Status.EXPIRED])
        elif level < self.min_level:
            c.refusal = (Status.LEVEL_TOO_LOW, f"this vendor requires level {int(self.min_level)}")
        elif op == Op.BUY:
            item = self.catalogue.get(product)
            if item is None:
                c.refusal = (Status.UNKNOWN_PRODUCT, f"no product {product!r}")
            elif price != item.price:
                c.refusal = (Status.WRONG_PRICE, price_detail(product, item.price))
            elif len(item.content) > CONTENT_MAX_BYTES:
                c.refusal = (
                    Status.TOO_LARGE,
                    too_large_detail(len(item.content), f"{CONTENT_MAX_BYTES} a reply carries"),
                )
        elif op == Op.RENEW:
            if price != 0:
                c.refusal = (Status.MALFORMED, "renewal is free: price 0")
        elif "for_customer" not in f or price == 0 or secret is None:
            c.refusal = (Status.MALFORMED, "issue needs for_customer, a price and level 2 or 3")
        if c.refusal is None:
            value = int.from_bytes(raw[9:17], "big")
            if value < price:
                c.refusal = (Status.INSUFFICIENT, f"scrip value {value} < price {price}")
        return c

    def accept(self, c: Candidate, serials: list[int] | int, now: int) -> tuple[int, bytes]:
        """The reply that accepts ``c`` (its spent record is being written with it).

        ``serials``: fresh serial numbers, or the first of two consecutive ones
        (at most two are used: change and issued scrip).
        """
        first, second = (serials, serials + 1) if isinstance(serials, int) else (serials[0], serials[1])
        expiry = now + self.validity_s
        raw = c.raw
        out: dict[str, Any] = {"rid": c.rid, "status": 0, "scrip_id": raw[17:25]}
        change_value = c.value - c.price
        if c.op == Op.RENEW or change_value > 0:
            if not 0 <= first <= MAX_SERIAL:
                raise MillicentError("bad_scrip_id", f"serial 0..{MAX_SERIAL}, got {first}")
            index = self.mint_index
            props = raw[_HEAD.size : -CERT_BYTES]
            body = (
                _HEAD.pack(
                    VERSION,
                    self.vendor_id,
                    change_value,
                    (index << 56 | first).to_bytes(8, "big"),
                    c.customer_id,
                    expiry,
                    len(props),
                )
                + props
            )
            out["change"] = body + self._macs.mac(self.scrip_secrets[index], body, CERT_BYTES)
        if c.op == Op.BUY:
            content = self.catalogue[c.product].content
            if c.level == Level.THEFT and "change" in out and c.secret is not None:
                return REPLY.code, _buy_reply(self._macs, c.secret, c.rid, out["scrip_id"], out["change"], content)
            out["content"] = content
        elif c.op == Op.ISSUE:
            assert c.for_customer is not None and c.secret is not None
            issued = mint(
                self.scrip_secrets,
                index=self.mint_index,
                vendor=self.vendor_id,
                value=c.price,
                serial=second,
                customer_id=c.for_customer,
                expiry=expiry,
            )
            out["issued"] = issued.encode()
            out["issued_secret"] = _box_key(c.secret, c.rid, b"issue\x00\x00\x00").seal(
                2, self.secret_of(c.for_customer), c.for_customer
            )
        return self._finish(out, c.level, c.secret, c.customer_id)

    def catalogue_page(self, param: bytes) -> tuple[int, bytes]:
        """The answer to ``millicent.catalogue_ask``: up to ``CATALOGUE_PAGE`` products named after ``after``, in
        name order, with their prices; ``more`` if others follow. Neither MACed nor signed: see
        :func:`open_catalogue`. A name a request could not carry (above ``PRODUCT_NAME_MAX_BYTES``) is left out."""
        out: dict[str, Any] = {"vendor": self.vendor_id, "status": int(Status.OK), "products": [], "more": False}
        try:
            after = CATALOGUE_ASK_SCHEMA.decode(param).get("after")
        except DecodeError as exc:
            out.update(status=int(Status.MALFORMED), detail=f"malformed catalogue request: {exc.reason}")
            return CATALOGUE.code, CATALOGUE_SCHEMA.encode(out)
        names = sorted(n for n in self.catalogue if len(n.encode("utf-8", "surrogatepass")) <= PRODUCT_NAME_MAX_BYTES)
        if after is not None:
            names = [n for n in names if n > after]
        out["products"] = [{"name": n, "price": self.catalogue[n].price} for n in names[:CATALOGUE_PAGE]]
        out["more"] = len(names) > CATALOGUE_PAGE
        return CATALOGUE.code, CATALOGUE_SCHEMA.encode(out)

    def refuse(self, c: Candidate, status: Status, detail: str) -> tuple[int, bytes]:
        """A MACed (or sealed) refusal for a request that proved its owner (e.g. ``spent``)."""
        out: dict[str, Any] = {"rid": c.rid, "status": int(status), "scrip_id": c.scrip_id, "detail": detail}
        return self._finish(out, c.level, c.secret, c.customer_id)

    def _finish(self, out: dict[str, Any], level: Level, secret: bytes | None, cid: bytes) -> tuple[int, bytes]:
        if level >= Level.THEFT and secret is not None:
            out["mac"] = profile.hmac_sha256(secret, reply_mac_input(out), MAC_BYTES)
        param = REPLY_CODEC.encode(out)
        if level == Level.PRIVATE and secret is not None:
            box = _box_key(secret, out["rid"], cid).seal(1, param, cid + out["rid"])
            return SEALED_REPLY.code, SEALED_CODEC.encode({"customer_id": cid, "rid": out["rid"], "box": box})
        return REPLY.code, param

    @staticmethod
    def _plain_reply(rid: bytes, status: Status, detail: str) -> tuple[bytes, bytes]:
        return rid, REPLY_CODEC.encode({"rid": rid, "status": int(status), "detail": detail})


def _buy_reply(macs: profile.HmacKeys, secret: bytes, rid: bytes, sid: bytes, change: bytes, content: bytes) -> bytes:
    """The level-2 reply accepting a purchase with change, MACed: the hot reply, built in one join.

    The same bytes as ``REPLY_SCHEMA.encode`` of ``{rid, status 0, scrip_id,
    change, content, mac}`` with ``mac`` over :func:`reply_mac_input` (a test
    checks both against the generic path).
    """
    mac = macs.mac(
        secret,
        b"".join(
            (
                b"MCRP",
                _U32(len(rid)),
                rid,
                b"\x00\x00\x00\x01\x00",  # status OK, length-prefixed
                _U32(len(sid)),
                sid,
                _U32(len(change)),
                change,
                _U32(len(content)),
                content,
                b"\x00" * 12,  # no issued scrip, no issued secret, no detail
            )
        ),
        MAC_BYTES,
    )
    if len(rid) != RID_BYTES or len(sid) != SCRIP_ID_BYTES or len(content) > CONTENT_MAX_BYTES:
        return REPLY_SCHEMA.encode(
            {"rid": rid, "status": 0, "scrip_id": sid, "change": change, "content": content, "mac": mac}
        )
    return b"".join(
        (
            b"\xa6\x00\x50",  # map(6), key 0: bytes(16)
            rid,
            b"\x01\x00\x02\x48",  # key 1: status 0, key 2: bytes(8)
            sid,
            b"\x03",
            _head(2, len(change)),
            change,
            b"\x04",
            _head(2, len(content)),
            content,
            b"\x08\x50",  # key 8: bytes(16)
            mac,
        )
    )


def price_detail(product: str, price: int) -> str:
    """The detail of a ``wrong_price`` refusal: the price the vendor asks (read back by :func:`asked_price`)."""
    return f"the price of {product!r} is {price}"


def asked_price(detail: str, product: str) -> int | None:
    """The price a ``wrong_price`` refusal's detail names for ``product`` (:func:`price_detail`), if it names one."""
    head = f"the price of {product!r} is "
    tail = detail[len(head) :]
    return int(tail) if detail.startswith(head) and tail.isdigit() else None


def too_large_detail(size: int, limit: str) -> str:
    """The detail of a ``too_large`` refusal (at most 200 characters, the reply's bound)."""
    return f"the product is too large to deliver ({size} bytes, above the {limit}): the scrip was not spent"


def max_buy_reply_bytes(content_bytes: int) -> int:
    """The largest reply (param bytes) accepting a purchase of a product of ``content_bytes`` (at most
    :data:`CONTENT_MAX_BYTES`): at level 3 (sealed), with change carrying the most properties scrip can have.

    Built for real by :meth:`Vendor.accept` with throwaway keys, so it is the very size a vendor's reply has.
    """
    key, cid = bytes(MASTER_SECRET_BYTES), bytes(CUSTOMER_ID_BYTES)
    vendor = Vendor(bytes(VENDOR_BYTES), {0: key}, 0, {0: key}, {"p": Product(1, bytes(content_bytes))})
    raw = mint(vendor.scrip_secrets, index=0, vendor=vendor.vendor_id, value=2, serial=0, customer_id=cid,
               expiry=1, properties=bytes(MAX_PROPERTIES)).encode()  # fmt: skip
    c = Candidate(raw, bytes(RID_BYTES), Op.BUY, 1, "p", Level.PRIVATE, key, cid, bytes(32))
    return len(vendor.accept(c, 0, 0)[1])


_DETAIL = {
    Status.FORGED: "the certificate does not verify: forged or altered scrip",
    Status.STOLEN: "the request is not signed by the scrip's customer: stolen scrip",
    Status.SPENT: "this scrip was already spent",
    Status.EXPIRED: "this scrip has expired: renew scrip before its expiry date",
    Status.WRONG_VENDOR: "this scrip is for another vendor",
    Status.MALFORMED: "the scrip is malformed",
}


def refusal(prepared: tuple[bytes, bytes]) -> tuple[int, bytes]:
    """``(mtype, param)`` of a refusal returned by :meth:`Vendor.prepare`."""
    return REPLY.code, prepared[1]


# --- spent list keys ----------------------------------------------------------------------


def expiry_of_key(key: bytes) -> int:
    return int.from_bytes(key[:4], "big")
