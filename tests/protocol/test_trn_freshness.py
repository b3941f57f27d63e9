"""Blocklist freshness through cards: a device blocked at the authority is refused by cards that have not
talked to the authority since, once their personalised bound has passed (host time), and not before."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from test_trn_attacks import deliver_blocklist
from trnkit import recover, status
from trnworld import TrnWorld, uid

from cardnet.applets.authority import ADD_AGENT
from cardnet.applets.sessions import POLICY, POLICY_IS, REKEY
from cardnet.applets.trn import CANCEL, MINT, SEND, SET_AUTHORITY
from cardnet.card import mtypes as cm
from cardnet.crypto import pki
from cardnet.protocols import session as sess
from cardnet.wire import Message
from conftest import NOW

MAX_AGE = 100  # seconds of host time
T0 = NOW.timestamp()


def world(tmp: Path, ca: pki.CertificateAuthority, policy: sess.Policy) -> TrnWorld:
    """authority, an agent, mallory (an agent card that mints its own tokens) and alice, bob with ``policy``."""
    w = TrnWorld(tmp, ca)
    w.card("authority", pki.Role.SERVICE)
    agent = w.card("agent", pki.Role.AGENT)
    w.card("mallory", pki.Role.AGENT)
    for name in ("alice", "bob"):
        w.card(name, policy=policy.encode())
    assert w.result("authority", ADD_AGENT, cert=agent.certificate_der)["ok"]
    for name in ("agent", "mallory", "alice", "bob"):
        assert w.result(name, SET_AUTHORITY, authority=uid(w, "authority"))["ok"]
    return w


def epoch(w: TrnWorld, name: str) -> int:
    """The epoch of the newest blocklist ``name``'s card holds (read from its store, as a test may)."""
    raw = w.cards[name]._read(("a.trn", b"bl"))
    return -1 if raw is None else pki.Blocklist.decode(raw).epoch


def failures(w: TrnWorld) -> list[Message]:
    seen: list[Message] = []
    w.host.observe(lambda m, o: seen.append(m) if m.mtype == sess.FAILED.code else None)
    return seen


def mint_and_send(w: TrnWorld, oid: bytes, to: str) -> None:
    assert w.result("mallory", MINT, oid=oid, body=b"ticket")["ok"]
    assert w.result("mallory", SEND, oid=oid, to=uid(w, to))["ok"]
    w.run(300)


