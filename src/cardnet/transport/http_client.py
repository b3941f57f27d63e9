"""One HTTP/1.1 request from a program (h11 again): what the buyer's relay and other clients of
:mod:`.http` servers need, and no more.

``await request(host, port, "GET", "/events/final")`` sends one request over a new connection and returns an
:class:`Answer` (status, headers, body, ``.json()``), the connection closed after it; with ``upgrade="TRN"`` a
``101`` leaves the connection open in ``Answer.stream`` (:mod:`.http_upgrade` makes it a message connection).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import h11

from cardnet.transport.errors import BrokenError, TransportError
from cardnet.transport.http import UpgradedStream

MAX_ANSWER_BYTES = 1 << 20  # the most of an answer's body :func:`request` keeps


@dataclass(frozen=True, slots=True)
class Answer:
    """What :func:`request` got: status, headers (names lower case), body; after ``101``, the switched stream."""

    status: int
    headers: dict[str, str]
    body: bytes
    stream: UpgradedStream | None = None

    def json(self) -> Any:
        """The body as JSON (None if it is not JSON)."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None


async def request(
    host: str,
    port: int,
    method: str,
    target: str,
    *,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    upgrade: str | None = None,
    connect_timeout_s: float = 10.0,
    timeout_s: float = 30.0,
    read_chunk_bytes: int = 64 * 1024,
) -> Answer:
    """One HTTP/1.1 request on a new connection (h11 again); the answer, the connection closed after it.

    With ``upgrade`` the request asks for it (``Connection: Upgrade``); on ``101`` the answer carries the
    stream (reader, writer, the bytes read past the ``101``) and the connection stays open for the caller.
    Raises :class:`~cardnet.transport.errors.BrokenError` if the server cannot be reached, breaks the connection
    (e.g. closes it without an answer, as a host's TCP port does) or does not answer within ``timeout_s``, and
    ``TransportError('not_http')`` if what answers there sends bytes that are no HTTP answer; a body beyond
    ``MAX_ANSWER_BYTES`` is cut there.
    """
    try:
        async with asyncio.timeout(connect_timeout_s):
            reader, writer = await asyncio.open_connection(host, port, limit=read_chunk_bytes)
    except TimeoutError as exc:
        raise BrokenError(f"nothing answers at {host}:{port} within {connect_timeout_s:g} s") from exc
    except socket.gaierror as exc:  # (its errno is the resolver's, which os.strerror calls 'Unknown error -2')
        raise BrokenError(f"nothing answers at {host}:{port} (the name {host} does not resolve: "
                          f"{(exc.strerror or str(exc)).lower()})") from exc  # fmt: skip
    except OSError as exc:
        why = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        raise BrokenError(f"nothing answers at {host}:{port} ({why})") from exc
    conn = h11.Connection(h11.CLIENT)
    head = [("Host", f"{host}:{port}"), ("Content-Length", str(len(body)))]
    if upgrade is not None:
        head += [("Connection", "Upgrade"), ("Upgrade", upgrade)]
    heard = False  # any bytes from the server (for the words of a failure)
    try:
        data = conn.send(h11.Request(method=method, target=target, headers=[*head, *headers]))
        data += conn.send(h11.Data(data=body)) if body else b""
        data += conn.send(h11.EndOfMessage())
        writer.write(data)
        async with asyncio.timeout(timeout_s):
            await writer.drain()
            answer: h11.Response | None = None
            content = bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    chunk = await reader.read(read_chunk_bytes)
                    heard = heard or bool(chunk)
                    conn.receive_data(chunk)
                    continue
                if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                    trailing, _ = conn.trailing_data
                    stream = UpgradedStream(reader, writer, bytes(trailing), f"{host}:{port}")
                    return Answer(101, _lower(event.headers), b"", stream)
                if isinstance(event, h11.Response):
                    answer = event
                elif isinstance(event, h11.Data) and len(content) < MAX_ANSWER_BYTES:
                    content += event.data[: MAX_ANSWER_BYTES - len(content)]
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed) or event is h11.PAUSED:
                    break
    except h11.ProtocolError as exc:  # bytes that are no HTTP answer, or the connection closed before one
        writer.close()
        if not heard:  # no HTTP server there, or one that stopped: which, the address's owner knows
            raise BrokenError(_unanswered(host, port)) from exc
        raise TransportError("not_http", f"{host}:{port} does not answer as an HTTP server: what it sent is not HTTP "
                             "(another program's port?)") from exc  # fmt: skip
    except TimeoutError as exc:
        writer.close()
        raise BrokenError(f"{host}:{port} did not answer {method} {target} within {timeout_s:g} s") from exc
    except OSError as exc:
        writer.close()
        why = os.strerror(exc.errno).lower() if exc.errno else str(exc) or type(exc).__name__
        raise BrokenError(f"{method} http://{host}:{port}{target} broke off: {why}") from exc
    writer.close()
    if answer is None:
        raise BrokenError(_unanswered(host, port))
    return Answer(answer.status_code, _lower(answer.headers), bytes(content))


def _unanswered(host: str, port: int) -> str:
    return (f"{host}:{port} closed the connection without an answer: no HTTP server answers there (another "
            "program's port, e.g. a host's?), or it stopped")  # fmt: skip


def _lower(headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
