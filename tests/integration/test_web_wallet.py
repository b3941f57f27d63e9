"""The web wallet (``cardnet wallet ui``) through its real entry point, against real host processes and cards.

One network for the module (:class:`~cardnet.bench.trnnet.TrnNet`: the authority's host with the agent and the
TTP, wallet hosts a and b; b's card also has an e-purse), a ticketing server (``cardnet ticketing run``) and its
SPEED broker (``cardnet speed broker run``), and two ``cardnet wallet ui`` processes: b's page is driven by
headless Chromium (Debian's ``/usr/bin/chromium`` through Playwright: it buys a ticket, sends one and answers
exchange offers a's card makes with the wallet library, and what it shows is compared with the card's own
listing); a's is spoken to with httpx to check who may use it (the session header, the Origin and Host checks),
and visited by the browser beside a server on another port of 127.0.0.1, which must get nothing the wallet takes.
a's page also offers an exchange that b's page accepts (b's web wallet then a :class:`WalletWeb` in the test's
process on a real socket, since b's printed link is spent), and b's page loads its e-purse at the broker. The
stores of the broker, the vendor and the ticketing device are made with the libraries (as in
``test_ticketing.py``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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
from playwright.async_api import BrowserContext, Page, async_playwright, expect

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
from cardnet.cli import wallet_config
from cardnet.cli.main import run
from cardnet.cli.speed import JOURNAL
from cardnet.crypto import pki
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed.customer import Customer, Journal, install_key, load
from cardnet.services.ticketing.buyer import receipt_header
from cardnet.services.ticketing.sales import ticket_oid
from cardnet.services.wallet import Wallet
from cardnet.transport.http import HttpServer, Request, Response, Router
from cardnet.web.wallet import Served, WalletWeb

CHROMIUM = "/usr/bin/chromium"
T = TypeVar("T")
T1 = bytes.fromhex("a1" * 16)  # a's voucher: a offers it to b for T2
T2 = bytes.fromhex("b2" * 16)  # b's voucher
T3 = bytes.fromhex("b3" * 16)  # b's ticket: b's page sends it to a, then a offers it back for T1 (b rejects)
T4 = bytes.fromhex("a4" * 16)  # a's ticket: the forged requests try to send it away
T5 = bytes.fromhex("a5" * 16)  # a's voucher: a's page offers it for T6 (minted by the test that offers it)
T6 = bytes.fromhex("b6" * 16)  # b's voucher: b's page accepts a's offer
BODIES = {T1: b"voucher: one coffee", T2: b"voucher: one tea", T3: b"Cup final, seat A1",
          T4: b"Cup final, seat B2", T5: b"voucher: one lemonade", T6: b"voucher: one juice"}  # fmt: skip
TIMEOUT_MS = 20_000
KEY = "cardnet-wallet-session"  # where the page keeps its tab's session secret (sessionStorage)
NOT_LOGGED_IN = "This tab is not logged in: open the login link"
# what the page says once its owner accepted an offer: how it stands, what to do next (not "accepted: accepted")
ACCEPTED = re.compile(
    r"^(accepted: waiting for the other card to finish the swap; next: the cards finish by themselves \(the page "
    r"shows when\); if the other card stays silent, Recover asks the TTP to settle it: you get their voucher if their "
    r"card already gave it, else yours back|swapped: you have the other voucher)$"
)


@dataclass
class Ui:
    """One ``cardnet wallet ui`` process and the addresses its ready line gave."""

    proc: subprocess.Popen[str]
    url: str
    login: str

    @property
    def token(self) -> str:
        """The one-time login token of the printed link (in its fragment: ``/#login=TOKEN``)."""
        url, sep, token = self.login.partition("#login=")
        assert sep and url == self.url and token, self.login
        return token


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
            broker_started, tickets_started = pool.submit(broker.start), pool.submit(tickets.start)
            asyncio.run(_issue(net))
            broker_at = broker_started.result()
            tickets_started.result()
            asyncio.run(_purse(net, broker_at, device_cert))
            (net.tmp / "b-wallet.toml").write_text(
                f'broker = "{broker_at}"\nbroker_cert = "broker.pem"\nca_cert = "ca.pem"\naccount = "C-b"\n'
            )
            uis += list(pool.map(lambda card: start_ui(net, card), ("a", "b")))
            yield World(net, uis[0], uis[1], json.loads(tickets.ready_line)["ready"]["http"], broker_at)
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


async def _tab_session(page: Page) -> str:
    """The session secret the page keeps for its tab (its origin's sessionStorage), '' if none."""
    return str(await page.evaluate(f"sessionStorage.getItem({KEY!r}) || ''"))


async def _two_wallets_in_one_browser(
    context: BrowserContext, page_b: Page, world: World, session_a: tuple[httpx.Client, str]
) -> None:
    """a's wallet (another port) logged in beside b's in the same browser: each tab keeps its own session (a
    cookie of each would have replaced the other's: cookies do not tell ports apart)."""
    c, _ = session_a
    link = c.post("/api/link", json={}).json()["login"]  # a one-time link for a tab, drawn by a's session
    page_a = await context.new_page()
    await page_a.goto(link)
    await expect(page_a.locator("#card")).to_have_text(str(world.net.uids["a"]))
    await expect(page_a.locator("#link")).to_have_text("live")
    await page_b.reload()
    await expect(page_b.locator("#link")).to_have_text("live")
    await expect(page_b.locator("#card")).to_have_text(str(world.net.uids["b"]))
    await page_a.reload()
    await expect(page_a.locator("#link")).to_have_text("live")
    await expect(page_a.locator("#card")).to_have_text(str(world.net.uids["a"]))
    assert await _tab_session(page_a) != await _tab_session(page_b)
    assert not await context.cookies()
    await page_a.close()


@contextlib.asynccontextmanager
async def _other_port() -> AsyncIterator[tuple[str, list[Request]]]:
    """Another local web server (another port of 127.0.0.1, as another user's or a malicious program's): it
    answers every request with a small page and records what the browser sent it."""
    seen: list[Request] = []

    async def record(request: Request) -> Response:
        seen.append(request)
        return Response.html("<!doctype html><title>another server</title><p>another local server</p>")

    class Everything(Router):
        def route(self, method: str, path: str) -> tuple[Callable[[Request], Awaitable[Response]], dict[str, str]]:
            return record, {}

    server = HttpServer(Everything())
    host, port = await server.start("127.0.0.1", 0)
    try:
        yield f"http://{host}:{port}/", seen
    finally:
        await server.aclose()


# what a script of another origin tries against the wallet (the secret given to it: the worst case)
CROSS_ORIGIN_FETCHES = """async ([wallet, secret, oid, to]) => {
  const send = JSON.stringify({ oid, to });
  const tries = {
    state_with_the_secret: () => fetch(wallet + "api/state", { headers: { Authorization: "Bearer " + secret } }),
    send_with_the_secret: () => fetch(wallet + "api/send", { method: "POST", body: send,
      headers: { Authorization: "Bearer " + secret, "Content-Type": "application/json" } }),
    link_with_the_secret: () => fetch(wallet + "api/link", { method: "POST", body: "{}",
      headers: { Authorization: "Bearer " + secret, "Content-Type": "application/json" } }),
    state: () => fetch(wallet + "api/state"),
    send_no_cors: () => fetch(wallet + "api/send", { method: "POST", mode: "no-cors", body: send }),
  };
  const out = {};
  for (const [name, go] of Object.entries(tries)) {
    try { const r = await go(); out[name] = `${r.type} ${r.status}`; } catch (e) { out[name] = "blocked"; }
  }
  return out;
}"""


async def _until_page_shows(page: Page, net: TrnNet, card: str, timeout_s: float = 20.0) -> dict[str, str]:
    """The page's tickets once they equal the card's own listing (all settled: enabled); the listing."""
    async with asyncio.timeout(timeout_s):
        while True:
            listing = await _listing(net, card)
            if set(listing.values()) <= {"enabled"} and await _page_tickets(page) == listing:
                return listing
            await asyncio.sleep(0.2)


def test_the_page_buys_sends_and_answers_exchange_offers(world: World, session_a: tuple[httpx.Client, str]) -> None:
    net = world.net
    a, b = str(net.uids["a"]), str(net.uids["b"])

    assert Path(CHROMIUM).exists(), f"no {CHROMIUM}: install Debian's chromium (apt-get install -y chromium)"

    async def go() -> None:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM)
            context = await browser.new_context()
            page = await context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            await page.goto(world.ui_b.login)
            await expect(page.locator("#card")).to_have_text(b)
            await expect(page.locator("#link")).to_have_text("live")
            assert page.url == world.ui_b.url  # the page took the login token out of the address bar
            assert await _tab_session(page) and not await context.cookies()  # the tab's secret, and no cookie
            await page.reload()  # a reload keeps the tab's session
            await expect(page.locator("#link")).to_have_text("live")
            await expect(page.locator("#card")).to_have_text(b)
            await _two_wallets_in_one_browser(context, page, world, session_a)
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
            assert shown == {"event": "final", "seat": "A1"}  # not the sale's id (what opens its page: the receipt)
            (a1,) = [r for r in Journal(net.tmp / "purchases" / JOURNAL).all() if r.products == ["final/A1"]]
            assert a1.poid is not None and a1.receipt is not None and ticket_oid(a1.poid) == bytes.fromhex(ticket)
            shown["poid"] = a1.poid.hex()
            async with httpx.AsyncClient(base_url=world.tickets_url) as c:  # the server's own word on the sale
                mine = dict([receipt_header(a1.receipt)])
                assert (await c.get(f"/tickets/{shown['poid']}", headers=mine)).json()["state"] == "delivered"
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
            used = page.locator(f'#admissions tr[data-oid="{b1}"]')  # the wallet's own record of it, on the page
            await expect(used).to_have_count(1)
            await expect(page.locator("#admissions-part")).to_be_visible()
            assert await used.get_attribute("data-gate") == str(net.uids["g"])
            (record,) = json.loads((net.tmp / "admissions.json").read_text())["admissions"]
            assert record["oid"] == b1 and await used.get_attribute("data-at") == record["at"], record
            await expect(used.locator("td").nth(2)).to_contain_text(record["at"].replace("T", " ").replace("Z", ""))
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
                await expect(page.locator("#message.ok")).to_have_text(ACCEPTED)  # in cardnet exchange's words
                assert (await wa.wait(x.n1, timeout_s=20)).swapped
            await expect(offer).to_have_count(0)
            assert await _until_page_shows(page, net, "b") == {T1.hex(): "enabled", ticket: "enabled"}
            # the same offer accepted again (a tab that had not redrawn yet): what happened, what to do, in words
            await page.evaluate("([id]) => act('/api/exchange/accept', { id })", [x.n1.hex()])
            await expect(page.locator("#message.error")).to_have_text(
                "there is nothing left to accept: this exchange ended in the swap, you have the other voucher; the "
                "page shows how it ended, your list what this card holds now"
            )
            assert (await _listing(net, "a")) == {T2.hex(): "enabled", T3.hex(): "enabled", T4.hex(): "enabled"}

            # a offers T3 for T1; b's page rejects: nothing moves, a's T3 is usable again
            async with await _wallet(net, "a") as wa:
                y = await wa.offer(T3, T1, net.uids["b"])
                offer = page.locator(f'#offers li[data-id="{y.n1.hex()}"]')
                await expect(offer.locator("strong.get")).to_have_text(BODIES[T3].decode())
                await offer.locator("button.reject").click()
                await expect(page.locator("#message.ok")).to_have_text(
                    "ended without a swap: your voucher is yours again (you rejected it)"
                )
                assert not (await wa.wait(y.n1, timeout_s=20)).swapped
            await expect(offer).to_have_count(0)
            assert await _until_page_shows(page, net, "b") == {T1.hex(): "enabled", ticket: "enabled"}
            assert (await _listing(net, "a"))[T3.hex()] == "enabled"

            # b's own offer (made with the wallet library) waits for a's owner: the page takes it back
            async with await _wallet(net, "b") as wb:
                z = await wb.offer(T1, T3, net.uids["a"])
                mine = page.locator(f'#under-way tr[data-id="{z.n1.hex()}"]')
                await expect(mine).to_contain_text("waiting for the other owner")
                await expect(mine.locator(".next")).to_have_text(
                    "next: the other owner accepts or rejects it (the page shows which); until then Take back takes "
                    "your voucher back"
                )
                await mine.locator("button.give-up").click()
                await expect(page.locator("#message.ok")).to_contain_text("given up: your voucher is yours again")
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
                "1 of 1 still under way: press Recover again once the party each waits for (named under Recover) is "
                "reachable"
            )
            await expect(page.locator("#recovered li")).to_contain_text(f"transfer {T1.hex()}: still ")
            await expect(page.locator("#recovered li")).to_contain_text(  # the party, and where b's host sends to it
                f"waiting for the other card {a} (your host sends to it at 127.0.0.1:{net.hosts['a'].port}"
            )
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
            await browser.close()

    asyncio.run(go())


