"""The web wallet (``cardnet wallet ui``) through its real entry point, against real host processes and cards.

One network for the module (:class:`~cardnet.bench.trnnet.TrnNet`: the authority's host with the agent and the
TTP, wallet hosts a and b; b's card also has an e-purse), a ticketing server (``cardnet ticketing run``) and its
SPEED broker (``cardnet speed broker run``), and two ``cardnet wallet ui`` processes: b's page is driven by
headless Chromium (Debian's ``/usr/bin/chromium`` through Playwright: it buys a ticket, sends one and answers
exchange offers a's card makes with the wallet library, and what it shows is compared with the card's own
listing); a's is spoken to with httpx to check who may use it (the session, the CSRF checks, the Host check).
The stores of the broker, the vendor and the ticketing device are made with the libraries (as in
``test_ticketing.py``).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stdout
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import TypeVar

import click
import httpx
import pytest
from hostprocs import Service
from playwright.async_api import Page, async_playwright, expect

from cardnet.applets.authority import ADD_AGENT
from cardnet.applets.gate import ADMISSIONS as GATE_ADMISSIONS
from cardnet.applets.gate import LIST as GATE_LIST
from cardnet.applets.gate import SETUP as GATE_SETUP
from cardnet.applets.gate import STATE as GATE_STATE
from cardnet.applets.speed import purse as pa
from cardnet.applets.trn import MINT, SEND, SET_AUTHORITY
from cardnet.bench.procs import HostProc, free_port, readline, stop_process
from cardnet.bench.ticketnet import make_ticketing
from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.cli.main import run
from cardnet.cli.speed import JOURNAL
from cardnet.crypto import pki
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed.customer import Customer, Journal, install_key, load
from cardnet.services.ticketing.sales import ticket_oid
from cardnet.services.wallet import Wallet
from cardnet.transport.http import HttpServer, Request, Response, Router
from cardnet.web.wallet import WalletWeb

CHROMIUM = "/usr/bin/chromium"
T = TypeVar("T")
T1 = bytes.fromhex("a1" * 16)  # a's voucher: a offers it to b for T2
T2 = bytes.fromhex("b2" * 16)  # b's voucher
T3 = bytes.fromhex("b3" * 16)  # b's ticket: b's page sends it to a, then a offers it back for T1 (b rejects)
T4 = bytes.fromhex("a4" * 16)  # a's ticket: the forged requests try to send it away
BODIES = {T1: b"voucher: one coffee", T2: b"voucher: one tea", T3: b"Cup final, seat A1",
          T4: b"Cup final, seat B2"}  # fmt: skip
TIMEOUT_MS = 20_000


@dataclass
class Ui:
    """One ``cardnet wallet ui`` process and the addresses its ready line gave."""

    proc: subprocess.Popen[str]
    url: str
    login: str


def start_ui(net: TrnNet, card: str) -> Ui:
    cmd = [sys.executable, "-m", "cardnet.cli.main", "wallet", "ui", "--config", str(net.tmp / f"{card}-wallet.toml"),
           "--socket", net.hosts[card].socket, "--card", net.uids[card].domain.hex(), "--listen", "127.0.0.1:0",
           "--recover-wait", "1", "--json"]  # fmt: skip
    with open(net.tmp / f"ui-{card}.log", "a") as log:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True,
                                env={**os.environ, "CARDNET_PIN": PIN, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    line = readline(proc, 30.0)
    if not line.startswith('{"ready"'):
        stop_process(proc)
        raise AssertionError(f"wallet ui did not start: {line!r}\n{(net.tmp / f'ui-{card}.log').read_text()}")
    ready = json.loads(line)["ready"]
    return Ui(proc, ready["url"], ready["login"])


@dataclass
class World:
    net: TrnNet
    ui_a: Ui
    ui_b: Ui
    tickets_url: str
    broker_at: str


def _ticketing(net: TrnNet) -> tuple[HostProc, Service, bytes]:
    """The ticketing server (its device an agent card on its own host inside it) and its SPEED broker, made with
    the libraries; b's account at the broker. The processes are not started."""
    tmp = net.tmp
    made = make_ticketing(net, {"b": sm.Price("EUR", 100_000)}, sam_pin=PIN)
    device, device_cert, bcert = made.device, made.device_cert, made.broker_cert
    ca = pki.CertificateAuthority.load(tmp / "ca.cnca")
    broker = Service(tmp, "speed", "broker", "run", "--store", str(tmp / "broker.db"), "--sam-store",
                     str(tmp / "sam.db"), "--pin", PIN, "--listen", "127.0.0.1:0")  # fmt: skip
    # ports the OS picks (said on the --json ready line): none can be taken by another test before the server binds
    tickets = HostProc("tickets", tmp, 0, device.domain, ("ticketing", "run", "--json"), {"CARDNET_PIN": PIN})
    tickets.config.write_text(
        'name = "Cup final tickets"\nlisten = "127.0.0.1:0"\nspeed_listen = "127.0.0.1:0"\n'
        'store = "tickets.db"\nhost = "device.toml"\ntransfer_timeout_s = 20\n\n'
        '[[events]]\nid = "final"\nname = "Cup final"\ndate = "2027-05-01 20:00"\nprice = "25.00 EUR"\n'
        'seats = ["A1", "A2", "B1"]\n'
    )
    (tmp / "broker.pem").write_bytes(pki.chain_to_pem([pki.cert_from_der(bcert)]))
    (tmp / "ca.pem").write_bytes(pki.chain_to_pem([ca.certificate]))
    return tickets, broker, device_cert


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    net = TrnNet(tmp_path_factory.mktemp("web"), wallets=("a", "b"), ttp=True, gates=("g",))
    hb = net.hosts["b"]  # b's card pays with SPEED too; b's host neither resends nor ticks: Recover finishes for it
    hb.config.write_text("resend_after_s = 0.0\n" + hb.config.read_text().replace(
        'applets = ["trn"]', 'applets = ["trn", "purse", "speed"]\nticks = {}'))  # fmt: skip
    tickets, broker, device_cert = _ticketing(net)
    uis: list[Ui] = []
    with net, ThreadPoolExecutor(2) as pool:
        try:
            started = [pool.submit(broker.start), pool.submit(tickets.start)]
            asyncio.run(_issue(net))
            broker_at = started[0].result()
            started[1].result()
            asyncio.run(_purse(net, broker_at, device_cert))
            (net.tmp / "b-wallet.toml").write_text(
                f'broker = "{broker_at}"\nbroker_cert = "broker.pem"\nca_cert = "ca.pem"\naccount = "C-b"\n'
            )
            uis += list(pool.map(lambda card: start_ui(net, card), ("a", "b")))
            yield World(net, *uis, json.loads(tickets.ready_line)["ready"]["http"], broker_at)
        finally:
            for ui in uis:
                stop_process(ui.proc)
            tickets.stop()
            broker.stop()


