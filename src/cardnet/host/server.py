"""The asyncio driver of a host process: ``cardnet host run --config FILE``.

It owns the sockets and the clock; the :class:`~cardnet.host.core.Host` owns
the logic. Three kinds of traffic:

* **applications** connect to the Unix socket ``app_socket``. The first frame
  must be ``host.acquire``; the host gets a port from a card and answers
  ``host.acquired {uid}``. From then on the connection *is* that Uid: a frame
  whose ``src`` is anything else is refused (``host.refused``) and logged —
  this is where TENeT's capability lives for untrusted application processes.
* **remote hosts** connect to ``listen`` (TCP, optionally mutual TLS); what
  they send is submitted as remote traffic, so the default Guard applies.
* **outgoing** remote traffic goes through one reconnecting link per address
  (its queue holds ``LINK_QUEUE`` messages, ``LINK_QUEUE_BYTES`` bytes; what does not fit is logged and
  stays unacknowledged in its card's outbox). A card's output is acknowledged to it once the remote host
  confirmed it took it (``host.taken``, :class:`Taken` on the other side); the link writes what a connection did
  not confirm again (docs/host.md, "Host to host").

A timer task owns the host's periodic jobs (:class:`~cardnet.host.core.Schedule`
on the event loop's monotonic clock): each card's ``ticks`` from the config
(by default ``trn.recover`` every 2 s for a card with the ``trn`` applet, so
unfinished transfers, traces and handshakes are resent without any
application asking; ``trn.recover`` also runs once at start, so a restarted
host resumes at once) and, every ``resend_after_s``, the re-emission of card
outputs the host could not pass on (``Host.resend_unacked``).

Every arrival wakes one pump task; a pump steps each card once for everything
queued for it, up to ``MAX_GROUP`` messages (group commit), so the more
traffic, the fewer fsyncs per message. Traffic moves in batches: a remote
connection hands over everything decoded from one read at once, and a link
writes everything queued for it with one system call per batch. A group's
remote sends are handed to the links before the next group is stepped, so two
hosts exchanging many messages work on different groups at the same time
instead of waiting for each other's whole batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Coroutine, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cardnet.applets.registry import make_applets
from cardnet.card import Card
from cardnet.card import mtypes as cm
from cardnet.crypto import pki
from cardnet.crypto.errors import PkiError
from cardnet.errors import CardnetError
from cardnet.host import mtypes as hm
from cardnet.host.adversary import Adversary
from cardnet.host.config import SERVICE_CAPACITY, CardConfig, HostConfig
from cardnet.host.core import REMOTE_LOG_BURST, REMOTE_LOG_EVERY_S, Ack, Host, Origin, Schedule, SendRemote, all_sent
from cardnet.host.errors import HostError
from cardnet.store import StoreError, open_store
from cardnet.transport import (
    BrokenError,
    CannotListen,
    ClosedError,
    Connection,
    Limits,
    ReconnectingLink,
    ServerLimits,
    SkippedFrame,
    TcpConnection,
    TcpServer,
    TransportError,
    dialer,
    fit_queue,
    send_batch,
    tls_contexts,
)
from cardnet.transport.base import LogThrottle
from cardnet.wire import DecodeError, Message, Uid
from cardnet.wire.mtypes import by_name, lookup

log = logging.getLogger("cardnet.host")

APP_QUEUE = 4096  # messages waiting for a slow application before the host drops them
APP_QUEUE_BYTES = 32 * 1024 * 1024  # ... and bytes of them (one message of any size fits an empty queue)
APP_WRITE_BATCH = 256  # messages written to an application at once
MAX_GROUP = 256  # messages a card steps in one transaction at most (then its outputs are sent first)
LINK_QUEUE = 16_384  # messages waiting to be sent to one remote address (a few group commits' outputs)
# bytes of the messages waiting for one remote address: a remote peer sending messages for a route that is down (or
# slow) at full speed could otherwise fill the host's memory (LINK_QUEUE messages of up to max_frame bytes each)
LINK_QUEUE_BYTES = 64 * 1024 * 1024
# Remote traffic is read only while the dispatch table holds fewer than REMOTE_PAUSE messages and REMOTE_PAUSE_BYTES
# bytes (then again once the pump brought it under half of that), REMOTE_SLICE messages of a connection's read at a
# time: a peer sending faster than the cards step waits in its socket (TCP pushes back on it) instead of filling the
# table, and every remote connection (and the links' replies) gets its turn. Before, the host read everything and
# dropped what did not fit: 300 connections sending cheap messages kept the table full, so a well-behaved host's
# messages were dropped and every application's order refused busy for as long as they sent
# (tests/integration/test_host_remote_fair.py).
REMOTE_PAUSE = 2048
REMOTE_PAUSE_BYTES = 16 * 1024 * 1024
REMOTE_SLICE = 16
_RESEND = "resend"  # the timer job that re-emits unacknowledged card outputs
# An application connection that tried the PIN is logged out of its card (card.logout, queued after what it sent)
# when it ends: a card keeps the Uids that proved the PIN until it is reopened, and ports are never reused, so each
# command that verified the PIN and closed (cardnet trn send, ...) left one more for the host's lifetime
# (tests/integration/test_app_socket.py::test_a_closed_application_is_logged_out_of_its_card).
_PIN_VERIFY = cm.PIN_VERIFY.code
_NOBODY = Uid(bytes(12), 0)  # src and dst of host.taken (host to host: no card's)
# What to do when the config's `listen` cannot be listened on, by CannotListen.why
LISTEN_HINTS = {
    "in_use": "another process (another host?) listens on that port: stop it, or choose another port in the "
    "config's listen",
    "not_here": "give the config's listen an address of this machine (127.0.0.1 for this machine only, 0.0.0.0 "
    "for every network)",
    "not_permitted": "choose a port of 1024 or above in the config's listen",
    "other": "check the config's listen (HOST:PORT of this machine)",
}


START_TICKS = frozenset({"trn.recover"})  # ticks that also run at start (not e.g. session.rekey: a start is no rekey)


@dataclass(frozen=True)
class _Tick:
    """The timer job that sends ``mtype`` to the card of ``domain``."""

    domain: bytes
    mtype: int  # the code (an MType's schema is not hashable)


def open_cards(config: HostConfig) -> list[Card]:
    """Open the configured cards' stores, each of which must hold a personalised card: a missing store is
    refused, never created (a mistyped ``cards[i].store`` would otherwise start an empty card)."""
    cards: list[Card] = []
    try:
        for i, cc in enumerate(config.cards):
            cards.append(_open_card(i, cc))
    except BaseException:
        for card in cards:
            card.close()
        raise
    return cards


def _open_card(i: int, cc: CardConfig) -> Card:
    try:
        store = open_store(cc.store, exclusive=cc.exclusive, create=False)  # the host owns its cards while it runs
    except StoreError as exc:
        if exc.reason == "missing":
            path = cc.store.removeprefix("sqlite://")[1:] if cc.store.startswith("sqlite:///") else cc.store
            raise HostError(
                "missing",
                f"cards[{i}].store: there is no card store {path} (the host created none)",
                hint=f"check cards[{i}].store in the config; a new card is made first with "
                f"`cardnet card create --ca CA --store {cc.store}`",
            ) from None
        raise HostError(exc.reason, f"cards[{i}].store: {exc}", hint=exc.hint) from None
    try:
        card = Card(store, applets=make_applets(list(cc.applets)), capacity_bytes=cc.capacity_bytes)
    except StoreError as exc:  # (a store damaged past its header: SQLite opened it, reading the card failed)
        store.close()
        raise HostError(exc.reason, f"cards[{i}].store: {exc}", hint=exc.hint) from None
    if not card.personalised:
        card.close()
        raise HostError(
            "bad_config",
            f"cards[{i}].store: the card in {cc.store} is not personalised; run `cardnet card create` first",
        )
    if not cc.capacity_given and _role(card) in (pki.Role.AGENT, pki.Role.SERVICE):
        card.capacity_bytes = max(card.capacity_bytes, SERVICE_CAPACITY)  # (host/config.py: why)
    _say_expiry(card, cc.store, datetime.now(UTC))
    return card


RENEW_WITHIN = timedelta(days=30)  # a card whose certificate ends sooner is warned of when its host starts


def _say_expiry(card: Card, store: str, now: datetime) -> None:
    """Log when ``card``'s certificate has run out (every peer refuses it) or runs out within ``RENEW_WITHIN``."""
    try:
        until = pki.cert_from_der(card.certificate_der).not_valid_after_utc
    except PkiError:
        return  # (the card checked its certificate when it opened)
    how = f"renew it while this host is stopped: `cardnet card renew --ca CA --store {store}`"
    if until <= now:
        log.error("card %s: its certificate ran out at %s UTC: other cards refuse it; %s", card.uid,
                  f"{until:%Y-%m-%d %H:%M}", how)  # fmt: skip
    elif until - now <= RENEW_WITHIN:
        log.warning("card %s: its certificate runs out at %s UTC (in %d days); %s", card.uid,
                    f"{until:%Y-%m-%d %H:%M}", (until - now).days, how)  # fmt: skip


