"""The smc simulation: TrustedPals runs under the paper's random adversary keep UIC, SMC and input independence for
every n in 3..9 and t < n/2; a module that does not pad its frames is caught, and so is an adversary beyond t."""

from __future__ import annotations

import random
from dataclasses import dataclass

from cardnet.protocols.smc.functions import SUM
from cardnet.protocols.smc.uic import Vector
from cardnet.sim.runner import HEAL_S, SAFETY_S, run_many, run_seed
from cardnet.sim.smc import DECIDED, N_MAX, N_MIN, Run, SmcScenario, check_run, draw_setup, start_run, step
from cardnet.sim.world import World, plan_for

SEEDS = range(400)


def test_smc_holds_its_invariants_for_every_n_and_t() -> None:
    summary = run_many("smc", SEEDS)
    assert summary.violations == 0, summary.first_failure and summary.first_failure.violations
    ex = summary.exercised
    for n in range(N_MIN, N_MAX + 1):
        assert ex[f"n{n}"] > 0, n
    for name in ("median", "sum", "auction", "auction2", "vote"):
        assert ex[f"fn_{name}"] > 0, name
    # faulty modules that decide (so uniform agreement binds them), that halt, that never took an input, that crashed
    # before and after deciding; faulty inputs both kept in the decided vector and left out
    for what in (
        "faulty_decided",
        "faulty_halted",
        "faulty_out",
        "correct_without_every_join",
        "crashed",
        "crashed_after_deciding",
        "faulty_input_kept",
        "faulty_input_missing",
    ):
        assert ex[what] > 0, (what, dict(ex))
    assert summary.faults_injected["drop"] > 0 and summary.faults_injected["crash"] > 0


def test_every_n_and_t_below_n_over_2_is_drawn() -> None:
    drawn = {(s.n, s.spec.terms.t) for s in (draw_setup(random.Random(seed)) for seed in SEEDS)}
    assert drawn == {(n, t) for n in range(N_MIN, N_MAX + 1) for t in range((n - 1) // 2 + 1)}


def test_a_module_that_does_not_pad_its_frames_is_caught_by_the_second_run() -> None:
    caught = by_comparison = 0
    first = None
    for seed in range(200):
        violations = run_seed("smc-broken", seed, trace=False).violations
        caught += bool(violations)
        if any("depends on the inputs" in v for v in violations):
            by_comparison += 1
            first = seed if first is None else first
    assert caught == 200
    assert by_comparison >= 180, by_comparison  # what the hosts see differs with other inputs
    assert first is not None and run_seed("smc", first, trace=False).violations == []


def test_a_seed_replays_with_its_description() -> None:
    a = run_seed("smc-broken", 0, trace=True)
    b = run_seed("smc-broken", 0, trace=True)
    assert a.trace == b.trace and a.violations == b.violations
    assert a.violations == run_seed("smc-broken", 0, trace=False).violations
    assert a.trace is not None
    text = "\n".join(a.trace)
    for what in ("smc: n=", "inputs A:", "inputs B:", "hidden rho", "tick 1:", "setup: n=", "VIOLATION"):
        assert what in text, what


def test_an_adversary_beyond_t_is_caught() -> None:
    """With t + 1 faulty hosts UIC promises nothing: the checks must find correct modules that do not decide."""
    found = []
    for seed in range(80):
        scenario = SmcScenario(name="smc-beyond-t", extra_faulty=1)
        world = World(seed, plan_for(seed), trace=False)
        scenario.build(world)
        world.run(safety_s=SAFETY_S, heal_s=HEAL_S, check=scenario.check, quiescent=scenario.quiescent)
        found += world.violations
    assert any("(UIC termination)" in v for v in found)


@dataclass
class FakeModule:
    """What check_run reads of a module, set by hand."""

    vector: Vector | None
    result: bytes | None
    status: str = DECIDED
    ticks: int = 0


def test_the_checks_name_each_broken_property() -> None:
    setup = next(s for s in (draw_setup(random.Random(seed)) for seed in range(200)) if s.fn is SUM and s.plan.faulty)
    run = start_run(setup, "A", setup.values_a)
    for r in range(1, setup.spec.rounds + 2):
        step(run, setup.plan, r)
    assert check_run(run, setup, final=True) == []
    good = next(m.vector for m in run.modules if m.vector is not None)
    correct = next(i for i in range(setup.n) if i not in setup.plan.faulty)
    ticks = setup.spec.rounds + 1
    lost = tuple(None if k == correct else v for k, v in enumerate(good))
    wrong = tuple(b"\x00" if k == correct else v for k, v in enumerate(good))
    fakes = [FakeModule(good, SUM.evaluate(good), ticks=ticks) for _ in range(setup.n)]
    liar, other = [i for i in range(setup.n) if i != correct][:2]
    fakes[liar] = FakeModule(lost, SUM.evaluate(lost), ticks=ticks)
    fakes[other] = FakeModule(wrong, SUM.evaluate(good), ticks=ticks)
    fakes[correct] = FakeModule(None, None, status="halted", ticks=ticks - 1)
    fake = Run("A", run.inputs, fakes, run.rng, run.seen)  # type: ignore[arg-type]
    bad = " | ".join(check_run(fake, setup, final=True))
    for what in (
        f"decided None for correct module {correct}'s input (UIC validity)",
        f"decided 00 for module {correct}",
        "(UIC uniform agreement)",
        "is not F(D)",
        "(SMC agreement)",
        f"correct module {correct} ended halted without a result (UIC termination)",
        f"correct module {correct} ran {ticks - 1} of {ticks} ticks",
    ):
        assert what in bad, what
