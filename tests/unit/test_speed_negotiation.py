"""SPEED's negotiation (paper 4.2): the customer's and the vendor's machines talking through a fake link.

The customer's request is signed with a device key and sealed to the vendor's certificate as on the wire; the
vendor opens it and starts its side from it (what the vendor's service does). Every step then goes through
the sealed bytes the machines make, so a replayed, reflected or skipped step is the real thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from cardnet.crypto import cms, pki, profile
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.speed import messages as sm
from cardnet.protocols.speed import negotiation as ng
from cardnet.protocols.speed.messages import Price
from cardnet.wire import Uid
from conftest import NOW

NID = b"\x4e" * 8
ENKEY, SIGNKEY = b"\x45" * 32, b"\x53" * 32
PRODUCTS = ["song-0017 Blue in Green", "song-0018 Flamenco Sketches"]
MAX_ROUNDS = 20


def eur(amount: int) -> Price:
    return Price("EUR", amount)


@dataclass(frozen=True)
class Party:
    key: profile.PrivateKey
    cert: bytes

    def sign(self, content: bytes) -> bytes:
        return cms.sign(content, self.cert, lambda d: profile.sign(self.key, d))


def party(ca: pki.CertificateAuthority, role: pki.Role, n: int) -> Party:
    key = profile.generate_private_key()
    uid = Uid.card(bytes([n]) * 12) if role is pki.Role.DEVICE else Uid(bytes([n]) * 12, 0)
    return Party(key, pki.cert_to_der(ca.issue(role, uid, key.public_key(), now=NOW)))


@pytest.fixture(scope="module")
def customer_party(ca: pki.CertificateAuthority) -> Party:
    return party(ca, pki.Role.DEVICE, 0x01)


@pytest.fixture(scope="module")
def vendor_party(ca: pki.CertificateAuthority) -> Party:
    return party(ca, pki.Role.SERVICE, 0x02)


@dataclass
class Talk:
    """One negotiation between a customer and a vendor, and what each side said."""

    customer: ng.CustomerNegotiation
    vendor: ng.VendorNegotiation
    customer_party: Party
    vendor_party: Party
    first: ng.Sent | ng.Ended
    request: dict[str, Any]

    def handshake(self, price: Price, **changes: Any) -> bytes:
        """The Handshake the customer's card signs, sealed under EnKey (``changes``: forged fields)."""
        fields = {"nid": NID, "price": price.fields(), "vendor_id": sm.vendor_id(self.vendor_party.cert),
                  "hp": sm.products_hash(PRODUCTS)}  # fmt: skip
        fields.update(changes)
        return self.customer.seal_handshake(self.customer_party.sign(sm.HANDSHAKE.encode(fields)))


def start(
    customer_party: Party, vendor_party: Party, customer: ng.Strategy, vendor: ng.Strategy, nid: bytes = NID
) -> Talk:
    """The customer's NegotiationRequest (signed, sealed to the vendor), opened and answered by the vendor."""
    vid = sm.vendor_id(vendor_party.cert)
    c = ng.CustomerNegotiation(nid, ENKEY, SIGNKEY, customer, products=list(PRODUCTS), vendor_id=vid)
    sealed = sm.seal_to(vendor_party.cert, customer_party.sign(c.request()), sm.INFO_REQUEST)
    # the vendor's side: open, check the signature and that the request is meant for this vendor
    opened = sm.open_with(lambda s, i: profile.hpke_open(vendor_party.key, s, i), sealed, sm.INFO_REQUEST, "request")
    signed = sm.signed(opened, "NegotiationRequest")
    req = sm.decode(sm.NEGOTIATION_REQUEST, signed.content, "NegotiationRequest")
    assert req["vendor_id"] == vid and req["seqn"] == 0 and signed.signer_cert_der == customer_party.cert
    v = ng.VendorNegotiation(req["nid"], req["enkey"], req["signkey"], vendor, products=req["products"],
                             customer_cert=signed.signer_cert_der, vendor_id=vid)  # fmt: skip
    proposal = Price.of(req["price"]) if "price" in req else None
    return Talk(c, v, customer_party, vendor_party, v.first(proposal, req["last"]), req)


