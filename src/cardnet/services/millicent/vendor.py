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
after a lost reply), any other gets ``spent``. Bulk orders from brokers
(``millicent.bulk_buy``) are decided in the same transaction. The batch's replies are
released only after the transaction has committed (``synchronous=FULL``), so
no customer ever holds an acceptance that a crash could undo.

:meth:`VendorCore.prune` deletes spent records whose scrip has expired (key
order is expiry order) and raises the durable ``pruned_through`` mark: scrip
expiring at or before it is refused even if the clock is set back, which is
what makes pruning safe.

The catalogue, master scrip secrets, licences and mint index are kept in memory and read again when they
changed: :func:`add_product`, :func:`export_licence` and :func:`rotate_secret` bump a version in the store
(``mv.cfg version``) in their transaction, also from another process (``vendor add-page``, ``vendor licence``,
``vendor rotate``) while this one serves. :meth:`VendorCore.prepare_batch` checks it once a batch (one record
read), so a product added or repriced is sold, a new broker's scrip accepted and change minted under a new index
from the next batch on; while a commit runs in the worker thread (which holds the store: a read would wait for its
fsync), that commit's transaction reads the version for the next batch instead.

Expiry is judged on :meth:`VendorCore.judged_time`: the host's clock, but never
earlier than a time the vendor judged on before. That mark is kept durably
with each batch, so a host whose clock is stepped back (a lying host, a bad
NTP step) cannot make the vendor accept a request it already refused as
expired: a customer's delayed copy of such a request would otherwise spend
its scrip after the customer was told it was worthless (see docs/millicent.md).

:class:`VendorServer` is the asyncio driver: connections feed one queue; a
preparer drains it (everything queued, up to ``MAX_BATCH``) and does a
batch's CPU work on the event loop (:meth:`VendorCore.prepare_batch`); a
committer runs the batch's transaction (:meth:`VendorCore.commit_batch`) and
releases the replies after the commit. Quick commits run on the event loop;
slow ones (a busy disk) in a worker thread, the next batch being prepared
during their fsync. A connection's replies leave in order, several at once.
A request whose reply would be above the frame limit is refused ``too_large``
before the transaction, its scrip unspent; a stored reply above it (accepted
under a larger limit) costs only itself: a plain ``malformed`` refusal to the
same request id goes in its place (:func:`too_large`). A batch
that fails (nothing of it was accepted) closes the connections it had requests
of, after their earlier replies: their clients send the requests again.
:meth:`VendorServer.aclose` stops in order: no request is taken any more, the
batches taken are committed and their replies written (bounded by
``close_wait_s``), then the connections are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import os
import signal
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cardnet.crypto import profile
from cardnet.crypto.errors import CryptoError
from cardnet.errors import CardnetError
from cardnet.protocols import millicent as mc
from cardnet.store import Store, StoreError
from cardnet.store.base import iter_pages
from cardnet.store.errors import damaged
from cardnet.transport import (
    DEFAULT_LIMITS,
    DEFAULT_MAX_FRAME,
    DEFAULT_SERVER_LIMITS,
    BrokenError,
    ClosedError,
    Limits,
    RecvLimit,
    ServerLimits,
    TcpConnection,
    TcpServer,
    TooLarge,
    TransportError,
    dial,
    send_batch,
)
from cardnet.wire import HEADER_BYTES, DecodeError, Message, Uid

log = logging.getLogger("cardnet.millicent.vendor")

CFG, SECRETS, CMASTERS, LICENCES, CATALOGUE, SPENT = "mv.cfg", "mv.sec", "mv.cm", "mv.lic", "mv.cat", "mv.spent"
REDEEM_LOG = "mv.redeem"  # (before per-licence logs: every licence's rows; moved to theirs when the vendor opens)
BULK, BULK_ORDERS, BULK_LEDGER = "mv.bulk", "mv.border", "mv.bledger"  # agreements, orders (re-fetch), sales
VERSION = b"version"  # in CFG: 8 bytes, bumped by every change to what a vendor keeps in memory (see _Loaded)
MAX_BATCH = 4096
SERIAL_BLOCK = 1 << 16  # serial numbers a vendor process reserves durably at a time (hi/lo)
SLOW_COMMIT_S = 0.001  # a commit slower than this (moving average) moves to a worker thread
ROW_ALLOWANCE_S = 10e-6  # what writing one spent record may take before the commit counts as slow
PROBE_EVERY = 256  # batches committed in the worker before one is timed on the event loop again
PRUNE_PAGE = 1000
CLOSE_WAIT_S = 10.0  # how long a stopping server waits for the batches in progress and their replies
# requests of one connection read and not yet answered (their replies not yet written): at this many its reader
# waits for the replies to leave, so a client that sends and never reads holds at most this many replies (and one
# read's requests), and the kernel pushes back on it
MAX_UNANSWERED = 1024
# ... and bytes of their replies (those not yet made counted at the largest buy reply the catalogue allows, a bulk
# order at the largest answer to its pieces: up to 56 KB, where a buy reply may be 500 bytes): a client
# that re-sends one accepted purchase of a 60 KB product gets its stored reply each time, so the count alone let
# each connection hold 1024 of them (62 MB; 512 connections: 32 GB). One request fits whatever its reply's size.
MAX_UNSENT_BYTES = 256 * 1024
VENDOR_INDEXES = range(0x00, 0x80)  # indexes the vendor mints under; 0x80-0xff are for licensed brokers
SERVICE_UID = Uid(b"\x00" * 12, 0)


class _Conflict(Exception):
    """A bulk spent insert met a key that was already there."""


class VendorError(CardnetError):
    """The vendor's store or configuration is unusable (``reason`` says how)."""


def _u64(v: int) -> bytes:
    return v.to_bytes(8, "big")


def redeem_log(index: int) -> str:
    """The log of the scrip minted under licence ``index`` that the vendor accepted and has not redeemed yet.

    One log per licence, so that each broker's scrip is read on its own (``log (name, seq)`` is indexed): a
    broker's rows never sit behind another's."""
    return f"{REDEEM_LOG}.{index:02x}"


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
        _bump_version(txn)  # a running vendor mints under it from its next batch
        return free[0]


@functools.lru_cache(maxsize=64)
def _buy_reply_bytes(content_bytes: int) -> int:
    """The largest buy reply, header included, for a product of ``content_bytes`` (cached: it is built for real)."""
    return HEADER_BYTES + mc.max_buy_reply_bytes(min(content_bytes, mc.CONTENT_MAX_BYTES))


@functools.lru_cache(maxsize=1024)
def _bulk_reply_bytes(pieces: int) -> int:
    """The largest answer to a bulk order of ``pieces`` pieces, header included (cached: it is built for real)."""
    return HEADER_BYTES + mc.max_bulk_sold_bytes(pieces)


def _counted_with_bulk(msgs: list[Message], held: int, each: int) -> tuple[int, int]:
    """How many of ``msgs`` (at least one) fit in what a connection may hold, and the bytes their replies are
    counted at: a bulk order at the largest answer to its pieces (up to 1000 pieces of scrip, far more than a buy
    reply), any other request at ``each``."""
    counted = 0
    for i, m in enumerate(msgs):
        cost = each
        if m.mtype == mc.BULK_BUY.code:
            try:
                pieces = mc.BULK_BUY_SCHEMA.decode(m.param)["pieces"]
            except DecodeError:
                pieces = 0  # refused as malformed: a short answer
            cost = max(each, _bulk_reply_bytes(pieces))
        if i and held + counted + cost > MAX_UNSENT_BYTES:
            return i, counted
        counted += cost
    return len(msgs), counted


