"""A product too large to deliver is refused before anything is spent, over real TCP with a real wallet.

The vendor used to find out only after the commit: the scrip was in the spent list with a reply no frame could
carry, the customer got a plain ``malformed`` refusal (at level 2 not MACed, so her wallet kept the request
pending, and every retry fetched the same oversize stored reply): she had paid and could never get the product
nor her scrip back. A product above what a reply can carry at all (``millicent.reply.content``, 60 KiB) was
worse: building its reply raised, the whole batch failed and every connection with a request in it was closed.
Now the request is refused (``too_large``, MACed) before the transaction, the scrip stays unspent and in the
wallet, and ``add_product`` / ``vendor add-page`` refuse a product that could not always be delivered.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostprocs import cardnet

from cardnet.protocols import millicent as mc
from cardnet.services.millicent import vendor as mv
from cardnet.services.millicent.wallet import SCRIP, SECRETS, Wallet
from cardnet.store import SqliteStore
from cardnet.transport import DEFAULT_MAX_FRAME, Limits, dial
from cardnet.wire import HEADER_BYTES, Message, Uid

VID = bytes.fromhex("00000000000000a1")
ALICE = bytes.fromhex("0100000000000001")
PAGE = b"<p>hello</p>"
LIMIT = 4096
WAIT_S = 10.0


@pytest.fixture
def vendor_store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(str(tmp_path / "vendor.db"))
    mv.init_vendor(store, VID, rng=random.Random(1).randbytes, validity_s=3600)
    mv.add_product(store, "page", 3, PAGE)
    try:
        yield store
    finally:
        store.close()


def put_product(store: SqliteStore, name: str, price: int, content: bytes) -> None:
    """A catalogue entry written as a store made before ``add_product`` checked the size holds it."""
    with store.transaction() as txn:
        txn.put(mv.CATALOGUE, name.encode(), price.to_bytes(8, "big") + content)


def wallet_with_scrip(path: Path, core: mv.VendorCore, values: list[int]) -> Wallet:
    """Alice's wallet holding her customer secret at the vendor and scrip of ``values`` (as bought from a broker)."""
    wallet = Wallet(SqliteStore(str(path)))
    expiry = int(time.time()) + 3600
    with wallet.store.transaction() as txn:
        txn.put(SECRETS, VID, mc.customer_secret(core.vendor.customer_masters, ALICE))
        for i, value in enumerate(values):
            s = mc.mint(core.vendor.scrip_secrets, index=0, vendor=VID, value=value, serial=100 + i,
                        customer_id=ALICE, expiry=expiry)  # fmt: skip
            txn.put(SCRIP, VID + s.scrip_id, s.encode())
    return wallet


def spent(store: SqliteStore) -> list[bytes]:
    with store.transaction() as txn:
        return [k for k, _ in txn.scan(mv.SPENT)]


@pytest.mark.parametrize("level", [mc.Level.THEFT, mc.Level.PRIVATE], ids=["level2", "level3"])
def test_a_reply_above_the_frame_limit_is_refused_before_the_scrip_is_spent(
    tmp_path: Path, vendor_store: SqliteStore, level: mc.Level
) -> None:
    """A page whose reply exceeds the vendor's frame limit: the wallet gets a MACed ``too_large`` refusal
    naming the limit, keeps its scrip (nothing pending), the spent list stays empty, and the same scrip then buys
    a page that fits."""
    put_product(vendor_store, "big", 3, bytes(2 * LIMIT))
    core = mv.VendorCore(vendor_store)
    wallet = wallet_with_scrip(tmp_path / "alice.db", core, [10])

    async def go() -> None:
        server = mv.VendorServer(core, limits=Limits(max_frame=LIMIT))
        host, port = await server.start("127.0.0.1", 0)
        at = f"{host}:{port}"
        try:
            async with asyncio.timeout(WAIT_S):
                r = await wallet.spend(VID, at, "big", 3, int(time.time()), level=level)
                assert r.status == mc.Status.TOO_LARGE and r.change == 0 and r.content == b""
                assert f"{LIMIT}" in r.detail and "not spent" in r.detail
                assert wallet.pending() == [] and [s.value for s in wallet.scrip(VID)] == [10]
                assert spent(vendor_store) == []
                r = await wallet.spend(VID, at, "page", 3, int(time.time()), level=level)
                assert (r.status, r.content, r.change) == (mc.Status.OK, PAGE, 7)
        finally:
            await server.aclose()

    try:
        asyncio.run(go())
    finally:
        wallet.store.close()
    assert len(spent(vendor_store)) == 1


