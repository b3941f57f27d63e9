"""A buyer whose payment the broker authorised before the bill's deadline keeps the seat until it is paid.

The broker pays such a payment whenever the buyer's program comes back (its purse may have debited on the broker's S2:
docs/speed.md, "Deadlines"), so the ticketing server, before it releases the seat of a sale past its deadline and
the margin, asks the broker what became of it (``speed.order_states``): an authorised sale keeps its seat. The
ticketing server, its device's host, the broker and the buyers' hosts run in this process
(:meth:`cardnet.bench.ticketnet.TicketNet.in_process`); Alice and Mallory buy and recover with the ``cardnet speed``
commands, as processes; Alice's program reaches the broker through a TCP relay that breaks the connection when her
S3 comes (her program stopped after the broker's go-ahead)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from billdeadline import deadline_net, speed_cli
from speedprocs import relay_that_loses_s3

from cardnet.applets.speed import purse as pa
from cardnet.bench.ticketnet import EVENT, PRICE
from cardnet.cli.speed import JOURNAL
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed.customer import Journal, PurchaseError
from cardnet.services.ticketing import sales
from cardnet.services.ticketing.buyer import buy_ticket, receive_ticket

SEATS = ["A1", "A2"]


def test_a_payment_authorised_before_the_deadline_keeps_its_seat_past_the_margin_until_it_is_paid(
    tmp_path: Path,
) -> None:
    """Alice buys A1 (aggressive mode, a bill due in 3 s); the broker authorises her payment (S2), her purse debits,
    and her program stops before the broker has her S3. Mallory is billed for A2 after her and never pays. Once the
    deadline and the margin passed, the server releases A2 (so it has looked at A1 too) but not A1: the broker said it
    authorised A1's payment. Bob, who wants A1, is refused ``seat_sold`` before he pays anything. Alice recovers
    (the broker finishes the payment it authorised before the deadline) and gets her ticket: the seat sold once, nobody
    paid without a ticket. Before, A1 was released with A2, Bob bought it, and Alice, debited, got ``409
    seat_resold``."""
    net = deadline_net(tmp_path, ("alice", "mallory", "bob"), SEATS)

    async def balance(who: str) -> int:
        got = await net.ask(who, pa.BALANCE, pa.BALANCES)
        return next(a["balance"] for a in got["accounts"] if a["currency"] == "EUR")

    async def seat_free(c: httpx.AsyncClient, seat: str) -> bool:
        return bool((await c.get(f"/events/{EVENT}", params={"seat": seat})).json()["seats"][0]["free"])

    def common(who: str) -> tuple[str, ...]:
        return ("--socket", str(net.hosts[who].socket), "--ca-cert", str(tmp_path / "ca.pem"), "--out",
                str(tmp_path / f"{who}-bought"))  # fmt: skip

    async def buy(who: str, broker: str, seat: str, speed: str) -> dict[str, Any]:
        rc, got = await speed_cli("buy", *common(who), "--vendor", speed, "--broker", broker, "--broker-cert",
                                  str(tmp_path / "broker.pem"), "--product", f"{EVENT}/{seat}", "--aggressive",
                                  "--limit", PRICE)  # fmt: skip
        assert rc != 0, got
        return got

    async def go() -> None:
        async with net.in_process() as server, httpx.AsyncClient(base_url=net.url) as c:
            await net.setup()
            assert server.store is not None
            speed = (await c.get("/")).json()["speed"]
            full = {who: await balance(who) for who in ("alice", "bob")}
            async with relay_that_loses_s3(net.broker_addr) as (relay, lost):
                await buy("alice", relay, "A1", speed)
            (alice_poid,) = lost
            assert await balance("alice") < full["alice"]  # her purse debited on the broker's S2
            await buy("mallory", "127.0.0.1:1", "A2", speed)

            async with asyncio.timeout(60):  # the deadlines, the margin, and the server's look at both sales
                while not await seat_free(c, "A2"):
                    await asyncio.sleep(0.2)
            assert not await seat_free(c, "A1")  # the broker authorised Alice's payment: her seat is held
            assert sales.ticket(server.store, alice_poid).state == "sold"  # type: ignore[union-attr]

            async with await net.wallet("bob") as w:  # Bob wants A1: refused before he pays anything
                with pytest.raises(PurchaseError) as sold:
                    await buy_ticket(net.url, EVENT, "A1", card=w, app_socket=net.hosts["bob"].socket,
                                     broker=net.broker_addr, broker_cert=net.broker_cert, roots=net.roots)  # fmt: skip
            assert sold.value.reason == "seat_sold", sold.value
            assert await balance("bob") == full["bob"]

            # Alice's program is back: the broker finishes the payment it authorised before the deadline
            rc, got = await speed_cli("recover", *common("alice"), "--broker", net.broker_addr)
            assert rc == 0 and len(got["finished"]) == 1 and got["dropped"] == [], got
            (rec,) = Journal(tmp_path / "alice-bought" / JOURNAL).all()
            assert rec.poid == alice_poid and rec.receipt is not None
            ticket = await receive_ticket(net.url, alice_poid, net.hosts["alice"].socket, receipt=rec.receipt)
            async with asyncio.timeout(30):
                while (await net.tokens("alice")).get(ticket.oid) != "enabled":
                    await asyncio.sleep(0.05)
            assert full["alice"] - await balance("alice") == sm.parse_price(PRICE).amount  # debited once
            with server.store.transaction() as txn:
                a1 = [t for k, v in txn.scan(sales.TICKETS) if (t := sales.Ticket.decode(k, v)).seat == "A1"]
            assert [(t.poid, t.state) for t in a1] == [(alice_poid, "delivered")]  # A1 sold once, to Alice
            assert sales.seat_sale(server.store, EVENT, "A1")[0] == alice_poid

    asyncio.run(go())
