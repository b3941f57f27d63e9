"""SPEED's negotiation phase (paper section 4.2): the customer's and the vendor's machines and their strategies.

Theory of operation
-------------------
The customer opens with a NegotiationRequest (SeqN 0, signed by its card, sealed to the vendor; built by the
caller, see :mod:`cardnet.protocols.speed.messages`). From then on the two sides alternate NegotiationSteps,
MACed under SignKey and encrypted under EnKey (both chosen by the customer): the vendor's carry odd SeqNs, the
customer's even ones, and each side takes only the step whose SeqN is one more than the last it saw, so a
replayed, reordered or reflected step ends the negotiation (paper 5.3: "interpreted as an active attack").

Only the customer agrees: it answers the vendor's offer with a Handshake (signed by its card, under EnKey),
and the vendor takes a Handshake only at the price of its own last offer. Either side ends the negotiation
with a step marked ``end`` when it receives a last offer it does not agree with (or when its strategy says
so).

A :class:`Strategy` decides each side's moves; the defaults are :class:`LimitStrategy` for the customer
(accept at or below a limit, counter-offer the limit otherwise) and :class:`PriceList` for the vendor (open at
the list price, accept anything at or above a floor, counter with the floor otherwise). Nothing here does I/O,
reads a clock or draws randomness: keys and NIDs come in as arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.speed import messages as sm
from cardnet.protocols.speed.messages import Price
from cardnet.wire import DecodeError


@dataclass(frozen=True, slots=True)
class Accept:
    """Agree to the other side's offer (the customer then signs a Handshake at ``price``)."""

    price: Price


@dataclass(frozen=True, slots=True)
class Counter:
    """Propose ``price``; ``last``: take it or leave it."""

    price: Price
    last: bool = False


@dataclass(frozen=True, slots=True)
class Break:
    """End the negotiation without an agreement."""

    reason: str


Move = Accept | Counter | Break


class Strategy(Protocol):
    """A side's negotiation policy: pure functions of what was offered."""

    def opening(self, products: list[str]) -> Counter | None:
        """The customer's opening price (None: ask the vendor's price); a vendor's strategy returns None."""
        ...

    def answer(self, offer: Price | None, last: bool, turn: int) -> Move:
        """The move after the other side offered ``offer`` (None: a request without a price), ``last`` if that
        was its last offer; ``turn`` counts this side's moves (0 first)."""
        ...


@dataclass(frozen=True, slots=True)
class LimitStrategy:
    """The customer's default: accept any offer at or below ``limit``; otherwise counter with the limit as a
    last offer once, then break. ``opening``: a first proposal (None: ask the vendor's price)."""

    limit: Price
    opening_price: Price | None = None

    def opening(self, products: list[str]) -> Counter | None:
        return None if self.opening_price is None else Counter(self.opening_price, last=False)

    def answer(self, offer: Price | None, last: bool, turn: int) -> Move:
        if offer is None:
            return Break("no_offer")
        if offer.currency != self.limit.currency:
            return Break(f"the vendor asks {offer.currency}, the limit is in {self.limit.currency}")
        if offer.amount <= self.limit.amount:
            return Accept(offer)
        if last or turn > 0:
            return Break(f"the vendor's price {offer} is over the limit {self.limit}")
        return Counter(self.limit, last=True)


@dataclass(frozen=True, slots=True)
class PriceList:
    """The vendor's default for one purchase: open at ``list_price``; take a proposal at or above ``floor`` (by
    offering it back, for the customer to shake hands on); counter below it with the floor as a last offer."""

    list_price: Price
    floor: Price | None = None

    def opening(self, products: list[str]) -> Counter | None:
        return None

    def answer(self, offer: Price | None, last: bool, turn: int) -> Move:
        floor = self.floor or self.list_price
        if offer is None:
            return Counter(self.list_price, last=floor == self.list_price)
        if offer.currency != floor.currency:
            return Break(f"prices here are in {floor.currency}")
        if offer.amount >= floor.amount:
            return Counter(min(offer, self.list_price), last=True)
        if last:
            return Break(f"{offer} is below what this vendor takes")
        return Counter(floor, last=True)


