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
other connections are untouched. A frame above ``Limits.recv_limit`` (a
server's receive limit) is refused at its header instead: ``recv`` raises
:class:`~.errors.TooLarge` (after the messages before it), nothing more is read,
sends still work (the server tells the peer), and closing then half-closes
(FIN after what was sent) and reads past, keeping nothing, whatever the peer
still sends for at most ``Limits.linger_s`` before closing the socket, so that
the peer reads the refusal instead of a reset. Closing is graceful — buffered frames are
flushed — but never takes longer than ``Limits.linger_s``: then the transport
is aborted.

Only this driver touches sockets and the event loop's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import socket
import ssl
import stat
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from cardnet.transport.base import (
    DEFAULT_LIMITS,
    DEFAULT_SERVER_LIMITS,
    LOGGER_NAME,
    ConnectionBase,
    HandlerSet,
    LargeFrames,
    Limits,
    LogThrottle,
    PeerInfo,
    ServerLimits,
)
from cardnet.transport.errors import BrokenError, CannotListen, TooLarge, TransportError
from cardnet.transport.framing import FrameDecoder, FrameRefused, SkippedFrame, encode_frame
from cardnet.wire import DecodeError, Message

log = logging.getLogger(LOGGER_NAME)

REFUSAL_LOG_EVERY_S = 10.0  # a server logs connections refused over its caps at most this often (with a count)
# Connections asyncio accepts in one pass of the loop (and the kernel's listen queue). An accepted connection
# over a cap is aborted by the accept callback, which runs a pass or two later, and its descriptor is closed a
# pass after that: up to about four passes' accepts are open beyond the cap at once under a flood, so the
# batch is kept small (asyncio's default is 100). The kernel's queue is not: see TcpServer._listening.
ACCEPT_BACKLOG = 32
COLLECT_AFTER = 64  # a server runs a full garbage collection each time this many of its connections have ended
# A server's connections closed for a bad frame, or whose frame was refused as too large, are logged at most
# BAD_FRAME_LOG_BURST times every BAD_FRAME_LOG_EVERY_S (the next line says how many were left out): one line each let
# a peer that connects again and again write the server's log as fast as it could connect.
BAD_FRAME_LOG_EVERY_S = 10.0
BAD_FRAME_LOG_BURST = 20
# An HTTP request (or other text) on a cardnet port is logged once per peer address (a browser or a scanner tries
# again and again): a server remembers up to this many such addresses, then forgets them all and starts again.
NOT_CARDNET_PEERS = 1024
UNIX_PROBE_TIMEOUT_S = 2.0  # how long start_unix waits for a socket already at the path to answer


def port_number(text: str) -> int | None:
    """A port written as ASCII digits, 0..65535, or None (``str.isdigit`` alone also passes superscripts, which
    ``int`` refuses, and other scripts' digits, which it reads)."""
    if not text.isascii() or not text.isdigit() or len(text) > 5:
        return None
    port = int(text)
    return port if port <= 65535 else None


def host_port(address: str) -> tuple[str, int]:
    """``HOST:PORT`` as (host, port); an empty host is 127.0.0.1. ``ValueError`` saying so if it is not."""
    host, _, text = address.rpartition(":")
    port = port_number(text)
    if port is None:
        raise ValueError(f"{address!r} is not HOST:PORT")
    return host or "127.0.0.1", port


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

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        limits: Limits,
        *,
        initial: bytes = b"",
        bad_frame_log: LogThrottle | None = None,
        large_frames: LargeFrames | None = None,
        not_cardnet_peers: set[str] | None = None,
    ) -> None:
        """``initial``: stream bytes read already by someone else (an HTTP parser before an Upgrade), decoded first;
        ``bad_frame_log``: how often its bad or refused frames are logged, shared by a server's connections (None:
        each time); ``large_frames``: a server's places for reading large frames (None: no such bound);
        ``not_cardnet_peers``: the peer addresses whose non-cardnet bytes were logged already, shared by a server's
        connections (None: this connection's own)."""
        super().__init__(_peer_info(writer), limits)
        self._bad_frame_log = bad_frame_log or LogThrottle(BAD_FRAME_LOG_EVERY_S, BAD_FRAME_LOG_BURST)
        self._not_cardnet_peers = set() if not_cardnet_peers is None else not_cardnet_peers
        self._initial = initial
        self._reader = reader
        self._writer = writer
        self._loop = asyncio.get_running_loop()
        self._decoder = FrameDecoder(limits.max_frame, recv_limit=limits.recv_limit)
        self._too_large: TooLarge | None = None  # a frame above recv_limit was refused: nothing more is read
        self._large = large_frames
        self._large_peer = self.peer.address[0] if self.peer.address is not None else None
        self._inbox: deque[Message] = deque()  # decoded, not yet returned (bounded by one read chunk)
        self._send_lock = asyncio.Lock()
        self._recv_lock = asyncio.Lock()
        self._closer: asyncio.Task[None] | None = None
        self.waiting_since: float | None = None  # loop time recv() began waiting for a whole frame (None: not waiting)
        self.got_frame = False  # recv() has returned a message (a server's handshake is over)
        self.frame_since: float | None = None  # loop time the first bytes of the frame being read came (None: none)
        self.sending_since: float | None = None  # loop time a send began waiting for room (None: none waits)
        writer.transport.set_write_buffer_limits(high=limits.write_buffer_bytes)

    @property
    def frame_bytes(self) -> int | None:
        """Bytes of the message being read, as its length prefix announced them (None: none, or prefix incomplete)."""
        return self._decoder.partial_size

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
                    await self._drain()
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
                        await self._drain()
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

    async def _drain(self) -> None:
        """Wait for room below the high-water mark; :attr:`sending_since` says since when while it waits (a
        server's sweeper disconnects a peer that does not read, see ``ServerLimits.send_timeout_s``)."""
        self.sending_since = self._loop.time()
        try:
            await self._writer.drain()  # returns at once (without yielding) while there is room
        finally:
            self.sending_since = None

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
            if not self._inbox:
                if self._too_large is not None:
                    raise TooLarge(self._too_large.frame, str(self._too_large))
                self.waiting_since = self._loop.time()
                await self._fill()
                self.waiting_since = None
            self.got_frame = True
            return self._inbox.popleft()

    async def _fill(self) -> None:
        """Read until the inbox holds a message (or raise)."""
        while not self._inbox:
            self._check()
            large = self._large
            if large is not None:
                size = self._decoder.partial_size
                if size is not None and size > large.threshold:  # read more of it only in a place of the server's
                    self.frame_since = None
                    await large.take(self, self._large_peer)
                    self._check()
                    self.frame_since = self._loop.time()  # its time allowance starts now
            if self._initial:
                data, self._initial = self._initial, b""
            else:
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
                got = self._decoder.feed(data)
            except FrameRefused as exc:
                self._refuse(exc)
                if not self._inbox:
                    raise TooLarge(exc.frame, str(self._too_large)) from None
                return  # the messages before it first
            except DecodeError as exc:
                self._fail_bad_frame(exc)
                self._raise()
            if got:
                self._inbox.extend(got)
                self.frame_since = None
                if large is not None:
                    size = self._decoder.partial_size
                    if size is None or size <= large.threshold:
                        large.give_back(self)  # its large frame is whole (no other begun)
            if self.frame_since is None and not self._decoder.at_boundary:
                self.frame_since = self._loop.time()
            if self._decoder.has_skipped:
                self._skipped(self._decoder.take_skipped())

    def _skipped(self, frames: list[SkippedFrame]) -> None:
        for f in frames:
            log.warning(
                "%s sent a %d-byte message (mtype 0x%04x, %s -> %s), above this connection's frame limit of %d: "
                "read past it", self._peer.label, f.size, f.mtype, f.src, f.dst, f.limit,
            )  # fmt: skip
            if self.on_skipped is not None:
                self.on_skipped(f)

    def _refuse(self, exc: FrameRefused) -> None:
        f = exc.frame
        more = self._bad_frame_log.due(self._loop.time())
        if more is not None:
            log.warning(
                "%s began a %d-byte message (mtype 0x%04x, %s -> %s), above this connection's receive limit of %d: "
                "refused unread%s", self._peer.label, f.size, f.mtype, f.src, f.dst, f.limit, more,
            )  # fmt: skip
        self._inbox.extend(exc.decoded)
        self.frame_since = None
        self._too_large = TooLarge(
            f, f"{self._peer.label} began a {f.size}-byte message (mtype 0x{f.mtype:04x}), above the receive limit "
            f"of {f.limit} bytes: refused unread; tell the peer and close the connection",
        )  # fmt: skip

    def expire(self, why: str) -> None:
        """Disconnect now (a server's handshake or idle timeout): every later call raises :class:`BrokenError`."""
        self._fail(why)

    def _fail_bad_frame(self, exc: DecodeError) -> None:
        if exc.reason == "not_cardnet":  # a browser's or a scanner's request: once per peer address, in words
            self._fail_not_cardnet(exc)
            return
        more = self._bad_frame_log.due(self._loop.time())
        if more is not None:
            log.warning("closing connection from %s: bad frame (%s): %s%s", self._peer.label, exc.reason, exc, more)
        self._fail(f"the peer sent a bad frame ({exc.reason})", exc)

    def _fail_not_cardnet(self, exc: DecodeError) -> None:
        peer = self._peer.address[0] if self._peer.address is not None else self._peer.label
        seen = self._not_cardnet_peers
        if peer not in seen:
            if len(seen) >= NOT_CARDNET_PEERS:
                seen.clear()
            seen.add(peer)
            more = self._bad_frame_log.due(self._loop.time())
            if more is not None:
                log.warning("an HTTP request (or other non-cardnet bytes) on a cardnet port from %s: closed (logged "
                            "once for this address)%s", peer, more)  # fmt: skip
        self._fail("the peer sent an HTTP request (or other non-cardnet bytes)", exc)

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
        if self._large is not None:
            self._large.give_back(self)
        if self._closer is not None or self._loop.is_closed():
            return
        if self._too_large is not None and self._broken_why is None:
            self._closer = self._loop.create_task(self._read_past_then_linger())
            return
        self._writer.close()
        self._closer = self._loop.create_task(self._linger())

    async def _read_past_then_linger(self) -> None:
        """After a refused frame: send FIN after what was written, read past (dropping it) what the peer still sends
        until it closes, for at most linger_s, then close. Closing with its bytes unread would send a reset, on
        which the peer may drop the refusal before reading it."""
        writer = self._writer
        try:
            with contextlib.suppress(OSError, TimeoutError, RuntimeError):
                async with asyncio.timeout(self._limits.linger_s):
                    if writer.can_write_eof():
                        writer.write_eof()
                    while await self._reader.read(self._limits.read_chunk_bytes):
                        pass
        except BaseException:  # cancelled (the loop is closing): no lingering
            writer.transport.abort()
            raise
        writer.close()
        await self._linger()

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


