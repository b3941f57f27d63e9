"""SPEED's conductor on a real card (in-process, SQLite store): the card signs what the customer agreed and pays
only the bill it agreed to, once.

The customer's card holds the purse (keyed by the broker's SAM card and loaded) and the conductor; the vendor
is a service key and certificate of the same CA, as a vendor's server holds them. The negotiation runs on the
real machines of :mod:`cardnet.protocols.speed.negotiation`, with the card signing the request and the
Handshake; the vendor builds and signs the bill as the paper's message 4 says.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cardnet.applets.speed import conductor as cd
from cardnet.applets.speed import purse as pa
from cardnet.applets.speed import sam as sa
from cardnet.card import Card
from cardnet.card import mtypes as cm
from cardnet.card.personalise import personalise
from cardnet.crypto import cms, pki, profile
from cardnet.host.errors import HostError
from cardnet.host.local import LocalCard
from cardnet.protocols.speed import messages as sm
from cardnet.protocols.speed import negotiation as ng
from cardnet.protocols.speed import purse as pp
from cardnet.protocols.speed.messages import Price
from cardnet.store import SqliteStore
from cardnet.wire import Message, Uid
from conftest import NOW

PIN = "2468"
T0 = NOW.timestamp()
PRODUCTS = ["song-0017 Blue in Green", "song-0018 Flamenco Sketches"]
CONTENTS = [b"\x17" * 1000, b"\x18" * 300]
CHUNK = 256  # plaintext bytes a chunk (small: a few chunks a product)
BENC, BSIGN = b"\xbe" * 32, b"\xb5" * 32
ENKEY, SIGNKEY = b"\x45" * 32, b"\x53" * 32
EUR250 = Price("EUR", 250)


@dataclass(frozen=True)
class Vendor:
    key: profile.PrivateKey
    cert: bytes

    @property
    def vid(self) -> bytes:
        return sm.vendor_id(self.cert)

    def sign(self, content: bytes) -> bytes:
        return cms.sign(content, self.cert, lambda d: profile.sign(self.key, d))


def make_vendor(ca: pki.CertificateAuthority, n: int, role: pki.Role = pki.Role.SERVICE) -> Vendor:
    key = profile.generate_private_key()
    uid = Uid(bytes([n]) * 12, 0) if role is pki.Role.SERVICE else Uid.card(bytes([n]) * 12)
    return Vendor(key, pki.cert_to_der(ca.issue(role, uid, key.public_key(), now=NOW)))


@dataclass
class Shop:
    ca: pki.CertificateAuthority
    broker: LocalCard  # the broker's SAM card
    alice: LocalCard  # the customer's card: purse and conductor
    vendor: Vendor
    next_nid: int = 0
    bills: dict[bytes, bytes] = field(default_factory=dict)  # poid -> K (what the broker would learn)

    def nid(self) -> bytes:
        self.next_nid += 1
        return self.next_nid.to_bytes(sm.NID_BYTES, "big")

    def balance(self, currency: str = "EUR") -> int:
        got = self.alice.ask(pa.BALANCE, pa.BALANCES)
        return int({a["currency"]: a["balance"] for a in got["accounts"]}.get(currency, 0))

    def load(self, currency: str, amount: int) -> None:
        l1 = self.alice.ask(pa.LOAD_BEGIN, pa.L1_IS, currency=currency, amount=amount)["l1"]
        l2 = self.broker.ask(sa.LOAD_START, sa.L2_IS, l1=l1, currency=currency, amount=amount)["l2"]
        l3 = self.alice.ask(pa.LOAD, pa.L3_IS, l2=l2)["l3"]
        self.broker.ask(sa.LOAD_FINISH, sa.LOADED, l3=l3)

    # -- the normal mode, up to the agreement ------------------------------------------------------------------
    def negotiate(self, limit: Price = EUR250, list_price: Price = EUR250, vendor: Vendor | None = None,
                  products: list[str] | None = None) -> tuple[bytes, Price]:  # fmt: skip
        """A normal-mode negotiation to the customer's handshake (checked by the vendor): (NID, price)."""
        vendor = vendor or self.vendor
        products = products or PRODUCTS
        nid = self.nid()
        c = ng.CustomerNegotiation(nid, ENKEY, SIGNKEY, ng.LimitStrategy(limit), products=products,
                                   vendor_id=vendor.vid)  # fmt: skip
        signed = self.alice.ask(cd.SIGN_REQUEST, cd.SIGNED, mode="normal", content=c.request())["cms"]
        got = cms.verify(signed)
        assert got.content == c.request() and got.signer_cert_der == self.alice.certificate_der
        v = ng.VendorNegotiation(nid, ENKEY, SIGNKEY, ng.PriceList(list_price), products=products,
                                 customer_cert=got.signer_cert_der, vendor_id=vendor.vid)  # fmt: skip
        step = v.first(None, False)
        assert isinstance(step, ng.Sent)
        agreed = c.on_step(step.sealed)
        assert isinstance(agreed, ng.Agreed)
        hs = self.alice.ask(cd.HANDSHAKE, cd.SIGNED, nid=nid, vendor_id=vendor.vid, price=agreed.price.fields())
        assert v.on_handshake(c.seal_handshake(hs["cms"])) == agreed.price
        return nid, agreed.price

    def bill(self, nid: bytes, price: Price = EUR250, *, vendor: Vendor | None = None, signer: Vendor | None = None,
             products: list[str] | None = None, mode: str = "normal", k: bytes = b"\x4b" * 32,
             **changes: Any) -> bytes:  # fmt: skip
        """The vendor's signed bill for the products (``changes``: fields it alters)."""
        vendor = vendor or self.vendor
        contents = CONTENTS[: len(products or PRODUCTS)]
        hc = sm.DeliveryHash()
        for i, data in enumerate(contents):
            for c in sm.encrypt_chunks(k, i, data, CHUNK):
                hc.update(c)
        secret = sm.seal_to(self.broker.certificate_der, sm.BILL_SECRET.encode({"account": "V-77", "k": k}),
                            sm.INFO_BILL_SECRET)  # fmt: skip
        fields = {
            "secret": secret, "hc": hc.digest(), "hp": sm.products_hash(products or PRODUCTS),
            "poid": sm.make_poid(vendor.vid, nid), "price": price.fields(), "rec_key": b"\x52" * 32,
            "sizes": [len(d) for d in contents], "chunk": CHUNK, "mode": mode,
        }  # fmt: skip
        fields.update(changes)
        return (signer or vendor).sign(sm.BILL.encode(fields))

    def pay(self, bill: bytes, vendor: Vendor | None = None, kind: str = "purse", **extra: Any) -> dict[str, Any]:
        if kind == "purse":
            extra = {"benc": BENC, "bsign": BSIGN, **extra}
        return self.alice.ask(cd.PAY, cd.ORDER, bill=bill, vendor_cert=(vendor or self.vendor).cert, kind=kind,
                              **extra)  # fmt: skip

    def refused(self, mtype: Any, **fields: Any) -> str:
        reply = cd.ORDER if mtype is cd.PAY else cd.SIGNED
        with pytest.raises(HostError) as e:
            self.alice.ask(mtype, reply, **fields)
        return e.value.reason

    def pay_refused(self, bill: bytes, vendor: Vendor | None = None, kind: str = "purse", **extra: Any) -> str:
        with pytest.raises(HostError) as e:
            self.pay(bill, vendor, kind, **extra)
        return e.value.reason

    def settle(self, order: dict[str, Any]) -> dict[str, Any]:
        """The broker's side of a purse payment: S1 -> S2 (SAM), S2 -> S3 (card), S3 -> the log (SAM)."""
        s1 = pp.S1.decode(order["s1"])
        price = Price.of(order["price"])
        s2 = self.broker.ask(sa.DEBIT_START, sa.S2_IS, s1=order["s1"], poid=s1.poid, currency=price.currency,
                             amount=price.amount)["s2"]  # fmt: skip
        s3 = self.alice.ask(pa.DEBIT, pa.S3_IS, s2=s2)["s3"]
        return self.broker.ask(sa.DEBIT_FINISH, sa.DEBITED, s3=s3)


