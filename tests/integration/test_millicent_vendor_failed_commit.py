"""A Millicent vendor whose store fails to commit a batch: its client learns at once, and buys once the store works.

The failure is SQLite's own: a trigger on the store's key-value table inserts, with every spent record, a row that
breaks a deferred foreign key, so the COMMIT of a batch that accepts scrip fails and rolls it back; the store works
again once the trigger is dropped. The vendor's per-connection sender used to die with the batch's error while
the connection stayed open: that reply and every later one on the connection were never sent, and the client
waited for its own timeout. Then the connection was closed at once (logged); now each request of the failed batch
is answered ``unavailable`` at once (not decided, nothing spent), the connection goes on, and the same request
sent again is served. A store error that is not a failed write (a closed store) still closes the connection.
"""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

import pytest
from failing_commits import fail_commits

from cardnet.protocols import millicent as mc
from cardnet.services.millicent import vendor as mv
from cardnet.store import SqliteStore
from cardnet.transport import BrokenError, ClosedError, dial
from cardnet.wire import Message, Uid

ME = Uid(b"\x00" * 12, 1)
VID = bytes.fromhex("00000000000000a1")
ALICE = bytes.fromhex("0100000000000001")
NOW = 1_800_000_000
PAGE = b"<p>hello</p>"
WAIT_S = 5.0  # far above a commit on loopback: the client must not need its own timeout


def fail_spent_commits(db: Path, on: bool) -> None:
    """While ``on``, every transaction that adds to the vendor's spent list fails at its COMMIT."""
    fail_commits(db, on, trigger="fail_spent", table="kv", when=f"NEW.tbl = '{mv.SPENT}'")


def test_a_failed_batch_is_answered_unavailable_at_once_and_the_request_is_served_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "vendor.db"
    store = SqliteStore(str(db))
    mv.init_vendor(store, VID, rng=random.Random(1).randbytes, validity_s=3600)
    mv.add_product(store, "page", 3, PAGE)
    core = mv.VendorCore(store)
    secret = mc.customer_secret(core.vendor.customer_masters, ALICE)

    def request(i: int) -> Message:
        scrip = mc.mint(core.vendor.scrip_secrets, index=0, vendor=VID, value=10, serial=100 + i, customer_id=ALICE,
                        expiry=NOW + 100)  # fmt: skip
        mt, p = mc.make_request(scrip, rid=bytes([i]) * 16, level=mc.Level.THEFT, secret=secret, price=3,
                                product="page")  # fmt: skip
        return Message(ME, ME, mt, p)

    def served(i: int, m: Message) -> bool:
        out = mc.open_reply(m.mtype, m.param, rid=bytes([i]) * 16, level=mc.Level.THEFT, secret=secret)
        return out.status == mc.Status.OK and out.authentic and out.content == PAGE

    def spent() -> int:
        with store.transaction() as txn:
            return len(txn.scan(mv.SPENT))

    async def go() -> None:
        server = mv.VendorServer(core, clock=lambda: float(NOW))
        host, port = await server.start("127.0.0.1", 0)
        try:
            async with asyncio.timeout(WAIT_S):
                conn = await dial(host, port)
                try:
                    await conn.send(request(0))
                    assert served(0, await conn.recv())
                    fail_spent_commits(db, True)
                    await conn.send(request(1))
                    got = await conn.recv()  # answered at once, not left hanging, the connection kept
                    out = mc.open_reply(got.mtype, got.param, rid=bytes([1]) * 16, level=mc.Level.THEFT, secret=secret)
                    assert out.status == mc.Status.UNAVAILABLE and "cannot write its store" in out.detail
                    assert spent() == 1  # the failed batch accepted nothing
                    fail_spent_commits(db, False)
                    await conn.send(request(1))  # the same request again, as a wallet's retry sends it
                    assert served(1, await conn.recv())
                    await conn.send(request(2))  # and a new purchase on the same connection
                    assert served(2, await conn.recv())
                finally:
                    await conn.aclose()
            assert spent() == 3
            # a store error that is not a failed write (the store closed under the vendor) says nothing of a disk:
            # the connection is closed, as for any other failed batch
            store.close()
            async with asyncio.timeout(WAIT_S):
                conn = await dial(host, port)
                try:
                    await conn.send(request(3))
                    with pytest.raises((ClosedError, BrokenError)):
                        await conn.recv()
                finally:
                    await conn.aclose()
        finally:
            await server.aclose()

    try:
        with caplog.at_level(logging.WARNING, logger="cardnet.millicent.vendor"):
            asyncio.run(go())
    finally:
        store.close()
    assert any("batch of 1 failed" in r.getMessage() for r in caplog.records)
    assert any("the store cannot be written" in r.getMessage() for r in caplog.records)
