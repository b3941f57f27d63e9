"""``cardnet ticketing run``: the ticketing server (TRN paper 5.1)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from pathlib import Path
from typing import Any

import click

from cardnet.cli.output import fail, json_option, say_ready


@click.group()
def ticketing() -> None:
    """Sell seats over HTTP, take payment with SPEED, deliver tickets with TRN (docs/ticketing.md)."""


@ticketing.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The server's TOML file: HTTP and SPEED addresses, vendor store, device host, events.")  # fmt: skip
@json_option
def run(config_path: Path, as_json: bool) -> None:
    """Run the ticketing server until SIGINT/SIGTERM.

    \b
    Before the first run:
      cardnet speed vendor init --store tickets.db ...   the SPEED vendor (its account at the broker)
      cardnet card create ... --role agent               the device that mints the tickets (applet trn)
    The device's PIN comes from $CARDNET_PIN. Every seat of every event is put in the vendor's catalogue.
    People browse http://LISTEN/ (HTML); programs get JSON. Prints "ready NAME http://HOST:PORT speed HOST:PORT"
    once it serves (with --json: {"ready": {"name", "http", "speed", "device"}} on one line), then a line for each
    sale paid and each ticket delivered.
    """
    from cardnet.cli.host import settle_heap
    from cardnet.services.ticketing.config import load_config
    from cardnet.services.ticketing.server import TicketingServer
    from cardnet.store.owner import claimed

    pin = os.environ.get("CARDNET_PIN")
    if not pin:
        fail("set CARDNET_PIN to the PIN of the server's device (its agent card)",
             hint="the server logs in to its own card with it", reason="no_pin")  # fmt: skip
    config = load_config(config_path)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sales_log = logging.getLogger("cardnet.ticketing")  # each sale paid and delivered: what the operator watches
    if sales_log.getEffectiveLevel() > logging.INFO:
        sales_log.setLevel(logging.INFO)

    async def main() -> None:
        server = TicketingServer(config, pin=pin)
        await server.start()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.stop)
        http = "http://{}:{}".format(*server.http_address)
        speed = "{}:{}".format(*server.speed_address)
        claims.serving(f"{http} speed {speed}")
        ready = {"name": config.name, "http": http, "speed": speed, "device": server.device_domain.hex()}
        settle_heap()
        say_ready(as_json, ready, f"ready {config.name} {http} speed {speed}")
        try:
            await server.serve_forever()
        finally:
            await server.aclose()

    with claimed(_stores(config), f"ticketing server {config.name!r}") as claims:  # one server per store and card
        asyncio.run(main())


def _stores(config: Any) -> list[tuple[str, str]]:
    """What the server of ``config`` claims (store/owner.py): its vendor store and its device's card store (a host
    config it cannot read claims nothing here: the server refuses it in its own words)."""
    from cardnet.cli.host import card_stores
    from cardnet.errors import CardnetError
    from cardnet.host.config import load_config as load_host_config

    stores = [(config.store, "give this server another store (store in its config)")]
    with contextlib.suppress(CardnetError, OSError):
        stores += card_stores(load_host_config(config.host))
    return stores
