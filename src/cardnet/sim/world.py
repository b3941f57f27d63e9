"""The simulated world: hosts, cards and a faulty network on a virtual clock.

Theory of operation
-------------------
One ``random.Random(seed)`` and one virtual clock drive everything. Hosts are
the real :class:`cardnet.host.Host`, cards the real :class:`cardnet.card.Card`
on in-memory SQLite stores; only the network and the clock are simulated. The
network draws, per message, loss, duplication and latency (which reorders),
and per tick, partitions (one direction or both) and host crashes; stores draw
card tears at every commit (power lost just before the commit — nothing
written — or just after it — written, but the outputs never left). Some seeds
make some hosts malicious (:mod:`cardnet.sim.malice`): they replay, tamper
with, forge, reflect, redirect and make up messages; the cards must stay safe.

Hosts' periodic timers (``Host.tick``, ``Host.resend_unacked``) run on the
virtual clock when a scenario asks for them (:meth:`World.add_timers`).

A run has a safety phase under faults, then heals (faults off, partitions
closed) and runs until the scenario is quiescent or a time bound passes.
Invariants are checked after every event that touched a card and at the end.
Besides the scenario's own, the world checks one for every scenario: **no host
loses a card output** (:class:`OutputLedger`). Every durable output a card
emits is either still in its outbox or, once the host acknowledged it to the
card, was delivered: stepped by a card, taken by an application, handed to
the network (which may lose it: that is the network's fault, not the host's),
or addressed where this host cannot deliver (no such card, port or route).
Every event is appended to a trace; the same seed gives the same trace.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol, cast

from cardnet.card import Applet, Card
from cardnet.card import mtypes as cm
from cardnet.card.personalise import personalise
from cardnet.card.runtime import Outgoing
from cardnet.crypto import pki
from cardnet.host import Filter, Host, Origin, SendRemote
from cardnet.host.core import APP, HOST, HOST_PORT, Schedule
from cardnet.protocols import session as sess
from cardnet.sim.faults import FaultPlan
from cardnet.sim.malice import Action, Malice
from cardnet.store import SqliteStore, StoreError
from cardnet.store.sqlite import SqliteTxn
from cardnet.wire import Message, MType, Uid
from cardnet.wire import mtypes as registry

SIM_EPOCH = datetime(2026, 1, 1, tzinfo=UTC)
CA_BEFORE = timedelta(days=30)  # the simulation's CA was made this long before the epoch
TICK_S = 0.01
RESEND = "resend"  # a timer job: Host.resend_unacked


@dataclass(frozen=True)
class Tick:
    """A timer job: ``Host.tick(domain, mtype)`` (e.g. ``trn.recover`` for a TRN card)."""

    domain: bytes
    mtype: MType

    def __hash__(self) -> int:  # (an MType's schema holds lists: hash by its code)
        return hash((self.domain, self.mtype.code))


_CA_CACHE: dict[str, pki.CertificateAuthority] = {}


class Torn(StoreError):
    """The card lost power during a commit (simulated). No ``hint``: the disk is not to blame, so the host's words
    for it (``host.core.store_failed``) give no advice about a disk."""


_TORN = {
    "before": "torn before commit (a simulated power loss: nothing of the commit was written)",
    "after": "torn after commit (a simulated power loss: the commit was written, its outputs never left)",
    "off": "is without power until reopened (a simulated tear)",
}


def _torn(label: str, when: str) -> Torn:
    return Torn("io", f"card {label} {_TORN[when]}")


_MsgKey = tuple[Uid, Uid, int, bytes]


def _key(msg: Message) -> _MsgKey:
    return (msg.src, msg.dst, msg.mtype, msg.param)


class OutputLedger:
    """What became of every durable card output: the invariant that no host loses one.

    Cards tell it (:class:`LedgeredCard`) what they emit, what they stepped and what their host acknowledged;
    the world tells it what applications took and what went onto the network. An output acknowledged to its
    card must have been delivered by then, or be addressed where its host cannot deliver (the host's notice
    tells the card so). Checked after every event (:meth:`problems`), so that what the host does within one
    pump (acknowledge, then deliver) counts.
    """

    def __init__(self) -> None:
        self.emitted: dict[tuple[bytes, int], Message] = {}  # (card domain, outbox seq) -> output, unacknowledged
        self.delivered: set[_MsgKey] = set()
        self.acked: list[tuple[bytes, int, Message]] = []  # acknowledged since the last check
        self.watchers: list[StepWatcher] = []  # a scenario's oracles that look at a card before and after a step

    def stepping(self, card: Card, now: float) -> None:
        for w in self.watchers:
            w.before(card, now)

    def stepped(self, card: Card, msgs: Sequence[Message], results: list[list[Outgoing]], now: float) -> None:
        for w in self.watchers:
            w.after(card, now)
        self.delivered.update(_key(m) for m in msgs)
        domain = card.uid.domain
        for outs in results:
            for out in outs:
                if out.seq is not None:
                    self.emitted[(domain, out.seq)] = out.msg

    def took(self, msg: Message) -> None:
        """An application's sink, or the network, took ``msg``."""
        self.delivered.add(_key(msg))

    def acking(self, card: Card, seqs: Sequence[int]) -> None:
        domain = card.uid.domain
        for seq in seqs:
            msg = self.emitted.pop((domain, seq), None)
            if msg is not None:
                self.acked.append((domain, seq, msg))

    def reopened(self, card: Card) -> None:
        """A card reopened from its store (crash, tear, or a store written back): its outbox is what it emitted."""
        domain = card.uid.domain
        for k in [k for k in self.emitted if k[0] == domain]:
            del self.emitted[k]
        for out in card.outbox():
            if out.seq is not None:
                self.emitted[(domain, out.seq)] = out.msg

    def problems(self, hosts: Mapping[str, SimHost]) -> list[str]:
        bad = []
        for domain, seq, msg in self.acked:
            if _key(msg) in self.delivered or msg.dst.port == HOST_PORT:
                continue
            sh = next((h for h in hosts.values() if domain in h.cards), None)
            if sh is not None and _undeliverable_at(sh, msg.dst):
                continue
            bad.append(
                f"card {domain.hex()[:8]}'s output {seq} ({_describe(msg)}) was acknowledged by its host "
                "but never delivered: lost by the host"
            )
        self.acked.clear()
        return bad


