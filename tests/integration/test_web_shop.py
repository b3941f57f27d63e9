"""The web wallet's shop (web/shop.py) reading a ticketing server's events and free seats, over real sockets.

The ticketing server, its device's host, the broker and a buyer's host run in this process
(:meth:`cardnet.bench.ticketnet.TicketNet.in_process`); :class:`~cardnet.web.shop.Shop` is what ``POST /api/shop``
of ``cardnet wallet ui`` answers with, and a :class:`~cardnet.web.wallet.WalletWeb` (its page in headless Chromium)
buys through it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import async_playwright, expect
from webwallet import log_in

from cardnet.bench.ticketnet import EVENT, TicketNet
from cardnet.cli import wallet_config
from cardnet.crypto import pki
from cardnet.services.ticketing.server import SEAT_PAGE
from cardnet.services.wallet import Wallet
from cardnet.transport.http import HttpError
from cardnet.web.shop import Shop
from cardnet.web.wallet import WalletWeb

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 20_000


def _write_config(config: Path, net: TicketNet, broker: str) -> None:
    """The buyer's wallet config at ``config`` (what `cardnet wallet init` would write): ``broker`` and its
    certificate, the CA's, and the purchases folder beside it."""
    folder = config.parent
    (folder / "broker.pem").write_bytes(pki.chain_to_pem([pki.cert_from_der(net.broker_cert)]))
    (folder / "ca.pem").write_bytes(pki.chain_to_pem([pki.cert_from_der(net.roots[0])]))
    config.write_text(f'broker = "{broker}"\nbroker_cert = "broker.pem"\nca_cert = "ca.pem"\n'
                      f'purchases = "{folder / "purchases"}"\n')  # fmt: skip


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


def test_a_paid_ticket_whose_delivery_fails_is_answered_502_with_its_sale_and_the_page_finishes_it(
    tmp_path: Path,
) -> None:
    """A buyer pays through the page, but the ticket cannot be passed on: the socket the page relays the ticketing
    server's delivery to (the host's, here a link to it) is gone. The page is answered 502 ``not_delivered`` with the
    sale's PaymentOrderID and how to finish; in Chromium it fills the sale into Finish the delivery, which (the socket
    back) brings the ticket to the card. Before, ``_ticketing`` turned ``buy_ticket``'s ``not_delivered`` into a 409
    without the sale, so the branch that names it never ran and the page offered no way to finish. The sale stays
    listed under way, with its own Finish the delivery, after the page is reloaded, until the card holds the
    ticket (before: nowhere once the message was gone). A sale this
    wallet's purchases do not hold is refused ``unknown_sale`` (before: the server's ``unpaid``, with 'press
    Recover', which has nothing to recover)."""
    net = TicketNet(tmp_path, ("b0",), ["A1", "A2"])
    relay = tmp_path / "relay.sock"  # the socket the page relays deliveries to: a link to b0's host's
    config = tmp_path / "b0-wallet.toml"

    async def open_wallet() -> Wallet:
        return await net.wallet("b0")

    async def go() -> None:
        async with net.in_process():
            await net.setup()
            _write_config(config, net, net.broker_addr)
            web = WalletWeb(open_wallet, wallet_config.load(config), app_socket=str(relay))
            served = await web.start("127.0.0.1", 0)
            try:
                async with httpx.AsyncClient(base_url=served.url, timeout=120) as client:
                    await log_in(client, served)
                    r = await client.post("/api/buy", json={"url": net.url, "event": EVENT, "seat": "A1"})
                    got = r.json()
                    assert r.status_code == 502 and got["error"] == "not_delivered", r.text
                    poid = got["poid"]
                    assert isinstance(poid, str) and len(bytes.fromhex(poid)) > 0, got
                    assert f"paid 1.00 EUR (sale {poid})" in got["message"], got
                    assert "press Finish the delivery" in got["message"], got
                    assert f"cardnet wallet buy {net.url} --poid {poid}" in got["message"], got
                    row = await _delivery_row(client, poid)  # listed under way (a reload of the page keeps it)
                    assert row is not None and row["url"] == net.url and "did not arrive" in row["state"], row
                    other = "ab" * 40  # a sale this wallet never bought: said so, the server not asked
                    r = await client.post("/api/deliver", json={"url": net.url, "poid": other})
                    got = r.json()
                    assert r.status_code == 409 and got["error"] == "unknown_sale", r.text
                    assert "hold no sale abababababababab" in got["message"] and "Recover" not in got["message"], r.text
                    relay.symlink_to(net.hosts["b0"].socket)  # the socket is back: Finish the delivery brings it
                    r = await client.post("/api/deliver", json={"url": net.url, "poid": poid})
                    assert r.status_code == 200 and "is on its way to your card" in r.json()["message"], r.text
                    oid = bytes.fromhex(r.json()["oid"])
                    async with asyncio.timeout(30):
                        while (await net.tokens("b0")).get(oid) != "enabled":
                            await asyncio.sleep(0.05)
                        while await _delivery_row(client, poid) is not None:  # the card holds it: no longer listed
                            await asyncio.sleep(0.2)
                    relay.unlink()  # and in the browser (a tab of its own: a new login link), A2 failing likewise
                    login = (await client.post("/api/link", json={})).json()["login"]
                    await _the_page_offers_to_finish(login, net.url, relay, net.hosts["b0"].socket)
            finally:
                await web.aclose()

    asyncio.run(go())


