"""The eTP messages that carry SPEED between the customer's wallet, the vendor and the broker over TCP.

Each carries one of the paper's messages (already signed, sealed or encrypted: see
:mod:`cardnet.protocols.speed.messages`) with what the receiver needs to find its state (the NID, the
PaymentOrderID). Every request gets exactly one answer frame except the delivery, which is a header, the
ciphertext chunks and the sealed bill; a refusal is ``speed.refused {reason, detail}`` from either service.

Receive limits: each service takes the requests it answers and nothing larger than the largest of them, computed
here from their schemas (:func:`~cardnet.wire.max_encoded_bytes`: every field at its declared maximum, plus the
34-byte header): :data:`VENDOR_MAX_REQUEST` and :data:`BROKER_MAX_REQUEST`, and for a complaint, which carries
the deciphered products, :data:`BROKER_MAX_COMPLAINT` (its contents at most ``MAX_COMPLAINT_BYTES`` in all). A
larger request is refused unread with :func:`request_too_large`.
"""

from __future__ import annotations

from typing import Any, Protocol

from cardnet.protocols.speed import messages as sm
from cardnet.protocols.speed.purse import MAX_MESSAGE_BYTES
from cardnet.protocols.trn.transfer import MAX_CERT
from cardnet.wire import (
    HEADER_BYTES,
    Bool,
    Bytes,
    Field,
    ListOf,
    Message,
    MType,
    Nested,
    Schema,
    Text,
    Uid,
    UInt,
    head_bytes,
    max_encoded_bytes,
    register,
)

P = "speed"
_NID = Field(0, "nid", Bytes(sm.NID_BYTES, sm.NID_BYTES))
_POID = Field(0, "poid", Bytes(sm.POID_BYTES, sm.POID_BYTES))
_SEALED = Bytes(sm.MAX_SEALED_SIGNED + 2 * sm.MAX_SIGNED, 1)

# --- customer <-> vendor ---------------------------------------------------------------------------------------
CATALOGUE = register(0x0610, "speed.catalogue", P, Schema("speed.catalogue", []))
ITEMS = register(
    0x0611,
    "speed.items",
    P,
    Schema(
        "speed.items",
        [
            Field(0, "cert", Bytes(MAX_CERT, 1)),  # the vendor's certificate
            Field(1, "entries", ListOf(Bytes(sm.MAX_SIGNED, 1), 1024)),  # signed catalogue entries
        ],
    ),
)
REQUEST = register(
    0x0612,
    "speed.request",
    P,
    Schema("speed.request", [Field(0, "mode", Text(16)), Field(1, "sealed", _SEALED)]),
)
STEP = register(0x0613, "speed.step", P, Schema("speed.step", [_NID, Field(1, "sealed", Bytes(1024, 1))]))
HANDSHAKE = register(
    0x0614, "speed.handshake_msg", P, Schema("speed.handshake_msg", [_NID, Field(1, "sealed", _SEALED)])
)
DELIVERY = register(
    0x0615,
    "speed.delivery",
    P,
    Schema(
        "speed.delivery",
        [
            _NID,
            Field(1, "sizes", ListOf(UInt(sm.MAX_PRODUCT_BYTES), sm.MAX_PRODUCTS)),
            Field(2, "chunk", UInt(sm.MAX_PRODUCT_BYTES)),
        ],
    ),
)
CHUNK = register(
    0x0616,
    "speed.chunk",
    P,
    Schema(
        "speed.chunk",
        [
            _NID,
            Field(1, "product", UInt(sm.MAX_PRODUCTS - 1)),
            Field(2, "index", UInt(sm.MAX_CHUNKS)),
            Field(3, "data", Bytes(sm.CHUNK_BYTES + sm.TAG_BYTES, sm.TAG_BYTES)),
        ],
    ),
)
BILL = register(0x0617, "speed.bill_msg", P, Schema("speed.bill_msg", [_NID, Field(1, "sealed", _SEALED)]))
ENDED = register(
    0x0618, "speed.ended", P, Schema("speed.ended", [_NID, Field(1, "sealed", Bytes(1024), optional=True)])
)
REFUSED = register(
    0x0619,
    "speed.refused",
    P,
    Schema("speed.refused", [Field(0, "reason", Text(64)), Field(1, "detail", Text(1024))]),
)
RECEIPT_FOR_VENDOR = register(
    0x061A,
    "speed.vendor_receipts",
    P,
    Schema(
        "speed.vendor_receipts",
        [
            Field(0, "after", UInt(2**63 - 1)),  # a log position (SQLite: signed 64-bit)
            Field(1, "signed", Bytes(sm.MAX_SIGNED, 1)),  # the vendor's signed speed.receipts_ask (the same after)
        ],
    ),
)
MAX_ORDER_STATES = 256  # PaymentOrderIDs one speed.order_states asks about
ORDER_STATES = register(  # V -> B: what became of these payment orders (before the vendor releases their goods)
    0x061B,
    "speed.order_states",
    P,
    Schema("speed.order_states", [Field(0, "poids", ListOf(Bytes(sm.POID_BYTES, sm.POID_BYTES), MAX_ORDER_STATES))]),
)
ORDER_STATE = Schema(
    "speed.order_state",
    [
        _POID,
        Field(1, "state", Text(16)),  # paid | authorised (the broker pays it whenever it comes) | none
        Field(2, "sealed", Bytes(sm.MAX_SIGNED + 64, 1), optional=True),  # paid: the sealed receipt
    ],
)

