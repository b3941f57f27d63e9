"""Malicious hosts in the simulator: they really misbehave, runs stay deterministic, the cards stay safe.

A malicious host replays, tampers with, forges, reflects, redirects and makes up messages (sim/malice.py);
the scenarios' card-side invariants must hold all the same, because the cards' protocols (authenticated
sessions with counters, strict decoding, idempotent transfers) defend against it.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections import Counter
from dataclasses import replace

from cardnet.applets.trn import MINT, REISSUE, SEND
from cardnet.card import mtypes as cm
from cardnet.protocols import session as sess
from cardnet.protocols.echo import REQUEST
from cardnet.sim.faults import FAULT_KINDS
from cardnet.sim.malice import Action, Malice
from cardnet.sim.runner import HEAL_S, SAFETY_S, run_many, run_seed
from cardnet.sim.trn import TrnScenario
from cardnet.sim.world import World, plan_for
from cardnet.wire import Message, Uid

MALICIOUS = [seed for seed in range(400) if plan_for(seed).malicious_p > 0.05]


def _kinds(trace: list[str]) -> Counter[str]:
    """How often each malicious move appears in a trace (``  t malicious h1 replay session.record ...``)."""
    return Counter(line.split()[3] for line in trace if line.split()[1:2] == ["malicious"] and "hosts:" not in line)


# --------------------------------------------------------------------------- the fault plan


def test_malicious_is_a_fault_kind_drawn_per_seed() -> None:
    assert "malicious" in FAULT_KINDS
    plans = [plan_for(seed) for seed in range(200)]
    on = [p for p in plans if p.malicious_p > 0]
    assert 0 < len(on) < len(plans)  # swarm testing: on in some seeds, off in others
    assert plan_for(5, calm=True).malicious_p == 0.0


# --------------------------------------------------------------------------- it really happens


def test_malicious_hosts_replay_forge_tamper_reflect_and_inject_and_the_cards_refuse() -> None:
    kinds: Counter[str] = Counter()
    refusals: Counter[str] = Counter()
    guard_drops = 0
    for seed in MALICIOUS[:6]:
        result = run_seed("trn", seed)
        assert result.violations == [], (seed, result.violations)
        assert result.trace is not None and result.faults["malicious"] > 0
        assert any(line.split()[1:3] == ["malicious", "hosts:"] for line in result.trace)
        kinds.update(_kinds(result.trace))
        refusals.update(line.rsplit(": ", 1)[-1] for line in result.trace if " card refuses: " in line)
        guard_drops += sum(" guard drops " in line for line in result.trace)
    assert {"replay", "tamper", "forge", "reflect", "redirect", "inject"} <= set(kinds), kinds
    # what the cards said: no session for a forged or replayed handshake, a record that fails authentication,
    # a privileged order from a stranger, a session message from an application, garbage params
    assert {"no_session", "bad_record", "privileged", "wrong_peer", "bad_param"} <= set(refusals), refusals
    assert "applet_error" not in refusals  # every refusal is a clean one
    assert guard_drops > 0  # forged srcs claiming a card of the receiving host never reach that card


def test_replaying_everything_a_host_saw_changes_no_token() -> None:
    """h0 (the agent's and the authority's host) replays every message it carried, then forges some: the
    replayed mint and send orders are refused, the tokens end on one card each with a consistent chain."""
    seed = 3
    world = World(seed, replace(plan_for(seed, calm=True), malicious_p=0.0))  # no random faults: only the flood
    scenario = TrnScenario()
    scenario.build(world)
    world.turn_malicious("h0")
    h1_card = Uid.card(next(iter(world.hosts["h1"].cards)))
    h2_card = Uid.card(next(iter(world.hosts["h2"].cards)))
    flooded: list[Message] = []

    def flood() -> None:
        malice = world.malicious["h0"]
        flooded.extend(malice.seen)
        for msg in list(malice.seen):
            world.inject("h0", Action("replay", msg))
        # a record claiming to come from a card of h1, sent to h1: h1's Guard drops it
        world.inject("h0", Action("forge", Message(h1_card, h1_card, sess.RECORD.code, flooded[-1].param)))
        # the same claim towards a card of h2 that has a session with h1's card passes h2's Guard; the card
        # refuses the record (a counter past its own: not a quiet replay, but a record that fails authentication)
        key = ("a.trn", b"s:" + bytes(h1_card))
        with_h1 = [d for d, sc in world.hosts["h2"].cards.items() if (st := sess.decode_state(sc.card._mem.get(key)))
                   and st.open]  # fmt: skip
        to = Uid.card(with_h1[0]) if with_h1 else h2_card
        world.inject("h0", Action("forge", sess.RECORD.make(h1_card, to, ctr=1 << 40, ct=bytes(32))))

    world.at(1.5, flood, "flood")
    world.run(safety_s=SAFETY_S, heal_s=HEAL_S, check=scenario.check, quiescent=scenario.quiescent)
    assert world.violations == [] and scenario.quiescent(world)
    assert scenario.check(world, True) == []
    assert any(m.mtype == MINT.code for m in flooded) and any(m.mtype == SEND.code for m in flooded)
    assert any(m.mtype == sess.RECORD.code for m in flooded)
    trace = world.trace
    assert trace is not None
    assert _kinds(trace)["replay"] == len(flooded) and _kinds(trace)["forge"] == 2
    assert any("card refuses: trn.mint from" in line and line.endswith(": refused") for line in trace)
    assert any("card refuses: trn.send from" in line for line in trace)
    assert any("h1 guard drops session.record" in line for line in trace)
    assert any("h2 card refuses: session with" in line for line in trace)


def test_a_replayed_mint_of_a_reissued_oid_is_refused() -> None:
    """The agent reissues a token (the old oid is revoked, its card forgets it as minted); h0 then replays the
    owner's original ``trn.mint`` of the old oid: the card refuses, no second usable copy appears."""
    seed = 5
    world = World(seed, replace(plan_for(seed, calm=True), malicious_p=0.0))
    scenario = TrnScenario(transfers=0, forgeries=0)  # (a revoked oid that moves on stays trustless)
    scenario.build(world)
    world.turn_malicious("h0")
    old, new = scenario.oids[0], bytes(16)
    address, app = scenario.apps[scenario.agent_domain]
    agent = Uid.card(scenario.agent_domain)

    def reissue() -> None:
        world.submit(address, cm.PIN_VERIFY.make(app, agent, pin="0000"))
        world.submit(address, REISSUE.make(app, agent, oid=old, new_oid=new))

    def replay_mints() -> None:
        for msg in [m for m in world.malicious["h0"].seen if m.mtype == MINT.code]:
            world.inject("h0", Action("replay", msg))

    world.at(1.0, reissue, "reissue")
    world.at(1.8, replay_mints, "flood")
    world.run(safety_s=SAFETY_S, heal_s=HEAL_S, check=scenario.check, quiescent=scenario.quiescent)
    assert world.violations == []
    assert world.card_of(scenario.agent_domain)._mem.get(("a.trn", b"r:" + old)) is not None  # it was reissued
    trace = world.trace
    assert trace is not None and any("replay trn.mint" in line and old.hex()[:16] in line for line in trace)
    assert sum("card refuses: trn.mint from" in line for line in trace) == len(scenario.oids)


