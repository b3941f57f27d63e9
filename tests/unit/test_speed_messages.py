"""SPEED's purchase messages, the pure parts: prices, identifiers, envelopes, the chunked delivery, the bill check.

The sizes at the end are the encoded contents at typical values: a change of schema that makes a message
noticeably larger fails here first.
"""

from __future__ import annotations

from typing import Any

import pytest

from cardnet.crypto import cms, pki, profile
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.speed import messages as sm
from cardnet.protocols.speed.purse import MAX_AMOUNT
from cardnet.wire import DecodeError, Schema, Uid
from cardnet.wire.cbor import dumps
from conftest import NOW

K1, K2, K3 = b"\x11" * 32, b"\x22" * 32, b"\x33" * 32
NID = bytes(range(8))
VID = b"\xaa" * 32
PRODUCTS = ["song-0017 Blue in Green (Kind of Blue, 1959)", "song-0018 Flamenco Sketches"]
EUR250 = sm.Price("EUR", 250)
SMALL_CHUNK = 64  # plaintext bytes per chunk in the delivery tests (the real one is 256 KiB)


def service(ca: pki.CertificateAuthority, n: int = 1) -> tuple[profile.PrivateKey, bytes]:
    key = profile.generate_private_key()
    cert = ca.issue(pki.Role.SERVICE, Uid(bytes([0x50 + n]) * 12, 0), key.public_key(), now=NOW)
    return key, pki.cert_to_der(cert)


def reason_of(fn: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ProtocolError) as e:
        fn(*args, **kwargs)
    return e.value.reason


# --- prices -----------------------------------------------------------------------------------------------------


def test_a_price_is_a_currency_and_minor_units() -> None:
    assert str(EUR250) == "2.50 EUR"
    assert str(sm.Price("JPY", 1)) == "1 JPY"  # ISO 4217: the yen has no minor unit (it was "0.01 JPY")
    assert str(sm.Price("KWD", 1)) == "0.001 KWD"  # the dinar's is the thousandth
    assert sm.Price.of(EUR250.fields()) == EUR250
    assert EUR250.fields() == {"currency": "EUR", "amount": 250}
    assert sm.Price("EUR", 100) < EUR250 < sm.Price("EUR", 251)
    assert sm.Price("EUR", MAX_AMOUNT).amount == 2**53
    assert str(sm.Price("EUR", 5)) == "0.05 EUR"


def test_a_price_prints_exactly_up_to_the_largest_amount() -> None:
    """Minor units are integers: no float on the way (at 2^53 a float is a 64th of a unit apart)."""
    assert str(sm.Price("EUR", 9007199254738993)) == "90071992547389.93 EUR"
    assert str(sm.Price("EUR", MAX_AMOUNT)) == "90071992547409.92 EUR"
    for amount in [*range(1, 1000), *range(MAX_AMOUNT - 1000, MAX_AMOUNT + 1)]:
        for currency in ("USD", "JPY", "KWD", "CLF"):
            assert sm.parse_price(str(sm.Price(currency, amount))).amount == amount


