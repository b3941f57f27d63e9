"""The millicent simulation: invariants hold under faults, and a vendor without a spent list is caught."""

from __future__ import annotations

from collections import Counter

import pytest

from cardnet.crypto import profile
from cardnet.protocols import millicent as mc
from cardnet.sim.millicent import MillicentScenario
from cardnet.sim.runner import run_many, run_seed
from cardnet.sim.world import World, plan_for


def test_millicent_holds_its_invariants_on_many_seeds() -> None:
    summary = run_many("millicent", range(150))
    assert summary.violations == 0, summary.first_failure and summary.first_failure.trace
    for kind in ("drop", "duplicate", "delay", "reorder", "partition", "tear", "crash", "malicious"):
        assert summary.faults_injected[kind] > 0, kind


def test_the_broken_vendor_is_caught() -> None:
    summary = run_many("millicent-broken", range(40))
    assert summary.violations > 0
    assert summary.first_failure is not None
    assert any("accepted" in v or "conserved" in v for v in summary.first_failure.violations)


def test_same_seed_same_trace_and_the_attacks_really_happen() -> None:
    assert run_seed("millicent", 11).trace == run_seed("millicent", 11).trace
    accepted = refused = pruned = thief = 0
    for seed in range(20):
        sc = MillicentScenario()
        w = World(seed, plan_for(seed), trace=False)
        sc.build(w)
        w.run(safety_s=2.0, heal_s=30.0, check=sc.check, quiescent=sc.quiescent)
        assert not w.violations
        accepted += len(sc.accepted)
        pruned += len(sc.pruned)
        thief += len(sc.thief_rids)
        refused += sum(v.core.stats.refused for v in sc.vendors)
    assert accepted > 100 and pruned > 0 and thief > 20 and refused > 20


# -- the malicious carrier -------------------------------------------------------------------------

MALICIOUS = [seed for seed in range(200) if plan_for(seed).malicious_p > 0.05]


def _moves(trace: list[str]) -> Counter[str]:
    """``  t malicious carrier KIND 0xMTYPE src->dst ...`` lines, by kind."""
    return Counter(line.split()[3] for line in trace if line.split()[1:3] == ["malicious", "carrier"])


def test_the_malicious_carrier_replays_tampers_forges_reflects_redirects_and_injects_harmlessly() -> None:
    moves: Counter[str] = Counter()
    mtypes: Counter[str] = Counter()
    ignored = refused = 0
    for seed in MALICIOUS[:25]:
        result = run_seed("millicent", seed)
        assert result.trace is not None
        assert not result.violations, (seed, result.violations)
        assert result.faults["malicious"] == sum(_moves(result.trace).values()) > 0
        moves += _moves(result.trace)
        mtypes.update(line.split()[4] for line in result.trace if line.split()[1:3] == ["malicious", "carrier"])
        ignored += sum(" ignores " in line for line in result.trace)
    for kind in ("replay", "tamper", "forge", "reflect", "redirect", "inject"):
        assert moves[kind] > 0, kind
    # requests to the vendors, replies to customers, and the broker's purchases all get replayed or made up
    for mt in (mc.REQUEST, mc.SEALED_REQUEST, mc.REPLY, mc.SEALED_REPLY, mc.PURCHASE):
        assert mtypes[f"0x{mt.code:04x}"] > 0, mt.name
    assert ignored > 0  # customers saw garbled or unauthenticated answers and kept their requests pending
    # and the vendors refused what the carrier made (level 1 below the vendors' minimum, MACs that do not check)
    for seed in MALICIOUS[:10]:
        sc = MillicentScenario()
        w = World(seed, plan_for(seed), trace=False)
        sc.build(w)
        w.run(safety_s=2.0, heal_s=30.0, check=sc.check, quiescent=sc.quiescent)
        assert not w.violations
        assert sc.carrier is not None
        refused += sum(v.core.stats.refused for v in sc.vendors)
    assert refused > 0


