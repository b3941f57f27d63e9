"""TCP transport (optionally mutual TLS): a thin asyncio driver around :mod:`.framing`.

Theory of operation. A :class:`TcpConnection` owns one asyncio stream pair and
no background task. ``send`` waits (``writer.drain()``) until the socket's
write buffer is below ``Limits.write_buffer_bytes`` and only then writes one
whole frame, so our buffer never exceeds that mark plus one frame, and a
cancelled send has written nothing. ``send_many`` does the same for several
messages with one write per wait: as many whole frames as fit below the mark
(at least one), so the same bound holds, and one system call carries many
messages. Sends that wait are the outgoing queue:
at most ``Limits.max_pending_sends`` of them, the next one raises
``queue_full``. ``recv`` reads ``Limits.read_chunk_bytes`` at a time into a
:class:`~.framing.FrameDecoder` only when asked for a message, so a receiver
that does not read stops reading the socket (the kernel then pushes back on
the peer); ``recv_many`` hands out everything decoded from the chunks read
so far at once. A frame the decoder refuses is logged on ``cardnet.transport``
with its reason, the connection is aborted and the reader gets
:class:`BrokenError` with the :class:`~cardnet.wire.DecodeError` chained;
other connections are untouched. Closing is graceful — buffered frames are
flushed — but never takes longer than ``Limits.linger_s``: then the transport
is aborted.

Only this driver touches sockets and the event loop's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

from cardnet.transport.base import DEFAULT_LIMITS, LOGGER_NAME, ConnectionBase, HandlerSet, Limits, PeerInfo
from cardnet.transport.errors import BrokenError, TransportError
from cardnet.transport.framing import FrameDecoder, encode_frame
from cardnet.wire import DecodeError, Message

log = logging.getLogger(LOGGER_NAME)


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2 and isinstance(value[0], str) and isinstance(value[1], int):
        return (value[0], value[1])
    return None


def _peer_info(writer: asyncio.StreamWriter) -> PeerInfo:
    address = _address(writer.get_extra_info("peername"))
    label = f"{address[0]}:{address[1]}" if address else "unknown peer"
    ssl_object = writer.get_extra_info("ssl_object")
    cert_der: bytes | None = None
    if isinstance(ssl_object, ssl.SSLObject):
        cert_der = ssl_object.getpeercert(binary_form=True)
    return PeerInfo(
        transport="tls" if ssl_object is not None else "tcp", label=label, address=address, cert_der=cert_der
    )


class TcpConnection(ConnectionBase):
    """A message connection over one TCP (or TLS) stream; made by :func:`dial` or :class:`TcpServer`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limits: Limits) -> None:
        super().__init__(_peer_info(writer), limits)
        self._reader = reader
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder(limits.max_frame)
        self._inbox: deque[Message] = deque()  # decoded, not yet returned (bounded by one read chunk)
        self._send_lock = asyncio.Lock()
        self._recv_lock = asyncio.Lock()
        self._closer: asyncio.Task[None] | None = None
        writer.transport.set_write_buffer_limits(high=limits.write_buffer_bytes)

    @property
    def write_buffer_bytes(self) -> int:
        """Bytes written but not yet accepted by the kernel (at most the high-water mark plus one frame)."""
        return self._writer.transport.get_write_buffer_size()

    async def send(self, msg: Message) -> None:
        self._check()
        frame = encode_frame(msg, self._limits.max_frame)
        self._enter_send()
        try:
            async with self._send_lock:
                self._check()
                try:
                    await self._writer.drain()  # wait for room below the high-water mark
                except OSError as exc:
                    self._fail(f"sending failed: {exc}", exc)
                    self._raise()
                self._check()
                if self._writer.transport.is_closing():
                    self._fail("the connection was lost")
                    self._raise()
                self._writer.write(frame)
        finally:
            self._leave_send()

    async def send_many(self, msgs: Sequence[Message]) -> None:
        """Send ``msgs`` in order, writing as many whole frames at a time as fit below the mark.

        Every frame is encoded (and checked against the frame limit) before
        anything is written: ``oversize`` sends nothing. The call is one
        pending send. Cancelled while waiting for room, it has written whole
        frames of a prefix of ``msgs`` (possibly none).
        """
        self._check()
        max_frame = self._limits.max_frame
        frames = [encode_frame(msg, max_frame) for msg in msgs]
        if not frames:
            return
        self._enter_send()
        try:
            async with self._send_lock:
                writer = self._writer
                transport = writer.transport
                mark = self._limits.write_buffer_bytes
                i, n = 0, len(frames)
                while i < n:
                    self._check()
                    try:
                        await writer.drain()  # wait for room below the high-water mark
                    except OSError as exc:
                        self._fail(f"sending failed: {exc}", exc)
                        self._raise()
                    self._check()
                    if transport.is_closing():
                        self._fail("the connection was lost")
                        self._raise()
                    room = mark - transport.get_write_buffer_size()
                    size = len(frames[i])
                    j = i + 1
                    while j < n and size + len(frames[j]) <= room:
                        size += len(frames[j])
                        j += 1
                    writer.write(frames[i] if j == i + 1 else b"".join(frames[i:j]))
                    i = j
        finally:
            self._leave_send()

    async def recv_many(self) -> list[Message]:
        """The next message and every message already decoded after it (at most what one read chunk held)."""
        first = await self.recv()
        inbox = self._inbox
        if not inbox:
            return [first]
        out = [first, *inbox]
        inbox.clear()
        return out

    async def recv(self) -> Message:
        if self._closed_here:
            self._raise()
        async with self._recv_lock:
            while not self._inbox:
                self._check()
                try:
                    data = await self._reader.read(self._limits.read_chunk_bytes)
                except OSError as exc:
                    self._fail(f"receiving failed: {exc}", exc)
                    self._raise()
                if self._closed_here or self._broken_why is not None:
                    self._raise()  # closed or broken (e.g. by a failed send) while we waited
                if not data:
                    try:
                        self._decoder.eof()
                    except DecodeError as exc:
                        self._fail_bad_frame(exc)
                    else:
                        self._break("the peer closed the connection", peer_finished=True)
                        self._release()
                    self._raise()
                try:
                    self._inbox.extend(self._decoder.feed(data))
                except DecodeError as exc:
                    self._fail_bad_frame(exc)
                    self._raise()
            return self._inbox.popleft()

    def _fail_bad_frame(self, exc: DecodeError) -> None:
        log.warning("closing connection from %s: bad frame (%s): %s", self._peer.label, exc.reason, exc)
        self._fail(f"the peer sent a bad frame ({exc.reason})", exc)

    def _fail(self, why: str, cause: BaseException | None = None) -> None:
        """The world broke the connection: record why and abort the transport."""
        self._break(why, cause)
        self._writer.transport.abort()
        self._release()

    def close(self) -> None:
        if self._closed_here:
            return
        self._closed_here = True
        self._finished.set()
        self._release()

    def _release(self) -> None:
        """Close the stream (flushing for at most linger_s) once, in the background."""
        if self._closer is not None or self._loop.is_closed():
            return
        self._writer.close()
        self._closer = self._loop.create_task(self._linger())

    async def _linger(self) -> None:
        # Wait for the graceful close in a separate task: cancelling a wait on
        # StreamWriter.wait_closed() would cancel the protocol's own close future.
        closed = self._loop.create_task(self._writer.wait_closed())
        try:
            done, _ = await asyncio.wait({closed}, timeout=self._limits.linger_s)
            if not done:
                log.debug(
                    "connection to %s did not close within %s s: aborting", self._peer.label, self._limits.linger_s
                )
                self._writer.transport.abort()
        finally:
            if not closed.done():
                self._writer.transport.abort()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await asyncio.shield(closed)

    async def wait_closed(self) -> None:
        await self._finished.wait()
        if self._closer is not None:
            await asyncio.shield(self._closer)

    async def aclose(self) -> None:
        self.close()
        await self.wait_closed()

    async def __aenter__(self) -> TcpConnection:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


