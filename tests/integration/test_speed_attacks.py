"""SPEED's defences (paper section 5, issue 12 item 6), each attack performed for real over TCP against the real
vendor and broker servers, with the customer's real card; each expects a clear refusal and nothing lost.

Replays (negotiation SeqN, Handshake, NID, bill, payment order), the forwarded request of 5.4, the tampered
bill of 5.6, the visibility rules of 5.5, and the complaints of 5.7 (wrong content; a lost receipt).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from speedworld import EUR, PIN, World, clock, load_purse, opened, serve, service

from cardnet.applets.speed import conductor as co
from cardnet.applets.speed import purse as pa
from cardnet.card import Card
from cardnet.card.personalise import personalise
from cardnet.crypto import cms, pki, profile
from cardnet.host.errors import HostError
from cardnet.host.local import LocalCard
from cardnet.protocols.speed import catalogue as cat
from cardnet.protocols.speed import frames as fr
from cardnet.protocols.speed import messages as sm
from cardnet.protocols.speed.negotiation import CustomerNegotiation, LimitStrategy, Sent
from cardnet.services.speed import stored
from cardnet.services.speed import vendor as sv
from cardnet.services.speed.customer import AsyncLocalCard, Customer, PurchaseError, _Link
from cardnet.store import SqliteStore
from conftest import NOW

LIMIT = sm.Price(EUR, 1000)
NEWS = "news-1 Today's paper"
SONG = "song-1 Blue in Green"


@pytest.fixture
def world(tmp_path: Path, ca: pki.CertificateAuthority) -> Iterator[World]:
    with opened(tmp_path, ca) as w:
        yield w


def served(w: World, body: Callable[[], Awaitable[None]]) -> None:
    async def go() -> None:
        vs, bs = await serve(w)
        try:
            await load_purse(w, 1000)
            await body()
        finally:
            await vs.aclose()
            await bs.aclose()

    asyncio.run(go())


def vendor_cert(w: World) -> bytes:
    return w.vendor.cert


async def open_negotiation(w: World, card: LocalCard, nid: bytes, products: list[str]) -> tuple[
        CustomerNegotiation, _Link, dict[str, Any]]:  # fmt: skip
    """A NegotiationRequest signed by ``card`` sent to the vendor; the machine, the link and the vendor's step."""
    neg = CustomerNegotiation(nid=nid, enkey=os.urandom(32), signkey=os.urandom(32), strategy=LimitStrategy(LIMIT),
                              products=products, vendor_id=w.vendor.vendor_id)  # fmt: skip
    signed = card.ask(co.SIGN_REQUEST, co.SIGNED, mode="normal", content=neg.request())["cms"]
    link = _Link(w.vendor_addr, "vendor")
    await link.__aenter__()
    try:
        _, step = await link.ask(fr.REQUEST, fr.STEP, mode="normal",
                                 sealed=sm.seal_to(w.vendor.cert, signed, sm.INFO_REQUEST))  # fmt: skip
    except BaseException:
        await link.__aexit__()
        raise
    return neg, link, step


def second_card(w: World, tmp: Path, ca: pki.CertificateAuthority) -> LocalCard:
    c = Card(SqliteStore(str(tmp / "bob.db")), applets=[pa.PurseApplet(), co.ConductorApplet()])
    personalise(c, ca, pin=PIN, now=NOW, name="bob")
    return LocalCard(c, PIN, clock=clock)


# --- 5.3 replays ----------------------------------------------------------------------------------------------


def test_a_replayed_negotiation_step_ends_the_negotiation(world: World) -> None:
    w = world

    async def body() -> None:
        neg = CustomerNegotiation(nid=os.urandom(8), enkey=os.urandom(32), signkey=os.urandom(32),
                                  strategy=LimitStrategy(sm.Price(EUR, 220)),
                                  products=[SONG], vendor_id=w.vendor.vendor_id)  # fmt: skip
        signed = w.card.ask(co.SIGN_REQUEST, co.SIGNED, mode="normal", content=neg.request())["cms"]
        async with _Link(w.vendor_addr, "vendor") as v:
            _, step = await v.ask(fr.REQUEST, fr.STEP, mode="normal",
                                  sealed=sm.seal_to(w.vendor.cert, signed, sm.INFO_REQUEST))  # fmt: skip
            out = neg.on_step(step["sealed"])  # the vendor's 2.50 against our limit 2.20: we counter once
            assert isinstance(out, Sent)
            await v.ask(fr.STEP, fr.STEP, fr.ENDED, nid=neg.nid, sealed=out.sealed)
            with pytest.raises(PurchaseError) as e:  # the same step again: an active attack (paper 5.3)
                await v.ask(fr.STEP, fr.STEP, nid=neg.nid, sealed=out.sealed)
            assert e.value.reason in ("bad_tag", "replayed", "no_negotiation")
            with pytest.raises(PurchaseError) as e:  # and the negotiation is over: nothing more is taken
                await v.ask(fr.STEP, fr.STEP, nid=neg.nid, sealed=out.sealed)
            assert e.value.reason in ("no_negotiation", "finished")

    served(w, body)


