"""The deterministic simulator: same seed, same trace; faults of every kind; the broken echo is caught.

``run_many('echo', range(300))`` takes a few seconds; the CLI runs are
subprocesses (``python -m cardnet.cli.main``), so they test what a person
types.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from cardnet import __file__ as cardnet_init
from cardnet.applets.echo import EchoApplet
from cardnet.host import mtypes as hm
from cardnet.protocols import echo
from cardnet.sim.faults import FAULT_KINDS, FaultPlan
from cardnet.sim.runner import run_many, run_seed
from cardnet.sim.scenarios import EchoScenario, register
from cardnet.sim.world import World, plan_for
from cardnet.wire import Message

SEEDS = [0, 1, 2, 3, 7, 42, 1234]


def cardnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", *args], capture_output=True, text=True, timeout=300, check=False
    )


# --------------------------------------------------------------------------- determinism


def test_the_same_seed_gives_the_same_trace() -> None:
    traces = []
    for seed in SEEDS:
        first, again = run_seed("echo", seed), run_seed("echo", seed)
        assert first.trace and first.trace == again.trace, f"seed {seed} is not deterministic"
        assert first.faults == again.faults and first.sim_time_s == again.sim_time_s
        assert first.violations == again.violations == []
        traces.append(tuple(first.trace))
    assert len(set(traces)) == len(SEEDS)  # and different seeds are different runs


def test_a_replay_in_another_process_gives_the_same_trace() -> None:
    seed = SEEDS[-1]
    local = run_seed("echo", seed)
    result = cardnet("sim", "--protocol", "echo", "--seed", str(seed), "--json")
    assert result.returncode == 0, result.stderr
    replay = json.loads(result.stdout)
    assert replay["seed"] == seed and replay["violations"] == []
    assert replay["trace"] == local.trace
    assert replay["faults"] == dict(local.faults)


def _build(seed: int) -> str:
    world = World(seed, plan_for(seed))
    EchoScenario().build(world)
    cards = [world.card_of(d) for sh in world.hosts.values() for d in sh.cards]
    return ";".join(f"{c.uid}={c.certificate_der.hex()}" for c in cards)


WORLD_PROBE = "from test_sim import _build; print(_build({seed}))"


def test_the_same_seed_builds_the_same_cards_byte_for_byte() -> None:
    """Keys, domains and certificates come from the seed, so protocols that carry certificates replay too."""
    built = _build(11)
    assert built == _build(11) and built != _build(12)
    tests_unit = str(Path(__file__).parent)
    src = str(Path(cardnet_init).parents[1])  # the cardnet under test, not whichever one is installed
    probe = subprocess.run(
        [sys.executable, "-c", WORLD_PROBE.format(seed=11)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tests_unit,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([src, tests_unit, str(Path(tests_unit).parent)])},
    )
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == built  # in another process too


def test_tracing_does_not_change_the_run() -> None:
    for seed in SEEDS[:3]:
        traced, quiet = run_seed("echo", seed, trace=True), run_seed("echo", seed, trace=False)
        assert quiet.trace is None and traced.trace
        assert (quiet.faults, quiet.violations, quiet.sim_time_s) == (
            traced.faults,
            traced.violations,
            traced.sim_time_s,
        )


def test_each_seed_draws_its_own_fault_plan() -> None:
    plans = [plan_for(seed) for seed in range(200)]
    assert plan_for(5) == plan_for(5)
    assert len(set(plans)) == len(plans)
    calm = sum(1 for p in plans if p.drop_p == 0.0)
    assert 0 < calm < len(plans)  # swarm testing: each fault is on in some seeds and off in others
    for kind in ("drop_p", "dup_p", "delay_max_s", "partition_p", "tear_p", "crash_p"):
        assert any(getattr(p, kind) == 0.0 for p in plans) and any(getattr(p, kind) > 0.0 for p in plans), kind
    assert plan_for(5, calm=True) == FaultPlan(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


# --------------------------------------------------------------------------- the echo scenario


def test_echo_holds_its_invariant_under_every_kind_of_fault() -> None:
    summary = run_many("echo", range(300))
    assert summary.runs == 300
    assert summary.violations == 0 and summary.failing_seeds == [] and summary.first_failure is None
    missing = [kind for kind in FAULT_KINDS if summary.faults_injected[kind] == 0]
    assert missing == [], f"never injected: {missing}"
    d = summary.as_dict()
    assert set(d["faults_injected"]) == set(FAULT_KINDS)
    assert isinstance(d["seeds_per_s"], float) and d["seeds_per_s"] > 0


def test_the_broken_echo_is_caught_with_a_trace_ending_in_the_violation() -> None:
    summary = run_many("echo-broken", range(1000), stop_at_first=True)
    assert summary.violations == 1 and len(summary.failing_seeds) == 1
    [seed] = summary.failing_seeds
    assert summary.runs == seed + 1  # it stopped at the first failure
    failure = summary.first_failure
    assert failure is not None and failure.seed == seed
    assert failure.trace is not None and "VIOLATION" in failure.trace[-1]
    assert any("processed 2 times" in v for v in failure.violations)
    assert run_seed("echo", seed).violations == []  # the same seed, the same faults: the correct applet passes
    assert run_seed("echo-broken", seed).trace == failure.trace  # and the failure replays


def test_worker_processes_give_the_same_summary_as_one_process() -> None:
    """Seeds are independent: --jobs changes the time taken, never the outcome."""
    for protocol in ("echo", "echo-broken"):
        serial = run_many(protocol, range(10, 70))
        parallel = run_many(protocol, range(10, 70), jobs=2)
        assert parallel.runs == serial.runs == 60
        assert parallel.faults_injected == serial.faults_injected
        assert parallel.failing_seeds == serial.failing_seeds
        assert parallel.violations == serial.violations
        assert (serial.violations > 0) == (protocol == "echo-broken")  # a failing run is compared too
        if serial.first_failure is not None:
            assert parallel.first_failure is not None
            assert parallel.first_failure.trace == serial.first_failure.trace


def test_the_echo_invariant_is_checked_against_the_cards_themselves() -> None:
    """A scenario's check reads the servers' state: corrupting it is a violation at once."""
    scenario = EchoScenario()
    world = World(0, plan_for(0, calm=True), trace=True)
    scenario.build(world)
    assert scenario.check(world, False) == []
    world.run(safety_s=2.0, heal_s=30.0, check=scenario.check, quiescent=scenario.quiescent)
    assert world.violations == [] and scenario.quiescent(world)
    assert scenario.check(world, True) == []
    cards = [world.card_of(domain) for domain in scenario.servers]
    processed = [(card, tk) for card in cards for tk in card._mem if tk[0] == "a.echo" and tk[1].startswith(b"rid:")]
    assert len(processed) == scenario.requests_per_client * len(scenario.clients)  # every request, once
    card, key = processed[0]
    card._mem[key] = (2).to_bytes(8, "big")  # as if a duplicate had been processed again
    assert any("processed 2 times" in v for v in scenario.check(world, True))


# --------------------------------------------------------------------------- registering a scenario


@dataclass
class StuckScenario:
    """One host and card, and a condition that never holds: a liveness violation after healing."""

    name: str = "test-stuck"

    def build(self, world: World) -> None:
        world.add_card(world.add_host("h0"), "card0", lambda: [EchoApplet()])

    def check(self, world: World, final: bool) -> list[str]:
        return []

    def quiescent(self, world: World) -> bool:
        return False


register("test-stuck", StuckScenario)


def test_a_registered_scenario_runs_and_liveness_is_checked() -> None:
    result = run_seed("test-stuck", 0)
    assert result.violations == ["not quiescent 30.0 s after healing (liveness)"]
    assert result.trace is not None and any("heal: faults off" in line for line in result.trace)
    with pytest.raises(ValueError, match="already registered"):
        register("test-stuck", StuckScenario)


def test_an_unknown_protocol_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown protocol 'nope': choose one of .*echo, echo-broken"):
        run_seed("nope", 0)
    result = cardnet("sim", "--protocol", "nope", "--seeds", "1")
    assert result.returncode == 2
    assert "unknown protocol 'nope'" in result.stderr and "echo-broken" in result.stderr
    assert "Traceback" not in result.stderr


# --------------------------------------------------------------------------- the command


def test_cardnet_sim_json() -> None:
    result = cardnet("sim", "--protocol", "echo", "--seeds", "50", "--json")
    assert result.returncode == 0, result.stderr
    d = json.loads(result.stdout)
    assert d["protocol"] == "echo" and d["runs"] == 50 and d["violations"] == 0
    assert d["failing_seeds"] == []
    assert set(d["faults_injected"]) == set(FAULT_KINDS) and sum(d["faults_injected"].values()) > 0
    assert isinstance(d["seeds_per_s"], float) and d["seeds_per_s"] > 0


def test_cardnet_sim_catches_the_broken_echo_and_says_how_to_reproduce() -> None:
    result = cardnet("sim", "--protocol", "echo-broken", "--seeds", "1000")
    assert result.returncode == 1, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if "reproduce with" in x)
    command = line.split("reproduce with:", 1)[1].split()
    assert command[:4] == ["cardnet", "sim", "--protocol", "echo-broken"] and command[4] == "--seed"
    replay = cardnet(*command[1:])
    assert replay.returncode == 1
    assert "VIOLATION" in replay.stdout and "VIOLATED" in replay.stdout


def test_cardnet_sim_list() -> None:
    result = cardnet("sim", "--list")
    assert result.returncode == 0 and {"echo", "echo-broken"} <= set(result.stdout.split())


# --------------------------------------------------------------------------- what a tear is called


def test_an_order_to_a_torn_card_is_answered_as_a_simulated_power_loss_not_a_full_disk() -> None:
    """A tear is the simulator cutting a card's power at a commit: the host's notice to the application whose order
    the torn step carried says so, with no advice to free space on a disk that is not to blame (a real full disk
    keeps that advice: tests/integration/test_host_store_failure.py)."""
    plan = FaultPlan(0.0, 0.0, 0.0, 0.0, 0.0, tear_p=1.0, crash_p=0.0)  # every commit tears
    world = World(0, plan, trace=True)
    sh = world.add_host("h0")
    card = world.add_card(sh, "card0", lambda: [EchoApplet()])
    got: list[Message] = []
    app = world.attach_app(sh, got.append)
    world.at(0.1, lambda: world.submit("h0", echo.REQUEST.make(app, card.uid, rid=1, body=b"hi")), "order")
    world.run(safety_s=0.5, heal_s=1.0, check=lambda w, final: [], quiescent=lambda w: bool(got))
    notices = [hm.UNDELIVERABLE.parse(m) for m in got if m.mtype == hm.UNDELIVERABLE.code]
    assert world.faults["tear"] >= 1 and notices, (world.faults, got)
    reason = notices[0]["reason"]
    assert "cannot write its store" in reason and "simulated power loss" in reason, reason
    assert "disk" not in reason and "free space" not in reason, reason
