"""The Millicent vendor service: validates scrip, keeps the spent list, sells pages over TCP.

Theory of operation
-------------------
:class:`VendorCore` wraps the sans-I/O :class:`~cardnet.protocols.millicent.Vendor`
with the vendor's store. :meth:`VendorCore.process_batch` handles a group of
requests in **one** durable transaction (group commit): each request is
checked (certificate, vendor, expiry, customer binding, price), its reply is
computed, and its spent record (request digest + reply) is inserted
first-wins under ``expiry || scrip id``. A losing insert means the scrip was
spent before: the very same request gets the stored reply back (a re-fetch
after a lost reply), any other gets ``spent``. The batch's replies are
released only after the transaction has committed (``synchronous=FULL``), so
no customer ever holds an acceptance that a crash could undo.

:meth:`VendorCore.prune` deletes spent records whose scrip has expired (key
order is expiry order) and raises the durable ``pruned_through`` mark: scrip
expiring at or before it is refused even if the clock is set back, which is
what makes pruning safe.

:class:`VendorServer` is the asyncio driver: connections feed one queue, one
committer drains it (everything queued, up to ``MAX_BATCH``) and runs the
batch in a worker thread while new requests queue up behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cardnet.crypto import profile
from cardnet.errors import CardnetError
from cardnet.protocols import millicent as mc
from cardnet.store import Store
from cardnet.transport import BrokenError, ClosedError, TcpConnection, TcpServer, TransportError, dial
from cardnet.wire import DecodeError, Message, Uid

log = logging.getLogger("cardnet.millicent.vendor")

CFG, SECRETS, CMASTERS, LICENCES, CATALOGUE, SPENT = "mv.cfg", "mv.sec", "mv.cm", "mv.lic", "mv.cat", "mv.spent"
REDEEM_LOG = "mv.redeem"
MAX_BATCH = 4096
PRUNE_PAGE = 1000
VENDOR_INDEXES = range(0x00, 0x80)  # indexes the vendor mints under; 0x80-0xff are for licensed brokers
SERVICE_UID = Uid(b"\x00" * 12, 0)


class _Conflict(Exception):
    """A bulk spent insert met a key that was already there."""


class VendorError(CardnetError):
    """The vendor's store or configuration is unusable (``reason`` says how)."""


def _u64(v: int) -> bytes:
    return v.to_bytes(8, "big")


def init_vendor(
    store: Store,
    vendor_id: bytes,
    *,
    rng: Callable[[int], bytes] = os.urandom,
    validity_s: int = 7 * 24 * 3600,
    min_level: int = 2,
    customer_master_count: int = 256,
    refetch_grace_s: int = 24 * 3600,
) -> None:
    """Create a vendor in an empty store: master scrip secret 0, customer master secrets 0..n-1."""
    if len(vendor_id) != mc.VENDOR_BYTES:
        raise VendorError("bad_vendor", f"a vendor id is {mc.VENDOR_BYTES} bytes ({2 * mc.VENDOR_BYTES} hex digits)")
    with store.transaction() as txn:
        if not txn.insert(CFG, b"id", vendor_id):
            raise VendorError("exists", "this store already holds a vendor")
        txn.put(CFG, b"mint", b"\x00")
        txn.put(CFG, b"validity", _u64(validity_s))
        txn.put(CFG, b"level", bytes([min_level]))
        txn.put(CFG, b"grace", _u64(refetch_grace_s))
        txn.put(CFG, b"serial", _u64(1))
        txn.put(CFG, b"pruned", _u64(0))
        txn.put(SECRETS, b"\x00", rng(mc.MASTER_SECRET_BYTES))
        for i in range(customer_master_count):
            txn.put(CMASTERS, bytes([i]), rng(mc.MASTER_SECRET_BYTES))


def rotate_secret(store: Store, *, rng: Callable[[int], bytes] = os.urandom) -> int:
    """Mint new scrip under a fresh master secret index; old secrets stay until their scrip expires."""
    with store.transaction() as txn:
        used = {k[0] for k, _ in txn.scan(SECRETS)}
        free = [i for i in VENDOR_INDEXES if i not in used]
        if not free:
            raise VendorError("no_index", "all vendor indexes are in use: drop a retired secret first")
        txn.put(SECRETS, bytes([free[0]]), rng(mc.MASTER_SECRET_BYTES))
        txn.put(CFG, b"mint", bytes([free[0]]))
        return free[0]


def add_product(store: Store, name: str, price: int, content: bytes) -> None:
    with store.transaction() as txn:
        txn.put(CATALOGUE, name.encode(), _u64(price) + content)


