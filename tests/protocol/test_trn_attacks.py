"""TRN attacks through cards: a cloned wallet, revoked oids, blocked devices, foreign issuers, a man in the middle."""

from __future__ import annotations

from pathlib import Path

import pytest
from trnkit import clear_guards, drop, recover, rewrite, status, statuses
from trnworld import PIN, TrnWorld, clone_store, issue, standard, uid

from cardnet.applets.authority import BLOCKED, BLOCKED_LIST, CHAIN, QUERY, REVOKE
from cardnet.applets.trn import BLOCKLIST, MINT, SEND, SET_AUTHORITY, TrnApplet
from cardnet.card import Card
from cardnet.card import mtypes as cm
from cardnet.crypto import pki
from cardnet.protocols import session as sess
from cardnet.store import SqliteStore
from cardnet.wire import Message, Uid
from conftest import NOW

OID = bytes(range(16))
OID2 = bytes(range(16, 32))


def send(w: TrnWorld, src: str, dst: str, oid: bytes = OID) -> None:
    assert w.result(src, SEND, oid=oid, to=uid(w, dst))["ok"]
    w.run(300)


def blocked(w: TrnWorld) -> set[Uid]:
    return set(BLOCKED.parse(w.ask("authority", BLOCKED_LIST))["uids"])


def swap_in(w: TrnWorld, name: str, card: Card) -> None:
    """Put ``card`` (same identity) in place of ``name``'s card on the host; its owner logs in again."""
    w.host.replace_card(card)
    w.cards[name] = card
    w.ask(name, cm.PIN_VERIFY, pin=PIN)


def deliver_blocklist(w: TrnWorld, name: str, raw: bytes) -> list[Message]:
    """``trn.blocklist`` is silent when accepted; returns the card's answers (a refusal, if any)."""
    w.apps[name].send(uid(w, name), BLOCKLIST, blocklist=raw)
    w.run()
    return w.apps[name].receive_all()


