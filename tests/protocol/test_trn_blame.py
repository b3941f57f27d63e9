"""TRN trace blame: the authority records and blames only on the sender's signed movement statement.

Compromised cards are real cards whose applet lies (a subclass of the wallet applet), over real sessions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from test_trn_attacks import blocked, send, swap_in
from trnkit import drop, recover, status, statuses
from trnworld import TrnWorld, clone_store, issue, standard, uid

from cardnet.applets.authority import BLOCKED, BLOCKED_LIST, CHAIN, QUERY
from cardnet.applets.trn import RECOVER, TrnApplet
from cardnet.card import Card, StepContext
from cardnet.crypto import pki
from cardnet.protocols.trn import transfer as tr
from cardnet.store import SqliteStore
from cardnet.wire import Message, Uid

OID = bytes(range(16))
OID2 = bytes(range(16, 32))
OID3 = bytes(range(32, 48))


def suspects(w: TrnWorld) -> set[Uid]:
    return set(BLOCKED.parse(w.ask("authority", BLOCKED_LIST)).get("suspects", []))


def holders(w: TrnWorld, oid: bytes) -> list[Uid]:
    return list(CHAIN.parse(w.ask("authority", QUERY, oid=oid))["holders"])


class NamesAnotherSender(TrnApplet):
    """A compromised wallet: its seekfor names ``scapegoat`` as the sender (keeping or dropping the statement)."""

    scapegoat: Uid | None = None
    keep_statement = True

    def send_inner(self, ctx: StepContext, peer: Uid, raw: bytes) -> None:
        code, p = tr.decode_inner(raw)
        if code == tr.SEEKFOR and self.scapegoat is not None:
            p["from"] = self.scapegoat
            if not self.keep_statement:
                p.pop("sig", None)
            raw = tr.encode_inner(code, p)
        super().send_inner(ctx, peer, raw)


def lying_card(w: TrnWorld, name: str, applet: TrnApplet) -> None:
    """``name``'s card, same store and identity, now running ``applet`` (the card was compromised)."""
    w.cards[name].close()
    swap_in(w, name, Card(SqliteStore(str(w.tmp / f"{name}.db")), applets=[applet]))