def _step(nid: bytes, seqn: int, price: Price, last: bool, end: bool = False) -> bytes:
    f: dict[str, Any] = {"nid": nid, "seqn": seqn, "price": price.fields(), "last": last}
    if end:
        f["end"] = True
    return sm.NEGOTIATION_STEP.encode(f)


@dataclass(frozen=True, slots=True)
class Sent:
    """A NegotiationStep to send (sealed)."""

    sealed: bytes


@dataclass(frozen=True, slots=True)
class Agreed:
    """The customer accepts the vendor's last offer: its card signs a Handshake at ``price``."""

    price: Price


@dataclass(frozen=True, slots=True)
class Ended:
    """No agreement; ``sealed``: a step telling the other side (None when the other side ended it)."""

    reason: str
    sealed: bytes | None = None


@dataclass(slots=True)
class _Side:
    nid: bytes
    enkey: bytes
    signkey: bytes
    strategy: Strategy
    seqn: int = 0  # the last SeqN sent or taken
    turn: int = 0
    done: bool = False

    def _open(self, sealed: bytes, prefix: bytes, what: str) -> dict[str, Any]:
        if self.done:
            raise ProtocolError("finished", "this negotiation is over: no further step is taken")
        counter = self.seqn + 1
        try:
            raw = sm.sym_open(self.enkey, prefix, counter, sealed, sign_key=self.signkey, what=what)
        except ProtocolError as exc:
            self.done = True  # an active attack (paper 5.3): the negotiation ends
            raise ProtocolError(exc.reason, f"{exc} (expected SeqN {counter}): negotiation ended") from None
        try:
            step = sm.decode(sm.NEGOTIATION_STEP, raw, what)
        except DecodeError:
            self.done = True  # authentic but malformed: only the other key holder could send it; it ends here
            raise
        if step["nid"] != self.nid or step["seqn"] != counter:
            self.done = True
            raise ProtocolError("replayed", f"the {what} is not the next of this negotiation: negotiation ended")
        self.seqn = counter
        return step

    def _seal(self, prefix: bytes, price: Price, last: bool, end: bool = False) -> bytes:
        if self.seqn + 1 > sm.MAX_SEQN:
            self.done = True
            raise ProtocolError("too_long", f"a negotiation takes at most {sm.MAX_SEQN} messages")
        self.seqn += 1
        return sm.sym_seal(self.enkey, prefix, self.seqn, _step(self.nid, self.seqn, price, last, end),
                           sign_key=self.signkey)  # fmt: skip

    def _move(self, move: Move, prefix: bytes) -> Sent | Agreed | Ended:
        self.turn += 1
        if isinstance(move, Accept):
            self.done = True
            return Agreed(move.price)
        if isinstance(move, Break):
            self.done = True
            return Ended(move.reason)
        return Sent(self._seal(prefix, move.price, move.last))


