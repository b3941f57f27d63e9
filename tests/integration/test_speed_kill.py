"""SIGKILL during real SPEED purchases over TCP (issue 12, item 7): the customer's host (its card), the vendor or
the broker is killed at a random point of a purchase, 100 times each, then restarted and the purchase recovered.

After every kill, once recovery is done: the purse was debited (by exactly the price) if and only if the customer
holds a receipt that opens under the bill's RecKey and whose K deciphers the products they received; and at the
end no payment order was paid twice and value is conserved: what the purse lost is what the SAM logged is what
the vendor's account gained. The kill lands inside the purchase (the window is steered, ``killwindow``): the
test fails if too few kills hit a purchase in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import forkhost
import pytest
from forkhost import Forker
from killwindow import KillWindow
from speedprocs import MODULES, NEWS, PIN, SONG, SpeedNet, build

from cardnet.applets.speed import purse as pa
from cardnet.crypto import pki
from cardnet.errors import CardnetError
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed import broker_records as sb_records
from cardnet.services.speed.customer import Customer, Journal, PurchaseError
from cardnet.services.speed.vendor import open_receipt
from cardnet.services.wallet import Wallet
from cardnet.store import SqliteStore

KILLS = 100
MAX_KILLS = 2 * KILLS  # a loaded machine may need more kills to land enough inside purchases (see go())
PRICES = {NEWS: 80, SONG: 250}


@pytest.fixture(scope="module")
def forker() -> Iterator[Forker]:
    with forkhost.forker(MODULES) as f:
        yield f


@pytest.fixture
def net(tmp_path: Path, forker: Forker) -> Iterator[SpeedNet]:
    # (the loop restarts the victim 100 times and more: its restarts are forks of the forker but every tenth, and so
    # are the set-up's commands; see tests/integration/forkhost.py)
    n = build(tmp_path, song_bytes=200_000, load="1000.00 EUR", deposit="1000.00 EUR", forker=forker)
    yield n
    n.stop()


class Buyer:
    def __init__(self, net: SpeedNet) -> None:
        self.net = net
        self.host = net.customers["alice"].host
        self.roots = [pki.cert_to_der(pki.chain_from_pem((net.tmp / "ca.pem").read_bytes())[0])]
        self.broker_cert = pki.cert_to_der(pki.chain_from_pem((net.tmp / "broker.pem").read_bytes())[0])
        self.journal = Journal(net.tmp / "journal")
        self.wallet: Wallet | None = None

    async def customer(self) -> Customer:
        if self.wallet is None:
            self.wallet = await Wallet.open(self.host.socket, pin=PIN)
        return Customer(self.wallet, b"", self.roots, journal=self.journal)

    async def drop_wallet(self) -> None:
        if self.wallet is not None:
            await self.wallet.close()
            self.wallet = None

    async def buy(self, product: str, mode: str) -> Any:
        c = await self.customer()
        return await c.buy(self.net.vendor.address, self.net.broker.address, [product], broker_cert=self.broker_cert,
                           limit=sm.Price("EUR", 1000), mode=mode)  # fmt: skip

    async def debited(self) -> int:
        c = await self.customer()
        got = await c.card.ask(pa.BALANCE, pa.BALANCES)
        return sum(a["debited"] for a in got["accounts"])

    async def recover(self) -> None:
        """Finish whatever the kill interrupted (the restarted services may take a moment to answer)."""
        for _ in range(100):
            try:
                await (await self.customer()).recover()
                return
            except CardnetError as exc:
                if isinstance(exc, PurchaseError) and exc.reason not in ("unreachable", "no_host"):
                    raise
                await self.drop_wallet()
                await asyncio.sleep(0.05)
        raise AssertionError("recovery did not finish")


def victim_of(net: SpeedNet, name: str) -> Any:
    return {"customer": net.customers["alice"].host, "vendor": net.vendor, "broker": net.broker}[name]


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["customer", "vendor", "broker"])
def test_sigkill_at_random_points_of_purchases(net: SpeedNet, victim: str) -> None:
    rng = random.Random(f"speed-kill-{victim}")
    buyer = Buyer(net)
    window = KillWindow(rng, 0.05)
    in_flight = completed = 0
    receipts: dict[bytes, bytes] = {}

    async def go() -> None:
        nonlocal in_flight, completed
        total_debited = await buyer.debited()
        kill = -1
        # KILLS kills, and more (up to MAX_KILLS) until enough landed inside a purchase and enough completed
        while (kill := kill + 1) < KILLS or ((in_flight < KILLS // 10 or completed < KILLS // 10) and kill < MAX_KILLS):
            product = rng.choice((NEWS, SONG))
            mode = rng.choice(("normal", "aggressive"))
            before = {r.nid for r in buyer.journal.all()}
            debited = await buyer.debited()
            task = asyncio.create_task(buyer.buy(product, mode))
            await asyncio.sleep(window.draw())
            finished_before_kill = task.done() and task.exception() is None
            v = victim_of(net, victim)
            await asyncio.to_thread(_kill, v)
            with contextlib.suppress(CardnetError):
                await task
            await buyer.drop_wallet()
            await asyncio.to_thread(_start, v)
            await buyer.recover()
            new = [r for r in buyer.journal.all() if r.nid not in before]
            assert len(new) <= 1, f"kill {kill}: one purchase wrote {len(new)} journal records"
            now = await buyer.debited()
            where = f"kill {kill} ({victim}, {product}, {mode})"
            if new and new[0].receipt is not None:
                rec = new[0]
                assert now - debited == PRICES[product], f"{where}: receipted but debited {now - debited}"
                bill = sm.decode(sm.BILL, sm.signed(rec.bill, "bill").content, "bill")
                receipt = open_receipt(bill["rec_key"], rec.receipt, buyer.broker_cert, buyer.roots, time.time())
                assert receipt["poid"] == rec.poid and rec.poid not in receipts, f"{where}: a poid receipted twice"
                receipts[rec.poid] = rec.receipt
                content = sm.decrypt_chunks(receipt["k"], 0, rec.chunks[0])
                assert len(content) == (200_000 if product == SONG else 400), f"{where}: the key does not decipher"
                completed += 1
            else:
                assert now == debited, f"{where}: debited {now - debited} without a receipt"
            early = not new
            late = finished_before_kill
            if not early and not late:
                in_flight += 1
            window.saw(early, late)
            total_debited = now
        # the end: value conserved, nothing paid twice
        accounts = net.accounts()
        assert accounts["V-1"].get("EUR", 0) == total_debited - 0, "vendor credits are not the purse's debits"
        store = SqliteStore(str(net.tmp / "broker.db"))
        try:
            with store.transaction() as txn:
                paid = [k for k, v in txn.scan(sb_records.ORDERS) if sb_records._ORDER.decode(v)["state"] == "paid"]
        finally:
            store.close()
        assert sorted(paid) == sorted(receipts), "the broker's paid orders are not the customer's receipts"
        await buyer.drop_wallet()

    asyncio.run(go())
    print(f"\nvictim {victim}: {in_flight} kills hit a purchase in flight, {completed} completed")
    assert in_flight >= KILLS // 10, f"only {in_flight} kills hit a purchase in flight"
    assert completed >= KILLS // 10, f"only {completed} purchases completed"


def _kill(v: Any) -> None:
    if hasattr(v, "kill"):
        v.kill()
    else:
        v.stop()


def _start(v: Any) -> None:
    v.start()
