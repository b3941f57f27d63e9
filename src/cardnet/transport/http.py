"""A small, bounded HTTP/1.1 server: asyncio streams around h11, routes to async handlers, an Upgrade hook.

Theory of operation. Every accepted connection runs one task that feeds what
it reads into an ``h11.Connection`` (the sans-I/O parser of python-hyper: no
hand-written parsing here) and answers one request at a time (keep-alive,
pipelined requests in order). Everything is bounded (:class:`HttpLimits`):

* ``max_connections`` held at once (``max_per_peer`` from one IP address);
  one more gets a canned ``503`` and is closed without a byte read;
* ``max_header_bytes``: the request line and headers (h11's
  ``max_incomplete_event_size``), beyond them ``431``;
* ``max_body_bytes``: a larger ``Content-Length`` is refused ``413`` before a
  byte of the body is read, a chunked body ``413`` as soon as it passes it;
* ``request_timeout_s``: a request (from its first byte, or from the accept
  for the first one) must be complete by then, else ``408`` and close (slow
  clients);
* ``idle_timeout_s``: a keep-alive connection with no new request for that
  long is closed quietly;
* ``send_timeout_s``: a client that does not read its answer for that long is
  aborted.

Bad HTTP gets the status h11 hints (``400``, ``431``, ``501``) and the
connection is closed; no error of one connection touches another. A
handler that raises is logged and answered ``500``.

API (what other services use)::

    router = Router()
    router.add("GET", "/events/{event}", show_event)      # {name}: one path segment -> request.params
    server = HttpServer(router, limits=HttpLimits(...), upgrades=("TRN",))
    await server.start("127.0.0.1", 0); server.address; await server.aclose()

    async def show_event(request: Request) -> Response | Upgrade:
        if request.wants_html: return Response.html("<h1>...</h1>")
        return Response.json({...})                        # or error(404, "no_event", "...", request)

Headers on every answer. ``HttpServer(..., headers=...)`` names headers
sent with every answer this server gives, errors included (the ``4xx`` of bad
HTTP, ``408``, ``413``, ``431``, a handler's ``500``, the ``503`` of a full
server), unless the answer sets that header itself (e.g. a page's own
``Content-Security-Policy``); ``answer_headers(request)`` adds headers that
depend on the request (e.g. expiring a cookie it carries) to every answer to a
request whose head was read (not the ``400`` of a head that does not parse,
nor the ``503``, which reads nothing).

A path that no route matches is ``404``; a path routed for other methods is
``405`` with ``Allow``. ``HEAD`` runs the ``GET`` handler and sends no body.
Requests are JSON by default; a person's browser (``Accept`` preferring
``text/html``) gets HTML where a handler offers it, and so do error pages.

Upgrade. A request with ``Connection: upgrade`` and ``Upgrade: P`` where ``P``
is not in ``upgrades`` is refused ``400`` (naming what is offered). A handler
that answers :class:`Upgrade` (only allowed when the request asked for that
protocol) makes the server send ``101 Switching Protocols`` with
``Upgrade: P`` and hand the socket over: ``Upgrade.run(stream)`` gets an
:class:`UpgradedStream` (the reader, the writer and the bytes h11 had already
read past the request) and owns the connection until it returns; the
connection still counts against ``max_connections``. A route that needs the
upgrade answers a request without it with :func:`upgrade_required` (``426``).
:mod:`.http_upgrade` turns the stream into a TRN message connection.

The client side is :mod:`.http_client`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from html import escape
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

from cardnet.transport.errors import CannotListen, TransportError

log = logging.getLogger("cardnet.http")

SERVER_NAME = "cardnet"
REFUSAL_LINGER_S = 1.0  # how long a connection refused 503 is read (and dropped) before it is closed

REASONS = {
    200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 400: "Bad Request", 402: "Payment Required",
    403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
    410: "Gone", 413: "Content Too Large", 415: "Unsupported Media Type", 426: "Upgrade Required",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}  # fmt: skip


@dataclass(frozen=True, kw_only=True, slots=True)
class HttpLimits:
    """Bounds on one listening port (every one finite); see the module docstring for what each does."""

    max_connections: int = 256
    max_per_peer: int = 64
    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 64 * 1024
    request_timeout_s: float = 10.0
    idle_timeout_s: float = 30.0
    send_timeout_s: float = 30.0
    read_chunk_bytes: int = 16 * 1024

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_per_peer", "max_header_bytes", "max_body_bytes", "read_chunk_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TransportError("bad_config", f"HttpLimits.{name} must be a positive int, got {value!r}")
        for name in ("request_timeout_s", "idle_timeout_s", "send_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise TransportError(
                    "bad_config", f"HttpLimits.{name} must be a positive number of seconds, got {value!r}"
                )


DEFAULT_HTTP_LIMITS = HttpLimits()


@dataclass(frozen=True, kw_only=True, slots=True)
class Request:
    """One whole request (the body read, at most ``max_body_bytes``). Header names are lower case."""

    method: str
    path: str  # percent-decoded, without the query
    query: dict[str, str]
    headers: tuple[tuple[str, str], ...]
    body: bytes
    peer: str
    params: dict[str, str] = field(default_factory=dict)  # the route's {name} segments

    def header(self, name: str) -> str | None:
        """The first header ``name`` (any case), or None."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def tokens(self, name: str) -> list[str]:
        """A comma-separated header's tokens, lower case (e.g. ``Connection: keep-alive, Upgrade``)."""
        return [t.strip().lower() for k, v in self.headers if k == name.lower() for t in v.split(",") if t.strip()]

    @property
    def upgrade(self) -> str | None:
        """The protocol asked for with ``Connection: upgrade`` + ``Upgrade: P`` (the first one), or None."""
        if "upgrade" not in self.tokens("connection"):
            return None
        offered = [t.strip() for t in (self.header("upgrade") or "").split(",") if t.strip()]
        return offered[0] if offered else None

    @property
    def wants_html(self) -> bool:
        """Whether the client prefers HTML (a browser) to JSON (a program); JSON when it does not say."""
        accept = (self.header("accept") or "").lower()
        html = accept.find("text/html")
        js = accept.find("application/json")
        return html >= 0 and (js < 0 or html < js)

    def json(self) -> Any:
        """The body as JSON; :class:`HttpError` (400) if it is not."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise HttpError(400, "bad_json", f"the request body is not JSON: {exc}") from None
        except RecursionError:  # (a body of a few KiB of '[' nests deeper than the decoder goes)
            raise HttpError(400, "bad_json", "the request body is JSON nested too deep") from None


@dataclass(frozen=True, slots=True)
class Response:
    """A whole response; build with :meth:`json`, :meth:`html` or :meth:`text`."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Response:
        body = json.dumps(data, indent=1, sort_keys=True).encode() + b"\n"
        return cls(status, body, "application/json", tuple(headers))

    @classmethod
    def html(cls, text: str, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Response:
        return cls(status, text.encode(), "text/html; charset=utf-8", tuple(headers))

    @classmethod
    def text(cls, text: str, status: int = 200, headers: Iterable[tuple[str, str]] = ()) -> Response:
        return cls(status, text.encode(), "text/plain; charset=utf-8", tuple(headers))


@dataclass(frozen=True, slots=True)
class UpgradedStream:
    """The connection after ``101``: ``trailing`` holds bytes the client sent after the request (read already)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    trailing: bytes
    peer: str


@dataclass(frozen=True, slots=True)
class Upgrade:
    """A handler's answer that switches the connection to ``protocol`` and hands it to ``run``."""

    protocol: str
    run: Callable[[UpgradedStream], Awaitable[None]]
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[Request], Awaitable[Response | Upgrade]]