def run(talk: Talk) -> tuple[list[bytes], ng.Agreed | ng.Ended, ng.Ended | None]:
    """Carry every step until one side agrees or ends: (the sealed steps in order, the customer's outcome, the
    vendor's outcome when it ended)."""
    sent: list[bytes] = []
    out: ng.Sent | ng.Ended = talk.first
    for _ in range(MAX_ROUNDS):
        if isinstance(out, ng.Ended):  # the vendor ended: its end step reaches the customer
            assert out.sealed is not None
            sent.append(out.sealed)
            got = talk.customer.on_step(out.sealed)
            assert isinstance(got, ng.Ended)
            return sent, got, out
        sent.append(out.sealed)
        answer = talk.customer.on_step(out.sealed)
        if isinstance(answer, ng.Agreed):
            return sent, answer, None
        if isinstance(answer, ng.Ended):
            assert answer.sealed is not None
            sent.append(answer.sealed)
            assert isinstance(talk.vendor.on_step(answer.sealed), ng.Ended)
            return sent, answer, None
        sent.append(answer.sealed)
        out = talk.vendor.on_step(answer.sealed)
    raise AssertionError(f"no outcome after {MAX_ROUNDS} rounds")


def step_fields(sealed: bytes, seqn: int, *, by_vendor: bool) -> dict[str, Any]:
    """What a sealed step says (opened as its receiver would, at ``seqn``)."""
    prefix = sm.NONCE_V_STEP if by_vendor else sm.NONCE_C_STEP
    raw = sm.sym_open(ENKEY, prefix, seqn, sealed, sign_key=SIGNKEY, what="step")
    return sm.decode(sm.NEGOTIATION_STEP, raw, "step")


def reason_of(fn: Any, *args: Any) -> str:
    with pytest.raises(ProtocolError) as e:
        fn(*args)
    return e.value.reason


# --- (a) the customer takes the vendor's first price -------------------------------------------------------------


def test_the_customer_accepts_the_vendors_first_price(customer_party: Party, vendor_party: Party) -> None:
    t = start(customer_party, vendor_party, ng.LimitStrategy(eur(300)), ng.PriceList(eur(250)))
    assert "price" not in t.request and t.request["last"] is False  # asked the price
    assert t.request["products"] == PRODUCTS and t.request["enkey"] == ENKEY and t.request["signkey"] == SIGNKEY
    sent, outcome, _ = run(t)
    assert outcome == ng.Agreed(eur(250))
    assert len(sent) == 1
    assert step_fields(sent[0], 1, by_vendor=True) == {"nid": NID, "seqn": 1, "price": eur(250).fields(), "last": True}
    assert t.customer.done and t.customer.offered == eur(250)
    assert not t.vendor.done and t.vendor.offered == eur(250)
    assert t.vendor.on_handshake(t.handshake(eur(250))) == eur(250)
    assert t.vendor.done
    # the bill travels under EnKey with its own prefix
    assert t.customer.open_bill(t.vendor.seal_bill(b"signed bill")) == b"signed bill"
    assert reason_of(t.customer.open_bill, t.vendor.seal_bill(b"signed bill")[:-1]) == "bad_tag"


# --- (b) a counter-offer the vendor takes at its floor -------------------------------------------------------------


def test_a_counter_offer_is_taken_at_the_vendors_floor(customer_party: Party, vendor_party: Party) -> None:
    t = start(customer_party, vendor_party, ng.LimitStrategy(eur(300)), ng.PriceList(eur(400), floor=eur(300)))
    sent, outcome, _ = run(t)
    assert outcome == ng.Agreed(eur(300))
    said = [step_fields(s, i + 1, by_vendor=i % 2 == 0) for i, s in enumerate(sent)]
    assert [(f["seqn"], f["price"]["amount"], f["last"]) for f in said] == [
        (1, 400, False),
        (2, 300, True),
        (3, 300, True),
    ]
    assert all(f["nid"] == NID and "end" not in f for f in said)
    assert (t.customer.seqn, t.vendor.seqn) == (3, 3)
    assert t.vendor.on_handshake(t.handshake(eur(300))) == eur(300)


def test_an_opening_proposal_below_the_floor_gets_the_floor(customer_party: Party, vendor_party: Party) -> None:
    t = start(customer_party, vendor_party, ng.LimitStrategy(eur(300), opening_price=eur(200)),
              ng.PriceList(eur(400), floor=eur(300)))  # fmt: skip
    assert t.request["price"] == eur(200).fields() and t.request["last"] is False
    sent, outcome, _ = run(t)
    assert outcome == ng.Agreed(eur(300)) and len(sent) == 1
    assert t.vendor.on_handshake(t.handshake(eur(300))) == eur(300)


