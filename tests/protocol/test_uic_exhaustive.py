"""Exhaustive check of UIC (cardnet.protocols.smc.uic) for every n <= 4: every faulty set, omission and crash.

The machines run in lockstep rounds in one process, every payload through its wire encoding and back. For each
(n, t) with n = 1..4 and t in {0, the largest t < n/2} the checker enumerates every faulty set of size <= t, every
crash choice of each faulty module (never, or in round 1..t+1: it hands out that round's payloads, of which the
adversary may drop any, and stops before completing the round) and every subset of the messages to or from a
faulty module (in every round up to its crash) as the omitted ones. No reduction by symmetry is needed: all
19,442 runs take a few seconds. Each run must satisfy termination (every correct module decides within t + 1
rounds; every other module has decided, halted or crashed by then), validity (a decided entry is None or the
module's true input, and every correct module's entry is its input) and uniform agreement (all decided vectors,
faulty modules' included, are equal). The runs are counted and the count is compared with a closed form, so the
check cannot silently cover nothing. The same checker finds each rule of the algorithm broken on purpose.

The checker (``run``, ``violations``, ``Faults`` and the broken variants) is also used by test_uic_random.py.
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import pytest

from cardnet.protocols.smc.uic import Uic, Vector, rounds_for
from cardnet.protocols.smc.uic_wire import UicPayload, decode_payload, encode_payload

Make = Callable[[int, int, int, bytes], Uic]
Msg = tuple[int, int, int]  # (round, sender, receiver)
INPUTS = (b"", b"a", b"bb", b"ccc", b"dddd", b"e" * 5, b"f" * 6, b"g" * 7, b"h" * 8)  # distinct, one empty


@dataclass(frozen=True)
class Faults:
    """One adversary: the faulty modules, the messages it drops, and the round in which a faulty module crashes.

    A module that crashes in round ``r`` hands out its round-``r`` payloads (those not omitted are delivered) and
    stops: it never completes round ``r``, so it never decides. Only messages to or from a faulty module may be
    omitted.
    """

    faulty: frozenset[int] = frozenset()
    omitted: frozenset[Msg] = frozenset()
    crash: Mapping[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        assert all(i in self.faulty or j in self.faulty for _, i, j in self.omitted), "omission between correct"
        assert set(self.crash) <= self.faulty, "a correct module crashes"


@dataclass(frozen=True)
class Outcome:
    decided: dict[int, Vector]
    halted: frozenset[int]
    crashed: frozenset[int]
    running: frozenset[int]  # neither decided, halted nor crashed after the rounds: a termination failure


@functools.lru_cache(maxsize=1 << 16)
def roundtrip(p: UicPayload, n: int) -> UicPayload:
    """``p`` through its encoding and back (once per distinct payload: runs repeat the same payloads often)."""
    back = decode_payload(encode_payload(p), n=n)
    assert back == p
    return back


def run(
    make: Make,
    n: int,
    t: int,
    inputs: tuple[bytes, ...],
    faults: Faults,
    *,
    wire: bool = True,
    observe: Callable[[int, list[Uic]], None] | None = None,
) -> Outcome:
    """Run ``n`` machines for the t + 1 rounds of the specification under ``faults`` (``observe`` sees the
    machines after each round)."""
    machines = [make(n, t, i, inputs[i]) for i in range(n)]
    crashed: set[int] = set()
    for r in range(1, rounds_for(t) + 1):
        inboxes: dict[int, dict[int, UicPayload]] = {j: {} for j in range(n)}
        for i, m in enumerate(machines):
            if i in crashed or m.done:
                continue
            out = m.messages_for_round(r)
            sent = {id(p): roundtrip(p, n) if wire else p for p in out.values()}  # one payload for all
            for j, p in out.items():
                if (r, i, j) not in faults.omitted:
                    inboxes[j][i] = sent[id(p)]
        crashed.update(i for i, c in faults.crash.items() if c == r)
        for j, m in enumerate(machines):
            if j not in crashed and not m.done:
                m.receive_round(r, inboxes[j])
        if observe is not None:
            observe(r, machines)
    decided = {i: d for i, m in enumerate(machines) if i not in crashed and (d := m.decided) is not None}
    halted = frozenset(i for i, m in enumerate(machines) if i not in crashed and m.halted)
    running = frozenset(range(n)) - crashed - halted - set(decided)
    return Outcome(decided, halted, frozenset(crashed), running)


def violations(n: int, inputs: tuple[bytes, ...], faults: Faults, out: Outcome) -> list[str]:
    """Each violated property of UIC in one run, as ``property: what``; empty when the run is fine."""
    bad: list[str] = []
    correct = set(range(n)) - faults.faulty
    bad += [f"termination: correct module {i} did not decide" for i in sorted(correct - set(out.decided))]
    bad += [f"termination: module {i} still runs after the last round" for i in sorted(out.running)]
    for i, d in sorted(out.decided.items()):
        if len(d) != n:
            bad.append(f"validity: module {i} decided a vector of {len(d)} entries")
            continue
        bad += [
            f"validity: module {i} decided {d[k]!r} for module {k}" for k in range(n) if d[k] not in (None, inputs[k])
        ]
        bad += [f"validity: module {i} decided without correct module {j}" for j in sorted(correct) if d[j] is None]
    if len(set(out.decided.values())) > 1:
        bad.append(f"agreement: decisions differ: {out.decided}")
    return bad


def check(make: Make, n: int, t: int, faults: Faults, *, wire: bool = True) -> tuple[Outcome, list[str]]:
    inputs = INPUTS[:n]
    out = run(make, n, t, inputs, faults, wire=wire)
    return out, violations(n, inputs, faults, out)


def droppable(n: int, rounds: int, faulty: frozenset[int], crash: Mapping[int, int]) -> list[Msg]:
    """The messages the adversary may drop: to or from a faulty module, while both ends still take part (the
    sender has not crashed in an earlier round; the receiver does not crash in this round or before)."""
    return [
        (r, i, j)
        for r in range(1, rounds + 1)
        for i in range(n)
        if crash.get(i, rounds + 1) >= r
        for j in range(n)
        if j != i and crash.get(j, rounds + 1) > r and (i in faulty or j in faulty)
    ]


def every_fault(n: int, t: int) -> Iterator[Faults]:
    """Every faulty set of size <= t, every crash choice, every subset of the droppable messages."""
    rounds = rounds_for(t)
    for k in range(t + 1):
        for faulty_tuple in itertools.combinations(range(n), k):
            faulty = frozenset(faulty_tuple)
            for when in itertools.product([None, *range(1, rounds + 1)], repeat=k):
                crash = {f: c for f, c in zip(faulty_tuple, when, strict=True) if c is not None}
                free = droppable(n, rounds, faulty, crash)
                for bits in range(2 ** len(free)):
                    omitted = frozenset(m for b, m in enumerate(free) if bits >> b & 1)
                    yield Faults(faulty, omitted, crash)


def expected_runs(n: int, t: int) -> int:
    """The number of adversaries ``every_fault`` must produce, counted independently (for t <= 1).

    No faulty module: one run. One faulty module f (n ways): 2(n-1) droppable messages per round (to and from f);
    without a crash all t+1 rounds' worth; with a crash in round c, c-1 full rounds and f's n-1 last sends.
    """
    assert t <= 1
    if t == 0:
        return 1
    per_round, rounds = 2 * (n - 1), rounds_for(t)
    no_crash = 2 ** (per_round * rounds)
    crash = sum(2 ** (per_round * (c - 1) + (n - 1)) for c in range(1, rounds + 1))
    return 1 + n * (no_crash + crash)


CASES = [(1, 0), (2, 0), (3, 0), (3, 1), (4, 0), (4, 1)]  # n <= 4, t in {0, largest t < n/2}


def test_the_cases_are_every_n_up_to_4_with_t_zero_and_maximal() -> None:
    want = {(n, t) for n in range(1, 5) for t in {0, (n - 1) // 2}}
    assert set(CASES) == want
    assert sum(expected_runs(n, t) for n, t in CASES) == 19_442


@pytest.mark.parametrize(("n", "t"), CASES)
def test_every_fault_pattern_keeps_uic(n: int, t: int) -> None:
    runs, seen = 0, Counter[str]()
    for faults in every_fault(n, t):
        out, bad = check(Uic, n, t, faults)
        assert not bad, f"n={n} t={t} {faults}: {bad}"
        runs += 1
        for f in faults.faulty:
            seen[
                "faulty decided" if f in out.decided else "faulty halted" if f in out.halted else "faulty crashed"
            ] += 1
            if out.decided and next(iter(out.decided.values()))[f] is None:
                seen["faulty input left out"] += 1
            elif out.decided:
                seen["faulty input kept"] += 1
    assert runs == expected_runs(n, t)
    if t:  # the enumeration reaches every kind of outcome a faulty module can have
        kinds = ("faulty decided", "faulty halted", "faulty crashed", "faulty input left out", "faulty input kept")
        assert all(seen[k] > 0 for k in kinds), seen


# --- the checker catches each rule broken on purpose -------------------------------------------------------------


class EarlyDecision(Uic):
    """Decides after t rounds instead of t + 1."""

    @property
    def rounds(self) -> int:
        return self.t


class NeverHalts(Uic):
    """Decides even when it trusts fewer than n - t modules (it should halt: it knows it is faulty)."""

    @property
    def quorum(self) -> int:
        return 1


class ForgivingTrust(Uic):
    """Accepts a module it had stopped trusting (trust is no longer monotone)."""

    def _accepts(self, sender: int, payload: UicPayload) -> bool:
        return self.me in payload.trusted


class OneSidedTrust(Uic):
    """Accepts every module it trusts, even one that no longer trusts it back."""

    def _accepts(self, sender: int, payload: UicPayload) -> bool:
        return sender in self.trusted


BROKEN: dict[str, tuple[Make, set[str]]] = {  # variant -> the properties the exhaustive check finds violated
    "early decision": (EarlyDecision, {"agreement", "validity"}),
    "never halts": (NeverHalts, {"agreement", "validity"}),
    "forgiving trust": (ForgivingTrust, {"agreement"}),
    "one-sided trust": (OneSidedTrust, {"agreement"}),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_the_exhaustive_check_catches_a_broken_rule(name: str) -> None:
    """The n = 3, t = 1 enumeration that the real machine passes finds each broken variant out."""
    make, expected = BROKEN[name]
    found = Counter[str]()
    for faults in every_fault(3, 1):
        found.update({v.split(":")[0] for v in check(make, 3, 1, faults)[1]})
    assert set(found) == expected, found
