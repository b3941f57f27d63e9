"""The Millicent broker: sells scrip of many vendors against prepaid balances, redeems what vendors received.

Theory of operation
-------------------
Customers open an account with a P-256 key (``millicent.open``); the broker
assigns an 8-byte customer id. An operator credits prepaid balances
(:func:`deposit`). A purchase (``millicent.purchase``) is signed with the
account key and names a request id: the broker debits the balance, mints the
scrip under the vendor's licence, records the scrip id as minted, and stores
the reply under ``(customer id, request id)`` in one durable transaction, so
a customer who lost the reply asks again with the same request id and gets
the same scrip, never a second debit. The customer secret for that vendor is
sealed (HPKE) to the account key when the customer asks for it (once per
vendor): that is the paper's confidential channel for the first purchase.

A licence (:func:`add_licence`, made by the vendor's ``export_licence``)
shares one master scrip secret under an index reserved for this broker, the
vendor's customer master secrets and a redeem key. Vendors redeem the scrip
they received (``millicent.redeem``, MACed with the redeem key): each scrip
id is paid once (first-wins), at the broker's recorded value less the
licence's discount, and only if this broker minted it.

**Bulk mode** (:func:`add_bulk`, per vendor; the vendor's ``add_bulk_broker``
makes the agreement): the broker holds no master secret of the vendor, only
a customer id there, its customer secret and an order key. It buys scrip in
bulk (``millicent.bulk_buy``, MACed with the order key, naming the agreed
discount), keeps it as *stock*, and sells a customer scrip by paying the
vendor with a stock piece for scrip bound to her (``Op.ISSUE``): the vendor
returns the customer's scrip, the broker's change (back into stock) and the
customer's secret sealed under the broker's secret. Every vendor call is
recorded before it is sent and its reply applied in one transaction, so a
lost reply is fetched again with the same bytes (the vendor keeps replies).
The core does no I/O: a purchase that needs the vendor comes back as a
:class:`VendorCall` for the server to carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from cardnet.crypto import profile
from cardnet.crypto.errors import CryptoError
from cardnet.errors import CardnetError
from cardnet.protocols import millicent as mc
from cardnet.services.millicent.vendor import CLOSE_WAIT_S, stored, stored_json, stored_scrip
from cardnet.store import Store, StoreError
from cardnet.transport import (
    DEFAULT_LIMITS,
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
)
from cardnet.wire import DecodeError, Message, Uid

log = logging.getLogger("cardnet.millicent.broker")

CFG, LICENCES, ACCOUNTS, KEYS, REQUESTS = "mb.cfg", "mb.lic", "mb.acct", "mb.pub", "mb.req"
MINTED, REDEEMED, VENDORS = "mb.minted", "mb.red", "mb.vend"
MODES, BULK, STOCK, ORDERS, ISSUES, BOUGHT = "mb.mode", "mb.bulk", "mb.stock", "mb.order", "mb.issue", "mb.bought"
REPLY_KEYS = "mb.rkey"  # customer id -> the account's reply key (MACs every answer to its purchases)
# Accounts opened and never credited (docs/decisions.md, "Unfunded Millicent accounts are bounded"): opening number (8)
# + customer id -> b"" (key order = opening order: the oldest first), and customer id -> opening number; their count
# is kept in CFG (UNFUNDED_COUNT). Past max_unfunded the oldest is dropped; the first deposit takes an account out.
UNFUNDED, UNFUNDED_BY_CID = "mb.unfunded", "mb.unfcid"
UNFUNDED_COUNT, UNFUNDED_SEQ = b"unfunded", b"unfunded_seq"
MAX_UNFUNDED = 100_000  # accounts opened and never credited a broker keeps (`broker run --max-unfunded`)
# Account openings the server takes from one address (an IPv4 address, an IPv6 /64): a burst of OPEN_BURST, then
# OPEN_RATE_PER_S a second (`broker run --open-burst`, `--open-rate`); more are refused in words, nothing stored.
OPEN_BURST = 64
OPEN_RATE_PER_S = 1.0
# Purchases refused (and so stored for ever) the server takes from one address: as many at once, then a second; a
# purchase from an address past them that would be refused is answered `pending` instead, nothing stored.
REFUSAL_BURST = 64
REFUSAL_RATE_PER_S = 1.0
OPEN_PEERS = 4096  # addresses whose openings are remembered at once (those back to a full burst are forgotten first)
# A sale that ordered stock: customer id + request id -> what it waits on ({"order": vendor + order id}), then what
# that order left it ({"piece": a stock piece reserved for it} or {"refused": the vendor's words}), with "since":
# when its customer last sent the purchase (released after ``reservation_hold_s``: :meth:`BrokerCore.release_stale`)
WAITS = "mb.wait"
# ... and the index of who waits on an order: vendor + order id + customer id + request id -> the sale's value
WAITERS = "mb.waiter"
RELEASED = "mb.released"  # vendor -> value (8) + pieces (8) of reserved stock released back to stock, all told
# Each release of a sale's reservation, for the operator (`broker status`: releases): when (8) + sale -> JSON (sale,
# vendor, what, value, why); the newest KEEP_RELEASES are kept (the totals above are kept for ever).
RELEASES = "mb.relrec"
KEEP_RELEASES = 200
LICENCE_MODE, BULK_MODE = "licence", "bulk"
STOCK_MARGIN_S = 3600  # a stock piece expiring sooner than this is not sold (the customer needs time to spend)
VENDOR_TIMEOUT_S = 10.0  # the default bound on all the vendor calls of one purchase (`broker run --vendor-timeout`)
# The broker's `issue` requests are sealed (level 3): every vendor takes them, whatever its lowest level (a vendor
# that wants level 3 refused the level-2 requests of before, so bulk mode could not sell its scrip at all)
ISSUE_LEVEL = mc.Level.PRIVATE
MAX_VENDOR_CALLS = 4  # vendor calls one purchase may need (buy stock, then issue; each with a retry)
# A sale's reservation (stock, or a place in an order) whose customer has not sent the purchase again for this long
# goes back to stock (`broker run --reservation-hold`): docs/decisions.md, "Reserved bulk stock ... is released".
RESERVATION_HOLD_S = 24 * 3600
SWEEP_EVERY_S = 60.0  # the server looks for such reservations this often (more often for a short hold)
# Sales of one account that wait for stock at once (ordered, or holding a piece reserved for them): nothing is debited
# until the customer comes back, so without a bound one account could make the broker order and reserve stock without
# end (docs/decisions.md, "Sales waiting for bulk stock are bounded per account"). Their values together stay within
# the account's balance as well, so all reservations together are bounded by the balances customers prepaid.
MAX_WAITING_SALES = 16
# The largest request a broker takes: an account opening or a purchase (152 bytes), a redemption batch of
# REDEEM_MAX_ITEMS (170,085), each with margin. A larger frame is refused at its header, never read, in words
# (``mc.request_too_large``), and its connection closed.
RECV_LIMIT = RecvLimit(mc.BROKER_RECV_LIMIT, ((mc.REDEEM.code, mc.BROKER_REDEEM_RECV_LIMIT),))

_T = TypeVar("_T")

OK, REFUSED, PENDING = mc.PURCHASE_OK, mc.PURCHASE_REFUSED, mc.PURCHASE_PENDING


class BrokerError(CardnetError):
    """A broker operation was refused (``reason`` says why)."""


def _u64(v: int) -> bytes:
    return v.to_bytes(8, "big")


def add_licence(store: Store, licence: dict[str, Any], *, discount_pct: int = 10) -> bytes:
    """Keep a vendor's licence (from ``cardnet millicent vendor licence``); returns the vendor id."""
    vendor, record = licence_record(licence, discount_pct=discount_pct)
    with store.transaction() as txn:
        txn.put(LICENCES, vendor, json.dumps(record).encode())
        txn.put(MODES, vendor, LICENCE_MODE.encode())
        _release_vendor(txn, vendor, int(time.time()))
    return vendor


def _what_is_wrong(exc: Exception) -> str:
    """A reading error of a JSON file in words: a missing field by name, not Python's bare ``'vendor'``."""
    if isinstance(exc, KeyError):
        return f"it has no {exc.args[0]!r} field"
    if isinstance(exc, (TypeError, AttributeError)):
        return "its fields are not of the right kinds"
    return str(exc)


