"""The web wallet's shop (web/shop.py) reading a ticketing server's events and free seats, over real sockets.

The ticketing server, its device's host, the broker and a buyer's host run in this process
(:meth:`cardnet.bench.ticketnet.TicketNet.in_process`); :class:`~cardnet.web.shop.Shop` is what ``POST /api/shop``
of ``cardnet wallet ui`` answers with."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cardnet.bench.ticketnet import TicketNet
from cardnet.services.ticketing.server import SEAT_PAGE
from cardnet.transport.http import HttpError
from cardnet.web.shop import Shop


def test_the_shop_lists_the_free_seats_past_the_first_page_of_a_large_event(tmp_path: Path) -> None:
    """An event of SEAT_PAGE + 1 seats: the server sends its seat map a page at a time (``next``, ``?after=``). The
    shop read the first page only, so seat S1000 was never offered (and an event whose first page is sold out showed
    'sold out' with seats free after it). It reads on, within its bounds, and says how many are free in all."""
    seats = [f"S{i}" for i in range(SEAT_PAGE + 1)]
    net = TicketNet(tmp_path, ("b0",), seats)

    async def go() -> None:
        async with net.in_process():
            (event,) = (await Shop(None, None).events(net.url))["events"]
            assert event["free"] == seats and event["free_count"] == SEAT_PAGE + 1 and event["more"] is False
            (event,) = (await Shop(None, None, seat_pages=1).events(net.url))["events"]  # the bound on pages read
            assert event["free"] == seats[:SEAT_PAGE] and event["free_count"] == SEAT_PAGE + 1 and event["more"]
            (event,) = (await Shop(None, None, max_free=3).events(net.url))["events"]  # the bound on seats listed
            assert event["free"] == seats[:3] and event["more"] is True

    asyncio.run(go())


def test_the_shop_at_a_port_that_speaks_no_http_says_it_is_no_ticketing_server(tmp_path: Path) -> None:
    """A host's TCP port (it closes the connection on an HTTP request) and a program that answers with bytes that are
    not HTTP, given as the ticketing server's address: the page is told the address does not answer as a ticketing
    server and to check it, not h11's words ('can't handle event type ConnectionClosed when role=SERVER and
    state=SEND_RESPONSE', 'illegal request line')."""
    net = TicketNet(tmp_path, ("b0",), ["A1"])

    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")  # another protocol's greeting
        await reader.read(1024)
        writer.close()

    async def go() -> None:
        async with net.in_process(), await asyncio.start_server(banner, "127.0.0.1", 0) as other:
            other_port = other.sockets[0].getsockname()[1]
            for port, reason in ((net.ports["b0"], "unreachable"), (other_port, "not_ticketing")):
                with pytest.raises(HttpError) as info:
                    await Shop(None, None).events(f"http://127.0.0.1:{port}")
                said = str(info.value)
                assert info.value.status == 502 and info.value.reason == reason, said
                assert f"http://127.0.0.1:{port} does not answer as a ticketing server" in said, said
                assert "check the address" in said and "h11" not in said and "event type" not in said, said

    asyncio.run(go())