def _role(card: Card) -> pki.Role | None:
    try:
        return pki.role_of(pki.cert_from_der(card.certificate_der))
    except CardnetError:
        return None


class Carrier:
    """Sends remote traffic over a connection this host did not dial (see :meth:`HostServer.carry`).

    Like a link's queue: at most ``LINK_QUEUE`` messages (``LINK_QUEUE_BYTES`` bytes) wait; what does not fit stays
    unacknowledged in its card's outbox and is re-emitted later (``resend_unacked``). A message above the
    connection's frame limit is refused when it is queued (``oversize``, as a link does): the host sends its card a
    ``host.undeliverable`` notice instead. Should one reach the writer anyway, it costs only itself
    (:func:`~cardnet.transport.send_batch`): it is left out and logged, the others are written in order and the
    writer goes on.
    """

    def __init__(self, conn: Connection, label: str) -> None:
        self.conn = conn
        self.label = label
        self._queue: deque[Message] = deque()
        self._queued_bytes = 0
        self._ready = asyncio.Event()

    def send_many_nowait(self, msgs: Sequence[Message]) -> int:
        """Queue ``msgs`` in order up to the first one :meth:`send_nowait` would refuse; how many (as a link)."""
        n, size = fit_queue(msgs, LINK_QUEUE - len(self._queue), LINK_QUEUE_BYTES, self._queued_bytes,
                            self.conn.limits.max_frame)  # fmt: skip
        if n:
            self._queue.extend(msgs[:n])
            self._queued_bytes += size
            self._ready.set()
        return n

    def send_nowait(self, msg: Message) -> None:
        """Queue ``msg``; ``TransportError('oversize')`` above the connection's frame limit (it would never fit),
        ``queue_full`` when ``LINK_QUEUE`` messages wait."""
        max_frame = self.conn.limits.max_frame
        if msg.size > max_frame:
            raise TransportError(
                "oversize", f"message is {msg.size} bytes, the frame limit is {max_frame}: send it in chunks"
            )
        if self.send_many_nowait([msg]) != 1:
            raise TransportError(
                "queue_full", f"{self.label} already queues {len(self._queue)} messages, {self._queued_bytes} bytes"
            )

    async def write(self) -> None:
        """Write what is queued until the connection ends (an oversize message is left out, see the class)."""
        with contextlib.suppress(ClosedError, BrokenError):
            while True:
                while not self._queue:
                    self._ready.clear()
                    await self._ready.wait()
                batch = list(self._queue)
                self._queue.clear()
                self._queued_bytes = 0
                await send_batch(self.conn, batch)  # no refusal to put in an oversize message's place: left out


