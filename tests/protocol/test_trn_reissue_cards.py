"""Reissue through cards: the issuing agent revokes a lost token and reissues it to its last recorded holder.

The agent's card asks the authority over its session (``reissue``); the authority checks that the agent issued
the old oid and that it is not revoked yet, revokes it, and names the last recorded holder; the agent's card
mints the new token and moves it there with a normal traced transfer. Refusals: not the issuer, already revoked,
unknown oid, an unregistered agent, a wallet, a card without the body or without an authority.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trnkit import drop, recover, status, statuses
from trnworld import TrnWorld, issue, standard, uid

from cardnet.applets.authority import ADD_AGENT, CHAIN, QUERY, REVOKE
from cardnet.applets.trn import MINT, REISSUE, REISSUE_STATE, SEND, SET_AUTHORITY
from cardnet.card import mtypes as cm
from cardnet.crypto import pki
from cardnet.protocols import session as sess

OLD = bytes(range(16))
NEW = bytes(range(100, 116))
NEW2 = bytes(range(200, 216))


def reissue(w: TrnWorld, name: str = "agent", **fields: Any) -> dict[str, Any]:
    """``trn.reissue`` on ``name``'s card; the state it reports, or ``{"state": "card_refused", reason...}``."""
    reply = w.ask(name, REISSUE, **fields)
    if reply.mtype == cm.REFUSED.code:
        return {"state": "card_refused", **cm.REFUSED.parse(reply)}
    return REISSUE_STATE.parse(reply)


def chain(w: TrnWorld, oid: bytes) -> dict[str, Any]:
    return CHAIN.parse(w.ask("authority", QUERY, oid=oid))


def send(w: TrnWorld, src: str, dst: str, oid: bytes) -> None:
    assert w.result(src, SEND, oid=oid, to=uid(w, dst))["ok"]
    w.run(300)