async def _issue(net: TrnNet) -> None:
    await net.setup_trace()
    for oid, to in ((T1, "a"), (T4, "a"), (T2, "b"), (T3, "b")):
        assert (await net.ask("agent", MINT, oid=oid, body=BODIES[oid]))["ok"]
        assert (await net.ask("agent", SEND, oid=oid, to=net.uids[to]))["ok"]
    for oid, to in ((T1, "a"), (T4, "a"), (T2, "b"), (T3, "b")):
        await net.settle(to, oid)
    for card in ("a", "b"):
        async with await _wallet(net, card) as w:
            await w.set_ttp(net.uids["ttp"])


async def _purse(net: TrnNet, broker_at: str, device_cert: bytes) -> None:
    """The authority knows the ticketing device, and the gate takes its tickets (only); b's e-purse is keyed and
    holds 100.00 EUR."""
    assert (await net.ask("authority", ADD_AGENT, cert=device_cert))["ok"]
    assert (await net.ask("g", SET_AUTHORITY, authority=net.uids["authority"]))["ok"]
    await net.ask("g", GATE_SETUP, GATE_STATE, issuers=[device_cert], wait_ms=1500)
    async with await _wallet(net, "b") as w:
        assert await install_key(w, broker_at)
        assert await load(w, broker_at, sm.Price("EUR", 10_000), "C-b") == 1


