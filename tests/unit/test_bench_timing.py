"""The measuring loop of the paired benchmarks: slices of each op in turn, adjacent slices compared."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cardnet.bench.card import paired_ratio
from cardnet.bench.timing import paired_rates


def test_paired_rates_runs_every_op_in_equal_slices_and_alternates_their_order() -> None:
    calls: list[str] = []

    def op(name: str, units: int) -> Callable[[], int]:
        def run() -> int:
            calls.append(name)
            return units

        return run

    rates, slices = paired_rates({"a": op("a", 1), "b": op("b", 4)}, 0.05, slice_units=8, warmup=3)
    assert calls[:6] == ["a", "b"] * 3  # the warm-up: each op in turn
    timed = calls[6:]
    # a slice is 8 units: eight calls of a, two of b; the order reverses every turn
    assert timed[:10] == ["b"] * 2 + ["a"] * 8
    assert timed[10:20] == ["a"] * 8 + ["b"] * 2
    assert len(slices["a"]) == len(slices["b"]) >= 1
    assert set(rates) == {"a", "b"} and all(r > 0 for r in rates.values())
    assert all(s > 0 for s in slices["a"] + slices["b"])


def test_paired_ratio_is_the_median_of_adjacent_slices() -> None:
    # op took 2, 2, 10 (an outlier) seconds a unit beside a bound of 1, 1, 1: the median ratio is 0.5
    assert paired_ratio([2.0, 2.0, 10.0], [1.0, 1.0, 1.0]) == 0.5
    with pytest.raises(ValueError):
        paired_ratio([1.0], [1.0, 2.0])  # slices that were not measured in pairs
