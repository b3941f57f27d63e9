"""``cardnet speed broker``: a SPEED broker's store, SAM, accounts, server, settlement and pruning."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from cardnet.cli.millicent import _limits_from, _listen, _serve, _server_limits, _store
from cardnet.cli.output import (
    all_or_nothing,
    ask_pin,
    emit_json,
    fail,
    json_option,
    print_rows,
    say,
)
from cardnet.cli.speed import CA, STORE, _card_url, _pem, _pem_file, _price, _service_identity
from cardnet.cli.trn import card_pin
from cardnet.store import Store

SAM_STORE = click.option("--sam-store", required=True, help="The SAM card's store (its EEPROM), e.g. sam.db.")
SAM_CAPACITY = 64 * 1024 * 1024  # a security module's store, not a smartcard's 256 KiB (about 220 bytes a payment)
KEEP_DAYS = click.option(
    "--keep-days", type=click.IntRange(1), default=2, show_default=True,
    help="Whole days the SAM keeps after they end (besides today) before their log is settled and pruned.",
)  # fmt: skip
ACCOUNT_HINTS = {  # what to do when the broker refuses to open an account
    "exists": "choose another --account (`cardnet speed broker accounts --store S` lists them)",
}


def _broker_store(where: str, *, create: bool = False) -> Store:
    return _store(where, "speed-broker", create=create)


# --- the broker ------------------------------------------------------------------------------------------------
@click.group()
def broker() -> None:
    """The broker: accounts, the SAM, payment orders and receipts."""


@broker.command("init")
@STORE
@CA
@SAM_STORE
@click.option("--pin", default=None, help="The SAM card's new PIN (default: $CARDNET_PIN, else asked for).")
@click.option("--name", default="broker", show_default=True, help="A name put into the broker's certificate.")
@json_option
def broker_init(store: str, ca_path: Path, sam_store: str, pin: str | None, name: str, as_json: bool) -> None:
    """Make a broker (a new key certified by the CA) and its SAM card (personalised, master key drawn)."""
    from cardnet.applets.speed.sam import INIT, READY, SamApplet
    from cardnet.card import Card
    from cardnet.card.personalise import personalise
    from cardnet.crypto import pki
    from cardnet.host.local import LocalCard
    from cardnet.services.speed.broker_accounts import init_broker
    from cardnet.services.speed.broker_records import BrokerError

    with all_or_nothing(_card_url(store), _card_url(sam_store)):  # a half-made SAM is "personalised already"
        card = Card.open(_card_url(sam_store), applets=[SamApplet()])
        try:  # what was made before is refused before the PIN is asked for
            if card.personalised and _holds_broker(store):  # broker init run again: name both files
                run = f"run it: `cardnet speed broker run --store {store} --sam-store {sam_store}`"
                fail(f"{store} holds a broker already and the card in {sam_store} is personalised already: this "
                     "broker was made before", reason="exists",
                     hint=f"{run}; for another broker give a new --store and --sam-store")  # fmt: skip
            if card.personalised:
                fail(f"the card in {sam_store} is personalised already", hint="use another --sam-store")
            if _holds_broker(store):
                fail(f"{store} holds a broker already", reason="exists", hint="use another --store")
            pin = ask_pin(pin, "PIN for the SAM card", confirm=True)
            key, cert, roots = _service_identity(ca_path, name)
            try:
                init_broker(_broker_store(store, create=True), key, cert, roots)
            except BrokerError as exc:
                fail(str(exc), reason=exc.reason, hint="use another --store")
            personalise(card, pki.CertificateAuthority.load(ca_path), pin=pin, now=datetime.now(UTC),
                        role=pki.Role.SERVICE, name=f"{name} SAM")  # fmt: skip
            LocalCard(card, pin).ask(INIT, READY)
        finally:
            card.close()
    say(as_json, {"store": store, "sam_store": sam_store}, f"broker made in {store}, its SAM in {sam_store}")


def _holds_broker(where: str) -> bool:
    """Whether the store at ``where`` exists and holds a broker (``broker init`` made it)."""
    from cardnet.services.speed.broker_records import CFG
    from cardnet.services.speed.stored import get
    from cardnet.store import StoreError

    try:
        return get(_broker_store(where), CFG, b"cert") is not None
    except StoreError:  # none there (missing), or not a broker's store
        return False


@broker.command("cert")
@STORE
@json_option
def broker_cert(store: str, as_json: bool) -> None:
    """Print the broker's certificate (PEM): vendors and customers need it."""
    from cardnet.services.speed.broker_records import CFG
    from cardnet.services.speed.stored import get

    pem = _pem(get(_broker_store(store), CFG, b"cert") or b"")
    say(as_json, {"pem": pem}, pem.rstrip("\n"))


