"""The ``millicent`` simulation: customers, a cheater and a thief against two vendors and a broker.

Theory of operation
-------------------
The real :class:`~cardnet.services.millicent.vendor.VendorCore` (on a
:class:`~cardnet.sim.world.TearingStore`: power lost before or after a
commit) and the real :class:`~cardnet.services.millicent.broker.BrokerCore`
run on the world's virtual clock; the network between customers and vendors
is simulated here from the world's fault plan (loss, duplication, delay that
reorders), and vendors crash (volatile inbox lost, core rebuilt from the
store) at the plan's crash rate. Customers buy scrip from the broker (real
signed purchases, customer secrets sealed to their keys), then buy pages at
levels 2 and 3, renew scrip before it expires and resend a request until its
reply arrives (a re-fetch). A cheater spends the same scrip twice at once and
spends spent scrip again after it expired and was pruned. A thief sees every
request on the network and spends the scrip in it with its own secret, at
level 1, altered, at the other vendor, and replays requests verbatim.

In seeds whose plan has ``malicious_p > 0`` the network itself is a malicious
carrier (:class:`~cardnet.sim.malice.Malice`): it sees every byte on the wire
between customers, vendors and the broker (requests, replies, purchases and
their answers) but no secret; per message in flight it tampers, forges the
claimed sender (the reply goes to whoever that is), reflects or redirects it,
and per tick it replays something it saw (to the same or another party) or
injects a made-up message. Customers then treat an unauthenticated (unMACed)
refusal of a level-2/3 request as a hint and send the request again.

Invariants: a scrip id is accepted at most once per vendor (across tears and
restarts), and every acceptance a customer sees is durable at the vendor; no
request made by the thief is ever accepted (read at the vendor); honest
customers never see their scrip refused as spent, stolen or forged (under the
carrier: never authentically); at quiescence value is conserved: scrip issued
by the broker = prices paid at vendors (from the vendors' durable spent lists)
+ value of the scrip the customers hold, and the broker debited each customer
exactly what she bought.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from cardnet.crypto import profile
from cardnet.protocols import millicent as mc
from cardnet.services.millicent import broker as mb
from cardnet.services.millicent import vendor as mv
from cardnet.sim.malice import Action, Malice
from cardnet.sim.scenarios import register
from cardnet.sim.world import TearingStore, World
from cardnet.store import SqliteStore, StoreError
from cardnet.wire import DecodeError, Message, MType, Uid

BASE = 1_800_000_000  # Unix seconds at virtual time 0
SPEED = 4  # vendor clock seconds per simulated second (so scrip expires and is pruned within a run)
VALIDITY_S = 6  # change scrip, in vendor seconds
BROKER_VALIDITY_S = 5
GRACE_S = 10  # vendor seconds a spent record outlives its scrip (re-fetch window): > the faulty phase
SHOP_UNTIL_S = 5.0  # customers shop over this many simulated seconds (past the heal, so pruning happens)
RENEW_WITHIN_S = 3
RETRY_S = 0.1
PRUNE_S = 0.5
PRODUCTS = {"a": 1, "b": 2, "c": 3}
VENDOR_IDS = (b"\x00" * 7 + b"\xa1", b"\x00" * 7 + b"\xb2")
DEPOSIT = 1000
VENDOR_PORT = 100  # vendor i is port 100 + i; customers are ports 1..5
BROKER_PORT = 200
THIEF_PORT = 5  # the last actor
STRANGER = Uid(bytes(range(12)), 7)  # a Uid the carrier may claim that is nobody on this network


REDEEM_S = 0.7  # a vendor redeems the licence scrip it received at the broker this often
EXPIRY_SLACK_S = 3  # vendor seconds the broken vendor's stale clock lags (millicent-expiry-broken)
DRIFT_P = 0.5  # seeds in which every party's clock drifts (rate and offset of its own)
FAKE_BROKER_P = 0.3  # a redemption the carrier swallows and answers "paid" itself (in seeds with a carrier)
LIE_P = 0.3  # seeds in which one vendor's host sets its clock back during the faulty phase
REPLAY_P = 0.5  # under the carrier: a purchase is replayed to the broker verbatim and altered


@dataclass
class Clock:
    """A party's own clock: Unix seconds = BASE + SPEED * rate * t + offset (the host may set it back: ``lie``)."""

    rate: float = 1.0
    offset: float = 0.0

    def unix(self, t: float) -> int:
        return BASE + int(t * SPEED * self.rate + self.offset)


def _uid(n: int) -> Uid:
    return Uid(b"\x00" * 12, n)


BROKER = _uid(BROKER_PORT)


class BrokenVendorCore(mv.VendorCore):
    """A vendor that forgets its spent list (overwrites instead of first-wins): the invariant must catch it."""

    def process_batch(self, requests: list[tuple[int, bytes]], now: int) -> list[tuple[int, bytes]]:
        out = []
        with self.store.transaction() as txn:
            for mt, p in requests:
                c = self.vendor.prepare(mt, p, now, self.pruned_through)
                if not isinstance(c, mc.Candidate):
                    out.append(mc.refusal(c))
                    continue
                if c.refusal is not None:
                    out.append(self.vendor.refuse(c, *c.refusal))
                    continue
                serial = int.from_bytes(txn.get(mv.CFG, b"serial") or b"\x01", "big")
                rmt, reply = self.vendor.accept(c, [serial, serial + 1], now)
                txn.put(mv.CFG, b"serial", (serial + 2).to_bytes(8, "big"))
                txn.put(mv.SPENT, c.spent_key, mv.spent_record(c.digest, rmt, reply))
                out.append((rmt, reply))
        return out