def test_an_opening_proposal_above_the_floor_is_offered_back(customer_party: Party, vendor_party: Party) -> None:
    t = start(customer_party, vendor_party, ng.LimitStrategy(eur(400), opening_price=eur(350)),
              ng.PriceList(eur(400), floor=eur(300)))  # fmt: skip
    _, outcome, _ = run(t)
    assert outcome == ng.Agreed(eur(350))
    assert t.vendor.on_handshake(t.handshake(eur(350))) == eur(350)


# --- (c) no agreement: both sides end, with the end step -----------------------------------------------------------


def test_a_limit_below_the_floor_ends_on_both_sides(customer_party: Party, vendor_party: Party) -> None:
    t = start(customer_party, vendor_party, ng.LimitStrategy(eur(200)), ng.PriceList(eur(400), floor=eur(300)))
    sent, outcome, vendor_end = run(t)
    assert isinstance(outcome, ng.Ended) and outcome.sealed is None  # the vendor ended it
    assert vendor_end is not None and "below" in vendor_end.reason
    said = [step_fields(s, i + 1, by_vendor=i % 2 == 0) for i, s in enumerate(sent)]
    assert [(f["price"]["amount"], f["last"], f.get("end", False)) for f in said] == [
        (400, False, False), (200, True, False), (200, True, True),
    ]  # fmt: skip
    assert t.customer.done and t.vendor.done
    # nothing more is taken on either side, and no Handshake
    assert reason_of(t.customer.on_step, sent[-1]) == "finished"
    assert reason_of(t.vendor.on_step, sent[-2]) == "finished"
    assert reason_of(t.vendor.on_handshake, t.handshake(eur(400))) == "finished"


def test_a_vendors_last_offer_over_the_limit_ends_on_both_sides(customer_party: Party, vendor_party: Party) -> None:
    t = start(customer_party, vendor_party, ng.LimitStrategy(eur(200)), ng.PriceList(eur(400)))  # floor = list
    sent, outcome, _ = run(t)
    assert isinstance(outcome, ng.Ended) and outcome.sealed is not None  # the customer ended it
    assert "over the limit" in outcome.reason
    end = step_fields(sent[-1], 2, by_vendor=False)
    assert end == {"nid": NID, "seqn": 2, "price": eur(400).fields(), "last": True, "end": True}
    assert t.customer.done and t.vendor.done


def test_a_last_proposal_below_the_floor_ends_on_both_sides(customer_party: Party, vendor_party: Party) -> None:
    @dataclass(frozen=True)
    class TakeItOrLeaveIt:
        def opening(self, products: list[str]) -> ng.Counter | None:
            return ng.Counter(eur(100), last=True)

        def answer(self, offer: Price | None, last: bool, turn: int) -> ng.Move:
            return ng.Break("never")

    t = start(customer_party, vendor_party, TakeItOrLeaveIt(), ng.PriceList(eur(400), floor=eur(300)))
    assert t.request["last"] is True
    sent, outcome, vendor_end = run(t)
    assert vendor_end is not None and isinstance(outcome, ng.Ended)
    assert step_fields(sent[0], 1, by_vendor=True)["end"] is True


def test_another_currency_ends_the_negotiation(customer_party: Party, vendor_party: Party) -> None:
    t = start(customer_party, vendor_party, ng.LimitStrategy(eur(500)), ng.PriceList(Price("USD", 100)))
    _, outcome, _ = run(t)
    assert isinstance(outcome, ng.Ended) and "USD" in outcome.reason
    t = start(customer_party, vendor_party, ng.LimitStrategy(eur(500), opening_price=eur(100)),
              ng.PriceList(Price("USD", 100)))  # fmt: skip
    assert isinstance(t.first, ng.Ended) and t.vendor.done
    _, outcome, _ = run(t)
    assert isinstance(outcome, ng.Ended)


