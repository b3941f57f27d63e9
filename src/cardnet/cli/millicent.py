"""``cardnet millicent``: scrip micropayments — vendor and broker services, and a customer's wallet."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from cardnet.cli.output import (
    FiniteRange,
    all_or_nothing,
    console,
    emit_json,
    fail,
    fail_os,
    json_option,
    new_file_then,
    print_fields,
    print_rows,
    print_table,
    progress,
    say,
    say_ready,
    spend_refusal,
    table,
)
from cardnet.store import Store, open_store


def _store(where: str, kind: str, *, create: bool) -> Store:
    """The store at ``where`` (a path or a URL), which must be a ``kind`` store; ``create=False``: an
    existing one only (a mistyped path is an error, not a new empty store)."""
    url = where if "://" in where else "sqlite:///" + str(Path(where).resolve())
    return open_store(url, kind=kind, create=create)


def _vendor(where: str, *, create: bool = False) -> Store:
    """A vendor's store: only ``vendor init`` makes one."""
    return _store(where, "millicent-vendor", create=create)


def _broker(where: str, *, create: bool = True) -> Store:
    """A broker's store: its first licence or agreement makes it."""
    return _store(where, "millicent-broker", create=create)


def _hex(value: str, n: int, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != n:
        fail(f"{what} must be {2 * n} hex digits, got {value!r}")
    return raw


def _listen(value: str) -> tuple[str, int]:
    from cardnet.transport import host_port

    try:
        return host_port(value)
    except ValueError:
        fail(f"--listen must be HOST:PORT, got {value!r}")


STORE = click.option("--store", required=True, help="The service's store: a file path or a store URL.")


def _server_limits(fn: Callable[..., Any]) -> Callable[..., Any]:
    """--max-connections, --max-per-peer, --handshake-timeout, --idle-timeout, --send-timeout (docs/transport.md,
    Listening)."""
    from cardnet.transport import DEFAULT_SERVER_LIMITS as D

    for opt in reversed(
        (
            click.option("--max-connections", type=click.IntRange(1), default=D.max_connections, show_default=True,
                         help="Connections held at once; more are closed at once."),
            click.option("--max-per-peer", type=click.IntRange(1), default=D.max_per_peer, show_default=True,
                         help="Connections held at once from one IP address."),
            click.option("--handshake-timeout", type=FiniteRange(0.05), default=D.handshake_timeout_s,
                         show_default=True, help="Seconds from connect to the first whole request."),
            click.option("--idle-timeout", type=FiniteRange(0), default=D.idle_timeout_s, show_default=True,
                         help="Seconds a connection may wait without a request (0: never)."),
            click.option("--send-timeout", type=FiniteRange(0), default=D.send_timeout_s, show_default=True,
                         help="Seconds an answer may wait for a client that does not read it (0: never)."),
        )
    ):  # fmt: skip
        fn = opt(fn)
    return fn


def _limits_from(
    max_connections: int, max_per_peer: int, handshake_timeout: float, idle_timeout: float, send_timeout: float
) -> Any:
    from cardnet.transport import ServerLimits

    return ServerLimits(
        max_connections=max_connections,
        max_per_peer=max_per_peer,
        handshake_timeout_s=handshake_timeout,
        idle_timeout_s=idle_timeout or None,
        send_timeout_s=send_timeout or None,
    )


WALLET = click.option(
    "--wallet",
    default=lambda: os.environ.get("CARDNET_WALLET", "wallet.db"),
    show_default="$CARDNET_WALLET or wallet.db",
    help="The wallet store (file path or URL).",
)
JSON = json_option


def _write_secret_file(out: str, what: str, record: Callable[[Callable[[dict[str, Any]], None]], Any]) -> Any:
    """Record something in a store and write it to the new file ``out`` (0600), all or nothing.

    ``record(deliver)`` calls ``deliver(obj)`` inside its store transaction: a path that cannot be
    written refuses the command before anything is recorded, and a write that fails rolls it back.
    """

    def with_file(write: Callable[[bytes], None]) -> Any:
        return record(lambda obj: write(json.dumps(obj).encode()))

    try:
        return new_file_then(Path(out), 0o600, with_file)
    except OSError as exc:
        fail_os(exc, f"write the {what} to", out)


@click.group()
def millicent() -> None:
    """Millicent scrip: vendor-specific micro-cash with brokers, spent lists and customer secrets.

    \b
    A whole story on one machine:
      cardnet millicent vendor init --store v.db --id 00000000000000a1
      cardnet millicent vendor add-page --store v.db --name hello --price 3 --text "hello, world"
      cardnet millicent vendor licence --store v.db --broker bob --out lic.json
      cardnet millicent broker add-licence --store b.db --file lic.json
      cardnet millicent broker run --store b.db --listen 127.0.0.1:7100 &
      cardnet millicent vendor run --store v.db --listen 127.0.0.1:7200 &
      cardnet millicent open --broker 127.0.0.1:7100          # prints your customer id
      cardnet millicent broker deposit --store b.db --customer ID --amount 1000
      cardnet millicent buy --vendor 00000000000000a1 --value 100
      cardnet millicent spend --vendor 00000000000000a1 --at 127.0.0.1:7200 --product hello --price 3
      cardnet millicent list
    """


# --- vendor ---------------------------------------------------------------------------


@millicent.group()
def vendor() -> None:
    """The vendor: validates scrip, keeps the spent list, sells pages."""


@vendor.command("init")
@STORE
@click.option("--id", "vendor_id", required=True, help="Vendor id, 16 hex digits.")
@click.option("--validity-days", default=7, show_default=True, help="How long change scrip stays valid.")
@click.option("--level", type=click.IntRange(1, 3), default=2, show_default=True, help="Lowest protection level.")
@JSON
def vendor_init(store: str, vendor_id: str, validity_days: int, level: int, as_json: bool) -> None:
    """Create a vendor: master scrip secret 0 and 256 customer master secrets."""
    from cardnet.services.millicent.vendor import VendorError, init_vendor

    vid = _hex(vendor_id, 8, "--id")
    try:
        with all_or_nothing(store):
            init_vendor(_vendor(store, create=True), vid, validity_s=validity_days * 86400, min_level=level)
    except VendorError as exc:
        hint = f"use another --store (`cardnet millicent vendor status --store {store}` shows the vendor there)"
        fail(str(exc), reason=exc.reason, hint=hint if exc.reason == "exists" else None)
    say(as_json, {"vendor": vid.hex(), "store": store}, f"vendor {vid.hex()} created in {store}")


@vendor.command("add-page")
@STORE
@click.option("--name", required=True, help="The product's name, as customers ask for it (spend --product).")
@click.option("--price", type=click.IntRange(1), required=True, help="Price in this vendor's scrip units.")
@click.option("--text", default=None, help="The page's content.")
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="A file whose bytes are the page's content (instead of --text).",
)
@JSON
def vendor_add_page(store: str, name: str, price: int, text: str | None, path: str | None, as_json: bool) -> None:
    """Add (or replace) a product in the vendor's catalogue.

    Also while the vendor runs: it sells the product, at this price, from its next batch of requests."""
    from cardnet.services.millicent.vendor import add_product

    if (text is None) == (path is None):
        fail("give exactly one of --text and --file")
    content = text.encode() if text is not None else Path(path or "").read_bytes()
    add_product(_vendor(store), name, price, content)
    then = "a running `cardnet millicent vendor run` sells it at this price from its next batch of requests"
    say(as_json, {"product": name, "price": price}, f"{name}: {price} ({then})")


