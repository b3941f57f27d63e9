"""Sales that need the broker to buy a bulk vendor's stock, many at once, with real broker and vendor processes.

Before, the purchases needing stock shared one pending order and the stock it brought went to whichever sale came
to the store first: a sale that had ordered stock could find it taken by a concurrent sale, order again, and after
four vendor calls end ``pending`` ("the vendor's stock ran out while buying") though the vendor sold every order.
Now each sale that waited on an order gets a piece of it, reserved for it when the order's answer is applied (by
whichever sale applies it). And when the vendor refuses an order that several sales waited on, each of them is told
so with the vendor's reason (before: some were told "the stock ran out", others "try again later").
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from hostprocs import Service, cardnet
from test_millicent_hung_vendor import GUARD_S, B, add_bulk, agreement, customer, customers_buy, status

from cardnet.protocols import millicent as mc
from cardnet.services.millicent import broker as mb
from cardnet.services.millicent.wallet import Wallet
from cardnet.store import SqliteStore
from cardnet.transport import dial
from cardnet.wire import Message, Uid

CUSTOMERS = 8  # buying at once, each once; orders of one piece: before, at most 3 of them could be sold


async def buy_once(address: str, purchases: list[tuple[Wallet, bytes, bytes]]) -> list[mc.Purchased]:
    """Every purchase sent once, all at once, on its own connection: the broker's first answer to each."""
    host, port = address.rsplit(":", 1)

    async def send(param: bytes, rkey: bytes) -> mc.Purchased:
        async with await dial(host, int(port)) as conn:
            await conn.send(Message(Uid(b"\x00" * 12, 9), Uid(b"\x00" * 12, 0), mc.PURCHASE.code, param))
            reply = await asyncio.wait_for(conn.recv(), GUARD_S)
        return mc.open_purchased(reply.mtype, reply.param, purchase=param, key=rkey)

    return list(await asyncio.gather(*(send(param, rkey) for _, param, rkey in purchases)))


def run_sales(tmp_path: Path, b: str, n: int) -> tuple[list[mc.Purchased], list[int | None]]:
    """``n`` customers with 100 each buy 20 of vendor B's scrip at once through a broker process on ``b``."""
    broker = Service(tmp_path, "millicent", "broker", "run", "--store", b, "--listen", "127.0.0.1:0")
    broker.start()
    try:
        results, cids = customers_buy(tmp_path, b, broker.address, n, buy_once)
    finally:
        broker.stop()
    with SqliteStore(b) as store:
        core = mb.BrokerCore(store)
        balances = [core.account(cid) for cid in cids if cid is not None]
    return results, balances


def test_every_sale_that_ordered_stock_gets_it_though_others_buy_at_once(tmp_path: Path) -> None:
    """Eight customers buy at once; the broker's orders are of one piece each: every first answer is the sale."""
    v, file = agreement(tmp_path, B)
    b = str(tmp_path / "broker.db")
    vendor = Service(tmp_path, "millicent", "vendor", "run", "--store", v, "--listen", "127.0.0.1:0")
    vendor.start()
    try:
        add_bulk(b, file, vendor.address, 1)
        results, balances = run_sales(tmp_path, b, CUSTOMERS)
    finally:
        vendor.stop()
    details = [r.detail for r in results if r.status != mc.PURCHASE_OK]
    assert details == [], f"{len(details)} of {CUSTOMERS} sales were not made: {details}"
    assert all(r.scrip is not None and r.scrip.value == 20 for r in results)
    assert len({r.scrip for r in results}) == CUSTOMERS
    assert balances == [80] * CUSTOMERS  # debited once each
    bulk = status(b)[B]
    # Every order was answered and every piece bought went to a sale (bought = stock + reserved + sold).
    assert bulk["pending_orders"] == 0 and bulk["reserved_value"] == 0
    assert bulk["stock_value"] + CUSTOMERS * 20 == bulk["bought_value"]


def test_sales_waiting_on_an_order_the_vendor_refused_are_told_why(tmp_path: Path) -> None:
    """The broker's copy of the agreement names a discount the vendor did not agree to: the vendor refuses its
    orders. Four customers buying at once are each refused in words with the vendor's reason, nothing debited,
    and the wallet does not keep the purchase to send again (it cannot succeed until the operators settle it)."""
    v, file = agreement(tmp_path, B)
    terms = json.loads(file.read_text())
    terms["discount_pct"] = 20  # the vendor agreed to 10 %
    file.write_text(json.dumps(terms))
    b = str(tmp_path / "broker.db")
    vendor = Service(tmp_path, "millicent", "vendor", "run", "--store", v, "--listen", "127.0.0.1:0")
    vendor.start()
    try:
        add_bulk(b, file, vendor.address, 1)
        results, balances = run_sales(tmp_path, b, 4)
        broker = Service(tmp_path, "millicent", "broker", "run", "--store", b, "--listen", "127.0.0.1:0")
        broker.start()
        try:  # a customer's own wallet, through the CLI
            wallet = customer(tmp_path, b, broker.address, "dora", 100)
            out = cardnet("millicent", "buy", "--wallet", wallet, "--vendor", B, "--value", "20", check=False)
        finally:
            broker.stop()
    finally:
        vendor.stop()
    refused = "the vendor refused the broker's order of its scrip (the agreed discount is 10 %): nothing was debited"
    for r in results:
        assert r.status == mc.PURCHASE_REFUSED, r.detail
        assert r.detail.startswith(refused), r.detail
    assert balances == [100] * 4
    assert out.returncode != 0 and refused in out.stderr + out.stdout, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    listed = json.loads(cardnet("millicent", "list", "--wallet", wallet, "--json").stdout)
    assert listed["pending"] == [] and listed["scrip"] == []
    assert status(b)[B]["pending_orders"] == 0


