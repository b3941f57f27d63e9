"""``cardnet host run``: run a host process (cards, app socket, remote peers)."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from pathlib import Path
from typing import Any

import click

from cardnet.cli.output import console, emit_json, json_option

# The host process allocates a few short-lived objects per message. Collect the
# young generation every GC_GEN0 net allocations rather than every 700, and keep
# what exists at start-up (modules, keys, the cards' mirrors) out of full
# collections: fewer, shorter collector pauses for the same garbage.
GC_GEN0 = 10_000


@click.group()
def host() -> None:
    """Hosts carry messages between applications, their cards and remote hosts (TENeT)."""


@host.command("run")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
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
    """Run the host of a loaded ``config`` until SIGINT/SIGTERM; print ``ready`` once it accepts connections."""
    from cardnet.host.server import HostServer

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    async def main() -> None:
        server = HostServer(config)
        await server.start()
        gc.collect()
        gc.freeze()
        gc.set_threshold(GC_GEN0, 20, 20)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.stop)
        addr = server.listen_address
        listen = f"{addr[0]}:{addr[1]}" if addr else "-"
        if as_json:
            emit_json({"ready": {"name": config.name, "listen": None if addr is None else listen}}, line=True)
        else:
            console.print(f"ready {config.name} {listen}", markup=False)
            console.file.flush()
        try:
            await server.serve_forever()
        finally:
            await server.aclose()

    asyncio.run(main())
