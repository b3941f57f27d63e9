"""The customer's side of SPEED: a purchase driven by the wallet application, signed and paid by the card.

The wallet application (untrusted by the card, trusted by its owner) carries the messages: it negotiates with
the vendor under EnKey/SignKey (keys it draws), receives the ciphered product, and asks the card (the
conductor, ``speed.*`` orders, and the purse) for everything that needs the customer's key or money: the
signed NegotiationRequest or ProductRequest, the signed Handshake, the signed PaymentOrder with S1, and the
S3. The card pays only the bill it agreed to, once. :meth:`Customer.buy` returns the decrypted products with
the receipt; the product never enters the card.

``card`` is anything with ``async ask(order_mtype, answer_mtype, **fields) -> dict`` that raises a
:class:`~cardnet.errors.CardnetError` carrying the card's reason on a refusal: the wallet library's
:class:`~cardnet.services.wallet.Wallet` over a host, or :class:`AsyncLocalCard` for a card in this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cardnet.applets.speed import conductor as co
from cardnet.applets.speed import purse as pa
from cardnet.crypto import pki
from cardnet.crypto.errors import PkiError
from cardnet.errors import CardnetError
from cardnet.host.local import LocalCard
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.speed import catalogue as cat
from cardnet.protocols.speed import frames as fr
from cardnet.protocols.speed import messages as sm
from cardnet.protocols.speed import purse as pp
from cardnet.protocols.speed.negotiation import Agreed, CustomerNegotiation, Ended, LimitStrategy, Sent, Strategy
from cardnet.services.speed.vendor import open_receipt
from cardnet.transport import TransportError, dial, host_port
from cardnet.wire import DecodeError, Message, MType, Uid
from cardnet.wire.cbor import dumps, loads_one

TIMEOUT_S = 30.0
ME = Uid(b"\x00" * 12, 0)


class PurchaseError(CardnetError):
    """A purchase did not happen (``reason``: the vendor's, the broker's or the card's) or cannot be finished.
    ``party``: for ``unreachable``, who could not be reached (``"vendor"`` or ``"broker"``)."""

    party: str | None = None


class CardOrders(Protocol):
    async def ask(self, mtype: MType, reply: MType, /, **fields: Any) -> dict[str, Any]: ...


class AsyncLocalCard:
    """A :class:`LocalCard` behind the async ``ask`` the purchase uses (steps run in a worker thread)."""

    def __init__(self, card: LocalCard) -> None:
        self.card = card

    async def ask(self, mtype: MType, reply: MType, /, **fields: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.card.ask, mtype, reply, **fields)


@dataclass
class Purchase:
    """A finished purchase: what was bought, at what price, the products and the broker's receipt."""

    poid: bytes
    products: list[str]
    price: sm.Price
    contents: list[bytes]
    receipt: bytes  # sealed under RecKey (as the broker sent it)
    bill: bytes  # the vendor's signed bill (CMS)
    payment_order: bytes  # the card's signed PaymentOrder (CMS)
    steps: int = 0  # negotiation messages exchanged
    nid: bytes = b""  # its name in the journal (:class:`Journal`)


PERMANENT = frozenset(
    {"wrong_price", "wrong_product", "wrong_bill", "wrong_vendor", "already_paid", "not_agreed", "no_negotiation",
     "bad_mode", "unknown_vendor", "not_your_account", "not_your_purse", "bad_signature", "bad_certificate",
     "pruned", "debit_refused", "bill_expired", "vendor_cert_expired", "vendor_removed"}
)  # fmt: skip  # refusals a retry cannot change: the purchase is dropped from the journal (nothing was paid)
PAID_UNOPENED = "bad_key"  # paid and receipted, but the receipt's key does not open the products: kept as paid, and
# recover goes on with the other purchases (it lists it among the ones it did not finish)
NOTHING_PAID = frozenset(
    {"insufficient"}
)  # refused before any money moved, for now (the purse or the account holds too little): the purchase is dropped
# all the same, so that no later recover pays it unasked; the customer loads and buys again (docs/speed.md)


def check_delivery(bill: dict[str, Any], chunks: list[list[bytes]]) -> None:
    """The ciphered products are what the bill names (layout and H(|Product|_K)), else ``bad_delivery``."""
    try:
        sm.check_layout(bill["sizes"], bill["chunk"], [len(p) for p in chunks])
    except ProtocolError as exc:
        raise PurchaseError("bad_delivery", str(exc)) from None
    h = sm.DeliveryHash()
    for per in chunks:
        for c in per:
            h.update(c)
    if h.digest() != bill["hc"]:
        raise PurchaseError("bad_delivery", "the ciphered product is not the one the bill names: not paying")


@dataclass(frozen=True)
class Dropped:
    """A purchase dropped from the journal, unpaid: its products and the refusal that ended it."""

    nid: bytes
    products: list[str]
    reason: str
    detail: str


@dataclass
class Pending:
    """A purchase agreed and delivered, about to be paid: everything needed to finish it after a crash."""

    nid: bytes
    vendor_cert: bytes
    broker: str
    broker_cert: bytes
    bill: bytes  # the vendor's signed bill
    chunks: list[list[bytes]]
    products: list[str]
    payment: str
    benc: bytes
    bsign: bytes
    account: str | None = None
    steps: int = 0
    poid: bytes | None = None
    receipt: bytes | None = None
    dropped: str | None = None
    paying_at: float | None = None  # the wallet's clock when it was written here, before the card was asked to pay
    origin: str | None = None  # where the goods are fetched once paid (a ticketing server's http:// address)
    handed: bool | None = None  # the goods fetched from ``origin`` reached the card (True): nothing is owed any more

    def receipt_time(self, bill: dict[str, Any], now: float) -> float:
        """When the broker's certificate must have been valid for this purchase's receipt: now, or, if earlier, the
        time the wallet began paying it (:attr:`paying_at`, recorded before the card made its PaymentOrder) or the
        bill's deadline (the broker pays no bill after it). The customer chose this broker, with this certificate,
        then: its receipt for that payment stays good after the certificate expired (docs/speed.md, "Crashes")."""
        return min(t for t in (now, self.paying_at, bill.get("pay_by")) if t is not None)

    def encode(self) -> bytes:
        return dumps({k: v for k, v in self.__dict__.items() if v is not None})

    @classmethod
    def decode(cls, raw: bytes, where: str) -> Pending:
        """A journal file as :meth:`encode` wrote it, every field of its type; ``damaged_journal`` if it is not."""
        try:
            f = loads_one(raw)
            if not isinstance(f, dict):
                raise TypeError("not a map")
            for key, value in f.items():
                if not _PENDING_FIELD.get(key, _never)(value):
                    raise TypeError(f"its field {key!r} is not what a purchase keeps there")
            return cls(**f)
        except (DecodeError, TypeError) as exc:
            raise PurchaseError("damaged_journal", f"{where} is damaged ({exc}): move it away") from None


def _never(value: object) -> bool:
    return False


def _bytes_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(c, bytes) for c in value)