# --- customer <-> broker ---------------------------------------------------------------------------------------
ORDER = register(0x0620, "speed.order_msg", P, Schema("speed.order_msg", [Field(0, "sealed", _SEALED)]))
PURSE = register(0x0621, "speed.purse_msg", P, Schema("speed.purse_msg", [_POID, Field(1, "sealed", Bytes(512, 1))]))
RECEIPT = register(
    0x0622,
    "speed.receipt_msg",
    P,
    Schema("speed.receipt_msg", [_POID, Field(1, "sealed", Bytes(sm.MAX_SIGNED + 64, 1))]),
)
RESEND = register(0x0623, "speed.resend", P, Schema("speed.resend", [_POID]))
LOAD = register(
    0x0624,
    "speed.load",
    P,
    Schema(
        "speed.load",
        [Field(0, "l1", Bytes(MAX_MESSAGE_BYTES, 1)), Field(1, "account", Text(sm.MAX_ACCOUNT))],
    ),
)
LOAD_STEP = register(
    0x0625, "speed.load_step", P, Schema("speed.load_step", [Field(0, "l", Bytes(MAX_MESSAGE_BYTES, 1))])
)
LOAD_REFUSED = register(  # the answer to speed.load refused for good: the SAM's LR, on which the purse forgets it
    0x062C,
    "speed.load_refused",
    P,
    Schema(
        "speed.load_refused",
        [Field(0, "reason", Text(64)), Field(1, "detail", Text(1024)), Field(2, "lr", Bytes(MAX_MESSAGE_BYTES, 1))],
    ),
)
END_DEBIT = register(  # C -> B: end a debit the purse has under way that no purchase will finish (the card's SE)
    0x062D, "speed.end_debit", P, Schema("speed.end_debit", [Field(0, "se", Bytes(MAX_MESSAGE_BYTES, 1))])
)
DEBIT_REFUSED = register(  # the answer to speed.end_debit: the SAM's SR, on which the purse forgets the debit
    0x062E,
    "speed.debit_refused",
    P,
    Schema(
        "speed.debit_refused",
        [Field(0, "reason", Text(64)), Field(1, "detail", Text(1024)), Field(2, "sr", Bytes(MAX_MESSAGE_BYTES, 1))],
    ),
)
LOADED = register(
    0x0626, "speed.loaded", P, Schema("speed.loaded", [Field(0, "ok", Bool()), Field(1, "balance", UInt())])
)
RECEIPTS = register(
    0x0627,
    "speed.receipts",
    P,
    Schema(
        "speed.receipts",
        [
            Field(0, "items", ListOf(Bytes(sm.MAX_SIGNED + 128, 1), 1024)),  # PURSE_STEP-like: poid + sealed receipt
            Field(1, "last", UInt()),
        ],
    ),
)
STATES = register(
    0x062F,
    "speed.states",
    P,
    Schema("speed.states", [Field(0, "items", ListOf(Nested(ORDER_STATE), MAX_ORDER_STATES))]),
)
ISSUE_KEY = register(
    0x0628, "speed.issue_key", P, Schema("speed.issue_key", [Field(0, "card_cert", Bytes(MAX_CERT, 1))])
)
KEY = register(0x0629, "speed.key", P, Schema("speed.key", [Field(0, "sealed", Bytes(256, 1))]))

