"""Running many seeds and reporting: what ``cardnet sim`` calls."""

from __future__ import annotations

import logging
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


@dataclass
class Summary:
    protocol: str
    runs: int = 0
    violations: int = 0
    failing_seeds: list[int] = field(default_factory=list)
    faults_injected: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    first_failure: RunResult | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "runs": self.runs,
            "violations": self.violations,
            "failing_seeds": self.failing_seeds[:100],
            "faults_injected": {k: self.faults_injected.get(k, 0) for k in FAULT_KINDS},
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
    return RunResult(seed, world.violations, world.faults, world.trace, world.now)


def run_many(
    protocol: str, seeds: range, *, progress: Callable[[int], None] | None = None, stop_at_first: bool = False
) -> Summary:
    summary = Summary(protocol)
    start = time.perf_counter()
    for seed in seeds:
        result = run_seed(protocol, seed, trace=False)
        summary.runs += 1
        summary.faults_injected.update(result.faults)
        if result.violations:
            summary.violations += 1
            summary.failing_seeds.append(seed)
            if summary.first_failure is None:
                summary.first_failure = run_seed(protocol, seed, trace=True)  # replay with the trace on
            if stop_at_first:
                break
        if progress is not None:
            progress(1)
    summary.seconds = time.perf_counter() - start
    return summary