async def _wallet(net: TrnNet, card: str) -> Wallet:
    return await Wallet.open(net.hosts[card].socket, pin=PIN, card=net.uids[card].domain)


async def _listing(net: TrnNet, card: str) -> dict[str, str]:
    async with await _wallet(net, card) as w:
        return {v.oid.hex(): v.status for v in await w.vouchers()}


async def _page_tickets(page: Page) -> dict[str, str]:
    rows = page.locator("#tickets tbody tr")
    return {await r.get_attribute("data-oid") or "": await r.get_attribute("data-status") or ""
            for r in await rows.all()}  # fmt: skip


async def _body(page: Page, oid: str) -> str:
    """A ticket's body as the page holds it (it shows a ticketing server's as "event, seat S")."""
    return await page.locator(f'#tickets tr[data-oid="{oid}"]').get_attribute("data-body") or ""


async def _balance(net: TrnNet, card: str) -> int:
    async with await _wallet(net, card) as w:
        got = await w.ask(pa.BALANCE, pa.BALANCES)
    return int({a["currency"]: a["balance"] for a in got["accounts"]}.get("EUR", 0))


async def _pay_only(w: World, seat: str) -> bytes:
    """b's card buys ``seat`` with SPEED and pays (the receipt kept in b's wallet journal), nothing delivered."""
    async with httpx.AsyncClient(base_url=w.tickets_url) as c:
        info = (await c.get("/")).json()
    ca = pki.CertificateAuthority.load(w.net.tmp / "ca.cnca")
    bcert = pki.cert_to_der(pki.chain_from_pem((w.net.tmp / "broker.pem").read_bytes())[0])
    journal = Journal(w.net.tmp / "purchases" / JOURNAL)
    async with await _wallet(w.net, "b") as wallet:
        got = await Customer(wallet, b"", [pki.cert_to_der(ca.certificate)], journal=journal).buy(
            info["speed"], w.broker_at, [f"final/{seat}"], broker_cert=bcert, mode="aggressive",
            vendor_cert=base64.b64decode(info["vendor_cert"]), price=sm.Price("EUR", 2500),
        )  # fmt: skip
    return got.poid


async def _until(read: Callable[[], Awaitable[T]], ok: Callable[[T], bool], timeout_s: float = 20.0) -> T:
    async with asyncio.timeout(timeout_s):
        while not ok(got := await read()):
            await asyncio.sleep(0.1)
    return got


async def _cross_site_form(page: Page, wallet_url: str, fields: dict[str, str]) -> None:
    """Open a page served from another port that submits a form (a text/plain body that reads as JSON) to the
    wallet's /api/send, as an attacker's page would."""
    body = json.dumps(fields)[:-1] + ', "x": "'
    form = (f"<!doctype html><form id='f' method='post' enctype='text/plain' action='{wallet_url}api/send'>"
            f"<input type='hidden' name='{escape(body)}' value='\"}}'></form>"
            "<script>document.getElementById('f').submit()</script>")  # fmt: skip
    router = Router()

    async def evil(request: Request) -> Response:
        return Response.html(form)

    router.add("GET", "/", evil)
    server = HttpServer(router)
    host, port = await server.start("127.0.0.1", 0)
    try:
        async with page.expect_navigation(url=f"{wallet_url}api/send"):
            await page.goto(f"http://{host}:{port}/")
    finally:
        await server.aclose()


async def _until_page_shows(page: Page, net: TrnNet, card: str, timeout_s: float = 20.0) -> dict[str, str]:
    """The page's tickets once they equal the card's own listing (all settled: enabled); the listing."""
    async with asyncio.timeout(timeout_s):
        while True:
            listing = await _listing(net, card)
            if set(listing.values()) <= {"enabled"} and await _page_tickets(page) == listing:
                return listing
            await asyncio.sleep(0.2)


