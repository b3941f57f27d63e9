"""Millicent's scrip: its fields and sizes, certificates, minting, customer secrets and the protection levels.

See the package's docstring (``cardnet.protocols.millicent``) and docs/millicent.md."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum, unique

from cardnet.crypto import profile
from cardnet.errors import CardnetError
from cardnet.wire import DecodeError

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
SCRIP_HEAD = struct.Struct(">B8sQ8s8sIB")
_U32 = struct.Struct(">I").pack  # version, vendor, value, scrip id, customer id, expiry, len(properties)
SCRIP_MIN_BYTES = SCRIP_HEAD.size + CERT_BYTES  # 54
SCRIP_MAX_BYTES = SCRIP_MIN_BYTES + MAX_PROPERTIES


class Level(IntEnum):
    """The paper's three protection levels."""

    VALIDATION = 1
    THEFT = 2
    PRIVATE = 3


@unique  # (two names for one value would make one an alias of the other: a wire status read as another)
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
    UNAVAILABLE = 12  # not decided: the vendor cannot write its store (a full disk); nothing was spent, send it again
    NOT_ALLOWED = 13  # op ISSUE from a customer that is not one of the vendor's bulk brokers: nothing was spent


# The vendor's refusals that leave the scrip unspent: whoever sent it keeps it (a wallet; a broker, its stock).
UNSPENT = frozenset(
    (
        Status.INSUFFICIENT,
        Status.UNKNOWN_PRODUCT,
        Status.LEVEL_TOO_LOW,
        Status.TOO_LARGE,
        Status.WRONG_PRICE,
        Status.NOT_ALLOWED,
    )
)


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
        return SCRIP_HEAD.pack(
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
        version, vendor, value, sid, cid, expiry, plen = SCRIP_HEAD.unpack_from(raw)
        if version != VERSION:
            raise DecodeError("bad_version", f"scrip version {version} is not {VERSION}")
        if len(raw) != SCRIP_MIN_BYTES + plen:
            raise DecodeError(
                "bad_length", f"scrip with {plen} property bytes is {SCRIP_MIN_BYTES + plen} bytes, got {len(raw)}"
            )
        if value > MAX_VALUE:
            raise DecodeError("oversize", f"scrip value {value} is above {MAX_VALUE}")
        end = SCRIP_HEAD.size + plen
        return cls(vendor, value, sid, cid, expiry, raw[SCRIP_HEAD.size : end], raw[end:])


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
    body = SCRIP_HEAD.pack(VERSION, vendor, value, sid, customer_id, expiry, len(properties)) + properties
    return Scrip(vendor, value, sid, customer_id, expiry, properties, certify(secrets[index], body))


OPS = tuple(Op)


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
