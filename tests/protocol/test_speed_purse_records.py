"""The purse applet writes, at every step, only the records the step changed: the stored records must still be
exactly those of the whole state (``purse.records``), with no stale record left and none missing, past the 64 kept
proofs of each kind and the 16 pending debits, through replays, refusals and restarts."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_speed_purse_cards import OP, World, make_world, run_ops

from cardnet.applets.speed import purse as pa
from cardnet.card import Card, StepContext
from cardnet.crypto import pki
from cardnet.protocols.speed import purse as pp
from cardnet.wire import Message


def stored(card: Card) -> dict[bytes, bytes]:
    return {k: v for k, v in card._scan(pa.TABLE, b"").items() if k != b"key"}


def check_records(card: Card) -> pp.PurseState:
    """The purse's records are exactly the encoding of the state they decode to; that state."""
    rows = stored(card)
    state = pa._state(sorted(rows.items()))
    want = pa.records(state)
    if b"ctr" not in rows and state.n == state.m == 0:  # a purse that never began a load or a debit: no counters yet
        del want[b"ctr"]
    assert rows == want
    return state


def checked(w: World, name: str = "alice") -> World:
    """``w``, checking ``name``'s purse records after every step of its card."""
    step = w._step

    def step_and_check(card: Card, msg: Message) -> Message:
        out = step(card, msg)
        if card is w.slots[name].card:
            check_records(card)
        return out

    w._step = step_and_check  # type: ignore[method-assign]
    return w


def test_records_stay_the_whole_state_past_the_kept_and_pending_limits(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = checked(make_world(tmp_path, ca))
    try:
        w.load("alice", "EUR", 10_000)
        for _ in range(pp.MAX_KEPT + 5):  # the 65th credit drops the oldest kept L3
            w.load("alice", "USD", 1)
        for _ in range(3):  # loads begun and never credited stay pending
            w.ok("alice", pa.LOAD_BEGIN, currency="USD", amount=1)
        s2s = []
        for i in range(pp.MAX_PENDING):  # 16 pending debits: a 17th is refused, none is dropped
            s2s.append(w.s2_for("alice", b"pend-%d" % i, "EUR", 1))
        assert w.ok("alice", pa.BALANCE)["pending_debits"] == pp.MAX_PENDING
        got = w.order("alice", pa.DEBIT_BEGIN, poid=b"pend-16", currency="EUR", amount=1)
        assert got["refused"] == "debits_pending"  # and it wrote nothing (check_records below)
        first = w.ok("alice", pa.DEBIT, s2=s2s[-1])["s3"]
        for i in range(pp.MAX_KEPT + 5):
            w.pay("alice", b"po-%d" % i, "EUR", 2)
        assert w.order("alice", pa.DEBIT, s2=s2s[-1])["refused"] == "no_pending"  # its proof was dropped
        w.restart("alice")
        last = w.s2_for("alice", b"last", "EUR", 3)
        s3 = w.ok("alice", pa.DEBIT, s2=last)["s3"]
        assert w.ok("alice", pa.DEBIT, s2=last)["s3"] == s3  # the same S3 again, nothing debited twice
        assert w.order("alice", pa.DEBIT_BEGIN, poid=b"last", currency="EUR", amount=3)["refused"] == "already_paid"
        assert w.order("alice", pa.DEBIT_BEGIN, poid=b"big", currency="EUR", amount=10**6)["refused"] == "insufficient"
        state = check_records(w.slots["alice"].card)
        assert len(state.proofs) == len(state.load_proofs) == pp.MAX_KEPT
        assert sorted(s.n for s in state.proofs.values()) == list(range(state.n - pp.MAX_KEPT, state.n))
        assert sorted(state.load_proofs) == list(range(state.m - 3 - pp.MAX_KEPT, state.m - 3))
        assert len(state.loads) == 3 and len(state.debits) == pp.MAX_PENDING - 1
        kept = w.ok("alice", pa.PROOFS)
        assert len(kept["s3"]) == len(kept["l3"]) == pp.MAX_KEPT and first not in kept["s3"]
        assert w.accounts("alice")["EUR"] == {"balance": 10_000 - 1 - 2 * (pp.MAX_KEPT + 5) - 3, "loaded": 10_000,
                                               "debited": 1 + 2 * (pp.MAX_KEPT + 5) + 3}  # fmt: skip
        assert w.accounts("alice")["USD"]["balance"] == pp.MAX_KEPT + 5
    finally:
        w.close()


@settings(max_examples=30, deadline=None)
@given(ops=st.lists(OP, max_size=40))
def test_records_stay_the_whole_state_under_drops_duplicates_and_restarts(
    ops: list[tuple[Any, ...]], ca: pki.CertificateAuthority
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        w = checked(make_world(Path(tmp), ca))
        try:
            run_ops(w, ops)
        finally:
            w.close()


def test_a_debit_on_a_full_purse_writes_only_what_it_changed(
    tmp_path: Path, ca: pki.CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = make_world(tmp_path, ca)
    try:
        w.load("alice", "EUR", 10_000)
        for i in range(pp.MAX_KEPT):
            w.pay("alice", b"po-%d" % i, "EUR", 1)
        writes: list[tuple[str, bytes]] = []
        put, delete = StepContext.put, StepContext.delete

        def spy_put(ctx: StepContext, key: bytes, value: bytes, *, table: str | None = None) -> None:
            if table == pa.TABLE:
                writes.append(("put", key))
            put(ctx, key, value, table=table)

        def spy_delete(ctx: StepContext, key: bytes, *, table: str | None = None) -> None:
            if table == pa.TABLE:
                writes.append(("delete", key))
            delete(ctx, key, table=table)

        monkeypatch.setattr(StepContext, "put", spy_put)
        monkeypatch.setattr(StepContext, "delete", spy_delete)
        s2 = w.s2_for("alice", b"next", "EUR", 5)
        assert writes == [("put", b"ctr"), ("put", b"pd:next")]
        writes.clear()
        w.ok("alice", pa.DEBIT, s2=s2)
        n = pp.MAX_KEPT
        assert sorted(writes) == sorted(
            [("put", b"a:EUR"), ("delete", b"pd:next"), ("delete", b"kd:" + (0).to_bytes(4, "big")),
             ("put", b"kd:" + n.to_bytes(4, "big"))]
        )  # fmt: skip
        writes.clear()
        w.ok("alice", pa.DEBIT, s2=s2)  # the same S2 again: its kept S3, nothing written
        assert writes == []
        check_records(w.slots["alice"].card)
    finally:
        w.close()
