"""A SPEED vendor's signed catalogue entry: the product's id, list price and content hash (DESIGN.md section 6).

The vendor signs each entry (CMS SignedData, with its certificate), so a customer who received something else
than the content the vendor committed to can prove it to the broker (paper 5.7, complaints): the entry says
which content the product id stands for, the receipt gives the key, the bill the product hash.
"""

from __future__ import annotations

from typing import Any

from cardnet.protocols.speed import messages as sm
from cardnet.wire import Bytes, Field, Nested, Schema, Text, UInt

ENTRY = Schema(
    "speed.catalogue_entry",
    [
        Field(0, "product", Text(sm.MAX_PRODUCT_ID)),
        Field(1, "price", Nested(sm.PRICE)),
        Field(2, "content_hash", Bytes(32, 32)),  # SHA-256 of the product's plaintext
        Field(3, "size", UInt(sm.MAX_PRODUCT_BYTES)),
        Field(4, "vendor_id", Bytes(sm.VENDOR_ID_BYTES, sm.VENDOR_ID_BYTES)),
    ],
)


def entry(product: str, price: sm.Price, content: bytes, vid: bytes) -> bytes:
    """The entry's content for the vendor to sign."""
    return ENTRY.encode(
        {"product": product, "price": price.fields(), "content_hash": sm.content_hash(content),
         "size": len(content), "vendor_id": vid}
    )  # fmt: skip


def read(signed_entry: bytes, vendor_cert: bytes) -> dict[str, Any]:
    """An entry signed by ``vendor_cert``'s key (its chain is the caller's to check)."""
    return sm.decode(ENTRY, sm.signed(signed_entry, "catalogue entry", cert_der=vendor_cert).content, "catalogue entry")