@pytest.mark.parametrize(
    ("currency", "amount", "reason"),
    [
        ("EUR", 0, "bad_amount"),
        ("EUR", -1, "bad_amount"),
        ("EUR", MAX_AMOUNT + 1, "bad_amount"),
        ("EUR", True, "bad_amount"),
        ("eur", 1, "bad_currency"),
        ("EU", 1, "bad_currency"),
        ("EURO", 1, "bad_currency"),
        ("E1R", 1, "bad_currency"),
        ("ÉUR", 1, "bad_currency"),
    ],
)
def test_a_price_refuses_a_bad_currency_or_amount(currency: str, amount: int, reason: str) -> None:
    assert reason_of(sm.Price, currency, amount) == reason


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("2.50 EUR", sm.Price("EUR", 250)),
        ("EUR 2.50", sm.Price("EUR", 250)),
        ("2.5 EUR", sm.Price("EUR", 250)),
        ("2 EUR", sm.Price("EUR", 200)),
        ("0.01 USD", sm.Price("USD", 1)),
        ("0.10 USD", sm.Price("USD", 10)),
        ("  3.07\tGBP  ", sm.Price("GBP", 307)),
        ("1234567.89 CHF", sm.Price("CHF", 123456789)),
        ("90071992547409.92 EUR", sm.Price("EUR", 2**53)),
        ("250 JPY", sm.Price("JPY", 250)),  # ISO 4217's minor unit: the yen has none, the dinar the thousandth
        ("JPY 9007199254740992", sm.Price("JPY", 2**53)),
        ("1.234 KWD", sm.Price("KWD", 1234)),
        ("1.2 KWD", sm.Price("KWD", 1200)),
    ],
)
def test_parse_price_reads_amount_and_code_in_either_order(text: str, want: sm.Price) -> None:
    assert sm.parse_price(text) == want
    assert sm.parse_price(str(want)) == want  # str() is parse_price's inverse


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "bad_price"),
        ("2.50", "bad_price"),
        ("EUR", "bad_price"),
        ("2.50 EUR now", "bad_price"),
        ("2.505 EUR", "bad_price"),
        ("2,50 EUR", "bad_price"),
        ("-2.50 EUR", "bad_amount"),
        ("2.50 JPY", "bad_price"),  # the yen has no minor unit (ISO 4217)
        ("1.2345 KWD", "bad_price"),  # the dinar's is the thousandth
        (".50 EUR", "bad_price"),
        ("1e3 EUR", "bad_price"),
        ("2.5x EUR", "bad_price"),
        ("EUR EUR", "bad_price"),
        ("² EUR", "bad_price"),  # a digit to str.isdigit, not to int()
        ("\u0663.\u0665\u0660 EUR", "bad_price"),  # Arabic-Indic digits: an amount is written in ASCII digits
        pytest.param("1" * 5000 + " EUR", "bad_amount", id="5000-digits"),  # longer than int() parses
        ("2.50 eur", "bad_currency"),
        ("2.50 €", "bad_currency"),
        ("2.50 2.50", "bad_currency"),
        ("0.00 EUR", "bad_amount"),
        ("0 EUR", "bad_amount"),
        ("90071992547409.93 EUR", "bad_amount"),
    ],
)
def test_parse_price_refuses_what_is_not_a_price(text: str, reason: str) -> None:
    assert reason_of(sm.parse_price, text) == reason


# --- identifiers and the products' hash ---------------------------------------------------------------------------


def test_the_products_hash_depends_on_every_product_and_their_order() -> None:
    h = sm.products_hash(PRODUCTS)
    assert len(h) == 32
    assert h == sm.products_hash(tuple(PRODUCTS))  # a function of the list's content only
    assert h == profile.sha256(b"cardnet/speed/v1/products\x00" + dumps(PRODUCTS))
    others = [
        list(reversed(PRODUCTS)),
        PRODUCTS[:1],
        [*PRODUCTS, "song-0019"],
        [PRODUCTS[0], PRODUCTS[1] + " "],
        [PRODUCTS[0] + PRODUCTS[1]],  # the boundary between two ids counts
    ]
    hashes = {sm.products_hash(p) for p in others}
    assert len(hashes) == len(others) and h not in hashes


@pytest.mark.parametrize(
    "products",
    [[], ["x"] * (sm.MAX_PRODUCTS + 1), [""], ["a\nb"], ["x" * (sm.MAX_PRODUCT_ID + 1)], ["ok", "tab\there"]],
    ids=["none", "too_many", "empty_id", "newline", "too_long", "tab"],
)
def test_a_purchase_names_one_to_sixteen_printable_product_ids(products: list[str]) -> None:
    assert reason_of(sm.products_hash, products) == "bad_products"
    assert reason_of(sm.check_products, products) == "bad_products"


def test_check_products_accepts_the_limits() -> None:
    most = [f"p{i}" for i in range(sm.MAX_PRODUCTS)]
    assert sm.check_products(most) == most
    assert sm.check_products(["x" * sm.MAX_PRODUCT_ID]) == ["x" * sm.MAX_PRODUCT_ID]
    assert reason_of(sm.check_products, "not a list") == "bad_products"
    assert reason_of(sm.check_products, [1]) == "bad_products"


