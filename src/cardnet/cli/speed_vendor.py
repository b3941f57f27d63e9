"""``cardnet speed vendor``: a SPEED vendor's store, catalogue and server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cardnet.cli.millicent import _limits_from, _listen, _serve, _server_limits, _store
from cardnet.cli.output import (
    FiniteRange,
    all_or_nothing,
    fail,
    json_option,
    say,
)
from cardnet.cli.speed import CA, STORE, _card_url, _pem, _pem_file, _price, _service_identity
from cardnet.store import Store


def _vendor_store(where: str, *, create: bool = False) -> Store:
    return _store(where, "speed-vendor", create=create)


# --- the vendor ------------------------------------------------------------------------------------------------
@click.group()
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