class StepWatcher(Protocol):
    """A scenario's oracle, shown each card around each committed step (``now``: the host time the card got)."""

    def before(self, card: Card, now: float) -> None: ...

    def after(self, card: Card, now: float) -> None: ...


def _undeliverable_at(sh: SimHost, dst: Uid) -> bool:
    """The host cannot deliver to ``dst``: a local domain's port with no application, or a domain with no route."""
    if dst.domain in sh.cards:
        return dst.port != 0 and dst not in sh.apps
    return dst.domain not in sh.host.routes


class LedgeredCard(Card):
    """A card that tells the world's :class:`OutputLedger` what it emitted, stepped and had acknowledged."""

    ledger: OutputLedger | None = None

    def step_many(self, msgs: Sequence[Message], now: float) -> list[list[Outgoing]]:
        if self.ledger is not None:
            self.ledger.stepping(self, now)
        results = super().step_many(msgs, now)
        if self.ledger is not None:  # (only a step that committed delivered its messages)
            self.ledger.stepped(self, msgs, results, now)
        return results

    def ack(self, seqs: Iterable[int]) -> None:
        seqs = list(seqs)
        if self.ledger is not None:
            self.ledger.acking(self, seqs)
        super().ack(seqs)


_LEDGERED: dict[type[Card], type[Card]] = {}


def ledgered(cls: type[Card]) -> type[Card]:
    """``cls`` with the ledger's hooks (a scenario's card class, e.g. a broken one, keeps its own behaviour)."""
    if issubclass(cls, LedgeredCard):
        return cls
    sub = _LEDGERED.get(cls)
    if sub is None:
        sub = _LEDGERED[cls] = cast(type[Card], type(f"Ledgered{cls.__name__}", (LedgeredCard, cls), {}))
    return sub


