"""A bulk vendor that never answers holds up only the purchases that need it, with real processes.

The broker process used to hold its one lock while it carried a bulk-mode purchase's call to the vendor (up to
``VENDOR_TIMEOUT_S``): one vendor that accepted the connection and never answered stalled every customer of the
broker, those buying another vendor's scrip too. Now the broker calls vendors outside its lock. Here vendor A
is a socket that reads and never writes; while the broker's call to it is open, Bob's purchase of vendor B's
scrip (bulk mode: a real vendor process, an order then an issue) is answered. And several purchases in flight at
once, repeats of one purchase among them, still debit each customer once and lose or double no scrip.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hostprocs import Service, cardnet

from cardnet.crypto import profile
from cardnet.protocols import millicent as mc
from cardnet.services.millicent import broker as mb
from cardnet.services.millicent.wallet import CFG, PENDING, Wallet, WalletError
from cardnet.store import SqliteStore
from cardnet.transport import dial
from cardnet.wire import Message, Uid

A, B = "00000000000000a1", "00000000000000b2"
R = TypeVar("R")
Purchase = tuple[Wallet, bytes, bytes]  # a wallet, its signed purchase, its reply key (signed_purchase)
GUARD_S = 60.0  # generous: nothing here is timed, each wait only bounds a broken run


class Listener:
    """A TCP listener on 127.0.0.1 (a port of its own) serving each connection with ``_serve``."""

    _server: asyncio.Server | None = None

    async def start(self) -> str:
        """Listen; its HOST:PORT."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"{host}:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self._server is not None:
            self._server.close()


class HungVendor(Listener):
    """A TCP listener that accepts, reads whatever comes and never writes: a vendor that never answers."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()  # a request's bytes arrived
        self.ended = asyncio.Event()  # the caller closed its connection (it gave up)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.read(4096):
                self.asked.set()
        finally:
            self.ended.set()
            writer.close()


def agreement(tmp: Path, vid: str) -> tuple[str, Path]:
    """A vendor store for ``vid`` selling one page, and its bulk agreement with the broker."""
    v, out = str(tmp / f"vendor-{vid}.db"), tmp / f"bulk-{vid}.json"
    cardnet("millicent", "vendor", "init", "--store", v, "--id", vid)
    cardnet("millicent", "vendor", "add-page", "--store", v, "--name", "hello", "--price", "3", "--text", "hi")
    cardnet("millicent", "vendor", "bulk-agreement", "--store", v, "--broker", "bob", "--out", str(out))
    return v, out


def add_bulk(b: str, file: Path, at: str, pieces: int) -> None:
    cardnet(
        "millicent", "broker", "add-bulk", "--store", b, "--file", str(file), "--vendor-at", at,
        "--denomination", "20", "--pieces", str(pieces),
    )  # fmt: skip


def customer(tmp: Path, b: str, broker: str, name: str, deposit: int) -> str:
    wallet = str(tmp / f"{name}.db")
    out = cardnet("millicent", "open", "--wallet", wallet, "--broker", broker).stdout
    cid = out.split("customer id ")[1].split()[0]
    cardnet("millicent", "broker", "deposit", "--store", b, "--customer", cid, "--amount", str(deposit))
    return wallet


def status(b: str) -> dict[str, dict[str, int]]:
    bulk: dict[str, dict[str, int]] = json.loads(
        cardnet("millicent", "broker", "status", "--store", b, "--json").stdout
    )["bulk"]
    return bulk


@pytest.fixture
def vendor_b(tmp_path: Path) -> Iterator[tuple[str, str, Service]]:
    """Vendor B's store, its agreement file and its running process."""
    v, file = agreement(tmp_path, B)
    proc = Service(tmp_path, "millicent", "vendor", "run", "--store", v, "--listen", "127.0.0.1:0")
    try:
        proc.start()
        yield v, str(file), proc
    finally:
        proc.stop()


def test_a_bulk_vendor_that_never_answers_does_not_hold_up_a_purchase_from_another_vendor(
    tmp_path: Path, vendor_b: tuple[str, str, Service]
) -> None:
    _, b_file, b_proc = vendor_b
    _, a_file = agreement(tmp_path, A)
    b = str(tmp_path / "broker.db")
    broker = Service(tmp_path, "millicent", "broker", "run", "--store", b, "--listen", "127.0.0.1:0")

    async def go() -> None:
        hung = HungVendor()
        try:
            add_bulk(b, a_file, await hung.start(), 2)
            add_bulk(b, Path(b_file), b_proc.address, 2)
            broker.start()
            alice_w = customer(tmp_path, b, broker.address, "alice", 100)
            bob_w = customer(tmp_path, b, broker.address, "bob", 100)
            with SqliteStore(alice_w) as a_store, SqliteStore(bob_w) as b_store:
                alice, bob = Wallet(a_store), Wallet(b_store)
                stuck = asyncio.create_task(alice.buy(bytes.fromhex(A), 20))
                # The broker has recorded an order for vendor A and sent it: the call is open and unanswered.
                await asyncio.wait_for(hung.asked.wait(), GUARD_S)
                assert not hung.ended.is_set()
                try:
                    scrip = await asyncio.wait_for(bob.buy(bytes.fromhex(B), 20), GUARD_S)
                except WalletError as exc:  # his wallet stopped waiting (TIMEOUT_S) first
                    pytest.fail(f"Bob's purchase was not answered while the hung vendor call was open: {exc}")
                # Bob was answered while the broker's call to vendor A was still open (before: only once it
                # timed out, VENDOR_TIMEOUT_S later, his answer waiting behind the broker's lock).
                assert not hung.ended.is_set(), "Bob's purchase was answered only after the hung vendor call ended"
                assert scrip.value == 20 and scrip.vendor == bytes.fromhex(B)
                # Alice's purchase stays pending (the broker gives up on A, or her wallet stops waiting first).
                with pytest.raises(WalletError) as e:
                    await asyncio.wait_for(stuck, GUARD_S)
                assert e.value.reason in ("pending", "no_answer")
                with a_store.transaction() as txn:
                    assert len(list(txn.scan(PENDING))) == 1
                await asyncio.wait_for(hung.ended.wait(), GUARD_S)  # the broker gave up its call to A
        finally:
            hung.close()

    try:
        asyncio.run(go())
        bulk = status(b)
        # Vendor A: nothing bought, the order kept pending for the next purchase; Alice was not debited.
        assert bulk[A]["pieces"] == 0 and bulk[A]["pending_orders"] == 1
        # Vendor B: 2 pieces of 20 bought, 20 sold to Bob: bought = stock + sold.
        assert bulk[B]["bought_value"] == 40 and bulk[B]["stock_value"] == 20 and bulk[B]["pending_orders"] == 0
        report = json.loads(cardnet("millicent", "list", "--wallet", str(tmp_path / "bob.db"), "--json").stdout)
        assert [s["value"] for s in report["scrip"]] == [20] and report["pending"] == []
    finally:
        broker.stop()


