"""SPEED's purchase messages (paper section 4.2 normal mode, 4.3 aggressive mode), sans-I/O.

Every message's *content* is a deterministic CBOR map with one-byte keys, decoded strictly (only
:class:`~cardnet.wire.DecodeError` or :class:`ProtocolError` comes out of a decoder). The paper's notation maps
onto today's primitives (DESIGN.md section 5):

* ``{m}_{X^-1}`` (signed by X): CMS SignedData (DER, :mod:`cardnet.crypto.cms`) over the content, with X's
  certificate embedded where the receiver may not have it yet;
* ``{m}_X`` (a digital envelope to X): HPKE to X's certified key, with an ``info`` naming the message;
* ``|m|_k`` (symmetric encryption): AES-256-GCM under a 32-byte key with a counter nonce whose 4-byte prefix
  names the message and direction, so no (key, nonce) pair is ever used twice;
* ``|m|^k`` (HMAC): HMAC-SHA256 (32 bytes) under a second 32-byte key, inside the AES-GCM plaintext, over a
  label naming the message, its counter and the content (the paper MACs, then encrypts).

The messages (C customer, V vendor, B broker; sizes in docs/speed.md):

====  ========  ======================  ===================================================================
 1    C -> V    NegotiationRequest      ``{ {NID, SeqN, ProductIDs, [Price], VendorID, EnKey, SignKey, Flag}_C^-1 }_V``
 2    V <-> C   NegotiationStep         ``| NID, SeqN, Price, Flag, [End] |^SignKey_EnKey``
 3    C -> V    Handshake               ``| {NID, Price, VendorID, H(ProductIDs)}_C^-1 |_EnKey``
 4    V -> C    CipheredProductDelivery ``|Product|_K`` (chunks) and ``| {Bill}_V^-1 |_EnKey``
 1'   C -> V    ProductRequest          ``{ {NID, ProductIDs, Price, VendorID}_C^-1 }_V`` (aggressive)
 4'   V -> C    CipheredProductDelivery ``|Product|_K`` and ``{ {Bill}_V^-1 }_C`` (aggressive)
 5    C -> B    PaymentOrder            ``{ {Bill_signed, PaymentMode}_C^-1 }_B``
 a/b  B <-> C   PurseStep               ``| POID, S2 |^BSignKey_BEncKey``, ``| POID, S3 |^BSignKey_BEncKey``
 6    B -> C,V  PurchaseReceipt         ``| {POID, Price, K}_B^-1 |_RecKey``
====  ========  ======================  ===================================================================

``Bill = {AccountNumber, K}_B, H(|Product|_K), H(ProductIDs), PaymentOrderID, Price, RecKey`` (and the chunk
layout of the delivery, so the customer can check every byte before paying, and optionally the vendor's deadline
``pay_by``: the broker refuses the bill after it, :func:`check_pay_by`, so a vendor holding scarce goods for a
bill can release them once it passed). ``PaymentOrderID = VendorID ||
NID``, ``VendorID = SHA-256(vendor's public key)``: unique as long as a vendor never reuses an NID (it keeps a
register and refuses one it has seen).

Several products in one purchase: a request names 1..:data:`MAX_PRODUCTS` product ids; ``H(ProductIDs)`` is
over their list, the price is the total, and the delivery carries the products one after the other (their
sizes are in the bill).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from cardnet.crypto import cms, pki, profile
from cardnet.crypto.errors import CryptoError
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.speed.purse import (
    CURRENCY_BYTES,
    MAX_AMOUNT,
    MAX_MESSAGE_BYTES,
    check_amount,
    check_currency,
)
from cardnet.wire import Bool, Bytes, DecodeError, Field, ListOf, Nested, Schema, Text, UInt
from cardnet.wire.cbor import dumps

# --- sizes and bounds ----------------------------------------------------------------------------------------
NID_BYTES: Final = 8  # the paper's 4 bytes would collide at a busy vendor after ~65,000 negotiations
VENDOR_ID_BYTES: Final = 32  # SHA-256 of the vendor's public key
POID_BYTES: Final = VENDOR_ID_BYTES + NID_BYTES  # 40
KEY_BYTES: Final = profile.AEAD_KEY_BYTES  # EnKey, SignKey, K, RecKey, BEncKey, BSignKey: 32 bytes each
MAC_BYTES: Final = profile.HMAC_BYTES
MAX_PRODUCT_ID: Final = 256  # characters of one ProductID (code and description)
MAX_PRODUCTS: Final = 16  # products in one purchase
MAX_SEQN: Final = 255  # negotiation messages in one negotiation (a strategy that needs more is broken)
MAX_ACCOUNT: Final = 64  # characters of an account number
CHUNK_BYTES: Final = 256 * 1024  # plaintext bytes in one delivery chunk (the last may be shorter)
MAX_PRODUCT_BYTES: Final = 2**40  # one product (1 TiB): far beyond the paper's 5 MB; chunked, never in one frame
MAX_CHUNKS: Final = MAX_PRODUCT_BYTES // 1024
TAG_BYTES: Final = 16
MAX_COMPLAINT_BYTES: Final = 12 * 1024 * 1024  # the deciphered products one complaint may carry (one frame)
MAX_SIGNED: Final = 8 * 1024  # one signed content with its embedded certificate
MAX_SEALED_SIGNED: Final = MAX_SIGNED + profile.HPKE_OVERHEAD
MAX_PAY_BY: Final = 2**40  # a bill's deadline, Unix seconds (year 36812)

MODES: Final = ("normal", "aggressive")
PAYMENT_MODES: Final = ("purse", "account")

# HPKE infos and AES-GCM nonce prefixes (4 bytes): one per message and direction
INFO_REQUEST: Final = b"cardnet/speed/v1/negotiation-request"
INFO_PRODUCT_REQUEST: Final = b"cardnet/speed/v1/product-request"
INFO_BILL_SECRET: Final = b"cardnet/speed/v1/bill-secret"
INFO_BILL: Final = b"cardnet/speed/v1/bill"
INFO_ORDER: Final = b"cardnet/speed/v1/payment-order"
NONCE_C_STEP: Final = b"NS>V"  # customer's negotiation steps, counter = SeqN
NONCE_V_STEP: Final = b"NS>C"  # vendor's negotiation steps
NONCE_HANDSHAKE: Final = b"HSK>"
NONCE_BILL: Final = b"BIL>"
NONCE_PRODUCT: Final = b"PRD>"  # under K: counter = product index << 32 | chunk index
NONCE_B_PURSE: Final = b"PS>C"  # broker -> customer (a), counter 0
NONCE_C_PURSE: Final = b"PS>B"  # customer -> broker (b), counter 0
NONCE_RECEIPT: Final = b"RCP>"
_MAC_LABEL: Final = b"cardnet/speed/v1/mac/"
_PRODUCTS_LABEL: Final = b"cardnet/speed/v1/products\x00"


def _fail(reason: str, message: str) -> ProtocolError:
    return ProtocolError(reason, message)


# --- values ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, order=True)
class Price:
    """An amount of minor units of an ISO 4217 currency (the paper's "value and currency" string)."""

    currency: str
    amount: int

    def __post_init__(self) -> None:
        check_currency(self.currency)
        check_amount(self.amount)

    def fields(self) -> dict[str, Any]:
        return {"currency": self.currency, "amount": self.amount}

    @classmethod
    def of(cls, f: dict[str, Any]) -> Price:
        return cls(f["currency"], f["amount"])

    def __str__(self) -> str:
        return format_amount(self.amount, self.currency)


# ISO 4217's minor unit of the currencies whose minor unit is not the hundredth (the list's "minor unit" column);
# every other code, and a code not on the list, counts in hundredths.
_DIGITS = {
    **dict.fromkeys(("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND", "VUV",
                     "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}  # fmt: skip


def minor_digits(currency: str) -> int:
    """How many decimals ``currency``'s minor unit is (ISO 4217): 2 for EUR (cents), 0 for JPY, 3 for KWD."""
    return _DIGITS.get(currency, 2)


def format_amount(minor: int, currency: str) -> str:
    """``minor`` units of ``currency`` in words: ``2.50 EUR`` for 250, ``250 JPY`` for 250, ``-0.10 EUR`` for -10
    (exact: integers only, no float near 2^53)."""
    sign, minor = ("-", -minor) if minor < 0 else ("", minor)
    digits = minor_digits(currency)
    if digits == 0:
        return f"{sign}{minor} {currency}"
    whole, frac = divmod(minor, 10**digits)
    return f"{sign}{whole}.{frac:0{digits}d} {currency}"


def parse_price(text: str) -> Price:
    """``"2.50 EUR"`` or ``"EUR 2.50"`` -> :class:`Price`, in the currency's minor units (ISO 4217: cents for EUR,
    yen for JPY: ``"250 JPY"``; :func:`minor_digits`)."""
    parts = text.split()
    if len(parts) != 2:
        raise _fail("bad_price", f"a price is an amount and an ISO 4217 code, like '2.50 EUR', got {text!r}")
    a, b = parts
    cur, num = (a, b) if a[:1].isalpha() else (b, a)
    cur = check_currency(cur)
    digits = minor_digits(cur)
    if num.startswith("-"):
        raise _fail("bad_amount", f"an amount is more than zero, got {num!r:.40}")
    if "," in num:  # a decimal comma (2,50) or a thousands separator (1,000): either is read wrongly if guessed
        raise _fail("bad_price", f"write an amount with digits and a decimal point only, like 2.50 {cur} or 1000.00 "
                    f"{cur} (no comma), got {num!r:.40}")  # fmt: skip
    whole, _, frac = num.partition(".")
    if not _digits(whole) or not (frac == "" or (_digits(frac) and len(frac) <= digits)):
        like = format_amount(250 * 10 ** max(digits - 2, 0), cur)
        most = f"at most {digits} decimals" if digits else "no decimals"
        raise _fail("bad_price", f"an amount of {cur} has {most}, like {like}, got {num!r:.40}")
    whole = whole.lstrip("0") or "0"
    if len(whole) > len(str(MAX_AMOUNT)):  # (and int() refuses strings of over 4300 digits)
        raise _fail("bad_amount", f"an amount is at most {MAX_AMOUNT} minor units, got {num:.40}...")
    return Price(cur, int(whole) * 10**digits + int(frac.ljust(digits, "0") or "0"))


def _digits(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also takes ``²`` and other scripts' digits, which int() may refuse."""
    return text.isascii() and text.isdigit()


@functools.lru_cache(maxsize=1024)
def _public_key(cert_der: bytes) -> profile.PublicKey:
    """The key of a certificate (parsed once: a party meets the same few certificates again and again)."""
    try:
        key = pki.cert_from_der(cert_der).public_key()
    except Exception as exc:  # a certificate that does not parse
        raise _fail("bad_certificate", f"the certificate does not parse: {exc}") from None
    return key  # type: ignore[return-value]


def vendor_id(cert_der: bytes) -> bytes:
    """VendorID: SHA-256 of the (uncompressed SEC1) public key in the vendor's certificate."""
    return _vendor_id(bytes(cert_der))


@functools.lru_cache(maxsize=1024)
def _vendor_id(cert_der: bytes) -> bytes:
    return profile.sha256(profile.public_bytes(_public_key(cert_der)))


def make_poid(vid: bytes, nid: bytes) -> bytes:
    """PaymentOrderID = VendorID || NID (40 bytes)."""
    if len(vid) != VENDOR_ID_BYTES or len(nid) != NID_BYTES:
        raise _fail("bad_poid", f"a PaymentOrderID is a {VENDOR_ID_BYTES}-byte VendorID and a {NID_BYTES}-byte NID")
    return vid + nid


def split_poid(poid: bytes) -> tuple[bytes, bytes]:
    if len(poid) != POID_BYTES:
        raise _fail("bad_poid", f"a PaymentOrderID is {POID_BYTES} bytes, got {len(poid)}")
    return poid[:VENDOR_ID_BYTES], poid[VENDOR_ID_BYTES:]


def check_products(products: object) -> list[str]:
    if not isinstance(products, list) or not 1 <= len(products) <= MAX_PRODUCTS:
        raise _fail("bad_products", f"a purchase names 1..{MAX_PRODUCTS} product ids")
    for p in products:
        if not isinstance(p, str) or not 1 <= len(p.encode()) <= MAX_PRODUCT_ID or not p.isprintable():
            raise _fail("bad_products", f"a product id is 1..{MAX_PRODUCT_ID} bytes of printable text, got {p!r:.80}")
    return products


def products_hash(products: Sequence[str]) -> bytes:
    """H(ProductIDs): what the bill carries instead of the descriptions (the broker never sees them)."""
    return profile.sha256(_PRODUCTS_LABEL + dumps(check_products(list(products))))


def content_hash(content: bytes) -> bytes:
    """SHA-256 of a product's plaintext, as a catalogue entry commits to it."""
    return profile.sha256(content)


# --- content schemas -----------------------------------------------------------------------------------------
PRICE = Schema("speed.price", [Field(0, "currency", Text(CURRENCY_BYTES)), Field(1, "amount", UInt(MAX_AMOUNT))])
_PRICE = PRICE
_NID = Bytes(NID_BYTES, NID_BYTES)
_KEY = Bytes(KEY_BYTES, KEY_BYTES)
_HASH = Bytes(32, 32)
_PRODUCTS = ListOf(Text(MAX_PRODUCT_ID), MAX_PRODUCTS)

NEGOTIATION_REQUEST = Schema(
    "speed.negotiation_request",
    [
        Field(0, "nid", _NID),
        Field(1, "seqn", UInt(MAX_SEQN)),
        Field(2, "products", _PRODUCTS),
        Field(3, "price", Nested(_PRICE), optional=True),
        Field(4, "vendor_id", Bytes(VENDOR_ID_BYTES, VENDOR_ID_BYTES)),
        Field(5, "enkey", _KEY),
        Field(6, "signkey", _KEY),
        Field(7, "last", Bool()),
    ],
)
PRODUCT_REQUEST = Schema(
    "speed.product_request",
    [
        Field(0, "nid", _NID),
        Field(2, "products", _PRODUCTS),
        Field(3, "price", Nested(_PRICE)),
        Field(4, "vendor_id", Bytes(VENDOR_ID_BYTES, VENDOR_ID_BYTES)),
    ],
)
NEGOTIATION_STEP = Schema(
    "speed.negotiation_step",
    [
        Field(0, "nid", _NID),
        Field(1, "seqn", UInt(MAX_SEQN)),
        Field(3, "price", Nested(_PRICE)),
        Field(7, "last", Bool()),
        Field(8, "end", Bool(), optional=True),  # the sender breaks off: no agreement (the paper closes)
    ],
)
HANDSHAKE = Schema(
    "speed.handshake",
    [
        Field(0, "nid", _NID),
        Field(3, "price", Nested(_PRICE)),
        Field(4, "vendor_id", Bytes(VENDOR_ID_BYTES, VENDOR_ID_BYTES)),
        Field(9, "hp", _HASH),
    ],
)
BILL_SECRET = Schema("speed.bill_secret", [Field(0, "account", Text(MAX_ACCOUNT)), Field(1, "k", _KEY)])
SEALED_BILL_SECRET_MAX = 2 + MAX_ACCOUNT * 4 + 2 + 2 + KEY_BYTES + 8 + profile.HPKE_OVERHEAD
BILL = Schema(
    "speed.bill",
    [
        Field(0, "secret", Bytes(SEALED_BILL_SECRET_MAX, profile.HPKE_OVERHEAD + 1)),  # {AccountNumber, K}_B
        Field(1, "hc", _HASH),  # H(|Product|_K): every ciphertext chunk, in order
        Field(2, "hp", _HASH),  # H(ProductIDs)
        Field(3, "poid", Bytes(POID_BYTES, POID_BYTES)),
        Field(4, "price", Nested(_PRICE)),
        Field(5, "rec_key", _KEY),
        Field(6, "sizes", ListOf(UInt(MAX_PRODUCT_BYTES), MAX_PRODUCTS)),  # plaintext bytes of each product
        Field(7, "chunk", UInt(MAX_PRODUCT_BYTES)),  # plaintext bytes per chunk
        Field(8, "mode", Text(16)),
        # the vendor's deadline (Unix seconds): the broker pays the bill only until then (absent: no deadline)
        Field(9, "pay_by", UInt(MAX_PAY_BY), optional=True),
    ],
)
PAYMENT_MODE = Schema(
    "speed.payment_mode",
    [
        Field(0, "kind", Text(8)),
        Field(1, "benc", _KEY, optional=True),
        Field(2, "bsign", _KEY, optional=True),
        Field(3, "s1", Bytes(MAX_MESSAGE_BYTES, 1), optional=True),
        Field(4, "account", Text(MAX_ACCOUNT), optional=True),
    ],
)
PAYMENT_ORDER = Schema(
    "speed.payment_order",
    [Field(0, "bill", Bytes(MAX_SIGNED, 1)), Field(1, "mode", Nested(PAYMENT_MODE))],
)
PURSE_STEP = Schema(
    "speed.purse_step",
    [Field(0, "poid", Bytes(POID_BYTES, POID_BYTES)), Field(1, "s", Bytes(MAX_MESSAGE_BYTES, 1))],
)
RECEIPT = Schema(
    "speed.receipt",
    [Field(0, "poid", Bytes(POID_BYTES, POID_BYTES)), Field(1, "price", Nested(_PRICE)), Field(2, "k", _KEY)],
)


RECEIPTS_ASK = Schema(  # signed by a vendor: its own receipts at one broker, from a log position, now
    "speed.receipts_ask",
    [
        Field(0, "after", UInt(2**63 - 1)),  # a log position (SQLite: signed 64-bit)
        Field(1, "broker", Bytes(VENDOR_ID_BYTES, VENDOR_ID_BYTES)),  # the broker's key (SHA-256, as a VendorID)
        Field(2, "at", UInt()),  # when the vendor asked (Unix s): the broker takes it within RECEIPTS_ASK_WINDOW_S
    ],
)
RECEIPTS_ASK_WINDOW_S: Final = 300


def decode(schema: Schema, raw: bytes, what: str) -> dict[str, Any]:
    """``schema``'s strict decoding of ``raw``: a :class:`DecodeError` says what is wrong with ``what``."""
    try:
        return dict(schema.decode(raw))
    except DecodeError as exc:
        raise DecodeError(exc.reason, f"{what}: {exc}") from None


# --- envelopes -------------------------------------------------------------------------------------------------


def _nonce_counter(counter: int) -> int:
    if not 0 <= counter < 2**64:
        raise _fail("bad_counter", "a message counter is 0..2^64-1")
    return counter


def sym_seal(enc_key: bytes, prefix: bytes, counter: int, content: bytes, *, sign_key: bytes | None = None) -> bytes:
    """``|content|_enc_key`` (AES-256-GCM, nonce ``prefix || counter``), with ``|content|^sign_key`` inside
    when ``sign_key`` is given (HMAC-SHA256 over a label, the prefix, the counter and the content)."""
    plain = content
    if sign_key is not None:
        plain = content + _mac(sign_key, prefix, counter, content)
    return profile.CounterAead(enc_key, prefix).seal(_nonce_counter(counter), plain, prefix)


def sym_open(
    enc_key: bytes, prefix: bytes, counter: int, sealed: bytes, *, sign_key: bytes | None = None, what: str
) -> bytes:
    """The content of :func:`sym_seal`'s ``sealed``, or ``ProtocolError("bad_tag")`` naming ``what``."""
    try:
        plain = profile.CounterAead(enc_key, prefix).open(_nonce_counter(counter), sealed, prefix)
    except CryptoError:
        raise _fail("bad_tag", f"the {what} does not open under its key (forged, replayed or out of order)") from None
    if sign_key is None:
        return plain
    if len(plain) < MAC_BYTES:
        raise _fail("bad_mac", f"the {what} has no MAC")
    content, tag = plain[:-MAC_BYTES], plain[-MAC_BYTES:]
    try:
        profile.hmac_verify(sign_key, _MAC_LABEL + prefix + counter.to_bytes(8, "big") + content, tag)
    except CryptoError:
        raise _fail("bad_mac", f"the {what}'s MAC is wrong") from None
    return content


def _mac(sign_key: bytes, prefix: bytes, counter: int, content: bytes) -> bytes:
    return profile.hmac_sha256(sign_key, _MAC_LABEL + prefix + counter.to_bytes(8, "big") + content)


def seal_to(cert_der: bytes, content: bytes, info: bytes) -> bytes:
    """``{content}_X``: HPKE to the key in X's certificate."""
    return profile.hpke_seal(_public_key(bytes(cert_der)), content, info)


def open_with(opener: Callable[[bytes, bytes], bytes], sealed: bytes, info: bytes, what: str) -> bytes:
    """Open an envelope with ``opener(sealed, info)`` (a key holder's hpke_open); ``ProtocolError`` if it fails."""
    try:
        return opener(sealed, info)
    except CryptoError:
        raise _fail("bad_envelope", f"the {what} does not open with this party's key (sealed to another?)") from None


def signed(der: bytes, what: str, *, cert_der: bytes | None = None) -> cms.Signed:
    """Check a CMS SignedData's signature (not the signer's chain: the caller does that with pki)."""
    try:
        return cms.verify(der, cert_der=cert_der)
    except CryptoError as exc:
        raise _fail("bad_signature", f"the {what} is not validly signed: {exc}") from None


# --- delivery: the product under K, in chunks -------------------------------------------------------------------


def chunk_count(size: int, chunk: int = CHUNK_BYTES) -> int:
    return max(1, -(-size // chunk))


def _product_counter(product: int, index: int) -> int:
    return (product << 32) | index


def encrypt_chunks(k: bytes, product: int, data: bytes, chunk: int = CHUNK_BYTES) -> Iterator[bytes]:
    """``|Product|_K`` of product number ``product`` (0..15), one ciphertext per plaintext chunk."""
    aead = profile.CounterAead(k, NONCE_PRODUCT)
    if chunk_count(len(data), chunk) >= 2**32:  # the chunk number is the low 32 bits of the nonce counter
        raise _fail("too_large", "a product is at most 2^32 chunks")
    for i in range(chunk_count(len(data), chunk)):
        yield aead.seal(_product_counter(product, i), data[i * chunk : (i + 1) * chunk], NONCE_PRODUCT)


def decrypt_chunks(k: bytes, product: int, chunks: Iterable[bytes]) -> bytes:
    aead = profile.CounterAead(k, NONCE_PRODUCT)
    out = []
    for i, c in enumerate(chunks):
        try:
            out.append(aead.open(_product_counter(product, i), c, NONCE_PRODUCT))
        except CryptoError:
            raise _fail("bad_key", f"chunk {i} of product {product} does not open under the receipt's key") from None
    return b"".join(out)


class DeliveryHash:
    """H(|Product|_K): SHA-256 over every ciphertext chunk of every product, in order, each with its length."""

    def __init__(self) -> None:
        self._h = hashlib.sha256(b"cardnet/speed/v1/delivery\x00")

    def update(self, chunk: bytes) -> None:
        self._h.update(len(chunk).to_bytes(8, "big"))
        self._h.update(chunk)

    def digest(self) -> bytes:
        return self._h.digest()


def check_layout(sizes: list[int], chunk: int, counts: list[int]) -> None:
    """The chunks received (``counts`` per product) are what the bill's ``sizes`` and ``chunk`` say."""
    if chunk < 1:  # the bill's, so the vendor's: refused, not divided by
        raise _fail("bad_delivery", "the bill's chunk size is 0: a delivery is chunks of at least one byte")
    if len(counts) != len(sizes) or any(n != chunk_count(s, chunk) for s, n in zip(sizes, counts, strict=True)):
        raise _fail("bad_delivery", "the delivery's chunks do not match the bill's product sizes")


def ciphertext_size(size: int, chunk: int = CHUNK_BYTES) -> int:
    return size + TAG_BYTES * chunk_count(size, chunk)


# --- the checks each party makes -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Agreement:
    """What the customer agreed to: the card keeps it from its Handshake (or ProductRequest) to its payment."""

    nid: bytes
    vendor_id: bytes
    hp: bytes
    price: Price
    mode: str
    count: int  # products in the purchase

    @property
    def poid(self) -> bytes:
        return make_poid(self.vendor_id, self.nid)


def pay_by(now: float, within_s: float | None) -> int | None:
    """The deadline a vendor writes into a bill made at ``now`` to be paid within ``within_s`` seconds (None: no
    deadline), in whole Unix seconds rounded up."""
    if within_s is None:
        return None
    return min(MAX_PAY_BY, max(0, -int(-(now + within_s) // 1)))


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def check_pay_by(bill: dict[str, Any], now: float) -> None:
    """A bill past its deadline (``pay_by``, Unix seconds, inclusive) is refused ``bill_expired``; one without a
    deadline is payable at any time."""
    deadline = bill.get("pay_by")
    if deadline is not None and now > deadline:
        raise _fail(
            "bill_expired",
            f"the bill had to be paid by {_utc(deadline)} (the vendor's deadline), it is now {_utc(now)}: nothing "
            "was paid and the vendor may sell the goods again; buy again for a new bill",
        )


def check_bill(bill: dict[str, Any], agreement: Agreement) -> None:
    """A bill is payable only if it is the one agreed: PaymentOrderID, product hash, price (paper 5.6)."""
    if bill["poid"] != agreement.poid:
        raise _fail("wrong_bill", "the bill's PaymentOrderID is not this negotiation's (another vendor or NID)")
    if bill["hp"] != agreement.hp:
        raise _fail("wrong_product", "the bill is for other products than the ones agreed: refused before paying")
    if Price.of(bill["price"]) != agreement.price:
        raise _fail(
            "wrong_price", f"the bill asks {Price.of(bill['price'])}, the agreed price is {agreement.price}: refused"
        )
    if bill["mode"] != agreement.mode:
        raise _fail("wrong_bill", f"the bill is for a {bill['mode']} purchase, this one is {agreement.mode}")
    if len(bill["sizes"]) != agreement.count:
        raise _fail("wrong_bill", "the bill's product count is not the number of products agreed")