def test_a_vendor_that_wants_level_3_sells_through_the_bulk_broker_and_an_unspent_refusal_keeps_the_stock(
    tmp_path: Path,
) -> None:
    """The broker's `issue` requests are sealed (level 3). Before, they were level 2, and a vendor that wants level 3
    refused each (`level_too_low`, MACed, nothing spent) while the broker dropped the piece: two refused sales of 20
    lost all 40 of stock it had bought. Now such a vendor sells; and a refusal that leaves the piece unspent (here:
    the vendor's operator dropped the broker's agreement, `not_allowed`) gives the customer her money back and the
    piece stays the broker's stock."""
    from cardnet.services.millicent import vendor as mv
    from cardnet.services.millicent.wallet import WalletError

    v, file = str(tmp_path / "vendor.db"), tmp_path / "bulk.json"
    cardnet("millicent", "vendor", "init", "--store", v, "--id", B, "--level", "3")
    cardnet("millicent", "vendor", "bulk-agreement", "--store", v, "--broker", "bob", "--out", str(file))
    b = str(tmp_path / "broker.db")

    def buy(wallet: str) -> None:
        with SqliteStore(wallet) as store:
            asyncio.run(asyncio.wait_for(Wallet(store).buy(bytes.fromhex(B), 20), GUARD_S))

    vendor = Service(tmp_path, "millicent", "vendor", "run", "--store", v, "--listen", "127.0.0.1:0")
    vendor.start()
    broker = Service(tmp_path, "millicent", "broker", "run", "--store", b, "--listen", "127.0.0.1:0")
    try:
        add_bulk(b, file, vendor.address, 3)
        cardnet("millicent", "broker", "bulk-buy", "--store", b, "--vendor", B, "--value", "60", "--pieces", "3")
        broker.start()
        wallet = customer(tmp_path, b, broker.address, "alice", 100)
        buy(wallet)  # sold at level 3 (before: refused, and the piece lost)
        assert (status(b)[B]["stock_value"], status(b)[B]["bought_value"]) == (40, 60)
        vendor.stop()  # its operator drops the broker's agreement
        with SqliteStore(v) as vstore, vstore.transaction() as txn:
            [(broker_cid, _)] = txn.scan(mv.BULK)
            txn.delete(mv.BULK, broker_cid)
        vendor = Service(tmp_path, "millicent", "vendor", "run", "--store", v, "--listen", "127.0.0.1:0")
        vendor.start()
        add_bulk(b, file, vendor.address, 3)  # (its new port)
        try:
            buy(wallet)
        except WalletError as exc:
            assert exc.reason == "refused" and "only this vendor's bulk brokers" in str(exc), exc
        else:
            raise AssertionError("issued for a broker the vendor has no agreement with")
        with SqliteStore(wallet) as store:
            cid = Wallet(store).customer_id
    finally:
        broker.stop()
        vendor.stop()
    bulk = status(b)[B]
    assert (bulk["stock_value"], bulk["pieces"], bulk["bought_value"]) == (40, 2, 60), bulk  # the piece kept
    with SqliteStore(b) as bstore:
        assert cid is not None and mb.BrokerCore(bstore).account(cid) == 80  # the refused 20 given back


def test_a_bulk_sale_the_vendor_could_not_decide_says_so_and_the_retry_sells_it_once(tmp_path: Path) -> None:
    """The vendor's store cannot be written (a real fault: diskfull) when the broker pays it with a stock piece: it
    answers `unavailable`, plain. The sale stays pending and the customer is told that, not "the vendor's answer
    did not check" (words for a forged answer, before); once the vendor can write, the same purchase sells once."""
    from diskfull import disk_full

    from cardnet.services.millicent.wallet import WalletError

    v, file = agreement(tmp_path, B)
    b = str(tmp_path / "broker.db")
    vendor = Service(tmp_path, "millicent", "vendor", "run", "--store", v, "--listen", "127.0.0.1:0")
    broker = Service(tmp_path, "millicent", "broker", "run", "--store", b, "--listen", "127.0.0.1:0")
    vendor.start()
    try:
        add_bulk(b, file, vendor.address, 2)
        cardnet("millicent", "broker", "bulk-buy", "--store", b, "--vendor", B, "--value", "40", "--pieces", "2")
        broker.start()
        wallet = customer(tmp_path, b, broker.address, "alice", 100)
        assert vendor.proc is not None
        with SqliteStore(wallet) as store:
            alice = Wallet(store)
            with disk_full(vendor.proc.pid):
                try:
                    asyncio.run(asyncio.wait_for(alice.buy(bytes.fromhex(B), 20), GUARD_S))
                except WalletError as exc:
                    assert exc.reason == "pending" and mb.VENDOR_UNAVAILABLE in str(exc), exc
                else:
                    raise AssertionError("sold by a vendor that cannot write its store")
            rows = asyncio.run(asyncio.wait_for(alice.retry_pending(int(time.time())), GUARD_S))
            assert [r["outcome"] for r in rows] == ["bought"], rows
            assert [s.value for s in alice.scrip(bytes.fromhex(B))] == [20]
            cid = alice.customer_id
    finally:
        broker.stop()
        vendor.stop()
    with SqliteStore(b) as bstore:
        assert cid is not None and mb.BrokerCore(bstore).account(cid) == 80  # debited once
