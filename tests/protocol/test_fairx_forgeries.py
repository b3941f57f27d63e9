"""Forged and altered fairx messages fed to genuine cards (issue 11 item 6): in-process host, every card in its
own durable SQLite store, the authority, the agent and the TTP's card beside the two wallets.

Why in process: on the wire every fairx message is a record of the two cards' session, so a man in the middle
or a malicious host can only delay, drop, replay or damage records (``tests/integration/test_fairx_attacks_tcp.py``
does that to host processes over TCP). A message that is well-formed *inside* a session but false, an agreement
signed by another key, a confirmation moving the voucher to someone else, a commitment that does not open the
exchange's name, an admission the TTP did not sign, can only come from a card whose code was changed. Here the
sending card runs such code (:class:`RogueWallet`, :class:`RogueTtp`: the genuine applet, except that each fairx
message it sends is replaced by what ``forge`` makes of it) and the receiving card is genuine.

Each test checks who refused what (the receiving card's ``session.failed`` reason), that the honest card's
exchange record and vouchers did not move, and that the honest party ends with the swap or its own voucher back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from trnkit import drop, recover, status
from trnworld import TrnWorld, fairx_world, uid

from cardnet.applets import fairx as fa
from cardnet.applets.authority import CHAIN, QUERY
from cardnet.applets.sessions import SessionApplet
from cardnet.applets.trn import TrnApplet
from cardnet.card import Applet, StepContext
from cardnet.card import mtypes as cm
from cardnet.crypto import pki, profile
from cardnet.host.core import Origin
from cardnet.protocols import fairx as fx
from cardnet.protocols import session as sess
from cardnet.protocols.trn import transfer as tr
from cardnet.protocols.trn.token import Token, mint
from cardnet.protocols.trn.transfer import statement_bytes
from cardnet.wire import Message, MType, Uid
from conftest import NOW

T1, T2, T3 = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16
Sent = list[tuple[int, dict[str, Any]]]
Forge = Callable[[StepContext, int, dict[str, Any]], Sent]


class Rogue(SessionApplet):
    """Changed card code: every fairx message the genuine applet sends goes through ``forge`` first."""

    def __init__(self) -> None:
        super().__init__()
        self.forge: Forge | None = None

    def send_inner(self, ctx: StepContext, peer: Uid, raw: bytes) -> None:
        if self.forge is None or not raw or raw[0] not in fx.INNER:
            super().send_inner(ctx, peer, raw)
            return
        code, fields = fx.decode_inner(raw)
        for c, f in self.forge(ctx, code, fields):
            super().send_inner(ctx, peer, fx.encode_inner(c, f))


class RogueWallet(Rogue, TrnApplet):
    pass


class RogueTtp(Rogue, fa.TtpApplet):
    pass


def only(code: int, make: Callable[[StepContext, dict[str, Any]], Sent]) -> Forge:
    """A forge that replaces the messages of one kind (``code``) and lets the others go as they were."""
    return lambda ctx, c, f: make(ctx, f) if c == code else [(c, f)]


def world(tmp: Path, ca: pki.CertificateAuthority, **applets: Applet) -> TrnWorld:
    """authority, agent, TTP, alice (T1) and bob (T2), traced; ``applets`` replaces a card's genuine applet."""
    w = fairx_world(tmp, ca, {"alice": (T1, b"concert, seat 7"), "bob": (T2, b"one coffee")}, **applets)
    assert status(w, "alice", T1) == "enabled" and status(w, "bob", T2) == "enabled"
    return w


def order(w: TrnWorld, name: str, mtype: MType, **fields: Any) -> dict[str, Any]:
    reply = w.ask(name, mtype, **fields)
    assert reply.mtype != cm.REFUSED.code, cm.REFUSED.parse(reply)
    return dict(fa.STATE.parse(reply))


def phase(w: TrnWorld, name: str, n1: bytes) -> str:
    [x] = [x for x in fa.EXCHANGES.parse(w.ask(name, fa.LIST))["exchanges"] if x["n1"] == n1]
    return str(x["phase"])


def holders(w: TrnWorld, oid: bytes) -> list[str]:
    names = {c.uid: n for n, c in w.cards.items()}
    return [names[u] for u in CHAIN.parse(w.ask("authority", QUERY, oid=oid))["holders"]]


