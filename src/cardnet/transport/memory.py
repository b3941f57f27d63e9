"""In-memory transport: connected pairs of endpoints with bounded queues.

For tests and the simulator. Same :class:`~cardnet.transport.base.Connection`
semantics as TCP: ordered delivery, a bounded inbox at each end (a sender
waits while the peer's inbox is full — back-pressure), at most
``Limits.max_pending_sends`` waiting senders, the frame limit, and the same
closed/broken rules. Messages are passed as objects (they are immutable), not
re-encoded. No clock, no threads: everything happens on the running event loop.

:class:`MemoryNetwork` adds names: ``listen(name, on_connection)`` and
``await dial(name)``, so code written against a dialer (e.g.
:class:`~cardnet.transport.link.ReconnectingLink`) runs unchanged in memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from cardnet.transport.base import (
    DEFAULT_LIMITS,
    LOGGER_NAME,
    ConnectionBase,
    HandlerSet,
    Limits,
    OnConnection,
    PeerInfo,
)
from cardnet.transport.errors import BrokenError, TransportError
from cardnet.wire import Message

log = logging.getLogger(LOGGER_NAME)


class MemoryConnection(ConnectionBase):
    """One end of an in-memory pair; create pairs with :func:`memory_pair`."""

    def __init__(self, label: str, limits: Limits) -> None:
        super().__init__(PeerInfo(transport="memory", label=label), limits)
        self._other: MemoryConnection | None = None
        self._inbox: deque[Message] = deque()
        self._readable = asyncio.Event()  # set when the inbox gains a message or the state changes
        self._space = asyncio.Event()  # set when the inbox loses a message or the state changes
        self._send_lock = asyncio.Lock()  # FIFO among waiting senders

    @property
    def inbox_size(self) -> int:
        """Messages delivered to this end and not yet received."""
        return len(self._inbox)

    async def send(self, msg: Message) -> None:
        self._check()
        self._check_frame(msg)
        self._enter_send()
        try:
            async with self._send_lock:
                while True:
                    self._check()
                    other = self._other
                    if other is None:  # pragma: no cover - pairs are wired at construction
                        raise BrokenError("unconnected memory endpoint")
                    if len(other._inbox) < other._limits.inbox_messages:
                        break
                    other._space.clear()
                    await other._space.wait()
                other._inbox.append(msg)
                other._readable.set()
        finally:
            self._leave_send()

    async def recv(self) -> Message:
        while True:
            if self._closed_here:
                self._raise()
            if self._inbox:
                msg = self._inbox.popleft()
                self._space.set()
                return msg
            self._check()
            self._readable.clear()
            await self._readable.wait()

    def close(self) -> None:
        if self._closed_here:
            return
        was_broken = self._broken_why is not None
        self._closed_here = True
        self._finished.set()
        self._inbox.clear()
        self._wake()
        other = self._other
        if other is not None:
            if not was_broken:
                other._break("the peer closed the connection", peer_finished=True)
            other._wake()

    def fail(self, why: str = "the in-memory link failed") -> None:
        """Break both ends as a network failure would (for fault injection); both see BrokenError."""
        self._break(why)
        self._wake()
        if self._other is not None:
            self._other._break(why)
            self._other._wake()

    def _wake(self) -> None:
        self._readable.set()
        self._space.set()

    async def wait_closed(self) -> None:
        await self._finished.wait()

    async def aclose(self) -> None:
        self.close()
        await self.wait_closed()


def memory_pair(
    limits: Limits = DEFAULT_LIMITS, labels: tuple[str, str] = ("memory:a", "memory:b")
) -> tuple[MemoryConnection, MemoryConnection]:
    """Two connected endpoints; each one's ``peer.label`` names the other end."""
    a = MemoryConnection(labels[1], limits)
    b = MemoryConnection(labels[0], limits)
    a._other = b
    b._other = a
    return a, b


class MemoryListener:
    """A name on a :class:`MemoryNetwork` that accepts connections (like a listening socket)."""

    def __init__(self, network: MemoryNetwork, name: str, on_connection: OnConnection) -> None:
        self._network = network
        self.name = name
        self._handlers = HandlerSet(on_connection, log, f"memory listener {name}")

    @property
    def active(self) -> int:
        return self._handlers.active

    def _accept(self, conn: MemoryConnection) -> None:
        self._handlers.spawn(conn)

    def close(self) -> None:
        """Stop accepting, close every accepted connection (their peers see BrokenError)."""
        self._network._unlisten(self)
        self._handlers.close()

    async def wait_closed(self) -> None:
        await self._handlers.wait_closed()

    async def aclose(self) -> None:
        self.close()
        await self.wait_closed()


class MemoryNetwork:
    """Named in-memory listeners, so dialers work without sockets."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._listeners: dict[str, MemoryListener] = {}
        self._dialed = 0

    def listen(self, name: str, on_connection: OnConnection) -> MemoryListener:
        if name in self._listeners:
            raise TransportError("bad_config", f"memory address {name!r} is already in use; close its listener first")
        listener = MemoryListener(self, name, on_connection)
        self._listeners[name] = listener
        return listener

    def _unlisten(self, listener: MemoryListener) -> None:
        if self._listeners.get(listener.name) is listener:
            del self._listeners[listener.name]

    async def dial(self, name: str, limits: Limits | None = None) -> MemoryConnection:
        """Connect to ``name``; raises :class:`BrokenError` if nothing listens there."""
        await asyncio.sleep(0)  # a connect is a scheduling point, as on a real network
        listener = self._listeners.get(name)
        if listener is None:
            raise BrokenError(f"nothing listens on memory address {name!r} (connection refused); is the server up?")
        self._dialed += 1
        ours, theirs = memory_pair(
            limits or self._limits, labels=(f"memory:{name}#{self._dialed}/client", f"memory:{name}")
        )
        listener._accept(theirs)
        return ours
