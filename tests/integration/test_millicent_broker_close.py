"""A Millicent broker that stops while a purchase is being decided, over real TCP with a real wallet.

``BrokerServer.aclose`` used to close at once: a purchase whose transaction was running in the worker thread
was decided (the balance debited, the scrip minted and stored) but its answer never sent, the connection cut,
and the customer had to retry. Now the broker stops in order, as the vendor does: it takes no more requests,
finishes those taken and writes their answers, then closes (within ``close_wait_s``). Past that bound the answer
is still stored: the wallet's retry at the restarted broker fetches it, and the customer is debited once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostprocs import Service
from waiting import Held

from cardnet.protocols import millicent as mc
from cardnet.services.millicent import broker as mb
from cardnet.services.millicent import vendor as mv
from cardnet.services.millicent.wallet import Wallet, WalletError
from cardnet.store import SqliteStore
from cardnet.transport import BrokenError, ClosedError, dial
from cardnet.wire import Message, Uid

VID = bytes.fromhex("00000000000000a1")
WAIT_S = 10.0
ME = Uid(b"\x00" * 12, 1)


class HeldPurchases(Held, mb.BrokerCore):
    """The broker's core whose next purchase, once ``hold()`` is called, waits in the worker thread for
    ``release()`` before it is decided: a slow step at a moment the test chooses."""

    def begin_purchase(self, param: bytes, now: int, *, keep_refusals: bool = True) -> bytes | mb.VendorCall:
        self.wait_if_held("purchase", WAIT_S)
        return super().begin_purchase(param, now, keep_refusals=keep_refusals)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[str, SqliteStore, Wallet]]:
    """A broker store licensed by a vendor, and a wallet (its account is opened by each test)."""
    with SqliteStore(str(tmp_path / "vendor.db")) as vstore:
        mv.init_vendor(vstore, VID, rng=random.Random(1).randbytes)
        licence = mv.export_licence(vstore, "bob")
    b = str(tmp_path / "broker.db")
    store = SqliteStore(b)
    mb.add_licence(store, licence)
    wallet = Wallet(SqliteStore(str(tmp_path / "alice.db")))
    try:
        yield b, store, wallet
    finally:
        wallet.store.close()
        store.close()


async def open_and_credit(wallet: Wallet, store: SqliteStore, at: str) -> bytes:
    cid = await wallet.open_account(at)
    mb.deposit(store, cid, 100)
    return cid


def test_a_broker_that_stops_answers_the_purchase_it_was_deciding(world: tuple[str, SqliteStore, Wallet]) -> None:
    """Alice's purchase is being decided when the broker is told to stop: she gets her scrip. A request sent
    after the stop began is not taken: its connection is closed unanswered."""
    _, store, wallet = world
    core = HeldPurchases(store)

    async def go() -> None:
        server = mb.BrokerServer(core)
        host, port = await server.start("127.0.0.1", 0)
        at = f"{host}:{port}"
        async with asyncio.timeout(WAIT_S):
            cid = await open_and_credit(wallet, store, at)
            core.hold()
            buy = asyncio.create_task(wallet.buy(VID, 40))
            assert await asyncio.to_thread(core.entered.wait, WAIT_S)  # its step has begun in the worker
            stop = asyncio.create_task(server.aclose())
            await asyncio.sleep(0)  # the stop has begun: no new request is taken from here on
            assert not stop.done()
            async with await dial(host, port) as conn:
                await conn.send(Message(ME, ME, mc.OPEN.code, mc.OPEN_SCHEMA.encode({"pub": b"\x04" * 65})))
                with pytest.raises((ClosedError, BrokenError)):  # closed by the broker, unanswered
                    await conn.recv()
            core.release()
            scrip = await buy
            await stop
        assert scrip.value == 40 and wallet.pending() == []
        assert core.account(cid) == 60

    asyncio.run(go())


def test_an_answer_left_unsent_past_the_close_bound_is_fetched_by_the_wallets_retry(
    world: tuple[str, SqliteStore, Wallet], caplog: pytest.LogCaptureFixture
) -> None:
    """The purchase outlasts the close bound: the broker closes without the answer (logged), the purchase is still
    decided; the wallet keeps it pending and its retry at the restarted broker gets the same scrip, debited once."""
    _, store, wallet = world
    core = HeldPurchases(store)
    cid = b""
    port = 0

    async def stopped() -> None:
        nonlocal cid, port
        server = mb.BrokerServer(core, close_wait_s=0.05)
        host, port = await server.start("127.0.0.1", 0)
        async with asyncio.timeout(WAIT_S):
            cid = await open_and_credit(wallet, store, f"{host}:{port}")
            core.hold()
            buy = asyncio.create_task(wallet.buy(VID, 40))
            assert await asyncio.to_thread(core.entered.wait, WAIT_S)
            await server.aclose()  # gives up waiting for the held purchase
            core.release()
            with pytest.raises(WalletError) as err:
                await buy
            assert err.value.reason == "no_answer"

    with caplog.at_level(logging.WARNING, logger="cardnet.millicent.broker"):
        asyncio.run(stopped())  # returns once the worker thread's step has ended
    assert any("send the same purchase again" in r.getMessage() for r in caplog.records)
    assert core.account(cid) == 60 and len(wallet.pending()) == 1

    async def restarted() -> list[dict[str, object]]:
        server = mb.BrokerServer(mb.BrokerCore(store))
        await server.start("127.0.0.1", port)  # where the wallet sent the purchase
        try:
            async with asyncio.timeout(WAIT_S):
                return await wallet.retry_pending(0)
        finally:
            await server.aclose()

    rows = asyncio.run(restarted())
    assert [q["outcome"] for q in rows] == ["bought"]
    assert wallet.pending() == [] and [s.value for s in wallet.scrip(VID)] == [40]
    assert core.account(cid) == 60


class HeldSweep(Held, mb.BrokerCore):
    """The broker's core whose next sweep of stale reservations, once ``hold()`` is called, waits in the worker
    thread for ``release()``: a slow sweep at a moment the test chooses."""

    def release_stale(self, now: int) -> list[dict[str, object]]:
        self.wait_if_held("sweep", WAIT_S)
        return super().release_stale(now)


def test_a_sweep_under_way_does_not_hold_the_stop_past_its_bound(world: tuple[str, SqliteStore, Wallet]) -> None:
    """The broker's sweep of stale reservations is one more step on the store: a stop while it runs waits for it
    within ``close_wait_s``, like a request's step, then closes (before, the stop awaited the sweep unbounded)."""
    _, store, _ = world
    core = HeldSweep(store)
    core.hold()

    async def go() -> None:
        server = mb.BrokerServer(core, close_wait_s=0.05)
        await server.start("127.0.0.1", 0)  # sweeps at once: the sweep is held in its thread
        assert await asyncio.to_thread(core.entered.wait, WAIT_S)
        try:
            await asyncio.wait_for(server.aclose(), WAIT_S)  # (a guard on a hang, not a measure)
        except TimeoutError:
            pytest.fail("the broker's stop waited for the held sweep past its close bound")
        finally:
            core.release()

    asyncio.run(go())  # returns once the worker thread's sweep has ended


def test_broker_run_stops_in_order_on_sigterm(world: tuple[str, SqliteStore, Wallet], tmp_path: Path) -> None:
    """``cardnet millicent broker run`` stopped with SIGTERM goes through the same orderly stop and exits 0."""
    b, _, wallet = world
    broker = Service(tmp_path, "millicent", "broker", "run", "--store", b, "--listen", "127.0.0.1:0")
    at = broker.start()
    try:
        assert asyncio.run(wallet.open_account(at))
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGTERM)
        assert broker.proc.wait(WAIT_S) == 0
    finally:
        broker.stop()
