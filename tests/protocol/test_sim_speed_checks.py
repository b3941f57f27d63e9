"""The speed simulation's invariant checks run after every event; they read a store (and the card mirroring it) again
only when it changed (``SpeedScenario._read``, keyed on ``TearingStore.writes``), and what they skip reading is what
they would have read."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

from cardnet.services.speed import broker_records as sb_records
from cardnet.sim.runner import HEAL_S, SAFETY_S
from cardnet.sim.speed import VENDOR_ACCOUNT, SpeedScenario
from cardnet.sim.world import World, plan_for
from cardnet.store.sqlite import SqliteTxn


class _CountedMem(dict[Any, bytes]):
    """A card's mirror that counts how often it is read whole (what the checks' purse and SAM reads do)."""

    reads = 0

    def items(self) -> Any:
        _CountedMem.reads += 1
        return super().items()


def _finished(seed: int) -> tuple[SpeedScenario, World]:
    sc = SpeedScenario()
    w = World(seed, plan_for(seed), trace=False)
    sc.build(w)
    w.run(safety_s=SAFETY_S, heal_s=HEAL_S, check=sc.check, quiescent=sc.quiescent)
    assert w.violations == []
    return sc, w


def test_a_check_after_an_event_that_left_the_stores_alone_reads_none_of_them_and_sees_every_change() -> None:
    """The SPEED simulation spent a tenth of its CPU in these checks, scanning the broker's tables and every card's
    mirror after each event that touched any of them. Now an unchanged store is not read again; a changed one is."""
    sc, w = _finished(0)
    sc.changed = True
    assert sc.check(w, False) == []  # (the final check's own requests to the broker went through its store)
    inner = sc.broker.store.inner
    real_transaction = inner.transaction
    scans: list[int] = []

    def counted() -> AbstractContextManager[SqliteTxn]:
        scans.append(1)
        return real_transaction()

    inner.transaction = counted  # type: ignore[method-assign]  # the real transaction, counted
    cards = [node.card for node in sc.customers] + [sc.broker.core.sam.card]
    for card in cards:
        card._mem = _CountedMem(card._mem)
    _CountedMem.reads = 0
    sc.changed = True  # as after any card's step or any frame at the broker
    assert sc.check(w, False) == []
    assert (len(scans), _CountedMem.reads) == (0, 0), "the check read stores that had not changed"

    with sc.broker.store.transaction() as txn:  # the vendor's account goes (as a broken broker's write would do)
        txn.delete(sb_records.ACCOUNTS, VENDOR_ACCOUNT.encode())
    scans.clear()
    sc.changed = True
    assert any("the vendor's account holds None" in bad for bad in sc.check(w, False))
    assert len(scans) == 2 and _CountedMem.reads == 0  # the broker's register and accounts, read again; no card

    node = sc.customers[1]
    node.reopen_card()  # another Card object over the same store: its mirror is read again
    sc.changed = True
    sc.check(w, False)
    assert _CountedMem.reads == 0  # (the reopened card's mirror is a plain dict)
    assert sc.reads[("purse", 1)][0][0] is node.card


def _fresh(sc: SpeedScenario) -> Iterator[tuple[str, Any, Any]]:
    """What the checks read, next to the same read done now from the stores and cards themselves."""
    for node in sc.customers:
        yield f"purse {node.index}", sc._purse(node), sc._read_purse(node.card)
    yield "sam", sc._sam(), sc._read_sam(sc.broker.core.sam.card)
    yield "orders", sc._orders(), sc._read_orders()
    yield "accounts", sc._accounts(), sc._read_accounts()


def test_what_the_checks_do_not_read_again_is_what_they_would_read_under_tears_crashes_and_attacks() -> None:
    """After every event of runs with torn commits, crashes, restarts and malicious hosts, the values the checks use
    equal a fresh read of every purse, the SAM's log and the broker's tables."""
    seeds = [s for s in range(40) if plan_for(s).malicious_p > 0][:2] + [s for s in range(40) if plan_for(s).tear_p][:2]
    compared = 0
    for seed in seeds:
        sc = SpeedScenario()
        w = World(seed, plan_for(seed), trace=False)
        sc.build(w)

        def check(world: World, final: bool, sc: SpeedScenario = sc, seed: int = seed) -> list[str]:
            nonlocal compared
            bad = sc.check(world, final)
            for what, used, fresh in _fresh(sc):
                assert used == fresh, (seed, world.now, what)
                compared += 1
            return bad

        w.run(safety_s=SAFETY_S, heal_s=HEAL_S, check=check, quiescent=sc.quiescent)
        assert w.violations == [], (seed, w.violations)
        assert sum(w.faults.values()) > 0, seed
    assert compared > 1000
