"""A SPEED broker whose store fails to commit a purse payment: memory must not say paid when the store does not.

The failure is SQLite's own: a trigger on the broker's receipts log inserts a row that breaks a deferred foreign
key, so the COMMIT of the transaction (or of the group) that records the payment fails and rolls it back; the
store works again once the trigger is dropped. The broker must then answer as its store says (not paid), and the
same payment retried must be paid, once: the purse debited once, the SAM's log and the vendor's credit once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from failing_commits import fail_commits
from speedworld import EUR, T0, World, load_purse, opened, serve

from cardnet.applets.speed import conductor as co
from cardnet.applets.speed import purse as pa
from cardnet.crypto import pki
from cardnet.protocols.speed import frames as fr
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed import broker_records as sb_records
from cardnet.services.speed.customer import Journal, Pending, PurchaseError
from cardnet.services.speed.stored import get
from cardnet.store import StoreError
from cardnet.transport import dial, host_port
from cardnet.wire import Message, Uid

ME = Uid(bytes(12), 0)
NEWS = "news-1 Today's paper"
PRICE = 80
DAY = int(T0 // 86400)


@pytest.fixture
def world(tmp_path: Path, ca: pki.CertificateAuthority) -> Iterator[World]:
    with opened(tmp_path, ca) as w:
        w.customer.journal = Journal(tmp_path / "journal")
        yield w


def fail_receipt_commits(db: Path, on: bool) -> None:
    """While ``on``, every transaction that appends to the broker's receipts log fails at its COMMIT."""
    fail_commits(db, on, trigger="fail_receipts", table="log", when=f"NEW.name = '{sb_records.RECEIPTS}'")


async def agreed_not_paid(w: World) -> Pending:
    """A purchase agreed and delivered whose payment has not begun (the broker could not be reached)."""
    with pytest.raises(PurchaseError) as e:
        await w.customer.buy(w.vendor_addr, "127.0.0.1:1", [NEWS], broker_cert=w.broker_cert,
                             limit=sm.Price(EUR, 100))  # fmt: skip
    assert e.value.reason == "unreachable"
    [rec] = w.customer.journal.pending()  # type: ignore[union-attr]
    return rec


def order_msg(w: World, rec: Pending) -> tuple[bytes, Message]:
    """The card's payment order for ``rec`` (by purse), as the broker gets it."""
    order = w.card.ask(co.PAY, co.ORDER, bill=rec.bill, vendor_cert=rec.vendor_cert, kind="purse",
                       benc=rec.benc, bsign=rec.bsign)  # fmt: skip
    return order["poid"], fr.ORDER.make(ME, ME, sealed=sm.seal_to(w.broker_cert, order["po"], sm.INFO_ORDER))


@contextlib.asynccontextmanager
async def an_agreed_order(w: World) -> AsyncIterator[tuple[Pending, bytes, Message]]:
    """Vendor and broker serving, the purse loaded with 1000, a purchase agreed and not paid: (its journal record,
    its PaymentOrderID, the payment order as the broker gets it); the servers close afterwards."""
    vs, bs = await serve(w)
    try:
        await load_purse(w, 1000)
        rec = await agreed_not_paid(w)
        poid, order = order_msg(w, rec)
        yield rec, poid, order
    finally:
        await vs.aclose()
        await bs.aclose()


def receipts_db(w: World) -> Path:
    return Path(w.broker.store.url.removeprefix("sqlite:///"))


def s3_msg(w: World, rec: Pending, poid: bytes, answer: Message) -> Message:
    """The card's proof of debit for the broker's ``| POID, S2 |`` answer, as the broker gets it."""
    step = sm.decode(sm.PURSE_STEP, sm.sym_open(rec.benc, sm.NONCE_B_PURSE, 0, fr.PURSE.parse(answer)["sealed"],
                                                sign_key=rec.bsign, what="S2"), "S2")  # fmt: skip
    s3 = w.card.ask(pa.DEBIT, pa.S3_IS, s2=step["s"])["s3"]
    sealed = sm.sym_seal(rec.benc, sm.NONCE_C_PURSE, 0, sm.PURSE_STEP.encode({"poid": poid, "s": s3}),
                         sign_key=rec.bsign)  # fmt: skip
    return fr.PURSE.make(ME, ME, poid=poid, sealed=sealed)


