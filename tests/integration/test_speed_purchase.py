"""SPEED end to end over real TCP sockets: a customer's card buys from a vendor server and pays through a broker
server whose SAM is a card; normal and aggressive modes, purse and account payment, several products.

Every party has a certified identity from one CA; the servers are the real VendorServer and BrokerServer on
loopback, the cards are durable SQLite cards. At the end value is conserved: what the purse lost is what the
SAM logged is what the vendor's account gained.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from speedworld import EUR, SONG, T0, World, load_purse, opened, serve

from cardnet.crypto import cms, pki
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed.customer import PurchaseError


@pytest.fixture
def world(tmp_path: Path, ca: pki.CertificateAuthority) -> Iterator[World]:
    with opened(tmp_path, ca) as w:
        yield w


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
