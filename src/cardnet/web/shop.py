"""Buying a ticket from a ticketing server through the web wallet (services/ticketing/buyer.py behind the page).

The page cannot ask another server itself (its Content-Security-Policy allows its own origin only), so the web
wallet reads a ticketing server's events and free seats for it (:meth:`Shop.events`, bounded in time and in
events), buys a seat with the buyer library's ``buy_ticket`` (SPEED at the list price from the e-purse through
the wallet config's broker, then the ticket over ``Upgrade: TRN`` relayed to the host's application socket;
the purchase journal is the one ``cardnet wallet`` keeps) and finishes the delivery of a paid sale
(:meth:`Shop.deliver`, as ``cardnet wallet buy URL --poid``). Every failure becomes an
:class:`~cardnet.transport.http.HttpError` that says what to do.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from cardnet.cli.speed import JOURNAL
from cardnet.cli.wallet_buy import sold_to_you, unreachable_hints
from cardnet.cli.wallet_config import WalletConfig
from cardnet.crypto import pki
from cardnet.host.errors import HostError
from cardnet.services.speed.customer import Journal, PurchaseError
from cardnet.services.ticketing.buyer import (
    TicketError,
    buy_ticket,
    get_json,
    receive_ticket,
    server_address,
    show_ticket,
)
from cardnet.services.wallet import Wallet
from cardnet.transport.errors import TransportError
from cardnet.transport.http import HttpError
from cardnet.transport.http_upgrade import UpgradeRefused

MAX_EVENTS = 20  # a ticketing server's events the page lists
MAX_FREE = 2000  # free seats of one event the page lists (the first ones, in the event's order)
MAX_SEAT_PAGES = 10  # pages of one event's seat map read to find them (the server sends 1,000 seats a page)
SHOP_TIMEOUT_S = 20.0  # reading a ticketing server's events and seats
PAID = (
    "if your card paid, nothing is lost: the server keeps the paid sale, and Finish the delivery (on this page, or "
    "`cardnet wallet buy URL --poid POID`) brings the ticket"
)
BUY_HINTS = {
    "seat_sold": "someone else bought that seat first (nothing was paid; your wallet's purchases hold no sale of it "
    "from this server): choose another",
    "no_seat": "choose a seat the list shows free (Show events reads it again)",
    "no_event": "choose an event the list shows (Show events reads it again)",
    "insufficient": "your e-purse holds too little: load it with `cardnet wallet load --amount '50.00 EUR'`",
    "no_key": "your e-purse was never loaded: load it with `cardnet wallet load --amount '50.00 EUR'`",
    "unpaid": "the payment did not reach the server: press Recover (it pays a delivered purchase, never twice), then "
    "finish the delivery with `cardnet wallet buy URL --poid POID`",
    "not_ticketing": "check the address: it is the ticketing server's http://HOST:PORT, not its speed port or a "
    "host's port",
}


class Shop:
    """Buying for one wallet: its config (broker, certificates, purchases folder) and its host's socket."""

    def __init__(self, config: WalletConfig | None, app_socket: str | None, *, seat_pages: int = MAX_SEAT_PAGES,
                 max_free: int = MAX_FREE) -> None:  # fmt: skip
        self.config = config
        self.app_socket = app_socket  # the ticketing server's delivery is relayed there
        self.seat_pages, self.max_free = seat_pages, max_free  # the bounds of one event's free seats listed
        # sales paid through this page whose ticket did not arrive: PaymentOrderID -> the server's address (the page
        # lists them under way, with Finish the delivery, until the card holds the ticket or the server says it left)
        self.undelivered: dict[bytes, str] = {}

    async def events(self, url: str) -> dict[str, Any]:
        """The server's name and its events with their free seats."""
        with _ticketing(url, paying=False):
            async with asyncio.timeout(SHOP_TIMEOUT_S):
                return await self._events(url)

    async def _events(self, url: str) -> dict[str, Any]:
        info = await get_json(url, "/")
        events = []
        try:
            for e in list(info.get("events") or [])[:MAX_EVENTS]:
                shown, free = await self._free_seats(url, str(e["id"]))
                count = int(shown.get("free", len(free)))  # the server's count of the whole event's free seats
                events.append({"id": str(shown["id"]), "name": str(shown.get("name", "")),
                               "date": str(shown.get("date", "")), "price": str(shown.get("price", "")),
                               "free": free, "free_count": count, "more": count > len(free)})  # fmt: skip
            name = str(info.get("name", ""))
        except (AttributeError, KeyError, TypeError):
            raise HttpError(502, "not_ticketing", f"{url} does not answer like a cardnet ticketing server (its events "
                            "and seats are not there): check the address") from None  # fmt: skip
        return {"name": name, "url": url, "events": events}

    async def _free_seats(self, url: str, event: str) -> tuple[dict[str, Any], list[str]]:
        """``event``'s first page and its first free seats: at most ``max_free``, from at most ``seat_pages`` pages
        of its seat map (the server sends a page at a time, ``next`` naming the seat to ask ``?after=``)."""
        target = f"/events/{quote(event, safe='')}"
        first: dict[str, Any] | None = None
        free: list[str] = []
        after: str | None = None
        for _ in range(max(1, self.seat_pages)):
            shown = await get_json(url, target if after is None else f"{target}?after={quote(after, safe='')}")
            first = first or shown
            free += [str(t["seat"]) for t in shown.get("seats") or [] if t.get("free")]
            after = None if shown.get("next") is None else str(shown["next"])
            if after is None or len(free) >= self.max_free:
                break
        assert first is not None  # one page at least
        return first, free[: self.max_free]

    async def buy(self, wallet: Wallet, url: str, event: str, seat: str) -> dict[str, Any]:
        """Buy ``seat`` of ``event`` with ``wallet``'s card: ``{message, oid, poid}``, or, paid but not delivered,
        ``{error: not_delivered, message, url, poid}`` (the page then offers to finish the delivery)."""
        broker, broker_cert, ca_cert, journal = self._settings()
        socket = self._socket()
        try:
            with _ticketing(url):
                try:
                    bought = await buy_ticket(url, event, seat, card=wallet, app_socket=socket, broker=broker,
                                              broker_cert=broker_cert, roots=[ca_cert], journal=journal)  # fmt: skip
                except TicketError as exc:  # (before _ticketing makes it a 409 without the sale)
                    if exc.reason != "not_delivered":
                        raise
                    if exc.poid is not None:
                        self.undelivered[exc.poid] = url
                    return _not_delivered(exc, url)
                except PurchaseError as exc:  # who did not answer, where, and what pays it (as `cardnet wallet buy`)
                    source = f"broker in {self.config.path}" if self.config is not None else "the wallet config"
                    hint = unreachable_hints(url, broker, source, shown="the page lists it under way",
                                             recover="Recover").get(f"{exc.reason}:{exc.party}")  # fmt: skip
                    if hint is None:
                        raise
                    raise HttpError(502, "unreachable", f"{exc}; {hint}") from None
        except HttpError as exc:  # a seat this wallet bought itself is said to be yours (as `cardnet wallet buy` does)
            mine = await sold_to_you(url, event, seat, journal) if exc.reason == "seat_sold" else None
            if mine is None:
                raise
            raise HttpError(exc.status, exc.reason, f"{mine.message}; {mine.hint}") from None
        return {"message": f"bought seat {bought.seat} of {bought.event} for {bought.price}: the ticket is on its "
                "way to your card (the list shows it once it is yours)", "oid": bought.oid.hex(),
                "poid": bought.poid.hex()}  # fmt: skip

    async def deliver(self, url: str, poid: bytes) -> dict[str, Any]:
        """Finish the delivery of sale ``poid`` (the receipt from the journal, if it is there): ``{message}``."""
        socket = self._socket()
        journal = self.journal()
        kept = [r for r in journal.all() if r.poid == poid]
        if not kept:  # (the server gives a sale's ticket only with its receipt, which only the buyer's journal holds)
            raise HttpError(409, "unknown_sale", f"this wallet's purchases ({journal.path}) hold no sale "
                            f"{poid.hex()[:16]}…: check the id (the page named it when the delivery failed), or "
                            "finish it with the wallet that bought it; nothing was asked of the server")  # fmt: skip
        receipt = next((r.receipt for r in kept if r.receipt), None)
        with _ticketing(url):
            shown = {} if receipt is None else await show_ticket(url, poid, receipt)  # (without it: refused unpaid)
            if shown.get("state") == "delivered":
                self.undelivered.pop(poid, None)
                return {"message": f"the ticket of sale {poid.hex()[:16]}… was delivered already: it is on the card "
                        "it was bought for"}  # fmt: skip
            relayed = await receive_ticket(url, poid, socket, receipt=receipt)
        return {"message": f"the ticket of sale {poid.hex()[:16]}… is on its way to your card (the list shows it "
                "once it is yours)", "oid": relayed.oid.hex()}  # fmt: skip

    def _socket(self) -> str:
        if self.app_socket is None:
            raise HttpError(409, "not_configured", "this page was started without the host's socket: restart "
                            "`cardnet wallet ui` with --socket")  # fmt: skip
        return self.app_socket

    def _settings(self) -> tuple[str, bytes, bytes, Journal]:
        cfg = self.config
        values = {k: cfg.get(k) if cfg is not None else None for k in ("broker", "broker_cert", "ca_cert")}
        missing = [k for k, v in values.items() if v is None]
        if missing or cfg is None:
            where = f" ({cfg.path})" if cfg is not None else ""
            raise HttpError(409, "not_configured", f"to pay, the wallet config{where} needs {', '.join(missing)}: "
                            f"`cardnet wallet config --set {missing[0]}=...`, then restart "
                            "`cardnet wallet ui`")  # fmt: skip
        certs = [_certificate(Path(str(values[k])), k) for k in ("broker_cert", "ca_cert")]
        return str(values["broker"]), certs[0], certs[1], self.journal()

    def journal(self) -> Journal:
        """The wallet's SPEED journal (the purchases folder of the wallet config, as `cardnet wallet` keeps it)."""
        folder = Path((self.config.get("purchases") if self.config is not None else None) or "purchases")
        try:
            return Journal(folder / JOURNAL)
        except OSError as exc:
            raise HttpError(500, "no_journal", f"cannot keep the purchases folder {folder}: {exc.strerror or exc}; "
                            "choose another: `cardnet wallet config --set purchases=DIR`") from None  # fmt: skip


