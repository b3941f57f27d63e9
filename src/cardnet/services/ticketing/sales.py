"""The ticketing server's durable records, in the SPEED vendor's store: which sale holds each seat, and each
ticket's way from the sale to the buyer's card.

Theory of operation. A seat is claimed by :func:`claim`, the vendor's ``on_sale`` hook: it runs inside the
transaction that records the SPEED delivery (before the bill leaves the vendor), and ``insert`` on
``tk.seat`` is first-wins, so of any number of concurrent buyers exactly one gets a bill for a seat; the others
are refused ``seat_sold`` before they could pay anything. The ticket is then recorded under the
PaymentOrderID with the buyer's card (the card that signed the purchase), so only that card can receive it.

A claimed seat stays with its sale until the sale is paid (a bill can be paid at any time: SPEED bills carry no
deadline), so a card that asks for bills and never pays them would hold seats from everyone. Each card may hold at
most ``max_unpaid`` sales billed within the last ``window_s`` and not known paid (``tk.unpaid``: card +
PaymentOrderID -> when billed; dropped when the sale is paid, or by the card's next claim once older than the
window); one more is refused ``unpaid_sales`` before it is billed. Holding every seat then takes many certified
cards, or a long time; and an honest card that a crash left with unpaid sales (a delivery recorded but never sent)
is not shut out for good.

A ticket moves ``sold`` (billed, not known paid) -> ``paid`` (the broker's receipt, checked by the vendor) ->
``minted`` (the device holds the token) -> ``sent`` (the TRN transfer to the buyer's card started) ->
``delivered`` (the token left the device: the transfer committed). Every step is written before the next
begins and each is idempotent, so a retry (keyed by the PaymentOrderID) resumes wherever a crash or a dropped
connection stopped it; the token's oid is derived from the PaymentOrderID, so a repeated mint is recognised.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from cardnet.crypto import pki, profile
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.trn.token import OID_BYTES
from cardnet.store import Store, Txn
from cardnet.wire import Uid
from cardnet.wire.cbor import dumps, loads_one

SEATS, TICKETS, UNPAID = "tk.seat", "tk.ticket", "tk.unpaid"
MAX_UNPAID = 8  # sales a card may hold billed within UNPAID_WINDOW_S and not known paid (max_unpaid_per_card)
UNPAID_WINDOW_S = 3600.0  # how long an unpaid sale counts against its card (unpaid_window_s)
STATES = ("sold", "paid", "minted", "sent", "delivered")
_OID_LABEL = b"cardnet/ticketing/oid/v1\x00"


def ticket_oid(poid: bytes) -> bytes:
    """The oid of the ticket a sale pays for (derived: a mint repeated after a crash names the same token)."""
    return profile.sha256(_OID_LABEL + poid)[:OID_BYTES]


@dataclass(frozen=True)
class Ticket:
    poid: bytes
    event: str
    seat: str
    card: Uid  # the buyer's card: the one that signed the purchase
    state: str

    @property
    def oid(self) -> bytes:
        return ticket_oid(self.poid)

    def encode(self) -> bytes:
        return dumps({"event": self.event, "seat": self.seat, "card": self.card.raw, "state": self.state})

    @classmethod
    def decode(cls, poid: bytes, raw: bytes) -> Ticket:
        f = loads_one(raw)
        assert isinstance(f, dict)
        return cls(poid, f["event"], f["seat"], Uid.from_bytes(f["card"]), f["state"])

    def public(self) -> dict[str, Any]:
        return {"poid": self.poid.hex(), "event": self.event, "seat": self.seat, "card": str(self.card),
                "oid": self.oid.hex(), "state": self.state}  # fmt: skip


def claim(
    txn: Txn, poid: bytes, products: list[str], customer_cert: bytes, *, now: float, max_unpaid: int = MAX_UNPAID,
    window_s: float = UNPAID_WINDOW_S,
) -> None:  # fmt: skip
    """The vendor's ``on_sale`` hook (``now`` and the bounds bound by the server): claim every seat of the purchase
    for this sale, first wins; refused ``unpaid_sales`` when the buying card holds ``max_unpaid`` sales billed since
    ``now - window_s`` and not known paid."""
    seats = [p for p in products if "/" in p]
    if len(seats) != 1 or len(products) != 1:
        raise ProtocolError("one_seat", "a ticket purchase names exactly one seat (event/seat)")
    event, _, seat = seats[0].partition("/")
    card = pki.uid_of(pki.cert_from_der(customer_cert))
    now_ms = int(now * 1000)
    since_ms = now_ms - int(window_s * 1000)
    unpaid = 0
    for key, billed in txn.scan(UNPAID, card.raw):  # (at most max_unpaid within the window, and those past it)
        if int.from_bytes(billed, "big") < since_ms:
            txn.delete(UNPAID, key)  # no longer counted
        else:
            unpaid += 1
    if unpaid >= max_unpaid:
        raise ProtocolError(
            "unpaid_sales",
            f"card {card} holds {unpaid} seats it was billed for and has not paid: pay them first (`cardnet wallet "
            f"recover`, then `cardnet wallet buy URL --poid POID`), or buy again in {window_s / 60:g} minutes",
        )
    if not txn.insert(SEATS, seats[0].encode(), poid):
        raise ProtocolError("seat_sold", f"seat {seat} of {event} is sold: choose another seat")
    txn.put(TICKETS, poid, Ticket(poid, event, seat, card, "sold").encode())
    txn.put(UNPAID, card.raw + poid, max(0, now_ms).to_bytes(8, "big"))


def sold_of(store: Store, event: str, seats: list[str]) -> tuple[set[str], int]:
    """Which of ``seats`` of ``event`` are sold (each read alone: a page of the seat map reads its own seats), and
    how many seats of ``event`` are sold (counted by the store)."""
    prefix = f"{event}/".encode()
    with store.transaction() as txn:
        return {s for s in seats if txn.get(SEATS, prefix + s.encode()) is not None}, txn.count(SEATS, prefix)


def seat_sale(store: Store, event: str, seat: str) -> tuple[bytes | None, int]:
    """The PaymentOrderID of the sale that holds ``seat`` of ``event`` (None: the seat is free), and how many seats
    of ``event`` are sold (counted by the store: one seat's page reads no other seat's sale)."""
    prefix = f"{event}/".encode()
    with store.transaction() as txn:
        return txn.get(SEATS, prefix + seat.encode()), txn.count(SEATS, prefix)


def ticket(store: Store, poid: bytes) -> Ticket | None:
    with store.transaction() as txn:
        raw = txn.get(TICKETS, poid)
    return None if raw is None else Ticket.decode(poid, raw)


def advance(store: Store, t: Ticket, state: str) -> Ticket:
    """Record that ticket ``t`` reached ``state`` (never backwards)."""
    if STATES.index(state) <= STATES.index(t.state):
        return t
    new = replace(t, state=state)
    with store.transaction() as txn:
        txn.put(TICKETS, t.poid, new.encode())
        if t.state == "sold":
            txn.delete(UNPAID, t.card.raw + t.poid)
    return new