def test_a_product_above_what_a_reply_can_carry_costs_only_its_own_request(
    tmp_path: Path, vendor_store: SqliteStore
) -> None:
    """A page above the reply's content bound (60 KiB) under the default frame limit, bought in one batch with a
    page that fits on the same connection: the big one is refused ``too_large`` (MACed, nothing spent), the other
    is served, and the connection serves the next request."""
    put_product(vendor_store, "huge", 3, bytes(mc.CONTENT_MAX_BYTES + 1))
    core = mv.VendorCore(vendor_store)
    secret = mc.customer_secret(core.vendor.customer_masters, ALICE)
    now = int(time.time())

    def request(i: int, product: str) -> Message:
        scrip = mc.mint(core.vendor.scrip_secrets, index=0, vendor=VID, value=10, serial=100 + i, customer_id=ALICE,
                        expiry=now + 3600)  # fmt: skip
        mt, p = mc.make_request(scrip, rid=bytes([i]) * 16, level=mc.Level.THEFT, secret=secret, price=3,
                                product=product)  # fmt: skip
        return Message(Uid(b"\x00" * 12, 1), Uid(b"\x00" * 12, 0), mt, p)

    def outcome(i: int, m: Message) -> mc.Outcome:
        return mc.open_reply(m.mtype, m.param, rid=bytes([i]) * 16, level=mc.Level.THEFT, secret=secret)

    async def go() -> None:
        server = mv.VendorServer(core)
        host, port = await server.start("127.0.0.1", 0)
        try:
            async with asyncio.timeout(WAIT_S), await dial(host, port) as conn:
                await conn.send_many([request(0, "huge"), request(1, "page")])
                got: list[Message] = []
                while len(got) < 2:
                    got.extend(await conn.recv_many())
                big, page = outcome(0, got[0]), outcome(1, got[1])
                assert big.status == mc.Status.TOO_LARGE and big.authentic and "not spent" in big.detail
                assert page.status == mc.Status.OK and page.content == PAGE
                await conn.send(request(2, "page"))
                assert outcome(2, await conn.recv()).status == mc.Status.OK
        finally:
            await server.aclose()

    asyncio.run(go())
    assert len(spent(vendor_store)) == 2  # the two pages; the huge one's scrip is unspent


def test_add_product_refuses_a_product_that_could_not_always_be_delivered(vendor_store: SqliteStore) -> None:
    """The largest content ``add_product`` takes is the largest whose every reply (level 3, change with the most
    properties scrip can have) fits the frame limit and the reply's content bound; one byte more is refused,
    naming the limit and what to do, and nothing is added."""
    for max_frame in (LIMIT, DEFAULT_MAX_FRAME):
        most = mv.max_content_bytes(max_frame)
        assert HEADER_BYTES + mc.max_buy_reply_bytes(most) <= max_frame
        assert most == mc.CONTENT_MAX_BYTES or HEADER_BYTES + mc.max_buy_reply_bytes(most + 1) > max_frame
        mv.add_product(vendor_store, "edge", 3, bytes(most), max_frame=max_frame)
        with pytest.raises(mv.VendorError) as err:
            mv.add_product(vendor_store, "over", 3, bytes(most + 1), max_frame=max_frame)
        assert err.value.reason == "too_large"
        assert f"at most {most} bytes" in str(err.value) and "split" in str(err.value)
    assert sorted(mv.VendorCore(vendor_store).vendor.catalogue) == ["edge", "page"]


def test_vendor_add_page_refuses_a_page_too_large_to_deliver(tmp_path: Path) -> None:
    v = str(tmp_path / "v.db")
    cardnet("millicent", "vendor", "init", "--store", v, "--id", VID.hex())
    big = tmp_path / "big.html"
    big.write_bytes(b"x" * (mc.CONTENT_MAX_BYTES + 1))
    r = cardnet("millicent", "vendor", "add-page", "--store", v, "--name", "big", "--price", "3", "--file", str(big),
                check=False)  # fmt: skip
    assert r.returncode != 0
    assert f"at most {mv.max_content_bytes(DEFAULT_MAX_FRAME)} bytes" in r.stdout + r.stderr
    status = json.loads(cardnet("millicent", "vendor", "status", "--store", v, "--json").stdout)
    assert status["products"] == {}
    big.write_bytes(b"x" * mv.max_content_bytes(DEFAULT_MAX_FRAME))
    cardnet("millicent", "vendor", "add-page", "--store", v, "--name", "big", "--price", "3", "--file", str(big))
    status = json.loads(cardnet("millicent", "vendor", "status", "--store", v, "--json").stdout)
    assert status["products"] == {"big": 3}