@vendor.command("licence")
@STORE
@click.option("--broker", required=True, help="The broker's name (recorded with the licence).")
@click.option("--out", "out", type=click.Path(dir_okay=False), required=True, help="New licence file to write (0600).")
@JSON
def vendor_licence(store: str, broker: str, out: str, as_json: bool) -> None:
    """License a broker to mint this vendor's scrip under an index of its own (writes the shared secrets).

    Also while the vendor runs: it accepts the broker's scrip from its next batch of requests."""
    from cardnet.services.millicent.vendor import export_licence

    vendor_store = _vendor(store)
    lic = _write_secret_file(out, "licence", lambda deliver: export_licence(vendor_store, broker, deliver=deliver))
    say(
        as_json,
        {"broker": broker, "index": lic["index"], "out": out},
        f"licence for {broker} (index {lic['index']}) written to {out}: it holds secrets, move it safely",
    )


@vendor.command("bulk-agreement")
@STORE
@click.option("--broker", required=True, help="The broker's name (recorded with the agreement).")
@click.option("--discount", type=click.IntRange(0, 100), default=10, show_default=True, help="Percent off face value.")
@click.option(
    "--out", "out", type=click.Path(dir_okay=False), required=True, help="New agreement file to write (0600)."
)
@JSON
def vendor_bulk_agreement(store: str, broker: str, discount: int, out: str, as_json: bool) -> None:
    """Agree to sell scrip in bulk to a broker at a discount (writes the broker's id, secret and order key)."""
    from cardnet.services.millicent.vendor import add_bulk_broker

    vendor_store = _vendor(store)
    agreement = _write_secret_file(
        out,
        "bulk agreement",
        lambda deliver: add_bulk_broker(vendor_store, broker, discount_pct=discount, deliver=deliver),
    )
    say(
        as_json,
        {"broker": broker, "customer_id": agreement["customer_id"], "discount_pct": discount, "out": out},
        f"bulk agreement with {broker} (customer id {agreement['customer_id']}, {discount} % off) written to {out}: "
        "it holds secrets, move it safely",
    )


@vendor.command("rotate")
@STORE
@JSON
def vendor_rotate(store: str, as_json: bool) -> None:
    """Make new scrip under a fresh master scrip secret (old scrip stays valid until it expires).

    Also while the vendor runs: it mints its change under the new index from its next batch of requests."""
    from cardnet.services.millicent.vendor import rotate_secret

    index = rotate_secret(_vendor(store))
    then = "a running `cardnet millicent vendor run` mints under it from its next batch of requests"
    say(as_json, {"mint_index": index}, f"new scrip is minted under index {index} ({then})")


