"""The millicent simulation: invariants hold under faults, and a vendor without a spent list is caught."""

from __future__ import annotations

from cardnet.sim.millicent import MillicentScenario
from cardnet.sim.runner import run_many, run_seed
from cardnet.sim.world import World, plan_for


def test_millicent_holds_its_invariants_on_many_seeds() -> None:
    summary = run_many("millicent", range(150))
    assert summary.violations == 0, summary.first_failure and summary.first_failure.trace
    for kind in ("drop", "duplicate", "delay", "reorder", "partition", "tear", "crash"):
        assert summary.faults_injected[kind] > 0, kind


def test_the_broken_vendor_is_caught() -> None:
    summary = run_many("millicent-broken", range(40))
    assert summary.violations > 0
    assert summary.first_failure is not None
    assert any("accepted" in v or "conserved" in v for v in summary.first_failure.violations)


def test_same_seed_same_trace_and_the_attacks_really_happen() -> None:
    assert run_seed("millicent", 11).trace == run_seed("millicent", 11).trace
    accepted = refused = pruned = thief = 0
    for seed in range(20):
        sc = MillicentScenario()
        w = World(seed, plan_for(seed), trace=False)
        sc.build(w)
        w.run(safety_s=2.0, heal_s=30.0, check=sc.check, quiescent=sc.quiescent)
        assert not w.violations
        accepted += len(sc.accepted)
        pruned += len(sc.pruned)
        thief += len(sc.thief_rids)
        refused += sum(v.core.stats.refused for v in sc.vendors)
    assert accepted > 100 and pruned > 0 and thief > 20 and refused > 20
