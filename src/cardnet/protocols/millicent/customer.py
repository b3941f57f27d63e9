"""Millicent's customer side: a request paid with scrip, and reading the vendor's reply.

See the package's docstring (``cardnet.protocols.millicent``) and docs/millicent.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cardnet.crypto import profile
from cardnet.crypto.errors import CryptoError
from cardnet.protocols.millicent.messages import (
    BULK_SOLD,
    OPENED,
    PURCHASED,
    REDEEMED,
    REPLY,
    REPLY_SCHEMA,
    REQUEST,
    REQUEST_SCHEMA,
    SEALED_REPLY,
    SEALED_REQUEST,
    SEALED_SCHEMA,
    box_key,
    reply_mac_input,
    request_mac_input,
)
from cardnet.protocols.millicent.scrip import MAC_BYTES, Level, MillicentError, Op, Scrip, Status
from cardnet.wire import DecodeError

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
        box = box_key(secret, rid, cid).seal(0, param, cid + rid)
        return SEALED_REQUEST.code, SEALED_SCHEMA.encode({"customer_id": cid, "rid": rid, "box": box})
    return REQUEST.code, param


_BROKER_REPLIES = frozenset(m.code for m in (OPENED, PURCHASED, REDEEMED, BULK_SOLD))


def open_reply(mtype: int, param: bytes, *, rid: bytes, level: Level, secret: bytes | None) -> Outcome:
    """Check and open a vendor reply to request ``rid``; raises :class:`MillicentError` if it does not check."""
    try:
        if mtype == SEALED_REPLY.code:
            outer = SEALED_SCHEMA.decode(param)
            if secret is None or outer["rid"] != rid:
                raise MillicentError("bad_reply", "a sealed reply to another request or without a secret")
            param = box_key(secret, rid, outer["customer_id"]).open(1, outer["box"], outer["customer_id"] + rid)
        elif mtype in _BROKER_REPLIES:  # a vendor address mistyped as the broker's (the two ports are alike)
            raise MillicentError("not_a_vendor", "the address answered as a Millicent broker, not a vendor")
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
            issued_secret = box_key(secret, rid, b"issue\x00\x00\x00").open(2, f["issued_secret"], issued.customer_id)
        except CryptoError:
            raise MillicentError("bad_reply", "cannot open the issued customer secret") from None
    return Outcome(status, change, f.get("content", b""), issued, issued_secret, f.get("detail", ""), authentic)