class StaleClockVendorCore(mv.VendorCore):
    """Broken on purpose (``millicent-expiry-broken``): judges expiry on a clock lagging its own by a few seconds."""

    def process_batch(self, requests: list[tuple[int, bytes]], now: int) -> list[tuple[int, bytes]]:
        return super().process_batch(requests, now - EXPIRY_SLACK_S)


class ClockBackVendorCore(mv.VendorCore):
    """Broken on purpose (``millicent-clockback-broken``): judges expiry on its host's clock even when it went back."""

    def judged_time(self, now: int) -> int:
        return now


class BelievesAnyAnswerVendorCore(mv.VendorCore):
    """Broken on purpose (``millicent-settle-broken``): forgets its redeemed rows on any readable answer."""

    def open_redeemed(self, mtype: int, param: bytes, batch: bytes, index: int) -> dict[str, Any]:
        try:
            f: dict[str, Any] = mc.REDEEMED_SCHEMA.decode(param)
        except DecodeError:
            raise mc.MillicentError("bad_reply", "unreadable") from None
        if f["batch"] != batch:
            raise mc.MillicentError("bad_reply", "another batch")
        return f


class PaysTwiceBrokerCore(mb.BrokerCore):
    """Broken on purpose (``millicent-redeem-broken``): pays a redeemed scrip id again (no first-wins record)."""

    def redeem(self, param: bytes) -> bytes:
        with self.store.transaction() as txn:
            for k, _ in txn.scan(mb.REDEEMED):
                txn.delete(mb.REDEEMED, k)
        return super().redeem(param)


@dataclass
class VendorNode:
    index: int
    store: TearingStore
    core: mv.VendorCore
    cls: type[mv.VendorCore]
    clock: Clock = field(default_factory=Clock)
    inbox: list[Message] = field(default_factory=list)
    scheduled: bool = False
    redeeming: tuple[bytes, list[int], int] | None = None  # the batch sent to the broker, its log rows, its licence
    redeem_due: bool = False  # a redeem round is scheduled
    answered_at: int = 0  # the latest clock reading of a batch the vendor answered (the sim's record, not its own)

    def reopen(self) -> None:
        self.store.torn = False
        self.inbox.clear()
        self.redeeming = None
        self.core = self.cls(self.store)


@dataclass
class Pending:
    vendor: int
    msg: Message
    scrip: mc.Scrip
    level: mc.Level
    secret: bytes | None
    op: mc.Op
    price: int


@dataclass
class Actor:
    n: int
    kind: str  # honest, cheater, thief
    key: profile.PrivateKey
    clock: Clock = field(default_factory=Clock)
    cid: bytes = b""
    reply_key: bytes = b""  # the broker MACs its answers to her purchases with it
    secrets: dict[bytes, bytes] = field(default_factory=dict)
    wallet: dict[bytes, mc.Scrip] = field(default_factory=dict)  # scrip id (+vendor) -> scrip
    renewed: set[bytes] = field(default_factory=set)  # scrip got by renewing: not renewed again (clocks differ)
    pending: dict[bytes, Pending] = field(default_factory=dict)
    todo: int = 0
    rids: int = 0


