"""The ticketing server's upgraded connections (``Upgrade: TRN``) bound what one message may hold.

A buyer who paid a seat and never lets its ticket arrive (it relays nothing) can open an upgraded connection again
and again, up to the HTTP port's ``max_per_peer``. A ticket's delivery needs messages of a few hundred bytes; what
an upgraded connection takes beyond ``UPGRADED_MAX_FRAME`` is read past (nothing of it is held) and its sender told.
The ticketing server, its device's host, the broker and the buyers' hosts run in this process
(:meth:`cardnet.bench.ticketnet.TicketNet.in_process`); the attacker speaks frames on real sockets.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import httpx

from cardnet.bench.ticketnet import EVENT, PRICE, TicketNet
from cardnet.host import mtypes as hm
from cardnet.services.speed.customer import Customer
from cardnet.services.ticketing.buyer import buy_ticket
from cardnet.services.ticketing.config import parse_price
from cardnet.services.ticketing.server import UPGRADED_MAX_FRAME
from cardnet.transport.http_upgrade import dial_trn
from cardnet.wire import Message, Uid

SEATS = ["A1", "A2"]
BIG = 4 * 1024 * 1024  # bytes of the attacker's message: far above what a delivery needs


def test_a_huge_message_on_an_upgraded_connection_is_read_past_and_its_sender_told(tmp_path: Path) -> None:
    """Mallory pays A1, then opens the delivery's upgraded connection herself and sends a 4 MiB message from her card
    to the server's device. The server reads past it and answers ``host.undeliverable`` (too large); the connection
    goes on, and Bob buys A2 meanwhile. Before, an upgraded connection took messages up to the host's 16 MiB frame
    limit, each held whole in memory: 64 such connections from one address held a gigabyte."""
    net = TicketNet(tmp_path, ("mallory", "bob"), SEATS)

    async def go() -> None:
        async with net.in_process() as server:
            await net.setup()
            async with httpx.AsyncClient(base_url=net.url) as c:
                info = (await c.get("/")).json()
            async with await net.wallet("mallory") as w:
                paid = await Customer(w, b"", net.roots).buy(
                    str(info["speed"]), net.broker_addr, [f"{EVENT}/A1"], broker_cert=net.broker_cert,
                    mode="aggressive", vendor_cert=base64.b64decode(info["vendor_cert"]),
                    price=parse_price(PRICE, "price"),
                )  # fmt: skip
            host, port = server.http_address
            body = json.dumps({"receipt": base64.b64encode(paid.receipt).decode()}).encode()
            up = await dial_trn(host, port, "POST", f"/tickets/{paid.poid.hex()}", body=body,
                                headers=[("Content-Type", "application/json")])  # fmt: skip
            try:
                device = Uid(bytes.fromhex(up.headers["trn-device"]), 0)
                mallory = net.uids["mallory"]
                await up.conn.send(Message(mallory, device, hm.ROUTE.code, bytes(BIG)))
                async with asyncio.timeout(20):
                    while (msg := await up.conn.recv()).mtype != hm.UNDELIVERABLE.code:
                        pass
                why = hm.UNDELIVERABLE.parse(msg)["reason"]
                assert "too large" in why and str(UPGRADED_MAX_FRAME) in why, why
                async with await net.wallet("bob") as w:
                    how = {"card": w, "app_socket": net.hosts["bob"].socket, "broker": net.broker_addr,
                           "broker_cert": net.broker_cert, "roots": net.roots}  # fmt: skip
                    await buy_ticket(net.url, EVENT, "A2", **how)
            finally:
                await up.conn.aclose()

    asyncio.run(go())