def refusals(w: TrnWorld) -> list[tuple[str, str, str]]:
    """Every ``session.failed`` a card sends from now on, as (who refused, whose message, reason)."""
    names = {c.uid: n for n, c in w.cards.items()}
    seen: list[tuple[str, str, str]] = []

    def note(m: Message, o: Origin) -> None:
        if m.mtype == sess.FAILED.code:
            seen.append((names.get(m.src, "?"), names.get(m.dst, "?"), sess.FAILED.parse(m)["reason"]))

    w.host.observe(note)
    return seen


def offered(w: TrnWorld) -> bytes:
    """alice offers T1 for bob's T2; bob's card holds the offer for its owner."""
    n1 = bytes(order(w, "alice", fa.START, give=T1, want=T2, to=uid(w, "bob"))["n1"])
    w.run(300)
    assert phase(w, "bob", n1) == "proposed"
    return n1


def ends(w: TrnWorld, where: dict[bytes, str]) -> None:
    """Each voucher usable on exactly the card named, and nowhere else; the authority's record agrees."""
    for oid, name in where.items():
        assert {n: status(w, n, oid) for n in ("alice", "bob")} == {
            n: ("enabled" if n == name else None) for n in ("alice", "bob")
        }, oid.hex()
        first = "alice" if oid == T1 else "bob"
        assert holders(w, oid) == ([first] if name == first else [first, name])


def stranger(ca: pki.CertificateAuthority) -> tuple[profile.PrivateKey, bytes]:
    """A key with a genuine certificate of the same CA, for another service card (not the TTP)."""
    key = profile.generate_private_key()
    cert = ca.issue(pki.Role.SERVICE, Uid(b"\x5a" * 12, 0), key.public_key(), now=NOW)
    return key, pki.cert_to_der(cert)


def card_key(w: TrnWorld, name: str) -> profile.PublicKey:
    key = pki.cert_from_der(w.cards[name].certificate_der).public_key()
    assert isinstance(key, profile.PublicKey)
    return key


# -- m2 ----------------------------------------------------------------------------------------------------------