@vendor.command("run")
@STORE
@click.option("--listen", default="127.0.0.1:7200", show_default=True, help="HOST:PORT (port 0 picks one).")
@click.option(
    "--prune-every",
    type=FiniteRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds between spent-list prunes.",
)
@click.option("--failpoint", default=None, hidden=True, help="Test only: kill-after-commit.")
@_server_limits
@JSON
def vendor_run(
    store: str, listen: str, prune_every: float, failpoint: str | None, as_json: bool, **limits: Any
) -> None:
    """Serve purchases over TCP. Prints "ready vendor HOST:PORT" when listening
    (with --json: {"ready": {"name": "vendor", "listen": "HOST:PORT"}} on one line)."""
    from cardnet.services.millicent.vendor import VendorCore, VendorServer
    from cardnet.store.owner import claimed

    host, port = _listen(listen)
    with claimed([(store, "give another --store")], "millicent vendor") as claims:  # one vendor per store
        core = VendorCore(_vendor(store))
        bounds = _limits_from(**limits)

        _serve(
            "vendor",
            lambda: VendorServer(core, prune_every_s=prune_every, failpoint=failpoint, server_limits=bounds),
            host,
            port,
            as_json,
            claims,
        )


@vendor.command("redeem")
@STORE
@click.option("--broker", "broker", required=True, help="The broker's HOST:PORT: the scrip it minted is sent there.")
@click.option("--timeout", type=FiniteRange(0.1), default=30.0, show_default=True,
              help="Seconds to wait for the broker's answer to a batch; past it, it stays to redeem.")  # fmt: skip
@JSON
def vendor_redeem(store: str, broker: str, timeout: float, as_json: bool) -> None:
    """Send a broker the scrip it minted under its licence, received so far, for payment.

    Each broker pays only for its own scrip: the scrip of other brokers this vendor licensed stays, to be
    redeemed at their addresses (the output names them)."""
    from cardnet.services.millicent.vendor import VendorCore, redeem_at_broker

    host, port = _listen(broker)
    r = asyncio.run(redeem_at_broker(VendorCore(_vendor(store)), host, port, timeout_s=timeout))
    if r["licence"] is None:
        say(as_json, r, "nothing to redeem: no broker-minted scrip was received since the last redemption")
        return
    who = f"{r['broker']} (licence {r['licence']})"
    if not r["items"]:
        done = f"nothing to redeem at {who}: none of its scrip was received since the last redemption"
    else:
        done = (f"redeemed {r['items']} scrip of {who}: the broker owes this vendor {r['paid']} more for them "
                "(its discount kept; `broker status` shows the total), "
                f"{r['duplicates']} of them redeemed before")  # fmt: skip
    left = [f"{x['items']} scrip of {x['broker']} (licence {x['licence']}), worth {x['value']}" for x in r["left"]]
    if left:
        done += (f"\nnot sent (each broker pays only for its own scrip): {'; '.join(left)}. Redeem them at their "
                 f"brokers: cardnet millicent vendor redeem --store {store} --broker HOST:PORT")  # fmt: skip
    say(as_json, r, done)


@vendor.command("status")
@STORE
@JSON
def vendor_status(store: str, as_json: bool) -> None:
    """Spent-list size and redeemable scrip."""
    from cardnet.services.millicent.vendor import VendorCore

    core = VendorCore(_vendor(store))
    by_licence = core.redeemable_by_licence()
    r: dict[str, Any] = {
        "vendor": core.vendor_id.hex(),
        "spent": core.spent_count(),
        "redeemable": sum(x["items"] for x in by_licence),
        "redeemable_by_broker": by_licence,
        "mint_index": core.vendor.mint_index,
        "products": {k: p.price for k, p in core.vendor.catalogue.items()},
        "bulk_sales": core.bulk_sales(),
    }
    if as_json:
        emit_json(r)
        return
    print_fields(
        [
            ("vendor", r["vendor"]),
            ("spent list", f"{r['spent']} scrip"),
            ("redeemable", f"{r['redeemable']} broker-minted scrip not yet redeemed"),
            ("mint index", str(r["mint_index"])),
        ],
    )
    if by_licence:
        print_rows(by_licence, ("broker", "licence", "items", "value"), title="redeemable, per broker", empty="")
    products = [{"product": k, "price": v} for k, v in sorted(r["products"].items())]
    print_rows(
        products, ("product", "price"), title="catalogue", empty="no products (cardnet millicent vendor add-page)"
    )
    sales = [{"customer_id": cid, **row} for cid, row in sorted(r["bulk_sales"].items())]
    print_rows(sales, ("broker", "customer_id", "value", "owed"), title="bulk sales", empty="no bulk sales")


# --- broker ---------------------------------------------------------------------------


@millicent.group()
def broker() -> None:
    """The broker: sells scrip of many vendors to customers, redeems what vendors received."""


@broker.command("add-licence")
@STORE
@click.option(
    "--file",
    "path",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="The licence file `cardnet millicent vendor licence` wrote.",
)
@click.option("--discount", default=10, show_default=True, help="Percent the broker keeps at redemption.")
@JSON
def broker_add_licence(store: str, path: str, discount: int, as_json: bool) -> None:
    """Keep a vendor's licence: the broker then mints that vendor's scrip."""
    from cardnet.services.millicent.broker import add_licence, licence_record

    try:
        lic = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        fail(f"cannot read the licence {path}: {exc}", reason="bad_file", hint="give the file `vendor licence` wrote")
    licence_record(lic, discount_pct=discount)  # a file that is no licence makes no broker store
    vid = add_licence(_broker(store), lic, discount_pct=discount).hex()
    say(as_json, {"vendor": vid, "mode": "licence"}, f"licensed for vendor {vid}")