def export_licence(
    store: Store, broker: str, *, rng: Callable[[int], bytes] = os.urandom, index: int | None = None
) -> dict[str, Any]:
    """License a broker to mint scrip: a fresh master scrip secret under an index of its own.

    The licence holds what the broker and the vendor then share: that one
    master scrip secret (the broker can mint scrip only under its index), the
    customer master secrets (the broker hands each customer her customer
    secret), and a redeem key that MACs the vendor's redemption batches.
    """
    with store.transaction() as txn:
        vid = txn.get(CFG, b"id")
        if vid is None:
            raise VendorError("no_vendor", "the store holds no vendor: run `cardnet millicent vendor init`")
        used = {k[0] for k, _ in txn.scan(SECRETS)}
        if index is None:
            free = [i for i in range(0x80, 0x100) if i not in used]
            if not free:
                raise VendorError("no_index", "all broker indexes are in use")
            index = free[0]
        elif index in used:
            raise VendorError("index_used", f"index {index} already has a secret")
        secret, redeem_key = rng(mc.MASTER_SECRET_BYTES), rng(32)
        txn.put(SECRETS, bytes([index]), secret)
        txn.put(LICENCES, bytes([index]), redeem_key + broker.encode())
        cms = {k[0]: v for k, v in txn.scan(CMASTERS)}
    return {
        "vendor": vid.hex(),
        "index": index,
        "scrip_secret": secret.hex(),
        "customer_masters": {str(i): v.hex() for i, v in cms.items()},
        "redeem_key": redeem_key.hex(),
        "broker": broker,
    }


@dataclass
class BatchStats:
    accepted: int = 0
    refetched: int = 0
    refused: int = 0


