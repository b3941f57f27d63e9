"""``cardnet speed complain``: a paid purchase whose product is not what the vendor catalogued, taken to the broker.

The purchase is read from the journal `cardnet speed buy --out DIR` keeps (``DIR/.purchases``); no card is needed:
the broker refunds only to an account of the card that paid (docs/speed.md, "Complaints").
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import click

from cardnet.cli.output import fail, json_option, say
from cardnet.cli.speed import JOURNAL, _pem_file

HINTS = {
    "unknown_purchase": "give the poid `cardnet speed buy` printed (or its last 16 hex digits, the names of the files "
    "it wrote into --out), and the --out it bought with",
    "not_paid": "finish it first: cardnet speed recover --out DIR ...; a purchase dropped unpaid cost nothing",
    "not_your_account": "name your account at the broker (--account: the one opened for the card that paid)",
    "unknown_account": "check --account: it names your account at the broker (the one opened for your card)",
    "refund_unfunded": "send the complaint again later (the verdict is not recorded until it is refunded), or take it "
    "up with the vendor",
    "refund_account_full": "send the complaint again naming another of your accounts (--account)",
    "no_entry": "ask the vendor for its catalogue as it was when you bought, or take it up with the broker's operator",
    "not_delivered": "the products in the journal are not what the vendor delivered: was the journal changed?",
    "unreachable:vendor": "check --vendor (the HOST:PORT `cardnet speed vendor run` printed): its signed catalogue is "
    "the evidence",
    "unreachable:broker": "check --broker (the HOST:PORT `cardnet speed broker run` printed) and that it runs there",
}


@click.command("complain")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The directory `cardnet speed buy` wrote the purchase to.")  # fmt: skip
@click.option("--purchase", "which", required=True,
              help="The purchase's poid (hex, as `buy` printed it; its last 16 digits are enough).")  # fmt: skip
@click.option("--vendor", "vendor_addr", required=True, help="The vendor's HOST:PORT: its signed catalogue entries.")
@click.option("--account", required=True, help="Your account at the broker: the refund goes there.")
@click.option("--ca-cert", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The CA certificate (PEM, `cardnet ca cert`).")  # fmt: skip
@click.option("--broker", default=None, help="The broker's HOST:PORT (default: the one the purchase was paid through).")
@json_option
def complain(out: Path, which: str, vendor_addr: str, account: str, ca_cert: Path, broker: str | None,
             as_json: bool) -> None:  # fmt: skip
    """Complain to the broker that a paid purchase's product is not what the vendor's catalogue names: if the broker
    upholds it, the price comes back to your account. The evidence (the products as delivered and deciphered, the
    vendor's signed catalogue entries) goes to the broker, which checks it against the bill."""
    from cardnet.services.speed.complaint import complain as send
    from cardnet.services.speed.complaint import paid_purchase
    from cardnet.services.speed.customer import Journal, PurchaseError

    if not (out / JOURNAL).is_dir():
        fail(
            f"{out} holds no purchase journal ({JOURNAL}): no `cardnet speed buy --out {out}` bought there",
            reason="no_journal",
            hint="check --out: it is the folder `cardnet speed buy --out` wrote its products to",
        )
    roots = [_pem_file(ca_cert, "the CA certificate")]
    try:
        rec = paid_purchase(Journal(out / JOURNAL), which)
        verdict = asyncio.run(send(rec, vendor_addr, account, roots, time.time(), broker))
    except PurchaseError as exc:
        party = getattr(exc, "party", None)
        hint = HINTS.get(f"{exc.reason}:{party}") or HINTS.get(exc.reason)
        fail(str(exc), reason=exc.reason, hint=hint)
    what = ", ".join(verdict.products)
    if not verdict.upheld:
        words = f"the broker did not uphold the complaint about {what}: {verdict.why}; nothing was refunded"
    elif verdict.refund is None:
        words = f"the complaint about {what} was upheld before ({verdict.why}): refunded then, nothing more now"
    else:
        words = f"complaint upheld ({verdict.why}): {verdict.refund} refunded to your account {account}"
    say(as_json, {"poid": verdict.poid.hex(), "products": verdict.products, "upheld": verdict.upheld,
                  "why": verdict.why, "refund": str(verdict.refund) if verdict.refund else None}, words)  # fmt: skip