@broker.command("add-bulk")
@STORE
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="The bulk agreement file (`cardnet millicent vendor bulk-agreement` wrote it).")  # fmt: skip
@click.option("--vendor-at", required=True, help="The vendor's HOST:PORT (where the broker buys and issues).")
@click.option("--denomination", type=click.IntRange(1), default=100, show_default=True, help="Value of a stock piece.")
@click.option("--pieces", type=click.IntRange(1, 1000), default=10, show_default=True, help="Pieces per bulk order.")
@JSON
def broker_add_bulk(store: str, path: str, vendor_at: str, denomination: int, pieces: int, as_json: bool) -> None:
    """Keep a vendor's bulk agreement: the broker then buys that vendor's scrip in bulk and resells it."""
    from cardnet.services.millicent.broker import BrokerError, add_bulk, bulk_record

    try:
        agreement = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        fail(
            f"cannot read the agreement {path}: {exc}",
            reason="bad_file",
            hint="give the file `vendor bulk-agreement` wrote",
        )
    try:
        bulk_record(agreement, vendor_at=vendor_at, denomination=denomination, pieces=pieces)  # before any store
        vid = add_bulk(_broker(store), agreement, vendor_at=vendor_at, denomination=denomination, pieces=pieces)
    except BrokerError as exc:
        fail(str(exc), reason=exc.reason)
    say(
        as_json,
        {"vendor": vid.hex(), "mode": "bulk", "vendor_at": vendor_at, "denomination": denomination, "pieces": pieces},
        f"bulk mode for vendor {vid.hex()} (buys {pieces} x {denomination} at {vendor_at})",
    )


@broker.command("mode")
@STORE
@click.option("--vendor", required=True, help="Vendor id, 16 hex digits.")
@click.option("--mode", type=click.Choice(["licence", "bulk"]), required=True,
              help="licence: the broker makes the scrip; bulk: it buys the vendor's scrip and resells it.")  # fmt: skip
@JSON
def broker_mode(store: str, vendor: str, mode: str, as_json: bool) -> None:
    """Choose how the broker gets a vendor's scrip: mint it under licence, or buy it in bulk."""
    from cardnet.services.millicent.broker import BrokerError, set_mode

    try:
        set_mode(_broker(store), _hex(vendor, 8, "--vendor"), mode)
    except BrokerError as exc:
        fail(str(exc), reason=exc.reason)
    say(as_json, {"vendor": vendor, "mode": mode}, f"vendor {vendor}: {mode}")


VENDOR_TIMEOUT_DEFAULT = 10.0  # (VENDOR_TIMEOUT_S of services/millicent/broker.py: the CLI stays light to import)


@broker.command("bulk-buy")
@STORE
@click.option("--vendor", required=True, help="Vendor id, 16 hex digits.")
@click.option("--value", type=click.IntRange(1), required=True, help="Face value to buy.")
@click.option("--pieces", type=click.IntRange(1, 1000), default=10, show_default=True,
              help="How many pieces the value is cut into.")  # fmt: skip
@click.option(
    "--vendor-timeout",
    type=FiniteRange(0.1),
    default=VENDOR_TIMEOUT_DEFAULT,
    show_default=True,
    help="Seconds to wait for the vendor's answer to the order (as `broker run --vendor-timeout`); past it the "
    "order stays pending and the next bulk-buy, or the broker's next sale of this vendor's scrip, sends it again.",
)
@JSON
def broker_bulk_buy(store: str, vendor: str, value: int, pieces: int, vendor_timeout: float, as_json: bool) -> None:
    """Buy a vendor's scrip in bulk now (the running broker also buys by itself when its stock runs short)."""
    from cardnet.services.millicent.broker import BrokerCore, BrokerError, buy_stock

    core = BrokerCore(_broker(store))
    try:
        outcome = asyncio.run(buy_stock(core, _hex(vendor, 8, "--vendor"), value, pieces, timeout_s=vendor_timeout))
    except BrokerError as exc:
        fail(str(exc), reason=exc.reason)
    if not outcome.bought:
        fail(outcome.detail, reason="not_bought")
    say(as_json, {"vendor": vendor, "bought": True, "detail": outcome.detail}, outcome.detail)


@broker.command("deposit")
@STORE
@click.option("--customer", required=True, help="Customer id, 16 hex digits.")
@click.option("--amount", type=click.IntRange(1), required=True, help="Added to the balance (scrip units).")
@JSON
def broker_deposit(store: str, customer: str, amount: int, as_json: bool) -> None:
    """Credit a customer's prepaid balance."""
    from cardnet.services.millicent.broker import deposit

    balance = deposit(_broker(store), _hex(customer, 8, "--customer"), amount)
    say(as_json, {"customer": customer, "balance": balance}, f"customer {customer}: prepaid balance {balance}")