def test_a_stored_reply_above_a_lowered_frame_limit_is_fetched_again_once_the_limit_is_raised(
    vendor_store: SqliteStore,
) -> None:
    """A page accepted under a larger frame limit, its request sent again to the vendor restarted with a smaller
    one: the stored reply wins over the size check (the scrip *was* spent, so no ``too_large`` "not spent"), and
    as it cannot be sent, a plain ``malformed`` naming the frame limit goes in its place; under the larger limit
    again the same request fetches the page and its change. The scrip is spent once."""
    put_product(vendor_store, "big", 3, bytes(2 * LIMIT))
    core = mv.VendorCore(vendor_store)
    secret = mc.customer_secret(core.vendor.customer_masters, ALICE)
    scrip = mc.mint(core.vendor.scrip_secrets, index=0, vendor=VID, value=10, serial=100, customer_id=ALICE,
                    expiry=int(time.time()) + 3600)  # fmt: skip
    rid = b"r" * 16
    mt, p = mc.make_request(scrip, rid=rid, level=mc.Level.THEFT, secret=secret, price=3, product="big")

    async def ask(limits: Limits) -> mc.Outcome:
        server = mv.VendorServer(core, limits=limits)
        host, port = await server.start("127.0.0.1", 0)
        try:
            async with asyncio.timeout(WAIT_S), await dial(host, port) as conn:
                await conn.send(Message(Uid(b"\x00" * 12, 1), Uid(b"\x00" * 12, 0), mt, p))
                m = await conn.recv()
        finally:
            await server.aclose()
        return mc.open_reply(m.mtype, m.param, rid=rid, level=mc.Level.THEFT, secret=secret)

    first = asyncio.run(ask(Limits()))
    assert first.status == mc.Status.OK and first.content == bytes(2 * LIMIT)
    again = asyncio.run(ask(Limits(max_frame=LIMIT)))
    assert again.status == mc.Status.MALFORMED and not again.authentic and again.detail == mv.TOO_LARGE
    last = asyncio.run(ask(Limits()))
    assert last.status == mc.Status.OK and last.change == first.change and last.content == first.content
    assert len(spent(vendor_store)) == 1


def test_a_bulk_order_whose_answer_would_not_fit_is_refused_and_nothing_is_sold(vendor_store: SqliteStore) -> None:
    """A broker's bulk order of more pieces than the answer's frame can carry: refused ``too_large`` (naming the
    limit), nothing recorded (the broker owes nothing), and an order that fits is then sold."""
    agreement = mv.add_bulk_broker(vendor_store, "bob", discount_pct=10, rng=random.Random(2).randbytes)
    key, broker = bytes.fromhex(agreement["order_key"]), bytes.fromhex(agreement["customer_id"])
    core = mv.VendorCore(vendor_store)

    def order(oid: bytes, pieces: int) -> Message:
        p = mc.make_bulk_order(key, vendor=VID, broker=broker, order=oid, value=1000, pieces=pieces, discount_pct=10)
        return Message(Uid(b"\x00" * 12, 1), Uid(b"\x00" * 12, 0), mc.BULK_BUY.code, p)

    async def go() -> list[mc.BulkSale]:
        server = mv.VendorServer(core, limits=Limits(max_frame=LIMIT))
        host, port = await server.start("127.0.0.1", 0)
        sales = []
        try:
            async with asyncio.timeout(WAIT_S), await dial(host, port) as conn:
                for oid, pieces in ((b"a" * 16, 100), (b"b" * 16, 10)):
                    await conn.send(order(oid, pieces))
                    m = await conn.recv()
                    sales.append(mc.open_bulk_sold(m.param, key=key, vendor=VID, broker=broker, order=oid, value=1000,
                                                   pieces=pieces))  # fmt: skip
        finally:
            await server.aclose()
        return sales

    big, small = asyncio.run(go())
    assert big.status == mc.Status.TOO_LARGE and f"frame limit of {LIMIT}" in big.detail and big.scrip == []
    assert small.status == mc.Status.OK and len(small.scrip) == 10
    assert core.bulk_sales()[broker.hex()] == {"broker": "bob", "value": 1000, "owed": 900}