def test_a_malicious_host_never_makes_up_an_order_in_its_owners_name() -> None:
    """The one thing it cannot do (host.md): privileged orders from an authenticated application are only
    ever replayed verbatim, never made up or altered."""
    card = Uid.card(b"\x01" * 12)
    app = card.with_port(1)
    other = Uid.card(b"\x02" * 12)
    malice = Malice(random.Random(7))
    order = SEND.make(app, card, oid=b"\x05" * 16, to=other)
    malice.observe(cm.PIN_VERIFY.make(app, card, pin="0000"), from_app=True)
    malice.observe(order, from_app=True)
    malice.observe(REQUEST.make(app, other, rid=1, body=b"x"), from_app=True)
    cards, uids = [card, other], [card, other, app, other.with_port(1)]
    made = []
    for _ in range(3000):
        for action in (malice.injection(cards, uids, {card: [SEND, MINT]}), malice.in_passing(order, cards, uids)):
            if action is not None:
                made.append(action.msg)
    owners = [m for m in made if m.mtype in (SEND.code, MINT.code) and m.src == app and m.dst == card]
    assert owners and all(m == order for m in owners)  # replayed, never changed
    assert any(m.mtype == MINT.code and m.dst == card and m.src != app for m in made)  # made up: from others


# --------------------------------------------------------------------------- determinism


def test_a_malicious_seed_gives_the_same_trace_in_this_process_and_another() -> None:
    seed = MALICIOUS[0]
    first, again = run_seed("trn", seed), run_seed("trn", seed)
    assert first.trace is not None and first.trace == again.trace
    assert first.faults == again.faults and first.faults["malicious"] > 0
    quiet = run_seed("trn", seed, trace=False)  # tracing changes nothing
    assert (quiet.faults, quiet.violations, quiet.sim_time_s) == (first.faults, first.violations, first.sim_time_s)
    result = subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", "sim", "--protocol", "trn", "--seed", str(seed), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    replay = json.loads(result.stdout)
    assert replay["trace"] == first.trace and replay["faults"] == dict(first.faults)


# --------------------------------------------------------------------------- invariants


def test_echo_holds_under_malicious_hosts_over_hundreds_of_seeds() -> None:
    summary = run_many("echo", range(300))
    assert summary.violations == 0, summary.first_failure and summary.first_failure.trace
    assert summary.faults_injected["malicious"] > 0


def test_transfer_holds_under_malicious_hosts() -> None:
    for seed in MALICIOUS[:60]:
        result = run_seed("trn", seed, trace=False)
        assert result.violations == [], (seed, result.violations)


def test_the_broken_variants_are_still_caught() -> None:
    assert run_many("echo-broken", range(50), stop_at_first=True).violations == 1
    assert run_many("trn-broken", range(10), stop_at_first=True).violations == 1
