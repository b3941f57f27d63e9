"""Pruning a gate card (``gate.prune``) with real cards on one in-memory host: final admissions lose their ticket and
shrink to a marker, pending and unreported ones are kept, a copy of a pruned oid is still refused (offline too), a
reopened card behaves the same, and a gate card that was full admits again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_gate_cards import present, refused_back, swap_in
from trnkit import drop, recover, status
from trnworld import TrnWorld, clone_store, issue, standard, uid

from cardnet.applets import gate as gate_applet
from cardnet.applets.authority import REVOKE
from cardnet.applets.gate import ADMISSIONS, LIST, PRUNE, PRUNED, SETUP, STATE, TICK, GateApplet
from cardnet.applets.trn import SEND, SET_AUTHORITY, TrnApplet
from cardnet.card import Card
from cardnet.card import mtypes as cm
from cardnet.crypto import pki
from cardnet.protocols import gate
from cardnet.protocols import session as sess
from cardnet.store import SqliteStore

T1, T2, T3, T4, T5 = (bytes([n]) * 16 for n in (1, 2, 3, 4, 5))
BODY = b"Final, seat 7".ljust(64, b".")  # a 64-byte body, as docs/gate.md counts


def gate_world(tmp: Path, ca: pki.CertificateAuthority, capacity_bytes: int = 256 * 1024) -> TrnWorld:
    w = standard(tmp, ca, ("alice", "bob"))
    w.card("gate", applet=GateApplet(), capacity_bytes=capacity_bytes)
    assert w.result("gate", SET_AUTHORITY, authority=uid(w, "authority"))["ok"]
    STATE.parse(w.ask("gate", SETUP, issuers=[w.cards["agent"].certificate_der], wait_ms=500))
    return w


def listed(w: TrnWorld, *, pruned: bool = False) -> dict[bytes, dict[str, Any]]:
    return {a["oid"]: a for a in ADMISSIONS.parse(w.ask("gate", LIST, pruned=pruned))["items"]}


def prune(w: TrnWorld, before_ms: int) -> dict[str, Any]:
    reply = w.ask("gate", PRUNE, before_ms=before_ms)
    assert reply.mtype == PRUNED.code, cm.REFUSED.parse(reply)
    return dict(PRUNED.parse(reply))


def records(w: TrnWorld) -> dict[bytes, bytes]:
    """The gate applet's records on its card (key -> value), as its capacity counts them."""
    card = w.cards["gate"]
    card.flush()
    return {k: v for (t, k), v in card._mem.items() if t == "a.gate"}


def used(w: TrnWorld) -> int:
    card = w.cards["gate"]
    card.flush()
    return card.used_bytes


