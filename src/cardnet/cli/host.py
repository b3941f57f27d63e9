"""``cardnet host run``: run a host process (cards, app socket, remote peers)."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click

from cardnet.cli.output import fail, json_option, say_ready

# A service process (a host, a vendor, a broker, the ticketing server) allocates a few short-lived objects per
# message. Collect the young generation every GC_GEN0 net allocations rather than every 700, and keep what exists
# at start-up (modules, keys, the cards' mirrors, catalogues) out of full collections: fewer, shorter collector
# pauses for the same garbage (a TCP server also runs a full collection every 64 ended connections).
GC_GEN0 = 10_000


def settle_heap() -> None:
    """Once a service serves: collect, freeze what is left (start-up state, kept for the process's life) and collect
    the young generation less often (see GC_GEN0)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0, 20, 20)


@click.group()
def host() -> None:
    """Hosts carry messages between applications, their cards and remote hosts (TENeT)."""


@host.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The host config (TOML: its cards, listen, app_socket, routes; docs/host.md).")  # fmt: skip
@json_option
def host_run(config_path: Path, as_json: bool) -> None:
    """Run a host as configured in a TOML file until SIGINT/SIGTERM.

    \b
    The file names the cards (their stores and applets), the Unix socket
    applications connect to, the TCP address remote hosts connect to, the
    routing table (card domain -> host:port) and optional mutual TLS.
    See docs/host.md for the format. Prints "ready <name> <listen>" once
    it accepts connections (with --json: {"ready": {"name", "listen"}} on one line).
    """
    from cardnet.host.config import load_config

    run_host(load_config(config_path), as_json)


def run_host(config: Any, as_json: bool) -> None:
    """Run the host of a loaded ``config`` until SIGINT/SIGTERM; print ``ready`` once it accepts connections. Its
    card stores are claimed first (store/owner.py): a second host on one of them is refused, naming this one."""
    from cardnet.host.server import HostServer
    from cardnet.store.owner import claimed

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        server = HostServer(config)
        await server.start()
        settle_heap()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.stop)
        addr = server.listen_address
        listen = f"{addr[0]}:{addr[1]}" if addr else "-"
        claims.serving(listen if addr else f"app socket {config.app_socket}")
        say_ready(as_json, {"name": config.name, "listen": None if addr is None else listen},
                  f"ready {config.name} {listen}")  # fmt: skip
        try:
            await server.serve_forever()
        finally:
            await server.aclose()

    with claimed(card_stores(config), f"host {config.name!r}") as claims:  # one host per card
        asyncio.run(main())


def card_stores(config: Any) -> list[tuple[str, str]]:
    """The card stores of a host ``config`` to claim (store/owner.py), each with how to give another."""
    return [(cc.store, f"give this host another card (cards[{i}].store in its config)")
            for i, cc in enumerate(config.cards)]  # fmt: skip


def run_host_service(
    config: Any,
    *,
    applet: str,
    pin: str,
    pin_hint: str,
    service: Callable[[bytes], Callable[[asyncio.Event], Coroutine[Any, Any, None]]],
    failed: tuple[str, str | None],
    ready_extra: Callable[[bytes], tuple[str, str]] | None = None,
    log_failure: str | None = None,
    check: Callable[[Any], None] | None = None,
    as_json: bool,
) -> None:
    """Run the host of ``config`` and, beside it, a service logged in to its one card with ``applet`` (the gate,
    the authority's blocklist signer) until SIGINT/SIGTERM; the caller checked that there is exactly one.

    The PIN is checked before ``ready`` (a wrong one stops here, once, and says how many tries remain).
    ``service(domain)`` is the service's ``run(stop)``; ``ready_extra(domain)`` a field the ``ready`` line adds
    (``ready NAME LISTEN KEY VALUE``). A service that fails stops the host (logged to ``log_failure`` if named),
    and the command fails with ``failed``: what stopped (e.g. "the gate service stopped") and the error's reason.
    ``check(card)``, if given, looks at the service's card (the host's :class:`~cardnet.card.runtime.Card`) once the
    host has opened it, before the PIN is checked: it fails (and the host stops) if the service cannot work with it."""
    from cardnet.cli.trn import verify_pin
    from cardnet.host.client import AppClient
    from cardnet.host.server import HostServer
    from cardnet.store.owner import claimed

    async def main() -> None:
        server = HostServer(config)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def shutdown() -> None:
            stop.set()
            server.stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, shutdown)
        card = next(c for c, cc in zip(server.cards, config.cards, strict=True) if applet in cc.applets)
        domain = card.uid.domain
        try:
            if check is not None:
                check(card)
            async with await AppClient.connect(str(config.app_socket), card=domain) as app:
                await verify_pin(app, pin, hint=pin_hint)
        except BaseException:
            server.stop()
            await server.aclose()
            raise
        task = asyncio.create_task(service(domain)(stop))

        def service_done(t: asyncio.Task[None]) -> None:
            if not t.cancelled() and t.exception() is not None:
                if log_failure is not None:  # a silent service would never do its work
                    logging.getLogger(log_failure).error(failed[0], exc_info=t.exception())
                shutdown()

        task.add_done_callback(service_done)
        addr = server.listen_address
        listen = f"{addr[0]}:{addr[1]}" if addr else "-"
        claims.serving(listen if addr else f"app socket {config.app_socket}")
        extra = None if ready_extra is None else ready_extra(domain)
        ready = {"name": config.name, "listen": None if addr is None else listen}
        settle_heap()
        say_ready(as_json, ready if extra is None else {**ready, extra[0]: extra[1]},
                  f"ready {config.name} {listen}" + ("" if extra is None else f" {extra[0]} {extra[1]}"))  # fmt: skip
        try:
            await server.serve_forever()
        finally:
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
            await server.aclose()
        if not task.cancelled() and task.exception() is not None:
            fail(f"{failed[0]}: {task.exception()}", reason=failed[1], hint="see the log above")

    with claimed(card_stores(config), f"{applet} host {config.name!r}") as claims:  # one host per card
        asyncio.run(main())
