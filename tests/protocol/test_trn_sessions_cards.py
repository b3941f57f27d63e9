"""TRN sessions through cards: session loss on one side, records from an old session."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from trnkit import statuses
from trnworld import PIN, TrnWorld, issue, standard, uid

from cardnet.applets.trn import CANCEL, MINT, SEND, TrnApplet
from cardnet.card import Card
from cardnet.card import mtypes as cm
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.host.core import HOST
from cardnet.protocols import session as sess
from cardnet.store import SqliteStore
from cardnet.wire import Message
from conftest import NOW

OIDS = [bytes([i]) * 16 for i in range(3)]


def send(w: TrnWorld, src: str, dst: str, oid: bytes) -> None:
    assert w.result(src, SEND, oid=oid, to=uid(w, dst))["ok"]
    w.run(300)


def lose_sessions(w: TrnWorld, name: str) -> None:
    """``name``'s card loses every session it had (its EEPROM rows ``s:*``), e.g. restored from an old backup."""
    w.cards[name].close()
    path = w.tmp / f"{name}.db"
    with sqlite3.connect(path) as db:
        n = db.execute("DELETE FROM kv WHERE tbl = 'card' AND k >= ? AND k < ?", (b"a.trn\x00s:", b"a.trn\x00s;"))
        assert n.rowcount >= 1
    db.close()
    card = Card(SqliteStore(str(path)), applets=[TrnApplet()])
    w.host.replace_card(card)
    w.cards[name] = card
    w.ask(name, cm.PIN_VERIFY, pin=PIN)


def test_session_lost_on_one_side_recovers_and_old_records_are_refused(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = standard(tmp_path, ca)
    for oid in OIDS:
        issue(w, oid, "alice")
    a, b = uid(w, "alice"), uid(w, "bob")
    records: list[Message] = []
    failed: list[Message] = []
    w.host.observe(
        lambda m, o: records.append(m) if m.mtype == sess.RECORD.code and m.src == a and m.dst == b else None
    )
    w.host.observe(lambda m, o: failed.append(m) if m.mtype == sess.FAILED.code else None)
    send(w, "alice", "bob", OIDS[0])
    send(w, "alice", "bob", OIDS[1])
    old = records[-1]  # alice's 4th record in the first session
    assert sess.RECORD.parse(old)["ctr"] == 4

    lose_sessions(w, "bob")
    send(w, "alice", "bob", OIDS[2])  # sealed in alice's old session: bob cannot open it and says so
    assert any(m.src == b and sess.FAILED.parse(m)["reason"] == "no_session" for m in failed)
    # told that her open session is unknown there, alice opens a new one and resends at once (no recovery round)
    assert statuses(w, OIDS[2], "alice", "bob") == {"alice": None, "bob": "enabled"}

    failed.clear()
    w.host.submit(old, HOST)  # a record of the old session, replayed into the new one
    w.run(300)
    assert [sess.FAILED.parse(m)["reason"] for m in failed if m.src == b] == ["bad_record"]
    for oid in OIDS:
        assert statuses(w, oid, "alice", "bob") == {"alice": None, "bob": "enabled"}


def test_every_record_of_a_lost_session_refused_still_leaves_one_new_session_and_both_transfers_done(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """Two transfers sealed in a session bob lost: bob refuses both records (two ``no_session``); the first makes
    alice start a new session and resend both, the second (about the old session) leaves that handshake alone. Both
    end without a recovery round."""
    w = standard(tmp_path, ca)
    for oid in OIDS:
        issue(w, oid, "alice")
    failed: list[Message] = []
    w.host.observe(lambda m, o: failed.append(m) if m.mtype == sess.FAILED.code else None)
    send(w, "alice", "bob", OIDS[0])  # a session between them
    lose_sessions(w, "bob")
    for oid in OIDS[1:]:  # both sealed in the old session before bob's first refusal comes back
        w.apps["alice"].send(uid(w, "alice"), SEND, oid=oid, to=uid(w, "bob"))
    w.run(300)
    assert [sess.FAILED.parse(m)["reason"] for m in failed if m.src == uid(w, "bob")] == ["no_session"] * 2
    for oid in OIDS:
        assert statuses(w, oid, "alice", "bob") == {"alice": None, "bob": "enabled"}


def extra_card(w: TrnWorld, name: str, ca: pki.CertificateAuthority, **kw: object) -> Card:
    """A wallet personalised outside the world's defaults (another CA, a short validity)."""
    card = Card(SqliteStore(str(w.tmp / f"{name}.db")), applets=[TrnApplet()])
    personalise(card, ca, pin=PIN, now=NOW, **kw)  # type: ignore[arg-type]
    w.cards[name] = card
    w.host.add_card(card)
    w.apps[name] = w.host.acquire(card.uid.domain, w.now)
    w.ask(name, cm.PIN_VERIFY, pin=PIN)
    return card


def failures(w: TrnWorld) -> list[Message]:
    out: list[Message] = []
    w.host.observe(lambda m, o: out.append(m) if m.mtype == sess.FAILED.code else None)
    return out


def test_card_of_an_unknown_ca_is_refused(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = standard(tmp_path, ca)
    rogue = pki.CertificateAuthority.create("rogue CA", now=NOW)
    extra_card(w, "mallory", rogue, role=pki.Role.AGENT)  # a rogue agent: mints under its own CA
    failed = failures(w)
    assert w.result("mallory", MINT, oid=OIDS[1], body=b"fake")["ok"]
    send(w, "mallory", "alice", OIDS[1])  # alice refuses mallory's hello
    assert [sess.FAILED.parse(m)["reason"] for m in failed if m.src == uid(w, "alice")] == ["unknown_ca"]
    assert statuses(w, OIDS[1], "alice", "mallory") == {"alice": None, "mallory": "disabled+O"}

    failed.clear()
    issue(w, OIDS[0], "alice")
    send(w, "alice", "mallory", OIDS[0])  # and mallory, trusting only her CA, refuses alice's
    assert [sess.FAILED.parse(m)["reason"] for m in failed if m.src == uid(w, "mallory")] == ["unknown_ca"]
    assert statuses(w, OIDS[0], "alice", "mallory") == {"alice": "disabled+O", "mallory": None}
    assert w.result("alice", CANCEL, oid=OIDS[0])["ok"]  # the owner gives up: the token is usable again
    assert statuses(w, OIDS[0], "alice", "mallory") == {"alice": "enabled", "mallory": None}


def test_expired_card_is_refused(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = standard(tmp_path, ca)
    extra_card(w, "old", ca, valid_days=1)
    failed = failures(w)
    issue(w, OIDS[0], "alice")
    w.now += 2 * 86400  # the host's clock: two days later
    send(w, "alice", "old", OIDS[0])
    assert [sess.FAILED.parse(m)["reason"] for m in failed if m.src == uid(w, "alice")] == ["expired"]
    assert statuses(w, OIDS[0], "alice", "old") == {"alice": "disabled+O", "old": None}
