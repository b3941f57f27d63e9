"""The ``speed`` simulation: SPEED purchases by real cards from the real vendor, paid through the real broker.

Theory of operation
-------------------
The real :class:`~cardnet.services.speed.vendor.VendorCore` and
:class:`~cardnet.services.speed.broker.BrokerCore` run on the world's virtual
clock, each on a :class:`~cardnet.sim.world.TearingStore`; the broker's SAM and
three customers' cards (purse + conductor applets) are real cards on tearing
stores too. The network between the customers' wallets and the two services is
simulated here from the world's fault plan, as in ``millicent``: loss,
duplication, delay that reorders, partitions of one customer from one service
(one way or both). Services crash (down a while, then rebuilt from their
stores); a tear of a service's store or of the SAM's is a power loss of that
process (rebuilt at once).

Customers' cards are stepped directly, through
:class:`~cardnet.host.local.LocalCard` (a PIN-verified port), not through the
world's :class:`~cardnet.host.Host`: SPEED's wallet is one program holding its
card in a reader and asking it one order at a time (``Customer`` over
``LocalCard`` or a wallet socket), the broker's SAM can only be a ``LocalCard``
(``BrokerCore`` asks it synchronously), and the world's hosts would add a
host-to-host network that carries nothing here. A crash of a customer's host
is then modelled whole: the wallet program loses every purchase in flight, the
card loses power (reopened from its store), and after a while the program
restarts, finishes every purchase of its journal (durable: written before the
card is asked to pay, as ``Customer.buy`` does) and the person starts again the
purchases that were not journaled.

The wallet (:class:`Wallet`) is the customer's side of ``Customer.buy`` and
``Customer.recover`` as a state machine per purchase, driven by frames and a
timer: NegotiationRequest signed by the card, steps under the customer's
:class:`~cardnet.protocols.speed.negotiation.LimitStrategy` (accept, counter,
or no deal), Handshake, the ciphered delivery checked whole against the bill,
then the journal, the card's PaymentOrder, S2/S3 or account payment, and the
receipt, whose K must decipher the product. Before payment a purchase that
stalls or is refused is abandoned (nothing was paid) and begun again with a
new NID; from the journal on, the wallet resends until an authentic answer
comes (a refusal is unauthenticated: a hint only) and never gives up while
the card may have paid.

Attacks: in seeds whose plan has ``malicious_p > 0`` the network is a
malicious carrier (:class:`~cardnet.sim.malice.Malice`: tamper, forge sender,
reflect, redirect, replay, inject) on every link, and some customers' hosts are
malicious: besides carrying their owner's purchases they replay old ``speed.pay``
orders (old bills) and ``purse.debit`` orders to the card, present tampered
bills, ask the card to pay a paid bill again with other payment fields, and
replay old payment orders and S3 messages to the broker. Like every simulated
malicious host they do not make up orders their owner would give (a Handshake,
or a payment with fields of their own choosing for a bill the owner has not
paid yet): the card cannot tell those from its owner's. In some seeds the
vendor cheats, billing more than the price agreed during the faulty phase.

Invariants, after every event that touched a card, the SAM or the broker:
value adds up (each purse: balance + debited = loaded, its debits are its kept
proofs, one per PaymentOrderID; every debit the SAM logged is a debit of that
purse; every purse order the broker paid is a debit the SAM logged, of its
price; the vendor's account holds the price of every paid order; each
customer's account lost exactly its loads and its account payments); no card
pays more than it agreed, and no card signs two payment orders for one
PaymentOrderID or one for a tampered bill. At quiescence: every debited purse
order is paid at the broker and receipted in the journal (or re-sent from the
broker's register), its K deciphers the product, and nothing dropped from the
journal was debited or paid; the SAM's log, the purses and the broker agree
order by order; every purchase ended (bought, or no agreement on a price).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from cardnet.applets.speed import conductor as co
from cardnet.applets.speed import purse as pa
from cardnet.applets.speed import sam as sa
from cardnet.card import Card, StepContext
from cardnet.card.personalise import personalise
from cardnet.crypto import cms, pki, profile
from cardnet.crypto.errors import CryptoError, PkiError
from cardnet.host.errors import HostError
from cardnet.host.local import LocalCard
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.speed import catalogue as cat
from cardnet.protocols.speed import frames as fr
from cardnet.protocols.speed import messages as sm
from cardnet.protocols.speed import purse as pp
from cardnet.protocols.speed.negotiation import Agreed, CustomerNegotiation, Ended, LimitStrategy, Sent
from cardnet.services.speed import broker as sb
from cardnet.services.speed import broker_accounts as sb_accounts
from cardnet.services.speed import broker_records as sb_records
from cardnet.services.speed import vendor as sv
from cardnet.services.speed.customer import PurchaseError, check_delivery
from cardnet.sim.malice import Action, Malice
from cardnet.sim.scenarios import register
from cardnet.sim.world import SIM_EPOCH, TearingStore, World
from cardnet.store import StoreError
from cardnet.wire import DecodeError, Message, MType, Uid, lookup

T0 = SIM_EPOCH.timestamp()  # Unix seconds at virtual time 0, every party's clock
_T = TypeVar("_T")

PIN = "0000"
EUR = "EUR"
PRODUCTS = {  # id -> (list price, floor) in cents; contents are drawn per seed (tens of bytes: one chunk each)
    "song-1 Blue in Green": (250, 200),
    "news-1 Today's paper": (80, 80),
    "ppv-1 Match key": (499, 400),
    "map-1 City map": (120, 90),
}
CUSTOMERS = 3
INTENTS = (2, 4)  # purchases each customer makes
SHOP_UNTIL_S = 1.6  # customers start their purchases in the faulty phase
DEPOSIT = 20_000  # each customer's account at the broker
LOAD = 8_000  # loaded into each purse from that account at the start
TICK_S = 0.01
TIMER_S = 0.05  # the wallet's timer
STALL_S = 0.5  # a purchase not yet journaled that makes no progress this long is abandoned
PAY_RETRY_S = 0.25  # a journaled purchase resends its last message this often
DOWN_S = (0.02, 0.3)  # how long a crashed party stays down
MAX_ATTEMPTS = 200  # attempts of one purchase (a bound on every loop); never reached unless something is wrong
MAX_SEEN = 64  # what a malicious host remembers, per kind
MAX_MATERIAL_BYTES = 128  # the carrier remembers byte strings up to this long (see _Carrier)
CHEAT_P = 0.3  # seeds in which the vendor overcharges now and then during the faulty phase
OVERCHARGE_P = 0.25
VENDOR = Uid(b"\x00" * 11 + b"\x01", 0)
BROKER = Uid(b"\x00" * 11 + b"\x02", 0)
STRANGER = Uid(bytes(range(12)), 7)
VENDOR_ACCOUNT = "V-1"
SAM_TABLE = "a.sam"  # the SAM applet's records
MAX_CHUNKS = 64  # chunks a delivery of this catalogue can have (a header asking more is forged)
DUPLICATE = frozenset({"nid_used", "handshake_seen"})  # a refusal of a duplicate of what the vendor took
TO_VENDOR = (fr.CATALOGUE, fr.REQUEST, fr.STEP, fr.HANDSHAKE)
TO_BROKER = (fr.ORDER, fr.PURSE, fr.RESEND, fr.ISSUE_KEY, fr.LOAD, fr.LOAD_STEP, fr.RECEIPT_FOR_VENDOR, fr.COMPLAINT)
TO_CUSTOMER = (fr.STEP, fr.ENDED, fr.DELIVERY, fr.CHUNK, fr.BILL, fr.REFUSED, fr.PURSE, fr.RECEIPT)
HOST_MOVES = ("replay_pay", "pay_twice", "tamper_bill", "replay_debit", "replay_order")
_ROGUE: dict[str, tuple[profile.PrivateKey, bytes]] = {}


# -- broken on purpose, and a cheating vendor ---------------------------------------------------------------------


class NoS3CheckBrokerCore(sb.BrokerCore):
    """Broken on purpose (``speed-broken``): on the S3 message it credits the vendor and answers the receipt
    without having the SAM check (and log) the proof of debit."""

    def _s3(self, msg: Message, poid: bytes, sealed: bytes) -> Message:
        o = self._get_order(poid)
        if o is None or o["kind"] != "purse":
            return super()._s3(msg, poid, sealed)
        if o["state"] != "paid":
            with self.store.transaction() as txn:
                self._paid(txn, poid, o)
        return super()._s3(msg, poid, sealed)


class PriceBlindConductorApplet(co.ConductorApplet):
    """Broken on purpose (``speed-conductor-broken``): pays a genuine bill for an agreed PaymentOrderID at
    whatever price the bill says (it takes the bill's price as the one agreed)."""

    def _pay(self, ctx: StepContext, p: dict[str, Any]) -> None:
        try:
            bill = sm.decode(sm.BILL, sm.signed(p["bill"], "bill").content, "bill")
        except (ProtocolError, DecodeError, CryptoError):
            bill = None
        raw = None if bill is None else ctx.get(b"g:" + bill["poid"], table=co.TABLE)
        if bill is not None and raw is not None:
            rec = dict(co._AGREEMENT.decode(raw))
            if "price" in rec:
                rec["price"] = bill["price"]
                ctx.put(b"g:" + bill["poid"], co._AGREEMENT.encode(rec), table=co.TABLE)
        super()._pay(ctx, p)


class CheatingVendorCore(sv.VendorCore):
    """A vendor that bills one cent more than the price agreed when ``overcharge()`` says so (paper 5.6: the
    customer's card must refuse such a bill before paying)."""

    def __init__(self, store: TearingStore, *, rng: Callable[[int], bytes], clock: Callable[[], float],
                 overcharge: Callable[[], bool]) -> None:  # fmt: skip
        super().__init__(store, rng=rng, clock=clock)
        self.overcharge = overcharge

    def _deliver(self, msg: Message, nid: bytes, products: list[str], price: sm.Price,
                 seal: Callable[[bytes], bytes], mode: str) -> Iterator[Message]:  # fmt: skip
        if self.overcharge():
            price = sm.Price(price.currency, price.amount + 1)
        yield from super()._deliver(msg, nid, products, price, seal, mode)


class _Carrier(Malice):
    """The malicious carrier. It remembers byte strings of at most :data:`MAX_MATERIAL_BYTES`: longer ones are
    sealed bills and payment orders whose length varies by a byte from run to run (HPKE draws its own ephemeral
    keys, and the vendor's ECDSA signature over a bill that holds one is DER of varying length), and the
    carrier's draws depend on the lengths it remembers: a seed must replay exactly."""

    def observe(self, msg: Message, from_app: bool) -> None:
        super().observe(msg, from_app)
        for n in [n for n in self.material if n > MAX_MATERIAL_BYTES]:
            del self.material[n]


class _CardDown(Exception):
    """The card lost power during the order (a tear): it was reopened; ask again."""


# -- the parties ----------------------------------------------------------------------------------------------------


@dataclass
class Intent:
    """One purchase a customer wants to make: what, in which mode, paid how, up to what price."""

    n: int
    products: list[str]
    mode: str  # normal | aggressive
    payment: str  # purse | account
    limit: sm.Price
    opening: sm.Price | None
    start_s: float
    state: str = "waiting"  # waiting | buying | paying | done | no_deal | gave_up
    attempts: int = 0


@dataclass
class Record:
    """A journal entry: a purchase agreed and delivered, written before the card is asked to pay (durable)."""

    intent: int
    nid: bytes
    poid: bytes
    bill: bytes  # the vendor's signed bill
    rec_key: bytes
    price: sm.Price
    products: list[str]
    chunks: list[list[bytes]]
    payment: str
    benc: bytes
    bsign: bytes
    receipt: bytes | None = None
    dropped: str | None = None


@dataclass
class Attempt:
    """A purchase before its journal entry (volatile: lost with the wallet program)."""

    intent: Intent
    port: int
    nid: bytes
    neg: CustomerNegotiation | None  # None in aggressive mode
    phase: str  # negotiate | deliver
    deadline: float
    sizes: list[int] | None = None
    chunk: int = 0
    chunks: dict[tuple[int, int], bytes] = field(default_factory=dict)
    sealed_bill: bytes | None = None
    steps: list[bytes] = field(default_factory=list)  # the vendor's steps taken


@dataclass
class Payment:
    """Paying one journal entry (volatile; the journal is what survives)."""

    rec: Record
    port: int
    phase: str  # pay | order | s3 | resend
    frame: Message | None  # what the timer sends again
    due: float
    order: Message | None = None  # the payment order, sealed to the broker


@dataclass
class CustomerNode:
    """A customer's host: the wallet program, its journal and the card in its reader."""

    index: int
    domain: bytes  # the wallet's network address (ports: one per purchase attempt or payment)
    store: TearingStore
    card_rng: random.Random
    card: Card
    applets: Callable[[], list[Any]]
    clock: Callable[[], float]
    port: LocalCard | None
    account: str
    intents: list[Intent] = field(default_factory=list)
    journal: dict[bytes, Record] = field(default_factory=dict)  # nid -> entry: durable
    attempts: dict[int, Attempt] = field(default_factory=dict)
    payments: dict[int, Payment] = field(default_factory=dict)
    next_port: int = 1
    up: bool = True
    malicious: bool = False
    seen_pays: list[dict[str, Any]] = field(default_factory=list)  # the speed.pay orders its host carried
    seen_debits: list[bytes] = field(default_factory=list)  # the S2s of purse.debit orders
    seen_frames: list[Message] = field(default_factory=list)  # payment orders and S3 messages to the broker
    first_po: dict[bytes, bytes] = field(default_factory=dict)  # poid -> the PaymentOrder the card signed first
    agreed: dict[bytes, sm.Price] = field(default_factory=dict)  # poid -> the price the card agreed

    def reopen_card(self) -> None:
        """Power back: the card is opened again from its store; the wallet takes a port and verifies the PIN."""
        self.store.torn = False
        self.card = Card(self.store, rng=self.card_rng.randbytes, applets=self.applets(), capacity_bytes=1 << 20)
        self.port = LocalCard(self.card, PIN, clock=self.clock)

    def ask(self, mtype: MType, reply: MType, /, **fields: Any) -> dict[str, Any]:
        """One order to the card: its answer, :class:`HostError` with its refusal, or :class:`_CardDown`."""
        if self.port is None:
            raise _CardDown("the card is not in its reader")
        self.store.armed = True
        try:
            return self.port.ask(mtype, reply, **fields)
        except StoreError:
            self.store.armed = False
            self.reopen_card()
            raise _CardDown("the card lost power") from None
        finally:
            self.store.armed = False


@dataclass
class VendorNode:
    store: TearingStore
    rng: random.Random
    make: Callable[[], sv.VendorCore]
    core: sv.VendorCore
    up: bool = True


@dataclass
class BrokerNode:
    store: TearingStore
    sam_store: TearingStore
    sam_rng: random.Random
    make: Callable[[LocalCard], sb.BrokerCore]
    clock: Callable[[], float]
    core: sb.BrokerCore
    up: bool = True

    def reopen(self) -> None:
        """The broker process (and so its SAM's reader) restarts: both rebuilt from their stores."""
        self.store.torn = self.sam_store.torn = False
        sam = Card(self.sam_store, rng=self.sam_rng.randbytes, applets=[sa.SamApplet()], capacity_bytes=1 << 22)
        self.core = self.make(LocalCard(sam, PIN, clock=self.clock))


def _rogue() -> tuple[profile.PrivateKey, bytes]:
    """A key and a certificate from a CA no party trusts (what a malicious host signs tampered bills with)."""
    if not _ROGUE:
        rng = random.Random(0xBAD)
        ca = pki.CertificateAuthority.create("rogue CA", now=SIM_EPOCH, rng=rng.randbytes)
        key = profile.generate_private_key(rng.randbytes)
        cert = ca.issue(pki.Role.SERVICE, VENDOR, key.public_key(), now=SIM_EPOCH, rng=rng.randbytes)
        _ROGUE["v"] = (key, pki.cert_to_der(cert))
    return _ROGUE["v"]


def _name(msg: Message) -> str:
    try:
        return lookup(msg.mtype).name
    except DecodeError:
        return f"0x{msg.mtype:04x}"


# -- the scenario ---------------------------------------------------------------------------------------------------


@dataclass
class SpeedScenario:
    name: str = "speed"
    broker_cls: type[sb.BrokerCore] = sb.BrokerCore
    conductor_cls: type[co.ConductorApplet] = co.ConductorApplet
    customers: list[CustomerNode] = field(default_factory=list)
    vendor: VendorNode = field(init=False)
    broker: BrokerNode = field(init=False)
    carrier: _Carrier | None = None
    contents: dict[str, bytes] = field(default_factory=dict)
    vendor_cert: bytes = b""
    broker_cert: bytes = b""
    roots: list[bytes] = field(default_factory=list)
    cheat: bool = False
    bad: list[str] = field(default_factory=list)
    changed: bool = True  # a card, the SAM or the broker changed since the last check
    down: dict[tuple[int, Uid, bool], float] = field(default_factory=dict)  # (customer, service, towards) -> until
    last_arrival: dict[tuple[Uid, Uid], float] = field(default_factory=dict)
    memo: dict[tuple[str, bytes], Any] = field(default_factory=dict)  # decoded records, by their bytes
    reads: dict[Any, tuple[tuple[Any, ...], Any]] = field(default_factory=dict)  # what _read read, and from what

    # -- building ---------------------------------------------------------------------------------------------------
    def build(self, world: World) -> None:
        rng = world.rng

        def clock() -> float:
            return T0 + world.now

        self.roots = [pki.cert_to_der(world.ca.certificate)]
        vkey, bkey = profile.generate_private_key(rng.randbytes), profile.generate_private_key(rng.randbytes)
        self.vendor_cert = pki.cert_to_der(
            world.ca.issue(pki.Role.SERVICE, VENDOR, vkey.public_key(), now=SIM_EPOCH, name="vendor", rng=rng.randbytes)
        )
        self.broker_cert = pki.cert_to_der(
            world.ca.issue(pki.Role.SERVICE, BROKER, bkey.public_key(), now=SIM_EPOCH, name="broker", rng=rng.randbytes)
        )
        bstore, sam_store = TearingStore(world, "broker"), TearingStore(world, "sam")
        sb_accounts.init_broker(bstore, bkey, self.broker_cert, self.roots)
        sb_accounts.add_vendor(bstore, VENDOR_ACCOUNT, self.vendor_cert)
        sam_rng = random.Random(rng.getrandbits(64))
        sam = Card(sam_store, rng=sam_rng.randbytes, applets=[sa.SamApplet()], capacity_bytes=1 << 22)
        personalise(sam, world.ca, pin=PIN, now=SIM_EPOCH, domain=sam_rng.randbytes(12), rng=sam_rng.randbytes,
                    role=pki.Role.SERVICE, name="sam")  # fmt: skip
        brng = random.Random(rng.getrandbits(64))
        cls = self.broker_cls

        def make_broker(sam_port: LocalCard) -> sb.BrokerCore:
            return cls(bstore, sam_port, clock=clock, rng=brng.randbytes)

        self.broker = BrokerNode(
            bstore, sam_store, sam_rng, make_broker, clock, make_broker(LocalCard(sam, PIN, clock=clock))
        )
        vstore = TearingStore(world, "vendor")
        sv.init_vendor(vstore, vkey, self.vendor_cert, self.roots, account=VENDOR_ACCOUNT, broker_cert=self.broker_cert)
        for product, (price, floor) in PRODUCTS.items():
            self.contents[product] = rng.randbytes(rng.randint(16, 64))
            sv.add_product(vstore, product, sm.Price(EUR, price), self.contents[product], floor=sm.Price(EUR, floor))
        vrng = random.Random(rng.getrandbits(64))
        self.cheat = rng.random() < CHEAT_P

        def overcharge() -> bool:
            return self.cheat and not world.healed and world.rng.random() < OVERCHARGE_P

        def make_vendor() -> sv.VendorCore:
            return CheatingVendorCore(vstore, rng=vrng.randbytes, clock=clock, overcharge=overcharge)

        self.vendor = VendorNode(vstore, vrng, make_vendor, make_vendor())
        self._read_catalogue(world)
        conductor = self.conductor_cls
        for i in range(CUSTOMERS):
            self.customers.append(self._customer(world, i, clock, conductor))
        if self.cheat:
            world.log("the vendor overcharges now and then until the heal")
        if world.plan.malicious_p > 0:
            self.carrier = _Carrier(world.rng)
            chosen = sorted(rng.sample(range(CUSTOMERS), rng.randint(1, CUSTOMERS)))
            for i in chosen:
                self.customers[i].malicious = True
            world.log(f"malicious carrier on every link; malicious customer hosts: {chosen}")
        world.at(TICK_S, functools.partial(self._tick, world), "tick")
        for node in self.customers:
            world.at(TIMER_S, functools.partial(self._timer, world, node), "timer")

    def _read_catalogue(self, world: World) -> None:
        """The wallet's catalogue (what aggressive mode pays): the vendor's signed entries, read calmly."""
        items = fr.ITEMS.parse(self.vendor.core.frames(fr.CATALOGUE.make(STRANGER, VENDOR))[0])
        pki.verified(items["cert"], self.roots, now=T0, role=pki.Role.SERVICE)
        for e in items["entries"]:
            entry = cat.read(e, items["cert"])
            if entry["content_hash"] != sm.content_hash(self.contents[entry["product"]]):
                self.bad.append(f"the catalogue entry of {entry['product']} names other content")

    def _customer(
        self, world: World, i: int, clock: Callable[[], float], conductor: type[co.ConductorApplet]
    ) -> CustomerNode:
        rng = world.rng
        card_rng = random.Random(rng.getrandbits(64))
        store = TearingStore(world, f"card{i}")

        def applets() -> list[Any]:
            return [pa.PurseApplet(), conductor()]

        card = Card(store, rng=card_rng.randbytes, applets=applets(), capacity_bytes=1 << 20)
        uid = personalise(card, world.ca, pin=PIN, now=SIM_EPOCH, domain=card_rng.randbytes(12),
                          rng=card_rng.randbytes, name=f"customer {i}")  # fmt: skip
        node = CustomerNode(i, b"\x00" * 10 + bytes([0x10, i]), store, card_rng, card, applets, clock,
                            LocalCard(card, PIN, clock=clock), f"C-{i}")  # fmt: skip
        sb_accounts.add_customer(self.broker.store, node.account, uid, sm.Price(EUR, DEPOSIT))
        self._load(node)
        for n in range(rng.randint(*INTENTS)):
            node.intents.append(self._intent(rng, n))
        return node

    def _load(self, node: CustomerNode) -> None:
        """The purse gets its key from the SAM and is loaded from the customer's account (calm, at the start)."""
        me = Uid(node.domain, 0)

        def broker(mt: MType, reply: MType, **fields: Any) -> dict[str, Any]:
            return dict(reply.parse(self.broker.core.handle(mt.make(me, BROKER, **fields))))

        card = node.port
        assert card is not None
        key = broker(fr.ISSUE_KEY, fr.KEY, card_cert=node.card.certificate_der)
        card.ask(pa.INSTALL_KEY, pa.INSTALLED, sealed=key["sealed"])
        l1 = card.ask(pa.LOAD_BEGIN, pa.L1_IS, currency=EUR, amount=LOAD)["l1"]
        l2 = broker(fr.LOAD, fr.LOAD_STEP, l1=l1, account=node.account)["l"]
        l3 = card.ask(pa.LOAD, pa.L3_IS, l2=l2)["l3"]
        broker(fr.LOAD_STEP, fr.LOADED, l=l3)

    def _intent(self, rng: random.Random, n: int) -> Intent:
        products = rng.sample(sorted(PRODUCTS), rng.randint(1, 3))
        total = sum(PRODUCTS[p][0] for p in products)
        floor = sum(PRODUCTS[p][1] for p in products)
        mode = "normal" if rng.random() < 0.6 else "aggressive"
        payment = "purse" if rng.random() < 0.7 else "account"
        limit, opening = total, None
        if mode == "normal":
            r = rng.random()
            if r < 0.2:  # a counter-offer between the floor and the list price: agreed at the limit
                limit = rng.randint(floor, total)
            elif r < 0.35:  # below the floor: no agreement
                limit = max(1, floor - rng.randint(1, 50))
            elif r < 0.5:  # an opening proposal
                opening = sm.Price(EUR, rng.randint(max(1, floor - 30), total))
        return Intent(n, products, mode, payment, sm.Price(EUR, limit), opening, rng.uniform(0.0, SHOP_UNTIL_S))

    # -- the network ----------------------------------------------------------------------------------------------
    def _node_of(self, uid: Uid) -> CustomerNode | None:
        d = uid.domain
        if d[:10] == bytes(10) and d[10] == 0x10 and d[11] < len(self.customers):
            return self.customers[d[11]]
        return None

    def _label(self, uid: Uid) -> str:
        if uid == VENDOR:
            return "V"
        if uid == BROKER:
            return "B"
        node = self._node_of(uid)
        return f"c{node.index}:{uid.port}" if node is not None else "?"

    def _send(self, world: World, msg: Message, carried: bool = True) -> None:
        """Put ``msg`` on the network: the carrier (if any) may misbehave with it, then loss, duplication, delay."""
        if carried and self.carrier is not None and not world.healed:
            self.carrier.observe(msg, from_app=False)
            if world.rng.random() < world.plan.malicious_p:
                action = self.carrier.in_passing(msg, self._endpoints(), [*self._endpoints(), STRANGER])
                self._malicious(world, action)
                if action is not None and not action.keep:
                    return  # swallowed
        plan = world.plan
        copies = 1
        if not world.healed:
            link = self._link(msg)
            if link is not None and self.down.get(link, -1.0) > world.now:
                world.faults["drop"] += 1
                return
            if plan.drop_p and world.rng.random() < plan.drop_p:
                world.faults["drop"] += 1
                if world.trace is not None:
                    world.log(f"drop {_name(msg)} {self._label(msg.src)}->{self._label(msg.dst)}")
                return
            if plan.dup_p and world.rng.random() < plan.dup_p:
                world.faults["duplicate"] += 1
                copies = 2
        for _ in range(copies):
            delay = plan.latency_s
            if not world.healed and plan.delay_max_s:
                delay += world.rng.uniform(0.0, plan.delay_max_s)
                world.faults["delay"] += 1
            key = (msg.src, msg.dst)
            if world.now + delay < self.last_arrival.get(key, 0.0):
                world.faults["reorder"] += 1
            self.last_arrival[key] = max(world.now + delay, self.last_arrival.get(key, 0.0))
            world.at(world.now + delay, functools.partial(self._deliver, world, msg), "deliver")

    def _link(self, msg: Message) -> tuple[int, Uid, bool] | None:
        for service in (VENDOR, BROKER):
            if msg.dst == service and (node := self._node_of(msg.src)) is not None:
                return (node.index, service, True)
            if msg.src == service and (node := self._node_of(msg.dst)) is not None:
                return (node.index, service, False)
        return None

    def _endpoints(self) -> list[Uid]:
        """Whom the carrier can address: the services and every wallet port now in use."""
        out = [VENDOR, BROKER]
        for node in self.customers:
            out.extend(Uid(node.domain, p) for p in [*node.attempts, *node.payments])
        return out

    def _handles(self) -> dict[Uid, list[MType]]:
        h: dict[Uid, list[MType]] = {VENDOR: list(TO_VENDOR), BROKER: list(TO_BROKER)}
        for uid in self._endpoints()[2:]:
            h[uid] = list(TO_CUSTOMER)
        return h

    def _malicious(self, world: World, action: Action | None) -> None:
        """What the carrier made goes on the network (not carried again: it is the carrier's own)."""
        if action is None:
            return
        world.faults["malicious"] += 1
        world.exercised[f"carrier_{action.kind}"] += 1
        m = action.msg
        if world.trace is not None:
            world.log(f"malicious carrier {action.kind} {_name(m)} {self._label(m.src)}->{self._label(m.dst)}")
        self._send(world, m, carried=False)

    def _deliver(self, world: World, msg: Message) -> None:
        if msg.dst == VENDOR:
            self._at_vendor(world, msg)
        elif msg.dst == BROKER:
            self._at_broker(world, msg)
        elif (node := self._node_of(msg.dst)) is not None and node.up:
            self._receive(world, node, msg)

    def _answer(self, world: World, msg: Message, replies: list[Message]) -> None:
        if msg.src in (VENDOR, BROKER):
            return  # servers do not answer servers (a reflected or forged frame)
        for r in replies:
            self._send(world, r)

    def _at_vendor(self, world: World, msg: Message) -> None:
        v = self.vendor
        if not v.up:
            return
        v.store.armed = True
        try:
            replies = v.core.frames(msg)
        except StoreError:
            v.store.armed = False
            world.log("vendor torn: restarts from its store")
            v.store.torn = False
            v.core = v.make()
            return
        finally:
            v.store.armed = False
        self._answer(world, msg, replies)

    def _at_broker(self, world: World, msg: Message) -> None:
        b = self.broker
        if not b.up:
            return
        b.store.armed = b.sam_store.armed = True
        self.changed = True
        try:
            reply = b.core.handle(msg)
        except StoreError:
            b.store.armed = b.sam_store.armed = False
            world.log("broker torn (its store or its SAM's): restarts from its stores")
            b.reopen()
            return
        finally:
            b.store.armed = b.sam_store.armed = False
        if world.trace is not None:
            why = f" {fr.REFUSED.parse(reply)['reason']}" if reply.mtype == fr.REFUSED.code else ""
            world.log(f"broker: {_name(msg)} from {self._label(msg.src)} -> {_name(reply)}{why}")
        self._answer(world, msg, [reply])

    # -- faults ---------------------------------------------------------------------------------------------------
    def _tick(self, world: World) -> None:
        """Per tick: partitions, crashes, the carrier's own moves and the malicious hosts'."""
        if world.healed:
            return
        plan, rng = world.plan, world.rng
        if plan.partition_p and rng.random() < plan.partition_p:
            i, service = rng.randrange(len(self.customers)), rng.choice((VENDOR, BROKER))
            until = world.now + plan.partition_len_s
            ways = [True, False] if rng.random() < 0.5 else [rng.random() < 0.5]
            for towards in ways:
                self.down[(i, service, towards)] = until
            world.faults["partition"] += 1
            world.log(f"partition customer {i} / {self._label(service)} {ways} until {until:.3f}")
        if plan.crash_p and rng.random() < plan.crash_p:
            victim = rng.randrange(2 + len(self.customers))
            if victim == 0:
                self._crash_vendor(world)
            elif victim == 1:
                self._crash_broker(world)
            else:
                self._crash_customer(world, self.customers[victim - 2])
        if self.carrier is not None:
            if rng.random() < plan.malicious_p:
                self._malicious(world, self.carrier.injection(self._endpoints(), [*self._endpoints(), STRANGER],
                                                              self._handles()))  # fmt: skip
            for node in self.customers:
                if node.malicious and node.up and rng.random() < plan.malicious_p:
                    world.at(world.now, functools.partial(self._host_move, world, node), "malicious")
        world.at(world.now + TICK_S, functools.partial(self._tick, world), "tick")

    def _crash_vendor(self, world: World) -> None:
        v = self.vendor
        if not v.up:
            return
        world.faults["crash"] += 1
        world.exercised["crash_vendor"] += 1
        world.log("crash vendor")
        v.up = False

        def restart() -> None:
            v.store.torn = False
            v.core = v.make()
            v.up = True
            world.log("vendor restarts")

        world.at(world.now + world.rng.uniform(*DOWN_S), restart, "restart")

    def _crash_broker(self, world: World) -> None:
        b = self.broker
        if not b.up:
            return
        world.faults["crash"] += 1
        world.exercised["crash_broker"] += 1
        world.log("crash broker")
        b.up = False

        def restart() -> None:
            b.reopen()
            b.up = True
            world.log("broker restarts")

        world.at(world.now + world.rng.uniform(*DOWN_S), restart, "restart")

    def _crash_customer(self, world: World, node: CustomerNode) -> None:
        if not node.up:
            return
        world.faults["crash"] += 1
        world.exercised["crash_customer"] += 1
        world.log(f"crash customer {node.index}'s host: purchases in flight lost, the card loses power")
        node.up = False
        node.attempts.clear()
        node.payments.clear()
        node.port = None
        world.at(world.now + world.rng.uniform(*DOWN_S), functools.partial(self._restart, world, node), "restart")

    def _restart(self, world: World, node: CustomerNode) -> None:
        """The wallet program starts again: the card is reopened, the journal finished, other purchases begun again."""
        node.reopen_card()
        node.up = True
        self.changed = True
        pending = [r for r in node.journal.values() if r.receipt is None and r.dropped is None]
        world.log(f"customer {node.index} restarts: recovers {len(pending)} journaled purchase(s)")
        for intent in node.intents:
            if intent.state == "buying":
                intent.state = "waiting"
        for rec in pending:
            world.exercised["recover"] += 1
            self._start_payment(world, node, rec)

    # -- the wallet: before payment -----------------------------------------------------------------------------------
    def _timer(self, world: World, node: CustomerNode) -> None:
        if node.up:
            for a in [a for a in node.attempts.values() if a.deadline <= world.now]:
                world.exercised["stalled"] += 1
                self._abandon(world, node, a, "stalled")
            for pay in [p for p in node.payments.values() if p.due <= world.now]:
                if pay.phase == "pay":
                    self._pay(world, node, pay)
                elif pay.frame is not None:
                    world.exercised["resend"] += 1
                    pay.due = world.now + PAY_RETRY_S
                    self._send(world, pay.frame)
            for intent in node.intents:
                if intent.state == "waiting" and intent.start_s <= world.now:
                    self._start(world, node, intent)
        world.at(world.now + TIMER_S, functools.partial(self._timer, world, node), "timer")

    def _start(self, world: World, node: CustomerNode, intent: Intent) -> None:
        """A new attempt at ``intent``: a fresh NID, the card signs the request, which goes sealed to the vendor."""
        intent.attempts += 1
        if intent.attempts > MAX_ATTEMPTS:
            intent.state = "gave_up"
            return
        rng = world.rng
        port, nid = node.next_port, rng.randbytes(sm.NID_BYTES)
        node.next_port += 1
        vid = sm.vendor_id(self.vendor_cert)
        neg: CustomerNegotiation | None = None
        try:
            if intent.mode == "normal":
                neg = CustomerNegotiation(nid=nid, enkey=rng.randbytes(32), signkey=rng.randbytes(32),
                                          strategy=LimitStrategy(intent.limit, intent.opening),
                                          products=intent.products, vendor_id=vid)  # fmt: skip
                signed = self._card(node, co.SIGN_REQUEST, co.SIGNED, mode="normal", content=neg.request())["cms"]
                sealed = sm.seal_to(self.vendor_cert, signed, sm.INFO_REQUEST)
            else:
                price = sm.Price(EUR, sum(PRODUCTS[p][0] for p in intent.products))
                content = sm.PRODUCT_REQUEST.encode(
                    {"nid": nid, "products": intent.products, "price": price.fields(), "vendor_id": vid}
                )
                signed = self._card(node, co.SIGN_REQUEST, co.SIGNED, mode="aggressive", content=content)["cms"]
                sealed = sm.seal_to(self.vendor_cert, signed, sm.INFO_PRODUCT_REQUEST)
                node.agreed[sm.make_poid(vid, nid)] = price
        except (HostError, _CardDown) as exc:
            world.log(f"customer {node.index}: the card did not sign a request ({exc}): later")
            return
        intent.state = "buying"
        phase = "negotiate" if neg is not None else "deliver"
        node.attempts[port] = Attempt(intent, port, nid, neg, phase, world.now + STALL_S)
        world.exercised[f"request_{intent.mode}"] += 1
        world.log(f"customer {node.index} buys {intent.products} ({intent.mode}, {intent.payment}) nid {nid.hex()}")
        self._send(world, fr.REQUEST.make(Uid(node.domain, port), VENDOR, mode=intent.mode, sealed=sealed))

    def _card(self, node: CustomerNode, mtype: MType, reply: MType, /, **fields: Any) -> dict[str, Any]:
        self.changed = True
        return node.ask(mtype, reply, **fields)

    def _abandon(self, world: World, node: CustomerNode, a: Attempt, why: str) -> None:
        """Give up an attempt before its journal entry (nothing was paid): the purchase begins again."""
        node.attempts.pop(a.port, None)
        if a.intent.state == "buying":
            a.intent.state = "waiting"
        world.log(f"customer {node.index} abandons nid {a.nid.hex()}: {why}")

    def _receive(self, world: World, node: CustomerNode, msg: Message) -> None:
        a = node.attempts.get(msg.dst.port)
        if a is not None:
            self._at_attempt(world, node, a, msg)
            return
        pay = node.payments.get(msg.dst.port)
        if pay is not None:
            self._at_payment(world, node, pay, msg)

    def _at_attempt(self, world: World, node: CustomerNode, a: Attempt, msg: Message) -> None:
        try:
            f = fr.REFUSED.parse(msg) if msg.mtype == fr.REFUSED.code else None
            if f is not None and f["reason"] in DUPLICATE:  # a copy of ours got there first: its answer is coming
                world.exercised["duplicate_refused"] += 1
                return
            if f is not None:  # (unauthenticated: a forged one costs an attempt, nothing more)
                world.exercised["vendor_refused"] += 1
                self._abandon(world, node, a, f"refused {f['reason']}")
                return
            if msg.mtype in (fr.STEP.code, fr.ENDED.code):
                self._negotiate(world, node, a, msg)
            elif msg.mtype in (fr.DELIVERY.code, fr.CHUNK.code, fr.BILL.code):
                self._delivery(world, node, a, msg)
        except (ProtocolError, DecodeError, CryptoError, PkiError, PurchaseError) as exc:
            world.exercised["bad_frame"] += 1
            self._abandon(world, node, a, f"{_name(msg)} does not check: {exc}")
        except (HostError, _CardDown) as exc:
            self._abandon(world, node, a, f"the card: {exc}")

    def _negotiate(self, world: World, node: CustomerNode, a: Attempt, msg: Message) -> None:
        mt = fr.STEP if msg.mtype == fr.STEP.code else fr.ENDED
        f = mt.parse(msg)
        if a.neg is None or a.phase != "negotiate" or f["nid"] != a.nid:
            return
        if "sealed" not in f:
            self._abandon(world, node, a, "the vendor ended the negotiation (unauthenticated)")
            return
        if f["sealed"] in a.steps:
            return  # the network delivered the vendor's last step twice (a replay of an older one ends it: 5.3)
        a.steps.append(f["sealed"])
        out = a.neg.on_step(f["sealed"])
        port = Uid(node.domain, a.port)
        a.deadline = world.now + STALL_S
        if isinstance(out, Sent):
            world.exercised["counter_offer"] += 1
            self._send(world, fr.STEP.make(port, VENDOR, nid=a.nid, sealed=out.sealed))
        elif isinstance(out, Ended):
            if out.sealed is not None:
                self._send(world, fr.STEP.make(port, VENDOR, nid=a.nid, sealed=out.sealed))
            node.attempts.pop(a.port, None)
            a.intent.state = "no_deal"
            world.exercised["no_deal"] += 1
            world.log(f"customer {node.index}: no agreement on nid {a.nid.hex()}: {out.reason}")
        elif isinstance(out, Agreed):
            vid = sm.vendor_id(self.vendor_cert)
            hs = self._card(node, co.HANDSHAKE, co.SIGNED, nid=a.nid, vendor_id=vid, price=out.price.fields())
            node.agreed[sm.make_poid(vid, a.nid)] = out.price
            a.phase = "deliver"
            world.exercised["handshake"] += 1
            self._send(world, fr.HANDSHAKE.make(port, VENDOR, nid=a.nid, sealed=a.neg.seal_handshake(hs["cms"])))

    def _delivery(self, world: World, node: CustomerNode, a: Attempt, msg: Message) -> None:
        if a.phase != "deliver":
            return
        if msg.mtype == fr.DELIVERY.code:
            f = fr.DELIVERY.parse(msg)
            if f["nid"] == a.nid and a.sizes is None:
                a.sizes, a.chunk = list(f["sizes"]), f["chunk"]
        elif msg.mtype == fr.CHUNK.code:
            f = fr.CHUNK.parse(msg)
            if f["nid"] == a.nid:
                a.chunks.setdefault((f["product"], f["index"]), f["data"])
        else:
            f = fr.BILL.parse(msg)
            if f["nid"] == a.nid and a.sealed_bill is None:
                a.sealed_bill = f["sealed"]
        a.deadline = world.now + STALL_S
        if a.sizes is None or a.sealed_bill is None:
            return
        counts = [sm.chunk_count(s, a.chunk) if a.chunk > 0 else 0 for s in a.sizes]
        if a.chunk < 1 or sum(counts) > MAX_CHUNKS:
            raise PurchaseError("bad_delivery", f"a delivery header of {sum(counts)} chunks: not this vendor's")
        if len(a.chunks) < sum(counts):
            return
        chunks = [[a.chunks.get((i, j), b"") for j in range(n)] for i, n in enumerate(counts)]
        if any(c == b"" for per in chunks for c in per):
            return
        if a.neg is not None:
            signed_bill = a.neg.open_bill(a.sealed_bill)
        else:  # aggressive mode: the bill is sealed to the card
            signed_bill = self._card(node, co.OPEN_BILL, co.BILL, sealed=a.sealed_bill)["bill"]
        bill = sm.decode(sm.BILL, sm.signed(signed_bill, "bill", cert_der=self.vendor_cert).content, "bill")
        check_delivery(bill, chunks)  # every byte, before anything is paid
        rng = world.rng
        rec = Record(a.intent.n, a.nid, bill["poid"], signed_bill, bill["rec_key"], sm.Price.of(bill["price"]),
                     a.intent.products, chunks, a.intent.payment, rng.randbytes(32), rng.randbytes(32))  # fmt: skip
        node.journal[a.nid] = rec  # durable, before the card is asked to pay
        node.attempts.pop(a.port, None)
        a.intent.state = "paying"
        world.exercised["delivered"] += 1
        self._start_payment(world, node, rec)

    # -- the wallet: payment --------------------------------------------------------------------------------------
    def _start_payment(self, world: World, node: CustomerNode, rec: Record) -> None:
        port = node.next_port
        node.next_port += 1
        pay = Payment(rec, port, "pay", None, world.now)
        node.payments[port] = pay
        self._pay(world, node, pay)

    def _pay_fields(self, node: CustomerNode, rec: Record) -> dict[str, Any]:
        fields: dict[str, Any] = {"bill": rec.bill, "vendor_cert": self.vendor_cert, "kind": rec.payment}
        if rec.payment == "purse":
            fields.update(benc=rec.benc, bsign=rec.bsign)
        else:
            fields["account"] = node.account
        return fields

    def _pay(self, world: World, node: CustomerNode, pay: Payment) -> None:
        """The card checks the bill against its agreement and signs the PaymentOrder (S1 in it), or refuses."""
        rec = pay.rec
        fields = self._pay_fields(node, rec)
        _remember(node.seen_pays, fields)
        src = Uid(node.domain, pay.port)
        try:
            order = self._card(node, co.PAY, co.ORDER, **fields)
        except _CardDown:
            pay.due = world.now + PAY_RETRY_S
            return
        except HostError as exc:
            if exc.reason == "already_paid":  # paid long ago: the receipt from the broker's register (5.7)
                world.exercised["card_already_paid"] += 1
                pay.phase, pay.frame = "resend", fr.RESEND.make(src, BROKER, poid=rec.poid)
                pay.due = world.now + PAY_RETRY_S
                self._send(world, pay.frame)
                return
            rec.dropped = exc.reason  # the card refused: it paid nothing
            node.payments.pop(pay.port, None)
            self._intent_of(node, rec).state = "waiting"
            world.exercised[f"card_refused_{exc.reason}"] += 1
            world.log(f"customer {node.index}: the card refuses to pay nid {rec.nid.hex()}: {exc.reason}")
            return
        self._signed_order(world, node, order)
        world.log(f"customer {node.index}: the card signs the PaymentOrder of nid {rec.nid.hex()} ({rec.payment})")
        pay.phase = "order"
        pay.frame = pay.order = fr.ORDER.make(
            src, BROKER, sealed=sm.seal_to(self.broker_cert, order["po"], sm.INFO_ORDER)
        )
        pay.due = world.now + PAY_RETRY_S
        _remember(node.seen_frames, pay.frame)
        self._send(world, pay.frame)

    def _signed_order(self, world: World, node: CustomerNode, order: dict[str, Any]) -> None:
        """The card signs one PaymentOrder per PaymentOrderID, whoever asks and however often."""
        first = node.first_po.setdefault(order["poid"], order["po"])
        if first != order["po"]:
            self.bad.append(f"card {node.index} signed a second, different PaymentOrder for {order['poid'].hex()}")

    @staticmethod
    def _intent_of(node: CustomerNode, rec: Record) -> Intent:
        return node.intents[rec.intent]

    def _at_payment(self, world: World, node: CustomerNode, pay: Payment, msg: Message) -> None:
        rec = pay.rec
        try:
            if msg.mtype == fr.REFUSED.code:  # unauthenticated: a hint; the timer sends again
                reason = fr.REFUSED.parse(msg)["reason"]
                if reason == "no_order" and pay.phase == "s3" and pay.order is not None:
                    # the broker restarted between S2 and S3 (it keeps authorised orders in memory): the order
                    # again gets the SAM's same S2, the card's same S3 (if a forged hint: one round more)
                    world.exercised["order_again"] += 1
                    pay.phase, pay.frame, pay.due = "order", pay.order, world.now + PAY_RETRY_S
                    self._send(world, pay.order)
                    return
                world.exercised["broker_refused"] += 1
                world.log(f"customer {node.index} ignores a refusal {reason}")
            elif msg.mtype == fr.PURSE.code and pay.phase == "order" and rec.payment == "purse":
                f = fr.PURSE.parse(msg)
                if f["poid"] != rec.poid:
                    return
                raw = sm.sym_open(rec.benc, sm.NONCE_B_PURSE, 0, f["sealed"], sign_key=rec.bsign, what="S2 message")
                step = sm.decode(sm.PURSE_STEP, raw, "S2 message")
                if step["poid"] != rec.poid:
                    return
                _remember(node.seen_debits, step["s"])
                s3 = self._card(node, pa.DEBIT, pa.S3_IS, s2=step["s"])["s3"]
                sealed = sm.sym_seal(rec.benc, sm.NONCE_C_PURSE, 0, sm.PURSE_STEP.encode({"poid": rec.poid, "s": s3}),
                                     sign_key=rec.bsign)  # fmt: skip
                pay.phase = "s3"
                pay.frame = fr.PURSE.make(Uid(node.domain, pay.port), BROKER, poid=rec.poid, sealed=sealed)
                pay.due = world.now + PAY_RETRY_S
                _remember(node.seen_frames, pay.frame)
                world.exercised["debited"] += 1
                world.log(f"customer {node.index}: the purse pays S2 of nid {rec.nid.hex()}, sends S3")
                self._send(world, pay.frame)
            elif msg.mtype == fr.RECEIPT.code:
                f = fr.RECEIPT.parse(msg)
                if f["poid"] == rec.poid:
                    self._receipt(world, node, pay, f["sealed"])
        except (ProtocolError, DecodeError, CryptoError, PkiError) as exc:
            world.exercised["bad_frame"] += 1
            world.log(f"customer {node.index} ignores {_name(msg)}: {exc}")
        except _CardDown:
            pass  # the timer sends the order again; the broker answers the same S2, the card the same S3
        except HostError as exc:
            rec.dropped = exc.reason  # the card refused the S2: nothing was debited
            node.payments.pop(pay.port, None)
            self._intent_of(node, rec).state = "waiting"
            world.exercised[f"card_refused_s2_{exc.reason}"] += 1

    def _receipt(self, world: World, node: CustomerNode, pay: Payment, sealed: bytes) -> None:
        """An authentic receipt for this order: its K must decipher what was delivered."""
        rec = pay.rec
        receipt = sv.open_receipt(rec.rec_key, sealed, self.broker_cert, self.roots, T0 + world.now)
        if receipt["poid"] != rec.poid:
            return
        contents = [sm.decrypt_chunks(receipt["k"], i, per) for i, per in enumerate(rec.chunks)]
        if contents != [self.contents[p] for p in rec.products]:
            self.bad.append(f"customer {node.index}: the receipt's K for {rec.poid.hex()} deciphers other content")
        rec.receipt = sealed
        node.payments.pop(pay.port, None)
        self._intent_of(node, rec).state = "done"
        world.exercised[f"bought_{rec.payment}"] += 1
        if not world.healed:
            world.exercised["bought_under_faults"] += 1
        world.log(f"customer {node.index} has the receipt for nid {rec.nid.hex()} ({rec.price})")

    # -- the malicious customer host ------------------------------------------------------------------------------
    def _host_move(self, world: World, node: CustomerNode) -> None:
        """One misbehaviour of a malicious customer host (toward its own card or the broker)."""
        if not node.up or world.healed:
            return
        rng = world.rng
        move = rng.choice(HOST_MOVES)
        try:
            if move == "replay_pay" and node.seen_pays:
                self._host_pay(world, node, dict(rng.choice(node.seen_pays)), move, tampered=False)
            elif move == "pay_twice" and node.seen_pays:
                paid = [f for f in node.seen_pays if self._poid_of(f["bill"]) in node.first_po]
                if paid:
                    f = dict(rng.choice(paid))
                    if f["kind"] == "purse" and rng.random() < 0.5:
                        f = {
                            "bill": f["bill"],
                            "vendor_cert": f["vendor_cert"],
                            "kind": "account",
                            "account": node.account,
                        }
                    else:
                        f.update(benc=rng.randbytes(32), bsign=rng.randbytes(32), kind="purse")
                        f.pop("account", None)
                    self._host_pay(world, node, f, move, tampered=False)
            elif move == "tamper_bill" and node.seen_pays:
                genuine = rng.choice(node.seen_pays)
                f = dict(genuine)
                f.update(self._tampered(world, rng, f))
                # tampered means: not the bytes the vendor signed and certified, as the host carried them (what the
                # card is asked to sign for); the same bytes again are a replay, held to the replay's invariant
                changed = (f["bill"], f["vendor_cert"]) != (genuine["bill"], genuine["vendor_cert"])
                self._host_pay(world, node, f, move, tampered=changed)
            elif move == "replay_debit" and node.seen_debits:
                self._count_host(world, node, move)
                self._card(node, pa.DEBIT, pa.S3_IS, s2=rng.choice(node.seen_debits))
            elif move == "replay_order" and node.seen_frames:
                m = rng.choice(node.seen_frames)
                self._count_host(world, node, move)
                port = node.next_port  # answers go to a port nobody listens on: the host's own
                node.next_port += 1
                self._send(world, Message(Uid(node.domain, port), m.dst, m.mtype, m.param))
        except (HostError, _CardDown):
            pass  # refused, or the card lost power: what must hold is checked after the event

    def _count_host(self, world: World, node: CustomerNode, move: str) -> None:
        world.faults["malicious"] += 1
        world.exercised[f"host_{move}"] += 1
        world.log(f"malicious host of customer {node.index}: {move}")

    def _host_pay(self, world: World, node: CustomerNode, f: dict[str, Any], move: str, *, tampered: bool) -> None:
        self._count_host(world, node, move)
        order = self._card(node, co.PAY, co.ORDER, **f)  # (a refusal raises HostError: what is expected)
        if tampered:
            self.bad.append(f"card {node.index} signed a PaymentOrder for a tampered bill ({move})")
        else:
            self._signed_order(world, node, order)

    @staticmethod
    def _poid_of(bill: bytes) -> bytes:
        try:
            return bytes(sm.decode(sm.BILL, sm.signed(bill, "bill").content, "bill")["poid"])
        except (ProtocolError, DecodeError, CryptoError):
            return b""

    def _tampered(self, world: World, rng: random.Random, f: dict[str, Any]) -> dict[str, Any]:
        """A bill the vendor did not sign as it is: bits flipped, its content changed and signed with a rogue key,
        or presented with another party's certificate."""
        how = rng.randrange(3)
        if how == 0:
            raw = bytearray(f["bill"])
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(raw))
                raw[i] ^= 1 << rng.randrange(8)
            while raw == f["bill"]:  # two flips of the same bit undid each other (seed 502928): flip one more
                world.exercised["host_tamper_flips_undone"] += 1
                i = rng.randrange(len(raw))
                raw[i] ^= 1 << rng.randrange(8)
            return {"bill": bytes(raw)}
        if how == 1:
            bill = sm.decode(sm.BILL, sm.signed(f["bill"], "bill").content, "bill")
            price = sm.Price.of(bill["price"])
            bill["price"] = sm.Price(price.currency, max(1, price.amount + rng.choice((-50, -1, 1, 50)))).fields()
            key, cert = _rogue()
            forged = cms.sign(sm.BILL.encode(bill), cert, lambda d: profile.sign(key, d))
            return {"bill": forged, "vendor_cert": rng.choice((cert, self.vendor_cert))}
        return {"vendor_cert": self.broker_cert}

    # -- invariants -----------------------------------------------------------------------------------------------
    def check(self, world: World, final: bool) -> list[str]:
        bad = list(self.bad)
        if self.changed or final:
            self.changed = False
            bad.extend(self._adds_up())
        if final and not bad and self.quiescent(world):
            bad.extend(self._settled(world))
        return bad

    def _decoded(self, kind: str, raw: bytes, decode: Callable[[bytes], Any]) -> Any:
        """``decode(raw)``, remembered (records never change under the same bytes; checks run after every event)."""
        key = (kind, raw)
        got = self.memo.get(key)
        if got is None:
            got = self.memo[key] = decode(raw)
        return got

    def _read(self, what: Any, source: tuple[Any, ...], read: Callable[[], _T]) -> _T:
        """``read()``, read again only when ``source`` changed: the store it reads (by its count of transactions and
        writes begun, :attr:`TearingStore.writes`) and the card mirroring it, if any (a card's mirror changes only
        with a write of its store; a reopened card is another object). Checks run after every event, and most events
        leave most stores alone: every invariant is still checked, on the same values, at every check."""
        got = self.reads.get(what)
        if got is not None and got[0] == source:
            return cast(_T, got[1])
        value = read()
        self.reads[what] = (source, value)
        return value

    def _purse(self, node: CustomerNode) -> tuple[tuple[int, int, int], list[pp.S3]]:
        """The purse's (balance, loaded, debited) in euros and its kept proofs of debit, read from the card."""
        card = node.card
        return self._read(("purse", node.index), (card, node.store, node.store.writes), lambda: self._read_purse(card))

    def _read_purse(self, card: Card) -> tuple[tuple[int, int, int], list[pp.S3]]:
        mem = card._mem
        raw = mem.get((pa.TABLE, b"a:" + EUR.encode()))
        acc = (0, 0, 0) if raw is None else self._decoded("acct", raw, _purse_account)
        proofs = [
            self._decoded("s3", v, pp.S3.decode) for (t, k), v in mem.items() if t == pa.TABLE and k[:3] == b"kd:"
        ]
        return acc, proofs

    def _sam(self) -> tuple[dict[bytes, tuple[bytes, int, int, str, int]], int, int]:
        """The SAM's logged debits by poid (uid, n, amount, currency, count), its debit and load totals."""
        card, store = self.broker.core.sam.card, self.broker.sam_store
        return self._read("sam", (card, store, store.writes), lambda: self._read_sam(card))

    def _read_sam(self, card: Card) -> tuple[dict[bytes, tuple[bytes, int, int, str, int]], int, int]:
        mem = card._mem
        logged: dict[bytes, tuple[bytes, int, int, str, int]] = {}
        debits = loads = 0
        for (t, k), v in mem.items():
            if t != SAM_TABLE:
                continue
            if k[:2] == b"d:":
                rec = self._decoded("sam", v, sa._DEBIT_REC.decode)
                if "day" in rec:
                    seen = logged.get(rec["poid"])
                    n = int.from_bytes(k[-4:], "big")
                    logged[rec["poid"]] = (k[2:-4], n, rec["amount"], rec["currency"], 1 + (seen[4] if seen else 0))
            elif k[:2] == b"t:":
                if k[6:7] == sa._DEBIT:
                    debits += int.from_bytes(v, "big")
                else:
                    loads += int.from_bytes(v, "big")
        return logged, debits, loads

    def _orders(self) -> list[tuple[bytes, str, bytes, int, str]]:
        """The broker's register: (poid, state, customer uid, amount, kind) per order."""
        store = self.broker.store
        return self._read("orders", (store, store.writes), self._read_orders)

    def _read_orders(self) -> list[tuple[bytes, str, bytes, int, str]]:
        with self.broker.store.inner.transaction() as txn:
            rows = txn.scan(sb_records.ORDERS)
        return [(poid, *self._decoded("order", raw, _order_summary)) for poid, raw in rows]

    def _accounts(self) -> dict[str, int]:
        """The broker's accounts: euros held, by account number."""
        store = self.broker.store
        return self._read("accounts", (store, store.writes), self._read_accounts)

    def _read_accounts(self) -> dict[str, int]:
        with self.broker.store.inner.transaction() as txn:
            rows = txn.scan(sb_records.ACCOUNTS)
        return {k.decode(): self._decoded("account", raw, _euros) for k, raw in rows}

    def _adds_up(self) -> list[str]:
        """Value adds up now: purses, the SAM's log and the broker's accounts, and no order paid twice or
        at another price than agreed."""
        bad: list[str] = []
        logged, sam_debits, sam_loads = self._sam()
        orders = self._orders()
        accounts = self._accounts()
        card_loads = 0
        ours = set()
        for node in self.customers:
            uid = bytes(node.card.uid)
            ours.add(uid)
            (balance, loaded, debited), proofs = self._purse(node)
            if balance + debited != loaded:
                bad.append(f"purse {node.index}: balance {balance} + debited {debited} != loaded {loaded}")
            if loaded != LOAD:
                bad.append(f"purse {node.index} was loaded {loaded}, not the {LOAD} the broker took")
            if sum(p.amount for p in proofs) != debited:
                bad.append(f"purse {node.index} debited {debited}, its proofs of debit add up to "
                           f"{sum(p.amount for p in proofs)}")  # fmt: skip
            if len({p.poid for p in proofs}) != len(proofs):
                bad.append(f"purse {node.index} paid one PaymentOrderID twice")
            for p in proofs:
                agreed = node.agreed.get(p.poid)
                if agreed is None or agreed.amount != p.amount:
                    bad.append(f"purse {node.index} paid {p.amount} for {p.poid.hex()}, agreed {agreed}")
            mine = {p.n: p for p in proofs}
            for poid, (u, n, amount, _cur, _count) in logged.items():
                proof = mine.get(n)
                if u == uid and (proof is None or proof.poid != poid or proof.amount != amount):
                    bad.append(f"the SAM logged debit {n} of purse {node.index} ({poid.hex()}), which it did not make")
            by_account = 0
            for poid, state, cust, amount, kind in orders:
                if cust == uid and state == "paid" and kind == "account":
                    by_account += amount
                    agreed = node.agreed.get(poid)
                    if agreed is None or agreed.amount != amount:
                        bad.append(f"customer {node.index}'s account paid {amount} for {poid.hex()}, agreed {agreed}")
            if accounts.get(node.account) != DEPOSIT - LOAD - by_account:
                bad.append(f"account {node.account} holds {accounts.get(node.account)}, not {DEPOSIT} - {LOAD} "
                           f"loaded - {by_account} paid")  # fmt: skip
            card_loads += loaded
        for poid, (u, n, _amount, _cur, count) in logged.items():
            if u not in ours or count > 1:
                bad.append(f"the SAM logged {poid.hex()} {count} time(s), as debit {n} of {u.hex()}")
        if sam_debits != sum(x[2] for x in logged.values()):
            bad.append(f"the SAM's debit total {sam_debits} is not the sum of its logged debits")
        if sam_loads != card_loads:
            bad.append(f"the SAM logged loads of {sam_loads}, the purses were loaded {card_loads}")
        credited = 0
        for poid, state, _cust, amount, kind in orders:
            if state == "paid":
                credited += amount
                if kind == "purse" and (poid not in logged or logged[poid][2] != amount):
                    bad.append(f"the broker paid purse order {poid.hex()} ({amount}) without the SAM's logged debit")
        if accounts.get(VENDOR_ACCOUNT) != credited:
            bad.append(
                f"the vendor's account holds {accounts.get(VENDOR_ACCOUNT)}, the paid orders add up to {credited}"
            )
        return bad

    def _settled(self, world: World) -> list[str]:
        """At quiescence: debited iff receipted, order by order, and the three ledgers agree."""
        bad: list[str] = []
        logged, _, _ = self._sam()
        paid = {poid: (cust, kind) for poid, st, cust, _a, kind in self._orders() if st == "paid"}
        journaled: dict[bytes, tuple[CustomerNode, Record]] = {}
        for node in self.customers:
            uid = bytes(node.card.uid)
            _, proofs = self._purse(node)
            debited = {s.poid for s in proofs}
            sam = {poid for poid, x in logged.items() if x[0] == uid}
            broker = {poid for poid, (cust, kind) in paid.items() if cust == uid and kind == "purse"}
            if not (debited == sam == broker):
                bad.append(f"customer {node.index}: purse debits {len(debited)}, SAM log {len(sam)} and broker "
                           f"{len(broker)} differ order by order")  # fmt: skip
            for rec in node.journal.values():
                journaled[rec.poid] = (node, rec)
                if rec.dropped is not None and (rec.poid in debited or rec.poid in paid):
                    bad.append(f"customer {node.index} dropped {rec.poid.hex()} ({rec.dropped}) but paid it")
            for poid in debited:
                got = journaled.get(poid)
                if got is None or got[1].receipt is None:
                    bad.append(f"customer {node.index} was debited for {poid.hex()} without a receipt in the journal")
        for poid, (cust, _kind) in paid.items():
            got = journaled.get(poid)
            if got is None or got[1].receipt is None or bytes(got[0].card.uid) != cust:
                bad.append(f"the broker paid {poid.hex()} but no customer holds its receipt")
                continue
            bad.extend(self._resent(world, got[0], got[1]))
        bad.extend(self._vendor_receipts(paid))
        for node in self.customers:
            for intent in node.intents:
                if intent.state == "gave_up":
                    bad.append(f"customer {node.index} gave up purchase {intent.n} after {MAX_ATTEMPTS} attempts")
        return bad

    def _vendor_receipts(self, paid: dict[bytes, tuple[bytes, str]]) -> list[str]:
        """The vendor fetches the broker's receipts (``speed.vendor_receipts``) and takes each for its sale: it
        holds a receipt for every paid order, at the price it billed."""
        prices = {poid: amount for poid, state, _c, amount, _k in self._orders() if state == "paid"}
        reply = self.broker.core.handle(self.vendor.core.receipts_request(0))
        bad = []
        try:
            for item in fr.RECEIPTS.parse(reply)["items"]:
                r = fr.RECEIPT.schema.decode(item)
                if self.vendor.core.take_receipt(r["poid"], r["sealed"]).amount != prices.get(r["poid"]):
                    bad.append(f"the vendor's receipt for {r['poid'].hex()} is not at the price paid")
        except (ProtocolError, DecodeError, CryptoError, PkiError) as exc:
            return [f"the vendor cannot take the broker's receipts: {exc}"]
        if self.vendor.core.paid_sales() != len(paid):
            bad.append(
                f"the vendor holds receipts for {self.vendor.core.paid_sales()} sales, the broker paid {len(paid)}"
            )
        return bad

    def _resent(self, world: World, node: CustomerNode, rec: Record) -> list[str]:
        """The broker's register gives the receipt again (paper 5.7), and its K deciphers the product."""
        reply = self.broker.core.handle(fr.RESEND.make(Uid(node.domain, 0), BROKER, poid=rec.poid))
        try:
            sealed = fr.RECEIPT.parse(reply)["sealed"]
            receipt = sv.open_receipt(rec.rec_key, sealed, self.broker_cert, self.roots, T0 + world.now)
            contents = [sm.decrypt_chunks(receipt["k"], i, per) for i, per in enumerate(rec.chunks)]
        except (ProtocolError, DecodeError, CryptoError, PkiError) as exc:
            return [f"the broker's receipt for {rec.poid.hex()} cannot be had again: {exc}"]
        if contents != [self.contents[p] for p in rec.products] or sealed != rec.receipt:
            return [f"the receipt re-sent for {rec.poid.hex()} is not the one the customer holds"]
        return []

    def quiescent(self, world: World) -> bool:
        if not (self.vendor.up and self.broker.up):
            return False
        for node in self.customers:
            if not node.up or node.payments or node.attempts:
                return False
            if any(i.state not in ("done", "no_deal", "gave_up") for i in node.intents):
                return False
        return True


def _purse_account(raw: bytes) -> tuple[int, int, int]:
    rec = pa._BALANCE_REC.decode(raw)
    return rec["balance"], rec["loaded"], rec["debited"]


def _order_summary(raw: bytes) -> tuple[str, bytes, int, str]:
    o = sb_records._ORDER.decode(raw)
    return o["state"], bytes(o["customer"]), o["price"]["amount"], o["kind"]


def _euros(raw: bytes) -> int:
    return next((b["amount"] for b in sb_records._ACCOUNT.decode(raw)["balances"] if b["currency"] == EUR), 0)


def _remember(seen: list[Any], item: Any) -> None:
    if item not in seen:
        seen.append(item)
        del seen[:-MAX_SEEN]


register("speed", SpeedScenario)
register("speed-broken", lambda: SpeedScenario(name="speed-broken", broker_cls=NoS3CheckBrokerCore))
register(
    "speed-conductor-broken",
    lambda: SpeedScenario(name="speed-conductor-broken", conductor_cls=PriceBlindConductorApplet),
)
