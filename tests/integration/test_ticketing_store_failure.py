"""A ticketing server whose store cannot be written (a full disk), as a buyer who has paid meets it: real processes
(`cardnet ticketing run` with its device's host and SPEED vendor in it, the broker, the buyer's host), a real fault.

The fault is the kernel's: the test lowers the running ticketing server's soft ``RLIMIT_FSIZE`` to 1 byte with
``prlimit`` (every write the process makes to a file fails, as SQLite's writes to a full disk fail), then raises it
again. The buyer paid the seat before; asking for the ticket meanwhile is refused ``503`` ``store_failed`` at once,
in words (before: ``500`` "the server failed on this request; it is logged", and the log could not be written
either); the server keeps running, and once mended the same request brings the ticket, once, to the buyer's card.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import httpx
import pytest
from diskfull import disk_full

from cardnet.bench.ticketnet import EVENT, PRICE, TicketNet
from cardnet.services.speed.customer import Customer
from cardnet.services.ticketing.buyer import receive_ticket
from cardnet.services.ticketing.config import parse_price
from cardnet.transport.http_upgrade import UpgradeRefused

WAIT_S = 30.0  # a bound far above what must happen; nothing is measured


def test_a_paid_ticket_asked_of_a_server_that_cannot_write_its_store_is_refused_in_words_and_comes_after(
    tmp_path: Path,
) -> None:
    net = TicketNet(tmp_path, ("bob",), ["A1"])
    with net:
        net.start_broker()
        asyncio.run(_run(net))


async def _run(net: TicketNet) -> None:
    await net.setup()
    tickets = net.hosts["tickets"]
    assert tickets.proc is not None
    pid = tickets.proc.pid
    async with httpx.AsyncClient(base_url=net.url) as c:
        info = (await c.get("/")).json()
    price = parse_price(PRICE, "price")
    bob = net.hosts["bob"].socket
    async with await net.wallet("bob") as w:
        bought = await Customer(w, b"", net.roots).buy(
            str(info["speed"]), net.broker_addr, [f"{EVENT}/A1"], broker_cert=net.broker_cert, mode="aggressive",
            vendor_cert=base64.b64decode(info["vendor_cert"]), price=price, limit=price,
        )  # fmt: skip
        with disk_full(pid):  # the server's "disk" fails
            with pytest.raises(UpgradeRefused) as refused:
                await receive_ticket(net.url, bought.poid, bob, receipt=bought.receipt, timeout_s=WAIT_S)
            assert refused.value.status == 503 and refused.value.error == "store_failed", refused.value
            said = str(refused.value)
            assert "cannot write its store" in said and "nothing of this request was kept" in said, said
            assert json.loads(refused.value.body)["error"] == "store_failed"
            assert tickets.running
        got = await receive_ticket(net.url, bought.poid, bob, receipt=bought.receipt, timeout_s=WAIT_S)
        assert [v.oid for v in await w.vouchers()] == [got.oid]  # the ticket on bob's card, once
    assert "paid (seat bench/A1)" in tickets.log() and "delivered" in tickets.log()