def _taken_runs(msg: Message) -> list[int]:
    """``host.taken``'s runs (none if it does not parse: the messages stay in flight and are sent again)."""
    try:
        runs: list[int] = hm.TAKEN.parse(msg)["runs"]
    except DecodeError:
        return []
    return runs


def _all_taken(tokens: list[object]) -> None:
    all_sent(tokens)  # type: ignore[arg-type]  # (a link's tokens are this host's SendRemote effects)


class Taken:
    """The messages a remote host sent on one connection that this host has taken (``host.taken``): the host
    acknowledges each by its number on the connection (``ack``, like a card's outbox); a writer task sends them to
    the remote host in runs, after the pump that took them."""

    __slots__ = ("_done", "_ready")

    def __init__(self) -> None:
        self._done: list[int] = []
        self._ready = asyncio.Event()

    def ack(self, seqs: Iterable[int]) -> None:
        self._done.extend(seqs)
        self._ready.set()

    async def write(self, conn: Connection) -> None:
        """Confirm what was taken, as it is, until the connection ends."""
        with contextlib.suppress(ClosedError, BrokenError):
            while True:
                await self._ready.wait()
                self._ready.clear()
                done, self._done = sorted(self._done), []
                runs: list[int] = []
                for k in done:
                    if runs and runs[-2] + runs[-1] == k:
                        runs[-1] += 1
                    else:
                        runs += (k, 1)
                for i in range(0, len(runs), hm.TAKEN_RUNS):
                    await conn.send(hm.TAKEN.make(_NOBODY, _NOBODY, runs=runs[i : i + hm.TAKEN_RUNS]))


