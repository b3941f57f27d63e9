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

Nothing here reads a clock or draws randomness: ``now`` (Unix seconds), new
serial numbers and request ids come in as arguments.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from cryptography.hazmat.primitives import constant_time

from cardnet.crypto import profile
from cardnet.crypto.errors import CryptoError
from cardnet.errors import CardnetError
from cardnet.wire import Bytes, DecodeError, Field, ListOf, Schema, Text, UInt, register

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
        Field(4, "content", Bytes(60 * 1024), optional=True),
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
    ],
)
REDEEM_SCHEMA = Schema(
    "millicent.redeem",
    [
        Field(0, "vendor", Bytes(VENDOR_BYTES, VENDOR_BYTES)),
        Field(1, "batch", Bytes(RID_BYTES, RID_BYTES)),
        Field(2, "items", ListOf(Bytes(SCRIP_ID_BYTES + 8, SCRIP_ID_BYTES + 8), 10_000)),
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


def _lp(*parts: bytes) -> bytes:
    """Length-prefixed concatenation (unambiguous MAC input)."""
    return b"".join([_U32(len(p)) + p for p in parts])


def request_mac_input(f: dict[str, Any]) -> bytes:
    return b"MCRQ" + _lp(
        f["rid"],
        f["scrip"],
        struct.pack(">BQ", f["op"], f["price"]),
        f["product"].encode("utf-8", "surrogatepass"),
        f.get("for_customer") or b"",
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


def redeem_mac_input(vendor: bytes, batch: bytes, items: list[bytes]) -> bytes:
    return b"MCRD" + _lp(vendor, batch, b"".join(items))


def purchase_sig_input(f: dict[str, Any]) -> bytes:
    return b"MCPU" + _lp(
        f["customer_id"], f["vendor"], f["value"].to_bytes(8, "big"), f["rid"], bytes([f["want_secret"]])
    )


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
    if level == Level.THEFT and Status(f["status"]) in (Status.OK, Status.SPENT):
        if secret is None or "mac" not in f:
            raise MillicentError("bad_reply", "a level-2 reply must be MACed")
        try:
            profile.hmac_verify(secret, reply_mac_input(f), f["mac"])
        except CryptoError:
            raise MillicentError("bad_reply", "the reply's MAC does not check: not from the vendor") from None
    try:
        status = Status(f["status"])
    except ValueError:
        raise MillicentError("bad_reply", f"unknown status {f['status']}") from None
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
    return Outcome(status, change, f.get("content", b""), issued, issued_secret, f.get("detail", ""))


# --- vendor side ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Product:
    price: int
    content: bytes


@dataclass(slots=True)
class Candidate:
    """A request that passed every check but the spent list (the service does that one)."""

    scrip: Scrip
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
    def spent_key(self) -> bytes:
        """Spent-list key: ``expiry(4) || scrip id(8)``, so key order is expiry order (pruning)."""
        return self.scrip.expiry.to_bytes(4, "big") + self.scrip.scrip_id

    @property
    def change_value(self) -> int:
        return self.scrip.value - self.price


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
        if secret is None or not constant_time.bytes_eq(
            profile.hmac_sha256(secret, raw[:-CERT_BYTES], CERT_BYTES), raw[-CERT_BYTES:]
        ):
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
            profile.hmac_verify(self.secret_of(customer_id), mac_input, mac)
        except (MillicentError, CryptoError):
            return False
        return True

    def prepare(self, mtype: int, param: bytes, now: int, pruned_through: int = 0) -> Candidate | tuple[bytes, bytes]:
        """Every check but the spent list. A refusal comes back as ``(mtype, reply param)``."""
        level = Level.VALIDATION
        secret: bytes | None = None
        outer_cid: bytes | None = None
        try:
            if mtype == SEALED_REQUEST.code:
                outer = SEALED_SCHEMA.decode(param)
                outer_cid, rid = outer["customer_id"], outer["rid"]
                try:
                    secret = self.secret_of(outer_cid)
                    param = _box_key(secret, rid, outer_cid).open(0, outer["box"], outer_cid + rid)
                except (MillicentError, CryptoError):
                    return self._plain_reply(rid, Status.STOLEN, "cannot open the request with that customer's secret")
                level = Level.PRIVATE
            f = REQUEST_SCHEMA.decode(param)
        except DecodeError as exc:
            return self._plain_reply(b"\x00" * RID_BYTES, Status.MALFORMED, f"malformed request: {exc.reason}")
        rid = f["rid"]
        if level != Level.PRIVATE and "mac" in f:
            level = Level.THEFT
        status, scrip = self.check_scrip(f["scrip"], now, pruned_through)
        expired = status == Status.EXPIRED and scrip is not None and scrip.expiry > pruned_through
        if (status != Status.OK and not expired) or scrip is None:
            return self._plain_reply(rid, status, _DETAIL[status])
        cid = scrip.customer_id
        if level == Level.PRIVATE:
            if cid != outer_cid:
                return self._plain_reply(rid, Status.STOLEN, _DETAIL[Status.STOLEN])
        elif level == Level.THEFT:
            try:
                secret = self.secret_of(cid)
                profile.hmac_verify(secret, request_mac_input(f), f["mac"])
            except (MillicentError, CryptoError):
                return self._plain_reply(rid, Status.STOLEN, _DETAIL[Status.STOLEN])
        op = Op(f["op"])  # the schema bounds op to the three values
        price = f["price"]
        digest = profile.sha256(param)
        c = Candidate(scrip, rid, op, price, f["product"], level, secret, cid, digest, f.get("for_customer"))
        # Refusals that depend on the clock or the vendor's configuration are decided after the spent
        # list was read: an earlier, identical request may have been accepted (then it gets its reply).
        if expired:
            c.refusal = (Status.EXPIRED, _DETAIL[Status.EXPIRED])
        elif level < self.min_level:
            c.refusal = (Status.LEVEL_TOO_LOW, f"this vendor requires level {int(self.min_level)}")
        elif op == Op.BUY:
            item = self.catalogue.get(f["product"])
            if item is None:
                c.refusal = (Status.UNKNOWN_PRODUCT, f"no product {f['product']!r}")
            elif price != item.price:
                c.refusal = (Status.MALFORMED, f"the price of {f['product']!r} is {item.price}")
        elif op == Op.RENEW:
            if price != 0:
                c.refusal = (Status.MALFORMED, "renewal is free: price 0")
        elif "for_customer" not in f or price == 0 or secret is None:
            c.refusal = (Status.MALFORMED, "issue needs for_customer, a price and level 2 or 3")
        if c.refusal is None and scrip.value < price:
            c.refusal = (Status.INSUFFICIENT, f"scrip value {scrip.value} < price {price}")
        return c

    def accept(self, c: Candidate, serials: list[int], now: int) -> tuple[int, bytes]:
        """The reply that accepts ``c`` (its spent record is being written with it).

        ``serials``: fresh serial numbers (at most two are used: change and issued scrip).
        """
        expiry = now + self.validity_s
        out: dict[str, Any] = {"rid": c.rid, "status": int(Status.OK), "scrip_id": c.scrip.scrip_id}
        if c.op == Op.RENEW or c.change_value > 0:
            props = c.scrip.properties
            body = (
                _HEAD.pack(
                    VERSION,
                    self.vendor_id,
                    c.change_value,
                    scrip_id(self.mint_index, serials[0]),
                    c.customer_id,
                    expiry,
                    len(props),
                )
                + props
            )
            out["change"] = body + certify(self.scrip_secrets[self.mint_index], body)
        if c.op == Op.BUY:
            out["content"] = self.catalogue[c.product].content
        elif c.op == Op.ISSUE:
            assert c.for_customer is not None and c.secret is not None
            issued = mint(
                self.scrip_secrets,
                index=self.mint_index,
                vendor=self.vendor_id,
                value=c.price,
                serial=serials[1],
                customer_id=c.for_customer,
                expiry=expiry,
            )
            out["issued"] = issued.encode()
            out["issued_secret"] = _box_key(c.secret, c.rid, b"issue\x00\x00\x00").seal(
                2, self.secret_of(c.for_customer), c.for_customer
            )
        return self._finish(out, c.level, c.secret, c.customer_id)

    def refuse(self, c: Candidate, status: Status, detail: str) -> tuple[int, bytes]:
        """A MACed (or sealed) refusal for a request that proved its owner (e.g. ``spent``)."""
        out: dict[str, Any] = {"rid": c.rid, "status": int(status), "scrip_id": c.scrip.scrip_id, "detail": detail}
        return self._finish(out, c.level, c.secret, c.customer_id)

    def _finish(self, out: dict[str, Any], level: Level, secret: bytes | None, cid: bytes) -> tuple[int, bytes]:
        if level >= Level.THEFT and secret is not None:
            out["mac"] = profile.hmac_sha256(secret, reply_mac_input(out), MAC_BYTES)
        param = REPLY_SCHEMA.encode(out)
        if level == Level.PRIVATE and secret is not None:
            box = _box_key(secret, out["rid"], cid).seal(1, param, cid + out["rid"])
            return SEALED_REPLY.code, SEALED_SCHEMA.encode({"customer_id": cid, "rid": out["rid"], "box": box})
        return REPLY.code, param

    @staticmethod
    def _plain_reply(rid: bytes, status: Status, detail: str) -> tuple[bytes, bytes]:
        return rid, REPLY_SCHEMA.encode({"rid": rid, "status": int(status), "detail": detail})


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


# --- spent records ----------------------------------------------------------------------

_SPENT_HEAD = struct.Struct(">32sH")


def spent_record(digest: bytes, mtype: int, reply: bytes) -> bytes:
    """What the spent list keeps per scrip: the request digest and the reply (for re-fetch)."""
    return _SPENT_HEAD.pack(digest, mtype) + reply


def parse_spent(raw: bytes) -> tuple[bytes, int, bytes]:
    digest, mtype = _SPENT_HEAD.unpack_from(raw)
    return digest, mtype, raw[_SPENT_HEAD.size :]


def expiry_of_key(key: bytes) -> int:
    return int.from_bytes(key[:4], "big")