class VendorCore:
    """The vendor over its store; every method is synchronous and thread-confined by the caller."""

    def __init__(self, store: Store) -> None:
        self.store = store
        with store.transaction() as txn:
            vid = txn.get(CFG, b"id")
            if vid is None:
                raise VendorError("no_vendor", "the store holds no vendor: run `cardnet millicent vendor init`")
            mint_index = (txn.get(CFG, b"mint") or b"\x00")[0]
            validity = int.from_bytes(txn.get(CFG, b"validity") or _u64(7 * 24 * 3600), "big")
            level = mc.Level((txn.get(CFG, b"level") or b"\x02")[0])
            grace = int.from_bytes(txn.get(CFG, b"grace") or _u64(24 * 3600), "big")
            secrets = {k[0]: v for k, v in txn.scan(SECRETS)}
            cms = {k[0]: v for k, v in txn.scan(CMASTERS)}
            catalogue = {k.decode(): mc.Product(int.from_bytes(v[:8], "big"), v[8:]) for k, v in txn.scan(CATALOGUE)}
            self.licensed = {k[0] for k, _ in txn.scan(LICENCES)}
            self.redeem_keys = {k[0]: v[:32] for k, v in txn.scan(LICENCES)}
            self.pruned_through = int.from_bytes(txn.get(CFG, b"pruned") or _u64(0), "big")
        self.vendor = mc.Vendor(vid, secrets, mint_index, cms, catalogue, validity, level, grace)
        self.stats = BatchStats()

    @property
    def vendor_id(self) -> bytes:
        return self.vendor.vendor_id

    def process_batch(self, requests: list[tuple[int, bytes]], now: int) -> list[tuple[int, bytes]]:
        """Replies to ``requests`` (``(mtype, param)`` each), all decided in one durable transaction."""
        vendor = self.vendor
        pruned = self.pruned_through
        prepared = [vendor.prepare(mt, p, now, pruned) for mt, p in requests]
        out: list[tuple[int, bytes]] = []
        with self.store.transaction() as txn:
            serial = int.from_bytes(txn.get(CFG, b"serial") or _u64(1), "big")
            start = serial
            insert = txn.insert
            for c in prepared:
                if not isinstance(c, mc.Candidate):
                    out.append(mc.refusal(c))
                    self.stats.refused += 1
                    continue
                key = c.spent_key
                if c.refusal is not None:  # refused, unless the very same request was accepted before
                    row = txn.get(SPENT, key)
                    if row is not None and len(row) > 34 and mc.parse_spent(row)[0] == c.digest:
                        _, smt, sreply = mc.parse_spent(row)
                        out.append((smt, sreply))
                        self.stats.refetched += 1
                    else:
                        out.append(vendor.refuse(c, *c.refusal))
                        self.stats.refused += 1
                    continue
                mt, reply = vendor.accept(c, [serial, serial + 1], now)
                if insert(SPENT, key, mc.spent_record(c.digest, mt, reply)):
                    serial += 2
                    out.append((mt, reply))
                    self.stats.accepted += 1
                    idx = c.scrip.secret_index
                    if idx in self.licensed:
                        txn.append(REDEEM_LOG, c.scrip.scrip_id + _u64(c.scrip.value))
                    continue
                row = txn.get(SPENT, key)
                assert row is not None
                digest, smt, sreply = mc.parse_spent(row) if len(row) > 34 else (b"", 0, b"")
                if digest == c.digest:
                    out.append((smt, sreply))
                    self.stats.refetched += 1
                else:
                    out.append(vendor.refuse(c, mc.Status.SPENT, "this scrip was already spent"))
                    self.stats.refused += 1
            if serial != start:
                txn.put(CFG, b"serial", _u64(serial))
        return out

    def validate_batch(self, items: list[tuple[bytes, bytes | None, bytes | None]], now: int) -> list[mc.Status]:
        """The vendor's check and durable spent marking, without making replies (what the benchmark times).

        ``items``: ``(scrip, mac_input, mac)``; with a MAC the customer binding is
        checked too (level 2). Accepted scrip is marked spent in one durable
        transaction, first-wins: one bulk insert, and if any key was already
        there, that insert is rolled back and the rows are inserted one by one
        to learn which.
        """
        vendor = self.vendor
        pruned = self.pruned_through
        out: list[mc.Status] = []
        fresh: dict[bytes, int] = {}
        ok = mc.Status.OK
        for i, (raw, mac_input, mac) in enumerate(items):
            status = vendor.check_raw(raw, now, pruned)
            if status is ok:
                if mac is not None and mac_input is not None and not vendor.binding_ok(raw[25:33], mac_input, mac):
                    status = mc.Status.STOLEN
                else:
                    key = raw[33:37] + raw[17:25]
                    if key in fresh:
                        status = mc.Status.SPENT
                    else:
                        fresh[key] = i
            out.append(status)
        if not fresh:
            return out
        rows = [(k, b"") for k in fresh]
        with self.store.transaction() as txn:
            try:
                with txn.savepoint():
                    if txn.insert_many(SPENT, rows) != len(rows):
                        raise _Conflict
            except _Conflict:
                for k, i in fresh.items():
                    if not txn.insert(SPENT, k, b""):
                        out[i] = mc.Status.SPENT
        return out

    def prune(self, now: int, limit: int = PRUNE_PAGE) -> int:
        """Delete up to ``limit`` spent records of scrip expired more than the re-fetch grace ago."""
        cutoff = now - self.vendor.refetch_grace_s
        with self.store.transaction() as txn:
            rows = txn.scan(SPENT, b"", limit)
            dead = [k for k, _ in rows if mc.expiry_of_key(k) <= cutoff]
            if not dead:
                return 0
            mark = max(self.pruned_through, mc.expiry_of_key(dead[-1]))
            txn.delete_many(SPENT, dead)
            txn.put(CFG, b"pruned", _u64(mark))
        self.pruned_through = mark
        return len(dead)

    def spent_count(self) -> int:
        with self.store.transaction() as txn:
            return txn.count(SPENT)

    def redeemable(self, limit: int = 10_000) -> list[tuple[int, bytes]]:
        with self.store.transaction() as txn:
            return txn.read_log(REDEEM_LOG, 0, limit)

    def redeem_request(self, rows: list[tuple[int, bytes]], index: int) -> tuple[bytes, list[int]]:
        """A redeem message param for the rows minted under licence ``index``; and their sequence numbers."""
        mine = [(s, v) for s, v in rows if v[0] == index]
        items = [v for _, v in mine]
        batch = hashlib.sha256(b"".join(struct.pack(">Q", s) for s, _ in mine)).digest()[:16]
        key = self.redeem_keys[index]
        mac = profile.hmac_sha256(key, mc.redeem_mac_input(self.vendor_id, batch, items), mc.MAC_BYTES)
        param = mc.REDEEM_SCHEMA.encode({"vendor": self.vendor_id, "batch": batch, "items": items, "mac": mac})
        return param, [s for s, _ in mine]

    def forget_redeemed(self, seqs: list[int]) -> None:
        with self.store.transaction() as txn:
            txn.delete_log(REDEEM_LOG, seqs)


