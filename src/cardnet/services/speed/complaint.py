"""A customer's complaint to the SPEED broker about a paid purchase whose product is not what the vendor catalogued.

Paper 5.7. The wallet's journal (:class:`~cardnet.services.speed.customer.Journal`) keeps every purchase it paid: the
bill, the ciphered products and the broker's receipt, whose K deciphers them. A complaint shows the broker the product
ids, the vendor's signed catalogue entries for them (read from the vendor now: the journal does not keep them) and what
the products deciphered to; the broker re-enciphers them under K, checks they are what the vendor delivered (the
bill's H(|Product|_K)) and that each entry is that vendor's, and upholds the complaint if a content is not the one its
entry names: the price goes to the customer's account ``refund_to`` (docs/speed.md, "Complaints").
"""

from __future__ import annotations

from dataclasses import dataclass

from cardnet.crypto.errors import CryptoError, PkiError
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.speed import catalogue as cat
from cardnet.protocols.speed import frames as fr
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed.customer import Journal, Pending, PurchaseError, _Link
from cardnet.services.speed.vendor import open_receipt
from cardnet.wire import DecodeError


@dataclass(frozen=True)
class Verdict:
    """The broker's verdict on a complaint: upheld or not, why, and what it refunded now (None: nothing now; an
    upheld complaint sent again is answered upheld with nothing more refunded)."""

    poid: bytes
    products: list[str]
    upheld: bool
    why: str
    refund: sm.Price | None


def paid_purchase(journal: Journal, which: str) -> Pending:
    """The paid purchase of ``journal`` whose PaymentOrderID, in hex, is ``which`` or ends with it (the files `cardnet
    speed buy` writes are named by its last 16 hex digits). Refused ``unknown_purchase`` (none, or several: give more
    digits) and ``not_paid`` (still under way, or dropped unpaid)."""
    want = which.strip().lower()
    if len(want) < 8 or any(c not in "0123456789abcdef" for c in want):
        raise PurchaseError("unknown_purchase", f"{which!r} is no PaymentOrderID: give its hex digits (at least the "
                            "last 8; `cardnet speed buy` printed it as poid)")  # fmt: skip
    paid = [r for r in journal.all() if r.poid is not None and r.receipt is not None]
    found = [r for r in paid if r.poid is not None and r.poid.hex().endswith(want)]
    if len(found) > 1:
        raise PurchaseError("unknown_purchase", f"{len(found)} paid purchases have a PaymentOrderID ending in {want}: "
                            "give more of its digits")  # fmt: skip
    if found:
        return found[0]
    for r in journal.all():
        bill = sm.decode(sm.BILL, sm.signed(r.bill, "bill").content, "bill")
        if bill["poid"].hex().endswith(want):
            state = (
                "was dropped unpaid" if r.dropped is not None else "is not paid yet (finish it: cardnet speed recover)"
            )
            raise PurchaseError(
                "not_paid", f"the purchase {bill['poid'].hex()[-16:]} ({', '.join(r.products)}) {state}"
            )
    raise PurchaseError("unknown_purchase", f"no purchase of this journal ({journal.path}) has a PaymentOrderID "
                        f"ending in {want}")  # fmt: skip


def deciphered(rec: Pending, roots: list[bytes], now: float) -> list[bytes]:
    """What the products of the paid purchase ``rec`` decipher to under the K of its receipt (checked: the broker
    signed it, as when it was paid)."""
    assert rec.poid is not None and rec.receipt is not None
    bill = sm.decode(sm.BILL, sm.signed(rec.bill, "bill").content, "bill")
    try:
        receipt = open_receipt(bill["rec_key"], rec.receipt, rec.broker_cert, roots, rec.receipt_time(bill, now))
        return [sm.decrypt_chunks(receipt["k"], i, per) for i, per in enumerate(rec.chunks)]
    except (ProtocolError, CryptoError, PkiError, DecodeError) as exc:
        raise PurchaseError("bad_receipt", f"the journal's receipt of {rec.poid.hex()[-16:]} does not open its "
                            f"products: {exc}") from None  # fmt: skip


async def complain(rec: Pending, vendor: str, refund_to: str, roots: list[bytes], now: float,
                   broker: str | None = None) -> Verdict:  # fmt: skip
    """Send the broker (at ``broker``, else the address it was paid through) the complaint about the paid purchase
    ``rec`` (its vendor's signed entries read from ``vendor``, HOST:PORT); the verdict. The broker's refusals come as
    :class:`PurchaseError` with its reason (``not_delivered``, ``bad_complaint``, ``refund_unfunded``,
    ``refund_account_full``, ``not_your_account``, ...)."""
    assert rec.poid is not None
    contents = deciphered(rec, roots, now)
    if sum(len(c) for c in contents) > sm.MAX_COMPLAINT_BYTES:
        raise PurchaseError("too_large", f"the products are larger than a complaint carries ({sm.MAX_COMPLAINT_BYTES} "
                            "bytes in all): take it up with the broker's operator")  # fmt: skip
    async with _Link(vendor, "vendor") as v:
        _, items = await v.ask(fr.CATALOGUE, fr.ITEMS)
    by_product = {}
    for signed in items["entries"]:
        try:
            entry = cat.read(signed, rec.vendor_cert)
        except (ProtocolError, CryptoError, PkiError, DecodeError):
            continue  # signed by another key (the vendor renewed its certificate since): not evidence against this sale
        if entry["vendor_id"] == sm.vendor_id(rec.vendor_cert):
            by_product[entry["product"]] = signed
    missing = [p for p in rec.products if p not in by_product]
    if missing:
        raise PurchaseError("no_entry", f"the vendor at {vendor} shows no catalogue entry signed with the key it sold "
                            f"{', '.join(missing)} under: without it the broker cannot judge")  # fmt: skip
    async with _Link(broker or rec.broker, "broker") as b:
        _, got = await b.ask(fr.COMPLAINT, fr.VERDICT, poid=rec.poid, products=rec.products,
                             entries=[by_product[p] for p in rec.products], contents=contents,
                             refund_to=refund_to)  # fmt: skip
    bill = sm.decode(sm.BILL, sm.signed(rec.bill, "bill").content, "bill")
    refund = sm.Price(sm.Price.of(bill["price"]).currency, got["refund"]) if got["refund"] else None
    return Verdict(rec.poid, list(rec.products), bool(got["upheld"]), str(got["why"]), refund)
