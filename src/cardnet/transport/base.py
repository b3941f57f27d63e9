"""What every transport offers: the :class:`Connection` interface, peer info and limits.

A connection carries whole :class:`~cardnet.wire.Message` objects both ways,
in order, with back-pressure and bounded buffers. The in-memory pair, TCP
(optionally with mutual TLS) and later transports implement the same
interface, and one conformance suite (``tests/unit/test_transport_conformance.py``)
runs against all of them.

Semantics shared by every implementation:

- ``await send(msg)`` waits until the transport has room, then hands the
  message over; returning means *accepted for sending*, not delivered.
  At most ``Limits.max_pending_sends`` sends may wait at once; one more raises
  ``TransportError('queue_full')`` instead of queueing without bound. A
  cancelled send has sent nothing. A message above ``Limits.max_frame`` raises
  ``TransportError('oversize')`` and leaves the connection open.
- ``await send_many(msgs)`` is ``send`` for each message in order (one
  pending send; a transport may write them together). An oversize message
  raises ``oversize`` before any of them is sent; a cancelled ``send_many``
  has sent a prefix of ``msgs`` (whole messages). A caller whose batch holds
  answers to several requests uses :func:`send_batch` instead: there an
  oversize message costs only itself (replaced by the protocol's refusal, or
  dropped and logged) and the others are sent, in order.
- ``await recv()`` returns the next message; ``async for msg in conn`` does
  the same and stops when the peer closed cleanly. ``await recv_many()``
  returns the next message and those already received after it (a batch,
  never waiting for more).
- ``close()`` is this side's decision: every later call raises
  :class:`ClosedError`. The peer then sees the end of the stream: ``recv()``
  raises :class:`BrokenError` (messages already received are delivered first)
  and ``send()`` raises :class:`BrokenError` once the loss is known.
- Anything the world does — reset, bad frame, TLS failure — makes every later
  call raise :class:`BrokenError` with the cause chained; a bad frame also
  closes the connection and logs the reason on ``cardnet.transport``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn, Protocol, runtime_checkable

from cardnet.transport.errors import BrokenError, ClosedError, TransportError
from cardnet.transport.framing import DEFAULT_MAX_FRAME, RecvLimit, SkippedFrame, check_max_frame
from cardnet.wire import Message

LOGGER_NAME = "cardnet.transport"
_log = logging.getLogger(LOGGER_NAME)


@dataclass(frozen=True, kw_only=True, slots=True)
class PeerInfo:
    """Who is at the other end, as far as the transport knows.

    ``cert_der`` is the peer's TLS certificate (DER) when the connection uses
    TLS, so a host can map it to an identity (a device certificate binds a
    Uid); None otherwise. ``address`` is ``(host, port)`` for network
    transports, None for in-memory ones. ``label`` is for logs.
    """

    transport: str  # "memory", "tcp" or "tls"
    label: str
    address: tuple[str, int] | None = None
    cert_der: bytes | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Limits:
    """Bounds on one connection's buffers and waits (every one of them finite)."""

    max_frame: int = DEFAULT_MAX_FRAME  # bytes of one message (header + param); bigger ones are refused
    max_pending_sends: int = 1024  # sends allowed to wait for room; one more raises queue_full
    write_buffer_bytes: int = 256 * 1024  # TCP: a send waits while the socket buffer is above this
    read_chunk_bytes: int = 64 * 1024  # TCP: bytes read from the socket per read
    inbox_messages: int = 256  # memory: messages waiting at the receiver before the sender waits
    linger_s: float = 5.0  # a graceful close that has not finished by then is aborted
    connect_timeout_s: float = 10.0  # TCP: connect + TLS handshake
    # TCP: a server's receive limit (the largest request it takes, by mtype), None: max_frame. A frame above it is
    # refused at its 34-byte header, never read: recv() raises TooLarge and the connection only sends and closes.
    recv_limit: RecvLimit | None = None

    def __post_init__(self) -> None:
        check_max_frame(self.max_frame)
        if self.recv_limit is not None and not isinstance(self.recv_limit, RecvLimit):
            raise TransportError(
                "bad_config", f"Limits.recv_limit must be a RecvLimit or None, got {self.recv_limit!r}"
            )
        for name in ("max_pending_sends", "write_buffer_bytes", "read_chunk_bytes", "inbox_messages"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TransportError("bad_config", f"Limits.{name} must be a positive int, got {value!r}")
        for name in ("linger_s", "connect_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise TransportError("bad_config", f"Limits.{name} must be a positive number of seconds, got {value!r}")


DEFAULT_LIMITS = Limits()


class LogThrottle:
    """A warning a peer can repeat at will, logged at most ``burst`` times in each ``every_s`` of the caller's clock;
    the others are counted, and the next line logged says how many were left out (so a flood cannot fill the disk
    with the log)."""

    __slots__ = ("_burst", "_every_s", "_left_out", "_logged", "_since")

    def __init__(self, every_s: float, burst: int) -> None:
        self._every_s = every_s
        self._burst = burst
        self._since: float | None = None  # when the current window began
        self._logged = 0  # lines logged in it
        self._left_out = 0  # lines left out since the last one logged

    def due(self, now: float) -> str | None:
        """None: leave this one out (counted); else log it now, with this suffix saying how many were left out."""
        if self._since is None or not 0 <= now - self._since < self._every_s:  # (a clock set back: a new window)
            self._since, self._logged = now, 0
        if self._logged >= self._burst:
            self._left_out += 1
            return None
        self._logged += 1
        left_out, self._left_out = self._left_out, 0
        return f" (and {left_out} more since the last such line, not logged)" if left_out else ""


@dataclass(frozen=True, kw_only=True, slots=True)
class ServerLimits:
    """Bounds on what one listening socket accepts (every one of them finite, except an idle timeout of None).

    A connection beyond ``max_connections`` in all, or beyond ``max_per_peer``
    from one peer address, is closed as soon as it is accepted (before any TLS
    handshake). A connection whose TLS handshake and first whole frame have
    not arrived ``handshake_timeout_s`` after it was accepted is closed, and so
    is one whose handler has waited ``idle_timeout_s`` for a whole frame
    (None: never — for sockets whose clients legitimately wait, such as the
    host's application socket). A frame whose first bytes arrived must be whole
    within ``frame_timeout_s`` plus one second per ``min_recv_bytes_per_s``
    bytes of it (its announced size) of the handler waiting for it, whatever
    the idle timeout: a peer that sends half a request and trickles the rest is
    disconnected. A send that has waited ``send_timeout_s`` for room (the peer
    does not read what it is sent) disconnects too (None: never).

    A frame above ``large_frame_bytes`` (as its length prefix announces it) is
    read only while its connection holds one of ``max_large_frames`` places
    (``max_large_frames_per_peer`` from one peer address): a connection that
    begins one while none is free is read no further (the kernel pushes back on
    its sender) until a place frees, and its frame's time allowance starts then.
    So the frames being read on one socket hold at most ``max_connections x
    large_frame_bytes + max_large_frames x`` the largest frame taken, however many
    peers trickle large frames at once.
    """

    max_connections: int = 512  # connections held at once on this socket
    max_per_peer: int = 64  # connections held at once from one peer address (IP); Unix sockets: no per-peer cap
    handshake_timeout_s: float = 10.0  # accept -> TLS handshake done and the first whole frame in
    idle_timeout_s: float | None = 600.0  # a handler waiting this long for a whole frame is disconnected
    frame_timeout_s: float = 30.0  # a frame begun must be whole this long after (plus its size's share below)
    min_recv_bytes_per_s: int = 64 * 1024  # the slowest a frame begun may arrive (bytes a second)
    send_timeout_s: float | None = 30.0  # a send waiting this long for room (the peer does not read) disconnects
    large_frame_bytes: int = 256 * 1024  # a frame above this is read only in one of the places below
    max_large_frames: int = 8  # connections reading a large frame at once on this socket
    max_large_frames_per_peer: int = 2  # of them from one peer address (IP); Unix sockets: no per-peer cap

    def __post_init__(self) -> None:
        for name in (
            "max_connections",
            "max_per_peer",
            "min_recv_bytes_per_s",
            "large_frame_bytes",
            "max_large_frames",
            "max_large_frames_per_peer",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TransportError("bad_config", f"ServerLimits.{name} must be a positive int, got {value!r}")
        for name in ("handshake_timeout_s", "idle_timeout_s", "frame_timeout_s", "send_timeout_s"):
            value = getattr(self, name)
            if value is None and name in ("idle_timeout_s", "send_timeout_s"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise TransportError(
                    "bad_config", f"ServerLimits.{name} must be a positive number of seconds, got {value!r}"
                )


DEFAULT_SERVER_LIMITS = ServerLimits()


class LargeFrames:
    """A listening socket's places for reading large frames (:class:`ServerLimits` ``large_frame_bytes``,
    ``max_large_frames``, ``max_large_frames_per_peer``), shared by its connections. A connection takes a place
    before it reads more of a frame above ``threshold`` and gives it back once that frame is whole (or the
    connection ends); one that finds none free waits, reading nothing meanwhile."""

    __slots__ = ("_by_peer", "_holders", "_per_peer", "_total", "_waiters", "threshold")

    def __init__(self, limits: ServerLimits) -> None:
        self.threshold = limits.large_frame_bytes
        self._total = limits.max_large_frames
        self._per_peer = limits.max_large_frames_per_peer
        self._holders: dict[object, str | None] = {}  # connection -> its peer address (None: a Unix socket)
        self._by_peer: dict[str, int] = {}
        self._waiters: list[asyncio.Future[None]] = []

    @property
    def held(self) -> int:
        """Places taken right now."""
        return len(self._holders)

    def _free_for(self, peer: str | None) -> bool:
        return len(self._holders) < self._total and (peer is None or self._by_peer.get(peer, 0) < self._per_peer)

    async def take(self, holder: object, peer: str | None) -> None:
        """Take a place for ``holder`` (a connection from ``peer``), waiting until one is free."""
        while holder not in self._holders:
            if self._free_for(peer):
                self._holders[holder] = peer
                if peer is not None:
                    self._by_peer[peer] = self._by_peer.get(peer, 0) + 1
                return
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def give_back(self, holder: object) -> None:
        """``holder``'s place (if it has one) is free again: every waiter looks again."""
        if holder not in self._holders:
            return
        peer = self._holders.pop(holder)
        if peer is not None:
            n = self._by_peer[peer] - 1
            if n:
                self._by_peer[peer] = n
            else:
                del self._by_peer[peer]
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


@runtime_checkable
class Connection(Protocol):
    """One end of a message connection; see the module docstring for the semantics."""

    # called with each frame the peer sent above our frame limit, which a byte stream reads past and goes on
    on_skipped: Callable[[SkippedFrame], None] | None

    @property
    def peer(self) -> PeerInfo: ...

    @property
    def closed(self) -> bool:
        """True once this side closed it or it broke; the connection cannot be used again."""
        ...

    @property
    def pending_sends(self) -> int:
        """Sends waiting for room right now (at most ``Limits.max_pending_sends``)."""
        ...

    @property
    def limits(self) -> Limits:
        """This connection's bounds (``max_frame``: the largest message it sends or takes)."""
        ...

    async def send(self, msg: Message) -> None: ...

    async def send_many(self, msgs: Sequence[Message]) -> None: ...

    async def recv(self) -> Message: ...

    async def recv_many(self) -> list[Message]: ...

    def __aiter__(self) -> AsyncIterator[Message]: ...

    def close(self) -> None:
        """Start closing (idempotent); buffered outgoing data is still flushed for up to ``linger_s``."""
        ...

    async def wait_closed(self) -> None:
        """Return once the connection is closed (by either side) and its resources are released."""
        ...

    async def aclose(self) -> None:
        """``close()`` then ``wait_closed()``."""
        ...


Instead = Callable[[int, Message, TransportError], Message | None]
"""What to send in place of message ``i`` of a batch, which is above the frame limit (the error says so): the
protocol's refusal or error answer for it, or None (it is left out)."""


def fit_batch(
    msgs: Sequence[Message], max_frame: int, instead: Instead | None = None, *, to: str = "the peer"
) -> list[Message]:
    """``msgs`` made sendable as one batch: each message above ``max_frame`` costs only itself.

    It is replaced by ``instead(i, msg, error)`` (``i`` its index in ``msgs``), the protocol's refusal or error
    answer where it has one, or left out when there is no ``instead``, it gives None or its answer is above the
    limit too; either way it is logged (warning) on ``cardnet.transport``, naming ``to``. The other messages
    keep their order. A batch that fits is returned as it is (a new list).
    """
    out: list[Message] | None = None
    for i, msg in enumerate(msgs):
        if msg.size <= max_frame:
            if out is not None:
                out.append(msg)
            continue
        if out is None:
            out = list(msgs[:i])
        err = TransportError(
            "oversize", f"message {i} of a batch to {to} (mtype 0x{msg.mtype:04x}) is {msg.size} bytes, "
            f"the frame limit is {max_frame}",
        )  # fmt: skip
        other = None if instead is None else instead(i, msg, err)
        if other is not None and other.size > max_frame:
            other = None
        if other is None:
            _log.warning("%s: left out, the others of its batch are sent", err)
        else:
            _log.warning("%s: sent 0x%04x in its place, and the others of its batch", err, other.mtype)
            out.append(other)
    return list(msgs) if out is None else out


async def send_batch(conn: Connection, msgs: Sequence[Message], instead: Instead | None = None) -> None:
    """``conn.send_many(msgs)``, where a message above the connection's frame limit costs only itself instead of
    the whole batch: see :func:`fit_batch`. The connection stays open; its errors are ``send_many``'s."""
    await conn.send_many(fit_batch(msgs, conn.limits.max_frame, instead, to=conn.peer.label))


Dialer = Callable[[], Awaitable[Connection]]
"""Opens a new connection to a fixed place; what :class:`ReconnectingLink` calls to (re)connect."""

OnConnection = Callable[[Connection], Awaitable[None]]
"""A server's handler for one accepted connection; the connection is closed when it returns."""


class ConnectionBase:
    """State and error rules shared by the concrete connections (not part of the public interface).

    Subclasses call :meth:`_check` before every operation, :meth:`_break` when
    the world breaks the connection, and bracket waiting sends with
    :meth:`_enter_send` / :meth:`_leave_send`.
    """

    def __init__(self, peer: PeerInfo, limits: Limits) -> None:
        self._peer = peer
        self._limits = limits
        self._closed_here = False
        self._broken_why: str | None = None
        self._broken_cause: BaseException | None = None
        self._peer_finished = False  # the peer closed cleanly (end of stream at a frame boundary)
        self._pending = 0
        self._finished = asyncio.Event()
        # told of each frame the peer sent above our frame limit, which a byte stream reads past (framing's
        # SkippedFrame): its owner answers the sender (a host sends host.undeliverable back)
        self.on_skipped: Callable[[SkippedFrame], None] | None = None

    @property
    def peer(self) -> PeerInfo:
        return self._peer

    @property
    def limits(self) -> Limits:
        return self._limits

    @property
    def closed(self) -> bool:
        return self._closed_here or self._broken_why is not None

    @property
    def pending_sends(self) -> int:
        return self._pending

    def _error(self) -> TransportError | None:
        """The error every operation raises now, or None while the connection is usable."""
        if self._closed_here:
            return ClosedError(f"connection to {self._peer.label} was closed by this side; open a new one")
        if self._broken_why is not None:
            err = BrokenError(f"connection to {self._peer.label} is broken: {self._broken_why}; reconnect")
            err.__cause__ = self._broken_cause
            err.__suppress_context__ = True
            return err
        return None

    def _check(self) -> None:
        err = self._error()
        if err is not None:
            raise err

    def _raise(self) -> NoReturn:
        raise self._error() or BrokenError(f"connection to {self._peer.label} failed")

    def _break(self, why: str, cause: BaseException | None = None, *, peer_finished: bool = False) -> None:
        """Record that the world broke the connection (first reason wins)."""
        if self._closed_here or self._broken_why is not None:
            return
        self._broken_why = why
        self._broken_cause = cause
        self._peer_finished = peer_finished
        self._finished.set()

    def _check_frame(self, msg: Message) -> None:
        if msg.size > self._limits.max_frame:
            raise TransportError(
                "oversize",
                f"message is {msg.size} bytes, the frame limit is {self._limits.max_frame}: "
                "send large products in chunks",
            )

    def _enter_send(self) -> None:
        if self._pending >= self._limits.max_pending_sends:
            raise TransportError(
                "queue_full",
                f"{self._pending} sends to {self._peer.label} are already waiting for room "
                f"(Limits.max_pending_sends): the peer is slow; retry later or send less",
            )
        self._pending += 1

    def _leave_send(self) -> None:
        self._pending -= 1

    async def send(self, msg: Message) -> None:
        raise NotImplementedError

    async def send_many(self, msgs: Sequence[Message]) -> None:
        """``send`` each message in order (transports that can write several at once override this)."""
        self._check()  # closed or broken wins over oversize, and an empty batch raises too (as TCP's does)
        for msg in msgs:
            self._check_frame(msg)
        for msg in msgs:
            await self.send(msg)

    async def recv(self) -> Message:
        raise NotImplementedError

    async def recv_many(self) -> list[Message]:
        """The next message, as a batch of one (transports that buffer several override this)."""
        return [await self.recv()]

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.recv()
        except BrokenError:
            if self._peer_finished:
                raise StopAsyncIteration from None
            raise


class HandlerSet:
    """Runs one handler per accepted connection and can stop them all (for servers and listeners)."""

    def __init__(self, on_connection: OnConnection, logger: logging.Logger, what: str) -> None:
        self._on_connection = on_connection
        self._logger = logger
        self._what = what
        self._connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed: list[Connection] = []  # closed by close(), to wait for in wait_closed()
        self._closing = False

    @property
    def active(self) -> int:
        """Connections whose handler is still running."""
        return len(self._connections)

    async def run(self, conn: Connection) -> None:
        """Run the handler for ``conn`` in the current task; close ``conn`` when it returns."""
        if self._closing:
            await conn.aclose()
            return
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self._connections.add(conn)
        try:
            await self._on_connection(conn)
        except TransportError as exc:
            self._logger.debug("%s: connection %s ended: %s", self._what, conn.peer.label, exc)
        except Exception:
            self._logger.exception("%s: handler for %s failed", self._what, conn.peer.label)
        finally:
            self._connections.discard(conn)
            if task is not None:
                self._tasks.discard(task)
            await conn.aclose()

    def spawn(self, conn: Connection) -> None:
        """Run the handler for ``conn`` in a new task."""
        task = asyncio.get_running_loop().create_task(self.run(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        """Close every connection and cancel every handler."""
        self._closing = True
        for conn in self._connections:
            self._closed.append(conn)
            conn.close()
        for task in list(self._tasks):
            task.cancel()

    async def wait_closed(self) -> None:
        """Wait for the handlers to end and the connections closed by :meth:`close` to release their resources."""
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        closed, self._closed = self._closed, []
        if closed:
            await asyncio.gather(*(conn.wait_closed() for conn in closed), return_exceptions=True)
