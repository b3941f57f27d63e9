"""Every answer of the web wallet, errors included, carries ``Cache-Control: no-store`` and the security headers.

Through the real server: the ``cardnet wallet ui`` process of card a (on its own host process), spoken to with
httpx and raw sockets, and, for the answers that need tight bounds or a failing handler (``408``, ``503``, ``500``),
a :class:`~cardnet.web.wallet.WalletWeb` in this process on a real socket, on the same card and host.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from test_web_wallet import Ui, start_ui

from cardnet.bench.procs import stop_process
from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.services.wallet import Wallet
from cardnet.transport.http import HttpLimits, Request, Response
from cardnet.web.wallet import WalletWeb
from cardnet.wire import Uid

SECURITY = {"cache-control": "no-store", "x-content-type-options": "nosniff", "x-frame-options": "DENY",
            "referrer-policy": "no-referrer"}  # fmt: skip


@dataclass
class Net:
    net: TrnNet
    ui: Ui
    client: httpx.Client  # logged in (its session's Authorization header)
    secret: str
    traced: bool = False  # the agent registered and the authority set on the cards (the first ticket issued does it)

    @property
    def port(self) -> int:
        return int(self.ui.url.rstrip("/").rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    net = TrnNet(tmp_path_factory.mktemp("answers"), wallets=("a",))
    with net:
        ui = start_ui(net, "a")
        try:
            with httpx.Client(base_url=ui.url, timeout=30) as c:
                secret = c.post("/api/login", json={"token": ui.token}).json()["session"]
                c.headers["Authorization"] = f"Bearer {secret}"
                yield Net(net, ui, c, secret)
        finally:
            stop_process(ui.proc)


def secured(headers: httpx.Headers, what: object, *, page: bool = False) -> None:
    """``headers`` carry no-store and the security headers once each, a CSP that no page may frame, and no CORS."""
    for name, value in SECURITY.items():
        assert headers.get_list(name) == [value], (what, name, headers)
    (csp,) = headers.get_list("content-security-policy")
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, (what, csp)
    assert ("script-src 'self'" in csp) == page, (what, csp)
    assert not [h for h in headers if h.lower().startswith("access-control-")], (what, headers)


def raw(port: int, data: bytes, *, timeout_s: float = 15.0) -> tuple[int, httpx.Headers, bytes]:
    """``data`` sent on a new connection to 127.0.0.1:``port``; the answer's status, headers and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(data)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return parse(answer)