def test_a_negotiation_has_at_most_255_messages(customer_party: Party, vendor_party: Party) -> None:
    @dataclass(frozen=True)
    class Haggler:  # never accepts, never says last
        def opening(self, products: list[str]) -> ng.Counter | None:
            return ng.Counter(eur(1))

        def answer(self, offer: Price | None, last: bool, turn: int) -> ng.Move:
            return ng.Counter(eur(1 + turn))

    @dataclass(frozen=True)
    class Stubborn:
        def opening(self, products: list[str]) -> ng.Counter | None:
            return None

        def answer(self, offer: Price | None, last: bool, turn: int) -> ng.Move:
            return ng.Counter(eur(1000))

    t = start(customer_party, vendor_party, Haggler(), Stubborn())
    out: ng.Sent | ng.Agreed | ng.Ended = t.first
    for _ in range(sm.MAX_SEQN // 2):
        assert isinstance(out, ng.Sent)
        out = t.customer.on_step(out.sealed)
        assert isinstance(out, ng.Sent)
        out = t.vendor.on_step(out.sealed)
    assert isinstance(out, ng.Sent) and t.vendor.seqn == sm.MAX_SEQN
    assert reason_of(t.customer.on_step, out.sealed) == "too_long"


def test_a_customer_accepts_only_the_offer_as_it_is(customer_party: Party, vendor_party: Party) -> None:
    @dataclass(frozen=True)
    class Cheat:
        def opening(self, products: list[str]) -> ng.Counter | None:
            return None

        def answer(self, offer: Price | None, last: bool, turn: int) -> ng.Move:
            return ng.Accept(eur(1))

    t = start(customer_party, vendor_party, Cheat(), ng.PriceList(eur(400)))
    assert isinstance(t.first, ng.Sent)
    assert reason_of(t.customer.on_step, t.first.sealed) == "bad_strategy"


# --- (d) replayed, reflected, skipped: the negotiation ends --------------------------------------------------


def haggle(customer_party: Party, vendor_party: Party) -> tuple[Talk, bytes, bytes]:
    """A negotiation after the vendor's first offer (SeqN 1) and the customer's counter-offer (SeqN 2)."""
    t = start(customer_party, vendor_party, ng.LimitStrategy(eur(300)), ng.PriceList(eur(400), floor=eur(300)))
    assert isinstance(t.first, ng.Sent)
    c2 = t.customer.on_step(t.first.sealed)
    assert isinstance(c2, ng.Sent)
    return t, t.first.sealed, c2.sealed


def assert_ended(side: ng.CustomerNegotiation | ng.VendorNegotiation, genuine: bytes) -> None:
    assert side.done
    assert reason_of(side.on_step, genuine) == "finished"


def test_a_replayed_step_ends_the_negotiation(customer_party: Party, vendor_party: Party) -> None:
    t, v1, c2 = haggle(customer_party, vendor_party)
    v3 = t.vendor.on_step(c2)
    assert isinstance(v3, ng.Sent)
    assert reason_of(t.customer.on_step, v1) == "bad_tag"  # the vendor's first offer again
    assert_ended(t.customer, v3.sealed)
    # and on the vendor's side: the customer's step again
    t, v1, c2 = haggle(customer_party, vendor_party)
    assert isinstance(t.vendor.on_step(c2), ng.Sent)
    assert reason_of(t.vendor.on_step, c2) == "bad_tag"
    assert t.vendor.done


def test_a_reflected_step_ends_the_negotiation(customer_party: Party, vendor_party: Party) -> None:
    t, _, c2 = haggle(customer_party, vendor_party)
    assert reason_of(t.customer.on_step, c2) == "bad_tag"  # its own step, sent back to it
    v3 = t.vendor.on_step(c2)
    assert isinstance(v3, ng.Sent)
    assert_ended(t.customer, v3.sealed)
    # the vendor's own step reflected to the vendor
    t, v1, _ = haggle(customer_party, vendor_party)
    assert reason_of(t.vendor.on_step, v1) == "bad_tag"
    assert t.vendor.done


def test_a_skipped_seqn_ends_the_negotiation(customer_party: Party, vendor_party: Party) -> None:
    t, _, c2 = haggle(customer_party, vendor_party)
    v3 = t.vendor.on_step(c2)
    assert isinstance(v3, ng.Sent)
    # a step numbered 5 (sealed as 5) where 3 is due
    step5 = sm.NEGOTIATION_STEP.encode({"nid": NID, "seqn": 5, "price": eur(300).fields(), "last": True})
    skipped = sm.sym_seal(ENKEY, sm.NONCE_V_STEP, 5, step5, sign_key=SIGNKEY)
    assert reason_of(t.customer.on_step, skipped) == "bad_tag"
    assert_ended(t.customer, v3.sealed)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"seqn": 5}, "replayed"),  # sealed as step 3, but says 5
        ({"seqn": 1}, "replayed"),
        ({"nid": b"\x00" * 8}, "replayed"),  # another negotiation's step under the same keys
    ],
)
def test_a_step_that_says_another_place_ends_the_negotiation(
    customer_party: Party, vendor_party: Party, fields: dict[str, Any], reason: str
) -> None:
    t, _, c2 = haggle(customer_party, vendor_party)
    v3 = t.vendor.on_step(c2)
    assert isinstance(v3, ng.Sent)
    content = sm.NEGOTIATION_STEP.encode({"nid": NID, "seqn": 3, "price": eur(300).fields(), "last": True, **fields})
    forged = sm.sym_seal(ENKEY, sm.NONCE_V_STEP, 3, content, sign_key=SIGNKEY)
    assert reason_of(t.customer.on_step, forged) == reason
    assert_ended(t.customer, v3.sealed)


