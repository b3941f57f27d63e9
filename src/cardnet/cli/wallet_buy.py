"""``cardnet wallet buy``: buying a ticket from a ticketing server (TRN paper 5.1): the seat paid with the
e-purse (SPEED, through the broker), the ticket received on the card over the same connection switched to TRN
(:mod:`cardnet.services.ticketing.buyer`)."""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from cardnet.cli.output import console, emit_json, fail, progress
from cardnet.cli.wallet import WAIT_S, Target, wallet_command
from cardnet.errors import CardnetError

# The e-purse holds 16 debits under way at most (docs/speed.md, "A debit no purchase will finish").
DEBITS_PENDING_HINT = (
    "your e-purse has 16 payments under way: `cardnet wallet recover` finishes those of your purchases; then "
    "`cardnet speed purse end-debits --socket SOCKET --broker HOST:PORT` ends those no purchase is left to finish "
    "(nothing was paid for them)"
)
BUY_HINTS = {
    "seat_sold": "someone else bought that seat first (nothing was paid; your wallet's purchases hold no sale of it "
    "from this server): choose another; the server's page lists the free ones",
    "no_seat": "the server's page lists the event's seats",
    "no_event": "the server's page lists its events",
    "unpaid": "this sale is not paid yet: `cardnet wallet recover` pays a delivered purchase and then fetches its "
    "ticket",
    "insufficient": "load your e-purse first: `cardnet wallet load --amount '50.00 EUR'`",
    "debits_pending": DEBITS_PENDING_HINT,
    "over_limit": "raise --limit, or leave it out to pay the server's price",
    "not_ticketing": "check the address: give the ticketing server's http://HOST:PORT (`cardnet ticketing run` "
    "prints it: 'ready NAME http://HOST:PORT speed ...'), not its speed port or a host's port",
    "unknown_sale": "give --poid as `cardnet wallet buy` printed it (`cardnet wallet show` lists your "
    "purchases under way); a sale bought with another wallet is finished from that wallet",
    "wrong_server": "give the address of the ticketing server you bought the seat from (its http://HOST:PORT, as "
    "`cardnet ticketing run` prints it)",
    "not_delivered": "your ticket is paid and kept for you: repeat with --poid SALE (the sale named above) once the "
    "server and your host are reachable",
}


def unreachable_hints(
    url: str,
    broker: str,
    source: str,
    *,
    shown: str = "`cardnet wallet show`",
    recover: str = "`cardnet wallet recover`",
    then: str = "",
) -> dict[str, str]:
    """What to do when a ticket's purchase could not reach a party (``unreachable:`` and ``PurchaseError.party``):
    the broker (at ``broker``, from ``source``; ``shown``: where the waiting purchase is listed, ``recover``: what
    pays it, ``then``: more) or the ticketing server's vendor (at ``url``); `cardnet wallet buy`'s words and the
    web wallet's."""
    return {
        "unreachable:broker": f"check that the broker runs at {broker} ({source}); if the ticketing server "
        f"delivered, the purchase waits in your wallet ({shown}): {recover} pays it once the broker answers there "
        f"and brings the ticket{then}",
        "unreachable:vendor": f"the ticketing server at {url} stopped answering: nothing was paid if no sale is "
        "named; check that it runs (`cardnet ticketing run` prints its address), then buy again",
    }


def broker_source(given: str | None, cfg: Any) -> str:
    """Where the broker's address a command used came from, for a hint: ``--broker`` or the wallet config."""
    return "--broker" if given else f"broker in {cfg.path}"


def wrong_broker(target: Any, given: str | None, out: Path, ca_cert: Path, then: str = "") -> str:
    """The end of a hint for a purchase whose broker did not answer: a purchase is journalled with the broker's
    address it was given, and `cardnet wallet recover` pays it there; one given a wrong --broker is paid through
    the right one by `cardnet speed recover --broker`."""
    if not given:
        return ""
    return (f"; if {given} is not the broker's address, `cardnet speed recover --out {out} --ca-cert {ca_cert} "
            f"--broker HOST:PORT{target.trn_options()}` pays it through the right one{then}")  # fmt: skip