def test_purchases_in_flight_at_once_from_one_bulk_vendor_debit_once_and_keep_every_piece(
    tmp_path: Path, vendor_b: tuple[str, str, Service]
) -> None:
    """Six customers buy vendor B's scrip at once, each sending her purchase twice over two connections at once
    (a customer who retried): the broker buys stock (a pending order carried by several purchases at once) and
    sells from it concurrently. Every purchase ends sold (the same bytes sent again while answered pending),
    both answers to one purchase carry the same scrip, each customer is debited once, and bought = stock + sold.
    """
    _, b_file, b_proc = vendor_b
    b = str(tmp_path / "broker.db")
    add_bulk(b, Path(b_file), b_proc.address, 3)  # orders of 3 pieces of 20: the six sales need several
    broker = Service(tmp_path, "millicent", "broker", "run", "--store", b, "--listen", "127.0.0.1:0")
    broker.start()
    try:
        results, cids = customers_buy(tmp_path, b, broker.address, 6, buy_all)
        for first, second in results:
            assert first.status == second.status == mc.PURCHASE_OK, (first.detail, second.detail)
            assert first.scrip is not None and first.scrip == second.scrip and first.scrip.value == 20
        assert len({first.scrip for first, _ in results}) == 6
        with SqliteStore(b) as store:
            core = mb.BrokerCore(store)
            assert [core.account(cid) for cid in cids if cid is not None] == [80] * 6  # debited once each
        bulk = status(b)[B]
        assert bulk["stock_value"] + 6 * 20 == bulk["bought_value"] and bulk["pending_orders"] == 0
    finally:
        broker.stop()


def customers_buy(
    tmp_path: Path, b: str, broker: str, n: int, buy: Callable[[str, list[Purchase]], Coroutine[Any, Any, list[R]]]
) -> tuple[list[R], list[bytes | None]]:
    """``n`` customers with 100 each at the broker on ``b`` (running at ``broker``) buy 20 of vendor B's scrip
    through ``buy`` (given their signed purchases, each under a rid of its own): what ``buy`` got, their ids."""
    wallets = [Wallet(SqliteStore(customer(tmp_path, b, broker, f"c{i}", 100))) for i in range(n)]
    try:
        purchases = [signed_purchase(w, bytes([i + 1]) * mc.RID_BYTES) for i, w in enumerate(wallets)]
        cids = [w.customer_id for w in wallets]
        return asyncio.run(buy(broker, purchases)), cids
    finally:
        for w in wallets:
            w.store.close()


def signed_purchase(w: Wallet, rid: bytes) -> tuple[Wallet, bytes, bytes]:
    """The wallet, a purchase of 20 of vendor B's scrip under ``rid`` signed with its account key, its reply key."""
    cid = w.customer_id
    assert cid is not None
    f = {"customer_id": cid, "vendor": bytes.fromhex(B), "value": 20, "rid": rid, "want_secret": 1}
    f["sig"] = profile.sign(w._key(), mc.purchase_sig_input(f))
    with w.store.transaction() as txn:
        rkey = txn.get(CFG, b"rkey")
    assert rkey is not None
    return w, mc.PURCHASE_SCHEMA.encode(f), rkey


async def buy_all(
    address: str, purchases: list[tuple[Wallet, bytes, bytes]]
) -> list[tuple[mc.Purchased, mc.Purchased]]:
    """Each purchase sent twice at once, all at once; one answered pending is sent again until it is decided."""
    host, port = address.rsplit(":", 1)

    async def send(w: Wallet, param: bytes, rkey: bytes) -> mc.Purchased:
        async with await dial(host, int(port)) as conn:
            await conn.send(Message(Uid(b"\x00" * 12, 9), Uid(b"\x00" * 12, 0), mc.PURCHASE.code, param))
            reply = await asyncio.wait_for(conn.recv(), GUARD_S)
        return mc.open_purchased(reply.mtype, reply.param, purchase=param, key=rkey)

    async def twice(w: Wallet, param: bytes, rkey: bytes) -> tuple[mc.Purchased, mc.Purchased]:
        first, second = await asyncio.gather(send(w, param, rkey), send(w, param, rkey))
        for _ in range(10):  # "pending": a vendor answer did not come in time; the same bytes again
            if first.status != mc.PURCHASE_PENDING:
                break
            first = await send(w, param, rkey)
        for _ in range(10):
            if second.status != mc.PURCHASE_PENDING:
                break
            second = await send(w, param, rkey)
        return first, second

    return list(await asyncio.gather(*(twice(*p) for p in purchases)))