class AppOutbox:
    """What the host has for one application on its socket: at most ``APP_QUEUE`` messages, ``APP_QUEUE_BYTES``
    bytes of them, wait for its writer (a remote peer may send to an application's Uid: a count alone let one make
    the host hold ``APP_QUEUE`` messages of up to a frame each).

    An application that does not read its socket fills it; what does not fit is dropped (the card's output was
    acknowledged already: its sink took it), and so is a message above the connection's frame limit. Neither is
    silent: the application gets ``host.missed {count, mtype}`` (how many, the first one's type) in their place
    in the stream, as soon as there is room again (the writer took a batch, or the next message comes), so it
    knows to read its card's state again. The log says once when an application starts missing messages and once
    how many it missed when it is told.
    """

    def __init__(self, uid: Uid, max_frame: int, label: str) -> None:
        self.uid = uid
        self.max_frame = max_frame
        self.label = label
        self.missed = 0  # dropped since the last notice
        self.missed_total = 0
        self._first_missed = 0
        self._queue: deque[Message] = deque()
        self._queued_bytes = 0
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._queue)

    def put(self, msg: Message) -> None:
        """Queue ``msg`` for the application (never waits), or drop it and count it for the notice."""
        if msg.size > self.max_frame:
            if self.missed:
                self._notice()  # in the dropped messages' place, before anything newer
            self._drop(msg, f"cannot take a {msg.size}-byte message (the frame limit is {self.max_frame})")
            self._notice()
        elif not fit_queue([msg], APP_QUEUE - len(self._queue), APP_QUEUE_BYTES, self._queued_bytes)[0]:
            self._drop(msg, "is not reading")  # (no notice while full: one, with the count, once there is room)
        else:
            if self.missed:
                self._notice()  # in the dropped messages' place, before this one
            self._queue.append(msg)
            self._queued_bytes += msg.size
            self._ready.set()

    async def take(self) -> list[Message]:
        """The messages waiting (at least one, at most ``APP_WRITE_BATCH``), oldest first."""
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        queue = self._queue
        batch = [queue.popleft() for _ in range(min(len(queue), APP_WRITE_BATCH))]
        self._queued_bytes -= sum(m.size for m in batch)
        if self.missed:
            self._notice()  # there is room again
        return batch

    def _drop(self, msg: Message, why: str) -> None:
        if not self.missed:
            log.warning("%s: application %s %s: dropped 0x%04x (it is told how many it missed, host.missed)",
                        self.label, self.uid, why, msg.mtype)  # fmt: skip
            self._first_missed = msg.mtype
        self.missed += 1
        self.missed_total += 1

    def _notice(self) -> None:
        if len(self._queue) >= APP_QUEUE:
            return
        count, self.missed = self.missed, 0
        log.warning("%s: application %s missed %d message(s) (the first 0x%04x): told it", self.label, self.uid,
                    count, self._first_missed)  # fmt: skip
        notice = hm.MISSED.make(self.uid.card_uid(), self.uid, count=min(count, 0xFFFFFFFF), mtype=self._first_missed)
        self._queue.append(notice)
        self._queued_bytes += notice.size
        self._ready.set()


