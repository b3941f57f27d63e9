"""The gate applet with real cards on one in-memory host: admit once, refuse copies, revoked oids, blocked
devices, foreign and forged tickets; admit offline and report later; a clone admitted at two gates is caught."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trnkit import drop, recover, status
from trnworld import PIN, TrnWorld, clone_store, issue, standard, uid

from cardnet.applets.authority import BLOCKED, BLOCKED_LIST, REVOKE
from cardnet.applets.gate import ADMISSIONS, EVENT, LIST, SETUP, STATE, TICK, GateApplet
from cardnet.applets.trn import BLOCKLIST, MINT, SEND, SET_AUTHORITY, WATCH, TrnApplet
from cardnet.card import Card
from cardnet.card import mtypes as cm
from cardnet.crypto import pki, profile
from cardnet.protocols import gate
from cardnet.protocols import session as sess
from cardnet.protocols.trn.token import Token
from cardnet.store import SqliteStore
from cardnet.wire import Message
from conftest import NOW

T1, T2, T3 = (bytes([n]) * 16 for n in (1, 2, 3))


def gate_world(tmp: Path, ca: pki.CertificateAuthority, gates: tuple[str, ...] = ("gate",)) -> TrnWorld:
    w = standard(tmp, ca, ("alice", "bob"))
    for g in gates:
        w.card(g, applet=GateApplet())
        assert w.result(g, SET_AUTHORITY, authority=uid(w, "authority"))["ok"]
        state = STATE.parse(w.ask(g, SETUP, issuers=[w.cards["agent"].certificate_der], wait_ms=500))
        assert state["issuers"] == [uid(w, "agent")] and state["wait_ms"] == 500
    return w


def admissions(w: TrnWorld, g: str = "gate") -> dict[bytes, dict[str, Any]]:
    return {a["oid"]: a for a in ADMISSIONS.parse(w.ask(g, LIST))["items"]}


def present(w: TrnWorld, holder: str, oid: bytes, g: str = "gate") -> None:
    assert w.result(holder, SEND, oid=oid, to=uid(w, g))["ok"]
    w.run(300)


def refused_back(w: TrnWorld, holder: str, oid: bytes) -> str | None:
    t = w.tokens(holder).get(oid)
    assert t is not None and t["status"] == "enabled", t
    return t.get("refused")


def swap_in(w: TrnWorld, name: str, card: Card) -> None:
    w.host.replace_card(card)
    w.cards[name] = card
    w.ask(name, cm.PIN_VERIFY, pin=PIN)


def test_a_ticket_is_admitted_once_and_consumed(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = gate_world(tmp_path, ca)
    issue(w, T1, "alice", b"Final, seat 7")
    clone = Card(SqliteStore(str(clone_store(w, "alice"))), applets=[TrnApplet()])  # alice's EEPROM, copied
    present(w, "alice", T1)
    assert status(w, "alice", T1) is None
    adm = admissions(w)[T1]
    assert adm["verdict"] == gate.ADMITTED and adm["report"] == gate.TRACED and adm["body"] == b"Final, seat 7"
    assert adm["from"] == uid(w, "alice")
    assert status(w, "gate", T1) == "enabled"
    # consumed: the gate's card never sends it on
    refusal = w.ask("gate", SEND, oid=T1, to=uid(w, "bob"))
    assert refusal.mtype == cm.REFUSED.code and cm.REFUSED.parse(refusal)["reason"] == gate.CONSUMED
    # the clone presents the same oid: refused, and keeps it (nothing is taken)
    swap_in(w, "alice", clone)
    answers: list[int] = []
    w.host.observe(
        lambda m, o: answers.append(len(m.param)) if m.mtype == sess.RECORD.code and m.src == uid(w, "gate") else None
    )
    present(w, "alice", T1)
    assert refused_back(w, "alice", T1) == gate.ALREADY_ADMITTED
    assert answers == [34 + len(gate.ALREADY_ADMITTED)] == [50]  # copied false "already_admitted" (docs/gate.md)
    assert len(admissions(w)) == 1
    assert STATE.parse(w.ask("gate", SETUP))["refused"] == 1


def test_revoked_oid_refused_online_foreign_forged_and_untraceable_refused(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = gate_world(tmp_path, ca)
    issue(w, T1, "alice")
    assert w.result("authority", REVOKE, oid=T1)["ok"]
    present(w, "alice", T1)
    adm = admissions(w)[T1]
    assert adm["verdict"] == gate.REFUSED and adm["reason"].startswith("revoked")
    assert adm["report"] == gate.DISOWNED and status(w, "alice", T1) is None  # a dead ticket, kept by the gate
    # a ticket of an issuer the gate does not know (a second agent)
    w.card("agent2", pki.Role.AGENT)
    assert w.result("agent2", MINT, oid=T2, body=b"another event")["ok"]
    present(w, "agent2", T2)
    assert refused_back(w, "agent2", T2) == "issuer_not_accepted"
    # an untraceable ticket
    issue(w, T3, "bob")
    assert w.result("bob", SEND, oid=T3, to=uid(w, "gate"), traceable=False)["ok"]
    w.run(300)
    assert refused_back(w, "bob", T3) == gate.UNTRACEABLE
    # a forged ticket: the agent named as issuer, but not its signature (the rule the gate applies to every copy,
    # offline too)
    key = pki.cert_from_der(w.cards["agent"].certificate_der).public_key()
    assert isinstance(key, profile.PublicKey)
    forged = Token(T3, uid(w, "agent"), bytes(64), b"Final, seat 1")
    assert gate.copy_refusal(forged, uid(w, "bob"), traceable=True, issuer_key=key, admitted=None, blocked=False) == (
        gate.FORGED
    )


def test_blocked_device_refused_at_the_handshake_and_told_to_the_operator(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = gate_world(tmp_path, ca)
    issue(w, T1, "alice")
    w.ask("gate", cm.PIN_VERIFY, pin=PIN)
    w.apps["gate"].send(uid(w, "gate"), WATCH, on=True)
    w.run()
    w.apps["gate"].receive_all()
    bl = ca.sign_blocklist(1, frozenset({uid(w, "alice")}), now=NOW)
    w.apps["gate"].send(uid(w, "gate"), BLOCKLIST, blocklist=bl.encode())
    w.run()
    failed: list[Message] = []
    w.host.observe(lambda m, o: failed.append(m) if m.mtype == sess.FAILED.code else None)
    present(w, "alice", T1)
    assert any(sess.FAILED.parse(m)["reason"] == "blocked" for m in failed)
    assert status(w, "alice", T1) == "disabled+O"  # never left: alice may cancel it
    events = [EVENT.parse(m) for m in w.apps["gate"].receive_all() if m.mtype == EVENT.code]
    assert events and events[-1]["kind"] == "refused" and events[-1]["reason"].startswith(gate.BLOCKED_DEVICE)
    assert events[-1]["from"] == uid(w, "alice")
    assert admissions(w) == {}


def test_offline_admission_is_reported_and_a_clone_admitted_at_two_gates_is_caught(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = gate_world(tmp_path, ca, ("g1", "g2"))
    issue(w, T1, "alice")
    clone = Card(SqliteStore(str(clone_store(w, "alice"))), applets=[TrnApplet()])
    # the authority is unreachable: everything the gates send it is lost
    cut = [drop(w, g, "authority", *range(1, 10_000)) for g in ("g1", "g2")]
    cut += [drop(w, g, "authority", *range(1, 10_000), mtype=sess.HELLO.code) for g in ("g1", "g2")]
    present(w, "alice", T1, "g1")
    assert admissions(w, "g1")[T1]["verdict"] == gate.PENDING
    w.now += 1.0  # past the wait (host time)
    w.apps["g1"].send(uid(w, "g1"), TICK)
    w.run()
    a1 = admissions(w, "g1")[T1]
    assert a1["verdict"] == gate.ADMITTED_OFFLINE and a1["report"] == gate.WAITING
    swap_in(w, "alice", clone)  # the clone presents the same ticket at the other gate, also offline
    present(w, "alice", T1, "g2")
    w.now += 1.0
    w.apps["g2"].send(uid(w, "g2"), TICK)
    w.run()
    assert admissions(w, "g2")[T1]["verdict"] == gate.ADMITTED_OFFLINE
    # the authority is back: the reports go out; the first is recorded, the second is a branch
    for d in cut:
        d.nth.clear()
    recover(w, "g1", times=3)
    recover(w, "g2", times=3)
    a1, a2 = admissions(w, "g1")[T1], admissions(w, "g2")[T1]
    assert a1["verdict"] == a2["verdict"] == gate.ADMITTED_OFFLINE
    assert a1["report"] == gate.TRACED
    assert a2["report"] == gate.DISOWNED and "branch" in a2["report_reason"]
    assert uid(w, "alice") in BLOCKED.parse(w.ask("authority", BLOCKED_LIST))["uids"]
