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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from cardnet.crypto import profile
from cardnet.crypto.errors import CryptoError
from cardnet.errors import CardnetError
from cardnet.protocols import millicent as mc
from cardnet.store import Store
from cardnet.transport import BrokenError, ClosedError, TcpConnection, TcpServer
from cardnet.wire import DecodeError, Message

log = logging.getLogger("cardnet.millicent.broker")

CFG, LICENCES, ACCOUNTS, KEYS, REQUESTS = "mb.cfg", "mb.lic", "mb.acct", "mb.pub", "mb.req"
MINTED, REDEEMED, VENDORS = "mb.minted", "mb.red", "mb.vend"

OK, REFUSED = 0, 1


class BrokerError(CardnetError):
    """A broker operation was refused (``reason`` says why)."""


def _u64(v: int) -> bytes:
    return v.to_bytes(8, "big")


def add_licence(store: Store, licence: dict[str, Any], *, discount_pct: int = 10) -> bytes:
    """Keep a vendor's licence (from ``cardnet millicent vendor licence``); returns the vendor id."""
    try:
        vendor = bytes.fromhex(licence["vendor"])
        index = int(licence["index"])
        secret = bytes.fromhex(licence["scrip_secret"])
        redeem_key = bytes.fromhex(licence["redeem_key"])
        cms = {int(k): bytes.fromhex(v) for k, v in licence["customer_masters"].items()}
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise BrokerError("bad_licence", f"the licence file is not a Millicent licence: {exc}") from None
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
    with store.transaction() as txn:
        txn.put(LICENCES, vendor, json.dumps(record).encode())
    return vendor


def deposit(store: Store, customer_id: bytes, amount: int) -> int:
    """Credit a prepaid balance (an operator's action: the customer paid outside cardnet). Returns it."""
    with store.transaction() as txn:
        row = txn.get(ACCOUNTS, customer_id)
        if row is None:
            raise BrokerError("no_account", f"no account {customer_id.hex()}: the customer opens one first")
        balance = int.from_bytes(row[65:73], "big") + amount
        txn.put(ACCOUNTS, customer_id, row[:65] + _u64(balance))
        return balance


class _Licence:
    __slots__ = ("cms", "discount_pct", "index", "redeem_key", "secrets")

    def __init__(self, raw: bytes) -> None:
        d = json.loads(raw)
        self.index: int = d["index"]
        self.secrets = {self.index: bytes.fromhex(d["scrip_secret"])}
        self.redeem_key = bytes.fromhex(d["redeem_key"])
        self.cms = {int(k): bytes.fromhex(v) for k, v in d["customer_masters"].items()}
        self.discount_pct: int = d["discount_pct"]


