"""A gate card's prune ends the idle sessions with holders' cards: the holder's next presentation is decided at
once, with no recovery round (``trn.recover``) run on any card, as the first one was (real cards on one in-memory
host; nothing here sends trn.recover)."""

from __future__ import annotations

from pathlib import Path

from test_gate_cards import present
from test_gate_prune import BODY, gate_world, prune
from trnkit import status
from trnworld import issue, uid

from cardnet.applets.gate import ADMISSIONS, LIST
from cardnet.crypto import pki
from cardnet.protocols import gate

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