@broker.command("run")
@STORE
@click.option("--listen", default="127.0.0.1:7100", show_default=True, help="HOST:PORT (port 0 picks one).")
@click.option(
    "--vendor-timeout",
    type=FiniteRange(0.1),
    default=VENDOR_TIMEOUT_DEFAULT,
    show_default=True,
    help="Seconds a purchase of a bulk vendor's scrip may wait for that vendor, all its calls together (buying "
    "stock, issuing the scrip); past it the customer is answered 'pending' and her wallet sends it again "
    "(`millicent retry`). A wallet waits 10 s for the broker's answer.",
)
@click.option(
    "--reservation-hold",
    type=click.IntRange(1),
    default=24 * 3600,  # (RESERVATION_HOLD_S of services/millicent/broker.py)
    show_default=True,
    help="Seconds stock bought for a bulk-mode sale stays reserved for it after its customer last sent the "
    "purchase (answered 'pending'); then it goes back to stock (`broker status`: released_value; logged). "
    "Nothing was debited: a customer who comes back later is served as a new sale. Longer than --vendor-timeout.",
)
@click.option(
    "--max-unfunded",
    type=click.IntRange(1),
    default=100_000,  # (MAX_UNFUNDED of services/millicent/broker.py)
    show_default=True,
    help="Accounts opened and never credited (no `broker deposit` yet) the broker keeps; opening one more drops "
    "the oldest of them (its customer opens again). Credited accounts are never dropped.",
)
@click.option(
    "--open-burst",
    type=click.IntRange(1),
    default=64,  # (OPEN_BURST)
    show_default=True,
    help="Account openings taken from one address (IPv6: one /64) at once; then --open-rate a second. More are "
    "refused in words, nothing stored.",
)
@click.option(
    "--open-rate",
    type=FiniteRange(0.001),
    default=1.0,  # (OPEN_RATE_PER_S)
    show_default=True,
    help="Account openings a second taken from one address once its --open-burst is used.",
)
@_server_limits
@JSON
def broker_run(
    store: str,
    listen: str,
    vendor_timeout: float,
    reservation_hold: int,
    max_unfunded: int,
    open_burst: int,
    open_rate: float,
    as_json: bool,
    **limits: Any,
) -> None:
    """Serve accounts, scrip sales and redemptions over TCP. Prints "ready broker HOST:PORT"
    (with --json: {"ready": {"name": "broker", "listen": "HOST:PORT"}} on one line)."""
    from cardnet.services.millicent.broker import BrokerCore, BrokerServer

    if reservation_hold <= vendor_timeout:
        fail(
            f"--reservation-hold {reservation_hold} is not longer than --vendor-timeout {vendor_timeout:g}: a sale "
            "would lose its stock while the broker still buys it",
            reason="usage",
            hint="give a --reservation-hold of more seconds than --vendor-timeout (the default is a day)",
        )
    from cardnet.store.owner import claimed

    host, port = _listen(listen)
    with claimed([(store, "give another --store")], "millicent broker") as claims:  # one broker per store
        core = BrokerCore(_broker(store), reservation_hold_s=reservation_hold, max_unfunded=max_unfunded)
        bounds = _limits_from(**limits)

        def server() -> BrokerServer:
            return BrokerServer(core, server_limits=bounds, vendor_timeout_s=vendor_timeout, open_burst=open_burst,
                                open_rate_per_s=open_rate)  # fmt: skip

        _serve("broker", server, host, port, as_json, claims)


@broker.command("status")
@STORE
@JSON
def broker_status(store: str, as_json: bool) -> None:
    """What the broker owes each vendor (redeemed licence scrip; bulk purchases), its bulk stock, and the sales'
    reservations of stock it released lately (newest first), with when and why."""
    from cardnet.services.millicent.broker import BrokerCore, releases

    core = BrokerCore(_broker(store, create=False))
    r: dict[str, Any] = {"owed_to_vendors": core.vendors(), "bulk": core.stock(), "releases": releases(core.store)}
    if as_json:
        emit_json(r)
        return
    owed = [{"vendor": v, "owed": n} for v, n in sorted(r["owed_to_vendors"].items())]
    print_rows(owed, ("vendor", "owed"), title="owed to vendors (redeemed licence scrip)", empty="nothing redeemed yet")
    bulk = [{"vendor": v, **row} for v, row in sorted(r["bulk"].items())]
    print_rows(
        bulk,
        (
            "vendor",
            "pieces",
            "stock_value",
            "reserved_value",
            "released_value",
            "bought_value",
            "owed",
            "pending_orders",
        ),
        title="bulk vendors",
        empty="no bulk vendors",
    )
    shown = [{**row, "at": _when(row["at"])} for row in r["releases"][:RELEASES_SHOWN]]
    print_rows(
        shown,
        ("at", "vendor", "customer", "what", "value", "why"),
        title="reservations released (newest first)",
        empty="no reservation released",
    )
    if len(r["releases"]) > RELEASES_SHOWN:
        console.print(f"... and {len(r['releases']) - RELEASES_SHOWN} older ones (--json lists them)", markup=False)


RELEASES_SHOWN = 20  # `broker status` shows this many releases to a person; --json all the broker keeps