class BrokerCore:
    """The broker over its store (synchronous; the server runs it in a worker thread)."""

    def __init__(
        self, store: Store, *, rng: Callable[[int], bytes] = os.urandom, validity_s: int = 7 * 24 * 3600
    ) -> None:
        self.store = store
        self.rng = rng
        self.validity_s = validity_s

    def _licence(self, txn: Any, vendor: bytes) -> _Licence | None:
        raw = txn.get(LICENCES, vendor)
        return None if raw is None else _Licence(raw)

    def open_account(self, pub: bytes) -> bytes:
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
        return mc.OPENED_SCHEMA.encode({"status": OK, "customer_id": cid})

    def purchase(self, param: bytes, now: int) -> bytes:
        try:
            f = mc.PURCHASE_SCHEMA.decode(param)
        except DecodeError as exc:
            return _purchased(b"\x00" * 16, f"malformed purchase: {exc.reason}")
        rid, cid = f["rid"], f["customer_id"]
        with self.store.transaction() as txn:
            done = txn.get(REQUESTS, cid + rid)
            if done is not None:
                return done  # the same purchase again: the same scrip, no second debit
            acct = txn.get(ACCOUNTS, cid)
            if acct is None:
                return _purchased(rid, "no such account")
            pub_raw, balance = acct[:65], int.from_bytes(acct[65:73], "big")
            try:
                profile.verify(profile.load_public(pub_raw), f["sig"], mc.purchase_sig_input(f))
            except CryptoError:
                return _purchased(rid, "the purchase is not signed by the account's key")
            lic = self._licence(txn, f["vendor"])
            if lic is None:
                return _purchased(rid, f"this broker does not sell scrip of vendor {f['vendor'].hex()}")
            value = f["value"]
            if value == 0 or value > balance:
                return _purchased(rid, f"balance {balance} does not cover {value}", balance)
            skey = b"serial" + bytes([lic.index])
            serial = int.from_bytes(txn.get(CFG, skey) or _u64(1), "big")
            scrip = mc.mint(
                lic.secrets,
                index=lic.index,
                vendor=f["vendor"],
                value=value,
                serial=serial,
                customer_id=cid,
                expiry=now + self.validity_s,
            )
            txn.put(CFG, skey, _u64(serial + 1))
            txn.put(MINTED, f["vendor"] + scrip.scrip_id, _u64(value))
            txn.put(ACCOUNTS, cid, pub_raw + _u64(balance - value))
            out: dict[str, Any] = {"rid": rid, "status": OK, "scrip": scrip.encode(), "balance": balance - value}
            if f["want_secret"]:
                secret = mc.customer_secret(lic.cms, cid)
                out["secret_box"] = profile.hpke_seal(
                    profile.load_public(pub_raw), secret, info=b"millicent customer secret" + f["vendor"] + cid
                )
            reply = mc.PURCHASED_SCHEMA.encode(out)
            txn.put(REQUESTS, cid + rid, reply)
        return reply

    def redeem(self, param: bytes) -> bytes:
        try:
            f = mc.REDEEM_SCHEMA.decode(param)
        except DecodeError as exc:
            return mc.REDEEMED_SCHEMA.encode({"batch": b"\x00" * 16, "status": REFUSED, "detail": exc.reason})
        vendor, batch, items = f["vendor"], f["batch"], f["items"]
        with self.store.transaction() as txn:
            lic = self._licence(txn, vendor)
            if lic is None:
                return mc.REDEEMED_SCHEMA.encode({"batch": batch, "status": REFUSED, "detail": "no licence"})
            try:
                profile.hmac_verify(lic.redeem_key, mc.redeem_mac_input(vendor, batch, items), f["mac"])
            except CryptoError:
                return mc.REDEEMED_SCHEMA.encode({"batch": batch, "status": REFUSED, "detail": "bad MAC"})
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
        return mc.REDEEMED_SCHEMA.encode({"batch": batch, "status": OK, "paid": paid, "duplicates": dups})

    def account(self, cid: bytes) -> int | None:
        with self.store.transaction() as txn:
            row = txn.get(ACCOUNTS, cid)
        return None if row is None else int.from_bytes(row[65:73], "big")

    def vendors(self) -> dict[str, int]:
        with self.store.transaction() as txn:
            return {k.hex(): int.from_bytes(v, "big") for k, v in txn.scan(VENDORS)}

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


def _purchased(rid: bytes, detail: str, balance: int | None = None) -> bytes:
    out: dict[str, Any] = {"rid": rid, "status": REFUSED, "detail": detail}
    if balance is not None:
        out["balance"] = balance
    return mc.PURCHASED_SCHEMA.encode(out)


class BrokerServer:
    """Serves :class:`BrokerCore` over TCP: one durable transaction per request, in a worker thread."""

    def __init__(self, core: BrokerCore, *, clock: Callable[[], float] = time.time) -> None:
        self.core = core
        self.clock = clock
        self._server = TcpServer()
        self._lock = asyncio.Lock()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        await self._server.start(host, port, self._serve)
        return self._server.address

    async def aclose(self) -> None:
        await self._server.aclose()

    async def _serve(self, conn: TcpConnection) -> None:
        with contextlib.suppress(BrokenError, ClosedError):
            while True:
                msg = await conn.recv()
                async with self._lock:
                    reply = await asyncio.to_thread(self.core.handle, msg, int(self.clock()))
                await conn.send(reply)
