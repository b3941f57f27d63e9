"""Measuring loops shared by the benchmarks (the only wall-clock readers in cardnet.bench)."""

from __future__ import annotations

import time
from collections.abc import Callable


def rate(op: Callable[[], int], seconds: float, *, warmup_s: float = 0.1) -> float:
    """Run ``op`` (which returns how many units it did) for ``seconds``; units per second."""
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        op()
    done = 0
    start = time.perf_counter()
    end = start + seconds
    now = start
    while now < end:
        done += op()
        now = time.perf_counter()
    return done / (now - start)