class VendorServer:
    """Serves :class:`VendorCore` over TCP with group commit.

    ``failpoint="kill-after-commit"`` makes the process SIGKILL itself right
    after the first batch that accepted scrip has committed and before any
    reply leaves: the integration tests use it to crash between accepting and
    replying.
    """

    def __init__(
        self,
        core: VendorCore,
        *,
        clock: Callable[[], float] = time.time,
        prune_every_s: float = 60.0,
        failpoint: str | None = None,
    ) -> None:
        self.core = core
        self.clock = clock
        self.prune_every_s = prune_every_s
        self.failpoint = failpoint
        self._queue: asyncio.Queue[tuple[list[Message], asyncio.Future[list[Message]]]] = asyncio.Queue(maxsize=1024)
        self._server = TcpServer()
        self._tasks: list[asyncio.Task[None]] = []
        self.batches = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        await self._server.start(host, port, self._serve)
        self._tasks.append(asyncio.create_task(self._committer()))
        self._tasks.append(asyncio.create_task(self._pruner()))
        return self._server.address

    async def aclose(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await self._server.aclose()

    async def _serve(self, conn: TcpConnection) -> None:
        """Read batches of requests; each batch joins the commit queue; replies leave in order."""
        pending: deque[asyncio.Future[list[Message]]] = deque()
        wake = asyncio.Event()
        done = False
        loop = asyncio.get_running_loop()

        async def sender() -> None:
            while True:
                while not pending:
                    if done:
                        return
                    wake.clear()
                    await wake.wait()
                out = list(await pending.popleft())
                while pending and pending[0].done():
                    out.extend(pending.popleft().result())
                await conn.send_many(out)

        task = asyncio.create_task(sender())
        try:
            while True:
                try:
                    msgs = await conn.recv_many()
                except (BrokenError, ClosedError):
                    break
                fut: asyncio.Future[list[Message]] = loop.create_future()
                pending.append(fut)
                wake.set()
                await self._queue.put((msgs, fut))
        finally:
            done = True
            wake.set()
            with contextlib.suppress(BrokenError, ClosedError, TransportError):
                await task
            task.cancel()

    async def _committer(self) -> None:
        q = self._queue
        while True:
            batch = [await q.get()]
            n = len(batch[0][0])
            while n < MAX_BATCH and not q.empty():
                item = q.get_nowait()
                batch.append(item)
                n += len(item[0])
            msgs = [m for ms, _ in batch for m in ms]
            requests = [(m.mtype, m.param) if m.mtype in _REQUEST_TYPES else (mc.REQUEST.code, b"") for m in msgs]
            try:
                replies = await asyncio.to_thread(self.core.process_batch, requests, int(self.clock()))
            except Exception as exc:  # a store failure: nothing was accepted; the customers retry
                log.error("batch of %d failed: %s", len(msgs), exc)
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.batches += 1
            if self.failpoint == "kill-after-commit" and any(
                r[0] == mc.SEALED_REPLY.code or _is_ok(r[1]) for r in replies
            ):
                os.kill(os.getpid(), signal.SIGKILL)
            i = 0
            for ms, fut in batch:
                out = [m.reply(mt, p) for m, (mt, p) in zip(ms, replies[i : i + len(ms)], strict=True)]
                i += len(ms)
                if not fut.done():
                    fut.set_result(out)

    async def _pruner(self) -> None:
        while True:
            await asyncio.sleep(self.prune_every_s)
            try:
                while await asyncio.to_thread(self.core.prune, int(self.clock())) == PRUNE_PAGE:
                    pass
            except CardnetError as exc:
                log.warning("pruning the spent list failed: %s", exc)


def _is_ok(param: bytes) -> bool:
    try:
        return bool(mc.REPLY_SCHEMA.decode(param)["status"] == mc.Status.OK)
    except DecodeError:
        return False


_REQUEST_TYPES = frozenset((mc.REQUEST.code, mc.SEALED_REQUEST.code))


async def redeem_at_broker(core: VendorCore, host: str, port: int) -> dict[str, int]:
    """Send the licence-minted scrip received so far to the broker; forget what it acknowledged."""
    rows = core.redeemable()
    paid = dups = 0
    for index in sorted({v[0] for _, v in rows}):
        if index not in core.redeem_keys:
            continue
        param, seqs = core.redeem_request(rows, index)
        async with await dial(host, port) as conn:
            await conn.send(Message(SERVICE_UID, SERVICE_UID, mc.REDEEM.code, param))
            reply = await conn.recv()
        f = mc.REDEEMED.parse(reply)
        if f["status"] != 0:
            raise VendorError("redeem_refused", f"the broker refused the redemption: {f.get('detail', '')}")
        paid += f.get("paid", 0)
        dups += f.get("duplicates", 0)
        core.forget_redeemed(seqs)
    return {"paid": paid, "duplicates": dups, "items": len(rows)}