@pytest.fixture(scope="module")
def session_a(world: World) -> Iterator[tuple[httpx.Client, str]]:
    """a's wallet logged in once, as its page's script does (the printed token exchanged at ``/api/login``): a
    client sending the session's ``Authorization`` header, and the session secret."""
    with httpx.Client(base_url=world.ui_a.url, timeout=30) as c:
        page = c.get("/")  # the page is served to anyone (it holds nothing secret) and spends nothing
        assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
        assert world.ui_a.token not in page.text and "set-cookie" not in page.headers
        r = c.post("/api/login", json={"token": world.ui_a.token})
        assert r.status_code == 200 and "set-cookie" not in r.headers, r.text
        secret = r.json()["session"]
        assert len(secret) >= 43 and secret != world.ui_a.token
        c.headers["Authorization"] = f"Bearer {secret}"
        yield c, secret


def test_another_port_gets_nothing_the_wallet_takes(world: World, session_a: tuple[httpx.Client, str]) -> None:
    """The browser logged in to a's wallet visits another local server (another port): it gets no cookie and
    nothing else of the wallet's, and what it got, replayed to the wallet, is refused; its page's script cannot
    use the wallet either, not even with the session secret, and its form is refused; nothing moves."""
    net, ui = world.net, world.ui_a
    c, _ = session_a
    link = c.post("/api/link", json={}).json()["login"]
    wallet_port = ui.url.rsplit(":", 1)[1].strip("/")
    send = {"oid": T4.hex(), "to": str(net.uids["b"])}

    async def go() -> None:
        async with async_playwright() as p, _other_port() as (other, seen):
            browser = await p.chromium.launch(executable_path=CHROMIUM)
            context = await browser.new_context()
            page = await context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            await page.goto(link)
            await expect(page.locator("#card")).to_have_text(str(net.uids["a"]))
            await expect(page.locator("#link")).to_have_text("live")
            secret = await _tab_session(page)
            token = link.partition("#login=")[2]
            assert secret and page.url == ui.url and not await context.cookies()
            assert await page.evaluate("document.cookie") == ""

            # the same tab visits the other server: it gets no cookie and nothing that names the tab's secrets
            await page.goto(other)
            await expect(page.locator("p")).to_have_text("another local server")
            assert seen
            for request in seen:
                names = {name for name, _ in request.headers}
                assert not names & {"cookie", "authorization"}, request.headers
                assert not any(secret in v or token in v for _, v in request.headers), request.headers
            assert await page.evaluate("[sessionStorage.length, localStorage.length, document.cookie]") == [0, 0, ""]
            # what it got, replayed to the wallet (as the other server's own HTTP client would): refused
            with httpx.Client(base_url=ui.url, timeout=30) as replay:
                for request in seen:
                    heads = {k: v for k, v in request.headers if k not in ("host", "content-length", "connection")}
                    for host in (f"127.0.0.1:{wallet_port}", request.header("host") or ""):
                        r = replay.get("/api/state", headers={**heads, "Host": host})
                        assert r.status_code in (401, 403), (host, r.status_code)
                        r = replay.post("/api/send", json=send, headers={**heads, "Host": host})
                        assert r.status_code in (401, 403), (host, r.status_code)
                        r = replay.post("/api/link", json={}, headers={**heads, "Host": host})
                        assert r.status_code in (401, 403), (host, r.status_code)

            # the other server's page tries the wallet's API from its origin, even with the session secret
            got = await page.evaluate(CROSS_ORIGIN_FETCHES, [ui.url, secret, T4.hex(), str(net.uids["b"])])
            blocked = ("state_with_the_secret", "send_with_the_secret", "link_with_the_secret", "state")
            assert got == {**dict.fromkeys(blocked, "blocked"), "send_no_cors": "opaque 0"}, got
            # (the preflight the browser sent first was answered without any Access-Control-Allow-* header)
            with httpx.Client(base_url=ui.url, timeout=30) as plain:
                preflight = plain.options("/api/send", headers={
                    "Origin": other.rstrip("/"), "Access-Control-Request-Method": "POST",
                    "Access-Control-Request-Headers": "authorization,content-type"})  # fmt: skip
            assert preflight.status_code in (401, 403)
            assert not [h for h in preflight.headers if h.lower().startswith("access-control-")]
            # and its form (a text/plain body that reads as JSON) is refused
            await _cross_site_form(page, ui.url, send)
            await expect(page.locator("body")).to_contain_text("a request from another site was refused")
            assert (await _listing(net, "a"))[T4.hex()] == "enabled"  # nothing moved

            # back in the wallet, the tab is still logged in (its sessionStorage is the wallet origin's own)
            await page.goto(ui.url)
            await expect(page.locator("#link")).to_have_text("live")
            assert await _tab_session(page) == secret
            # a new link pasted into that tab (only the fragment changes: no reload) logs it in afresh
            await page.goto(c.post("/api/link", json={}).json()["login"])
            renewed = await _until(lambda: _tab_session(page), lambda got: got not in ("", secret))
            await expect(page.locator("#link")).to_have_text("live")
            assert page.url == ui.url
            secret = renewed
            # a new tab is not logged in: it shows nothing of the card and says what to do
            fresh = await context.new_page()
            await fresh.goto(ui.url)
            await expect(fresh.locator("#link")).to_have_text("not logged in")
            await expect(fresh.locator("#message.error")).to_contain_text(NOT_LOGGED_IN)
            await expect(fresh.locator("#card")).to_have_text("…")
            # nor by the spent link: it says so
            await fresh.goto(link)
            await expect(fresh.locator("#message.error")).to_contain_text("this login link was used already")
            await expect(fresh.locator("#link")).to_have_text("not logged in")
            assert fresh.url == ui.url and not await _tab_session(fresh)
            await fresh.close()
            # "Open in another tab": a new tab logged in with a one-time link of its own
            async with context.expect_page() as opened:
                await page.click("#new-tab")
            other_tab = await opened.value
            await expect(other_tab.locator("#link")).to_have_text("live")
            await expect(other_tab.locator("#card")).to_have_text(str(net.uids["a"]))
            assert other_tab.url == ui.url and await _tab_session(other_tab) not in ("", secret)
            assert not await context.cookies()
            await browser.close()

    asyncio.run(go())


