"""``cardnet wallet buy``: buying a ticket from a ticketing server (TRN paper 5.1): the seat paid with the
e-purse (SPEED, through the broker), the ticket received on the card over the same connection switched to TRN
(:mod:`cardnet.services.ticketing.buyer`)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from cardnet.cli.output import console, emit_json, fail, progress
from cardnet.cli.wallet import WAIT_S, Target, wallet_command

BUY_HINTS = {
    "seat_sold": "someone bought that seat first (nothing was paid): choose another; the server's page lists the "
    "free ones",
    "no_seat": "the server's page lists the event's seats",
    "no_event": "the server's page lists its events",
    "unpaid": "this sale is not paid: `cardnet wallet recover` pays a delivered purchase, then buy with --poid again",
    "insufficient": "load your e-purse first: `cardnet wallet load --amount '50.00 EUR'`",
    "over_limit": "raise --limit, or leave it out to pay the server's price",
    "not_ticketing": "check the address: give the ticketing server's http://HOST:PORT (`cardnet ticketing run` "
    "prints it: 'ready NAME http://HOST:PORT speed ...'), not its speed port or a host's port",
    "not_delivered": "your ticket is paid and kept for you: repeat with --poid SALE (the sale named above) once the "
    "server and your host are reachable",
}


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
    from cardnet.services.ticketing.buyer import TicketError, buy_ticket, get_json, receive_ticket, server_address
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
                receipt = next((r.receipt for r in journal.all() if r.poid == sale and r.receipt), None)
                with progress(f"receiving the ticket of sale {poid[-16:]} from {url} …"):
                    relayed = await receive_ticket(url, sale, target.socket, receipt=receipt)
                shown = await get_json(url, f"/tickets/{sale.hex()}")
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
            fail(str(exc), reason=reason, hint=BUY_HINTS.get(reason))
        except TransportError as exc:
            hint = ("check the address (the ticketing server's http://HOST:PORT, as `cardnet ticketing run` prints "
                    "it, not its speed port or a host's port) and that the server runs; nothing was paid if no sale "
                    "is named")  # fmt: skip
            fail(str(exc), reason=exc.reason, hint=hint)

    broker_addr = "" if poid is not None else (broker or cfg.need("broker", "--broker", "broker"))
    bcert = Path("") if poid is not None else Path(cfg.need("broker_cert", "--broker-cert", "broker certificate"))
    ca_cert = Path("") if poid is not None else Path(cfg.need("ca_cert", "--ca-cert", "CA certificate"))
    got = target.run(work, BUY_HINTS)
    if as_json:
        emit_json(got)
        return
    paid = f" for {got['price']}" if got["price"] else ""
    where = "is on your card" if got["state"] == "enabled" else f"is on its way ({got['state']}): `cardnet wallet show`"
    console.print(f"ticket {got['event']} {got['seat']}{paid} {where} (oid {got['oid']})", markup=False)


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