def parse(answer: bytes) -> tuple[int, httpx.Headers, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/1.1 "), answer[:80]
    pairs = [(k.strip(), v.strip()) for k, _, v in (x.partition(":") for x in lines[1:])]
    return int(lines[0][9:12]), httpx.Headers(pairs), body


def test_every_answer_of_the_wallet_process_carries_no_store_and_the_security_headers(a: Net) -> None:
    c, uid = a.client, str(a.net.uids["a"])
    to = f"{'0' * 23}1:00000000"
    with httpx.Client(base_url=a.ui.url, timeout=30) as stranger:
        answers = [
            (stranger.get("/"), 200, None),
            (stranger.head("/"), 200, None),
            (stranger.get("/static/wallet.js"), 200, None),
            (c.get("/api/state"), 200, None),
            (stranger.get("/api/state"), 401, "no_session"),
            (stranger.post("/api/send", json={"oid": "00" * 16, "to": to}), 401, "no_session"),
            (stranger.get("/nothing-here"), 401, "no_session"),
            (c.get("/api/state", headers={"Host": f"evil.example:{a.port}"}), 403, "wrong_host"),
            (c.post("/api/send", json={}, headers={"Origin": "http://evil.example"}), 403, "cross_site"),
            (stranger.post("/api/login", json={"token": "x" * 43}), 403, "bad_login"),
            (stranger.get("/static/nothing.js"), 404, "not_found"),
            (c.get("/api/nothing-here"), 404, "not_found"),
            (c.get("/api/send"), 405, "method_not_allowed"),
            (c.options("/api/state"), 405, "method_not_allowed"),
            (c.post("/api/send", content=b"{", headers={"Content-Type": "application/json"}), 400, "bad_json"),
            (c.post("/api/send", json={"oid": "zz", "to": to}), 400, "bad_id"),
            (c.post("/api/send", json={"oid": "00" * 16, "to": "zz"}), 400, "bad_uid"),
            (c.post("/api/send", json={"oid": "00" * 16, "to": uid}), 409, "not_held"),
            (c.post("/api/send", content=b"{}", headers={"Content-Type": "text/plain"}), 415, "not_json"),
            (stranger.get("/api/state", headers={"Accept": "text/html"}), 401, "html"),  # a browser's error page
        ]
    for r, status, reason in answers:
        what = (r.request.method, r.request.url.path, status)
        assert r.status_code == status, (what, r.text)
        if reason == "html":
            assert r.headers["content-type"].startswith("text/html") and "not logged in" in r.text
        elif reason is not None:
            assert r.json()["error"] == reason, (what, r.text)
        secured(r.headers, what, page=r.request.url.path == "/" and status == 200)
    # what the HTTP server answers itself: a request that is not HTTP, a head over 8 KiB (whole, or never ending),
    # a body over 4 KiB (refused on its Content-Length, before a byte of it is read; none is sent here: unread
    # bytes at the close would reset the connection and could lose the answer)
    host = f"Host: 127.0.0.1:{a.port}\r\n".encode()
    auth = f"Authorization: Bearer {a.secret}\r\n".encode()
    for data, status in ((b"NOT HTTP AT ALL\r\n\r\n", 400),
                         (b"GET /api/state HTTP/1.1\r\n" + host + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
                         (b"GET /api/state HTTP/1.1\r\n" + host + b"X-Big: " + b"a" * 9000, 431),
                         (b"POST /api/send HTTP/1.1\r\n" + host + auth + b"Content-Type: application/json\r\n"
                          b"Content-Length: 5000\r\n\r\n", 413)):  # fmt: skip
        got, headers, _ = raw(a.port, data)
        assert got == status, (data[:30], got)
        secured(headers, (data[:30], status))

    # the host gone: 502, as the page reports it; back: answered again
    a.net.hosts["a"].kill()
    try:
        r = c.get("/api/state")
        assert r.status_code == 502 and r.json()["error"] == "no_host", r.text
        secured(r.headers, "502")
    finally:
        a.net.hosts["a"].restart()
    assert c.get("/api/state").status_code == 200


def test_the_answers_that_need_tight_bounds_or_a_failing_handler_carry_them_too(a: Net) -> None:
    """408 (a request that never ends), 503 (a connection over the cap), 500 (a handler that fails): a WalletWeb
    in this process with small bounds, on a real socket, on card a's host."""
    limits = HttpLimits(max_connections=2, max_per_peer=2, max_header_bytes=8 * 1024, max_body_bytes=4 * 1024,
                        request_timeout_s=0.5, idle_timeout_s=5.0, send_timeout_s=5.0)  # fmt: skip

    async def open_wallet() -> Wallet:
        return await Wallet.open(a.net.hosts["a"].socket, pin=PIN, card=a.net.uids["a"].domain)

    async def exchange(port: int, data: bytes) -> tuple[int, httpx.Headers, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(data)
            await writer.drain()
            async with asyncio.timeout(10):
                return parse(await reader.read())
        finally:
            writer.close()

    async def go() -> None:
        web = WalletWeb(open_wallet, limits=limits)

        async def fails(request: Request) -> Response:
            raise RuntimeError("a bug in a handler")

        web.recover = fails  # type: ignore[method-assign]
        served = await web.start("127.0.0.1", 0)
        port = int(served.url.rstrip("/").rsplit(":", 1)[1])
        try:
            async with httpx.AsyncClient(base_url=served.url, timeout=10) as c:
                token = served.login_url.partition("#login=")[2]
                secret = (await c.post("/api/login", json={"token": token})).json()["session"]
                r = await c.post("/api/recover", json={}, headers={"Authorization": f"Bearer {secret}"})
                assert r.status_code == 500 and r.json()["error"] == "internal", r.text
                secured(r.headers, "500")
            host = f"Host: 127.0.0.1:{port}\r\n".encode()
            got, headers, body = await exchange(port, b"POST /api/send HTTP/1.1\r\n" + host + b"Content-Length: 9\r\n"
                                                b"Content-Type: application/json\r\n\r\n{")  # fmt: skip
            assert got == 408 and json.loads(body)["error"] == "request_timeout", body
            secured(headers, "408")
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            try:
                async with asyncio.timeout(5):
                    while web._server is not None and web._server.held < 2:
                        await asyncio.sleep(0.01)
                got, headers, body = await exchange(port, b"GET /api/state HTTP/1.1\r\n" + host + b"\r\n")
                assert got == 503 and json.loads(body)["error"] == "busy", body
                secured(headers, "503")
            finally:
                for _, writer in held:
                    writer.close()
        finally:
            await web.aclose()

    asyncio.run(go())


STALE = "cardnet_wallet"  # the session cookie of older versions
EXPIRED = f"{STALE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict"


def test_a_stale_session_cookie_is_expired_and_never_honoured(a: Net) -> None:
    """Older versions kept the session in the cookie ``cardnet_wallet``: every answer to a request carrying it
    expires it, errors included, and it never logs anyone in (not even holding a live session secret)."""
    c, secret = a.client, a.secret
    with httpx.Client(base_url=a.ui.url, timeout=30) as stranger:
        for cookie in (f"{STALE}={secret}", f"theme=dark; {STALE}=old", f"{STALE}="):
            r = stranger.get("/api/state", headers={"Cookie": cookie})
            assert r.status_code == 401 and r.json()["error"] == "no_session", (cookie, r.text)
            assert r.headers.get_list("set-cookie") == [EXPIRED], (cookie, r.headers)
            secured(r.headers, cookie)
        old = {"Cookie": f"{STALE}=old"}
        for r in (stranger.get("/", headers=old), stranger.get("/static/nothing.js", headers=old),
                  c.get("/api/state", headers=old), c.post("/api/send", json={"oid": "zz"}, headers=old),
                  c.get("/api/state", headers={**old, "Host": f"evil.example:{a.port}"})):  # fmt: skip
            assert r.headers.get_list("set-cookie") == [EXPIRED], (r.request.url.path, r.status_code, r.headers)
        assert [r.status_code for r in (c.get("/api/state"), stranger.get("/"))] == [200, 200]
        for cookie in (None, "theme=dark", f"{STALE}_x=1", f"x{STALE}=1"):  # no stale cookie: no Set-Cookie at all
            headers = {"Cookie": cookie} if cookie else {}
            for r in (c.get("/api/state", headers=headers), stranger.get("/", headers=headers)):
                assert "set-cookie" not in r.headers, (cookie, r.headers)
    # a refused request whose head was read (a body over 4 KiB) expires it too
    host = f"Host: 127.0.0.1:{a.port}\r\nCookie: {STALE}=old\r\n".encode()
    got, headers, _ = raw(a.port, b"POST /api/send HTTP/1.1\r\n" + host + b"Content-Length: 5000\r\n\r\n")
    assert got == 413 and headers.get_list("set-cookie") == [EXPIRED]


def test_the_browser_drops_a_stale_session_cookie(a: Net) -> None:
    """Chromium holding the old versions' cookie (as they set it) opens the wallet: the cookie is gone after the
    first answer, a tab without a login is not logged in by it, and a login link logs the tab in without it."""
    from playwright.async_api import async_playwright, expect
    from test_web_wallet import CHROMIUM, NOT_LOGGED_IN, TIMEOUT_MS, _tab_session

    link = a.client.post("/api/link", json={}).json()["login"]

    async def go() -> None:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM)
            context = await browser.new_context()
            stale = {"name": STALE, "value": a.secret, "domain": "127.0.0.1", "path": "/", "httpOnly": True,
                     "sameSite": "Strict"}  # fmt: skip
            await context.add_cookies([stale])  # (holding a live session secret: the worst case)
            page = await context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            answer = await page.goto(a.ui.url)
            assert answer is not None
            assert f"{STALE}=" in (await answer.request.all_headers()).get("cookie", "")  # the browser sent it
            assert await answer.header_value("set-cookie") == EXPIRED
            await expect(page.locator("#link")).to_have_text("not logged in")
            await expect(page.locator("#message.error")).to_contain_text(NOT_LOGGED_IN)
            await expect(page.locator("#card")).to_have_text("…")
            assert not await context.cookies()  # expired by the page's own answer
            await context.add_cookies([stale])  # back (another old tab?): a login link logs in without it
            await page.goto(link)
            await expect(page.locator("#link")).to_have_text("live")
            await expect(page.locator("#card")).to_have_text(str(a.net.uids["a"]))
            assert await _tab_session(page) not in ("", a.secret)
            assert not await context.cookies()
            await browser.close()

    asyncio.run(go())


def test_bad_inputs_in_the_forms_are_answered_in_words_never_500(a: Net) -> None:
    """What a person (or a stray script) may type or send, to the ``cardnet wallet ui`` process: JSON nested deeper
    than the decoder goes (a few KiB of ``[``, within the body bound), a ticketing server's address whose host is no
    host name (a label of 64 letters, a space in it) or whose port is 0: each a 400 saying what is wrong. Before:
    ``500 internal`` for the first two (RecursionError; the idna codec's UnicodeError from the name's lookup), 'nothing
    answers at exa mple.com:80 (unknown error -2)' for the space, and port 0 quietly read as port 80; an amount to load
    written with a decimal comma (before: 'an amount of EUR has at most 2 decimals, ..., got '10,50''). And Show events
    at an address where nothing answers says to check it, not that a paid sale is not lost (nothing is paid there),
    and at a name that does not resolve says so (before: 'nothing answers at tickets.invalid:8080 (unknown error
    -2)', os.strerror of the resolver's code)."""
    c = a.client
    r = c.post("/api/send", content=b"[" * 4000, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "bad_json" and "nested too deep" in r.json()["message"], r.text
    for url, said in (
        (f"http://{'a' * 64}:8080", "is not a host name"),
        ("http://exa mple.com:8080", "is not a host name"),
        ("http://127.0.0.1:0", "has no valid port (a number from 1 to 65535)"),
        ("http://127.0.0.1:99999", "has no valid port"),
    ):
        for path, extra in (("/api/shop", {}), ("/api/buy", {"event": "final", "seat": "A1"}),
                            ("/api/deliver", {"poid": "ab" * 40})):  # fmt: skip
            r = c.post(path, json={"url": url, **extra})
            got = r.json()
            assert r.status_code == 400 and got["error"] == "bad_url", (path, url, r.text)
            assert said in got["message"] and "give it as http://HOST:PORT" in got["message"], (path, url, r.text)
    r = c.post("/api/load", json={"amount": "10,50 EUR"})  # a decimal comma, as many write euros
    got = r.json()
    assert r.status_code == 400 and got["error"] == "bad_amount" and "(no comma), got '10,50'" in got["message"], r.text
    assert "at most 2 decimals" not in got["message"], r.text
    with socket.socket() as s:  # a port where nothing answers
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    r = c.post("/api/shop", json={"url": f"http://127.0.0.1:{closed}"})
    got = r.json()
    assert r.status_code == 502 and got["error"] == "unreachable" and "check the address" in got["message"], r.text
    assert "paid" not in got["message"], r.text
    r = c.post("/api/shop", json={"url": "http://tickets.invalid:8080"})  # a name that resolves nowhere (RFC 6761)
    got = r.json()
    assert r.status_code == 502 and "the name tickets.invalid does not resolve" in got["message"], r.text
    assert "unknown error" not in got["message"], r.text


def test_the_page_says_what_to_do_when_what_was_typed_is_too_long(a: Net) -> None:
    """Chromium, logged in to the ``cardnet wallet ui`` process: 5,000 characters pasted into the ticketing server's
    address (the request is then over the wallet's 4 KiB body bound, 413) are said to be too long, with what to
    check. Before, the page showed the HTTP server's words: 'the body is 5017 bytes, this server takes 4096'."""
    from playwright.async_api import async_playwright, expect
    from test_web_wallet import CHROMIUM, TIMEOUT_MS

    link = a.client.post("/api/link", json={}).json()["login"]

    async def go() -> None:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM)
            try:
                page = await browser.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                await page.goto(link)
                await expect(page.locator("#link")).to_have_text("live")
                await page.fill("#shop-url", "http://" + "x" * 5000)
                await page.click("#shop-button")
                said = page.locator("#message.error")
                await expect(said).to_contain_text("What you typed is too long for the wallet", timeout=TIMEOUT_MS)
                await expect(said).to_contain_text("check what you pasted")
                assert "bytes" not in await said.inner_text()
            finally:
                await browser.close()

    asyncio.run(go())


def test_a_form_with_no_ticket_chosen_says_so_in_the_pages_words(a: Net) -> None:
    """Chromium, logged in to the ``cardnet wallet ui`` process of a card holding nothing yet (each ticket list holds
    only 'choose a ticket'): Send, Enter and Offer with every other field filled say the page's own words (Choose the
    ticket to send, ... to show at the gate, Choose the voucher you give). Before: the lists were ``required``, so
    the browser stopped the form with its own bubble and the page said nothing."""
    from playwright.async_api import async_playwright, expect
    from test_web_wallet import CHROMIUM, TIMEOUT_MS

    link = a.client.post("/api/link", json={}).json()["login"]
    other = "0badc0de0badc0de0badc0de:00000000"

    async def go() -> None:
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM)
            try:
                page = await browser.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                await page.goto(link)
                await expect(page.locator("#link")).to_have_text("live")
                await expect(page.locator("#no-tickets")).to_be_visible()
                for select in ("#send-oid", "#enter-oid", "#offer-give"):
                    await expect(page.locator(f"{select} option")).to_have_count(1)  # 'choose a ticket' alone
                said = page.locator("#message")
                for fields, button, words in (
                    ({"#send-to": other}, "#send-button", "Choose the ticket to send."),
                    ({"#enter-gate": other}, "#enter-button", "Choose the ticket to show at the gate."),
                    ({"#offer-want": "22" * 16, "#offer-to": other}, "#offer-button", "Choose the voucher you give."),
                ):
                    await page.evaluate("document.getElementById('message').hidden = true")
                    for field, value in fields.items():
                        await page.fill(field, value)
                    await page.click(button)
                    await expect(said).to_have_text(words)
                    await expect(said).to_have_class("error")
            finally:
                await browser.close()

    asyncio.run(go())


def _holds(a: Net, oid: bytes, body: bytes) -> None:
    """The agent mints ``oid`` and sends it to card a (settled there)."""
    from cardnet.applets.trn import MINT, SEND

    async def go() -> None:
        if not a.traced:
            await a.net.setup_trace()
            a.traced = True
        assert (await a.net.ask("agent", MINT, oid=oid, body=body))["ok"]
        assert (await a.net.ask("agent", SEND, oid=oid, to=a.net.uids["a"]))["ok"]
        await a.net.settle("a", oid)

    asyncio.run(go())


def _status(a: Net, oid: bytes) -> str | None:
    """How ticket ``oid`` stands on card a, as its card lists it (None: not held)."""

    async def go() -> str | None:
        async with await Wallet.open(a.net.hosts["a"].socket, pin=PIN, card=a.net.uids["a"].domain) as w:
            v = await w.voucher(oid)
            return None if v is None else str(v.status)

    return asyncio.run(go())


def test_a_gate_that_does_not_answer_is_named_with_where_the_host_sends_to_it(a: Net) -> None:
    """Walk through a gate that does not answer (the authority's card: no gate on it) from the ``cardnet wallet ui``
    process: 504 no_answer, in the words of ``cardnet wallet enter`` (:func:`cardnet.cli.wallet_gate.no_answer_hint`):
    the gate's Uid and the address a's host sends to it; the ticket taken back. Before: 'is the gate running, and
    does your host have a route ...', naming neither."""
    oid = bytes.fromhex("9e" * 16)
    _holds(a, oid, b"Cup final, seat G1")
    gate = a.net.uids["authority"]
    r = a.client.post("/api/enter", json={"oid": oid.hex(), "gate": str(gate)})
    got = r.json()
    assert r.status_code == 504 and got["error"] == "no_answer", r.text
    auth = f"127.0.0.1:{a.net.hosts['auth'].port}"
    assert f"is the gate {gate} running (your host sends to it at {auth} ([routes] in your host.toml))? check the " \
        "gate's Uid and address" in got["message"], r.text  # fmt: skip
    assert _status(a, oid) == "enabled"  # taken back


def test_a_word_that_is_no_address_is_refused_saying_the_form_to_give(a: Net) -> None:
    """A ticketing server's 'address' with neither ``http://`` nor ``:PORT`` (``notaurl``, ``tickets.example``) is
    refused bad_url, saying the form to give, by ``cardnet wallet buy`` (a real process, for a person and --json)
    and by the page's Show events, Buy and Finish the delivery (the ``cardnet wallet ui`` process); ``HOST:PORT``
    without ``http://`` is still an address. Before: read as HOST, port 80 (the CLI went on to buy there: here it
    then said the wallet config has no broker; the page asked notaurl:80)."""
    env = {**os.environ, "CARDNET_PIN": PIN}
    wallet = ("--config", str(a.net.tmp / "a-wallet.toml"), "--socket", a.net.hosts["a"].socket,
              "--card", a.net.uids["a"].domain.hex())  # fmt: skip
    for word in ("notaurl", "tickets.example"):
        said = f"{word!r} is not a ticketing server's address (it has neither http:// nor a :PORT)"
        cmd = [sys.executable, "-m", "cardnet.cli.main", "wallet", "buy", word, "--event", "final", "--seat", "A1",
               *wallet]  # fmt: skip
        got = subprocess.run([*cmd, "--json"], check=False, capture_output=True, text=True, env=env, timeout=60)
        assert got.returncode == 2, (got.stdout, got.stderr)
        e = json.loads(got.stdout)["error"]
        assert e["reason"] == "bad_url" and e["message"] == said, e
        assert e["hint"] == "give the server's address as http://HOST:PORT", e
        got = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, timeout=60)
        assert got.returncode == 2 and f"error: {said}" in got.stderr and "Traceback" not in got.stderr, got.stderr
        for path, extra in (("/api/shop", {}), ("/api/buy", {"event": "final", "seat": "A1"}),
                            ("/api/deliver", {"poid": "ab" * 40})):  # fmt: skip
            r = a.client.post(path, json={"url": word, **extra})
            assert r.status_code == 400 and r.json() == {"error": "bad_url", "message": f"{said}: give it as "
                                                         "http://HOST:PORT"}, (path, r.text)  # fmt: skip
    with socket.socket() as s:  # HOST:PORT is an address: asked (nothing answers there)
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    r = a.client.post("/api/shop", json={"url": f"127.0.0.1:{closed}"})
    assert r.status_code == 502 and r.json()["error"] == "unreachable", r.text


