"""SMC security modules as real cards (SQLite stores, the card runtime, TRN sessions) on one in-process host.

The test plays each host's Controller and Clock: it prepares every module with one spec, waits for the joins,
gives the inputs and ticks the rounds, pumping the host between ticks so that every frame is delivered (or
dropped by a guard: the Adversary).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from trnworld import TrnWorld

from cardnet.applets.smc import FINISHED, FRAME, INPUT, KNOWN, KNOWN_IS, PREPARE, STATE, STATE_IS, TICK, SmcApplet
from cardnet.card import Card
from cardnet.card import mtypes as cm
from cardnet.crypto import pki
from cardnet.host.core import CARD, Origin
from cardnet.host.guard import Guard, Verdict
from cardnet.protocols.smc.functions import AUCTION, MEDIAN, REGISTRY
from cardnet.protocols.smc.registry import FunctionSpec
from cardnet.protocols.smc.run import RunSpec, frame_bytes
from cardnet.store import SqliteStore
from cardnet.wire import Message, Uid

NAMES = ("m0", "m1", "m2", "m3", "m4")


def world(tmp: Path, ca: pki.CertificateAuthority, n: int = 5) -> TrnWorld:
    w = TrnWorld(tmp, ca)
    for name in NAMES[:n]:
        w.card(name, applet=SmcApplet())
    return w


def spec_of(w: TrnWorld, fn: FunctionSpec, t: int, rho_max: int = 2) -> RunSpec:
    members = tuple(w.cards[name].uid for name in w.cards)
    return RunSpec(os.urandom(16), members, REGISTRY.terms(fn.name, n=len(members), t=t), rho_max)


def answer(w: TrnWorld, name: str, mtype: Any, **fields: Any) -> dict[str, Any]:
    """The card's answer to an order (a run that ended meanwhile also pushed smc.finished: the newest counts)."""
    app = w.apps[name]
    app.send(w.cards[name].uid, mtype, **fields)
    w.run()
    msgs = app.receive_all()
    assert msgs, f"{name}'s card did not answer {mtype.name}"
    reply = msgs[-1]
    if reply.mtype == cm.REFUSED.code:
        return {"refused": cm.REFUSED.parse(reply)["reason"]}
    return dict((FINISHED if reply.mtype == FINISHED.code else STATE_IS).parse(reply))


def prepare_all(w: TrnWorld, spec: RunSpec) -> None:
    for name in w.cards:
        assert answer(w, name, PREPARE, spec=spec.encode())["status"] in ("joining", "ready")
    w.run(500)
    for name in w.cards:
        assert answer(w, name, STATE, run=spec.run)["joined"] == spec.n, name


