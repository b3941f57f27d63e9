"""The authority card's chain records through real cards: an old card's chains, and a chain 2,000 movements long.

A card written before per-movement records kept each token's chain in one ``chain:<oid>`` record: it answers
the same (queries, graph pages, the idempotent answer, a clone's branch with its evidence) and its next recorded
movement converts the chain. A token that moves 2,000 times costs the authority's card the same bytes per
movement at the end as at the start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_trace_view_cards import graph_of, holders
from test_trn_attacks import blocked, send, swap_in
from trnkit import clear_guards, drop, recover, status
from trnworld import TrnWorld, clone_store, issue, standard, uid

from cardnet.applets import authority as auth
from cardnet.applets import authority_chain as ac
from cardnet.applets.authority import ADD_AGENT, AuthorityApplet
from cardnet.applets.trn import RESULT, SET_AUTHORITY, TrnApplet
from cardnet.card import Card, StepContext
from cardnet.crypto import pki
from cardnet.store import SqliteStore
from cardnet.wire import Bytes, Field, Message, Schema, register
from cardnet.wire.cbor import dumps

OID = bytes(range(16))
OID2 = bytes(range(16, 32))
TABLE = "a.authority"

OLD_FORM = register(
    0x0F70,
    "test.auth_old_form",
    "test",
    Schema("test.auth_old_form", [Field(0, "oid", Bytes(16, 16))]),
    privileged=True,
)


class OldFormAuthority(AuthorityApplet):
    """The authority applet, and a test order that rewrites one token's chain as cards wrote it before
    per-movement records: one ``chain:<oid>`` record holding [issuer, [from, to, nonce, sig], ...], nothing else."""

    handles = (*AuthorityApplet.handles, OLD_FORM)

    def handle(self, ctx: StepContext, msg: Message, params: dict[str, Any]) -> None:
        if msg.mtype != OLD_FORM.code:
            super().handle(ctx, msg, params)
            return
        oid = params["oid"]
        chain = ac.load(ctx.get, oid)
        assert isinstance(chain, ac.RecordChain)
        moves = chain.span(0, len(chain))
        for i, m in enumerate(moves):
            ctx.delete(ac.move_key(oid, i))
            ctx.delete(ac.NONCE + oid + m.nonce)
        old = dumps([bytes(chain.issuer), *[[bytes(m.frm), bytes(m.to), m.nonce, m.sig] for m in moves]])
        ctx.put(b"chain:" + oid, old)
        ctx.reply(RESULT, ok=True, reason="old form")


def old_form(w: TrnWorld, oid: bytes) -> None:
    assert w.result("authority", OLD_FORM, oid=oid)["ok"]
    assert isinstance(stored(w, oid), ac.LegacyChain)
    assert not [k for t, k in w.cards["authority"]._mem if t == TABLE and k.startswith((ac.MOVE + oid, ac.NONCE + oid))]


def stored(w: TrnWorld, oid: bytes) -> ac.StoredChain | None:
    mem = w.cards["authority"]._mem
    return ac.load(lambda key: mem.get((TABLE, key)), oid)


def test_an_old_card_answers_the_same_and_its_next_movements_convert_its_chains(
    tmp_path: Path, ca: pki.CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = standard(tmp_path, ca, ("alice", "bob", "carol", "dave"), authority=OldFormAuthority())
    issue(w, OID, "alice")
    clone = Card(SqliteStore(str(clone_store(w, "alice"))), applets=[TrnApplet()])
    send(w, "alice", "bob")
    issue(w, OID2, "bob")
    for i in range(3):
        send(w, "bob", "carol", OID2)
        if i == 2:
            drop(w, "authority", "bob", *range(1, 1000))  # the authority's answer to bob is lost: bob asks again
        send(w, "carol", "bob", OID2)
    clear_guards(w)
    assert status(w, "bob", OID2) == "trustless"
    before, _ = graph_of(w)
    was = {oid: holders(w, oid) for oid in (OID, OID2)}
    old_form(w, OID)
    old_form(w, OID2)

    # queries and graph pages read the old form
    assert {oid: holders(w, oid) for oid in (OID, OID2)} == was
    assert graph_of(w)[0] == before
    monkeypatch.setattr(auth, "GRAPH_PAGE_BYTES", 200)  # a chain in parts: two movements a page
    assert graph_of(w)[0] == before
    monkeypatch.undo()

    # bob asks again for the last movement: answered again from the old record
    recover(w, "bob")
    assert status(w, "bob", OID2) == "enabled" and isinstance(stored(w, OID2), ac.LegacyChain)

    # alice's clone spends OID again: a branch, its evidence from the old record; nothing recorded, still old
    swap_in(w, "alice", clone)
    send(w, "alice", "carol")
    recover(w, "alice", "carol")
    assert status(w, "carol", OID) == "trustless" and blocked(w) == {uid(w, "alice")}
    (branch,) = graph_of(w, OID)[0].branches
    assert [(m.frm, m.to) for m in branch.moves] == [
        (uid(w, "alice"), uid(w, "bob")),
        (uid(w, "alice"), uid(w, "carol")),
    ]
    assert isinstance(stored(w, OID), ac.LegacyChain) and holders(w, OID) == was[OID]

    # the next movement converts the chain: records as if it had always been kept in them
    send(w, "bob", "dave")
    assert status(w, "dave", OID) == "enabled"
    chain = stored(w, OID)
    assert isinstance(chain, ac.RecordChain) and len(chain) == 3 and chain.issuer == uid(w, "agent")
    assert holders(w, OID) == [*was[OID], uid(w, "dave")]
    send(w, "bob", "carol", OID2)
    assert isinstance(stored(w, OID2), ac.RecordChain)
    after = graph_of(w)[0].chain(OID2)
    assert after is not None and after.moves[:-1] == before.chain(OID2).moves  # type: ignore[union-attr]
    assert holders(w, OID2) == [*was[OID2], uid(w, "carol")]


class CountingStore(SqliteStore):
    """A card's store that keeps the rows each write puts (key and stored value: the record's tag and value)."""

    def __init__(self, path: str, *, durable: bool = True) -> None:
        super().__init__(path, durable=durable)
        self.writes: list[list[tuple[bytes, bytes]]] = []

    def write(self, table: str, puts: list[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        self.writes.append(list(puts))
        super().write(table, puts, deletes)


MOVEMENTS = 2000


@pytest.mark.slow
def test_a_token_moving_2000_times_costs_the_authority_the_same_bytes_per_movement(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = TrnWorld(tmp_path, ca)
    # Stores without an fsync a commit (durable=False: synchronous=NORMAL): the test counts the bytes the cards
    # write, which are the same, and some 14,000 durable commits were two thirds of its time.
    store = CountingStore(str(tmp_path / "authority.db"), durable=False)
    card = w.card("authority", pki.Role.SERVICE, capacity_bytes=1 << 20, store=store)
    agent = w.card("agent", pki.Role.AGENT, store=SqliteStore(str(tmp_path / "agent.db"), durable=False))
    for name in ("alice", "bob"):
        w.card(name, store=SqliteStore(str(tmp_path / f"{name}.db"), durable=False))
    assert w.result("authority", ADD_AGENT, cert=agent.certificate_der)["ok"]
    for name in ("agent", "alice", "bob"):
        assert w.result(name, SET_AUTHORITY, authority=card.uid)["ok"]
    issue(w, OID, "alice")
    written: list[int] = []  # bytes the authority's card wrote to its store, per movement
    largest: list[int] = []  # its largest row
    chain_rows: list[list[int]] = []  # the sizes of the chain's rows it wrote
    used: dict[int, int] = {}
    for i in range(MOVEMENTS):
        mark = len(store.writes)
        send(w, *(("alice", "bob") if i % 2 == 0 else ("bob", "alice")))
        puts = [row for rows in store.writes[mark:] for row in rows]
        written.append(sum(len(k) + len(v) for k, v in puts))
        largest.append(max(len(v) for _, v in puts))
        chain_rows.append(sorted(len(k) + len(v) for k, v in puts if k[12:].startswith((ac.CHAIN, ac.MOVE, ac.NONCE))))
        if i + 1 in (MOVEMENTS // 2, MOVEMENTS):
            card.flush()  # (acknowledged outbox rows go now, not in a later batch)
            used[i + 1] = card.used_bytes
    assert status(w, "alice", OID) == "enabled"
    chain = stored(w, OID)
    assert chain is not None and len(chain) == MOVEMENTS + 1
    # each movement: its record (159 bytes stored: table prefix 12, key 25, tag 16, [from, to, nonce, sig] 106),
    # its nonce index entry (56; 60 if the nonce collides with an earlier one) and the header (69 to 71)
    for rows in chain_rows:
        assert len(rows) == 3 and rows[2] == 159 and rows[0] in (56, 60) and 69 <= rows[1] <= 71, rows
    # the card's own growth: the movement and its index entry, whatever the chain's length
    assert (used[MOVEMENTS] - used[MOVEMENTS // 2]) / (MOVEMENTS // 2) <= 160
    # everything the card writes for a movement (session state, outbox, chain) stays the same size
    early, late = slice(10, 210), slice(-200, None)
    assert max(written[10:]) <= 1500
    assert sum(written[late]) / 200 <= sum(written[early]) / 200 + 16
    assert max(largest[late]) <= max(largest[early]) + 4  # (the session counters grow by a byte or two)
