"""Settlement never carries a vendor's account past its cap: a purse debit the broker lost, settled from the SAM's log
when the vendor's account could not take it, is held (durably, in words, listed for the operator) and credited once
the account has room; nothing wraps, nothing is lost, nothing is credited twice.

Before, ``_settle_day`` added the debit to the balance unchecked: the account passed ``MAX_AMOUNT`` (2**53 minor
units), which the account record refuses to hold or, below that, the broker's own rule does."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest
from hostprocs import cardnet
from speedworld import EUR, T0, World, load_purse, opened, serve

from cardnet.applets.speed import conductor as co
from cardnet.applets.speed import purse as pa
from cardnet.applets.speed import sam as sa
from cardnet.crypto import pki
from cardnet.protocols.speed import frames as fr
from cardnet.protocols.speed import messages as sm
from cardnet.protocols.speed import purse as pp
from cardnet.services.speed import broker as sb
from cardnet.services.speed import broker_accounts as sb_accounts
from cardnet.services.speed import broker_server as sb_server
from cardnet.services.speed import broker_settlement as sb_settle
from cardnet.services.speed.customer import Journal, PurchaseError
from cardnet.wire import Uid

NEWS = "news-1 Today's paper"


def _fill_vendor_account(w: World, amount: int) -> None:
    """The vendor's sales filled its account up to ``amount``: its balance set in the broker's store."""
    sb_accounts._put_account(w.broker.store, "V-1", w.vendor.vendor_id, {EUR: amount}, create=False)


def test_a_settled_debit_the_vendors_account_cannot_take_is_held_then_credited_once(
    tmp_path: Path, ca: pki.CertificateAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    with opened(tmp_path, ca) as w:
        w.customer.journal = Journal(tmp_path / "journal")

        async def go() -> None:
            vs, bs = await serve(w)
            try:
                await load_purse(w, 1000)
                with pytest.raises(PurchaseError):  # the broker cannot be reached: the card has made its order
                    await w.customer.buy(w.vendor_addr, "127.0.0.1:1", [NEWS], broker_cert=w.broker_cert,
                                         limit=sm.Price(EUR, 100))  # fmt: skip
                [rec] = w.customer.journal.pending()
                order = w.card.ask(co.PAY, co.ORDER, bill=rec.bill, vendor_cert=rec.vendor_cert, kind="purse",
                                   benc=rec.benc, bsign=rec.bsign)  # fmt: skip
                me = Uid(bytes(12), 0)
                sealed = sm.seal_to(w.broker_cert, order["po"], sm.INFO_ORDER)
                got = w.broker.handle(fr.ORDER.make(me, me, sealed=sealed))
                s2 = sm.decode(sm.PURSE_STEP, sm.sym_open(rec.benc, sm.NONCE_B_PURSE, 0, fr.PURSE.parse(got)["sealed"],
                                                          sign_key=rec.bsign, what="S2"), "S2")["s"]  # fmt: skip
                s3 = w.card.ask(pa.DEBIT, pa.S3_IS, s2=s2)["s3"]
                w.broker.sam.ask(sa.DEBIT_FINISH, sa.DEBITED, s3=s3)  # ... and the broker stops here
                assert w.balance() == 1000 - 80
                # meanwhile the vendor's account filled up to 10 minor units below its cap
                _fill_vendor_account(w, pp.MAX_AMOUNT - 10)
                await bs.aclose()

                day = int(T0 // 86400)
                restarted = sb.BrokerCore(w.broker.store, w.broker.sam, clock=w.broker.clock)
                with caplog.at_level(logging.ERROR, logger="cardnet.speed.broker"):
                    assert restarted.settle(day) == 1  # settled from the SAM's log, its credit held
                assert "held its credit" in caplog.text and "V-1" in caplog.text
                assert restarted.balances()["V-1"] == {EUR: pp.MAX_AMOUNT - 10}  # not wrapped, not past the cap
                [h] = sb_settle.held(restarted.store)
                assert (h["account"], h["currency"], h["amount"], h["day"]) == ("V-1", EUR, 80, day)
                poid = sm.decode(sm.BILL, sm.signed(rec.bill, "bill").content, "bill")["poid"]
                assert h["poid"] == poid.hex() and "cannot take" in h["why"]

                # the operator sees it, in words and in --json, from the broker's store
                shown = json.loads(cardnet("speed", "broker", "accounts", "--store", str(tmp_path / "broker.db"),
                                           "--json").stdout)  # fmt: skip
                assert shown["held"] == [h] and shown["accounts"]["V-1"] == {EUR: pp.MAX_AMOUNT - 10}
                words = cardnet("speed", "broker", "accounts", "--store", str(tmp_path / "broker.db")).stdout
                assert "credits held" in words and "0.80" in words

                # a broker restarted again settles nothing twice; the account still has no room: still held
                again = sb.BrokerCore(w.broker.store, w.broker.sam, clock=w.broker.clock)
                assert again.settle(day) == 0
                assert again.balances()["V-1"] == {EUR: pp.MAX_AMOUNT - 10} and len(sb_settle.held(again.store)) == 1

                # the operator pays the account out: the next settlement credits the held 0.80 EUR, once
                whole = sm.format_amount(pp.MAX_AMOUNT - 10, EUR)
                cardnet("speed", "broker", "payout", "--store", str(tmp_path / "broker.db"), "--account", "V-1",
                        "--amount", whole)  # fmt: skip
                assert again.balances()["V-1"] == {} and len(sb_settle.held(again.store)) == 1
                assert again.settle(day) == 0
                assert again.balances()["V-1"] == {EUR: 80} and sb_settle.held(again.store) == []
                assert again.settle(day) == 0 and again.balances()["V-1"] == {EUR: 80}

                # the customer comes back: the receipt, and the vendor is not credited twice
                w.broker = again
                bs2 = sb_server.BrokerServer(again)
                host, port = await bs2.start()
                rec.broker = f"{host}:{port}"
                w.customer.journal.save(rec)
                try:
                    [done] = await w.customer.recover()
                finally:
                    await bs2.aclose()
                assert done.price == sm.Price(EUR, 80)
                assert again.balances()["V-1"] == {EUR: 80} and w.balance() == 1000 - 80
            finally:
                await vs.aclose()
                await bs.aclose()

        asyncio.run(go())