class HostServer:
    def __init__(self, config: HostConfig, *, rng: random.Random | None = None) -> None:
        self.config = config
        self.cards = open_cards(config)
        routes = {d: f"{h}:{p}" for d, (h, p) in config.routes.items()}
        self.host = Host(self.cards, routes=routes, name=config.name)
        self.host.passed_on = self._passed_on
        # "cannot send" warnings: a remote peer that makes a card answer toward a route that is down (or full) would
        # otherwise have one line written per pump, at its speed
        self._send_log = LogThrottle(REMOTE_LOG_EVERY_S, REMOTE_LOG_BURST)
        self.adversary: Adversary | None = None
        if config.adversary is not None:
            a = config.adversary
            self.adversary = Adversary(
                a, frozenset(by_name(m).code for m in a.mtypes), self.host.cards.keys, random.Random(a.seed)
            )
            self.host.guards.append(self.adversary.guard())
            log.warning("%s: adversary on: drops %s (out %.2f, in %.2f)", config.name, a.mtypes, a.drop_out, a.drop_in)
        self.limits = Limits(max_frame=config.max_frame)
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()  # set while the dispatch table has room for remote traffic (REMOTE_PAUSE)
        self._room.set()
        self._links: dict[str, ReconnectingLink] = {}
        self._carriers: dict[str, Carrier] = {}
        self._carried = 0
        # domain -> (the route its first carrier replaced, None: none; its open carriers' keys, oldest first)
        self._carrying: dict[bytes, tuple[str | None, list[str]]] = {}
        self._app_outboxes: dict[Uid, AppOutbox] = {}  # the connected applications' (for app_missed)
        self._tcp: TcpServer | None = None
        self._unix: TcpServer | None = None
        self._server_tls: ssl.SSLContext | None = None
        self._client_tls: ssl.SSLContext | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._jobs: dict[object, float] = {}
        for card, cc in zip(self.cards, config.cards, strict=True):
            for name, every_s in cc.ticks:
                self._jobs[_Tick(card.uid.domain, by_name(name).code)] = every_s
        if config.resend_after_s > 0:
            self._jobs[_RESEND] = config.resend_after_s
        if config.tls is not None:
            self._server_tls, self._client_tls = tls_contexts(
                config.tls.cert.read_bytes(), config.tls.key.read_bytes(), config.tls.ca.read_bytes()
            )

    @property
    def app_missed(self) -> int:
        """Messages dropped for the applications connected now (each application was or will be told)."""
        return sum(o.missed_total for o in self._app_outboxes.values())

    @property
    def listen_address(self) -> tuple[str, int] | None:
        return self._tcp.address if self._tcp is not None else None

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise

    async def _start(self) -> None:
        # The application socket first: a second host given a live host's socket stops here, having bound nothing.
        sock = self.config.app_socket
        app_limits = ServerLimits(
            max_connections=self.config.app_max_connections,
            max_per_peer=self.config.app_max_connections,
            handshake_timeout_s=self.config.server_limits.handshake_timeout_s,
            idle_timeout_s=None,  # applications wait for messages as long as they like; the socket is 0600
            send_timeout_s=None,  # and read them when they like: what waits for a slow one is APP_QUEUE, then dropped
        )
        self._unix = TcpServer(limits=self.limits, server_limits=app_limits)
        try:
            await self._unix.start_unix(sock, self._accept_app)
        except TransportError as exc:
            if exc.reason != "in_use":
                raise HostError("bad_config", f"app_socket: {exc}") from None
            raise HostError(
                "in_use",
                f"app_socket {sock} is the socket of a running host: stop that host first, "
                "or give this host another app_socket in its config",
            ) from None
        if self.config.listen is not None:
            self._tcp = TcpServer(limits=self.limits, server_limits=self.config.server_limits)
            h, p = self.config.listen
            try:
                await self._tcp.start(h, p, self._serve_remote, self._server_tls)
            except CannotListen as exc:
                where = f'cannot listen on {h}:{p} (the config\'s listen = "{h}:{p}")'
                raise HostError("cannot_listen", f"{where}: {exc.words}", hint=LISTEN_HINTS[exc.why]) from None
        self._spawn(self._pump_loop())
        if self._jobs:
            self._spawn(self._timer_loop())
        self.wake()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def wake(self) -> None:
        self._wake.set()

    # -- the pump ----------------------------------------------------------------
    async def _pump_loop(self) -> None:
        while not self._stopping.is_set():
            await self._wake.wait()
            self._wake.clear()
            effects = self.host.pump(time.time(), max_group=MAX_GROUP)
            if effects:
                self._send_remote(effects)
            if not self._room.is_set() and (
                self.host.queued < REMOTE_PAUSE // 2 and self.host.queued_bytes < REMOTE_PAUSE_BYTES // 2
            ):
                self._room.set()
            if not self.host.idle:
                # More card steps are queued: let the links write these sends first, then pump again.
                # (When idle, waiting for the next wake lets the links write and arrivals gather.)
                self._wake.set()
                await asyncio.sleep(0)

    async def _timer_loop(self) -> None:
        """Ticks and re-emission, on the loop's monotonic clock (the core reads none)."""
        loop = asyncio.get_running_loop()
        schedule = Schedule(self._jobs, loop.time())
        # A card's recovery tick runs once at start too: what a crash interrupted resumes now, not one period
        # later (the outputs a link had taken but not yet written died with the process, and only the card's
        # recovery sends them again)
        for job in self._jobs:
            if isinstance(job, _Tick) and lookup(job.mtype).name in START_TICKS:
                self._run_job(job)
        self.wake()
        while not self._stopping.is_set():
            deadline = schedule.deadline()
            assert deadline is not None
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            for job in schedule.due(loop.time()):
                self._run_job(job)
            self.wake()

    def _run_job(self, job: object) -> None:
        try:
            if isinstance(job, _Tick):
                self.host.tick(job.domain, lookup(job.mtype))
            else:
                for link in self._links.values():
                    link.sweep()
                self.host.resend_unacked()
        except Exception:  # a failed job must not stop the others (it runs again next period)
            log.exception("%s: timer job %s failed", self.config.name, job)

    def _passed_on(self) -> list[Ack]:
        """The acknowledgements of card outputs the links hold until the remote hosts confirm them."""
        return [
            eff._ack
            for link in self._links.values()
            for eff in link.tokens()
            if isinstance(eff, SendRemote) and eff._ack is not None
        ]

    def _link(self, address: str) -> ReconnectingLink:
        link = self._links.get(address)
        if link is None:
            host, _, port = address.rpartition(":")
            link = ReconnectingLink(
                dialer(host, int(port), self._client_tls, limits=self.limits),
                rng=self._rng,
                max_queue=LINK_QUEUE,
                max_queue_bytes=LINK_QUEUE_BYTES,
                max_frame=self.config.max_frame,
                label=f"{self.config.name}->{address}",
                confirm_mtype=hm.TAKEN.code,
                parse_confirm=_taken_runs,
                on_taken=_all_taken,
            )
            link.start()
            self._links[address] = link
            self._spawn(self._drain_link(link))
        return link

    def _send_remote(self, effects: list[SendRemote]) -> None:
        """Queue each message on its address's link (never waits); acknowledge them once the remote host confirmed
        them (``host.taken``: the link calls ``all_sent``), or, on a carrier, once it took them."""
        by_address: dict[str, list[SendRemote]] = {}
        for eff in effects:
            got = by_address.get(eff.address)
            if got is None:
                by_address[eff.address] = [eff]
            else:
                got.append(eff)
        for address, effs in by_address.items():
            carrier = self._carriers.get(address)
            link = self._link(address) if carrier is None else None
            try:
                if carrier is not None:
                    taken = carrier.send_many_nowait([eff.msg for eff in effs])
                    all_sent(effs[:taken])
                else:  # acknowledged once the remote host confirms them (host.taken)
                    assert link is not None
                    taken = link.send_many_nowait([eff.msg for eff in effs], effs)
            except TransportError:
                taken = 0
            failed: dict[str, int] = {}
            for eff in effs[taken:]:  # the link is full, closed or gave up, or a message is too big
                try:
                    if carrier is not None:
                        carrier.send_nowait(eff.msg)
                        eff.sent()
                    else:
                        assert link is not None
                        link.send_nowait(eff.msg, eff)
                except TransportError as exc:
                    if exc.reason == "oversize":  # it never fits: its sender is told, as for any undeliverable one
                        self.host.cannot_send(eff, f"too large for the link to {address}: {exc}")
                        self.wake()
                    failed[str(exc)] = failed.get(str(exc), 0) + 1
                    # (otherwise unacknowledged: re-emitted later, see resend_after_s)
            for why, n in failed.items():
                more = self._send_log.due(time.monotonic())
                if more is not None:
                    log.warning("%s: cannot send %d message(s) to %s: %s%s", self.config.name, n, address, why, more)

    async def _remote_turn(self) -> None:
        """Return at once while the dispatch table has room (REMOTE_PAUSE), else once the pump made room; meanwhile
        the caller reads nothing from its connection. Every connection woken goes on (one slice, REMOTE_SLICE, before
        it looks again): one that looked again once woken went back to the end of the line whenever those woken
        before it had filled the room, and with 200 flooding connections a well-behaved one never got through."""
        host = self.host
        if host.queued >= REMOTE_PAUSE or host.queued_bytes >= REMOTE_PAUSE_BYTES:
            self._room.clear()
            self.wake()
            await self._room.wait()

    async def _drain_link(self, link: ReconnectingLink) -> None:
        """Replies could come back on our outgoing connection too; accept them as remote traffic."""
        with contextlib.suppress(ClosedError, BrokenError):
            while True:
                await self._remote_turn()
                msg = await link.recv()
                self.host.receive_remote(msg, link.label)
                self.wake()

    # -- remote hosts ---------------------------------------------------------------
    async def _serve_remote(self, conn: TcpConnection) -> None:
        """A remote host's connection: its messages numbered in the order they came, a frame read past (above the
        frame limit, docs/host.md "Delivery") at its own place among them, so that ``host.taken`` confirms to the
        sender exactly what it took."""
        origin = Origin("remote", conn.peer.label)
        host = self.host
        taken = Taken()
        count = 0  # messages numbered so far
        before = 0  # frames read past that came before message ``count``
        skips: deque[int] = deque()  # the places (``after``) of frames read past, told and not yet passed

        def too_large(frame: SkippedFrame) -> None:  # told in order, before the messages after it are handed out
            taken.ack((frame.after + before + len(skips),))  # the messages and the frames read past before it
            skips.append(frame.after)
            self._too_large(frame)

        conn.on_skipped = too_large
        writer = asyncio.get_running_loop().create_task(taken.write(conn))
        try:
            with contextlib.suppress(ClosedError, BrokenError):
                read: list[Message] = []  # read from the connection, not yet submitted (REMOTE_SLICE at a time)
                while True:
                    if not read:
                        await self._remote_turn()
                        read = await conn.recv_many()
                    elif host.queued >= REMOTE_PAUSE or host.queued_bytes >= REMOTE_PAUSE_BYTES:
                        await self._remote_turn()
                    else:
                        await asyncio.sleep(0)  # the other connections' turn, and the pump's
                    if len(read) <= REMOTE_SLICE or host.queued < MAX_GROUP:  # the cards want more: all of it
                        msgs, read = read, []
                    else:
                        msgs, read = read[:REMOTE_SLICE], read[REMOTE_SLICE:]
                    if not skips:
                        self.host.receive_many(msgs, origin, (taken, count + before))
                    else:  # numbers around the frames read past among these messages
                        i = 0
                        while i < len(msgs):
                            while skips and skips[0] <= count + i:
                                skips.popleft()
                                before += 1
                            j = len(msgs) if not skips else min(len(msgs), skips[0] - count)
                            self.host.receive_many(msgs[i:j], origin, (taken, count + i + before))
                            i = j
                    count += len(msgs)
                    self.wake()
                    self._heard_from(msgs)
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    def _too_large(self, frame: SkippedFrame) -> None:
        """A remote host sent a message above our frame limit (read past, the connection goes on): tell its sender."""
        self.host.too_large_here(frame.src, frame.dst, frame.mtype, frame.size, frame.limit)
        self.wake()

    def _heard_from(self, msgs: Sequence[Message]) -> None:
        """A remote host spoke to us: a link to it that is waiting out a backoff (it was down, e.g. restarted) dials
        now instead of up to a backoff delay later, when a reply to what it just sent would be waiting."""
        if all(link.connected for link in self._links.values()):
            return
        routes = self.host.routes
        for address in {routes.get(m.src.domain) for m in msgs}:
            link = self._links.get(address) if address is not None else None
            if link is not None:
                link.poke()

    async def carry(self, conn: Connection, domains: Iterable[bytes], *, label: str) -> None:
        """Carry the remote traffic of ``domains`` over ``conn`` until it ends (TRN paper 5.1).

        ``conn`` was made by someone else: an upgraded HTTP connection of the ticketing server, or an
        application relaying one (``host.relay`` on the app socket). While it is open, messages for those
        domains go out on it (the route wins over a configured one, which comes back afterwards) and what it
        delivers is submitted as remote traffic (the Guards apply); a message from any other domain is dropped.
        Messages still queued when it ends stay unacknowledged and are re-emitted later.
        """
        wanted = frozenset(domains)
        local = wanted & self.host.cards.keys()
        if local:
            raise HostError("bad_route", f"domain {next(iter(local)).hex()} is a card of this host: nothing to carry")
        self._carried += 1
        key = f"carrier#{self._carried} ({label})"
        carrier = Carrier(conn, key)
        self._carriers[key] = carrier
        for d in wanted:
            if d not in self._carrying:  # the first carrier of d: remember the route it replaces (configured, or none)
                self._carrying[d] = (self.host.routes.get(d), [])
            self._carrying[d][1].append(key)
            self.host.routes[d] = key
        writer = asyncio.get_running_loop().create_task(carrier.write())
        origin = Origin("remote", label)
        conn.on_skipped = self._too_large
        try:
            with contextlib.suppress(ClosedError, BrokenError):
                while not writer.done():
                    await self._remote_turn()
                    msgs = await conn.recv_many()
                    good = [m for m in msgs if m.src.domain in wanted]
                    if len(good) < len(msgs):
                        log.warning("%s: %s sent %d message(s) from other domains: dropped", self.config.name,
                                    label, len(msgs) - len(good))  # fmt: skip
                    self.host.receive_many(good, origin)
                    self.wake()
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            self._carriers.pop(key, None)
            for d in wanted:
                self._uncarry(d, key)

    def _uncarry(self, domain: bytes, key: str) -> None:
        """Carrier ``key`` of ``domain`` ended: the route goes to the newest carrier of it still open, else back to
        the one the first carrier replaced. (Restoring what this carrier replaced would, when two carriers of one
        domain end in the order they began, route to the first, already gone.)"""
        before, open_keys = self._carrying[domain]
        open_keys.remove(key)
        if open_keys:
            self.host.routes[domain] = open_keys[-1]
            return
        del self._carrying[domain]
        if before is None:
            self.host.routes.pop(domain, None)
        else:
            self.host.routes[domain] = before

    # -- applications -----------------------------------------------------------------
    async def _accept_app(self, conn: TcpConnection) -> None:
        uid: Uid | None = None
        verified = False  # it tried the PIN: the card may hold its Uid in its authenticated set
        writer_task: asyncio.Task[None] | None = None
        try:
            first = await conn.recv()
            if first.mtype == hm.RELAY.code:
                await self._relay(conn, first)
                return
            if first.mtype != hm.ACQUIRE.code:
                await conn.send(
                    hm.REFUSED.make(first.dst, first.src, mtype=first.mtype, reason="send host.acquire first")
                )
                return
            domain = hm.ACQUIRE.parse(first).get("card")
            try:
                uid = self.host.allocate_port(domain, time.time())
            except HostError as exc:
                why = str(exc)[:200]
                await conn.send(hm.REFUSED.make(first.dst, first.src, mtype=first.mtype, reason=why, code=exc.reason))
                return

            outbox = AppOutbox(uid, conn.limits.max_frame, self.config.name)
            self.host.attach_app(uid, outbox.put)
            await conn.send(hm.ACQUIRED.make(uid.card_uid(), uid, uid=uid))
            self._app_outboxes[uid] = outbox
            writer_task = asyncio.get_running_loop().create_task(self._app_writer(conn, outbox))
            host = self.host
            turn = 0  # messages submitted since this connection last let the others have their turn
            async for msg in conn:
                if host.queued >= MAX_GROUP:  # the table is busy: take turns, as remote connections do
                    turn += 1
                    if host.queued >= REMOTE_PAUSE or host.queued_bytes >= REMOTE_PAUSE_BYTES:
                        await self._remote_turn()
                        turn = 0
                    elif turn >= REMOTE_SLICE:
                        await asyncio.sleep(0)
                        turn = 0
                if msg.mtype == _PIN_VERIFY:
                    verified = True
                if msg.src != uid:
                    log.warning("%s: application %s tried to send as %s: refused", self.config.name, uid, msg.src)
                    outbox.put(  # (a full queue counts it as missed, like anything else for the application)
                        hm.REFUSED.make(uid.card_uid(), uid, mtype=msg.mtype, reason=f"this connection is {uid}")
                    )
                    continue
                try:
                    self.host.submit(msg, Origin("app", str(uid)))
                except HostError as exc:
                    outbox.put(hm.REFUSED.make(uid.card_uid(), uid, mtype=msg.mtype, reason=str(exc)[:200]))
                self.wake()
        except (ClosedError, BrokenError):
            pass
        finally:
            if uid is not None:
                self.host._detach_app(uid)
                self._app_outboxes.pop(uid, None)
                if verified:  # the card forgets the connection's Uid, after what it sent (see _PIN_VERIFY)
                    with contextlib.suppress(HostError):
                        self.host.submit(cm.LOGOUT.make(uid, uid.card_uid()), Origin("app", str(uid)))
                    self.wake()
            if writer_task is not None:
                writer_task.cancel()
            await conn.aclose()

    async def _relay(self, conn: TcpConnection, first: Message) -> None:
        """An application relays a remote card's traffic over its connection (``host.relay {domain}``)."""
        try:
            domain = hm.RELAY.parse(first)["domain"]
        except DecodeError as exc:
            await conn.send(hm.REFUSED.make(first.dst, first.src, mtype=first.mtype, reason=str(exc)[:200]))
            return
        why = None
        if domain in self.host.cards:
            why = "that domain is a card of this host: a relay carries a remote card's traffic"
        elif domain in self.config.routes:  # e.g. the authority: an application may not divert its traffic
            why = "this host has a configured route to that domain: it is not relayed"
        if why is not None:
            await conn.send(hm.REFUSED.make(first.dst, first.src, mtype=first.mtype, reason=why))
            return
        await conn.send(hm.RELAYING.make(first.dst, first.src, domain=domain))
        log.info("%s: an application relays domain %s", self.config.name, domain.hex())
        await self.carry(conn, [domain], label=f"relay of {domain.hex()}")

    async def _app_writer(self, conn: TcpConnection, outbox: AppOutbox) -> None:
        """Send an application what the host has for it, in order, everything waiting at once (one write, not one
        a message: a busy card pushes hundreds of changes a second). A message above the connection's frame limit
        never gets this far (:class:`AppOutbox`); ``send_batch`` would leave it out, and the writer go on."""
        with contextlib.suppress(ClosedError, BrokenError):
            while True:
                await send_batch(conn, await outbox.take())

    # -- life cycle --------------------------------------------------------------------
    async def serve_forever(self) -> None:
        await self._stopping.wait()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def aclose(self) -> None:
        self.stop()
        if self._tcp is not None:
            await self._tcp.aclose()
        if self._unix is not None:
            await self._unix.aclose()  # removes the socket file if it is still this host's
        for link in self._links.values():
            await link.aclose()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for card in self.cards:
            card.close()
