"""The owner can refuse a token (TRN 3.3.2, copied=false "because of owner's rejection"), through cards on one host.

A receiving card's acceptance policy (trn.accept_policy: accepted issuers, ask first) and the owner's answer to an
offer (trn.answer): a refused token stays with its sender, enabled, with the reason; the receiver keeps nothing;
nothing is lost or doubled; only the owner (an application that verified the PIN) sets the policy or answers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trnkit import drop, recover, statuses
from trnworld import TrnWorld, issue, standard, uid

from cardnet.applets.authority import CHAIN, QUERY
from cardnet.applets.trn import ACCEPT_POLICY, ACCEPT_POLICY_IS, ANSWER, CANCEL, MINT, RESULT, SEND
from cardnet.card import mtypes as cm
from cardnet.crypto import pki
from cardnet.host.core import HOST_PORT
from cardnet.protocols import session as sess
from cardnet.protocols.trn import transfer as tr
from cardnet.wire import Message, Uid

OID = bytes(range(16))


def world(tmp_path: Path, ca: pki.CertificateAuthority) -> TrnWorld:
    w = standard(tmp_path, ca, ("alice", "bob", "carol"))
    issue(w, OID, "alice")
    return w


def send(w: TrnWorld, src: str, dst: str, oid: bytes = OID) -> dict[str, Any]:
    r = w.result(src, SEND, oid=oid, to=uid(w, dst))
    w.run(300)
    return r


def item(w: TrnWorld, name: str, oid: bytes = OID) -> dict[str, Any] | None:
    return w.tokens(name).get(oid)


def holders(w: TrnWorld, oid: bytes = OID) -> list[object]:
    return list(CHAIN.parse(w.ask("authority", QUERY, oid=oid))["holders"])


def policy(w: TrnWorld, name: str, **fields: Any) -> dict[str, Any]:
    return dict(ACCEPT_POLICY_IS.parse(w.ask(name, ACCEPT_POLICY, **fields)))


def refused_reason(w: TrnWorld, app: Any) -> list[str]:
    w.run()
    return [cm.REFUSED.parse(m)["reason"] for m in app.receive_all() if m.mtype == cm.REFUSED.code]


def host_says(w: TrnWorld, msg: Message) -> list[str]:
    """The card's answers to a message from its host's own port (what a malicious host can send): the reasons."""
    outs = w.cards["bob"].step(msg, w.now)
    return [cm.REFUSED.parse(o.msg)["reason"] for o in outs if o.msg.mtype == cm.REFUSED.code]


def test_a_token_from_an_issuer_not_accepted_stays_with_its_sender(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = world(tmp_path, ca)
    other = w.card("agent2", pki.Role.AGENT)
    assert policy(w, "bob", issuers=[other.uid]) == {"issuers": [other.uid], "ask": False}
    assert send(w, "alice", "bob")["ok"]
    assert statuses(w, OID, "alice", "bob") == {"alice": "enabled", "bob": None}
    assert item(w, "alice") == {"oid": OID, "status": "enabled", "body": b"seat 12A", "refused": "issuer_not_accepted"}
    assert holders(w) == [uid(w, "alice")]  # the refused copy was never committed nor traced
    # the same card takes it once the owner accepts the agent; the refusal note goes with the next transfer
    assert policy(w, "bob", issuers=[other.uid, uid(w, "agent")])["issuers"] == [other.uid, uid(w, "agent")]
    send(w, "alice", "bob")
    assert statuses(w, OID, "alice", "bob") == {"alice": None, "bob": "enabled"}
    assert item(w, "bob") == {"oid": OID, "status": "enabled", "body": b"seat 12A"}
    assert holders(w) == [uid(w, "alice"), uid(w, "bob")]
    # an empty list takes any issuer again; the policy without fields only reports
    assert policy(w, "bob", issuers=[]) == {"issuers": [], "ask": False}
    assert policy(w, "bob") == {"issuers": [], "ask": False}


def test_ask_first_holds_the_offer_and_a_rejection_gives_the_token_back(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = world(tmp_path, ca)
    assert policy(w, "bob", ask=True) == {"issuers": [], "ask": True}
    send(w, "alice", "bob")
    assert statuses(w, OID, "alice", "bob") == {"alice": "disabled+O", "bob": "offered"}
    assert item(w, "bob") == {
        "oid": OID, "status": "offered", "peer": uid(w, "alice"), "body": b"seat 12A", "issuer": uid(w, "agent"),
    }  # fmt: skip
    recover(w, "alice", "bob")  # the sender's recovery resends the copy: still waiting for the owner
    assert statuses(w, OID, "alice", "bob") == {"alice": "disabled+O", "bob": "offered"}
    assert w.result("bob", ANSWER, oid=OID, accept=False) == {"ok": True, "reason": "refused_by_owner", "oid": OID}
    w.run(300)
    assert statuses(w, OID, "alice", "bob") == {"alice": "enabled", "bob": None}
    assert item(w, "alice") == {"oid": OID, "status": "enabled", "body": b"seat 12A", "refused": "refused_by_owner"}
    again = w.result("bob", ANSWER, oid=OID, accept=True)  # nothing left to accept
    assert not again["ok"] and again["reason"] == "no_offer"
    # no token lost, none doubled: alice can still give it to someone who takes it
    send(w, "alice", "carol")
    assert statuses(w, OID, "alice", "bob", "carol") == {"alice": None, "bob": None, "carol": "enabled"}
    assert holders(w) == [uid(w, "alice"), uid(w, "carol")]


def test_ask_first_and_the_owner_accepts(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = world(tmp_path, ca)
    policy(w, "bob", ask=True)
    send(w, "alice", "bob")
    lost = drop(w, "bob", "alice", 1)  # the copied ok after the accept is lost: recovery finishes the transfer
    assert w.result("bob", ANSWER, oid=OID, accept=True) == {"ok": True, "reason": "accepted", "oid": OID}
    w.run(300)
    assert len(lost.dropped) == 1
    assert statuses(w, OID, "alice", "bob") == {"alice": "disabled+O", "bob": "trustless_disabled"}
    recover(w, "alice", "bob")
    assert statuses(w, OID, "alice", "bob") == {"alice": None, "bob": "enabled"}
    assert holders(w) == [uid(w, "alice"), uid(w, "bob")]
    # back at alice's, who takes anything: the policy is per card
    send(w, "bob", "alice")
    assert statuses(w, OID, "alice", "bob") == {"alice": "enabled", "bob": None}


def test_a_lost_rejection_is_answered_again_not_offered_again(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = world(tmp_path, ca)
    policy(w, "bob", ask=True)
    send(w, "alice", "bob")
    lost = drop(w, "bob", "alice", 1)
    assert w.result("bob", ANSWER, oid=OID, accept=False)["ok"]
    w.run(300)
    assert len(lost.dropped) == 1
    assert statuses(w, OID, "alice", "bob") == {"alice": "disabled+O", "bob": None}
    recover(w, "alice", "bob")  # the resent copy of the rejected transfer gets the same answer
    assert statuses(w, OID, "alice", "bob") == {"alice": "enabled", "bob": None}
    assert item(w, "alice") == {"oid": OID, "status": "enabled", "body": b"seat 12A", "refused": "refused_by_owner"}
    # a new transfer of the same token is a new offer for the owner
    send(w, "alice", "bob")
    assert statuses(w, OID, "alice", "bob") == {"alice": "disabled+O", "bob": "offered"}


def test_the_sender_may_cancel_while_the_owner_has_not_answered(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = world(tmp_path, ca)
    policy(w, "bob", ask=True)
    send(w, "alice", "bob")
    assert w.result("alice", CANCEL, oid=OID)["ok"]
    w.run(300)
    assert statuses(w, OID, "alice", "bob") == {"alice": "enabled", "bob": None}
    late = w.result("bob", ANSWER, oid=OID, accept=True)
    assert not late["ok"] and late["reason"] == "no_offer"
    assert statuses(w, OID, "alice", "bob") == {"alice": "enabled", "bob": None}


def test_only_the_owner_sets_the_policy_or_answers_an_offer(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """Without the PIN (another application on the host, or the host itself) neither the policy nor the answer
    is taken: a host can neither make the card refuse what its owner takes nor accept in the owner's place."""
    w = world(tmp_path, ca)
    bob = uid(w, "bob")
    stranger = w.host.acquire(bob.domain, w.now)  # an application on bob's host that did not verify the PIN
    stranger.send(bob, ACCEPT_POLICY, issuers=[uid(w, "carol")])
    assert refused_reason(w, stranger) == ["privileged"]
    assert host_says(w, ACCEPT_POLICY.make(Uid(bob.domain, HOST_PORT), bob, ask=True)) == ["privileged"]
    assert policy(w, "bob") == {"issuers": [], "ask": False}  # nothing changed
    # the owner asks first; the stranger and the host try to accept the offer
    policy(w, "bob", ask=True)
    send(w, "alice", "bob")
    stranger.send(bob, ANSWER, oid=OID, accept=True)
    assert refused_reason(w, stranger) == ["privileged"]
    assert host_says(w, ANSWER.make(Uid(bob.domain, HOST_PORT), bob, oid=OID, accept=True)) == ["privileged"]
    recover(w, "alice", "bob")
    assert statuses(w, OID, "alice", "bob") == {"alice": "disabled+O", "bob": "offered"}
    # a bad policy from the owner is refused cleanly
    twice = w.ask("bob", ACCEPT_POLICY, issuers=[uid(w, "agent"), uid(w, "agent")])
    assert cm.REFUSED.parse(twice)["reason"] == "bad_policy"
    app_port = w.ask("bob", ACCEPT_POLICY, issuers=[Uid(uid(w, "agent").domain, 7)])
    assert cm.REFUSED.parse(app_port)["reason"] == "bad_policy"
    assert policy(w, "bob") == {"issuers": [], "ask": True}


