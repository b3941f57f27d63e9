"""``GET /events/{event}?seat=S``: one seat instead of the seat map (what the buyer's library asks on every purchase).

The ticketing server, its device's host, the broker and a buyer's host run in this process
(:meth:`cardnet.bench.ticketnet.TicketNet.in_process`: the same configs and stores as the processes)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from cardnet.bench.ticketnet import EVENT, TicketNet
from cardnet.services.ticketing.buyer import TicketError, buy_ticket
from cardnet.services.ticketing.server import SEAT_PAGE

SEATS = ["A1", "A2", "B1", "B2"]


def test_one_seat_is_answered_alone_and_a_purchase_asks_for_no_more(tmp_path: Path) -> None:
    net = TicketNet(tmp_path, ("b0",), SEATS)

    async def go() -> None:
        async with net.in_process():
            await net.setup()
            async with httpx.AsyncClient(base_url=net.url) as c:
                whole = (await c.get(f"/events/{EVENT}")).json()
                one = (await c.get(f"/events/{EVENT}", params={"seat": "B1"})).json()
                assert [s["seat"] for s in whole["seats"]] == SEATS and whole["free"] == 4
                assert one["seats"] == [{"seat": "B1", "product": f"{EVENT}/B1", "free": True}] and one["free"] == 4
                assert one | {"seats": []} == whole | {"seats": []}  # the rest of the page is the same
                for bad in ("Z9", ""):
                    r = await c.get(f"/events/{EVENT}", params={"seat": bad})
                    assert r.status_code == 404 and r.json()["error"] == "no_seat", bad
                async with await net.wallet("b0") as w:
                    how = {"card": w, "app_socket": net.hosts["b0"].socket, "broker": net.broker_addr,
                           "broker_cert": net.broker_cert, "roots": net.roots}  # fmt: skip
                    with pytest.raises(TicketError) as info:
                        await buy_ticket(net.url, EVENT, "Z9", **how)
                    assert info.value.reason == "no_seat"
                    await buy_ticket(net.url, EVENT, "B1", **how)
                one = (await c.get(f"/events/{EVENT}", params={"seat": "B1"})).json()
                assert one["seats"][0]["free"] is False and one["free"] == 3
                whole = (await c.get(f"/events/{EVENT}")).json()  # the seat's sale read alone, the sold ones counted
                assert one | {"seats": []} == whole | {"seats": []} and whole["free"] == 3
                assert (await c.get(f"/events/{EVENT}", params={"seat": "A1"})).json()["seats"][0]["free"] is True

    asyncio.run(go())


def test_a_large_events_seat_map_comes_a_page_at_a_time(tmp_path: Path) -> None:
    """An event of SEAT_PAGE + 1 seats: ``GET /events/{event}`` answers its first SEAT_PAGE seats and ``next``, and
    ``?after=<next>`` the last one. Before, every request built the whole map: at the 100,000 seats a config allows,
    7.6 MB of JSON and 0.7 s of the server's event loop a request, so one client asking again and again stalled every
    purchase, and 64 connections that did not read their answers held 500 MB."""
    seats = [f"S{i}" for i in range(SEAT_PAGE + 1)]
    net = TicketNet(tmp_path, ("b0",), seats)

    async def go() -> None:
        async with net.in_process(), httpx.AsyncClient(base_url=net.url) as c:
            first = (await c.get(f"/events/{EVENT}")).json()
            assert [s["seat"] for s in first["seats"]] == seats[:SEAT_PAGE] and first["next"] == seats[-2]
            assert first["free"] == SEAT_PAGE + 1
            last = (await c.get(f"/events/{EVENT}", params={"after": first["next"]})).json()
            assert last["seats"] == [{"seat": seats[-1], "product": f"{EVENT}/{seats[-1]}", "free": True}]
            assert "next" not in last and last["free"] == SEAT_PAGE + 1
            r = await c.get(f"/events/{EVENT}", params={"after": "Z9"})
            assert r.status_code == 404 and r.json()["error"] == "no_seat"
            page = await c.get(f"/events/{EVENT}", headers={"Accept": "text/html"})
            assert f'href="/events/{EVENT}?after={seats[-2]}">more seats</a>' in page.text

    asyncio.run(go())
