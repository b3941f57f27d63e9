"""A slow bulk vendor holds a customer's purchase at most ``broker run --vendor-timeout`` seconds, all calls together.

Before, the bound was a constant 10 s for each vendor call, and a bulk-mode sale makes two (buy stock, then issue the
customer's scrip), up to four: a vendor answering each call just inside the bound held the customer's purchase past
her wallet's own wait. Here a relay between the broker process and a real vendor process holds each of the vendor's
answers back ``DELAY_S``; the broker's bound is ``TIMEOUT_S``, more than one call takes and less than the two of a
sale: the customer is answered ``pending`` in words (the broker's own, MACed answer), and once the vendor is quick
again her wallet's retry finishes the same purchase, debited once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

from hostprocs import Service, cardnet
from test_millicent_hung_vendor import GUARD_S, B, HungVendor, Listener, add_bulk, agreement, customer, status

from cardnet.services.millicent import broker as mb
from cardnet.services.millicent.wallet import Wallet, WalletError
from cardnet.store import SqliteStore

DELAY_S = 2.0  # each vendor answer is held back this long while the relay is slow
TIMEOUT_S = 3.0  # the broker's bound: one call fits in it, the two of a sale do not


class SlowRelay(Listener):
    """A TCP relay to ``target`` that forwards requests at once and, while ``slow``, each answer ``DELAY_S`` late."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.slow = True
        self.answers = 0  # answers relayed (held back or not)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        host, port = self.target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, late: bool) -> None:
            try:
                while data := await src.read(65536):
                    if late:
                        self.answers += 1
                        if self.slow:
                            await asyncio.sleep(DELAY_S)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        with contextlib.suppress(asyncio.CancelledError):  # (the relay closes with the test)
            await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))


def test_a_slow_vendor_holds_a_purchase_no_longer_than_the_brokers_vendor_timeout(tmp_path: Path) -> None:
    v, file = agreement(tmp_path, B)
    b = str(tmp_path / "broker.db")
    vendor = Service(tmp_path, "millicent", "vendor", "run", "--store", v, "--listen", "127.0.0.1:0")
    broker = Service(tmp_path, "millicent", "broker", "run", "--store", b, "--listen", "127.0.0.1:0",
                     "--vendor-timeout", str(TIMEOUT_S))  # fmt: skip
    vendor.start()

    async def go() -> None:
        relay = SlowRelay(vendor.address)
        try:
            add_bulk(b, file, await relay.start(), 2)
            broker.start()
            with SqliteStore(customer(tmp_path, b, broker.address, "alice", 100)) as store:
                alice = Wallet(store)
                try:
                    await asyncio.wait_for(alice.buy(bytes.fromhex(B), 20), GUARD_S)
                except WalletError as exc:
                    pending = exc
                else:
                    raise AssertionError("the purchase was sold though the vendor took longer than the bound")
                # The broker's own answer (MACed: the wallet believes it), in words, after the order was answered
                # and while the issue call waited: both of a sale's calls did not fit in the bound.
                assert pending.reason == "pending", pending
                assert f"the vendor did not answer the broker within its {TIMEOUT_S:g} s bound" in str(pending), pending
                assert relay.answers >= 1  # (the order's answer came; the bound ran out on the next call)
                assert [r["kind"] for _, r in alice.pending()] == ["buy"]
                relay.slow = False  # the vendor is quick again: the same purchase, sent again, is finished
                await asyncio.wait_for(alice.retry_pending(int(time.time())), GUARD_S)
                assert alice.pending() == []
                [scrip] = alice.scrip(bytes.fromhex(B))
                assert scrip.value == 20
                cid = alice.customer_id
            assert cid is not None
            with SqliteStore(b) as bstore:
                assert mb.BrokerCore(bstore).account(cid) == 80  # debited once
        finally:
            relay.close()

    try:
        asyncio.run(go())
        bulk = status(b)[B]
        assert bulk["stock_value"] + bulk["reserved_value"] + 20 == bulk["bought_value"] == 40
        help_text = " ".join(cardnet("millicent", "broker", "run", "--help").stdout.split())
        assert "--vendor-timeout" in help_text and "all its calls together" in help_text
        assert f"[default: {mb.VENDOR_TIMEOUT_S};" in help_text  # the CLI's default is the broker's
    finally:
        broker.stop()
        vendor.stop()


def test_the_operators_bulk_buy_waits_for_the_vendor_no_longer_than_its_vendor_timeout(tmp_path: Path) -> None:
    """`broker bulk-buy` waited a fixed 10 s for the vendor; now `--vendor-timeout` (as `broker run`'s): a vendor
    that never answers is given up after it, in words; the order stays pending and a later bulk-buy, the vendor
    answering again, finishes the same order (bought once)."""
    v, file = agreement(tmp_path, B)
    b = str(tmp_path / "broker.db")
    vendor = Service(tmp_path, "millicent", "vendor", "run", "--store", v, "--listen", "127.0.0.1:0")
    vendor.start()

    async def go() -> None:
        hung = HungVendor()
        try:
            add_bulk(b, file, await hung.start(), 2)
            out = await asyncio.to_thread(
                cardnet, "millicent", "broker", "bulk-buy", "--store", b, "--vendor", B, "--value", "40",
                "--vendor-timeout", "0.5", "--json", check=False,
            )  # fmt: skip
            assert out.returncode == 2, (out.stdout, out.stderr)
            error = json.loads(out.stdout)["error"]
            assert error["reason"] == "not_bought", error
            assert error["message"].startswith("the vendor did not answer within 0.5 s (slow, or not reachable at")
            assert "the order stays pending" in error["message"]
            await asyncio.wait_for(hung.asked.wait(), GUARD_S)  # the order was sent ...
            await asyncio.wait_for(hung.ended.wait(), GUARD_S)  # ... and given up
            assert status(b)[B]["pending_orders"] == 1
            add_bulk(b, file, vendor.address, 2)  # the vendor's right address
            again = await asyncio.to_thread(
                cardnet, "millicent", "broker", "bulk-buy", "--store", b, "--vendor", B, "--value", "999",
                "--vendor-timeout", "30",
            )  # fmt: skip
            assert "bought 40 in 10 pieces" in again.stdout, again.stdout  # the pending order, not a new one
        finally:
            hung.close()

    try:
        asyncio.run(go())
    finally:
        vendor.stop()
    bulk = status(b)[B]
    assert (bulk["pending_orders"], bulk["bought_value"], bulk["stock_value"]) == (0, 40, 40)
    help_text = " ".join(cardnet("millicent", "broker", "bulk-buy", "--help").stdout.split())
    assert "--vendor-timeout" in help_text and f"[default: {mb.VENDOR_TIMEOUT_S};" in help_text