def test_a_payment_order_id_is_the_vendor_id_then_the_nid() -> None:
    poid = sm.make_poid(VID, NID)
    assert poid == VID + NID and len(poid) == sm.POID_BYTES == 40
    assert sm.split_poid(poid) == (VID, NID)
    agreement = sm.Agreement(NID, VID, b"h" * 32, EUR250, "normal", 1)
    assert agreement.poid == poid
    for vid, nid in ((VID[:-1], NID), (VID, NID + b"\0"), (b"", b""), (VID + NID, b"")):
        assert reason_of(sm.make_poid, vid, nid) == "bad_poid"
    for bad in (poid[:-1], poid + b"\0", b""):
        assert reason_of(sm.split_poid, bad) == "bad_poid"


def test_the_vendor_id_is_the_hash_of_the_certified_key(ca: pki.CertificateAuthority) -> None:
    key, cert = service(ca, 1)
    _, other = service(ca, 2)
    assert sm.vendor_id(cert) == profile.sha256(profile.public_bytes(key.public_key()))
    assert sm.vendor_id(other) != sm.vendor_id(cert)
    again = pki.cert_to_der(ca.issue(pki.Role.SERVICE, Uid(b"\x60" * 12, 0), key.public_key(), now=NOW))
    assert sm.vendor_id(again) == sm.vendor_id(cert)  # the key's, not the certificate's
    assert reason_of(sm.vendor_id, b"not a certificate") == "bad_certificate"
    assert reason_of(sm.vendor_id, cert[:-1]) == "bad_certificate"


# --- symmetric envelopes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sign_key", [None, K2], ids=["aead", "aead+hmac"])
@pytest.mark.parametrize("content", [b"", b"x", b"step" * 100])
def test_sym_seal_and_open_round_trip(sign_key: bytes | None, content: bytes) -> None:
    sealed = sm.sym_seal(K1, sm.NONCE_V_STEP, 7, content, sign_key=sign_key)
    extra = 0 if sign_key is None else sm.MAC_BYTES
    assert len(sealed) == len(content) + sm.TAG_BYTES + extra
    assert sm.sym_open(K1, sm.NONCE_V_STEP, 7, sealed, sign_key=sign_key, what="step") == content
    # deterministic under one (key, prefix, counter): the counter is what keeps nonces unique
    assert sm.sym_seal(K1, sm.NONCE_V_STEP, 7, content, sign_key=sign_key) == sealed
    assert sm.sym_seal(K1, sm.NONCE_V_STEP, 8, content, sign_key=sign_key) != sealed


def _flipped(sealed: bytes, i: int) -> bytes:
    b = bytearray(sealed)
    b[i] ^= 0x01
    return bytes(b)


def test_every_tampered_envelope_is_refused() -> None:
    content = b"NID, SeqN, Price, Flag"
    sealed = sm.sym_seal(K1, sm.NONCE_V_STEP, 3, content, sign_key=K2)

    def opened(key: bytes = K1, prefix: bytes = sm.NONCE_V_STEP, counter: int = 3, data: bytes = sealed,
               sign_key: bytes | None = K2) -> str:  # fmt: skip
        return reason_of(sm.sym_open, key, prefix, counter, data, sign_key=sign_key, what="step")

    assert opened(key=K3) == "bad_tag"
    assert opened(key=K1[:16]) == "bad_tag"  # not even an AES-256 key
    assert opened(prefix=sm.NONCE_C_STEP) == "bad_tag"  # reflected: the other direction's prefix
    assert opened(prefix=sm.NONCE_HANDSHAKE) == "bad_tag"  # another message's
    assert opened(counter=2) == "bad_tag"
    assert opened(counter=4) == "bad_tag"
    assert opened(counter=3 + 2**32) == "bad_tag"
    for i in range(len(sealed)):
        assert opened(data=_flipped(sealed, i)) == "bad_tag", i
    assert opened(data=sealed[:-1]) == "bad_tag"
    assert opened(data=sealed + b"\0") == "bad_tag"
    assert opened(data=b"") == "bad_tag"
    assert opened(sign_key=K3) == "bad_mac"
    assert opened(counter=-1) == "bad_counter"
    assert opened(counter=2**64) == "bad_counter"
    # sealed without a MAC, opened as one that has it: refused, whatever its length
    assert opened(data=sm.sym_seal(K1, sm.NONCE_V_STEP, 3, b"short")) == "bad_mac"
    assert opened(data=sm.sym_seal(K1, sm.NONCE_V_STEP, 3, content + b"x" * 40)) == "bad_mac"
    assert sm.sym_open(K1, sm.NONCE_V_STEP, 3, sealed, sign_key=K2, what="step") == content  # untouched: opens