@wallet_command(
    None,
    "buy",
    click.argument("url"),
    click.option("--event", default=None, help="The event's id (the server's page lists them)."),
    click.option("--seat", default=None, help="The seat, e.g. A12."),
    click.option("--limit", default=None, help="The most you pay, e.g. '30.00 EUR' (default: the server's price)."),
    click.option("--poid", default=None, help="Finish the delivery of a ticket you paid before (its PaymentOrderID)."),
    click.option("--broker", default=None, help="The broker's HOST:PORT (default: the wallet config's)."),
    click.option("--wait", "wait_s", type=WAIT_S, default=30.0, show_default=True,
                 help="Seconds to wait for the ticket to be usable on your card."),
)  # fmt: skip
def wallet_buy(target: Target, url: str, event: str | None, seat: str | None, limit: str | None, poid: str | None,
               broker: str | None, wait_s: float, as_json: bool) -> None:  # fmt: skip
    """Buy a ticket from a ticketing server: pay its seat with your e-purse (SPEED, through the broker), then
    receive the ticket on your card over the same connection switched to TRN.

    \b
      cardnet wallet buy http://tickets.example:8080 --event final --seat A12
      cardnet wallet buy http://tickets.example:8080 --poid POID     finish a delivery a lost connection cut
    """
    from cardnet.cli.speed import JOURNAL, _pem_file, _price
    from cardnet.services.speed.customer import Journal, PurchaseError
    from cardnet.services.ticketing.buyer import TicketError, buy_ticket, receive_ticket, server_address, show_ticket
    from cardnet.transport import TransportError
    from cardnet.transport.http_upgrade import UpgradeRefused

    try:
        server_address(url)
    except ValueError as exc:
        fail(str(exc), reason="bad_url", hint="give the server's address as http://HOST:PORT")
    if poid is None and (event is None or seat is None):
        fail("say which seat: --event and --seat (or --poid to finish a delivery)", reason="usage",
             hint=f"the server's page lists the events and seats: {url.rstrip('/')}/events/EVENT")  # fmt: skip
    cfg = target.config
    journal = Journal(Path(cfg.get("purchases") or "purchases") / JOURNAL)
    cap = _price(limit, "--limit") if limit else None

    async def work(wallet: Any) -> dict[str, Any]:
        try:
            if poid is not None:
                sale = _hex_poid(poid)
                receipt = await _paid_at(url, sale, journal)
                with progress(f"receiving the ticket of sale {poid[-16:]} from {url} …"):
                    relayed = await receive_ticket(url, sale, target.socket, receipt=receipt)
                shown = await show_ticket(url, sale, receipt)
                got = {"poid": sale.hex(), "oid": relayed.oid.hex(), "event": shown["event"], "seat": shown["seat"],
                       "price": None}  # fmt: skip
            else:
                assert event is not None and seat is not None
                with progress(f"buying seat {seat} of {event} from {url} …"):
                    bought = await buy_ticket(
                        url, event, seat, card=wallet, app_socket=target.socket, broker=broker_addr,
                        broker_cert=_pem_file(bcert, "the broker's certificate"),
                        roots=[_pem_file(ca_cert, "the CA certificate")], journal=journal, limit=cap,
                    )  # fmt: skip
                got = {"poid": bought.poid.hex(), "oid": bought.oid.hex(), "event": event, "seat": seat,
                       "price": bought.price}  # fmt: skip
            with progress("waiting for the ticket to be usable on your card …"):
                got["state"] = await _settled(wallet, bytes.fromhex(got["oid"]), wait_s)
            return got
        except (TicketError, PurchaseError, UpgradeRefused) as exc:
            reason = exc.error if isinstance(exc, UpgradeRefused) else exc.reason
            if reason == "seat_sold" and event is not None and seat is not None:
                await _sold_to_you(url, event, seat, journal)
            party = getattr(exc, "party", None) if isinstance(exc, PurchaseError) else None
            fail(str(exc), reason=reason, hint=reach.get(f"{reason}:{party}", BUY_HINTS.get(reason)))
        except TransportError as exc:
            hint = (
                "check the address (the ticketing server's http://HOST:PORT, as `cardnet ticketing run` prints "
                "it, not its speed port or a host's port) and that the server runs; "
            )
            hint += ("repeat with the right address: a paid sale stays kept for you" if poid
                     else "nothing was paid if no sale is named")  # fmt: skip
            fail(str(exc), reason=exc.reason, hint=hint)

    broker_addr = "" if poid is not None else (broker or cfg.need("broker", "--broker", "broker"))
    bcert = Path("") if poid is not None else Path(cfg.need("broker_cert", "--broker-cert", "broker certificate"))
    ca_cert = Path("") if poid is not None else Path(cfg.need("ca_cert", "--ca-cert", "CA certificate"))
    # who could not be reached (PurchaseError.party), by name and address, and what to do
    wrong = wrong_broker(target, broker, Path(cfg.get("purchases") or "purchases"), ca_cert,
                         ", then `cardnet wallet recover` brings the ticket")  # fmt: skip
    reach = unreachable_hints(url, broker_addr, broker_source(broker, cfg), then=wrong)
    got = target.run(work, BUY_HINTS)
    if as_json:
        emit_json(got)
        return
    paid = f" for {got['price']}" if got["price"] else ""
    where = "is on your card" if got["state"] == "enabled" else f"is on its way ({got['state']}): `cardnet wallet show`"
    console.print(f"ticket {got['event']} {got['seat']}{paid} {where} (oid {got['oid']})", markup=False)


