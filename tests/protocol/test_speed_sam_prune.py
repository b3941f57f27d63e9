"""Pruning the broker's SAM (``sam.prune``) on real cards (durable SQLite stores): what a purchase costs the SAM's
card, that pruning settled days gives that room back, and that it keeps every guarantee: a proof or an order
replayed after pruning is refused (never authorised or logged twice), an open authorisation still takes its late
proof, the purse never goes negative, and the purse's debits and loads equal the SAM's log of the days it holds
plus the totals of the days it pruned (which the broker recorded before)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st
from test_speed_purse_cards import DAY0, FATE, POID, PurseMoves, World, make_world, sam_applets

from cardnet.applets.speed import purse as pa
from cardnet.applets.speed import sam as sa
from cardnet.card import Card
from cardnet.crypto import pki
from cardnet.protocols.speed import purse as pp
from cardnet.store import SqliteStore
from cardnet.wire import MType

DAY_S = sa.DAY_S
PURCHASE_BYTES = 211  # docs/speed.md, "Pruning the SAM": d: 114, o: 62, g: 35 (40-byte poid, 2.50, n < 2**32)


def used(card: Card) -> int:
    card.flush()  # acknowledged outbox rows count until deleted: measure the records alone
    return card.used_bytes


def sam(w: World) -> Card:
    return w.slots["broker"].card


def test_a_purchase_costs_the_sam_211_bytes_until_its_day_is_pruned(purse_world: World) -> None:
    w = purse_world
    start = used(sam(w))  # the master key
    w.load("alice", "EUR", 10**9)
    w.pay("alice", os.urandom(40), "EUR", 250)  # the first debit writes the totals' record
    before = used(sam(w))
    n = 200
    for _ in range(n):
        w.pay("alice", os.urandom(40), "EUR", 250)  # a PaymentOrderID is 40 bytes (VendorID || NID)
    grown = used(sam(w)) - before
    assert grown == n * PURCHASE_BYTES
    # the days that ended are settled (here: read) and pruned; the SAM keeps one floor per card and the marker
    w.now += 3 * DAY_S
    got = w.ok("broker", sa.PRUNE, before_day=DAY0 + 1)
    assert got == {"before_day": DAY0 + 1, "entries": n + 2, "days": 1, "more": False}  # the load and 201 debits
    # all that is left beside the master key: the log's sequence (12 bytes), alice's floors (28), the marker (6)
    assert used(sam(w)) - start == 12 + 28 + 6
    rows = {k[:2] for (t, k) in sam(w)._mem if t == "a.sam"}
    assert rows == {b"ma", b"gs", b"h:", b"pb"}  # master, gseq, alice's floors, the first day not pruned
    assert w.ok("broker", sa.DAYS) == {"days": [], "pruned_before": DAY0 + 1, "open": 0}


def test_a_full_sam_refuses_payments_and_takes_them_again_once_pruned(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    w = make_world(tmp_path, ca)
    try:
        w.load("alice", "EUR", 10**9)
        slot = w.slots["broker"]
        capacity = used(slot.card) + 40 * PURCHASE_BYTES  # room for about 40 payments
        slot.card.close()
        slot.card = Card(SqliteStore(str(slot.path)), applets=sam_applets(), capacity_bytes=capacity)
        w.login("broker")
        paid = 0
        while True:
            s1 = w.ok("alice", pa.DEBIT_BEGIN, poid=b"po-%d" % paid, currency="EUR", amount=1)["s1"]
            got = w.order("broker", sa.DEBIT_START, s1=s1, poid=b"po-%d" % paid, currency="EUR", amount=1)
            if "refused" in got:
                assert got["refused"] == "out_of_memory", got
                break
            s3 = w.ok("alice", pa.DEBIT, s2=got["s2"])["s3"]
            w.ok("broker", sa.DEBIT_FINISH, s3=s3)
            paid += 1
            assert paid < 60
        assert paid >= 30
        w.now += 2 * DAY_S
        assert w.ok("broker", sa.PRUNE, before_day=DAY0 + 1)["entries"] == paid + 1
        for i in range(paid):  # the room is back: as many payments again
            w.pay("alice", b"re-%d" % i, "EUR", 1)
    finally:
        w.close()


def test_after_pruning_replays_are_refused_and_an_open_authorisation_still_logs(purse_world: World) -> None:
    w = purse_world
    w.load("alice", "EUR", 1000)
    l1 = w.ok("alice", pa.LOAD_BEGIN, currency="EUR", amount=5)["l1"]  # a load authorised on day 0 ...
    l2 = w.ok("broker", sa.LOAD_START, l1=l1, currency="EUR", amount=5)["l2"]
    l3 = w.ok("alice", pa.LOAD, l2=l2)["l3"]  # ... credited, its L3 held back: open at the SAM
    s1 = w.ok("alice", pa.DEBIT_BEGIN, poid=POID, currency="EUR", amount=250)["s1"]
    s2 = w.ok("broker", sa.DEBIT_START, s1=s1, poid=POID, currency="EUR", amount=250)["s2"]
    s3 = w.ok("alice", pa.DEBIT, s2=s2)["s3"]
    done = w.ok("broker", sa.DEBIT_FINISH, s3=s3)
    open_s1 = w.ok("alice", pa.DEBIT_BEGIN, poid=b"open", currency="EUR", amount=100)["s1"]
    open_s2 = w.ok("broker", sa.DEBIT_START, s1=open_s1, poid=b"open", currency="EUR", amount=100)["s2"]
    open_s3 = w.ok("alice", pa.DEBIT, s2=open_s2)["s3"]  # debited on the card, its S3 lost (for now)
    bob_load = w.load("bob", "EUR", 10)
    assert w.ok("broker", sa.DAYS) == {"days": [DAY0], "open": 2}

    w.now += 3 * DAY_S  # day 0 is settled by the broker (its totals read), then pruned
    assert w.sums(DAY0) == ({"EUR": 250}, {"EUR": 1010})
    with_day0 = used(sam(w))
    assert w.ok("broker", sa.PRUNE, before_day=DAY0 + 2)["entries"] == 3
    assert used(sam(w)) < with_day0
    assert w.ok("broker", sa.DAYS) == {"days": [], "pruned_before": DAY0 + 2, "open": 2}
    assert w.order("broker", sa.TOTALS, day=DAY0)["refused"] == "pruned"
    assert w.order("broker", sa.LOG, day=DAY0)["refused"] == "pruned"

    # what was logged and pruned is refused, not authorised or logged again
    for mtype, fields in (
        (sa.DEBIT_START, {"s1": s1, "poid": POID, "currency": "EUR", "amount": 250}),
        (sa.DEBIT_FINISH, {"s3": s3}),
        (sa.LOAD_FINISH, {"l3": w.ok("bob", pa.PROOFS)["l3"][0]}),
    ):
        got = w.order("broker", mtype, **fields)
        assert got["refused"] == "pruned", (mtype, got)
    first_l1 = pp.L1.make(
        pp.diversify(bytes(32), w.slots["alice"].card.uid), uid=w.slots["alice"].card.uid, m=0, rc=bytes(16),
        currency="EUR", amount=1000,
    ).encode()  # fmt: skip
    assert w.order("broker", sa.LOAD_START, l1=first_l1, currency="EUR", amount=1000)["refused"] == "bad_mac"
    assert w.ok("alice", pa.DEBIT, s2=s2)["s3"] == s3  # the purse's own answer is unchanged: nothing debited twice
    assert w.accounts("alice")["EUR"] == {"balance": 655, "loaded": 1005, "debited": 350}

    # the open ones still find their records, and are logged today
    assert w.ok("broker", sa.DEBIT_START, s1=open_s1, poid=b"open", currency="EUR", amount=100)["s2"] == open_s2
    assert w.ok("broker", sa.DEBIT_FINISH, s3=open_s3)["day"] == DAY0 + 3
    assert w.ok("broker", sa.LOAD_FINISH, l3=l3)["day"] == DAY0 + 3
    assert w.sums(DAY0 + 3) == ({"EUR": 100}, {"EUR": 5})
    assert w.ok("broker", sa.DAYS) == {"days": [DAY0 + 3], "pruned_before": DAY0 + 2, "open": 0}
    assert done["day"] == bob_load["day"] == DAY0

    # new payments go on with fresh counters; today cannot be pruned; a host back in a pruned day logs nothing
    w.pay("alice", b"new", "EUR", 5)
    assert w.order("broker", sa.PRUNE, before_day=DAY0 + 4)["refused"] == "bad_day"
    s3_late = w.ok("alice", pa.DEBIT, s2=w.s2_for("alice", b"late", "EUR", 5))["s3"]
    w.now -= 3 * DAY_S
    assert w.order("broker", sa.DEBIT_FINISH, s3=s3_late)["refused"] == "bad_time"
    w.now += 3 * DAY_S
    assert w.ok("broker", sa.DEBIT_FINISH, s3=s3_late)["day"] == DAY0 + 3


def test_a_prune_drops_at_most_a_batch_a_step_and_keeps_a_day_s_totals_until_its_log_is_gone(
    purse_world: World, monkeypatch: Any
) -> None:
    w = purse_world
    monkeypatch.setattr(sa, "PRUNE_BATCH", 4)
    w.load("alice", "EUR", 1000)
    for i in range(5):
        w.pay("alice", b"a-%d" % i, "EUR", 1)
    w.now += DAY_S
    for i in range(2):
        w.pay("alice", b"b-%d" % i, "EUR", 2)
    w.now += 2 * DAY_S
    got = w.ok("broker", sa.PRUNE, before_day=DAY0 + 2)
    assert got == {"before_day": DAY0 + 2, "entries": 4, "days": 0, "more": True}
    assert w.ok("broker", sa.DAYS)["days"] == [DAY0, DAY0 + 1]  # day 0's totals stay while its log is not gone
    got = w.ok("broker", sa.PRUNE, before_day=DAY0 + 2)
    assert got == {"before_day": DAY0 + 2, "entries": 4, "days": 2, "more": False}
    assert w.ok("broker", sa.DAYS) == {"days": [], "pruned_before": DAY0 + 2, "open": 0}
    assert w.ok("broker", sa.PRUNE, before_day=DAY0 + 2) == {"before_day": DAY0 + 2, "entries": 0, "days": 0,
                                                              "more": False}  # fmt: skip


REFUSAL_BYTES = {"load": 22 + 20 + 27, "debit": 22 + 20 + 27}  # r:/x: (key 22, rc + day 20) and its q: entry (27)


def test_refusal_records_are_kept_until_their_day_is_pruned_and_the_statements_are_answered_again_after(
    purse_world: World, monkeypatch: Any
) -> None:
    """The SAM's refusal records (``r:`` a load, ``x:`` a debit: what makes it refuse a start of them and answer the
    same LR or SR again) are kept until the broker prunes their day, then dropped with the card's floor raised past
    them: from then on a start is refused ``pruned`` and the same L1 or S1 still gets the same LR or SR, written
    nowhere. They used to be kept for ever: a SAM's card filled with them."""
    w = purse_world
    monkeypatch.setattr(sa, "PRUNE_BATCH", 3)
    w.load("alice", "EUR", 1000)
    w.now += 3 * DAY_S
    assert w.ok("broker", sa.PRUNE, before_day=DAY0 + 1)["entries"] == 1  # the load: alice has floors now
    base = used(sam(w))
    refused: list[tuple[str, bytes, bytes]] = []  # (kind, L1 or S1, its LR or SR) made on the same day
    for i in range(2):
        l1 = w.ok("alice", pa.LOAD_BEGIN, currency="EUR", amount=100 + i)["l1"]
        refused.append(("load", l1, w.ok("broker", sa.REFUSE_L1, l1=l1)["lr"]))
        s1 = w.ok("alice", pa.DEBIT_BEGIN, poid=b"gone-%d" % i, currency="EUR", amount=5)["s1"]
        refused.append(("debit", s1, w.ok("broker", sa.END_DEBIT, se=w.se("alice", s1))["sr"]))
    day = int(w.now // DAY_S)
    assert used(sam(w)) - base == sum(REFUSAL_BYTES[k] for k, _, _ in refused)
    held = used(sam(w))

    def asked_again(kind: str, raw: bytes) -> tuple[bytes, str]:
        """The statement the SAM answers for ``raw`` again, and how it refuses a start of it now."""
        if kind == "load":
            l1 = pp.L1.decode(raw)
            start = w.order("broker", sa.LOAD_START, l1=raw, currency=l1.currency, amount=l1.amount)
            return w.ok("broker", sa.REFUSE_L1, l1=raw)["lr"], start["refused"]
        s1 = pp.S1.decode(raw)
        start = w.order("broker", sa.DEBIT_START, s1=raw, poid=s1.poid, currency=s1.currency, amount=s1.amount)
        return w.ok("broker", sa.END_DEBIT, se=w.se("alice", raw))["sr"], start["refused"]

    # within the window (the day and keep_days after it, not pruned): the record answers
    w.now += DAY_S
    assert w.ok("broker", sa.PRUNE, before_day=day)["more"] is False  # their day is not pruned
    for kind, raw, statement in refused:
        assert asked_again(kind, raw) == (statement, f"{kind}_refused")
    assert used(sam(w)) == held  # answering again writes nothing
    # the broker prunes their day: at most PRUNE_BATCH records a step, then none is left
    w.now += 2 * DAY_S
    first = w.ok("broker", sa.PRUNE, before_day=day + 1)
    assert first == {"before_day": day + 1, "entries": 0, "days": 0, "more": True, "refusals": 3}
    assert w.ok("broker", sa.PRUNE, before_day=day + 1) == {"before_day": day + 1, "entries": 0, "days": 0,
                                                            "more": False, "refusals": 1}  # fmt: skip
    assert used(sam(w)) == base
    assert not {k[:2] for (t, k) in sam(w)._mem if t == "a.sam"} & {b"r:", b"x:", b"q:"}
    # after it: the same statement again, from the MAC key alone, and a start is refused by the floor
    for kind, raw, statement in refused:
        assert asked_again(kind, raw) == (statement, "pruned")
    assert used(sam(w)) == base
    # the purse that lost the SAM's first answer gets it now: it forgets the load and the debit
    assert w.ok("alice", pa.BALANCE)["pending_loads"] == 2 and w.ok("alice", pa.BALANCE)["pending_debits"] == 2
    for kind, _, statement in refused:
        if kind == "load":
            assert w.ok("alice", pa.DROP_LOAD, lr=statement)["dropped"]
        else:
            assert w.ok("alice", pa.DROP_DEBIT, sr=statement)["dropped"]
    bal = w.ok("alice", pa.BALANCE)
    assert (bal["pending_loads"], bal["pending_debits"]) == (0, 0)
    assert w.accounts("alice")["EUR"] == {"balance": 1000, "loaded": 1000, "debited": 0}


def test_refusal_records_stay_bounded_by_the_days_the_sam_keeps(purse_world: World) -> None:
    """A card whose loads and debits are refused day after day: with the broker pruning each day after keep_days,
    the SAM holds the refusals of the last days only, not of all time."""
    w = purse_world
    w.load("alice", "EUR", 10_000)
    keep, per_day, most = 2, 6, 0
    for _ in range(10):
        for i in range(per_day // 2):
            l1 = w.ok("alice", pa.LOAD_BEGIN, currency="EUR", amount=1 + i)["l1"]
            w.ok("alice", pa.DROP_LOAD, lr=w.ok("broker", sa.REFUSE_L1, l1=l1)["lr"])
            s1 = w.ok("alice", pa.DEBIT_BEGIN, poid=os.urandom(8), currency="EUR", amount=1)["s1"]
            w.ok("alice", pa.DROP_DEBIT, sr=w.ok("broker", sa.END_DEBIT, se=w.se("alice", s1))["sr"])
        w.now += DAY_S
        today = int(w.now // DAY_S)
        while w.ok("broker", sa.PRUNE, before_day=today - keep)["more"]:
            pass
        held = [k for (t, k) in sam(w)._mem if t == "a.sam" and k[:2] in (b"r:", b"x:")]
        most = max(most, len(held))
    assert most == keep * per_day  # after each day's prune: the refusals of the keep days before today, no more
    bal = w.ok("alice", pa.BALANCE)
    assert (bal["pending_loads"], bal["pending_debits"]) == (0, 0)


# --- the property: conservation across pruning, under drops, duplicates, replays and restarts --------------------

OP = st.one_of(
    st.tuples(st.just("load"), st.sampled_from(["EUR", "USD"]), st.integers(1, 800), FATE, FATE),
    st.tuples(st.just("debit"), st.sampled_from(["EUR", "USD"]), st.integers(1, 600), FATE, FATE),
    st.tuples(st.just("replay"), st.integers(0, 2**16), st.just(""), st.just(""), st.just("")),
    st.tuples(st.just("restart"), st.sampled_from(["alice", "broker"]), st.just(""), st.just(""), st.just("")),
    st.tuples(st.just("later"), st.integers(DAY_S // 2, 2 * DAY_S), st.just(""), st.just(""), st.just("")),
    st.tuples(st.just("prune"), st.integers(1, 2), st.just(""), st.just(""), st.just("")),
    st.tuples(st.just("refuse"), st.sampled_from(["EUR", "USD"]), st.integers(1, 800), FATE, st.booleans()),
    st.tuples(st.just("end"), st.sampled_from(["EUR", "USD"]), st.integers(1, 600), FATE, st.booleans()),
)
ALLOWED = {"insufficient", "no_pending", "mismatch", "conflict", "overflow"}


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(OP, min_size=4, max_size=40))
def test_purse_debits_equal_the_sams_log_plus_the_pruned_days_totals(
    ops: list[tuple[Any, ...]], ca: pki.CertificateAuthority
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        w = make_world(Path(tmp), ca)
        try:
            run_ops(w, ops)
        finally:
            w.close()


def run_ops(w: World, ops: list[tuple[Any, ...]]) -> None:
    """The hosts' moves of test_speed_purse_cards.run_ops, and ``prune``: the broker settles the days that ended
    ``keep`` days ago (records their totals and their log's (kind, counter)) and has the SAM prune them."""
    pruned_totals: dict[tuple[str, str], int] = {}  # (kind, currency) -> what the pruned days logged
    pruned_log: set[tuple[str, int]] = set()  # (kind, counter) of what the pruned days logged
    logged: set[tuple[str, int]] = set()  # every (kind, counter) the SAM answered as logged

    def finish(mtype: MType, raw: bytes, times: int) -> None:
        field_name = "s3" if mtype is sa.DEBIT_FINISH else "l3"
        kind, ctr = ("debit", pp.S3.decode(raw).n) if field_name == "s3" else ("load", pp.L3.decode(raw).m)
        for _ in range(times):
            got = w.order("broker", mtype, **{field_name: raw})
            if "refused" in got:  # only what was logged and then pruned is refused
                assert got["refused"] == "pruned" and (kind, ctr) in pruned_log, got
            else:
                assert (kind, ctr) not in pruned_log
                logged.add((kind, ctr))

    def prune(keep: int) -> None:
        today = int(w.now // DAY_S)
        held = w.ok("broker", sa.DAYS)
        for day in (d for d in held["days"] if d < today - keep):
            sums = w.ok("broker", sa.TOTALS, day=day)
            for kind in ("debits", "loads"):
                for s in sums[kind]:
                    key = (kind, s["currency"])
                    pruned_totals[key] = pruned_totals.get(key, 0) + s["amount"]
            for e in w.ok("broker", sa.LOG, day=day)["entries"]:
                pruned_log.add((e["kind"], e["ctr"]))
        before = used(w.slots["broker"].card)
        got = w.ok("broker", sa.PRUNE, before_day=max(today - keep, held.get("pruned_before", 0)))
        assert not got["more"]
        assert used(w.slots["broker"].card) <= before + 6  # at most the marker (``pb``) is new

    moves = PurseMoves(w, finish)
    debits, credits = moves.debits, moves.credits
    for i, (kind, a, b, fate1, fate2) in enumerate(ops):
        if moves.move(i, kind, a, b, fate1, fate2):
            pass  # (a move of the purse's and the SAM's hosts)
        elif kind == "later":
            w.now += a
        else:
            prune(a)
        for cur, acc in w.accounts("alice").items():  # never below zero, and what the card proved
            assert acc["balance"] >= 0 and acc["balance"] == acc["loaded"] - acc["debited"]
            model = sum(x for c, x in credits.values() if c == cur) - sum(x for c, x in debits.values() if c == cur)
            assert acc["balance"] == model

    # the broker settles and prunes what ended, and the purse's host presents every kept proof again: pruned ones
    # are refused, the others logged once
    event("pruned entries before the end" if pruned_log else "nothing pruned before the end")
    w.now += 2 * DAY_S
    prune(1)
    kept = w.ok("alice", pa.PROOFS)
    for raw in kept["s3"]:
        finish(sa.DEBIT_FINISH, raw, 1)
    for raw in kept["l3"]:
        finish(sa.LOAD_FINISH, raw, 1)
    # value adds up: the purse's debits and loads = the pruned days' totals + the SAM's held days
    held = w.ok("broker", sa.DAYS)
    sam_totals = dict(pruned_totals)
    entries = len(pruned_log)
    for day in held["days"]:
        sums = w.ok("broker", sa.TOTALS, day=day)
        for kind in ("debits", "loads"):
            for s in sums[kind]:
                sam_totals[(kind, s["currency"])] = sam_totals.get((kind, s["currency"]), 0) + s["amount"]
        entries += len(w.ok("broker", sa.LOG, day=day)["entries"])
    accounts = w.accounts("alice")
    for kind, field_name in (("debits", "debited"), ("loads", "loaded")):
        purse = {c: a[field_name] for c, a in accounts.items() if a[field_name]}
        assert purse == {c: x for (k, c), x in sam_totals.items() if k == kind and x}
    assert entries == len(debits) + len(credits) == len(logged | pruned_log)