def open_card(tmp: Path, ca: pki.CertificateAuthority, name: str, applets: list[Any], role: pki.Role) -> LocalCard:
    card = Card(SqliteStore(str(tmp / f"{name}.db")), applets=applets)
    personalise(card, ca, pin=PIN, now=NOW, role=role, name=name)
    return LocalCard(card, PIN, clock=lambda: T0)


@pytest.fixture
def shop(tmp_path: Path, ca: pki.CertificateAuthority) -> Iterator[Shop]:
    broker = open_card(tmp_path, ca, "broker", [sa.SamApplet()], pki.Role.SERVICE)
    alice = open_card(tmp_path, ca, "alice", [pa.PurseApplet(), cd.ConductorApplet()], pki.Role.DEVICE)
    s = Shop(ca, broker, alice, make_vendor(ca, 0x70))
    try:
        assert broker.ask(sa.INIT, sa.READY)["fresh"]
        sealed = broker.ask(sa.ISSUE_KEY, sa.KEY, card_cert=alice.certificate_der)["sealed"]
        assert alice.ask(pa.INSTALL_KEY, pa.INSTALLED, sealed=sealed)["fresh"]
        s.load("EUR", 1000)
        assert s.balance() == 1000
        yield s
    finally:
        alice.close()
        broker.close()


