"""The web wallet's page and its small JSON API, over the wallet library (``cardnet wallet ui``, docs/web-wallet.md).

Theory of operation. One process holds one logged-in :class:`~cardnet.services.wallet.Wallet` on the person's
card (the PIN was given when it started; it is never sent to the browser) and serves, on a loopback address,
behind the session of :mod:`.session`:

* ``GET /`` the page (plain HTML; ``/static/wallet.js`` and ``/static/wallet.css`` from this package, no CDN): the
  same for everyone, holding no secret and nothing of the card, so it is served without the session;
* ``POST /api/login`` a one-time login token (from the link's fragment) exchanged for a tab's session secret, and
  ``POST /api/link`` a new login token drawn for another tab; every other ``/api`` route needs the session;
* ``GET /api/state`` what the card holds and what is under way, as JSON with a ``version`` that changes when
  any of it changes. The page asks for it every second and redraws when the version moved. The server reads
  the card again when the card pushed a change (the wallet library's events: a token or an exchange changed),
  after every action, and otherwise every ``refresh_s`` (the e-purse's balance and the purchases are not
  pushed); so a second's polling costs the card nothing when nothing happened. A transfer or exchange under way
  whose other card cannot write its store (its host said so: :meth:`Wallet.peer_store_failed`) carries ``error``
  ``peer_store_failed`` and ``problem`` in words, an exchange waiting for the decision of a TTP whose card cannot
  write ``ttp_store_failed``: the actions below never wait for the other card;
* ``POST /api/send``, ``/api/exchange/offer``, ``/accept``, ``/reject``, ``/give-up``, ``/api/ticket/accept``,
  ``/reject``, ``/api/load`` (the e-purse, from the wallet config's account at its broker), ``/api/recover``, and
  buying (:mod:`.shop`: ``/api/shop``, ``/api/buy``, ``/api/deliver``): one order each, answered
  ``{"message": ...}`` in words, or an error ``{"error": reason, "message": what happened and what to do}`` the
  page shows as it is.

An exchange offered to this card is held by the card as *proposed* (nothing locked, the offered voucher not
taken) until the owner answers: the page is the prompt of TENeT's approach 2a, shown before the card takes the
offer (docs/decisions.md says why it is not a host Guard). A host that went away is reconnected to on the next
request (the page says so meanwhile). Every port is bounded (:data:`LIMITS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from cardnet.cli.fairx import (
    PHASE_WORDS,
    REFUSAL_WORDS,
    OrderRefused,
    Spelling,
    exchange_row,
    look_words,
    next_step,
    no_route,
    order_exchange,
)
from cardnet.cli.trn import STATUS_WORDS, token_rows
from cardnet.cli.wallet_config import WalletConfig, admissions
from cardnet.cli.wallet_gate import no_answer_hint, refusal
from cardnet.cli.wallet_pay import load_unreachable_hint
from cardnet.cli.wallet_pending import (
    balances,
    owed_tickets,
    pending_loads,
    pending_purchases,
    recover_card,
    recover_deliveries,
    recover_payments,
)
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.speed.messages import Price, parse_price
from cardnet.services.admissions import AdmissionsError
from cardnet.services.speed.customer import PurchaseError, install_key
from cardnet.services.speed.customer import load as purse_load
from cardnet.services.ticketing.sales import ticket_oid
from cardnet.services.wallet import (
    GATE_STORE_FAILED,
    MOVING,
    PEER_STORE_FAILED,
    TTP_STORE_FAILED,
    WAITING_FOR_TTP,
    Wallet,
    WalletError,
    exchange_store_failed,
    transfer_store_failed,
    ttp_store_failed,
)
from cardnet.transport.errors import TransportError
from cardnet.transport.http import HttpError, HttpLimits, HttpServer, Request, Response, Router
from cardnet.web.session import Session, expire_stale_cookie, loopback
from cardnet.web.shop import Shop, parse_url
from cardnet.wire import DecodeError, Uid

log = logging.getLogger("cardnet.web")

# one person's browser: a few connections (a browser opens up to 6 to a host), small JSON bodies, prompt requests
LIMITS = HttpLimits(max_connections=16, max_per_peer=16, max_header_bytes=8 * 1024, max_body_bytes=4 * 1024,
                    request_timeout_s=10.0, idle_timeout_s=60.0, send_timeout_s=10.0)  # fmt: skip
REFRESH_S = 3.0  # the card is read at least this often while the page polls (balances are not pushed)
RECOVER_WAIT_S = 10.0  # how long the page's recover resends before it reports what is still under way
TTP_AFTER_S = 5.0
ADMISSIONS_SHOWN = 10  # the newest tickets used at gates the page lists (`cardnet wallet list --json`: all)
GATE_WAIT_S = 10.0  # how long a gate may take to answer a ticket shown to it (then the ticket is taken back)
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")  # fmt: skip
# on every answer, errors included (the server's own 400, 408, 413, 431, 500 and 503 too); the page has its own CSP
ANSWER_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
SECURITY_HEADERS = (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
                    ("X-Frame-Options", "DENY"), ("Referrer-Policy", "no-referrer"),
                    ("Content-Security-Policy", ANSWER_CSP))  # fmt: skip
STATIC = {"wallet.js": "text/javascript; charset=utf-8", "wallet.css": "text/css; charset=utf-8"}

# what the person does about a card's refusal (the card's reason -> a sentence for the page)
HINTS = {
    "illegal_move": "the ticket or exchange is not in a state that allows this: the page shows how it stands",
    "no_exchange": "that exchange is not on this card any more: the page shows the current offers",
    "no_ttp": "name the TTP, the same one as the other owner's: `cardnet exchange set-ttp --socket SOCKET --ttp UID` "
    "(a wallet made with `cardnet wallet init --ttp UID` has one)",
    "privileged": "the card no longer takes the owner's orders from this page: restart `cardnet wallet ui`",
    "refused": "the card refused it: the page shows how the ticket or exchange stands now",
}
# what the person does about the broker's answer to an e-purse load (its reason -> a sentence for the page)
LOAD_HINTS = {
    "unknown_account": "check `account` in the wallet config (`cardnet wallet config --set account=...`), then "
    "restart `cardnet wallet ui`",
    "not_your_account": "that account at the broker belongs to another card: check `account` in the wallet config "
    "(`cardnet wallet config --set account=...`), then restart `cardnet wallet ui`",
    "insufficient": "your account at the broker holds too little: load less (the card keeps this load and asks "
    "again at Recover and the next load: it is credited once the account holds enough)",
    "bad_address": "fix `broker` in the wallet config (`cardnet wallet config --set broker=HOST:PORT`), then restart "
    "`cardnet wallet ui`",
}
# a ticket paid for that did not arrive, under way (this run's purchase, or the wallet's purchases' owed ones)
UNDELIVERED = (
    "paid, the ticket did not arrive: Finish the delivery brings it (it is safe to repeat), and so does Recover"
)
Opener = Callable[[], Awaitable[Wallet]]


class _PageSpelling(Spelling):
    """The exchange words of ``cardnet exchange`` (:mod:`cardnet.cli.fairx`) with this page's buttons for its
    commands: Accept, Reject, Take back, Recover (which puts an exchange cut off half-way to the TTP)."""

    def words(self, n1: bytes) -> dict[str, str]:
        return {"accept": "Accept", "reject": "Reject", "give_up": "Take back", "status": "the page",
                "resolve": "Recover", "abort": "Recover", "holdings": "your list", "list": "the page",
                "id": n1.hex()}  # fmt: skip


PAGE = _PageSpelling()


def exchange_words(x: Any) -> str:
    """How exchange ``x`` stands and what its owner may do next, in the words of ``cardnet exchange``."""
    then = next_step(x, PAGE)
    return str(exchange_row(x)["state"]) + (f"; next: {then}" if then else "")


@dataclass(frozen=True)
class Served:
    """Where the page is: ``url`` and the one-time ``login_url`` to open in the browser."""

    url: str
    login_url: str


class WalletWeb:
    """The web wallet of one card (see the module): :meth:`start` on a loopback address, :meth:`aclose`."""

    def __init__(
        self,
        open_wallet: Opener,
        config: WalletConfig | None = None,
        *,
        app_socket: str | None = None,
        limits: HttpLimits = LIMITS,
        refresh_s: float = REFRESH_S,
        recover_wait_s: float = RECOVER_WAIT_S,
        ttp_after_s: float = TTP_AFTER_S,
        gate_wait_s: float = GATE_WAIT_S,
    ) -> None:
        self._open = open_wallet
        self.config = config
        self._shop = Shop(config, app_socket)
        self.limits = limits
        self.refresh_s = refresh_s
        self.recover_wait_s = recover_wait_s
        self.ttp_after_s = ttp_after_s
        self.gate_wait_s = gate_wait_s
        self.session: Session | None = None
        self._server: HttpServer | None = None
        self._wallet: Wallet | None = None
        self._opening = asyncio.Lock()
        self._reading = asyncio.Lock()
        self._state: dict[str, Any] | None = None
        self._read_at = 0.0
        self._stale = True
        self.version = 0
        self._watcher: asyncio.Task[None] | None = None
        pkg = resources.files("cardnet.web") / "static"
        self._static = {name: (pkg / name).read_bytes() for name in STATIC}
        self._page = (pkg / "wallet.html").read_text("utf-8")

    # -- life -----------------------------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> Served:
        """Open the wallet and listen on ``host:port`` (a loopback address, else :class:`ValueError`)."""
        host = loopback(host)
        await self._wallet_now()
        self._server = HttpServer(
            self.router(), limits=self.limits, headers=SECURITY_HEADERS, answer_headers=expire_stale_cookie
        )
        bound = await self._server.start(host, port)
        self.session = Session(host, bound[1])
        self._watcher = asyncio.get_running_loop().create_task(self._watch())
        return Served(self.session.url, self.session.login_url)

    async def aclose(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self._server is not None:
            await self._server.aclose()
        if self._wallet is not None:
            with contextlib.suppress(Exception):  # (its host may be gone already)
                await self._wallet.close()
            self._wallet = None

    def router(self) -> Router:
        r = _GuardedRouter(self._check)
        # without the session: the page and its script and style (the same for everyone: no secret in them, a
        # browser's navigation cannot carry the session's header), and the login that opens a session
        r.add("GET", "/", _guarded(self._check_host, self.page))
        r.add("GET", "/static/{name}", _guarded(self._check_host, self.static))
        r.add("POST", "/api/login", self.login)
        for method, path, handler in (
            ("GET", "/api/state", self.state),
            ("POST", "/api/link", self.link),
            ("POST", "/api/send", self.send),
            ("POST", "/api/enter", self.enter),
            ("POST", "/api/exchange/offer", self.offer_exchange),
            ("POST", "/api/exchange/accept", self.accept_exchange),
            ("POST", "/api/exchange/reject", self.reject_exchange),
            ("POST", "/api/exchange/give-up", self.give_up_exchange),
            ("POST", "/api/ticket/accept", self.accept_ticket),
            ("POST", "/api/ticket/reject", self.reject_ticket),
            ("POST", "/api/recover", self.recover),
            ("POST", "/api/load", self.load),
            ("POST", "/api/shop", self.shop),
            ("POST", "/api/buy", self.buy),
            ("POST", "/api/deliver", self.deliver),
        ):
            r.add(method, path, _guarded(self._check, handler))
        return r

    def _session(self) -> Session:
        if self.session is None:
            raise HttpError(503, "starting", "the wallet is starting: reload in a moment")
        return self.session

    def _check(self, request: Request) -> None:
        self._session().check(request)

    def _check_host(self, request: Request) -> None:
        self._session().check_host(request)

    # -- the card -------------------------------------------------------------------------------------------------
    async def _wallet_now(self) -> Wallet:
        async with self._opening:
            if self._wallet is None:
                self._wallet = await self._open()
            return self._wallet

    @contextlib.asynccontextmanager
    async def _card(self) -> AsyncIterator[Wallet]:
        """The wallet, its failures as HTTP errors a person can act on (a host gone: reconnected next time)."""
        try:
            wallet = await self._wallet_now()
        except WalletError as exc:
            raise HttpError(502, exc.reason, f"cannot open your card: {exc}; is `cardnet host run` running? "
                            "the page tries again by itself") from None  # fmt: skip
        try:
            yield wallet
        except TimeoutError:  # (before OSError, of which it is a kind)
            raise HttpError(504, "timeout", "your card's host did not answer in time: try again; if it keeps "
                            "happening, restart `cardnet host run`") from None  # fmt: skip
        except (WalletError, TransportError, OSError) as exc:  # a host gone breaks the wallet's connection
            if not isinstance(exc, WalletError) or exc.reason == "no_host":
                await self._drop(wallet)
                raise HttpError(502, "no_host", f"{exc}: is your host (`cardnet host run`) still running? the page "
                                "reconnects by itself once it is back") from None  # fmt: skip
            if isinstance(exc, OrderRefused):  # an exchange order out of turn: why, and what to do instead
                then = next_step(exc.exchange, PAGE) or look_words(exc.exchange, PAGE)
                raise HttpError(409, exc.reason, f"{exc}; {then}") from None
            hint = HINTS.get(exc.reason, HINTS["refused"])
            if exc.reason in REFUSAL_WORDS:  # the card's own detail is protocol talk
                raise HttpError(409, exc.reason, f"{REFUSAL_WORDS[exc.reason]}; {hint}") from None
            raise HttpError(409, exc.reason, f"the card refused: {exc}; {hint}") from None

    @contextlib.asynccontextmanager
    async def _order(self) -> AsyncIterator[Wallet]:
        """:meth:`_card` for an order that may change the card: the state is read again after it."""
        try:
            async with self._card() as wallet:
                yield wallet
        finally:
            self._stale = True

    async def _drop(self, wallet: Wallet) -> None:
        async with self._opening:
            if self._wallet is wallet:
                self._wallet = None
        with contextlib.suppress(Exception):
            await wallet.close()

    async def _watch(self) -> None:
        """Mark the state stale whenever the card pushes a change (and follow a reconnected wallet)."""
        while True:
            wallet = self._wallet
            if wallet is None:
                await asyncio.sleep(self.refresh_s)
                continue
            try:
                async with wallet.subscription() as changes:
                    while self._wallet is wallet:
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(self.refresh_s):
                                await changes.get()
                                self._stale = True
            except Exception as exc:  # (a host gone: the wallet is opened again by the next request) never ends it
                log.info("web wallet: watching the card failed (%s); trying again", exc)
                await asyncio.sleep(self.refresh_s)

    async def _read(self, wallet: Wallet) -> dict[str, Any]:
        rows = await token_rows(wallet)
        xs = await wallet.exchanges()
        purse = await balances(wallet)
        loads = await pending_loads(wallet)
        purchases = pending_purchases(self.config) if self.config is not None else []
        mine = {r["oid"]: r for r in rows}
        tickets = [_ticket(r) for r in rows if r["status"] != "offered"]
        offers: list[dict[str, Any]] = []
        under_way: list[dict[str, Any]] = []
        said: dict[bytes, bool] = {}
        ttp: list[Uid | None] = []  # the card's TTP, read once, when an exchange waits for its decision

        async def cannot_write(peer: bytes) -> bool:  # the peer's host said it cannot write (host.route: no card step)
            if peer not in said:
                said[peer] = await wallet.peer_store_failed(peer)
            return said[peer]

        for x in xs:
            if x.finished:
                continue
            if x.role == "responder" and x.phase == "proposed":
                yours = mine.get(x.give.hex(), {})
                offers.append({
                    "kind": "exchange", "id": x.n1.hex(), "peer": str(x.peer),
                    "get_oid": x.want.hex(), "get_body": _what(_text(x.body)),
                    "give_oid": x.give.hex(), "give_body": _what(yours.get("body", "")),
                    "holds_it": yours.get("status") == "enabled",
                })  # fmt: skip
            else:
                under_way.append({"what": "exchange", "id": x.n1.hex(), "peer": str(x.peer),
                                  "state": PHASE_WORDS.get(x.phase, x.phase), "give": x.give.hex(),
                                  "want": x.want.hex(), "next": next_step(x, PAGE),
                                  "can_give_up": x.role == "initiator" and x.phase == "offered"})  # fmt: skip
                if x.peer is not None and await cannot_write(x.peer.domain):
                    under_way[-1] |= {"error": PEER_STORE_FAILED, "problem": exchange_store_failed(x)}
                elif x.phase in WAITING_FOR_TTP:
                    if not ttp:
                        ttp.append(await wallet.ttp())
                    if ttp[0] is not None and await cannot_write(ttp[0].domain):
                        under_way[-1] |= {"error": TTP_STORE_FAILED, "problem": ttp_store_failed(x, ttp[0])}
        for r in rows:
            if r["status"] == "offered":
                offers.append({"kind": "ticket", "oid": r["oid"], "body": _what(r["body"]), "peer": r["peer"]})
            elif r["status"] in MOVING:
                under_way.append({"what": "transfer", "id": r["oid"], "peer": r["peer"], "state": r["state"]})
                if r["peer"] and await cannot_write(Uid.parse(r["peer"]).domain):
                    v = await wallet.voucher(bytes.fromhex(r["oid"]))  # how it stands says what becomes of it
                    if v is not None and v.status in MOVING:
                        how = (f" (to cancel it: `cardnet trn cancel --oid {r['oid']}`)"
                               if v.status == "disabled+O" else "")  # fmt: skip
                        under_way[-1] |= {"error": PEER_STORE_FAILED, "problem": transfer_store_failed(v) + how}
        if loads:
            under_way.append({"what": "e-purse load", "id": f"{len(loads)} load(s)",
                              "state": "not credited yet: recover finishes it"})  # fmt: skip
        for p in purchases:
            under_way.append({"what": "purchase", "id": p["id"], "state": f"{p['products']}: delivered, not paid yet "
                              "(recover pays it, never twice)"})  # fmt: skip
        for poid, url in list(self._shop.undelivered.items()):
            if ticket_oid(poid).hex() in mine:  # it arrived (Finish the delivery, or `cardnet wallet buy --poid`)
                del self._shop.undelivered[poid]
                continue
            under_way.append({"what": "ticket delivery", "id": poid.hex(), "url": url, "state": UNDELIVERED})
        listed = {u["id"] for u in under_way if u["what"] == "ticket delivery"}
        # the wallet's purchases' owed tickets (an earlier run's too, as `cardnet wallet show`)
        for o in owed_tickets(self.config) if self.config is not None else []:
            if o["id"] not in listed and o["url"] and ticket_oid(bytes.fromhex(o["id"])).hex() not in mine:
                under_way.append({"what": "ticket delivery", "id": o["id"], "url": o["url"], "state": UNDELIVERED})
        purse_view = None
        if purse is not None:
            purse_view = {"keyed": purse["keyed"],
                          "balances": [str(Price(c, a)) for c, a in sorted(purse["balances"].items())]}  # fmt: skip
        return {"card": str(wallet.card), "tickets": tickets, "offers": offers, "under_way": under_way,
                "purse": purse_view, "admissions": self._admissions(wallet.card.domain, set(mine))}  # fmt: skip

    def _admissions(self, card: bytes, held: set[str]) -> dict[str, Any]:
        """The tickets this card gave to gates, from the wallet's own record (as ``cardnet wallet list``): the newest
        :data:`ADMISSIONS_SHOWN` (newest first) and how many more there are; a damaged record says so in
        ``problem`` (the admissions stand: only the wallet's memory of them is unreadable)."""
        memory = None if self.config is None else admissions(self.config)
        try:
            gone = [] if memory is None else [a for a in memory.of_card(card) if a.oid not in held]
        except AdmissionsError as exc:
            return {"rows": [], "earlier": 0, "problem": f"{exc}; the gates' own records still hold the admissions"}
        rows = [{"oid": a.oid, **a.fields()} for a in reversed(gone)]
        return {"rows": rows[:ADMISSIONS_SHOWN], "earlier": max(0, len(rows) - ADMISSIONS_SHOWN), "problem": None}

    async def _read_once(self) -> dict[str, Any]:
        """The card read; once more on a new connection if the host's was gone (it may be back: a restart)."""
        try:
            async with self._card() as wallet:
                return await self._read(wallet)
        except HttpError as exc:
            if exc.reason != "no_host":
                raise
        async with self._card() as wallet:
            return await self._read(wallet)

    async def current(self) -> dict[str, Any]:
        """The state (read again if the card changed, after an action, or ``refresh_s`` after the last read)."""
        loop = asyncio.get_running_loop()
        async with self._reading:
            gone = self._wallet is not None and self._wallet.app.conn.closed  # the host went away: say so now
            if self._state is None or self._stale or gone or loop.time() - self._read_at >= self.refresh_s:
                self._stale = False  # (a change pushed while the card is read makes it stale again)
                try:
                    fresh = await self._read_once()
                except BaseException:
                    self._stale = True
                    raise
                self._read_at = loop.time()
                if fresh != self._state:
                    self._state = fresh
                    self.version += 1
            assert self._state is not None
            return {**self._state, "version": self.version,
                    "read_at": datetime.now(UTC).strftime("%H:%M:%S")}  # fmt: skip

    # -- pages ----------------------------------------------------------------------------------------------------
    async def login(self, request: Request) -> Response:
        """``{"token"}`` of a login link -> ``{"session"}``, the tab's secret for the ``Authorization`` header."""
        secret = self._session().login(request)
        return _json({"session": secret, "message": "logged in: this tab holds its session until it is closed"})

    async def link(self, request: Request) -> Response:
        """A new one-time login token for another tab (the page opens ``/#login=TOKEN`` in it)."""
        session = self._session()
        url = session.new_link()
        return _json({"token": session.login_token, "login": url,
                      "message": "another tab opens with its own one-time login"})  # fmt: skip

    async def page(self, request: Request) -> Response:
        return Response.html(self._page, headers=(("Content-Security-Policy", PAGE_CSP),))

    async def static(self, request: Request) -> Response:
        name = request.params["name"]
        if name not in self._static:
            raise HttpError(404, "not_found", f"there is no /static/{name}")
        return Response(200, self._static[name], STATIC[name])

    async def state(self, request: Request) -> Response:
        return _json(await self.current())

    # -- actions --------------------------------------------------------------------------------------------------
    async def send(self, request: Request) -> Response:
        body = _body(request)
        oid = _hex16(body.get("oid"), "the ticket to send (choose one in the list)")
        to = _uid(body.get("to"))
        async with self._order() as wallet:
            await _movable(wallet, oid, to, "sent")
            await wallet.transfer(oid, to)
        return _json({"message": f"sending {oid.hex()} to {to}: it leaves your list once the other card has it"})

    async def enter(self, request: Request) -> Response:
        """Walk through a gate (as ``cardnet wallet enter``): the gate's card takes the ticket, or refuses it."""
        body = _body(request)
        oid = _hex16(body.get("oid"), "the ticket to show at the gate (choose one in the list)")
        gate = _uid(body.get("gate"))
        async with self._order() as wallet:
            await _movable(wallet, oid, gate, "presented")
            try:
                memory = None if self.config is None else admissions(self.config)  # (the holder's own record)
                got = await wallet.redeem(oid, gate, timeout_s=self.gate_wait_s, memory=memory)
            except WalletError as exc:
                if exc.reason != "no_answer":
                    raise
                route = None if gate.domain == wallet.card.domain else await wallet.route(gate.domain)
                raise HttpError(504, "no_answer", f"{exc}; {no_answer_hint(gate, route)}") from None
        if not got.taken:  # (503: the gate cannot take tickets now, try later; 409: this ticket is refused)
            words, hint = refusal(got.reason)
            status = 503 if got.reason == GATE_STORE_FAILED else 409
            raise HttpError(status, got.reason.partition(":")[0].strip() or "refused",
                            f"the gate refused {oid.hex()}: {words}; the ticket is still on your card"
                            + (f"; {hint}" if hint else ""))  # fmt: skip
        return _json({"message": f"admitted: the gate took {oid.hex()} (it is used up now: walk in)"})

    async def offer_exchange(self, request: Request) -> Response:
        """Offer a voucher of this card for one of another card (as ``cardnet wallet exchange offer``): it is
        locked until the other owner accepts (the swap) or rejects, or this owner takes it back."""
        body = _body(request)
        give = _hex16(body.get("give"), "the voucher you give (choose one in the list)")
        want = _hex16(body.get("want"), "the voucher you want: its id as the other card's owner sees it in their list")
        to = _uid(body.get("to"), "the other card's Uid (its owner sees it at the top of their wallet)")
        if give == want:
            raise HttpError(400, "same_voucher", "an exchange swaps two different vouchers: give the id of the other "
                            "card's voucher you want")  # fmt: skip
        async with self._order() as wallet:
            await _movable(wallet, give, to, "offered", routed=False)
            unreachable = await no_route(wallet, to, "they see it at the top of their wallet")
            if unreachable is not None:  # (the words of `cardnet wallet exchange offer`)
                raise HttpError(409, "no_route", "; ".join(unreachable))
            if await wallet.voucher(want) is not None:
                raise HttpError(409, "have_it", f"this card holds {want.hex()} already: ask for a voucher the other "
                                "card holds")  # fmt: skip
            x = await wallet.offer(give, want, to)
        return _json({"message": f"offered your {give.hex()} for {want.hex()} of {to}: it is swapped once the other "
                      "owner accepts (until then Take back, under way, gives it back to you)", "id": x.n1.hex(),
                      "phase": x.phase})  # fmt: skip

    async def accept_exchange(self, request: Request) -> Response:
        n1 = _hex16(_body(request).get("id"), "the exchange's id")
        async with self._order() as wallet:
            x = await order_exchange(wallet, "accept", n1, 0)
        return _json({"message": exchange_words(x), "phase": x.phase})

    async def reject_exchange(self, request: Request) -> Response:
        n1 = _hex16(_body(request).get("id"), "the exchange's id")
        async with self._order() as wallet:
            x = await order_exchange(wallet, "reject", n1, 0)
        return _json({"message": exchange_words(x), "phase": x.phase})

    async def give_up_exchange(self, request: Request) -> Response:
        n1 = _hex16(_body(request).get("id"), "the exchange's id")
        async with self._order() as wallet:
            x = await order_exchange(wallet, "give_up", n1, 0)
        return _json({"message": exchange_words(x), "phase": x.phase})

    async def accept_ticket(self, request: Request) -> Response:
        return await self._answer_ticket(request, accept=True)

    async def reject_ticket(self, request: Request) -> Response:
        return await self._answer_ticket(request, accept=False)

    async def _answer_ticket(self, request: Request, *, accept: bool) -> Response:
        oid = _hex16(_body(request).get("oid"), "the offered ticket")
        async with self._order() as wallet:
            await wallet.answer_offer(oid, accept=accept)
        done = "taken: it is yours once traced" if accept else "refused: it goes back to the sender"
        return _json({"message": f"{oid.hex()} {done}"})

    async def load(self, request: Request) -> Response:
        """Load the e-purse from the wallet config's account at its broker (as ``cardnet wallet load``; the purse's
        key is fetched from the broker's SAM first, the first time)."""
        price = _amount(_body(request).get("amount"))
        async with self._order() as wallet:
            purse = await balances(wallet)
            if purse is None:
                raise HttpError(409, "no_purse", "this card has no e-purse: its host runs one with the applets "
                                '"purse" and "speed" (applets in the host\'s config)')  # fmt: skip
            broker, account = self._load_settings()
            try:
                if not purse["keyed"]:
                    await install_key(wallet, broker)
                await purse_load(wallet, broker, price, account)
            except PurchaseError as exc:
                status = 502 if exc.reason == "unreachable" else 409
                hint = LOAD_HINTS.get(exc.reason, "nothing was loaded: the page shows what is under way")
                if exc.reason == "unreachable":  # (as `cardnet wallet load`: the broker, its address, from where)
                    source = f"broker in {self.config.path}" if self.config is not None else "the wallet config"
                    hint = load_unreachable_hint(broker, source, "Recover")
                raise HttpError(status, exc.reason, f"the e-purse was not loaded: {exc}; {hint}") from None
            purse = await balances(wallet) or {"balances": {}}
        words = ", ".join(str(Price(c, a)) for c, a in sorted(purse["balances"].items())) or "nothing"
        return _json({"message": f"loaded {price}: your e-purse holds {words}",
                      "balances": [str(Price(c, a)) for c, a in sorted(purse["balances"].items())]})  # fmt: skip

    def _load_settings(self) -> tuple[str, str]:
        """The broker and the account an e-purse load uses (the wallet config's), or 409 saying how to set them."""
        cfg = self.config
        values = {k: cfg.get(k) if cfg is not None else None for k in ("broker", "account")}
        missing = [k for k, v in values.items() if v is None]
        if missing:
            where = f" ({cfg.path})" if cfg is not None else ""
            raise HttpError(409, "not_configured", f"to load the e-purse, the wallet config{where} needs "
                            f"{' and '.join(missing)}: `cardnet wallet config --set {missing[0]}=...`, then restart "
                            "`cardnet wallet ui`")  # fmt: skip
        return str(values["broker"]), str(values["account"])

    async def recover(self, request: Request) -> Response:
        async with self._order() as wallet:
            rows = await recover_card(wallet, self.recover_wait_s, self.ttp_after_s)
            if self.config is not None:
                try:
                    rows += await recover_payments(wallet, self.config)
                    if self._shop.app_socket is not None:  # then the tickets paid for and not delivered (as the CLI)
                        rows += await recover_deliveries(self._shop.app_socket, self.config)
                except SystemExit:  # a command-line helper failed (it printed why to this process's output)
                    raise HttpError(500, "recover_failed", "finishing payments failed: see the output of "
                                    "`cardnet wallet ui`, or run `cardnet wallet recover`") from None  # fmt: skip
        left = sum(1 for r in rows if not r["finished"])
        if not rows:
            message = "nothing was left to finish"
        elif left:
            message = (
                f"{left} of {len(rows)} still under way: press Recover again once the party each waits for "
                "(named under Recover) is reachable"
            )  # (as `cardnet wallet recover` ends)
        else:
            message = f"finished {len(rows)}"
        shown = [{"what": r["what"], "id": r["id"], "outcome": r["outcome"], "finished": r["finished"]} for r in rows]
        return _json({"message": message, "recovered": shown})

    # -- buying a ticket from a ticketing server (web/shop.py) -----------------------------------------------------
    async def shop(self, request: Request) -> Response:
        """A ticketing server's events and their free seats (the page cannot ask another server itself)."""
        return _json(await self._shop.events(parse_url(_body(request).get("url"))))

    async def buy(self, request: Request) -> Response:
        """Buy a seat: SPEED at the list price from the e-purse, then the ticket relayed to the card."""
        body = _body(request)
        url, event, seat = parse_url(body.get("url")), body.get("event"), body.get("seat")
        if not isinstance(event, str) or not event or not isinstance(seat, str) or not seat:
            raise HttpError(400, "bad_request", "choose an event and a seat (Show events lists them)")
        async with self._order() as wallet:
            got = await self._shop.buy(wallet, url, event, seat)
        return _json(got, 502 if "error" in got else 200)

    async def deliver(self, request: Request) -> Response:
        """Finish the delivery of a paid sale (as ``cardnet wallet buy URL --poid``): the ticket relayed again."""
        body = _body(request)
        url, value = parse_url(body.get("url")), body.get("poid")
        try:
            poid = bytes.fromhex(value) if isinstance(value, str) else b""
        except ValueError:
            poid = b""
        if not poid or len(poid) > 64:
            raise HttpError(400, "bad_poid", "give the sale's id (its PaymentOrderID, in hex, as the page named it)")
        async with self._order():
            return _json(await self._shop.deliver(url, poid))


class _GuardedRouter(Router):
    """A router whose unknown paths and methods (a CORS preflight's ``OPTIONS`` among them) are refused like every
    API request without the session (401; 403 from another origin), and only then answered 404 or 405: never
    with an ``Access-Control-Allow-*`` header."""

    def __init__(self, check: Callable[[Request], None]) -> None:
        super().__init__()
        self._check = check

    def route(self, method: str, path: str) -> Any:
        handler, found = super().route(method, path)
        if handler is not None:
            return handler, found
        allowed = list(found) if isinstance(found, list) else []

        async def refuse(request: Request) -> Response:
            self._check(request)
            if not allowed:
                raise HttpError(404, "not_found", f"there is nothing at {request.path}: open / for the wallet")
            raise HttpError(405, "method_not_allowed", f"{request.path} takes {', '.join(allowed)}",
                            (("Allow", ", ".join(allowed)),))  # fmt: skip

        return refuse, {}


def _guarded(check: Callable[[Request], None], handler: Callable[[Request], Awaitable[Response]]) -> Any:
    async def guarded(request: Request) -> Response:
        check(request)
        return await handler(request)

    return guarded


async def _movable(wallet: Wallet, oid: bytes, to: Uid, done: str, *, routed: bool = True) -> None:
    """409 (what to do) unless ``oid`` is usable on this card and ``to`` another card its host can reach (``routed``
    False: the caller says that in its own words)."""
    held = await wallet.voucher(oid)
    if held is None:
        raise HttpError(409, "not_held", f"this card does not hold {oid.hex()} (any more): the list shows what it "
                        "holds")  # fmt: skip
    if held.status != "enabled":
        words = STATUS_WORDS.get(held.status, held.status)
        raise HttpError(409, "not_movable", f"{oid.hex()} cannot be {done} now: {words}; wait for it, or press "
                        "Recover")  # fmt: skip
    if not to.is_card:  # (as `cardnet wallet send`; the card would refuse it in protocol words)
        raise HttpError(400, "not_a_card", f"{to} is an application's Uid, not a card's: give the card's Uid (its "
                        f"domain and :00000000); {oid.hex()} was not {done}")  # fmt: skip
    if to.card_uid() == wallet.card:
        raise HttpError(400, "to_self", "that Uid is this card: give the other card's Uid")
    if routed and to.domain != wallet.card.domain and (await wallet.route(to.domain))["where"] == "none":
        raise HttpError(409, "no_route", f"your host cannot reach {to}: check the Uid, or add "
                        f'"{to.domain.hex()}" = "HOST:PORT" to [routes] in your host\'s config and restart it; '
                        f"the ticket was not {done}")  # fmt: skip


def _json(data: dict[str, Any], status: int = 200) -> Response:
    return Response.json(data, status)  # (with SECURITY_HEADERS, as every answer of the server)


def _body(request: Request) -> dict[str, Any]:
    data = request.json()
    if not isinstance(data, dict):
        raise HttpError(400, "bad_request", "the wallet takes a JSON object (send with the page's buttons)")
    return data


def _hex16(value: Any, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 16:
        raise HttpError(400, "bad_id", f"{what}: 32 hex digits expected")
    return raw


def _uid(value: Any, what: str = "the receiving card's Uid (its owner sees it at the top of their wallet)") -> Uid:
    if not isinstance(value, str) or not value.strip():
        raise HttpError(400, "bad_uid", f"give {what}")
    try:
        return Uid.parse(value.strip())
    except DecodeError:
        raise HttpError(400, "bad_uid", f"{value.strip()[:80]!r} is not a card's Uid: it is 24 hex digits, a colon "
                        "and 8 hex digits (e.g. 0123456789abcdef01234567:00000000)") from None  # fmt: skip


def _amount(value: Any) -> Price:
    """An amount to load from the page (``"10.00 EUR"``), or 400 saying how to write it."""
    how = "write it like '10.00 EUR' (an amount with at most two decimals and a currency code)"
    if not isinstance(value, str) or not value.strip():
        raise HttpError(400, "bad_amount", f"give the amount to load: {how}")
    try:
        return parse_price(value.strip())  # (more than 0: a Price is at least 1 minor unit)
    except ProtocolError as exc:
        raise HttpError(400, "bad_amount", f"{exc}: {how}") from None


def _text(body: bytes | None) -> str:
    return "" if body is None else body.decode("utf-8", "replace")


def _what(body: str) -> str:
    """A ticket's body for a person: a ticketing server's ``{"event", "seat", ...}`` as "event, seat S"."""
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if isinstance(data, dict) and isinstance(data.get("event"), str) and isinstance(data.get("seat"), str):
        return f"{data['event']}, seat {data['seat']}"
    return body


def _ticket(row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {k: row[k] for k in ("oid", "status", "body", "state", "peer") if k in row}
    out["what"] = _what(row.get("body", ""))
    out["movable"] = row["status"] == "enabled"
    if "hint" in row:
        out["hint"] = row["hint"]
    return out