def licence_record(licence: Any, *, discount_pct: int = 10) -> tuple[bytes, dict[str, Any]]:
    """The vendor id and what the broker keeps of a licence; ``bad_licence`` if it is not one."""
    try:
        vendor = bytes.fromhex(licence["vendor"])
        index = int(licence["index"])
        secret = bytes.fromhex(licence["scrip_secret"])
        redeem_key = bytes.fromhex(licence["redeem_key"])
        cms = {int(k): bytes.fromhex(v) for k, v in licence["customer_masters"].items()}
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        wrong = _what_is_wrong(exc)
        raise BrokerError("bad_licence", f"the licence file is not a Millicent licence: {wrong}") from None
    if len(vendor) != mc.VENDOR_BYTES or len(secret) != mc.MASTER_SECRET_BYTES or not 0 <= index <= 255:
        raise BrokerError("bad_licence", "the licence has a bad vendor id, index or secret")
    if not 0 <= discount_pct <= 100:
        raise BrokerError("bad_licence", "the discount is 0..100 %")
    record = {
        "index": index,
        "scrip_secret": secret.hex(),
        "redeem_key": redeem_key.hex(),
        "customer_masters": {str(k): v.hex() for k, v in cms.items()},
        "discount_pct": discount_pct,
    }
    return vendor, record


def add_bulk(
    store: Store, agreement: dict[str, Any], *, vendor_at: str, denomination: int = 100, pieces: int = 10
) -> bytes:
    """Keep a vendor's bulk agreement (from ``cardnet millicent vendor bulk-agreement``): sell its scrip in bulk mode.

    ``vendor_at``: the vendor's HOST:PORT. When the stock cannot cover a sale
    the broker buys ``pieces`` pieces of ``denomination`` (or of the sale's
    value, if larger). Returns the vendor id.
    """
    vendor, record = bulk_record(agreement, vendor_at=vendor_at, denomination=denomination, pieces=pieces)
    with store.transaction() as txn:
        txn.put(BULK, vendor, json.dumps(record).encode())
        txn.put(MODES, vendor, BULK_MODE.encode())
    return vendor


def bulk_record(
    agreement: Any, *, vendor_at: str, denomination: int = 100, pieces: int = 10
) -> tuple[bytes, dict[str, Any]]:
    """The vendor id and what the broker keeps of a bulk agreement; ``bad_agreement`` if it is not one."""
    try:
        vendor = bytes.fromhex(agreement["vendor"])
        cid = bytes.fromhex(agreement["customer_id"])
        secret = bytes.fromhex(agreement["customer_secret"])
        key = bytes.fromhex(agreement["order_key"])
        discount = int(agreement["discount_pct"])
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise BrokerError(
            "bad_agreement", f"the file is not a Millicent bulk agreement: {_what_is_wrong(exc)}"
        ) from None
    if len(vendor) != mc.VENDOR_BYTES or len(cid) != mc.CUSTOMER_ID_BYTES or len(key) != mc.BULK_KEY_BYTES:
        raise BrokerError("bad_agreement", "the agreement has a bad vendor id, customer id or order key")
    host, _, port = vendor_at.rpartition(":")
    if not host or not port.isdigit():
        raise BrokerError("bad_address", f"the vendor's address must be HOST:PORT, got {vendor_at!r}")
    if denomination < 1 or not 1 <= pieces <= mc.MAX_PIECES:
        raise BrokerError("bad_agreement", f"denomination >= 1 and 1..{mc.MAX_PIECES} pieces per order")
    record = {
        "customer_id": cid.hex(),
        "customer_secret": secret.hex(),
        "order_key": key.hex(),
        "discount_pct": discount,
        "vendor_at": vendor_at,
        "denomination": denomination,
        "pieces": pieces,
    }
    return vendor, record


def set_mode(store: Store, vendor: bytes, mode: str) -> None:
    """Choose how the broker gets ``vendor``'s scrip: ``licence`` (mint it) or ``bulk`` (buy it)."""
    table = {LICENCE_MODE: LICENCES, BULK_MODE: BULK}.get(mode)
    if table is None:
        raise BrokerError("bad_mode", f"the mode is {LICENCE_MODE!r} or {BULK_MODE!r}, got {mode!r}")
    with store.transaction() as txn:
        if txn.get(table, vendor) is None:
            what = "add-licence" if mode == LICENCE_MODE else "add-bulk"
            raise BrokerError("no_agreement", f"no {mode} agreement with vendor {vendor.hex()}: run broker {what}")
        txn.put(MODES, vendor, mode.encode())
        if mode == LICENCE_MODE:
            _release_vendor(txn, vendor, int(time.time()))


def deposit(store: Store, customer_id: bytes, amount: int) -> int:
    """Credit a prepaid balance (an operator's action: the customer paid outside cardnet). Returns it."""
    with store.transaction() as txn:
        row = txn.get(ACCOUNTS, customer_id)
        if row is None:
            raise BrokerError("no_account", f"no account {customer_id.hex()}: the customer opens one first")
        pub, balance = parse_account(row)
        if not 0 < amount <= mc.MAX_VALUE - balance:  # (a balance above it could not be told in any answer)
            raise BrokerError(
                "too_much", f"customer {customer_id.hex()}'s balance is {balance} and holds at most {mc.MAX_VALUE}: "
                f"deposit at most {max(0, mc.MAX_VALUE - balance)}",
            )  # fmt: skip
        balance += amount
        txn.put(ACCOUNTS, customer_id, pub + _u64(balance))
        _funded(txn, customer_id)
        return balance


def _counter(txn: Any, key: bytes) -> int:
    return int.from_bytes(txn.get(CFG, key) or bytes(8), "big")


def _funded(txn: Any, cid: bytes) -> None:
    """Account ``cid`` was credited: it is no longer an unfunded account (never dropped for a newer one)."""
    seq = txn.get(UNFUNDED_BY_CID, cid)
    if seq is not None:
        txn.delete(UNFUNDED_BY_CID, cid)
        txn.delete(UNFUNDED, seq + cid)
        txn.put(CFG, UNFUNDED_COUNT, _u64(max(0, _counter(txn, UNFUNDED_COUNT) - 1)))


def _drop_unfunded(txn: Any, seq: bytes, cid: bytes) -> None:
    """Forget unfunded account ``cid`` (opened as number ``seq``): its key, reply key and the purchases it was
    refused (it never had money, so it has no sale, debit or stock reservation); opening it again makes a new one."""
    row = txn.get(ACCOUNTS, cid)
    if row is not None:
        pub, _ = parse_account(row)
        if txn.get(KEYS, pub) == cid:
            txn.delete(KEYS, pub)
        txn.delete(ACCOUNTS, cid)
    txn.delete(REPLY_KEYS, cid)
    for key, _ in txn.scan(REQUESTS, cid):
        txn.delete(REQUESTS, key)
    txn.delete(UNFUNDED, seq + cid)
    txn.delete(UNFUNDED_BY_CID, cid)


def parse_account(row: bytes) -> tuple[bytes, int]:
    """``(account public key, balance)`` of an account record (65 + 8 bytes)."""
    with stored("an account record"):
        if len(row) != 73:
            raise ValueError(f"{len(row)} bytes, not 73")
    return row[:65], int.from_bytes(row[65:73], "big")


_SALE_HEX = ("vendor", "request", "issue_rid", "piece", "digest")


def parse_sale(raw: bytes) -> dict[str, Any]:
    """A sale from stock waiting for the vendor's answer (see :meth:`BrokerCore._sell_from_stock`), checked."""
    rec = stored_json(raw, "a pending sale")
    with stored("a pending sale"):
        for k in _SALE_HEX:
            bytes.fromhex(rec[k])
        for k in ("mtype", "value", "want_secret"):
            if not isinstance(rec[k], int):
                raise TypeError(f"{k} is not an integer")
        if not isinstance(rec["address"], str):
            raise TypeError("address is not text")
        mc.Level(rec.setdefault("level", int(mc.Level.THEFT)))  # (a sale recorded before "level" was at level 2)
    return rec


class _Licence:
    __slots__ = ("cms", "discount_pct", "index", "redeem_key", "secrets")

    def __init__(self, raw: bytes) -> None:
        d = stored_json(raw, "a licence record")
        with stored("a licence record"):
            self.index: int = int(d["index"])
            self.secrets = {self.index: bytes.fromhex(d["scrip_secret"])}
            self.redeem_key = bytes.fromhex(d["redeem_key"])
            self.cms = {int(k): bytes.fromhex(v) for k, v in d["customer_masters"].items()}
            self.discount_pct: int = int(d["discount_pct"])


class _Bulk:
    __slots__ = ("cid", "denomination", "discount_pct", "key", "pieces", "secret", "vendor_at")

    def __init__(self, raw: bytes) -> None:
        d = stored_json(raw, "a bulk agreement record")
        with stored("a bulk agreement record"):
            self.cid = bytes.fromhex(d["customer_id"])
            self.secret = bytes.fromhex(d["customer_secret"])
            self.key = bytes.fromhex(d["order_key"])
            self.discount_pct: int = int(d["discount_pct"])
            self.vendor_at: str = str(d["vendor_at"])
            self.denomination: int = int(d["denomination"])
            self.pieces: int = int(d["pieces"])


