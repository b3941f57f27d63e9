"""Fuzzing SPEED's purchase messages and the conductor card: bad input is refused cleanly, never a crash.

Every content decoder of :mod:`cardnet.protocols.speed.messages` gets random bytes, random CBOR and mutated
valid encodings: only :class:`DecodeError` or :class:`ProtocolError` comes out, and what decodes re-encodes to
the same bytes. The envelopes refuse random bytes with their one reason. The conductor's three orders, sent
by its owner with random params (or well-formed params with random content, bills signed by the genuine vendor
over mutated contents), are answered with a refusal or their normal answer, never ``applet_error``.

Set ``CARDNET_FUZZ_EXAMPLES`` (e.g. 20000) for a long hunt.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cardnet.applets.speed import conductor as cd
from cardnet.applets.speed import purse as pa
from cardnet.applets.speed import sam as sa
from cardnet.card import Card
from cardnet.card import mtypes as cm
from cardnet.card.personalise import personalise
from cardnet.crypto import cms, pki, profile
from cardnet.host.local import LocalCard
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.speed import messages as sm
from cardnet.protocols.speed.purse import MAX_AMOUNT
from cardnet.store import SqliteStore
from cardnet.wire import DecodeError, Message, MType, Schema, Uid
from conftest import NOW, mutate

EXAMPLES = int(os.environ.get("CARDNET_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow])
T0 = NOW.timestamp()
PIN = "2468"
NID, VID, KEY = b"\x4e" * 8, b"\x56" * 32, b"\x4b" * 32
PRICE = {"currency": "EUR", "amount": 250}
PRODUCTS = ["song-0017 Blue in Green", "song-0018"]

cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.binary(max_size=80) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.integers(0, 10), kids, max_size=6),
    max_leaves=16,
)
raw_bytes = st.binary(max_size=400) | cbor_values.map(cbor2.dumps)

BILL_FIELDS = {
    "secret": b"s" * (profile.HPKE_OVERHEAD + 49), "hc": b"c" * 32, "hp": sm.products_hash(PRODUCTS),
    "poid": VID + NID, "price": PRICE, "rec_key": KEY, "sizes": [1000, 20], "chunk": 256, "mode": "normal",
}  # fmt: skip
VALID: dict[str, tuple[Schema, dict[str, Any]]] = {
    "negotiation_request": (
        sm.NEGOTIATION_REQUEST,
        {
            "nid": NID,
            "seqn": 0,
            "products": PRODUCTS,
            "price": PRICE,
            "vendor_id": VID,
            "enkey": KEY,
            "signkey": KEY,
            "last": False,
        },
    ),
    "product_request": (sm.PRODUCT_REQUEST, {"nid": NID, "products": PRODUCTS, "price": PRICE, "vendor_id": VID}),
    "negotiation_step": (sm.NEGOTIATION_STEP, {"nid": NID, "seqn": 3, "price": PRICE, "last": True, "end": True}),
    "handshake": (sm.HANDSHAKE, {"nid": NID, "price": PRICE, "vendor_id": VID, "hp": b"h" * 32}),
    "bill_secret": (sm.BILL_SECRET, {"account": "V-1234", "k": KEY}),
    "bill": (sm.BILL, BILL_FIELDS),
    "payment_mode": (sm.PAYMENT_MODE, {"kind": "purse", "benc": KEY, "bsign": KEY, "s1": b"1" * 100}),
    "payment_order": (sm.PAYMENT_ORDER, {"bill": b"\x30" * 300, "mode": {"kind": "account", "account": "C-1"}}),
    "purse_step": (sm.PURSE_STEP, {"poid": VID + NID, "s": b"2" * 100}),
    "receipt": (sm.RECEIPT, {"poid": VID + NID, "price": PRICE, "k": KEY}),
}
ENCODED = {name: schema.encode(fields) for name, (schema, fields) in VALID.items()}
AGREEMENT = sm.Agreement(NID, VID, sm.products_hash(PRODUCTS), sm.Price.of(PRICE), "normal", 2)

BILL_CHANGES: dict[str, st.SearchStrategy[Any]] = {
    "secret": st.binary(min_size=profile.HPKE_OVERHEAD + 1, max_size=sm.SEALED_BILL_SECRET_MAX),
    "hc": st.binary(min_size=32, max_size=32),
    "hp": st.binary(min_size=32, max_size=32) | st.sampled_from([sm.products_hash(PRODUCTS[:1])]),
    "poid": st.binary(min_size=sm.POID_BYTES, max_size=sm.POID_BYTES),
    "price": st.fixed_dictionaries(
        {"currency": st.sampled_from(["EUR", "USD", "eur", "E1"]), "amount": st.integers(0, MAX_AMOUNT)}
    ),
    "rec_key": st.binary(min_size=32, max_size=32),
    "sizes": st.lists(st.integers(0, sm.MAX_PRODUCT_BYTES), max_size=sm.MAX_PRODUCTS),
    "chunk": st.integers(0, sm.MAX_PRODUCT_BYTES),
    "mode": st.sampled_from(["normal", "aggressive", "", "other"]),
}


def use(name: str, fields: dict[str, Any]) -> None:
    """What a receiver does next with decoded ``fields``: each check answers or raises ProtocolError."""
    checks: list[Callable[[], object]] = []
    if "price" in fields:
        checks.append(lambda: sm.Price.of(fields["price"]))
    if "products" in fields:
        checks.append(lambda: sm.products_hash(fields["products"]))
    if "poid" in fields:
        checks.append(lambda: sm.split_poid(fields["poid"]))
    if name == "bill":
        checks.append(lambda: sm.check_bill(fields, AGREEMENT))
        counts = [sm.chunk_count(s, max(1, fields["chunk"])) for s in fields["sizes"]]
        checks.append(lambda: sm.check_layout(fields["sizes"], fields["chunk"], counts))
    for check in checks:
        with contextlib.suppress(ProtocolError):
            check()


def decode_or_refuse(name: str, raw: bytes) -> None:
    schema = VALID[name][0]
    try:
        fields = sm.decode(schema, raw, name)
    except DecodeError as exc:
        assert str(exc).startswith(f"{name}: ")
        return
    assert schema.encode(fields) == raw  # one encoding per content
    use(name, fields)


@pytest.mark.parametrize("name", list(VALID))
@FUZZ
@given(raw=raw_bytes)
def test_random_bytes_are_refused_cleanly(name: str, raw: bytes) -> None:
    decode_or_refuse(name, raw)


@pytest.mark.parametrize("name", list(VALID))
@FUZZ
@given(seed=st.integers(0, 2**32))
def test_mutated_valid_contents_are_refused_cleanly(name: str, seed: int) -> None:
    r = random.Random(seed)
    source = ENCODED[r.choice(list(ENCODED))]  # any content's bytes, fed to every decoder
    decode_or_refuse(name, mutate(source, r))


@FUZZ
@given(data=st.data())
def test_well_formed_bills_with_any_values_are_checked_cleanly(data: st.DataObject) -> None:
    """Bills that decode, with any value in each field: the customer's checks answer or refuse, nothing else."""
    names = data.draw(st.lists(st.sampled_from(list(BILL_CHANGES)), unique=True), label="fields")
    fields = dict(BILL_FIELDS, **{n: data.draw(BILL_CHANGES[n], label=n) for n in names})
    decode_or_refuse("bill", sm.BILL.encode(fields))