def test_the_mac_is_over_prefix_counter_and_content() -> None:
    """A MAC made for another counter or prefix, inside an envelope that opens, is still refused."""
    content = b"step"
    for prefix, counter in ((sm.NONCE_V_STEP, 4), (sm.NONCE_C_STEP, 3)):
        mac = profile.hmac_sha256(K2, b"cardnet/speed/v1/mac/" + prefix + counter.to_bytes(8, "big") + content)
        sealed = sm.sym_seal(K1, sm.NONCE_V_STEP, 3, content + mac)
        assert reason_of(sm.sym_open, K1, sm.NONCE_V_STEP, 3, sealed, sign_key=K2, what="step") == "bad_mac"
    mac = profile.hmac_sha256(K2, b"cardnet/speed/v1/mac/" + sm.NONCE_V_STEP + (3).to_bytes(8, "big") + content)
    by_hand = sm.sym_seal(K1, sm.NONCE_V_STEP, 3, content + mac)
    assert sm.sym_seal(K1, sm.NONCE_V_STEP, 3, content, sign_key=K2) == by_hand


# --- public-key envelopes and signatures ----------------------------------------------------------------------------


def test_seal_to_opens_only_with_the_certified_key_and_the_same_info(ca: pki.CertificateAuthority) -> None:
    key, cert = service(ca, 1)
    other, _ = service(ca, 2)
    sealed = sm.seal_to(cert, b"AccountNumber, K", sm.INFO_BILL_SECRET)
    assert len(sealed) == len(b"AccountNumber, K") + profile.HPKE_OVERHEAD

    def opener(k: profile.PrivateKey) -> Any:
        return lambda s, info: profile.hpke_open(k, s, info)

    assert sm.open_with(opener(key), sealed, sm.INFO_BILL_SECRET, "bill secret") == b"AccountNumber, K"
    assert reason_of(sm.open_with, opener(other), sealed, sm.INFO_BILL_SECRET, "bill secret") == "bad_envelope"
    assert reason_of(sm.open_with, opener(key), sealed, sm.INFO_BILL, "bill secret") == "bad_envelope"
    assert reason_of(sm.open_with, opener(key), sealed[:-1], sm.INFO_BILL_SECRET, "x") == "bad_envelope"
    assert reason_of(sm.open_with, opener(key), b"", sm.INFO_BILL_SECRET, "x") == "bad_envelope"


def test_signed_checks_the_signature_and_the_signer(ca: pki.CertificateAuthority) -> None:
    key, cert = service(ca, 1)
    _, other = service(ca, 2)
    der = cms.sign(b"bill", cert, lambda d: profile.sign(key, d))
    got = sm.signed(der, "bill")
    assert (got.content, got.signer_cert_der) == (b"bill", cert)
    assert sm.signed(der, "bill", cert_der=cert).content == b"bill"
    assert reason_of(sm.signed, der, "bill", cert_der=other) == "bad_signature"
    assert reason_of(sm.signed, der.replace(b"bill", b"bilk"), "bill") == "bad_signature"
    assert reason_of(sm.signed, b"\x30\x00", "bill") == "bad_signature"