def test_an_offer_to_a_card_the_host_cannot_reach_is_refused_in_the_words_of_the_command_line(a: Net) -> None:
    """The page's Offer (the ``cardnet wallet ui`` process) to a card a's host cannot reach (no card of its domain
    there, no route: a mistyped Uid): 409 no_route before the card is asked, in the words of ``cardnet wallet exchange
    offer`` (:func:`cardnet.cli.fairx.no_route`, shared): nothing offered, the voucher usable, the [routes] line to
    add; the card holds no exchange of it. Before: the page's own words ('your host cannot reach ...: check the Uid,
    ... the ticket was not offered'), not the command line's."""
    from cardnet.cli.fairx import no_route

    give = bytes.fromhex("9f" * 16)
    _holds(a, give, b"voucher: one coffee")
    nowhere = "0badc0de0badc0de0badc0de:00000000"
    r = a.client.post("/api/exchange/offer", json={"give": give.hex(), "want": "22" * 16, "to": nowhere})
    got = r.json()
    assert r.status_code == 409 and got["error"] == "no_route", r.text
    assert got["message"] == (
        f"this host cannot reach {nowhere}: no card of domain {nowhere[:24]} here and no route to it; nothing was "
        "offered: your voucher stays usable; check the other owner's card Uid (they see it at the top of their "
        f'wallet), or add "{nowhere[:24]}" = "HOST:PORT" (their host\'s address) to [routes] in your host\'s config '
        "and restart it"
    ), r.text
    assert _status(a, give) == "enabled"

    async def exchanges() -> list[bytes]:
        async with await Wallet.open(a.net.hosts["a"].socket, pin=PIN, card=a.net.uids["a"].domain) as w:
            assert await no_route(w, Uid.parse(nowhere), "x") is not None  # (the CLI's check, on the same host)
            return [x.give for x in await w.exchanges()]

    assert give not in asyncio.run(exchanges())