@dataclass(frozen=True, kw_only=True)
class VendorCall:
    """A message the broker must carry to a vendor; hand the reply (or None if none came) back to the core.

    ``kind`` is ``order`` (a bulk purchase: :meth:`BrokerCore.finish_order`, given an answer only)
    or ``issue`` (a sale from stock: :meth:`BrokerCore.finish_issue`). The
    call is durable before it is returned: sending it again is always safe.
    """

    kind: str
    vendor: bytes
    address: str
    mtype: int
    param: bytes
    key: bytes  # the pending record: vendor + order id, or customer id + purchase request id


@dataclass(frozen=True)
class OrderOutcome:
    """What became of a bulk order: ``bought`` (the stock grew), and a sentence for a person.

    ``refused``: the vendor refused it (settled: sending it again changes nothing); neither: it stays pending."""

    bought: bool
    detail: str
    refused: bool = False

    def __str__(self) -> str:
        return self.detail


class BrokerCore:
    """The broker over its store (synchronous; the server runs it in a worker thread)."""

    def __init__(
        self,
        store: Store,
        *,
        rng: Callable[[int], bytes] = os.urandom,
        validity_s: int = 7 * 24 * 3600,
        stock_margin_s: int = STOCK_MARGIN_S,
        reservation_hold_s: int = RESERVATION_HOLD_S,
        max_unfunded: int = MAX_UNFUNDED,
    ) -> None:
        if max_unfunded < 1:
            raise ValueError(f"max_unfunded is at least 1, got {max_unfunded}")
        self.store = store
        self.rng = rng
        self.validity_s = validity_s
        self.stock_margin_s = stock_margin_s  # bulk stock expiring sooner than this is not sold
        self.reservation_hold_s = reservation_hold_s  # see release_stale
        self.max_unfunded = max_unfunded  # accounts opened and never credited kept: see open_account

    def _licence(self, txn: Any, vendor: bytes) -> _Licence | None:
        raw = txn.get(LICENCES, vendor)
        return None if raw is None else _Licence(raw)

    def open_account(self, pub: bytes) -> bytes:
        """Open an account for key ``pub`` (the same key again: the same account), answered ``millicent.opened``.

        Opening is unauthenticated, so what it stores is bounded: an account is *unfunded* until its first
        deposit, and at most ``max_unfunded`` of those are kept; opening one more drops the oldest unfunded account
        (its customer opens again, and gets a new customer id). Accounts ever credited are never dropped."""
        try:
            profile.load_public(pub)
        except CryptoError:
            return mc.OPENED_SCHEMA.encode({"status": REFUSED, "detail": "not a P-256 public key"})
        with self.store.transaction() as txn:
            existing = txn.get(KEYS, pub)
            if existing is not None:
                cid = existing
            else:
                while True:
                    cid = self.rng(mc.CUSTOMER_ID_BYTES)
                    if txn.insert(ACCOUNTS, cid, pub + _u64(0)):
                        break
                txn.put(KEYS, pub, cid)
                seq = _u64(_counter(txn, UNFUNDED_SEQ) + 1)
                txn.put(CFG, UNFUNDED_SEQ, seq)
                txn.put(UNFUNDED, seq + cid, b"")
                txn.put(UNFUNDED_BY_CID, cid, seq)
                count = _counter(txn, UNFUNDED_COUNT) + 1
                if count > self.max_unfunded:
                    for key, _ in txn.scan(UNFUNDED, limit=count - self.max_unfunded):  # the oldest first
                        _drop_unfunded(txn, key[:8], key[8:])
                        log.info("dropped unfunded account %s (more than %d accounts opened and never credited)",
                                 key[8:].hex(), self.max_unfunded)  # fmt: skip
                        count -= 1
                txn.put(CFG, UNFUNDED_COUNT, _u64(count))
            rkey = txn.get(REPLY_KEYS, cid)
            if rkey is None:
                rkey = self.rng(mc.REPLY_KEY_BYTES)
                txn.put(REPLY_KEYS, cid, rkey)
        box = profile.hpke_seal(profile.load_public(pub), rkey, info=mc.REPLY_KEY_INFO + cid)
        return mc.OPENED_SCHEMA.encode({"status": OK, "customer_id": cid, "key_box": box})

    def purchase(self, param: bytes, now: int) -> bytes:
        """A purchase that needs no vendor (licence mode, refusals, repeats); bulk mode needs :meth:`begin_purchase`."""
        step = self.begin_purchase(param, now)
        if isinstance(step, VendorCall):
            return self.not_finished(param, BULK_NEEDS_SERVER)
        return step

    def begin_purchase(self, param: bytes, now: int, *, keep_refusals: bool = True) -> bytes | VendorCall:
        """Decide a purchase: the reply, or the vendor call it needs first (bulk mode).

        ``keep_refusals`` False (the server: its sender's address was refused too many purchases lately): a purchase
        this would refuse (balance, vendor, agreement) is answered ``pending`` instead, nothing stored, and decided
        when it is sent again; a refusal is stored for ever, so storing them is what a flood of them costs."""
        try:
            f = mc.PURCHASE_SCHEMA.decode(param)
        except DecodeError as exc:
            return _purchased(b"\x00" * 16, f"malformed purchase: {exc.reason}")
        rid, cid = f["rid"], f["customer_id"]
        digest = profile.sha256(param)
        with self.store.transaction() as txn:
            done = txn.get(REQUESTS, cid + rid)
            if done is not None:
                return done  # the same purchase again: the same scrip, no second debit
            pending = txn.get(ISSUES, cid + rid)
            if pending is not None:
                return _issue_call(cid + rid, parse_sale(pending))  # its reply was lost: ask again
            acct = txn.get(ACCOUNTS, cid)
            if acct is None:
                return _purchased(rid, "no such account")
            pub_raw, balance = parse_account(acct)
            rkey = txn.get(REPLY_KEYS, cid)
            try:
                profile.verify(profile.load_public(pub_raw), f["sig"], mc.purchase_sig_input(f))
            except CryptoError:
                return _purchased(rid, "the purchase is not signed by the account's key", key=rkey, digest=digest)
            vendor = f["vendor"]
            mode = (txn.get(MODES, vendor) or (b"licence" if txn.get(LICENCES, vendor) else b"")).decode()
            value = f["value"]
            lic = self._licence(txn, vendor)
            bulk = self._bulk(txn, vendor)
            refusal = None
            if mode not in (LICENCE_MODE, BULK_MODE):
                refusal = f"this broker does not sell scrip of vendor {vendor.hex()}"
            elif value == 0 or value > balance:
                refusal = f"balance {balance} does not cover {value}"
            elif (bulk if mode == BULK_MODE else lic) is None:
                refusal = f"no {mode} agreement with vendor {vendor.hex()}"
            if refusal is not None and not keep_refusals:  # not decided: nothing stored
                return _purchased(rid, REFUSALS_HELD, status=PENDING, key=rkey, digest=digest)
            if refusal is not None:  # final: stored, so a replay of this purchase never succeeds later
                self._release_sale(txn, cid + rid)
                reply = _purchased(rid, refusal, balance, key=rkey, digest=digest)
                txn.put(REQUESTS, cid + rid, reply)
                return reply
            if mode == BULK_MODE:
                assert bulk is not None
                return self._sell_from_stock(txn, f, bulk, pub_raw, balance, now, digest)
            assert lic is not None
            self._release_sale(txn, cid + rid)  # (it waited for bulk stock before the vendor left bulk mode)
            skey = b"serial" + bytes([lic.index])
            serial = int.from_bytes(txn.get(CFG, skey) or _u64(1), "big")
            scrip = mc.mint(
                lic.secrets,
                index=lic.index,
                vendor=vendor,
                value=value,
                serial=serial,
                customer_id=cid,
                expiry=now + self.validity_s,
            )
            txn.put(CFG, skey, _u64(serial + 1))
            txn.put(MINTED, vendor + scrip.scrip_id, _u64(value))
            txn.put(ACCOUNTS, cid, pub_raw + _u64(balance - value))
            out: dict[str, Any] = {"rid": rid, "status": OK, "scrip": scrip.encode(), "balance": balance - value}
            if f["want_secret"]:
                secret = mc.customer_secret(lic.cms, cid)
                out["secret_box"] = profile.hpke_seal(
                    profile.load_public(pub_raw), secret, info=b"millicent customer secret" + vendor + cid
                )
            reply = mc.make_purchased(rkey, digest, out)
            txn.put(REQUESTS, cid + rid, reply)
        return reply

    # -- bulk mode --------------------------------------------------------------------------

    def _bulk(self, txn: Any, vendor: bytes) -> _Bulk | None:
        raw = txn.get(BULK, vendor)
        return None if raw is None else _Bulk(raw)

    def _sell_from_stock(
        self, txn: Any, f: dict[str, Any], bulk: _Bulk, pub_raw: bytes, balance: int, now: int, digest: bytes
    ) -> bytes | VendorCall:
        """Reserve a stock piece and the customer's money, record the vendor request: or order stock first.

        A sale that had to order stock gets a piece of that order (reserved for it when the order's answer is
        applied, whoever applies it): a concurrent sale cannot take it. If the vendor refused the order, the sale
        is refused in words (nothing debited)."""
        vendor, value, cid, rid = f["vendor"], f["value"], f["customer_id"], f["rid"]
        piece: tuple[bytes | None, bytes] | None = None
        reason: str | None = None
        waiting = txn.get(WAITS, cid + rid)
        if waiting is not None:
            note = stored_json(waiting, "a sale waiting for stock")
            with stored("a sale waiting for stock"):
                if "order" in note:
                    okey = bytes.fromhex(note["order"])
                    param = txn.get(ORDERS, okey)
                    if param is not None:  # not answered yet: carry the same order again
                        txn.put(WAITS, cid + rid, json.dumps({**note, "since": now}).encode())  # (she is here)
                        return self._vendor_order(vendor, bulk, param, okey)
                elif "piece" in note:
                    piece = (None, bytes.fromhex(note["piece"]))
                else:
                    reason = str(note["refused"])
            txn.delete(WAITS, cid + rid)
            if reason is not None:
                reply = _purchased(rid, _refused_order_words(reason), balance, key=txn.get(REPLY_KEYS, cid),
                                   digest=digest)  # fmt: skip
                txn.put(REQUESTS, cid + rid, reply)  # final: nothing was debited, a new purchase may be bought
                return reply
            if piece is not None:
                s = stored_scrip(piece[1], "a stock piece")
                if s.value < value or s.expiry <= now + self.stock_margin_s:  # (cannot serve this sale: stock)
                    txn.put(STOCK, _stock_key(s), piece[1])
                    piece = None
        if piece is None:
            for key, raw in txn.scan(STOCK, vendor):  # key order = expiry order: the oldest usable piece first
                s = stored_scrip(raw, "a stock piece")
                if s.value >= value and s.expiry > now + self.stock_margin_s:
                    piece = (key, raw)
                    break
        if piece is None:
            bound, free = self._waiting_bound(txn, cid, value, balance)
            if bound is not None:  # final: nothing was debited, a new purchase may be bought
                reply = _purchased(rid, bound, balance, key=txn.get(REPLY_KEYS, cid), digest=digest)
                txn.put(REQUESTS, cid + rid, reply)
                return reply
            call = self._order_for_sale(txn, vendor, bulk, value, free)
            txn.put(WAITS, cid + rid, json.dumps({"order": call.key.hex(), "since": now, "value": value}).encode())
            txn.put(WAITERS, call.key + cid + rid, _u64(value))
            return call
        issue_rid = self.rng(mc.RID_BYTES)
        mtype, request = mc.make_request(
            piece[1],
            rid=issue_rid,
            level=ISSUE_LEVEL,
            secret=bulk.secret,
            price=value,
            op=mc.Op.ISSUE,
            for_customer=cid,
        )
        record = {
            "vendor": vendor.hex(),
            "address": bulk.vendor_at,
            "mtype": mtype,
            "request": request.hex(),
            "issue_rid": issue_rid.hex(),
            "piece": piece[1].hex(),
            "value": value,
            "want_secret": f["want_secret"],
            "digest": digest.hex(),  # of the customer's purchase: the answer's MAC covers it
            "level": int(ISSUE_LEVEL),
        }
        if piece[0] is not None:
            txn.delete(STOCK, piece[0])
        txn.put(ACCOUNTS, cid, pub_raw + _u64(balance - value))
        txn.put(ISSUES, cid + rid, json.dumps(record).encode())
        return _issue_call(cid + rid, record)

    @staticmethod
    def _waiting_bound(txn: Any, cid: bytes, value: int, balance: int) -> tuple[str | None, int]:
        """Why a new sale of ``value`` of account ``cid`` may not wait for stock (its words), or None; and what the
        sale can be worth: the account's balance less the values of its other waiting sales (at least ``value``
        when it may wait), the most a piece reserved for it may be worth. At most :data:`MAX_WAITING_SALES` of an
        account's sales wait at once, their values within its balance. A sale whose order the vendor refused (its
        note holds only the vendor's words, for its customer) holds neither stock nor money: it counts for neither."""
        n = waiting = 0
        for _, raw in txn.scan(WAITS, cid):
            note = stored_json(raw, "a sale waiting for stock")
            if "refused" in note:
                continue
            n += 1
            with stored("a sale waiting for stock"):
                waiting += int(note.get("value", 0))
        done = "finish them first (millicent retry); nothing was debited"
        if n >= MAX_WAITING_SALES:
            words = f"{n} purchases of yours already wait for the vendor's stock (at most {MAX_WAITING_SALES}): {done}"
            return words, 0
        if waiting + value > balance:
            return (f"purchases of yours worth {waiting} already wait for the vendor's stock; with this {value} they "
                    f"exceed your balance {balance}: {done}"), 0  # fmt: skip
        return None, balance - waiting

    @staticmethod
    def _release_sale(txn: Any, sale: bytes) -> None:
        """A sale that ends without its stock: the piece reserved for it back to stock, or it waits no more."""
        raw = txn.get(WAITS, sale)
        if raw is not None:
            _release_note(txn, sale, stored_json(raw, "a sale waiting for stock"), count=False)

    def release_stale(self, now: int) -> list[dict[str, Any]]:
        """Release the reservations of sales whose customer has not sent the purchase again for more than
        ``reservation_hold_s`` (a piece back to stock, a place in an order given up, a refusal's words dropped),
        in one transaction, counted per vendor (:meth:`stock`: ``released_value``). Nothing was debited for
        them: a customer who does come back later is served as a new sale. Returns one row per sale released:
        sale (customer id + request id), vendor, what (piece, order or refused) and value (a piece's)."""
        rows: list[dict[str, Any]] = []
        with self.store.transaction() as txn:
            for sale, raw in txn.scan(WAITS):
                note = stored_json(raw, "a sale waiting for stock")
                with stored("a sale waiting for stock"):
                    since = int(note.get("since", 0))  # (a note from before "since": released at the first sweep)
                if now - since <= self.reservation_hold_s:
                    continue
                vendor, value = _release_note(txn, sale, note)
                what = "piece" if "piece" in note else "order" if "order" in note else "refused"
                rows.append({"sale": sale.hex(), "vendor": vendor.hex() if vendor else "", "what": what,
                             "value": value})  # fmt: skip
                why = f"its customer did not send the purchase again within {self.reservation_hold_s} s"
                _record_release(txn, now, rows[-1], why)
            if rows:
                _prune_releases(txn)
        return rows

    def _order_for_sale(self, txn: Any, vendor: bytes, bulk: _Bulk, value: int, most: int) -> VendorCall:
        """The order a sale of ``value`` waits on: a pending order with a piece no other sale waits for, whose
        pieces are worth at least ``value`` and at most ``most`` (what the sale can be worth: see
        :meth:`_waiting_bound`), joined; else a new one of ``pieces`` pieces of ``denomination`` (or ``value`` if
        larger), each at most ``most``. So the piece reserved for the sale never exceeds what it can be worth."""
        for key, param in txn.scan(ORDERS, vendor):
            with stored("a pending bulk order"):
                f = mc.BULK_BUY_SCHEMA.decode(param)
            waiting = sum(1 for _ in txn.scan(WAITERS, key))
            smallest, largest = f["value"] // f["pieces"], -(-f["value"] // f["pieces"])
            if waiting < f["pieces"] and value <= smallest and largest <= most:
                return self._vendor_order(vendor, bulk, param, key)
        each = min(max(bulk.denomination, value), most)
        return self._new_order(txn, vendor, bulk, each * bulk.pieces, bulk.pieces)

    def _order_call(self, txn: Any, vendor: bytes, bulk: _Bulk, value: int, pieces: int | None = None) -> VendorCall:
        """The pending order to ``vendor`` (its reply was lost: ask again first), else a new one, recorded."""
        for key, param in txn.scan(ORDERS, vendor):
            return self._vendor_order(vendor, bulk, param, key)
        return self._new_order(txn, vendor, bulk, value, bulk.pieces if pieces is None else pieces)

    def _new_order(self, txn: Any, vendor: bytes, bulk: _Bulk, value: int, pieces: int) -> VendorCall:
        order = self.rng(mc.RID_BYTES)
        param = mc.make_bulk_order(
            bulk.key,
            vendor=vendor,
            broker=bulk.cid,
            order=order,
            value=value,
            pieces=pieces,
            discount_pct=bulk.discount_pct,
        )
        txn.put(ORDERS, vendor + order, param)
        return self._vendor_order(vendor, bulk, param, vendor + order)

    @staticmethod
    def _vendor_order(vendor: bytes, bulk: _Bulk, param: bytes, key: bytes) -> VendorCall:
        return VendorCall(
            kind="order", vendor=vendor, address=bulk.vendor_at, mtype=mc.BULK_BUY.code, param=param, key=key
        )

    def order_stock(self, vendor: bytes, value: int, pieces: int) -> VendorCall:
        """An operator's bulk purchase (``cardnet millicent broker bulk-buy``): the order to carry to the vendor."""
        with self.store.transaction() as txn:
            bulk = self._bulk(txn, vendor)
            if bulk is None:
                raise BrokerError("no_agreement", f"no bulk agreement with vendor {vendor.hex()}: run broker add-bulk")
            try:
                return self._order_call(txn, vendor, bulk, value, pieces)  # a pending order is finished first
            except mc.MillicentError as exc:
                raise BrokerError("bad_order", str(exc)) from None

    def finish_order(self, call: VendorCall, reply: Message) -> OrderOutcome:
        """Apply the vendor's answer to a bulk order: the stock grows. Says what happened.

        Only an answer is applied: when none came the order simply stays pending (nothing to write), and its
        callers say so in their own words (:func:`buy_stock`, :meth:`BrokerServer._purchase`)."""
        with self.store.transaction() as txn:
            param = txn.get(ORDERS, call.key)
            bulk = self._bulk(txn, call.vendor)
            if bulk is None:
                return OrderOutcome(False, f"no bulk agreement with vendor {call.vendor.hex()} any more")
            if param is None:  # another process (say `broker bulk-buy`) applied the same answer
                return OrderOutcome(True, "the order was already settled")
            with stored("a pending bulk order"):
                f = mc.BULK_BUY_SCHEMA.decode(param)
            try:
                if reply.mtype != mc.BULK_SOLD.code:
                    raise mc.MillicentError("bad_reply", f"mtype 0x{reply.mtype:04x} is not a bulk reply")
                sale = mc.open_bulk_sold(
                    reply.param,
                    key=bulk.key,
                    vendor=call.vendor,
                    broker=bulk.cid,
                    order=f["order"],
                    value=f["value"],
                    pieces=f["pieces"],
                )
            except mc.MillicentError as exc:
                log.warning("bulk order %s: %s", f["order"].hex(), exc)
                return OrderOutcome(False, f"the vendor's answer does not check ({exc}): the order stays pending")
            if sale.status != mc.Status.OK and not sale.authentic:
                # Not MACed with the order key: anyone on the wire could have sent it, and forgetting the order
                # would lose stock the vendor may have sold. The same order again fetches the vendor's own answer.
                log.warning("bulk order %s: a refusal without the vendor's MAC (%s)", f["order"].hex(), sale.detail)
                return OrderOutcome(
                    False, f"the vendor's refusal is not MACed with the order key ({sale.detail}): the order stays "
                    "pending",
                )  # fmt: skip
            txn.delete(ORDERS, call.key)
            waiters = [(k[len(call.key) :], int.from_bytes(v, "big")) for k, v in txn.scan(WAITERS, call.key)]
            for sale_key, _ in waiters:
                txn.delete(WAITERS, call.key + sale_key)
            if sale.status != mc.Status.OK:
                log.warning("vendor %s refused bulk order: %s", call.vendor.hex(), sale.detail)
                for sale_key, _ in waiters:  # each sale that waited on it is told why (see _sell_from_stock)
                    txn.put(WAITS, sale_key, json.dumps({"refused": sale.detail, **_since(txn, sale_key)}).encode())
                return OrderOutcome(False, f"the vendor refused the order: {sale.detail}", refused=True)
            left = list(sale.scrip)
            for sale_key, want in waiters:  # each sale that waited on it gets a piece of it, reserved for it
                got = min((s for s in left if s.value >= want), key=lambda s: s.value, default=None)  # the least
                if got is None:  # (cannot happen: a sale joins an order only if a piece of it covers it)
                    txn.delete(WAITS, sale_key)  # it orders again
                    continue
                left.remove(got)
                txn.put(WAITS, sale_key, json.dumps({"piece": got.encode().hex(), **_since(txn, sale_key)}).encode())
            for s in left:
                txn.put(STOCK, _stock_key(s), s.encode())
            row = txn.get(BOUGHT, call.vendor) or bytes(16)
            value = int.from_bytes(row[:8], "big") + f["value"]
            owed = int.from_bytes(row[8:], "big") + sale.price
            txn.put(BOUGHT, call.vendor, _u64(value) + _u64(owed))
        return OrderOutcome(True, f"bought {f['value']} in {f['pieces']} pieces for {sale.price}")

    def finish_issue(self, call: VendorCall, reply: Message | None) -> bytes | None:
        """Apply the vendor's answer to a sale from stock: the customer's reply, or None if it must be asked again."""
        if reply is None:
            return None
        cid, rid = call.key[: mc.CUSTOMER_ID_BYTES], call.key[mc.CUSTOMER_ID_BYTES :]
        with self.store.transaction() as txn:
            raw = txn.get(ISSUES, call.key)
            if raw is None:
                return txn.get(REQUESTS, call.key)  # settled already
            rec = parse_sale(raw)
            bulk = self._bulk(txn, call.vendor)
            if bulk is None:
                return None
            try:
                out = mc.open_reply(
                    reply.mtype,
                    reply.param,
                    rid=bytes.fromhex(rec["issue_rid"]),
                    level=mc.Level(rec["level"]),
                    secret=bulk.secret,
                )
            except mc.MillicentError as exc:
                log.warning("sale %s: the vendor's answer does not check: %s", call.key.hex(), exc)
                return None
            if out.status != mc.Status.OK and not out.authentic:
                # Not MACed with the broker's secret: anyone on the wire could have refused the piece. Refunding
                # would lose a piece the vendor may have spent; the same request again fetches the vendor's answer.
                log.warning("sale %s: a refusal without the vendor's MAC (%s): ask again", call.key.hex(), out.detail)
                return None
            acct = txn.get(ACCOUNTS, cid)
            assert acct is not None  # accounts are never deleted
            pub_raw, balance = parse_account(acct)
            if out.change is not None:
                txn.put(STOCK, _stock_key(out.change), out.change.encode())
            if out.status != mc.Status.OK or out.issued is None or out.issued_secret is None:
                # Give the money back; the customer may buy again. The piece is gone (e.g. expired or spent), unless
                # the refusal left it unspent (say the vendor wants level 3): then it is stock again, not lost.
                log.warning("vendor %s refused a stock piece: %s %s", call.vendor.hex(), out.status.name, out.detail)
                if out.status in mc.UNSPENT:
                    piece = stored_scrip(bytes.fromhex(rec["piece"]), "a stock piece")
                    txn.put(STOCK, _stock_key(piece), piece.encode())
                balance += rec["value"]
                txn.put(ACCOUNTS, cid, pub_raw + _u64(balance))
                reply_param = _purchased(
                    rid,
                    _within("the vendor refused the broker's stock (", out.detail, "): buy again"),
                    balance,
                    key=txn.get(REPLY_KEYS, cid),
                    digest=bytes.fromhex(rec["digest"]),
                )
            else:
                result: dict[str, Any] = {"rid": rid, "status": OK, "scrip": out.issued.encode(), "balance": balance}
                if rec["want_secret"]:
                    result["secret_box"] = profile.hpke_seal(
                        profile.load_public(pub_raw),
                        out.issued_secret,
                        info=b"millicent customer secret" + call.vendor + cid,
                    )
                reply_param = mc.make_purchased(txn.get(REPLY_KEYS, cid), bytes.fromhex(rec["digest"]), result)
            txn.put(REQUESTS, call.key, reply_param)
            txn.delete(ISSUES, call.key)
        return reply_param

    def stock(self) -> dict[str, dict[str, int]]:
        """Per bulk vendor: stock pieces and value, face value bought and what the broker owes for it, the value of
        pieces bought for sales that have not taken them yet (bought = stock + reserved + sold), and the value of
        such pieces released back to stock, all told (their customers did not come back: :meth:`release_stale`)."""
        with self.store.transaction() as txn:
            out: dict[str, dict[str, int]] = {}
            reserved: dict[bytes, int] = {}  # pieces bought for a sale that has not taken them yet
            for _, raw in txn.scan(WAITS):
                note = stored_json(raw, "a sale waiting for stock")
                if "piece" in note:
                    with stored("a sale waiting for stock"):
                        p = stored_scrip(bytes.fromhex(note["piece"]), "a stock piece")
                    reserved[p.vendor] = reserved.get(p.vendor, 0) + p.value
            for vendor, _ in txn.scan(BULK):
                pieces = [stored_scrip(v, "a stock piece").value for _, v in txn.scan(STOCK, vendor)]
                row = txn.get(BOUGHT, vendor) or bytes(16)
                out[vendor.hex()] = {
                    "pieces": len(pieces),
                    "stock_value": sum(pieces),
                    "bought_value": int.from_bytes(row[:8], "big"),
                    "owed": int.from_bytes(row[8:], "big"),
                    "pending_orders": sum(1 for _ in txn.scan(ORDERS, vendor)),
                    "reserved_value": reserved.get(vendor, 0),
                    "released_value": int.from_bytes((txn.get(RELEASED, vendor) or bytes(16))[:8], "big"),
                }
            return out

    def redeem(self, param: bytes) -> bytes:
        try:
            f = mc.REDEEM_SCHEMA.decode(param)
        except DecodeError as exc:
            return mc.REDEEMED_SCHEMA.encode({"batch": b"\x00" * 16, "status": REFUSED, "detail": exc.reason})
        vendor, batch, items = f["vendor"], f["batch"], f["items"]
        with self.store.transaction() as txn:
            lic = self._licence(txn, vendor)
            if lic is None:  # (no key to MAC with: the vendor takes it as a hint and asks again)
                return mc.REDEEMED_SCHEMA.encode({"batch": batch, "status": REFUSED, "detail": "no licence"})

            def answer(g: dict[str, Any]) -> bytes:
                g["mac"] = profile.hmac_sha256(lic.redeem_key, mc.redeemed_mac_input(vendor, g), mc.MAC_BYTES)
                return mc.REDEEMED_SCHEMA.encode(g)

            try:
                profile.hmac_verify(lic.redeem_key, mc.redeem_mac_input(vendor, batch, items), f["mac"])
            except CryptoError:
                return answer({"batch": batch, "status": REFUSED, "detail": "bad MAC"})
            paid = dups = 0
            for item in items:
                sid = item[:8]
                minted = txn.get(MINTED, vendor + sid)
                if minted is None or not txn.insert(REDEEMED, vendor + sid, b""):
                    dups += 1
                    continue
                paid += int.from_bytes(minted, "big") * (100 - lic.discount_pct) // 100
            owed = int.from_bytes(txn.get(VENDORS, vendor) or _u64(0), "big")
            txn.put(VENDORS, vendor, _u64(owed + paid))
            return answer({"batch": batch, "status": OK, "paid": paid, "duplicates": dups})

    def account(self, cid: bytes) -> int | None:
        with self.store.transaction() as txn:
            row = txn.get(ACCOUNTS, cid)
        return None if row is None else parse_account(row)[1]

    def vendors(self) -> dict[str, int]:
        with self.store.transaction() as txn:
            return {k.hex(): int.from_bytes(v, "big") for k, v in txn.scan(VENDORS)}

    def not_decided(self, msg: Message) -> Message:
        """The answer to ``msg`` when the broker cannot write its store (a full disk): nothing of it was kept. A
        purchase is answered ``pending`` (MACed with the account's reply key: the wallet keeps it and sends it
        again), an account opening and a redemption are refused with those words (MACed with the licence's key);
        nothing is written."""
        words = NOT_DECIDED[:200]
        if msg.mtype == mc.OPEN.code:
            return msg.reply(mc.OPENED.code, mc.OPENED_SCHEMA.encode({"status": REFUSED, "detail": words}))
        if msg.mtype == mc.REDEEM.code:
            try:
                f = mc.REDEEM_SCHEMA.decode(msg.param)
            except DecodeError:
                return self.handle(msg, 0)  # refused as malformed: nothing to write
            g: dict[str, Any] = {"batch": f["batch"], "status": REFUSED, "detail": words}
            with self.store.transaction() as txn:
                lic = self._licence(txn, f["vendor"])
            if lic is not None:
                g["mac"] = profile.hmac_sha256(lic.redeem_key, mc.redeemed_mac_input(f["vendor"], g), mc.MAC_BYTES)
            return msg.reply(mc.REDEEMED.code, mc.REDEEMED_SCHEMA.encode(g))
        if msg.mtype != mc.PURCHASE.code:
            return self.handle(msg, 0)  # refused unread: nothing to write
        try:
            mc.PURCHASE_SCHEMA.decode(msg.param)
        except DecodeError:
            return self.handle(msg, 0)  # refused as malformed: nothing to write
        return msg.reply(mc.PURCHASED.code, self.not_finished(msg.param, words))

    def not_finished(self, param: bytes, detail: str) -> bytes:
        """The answer ``pending`` to purchase ``param`` (not settled yet: its vendor calls, a store that cannot be
        written, a core served without the server), MACed with the account's reply key when the purchase names an
        account: the wallet shows ``detail`` and sends it again. Every ``pending`` answer is made here."""
        try:
            f = mc.PURCHASE_SCHEMA.decode(param)
        except DecodeError:
            return _purchased(b"\x00" * 16, detail, status=PENDING)
        with self.store.transaction() as txn:
            rkey = txn.get(REPLY_KEYS, f["customer_id"])
        return _purchased(f["rid"], detail, status=PENDING, key=rkey, digest=profile.sha256(param))

    def handle(self, msg: Message, now: int) -> Message:
        if msg.mtype == mc.PURCHASE.code:
            return msg.reply(mc.PURCHASED.code, self.purchase(msg.param, now))
        if msg.mtype == mc.OPEN.code:
            try:
                pub = mc.OPEN_SCHEMA.decode(msg.param)["pub"]
            except DecodeError as exc:
                return msg.reply(mc.OPENED.code, mc.OPENED_SCHEMA.encode({"status": REFUSED, "detail": exc.reason}))
            return msg.reply(mc.OPENED.code, self.open_account(pub))
        if msg.mtype == mc.REDEEM.code:
            return msg.reply(mc.REDEEMED.code, self.redeem(msg.param))
        return msg.reply(
            mc.PURCHASED.code, _purchased(b"\x00" * 16, f"the broker does not serve mtype 0x{msg.mtype:04x}")
        )


