"""The authority's movement graph (``auth.graph_q``) through real cards: pages, clone branches, reissue marks.

The pages are put together by :class:`~cardnet.protocols.trace_view.GraphBuilder`; with a tiny page budget the
same graph must come out, in many pages (a long chain split into parts), as with the default budget.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from test_trn_attacks import blocked, send, swap_in
from test_trn_blame import NamesAnotherSender
from trnkit import recover, status
from trnworld import TrnWorld, clone_store, issue, standard, uid

from cardnet.applets import authority as auth
from cardnet.applets.authority import CHAIN, GRAPH, GRAPH_Q, QUERY
from cardnet.applets.trn import TrnApplet
from cardnet.card import Card
from cardnet.crypto import pki
from cardnet.protocols import trace_view as tv
from cardnet.services.authority import fetch_graph
from cardnet.store import SqliteStore
from cardnet.wire import Uid

OID = bytes(range(16))
OID2 = bytes(range(16, 32))
OID3 = bytes(range(32, 48))
ROUND_TRIPS = 6  # OID2 goes bob -> carol -> bob ... this many times: a chain longer than a tiny page


def graph_of(w: TrnWorld, oid: bytes | None = None) -> tuple[tv.Graph, int]:
    """The graph the authority card answers, and how many pages it took."""
    pages = 0

    async def ask(fields: dict[str, Any]) -> dict[str, Any]:
        nonlocal pages
        pages += 1
        return GRAPH.parse(w.ask("authority", GRAPH_Q, **fields))

    return asyncio.run(fetch_graph(ask, oid)), pages


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, ca: pki.CertificateAuthority) -> TrnWorld:
    """alice's clone spends OID a second time (to carol); OID2 moves between bob and carol many times. Shared by
    the tests of this module: they only read the authority (auth.graph_q, auth.query change nothing)."""
    liar = NamesAnotherSender()  # dave's card names carol as the sender of what bob sends it: dave is suspected
    w = standard(tmp_path_factory.mktemp("trace"), ca, ("alice", "bob", "carol", "dave"), dave=liar)
    issue(w, OID, "alice")
    clone = Card(SqliteStore(str(clone_store(w, "alice"))), applets=[TrnApplet()])
    send(w, "alice", "bob")
    swap_in(w, "alice", clone)
    send(w, "alice", "carol")
    recover(w, "alice", "carol")
    assert status(w, "carol", OID) == "trustless" and uid(w, "alice") in blocked(w)
    issue(w, OID2, "bob")
    for _ in range(ROUND_TRIPS):
        send(w, "bob", "carol", OID2)
        send(w, "carol", "bob", OID2)
    issue(w, OID3, "bob")
    liar.scapegoat = uid(w, "carol")
    send(w, "bob", "dave", OID3)
    recover(w, "dave")
    assert status(w, "dave", OID3) == "trustless"
    return w


def holders(w: TrnWorld, oid: bytes) -> list[Uid]:
    return list(CHAIN.parse(w.ask("authority", QUERY, oid=oid))["holders"])


def test_the_graph_has_every_recorded_movement_the_branch_and_the_roles(world: TrnWorld) -> None:
    w = world
    graph, pages = graph_of(w)
    assert pages == 1
    assert graph.authority == uid(w, "authority")
    for oid in (OID, OID2, OID3):
        chain = graph.chain(oid)
        assert chain is not None and chain.issuer == uid(w, "agent")
        assert [m.to for m in chain.moves] == holders(w, oid)  # what auth.query says, movement by movement
        assert [m.frm for m in chain.moves] == [chain.issuer, *holders(w, oid)[:-1]]
        assert len({m.nonce for m in chain.moves}) == len(chain.moves)  # one transfer id each
    assert len(graph.chain(OID2).moves) == 1 + 2 * ROUND_TRIPS  # type: ignore[union-attr]
    (branch,) = graph.branches
    assert branch.signer == uid(w, "alice") and branch.oid == OID
    assert branch.moves[-1].frm == uid(w, "alice") and branch.moves[-1].to == uid(w, "carol")  # the refused one
    assert branch.moves[-1] not in graph.chain(OID).moves  # type: ignore[union-attr]
    assert graph.blocked == {uid(w, "alice")}
    (suspect,) = graph.suspects
    assert suspect.uid == uid(w, "dave") and suspect.oid == OID3 and "claim refused" in suspect.reason
    assert [m.to for m in graph.chain(OID3).moves] == [uid(w, "bob")]  # type: ignore[union-attr]
    assert graph.roles[uid(w, "agent")] == "agent" and graph.roles[uid(w, "bob")] == "device"


def test_tiny_pages_give_the_same_graph(world: TrnWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    whole, _ = graph_of(world)
    monkeypatch.setattr(auth, "GRAPH_PAGE_BYTES", 200)  # about two movements a page
    paged, pages = graph_of(world)
    assert pages > 6, "a tiny budget must take many pages"
    assert paged == whole
    one, _ = graph_of(world, OID2)
    assert one.chains == (whole.chain(OID2),) and one.branches == () and one.suspects == ()
    three, _ = graph_of(world, OID3)
    assert three.suspects == whole.suspects and three.chains == (whole.chain(OID3),)


def test_one_token_has_its_branch_and_no_other_token(world: TrnWorld) -> None:
    graph, _ = graph_of(world, OID)
    assert [c.oid for c in graph.chains] == [OID] and [b.oid for b in graph.branches] == [OID]
    dot = tv.to_dot(graph)
    assert f'"{tv.node_id(uid(world, "alice"))}"' in dot


def test_pages_that_do_not_continue_are_refused() -> None:
    a, b = Uid(bytes(12), 0), Uid(bytes(11) + b"\x01", 0)
    part = {"oid": OID, "issuer": a, "start": 0, "total": 3, "moves": [{"from": a, "to": b, "nonce": bytes(16)}]}
    page = {"authority": a, "chains": [part], "branches": [], "suspects": [], "roles": [], "next": b"chain:x"}
    builder = tv.GraphBuilder()
    assert builder.add(page) == (b"chain:x", 0)
    with pytest.raises(tv.ProtocolError, match="resumed at movement 2"):
        builder.add(page | {"chains": [part | {"start": 2}]})
    with pytest.raises(tv.ProtocolError, match="does not move forward"):
        tv.GraphBuilder().add(page | {"next": b""})