def _when(at: int) -> str:
    """A Unix time for people: UTC, to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(at))


# --- customer -------------------------------------------------------------------------


def _wallet(where: str, *, create: bool = False) -> Any:
    """The customer's wallet at ``where``: only ``open`` makes one (``create``). Any other command given a path
    that holds none (a mistyped --wallet, or $CARDNET_WALLET unset in this shell) fails ``missing`` naming the path
    and makes no file, as every read command does: before, buy, spend, renew and retry made an empty wallet there
    and answered "open an account first" to a customer who had one."""
    from cardnet.services.millicent.wallet import Wallet

    return Wallet(_store(where, "millicent-wallet", create=create))


@millicent.command("open")
@WALLET
@click.option("--broker", required=True, help="The broker's HOST:PORT.")
@JSON
def open_account(wallet: str, broker: str, as_json: bool) -> None:
    """Open an account at a broker (a key is made in the wallet); prints the customer id."""
    cid = asyncio.run(_wallet(wallet, create=True).open_account(broker))
    say(as_json, {"customer_id": cid.hex()}, f"customer id {cid.hex()} (ask the broker to credit it)")


@millicent.command("buy")
@WALLET
@click.option("--vendor", required=True, help="Vendor id, 16 hex digits.")
@click.option(
    "--value",
    type=click.IntRange(1),
    required=True,
    help="The scrip's value in the vendor's units, taken from your balance; one piece, spent on "
    "purchases up to its value (the vendor gives change).",
)
@JSON
def buy(wallet: str, vendor: str, value: int, as_json: bool) -> None:
    """Buy scrip of a vendor from the broker (paid from the prepaid balance)."""
    w = _wallet(wallet)
    s = _hinted(
        w, lambda: asyncio.run(w.buy(_hex(vendor, 8, "--vendor"), value)), wallet=wallet, vendor=vendor, value=value
    )
    say(
        as_json,
        {"scrip_id": s.scrip_id.hex(), "value": s.value, "expiry": s.expiry},
        f"scrip {s.scrip_id.hex()} worth {s.value}",
    )


@millicent.command("catalogue")
@click.option("--at", "address", required=True, help="The vendor's HOST:PORT (as spend --at).")
@JSON
def catalogue(address: str, as_json: bool) -> None:
    """What a vendor sells and at what price (asked of the vendor itself, before paying; no wallet needed).

    The list is not authenticated, and need not be: a purchase at a price that is not the vendor's is refused,
    nothing spent, and the refusal (MACed) names the vendor's price."""
    from cardnet.services.millicent.wallet import WalletError, fetch_catalogue

    try:
        r = asyncio.run(fetch_catalogue(address))
    except WalletError as exc:
        if exc.reason not in ("bad_reply", "unreachable"):  # (a vendor that refused: its words say what to do)
            raise
        fail(str(exc), reason=exc.reason, hint=CATALOGUE_AT_HINT)
    r["at"] = address
    if as_json:
        emit_json(r)
        return
    if not r["products"]:
        console.print(f"vendor {r['vendor']} at {address} sells nothing yet", markup=False, highlight=False)
        return
    rows = [{"product": p["name"], "price": p["price"]} for p in r["products"]]
    print_rows(rows, ("product", "price"), title=f"vendor {r['vendor']} at {address}", empty="")
    if not r["complete"]:
        console.print(f"(the first {len(rows)} products only: the vendor sells more)", markup=False)
    first = rows[0]
    console.print(
        f"buy one: cardnet millicent spend --vendor {r['vendor']} --at {address} --product {first['product']} "
        f"--price {first['price']}",
        markup=False,
        highlight=False,
    )


CATALOGUE_AT_HINT = (
    "check --at: it is the vendor's HOST:PORT, as `cardnet millicent vendor run` printed it (ready vendor "
    "HOST:PORT), and the vendor must be running; a broker's port, or another program's, answers something else"
)


@millicent.command("list")
@WALLET
@JSON
def list_scrip(wallet: str, as_json: bool) -> None:
    """The scrip in the wallet, per vendor, and pending requests (with why they are pending)."""
    w = _wallet(wallet)
    rows = [
        {"vendor": s.vendor.hex(), "scrip_id": s.scrip_id.hex(), "value": s.value, "expiry": s.expiry}
        for s in w.scrip()
    ]
    pending = [
        {
            "request": rid.hex(),
            "kind": rec["kind"],
            "vendor": rec.get("vendor", ""),
            "to": rec["to"],
            "reason": rec.get("reason", "not sent yet"),
        }
        for rid, rec in w.pending()
    ]
    if as_json:
        emit_json({"scrip": rows, "pending": pending})
        return
    for r in rows:
        r["expiry"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(r["expiry"]))
    print_rows(rows, ("vendor", "scrip_id", "value", "expiry"), title="scrip", empty="no scrip in the wallet")
    if pending:
        print_rows(pending, ("request", "kind", "vendor", "to", "reason"), title="pending requests", empty="")
        console.print(
            "send them again: cardnet millicent retry (--at HOST:PORT --vendor V sends a vendor's spends elsewhere, "
            "--broker HOST:PORT sends purchases to a broker that moved)"
        )


