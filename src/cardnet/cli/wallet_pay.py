"""``cardnet wallet pay`` and ``cardnet wallet load``: paying from the person's card, a SPEED vendor (from the
e-purse, through the broker) or a Millicent vendor (with scrip), and loading the e-purse at the broker; the
protocols' own command-line code (:mod:`cardnet.cli.speed`, :mod:`cardnet.cli.millicent`) on the wallet's card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cardnet.cli.output import console, emit_json, fail, print_rows, progress, say
from cardnet.cli.wallet import Target, wallet_command


@click.group("pay")
def wallet_pay() -> None:
    """Pay a vendor: SPEED (from the e-purse, through the broker) or Millicent (with scrip)."""


@wallet_command(
    wallet_pay,
    "speed",
    click.option("--vendor", "vendor_addr", required=True, help="The vendor's HOST:PORT."),
    click.option("--product", "products", required=True, multiple=True, help="A product id (repeat for several)."),
    click.option("--limit", required=True, help="The most you pay, e.g. '3.00 EUR'."),
    click.option("--aggressive", is_flag=True, help="No negotiation: buy at the list price (small products)."),
    click.option("--from-account", is_flag=True, help="Pay from your account at the broker, not the e-purse."),
    click.option("--broker", default=None, help="The broker's HOST:PORT (default: the wallet config's)."),
)
def pay_speed(target: Target, vendor_addr: str, products: tuple[str, ...], limit: str, aggressive: bool,
              from_account: bool, broker: str | None, as_json: bool) -> None:  # fmt: skip
    """Buy products from a SPEED vendor: negotiate, receive them encrypted, pay, get the key with the receipt.
    They are written, with the receipt, to the wallet's purchases folder."""
    from cardnet.cli.speed_purchase import purchase
    from cardnet.cli.wallet_buy import DEBITS_PENDING_HINT, broker_source, wrong_broker

    cfg = target.config
    source, given = broker_source(broker, cfg), broker
    broker = broker or cfg.need("broker", "--broker", "broker")
    bcert = Path(cfg.need("broker_cert", "--broker-cert", "broker certificate"))
    ca_cert = Path(cfg.need("ca_cert", "--ca-cert", "CA certificate"))
    account = cfg.need("account", "--account", "account at the broker") if from_account else None
    out = Path(cfg.get("purchases") or "purchases")
    later = {"unreachable:vendor": f"nothing was paid: check the vendor's address {vendor_addr} (--vendor: the "
             "HOST:PORT `cardnet speed vendor run` printed) and that the vendor runs there, then pay again",
             "unreachable:broker": f"check that the broker runs at {broker} ({source}); the vendor "
             "delivered, so the purchase waits in your wallet (`cardnet wallet show`): `cardnet wallet recover` "
             "pays it once the broker answers there, never twice" + wrong_broker(target, given, out, ca_cert),
             "unknown_product": f"`cardnet speed catalogue --vendor {vendor_addr} --ca-cert {ca_cert}` lists what the "
             "vendor sells (give --product as it names it)",
             "debits_pending": DEBITS_PENDING_HINT}  # fmt: skip
    result = purchase(target.socket, target.pin, target.card, vendor_addr, broker, bcert, ca_cert, products, limit,
                      aggressive, account, out, later)  # fmt: skip
    if as_json:
        emit_json(result)
        return
    console.print(f"paid {result['price']} (receipt {result['poid']})", markup=False)
    print_rows([{"product": p, "file": f} for p, f in zip(products, result["files"], strict=True)],
               ("product", "file"), title="bought", empty="nothing bought")  # fmt: skip


@wallet_command(
    wallet_pay,
    "millicent",
    click.option("--vendor", required=True, help="The vendor's id, 16 hex digits."),
    click.option("--at", "address", required=True, help="The vendor's HOST:PORT."),
    click.option("--product", required=True, help="The product's name (`cardnet millicent catalogue` lists them)."),
    click.option("--price", type=click.IntRange(1), required=True, help="In scrip units."),
    click.option("--level", type=click.IntRange(1, 3), default=2, show_default=True, help="Protection level."),
    click.option("--top-up", default=100, show_default=True, help="Scrip to buy from the broker when short."),
)
def pay_millicent(target: Target, vendor: str, address: str, product: str, price: int, level: int, top_up: int,
                  as_json: bool) -> None:  # fmt: skip
    """Buy a product with Millicent scrip (change is kept; scrip is bought from your broker when short)."""
    from cardnet.cli.millicent import spend_scrip

    where = target.config.get("millicent")
    if where is None or not Path(where).exists():
        fail(f"no Millicent wallet at {where}: open an account at a broker first", reason="no_scrip_wallet",
             hint=f"cardnet millicent open --wallet {where} --broker HOST:PORT")  # fmt: skip
    r = spend_scrip(where, vendor, address, product, price, level, top_up)
    content = r.content.decode("utf-8", "replace")
    if as_json:
        emit_json({"status": r.status.name.lower(), "change": r.change, "content": content})
        return
    console.print(content, markup=False, highlight=False)
    console.print(f"paid {price}; change {r.change}", style="dim", markup=False)


# -- the e-purse ------------------------------------------------------------------------------------------------
@wallet_command(
    None,
    "load",
    click.option("--amount", required=True, help="e.g. '10.00 EUR'."),
    click.option("--broker", default=None, help="The broker's HOST:PORT (default: the wallet config's)."),
    click.option("--account", default=None, help="Your account at the broker (default: the wallet config's)."),
)
def wallet_load(target: Target, amount: str, broker: str | None, account: str | None, as_json: bool) -> None:
    """Load your e-purse from your account at the broker (its key is fetched first, the first time)."""
    from cardnet.cli.speed import _price, _run
    from cardnet.cli.speed_purse import LOAD_HINTS, balance_words, load_purse, purse_balances
    from cardnet.cli.wallet_buy import broker_source
    from cardnet.services.speed.customer import install_key

    cfg = target.config
    source = broker_source(broker, cfg)
    broker = broker or cfg.need("broker", "--broker", "broker")
    account = account or cfg.need("account", "--account", "account at the broker")
    price = _price(amount, "--amount")

    async def work(wallet: Any) -> dict[str, Any]:
        with progress(f"loading {price} from account {account} at {broker} …"):
            if not (await purse_balances(wallet))["keyed"]:
                await install_key(wallet, broker)
            return await load_purse(wallet, broker, price, account)

    later = {"unreachable": load_unreachable_hint(broker, source)}
    got = _run(target.socket, target.pin, target.card, work, {**LOAD_HINTS, **later})
    say(as_json, got, f"loaded {price}; your e-purse holds {balance_words(got)}")


def load_unreachable_hint(
    broker: str, source: str, recover: str = "`cardnet wallet recover` (through the broker in your wallet config)"
) -> str:
    """What to do when the broker of an e-purse load (at ``broker``, from ``source``) did not answer: `cardnet wallet
    load`'s words and the web wallet's (``recover``: what credits the load later)."""
    return (
        f"check that the broker runs at {broker} ({source}); a load it did not answer is credited by {recover} once "
        "it answers"
    )
