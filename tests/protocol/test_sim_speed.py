"""The speed simulation: real SPEED purchases hold their invariants under every fault kind and every attack, and a
broker that skips the SAM's check of S3 and a conductor that pays any price are caught (issue 12, item 8)."""

from __future__ import annotations

import cbor2
import pytest

from cardnet.protocols.speed import frames as fr
from cardnet.sim.faults import FAULT_KINDS
from cardnet.sim.runner import run_many, run_seed
from cardnet.sim.speed import BROKER, SpeedScenario
from cardnet.sim.world import World, plan_for
from cardnet.wire import Message

CARRIER = ("tamper", "forge", "reflect", "redirect", "replay", "inject")
HOST = ("replay_pay", "pay_twice", "tamper_bill", "replay_debit", "replay_order")


@pytest.mark.slow
def test_speed_holds_its_invariants_under_every_fault_and_attack() -> None:
    summary = run_many("speed", range(300), jobs=2)
    assert summary.violations == 0, summary.first_failure and summary.first_failure.trace
    for kind in FAULT_KINDS:
        assert summary.faults_injected[kind] > 0, kind
    ex = summary.exercised
    for what in (
        *(f"carrier_{k}" for k in CARRIER),  # the malicious carrier on the customers' links to vendor and broker
        *(f"host_{k}" for k in HOST),  # malicious customer hosts
        "crash_vendor", "crash_broker", "crash_customer", "recover",  # crashes, and journaled purchases finished
        "request_normal", "request_aggressive", "counter_offer", "no_deal", "handshake",  # both modes, bargaining
        "bought_purse", "bought_account", "bought_under_faults",  # both payment modes, also before the heal
        "card_refused_wrong_price",  # the cheating vendor's bills, refused by the card before paying
        "order_again",  # the broker restarted between S2 and S3: the order again, the same S2 and S3
        "duplicate_refused", "stalled", "bad_frame",  # duplicates, losses and forgeries before the journal
    ):  # fmt: skip
        assert ex[what] > 0, (what, dict(ex))


def test_a_broker_that_credits_without_the_sams_check_is_caught() -> None:
    summary = run_many("speed-broken", range(20), stop_at_first=True)
    failure = summary.first_failure
    assert failure is not None, f"speed-broken was not caught in {summary.runs} seeds"
    assert any("without the SAM's logged debit" in v for v in failure.violations), failure.violations
    assert failure.trace is not None and failure.trace[-1].split()[1] == "VIOLATION"
    assert run_seed("speed", failure.seed, trace=False).violations == []


def test_a_conductor_that_pays_any_price_is_caught() -> None:
    summary = run_many("speed-conductor-broken", range(100), stop_at_first=True)
    failure = summary.first_failure
    assert failure is not None, f"speed-conductor-broken was not caught in {summary.runs} seeds"
    assert any("agreed" in v for v in failure.violations), failure.violations
    assert run_seed("speed", failure.seed, trace=False).violations == []


def test_same_seed_same_trace_with_and_without_malice() -> None:
    calm = next(s for s in range(100) if plan_for(s).malicious_p == 0)
    malicious = next(s for s in range(100) if plan_for(s).malicious_p > 0.1)
    for seed in (calm, malicious):
        first, second = run_seed("speed", seed), run_seed("speed", seed)
        assert first.trace == second.trace and first.faults == second.faults and first.exercised == second.exercised
        assert run_seed("speed", seed, trace=False).faults == first.faults
    sc = SpeedScenario()
    sc.build(World(calm, plan_for(calm), trace=False))
    assert sc.carrier is None and not any(node.malicious for node in sc.customers)
    sc = SpeedScenario()
    sc.build(World(malicious, plan_for(malicious), trace=False))
    assert sc.carrier is not None and any(node.malicious for node in sc.customers)


def test_every_purchase_ends_and_the_ledgers_agree_order_by_order() -> None:
    """A look inside a few runs: purchases were bought, each debit is in the SAM's log and paid at the broker, and
    the vendor holds a receipt for every paid order."""
    bought = 0
    for seed in range(6):
        sc = SpeedScenario()
        w = World(seed, plan_for(seed), trace=False)
        sc.build(w)
        w.run(safety_s=2.0, heal_s=30.0, check=sc.check, quiescent=sc.quiescent)
        assert not w.violations, (seed, w.violations)
        logged, sam_debits, _ = sc._sam()
        paid = {poid for poid, state, _c, _a, kind in sc._orders() if state == "paid" and kind == "purse"}
        debited = {p.poid for node in sc.customers for p in sc._purse(node)[1]}
        assert debited == set(logged) == paid
        assert sam_debits == sum(sc._purse(node)[0][2] for node in sc.customers)
        paid_all = [poid for poid, state, _c, _a, _k in sc._orders() if state == "paid"]
        assert sc.vendor.core.paid_sales() == len(paid_all) > 0  # the vendor took the broker's receipts at the end
        for node in sc.customers:
            assert all(i.state in ("done", "no_deal") for i in node.intents)
            bought += sum(r.receipt is not None for r in node.journal.values())
    assert bought > 20


# -- what the scenario found --------------------------------------------------------------------------------------


def test_a_receipts_cursor_past_any_log_is_refused_not_a_crash() -> None:
    """Seed 93: the carrier injected ``speed.vendor_receipts {after: 2**63}``; SQLite's ``read_log`` raised
    ``OverflowError`` out of ``BrokerCore.handle``. The cursor is bounded now: a clean ``oversize`` refusal."""
    sc = SpeedScenario()
    sc.build(World(0, plan_for(0, calm=True), trace=False))
    msg = Message(BROKER, BROKER, fr.RECEIPT_FOR_VENDOR.code, cbor2.dumps({0: 2**63}))
    reply = sc.broker.core.handle(msg)
    assert reply.mtype == fr.REFUSED.code and fr.REFUSED.parse(reply)["reason"] == "oversize"
    top = sc.broker.core.handle(sc.vendor.core.receipts_request(2**63 - 1))
    assert fr.RECEIPTS.parse(top)["items"] == []


def test_a_tampered_bill_whose_bit_flips_undo_each_other_is_tampered_again_and_refused() -> None:
    """Seed 502928: customer 2's malicious host drew ``tamper_bill`` by bit flips for its owner's paid bill, and two
    of its flips were the same bit of the same byte: the "tampered" bill was the genuine bill, byte for byte, with
    the vendor's own certificate. The card answered it as it answers any ``speed.pay`` of a bill it paid (the same
    PaymentOrder again, what a wallet that lost the answer needs) and the checker, which took every ``tamper_bill``
    as tampered, reported that it signed for a tampered bill. The flips that undo each other are now followed by
    one more (so the move tampers for real, and the card refuses it), and a presented bill counts as tampered only
    when its bytes or its certificate are not the ones the host carried."""
    result = run_seed("speed", 502928)
    assert result.violations == [], result.trace
    assert result.exercised["host_tamper_flips_undone"] == 1, dict(result.exercised)
    assert result.trace is not None
    assert any(
        line.split()[1:] == ["malicious", "host", "of", "customer", "2:", "tamper_bill"] for line in result.trace
    )
