"""The fair exchange's sans-I/O core (protocols/fairx.py): the flow, the TTP, the attacks, and a model check.

Real keys, real signatures and HPKE: only the transport and the cards' stores are left out (the applet and the
hosts carry the effects out; their tests perform the faults over TCP).
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, replace
from typing import Any

import pytest

from cardnet.crypto import profile
from cardnet.protocols import fairx as fx
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.trn.token import Token, mint
from cardnet.protocols.trn.transfer import statement_bytes
from cardnet.wire.ids import Uid

A = Uid(bytes.fromhex("aa" * 12), 0)
B = Uid(bytes.fromhex("bb" * 12), 0)
C = Uid(bytes.fromhex("cc" * 12), 0)
OID1, OID2 = b"\x01" * 16, b"\x02" * 16


def _key(seed: int) -> profile.PrivateKey:
    return profile.generate_private_key(random.Random(seed).randbytes)


KA, KB, KT, KI, KX = (_key(s) for s in (1, 2, 3, 4, 5))  # a, b, the TTP, the vouchers' issuer, a stranger
ISSUER = Uid(bytes.fromhex("11" * 12), 0)
TTP = Uid(bytes.fromhex("77" * 12), 0)  # the TTP both cards follow (the offer names it)
V1 = mint(OID1, ISSUER, b"concert, seat 7", lambda d: profile.sign(KI, d)).encode()
V2 = mint(OID2, ISSUER, b"voucher: one coffee", lambda d: profile.sign(KI, d)).encode()
ISSUER_CERT = b"cert of the issuer"


def issuer_key(cert: bytes, issuer: Uid) -> profile.PublicKey:
    """The card's check of an issuer's certificate (here: the one issuer, KI)."""
    if cert != ISSUER_CERT or issuer != ISSUER:
        raise ProtocolError("unknown_ca", "not the issuer's certificate")
    return KI.public_key()


def signer(key: profile.PrivateKey) -> fx.Signer:
    return lambda data: profile.sign(key, data)


def sealer(to: profile.PrivateKey) -> fx.Sealer:
    return lambda pt, info: profile.hpke_seal(to.public_key(), pt, info)


def opener(key: profile.PrivateKey) -> fx.Opener:
    return lambda sealed, info: profile.hpke_open(key, sealed, info)


class Ttp:
    """The TTP's decisions, first-wins per exchange (the service keeps them durably)."""

    def __init__(self) -> None:
        self.decisions: dict[bytes, tuple[str, bytes | None]] = {}

    def answer(self, requester: Uid, f: dict[str, Any]) -> dict[str, Any]:
        req = fx.parse_request(f)
        decision, adm = fx.ttp_decide(
            req,
            requester=requester,
            a_key=KA.public_key(),
            b_key=KB.public_key(),
            prior=self.decisions.get(req.xid),
            sign=signer(KT),
            my_cert=b"cert of the ttp",
            me=TTP,
        )
        self.decisions.setdefault(req.xid, decision)
        return adm


def offer(n1: bytes = b"n" * 16) -> tuple[fx.Outcome, fx.Outcome]:
    """a starts; the offer reaches b: (a's outcome, b's outcome)."""
    oa = fx.start(
        a=A,
        ttp=TTP,
        b=B,
        my_cert=b"cert of a",
        give_token=V1,
        want=OID2,
        n1=n1,
        peer_cert=b"cert of b",
        seal=sealer(KB),
        sign=signer(KA),
        issuer_cert=ISSUER_CERT,
    )
    [(_, code, m1)] = oa.send
    assert code == fx.OFFER
    ob = fx.on_offer(roundtrip(code, m1), me=B, peer=A, a_key=KA.public_key(), open_=opener(KB), issuer_key=issuer_key)
    return oa, ob


def roundtrip(code: int, fields: dict[str, Any]) -> dict[str, Any]:
    """Through the wire: encoded and decoded as the session carries it."""
    got_code, got = fx.decode_inner(fx.encode_inner(code, fields))
    assert got_code == code
    return got


def agreed(n2: bytes = b"m" * 16) -> tuple[fx.Exchange, fx.Outcome]:
    """a offered, b accepted: (a's record, b's outcome with m2)."""
    oa, ob = offer()
    assert oa.exchange is not None and ob.exchange is not None
    ob2 = fx.accept(ob.exchange, n2=n2, seal=sealer(KA), sign=signer(KB), want_token=V2, issuer_cert=ISSUER_CERT)
    return oa.exchange, ob2