def tick_all(w: TrnWorld, spec: RunSpec, names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    names = names or list(w.cards)
    last: dict[str, dict[str, Any]] = {}
    for r in range(1, spec.rounds + 2):
        for name in names:
            last[name] = answer(w, name, TICK, run=spec.run, round=r)
        w.run(200)
    return last


def test_five_module_cards_compute_the_median(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = world(tmp_path, ca)
    spec = spec_of(w, MEDIAN, t=2)
    prepare_all(w, spec)
    for name, v in zip(w.cards, [40, 10, 30, 50, 20], strict=True):
        assert answer(w, name, INPUT, run=spec.run, input=MEDIAN.encode_input(v))["has_input"]
    last = tick_all(w, spec)
    results = {s.get("result") for s in last.values()}
    assert {s["status"] for s in last.values()} == {"decided"} and len(results) == 1
    (result,) = results
    assert result is not None and MEDIAN.to_json(result)["median"] == 30


def test_the_adversary_drops_every_frame_of_two_hosts_and_three_cards_still_agree(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = world(tmp_path, ca)
    spec = spec_of(w, AUCTION, t=2)
    prepare_all(w, spec)
    faulty = {w.cards["m1"].uid, w.cards["m3"].uid}
    dropped = []

    def adversary(msg: Message, origin: Origin) -> Verdict:
        if msg.mtype == FRAME.code and (msg.src in faulty or msg.dst in faulty):
            dropped.append(msg)
            return Verdict.DROP
        return Verdict.PASS

    w.host.guards.append(Guard("adversary", adversary))
    for name, bid in zip(w.cards, [5, 99, 7, 98, 6], strict=True):
        answer(w, name, INPUT, run=spec.run, input=AUCTION.encode_input(bid))
    last = tick_all(w, spec)
    assert dropped
    correct = [last[n] for n in ("m0", "m2", "m4")]
    assert {s["status"] for s in correct} == {"decided"}
    assert {last[n]["status"] for n in ("m1", "m3")} == {"halted"}
    (result,) = {s["result"] for s in correct}
    assert AUCTION.to_json(result)["winner"] == 2  # the cut-off hosts' high bids never counted


def test_every_frame_has_one_size_and_no_frame_is_answered(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = world(tmp_path, ca, n=3)
    spec = spec_of(w, MEDIAN, t=1)
    prepare_all(w, spec)
    seen: list[Message] = []

    def watch(msg: Message, origin: Origin) -> Verdict:
        seen.append(msg)
        return Verdict.PASS

    w.host.guards.append(Guard("watch", watch))
    for name, v in zip(w.cards, [1, 2, 3], strict=True):
        answer(w, name, INPUT, run=spec.run, input=MEDIAN.encode_input(v))
    tick_all(w, spec)
    frames = [m for m in seen if m.mtype == FRAME.code]
    assert len(frames) == spec.rounds * 3 * 2
    assert {len(FRAME.parse(m)["ct"]) for m in frames} == {frame_bytes(3, MEDIAN.max_input_bytes)}
    # between cards, only frames travel during the rounds: no refusal, no session traffic
    assert {m.mtype for m in seen if m.src.is_card and m.dst.is_card} == {FRAME.code}


def test_a_restarted_module_takes_no_further_part(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = world(tmp_path, ca, n=3)
    spec = spec_of(w, MEDIAN, t=1)
    prepare_all(w, spec)
    old = w.cards["m2"]
    old.close()  # the module's host process dies: the card's memory is gone, its store stays
    again = Card(SqliteStore(str(tmp_path / "m2.db")), applets=[SmcApplet()], capacity_bytes=256 * 1024)
    assert again.uid == old.uid
    w.cards["m2"] = again
    w.host.replace_card(again)
    w.apps["m2"] = w.host.acquire(again.uid.domain, w.now)
    w.ask("m2", cm.PIN_VERIFY, pin="2468")
    for order, fields in ((STATE, {}), (INPUT, {"input": MEDIAN.encode_input(1)}), (TICK, {"round": 1})):
        assert answer(w, "m2", order, run=spec.run, **fields) == {"refused": "restarted"}
    assert answer(w, "m2", PREPARE, spec=spec.encode()) == {"refused": "restarted"}
    for name, v in (("m0", 5), ("m1", 6)):
        answer(w, name, INPUT, run=spec.run, input=MEDIAN.encode_input(v))
    last = tick_all(w, spec, ["m0", "m1"])
    assert {s["status"] for s in last.values()} == {"decided"}
    (result,) = {s["result"] for s in last.values()}
    assert MEDIAN.to_json(result)["median"] in (5, 6)


def test_orders_need_the_pin_and_input_waits_for_every_join(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = world(tmp_path, ca, n=3)
    spec = spec_of(w, MEDIAN, t=1)
    assert answer(w, "m0", PREPARE, spec=spec.encode())["status"] == "joining"
    assert answer(w, "m0", INPUT, run=spec.run, input=MEDIAN.encode_input(1)) == {"refused": "not_agreed"}
    stranger = w.host.acquire(w.cards["m0"].uid.domain, w.now)  # an application without the PIN
    stranger.send(w.cards["m0"].uid, TICK, run=spec.run, round=1)
    w.run()
    (reply,) = stranger.receive_all()
    assert reply.mtype == cm.REFUSED.code and cm.REFUSED.parse(reply)["reason"] == "privileged"


def test_a_module_refuses_terms_its_registry_does_not_have(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    w = world(tmp_path, ca, n=3)
    spec = spec_of(w, MEDIAN, t=1)
    other = REGISTRY.terms("sum", n=3, t=1)
    forged = RunSpec(spec.run, spec.members, replace(other, code_hash=bytes(32)), spec.rho_max)
    assert answer(w, "m0", PREPARE, spec=forged.encode()) == {"refused": "code_hash_mismatch"}
    bad_t = RunSpec(spec.run, spec.members, replace(spec.terms, t=2), spec.rho_max)
    assert answer(w, "m0", PREPARE, spec=bad_t.encode()) == {"refused": "too_many_faults"}


@pytest.mark.parametrize("n", [3, 5])
def test_members_given_other_terms_are_found_out_before_inputs(
    tmp_path: Path, ca: pki.CertificateAuthority, n: int
) -> None:
    w = world(tmp_path, ca, n=n)
    spec = spec_of(w, MEDIAN, t=1)
    odd = RunSpec(spec.run, spec.members, spec.terms, spec.rho_max + 1)
    for i, name in enumerate(w.cards):
        answer(w, name, PREPARE, spec=(odd if i == 0 else spec).encode())
    w.run(500)
    s = answer(w, "m1", STATE, run=spec.run)
    assert s["joined"] == n - 1 and "other terms" in s["problem"]
    # m1 has n - 1 >= n - t matching joins: it takes its input; m0, given other terms, matches nobody: it cannot
    assert answer(w, "m1", INPUT, run=spec.run, input=MEDIAN.encode_input(1))["has_input"]
    assert answer(w, "m0", INPUT, run=odd.run, input=MEDIAN.encode_input(1)) == {"refused": "not_agreed"}


def test_smc_known_is_answered_to_the_modules_own_applications_only(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """``smc.known`` is answered without the PIN, so only to an application on a port of the module card itself
    (one its own host connected): a question from another card (on this host, or a remote one through the host's
    links) or from another host's application is dropped with no answer at all, as any traffic that would depend on
    the module's state (docs/smc.md). The answer is looked for everywhere it could go: the asker, the links, the
    host's notices."""
    w = world(tmp_path, ca, n=2)
    spec = spec_of(w, MEDIAN, t=0)
    prepare_all(w, spec)
    m0, m1 = w.cards["m0"].uid, w.cards["m1"].uid
    seen: list[Message] = []
    w.host.observe(lambda msg, origin: seen.append(msg))

    def asked(msg: Message, origin: Origin | None) -> list[Message]:
        """Everything m0 says after ``msg`` reaches it (from ``origin``, or a remote peer), links included."""
        seen.clear()
        if origin is None:
            assert w.host.receive_remote(msg, "peer-host:7001")
        else:
            assert w.host.submit(msg, origin)
        outs = []
        for _ in range(50):
            w.now += 0.01
            outs += [eff.msg for eff in w.host.pump(w.now)]
            if w.host.idle:
                break
        return [m for m in [*seen, *outs] if m.src == m0]

    # the module's own application (no PIN needed): answered, so an answer would be seen
    own = w.host.acquire(m0.domain, w.now)
    own.send(m0, KNOWN, run=spec.run)
    w.run()
    (reply,) = own.receive_all()
    assert reply.mtype == KNOWN_IS.code and KNOWN_IS.parse(reply)["held"] == "live", reply
    # another card of this host: nothing
    assert asked(KNOWN.make(m1, m0, run=spec.run), CARD) == []
    # a remote card, through the links: nothing (not even to the link)
    remote = Uid(bytes.fromhex("0bad0bad0bad0bad0bad0bad"), 0)
    assert asked(KNOWN.make(remote, m0, run=spec.run), None) == []
    # a remote host's application (a port of a card of its own), through the links: nothing either
    assert asked(KNOWN.make(Uid(remote.domain, 40), m0, run=spec.run), None) == []
    # an application of this host on the other card's port: not the module's own, nothing
    other_app = w.host.acquire(m1.domain, w.now)
    other_app.send(m0, KNOWN, run=spec.run)
    w.run()
    assert other_app.receive_all() == []
