"""A card that is billed for seats and never pays holds at most ``max_unpaid_per_card`` of them.

The vendor claims a seat for the sale it bills (first wins), and a SPEED bill can be paid at any time, so a seat
stays with a billed sale until it is paid. Without a bound one card could hold every seat of an event for nothing.
The ticketing server, its device's host, the broker and the buyers' hosts run in this process
(:meth:`cardnet.bench.ticketnet.TicketNet.in_process`: the same configs and stores as the processes); the
attacker is a real SPEED client that takes the bills and never pays (its broker address leads nowhere).
"""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import httpx
import pytest

from cardnet.bench.procs import free_port
from cardnet.bench.ticketnet import EVENT, PRICE, TicketNet
from cardnet.services.speed.customer import Customer, PurchaseError
from cardnet.services.ticketing.buyer import buy_ticket
from cardnet.services.ticketing.config import parse_price

SEATS = ["A1", "A2", "A3", "B1", "B2", "B3"]
MAX_UNPAID = 2


def test_a_card_that_never_pays_holds_at_most_max_unpaid_per_card_seats(tmp_path: Path) -> None:
    """Mallory's card is billed for A1 and A2 and pays neither; her third request is refused ``unpaid_sales`` before
    any bill, and A3 stays free. Bob, who pays each purchase, buys A3, B1 and B2 (more than the bound: a paid sale
    no longer counts). Before, the vendor billed Mallory a seat a request, as many as she asked for."""
    net = TicketNet(tmp_path, ("mallory", "bob"), SEATS)
    cfg = net.hosts["tickets"].config
    cfg.write_text(
        cfg.read_text().replace("transfer_timeout_s", f"max_unpaid_per_card = {MAX_UNPAID}\ntransfer_timeout_s")
    )

    async def go() -> None:
        async with net.in_process():
            await net.setup()
            async with httpx.AsyncClient(base_url=net.url) as c:
                info = (await c.get("/")).json()
            nowhere = f"127.0.0.1:{free_port()}"  # the payment never reaches a broker
            async with await net.wallet("mallory") as w:
                mallory = Customer(w, b"", net.roots)

                async def bill(seat: str) -> None:
                    await mallory.buy(
                        str(info["speed"]), nowhere, [f"{EVENT}/{seat}"], broker_cert=net.broker_cert,
                        mode="aggressive", vendor_cert=base64.b64decode(info["vendor_cert"]),
                        price=parse_price(PRICE, "price"),
                    )  # fmt: skip

                for seat in ("A1", "A2"):
                    with pytest.raises(PurchaseError) as unpaid:
                        await bill(seat)
                    assert unpaid.value.reason != "unpaid_sales", unpaid.value
                with pytest.raises(PurchaseError) as refused:
                    await bill("A3")
                assert refused.value.reason == "unpaid_sales", refused.value
                assert f"holds {MAX_UNPAID} seats it was billed for and has not paid" in str(refused.value)
            async with httpx.AsyncClient(base_url=net.url) as c:
                seats = {s["seat"]: s["free"] for s in (await c.get(f"/events/{EVENT}")).json()["seats"]}
            assert seats == {"A1": False, "A2": False, "A3": True, "B1": True, "B2": True, "B3": True}
            async with await net.wallet("bob") as w:
                how = {"card": w, "app_socket": net.hosts["bob"].socket, "broker": net.broker_addr,
                       "broker_cert": net.broker_cert, "roots": net.roots}  # fmt: skip
                for seat in ("A3", "B1", "B2"):
                    await buy_ticket(net.url, EVENT, seat, **how)

    asyncio.run(go())