# What each field of a journal file may hold (an absent optional field is None; bool is no number here).
_PENDING_FIELD: dict[str, Callable[[object], bool]] = {
    **dict.fromkeys(("nid", "vendor_cert", "broker_cert", "bill", "benc", "bsign"), lambda v: isinstance(v, bytes)),
    **dict.fromkeys(("broker", "payment"), lambda v: isinstance(v, str)),
    **dict.fromkeys(("poid", "receipt"), lambda v: v is None or isinstance(v, bytes)),
    **dict.fromkeys(("account", "dropped"), lambda v: v is None or isinstance(v, str)),
    "chunks": lambda v: isinstance(v, list) and all(_bytes_list(per) for per in v),
    "products": lambda v: isinstance(v, list) and all(isinstance(p, str) for p in v),
    "steps": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    "paying_at": lambda v: v is None or (isinstance(v, int | float) and not isinstance(v, bool) and not math.isnan(v)),
    "origin": lambda v: v is None or isinstance(v, str),
    "handed": lambda v: v is None or isinstance(v, bool),
}


class Journal:
    """Purchases under way, one file each in a directory (written whole: a temporary file, fsync, rename), so that
    a purchase the card may have paid can always be finished: :meth:`Customer.recover`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def _file(self, nid: bytes) -> Path:
        return self.path / f"{nid.hex()}.purchase"

    def save(self, rec: Pending) -> None:
        tmp = self._file(rec.nid).with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(rec.encode())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self._file(rec.nid))
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def load(self, nid: bytes) -> Pending:
        path = self._file(nid)
        return Pending.decode(path.read_bytes(), str(path))

    def all(self) -> list[Pending]:
        return [Pending.decode(p.read_bytes(), str(p)) for p in sorted(self.path.glob("*.purchase"))]

    def pending(self) -> list[Pending]:
        return [r for r in self.all() if r.receipt is None and r.dropped is None]

    def paid(self, nid: bytes, poid: bytes, receipt: bytes) -> None:
        rec = self.load(nid)
        rec.poid, rec.receipt = poid, receipt
        self.save(rec)

    def handed(self, nid: bytes) -> None:
        """The goods of paid purchase ``nid``, fetched from its :attr:`Pending.origin`, reached the card."""
        rec = self.load(nid)
        rec.handed = True
        self.save(rec)

    def owed(self) -> list[Pending]:
        """Paid purchases whose goods are fetched from their origin (a ticket from its server) and have not reached the
        card yet: a delivery a lost connection or a crash cut after the payment."""
        return [r for r in self.all() if r.origin and r.receipt is not None and r.poid is not None and not r.handed]

    def drop(self, nid: bytes, reason: str) -> None:
        rec = self.load(nid)
        rec.dropped = reason
        self.save(rec)

    def moved(self, nid: bytes, broker: str) -> None:
        """Pay ``nid`` through the broker at ``broker`` from now on (the address it was bought with was wrong)."""
        rec = self.load(nid)
        rec.broker = broker
        self.save(rec)


def _addr(address: str) -> tuple[str, int]:
    try:
        return host_port(address)
    except ValueError as exc:
        raise PurchaseError("bad_address", str(exc)) from None


class _Link:
    """One TCP connection to a vendor or broker; refusals become :class:`PurchaseError`."""

    def __init__(self, address: str, who: str) -> None:
        self.address, self.who = address, who
        self.conn: Any = None

    async def __aenter__(self) -> _Link:
        host, port = _addr(self.address)
        try:
            self.conn = await asyncio.wait_for(dial(host, port), TIMEOUT_S)
        except (OSError, TransportError, TimeoutError) as exc:
            raise self._unreachable(f"cannot reach the {self.who} at {self.address}: {exc}") from None
        return self

    def _unreachable(self, words: str) -> PurchaseError:
        err = PurchaseError("unreachable", words)
        err.party = self.who
        return err

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.aclose()

    async def send(self, mtype: MType, /, **fields: Any) -> None:
        await self.conn.send(mtype.make(ME, ME, **fields))

    async def recv(self, *expected: MType) -> tuple[MType, dict[str, Any]]:
        try:
            msg: Message = await asyncio.wait_for(self.conn.recv(), TIMEOUT_S)
        except (TransportError, TimeoutError) as exc:
            raise self._unreachable(f"the {self.who} at {self.address} did not answer ({exc or 'timeout'})") from None
        if msg.mtype == fr.REFUSED.code:
            p = fr.REFUSED.parse(msg)
            raise PurchaseError(p["reason"], f"the {self.who} refused: {p['detail']}")
        for m in expected:
            if msg.mtype == m.code:
                return m, m.parse(msg)
        raise PurchaseError("bad_answer", f"the {self.who} answered mtype 0x{msg.mtype:04x}")

    async def ask(self, mtype: MType, *expected: MType, **fields: Any) -> tuple[MType, dict[str, Any]]:
        await self.send(mtype, **fields)
        return await self.recv(*expected)


async def install_key(card: CardOrders, broker: str) -> bool:
    """Get the purse's key from the broker's SAM (sealed to the card) and install it; whether it was new."""
    cert = (await card.ask(co.CERTIFICATE, co.CERT))["cert"]
    async with _Link(broker, "broker") as b:
        _, key = await b.ask(fr.ISSUE_KEY, fr.KEY, card_cert=cert)
    return bool((await card.ask(pa.INSTALL_KEY, pa.INSTALLED, sealed=key["sealed"]))["fresh"])


@dataclass(frozen=True)
class DroppedLoad:
    """A load the broker refused for good: the purse forgot it on the SAM's word (LR), nothing was taken for it."""

    m: int
    price: sm.Price
    reason: str
    detail: str


