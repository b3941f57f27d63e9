"""A new sale starts its transfer without asking the device to recover: ``trn.recover`` re-signs and resends every
transfer under way on the device (one signature, one session record and one commit each, up to one per buyer
buying at once), which only a retry needs. The ticketing server, its device's host, the broker and the buyers'
hosts run in this process (:meth:`cardnet.bench.ticketnet.TicketNet.in_process`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from cardnet.bench.ticketnet import EVENT, TicketNet
from cardnet.services.ticketing import sales
from cardnet.services.ticketing.buyer import buy_ticket, receive_ticket

SEATS = ["A1", "A2", "B1", "B2"]


def test_new_sales_send_their_tickets_without_a_recovery_and_a_retry_recovers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    net = TicketNet(tmp_path, ("b0", "b1"), SEATS)

    async def go() -> None:
        async with net.in_process() as server:
            await net.setup()
            assert server.wallet is not None and server.store is not None
            recovers = [0]
            recover = server.wallet.recover

            async def counted() -> Any:
                recovers[0] += 1
                return await recover()

            monkeypatch.setattr(server.wallet, "recover", counted)
            bought = []
            async with await net.wallet("b0") as w0, await net.wallet("b1") as w1:
                for w, name, seats in ((w0, "b0", ("A1", "A2")), (w1, "b1", ("B1", "B2"))):
                    how = {"card": w, "app_socket": net.hosts[name].socket, "broker": net.broker_addr,
                           "broker_cert": net.broker_cert, "roots": net.roots}  # fmt: skip
                    bought += [(name, await buy_ticket(net.url, EVENT, s, **how)) for s in seats]
                assert recovers[0] == 0
                for name, b in bought:
                    t = sales.ticket(server.store, b.poid)
                    assert t is not None and t.state == "delivered", t
                    assert b.oid in await net.tokens(name)
                # a retry of a sale whose ticket is recorded sent (a connection dropped mid-transfer): it recovers
                name, b = bought[0]
                t = sales.ticket(server.store, b.poid)
                assert t is not None
                with server.store.transaction() as txn:
                    txn.put(sales.TICKETS, b.poid, sales.Ticket(t.poid, t.event, t.seat, t.card, "sent").encode())
                relayed = await receive_ticket(net.url, b.poid, net.hosts[name].socket, timeout_s=30)
                assert relayed.oid == b.oid and recovers[0] == 1
                assert sales.ticket(server.store, b.poid).state == "delivered"  # type: ignore[union-attr]

    asyncio.run(go())