NOT_DECIDED = (
    "the broker cannot write its store (its disk may be full): nothing of this request was kept; send it again "
    "later (`cardnet millicent retry`), once its operator has freed space"
)  # (a reply's detail holds 200 characters)


REFUSALS_HELD = (
    "the broker refused too many purchases from your address lately to decide this one now: nothing was debited; "
    "send the same purchase again later (`cardnet millicent retry`)"
)  # (a reply's detail holds 200 characters)


BULK_NEEDS_SERVER = (
    "this vendor's scrip is sold in bulk mode, which needs the broker's server to buy it from the vendor: send the "
    "same purchase to the running broker (`cardnet millicent retry`)"
)


def _since(txn: Any, sale: bytes) -> dict[str, int]:
    """The "since" of ``sale``'s note (when its customer last sent it) and its "value", to keep in the note that
    replaces it."""
    raw = txn.get(WAITS, sale)
    note = {} if raw is None else stored_json(raw, "a sale waiting for stock")
    with stored("a sale waiting for stock"):
        return {k: int(note[k]) for k in ("since", "value") if k in note}


def _release_note(txn: Any, sale: bytes, note: dict[str, Any], *, count: bool = True) -> tuple[bytes | None, int]:
    """Release ``sale``'s reservation (its ``note``): a piece back to stock (counted in ``RELEASED`` if ``count``:
    not for a sale that ended otherwise), its place in an order given up; the note deleted. Returns (vendor if
    known, the piece's value or 0)."""
    vendor, value = None, 0
    with stored("a sale waiting for stock"):
        if "piece" in note:
            piece = bytes.fromhex(note["piece"])
            s = stored_scrip(piece, "a stock piece")
            txn.put(STOCK, _stock_key(s), piece)
            vendor, value = s.vendor, s.value
            if count:
                row = txn.get(RELEASED, vendor) or bytes(16)
                total, pieces = int.from_bytes(row[:8], "big") + value, int.from_bytes(row[8:], "big") + 1
                txn.put(RELEASED, vendor, _u64(total) + _u64(pieces))
        elif "order" in note:
            okey = bytes.fromhex(note["order"])
            txn.delete(WAITERS, okey + sale)
            vendor = okey[: mc.VENDOR_BYTES]
    txn.delete(WAITS, sale)
    return vendor, value


