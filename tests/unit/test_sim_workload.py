"""The trn scenario's wider workload: cancels, a rolled-back wallet, blocks and blocklist epochs.

Its broken variants are caught (each new invariant has one), the correct protocol holds on the very seeds that
catch them, and the summary counts what a run exercised.
"""

from __future__ import annotations

import pytest

from cardnet.sim.runner import run_many, run_seed


@pytest.mark.parametrize(
    ("protocol", "what"),
    [
        ("trn-blocking-broken", "was recorded moving to blocked device"),  # blocked devices gain no token
        ("trn-blame-broken", "the authority blocked honest card"),  # every honest wallet ends unblocked
    ],
)
def test_the_broken_authorities_are_caught_and_the_correct_one_holds_on_that_seed(protocol: str, what: str) -> None:
    summary = run_many(protocol, range(200), stop_at_first=True)
    failure = summary.first_failure
    assert failure is not None, f"{protocol} was not caught in {summary.runs} seeds"
    assert any(what in v for v in failure.violations), failure.violations
    assert failure.trace is not None and failure.trace[-1].split(None, 1)[1].startswith("VIOLATION")
    assert run_seed("trn", failure.seed, trace=False).violations == []


def test_a_rolled_back_wallet_is_blocked_and_its_blocklist_signed() -> None:
    """Some seed among the first few rolls a wallet back; its owner spends an old token again: blocked, signed."""
    for seed in range(60):
        result = run_seed("trn", seed, trace=True)
        assert result.violations == []
        if result.exercised["block"] and result.exercised["blocklist_epoch"]:
            break
    else:
        pytest.fail("no seed of the first 60 blocked a rolled-back wallet")
    assert result.exercised["rollback"] == 1 and result.exercised["refused_trace"] >= 1
    trace = "\n".join(result.trace or [])
    assert "thief rolls card" in trace and "thief spends" in trace and "signs blocklist epoch 1" in trace


def test_the_summary_counts_what_the_runs_exercised() -> None:
    d = run_many("trn", range(30)).as_dict()
    assert d["violations"] == 0
    assert {"cancel", "sender_abort", "rollback"} <= set(d["exercised"])
    assert all(isinstance(n, int) and n > 0 for n in d["exercised"].values())
