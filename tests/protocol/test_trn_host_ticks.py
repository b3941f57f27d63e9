"""The host's tick drives TRN recovery: no application sends ``trn.recover``, the host does (``Host.tick``)."""

from __future__ import annotations

from pathlib import Path

from trnkit import drop, statuses
from trnworld import TrnWorld, issue, standard

from cardnet.applets.trn import MINT, RECOVER, SEND
from cardnet.crypto import pki
from cardnet.protocols import session as sess

OID = bytes(range(16))


def tick(w: TrnWorld, *names: str, times: int = 3) -> None:
    """What the host server's timer does every period: a tick per card, then the pump runs."""
    for _ in range(times):
        for name in names:
            w.host.tick(w.cards[name].uid.domain, RECOVER)
        w.run(300)


def test_a_lost_copy_is_resent_by_the_host_tick(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = standard(tmp_path, ca, ("alice",))
    issue(w, bytes(16), "alice")  # opens the agent-alice session
    lost = drop(w, "agent", "alice", 1)  # the next record agent -> alice: the copy
    assert w.result("agent", MINT, oid=OID, body=b"seat 9")["ok"]
    assert w.result("agent", SEND, oid=OID, to=w.cards["alice"].uid)["ok"]
    w.run(300)
    assert lost.dropped and statuses(w, OID, "agent", "alice") == {"agent": "disabled+O", "alice": None}
    tick(w, "agent", "alice")
    assert statuses(w, OID, "agent", "alice") == {"agent": None, "alice": "enabled"}


def test_a_lost_handshake_is_restarted_by_the_host_tick(tmp_path: Path, ca: pki.CertificateAuthority) -> None:

    w = standard(tmp_path, ca, ("alice",))
    drop(w, "agent", "alice", 1, mtype=sess.HELLO.code)
    issue(w, OID, "alice")
    assert statuses(w, OID, "agent", "alice") == {"agent": "disabled+O", "alice": None}
    tick(w, "agent", "alice")  # a stale handshake is given one period, then started again
    assert statuses(w, OID, "agent", "alice") == {"agent": None, "alice": "enabled"}
