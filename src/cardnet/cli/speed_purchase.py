"""``cardnet speed catalogue``, ``buy`` and ``recover``: a SPEED purchase from your card, and its recovery."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from cardnet.cli.output import (
    emit_json,
    fail,
    json_option,
    print_rows,
    progress,
    say,
)
from cardnet.cli.speed import BROKER, HINTS, JOURNAL, _customer_command, _pem_file, _price, _run, purchase_hint


@click.command("catalogue")
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
    None, "buy",
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
    None, "recover",
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