def test_a_receiver_naming_another_sender_gets_nobody_blocked(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = standard(tmp_path, ca, ("alice", "bob", "carol"))
    issue(w, OID, "alice")
    issue(w, OID2, "carol")  # carol held a traced token: the authority knows her certificate
    liar = NamesAnotherSender()
    lying_card(w, "bob", liar)
    liar.scapegoat = uid(w, "carol")  # bob forwards alice's real statement, under carol's name
    send(w, "alice", "bob")
    recover(w, "bob")
    assert statuses(w, OID, "alice", "bob") == {"alice": None, "bob": "trustless"}  # the claim was refused
    assert blocked(w) == set()  # carol never held OID, and nobody is blocked on bob's word
    assert suspects(w) == {uid(w, "bob")}  # the claimant is reported
    assert holders(w, OID) == [uid(w, "alice")]
    assert status(w, "carol", OID2) == "enabled"


def test_a_stripped_statement_is_refused_and_the_sender_is_not_blamed(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = standard(tmp_path, ca, ("alice", "bob"))
    issue(w, OID, "alice")
    liar = NamesAnotherSender()
    liar.keep_statement = False
    lying_card(w, "bob", liar)
    liar.scapegoat = uid(w, "alice")  # the true sender, but without her signed statement
    send(w, "alice", "bob")
    recover(w, "bob")
    assert status(w, "bob", OID) == "trustless"
    assert blocked(w) == set() and suspects(w) == {uid(w, "bob")}
    assert holders(w, OID) == [uid(w, "alice")]


def test_a_cloned_card_moving_one_oid_twice_is_blocked_on_its_own_statements(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = standard(tmp_path, ca, ("alice", "bob", "carol"))
    issue(w, OID, "alice")
    clone = Card(SqliteStore(str(clone_store(w, "alice"))), applets=[TrnApplet()])  # same keys, rolled back later
    send(w, "alice", "bob")
    assert status(w, "bob", OID) == "enabled"
    swap_in(w, "alice", clone)
    send(w, "alice", "carol")  # the clone signs a second statement moving OID from the same holding
    recover(w, "alice", "carol")
    assert statuses(w, OID, "bob", "carol") == {"bob": "enabled", "carol": "trustless"}
    assert blocked(w) == {uid(w, "alice")}  # the signer, and nobody else
    assert suspects(w) == set()  # carol forwarded a genuine statement: not suspected
    assert holders(w, OID) == [uid(w, "alice"), uid(w, "bob")]


class ReplaysSeeked(TrnApplet):
    """Keeps every ``seeked`` its authority sent; on ``trn.recover`` it first gets ``stale`` again.

    This stands for a duplicated or delayed ``seeked`` arriving inside a fresh record: the session's
    counters are not what stops it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bytes] = []
        self.stale: bytes | None = None

    def on_inner(self, ctx: StepContext, peer: Uid, raw: bytes) -> None:
        if raw[:1] == bytes([tr.SEEKED]):
            self.seen.append(raw)
        super().on_inner(ctx, peer, raw)

    def handle(self, ctx: StepContext, msg: Message, params: dict[str, Any]) -> None:
        authority = ctx.get(b"a")
        if msg.mtype == RECOVER.code and self.stale is not None and authority is not None:
            stale, self.stale = self.stale, None
            self.on_inner(ctx, Uid.from_bytes(authority), stale)
        super().handle(ctx, msg, params)


def test_a_stale_seeked_does_not_enable_a_later_copy_of_the_oid(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = standard(tmp_path, ca, ("alice", "bob"))
    replayer = ReplaysSeeked()
    lying_card(w, "bob", replayer)
    issue(w, OID, "bob")  # movement 1: agent -> bob, traced: bob keeps its seeked (ok)
    assert status(w, "bob", OID) == "enabled"
    (first,) = replayer.seen
    assert tr.decode_inner(first)[1]["ok"] is True
    send(w, "bob", "alice")
    send(w, "alice", "bob")  # the oid comes back: movement 3, alice -> bob
    assert status(w, "bob", OID) == "enabled"
    send(w, "bob", "alice")
    drop(w, "bob", "authority", *range(1, 100))  # bob's seekfor for movement 5 never reaches the authority
    send(w, "alice", "bob")
    assert status(w, "bob", OID) == "trustless"
    replayer.stale = first  # the answer about movement 1 arrives again
    w.apps["bob"].send(uid(w, "bob"), RECOVER)
    w.run(300)
    assert status(w, "bob", OID) == "trustless"  # not enabled by an answer about another movement
    assert holders(w, OID) == [uid(w, n) for n in ("bob", "alice", "bob", "alice")]


def test_a_blocked_device_sending_a_token_it_really_holds(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = standard(tmp_path, ca, ("alice", "bob", "carol"))
    issue(w, OID3, "alice")  # alice really holds OID3 (traced, enabled)
    issue(w, OID, "alice")
    issue(w, OID2, "bob")
    clone = Card(SqliteStore(str(clone_store(w, "alice"))), applets=[TrnApplet()])
    send(w, "alice", "carol")
    swap_in(w, "alice", clone)
    send(w, "alice", "bob")  # the clone spends OID again: alice blocked at the authority
    assert blocked(w) == {uid(w, "alice")}
    assert status(w, "alice", OID3) == "enabled"
    # as sender: carol receives OID3 from alice (the blocklist has not reached carol): never enabled
    send(w, "alice", "carol", OID3)
    recover(w, "carol")
    assert statuses(w, OID3, "alice", "carol") == {"alice": None, "carol": "trustless"}
    assert holders(w, OID3) == [uid(w, "alice")]
    # as receiver: alice receives OID2 from bob and her seekfor is refused
    send(w, "bob", "alice", OID2)
    recover(w, "alice")
    assert statuses(w, OID2, "bob", "alice") == {"bob": None, "alice": "trustless"}
    assert holders(w, OID2) == [uid(w, "bob")]
