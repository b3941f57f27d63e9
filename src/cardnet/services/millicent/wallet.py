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
from cardnet.services.millicent.vendor import stored, stored_json, stored_scrip
from cardnet.store import Store
from cardnet.transport import TransportError, dial, host_port
from cardnet.wire import DecodeError, Message, Uid

CFG, SECRETS, SCRIP, PENDING, VENDORS = "mw.cfg", "mw.sec", "mw.scrip", "mw.pend", "mw.vaddr"
ME = Uid(b"\x00" * 12, 1)
RENEW_MARGIN_S = 24 * 3600
TIMEOUT_S = 10.0
# A pending request is left alone (kept pending, with its reason) for these; anything else is a bug to report.
UNSETTLED = ("unreachable", "no_answer", "unauthenticated", "bad_reply", "not_a_vendor", "pending", "store_failed")
UNSPENT = mc.UNSPENT  # the vendor's refusals that leave the scrip unspent: the wallet keeps it


class WalletError(CardnetError):
    """A wallet operation failed (``reason`` says why; the message says what to do)."""


@dataclass(frozen=True)
class SpendResult:
    status: mc.Status
    content: bytes
    change: int
    detail: str


def _addr(address: str) -> tuple[str, int]:
    try:
        return host_port(address)
    except ValueError as exc:
        raise WalletError("bad_address", str(exc)) from None


async def _roundtrip(address: str, mtype: int, param: bytes) -> Message:
    host, port = _addr(address)
    try:
        async with asyncio.timeout(TIMEOUT_S), await dial(host, port) as conn:
            await conn.send(Message(ME, Uid(b"\x00" * 12, 0), mtype, param))
            return await conn.recv()
    except (TransportError, TimeoutError) as exc:
        raise WalletError("unreachable", f"no answer from {address} ({exc}): is that the right HOST:PORT?") from None


CATALOGUE_MAX_PAGES = 100  # pages of a catalogue read at most (10,000 products); the rest is said to be left


async def fetch_catalogue(address: str) -> dict[str, Any]:
    """What the vendor at ``address`` sells and at what price: ``vendor`` (its id, hex), ``products`` (name and
    price each, in name order) and ``complete`` (False past ``CATALOGUE_MAX_PAGES`` pages), read a page at a time.

    The catalogue is not authenticated (see :func:`~cardnet.protocols.millicent.open_catalogue`): what it says
    is checked at the purchase, where a price other than the vendor's is refused and nothing spent."""
    products: list[dict[str, Any]] = []
    vendor: bytes | None = None
    after: str | None = None
    for _ in range(CATALOGUE_MAX_PAGES):
        ask = mc.CATALOGUE_ASK_SCHEMA.encode({} if after is None else {"after": after})
        reply = await _roundtrip(address, mc.CATALOGUE_ASK.code, ask)
        try:
            f = mc.open_catalogue(reply.mtype, reply.param, after=after)
        except mc.MillicentError as exc:
            raise WalletError(exc.reason, f"{exc}: is {address} a Millicent vendor's HOST:PORT?") from None
        if vendor is not None and f["vendor"] != vendor:
            raise WalletError("bad_reply", f"the catalogue's pages name two vendors: ask {address} again")
        vendor = bytes(f["vendor"])
        products += f["products"]
        if not f["more"]:
            return {"vendor": vendor.hex(), "products": products, "complete": True}
        after = products[-1]["name"]
    return {"vendor": (vendor or b"").hex(), "products": products, "complete": False}


def parse_pending(raw: bytes) -> dict[str, Any]:
    """A pending request as the wallet keeps it (a purchase at the broker or a spend at a vendor), checked."""
    rec = stored_json(raw, "a pending request")
    with stored("a pending request"):
        if rec["kind"] not in ("buy", "spend") or not isinstance(rec["to"], str):
            raise ValueError(f"kind {rec['kind']!r} or address {rec['to']!r}")
        bytes.fromhex(rec["param"])
        bytes.fromhex(rec.get("vendor", ""))
        if rec["kind"] == "spend":
            mc.Level(rec["level"])
            if not isinstance(rec["mtype"], int):
                raise TypeError("mtype is not an integer")
            stored_scrip(bytes.fromhex(rec["scrip"]), "a pending request's scrip")
        elif not isinstance(rec["value"], int):
            raise TypeError("value is not an integer")
    return rec