async def dial(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    *,
    server_hostname: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> TcpConnection:
    """Connect to a :class:`TcpServer` (TLS when ``ssl_context`` is given, see :func:`tls_contexts`).

    ``server_hostname`` is what the server certificate is checked against when
    the context has ``check_hostname`` on (default: ``host``). Raises
    :class:`BrokenError` (cause chained) if the connection or the TLS
    handshake fails or takes longer than ``limits.connect_timeout_s``.
    """
    try:
        async with asyncio.timeout(limits.connect_timeout_s):
            reader, writer = await asyncio.open_connection(
                host,
                port,
                ssl=ssl_context,
                server_hostname=(server_hostname or host) if ssl_context is not None else None,
                limit=limits.read_chunk_bytes,
            )
    except (OSError, TimeoutError) as exc:
        raise BrokenError(
            f"could not connect to {host}:{port}: {exc or type(exc).__name__}; check the address, that the server "
            "is running and, with TLS, the certificates"
        ) from exc
    return TcpConnection(reader, writer, limits)


def dialer(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext | None = None,
    *,
    server_hostname: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> Callable[[], Awaitable[TcpConnection]]:
    """A zero-argument dial function for :class:`~cardnet.transport.link.ReconnectingLink`."""

    async def _dial() -> TcpConnection:
        return await dial(host, port, ssl_context, server_hostname=server_hostname, limits=limits)

    return _dial


class TcpServer:
    """Accepts TCP (or TLS) connections and runs ``on_connection(conn)`` for each, in its own task.

    The connection is closed when the handler returns; a handler that fails
    is logged and does not affect the others. ``close()`` stops listening,
    closes every connection and cancels the handlers.
    """

    def __init__(self, *, limits: Limits = DEFAULT_LIMITS) -> None:
        self._limits = limits
        self._server: asyncio.Server | None = None
        self._handlers: HandlerSet | None = None
        self._address: tuple[str, int] | None = None

    async def start(
        self,
        host: str,
        port: int,
        on_connection: Callable[[TcpConnection], Awaitable[None]],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Listen on ``host:port`` (port 0 picks a free one; read it from :attr:`address`)."""
        if self._server is not None:
            raise TransportError("bad_config", "this TcpServer was already started; make a new one")

        async def handle(conn: Any) -> None:
            await on_connection(conn)

        handlers = HandlerSet(handle, log, f"tcp server {host}:{port}")

        def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # A plain callback: the handler runs in a task we own (Python 3.11's start_server
            # logs a spurious error when its own handler task is cancelled).
            handlers.spawn(TcpConnection(reader, writer, self._limits))

        try:
            server = await asyncio.start_server(
                accept, host, port, ssl=ssl_context, limit=self._limits.read_chunk_bytes
            )
        except OSError as exc:
            raise BrokenError(f"could not listen on {host}:{port}: {exc}; is the port in use?") from exc
        self._server = server
        self._handlers = handlers
        self._address = _address(server.sockets[0].getsockname()) if server.sockets else None

    @property
    def address(self) -> tuple[str, int]:
        """The bound ``(host, port)`` (after :meth:`start`)."""
        if self._address is None:
            raise TransportError("bad_config", "the server is not started: call start() first")
        return self._address

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def active(self) -> int:
        """Connections whose handler is still running."""
        return self._handlers.active if self._handlers is not None else 0

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._handlers is not None:
            self._handlers.close()

    async def wait_closed(self) -> None:
        if self._handlers is not None:
            await self._handlers.wait_closed()
        if self._server is not None:
            await self._server.wait_closed()

    async def aclose(self) -> None:
        self.close()
        await self.wait_closed()

    async def __aenter__(self) -> TcpServer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