def test_a_freshly_minted_token_is_refused_like_any_other(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """The agent's own card is a sender like any other: a refused freshly minted token stays on it, enabled."""
    w = world(tmp_path, ca)
    oid2 = bytes(range(16, 32))
    policy(w, "carol", issuers=[uid(w, "alice")])  # a device, not the agent: nothing the agent mints matches
    assert w.result("agent", MINT, oid=oid2, body=b"seat 13B")["ok"]
    send(w, "agent", "carol", oid2)
    assert statuses(w, oid2, "agent", "carol") == {"agent": "enabled", "carol": None}
    assert item(w, "agent", oid2) == {
        "oid": oid2, "status": "enabled", "body": b"seat 13B", "refused": tr.ISSUER_NOT_ACCEPTED,
    }  # fmt: skip
    assert RESULT.parse(w.ask("agent", SEND, oid=oid2, to=uid(w, "bob")))["ok"]
    w.run(300)
    assert statuses(w, oid2, "agent", "bob") == {"agent": None, "bob": "enabled"}


def test_a_refusal_costs_its_reason_on_the_wire(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """copied false "<reason>" is the 32-byte copied ok plus the reason (key 1 + text head 1 + its bytes):
    50 bytes for refused_by_owner, 53 for issuer_not_accepted (docs/trn.md, section 5)."""
    w = world(tmp_path, ca)
    a, b = uid(w, "alice"), uid(w, "bob")
    acks: list[int] = []
    w.host.observe(lambda m, o: acks.append(len(m.param)) if m.mtype == sess.RECORD.code and m.src == b else None)
    policy(w, "bob", ask=True)
    send(w, "alice", "bob")
    assert acks == []  # an offer answers nothing until the owner does
    w.result("bob", ANSWER, oid=OID, accept=False)
    w.run(300)
    assert acks == [34 + len(tr.REFUSED_BY_OWNER)] == [50]
    acks.clear()
    policy(w, "bob", ask=False, issuers=[a])
    send(w, "alice", "bob")
    assert acks == [34 + len(tr.ISSUER_NOT_ACCEPTED)] == [53]
