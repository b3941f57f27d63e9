"""``cardnet exchange``: swap a voucher on your card for one on another card, fairly (TENeT fair exchange).

Built on the wallet library (:mod:`cardnet.services.wallet`). Every command takes ``--socket`` (the host's
``app_socket``), ``--pin`` and ``--card DOMAIN`` like ``cardnet trn``. An exchange is named by the id
``offer`` prints (32 hex digits).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import click

from cardnet.cli.output import emit_json, fail, json_option, print_rows, progress, say
from cardnet.cli.trn import CARD, PIN, SOCKET, hex16, parse_oid, parse_uid, run_on_wallet

WAIT_S = 30.0

# What each phase means for the card's owner, and what may be done.
PHASE_WORDS = {
    "offered": "offered: waiting for the other owner (give-up takes your voucher back)",
    "proposed": "offered to you: accept or reject it",
    "agreed": "accepted: waiting for the other card's confirmation (abort asks the TTP)",
    "confirmed": "confirmed: waiting for the other card's commitment (resolve asks the TTP)",
    "resolving": "the TTP is asked to resolve",
    "aborting": "the TTP is asked to abort",
    "done": "swapped: you have the other voucher",
    "aborted": "ended without a swap: your voucher is yours again",
    "gave_up": "given up: your voucher is yours again",
}


def _id(text: str) -> bytes:
    return hex16(text, "an exchange id (as `cardnet exchange offer` prints it)")


WAIT_HELP = "Seconds to wait for the exchange to end (0: answer at once; `status` shows how it goes)."
ID = click.option("--id", "xid", required=True, help="The exchange's id (32 hex, from `offer` or `list`).")


def wallet_command(name: str, *options: Callable[..., Any]) -> Callable[[Callable[..., Any]], click.Command]:
    stack = (SOCKET, PIN, CARD, *options, json_option)

    def wrap(f: Callable[..., Any]) -> click.Command:
        for option in reversed(stack):
            f = option(f)
        return exchange.command(name)(f)

    return wrap


def _with_wallet(socket: str, pin: str | None, card: str | None, work: Callable[[Any], Awaitable[Any]]) -> Any:
    """Open the wallet on ``card`` at ``socket`` with the PIN, run ``work``; a refusal fails in words."""
    return run_on_wallet(socket, pin, card, work, HINTS)


HINTS = {
    "no_ttp": "name the TTP first: cardnet exchange set-ttp --ttp UID",
    "no_exchange": "`cardnet exchange list` shows this card's exchanges and their ids",
    "illegal_move": "`cardnet trn list` shows your tokens: only an enabled one can be offered",
}


# An order's own hints, where the protocol-wide one would mislead.
ORDER_HINTS = {
    "accept": {
        "illegal_move": "the offer wants a voucher this card does not hold usable (`cardnet exchange list` shows "
        "what it wants, `cardnet trn list` what you hold): reject it with `cardnet exchange reject --id {id}`",
    },
}


def exchange_row(x: Any) -> dict[str, Any]:
    """An :class:`~cardnet.services.wallet.Exchange` as a row (JSON, tables), its phase in its owner's words."""
    row = {
        "id": x.n1.hex(), "role": x.role, "phase": x.phase, "peer": str(x.peer), "give": x.give.hex(),
        "want": x.want.hex(), "state": PHASE_WORDS.get(x.phase, x.phase),
    }  # fmt: skip
    if x.body is not None:
        row["offered"] = x.body.decode("utf-8", "replace")
    if x.why:
        row["why"] = x.why
        row["state"] = f"{row['state']} ({why_words(x.role, x.why)})"
    return row


def why_words(role: str, why: str) -> str:
    """Why an exchange ended without a swap, in its owner's words (a refusal's reason as the card keeps it)."""
    if why == "refused_by_owner":
        return "you rejected it" if role == "responder" else "the other owner rejected it"
    return WHY_WORDS.get(why, why)


WHY_WORDS = {
    "busy": "the other card has too many offers waiting: offer again later",
    "ttp_mismatch": "the other card follows another TTP (or none): both owners must set the same one "
    "(cardnet exchange set-ttp)",
    "gave up": "you gave it up",
    "withdrawn": "the other owner withdrew the offer",
    "aborted by the TTP": "the TTP aborted it",
}


# An exchange list's columns for people; offered: the body of a voucher offered to this card.
EXCHANGE_COLUMNS = ("id", "role", "peer", "give", "want", "offered", "state")


def report_exchange(as_json: bool, x: Any, text: str) -> None:
    row = exchange_row(x)
    say(as_json, row, f"{text}\nexchange {x.n1.hex()}: {row['state']}")


@click.group()
def exchange() -> None:
    """Fair exchange of vouchers between two cards: both swap, or neither loses anything (a TTP settles an
    exchange interrupted half-way). One owner offers, the other accepts or rejects; `list` shows how each stands."""


@wallet_command(
    "offer",
    click.option("--give", required=True, help="Your voucher (oid, 32 hex), held enabled on this card."),
    click.option("--want", required=True, help="The voucher you want (oid, 32 hex), held by the other card."),
    click.option("--to", "to", required=True, help="The other card's Uid (DOMAIN:00000000)."),
    click.option("--wait", "wait_s", type=float, default=0.0, show_default=True, help=WAIT_HELP),
)
def exchange_offer(
    socket: str, pin: str | None, card: str | None, give: str, want: str, to: str, wait_s: float, as_json: bool
) -> None:
    """Offer your voucher for theirs. Yours is locked until the exchange ends; the other owner accepts or
    rejects (`cardnet exchange list` on their card shows the offer)."""
    g, w, dst = parse_oid(give), parse_oid(want), parse_uid(to)

    x = _with_wallet(socket, pin, card, lambda wallet: offer_exchange(wallet, g, w, dst, wait_s))
    then = (
        f"the other owner sees it with `cardnet exchange list` and accepts it with `cardnet exchange accept --id "
        f"{x.n1.hex()}` (or rejects it)"
    )
    report_exchange(as_json, x, f"Offered {give} for {want} held by {dst}; {then}.")


