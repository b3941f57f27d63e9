"""``cardnet speed``: buy from a vendor and pay from your card's e-purse through a broker (SPEED).

The vendor and the broker are services with a store each and a key certified by the cardnet CA (role service);
the broker's SAM is a card of its own (``--sam-store``). The customer's card runs on a host (``cardnet host
run`` with the applets ``purse`` and ``speed``); the ``purse`` and ``buy`` commands reach it through the host's
application socket, like ``cardnet trn``. docs/speed.md walks through a purchase from the command line.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from cardnet.cli.main import LazyGroup
from cardnet.cli.millicent import _limits_from, _listen, _serve, _server_limits, _store
from cardnet.cli.output import (
    FiniteRange,
    all_or_nothing,
    ask_pin,
    emit_json,
    fail,
    json_option,
    print_rows,
    progress,
    say,
)
from cardnet.cli.trn import CARD, PIN, SOCKET, card_pin, run_on_wallet
from cardnet.store import Store

STORE = click.option("--store", required=True, help="The service's store: a file path or a store URL.")
CA = click.option(
    "--ca", "ca_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The CA file (`cardnet ca create`): it certifies this service's new key.",
)  # fmt: skip
SAM_STORE = click.option("--sam-store", required=True, help="The SAM card's store (its EEPROM), e.g. sam.db.")
SAM_CAPACITY = 64 * 1024 * 1024  # a security module's store, not a smartcard's 256 KiB (about 220 bytes a payment)
KEEP_DAYS = click.option(
    "--keep-days", type=click.IntRange(1), default=2, show_default=True,
    help="Whole days the SAM keeps after they end (besides today) before their log is settled and pruned.",
)  # fmt: skip
JOURNAL = ".purchases"  # under --out: the purchases under way (docs/speed.md, "Crashes")
BROKER = click.option("--broker", required=True, help="The broker's HOST:PORT.")
HINTS = {
    "no_key": "get the purse's key first: cardnet speed purse key --broker HOST:PORT ...",
    "insufficient": "load the purse first: cardnet speed purse load --amount '10.00 EUR' ...",
    "unknown_product": "`cardnet speed catalogue --vendor HOST:PORT` lists what the vendor sells",
    "no_agreement": "raise --limit (in the currency of the vendor's price: `cardnet speed catalogue` shows it), or try "
    "again later",
    "over_limit": "raise --limit; without --aggressive the vendor may come down to its floor",
    "unreachable": "is the service running at that HOST:PORT?",
    # (by who could not be reached, PurchaseError.party: "REASON:PARTY" before "REASON")
    "unreachable:vendor": "check --vendor (the HOST:PORT `cardnet speed vendor run` printed) and that the vendor runs "
    "there",
    "unreachable:broker": "check the broker's HOST:PORT (--broker, the one `cardnet speed broker run` printed) and "
    "that the broker runs there; then run the command again (nothing under way is lost)",
    "store_failed": "the service cannot write its store (its disk may be full) and kept nothing of this: try again "
    "once its operator has freed space; a load under way stays in the purse (cardnet speed purse finish ...)",
    "unknown_account": "check --account: it names your account at the broker (the one opened for your card)",
    "loads_pending": "finish them when the broker can: cardnet speed purse finish --broker HOST:PORT --account ACCOUNT",
    "debits_pending": "finish the payments under way first: cardnet speed recover --out DIR --ca-cert CA_PEM (DIR: "
    "each --out you bought with); then cardnet speed purse end-debits --broker HOST:PORT ends the debits no "
    "purchase is left to finish (nothing was paid for them)",
    "bill_expired": "nothing was paid: the vendor's deadline for that bill passed (it may sell the goods again); buy "
    "again for a new bill",
    "bad_key": "tell the vendor and the broker's operator: the broker holds the key it was given and the bill's hash "
    "of the ciphered products, and can check them; nothing more is paid for this purchase",
    "vendor_removed": "nothing was paid and the purchase is dropped: this broker no longer pays that vendor (ask the "
    "vendor which broker takes its bills now)",
}


LOAD_HINTS = {  # a load's refusals: its "insufficient" is the account at the broker's, not the purse's
    "insufficient": "your account at the broker holds less than that in that currency: load less, in the account's "
    "currency (the broker's operator sees the account: `cardnet speed broker accounts`)",
}
ACCOUNT_HINTS = {  # what to do when the broker refuses to open an account
    "exists": "choose another --account (`cardnet speed broker accounts --store S` lists them)",
}


def _price(text: str, what: str) -> Any:
    from cardnet.protocols.errors import ProtocolError
    from cardnet.protocols.speed.messages import parse_price

    try:
        return parse_price(text)
    except ProtocolError as exc:
        fail(f"{what}: {exc}", reason=exc.reason, hint="write a price like '2.50 EUR'")


def _pem_file(path: Path, what: str) -> bytes:
    from cardnet.crypto import pki

    try:
        return pki.cert_to_der(pki.chain_from_pem(path.read_bytes())[0])
    except OSError as exc:
        fail(f"cannot read {what} {path}: {exc.strerror}", reason="unreadable")
    except (ValueError, IndexError) as exc:
        fail(f"{path} holds no PEM certificate ({exc})", reason="bad_certificate", hint=f"give {what} as PEM")


def _pem(der: bytes) -> str:
    from cardnet.crypto import pki

    return pki.chain_to_pem([pki.cert_from_der(der)]).decode("ascii")


def _service_identity(ca_path: Path, name: str) -> tuple[Any, bytes, list[bytes]]:
    """A new key, certified by the CA as a service, and the CA's root certificate."""
    from cardnet.crypto import pki, profile
    from cardnet.wire import Uid

    authority = pki.CertificateAuthority.load(ca_path)
    key = profile.generate_private_key()
    cert = authority.issue(pki.Role.SERVICE, Uid(os.urandom(12), 0), key.public_key(), now=datetime.now(UTC),
                           name=name)  # fmt: skip
    return key, pki.cert_to_der(cert), [pki.cert_to_der(c) for c in (authority.certificate, *authority.intermediates)]