def _not_delivered(exc: TicketError, url: str) -> dict[str, Any]:
    """A sale paid whose ticket did not arrive, as the page shows it: what happened, its PaymentOrderID and how to
    finish the delivery (the page fills the sale into Finish the delivery)."""
    poid = None if exc.poid is None else exc.poid.hex()
    how = f"`cardnet wallet buy {url} --poid {poid}`" if poid else f"`cardnet wallet buy {url} --poid POID`"
    message = (f"{exc}; your ticket is paid and kept for you: press Finish the delivery below (or run {how}); it is "
               "safe to repeat, and if your host was down, start it (`cardnet host run`) first")  # fmt: skip
    return {"error": "not_delivered", "message": message, "url": url, "poid": poid}


def parse_url(value: Any) -> str:
    """A ticketing server's address from the page (``http://HOST:PORT``), or 400 saying how to give it."""
    if not isinstance(value, str) or not value.strip():
        raise HttpError(400, "bad_url", "give the ticketing server's address, e.g. http://tickets.example:8080")
    url = value.strip().rstrip("/")
    try:
        server_address(url)
    except ValueError as exc:
        raise HttpError(400, "bad_url", f"{exc}: give it as http://HOST:PORT") from None
    return url if "://" in url else f"http://{url}"


@contextlib.contextmanager
def _ticketing(url: str, *, paying: bool = True) -> Iterator[None]:
    """A ticketing server's or a purchase's failure as an error the page shows, with what to do (``paying``: a
    purchase or a delivery, whose failure also says that a paid sale is not lost; not when reading events)."""
    paid = f"; {PAID}" if paying else ""
    try:
        yield
    except TicketError as exc:
        status = 502 if exc.reason == "not_ticketing" else 409
        raise HttpError(status, exc.reason, f"{exc}; {BUY_HINTS.get(exc.reason, 'the server refused')}") from None
    except PurchaseError as exc:
        hint = BUY_HINTS.get(exc.reason, "nothing was paid unless the page shows a purchase under way")
        raise HttpError(409, exc.reason, f"the purchase did not happen: {exc}; {hint}") from None
    except UpgradeRefused as exc:
        hint = BUY_HINTS.get(exc.error, PAID)
        raise HttpError(502, exc.error, f"the ticketing server did not deliver: {exc}; {hint}") from None
    except TimeoutError:
        raise HttpError(504, "timeout", f"the ticketing server at {url} is too slow to answer: try again "
                        f"later{paid}") from None  # fmt: skip
    except TransportError as exc:
        raise HttpError(502, "unreachable", f"cannot talk to the ticketing server at {url}: {exc}; check the "
                        f"address and that it runs{paid}") from None  # fmt: skip
    except HostError as exc:  # the relay to this wallet's own host
        raise HttpError(502, "no_host", f"the ticket cannot be passed to your card: {exc}; is your host "
                        f"(`cardnet host run`) running?{paid[1:]}") from None  # fmt: skip


def _certificate(path: Path, key: str) -> bytes:
    try:
        return pki.cert_to_der(pki.chain_from_pem(path.read_bytes())[0])
    except OSError as exc:
        raise HttpError(409, "not_configured", f"cannot read {key} {path}: {exc.strerror or exc}; fix it with "
                        f"`cardnet wallet config --set {key}=FILE`") from None  # fmt: skip
    except (ValueError, IndexError):
        raise HttpError(409, "not_configured", f"{path} ({key}) holds no PEM certificate: `cardnet wallet config "
                        f"--set {key}=FILE`") from None  # fmt: skip
