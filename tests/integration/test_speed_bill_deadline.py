"""A bill with a deadline: the broker pays nothing for it after the deadline but a payment it authorised before.

The vendor writes ``pay_by`` into the bill it signs (``VendorCore(pay_within_s=...)``); the broker refuses a payment
order for a bill past it, ``bill_expired``, before anything moves, unless it authorised that payment before the
deadline (the purse may have debited on its S2): that one is finished whenever it comes, by a broker restarted since
too (``sb.auth``). Real vendor and broker servers over loopback TCP, durable SQLite cards; time is the parties'
clock, moved by the test."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from speedworld import EUR, T0, World, build, load_purse, served

from cardnet.crypto import cms, pki
from cardnet.protocols.speed import frames as fr
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed import broker as sb
from cardnet.services.speed.customer import Journal, PurchaseError
from cardnet.wire import Message

PAY_WITHIN_S = 60.0
SONG = ["song-1 Blue in Green"]


class _LosesS3(sb.BrokerCore):
    """A broker that stops before it takes the S3 (as if killed then): the purse has debited, the SAM has not logged
    it, the customer holds no receipt."""

    def handle(self, msg: Message) -> Message:
        if msg.mtype == fr.PURSE.code:
            return fr.refused(msg, "unavailable", "the broker stopped")
        return super().handle(msg)


def test_a_payment_authorised_before_the_deadline_is_paid_after_it_and_a_new_one_is_refused(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """Alice buys a song (a bill due in 60 s); the broker gives its S2, her purse debits, and the broker stops before
    it takes her S3. It restarts; two minutes later (past the deadline) her recovery sends the order again: the
    broker authorised it before the deadline, so she gets her receipt, debited once. Her second purchase, billed but
    never sent to the broker before its deadline, is refused ``bill_expired``: nothing paid, the purse as it was.
    Before, bills had no deadline (the second was paid whenever it came); and a broker that kept the authorisation in
    memory alone would have refused the first after its restart: a purse debited, no receipt."""
    now = [T0]
    w = build(tmp_path, ca, clock=lambda: now[0])
    try:
        w.vendor.pay_within_s = PAY_WITHIN_S
        journal = Journal(tmp_path / "journal")
        w.customer = dataclasses.replace(w.customer, journal=journal)
        _run(w, now, journal)
    finally:
        w.card.close()
        w.broker.sam.close()


def _run(w: World, now: list[float], journal: Journal) -> None:
    async def go() -> None:
        async with served(w):
            await load_purse(w, 1000)
        full = w.balance()
        store, sam = w.broker.store, w.broker.sam
        w.broker = _LosesS3(store, sam, clock=w.broker.clock)
        async with served(w):
            with pytest.raises(PurchaseError) as lost:
                await w.customer.buy(w.vendor_addr, w.broker_addr, SONG, broker_cert=w.broker_cert,
                                     limit=sm.Price(EUR, 300))  # fmt: skip
            assert lost.value.reason == "unavailable", lost.value
            assert w.balance() == full - 250  # the purse debited on the S2
            with pytest.raises(PurchaseError):  # the second purchase never reaches a broker
                await w.customer.buy(w.vendor_addr, "127.0.0.1:1", SONG, broker_cert=w.broker_cert,
                                     limit=sm.Price(EUR, 300))  # fmt: skip
        bills = [sm.decode(sm.BILL, cms.verify(p.bill).content, "bill") for p in journal.pending()]
        assert len(bills) == 2 and all(b["pay_by"] == int(T0 + PAY_WITHIN_S) for b in bills), bills

        now[0] = T0 + 2 * PAY_WITHIN_S  # past both deadlines
        w.broker = sb.BrokerCore(store, sam, clock=w.broker.clock)  # restarted: nothing of before in memory
        async with served(w):
            done, dropped = await w.customer.recover_all(broker=w.broker_addr)
        assert [p.products for p in done] == [SONG], (done, dropped)
        assert [d.reason for d in dropped] == ["bill_expired"], dropped
        assert "had to be paid by" in dropped[0].detail and "nothing was paid" in dropped[0].detail
        assert w.balance() == full - 250  # the first paid once, the second not at all
        assert journal.pending() == []

    asyncio.run(go())


def test_a_bill_without_a_deadline_is_paid_whenever_it_comes(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """A vendor that sets no deadline (``pay_within_s`` None, the SPEED vendor's default) signs bills without
    ``pay_by``, and the broker pays them at any time, as before."""
    now = [T0]
    w = build(tmp_path, ca, clock=lambda: now[0])
    try:
        journal = Journal(tmp_path / "journal")
        w.customer = dataclasses.replace(w.customer, journal=journal)

        async def go() -> None:
            async with served(w):
                await load_purse(w, 1000)
                with pytest.raises(PurchaseError):
                    await w.customer.buy(w.vendor_addr, "127.0.0.1:1", SONG, broker_cert=w.broker_cert,
                                         limit=sm.Price(EUR, 300))  # fmt: skip
                (pending,) = journal.pending()
                assert "pay_by" not in sm.decode(sm.BILL, cms.verify(pending.bill).content, "bill")
                now[0] = T0 + 30 * 86400
                (done,) = await w.customer.recover(broker=w.broker_addr)
                assert done.products == SONG

        asyncio.run(go())
    finally:
        w.card.close()
        w.broker.sam.close()