# --- the delivery: |Product|_K in chunks ----------------------------------------------------------------------------


def _deliver(data: bytes, product: int = 0, k: bytes = K1) -> list[bytes]:
    return list(sm.encrypt_chunks(k, product, data, SMALL_CHUNK))


def _hash(chunks: list[bytes]) -> bytes:
    h = sm.DeliveryHash()
    for c in chunks:
        h.update(c)
    return h.digest()


@pytest.mark.parametrize("size", [0, 1, SMALL_CHUNK - 1, SMALL_CHUNK, SMALL_CHUNK + 1, 3 * SMALL_CHUNK])
def test_chunked_encryption_round_trips(size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    chunks = _deliver(data, product=2)
    assert len(chunks) == sm.chunk_count(size, SMALL_CHUNK) == max(1, -(-size // SMALL_CHUNK))
    assert sum(map(len, chunks)) == sm.ciphertext_size(size, SMALL_CHUNK)
    assert all(len(c) <= SMALL_CHUNK + sm.TAG_BYTES for c in chunks)
    assert sm.decrypt_chunks(K1, 2, chunks) == data
    sm.check_layout([size], SMALL_CHUNK, [len(chunks)])
    assert _hash(chunks) == _hash(_deliver(data, product=2))  # deterministic: the vendor hashes, then sends


def test_the_default_chunk_is_256_kib() -> None:
    data = b"\x5a" * (sm.CHUNK_BYTES + 1)
    chunks = list(sm.encrypt_chunks(K1, 0, data))
    assert [len(c) for c in chunks] == [sm.CHUNK_BYTES + sm.TAG_BYTES, 1 + sm.TAG_BYTES]
    assert sm.decrypt_chunks(K1, 0, chunks) == data
    assert sm.chunk_count(sm.CHUNK_BYTES) == 1 and sm.chunk_count(0) == 1


def test_truncated_reordered_or_moved_chunks_are_detected() -> None:
    data = bytes(range(256)) * 2  # 8 chunks of 64
    chunks = _deliver(data)
    good = _hash(chunks)
    # truncated at a chunk boundary: each chunk still opens, but the hash and the layout say it is short
    short = chunks[:-1]
    assert sm.decrypt_chunks(K1, 0, short) == data[: 7 * SMALL_CHUNK]
    assert _hash(short) != good
    assert reason_of(sm.check_layout, [len(data)], SMALL_CHUNK, [len(short)]) == "bad_delivery"
    # truncated inside a chunk
    assert reason_of(sm.decrypt_chunks, K1, 0, [*chunks[:-1], chunks[-1][:-1]]) == "bad_key"
    # reordered: the counter is the chunk's index
    swapped = [chunks[1], chunks[0], *chunks[2:]]
    assert _hash(swapped) != good
    assert reason_of(sm.decrypt_chunks, K1, 0, swapped) == "bad_key"
    # duplicated, or dropped in the middle
    assert reason_of(sm.decrypt_chunks, K1, 0, [chunks[0], *chunks]) == "bad_key"
    assert reason_of(sm.decrypt_chunks, K1, 0, [chunks[0], *chunks[2:]]) == "bad_key"
    # a chunk of another product, or under another key
    assert reason_of(sm.decrypt_chunks, K1, 1, chunks) == "bad_key"
    assert reason_of(sm.decrypt_chunks, K2, 0, chunks) == "bad_key"
    # the hash binds each chunk's length: the same bytes cut differently hash differently
    joined = b"".join(chunks[:2])
    assert _hash([joined[:10], joined[10:]]) != _hash([joined[:11], joined[11:]])


def test_check_layout_compares_the_chunks_with_the_bills_sizes() -> None:
    sm.check_layout([0, 1, 64, 65], SMALL_CHUNK, [1, 1, 1, 2])
    for sizes, chunk, counts in (
        ([64, 65], SMALL_CHUNK, [1, 1]),  # one chunk short
        ([64], SMALL_CHUNK, [1, 1]),  # a product more
        ([64, 65], SMALL_CHUNK, [1]),  # a product less
        ([0], SMALL_CHUNK, [0]),  # an empty product is still one (empty) chunk
        ([10], 0, [1]),  # a chunk of no bytes: a bill that makes no sense
    ):
        assert reason_of(sm.check_layout, sizes, chunk, counts) == "bad_delivery"


# --- the bill check ---------------------------------------------------------------------------------------------------


def _bill(**changes: Any) -> dict[str, Any]:
    bill = {
        "secret": b"s" * (profile.HPKE_OVERHEAD + 49),
        "hc": b"c" * 32,
        "hp": sm.products_hash(PRODUCTS),
        "poid": sm.make_poid(VID, NID),
        "price": EUR250.fields(),
        "rec_key": K3,
        "sizes": [1000, 2000],
        "chunk": sm.CHUNK_BYTES,
        "mode": "normal",
    }
    bill.update(changes)
    return sm.decode(sm.BILL, sm.BILL.encode(bill), "bill")  # a bill as the customer decodes it


AGREEMENT = sm.Agreement(NID, VID, sm.products_hash(PRODUCTS), EUR250, "normal", 2)


def test_the_agreed_bill_passes() -> None:
    sm.check_bill(_bill(), AGREEMENT)
    sm.check_bill(_bill(secret=b"x" * 100, hc=b"d" * 32, rec_key=K1, sizes=[0, 5], chunk=1), AGREEMENT)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"poid": sm.make_poid(b"\xbb" * 32, NID)}, "wrong_bill"),  # another vendor
        ({"poid": sm.make_poid(VID, b"\x01" * 8)}, "wrong_bill"),  # another negotiation
        ({"hp": sm.products_hash(PRODUCTS[:1])}, "wrong_product"),
        ({"hp": sm.products_hash(list(reversed(PRODUCTS)))}, "wrong_product"),
        ({"price": {"currency": "EUR", "amount": 251}}, "wrong_price"),
        ({"price": {"currency": "EUR", "amount": 249}}, "wrong_price"),
        ({"price": {"currency": "USD", "amount": 250}}, "wrong_price"),
        ({"price": {"currency": "EUR", "amount": 0}}, "bad_amount"),
        ({"mode": "aggressive"}, "wrong_bill"),
        ({"sizes": [1000]}, "wrong_bill"),
        ({"sizes": [1000, 2000, 3000]}, "wrong_bill"),
    ],
)
def test_a_bill_other_than_the_agreed_one_is_refused(changes: dict[str, Any], reason: str) -> None:
    assert reason_of(sm.check_bill, _bill(**changes), AGREEMENT) == reason


