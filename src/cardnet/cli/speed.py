"""``cardnet speed``: buy from a vendor and pay from your card's e-purse through a broker (SPEED).

The vendor and the broker are services with a store each and a key certified by the cardnet CA (role service);
the broker's SAM is a card of its own (``--sam-store``). The customer's card runs on a host (``cardnet host
run`` with the applets ``purse`` and ``speed``); the ``purse`` and ``buy`` commands reach it through the host's
application socket, like ``cardnet trn``. docs/speed.md walks through a purchase from the command line.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from cardnet.cli.main import LazyGroup
from cardnet.cli.output import (
    fail,
    json_option,
)
from cardnet.cli.trn import CARD, PIN, SOCKET, run_on_wallet

STORE = click.option("--store", required=True, help="The service's store: a file path or a store URL.")
CA = click.option(
    "--ca", "ca_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The CA file (`cardnet ca create`): it certifies this service's new key.",
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


# The subcommands kept in modules of their own, imported only when they run.
SUBCOMMANDS = {
    "broker": "cardnet.cli.speed_broker:broker",
    "buy": "cardnet.cli.speed_purchase:buy",
    "catalogue": "cardnet.cli.speed_purchase:catalogue",
    "complain": "cardnet.cli.speed_complain:complain",
    "purse": "cardnet.cli.speed_purse:purse",
    "recover": "cardnet.cli.speed_purchase:recover",
    "vendor": "cardnet.cli.speed_vendor:vendor",
}


@click.group(cls=LazyGroup, lazy=SUBCOMMANDS)
def speed() -> None:
    """SPEED: negotiate, receive the product encrypted, pay from the e-purse, get the key with the receipt."""


# --- the customer ------------------------------------------------------------------------------------------------
def _customer_command(group: click.Group | None, name: str,
                      *options: Any) -> Callable[[Callable[..., Any]], click.Command]:  # fmt: skip
    """A customer's command ``name`` (in ``group``; None: a command of its own, for a lazy table) with the options
    that reach the card (--socket, --pin, --card), ``options`` and --json."""

    def wrap(f: Callable[..., Any]) -> click.Command:
        for option in reversed((SOCKET, PIN, CARD, *options, json_option)):
            f = option(f)
        command: click.Command = (group.command(name) if group is not None else click.command(name))(f)
        return command

    return wrap


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