def test_a_seed_without_malice_has_no_carrier_and_a_malicious_seed_replays_exactly() -> None:
    calm = next(s for s in range(100) if plan_for(s).malicious_p == 0)
    sc = MillicentScenario()
    sc.build(World(calm, plan_for(calm), trace=False))
    assert sc.carrier is None
    seed = MALICIOUS[0]
    first, second = run_seed("millicent", seed), run_seed("millicent", seed)
    assert first.trace == second.trace and first.faults == second.faults
    assert first.trace is not None and any("malicious carrier" in line for line in first.trace)
    assert run_seed("millicent", seed, trace=False).faults == first.faults


# -- what the carrier found in the customer's side of the protocol (protocols/millicent/customer.py open_reply) --------


def _secret_and_scrip() -> tuple[bytes, mc.Scrip]:
    secrets = {0: b"\x01" * 32}
    scrip = mc.mint(
        secrets, index=0, vendor=b"\x00" * 7 + b"\xa1", value=10, serial=1, customer_id=b"\x00" * 8, expiry=9
    )
    return b"\x02" * 32, scrip


def test_a_plain_ok_to_a_sealed_request_is_not_believed() -> None:
    """Level 3: the rid travels in the clear, so anyone on the wire could answer it with a plain, unMACed ``ok``."""
    secret, scrip = _secret_and_scrip()
    rid = b"\x07" * 16
    mt, param = mc.make_request(scrip, rid=rid, level=mc.Level.PRIVATE, secret=secret, price=1, product="a")
    assert mt == mc.SEALED_REQUEST.code and mc.SEALED_SCHEMA.decode(param)["rid"] == rid
    for status in (mc.Status.OK, mc.Status.SPENT):
        forged = mc.REPLY_SCHEMA.encode({"rid": rid, "status": int(status), "content": b"a made-up page"})
        with pytest.raises(mc.MillicentError, match="MACed"):
            mc.open_reply(mc.REPLY.code, forged, rid=rid, level=mc.Level.PRIVATE, secret=secret)
    refusal = mc.REPLY_SCHEMA.encode({"rid": rid, "status": int(mc.Status.STOLEN), "detail": "?"})
    out = mc.open_reply(mc.REPLY.code, refusal, rid=rid, level=mc.Level.PRIVATE, secret=secret)
    assert out.status == mc.Status.STOLEN and not out.authentic  # a hint only


def test_a_macd_refusal_is_authentic_and_a_rewritten_one_is_refused() -> None:
    secret, _ = _secret_and_scrip()
    rid = b"\x08" * 16
    f = {"rid": rid, "status": int(mc.Status.EXPIRED), "detail": "expired"}
    f["mac"] = profile.hmac_sha256(secret, mc.reply_mac_input(f), mc.MAC_BYTES)
    out = mc.open_reply(mc.REPLY.code, mc.REPLY_SCHEMA.encode(f), rid=rid, level=mc.Level.THEFT, secret=secret)
    assert out.status == mc.Status.EXPIRED and out.authentic
    rewritten = {**f, "status": int(mc.Status.FORGED)}  # the carrier rewrote the status: strict decoding passes
    with pytest.raises(mc.MillicentError, match="MAC does not check"):
        mc.open_reply(mc.REPLY.code, mc.REPLY_SCHEMA.encode(rewritten), rid=rid, level=mc.Level.THEFT, secret=secret)


def test_an_unknown_status_is_a_bad_reply_not_a_crash() -> None:
    secret, _ = _secret_and_scrip()
    rid = b"\x09" * 16
    garbled = mc.REPLY_SCHEMA.encode({"rid": rid, "status": 255})
    for level in (mc.Level.VALIDATION, mc.Level.THEFT, mc.Level.PRIVATE):
        with pytest.raises(mc.MillicentError, match="unknown status"):
            mc.open_reply(mc.REPLY.code, garbled, rid=rid, level=level, secret=secret)