async def offer_exchange(wallet: Any, give: bytes, want: bytes, to: Any, wait_s: float) -> Any:
    """Offer ``give`` for ``want`` held by card ``to``; the exchange (once ended, if ``wait_s`` allows)."""
    return await wait_for_end(wallet, await wallet.offer(give, want, to), wait_s)


async def order_exchange(wallet: Any, method: str, n1: bytes, wait_s: float) -> Any:
    """Give exchange ``n1`` the wallet library's order ``method`` (accept, reject, give_up, resolve, abort); the
    exchange (once ended, if ``wait_s`` allows)."""
    return await wait_for_end(wallet, await getattr(wallet, method)(n1), wait_s)


async def wait_for_end(wallet: Any, x: Any, wait_s: float) -> Any:
    """Exchange ``x`` once ended, or as it stands after ``wait_s`` seconds (0: at once)."""
    if wait_s <= 0:
        return x
    with progress(f"waiting up to {wait_s:g} s for the exchange to end…"):
        try:
            return await wallet.wait(x.n1, timeout_s=wait_s)
        except TimeoutError:
            return await wallet.status(x.n1)


@wallet_command("list")
def exchange_list(socket: str, pin: str | None, card: str | None, as_json: bool) -> None:
    """This card's exchanges (offers made, offers received) and how each stands."""
    xs = _with_wallet(socket, pin, card, lambda wallet: wallet.exchanges())
    rows = [exchange_row(x) for x in xs]
    if as_json:
        emit_json({"exchanges": rows})
        return
    print_rows(rows, EXCHANGE_COLUMNS, title="exchanges", empty="no exchanges")


def _order(name: str, doc: str, method: str, done: str) -> None:
    wait = click.option("--wait", "wait_s", type=float, default=0.0, show_default=True, help=WAIT_HELP)

    @wallet_command(name, ID, wait)
    def command(socket: str, pin: str | None, card: str | None, xid: str, wait_s: float, as_json: bool) -> None:
        n1 = _id(xid)
        own = {k: v.format(id=n1.hex()) for k, v in ORDER_HINTS.get(name, {}).items()}
        hints = {**HINTS, "refused": f"`cardnet exchange status --id {n1.hex()}` shows how this exchange stands", **own}
        x = run_on_wallet(socket, pin, card, lambda wallet: order_exchange(wallet, method, n1, wait_s), hints)
        report_exchange(as_json, x, done)

    command.help = doc


_order("accept", "Accept an offer made to this card: your voucher is locked and the swap goes ahead.", "accept",
       "Accepted.")  # fmt: skip
_order("reject", "Reject an offer made to this card: nothing of yours moves.", "reject", "Rejected.")
_order("give-up", "Give up an offer you made, before the other card confirmed: your voucher is yours again.",
       "give_up", "Given up.")  # fmt: skip
_order("resolve", "After you confirmed and the other card went quiet: ask the TTP to settle (you get theirs, or "
       "yours back).", "resolve", "Asked the TTP to resolve.")  # fmt: skip
_order("abort", "After you accepted and the other card went quiet: ask the TTP to settle (yours back, or theirs).",
       "abort", "Asked the TTP to abort.")  # fmt: skip


@wallet_command("status", ID)
def exchange_status(socket: str, pin: str | None, card: str | None, xid: str, as_json: bool) -> None:
    """How one exchange stands."""
    n1 = _id(xid)
    x = _with_wallet(socket, pin, card, lambda wallet: wallet.status(n1))
    report_exchange(as_json, x, f"{x.role} of an exchange with {x.peer}.")


@wallet_command("set-ttp", click.option("--ttp", required=True, help="The TTP card's Uid (DOMAIN:00000000)."))
def exchange_set_ttp(socket: str, pin: str | None, card: str | None, ttp: str, as_json: bool) -> None:
    """Name the TTP this card asks when an exchange is interrupted (resolve, abort)."""
    uid = parse_uid(ttp)

    async def work(wallet: Any) -> None:
        await wallet.set_ttp(uid)

    _with_wallet(socket, pin, card, work)
    say(as_json, {"ttp": str(uid)}, f"this card now asks {uid} to settle interrupted exchanges")


@click.group()
def ttp() -> None:
    """The trusted third party of fair exchanges: settles an exchange interrupted half-way (resolve or abort)."""


@ttp.command("run")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='A host config (docs/host.md) with a card whose applets include "ttp".',
)
@json_option
def ttp_run(config_path: Path, as_json: bool) -> None:
    """Run the TTP's host: a host whose card has the `ttp` applet (a card personalised with role service).

    \b
    Its decisions are kept in that card's store (first-wins per exchange) and its
    admissions are signed with the card's key. Wallets name it with
    `cardnet exchange set-ttp --ttp UID`. Prints "ready <name> <listen>" like `cardnet host run`.
    """
    from cardnet.cli.host import run_host
    from cardnet.host.config import load_config

    config = load_config(config_path)
    if not any("ttp" in c.applets for c in config.cards):
        fail(
            f"{config_path} runs no card with the ttp applet",
            reason="no_ttp_card",
            hint='add applets = ["ttp"] to the TTP card\'s [[cards]] section',
        )
    run_host(config, as_json)
