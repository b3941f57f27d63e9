"""Running many seeds and reporting: what ``cardnet sim`` calls."""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cardnet.sim.faults import FAULT_KINDS
from cardnet.sim.scenarios import SCENARIOS
from cardnet.sim.world import World, plan_for

SAFETY_S = 2.0
HEAL_S = 30.0


@dataclass
class RunResult:
    seed: int
    violations: list[str]
    faults: Counter[str]
    trace: list[str] | None
    sim_time_s: float
    exercised: Counter[str] = field(default_factory=Counter)


@dataclass
class Summary:
    protocol: str
    runs: int = 0
    violations: int = 0
    failing_seeds: list[int] = field(default_factory=list)
    faults_injected: Counter[str] = field(default_factory=Counter)
    exercised: Counter[str] = field(default_factory=Counter)  # protocol paths the runs took (EXERCISED)
    seconds: float = 0.0
    first_failure: RunResult | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "runs": self.runs,
            "violations": self.violations,
            "failing_seeds": self.failing_seeds[:100],
            "faults_injected": {k: self.faults_injected.get(k, 0) for k in FAULT_KINDS},
            "exercised": dict(sorted(self.exercised.items())),
            "seeds_per_s": round(self.runs / self.seconds, 1) if self.seconds else None,
            "seconds": round(self.seconds, 2),
        }


def run_seed(protocol: str, seed: int, *, trace: bool = True) -> RunResult:
    """One seeded run of ``protocol``; deterministic: the same seed gives the same trace."""
    try:
        factory = SCENARIOS[protocol]
    except KeyError:
        raise ValueError(f"unknown protocol {protocol!r}: choose one of {', '.join(sorted(SCENARIOS))}") from None
    scenario = factory()
    world = World(seed, plan_for(seed), trace=trace)
    quiet = logging.getLogger("cardnet")
    old_level = quiet.level
    quiet.setLevel(logging.CRITICAL)  # tears and crashes are expected here; the trace records them
    try:
        scenario.build(world)
        world.run(safety_s=SAFETY_S, heal_s=HEAL_S, check=scenario.check, quiescent=scenario.quiescent)
    finally:
        quiet.setLevel(old_level)
    return RunResult(seed, world.violations, world.faults, world.trace, world.now, world.exercised)


def run_many(
    protocol: str,
    seeds: range,
    *,
    progress: Callable[[int], None] | None = None,
    stop_at_first: bool = False,
    jobs: int = 1,
) -> Summary:
    """Run every seed of ``seeds``; with ``jobs > 1`` in that many worker processes.

    Each seed is deterministic on its own, so splitting the seeds among
    processes changes nothing but the time taken: the summary is the same.
    """
    summary = Summary(protocol)
    start = time.perf_counter()
    if jobs > 1 and len(seeds) > 1:
        _run_parallel(summary, seeds, jobs, progress, stop_at_first)
    else:
        for seed in seeds:
            if _count(summary, seed, run_seed(protocol, seed, trace=False)) and stop_at_first:
                break
            if progress is not None:
                progress(1)
    summary.failing_seeds.sort()
    if summary.failing_seeds and summary.first_failure is None:
        summary.first_failure = run_seed(protocol, summary.failing_seeds[0], trace=True)  # replay with the trace on
    summary.seconds = time.perf_counter() - start
    return summary


_Outcome = tuple[list[str], Counter[str], Counter[str]]  # violations, faults, exercised


def _count(summary: Summary, seed: int, result: RunResult | _Outcome) -> bool:
    """Add one seed's outcome to ``summary``; True if it violated an invariant."""
    violations, faults, exercised = (
        (result.violations, result.faults, result.exercised) if isinstance(result, RunResult) else result
    )
    summary.runs += 1
    summary.faults_injected.update(faults)
    summary.exercised.update(exercised)
    if violations:
        summary.violations += 1
        summary.failing_seeds.append(seed)
    return bool(violations)


CHUNK = 25  # seeds a worker runs between reports: small enough for a smooth progress bar


def _run_chunk(protocol: str, first: int, last: int) -> list[tuple[int, _Outcome]]:
    out = []
    for seed in range(first, last):
        r = run_seed(protocol, seed, trace=False)
        out.append((seed, (r.violations, r.faults, r.exercised)))
    return out


def _run_parallel(
    summary: Summary, seeds: range, jobs: int, progress: Callable[[int], None] | None, stop_at_first: bool
) -> None:
    if seeds.step != 1:
        raise ValueError("parallel runs take a contiguous range of seeds")
    chunks = [(s, min(s + CHUNK, seeds.stop)) for s in range(seeds.start, seeds.stop, CHUNK)]
    ctx = multiprocessing.get_context("spawn")  # no forked copies of the caller's threads or event loop
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = [pool.submit(_run_chunk, summary.protocol, a, b) for a, b in chunks]
        try:
            for fut in cf.as_completed(futures):
                bad = False
                for seed, outcome in fut.result():
                    bad |= _count(summary, seed, outcome)
                if progress is not None:
                    progress(len(fut.result()))
                if bad and stop_at_first:
                    break
        finally:
            for f in futures:
                f.cancel()