@dataclass(eq=False, slots=True)
class _Slot:
    """One accepted connection counted against a server's caps, from accept until its handler ends."""

    peer: str | None  # the peer's IP address (None on a Unix socket: no per-peer cap)
    accepted_at: float  # loop time
    writer: asyncio.StreamWriter
    conn: TcpConnection | None = None  # made once the TLS handshake (if any) is done


class TcpServer:
    """Accepts TCP (or TLS, or Unix-socket) connections and runs ``on_connection(conn)`` for each, in its own task.

    The connection is closed when the handler returns; a handler that fails
    is logged and does not affect the others. ``close()`` stops listening,
    closes every connection and cancels the handlers.

    Every accepted connection counts against ``server_limits``
    (:class:`~.base.ServerLimits`): beyond ``max_connections`` in all or
    ``max_per_peer`` from one IP address it is aborted at once, before any TLS
    handshake (no TLS buffers are allocated for it); then the TLS handshake
    and the first whole frame must arrive within ``handshake_timeout_s`` of
    the accept, a handler that waits ``idle_timeout_s`` for a whole frame
    has its connection aborted, and so has one whose peer began a frame and
    has not finished it ``frame_timeout_s`` (plus a second per
    ``min_recv_bytes_per_s`` bytes of it) after the handler began waiting for
    it (a slow-sending peer). So a listening socket holds at most
    ``max_connections`` connections, each with bounded buffers (:class:`Limits`
    and one frame), and none of them for long unless it carries frames. A
    send that has waited ``send_timeout_s`` for room (a peer that sends
    requests and never reads the answers) aborts its connection too.
    """

    def __init__(self, *, limits: Limits = DEFAULT_LIMITS, server_limits: ServerLimits = DEFAULT_SERVER_LIMITS) -> None:
        self._limits = limits
        self._server_limits = server_limits
        self._server: asyncio.Server | None = None
        self._handlers: HandlerSet | None = None
        self._address: tuple[str, int] | None = None
        self._unix: tuple[str, int, int] | None = None  # (path, st_dev, st_ino) of the socket this server bound
        self._what = "server"
        self._slots: set[_Slot] = set()
        self._per_peer: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._refused_unlogged = 0
        self._refusal_logged_at = -1e9
        self._ended = 0  # connections ended since the last garbage collection (see _sweep)
        self._bad_frame_log = LogThrottle(BAD_FRAME_LOG_EVERY_S, BAD_FRAME_LOG_BURST)  # its connections' bad frames
        self._tls_failed_log = LogThrottle(BAD_FRAME_LOG_EVERY_S, BAD_FRAME_LOG_BURST)  # its failed TLS handshakes
        self._not_cardnet_peers: set[str] = set()  # peers whose non-cardnet bytes were logged (NOT_CARDNET_PEERS)
        self._large_frames = LargeFrames(server_limits)  # its connections' places for reading large frames
        self.refused = 0  # connections aborted at accept for being over a cap
        self.expired = 0  # connections aborted by the handshake or idle timeout
        self.evicted = 0  # idle connections closed to make room for a new one (see _make_room)

    async def start(
        self,
        host: str,
        port: int,
        on_connection: Callable[[TcpConnection], Awaitable[None]],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Listen on ``host:port`` (port 0 picks a free one; read it from :attr:`address`)."""
        self._begin(on_connection, f"tcp server {host}:{port}")
        try:
            server = await asyncio.start_server(
                self._accepter(ssl_context), host, port, limit=self._limits.read_chunk_bytes, backlog=ACCEPT_BACKLOG
            )
        except OSError as exc:
            raise CannotListen(host, port, exc) from exc
        self._listening(server)
        self._address = _address(server.sockets[0].getsockname()) if server.sockets else None

    async def start_unix(
        self,
        path: str | os.PathLike[str],
        on_connection: Callable[[TcpConnection], Awaitable[None]],
        *,
        mode: int = 0o600,
    ) -> None:
        """Listen on the Unix socket ``path`` (file mode ``mode``), refusing to take over a live one.

        A socket file at ``path`` that a process still listens on raises
        ``TransportError('in_use')``; one nobody answers on (left by a process
        that died) is replaced. On close the socket file is removed only if it
        is still the one this server bound.
        """
        where = os.fspath(path)
        self._begin(on_connection, f"unix server {where}")
        await _claim_unix_path(where)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(where)  # fails if another process bound the path since the check: never replace it
            os.chmod(where, mode)
            st = os.stat(where)
            self._unix = (where, st.st_dev, st.st_ino)
            server = await asyncio.start_unix_server(
                self._accepter(None), sock=sock, limit=self._limits.read_chunk_bytes, backlog=ACCEPT_BACKLOG
            )
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise _in_use(where) from None
            raise BrokenError(
                f"could not listen on {where}: {exc.strerror or exc}; check the folder exists and is writable"
            ) from exc
        self._listening(server)

    def _begin(self, on_connection: Callable[[TcpConnection], Awaitable[None]], what: str) -> None:
        if self._handlers is not None:
            raise TransportError("bad_config", "this TcpServer was already started; make a new one")

        async def handle(conn: Any) -> None:
            await on_connection(conn)

        self._what = what
        self._handlers = HandlerSet(handle, log, what)

    def _listening(self, server: asyncio.Server) -> None:
        # The kernel's queue of connections not yet accepted holds a burst of max_connections: asyncio accepts at
        # most ACCEPT_BACKLOG of them a pass (its batch is the backlog it was given), and listen() again on a
        # listening socket only changes the kernel's queue. With the queue as small as the batch, a burst of
        # connects overflowed it; with SYN cookies (Linux's default) the peer's handshake still completes, so it
        # sent its first message on a connection the kernel then reset (8 peers x 64 connections at once: 20 to
        # 600 resets; tests/integration/test_host_connect_burst.py).
        queue = max(ACCEPT_BACKLOG, self._server_limits.max_connections)
        for sock in server.sockets:  # (asyncio's wrapper has no listen(): a duplicate descriptor of the same socket)
            with contextlib.suppress(OSError), socket.socket(fileno=os.dup(sock.fileno())) as same:
                same.listen(queue)  # (the kernel caps it at net.core.somaxconn)
        self._server = server
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    def _accepter(
        self, ssl_context: ssl.SSLContext | None
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], None]:
        def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            # A plain callback: the handler runs in a task we own (Python 3.11's start_server
            # logs a spurious error when its own handler task is cancelled).
            address = _address(writer.get_extra_info("peername"))
            peer = address[0] if address is not None else None
            limits = self._server_limits
            if (
                self._handlers is None
                or (len(self._slots) >= limits.max_connections and not self._make_room())
                or (peer is not None and self._per_peer.get(peer, 0) >= limits.max_per_peer)
            ):
                writer.transport.abort()  # at once: an over-cap connection holds nothing
                self._refused(peer)
                return
            slot = _Slot(peer, asyncio.get_running_loop().time(), writer)
            self._slots.add(slot)
            if peer is not None:
                self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
            task = asyncio.get_running_loop().create_task(self._run(slot, reader, ssl_context))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return accept

    async def _run(self, slot: _Slot, reader: asyncio.StreamReader, ssl_context: ssl.SSLContext | None) -> None:
        try:
            if ssl_context is not None:
                left = slot.accepted_at + self._server_limits.handshake_timeout_s - asyncio.get_running_loop().time()
                raw = slot.writer.transport
                # Python 3.11's stream protocol learns that it runs over TLS only once start_tls returns; a peer's
                # close_notify in the handshake's last flight reached it before, and asyncio logged "returning true
                # from eof_received() has no effect when using ssl": a warning in our log each time a peer
                # connected (tests/integration/test_tls_close_log.py). Tell it first (the flag start_tls sets).
                setattr(raw.get_protocol(), "_over_ssl", True)  # noqa: B010
                try:
                    await slot.writer.start_tls(ssl_context, ssl_handshake_timeout=max(left, 0.001))
                    if slot.writer.transport is None:
                        raise ConnectionResetError("the peer left during the TLS handshake")
                except Exception as exc:  # a failed or timed-out handshake ends this connection only
                    more = self._tls_failed_log.due(asyncio.get_running_loop().time())
                    if more is not None:  # (an operator whose peer's certificate expired or came from another CA)
                        log.warning(
                            "%s: TLS handshake with %s failed (%s): a peer that is not a cardnet host with a "
                            "certificate from this host's CA, valid now, or one that does not speak TLS; check that "
                            "peer's [tls] config and certificate (cardnet ca host-cert)%s",
                            self._what, slot.peer, str(exc) or type(exc).__name__, more,
                        )  # fmt: skip
                    raw.abort()
                    # Python 3.11's StreamWriter.start_tls leaves no transport when the peer left mid-handshake,
                    # and the writer's __del__ then fails: give it back the raw one (aborted).
                    setattr(slot.writer, "_transport", raw)  # noqa: B010
                    return
            slot.conn = TcpConnection(
                reader, slot.writer, self._limits, bad_frame_log=self._bad_frame_log, large_frames=self._large_frames,
                not_cardnet_peers=self._not_cardnet_peers,
            )  # fmt: skip
            assert self._handlers is not None
            await self._handlers.run(slot.conn)
        finally:
            self._release(slot)
            self._ended += 1
            if self._ended >= COLLECT_AFTER:
                # A dead connection is a web of reference cycles (asyncio's protocol, transport and futures,
                # with TLS a 256 KiB read buffer) that only the cyclic collector frees, and one that lived
                # through two young collections waits for a full one, which may not come for a long time:
                # without this, a flood's dead connections pile up far beyond max_connections.
                self._ended = 0
                gc.collect()

    def _make_room(self) -> bool:
        """The server is full: close the remote connection idle the longest, if it has been idle at least
        ``handshake_timeout_s`` (a peer that sent a message and then only holds its place), to let a new one in;
        whether one was closed. Without it, connections that each sent one message and then waited filled the server
        for ``idle_timeout_s`` (600 s), every newcomer refused meanwhile."""
        now = asyncio.get_running_loop().time()
        idlest, since = None, now - self._server_limits.handshake_timeout_s
        for slot in self._slots:
            conn = slot.conn
            if (
                slot.peer is not None  # (a remote peer: the application socket's are this machine's own programs)
                and conn is not None
                and conn.got_frame
                and conn.sending_since is None
                and conn.frame_since is None
            ):
                waiting = conn.waiting_since
                if waiting is not None and waiting <= since:
                    idlest, since = slot, waiting
        if idlest is None:
            return False
        self._release(idlest)  # (its handler ends on its own; it no longer counts)
        self.evicted += 1
        self._expire(idlest, f"the server was full and it was the longest idle ({now - since:.1f} s): made room")
        return True

    def _release(self, slot: _Slot) -> None:
        """``slot`` no longer counts against the caps (once only)."""
        if slot not in self._slots:
            return
        self._slots.discard(slot)
        if slot.peer is not None:
            n = self._per_peer.get(slot.peer, 0) - 1
            if n > 0:
                self._per_peer[slot.peer] = n
            else:
                self._per_peer.pop(slot.peer, None)

    def _refused(self, peer: str | None) -> None:
        self.refused += 1
        self._refused_unlogged += 1
        now = asyncio.get_running_loop().time()
        if now - self._refusal_logged_at >= REFUSAL_LOG_EVERY_S:
            limits = self._server_limits
            log.warning(
                "%s: closed %d new connection(s) over the cap (%d held, max_connections=%d, max_per_peer=%d; "
                "the last from %s)",
                self._what,
                self._refused_unlogged,
                len(self._slots),
                limits.max_connections,
                limits.max_per_peer,
                peer or "a local process",
            )
            self._refused_unlogged = 0
            self._refusal_logged_at = now

    async def _sweep(self) -> None:
        """Abort connections past their handshake, idle or frame timeout (one pass every quarter of the shortest)."""
        limits = self._server_limits
        handshake_s, idle_s, frame_s = limits.handshake_timeout_s, limits.idle_timeout_s, limits.frame_timeout_s
        send_s = limits.send_timeout_s
        rate = limits.min_recv_bytes_per_s
        period = min(max(min(handshake_s, idle_s or handshake_s, frame_s, send_s or handshake_s) / 4, 0.05), 1.0)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            for slot in list(self._slots):
                conn = slot.conn
                if conn is None or not conn.got_frame:
                    if now - slot.accepted_at > handshake_s:
                        self._expire(slot, f"no message within handshake_timeout_s={handshake_s:g}")
                    continue
                sending = conn.sending_since
                if send_s is not None and sending is not None and now - sending > send_s:
                    self._expire(slot, f"a send waited send_timeout_s={send_s:g} for room: the peer does not read")
                    continue
                waiting = conn.waiting_since
                if waiting is None:
                    continue
                if idle_s is not None and now - waiting > idle_s:
                    self._expire(slot, f"idle for idle_timeout_s={idle_s:g}")
                elif conn.frame_since is not None:
                    allowed_s = frame_s + (conn.frame_bytes or 0) / rate
                    if now - max(conn.frame_since, waiting) > allowed_s:
                        self._expire(
                            slot,
                            f"a frame begun ({conn.frame_bytes} bytes announced) was not whole within "
                            f"{allowed_s:g} s (frame_timeout_s={frame_s:g}, min_recv_bytes_per_s={rate})",
                        )

    def _expire(self, slot: _Slot, why: str) -> None:
        self.expired += 1
        log.debug("%s: closing the connection from %s: %s", self._what, slot.peer or "a local process", why)
        if slot.conn is not None:
            slot.conn.expire(why)
        else:
            slot.writer.transport.abort()

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

    @property
    def held(self) -> int:
        """Connections counted against the caps right now (in the TLS handshake or with a running handler)."""
        return len(self._slots)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for slot in self._slots:
            if slot.conn is None:
                slot.writer.transport.abort()
        if self._handlers is not None:
            self._handlers.close()
        for task in self._tasks:  # those still in the TLS handshake
            task.cancel()
        if self._unix is not None:
            path, dev, ino = self._unix
            self._unix = None
            with contextlib.suppress(OSError):
                st = os.stat(path)
                if (st.st_dev, st.st_ino) == (dev, ino):  # still ours: another process may have replaced it
                    os.unlink(path)

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._handlers is not None:
            await self._handlers.wait_closed()
        if self._sweeper is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
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


def _in_use(path: str) -> TransportError:
    return TransportError(
        "in_use",
        f"{path} is the socket of a running process (another host?): stop that process first, "
        "or give this one another socket path",
    )


async def _claim_unix_path(path: str) -> None:
    """Make way for binding ``path``: nothing there, or a stale socket (removed); a live one raises ``in_use``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise BrokenError(f"cannot use {path}: {exc.strerror or exc}; check the folder exists and is readable") from exc
    if not stat.S_ISSOCK(st.st_mode):
        raise TransportError("in_use", f"{path} exists and is not a socket: remove it or choose another socket path")
    try:
        async with asyncio.timeout(UNIX_PROBE_TIMEOUT_S):
            _, writer = await asyncio.open_unix_connection(path)
    except (ConnectionRefusedError, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):  # stale: the process that bound it is gone
            os.unlink(path)
        return
    except TimeoutError:
        raise _in_use(path) from None  # a live listener with a full backlog
    except OSError as exc:
        raise TransportError(
            "in_use", f"cannot tell whether {path} is in use ({exc.strerror or exc}): remove it if no process uses it"
        ) from exc
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    raise _in_use(path)