@functools.lru_cache(maxsize=16)
def max_content_bytes(max_frame: int = DEFAULT_MAX_FRAME) -> int:
    """The largest product content every purchase of which can be delivered in one frame of ``max_frame`` bytes.

    Every reply means the largest one (level 3, sealed, with change carrying the most properties scrip can
    have: :func:`~cardnet.protocols.millicent.max_buy_reply_bytes`), and never more than the reply itself
    carries (:data:`~cardnet.protocols.millicent.CONTENT_MAX_BYTES`). -1 if the frame holds no product at all.
    """
    lo, hi = -1, mc.CONTENT_MAX_BYTES  # lo fits (or is -1), the answer is in lo..hi
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if HEADER_BYTES + mc.max_buy_reply_bytes(mid) <= max_frame:
            lo = mid
        else:
            hi = mid - 1
    return lo


def add_product(store: Store, name: str, price: int, content: bytes, *, max_frame: int = DEFAULT_MAX_FRAME) -> None:
    """Add (or replace) a product; refused (``too_large``) if a purchase of it could not always be delivered.

    A product is sold in one reply, so its content must leave room in a frame of ``max_frame`` bytes (the
    vendor server's, ``DEFAULT_MAX_FRAME`` as ``vendor run`` uses) for the largest reply it can need; a larger
    one could be paid for and never delivered (the server refuses such purchases, unspent, but they could
    never succeed).
    """
    if not name or len(name.encode("utf-8", "surrogatepass")) > mc.PRODUCT_NAME_MAX_BYTES:
        raise VendorError(
            "bad_name",
            f"a product's name is 1 to {mc.PRODUCT_NAME_MAX_BYTES} bytes of UTF-8 (what a purchase can name), got "
            f"{len(name.encode('utf-8', 'surrogatepass'))}: choose a shorter name",
        )
    most = max_content_bytes(max_frame)
    if len(content) > most:
        raise VendorError(
            "too_large",
            f"product {name!r} is {len(content)} bytes; a product is delivered in one reply, which carries at most "
            f"{most} bytes of content (frame limit {max_frame} bytes, reply content limit {mc.CONTENT_MAX_BYTES}): "
            f"split it into several products of at most {most} bytes each",
        )
    with store.transaction() as txn:
        txn.put(CATALOGUE, name.encode(), _u64(price) + content)
        _bump_version(txn)  # a running vendor sells it from its next batch


@dataclass(frozen=True)
class _Loaded:
    """What a vendor keeps in memory of its store, as of one ``version`` of it (read again when that changed)."""

    version: int
    catalogue: dict[str, mc.Product]
    secrets: dict[int, bytes]  # master scrip secrets: the vendor's own and its licensed brokers'
    mint_index: int
    licences: dict[int, tuple[bytes, str]]  # index -> (redeem key, broker's name)
    issuers: frozenset[bytes]  # customer ids of the bulk brokers: only they may pay for scrip issued to another


def _version(txn: Any) -> int:
    """The version of what a vendor keeps in memory (0 in a store from before versions, or never changed)."""
    with stored("the vendor's version"):
        return int.from_bytes(txn.get(CFG, VERSION) or _u64(0), "big")


def _bump_version(txn: Any) -> None:
    """In the transaction of a change to a :class:`_Loaded` field: a running vendor reads them again."""
    txn.put(CFG, VERSION, _u64(_version(txn) + 1))


def _load(txn: Any, version: int | None = None) -> _Loaded:
    with stored("the vendor's catalogue, secrets or licences"):
        return _Loaded(
            _version(txn) if version is None else version,
            {k.decode(): mc.Product(int.from_bytes(v[:8], "big"), v[8:]) for k, v in txn.scan(CATALOGUE)},
            {k[0]: v for k, v in txn.scan(SECRETS)},
            (txn.get(CFG, b"mint") or b"\x00")[0],
            {k[0]: (v[:32], v[32:].decode("utf-8", "replace")) for k, v in txn.scan(LICENCES)},
            frozenset(k for k, _ in txn.scan(BULK)),
        )


