"""``cardnet wallet exchange``: fair exchanges of vouchers from the person's card (offer, accept, reject, give up,
status, list), the protocol's own command-line code (:mod:`cardnet.cli.fairx`) on the wallet's card.

It says the same things as ``cardnet exchange`` (the words are :mod:`cardnet.cli.fairx`'s: refusals, how an exchange
stands, who made it, what to do next), with this group's commands in them (:data:`SPELLING`): ``cardnet wallet
exchange accept ID``, and ``cardnet wallet recover`` where ``cardnet exchange`` has resolve and abort."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import click

from cardnet.cli.fairx import (
    EXCHANGE_COLUMNS,
    OFFER_HINTS,
    Spelling,
    exchange_row,
    offer_exchange,
    offer_terms,
    order_exchange,
    order_hints,
    people_rows,
    report_exchange,
    run_worded,
    still_words,
    who_words,
)
from cardnet.cli.output import FiniteRange, emit_json, print_rows
from cardnet.cli.trn import hex16
from cardnet.cli.wallet import HINTS, WAIT_S, Target, wallet_command

# The commands of this group in the exchange words (a wallet puts an exchange to the TTP with `recover`).
SPELLING = Spelling(
    order="`cardnet wallet exchange {verb} {id}`",
    settle="`cardnet wallet recover`",
    holdings="`cardnet wallet list`",
    listing="`cardnet wallet exchange list`",
)


@click.group("exchange")
def wallet_exchange() -> None:
    """Swap a voucher of yours for one on another card, fairly: both swap, or neither loses anything."""


def _exchange_id(text: str) -> bytes:
    return hex16(text, "an exchange id (as `cardnet wallet exchange offer` prints it)")


def _run(target: Target, work: Callable[[Any], Awaitable[Any]], hints: dict[str, str] | None = None) -> Any:
    """``work`` on the wallet's card; a refusal fails in the owner's words, as `cardnet exchange` says it."""
    return run_worded(target.run, work, {**HINTS, **(hints or {})}, SPELLING)


WAIT = click.option("--wait", "wait_s", type=FiniteRange(0, 3600), default=30.0, show_default=True,
                    help="Seconds to wait for the exchange to end (0: do not wait).")  # fmt: skip


@wallet_command(
    wallet_exchange,
    "offer",
    click.option("--give", required=True, help="Your voucher (oid, 32 hex), on this card."),
    click.option("--want", required=True, help="The voucher you want (oid, 32 hex), on the other card."),
    click.option("--to", "to", required=True, help="The other card's Uid (DOMAIN:00000000)."),
    click.option("--wait", "wait_s", type=WAIT_S, default=0.0, show_default=True,
                 help="Seconds to wait for the other owner's answer and the swap."),
)  # fmt: skip
def exchange_offer(target: Target, give: str, want: str, to: str, wait_s: float, as_json: bool) -> None:
    """Offer your voucher for theirs: yours is locked until the other owner accepts (the swap) or rejects."""
    g, w, dst = offer_terms(give, want, to)
    x = _run(target, lambda wallet: offer_exchange(wallet, g, w, dst, wait_s), {"own_card": OFFER_HINTS["own_card"]})
    then = f"the other owner accepts it with `cardnet wallet exchange accept {x.n1.hex()}`"
    text = f"Offered {g.hex()} for {w.hex()} held by {dst}; {then}.{still_words(x, wait_s)}"
    report_exchange(as_json, x, text, steps=True, spelling=SPELLING)


def _exchange_order(name: str, doc: str, method: str, done: str, *, wait: bool) -> None:
    options = (click.argument("xid", metavar="EXCHANGE_ID"), *((WAIT,) if wait else ()))

    @wallet_command(wallet_exchange, name, *options)
    def command(target: Target, xid: str, as_json: bool, wait_s: float = 0.0) -> None:
        n1 = _exchange_id(xid)
        x = _run(target, lambda wallet: order_exchange(wallet, method, n1, wait_s), order_hints(name, n1, SPELLING))
        report_exchange(as_json, x, done + still_words(x, wait_s), steps=True, spelling=SPELLING)

    command.help = doc


_exchange_order("accept", "Accept an offer made to you: your voucher goes, theirs comes (both or neither).",
                "accept", "Accepted.", wait=True)  # fmt: skip
_exchange_order("reject", "Reject an offer made to you: nothing of yours moves.", "reject", "Rejected.", wait=False)
_exchange_order("give-up", "Take back an offer you made that the other owner has not answered: your voucher is "
                "yours again (a late acceptance is refused).", "give_up", "Given up.", wait=True)  # fmt: skip


@wallet_command(wallet_exchange, "status", click.argument("xid", metavar="EXCHANGE_ID"))
def exchange_status(target: Target, xid: str, as_json: bool) -> None:
    """How one exchange stands."""
    n1 = _exchange_id(xid)
    x = _run(target, lambda wallet: wallet.status(n1))
    report_exchange(as_json, x, who_words(x), steps=True, spelling=SPELLING)


@wallet_command(wallet_exchange, "list")
def exchange_list(target: Target, as_json: bool) -> None:
    """Your exchanges (offers made, offers received) and how each stands."""
    rows = [exchange_row(x) for x in _run(target, lambda wallet: wallet.exchanges())]
    if as_json:
        emit_json({"exchanges": rows})
        return
    print_rows(people_rows(rows), EXCHANGE_COLUMNS, title="exchanges", empty="no exchanges")
