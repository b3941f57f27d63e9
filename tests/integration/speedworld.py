"""A SPEED network in this process over real loopback TCP: the real VendorServer and BrokerServer, the broker's
SAM and the customer's card as durable SQLite cards, every party certified by one CA."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cardnet.applets.speed import conductor as co
from cardnet.applets.speed import purse as pa
from cardnet.applets.speed import sam as sa
from cardnet.card import Card
from cardnet.card.personalise import personalise
from cardnet.crypto import pki, profile
from cardnet.host.local import LocalCard
from cardnet.protocols.speed import frames as fr
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed import broker as sb
from cardnet.services.speed import broker_accounts as sb_accounts
from cardnet.services.speed import broker_server as sb_server
from cardnet.services.speed import vendor as sv
from cardnet.services.speed.customer import AsyncLocalCard, Customer, Pending, PurchaseError, install_key, load
from cardnet.store import SqliteStore
from cardnet.wire import Uid
from conftest import NOW

PIN = "1357"
T0 = NOW.timestamp() + 60
EUR = "EUR"
SONG = os.urandom(3 * 1024 * 1024 + 17)  # more than one chunk


def clock() -> float:
    return T0


def service(ca: pki.CertificateAuthority, name: str) -> tuple[profile.PrivateKey, bytes]:
    key = profile.generate_private_key()
    uid = Uid(os.urandom(12), 0)
    cert = ca.issue(pki.Role.SERVICE, uid, key.public_key(), now=NOW, name=name)
    return key, pki.cert_to_der(cert)


@dataclass
class World:
    ca: pki.CertificateAuthority
    vendor: sv.VendorCore
    broker: sb.BrokerCore
    customer: Customer
    card: LocalCard
    broker_cert: bytes
    vendor_addr: str = ""
    broker_addr: str = ""

    def balance(self) -> int:
        got = self.card.ask(pa.BALANCE, pa.BALANCES)
        return {a["currency"]: a["balance"] for a in got["accounts"]}.get(EUR, 0)


def build(tmp: Path, ca: pki.CertificateAuthority, clock: Callable[[], float] = clock) -> World:
    """The network, every party on ``clock`` (the fixed :func:`clock` unless a test moves time)."""
    roots = [pki.cert_to_der(ca.certificate)]
    bkey, bcert = service(ca, "broker")
    vkey, vcert = service(ca, "vendor")
    sam_card = Card(SqliteStore(str(tmp / "sam.db")), applets=[sa.SamApplet()])
    personalise(sam_card, ca, pin=PIN, now=NOW, role=pki.Role.SERVICE, name="sam")
    sam = LocalCard(sam_card, PIN, clock=clock)
    bstore = SqliteStore(str(tmp / "broker.db"))
    sb_accounts.init_broker(bstore, bkey, bcert, roots)
    sb_accounts.add_vendor(bstore, "V-1", vcert)
    broker = sb.BrokerCore(bstore, sam, clock=clock)
    vstore = SqliteStore(str(tmp / "vendor.db"))
    sv.init_vendor(vstore, vkey, vcert, roots, account="V-1", broker_cert=bcert)
    sv.add_product(vstore, "song-1 Blue in Green", sm.Price(EUR, 250), SONG, floor=sm.Price(EUR, 200))
    sv.add_product(vstore, "news-1 Today's paper", sm.Price(EUR, 80), b"the news of the day" * 10)
    sv.add_product(vstore, "ppv-1 Match key", sm.Price(EUR, 499), os.urandom(16))
    vendor = sv.VendorCore(vstore, clock=clock)
    ccard = Card(SqliteStore(str(tmp / "customer.db")), applets=[pa.PurseApplet(), co.ConductorApplet()])
    uid = personalise(ccard, ca, pin=PIN, now=NOW, name="alice")
    card = LocalCard(ccard, PIN, clock=clock)
    sb_accounts.add_customer(bstore, "C-1", uid, sm.Price(EUR, 10_000))
    customer = Customer(AsyncLocalCard(card), card.certificate_der, roots, clock=clock)
    return World(ca, vendor, broker, customer, card, bcert)


@contextlib.contextmanager
def opened(tmp: Path, ca: pki.CertificateAuthority, clock: Callable[[], float] = clock) -> Iterator[World]:
    """:func:`build`, closed afterwards (each test module's ``world`` fixture)."""
    w = build(tmp, ca, clock)
    try:
        yield w
    finally:
        w.card.close()
        w.broker.sam.close()


async def serve(w: World) -> tuple[sv.VendorServer, sb_server.BrokerServer]:
    vs, bs = sv.VendorServer(w.vendor), sb_server.BrokerServer(w.broker)
    vh, vp = await vs.start()
    bh, bp = await bs.start()
    w.vendor_addr, w.broker_addr = f"{vh}:{vp}", f"{bh}:{bp}"
    return vs, bs


@contextlib.asynccontextmanager
async def served(w: World) -> AsyncIterator[tuple[sv.VendorServer, sb_server.BrokerServer]]:
    """:func:`serve`, closing both servers when the block ends."""
    vs, bs = await serve(w)
    try:
        yield vs, bs
    finally:
        await vs.aclose()
        await bs.aclose()


async def load_purse(w: World, amount: int) -> None:
    """The purse gets its key from the SAM and is loaded from the customer's account, all through the broker."""
    card = AsyncLocalCard(w.card)
    assert await install_key(card, w.broker_addr)
    assert await load(card, w.broker_addr, sm.Price(EUR, amount), "C-1") == 1


async def authorised_and_debited(w: World, product: str) -> tuple[Pending, bytes, bytes]:
    """``product`` bought while the broker cannot be reached, then its payment order taken by ``w.broker`` directly:
    the SAM's S2 given, the card debited on it, the S3 left with the caller (to hand the SAM, or to lose). The
    journal's record (``w.customer.journal`` must be set), the PaymentOrderID and the S3."""
    assert w.customer.journal is not None
    seen = {r.nid for r in w.customer.journal.pending()}
    with contextlib.suppress(PurchaseError):  # unreachable: the card made its payment order
        await w.customer.buy(w.vendor_addr, "127.0.0.1:1", [product], broker_cert=w.broker_cert,
                             limit=sm.Price(EUR, 1000))  # fmt: skip
    [rec] = [r for r in w.customer.journal.pending() if r.nid not in seen]
    order = w.card.ask(co.PAY, co.ORDER, bill=rec.bill, vendor_cert=rec.vendor_cert, kind="purse", benc=rec.benc,
                       bsign=rec.bsign)  # fmt: skip
    me = Uid(bytes(12), 0)
    got = w.broker.handle(fr.ORDER.make(me, me, sealed=sm.seal_to(w.broker_cert, order["po"], sm.INFO_ORDER)))
    s2 = sm.decode(sm.PURSE_STEP, sm.sym_open(rec.benc, sm.NONCE_B_PURSE, 0, fr.PURSE.parse(got)["sealed"],
                                              sign_key=rec.bsign, what="S2"), "S2")["s"]  # fmt: skip
    poid = sm.decode(sm.BILL, sm.signed(rec.bill, "bill").content, "bill")["poid"]
    return rec, poid, w.card.ask(pa.DEBIT, pa.S3_IS, s2=s2)["s3"]