def test_a_ticket_sent_offered_or_shown_to_an_applications_uid_is_refused_before_the_card(a: Net) -> None:
    """Send, Offer and Enter (the ``cardnet wallet ui`` process) naming an application's Uid (a domain and
    :00000001, not a card's): 400 not_a_card before the card is asked, saying so and to give the card's Uid, as
    ``cardnet wallet send`` does; the ticket stays usable. Before: 409 'the card refused: ... is not a card (...):
    send a token to a card; the card refused it: the page shows how the ticket or exchange stands now'."""
    oid = bytes.fromhex("9d" * 16)
    _holds(a, oid, b"Cup final, seat D4")
    app = f"{a.net.uids['authority'].domain.hex()}:00000001"
    for path, body, done in (
        ("/api/send", {"oid": oid.hex(), "to": app}, "sent"),
        ("/api/exchange/offer", {"give": oid.hex(), "want": "22" * 16, "to": app}, "offered"),
        ("/api/enter", {"oid": oid.hex(), "gate": app}, "presented"),
    ):
        r = a.client.post(path, json=body)
        said = f"{app} is an application's Uid, not a card's: give the card's Uid (its domain and :00000000); "
        assert r.status_code == 400 and r.json() == {"error": "not_a_card", "message": f"{said}{oid.hex()} was not "
                                                     f"{done}"}, (path, r.text)  # fmt: skip
        assert _status(a, oid) == "enabled", path