@broker.command("add-vendor")
@STORE
@click.option("--account", required=True, help="The vendor's account number (what its bills name).")
@click.option("--vendor-cert", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The vendor's certificate (PEM, from `cardnet speed vendor cert`).")  # fmt: skip
@json_option
def broker_add_vendor(store: str, account: str, vendor_cert: Path, as_json: bool) -> None:
    """Open an account for a vendor: payments for its bills are credited there."""
    from cardnet.services.speed.broker_accounts import add_vendor
    from cardnet.services.speed.broker_records import BrokerError

    try:
        add_vendor(_broker_store(store), account, _pem_file(vendor_cert, "the vendor's certificate"))
    except BrokerError as exc:
        fail(str(exc), reason=exc.reason, hint=ACCOUNT_HINTS.get(exc.reason))
    say(as_json, {"account": account}, f"vendor account {account} opened")


REMOVE_HINTS = {  # what to do when removing a vendor is refused
    "unknown_account": "check --account (`cardnet speed broker accounts --store S` lists them)",
    "not_vendor": "name a vendor's account (the one `cardnet speed broker add-vendor` opened)",
}


@broker.command("remove-vendor")
@STORE
@click.option("--account", required=True, help="The vendor's account number (from add-vendor).")
@json_option
def broker_remove_vendor(store: str, account: str, as_json: bool) -> None:
    """Stop paying the vendor's new bills; also while the broker runs. Payments the broker took before are finished
    (a purse payment it authorised, a debit its SAM logged), the account keeps its balance for `broker payout`, and
    the vendor still reads its receipts and answers complaints."""
    import time

    from cardnet.services.speed.broker_accounts import remove_vendor
    from cardnet.services.speed.broker_records import BrokerError

    try:
        when, before = remove_vendor(_broker_store(store), account, time.time())
    except BrokerError as exc:
        fail(str(exc), reason=exc.reason, hint=REMOVE_HINTS.get(exc.reason))
    at = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    words = (f"vendor account {account} was removed already, on {at}" if before else
             f"vendor account {account} removed: the broker pays no new bill of that vendor; what it took before is "
             "finished, and the account keeps its balance (cardnet speed broker payout)")  # fmt: skip
    say(as_json, {"account": account, "removed_at": int(when), "removed_before": before}, words)


@broker.command("add-customer")
@STORE
@click.option("--account", required=True, help="The customer's account number.")
@click.option("--card", "card", required=True, help="The customer card's domain (24 hex).")
@click.option("--deposit", default=None, help="A first deposit, e.g. '100.00 EUR'.")
@json_option
def broker_add_customer(store: str, account: str, card: str, deposit: str | None, as_json: bool) -> None:
    """Open an account for a customer's card: it pays purchases (account mode) and loads the purse."""
    from cardnet.cli.trn import parse_domain
    from cardnet.services.speed.broker_accounts import add_customer
    from cardnet.services.speed.broker_records import BrokerError
    from cardnet.wire import Uid

    domain = parse_domain(card)
    assert domain is not None
    try:
        add_customer(_broker_store(store), account, Uid(domain, 0), _price(deposit, "--deposit") if deposit else None)
    except BrokerError as exc:
        fail(str(exc), reason=exc.reason, hint=ACCOUNT_HINTS.get(exc.reason))
    say(as_json, {"account": account}, f"customer account {account} opened")


DEPOSIT_HINTS = {  # what to do when a deposit is refused
    "unknown_account": "check --account (`cardnet speed broker accounts --store S` lists them; `cardnet speed broker "
    "add-customer` opens one)",
    "not_customer": "name a customer's account: vendors are paid by their sales",
    "too_much": "deposit less",
    "too_many_currencies": "deposit in a currency the account holds already (`cardnet speed broker accounts`)",
}


@broker.command("deposit")
@STORE
@click.option("--account", required=True, help="The customer's account number (from add-customer).")
@click.option("--amount", required=True, help="Added to the account's balance, e.g. '100.00 EUR'.")
@json_option
def broker_deposit(store: str, account: str, amount: str, as_json: bool) -> None:
    """Credit a customer's account (the customer paid outside cardnet); also while the broker runs."""
    from cardnet.services.speed.broker_accounts import deposit
    from cardnet.services.speed.broker_records import BrokerError

    try:
        got = deposit(_broker_store(store), account, _price(amount, "--amount"))
    except BrokerError as exc:
        fail(str(exc), reason=exc.reason, hint=DEPOSIT_HINTS.get(exc.reason))
    words = ", ".join(_amount(c, v) for c, v in sorted(got.items()))
    say(as_json, {"account": account, "balances": got}, f"customer account {account}: {words}")


PAYOUT_HINTS = {  # what to do when a payout is refused
    "unknown_account": "check --account (`cardnet speed broker accounts --store S` lists them)",
    "not_vendor": "name a vendor's account: a customer's is spent by its card (purchases, purse loads)",
    "insufficient": "pay out at most what the account holds (`cardnet speed broker accounts --store S` shows it)",
}


@broker.command("payout")
@STORE
@click.option("--account", required=True, help="The vendor's account number (from add-vendor).")
@click.option("--amount", required=True, help="Taken from the account's balance, e.g. '100.00 EUR'.")
@json_option
def broker_payout(store: str, account: str, amount: str, as_json: bool) -> None:
    """Take money out of a vendor's account (the broker paid the vendor outside cardnet); also while the broker runs.
    Never more than the account holds; credits held for the vendor (`broker accounts`) are credited by the running
    broker's next settlement once the account has room."""
    from cardnet.services.speed.broker_accounts import payout
    from cardnet.services.speed.broker_records import BrokerError

    price = _price(amount, "--amount")
    try:
        got = payout(_broker_store(store), account, price)
    except BrokerError as exc:
        fail(str(exc), reason=exc.reason, hint=PAYOUT_HINTS.get(exc.reason))
    words = ", ".join(_amount(c, v) for c, v in sorted(got.items())) or "nothing"
    say(as_json, {"account": account, "paid_out": {price.currency: price.amount}, "balances": got},
        f"paid out {price} from vendor account {account}; it holds {words}")  # fmt: skip


@broker.command("accounts")
@STORE
@json_option
def broker_accounts(store: str, as_json: bool) -> None:
    """Every account's balances (with --json: in minor units, e.g. 250 for 2.50 EUR), and the settled purse debits
    whose credit the broker holds for a vendor whose account could not take it."""
    from cardnet.services.speed.broker_accounts import balances, removed_vendors
    from cardnet.services.speed.broker_settlement import held

    st = _broker_store(store)
    got, kept, gone = balances(st), held(st), removed_vendors(st)
    if as_json:  # minor units, as the broker keeps them
        emit_json({"accounts": got, "held": kept, "removed": gone})
        return
    rows = [{"account": a + (" (vendor removed)" if a in gone else ""), **{c: _amount(c, v) for c, v in b.items()}}
            for a, b in got.items()]  # fmt: skip
    cols = tuple(sorted({k for r in rows for k in r if k != "account"}))
    print_rows(rows, ("account", *cols), title="broker accounts", empty="no accounts yet")
    if kept:
        print_rows([{"account": h["account"], "held": _amount(h["currency"], h["amount"]), "day": h["day"],
                     "payment order": h["poid"][:16], "why": h["why"]} for h in kept],
                   ("account", "held", "day", "payment order", "why"),
                   empty="", title="credits held (settled purse debits the vendor's account could not take; "
                   "credited by the running broker once it has room)")  # fmt: skip


def _amount(currency: str, minor: int) -> str:
    """Minor units in words, e.g. ``2.50 EUR`` for 250 (``0.00 EUR``, and a sign, too)."""
    from cardnet.protocols.speed.messages import format_amount

    return format_amount(minor, currency)


@broker.command("run")
@STORE
@SAM_STORE
@click.option("--pin", default=None, help="The SAM card's PIN (default: $CARDNET_PIN, else asked for).")
@click.option("--listen", default="127.0.0.1:7400", show_default=True, help="HOST:PORT (port 0 picks one).")
@click.option("--sam-capacity", type=click.IntRange(64 * 1024), default=SAM_CAPACITY, show_default=True,
              help="Bytes the SAM card may hold (the days not pruned: about 220 bytes a payment).")  # fmt: skip
@KEEP_DAYS
@click.option("--no-prune", is_flag=True, help="Never prune the SAM's settled days (its card fills up).")
@_server_limits
@json_option
def broker_run(store: str, sam_store: str, pin: str | None, listen: str, sam_capacity: int, keep_days: int,
               no_prune: bool, as_json: bool, **limits: Any) -> None:  # fmt: skip
    """Serve payment orders, purse keys and loads over TCP. Prints "ready broker HOST:PORT" when listening."""
    import time

    from cardnet.applets.speed.sam import SamApplet
    from cardnet.card import Card
    from cardnet.host.errors import HostError
    from cardnet.host.local import LocalCard
    from cardnet.services.speed.broker import BrokerCore
    from cardnet.services.speed.broker_server import BrokerServer
    from cardnet.store.owner import claimed

    host, port = _listen(listen)
    stores = [(store, "give another --store"), (_card_url(sam_store), "give another --sam-store")]
    with claimed(stores, "speed broker") as claims:  # one broker per store and per SAM
        card = Card.open(_card_url(sam_store), create=False, applets=[SamApplet()], capacity_bytes=sam_capacity)
        try:
            sam = LocalCard(card, card_pin(pin))
        except HostError as exc:
            card.close()
            fail(str(exc), reason=exc.reason, hint="check the SAM card's PIN")
        core = BrokerCore(_broker_store(store), sam, clock=time.time)
        bounds = _limits_from(**limits)
        keep = None if no_prune else keep_days
        try:
            _serve("broker", lambda: BrokerServer(core, server_limits=bounds, keep_days=keep), host, port, as_json,
                   claims)  # fmt: skip
        finally:
            card.close()


@broker.command("prune")
@STORE
@SAM_STORE
@click.option("--pin", default=None, help="The SAM card's PIN (default: $CARDNET_PIN, else asked for).")
@click.option("--sam-capacity", type=click.IntRange(64 * 1024), default=SAM_CAPACITY, show_default=True,
              help="Bytes the SAM card may hold.")  # fmt: skip
@KEEP_DAYS
@json_option
def broker_prune(store: str, sam_store: str, pin: str | None, sam_capacity: int, keep_days: int,
                 as_json: bool) -> None:  # fmt: skip
    """Settle the days the SAM holds that ended more than --keep-days ago, then prune them from the SAM (the
    broker's run does this once a day; this is for a broker that is stopped)."""
    import time

    from cardnet.applets.speed.sam import SamApplet
    from cardnet.card import Card
    from cardnet.errors import CardnetError
    from cardnet.host.local import LocalCard
    from cardnet.services.speed.broker import BrokerCore
    from cardnet.services.speed.broker_settlement import SETTLE_HINTS

    try:
        card = Card.open(_card_url(sam_store), create=False, applets=[SamApplet()], capacity_bytes=sam_capacity)
    except CardnetError as exc:
        fail(str(exc), reason=exc.reason, hint="stop the broker first: its SAM card has one owner")
    try:
        core = BrokerCore(_broker_store(store), LocalCard(card, card_pin(pin)), clock=time.time)
        got = core.prune(keep_days=keep_days)
    except CardnetError as exc:
        fail(str(exc), reason=exc.reason, hint=SETTLE_HINTS.get(exc.reason))
    finally:
        card.close()
    out = {"before_day": got.before_day, "days": got.days, "settled": got.settled, "entries": got.entries,
           "open": got.open, "freed_bytes": got.freed_bytes,
           "authorisations_ended": got.authorisations_ended}  # fmt: skip
    say(as_json, out, f"pruned {got.entries} log entries of {len(got.days)} day(s) from the SAM (it holds no day "
        f"before {got.before_day} now), {got.freed_bytes} bytes freed; {got.settled} debit(s) settled first; "
        f"{got.open} open authorisation(s) kept; {got.authorisations_ended} record(s) of settled payments' "
        "authorisations dropped")  # fmt: skip


@broker.command("days")
@STORE
@json_option
def broker_days(store: str, as_json: bool) -> None:
    """The days the broker settled and had the SAM prune: the SAM's totals of each then."""
    from cardnet.services.speed.broker_settlement import settled_days

    days = settled_days(_broker_store(store))
    if as_json:
        emit_json({"days": [{"day": d, **v} for d, v in days.items()]})
        return
    rows = [{"day": str(d), "entries": str(v["entries"]), "settled": str(v["settled"]),
             "debits": " ".join(f"{a} {c}" for c, a in v["debits"].items()),
             "loads": " ".join(f"{a} {c}" for c, a in v["loads"].items())} for d, v in days.items()]  # fmt: skip
    print_rows(rows, ("day", "entries", "settled", "debits", "loads"), title="settled days", empty="no day pruned yet")