def _record_release(txn: Any, now: int, row: dict[str, Any], why: str) -> None:
    """Keep a release (``row``: sale, vendor, what, value) for the operator's ``broker status``, with when and why."""
    sale = bytes.fromhex(row["sale"])
    txn.put(RELEASES, _u64(max(now, 0)) + sale, json.dumps({**row, "at": now, "why": why}).encode())


def _prune_releases(txn: Any) -> None:
    """Keep the newest :data:`KEEP_RELEASES` release records (the per-vendor totals are kept for ever)."""
    extra = txn.count(RELEASES) - KEEP_RELEASES
    if extra > 0:
        for key, _ in txn.scan(RELEASES, limit=extra):  # (key order = time order: the oldest first)
            txn.delete(RELEASES, key)


def releases(store: Store) -> list[dict[str, Any]]:
    """The reservations released lately, newest first (at most :data:`KEEP_RELEASES`): for each the sale (customer
    id + request id), customer, vendor, what was released (piece, order or refused), value (a piece's), at (Unix
    time) and why, in words."""
    with store.transaction() as txn:
        rows = [stored_json(raw, "a release record") for _, raw in txn.scan(RELEASES)]
    out = []
    for r in reversed(rows):
        with stored("a release record"):
            out.append({
                "at": int(r["at"]),
                "sale": str(r["sale"]),
                "customer": str(r["sale"])[: 2 * mc.CUSTOMER_ID_BYTES],
                "vendor": str(r["vendor"]),
                "what": str(r["what"]),
                "value": int(r["value"]),
                "why": str(r["why"]),
            })  # fmt: skip
    return out


