"""A purchase of scrip pending at a broker that now listens at another address is retried there (real processes).

``cardnet millicent retry --at`` re-points only a vendor's pending spends: a purchase pending at a broker that
was restarted on another port kept its old address, and no command could send it to the new one.
``retry --broker HOST:PORT`` does; the error of the purchase says so, and the wallet buys there afterwards.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from hostprocs import Service, cardnet
from test_millicent_catalogue import VID, licensed_broker

from cardnet.services.millicent import broker as mb
from cardnet.services.millicent.wallet import Wallet
from cardnet.store import SqliteStore


def test_a_purchase_pending_at_a_broker_that_moved_is_retried_at_its_new_address(tmp_path: Path) -> None:
    v, b, wallet = str(tmp_path / "vendor.db"), str(tmp_path / "broker.db"), str(tmp_path / "alice.db")
    licensed_broker(v, b)
    first = Service(tmp_path, "millicent", "broker", "run", "--store", b, "--listen", "127.0.0.1:0")
    old = first.start()
    try:
        with SqliteStore(wallet) as store:
            cid = asyncio.run(Wallet(store).open_account(old))
    finally:
        first.stop()
    with SqliteStore(b) as store:
        mb.deposit(store, cid, 1000)

    moved = Service(tmp_path, "millicent", "broker", "run", "--store", b, "--listen", "127.0.0.1:0")
    new = moved.start()
    try:
        assert new != old
        r = cardnet("millicent", "buy", "--wallet", wallet, "--vendor", VID, "--value", "100", check=False)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"cannot reach {old}" in r.stderr and "retry --broker HOST:PORT" in r.stderr, r.stderr
        with SqliteStore(wallet) as store:
            [(_, pending)] = Wallet(store).pending()
        assert (pending["kind"], pending["to"]) == ("buy", old)

        out = json.loads(cardnet("millicent", "retry", "--wallet", wallet, "--broker", new, "--json").stdout)
        [row] = out["requests"]
        assert row["outcome"] == "bought", row
        with SqliteStore(wallet) as store:
            w = Wallet(store)
            assert w.pending() == [] and [s.value for s in w.scrip()] == [100]
            # The broker answered at its new address: the next purchase goes there without being told.
            assert asyncio.run(w.buy(bytes.fromhex(VID), 50)).value == 50
    finally:
        moved.stop()
    with SqliteStore(b) as store:
        assert mb.BrokerCore(store).account(cid) == 1000 - 100 - 50
