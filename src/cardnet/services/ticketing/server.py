"""The ticketing server process: HTTP pages and JSON, a SPEED vendor, and TRN delivery over ``Upgrade: TRN``.

Theory of operation. One process runs four things on one event loop:

* the **device's host** (:class:`~cardnet.host.server.HostServer`, from the ``host`` config): the agent card
  that mints the tickets, its application socket and its routes (to the authority);
* the **SPEED vendor** (:class:`~cardnet.services.speed.vendor.VendorServer`) on ``speed_listen``; its
  catalogue holds one entry per seat (``event/seat``) and its ``on_sale`` hook
  (:func:`~cardnet.services.ticketing.sales.claim`) claims the seat in the delivery's own transaction: first
  wins, the others are refused before they pay;
* the **ticketing application**: a :class:`~cardnet.services.wallet.Wallet` on the device (over the host's
  socket, with the PIN), which mints and sends the tickets;
* the **HTTP server** (:class:`~cardnet.transport.http.HttpServer`) on ``listen``: the pages and JSON, and
  ``POST /tickets/{poid}`` which, once the sale is paid, answers ``101 Switching Protocols`` with
  ``Upgrade: TRN`` and hands the connection to the device's host (:meth:`HostServer.carry`) as the route to
  the buyer's card: the device's transfer runs over it, relayed by the buyer's program to its own host.

The store is used only inside the vendor's group commits (:meth:`~cardnet.services.serving.GroupCommitServer.call`):
a page's read or a receipt's record runs in the vendor's worker thread, one call at a time between the vendor's
own requests, in the same transaction as the other work waiting with it, and its result comes back once that
transaction has committed. See docs/ticketing.md.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from html import escape
from typing import Any, TypeVar
from urllib.parse import quote

from cardnet.applets.trn import GONE
from cardnet.crypto.errors import CryptoError, PkiError
from cardnet.host.config import load_config as load_host_config
from cardnet.host.errors import HostError
from cardnet.host.server import HostServer
from cardnet.protocols.errors import ProtocolError
from cardnet.services.speed import vendor as sv
from cardnet.services.speed.stored import scan
from cardnet.services.ticketing import sales
from cardnet.services.ticketing.config import Event, TicketingConfig, TicketingError
from cardnet.services.wallet import Event as WalletEvent
from cardnet.services.wallet import Voucher, Wallet, WalletError
from cardnet.store import Store, StoreError, Txn, open_store
from cardnet.transport import Limits, TransportError
from cardnet.transport.http import (
    HttpError,
    HttpServer,
    Request,
    Response,
    Router,
    Upgrade,
    UpgradedStream,
    upgrade_required,
)
from cardnet.transport.http_upgrade import TRN, trn_connection
from cardnet.wire import DecodeError

log = logging.getLogger("cardnet.ticketing")

T = TypeVar("T")
STORE_FAILED = (
    "the ticketing server cannot write its store (its disk may be full): nothing of this request was kept; send it "
    "again later, once its operator has freed space (a paid sale stays owed: `cardnet wallet buy URL --poid SALE` "
    "brings its ticket then)"
)
RELEASE_EVERY_S = 1.0  # how often the seats of bills past their deadline (and the margin) are looked for
CHECK_EVERY_S = 1.0  # an upgraded connection checks the device's tokens at least this often (besides pushes)
MAX_RECEIPT = 8192  # bytes of a receipt (about 900 in practice)
# bytes of one message on an upgraded connection (a delivery's largest is the session's accept, about 750): a larger
# one is read past (nothing of it held) and its sender told, so connections held open by a buyer who never lets the
# ticket arrive hold at most this much each, not the host's frame limit (16 MiB)
UPGRADED_MAX_FRAME = 64 * 1024
TRN_DEVICE, TRN_TOKEN = "TRN-Device", "TRN-Token"  # the 101's headers: the device's domain, the ticket's oid
# a request about a sale shows the broker's receipt for it: "Authorization: Receipt BASE64" (or {"receipt"} in a POST)
AUTHORIZATION, RECEIPT_SCHEME = "Authorization", "Receipt"
SEAT_PAGE = 1000  # seats on one page of an event's seat map (?after=SEAT: the next page; about 75 KB of JSON)


def seat_content(event: Event, seat: str) -> bytes:
    """What a seat's SPEED product delivers (and its catalogue entry commits to): the seat, described."""
    return json.dumps({"event": event.id, "name": event.name, "date": event.date, "seat": seat}).encode()