# --- the normal mode, paid from the purse ------------------------------------------------------------------------


def test_a_normal_purchase_paid_from_the_purse(shop: Shop) -> None:
    nid, price = shop.negotiate()
    assert price == EUR250
    bill = shop.bill(nid)
    order = shop.pay(bill)
    poid = sm.make_poid(shop.vendor.vid, nid)
    assert (order["poid"], order["price"], order["bill"]) == (poid, EUR250.fields(), bill)
    # the PaymentOrder: signed by the card, over the bill and the payment mode with S1
    po = cms.verify(order["po"])
    assert po.signer_cert_der == shop.alice.certificate_der
    assert sm.decode(sm.PAYMENT_ORDER, po.content, "PaymentOrder") == {
        "bill": bill,
        "mode": {"kind": "purse", "benc": BENC, "bsign": BSIGN, "s1": order["s1"]},
    }
    s1 = pp.S1.decode(order["s1"])
    assert (s1.uid, s1.poid, s1.currency, s1.amount) == (shop.alice.uid, poid, "EUR", 250)
    assert shop.balance() == 1000  # begun, not debited: the SAM's S2 debits
    assert shop.alice.ask(pa.BALANCE, pa.BALANCES)["pending_debits"] == 1
    debited = shop.settle(order)
    assert (debited["poid"], debited["amount"], debited["uid"]) == (poid, 250, shop.alice.uid)
    assert shop.balance() == 750


def test_the_same_bill_paid_again_gives_the_same_order_and_debits_once(shop: Shop) -> None:
    nid, _ = shop.negotiate()
    bill = shop.bill(nid)
    first = shop.pay(bill)
    assert shop.pay(bill) == first  # the answer was lost: asked again, the same PO and the same S1
    assert shop.alice.ask(pa.BALANCE, pa.BALANCES)["pending_debits"] == 1
    shop.settle(first)
    assert shop.balance() == 750
    assert shop.pay(bill) == first  # even after the debit
    assert shop.pay(bill, kind="account", account="C-1") == first  # (the order made is the order)
    # the SAM's S2 again: the same S3, nothing debited twice
    s1 = pp.S1.decode(first["s1"])
    s2 = shop.broker.ask(sa.DEBIT_START, sa.S2_IS, s1=first["s1"], poid=s1.poid, currency="EUR", amount=250)["s2"]
    shop.alice.ask(pa.DEBIT, pa.S3_IS, s2=s2)
    assert shop.balance() == 750
    assert shop.alice.ask(pa.BALANCE, pa.BALANCES)["pending_debits"] == 0


