"""The ``smc`` scenario: TrustedPals runs (joins, fake rounds, UIC, padded tail, F) under the paper's random adversary.

Theory of operation. Each seed draws a run: ``n`` in 3..9, ``t`` < n/2, the function (median, sum, auction,
auction2, vote), ``rho_max`` in 0..4, which hosts are faulty (at most ``t``) and how, and two input vectors from two
separate streams. The adversary is TrustedPals' host-side Adversary (section 7.2: "transient or permanent message
omissions", a crash being permanent omission): each faulty host draws transient send and receive omissions, a
permanent omission from some round on, a crash of its module in the middle of a round's sends, some members' joins
withheld from its module (with too many, the module never takes its input), or its module's joins withheld from
some members (they cannot open its frames) (:class:`Behaviour`); some draw none of these and are faulty in name
only. Its :class:`Plan`, every dropped frame slot (round, sender, receiver) and withheld join, is drawn before any
input, so both input vectors meet the same faults: the paper's random adversary is oblivious.

The modules are the protocol's own :class:`~cardnet.protocols.smc.run.ModuleRun` objects, run in lockstep rounds on
the world's virtual clock (one event per round, ``ROUND_S`` apart): every frame a module's tick emits is carried to
its receiver's next tick unless the plan drops it. The real applet on simulated cards (TRN sessions, SQLite stores,
the world's hosts) costs about ten times as much per run, too slow for 20,000 seeds of two runs each in half an hour
on one core (docs/sim.md). The setup runs twice, once per input vector (run A, run B), with the same members, keys
and rho shares (so the same hidden rho, decided by the first UIC) and the same adversary.

Invariants, for each run: every correct module decides and gets a result after all ``2 (t + 1) + rho_max`` rounds
(termination); every decided vector holds each correct module's input, and each non-None entry is its owner's input
(validity); every module that decides, faulty ones (crashed ones: at the moment of their crash) included, decides
the same vector (uniform agreement); every result is ``F`` of its module's vector, and all results are equal (SMC
validity and agreement); every frame has ``frame_bytes(n, L)`` bytes. Across the two runs: what each host sees (its
module's status after every tick, every frame it carries out and in, with round, peer and size) is the same, and so
is the number of ticks each module runs: nothing that crosses a host depends on the inputs.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.smc.functions import AUCTION, AUCTION2, INT_MAX, INT_MIN, MEDIAN, REGISTRY, SUM, VOTE
from cardnet.protocols.smc.registry import FunctionSpec
from cardnet.protocols.smc.run import (
    DECIDED,
    HALTED,
    JOINING,
    LENGTH_BYTES,
    OUT,
    READY,
    RUNNING,
    ModuleRun,
    RunSpec,
    frame_bytes,
)
from cardnet.protocols.smc.uic import Vector
from cardnet.sim.scenarios import register
from cardnet.sim.world import World
from cardnet.wire import Uid

ROUND_S: Final = 0.1  # virtual time between two ticks: every run ends within the world's safety phase
START_S: Final = 0.05  # joins and inputs, before the first tick
N_MIN, N_MAX = 3, 9
RHO_MAX_MAX: Final = 4
P_NO_FAULTS: Final = 0.1  # t = 0 (no faulty host, one UIC round); else t is uniform in 1..(n-1)//2
FUNCTIONS: Final = (MEDIAN, SUM, AUCTION, AUCTION2, VOTE)
_STATUS: Final = (JOINING, READY, RUNNING, DECIDED, HALTED, OUT)
SEND, RECEIVE, BOTH = "send", "receive", "both"  # the directions of a permanent omission
P_T_FAULTY: Final = 0.6  # exactly t hosts are faulty (else 0..t, uniformly)
P_TRANSIENT: Final = 0.5  # a faulty host omits some sends (and, independently, some receipts) at random
P_PERMANENT: Final = 0.3  # ... omits everything from some round on
P_CRASH: Final = 0.3  # ... crashes its module
P_STARVE: Final = 0.1  # ... keeps some members' joins from its module (too many: it never takes its input)
P_WITHHOLD: Final = 0.1  # ... keeps its module's joins from some members (they cannot open its frames)

Seen = tuple[str, int, int, int]
"""One thing a host sees: ("tick", round, -1, status index), ("send", round, receiver, size) or ("recv", round,
sender, size)."""


class ObservedModuleRun(ModuleRun):
    """The module the simulator runs (the real one: its decided vector is :attr:`ModuleRun.vector`)."""


class UnpaddedModuleRun(ObservedModuleRun):
    """Broken on purpose (``smc-broken``): frames are sealed without padding, so a frame's size is its payload's
    (TrustedPals section 5.1's first example: the size of a ciphertext tells a host about the input inside). Its
    peers, broken alike, open frames of any size. Everything else, UIC included, is the real module's."""

    def _pad(self, payload: bytes) -> bytes:
        return len(payload).to_bytes(LENGTH_BYTES, "big") + payload  # (the real module pads to self.plain here)

    def _open(self, r: int, j: int, ct: bytes) -> bytes | None:
        padded, self.frame = self.frame, len(ct)  # (the real module refuses a frame of another size)
        try:
            return super()._open(r, j, ct)
        finally:
            self.frame = padded


# --- the adversary: TrustedPals' random Adversary, drawn whole from the seed before any input ---------------


@dataclass(frozen=True)
class Behaviour:
    """How one faulty host treats its module's traffic (all fields fixed before the run)."""

    send_p: float = 0.0  # each frame its module sends is dropped with this probability
    recv_p: float = 0.0  # each frame sent to its module is dropped with this probability
    permanent_from: int | None = None  # from this round on, every frame in direction ``permanent`` is dropped
    permanent: str = ""  # SEND, RECEIVE or BOTH
    crash_at: int | None = None  # the host crashes its module out at this round, after part of its sends
    crash_keep_p: float = 0.0  # each of that round's frames leaves with this probability
    starved_by: tuple[int, ...] = ()  # these members' joins to its module are withheld
    withholds_to: tuple[int, ...] = ()  # its module's joins to these members are withheld

    def describe(self) -> str:
        parts = []
        if self.send_p:
            parts.append(f"transient send omissions p={self.send_p:.2f}")
        if self.recv_p:
            parts.append(f"transient receive omissions p={self.recv_p:.2f}")
        if self.permanent_from is not None:
            parts.append(f"permanent {self.permanent} omission from round {self.permanent_from}")
        if self.crash_at is not None:
            parts.append(f"crash at round {self.crash_at} (each of its frames leaves with p={self.crash_keep_p:.2f})")
        if self.starved_by:
            parts.append(f"withholds the joins of modules {list(self.starved_by)} from its module")
        if self.withholds_to:
            parts.append(f"withholds its module's joins to modules {list(self.withholds_to)}")
        return "; ".join(parts) or "faulty in name only (drops nothing)"


def draw_behaviour(rng: random.Random, me: int, n: int, rounds: int) -> Behaviour:
    send_p = rng.uniform(0.05, 1.0) if rng.random() < P_TRANSIENT else 0.0
    recv_p = rng.uniform(0.05, 1.0) if rng.random() < P_TRANSIENT else 0.0
    permanent_from, permanent = None, ""
    if rng.random() < P_PERMANENT:
        permanent_from, permanent = rng.randint(1, rounds), rng.choice((SEND, RECEIVE, BOTH))
    crash_at, keep_p = None, 0.0
    if rng.random() < P_CRASH:
        crash_at, keep_p = rng.randint(1, rounds), rng.random()
    others = [j for j in range(n) if j != me]
    starved_by = tuple(sorted(rng.sample(others, rng.randint(1, n - 1)))) if rng.random() < P_STARVE else ()
    withholds_to = tuple(sorted(rng.sample(others, rng.randint(1, n - 1)))) if rng.random() < P_WITHHOLD else ()
    return Behaviour(send_p, recv_p, permanent_from, permanent, crash_at, keep_p, starved_by, withholds_to)


@dataclass(frozen=True)
class Plan:
    """The faulty hosts and every frame slot they drop: ``(round, sender, receiver)``."""

    faulty: dict[int, Behaviour]
    dropped: frozenset[tuple[int, int, int]]
    withheld_joins: frozenset[tuple[int, int]] = field(default_factory=frozenset)  # (sender, receiver)

    def crash_round(self, i: int) -> int | None:
        b = self.faulty.get(i)
        return None if b is None else b.crash_at


def _drops_send(b: Behaviour, r: int, rng: random.Random) -> bool:
    if b.crash_at == r:
        return rng.random() >= b.crash_keep_p
    if b.permanent_from is not None and r >= b.permanent_from and b.permanent in (SEND, BOTH):
        return True
    return bool(b.send_p) and rng.random() < b.send_p


def _drops_receive(b: Behaviour, r: int, rng: random.Random) -> bool:
    if b.permanent_from is not None and r >= b.permanent_from and b.permanent in (RECEIVE, BOTH):
        return True
    return bool(b.recv_p) and rng.random() < b.recv_p


def draw_plan(rng: random.Random, *, n: int, t: int, rounds: int, faulty_count: int | None = None) -> Plan:
    """At most ``t`` faulty hosts (``faulty_count`` exactly, if given: a test's adversary may exceed ``t``), their
    behaviours, and the frame slots of rounds ``1..rounds`` they drop."""
    if faulty_count is None:
        faulty_count = t if t and rng.random() < P_T_FAULTY else rng.randint(0, t)
    who = sorted(rng.sample(range(n), faulty_count))
    faulty = {i: draw_behaviour(rng, i, n, rounds) for i in who}
    dropped: set[tuple[int, int, int]] = set()
    for r in range(1, rounds + 1):
        for i in range(n):
            bi = faulty.get(i)
            if bi is not None and bi.crash_at is not None and bi.crash_at < r:
                continue  # crashed: it sends nothing more
            for j in range(n):
                if j == i:
                    continue
                bj = faulty.get(j)
                if (bi is not None and _drops_send(bi, r, rng)) or (bj is not None and _drops_receive(bj, r, rng)):
                    dropped.add((r, i, j))
    withheld = frozenset(
        {(j, i) for i, b in faulty.items() for j in b.starved_by}
        | {(i, j) for i, b in faulty.items() for j in b.withholds_to}
    )
    return Plan(faulty, frozenset(dropped), withheld)


# --- the draw ----------------------------------------------------------------------------------------------------


def _draw_value(fn: FunctionSpec, rng: random.Random) -> int:
    """An input value whose encoded size is drawn too (CBOR integers take 1, 2, 3, 5 or 9 bytes), so that two
    vectors drawn from two streams differ in their sizes as well as in their values."""
    if fn is VOTE:
        return rng.randrange(24) if rng.random() < 0.5 else rng.randrange(24, 256)
    bits = rng.choice((4, 8, 16, 32, 63))
    magnitude = rng.randrange(1 << bits)
    if fn in (SUM, MEDIAN) and rng.random() < 0.5:
        return max(INT_MIN, -1 - magnitude)
    return min(INT_MAX, magnitude)


@dataclass(frozen=True)
class Setup:
    """Everything a seed fixes before the two runs: the spec, the adversary's plan, the key stream, the inputs."""

    spec: RunSpec
    fn: FunctionSpec
    plan: Plan
    key_seed: int
    values_a: tuple[int, ...]
    values_b: tuple[int, ...]

    @property
    def n(self) -> int:
        return self.spec.n

    def describe(self) -> list[str]:
        s = self.spec
        lines = [
            f"smc: n={s.n} t={s.terms.t} function={self.fn.name} rho_max={s.rho_max} rounds={s.rounds} "
            f"(UIC {s.uic_rounds} twice + rho_max), frames of {frame_bytes(s.n, s.terms.max_input_bytes)} bytes",
            f"inputs A: {list(self.values_a)}",
            f"inputs B: {list(self.values_b)}",
        ]
        lines += [f"faulty host {i}: {b.describe()}" for i, b in sorted(self.plan.faulty.items())]
        if not self.plan.faulty:
            lines.append("no faulty host")
        return lines


def draw_setup(rng: random.Random, *, extra_faulty: int = 0) -> Setup:
    """The seed's run (from the world's RNG): parameters, members, adversary, then the two input streams.

    ``extra_faulty`` makes that many more hosts faulty than ``t`` allows (a test's adversary, which UIC does not
    tolerate: the checks must then find violations)."""
    n = rng.randint(N_MIN, N_MAX)
    t = 0 if rng.random() < P_NO_FAULTS else rng.randint(1, (n - 1) // 2)
    fn = rng.choice(FUNCTIONS)
    rho_max = rng.randint(0, RHO_MAX_MAX)
    members: list[Uid] = []
    while len(members) < n:
        uid = Uid.card(rng.randbytes(12))
        if uid not in members:
            members.append(uid)
    spec = RunSpec(rng.randbytes(16), tuple(members), REGISTRY.terms(fn.name, n=n, t=t), rho_max)
    count = min(n, t + extra_faulty) if extra_faulty else None
    plan = draw_plan(rng, n=n, t=t, rounds=spec.rounds, faulty_count=count)
    key_seed = rng.getrandbits(64)
    streams = (random.Random(rng.getrandbits(64)), random.Random(rng.getrandbits(64)))
    a, b = (tuple(_draw_value(fn, s) for _ in range(n)) for s in streams)
    return Setup(spec, fn, plan, key_seed, a, b)


# --- one run -------------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One run of the setup with one input vector: the modules, what each host saw, who crashed."""

    label: str
    inputs: list[bytes]
    modules: list[ObservedModuleRun]
    rng: random.Random  # the cards' randomness: keys and rho shares (the same stream in both runs)
    seen: list[list[Seen]]
    inbox: dict[int, dict[int, bytes]] = field(default_factory=dict)  # receiver -> sender -> frame, next tick
    crashed: dict[int, Vector | None] = field(default_factory=dict)  # module -> what it had decided when crashed
    sizes: set[int] = field(default_factory=set)
    dropped: int = 0


def start_run(
    setup: Setup, label: str, values: Sequence[int], module_cls: type[ObservedModuleRun] = ObservedModuleRun
) -> Run:
    """Build the modules, carry the joins the plan lets through, give every ready module its input."""
    spec, n = setup.spec, setup.n
    rng = random.Random(setup.key_seed)
    mods = []
    for i in range(n):
        keys = {j: rng.randbytes(32) for j in range(n) if j != i}
        mods.append(module_cls(spec, i, setup.fn, keys, rng.randbytes(16)))
    for j, m in enumerate(mods):
        for i, other in enumerate(mods):
            if i != j and (i, j) not in setup.plan.withheld_joins:
                m.accept_join(i, other.join_for(j))
    inputs = [setup.fn.encode_input(v) for v in values]
    for m, raw in zip(mods, inputs, strict=True):
        if m.agreed:
            m.give_input(raw)
    return Run(label, inputs, mods, rng, [[] for _ in range(n)])


def step(run: Run, plan: Plan, r: int) -> None:
    """Tick ``r`` of every module still up: complete round ``r - 1`` with what arrived, carry round ``r``'s frames
    the adversary lets through; a module whose host crashes it in this round sends part of its frames, then stops."""
    nxt: dict[int, dict[int, bytes]] = {}
    for i, m in enumerate(run.modules):
        if i in run.crashed:
            continue
        frames = m.tick(r, run.inbox.pop(i, {}))
        seen = run.seen[i]
        seen.append(("tick", r, -1, _STATUS.index(m.status)))
        for j, ct in frames.items():
            size = len(ct)
            seen.append(("send", r, j, size))
            run.sizes.add(size)
            if (r, i, j) in plan.dropped:
                run.dropped += 1
            else:
                nxt.setdefault(j, {})[i] = ct
        if plan.crash_round(i) == r:
            run.crashed[i] = m.vector
            m.stop()
    for j, got in nxt.items():
        if j in run.crashed:
            continue  # its host crashed it out: nothing more reaches the module
        seen = run.seen[j]
        for i, ct in got.items():
            seen.append(("recv", r, i, len(ct)))
    run.inbox = nxt


# --- the invariants -------------------------------------------------------------------------------------------


def _short(v: bytes | None) -> str:
    return "None" if v is None else v.hex()


def check_run(run: Run, setup: Setup, *, final: bool) -> list[str]:
    """UIC and SMC properties of one run (termination only when ``final``)."""
    bad: list[str] = []
    plan, fn, spec = setup.plan, setup.fn, setup.spec
    tag = f"run {run.label}"
    deciders: dict[int, Vector] = {i: v for i, v in run.crashed.items() if v is not None}
    for i, m in enumerate(run.modules):
        v = m.vector
        if i not in run.crashed and v is not None:
            deciders[i] = v
    for i, vec in sorted(deciders.items()):
        for k, entry in enumerate(vec):
            if entry is None and k not in plan.faulty:
                bad.append(f"{tag}: module {i} decided None for correct module {k}'s input (UIC validity)")
            elif entry is not None and entry != run.inputs[k]:
                bad.append(
                    f"{tag}: module {i} decided {_short(entry)} for module {k}, whose input is "
                    f"{_short(run.inputs[k])} (UIC validity)"
                )
    if len(set(deciders.values())) > 1:
        (a, va), *rest = sorted(deciders.items())
        b, vb = next((b, vb) for b, vb in rest if vb != va)
        bad.append(
            f"{tag}: modules {a} and {b} decided different vectors {[_short(x) for x in va]} and "
            f"{[_short(x) for x in vb]} (UIC uniform agreement)"
        )
    results: dict[int, bytes] = {}
    for i, m in enumerate(run.modules):
        if m.result is None:
            continue
        results[i] = m.result
        mine = deciders.get(i)
        if mine is None:
            bad.append(f"{tag}: module {i} has a result but decided no vector (SMC validity)")
        elif m.result != fn.evaluate(mine):
            bad.append(f"{tag}: module {i}'s result {m.result.hex()} is not F(D) = {fn.evaluate(mine).hex()}")
    if len(set(results.values())) > 1:
        bad.append(f"{tag}: modules got different results {sorted(results.items())} (SMC agreement)")
    if final:
        for i, m in enumerate(run.modules):
            if i in plan.faulty:
                continue
            if m.status != DECIDED or m.result is None:
                bad.append(f"{tag}: correct module {i} ended {m.status} without a result (UIC termination)")
            if m.ticks != spec.rounds + 1:
                bad.append(f"{tag}: correct module {i} ran {m.ticks} of {spec.rounds + 1} ticks")
        size = frame_bytes(spec.n, spec.terms.max_input_bytes)
        if run.sizes - {size}:
            bad.append(f"{tag}: frames of {sorted(run.sizes)} bytes: every frame has {size} (a size that tells)")
    return bad


def _seen_text(s: Seen) -> str:
    kind, r, peer, what = s
    if kind == "tick":
        return f"its module {_STATUS[what]} after tick {r}"
    return f"{kind} round {r} {'to' if kind == 'send' else 'from'} module {peer}, {what} bytes"


def compare_runs(a: Run, b: Run) -> list[str]:
    """What crosses each host, and how many ticks each module runs, must not depend on the inputs."""
    bad = []
    for i, (ma, mb) in enumerate(zip(a.modules, b.modules, strict=True)):
        if ma.ticks != mb.ticks:
            bad.append(f"module {i} ran {ma.ticks} ticks with inputs A but {mb.ticks} with inputs B")
    differ = [i for i, (sa, sb) in enumerate(zip(a.seen, b.seen, strict=True)) if sa != sb]
    if differ:
        i = differ[0]
        sa, sb = a.seen[i], b.seen[i]
        k = next((k for k, (x, y) in enumerate(zip(sa, sb, strict=False)) if x != y), min(len(sa), len(sb)))
        got_a = _seen_text(sa[k]) if k < len(sa) else "nothing more"
        got_b = _seen_text(sb[k]) if k < len(sb) else "nothing more"
        others = f" (so do hosts {', '.join(map(str, differ[1:]))})" if len(differ) > 1 else ""
        bad.append(
            f"host {i} sees {got_a} with inputs A but {got_b} with inputs B (observation #{k + 1}): what crosses a "
            f"host depends on the inputs{others}"
        )
    return bad


# --- the scenario --------------------------------------------------------------------------------------------------


@dataclass
class SmcScenario:
    """Two runs of one drawn setup, in lockstep rounds on the world's clock (see the module docstring)."""

    name: str = "smc"
    module_cls: type[ObservedModuleRun] = ObservedModuleRun
    extra_faulty: int = 0  # more faulty hosts than t (tests only: see draw_setup)
    setup: Setup | None = None
    runs: tuple[Run, ...] = ()
    ticks: int = 0
    bad: list[str] = field(default_factory=list)
    final_bad: list[str] | None = None

    def build(self, world: World) -> None:
        world.faults_from = math.inf  # the world's own faults stay off: this scenario's adversary is the plan
        setup = self.setup = draw_setup(world.rng, extra_faulty=self.extra_faulty)
        for line in setup.describe() if world.trace is not None else ():
            world.log(line)
        world.at(START_S, functools.partial(self._start, world), "joins")
        for r in range(1, setup.spec.rounds + 2):
            world.at(START_S + r * ROUND_S, functools.partial(self._round, world, r), "round")

    def _start(self, world: World) -> None:
        setup = self.setup
        assert setup is not None
        self.runs = (
            start_run(setup, "A", setup.values_a, self.module_cls),
            start_run(setup, "B", setup.values_b, self.module_cls),
        )
        m0 = self.runs[0].modules
        ready = [m for m in m0 if m.ready]
        agreed = [m for m in m0 if m.agreed]
        if world.trace is not None:
            world.log(f"joins: {len(ready)} of {setup.n} modules have every join, {len(agreed)} at least n - t")

    def _round(self, world: World, r: int) -> None:
        setup = self.setup
        assert setup is not None
        for run in self.runs:
            step(run, setup.plan, r)
            self.bad.extend(check_run(run, setup, final=False))
        self.ticks = r
        if world.trace is not None:
            world.log(self._round_text(r))

    def _round_text(self, r: int) -> str:
        setup = self.setup
        assert setup is not None
        gone = sorted((i, j) for (q, i, j) in setup.plan.dropped if q == r)
        crashed = [i for i in setup.plan.faulty if setup.plan.crash_round(i) == r]
        m = self.runs[0].modules
        text = f"tick {r}: statuses {''.join(x.status[0] for x in m)}"
        if gone:
            text += f"; dropped {' '.join(f'{i}->{j}' for i, j in gone)}"
        if crashed:
            text += f"; host(s) {', '.join(map(str, crashed))} crash their modules"
        return text

    def check(self, world: World, final: bool) -> list[str]:
        if not final or self.setup is None or len(self.runs) != 2:
            return list(self.bad)
        if self.final_bad is None:
            a, b = self.runs
            self.final_bad = [
                *check_run(a, self.setup, final=True),
                *check_run(b, self.setup, final=True),
                *compare_runs(a, b),
            ]
            self._count(world)
            if world.trace is not None:
                self._log_end(world)
        return [*self.bad, *self.final_bad]

    def quiescent(self, world: World) -> bool:
        return self.setup is not None and self.ticks == self.setup.spec.rounds + 1

    def _count(self, world: World) -> None:
        setup = self.setup
        assert setup is not None
        run = self.runs[0]
        ex = world.exercised
        ex[f"n{setup.n}"] += 1
        ex[f"t{setup.spec.terms.t}"] += 1
        ex[f"fn_{setup.fn.name}"] += 1
        world.faults["drop"] += run.dropped
        world.faults["crash"] += len(run.crashed)
        for i in setup.plan.faulty:
            m = run.modules[i]
            if i in run.crashed:
                ex["crashed_after_deciding" if run.crashed[i] is not None else "crashed"] += 1
            elif m.status == DECIDED:
                ex["faulty_decided"] += 1
            elif m.status == HALTED:
                ex["faulty_halted"] += 1
            elif m.status == OUT:
                ex["faulty_out"] += 1  # too few joins to take its input
        ex["correct_without_every_join"] += sum(
            not m.ready for i, m in enumerate(run.modules) if i not in setup.plan.faulty
        )
        vectors = [m.vector for m in run.modules if m.vector is not None]
        if vectors:
            kept = sum(vectors[0][i] is not None for i in setup.plan.faulty)
            ex["faulty_input_kept"] += kept
            ex["faulty_input_missing"] += len(setup.plan.faulty) - kept

    def _log_end(self, world: World) -> None:
        setup = self.setup
        assert setup is not None
        for run in self.runs:
            for i, m in enumerate(run.modules):
                who = "faulty" if i in setup.plan.faulty else "correct"
                if i in run.crashed:
                    what = f"crashed ({'after deciding' if run.crashed[i] is not None else 'undecided'})"
                else:
                    what = m.status
                result = ""
                if m.result is not None:
                    try:
                        result = f": {setup.fn.render(m.result)}"
                    except ProtocolError:
                        result = f": {m.result.hex()}"
                world.log(f"end {run.label}: {who} module {i} {what}{result}")
        s = setup.spec
        faulty = sorted(setup.plan.faulty)
        rhos = sorted({m.rho for m in self.runs[0].modules if m.rho is not None})
        world.log(f"setup: n={s.n} t={s.terms.t} {setup.fn.name} rho_max={s.rho_max}, faulty hosts {faulty}")
        world.log(f"hidden rho (as the modules that went past the first UIC computed it): {rhos}")


register("smc", SmcScenario)
register("smc-broken", lambda: SmcScenario(name="smc-broken", module_cls=UnpaddedModuleRun))
