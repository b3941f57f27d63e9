"""HTTP/1.1 ``Upgrade: TRN``: an HTTP connection that becomes a message connection (TRN paper 5.1).

After ``101 Switching Protocols`` with ``Upgrade: TRN`` the connection carries
exactly what a host link carries: length-prefixed eTP frames
(:mod:`.framing`), both ways, as a :class:`~.tcp.TcpConnection`. Bytes the
client sent right after its request (read already by the HTTP parser) are the
first bytes of that stream, so a client may start sending frames without
waiting for the ``101``.

* Server side: a handler of :class:`~.http.HttpServer` answers
  ``Upgrade(TRN, run)``; ``run`` gets an :class:`~.http.UpgradedStream` and
  calls :func:`trn_connection` on it.
* Client side: :func:`dial_trn` sends one request with ``Connection: Upgrade``
  and ``Upgrade: TRN`` (through h11) and returns the message connection (and the
  ``101``'s headers) on ``101``; any other answer raises :class:`UpgradeRefused` carrying the
  status and the server's message.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from dataclasses import dataclass

import h11

from cardnet.transport.base import DEFAULT_LIMITS, Limits
from cardnet.transport.errors import BrokenError, TransportError
from cardnet.transport.http import UpgradedStream
from cardnet.transport.tcp import TcpConnection

TRN = "TRN"
MAX_ANSWER_BYTES = 64 * 1024  # a refusal's body the client reads at most


class UpgradeRefused(TransportError):
    """The server answered something other than ``101``: ``status``, its ``error`` reason and its ``body``."""

    def __init__(self, status: int, error: str, message: str, body: bytes) -> None:
        super().__init__("refused", message)
        self.status, self.error, self.body = status, error, body


@dataclass(frozen=True, slots=True)
class TrnUpgrade:
    """What :func:`dial_trn` got: the message connection and the ``101``'s headers (names lower case)."""

    conn: TcpConnection
    headers: dict[str, str]


def trn_connection(stream: UpgradedStream, limits: Limits = DEFAULT_LIMITS) -> TcpConnection:
    """The message connection on an upgraded HTTP connection (server side)."""
    return TcpConnection(stream.reader, stream.writer, limits, initial=stream.trailing)


async def dial_trn(
    host: str,
    port: int,
    method: str,
    target: str,
    *,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    limits: Limits = DEFAULT_LIMITS,
    timeout_s: float = 30.0,
) -> TrnUpgrade:
    """Send ``method target`` asking for ``Upgrade: TRN``; the message connection once the server says ``101``.

    Raises :class:`UpgradeRefused` for any other answer (the body's JSON ``error``/``message`` when it has
    them) and :class:`BrokenError` if the server cannot be reached or does not answer within ``timeout_s``.
    """
    try:
        async with asyncio.timeout(limits.connect_timeout_s):
            reader, writer = await asyncio.open_connection(host, port, limit=limits.read_chunk_bytes)
    except (OSError, TimeoutError) as exc:
        raise BrokenError(
            f"could not connect to {host}:{port}: {exc or type(exc).__name__}; check the address and that the "
            "server is running"
        ) from exc
    conn = h11.Connection(h11.CLIENT)
    head = [
        ("Host", f"{host}:{port}"),
        ("Connection", "Upgrade"),
        ("Upgrade", TRN),
        ("Content-Length", str(len(body))),
        *headers,
    ]
    try:
        data = conn.send(h11.Request(method=method, target=target, headers=head))
        data += conn.send(h11.Data(data=body)) if body else b""
        data += conn.send(h11.EndOfMessage())
        writer.write(data)
        async with asyncio.timeout(timeout_s):
            await writer.drain()
            answer: h11.InformationalResponse | h11.Response | None = None
            content = bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(limits.read_chunk_bytes))
                    continue
                if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                    trailing, _ = conn.trailing_data
                    got = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
                    return TrnUpgrade(TcpConnection(reader, writer, limits, initial=bytes(trailing)), got)
                if isinstance(event, h11.Response):
                    answer = event
                elif isinstance(event, h11.Data) and len(content) < MAX_ANSWER_BYTES:
                    content += event.data[: MAX_ANSWER_BYTES - len(content)]
                elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed) or event is h11.PAUSED:
                    break
    except (OSError, TimeoutError, h11.ProtocolError) as exc:
        writer.close()
        raise BrokenError(
            f"{method} http://{host}:{port}{target} failed before the upgrade: {exc or type(exc).__name__}"
        ) from exc
    writer.close()
    status = answer.status_code if answer is not None else 0
    reason, message = "refused", f"the server answered {status} instead of switching to TRN"
    try:
        parsed = json.loads(bytes(content))
        if isinstance(parsed, dict):
            reason = str(parsed.get("error", reason))
            message = str(parsed.get("message", message))
    except ValueError:
        pass
    raise UpgradeRefused(status, reason, message, bytes(content))