@pytest.mark.parametrize("name", list(VALID))
def test_every_valid_content_passes_its_own_decoder(name: str) -> None:
    schema, fields = VALID[name]
    assert sm.decode(schema, ENCODED[name], name) == fields
    use(name, fields)


# --- the envelopes -----------------------------------------------------------------------------------------------

PREFIXES = [sm.NONCE_C_STEP, sm.NONCE_V_STEP, sm.NONCE_HANDSHAKE, sm.NONCE_BILL, sm.NONCE_RECEIPT]


@FUZZ
@given(
    sealed=st.binary(max_size=200),
    counter=st.integers(-5, 2**64 + 5),
    prefix=st.sampled_from(PREFIXES),
    sign_key=st.none() | st.just(KEY),
)
def test_sym_open_refuses_random_bytes(sealed: bytes, counter: int, prefix: bytes, sign_key: bytes | None) -> None:
    with pytest.raises(ProtocolError) as e:
        sm.sym_open(KEY, prefix, counter, sealed, sign_key=sign_key, what="fuzz")
    assert e.value.reason in ("bad_tag", "bad_counter")
    assert (e.value.reason == "bad_counter") == (not 0 <= counter < 2**64)


@FUZZ
@given(seed=st.integers(0, 2**32), sign=st.booleans())
def test_sym_open_refuses_mutated_envelopes(seed: int, sign: bool) -> None:
    r = random.Random(seed)
    content = ENCODED["negotiation_step"]
    sign_key = KEY if sign else None
    sealed = sm.sym_seal(KEY, sm.NONCE_V_STEP, 3, content, sign_key=sign_key)
    bad = mutate(sealed, r)
    try:
        got = sm.sym_open(KEY, sm.NONCE_V_STEP, 3, bad, sign_key=sign_key, what="fuzz")
    except ProtocolError as exc:
        assert exc.reason == "bad_tag"
    else:
        assert bad == sealed and got == content


