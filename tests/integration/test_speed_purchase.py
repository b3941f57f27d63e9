"""SPEED end to end over real TCP sockets: a customer's card buys from a vendor server and pays through a broker
server whose SAM is a card; normal and aggressive modes, purse and account payment, several products.

Every party has a certified identity from one CA; the servers are the real VendorServer and BrokerServer on
loopback, the cards are durable SQLite cards. At the end value is conserved: what the purse lost is what the
SAM logged is what the vendor's account gained.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hostprocs import free_port
from speedworld import EUR, SONG, T0, World, load_purse, opened, serve, served

from cardnet.crypto import cms, pki
from cardnet.errors import CardnetError
from cardnet.protocols.speed import frames as fr
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed.customer import AsyncLocalCard, Journal, PurchaseError, load


@pytest.fixture
def world(tmp_path: Path, ca: pki.CertificateAuthority) -> Iterator[World]:
    with opened(tmp_path, ca) as w:
        yield w


def test_normal_mode_purse_payment_delivers_the_song_and_conserves_value(world: World) -> None:
    w = world

    async def go() -> None:
        async with served(w):
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

    asyncio.run(go())


def test_negotiation_down_to_the_floor_then_account_payment(world: World) -> None:
    w = world

    async def go() -> None:
        async with served(w):
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

    asyncio.run(go())


def test_aggressive_mode_several_products_paid_from_the_purse(world: World) -> None:
    w = world

    async def go() -> None:
        async with served(w):
            await load_purse(w, 1000)
            names = ["news-1 Today's paper", "ppv-1 Match key"]
            got = await w.customer.buy(w.vendor_addr, w.broker_addr, names, broker_cert=w.broker_cert,
                                       mode="aggressive", limit=sm.Price(EUR, 1000))  # fmt: skip
            assert got.price == sm.Price(EUR, 579)
            assert got.contents[0] == b"the news of the day" * 10 and len(got.contents[1]) == 16
            assert w.balance() == 1000 - 579
            assert w.broker.balances()["V-1"] == {EUR: 579}

    asyncio.run(go())


def test_a_debit_the_broker_lost_is_settled_from_the_sams_log_and_the_customer_still_gets_the_receipt(
    world: World, tmp_path: Path
) -> None:
    """The broker stops between the SAM's log of the proof of debit and its own record of the payment: the
    purse was debited, the vendor not yet credited. Settlement credits the vendor from the SAM's log, once; the
    customer who comes back with the same payment order gets the receipt, and nobody is paid twice."""
    from cardnet.applets.speed import conductor as co
    from cardnet.applets.speed import purse as pa
    from cardnet.applets.speed import sam as sa
    from cardnet.protocols.speed import frames as fr
    from cardnet.services.speed import broker as sb
    from cardnet.services.speed import broker_server as sb_server
    from cardnet.services.speed.customer import Journal
    from cardnet.wire import Uid

    w = world
    w.customer.journal = Journal(tmp_path / "journal")

    async def go() -> None:
        vs, bs = await serve(w)
        try:
            await load_purse(w, 1000)
            with pytest.raises(PurchaseError) as e:  # the broker cannot be reached: the card has made its order
                await w.customer.buy(w.vendor_addr, "127.0.0.1:1", ["news-1 Today's paper"],
                                     broker_cert=w.broker_cert, limit=sm.Price(EUR, 100))  # fmt: skip
            assert e.value.reason == "unreachable"
            [rec] = w.customer.journal.pending()
            order = w.card.ask(co.PAY, co.ORDER, bill=rec.bill, vendor_cert=rec.vendor_cert, kind="purse",
                               benc=rec.benc, bsign=rec.bsign)  # fmt: skip
            me = Uid(bytes(12), 0)
            got = w.broker.handle(fr.ORDER.make(me, me, sealed=sm.seal_to(w.broker_cert, order["po"], sm.INFO_ORDER)))
            s2 = sm.decode(sm.PURSE_STEP, sm.sym_open(rec.benc, sm.NONCE_B_PURSE, 0, fr.PURSE.parse(got)["sealed"],
                                                      sign_key=rec.bsign, what="S2"), "S2")["s"]  # fmt: skip
            s3 = w.card.ask(pa.DEBIT, pa.S3_IS, s2=s2)["s3"]
            w.broker.sam.ask(sa.DEBIT_FINISH, sa.DEBITED, s3=s3)  # ... and the broker stops here
            assert w.balance() == 1000 - 80
            assert w.broker.balances()["V-1"] == {}
            restarted = sb.BrokerCore(w.broker.store, w.broker.sam, clock=w.broker.clock)
            day = int(T0 // 86400)
            assert restarted.settle(day) == 1
            assert restarted.settle(day) == 0  # once
            assert restarted.balances()["V-1"] == {EUR: 80} == restarted.sam_totals(day)
            w.broker = restarted
            await bs.aclose()
            bs2 = sb_server.BrokerServer(restarted)
            host, port = await bs2.start()
            rec.broker = f"{host}:{port}"
            w.customer.journal.save(rec)
            try:
                [done] = await w.customer.recover()  # the customer comes back: the same order, the receipt
            finally:
                await bs2.aclose()
            assert done.contents == [b"the news of the day" * 10] and done.price == sm.Price(EUR, 80)
            assert restarted.balances()["V-1"] == {EUR: 80}  # not credited twice
            assert w.balance() == 1000 - 80
        finally:
            await vs.aclose()
            await bs.aclose()

    asyncio.run(go())


def test_the_bill_the_payment_order_and_the_receipt_pass_openssl_cms_verify(
    world: World, tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """An arbitrator with nothing but the CA certificate and openssl checks each party's evidence (item 5)."""
    import subprocess

    from conftest import openssl

    w = world

    async def go() -> Any:
        async with served(w):
            await load_purse(w, 1000)
            return await w.customer.buy(w.vendor_addr, w.broker_addr, ["ppv-1 Match key"], broker_cert=w.broker_cert,
                                        limit=sm.Price(EUR, 1000))  # fmt: skip

    got = asyncio.run(go())
    bill = sm.decode(sm.BILL, cms.verify(got.bill).content, "bill")
    receipt = sm.sym_open(bill["rec_key"], sm.NONCE_RECEIPT, 0, got.receipt, what="receipt")  # the signed receipt
    (tmp_path / "ca.pem").write_bytes(pki.chain_to_pem([ca.certificate]))
    for name, der in (("bill", got.bill), ("payment-order", got.payment_order), ("receipt", receipt)):
        (tmp_path / f"{name}.der").write_bytes(der)
        out = tmp_path / f"{name}.content"
        result = subprocess.run(
            [openssl(), "cms", "-verify", "-inform", "DER", "-in", str(tmp_path / f"{name}.der"), "-CAfile",
             str(tmp_path / "ca.pem"), "-purpose", "any", "-binary", "-attime", str(int(T0)), "-out", str(out)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert result.returncode == 0, f"{name}: {result.stderr}"
        assert "Verification successful" in result.stderr
        assert out.read_bytes() == cms.verify(der).content
    assert sm.decode(sm.RECEIPT, cms.verify(receipt).content, "receipt")["poid"] == got.poid
    # and a tampered one is refused by openssl too
    bad = bytearray(got.bill)
    bad[-10] ^= 1
    (tmp_path / "bad.der").write_bytes(bytes(bad))
    result = subprocess.run([openssl(), "cms", "-verify", "-inform", "DER", "-in", str(tmp_path / "bad.der"),
                             "-CAfile", str(tmp_path / "ca.pem"), "-purpose", "any", "-binary",
                             "-attime", str(int(T0)), "-out", str(tmp_path / "bad.content")],
                            capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert result.returncode != 0


def test_a_load_a_crash_interrupted_is_finished_once(world: World) -> None:
    """The broker took the money and answered L2, and the customer's host crashed before the card took it: the
    next load (or `finish_loads`) sends the card's pending L1 again, gets the same L2, and credits once."""
    from cardnet.applets.speed import purse as pa
    from cardnet.applets.speed import sam as sa
    from cardnet.services.speed.customer import AsyncLocalCard, _Link, finish_loads, install_key, load

    w = world

    async def go() -> None:
        async with served(w):
            card = AsyncLocalCard(w.card)
            await install_key(card, w.broker_addr)
            l1 = w.card.ask(pa.LOAD_BEGIN, pa.L1_IS, currency=EUR, amount=500)["l1"]
            async with _Link(w.broker_addr, "broker") as b:
                await b.ask(fr.LOAD, fr.LOAD_STEP, l1=l1, account="C-1")  # ... and the host crashes here
            assert w.balance() == 0 and w.broker.balances()["C-1"] == {EUR: 10_000 - 500}
            assert await load(card, w.broker_addr, sm.Price(EUR, 100), "C-1") == 2  # the old one first
            assert w.balance() == 600
            assert await finish_loads(card, w.broker_addr, "C-1") == 0
            assert w.broker.balances()["C-1"] == {EUR: 10_000 - 600}
            sums = w.broker.sam.ask(sa.TOTALS, sa.SUMS, day=int(T0 // 86400))
            assert {s["currency"]: s["amount"] for s in sums["loads"]} == {EUR: 600}

    asyncio.run(go())


def test_a_load_the_broker_refused_is_never_charged_later_and_the_card_forgets_it(world: World) -> None:
    """`purse load --account <mistyped>`: the broker refuses the L1 for good and answers the SAM's LR with it; the
    card forgets the load on that LR only (a host's forged LR is refused), so the refused load is neither charged
    later from the right account nor left pending for ever. A forged L1 (bad MAC) refused for its account leaves no
    record: it cannot have the card's own load of that counter refused."""
    from cardnet.applets.speed import purse as pa
    from cardnet.protocols.speed import purse as pp
    from cardnet.services.speed.customer import AsyncLocalCard, _Link, install_key, load

    w = world

    async def go() -> None:
        async with served(w):
            card = AsyncLocalCard(w.card)
            await install_key(card, w.broker_addr)
            l1 = (await card.ask(pa.LOAD_BEGIN, pa.L1_IS, currency=EUR, amount=500))["l1"]
            async with _Link(w.broker_addr, "broker") as b:
                kind, got = await b.ask(fr.LOAD, fr.LOAD_STEP, fr.LOAD_REFUSED, l1=l1, account="C-9")  # no such account
                assert kind is fr.LOAD_REFUSED and got["reason"] == "unknown_account"
                lr = pp.LR.decode(got["lr"])
                forged = pp.LR(uid=lr.uid, m=lr.m + 1, rc=lr.rc, mac=lr.mac)  # a host's try at another load
                with pytest.raises(CardnetError) as e:
                    await card.ask(pa.DROP_LOAD, pa.LOAD_DROPPED, lr=forged.encode())
                assert e.value.reason == "bad_mac"
            assert (await card.ask(pa.PENDING_LOADS, pa.L1S))["l1"] == [l1]  # the LR never reached the card
            assert await load(card, w.broker_addr, sm.Price(EUR, 100), "C-1") == 1  # only the load asked for
            assert (await card.ask(pa.PENDING_LOADS, pa.L1S))["l1"] == []  # the refused one is forgotten
            assert w.balance() == 100
            assert w.broker.balances()["C-1"] == {EUR: 10_000 - 100}
            async with _Link(w.broker_addr, "broker") as b:
                kind, got = await b.ask(fr.LOAD, fr.LOAD_STEP, fr.LOAD_REFUSED, l1=l1, account="C-1")
                assert kind is fr.LOAD_REFUSED and got["reason"] == "load_refused" and got["lr"] == lr.encode()
                genuine = pp.L1.decode(l1)
                forged_l1 = pp.L1(uid=genuine.uid, m=genuine.m + 2, rc=bytes(16), currency=EUR, amount=300,
                                  mac=bytes(32))  # fmt: skip  # the card's next counter, a wrong MAC
                with pytest.raises(PurchaseError) as e:
                    await b.ask(fr.LOAD, fr.LOAD_STEP, fr.LOAD_REFUSED, l1=forged_l1.encode(), account="C-9")
                assert e.value.reason == "bad_mac"
            with pytest.raises(PurchaseError) as e:  # refused at once: the card forgets it, nothing was taken
                await load(card, w.broker_addr, sm.Price(EUR, 700), "C-9")
            assert e.value.reason == "unknown_account" and "the purse forgot this load" in str(e.value)
            assert (await card.ask(pa.PENDING_LOADS, pa.L1S))["l1"] == []
            assert await load(card, w.broker_addr, sm.Price(EUR, 300), "C-1") == 1  # the counter the forgery named
            assert w.balance() == 400
            assert w.broker.balances()["C-1"] == {EUR: 10_000 - 400}

    asyncio.run(go())


def test_a_charged_load_is_never_lost_when_the_card_holds_sixteen_loads_under_way(world: World) -> None:
    """The broker charged a load whose L2 never reached the card, and 15 more loads were begun: the card refuses a
    17th (``loads_pending``) instead of forgetting the oldest, and the next `purse load` finishes them all first, so
    every load the account paid for is credited (it used to drop the charged one: the customer's money was lost)."""
    from cardnet.applets.speed import purse as pa
    from cardnet.services.speed.customer import AsyncLocalCard, _Link, install_key, load

    w = world

    async def go() -> None:
        async with served(w):
            card = AsyncLocalCard(w.card)
            await install_key(card, w.broker_addr)
            l1 = (await card.ask(pa.LOAD_BEGIN, pa.L1_IS, currency=EUR, amount=500))["l1"]
            async with _Link(w.broker_addr, "broker") as b:
                await b.ask(fr.LOAD, fr.LOAD_STEP, l1=l1, account="C-1")  # charged; the L2 is lost on the way
            for _ in range(15):
                await card.ask(pa.LOAD_BEGIN, pa.L1_IS, currency=EUR, amount=1)
            with pytest.raises(CardnetError) as e:
                await card.ask(pa.LOAD_BEGIN, pa.L1_IS, currency=EUR, amount=1)
            assert e.value.reason == "loads_pending"
            assert w.broker.balances()["C-1"] == {EUR: 10_000 - 500} and w.balance() == 0
            assert await load(card, w.broker_addr, sm.Price(EUR, 100), "C-1") == 17
            assert w.balance() == 500 + 15 + 100
            assert w.broker.balances()["C-1"] == {EUR: 10_000 - w.balance()}  # every load paid for is credited
            assert (await card.ask(pa.PENDING_LOADS, pa.L1S))["l1"] == []

    asyncio.run(go())


def test_a_purchase_the_purse_could_not_pay_is_dropped_and_buying_again_pays_once(world: World, tmp_path: Path) -> None:
    """The card refuses the debit (`insufficient`): nothing moved, and the purchase leaves the journal (dropped,
    with the reason). The customer loads and buys again: one order, paid once; a later recover pays nothing more
    (it paid the first order too, the same goods twice)."""
    w = world
    journal = Journal(tmp_path / "journal")
    customer = dataclasses.replace(w.customer, journal=journal)
    key = "ppv-1 Match key"

    async def go() -> None:
        async with served(w):
            await load_purse(w, 100)
            with pytest.raises(PurchaseError) as e:
                await customer.buy(w.vendor_addr, w.broker_addr, [key], broker_cert=w.broker_cert, mode="aggressive")
            assert e.value.reason == "insufficient"
            assert journal.pending() == [] and [r.dropped for r in journal.all()] == ["insufficient"]
            await load(AsyncLocalCard(w.card), w.broker_addr, sm.Price(EUR, 500), "C-1")
            got = await customer.buy(w.vendor_addr, w.broker_addr, [key], broker_cert=w.broker_cert,
                                     mode="aggressive")  # fmt: skip
            assert got.price == sm.Price(EUR, 499)
            assert await customer.recover() == []
            assert w.balance() == 600 - 499
            assert w.broker.balances()["V-1"] == {EUR: 499}

    asyncio.run(go())


def test_a_purchase_sent_to_a_wrong_broker_address_is_finished_by_recover_with_the_right_one(
    world: World, tmp_path: Path
) -> None:
    """`buy --broker <wrong address>` after the vendor delivered: the payment cannot reach the broker and the
    journal keeps the purchase. `recover(broker=...)` pays it through the right address (and keeps that address),
    once."""
    w = world
    journal = Journal(tmp_path / "journal")
    customer = dataclasses.replace(w.customer, journal=journal)
    wrong = f"127.0.0.1:{free_port()}"  # nothing listens there

    async def go() -> None:
        async with served(w):
            await load_purse(w, 1000)
            with pytest.raises(PurchaseError) as e:
                await customer.buy(w.vendor_addr, wrong, ["news-1 Today's paper"], broker_cert=w.broker_cert,
                                   mode="aggressive")  # fmt: skip
            assert e.value.reason == "unreachable"
            assert [r.broker for r in journal.pending()] == [wrong]
            done = await customer.recover(broker=w.broker_addr)
            assert [d.price for d in done] == [sm.Price(EUR, 80)]
            assert done[0].contents == [b"the news of the day" * 10]
            assert [r.broker for r in journal.all()] == [w.broker_addr]
            assert await customer.recover() == []
            assert w.balance() == 1000 - 80
            assert w.broker.balances()["V-1"] == {EUR: 80}

    asyncio.run(go())


def test_a_running_vendor_sells_a_product_added_to_its_store_since_it_started(world: World, tmp_path: Path) -> None:
    """`cardnet speed vendor add` while `vendor run` serves: another connection to the vendor's store (as the
    command is another process) adds a product; the running vendor lists it and sells it at its next request."""
    from cardnet.services.speed import vendor as sv
    from cardnet.store import SqliteStore

    w = world

    async def go() -> None:
        async with served(w):
            await load_purse(w, 1000)
            _, before = await w.customer.catalogue(w.vendor_addr)
            other = SqliteStore(str(tmp_path / "vendor.db"))
            try:
                sv.add_product(other, "tune-9 So What", sm.Price(EUR, 120), b"so what" * 3)
            finally:
                other.close()
            _, after = await w.customer.catalogue(w.vendor_addr)
            assert [e["product"] for e in after if e not in before] == ["tune-9 So What"]
            got = await w.customer.buy(w.vendor_addr, w.broker_addr, ["tune-9 So What"], broker_cert=w.broker_cert,
                                       mode="aggressive")  # fmt: skip
            assert got.contents == [b"so what" * 3] and got.price == sm.Price(EUR, 120)

    asyncio.run(go())


async def _bought_unpaid(w: World, customer: Any, count: int) -> None:
    """``count`` purchases delivered whose payment could not reach the broker: each card debit is under way."""
    nowhere = f"127.0.0.1:{free_port()}"
    for _ in range(count):
        with pytest.raises(PurchaseError) as e:
            await customer.buy(w.vendor_addr, nowhere, ["news-1 Today's paper"], broker_cert=w.broker_cert,
                               mode="aggressive")  # fmt: skip
        assert e.value.reason == "unreachable"


async def _sixteen_under_way(w: World, customer: Any, journal: Journal) -> bytes:
    """A loaded purse with sixteen debits under way: the oldest authorised by the SAM and its S2 lost, fifteen
    whose payments never reached the broker. The oldest's PaymentOrderID."""
    await load_purse(w, 5000)
    await _bought_unpaid(w, customer, 1)
    oldest = await _authorise_and_lose_the_s2(w, journal)
    await _bought_unpaid(w, customer, 15)
    return oldest


async def _authorise_and_lose_the_s2(w: World, journal: Journal) -> bytes:
    """The broker (over TCP) authorises the one purchase of ``journal`` under way, and its S2 never reaches the card
    (the customer's host crashed): the SAM's authorisation is open. Its PaymentOrderID."""
    from cardnet.applets.speed import conductor as co
    from cardnet.services.speed.customer import _Link

    [rec] = journal.pending()
    order = w.card.ask(co.PAY, co.ORDER, bill=rec.bill, vendor_cert=rec.vendor_cert, kind="purse", benc=rec.benc,
                       bsign=rec.bsign)  # fmt: skip
    async with _Link(w.broker_addr, "broker") as b:
        kind, _ = await b.ask(fr.ORDER, fr.PURSE, fr.RECEIPT,
                              sealed=sm.seal_to(w.broker_cert, order["po"], sm.INFO_ORDER))  # fmt: skip
    assert kind is fr.PURSE  # the S2, lost on the way
    return bytes(order["poid"])


def test_a_payment_the_sam_authorised_is_finished_when_the_card_holds_sixteen_debits_under_way(
    world: World, tmp_path: Path
) -> None:
    """Sixteen purchases delivered and not paid (the broker unreachable), the oldest authorised by the SAM and its S2
    lost: a 17th purchase is refused ``debits_pending`` before anything is bought, the card keeps every debit, and
    recovery pays all sixteen, once each. (The purse used to drop the oldest debit at the 17th: the SAM's
    authorisation stayed open for ever and that purchase could never be finished.)"""
    from cardnet.applets.speed import purse as pa
    from cardnet.applets.speed import sam as sa

    w = world
    journal = Journal(tmp_path / "journal")
    customer = dataclasses.replace(w.customer, journal=journal)

    async def go() -> None:
        async with served(w):
            oldest = await _sixteen_under_way(w, customer, journal)
            with pytest.raises(PurchaseError) as e:
                await customer.buy(w.vendor_addr, w.broker_addr, ["news-1 Today's paper"], broker_cert=w.broker_cert,
                                   mode="aggressive")  # fmt: skip
            assert e.value.reason == "debits_pending" and "nothing was bought" in str(e.value)
            with pytest.raises(CardnetError) as e2:  # the card itself refuses, whatever its host does
                w.card.ask(pa.DEBIT_BEGIN, pa.S1_IS, poid=b"one-more", currency=EUR, amount=1)
            assert e2.value.reason == "debits_pending"
            assert len(journal.pending()) == 16 and w.balance() == 5000
            done = await customer.recover(broker=w.broker_addr)
            assert len(done) == 16 and {d.price for d in done} == {sm.Price(EUR, 80)}
            assert oldest in {d.poid for d in done}
            assert all(d.contents == [b"the news of the day" * 10] for d in done)
            assert w.card.ask(pa.BALANCE, pa.BALANCES)["pending_debits"] == 0
            got = await customer.buy(w.vendor_addr, w.broker_addr, ["news-1 Today's paper"],
                                     broker_cert=w.broker_cert, mode="aggressive")  # fmt: skip
            assert got.price == sm.Price(EUR, 80)
            assert w.balance() == 5000 - 17 * 80
            assert w.broker.balances()["V-1"] == {EUR: 17 * 80}  # each paid once
            assert w.broker.sam.ask(sa.DAYS, sa.HELD)["open"] == 0  # no authorisation left open

    asyncio.run(go())


def test_a_payment_under_way_is_still_finished_after_sixteen_later_purchases(world: World, tmp_path: Path) -> None:
    """The card keeps the whole payment order of its 16 newest payments for recovery; one whose debit is still under
    way (authorised, the S2 lost) is never the one it forgets, however many purchases come after it, so recovery
    still pays it. (It used to be forgotten after 16 later payments: recovery failed not_paid for ever.)"""
    from cardnet.applets.speed import purse as pa

    w = world
    journal = Journal(tmp_path / "journal")
    customer = dataclasses.replace(w.customer, journal=journal)

    async def go() -> None:
        async with served(w):
            await load_purse(w, 2000)
            await _bought_unpaid(w, customer, 1)
            oldest = await _authorise_and_lose_the_s2(w, journal)
            for _ in range(16):
                await customer.buy(w.vendor_addr, w.broker_addr, ["news-1 Today's paper"],
                                   broker_cert=w.broker_cert, mode="aggressive")  # fmt: skip
            [done] = await customer.recover(broker=w.broker_addr)
            assert done.poid == oldest and done.contents == [b"the news of the day" * 10]
            assert w.card.ask(pa.BALANCE, pa.BALANCES)["pending_debits"] == 0
            assert w.balance() == 2000 - 17 * 80 and w.broker.balances()["V-1"] == {EUR: 17 * 80}

    asyncio.run(go())


def test_debits_no_purchase_will_finish_end_on_the_sams_sr_and_the_authorised_one_is_paid(
    world: World, tmp_path: Path
) -> None:
    """Sixteen purchases under way fill the purse; the customer ends the debits (`purse end-debits`): the broker's
    SAM refuses for good each it never authorised and the card forgets it on the SAM's SR (nothing was paid), the
    one it authorised stays. Recovery then pays that one and drops the others (``debit_refused``: the SAM never
    authorises them), and the purse pays again."""
    from cardnet.applets.speed import purse as pa
    from cardnet.applets.speed import sam as sa
    from cardnet.services.speed.customer import end_debits

    w = world
    journal = Journal(tmp_path / "journal")
    customer = dataclasses.replace(w.customer, journal=journal)

    async def go() -> None:
        async with served(w):
            oldest = await _sixteen_under_way(w, customer, journal)
            done = await end_debits(AsyncLocalCard(w.card), w.broker_addr)
            assert len(done.ended) == 15 and done.authorised == 1 and oldest not in {d.poid for d in done.ended}
            assert {d.price for d in done.ended} == {sm.Price(EUR, 80)}
            pending = w.card.ask(pa.PENDING_DEBITS, pa.S1S)["s1"]
            assert len(pending) == 1
            again = await end_debits(AsyncLocalCard(w.card), w.broker_addr)  # the authorised one stays
            assert (again.ended, again.authorised) == ((), 1)
            paid, dropped = await customer.recover_all(broker=w.broker_addr)
            assert [p.poid for p in paid] == [oldest]
            assert len(dropped) == 15 and {d.reason for d in dropped} == {"debit_refused"}
            assert journal.pending() == [] and w.card.ask(pa.BALANCE, pa.BALANCES)["pending_debits"] == 0
            assert w.balance() == 5000 - 80 and w.broker.balances()["V-1"] == {EUR: 80}
            assert w.broker.sam.ask(sa.DAYS, sa.HELD)["open"] == 0
            await customer.buy(w.vendor_addr, w.broker_addr, ["news-1 Today's paper"], broker_cert=w.broker_cert,
                               mode="aggressive")  # fmt: skip
            assert w.balance() == 5000 - 160

    asyncio.run(go())