@dataclass(frozen=True)
class LoadsDone:
    """What finishing the purse's loads did: how many were credited, which were refused for good and forgotten."""

    credited: int = 0
    dropped: tuple[DroppedLoad, ...] = ()


@dataclass(frozen=True)
class EndedDebit:
    """A debit the purse had under way that the SAM refused for good: the purse forgot it, nothing was paid."""

    n: int
    poid: bytes
    price: sm.Price


@dataclass(frozen=True)
class DebitsEnded:
    """What :func:`end_debits` did: the debits ended, and how many the SAM authorised (left: recover them)."""

    ended: tuple[EndedDebit, ...] = ()
    authorised: int = 0


async def end_debit(card: CardOrders, b: Any, s1: bytes, s2: bytes | None = None) -> EndedDebit:
    """Have the broker's SAM refuse the debit of ``s1`` for good and the card forget it on the SAM's SR (``b``: a
    link to the broker): the card makes the SE that asks it (declining ``s2`` first, if given: an S2 the purse could
    not pay). Raises :class:`PurchaseError` ``authorised`` if the SAM gave its S2 and the card did not decline it
    (it stays pending)."""
    asked = pp.S1.decode(s1)
    if s2 is None:
        se = (await card.ask(pa.END_DEBIT, pa.SE_IS, poid=asked.poid))["se"]
    else:
        se = (await card.ask(pa.DECLINE_DEBIT, pa.SE_IS, s2=s2))["se"]
    _, got = await b.ask(fr.END_DEBIT, fr.DEBIT_REFUSED, se=se)
    n = (await card.ask(pa.DROP_DEBIT, pa.DEBIT_DROPPED, sr=got["sr"]))["n"]
    return EndedDebit(n, asked.poid, sm.Price(asked.currency, asked.amount))


