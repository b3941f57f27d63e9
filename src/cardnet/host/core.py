"""The host (TENeT 4.3): a dispatch table with a card proxy, a remote proxy and Guards.

Theory of operation
-------------------
Everything that arrives — from a local application (through its capability
or its socket connection), from a local card's outbox, or from a remote host —
is submitted to the dispatch table, after the Guards have passed it. ``pump``
empties the table:

* a message for a local card (``domain|0``) is stepped on that card; all
  messages queued for one card in one round of the pump are stepped as one
  group commit (at most ``max_group`` of them if the driver asks: the rest wait
  for the next round); the card's outputs pass the Guards and go back into the
  table (those for a remote domain straight on to the remote proxy);
* a message for a local application goes to its sink (a capability's inbox or
  handlers, or a socket connection);
* a message for a remote domain becomes a :class:`SendRemote` effect for the
  driver (asyncio TCP, or the simulator's network) to carry;
* anything else gets a ``host.undeliverable`` notice back to its sender.

The host remembers, per local card and destination domain, the last
undeliverable notice that card got (the host's own, or a remote host's on its
way back to the card), logs it as a warning the first time, and answers an
application's ``host.route {domain}`` (sent to its card's domain, port
``HOST_PORT``) with ``host.route_is``: whether the domain is a local card, has a
route, and that last notice. So ``cardnet trn send`` refuses a destination the
host cannot reach before the token is disabled, and ``cardnet trn list`` shows a
transfer stuck on an undeliverable destination.

A card output is acknowledged to its card only once it has left the host
(stepped by a local card, taken by an application sink, or taken by the remote
host: ``SendRemote.sent()``, or ``all_sent`` for a batch, which the driver calls
once the remote host confirmed it, ``host.taken``): a host crash before that
loses nothing, because the reopened card re-emits its unacknowledged outbox. A
message from a remote host is acknowledged the same way, to a :class:`Taker`
of its connection (``receive_many(..., taken=)``), once it left this host.

The host reads no clock: ``now`` is an argument of ``pump``. It does no I/O:
remote traffic leaves as effects; the asyncio driver and the simulator feed
arrivals in through ``receive_remote`` (or ``receive_many`` for a batch).

A card's memory is bounded (``capacity_bytes`` in its host config entry): the
host logs a warning when a card's records first fill ``CAPACITY_WARN`` of it,
an error at ``CAPACITY_ALARM``, and an error (at most once a minute a card)
when a card refuses a message ``out_of_memory``, each saying which card and
what to do; a card that falls back under ``CAPACITY_CLEAR`` is warned again
when it next fills up, at most once per level every ``FILL_LOG_EVERY_S``.

Timers are the driver's too: :class:`Schedule` says when periodic jobs are
due (``deadline()``, ``due(now)``); for each, the driver calls ``tick`` (send
a card a message such as ``trn.recover`` from the host port) or
``resend_unacked`` (re-emit card outputs that are neither queued nor held:
ones the driver could not pass on, e.g. a full link, and so never
acknowledged).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from cardnet.applets.fairx import followed_ttp
from cardnet.card import Card
from cardnet.card import mtypes as cm
from cardnet.host import mtypes as hm
from cardnet.host.errors import HostError
from cardnet.host.guard import Guard, Verdict, forged_local_domain_guard
from cardnet.host.library import Capability, Filter
from cardnet.store import StoreError
from cardnet.transport.base import LogThrottle
from cardnet.wire import DecodeError, Message, MType, Uid, lookup

log = logging.getLogger("cardnet.host")

HOST_PORT = 0xFFFFFFFF  # the host itself, when it asks its card for a port
DEFAULT_MAX_QUEUE = 100_000
# bytes of the messages in the dispatch table (one message of any size fits an empty one). A pump steps at most
# max_group messages a card while that card's outputs wait to be sent, but reads go on between pumps: a remote peer
# sending 60 KB messages to a card whose answers go to a routed domain from 512 connections made the table grow by
# 100 MB a second, up to the count bound (100,000 messages of up to a frame each: 2.9 GB of 30 KB ones).
DEFAULT_MAX_QUEUE_BYTES = 64 * 1024 * 1024
MAX_PUMP_ROUNDS = 10_000
CAPACITY_WARN = 0.80  # a card's records fill this share of its capacity: a warning
CAPACITY_ALARM = 0.95  # ... this share: an error
CAPACITY_CLEAR = 0.75  # back under this share, the card is warned again when it next fills up
FULL_LOG_EVERY_S = 60.0  # out_of_memory refusals are logged at most this often per card
# A card that fell back under CAPACITY_CLEAR and fills again is logged again at most this often per level: a card
# near CAPACITY_CLEAR whose acknowledged outputs are deleted in batches (card/runtime.py) crossed both thresholds
# each batch, and whoever sent it traffic made the host log 16 lines a second (tests/integration/test_host_fill_log.py)
FILL_LOG_EVERY_S = 60.0
CAPACITY_HINT = "raise capacity_bytes in the card's [[cards]] entry of the host config and restart the host"
MAX_UNDELIVERABLE = 4096  # (card, destination domain) pairs remembered; forgotten all at once beyond
# A warning remote traffic can repeat at will (a guard's drop, a new undeliverable notice) is logged at most
# REMOTE_LOG_BURST times every REMOTE_LOG_EVERY_S, with the count of those left out: a peer sending forged messages at
# full speed made a host write 3 bytes of log for each byte it received (6.5 MB a second from one connection), until
# its disk (and with it its cards' stores) was full.
REMOTE_LOG_EVERY_S = 10.0
REMOTE_LOG_BURST = 10
_CARD_REFUSED = cm.REFUSED.code
NO_NOTICE = {hm.UNDELIVERABLE.code, cm.REFUSED.code, hm.REFUSED.code}
# What waits on a card whose message cannot reach its destination, by the message's protocol (Host._what_waits)
TRANSFER_WAITS = " (a transfer to it waits; `cardnet trn list` shows it)"
EXCHANGE_WAITS = " (an exchange with it waits; `cardnet exchange list` shows it)"
TTP_WAITS = " (a request of an exchange to this TTP waits; `cardnet exchange list` shows it)"
STORE_FAILED = "store_failed"  # a notice's code: the destination card's store cannot be written (nothing was kept)
_NOTICE, _ROUTE = hm.UNDELIVERABLE.code, hm.ROUTE.code
_PASS, _DROP, _HOLD = Verdict.PASS, Verdict.DROP, Verdict.HOLD  # (an Enum attribute lookup is slow)


@dataclass(frozen=True)
class Origin:
    """Where a message entered the dispatch table."""

    kind: Literal["app", "card", "remote", "host"]
    peer: str | None = None


APP = Origin("app")
CARD = Origin("card")
HOST = Origin("host")


def store_failed(card: Card, exc: StoreError) -> str:
    """Why a card could not take a step whose commit failed, and what to do (the reason a refusal carries).

    The disk is named only when the store blames it (its error has a ``hint``: SQLite could not write the file, a
    full or failing disk); any other store error (a simulated power loss, a closed store) is given as it is."""
    advice = "free space on its disk (or mend the disk) and try again" if exc.hint is not None else "try again"
    return f"card {card.uid} cannot write its store: {advice}; nothing was lost ({exc})"


@dataclass(frozen=True, slots=True)
class Undelivered:
    """The last ``host.undeliverable`` notice a local card got about a destination domain: its ``reason`` and
    ``code``, the host time ``at`` it came, and ``count``, how many such notices the card got about that domain."""

    reason: str
    at: float
    code: str | None
    count: int


class Taker(Protocol):
    """Who is told that messages left the host: a card (its outbox sequence numbers) or, for messages from a remote
    host, that host's connection (their numbers on it: ``host.taken``)."""

    def ack(self, seqs: Iterable[int]) -> None: ...