def test_requests_without_the_session_are_refused(world: World, session_a: tuple[httpx.Client, str]) -> None:
    logged_in, secret = session_a
    token = world.ui_a.token
    send = {"oid": T4.hex(), "to": str(world.net.uids["b"])}
    with httpx.Client(base_url=world.ui_a.url, timeout=30) as stranger:
        for path in ("/", "/static/wallet.js", "/static/wallet.css"):  # the same for everyone: no secret in them
            r = stranger.get(path)
            assert r.status_code == 200 and secret not in r.text and token not in r.text, path
        for path in ("/api/state", "/nothing-here", f"/login/{token}", "/api/login"):
            r = stranger.get(path)
            assert r.status_code == 401 and r.json()["error"] == "no_session", (path, r.status_code)
            assert r.headers["www-authenticate"] == 'Bearer realm="cardnet wallet"'
        for path in ("/api/send", "/api/link"):
            r = stranger.post(path, json=send)
            assert r.status_code == 401 and r.json()["error"] == "no_session", path
        assert "cardnet wallet ui" in r.json()["message"]  # it says what to do
        wrong = [f"Bearer {secret[:-1]}", f"Bearer {token}", secret, f"Basic {secret}", "Bearer", f"Bearer {secret}x"]
        for auth in wrong:  # a wrong header, the login token as the session, the secret without its scheme
            for r in (stranger.get("/api/state", headers={"Authorization": auth}),
                      stranger.post("/api/send", json=send, headers={"Authorization": auth})):  # fmt: skip
                assert r.status_code == 401 and r.json()["error"] == "no_session", (auth, r.text)
        stranger.cookies.set("cardnet_wallet", secret)  # no cookie is taken, whatever it holds
        assert stranger.get("/api/state").status_code == 401
        stranger.cookies.clear()
        r = stranger.post("/api/login", json={"token": token})  # spent by the fixture
        assert r.status_code == 403 and r.json()["error"] == "bad_login" and "used already" in r.json()["message"]
        r = stranger.post("/api/login", json={"token": "x" * 43})
        assert r.status_code == 403 and "not valid" in r.json()["message"]
        r = stranger.post("/api/login", content=json.dumps({"token": token}), headers={"Content-Type": "text/plain"})
        assert r.status_code == 415
    assert asyncio.run(_listing(world.net, "a"))[T4.hex()] == "enabled"  # nothing moved
    # the session's own requests pass, but only under this server's name (no DNS rebinding)
    state = logged_in.get("/api/state")
    assert state.status_code == 200 and state.json()["card"] == str(world.net.uids["a"])
    assert {t["oid"] for t in state.json()["tickets"]} >= {T4.hex()}
    port = world.ui_a.url.rsplit(":", 1)[1][:-1]
    for path in ("/api/state", "/"):
        r = logged_in.get(path, headers={"Host": f"evil.example:{port}"})
        assert r.status_code == 403 and r.json()["error"] == "wrong_host"