def test_the_card_pays_only_the_bill_it_agreed_to(shop: Shop, ca: pki.CertificateAuthority) -> None:
    nid, _ = shop.negotiate()
    other_vendor = make_vendor(ca, 0x71)
    device = make_vendor(ca, 0x72, pki.Role.DEVICE)
    stranger_ca = pki.CertificateAuthority.create("another CA", now=NOW)
    stranger = make_vendor(stranger_ca, 0x73)
    cases: list[tuple[bytes, Vendor | None, str]] = [
        (shop.bill(nid, Price("EUR", 251)), None, "wrong_price"),
        (shop.bill(nid, Price("EUR", 249)), None, "wrong_price"),
        (shop.bill(nid, Price("USD", 250)), None, "wrong_price"),
        (shop.bill(nid, products=PRODUCTS[:1]), None, "wrong_product"),
        (shop.bill(nid, hp=sm.products_hash(list(reversed(PRODUCTS)))), None, "wrong_product"),
        (shop.bill(nid, mode="aggressive"), None, "wrong_bill"),
        (shop.bill(nid, sizes=[1000]), None, "wrong_bill"),
        # another service key signs a bill with this vendor's PaymentOrderID
        (shop.bill(nid, signer=other_vendor), other_vendor, "wrong_vendor"),
        (shop.bill(nid, signer=other_vendor), None, "bad_signature"),  # (and is not this vendor's signature)
        (shop.bill(nid, vendor=device, signer=device), device, "wrong_usage"),  # a device is no vendor
        (shop.bill(nid, vendor=stranger, signer=stranger), stranger, "unknown_ca"),
        (shop.bill(nid)[:-1], None, "bad_signature"),
        (b"\x30\x03\x02\x01\x00", None, "bad_signature"),
    ]
    for bill, vendor, reason in cases:
        assert shop.pay_refused(bill, vendor) == reason, reason
    assert shop.alice.ask(pa.BALANCE, pa.BALANCES)["pending_debits"] == 0  # nothing of the refused steps stayed
    order = shop.pay(shop.bill(nid))  # the agreed bill still goes through
    shop.settle(order)
    assert shop.balance() == 750


def test_a_payment_order_id_is_paid_once(shop: Shop) -> None:
    nid, _ = shop.negotiate()
    shop.pay(shop.bill(nid))
    again = shop.bill(nid, k=b"\x00" * 32)  # another bill (another product key) for the same PaymentOrderID
    assert shop.pay_refused(again) == "already_paid"
    assert shop.pay_refused(shop.bill(nid, Price("EUR", 1))) == "already_paid"
    assert shop.refused(cd.HANDSHAKE, nid=nid, vendor_id=shop.vendor.vid, price=EUR250.fields()) == "already_paid"


def test_no_payment_without_a_handshake_or_a_request(shop: Shop) -> None:
    nid = shop.nid()
    c = ng.CustomerNegotiation(nid, ENKEY, SIGNKEY, ng.LimitStrategy(EUR250), products=PRODUCTS,
                               vendor_id=shop.vendor.vid)  # fmt: skip
    shop.alice.ask(cd.SIGN_REQUEST, cd.SIGNED, mode="normal", content=c.request())
    assert shop.pay_refused(shop.bill(nid)) == "not_agreed"
    never = shop.nid()
    assert shop.pay_refused(shop.bill(never)) == "no_negotiation"
    assert shop.refused(cd.HANDSHAKE, nid=never, vendor_id=shop.vendor.vid, price=EUR250.fields()) == "no_negotiation"
    # after the handshake, the bill is payable; a second handshake at another price is refused
    shop.alice.ask(cd.HANDSHAKE, cd.SIGNED, nid=nid, vendor_id=shop.vendor.vid, price=EUR250.fields())
    assert shop.alice.ask(cd.HANDSHAKE, cd.SIGNED, nid=nid, vendor_id=shop.vendor.vid, price=EUR250.fields())
    assert shop.refused(cd.HANDSHAKE, nid=nid, vendor_id=shop.vendor.vid, price={"currency": "EUR", "amount": 1}) == (
        "agreed"
    )
    assert "s1" in shop.pay(shop.bill(nid))


def test_a_nid_is_used_once_per_vendor(shop: Shop, ca: pki.CertificateAuthority) -> None:
    nid, _ = shop.negotiate()
    request = ng.CustomerNegotiation(nid, ENKEY, SIGNKEY, ng.LimitStrategy(EUR250), products=PRODUCTS,
                                     vendor_id=shop.vendor.vid).request()  # fmt: skip
    assert shop.refused(cd.SIGN_REQUEST, mode="normal", content=request) == "nid_used"  # agreed, not paid
    shop.pay(shop.bill(nid))
    assert shop.refused(cd.SIGN_REQUEST, mode="normal", content=request) == "nid_used"  # paid
    aggressive = sm.PRODUCT_REQUEST.encode({"nid": nid, "products": PRODUCTS, "price": EUR250.fields(),
                                            "vendor_id": shop.vendor.vid})  # fmt: skip
    assert shop.refused(cd.SIGN_REQUEST, mode="aggressive", content=aggressive) == "nid_used"
    # the same NID with another vendor is another PaymentOrderID
    other = make_vendor(ca, 0x74)
    fresh = ng.CustomerNegotiation(nid, ENKEY, SIGNKEY, ng.LimitStrategy(EUR250), products=PRODUCTS,
                                   vendor_id=other.vid).request()  # fmt: skip
    assert shop.alice.ask(cd.SIGN_REQUEST, cd.SIGNED, mode="normal", content=fresh)["cms"]


