"""Randomized check of UIC for n up to 9: seeded swarm adversaries, hypothesis-drawn omission sets, broken variants.

Beyond n = 4 the omission patterns are too many to enumerate (n = 5, t = 2 already has 2^42 per faulty pair), so
the checker of test_uic_exhaustive.py runs here under random adversaries of two kinds:

* a seeded *swarm*: per run, each faulty module picks per round how it sends (to all, to none, to one module,
  often another faulty one, which builds relay chains; or to each with a drawn probability) and how it receives,
  and may crash; every (n, t) with n <= 9 and t < n/2 gets its share of runs. The runs are checked to reach the
  hard cases of the proof (faulty modules deciding and halting, faulty inputs kept and left out, and a correct
  module first learning a faulty input in round t through a chain of t faulty modules);
* hypothesis: any faulty set of size <= t, crash rounds, and any set of droppable messages (it shrinks a failure
  to a smallest omission set).

The same swarm finds each of the broken variants out, also at t >= 2. A failure prints ``reproduce with seed=N``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_uic_exhaustive import BROKEN, INPUTS, Faults, Make, Msg, check, droppable, run, violations

from cardnet.protocols.smc.uic import Uic, Vector, rounds_for

PAIRS = [(n, t) for n in range(1, 10) for t in range((n - 1) // 2 + 1)]  # 25 (n, t) pairs
SWARM_RUNS = 200  # per pair: 5,000 runs in all
Observer = Callable[[int, list[Uic]], None]


def swarm_faults(rng: random.Random, n: int, t: int) -> Faults:
    """A random adversary: up to t faulty modules, each with its own per-round send and receive behaviour.

    In about a third of the runs the faulty modules also form a relay chain f0, f1, ..: each behaves until its
    turn, and in round s + 1 link s sends only to link s + 1 (the last link: to a random set of modules), so an
    input travels one hop per round, unseen by the others, as in the agreement proof's hardest case.
    """
    rounds = rounds_for(t)
    k = t if rng.random() < 0.75 else rng.randint(0, t)
    faulty = frozenset(rng.sample(range(n), k))
    crash = {f: rng.randint(1, rounds) for f in sorted(faulty) if rng.random() < 0.2}
    p = rng.choice((0.1, 0.3, 0.5, 0.8))
    calm = {f: rng.choice((0.3, 0.6, 0.9)) for f in sorted(faulty)}  # chance that f behaves in a direction
    chain = rng.sample(sorted(faulty), k) if rng.random() < 0.35 else []
    omitted: set[Msg] = set()
    for f in sorted(faulty):
        others = [j for j in range(n) if j != f]
        partners = sorted(faulty - {f})
        link = chain.index(f) if f in chain else None
        for r in range(1, rounds + 1):
            for direction in ("send", "receive"):
                if link is not None and r <= link:  # a link behaves until its turn
                    kept = set(others)
                elif link is not None and r == link + 1 and direction == "send":
                    last = link + 1 == len(chain)
                    kept = set(rng.sample(others, rng.randint(1, len(others)))) if last else {chain[link + 1]}
                elif rng.random() < calm[f] or not others:
                    kept = set(others)
                else:
                    mode = rng.choice(("none", "one", "some"))
                    if mode == "none":
                        kept = set()
                    elif mode == "one":
                        kept = {rng.choice(partners if partners and rng.random() < 0.5 else others)}
                    else:
                        kept = {j for j in others if rng.random() > p}
                pairs = ((f, j) if direction == "send" else (j, f) for j in others if j not in kept)
                omitted.update((r, i, j) for i, j in pairs)
    return Faults(faulty, frozenset(omitted), crash)


class Tally:
    """What the swarm reached: outcomes of faulty modules and the proof's hardest chain."""

    def __init__(self) -> None:
        self.seen = Counter[str]()

    def watch(self, n: int, t: int, faults: Faults) -> tuple[dict[tuple[int, int], int], Observer]:
        first: dict[tuple[int, int], int] = {}  # (correct module, faulty module) -> round it learned the input

        def observe(r: int, machines: list[Uic]) -> None:
            for c in set(range(n)) - faults.faulty:
                for f in faults.faulty:
                    if machines[c].known[f] is not None:
                        first.setdefault((c, f), r)

        return first, observe

    def count(self, t: int, faults: Faults, decided: dict[int, Vector], first: dict[tuple[int, int], int]) -> None:
        for f in faults.faulty:
            self.seen["faulty decided" if f in decided else "faulty did not decide"] += 1
            if decided:
                kept = next(iter(decided.values()))[f] is not None
                self.seen["faulty input kept" if kept else "faulty input left out"] += 1
        if t >= 2 and t in first.values():
            self.seen["correct learned a faulty input in round t"] += 1


