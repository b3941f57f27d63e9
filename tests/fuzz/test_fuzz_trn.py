"""Fuzzing TRN's decoders and a TRN card: bad input gets a ProtocolError or a refusal, never a crash.

Set ``CARDNET_FUZZ_EXAMPLES`` (e.g. 20000) for a long hunt.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from fuzzing import cbor_or_bytes, check_inner_decoder, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from cardnet.applets.authority import AuthorityApplet
from cardnet.applets.sessions import POLICY, POLICY_IS
from cardnet.applets.trn import TrnApplet
from cardnet.card import Card
from cardnet.card import mtypes as cm
from cardnet.card.personalise import personalise
from cardnet.crypto import pki, profile
from cardnet.host.core import HOST_PORT
from cardnet.protocols import session as sess
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.trn import trace
from cardnet.protocols.trn import transfer as tr
from cardnet.protocols.trn.token import Token
from cardnet.store import SqliteStore
from cardnet.wire import DecodeError, Message, MType, Uid
from conftest import NOW

FUZZ = fuzz_settings(200)
T = NOW.timestamp()

raw = cbor_or_bytes()


@FUZZ
@given(st.integers(0, 255), raw)
def test_inner_decoder(code: int, body: bytes) -> None:
    check_inner_decoder(tr.decode_inner, tr.encode_inner, bytes([code]) + body)


@FUZZ
@given(raw)
def test_token_and_holding_decoders(body: bytes) -> None:
    try:
        Token.decode(body)
    except ProtocolError as exc:
        assert exc.reason == "bad_token"
    with contextlib.suppress(DecodeError, ValueError):
        tr.Holding.decode(b"\0" * 16, body)
    with contextlib.suppress(DecodeError, ValueError):
        sess.Session.decode(body)


@FUZZ
@given(st.binary(max_size=80), st.binary(max_size=700) | st.none(), st.booleans())
def test_movement_statement_check_never_raises(sig: bytes, cert: bytes | None, real_cert: bool) -> None:
    """The authority reads a statement and a certificate a card sent: garbage is a reason, never a crash."""
    frm, to = Uid.card(b"\x01" * 12), Uid.card(b"\x02" * 12)
    if real_cert:
        key = profile.generate_private_key()
        ca = pki.CertificateAuthority.create("fuzz", now=NOW)
        cert = pki.cert_to_der(ca.issue(pki.Role.DEVICE, frm, key.public_key(), now=NOW))
        assert trace.certifies(cert, frm, [pki.cert_to_der(ca.certificate)], T)
    claim = trace.Movement(frm, to, b"\0" * 4, sig)
    why = trace.check_statement(b"\0" * 16, claim, cert)
    assert isinstance(why, str)  # (a random signature never verifies)
    assert not trace.certifies(cert or b"", to, [], T)


@pytest.fixture(scope="module")
def pair(ca: pki.CertificateAuthority) -> tuple[sess.Session, Uid]:
    key = profile.generate_private_key()
    me, peer = Uid.card(b"\x01" * 12), Uid.card(b"\x02" * 12)
    st_a, hello = sess.initiate(peer, b"\x03" * 48, b"\x04" * 16, b"cert")
    peer_key = profile.generate_private_key()
    peer_cert = pki.cert_to_der(ca.issue(pki.Role.DEVICE, peer, peer_key.public_key(), now=NOW))
    my_cert = pki.cert_to_der(ca.issue(pki.Role.DEVICE, me, key.public_key(), now=NOW))
    hello["cert"] = my_cert
    _, acc, _ = sess.respond(
        peer, me, hello, my_cert=peer_cert, roots=[pki.cert_to_der(ca.certificate)], now=T,
        random48=b"\x05" * 48, random16=b"\x06" * 16, sign=lambda d: profile.sign(peer_key, d), blocklist=None,
    )  # fmt: skip
    opened, _, _ = sess.finish(
        st_a, me, acc, my_cert=my_cert, roots=[pki.cert_to_der(ca.certificate)], now=T,
        sign=lambda d: profile.sign(key, d), blocklist=None,
    )  # fmt: skip
    return opened, me


@FUZZ
@given(st.integers(0, 2**64 - 1), st.binary(min_size=16, max_size=200))
def test_forged_records_are_refused(pair: tuple[sess.Session, Uid], ctr: int, ct: bytes) -> None:
    state, me = pair
    with pytest.raises(ProtocolError) as e:
        sess.open_record(state, me, {"ctr": ctr, "ct": ct})
    assert e.value.reason in ("bad_record", "replay")


@FUZZ
@given(st.fixed_dictionaries({"eph": st.binary(min_size=65, max_size=65), "cert": st.binary(max_size=600),
                              "nonce": st.binary(min_size=16, max_size=16)}))  # fmt: skip
def test_garbage_hello_is_refused(ca: pki.CertificateAuthority, hello: dict[str, Any]) -> None:
    me, peer = Uid.card(b"\x01" * 12), Uid.card(b"\x02" * 12)
    with pytest.raises(ProtocolError):
        sess.respond(
            me, peer, hello, my_cert=b"", roots=[pki.cert_to_der(ca.certificate)], now=T,
            random48=b"\x05" * 48, random16=b"\x06" * 16, sign=lambda d: b"\0" * 64, blocklist=None,
        )  # fmt: skip


@pytest.fixture(scope="module")
def cards(ca: pki.CertificateAuthority, tmp_path_factory: pytest.TempPathFactory) -> list[Card]:
    tmp: Path = tmp_path_factory.mktemp("fuzz-trn")
    out = []
    for i, (applet, role) in enumerate([(TrnApplet(), pki.Role.DEVICE), (AuthorityApplet(), pki.Role.SERVICE)]):
        card = Card(SqliteStore(str(tmp / f"c{i}.db"), durable=False), applets=[applet])
        personalise(card, ca, pin="1", now=NOW, role=role)
        out.append(card)
    return out


SESSION_MTYPES = [sess.HELLO, sess.ACCEPT, sess.FINISH, sess.RECORD, sess.FAILED]


@FUZZ
@given(st.sampled_from(range(2)), st.sampled_from(SESSION_MTYPES), raw, st.booleans())
def test_a_trn_card_never_crashes(cards: list[Card], which: int, mtype: MType, body: bytes, valid: bool) -> None:
    """Arbitrary session messages from a stranger card: answered (failed or refused), never an applet error."""
    card = cards[which]
    stranger = Uid.card(b"\x0e" * 12)
    if valid:  # well-formed params with random content
        options: dict[int, dict[str, Any]] = {
            sess.HELLO.code: {"eph": body[:65].ljust(65, b"\4"), "cert": body, "nonce": b"\1" * 16},
            sess.ACCEPT.code: {
                "eph": b"\4" * 65,
                "cert": body,
                "nonce": b"\1" * 16,
                "sig": b"\0" * 64,
                "confirm": b"\0" * 16,
            },
            sess.FINISH.code: {"sig": body[:64].ljust(64, b"\0"), "confirm": b"\0" * 16},
            sess.RECORD.code: {"ctr": len(body), "ct": body.ljust(16, b"\0")},
            sess.FAILED.code: {"reason": "x", "detail": body.hex()[:300]},
        }
        msg = mtype.make_from(stranger, card.uid, options[mtype.code])
    else:
        msg = Message(stranger, card.uid, mtype.code, body)
    for out in card.step(msg, T):
        if out.msg.mtype == cm.REFUSED.code:
            assert cm.REFUSED.parse(out.msg)["reason"] != "applet_error"
        else:
            assert out.msg.mtype == sess.FAILED.code and out.msg.dst == stranger


@FUZZ
@given(raw)
def test_policy_decoder(body: bytes) -> None:
    """A freshness policy (personalised or tightened) decodes strictly (else DecodeError) and round-trips."""
    try:
        policy = sess.Policy.decode(body)
    except DecodeError:
        return
    assert sess.Policy.decode(policy.encode()) == policy


@pytest.fixture(scope="module")
def policy_card(ca: pki.CertificateAuthority, tmp_path_factory: pytest.TempPathFactory) -> Card:
    card = Card(SqliteStore(str(tmp_path_factory.mktemp("fuzz-pol") / "c.db"), durable=False), applets=[TrnApplet()])
    personalise(card, ca, pin="1", now=NOW, policy=sess.Policy(max_blocklist_age_s=50, lifetime_s=50).encode())
    return card


@FUZZ
@given(st.dictionaries(st.sampled_from(list(sess.Policy().as_dict())), st.integers(0, 2**64 - 1)), raw, st.booleans())
def test_session_policy_never_loosens(policy_card: Card, fields: dict[str, int], body: bytes, valid: bool) -> None:
    """Random session.policy messages from the owner (or the host port): answered, and the policy only tightens."""
    card = policy_card
    src = Uid(card.uid.domain, HOST_PORT if body[:1] == b"\0" else 1)
    assert card.step(cm.PIN_VERIFY.make(Uid(card.uid.domain, 1), card.uid, pin="1"), T)
    before = sess.Policy.decode(card._read(("a.trn", b"pol"))).tighter(sess.Policy(50, 0, 50, 0))
    msg = POLICY.make_from(src, card.uid, fields) if valid else Message(src, card.uid, POLICY.code, body)
    for out in card.step(msg, T):
        if out.msg.mtype == cm.REFUSED.code:
            assert cm.REFUSED.parse(out.msg)["reason"] in ("policy_loosened", "bad_param", "privileged")
        else:
            assert out.msg.mtype == POLICY_IS.code
    after = sess.Policy.decode(card._read(("a.trn", b"pol"))).tighter(sess.Policy(50, 0, 50, 0))
    assert after == before.tighter(after)  # never looser than before


@FUZZ
@given(raw)
def test_accept_policy_decoder(body: bytes) -> None:
    """A stored acceptance policy decodes strictly (else ProtocolError bad_policy) and round-trips."""
    try:
        policy = tr.AcceptPolicy.decode(body)
    except ProtocolError as exc:
        assert exc.reason == "bad_policy"
        return
    assert tr.AcceptPolicy.decode(policy.encode()) == policy


uids = st.builds(Uid, st.binary(min_size=12, max_size=12), st.sampled_from([0, 0, 0, 1, HOST_PORT]))


@FUZZ
@given(st.lists(uids, max_size=70), st.booleans(), raw, st.sampled_from(["owner", "host", "stranger", "raw"]))
def test_accept_policy_and_answer_messages(
    policy_card: Card, issuers: list[Uid], ask: bool, body: bytes, who: str
) -> None:
    """Random trn.accept_policy / trn.answer from the owner, the host port or an app without the PIN: answered
    cleanly; only the owner's well-formed policy is stored, exactly as sent."""
    from cardnet.applets.trn import ACCEPT_POLICY, ACCEPT_POLICY_IS, ANSWER, RESULT

    card = policy_card
    port = {"owner": 1, "raw": 1, "host": HOST_PORT, "stranger": 9}[who]
    src = Uid(card.uid.domain, port)
    assert card.step(cm.PIN_VERIFY.make(Uid(card.uid.domain, 1), card.uid, pin="1"), T)
    before = card._read(("a.trn", b"acc"))
    if who == "raw":
        msg = Message(src, card.uid, ACCEPT_POLICY.code if body[:1] != b"\1" else ANSWER.code, body)
    else:
        msg = ACCEPT_POLICY.make(src, card.uid, issuers=issuers, ask=ask) if len(issuers) <= 64 else None
        if msg is None:
            return
    outs = card.step(msg, T)
    for out in outs:
        if out.msg.mtype == cm.REFUSED.code:
            assert cm.REFUSED.parse(out.msg)["reason"] in ("bad_policy", "bad_param", "privileged", "no_offer")
        else:
            assert out.msg.mtype in (ACCEPT_POLICY_IS.code, RESULT.code)
    after = card._read(("a.trn", b"acc"))
    if who in ("host", "stranger"):
        assert after == before
    elif who == "owner" and after != before:
        assert tr.AcceptPolicy.decode(after) == tr.AcceptPolicy(tuple(issuers), ask)
    tr.AcceptPolicy.decode(after)  # whatever is stored decodes