async def end_debits(card: CardOrders, broker: str) -> DebitsEnded:
    """End every debit the purse has under way that the SAM never authorised, or whose S2 the card declined (the
    card's SE; the SAM's SR: the card forgets it, and the SAM never authorises it afterwards, so the purchase it was
    begun for is never paid). Run it after
    :meth:`Customer.recover` finished what it could: a debit the SAM authorised stays (``authorised``), to be
    finished by recovering its purchase."""
    pending = (await card.ask(pa.PENDING_DEBITS, pa.S1S))["s1"]
    ended, authorised = [], 0
    if not pending:
        return DebitsEnded()
    async with _Link(broker, "broker") as b:
        for s1 in pending:
            try:
                ended.append(await end_debit(card, b, s1))
            except PurchaseError as exc:
                if exc.reason != "authorised":
                    raise
                authorised += 1
    return DebitsEnded(tuple(ended), authorised)


async def load(card: CardOrders, broker: str, price: sm.Price, account: str) -> int:
    """Load ``price`` into the purse, paid from ``account`` at the broker (finishing first the loads under way);
    the loads credited."""
    return (await run_loads(card, broker, account, price)).credited


async def finish_loads(card: CardOrders, broker: str, account: str) -> int:
    """Finish every load the purse has under way (see :func:`run_loads`); the loads credited."""
    return (await run_loads(card, broker, account)).credited


