"""``cardnet wallet ui``: the web wallet on 127.0.0.1 (the page itself is :mod:`cardnet.web.wallet`).

A subcommand of the ``cardnet wallet`` group (:mod:`cardnet.cli.wallet`), imported when it runs; docs/web-wallet.md.
"""

from __future__ import annotations

import asyncio
import signal

import click

from cardnet.cli.output import fail, say_ready
from cardnet.cli.wallet import Target, wallet_command


def _listen(text: str) -> tuple[str, int]:
    from cardnet.web.session import loopback

    host, sep, port = text.rpartition(":")
    try:
        number = int(port)
        ok = bool(sep) and 0 <= number <= 65535
    except ValueError:
        ok = False
    if not ok:
        raise click.BadParameter(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8471)", param_hint="--listen")
    try:
        return loopback(host), number
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None


@wallet_command(
    None,
    "ui",
    click.option("--listen", default="127.0.0.1:8471", show_default=True,
                 help="Where to serve the page: a loopback address and a port (0: any free one)."),
    click.option("--recover-wait", "recover_wait_s", type=click.FloatRange(0, 600), default=10.0, show_default=True,
                 help="Seconds the page's Recover resends before it reports what is still under way."),
    click.option("--ttp-after", "ttp_after_s", type=click.FloatRange(0, 600), default=5.0, show_default=True,
                 help="Seconds of resending before Recover puts an interrupted exchange to the TTP."),
)  # fmt: skip
def wallet_ui(target: Target, listen: str, recover_wait_s: float, ttp_after_s: float, as_json: bool) -> None:
    """Your wallet as a web page on this machine: tickets, vouchers, the e-purse, what is under way; buy a ticket,
    send one, walk through a gate, offer exchanges and answer them, load the e-purse, recover. Prints a one-time
    login link: open it in your browser (it works once and logs in that tab, which keeps its session across reloads
    until it is closed; the page's "Open in another tab" logs in more tabs; with no tab logged in left, start this
    command again). Runs until Ctrl-C."""
    from cardnet.cli.trn import card_pin, check_socket, parse_domain
    from cardnet.services.wallet import Wallet, WalletError
    from cardnet.transport.errors import TransportError
    from cardnet.web.wallet import WalletWeb

    host, port = _listen(listen)
    check_socket(target.socket)  # an absent host is said before the PIN is asked for
    socket, card, pin = target.socket, parse_domain(target.card), card_pin(target.pin)

    async def open_wallet() -> Wallet:
        return await Wallet.open(socket, pin=pin, card=card)

    async def main() -> None:
        web = WalletWeb(
            open_wallet, target.config, app_socket=socket, recover_wait_s=recover_wait_s, ttp_after_s=ttp_after_s
        )
        try:
            served = await web.start(host, port)
        except WalletError as exc:
            hints = {"no_host": "is `cardnet host run` running with that app_socket?",
                     "wrong_pin": "check the PIN; at 0 tries the card locks"}  # fmt: skip
            fail(str(exc), reason=exc.reason, hint=hints.get(exc.reason))
        except TransportError as exc:
            await web.aclose()
            fail(str(exc), reason="cannot_listen", hint="choose another port with --listen 127.0.0.1:PORT")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        say_ready(as_json, {"url": served.url, "login": served.login_url}, f"ready {served.url}",
                  f"open {served.login_url} in your browser (the link works once, in one tab)")  # fmt: skip
        try:
            await stop.wait()
        finally:
            await web.aclose()

    asyncio.run(main())
