"""`cardnet speed recover` that stops at a purchase it cannot finish yet keeps what it finished before it.

Real processes (tests/integration/speedprocs.py): a broker, a vendor, the customer's card on a host, every step a
`cardnet` command. Purchases wait in the journal, delivered but unpaid while the broker was down; one of them names a
broker address where nothing listens. Recover pays the ones before it (the journal's order) and stops there,
`unreachable`. Before, the products of the ones it paid were written only once the whole journal was done: they were
marked paid in the journal but never written into --out, and no later recover wrote them (they were no longer under
way): paid for, and not there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hostprocs import free_port
from speedprocs import NEWS, SpeedNet, build

from cardnet.services.speed.customer import Journal


@pytest.fixture
def net(tmp_path: Path) -> Iterator[SpeedNet]:
    n = build(tmp_path)
    yield n
    n.stop()


def test_recover_stopped_by_an_unreachable_broker_keeps_the_products_it_paid_for(net: SpeedNet) -> None:
    alice = net.customers["alice"]
    out = net.tmp / "alice-bought"
    journal = Journal(out / ".purchases")
    nowhere = f"127.0.0.1:{free_port()}"
    e = alice.buy(net, NEWS, limit="1.00 EUR", check=False, broker=nowhere)
    assert e["error"]["reason"] == "unreachable", e
    (stuck,) = journal.pending()
    net.broker.stop()
    for _ in range(12):  # until one sorts before the stuck one in the journal (so recover pays it first)
        e = alice.buy(net, NEWS, limit="1.00 EUR", check=False)
        assert e["error"]["reason"] == "unreachable", e
        if min(r.nid for r in journal.pending()) < stuck.nid:
            break
    net.broker.start()
    first = [r.nid for r in journal.pending() if r.nid < stuck.nid]
    assert first, "no purchase sorted before the stuck one in 12"

    e = alice.recover(net, check=False)
    assert e["error"]["reason"] == "unreachable" and nowhere in e["error"]["message"], e
    paid = [r for r in journal.all() if r.receipt is not None]
    assert sorted(r.nid for r in paid) == sorted(first), paid  # paid up to the stuck one
    for r in paid:  # ... and their products are in --out, with the receipt
        assert (out / f"{r.poid.hex()[-16:]}-0.bin").read_text() == "the news of the day\n" * 20, r
        assert (out / f"{r.poid.hex()[-16:]}.receipt").read_bytes() == r.receipt
    assert alice.balance() == {"EUR": 2000 - 80 * len(paid)}