class TearingStore:
    """An in-memory store whose commits may be torn, as the world's RNG decides."""

    def __init__(self, world: World, label: str) -> None:
        self.inner = SqliteStore(":memory:", durable=False)
        self.url = f"sim://{label}"
        self.world = world
        self.label = label
        self.armed = False
        self.torn = False
        # Transactions, writes and groups begun: each may change the store; while this stays the same it holds what it
        # held (what a check reads from it, or a card's mirror of it, need not be read again).
        self.writes = 0

    @contextmanager
    def transaction(self) -> Iterator[SqliteTxn]:
        self.writes += 1
        if self.torn:
            raise _torn(self.label, "off")
        when = self.world.draw_tear(self.label) if self.armed else None
        with self.inner.transaction() as txn:
            yield txn
            if when == "before":
                self.torn = True
                raise _torn(self.label, "before")
        if when == "after":
            self.torn = True
            raise _torn(self.label, "after")

    def write(self, table: str, puts: list[tuple[bytes, bytes]], deletes: list[bytes]) -> None:
        self.writes += 1
        if self.torn:
            raise _torn(self.label, "off")
        when = self.world.draw_tear(self.label) if self.armed else None
        if when == "before":
            self.torn = True
            raise _torn(self.label, "before")
        self.inner.write(table, puts, deletes)
        if when == "after":
            self.torn = True
            raise _torn(self.label, "after")

    @contextmanager
    def group(self) -> Iterator[None]:
        """The inner store's group; torn (before or after its one commit) as a transaction is. A transaction torn
        inside the group loses the whole group: nothing of it was committed."""
        self.writes += 1
        if self.torn:
            raise _torn(self.label, "off")
        when = self.world.draw_tear(self.label) if self.armed else None
        with self.inner.group():
            yield
            if self.torn or when == "before":
                self.torn = True
                raise _torn(self.label, "before")
        if when == "after":
            self.torn = True
            raise _torn(self.label, "after")

    def close(self) -> None:
        """A card closing its store does not destroy the simulated EEPROM."""


@dataclass
class SimCard:
    label: str
    store: TearingStore
    applets: Callable[[], list[Applet]]
    rng: random.Random
    card: Card
    capacity_bytes: int
    card_cls: type[Card] = Card

    def reopen(self) -> Card:
        self.store.torn = False
        self.card = self.card_cls(
            self.store, rng=self.rng.randbytes, applets=self.applets(), capacity_bytes=self.capacity_bytes
        )
        ledger = self.store.world.ledger
        if isinstance(self.card, LedgeredCard):
            self.card.ledger = ledger
            ledger.reopened(self.card)
        return self.card


@dataclass
class SimHost:
    address: str
    cards: dict[bytes, SimCard]
    routes: dict[bytes, str]
    host: Host
    apps: dict[Uid, Callable[[Message], None]] = field(default_factory=dict)
    up: bool = True
    observers: list[tuple[Callable[[Message, Origin], None], Filter]] = field(default_factory=list)
    timers: dict[object, float] = field(default_factory=dict)  # job (Tick or RESEND) -> period in seconds
    schedule: Schedule | None = None
    host_cls: type[Host] = Host
    rate: float = 1.0  # the host's clock: SIM_EPOCH + rate * virtual time + offset (drift, or a host that lies)
    offset: float = 0.0

    def clock(self, now: float) -> float:
        """The time this host tells its cards at virtual time ``now`` (Unix seconds)."""
        return SIM_EPOCH.timestamp() + self.rate * now + self.offset

    def observe(self, fn: Callable[[Message, Origin], None], flt: Filter | None = None) -> None:
        """Watch this host's dispatch table (``Host.observe``), across restarts."""
        self.observers.append((fn, flt or Filter()))
        self.host.observe(fn, flt)

    def rebuild(self, now: float) -> None:
        """A host restart: new host object, cards reopened from their stores, apps reconnect, timers restart."""
        self.host = self.host_cls([c.reopen() for c in self.cards.values()], routes=self.routes, name=self.address)
        for uid, sink in self.apps.items():
            self.host.attach_app(uid, sink)
        for fn, flt in self.observers:
            self.host.observe(fn, flt)
        if self.timers:
            self.schedule = Schedule(self.timers, now)  # a restarted host process: first runs one period on


