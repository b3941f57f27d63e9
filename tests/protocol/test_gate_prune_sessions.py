"""A gate card's prune ends the idle sessions with holders' cards: the holder's next presentation is decided at
once, with no recovery round (``trn.recover``) run on any card, as the first one was, whether the holder's card heard
that its session ended or not (real cards on one in-memory host; nothing here sends trn.recover)."""

from __future__ import annotations

from pathlib import Path

from test_gate_cards import present
from test_gate_prune import BODY, gate_world, prune
from trnkit import drop, status
from trnworld import issue, uid

from cardnet.applets.gate import ADMISSIONS, LIST
from cardnet.crypto import pki
from cardnet.protocols import gate
from cardnet.protocols import session as sess

T1, T2 = bytes([0x61]) * 16, bytes([0x62]) * 16


def test_a_holder_whose_session_a_prune_ended_presents_again_without_a_recovery_round(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = gate_world(tmp_path, ca)
    issue(w, T1, "alice", BODY)
    issue(w, T2, "alice", BODY)
    present(w, "alice", T1)
    assert status(w, "alice", T1) is None  # admitted: alice's card and the gate's now hold a session
    w.now += 1.0
    done = prune(w, int(w.now * 1000))
    assert done["pruned"] == 1 and done["sessions"] == 1, done  # the session with alice's card ended
    present(w, "alice", T2)  # no trn.recover on either card from here on
    assert status(w, "alice", T2) is None, w.tokens("alice").get(T2)  # taken by the gate
    items = {a["oid"]: a for a in ADMISSIONS.parse(w.ask("gate", LIST))["items"]}
    assert items[T2]["verdict"] == gate.ADMITTED and items[T2]["from"] == uid(w, "alice"), items


def test_a_holder_that_missed_the_prunes_notice_presents_again_without_a_recovery_round(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """The gate's ``session.failed session_ended`` is lost (the holder's phone was off): the holder's card presents in
    the ended session, the gate refuses the record (``no_session``), and the card, told that its open session is
    unknown there, sends the copy again in a new session at once."""
    w = gate_world(tmp_path, ca)
    issue(w, T1, "alice", BODY)
    issue(w, T2, "alice", BODY)
    present(w, "alice", T1)
    assert status(w, "alice", T1) is None
    w.now += 1.0
    notice = drop(w, "gate", "alice", 1, mtype=sess.FAILED.code)
    done = prune(w, int(w.now * 1000))
    assert done["sessions"] == 1 and len(notice.dropped) == 1, (done, notice.dropped)
    refused = drop(w, "gate", "alice", 1, mtype=sess.FAILED.code)  # (counts the gate's next one: not dropped)
    refused.nth.clear()
    present(w, "alice", T2)  # no trn.recover on either card from here on
    assert refused.seen == 1  # the gate refused the copy's record: alice's card went on from there
    assert status(w, "alice", T2) is None, w.tokens("alice").get(T2)
    items = {a["oid"]: a for a in ADMISSIONS.parse(w.ask("gate", LIST))["items"]}
    assert items[T2]["verdict"] == gate.ADMITTED, items
