"""A module's SMC run (joins, fake rounds, UIC, padded tail, F) driven in lockstep in one process.

Each test builds ``n`` :class:`ModuleRun` objects from one spec, hands every join to its addressee (or not),
gives the inputs, and ticks all modules round by round, carrying every frame that the test's adversary does not
drop. What crosses a host is recorded, so the tests can compare the wire of two runs.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.smc.functions import AUCTION2, MEDIAN, REGISTRY
from cardnet.protocols.smc.registry import FunctionSpec
from cardnet.protocols.smc.run import (
    DECIDED,
    HALTED,
    OUT,
    Join,
    ModuleRun,
    RunSpec,
    frame_bytes,
    join_wait_s,
)
from cardnet.wire import Uid

Drop = Callable[[int, int, int], bool]  # (round, sender, receiver) -> dropped?


def members(n: int) -> tuple[Uid, ...]:
    return tuple(Uid.card(bytes([0x10 + i]) * 12) for i in range(n))


def spec_for(fn: FunctionSpec, n: int, t: int, *, rho_max: int = 3, run: bytes | None = None) -> RunSpec:
    terms = REGISTRY.terms(fn.name, n=n, t=t)
    return RunSpec(run or os.urandom(16), members(n), terms, rho_max)


@dataclass
class Net:
    modules: list[ModuleRun]
    wire: list[tuple[int, int, int, int]] = field(default_factory=list)  # (round, sender, receiver, bytes)


def build(spec: RunSpec, fn: FunctionSpec, rng: random.Random, *, specs: Sequence[RunSpec] | None = None) -> Net:
    mods = []
    for i in range(spec.n):
        mine = spec if specs is None else specs[i]
        keys = {j: rng.randbytes(32) for j in range(spec.n) if j != i}
        mods.append(ModuleRun(mine, i, fn, keys, rng.randbytes(16)))
    return Net(mods)


def join_all(net: Net, lost: Callable[[int, int], bool] = lambda i, j: False) -> None:
    for i, m in enumerate(net.modules):
        for j, other in enumerate(net.modules):
            if i != j and not lost(i, j):
                other.accept_join(i, Join.decode(m.join_for(j).encode()))


def run_rounds(
    net: Net, rng: random.Random, drop: Drop = lambda r, i, j: False, crash: dict[int, int] | None = None
) -> None:
    crash = crash or {}
    n = len(net.modules)
    total = net.modules[0].spec.rounds
    inbox: dict[int, dict[int, bytes]] = {i: {} for i in range(n)}
    for r in range(1, total + 2):
        nxt: dict[int, dict[int, bytes]] = {i: {} for i in range(n)}
        for i, m in enumerate(net.modules):
            if crash.get(i) == r:
                m.stop()
            if m.status == OUT and crash.get(i, total + 9) <= r:
                continue  # a crashed module's host sends nothing more
            frames = m.tick(r, inbox[i])
            for j, ct in frames.items():
                net.wire.append((r, i, j, len(ct)))
                if not drop(r, i, j):
                    nxt[j][i] = ct
        inbox = nxt


def inputs_for(fn: FunctionSpec, values: Sequence[object]) -> list[bytes]:
    return [fn.encode_input(v) for v in values]


def prepared(rng: random.Random, fn: FunctionSpec, values: Sequence[object], t: int, **kw: int) -> Net:
    """Modules of a fresh run that all joined and took their inputs, before the first tick."""
    spec = spec_for(fn, len(values), t, run=rng.randbytes(16), **kw)
    net = build(spec, fn, rng)
    join_all(net)
    for m, raw in zip(net.modules, inputs_for(fn, values), strict=True):
        m.give_input(raw)
    return net


def run(
    fn: FunctionSpec, values: Sequence[object], t: int, *, seed: int = 0, drop: Drop = lambda r, i, j: False, **kw: int
) -> Net:
    rng = random.Random(seed)
    net = prepared(rng, fn, values, t, **kw)
    run_rounds(net, rng, drop)
    return net


def test_five_modules_compute_the_median_and_agree() -> None:
    net = run(MEDIAN, [7, 3, 9, 1, 5], t=2)
    assert {m.status for m in net.modules} == {DECIDED}
    results = {m.result for m in net.modules}
    assert len(results) == 1
    (result,) = results
    assert result is not None and MEDIAN.to_json(result)["median"] == 5


def test_the_adversary_drops_every_message_of_two_hosts_and_the_rest_still_agree() -> None:
    faulty = {1, 3}
    values = [10, 20, 30, 40, 50]
    net = run(AUCTION2, values, t=2, seed=3, drop=lambda r, i, j: i in faulty or j in faulty)
    correct = [m for i, m in enumerate(net.modules) if i not in faulty]
    assert all(m.status == DECIDED for m in correct)
    assert all(net.modules[i].status == HALTED for i in faulty)  # cut off, they find out and stay silent
    (result,) = {m.result for m in correct}
    assert result is not None
    got = AUCTION2.to_json(result)
    # bids of the cut-off hosts (20 and 40) never arrived: the highest bid left is 50, the second 30
    assert got["winner"] == 4 and got["price"] == 30, got


@pytest.mark.parametrize("seed", range(40))
def test_random_omissions_by_t_hosts_never_break_agreement(seed: int) -> None:
    rng = random.Random(1000 + seed)
    n = rng.randint(3, 7)
    t = (n - 1) // 2
    faulty = set(rng.sample(range(n), t))
    p = rng.choice([0.1, 0.3, 0.6, 1.0])

    def drop(r: int, i: int, j: int) -> bool:
        return (i in faulty or j in faulty) and rng.random() < p

    net = run(MEDIAN, [rng.randint(-50, 50) for _ in range(n)], t, seed=seed, drop=drop)
    deciders = [m for m in net.modules if m.status == DECIDED]
    assert all(net.modules[i].status == DECIDED for i in set(range(n)) - faulty)
    assert len({m.result for m in deciders}) == 1


def test_the_wire_has_the_same_shape_whatever_the_inputs() -> None:
    """Two runs with different inputs (and a different hidden rho) send the same frames of the same sizes."""
    a = run(MEDIAN, [1, 2, 3, 4, 5], t=2, seed=1)
    b = run(MEDIAN, [-9_000_000_000, 0, 77, 5, 123456789], t=2, seed=2)
    assert a.wire == b.wire
    size = frame_bytes(5, MEDIAN.max_input_bytes)
    assert {s for *_, s in a.wire} == {size}
    assert len(a.wire) == a.modules[0].spec.rounds * 5 * 4


def test_rho_is_hidden_and_varies_but_the_round_count_does_not() -> None:
    rhos = set()
    for seed in range(30):
        net = run(MEDIAN, [1, 2, 3], t=1, seed=seed, rho_max=4)
        rhos.add(net.modules[0].rho)
        assert {m.rho for m in net.modules} == {net.modules[0].rho}  # every module computed the same rho
        assert net.modules[0].spec.rounds == 4 + 2 * 2
    assert len(rhos) >= 4


def test_frames_replayed_from_another_round_or_run_count_as_omissions() -> None:
    rng = random.Random(5)
    net = prepared(rng, MEDIAN, [4, 5, 6], 1, rho_max=0)
    first = {i: m.tick(1) for i, m in enumerate(net.modules)}
    # round 2 completes round 1: module 0 gets module 1's round-1 frame twice relabelled, and module 2's frame
    # to module 1 (another direction): neither opens, so module 0 hears only from itself and halts (quorum 2)
    arrived = {1: first[2][1], 2: first[1][2]}
    net.modules[0].tick(2, arrived)
    assert net.modules[0].status == HALTED


def test_a_join_with_other_terms_is_refused_before_any_input() -> None:
    rng = random.Random(7)
    spec = spec_for(MEDIAN, 3, 1, run=rng.randbytes(16))
    other = RunSpec(spec.run, spec.members, spec.terms, spec.rho_max + 1)
    net = build(spec, MEDIAN, rng, specs=[spec, spec, other])
    with pytest.raises(ProtocolError) as e:
        net.modules[0].accept_join(2, net.modules[2].join_for(0))
    assert e.value.reason == "terms_differ"
    with pytest.raises(ProtocolError) as e2:
        net.modules[0].give_input(MEDIAN.encode_input(3))
    assert e2.value.reason == "not_agreed"


def test_a_second_different_join_is_refused_and_a_resent_one_is_fine() -> None:
    rng = random.Random(8)
    spec = spec_for(MEDIAN, 3, 1, run=rng.randbytes(16))
    net = build(spec, MEDIAN, rng)
    j = net.modules[1].join_for(0)
    net.modules[0].accept_join(1, j)
    net.modules[0].accept_join(1, j)
    with pytest.raises(ProtocolError) as e:
        net.modules[0].accept_join(1, Join(j.run, j.spec, rng.randbytes(32), j.contrib))
    assert e.value.reason == "join_changed"


def test_a_join_withheld_by_a_faulty_host_holds_no_correct_module_back() -> None:
    """Host 0 withholds its module's join to module 4: module 4 cannot open module 0's frames (module 0 is faulty
    to it) but takes its input with n - 1 joins and decides with the others, the same vector."""
    rng = random.Random(9)
    spec = spec_for(MEDIAN, 5, 2, run=rng.randbytes(16))
    net = build(spec, MEDIAN, rng)
    join_all(net, lost=lambda i, j: i == 0 and j == 4)
    assert not net.modules[4].ready and net.modules[4].agreed
    for m, raw in zip(net.modules, inputs_for(MEDIAN, [1, 2, 3, 4, 5]), strict=True):
        m.give_input(raw)
    run_rounds(net, rng)
    assert {m.status for m in net.modules} == {DECIDED}
    assert len({m.vector for m in net.modules}) == 1 and len({m.result for m in net.modules}) == 1


def test_a_module_with_fewer_than_n_minus_t_joins_takes_no_input_and_no_part() -> None:
    rng = random.Random(10)
    spec = spec_for(MEDIAN, 5, 2, run=rng.randbytes(16))
    net = build(spec, MEDIAN, rng)
    join_all(net, lost=lambda i, j: j == 4 and i in (0, 1, 2))  # module 4 hears only module 3
    for i, (m, raw) in enumerate(zip(net.modules, inputs_for(MEDIAN, [1, 2, 3, 4, 5]), strict=True)):
        if i == 4:
            with pytest.raises(ProtocolError) as e:
                m.give_input(raw)
            assert e.value.reason == "not_agreed"
        else:
            m.give_input(raw)
    run_rounds(net, rng)
    assert net.modules[4].status == OUT and net.modules[4].result is None
    results = {m.result for m in net.modules[:4]}
    assert {m.status for m in net.modules[:4]} == {DECIDED} and len(results) == 1
    (result,) = results
    assert result is not None and MEDIAN.to_json(result)["missing"] == [4]


def test_hosts_see_running_until_the_last_tick_whatever_happened_inside() -> None:
    """A module that decided (or halted) before the padded tail still shows "running": the host cannot learn
    where the real rounds ended, hence rho."""
    rng = random.Random(21)
    net = prepared(rng, MEDIAN, [4, 5, 6], 1, rho_max=4)
    spec = net.modules[0].spec
    seen: list[str] = []
    inbox: dict[int, dict[int, bytes]] = {i: {} for i in range(3)}
    for r in range(1, spec.rounds + 2):
        nxt: dict[int, dict[int, bytes]] = {i: {} for i in range(3)}
        for i, m in enumerate(net.modules):
            for j, ct in m.tick(r, inbox[i]).items():
                nxt[j][i] = ct
            if i == 0:
                seen.append(m.public_status)
        inbox = nxt
    assert seen == ["running"] * spec.rounds + ["decided"]


def test_a_module_crashed_out_mid_run_never_decides_and_the_rest_agree() -> None:
    rng = random.Random(11)
    net = prepared(rng, MEDIAN, [5, 4, 3, 2, 1], 2, rho_max=1)
    run_rounds(net, rng, crash={0: 2, 1: 3})
    assert net.modules[0].result is None and net.modules[1].result is None
    assert {m.status for m in net.modules[2:]} == {DECIDED}
    assert len({m.result for m in net.modules[2:]}) == 1


def test_ticks_run_in_order_only() -> None:
    net = run(MEDIAN, [1, 2, 3], t=1, seed=12)
    m = net.modules[0]
    with pytest.raises(ProtocolError) as e:
        m.tick(m.ticks + 1)  # the run is over
    assert e.value.reason == "wrong_round"


def test_frames_offered_as_they_arrive_even_a_round_early_count() -> None:
    """Hosts hand frames to their module as they arrive: a member whose clock runs ahead sends round r's frame
    before the receiver ticked r; the receiver keeps it for round r."""
    rng = random.Random(13)
    for rho_max in (0, 2):
        net = prepared(rng, MEDIAN, [9, 8, 7, 6, 5], 2, rho_max=rho_max)
        spec = net.modules[0].spec
        kept = 0
        for r in range(1, spec.rounds + 2):
            for i, m in enumerate(net.modules):  # module i ticks r while modules > i are still at r - 1
                for j, ct in m.tick(r).items():
                    kept += net.modules[j].offer(r, i, ct)
        assert kept == spec.rounds * 5 * 4  # every frame was authentic and in time
        assert {m.status for m in net.modules} == {DECIDED}
        (result,) = {m.result for m in net.modules}
        assert result is not None and MEDIAN.to_json(result)["median"] == 7


def test_a_join_waits_for_the_others_until_the_deadline_itself_and_is_too_late_from_it_on() -> None:
    """The join deadline is the first round (``start_at``), to the instant: a party joining a moment before it
    still waits for the others' joins until then (not until a round earlier, which cut a member joining within the
    last round off: its host stopped waiting and gave no input), and one joining at it or later is ``too_late``."""
    start_at, round_s = 1_000.0, 0.5
    assert join_wait_s(start_at - 30, start_at) == 30
    assert join_wait_s(start_at - round_s / 10, start_at) == pytest.approx(round_s / 10)
    assert join_wait_s(start_at - 1e-6, start_at) > 0
    for late in (start_at, start_at + 1e-6, start_at + round_s * 3):  # (the rounds still run: too late anyway)
        with pytest.raises(ProtocolError) as e:
            join_wait_s(late, start_at)
        assert e.value.reason == "too_late" and "before the first round" in str(e.value)


def test_a_join_that_reaches_a_module_before_its_first_tick_takes_part_and_one_after_it_does_not() -> None:
    """What the deadline guards, at the module: member 2's join reaches member 0 just before 0's first tick (it
    counts: 0 opens 2's frames, and 2's input is in every result) while one reaching it after that tick would not."""
    rng = random.Random(31)
    spec = spec_for(MEDIAN, 3, 1, run=rng.randbytes(16))
    net = build(spec, MEDIAN, rng)
    join_all(net, lost=lambda i, j: i == 2 and j == 0)  # 2's join to 0 is still on its way
    assert not net.modules[0].ready and net.modules[0].agreed
    net.modules[0].accept_join(2, Join.decode(net.modules[2].join_for(0).encode()))  # it arrives: before the tick
    assert net.modules[0].ready
    for m, raw in zip(net.modules, inputs_for(MEDIAN, [1, 2, 3]), strict=True):
        m.give_input(raw)
    run_rounds(net, rng)
    assert {m.status for m in net.modules} == {DECIDED}
    (result,) = {m.result for m in net.modules}
    assert result is not None and MEDIAN.to_json(result)["missing"] == []

    late = build(spec_for(MEDIAN, 3, 1, run=rng.randbytes(16)), MEDIAN, rng)
    join_all(late, lost=lambda i, j: i == 2 and j == 0)
    for m, raw in zip(late.modules, inputs_for(MEDIAN, [1, 2, 3]), strict=True):
        m.give_input(raw)
    late.modules[0].tick(1)  # 0's first round began
    late.modules[0].accept_join(2, Join.decode(late.modules[2].join_for(0).encode()))
    assert 2 not in late.modules[0].joined  # too late to count: 2's frames never open at 0


def test_a_member_whose_join_never_came_is_not_waited_for_round_by_round() -> None:
    """Carol's host is down (docs/smc-walkthrough.md section 6): alice's and bob's modules join each other only.
    Driven as the applet drives them, by frames alone (a round ends once its frames are in, no deadline tick after
    the first), they go through every round and decide: a member whose join never came sends no frame that could
    open, so a round does not wait for it. Before, every round waited for its deadline, and one frame a loaded host
    sent later than a round (100 ms by default) halted both modules, with no slack left."""
    rng = random.Random(41)
    spec = spec_for(AUCTION2, 3, 1, run=rng.randbytes(16))
    net = build(spec, AUCTION2, rng)
    join_all(net, lost=lambda i, j: 2 in (i, j))  # (carol's module never joined)
    alice, bob = net.modules[:2]
    assert alice.agreed and bob.agreed and not alice.ready
    for m, raw in zip((alice, bob), inputs_for(AUCTION2, [120, 95]), strict=True):
        m.give_input(raw)
    mods = {0: alice, 1: bob}
    wire = [(i, j, 1, ct) for i, m in mods.items() for j, ct in m.tick(1).items()]  # (the Clock's first tick only)
    while wire:
        src, dst, r, ct = wire.pop(0)
        if dst not in mods:
            continue  # (to carol's module: her host is down)
        m = mods[dst]
        assert m.offer(r, src, ct)
        while m.round_full:  # (what the applet does when a frame completes a round)
            nxt = m.ticks + 1
            wire += [(dst, j, nxt, c) for j, c in m.tick(nxt).items()]
    assert alice.finished and bob.finished
    assert {alice.status, bob.status} == {DECIDED}
    (result,) = {alice.result, bob.result}
    assert result is not None and AUCTION2.to_json(result)["missing"] == [2], AUCTION2.to_json(result)