def _release_vendor(txn: Any, vendor: bytes, now: int) -> None:
    """Release every reservation of ``vendor``'s stock (it leaves bulk mode: no sale will take it), kept for the
    operator (:func:`releases`)."""
    released = False
    for sale, raw in txn.scan(WAITS):
        note = stored_json(raw, "a sale waiting for stock")
        with stored("a sale waiting for stock"):
            if "piece" in note:
                mine = stored_scrip(bytes.fromhex(note["piece"]), "a stock piece").vendor == vendor
            else:
                mine = "order" in note and bytes.fromhex(note["order"])[: mc.VENDOR_BYTES] == vendor
        if mine:
            _, value = _release_note(txn, sale, note)
            what = "piece" if "piece" in note else "order"
            row = {"sale": sale.hex(), "vendor": vendor.hex(), "what": what, "value": value}
            _record_release(txn, now, row, "the vendor left bulk mode (its scrip is minted under licence now)")
            released = True
            log.warning("vendor %s left bulk mode: the reservation of sale %s is released", vendor.hex(), sale.hex())
    if released:
        _prune_releases(txn)


class _OpenRate:
    """Account openings (or refused purchases) per address (a token bucket each: ``burst`` at once, then ``per_s`` a
    second). An IPv6 address counts by its /64 (one host's usual share); at most :data:`OPEN_PEERS` addresses are
    remembered, those whose bucket is full again forgotten first, then the oldest."""

    def __init__(self, burst: int, per_s: float) -> None:
        self.burst, self.per_s = burst, per_s
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, when)

    @staticmethod
    def _key(address: tuple[str, int] | None) -> str:
        if address is None:
            return ""
        try:
            ip = ipaddress.ip_address(address[0].split("%")[0])
        except ValueError:
            return address[0]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
            return str(ipaddress.ip_network(f"{ip}/64", strict=False))
        return str(ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)

    def take(self, address: tuple[str, int] | None, now: float) -> float:
        """Take one opening for ``address`` at ``now``: 0 if it may open, else the seconds until it may."""
        key = self._key(address)
        tokens, when = self._buckets.pop(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - when) * self.per_s)
        if len(self._buckets) >= OPEN_PEERS:
            full = [k for k, (t, w) in self._buckets.items() if t + (now - w) * self.per_s >= self.burst]
            for k in full or list(self._buckets)[: len(self._buckets) - OPEN_PEERS + 1]:
                del self._buckets[k]
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.per_s
        self._buckets[key] = (tokens - 1, now)
        return 0.0

    def give_back(self, address: tuple[str, int] | None) -> None:
        """Undo a :meth:`take` (what it counted did not happen)."""
        key = self._key(address)
        if key in self._buckets:
            tokens, when = self._buckets[key]
            self._buckets[key] = (min(float(self.burst), tokens + 1), when)

    def refusal(self, wait: float) -> bytes:
        return mc.OPENED_SCHEMA.encode({"status": REFUSED, "detail": (
            f"too many accounts opened from your address (at most {self.burst} at once, then {self.per_s:g} a "
            f"second): nothing was opened; try again in {max(1, round(wait + 0.5))} s"
        )[:200]})  # fmt: skip