def confirm(a: fx.Exchange, ob2: fx.Outcome) -> fx.Outcome:
    """b's agreement (in ``ob2``) reaches a: a checks it and confirms."""
    return fx.on_agree(
        a,
        sent(ob2, fx.AGREE),
        b_key=KB.public_key(),
        open_=opener(KA),
        sign=signer(KA),
        my_cert=b"ca",
        issuer_key=issuer_key,
    )


def sent(o: fx.Outcome, code: int) -> dict[str, Any]:
    [(_, c, f)] = o.send
    assert c == code
    return roundtrip(c, f)


def test_the_normal_flow_swaps_the_vouchers_with_statements_the_authority_can_check() -> None:
    oa, ob = offer()
    assert oa.lock == OID1 and oa.exchange is not None and oa.exchange.phase is fx.Phase.OFFERED
    assert ob.lock is None and ob.exchange is not None and ob.exchange.phase is fx.Phase.PROPOSED  # nothing locked
    ob2 = fx.accept(ob.exchange, n2=b"m" * 16, seal=sealer(KA), sign=signer(KB), want_token=V2, issuer_cert=ISSUER_CERT)
    assert ob2.lock == OID2 and ob2.exchange is not None and ob2.exchange.phase is fx.Phase.AGREED
    oa2 = confirm(oa.exchange, ob2)
    assert oa2.exchange is not None and oa2.exchange.phase is fx.Phase.CONFIRMED and oa2.drop is None
    ob3 = fx.on_confirm(ob2.exchange, sent(oa2, fx.CONFIRM), a_key=KA.public_key())
    assert ob3.exchange is not None and ob3.exchange.phase is fx.Phase.DONE
    assert ob3.drop == OID2 and ob3.receive is not None and ob3.receive.token == V1
    oa3 = fx.on_commitment(oa2.exchange, sent(ob3, fx.COMMITMENT))
    assert oa3.exchange is not None and oa3.exchange.phase is fx.Phase.DONE
    assert oa3.drop == OID1 and oa3.receive is not None and oa3.receive.token == V2
    xid = fx.xid_of(b"m" * 16)
    assert oa3.exchange.xid == ob3.exchange.xid == xid
    # each receiver holds the giver's own signed movement statement, as a TRN commit gives it
    nonce = fx.move_nonce(xid)
    assert ob3.receive.frm == A and ob3.receive.nonce == nonce
    profile.verify(KA.public_key(), ob3.receive.st, statement_bytes(OID1, A, B, nonce))
    assert oa3.receive.frm == B and oa3.receive.nonce == nonce
    profile.verify(KB.public_key(), oa3.receive.st, statement_bytes(OID2, B, A, nonce))
    # the records survive the card's store
    for x in (oa3.exchange, ob3.exchange):
        assert fx.Exchange.decode(x.encode()) == x


def test_duplicates_are_answered_again_and_change_nothing() -> None:
    a, ob2 = agreed()
    m2 = sent(ob2, fx.AGREE)
    oa2 = fx.on_agree(
        a, m2, b_key=KB.public_key(), open_=opener(KA), sign=signer(KA), my_cert=b"cert of a", issuer_key=issuer_key
    )
    assert oa2.exchange is not None and ob2.exchange is not None
    again = fx.on_agree(
        oa2.exchange, m2, b_key=KB.public_key(), open_=opener(KA), sign=signer(KA), my_cert=b"cert of a",
        issuer_key=issuer_key,
    )  # fmt: skip
    assert again.exchange == oa2.exchange and again.lock is again.drop is None and again.receive is None
    assert sent(again, fx.CONFIRM)["xid"] == sent(oa2, fx.CONFIRM)["xid"]  # m3 again (it was lost)
    m3 = sent(oa2, fx.CONFIRM)
    ob3 = fx.on_confirm(ob2.exchange, m3, a_key=KA.public_key())
    assert ob3.exchange is not None
    again_b = fx.on_confirm(ob3.exchange, m3, a_key=KA.public_key())
    assert again_b.receive is None and again_b.drop is None and sent(again_b, fx.COMMITMENT) == sent(ob3, fx.COMMITMENT)
    oa3 = fx.on_commitment(oa2.exchange, sent(ob3, fx.COMMITMENT))
    assert oa3.exchange is not None
    assert fx.on_commitment(oa3.exchange, sent(ob3, fx.COMMITMENT)) == fx.Outcome(oa3.exchange)