@millicent.command("spend")
@WALLET
@click.option("--vendor", required=True, help="Vendor id, 16 hex digits.")
@click.option("--at", "address", required=True, help="The vendor's HOST:PORT.")
@click.option("--product", required=True, help="The product's name at the vendor.")
@click.option(
    "--price",
    type=click.IntRange(1),
    required=True,
    help="The vendor's price for it (another price is refused, nothing spent).",
)
@click.option(
    "--level",
    type=click.IntRange(1, 3),
    default=2,
    show_default=True,
    help="1: the scrip in the clear; 2: the request MACed with your customer secret (stolen scrip is "
    "useless); 3: also encrypted.",
)
@click.option(
    "--top-up",
    default=100,
    show_default=True,
    help="When no scrip piece of yours covers the price: the value of one piece to buy from the broker "
    "first (at least the price).",
)
@JSON
def spend(
    wallet: str, vendor: str, address: str, product: str, price: int, level: int, top_up: int, as_json: bool
) -> None:
    """Buy a product with scrip (change is kept; scrip is fetched from the broker when short)."""
    r = spend_scrip(wallet, vendor, address, product, price, level, top_up)
    if as_json:
        emit_json(
            {"status": r.status.name.lower(), "change": r.change, "content": r.content.decode("utf-8", "replace")}
        )
        return
    console.print(r.content.decode("utf-8", "replace"), markup=False, highlight=False)
    console.print(f"change {r.change}", style="dim", markup=False)


def spend_scrip(wallet: str, vendor: str, address: str, product: str, price: int, level: int, top_up: int) -> Any:
    """Buy ``product`` at ``price`` from ``vendor`` (16 hex) at ``address`` with the scrip of the wallet store
    ``wallet``: the vendor's answer (:class:`~cardnet.services.millicent.wallet.SpendResult`); a refusal fails in
    the customer's words, under --json too (non-zero exit)."""
    from cardnet.protocols import millicent as mc

    vid = _hex(vendor, 8, "--vendor")
    w = _wallet(wallet)
    with progress(f"buying {product} from vendor {vendor} at {address} …"):
        r = _hinted(w, lambda: asyncio.run(w.spend(vid, address, product, price, int(time.time()),
                                                   level=mc.Level(level), top_up=top_up)),
                    wallet=wallet, vendor=vendor, value=price, at=address, top_up=top_up)  # fmt: skip
    if r.status != 0:
        status = r.status.name.lower()
        message, hint = spend_refusal(status, r.detail, product=product, price=price)
        if status == "wrong_price" and (asked := mc.asked_price(r.detail, product)) is not None:
            message = (f"the vendor sells {product} at {asked}, not {price}: it refused the purchase, and your "
                       "scrip was not spent (the wallet keeps it)")  # fmt: skip
            hint = f"spend again with --price {asked} if that is what you mean to pay"
        fail(message, reason=status, hint=hint)
    return r


def _hinted(w: Any, work: Callable[[], Any], *, wallet: str, vendor: str, value: int, at: str = "--at",
            top_up: int | None = None) -> Any:  # fmt: skip
    """``work()``, its wallet's refusals with what to do: a balance too small (for a spend: the ``top_up`` piece it
    buys first when no scrip covers the price ``value``), no scrip that covers a price."""
    from cardnet.services.millicent.wallet import WalletError

    try:
        return work()
    except WalletError as exc:
        cid = w.customer_id
        if exc.reason == "refused" and "does not cover" in str(exc) and cid is not None:
            hint = (f"your prepaid balance at the broker is too small: its operator credits it with `cardnet "
                    f"millicent broker deposit --customer {cid.hex()} --amount N`")  # fmt: skip
            if top_up is not None and top_up > value:  # a spend buys a piece worth --top-up, not the price
                hint = (f"no scrip of this vendor in the wallet covers {value}, so spend buys a piece worth --top-up "
                        f"{top_up} first, and that is more than your prepaid balance at the broker: spend again "
                        f"with a smaller --top-up (at least {value}), or ask the broker's operator to credit it "
                        f"(`cardnet millicent broker deposit --customer {cid.hex()} --amount N`)")  # fmt: skip
        elif exc.reason == "not_a_vendor":  # --at names the broker's port: the spend is pending, nothing spent
            words = f"{at} answered as a Millicent broker, not a vendor: check --at (the vendor's HOST:PORT, as "
            hint = (f"`cardnet millicent retry --at VENDOR_HOST:PORT --vendor {vendor}` sends the pending spend to "
                    "the vendor (the wallet keeps its scrip until then)")  # fmt: skip
            fail(words + "`cardnet millicent vendor run` printed it)", reason=exc.reason, hint=hint)
        elif exc.reason == "short":
            hint = (f"buy a piece worth at least {value} from the broker: `cardnet millicent buy --wallet {wallet} "
                    f"--vendor {vendor} --value {value}`, then spend again; or spend with --top-up {value} (it buys "
                    "that piece first)")  # fmt: skip
        else:
            raise
        fail(str(exc), reason=exc.reason, hint=hint)