def test_the_page_buys_sends_and_answers_exchange_offers(world: World) -> None:
    net = world.net
    a, b = str(net.uids["a"]), str(net.uids["b"])

    assert Path(CHROMIUM).exists(), f"no {CHROMIUM}: install Debian's chromium (apt-get install -y chromium)"

    async def go() -> None:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM)
            page = await browser.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            await page.goto(world.ui_b.login)
            assert page.url == world.ui_b.url  # the login link answered with the session and went to the page
            await expect(page.locator("#card")).to_have_text(b)
            await expect(page.locator("#link")).to_have_text("live")
            assert await _until_page_shows(page, net, "b") == {T2.hex(): "enabled", T3.hex(): "enabled"}
            assert await page.locator(f'#tickets tr[data-oid="{T3.hex()}"] td.body').inner_text() == BODIES[T3].decode()
            await expect(page.locator("#purse")).to_have_text("100.00 EUR")

            # buy seat A1 from the ticketing server: paid from the e-purse, the ticket relayed to b's card
            await page.fill("#shop-url", f"http://127.0.0.1:{free_port()}")  # nobody there: the page says what to do
            await page.click("#shop-button")
            await expect(page.locator("#message.error")).to_contain_text("check the address and that it runs")
            await page.fill("#shop-url", world.tickets_url)
            await page.click("#shop-button")
            await expect(page.locator("#buy-form")).to_be_visible()
            await expect(page.locator("#buy-seat option")).to_have_text(["A1", "A2", "B1"])
            await page.select_option("#buy-seat", "A1")
            await expect(page.locator("#buy-price")).to_have_text("25.00 EUR")
            await page.click("#buy-button")
            await expect(page.locator("#message.ok")).to_contain_text("bought seat A1 of final for 25.00 EUR")
            await expect(page.locator("#buy-seat option")).to_have_text(["A2", "B1"])
            listing = await _until_page_shows(page, net, "b")
            (ticket,) = set(listing) - {T2.hex(), T3.hex()}
            await expect(page.locator(f'#tickets tr[data-oid="{ticket}"] td.body')).to_have_text("final, seat A1")
            shown = json.loads(await _body(page, ticket))  # the ticket's body, as the page has it
            assert shown["seat"] == "A1" and ticket_oid(bytes.fromhex(shown["poid"])) == bytes.fromhex(ticket)
            async with httpx.AsyncClient(base_url=world.tickets_url) as c:  # the server's own word on the sale
                assert (await c.get(f"/tickets/{shown['poid']}")).json()["state"] == "delivered"
            await expect(page.locator("#purse")).to_have_text("75.00 EUR")
            assert await _balance(net, "b") == 7_500
            await page.fill("#deliver-poid", shown["poid"])  # finishing that delivery again: nothing more to send
            await page.click("#deliver-button")
            await expect(page.locator("#message.ok")).to_contain_text("was delivered already")
            # seat B1 paid (with the wallet library, into the wallet's journal) and never delivered: the page brings it
            sale = await _pay_only(world, "B1")
            b1 = ticket_oid(sale).hex()
            assert b1 not in await _listing(net, "b")
            await page.fill("#deliver-poid", sale.hex())
            await page.click("#deliver-button")
            await expect(page.locator("#message.ok")).to_contain_text("is on its way to your card")
            await expect(page.locator(f'#tickets tr[data-oid="{b1}"]')).to_have_count(1)
            assert (await _listing(net, "b"))[b1] in ("trustless", "enabled")
            await _until(lambda: _listing(net, "b"), lambda got: got.get(b1) == "enabled")
            await expect(page.locator("#purse")).to_have_text("50.00 EUR")
            assert await _balance(net, "b") == 5_000

            # walk through a gate, which takes the ticketing server's tickets only
            await page.select_option("#enter-oid", T3.hex())
            await page.fill("#enter-gate", str(net.uids["g"]))
            await page.click("#enter-button")
            await expect(page.locator("#message.error")).to_contain_text(
                f"the gate refused {T3.hex()}: this gate does not take tickets of this ticket's issuer"
            )
            assert (await _listing(net, "b"))[T3.hex()] == "enabled"  # still b's, as the page says
            await page.select_option("#enter-oid", b1)
            await page.click("#enter-button")
            await expect(page.locator("#message.ok")).to_have_text(
                f"admitted: the gate took {b1} (it is used up now: walk in)"
            )
            await expect(page.locator(f'#tickets tr[data-oid="{b1}"]')).to_have_count(0)
            assert b1 not in await _listing(net, "b")
            seen = (await net.ask("g", GATE_LIST, GATE_ADMISSIONS))["items"]  # the gate's own record
            assert {(i.get("oid", b"").hex(), i["verdict"]) for i in seen if i.get("oid")} >= {(b1, "admitted")}

            # an error says what to do, and nothing moves
            await page.select_option("#send-oid", T3.hex())
            await page.fill("#send-to", "not a uid")
            await page.click("#send-button")
            await expect(page.locator("#message.error")).to_contain_text("is not a card's Uid: it is 24 hex digits")
            assert (await _listing(net, "b"))[T3.hex()] == "enabled"

            # send T3 to a
            await page.fill("#send-to", a)
            await page.click("#send-button")
            await expect(page.locator("#message.ok")).to_contain_text(f"sending {T3.hex()} to {a}")
            await expect(page.locator(f'#tickets tr[data-oid="{T3.hex()}"]')).to_have_count(0)
            await net.settle("a", T3)
            assert await _until_page_shows(page, net, "b") == {T2.hex(): "enabled", ticket: "enabled"}
            assert (await _listing(net, "a"))[T3.hex()] == "enabled"

            # a offers T1 for T2: b's page shows the offer before b's card takes anything
            async with await _wallet(net, "a") as wa:
                x = await wa.offer(T1, T2, net.uids["b"])
                offer = page.locator(f'#offers li[data-id="{x.n1.hex()}"]')
                await expect(offer).to_be_visible()
                await expect(offer.locator("strong.get")).to_have_text(BODIES[T1].decode())
                await expect(offer.locator("strong.give")).to_have_text(BODIES[T2].decode())
                await expect(offer).to_contain_text(a)
                async with await _wallet(net, "b") as wb:
                    assert (await wb.status(x.n1)).phase == "proposed"
                    held = {v.oid.hex(): v.status for v in await wb.vouchers()}
                    assert held == {T2.hex(): "enabled", ticket: "enabled"}  # nothing taken yet
                await offer.locator("button.accept").click()
                await expect(page.locator("#message.ok")).to_contain_text("accepted")
                assert (await wa.wait(x.n1, timeout_s=20)).swapped
            await expect(offer).to_have_count(0)
            assert await _until_page_shows(page, net, "b") == {T1.hex(): "enabled", ticket: "enabled"}
            assert (await _listing(net, "a")) == {T2.hex(): "enabled", T3.hex(): "enabled", T4.hex(): "enabled"}

            # a offers T3 for T1; b's page rejects: nothing moves, a's T3 is usable again
            async with await _wallet(net, "a") as wa:
                y = await wa.offer(T3, T1, net.uids["b"])
                offer = page.locator(f'#offers li[data-id="{y.n1.hex()}"]')
                await expect(offer.locator("strong.get")).to_have_text(BODIES[T3].decode())
                await offer.locator("button.reject").click()
                await expect(page.locator("#message.ok")).to_contain_text("rejected")
                assert not (await wa.wait(y.n1, timeout_s=20)).swapped
            await expect(offer).to_have_count(0)
            assert await _until_page_shows(page, net, "b") == {T1.hex(): "enabled", ticket: "enabled"}
            assert (await _listing(net, "a"))[T3.hex()] == "enabled"

            # b's own offer (made with the wallet library) waits for a's owner: the page takes it back
            async with await _wallet(net, "b") as wb:
                z = await wb.offer(T1, T3, net.uids["a"])
                mine = page.locator(f'#under-way tr[data-id="{z.n1.hex()}"]')
                await expect(mine).to_contain_text("waiting for the other owner")
                await mine.locator("button.give-up").click()
                await expect(page.locator("#message.ok")).to_contain_text("taken back")
                assert (await wb.status(z.n1)).phase == "gave_up"
            await expect(mine).to_have_count(0)
            assert await _until_page_shows(page, net, "b") == {T1.hex(): "enabled", ticket: "enabled"}

            # under way while a's host is down: the page says so as b's card does, and so does Recover
            net.hosts["a"].kill()
            await page.select_option("#send-oid", T1.hex())
            await page.fill("#send-to", a)
            await page.click("#send-button")
            await expect(page.locator("#message.ok")).to_contain_text(f"sending {T1.hex()}")
            moving = page.locator(f'#under-way tr[data-id="{T1.hex()}"]')
            await expect(moving).to_contain_text(re.compile("leaving|undeliverable"))
            await expect(moving).to_contain_text(a)
            assert (await _listing(net, "b"))[T1.hex()] == "disabled+O"  # as the page says: on its way, not gone
            await page.click("#recover-button")  # (this page's Recover resends for 1 s: --recover-wait 1)
            await expect(page.locator("#message.error, #message.ok")).to_have_text(
                "1 of 1 still under way: press Recover again once the other side is reachable"
            )
            await expect(page.locator("#recovered li")).to_contain_text(f"transfer {T1.hex()}: still ")
            assert (await _listing(net, "b"))[T1.hex()] == "disabled+O"
            # b's host goes away too: the page says what to do, and carries on once both are back
            net.hosts["b"].kill()
            await expect(page.locator("#link")).to_contain_text("is `cardnet host run` running?")
            net.hosts["a"].restart()
            net.hosts["b"].restart()
            await expect(page.locator("#link")).to_have_text("live")
            # Recover finishes the transfer (unless the hosts' own resending, on reopening the card, was quicker)
            await page.click("#recover-button")
            await expect(page.locator("#message.ok")).to_have_text(
                re.compile("^(finished 1|nothing was left to finish)$")
            )
            if await page.locator("#message").inner_text() == "finished 1":
                await expect(page.locator("#recovered li")).to_have_text(
                    f"transfer {T1.hex()}: finished: it left this card"
                )
            await expect(page.locator("#nothing-under-way")).to_be_visible()
            await net.settle("a", T1)
            assert await _until_page_shows(page, net, "b") == {ticket: "enabled"}
            await page.click("#recover-button")
            await expect(page.locator("#message.ok")).to_have_text("nothing was left to finish")

            # a page of another site on this machine (another port: the same site for SameSite, so the browser
            # sends the session cookie) posts a form to the wallet: refused, nothing moves
            await _cross_site_form(page, world.ui_b.url, {"oid": ticket, "to": a})
            await expect(page.locator("body")).to_contain_text("a request from another site was refused")
            assert (await _listing(net, "b"))[ticket] == "enabled"
            await browser.close()

    asyncio.run(go())


