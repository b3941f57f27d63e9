"""Stock reserved for a bulk-mode sale whose customer never sends the purchase again goes back to stock, with real
broker and vendor processes.

Before, a piece bought for a sale that was answered ``pending`` stayed reserved for it for ever (``broker status``:
``reserved_value``) when its customer did not come back. Now the broker process releases it once the customer has not
sent the purchase for ``broker run --reservation-hold`` seconds (durably: ``broker status`` counts it in
``released_value`` and the broker's log names the sale); nothing was debited, and the customer who does come back
after all is served from stock as a new sale, debited once.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from typing import Any

from hostprocs import Service, cardnet
from test_millicent_hung_vendor import GUARD_S, B, add_bulk, agreement, customer, status

from cardnet.services.millicent import broker as mb
from cardnet.services.millicent.wallet import Wallet, WalletError
from cardnet.store import SqliteStore


def reserved_for_alice(tmp_path: Path) -> tuple[str, Path, str, str, bytes, Service]:
    """Alice (100 prepaid) buys 20 of vendor B's scrip while the vendor cannot be reached (answered pending); then
    the vendor runs and `broker bulk-buy` answers her sale's order: a piece of 20 is reserved for her sale.
    Returns the vendor's store, the agreement file, the broker's store, her wallet, her id and the running vendor."""
    v, file = agreement(tmp_path, B)
    b = str(tmp_path / "broker.db")
    with socket.socket() as dead:  # bound, not listening: the vendor's address refuses connections
        dead.bind(("127.0.0.1", 0))
        add_bulk(b, file, f"127.0.0.1:{dead.getsockname()[1]}", 2)
        first = Service(tmp_path, "millicent", "broker", "run", "--store", b, "--listen", "127.0.0.1:0")
        first.start()
        try:
            wallet = customer(tmp_path, b, first.address, "alice", 100)
            with SqliteStore(wallet) as store:
                alice = Wallet(store)
                try:
                    asyncio.run(asyncio.wait_for(alice.buy(bytes.fromhex(B), 20), GUARD_S))
                except WalletError as exc:
                    assert exc.reason == "pending" and "not reachable" in str(exc), exc
                else:
                    raise AssertionError("sold though the vendor could not be reached")
                cid = alice.customer_id
        finally:
            first.stop()
    assert cid is not None
    vendor = Service(tmp_path, "millicent", "vendor", "run", "--store", v, "--listen", "127.0.0.1:0")
    vendor.start()
    try:  # The operator gives the vendor's right address and buys stock: the pending order of Alice's sale is
        # answered, a piece of it reserved for her sale.
        add_bulk(b, file, vendor.address, 2)
        cardnet("millicent", "broker", "bulk-buy", "--store", b, "--vendor", B, "--value", "40", "--pieces", "2")
        bulk = status(b)[B]
        assert (bulk["reserved_value"], bulk["stock_value"], bulk["released_value"]) == (20, 20, 0), bulk
    except BaseException:
        vendor.stop()
        raise
    return v, file, b, wallet, cid, vendor


def releases(b: str) -> list[dict[str, Any]]:
    """The reservations `broker status --json` says were released, newest first."""
    rows: list[dict[str, Any]] = json.loads(cardnet("millicent", "broker", "status", "--store", b, "--json").stdout)[
        "releases"
    ]
    return rows


def test_a_reservation_whose_customer_does_not_come_back_is_released_by_the_broker(tmp_path: Path) -> None:
    _, _, b, wallet, cid, vendor = reserved_for_alice(tmp_path)
    try:  # She does not send the purchase again.
        assert releases(b) == []
        refused = cardnet("millicent", "broker", "run", "--store", b, "--reservation-hold", "5", "--vendor-timeout",
                          "5", check=False)  # fmt: skip
        assert refused.returncode == 2 and "--reservation-hold 5 is not longer than --vendor-timeout 5" in (
            refused.stderr
        ), refused.stderr
        broker = Service(tmp_path, "millicent", "broker", "run", "--store", b, "--listen", "127.0.0.1:0",
                         "--reservation-hold", "1", "--vendor-timeout", "0.5")  # fmt: skip
        broker.start()
        try:
            said = "its customer did not send the purchase again within 1 s: its piece worth 20 is back in stock"
            deadline = time.monotonic() + GUARD_S  # (only bounds a broken run)
            while time.monotonic() < deadline:
                bulk, log = status(b)[B], broker.log.read_text()
                if not bulk["reserved_value"] and said in log:
                    break
                time.sleep(0.2)
            assert (bulk["reserved_value"], bulk["stock_value"], bulk["released_value"]) == (0, 40, 20), bulk
            assert bulk["bought_value"] == 40 and bulk["pending_orders"] == 0
            assert said in log and cid.hex() in log, log
            # ... and where the operator looks: `broker status` names the sale, when and why (before: the log only).
            [row] = releases(b)
            assert {k: row[k] for k in ("customer", "vendor", "what", "value")} == {
                "customer": cid.hex(), "vendor": B, "what": "piece", "value": 20,
            }, row  # fmt: skip
            assert row["sale"].startswith(cid.hex()) and row["why"] == (
                "its customer did not send the purchase again within 1 s"
            ) and abs(row["at"] - time.time()) < GUARD_S, row  # fmt: skip
            shown = " ".join(cardnet("millicent", "broker", "status", "--store", b).stdout.split())
            assert "reservations released" in shown and cid.hex() in shown and "within 1 s" in shown, shown
            with SqliteStore(b) as bstore:
                assert mb.BrokerCore(bstore).account(cid) == 100  # nothing was debited for it
            # She comes back after all: her wallet sends the same purchase; it is sold from stock, debited once.
            with SqliteStore(wallet) as store:
                alice = Wallet(store)
                rows = asyncio.run(asyncio.wait_for(alice.retry_pending(int(time.time()), broker=broker.address),
                                                    GUARD_S))  # fmt: skip
                assert [r["outcome"] for r in rows] == ["bought"], rows
                assert [s.value for s in alice.scrip(bytes.fromhex(B))] == [20]
        finally:
            broker.stop()
    finally:
        vendor.stop()
    with SqliteStore(b) as bstore:
        assert mb.BrokerCore(bstore).account(cid) == 80
    bulk = status(b)[B]
    assert (bulk["stock_value"], bulk["reserved_value"], bulk["bought_value"]) == (20, 0, 40)
    help_text = " ".join(cardnet("millicent", "broker", "run", "--help").stdout.split())
    assert "--reservation-hold" in help_text and f"[default: {mb.RESERVATION_HOLD_S};" in help_text


def test_a_vendor_leaving_bulk_mode_shows_its_released_reservations_in_broker_status(tmp_path: Path) -> None:
    """`broker add-licence` switches vendor B to licence mode: the piece reserved for Alice's sale goes back to stock
    at once, and `broker status` (people and --json) says so, with why (before: only a line in the log)."""
    v, _, b, _, cid, vendor = reserved_for_alice(tmp_path)
    vendor.stop()
    licence = tmp_path / "licence.json"
    cardnet("millicent", "vendor", "licence", "--store", v, "--broker", "bob", "--out", str(licence))
    cardnet("millicent", "broker", "add-licence", "--store", b, "--file", str(licence))
    bulk = status(b)[B]
    assert (bulk["reserved_value"], bulk["stock_value"], bulk["released_value"]) == (0, 40, 20), bulk
    [row] = releases(b)
    assert {k: row[k] for k in ("customer", "vendor", "what", "value", "why")} == {
        "customer": cid.hex(), "vendor": B, "what": "piece", "value": 20,
        "why": "the vendor left bulk mode (its scrip is minted under licence now)",
    }, row  # fmt: skip
    shown = " ".join(cardnet("millicent", "broker", "status", "--store", b).stdout.split())
    assert "reservations released" in shown and "left bulk mode" in shown and cid.hex() in shown, shown
