"""SPEED end to end over real TCP sockets: a customer's card buys from a vendor server and pays through a broker
server whose SAM is a card; normal and aggressive modes, purse and account payment, several products.

Every party has a certified identity from one CA; the servers are the real VendorServer and BrokerServer on
loopback, the cards are durable SQLite cards. At the end value is conserved: what the purse lost is what the
SAM logged is what the vendor's account gained.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cardnet.applets.speed import conductor as co
from cardnet.applets.speed import purse as pa
from cardnet.applets.speed import sam as sa
from cardnet.card import Card
from cardnet.card.personalise import personalise
from cardnet.crypto import cms, pki, profile
from cardnet.host.local import LocalCard
from cardnet.protocols.speed import frames as fr
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed import broker as sb
from cardnet.services.speed import vendor as sv
from cardnet.services.speed.customer import AsyncLocalCard, Customer, PurchaseError
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


def build(tmp: Path, ca: pki.CertificateAuthority) -> World:
    roots = [pki.cert_to_der(ca.certificate)]
    bkey, bcert = service(ca, "broker")
    vkey, vcert = service(ca, "vendor")
    sam_card = Card(SqliteStore(str(tmp / "sam.db")), applets=[sa.SamApplet()])
    personalise(sam_card, ca, pin=PIN, now=NOW, role=pki.Role.SERVICE, name="sam")
    sam = LocalCard(sam_card, PIN, clock=clock)
    bstore = SqliteStore(str(tmp / "broker.db"))
    sb.init_broker(bstore, bkey, bcert, roots)
    sb.add_vendor(bstore, "V-1", vcert)
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
    sb.add_customer(bstore, "C-1", uid, sm.Price(EUR, 10_000))
    customer = Customer(AsyncLocalCard(card), card.certificate_der, roots, clock=clock)
    return World(ca, vendor, broker, customer, card, bcert)


@pytest.fixture
def world(tmp_path: Path, ca: pki.CertificateAuthority) -> Iterator[World]:
    w = build(tmp_path, ca)
    yield w
    w.card.close()
    w.broker.sam.close()


async def serve(w: World) -> tuple[sv.VendorServer, sb.BrokerServer]:
    vs, bs = sv.VendorServer(w.vendor), sb.BrokerServer(w.broker)
    vh, vp = await vs.start()
    bh, bp = await bs.start()
    w.vendor_addr, w.broker_addr = f"{vh}:{vp}", f"{bh}:{bp}"
    return vs, bs


async def load_purse(w: World, amount: int) -> None:
    """The purse gets its key from the SAM and is loaded from the customer's account, all through the broker."""
    from cardnet.services.speed.customer import _Link

    async with _Link(w.broker_addr, "broker") as b:
        _, key = await b.ask(fr.ISSUE_KEY, fr.KEY, card_cert=w.card.certificate_der)
        w.card.ask(pa.INSTALL_KEY, pa.INSTALLED, sealed=key["sealed"])
        l1 = w.card.ask(pa.LOAD_BEGIN, pa.L1_IS, currency=EUR, amount=amount)["l1"]
        _, l2 = await b.ask(fr.LOAD, fr.LOAD_STEP, l1=l1, account="C-1")
        l3 = w.card.ask(pa.LOAD, pa.L3_IS, l2=l2["l"])["l3"]
        await b.ask(fr.LOAD_STEP, fr.LOADED, l=l3)


def test_normal_mode_purse_payment_delivers_the_song_and_conserves_value(world: World) -> None:
    w = world

    async def go() -> None:
        vs, bs = await serve(w)
        try:
            await load_purse(w, 1000)
            assert w.balance() == 1000
            got = await w.customer.buy(w.vendor_addr, w.broker_addr, ["song-1 Blue in Green"],
                                       broker_cert=w.broker_cert, limit=sm.Price(EUR, 300))  # fmt: skip
            assert got.contents == [SONG]
            assert got.price == sm.Price(EUR, 250)
            assert w.balance() == 750
            day = int(T0 // 86400)
            assert w.broker.sam_totals(day) == {EUR: 250}
            assert w.broker.balances()["V-1"] == {EUR: 250}
            assert w.broker.balances()["C-1"] == {EUR: 9000}  # 1000 went into the purse
            # the bill, the payment order and the receipt are CMS SignedData a stock tool checks
            po = sm.decode(sm.PAYMENT_ORDER, cms.verify(got.payment_order).content, "po")
            assert po["mode"]["kind"] == "purse" and po["bill"] == got.bill
        finally:
            await vs.aclose()
            await bs.aclose()

    asyncio.run(go())


def test_negotiation_down_to_the_floor_then_account_payment(world: World) -> None:
    w = world

    async def go() -> None:
        vs, bs = await serve(w)
        try:
            got = await w.customer.buy(w.vendor_addr, w.broker_addr, ["song-1 Blue in Green"],
                                       broker_cert=w.broker_cert, limit=sm.Price(EUR, 210),
                                       payment="account", account="C-1")  # fmt: skip
            assert got.price == sm.Price(EUR, 210)  # the customer's counter-offer, above the vendor's floor
            assert got.steps > 3
            assert got.contents == [SONG]
            assert w.broker.balances()["C-1"] == {EUR: 10_000 - 210}
            assert w.broker.balances()["V-1"] == {EUR: 210}
            with pytest.raises(PurchaseError) as e:
                await w.customer.buy(w.vendor_addr, w.broker_addr, ["song-1 Blue in Green"],
                                     broker_cert=w.broker_cert, limit=sm.Price(EUR, 150))  # fmt: skip
            assert e.value.reason == "no_agreement"
        finally:
            await vs.aclose()
            await bs.aclose()

    asyncio.run(go())


def test_aggressive_mode_several_products_paid_from_the_purse(world: World) -> None:
    w = world

    async def go() -> None:
        vs, bs = await serve(w)
        try:
            await load_purse(w, 1000)
            names = ["news-1 Today's paper", "ppv-1 Match key"]
            got = await w.customer.buy(w.vendor_addr, w.broker_addr, names, broker_cert=w.broker_cert,
                                       mode="aggressive", limit=sm.Price(EUR, 1000))  # fmt: skip
            assert got.price == sm.Price(EUR, 579)
            assert got.contents[0] == b"the news of the day" * 10 and len(got.contents[1]) == 16
            assert w.balance() == 1000 - 579
            assert w.broker.balances()["V-1"] == {EUR: 579}
        finally:
            await vs.aclose()
            await bs.aclose()

    asyncio.run(go())
