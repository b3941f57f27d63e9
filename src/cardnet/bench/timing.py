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


def paired_rates(
    ops: dict[str, Callable[[], int]], seconds: float, *, slice_units: int = 16, warmup: int = 32
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Run ``ops`` in turn, ``slice_units`` calls of each per turn, until ``seconds`` have passed.

    Returns each op's units per second over all its slices and each op's slices (seconds per unit; the
    i-th slices of two ops ran next to each other, in alternating order). Finely interleaved, a drift of the disk or
    the machine lands on every op alike: the ratio of two ops' adjacent slices is then far steadier than
    the ratio of rates measured one after the other.
    """
    for _ in range(warmup):
        for op in ops.values():
            op()
    total = dict.fromkeys(ops, 0.0)
    units = dict.fromkeys(ops, 0)
    slices: dict[str, list[float]] = {name: [] for name in ops}
    clock = time.perf_counter
    order = list(ops.items())
    end = clock() + seconds
    while clock() < end:
        order.reverse()  # each op first as often as last: no op always follows the same other op
        for name, op in order:
            done = 0
            start = clock()
            while done < slice_units:
                done += op()
            took = clock() - start
            total[name] += took
            units[name] += done
            slices[name].append(took / done)
    return {name: units[name] / total[name] for name in ops}, slices
