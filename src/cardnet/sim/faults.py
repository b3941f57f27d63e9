"""The fault model, drawn per seed ("swarm testing": the options themselves are random).

Every run draws its own probabilities, so some seeds are calm and others are
storms; within a run each fault is drawn from the run's one seeded RNG.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any

FAULT_KINDS = ("drop", "duplicate", "reorder", "delay", "partition", "tear", "crash", "malicious")


@dataclass(frozen=True)
class FaultPlan:
    drop_p: float  # a message in flight is lost
    dup_p: float  # a message in flight is delivered twice
    delay_max_s: float  # extra latency drawn in [0, delay_max_s]: reorders messages
    partition_p: float  # per tick: a link (one direction or both) goes down for a while
    partition_len_s: float
    tear_p: float  # per card commit: the card loses power before or after committing
    crash_p: float  # per tick: a host crashes (volatile state lost) and restarts
    latency_s: float = 0.005
    # per message a malicious host carries (and per tick, per malicious host): it misbehaves (world.py's
    # Malice: replay, tamper, forge src, reflect, redirect, inject). Drawn last, with a default, so the
    # other kinds of every seed's plan are what they were before malicious hosts existed.
    malicious_p: float = 0.0

    @classmethod
    def draw(cls, rng: random.Random, *, calm: bool = False) -> FaultPlan:
        if calm:
            return cls(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)

        def maybe(p_on: float, hi: float) -> float:
            return rng.uniform(0.0, hi) if rng.random() < p_on else 0.0

        return cls(
            drop_p=maybe(0.7, 0.3),
            dup_p=maybe(0.6, 0.3),
            delay_max_s=maybe(0.7, 0.2),
            partition_p=maybe(0.4, 0.05),
            partition_len_s=rng.uniform(0.05, 1.0),
            tear_p=maybe(0.5, 0.1),
            crash_p=maybe(0.4, 0.02),
            malicious_p=maybe(0.4, 0.2),
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