def test_m3_lost_the_initiator_resolves_and_the_responders_abort_gets_the_resolve() -> None:
    ttp = Ttp()
    a, ob2 = agreed()
    oa2 = confirm(a, ob2)
    assert oa2.exchange is not None and ob2.exchange is not None
    # m3 lost: a resolves
    ra = fx.resolve(oa2.exchange, signer(KA), b"cert of a")
    assert ra.exchange is not None
    adm = ttp.answer(A, sent(ra, fx.REQUEST))
    assert adm["decision"] == fx.RESOLVED
    oa3 = fx.on_admission(ra.exchange, roundtrip(fx.ADMISSION, adm), ttp_key=KT.public_key())
    assert oa3.drop == OID1 and oa3.receive is not None and oa3.receive.token == V2
    # b times out and asks to abort: the TTP decided already; b gets v1 with a's statement
    rb = fx.abort(ob2.exchange, signer(KB), b"cert of b")
    assert rb.exchange is not None and rb.exchange.phase is fx.Phase.ABORTING
    adm_b = ttp.answer(B, sent(rb, fx.REQUEST))
    assert adm_b["decision"] == fx.RESOLVED
    ob3 = fx.on_admission(rb.exchange, roundtrip(fx.ADMISSION, adm_b), ttp_key=KT.public_key())
    assert ob3.drop == OID2 and ob3.receive is not None and ob3.receive.token == V1
    profile.verify(KA.public_key(), ob3.receive.st, statement_bytes(OID1, A, B, fx.move_nonce(rb.exchange.xid or b"")))
    # acted on once: the same admission again does nothing
    assert ob3.exchange is not None
    again = fx.on_admission(ob3.exchange, roundtrip(fx.ADMISSION, adm_b), ttp_key=KT.public_key())
    assert again == fx.Outcome(ob3.exchange)


def test_the_responder_aborts_first_then_ignores_m3_and_the_initiators_resolve_is_aborted() -> None:
    ttp = Ttp()
    a, ob2 = agreed()
    oa2 = confirm(a, ob2)
    assert oa2.exchange is not None and ob2.exchange is not None
    rb = fx.abort(ob2.exchange, signer(KB), b"cert of b")
    assert rb.exchange is not None
    adm = ttp.answer(B, sent(rb, fx.REQUEST))
    assert adm["decision"] == fx.ABORTED
    # m3 arrives late: b asked to abort, so it is ignored (b must not store v1 and get v2 back)
    late = fx.on_confirm(rb.exchange, sent(oa2, fx.CONFIRM), a_key=KA.public_key())
    assert late == fx.Outcome(rb.exchange)
    ob3 = fx.on_admission(rb.exchange, roundtrip(fx.ADMISSION, adm), ttp_key=KT.public_key())
    assert ob3.unlock == OID2 and ob3.receive is None
    ra = fx.resolve(oa2.exchange, signer(KA), b"cert of a")
    assert ra.exchange is not None
    adm_a = ttp.answer(A, sent(ra, fx.REQUEST))
    assert adm_a["decision"] == fx.ABORTED  # first-wins
    oa3 = fx.on_admission(ra.exchange, roundtrip(fx.ADMISSION, adm_a), ttp_key=KT.public_key())
    assert oa3.unlock == OID1 and oa3.receive is None and oa3.drop is None


def test_an_initiator_that_gave_up_refuses_a_late_m2_and_asks_to_abort() -> None:
    ttp = Ttp()
    a, ob2 = agreed()
    g = fx.give_up(a)
    assert g.unlock == OID1 and g.exchange is not None and g.exchange.phase is fx.Phase.GAVE_UP
    late = confirm(g.exchange, ob2)
    assert late.exchange is not None and late.lock is late.drop is late.receive is None
    req = sent(late, fx.REQUEST)
    assert req["kind"] == "abort" and "st" not in req  # a never signed its movement: it cannot be resolved
    adm = ttp.answer(A, req)
    assert adm["decision"] == fx.ABORTED
    assert ob2.exchange is not None
    ob3 = fx.on_admission(
        fx.abort(ob2.exchange, signer(KB), b"cert of b").exchange or ob2.exchange, adm, ttp_key=KT.public_key()
    )
    assert ob3.unlock == OID2
    # a forged "resolved" for a given-up exchange is not followed: v1 came back already
    forged = {"xid": adm["xid"], "decision": fx.RESOLVED}
    forged["sig"] = profile.sign(KT, fx.admission_bytes(fx.RESOLVED, adm["xid"], None))
    closed = fx.on_admission(late.exchange, forged, ttp_key=KT.public_key())
    assert closed.receive is None and closed.drop is None