def test_a_cross_site_post_is_refused(world: World, session_a: tuple[httpx.Client, str]) -> None:
    c, secret = session_a
    send = {"oid": T4.hex(), "to": str(world.net.uids["b"])}
    own = world.ui_a.url.rstrip("/")
    other = f"http://127.0.0.1:{int(own.rsplit(':', 1)[1]) + 1}"
    forged = [
        ({"Origin": "http://evil.example"}, 403, "cross_site"),  # with the session: still not from another origin
        ({"Origin": other}, 403, "cross_site"),  # another port of this machine
        ({"Origin": "null"}, 403, "cross_site"),
        ({"Origin": own, "Sec-Fetch-Site": "cross-site"}, 403, "cross_site"),
        ({"Origin": own, "Sec-Fetch-Site": "same-site"}, 403, "cross_site"),
        ({"Origin": own, "Authorization": ""}, 401, "no_session"),  # what a form on another site can send at most
        ({"Origin": own, "Authorization": f"Bearer {'0' * len(secret)}"}, 401, "no_session"),
    ]
    for headers, status, reason in forged:
        r = c.post("/api/send", json=send, headers=headers)
        assert r.status_code == status and r.json()["error"] == reason, (headers, r.text)
        assert not [h for h in r.headers if h.lower().startswith("access-control-")]
    r = c.post("/api/send", data={"oid": T4.hex(), "to": send["to"]}, headers={"Origin": own})
    assert r.status_code == 415  # a form's body
    for path in ("/api/send", "/api/state", "/"):  # a CORS preflight is never granted, not even to the session
        r = c.options(path, headers={"Origin": other, "Access-Control-Request-Method": "POST",
                                     "Access-Control-Request-Headers": "authorization, content-type"})  # fmt: skip
        assert r.status_code == 403 and not [h for h in r.headers if h.lower().startswith("access-control-")]
        r = c.options(path)
        assert r.status_code == 405 and not [h for h in r.headers if h.lower().startswith("access-control-")]
    assert asyncio.run(_listing(world.net, "a"))[T4.hex()] == "enabled"  # nothing moved
    # the page's own request passes every check (and the card's answer comes back in words)
    r = c.post("/api/send", json={**send, "to": str(world.net.uids["a"])}, headers={"Origin": own,
               "Sec-Fetch-Site": "same-origin"})  # fmt: skip
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