@pytest.mark.parametrize(("n", "t"), PAIRS)
def test_swarm_adversaries_keep_uic(n: int, t: int) -> None:
    tally = Tally()
    for seed in range(SWARM_RUNS):
        rng = random.Random(f"uic {n} {t} {seed}")
        faults = swarm_faults(rng, n, t)
        first, observe = tally.watch(n, t, faults)
        out = run(Uic, n, t, INPUTS[:n], faults, observe=observe)
        bad = violations(n, INPUTS[:n], faults, out)
        assert not bad, f"reproduce with seed={seed} (n={n}, t={t}): {faults}: {bad}"
        tally.count(t, faults, out.decided, first)
    if t:
        kinds = ["faulty decided", "faulty did not decide", "faulty input kept", "faulty input left out"]
        assert all(tally.seen[k] > 0 for k in kinds), tally.seen


def test_the_swarm_reaches_the_hardest_chain() -> None:
    """For t >= 2 the swarm builds the relay chain the agreement proof turns on: all t faulty modules pass an
    input along, one per round, so that a correct module first learns it in round t (of t + 1)."""
    tally = Tally()
    for n, t in [(5, 2), (6, 2), (7, 3), (8, 3), (9, 4)]:
        for seed in range(SWARM_RUNS):
            faults = swarm_faults(random.Random(f"uic {n} {t} {seed}"), n, t)
            first, observe = tally.watch(n, t, faults)
            out = run(Uic, n, t, INPUTS[:n], faults, wire=False, observe=observe)
            tally.count(t, faults, out.decided, first)
    assert tally.seen["correct learned a faulty input in round t"] >= 100, tally.seen


@st.composite
def adversaries(draw: st.DrawFn) -> tuple[int, int, Faults]:
    n = draw(st.integers(1, 9), label="n")
    t = draw(st.integers(0, (n - 1) // 2), label="t")
    faulty = frozenset(draw(st.sets(st.integers(0, n - 1), max_size=t), label="faulty"))
    crash = draw(st.fixed_dictionaries({}, optional={f: st.integers(1, t + 1) for f in sorted(faulty)}), label="crash")
    free = droppable(n, rounds_for(t), faulty, crash)
    omitted = draw(st.sets(st.sampled_from(free)), label="omitted") if free else set()
    return n, t, Faults(faulty, frozenset(omitted), crash)


@settings(max_examples=300, deadline=timedelta(seconds=5), suppress_health_check=[HealthCheck.too_slow])
@given(adversaries())
def test_any_omission_set_keeps_uic(adversary: tuple[int, int, Faults]) -> None:
    n, t, faults = adversary
    _, bad = check(Uic, n, t, faults)
    assert not bad, bad


def first_violation(make: Make, pairs: list[tuple[int, int]], runs: int) -> tuple[str, int, int, int] | None:
    for seed in range(runs):
        for n, t in pairs:
            faults = swarm_faults(random.Random(f"broken {n} {t} {seed}"), n, t)
            bad = check(make, n, t, faults, wire=False)[1]
            if bad:
                return bad[0], n, t, seed
    return None


@pytest.mark.parametrize("name", list(BROKEN))
def test_the_swarm_catches_a_broken_rule_with_several_faulty_modules(name: str) -> None:
    make, properties = BROKEN[name]
    found = first_violation(make, [(5, 2), (7, 3), (9, 4)], runs=2000)
    assert found is not None, f"the swarm missed the {name} variant"
    what, _, t, _ = found
    assert t >= 2 and what.split(":")[0] in properties, found