def test_requests_the_card_will_not_sign(shop: Shop) -> None:
    def request(**changes: Any) -> bytes:
        fields = {"nid": shop.nid(), "seqn": 0, "products": PRODUCTS, "vendor_id": shop.vendor.vid, "enkey": ENKEY,
                  "signkey": SIGNKEY, "last": False}  # fmt: skip
        fields.update(changes)
        return sm.NEGOTIATION_REQUEST.encode(fields)

    assert shop.refused(cd.SIGN_REQUEST, mode="normal", content=request(seqn=1)) == "bad_request"
    assert shop.refused(cd.SIGN_REQUEST, mode="normal", content=request(products=[])) == "bad_products"
    assert shop.refused(cd.SIGN_REQUEST, mode="normal", content=request(products=["a\x00b"])) == "bad_products"
    bad_price = request(price={"currency": "eur", "amount": 1})
    assert shop.refused(cd.SIGN_REQUEST, mode="normal", content=bad_price) == "bad_currency"
    assert shop.refused(cd.SIGN_REQUEST, mode="auction", content=request()) == "bad_mode"
    assert shop.refused(cd.SIGN_REQUEST, mode="aggressive", content=request()) == "unknown_key"  # not a ProductRequest
    assert shop.refused(cd.SIGN_REQUEST, mode="normal", content=b"\xa0") == "missing_key"


def test_payment_modes_that_are_not_complete_are_refused(shop: Shop) -> None:
    nid, _ = shop.negotiate()
    bill = shop.bill(nid)
    assert shop.pay_refused(bill, kind="purse", benc=None) == "bad_mode"
    assert shop.pay_refused(bill, kind="account") == "bad_mode"  # no account named
    assert shop.pay_refused(bill, kind="cash") == "bad_mode"
    shop.load("EUR", 1)
    assert shop.balance() == 1001
    dear = shop.negotiate(limit=Price("EUR", 2000), list_price=Price("EUR", 2000))[0]
    assert shop.pay_refused(shop.bill(dear, Price("EUR", 2000))) == "insufficient"
    shop.load("EUR", 999)
    assert "s1" in shop.pay(shop.bill(dear, Price("EUR", 2000)))  # the refused attempt left nothing behind


def test_the_orders_need_the_pin(shop: Shop) -> None:
    card = shop.alice.card
    grant = card.step(cm.PORT_REQUEST.make(Uid(card.uid.domain, 2**32 - 1), card.uid), T0)
    card.ack([o.seq for o in grant if o.seq is not None])
    stranger = card.uid.with_port(cm.PORT_GRANT.parse(grant[0].msg)["port"])  # a port, but no PIN
    for mt in (cd.SIGN_REQUEST, cd.HANDSHAKE, cd.PAY):
        assert mt.privileged and mt in cd.ORDERS
        outs = card.step(Message(stranger, card.uid, mt.code, b"\xa0"), T0)
        card.ack([o.seq for o in outs if o.seq is not None])
        assert cm.REFUSED.parse(outs[0].msg)["reason"] == "privileged", mt.name


# --- the aggressive mode ---------------------------------------------------------------------------------------------


def aggressive_request(shop: Shop, nid: bytes, price: Price = EUR250) -> bytes:
    content = sm.PRODUCT_REQUEST.encode({"nid": nid, "products": PRODUCTS, "price": price.fields(),
                                         "vendor_id": shop.vendor.vid})  # fmt: skip
    signed = bytes(shop.alice.ask(cd.SIGN_REQUEST, cd.SIGNED, mode="aggressive", content=content)["cms"])
    assert cms.verify(signed).content == content
    return signed