def export_licence(
    store: Store,
    broker: str,
    *,
    rng: Callable[[int], bytes] = os.urandom,
    index: int | None = None,
    deliver: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """License a broker to mint scrip: a fresh master scrip secret under an index of its own.

    The licence holds what the broker and the vendor then share: that one
    master scrip secret (the broker can mint scrip only under its index), the
    customer master secrets (the broker hands each customer her customer
    secret), and a redeem key that MACs the vendor's redemption batches.
    ``deliver(licence)`` (e.g. writing the licence file) runs before the licence is
    recorded: if it raises, nothing is recorded.
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
        _bump_version(txn)  # a running vendor accepts the broker's scrip from its next batch
        cms = {k[0]: v for k, v in txn.scan(CMASTERS)}
        licence = {
            "vendor": vid.hex(),
            "index": index,
            "scrip_secret": secret.hex(),
            "customer_masters": {str(i): v.hex() for i, v in cms.items()},
            "redeem_key": redeem_key.hex(),
            "broker": broker,
        }
        if deliver is not None:
            deliver(licence)  # inside the transaction: a failed delivery records nothing
    return licence


def add_bulk_broker(
    store: Store,
    broker: str,
    *,
    discount_pct: int,
    rng: Callable[[int], bytes] = os.urandom,
    deliver: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Agree to sell scrip in bulk to a broker, at ``discount_pct``: returns the agreement (it holds secrets).

    The broker gets a customer id of its own at this vendor, that id's
    customer secret (like any customer: it MACs the broker's requests when it
    pays with its bulk scrip) and an order key that MACs its bulk orders and
    this vendor's answers. No master scrip secret and no customer master
    secret leaves the vendor. ``deliver(agreement)`` (e.g. writing the agreement
    file) runs before the agreement is recorded: if it raises, nothing is recorded.
    """
    if not 0 <= discount_pct <= 100:
        raise VendorError("bad_discount", f"the discount is 0..100 %, got {discount_pct}")
    with store.transaction() as txn:
        vid = txn.get(CFG, b"id")
        if vid is None:
            raise VendorError("no_vendor", "the store holds no vendor: run `cardnet millicent vendor init`")
        cms = {k[0]: v for k, v in txn.scan(CMASTERS)}
        while True:
            cid = rng(mc.CUSTOMER_ID_BYTES)
            if cid[0] in cms and txn.get(BULK, cid) is None:
                break
        key = rng(mc.BULK_KEY_BYTES)
        txn.put(BULK, cid, key + bytes([discount_pct]) + broker.encode())
        _bump_version(txn)  # a running vendor issues scrip for the broker from its next batch
        agreement = {
            "vendor": vid.hex(),
            "broker": broker,
            "customer_id": cid.hex(),
            "customer_secret": mc.customer_secret(cms, cid).hex(),
            "order_key": key.hex(),
            "discount_pct": discount_pct,
        }
        if deliver is not None:
            deliver(agreement)  # inside the transaction: a failed delivery records nothing
    return agreement


@dataclass
class BatchStats:
    accepted: int = 0
    refetched: int = 0
    refused: int = 0


def stored(what: str) -> contextlib.AbstractContextManager[None]:
    """Decoding a record read from a store: any fault in its bytes, a bad key or certificate among them, is the
    store's error (``damaged``)."""
    return damaged(what, CryptoError)


def stored_json(raw: bytes, what: str) -> dict[str, Any]:
    """A JSON object kept in a store (``damaged`` unless it is one)."""
    with stored(what):
        d = json.loads(raw)
        if not isinstance(d, dict):
            raise TypeError(f"a JSON {type(d).__name__}, not an object")
    return d


def stored_scrip(raw: bytes, what: str = "a piece of scrip") -> mc.Scrip:
    with stored(what):
        return mc.Scrip.decode(raw)


_SPENT_HEAD = struct.Struct(">32sH")


def spent_record(digest: bytes, mtype: int, reply: bytes) -> bytes:
    """What the spent list keeps per scrip: the request digest and the reply (for re-fetch)."""
    return _SPENT_HEAD.pack(digest, mtype) + reply


def parse_spent(raw: bytes) -> tuple[bytes, int, bytes]:
    """``(request digest, reply mtype, reply)`` of a spent record; :class:`StoreError` (``damaged``) if short."""
    with stored("a spent-list record"):
        digest, mtype = _SPENT_HEAD.unpack_from(raw)
    return digest, mtype, raw[_SPENT_HEAD.size :]


@dataclass
class Batch:
    """A batch prepared by :meth:`VendorCore.prepare_batch`, for :meth:`VendorCore.commit_batch`."""

    requests: list[tuple[int, bytes]]
    replies: list[tuple[int, bytes]]  # the refusals decided already; the rest are filled in by the commit
    now: int
    fresh: list[tuple[int, mc.Candidate, int, bytes]] = field(default_factory=list)  # would accept: i, c, reply
    rows: list[tuple[bytes, bytes]] = field(default_factory=list)  # their spent records
    held: list[tuple[int, mc.Candidate]] = field(default_factory=list)  # refused unless a re-fetch
    bulk: list[tuple[int, int]] = field(default_factory=list)  # bulk orders: i, first serial reserved for it
    refused: int = 0
    max_reply_bytes: int | None = None  # replies above this (param bytes) are refused, not accepted


class VendorCore:
    """The vendor over its store; every method is synchronous and thread-confined by the caller."""

    def __init__(self, store: Store) -> None:
        self.store = store
        with store.transaction() as txn, stored("the vendor's configuration"):
            vid = txn.get(CFG, b"id")
            if vid is None:
                raise VendorError("no_vendor", "the store holds no vendor: run `cardnet millicent vendor init`")
            validity = int.from_bytes(txn.get(CFG, b"validity") or _u64(7 * 24 * 3600), "big")
            level = mc.Level((txn.get(CFG, b"level") or b"\x02")[0])
            grace = int.from_bytes(txn.get(CFG, b"grace") or _u64(24 * 3600), "big")
            cms = {k[0]: v for k, v in txn.scan(CMASTERS)}
            loaded = _load(txn)
            self.pruned_through = int.from_bytes(txn.get(CFG, b"pruned") or _u64(0), "big")
            self.clock_mark = int.from_bytes(txn.get(CFG, b"now") or _u64(0), "big")
        self._stored_mark = self.clock_mark  # the mark as the store holds it
        self.vendor = mc.Vendor(vid, {}, 0, cms, {}, validity, level, grace)
        self._use(loaded)
        self._move_shared_redeem_log()
        self._serial = self._serial_end = 0  # the reserved block not yet handed out: [_serial, _serial_end)
        self.stats = BatchStats()
        self._committing = False  # a commit_batch is running (in the worker thread, while a batch is prepared)
        self._newer: _Loaded | None = None  # read by such a commit, for the next batch

    def _use(self, loaded: _Loaded) -> None:
        """Sell, accept and mint as ``loaded`` says from the next batch on.

        The licences go first: a commit running meanwhile (in the worker thread) logs a broker's scrip for
        redemption if its licence is known, and this batch's accepted scrip is committed after this returns.
        """
        self.version = loaded.version
        self.licensed = set(loaded.licences)
        self.redeem_keys = {i: key for i, (key, _) in loaded.licences.items()}
        self.licensees = {i: name for i, (_, name) in loaded.licences.items()}
        v = self.vendor
        v.catalogue, v.scrip_secrets, v.mint_index = loaded.catalogue, loaded.secrets, loaded.mint_index
        v.issuers = loaded.issuers

    def _refresh(self) -> None:
        """Before a batch: catalogue, secrets, licences and mint index as the store holds them now, if changed.

        One record read (the version); the rest only when the version changed. Not while a commit runs in the
        worker thread: it holds the store (a read would wait for its fsync, on the event loop), and its own
        transaction reads the version for this (:meth:`commit_batch`). Called on the thread that prepares
        batches: what the vendor knows is swapped between batches, never during one.
        """
        newer, self._newer = self._newer, None  # (one overwritten meanwhile is read again at the next batch)
        if newer is not None and newer.version > self.version:
            self._read_again(newer)
        if not self._committing:
            with self.store.transaction() as txn:
                version = _version(txn)
                if version > self.version:
                    self._read_again(_load(txn, version))

    def _read_again(self, loaded: _Loaded) -> None:
        self._use(loaded)
        log.info(
            "store read again (version %d): %d products, %d licences, minting under index %d",
            loaded.version, len(loaded.catalogue), len(loaded.licences), loaded.mint_index,
        )  # fmt: skip

    @property
    def vendor_id(self) -> bytes:
        return self.vendor.vendor_id

    def judged_time(self, now: int) -> int:
        """The time expiry is judged on: ``now``, or the latest time judged on before if the clock went back."""
        self.clock_mark = max(self.clock_mark, now)
        return self.clock_mark

    def process_batch(self, requests: list[tuple[int, bytes]], now: int) -> list[tuple[int, bytes]]:
        """Replies to ``requests`` (``(mtype, param)`` each), all decided in one durable transaction."""
        return self.commit_batch(self.prepare_batch(requests, now))

    def _serials(self, n: int) -> int:
        """The first of ``n`` fresh serial numbers, from a block reserved durably beforehand (hi/lo).

        A block is reserved in its own transaction before any of its numbers
        is used, so vendor processes sharing a store never hand out the same
        number, and a crash only leaves a gap.
        """
        if self._serial + n > self._serial_end:
            with self.store.transaction() as txn:
                start = int.from_bytes(txn.get(CFG, b"serial") or _u64(1), "big")
                end = start + max(SERIAL_BLOCK, n)
                txn.put(CFG, b"serial", _u64(end))
            self._serial, self._serial_end = start, end
        first = self._serial
        self._serial += n
        return first

    def prepare_batch(
        self, requests: list[tuple[int, bytes]], now: int, *, max_reply_bytes: int | None = None
    ) -> Batch:
        """What a batch needs no spent list for: the checks and the replies that would accept it (CPU only).

        Batches must be committed (:meth:`commit_batch`) in the order they
        were prepared. A request whose accepting reply would be above
        ``max_reply_bytes`` (param bytes: what the connection's frame limit
        leaves) is refused ``too_large`` instead, its scrip unspent (unless it
        is a re-fetch: an identical request accepted before gets its stored
        reply), so no one pays for a reply that cannot be delivered.
        """
        self._refresh()
        vendor = self.vendor
        pruned = self.pruned_through
        bulk = mc.BULK_BUY.code
        now = self.judged_time(now)
        b = Batch(requests, [(0, b"")] * len(requests), now, max_reply_bytes=max_reply_bytes)
        for i, (mt, p) in enumerate(requests):
            if mt == mc.CATALOGUE_ASK.code:  # answered from memory, in its place among the connection's replies
                b.replies[i] = vendor.catalogue_page(p)
                continue
            if mt == bulk:
                try:
                    pieces = mc.BULK_BUY_SCHEMA.decode(p)["pieces"]
                except DecodeError:
                    pieces = 0
                b.bulk.append((i, self._serials(pieces)))
                continue
            c = vendor.prepare(mt, p, now, pruned)
            if not isinstance(c, mc.Candidate):
                b.replies[i] = mc.refusal(c)
                b.refused += 1
            elif c.refusal is not None:  # refused, unless the very same request was accepted before
                b.held.append((i, c))
            else:
                rmt, reply = vendor.accept(c, self._serials(2), now)
                if max_reply_bytes is not None and len(reply) > max_reply_bytes:
                    limit = f"vendor's frame limit of {max_reply_bytes + HEADER_BYTES}"
                    c.refusal = (mc.Status.TOO_LARGE, mc.too_large_detail(len(reply) + HEADER_BYTES, limit))
                    b.held.append((i, c))
                    continue
                b.fresh.append((i, c, rmt, reply))
                b.rows.append((c.spent_key, spent_record(c.digest, rmt, reply)))
        return b

    def commit_batch(self, b: Batch, before_commit: Callable[[], None] | None = None) -> list[tuple[int, bytes]]:
        """Decide a prepared batch in one durable transaction: its replies, valid once this returns.

        The accepting replies' spent records go in with one first-wins bulk
        insert. If any key was already there (a double spend or a re-fetch,
        rare), that insert is rolled back and the records are inserted one by
        one, in request order, to learn which. Bulk orders are decided in the
        same transaction. ``before_commit`` is called when everything is
        written and only the commit (the fsync) is left: the next batch is
        then prepared during the fsync, so this transaction reads the
        vendor's version for it (see :meth:`_refresh`).
        """
        self._committing = True
        try:
            return self._commit_batch(b, before_commit)
        finally:
            self._committing = False

    def _commit_batch(self, b: Batch, before_commit: Callable[[], None] | None) -> list[tuple[int, bytes]]:
        out = b.replies
        stats = self.stats
        stats.refused += b.refused
        with self.store.transaction() as txn:
            if before_commit is not None:  # (read here, under the lock this transaction holds anyway)
                version = _version(txn)
                if version > self.version:
                    self._newer = _load(txn, version)
            for i, c in b.held:
                out[i] = self._stored_or(txn, c, c.refusal or (mc.Status.MALFORMED, ""))
            for i, first in b.bulk:
                out[i] = self._bulk_order(txn, b.requests[i][1], first, b.now, b.max_reply_bytes)
            clash = False
            if b.rows:
                try:
                    with txn.savepoint():
                        if txn.insert_many(SPENT, b.rows) != len(b.rows):
                            raise _Conflict
                except _Conflict:
                    clash = True
            licensed = self.licensed
            for (i, c, mt, reply), (key, row) in zip(b.fresh, b.rows, strict=True):
                if clash and not txn.insert(SPENT, key, row):
                    out[i] = self._stored_or(txn, c, (mc.Status.SPENT, "this scrip was already spent"))
                    continue
                out[i] = (mt, reply)
                stats.accepted += 1
                if licensed and c.secret_index in licensed:
                    txn.append(redeem_log(c.secret_index), c.scrip_id + _u64(c.value))
            if b.now > self._stored_mark:  # (at most once a second: batches within one second share it)
                txn.put(CFG, b"now", _u64(b.now))
            if before_commit is not None:
                before_commit()
        self._stored_mark = max(self._stored_mark, b.now)
        return out

    def _stored_or(self, txn: Any, c: mc.Candidate, refusal: tuple[mc.Status, str]) -> tuple[int, bytes]:
        """The stored reply if this very request was accepted before (a re-fetch), else the refusal."""
        row = txn.get(SPENT, c.spent_key)
        if row is not None and len(row) > 34:
            digest, smt, sreply = parse_spent(row)
            if digest == c.digest:
                self.stats.refetched += 1
                return smt, sreply
        self.stats.refused += 1
        return self.vendor.refuse(c, *refusal)

    def _bulk_order(
        self, txn: Any, param: bytes, serial: int, now: int, max_reply_bytes: int | None = None
    ) -> tuple[int, bytes]:
        """Sell a broker scrip in bulk (``millicent.bulk_buy``); ``serial``: the first of those reserved for it.

        The order is MACed with the agreement's order key and names the
        agreed discount; the scrip is minted under the vendor's own index,
        bound to the broker's customer id, and the order is recorded with its
        reply (an identical order gets it again: the broker's re-fetch) and
        with what the broker owes, in the batch's transaction. An answer above
        ``max_reply_bytes`` is refused ``too_large`` instead, nothing recorded.
        """
        vid = self.vendor_id

        def answer(f: dict[str, Any], key: bytes | None) -> tuple[int, bytes]:
            if key is not None:
                f["mac"] = profile.hmac_sha256(key, mc.bulk_sold_mac_input(vid, f), mc.MAC_BYTES)
            return mc.BULK_SOLD.code, mc.BULK_SOLD_SCHEMA.encode(f)

        def refuse(order: bytes, status: mc.Status, detail: str, key: bytes | None = None) -> tuple[int, bytes]:
            self.stats.refused += 1
            return answer({"order": order, "status": int(status), "detail": detail}, key)

        try:
            f = mc.BULK_BUY_SCHEMA.decode(param)
        except DecodeError as exc:
            return refuse(b"\x00" * mc.RID_BYTES, mc.Status.MALFORMED, f"malformed bulk order: {exc.reason}")
        broker, order = f["broker"], f["order"]
        agreement = txn.get(BULK, broker)
        if agreement is None:
            return refuse(order, mc.Status.STOLEN, "no bulk agreement with this broker id")
        with stored("a bulk agreement"):
            key, discount = agreement[: mc.BULK_KEY_BYTES], agreement[mc.BULK_KEY_BYTES]
        try:
            profile.hmac_verify(key, mc.bulk_buy_mac_input(vid, f), f["mac"])
        except CryptoError:
            return refuse(order, mc.Status.STOLEN, "the bulk order's MAC does not check")
        digest = profile.sha256(param)
        done = txn.get(BULK_ORDERS, broker + order)
        if done is not None:
            if done[:32] == digest:
                self.stats.refetched += 1
                return (mc.BULK_SOLD.code, done[32:])
            return refuse(order, mc.Status.SPENT, "this order id was used for another order", key)
        if f["discount_pct"] != discount:
            return refuse(order, mc.Status.MALFORMED, f"the agreed discount is {discount} %", key)
        try:
            values = mc.denominations(f["value"], f["pieces"])
        except mc.MillicentError as exc:
            return refuse(order, mc.Status.MALFORMED, str(exc), key)
        v = self.vendor
        expiry = now + v.validity_s
        scrip = []
        for value in values:
            s = mc.mint(
                v.scrip_secrets,
                index=v.mint_index,
                vendor=vid,
                value=value,
                serial=serial,
                customer_id=broker,
                expiry=expiry,
            )
            scrip.append(s.encode())
            serial += 1
        price = mc.bulk_price(f["value"], discount)
        reply = answer({"order": order, "status": 0, "scrip": scrip, "price": price}, key)
        if max_reply_bytes is not None and len(reply[1]) > max_reply_bytes:
            return refuse(
                order,
                mc.Status.TOO_LARGE,
                f"the answer would be {len(reply[1]) + HEADER_BYTES} bytes, above the vendor's frame limit of "
                f"{max_reply_bytes + HEADER_BYTES}: order fewer pieces; nothing was sold",
                key,
            )
        txn.put(BULK_ORDERS, broker + order, digest + reply[1])
        sold = txn.get(BULK_LEDGER, broker) or bytes(16)
        total, owed = int.from_bytes(sold[:8], "big") + f["value"], int.from_bytes(sold[8:], "big") + price
        txn.put(BULK_LEDGER, broker, _u64(total) + _u64(owed))
        self.stats.accepted += 1
        return reply

    def bulk_sales(self) -> dict[str, dict[str, Any]]:
        """Per bulk broker: its name, the face value sold to it and what it owes (paid out of band)."""
        with self.store.transaction() as txn:
            names = {k: v[mc.BULK_KEY_BYTES + 1 :].decode("utf-8", "replace") for k, v in txn.scan(BULK)}
            sold = dict(txn.scan(BULK_LEDGER))
        return {
            cid.hex(): {
                "broker": name,
                "value": int.from_bytes(sold.get(cid, bytes(16))[:8], "big"),
                "owed": int.from_bytes(sold.get(cid, bytes(16))[8:], "big"),
            }
            for cid, name in names.items()
        }

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
        now = self.judged_time(now)
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
            if now > self._stored_mark:
                txn.put(CFG, b"now", _u64(now))
        self._stored_mark = max(self._stored_mark, now)
        return out

    def prune(self, now: int, limit: int = PRUNE_PAGE) -> int:
        """Delete up to ``limit`` spent records of scrip expired more than the re-fetch grace ago."""
        cutoff = self.judged_time(now) - self.vendor.refetch_grace_s
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

    def _move_shared_redeem_log(self, page: int = PRUNE_PAGE) -> None:
        """Move the rows of the shared redeem log (a store from before per-licence logs) to their licences' logs,
        a page per transaction; rows of no licence stay (nothing could redeem them)."""
        after = 0
        while True:
            with self.store.transaction() as txn:
                rows = txn.read_log(REDEEM_LOG, after, page)
                moved = [(seq, v) for seq, v in rows if v and v[0] in self.licensed]
                for _, v in moved:
                    txn.append(redeem_log(v[0]), v)
                if moved:
                    txn.delete_log(REDEEM_LOG, [seq for seq, _ in moved])
            if len(rows) < page:
                return
            after = rows[-1][0]

    def redeemable(self, limit: int = mc.REDEEM_MAX_ITEMS, *, index: int | None = None) -> list[tuple[int, bytes]]:
        """Up to ``limit`` rows ``(seq, scrip id || value)`` of accepted licence scrip not redeemed yet, oldest
        first: of licence ``index``, or of every licence."""
        with self.store.transaction() as txn:
            if index is not None:
                return txn.read_log(redeem_log(index), 0, limit)
            rows = [r for i in sorted(self.licensed) for r in txn.read_log(redeem_log(i), 0, limit)]
        return sorted(rows)[:limit]

    def redeemable_by_licence(self) -> list[dict[str, Any]]:
        """Per licence with scrip to redeem: its broker's name, licence index, count and value (read in pages)."""
        out = []
        with self.store.transaction() as txn:
            for i in sorted(self.licensed):
                items = value = 0
                for _, v in iter_pages(txn, redeem_log(i)):
                    items += 1
                    value += _value_of(v)
                if items:
                    out.append({"broker": self.licensees.get(i, ""), "licence": i, "items": items, "value": value})
        return out

    def redeem_request(self, rows: list[tuple[int, bytes]], index: int) -> tuple[bytes, list[int]]:
        """A redeem message param for the rows minted under licence ``index`` (at most ``REDEEM_MAX_ITEMS``); and
        their sequence numbers."""
        mine = [(s, v) for s, v in rows if v[0] == index]
        items = [v for _, v in mine]
        batch = profile.sha256(b"".join(struct.pack(">Q", s) for s, _ in mine))[:16]
        key = self.redeem_keys[index]
        mac = profile.hmac_sha256(key, mc.redeem_mac_input(self.vendor_id, batch, items), mc.MAC_BYTES)
        param = mc.REDEEM_SCHEMA.encode({"vendor": self.vendor_id, "batch": batch, "items": items, "mac": mac})
        return param, [s for s, _ in mine]

    def open_redeemed(self, mtype: int, param: bytes, batch: bytes, index: int) -> dict[str, Any]:
        """The broker's answer to the redemption ``batch`` under licence ``index``, if it checks (MillicentError)."""
        return mc.open_redeemed(mtype, param, vendor=self.vendor_id, batch=batch, key=self.redeem_keys[index])

    def forget_redeemed(self, seqs: list[int], index: int | None = None) -> None:
        """Forget the rows ``seqs`` of licence ``index`` (of any licence: sequence numbers are the store's, never
        reused): their broker has paid for them."""
        with self.store.transaction() as txn:
            for i in sorted(self.licensed) if index is None else [index]:
                txn.delete_log(redeem_log(i), seqs)


_Item = tuple[list[Message], asyncio.Future[list[Message]]]  # a connection's requests and their replies


class _Stopping(Exception):
    """The server stopped before these requests joined a batch: nothing of them was decided."""


class VendorServer:
    """Serves :class:`VendorCore` over TCP with group commit.

    ``failpoint="kill-after-commit"`` makes the process SIGKILL itself right
    after the first batch that accepted scrip has committed and before any
    reply leaves: the integration tests use it to crash between accepting and
    replying.

    :meth:`aclose` stops in order, within ``close_wait_s``: see there.
    """

    def __init__(
        self,
        core: VendorCore,
        *,
        clock: Callable[[], float] = time.time,
        prune_every_s: float = 60.0,
        failpoint: str | None = None,
        slow_commit_s: float = SLOW_COMMIT_S,
        server_limits: ServerLimits = DEFAULT_SERVER_LIMITS,
        limits: Limits = DEFAULT_LIMITS,
        close_wait_s: float = CLOSE_WAIT_S,
    ) -> None:
        self.core = core
        self.close_wait_s = close_wait_s
        self.clock = clock
        self.prune_every_s = prune_every_s
        self.failpoint = failpoint
        self.slow_commit_s = slow_commit_s  # commits slower than this run in a worker thread (see _committer)
        self._queue: asyncio.Queue[_Item | None] = asyncio.Queue(maxsize=1024)  # None: stop (see aclose)
        # one waits, one commits; None: stop once the batches before it are committed
        self._prepared: asyncio.Queue[tuple[Batch, list[_Item]] | None] = asyncio.Queue(maxsize=1)
        self._quiet = asyncio.Event()  # set while no transaction is writing (see _preparer)
        self._quiet.set()
        if limits.recv_limit is None:  # a request above it is refused at its header, unread (RECV_LIMIT)
            limits = dataclasses.replace(limits, recv_limit=RECV_LIMIT)
        self._server = TcpServer(limits=limits, server_limits=server_limits)  # caps and timeouts on the port
        self._max_frame = limits.max_frame  # (what a reply may be: the receive limit bounds requests only)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False  # set by aclose: requests read from now on are not taken
        self._stop = asyncio.Event()  # ends the pruner's wait
        self._closed = asyncio.Event()  # aclose has ended
        self._idle: set[asyncio.Event] = set()  # per connection: set while its sender has nothing left to write
        self.batches = 0
        self._reply_each = (-1, 0)  # (catalogue version, the largest buy reply it allows): see _reply_bytes

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        most = max_content_bytes(self._max_frame)
        for name, product in sorted(self.core.vendor.catalogue.items()):
            if len(product.content) > most:
                log.warning(
                    "product %r is %d bytes, above the %d a reply of this server can carry (frame limit %d): "
                    "purchases of it may be refused as too_large (nothing is spent); split it into smaller products",
                    name, len(product.content), most, self._max_frame,
                )  # fmt: skip
        await self._server.start(host, port, self._serve)
        self._tasks.append(asyncio.create_task(self._preparer()))
        self._tasks.append(asyncio.create_task(self._committer()))
        self._tasks.append(asyncio.create_task(self._pruner()))
        return self._server.address

    async def aclose(self) -> None:
        """Stop in order: take no more requests, decide those already queued, commit their batches and write
        their replies, then close every connection; within ``close_wait_s``.

        A request read after the stop began (or queued behind it by a reader that was waiting for room) is not
        answered, nothing of it decided: its connection is closed after the replies before it, and the client
        sends it again to the vendor once it runs again. A batch whose transaction has begun is committed
        whatever happens (it cannot be called back); if that, or writing the replies to a slow client, takes
        longer than ``close_wait_s``, the server closes anyway (logged): those replies are stored with their
        spent records, and each customer's resend of the same request fetches its own.
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._stop.set()
        try:
            async with asyncio.timeout(self.close_wait_s):
                if self._tasks:
                    await self._queue.put(None)  # the preparer ends here, the committer after what was taken
                    await asyncio.wait(self._tasks)
                while not self._queue.empty():  # put by a reader that was waiting for room: never taken
                    item = self._queue.get_nowait()
                    if item is not None and not item[1].done():
                        item[1].set_exception(_Stopping("the vendor stopped before this request was decided"))
                await asyncio.gather(*(idle.wait() for idle in list(self._idle)))
        except TimeoutError:
            log.warning(
                "stopping after %g s with batches or replies still in progress: what was committed is stored with "
                "its reply; their customers fetch it when they send the same request again",
                self.close_wait_s,
            )
        try:
            for t in self._tasks:
                t.cancel()
            for t in self._tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            await self._server.aclose()
        finally:
            self._closed.set()

    def _reply_bytes(self) -> int:
        """The largest buy reply the catalogue allows now (what a request whose reply is not made yet counts)."""
        version, each = self._reply_each
        if version != self.core.version:
            most = max((len(p.content) for p in self.core.vendor.catalogue.values()), default=0)
            version, each = self.core.version, _buy_reply_bytes(most)
            self._reply_each = (version, each)
        return each

    async def _serve(self, conn: TcpConnection) -> None:
        """Read batches of requests; each batch joins the commit queue; replies leave in order.

        A batch of this connection's requests that failed (its transaction did not commit, or its serial numbers
        could not be reserved: nothing of it was accepted) because the store cannot be written (a full disk) is
        answered ``unavailable`` request by request (:func:`~cardnet.protocols.millicent.not_decided`: not
        decided, nothing spent; the wallet keeps the request and sends it again), and the connection goes on. On
        any other failure the connection ends: the replies before it are sent, the failure is logged and the
        connection is closed at once, so the client sees it and sends the request again (the same bytes: a
        request that was accepted meanwhile is answered from its stored reply). A ``malformed`` refusal would
        make a wallet at the validation level forget scrip that is still good. A connection is never left open
        without its sender.

        A connection holds at most :data:`MAX_UNANSWERED` requests whose replies are not yet written, and
        :data:`MAX_UNSENT_BYTES` of their replies (a reply not made yet counted at the largest buy reply the
        catalogue allows, a bulk order's at the largest answer to its pieces; at least one request): beyond them it
        takes no more requests (the rest of a read waits, at most a read chunk) and reads nothing more until the
        client has taken replies, so a client that sends requests and never reads the replies makes the vendor hold
        a bounded number of bytes for it, not every reply.
        """
        pending: deque[tuple[asyncio.Future[list[Message]], int]] = deque()  # a batch's replies, its size
        unanswered = 0  # requests of the batches in pending and of those the sender is writing
        held = 0  # bytes of their replies: made and not yet written, or (not made yet) counted at _reply_bytes
        backlog: list[Message] = []  # read, not yet taken (no room): at most one read's
        room = asyncio.Event()  # set when unanswered fell (the reader waits on it above MAX_UNANSWERED)
        wake = asyncio.Event()
        idle = asyncio.Event()  # nothing left to write (what aclose waits for)
        idle.set()
        self._idle.add(idle)
        done = False
        loop = asyncio.get_running_loop()

        def made(fut: asyncio.Future[list[Message]], counted: int) -> None:  # a batch's replies are made
            nonlocal held
            actual = 0 if fut.cancelled() or fut.exception() is not None else sum(m.size for m in fut.result())
            held += actual - counted
            room.set()

        async def sender() -> None:
            nonlocal unanswered, held
            try:
                while True:
                    while not pending:
                        idle.set()
                        if done:
                            return
                        wake.clear()
                        await wake.wait()
                    out: list[Message] = []
                    failed: Exception | None = None
                    taken = 0
                    try:
                        fut, taken = pending[0]
                        out.extend(await fut)
                        pending.popleft()
                        while pending and pending[0][0].done():
                            fut, n = pending.popleft()
                            taken += n
                            out.extend(fut.result())
                    except Exception as exc:  # the batch failed (the committer or preparer logged it)
                        failed = exc
                    if out:
                        await send_batch(conn, out, lambda _i, reply, _err: too_large(reply))
                    unanswered -= taken
                    held -= sum(m.size for m in out)
                    room.set()
                    if isinstance(failed, _Stopping):
                        log.info("closing the connection from %s: %s; the client sends it again", conn.peer.label,
                                 failed)  # fmt: skip
                        return
                    if failed is not None:
                        log.warning(
                            "closing the connection from %s: a batch of its requests failed (%s); nothing of it was "
                            "accepted, the client sends it again", conn.peer.label, failed,
                        )  # fmt: skip
                        return
            finally:
                idle.set()
                room.set()  # (a reader waiting for room finds the connection closed)
                if not done:  # the sender stops before the reader: no reply would leave, so the connection ends
                    conn.close()

        task = asyncio.create_task(sender())
        try:
            while True:
                # the client does not read its replies
                while (unanswered >= MAX_UNANSWERED or held >= MAX_UNSENT_BYTES) and not task.done():
                    room.clear()
                    await room.wait()
                if task.done():  # the sender ended: the connection is closing
                    break
                if not backlog:
                    try:
                        backlog = await conn.recv_many()
                    except TooLarge as exc:  # unread: after the replies before it, say so, then close
                        f = exc.frame
                        log.warning("%s began a %d-byte request (mtype 0x%04x), above the receive limit of %d: "
                                    "refused unread, closing", conn.peer.label, f.size, f.mtype, f.limit)  # fmt: skip
                        refusal: asyncio.Future[list[Message]] = loop.create_future()
                        refusal.set_result([Message(f.dst, f.src, *mc.request_too_large(f.mtype, f.size, f.limit,
                                                                                         "vendor"))])  # fmt: skip
                        pending.append((refusal, 0))
                        idle.clear()
                        wake.set()
                        break
                    except (BrokenError, ClosedError):
                        break
                if self._closing:  # not decided, not answered: the client sends it again
                    break
                each = self._reply_bytes()
                n = min(len(backlog), MAX_UNANSWERED - unanswered, max(1, (MAX_UNSENT_BYTES - held) // each))
                msgs, backlog = backlog[:n], backlog[n:]
                counted = n * each
                if any(m.mtype == _BULK_BUY for m in msgs):  # a bulk order's answer is counted at its own size
                    n, counted = _counted_with_bulk(msgs, held, each)
                    msgs, backlog = msgs[:n], msgs[n:] + backlog
                fut: asyncio.Future[list[Message]] = loop.create_future()
                fut.add_done_callback(functools.partial(made, counted=counted))
                pending.append((fut, len(msgs)))
                unanswered += len(msgs)
                held += counted
                idle.clear()
                wake.set()
                await self._queue.put((msgs, fut))
        except asyncio.CancelledError:  # the server closes this connection: nothing more will be written
            task.cancel()
            raise
        finally:
            done = True
            wake.set()
            with contextlib.suppress(BrokenError, ClosedError, TransportError, asyncio.CancelledError):
                await task
            task.cancel()
            self._idle.discard(idle)
            for fut, _ in pending:  # replies no one will send (the connection ended first)
                if not fut.cancel() and not fut.cancelled():
                    fut.exception()  # a failed batch's error, logged by the committer: retrieved here

    async def _preparer(self) -> None:
        """Take everything queued (up to ``MAX_BATCH``), prepare it on the event loop, hand it to the committer.

        When commits run in the worker thread (a slow disk), the CPU work of
        batch N+1 (checks, replies, MACs) overlaps the fsync of batch N: the
        disk then costs latency, not throughput. It starts only once batch N's
        transaction has written everything but the commit (``_quiet``): those
        writes need the interpreter between statements and would wait for a
        busy event loop; the fsync does not.
        """
        q = self._queue
        stopping = False
        while not stopping:
            first = await q.get()
            if first is None:
                break
            items = [first]
            n = len(first[0])
            while n < MAX_BATCH and not q.empty():
                item = q.get_nowait()
                if item is None:
                    stopping = True
                    break
                items.append(item)
                n += len(item[0])
            msgs = [m for ms, _ in items for m in ms]
            requests = [(m.mtype, m.param) if m.mtype in _REQUEST_TYPES else (mc.REQUEST.code, b"") for m in msgs]
            await self._quiet.wait()
            try:
                batch = self.core.prepare_batch(
                    requests, int(self.clock()), max_reply_bytes=self._max_frame - HEADER_BYTES
                )
            except Exception as exc:  # a store failure reserving serial numbers: the customers retry
                _failed(items, exc)
                continue
            await self._prepared.put((batch, items))
        await self._prepared.put(None)  # the committer ends after the batches before it

    async def _committer(self) -> None:
        """Commit prepared batches in order, one at a time; then release their replies.

        Where the commit runs is measured, not fixed: on the event loop while
        commits are quick (the cheapest: no thread hand-offs), in a worker
        thread while they are slow (a busy disk: the next batch is prepared
        during the fsync). Commits on the loop are timed (less
        ``ROW_ALLOWANCE_S`` a record written); above ``SLOW_COMMIT_S`` (moving
        average; ``slow_commit_s`` of the server) the worker takes over, and every
        ``PROBE_EVERY`` batches one commit runs on the loop again to see
        whether the disk has become quick.
        """
        loop = asyncio.get_running_loop()
        quiet = self._quiet
        measured = 0.0  # moving average of the commits timed on the loop
        threaded = 0  # batches committed in the worker since the last probe

        def before_commit() -> None:  # in the worker thread: everything is written, the fsync is next
            loop.call_soon_threadsafe(quiet.set)

        while True:
            got = await self._prepared.get()
            if got is None:  # the server stops: every batch taken is committed and its replies released
                return
            batch, items = got
            quiet.clear()
            try:
                if measured > self.slow_commit_s and threaded < PROBE_EVERY:
                    threaded += 1
                    replies = await asyncio.to_thread(self.core.commit_batch, batch, before_commit)
                else:
                    t0 = time.perf_counter()
                    replies = self.core.commit_batch(batch)
                    took = time.perf_counter() - t0 - ROW_ALLOWANCE_S * len(batch.rows)  # ~ the fsync
                    measured = took if threaded else 0.8 * measured + 0.2 * took
                    threaded = 0
            except Exception as exc:  # a store failure: nothing was accepted; the customers retry
                _failed(items, exc)
                continue
            finally:
                quiet.set()
            self.batches += 1
            if self.failpoint == "kill-after-commit" and any(
                r[0] == mc.SEALED_REPLY.code or _is_ok(r[1]) for r in replies
            ):
                os.kill(os.getpid(), signal.SIGKILL)
            i = 0
            for ms, fut in items:
                out = [m.reply(mt, p) for m, (mt, p) in zip(ms, replies[i : i + len(ms)], strict=True)]
                i += len(ms)
                if not fut.done():
                    fut.set_result(out)
            # Let the connections write these replies before the next transaction starts in the worker
            # thread: a socket write that gives up the interpreter to a busy worker waits for it.
            await asyncio.sleep(0)

    async def _pruner(self) -> None:
        """Prune every ``prune_every_s`` until the server stops (a page being pruned is finished first)."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.prune_every_s):
                    await self._stop.wait()
            if self._stop.is_set():
                return
            try:
                while (
                    await asyncio.to_thread(self.core.prune, int(self.clock())) == PRUNE_PAGE
                    and not self._stop.is_set()
                ):
                    pass
            except CardnetError as exc:
                log.warning("pruning the spent list failed: %s", exc)


TOO_LARGE = "the vendor's reply is above this connection's frame limit and was not sent: ask the vendor to raise it"

NOT_DECIDED = (
    "the vendor cannot write its store (its disk may be full): nothing was decided or spent; send the same request "
    "again later (`cardnet millicent retry`), once its operator has freed space"
)  # (a reply's detail holds 200 characters)


def _write_failed(exc: Exception) -> bool:
    """Whether ``exc`` says the store could not be written (``io``: a full disk, a failing disk)."""
    return isinstance(exc, StoreError) and exc.reason == "io"


def _failed(items: list[_Item], exc: Exception) -> None:
    """A batch that was not committed (nothing of it accepted): each request is answered ``unavailable`` (not
    decided, nothing spent: the customer keeps it and sends it again) when the store could not be written, and its
    connection goes on; on any other error its connection is closed (the customer sends it again)."""
    n = sum(len(ms) for ms, _ in items)
    if _write_failed(exc):
        log.error("batch of %d failed: the store cannot be written (%s): answered 'unavailable'; free space on its "
                  "disk", n, exc)  # fmt: skip
    else:
        log.error("batch of %d failed: %s", n, exc)
    for ms, fut in items:
        if fut.done():
            continue
        if _write_failed(exc):
            fut.set_result([m.reply(*mc.not_decided(m.mtype, m.param, NOT_DECIDED)) for m in ms])
        else:
            fut.set_exception(exc)


def too_large(reply: Message) -> Message | None:
    """What the server sends in place of ``reply`` when it is above the connection's frame limit: a plain (not
    MACed) ``malformed`` refusal, saying so, to the same request id (or bulk order); None for a reply that names
    none (it is then left out).

    The last resort only: a new request whose reply would not fit is refused ``too_large`` before its
    transaction (:meth:`VendorCore.prepare_batch`), nothing spent. This is left for a stored reply fetched again
    that was accepted under a larger frame limit (the limit lowered since, or a vendor from before that check);
    its customer gets it once the vendor's limit is raised again."""
    try:
        if reply.mtype == mc.BULK_SOLD.code:
            order = mc.BULK_SOLD_SCHEMA.decode(reply.param)["order"]
            f = {"order": order, "status": int(mc.Status.MALFORMED), "detail": TOO_LARGE}
            return Message(reply.src, reply.dst, mc.BULK_SOLD.code, mc.BULK_SOLD_SCHEMA.encode(f))
        if reply.mtype == mc.REPLY.code:
            rid = mc.REPLY_CODEC.decode(reply.param)["rid"]
        elif reply.mtype == mc.SEALED_REPLY.code:
            rid = mc.SEALED_CODEC.decode(reply.param)["rid"]
        else:
            return None
    except DecodeError:
        return None
    f = {"rid": rid, "status": int(mc.Status.MALFORMED), "detail": TOO_LARGE}
    return Message(reply.src, reply.dst, mc.REPLY.code, mc.REPLY_CODEC.encode(f))


def _is_ok(param: bytes) -> bool:
    try:
        return bool(mc.REPLY_SCHEMA.decode(param)["status"] == mc.Status.OK)
    except DecodeError:
        return False


_BULK_BUY = mc.BULK_BUY.code
# The largest request a vendor takes (a sealed request, 586 bytes, with margin): a larger frame is refused at its
# header, never read, in words (``mc.request_too_large``), and its connection closed. Replies stay bounded by the
# connection's ``max_frame`` (a product's page may be 60 KiB).
RECV_LIMIT = RecvLimit(mc.VENDOR_RECV_LIMIT)
_REQUEST_TYPES = frozenset((mc.REQUEST.code, mc.SEALED_REQUEST.code, mc.BULK_BUY.code, mc.CATALOGUE_ASK.code))


REDEEM_TIMEOUT_S = 30.0  # the broker's answer to one redemption batch (it decides a batch in one transaction)


async def redeem_at_broker(
    core: VendorCore, host: str, port: int, *, timeout_s: float = REDEEM_TIMEOUT_S
) -> dict[str, Any]:
    """Send the broker at ``host:port`` the scrip it minted under its licence, received since the last
    redemption; forget what it acknowledged. Says what was redeemed, and what is left for other brokers.

    A vendor may license several brokers, each minting under an index of its own, and each pays only for its own
    scrip. The broker at the address is known by its licence's redeem key: it MACs its answers with it. A batch of
    the first licence with scrip to redeem is sent; if the answer checks under another licence's key instead (the
    broker refused a batch that is not its own, nothing recorded), that licence's scrip is sent in its place. Each
    licence's scrip is read from a log of its own, in batches of at most ``REDEEM_MAX_ITEMS``, until none is left:
    every broker's scrip is reached, however much of the others' there is, in bounded memory. The scrip of the
    other licences stays redeemable (``left``: each broker's name, licence index, count and value).
    """
    waiting = core.redeemable_by_licence()
    out: dict[str, Any] = {"broker": None, "licence": None, "items": 0, "paid": 0, "duplicates": 0, "left": []}
    if not waiting:
        return out
    at = f"{host}:{port}"

    def so_far() -> str:
        """What this run redeemed before a batch that failed."""
        if not out["items"]:
            return ""
        return f"; the {out['items']} scrip of the batches before it were redeemed (the broker owes {out['paid']} more)"

    async def send(index: int) -> tuple[int | None, dict[str, Any] | str, list[int]]:
        """Send a batch of licence ``index``: the licence the answer is MACed under and its fields (or why none)."""
        param, seqs = core.redeem_request(core.redeemable(index=index), index)
        batch = mc.REDEEM_SCHEMA.decode(param)["batch"]
        try:
            async with asyncio.timeout(timeout_s), await dial(host, port) as conn:
                await conn.send(Message(SERVICE_UID, SERVICE_UID, mc.REDEEM.code, param))
                reply = await conn.recv()
        except TransportError as exc:
            raise VendorError("unreachable", f"no answer from the broker at {at} ({exc}): is that its HOST:PORT? "
                              f"This batch was not marked redeemed{so_far()}") from None  # fmt: skip
        except TimeoutError:  # (before, it waited for ever on an address that took the connection and said nothing)
            raise VendorError(
                "no_answer", f"the broker at {at} did not answer within {timeout_s:g} s (slow, or not a Millicent "
                f"broker: is that its HOST:PORT?). This batch was not marked redeemed{so_far()}; run `vendor redeem` "
                "again (scrip the broker did take is paid once: sent again, it counts as a duplicate)",
            ) from None  # fmt: skip
        why = ""
        for i in [index, *sorted(k for k in core.redeem_keys if k != index)]:
            try:
                return i, core.open_redeemed(reply.mtype, reply.param, batch, i), seqs
            except mc.MillicentError as exc:
                why = why or str(exc)
        return None, why, seqs

    have = {x["licence"] for x in waiting}
    first = waiting[0]["licence"]
    index, f, seqs = await send(first)
    if index is None:
        raise VendorError(
            "redeem_unanswered",
            f"the answer from {at} is not MACed with the key of any broker this vendor licensed ({f}): is it a "
            "licensed broker's address? Nothing was marked redeemed; run `vendor redeem` again with its HOST:PORT",
        )
    licence = index
    if licence != first and licence in have:  # the broker there holds another licence: send it its own scrip
        index, f, seqs = await send(licence)
    name = core.licensees.get(licence, "")
    out.update(broker=name, licence=licence)
    while licence in have:
        if index != licence or not isinstance(f, dict):
            raise VendorError("redeem_unanswered", f"the answer from {at} no longer checks ({f}): this batch was not "
                              f"marked redeemed{so_far()}; run `vendor redeem` again")  # fmt: skip
        if f["status"] != 0:
            raise VendorError("redeem_refused", f"the broker {name} at {at} refused the redemption: "
                              f"{f.get('detail', '')}; this batch was not marked redeemed{so_far()}")  # fmt: skip
        core.forget_redeemed(seqs, licence)
        out.update(items=out["items"] + len(seqs), paid=out["paid"] + f.get("paid", 0),
                   duplicates=out["duplicates"] + f.get("duplicates", 0))  # fmt: skip
        if len(seqs) < mc.REDEEM_MAX_ITEMS or not core.redeemable(index=licence, limit=1):
            break
        index, f, seqs = await send(licence)  # more of its scrip than one batch holds: the next batch
    out["left"] = [x for x in waiting if x["licence"] != out["licence"]]
    return out


def _value_of(redeemable: bytes) -> int:
    """The value of a redeemable row (scrip id, then the value as 8 bytes)."""
    with stored("a redeemable scrip record"):
        return int.from_bytes(redeemable[mc.SCRIP_ID_BYTES : mc.SCRIP_ID_BYTES + 8], "big")