def stored_text(raw: bytes, what: str) -> str:
    with stored(what):
        return raw.decode()


_STAYS = "the request stays pending: `cardnet millicent retry` asks again (`--at HOST:PORT` sends it elsewhere)"
_STAYS_BUY = (
    "the purchase stays pending: `cardnet millicent retry` asks again (`cardnet millicent retry --broker HOST:PORT` "
    "sends it to the broker's new address if it moved)"
)


def _stays(rec: dict[str, Any]) -> str:
    """What becomes of a pending request that was not settled, and how to send it again (or elsewhere)."""
    return _STAYS_BUY if rec["kind"] == "buy" else _STAYS


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
        with stored("the wallet's account key"):
            return profile.private_from_der(raw)

    @property
    def customer_id(self) -> bytes | None:
        with self.store.transaction() as txn:
            return txn.get(CFG, b"cid")

    async def open_account(self, broker: str) -> bytes:
        """Open (or, with the same key, re-open) the account; keeps the key the broker MACs its answers with.

        This first exchange is trusted as it comes (the paper asks for a secure channel here): the customer id
        and the reply key are learnt from it.
        """
        key = self._key()
        pub = profile.public_bytes(key.public_key())
        reply = await _roundtrip(broker, mc.OPEN.code, mc.OPEN_SCHEMA.encode({"pub": pub}))
        try:
            f = mc.OPENED.parse(reply)
        except DecodeError as exc:
            raise WalletError(
                "bad_reply", f"the broker's answer is unreadable ({exc}): open the account again"
            ) from None
        if f["status"] != 0 or "customer_id" not in f:
            raise WalletError("refused", f"the broker refused the account: {f.get('detail', '')}")
        cid = bytes(f["customer_id"])
        try:
            rkey = profile.hpke_open(key, f.get("key_box", b""), info=mc.REPLY_KEY_INFO + cid)
        except CryptoError:
            raise WalletError(
                "bad_reply", "the broker sent no key of its own for its answers: open the account again"
            ) from None
        with self.store.transaction() as txn:
            txn.put(CFG, b"cid", cid)
            txn.put(CFG, b"broker", broker.encode())
            txn.put(CFG, b"rkey", rkey)
        return cid

    # -- requests in flight -------------------------------------------------------------
    def _hold(self, rid: bytes, rec: dict[str, Any], reason: str) -> None:
        """Keep ``rid`` pending, noting why (``list`` shows it)."""
        rec["reason"] = reason
        with self.store.transaction() as txn:
            if txn.get(PENDING, rid) is not None:
                txn.put(PENDING, rid, json.dumps(rec).encode())

    async def _exchange(self, rid: bytes, rec: dict[str, Any], mtype: int, param: bytes) -> Message:
        """Send a pending request to ``rec["to"]`` and wait for the answer; notes in the record once the
        bytes may have reached the peer (``sent``: then what they asked for may have happened)."""
        host, port = _addr(rec["to"])
        try:
            async with asyncio.timeout(TIMEOUT_S):
                conn = await dial(host, port)
        except (TransportError, TimeoutError) as exc:
            self._hold(rid, rec, f"cannot reach {rec['to']}")
            raise WalletError("unreachable", f"cannot reach {rec['to']} ({exc}); {_stays(rec)}") from None
        try:
            if not rec.get("sent"):
                rec["sent"] = True
                self._hold(rid, rec, "sent, no answer yet")
            async with asyncio.timeout(TIMEOUT_S), conn:
                await conn.send(Message(ME, Uid(b"\x00" * 12, 0), mtype, param))
                return await conn.recv()
        except (TransportError, TimeoutError) as exc:
            self._hold(rid, rec, f"no answer from {rec['to']}")
            raise WalletError("no_answer", f"no answer from {rec['to']} ({exc}); {_stays(rec)}") from None

    # -- buying scrip at the broker -----------------------------------------------------
    async def buy(self, vendor: bytes, value: int, broker: str | None = None) -> mc.Scrip:
        cid = self.customer_id
        if cid is None:
            raise WalletError("no_account", "open an account first: cardnet millicent open --broker HOST:PORT")
        with self.store.transaction() as txn:
            broker = broker or stored_text(txn.get(CFG, b"broker") or b"", "the broker's address")
            want = 0 if txn.get(SECRETS, vendor) is not None else 1
            if txn.get(CFG, b"rkey") is None:
                raise WalletError(
                    "no_reply_key",
                    "this wallet does not have the key the broker MACs its answers with: "
                    f"cardnet millicent open --broker {broker} (the same account, opened again)",
                )
        rid = self.rng(mc.RID_BYTES)
        f: dict[str, Any] = {"customer_id": cid, "vendor": vendor, "value": value, "rid": rid, "want_secret": want}
        f["sig"] = profile.sign(self._key(), mc.purchase_sig_input(f))
        param = mc.PURCHASE_SCHEMA.encode(f)
        rec = {"kind": "buy", "to": broker, "param": param.hex(), "vendor": vendor.hex(), "value": value}
        with self.store.transaction() as txn:
            txn.put(PENDING, rid, json.dumps(rec).encode())
        return await self._finish_buy(rid, rec)

    async def _finish_buy(self, rid: bytes, rec: dict[str, Any]) -> mc.Scrip:
        """Send a pending purchase; it ends only on the broker's own (MACed) answer."""
        param = bytes.fromhex(rec["param"])
        reply = await self._exchange(rid, rec, mc.PURCHASE.code, param)
        with self.store.transaction() as txn:
            rkey = txn.get(CFG, b"rkey") or b""
        try:
            p = mc.open_purchased(reply.mtype, reply.param, purchase=param, key=rkey)
        except mc.MillicentError as exc:
            # Anyone on the wire could have sent it: believing a refusal would forget a purchase the broker may
            # have debited. The broker answers the same purchase again from its stored answer.
            self._hold(rid, rec, f"an answer that is not the broker's: {exc}")
            raise WalletError(
                "unauthenticated" if exc.reason == "unauthenticated" else "bad_reply",
                f"{exc}: the broker MACs its answers with this account's key, so anyone on the network could "
                f"have sent this one; {_STAYS_BUY}",
            ) from None
        self._broker_answers_at(rec["to"])
        if p.status == mc.PURCHASE_PENDING:
            self._hold(rid, rec, f"the broker says: {p.detail}")
            raise WalletError("pending", f"the broker has not finished the purchase ({p.detail}); {_STAYS_BUY}")
        if p.status != mc.PURCHASE_OK or p.scrip is None:
            with self.store.transaction() as txn:
                txn.delete(PENDING, rid)
            raise WalletError("refused", f"the broker refused: {p.detail}")
        scrip = p.scrip
        secret = None
        if p.secret_box is not None:
            try:
                secret = profile.hpke_open(
                    self._key(), p.secret_box, info=b"millicent customer secret" + scrip.vendor + scrip.customer_id
                )
            except CryptoError as exc:
                self._hold(rid, rec, "the customer secret does not open")
                raise WalletError("bad_reply", f"cannot open the customer secret ({exc}); {_STAYS_BUY}") from None
        with self.store.transaction() as txn:
            if secret is not None:
                txn.put(SECRETS, scrip.vendor, secret)
            txn.put(SCRIP, scrip.vendor + scrip.scrip_id, scrip.encode())
            txn.delete(PENDING, rid)
        return scrip

    def _broker_answers_at(self, address: str) -> None:
        """The broker answered at ``address`` with its MAC: later purchases go there (it may have moved)."""
        with self.store.transaction() as txn:
            if txn.get(CFG, b"broker") != address.encode():
                txn.put(CFG, b"broker", address.encode())

    # -- spending at a vendor -------------------------------------------------------------
    def scrip(self, vendor: bytes | None = None) -> list[mc.Scrip]:
        with self.store.transaction() as txn:
            rows = txn.scan(SCRIP, vendor or b"")
        return [stored_scrip(v) for _, v in rows]

    def vendor_address(self, vendor: bytes) -> str | None:
        """Where the vendor answered last (learnt from its accepting or MACed answers)."""
        with self.store.transaction() as txn:
            raw = txn.get(VENDORS, vendor)
        return None if raw is None else stored_text(raw, "a vendor's address")

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
        """Buy ``product`` at ``price``; fetch scrip from the broker first when short (``top_up`` >= price).

        Never buys while a request about this vendor is pending: its scrip may come back (as change, or
        refused unspent), and a second attempt would otherwise pay twice.
        """
        scrip = self._pick(vendor, price, now)
        if scrip is None:
            waiting = [rid for rid, rec in self.pending() if rec.get("vendor") == vendor.hex()]
            if waiting:
                raise WalletError(
                    "pending",
                    f"{len(waiting)} request(s) about vendor {vendor.hex()} are still pending and may bring scrip "
                    "back: run `cardnet millicent retry` first (`--at HOST:PORT` if the vendor's address was "
                    "wrong, `--broker HOST:PORT` if the broker moved); nothing was bought",
                )
            if top_up < price:
                raise WalletError("short", self._short(vendor, price, now))
            await self.buy(vendor, top_up)
            scrip = self._pick(vendor, price, now)
            assert scrip is not None
        return await self._send(scrip, address, mc.Op.BUY, price, product, level)

    def _short(self, vendor: bytes, price: int, now: int) -> str:
        """What is missing when no piece of ``vendor``'s scrip covers ``price``, and what to do."""
        usable = [s.value for s in self.scrip(vendor) if s.expiry > now + 60]
        held = f"the largest you hold is worth {max(usable)}" if usable else "you hold none"
        return (
            f"no piece of vendor {vendor.hex()}'s scrip covers the price, {price} units of its scrip ({held}; a "
            f"purchase is paid with one piece, the vendor gives change): buy a piece worth at least {price} from "
            f"the broker (`cardnet millicent buy`), then spend again"
        )

    async def renew(
        self,
        now: int,
        *,
        vendor: bytes | None = None,
        address: str | None = None,
        level: mc.Level = mc.Level.THEFT,
    ) -> list[dict[str, Any]]:
        """Exchange scrip that expires within a day for new scrip, each vendor's at that vendor.

        The address is the one the vendor last answered from, or ``address`` for ``vendor`` (``address``
        without ``vendor`` only when one vendor's scrip is due). A vendor that cannot be reached is reported
        and the others are still renewed. Returns one row per scrip: vendor, scrip_id, outcome, detail.
        """
        due: dict[bytes, list[mc.Scrip]] = {}
        for s in self.scrip(vendor):
            if s.expiry <= now + RENEW_MARGIN_S:
                due.setdefault(s.vendor, []).append(s)
        if address is not None and vendor is None:
            if len(due) > 1:
                raise WalletError(
                    "ambiguous",
                    f"scrip of {len(due)} vendors is due: say which vendor --at is with --vendor",
                )
            vendor = next(iter(due), None)
        rows: list[dict[str, Any]] = []
        for v, pieces in due.items():
            at = address if v == vendor and address is not None else self.vendor_address(v)
            for s in pieces:
                row: dict[str, Any] = {"vendor": v.hex(), "scrip_id": s.scrip_id.hex(), "value": s.value}
                rows.append(row)
                if at is None:
                    row.update(outcome="skipped", detail="no address known: renew --vendor VENDOR --at HOST:PORT")
                    continue
                try:
                    r = await self._send(s, at, mc.Op.RENEW, 0, "", level)
                except WalletError as exc:
                    row.update(outcome="pending" if exc.reason in UNSETTLED else "failed", detail=str(exc))
                    if exc.reason in ("unreachable", "no_answer"):
                        at = None  # the rest of this vendor's scrip stays in the wallet, not pending
                    continue
                row.update(outcome="renewed" if r.status == mc.Status.OK else r.status.name.lower(), detail=r.detail)
        return rows

    async def _send(
        self, scrip: mc.Scrip, address: str, op: mc.Op, price: int, product: str, level: mc.Level
    ) -> SpendResult:
        _addr(address)  # a malformed address is refused before anything is pending
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
            "vendor": scrip.vendor.hex(),
        }
        with self.store.transaction() as txn:  # the scrip leaves the spendable set with the request
            txn.delete(SCRIP, scrip.vendor + scrip.scrip_id)
            txn.put(PENDING, rid, json.dumps(record).encode())
        return await self._finish_spend(rid, record, secret)

    async def _finish_spend(self, rid: bytes, record: dict[str, Any], secret: bytes | None) -> SpendResult:
        reply = await self._exchange(rid, record, record["mtype"], bytes.fromhex(record["param"]))
        try:
            out = mc.open_reply(reply.mtype, reply.param, rid=rid, level=mc.Level(record["level"]), secret=secret)
        except (mc.MillicentError, DecodeError) as exc:
            self._hold(rid, record, f"an answer that does not check: {exc}")
            reason = exc.reason if isinstance(exc, mc.MillicentError) and exc.reason == "not_a_vendor" else "bad_reply"
            raise WalletError(reason, f"{exc}; {_STAYS}") from None
        if out.status == mc.Status.UNAVAILABLE:  # not decided, nothing spent (MACed or not: the request is kept)
            self._hold(rid, record, f"the vendor could not decide it: {out.detail}")
            raise WalletError("store_failed", f"the vendor refused: {out.detail}; {_STAYS}")
        if record["level"] >= mc.Level.THEFT and out.status != mc.Status.OK and not out.authentic:
            # Anyone who saw the request on the wire can answer it with a plain refusal; believing it would
            # forget a purchase the vendor may have accepted (and its change). A vendor that accepted it
            # answers a resend from its stored, MACed reply.
            self._hold(rid, record, f"refused ({out.status.name.lower()}) without the vendor's MAC")
            raise WalletError(
                "unauthenticated",
                f"the answer says {out.status.name.lower()} ({out.detail}) but is not MACed with your secret, so "
                "anyone on the network could have sent it; the request stays pending: `cardnet millicent retry` "
                "asks again, `cardnet millicent retry --give-up` forgets requests that are still refused that way",
            )
        scrip = mc.Scrip.decode(bytes.fromhex(record["scrip"]))
        with self.store.transaction() as txn:
            if out.status == mc.Status.OK or out.authentic:
                txn.put(VENDORS, scrip.vendor, record["to"].encode())  # the vendor answers there
            if out.change is not None:
                txn.put(SCRIP, out.change.vendor + out.change.scrip_id, out.change.encode())
            if out.status in UNSPENT:
                txn.put(SCRIP, scrip.vendor + scrip.scrip_id, scrip.encode())  # not spent: keep it
            txn.delete(PENDING, rid)
        return SpendResult(out.status, out.content, out.change.value if out.change else 0, out.detail)

    # -- recovery -------------------------------------------------------------------------
    def pending(self) -> list[tuple[bytes, dict[str, Any]]]:
        with self.store.transaction() as txn:
            return [(k, parse_pending(v)) for k, v in txn.scan(PENDING)]

    async def retry_pending(
        self,
        now: int,
        *,
        give_up: bool = False,
        at: str | None = None,
        vendor: bytes | None = None,
        broker: str | None = None,
    ) -> list[dict[str, Any]]:
        """Send every pending request again (the same bytes: the peer answers from its stored reply).

        ``at``: send the pending spends of ``vendor`` (of the one vendor with pending spends, if not given)
        there from now on (the address was wrong). ``broker``: send the pending purchases of scrip there from
        now on (the broker listens at another address); once the broker answers there, the wallet buys there
        later too. A request that is still not settled stays pending, unless ``give_up``: then it is forgotten,
        keeping what can be kept (see :meth:`_give_up`). Returns one row per request: request, kind, vendor,
        outcome, detail.
        """
        todo = self.pending()
        if broker is not None:
            _addr(broker)
        if at is not None:
            _addr(at)
            if vendor is None:
                vendors = {str(rec.get("vendor", "")) for _, rec in todo if rec["kind"] == "spend"}
                if len(vendors) > 1:
                    raise WalletError("ambiguous", f"spends at {len(vendors)} vendors are pending: say which --vendor")
                vendor = bytes.fromhex(vendors.pop()) if vendors else None
        rows: list[dict[str, Any]] = []
        for rid, rec in todo:
            row: dict[str, Any] = {"request": rid.hex(), "kind": rec["kind"], "vendor": rec.get("vendor", "")}
            rows.append(row)
            if at is not None and rec["kind"] == "spend" and vendor is not None and rec.get("vendor") == vendor.hex():
                rec["to"] = at
                self._hold(rid, rec, f"re-pointed to {at}")
            if broker is not None and rec["kind"] == "buy" and rec["to"] != broker:
                rec["to"] = broker
                self._hold(rid, rec, f"re-pointed to the broker at {broker}")
            try:
                if rec["kind"] == "buy":
                    s = await self._finish_buy(rid, rec)
                    row.update(outcome="bought", detail=f"scrip {s.scrip_id.hex()} worth {s.value}")
                    continue
                scrip = mc.Scrip.decode(bytes.fromhex(rec["scrip"]))
                with self.store.transaction() as txn:
                    secret = txn.get(SECRETS, scrip.vendor)
                r = await self._finish_spend(rid, rec, secret)
            except WalletError as exc:
                if exc.reason not in UNSETTLED:
                    row.update(outcome=exc.reason, detail=str(exc))
                elif give_up:
                    row.update(outcome="gave_up", detail=self._give_up(rid, rec, now))
                else:
                    row.update(outcome="pending", detail=str(exc))
                continue
            row.update(
                outcome=r.status.name.lower(), detail=f"change {r.change}" + (f": {r.detail}" if r.detail else "")
            )
        return rows

    def _give_up(self, rid: bytes, rec: dict[str, Any], now: int) -> str:
        """Forget a pending request on the owner's word; keep what can be kept. Says what became of it."""
        with self.store.transaction() as txn:
            txn.delete(PENDING, rid)
            if rec["kind"] == "buy":
                if not rec.get("sent"):
                    return f"forgotten; nothing was paid: the purchase of {rec['value']} never reached the broker"
                return (
                    f"forgotten; the broker may have debited {rec['value']} for it (ask its operator to check "
                    f"request {rid.hex()})"
                )
            scrip = mc.Scrip.decode(bytes.fromhex(rec["scrip"]))
            if scrip.expiry <= now:
                return f"lost: scrip {scrip.scrip_id.hex()} worth {scrip.value} has expired"
            txn.put(SCRIP, scrip.vendor + scrip.scrip_id, scrip.encode())
        if not rec.get("sent"):
            return f"kept: scrip {scrip.scrip_id.hex()} worth {scrip.value} is back (the vendor never received it)"
        return (
            f"kept: scrip {scrip.scrip_id.hex()} worth {scrip.value} is back in the wallet; if the vendor did "
            "accept the request, it will refuse the scrip as spent"
        )
