"""TRN 2PC transfers through cards on one host: refusals, abort, interruptions and recovery, duplicates."""

from __future__ import annotations

from pathlib import Path

import pytest
from trnkit import clear_guards, drop, recover, rewrite, status, statuses
from trnworld import TrnWorld, issue, standard, uid

from cardnet.applets.authority import BLOCKED, BLOCKED_LIST, CHAIN, QUERY
from cardnet.applets.trn import CANCEL, MINT, SEND, SET_AUTHORITY
from cardnet.crypto import pki
from cardnet.host.core import HOST
from cardnet.protocols import session as sess
from cardnet.wire import Message

OID = bytes(range(16))
OID2 = bytes(range(16, 32))


def world(tmp_path: Path, ca: pki.CertificateAuthority, *wallets: str) -> TrnWorld:
    w = standard(tmp_path, ca, wallets or ("alice", "bob"))
    issue(w, OID, "alice")
    assert status(w, "alice", OID) == "enabled"
    return w


def send(w: TrnWorld, src: str, dst: str, oid: bytes = OID, **kw: object) -> dict[str, object]:
    r = w.result(src, SEND, oid=oid, to=uid(w, dst), **kw)
    w.run(300)
    return r


def holders(w: TrnWorld, oid: bytes = OID) -> list[object]:
    return list(CHAIN.parse(w.ask("authority", QUERY, oid=oid))["holders"])


