"""A seat billed and never paid goes back on sale once its bill's deadline passed, and the bill is no longer paid.

The vendor writes a deadline (``pay_by``) into each bill it signs; the broker refuses a payment order for a bill past
it (``bill_expired``, nothing paid); the ticketing server gives back the seat of a sale with no receipt once the
deadline and ``release_margin_s`` passed, after reading the broker's receipts (a buyer who paid in time and has not
come back yet keeps the seat). The ticketing server, its device's host, the broker and the buyers' hosts
run in this process (:meth:`cardnet.bench.ticketnet.TicketNet.in_process`); Mallory buys and recovers with the
``cardnet speed`` commands, as processes."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import httpx
from billdeadline import deadline_net, speed_cli

from cardnet.applets.speed import purse as pa
from cardnet.bench.ticketnet import EVENT, PRICE
from cardnet.cli.speed import JOURNAL
from cardnet.crypto import cms
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed.customer import Customer, Journal
from cardnet.services.ticketing import sales
from cardnet.services.ticketing.buyer import buy_ticket, receive_ticket
from conftest import openssl

SEATS = ["A1", "A2"]


def test_an_unpaid_seat_is_released_at_its_bills_deadline_and_the_late_bill_is_refused_unpaid(tmp_path: Path) -> None:
    """Mallory is billed for A1 (aggressive mode, at the list price) and does not pay (her broker address leads
    nowhere). The bill carries the vendor's deadline, signed with the rest (``openssl cms -verify`` still checks
    it). Once the deadline and the margin passed, A1 is free again; Mallory's recovery through the real broker is
    refused ``bill_expired`` in words, nothing paid (her purse as before, the sale unpaid); Bob buys A1 and
    gets its ticket. Bob, who paid A2 in time and whose program stopped before it showed the server the receipt, keeps
    A2 (the server read his receipt from the broker) and gets its ticket later. Before, bills had no deadline: A1
    stayed held for good and Mallory could pay it at any time."""
    net = deadline_net(tmp_path, ("mallory", "bob"), SEATS)
    out = tmp_path / "mallory-bought"

    async def balance() -> int:
        got = await net.ask("mallory", pa.BALANCE, pa.BALANCES)
        return next(a["balance"] for a in got["accounts"] if a["currency"] == "EUR")

    async def seat_free(c: httpx.AsyncClient, seat: str) -> bool:
        return bool((await c.get(f"/events/{EVENT}", params={"seat": seat})).json()["seats"][0]["free"])

    async def go() -> None:
        async with net.in_process() as server, httpx.AsyncClient(base_url=net.url) as c:
            await net.setup()
            assert server.store is not None
            speed = (await c.get("/")).json()["speed"]
            before = await balance()
            common = ("--socket", str(net.hosts["mallory"].socket), "--ca-cert", str(tmp_path / "ca.pem"),
                      "--out", str(out))  # fmt: skip
            rc, got = await speed_cli("buy", *common, "--vendor", speed, "--broker", "127.0.0.1:1", "--broker-cert",
                                      str(tmp_path / "broker.pem"), "--product", f"{EVENT}/A1", "--aggressive",
                                      "--limit", PRICE)  # fmt: skip
            assert rc != 0 and got["error"]["reason"] == "unreachable", got
            assert not await seat_free(c, "A1")
            (pending,) = Journal(out / JOURNAL).pending()
            bill = sm.decode(sm.BILL, cms.verify(pending.bill).content, "bill")
            (sale,) = [t for t in _tickets(server.store) if t.seat == "A1"]
            assert sale.state == "sold" and bill["poid"] == sale.poid and "pay_by" in bill
            async with await net.wallet("bob") as w:  # Bob pays A2 in time; his program stops before the delivery
                paid = await Customer(w, b"", net.roots).buy(
                    speed, net.broker_addr, [f"{EVENT}/A2"], broker_cert=net.broker_cert, mode="aggressive",
                    vendor_cert=net.vendor_cert, price=sm.parse_price(PRICE),
                )  # fmt: skip

            # the deadline is in the signed bill: an arbitrator with openssl and the CA still checks it
            (tmp_path / "bill.der").write_bytes(pending.bill)
            checked = subprocess.run(
                [openssl(), "cms", "-verify", "-inform", "DER", "-in", str(tmp_path / "bill.der"), "-CAfile",
                 str(tmp_path / "ca.pem"), "-purpose", "any", "-binary", "-out", str(tmp_path / "bill.content")],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            assert checked.returncode == 0, checked.stderr
            assert sm.decode(sm.BILL, (tmp_path / "bill.content").read_bytes(), "bill")["pay_by"] == bill["pay_by"]

            async with asyncio.timeout(60):  # the deadline, the margin, and the server's next look for due seats
                while not await seat_free(c, "A1"):
                    await asyncio.sleep(0.2)
            (sale,) = [t for t in _tickets(server.store) if t.seat == "A1"]
            assert sale.state == sales.RELEASED
            # Bob's receipt, never shown to the server, is read from the broker once A2's own deadline passed (its bill
            # came a moment after A1's: under load, a look may release A1 before A2 is due); A2 is never given back
            async with asyncio.timeout(60):
                while [t.state for t in _tickets(server.store) if t.seat == "A2"] != ["paid"]:
                    assert not await seat_free(c, "A2")
                    await asyncio.sleep(0.2)
            assert not await seat_free(c, "A2")
            got_a2 = await receive_ticket(net.url, paid.poid, net.hosts["bob"].socket, receipt=paid.receipt)

            rc, got = await speed_cli("recover", *common, "--broker", net.broker_addr)
            assert rc == 0, got
            assert got["finished"] == [], got
            (dropped,) = got["dropped"]
            assert dropped["reason"] == "bill_expired", got
            assert "had to be paid by" in dropped["detail"] and "nothing was paid" in dropped["detail"], got
            assert Journal(out / JOURNAL).pending() == []
            assert await balance() == before  # no money moved
            assert not server.core.is_paid(sale.poid)  # type: ignore[union-attr]

            async with await net.wallet("bob") as w:
                bought = await buy_ticket(net.url, EVENT, "A1", card=w, app_socket=net.hosts["bob"].socket,
                                          broker=net.broker_addr, broker_cert=net.broker_cert,
                                          roots=net.roots)  # fmt: skip
            assert not await seat_free(c, "A1")
            async with asyncio.timeout(30):
                while {(await net.tokens("bob")).get(o) for o in (bought.oid, got_a2.oid)} != {"enabled"}:
                    await asyncio.sleep(0.05)

    asyncio.run(go())


def _tickets(store: Any) -> list[sales.Ticket]:
    with store.transaction() as txn:
        return [sales.Ticket.decode(k, v) for k, v in txn.scan(sales.TICKETS)]
