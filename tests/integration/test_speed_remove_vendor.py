"""`cardnet speed broker remove-vendor`: the broker stops paying a vendor's new bills, and finishes what it took.

Real processes (tests/integration/speedprocs.py): a broker and a vendor, a customer's card on a host, every step a
`cardnet` command. The operator removes the vendor while the broker runs: a new purchase is refused in words, by
purse and by account, with nothing paid and nothing left under way on the card; a purse payment the broker authorised
before (the purse debited on its S2, the S3 lost, the broker restarted since: nothing of it left in the broker's
memory) is finished by `cardnet speed recover` and credited; the account keeps its balance and is paid out.
Before, a vendor could not be removed at all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostprocs import cardnet
from speedprocs import KEY, NEWS, SONG, SpeedNet, build, buy_losing_s3, run


@pytest.fixture
def net(tmp_path: Path) -> Iterator[SpeedNet]:
    n = build(tmp_path)
    yield n
    n.stop()


def _end_debits(net: SpeedNet) -> dict[str, object]:
    """`cardnet speed purse end-debits`: the debits under way no purchase will finish end (listed), the ones the
    broker authorised stay (counted)."""
    return dict(run("speed", "purse", "end-debits", "--socket", net.customers["alice"].host.socket, "--broker",
                    net.broker.address))  # fmt: skip


def test_a_removed_vendor_is_paid_no_new_bill_and_what_was_taken_is_finished(net: SpeedNet) -> None:
    alice = net.customers["alice"]
    store = ("--store", str(net.tmp / "broker.db"))
    assert alice.buy(net, NEWS, limit="1.00 EUR")["price"] == "0.80 EUR"
    taken = buy_losing_s3(net, alice, KEY)  # the purse debited on the broker's S2; the S3 never reached it
    assert alice.balance() == {"EUR": 2000 - 80 - 499}

    got = run("speed", "broker", "remove-vendor", *store, "--account", "V-1")  # while the broker runs
    assert got["account"] == "V-1" and got["removed_before"] is False and got["removed_at"] > 0, got
    net.broker.stop()  # ... and the broker restarts: the payment it authorised is no longer in its memory
    net.broker.start()

    for kind in ({}, {"aggressive": True}, {"account": True}):
        e = alice.buy(net, SONG, check=False, **kind)
        assert e["error"]["reason"] == "vendor_removed", (kind, e)
        assert "no longer pays that vendor's bills" in e["error"]["message"] and "nothing was paid" in e["error"][
            "message"], e  # fmt: skip
        assert "V-1" in e["error"]["message"] and "purchase is dropped" in e["error"]["hint"], e
    purse = _end_debits(net)
    assert purse["balances"] == {"EUR": 2000 - 80 - 499}, purse  # nothing paid for the refused purchases ...
    assert net.accounts()["C-1"] == {"EUR": 8000}  # ... by purse or by account
    assert purse["ended"] == [] and purse["authorised"] == 0, purse  # the refused ended already (KEY's debited)

    # the payment the broker authorised before the vendor was removed is finished (bought through a relay: --broker)
    done = alice.recover(net, "--broker", net.broker.address)
    assert [(p["poid"], p["price"]) for p in done["finished"]] == [(taken.hex(), "4.99 EUR")], done
    assert done["dropped"] == [], done
    purse = _end_debits(net)
    assert purse["ended"] == [] and purse["authorised"] == 0 and purse["balances"] == {"EUR": 2000 - 80 - 499}
    accounts = json.loads(cardnet("speed", "broker", "accounts", *store, "--json").stdout)
    assert accounts["accounts"]["V-1"] == {"EUR": 80 + 499} and accounts["removed"] == {"V-1": got["removed_at"]}
    words = cardnet("speed", "broker", "accounts", *store).stdout
    assert "V-1 (vendor removed)" in words, words

    # auditable and paid out as before
    paid = run("speed", "broker", "payout", *store, "--account", "V-1", "--amount", "5.79 EUR")
    assert paid["balances"] == {}, paid
    again = run("speed", "broker", "remove-vendor", *store, "--account", "V-1")
    assert again == {**got, "removed_before": True}, again
    words = cardnet("speed", "broker", "remove-vendor", *store, "--account", "V-1").stdout
    assert "vendor account V-1 was removed already, on " in words, words

    # refusals in words, nothing changed
    for account, reason, hint in (("V-9", "unknown_account", "speed broker accounts"),
                                  ("C-1", "not_vendor", "vendor's account")):  # fmt: skip
        e = run("speed", "broker", "remove-vendor", *store, "--account", account, check=False)
        assert e["error"]["reason"] == reason and hint in e["error"]["hint"], e
    r = cardnet("speed", "broker", "remove-vendor", *store, "--account", "C-1", check=False)
    assert r.returncode == 2 and "is a customer's" in r.stderr and "Traceback" not in r.stderr, r
    assert json.loads(cardnet("speed", "broker", "accounts", *store, "--json").stdout)["removed"] == {
        "V-1": got["removed_at"]}  # fmt: skip


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


def test_a_removed_vendor_whose_account_is_full_is_refused_as_removed_and_what_was_taken_waits_for_room(
    net: SpeedNet,
) -> None:
    """Before, the "vendor account full" check ran before the removal's: a new purchase from a removed vendor whose
    account was full was refused `vendor_account_full` ("try again once paid out"), though no payout would ever let
    it through; and a purse payment the SAM authorised before the removal was refused "nothing was paid", its purse
    debited. Now the new purchase is refused `vendor_removed`, and the authorised payment is checked for room at
    its S3 like any other (its debit kept), and finished once the account is paid out."""
    from cardnet.protocols.speed.purse import MAX_AMOUNT

    alice = net.customers["alice"]
    store = ("--store", str(net.tmp / "broker.db"))
    taken = buy_losing_s3(net, alice, KEY)  # the purse debited on the broker's S2; the S3 never reached it
    _set_vendor_balance(net, MAX_AMOUNT - 50)  # no room for any sale
    run("speed", "broker", "remove-vendor", *store, "--account", "V-1")
    net.broker.stop()  # (the payment it authorised is no longer in its memory)
    net.broker.start()
    for kind in ({}, {"aggressive": True}, {"account": True}):
        e = alice.buy(net, SONG, check=False, **kind)
        assert e["error"]["reason"] == "vendor_removed", (kind, e)
        assert "purchase is dropped" in e["error"]["hint"], e
    assert alice.balance() == {"EUR": 2000 - 499}  # nothing paid for the refused ones

    full = alice.recover(net, "--broker", net.broker.address, check=False)
    assert full["error"]["reason"] == "vendor_account_full", full
    assert "your purse's debit is kept" in full["error"]["message"], full  # not "nothing was paid": it was
    _set_vendor_balance(net, 0)  # paid out
    done = alice.recover(net, "--broker", net.broker.address)
    assert [(p["poid"], p["price"]) for p in done["finished"]] == [(taken.hex(), "4.99 EUR")], done
    assert net.accounts()["V-1"] == {"EUR": 499} and alice.balance() == {"EUR": 2000 - 499}
