"""The SPEED broker settles and prunes its SAM's days (``BrokerCore.prune``, run by ``BrokerServer`` once a day), on
real stores: the real vendor and broker servers over loopback TCP, the SAM and the customer's card as durable
SQLite cards, time moved forward by the test's clock.

After the prune the SAM's card holds less, the broker keeps the pruned day's totals, and every guarantee holds: the
purse's debits = the day's totals = the vendor's credits (a payment whose broker record was lost included: it is
settled before its day is pruned), a paid order sent again gets its receipt and nothing more, and the lost
payment's proof sent again gets its receipt from the register instead of a refusal from the SAM.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from speedworld import EUR, T0, World, load_purse, opened, serve
from test_speed_broker_failed_commit import NEWS, PRICE, agreed_not_paid, fail_receipt_commits, order_msg, s3_msg

from cardnet.applets.speed import sam as sa
from cardnet.crypto import pki
from cardnet.host.errors import HostError
from cardnet.protocols.speed import frames as fr
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed import broker_records as sb_records
from cardnet.services.speed.customer import Journal
from cardnet.services.speed.stored import get
from cardnet.store import StoreError

DAY = int(T0 // sa.DAY_S)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def world(tmp_path: Path, ca: pki.CertificateAuthority, clock: Clock) -> Iterator[World]:
    with opened(tmp_path, ca, clock) as w:
        w.customer.journal = Journal(tmp_path / "journal")
        yield w


def sam_days(w: World) -> dict[str, object]:
    return w.broker.sam.ask(sa.DAYS, sa.HELD)


def test_the_broker_settles_and_prunes_a_day_and_every_payment_stays_paid_once(world: World, clock: Clock) -> None:
    w = world

    async def go() -> None:
        vs, bs = await serve(w)
        try:
            await load_purse(w, 1000)
            first = await w.customer.buy(w.vendor_addr, w.broker_addr, [NEWS], broker_cert=w.broker_cert,
                                         limit=sm.Price(EUR, 100))  # fmt: skip
            await w.customer.buy(w.vendor_addr, w.broker_addr, [NEWS], broker_cert=w.broker_cert,
                                 limit=sm.Price(EUR, 100))  # fmt: skip
            # a third payment whose broker record is lost: the SAM logged the debit, the broker's commit failed
            rec = await agreed_not_paid(w)
            poid, order = order_msg(w, rec)
            s3 = s3_msg(w, rec, poid, w.broker.handle(order))
            fail_receipt_commits(Path(w.broker.store.url.removeprefix("sqlite:///")), True)
            with pytest.raises(StoreError):
                w.broker.handle(s3)
            fail_receipt_commits(Path(w.broker.store.url.removeprefix("sqlite:///")), False)
            assert w.broker.balances()["V-1"] == {EUR: 2 * PRICE}
        finally:
            await vs.aclose()
            await bs.aclose()
        assert sam_days(w) == {"days": [DAY], "pruned_before": DAY - 2, "open": 0}  # the start pruned nothing
        w.broker.sam.card.flush()
        before = w.broker.sam.card.used_bytes

        clock.now += 3 * sa.DAY_S  # the broker starts again three days later: it settles day 0 and prunes it
        vs, bs = await serve(w)
        try:
            assert sam_days(w) == {"days": [], "pruned_before": DAY + 1, "open": 0}
            w.broker.sam.card.flush()
            assert w.broker.sam.card.used_bytes < before - 3 * 211  # three payments and a load (docs/speed.md)
            assert w.broker.settled_days() == {
                DAY: {"debits": {EUR: 3 * PRICE}, "loads": {EUR: 1000}, "entries": 4, "settled": 1}
            }
            # value adds up: the purse's debits = the pruned day's totals = the vendor's credits
            assert w.balance() == 1000 - 3 * PRICE
            assert w.broker.balances()["V-1"] == {EUR: 3 * PRICE}
            with pytest.raises(HostError) as e:
                w.broker.sam_totals(DAY)
            assert e.value.reason == "pruned"

            # the lost payment's proof again: its receipt, from the register (the SAM pruned its debit)
            receipt = fr.RECEIPT.parse(w.broker.handle(s3))["sealed"]
            assert fr.RECEIPT.parse(w.broker.handle(s3))["sealed"] == receipt
            raw = get(w.broker.store, sb_records.ORDERS, poid)
            assert raw is not None and sb_records._ORDER.decode(raw)["state"] == "paid"
            # the customer's recovery of it, and the first purchase's payment order again: receipts, no payment
            rec.broker = w.broker_addr
            w.customer.journal.save(rec)  # type: ignore[union-attr]
            [done] = await w.customer.recover()
            assert done.price == sm.Price(EUR, PRICE)
            again = fr.RECEIPT.parse(w.broker.handle(order))
            assert again["sealed"] == receipt
            resent = w.broker.handle(fr.RESEND.make(order.src, order.dst, poid=first.poid))
            assert fr.RECEIPT.parse(resent)["poid"] == first.poid
            assert w.balance() == 1000 - 3 * PRICE
            assert w.broker.balances()["V-1"] == {EUR: 3 * PRICE}

            # and the broker goes on taking payments, logged on the new day
            await w.customer.buy(w.vendor_addr, w.broker_addr, [NEWS], broker_cert=w.broker_cert,
                                 limit=sm.Price(EUR, 100))  # fmt: skip
            assert w.broker.sam_totals(DAY + 3) == {EUR: PRICE}
            assert w.broker.balances()["V-1"] == {EUR: 4 * PRICE}
        finally:
            await vs.aclose()
            await bs.aclose()

    asyncio.run(go())


def test_the_broker_keeps_the_days_it_is_told_to_and_never_prunes_what_an_open_payment_needs(
    world: World, clock: Clock
) -> None:
    w = world

    async def go() -> None:
        vs, bs = await serve(w)
        try:
            await load_purse(w, 1000)
            rec = await agreed_not_paid(w)
            poid, order = order_msg(w, rec)
            s3 = s3_msg(w, rec, poid, w.broker.handle(order))  # the card paid; its S3 never reached the broker
        finally:
            await vs.aclose()
            await bs.aclose()
        clock.now += 2 * sa.DAY_S
        got = w.broker.prune(keep_days=2)  # day 0 ended two days ago: it is kept
        assert (got.days, got.entries, got.open) == ([], 0, 1)
        assert sam_days(w)["days"] == [DAY]
        with pytest.raises(sb_records.BrokerError):
            w.broker.prune(keep_days=0)  # yesterday is still settled: never pruned
        clock.now += sa.DAY_S
        got = w.broker.prune(keep_days=2)
        assert (got.days, got.settled, got.entries, got.open) == ([DAY], 0, 1, 1)  # the load; the debit is open
        assert got.freed_bytes > 0
        # the proof comes, late: the SAM still holds its authorisation and logs it today; the broker pays once
        receipt = fr.RECEIPT.parse(w.broker.handle(s3))["sealed"]
        assert fr.RECEIPT.parse(w.broker.handle(order))["sealed"] == receipt
        assert w.broker.sam_totals(DAY + 3) == {EUR: PRICE}
        assert w.broker.balances()["V-1"] == {EUR: PRICE}
        assert w.balance() == 1000 - PRICE
        assert sam_days(w) == {"days": [DAY + 3], "pruned_before": DAY + 1, "open": 0}

    asyncio.run(go())
