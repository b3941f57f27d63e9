"""fairx on real cards (in-process host, durable SQLite stores): the wallet applet's side and the TTP applet.

Two wallets swap a traced ticket for a traced voucher: the vouchers are TRN tokens, locked while exchanged, and
each is usable by its new holder only after the authority recorded the movement on the giver's own statement.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from trnkit import drop, recover, status
from trnworld import TrnWorld, fairx_world, uid

from cardnet.applets import fairx as fa
from cardnet.applets import sessions as sa
from cardnet.applets.authority import CHAIN, QUERY
from cardnet.applets.trn import SEND
from cardnet.card import mtypes as cm
from cardnet.crypto import pki, profile
from cardnet.protocols import session as sess
from cardnet.protocols.errors import ProtocolError
from cardnet.wire import MType, Uid
from conftest import NOW

T1, T2 = b"\x01" * 16, b"\x02" * 16


def world(tmp_path: Path, ca: pki.CertificateAuthority) -> TrnWorld:
    w = fairx_world(tmp_path, ca, {"alice": (T1, b"concert, seat 7"), "bob": (T2, b"one coffee")})
    assert status(w, "alice", T1) == "enabled" and status(w, "bob", T2) == "enabled"
    return w


def order(w: TrnWorld, name: str, mtype: MType, **fields: Any) -> dict[str, Any]:
    reply = w.ask(name, mtype, **fields)
    if reply.mtype == cm.REFUSED.code:
        return {"refused": True, **cm.REFUSED.parse(reply)}
    return dict(fa.STATE.parse(reply))


def exchanges(w: TrnWorld, name: str) -> dict[bytes, dict[str, Any]]:
    return {x["n1"]: x for x in fa.EXCHANGES.parse(w.ask(name, fa.LIST))["exchanges"]}


def holders(w: TrnWorld, oid: bytes) -> list[object]:
    return list(CHAIN.parse(w.ask("authority", QUERY, oid=oid))["holders"])


def offered(w: TrnWorld) -> bytes:
    started = order(w, "alice", fa.START, give=T1, want=T2, to=uid(w, "bob"))
    assert started["phase"] == "offered" and status(w, "alice", T1) == "exchanging"
    w.run(300)
    [x] = exchanges(w, "bob").values()
    assert x["phase"] == "proposed" and x["body"] == b"concert, seat 7" and x["give"] == T2 and x["want"] == T1
    assert status(w, "bob", T2) == "enabled"  # nothing locked before the owner accepts
    return bytes(started["n1"])


def test_two_wallets_swap_a_ticket_for_a_voucher_and_the_authority_records_both_movements(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = world(tmp_path, ca)
    n1 = offered(w)
    accepted = order(w, "bob", fa.ACCEPT, n1=n1)
    assert accepted.get("phase") == "agreed", accepted
    w.run(400)
    assert exchanges(w, "alice")[n1]["phase"] == exchanges(w, "bob")[n1]["phase"] == "done"
    assert (status(w, "alice", T1), status(w, "alice", T2)) == (None, "enabled")
    assert (status(w, "bob", T1), status(w, "bob", T2)) == ("enabled", None)
    assert holders(w, T1) == [uid(w, "alice"), uid(w, "bob")]
    assert holders(w, T2) == [uid(w, "bob"), uid(w, "alice")]
    # an exchanged voucher moves on by TRN like any token
    assert w.result("bob", SEND, oid=T1, to=uid(w, "alice"))["ok"]
    w.run(300)
    assert status(w, "alice", T1) == "enabled"


def test_a_token_in_an_exchange_cannot_be_sent_and_one_in_a_transfer_cannot_be_offered(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = world(tmp_path, ca)
    offered(w)
    sent = w.result("alice", SEND, oid=T1, to=uid(w, "bob"))
    assert not sent["ok"] and sent["reason"] == "illegal_move" and "exchanging" in sent["detail"]
    w.card("carol")
    drop(w, "bob", "carol", 1, 2, 3, 4, 5, 6)  # bob's transfer to carol stays pending (the copy never arrives)
    assert w.result("bob", SEND, oid=T2, to=uid(w, "carol"))["ok"]
    w.run(100)
    busy = order(w, "bob", fa.START, give=T2, want=T1, to=uid(w, "alice"))
    assert busy["refused"] and busy["reason"] == "illegal_move" and "disabled" in busy["detail"]


def test_the_owner_rejects_and_the_initiator_gets_its_voucher_back(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = world(tmp_path, ca)
    n1 = offered(w)
    assert order(w, "bob", fa.REJECT, n1=n1)["phase"] == "aborted"
    w.run(200)
    assert exchanges(w, "alice")[n1]["phase"] == "aborted" and status(w, "alice", T1) == "enabled"
    assert status(w, "bob", T2) == "enabled"


def test_m3_lost_the_initiator_resolves_and_the_responders_abort_brings_it_the_voucher(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = world(tmp_path, ca)
    n1 = offered(w)
    d = drop(w, "alice", "bob", 1)  # alice's next record to bob: the confirmation m3
    order(w, "bob", fa.ACCEPT, n1=n1)
    w.run(400)
    assert d.dropped and exchanges(w, "alice")[n1]["phase"] == "confirmed" == exchanges(w, "alice")[n1]["phase"]
    assert exchanges(w, "bob")[n1]["phase"] == "agreed"
    # both time out: alice asks to resolve, then bob asks to abort; the TTP's first decision stands
    assert order(w, "alice", fa.RESOLVE, n1=n1)["phase"] == "resolving"
    w.run(400)
    assert exchanges(w, "alice")[n1]["phase"] == "done" and status(w, "alice", T2) == "enabled"
    assert order(w, "bob", fa.ABORT, n1=n1)["phase"] == "aborting"
    w.run(400)
    assert exchanges(w, "bob")[n1]["phase"] == "done"
    assert (status(w, "bob", T1), status(w, "bob", T2)) == ("enabled", None)
    assert holders(w, T1) == [uid(w, "alice"), uid(w, "bob")]


def test_the_responder_aborts_first_and_both_vouchers_go_home(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = world(tmp_path, ca)
    n1 = offered(w)
    drop(w, "bob", "alice", 1, 2, 3, 4, 5, 6, 7, 8)  # the agreement m2 (and any resend) is lost
    order(w, "bob", fa.ACCEPT, n1=n1)
    w.run(300)
    assert status(w, "bob", T2) == "exchanging"
    assert order(w, "bob", fa.ABORT, n1=n1)["phase"] == "aborting"
    w.run(400)
    assert exchanges(w, "bob")[n1]["phase"] == "aborted" and status(w, "bob", T2) == "enabled"
    # alice never got m2: she gives up and has T1 back
    assert order(w, "alice", fa.GIVE_UP, n1=n1)["phase"] == "gave_up"
    assert status(w, "alice", T1) == "enabled"


def test_lost_messages_are_resent_by_recovery(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = world(tmp_path, ca)
    n1 = offered(w)
    m2 = drop(w, "bob", "alice", 1)  # the first m2
    m3 = drop(w, "alice", "bob", 1)  # alice's next record to bob: a resent offer or the first m3
    order(w, "bob", fa.ACCEPT, n1=n1)
    w.run(300)
    assert exchanges(w, "alice")[n1]["phase"] == "offered" and exchanges(w, "bob")[n1]["phase"] == "agreed"
    recover(w, "alice", "bob")
    assert len(m2.dropped) == len(m3.dropped) == 1
    assert exchanges(w, "alice")[n1]["phase"] == exchanges(w, "bob")[n1]["phase"] == "done"
    assert (status(w, "alice", T2), status(w, "bob", T1)) == ("enabled", "enabled")


def test_the_exchange_orders_are_privileged(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = world(tmp_path, ca)
    stranger = w.host.acquire(uid(w, "alice").domain, w.now)  # an application that never verified the PIN
    for mtype, fields in ((fa.START, {"give": T1, "want": T2, "to": uid(w, "bob")}), (fa.ACCEPT, {"n1": b"n" * 16})):
        stranger.send(uid(w, "alice"), mtype, **fields)
        w.run()
        [reply] = stranger.receive_all()
        assert reply.mtype == cm.REFUSED.code and cm.REFUSED.parse(reply)["reason"] == "privileged"
    assert status(w, "alice", T1) == "enabled"


def test_a_remembered_certificate_check_still_refuses_it_once_expired(ca: pki.CertificateAuthority) -> None:
    """The wallet remembers which certificates it checked (an exchange names the same two on every message), but
    never past their validity: an expired one is refused, the second time as the first."""
    key = profile.generate_private_key()
    uid = Uid(b"\x07" * 12, 0)
    der = pki.cert_to_der(ca.issue(pki.Role.DEVICE, uid, key.public_key(), now=NOW, valid_days=1))
    roots = [pki.cert_to_der(ca.certificate)]
    today = SimpleNamespace(now=NOW.timestamp() + 60, roots_der=roots)
    later = SimpleNamespace(now=(NOW + timedelta(days=2)).timestamp(), roots_der=roots)
    for _ in range(2):
        got = fa._peer_key(der, uid, today)  # type: ignore[arg-type]
        assert profile.public_bytes(got) == profile.public_bytes(key.public_key())
        with pytest.raises(ProtocolError) as caught:
            fa._peer_key(der, uid, later)  # type: ignore[arg-type]
        assert caught.value.reason == "expired"
    with pytest.raises(ProtocolError, match=r"is .*'s"):
        fa._peer_key(der, Uid(b"\x08" * 12, 0), today)  # type: ignore[arg-type]


def test_a_wallet_keeps_only_its_latest_finished_exchanges_and_goes_on_exchanging(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """Each finished record is about 2 kB: a card that kept them all filled its 256 KiB after some 70 exchanges.
    Older finished records (and their xid index entries) go; the latest KEEP_FINISHED stay listed."""
    w = world(tmp_path, ca)
    rounds = fa.KEEP_FINISHED + 6
    mine = {"alice": T1, "bob": T2}
    done: list[bytes] = []
    for i in range(rounds):
        first, other = ("alice", "bob") if i % 2 == 0 else ("bob", "alice")
        started = order(w, first, fa.START, give=mine[first], want=mine[other], to=uid(w, other))
        w.run(300)
        n1 = bytes(started["n1"])
        assert order(w, other, fa.ACCEPT, n1=n1)["phase"] == "agreed"
        w.run(400)
        assert exchanges(w, first)[n1]["phase"] == exchanges(w, other)[n1]["phase"] == "done", f"round {i}"
        mine[first], mine[other] = mine[other], mine[first]
        assert status(w, first, mine[first]) == "enabled" and status(w, other, mine[other]) == "enabled"
        done.append(n1)
    for name in ("alice", "bob"):
        kept = exchanges(w, name)
        assert list(sorted(kept)) == sorted(done[-fa.KEEP_FINISHED :]), f"{name} keeps the latest ones"
        card = w.cards[name]
        index = [k for t, k in card._mem if t == "a.trn" and k[:3] in (b"xi:", b"xh:")]
        assert len(index) == fa.KEEP_FINISHED, f"{name}: the index follows the records"
    assert holders(w, T1)[-1] == uid(w, "alice" if mine["alice"] == T1 else "bob")


def test_requests_resent_to_an_unreachable_ttp_do_not_fill_the_card(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """While the TTP cannot be reached (its handshake never completes), every recovery resends the waiting
    request (m1, m2 and certificates: about 3.5 kB) into the session's queue. The queue kept every copy (up to
    64): some 70 recoveries filled a 256 KiB card, whose every later step, the recovery that would reopen the
    session included, was then refused. Now a copy of a queued message replaces it and the queue is bounded in
    bytes too (found by the SIGKILL test, tests/integration/test_fairx_kill.py)."""
    w = world(tmp_path, ca)
    n1 = offered(w)
    drop(w, "alice", "bob", 1)  # m3 is lost: alice stays confirmed
    order(w, "bob", fa.ACCEPT, n1=n1)
    w.run(400)
    assert exchanges(w, "alice")[n1]["phase"] == "confirmed"
    drop(w, "alice", "ttp", *range(1, 1000), mtype=sess.HELLO.code)  # the TTP is never reached
    assert order(w, "alice", fa.RESOLVE, n1=n1)["phase"] == "resolving"
    recover(w, "alice", times=90)
    queued = w.cards["alice"]._mem.get(("a.trn", b"q:" + bytes(uid(w, "ttp"))))
    assert queued is not None and len(queued) <= sa.MAX_QUEUE_BYTES + 4096
    assert exchanges(w, "alice")[n1]["phase"] == "resolving"  # the card still answers its owner
    # the TTP comes back: the one queued request gets the swap done
    del w.host.guards[1:]
    recover(w, "alice", "bob")
    assert exchanges(w, "alice")[n1]["phase"] == "done" and status(w, "alice", T2) == "enabled"


def test_given_up_offers_are_pruned_like_finished_ones(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """An initiator that gave up has its voucher back for good: its record goes with the finished ones (kept
    forever, given-up offers filled a card after some 80, found by the SIGKILL test)."""
    w = world(tmp_path, ca)
    for _ in range(fa.KEEP_FINISHED + 5):
        started = order(w, "alice", fa.START, give=T1, want=T2, to=uid(w, "bob"))
        assert order(w, "alice", fa.GIVE_UP, n1=bytes(started["n1"]))["phase"] == "gave_up"
        assert status(w, "alice", T1) == "enabled"
        w.run(100)
        for n1, x in exchanges(w, "bob").items():  # bob's owner turns the stale offers down
            if x["phase"] == "proposed":
                order(w, "bob", fa.REJECT, n1=n1)
        w.run(100)
    assert len(exchanges(w, "alice")) <= fa.KEEP_FINISHED


def test_an_offer_naming_another_ttp_is_refused_and_nothing_stays_locked(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """Two cards that follow different TTPs could have one exchange resolved by one TTP and aborted by the other:
    the offer names alice's TTP, and bob, following another, refuses it (alice gets her voucher back at once)."""
    w = world(tmp_path, ca)
    w.card("ttp2", pki.Role.SERVICE, applet=fa.TtpApplet())
    assert fa.TTP_IS.parse(w.ask("bob", fa.SET_TTP, ttp=uid(w, "ttp2")))["ttp"] == uid(w, "ttp2")
    started = order(w, "alice", fa.START, give=T1, want=T2, to=uid(w, "bob"))
    w.run(300)
    [x] = exchanges(w, "alice").values()
    assert x["n1"] == started["n1"] and x["phase"] == "aborted" and x["why"] == "ttp_mismatch", x
    assert exchanges(w, "bob") == {}  # no offer held for bob's owner
    assert status(w, "alice", T1) == "enabled" and status(w, "bob", T2) == "enabled"
    # the same TTP again: the exchange goes through
    assert fa.TTP_IS.parse(w.ask("bob", fa.SET_TTP, ttp=uid(w, "ttp")))["ttp"] == uid(w, "ttp")
    n1 = offered(w)
    assert order(w, "bob", fa.ACCEPT, n1=n1).get("phase") == "agreed"
    w.run(400)
    assert (status(w, "alice", T2), status(w, "bob", T1)) == ("enabled", "enabled")


def test_no_exchange_starts_without_a_ttp(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = fairx_world(tmp_path, ca, {})
    w.card("carol")
    refused = order(w, "carol", fa.START, give=T1, want=T2, to=uid(w, "bob"))
    assert refused.get("refused") and refused["reason"] == "no_ttp" and "fairx.set_ttp" in refused["detail"], refused


def test_an_offer_given_up_ends_on_the_other_card_too(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """alice gives up her offer before bob's owner answered it: bob's card is told and the offer ends there too
    (it used to stay 'proposed', and an accept locked bob's voucher until the TTP aborted)."""
    w = world(tmp_path, ca)
    n1 = offered(w)
    assert order(w, "alice", fa.GIVE_UP, n1=n1)["phase"] == "gave_up"
    w.run(300)
    x = exchanges(w, "bob")[n1]
    assert x["phase"] == "aborted" and x["why"] == "withdrawn", x
    refused = order(w, "bob", fa.ACCEPT, n1=n1)
    assert refused.get("refused"), refused  # nothing to accept any more
    assert status(w, "alice", T1) == "enabled" and status(w, "bob", T2) == "enabled"
