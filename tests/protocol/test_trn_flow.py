"""TRN end to end in one process: issue, trace, transfer, chain at the authority."""

from __future__ import annotations

from pathlib import Path

from trnworld import issue, standard, uid

from cardnet.applets.authority import CHAIN, QUERY
from cardnet.applets.trn import SEND
from cardnet.crypto import pki

OID = bytes(range(16))


def test_issue_then_transfer_then_trace(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = standard(tmp_path, ca)
    issue(w, OID, "alice")
    assert w.tokens("agent") == {}
    alice = w.tokens("alice")
    assert alice[OID]["status"] == "enabled" and alice[OID]["body"] == b"seat 12A"

    assert w.result("alice", SEND, oid=OID, to=uid(w, "bob"))["ok"]
    w.run(200)
    assert w.tokens("alice") == {}
    assert w.tokens("bob")[OID]["status"] == "enabled"
    chain = CHAIN.parse(w.ask("authority", QUERY, oid=OID))
    assert chain["issuer"] == uid(w, "agent")
    assert chain["holders"] == [uid(w, "alice"), uid(w, "bob")]


def test_a_token_can_come_back(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = standard(tmp_path, ca)
    issue(w, OID, "alice")
    for src, dst in (("alice", "bob"), ("bob", "alice"), ("alice", "bob")):
        assert w.result(src, SEND, oid=OID, to=uid(w, dst))["ok"]
        w.run(200)
        assert w.tokens(dst)[OID]["status"] == "enabled", (src, dst)
        assert w.tokens(src) == {}