def _card_url(where: str) -> str:
    return where if "://" in where else "sqlite:///" + str(Path(where).resolve())


def _vendor_store(where: str, *, create: bool = False) -> Store:
    return _store(where, "speed-vendor", create=create)


def _broker_store(where: str, *, create: bool = False) -> Store:
    return _store(where, "speed-broker", create=create)


# The subcommands kept in modules of their own, imported only when they run.
SUBCOMMANDS = {"complain": "cardnet.cli.speed_complain:complain"}


@click.group(cls=LazyGroup, lazy=SUBCOMMANDS)
def speed() -> None:
    """SPEED: negotiate, receive the product encrypted, pay from the e-purse, get the key with the receipt."""


# --- the vendor ------------------------------------------------------------------------------------------------
@speed.group()
def vendor() -> None:
    """The vendor: a catalogue, negotiation and encrypted delivery."""


@vendor.command("init")
@STORE
@CA
@click.option("--account", required=True, help="The vendor's account number at the broker.")
@click.option("--broker-cert", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The broker's certificate (PEM, from `cardnet speed broker cert`).")  # fmt: skip
@click.option("--name", default="vendor", show_default=True, help="A name put into the vendor's certificate.")
@json_option
def vendor_init(store: str, ca_path: Path, account: str, broker_cert: Path, name: str, as_json: bool) -> None:
    """Make a vendor: a new key certified by the CA, its account at the broker, the broker's certificate."""
    from cardnet.services.speed.vendor import VendorError, init_vendor

    bcert = _pem_file(broker_cert, "the broker's certificate")
    key, cert, roots = _service_identity(ca_path, name)
    try:
        with all_or_nothing(_card_url(store)):
            init_vendor(_vendor_store(store, create=True), key, cert, roots, account=account, broker_cert=bcert)
    except VendorError as exc:
        fail(str(exc), reason=exc.reason, hint="use another --store")
    say(as_json, {"store": store, "account": account}, f"vendor made in {store} (account {account} at the broker)")


@vendor.command("cert")
@STORE
@json_option
def vendor_cert(store: str, as_json: bool) -> None:
    """Print the vendor's certificate (PEM): the broker needs it (`cardnet speed broker add-vendor`)."""
    from cardnet.services.speed.stored import get
    from cardnet.services.speed.vendor import CFG

    pem = _pem(get(_vendor_store(store), CFG, b"cert") or b"")
    say(as_json, {"pem": pem}, pem.rstrip("\n"))


@vendor.command("add")
@STORE
@click.option("--product", required=True, help="The product id: a code and a description, e.g. 'song-17 Blue'.")
@click.option("--price", required=True, help="The list price, e.g. '2.50 EUR'.")
@click.option("--floor", default=None, help="The least the vendor takes when negotiating (default: the price).")
@click.option("--file", "path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The product's content.")  # fmt: skip
@click.option("--replace", is_flag=True, help="Replace a product already in the catalogue: price, floor, file.")
@json_option
def vendor_add(store: str, product: str, price: str, floor: str | None, path: Path, replace: bool,
               as_json: bool) -> None:  # fmt: skip
    """Put a product into the catalogue (its entry is signed: product id, price, content hash). A product already
    there is refused, saying what it is now, unless --replace."""
    from cardnet.protocols.errors import ProtocolError
    from cardnet.services.speed.stored import get
    from cardnet.services.speed.vendor import CATALOGUE, VendorError, add_product, product_words

    p, f = _price(price, "--price"), _price(floor, "--floor") if floor else None
    if f is not None and (f.currency != p.currency or f.amount > p.amount):
        fail(
            "--floor must be in the price's currency and not above it",
            reason="bad_floor",
            hint="e.g. --price '2.50 EUR' --floor '2.00 EUR' (or no --floor: the vendor does not come down)",
        )
    vstore, content = _vendor_store(store), path.read_bytes()
    was = get(vstore, CATALOGUE, product.encode())
    try:
        add_product(vstore, product, p, content, floor=f, replace=replace)
    except ProtocolError as exc:
        fail(str(exc), reason=exc.reason)
    except VendorError as exc:
        if exc.reason != "exists":
            raise
        hint = ("to sell it at the new price, floor and file, add it again with --replace (a running vendor sells "
                "the new one from its next request); else choose another --product")  # fmt: skip
        fail(str(exc), reason="exists", hint=hint)
    replaced = "" if was is None else f" in place of what it was ({product_words(was)})"
    message = (f"{product!r} at {p} is in the catalogue{replaced} (a running `cardnet speed vendor run` sells it "
               "from its next request)")  # fmt: skip
    say(as_json, {"product": product, "price": str(p), "replaced": was is not None, "message": message}, message)


@vendor.command("run")
@STORE
@click.option("--listen", default="127.0.0.1:7300", show_default=True, help="HOST:PORT (port 0 picks one).")
@click.option("--pay-within", type=FiniteRange(1, 30 * 86400), default=None,
              help="Give each bill a deadline this many seconds after it is made: the broker refuses it after that "
              "(default: bills carry no deadline).")  # fmt: skip
@_server_limits
@json_option
def vendor_run(store: str, listen: str, pay_within: float | None, as_json: bool, **limits: Any) -> None:
    """Serve negotiations and deliveries over TCP. Prints "ready vendor HOST:PORT" when listening."""
    import time

    from cardnet.services.speed.vendor import VendorCore, VendorServer
    from cardnet.store.owner import claimed

    host, port = _listen(listen)
    with claimed([(store, "give another --store")], "speed vendor") as claims:  # one vendor per store
        core = VendorCore(_vendor_store(store), clock=time.time, pay_within_s=pay_within)
        bounds = _limits_from(**limits)
        _serve("vendor", lambda: VendorServer(core, server_limits=bounds), host, port, as_json, claims)


# --- the broker ------------------------------------------------------------------------------------------------
@speed.group()
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
    from cardnet.services.speed.broker import BrokerError, init_broker

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
    from cardnet.services.speed.broker import CFG
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
    from cardnet.services.speed.broker import CFG
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
    from cardnet.services.speed.broker import BrokerError, add_vendor

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

    from cardnet.services.speed.broker import BrokerError, remove_vendor

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
    from cardnet.services.speed.broker import BrokerError, add_customer
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
    from cardnet.services.speed.broker import BrokerError, deposit

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
    from cardnet.services.speed.broker import BrokerError, payout

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
    from cardnet.services.speed.broker import balances, held, removed_vendors

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
    from cardnet.services.speed.broker import BrokerCore, BrokerServer
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
    from cardnet.services.speed.broker import SETTLE_HINTS, BrokerCore

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
    from cardnet.services.speed.broker import settled_days

    days = settled_days(_broker_store(store))
    if as_json:
        emit_json({"days": [{"day": d, **v} for d, v in days.items()]})
        return
    rows = [{"day": str(d), "entries": str(v["entries"]), "settled": str(v["settled"]),
             "debits": " ".join(f"{a} {c}" for c, a in v["debits"].items()),
             "loads": " ".join(f"{a} {c}" for c, a in v["loads"].items())} for d, v in days.items()]  # fmt: skip
    print_rows(rows, ("day", "entries", "settled", "debits", "loads"), title="settled days", empty="no day pruned yet")


# --- the customer ------------------------------------------------------------------------------------------------
def _customer_command(group: click.Group, name: str, *options: Any) -> Callable[[Callable[..., Any]], click.Command]:
    def wrap(f: Callable[..., Any]) -> click.Command:
        for option in reversed((SOCKET, PIN, CARD, *options, json_option)):
            f = option(f)
        command: click.Command = group.command(name)(f)
        return command

    return wrap


@speed.group()
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


def _run(socket: str, pin: str | None, card: str | None, work: Any, hints: dict[str, str] | None = None) -> Any:
    """Run ``work`` on the wallet at ``socket``; a purchase's or a card's refusal fails in words, with SPEED's hints."""
    from cardnet.services.speed.customer import PurchaseError

    async def guarded(wallet: Any) -> Any:
        try:
            return await work(wallet)
        except PurchaseError as exc:
            fail(str(exc), reason=exc.reason, hint=purchase_hint(exc, hints))

    return run_on_wallet(socket, pin, card, guarded, {**HINTS, **(hints or {})})


def purchase_hint(exc: Any, hints: dict[str, str] | None = None) -> str | None:
    """What to do after a :class:`~cardnet.services.speed.customer.PurchaseError`: ``hints`` (the command's) before
    :data:`HINTS`, each by ``REASON:PARTY`` (who could not be reached) before ``REASON``."""
    keys = (f"{exc.reason}:{getattr(exc, 'party', None)}", exc.reason)
    return next((table[k] for table in (hints or {}, HINTS) for k in keys if k in table), None)


@speed.command("catalogue")
@click.option("--vendor", "vendor_addr", required=True, help="The vendor's HOST:PORT.")
@click.option("--ca-cert", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The CA certificate (PEM, `cardnet ca cert`).")  # fmt: skip
@json_option
def catalogue(vendor_addr: str, ca_cert: Path, as_json: bool) -> None:
    """What a vendor sells, from its signed catalogue."""
    from cardnet.protocols.speed.messages import Price
    from cardnet.services.speed.customer import Customer, PurchaseError

    async def go() -> list[dict[str, Any]]:
        c = Customer(None, b"", [_pem_file(ca_cert, "the CA certificate")])  # type: ignore[arg-type]
        _, entries = await c.catalogue(vendor_addr)
        return entries

    try:
        entries = asyncio.run(go())
    except PurchaseError as exc:
        fail(str(exc), reason=exc.reason, hint=purchase_hint(exc))
    rows = [{"product": e["product"], "price": str(Price.of(e["price"])), "bytes": e["size"]} for e in entries]
    if as_json:
        emit_json({"products": rows})
    else:
        print_rows(rows, ("product", "price", "bytes"), title=f"vendor {vendor_addr}", empty="nothing for sale")


@_customer_command(
    speed, "buy",
    click.option("--vendor", "vendor_addr", required=True, help="The vendor's HOST:PORT."),
    BROKER,
    click.option("--broker-cert", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                 help="The broker's certificate (PEM, `cardnet speed broker cert`)."),
    click.option("--ca-cert", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                 help="The CA certificate (PEM, `cardnet ca cert`)."),
    click.option("--product", "products", required=True, multiple=True, help="A product id (repeat for several)."),
    click.option("--limit", required=True, help="The most you pay, e.g. '3.00 EUR' (negotiation stays below)."),
    click.option("--aggressive", is_flag=True, help="No negotiation: buy at the list price (small products)."),
    click.option("--account", default=None, help="Pay from this account at the broker instead of the purse."),
    click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
                 help="A directory: each product is written there, with the receipt."),
)  # fmt: skip
def buy(socket: str, pin: str | None, card: str | None, vendor_addr: str, broker: str, broker_cert: Path,
        ca_cert: Path, products: tuple[str, ...], limit: str, aggressive: bool, account: str | None, out: Path,
        as_json: bool) -> None:  # fmt: skip
    """Buy products: negotiate (or not), receive them encrypted, pay, and get the key with the receipt."""
    short = (f"your account {account} at the broker holds too little: pay from the purse (without --account)"
             if account else "load the purse (`cardnet speed purse load --amount ...`)")  # fmt: skip
    later = {
        "insufficient": f"nothing was paid, and the purchase is dropped: {short}, then buy again",
        "unreachable:vendor": "nothing was paid and nothing waits in --out: check --vendor (the HOST:PORT `cardnet "
        "speed vendor run` printed) and that the vendor runs there, then buy again",
        "unreachable:broker": f"the vendor delivered and the purchase waits in {out}, unpaid or without its receipt: "
        f"once the broker runs, `cardnet speed recover --out {out} --broker HOST:PORT ...` pays it once (--broker: "
        "the broker's right address, if the one given was wrong)",
        "store_failed": "the service cannot write its store (its disk may be full) and kept nothing of this: once its "
        f"operator has freed space, buy again, or, if the broker refused, `cardnet speed recover --out {out} ...` pays "
        "the purchase the vendor delivered (it waits there)",
        "vendor_account_full": f"tell the vendor: its account at the broker is full; the purchase waits in {out}, and "
        f"once the vendor's operator has paid the account out, `cardnet speed recover --out {out} ...` pays it",
    }
    result = purchase(socket, pin, card, vendor_addr, broker, broker_cert, ca_cert, products, limit, aggressive,
                      account, out, later)  # fmt: skip
    say(as_json, result, f"paid {result['price']}; {len(result['files'])} product(s) in {out}: "
        + ", ".join(result["files"]))  # fmt: skip


def purchase(socket: str, pin: str | None, card: str | None, vendor_addr: str, broker: str, broker_cert: Path,
             ca_cert: Path, products: tuple[str, ...], limit: str, aggressive: bool, account: str | None,
             out: Path, hints: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Buy ``products`` from the vendor at ``vendor_addr`` (SPEED), paid through ``broker`` from the purse (or
    ``account``), the purchase journalled under ``out`` and the products and receipt written there: what was
    written (:func:`_written`). Refusals fail in the customer's words."""
    from cardnet.services.speed.customer import Customer, Journal

    cap = _price(limit, "--limit")
    bcert = _pem_file(broker_cert, "the broker's certificate")
    roots = [_pem_file(ca_cert, "the CA certificate")]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot make {out}: {exc.strerror}", reason="unwritable")

    async def work(wallet: Any) -> Any:
        with progress(f"buying {', '.join(products)} from {vendor_addr} (limit {cap}) …"):
            return await Customer(wallet, b"", roots, journal=Journal(out / JOURNAL)).buy(
                vendor_addr, broker, list(products), broker_cert=bcert, limit=cap,
                mode="aggressive" if aggressive else "normal", payment="account" if account else "purse",
                account=account,
            )  # fmt: skip

    return _written(out, _run(socket, pin, card, work, hints))


def _written(out: Path, got: Any) -> dict[str, Any]:
    """Write a purchase's products and receipt into ``out``; what was written."""
    files = []
    for i, content in enumerate(got.contents):
        path = out / f"{got.poid.hex()[-16:]}-{i}.bin"
        path.write_bytes(content)
        files.append(str(path))
    (out / f"{got.poid.hex()[-16:]}.receipt").write_bytes(got.receipt)
    return {"poid": got.poid.hex(), "price": str(got.price), "files": files, "messages": got.steps}


@_customer_command(
    speed, "recover",
    click.option("--ca-cert", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
                 help="The CA certificate (PEM, `cardnet ca cert`)."),
    click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
                 help="The directory `buy` wrote to: its purchases under way are finished there."),
    click.option("--broker", default=None,
                 help="Pay through the broker at this HOST:PORT (default: the address each purchase was bought with)."),
)  # fmt: skip
def recover(socket: str, pin: str | None, card: str | None, ca_cert: Path, out: Path, broker: str | None,
            as_json: bool) -> None:  # fmt: skip
    """Finish the purchases a crash or a lost connection interrupted (paid once, whatever happened)."""
    if not (out / JOURNAL).is_dir():  # a mistyped --out: say so (and make nothing), not "nothing was left to finish"
        fail(f"{out} holds no purchase journal ({JOURNAL}): no `cardnet speed buy --out {out}` began a purchase there",
             reason="no_journal", hint="check --out: it is the folder `cardnet speed buy --out` wrote its products to "
             "(each purchase under way is journalled there)")  # fmt: skip
    gone: list[dict[str, Any]] = []
    done = finish_purchases(socket, pin, card, ca_cert, out, broker, gone)
    dropped = [d for d in gone if d["reason"] != "bad_key"]
    unopened = [d for d in gone if d["reason"] == "bad_key"]  # paid: kept in the journal with its receipt
    words = [f"{len(done)} purchase(s) finished"] + [
        f"paid {d['price']}; {len(d['files'])} product(s) in {out}: " + ", ".join(d["files"]) for d in done
    ]
    words += [gone_words(d, out) for d in (*dropped, *unopened)]
    nothing = "nothing was left to finish"
    got = {"finished": done, "dropped": dropped, **({"unopened": unopened} if unopened else {})}
    say(as_json, got, "\n".join(words) if done or gone else nothing)


def gone_words(d: dict[str, Any], out: Path) -> str:
    """What became of a purchase recovery did not finish (an entry of :func:`finish_journal`'s ``dropped``), and
    what to do: dropped unpaid, or (``bad_key``) paid but its key does not open the products, kept in the journal
    under ``out`` with its receipt, the evidence. `cardnet speed recover` and `cardnet wallet recover` say it so."""
    if d["reason"] == "bad_key":
        return f"{', '.join(d['products'])}: {d['detail']} ({out / JOURNAL}): {HINTS['bad_key']}"
    return f"dropped, unpaid: {', '.join(d['products'])} ({d['detail']}): {DROP_HINTS.get(d['reason'], 'buy again')}"


DROP_HINTS = {
    "insufficient": "nothing was paid: load the purse (or the account), then buy again",
    "bill_expired": "nothing was paid, and the vendor may sell the goods again: buy again for a new bill",
    "vendor_cert_expired": "buy again once the vendor's certificate is renewed (its catalogue signed anew)",
}


def finish_purchases(socket: str, pin: str | None, card: str | None, ca_cert: Path, out: Path,
                     broker: str | None = None,
                     dropped: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Finish the purchases journalled under ``out`` that were agreed and delivered but not yet paid and receipted:
    what each wrote (:func:`_written`)."""
    roots = [_pem_file(ca_cert, "the CA certificate")]
    done: list[dict[str, Any]] = _run(socket, pin, card, lambda wallet: finish_journal(wallet, roots, out, broker,
                                                                                       dropped))  # fmt: skip
    return done


async def finish_journal(wallet: Any, roots: list[bytes], out: Path, broker: str | None = None,
                         dropped: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Finish, on ``wallet``'s card, the purchases journalled under ``out`` (:meth:`Customer.recover`), through the
    broker at ``broker`` if given: what each wrote there (:func:`_written`); the purchases dropped unpaid are
    appended to ``dropped`` (id: the journal's, products, reason, detail), and so is one paid whose key does not
    open it (reason ``bad_key``: kept in the journal, with its receipt). A refusal raises
    :class:`~cardnet.services.speed.customer.PurchaseError`."""
    from cardnet.services.speed.customer import Customer, Journal

    written: list[dict[str, Any]] = []
    with progress("finishing interrupted purchases …"):  # each written once paid: a later refusal loses none
        _, gone = await Customer(wallet, b"", roots, journal=Journal(out / JOURNAL)).recover_all(
            broker=broker, on_finished=lambda got: written.append(_written(out, got))
        )
    if dropped is not None:
        dropped += [{"id": d.nid.hex(), "products": d.products, "reason": d.reason, "detail": d.detail} for d in gone]
    return written
