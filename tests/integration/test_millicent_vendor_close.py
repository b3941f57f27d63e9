"""A Millicent vendor that stops while a batch is being committed, over real TCP with a real wallet.

The batch's transaction runs in the server's worker thread (as on a slow disk) and is held there, written but
not yet returned, while the server is told to stop. ``VendorServer.aclose`` used to cancel its committer at
once: the transaction committed anyway (the scrip was spent, its reply stored) but the reply was never sent,
the connection was closed, and the customer had to find the vendor again and retry. Now the server stops in
order: it takes no more requests, lets the batch in progress commit and its replies be written, then closes
(within ``close_wait_s``). If the commit outlasts that bound, the reply is still stored: the wallet's retry at
the restarted vendor fetches it, and the scrip is spent once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hostprocs import Service, cardnet
from waiting import Held

from cardnet.protocols import millicent as mc
from cardnet.services.millicent import vendor as mv
from cardnet.services.millicent.wallet import SCRIP, SECRETS, Wallet, WalletError
from cardnet.store import SqliteStore
from cardnet.transport import BrokenError, ClosedError, dial
from cardnet.wire import Message, Uid

VID = bytes.fromhex("00000000000000a1")
ALICE = bytes.fromhex("0100000000000001")
PAGE = b"<p>hello</p>"
WAIT_S = 10.0
ME = Uid(b"\x00" * 12, 1)


class HeldCommits(Held, mv.VendorCore):
    """The vendor's core whose next transaction, once ``hold()`` is called, waits in the committing thread for
    ``release()`` before it runs: a commit that is slow (a busy disk) at a moment the test chooses."""

    def commit_batch(self, b: mv.Batch, before_commit: Callable[[], None] | None = None) -> list[tuple[int, bytes]]:
        self.wait_if_held("commit", WAIT_S)
        return super().commit_batch(b, before_commit)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[SqliteStore, Wallet]]:
    store = SqliteStore(str(tmp_path / "vendor.db"))
    mv.init_vendor(store, VID, rng=random.Random(1).randbytes, validity_s=3600)
    mv.add_product(store, "page", 3, PAGE)
    core = mv.VendorCore(store)
    wallet = Wallet(SqliteStore(str(tmp_path / "alice.db")))
    with wallet.store.transaction() as txn:
        txn.put(SECRETS, VID, mc.customer_secret(core.vendor.customer_masters, ALICE))
        s = mc.mint(core.vendor.scrip_secrets, index=0, vendor=VID, value=10, serial=100, customer_id=ALICE,
                    expiry=int(time.time()) + 3600)  # fmt: skip
        txn.put(SCRIP, VID + s.scrip_id, s.encode())
    try:
        yield store, wallet
    finally:
        wallet.store.close()
        store.close()


def spent(store: SqliteStore) -> int:
    with store.transaction() as txn:
        return len(txn.scan(mv.SPENT))


def test_a_vendor_that_stops_sends_the_replies_of_the_batch_it_was_committing(
    world: tuple[SqliteStore, Wallet],
) -> None:
    """Alice's purchase is being committed when the server is told to stop: she gets her page and change. A
    purchase sent after the stop began is not taken: its connection is closed unanswered and nothing is spent."""
    store, wallet = world
    core = HeldCommits(store)
    secret = mc.customer_secret(core.vendor.customer_masters, ALICE)
    other = mc.mint(core.vendor.scrip_secrets, index=0, vendor=VID, value=10, serial=101, customer_id=ALICE,
                    expiry=int(time.time()) + 3600)  # fmt: skip
    late = Message(ME, ME, *mc.make_request(other, rid=b"l" * 16, level=mc.Level.THEFT, secret=secret, price=3,
                                            product="page"))  # fmt: skip

    async def go() -> None:
        server = mv.VendorServer(core, slow_commit_s=-1.0)  # every commit in the worker thread
        host, port = await server.start("127.0.0.1", 0)
        at = f"{host}:{port}"
        core.hold()
        async with asyncio.timeout(WAIT_S):
            spend = asyncio.create_task(wallet.spend(VID, at, "page", 3, int(time.time())))
            assert await asyncio.to_thread(core.entered.wait, WAIT_S)  # its transaction has begun in the worker
            stop = asyncio.create_task(server.aclose())
            await asyncio.sleep(0)  # the stop has begun: no new request is taken from here on
            assert not stop.done()
            async with await dial(host, port) as conn:
                await conn.send(late)
                with pytest.raises((ClosedError, BrokenError)):  # closed by the vendor, unanswered
                    await conn.recv()
            core.release()
            r = await spend
            await stop
        assert (r.status, r.content, r.change) == (mc.Status.OK, PAGE, 7)
        assert wallet.pending() == [] and [s.value for s in wallet.scrip(VID)] == [7]
        with pytest.raises(WalletError) as err:  # the vendor is gone: its port no longer answers
            await wallet.spend(VID, at, "page", 3, int(time.time()))
        assert err.value.reason == "unreachable"

    asyncio.run(go())
    assert spent(store) == 1


def test_a_reply_left_unsent_past_the_close_bound_is_fetched_by_the_wallets_retry(
    world: tuple[SqliteStore, Wallet], caplog: pytest.LogCaptureFixture
) -> None:
    """The commit outlasts the close bound: the server closes without the reply (logged), the transaction still
    commits, the wallet keeps the request pending; its retry at the restarted vendor gets the stored reply (the
    page and the same change), and the scrip stays spent once."""
    store, wallet = world
    core = HeldCommits(store)

    async def stopped() -> None:
        server = mv.VendorServer(core, slow_commit_s=-1.0, close_wait_s=0.05)
        host, port = await server.start("127.0.0.1", 0)
        core.hold()
        async with asyncio.timeout(WAIT_S):
            spend = asyncio.create_task(wallet.spend(VID, f"{host}:{port}", "page", 3, int(time.time())))
            assert await asyncio.to_thread(core.entered.wait, WAIT_S)
            await server.aclose()  # gives up waiting for the held commit
            core.release()
            with pytest.raises(WalletError) as err:
                await spend
            assert err.value.reason == "no_answer"

    with caplog.at_level(logging.WARNING, logger="cardnet.millicent.vendor"):
        asyncio.run(stopped())  # returns once the worker thread's commit has ended
    assert any("send the same request again" in r.getMessage() for r in caplog.records)
    assert spent(store) == 1  # committed after the server had closed
    assert len(wallet.pending()) == 1
    assert wallet.scrip(VID) == []

    async def restarted() -> list[dict[str, object]]:
        server = mv.VendorServer(mv.VendorCore(store))
        host, port = await server.start("127.0.0.1", 0)
        try:
            async with asyncio.timeout(WAIT_S):
                return await wallet.retry_pending(int(time.time()), at=f"{host}:{port}")
        finally:
            await server.aclose()

    rows = asyncio.run(restarted())
    assert [(q["outcome"], q["detail"]) for q in rows] == [("ok", "change 7")]
    assert wallet.pending() == [] and [s.value for s in wallet.scrip(VID)] == [7]
    assert spent(store) == 1


def test_vendor_run_stops_in_order_on_sigterm(tmp_path: Path) -> None:
    """``cardnet millicent vendor run`` stopped with SIGTERM (what a service manager sends) goes through the same
    orderly stop as Ctrl-C and exits 0; it used to die on the signal at once, whatever it was committing."""
    v = str(tmp_path / "vendor.db")
    cardnet("millicent", "vendor", "init", "--store", v, "--id", VID.hex())
    cardnet("millicent", "vendor", "add-page", "--store", v, "--name", "page", "--price", "3", "--text", "hello")
    store = SqliteStore(v)
    try:
        core = mv.VendorCore(store)
        secret = mc.customer_secret(core.vendor.customer_masters, ALICE)
        scrip = mc.mint(core.vendor.scrip_secrets, index=0, vendor=VID, value=10, serial=100, customer_id=ALICE,
                        expiry=int(time.time()) + 3600)  # fmt: skip
    finally:
        store.close()
    rid = b"q" * 16
    request = Message(ME, ME, *mc.make_request(scrip, rid=rid, level=mc.Level.THEFT, secret=secret, price=3,
                                               product="page"))  # fmt: skip
    vendor = Service(tmp_path, "millicent", "vendor", "run", "--store", v, "--listen", "127.0.0.1:0")
    host, port = vendor.start().rsplit(":", 1)
    try:

        async def buy() -> mc.Outcome:
            async with asyncio.timeout(WAIT_S), await dial(host, int(port)) as conn:
                await conn.send(request)
                m = await conn.recv()
            return mc.open_reply(m.mtype, m.param, rid=rid, level=mc.Level.THEFT, secret=secret)

        assert asyncio.run(buy()).content == b"hello"
        assert vendor.proc is not None
        vendor.proc.send_signal(signal.SIGTERM)
        assert vendor.proc.wait(WAIT_S) == 0
    finally:
        vendor.stop()