async def run_loads(card: CardOrders, broker: str, account: str, price: sm.Price | None = None) -> LoadsDone:
    """Finish every load the purse has begun (its pending L1s, oldest first, each sent with ``account``), then, with
    ``price``, a new one (begun first, before the broker is reached: under way if it cannot be; or, when the loads
    under way fill the purse, begun once they are finished). The broker answers the L2 it gave for an L1, or takes
    the money and gives one now (the card credits once; the SAM logs the L3), or refuses it for good with the SAM's
    LR, on which the card forgets it (nothing was taken). A pending load refused otherwise stays pending (the card
    never forgets a load the broker may have charged); the new one's refusal raises :class:`PurchaseError` (after
    the card forgot it, if the refusal is for good), and so does a card whose loads under way fill it
    (``loads_pending``)."""

    async def begin(price: sm.Price) -> bytes:
        return bytes((await card.ask(pa.LOAD_BEGIN, pa.L1_IS, currency=price.currency, amount=price.amount))["l1"])

    new: bytes | None = None  # begun before the broker is reached (the load is under way: finished once it is)
    if price is not None:
        try:
            new = await begin(price)
        except CardnetError as exc:
            if exc.reason != "loads_pending":
                raise  # (full: the loads under way are finished first, and the new one begun then)
    pending = [x for x in (await card.ask(pa.PENDING_LOADS, pa.L1S))["l1"] if x != new]
    credited, dropped = 0, []
    left: list[PurchaseError] = []  # why the loads still pending are
    async with _Link(broker, "broker") as b:

        async def one(l1: bytes) -> DroppedLoad | None:
            kind, got = await b.ask(fr.LOAD, fr.LOAD_STEP, fr.LOAD_REFUSED, l1=l1, account=account)
            if kind is fr.LOAD_REFUSED:
                m = (await card.ask(pa.DROP_LOAD, pa.LOAD_DROPPED, lr=got["lr"]))["m"]
                asked = pp.L1.decode(l1)
                return DroppedLoad(m, sm.Price(asked.currency, asked.amount), got["reason"], got["detail"])
            l3 = (await card.ask(pa.LOAD, pa.L3_IS, l2=got["l"]))["l3"]
            await b.ask(fr.LOAD_STEP, fr.LOADED, l=l3)
            return None

        for l1 in pending:
            try:
                gone = await one(l1)
            except PurchaseError as exc:
                if exc.reason == "unreachable":
                    raise
                left.append(exc)  # refused, not for good (the SAM did not say it is never authorised): kept
                continue
            if gone is None:
                credited += 1
            else:
                dropped.append(gone)
        if price is not None:
            try:
                l1 = new if new is not None else await begin(price)
            except CardnetError as exc:
                if exc.reason != "loads_pending":
                    raise
                still, why = len(pending) - credited - len(dropped), f" ({left[-1]})" if left else ""
                raise PurchaseError("loads_pending", f"nothing was loaded: the purse has {still} loads under way, the "
                                    f"most it keeps, and none could be finished now{why}") from None  # fmt: skip
            gone = await one(l1)
            if gone is not None:
                raise PurchaseError(gone.reason, f"the broker refused: {gone.detail}; nothing was taken, and the "
                                    "purse forgot this load")  # fmt: skip
            credited += 1
    return LoadsDone(credited, tuple(dropped))


