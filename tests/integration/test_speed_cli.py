"""SPEED from the command line alone (docs/speed.md, "From the command line"): a broker and a vendor process, a
customer's card on a host process, and `cardnet speed buy` in both modes and both payment modes.

What the customer receives is checked byte for byte against what the vendor sells, and the money against the
broker's accounts and the purse.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hostprocs import free_port
from speedprocs import NEWS, PIN, SONG, SpeedNet, build, run
from test_cli import cardnet


@pytest.fixture
def net(tmp_path: Path) -> Iterator[SpeedNet]:
    n = build(tmp_path)
    yield n
    n.stop()


def test_buy_in_both_modes_and_both_payment_modes(net: SpeedNet) -> None:
    alice = net.customers["alice"]
    assert alice.balance() == {"EUR": 2000}
    listed = run("speed", "catalogue", "--vendor", net.vendor.address, "--ca-cert", str(net.tmp / "ca.pem"))
    assert {p["product"]: p["price"] for p in listed["products"]}[SONG] == "2.50 EUR"

    got = alice.buy(net, SONG, limit="2.20 EUR")  # negotiated down from 2.50 (the floor is 2.00)
    assert got["price"] == "2.20 EUR"
    assert Path(got["files"][0]).read_bytes() == net.song
    assert alice.balance() == {"EUR": 2000 - 220}

    got = alice.buy(net, NEWS, SONG, limit="5.00 EUR", aggressive=True)
    assert got["price"] == "3.30 EUR"
    assert Path(got["files"][0]).read_text() == "the news of the day\n" * 20
    assert Path(got["files"][1]).read_bytes() == net.song
    assert alice.balance() == {"EUR": 2000 - 220 - 330}

    got = alice.buy(net, NEWS, limit="1.00 EUR", account=True)
    assert got["price"] == "0.80 EUR"
    accounts = net.accounts()
    assert accounts["V-1"] == {"EUR": 220 + 330 + 80}
    assert accounts["C-1"] == {"EUR": 10_000 - 2000 - 80}


def test_refusals_say_what_to_do(net: SpeedNet) -> None:
    alice = net.customers["alice"]
    low = alice.buy(net, SONG, limit="1.00 EUR", check=False)
    assert low["error"]["reason"] == "no_agreement" and "limit" in low["error"]["hint"]
    unknown = alice.buy(net, "no-such-thing", check=False)
    assert unknown["error"]["reason"] == "unknown_product" and "catalogue" in unknown["error"]["hint"]
    broke = alice.buy(net, "ppv-1 Match key", "ppv-1 Match key", "ppv-1 Match key", "ppv-1 Match key",
                      "ppv-1 Match key", limit="30.00 EUR", aggressive=True, check=False)  # fmt: skip
    assert broke["error"]["reason"] == "insufficient" and "then buy again" in broke["error"]["hint"]
    assert alice.balance() == {"EUR": 2000}  # nothing was paid
    assert net.accounts()["V-1"] == {}
    # a load from a mistyped account is refused, and ends: the purse forgot it (on the SAM's word), nothing is left
    purse = ("--socket", alice.host.socket, "--broker", net.broker.address)
    mistyped = run("speed", "purse", "load", *purse, "--amount", "5.00 EUR", "--account", "C-9", check=False)
    assert mistyped["error"]["reason"] == "unknown_account" and "the purse forgot this load" in str(mistyped)
    finished = run("speed", "purse", "finish", *purse, "--account", alice.account)
    assert (finished["loads"], finished["dropped"], finished["pending_loads"]) == (0, [], 0)
    # more than the account holds (here: of a currency it has none of): the account is short, not the purse, so the
    # hint is not "load the purse first" (the very thing refused)
    short = run("speed", "purse", "load", *purse, "--amount", "5.00 USD", "--account", alice.account, check=False)
    assert short["error"]["reason"] == "insufficient", short
    assert short["error"]["hint"].startswith("your account at the broker holds less than that"), short
    # that purchase left the journal: once the purse is loaded, a recover does not pay it unasked
    run("speed", "purse", "load", "--socket", alice.host.socket, "--broker", net.broker.address, "--amount",
        "10.00 EUR", "--account", alice.account)  # fmt: skip
    assert alice.recover(net) == {"finished": [], "dropped": []}
    assert alice.balance() == {"EUR": 3000}
    # a wrong --broker once the vendor delivered: the error says how to finish, and recover --broker does
    lost = alice.buy(net, NEWS, limit="1.00 EUR", broker=f"127.0.0.1:{free_port()}", check=False)
    assert lost["error"]["reason"] == "unreachable" and "speed recover" in lost["error"]["hint"]
    assert "--broker" in lost["error"]["hint"] and "the vendor delivered" in lost["error"]["hint"], lost
    # a wrong --vendor: the hint is the vendor's (nothing paid, check --vendor), not the broker's and recover's
    # (before: "If the vendor delivered already ... once the broker is reachable, speed recover ...")
    nowhere = f"127.0.0.1:{free_port()}"
    gone = alice.buy(net, NEWS, limit="1.00 EUR", vendor=nowhere, check=False)["error"]
    assert gone["reason"] == "unreachable" and f"cannot reach the vendor at {nowhere}" in gone["message"], gone
    assert "check --vendor" in gone["hint"] and "nothing was paid" in gone["hint"], gone
    assert "broker" not in gone["hint"] and "recover" not in gone["hint"], gone
    listed = run("speed", "catalogue", "--vendor", nowhere, "--ca-cert", str(net.tmp / "ca.pem"), check=False)
    assert listed["error"]["reason"] == "unreachable" and "check --vendor" in listed["error"]["hint"], listed
    done = alice.recover(net, "--broker", net.broker.address)
    assert [d["price"] for d in done["finished"]] == ["0.80 EUR"]
    assert Path(done["finished"][0]["files"][0]).read_text() == "the news of the day\n" * 20
    assert alice.recover(net) == {"finished": [], "dropped": []}
    assert alice.balance() == {"EUR": 3000 - 80}
    assert net.accounts()["V-1"] == {"EUR": 80}


def test_broker_prune_needs_the_broker_stopped_and_keeps_the_days_not_yet_due(net: SpeedNet) -> None:
    """`cardnet speed broker prune` / `days` (docs/speed.md, "Pruning the SAM"). Today's purchases are never due,
    so nothing is pruned here: tests/integration/test_speed_broker_prune.py moves time on the same code."""
    alice = net.customers["alice"]
    assert alice.buy(net, NEWS, limit="1.00 EUR")["price"] == "0.80 EUR"
    t = str(net.tmp)
    stores = ("--store", f"{t}/broker.db", "--sam-store", f"{t}/sam.db")
    busy = run("speed", "broker", "prune", *stores, check=False)
    assert busy["error"]["reason"] == "in_use" and "stop the broker" in busy["error"]["hint"]
    net.broker.stop()
    got = run("speed", "broker", "prune", *stores, "--keep-days", "1")
    assert {k: got[k] for k in ("days", "settled", "entries", "open")} == {"days": [], "settled": 0, "entries": 0,
                                                                          "open": 0}  # fmt: skip
    assert run("speed", "broker", "days", "--store", f"{t}/broker.db") == {"days": []}
    net.broker.start()  # the broker serves on with today's log in its SAM
    assert alice.buy(net, NEWS, limit="1.00 EUR")["price"] == "0.80 EUR"
    assert net.accounts()["V-1"] == {"EUR": 160}


def test_a_purse_full_of_payments_under_way_says_which_commands_finish_them(net: SpeedNet) -> None:
    """Sixteen purchases whose payment never reached the broker (a wrong --broker) fill the purse's debits under way:
    the 17th `buy` is refused `debits_pending` before anything is bought, and the advice names `speed recover` and
    `speed purse end-debits`. end-debits ends them on the SAM's word (nothing was paid for any), recover then drops
    their purchases (`debit_refused`), and the purse pays again."""
    import forkhost

    alice = net.customers["alice"]
    wrong = f"127.0.0.1:{free_port()}"
    out = str(net.tmp / f"{alice.name}-bought")
    buy = ["speed", "buy", "--socket", alice.host.socket, "--vendor", net.vendor.address, "--broker-cert",
           str(net.tmp / "broker.pem"), "--ca-cert", str(net.tmp / "ca.pem"), "--limit", "1.00 EUR", "--out", out,
           "--product", NEWS, "--aggressive"]  # fmt: skip
    with forkhost.forker((*forkhost.HOST_MODULES, "cardnet.cli.speed", "cardnet.cli.speed_purchase")) as f:

        def forked(*args: str) -> Any:  # `cardnet ... --json` as a fork of f: the same entry point, its own process
            code, stdout, stderr = f.run([*args, "--json"], {**os.environ, "CARDNET_PIN": PIN}, os.getcwd(), 120.0)
            return json.loads(stdout) if stdout.strip() else {"stderr": stderr, "code": code}

        for _ in range(16):
            lost = forked(*buy, "--broker", wrong)
            assert lost["error"]["reason"] == "unreachable"
        full = forked(*buy, "--broker", net.broker.address)
    assert full["error"]["reason"] == "debits_pending" and "nothing was bought" in str(full)
    hint = full["error"]["hint"]
    assert "cardnet speed recover" in hint and "cardnet speed purse end-debits" in hint
    ended = run("speed", "purse", "end-debits", "--socket", alice.host.socket, "--broker", net.broker.address)
    assert len(ended["ended"]) == 16 and ended["authorised"] == 0 and ended["balances"] == {"EUR": 2000}
    again = alice.recover(net, "--broker", net.broker.address)
    assert again["finished"] == [] and {d["reason"] for d in again["dropped"]} == {"debit_refused"}
    assert len(again["dropped"]) == 16
    assert alice.buy(net, NEWS, limit="1.00 EUR", aggressive=True)["price"] == "0.80 EUR"
    assert alice.balance() == {"EUR": 2000 - 80} and net.accounts()["V-1"] == {"EUR": 80}


def test_a_vendor_run_with_pay_within_signs_a_deadline_into_its_bills(tmp_path: Path) -> None:
    """``cardnet speed vendor run --pay-within 600``: the bill of a purchase left unpaid (the broker could not be
    reached) carries the deadline, 600 s after it was made, and is paid before it by ``cardnet speed recover``.
    Before, the option did not exist."""
    from cardnet.cli.speed import JOURNAL
    from cardnet.crypto import cms
    from cardnet.protocols.speed import messages as sm
    from cardnet.services.speed.customer import Journal

    n = build(tmp_path, vendor_args=("--pay-within", "600"))
    try:
        alice = n.customers["alice"]
        before = time.time()
        refused = alice.buy(n, NEWS, limit="1.00 EUR", check=False, broker=f"127.0.0.1:{free_port()}")
        assert refused["error"]["reason"] == "unreachable", refused
        (pending,) = Journal(tmp_path / "alice-bought" / JOURNAL).pending()
        bill = sm.decode(sm.BILL, cms.verify(pending.bill).content, "bill")
        assert before + 600 <= bill["pay_by"] <= time.time() + 601, bill["pay_by"]
        got = alice.recover(n, "--broker", n.broker.address)
        assert len(got["finished"]) == 1 and got["dropped"] == [], got
    finally:
        n.stop()


def test_an_operator_tops_up_a_customer_account_while_the_broker_runs(net: SpeedNet) -> None:
    alice = net.customers["alice"]
    purse = ("--socket", alice.host.socket, "--broker", net.broker.address, "--account", alice.account)
    assert net.accounts()[alice.account] == {"EUR": 8000}  # 100.00 deposited, 20.00 loaded into the purse
    short = run("speed", "purse", "load", *purse, "--amount", "90.00 EUR", check=False)
    assert short["error"]["reason"] == "insufficient", short
    run("speed", "purse", "finish", *purse)
    store = ("--store", str(net.tmp / "broker.db"))
    got = run("speed", "broker", "deposit", *store, "--account", alice.account, "--amount", "15.00 EUR")
    assert got == {"account": alice.account, "balances": {"EUR": 9500}}
    run("speed", "purse", "load", *purse, "--amount", "90.00 EUR")  # the running broker sees the deposit
    assert alice.balance() == {"EUR": 2000 + 9000}
    assert net.accounts()[alice.account] == {"EUR": 500}
    # refusals in words, nothing changed: bad amounts, an unknown account, a vendor's account, too much
    for amount, reason in (("0.00 EUR", "bad_amount"), ("-5 EUR", "bad_amount"), ("5", "bad_price"),
                           ("1.234 EUR", "bad_price"), ("5 EURO", "bad_currency")):  # fmt: skip
        e = run("speed", "broker", "deposit", *store, "--account", alice.account, "--amount", amount, check=False)
        assert e["error"]["reason"] == reason and e["error"]["hint"], (amount, e)
    for account, reason, words in (("C-9", "unknown_account", "speed broker accounts"),
                                   ("V-1", "not_customer", "customer")):  # fmt: skip
        e = run("speed", "broker", "deposit", *store, "--account", account, "--amount", "1.00 EUR", check=False)
        assert e["error"]["reason"] == reason and words in e["error"]["hint"], e
    e = run(
        "speed", "broker", "deposit", *store, "--account", alice.account, "--amount", f"{2**53 // 100} EUR", check=False
    )
    assert e["error"]["reason"] == "too_much" and "deposit less" in e["error"]["hint"], e
    assert net.accounts() == {alice.account: {"EUR": 500}, "V-1": {}}
    words = cardnet("speed", "broker", "deposit", *store, "--account", alice.account, "--amount", "0.25 EUR")
    assert words.returncode == 0 and words.stdout.strip() == f"customer account {alice.account}: 5.25 EUR", words


def _set_vendor_balance(net: SpeedNet, minor: int) -> None:
    """The operator's side of the broker's store: V-1 holds ``minor`` EUR (as months of sales would make it)."""
    from cardnet.services.speed import broker_accounts as sb_accounts
    from cardnet.services.speed import broker_records as sb_records
    from cardnet.store import open_store

    store = open_store(f"sqlite:///{net.tmp / 'broker.db'}", kind="speed-broker", create=False)
    with store.transaction() as txn:
        owner = sb_records._ACCOUNT.decode(txn.get(sb_records.ACCOUNTS, b"V-1"))["owner"]
        sb_accounts._put_txn(txn, "V-1", owner, {"EUR": minor})
    store.close()


def test_a_sale_the_vendors_account_cannot_take_is_refused_in_words_with_nothing_paid(net: SpeedNet) -> None:
    from cardnet.protocols.speed.purse import MAX_AMOUNT

    alice = net.customers["alice"]
    _set_vendor_balance(net, MAX_AMOUNT - 50)  # 0.80 EUR more would pass the most an account holds
    before = net.accounts()
    for kind in ({}, {"aggressive": True}, {"account": True}):
        e = alice.buy(net, NEWS, limit="1.00 EUR", check=False, **kind)
        assert e["error"]["reason"] == "vendor_account_full", (kind, e)
        assert "nothing was paid" in e["error"]["message"] and str(MAX_AMOUNT) in e["error"]["message"], e
        assert "speed recover" in e["error"]["hint"], e
    assert net.accounts() == before and alice.balance() == {"EUR": 2000}  # nothing half-written
    _set_vendor_balance(net, MAX_AMOUNT - 3 * 80)  # paid out: room for the three, the cap reached, not passed
    got = alice.recover(net)  # the purchases waited in --out, as the hint says
    assert len(got["finished"]) == 3 and got["dropped"] == [], got
    assert net.accounts()["V-1"] == {"EUR": MAX_AMOUNT}
    assert alice.balance() == {"EUR": 2000 - 2 * 80}