class TicketingServer:
    """See the module. ``start()``, then ``serve_forever()``; ``stop()`` from a signal; ``aclose()``."""

    def __init__(self, config: TicketingConfig, *, pin: str) -> None:
        self.config = config
        self.pin = pin
        self.store: Store | None = None
        self.core: sv.VendorCore | None = None
        self.vendor: sv.VendorServer | None = None
        self.host: HostServer | None = None
        self.wallet: Wallet | None = None
        self.http: HttpServer | None = None
        self.device_domain = b""
        self._speed_address: tuple[str, int] | None = None
        self._stopping = asyncio.Event()
        self._transfers: set[asyncio.Task[Any]] = set()
        self._sending: dict[bytes, asyncio.Lock] = {}  # sales whose ticket a connection is minting or sending
        self._seat_at = {e.id: {s: i for i, s in enumerate(e.seats)} for e in config.events}  # (for ?after=)
        self._releaser: asyncio.Task[None] | None = None

    # -- life cycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise

    async def _start(self) -> None:
        cfg = self.config
        try:
            self.store = open_store(cfg.store, kind="speed-vendor", create=False)
        except StoreError as exc:
            err = TicketingError(exc.reason, f"the config's store: {exc}")
            err.hint = exc.hint
            if exc.reason == "missing":
                err.hint = "make the vendor's store first: `cardnet speed vendor init --store ...`"
            raise err from None
        added = await asyncio.to_thread(self._catalogue)
        if added:
            log.info("%s: %d seat(s) put in the catalogue", cfg.name, added)
        self.core = sv.VendorCore(self.store, clock=time.time, on_sale=self._claim, pay_within_s=cfg.pay_within_s)
        self.vendor = sv.VendorServer(self.core)
        with _listening("speed_listen", cfg.speed_listen):
            self._speed_address = await self.vendor.start(*cfg.speed_listen)
        try:
            host_config = load_host_config(cfg.host)
        except HostError as exc:
            err = TicketingError(exc.reason, f"the device's host config (host = {str(cfg.host)!r}): {exc}")
            err.hint = "`host` names the device's host config, relative to the ticketing config (docs/ticketing.md)"
            raise err from None
        self.host = HostServer(host_config)
        if len(self.host.cards) != 1:
            raise TicketingError("bad_config", f"{cfg.host}: the device's host holds exactly one card (the agent)")
        self.device_domain = self.host.cards[0].uid.domain
        await self.host.start()
        try:
            self.wallet = await Wallet.open(str(host_config.app_socket), pin=self.pin, card=self.device_domain)
        except WalletError as exc:
            err = TicketingError(exc.reason, f"the device refused the ticketing server: {exc}")
            if exc.reason == "wrong_pin":
                err.hint = "set CARDNET_PIN to the device card's PIN; every wrong try counts, and at 0 the card locks"
            raise err from None
        self.http = HttpServer(self._router(), limits=cfg.http_limits, upgrades=[TRN])
        with _listening("listen", cfg.listen):
            await self.http.start(*cfg.listen)
        self._releaser = asyncio.get_running_loop().create_task(self._release_due())

    def _catalogue(self) -> int:
        """Put every configured seat into the vendor's catalogue (signed entries), once."""
        assert self.store is not None
        have = {k.decode() for k, _ in scan(self.store, sv.CATALOGUE)}
        added = 0
        for event in self.config.events:
            for seat in event.seats:
                if event.product(seat) not in have:
                    sv.add_product(self.store, event.product(seat), event.price, seat_content(event, seat))
                    added += 1
        return added

    def _claim(self, txn: Txn, poid: bytes, products: list[str], customer_cert: bytes, pay_by: int | None) -> None:
        """The vendor's ``on_sale`` hook: :func:`sales.claim` with the config's bounds on unpaid sales, now."""
        cfg = self.config
        sales.claim(txn, poid, products, customer_cert, pay_by, now=time.time(), max_unpaid=cfg.max_unpaid_per_card,
                    window_s=cfg.unpaid_window_s)  # fmt: skip

    async def _release_due(self) -> None:
        """Every :data:`RELEASE_EVERY_S`, :meth:`_release`; a failure is logged and tried again the next time."""
        while not self._stopping.is_set():
            try:
                await self._release()
            except (StoreError, sv.VendorError) as exc:
                log.warning("%s: unpaid seats not released now: %s (tried again)", self.config.name, exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), RELEASE_EVERY_S)

    async def _release(self) -> None:
        """Give back the seats of the sales whose bill passed its deadline, and the margin after it, unpaid
        (:func:`sales.release`): the broker is first asked about each (``speed.order_states``): its receipt pays a
        sale (a buyer who paid and has not come back yet), and a sale whose payment it authorised before the deadline
        keeps its seat (the buyer's purse may have debited: the broker pays it whenever the buyer comes back) and is
        asked about again every :data:`sales.LOOK_AGAIN_S`; the others are released (the broker refuses their bills
        now: docs/decisions.md). Without a broker to ask (``broker`` in the config) nothing is released."""
        assert self.store is not None and self.core is not None
        now = time.time()
        before = now - self.config.release_margin_s
        if self.config.broker is None:
            return
        while due := await self._db(sales.due_sales, self.store, before):
            states = await sv.order_states(self.config.broker, [k[8:] for k in due])
            await self._db(self._take_receipts, [(p, r) for p, (state, r) in states.items() if r and state == "paid"])
            authorised = {p for p, (state, _) in states.items() if state == "authorised"}
            look_again = int(before + sales.LOOK_AGAIN_S)
            for t in await self._db(sales.release, self.store, due, authorised, look_again):
                log.info("%s: seat %s/%s released: sale %s was not paid by its bill's deadline", self.config.name,
                         t.event, t.seat, t.poid.hex()[-16:])  # fmt: skip

    def _take_receipts(self, items: list[tuple[bytes, bytes]]) -> None:
        """Take the broker's receipts for this server's sales."""
        assert self.store is not None and self.core is not None
        for poid, sealed in items:
            t = sales.ticket(self.store, poid)
            if t is None or t.state != "sold":
                continue
            try:
                self.core.take_receipt(poid, sealed)
            except (ProtocolError, CryptoError, PkiError, DecodeError) as exc:
                log.warning("%s: the broker's receipt for sale %s does not pay it: %s", self.config.name,
                            poid.hex()[-16:], exc)  # fmt: skip
                continue
            sales.advance(self.store, t, "paid")

    @property
    def http_address(self) -> tuple[str, int]:
        assert self.http is not None
        return self.http.address

    @property
    def speed_address(self) -> tuple[str, int]:
        assert self._speed_address is not None
        return self._speed_address

    async def serve_forever(self) -> None:
        await self._stopping.wait()

    def stop(self) -> None:
        self._stopping.set()

    async def aclose(self) -> None:
        self.stop()
        if self._releaser is not None:
            await asyncio.gather(self._releaser, return_exceptions=True)
        if self.http is not None:
            await self.http.aclose()
        for task in list(self._transfers):
            task.cancel()
        if self.wallet is not None:
            with contextlib.suppress(Exception):
                await self.wallet.close()
        if self.vendor is not None:
            await self.vendor.aclose()
        if self.host is not None:
            await self.host.aclose()
        if self.store is not None:
            self.store.close()

    # -- helpers ----------------------------------------------------------------------------------------------
    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in the vendor's next group commit (the store's one user, one call at a time); its result
        once that group has committed."""
        assert self.vendor is not None
        return await self.vendor.call(fn, *args)

    async def _answer_db(self, fn: Callable[..., T], *args: Any) -> T:
        """:meth:`_db` for a request being answered: a store that cannot be written (a full disk) is answered ``503``
        ``store_failed`` in words (nothing of the request was kept; send it again later), not ``500``; logged."""
        try:
            return await self._db(fn, *args)
        except StoreError as exc:
            log.error("%s: a request failed: the store cannot be written (%s); free space on its disk",
                      self.config.name, exc)  # fmt: skip
            raise HttpError(503, "store_failed", STORE_FAILED) from None

    def _event(self, request: Request) -> Event:
        event = self.config.event(request.params["event"])
        if event is None:
            raise HttpError(404, "no_event", f"there is no event {request.params['event']!r}: see /")
        return event

    def _info(self) -> dict[str, Any]:
        assert self.core is not None
        return {
            "name": self.config.name,
            "device": self.device_domain.hex(),
            "speed": "{}:{}".format(*self.speed_address),
            "vendor_cert": base64.b64encode(self.core.cert).decode(),
            "events": [self._event_summary(e) for e in self.config.events],
        }

    @staticmethod
    def _event_summary(e: Event) -> dict[str, Any]:
        return {"id": e.id, "name": e.name, "date": e.date, "price": str(e.price), "seats": len(e.seats)}

    # -- routes -----------------------------------------------------------------------------------------------
    def _router(self) -> Router:
        r = Router()
        r.add("GET", "/", self.index)
        r.add("GET", "/events/{event}", self.event)
        r.add("GET", "/tickets/{poid}", self.show_ticket)
        r.add("POST", "/tickets/{poid}", self.deliver)
        return r

    async def index(self, request: Request) -> Response:
        info = self._info()
        if not request.wants_html:
            return Response.json(info)
        rows = "".join(
            f'<tr><td><a href="/events/{escape(e.id)}">{escape(e.name)}</a></td><td>{escape(e.date)}</td>'
            f"<td>{escape(str(e.price))}</td><td>{len(e.seats)}</td></tr>"
            for e in self.config.events
        )
        return Response.html(
            _page(
                self.config.name,
                "<table><tr><th>event</th><th>date</th><th>price</th><th>seats</th></tr>"
                f"{rows}</table><p>Pay with SPEED at {escape(info['speed'])}; "
                "your wallet receives the ticket over TRN.</p>",
            )
        )

    async def event(self, request: Request) -> Response:
        event = self._event(request)
        assert self.store is not None
        only = request.query.get("seat")  # ?seat=S: that seat alone (a buyer's program needs no seat map)
        if only is not None and only not in event.seats:
            raise HttpError(404, "no_seat", f"{event.id} has no seat {only!r}: see /events/{event.id} for its seats")
        more: str | None = None
        if only is None:  # a page of the seat map: a large event's whole map would cost the server too much a request
            after = request.query.get("after")
            start = 0 if after is None else self._seat_at[event.id].get(after, -1) + 1
            if start == 0 and after is not None:
                raise HttpError(404, "no_seat", f"{event.id} has no seat {after!r}: see /events/{event.id}")
            page = list(event.seats[start : start + SEAT_PAGE])
            sold, n_sold = await self._answer_db(sales.sold_of, self.store, event.id, page)
            seats = [{"seat": s, "product": event.product(s), "free": s not in sold} for s in page]
            free = max(0, len(event.seats) - n_sold)
            if start + SEAT_PAGE < len(event.seats):
                more = page[-1]
        else:  # one seat's sale and a count: a purchase's page costs the same however many seats are sold
            poid, n_sold = await self._answer_db(sales.seat_sale, self.store, event.id, only)
            seats = [{"seat": only, "product": event.product(only), "free": poid is None}]
            free = max(0, len(event.seats) - n_sold)
        data = self._event_summary(event) | {"seats": seats, "free": free}
        if more is not None:
            data["next"] = more  # more seats: ask again with ?after=<next>
        if not request.wants_html:
            return Response.json(data)
        rows = "".join(
            f"<tr><td>{escape(str(s['seat']))}</td><td>{'free' if s['free'] else 'sold'}</td></tr>" for s in seats
        )
        link = "" if more is None else f'<p><a href="/events/{quote(event.id)}?after={quote(more)}">more seats</a></p>'
        return Response.html(
            _page(
                f"{event.name}, {event.date}",
                f"<p>{escape(str(event.price))} a seat; {data['free']} free</p>"
                f"<table><tr><th>seat</th><th></th></tr>{rows}</table>{link}",
            )
        )

    async def _ticket(self, request: Request) -> sales.Ticket:
        """The sale the path names, for its buyer alone: the request shows the broker's receipt for it (what the
        buyer's program got for paying, kept in its SPEED journal), not just the PaymentOrderID, which the ticket's
        later holders, the gates and anyone they show it to may learn. The same refusal for any PaymentOrderID
        without a receipt (it says nothing of whether there is such a sale)."""
        try:
            poid = bytes.fromhex(request.params["poid"])
        except ValueError:
            raise HttpError(400, "bad_poid", "a ticket is named by its PaymentOrderID in hex") from None
        sealed = _receipt_of(request)
        if sealed is None:
            raise HttpError(402, "unpaid", "a sale's page and its ticket open only with the broker's receipt for it "
                            f"(header {AUTHORIZATION}: {RECEIPT_SCHEME} BASE64, or {{\"receipt\": BASE64}} in a POST): "
                            "pay the sale (SPEED) and send the receipt your wallet kept")  # fmt: skip
        assert self.store is not None and self.core is not None
        t = await self._answer_db(sales.ticket, self.store, poid)
        if t is None:
            raise HttpError(404, "no_sale", "no sale of this server has that PaymentOrderID: check the server's "
                            "address and the PaymentOrderID (a new ticket: buy a seat first, with SPEED)")  # fmt: skip
        try:  # opens under the sale's RecKey, the broker signed it, names this sale (recorded: again, if taken before)
            await self._answer_db(self.core.take_receipt, poid, sealed)
        except (ProtocolError, CryptoError, PkiError, DecodeError) as exc:
            raise HttpError(402, "bad_receipt", f"that receipt does not pay this sale: {exc}") from None
        return t

    async def show_ticket(self, request: Request) -> Response:
        t = await self._ticket(request)
        data = t.public()
        if t.state == "sent":  # on its way, or back on the device because the buyer's card refused it
            v = await self._device_token(t.oid)
            if v is not None and v.status == "enabled" and v.refused:
                data["refused"] = v.refused
        if request.wants_html:
            why = f" (your card refused it: {data['refused']})" if "refused" in data else ""
            return Response.html(_page(f"ticket {t.event} {t.seat}", f"<p>{escape(t.state + why)}</p>"))
        return Response.json(data)

    async def deliver(self, request: Request) -> Response | Upgrade:
        """Check the payment (the broker's receipt, every time: it shows the buyer), then switch to TRN and send
        the ticket."""
        t = await self._ticket(request)
        if t.state == sales.RELEASED:  # paid after all (authorised by the broker before the deadline): the seat back
            assert self.store is not None
            try:
                t = await self._answer_db(sales.reclaim, self.store, t)
            except ProtocolError as exc:
                log.error("%s: sale %s paid after its seat %s/%s was sold again: refund it", self.config.name,
                          t.poid.hex()[-16:], t.event, t.seat)  # fmt: skip
                raise HttpError(409, exc.reason, str(exc)) from None
        if t.state == "sold":
            assert self.store is not None
            log.info("%s: sale %s paid (seat %s/%s)", self.config.name, t.poid.hex()[-16:], t.event, t.seat)
            t = await self._answer_db(sales.advance, self.store, t, "paid")
        if t.state == "delivered":
            return Response.json(t.public() | {"note": "the ticket left this server already"})
        if request.upgrade != TRN:
            return upgrade_required(TRN, "the ticket travels over TRN: ask with Connection: Upgrade, Upgrade: TRN")
        headers = ((TRN_DEVICE, self.device_domain.hex()), (TRN_TOKEN, t.oid.hex()))

        async def run(stream: UpgradedStream) -> None:
            await self._transfer(t, stream)

        return Upgrade(TRN, run, headers)

    async def _transfer(self, t: sales.Ticket, stream: UpgradedStream) -> None:
        """Carry the device's traffic to the buyer's card over the upgraded connection until the ticket left."""
        assert self.host is not None and self.wallet is not None and self.store is not None
        task = asyncio.current_task()
        if task is not None:
            self._transfers.add(task)
        conn = trn_connection(stream, Limits(max_frame=min(self.host.config.max_frame, UPGRADED_MAX_FRAME)))
        carry = asyncio.get_running_loop().create_task(
            self.host.carry(conn, [t.card.domain], label=f"ticket {t.poid.hex()[-16:]} for {stream.peer}")
        )
        try:
            async with asyncio.timeout(self.config.transfer_timeout_s), self.wallet.subscription() as changes:
                t, started = await self._send(t)
                if not started:  # a retry: resend at once what this ticket's transfer waits for (its own alone: a
                    await self.wallet.recover(t.oid)  # full recover re-signs every transfer under way on the device)
                v = await self._device_token(t.oid)
                while not carry.done():
                    if v is None:
                        t = await self._db(sales.advance, self.store, t, "delivered")
                        log.info("%s: ticket %s/%s delivered to %s", self.config.name, t.event, t.seat, t.card)
                        break
                    if v.status == "enabled" and v.refused:  # back on the device: the buyer's card refused it
                        log.warning("%s: the buyer's card refused ticket %s/%s: %s (a retry sends it again)",
                                    self.config.name, t.event, t.seat, v.refused)  # fmt: skip
                        break
                    # the device pushes the token's new state (the list would cost O(tokens on the device) a
                    # change); asked for only when a push was missed or none came
                    e = await _change_of(t.oid, changes, carry)
                    if e is not None and e.voucher is not None:
                        v = None if e.voucher.status == GONE else e.voucher
                    elif not carry.done():
                        v = await self._device_token(t.oid)
        except TimeoutError:
            log.info("%s: ticket %s/%s not delivered within %g s; a retry resumes it", self.config.name, t.event,
                     t.seat, self.config.transfer_timeout_s)  # fmt: skip
        except WalletError as exc:
            log.warning("%s: ticket %s/%s: the device refused: %s", self.config.name, t.event, t.seat, exc)
        finally:
            conn.close()
            await asyncio.gather(carry, return_exceptions=True)
            if task is not None:
                self._transfers.discard(task)

    async def _send(self, t: sales.Ticket) -> tuple[sales.Ticket, bool]:
        """Mint the ticket and start its transfer, each once (a retry resumes where the last try stopped); one
        connection at a time per sale (two retries at once must not both mint). With the ticket, whether this call
        started the transfer of a ticket recorded ``minted`` (False: the transfer may have been under way before)."""
        assert self.store is not None
        lock = self._sending.setdefault(t.poid, asyncio.Lock())
        try:
            async with lock:
                fresh = await self._db(sales.ticket, self.store, t.poid)
                return await self._mint_and_send(fresh or t)
        finally:
            if not lock.locked():
                self._sending.pop(t.poid, None)

    async def _device_token(self, oid: bytes) -> Voucher | None:
        """The device's holding of ``oid`` (None: not there: never minted, or delivered)."""
        assert self.wallet is not None
        return await self.wallet.voucher(oid)

    async def _mint_and_send(self, t: sales.Ticket) -> tuple[sales.Ticket, bool]:
        assert self.wallet is not None and self.store is not None
        started = False
        if t.state == "paid":
            if await self.wallet.voucher(t.oid) is None:
                body = json.dumps({"event": t.event, "seat": t.seat}).encode()  # not what opens the sale
                await self.wallet.issue(t.oid, body)
            t = await self._db(sales.advance, self.store, t, "minted")
        if t.state == "sent":
            v = await self._device_token(t.oid)
            if v is not None and v.status == "enabled":  # refused by the buyer's card (or cancelled): again
                await self.wallet.transfer(t.oid, t.card)
        if t.state == "minted":
            try:
                await self.wallet.transfer(t.oid, t.card)
                started = True
            except WalletError:
                v = await self.wallet.voucher(t.oid)
                if v is not None and v.status == "enabled":
                    raise  # the device refused to send it at all
            t = await self._db(sales.advance, self.store, t, "sent")
        return t, started


async def _change_of(oid: bytes, changes: asyncio.Queue[WalletEvent], carry: asyncio.Task[None]) -> WalletEvent | None:
    """The device's next pushed change of token ``oid`` (or ``missed``: it may have missed one); None once the
    connection ended or ``CHECK_EVERY_S`` passed (a lost push costs a second, not the delivery)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CHECK_EVERY_S
    while not carry.done() and (left := deadline - loop.time()) > 0:
        got = loop.create_task(changes.get())
        done, _ = await asyncio.wait({got, carry}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        if got not in done:
            got.cancel()
            return None
        event = got.result()
        if event.kind == "missed" or (event.voucher is not None and event.voucher.oid == oid):
            return event
    return None


def _receipt_of(request: Request) -> bytes | None:
    """The broker's sealed receipt the request shows: ``Authorization: Receipt BASE64``, or ``{"receipt": BASE64}``
    in a POST's body (None: neither)."""
    given: object = None
    scheme, _, value = (request.header(AUTHORIZATION) or "").partition(" ")
    if scheme.lower() == RECEIPT_SCHEME.lower():
        given = value.strip()
    elif request.method == "POST" and request.body:
        body = request.json()
        given = body.get("receipt") if isinstance(body, dict) else None
    if given is None:
        return None
    try:
        sealed = base64.b64decode(given, validate=True) if isinstance(given, str) else b""
    except (binascii.Error, ValueError):
        sealed = b""
    if not sealed:
        raise HttpError(400, "bad_receipt", "the receipt is base64 of the broker's sealed receipt")
    if len(sealed) > MAX_RECEIPT:
        raise HttpError(400, "bad_receipt", f"a receipt is at most {MAX_RECEIPT} bytes")
    return sealed


@contextlib.contextmanager
def _listening(field: str, address: tuple[str, int]) -> Iterator[None]:
    """A port that cannot be listened on, as a :class:`TicketingError` naming the config's field."""
    try:
        yield
    except TransportError as exc:
        err = TicketingError("cannot_listen", f'{field} = "{address[0]}:{address[1]}": {exc}')
        err.hint = (f"another program (another ticketing server?) uses that port: stop it, or choose another port "
                    f"for {field} in the config")  # fmt: skip
        raise err from None


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{escape(title)}</title></head>"
        f"<body><h1>{escape(title)}</h1>{body}</body></html>\n"
    )
