"""The customer's Millicent wallet, in the host library (a store file on the customer's machine).

Theory of operation
-------------------
The wallet holds the account key (P-256, for signing purchases at the
broker), the customer id, one customer secret per vendor, and scrip of many
vendors. Every request is written to the wallet *before* it is sent (the
spent scrip leaves the spendable set in the same transaction), and the reply
is applied (change kept, request forgotten) in one transaction after it
arrives; a request whose reply was lost stays pending and
:meth:`Wallet.retry_pending` sends the very same bytes again, which the
vendor (or broker) answers from its stored reply. So a crash or a lost reply
never loses value.

Threat model of the choice (host library, not card): whoever controls the
customer's machine can read the customer secrets and the scrip and spend
them; Millicent's theft protection defends against thieves on the network
and at other vendors, not against malware on the customer's own host. A card
would keep the customer secrets out of the host's reach (the host would still
see scrip in levels 1-2), at the cost of a card step per purchase; since
scrip is worth fractions of a cent and the customer secret is per vendor,
cardnet keeps the wallet in the host library.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cardnet.crypto import profile
from cardnet.crypto.errors import CryptoError
from cardnet.errors import CardnetError
from cardnet.protocols import millicent as mc
from cardnet.store import Store
from cardnet.transport import dial
from cardnet.wire import DecodeError, Message, Uid

CFG, SECRETS, SCRIP, PENDING = "mw.cfg", "mw.sec", "mw.scrip", "mw.pend"
ME = Uid(b"\x00" * 12, 1)
RENEW_MARGIN_S = 24 * 3600
TIMEOUT_S = 10.0


class WalletError(CardnetError):
    """A wallet operation failed (``reason`` says why; the message says what to do)."""


@dataclass(frozen=True)
class SpendResult:
    status: mc.Status
    content: bytes
    change: int
    detail: str


def _addr(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    try:
        return host or "127.0.0.1", int(port)
    except ValueError:
        raise WalletError("bad_address", f"{address!r} is not host:port") from None


async def _roundtrip(address: str, mtype: int, param: bytes) -> Message:
    host, port = _addr(address)
    async with asyncio.timeout(TIMEOUT_S), await dial(host, port) as conn:
        await conn.send(Message(ME, Uid(b"\x00" * 12, 0), mtype, param))
        return await conn.recv()


class Wallet:
    def __init__(self, store: Store, *, rng: Callable[[int], bytes] = os.urandom) -> None:
        self.store = store
        self.rng = rng

    # -- account ---------------------------------------------------------------------
    def _key(self) -> profile.PrivateKey:
        with self.store.transaction() as txn:
            raw = txn.get(CFG, b"key")
            if raw is None:
                raw = profile.private_to_der(profile.generate_private_key(self.rng))
                txn.put(CFG, b"key", raw)
        return profile.private_from_der(raw)

    @property
    def customer_id(self) -> bytes | None:
        with self.store.transaction() as txn:
            return txn.get(CFG, b"cid")

    async def open_account(self, broker: str) -> bytes:
        pub = profile.public_bytes(self._key().public_key())
        reply = await _roundtrip(broker, mc.OPEN.code, mc.OPEN_SCHEMA.encode({"pub": pub}))
        f = mc.OPENED.parse(reply)
        if f["status"] != 0 or "customer_id" not in f:
            raise WalletError("refused", f"the broker refused the account: {f.get('detail', '')}")
        with self.store.transaction() as txn:
            txn.put(CFG, b"cid", f["customer_id"])
            txn.put(CFG, b"broker", broker.encode())
        return bytes(f["customer_id"])

    # -- buying scrip at the broker -----------------------------------------------------
    async def buy(self, vendor: bytes, value: int, broker: str | None = None) -> mc.Scrip:
        cid = self.customer_id
        if cid is None:
            raise WalletError("no_account", "open an account first: cardnet millicent open --broker HOST:PORT")
        with self.store.transaction() as txn:
            broker = broker or (txn.get(CFG, b"broker") or b"").decode()
            want = 0 if txn.get(SECRETS, vendor) is not None else 1
        rid = self.rng(mc.RID_BYTES)
        f: dict[str, Any] = {"customer_id": cid, "vendor": vendor, "value": value, "rid": rid, "want_secret": want}
        f["sig"] = profile.sign(self._key(), mc.purchase_sig_input(f))
        param = mc.PURCHASE_SCHEMA.encode(f)
        with self.store.transaction() as txn:
            txn.put(PENDING, rid, json.dumps({"kind": "buy", "to": broker, "param": param.hex()}).encode())
        return await self._finish_buy(rid, broker, param)

    async def _finish_buy(self, rid: bytes, broker: str, param: bytes) -> mc.Scrip:
        reply = await _roundtrip(broker, mc.PURCHASE.code, param)
        f = mc.PURCHASED.parse(reply)
        if f["rid"] != rid:
            raise WalletError("bad_reply", "the broker answered another request")
        if f["status"] != 0 or "scrip" not in f:
            with self.store.transaction() as txn:
                txn.delete(PENDING, rid)
            raise WalletError("refused", f"the broker refused: {f.get('detail', '')}")
        scrip = mc.Scrip.decode(f["scrip"])
        key = self._key()
        with self.store.transaction() as txn:
            if "secret_box" in f:
                try:
                    secret = profile.hpke_open(
                        key,
                        f["secret_box"],
                        info=b"millicent customer secret" + scrip.vendor + scrip.customer_id,
                    )
                except CryptoError as exc:
                    raise WalletError("bad_reply", f"cannot open the customer secret: {exc}") from None
                txn.put(SECRETS, scrip.vendor, secret)
            txn.put(SCRIP, scrip.vendor + scrip.scrip_id, scrip.encode())
            txn.delete(PENDING, rid)
        return scrip

    # -- spending at a vendor -------------------------------------------------------------
    def scrip(self, vendor: bytes | None = None) -> list[mc.Scrip]:
        with self.store.transaction() as txn:
            rows = txn.scan(SCRIP, vendor or b"")
        return [mc.Scrip.decode(v) for _, v in rows]

    def _pick(self, vendor: bytes, price: int, now: int) -> mc.Scrip | None:
        fit = [s for s in self.scrip(vendor) if s.value >= price and s.expiry > now + 60]
        return min(fit, key=lambda s: (s.value, s.expiry)) if fit else None

    async def spend(
        self,
        vendor: bytes,
        address: str,
        product: str,
        price: int,
        now: int,
        *,
        level: mc.Level = mc.Level.THEFT,
        top_up: int = 0,
    ) -> SpendResult:
        """Buy ``product`` at ``price``; fetch scrip from the broker first when short (``top_up`` >= price)."""
        scrip = self._pick(vendor, price, now)
        if scrip is None:
            if top_up < price:
                raise WalletError(
                    "short", f"no scrip of vendor {vendor.hex()} worth {price}: buy some (cardnet millicent buy)"
                )
            await self.buy(vendor, top_up)
            scrip = self._pick(vendor, price, now)
            assert scrip is not None
        return await self._send(scrip, address, mc.Op.BUY, price, product, level)

    async def renew(self, address: str, now: int, *, level: mc.Level = mc.Level.THEFT) -> int:
        """Exchange scrip that expires within a day for new scrip; returns how many were renewed."""
        n = 0
        for s in self.scrip():
            if s.expiry <= now + RENEW_MARGIN_S:
                r = await self._send(s, address, mc.Op.RENEW, 0, "", level)
                n += r.status == mc.Status.OK
        return n

    async def _send(
        self, scrip: mc.Scrip, address: str, op: mc.Op, price: int, product: str, level: mc.Level
    ) -> SpendResult:
        with self.store.transaction() as txn:
            secret = txn.get(SECRETS, scrip.vendor)
        if secret is None and level >= mc.Level.THEFT:
            raise WalletError("no_secret", "no customer secret for this vendor: buy its scrip from the broker first")
        rid = self.rng(mc.RID_BYTES)
        mtype, param = mc.make_request(scrip, rid=rid, level=level, secret=secret, price=price, product=product, op=op)
        record = {
            "kind": "spend",
            "to": address,
            "mtype": mtype,
            "param": param.hex(),
            "level": int(level),
            "scrip": scrip.encode().hex(),
        }
        with self.store.transaction() as txn:  # the scrip leaves the spendable set with the request
            txn.delete(SCRIP, scrip.vendor + scrip.scrip_id)
            txn.put(PENDING, rid, json.dumps(record).encode())
        return await self._finish_spend(rid, record, secret)

    async def _finish_spend(self, rid: bytes, record: dict[str, Any], secret: bytes | None) -> SpendResult:
        reply = await _roundtrip(record["to"], record["mtype"], bytes.fromhex(record["param"]))
        try:
            out = mc.open_reply(reply.mtype, reply.param, rid=rid, level=mc.Level(record["level"]), secret=secret)
        except (mc.MillicentError, DecodeError) as exc:
            raise WalletError("bad_reply", f"{exc}; the request stays pending: cardnet millicent retry") from None
        if record["level"] >= mc.Level.THEFT and out.status != mc.Status.OK and not out.authentic:
            # Anyone who saw the request on the wire can answer it with a plain refusal; believing it would
            # forget a purchase the vendor may have accepted (and its change). A vendor that accepted it
            # answers a resend from its stored, MACed reply.
            raise WalletError(
                "unauthenticated",
                f"the answer says {out.status.name.lower()} ({out.detail}) but is not MACed with your secret, so "
                "anyone on the network could have sent it; the request stays pending: `cardnet millicent retry` "
                "asks again, `cardnet millicent retry --give-up` forgets requests that are still refused that way",
            )
        scrip = mc.Scrip.decode(bytes.fromhex(record["scrip"]))
        with self.store.transaction() as txn:
            if out.change is not None:
                txn.put(SCRIP, out.change.vendor + out.change.scrip_id, out.change.encode())
            if out.status in (mc.Status.INSUFFICIENT, mc.Status.UNKNOWN_PRODUCT, mc.Status.LEVEL_TOO_LOW):
                txn.put(SCRIP, scrip.vendor + scrip.scrip_id, scrip.encode())  # not spent: keep it
            elif out.status == mc.Status.MALFORMED and out.detail.startswith("the price"):
                txn.put(SCRIP, scrip.vendor + scrip.scrip_id, scrip.encode())
            txn.delete(PENDING, rid)
        return SpendResult(out.status, out.content, out.change.value if out.change else 0, out.detail)

    # -- recovery -------------------------------------------------------------------------
    def pending(self) -> list[tuple[bytes, dict[str, Any]]]:
        with self.store.transaction() as txn:
            return [(k, json.loads(v)) for k, v in txn.scan(PENDING)]

    async def retry_pending(self, *, give_up: bool = False) -> list[str]:
        """Send every pending request again (the same bytes: the peer answers from its stored reply).

        A spend that is refused again without the vendor's MAC stays pending,
        unless ``give_up``: then it is forgotten (its scrip with it).
        """
        done = []
        for rid, rec in self.pending():
            if rec["kind"] == "buy":
                s = await self._finish_buy(rid, rec["to"], bytes.fromhex(rec["param"]))
                done.append(f"bought {s.value} of vendor {s.vendor.hex()}")
                continue
            scrip = mc.Scrip.decode(bytes.fromhex(rec["scrip"]))
            with self.store.transaction() as txn:
                secret = txn.get(SECRETS, scrip.vendor)
            try:
                r = await self._finish_spend(rid, rec, secret)
            except WalletError as exc:
                if exc.reason != "unauthenticated":
                    raise
                if give_up:
                    with self.store.transaction() as txn:
                        txn.delete(PENDING, rid)
                    done.append(f"gave up request {rid.hex()} (scrip {scrip.scrip_id.hex()}, value {scrip.value})")
                else:
                    done.append(f"still pending {rid.hex()}: refused without the vendor's MAC")
                continue
            done.append(f"{r.status.name.lower()}: change {r.change}")
        return done