def test_out_of_memory_receiver_answers_copied_false_and_sender_rolls_back(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = standard(tmp_path, ca, ("alice",))
    w.card("tiny", capacity_bytes=3400)  # room for a small token, its statement and two sessions
    assert w.result("tiny", SET_AUTHORITY, authority=uid(w, "authority"))["ok"]
    issue(w, OID, "alice", body=b"x" * 4000)
    assert send(w, "alice", "tiny")["ok"]
    assert statuses(w, OID, "alice", "tiny") == {"alice": "enabled", "tiny": None}
    # a small token fits: the session still works after the refusal
    issue(w, OID2, "alice", body=b"small")
    send(w, "alice", "tiny", OID2)
    assert statuses(w, OID2, "alice", "tiny") == {"alice": None, "tiny": "enabled"}


def test_receiver_already_holding_the_oid_refuses(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = world(tmp_path, ca)
    # the agent's card refuses to mint the oid again (its own copy left: a replayed order would double it) ...
    again = w.result("agent", MINT, oid=OID, body=b"seat 12A")
    assert not again["ok"] and "already minted" in again["detail"]
    # ... so another agent's card mints the same oid and tries to send it to alice, who holds it
    w.card("agent2", pki.Role.AGENT)
    assert w.result("agent2", MINT, oid=OID, body=b"seat 12A")["ok"]
    send(w, "agent2", "alice")
    assert statuses(w, OID, "agent2", "alice") == {"agent2": "enabled", "alice": "enabled"}
    assert holders(w) == [uid(w, "alice")]  # the refused copy was never traced


def test_sender_abort_in_copy_phase_reenables_and_receiver_discards(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = world(tmp_path, ca)
    drop(w, "bob", "alice", 1, 2, 3, 4)  # every answer of bob's is lost: alice stays in (II)/(III)
    send(w, "alice", "bob")
    assert statuses(w, OID, "alice", "bob") == {"alice": "disabled+O", "bob": "trustless_disabled"}
    r = w.result("alice", CANCEL, oid=OID)
    w.run(300)
    assert r["ok"]
    assert statuses(w, OID, "alice", "bob") == {"alice": "enabled", "bob": None}
    clear_guards(w)
    send(w, "alice", "bob")  # and the token still moves afterwards
    assert statuses(w, OID, "alice", "bob") == {"alice": None, "bob": "enabled"}


def test_cancel_after_commit_was_sent_is_refused(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = world(tmp_path, ca)
    drop(w, "alice", "bob", 2)  # the commit is lost: alice is in (IV)
    send(w, "alice", "bob")
    assert statuses(w, OID, "alice", "bob") == {"alice": "disabled", "bob": "trustless_disabled"}
    r = w.result("alice", CANCEL, oid=OID)
    assert not r["ok"] and r["reason"] == "illegal_move"
    recover(w, "alice", "bob")
    assert statuses(w, OID, "alice", "bob") == {"alice": None, "bob": "enabled"}


# the records of one fresh transfer alice -> bob: alice sends copy (1), commit (2); bob copied (1), committed (2)
CUTS = [
    ("alice", "bob", (1,)),  # copy lost: (II)
    ("bob", "alice", (1,)),  # copied lost: (III)
    ("alice", "bob", (2,)),  # commit lost: (IV)
    ("bob", "alice", (2,)),  # committed lost: (V)
    ("alice", "bob", (1, 2, 3)),  # copy and its resends lost
    ("bob", "alice", (1, 2, 3)),
]


@pytest.mark.parametrize(("src", "dst", "nth"), CUTS)
def test_interrupted_transfer_recovers_to_exactly_one_enabled_copy(
    tmp_path: Path, ca: pki.CertificateAuthority, src: str, dst: str, nth: tuple[int, ...]
) -> None:
    w = world(tmp_path, ca)
    drop(w, src, dst, *nth)
    send(w, "alice", "bob")
    during = statuses(w, OID, "alice", "bob")
    assert [s for s in during.values() if s in ("enabled", "trustless")] in ([], ["enabled"])  # never two usable
    recover(w, "alice", "bob", times=4)
    assert statuses(w, OID, "alice", "bob") == {"alice": None, "bob": "enabled"}
    assert holders(w) == [uid(w, "alice"), uid(w, "bob")]


@pytest.mark.parametrize("mtype", [sess.HELLO.code, sess.ACCEPT.code, sess.FINISH.code])
def test_lost_handshake_message_recovers(tmp_path: Path, ca: pki.CertificateAuthority, mtype: int) -> None:
    w = world(tmp_path, ca)
    src, dst = ("bob", "alice") if mtype == sess.ACCEPT.code else ("alice", "bob")
    drop(w, src, dst, 1, mtype=mtype)
    send(w, "alice", "bob")
    if mtype != sess.FINISH.code:  # (a lost finish: bob refuses alice's records, no_session; she starts over at once)
        assert status(w, "bob", OID) != "enabled"
    recover(w, "alice", "bob", times=4)
    assert statuses(w, OID, "alice", "bob") == {"alice": None, "bob": "enabled"}


def test_duplicate_copy_answered_idempotently(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = world(tmp_path, ca)
    drop(w, "bob", "alice", 1)  # copied lost: alice resends the copy bob already has
    send(w, "alice", "bob")
    assert statuses(w, OID, "alice", "bob") == {"alice": "disabled+O", "bob": "trustless_disabled"}
    recover(w, "alice")
    assert statuses(w, OID, "alice", "bob") == {"alice": None, "bob": "enabled"}


def test_resent_commit_is_committed_after_the_receiver_moved_the_token_on(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = world(tmp_path, ca, "alice", "bob", "carol")
    drop(w, "bob", "alice", 2)  # committed lost: alice stays in (V)
    send(w, "alice", "bob")
    assert statuses(w, OID, "alice", "bob") == {"alice": "disabled", "bob": "enabled"}
    send(w, "bob", "carol")
    assert statuses(w, OID, "bob", "carol") == {"bob": None, "carol": "enabled"}
    recover(w, "alice")  # the resent commit reaches bob at t[null]: answered committed from memory
    assert statuses(w, OID, "alice", "bob", "carol") == {"alice": None, "bob": None, "carol": "enabled"}
    assert holders(w) == [uid(w, n) for n in ("alice", "bob", "carol")]


def test_replayed_records_are_ignored(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """A host that delivers every copy/commit record twice (a replay) changes nothing."""
    w = world(tmp_path, ca)
    a, b = uid(w, "alice"), uid(w, "bob")
    replays: list[Message] = []
    failed: list[Message] = []
    w.host.observe(lambda m, o: replays.append(m) if m.mtype == sess.RECORD.code and m.src == a else None)
    w.host.observe(lambda m, o: failed.append(m) if m.mtype == sess.FAILED.code else None)
    send(w, "alice", "bob")
    assert statuses(w, OID, "alice", "bob") == {"alice": None, "bob": "enabled"}
    assert len(replays) == 2
    for m in list(replays):  # replayed late: refused as replays, quietly
        w.host.submit(m, HOST)
    w.run(300)
    assert statuses(w, OID, "alice", "bob") == {"alice": None, "bob": "enabled"}
    assert holders(w) == [a, b]
    assert len(replays) == 4 and not failed  # the replays were seen, and not even answered


def test_reflected_record_is_refused(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """The host bounces alice's copy record back to alice as if bob had sent it."""
    w = world(tmp_path, ca)
    a, b = uid(w, "alice"), uid(w, "bob")
    failed: list[Message] = []
    w.host.observe(lambda m, o: failed.append(m) if m.mtype == sess.FAILED.code else None)

    def reflect(m: Message) -> Message | None:
        if m.mtype == sess.RECORD.code and m.src == a and m.dst == b:
            return Message(b, a, m.mtype, m.param)
        return None

    rewrite(w, reflect)
    send(w, "alice", "bob")
    assert statuses(w, OID, "alice", "bob") == {"alice": "disabled+O", "bob": None}
    assert any(sess.FAILED.parse(m)["reason"] == "bad_record" for m in failed if m.src == a)
    clear_guards(w)
    recover(w, "alice", "bob")
    assert statuses(w, OID, "alice", "bob") == {"alice": None, "bob": "enabled"}


def test_token_altered_in_transit_never_becomes_enabled(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """A host flips a bit in the copy record (the token body): the record fails authentication."""
    w = world(tmp_path, ca)
    a, b = uid(w, "alice"), uid(w, "bob")
    done: list[Message] = []

    def alter(m: Message) -> Message | None:
        if m.mtype == sess.RECORD.code and m.src == a and m.dst == b and not done:
            done.append(m)
            p = bytearray(m.param)
            p[-20] ^= 1  # inside the ciphertext, in the token body
            return Message(m.src, m.dst, m.mtype, bytes(p))
        return None

    rewrite(w, alter)
    send(w, "alice", "bob")
    assert status(w, "bob", OID) is None
    recover(w, "alice", "bob")
    assert statuses(w, OID, "alice", "bob") == {"alice": None, "bob": "enabled"}
    assert w.tokens("bob")[OID]["body"] == b"seat 12A"


def test_untraceable_transfer_skips_trustless_and_the_trace(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = world(tmp_path, ca)
    drop(w, "bob", "alice", 2)  # committed lost: look at bob between commit and the end
    assert send(w, "alice", "bob", traceable=False)["ok"]
    assert status(w, "bob", OID) == "enabled"  # straight from trustless_disabled: no trustless, no seekfor
    assert holders(w) == [uid(w, "alice")]
    recover(w, "alice")
    assert statuses(w, OID, "alice", "bob") == {"alice": None, "bob": "enabled"}


def test_a_token_comes_back_to_a_device_it_left_even_with_faults(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = world(tmp_path, ca)
    send(w, "alice", "bob")
    drop(w, "alice", "bob", 1)  # the committed going back to bob is lost
    send(w, "bob", "alice")
    recover(w, "alice", "bob")
    assert statuses(w, OID, "alice", "bob") == {"alice": "enabled", "bob": None}
    clear_guards(w)
    send(w, "alice", "bob")
    assert statuses(w, OID, "alice", "bob") == {"alice": None, "bob": "enabled"}
    assert holders(w) == [uid(w, "alice"), uid(w, "bob"), uid(w, "alice"), uid(w, "bob")]


def test_a_copy_left_by_a_lost_abort_does_not_block_the_receiver(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """alice aborts a transfer to bob and the abort notice is lost: bob keeps a dead trustless_disabled copy.
    The token later reaches bob from carol: the newer transfer supersedes the dead copy (it used to be refused
    "busy" forever)."""
    w = world(tmp_path, ca, "alice", "bob", "carol")
    drop(w, "bob", "alice", 1, 2, 3)  # bob's copied never arrives
    drop(w, "alice", "bob", 2)  # the abort notice is lost
    send(w, "alice", "bob")
    assert w.result("alice", CANCEL, oid=OID)["ok"]
    w.run(300)
    assert statuses(w, OID, "alice", "bob") == {"alice": "enabled", "bob": "trustless_disabled"}
    clear_guards(w)
    send(w, "alice", "carol")
    send(w, "carol", "bob")
    recover(w, "alice", "bob", "carol")
    assert statuses(w, OID, "alice", "bob", "carol") == {"alice": None, "bob": "enabled", "carol": None}
    assert holders(w) == [uid(w, "alice"), uid(w, "carol"), uid(w, "bob")]


def test_after_an_untraced_hop_the_token_stays_untraced(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    """The untraced hop alice -> bob is not in the authority's chain; had bob's next transfer been traced, the
    authority would see bob (not the last recorded holder alice) as a branch and block an honest device."""
    w = world(tmp_path, ca, "alice", "bob", "carol")
    send(w, "alice", "bob", traceable=False)
    send(w, "bob", "carol")  # asks for the default (traced): sent untraced
    recover(w, "bob", "carol")
    assert statuses(w, OID, "alice", "bob", "carol") == {"alice": None, "bob": None, "carol": "enabled"}
    assert holders(w) == [uid(w, "alice")]
    assert BLOCKED.parse(w.ask("authority", BLOCKED_LIST))["uids"] == []


def test_resent_commit_answered_while_the_receiver_holds_another_transfers_copy(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """bob committed alice's transfer, but alice never heard; the token went on to carol and is coming back to bob
    (bob holds carol's uncommitted copy) when alice resends her commit: bob must answer it from memory."""
    w = world(tmp_path, ca, "alice", "bob", "carol")
    drop(w, "bob", "alice", 2)  # bob's committed is lost: alice stays in (IV)/(V)
    send(w, "alice", "bob")
    assert statuses(w, OID, "alice", "bob") == {"alice": "disabled", "bob": "enabled"}
    send(w, "bob", "carol")
    clear_guards(w)
    drop(w, "carol", "bob", 2)  # carol's commit is lost: bob holds her copy, trustless_disabled
    send(w, "carol", "bob")
    assert statuses(w, OID, "bob", "carol") == {"bob": "trustless_disabled", "carol": "disabled"}
    recover(w, "alice")  # alice resends her commit
    assert status(w, "alice", OID) is None  # answered committed: alice is done (she was stuck before)
    clear_guards(w)
    recover(w, "carol")  # and carol's transfer still completes
    assert statuses(w, OID, "alice", "bob", "carol") == {"alice": None, "bob": "enabled", "carol": None}
    assert holders(w) == [uid(w, n) for n in ("alice", "bob", "carol", "bob")]