def test_forged_agreements_are_refused_by_the_initiator_which_gives_up_with_its_voucher(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """bob's card, changed, answers the offer with false agreements instead of its m2: signed by another key; its
    sealed voucher altered under bob's signature; another voucher sealed to alice, signed by bob; bob's movement
    statement naming another receiver; and an m2 answering another offer. alice's card refuses the first four
    (bad_signature, bad_signature, bad_agree, bad_signature) and finds no exchange for the fifth: it stays
    ``offered``, T1 locked, no m3 sent, nothing stored. Its owner gives up: T1 is usable again.

    Fails if alice's card stopped checking m2's signature (over the sealed box too), the voucher it opens, or
    b's statement: it would confirm (m3) and give T1 up for a voucher it cannot have.
    """
    bob = RogueWallet()
    w = world(tmp_path, ca, bob=bob)
    failed = refusals(w)
    key, _ = stranger(ca)
    alice_key = card_key(w, "alice")

    def agreements(ctx: StepContext, m2: dict[str, Any]) -> Sent:
        xid, m1h, box = m2["xid"], m2["m1h"], m2["box"]
        other = mint(T3, uid(w, "agent"), b"a voucher nobody wanted", lambda d: profile.sign(key, d)).encode()
        other_box = profile.hpke_seal(alice_key, other, fx.box_info(b"v2", xid))
        carol = Uid(b"\xcc" * 12, 0)
        wrong_m1h = profile.sha256(b"another offer")
        return [
            (fx.AGREE, m2 | {"sig": profile.sign(key, fx.agree_bytes(xid, m1h, box))}),
            (fx.AGREE, m2 | {"box": box[:-1] + bytes([box[-1] ^ 1])}),
            (fx.AGREE, m2 | {"box": other_box, "sig": ctx.sign(fx.agree_bytes(xid, m1h, other_box))}),
            (fx.AGREE, m2 | {"st": ctx.sign(statement_bytes(T2, uid(w, "bob"), carol, fx.move_nonce(xid)))}),
            (fx.AGREE, m2 | {"m1h": wrong_m1h, "sig": ctx.sign(fx.agree_bytes(xid, wrong_m1h, box))}),
        ]

    n1 = offered(w)
    bob.forge = only(fx.AGREE, agreements)
    assert order(w, "bob", fa.ACCEPT, n1=n1)["phase"] == "agreed"
    w.run(300)
    assert failed == [("alice", "bob", r) for r in ("bad_signature", "bad_signature", "bad_agree", "bad_signature")]
    assert phase(w, "alice", n1) == "offered"
    assert (status(w, "alice", T1), status(w, "alice", T2)) == ("exchanging", None)
    assert status(w, "bob", T1) is None
    # alice's owner times out and gives up: T1 back at once, whatever bob does
    assert order(w, "alice", fa.GIVE_UP, n1=n1)["phase"] == "gave_up"
    assert status(w, "alice", T1) == "enabled"
    assert order(w, "bob", fa.ABORT, n1=n1)["phase"] == "aborting"  # (bob takes its own back with the TTP)
    w.run(400)
    assert phase(w, "bob", n1) == "aborted"
    ends(w, {T1: "alice", T2: "bob"})


# -- m3 ----------------------------------------------------------------------------------------------------------


def test_forged_confirmations_are_refused_by_the_responder_which_aborts_with_its_voucher(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """alice's card, changed, answers m2 with false confirmations instead of m3: signed by another key; with
    alice's movement statement naming another receiver; with a statement signed by another key; and one for
    another exchange. bob's card refuses the first three (bad_signature) and finds no exchange for the fourth:
    it stays ``agreed``, T2 locked, v1 not stored, no m4 sent. bob's owner aborts: T2 is usable again; alice,
    which resolves, gets the TTP's abort and T1 back.

    Fails if bob's card stopped checking m3's signature or alice's statement (it would store T1 on a statement
    the authority cannot record against alice, or on no statement by alice at all).
    """
    alice = RogueWallet()
    w = world(tmp_path, ca, alice=alice)
    failed = refusals(w)
    key, _ = stranger(ca)

    def confirmations(ctx: StepContext, m3: dict[str, Any]) -> Sent:
        xid = m3["xid"]
        [(_, raw)] = [(k, v) for k, v in ctx.scan(b"x:")]
        m1h = profile.sha256(fx.Exchange.decode(raw).m1)
        carol = Uid(b"\xcc" * 12, 0)
        nonce = fx.move_nonce(xid)
        return [
            (fx.CONFIRM, m3 | {"sig": profile.sign(key, fx.confirm_bytes(xid, m1h))}),
            (fx.CONFIRM, m3 | {"st": ctx.sign(statement_bytes(T1, uid(w, "alice"), carol, nonce))}),
            (fx.CONFIRM, m3 | {"st": profile.sign(key, statement_bytes(T1, uid(w, "alice"), uid(w, "bob"), nonce))}),
            (fx.CONFIRM, m3 | {"xid": profile.sha256(b"another exchange")}),
        ]

    n1 = offered(w)
    alice.forge = only(fx.CONFIRM, confirmations)
    assert order(w, "bob", fa.ACCEPT, n1=n1)["phase"] == "agreed"
    w.run(300)
    assert failed == [("bob", "alice", "bad_signature")] * 3
    assert phase(w, "bob", n1) == "agreed"
    assert (status(w, "bob", T2), status(w, "bob", T1)) == ("exchanging", None)
    assert holders(w, T1) == ["alice"]
    # bob's owner times out and aborts: T2 back; alice's resolve gets the same decision
    assert order(w, "bob", fa.ABORT, n1=n1)["phase"] == "aborting"
    w.run(400)
    assert phase(w, "bob", n1) == "aborted" and status(w, "bob", T2) == "enabled"
    assert order(w, "alice", fa.RESOLVE, n1=n1)["phase"] == "resolving"
    w.run(400)
    assert phase(w, "alice", n1) == "aborted"
    ends(w, {T1: "alice", T2: "bob"})


# -- m4, and admissions made up by the other party -----------------------------------------------------------------


def test_a_false_commitment_and_admissions_made_up_by_the_responder_are_refused_and_the_initiator_resolves(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """bob's card, changed, stores v1 on m3 and, instead of m4, sends alice a commitment whose n2 does not open the
    exchange's name, one for another exchange, and two made-up `aborted` admissions (signed by bob, with bob's
    certificate, then with the TTP's): the appendix's aim, making alice take T1 back while bob keeps it. alice's
    card refuses them (bad_commitment, wrong_peer, wrong_peer: an admission comes from its TTP or from no one)
    and stays ``confirmed``; its owner resolves with the TTP and gets T2.

    Fails if alice's card took a commitment without checking h(n2) (it would drop T1 and store T2 on bob's word
    alone: fine here, but then m4 proves nothing), or an admission from a card that is not its TTP (it would take
    T1 back while bob holds it: T1 usable on two cards).
    """
    bob = RogueWallet()
    w = world(tmp_path, ca, bob=bob)
    failed = refusals(w)
    ttp_cert = w.cards["ttp"].certificate_der

    def instead_of_m4(ctx: StepContext, m4: dict[str, Any]) -> Sent:
        xid = m4["xid"]
        made_up = {"xid": xid, "decision": fx.ABORTED, "sig": ctx.sign(fx.admission_bytes(fx.ABORTED, xid, None))}
        return [
            (fx.COMMITMENT, m4 | {"n2": b"\x00" * fx.NONCE_BYTES}),
            (fx.COMMITMENT, {"xid": profile.sha256(b"another exchange"), "n2": m4["n2"]}),
            (fx.ADMISSION, made_up | {"cert": ctx.certificate_der}),
            (fx.ADMISSION, made_up | {"cert": ttp_cert}),
        ]

    n1 = offered(w)
    bob.forge = only(fx.COMMITMENT, instead_of_m4)
    assert order(w, "bob", fa.ACCEPT, n1=n1)["phase"] == "agreed"
    w.run(400)
    assert failed == [("alice", "bob", r) for r in ("bad_commitment", "wrong_peer", "wrong_peer")]
    assert (phase(w, "alice", n1), phase(w, "bob", n1)) == ("confirmed", "done")
    assert (status(w, "alice", T1), status(w, "alice", T2)) == ("exchanging", None)
    assert status(w, "bob", T1) == "enabled"
    assert order(w, "alice", fa.RESOLVE, n1=n1)["phase"] == "resolving"
    w.run(400)
    assert phase(w, "alice", n1) == "done"
    ends(w, {T1: "bob", T2: "alice"})


# -- admissions altered or signed by another key on the TTP's session ---------------------------------------------


def test_admissions_not_signed_by_the_ttp_are_refused_and_the_genuine_one_is_taken_once(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """m4 is lost; alice resolves. The TTP decides `resolved`, but its card, changed, sends alice instead: the
    admission with its decision turned to `aborted` (the TTP's signature kept), one signed by another key under
    the TTP's certificate, one signed by another service card with that card's genuine certificate, and one for
    another exchange. alice's card refuses the first three (bad_signature, bad_signature, wrong_peer) and finds
    no exchange for the fourth: it stays ``resolving`` with T1 locked. Once the TTP's card sends the genuine
    admission (alice's recovery asks again), alice takes it, once: T2 is hers.

    Fails if alice's card did not check the admission's signature against its TTP's certificate (the altered
    `aborted` would give it T1 back while bob, done, holds T1: usable on two cards).
    """
    ttp = RogueTtp()
    w = world(tmp_path, ca, ttp=ttp)
    failed = refusals(w)
    key, other_cert = stranger(ca)

    def admissions(ctx: StepContext, adm: dict[str, Any]) -> Sent:
        xid, st = adm["xid"], adm.get("st")
        assert adm["decision"] == fx.RESOLVED
        return [
            (fx.ADMISSION, adm | {"decision": fx.ABORTED}),
            (fx.ADMISSION, adm | {"sig": profile.sign(key, fx.admission_bytes(fx.RESOLVED, xid, st))}),
            (fx.ADMISSION, adm | {"sig": profile.sign(key, fx.admission_bytes(fx.ABORTED, xid, None)),
                                  "decision": fx.ABORTED, "cert": other_cert}),
            (fx.ADMISSION, adm | {"xid": profile.sha256(b"another exchange")}),
        ]  # fmt: skip

    n1 = offered(w)
    drop(w, "bob", "alice", 2)  # bob's second record to alice: the commitment m4
    assert order(w, "bob", fa.ACCEPT, n1=n1)["phase"] == "agreed"
    w.run(400)
    assert (phase(w, "alice", n1), phase(w, "bob", n1)) == ("confirmed", "done")
    ttp.forge = only(fx.ADMISSION, admissions)
    assert order(w, "alice", fa.RESOLVE, n1=n1)["phase"] == "resolving"
    w.run(400)
    assert failed == [("alice", "ttp", r) for r in ("bad_signature", "bad_signature", "wrong_peer")]
    assert phase(w, "alice", n1) == "resolving"
    assert (status(w, "alice", T1), status(w, "alice", T2)) == ("exchanging", None)
    ttp.forge = None
    recover(w, "alice")
    assert phase(w, "alice", n1) == "done"
    ends(w, {T1: "bob", T2: "alice"})


# -- a voucher altered under its holder's own signature ---------------------------------------------------------


@pytest.mark.parametrize("rogue", ["alice", "bob"])
def test_a_voucher_altered_under_its_holders_signature_is_refused_before_the_other_gives_anything(
    tmp_path: Path, ca: pki.CertificateAuthority, rogue: str
) -> None:
    """A card whose code was changed (its owner extracted its key, as for a clone) seals into its own, genuinely
    signed m1 (alice) or m2 (bob) its voucher with the body rewritten ("front row", "ten coffees"): the
    issuer's signature no longer holds. The honest card must refuse it before it gives its own voucher away.

    Without the check (the card looked at the oid only) it confirmed and was left with a voucher the authority
    refuses to trace (trustless for good) while the rogue card's owner had the honest one, traced: the honest
    party lost its voucher. Now m1 and m2 carry the voucher's issuer's certificate and the card checks the
    issuer's signature before it agrees or confirms.
    """
    applet = RogueWallet()
    w = world(tmp_path, ca, **{rogue: applet})
    honest = "bob" if rogue == "alice" else "alice"
    key = {"alice": card_key(w, "bob"), "bob": card_key(w, "alice")}[rogue]  # the honest card's: the box is its

    def rewritten(ctx: StepContext, oid: bytes, body: bytes, info: bytes) -> bytes:
        h = tr.Holding.decode(oid, ctx.get(b"t:" + oid) or b"")
        assert h.token is not None
        genuine = Token.decode(h.token)
        return profile.hpke_seal(key, Token(oid, genuine.issuer, genuine.sig, body).encode(), info)

    def offer(ctx: StepContext, m1: dict[str, Any]) -> Sent:
        n1 = m1["n1"]
        f = m1 | {"box": rewritten(ctx, T1, b"concert, front row", fx.box_info(b"v1", n1))}
        f |= {"sig": ctx.sign(fx.offer_bytes(f))}
        # (and the card keeps that offer as its own, so that bob's m2, which answers it, finds the exchange)
        x = fx.Exchange.decode(ctx.get(b"x:" + n1) or b"")
        ctx.delete(b"xh:" + profile.sha256(x.m1))
        ctx.put(b"x:" + n1, replace(x, m1=fx.OFFER_SCHEMA.encode(f)).encode())
        ctx.put(b"xh:" + profile.sha256(fx.OFFER_SCHEMA.encode(f)), n1)
        return [(fx.OFFER, f)]

    def agreement(ctx: StepContext, m2: dict[str, Any]) -> Sent:
        box = rewritten(ctx, T2, b"ten coffees", fx.box_info(b"v2", m2["xid"]))
        return [(fx.AGREE, m2 | {"box": box, "sig": ctx.sign(fx.agree_bytes(m2["xid"], m2["m1h"], box))})]

    applet.forge = only(fx.OFFER, offer) if rogue == "alice" else only(fx.AGREE, agreement)
    n1 = bytes(order(w, "alice", fa.START, give=T1, want=T2, to=uid(w, "bob"))["n1"])
    w.run(300)
    if any(x["n1"] == n1 for x in fa.EXCHANGES.parse(w.ask("bob", fa.LIST))["exchanges"]):
        assert order(w, "bob", fa.ACCEPT, n1=n1)["phase"] == "agreed"  # (bob's owner likes what is offered)
    w.run(400)
    recover(w, "alice", "bob")
    mine = T1 if honest == "alice" else T2
    assert status(w, honest, mine) in ("enabled", "exchanging"), "the honest card gave its voucher for an altered one"