# --- the contents: strict, and their sizes at typical values ----------------------------------------------------------

PRICE_F = EUR250.fields()
S1 = b"s" * 100  # a usual S1 (docs/speed.md)


def typical(ca: pki.CertificateAuthority) -> dict[str, tuple[Schema, dict[str, Any]]]:
    key, cert = service(ca, 1)
    secret = sm.seal_to(cert, sm.BILL_SECRET.encode({"account": "V-1234-5678", "k": K1}), sm.INFO_BILL_SECRET)
    bill = {
        "secret": secret,
        "hc": b"c" * 32,
        "hp": sm.products_hash(PRODUCTS[:1]),
        "poid": VID + NID,
        "price": PRICE_F,
        "rec_key": K3,
        "sizes": [5_000_000],
        "chunk": sm.CHUNK_BYTES,
        "mode": "normal",
    }
    signed_bill = cms.sign(sm.BILL.encode(bill), cert, lambda d: profile.sign(key, d))
    purse_mode = {"kind": "purse", "benc": K1, "bsign": K2, "s1": S1}
    return {
        "negotiation_request": (
            sm.NEGOTIATION_REQUEST,
            {
                "nid": NID,
                "seqn": 0,
                "products": PRODUCTS[:1],
                "price": PRICE_F,
                "vendor_id": VID,
                "enkey": K1,
                "signkey": K2,
                "last": False,
            },
        ),
        "product_request": (
            sm.PRODUCT_REQUEST,
            {"nid": NID, "products": PRODUCTS[:1], "price": PRICE_F, "vendor_id": VID},
        ),
        "negotiation_step": (sm.NEGOTIATION_STEP, {"nid": NID, "seqn": 3, "price": PRICE_F, "last": True}),
        "handshake": (sm.HANDSHAKE, {"nid": NID, "price": PRICE_F, "vendor_id": VID, "hp": b"h" * 32}),
        "bill_secret": (sm.BILL_SECRET, {"account": "V-1234-5678", "k": K1}),
        "bill": (sm.BILL, bill),
        "payment_mode_purse": (sm.PAYMENT_MODE, purse_mode),
        "payment_mode_account": (sm.PAYMENT_MODE, {"kind": "account", "account": "C-1234-5678"}),
        "payment_order": (sm.PAYMENT_ORDER, {"bill": signed_bill, "mode": purse_mode}),
        "purse_step": (sm.PURSE_STEP, {"poid": VID + NID, "s": S1}),
        "receipt": (sm.RECEIPT, {"poid": VID + NID, "price": PRICE_F, "k": K1}),
    }