def test_a_step_without_signkey_ends_the_negotiation(customer_party: Party, vendor_party: Party) -> None:
    """Someone who learned EnKey but not SignKey cannot make a step."""
    t, _, _ = haggle(customer_party, vendor_party)
    content = sm.NEGOTIATION_STEP.encode({"nid": NID, "seqn": 3, "price": eur(1).fields(), "last": True})
    forged = sm.sym_seal(ENKEY, sm.NONCE_V_STEP, 3, content, sign_key=b"\x00" * 32)
    assert reason_of(t.customer.on_step, forged) == "bad_mac"
    assert t.customer.done


# --- (e) the Handshake -------------------------------------------------------------------------------------


@pytest.fixture
def agreed(customer_party: Party, vendor_party: Party) -> Talk:
    t = start(customer_party, vendor_party, ng.LimitStrategy(eur(300)), ng.PriceList(eur(400), floor=eur(300)))
    _, outcome, _ = run(t)
    assert outcome == ng.Agreed(eur(300))
    return t


@pytest.mark.parametrize(
    ("price", "changes", "reason"),
    [
        (eur(400), {}, "wrong_price"),  # the vendor's first offer, not its last
        (eur(299), {}, "wrong_price"),
        (Price("USD", 300), {}, "wrong_price"),
        (eur(300), {"nid": b"\x00" * 8}, "wrong_handshake"),
        (eur(300), {"hp": sm.products_hash(PRODUCTS[:1])}, "wrong_handshake"),
        (eur(300), {"vendor_id": b"\x00" * 32}, "wrong_handshake"),
    ],
)
def test_the_vendor_takes_a_handshake_only_at_its_last_offer_for_this_purchase(
    agreed: Talk, price: Price, changes: dict[str, Any], reason: str
) -> None:
    assert reason_of(agreed.vendor.on_handshake, agreed.handshake(price, **changes)) == reason
    assert not agreed.vendor.done
    assert agreed.vendor.on_handshake(agreed.handshake(eur(300))) == eur(300)  # the genuine one still goes through
    assert reason_of(agreed.vendor.on_handshake, agreed.handshake(eur(300))) == "finished"  # once (paper 5.3)


def test_a_handshake_signed_by_another_card_or_not_under_enkey_is_refused(
    agreed: Talk, ca: pki.CertificateAuthority
) -> None:
    other = party(ca, pki.Role.DEVICE, 0x03)
    content = sm.HANDSHAKE.encode({"nid": NID, "price": eur(300).fields(), "vendor_id": agreed.vendor.vendor_id,
                                   "hp": sm.products_hash(PRODUCTS)})  # fmt: skip
    forged = agreed.customer.seal_handshake(other.sign(content))
    assert reason_of(agreed.vendor.on_handshake, forged) == "bad_signature"
    wrong_key = sm.sym_seal(b"\x00" * 32, sm.NONCE_HANDSHAKE, 0, agreed.customer_party.sign(content))
    assert reason_of(agreed.vendor.on_handshake, wrong_key) == "bad_tag"
    as_step = sm.sym_seal(ENKEY, sm.NONCE_V_STEP, 0, agreed.customer_party.sign(content))
    assert reason_of(agreed.vendor.on_handshake, as_step) == "bad_tag"
    assert agreed.vendor.on_handshake(agreed.customer.seal_handshake(agreed.customer_party.sign(content))) == eur(300)


def test_no_handshake_before_the_vendor_offered(customer_party: Party, vendor_party: Party) -> None:
    t = start(customer_party, vendor_party, ng.LimitStrategy(eur(300)), ng.PriceList(eur(250)))
    v = ng.VendorNegotiation(NID, ENKEY, SIGNKEY, ng.PriceList(eur(250)), products=list(PRODUCTS),
                             customer_cert=customer_party.cert, vendor_id=t.vendor.vendor_id)  # fmt: skip
    assert reason_of(v.on_handshake, t.handshake(eur(250))) == "wrong_price"