def test_cloned_card_spending_twice_is_caught_and_blocked(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = standard(tmp_path, ca, ("alice", "bob", "carol"))
    issue(w, OID, "alice")
    original = w.cards["alice"]
    clone = Card(SqliteStore(str(clone_store(w, "alice"))), applets=[TrnApplet()])
    assert clone.uid == original.uid  # same identity, same key, same enabled token

    send(w, "alice", "bob")  # the original spends: fine
    assert statuses(w, OID, "alice", "bob") == {"alice": None, "bob": "enabled"}

    swap_in(w, "alice", clone)  # the clone takes the original's place on the host and spends again
    assert status(w, "alice", OID) == "enabled"
    send(w, "alice", "carol")
    recover(w, "alice", "carol")
    assert status(w, "carol", OID) == "trustless"  # committed, but the authority refused the trace
    assert status(w, "bob", OID) == "enabled"
    assert uid(w, "alice") in blocked(w)
    chain = CHAIN.parse(w.ask("authority", QUERY, oid=OID))
    assert chain["holders"] == [uid(w, "alice"), uid(w, "bob")]  # the branch was not recorded

    # the operator publishes the blocklist; a card that learns it refuses sessions with the clone
    bl = ca.sign_blocklist(1, blocked(w), now=NOW)
    assert deliver_blocklist(w, "bob", bl.encode()) == []
    failed: list[Message] = []
    w.host.observe(lambda m, o: failed.append(m) if m.mtype == sess.FAILED.code else None)
    assert w.result("alice", MINT, oid=OID2, body=b"x")["ok"] is False  # a wallet cannot mint
    assert w.result("bob", SEND, oid=OID, to=uid(w, "alice"))["ok"]
    w.run(300)
    recover(w, "bob")  # the clone has no session with bob (bob's old one was the original's): a new handshake
    assert any(sess.FAILED.parse(m)["reason"] == "blocked" for m in failed)
    assert status(w, "alice", OID) is None
    original.close()


@pytest.mark.parametrize("carol_traced_first", [True, False])
def test_a_rolled_back_card_re_sending_an_old_transfer_never_enables_a_second_copy(
    tmp_path: Path, ca: pki.CertificateAuthority, carol_traced_first: bool
) -> None:
    """A thief keeps an image of alice's EEPROM taken while her transfer to bob was pending, and writes it back
    after the token went on from bob to carol: the old alice re-sends the very same transfer (same nonce) to bob.

    Found by the simulator's rolled-back wallet (``cardnet sim --protocol transfer``, seeds 71 and 197): bob took
    the copy again, committed it and traced it, and the authority answered "already recorded" (the movement is
    in the chain; seed 197: carol's trace had not arrived yet, so it was even the last one); bob's copy was
    enabled next to carol's. Bob now answers a transfer he committed before as a duplicate without taking the
    copy, and the authority refuses a movement claimed again after the token moved on.
    """
    w = standard(tmp_path, ca, ("alice", "bob", "carol"))
    issue(w, OID, "alice")
    drop(w, "alice", "bob", *range(1, 1000))  # alice's records to bob are lost: the transfer stays pending
    assert w.result("alice", SEND, oid=OID, to=uid(w, "bob"))["ok"]
    w.run(300)
    assert status(w, "alice", OID) == "disabled+O"
    image = Card(SqliteStore(str(clone_store(w, "alice"))), applets=[TrnApplet()])
    clear_guards(w)
    recover(w, "alice", "bob")
    assert statuses(w, OID, "alice", "bob") == {"alice": None, "bob": "enabled"}
    if not carol_traced_first:
        drop(w, "carol", "authority", *range(1, 1000))  # carol's trace is held up
    send(w, "bob", "carol")
    assert status(w, "bob", OID) is None
    original = w.cards["alice"]
    swap_in(w, "alice", image)  # the old alice, still sending OID to bob
    recover(w, "alice", "bob")
    clear_guards(w)
    recover(w, "alice", "bob", "carol")
    assert status(w, "carol", OID) == "enabled"
    assert status(w, "bob", OID) != "enabled"
    original.close()


def test_blocklist_spreads_through_handshakes(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """bob learns the blocklist by trn.blocklist; carol learns it from bob's handshake and then refuses mallory."""
    w = standard(tmp_path, ca, ("bob", "carol", "mallory"))
    issue(w, OID, "mallory")
    bl = ca.sign_blocklist(2, [uid(w, "mallory")], now=NOW)
    assert deliver_blocklist(w, "bob", bl.encode()) == []
    issue(w, OID2, "bob")
    send(w, "bob", "carol", OID2)  # the handshake bob -> carol carries epoch 2
    assert status(w, "carol", OID2) == "enabled"
    send(w, "mallory", "carol")
    recover(w, "mallory")
    assert statuses(w, OID, "mallory", "carol") == {"mallory": "disabled+O", "carol": None}


def test_forged_blocklist_is_refused(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = standard(tmp_path, ca, ("bob",))
    rogue = pki.CertificateAuthority.create("rogue", now=NOW).sign_blocklist(9, [uid(w, "authority")], now=NOW)
    (r,) = deliver_blocklist(w, "bob", rogue.encode())
    assert cm.REFUSED.parse(r)["reason"] == "bad_blocklist"


def test_seekfor_refused_for_a_revoked_oid(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = standard(tmp_path, ca)
    issue(w, OID, "alice")
    assert w.result("authority", REVOKE, oid=OID)["ok"]
    send(w, "alice", "bob")
    recover(w, "bob")
    assert statuses(w, OID, "alice", "bob") == {"alice": None, "bob": "trustless"}
    assert CHAIN.parse(w.ask("authority", QUERY, oid=OID))["revoked"] == b"\x01"


def test_seekfor_refused_from_and_for_a_blocked_device(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = standard(tmp_path, ca, ("alice", "bob", "carol"))
    issue(w, OID, "alice")
    issue(w, OID2, "bob")
    # make the authority block alice: a movement claimed from alice of a token she never held (a branch)
    clone = Card(SqliteStore(str(clone_store(w, "alice"))), applets=[TrnApplet()])
    send(w, "alice", "carol")
    swap_in(w, "alice", clone)
    send(w, "alice", "bob")  # the clone spends OID again: branch, alice blocked
    assert uid(w, "alice") in blocked(w)
    # from a blocked device: bob received OID from alice -> stays trustless (above)
    assert status(w, "bob", OID) == "trustless"
    # for a blocked device: alice (the seeker) receives OID2 from bob and may not trace it
    send(w, "bob", "alice", OID2)
    recover(w, "alice")
    assert statuses(w, OID2, "bob", "alice") == {"bob": None, "alice": "trustless"}
    assert CHAIN.parse(w.ask("authority", QUERY, oid=OID2))["holders"] == [uid(w, "bob")]


def test_token_of_an_unregistered_issuer_is_never_enabled(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = standard(tmp_path, ca)
    w.card("rogue_agent", pki.Role.AGENT)  # a genuine agent certificate, but not registered at the authority
    assert w.result("rogue_agent", SET_AUTHORITY, authority=uid(w, "authority"))["ok"]
    assert w.result("rogue_agent", MINT, oid=OID, body=b"fake seat")["ok"]
    send(w, "rogue_agent", "alice")
    recover(w, "alice")
    assert status(w, "alice", OID) == "trustless"
    assert CHAIN.parse(w.ask("authority", QUERY, oid=OID))["holders"] == []


def test_mitm_relaying_a_hello_under_its_own_identity_is_refused(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """A host re-addresses alice's hello as coming from mallory (who has a valid certificate of her own)."""
    w = standard(tmp_path, ca, ("alice", "bob", "mallory"))
    issue(w, OID, "alice")
    a, b, m = uid(w, "alice"), uid(w, "bob"), uid(w, "mallory")
    failed: list[Message] = []
    w.host.observe(lambda msg, o: failed.append(msg) if msg.mtype == sess.FAILED.code else None)
    rewrite(
        w, lambda msg: Message(m, b, msg.mtype, msg.param) if msg.mtype == sess.HELLO.code and msg.src == a else None
    )
    send(w, "alice", "bob")
    assert any(sess.FAILED.parse(f)["reason"] == "uid_mismatch" and f.src == b for f in failed)
    assert statuses(w, OID, "alice", "bob") == {"alice": "disabled+O", "bob": None}


def test_wallet_cannot_mint(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = standard(tmp_path, ca, ("alice",))
    r = w.result("alice", MINT, oid=OID, body=b"x")
    assert not r["ok"] and r["reason"] == "wrong_usage"


def test_a_blocklist_ends_open_sessions_with_blocked_peers(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """bob and alice have an open session; bob then learns that alice is blocked: her next copy is refused."""
    w = standard(tmp_path, ca)
    issue(w, OID, "alice")
    issue(w, OID2, "alice")
    send(w, "alice", "bob")
    assert status(w, "bob", OID) == "enabled"
    assert deliver_blocklist(w, "bob", ca.sign_blocklist(1, [uid(w, "alice")], now=NOW).encode()) == []
    failed: list[Message] = []
    w.host.observe(lambda m, o: failed.append(m) if m.mtype == sess.FAILED.code else None)
    send(w, "alice", "bob", OID2)
    recover(w, "alice")
    assert statuses(w, OID2, "alice", "bob") == {"alice": "disabled+O", "bob": None}
    assert {sess.FAILED.parse(m)["reason"] for m in failed if m.src == uid(w, "bob")} >= {"blocked"}


def test_a_send_to_this_card_itself_or_to_an_application_is_refused_saying_which(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """Each names what is wrong with the receiver (both used to read 'send a token to another card (a Uid with
    port 0)', which told someone who named their own card nothing); the token stays, enabled."""
    w = standard(tmp_path, ca, ("alice", "bob"))
    issue(w, OID, "alice")
    own = uid(w, "alice")
    got = w.result("alice", SEND, oid=OID, to=own)
    assert not got["ok"] and got["reason"] == "refused"
    assert got["detail"] == f"{own} is this card itself: send a token to another card"
    app = Uid(uid(w, "bob").domain, 7)
    got = w.result("alice", SEND, oid=OID, to=app)
    assert not got["ok"] and got["detail"].startswith(f"{app} is not a card (a card's Uid ends in :00000000)")
    assert status(w, "alice", OID) == "enabled"
