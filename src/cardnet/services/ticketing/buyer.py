"""The buyer's side of a ticket's delivery: the untrusted program that relays between the ticketing server's
upgraded connection and its own host (TRN paper 5.1, "the server and the wallet never trust the mediating PC").

:func:`buy_ticket` does a whole purchase: the server's pages, the SPEED purchase of the seat (the card pays), then
:func:`receive_ticket`, which asks ``POST /tickets/{poid}`` with ``Upgrade: TRN`` and the broker's receipt (every time:
a sale's page and its delivery open only with it, :func:`show_ticket`). On ``101`` it opens its host's application
socket as a relay for the device's domain (``host.relay``, the ``TRN-Device`` header) and moves frames both ways until
the server closes the connection: the device's card and the buyer's card run the session and the transfer through it,
and the buyer's card traces the ticket with the authority over its own host's routes. Any other answer raises
:class:`~cardnet.transport.http_upgrade.UpgradeRefused` with the server's reason (``unpaid``, ``bad_receipt``,
``no_sale``, ...). Calling it again for the same sale resumes a delivery a dropped connection interrupted; for a ticket
that left the server already it returns at once (no frames relayed).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from cardnet.applets.speed import purse as pa
from cardnet.errors import CardnetError
from cardnet.host import mtypes as hm
from cardnet.host.client import CONNECT_HINTS
from cardnet.host.errors import HostError
from cardnet.protocols.speed.messages import Price, format_amount
from cardnet.services.speed.customer import CardOrders, Customer, Journal
from cardnet.services.ticketing.config import parse_price
from cardnet.transport import (
    DEFAULT_LIMITS,
    BrokenError,
    ClosedError,
    Connection,
    TcpConnection,
    TransportError,
    send_batch,
)
from cardnet.transport.http_client import request
from cardnet.transport.http_upgrade import UpgradeRefused, dial_trn
from cardnet.wire import Uid

TIMEOUT_S = 60.0


class TicketError(CardnetError):
    """The ticketing server refused (``reason`` is its word: ``no_event``, ``no_seat``, ...); ``poid``: the sale paid
    but not delivered (``not_delivered``), else None."""

    poid: bytes | None = None


_NOBODY = Uid(bytes(12), 0)


@dataclass(frozen=True)
class Relayed:
    """The upgraded connection ended (the server closes it once the ticket left its device, or gives up):
    ``oid`` is the ticket's token, ``device`` the server's device; the frames relayed each way. Whether the
    ticket arrived is the card's to say (``trn.list``), or the server's (``GET /tickets/{poid}``)."""

    oid: bytes
    device: bytes
    to_card: int
    to_server: int


def server_address(url: str) -> tuple[str, int]:
    """``http://host:port`` as (host, port): ``http://HOST`` is port 80, ``HOST:PORT`` an http:// address; a bare
    word (``notaurl``, ``tickets.example``: neither ``http://`` nor ``:PORT``) is no address (:class:`ValueError`),
    not a guess of port 80 (docs/decisions.md)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// address of a ticketing server")
    host = parts.hostname
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise ValueError(f"{url!r} has no valid port (a number from 1 to 65535)")
    if port is None and "://" not in url:
        raise ValueError(f"{url[:120]!r} is not a ticketing server's address (it has neither http:// nor a :PORT)")
    try:  # (else the name's lookup fails with the codec's words, or a lookup error that names nothing)
        if any(c.isspace() or not c.isprintable() for c in host):
            raise UnicodeError
        host.encode("idna")
    except UnicodeError:
        raise ValueError(f"{host[:80]!r} in {url[:120]!r} is not a host name (parts between dots of 1 to 63 letters, "
                         "digits or hyphens, or an IP address)") from None  # fmt: skip
    return host, port or 80


@dataclass(frozen=True)
class Bought:
    """A ticket bought and relayed: the sale, the token, what was paid, the event's and seat's names."""

    poid: bytes
    oid: bytes
    price: str
    event: str
    seat: str
    receipt: bytes


def not_ticketing(url: str, why: str) -> TicketError:
    """``TicketError('not_ticketing')``: ``url`` does not answer as a ticketing server, ``why`` says how."""
    return TicketError("not_ticketing", f"{url} does not answer as a ticketing server: {why}")


@contextlib.contextmanager
def _speaking_http(url: str) -> Iterator[None]:
    """An address where something that does not speak HTTP answers as ``TicketError('not_ticketing')``; the
    transport's own words for the rest (nothing answers, the connection closed without an answer: an address of
    no HTTP server, or a server that stopped)."""
    try:
        yield
    except TransportError as exc:
        if exc.reason != "not_http":
            raise
        raise not_ticketing(url, "what answers there does not speak HTTP (another program's port?)") from exc


async def get_json(url: str, target: str, *, timeout_s: float = 30.0, headers: tuple[tuple[str, str], ...] = ()) -> Any:
    """``GET target`` of the server at ``url``, as JSON; a refusal raises :class:`TicketError` with its words, an
    address that does not answer with JSON ``TicketError('not_ticketing')``, one where nothing answers (or the
    connection closes without an answer) :class:`BrokenError` saying it does not answer as a ticketing server."""
    host, port = server_address(url)
    try:
        with _speaking_http(url):
            answer = await request(host, port, "GET", target, headers=[("Accept", "application/json"), *headers],
                                   timeout_s=timeout_s)  # fmt: skip
    except BrokenError as exc:  # nothing answers, or it closed the connection without an answer
        raise BrokenError(f"{url} does not answer as a ticketing server: {exc}") from exc
    got = answer.json()
    if answer.status != 200 or got is None:
        err = got if isinstance(got, dict) else {}
        if "error" not in err:
            raise not_ticketing(url, f"it answered {target} with {answer.status} and no ticketing server's words")
        raise TicketError(str(err["error"]),
                          f"{url}{target}: {err.get('message', f'the server answered {answer.status}')}")  # fmt: skip
    return got


def receipt_header(receipt: bytes) -> tuple[str, str]:
    """The header that shows the broker's receipt of a sale to the ticketing server: a sale's page and its delivery
    open only with it (the PaymentOrderID alone, which the ticket's later holders may learn, opens nothing)."""
    return "Authorization", "Receipt " + base64.b64encode(receipt).decode()


async def show_ticket(url: str, poid: bytes, receipt: bytes, *, timeout_s: float = 30.0) -> dict[str, Any]:
    """``GET /tickets/{poid}`` with the sale's receipt: ``{poid, event, seat, card, oid, state[, refused]}``."""
    got = await get_json(url, f"/tickets/{poid.hex()}", timeout_s=timeout_s, headers=(receipt_header(receipt),))
    if not isinstance(got, dict):
        raise not_ticketing(url, "its answer about a sale is not a ticket")
    return got


async def buy_ticket(
    url: str, event: str, seat: str, *, card: CardOrders, app_socket: str, broker: str, broker_cert: bytes,
    roots: list[bytes], journal: Journal | None = None, limit: Price | None = None, timeout_s: float = TIMEOUT_S,
) -> Bought:  # fmt: skip
    """Buy ``seat`` of ``event`` from the ticketing server at ``url`` and bring the ticket to the card.

    The server's page names its SPEED vendor and certificate; the seat is bought at the list price (SPEED
    aggressive mode) from the card behind ``card`` (e.g. a :class:`~cardnet.services.wallet.Wallet`), paid
    through ``broker``; the broker's receipt opens the upgraded connection, relayed to the host at
    ``app_socket``. A purchase interrupted after the payment is finished by :func:`receive_ticket` with the
    PaymentOrderID and the receipt (``journal`` keeps both): a delivery that fails after the payment raises
    ``TicketError('not_delivered')`` naming the sale. A sold seat raises ``PurchaseError('seat_sold')`` before
    anything is paid; a purse that holds less than the price (or was never loaded) raises
    ``TicketError('insufficient')`` before the vendor is asked: the vendor holds the seat for the sale it bills,
    and a bill the purse cannot pay would keep the seat from everyone until the bill's deadline and the server's
    release margin pass (``pay_within_s`` and ``release_margin_s``, 15 and 5 minutes by default). A price
    above ``limit`` (or in another currency) raises ``TicketError('over_limit')`` before anything is bought. An
    address where no ticketing server answers raises ``TicketError('not_ticketing')``.
    """
    info = await get_json(url, "/")
    shown = await get_json(url, f"/events/{quote(event, safe='')}?seat={quote(seat, safe='')}")  # not the seat map
    try:
        seats = {s["seat"]: s for s in shown.get("seats", [])}
        speed, vendor_cert = str(info["speed"]), base64.b64decode(info["vendor_cert"])
        price = parse_price(str(shown["price"]), "the server's price")
    except (AttributeError, KeyError, TypeError, ValueError):
        raise not_ticketing(url, "its answers lack a ticketing server's SPEED address, certificate or price") from None
    if seat not in seats:
        raise TicketError("no_seat", f"{event} has no seat {seat!r}: choose one of {', '.join(list(seats)[:20])}")
    if limit is not None and (price.currency != limit.currency or price.amount > limit.amount):
        raise TicketError("over_limit", f"the server asks {price} a seat, over your limit of {limit}: nothing was "
                          "bought or paid")  # fmt: skip
    await _purse_covers(card, price)
    bought = await Customer(card, b"", roots, journal=journal).buy(
        speed, broker, [f"{event}/{seat}"], broker_cert=broker_cert, mode="aggressive",
        vendor_cert=vendor_cert, price=price, limit=price, origin=url,
    )  # fmt: skip
    try:
        relayed = await receive_ticket(url, bought.poid, app_socket, receipt=bought.receipt, timeout_s=timeout_s)
        if journal is not None:  # owed no more once the server says it left (Journal.owed, deliver_owed)
            await _handed(journal, url, bought.poid, bought.receipt, bought.nid)
    except (CardnetError, TimeoutError) as exc:  # paid: the ticket is owed, and a retry with the sale brings it
        owed = TicketError(
            "not_delivered",
            f"paid {bought.price} (sale {bought.poid.hex()}), but the ticket did not arrive: {exc or 'timed out'}",
        )
        owed.poid = bought.poid
        raise owed from exc
    return Bought(bought.poid, relayed.oid, str(bought.price), event, seat, bought.receipt)


async def _handed(journal: Journal, url: str, poid: bytes, receipt: bytes, nid: bytes) -> str:
    """The server's word on sale ``poid``'s ticket (its state); ``delivered``: the journal's purchase ``nid`` is owed
    nothing any more."""
    state = str((await show_ticket(url, poid, receipt)).get("state"))
    if state == "delivered":
        journal.handed(nid)
    return state


@dataclass(frozen=True)
class Owed:
    """A ticket paid for and not delivered (a lost connection or a crash cut its delivery), fetched again by
    :func:`deliver_owed`: ``oid`` once it left the server for the card, else ``error`` says why it did not."""

    poid: bytes
    url: str
    product: str
    oid: bytes | None
    error: str | None = None


async def deliver_owed(journal: Journal, app_socket: str, *, timeout_s: float = TIMEOUT_S) -> list[Owed]:
    """Fetch every ticket the journal's purchases paid for and did not get (:meth:`Journal.owed`: each kept with its
    server's address) from its server, over the host at ``app_socket``; one :class:`Owed` each. A delivery the server
    says is done (``delivered``: now, or earlier, the ticket left it) is owed no more; one that fails stays owed, for
    the next call. Never pays anything: what was not paid is not owed."""
    out = []
    for rec in journal.owed():
        assert rec.origin is not None and rec.poid is not None and rec.receipt is not None
        product = ", ".join(rec.products)
        try:
            relayed = await receive_ticket(rec.origin, rec.poid, app_socket, receipt=rec.receipt, timeout_s=timeout_s)
            state = await _handed(journal, rec.origin, rec.poid, rec.receipt, rec.nid)
        except (CardnetError, TimeoutError, OSError) as exc:
            out.append(Owed(rec.poid, rec.origin, product, None, str(exc) or "the server did not answer in time"))
            continue
        error = None if state == "delivered" else f"the server says the ticket is {state}, not delivered"
        out.append(Owed(rec.poid, rec.origin, product, relayed.oid if error is None else None, error))
    return out


async def _purse_covers(card: CardOrders, price: Price) -> None:
    """Raise ``TicketError('insufficient')`` unless the card's e-purse holds ``price`` (a card without a purse applet
    is left to the purchase to refuse)."""
    try:
        got = await card.ask(pa.BALANCE, pa.BALANCES)
    except CardnetError:
        return
    held = next((a["balance"] for a in got["accounts"] if a["currency"] == price.currency), 0)
    if held < price.amount:
        raise TicketError(
            "insufficient",
            f"your e-purse holds {format_amount(held, price.currency)}, the seat costs {price}: nothing "
            "was bought or paid, and the seat is not held for you",
        )


async def receive_ticket(
    url: str, poid: bytes, app_socket: str, *, receipt: bytes | None = None, timeout_s: float = TIMEOUT_S
) -> Relayed:
    """Relay the delivery of sale ``poid``'s ticket from the server at ``url`` to the card of ``app_socket``'s host;
    ``receipt``: the broker's receipt for the sale (without it the server refuses ``unpaid``)."""
    host, port = server_address(url)
    body = json.dumps({} if receipt is None else {"receipt": base64.b64encode(receipt).decode()}).encode()
    try:
        with _speaking_http(url):
            up = await dial_trn(
                host, port, "POST", f"/tickets/{poid.hex()}", headers=[("Content-Type", "application/json")], body=body
            )
    except UpgradeRefused as exc:
        try:
            shown = json.loads(exc.body) if exc.status == 200 else None
        except ValueError:
            shown = None
        if isinstance(shown, dict) and shown.get("state") == "delivered":  # it left the server already
            return Relayed(bytes.fromhex(str(shown["oid"])), b"", 0, 0)
        raise
    server = up.conn
    try:
        device = bytes.fromhex(up.headers.get("trn-device", ""))
        oid = bytes.fromhex(up.headers.get("trn-token", ""))
        local = await _relay(app_socket, device)
    except BaseException:
        await server.aclose()
        raise
    counts = [0, 0]
    try:
        async with asyncio.timeout(timeout_s):
            await _pump(server, local, counts)
    finally:
        await server.aclose()
        await local.aclose()
    return Relayed(oid, device, counts[0], counts[1])


async def _relay(app_socket: str, domain: bytes) -> TcpConnection:
    """The host's application socket, as the relay of ``domain``'s traffic."""
    try:
        reader, writer = await asyncio.open_unix_connection(app_socket, limit=DEFAULT_LIMITS.read_chunk_bytes)
    except OSError as exc:
        raise HostError("no_host", f"cannot reach the host at {app_socket}: {exc.strerror or exc}") from None
    conn = TcpConnection(reader, writer, DEFAULT_LIMITS)
    await conn.send(hm.RELAY.make(_NOBODY, _NOBODY, domain=domain))
    answer = await conn.recv()
    if answer.mtype != hm.RELAYING.code:
        await conn.aclose()
        refused = hm.REFUSED.parse(answer) if answer.mtype == hm.REFUSED.code else {"reason": "it did not answer"}
        raise HostError(  # (in the words of host/client.py's AppClient.connect)
            "refused",
            f"the host at {app_socket} did not let this program carry the ticketing server's card {domain.hex()} "
            f"to yours: {refused['reason']}",
            hint=CONNECT_HINTS.get(refused.get("code") or "", "the host's log says why; try again once it is mended"),
        )
    return conn


async def _pump(server: Connection, local: Connection, counts: list[int]) -> None:
    """Frames both ways until either side ends (the server closes once the ticket left its device). A frame above
    the other side's frame limit is left out (logged; the others are moved, in order, and the relay goes on): a
    relay has no refusal to put in its place, so the cards see a frame lost on the way."""

    async def move(src: Connection, dst: Connection, i: int) -> None:
        with contextlib.suppress(ClosedError, BrokenError):
            while True:
                msgs = await src.recv_many()
                counts[i] += len(msgs)
                await send_batch(dst, msgs)

    tasks = [asyncio.create_task(move(server, local, 0)), asyncio.create_task(move(local, server, 1))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
