"""``cardnet wallet ui``: the web wallet on 127.0.0.1 (the page itself is :mod:`cardnet.web.wallet`).

A subcommand of the ``cardnet wallet`` group (:mod:`cardnet.cli.wallet`), imported when it runs; docs/web-wallet.md.
"""

from __future__ import annotations

import asyncio
import os
import signal
from typing import TYPE_CHECKING

import click

from cardnet.cli.output import FiniteRange, fail, say_ready
from cardnet.cli.wallet import Target, wallet_command

if TYPE_CHECKING:
    from cardnet.store.owner import Claim
    from cardnet.wire import Uid

SERVICE = "wallet ui"  # who holds a card's page claim (store/owner.py's record)


def claim_key(socket: str, card: Uid) -> str:
    """What a page claims (store/owner.py; its file is this with ``-owner``): ``card`` at the host of ``socket``,
    beside the socket (the host's folder), whichever wallet config or ``--card`` named it."""
    return f"{os.path.realpath(socket)}.ui-{card.domain.hex()}"


def page_claim(socket: str, card: Uid) -> Claim | None:
    """Claim ``card``'s page for this process until it ends (None: the socket's folder is not ours to write, and
    nothing is claimed); a page already running on it is refused, naming it (pid, URL) and what to do."""
    from cardnet.store.errors import StoreError
    from cardnet.store.owner import claim, holder

    key = claim_key(socket, card)
    try:
        return claim(key, SERVICE)
    except StoreError as exc:
        if exc.reason != "in_use":
            return None
    record = holder(key) or {}
    pid = record.get("pid") if isinstance(record.get("pid"), int) else None
    url = record.get("listening") if isinstance(record.get("listening"), str) else None
    who = ", ".join([*([f"pid {pid}"] if pid else []), f"at {url}" if url else "starting"])
    stop = f"Ctrl-C in its terminal, or kill {pid}" if pid else "Ctrl-C in its terminal"
    fail(
        f"the wallet page of card {card} already runs ({who}): one card has one `cardnet wallet ui` (two would each "
        "send the card's orders and recover the same transfers and purchases)",
        reason="in_use",
        hint=f'use that page (a tab logged in there opens more with "Open in another tab"), or stop it ({stop}) '
        "and start `cardnet wallet ui` again for a new login link",
        fields={"pid": pid, "url": url},
    )


def _listen(text: str) -> tuple[str, int]:
    from cardnet.web.session import loopback

    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:8471)", param_hint="--listen")
    number = int(port)
    if number > 65535:
        raise click.BadParameter(f"{text!r}: the port {number} is past 65535 (give 1..65535, or 0 for any free one)",
                                 param_hint="--listen")  # fmt: skip
    try:
        return loopback(host), number
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None


@wallet_command(
    None,
    "ui",
    click.option("--listen", default="127.0.0.1:8471", show_default=True,
                 help="Where to serve the page: a loopback address and a port (0: any free one)."),
    click.option("--recover-wait", "recover_wait_s", type=FiniteRange(0, 600), default=10.0, show_default=True,
                 help="Seconds the page's Recover resends before it reports what is still under way."),
    click.option("--ttp-after", "ttp_after_s", type=FiniteRange(0, 600), default=5.0, show_default=True,
                 help="Seconds of resending before Recover puts an interrupted exchange to the TTP."),
)  # fmt: skip
def wallet_ui(target: Target, listen: str, recover_wait_s: float, ttp_after_s: float, as_json: bool) -> None:
    """Your wallet as a web page on this machine: tickets, vouchers, the e-purse, what is under way; buy a ticket,
    send one, walk through a gate, offer exchanges and answer them, load the e-purse, recover. Prints a one-time
    login link: open it in your browser (it works once and logs in that tab, which keeps its session across reloads
    until it is closed; the page's "Open in another tab" logs in more tabs; with no tab logged in left, start this
    command again). One page per card: a second on the same card is refused, naming the first. Runs until Ctrl-C."""
    from cardnet.cli.trn import card_pin, check_socket, parse_domain
    from cardnet.services.wallet import Wallet, WalletError
    from cardnet.transport.errors import TransportError
    from cardnet.web.wallet import WalletWeb

    host, port = _listen(listen)
    check_socket(target.socket)  # an absent host is said before the PIN is asked for
    socket, card, pin = target.socket, parse_domain(target.card), card_pin(target.pin)

    opened: list[Wallet] = []  # the wallet opened to learn the card (the page's first), then each one it reopens

    async def open_wallet() -> Wallet:
        return opened.pop() if opened else await Wallet.open(socket, pin=pin, card=card)

    async def main() -> None:
        try:
            opened.append(await open_wallet())
        except WalletError as exc:
            hints = {"no_host": "is `cardnet host run` running with that app_socket?",
                     "wrong_pin": "check the PIN; at 0 tries the card locks"}  # fmt: skip
            fail(str(exc), reason=exc.reason, hint=hints.get(exc.reason))
        try:
            claim = page_claim(socket, opened[0].card)
        except SystemExit:
            await opened.pop().close()
            raise
        try:
            await serve(claim)
        finally:
            if claim is not None:
                claim.release()

    async def serve(claim: Claim | None) -> None:
        web = WalletWeb(
            open_wallet, target.config, app_socket=socket, recover_wait_s=recover_wait_s, ttp_after_s=ttp_after_s
        )
        try:
            served = await web.start(host, port)
        except WalletError as exc:
            fail(str(exc), reason=exc.reason, hint="is `cardnet host run` still running? start it, then try again")
        except TransportError as exc:
            await web.aclose()
            fail(str(exc), reason="cannot_listen", hint="choose another port with --listen 127.0.0.1:PORT")
        if claim is not None:
            claim.serving(served.url)
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
