"""TRN end to end in one process: issue, trace, transfer, chain at the authority."""

from __future__ import annotations

from pathlib import Path

from trnworld import issue, standard, uid

from cardnet.applets.authority import CHAIN, QUERY
from cardnet.applets.trn import LIST, SEND, TOKENS
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


def test_a_list_for_one_oid_reads_that_token_alone(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = standard(tmp_path, ca)
    oids = [bytes([7, i]) + bytes(14) for i in range(5)]
    for oid in oids:
        issue(w, oid, "alice")
    assert w.result("alice", SEND, oid=oids[2], to=uid(w, "bob"))["ok"]  # (one of them on its way)
    w.run(200)
    every = w.tokens("alice")
    assert set(every) == set(oids) - {oids[2]}  # (sent: now bob's)
    for oid in oids:
        one = TOKENS.parse(w.ask("alice", LIST, oid=oid))["tokens"]
        assert one == ([every[oid]] if oid in every else []), oid  # the same item as in the whole list
    assert TOKENS.parse(w.ask("alice", LIST, oid=bytes(16)))["tokens"] == []  # a token it does not hold: none