def _refused(answer: bytes) -> bool:
    """Whether ``answer`` (a ``millicent.purchased``) refuses the purchase."""
    try:
        return bool(mc.PURCHASED_SCHEMA.decode(answer)["status"] == REFUSED)
    except DecodeError:
        return False


def _refused_order_words(reason: str) -> str:
    """A sale refused because the vendor refused the broker's order of its scrip, in words (at most 200)."""
    return _within(
        "the vendor refused the broker's order of its scrip (", reason, "): nothing was debited; buy again later"
    )


def _within(head: str, words: str, tail: str) -> str:
    """``head + words + tail`` in at most 200 characters (an answer's detail): ``words`` (a vendor's) cut to fit."""
    room = 200 - len(head) - len(tail)
    return head + (words if len(words) <= room else words[: room - 3] + "...") + tail


def _stock_key(s: mc.Scrip) -> bytes:
    """Stock is keyed ``vendor || expiry || scrip id``: a scan is in expiry order."""
    return s.vendor + s.expiry.to_bytes(4, "big") + s.scrip_id


def _issue_call(key: bytes, rec: dict[str, Any]) -> VendorCall:
    return VendorCall(
        kind="issue",
        vendor=bytes.fromhex(rec["vendor"]),
        address=rec["address"],
        mtype=rec["mtype"],
        param=bytes.fromhex(rec["request"]),
        key=key,
    )


def _purchased(
    rid: bytes,
    detail: str,
    balance: int | None = None,
    *,
    status: int = REFUSED,
    key: bytes | None = None,
    digest: bytes = b"",
) -> bytes:
    """An answer that sells nothing: MACed when the account's reply ``key`` is known (else a hint only).

    ``status`` PENDING: not decided yet (the customer sends the same purchase again).
    """
    out: dict[str, Any] = {"rid": rid, "status": status, "detail": detail}
    if balance is not None:
        out["balance"] = balance
    return mc.make_purchased(key, digest, out)


def _unavailable(reply: Message) -> str | None:
    """The words for a customer whose sale waits because the vendor could not decide the broker's call (its store
    cannot be written: a plain ``unavailable`` answer, ``mc.not_decided``), or None for any other answer."""
    if reply.mtype != mc.REPLY.code:
        return None
    try:
        f = mc.REPLY_SCHEMA.decode(reply.param)
    except DecodeError:
        return None
    if f["status"] != mc.Status.UNAVAILABLE:
        return None
    return VENDOR_UNAVAILABLE


VENDOR_UNAVAILABLE = (
    "the vendor cannot write its store (its disk may be full), so it decided nothing: nothing more was debited; send "
    "the same purchase again later (`cardnet millicent retry`)"
)  # (a reply's detail holds 200 characters)


async def call_vendor(call: VendorCall, *, timeout_s: float = VENDOR_TIMEOUT_S) -> Message | None:
    """Carry ``call`` to its vendor over TCP: the reply, or None if none came (the call stays pending)."""
    host, _, port = call.address.rpartition(":")
    me = Uid(b"\x00" * 12, 1)
    try:
        async with asyncio.timeout(timeout_s), await dial(host, int(port)) as conn:
            await conn.send(Message(me, Uid(b"\x00" * 12, 0), call.mtype, call.param))
            return await conn.recv()
    except (TransportError, TimeoutError, ValueError) as exc:
        log.warning("vendor %s at %s did not answer: %s", call.vendor.hex(), call.address, exc)
        return None


async def buy_stock(
    core: BrokerCore, vendor: bytes, value: int, pieces: int, *, timeout_s: float = VENDOR_TIMEOUT_S
) -> OrderOutcome:
    """Buy ``value`` of ``vendor``'s scrip in ``pieces`` pieces now (finishing a pending order first), waiting at
    most ``timeout_s`` for the vendor (`broker bulk-buy --vendor-timeout`, as `broker run`'s)."""
    call = await asyncio.to_thread(core.order_stock, vendor, value, pieces)
    reply = await call_vendor(call, timeout_s=timeout_s)
    if reply is None:
        return OrderOutcome(
            False, f"the vendor did not answer within {timeout_s:g} s (slow, or not reachable at {call.address}): "
            "the order stays pending; bulk-buy again (or the broker's next sale of its scrip) sends it again",
        )  # fmt: skip
    return await asyncio.to_thread(core.finish_order, call, reply)