class HttpError(Exception):
    """Raise in a handler to answer an error: ``error(status, reason, message)`` (content-negotiated)."""

    def __init__(self, status: int, reason: str, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.headers = status, reason, message, tuple(headers)


def error(
    status: int, reason: str, message: str, request: Request | None = None, headers: Iterable[tuple[str, str]] = ()
) -> Response:
    """An error answer: JSON ``{"error": reason, "message": ...}``, or a small page for a browser."""
    if request is not None and request.wants_html:
        title = f"{status} {REASONS.get(status, '')}".strip()
        page = f"<!doctype html><title>{escape(title)}</title><h1>{escape(title)}</h1><p>{escape(message)}</p>\n"
        return Response.html(page, status, headers)
    return Response.json({"error": reason, "message": message}, status, headers)


def upgrade_required(protocol: str, message: str, request: Request | None = None) -> Response:
    """``426 Upgrade Required`` naming ``protocol`` (for a route that only works upgraded)."""
    return error(426, "upgrade_required", message, request, [("Upgrade", protocol), ("Connection", "Upgrade")])


class Router:
    """(method, path pattern) -> handler; a pattern's ``{name}`` segment matches one non-empty path segment."""

    def __init__(self) -> None:
        self._routes: list[tuple[tuple[str, ...], dict[str, Handler]]] = []

    def add(self, method: str, pattern: str, handler: Handler) -> None:
        if not pattern.startswith("/"):
            raise TransportError("bad_config", f"a route pattern starts with '/': {pattern!r}")
        parts = tuple(pattern.strip("/").split("/")) if pattern != "/" else ()
        for known, handlers in self._routes:
            if known == parts:
                handlers[method.upper()] = handler
                return
        self._routes.append((parts, {method.upper(): handler}))

    def route(self, method: str, path: str) -> tuple[Handler, dict[str, str]] | tuple[None, list[str]]:
        """The handler and its params, or (None, the methods the path has: empty means no such path)."""
        segments = path.strip("/").split("/") if path.strip("/") else []
        allowed: list[str] = []
        for parts, handlers in self._routes:
            params = _match(parts, segments)
            if params is None:
                continue
            handler = handlers.get("GET" if method == "HEAD" else method)
            if handler is not None:
                return handler, params
            allowed += [m for m in handlers if m not in allowed]
        if "GET" in allowed and "HEAD" not in allowed:
            allowed.append("HEAD")
        return None, allowed


def _match(parts: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    if len(parts) != len(segments):
        return None
    params: dict[str, str] = {}
    for part, seg in zip(parts, segments, strict=True):
        if part.startswith("{") and part.endswith("}"):
            if not seg:
                return None
            params[part[1:-1]] = seg
        elif part != seg:
            return None
    return params


_BUSY_BODY = b'{"error": "busy", "message": "too many connections: retry in a moment"}\n'
AnswerHeaders = Callable[[Request], Iterable[tuple[str, str]]]


def _busy(headers: Iterable[tuple[str, str]]) -> bytes:
    """The canned ``503`` of a full server, with the server's ``headers``."""
    extra = b"".join(b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1")) for k, v in headers)
    return (
        b"HTTP/1.1 503 Service Unavailable\r\nServer: cardnet\r\nContent-Type: application/json\r\n"
        b"Retry-After: 1\r\n%sConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (extra, len(_BUSY_BODY), _BUSY_BODY)
    )


_Head = h11.Request  # (in _Conn, the name h11 is its field)


class _Close(Exception):
    """Internal: end this connection quietly (idle timeout, the client left)."""


@dataclass(eq=False, slots=True)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    peer: str
    h11: h11.Connection
    head: _Head | None = None  # the head of the request being read (for the answer to a refused one)


class HttpServer:
    """Serves ``router`` on one port within ``limits``; see the module docstring."""

    def __init__(
        self,
        router: Router,
        *,
        limits: HttpLimits = DEFAULT_HTTP_LIMITS,
        upgrades: Iterable[str] = (),
        headers: Iterable[tuple[str, str]] = (),
        answer_headers: AnswerHeaders | None = None,
    ) -> None:
        self.router = router
        self.limits = limits
        self.upgrades = {p.lower(): p for p in upgrades}
        self.headers = tuple(headers)  # on every answer (see the module)
        self.answer_headers = answer_headers
        for name, value in self.headers:
            if not name or any(c in name + value for c in "\r\n\0"):
                raise TransportError("bad_config", f"not an HTTP header: {name!r}: {value!r}")
        self._busy = _busy(self.headers)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._per_peer: dict[str, int] = {}
        self._address: tuple[str, int] | None = None
        self._refusing = 0
        self._refusals: set[asyncio.Task[None]] = set()
        self.refused = 0  # connections answered 503 for being over a cap
        self.failures = 0  # handlers that raised (answered 500)
        self.crashes = 0  # connections ended by an unexpected error of this module (a bug: logged)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        """Listen on ``host:port`` (0: a free port); returns the bound address."""
        try:
            self._server = await asyncio.start_server(self._accept, host, port, limit=self.limits.read_chunk_bytes)
        except OSError as exc:
            raise CannotListen(host, port, exc) from exc
        sock = self._server.sockets[0].getsockname()
        self._address = (str(sock[0]), int(sock[1]))
        return self._address

    @property
    def address(self) -> tuple[str, int]:
        if self._address is None:
            raise TransportError("bad_config", "the HTTP server is not started: call start() first")
        return self._address

    @property
    def held(self) -> int:
        """Connections held right now."""
        return len(self._tasks)

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername")
        ip = str(peername[0]) if isinstance(peername, tuple) else "local"
        peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else "local"
        if len(self._tasks) >= self.limits.max_connections or self._per_peer.get(ip, 0) >= self.limits.max_per_peer:
            self.refused += 1
            if self._refusing >= self.limits.max_connections:
                writer.transport.abort()  # a flood: not even a 503
                return
            self._refusing += 1
            refusal = asyncio.get_running_loop().create_task(self._refuse(reader, writer))
            self._refusals.add(refusal)
            refusal.add_done_callback(self._refusals.discard)
            return
        self._per_peer[ip] = self._per_peer.get(ip, 0) + 1
        task = asyncio.get_running_loop().create_task(self._serve(reader, writer, peer))
        self._tasks.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._tasks.discard(t)
            n = self._per_peer.get(ip, 1) - 1
            if n > 0:
                self._per_peer[ip] = n
            else:
                self._per_peer.pop(ip, None)

        task.add_done_callback(done)

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """503, then read (and drop) what the client sent for a moment: closing over unread bytes resets the
        connection, and the client would lose the answer."""
        try:
            writer.write(self._busy)
            if writer.can_write_eof():
                writer.write_eof()
            async with asyncio.timeout(REFUSAL_LINGER_S):
                while await reader.read(self.limits.read_chunk_bytes):
                    pass
        except (OSError, TimeoutError):
            pass
        finally:
            self._refusing -= 1
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str) -> None:
        conn = _Conn(
            reader, writer, peer, h11.Connection(h11.SERVER, max_incomplete_event_size=self.limits.max_header_bytes)
        )
        handed_over = False
        try:
            first = True
            while True:
                handed_over = await self._one(conn, first)
                first = False
                if handed_over or conn.h11.our_state is not h11.DONE or conn.h11.their_state is not h11.DONE:
                    break
                conn.h11.start_next_cycle()
        except (_Close, ConnectionError, OSError, TimeoutError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not touch other connections
            self.crashes += 1
            log.exception("http: connection from %s failed", peer)
        finally:
            if not handed_over:
                await self._close(writer)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()

    async def _one(self, conn: _Conn, first: bool) -> bool:
        """Read one request and answer it; True if the connection was handed to an upgrade."""
        try:
            request = await self._read(conn, first)
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if exc.error_status_hint in REASONS else 400
            reason = {431: "headers_too_large", 501: "not_implemented"}.get(status, "bad_request")
            await self._respond(
                conn, error(status, reason, f"bad HTTP request: {exc}"), close=True, request=self._head(conn)
            )
            return False
        except HttpError as exc:  # 408, 413 while reading
            await self._respond(
                conn,
                error(exc.status, exc.reason, exc.message, None, exc.headers),
                close=True,
                request=self._head(conn),
            )
            return False
        if request is None:
            raise _Close
        answer = await self._dispatch(request)
        if isinstance(answer, Upgrade):
            if request.upgrade is None or request.upgrade.lower() != answer.protocol.lower():
                log.error(
                    "http: a handler answered Upgrade to %s to a request that did not ask for it", answer.protocol
                )
                self.failures += 1
                await self._respond(
                    conn, error(500, "internal", "the server answered wrongly", request), close=True, request=request
                )
                return False
            headers = [("Upgrade", answer.protocol), ("Connection", "Upgrade"), *answer.headers]
            switching = h11.InformationalResponse(status_code=101, headers=headers, reason=b"Switching Protocols")
            await self._write(conn, conn.h11.send(switching))
            trailing, _ = conn.h11.trailing_data
            stream = UpgradedStream(conn.reader, conn.writer, bytes(trailing), conn.peer)
            try:
                await answer.run(stream)
            finally:
                await self._close(conn.writer)
            return True
        await self._respond(conn, answer, head=request.method == "HEAD", request=request)
        return False

    @staticmethod
    def _head(conn: _Conn) -> Request | None:
        """The request whose head was read before it was refused (its body not kept), or None."""
        return None if conn.head is None else _request(conn.head, b"", conn.peer)

    async def _dispatch(self, request: Request) -> Response | Upgrade:
        asked = request.upgrade
        if asked is None and request.header("upgrade") is not None and "upgrade" not in request.tokens("connection"):
            asked = request.header("upgrade")  # an Upgrade header without Connection: upgrade is still refused
        if asked is not None and asked.lower() not in self.upgrades:
            offered = ", ".join(self.upgrades.values()) or "nothing"
            return error(
                400, "bad_upgrade", f"this server does not upgrade to {asked!r}; it offers: {offered}", request
            )
        handler, found = self.router.route(request.method, request.path)
        if handler is None:
            assert isinstance(found, list)
            if not found:
                return error(404, "not_found", f"there is nothing at {request.path}", request)
            return error(
                405,
                "method_not_allowed",
                f"{request.path} takes {', '.join(found)}",
                request,
                [("Allow", ", ".join(found))],
            )
        assert isinstance(found, dict)
        req = Request(
            method=request.method, path=request.path, query=request.query, headers=request.headers,
            body=request.body, peer=request.peer, params={k: unquote(v) for k, v in found.items()},
        )  # fmt: skip
        try:
            return await handler(req)
        except HttpError as exc:
            return error(exc.status, exc.reason, exc.message, req, exc.headers)
        except Exception:
            self.failures += 1
            log.exception("http: %s %s failed", request.method, request.path)
            return error(500, "internal", "the server failed on this request; it is logged", req)

    async def _read(self, conn: _Conn, first: bool) -> Request | None:
        """The next whole request, or None when the client closed (or idled out) between requests."""
        limits = self.limits
        loop = asyncio.get_running_loop()
        h = conn.h11
        started: float | None = loop.time() if first else None  # the first request's deadline runs from accept
        head: h11.Request | None = None
        conn.head = None
        body = bytearray()
        while True:
            event = h.next_event()
            if event is h11.NEED_DATA:
                if started is None:
                    timeout, timed_out = limits.idle_timeout_s, None
                else:
                    timeout = started + limits.request_timeout_s - loop.time()
                    timed_out = HttpError(
                        408, "request_timeout", f"the request took longer than {limits.request_timeout_s:g} s"
                    )
                try:
                    async with asyncio.timeout(max(timeout, 0.0)):
                        data = await conn.reader.read(limits.read_chunk_bytes)
                except TimeoutError:
                    if timed_out is None:
                        raise _Close from None
                    raise timed_out from None
                if data and started is None:
                    started = loop.time()
                h.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                head = conn.head = event
                # h11 bounds a head that arrives in pieces; one that arrived whole in a read is measured here
                size = len(event.method) + len(event.target) + sum(len(k) + len(v) + 4 for k, v in event.headers)
                if size > limits.max_header_bytes:
                    raise HttpError(
                        431, "headers_too_large", f"the request head is over {limits.max_header_bytes} bytes"
                    )
                length = _content_length(event)
                if length is not None and length > limits.max_body_bytes:
                    raise HttpError(
                        413, "body_too_large", f"the body is {length} bytes, this server takes {limits.max_body_bytes}"
                    )
                if h.client_is_waiting_for_100_continue:
                    await self._write(conn, h.send(h11.InformationalResponse(status_code=100, headers=[])))
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > limits.max_body_bytes:
                    raise HttpError(413, "body_too_large", f"the body is over {limits.max_body_bytes} bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return _request(head, bytes(body), conn.peer)
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None

    async def _respond(
        self, conn: _Conn, response: Response, *, close: bool = False, head: bool = False, request: Request | None
    ) -> None:
        h = conn.h11
        if h.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            raise _Close  # nothing can be said any more (e.g. the parser failed after we answered)
        own = {k.lower() for k, _ in response.headers}
        headers = [
            ("Server", SERVER_NAME),
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *response.headers,
            *((k, v) for k, v in self.headers if k.lower() not in own),
        ]
        if request is not None and self.answer_headers is not None:
            headers += self.answer_headers(request)
        if close:
            headers.append(("Connection", "close"))
        reason = REASONS.get(response.status, "").encode()
        data = h.send(h11.Response(status_code=response.status, headers=headers, reason=reason))
        if response.body and not head:
            data += h.send(h11.Data(data=response.body))
        data += h.send(h11.EndOfMessage())
        await self._write(conn, data)

    async def _write(self, conn: _Conn, data: bytes) -> None:
        conn.writer.write(data)
        try:
            async with asyncio.timeout(self.limits.send_timeout_s):
                await conn.writer.drain()
        except TimeoutError:
            conn.writer.transport.abort()
            raise _Close from None

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in [*self._tasks, *self._refusals]:
            task.cancel()

    async def aclose(self) -> None:
        self.close()
        if self._tasks or self._refusals:
            await asyncio.gather(*self._tasks, *self._refusals, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> HttpServer:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


def _content_length(event: h11.Request) -> int | None:
    for name, value in event.headers:
        if name == b"content-length":
            return int(value)  # h11 has checked it is digits
    return None


def _request(head: h11.Request, body: bytes, peer: str) -> Request:
    target = head.target.decode("ascii", "replace")
    split = urlsplit(target) if not target.startswith("/") else urlsplit("http://x" + target)
    return Request(
        method=head.method.decode("ascii", "replace").upper(),
        path=unquote(split.path or "/"),
        query=dict(parse_qsl(split.query, keep_blank_values=True)),
        headers=tuple((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in head.headers),
        body=body,
        peer=peer,
    )
