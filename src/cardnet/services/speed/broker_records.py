"""The SPEED broker's store: its tables, the schema of each record, and the errors of its operations."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from cardnet.errors import CardnetError
from cardnet.protocols.speed import messages as sm
from cardnet.protocols.speed import purse as pp
from cardnet.wire import Bytes, Field, ListOf, Nested, Schema, Text, UidType, UInt

CFG, VENDORS, ACCOUNTS, ORDERS, RECEIPTS, LOADS = "sb.cfg", "sb.vendor", "sb.acct", "sb.order", "sb.rcpt", "sb.load"
# VENDORS: a vendor's VendorID -> the number of its account (the least, if it has several): the index that answers
# "which account is this vendor's" without reading every account; complete once CFG holds VENDOR_INDEX
VENDOR_INDEX = b"vendor_index"
REMOVED = "sb.gone"  # vendor accounts whose vendor was removed (remove_vendor) -> when (8 bytes, Unix s)
REFUSED_LOADS = "sb.lref"  # (uid, m) of a genuine L1 refused for its account -> the reason: refused for good
SETTLED = "sb.settled"  # purse debits credited from the SAM's log (see BrokerCore.settle)
HELD_CREDITS = "sb.held"  # PaymentOrderIDs of the sb.settled records whose credit is held (their index, kept small)
AUTHORISED = "sb.auth"  # purse payments of bills with a deadline authorised, not paid -> when (8 bytes), the debit
LATE = "sb.late"  # payment orders of bills past their deadline this broker never took, refused for good -> when
DAYS = "sb.day"  # the SAM's totals of each day the broker settled and had the SAM prune (see BrokerCore.prune)


_MAX_CURRENCIES = 16  # an account's balances: one per currency
_ACCOUNT = Schema(
    "sb.account",
    [
        Field(0, "owner", Bytes(32)),  # a vendor's VendorID, or a customer card's Uid (16 bytes)
        Field(1, "balances", ListOf(Nested(sm.PRICE), _MAX_CURRENCIES)),
    ],
)
_ORDER = Schema(
    "sb.order",
    [
        Field(0, "state", Text(16)),  # authorised | paid
        Field(1, "customer", UidType()),
        Field(2, "price", Nested(sm.PRICE)),
        Field(3, "account", Text(sm.MAX_ACCOUNT)),  # the vendor's
        Field(4, "k", Bytes(32, 32)),
        Field(5, "rec_key", Bytes(32, 32)),
        Field(6, "kind", Text(8)),
        Field(7, "s1", Bytes(pp.MAX_MESSAGE_BYTES), optional=True),
        Field(8, "answer", Bytes(1024), optional=True),  # the sealed | POID, S2 |
        Field(9, "benc", Bytes(32, 32), optional=True),
        Field(10, "bsign", Bytes(32, 32), optional=True),
        Field(11, "receipt", Bytes(sm.MAX_SIGNED + 64), optional=True),
        Field(12, "hp", Bytes(32, 32)),  # from the bill: what a complaint is checked against
        Field(13, "hc", Bytes(32, 32)),
        Field(14, "sizes", ListOf(UInt(sm.MAX_PRODUCT_BYTES), sm.MAX_PRODUCTS)),
        Field(15, "chunk", UInt(sm.MAX_PRODUCT_BYTES)),
        Field(16, "vendor_cert", Bytes(4096, 1)),
        Field(17, "verdict", Text(1024), optional=True),  # a complaint upheld (the refund was made)
        Field(18, "taken", UInt(), optional=True),  # when this broker took the order (Unix s): its certificates' time
    ],
)


_SETTLED = Schema(
    "sb.settled",
    [
        Field(0, "account", Text(sm.MAX_ACCOUNT)),
        Field(1, "currency", Text(3)),
        Field(2, "amount", UInt(pp.MAX_AMOUNT)),
        Field(3, "day", UInt()),
        Field(4, "held", Text(1024), optional=True),  # not credited yet: why (the vendor's account could not take it)
        Field(5, "taken", UInt(), optional=True),  # when the broker authorised it (from sb.auth, which then goes)
        Field(6, "refunded", UInt(1), optional=True),  # 1: its credit, held, went back to the customer (a complaint)
    ],
)


_SUM = Schema("sb.sum", [Field(0, "currency", Text(3)), Field(1, "amount", UInt())])
_DAY = Schema(
    "sb.day",
    [
        Field(0, "debits", ListOf(Nested(_SUM), 256)),  # the SAM's totals of the day, per currency
        Field(1, "loads", ListOf(Nested(_SUM), 256)),
        Field(2, "entries", UInt()),  # the log entries the SAM held for the day when it was settled
        Field(3, "settled", UInt()),  # debits credited then from the log (the register did not show them paid)
    ],
)


class BrokerError(CardnetError):
    """The broker cannot be set up or run as asked."""


class _Refusal(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


@contextlib.contextmanager
def _as_broker_error() -> Iterator[None]:
    """A refusal met by an operator's operation (settlement, pruning), not by a request: raised as a
    :class:`BrokerError` (what commands and the server catch), its reason and words kept."""
    try:
        yield
    except _Refusal as r:
        raise BrokerError(r.reason, r.detail) from None