@pytest.mark.parametrize("first", ["resolve", "abort"])
def test_resolve_and_abort_at_once_get_one_decision(first: str) -> None:
    ttp = Ttp()
    a, ob2 = agreed()
    oa2 = confirm(a, ob2)
    assert oa2.exchange is not None and ob2.exchange is not None
    ra, rb = fx.resolve(oa2.exchange, signer(KA), b"cert of a"), fx.abort(ob2.exchange, signer(KB), b"cert of b")
    asks = [(A, sent(ra, fx.REQUEST)), (B, sent(rb, fx.REQUEST))]
    if first == "abort":
        asks.reverse()
    answers = {who: ttp.answer(who, f) for who, f in asks}
    assert answers[A]["decision"] == answers[B]["decision"] == (fx.RESOLVED if first == "resolve" else fx.ABORTED)
    assert ra.exchange is not None and rb.exchange is not None
    oa3 = fx.on_admission(ra.exchange, answers[A], ttp_key=KT.public_key())
    ob3 = fx.on_admission(rb.exchange, answers[B], ttp_key=KT.public_key())
    if first == "resolve":
        assert (oa3.receive and oa3.receive.oid, ob3.receive and ob3.receive.oid) == (OID2, OID1)
    else:
        assert (oa3.unlock, ob3.unlock) == (OID1, OID2)


def test_an_answered_offer_cannot_be_accepted_again() -> None:
    """The appendix's attack needs b to make a second exchange of one offer and abort it: b's card refuses."""
    _a, ob2 = agreed()
    assert ob2.exchange is not None
    with pytest.raises(ProtocolError, match="already answered"):
        fx.accept(ob2.exchange, n2=b"z" * 16, seal=sealer(KA), sign=signer(KB), want_token=V2, issuer_cert=ISSUER_CERT)
    # and an abort admission for another exchange name does not touch this one
    other = fx.xid_of(b"z" * 16)
    adm = {"xid": other, "decision": fx.ABORTED, "sig": profile.sign(KT, fx.admission_bytes(fx.ABORTED, other, None))}
    with pytest.raises(ProtocolError, match="another exchange"):
        fx.on_admission(ob2.exchange, adm, ttp_key=KT.public_key())