def test_a_device_blocked_at_the_authority_is_refused_once_the_bound_has_passed(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = world(tmp_path, ca, sess.Policy(max_blocklist_age_s=MAX_AGE))
    assert deliver_blocklist(w, "authority", ca.sign_blocklist(1, [], now=NOW).encode()) == []
    # alice and bob hold no blocklist, which their policy does not accept: recovery fetches one from the authority
    recover(w, "alice", "bob")
    assert epoch(w, "alice") == epoch(w, "bob") == 1
    # mallory is blocked at the authority 10 s later; alice and bob do not talk to the authority again
    w.now = T0 + 10
    assert deliver_blocklist(w, "authority", ca.sign_blocklist(2, [uid(w, "mallory")], now=NOW).encode()) == []
    failed = failures(w)
    # within the bound (their epoch-1 blocklist is 50 s old) the policy does not require more: bob takes a token
    w.now = T0 + 50
    mint_and_send(w, b"\x01" * 16, "bob")
    assert status(w, "bob", b"\x01" * 16) is not None
    assert epoch(w, "bob") == 1 and not failed
    # past the bound: alice refuses a new session, bob the session he has open, both with blocklist_stale
    w.now = T0 + MAX_AGE + 1
    mint_and_send(w, b"\x02" * 16, "alice")
    mint_and_send(w, b"\x03" * 16, "bob")
    assert status(w, "alice", b"\x02" * 16) is None
    assert status(w, "bob", b"\x03" * 16) is None
    reasons = {(m.src, sess.FAILED.parse(m)["reason"]) for m in failed}
    assert (uid(w, "alice"), "blocklist_stale") in reasons
    assert {r for s, r in reasons if s == uid(w, "bob")} & {"blocklist_stale", "session_expired"}
    # the hosts' recovery ticks make alice and bob handshake with the authority again: they learn epoch 2,
    # and from then on refuse mallory as blocked (mallory's own recovery keeps trying)
    failed.clear()
    recover(w, "alice", "bob", "mallory")
    assert epoch(w, "alice") == epoch(w, "bob") == 2
    assert status(w, "alice", b"\x02" * 16) is None
    assert status(w, "bob", b"\x03" * 16) is None
    assert (uid(w, "alice"), "blocked") in {(m.src, sess.FAILED.parse(m)["reason"]) for m in failed}


def test_without_a_policy_the_stale_card_keeps_accepting(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """The default (no bound): the same story, and alice takes the blocked device's token (what the bound fixes)."""
    w = world(tmp_path, ca, sess.Policy())
    assert deliver_blocklist(w, "authority", ca.sign_blocklist(1, [], now=NOW).encode()) == []
    assert deliver_blocklist(w, "authority", ca.sign_blocklist(2, [uid(w, "mallory")], now=NOW).encode()) == []
    w.now = T0 + 10 * MAX_AGE
    mint_and_send(w, b"\x02" * 16, "alice")
    assert status(w, "alice", b"\x02" * 16) is not None


def test_policy_can_be_tightened_but_not_loosened(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = world(tmp_path, ca, sess.Policy(max_blocklist_age_s=MAX_AGE, lifetime_s=600))
    shown = POLICY_IS.parse(w.ask("alice", POLICY))
    assert (shown["max_blocklist_age_s"], shown["lifetime_s"], shown["note"]) == (MAX_AGE, 600, "unchanged")
    for looser in ({"max_blocklist_age_s": MAX_AGE + 1}, {"lifetime_s": 0}):
        reply = w.ask("alice", POLICY, **looser)
        assert reply.mtype == cm.REFUSED.code
        assert cm.REFUSED.parse(reply)["reason"] == "policy_loosened"
    tight = POLICY_IS.parse(w.ask("alice", POLICY, max_blocklist_age_s=30, max_records=5))
    assert (tight["max_blocklist_age_s"], tight["lifetime_s"], tight["max_records"]) == (30, 600, 5)
    # the tightening is durable and cannot be undone either (not even back to the personalised value)
    reply = w.ask("alice", POLICY, max_blocklist_age_s=MAX_AGE)
    assert cm.REFUSED.parse(reply)["reason"] == "policy_loosened"


# --- sessions re-key after their lifetime and record count ---------------------------------------------------


def rekey_world(tmp: Path, ca: pki.CertificateAuthority, alice: sess.Policy, bob: sess.Policy) -> TrnWorld:
    w = TrnWorld(tmp, ca)
    w.card("authority", pki.Role.SERVICE)
    agent = w.card("agent", pki.Role.AGENT)
    w.card("alice", policy=alice.encode())
    w.card("bob", policy=bob.encode())
    assert w.result("authority", ADD_AGENT, cert=agent.certificate_der)["ok"]
    for name in ("agent", "alice", "bob"):
        assert w.result(name, SET_AUTHORITY, authority=uid(w, "authority"))["ok"]
    return w


def hellos(w: TrnWorld, a: str, b: str) -> list[Message]:
    """Every handshake between ``a`` and ``b`` (either direction) from now on."""
    pair = {uid(w, a), uid(w, b)}
    seen: list[Message] = []
    w.host.observe(lambda m, o: seen.append(m) if m.mtype == sess.HELLO.code and {m.src, m.dst} == pair else None)
    return seen


OIDS = [bytes([i]) * 16 for i in range(1, 4)]


def ping_pong(w: TrnWorld, rounds: int, *, step_s: float = 0.0) -> None:
    """Every token goes alice -> bob -> alice ``rounds`` times; ``step_s`` of host time pass between transfers."""
    for _ in range(rounds):
        for src, dst in (("alice", "bob"), ("bob", "alice")):
            for oid in OIDS:
                w.now += step_s
                assert w.result(src, SEND, oid=oid, to=uid(w, dst))["ok"]
                w.run(300)
                recover(w, src, dst, times=2)


def all_at_alice(w: TrnWorld) -> None:
    """No token lost or doubled: each is enabled at alice, and bob holds none."""
    mine, his = w.tokens("alice"), w.tokens("bob")
    assert {oid: t["status"] for oid, t in mine.items()} == dict.fromkeys(OIDS, "enabled")
    assert his == {}


def issue_all(w: TrnWorld) -> None:
    for oid in OIDS:
        assert w.result("agent", MINT, oid=oid, body=b"seat")["ok"]
        assert w.result("agent", SEND, oid=oid, to=uid(w, "alice"))["ok"]
        w.run(300)
    recover(w, "alice", times=2)


def test_sessions_rekey_after_their_record_count(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = rekey_world(tmp_path, ca, sess.Policy(max_records=3), sess.Policy(max_records=3))
    issue_all(w)
    seen = hellos(w, "alice", "bob")
    ping_pong(w, 2)
    # 12 transfers of 2 records each way: with at most 3 records a session, many handshakes, all transparent
    assert len(seen) >= 6
    all_at_alice(w)


def test_sessions_rekey_after_their_lifetime(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = rekey_world(tmp_path, ca, sess.Policy(lifetime_s=60), sess.Policy(lifetime_s=60))
    issue_all(w)
    seen = hellos(w, "alice", "bob")
    ping_pong(w, 1, step_s=0)
    assert len(seen) == 1  # within the lifetime one session carries everything
    ping_pong(w, 1, step_s=61)
    assert len(seen) >= 1 + 6  # each transfer comes more than 60 s of host time after the last
    all_at_alice(w)


def test_a_receiver_refuses_records_of_a_session_past_twice_its_lifetime(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """bob has no bounds and never re-keys; alice refuses his record in a session older than 2 x 60 s (bob's
    recovery then resends it in a new session: the transfer still finishes)."""
    w = rekey_world(tmp_path, ca, sess.Policy(lifetime_s=60), sess.Policy())
    issue_all(w)
    ping_pong(w, 1)  # bob -> alice last: bob's session with alice is open
    failed = failures(w)
    w.now += 121
    assert w.result("alice", SEND, oid=OIDS[0], to=uid(w, "bob"))["ok"]  # alice re-keys on her own
    w.run(300)
    recover(w, "alice", "bob", times=2)
    assert not failed
    w.now += 121  # now bob sends in the session alice opened, 121 s later
    assert w.result("bob", SEND, oid=OIDS[0], to=uid(w, "alice"))["ok"]
    w.run(300)
    assert (uid(w, "alice"), "session_expired") in {(m.src, sess.FAILED.parse(m)["reason"]) for m in failed}
    recover(w, "alice", "bob", times=2)
    all_at_alice(w)


def test_the_host_cannot_set_the_policy_but_its_rekey_tick_ends_sessions(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """session.policy is the owner's (a host tightening could deny service for good); session.rekey, the host's
    timer, only ends open sessions, which a host can do anyway: the next transfer handshakes again."""
    w = rekey_world(tmp_path, ca, sess.Policy(lifetime_s=600), sess.Policy())
    stranger = w.host.acquire(uid(w, "alice").domain, w.now)  # an application on alice's host, without the PIN
    stranger.send(uid(w, "alice"), POLICY, lifetime_s=1)
    w.run()
    assert [cm.REFUSED.parse(m)["reason"] for m in stranger.receive_all()] == ["privileged"]
    assert POLICY_IS.parse(w.ask("alice", POLICY))["lifetime_s"] == 600
    issue_all(w)
    seen = hellos(w, "alice", "bob")
    ping_pong(w, 1)
    assert len(seen) == 1
    for _ in range(2):
        w.host.tick(uid(w, "alice").domain, REKEY)
        ping_pong(w, 1)
    assert len(seen) == 3
    all_at_alice(w)


def test_a_session_ends_when_the_peers_certificate_expires(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """alice's certificate expires while her sessions with bob are open: bob refuses her records in the old
    session (session_expired), the new handshake refuses her certificate, and the token she sends after her
    expiry is never enabled at bob (she keeps the right to cancel it: nothing is lost)."""
    expires = NOW + timedelta(days=1)
    w = TrnWorld(tmp_path, ca)
    w.card("authority", pki.Role.SERVICE)
    agent = w.card("agent", pki.Role.AGENT)
    w.card("alice", valid_days=1)
    w.card("bob")
    assert w.result("authority", ADD_AGENT, cert=agent.certificate_der)["ok"]
    for name in ("agent", "alice", "bob"):
        assert w.result(name, SET_AUTHORITY, authority=uid(w, "authority"))["ok"]
    issue_all(w)
    ping_pong(w, 1)  # alice <-> bob: sessions open both ways, every token back at alice
    failed = failures(w)
    w.now = expires.timestamp() + 1
    assert w.result("alice", SEND, oid=OIDS[0], to=uid(w, "bob"))["ok"]  # her card has no clock of its own
    w.run(300)
    recover(w, "alice", "bob", times=3)
    reasons = {(m.src, sess.FAILED.parse(m)["reason"]) for m in failed}
    assert (uid(w, "bob"), "session_expired") in reasons, reasons
    assert (uid(w, "bob"), "expired") in reasons, reasons  # her new hello: the certificate itself
    assert OIDS[0] not in w.tokens("bob")
    assert w.tokens("alice")[OIDS[0]]["status"] != "enabled"  # sent, not lost: she can cancel
    assert w.result("alice", CANCEL, oid=OIDS[0])["ok"]
    assert w.tokens("alice")[OIDS[0]]["status"] == "enabled"
