"""A new sale starts its transfer without asking the device to recover: ``trn.recover`` re-signs and resends every
transfer under way on the device (one signature, one session record and one commit each, up to one per buyer
buying at once), which only a retry needs. The ticketing server, its device's host, the broker and the buyers'
hosts run in this process (:meth:`cardnet.bench.ticketnet.TicketNet.in_process`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from cutrelay import cut_relay

from cardnet.bench.ticketnet import EVENT, TicketNet
from cardnet.crypto import profile
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed.customer import Customer
from cardnet.services.ticketing import sales
from cardnet.services.ticketing.buyer import (
    buy_ticket,
    get_json,
    receive_ticket,
)

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

            async def counted(oid: bytes | None = None) -> Any:
                recovers[0] += 1
                return await recover(oid)

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
                relayed = await receive_ticket(net.url, b.poid, net.hosts[name].socket, receipt=b.receipt, timeout_s=30)
                assert relayed.oid == b.oid and recovers[0] == 1
                assert sales.ticket(server.store, b.poid).state == "delivered"  # type: ignore[union-attr]

    asyncio.run(go())


def test_a_retried_delivery_re_signs_its_own_transfer_alone(tmp_path: Path) -> None:
    """Three buyers' deliveries drop after the commit reached their cards (the device's card holds three transfers
    at the commit, ``disabled``); one buyer retries. The device re-signs and resends that buyer's commit alone: no
    other transfer's movement statement is signed during the retry. Before, the retry's ``trn.recover`` re-signed
    and resent every transfer under way on the device (one signature, session record and commit each; the other
    buyers' connections are gone, so each was for nothing). The device's host runs no recovery timer here (``ticks =
    {}``), so what is signed is the retry's doing."""
    buyers = ("b0", "b1", "b2")
    net = TicketNet(tmp_path, buyers, SEATS)
    device = tmp_path / "device.toml"
    device.write_text(device.read_text().replace('applets = ["trn"]', 'applets = ["trn"]\nticks = {}'))

    async def go() -> None:
        async with net.in_process() as server:
            await net.setup()
            assert server.store is not None
            speed = str((await get_json(net.url, "/"))["speed"])
            paid: dict[str, tuple[bytes, bytes]] = {}
            for name, seat in zip(buyers, SEATS, strict=False):
                async with await net.wallet(name) as w:
                    got = await Customer(w, b"", net.roots).buy(
                        speed, net.broker_addr, [f"{EVENT}/{seat}"], broker_cert=net.broker_cert, mode="aggressive",
                        vendor_cert=net.vendor_cert, price=sm.Price("EUR", 100),
                    )  # fmt: skip
                paid[name] = (got.poid, got.receipt)
                # the commit reached the card, its answer lost:
                await cut_relay(net.url, net.hosts[name].socket, got.poid, got.receipt, 4)
            for name, (poid, _) in paid.items():
                v = await server.wallet.voucher(sales.ticket_oid(poid))  # type: ignore[union-attr]
                assert v is not None and v.status == "disabled" and v.peer == net.uids[name], (name, v)
            signed: list[bytes] = []
            sign = profile.sign

            def noted(key: profile.PrivateKey, data: bytes) -> bytes:
                signed.append(data)
                return sign(key, data)

            profile.sign = noted  # type: ignore[assignment]
            try:
                poid, receipt = paid["b0"]
                await receive_ticket(net.url, poid, net.hosts["b0"].socket, receipt=receipt, timeout_s=30)
            finally:
                profile.sign = sign  # type: ignore[assignment]
            assert sales.ticket(server.store, poid).state == "delivered"  # type: ignore[union-attr]
            mine = sales.ticket_oid(poid)
            assert any(mine in data for data in signed)  # its commit, re-signed
            for name in ("b1", "b2"):
                other = sales.ticket_oid(paid[name][0])
                assert not any(other in data for data in signed), f"{name}'s transfer was re-signed by b0's retry"
                v = await server.wallet.voucher(other)  # type: ignore[union-attr]
                assert v is not None and v.status == "disabled"  # still waiting for its own buyer's retry

    asyncio.run(go())
