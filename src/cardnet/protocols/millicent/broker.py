"""What a Millicent broker trades: bulk orders of scrip from a vendor, and scrip sold to a customer.

See the package's docstring (``cardnet.protocols.millicent``) and docs/millicent.md."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from cardnet.crypto import profile
from cardnet.crypto.errors import CryptoError
from cardnet.protocols.millicent.messages import (
    BULK_BUY_SCHEMA,
    BULK_SOLD_SCHEMA,
    MAX_PIECES,
    PURCHASE_SCHEMA,
    PURCHASED,
    PURCHASED_SCHEMA,
    broker_macd,
    length_prefixed,
)
from cardnet.protocols.millicent.scrip import (
    CUSTOMER_ID_BYTES,
    MAC_BYTES,
    MASTER_SECRET_BYTES,
    MAX_VALUE,
    RID_BYTES,
    VENDOR_BYTES,
    MillicentError,
    Scrip,
    Status,
    mint,
)
from cardnet.wire import DecodeError

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
    return b"MCBB" + length_prefixed(
        vendor,
        f["broker"],
        f["order"],
        struct.pack(">QHB", f["value"], f["pieces"], f["discount_pct"]),
    )


def bulk_sold_mac_input(vendor: bytes, f: dict[str, Any]) -> bytes:
    return b"MCBS" + length_prefixed(
        vendor,
        f["order"],
        bytes([f["status"]]),
        length_prefixed(*f.get("scrip", [])),
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


def max_bulk_sold_bytes(pieces: int) -> int:
    """The largest ``millicent.bulk_sold`` (param bytes) answering an order of ``pieces`` pieces: the sale (scrip
    as the vendor mints it in bulk, without properties) or a refusal with the longest detail, whichever is larger.
    Built for real with throwaway keys; a vendor counts a bulk order's reply not made yet at this size."""
    raw = mint({0: bytes(MASTER_SECRET_BYTES)}, index=0, vendor=bytes(VENDOR_BYTES), value=MAX_VALUE, serial=0,
               customer_id=bytes(CUSTOMER_ID_BYTES), expiry=2**32 - 1).encode()  # fmt: skip
    head = {"order": bytes(RID_BYTES), "mac": bytes(MAC_BYTES)}
    sold = BULK_SOLD_SCHEMA.encode({**head, "status": 0, "scrip": [raw] * pieces, "price": MAX_VALUE})
    refused = BULK_SOLD_SCHEMA.encode({**head, "status": 255, "detail": "x" * 200})
    return max(len(sold), len(refused))


@dataclass(frozen=True, slots=True)
class BulkSale:
    """A checked ``millicent.bulk_sold`` reply as the broker sees it."""

    status: Status
    scrip: list[Scrip]
    price: int
    detail: str
    authentic: bool = True  # a refusal MACed with the order key (a sale always is, or it does not open)


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
    if status != Status.OK:  # (a vendor that does not know the broker or its key cannot MAC its refusal)
        try:
            profile.hmac_verify(key, bulk_sold_mac_input(vendor, f), f.get("mac", b""))
        except CryptoError:
            return BulkSale(status, [], 0, f.get("detail", ""), authentic=False)
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
    return b"MCPU" + length_prefixed(
        f["customer_id"], f["vendor"], f["value"].to_bytes(8, "big"), f["rid"], bytes([f["want_secret"]])
    )


REPLY_KEY_BYTES = 32
REPLY_KEY_INFO = b"millicent reply key"  # HPKE info when the reply key is sealed to the account key (+ customer id)


def purchased_mac_input(digest: bytes, f: dict[str, Any]) -> bytes:
    """What the broker MACs in ``millicent.purchased``: the purchase's digest and every field but the MAC."""
    balance = f.get("balance")
    return b"MCPD" + length_prefixed(
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
    broker_macd(key, purchased_mac_input(profile.sha256(purchase), f), f)
    try:
        scrip = Scrip.decode(f["scrip"]) if "scrip" in f else None
    except DecodeError as exc:
        raise MillicentError("bad_reply", f"the broker's scrip is malformed: {exc}") from None
    if f["status"] == PURCHASE_OK and scrip is None:
        raise MillicentError("bad_reply", "an accepting answer without scrip")
    return Purchased(f["status"], scrip, f.get("secret_box"), f.get("balance"), f.get("detail", ""))