def assert_not_paid(w: World, poid: bytes) -> None:
    assert get(w.broker.store, sb_records.ORDERS, poid) is None
    assert w.broker.balances()["V-1"] == {}
    assert w.balance() == 1000 - PRICE  # the card made its proof of debit, once
    assert w.broker.sam_totals(DAY) == {EUR: PRICE}  # and the SAM logged it


def assert_paid_once(w: World, poid: bytes) -> None:
    raw = get(w.broker.store, sb_records.ORDERS, poid)
    assert raw is not None and sb_records._ORDER.decode(raw)["state"] == "paid"
    assert w.broker.balances()["V-1"] == {EUR: PRICE}
    assert w.balance() == 1000 - PRICE
    assert w.broker.sam_totals(DAY) == {EUR: PRICE}


async def finish(w: World, rec: Pending, receipt: bytes | None) -> None:
    """The customer's recovery sends the payment order again and gets the receipt (the same one, if given)."""
    rec.broker = w.broker_addr
    w.customer.journal.save(rec)  # type: ignore[union-attr]
    [done] = await w.customer.recover()
    assert done.contents == [b"the news of the day" * 10] and done.price == sm.Price(EUR, PRICE)
    if receipt is not None:
        [saved] = [r for r in w.customer.journal.all() if r.nid == rec.nid]  # type: ignore[union-attr]
        assert saved.receipt == receipt


def test_a_failed_commit_leaves_the_order_unpaid_in_memory_and_the_retry_pays_once(world: World) -> None:
    """Each transaction commits alone (the core called directly): the S3's transaction fails at COMMIT."""
    w = world
    db = receipts_db(w)

    async def go() -> None:
        async with an_agreed_order(w) as (rec, poid, order):
            s3 = s3_msg(w, rec, poid, w.broker.handle(order))
            fail_receipt_commits(db, True)
            with pytest.raises(StoreError) as e:
                w.broker.handle(s3)
            assert e.value.reason == "io" and "FOREIGN KEY" in str(e.value)
            assert_not_paid(w, poid)
            # what the broker answers now is what its store says: not paid (no receipt from memory)
            with pytest.raises(StoreError):
                w.broker.handle(s3)  # the payment is tried again, and fails again at the commit
            refused = w.broker.handle(fr.RESEND.make(ME, ME, poid=poid))
            assert fr.REFUSED.parse(refused)["reason"] == "not_paid"
            assert fr.PURSE.parse(w.broker.handle(order))["poid"] == poid  # the order again: the same S2, no receipt
            assert_not_paid(w, poid)
            fail_receipt_commits(db, False)  # the store works again: the same S3 is paid, once
            receipt = fr.RECEIPT.parse(w.broker.handle(s3))["sealed"]
            assert_paid_once(w, poid)
            assert fr.RECEIPT.parse(w.broker.handle(s3))["sealed"] == receipt  # a retry: the same receipt
            await finish(w, rec, receipt)
            assert_paid_once(w, poid)

    asyncio.run(go())


def test_a_failed_group_commit_leaves_the_order_authorised_and_the_same_s3_is_paid_once(world: World) -> None:
    """Through the broker server (group commit): the group that holds the S3 fails at its COMMIT; the customer is
    refused with nothing kept (``speed.refused`` ``store_failed``, on the same connection, which goes on), and the
    same S3 sent again is paid, once."""
    w = world
    db = receipts_db(w)

    async def go() -> None:
        async with an_agreed_order(w) as (rec, poid, order):
            host, port = host_port(w.broker_addr)
            conn = await dial(host, port)
            try:
                await conn.send(order)
                s3 = s3_msg(w, rec, poid, await conn.recv())
                fail_receipt_commits(db, True)
                await conn.send(s3)
                refused = await conn.recv()  # the group failed: refused in words, nothing else sent
                assert refused.mtype == fr.REFUSED.code, refused
                assert fr.REFUSED.parse(refused)["reason"] == "store_failed"
                assert_not_paid(w, poid)
                fail_receipt_commits(db, False)
                await conn.send(s3)
                got = await conn.recv()
            finally:
                await conn.aclose()
            assert got.mtype == fr.RECEIPT.code, fr.REFUSED.parse(got) if got.mtype == fr.REFUSED.code else got
            receipt = fr.RECEIPT.parse(got)["sealed"]
            assert_paid_once(w, poid)
            await finish(w, rec, receipt)
            assert_paid_once(w, poid)

    asyncio.run(go())
