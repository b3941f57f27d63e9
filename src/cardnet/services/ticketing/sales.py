"""The ticketing server's durable records, in the SPEED vendor's store: which sale holds each seat, and each
ticket's way from the sale to the buyer's card.

Theory of operation. A seat is claimed by :func:`claim`, the vendor's ``on_sale`` hook: it runs inside the
transaction that records the SPEED delivery (before the bill leaves the vendor), and ``insert`` on
``tk.seat`` is first-wins, so of any number of concurrent buyers exactly one gets a bill for a seat; the others
are refused ``seat_sold`` before they could pay anything. The ticket is then recorded under the
PaymentOrderID with the buyer's card (the card that signed the purchase), so only that card can receive it.

A claimed seat stays with its sale until the sale is paid or its bill's deadline passed: the vendor writes a
deadline (``pay_by``) into each bill and the broker pays no bill after it, so :func:`release` gives back, once the
deadline and a margin passed, the seat of every sale with no receipt whose payment the broker did not authorise
(``tk.due``: when to look + PaymentOrderID, in that order; first the deadline). The broker says, asked about each
sale, whether it paid it (the receipt), authorised it before the deadline (its S2 given: the buyer's purse may have
debited, and the broker pays it whenever the buyer comes back) or neither; an authorised sale keeps its seat and is
asked about again, until it is paid or the broker says the authorisation ended. A receipt that still comes for a
released sale takes the seat back if nobody bought it since (:func:`reclaim`).

Until the deadline a card could hold seats it never pays for, so each card may hold at most ``max_unpaid`` sales
billed within the last ``window_s`` and not known paid (``tk.unpaid``: card + PaymentOrderID -> when billed; dropped
when the sale is paid, or by the card's next claim once older than the window); one more is refused
``unpaid_sales`` before it is billed. Holding every seat then takes many certified cards, or a long time; and an
honest card that a crash left with unpaid sales (a delivery recorded but never sent) is not shut out for good.

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
from cardnet.store.errors import damaged
from cardnet.wire import Uid
from cardnet.wire.cbor import dumps, loads_one

SEATS, TICKETS, UNPAID, DUE = "tk.seat", "tk.ticket", "tk.unpaid", "tk.due"
MAX_UNPAID = 8  # sales a card may hold billed within UNPAID_WINDOW_S and not known paid (max_unpaid_per_card)
UNPAID_WINDOW_S = 3600.0  # how long an unpaid sale counts against its card (unpaid_window_s)
STATES = ("sold", "paid", "minted", "sent", "delivered")
RELEASED = "released"  # a sale whose bill passed its deadline unpaid: its seat went back on sale (not in STATES)
PAY_WITHIN_S = 900.0  # a bill's deadline, from when it is made (pay_within_s)
RELEASE_MARGIN_S = 300.0  # after the deadline, for a payment already at the broker, before the seat is released
RELEASE_BATCH = 256  # sales looked at in one transaction at most (and asked about in one speed.order_states)
LOOK_AGAIN_S = 10.0  # how often a due sale whose payment the broker authorised is asked about again
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
    def product(self) -> str:
        """The SPEED product id of the seat (``tk.seat``'s key)."""
        return f"{self.event}/{self.seat}"

    @property
    def oid(self) -> bytes:
        return ticket_oid(self.poid)

    def encode(self) -> bytes:
        return dumps({"event": self.event, "seat": self.seat, "card": self.card.raw, "state": self.state})

    @classmethod
    def decode(cls, poid: bytes, raw: bytes) -> Ticket:
        """The sale's record as :meth:`encode` wrote it; the store's error (``damaged``) if it is not."""
        with damaged(f"the record of sale {poid.hex()}"):
            f = loads_one(raw)
            if not isinstance(f, dict) or set(f) != {"event", "seat", "card", "state"}:
                raise ValueError("not a map of event, seat, card and state")
            event, seat, card, state = f["event"], f["seat"], f["card"], f["state"]
            if not all(isinstance(v, str) for v in (event, seat, state)) or state not in (*STATES, RELEASED):
                raise ValueError(f"event, seat or state is not one a sale has (state {state!r})")
            return cls(poid, event, seat, Uid.from_bytes(card), state)

    def public(self) -> dict[str, Any]:
        return {"poid": self.poid.hex(), "event": self.event, "seat": self.seat, "card": str(self.card),
                "oid": self.oid.hex(), "state": self.state}  # fmt: skip


def claim(
    txn: Txn, poid: bytes, products: list[str], customer_cert: bytes, pay_by: int | None = None, *, now: float,
    max_unpaid: int = MAX_UNPAID, window_s: float = UNPAID_WINDOW_S,
) -> None:  # fmt: skip
    """The vendor's ``on_sale`` hook (``now`` and the bounds bound by the server): claim every seat of the purchase
    for this sale, first wins, until the bill's deadline ``pay_by`` (Unix seconds; None: until it is paid); refused
    ``unpaid_sales`` when the buying card holds ``max_unpaid`` sales billed since ``now - window_s`` and not known
    paid."""
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
    if pay_by is not None:
        txn.put(DUE, pay_by.to_bytes(8, "big") + poid, b"")


def due_sales(store: Store, before: float) -> list[bytes]:
    """The ``tk.due`` keys (when to look + PaymentOrderID) before ``before``, at most :data:`RELEASE_BATCH`, oldest
    first: the sales :func:`release` is to look at, once the broker said what became of their payments."""
    with store.transaction() as txn:
        rows = txn.scan(DUE, limit=RELEASE_BATCH)
    return [k for k, _ in rows if int.from_bytes(k[:8], "big") < before]


def release(store: Store, due: list[bytes], authorised: set[bytes], look_again: int) -> list[Ticket]:
    """Give back the seats of the sales of ``due`` (keys from :func:`due_sales`) that have no receipt (``sold``) and
    whose payment the broker did not authorise: each such sale is marked ``released``, its seat freed (so it can be
    sold again) and it no longer counts against its card. The broker refuses their bills now, so none of them can be
    paid any more. A sale whose PaymentOrderID is in ``authorised`` (the broker gave its S2 before the deadline and
    pays it whenever the buyer comes back) keeps its seat and is looked at again at ``look_again`` (Unix seconds):
    until it is paid, or the broker says that authorisation ended. The sales released."""
    out: list[Ticket] = []
    with store.transaction() as txn:
        for key in due:
            if txn.get(DUE, key) is None:  # looked at meanwhile
                continue
            txn.delete(DUE, key)
            poid = key[8:]
            raw = txn.get(TICKETS, poid)
            t = None if raw is None else Ticket.decode(poid, raw)
            if t is None or t.state != "sold":  # paid (or released) meanwhile
                continue
            if poid in authorised:
                txn.put(DUE, max(0, look_again).to_bytes(8, "big") + poid, b"")
                continue
            if txn.get(SEATS, t.product.encode()) == poid:
                txn.delete(SEATS, t.product.encode())
            txn.delete(UNPAID, t.card.raw + poid)
            t = replace(t, state=RELEASED)
            txn.put(TICKETS, poid, t.encode())
            out.append(t)
    return out


def reclaim(store: Store, t: Ticket) -> Ticket:
    """A released sale whose receipt came after all (the broker authorised its payment before the deadline and
    finished it after the margin): its seat back for it, paid, if nobody has bought the seat since; else
    ``seat_resold``."""
    with store.transaction() as txn:
        if not txn.insert(SEATS, t.product.encode(), t.poid) and txn.get(SEATS, t.product.encode()) != t.poid:
            raise ProtocolError(
                "seat_resold",
                f"seat {t.seat} of {t.event} was released at its bill's deadline and sold again before this payment "
                "came: ask the seller for a refund, showing this receipt",
            )
        t = replace(t, state="paid")
        txn.put(TICKETS, t.poid, t.encode())
    return t


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
    """Record that ticket ``t`` reached ``state`` (never backwards; a released sale only by :func:`reclaim`)."""
    if t.state == RELEASED or STATES.index(state) <= STATES.index(t.state):
        return t
    new = replace(t, state=state)
    with store.transaction() as txn:
        txn.put(TICKETS, t.poid, new.encode())
        if t.state == "sold":
            txn.delete(UNPAID, t.card.raw + t.poid)
    return new