COMPLAINT = register(
    0x062A,
    "speed.complaint",
    P,
    Schema(
        "speed.complaint",
        [
            _POID,
            Field(1, "products", ListOf(Text(sm.MAX_PRODUCT_ID), sm.MAX_PRODUCTS)),  # the ids the customer asked for
            Field(2, "entries", ListOf(Bytes(sm.MAX_SIGNED, 1), sm.MAX_PRODUCTS)),  # the vendor's signed entries
            Field(3, "contents", ListOf(Bytes(sm.MAX_COMPLAINT_BYTES), sm.MAX_PRODUCTS)),  # what was deciphered
            Field(4, "refund_to", Text(sm.MAX_ACCOUNT)),  # the customer's account at the broker
        ],
    ),
)
VERDICT = register(
    0x062B,
    "speed.verdict",
    P,
    Schema(
        "speed.verdict",
        [_POID, Field(1, "upheld", Bool()), Field(2, "why", Text(1024)), Field(3, "refund", UInt())],
    ),
)

# --- receive limits (bytes of one message: header + param) ------------------------------------------------------
VENDOR_REQUESTS = (CATALOGUE, REQUEST, STEP, HANDSHAKE)  # what a vendor answers
BROKER_REQUESTS = (  # what a broker answers
    ORDER, PURSE, RESEND, ISSUE_KEY, LOAD, LOAD_STEP, END_DEBIT, RECEIPT_FOR_VENDOR, ORDER_STATES, COMPLAINT,
)  # fmt: skip


def max_request_bytes(mtype: MType) -> int:
    """The largest ``mtype`` message its schema lets through (header included)."""
    return HEADER_BYTES + max_encoded_bytes(mtype.schema)


_CONTENTS = COMPLAINT.schema.by_name["contents"].type
VENDOR_MAX_REQUEST = max(max_request_bytes(m) for m in VENDOR_REQUESTS)  # speed.request: 24,714 bytes
BROKER_MAX_REQUEST = max(max_request_bytes(m) for m in BROKER_REQUESTS if m is not COMPLAINT)  # order: 24,696
# a complaint with MAX_PRODUCTS entries and contents of MAX_COMPLAINT_BYTES in all: 12,718,407 bytes
BROKER_MAX_COMPLAINT = (
    max_request_bytes(COMPLAINT)
    - max_encoded_bytes(_CONTENTS)
    + head_bytes(sm.MAX_PRODUCTS)
    + sm.MAX_PRODUCTS * head_bytes(sm.MAX_COMPLAINT_BYTES)
    + sm.MAX_COMPLAINT_BYTES
)


def reply(msg: Message, mtype: MType, /, **fields: Any) -> Message:
    """The answer to ``msg``: an ``mtype`` frame with ``fields``."""
    return msg.reply(mtype.code, mtype.schema.encode(fields))


def refused(msg: Message, reason: str, detail: str) -> Message:
    """``speed.refused`` answering ``msg`` (reason and detail cut to their bounds)."""
    return reply(msg, REFUSED, reason=reason[:64], detail=detail[:1024])


def too_large(msg: Message, frame: Message) -> Message:
    """``speed.refused`` (``oversize``) answering ``msg`` in place of ``frame``, a frame of its answer that is above
    the connection's frame limit (a server sends this instead, and the answer's other frames)."""
    return refused(msg, "oversize", f"a frame of the answer (mtype 0x{frame.mtype:04x}, {frame.size} bytes) is above "
                   "this connection's frame limit and was not sent: ask the operator to raise it")  # fmt: skip


class Unread(Protocol):
    """The header and size of a request refused unread (the transport's ``SkippedFrame``)."""

    @property
    def src(self) -> Uid: ...
    @property
    def dst(self) -> Uid: ...
    @property
    def mtype(self) -> int: ...
    @property
    def size(self) -> int: ...
    @property
    def limit(self) -> int: ...


def request_too_large(frame: Unread) -> Message:
    """``speed.refused`` (``too_large``) to the sender of ``frame``, a request begun above the service's receive
    limit: the service read none of it and closes the connection."""
    return Message(frame.dst, frame.src, REFUSED.code, REFUSED.schema.encode({
        "reason": "too_large",
        "detail": f"the request (mtype 0x{frame.mtype:04x}) is {frame.size} bytes, above this service's receive "
        f"limit of {frame.limit} bytes: it was not read, and the connection is closed; no SPEED request is that "
        "large (docs/speed.md)",
    }))  # fmt: skip
