"""A link that keeps a connection to one place: reconnects with backoff, queues while down.

Theory of operation. :class:`ReconnectingLink` owns one supervisor task. It
dials; while connected, a pump sends the outgoing queue in order through the
connection (everything queued at once, up to ``SEND_BATCH`` messages a
``send_many``) and a reader moves incoming messages into a bounded inbox. When the
connection breaks it is closed and the supervisor dials again after a delay
from :class:`~.backoff.Backoff` (exponential, jittered by the injected
``random.Random``). A connection that carried no message counts as a failed
attempt, so a server that accepts and drops at once cannot cause a hot loop;
one that carried a message resets the backoff. After
``BackoffPolicy.max_attempts`` failures in a row the link gives up: every
call then raises :class:`BrokenError` and :meth:`unsent` hands back what was
queued (a host turns it into delivery-failure notices).

Bounds: at most ``max_queue`` messages, and ``max_queue_bytes`` bytes of them
(one message whatever its size), wait to be sent (one more raises
``TransportError('queue_full')`` — the queue never grows past it, whether
the link is down or the peer is slow) and at most ``max_inbox`` received
messages wait for :meth:`recv` (beyond that the reader stops reading, which
pushes back on the peer).

Delivery: in order and without duplicates on one connection; a message is
taken off the queue only when the connection accepted it, so the ones being
sent when a connection breaks are sent again on the next. Messages accepted by
a connection that then breaks may be lost, unless the peer confirms them:

Confirmations. A message may be queued with a *token* (``send_many_nowait(msgs,
tokens)``; opaque to the link). With ``confirm_mtype`` set, every message
written on a connection is numbered (0, 1, ... on each new connection) and one
with a token stays *in flight* until the peer confirms its number (a message
of ``confirm_mtype`` read on that connection: ``parse_confirm`` gives runs
``[first, count, ...]``; an empty one, the peer's hello, says it confirms).
Then ``on_taken(tokens)`` is called (a host acknowledges its cards' outputs
there). Messages still in flight when a connection ends are sent first on the
next one, and :meth:`sweep` (called periodically) sends again those in flight
for two sweeps (the peer did not take them: a full table, a failing store). A
peer that never confirms anything on a connection that carried messages for a
whole sweep is taken as one that does not confirm: its tokens are released as
they are written, as without ``confirm_mtype``. Duplicates are left to the
peer (a card tolerates them).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType

from cardnet.transport.backoff import Backoff, BackoffPolicy
from cardnet.transport.base import LOGGER_NAME, Connection, Dialer
from cardnet.transport.errors import BrokenError, ClosedError, TransportError
from cardnet.transport.framing import DEFAULT_MAX_FRAME, check_max_frame
from cardnet.wire import Message

log = logging.getLogger(LOGGER_NAME)

DEFAULT_BACKOFF = BackoffPolicy()
SEND_BATCH = 1024  # messages handed to the connection in one send_many
DEFAULT_MAX_QUEUE_BYTES = 64 * 1024 * 1024  # bytes of messages waiting to be sent (besides a first one of any size)
# sweeps in a row without a connection after which the tokens of what waits are released (the messages stay queued):
# their owner (a host's card outbox) then holds them no longer than this through a long outage (see sweep)
HOLD_DOWN_SWEEPS = 6
# sweeps after which a token still waiting for a peer that confirms (on live connections) is released: a peer that
# confirmed once and then never again would otherwise keep its owner holding them for ever (a card's outbox filled by
# its answers to that peer); the message is then left to the peer, as without confirmations (see sweep)
HOLD_LIVE_SWEEPS = 8


def fit_queue(
    msgs: Sequence[Message], room: int, max_bytes: int, queued_bytes: int, max_frame: int | None = None
) -> tuple[int, int]:
    """How many of ``msgs`` (a prefix) fit a queue with ``room`` messages of room that holds ``queued_bytes`` of
    ``max_bytes`` (a first message of any size fits an empty one), none above ``max_frame``; and their bytes."""
    n = size = 0
    for msg in msgs:
        if n >= room or (max_frame is not None and msg.size > max_frame):
            break
        if queued_bytes + size + msg.size > max_bytes and (queued_bytes or n):
            break
        n += 1
        size += msg.size
    return n, size


class ReconnectingLink:
    """Keeps a connection made by ``dial`` alive; see the module docstring.

    Use as ``async with ReconnectingLink(dial, rng=random.Random(seed)) as link:``
    or call :meth:`start` and :meth:`aclose` yourself.
    """

    def __init__(
        self,
        dial: Dialer,
        *,
        rng: random.Random,
        policy: BackoffPolicy = DEFAULT_BACKOFF,
        max_queue: int = 1024,
        max_queue_bytes: int = DEFAULT_MAX_QUEUE_BYTES,
        max_inbox: int = 256,
        max_frame: int = DEFAULT_MAX_FRAME,
        label: str = "link",
        confirm_mtype: int | None = None,
        parse_confirm: Callable[[Message], Sequence[int]] | None = None,
        on_taken: Callable[[list[object]], None] | None = None,
    ) -> None:
        if max_queue < 1 or max_inbox < 1 or max_queue_bytes < 1:
            raise TransportError(
                "bad_config",
                f"max_queue, max_queue_bytes and max_inbox must be >= 1, got {max_queue}, {max_queue_bytes}, "
                f"{max_inbox}",
            )
        self._dial = dial
        self._backoff = Backoff(policy, rng)
        self._policy = policy
        self._poked = asyncio.Event()  # set by poke(): the peer is back, dial without waiting out the backoff
        self._max_queue = max_queue
        self._max_queue_bytes = max_queue_bytes
        self._queued_bytes = 0  # bytes of the messages in _outbox
        self._max_inbox = max_inbox
        self._max_frame = check_max_frame(max_frame)
        self.label = label
        self._outbox: deque[Message] = deque()
        self._inbox: deque[Message] = deque()
        self._has_out = asyncio.Event()
        self._inbox_ready = asyncio.Event()
        self._inbox_space = asyncio.Event()
        self._state = asyncio.Event()  # set whenever connected/failed/closed changes
        self._conn: Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._failed: BrokenError | None = None
        self._connections = 0
        # confirmations (see the module docstring)
        self._confirm_mtype = confirm_mtype
        self._parse_confirm = parse_confirm
        self._on_taken = on_taken
        self._tokens: deque[object] = deque()  # beside _outbox: each message's token (None: none)
        self._inflight: dict[int, tuple[Message, object, int]] = {}  # number -> (message, token, sweep it was sent)
        self._inflight_bytes = 0  # bytes of them: with _queued_bytes, at most max_queue_bytes (a peer that stops
        # confirming holds them; they were bounded only by count, max_queue times max_frame bytes)
        self._written = 0  # messages written on the current connection (the next one's number)
        self._confirming: bool | None = None if confirm_mtype is not None else False  # None: not known yet
        self._sweeps = 0
        self._down_sweeps = 0  # sweeps in a row that found no connection
        self._seen: dict[int, tuple[object, int]] = {}  # id(token) -> (token, the live sweep that first found it)
        self._live_sweeps = 0  # sweeps that found a connection to a peer that confirms

    # -- state -------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def connections(self) -> int:
        """How many connections have been made so far (1 after the first connect)."""
        return self._connections

    @property
    def queued(self) -> int:
        """Messages waiting to be sent."""
        return len(self._outbox)

    @property
    def queued_bytes(self) -> int:
        """Bytes of the messages waiting to be sent (at most ``max_queue_bytes``, or one message's)."""
        return self._queued_bytes

    @property
    def failed(self) -> BrokenError | None:
        """Why the link gave up, or None."""
        return self._failed

    def _check(self) -> None:
        if self._closed:
            raise ClosedError(f"{self.label} was closed by this side; make a new link")
        if self._failed is not None:
            err = BrokenError(str(self._failed))
            err.__cause__ = self._failed.__cause__
            raise err

    def _changed(self) -> None:
        self._state.set()
        self._inbox_ready.set()
        self._has_out.set()

    # -- API ---------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (needs a running event loop); idempotent."""
        self._check()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"cardnet {self.label}")

    async def wait_connected(self) -> None:
        """Return once connected; raises if the link gives up or is closed first."""
        while True:
            self._check()
            if self._conn is not None:
                return
            self._state.clear()
            await self._state.wait()

    async def send(self, msg: Message) -> None:
        """Queue ``msg`` for sending (now if connected, after the reconnect if not).

        Raises ``TransportError('queue_full')`` when ``max_queue`` messages are
        already waiting, ``TransportError('oversize')`` above the frame limit.
        """
        self.send_nowait(msg)

    def send_many_nowait(self, msgs: Sequence[Message], tokens: Sequence[object] | None = None) -> int:
        """Queue ``msgs`` in order, up to the first one :meth:`send_nowait` would refuse; return how many.

        ``tokens`` (one per message) come back through ``on_taken`` once the peer took them (see the module).
        Raises like :meth:`send` if the link was closed or gave up (nothing queued).
        """
        self._check()
        room = self._max_queue - len(self._outbox) - len(self._inflight)
        held = self._queued_bytes + self._inflight_bytes
        n, size = fit_queue(msgs, room, self._max_queue_bytes, held, self._max_frame)
        if n:
            self._outbox.extend(msgs[:n] if n < len(msgs) else msgs)
            if tokens is None:
                self._tokens.extend(itertools.repeat(None, n))
            else:
                self._tokens.extend(tokens[:n] if n < len(tokens) else tokens)
            self._queued_bytes += size
            self._has_out.set()
        return n

    def send_nowait(self, msg: Message, token: object = None) -> None:
        """:meth:`send` for callers outside a coroutine: it never waits, and raises the same errors."""
        self._check()
        if msg.size > self._max_frame:
            raise TransportError(
                "oversize", f"message is {msg.size} bytes, the frame limit is {self._max_frame}: send it in chunks"
            )
        room = self._max_queue - len(self._outbox) - len(self._inflight)
        if not fit_queue([msg], room, self._max_queue_bytes, self._queued_bytes + self._inflight_bytes)[0]:
            state = "connected, the peer is slow" if self.connected else "disconnected"
            raise TransportError(
                "queue_full",
                f"{self.label} already queues {len(self._outbox)} messages, {self._queued_bytes} bytes, and has "
                f"{len(self._inflight)}, {self._inflight_bytes} bytes, written and not confirmed ({state}): "
                "retry later or send less",
            )
        self._outbox.append(msg)
        self._tokens.append(token)
        self._queued_bytes += msg.size
        self._has_out.set()

    async def recv(self) -> Message:
        """The next message from whichever connection is up; raises if closed or given up."""
        while True:
            if self._closed:
                self._check()
            if self._inbox:
                msg = self._inbox.popleft()
                self._inbox_space.set()
                return msg
            self._check()
            self._inbox_ready.clear()
            await self._inbox_ready.wait()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        return await self.recv()

    def poke(self) -> None:
        """The peer was heard from (e.g. its host dialled ours after a restart): if waiting to reconnect, dial now
        rather than after the rest of the backoff delay (but no sooner than ``initial_s`` after the last failure,
        so a peer heard from often cannot make the link dial in a hot loop). A no-op while connected."""
        if self._conn is None:
            self._poked.set()

    def unsent(self) -> list[Message]:
        """Take back every message still queued or in flight (e.g. after the link gave up); their tokens are
        dropped."""
        out = [m for m, _, _ in self._inflight.values()] + list(self._outbox)
        self._inflight.clear()
        self._inflight_bytes = 0
        self._outbox.clear()
        self._tokens.clear()
        self._queued_bytes = 0
        return out

    def tokens(self) -> list[object]:
        """The tokens of the messages queued or in flight (not yet taken by the peer)."""
        out = [t for _, t, _ in self._inflight.values()]
        out += [t for t in self._tokens if t is not None]
        return out

    @property
    def in_flight(self) -> int:
        """Messages written and not yet confirmed by the peer."""
        return len(self._inflight)

    def sweep(self) -> None:
        """Call periodically: what the peer has not confirmed for two sweeps is sent again (after what is queued
        now: it was not taken, so a while later is as good); a peer that confirmed nothing on a connection that
        carried messages for a whole sweep is taken as one that does not confirm (its tokens are released)."""
        self._sweeps += 1
        if self._conn is None:
            self._down_sweeps += 1
            if self._down_sweeps > HOLD_DOWN_SWEEPS:
                self._release_waiting()
            return
        self._down_sweeps = 0
        if self._confirming is True:
            self._release_old()
        if not self._inflight:
            return
        if self._confirming is not True:
            if any(at < self._sweeps - 1 for _, _, at in self._inflight.values()):
                log.info("%s: the peer confirms nothing: messages count as taken once written", self.label)
                self._confirming = False
                self._release([t for _, t, _ in self._inflight.values()])
                self._inflight.clear()
                self._inflight_bytes = 0
            return
        stale = [k for k, (_, _, at) in self._inflight.items() if at < self._sweeps - 2]
        if stale:
            log.info("%s: sending %d message(s) again the peer did not take", self.label, len(stale))
            for k in stale:
                msg, token, _ = self._inflight.pop(k)
                self._outbox.append(msg)
                self._tokens.append(token)
                self._queued_bytes += msg.size
                self._inflight_bytes -= msg.size
            self._has_out.set()

    def _release_old(self) -> None:
        """Release the tokens that have waited :data:`HOLD_LIVE_SWEEPS` sweeps with a connection to a peer that
        confirms (in flight or queued, over any number of connections; sweeps without one do not count, so a peer
        that restarts loses nothing): it took none of them, or does not say so. Their messages are written once more,
        unconfirmed, as without confirmations."""
        self._live_sweeps += 1
        sweeps, seen = self._live_sweeps, self._seen
        now: dict[int, tuple[object, int]] = {}
        old: list[object] = []
        for t in itertools.chain((t for _, t, _ in self._inflight.values()), self._tokens):
            if t is None:
                continue
            got = seen.get(id(t))
            first = got[1] if got is not None and got[0] is t else sweeps
            if first <= sweeps - HOLD_LIVE_SWEEPS:
                old.append(t)
            else:
                now[id(t)] = (t, first)
        self._seen = now
        if not old:
            return
        ids = {id(t) for t in old}
        if any(t is not None and id(t) in ids for t in self._tokens):
            self._tokens = deque(None if t is not None and id(t) in ids else t for t in self._tokens)
        for k in [k for k, (_, t, _) in self._inflight.items() if id(t) in ids]:
            msg = self._inflight.pop(k)[0]
            self._inflight_bytes -= msg.size
            self._outbox.append(msg)
            self._tokens.append(None)
            self._queued_bytes += msg.size
            self._has_out.set()
        log.warning("%s: the peer has not confirmed %d message(s) within %d sweeps: left to it unconfirmed",
                    self.label, len(old), HOLD_LIVE_SWEEPS)  # fmt: skip
        self._release(old)

    def _requeue_inflight(self) -> bool:
        """Put what is in flight (written, not confirmed) back at the head of the queue, in order; False if nothing
        was."""
        if not self._inflight:
            return False
        again = list(self._inflight.values())
        self._inflight.clear()
        self._inflight_bytes = 0
        self._outbox.extendleft(reversed([m for m, _, _ in again]))
        self._tokens.extendleft(reversed([t for _, t, _ in again]))
        self._queued_bytes += sum(m.size for m, _, _ in again)
        return True

    def _release_waiting(self) -> None:
        """The peer has been unreachable for ``HOLD_DOWN_SWEEPS`` sweeps: release the tokens of what waits (a card's
        outputs would otherwise fill its store through a long outage); the messages stay queued and are sent once
        the peer is back, without confirmation (a crash of this process until then loses them, as without
        confirmations)."""
        self._requeue_inflight()  # (they would be written first on the next connection)
        release = [t for t in self._tokens if t is not None]
        if release:
            log.info("%s: the peer has been unreachable for %d sweeps: %d message(s) wait here unconfirmed",
                     self.label, self._down_sweeps, len(release))  # fmt: skip
            self._tokens = deque(itertools.repeat(None, len(self._outbox)))
            self._release(release)

    def _release(self, tokens: list[object]) -> None:
        if tokens and self._on_taken is not None:
            self._on_taken(tokens)

    def _confirmed(self, runs: Sequence[int]) -> None:
        """The peer took the messages numbered ``runs`` (``[first, count, ...]``) on the current connection."""
        self._confirming = True
        inflight = self._inflight
        if not inflight:
            return
        done: list[object] = []
        written = self._written
        freed = 0
        spans = [(runs[i], min(runs[i] + runs[i + 1], written)) for i in range(0, len(runs) - 1, 2)]
        # (a peer cannot make us count past what was written; nor, by confirming numbers that are not in flight,
        # make us look up more numbers than are in flight: then one pass over those, each looked up in the runs)
        if sum(end - first for first, end in spans if end > first) <= len(inflight):
            for first, end in spans:
                for k in range(first, end):
                    got = inflight.pop(k, None)
                    if got is not None:
                        done.append(got[1])
                        freed += got[0].size
        else:
            spans = sorted(span for span in spans if span[1] > span[0])
            starts = [first for first, _ in spans]
            ends = list(itertools.accumulate((end for _, end in spans), max))
            for k in [k for k in inflight if (i := bisect.bisect_right(starts, k)) and ends[i - 1] > k]:
                msg, token, _ = inflight.pop(k)
                done.append(token)
                freed += msg.size
        self._inflight_bytes -= freed
        self._release(done)

    def close(self) -> None:
        """Stop: close the connection, stop reconnecting, drop what is queued."""
        if self._closed:
            return
        self._closed = True
        if self._task is not None:
            self._task.cancel()
        self._changed()

    async def wait_closed(self) -> None:
        if self._task is not None and not self._task.done():
            await asyncio.gather(self._task, return_exceptions=True)

    async def aclose(self) -> None:
        self.close()
        await self.wait_closed()

    async def __aenter__(self) -> ReconnectingLink:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- the supervisor ----------------------------------------------------

    async def _run(self) -> None:
        backoff = self._backoff
        while True:
            try:
                conn = await self._dial()
            except (TransportError, OSError) as exc:
                if not await self._retry_after(backoff, exc):
                    return
                continue
            except Exception as exc:
                log.exception("%s: the dial function failed unexpectedly", self.label)
                self._give_up(exc, backoff.failures + 1)
                return
            carried = await self._serve(conn)
            if carried:
                backoff.reset()
            if not await self._retry_after(backoff, None):
                return

    async def _retry_after(self, backoff: Backoff, exc: BaseException | None) -> bool:
        delay_s = backoff.next_delay()
        if delay_s is None:
            self._give_up(exc, backoff.failures)
            return False
        log.debug("%s: reconnecting in %.3f s (failure %d): %s", self.label, delay_s, backoff.failures, exc)
        loop = asyncio.get_running_loop()
        soonest = loop.time() + min(delay_s, self._policy.initial_s)
        self._poked.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._poked.wait(), delay_s)
            await asyncio.sleep(max(0.0, soonest - loop.time()))  # poked
        return True

    def _give_up(self, exc: BaseException | None, failures: int) -> None:
        err = BrokenError(
            f"{self.label} gave up after {failures} failed attempts in a row"
            + (f" (last: {exc})" if exc is not None else "")
            + "; check the peer and make a new link"
        )
        err.__cause__ = exc
        self._failed = err
        log.warning("%s", err)
        self._changed()

    async def _serve(self, conn: Connection) -> bool:
        """Run pump and reader on ``conn`` until it breaks; True if it carried a message."""
        self._conn = conn
        self._connections += 1
        self._written = 0
        if self._requeue_inflight():  # written on the last connection and never confirmed: first on this one
            self._has_out.set()
        self._changed()
        carried = [False]
        pump = asyncio.get_running_loop().create_task(self._pump(conn, carried))
        reader = asyncio.get_running_loop().create_task(self._read(conn, carried))
        try:
            done, _ = await asyncio.wait({pump, reader}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if isinstance(exc, TransportError):
                    log.info("%s: connection to %s ended: %s", self.label, conn.peer.label, exc)
                elif exc is not None:
                    log.error("%s: connection to %s failed", self.label, conn.peer.label, exc_info=exc)
        finally:
            pump.cancel()
            reader.cancel()
            await asyncio.gather(pump, reader, return_exceptions=True)
            self._conn = None
            self._changed()
            await conn.aclose()
        return carried[0]

    async def _pump(self, conn: Connection, carried: list[bool]) -> None:
        while True:
            while not self._outbox:
                self._has_out.clear()
                await self._has_out.wait()
            outbox = self._outbox
            batch = list(itertools.islice(outbox, SEND_BATCH))
            sent: list[bool] | None = None
            try:
                await conn.send_many(batch)
            except TransportError as exc:
                if exc.reason != "oversize":
                    raise
                sent = await self._send_each(conn, batch)
            if outbox and outbox[0] is batch[0]:  # unless unsent() took them meanwhile
                self._written_out(batch, sent)
            carried[0] = True

    def _written_out(self, batch: list[Message], sent: list[bool] | None) -> None:
        """``batch`` (the head of the queue) was written (``sent``: which of it, None: all): off the queue, and
        its tokens in flight (or released, if the peer does not confirm or the message was dropped)."""
        outbox, tokens = self._outbox, self._tokens
        confirming = self._confirming
        inflight = self._inflight
        k = self._written
        sweeps = self._sweeps
        release: list[object] = []
        held = 0
        for i, msg in enumerate(batch):
            self._queued_bytes -= outbox.popleft().size
            token = tokens.popleft()
            written = sent is None or sent[i]
            if written:
                if token is not None:
                    if confirming is False:
                        release.append(token)
                    else:
                        inflight[k] = (msg, token, sweeps)
                        held += msg.size
                k += 1
            elif token is not None:
                release.append(token)  # (dropped: it never fits; as if taken, it will not come again)
        self._written = k
        self._inflight_bytes += held
        self._release(release)

    async def _send_each(self, conn: Connection, batch: list[Message]) -> list[bool]:
        """One by one, dropping the messages the connection refuses as oversize; which were written."""
        sent: list[bool] = []
        for msg in batch:
            try:
                await conn.send(msg)
            except TransportError as exc:
                if exc.reason != "oversize":
                    raise
                log.warning("%s: dropping a message the connection refuses: %s", self.label, exc)
                sent.append(False)
                continue
            sent.append(True)
        return sent

    async def _read(self, conn: Connection, carried: list[bool]) -> None:
        confirm_mtype, parse = self._confirm_mtype, self._parse_confirm
        while True:
            msg = await conn.recv()
            if msg.mtype == confirm_mtype and parse is not None:
                self._confirmed(parse(msg))
                continue
            carried[0] = True
            while len(self._inbox) >= self._max_inbox:
                self._inbox_space.clear()
                await self._inbox_space.wait()
            self._inbox.append(msg)
            self._inbox_ready.set()