async def _delivery_row(client: httpx.AsyncClient, poid: str) -> dict[str, Any] | None:
    """The row of sale ``poid``'s delivery in the page's list under way (``/api/state``), or None."""
    state = (await client.get("/api/state")).json()
    return next((r for r in state["under_way"] if r["what"] == "ticket delivery" and r["id"] == poid), None)


async def _the_page_offers_to_finish(login_url: str, url: str, relay: Path, socket: str) -> None:
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM)
        try:
            page = await browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            expect.set_options(timeout=TIMEOUT_MS)
            await page.goto(login_url)
            await expect(page.locator("#link")).to_have_text("live")
            await page.fill("#shop-url", url)
            await page.click("#shop-button")
            await expect(page.locator("#buy-seat option")).to_have_text(["A2"])
            await page.click("#buy-button")
            await expect(page.locator("#message.error")).to_contain_text("press Finish the delivery")
            await expect(page.locator("#deliver-form")).to_be_visible()
            poid = await page.locator("#deliver-poid").input_value()
            assert len(bytes.fromhex(poid)) > 0 and poid in await page.locator("#message").inner_text()
            await page.reload()  # the message and the filled form are gone: the sale is still listed under way
            await expect(page.locator("#link")).to_have_text("live")
            row = page.locator(f'#under-way tr[data-id="{poid}"]')
            await expect(row).to_contain_text("ticket delivery")
            relay.symlink_to(socket)
            await row.get_by_role("button", name="Finish the delivery").click()
            await expect(page.locator("#message.ok")).to_contain_text("is on its way to your card")
            await expect(row).to_have_count(0)  # once the card holds the ticket
        finally:
            await browser.close()


def test_a_purchase_whose_broker_does_not_answer_names_it_and_what_pays_it(tmp_path: Path) -> None:
    """The page buys a seat while the wallet config's broker is an address where nothing answers: 502 unreachable
    naming the broker, its address and where it came from (the wallet config), and that Recover pays the delivered
    purchase once the broker answers there and brings the ticket, in the words of ``cardnet wallet buy``
    (:func:`cardnet.cli.wallet_buy.unreachable_hints`, shared); the purchase is listed under way. Before: 'the
    purchase did not happen: ...; the broker does not answer: if your card paid, Recover finishes the purchase once
    it is back' (the broker's address and the config not named)."""
    from cardnet.bench.procs import free_port

    net = TicketNet(tmp_path, ("b0",), ["A1"])
    config = tmp_path / "b0-wallet.toml"
    nowhere = f"127.0.0.1:{free_port()}"

    async def open_wallet() -> Wallet:
        return await net.wallet("b0")

    async def go() -> None:
        async with net.in_process():
            await net.setup()
            _write_config(config, net, nowhere)
            web = WalletWeb(open_wallet, wallet_config.load(config), app_socket=net.hosts["b0"].socket)
            served = await web.start("127.0.0.1", 0)
            try:
                async with httpx.AsyncClient(base_url=served.url, timeout=120) as client:
                    await log_in(client, served)
                    r = await client.post("/api/buy", json={"url": net.url, "event": EVENT, "seat": "A1"})
                    got = r.json()
                    assert r.status_code == 502 and got["error"] == "unreachable", r.text
                    assert got["message"].startswith(f"cannot reach the broker at {nowhere}"), r.text
                    hint = (f"check that the broker runs at {nowhere} (broker in {config}); if the ticketing server "
                            "delivered, the purchase waits in your wallet (the page lists it under way): Recover "
                            "pays it once the broker answers there and brings the ticket")  # fmt: skip
                    assert hint in got["message"], r.text
                    assert "did not happen" not in got["message"], r.text
                    state = (await client.get("/api/state")).json()
                    assert [u["what"] for u in state["under_way"]] == ["purchase"], state
            finally:
                await web.aclose()

    asyncio.run(go())