def test_prune_keeps_a_marker_refuses_copies_keeps_what_is_not_final_and_survives_reopening(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = gate_world(tmp_path, ca)
    for oid in (T1, T2):
        issue(w, oid, "alice", BODY)
    for oid in (T3, T4):
        issue(w, oid, "bob", BODY)
    clone = Card(SqliteStore(str(clone_store(w, "alice"))), applets=[TrnApplet()])  # holds T1 and T2 too
    assert w.result("authority", REVOKE, oid=T2)["ok"]
    present(w, "alice", T1)  # admitted, traced
    present(w, "alice", T2)  # refused by the authority (revoked), disowned: final, the dead ticket kept
    # the authority is unreachable: T3 is admitted offline (its report waits), T4 is pending (no tick yet)
    cut = [drop(w, "gate", "authority", *range(1, 10_000)), drop(w, "gate", "authority", *range(1, 10_000),
                                                                    mtype=sess.HELLO.code)]  # fmt: skip
    present(w, "bob", T3)
    w.now += 1.0
    w.apps["gate"].send(uid(w, "gate"), TICK)
    w.run()
    present(w, "bob", T4)
    before = listed(w)
    assert {o: (a["verdict"], a["report"]) for o, a in before.items()} == {
        T1: (gate.ADMITTED, gate.TRACED),
        T2: (gate.REFUSED, gate.DISOWNED),
        T3: (gate.ADMITTED_OFFLINE, gate.WAITING),
        T4: (gate.PENDING, gate.WAITING),
    }
    state = STATE.parse(w.ask("gate", SETUP))
    gate_card = w.cards["gate"]
    rows = records(w)
    ticket_bytes = {o: 2 + 16 + len(rows[b"t:" + o]) for o in (T1, T2)}
    record_bytes = {o: 4 + 16 + len(rows[b"adm:" + o]) for o in (T1, T2)}
    assert all(180 < n < 320 for n in ticket_bytes.values()), ticket_bytes  # the token (64-byte body), sig
    sessions = [k for k in rows if k.startswith(b"s:") and k[2:] != bytes(uid(w, "authority"))]
    assert len(sessions) == 2  # alice's and bob's cards
    used_before = used(w)

    got = prune(w, int(w.now * 1000) + 1)
    assert got["pruned"] == 2 and got["kept"] == 2 and not got["more"], got  # T3 (report waiting), T4 (pending)
    assert got["sessions"] == 2, got  # bob's holds nothing queued: ended (his card handshakes again)
    per_ticket = {o: ticket_bytes[o] + record_bytes[o] - (3 + 16 + gate.PRUNED_BYTES) for o in (T1, T2)}  # ax:<oid>
    session_bytes = sum(len(k) + len(rows[k]) for k in sessions)
    assert got["freed_bytes"] == sum(per_ticket.values()) + session_bytes, (got, per_ticket, session_bytes)
    freed_on_card = used_before - used(w)
    assert abs(freed_on_card - got["freed_bytes"]) <= 64, (freed_on_card, got)  # (the outbox: the answer itself)
    # what is kept per pruned ticket: the 9-byte marker and the TRN wallet's memory of the committed transfer
    rows = records(w)
    for o in (T1, T2):
        assert b"t:" + o not in rows and b"adm:" + o not in rows and len(rows[b"ax:" + o]) == gate.PRUNED_BYTES
    assert sum(1 for k, v in rows.items() if k.startswith(b"d:") and v in (T1, T2)) == 2
    for o in (T3, T4):  # not final: untouched
        assert b"t:" + o in rows and gate.Admission.decode(o, rows[b"adm:" + o]).verdict in (gate.ADMITTED_OFFLINE,
                                                                                             gate.PENDING)  # fmt: skip
    assert status(w, "gate", T1) is None and status(w, "gate", T3) == "trustless"
    # the listing: pruned admissions only when asked for, with their verdict, report and time; the counts stay
    assert set(listed(w)) == {T3, T4}
    pruned = listed(w, pruned=True)
    assert pruned[T1]["pruned"] and "from" not in pruned[T1] and "body" not in pruned[T1]
    assert (pruned[T1]["verdict"], pruned[T1]["report"], pruned[T1]["at_ms"]) == (
        gate.ADMITTED, gate.TRACED, before[T1]["at_ms"],
    )  # fmt: skip
    assert (pruned[T2]["verdict"], pruned[T2]["report"]) == (gate.REFUSED, gate.DISOWNED)
    assert pruned[T3] == before[T3] and "pruned" not in pruned[T3]
    after = STATE.parse(w.ask("gate", SETUP))
    assert after == {**state, "pruned": 2}, (state, after)
    assert prune(w, int(w.now * 1000) + 1) == {"pruned": 0, "freed_bytes": 0, "sessions": 0, "kept": 2, "more": False}

    # a second copy of a pruned oid (alice's card cloned before): refused, offline (the authority still cut off)
    swap_in(w, "alice", clone)
    present(w, "alice", T1)
    assert refused_back(w, "alice", T1) == gate.ALREADY_ADMITTED
    present(w, "alice", T2)
    assert refused_back(w, "alice", T2) == gate.REFUSED_BEFORE

    # the gate card reopened from its store: the same memory, listing, counts and refusals
    used_now = used(w)
    listing = listed(w, pruned=True)
    state = STATE.parse(w.ask("gate", SETUP))
    gate_card.close()
    reopened = Card(SqliteStore(str(tmp_path / "gate.db")), applets=[GateApplet()], capacity_bytes=256 * 1024)
    swap_in(w, "gate", reopened)
    assert used(w) == used_now
    assert listed(w, pruned=True) == listing
    assert STATE.parse(w.ask("gate", SETUP)) == state
    present(w, "alice", T1)
    assert refused_back(w, "alice", T1) == gate.ALREADY_ADMITTED

    # the authority is back: T3's report is answered, T4 decided; both are final now and pruned in turn
    for d in cut:
        d.nth.clear()
    w.now += 1.0
    w.apps["gate"].send(uid(w, "gate"), TICK)
    recover(w, "gate", times=3)
    assert {o: a["report"] for o, a in listed(w).items()} == {T3: gate.TRACED, T4: gate.TRACED}
    got = prune(w, int(w.now * 1000) + 1)
    assert got["pruned"] == 2 and got["kept"] == 0, got
    assert listed(w) == {} and len(listed(w, pruned=True)) == 4


def test_a_full_gate_card_admits_again_after_pruning(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """The gate card fills (the ticket stays with its holder: refused ``out of memory`` at the copy, or its commit
    not taken yet), the operator prunes, and the ticket is admitted (presented again, or the holder's recovery
    resends the commit); pruning before the first admission prunes nothing."""
    w = gate_world(tmp_path, ca, capacity_bytes=7000)
    oids = [bytes([0x40 + n]) * 16 for n in range(12)]
    admitted: list[bytes] = []
    stuck = None
    for oid in oids:
        issue(w, oid, "alice", BODY)
        present(w, "alice", oid)
        if status(w, "alice", oid) is None:
            admitted.append(oid)
            continue
        stuck = oid
        break
    assert stuck is not None and len(admitted) >= 2, admitted  # the card filled
    assert prune(w, 0)["pruned"] == 0  # nothing is older than that
    got = prune(w, int(w.now * 1000) + 1)
    assert got["pruned"] == len(admitted) and got["freed_bytes"] > 150 * len(admitted), got
    if status(w, "alice", stuck) == "enabled":
        assert refused_back(w, "alice", stuck) == "out of memory"
        present(w, "alice", stuck)
    else:
        recover(w, "alice", "gate")
    assert status(w, "alice", stuck) is None
    assert listed(w)[stuck]["verdict"] == gate.ADMITTED


def test_prune_is_privileged(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = gate_world(tmp_path, ca)
    stranger = w.host.acquire(w.cards["alice"].uid.domain, w.now)
    stranger.send(uid(w, "gate"), PRUNE, before_ms=1 << 50)
    w.run()
    (reply,) = stranger.receive_all()
    assert reply.mtype == cm.REFUSED.code and cm.REFUSED.parse(reply)["reason"] == "privileged"


def refusals(w: TrnWorld) -> list[bytes]:
    """The gate card's memory of refused transfers (``n:<holder><nonce>``)."""
    return [k for k in records(w) if k.startswith(b"n:")]


def test_prune_forgets_the_refusals_of_cards_it_holds_no_session_with(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """Every refused presentation left ``n:<holder><nonce>`` on the gate card for good. A prune that ends a holder's
    idle session forgets that card's refusals (a resent copy can only come in a session); a holder whose session
    was opened since keeps them; and a copy presented again after the prune is judged afresh: the same refusal."""
    w = gate_world(tmp_path, ca)
    issue(w, T1, "alice", BODY)
    issue(w, T2, "bob", BODY)
    for holder, oid in (("alice", T1), ("bob", T2)):
        assert w.result(holder, SEND, oid=oid, to=uid(w, "gate"), traceable=False)["ok"]
        w.run(300)
        assert refused_back(w, holder, oid) == gate.UNTRACEABLE
    assert len(refusals(w)) == 2
    w.now += 10.0
    got = prune(w, int(w.now * 1000))
    assert (got["sessions"], got.get("refusals"), got["pruned"]) == (2, 2, 0), got
    assert refusals(w) == []
    # alice comes back: a new session, the same answer; her new refusal is kept by a prune older than her session
    before_ms = int(w.now * 1000)
    w.now += 10.0
    assert w.result("alice", SEND, oid=T1, to=uid(w, "gate"), traceable=False)["ok"]
    recover(w, "alice", "gate")  # (her card's session ended at the gate: refused no_session, resent in a new one)
    assert refused_back(w, "alice", T1) == gate.UNTRACEABLE
    got = prune(w, before_ms)
    assert (got["sessions"], got.get("refusals")) == (0, None), got
    assert [k[2:18] for k in refusals(w)] == [bytes(uid(w, "alice"))]


def test_state_and_list_read_only_what_they_show(
    tmp_path: Path, ca: pki.CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``gate.state`` counts without reading an admission (the counts are kept as they change), and ``gate.list``
    reads one page (pruned markers apart, under ``ax:``), so a gate of months answers as fast as a new one."""
    monkeypatch.setattr(gate_applet, "LIST_PAGE", 2)
    w = gate_world(tmp_path, ca)
    oids = [bytes([0x60 + n]) * 16 for n in range(5)]
    for n, oid in enumerate(oids):
        issue(w, oid, "alice" if n % 2 else "bob", BODY)
    for n, oid in enumerate(oids[:3]):
        present(w, "alice" if n % 2 else "bob", oid)
    w.now += 10.0
    assert prune(w, int(w.now * 1000))["pruned"] == 3
    for n, oid in enumerate(oids[3:], start=3):
        present(w, "alice" if n % 2 else "bob", oid)
    recover(w, "alice", "bob", "gate")  # (their sessions ended at the gate: resent in new ones)
    reads: list[bytes] = []
    real = gate.decode_record

    def counted(oid: bytes, raw: bytes) -> gate.Admission | gate.Pruned:
        reads.append(oid)
        return real(oid, raw)

    monkeypatch.setattr(gate, "decode_record", counted)
    state = STATE.parse(w.ask("gate", SETUP))
    assert (state["admissions"], state["admitted"], state["pruned"], state["pending"]) == (5, 5, 3, 0), state
    assert reads == []

    def pages(pruned: bool) -> list[list[bytes]]:
        out: list[list[bytes]] = []
        after: dict[str, Any] = {}
        while True:
            reads.clear()
            page = ADMISSIONS.parse(w.ask("gate", LIST, pruned=pruned, **after))
            assert len(reads) <= 2, reads  # the page, no more
            out.append([it["oid"] for it in page["items"]])
            if not page["more"]:
                return out
            after = {"after": page["next"]}

    assert pages(False) == [sorted(oids[3:])]
    assert pages(True) == [sorted(oids)[:2], sorted(oids)[2:4], sorted(oids)[4:]]