class BrokerServer:
    """Serves :class:`BrokerCore` over TCP: one durable transaction per step, in a worker thread.

    Each step on the store (deciding a request, applying a vendor's answer)
    runs alone, one at a time (a lock: the ledger sees one step at a time),
    but a bulk-mode sale's calls to the vendor are carried outside that lock:
    a vendor that is slow or never answers holds up only the purchases that
    need it, not the broker's other customers, and each of those for at most
    ``vendor_timeout_s`` (default ``VENDOR_TIMEOUT_S``) in all its calls.
    Every call is durable before it is sent and its answer applied in one
    transaction that reads the pending record again, so purchases in flight
    at once stay exact: purchases needing the same vendor's stock carry the
    same pending order while it has a piece for each (the vendor answers a
    repeat from its record; the first to apply it reserves a piece for each
    sale that waited on it, the others find it settled), each sale reserves
    its own stock piece and debit in the transaction that records it, and the
    same purchase sent again while its vendor call is out carries the same
    recorded request (answered once by the vendor's spent list; the second
    finds it settled).
    A sale's reservation whose customer does not come back is released
    (:meth:`BrokerCore.release_stale`) by a sweep every ``SWEEP_EVERY_S`` at
    most, as one more step on the store; each release is logged.
    :meth:`aclose` stops in order, within ``close_wait_s``: see there.
    """

    def __init__(
        self,
        core: BrokerCore,
        *,
        clock: Callable[[], float] = time.time,
        server_limits: ServerLimits = DEFAULT_SERVER_LIMITS,
        close_wait_s: float = CLOSE_WAIT_S,
        vendor_timeout_s: float = VENDOR_TIMEOUT_S,
        limits: Limits = DEFAULT_LIMITS,
        open_burst: int = OPEN_BURST,
        open_rate_per_s: float = OPEN_RATE_PER_S,
    ) -> None:
        if open_burst < 1 or not open_rate_per_s > 0:
            raise ValueError(f"open_burst >= 1 and open_rate_per_s > 0, got {open_burst} and {open_rate_per_s}")
        self.core = core
        self._opens = _OpenRate(open_burst, open_rate_per_s)
        self._refusals = _OpenRate(REFUSAL_BURST, REFUSAL_RATE_PER_S)  # purchases refused per address
        self.clock = clock
        self.close_wait_s = close_wait_s
        self.vendor_timeout_s = vendor_timeout_s  # all the vendor calls of one purchase, together
        if limits.recv_limit is None:  # a request above it is refused at its header, unread
            limits = dataclasses.replace(limits, recv_limit=RECV_LIMIT)
        self._server = TcpServer(limits=limits, server_limits=server_limits)  # caps and timeouts on the port
        self._lock = asyncio.Lock()  # held by one step on the store at a time, never across a vendor call
        self._closing = False  # set by aclose: requests read from now on are not taken
        self._closed = asyncio.Event()  # aclose has ended
        self._in_flight = 0  # requests taken and not yet answered
        self._idle = asyncio.Event()  # set while none is
        self._idle.set()
        self._sweeper: asyncio.Task[None] | None = None  # releases stale reservations (see _sweep)
        self._sweep_stop = asyncio.Event()  # set by aclose: the sweeper ends after the step it is in

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        await self._server.start(host, port, self._serve)
        self._sweeper = asyncio.create_task(self._sweep())
        return self._server.address

    async def _sweep(self) -> None:
        """Release the reservations whose customers did not come back within the core's ``reservation_hold_s``,
        at start and then every ``SWEEP_EVERY_S`` (a quarter of the hold, if shorter); log each."""
        every = min(SWEEP_EVERY_S, max(0.25, self.core.reservation_hold_s / 4))
        while not self._closing:
            try:
                released = await self._step(self.core.release_stale, int(self.clock()))
            except StoreError as exc:  # (tried again at the next sweep)
                log.error("cannot release stale stock reservations: %s", exc)
                released = []
            for r in released:
                log.warning(
                    "sale %s of vendor %s: its customer did not send the purchase again within %d s: %s",
                    r["sale"], r["vendor"] or "?", self.core.reservation_hold_s,
                    f"its piece worth {r['value']} is back in stock" if r["what"] == "piece"
                    else "its place in a pending order is given up" if r["what"] == "order"
                    else "the vendor's refusal kept for it is forgotten",
                )  # fmt: skip
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every):
                    await self._sweep_stop.wait()

    async def aclose(self) -> None:
        """Stop in order: take no more requests, finish those taken and write their replies, then close every
        connection; within ``close_wait_s``.

        A request read after the stop began is not answered and nothing of it is decided: its connection is
        closed and the client sends it again once the broker runs again. A request taken before (served, or
        waiting for its turn) is decided and answered. A step whose transaction has begun cannot be called back:
        if the requests taken, their vendor calls or writing their replies to a slow client take longer than
        ``close_wait_s``, the server closes anyway (logged); what was decided is stored, and a customer's resend
        of the same purchase fetches its answer (no second debit).
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._sweep_stop.set()  # the sweeper ends after the step it is in (if any)
        try:
            async with asyncio.timeout(self.close_wait_s):
                await self._idle.wait()
                if self._sweeper is not None:  # (shielded: a step under way holds the lock until its thread ends)
                    await asyncio.shield(self._sweeper)
        except TimeoutError:
            log.warning(
                "stopping after %g s with %d request(s) still in progress: what was decided is stored; its "
                "customers fetch the answer when they send the same purchase again",
                self.close_wait_s,
                self._in_flight,
            )
        try:
            await self._server.aclose()
        finally:
            self._closed.set()

    async def _serve(self, conn: TcpConnection) -> None:
        with contextlib.suppress(BrokenError, ClosedError):
            while True:
                try:
                    msg = await conn.recv()
                except TooLarge as exc:  # unread (the requests before it are answered): say so, then close
                    f = exc.frame
                    log.warning("%s began a %d-byte request (mtype 0x%04x), above the receive limit of %d: refused "
                                "unread, closing", conn.peer.label, f.size, f.mtype, f.limit)  # fmt: skip
                    await conn.send(Message(f.dst, f.src, *mc.request_too_large(f.mtype, f.size, f.limit, "broker")))
                    return
                if self._closing:  # not decided, not answered: the client sends it again
                    return
                if msg.mtype == mc.OPEN.code:
                    wait = self._opens.take(conn.peer.address, asyncio.get_running_loop().time())
                    if wait:  # refused before the store: nothing of it is kept
                        await conn.send(msg.reply(mc.OPENED.code, self._opens.refusal(wait)))
                        continue
                self._in_flight += 1
                self._idle.clear()
                try:
                    try:
                        if msg.mtype == mc.PURCHASE.code:
                            at = conn.peer.address
                            keep = not self._refusals.take(at, asyncio.get_running_loop().time())
                            answer = await self._purchase(msg.param, keep_refusals=keep)
                            if keep and not _refused(answer):  # only a refusal (stored) uses up the address's turn
                                self._refusals.give_back(at)
                            reply = msg.reply(mc.PURCHASED.code, answer)
                        else:
                            reply = await self._step(self.core.handle, msg, int(self.clock()))
                    except StoreError as exc:  # nothing of it was kept: say so in words, and go on
                        log.error("a request (mtype 0x%04x) from %s failed: the store cannot be written (%s); "
                                  "free space on its disk", msg.mtype, conn.peer.label, exc)  # fmt: skip
                        reply = await self._step(self.core.not_decided, msg)
                    await conn.send(reply)
                finally:
                    self._in_flight -= 1
                    if not self._in_flight:
                        self._idle.set()

    async def _step(self, fn: Callable[..., _T], *args: Any) -> _T:
        """One step on the store, in a worker thread, under the lock (never held across a vendor call)."""
        async with self._lock:
            return await asyncio.to_thread(fn, *args)

    async def _purchase(self, param: bytes, *, keep_refusals: bool = True) -> bytes:
        """A purchase, carrying the vendor calls bulk mode needs (buy stock, then issue the customer's scrip).

        The calls are carried outside the lock: other requests are served meanwhile. All of one purchase's calls
        together take at most ``vendor_timeout_s``: past it the purchase is answered ``pending`` (its call stays
        recorded; the same purchase again goes on from there)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.vendor_timeout_s
        slow = (
            f"the vendor did not answer the broker within its {self.vendor_timeout_s:g} s bound (slow, or not "
            "reachable): nothing more was debited; send the same purchase again (`cardnet millicent retry`)"
        )
        for _ in range(MAX_VENDOR_CALLS):
            step = await self._step(
                functools.partial(self.core.begin_purchase, keep_refusals=keep_refusals), param, int(self.clock())
            )
            if isinstance(step, bytes):
                return step
            left = deadline - loop.time()
            reply = await call_vendor(step, timeout_s=left) if left > 0 else None
            if step.kind == "order":
                if reply is None:  # (the order stays pending: the same purchase again carries it)
                    return await self._step(self.core.not_finished, param, slow)
                outcome = await self._step(self.core.finish_order, step, reply)
                if not (outcome.bought or outcome.refused):  # an answer that does not check: the order stays
                    words = f"cannot buy stock from the vendor ({outcome}): send the same purchase again later"
                    return await self._step(self.core.not_finished, param, _unavailable(reply) or words[:200])
                continue
            done = await self._step(self.core.finish_issue, step, reply)
            if done is None:
                unsettled = "the vendor's answer did not check: send the same purchase again"
                words = slow if reply is None else _unavailable(reply) or unsettled
                return await self._step(self.core.not_finished, param, words)
            return done
        words = "the vendor's answers did not settle this sale: send the same purchase again"
        return await self._step(self.core.not_finished, param, words)
