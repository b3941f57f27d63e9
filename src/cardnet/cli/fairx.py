"""``cardnet exchange``: swap a voucher on your card for one on another card, fairly (TENeT fair exchange).

Built on the wallet library (:mod:`cardnet.services.wallet`). Every command takes ``--socket`` (the host's
``app_socket``), ``--pin`` and ``--card DOMAIN`` like ``cardnet trn``. An exchange is named by the id
``offer`` prints (32 hex digits).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from cardnet.cli.output import FiniteRange, emit_json, fail, json_option, print_rows, progress, say
from cardnet.cli.trn import CARD, PIN, SOCKET, hex16, parse_oid, parse_uid, run_on_wallet
from cardnet.services.wallet import WalletError

WAIT_S = 30.0

# What each phase means for the card's owner (the phase names are the protocol's: a person reads these words).
PHASE_WORDS = {
    "offered": "offered: waiting for the other owner (give-up takes your voucher back)",
    "proposed": "offered to you: accept or reject it",
    "agreed": "accepted: waiting for the other card to finish the swap",
    "confirmed": "your voucher is handed over: waiting for the other card to hand over theirs",
    "resolving": "the TTP is asked to finish the swap: waiting for its answer",
    "aborting": "the TTP is asked to call the swap off: waiting for its answer",
    "done": "swapped: you have the other voucher",
    "aborted": "ended without a swap: your voucher is yours again",
    "gave_up": "given up: your voucher is yours again",
}

# What the owner may do next, by phase; {accept}, {status}, ...: how the owner gives that order where they are
# (:class:`Spelling`). Ended exchanges: nothing.
NEXT_STEPS = {
    "offered": "the other owner accepts or rejects it ({status} shows which); until then {give_up} takes your "
    "voucher back",
    "proposed": "{accept} swaps, {reject} declines (nothing of yours is locked until you accept)",
    "agreed": "the cards finish by themselves ({status} shows when); if the other card stays silent, {abort} asks "
    "the TTP to settle it: you get their voucher if their card already gave it, else yours back",
    "confirmed": "the cards finish by themselves ({status} shows when); if the other card stays silent, {resolve} "
    "asks the TTP to settle it: you get their voucher, or yours back",
    "resolving": "{status} shows the TTP's answer once it came; {resolve} asks again (if it stays silent, check this "
    "host's route to the TTP)",
    "aborting": "{status} shows the TTP's answer once it came; {abort} asks again (if it stays silent, check this "
    "host's route to the TTP)",
}


@dataclass(frozen=True)
class Spelling:
    """How an owner gives each exchange order where they are: ``order`` is a command with ``{verb}`` (accept,
    reject, give-up, resolve, abort, status, list) and ``{id}``; ``settle`` the one command that puts an exchange to
    the TTP, where resolve and abort have none of their own; ``holdings`` what shows the card's vouchers. The words
    (:data:`NEXT_STEPS`, refusals, hints) are the same everywhere; only these differ (`cardnet exchange`,
    `cardnet wallet exchange`, the web wallet's buttons)."""

    order: str = "`cardnet exchange {verb} --id {id}`"
    settle: str | None = None
    holdings: str = "`cardnet trn list`"
    listing: str = "`cardnet exchange list`"

    def words(self, n1: bytes) -> dict[str, str]:
        """The placeholders of :data:`NEXT_STEPS` and the hints, for exchange ``n1``."""
        verbs = {"accept": "accept", "reject": "reject", "give_up": "give-up", "resolve": "resolve",
                 "abort": "abort", "status": "status"}  # fmt: skip
        got = {k: self.order.format(verb=v, id=n1.hex()) for k, v in verbs.items()}
        if self.settle is not None:
            got["resolve"] = got["abort"] = self.settle
        return {**got, "holdings": self.holdings, "list": self.listing, "id": n1.hex()}


EXCHANGE = Spelling()  # `cardnet exchange`

# Who made the offer, for people (JSON keeps ``role``: initiator or responder).
ROLE_WORDS = {"initiator": "made by you", "responder": "made to you"}


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


def _with_wallet(
    socket: str,
    pin: str | None,
    card: str | None,
    work: Callable[[Any], Awaitable[Any]],
    hints: dict[str, str] | None = None,
) -> Any:
    """Open the wallet on ``card`` at ``socket`` with the PIN, run ``work``; a refusal fails in its owner's words
    (:func:`run_worded`), with ``hints`` by reason."""
    return run_worded(lambda w, h: run_on_wallet(socket, pin, card, w, h), work, hints or HINTS)


Runner = Callable[[Callable[[Any], Awaitable[Any]], dict[str, str]], Any]


def run_worded(
    run: Runner, work: Callable[[Any], Awaitable[Any]], hints: dict[str, str], spelling: Spelling = EXCHANGE
) -> Any:
    """``run(work, hints)`` (which opens the wallet, runs ``work`` and fails on a refusal, with ``hints`` by
    reason), where a refusal of an exchange order fails in its owner's words: an order's :class:`OrderRefused`
    with what to do next, a refusal in :data:`REFUSAL_WORDS` with its hint; commands as ``spelling`` gives them."""

    async def guarded(wallet: Any) -> Any:
        try:
            return await work(wallet)
        except OrderRefused as exc:
            then = next_step(exc.exchange, spelling) or look_words(exc.exchange, spelling)
            return _Failure(str(exc), exc.reason, then)
        except WalletError as exc:
            if exc.reason not in REFUSAL_WORDS:
                raise
            return _Failure(REFUSAL_WORDS[exc.reason], exc.reason, hints.get(exc.reason))

    got = run(guarded, hints)
    if isinstance(got, _Failure):
        fail(got.message, reason=got.reason, hint=got.hint)
    return got


class _Failure:
    """A refusal worded for the owner, to fail with once the wallet is closed."""

    def __init__(self, message: str, reason: str, hint: str | None) -> None:
        self.message, self.reason, self.hint = message, reason, hint


def look_words(x: Any, spelling: Spelling = EXCHANGE) -> str:
    """Where the owner of ended exchange ``x`` sees how it ended and what the card holds now."""
    return "{status} shows how it ended, {holdings} what this card holds now".format(**spelling.words(x.n1))


HINTS = {
    "no_ttp": "name the TTP first, the same one as the other owner: cardnet exchange set-ttp --ttp UID",
    "no_exchange": "`cardnet exchange list` shows this card's exchanges and their ids",
    "illegal_move": "`cardnet trn list` shows your tokens: only an enabled one can be offered",
    "peer_store_failed": "ask the other owner to free space on the disk of their card's host (or mend it): the "
    "exchange then goes on by itself while both hosts run; list your exchanges to see what you may do meanwhile",
    "ttp_store_failed": "ask the TTP's operator to free space on the disk of its host (or mend it), then ask again "
    "with the same order and --wait (`cardnet exchange resolve` or `abort`): the exchange ends then",
}

# A card's refusal of an exchange order in its owner's words, where the card's own detail is protocol talk.
REFUSAL_WORDS = {
    "no_ttp": "this card has no TTP yet: an exchange needs one, to settle it should it be cut off half-way",
    "own_card": "--to names this very card: an exchange is with another owner's card",
}


# An order's own hints, where the protocol-wide one would mislead ({reject}, {list}, ...: as :class:`Spelling`).
ORDER_HINTS = {
    "accept": {
        "illegal_move": "the offer wants a voucher this card does not hold usable ({list} shows what it wants, "
        "{holdings} what you hold): reject it with {reject}",
    },
}


def order_hints(order: str, n1: bytes, spelling: Spelling = EXCHANGE) -> dict[str, str]:
    """The hints by reason for ``order`` (a command's name: accept, give-up, ...) on exchange ``n1``."""
    words = spelling.words(n1)
    own = {k: v.format(**words) for k, v in ORDER_HINTS.get(order, {}).items()}
    return {"refused": "{status} shows how this exchange stands".format(**words), **own}


def next_step(x: Any, spelling: Spelling = EXCHANGE) -> str | None:
    """What the owner of exchange ``x`` may do now (commands as ``spelling`` gives them); None once it ended."""
    words = NEXT_STEPS.get(x.phase)
    return None if words is None else words.format(**spelling.words(x.n1))


def who_words(x: Any) -> str:
    """Who offered exchange ``x`` to whom, for its owner."""
    if x.role == "initiator":
        return f"An exchange you offered to {x.peer}."
    return f"An exchange {x.peer} offered to you."


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
    return WHY_WORDS.get(why, f"the other card refused it: {why}")


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


def report_exchange(as_json: bool, x: Any, text: str, *, steps: bool = False, spelling: Spelling = EXCHANGE) -> None:
    """One exchange after a command: ``text``, then how it stands and (``steps``) what its owner may do next."""
    row = exchange_row(x)
    then = next_step(x, spelling) if steps else None
    say(as_json, row, f"{text}\nexchange {x.n1.hex()}: {row['state']}" + (f"\nnext: {then}" if then else ""))


class OrderRefused(WalletError):
    """The card refused an order (accept, reject, give up, resolve, abort) because exchange ``exchange`` does not
    stand where that order applies; the message says so in its owner's words."""

    def __init__(self, message: str, exchange: Any) -> None:
        super().__init__("refused", message)
        self.exchange = exchange


# Where each order applies: (the owner's role, the phases).
ORDER_APPLIES = {
    "accept": ("responder", {"proposed"}),
    "reject": ("responder", {"proposed"}),
    "give_up": ("initiator", {"offered"}),
    "resolve": ("initiator", {"confirmed", "resolving"}),
    "abort": ("responder", {"agreed", "aborting"}),
}

# Why an order does not apply to an unfinished exchange of the other role: (order, the owner's role) -> words.
WRONG_ROLE = {
    ("accept", "initiator"): "this is your own offer: only the other owner accepts or rejects it",
    ("reject", "initiator"): "this is your own offer: only the other owner accepts or rejects it",
    ("give_up", "responder"): "this offer was made to you: only the owner who made it gives it up",
    ("resolve", "responder"): "only the owner who made the offer asks the TTP to resolve it",
    ("abort", "initiator"): "only the owner who accepted the offer asks the TTP to abort it",
}

# Why an order does not apply to an unfinished exchange of the right role: (order, phase) -> words.
WRONG_PHASE = {
    "accept": "this offer was already accepted: the swap is under way",
    "reject": "this offer was already accepted: the swap is under way, and only the TTP can call it off now",
    "give_up": "too late to give it up: the other owner accepted, and your card has already handed over your "
    "voucher for theirs",
    "resolve": "there is nothing for the TTP to settle yet: the other owner has not accepted your offer",
    "abort": "there is nothing to abort: you have not accepted this offer, and nothing of yours is locked",
}


def refused_words(method: str, x: Any) -> str | None:
    """Why ``method`` (a wallet order) does not apply to exchange ``x`` as it stands, in its owner's words; None
    if it does (the card refused it for another reason, which its own detail says)."""
    role, phases = ORDER_APPLIES[method]
    if x.role == role and x.phase in phases:
        return None
    verb = method.replace("_", " ")
    if x.finished:
        why = f" ({why_words(x.role, x.why)})" if x.why else ""
        return f"there is nothing left to {verb}: this exchange {ENDED_WORDS.get(x.phase, x.phase)}{why}"
    if x.role != role:
        return f"{WRONG_ROLE[(method, x.role)]} (it stands: {PHASE_WORDS.get(x.phase, x.phase)})"
    return WRONG_PHASE[method]


ENDED_WORDS = {
    "done": "ended in the swap, you have the other voucher",
    "aborted": "ended without a swap, your voucher is yours again",
    "gave_up": "was given up, your voucher is yours again",
}


@click.group()
def exchange() -> None:
    """Fair exchange of vouchers between two cards: both swap, or neither loses anything (a TTP settles an
    exchange interrupted half-way). One owner offers, the other accepts or rejects; `list` shows how each stands."""


@wallet_command(
    "offer",
    click.option("--give", required=True, help="Your voucher (oid, 32 hex), held enabled on this card."),
    click.option("--want", required=True, help="The voucher you want (oid, 32 hex), held by the other card."),
    click.option("--to", "to", required=True, help="The other card's Uid (DOMAIN:00000000)."),
    click.option("--wait", "wait_s", type=FiniteRange(0, 3600), default=0.0, show_default=True, help=WAIT_HELP),
)
def exchange_offer(
    socket: str, pin: str | None, card: str | None, give: str, want: str, to: str, wait_s: float, as_json: bool
) -> None:
    """Offer your voucher for theirs. Yours is locked until the exchange ends; the other owner accepts or
    rejects (`cardnet exchange list` on their card shows the offer)."""
    g, w, dst = offer_terms(give, want, to)
    x = _with_wallet(socket, pin, card, lambda wallet: offer_exchange(wallet, g, w, dst, wait_s), OFFER_HINTS)
    then = (
        f"the other owner sees it with `cardnet exchange list` and accepts it with `cardnet exchange accept --id "
        f"{x.n1.hex()}` (or rejects it)"
    )
    report_exchange(as_json, x, f"Offered {give} for {want} held by {dst}; {then}.{still_words(x, wait_s)}", steps=True)


OFFER_HINTS = {**HINTS, "own_card": "give the other owner's card Uid with --to"}


def offer_terms(give: str, want: str, to: str) -> tuple[bytes, bytes, Any]:
    """An offer's ``--give``, ``--want`` and ``--to`` read, or a usage error (the same voucher twice, an
    application's Uid) before anything reaches the card."""
    g, w, dst = parse_oid(give), parse_oid(want), parse_uid(to)
    if g == w:
        raise click.BadParameter(
            "an exchange swaps two different vouchers: --give and --want are the same", param_hint="--want"
        )
    if not dst.is_card:
        raise click.BadParameter(
            f"{to} is an application's Uid: give the other card's, DOMAIN:00000000", param_hint="--to"
        )
    return g, w, dst


def still_words(x: Any, wait_s: float) -> str:
    """After a ``--wait`` that ran out: that the exchange has not ended yet."""
    return f" It has not ended after {wait_s:g} s." if wait_s > 0 and not x.finished else ""


async def offer_exchange(wallet: Any, give: bytes, want: bytes, to: Any, wait_s: float) -> Any:
    """Offer ``give`` for ``want`` held by card ``to``; the exchange (once ended, if ``wait_s`` allows). An offer to
    this very card is refused ``own_card``, and one to a card its host cannot reach (no route) fails ``no_route``,
    before any order."""
    if to == wallet.card:
        raise WalletError("own_card", REFUSAL_WORDS["own_card"])
    unreachable = await no_route(wallet, to, "--to: they give it")
    if unreachable is not None:
        fail(unreachable[0], reason="no_route", hint=unreachable[1])
    return await wait_for_end(wallet, await wallet.offer(give, want, to), wait_s)


async def no_route(wallet: Any, to: Any, given: str) -> tuple[str, str] | None:
    """Why an exchange offered to card ``to`` could not be carried (no card of its domain on this host and no route
    to it), and what to do (``given``: where the person gave the Uid), or None when the host can reach ``to``; the
    words of ``cardnet wallet exchange offer`` and the web wallet's Offer. (Else the voucher would stay locked for an
    offer no message could carry, until given up.)"""
    if to.domain == wallet.card.domain or (await wallet.route(to.domain))["where"] != "none":
        return None
    return (f"this host cannot reach {to}: no card of domain {to.domain.hex()} here and no route to it; nothing was "
            "offered: your voucher stays usable",
            f"check the other owner's card Uid ({given}), or add "
            f'"{to.domain.hex()}" = "HOST:PORT" (their host\'s address) to [routes] in your host\'s config and '
            "restart it")  # fmt: skip


async def order_exchange(wallet: Any, method: str, n1: bytes, wait_s: float) -> Any:
    """Give exchange ``n1`` the wallet library's order ``method`` (accept, reject, give_up, resolve, abort); the
    exchange (once ended, if ``wait_s`` allows). An order the exchange is not at (an offer answered already, a give
    up after the swap began, ...) raises :class:`OrderRefused`, saying why in its owner's words."""
    try:
        x = await getattr(wallet, method)(n1)
    except WalletError as exc:
        if exc.reason != "refused":
            raise
        try:
            now = await wallet.status(n1)
        except WalletError:
            raise exc from None
        words = refused_words(method, now)
        if words is None:
            raise
        raise OrderRefused(words, now) from None
    return await wait_for_end(wallet, x, wait_s)


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
    print_rows(people_rows(rows), EXCHANGE_COLUMNS, title="exchanges", empty="no exchanges")


def people_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`exchange_row` rows for people: who made the offer in words (JSON keeps ``role``)."""
    return [{**row, "role": ROLE_WORDS.get(row["role"], row["role"])} for row in rows]


def _order(name: str, doc: str, method: str, done: str) -> None:
    wait = click.option("--wait", "wait_s", type=FiniteRange(0, 3600), default=0.0, show_default=True, help=WAIT_HELP)

    @wallet_command(name, ID, wait)
    def command(socket: str, pin: str | None, card: str | None, xid: str, wait_s: float, as_json: bool) -> None:
        n1 = _id(xid)
        hints = {**HINTS, **order_hints(name, n1)}
        x = _with_wallet(socket, pin, card, lambda wallet: order_exchange(wallet, method, n1, wait_s), hints)
        report_exchange(as_json, x, done + still_words(x, wait_s), steps=True)

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
    report_exchange(as_json, x, who_words(x), steps=True)


@wallet_command("set-ttp", click.option("--ttp", required=True, help="The TTP card's Uid (DOMAIN:00000000)."))
def exchange_set_ttp(socket: str, pin: str | None, card: str | None, ttp: str, as_json: bool) -> None:
    """Name the TTP this card asks when an exchange is interrupted (resolve, abort)."""
    uid = parse_uid(ttp)
    if not uid.is_card:
        raise click.BadParameter(
            f"{ttp} is an application's Uid: give the TTP card's, DOMAIN:00000000", param_hint="--ttp"
        )

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