async def _paid_at(url: str, sale: bytes, journal: Any) -> bytes:
    """The broker's receipt of ``sale`` from the wallet's purchases journal (what opens the sale at its server), once
    ``url`` is known to be the server that sold it (its vendor certificate is the one the sale was bought from). An
    address where no ticketing server answers, a sale the journal does not hold, one not paid yet, or another
    ticketing server's address, each said as such (before, another server's address answered "no sale has that
    PaymentOrderID: buy a seat first", to a buyer who had paid)."""
    from cardnet.services.ticketing.buyer import TicketError, get_json

    info = await get_json(url, "/")
    try:
        vendor_cert = base64.b64decode(str(info["vendor_cert"]))
    except (KeyError, TypeError, ValueError):
        raise TicketError("not_ticketing", f"{url} does not answer as a ticketing server: no vendor "
                          "certificate on its page") from None  # fmt: skip
    rec = next((r for r in journal.all() if r.poid == sale), None)
    if rec is None:
        raise TicketError("unknown_sale", f"your wallet's purchases journal ({journal.path}) has no sale "
                          f"{sale.hex()}: nothing of it can be asked for")  # fmt: skip
    if rec.receipt is None:
        raise TicketError("unpaid", f"sale {sale.hex()} is not paid yet (your journal holds no broker's receipt "
                          "for it)")  # fmt: skip
    if vendor_cert != rec.vendor_cert:
        raise TicketError("wrong_server", f"{url} did not sell sale {sale.hex()[:16]}…: it is another vendor (its "
                          "certificate is not the one on your bill); your sale stays paid and kept for "
                          "you")  # fmt: skip
    return bytes(rec.receipt)


async def _sold_to_you(url: str, event: str, seat: str, journal: Any) -> None:
    """A seat refused ``seat_sold`` that this wallet bought itself: fail ``seat_sold`` saying it is yours, and what
    to do (:func:`sold_to_you`); else return."""
    mine = await sold_to_you(url, event, seat, journal)
    if mine is not None:
        fail(mine.message, reason="seat_sold", hint=mine.hint, fields=mine.fields)


@dataclass(frozen=True)
class SoldToYou:
    """Why a seat refused ``seat_sold`` is this wallet's own: the words, what to do, and the JSON fields."""

    message: str
    hint: str
    fields: dict[str, Any]


async def sold_to_you(url: str, event: str, seat: str, journal: Any) -> SoldToYou | None:
    """A seat refused ``seat_sold`` that this wallet bought itself (its purchases journal holds a sale of it from this
    server, ``url``'s vendor certificate): the words saying it is yours, and what to do; None for another's seat.
    Shared by `cardnet wallet buy` and the web wallet's shop (web/shop.py)."""
    from cardnet.services.ticketing.buyer import get_json

    try:
        vendor_cert = base64.b64decode(str((await get_json(url, "/"))["vendor_cert"]))
    except (KeyError, TypeError, ValueError, OSError, CardnetError):
        return None
    product = f"{event}/{seat}"
    mine = [r for r in journal.all() if r.products == [product] and r.vendor_cert == vendor_cert and not r.dropped]
    paid = next((r for r in mine if r.receipt is not None and r.poid is not None), None)
    if paid is not None:
        sale = paid.poid.hex()
        return SoldToYou(
            f"seat {seat} of {event} is yours already: you bought it from {url} (sale {sale}); nothing more was paid",
            f"your ticket is on your card (`cardnet wallet show`); if it never arrived, "
            f"`cardnet wallet buy {url} --poid {sale}` brings it",
            {"poid": sale, "yours": True},
        )
    if mine:
        return SoldToYou(
            f"seat {seat} of {event} is held for your own purchase of it from {url}, not paid yet; nothing more was "
            "paid",
            "`cardnet wallet recover` pays it (it waits in your wallet's purchases) and brings the ticket",
            {"yours": True},
        )
    return None


def _hex_poid(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        fail(f"--poid {text!r} is not hex", reason="usage", hint="give the PaymentOrderID as printed (80 hex)")


async def _settled(wallet: Any, oid: bytes, wait_s: float) -> str:
    """How the ticket stands on the card once usable (``enabled``), or when ``wait_s`` ran out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    state = "missing"
    while True:
        v = await wallet.voucher(oid)
        state = "missing" if v is None else v.status
        if state == "enabled" or loop.time() >= deadline:
            return state
        await asyncio.sleep(0.05)