@contextlib.asynccontextmanager
async def _web(net: TrnNet, card: str, config: wallet_config.WalletConfig) -> AsyncIterator[Served]:
    """``card``'s web wallet in the test's process (a :class:`WalletWeb` on a real socket, on the card's real
    host) with ``config``: where the printed link of that card's ``cardnet wallet ui`` may be spent already."""

    async def open_wallet() -> Wallet:
        return await _wallet(net, card)

    web = WalletWeb(open_wallet, config, app_socket=net.hosts[card].socket, recover_wait_s=1.0)
    try:
        yield await web.start("127.0.0.1", 0)
    finally:
        await web.aclose()


async def _logged_in(context: BrowserContext, login: str, card: str) -> Page:
    """A tab of ``context`` logged in with the one-time link ``login``, once it shows ``card``."""
    page = await context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    await page.goto(login)
    await expect(page.locator("#card")).to_have_text(card)
    await expect(page.locator("#link")).to_have_text("live")
    return page


def test_the_page_offers_an_exchange_and_loads_the_e_purse(world: World, session_a: tuple[httpx.Client, str]) -> None:
    """a's page (its ``cardnet wallet ui``) offers T5 for b's T6; b's page (b's web wallet in this process, with
    b's wallet config) accepts it: both cards' holdings are checked against both pages. b's page then loads its
    e-purse from b's account at the broker."""
    net = world.net
    a, b = str(net.uids["a"]), str(net.uids["b"])
    c, _ = session_a
    link_a = c.post("/api/link", json={}).json()["login"]

    async def go() -> None:
        for oid, to in ((T5, "a"), (T6, "b")):
            assert (await net.ask("agent", MINT, oid=oid, body=BODIES[oid]))["ok"]
            assert (await net.ask("agent", SEND, oid=oid, to=net.uids[to]))["ok"]
            await net.settle(to, oid)
        b_config = wallet_config.load(net.tmp / "b-wallet.toml")
        async with _web(net, "b", b_config) as served_b, async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM)
            context = await browser.new_context()
            page_a = await _logged_in(context, link_a, a)
            page_b = await _logged_in(context, served_b.login_url, b)
            assert T5.hex() in await _until_page_shows(page_a, net, "a")
            assert T6.hex() in await _until_page_shows(page_b, net, "b")

            # a's page offers T5 for T6: first to a card its host cannot reach (refused, nothing locked), then to b
            await page_a.select_option("#offer-give", T5.hex())
            await page_a.fill("#offer-want", T6.hex())
            await page_a.fill("#offer-to", "ee" * 12 + ":00000000")
            await page_a.click("#offer-button")
            await expect(page_a.locator("#message.error")).to_contain_text(
                f"this host cannot reach {'ee' * 12}:00000000: no card of domain {'ee' * 12} here and no route to it; "
                "nothing was offered: your voucher stays usable; check the other owner's card Uid"
            )
            assert (await _listing(net, "a"))[T5.hex()] == "enabled"
            await page_a.fill("#offer-to", b)
            await page_a.click("#offer-button")
            await expect(page_a.locator("#message.ok")).to_contain_text(
                f"offered your {T5.hex()} for {T6.hex()} of {b}: it is swapped once the other owner accepts"
            )
            async with await _wallet(net, "a") as wa:
                (x,) = [x for x in await wa.exchanges() if x.give == T5 and not x.finished]
            assert (x.role, x.want, x.peer) == ("initiator", T6, net.uids["b"])
            mine = page_a.locator(f'#under-way tr[data-id="{x.n1.hex()}"]')  # a's page: under way, Take back
            await expect(mine).to_contain_text("waiting for the other owner")
            await expect(mine.locator("button.give-up")).to_be_visible()
            await expect(page_a.locator(f'#tickets tr[data-oid="{T5.hex()}"]')).to_have_attribute(
                "data-status", "exchanging"
            )
            assert (await _listing(net, "a"))[T5.hex()] == "exchanging"  # locked on a's card, as the page says
            await expect(page_a.locator(f'#offer-give option[value="{T5.hex()}"]')).to_have_count(0)

            # b's page shows the offer (b's card took nothing yet) and accepts it
            offer = page_b.locator(f'#offers li[data-id="{x.n1.hex()}"]')
            await expect(offer.locator("strong.get")).to_have_text(BODIES[T5].decode())
            await expect(offer.locator("strong.give")).to_have_text(BODIES[T6].decode())
            await expect(offer).to_contain_text(a)
            assert T5.hex() not in await _listing(net, "b")
            await offer.locator("button.accept").click()
            await expect(page_b.locator("#message.ok")).to_have_text(ACCEPTED)
            async with await _wallet(net, "a") as wa:
                assert (await wa.wait(x.n1, timeout_s=20)).swapped
            held_a = await _until_page_shows(page_a, net, "a")  # both pages as both cards list them
            held_b = await _until_page_shows(page_b, net, "b")
            assert held_a[T6.hex()] == "enabled" and T5.hex() not in held_a
            assert held_b[T5.hex()] == "enabled" and T6.hex() not in held_b
            await expect(mine).to_have_count(0)
            await expect(offer).to_have_count(0)
            await expect(page_a.locator(f'#tickets tr[data-oid="{T6.hex()}"] td.body')).to_have_text(
                BODIES[T6].decode()
            )

            # b's page loads the e-purse (b's account at the broker); a's card has none: no Load on its page
            await expect(page_a.locator("#load-form")).to_be_hidden()
            before = await _balance(net, "b")
            await expect(page_b.locator("#purse")).to_have_text(str(sm.Price("EUR", before)))
            await page_b.fill("#load-amount", "ten euros")
            await page_b.click("#load-button")
            await expect(page_b.locator("#message.error")).to_contain_text("write it like '10.00 EUR'")
            await page_b.fill("#load-amount", "10.00 EUR")
            await page_b.click("#load-button")
            after = str(sm.Price("EUR", before + 1_000))
            await expect(page_b.locator("#message.ok")).to_have_text(f"loaded 10.00 EUR: your e-purse holds {after}")
            await expect(page_b.locator("#purse")).to_have_text(after)
            assert await _balance(net, "b") == before + 1_000
            async with await _wallet(net, "b") as wb:
                assert not (await wb.ask(pa.PENDING_LOADS, pa.L1S))["l1"]  # credited, nothing left under way
            await browser.close()

    asyncio.run(go())