@dataclass(order=True)
class _Event:
    t: float
    seq: int
    action: Callable[[], None] = field(compare=False)
    label: str = field(compare=False, default="")


class World:
    """One simulated run. Scenarios build hosts and cards with ``add_host``/``add_card``."""

    def __init__(self, seed: int, plan: FaultPlan, *, trace: bool = True) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.plan = plan
        self.now = 0.0
        self.healed = False
        self.faults_from = 0.0  # scenarios may set up calmly before faults start
        self.hosts: dict[str, SimHost] = {}
        self.faults: Counter[str] = Counter()
        self.exercised: Counter[str] = Counter()  # protocol paths a run took (blocks, cancels, ...): EXERCISED
        self.trace: list[str] | None = [] if trace else None
        self._events: list[_Event] = []
        self._seq = itertools.count()
        self._dirty: set[str] = set()
        self._down_links: dict[tuple[str, str], float] = {}  # (from, to) -> until
        self.violations: list[str] = []
        self._last_arrival: dict[tuple[str, str], float] = {}
        self.malicious: dict[str, Malice] = {}  # drawn when the run starts, if the plan has malicious hosts
        self._handles: dict[Uid, list[MType]] = {}  # card -> the mtypes its applets handle (for injections)
        self._refusals_shown = False
        self.ledger = OutputLedger()
        self.host_cls: type[Host] = Host  # a scenario may give its hosts a (broken) class of their own
        self.ca = _CA_CACHE.get("sim") or _CA_CACHE.setdefault(
            "sim",
            pki.CertificateAuthority.create("sim CA", now=SIM_EPOCH - CA_BEFORE, rng=random.Random(0x5EED).randbytes),
        )  # one fixed CA key for every run and process; serials come from each card's seeded rng

    # -- building ----------------------------------------------------------------
    def add_host(self, address: str) -> SimHost:
        sh = SimHost(address, {}, {}, self.host_cls(name=address), host_cls=self.host_cls)
        self.hosts[address] = sh
        return sh

    def add_card(
        self,
        host: SimHost,
        label: str,
        applets: Callable[[], list[Applet]],
        capacity_bytes: int = 1 << 20,
        role: pki.Role = pki.Role.DEVICE,
        card_cls: type[Card] = Card,
        expires_s: int | None = None,
    ) -> Card:
        """A personalised card on ``host``; its certificate is valid for years, or until ``expires_s`` seconds
        after the epoch (issued one day before that)."""
        store = TearingStore(self, label)
        card_rng = random.Random(self.rng.getrandbits(64))
        card_cls = ledgered(card_cls)
        card = card_cls(store, rng=card_rng.randbytes, applets=applets(), capacity_bytes=capacity_bytes)
        if isinstance(card, LedgeredCard):
            card.ledger = self.ledger
        domain = card_rng.randbytes(12)
        issued, days = SIM_EPOCH, 3 * 365
        if expires_s is not None:
            issued, days = SIM_EPOCH + timedelta(seconds=expires_s) - timedelta(days=1), 1
        personalise(card, self.ca, pin="0000", now=issued, domain=domain, rng=card_rng.randbytes, role=role,
                    valid_days=days)  # fmt: skip
        host.cards[domain] = SimCard(label, store, applets, card_rng, card, capacity_bytes, card_cls)
        host.host.add_card(card)
        self._handles[card.uid] = [mt for applet in applets() for mt in applet.handles]
        for other in self.hosts.values():  # everyone routes to everyone
            for d in host.cards:
                if other is not host:
                    other.routes[d] = host.address
                    other.host.routes[d] = host.address
            for d in other.cards:
                if other is not host:
                    host.routes[d] = other.address
                    host.host.routes[d] = other.address
        return card

    def attach_app(self, host: SimHost, sink: Callable[[Message], None], card: bytes | None = None) -> Uid:
        """An application on ``host`` with a port of ``card`` (the host's only card if None)."""
        uid = host.host.allocate_port(card, host.clock(self.now))
        took = self.ledger.took

        def taken(msg: Message) -> None:
            took(msg)
            sink(msg)

        host.apps[uid] = taken
        host.host.attach_app(uid, taken)
        return uid

    def add_timers(self, host: SimHost, jobs: Mapping[object, float]) -> None:
        """Drive ``host``'s periodic timers from the virtual clock, as the host process does on its own clock.

        ``jobs`` maps :class:`Tick` (``Host.tick``) or :data:`RESEND` (``Host.resend_unacked``) to a period in
        seconds. The first run of each job is one period from now; a crash restarts the schedule.
        """
        host.timers.update(jobs)
        host.schedule = Schedule(host.timers, self.now)
        deadline = host.schedule.deadline()
        if deadline is not None:
            self.at(deadline, functools.partial(self._run_timers, host.address), "timer")

    def _run_timers(self, address: str) -> None:
        sh = self.hosts[address]
        if sh.schedule is None:
            return
        for job in sh.schedule.due(self.now):
            if isinstance(job, Tick):
                sh.host.tick(job.domain, job.mtype)
            elif job == RESEND:
                n = sh.host.resend_unacked()
                if n:
                    self.log(f"{address} re-emits {n} unacknowledged card output(s)")
            self._dirty.add(address)
        deadline = sh.schedule.deadline()
        if deadline is not None:  # (after a crash the schedule is new and its deadline later: nothing was due)
            self.at(deadline, functools.partial(self._run_timers, address), "timer")

    def card_of(self, domain: bytes) -> Card:
        for h in self.hosts.values():
            if domain in h.cards:
                return h.cards[domain].card
        raise KeyError(domain.hex())

    # -- the clock and events ----------------------------------------------------
    def at(self, t: float, action: Callable[[], None], label: str = "") -> None:
        heapq.heappush(self._events, _Event(t, next(self._seq), action, label))

    def log(self, text: str) -> None:
        if self.trace is not None:
            self.trace.append(f"{self.now:9.4f} {text}")

    # -- app -> host ---------------------------------------------------------------
    def owner_order(self, address: str, app: Uid, domain: bytes, mtype: MType, fields: dict[str, object]) -> None:
        """The owner's application ``app`` on ``address`` gives card ``domain`` an order (after the PIN, if the
        order is privileged; every simulated card's PIN is "0000")."""
        card = Uid.card(domain)
        if mtype.privileged:
            self.submit(address, cm.PIN_VERIFY.make(app, card, pin="0000"))
        self.submit(address, mtype.make_from(app, card, fields))

    def submit(self, address: str, msg: Message) -> None:
        """An application on ``address`` sends ``msg`` (through its host)."""
        sh = self.hosts[address]
        if not sh.up:
            return
        self.log(f"{address} app sends {_describe(msg)}")
        sh.host.submit(msg, APP)
        self._dirty.add(address)

    # -- faults ---------------------------------------------------------------------
    @property
    def calm(self) -> bool:
        """No faults now: before ``faults_from`` or after healing."""
        return self.healed or self.now < self.faults_from

    def draw_tear(self, label: str) -> str | None:
        if self.calm or self.plan.tear_p <= 0 or self.rng.random() >= self.plan.tear_p:
            return None
        when = "before" if self.rng.random() < 0.5 else "after"
        self.faults["tear"] += 1
        self.log(f"tear card {label} {when} commit")
        return when

    def _tick(self) -> None:
        if not self.calm:
            addrs = sorted(self.hosts)
            if self.plan.partition_p > 0 and len(addrs) > 1 and self.rng.random() < self.plan.partition_p:
                a, b = self.rng.sample(addrs, 2)
                until = self.now + self.plan.partition_len_s
                self._down_links[(a, b)] = until
                both = self.rng.random() < 0.5
                if both:
                    self._down_links[(b, a)] = until
                self.faults["partition"] += 1
                self.log(f"partition {a}{'<->' if both else '->'}{b} until {until:.3f}")
            if addrs and self.plan.crash_p > 0 and self.rng.random() < self.plan.crash_p:
                victim = self.hosts[self.rng.choice(addrs)]
                self.faults["crash"] += 1
                self.log(f"crash host {victim.address}")
                victim.rebuild(self.now)
                self._dirty.add(victim.address)
            for address, malice in self.malicious.items():
                if self.rng.random() < self.plan.malicious_p:
                    action = malice.injection(self._cards(), self._uids(), self._handles)
                    if action is not None:  # its own event, so that the invariants are checked right after it
                        self.at(self.now, functools.partial(self.inject, address, action), "malicious")
        self.at(self.now + TICK_S, self._tick, "tick")

    # -- malicious hosts (sim/malice.py) -----------------------------------------------------------
    def _choose_malicious(self) -> None:
        """Some hosts (at least one) turn malicious for the whole run, if the plan says so."""
        if self.plan.malicious_p <= 0 or not self.hosts or self.malicious:
            return
        addrs = sorted(self.hosts)
        chosen = sorted(self.rng.sample(addrs, self.rng.randint(1, len(addrs))))
        self.turn_malicious(*chosen)

    def turn_malicious(self, *addresses: str) -> None:
        """Make these hosts malicious for the rest of the run (the plan's ``malicious_p`` says how often they act;
        a test may leave it at 0 and act through :meth:`inject`). With the trace on, the cards' refusals show."""
        for address in addresses:
            malice = Malice(self.rng)
            self.malicious[address] = malice
            self.hosts[address].observe(functools.partial(_remember, malice))
        self.log(f"malicious hosts: {', '.join(addresses)}")
        if self.trace is not None and not self._refusals_shown:
            self._refusals_shown = True
            for sh in self.hosts.values():
                sh.observe(functools.partial(self._log_refusal, sh.address), Filter(mtype=cm.REFUSED.code))
                sh.observe(functools.partial(self._log_refusal, sh.address), Filter(mtype=sess.FAILED.code))

    def _log_refusal(self, address: str, msg: Message, origin: Origin) -> None:
        if origin.kind == "card" and self.trace is not None:
            self.log(f"{address} card refuses: {_describe_refusal(msg)}")

    def _cards(self) -> list[Uid]:
        return [Uid.card(d) for sh in self.hosts.values() for d in sh.cards]

    def _uids(self) -> list[Uid]:
        """The Uids a malicious host may claim or name: every card and application, and a stranger."""
        apps = [uid for sh in self.hosts.values() for uid in sh.apps]
        return [*self._cards(), *apps, Uid(bytes(range(12)), 7)]

    def inject(self, address: str, action: Action | None) -> None:
        """The malicious host at ``address`` hands its own dispatch table what it made (its own Guard is not in its
        way): for a local card or application it is delivered, for a remote domain it goes out over the network
        (where the receiving host's Guard and the network's faults apply)."""
        if action is None:
            return
        self.faults["malicious"] += 1
        self.log(f"malicious {address} {action.kind} {_describe(action.msg)}")
        sh = self.hosts[address]
        sh.host.submit(action.msg, HOST)
        self._dirty.add(address)

    def _carry(self, src: str, eff: SendRemote) -> None:
        self.ledger.took(eff.msg)  # handed to the network: what happens to it now is the network's doing
        eff.sent()
        if eff.address not in self.hosts:
            return
        if not self._in_passing(src, eff.msg):
            return
        plan = self.plan
        copies = 1
        if not self.calm:
            if self._down_links.get((src, eff.address), -1.0) > self.now:
                self.faults["drop"] += 1
                self.log(f"partitioned {src}->{eff.address} {_describe(eff.msg)}")
                return
            if plan.drop_p and self.rng.random() < plan.drop_p:
                self.faults["drop"] += 1
                self.log(f"drop {src}->{eff.address} {_describe(eff.msg)}")
                return
            if plan.dup_p and self.rng.random() < plan.dup_p:
                self.faults["duplicate"] += 1
                copies = 2
        for i in range(copies):
            delay = plan.latency_s
            if not self.calm and plan.delay_max_s:
                extra = self.rng.uniform(0.0, plan.delay_max_s)
                if extra > plan.latency_s:
                    self.faults["delay"] += 1
                delay += extra
            arrival = self.now + delay
            link = (src, eff.address)
            if arrival < self._last_arrival.get(link, 0.0):
                self.faults["reorder"] += 1
            self._last_arrival[link] = max(arrival, self._last_arrival.get(link, 0.0))
            self.at(self.now + delay, functools.partial(self._arrive, src, eff.address, eff.msg, i), "arrive")

    def _arrive(self, src: str, dst: str, msg: Message, copy: int) -> None:
        sh = self.hosts[dst]
        self.log(f"{src}->{dst} deliver{' (dup)' if copy else ''} {_describe(msg)}")
        if not self._in_passing(dst, msg):
            return
        if not sh.host.receive_remote(msg, src):
            self.log(f"{dst} guard drops {_describe(msg)}: src claims a card of {dst}")
        self._dirty.add(dst)

    def _in_passing(self, address: str, msg: Message) -> bool:
        """A malicious host may misbehave with a message it carries; False if it swallows the original."""
        malice = self.malicious.get(address)
        if malice is None or self.calm or self.rng.random() >= self.plan.malicious_p:
            return True
        action = malice.in_passing(msg, self._cards(), self._uids())
        self.inject(address, action)
        return action is None or action.keep

    def _pump_dirty(self) -> None:
        rounds = 0
        while self._dirty and rounds < 100:
            rounds += 1
            for address in sorted(self._dirty):
                self._dirty.discard(address)
                sh = self.hosts[address]
                for sc in sh.cards.values():
                    sc.store.armed = True
                try:
                    effects = sh.host.pump(sh.clock(self.now))
                finally:
                    for sc in sh.cards.values():
                        sc.store.armed = False
                for sc in sh.cards.values():
                    if sc.store.torn:
                        self.log(f"reopen card {sc.label}")
                        sh.host.replace_card(sc.reopen())
                        self._dirty.add(address)
                for eff in effects:
                    self._carry(address, eff)

    # -- running ---------------------------------------------------------------------
    def run(
        self,
        *,
        safety_s: float,
        heal_s: float,
        check: Callable[[World, bool], list[str]],
        quiescent: Callable[[World], bool],
    ) -> None:
        self._choose_malicious()
        self.at(0.0, self._tick, "tick")
        end_safety = safety_s
        end_all = safety_s + heal_s
        while self._events:
            ev = heapq.heappop(self._events)
            if ev.t > end_all:
                break
            if not self.healed and ev.t >= end_safety:
                self.healed = True
                self._down_links.clear()
                self.log("heal: faults off")
            self.now = ev.t
            ev.action()
            self._pump_dirty()
            if ev.label != "tick":
                bad = [*self.ledger.problems(self.hosts), *check(self, False)]
                if bad:
                    self.violations.extend(bad)
                    self.log(f"VIOLATION {bad[0]}")
                    return
            if self.healed and quiescent(self):
                break
        self.violations.extend([*self.ledger.problems(self.hosts), *check(self, True)])
        if not quiescent(self):
            self.violations.append(f"not quiescent {heal_s:.1f} s after healing (liveness)")
        if self.violations:
            self.log(f"VIOLATION {self.violations[0]}")


def _describe(msg: Message) -> str:
    try:
        name = registry.lookup(msg.mtype).name
    except Exception:
        name = f"0x{msg.mtype:04x}"
    return f"{name} {msg.src.short()}->{msg.dst.short()} {msg.param.hex()[:24]}"


def _describe_refusal(msg: Message) -> str:
    try:
        p = registry.decode_param(msg)
    except Exception:
        return _describe(msg)
    what = p.get("mtype")
    try:
        what = registry.lookup(what).name if isinstance(what, int) else what
    except Exception:
        what = f"0x{what:04x}"
    head = f"{what} from {msg.dst.short()}: " if what is not None else f"session with {msg.dst.short()}: "
    return head + str(p.get("reason", ""))


def _remember(malice: Malice, msg: Message, origin: Origin) -> None:
    if origin.kind != "host":  # (not its own injections)
        malice.observe(msg, from_app=origin.kind == "app")


def plan_for(seed: int, calm: bool = False) -> FaultPlan:
    return FaultPlan.draw(random.Random(seed ^ 0x5EED), calm=calm)