@pytest.fixture(scope="module")
def session_a(world: World) -> Iterator[tuple[httpx.Client, str]]:
    """a's page logged in once (the login link works once): a client with the session cookie, and the CSRF token."""
    with httpx.Client(base_url=world.ui_a.url, timeout=30) as c:
        token = world.ui_a.login.rsplit("/", 1)[1]
        assert c.head(f"/login/{token}").status_code == 200 and not c.cookies  # a HEAD spends nothing
        r = c.get(f"/login/{token}")
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        page = c.get("/")
        assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
        found = re.search(r'<meta name="csrf-token" content="([^"]+)">', page.text)
        assert found is not None
        yield c, found.group(1)


def test_requests_without_the_session_are_refused(world: World, session_a: tuple[httpx.Client, str]) -> None:
    logged_in, _ = session_a
    with httpx.Client(base_url=world.ui_a.url, timeout=30) as stranger:
        for path in ("/", "/api/state", "/static/wallet.js", "/nothing-here", "/login"):
            r = stranger.get(path)
            assert r.status_code == 403, (path, r.status_code)
        r = stranger.post("/api/send", json={"oid": T4.hex(), "to": str(world.net.uids["b"])})
        assert r.status_code == 403 and r.json()["error"] == "no_session"
        assert "cardnet wallet ui" in r.json()["message"]  # it says what to do
        token = world.ui_a.login.rsplit("/", 1)[1]
        r = stranger.get(f"/login/{token}")  # spent by the fixture's browser
        assert r.status_code == 403 and r.json()["error"] == "bad_login"
        assert stranger.get("/login/" + "x" * 43).status_code == 403
        stranger.cookies.set("cardnet_wallet", "guessed")
        assert stranger.get("/api/state").status_code == 403
    # the session's own requests pass, but only under this server's name (no DNS rebinding)
    state = logged_in.get("/api/state")
    assert state.status_code == 200 and state.json()["card"] == str(world.net.uids["a"])
    assert {t["oid"] for t in state.json()["tickets"]} >= {T4.hex()}
    r = logged_in.get("/api/state", headers={"Host": f"evil.example:{world.ui_a.url.rsplit(':', 1)[1][:-1]}"})
    assert r.status_code == 403 and r.json()["error"] == "wrong_host"