@millicent.command("renew")
@WALLET
@click.option("--vendor", "vendor_id", help="Only this vendor's scrip (16 hex digits).")
@click.option("--at", "address", help="The vendor's HOST:PORT (default: where it last answered).")
@JSON
def renew(wallet: str, vendor_id: str | None, address: str | None, as_json: bool) -> None:
    """Exchange scrip that expires within a day for new scrip, each vendor's at that vendor."""
    vendor_b = _hex(vendor_id, 8, "--vendor") if vendor_id else None
    rows = asyncio.run(_wallet(wallet).renew(int(time.time()), vendor=vendor_b, address=address))
    if as_json:
        emit_json({"renewals": rows})
        return
    print_rows(
        rows,
        ("vendor", "scrip_id", "value", "outcome", "detail"),
        title="renewals",
        empty="no scrip expires within a day",
    )


@millicent.command("retry")
@WALLET
@click.option("--at", "address", help="Send the pending spends to this HOST:PORT from now on (a wrong address).")
@click.option("--vendor", "vendor_id", help="With --at: whose pending spends (16 hex digits).")
@click.option(
    "--broker",
    "broker",
    help="Send the pending purchases of scrip to the broker at this HOST:PORT (it moved); later purchases go there "
    "too once it answers.",
)
@click.option(
    "--give-up",
    is_flag=True,
    help="Forget requests that are still not settled, keeping what can be kept (unexpired scrip comes back).",
)
@JSON
def retry(
    wallet: str, address: str | None, vendor_id: str | None, broker: str | None, give_up: bool, as_json: bool
) -> None:
    """Send pending requests again (their replies were lost): the same bytes fetch the stored reply.

    An answer that is not MACed by the broker (or, at levels 2 and 3, by the
    vendor) could come from anyone on the network: such a request stays
    pending until the peer's own answer arrives, or until you give it up.
    While any request stays pending the command fails (exit 2, reason
    pending, the rows under --json) after showing them.
    """
    vendor_b = _hex(vendor_id, 8, "--vendor") if vendor_id else None
    w = _wallet(wallet)
    rows = asyncio.run(w.retry_pending(int(time.time()), give_up=give_up, at=address, vendor=vendor_b, broker=broker))
    left = [r for r in rows if r["outcome"] == "pending"]
    if not as_json:
        print_rows(
            rows,
            ("request", "kind", "vendor", "outcome", "detail"),
            title="pending requests",
            empty="nothing is pending",
        )
    if left:  # not finished yet: exit 2, reason pending (as `trn reissue` without its answer), the rows too
        why = "; ".join(dict.fromkeys(str(r["detail"]) for r in left))
        fail(f"{len(left)} request{'s' if len(left) > 1 else ''} still pending: {why}", reason="pending",
             hint=f"run `cardnet millicent retry --wallet {wallet}` again once the peer answers; a vendor at another "
             "address: --at HOST:PORT --vendor ID (spends), a broker that moved: --broker HOST:PORT (purchases); "
             "to stop waiting: --give-up (unexpired scrip comes back)", fields={"requests": rows})  # fmt: skip
    if as_json:
        emit_json({"requests": rows})


# --- benchmark (added to `cardnet bench` by cli.bench) -----------------------------------


@click.command("millicent")
@JSON
@click.option(
    "--seconds",
    type=FiniteRange(min=0, min_open=True),
    default=3.0,
    show_default=True,
    help="Measuring time per figure (over all rounds).",
)
@click.option("--customers", default=2, show_default=True, help="Customer processes for purchases_per_s.")
@click.option("--window", default=64, show_default=True, help="Purchases in flight per customer process.")
def bench_millicent(as_json: bool, seconds: float, customers: int, window: int) -> None:
    """Millicent: validations_per_s vs hmac_bound_per_s, purchases_per_s vs tcp_bound_rtt_per_s."""
    from cardnet.bench import millicent as mb

    if seconds <= 0 or customers < 1 or window < 1:
        fail("--seconds > 0, --customers >= 1 and --window >= 1")
    r = mb.run(seconds, customers=customers, window=window)
    if as_json:
        emit_json(r)
        return
    t = table("figure", "per second", title="cardnet bench millicent")
    for k in ("hmac_bound_per_s", "validations_per_s", "tcp_bound_rtt_per_s", "purchases_per_s"):
        t.add_row(k, f"{r[k]:,}")
    print_table(t)
    for target, ok in r["targets"].items():
        console.print(f"{'[green]met[/]' if ok else '[red]missed[/]'}  {target}")


def _serve(label: str, make: Callable[[], Any], host: str, port: int, as_json: bool, claims: Any = None) -> None:
    """Run a service server (``start(host, port)`` / ``aclose()``) until SIGINT or SIGTERM; print "ready" once
    listening. Either signal stops it in order (its ``aclose``: the vendor writes the replies of what it has
    committed) and the process exits 0. ``claims`` (store/owner.py: the service's stores, claimed by the caller)
    are told where it listens, for the words of a second start's refusal."""
    from cardnet.cli.host import settle_heap

    async def main() -> None:
        server = make()
        addr = await server.start(host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            listen = f"{addr[0]}:{addr[1]}"
            if claims is not None:
                claims.serving(listen)
            settle_heap()
            say_ready(as_json, {"name": label, "listen": listen}, f"ready {label} {listen}")
            await stop.wait()
        finally:
            await server.aclose()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