@dataclass
class MillicentScenario:
    name: str = "millicent"
    broken: bool = False
    vendor_cls: type[mv.VendorCore] = mv.VendorCore
    broker_cls: type[mb.BrokerCore] = mb.BrokerCore
    broker_clock: Clock = field(default_factory=Clock)
    redeemable: dict[int, set[bytes]] = field(default_factory=dict)  # vendor -> scrip ids it ever asked paying for
    purchases_per_customer: int = 4
    vendors: list[VendorNode] = field(default_factory=list)
    actors: list[Actor] = field(default_factory=list)
    broker: Any = None
    issued: int = 0
    accepted: dict[tuple[int, bytes], set[bytes]] = field(default_factory=dict)  # (vendor, scrip id) -> rids
    thief_rids: set[bytes] = field(default_factory=set)
    prices: dict[bytes, int] = field(default_factory=dict)  # request digest -> price paid if accepted
    bad: list[str] = field(default_factory=list)
    cheats_left: int = 2
    down: dict[tuple[int, bool], float] = field(default_factory=dict)  # (vendor, towards it) -> until
    last_arrival: dict[tuple[int, int, bool], float] = field(default_factory=dict)
    minted: dict[bytes, int] = field(default_factory=dict)  # vendor + scrip id -> value (broker scrip and change)
    pruned: dict[tuple[int, bytes], int] = field(default_factory=dict)  # (vendor, spent key) -> price paid
    thief_digests: set[bytes] = field(default_factory=set)  # sha256 of every request the thief made
    bought: dict[int, int] = field(default_factory=dict)  # actor -> value bought at the broker
    carrier: Malice | None = None  # the malicious network, in seeds whose plan has malicious_p > 0
    endpoints: list[Uid] = field(default_factory=list)
    handles: dict[Uid, list[MType]] = field(default_factory=dict)

    # -- building ---------------------------------------------------------------------
    def build(self, world: World) -> None:
        rng = world.rng
        self.broker = self.broker_cls(
            SqliteStore(":memory:", durable=False), rng=rng.randbytes, validity_s=BROKER_VALIDITY_S
        )
        for i, vid in enumerate(VENDOR_IDS):
            store = TearingStore(world, f"vendor{i}")
            mv.init_vendor(store, vid, rng=rng.randbytes, validity_s=VALIDITY_S, min_level=2, refetch_grace_s=GRACE_S)
            for name, price in PRODUCTS.items():
                mv.add_product(store, name, price, f"page {name} of vendor {i}".encode())
            mb.add_licence(self.broker.store, mv.export_licence(store, "broker", rng=rng.randbytes))
            cls = BrokenVendorCore if self.broken else self.vendor_cls
            self.vendors.append(VendorNode(i, store, cls(store), cls))
        drift = rng.random() < DRIFT_P
        kinds = ["honest", "honest", "honest", "cheater", "thief"]
        for n, kind in enumerate(kinds, start=1):
            a = Actor(n, kind, profile.generate_private_key(rng.randbytes))
            if drift:
                a.clock = _drifting(rng)
            self.actors.append(a)
            pub = profile.public_bytes(a.key.public_key())
            opened = mc.OPENED_SCHEMA.decode(self.broker.open_account(pub))
            a.cid = opened["customer_id"]
            a.reply_key = profile.hpke_open(a.key, opened["key_box"], info=mc.REPLY_KEY_INFO + a.cid)
            mb.deposit(self.broker.store, a.cid, DEPOSIT)
            for vid in VENDOR_IDS:
                self._buy(world, a, vid, rng.randint(6, 20))
            if kind == "honest":
                a.todo = self.purchases_per_customer
                for _ in range(a.todo):
                    world.at(rng.uniform(0.0, SHOP_UNTIL_S), functools.partial(self._shop, world, a), "shop")
            elif kind == "cheater":
                world.at(rng.uniform(0.0, 1.0), functools.partial(self._double_spend, world, a), "cheat")
            world.at(RETRY_S, functools.partial(self._timer, world, a), "timer")
        if drift:
            self.broker_clock = _drifting(rng)
            for v in self.vendors:
                v.clock = _drifting(rng)
            world.log(f"clocks drift: vendors {[v.clock for v in self.vendors]}, broker {self.broker_clock}")
        if rng.random() < LIE_P:  # the host of one vendor sets its clock back (a lying host), mid-run
            liar = rng.choice(self.vendors)
            when, back = rng.uniform(0.5, 1.9), rng.uniform(2.0, 12.0)  # vendor seconds
            world.at(when, functools.partial(self._lie, world, liar, back), "clock lie")
        for v in self.vendors:
            world.at(PRUNE_S, functools.partial(self._prune, world, v), "prune")
            self._redeem_later(world, v, REDEEM_S)
        world.at(0.005, functools.partial(self._crashes, world), "crashes")
        world.at(rng.uniform(0.1, 0.5), functools.partial(self._forge_orders, world), "forge")
        self.endpoints = [*(_uid(a.n) for a in self.actors), *(_uid(VENDOR_PORT + i) for i in range(2)), BROKER]
        self.handles = {_uid(a.n): [mc.REPLY, mc.SEALED_REPLY] for a in self.actors}
        self.handles.update({_uid(VENDOR_PORT + i): [mc.REQUEST, mc.SEALED_REQUEST] for i in range(2)})
        self.handles[BROKER] = [mc.PURCHASE, mc.OPEN, mc.REDEEM]
        if world.plan.malicious_p > 0:  # (after the first purchases: their signatures are not drawn from the seed)
            self.carrier = Malice(world.rng)
            world.log("malicious carrier: the network between customers, vendors and the broker")

    def _lie(self, world: World, v: VendorNode, back: float) -> None:
        """The vendor's host sets its clock back: spent records it pruned must still refuse their scrip."""
        v.clock = Clock(v.clock.rate, v.clock.offset - back)
        world.exercised["clock_lie"] += 1
        world.log(f"the host of vendor {v.index} sets its clock back {back:.1f} s")

    def _replay_purchase(self, world: World, a: Actor, f: dict[str, Any]) -> None:
        """The carrier saw a purchase: it replays it to the broker verbatim, and altered (signature kept)."""
        verbatim = mc.PURCHASE_SCHEMA.encode(f)
        g = dict(f)
        alter = world.rng.randrange(4)
        others = [b.cid for b in self.actors if b is not a]
        if alter == 0 or (alter == 2 and not others):
            g["value"] = f["value"] + world.rng.randint(1, 100)
        elif alter == 1:
            g["rid"] = world.rng.randbytes(mc.RID_BYTES)  # a fresh request id: a second debit if the broker erred
        elif alter == 2:
            g["customer_id"] = world.rng.choice(others)
        else:
            g["vendor"] = VENDOR_IDS[1 - VENDOR_IDS.index(f["vendor"])]
        src = _uid(a.n) if world.rng.random() < 0.5 else _uid(THIEF_PORT)
        for param in (verbatim, mc.PURCHASE_SCHEMA.encode(g)):
            world.exercised["replay"] += 1
            msg = Message(src, BROKER, mc.PURCHASE.code, param)
            world.at(
                world.now + world.rng.uniform(0.0, 1.0), functools.partial(self._send, world, msg, False), "replay"
            )

    def _forge_orders(self, world: World) -> None:
        """The thief's application port forges privileged orders: another customer's purchase, a vendor's redeem."""
        thief = self.actors[-1]
        victim = world.rng.choice(self.actors[:-1])
        world.exercised["forged_order"] += 2
        f: dict[str, Any] = {"customer_id": victim.cid, "vendor": world.rng.choice(VENDOR_IDS), "value": 50}
        f.update(rid=world.rng.randbytes(mc.RID_BYTES), want_secret=1)
        f["sig"] = profile.sign(thief.key, mc.purchase_sig_input(f))  # her own key, in the victim's name
        self._send(world, Message(_uid(thief.n), BROKER, mc.PURCHASE.code, mc.PURCHASE_SCHEMA.encode(f)), False)
        seen = [k[len(VENDOR_IDS[0]) :] for k in self.minted if k[: len(VENDOR_IDS[0])] == VENDOR_IDS[0]]
        items = [sid + bytes(8) for sid in seen[:5]]
        g = {"vendor": VENDOR_IDS[0], "batch": world.rng.randbytes(16), "items": items, "mac": world.rng.randbytes(16)}
        self._send(world, Message(_uid(thief.n), BROKER, mc.REDEEM.code, mc.REDEEM_SCHEMA.encode(g)), False)
        if not world.healed:
            world.at(world.now + world.rng.uniform(0.2, 0.8), functools.partial(self._forge_orders, world), "forge")

    def _buy(self, world: World, a: Actor, vendor: bytes, value: int) -> None:
        """A real signed purchase at the broker (reliable channel); the customer secret comes sealed."""
        rid = world.rng.randbytes(mc.RID_BYTES)
        f: dict[str, Any] = {"customer_id": a.cid, "vendor": vendor, "value": value, "rid": rid}
        f["want_secret"] = int(vendor not in a.secrets)
        f["sig"] = profile.sign(a.key, mc.purchase_sig_input(f))
        param = mc.PURCHASE_SCHEMA.encode(f)
        reply = self.broker.purchase(param, self.broker_clock.unix(world.now))
        if self.carrier is not None:  # it sees both on the wire (their channel is modelled as reliable: see sim.md)
            self.carrier.observe(Message(_uid(a.n), BROKER, mc.PURCHASE.code, param), from_app=False)
            self.carrier.observe(Message(BROKER, _uid(a.n), mc.PURCHASED.code, reply), from_app=False)
            if not world.healed and world.rng.random() < REPLAY_P:
                self._replay_purchase(world, a, f)
        try:
            r = mc.open_purchased(mc.PURCHASED.code, reply, purchase=param, key=a.reply_key)
        except mc.MillicentError as exc:
            self.bad.append(f"the broker's answer to a purchase does not check: {exc}")
            return
        if r.status != mc.PURCHASE_OK or r.scrip is None:
            self.bad.append(f"broker refused a purchase: {r.detail}")
            return
        s = r.scrip
        if r.secret_box is not None:
            info = b"millicent customer secret" + vendor + a.cid
            a.secrets[vendor] = profile.hpke_open(a.key, r.secret_box, info=info)
        a.wallet[s.scrip_id + s.vendor] = s
        self.minted[s.vendor + s.scrip_id] = value
        self.issued += value
        self.bought[a.n] = self.bought.get(a.n, 0) + value

    # -- actors -------------------------------------------------------------------------
    def _rid(self, a: Actor) -> bytes:
        a.rids += 1
        return bytes([a.n]) + a.rids.to_bytes(15, "big")

    def _request(
        self, world: World, a: Actor, vi: int, s: mc.Scrip, op: mc.Op, product: str, price: int, level: mc.Level
    ) -> bytes:
        secret = a.secrets.get(VENDOR_IDS[vi])
        rid = self._rid(a)
        mt, param = mc.make_request(s, rid=rid, level=level, secret=secret, price=price, product=product, op=op)
        msg = Message(_uid(a.n), _uid(VENDOR_PORT + vi), mt, param)
        self.prices[profile.sha256(param if mt == mc.REQUEST.code else self._inner(a, vi, param))] = price
        a.pending[rid] = Pending(vi, msg, s, level, secret, op, price)
        self._send(world, msg)
        return rid

    def _inner(self, a: Actor, vi: int, sealed: bytes) -> bytes:
        outer = mc.SEALED_SCHEMA.decode(sealed)
        secret = a.secrets[VENDOR_IDS[vi]]
        box = mc.box_key(secret, outer["rid"], outer["customer_id"])
        return box.open(0, outer["box"], outer["customer_id"] + outer["rid"])

    def _shop(self, world: World, a: Actor) -> None:
        vi = world.rng.randrange(len(self.vendors))
        product = world.rng.choice(sorted(PRODUCTS))
        price = PRODUCTS[product]
        now = a.clock.unix(world.now)
        fit = [s for s in a.wallet.values() if s.vendor == VENDOR_IDS[vi] and s.value >= price and s.expiry > now]
        if not fit:
            if any(p.vendor == vi for p in a.pending.values()):  # change is on its way: shop a bit later
                world.at(world.now + 0.2, functools.partial(self._shop, world, a), "shop")
                return
            self._buy(world, a, VENDOR_IDS[vi], 10)
            fit = [s for s in a.wallet.values() if s.vendor == VENDOR_IDS[vi] and s.value >= price]
        s = min(fit, key=lambda x: (x.value, x.scrip_id))
        del a.wallet[s.scrip_id + s.vendor]
        level = mc.Level.PRIVATE if world.rng.random() < 0.4 else mc.Level.THEFT
        self._request(world, a, vi, s, mc.Op.BUY, product, price, level)
        a.todo -= 1

    def _double_spend(self, world: World, a: Actor) -> None:
        """The cheater spends one scrip twice at the same time (two requests, maybe in one batch)."""
        if self.cheats_left <= 0:
            return
        self.cheats_left -= 1
        vi = world.rng.randrange(len(self.vendors))
        mine = [s for s in a.wallet.values() if s.vendor == VENDOR_IDS[vi] and s.value >= 1]
        if not mine:
            return
        s = mine[0]
        del a.wallet[s.scrip_id + s.vendor]
        for _ in range(2):
            self._request(world, a, vi, s, mc.Op.BUY, "a", 1, mc.Level.THEFT)
        world.at(world.now + world.rng.uniform(0.2, 1.0), functools.partial(self._double_spend, world, a), "cheat")
        later = world.now + (s.expiry + GRACE_S - a.clock.unix(world.now)) / SPEED + world.rng.uniform(0.0, 1.0)
        a.todo += 1
        world.at(later, functools.partial(self._respend, world, a, vi, s), "respend")

    def _respend(self, world: World, a: Actor, vi: int, s: mc.Scrip) -> None:
        """Spend spent scrip again after it expired (and the vendor may have pruned it)."""
        a.todo -= 1  # (a positive todo kept the actor's retry timer running)
        self._request(world, a, vi, s, mc.Op.BUY, "a", 1, mc.Level.THEFT)

    def _observe(self, world: World, msg: Message, vi: int) -> None:
        """The thief sees a request on the network and attacks with it."""
        thief = self.actors[-1]
        if msg.src.port == thief.n or world.rng.random() > 0.3 or msg.mtype != mc.REQUEST.code:
            return
        try:
            f = mc.REQUEST_SCHEMA.decode(msg.param)
        except DecodeError:  # garbled by the carrier: nothing to steal
            return
        raw = f["scrip"]
        attack = world.rng.randrange(5)
        tv = vi
        if attack == 0:  # spend it with the thief's own secret (level 2)
            scrip, level = raw, mc.Level.THEFT
        elif attack == 1:  # level 1: no MAC at all
            scrip, level = raw, mc.Level.VALIDATION
        elif attack == 2:  # rewrite the customer id to the thief's
            scrip, level = raw[:25] + thief.cid + raw[33:], mc.Level.THEFT
        elif attack == 3:  # raise the value
            scrip, level = raw[:9] + (10**6).to_bytes(8, "big") + raw[17:], mc.Level.THEFT
        else:  # replay verbatim (must not buy anything new)
            world.at(
                world.now + world.rng.uniform(0.0, 0.5),
                functools.partial(self._send, world, Message(_uid(thief.n), msg.dst, msg.mtype, msg.param)),
                "replay",
            )
            return
        if world.rng.random() < 0.3:
            tv = 1 - vi  # at the other vendor
        secret = thief.secrets.get(VENDOR_IDS[tv])
        rid = self._rid(thief)
        self.thief_rids.add(rid)
        mt, param = mc.make_request(scrip, rid=rid, level=level, secret=secret, price=f["price"], product=f["product"])
        self.thief_digests.add(profile.sha256(param))
        self._send(world, Message(_uid(thief.n), _uid(VENDOR_PORT + tv), mt, param))

    def _timer(self, world: World, a: Actor) -> None:
        for p in list(a.pending.values()):
            self._send(world, p.msg)  # the same bytes: a re-fetch if it was accepted
        now = a.clock.unix(world.now)
        for key, s in list(a.wallet.items()):
            if a.kind != "thief" and s.expiry - now <= RENEW_WITHIN_S and s.expiry > now and key not in a.renewed:
                del a.wallet[key]
                vi = VENDOR_IDS.index(s.vendor)
                self._request(world, a, vi, s, mc.Op.RENEW, "", 0, mc.Level.THEFT)
        if not world.healed or a.pending or a.todo:
            world.at(world.now + RETRY_S, functools.partial(self._timer, world, a), "timer")

    def _reply(self, world: World, a: Actor, msg: Message) -> None:
        if a.kind == "thief" or msg.mtype not in (mc.REPLY.code, mc.SEALED_REPLY.code):
            return  # (whether the thief's requests were accepted is read at the vendors: see _commit)
        try:
            rid = (mc.SEALED_SCHEMA if msg.mtype == mc.SEALED_REPLY.code else mc.REPLY_SCHEMA).decode(msg.param)["rid"]
        except DecodeError:
            world.log(f"customer {a.n} ignores a garbled reply")
            return
        p = a.pending.get(rid)
        if p is None:
            return  # a duplicate of a reply already applied
        try:
            out = mc.open_reply(msg.mtype, msg.param, rid=rid, level=p.level, secret=p.secret)
        except mc.MillicentError as exc:
            if self.carrier is None:
                self.bad.append(f"customer {a.n}: a reply from the vendor does not check: {exc}")
            else:
                world.log(f"customer {a.n} ignores a reply that does not check: {exc}")
            return  # the request stays pending and is sent again
        pruned = out.status == mc.Status.EXPIRED and p.scrip.expiry + GRACE_S <= a.clock.unix(world.now)
        if self.carrier is not None and not out.authentic and out.status != mc.Status.OK and not pruned:
            # Anyone on the wire can answer a level-2/3 request with an unMACed refusal: only a hint (the wallet
            # would say so). The request stays pending and is sent again: the vendor's own answer is authentic.
            # Except `expired` once the customer's own clock says the vendor has pruned the scrip (its expiry plus
            # the re-fetch grace have passed): the vendor refuses it then before the binding, unMACed, and it is
            # true whoever says it.
            world.log(f"customer {a.n} ignores an unauthenticated {out.status.name} for rid {rid.hex()}")
            return
        if out.status == mc.Status.OK:
            key = (p.vendor, p.scrip.scrip_id)
            self.accepted.setdefault(key, set()).add(rid)
            if out.change is not None:
                a.wallet[out.change.scrip_id + out.change.vendor] = out.change
                if p.op == mc.Op.RENEW:  # (a clock ahead of the vendor's would see it near expiry and renew for ever)
                    a.renewed.add(out.change.scrip_id + out.change.vendor)
                self.minted[out.change.vendor + out.change.scrip_id] = out.change.value
            self._check_durable(p.vendor, p.scrip, rid)
        elif out.status == mc.Status.SPENT:
            if a.kind == "honest":
                self.bad.append(f"honest customer {a.n}: own scrip {p.scrip.scrip_id.hex()} refused as spent")
        elif out.status == mc.Status.EXPIRED:
            world.exercised["expiry"] += 1
            if a.kind == "honest":
                a.wallet[p.scrip.scrip_id + p.scrip.vendor] = p.scrip  # outstanding, now worthless to spend
        else:
            self.bad.append(f"customer {a.n}: refused {out.status.name}: {out.detail}")
            a.wallet[p.scrip.scrip_id + p.scrip.vendor] = p.scrip
        del a.pending[rid]

    def _check_durable(self, vi: int, s: mc.Scrip, rid: bytes) -> None:
        key = s.expiry.to_bytes(4, "big") + s.scrip_id
        with self.vendors[vi].store.inner.transaction() as txn:
            if txn.get(mv.SPENT, key) is None and s.expiry > self.vendors[vi].core.pruned_through:
                self.bad.append(f"vendor {vi} accepted {s.scrip_id.hex()} (rid {rid.hex()}) without a durable record")

    # -- network and vendors ------------------------------------------------------------------
    def _vendor_index(self, uid: Uid) -> int | None:
        i = uid.port - VENDOR_PORT
        return i if uid.domain == BROKER.domain and 0 <= i < len(self.vendors) else None

    def _send(self, world: World, msg: Message, carried: bool = True) -> None:
        """Put ``msg`` on the network: the carrier (if any) may misbehave with it, then loss, duplication, delay."""
        if carried and self.carrier is not None and not world.healed:
            self.carrier.observe(msg, from_app=False)
            if world.rng.random() < world.plan.malicious_p:
                action = self.carrier.in_passing(msg, self.endpoints, [*self.endpoints, STRANGER])
                self._malicious(world, action)
                if action is not None and not action.keep:
                    return  # swallowed
        to_vendor = self._vendor_index(msg.dst) is not None
        vi = self._vendor_index(msg.dst if to_vendor else msg.src)
        plan = world.plan
        if to_vendor and self.actors and msg.src.port != self.actors[-1].n:
            assert vi is not None
            self._observe(world, msg, vi)
        copies = 1
        if not world.healed:
            if vi is not None and self.down.get((vi, to_vendor), -1.0) > world.now:
                world.faults["drop"] += 1
                return
            if plan.drop_p and world.rng.random() < plan.drop_p:
                world.faults["drop"] += 1
                return
            if plan.dup_p and world.rng.random() < plan.dup_p:
                world.faults["duplicate"] += 1
                copies = 2
        for _ in range(copies):
            delay = plan.latency_s
            if not world.healed and plan.delay_max_s:
                delay += world.rng.uniform(0.0, plan.delay_max_s)
                world.faults["delay"] += 1
            link = (msg.src.port, msg.dst.port, to_vendor)
            if world.now + delay < self.last_arrival.get(link, 0.0):
                world.faults["reorder"] += 1
            self.last_arrival[link] = max(world.now + delay, self.last_arrival.get(link, 0.0))
            world.at(world.now + delay, functools.partial(self._deliver, world, msg), "deliver")

    def _deliver(self, world: World, msg: Message) -> None:
        """The network hands ``msg`` to whoever has its destination address (no one: it is lost)."""
        vi = self._vendor_index(msg.dst)
        if vi is not None and msg.mtype == mc.REDEEMED.code:
            self._redeemed(world, self.vendors[vi], msg)
        elif vi is not None:
            self._arrive_vendor(world, vi, msg)
        elif msg.dst == BROKER:
            self._arrive_broker(world, msg)
        elif msg.dst.domain == BROKER.domain and 1 <= msg.dst.port <= len(self.actors):
            self._reply(world, self.actors[msg.dst.port - 1], msg)

    def _malicious(self, world: World, action: Action | None) -> None:
        """What the carrier made goes on the network (not carried again: it is the carrier's own)."""
        if action is None:
            return
        world.faults["malicious"] += 1
        m = action.msg
        if m.dst == BROKER and m.mtype == mc.PURCHASE.code and action.kind in ("replay", "tamper"):
            world.exercised["replay"] += 1  # a purchase it saw, verbatim or altered, at the broker
        world.log(f"malicious carrier {action.kind} 0x{m.mtype:04x} {m.src.port}->{m.dst.port} {m.param[:24].hex()}")
        self._send(world, m, carried=False)

    def _arrive_broker(self, world: World, msg: Message) -> None:
        """Only the carrier sends the broker messages over this network (customers' purchases are direct calls)."""
        before = self._owed()
        reply = self.broker.handle(msg, self.broker_clock.unix(world.now))
        if msg.mtype == mc.REDEEM.code:
            world.exercised["redemption"] += 1
            self._check_paid_once(world, before)
        for a in self.actors:  # replayed or made-up purchases never debit anyone twice or at all
            if self.broker.account(a.cid) != DEPOSIT - self.bought.get(a.n, 0):
                self.bad.append(
                    f"broker: customer {a.n}'s balance is {self.broker.account(a.cid)}, not "
                    f"{DEPOSIT} - {self.bought.get(a.n, 0)} bought"
                )
        if reply.mtype == mc.REDEEMED.code or (self._vendor_index(reply.dst) is None and reply.dst != BROKER):
            self._send(world, reply)  # (servers do not answer servers, but a vendor is told what its redeem paid)

    def _arrive_vendor(self, world: World, vi: int, msg: Message) -> None:
        v = self.vendors[vi]
        v.inbox.append(msg)
        if not v.scheduled:
            v.scheduled = True
            world.at(world.now + 0.002, functools.partial(self._commit, world, v), "commit")

    def _commit(self, world: World, v: VendorNode) -> None:
        v.scheduled = False
        batch, v.inbox = v.inbox, []
        if not batch:
            return
        now = v.clock.unix(world.now)
        with v.store.inner.transaction() as txn:
            had = {k for k, _ in txn.scan(mv.SPENT)}
        v.store.armed = True
        try:
            replies = v.core.process_batch([(m.mtype, m.param) for m in batch], now)
        except StoreError:
            v.store.armed = False
            world.log(f"vendor {v.index} torn: {len(batch)} requests lost")
            v.reopen()
            return
        v.store.armed = False
        with v.store.inner.transaction() as txn:
            for k, _ in txn.scan(mv.SPENT):
                if k not in had and mc.expiry_of_key(k) <= now:  # judged on the vendor's own clock
                    self.bad.append(
                        f"vendor {v.index} accepted scrip {k[4:].hex()} expired at {mc.expiry_of_key(k)} "
                        f"when its own clock said {now}"
                    )
                elif k not in had and mc.expiry_of_key(k) <= v.answered_at:  # its clock was set back since
                    self.bad.append(
                        f"vendor {v.index} accepted scrip {k[4:].hex()} expired at {mc.expiry_of_key(k)}, after "
                        f"answering at {v.answered_at} (its clock went back to {now})"
                    )
        v.answered_at = max(v.answered_at, now)
        if not v.redeem_due and v.core.redeemable():  # (a request accepted after its redeem rounds had stopped)
            self._redeem_later(world, v, world.now + REDEEM_S)
        for m, (mt, p) in zip(batch, replies, strict=True):
            if self._thief_accepted(m, mt, p):
                self.bad.append(f"vendor {v.index} accepted a request of the thief: stolen scrip bought something")
            if self._vendor_index(m.src) is None and m.src != BROKER:  # servers do not answer servers
                self._send(world, m.reply(mt, p))

    def _thief_accepted(self, m: Message, mt: int, p: bytes) -> bool:
        """Read at the vendor, so that no forged reply to the thief can fake it and no lost reply can hide it."""
        if m.mtype != mc.REQUEST.code or profile.sha256(m.param) not in self.thief_digests:
            return False
        return mt == mc.REPLY.code and mc.REPLY_SCHEMA.decode(p)["status"] == mc.Status.OK

    def _prune(self, world: World, v: VendorNode) -> None:
        now = v.clock.unix(world.now)
        with v.store.inner.transaction() as txn:
            before = {k: row for k, row in txn.scan(mv.SPENT, b"", mv.PRUNE_PAGE) if mc.expiry_of_key(k) <= now}
        v.store.armed = True
        try:
            v.core.prune(now)
        except StoreError:
            v.store.armed = False
            world.log(f"vendor {v.index} torn while pruning")
            v.reopen()
        v.store.armed = False
        with v.store.inner.transaction() as txn:
            for k, row in before.items():
                if txn.get(mv.SPENT, k) is None:
                    self.pruned[(v.index, k)] = self.prices.get(mv.parse_spent(row)[0], -(10**9))
        world.at(world.now + PRUNE_S, functools.partial(self._prune, world, v), "prune")

    # -- redemption and settlement -----------------------------------------------------------------
    def _redeem(self, world: World, v: VendorNode) -> None:
        """The vendor asks the broker to pay for the licence scrip it received (again, if no answer came)."""
        v.redeem_due = False
        rows = v.core.redeemable()
        index = next(iter(v.core.redeem_keys), None)
        if rows and index is not None:
            param, seqs = v.core.redeem_request(rows, index)
            if seqs:
                v.redeeming = (mc.REDEEM_SCHEMA.decode(param)["batch"], seqs, index)
                ids = self.redeemable.setdefault(v.index, set())
                ids.update(item[:8] for _, item in rows if item[0] == index)
                msg = Message(_uid(VENDOR_PORT + v.index), BROKER, mc.REDEEM.code, param)
                if self.carrier is not None and not world.healed and world.rng.random() < FAKE_BROKER_P:
                    self._fake_broker(world, msg)
                else:
                    self._send(world, msg)
        shopping = any(a.pending or a.todo > 0 for a in self.actors if a.kind != "thief")
        if not world.healed or shopping or v.core.redeemable() or v.redeeming:
            self._redeem_later(world, v, world.now + REDEEM_S)

    def _redeem_later(self, world: World, v: VendorNode, t: float) -> None:
        v.redeem_due = True
        world.at(t, functools.partial(self._redeem, world, v), "redeem")

    def _fake_broker(self, world: World, msg: Message) -> None:
        """The carrier swallows a vendor's redemption and answers it itself: "paid" (without the redeem key)."""
        f = mc.REDEEM_SCHEMA.decode(msg.param)
        g = {"batch": f["batch"], "status": mb.OK, "paid": 9 * len(f["items"]), "duplicates": 0}
        g["mac"] = world.rng.randbytes(mc.MAC_BYTES)
        world.exercised["forged_settlement"] += 1
        world.log(f"fake broker: the carrier swallows vendor {msg.src.port - VENDOR_PORT}'s redemption, answers paid")
        self._send(world, msg.reply(mc.REDEEMED.code, mc.REDEEMED_SCHEMA.encode(g)), carried=False)

    def _redeemed(self, world: World, v: VendorNode, msg: Message) -> None:
        """The broker's answer: the vendor forgets the rows of the batch it paid (a settlement)."""
        if v.redeeming is None:
            return
        try:
            f = v.core.open_redeemed(msg.mtype, msg.param, v.redeeming[0], v.redeeming[2])
        except mc.MillicentError as exc:
            world.log(f"vendor {v.index} ignores a redeem answer that does not check: {exc}")
            return
        if f["status"] != mb.OK:
            return
        v.core.forget_redeemed(v.redeeming[1])
        v.redeeming = None
        world.exercised["settlement"] += 1

    def _owed(self) -> dict[bytes, int]:
        return {bytes.fromhex(k): n for k, n in self.broker.vendors().items()}

    def _due(self, vi: int) -> int:
        """What the broker may owe vendor ``vi`` at most: each scrip id it asked paying for, once, less discount."""
        vid = VENDOR_IDS[vi]
        return sum(self.minted.get(vid + sid, 0) * 90 // 100 for sid in self.redeemable.get(vi, ()))

    def _check_paid_once(self, world: World, before: dict[bytes, int]) -> None:
        owed = self._owed()
        for vi, vid in enumerate(VENDOR_IDS):
            if owed.get(vid, 0) > self._due(vi):
                self.bad.append(
                    f"broker: vendor {vi} is owed {owed.get(vid, 0)}, more than the {self._due(vi)} its "
                    f"{len(self.redeemable.get(vi, ()))} scrip redeemed are worth (paid twice)"
                )
        for vid in set(owed) - set(VENDOR_IDS):
            self.bad.append(f"broker: a stranger {vid.hex()} is owed {owed[vid]}")

    def _crashes(self, world: World) -> None:
        """Per tick: vendor crashes, and partitions between a vendor and its customers (one way or both)."""
        if not world.healed:
            if world.plan.partition_p and world.rng.random() < world.plan.partition_p:
                vi = world.rng.randrange(len(self.vendors))
                until = world.now + world.plan.partition_len_s
                ways = [True, False] if world.rng.random() < 0.5 else [world.rng.random() < 0.5]
                for towards in ways:
                    self.down[(vi, towards)] = until
                world.faults["partition"] += 1
                world.log(f"partition vendor {vi} {ways} until {until:.3f}")
            if world.plan.crash_p and world.rng.random() < world.plan.crash_p:
                v = world.rng.choice(self.vendors)
                world.faults["crash"] += 1
                world.log(f"crash vendor {v.index}")
                v.reopen()
            if self.carrier is not None and world.rng.random() < world.plan.malicious_p:
                self._malicious(
                    world, self.carrier.injection(self.endpoints, [*self.endpoints, STRANGER], self.handles)
                )
            world.at(world.now + 0.01, functools.partial(self._crashes, world), "crashes")

    # -- invariants ------------------------------------------------------------------------------
    def check(self, world: World, final: bool) -> list[str]:
        bad = list(self.bad)
        for (vi, sid), rids in self.accepted.items():
            if len(rids) > 1:
                bad.append(f"vendor {vi} accepted scrip {sid.hex()} {len(rids)} times")
        if final and not bad and self.quiescent(world):
            bad.extend(self._conservation())
            owed = self._owed()  # (the broker's answers are MACed: no carrier makes a vendor forget unpaid rows)
            for vi, vid in enumerate(VENDOR_IDS):
                if owed.get(vid, 0) != self._due(vi):
                    bad.append(f"settlement: vendor {vi} is owed {owed.get(vid, 0)}, not {self._due(vi)}")
        return bad

    def _conservation(self) -> list[str]:
        """Issued = paid + outstanding, from the vendors' durable spent lists (and what pruning removed)."""
        bad = []
        spent: dict[bytes, int] = {}  # vendor + scrip id -> price paid
        for (vi, key), price in self.pruned.items():
            spent[VENDOR_IDS[vi] + key[4:]] = price
        for v in self.vendors:
            with v.store.inner.transaction() as txn:
                rows = txn.scan(mv.SPENT)
            for key, row in rows:
                digest = mv.parse_spent(row)[0]
                if digest not in self.prices:
                    bad.append(f"vendor {v.index} accepted a request no owner made")
                spent[VENDOR_IDS[v.index] + key[4:]] = self.prices.get(digest, 0)
        for k in spent:
            if k not in self.minted:
                bad.append(f"scrip {k.hex()} was accepted but never issued")
        for a in self.actors:
            if self.broker.account(a.cid) != DEPOSIT - self.bought.get(a.n, 0):
                bad.append(
                    f"broker: customer {a.n} was debited {DEPOSIT - (self.broker.account(a.cid) or 0)}, "
                    f"bought {self.bought.get(a.n, 0)}"
                )
        paid = sum(spent.values())
        outstanding = sum(v for k, v in self.minted.items() if k not in spent)
        if self.issued != paid + outstanding:
            bad.append(f"value not conserved: issued {self.issued} != paid {paid} + outstanding {outstanding}")
        return bad

    def quiescent(self, world: World) -> bool:
        if any(v.redeeming or v.core.redeemable() for v in self.vendors):
            return False
        return all(not a.pending and a.todo <= 0 for a in self.actors if a.kind != "thief")


def _drifting(rng: Any) -> Clock:
    """A clock of its own: up to 3 % fast or slow, up to 2 seconds off."""
    return Clock(rng.uniform(0.97, 1.03), rng.uniform(-2.0, 2.0))


register("millicent", MillicentScenario)
register("millicent-broken", lambda: MillicentScenario(name="millicent-broken", broken=True))
register(
    "millicent-expiry-broken",
    lambda: MillicentScenario(name="millicent-expiry-broken", vendor_cls=StaleClockVendorCore),
)
register(
    "millicent-clockback-broken",
    lambda: MillicentScenario(name="millicent-clockback-broken", vendor_cls=ClockBackVendorCore),
)
register(
    "millicent-settle-broken",
    lambda: MillicentScenario(name="millicent-settle-broken", vendor_cls=BelievesAnyAnswerVendorCore),
)
register(
    "millicent-redeem-broken",
    lambda: MillicentScenario(name="millicent-redeem-broken", broker_cls=PaysTwiceBrokerCore),
)
