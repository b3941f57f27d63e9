"""The fairx simulation: fair exchanges hold their invariants under every fault kind, and a responder that does not
wait for the TTP is caught."""

from __future__ import annotations

from cardnet.sim.runner import run_many, run_seed


def test_fairx_holds_its_invariants_under_every_fault_kind() -> None:
    summary = run_many("fairx", range(60))
    assert summary.violations == 0, summary.first_failure and summary.first_failure.trace
    for kind in ("drop", "duplicate", "delay", "reorder", "partition", "tear", "crash", "malicious"):
        assert summary.faults_injected[kind] > 0, kind
    ex = summary.exercised
    # exchanges ended every way: swapped, aborted by the TTP or a refusal, given up; the TTP decided both ways
    for what in ("ended_done", "ended_aborted", "ended_gave_up", "ttp_resolved", "ttp_aborted", "reject", "resolve"):
        assert ex[what] > 0, (what, dict(ex))


def test_a_responder_that_does_not_wait_for_the_ttp_is_caught() -> None:
    summary = run_many("fairx-broken", range(300), stop_at_first=True)
    failure = summary.first_failure
    assert failure is not None, f"fairx-broken was not caught in {summary.runs} seeds"
    assert any("usable on 2 cards" in v for v in failure.violations), failure.violations
    assert run_seed("fairx", failure.seed, trace=False).violations == []