def test_the_pages_recover_brings_a_paid_ticket_whose_delivery_was_cut(tmp_path: Path) -> None:
    """A seat paid through the page whose ticket could not be passed on (the relay socket gone: 502 not_delivered);
    a page started again lists it under way (from the wallet's purchases, as `cardnet wallet show`'s tickets_owed;
    before: only the run that bought it did); once the socket is back, the page's Recover fetches the owed ticket
    from its server (as `cardnet wallet recover` does since 48ed2dc: services.ticketing.buyer.deliver_owed) and the
    card holds it. Before: the page's Recover finished the card's transfers and the payments only, said 'nothing
    was left to finish', and the ticket stayed at the server (while the page's hints say Recover brings it)."""
    net = TicketNet(tmp_path, ("b0",), ["A1"])
    relay = tmp_path / "relay.sock"
    config = tmp_path / "b0-wallet.toml"

    async def open_wallet() -> Wallet:
        return await net.wallet("b0")

    async def go() -> None:
        async with net.in_process():
            await net.setup()
            _write_config(config, net, net.broker_addr)
            web = WalletWeb(open_wallet, wallet_config.load(config), app_socket=str(relay))
            served = await web.start("127.0.0.1", 0)
            try:
                async with httpx.AsyncClient(base_url=served.url, timeout=120) as client:
                    await log_in(client, served)
                    r = await client.post("/api/buy", json={"url": net.url, "event": EVENT, "seat": "A1"})
                    assert r.status_code == 502 and r.json()["error"] == "not_delivered", r.text
                    poid = r.json()["poid"]
            finally:
                await web.aclose()
            web = WalletWeb(open_wallet, wallet_config.load(config), app_socket=str(relay))  # `wallet ui` again
            served = await web.start("127.0.0.1", 0)
            try:
                async with httpx.AsyncClient(base_url=served.url, timeout=120) as client:
                    await log_in(client, served)
                    row = await _delivery_row(client, poid)  # the owed ticket, from the wallet's purchases
                    assert row is not None and row["url"] == net.url and "so does Recover" in row["state"], row
                    relay.symlink_to(net.hosts["b0"].socket)  # the host's socket is back
                    r = await client.post("/api/recover", json={})
                    got = r.json()
                    assert r.status_code == 200, r.text
                    (row,) = [x for x in got["recovered"] if x["what"] == "ticket delivery"]
                    assert row["id"] == poid and row["finished"] and "sent to your card" in row["outcome"], got
                    oid = bytes.fromhex(row["outcome"].split("ticket ")[-1].split()[0])
                    async with asyncio.timeout(30):
                        while (await net.tokens("b0")).get(oid) != "enabled":
                            await asyncio.sleep(0.1)
                    assert await _delivery_row(client, poid) is None  # delivered: no longer under way
            finally:
                await web.aclose()

    asyncio.run(go())


def test_a_load_whose_broker_does_not_answer_names_it_and_its_address(tmp_path: Path) -> None:
    """The page loads the e-purse while the wallet config's broker is an address where nothing answers: 502
    unreachable in the words of ``cardnet wallet load`` (:func:`cardnet.cli.wallet_pay.load_unreachable_hint`,
    shared): the broker's address, that it comes from the wallet config, and that Recover credits the load once it
    answers. Before: 'is the broker running? a load it did not answer is credited by Recover once it is back'
    (no address, nor where it came from)."""
    from cardnet.bench.procs import free_port

    net = TicketNet(tmp_path, ("b0",), ["A1"])
    config = tmp_path / "b0-wallet.toml"
    nowhere = f"127.0.0.1:{free_port()}"

    async def open_wallet() -> Wallet:
        return await net.wallet("b0")

    async def go() -> None:
        async with net.in_process():
            await net.setup()  # (b0's purse keyed and loaded at the real broker)
            config.write_text(f'broker = "{nowhere}"\naccount = "C-b0"\npurchases = "{tmp_path / "purchases"}"\n')
            web = WalletWeb(open_wallet, wallet_config.load(config), app_socket=net.hosts["b0"].socket)
            served = await web.start("127.0.0.1", 0)
            try:
                async with httpx.AsyncClient(base_url=served.url, timeout=120) as client:
                    await log_in(client, served)
                    r = await client.post("/api/load", json={"amount": "1.00 EUR"})
                    got = r.json()
                    assert r.status_code == 502 and got["error"] == "unreachable", r.text
                    assert got["message"].endswith(
                        f"; check that the broker runs at {nowhere} (broker in {config}); a load it did not answer "
                        "is credited by Recover once it answers"
                    ), r.text
            finally:
                await web.aclose()

    asyncio.run(go())