Ack = tuple[Taker, int]  # (who, number) to acknowledge once the message left this host


@dataclass(slots=True)
class _Entry:
    msg: Message
    origin: Origin
    ack: Ack | None = None  # (card, outbox seq) to acknowledge once the message left (or a remote host's number)


@dataclass
class SendRemote:
    """Effect: carry ``msg`` to the host at ``address``; call ``sent()`` once the transport took it."""

    address: str
    msg: Message
    _ack: Ack | None = field(default=None, repr=False)

    def sent(self) -> None:
        if self._ack is not None:
            card, seq = self._ack
            card.ack([seq])
            self._ack = None


def all_sent(effects: Iterable[SendRemote]) -> None:
    """``sent()`` for each effect, with one acknowledgement per card (for drivers that hand over batches)."""
    seqs: dict[Taker, list[int]] = {}
    for eff in effects:
        ack = eff._ack
        if ack is not None:
            eff._ack = None
            card, seq = ack
            got = seqs.get(card)
            if got is None:
                seqs[card] = [seq]
            else:
                got.append(seq)
    for card, done in seqs.items():
        card.ack(done)


@dataclass
class Held:
    msg: Message
    origin: Origin
    guard: str
    ack: Ack | None


Sink = Callable[[Message], None]


class Host:
    """A host with local cards, a routing table (domain -> address) and Guards."""

    def __init__(
        self,
        cards: Iterable[Card] = (),
        *,
        routes: dict[bytes, str] | None = None,
        guards: Iterable[Guard] = (),
        max_queue: int = DEFAULT_MAX_QUEUE,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        name: str = "host",
    ) -> None:
        self.name = name
        self.cards: dict[bytes, Card] = {}
        self.routes: dict[bytes, str] = dict(routes or {})
        self._forged_guard = forged_local_domain_guard(self.cards.keys)
        self.guards: list[Guard] = [self._forged_guard, *guards]
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self._queued_bytes = 0  # bytes of the messages in _queue
        self.held: dict[int, Held] = {}
        self._held_ids = 0
        self._queue: deque[_Entry] = deque()
        self._sinks: dict[Uid, Sink] = {}
        self._observers: list[tuple[Filter, Callable[[Message, Origin], None]]] = []
        self._outgoing: list[SendRemote] = []
        self._suspects: set[tuple[Card, int]] = set()  # unacknowledged, not queued, at the last resend sweep
        # the acknowledgements of outputs the driver took and holds (a link's, until the remote host confirms them)
        self.passed_on: Callable[[], Iterable[Ack]] = tuple
        # (local card domain, destination domain) -> the last undeliverable notice the card got about it
        self.undeliverable: dict[tuple[bytes, bytes], Undelivered] = {}
        # destination domains some local card's last notice about says ``store_failed``: the first sign that such a
        # card can write again (a message from it, which it committed first, or a step of it here) clears them
        self._failed_stores: set[bytes] = set()
        self._cleared_counts: dict[tuple[bytes, bytes], int] = {}  # a cleared notice's count (counts never go back)
        self._fill_level: dict[bytes, int] = {}  # card domain -> 1 (warned), 2 (alarmed)
        self._fill_logged: dict[bytes, tuple[int, float]] = {}  # card domain -> (level, when) of its last fill line
        self._full_logged: dict[bytes, float] = {}  # card domain -> when its last out_of_memory refusal was logged
        self._now = 0.0
        self.dropped = 0
        self._drop_log = LogThrottle(REMOTE_LOG_EVERY_S, REMOTE_LOG_BURST)  # guards' drops
        self._full_log = LogThrottle(REMOTE_LOG_EVERY_S, REMOTE_LOG_BURST)  # drops of a full dispatch table
        self._notice_log = LogThrottle(REMOTE_LOG_EVERY_S, REMOTE_LOG_BURST)  # new reasons a card cannot reach a domain
        for card in cards:
            self.add_card(card)

    # -- cards -----------------------------------------------------------------
    def add_card(self, card: Card) -> None:
        """Attach a (personalised) card; its unacknowledged outbox is re-emitted."""
        self.cards[card.uid.domain] = card
        for out in card.outbox():
            self._enqueue(_Entry(out.msg, CARD, (card, out.seq) if out.seq is not None else None))

    def replace_card(self, card: Card) -> None:
        """A card was reopened (after a crash or tear): forget what the old object queued, re-emit."""
        domain = card.uid.domain
        self._queue = deque(
            e for e in self._queue if e.ack is None or not isinstance(e.ack[0], Card) or e.ack[0].uid.domain != domain
        )
        self._queued_bytes = sum(e.msg.size for e in self._queue)
        self.add_card(card)

    def card(self, domain: bytes | None = None) -> Card:
        if domain is None:
            if len(self.cards) != 1:
                raise HostError("no_card", f"this host has several cards ({self._domains()}): name the card's domain")
            return next(iter(self.cards.values()))
        try:
            return self.cards[domain]
        except KeyError:
            raise HostError(
                "no_card", f"no card of domain {domain.hex()} on this host (it has {self._domains()})"
            ) from None

    def _domains(self) -> str:
        """This host's card domains, for a refusal that must say which to name (its owner cannot open a store the
        host holds to read them)."""
        return ", ".join(sorted(d.hex() for d in self.cards)) or "no card"

    # -- messaging library -------------------------------------------------------
    def acquire(self, domain: bytes | None = None, now: float = 0.0) -> Capability:
        """Get a fresh port from a local card and a capability bound to it (trusted, in-process)."""
        uid = self.allocate_port(domain, now)
        cap = Capability(self, uid)
        self._sinks[uid] = cap._deliver
        return cap

    def allocate_port(self, domain: bytes | None = None, now: float = 0.0) -> Uid:
        card = self.card(domain)
        try:
            outs = card.step(cm.PORT_REQUEST.make(Uid(card.uid.domain, HOST_PORT), card.uid), now)
        except StoreError as exc:
            raise HostError("store_failed", store_failed(card, exc)) from None
        why = "it did not answer"
        for out in outs:
            if out.seq is not None:
                card.ack([out.seq])
            if out.msg.mtype == cm.PORT_GRANT.code:
                return Uid(card.uid.domain, cm.PORT_GRANT.parse(out.msg)["port"])
            if out.msg.mtype == cm.REFUSED.code:
                why = cm.REFUSED.parse(out.msg)["detail"]
        raise HostError("no_port", f"card {card.uid.domain.hex()} would not take another program: {why}")

    def attach_app(self, uid: Uid, sink: Sink) -> None:
        """Route messages for ``uid`` to ``sink`` (used by the socket server for app processes)."""
        self._sinks[uid] = sink

    def _detach_app(self, uid: Uid) -> None:
        self._sinks.pop(uid, None)

    def observe(self, fn: Callable[[Message, Origin], None], flt: Filter | None = None) -> None:
        """Watch every message entering the dispatch table (hooks; cannot change or take it)."""
        self._observers.append((flt or Filter(), fn))

    def _submit_from_app(self, msg: Message) -> None:
        if msg.src.domain not in self.cards or msg.src.port in (0, HOST_PORT):
            raise HostError("forged_src", f"an application on this host cannot send as {msg.src}")
        self.submit(msg, APP)

    # -- arrivals ------------------------------------------------------------------
    def submit(self, msg: Message, origin: Origin, ack: Ack | None = None) -> bool:
        """Guard, then queue a message. Returns False if a guard dropped or held it, or the table was full."""
        if not self._admit(msg, origin, ack):
            return False
        size = msg.size
        if len(self._queue) < self.max_queue and self._queued_bytes + size <= self.max_queue_bytes:
            self._queue.append(_Entry(msg, origin, ack))
            self._queued_bytes += size
            return True
        return self._enqueue(_Entry(msg, origin, ack))

    def _admit(self, msg: Message, origin: Origin, ack: Ack | None) -> bool:
        """Show ``msg`` to the observers and the guards; False if a guard dropped or held it."""
        if self._observers:
            self._show(msg, origin)
        guards = self.guards
        # The default guard alone, inlined when it passes (when it drops, the loop below runs it and logs):
        if (
            len(guards) == 1
            and guards[0] is self._forged_guard
            and (origin.kind != "remote" or msg.src.domain not in self.cards)
        ):
            return True
        for guard in guards:
            verdict = guard.check(msg, origin)
            if verdict is _PASS:
                continue
            if verdict is _DROP:
                self.dropped += 1
                more = self._drop_log.due(self._now)
                if more is not None:
                    log.warning(
                        "%s: guard %s dropped 0x%04x from %s (%s)%s",
                        self.name, guard.name, msg.mtype, msg.src, origin.kind, more,
                    )  # fmt: skip
                if ack is not None:
                    ack[0].ack([ack[1]])
                return False
            if verdict is _HOLD:
                self._held_ids += 1
                self.held[self._held_ids] = Held(msg, origin, guard.name, ack)
                return False
        return True

    def _show(self, msg: Message, origin: Origin) -> None:
        for obs_filter, fn in self._observers:
            if obs_filter.matches(msg):
                fn(msg, origin)

    def receive_remote(self, msg: Message, peer: str) -> bool:
        """A message arrived from a remote host (the default Guard applies)."""
        if msg.mtype == _NOTICE:
            self._remote_notice(msg)
        elif self._failed_stores:
            self._heard_from_stores((msg,))
        return self.submit(msg, Origin("remote", peer))

    def receive_many(self, msgs: Iterable[Message], origin: Origin, taken: Ack | None = None) -> None:
        """Messages arrived together from one origin: ``submit`` each, in order (e.g. a remote host's batch).

        With ``taken`` (``(taker, n)``), the i-th message is acknowledged to ``taker`` as number ``n + i`` once it
        left the host (stepped and committed by a card, given to an application or a link, or dropped by a Guard):
        a remote host's connection, which confirms them to that host (``host.taken``)."""
        submit = self.submit
        if taken is None:
            for msg in msgs:
                if msg.mtype == _NOTICE:
                    self._remote_notice(msg)
                submit(msg, origin)
        else:
            taker, n = taken
            for msg in msgs:
                if msg.mtype == _NOTICE:
                    self._remote_notice(msg)
                submit(msg, origin, (taker, n))
                n += 1
        if self._failed_stores:
            self._heard_from_stores(msgs)

    def _heard_from_stores(self, msgs: Iterable[Message]) -> None:
        """A remote card whose store could not be written (a notice ``store_failed`` about it is remembered here)
        sent a message of its own: it committed the step that made it, so its store works again."""
        failed = self._failed_stores
        for msg in msgs:
            src = msg.src
            if src.port == 0 and src.domain in failed and msg.mtype not in NO_NOTICE:
                self._store_works(src.domain)
                if not failed:
                    return

    def _store_works(self, domain: bytes) -> None:
        """The card of ``domain`` committed a step: forget the ``store_failed`` notices about it (their counts stay,
        so a waiter comparing counts still sees a later failure as new)."""
        self._failed_stores.discard(domain)
        if len(self._cleared_counts) >= MAX_UNDELIVERABLE:
            self._cleared_counts.clear()
        for key in [k for k, u in self.undeliverable.items() if k[1] == domain and u.code == STORE_FAILED]:
            self._cleared_counts[key] = self.undeliverable.pop(key).count
        log.info("%s: card domain %s can write its store again: its store_failed notice is cleared", self.name,
                 domain.hex())  # fmt: skip

    def _remote_notice(self, msg: Message) -> None:
        """A remote host's notice that a local card's message could not be delivered there: remember it."""
        if msg.dst.port == 0 and msg.dst.domain in self.cards:
            self._remember_undeliverable(msg)

    def release(self, held_id: int) -> None:
        """Let a held message continue (past every guard)."""
        h = self.held.pop(held_id)
        self._enqueue(_Entry(h.msg, h.origin, h.ack))

    def discard(self, held_id: int) -> None:
        h = self.held.pop(held_id)
        if h.ack is not None:
            h.ack[0].ack([h.ack[1]])

    def _enqueue(self, entry: _Entry) -> bool:
        """Queue ``entry``; False if the dispatch table is full (``max_queue`` messages, or ``max_queue_bytes`` bytes
        with ``entry``, which fits an empty table whatever its size): it is dropped as a lossy network would (a card's
        output stays unacknowledged in its outbox and comes again), and an application gets ``HostError('busy')``."""
        size = entry.msg.size
        if len(self._queue) >= self.max_queue or (self._queue and self._queued_bytes + size > self.max_queue_bytes):
            self.dropped += 1
            more = self._full_log.due(self._now)
            if more is not None:
                log.warning(
                    "%s: dispatch table full (%d messages, %d bytes): dropped 0x%04x from %s%s",
                    self.name, len(self._queue), self._queued_bytes, entry.msg.mtype, entry.origin.kind, more,
                )  # fmt: skip
            if entry.origin.kind == "app":
                raise HostError("busy", "the host's dispatch table is full: retry later")
            return False
        self._queue.append(entry)
        self._queued_bytes += size
        return True

    # -- the pump ------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        return not self._queue

    @property
    def queued(self) -> int:
        """Messages in the dispatch table now."""
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """Bytes of the messages in the dispatch table now."""
        return self._queued_bytes

    def pump(self, now: float, *, max_group: int | None = None) -> list[SendRemote]:
        """Deliver everything queued (and what that produces locally); return remote sends.

        With ``max_group``, a card steps at most that many messages per
        transaction (the rest stay queued, in order), and once the pump has
        stepped a group it returns as soon as remote sends are ready while card
        steps are still queued: the driver sends them and pumps again while not
        :attr:`idle`, so one transaction's outputs travel while the next one is
        stepped. Every such pump steps at least one group, so no card starves.
        """
        if max_group is not None and max_group < 1:
            raise HostError(
                "bad_config", f"max_group is the most messages a card steps at once: 1 or more, got {max_group}"
            )
        rounds = 0
        stepped = False
        queue = self._queue
        self._now = now
        while queue and rounds < MAX_PUMP_ROUNDS:
            rounds += 1
            entries = list(queue)
            queue.clear()
            self._queued_bytes = 0
            for_cards: dict[bytes, list[_Entry]] = {}
            cards = self.cards
            for e in entries:
                dst = e.msg.dst
                if dst.port == 0 and dst.domain in cards:  # the card proxy (the common case, inlined)
                    batch = for_cards.get(dst.domain)
                    if batch is None:
                        for_cards[dst.domain] = [e]
                    else:
                        batch.append(e)
                else:
                    self._route(e, for_cards)
            if max_group is None:
                for domain, batch in for_cards.items():
                    self._step_card(self.cards[domain], batch, now)
                continue
            if stepped and for_cards and self._outgoing:  # send first; these stay queued ahead of anything newer
                self._requeue([e for batch in for_cards.values() for e in batch])
                break
            later: list[_Entry] = []
            for domain, batch in for_cards.items():
                if len(batch) > max_group:
                    later += batch[max_group:]
                self._step_card(self.cards[domain], batch[:max_group], now)
                stepped = True
            if later:
                self._requeue(later)
        out, self._outgoing = self._outgoing, []
        return out

    def _requeue(self, entries: list[_Entry]) -> None:
        """Put ``entries``, taken from the table by this pump and not stepped yet, back at its head, in order (they
        were admitted already: no bound refuses them)."""
        self._queue.extendleft(reversed(entries))
        self._queued_bytes += sum(e.msg.size for e in entries)

    def _route(self, e: _Entry, for_cards: dict[bytes, list[_Entry]]) -> None:
        dst = e.msg.dst
        if dst.domain in self.cards:
            if dst.port == 0:
                for_cards.setdefault(dst.domain, []).append(e)
                return
            if dst.port == HOST_PORT and e.msg.mtype == _ROUTE and e.origin.kind == "app":
                self._answer_route(e.msg)
                return
            sink = self._sinks.get(dst)
            if sink is not None:
                sink(e.msg)
                self._done(e)
            else:
                self._undeliverable(e, f"no application {dst} on this host")
            return
        address = self.routes.get(dst.domain)
        if address is not None:
            self._outgoing.append(SendRemote(address, e.msg, e.ack))
            return
        self._undeliverable(e, f"no route to domain {dst.domain.hex()}")

    def _step_card(self, card: Card, batch: list[_Entry], now: float) -> None:
        try:
            results = card.step_many([e.msg for e in batch], now)
        except StoreError as exc:
            self._store_failed(card, batch, exc)
            return
        admit = self._admit
        cards = self.cards
        routes = self.routes
        outgoing = self._outgoing
        for e, outs in zip(batch, results, strict=True):
            if e.ack is not None:
                e.ack[0].ack((e.ack[1],))
            for out in outs:  # the card's outputs enter the table like any arrival
                msg = out.msg
                if out.seq is None:  # a refusal (never stored)
                    ack = None
                    if msg.mtype == _CARD_REFUSED:
                        self._refused(card, msg)
                else:
                    ack = (card, out.seq)
                if not admit(msg, CARD, ack):
                    continue
                domain = msg.dst.domain
                address = None if domain in cards else routes.get(domain)
                if address is not None:  # for a remote domain: straight to the remote proxy
                    outgoing.append(SendRemote(address, msg, ack))
                else:
                    self._enqueue(_Entry(msg, CARD, ack))

        if card.used_bytes >= CAPACITY_CLEAR * card.capacity_bytes or card.uid.domain in self._fill_level:
            self._watch_fill(card)
        if self._failed_stores and card.uid.domain in self._failed_stores:
            self._store_works(card.uid.domain)

    def _store_failed(self, card: Card, batch: list[_Entry], exc: StoreError) -> None:
        """``card`` could not commit ``batch`` (its store cannot be written: a full disk, an I/O error); the card is
        as it was before the batch. Nothing in it is acknowledged: a card's or a remote host's message stays in its
        sender's outbox and comes again (``resend_unacked``, the sender's recovery); an application's order is
        answered with ``host.undeliverable`` saying why, as the application sent it once. Every sender hears of it
        at once (code ``store_failed``): a remote card through its host, which remembers it (``host.route``), so
        that whoever waits there for this card (a holder at a gate) learns why instead of waiting for a timeout; a
        local card's notice is remembered here (the card itself has no use for it)."""
        reason = store_failed(card, exc)
        told = 0
        for e in batch:
            kind = e.origin.kind
            if kind == "app":
                self._undeliverable(e, reason, STORE_FAILED)
                told += 1
            elif kind == "remote":
                self._notify(e.msg, reason, STORE_FAILED)
            elif kind == "card" and e.msg.mtype not in NO_NOTICE:
                self._remember_undeliverable(self._notice(e.msg, reason, STORE_FAILED))
        log.error(
            "%s: %s; %d message(s) not taken (their senders send them again), %d application order(s) refused",
            self.name, reason, len(batch) - told, told,
        )  # fmt: skip

    def _watch_fill(self, card: Card) -> None:
        """Warn once when ``card`` fills ``CAPACITY_WARN`` of its capacity, once more at ``CAPACITY_ALARM``."""
        domain, used, capacity = card.uid.domain, card.used_bytes, card.capacity_bytes
        level = 2 if used >= CAPACITY_ALARM * capacity else 1 if used >= CAPACITY_WARN * capacity else 0
        before = self._fill_level.get(domain, 0)
        if level > before:
            last = self._fill_logged.get(domain)
            if last is None or level > last[0] or self._now - last[1] >= FILL_LOG_EVERY_S:
                (log.error if level == 2 else log.warning)(
                    "%s: card %s holds %d of its %d bytes (%.0f %%): at 100 %% it refuses whatever needs more; %s, "
                    "or free records (tokens moved on, acknowledged outputs)",
                    self.name, card.uid, used, capacity, 100 * used / capacity, CAPACITY_HINT,
                )  # fmt: skip
                self._fill_logged[domain] = (level, self._now)
            self._fill_level[domain] = level
        elif used < CAPACITY_CLEAR * capacity:
            self._fill_level.pop(domain, None)

    def _refused(self, card: Card, refusal: Message) -> None:
        """Log a card's ``out_of_memory`` refusal (at most once a minute a card): the operator must act."""
        try:
            p = cm.REFUSED.parse(refusal)
        except DecodeError:
            return
        if p["reason"] != "out_of_memory":
            return
        domain = card.uid.domain
        last = self._full_logged.get(domain)
        if last is not None and self._now - last < FULL_LOG_EVERY_S:
            return
        self._full_logged[domain] = self._now
        log.error(
            "%s: card %s is full and refused 0x%04x from %s: %s; %s",
            self.name, card.uid, p["mtype"], refusal.dst, p["detail"], CAPACITY_HINT,
        )  # fmt: skip

    def _done(self, e: _Entry) -> None:
        if e.ack is not None:
            e.ack[0].ack([e.ack[1]])

    def _undeliverable(self, e: _Entry, reason: str, code: str | None = None) -> None:
        self._done(e)
        self._notify(e.msg, reason, code)

    @staticmethod
    def _notice(msg: Message, reason: str, code: str | None) -> Message:
        """``host.undeliverable`` for ``msg``, to its sender, from its destination."""
        fields: dict[str, object] = {"mtype": msg.mtype, "dst": msg.dst, "reason": reason[:200]}
        if code is not None:
            fields["code"] = code
        return hm.UNDELIVERABLE.make_from(msg.dst, msg.src, fields)

    def _notify(self, msg: Message, reason: str, code: str | None = None) -> None:
        """Send ``msg``'s sender the ``host.undeliverable`` notice (none for a notice or a refusal)."""
        if msg.mtype in NO_NOTICE:
            return
        log.info("%s: undeliverable 0x%04x to %s: %s", self.name, msg.mtype, msg.dst, reason)
        notice = self._notice(msg, reason, code)
        if msg.src.port == 0 and msg.src.domain in self.cards:
            self._remember_undeliverable(notice)
        if self._observers:
            self._show(notice, HOST)  # observers see the host's own notices too; the Guards do not judge them
        self._enqueue(_Entry(notice, HOST))

    def cannot_send(self, eff: SendRemote, reason: str) -> None:
        """The driver will never carry ``eff`` (e.g. it is above its link's frame limit): acknowledge it to its
        card, which would otherwise re-emit it for ever, and send its sender the ``host.undeliverable`` notice."""
        ack, eff._ack = eff._ack, None
        self._undeliverable(_Entry(eff.msg, CARD, ack), reason)

    def too_large_here(self, src: Uid, dst: Uid, mtype: int, size: int, limit: int) -> None:
        """A remote host sent a message above this host's frame limit, which the connection read past: its sender
        gets the ``host.undeliverable`` notice (the remote host acknowledged it to its card when it wrote it)."""
        reason = f"too large for host {self.name}: message is {size} bytes, its frame limit is {limit}"
        self._notify(Message(src, dst, mtype, b""), reason)

    def _remember_undeliverable(self, notice: Message) -> None:
        """Keep the last notice per (card, destination domain); warn once per new reason (the ticks resend)."""
        try:
            p = hm.UNDELIVERABLE.parse(notice)
        except DecodeError:
            return
        key = (notice.dst.domain, p["dst"].domain)
        before = self.undeliverable.get(key)
        if before is None or before.reason != p["reason"]:
            more = self._notice_log.due(self._now)
            if more is not None:
                log.warning(
                    "%s: card %s cannot reach %s: %s%s%s",
                    self.name, notice.dst, p["dst"], p["reason"], self._what_waits(notice.dst, p["mtype"], p["dst"]),
                    more,
                )  # fmt: skip
        if len(self.undeliverable) >= MAX_UNDELIVERABLE and key not in self.undeliverable:
            self.undeliverable.clear()
            self._cleared_counts.clear()
            self._failed_stores.clear()
        count = (self._cleared_counts.pop(key, 0) if before is None else before.count) + 1
        code = p.get("code")
        self.undeliverable[key] = Undelivered(p["reason"], self._now, code, count)
        if code == STORE_FAILED:
            self._failed_stores.add(key[1])

    def _what_waits(self, card: Uid, mtype: int, dst: Uid) -> str:
        """What waits on ``card`` for ``dst``, in words fitting the message that could not go (its protocol): the
        warning's ending, on the failure path only. A session's records carry a transfer, or an exchange's request
        when ``dst`` is the TTP the card follows; an exchange's (fairx) messages an exchange; others say nothing."""
        try:
            protocol = lookup(mtype).protocol
        except DecodeError:
            return ""
        if protocol == "fairx":
            return EXCHANGE_WAITS
        if protocol == "session":
            local = self.cards.get(card.domain)
            ttp = None if local is None else followed_ttp(local)
            return TTP_WAITS if ttp is not None and ttp.domain == dst.domain else TRANSFER_WAITS
        return TRANSFER_WAITS if protocol == "trn" else ""

    def _answer_route(self, msg: Message) -> None:
        """``host.route {domain}`` from a local application: can this host reach that domain, and how did it go."""
        try:
            domain = hm.ROUTE.parse(msg)["domain"]
        except DecodeError as exc:
            self._enqueue(_Entry(hm.REFUSED.make(msg.dst, msg.src, mtype=msg.mtype, reason=str(exc)[:200]), HOST))
            return
        fields: dict[str, object] = {"domain": domain}
        if domain in self.cards:
            fields["where"] = "local"
        elif domain in self.routes:
            fields |= {"where": "route", "address": self.routes[domain]}
        else:
            fields["where"] = "none"
        last = self.undeliverable.get((msg.dst.domain, domain))
        if last is not None:
            fields |= {"undeliverable": last.reason[:200], "undeliverable_at": max(0, int(last.at)),
                       "undeliverable_count": last.count}  # fmt: skip
            if last.code is not None:
                fields["undeliverable_code"] = last.code
        self._enqueue(_Entry(hm.ROUTE_IS.make_from(msg.dst, msg.src, fields), HOST))

    # -- timers (the driver owns the clock: see Schedule) ---------------------------------------
    def tick(self, domain: bytes, mtype: MType) -> None:
        """Queue ``mtype`` (no fields) for the card of ``domain``, from the host port (e.g. ``trn.recover``).

        Ticks skip the Guards, like the host's own notices. The card's answers to the host port, if any, are
        taken by the host (a refusal is logged).
        """
        card = self.card(domain)
        src = Uid(domain, HOST_PORT)
        if src not in self._sinks:
            self._sinks[src] = self._tick_answer
        self._enqueue(_Entry(mtype.make(src, card.uid), HOST))

    def _tick_answer(self, msg: Message) -> None:
        if msg.mtype == cm.REFUSED.code:
            log.warning("%s: card %s refused a tick: %r", self.name, msg.src, msg.param[:200])

    def resend_unacked(self) -> int:
        """Re-emit card outputs the host lost track of; returns how many.

        An output that is unacknowledged but neither queued nor held was not
        passed on (its link was full or gone, a card step failed, ...) and
        would otherwise wait for the card to be reopened. Only outputs found so
        at two sweeps in a row are re-emitted, so a ``SendRemote`` the driver
        has not reported ``sent()`` yet gets a whole period first. Call it
        every few seconds; protocols tolerate the duplicates. Outputs the driver holds (:attr:`passed_on`: a
        link's, until the remote host confirms them) are not re-emitted either.
        """
        live = {e.ack for e in self._queue if e.ack is not None}
        live.update(self.passed_on())
        live.update(h.ack for h in self.held.values() if h.ack is not None)
        suspects: set[tuple[Card, int]] = set()
        resent = 0
        for card in self.cards.values():
            for out in card.outbox():
                key = (card, out.seq) if out.seq is not None else None
                if key is None or key in live:
                    continue
                if key in self._suspects:
                    self._enqueue(_Entry(out.msg, CARD, key))
                    resent += 1
                else:
                    suspects.add(key)
        self._suspects = suspects
        if resent:
            log.info("%s: re-emitted %d unacknowledged card output(s)", self.name, resent)
        return resent


@dataclass
class Schedule:
    """Periodic jobs, sans-I/O: the driver sleeps until :meth:`deadline` and then runs :meth:`due`.

    ``jobs`` maps a key to its period in seconds; the first run of each is one period after ``now``. A late
    driver runs a job once, not once per missed period (the next run is one period after the late one).
    """

    jobs: dict[object, float]
    now: float
    _next: dict[object, float] = field(init=False)

    def __post_init__(self) -> None:
        for key, every_s in self.jobs.items():
            if not every_s > 0:
                raise HostError("bad_config", f"timer {key}: the period must be > 0 seconds, got {every_s}")
        self._next = {key: self.now + every_s for key, every_s in self.jobs.items()}

    def deadline(self) -> float | None:
        """When the next job is due (the driver's clock), or None if there are no jobs."""
        return min(self._next.values(), default=None)

    def due(self, now: float) -> list[object]:
        """The jobs due at ``now``, each scheduled again one period later."""
        out = [key for key, at in self._next.items() if at <= now]
        for key in out:
            self._next[key] = now + self.jobs[key]
        return out