def test_an_aggressive_purchase_pays_a_bill_sealed_to_the_card(shop: Shop) -> None:
    nid = shop.nid()
    aggressive_request(shop, nid)
    # no Handshake in this mode: the request is the agreement
    assert shop.refused(cd.HANDSHAKE, nid=nid, vendor_id=shop.vendor.vid, price=EUR250.fields()) == "bad_mode"
    signed_bill = shop.bill(nid, mode="aggressive")
    sealed = sm.seal_to(shop.alice.certificate_der, signed_bill, sm.INFO_BILL)
    order = shop.pay(sealed)
    assert order["bill"] == signed_bill  # opened by the card
    po = cms.verify(order["po"])
    assert sm.decode(sm.PAYMENT_ORDER, po.content, "PaymentOrder")["bill"] == signed_bill
    # another envelope of the same bill (HPKE is randomised): the same order
    assert shop.pay(sm.seal_to(shop.alice.certificate_der, signed_bill, sm.INFO_BILL)) == order
    shop.settle(order)
    assert shop.balance() == 750


def test_an_aggressive_bill_must_open_and_match_the_request(shop: Shop, ca: pki.CertificateAuthority) -> None:
    nid = shop.nid()
    aggressive_request(shop, nid)
    other_card = make_vendor(ca, 0x75, pki.Role.DEVICE)
    signed_bill = shop.bill(nid, mode="aggressive")
    for sealed, reason in (
        (sm.seal_to(other_card.cert, signed_bill, sm.INFO_BILL), "bad_envelope"),  # sealed to another card
        (sm.seal_to(shop.alice.certificate_der, signed_bill, sm.INFO_BILL_SECRET), "bad_envelope"),
        (sm.seal_to(shop.alice.certificate_der, shop.bill(nid, Price("EUR", 300), mode="aggressive"), sm.INFO_BILL),
         "wrong_price"),
        (sm.seal_to(shop.alice.certificate_der, shop.bill(nid), sm.INFO_BILL), "wrong_bill"),  # a normal-mode bill
        (b"\x00" * 50, "bad_envelope"),
    ):  # fmt: skip
        assert shop.pay_refused(sealed) == reason, reason
    assert "s1" in shop.pay(sm.seal_to(shop.alice.certificate_der, signed_bill, sm.INFO_BILL))


# --- the account mode ------------------------------------------------------------------------------------------------


def test_an_account_payment_names_the_account_and_leaves_the_purse_alone(shop: Shop) -> None:
    nid, _ = shop.negotiate()
    bill = shop.bill(nid)
    order = shop.pay(bill, kind="account", account="C-1")
    assert "s1" not in order
    po = sm.decode(sm.PAYMENT_ORDER, cms.verify(order["po"]).content, "PaymentOrder")
    assert po == {"bill": bill, "mode": {"kind": "account", "account": "C-1"}}
    assert shop.balance() == 1000
    assert shop.alice.ask(pa.BALANCE, pa.BALANCES)["pending_debits"] == 0
    assert shop.pay(bill, kind="account", account="C-1") == order
    assert shop.pay_refused(shop.bill(nid, k=b"\x01" * 32), kind="account", account="C-1") == "already_paid"


def test_past_its_bound_the_card_forgets_the_oldest_open_negotiation_not_a_random_one(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """33 negotiations signed and none paid: the first one opened is forgotten (its NID may be signed again), the
    second and the newest are kept (their NIDs are refused as used)."""
    c = Card(SqliteStore(str(tmp_path / "c.db")), applets=[pa.PurseApplet(), cd.ConductorApplet()])
    personalise(c, ca, pin=PIN, now=NOW)
    card = LocalCard(c, PIN, clock=NOW.timestamp)
    vid = bytes(range(32))
    nids = [i.to_bytes(8, "little") for i in range(cd.MAX_OPEN + 1)]  # opened in an order their keys do not sort in

    def sign(nid: bytes) -> None:
        content = sm.PRODUCT_REQUEST.encode(
            {"nid": nid, "products": ["p"], "price": {"currency": "EUR", "amount": 1}, "vendor_id": vid}
        )
        card.ask(cd.SIGN_REQUEST, cd.SIGNED, mode="aggressive", content=content)

    try:
        for nid in nids:
            sign(nid)
        for kept in (nids[1], nids[-1]):
            with pytest.raises(HostError) as e:
                sign(kept)
            assert e.value.reason == "nid_used"
        sign(nids[0])  # forgotten: a new negotiation under it is taken (and now nids[1] is the oldest)
    finally:
        card.close()