@dataclass
class Customer:
    """Buys for the card behind ``card`` (see the module)."""

    card: CardOrders
    card_cert: bytes
    roots: list[bytes]
    rng: Callable[[int], bytes] = os.urandom
    clock: Callable[[], float] = time.time
    journal: Journal | None = None  # purchases under way, kept so that they can be finished after a crash
    keep_links: bool = False  # keep the connections to vendors and brokers open between purchases (close())

    def __post_init__(self) -> None:
        self._links: dict[str, _Link] = {}

    @contextlib.asynccontextmanager
    async def _connected(self, address: str, who: str) -> AsyncIterator[_Link]:
        """A connection to ``address``: a new one, or (``keep_links``) the one kept from an earlier purchase; a
        connection that failed, or one left in the middle of an exchange, is closed and never reused."""
        link = self._links.pop(address, None)
        if link is None:
            link = _Link(address, who)
            await link.__aenter__()
        try:
            yield link
        except BaseException:
            await link.__aexit__()
            raise
        if self.keep_links:
            self._links[address] = link
        else:
            await link.__aexit__()

    async def close(self) -> None:
        """Close the connections kept open (``keep_links``)."""
        links, self._links = list(self._links.values()), {}
        for link in links:
            with contextlib.suppress(Exception):
                await link.__aexit__()

    async def catalogue(self, vendor: str) -> tuple[bytes, list[dict[str, Any]]]:
        """The vendor's certificate (checked: role service) and its signed catalogue entries, read."""
        async with self._connected(vendor, "vendor") as v:
            _, items = await v.ask(fr.CATALOGUE, fr.ITEMS)
        pki.verified(items["cert"], self.roots, now=self.clock(), role=pki.Role.SERVICE)
        return items["cert"], [cat.read(e, items["cert"]) for e in items["entries"]]

    async def buy(self, vendor: str, broker: str, products: list[str], *, broker_cert: bytes,
                  strategy: Strategy | None = None, limit: sm.Price | None = None, mode: str = "normal",
                  payment: str = "purse", account: str | None = None,
                  vendor_cert: bytes | None = None, price: sm.Price | None = None,
                  origin: str | None = None) -> Purchase:  # fmt: skip
        """Buy ``products`` from ``vendor`` (HOST:PORT) and pay through ``broker``.

        ``vendor_cert`` (the vendor's certificate) and ``price`` (the list price, aggressive mode) save asking the
        vendor's catalogue first. Normal mode negotiates with ``strategy`` (default: accept at or below
        ``limit``); aggressive mode buys at the vendor's list price, which must not exceed ``limit``. ``origin``:
        where the goods are fetched once paid, kept with the purchase in the journal (:meth:`Journal.owed`).
        """
        if payment == "purse":  # before the vendor delivers: a full purse could not pay (begin_debit refuses it)
            pending = (await self._card(pa.BALANCE, pa.BALANCES))["pending_debits"]
            if pending >= pp.MAX_PENDING:
                raise PurchaseError("debits_pending", f"nothing was bought: the purse has {pending} payments under "
                                    "way, the most it keeps; finish them first")  # fmt: skip
        entries: list[dict[str, Any]] = []
        if vendor_cert is None or (mode == "aggressive" and price is None):
            vendor_cert, entries = await self.catalogue(vendor)
        vid = sm.vendor_id(vendor_cert)
        nid = self.rng(sm.NID_BYTES)
        async with self._connected(vendor, "vendor") as v:
            if mode == "normal":
                if strategy is None:
                    if limit is None:
                        raise PurchaseError("no_limit", "say the most you will pay (a limit) or give a strategy")
                    strategy = LimitStrategy(limit)
                neg = CustomerNegotiation(nid=nid, enkey=self.rng(32), signkey=self.rng(32), strategy=strategy,
                                          products=products, vendor_id=vid)  # fmt: skip
                content = neg.request()
                signed = (await self._card(co.SIGN_REQUEST, co.SIGNED, mode="normal", content=content))["cms"]
                _, got = await v.ask(fr.REQUEST, fr.STEP, fr.ENDED, mode="normal",
                                     sealed=sm.seal_to(vendor_cert, signed, sm.INFO_REQUEST))  # fmt: skip
                steps = 2
                while True:
                    if "sealed" not in got or got.get("nid") != nid:
                        raise PurchaseError("no_agreement", "the vendor ended the negotiation")
                    out = neg.on_step(got["sealed"])
                    if isinstance(out, Agreed):
                        break
                    if isinstance(out, Ended):
                        if out.sealed is not None:
                            await v.send(fr.STEP, nid=nid, sealed=out.sealed)
                        raise PurchaseError("no_agreement", f"no agreement on a price: {out.reason}")
                    assert isinstance(out, Sent)
                    _, got = await v.ask(fr.STEP, fr.STEP, fr.ENDED, nid=nid, sealed=out.sealed)
                    steps += 2
                hs = await self._card(co.HANDSHAKE, co.SIGNED, nid=nid, vendor_id=vid, price=out.price.fields())
                await v.send(fr.HANDSHAKE, nid=nid, sealed=neg.seal_handshake(hs["cms"]))
                steps += 1
            else:
                price = price or self._list_price(entries, products)
                if limit is not None and (price.currency != limit.currency or price.amount > limit.amount):
                    raise PurchaseError("over_limit", f"the vendor's price {price} is over the limit {limit}")
                content = sm.PRODUCT_REQUEST.encode(
                    {"nid": nid, "products": products, "price": price.fields(), "vendor_id": vid}
                )
                signed = (await self._card(co.SIGN_REQUEST, co.SIGNED, mode="aggressive", content=content))["cms"]
                await v.send(fr.REQUEST, mode="aggressive",
                             sealed=sm.seal_to(vendor_cert, signed, sm.INFO_PRODUCT_REQUEST))  # fmt: skip
                neg, steps = None, 1
            chunks, sealed_bill = await self._receive(v, nid)
        if neg is not None:
            signed_bill = neg.open_bill(sealed_bill)
        else:  # aggressive mode: the bill is sealed to the card
            signed_bill = (await self._card(co.OPEN_BILL, co.BILL, sealed=sealed_bill))["bill"]
        bill = sm.decode(sm.BILL, sm.signed(signed_bill, "bill", cert_der=vendor_cert).content, "bill")
        check_delivery(bill, chunks)  # every byte, before anything is paid
        paying_at = self.clock()
        try:  # its receipt is checked with this certificate as it is now (Pending.receipt_time): refused, not paid
            pki.verified(broker_cert, self.roots, now=paying_at, role=pki.Role.SERVICE)
        except PkiError as exc:
            raise PurchaseError(exc.reason, f"nothing was paid: the broker's certificate is refused ({exc})") from None
        rec = Pending(nid=nid, vendor_cert=vendor_cert, broker=broker, broker_cert=broker_cert, bill=signed_bill,
                      chunks=chunks, products=products, payment=payment, account=account, benc=self.rng(32),
                      bsign=self.rng(32), steps=steps, paying_at=paying_at, origin=origin)  # fmt: skip
        if self.journal is not None:
            self.journal.save(rec)
        try:
            return await self._pay(rec, bill)
        except PurchaseError as exc:
            self._dropped(rec, exc)
            raise

    async def recover(self, *, broker: str | None = None) -> list[Purchase]:
        """Finish every purchase of the journal that was agreed and delivered but not yet paid and receipted
        (after a crash of this program, the card's host, the broker or the network): the card answers the same
        payment order again and the broker the same S2 or receipt, so nothing is paid twice. ``broker``: pay them
        through the broker at that address instead of the one each was bought with (kept in the journal)."""
        return (await self.recover_all(broker=broker))[0]

    async def recover_all(
        self, *, broker: str | None = None, on_finished: Callable[[Purchase], object] | None = None
    ) -> tuple[list[Purchase], list[Dropped]]:
        """:meth:`recover`, and the purchases it dropped from the journal: refused for good, or refused before any
        money moved (:data:`NOTHING_PAID`: buy again); and, reason :data:`PAID_UNOPENED`, one paid whose receipt's key
        does not open its products (kept in the journal as paid, with its receipt: the evidence). ``on_finished`` is
        given each purchase as soon as it is paid: a refusal that stops recovery later (raised) loses none of them
        (they are no longer under way, so no later recovery returns them)."""
        if self.journal is None:
            return [], []
        done, dropped = [], []
        for rec in self.journal.pending():
            if broker is not None and broker != rec.broker:
                self.journal.moved(rec.nid, broker)
                rec.broker = broker
            try:
                got = await self._pay(rec)
            except PurchaseError as exc:
                if exc.reason != PAID_UNOPENED and not self._dropped(rec, exc):
                    raise
                dropped.append(Dropped(rec.nid, rec.products, exc.reason, str(exc)))
                continue
            done.append(got)
            if on_finished is not None:
                on_finished(got)
        return done, dropped

    def _dropped(self, rec: Pending, exc: PurchaseError) -> bool:
        """Drop ``rec`` from the journal if ``exc`` says nothing was paid and the purchase is over; whether it was."""
        if self.journal is None or exc.reason not in PERMANENT | NOTHING_PAID:
            return False
        self.journal.drop(rec.nid, exc.reason)
        return True

    async def _resent(self, rec: Pending, bill: dict[str, Any]) -> Purchase:
        """The receipt of a purchase the card paid, from the broker's register (paper 5.7)."""
        async with self._connected(rec.broker, "broker") as b:
            _, got = await b.ask(fr.RESEND, fr.RECEIPT, poid=bill["poid"])
        return self._finish(rec, bill, bill["poid"], got["sealed"], rec.bill, b"")

    async def _card(self, mtype: MType, reply: MType, /, **fields: Any) -> dict[str, Any]:
        """An order to the card; its refusal becomes a :class:`PurchaseError` with the card's reason."""
        try:
            return await self.card.ask(mtype, reply, **fields)
        except PurchaseError:
            raise
        except CardnetError as exc:
            raise PurchaseError(exc.reason, f"the card refused: {exc}") from None

    @staticmethod
    def _list_price(entries: list[dict[str, Any]], products: list[str]) -> sm.Price:
        by_name = {e["product"]: sm.Price.of(e["price"]) for e in entries}
        missing = [p for p in products if p not in by_name]
        if missing:
            raise PurchaseError("unknown_product", f"the vendor's catalogue has no {', '.join(missing)}")
        prices = [by_name[p] for p in products]
        return sm.Price(prices[0].currency, sum(p.amount for p in prices))

    async def _receive(self, v: _Link, nid: bytes) -> tuple[list[list[bytes]], bytes]:
        _, head = await v.recv(fr.DELIVERY)
        chunks: list[list[bytes]] = [[] for _ in head["sizes"]]
        total = sum(sm.chunk_count(s, head["chunk"]) for s in head["sizes"])
        for _ in range(total):
            _, c = await v.recv(fr.CHUNK)
            if c["product"] >= len(chunks) or c["index"] != len(chunks[c["product"]]):
                raise PurchaseError("bad_delivery", "the vendor's chunks arrive out of order")
            chunks[c["product"]].append(c["data"])
        _, b = await v.recv(fr.BILL)
        return chunks, b["sealed"]

    async def _pay(self, rec: Pending, bill: dict[str, Any] | None = None) -> Purchase:
        """Pay ``rec`` (``bill``: its fields, when the caller has just checked them)."""
        fields: dict[str, Any] = {"bill": rec.bill, "vendor_cert": rec.vendor_cert, "kind": rec.payment}
        if rec.payment == "purse":
            fields.update(benc=rec.benc, bsign=rec.bsign)
        elif rec.account is not None:
            fields["account"] = rec.account
        if bill is None:
            bill = sm.decode(sm.BILL, sm.signed(rec.bill, "bill", cert_der=rec.vendor_cert).content, "bill")
        try:
            order = await self._card(co.PAY, co.ORDER, **fields)  # the card checks the bill against its agreement
        except PurchaseError as exc:
            if exc.reason == "expired":  # the card checks the certificate's time only before a payment it has not made
                words = "nothing was paid: the vendor's certificate expired before the card paid this purchase"
                raise PurchaseError(
                    "vendor_cert_expired", f"{words}, and a card pays no new order under it ({exc})"
                ) from None
            if exc.reason != "already_paid" or self.journal is None:
                raise
            return await self._resent(rec, bill)  # paid long ago (the card keeps only the register entry)
        poid, benc, bsign = order["poid"], rec.benc, rec.bsign
        async with self._connected(rec.broker, "broker") as b:
            try:
                kind, got = await b.ask(fr.ORDER, fr.PURSE, fr.RECEIPT,
                                        sealed=sm.seal_to(rec.broker_cert, order["po"], sm.INFO_ORDER))  # fmt: skip
            except PurchaseError as exc:
                if exc.reason in PERMANENT and "s1" in order:  # the purchase is over: end its debit on the card
                    with contextlib.suppress(CardnetError):  # (else `purse end-debits` ends it later)
                        await end_debit(self.card, b, order["s1"])
                raise
            if kind is fr.PURSE:
                step = sm.decode(sm.PURSE_STEP, sm.sym_open(benc, sm.NONCE_B_PURSE, 0, got["sealed"], sign_key=bsign,
                                                            what="S2 message"), "S2 message")  # fmt: skip
                try:
                    s3 = (await self._card(pa.DEBIT, pa.S3_IS, s2=step["s"]))["s3"]
                except PurchaseError as exc:
                    if exc.reason == "insufficient":  # dropped unpaid: decline the S2, the SAM's SR frees the place
                        with contextlib.suppress(CardnetError):  # (else `purse end-debits` ends it later)
                            await end_debit(self.card, b, order["s1"], step["s"])
                    raise
                sealed_s3 = sm.sym_seal(benc, sm.NONCE_C_PURSE, 0, sm.PURSE_STEP.encode({"poid": poid, "s": s3}),
                                        sign_key=bsign)  # fmt: skip
                _, got = await b.ask(fr.PURSE, fr.RECEIPT, poid=poid, sealed=sealed_s3)
        return self._finish(rec, bill, poid, got["sealed"], order["bill"], order["po"])

    def _finish(self, rec: Pending, bill: dict[str, Any], poid: bytes, sealed_receipt: bytes, signed_bill: bytes,
                po: bytes) -> Purchase:  # fmt: skip
        at = rec.receipt_time(bill, self.clock())
        receipt = open_receipt(bill["rec_key"], sealed_receipt, rec.broker_cert, self.roots, at)
        if receipt["poid"] != poid:
            raise PurchaseError("bad_receipt", "the broker's receipt is for another order")
        try:
            contents = [sm.decrypt_chunks(receipt["k"], i, per) for i, per in enumerate(rec.chunks)]
        except ProtocolError as exc:  # paid, receipted, and the vendor's key does not open what it delivered
            if self.journal is not None:  # (kept as paid: recover does not pay it again, nor stop at it)
                self.journal.paid(rec.nid, poid, sealed_receipt)
            paid = sm.Price.of(bill["price"])
            raise PurchaseError(PAID_UNOPENED, f"paid {paid} (the broker's receipt is good), but the key the vendor "
                                f"gave the broker does not open the products it delivered ({exc}): the purchase and "
                                "its receipt are kept in the journal as evidence") from None  # fmt: skip
        if self.journal is not None:
            self.journal.paid(rec.nid, poid, sealed_receipt)
        return Purchase(poid, rec.products, sm.Price.of(bill["price"]), contents, sealed_receipt, signed_bill, po,
                        rec.steps, rec.nid)  # fmt: skip