def test_a_lost_token_is_reissued_to_its_last_recorded_holder(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = standard(tmp_path, ca, ("alice", "bob", "carol"))
    issue(w, OLD, "alice", body=b"Final, seat 7")
    send(w, "alice", "bob", OLD)
    assert chain(w, OLD)["holders"] == [uid(w, "alice"), uid(w, "bob")]

    first = reissue(w, oid=OLD, new_oid=NEW)  # the body defaults to the one the agent's card minted
    assert first["state"] in ("pending", "done")
    w.run(300)
    done = reissue(w, oid=OLD)  # repeating the command reports the outcome
    assert done == {"oid": OLD, "new_oid": NEW, "state": "done", "holder": uid(w, "bob"), "reason": done["reason"]}

    assert statuses(w, NEW, "agent", "bob") == {"agent": None, "bob": "enabled"}
    assert w.tokens("bob")[NEW]["body"] == b"Final, seat 7"
    old = chain(w, OLD)
    assert old["revoked"] == b"\x01" and old["reissued_as"] == NEW
    assert chain(w, NEW)["issuer"] == uid(w, "agent") and chain(w, NEW)["holders"] == [uid(w, "bob")]

    # the surviving copy of the old oid is useless: its next holder never gets it enabled
    send(w, "bob", "carol", OLD)
    recover(w, "carol")
    assert status(w, "carol", OLD) == "trustless"
    assert chain(w, OLD)["holders"] == [uid(w, "alice"), uid(w, "bob")]


def test_a_token_that_never_moved_is_reissued_to_the_agent(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """No chain at the authority: the agent's card presents the token it minted as proof of issue."""
    w = standard(tmp_path, ca, ("alice",))
    assert w.result("agent", MINT, oid=OLD, body=b"seat 1")["ok"]
    assert reissue(w, oid=OLD, new_oid=NEW, body=b"seat 1 (reprinted)")["state"] in ("pending", "done")
    w.run(300)
    done = reissue(w, oid=OLD)
    assert done["state"] == "done" and done["holder"] == uid(w, "agent")
    old = chain(w, OLD)
    assert old["issuer"] == uid(w, "agent") and old["holders"] == [] and old["reissued_as"] == NEW
    agent = w.tokens("agent")
    assert OLD not in agent  # the revoked token is gone from the agent's card
    assert agent[NEW]["status"] == "enabled" and agent[NEW]["body"] == b"seat 1 (reprinted)"
    send(w, "agent", "alice", NEW)  # and the new one moves and traces like any token
    assert status(w, "alice", NEW) == "enabled"


def test_the_card_draws_the_new_oid_and_a_resent_request_gets_the_same_answer(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = standard(tmp_path, ca, ("alice",))
    issue(w, OLD, "alice")
    lost = drop(w, "authority", "agent", 1)  # the authority's first record to the agent: its reissued answer
    pending = reissue(w, oid=OLD)
    new = pending["new_oid"]
    w.run(300)
    assert lost.dropped and reissue(w, oid=OLD) == pending  # still pending: the answer was lost
    recover(w, "agent")  # the host's timer: the card resends the request, the authority answers it again
    done = reissue(w, oid=OLD)
    assert done["state"] == "done" and done["new_oid"] == new and done["holder"] == uid(w, "alice")
    assert statuses(w, new, "agent", "alice") == {"agent": None, "alice": "enabled"}
    assert chain(w, new)["holders"] == [uid(w, "alice")]  # recorded once
    # another new oid for the same old one is refused by the card itself
    again = reissue(w, oid=OLD, new_oid=NEW2)
    assert again["state"] == "card_refused" and f"already reissued as {new.hex()}" in again["detail"]


def test_only_the_issuer_may_reissue(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = standard(tmp_path, ca, ("alice",))
    other = w.card("agent2", pki.Role.AGENT)
    assert w.result("authority", ADD_AGENT, cert=other.certificate_der)["ok"]
    assert w.result("agent2", SET_AUTHORITY, authority=uid(w, "authority"))["ok"]
    issue(w, OLD, "alice")
    reissue(w, "agent2", oid=OLD, new_oid=NEW, body=b"mine now")
    w.run(300)
    refused = reissue(w, "agent2", oid=OLD)
    assert refused["state"] == "refused" and refused["reason"].startswith("not the issuer")
    assert "revoked" not in chain(w, OLD) and status(w, "alice", OLD) == "enabled"
    assert status(w, "agent2", NEW) is None


def test_an_already_revoked_oid_is_not_reissued(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = standard(tmp_path, ca, ("alice",))
    issue(w, OLD, "alice")
    assert w.result("authority", REVOKE, oid=OLD)["ok"]
    reissue(w, oid=OLD, new_oid=NEW)
    w.run(300)
    refused = reissue(w, oid=OLD)
    assert refused["state"] == "refused" and refused["reason"].startswith("already revoked")
    assert status(w, "agent", NEW) is None and "issuer" not in chain(w, NEW)


def test_an_unknown_oid_is_not_reissued(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """The agent's card never minted it (so it needs the body) and the authority never traced it."""
    w = standard(tmp_path, ca, ("alice",))
    assert reissue(w, oid=OLD, new_oid=NEW)["reason"] == "need_body"
    reissue(w, oid=OLD, new_oid=NEW, body=b"seat ?")
    w.run(300)
    refused = reissue(w, oid=OLD)
    assert refused["state"] == "refused" and refused["reason"].startswith("unknown oid")
    assert status(w, "agent", NEW) is None


def test_a_refused_reissue_can_be_retried_with_another_new_oid(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """The agent was not registered yet: refused; the operator registers it; a retry under a new oid works."""
    w = TrnWorld(tmp_path, ca)
    w.card("authority", pki.Role.SERVICE)
    agent = w.card("agent", pki.Role.AGENT)
    assert w.result("agent", SET_AUTHORITY, authority=uid(w, "authority"))["ok"]
    assert w.result("agent", MINT, oid=OLD, body=b"seat 3")["ok"]
    reissue(w, oid=OLD, new_oid=NEW)
    w.run(300)
    refused = reissue(w, oid=OLD)
    assert refused["state"] == "refused" and "not a registered agent" in refused["reason"]
    assert reissue(w, oid=OLD, new_oid=NEW) == refused  # the same request stays refused
    assert w.result("authority", ADD_AGENT, cert=agent.certificate_der)["ok"]
    reissue(w, oid=OLD, new_oid=NEW2)
    w.run(300)
    assert reissue(w, oid=OLD)["state"] == "done"
    assert status(w, "agent", NEW2) == "enabled" and status(w, "agent", NEW) is None


def test_the_card_refuses_what_it_cannot_reissue(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = TrnWorld(tmp_path, ca)
    w.card("authority", pki.Role.SERVICE)
    w.card("agent", pki.Role.AGENT)
    w.card("alice")
    assert w.result("agent", MINT, oid=OLD, body=b"x")["ok"]
    assert reissue(w, "alice", oid=OLD, new_oid=NEW, body=b"x")["reason"] == "wrong_usage"  # a wallet
    assert reissue(w, oid=OLD, new_oid=NEW)["reason"] == "no_authority"
    assert w.result("agent", SET_AUTHORITY, authority=uid(w, "authority"))["ok"]
    assert reissue(w, oid=OLD, new_oid=OLD)["reason"] == "refused"  # the new oid must be new
    drop(w, "agent", "authority", 1, mtype=sess.HELLO.code)  # the request waits for a session
    assert reissue(w, oid=OLD, new_oid=NEW)["state"] == "pending"
    minted = w.result("agent", MINT, oid=NEW, body=b"y")
    assert not minted["ok"] and "reserved for a pending reissue" in minted["detail"]
    other = reissue(w, oid=OLD, new_oid=NEW2)
    assert other["state"] == "card_refused" and f"already being reissued as {NEW.hex()}" in other["detail"]