def test_a_cross_site_post_is_refused(world: World, session_a: tuple[httpx.Client, str]) -> None:
    c, csrf = session_a
    send = {"oid": T4.hex(), "to": str(world.net.uids["b"])}
    own = world.ui_a.url.rstrip("/")
    forged = [
        ({"Origin": "http://evil.example", "X-CSRF-Token": csrf}, "cross_site"),
        ({"Origin": own, "Sec-Fetch-Site": "cross-site", "X-CSRF-Token": csrf}, "cross_site"),
        ({"Origin": own}, "csrf"),  # no token: what a form on another site can send at most
        ({"Origin": own, "X-CSRF-Token": "0" * len(csrf)}, "csrf"),
    ]
    for headers, reason in forged:
        r = c.post("/api/send", json=send, headers=headers)
        assert r.status_code == 403 and r.json()["error"] == reason, (headers, r.text)
    r = c.post("/api/send", data={"oid": T4.hex(), "to": send["to"]}, headers={"X-CSRF-Token": csrf, "Origin": own})
    assert r.status_code == 415  # a form's body
    assert asyncio.run(_listing(world.net, "a"))[T4.hex()] == "enabled"  # nothing moved
    # the page's own request passes every check (and the card's answer comes back in words)
    r = c.post("/api/send", json={**send, "to": str(world.net.uids["a"])}, headers={"X-CSRF-Token": csrf,
               "Origin": own})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"] == "to_self"


def test_the_server_refuses_a_non_loopback_address(tmp_path: Path) -> None:
    socket = str(tmp_path / "no-host.sock")  # had the card been opened first, that would fail otherwise

    async def open_wallet() -> Wallet:
        return await Wallet.open(socket, pin=PIN)

    async def go() -> None:
        for host in ("0.0.0.0", "192.0.2.1", "::", "localhost"):
            web = WalletWeb(open_wallet)
            with pytest.raises(ValueError, match="not a loopback address"):
                await web.start(host, 0)
            await web.aclose()

    asyncio.run(go())
    out = io.StringIO()
    with redirect_stdout(out):
        code = run(["wallet", "ui", "--socket", socket, "--listen", "0.0.0.0:0", "--json"])
    assert code == 2 and "not a loopback address" in json.loads(out.getvalue())["error"]["message"]


def test_the_command_is_in_the_wallet_group() -> None:
    from cardnet.cli.main import cli, subcommands

    group = subcommands(cli)["wallet"]
    assert isinstance(group, click.Group) and {"ui", "send", "show"} <= set(group.commands)