@dataclass(slots=True)
class CustomerNegotiation(_Side):
    """The customer's side: :meth:`request` is the content its card signs; :meth:`on_step` each vendor step."""

    products: list[str] = field(default_factory=list)
    vendor_id: bytes = b""
    offered: Price | None = None  # the vendor's last offer

    def request(self) -> bytes:
        """NegotiationRequest's content (SeqN 0), for the card to sign."""
        opening = self.strategy.opening(self.products)
        f: dict[str, Any] = {
            "nid": self.nid, "seqn": 0, "products": sm.check_products(self.products), "vendor_id": self.vendor_id,
            "enkey": self.enkey, "signkey": self.signkey, "last": bool(opening and opening.last),
        }  # fmt: skip
        if opening is not None:
            f["price"] = opening.price.fields()
        return sm.NEGOTIATION_REQUEST.encode(f)

    def on_step(self, sealed: bytes) -> Sent | Agreed | Ended:
        step = self._open(sealed, sm.NONCE_V_STEP, "vendor's NegotiationStep")
        if step.get("end"):
            self.done = True
            return Ended("the vendor ended the negotiation")
        self.offered = Price.of(step["price"])
        move = self.strategy.answer(self.offered, step["last"], self.turn)
        if isinstance(move, Break):
            self.done = True
            return Ended(move.reason, self._seal(sm.NONCE_C_STEP, self.offered, True, end=True))
        if isinstance(move, Accept) and move.price != self.offered:
            raise ProtocolError("bad_strategy", "a customer accepts the vendor's offer as it is")
        return self._move(move, sm.NONCE_C_STEP)

    def seal_handshake(self, signed_handshake: bytes) -> bytes:
        """The Handshake the card signed, under EnKey."""
        return sm.sym_seal(self.enkey, sm.NONCE_HANDSHAKE, 0, signed_handshake)

    def open_bill(self, sealed: bytes) -> bytes:
        """The vendor's signed bill out of ``| {Bill}_V^-1 |_EnKey``."""
        return sm.sym_open(self.enkey, sm.NONCE_BILL, 0, sealed, what="bill")


@dataclass(slots=True)
class VendorNegotiation(_Side):
    """The vendor's side, made from a NegotiationRequest it opened and checked (the vendor service does:
    :meth:`cardnet.services.speed.vendor.VendorCore._request`)."""

    products: list[str] = field(default_factory=list)
    offered: Price | None = None  # this vendor's last offer: the only price a Handshake may carry
    customer_cert: bytes = b""
    vendor_id: bytes = b""

    def first(self, proposal: Price | None, last: bool) -> Sent | Ended:
        """The answer to the request's opening (``proposal``, ``last``)."""
        return self._answer(proposal, last)

    def on_step(self, sealed: bytes) -> Sent | Ended:
        step = self._open(sealed, sm.NONCE_C_STEP, "customer's NegotiationStep")
        if step.get("end"):
            self.done = True
            return Ended("the customer ended the negotiation")
        return self._answer(Price.of(step["price"]), step["last"])

    def _answer(self, proposal: Price | None, last: bool) -> Sent | Ended:
        move = self.strategy.answer(proposal, last, self.turn)
        self.turn += 1
        if isinstance(move, Accept):  # a vendor agrees by offering the price back: only the customer shakes hands
            move = Counter(move.price, last=True)
        if isinstance(move, Break):
            self.done = True
            price = proposal or self.offered
            sealed = None if price is None else self._seal(sm.NONCE_V_STEP, price, True, end=True)
            return Ended(move.reason, sealed)
        self.offered = move.price
        return Sent(self._seal(sm.NONCE_V_STEP, move.price, move.last))

    def on_handshake(self, sealed: bytes) -> Price:
        """The agreed price, from the customer's Handshake: signed by the customer who opened, at this vendor's
        last offer, for this NID, VendorID and products."""
        if self.done:
            raise ProtocolError("finished", "this negotiation is over")
        raw = sm.sym_open(self.enkey, sm.NONCE_HANDSHAKE, 0, sealed, what="Handshake")
        content = sm.signed(raw, "Handshake", cert_der=self.customer_cert).content
        h = sm.decode(sm.HANDSHAKE, content, "Handshake")
        if h["nid"] != self.nid or h["vendor_id"] != self.vendor_id or h["hp"] != sm.products_hash(self.products):
            raise ProtocolError("wrong_handshake", "the Handshake is for another negotiation or other products")
        price = Price.of(h["price"])
        if self.offered is None or price != self.offered:
            raise ProtocolError("wrong_price", f"the Handshake's price {price} is not this vendor's last offer")
        self.done = True
        return price

    def seal_bill(self, signed_bill: bytes) -> bytes:
        return sm.sym_seal(self.enkey, sm.NONCE_BILL, 0, signed_bill)
