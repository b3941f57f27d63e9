"""``cardnet speed purse``: your card's SPEED e-purse: its key, loads, debits ended, balances."""

from __future__ import annotations

from typing import Any

import click

from cardnet.cli.output import (
    say,
)
from cardnet.cli.speed import BROKER, _customer_command, _price, _run

LOAD_HINTS = {  # a load's refusals: its "insufficient" is the account at the broker's, not the purse's
    "insufficient": "your account at the broker holds less than that in that currency: load less, in the account's "
    "currency (the broker's operator sees the account: `cardnet speed broker accounts`)",
}


@click.group()
def purse() -> None:
    """Your card's e-purse: its key from the broker's SAM, loading, balances."""


@_customer_command(purse, "key", BROKER)
def purse_key(socket: str, pin: str | None, card: str | None, broker: str, as_json: bool) -> None:
    """Get the purse's key from the broker's SAM (sealed to your card) and install it, once."""
    from cardnet.services.speed.customer import install_key

    async def work(wallet: Any) -> dict[str, Any]:
        return {"fresh": await install_key(wallet, broker)}

    got = _run(socket, pin, card, work)
    say(as_json, got, "the purse has its key" if got["fresh"] else "the purse had that key already")


@_customer_command(purse, "load", BROKER, click.option("--amount", required=True, help="e.g. '10.00 EUR'."),
                   click.option("--account", required=True, help="Your account at the broker."))  # fmt: skip
def purse_load(socket: str, pin: str | None, card: str | None, broker: str, amount: str, account: str,
               as_json: bool) -> None:  # fmt: skip
    """Load the purse from your account at the broker (the SAM authorises the credit). The loads under way (a crash
    or the network interrupted them) are finished first, from the same account."""
    price = _price(amount, "--amount")
    got = _run(socket, pin, card, lambda wallet: load_purse(wallet, broker, price, account), LOAD_HINTS)
    say(as_json, got, "\n".join([*dropped_words(got), f"loaded {price}; the purse holds " + balance_words(got)]))


ACCOUNT = click.option("--account", required=True, help="Your account at the broker.")


@_customer_command(purse, "finish", BROKER, ACCOUNT)
def purse_finish(socket: str, pin: str | None, card: str | None, broker: str, account: str, as_json: bool) -> None:
    """Finish the loads under way (a crash or the network interrupted them): each is credited (paid from the
    account, or paid already), or refused for good by the broker and forgotten (nothing was taken for it)."""
    got = _run(socket, pin, card, lambda wallet: load_purse(wallet, broker, None, account), LOAD_HINTS)
    left = f"{got['pending_loads']} still under way: finish them again later" if got["pending_loads"] else ""
    done = f"{got['loads']} load(s) credited" if got["loads"] else ""
    if not (done or left or got["dropped"]):
        done = "no load was under way"
    words = [*dropped_words(got), *(w for w in (done, left) if w), "the purse holds " + balance_words(got)]
    say(as_json, got, "\n".join(words))


async def load_purse(wallet: Any, broker: str, price: Any, account: str) -> dict[str, Any]:
    """Finish the loads under way, then load ``price`` (None: nothing new) into the purse, all from ``account`` at
    ``broker``: the balances after it, how many loads were credited, the loads refused for good and forgotten
    (``dropped``: m, amount, reason) and how many are still under way."""
    from cardnet.applets.speed import purse as pa
    from cardnet.services.speed.customer import run_loads

    done = await run_loads(wallet, broker, account, price)
    dropped = [{"m": d.m, "amount": str(d.price), "reason": d.reason} for d in done.dropped]
    left = (await wallet.ask(pa.BALANCE, pa.BALANCES))["pending_loads"]
    return {**await purse_balances(wallet), "loads": done.credited, "dropped": dropped, "pending_loads": left}


def dropped_words(got: dict[str, Any]) -> list[str]:
    """One line per load the broker refused for good (the purse forgot it: nothing was taken)."""
    return [f"load {d['m']} of {d['amount']} was refused by the broker ({d['reason']}): nothing was taken for it, "
            "and the purse forgot it" for d in got.get("dropped", [])]  # fmt: skip


@_customer_command(purse, "end-debits", BROKER)
def purse_end_debits(socket: str, pin: str | None, card: str | None, broker: str, as_json: bool) -> None:
    """End the debits the purse has under way that no purchase will finish (run `cardnet speed recover` first): the
    card asks for each (its SE), the broker's SAM refuses it for good and the purse forgets it, nothing was paid for
    it. A debit the SAM authorised stays, unless the purse declined its S2 (it could not pay it): recovering its
    purchase finishes it."""
    from cardnet.services.speed.customer import end_debits

    async def work(wallet: Any) -> dict[str, Any]:
        done = await end_debits(wallet, broker)
        ended = [{"n": d.n, "poid": d.poid.hex(), "amount": str(d.price)} for d in done.ended]
        return {**await purse_balances(wallet), "ended": ended, "authorised": done.authorised}

    got = _run(socket, pin, card, work)
    words = [f"debit {d['n']} of {d['amount']} ended: nothing was paid for it, and the purse forgot it"
             for d in got["ended"]]  # fmt: skip
    if got["authorised"]:
        words.append(f"{got['authorised']} debit(s) authorised by the broker stay under way: finish their purchases "
                     "with cardnet speed recover --out DIR --ca-cert CA_PEM")  # fmt: skip
    if not words:
        words.append("no debit was under way")
    say(as_json, got, "\n".join([*words, "the purse holds " + balance_words(got)]))


@_customer_command(purse, "balance")
def purse_balance(socket: str, pin: str | None, card: str | None, as_json: bool) -> None:
    """The purse's balances."""
    got = _run(socket, pin, card, purse_balances)
    say(as_json, got, "the purse holds " + balance_words(got))


async def purse_balances(wallet: Any) -> dict[str, Any]:
    """The purse's balances (currency -> minor units) and whether it has its key."""
    from cardnet.applets.speed import purse as pa

    got = await wallet.ask(pa.BALANCE, pa.BALANCES)
    return {"balances": {a["currency"]: a["balance"] for a in got["accounts"]}, "keyed": got["keyed"]}


def balance_words(got: dict[str, Any]) -> str:
    """The purse's balances in words, e.g. ``17.80 EUR``."""
    from cardnet.protocols.speed.messages import Price

    return ", ".join(str(Price(c, a)) if a else f"0.00 {c}" for c, a in got["balances"].items()) or "nothing"