def test_the_offer_and_load_routes_refuse_what_they_cannot_do(
    world: World, session_a: tuple[httpx.Client, str]
) -> None:
    """``/api/exchange/offer`` and ``/api/load`` refuse as ``/api/send`` does: no session, another origin, bad
    input (each with a message saying what to do), a voucher this card does not hold, a card its host cannot
    reach; a load on a card without an e-purse, or without a broker in the wallet config. Nothing moves."""
    net = world.net
    c, _ = session_a
    own = world.ui_a.url.rstrip("/")
    b = str(net.uids["b"])
    listing = asyncio.run(_listing(net, "a"))
    other = next(oid for oid in listing if oid != T4.hex())  # (a holds T4 and always another voucher)
    offer = {"give": T4.hex(), "want": T2.hex() if T2.hex() != other else T1.hex(), "to": b}
    exchanges = len(asyncio.run(_exchanges(net, "a")))
    with httpx.Client(base_url=world.ui_a.url, timeout=30) as stranger:
        for path, body in (("/api/exchange/offer", offer), ("/api/load", {"amount": "10.00 EUR"})):
            r = stranger.post(path, json=body)
            assert r.status_code == 401 and r.json()["error"] == "no_session", (path, r.text)
            r = c.post(path, json=body, headers={"Origin": "http://evil.example"})
            assert r.status_code == 403 and r.json()["error"] == "cross_site", (path, r.text)
            r = c.post(path, json=body, headers={"Origin": f"{own.rsplit(':', 1)[0]}:1"})  # another port
            assert r.status_code == 403 and r.json()["error"] == "cross_site", (path, r.text)
            r = c.post(path, content=json.dumps(body), headers={"Content-Type": "text/plain"})
            assert r.status_code == 415, (path, r.text)
    refused: list[tuple[object, int, str, str]] = [
        ({**offer, "give": "zz"}, 400, "bad_id", "the voucher you give (choose one in the list): 32 hex digits"),
        ({**offer, "want": None}, 400, "bad_id", "the voucher you want: its id as the other card's owner sees it"),
        ({**offer, "to": ""}, 400, "bad_uid", "give the other card's Uid"),
        ({**offer, "to": "zz"}, 400, "bad_uid", "'zz' is not a card's Uid: it is 24 hex digits"),
        ({**offer, "want": T4.hex()}, 400, "same_voucher", "an exchange swaps two different vouchers"),
        ({**offer, "to": str(net.uids["a"])}, 400, "to_self", "that Uid is this card: give the other card's Uid"),
        ({**offer, "give": "00" * 16}, 409, "not_held", f"this card does not hold {'00' * 16}"),
        ({**offer, "want": other}, 409, "have_it", f"this card holds {other} already"),
        ({**offer, "to": "ee" * 12 + ":00000000"}, 409, "no_route",
         "nothing was offered: your voucher stays usable; check the other owner's card Uid (they see it at the top "
         f'of their wallet), or add "{"ee" * 12}" = "HOST:PORT" (their host\'s address) to [routes]'),
        ([offer], 400, "bad_request", "the wallet takes a JSON object"),
    ]  # fmt: skip
    for sent, status, reason, said in refused:
        r = c.post("/api/exchange/offer", json=sent, headers={"Origin": own})
        assert (r.status_code, r.json()["error"]) == (status, reason), (sent, r.text)
        assert said in r.json()["message"], (sent, r.text)
    assert asyncio.run(_listing(net, "a"))[T4.hex()] == "enabled"  # nothing locked, nothing offered
    assert len(asyncio.run(_exchanges(net, "a"))) == exchanges
    how = "write it like '10.00 EUR'"
    for amount, needed in (("10,00", ("a price is an amount and an ISO 4217 code", how)),
                          ("", ("give the amount to load", how)), (10, ("give the amount to load", how)),
                          ("1.234 EUR", ("at most 2 decimals", how)),
                          ("0.00 EUR", ("an amount is 1..", "got 0", how))):  # fmt: skip
        r = c.post("/api/load", json={"amount": amount})
        assert (r.status_code, r.json()["error"]) == (400, "bad_amount"), (amount, r.text)
        assert all(w in r.json()["message"] for w in needed), (amount, r.text)
    r = c.post("/api/load", json={"amount": "10.00 EUR"})  # a's card has no e-purse
    assert (r.status_code, r.json()["error"]) == (409, "no_purse") and "this card has no e-purse" in r.text

    # b's card has one, but a wallet config without a broker: the page says what to set
    async def unconfigured() -> None:
        nowhere = wallet_config.load(net.tmp / "no-broker.toml")
        async with _web(net, "b", nowhere) as served, httpx.AsyncClient(base_url=served.url, timeout=30) as web:
            token = served.login_url.partition("#login=")[2]
            web.headers["Authorization"] = (
                "Bearer " + (await web.post("/api/login", json={"token": token})).json()["session"]
            )
            before = await _balance(net, "b")
            r = await web.post("/api/load", json={"amount": "10.00 EUR"})
            assert (r.status_code, r.json()["error"]) == (409, "not_configured"), r.text
            assert "needs broker and account: `cardnet wallet config --set broker=...`" in r.json()["message"]
            assert str(nowhere.path) in r.json()["message"]
            assert await _balance(net, "b") == before

    asyncio.run(unconfigured())


async def _exchanges(net: TrnNet, card: str) -> list[bytes]:
    async with await _wallet(net, card) as w:
        return [x.n1 for x in await w.exchanges()]