# (lower, upper) bounds in bytes at the typical values above (one 44-character product id, a ~513-byte
# certificate in the signed bill); measured: 178, 104, 25, 91, 49, 313, 181, 23, ~1224, 147, 89
SIZES = {
    "negotiation_request": (170, 190),
    "product_request": (95, 115),
    "negotiation_step": (20, 32),
    "handshake": (85, 100),
    "bill_secret": (45, 60),
    "bill": (290, 340),
    "payment_mode_purse": (170, 190),
    "payment_mode_account": (15, 30),
    "payment_order": (1100, 1400),
    "purse_step": (140, 160),
    "receipt": (80, 100),
}


def test_every_content_round_trips_and_has_its_size(ca: pki.CertificateAuthority) -> None:
    contents = typical(ca)
    assert contents.keys() == SIZES.keys()
    for name, (schema, fields) in contents.items():
        raw = schema.encode(fields)
        lo, hi = SIZES[name]
        assert lo <= len(raw) <= hi, (name, len(raw))
        assert sm.decode(schema, raw, name) == fields
    # the envelopes around them
    step = contents["negotiation_step"][0].encode(contents["negotiation_step"][1])
    assert len(sm.sym_seal(K1, sm.NONCE_V_STEP, 3, step, sign_key=K2)) == len(step) + 48
    secret = contents["bill"][1]["secret"]
    assert len(secret) == 49 + profile.HPKE_OVERHEAD <= sm.SEALED_BILL_SECRET_MAX
    assert len(contents["payment_order"][1]["bill"]) < 1100 < sm.MAX_SIGNED
    # the largest request still fits a signed content with its certificate
    most = {**contents["negotiation_request"][1], "products": ["x" * sm.MAX_PRODUCT_ID] * sm.MAX_PRODUCTS}
    assert len(sm.NEGOTIATION_REQUEST.encode(most)) + 1024 < sm.MAX_SIGNED


def test_decode_is_strict_and_names_what_it_decoded() -> None:
    raw = sm.NEGOTIATION_STEP.encode({"nid": NID, "seqn": 1, "price": PRICE_F, "last": False})
    for bad in (raw[:-1], raw + b"\0", b"", b"\xa0"):
        with pytest.raises(DecodeError) as e:
            sm.decode(sm.NEGOTIATION_STEP, bad, "vendor's step")
        assert str(e.value).startswith("vendor's step: ")
    with pytest.raises(DecodeError):  # an 8-byte NID, exactly
        sm.NEGOTIATION_STEP.encode({"nid": NID[:4], "seqn": 1, "price": PRICE_F, "last": False})
    with pytest.raises(DecodeError):
        sm.NEGOTIATION_STEP.encode({"nid": NID, "seqn": sm.MAX_SEQN + 1, "price": PRICE_F, "last": False})
    assert sm.decode(sm.NEGOTIATION_STEP, raw, "step")["seqn"] == 1