@FUZZ
@given(chunks=st.lists(st.binary(max_size=80), max_size=4), product=st.integers(0, sm.MAX_PRODUCTS - 1))
def test_decrypt_chunks_refuses_random_chunks(chunks: list[bytes], product: int) -> None:
    try:
        got = sm.decrypt_chunks(KEY, product, chunks)
    except ProtocolError as exc:
        assert exc.reason == "bad_key"
    else:
        assert chunks == [] and got == b""


@pytest.fixture(scope="module")
def holder() -> tuple[profile.PrivateKey, bytes]:
    ca = pki.CertificateAuthority.create("fuzz", now=NOW)
    key = profile.generate_private_key()
    return key, pki.cert_to_der(ca.issue(pki.Role.SERVICE, Uid(b"\x09" * 12, 0), key.public_key(), now=NOW))


@FUZZ
@given(raw=st.binary(max_size=300))
def test_envelopes_and_signatures_refuse_random_bytes(holder: tuple[profile.PrivateKey, bytes], raw: bytes) -> None:
    key, cert = holder
    with pytest.raises(ProtocolError) as e:
        sm.open_with(lambda s, i: profile.hpke_open(key, s, i), raw, sm.INFO_BILL, "bill")
    assert e.value.reason == "bad_envelope"
    with pytest.raises(ProtocolError) as e:
        sm.signed(raw, "bill", cert_der=cert)
    assert e.value.reason == "bad_signature"
    with pytest.raises(ProtocolError) as e:
        sm.vendor_id(raw)
    assert e.value.reason == "bad_certificate"


# --- the conductor card ------------------------------------------------------------------------------------------


@dataclass
class Bench:
    card: Card
    app: Uid
    vendor_key: profile.PrivateKey
    vendor_cert: bytes
    nids: int = 0  # NIDs used
    orders: int = 0  # ORDER answers given

    @property
    def vid(self) -> bytes:
        return sm.vendor_id(self.vendor_cert)

    def step(self, mtype: MType, param: bytes) -> Message:
        outs = self.card.step(Message(self.app, self.card.uid, mtype.code, param), T0)
        self.card.ack([o.seq for o in outs if o.seq is not None])
        assert len(outs) == 1
        return outs[0].msg


# The conductor keeps every PaymentOrder (about 3.4 KB) and every unpaid negotiation: a 256 KiB card is full
# after about 77 purchases. The bench's card is larger, so that a long hunt finds bugs, not that limit.
CAPACITY_BYTES = 256 * 1024 * 1024