def test_a_replayed_handshake_gets_no_second_delivery_and_a_reused_nid_is_refused(
    world: World, tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = world

    async def body() -> None:
        nid = os.urandom(8)
        neg, v, step = await open_negotiation(w, w.card, nid, [NEWS])
        try:
            assert neg.on_step(step["sealed"]).__class__.__name__ == "Agreed"
            hs = w.card.ask(co.HANDSHAKE, co.SIGNED, nid=nid, vendor_id=w.vendor.vendor_id,
                            price=neg.offered.fields())  # type: ignore[union-attr]  # fmt: skip
            sealed = neg.seal_handshake(hs["cms"])
            await v.send(fr.HANDSHAKE, nid=nid, sealed=sealed)
            await v.recv(fr.DELIVERY)
            for _ in range(1):
                await v.recv(fr.CHUNK)
            await v.recv(fr.BILL)
            with pytest.raises(PurchaseError) as e:
                await v.ask(fr.HANDSHAKE, fr.DELIVERY, nid=nid, sealed=sealed)
            assert e.value.reason == "handshake_seen"
        finally:
            await v.__aexit__()
        bob = second_card(w, tmp_path, ca)  # another customer drawing the same NID: PaymentOrderIDs stay unique
        try:
            with pytest.raises(PurchaseError) as e:
                await open_negotiation(w, bob, nid, [NEWS])
            assert e.value.reason == "nid_used"
        finally:
            bob.close()

    served(w, body)


def test_a_bill_is_paid_once_whatever_is_replayed(world: World) -> None:
    w = world

    async def body() -> None:
        got = await w.customer.buy(w.vendor_addr, w.broker_addr, [NEWS], broker_cert=w.broker_cert, limit=LIMIT)
        assert w.balance() == 1000 - 80
        paid = w.broker.balances()["V-1"]
        # the host asks the card to pay the same bill again (a replay): the same order, the same S1, no new debit
        again = w.card.ask(co.PAY, co.ORDER, bill=got.bill, vendor_cert=w.vendor.cert, kind="purse",
                           benc=os.urandom(32), bsign=os.urandom(32))  # fmt: skip
        assert again["po"] == got.payment_order
        # the payment order replayed to the broker: the same receipt back, nobody paid twice
        async with _Link(w.broker_addr, "broker") as b:
            kind, r = await b.ask(fr.ORDER, fr.PURSE, fr.RECEIPT, sealed=sm.seal_to(w.broker_cert, got.payment_order,
                                                                                    sm.INFO_ORDER))  # fmt: skip
        assert kind is fr.RECEIPT and r["sealed"] == got.receipt
        assert w.balance() == 1000 - 80 and w.broker.balances()["V-1"] == paid
        assert w.broker.sam_totals(int(clock() // 86400)) == {EUR: 80}
        # a vendor that sends the old, paid bill in a new negotiation: the card answers the old order again
        # (the same S1: nothing more is debited), never a payment for the new purchase
        nid = os.urandom(8)
        neg, v, step = await open_negotiation(w, w.card, nid, [NEWS])
        await v.__aexit__()
        neg.on_step(step["sealed"])
        w.card.ask(co.HANDSHAKE, co.SIGNED, nid=nid, vendor_id=w.vendor.vendor_id, price=sm.Price(EUR, 80).fields())
        old = w.card.ask(co.PAY, co.ORDER, bill=got.bill, vendor_cert=w.vendor.cert, kind="purse",
                         benc=os.urandom(32), bsign=os.urandom(32))  # fmt: skip
        assert old["poid"] == got.poid and old["po"] == got.payment_order
        # another bill for the paid PaymentOrderID (signed by the vendor, a new RecKey): refused
        content = sm.decode(sm.BILL, sm.signed(got.bill, "bill").content, "bill")
        content["rec_key"] = os.urandom(32)
        rebill = cms.sign(sm.BILL.encode(content), w.vendor.cert, lambda d: profile.sign(w.vendor.key, d))
        with pytest.raises(HostError) as e:
            w.card.ask(co.PAY, co.ORDER, bill=rebill, vendor_cert=w.vendor.cert, kind="purse",
                       benc=os.urandom(32), bsign=os.urandom(32))  # fmt: skip
        assert e.value.reason == "already_paid"
        assert w.balance() == 1000 - 80
        assert w.card.ask(pa.BALANCE, pa.BALANCES)["pending_debits"] == 0

    served(w, body)


# --- 5.4 impersonation ------------------------------------------------------------------------------------------


def test_a_request_forwarded_by_another_vendor_is_refused(world: World, ca: pki.CertificateAuthority) -> None:
    w = world
    mkey, mcert = service(ca, "mallory")

    async def body() -> None:
        # the customer negotiates with Mallory (a certified vendor too); Mallory opens the request and
        # re-seals it to the honest vendor, hoping to sit in the middle of their negotiation
        neg = CustomerNegotiation(nid=os.urandom(8), enkey=os.urandom(32), signkey=os.urandom(32),
                                  strategy=LimitStrategy(LIMIT), products=[NEWS],
                                  vendor_id=sm.vendor_id(mcert))  # fmt: skip
        signed = w.card.ask(co.SIGN_REQUEST, co.SIGNED, mode="normal", content=neg.request())["cms"]
        sealed_to_mallory = sm.seal_to(mcert, signed, sm.INFO_REQUEST)
        opened_by_mallory = profile.hpke_open(mkey, sealed_to_mallory, sm.INFO_REQUEST)
        async with _Link(w.vendor_addr, "vendor") as v:
            with pytest.raises(PurchaseError) as e:
                await v.ask(fr.REQUEST, fr.STEP, mode="normal",
                            sealed=sm.seal_to(w.vendor.cert, opened_by_mallory, sm.INFO_REQUEST))  # fmt: skip
        assert e.value.reason == "not_for_me"

    served(w, body)


# --- 5.6 a changed bill -------------------------------------------------------------------------------------------


class CheatingVendor(sv.VendorCore):
    """Bills more than agreed (``extra``) or for other products (``other_products``)."""

    extra = 0
    other_products: list[str] | None = None

    def _deliver(self, msg: Any, nid: bytes, products: list[str], price: sm.Price, seal: Any, mode: str) -> Any:
        if self.other_products is not None:
            products = self.other_products
        return super()._deliver(msg, nid, products, sm.Price(price.currency, price.amount + self.extra), seal, mode)


@pytest.mark.parametrize(("extra", "other", "reason"), [(100, None, "wrong_price"), (0, [SONG], "wrong_product")])
@pytest.mark.parametrize("mode", ["normal", "aggressive"])
def test_a_changed_bill_is_refused_before_paying(world: World, extra: int, other: list[str] | None, reason: str,
                                                 mode: str) -> None:  # fmt: skip
    w = world
    cheat = CheatingVendor(w.vendor.store, clock=clock)
    cheat.extra, cheat.other_products = extra, other
    w.vendor = cheat

    async def body() -> None:
        with pytest.raises(PurchaseError) as e:
            await w.customer.buy(w.vendor_addr, w.broker_addr, [NEWS], broker_cert=w.broker_cert, limit=LIMIT,
                                 mode=mode)  # fmt: skip
        assert e.value.reason == reason
        assert w.balance() == 1000  # nothing paid, nothing begun
        assert w.card.ask(pa.BALANCE, pa.BALANCES)["pending_debits"] == 0
        assert w.broker.balances()["V-1"] == {}

    served(w, body)


# --- 5.5 visibility -------------------------------------------------------------------------------------------------


def test_the_broker_never_sees_the_products_and_the_customer_never_the_vendors_account(world: World) -> None:
    w = world

    async def body() -> None:
        got = await w.customer.buy(w.vendor_addr, w.broker_addr, [SONG], broker_cert=w.broker_cert, limit=LIMIT)
        # what the broker receives (the payment order, with the bill inside) names no product
        assert SONG.encode() not in got.payment_order and b"song-1" not in got.payment_order
        broker_rows = b"".join(k + v for t in ("sb.order", "sb.rcpt") for k, v in _rows(w.broker.store, t))
        assert b"song-1" not in broker_rows
        # what the customer receives (the bill) does not show the vendor's account number
        assert b"V-1" not in got.bill
        # and the vendor sees nothing of the purse: the payment went customer <-> broker only
        assert not any(b"purse" in v for _, v in _rows(w.vendor.store, sv.SALES))

    served(w, body)


def _rows(store: Any, table: str) -> list[tuple[bytes, bytes]]:
    with store.transaction() as txn:
        return list(txn.scan(table))


# --- 5.7 complaints -------------------------------------------------------------------------------------------------


def test_a_product_that_is_not_its_catalogue_content_is_refunded_on_complaint(world: World) -> None:
    w = world
    entry = sv.add_product(w.vendor.store, "cd-1 Kind of Blue", sm.Price(EUR, 300), b"the real album")
    stored.put(w.vendor.store, sv.CATALOGUE, b"cd-1 Kind of Blue", sv._PRODUCT.encode(
        {"price": sm.Price(EUR, 300).fields(), "floor": sm.Price(EUR, 300).fields(), "content": b"a cheap copy",
         "entry": entry}))  # fmt: skip  # the vendor swaps the content behind its signed entry
    w.vendor = sv.VendorCore(w.vendor.store, clock=clock)  # (a vendor reads its catalogue when it starts)

    async def body() -> None:
        got = await w.customer.buy(w.vendor_addr, w.broker_addr, ["cd-1 Kind of Blue"], broker_cert=w.broker_cert,
                                   limit=LIMIT)  # fmt: skip
        assert got.contents == [b"a cheap copy"]
        _, entries = await w.customer.catalogue(w.vendor_addr)
        signed = [e for e in _signed_entries(w) if cat.read(e, w.vendor.cert)["product"] == "cd-1 Kind of Blue"]
        assert entries and len(signed) == 1
        before = w.broker.balances()
        async with _Link(w.broker_addr, "broker") as b:
            with pytest.raises(PurchaseError) as e:  # a lie: other content than delivered is not evidence
                await b.ask(fr.COMPLAINT, fr.VERDICT, poid=got.poid, products=got.products, entries=signed,
                            contents=[b"something else"], refund_to="C-1")  # fmt: skip
            assert e.value.reason == "not_delivered"
            _, verdict = await b.ask(fr.COMPLAINT, fr.VERDICT, poid=got.poid, products=got.products, entries=signed,
                                     contents=got.contents, refund_to="C-1")  # fmt: skip
        assert verdict["upheld"] and verdict["refund"] == 300
        after = w.broker.balances()
        assert after["V-1"][EUR] == before["V-1"][EUR] - 300
        assert after["C-1"][EUR] == before["C-1"][EUR] + 300

    served(w, body)


def test_a_complaint_about_the_right_content_is_not_upheld(world: World) -> None:
    w = world

    async def body() -> None:
        got = await w.customer.buy(w.vendor_addr, w.broker_addr, [NEWS], broker_cert=w.broker_cert, limit=LIMIT)
        signed = [e for e in _signed_entries(w) if cat.read(e, w.vendor.cert)["product"] == NEWS]
        async with _Link(w.broker_addr, "broker") as b:
            _, verdict = await b.ask(fr.COMPLAINT, fr.VERDICT, poid=got.poid, products=got.products, entries=signed,
                                     contents=got.contents, refund_to="C-1")  # fmt: skip
        assert not verdict["upheld"] and verdict["refund"] == 0

    served(w, body)


def _signed_entries(w: World) -> list[bytes]:
    return [sv._PRODUCT.decode(v)["entry"] for _, v in _rows(w.vendor.store, sv.CATALOGUE)]


def test_a_lost_receipt_is_sent_again_by_the_broker(world: World) -> None:
    w = world

    async def body() -> None:
        got = await w.customer.buy(w.vendor_addr, w.broker_addr, [NEWS], broker_cert=w.broker_cert, limit=LIMIT)
        async with _Link(w.broker_addr, "broker") as b:
            _, again = await b.ask(fr.RESEND, fr.RECEIPT, poid=got.poid)
            with pytest.raises(PurchaseError) as e:
                await b.ask(fr.RESEND, fr.RECEIPT, poid=sm.make_poid(w.vendor.vendor_id, os.urandom(8)))
            assert e.value.reason == "not_paid"
        assert again["sealed"] == got.receipt
        bill = sm.decode(sm.BILL, sm.signed(got.bill, "bill").content, "bill")
        receipt = sv.open_receipt(bill["rec_key"], again["sealed"], w.broker_cert, w.customer.roots, clock())
        assert receipt["poid"] == got.poid and receipt["price"] == sm.Price(EUR, 80).fields()
        # the vendor opens the same receipt with its RecKey
        assert w.vendor.take_receipt(got.poid, again["sealed"]) == sm.Price(EUR, 80)

    served(w, body)


def test_a_customer_pays_only_with_their_own_card_and_account(world: World, tmp_path: Path,
                                                              ca: pki.CertificateAuthority) -> None:  # fmt: skip
    w = world
    bob = second_card(w, tmp_path, ca)

    async def body() -> None:
        robber = Customer(AsyncLocalCard(bob), bob.certificate_der, w.customer.roots, clock=clock)
        with pytest.raises(PurchaseError) as e:  # bob's card signs, but names alice's account
            await robber.buy(w.vendor_addr, w.broker_addr, [NEWS], broker_cert=w.broker_cert, limit=LIMIT,
                             payment="account", account="C-1")  # fmt: skip
        assert e.value.reason == "not_your_account"
        assert w.broker.balances()["C-1"] == {EUR: 9000}

    try:
        served(w, body)
    finally:
        bob.close()