def _m2_variants(m2: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    forged_sig = dict(m2, sig=profile.sign(KX, fx.agree_bytes(m2["xid"], m2["m1h"], m2["box"])))
    other_box = profile.hpke_seal(KA.public_key(), V1, fx.box_info(b"v2", m2["xid"]))  # not the voucher wanted
    wrong_voucher = dict(m2, box=other_box, sig=profile.sign(KB, fx.agree_bytes(m2["xid"], m2["m1h"], other_box)))
    bad_st = dict(m2, st=profile.sign(KB, statement_bytes(OID2, B, C, fx.move_nonce(m2["xid"]))))
    altered = Token.decode(V2)  # b's own voucher, body rewritten: b's signature on m2 holds, the issuer's does not
    altered_box = profile.hpke_seal(
        KA.public_key(), Token(altered.oid, altered.issuer, altered.sig, b"ten coffees").encode(),
        fx.box_info(b"v2", m2["xid"]),
    )  # fmt: skip
    altered_voucher = dict(m2, box=altered_box, sig=profile.sign(KB, fx.agree_bytes(m2["xid"], m2["m1h"], altered_box)))
    return [
        ("bad_agree", altered_voucher),
        ("bad_agree", dict(m2, issuer_cert=b"a stranger's certificate")),
        ("bad_signature", forged_sig),
        ("bad_signature", dict(m2, box=m2["box"][:-1] + bytes([m2["box"][-1] ^ 1]))),
        ("bad_agree", dict(m2, m1h=b"\x00" * 32)),
        ("bad_agree", wrong_voucher),
        ("bad_signature", bad_st),
    ]


def test_forged_or_altered_agreements_change_nothing() -> None:
    a, ob2 = agreed()
    m2 = sent(ob2, fx.AGREE)
    for reason, bad in _m2_variants(m2):
        with pytest.raises(ProtocolError) as caught:
            fx.on_agree(
                a,
                bad,
                b_key=KB.public_key(),
                open_=opener(KA),
                sign=signer(KA),
                my_cert=b"cert of a",
                issuer_key=issuer_key,
            )
        assert caught.value.reason == reason, (reason, caught.value)
    assert a.phase is fx.Phase.OFFERED  # (records are values: a refused step leaves the stored one)


def test_forged_or_altered_confirmations_commitments_and_admissions_change_nothing() -> None:
    a, ob2 = agreed()
    assert ob2.exchange is not None
    oa2 = confirm(a, ob2)
    assert oa2.exchange is not None
    m3 = sent(oa2, fx.CONFIRM)
    xid = m3["xid"]
    for bad in (
        dict(m3, sig=profile.sign(KX, fx.confirm_bytes(xid, profile.sha256(a.m1)))),
        dict(m3, st=profile.sign(KA, statement_bytes(OID1, A, C, fx.move_nonce(xid)))),
    ):
        with pytest.raises(ProtocolError, match="not signed"):
            fx.on_confirm(ob2.exchange, bad, a_key=KA.public_key())
    with pytest.raises(ProtocolError, match="another exchange"):
        fx.on_confirm(ob2.exchange, dict(m3, xid=b"\x00" * 32), a_key=KA.public_key())
    with pytest.raises(ProtocolError, match="does not open"):
        fx.on_commitment(oa2.exchange, {"xid": xid, "n2": b"q" * 16})
    stranger = {
        "xid": xid,
        "decision": fx.RESOLVED,
        "sig": profile.sign(KX, fx.admission_bytes(fx.RESOLVED, xid, None)),
    }
    with pytest.raises(ProtocolError, match="not signed"):
        fx.on_admission(oa2.exchange, stranger, ttp_key=KT.public_key())
    no_st = {"xid": xid, "decision": fx.RESOLVED, "sig": profile.sign(KT, fx.admission_bytes(fx.RESOLVED, xid, None))}
    with pytest.raises(ProtocolError, match="without a's movement statement"):
        fx.on_admission(ob2.exchange, no_st, ttp_key=KT.public_key())
    altered = {"xid": xid, "decision": fx.ABORTED, "sig": profile.sign(KT, fx.admission_bytes(fx.RESOLVED, xid, None))}
    with pytest.raises(ProtocolError, match="not signed"):
        fx.on_admission(oa2.exchange, altered, ttp_key=KT.public_key())


def test_the_ttp_refuses_what_it_cannot_attribute_to_a_party_of_that_exchange() -> None:
    ttp = Ttp()
    a, ob2 = agreed()
    assert ob2.exchange is not None
    oa2 = confirm(a, ob2)
    assert oa2.exchange is not None
    resolve = sent(fx.resolve(oa2.exchange, signer(KA), b"cert of a"), fx.REQUEST)
    abort = sent(fx.abort(ob2.exchange, signer(KB), b"cert of b"), fx.REQUEST)
    cases: list[tuple[Uid, dict[str, Any], str]] = [
        (C, abort, "not_a_party"),  # a stranger replays b's abort
        (B, dict(resolve, sig=profile.sign(KB, fx.request_bytes("resolve", ob2.exchange.xid or b"", None))), ""),
        (A, dict(resolve, st=None), "bad_request"),
        (A, dict(resolve, sig=profile.sign(KX, b"x")), "bad_signature"),
        (B, dict(abort, m2=fx.AGREE_SCHEMA.encode(dict(fx.AGREE_SCHEMA.decode(abort["m2"]), m1h=b"\x00" * 32))), ""),
    ]
    for who, asked, reason in cases:
        with pytest.raises(ProtocolError) as caught:
            ttp.answer(who, {k: v for k, v in asked.items() if v is not None})
        if reason:
            assert caught.value.reason == reason, caught.value
    assert ttp.decisions == {}  # nothing was decided by any of them


def test_the_offer_must_come_from_the_session_peer_it_names() -> None:
    oa = fx.start(
        a=A,
        ttp=TTP,
        b=B,
        my_cert=b"cert of a",
        give_token=V1,
        want=OID2,
        n1=b"n" * 16,
        peer_cert=b"",
        seal=sealer(KB),
        sign=signer(KA),
        issuer_cert=ISSUER_CERT,
    )
    m1 = sent(oa, fx.OFFER)
    with pytest.raises(ProtocolError, match="other cards"):
        fx.on_offer(m1, me=B, peer=C, a_key=KA.public_key(), open_=opener(KB), issuer_key=issuer_key)
    with pytest.raises(ProtocolError, match="not signed"):
        fx.on_offer(dict(m1, want=OID1), me=B, peer=A, a_key=KA.public_key(), open_=opener(KB), issuer_key=issuer_key)
    with pytest.raises(ProtocolError, match="not sealed to this card"):
        fx.on_offer(m1, me=B, peer=A, a_key=KA.public_key(), open_=opener(KX), issuer_key=issuer_key)
    # a's own voucher with its body rewritten, sealed into an offer a signs: the issuer's signature does not hold
    genuine = Token.decode(V1)
    box = profile.hpke_seal(
        KB.public_key(), Token(genuine.oid, genuine.issuer, genuine.sig, b"front row").encode(),
        fx.box_info(b"v1", m1["n1"]),
    )  # fmt: skip
    altered = dict(m1, box=box)
    altered["sig"] = profile.sign(KA, fx.offer_bytes(altered))
    for bad in (altered, dict(m1, issuer_cert=b"a stranger's certificate")):
        with pytest.raises(ProtocolError) as caught:
            fx.on_offer(bad, me=B, peer=A, a_key=KA.public_key(), open_=opener(KB), issuer_key=issuer_key)
        assert caught.value.reason == "bad_offer"
    with pytest.raises(ProtocolError, match="two different vouchers"):
        fx.start(
            a=A,
            ttp=TTP,
            b=B,
            my_cert=b"cert of a",
            give_token=V1,
            want=OID1,
            n1=b"n" * 16,
            peer_cert=b"",
            seal=sealer(KB),
            sign=signer(KA),
            issuer_cert=ISSUER_CERT,
        )


def test_recovery_orders_are_refused_in_the_wrong_phase() -> None:
    a, ob2 = agreed()
    assert ob2.exchange is not None
    with pytest.raises(ProtocolError, match="resolve is for a confirmed"):
        fx.resolve(a, signer(KA), b"cert of a")
    with pytest.raises(ProtocolError, match="abort is for an agreed"):
        fx.abort(a, signer(KA), b"cert of a")
    oa2 = confirm(a, ob2)
    assert oa2.exchange is not None
    with pytest.raises(ProtocolError, match="only an offer not yet confirmed"):
        fx.give_up(oa2.exchange)


# -- a model check: every schedule of deliveries, duplicates, losses and recovery orders -------------------


@dataclass(frozen=True)
class World:
    a: bytes | None  # the encoded records (None: no record yet)
    b: bytes | None
    ttp: tuple[tuple[bytes, str, bytes], ...]  # the TTP's decisions: (xid, verdict, a's statement or b"")
    wire: frozenset[tuple[str, int, bytes]]  # (to, code, encoded fields): delivered any number of times, or never
    holdings: tuple[tuple[str, str, str], ...]  # (card, oid hex, status)
    steps: int = 0


class Explorer:
    def initial(self) -> World:
        oa = fx.start(
            a=A,
            ttp=TTP,
            b=B,
            my_cert=b"cert of a",
            give_token=V1,
            want=OID2,
            n1=b"n" * 16,
            peer_cert=b"cb",
            seal=sealer(KB),
            sign=signer(KA),
            issuer_cert=ISSUER_CERT,
        )
        h = {("a", OID1.hex()): "enabled", ("b", OID2.hex()): "enabled"}
        return self._apply(World(None, None, (), frozenset(), ()), "a", oa, h)

    def _apply(self, w: World, who: str, o: fx.Outcome, h: dict[tuple[str, str], str] | None = None) -> World:
        hold = dict(h if h is not None else {(c, oid): s for c, oid, s in w.holdings})
        if o.lock is not None:
            assert hold.get((who, o.lock.hex())) == "enabled", (who, "locks a voucher it does not hold usable")
            hold[(who, o.lock.hex())] = "exchanging"
        if o.unlock is not None:
            assert hold.get((who, o.unlock.hex())) == "exchanging"
            hold[(who, o.unlock.hex())] = "enabled"
        if o.drop is not None:
            assert hold.pop((who, o.drop.hex())) == "exchanging"
        if o.receive is not None:
            assert (who, o.receive.oid.hex()) not in hold
            hold[(who, o.receive.oid.hex())] = "trustless"
        wire = set(w.wire)
        for to, code, f in o.send:
            dest = ("b" if who == "a" else "a") if to == "peer" else "ttp:" + who
            wire.add((dest, code, fx.INNER[code].encode(f)))
        rec = None if o.exchange is None else o.exchange.encode()
        holdings = tuple(sorted((c, oid, s) for (c, oid), s in hold.items()))
        return replace(w, wire=frozenset(wire), holdings=holdings, **{who: rec}, steps=w.steps + 1)

    def moves(self, w: World) -> list[World]:
        out = []
        for msg in sorted(w.wire):
            with contextlib.suppress(ProtocolError):
                out.append(self.deliver(w, msg))
        for who in ("a", "b"):
            raw = getattr(w, who)
            if raw is None:
                continue
            x = fx.Exchange.decode(raw)
            for order in (
                fx.give_up,
                lambda x: fx.resolve(x, signer(KA), b"ca"),
                lambda x: fx.abort(x, signer(KB), b"cb"),
            ):
                with contextlib.suppress(ProtocolError):
                    out.append(self._apply(w, who, order(x)))
            if x.phase is fx.Phase.PROPOSED:
                out.append(self._apply(w, who, fx.reject(x)))
                acc = fx.accept(
                    x, n2=b"m" * 16, seal=sealer(KA), sign=signer(KB), want_token=V2, issuer_cert=ISSUER_CERT
                )
                out.append(self._apply(w, who, acc))
        return out

    def deliver(self, w: World, msg: tuple[str, int, bytes]) -> World:
        to, code, raw = msg
        f = fx.INNER[code].decode(raw)
        if to.startswith("ttp:"):
            who = to[4:]
            decisions = {xid: (verdict, st or None) for xid, verdict, st in w.ttp}
            req = fx.parse_request(f)
            decision, adm = fx.ttp_decide(
                req,
                requester=A if who == "a" else B,
                a_key=KA.public_key(),
                b_key=KB.public_key(),
                prior=decisions.get(req.xid),
                sign=signer(KT),
                my_cert=b"ct",
                me=TTP,
            )
            decisions.setdefault(req.xid, decision)
            ttp = tuple(sorted((xid, v, st or b"") for xid, (v, st) in decisions.items()))
            wire = set(w.wire) | {(who, fx.ADMISSION, fx.ADMISSION_SCHEMA.encode(adm))}
            return replace(w, ttp=ttp, wire=frozenset(wire), steps=w.steps + 1)
        raw_x = getattr(w, to)
        if code == fx.OFFER:
            if raw_x is not None:
                raise ProtocolError("duplicate", "the card has this offer already")
            return self._apply(
                w, to, fx.on_offer(f, me=B, peer=A, a_key=KA.public_key(), open_=opener(KB), issuer_key=issuer_key)
            )
        if raw_x is None:
            raise ProtocolError("no_exchange", "nothing to apply it to")
        x = fx.Exchange.decode(raw_x)
        if code == fx.AGREE:
            o = fx.on_agree(
                x,
                f,
                b_key=KB.public_key(),
                open_=opener(KA),
                sign=signer(KA),
                my_cert=b"cert of a",
                issuer_key=issuer_key,
            )
        elif code == fx.CONFIRM:
            o = fx.on_confirm(x, f, a_key=KA.public_key())
        elif code == fx.COMMITMENT:
            o = fx.on_commitment(x, f)
        elif code == fx.REFUSAL:
            o = fx.on_refusal(x, f["reason"])
        else:
            o = fx.on_admission(x, f, ttp_key=KT.public_key())
        return self._apply(w, to, o)


def _usable(w: World) -> dict[str, list[str]]:
    where: dict[str, list[str]] = {OID1.hex(): [], OID2.hex(): []}
    for card, oid, status in w.holdings:
        if status in ("enabled", "trustless"):
            where[oid].append(card)
    return where


def _held(w: World) -> dict[str, list[str]]:
    """Where each voucher's object is kept: a holding, or an exchange record waiting to store it."""
    where: dict[str, list[str]] = {OID1.hex(): [], OID2.hex(): []}
    for card, oid, _ in w.holdings:
        where[oid].append(card)
    for card in ("a", "b"):
        raw = getattr(w, card)
        x = None if raw is None else fx.Exchange.decode(raw)
        if x is not None and x.token_in is not None and x.phase not in fx.FINISHED:
            where[x.gets.hex()].append(card + " (record)")
    return where


def _finish(ex: Explorer, w: World) -> World:
    """Recovery from ``w``: every party follows the protocol to the end over a network that now delivers."""
    for _ in range(40):
        before = w
        for msg in sorted(w.wire):  # deliver everything once more (duplicates are harmless)
            with contextlib.suppress(ProtocolError):
                w = ex.deliver(w, msg)
        for who in ("a", "b"):
            raw = getattr(w, who)
            if raw is None:
                continue
            x = fx.Exchange.decode(raw)
            if x.phase is fx.Phase.PROPOSED:
                w = ex._apply(w, who, fx.reject(x))
            elif x.phase is fx.Phase.OFFERED:
                w = ex._apply(w, who, fx.give_up(x))
            elif x.phase in (fx.Phase.CONFIRMED, fx.Phase.RESOLVING):
                w = ex._apply(w, who, fx.resolve(x, signer(KA), b"ca"))
            elif x.phase in (fx.Phase.AGREED, fx.Phase.ABORTING):
                w = ex._apply(w, who, fx.abort(x, signer(KB), b"cb"))
        if (w.a, w.b, w.ttp, w.holdings, w.wire) == (before.a, before.b, before.ttp, before.holdings, before.wire):
            return w
    raise AssertionError("recovery does not end")


def test_every_schedule_is_safe_and_recovery_always_ends_fair() -> None:
    """Breadth-first over every reachable state (messages delivered any number of times or never, every recovery
    order at every point, the TTP first-wins): at most one usable copy of each voucher at every instant, none lost;
    and from every state, recovery ends with both vouchers swapped or both back home."""
    ex = Explorer()
    start = ex.initial()
    seen = {start: None}
    frontier = [start]
    ends: dict[str, int] = {}
    while frontier:
        nxt = []
        for w in frontier:
            usable, held = _usable(w), _held(w)
            for oid in (OID1.hex(), OID2.hex()):
                assert len(usable[oid]) <= 1, (oid, "usable on two cards", w)
                assert held[oid], (oid, "lost", w)
            end = _finish(ex, w)
            assert end.a is not None and fx.Exchange.decode(end.a).phase in (*fx.FINISHED, fx.Phase.GAVE_UP)
            assert end.b is None or fx.Exchange.decode(end.b).phase in fx.FINISHED
            where = {oid: (cards, status) for cards, oid, status in [(c, o, s) for c, o, s in end.holdings]}
            swapped = where.get(OID1.hex(), ("", ""))[0] == "b" and where.get(OID2.hex(), ("", ""))[0] == "a"
            home = where.get(OID1.hex()) == ("a", "enabled") and where.get(OID2.hex()) == ("b", "enabled")
            assert swapped or home, end
            assert len(end.holdings) == 2, end
            ends["swapped" if swapped else "home"] = ends.get("swapped" if swapped else "home", 0) + 1
            for w2 in ex.moves(w):
                key = replace(w2, steps=0)
                if key not in seen:
                    seen[key] = None
                    nxt.append(key)
        frontier = nxt
    assert ends.get("swapped", 0) > 0 and ends.get("home", 0) > 0, ends
    phases = {(fx.Exchange.decode(r).role, fx.Exchange.decode(r).phase) for w in seen for r in (w.a, w.b) if r}
    assert {p for role, p in phases if role == fx.INITIATOR} == {
        fx.Phase.OFFERED, fx.Phase.GAVE_UP, fx.Phase.CONFIRMED, fx.Phase.RESOLVING, fx.Phase.DONE, fx.Phase.ABORTED
    }  # fmt: skip
    assert {p for role, p in phases if role == fx.RESPONDER} == {
        fx.Phase.PROPOSED, fx.Phase.AGREED, fx.Phase.ABORTING, fx.Phase.DONE, fx.Phase.ABORTED
    }  # fmt: skip
    assert {v for w in seen for _, v, _ in w.ttp} == {fx.RESOLVED, fx.ABORTED}


def test_the_offer_names_the_ttp_and_only_that_ttp_decides() -> None:
    """Each card acts on its own TTP's admissions only: were the two cards to follow different TTPs, one could
    resolve and the other abort the same exchange (a voucher on both cards). So the offer names a's TTP under a's
    signature, b takes part only if it follows that one (``same_ttp``), and another TTP refuses to decide."""
    oa, ob = offer()
    m1 = sent(oa, fx.OFFER)
    assert m1["ttp"] == TTP and fx.same_ttp(m1, TTP)
    assert not fx.same_ttp(m1, C) and not fx.same_ttp(m1, None)  # b follows another TTP, or none: b refuses
    with pytest.raises(ProtocolError, match="not signed"):  # the TTP is signed: a host cannot swap it
        fx.on_offer(dict(m1, ttp=C), me=B, peer=A, a_key=KA.public_key(), open_=opener(KB), issuer_key=issuer_key)
    assert ob.exchange is not None
    a, ob2 = agreed()
    assert ob2.exchange is not None
    oa2 = confirm(a, ob2)
    assert oa2.exchange is not None
    abort = sent(fx.abort(ob2.exchange, signer(KB), b"cert of b"), fx.REQUEST)
    req = fx.parse_request(abort)
    with pytest.raises(ProtocolError) as caught:
        fx.ttp_decide(req, requester=B, a_key=KA.public_key(), b_key=KB.public_key(), prior=None, sign=signer(KT),
                      my_cert=b"cert of another ttp", me=C)  # fmt: skip
    assert caught.value.reason == "not_my_exchange"
    decision, _ = fx.ttp_decide(req, requester=B, a_key=KA.public_key(), b_key=KB.public_key(), prior=None,
                                sign=signer(KT), my_cert=b"cert of the ttp", me=TTP)  # fmt: skip
    assert decision == (fx.ABORTED, None)