@pytest.fixture(scope="module")
def bench(ca: pki.CertificateAuthority, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    """A customer's card (purse keyed and loaded, conductor) and a vendor's key and certificate."""
    tmp: Path = tmp_path_factory.mktemp("fuzz-speed")
    cards = []
    for name, applets, role in (
        ("broker", [sa.SamApplet()], pki.Role.SERVICE),
        ("alice", [pa.PurseApplet(), cd.ConductorApplet()], pki.Role.DEVICE),
    ):
        store = SqliteStore(str(tmp / f"{name}.db"), durable=False)
        card = Card(store, applets=applets, capacity_bytes=CAPACITY_BYTES)
        personalise(card, ca, pin=PIN, now=NOW, role=role, name=name)
        cards.append(LocalCard(card, PIN, clock=lambda: T0))
    broker, alice = cards
    broker.ask(sa.INIT, sa.READY)
    sealed = broker.ask(sa.ISSUE_KEY, sa.KEY, card_cert=alice.certificate_der)["sealed"]
    alice.ask(pa.INSTALL_KEY, pa.INSTALLED, sealed=sealed)
    l1 = alice.ask(pa.LOAD_BEGIN, pa.L1_IS, currency="EUR", amount=1000)["l1"]
    l2 = broker.ask(sa.LOAD_START, sa.L2_IS, l1=l1, currency="EUR", amount=1000)["l2"]
    broker.ask(sa.LOAD_FINISH, sa.LOADED, l3=alice.ask(pa.LOAD, pa.L3_IS, l2=l2)["l3"])
    key = profile.generate_private_key()
    cert = pki.cert_to_der(ca.issue(pki.Role.SERVICE, Uid(b"\x71" * 12, 0), key.public_key(), now=NOW))
    b = Bench(alice.card, alice.app, key, cert)
    agree(b, "normal", handshake=True)  # (one for the random handshakes to meet)
    yield b
    alice.close()
    broker.close()


def agree(b: Bench, mode: str, handshake: bool) -> sm.Agreement:
    """A fresh purchase the card agreed to (normal mode: without the Handshake unless ``handshake``)."""
    b.nids += 1
    nid = b.nids.to_bytes(sm.NID_BYTES, "big")
    if mode == "normal":
        request = sm.NEGOTIATION_REQUEST.encode(dict(VALID["negotiation_request"][1], nid=nid, vendor_id=b.vid))
    else:
        request = sm.PRODUCT_REQUEST.encode(dict(VALID["product_request"][1], nid=nid, vendor_id=b.vid))
    sign = cd.SIGN_REQUEST.schema.encode({"mode": mode, "content": request})
    assert b.step(cd.SIGN_REQUEST, sign).mtype == cd.SIGNED.code
    if mode == "normal" and handshake:
        hs = cd.HANDSHAKE.schema.encode({"nid": nid, "vendor_id": b.vid, "price": PRICE})
        assert b.step(cd.HANDSHAKE, hs).mtype == cd.SIGNED.code
    return sm.Agreement(nid, b.vid, AGREEMENT.hp, AGREEMENT.price, mode, 2)


def answer_is_clean(b: Bench, reply: Message, normal: MType) -> None:
    if reply.mtype == cm.REFUSED.code:
        assert cm.REFUSED.parse(reply)["reason"] != "applet_error", cm.REFUSED.parse(reply)
    else:
        assert reply.mtype == normal.code
        if normal is cd.ORDER:
            b.orders += 1
    balances = pa.BALANCES.parse(b.step(pa.BALANCE, pa.BALANCE.schema.encode({})))
    assert [a["balance"] for a in balances["accounts"]] == [1000]  # no debit without the SAM's S2
    assert balances["pending_debits"] <= b.orders  # and no debit begun without a PaymentOrder


ORDERS = [(cd.SIGN_REQUEST, cd.SIGNED), (cd.HANDSHAKE, cd.SIGNED), (cd.PAY, cd.ORDER)]


@FUZZ
@given(which=st.sampled_from(range(3)), param=raw_bytes)
def test_the_conductor_refuses_random_params(bench: Bench, which: int, param: bytes) -> None:
    mtype, normal = ORDERS[which]
    answer_is_clean(bench, bench.step(mtype, param), normal)


@FUZZ
@given(
    mode=st.sampled_from(["normal", "aggressive", "other"]),
    source=st.sampled_from(["negotiation_request", "product_request", "handshake"]),
    seed=st.integers(0, 2**32),
    raw=st.none() | raw_bytes,
)
def test_sign_request_with_random_contents(bench: Bench, mode: str, source: str, seed: int, raw: bytes | None) -> None:
    content = raw if raw is not None else mutate(ENCODED[source], random.Random(seed))
    if not content:
        content = b"\x00"
    reply = bench.step(cd.SIGN_REQUEST, cd.SIGN_REQUEST.schema.encode({"mode": mode, "content": content}))
    answer_is_clean(bench, reply, cd.SIGNED)
    if reply.mtype == cd.SIGNED.code:
        assert cms.verify(cd.SIGNED.parse(reply)["cms"]).content == content  # it signs exactly what it was given


@FUZZ
@given(
    nid=st.binary(min_size=8, max_size=8) | st.just((1).to_bytes(8, "big")),
    own_vendor=st.booleans(),
    currency=st.sampled_from(["EUR", "USD", "eur", "E1R", "€"]),
    amount=st.integers(0, MAX_AMOUNT),
)
def test_handshake_with_random_fields(bench: Bench, nid: bytes, own_vendor: bool, currency: str, amount: int) -> None:
    vid = bench.vid if own_vendor else b"\x00" * 32
    param = cd.HANDSHAKE.schema.encode(
        {"nid": nid, "vendor_id": vid, "price": {"currency": currency, "amount": amount}}
    )
    answer_is_clean(bench, bench.step(cd.HANDSHAKE, param), cd.SIGNED)


@FUZZ
@given(
    data=st.data(),
    mode=st.sampled_from(["normal", "aggressive"]),
    handshake=st.booleans(),
    how=st.sampled_from(["changed_fields", "mutated_content", "random_content", "mutated_cms", "sealed", "random"]),
    kind=st.sampled_from(["purse", "account", "other"]),
)
def test_pay_with_bills_the_vendor_signed_over_random_contents(
    bench: Bench, data: st.DataObject, mode: str, handshake: bool, how: str, kind: str
) -> None:
    """The vendor is the adversary here: it signs whatever it likes with its genuine key, for a purchase the
    card agreed to. Whatever the card pays is the agreed bill."""
    agreement = agree(bench, mode, handshake)
    fields = dict(BILL_FIELDS, poid=agreement.poid, mode=mode)
    r = random.Random(data.draw(st.integers(0, 2**32), label="seed"))

    def sign(content: bytes) -> bytes:
        return cms.sign(content, bench.vendor_cert, lambda d: profile.sign(bench.vendor_key, d))

    if how == "changed_fields":
        names = data.draw(st.lists(st.sampled_from(list(BILL_CHANGES)), max_size=3, unique=True), label="fields")
        fields.update({n: data.draw(BILL_CHANGES[n], label=n) for n in names})
        bill = sign(sm.BILL.encode(fields))
    elif how == "mutated_content":
        bill = sign(mutate(sm.BILL.encode(fields), r))
    elif how == "random_content":
        bill = sign(data.draw(raw_bytes, label="content"))
    elif how == "mutated_cms":
        bill = mutate(sign(sm.BILL.encode(fields)), r)
    elif how == "sealed":
        bill = sm.seal_to(bench.card.certificate_der, mutate(sign(sm.BILL.encode(fields)), r), sm.INFO_BILL)
    else:
        bill = data.draw(raw_bytes, label="bill")
    param: dict[str, Any] = {"bill": bill or b"\x30", "vendor_cert": bench.vendor_cert, "kind": kind}
    if kind == "purse":
        param.update(benc=KEY, bsign=KEY)
    elif kind == "account":
        param["account"] = "C-1"
    reply = bench.step(cd.PAY, cd.PAY.schema.encode(param))
    answer_is_clean(bench, reply, cd.ORDER)
    if reply.mtype == cd.ORDER.code:
        order = cd.ORDER.parse(reply)
        paid = sm.decode(sm.BILL, sm.signed(order["bill"], "bill", cert_der=bench.vendor_cert).content, "bill")
        sm.check_bill(paid, agreement)  # only the agreed purchase is ever paid
        assert paid["poid"] == order["poid"] == agreement.poid and kind in ("purse", "account")
