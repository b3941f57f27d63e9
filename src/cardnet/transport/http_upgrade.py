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
  and ``Upgrade: TRN`` (:func:`~.http_client.request`, h11) and returns the message connection (and the
  ``101``'s headers) on ``101``; any other answer raises :class:`UpgradeRefused` carrying the
  status and the server's message.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from cardnet.transport.base import DEFAULT_LIMITS, Limits
from cardnet.transport.errors import TransportError
from cardnet.transport.http import UpgradedStream
from cardnet.transport.http_client import request
from cardnet.transport.tcp import TcpConnection

TRN = "TRN"


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
    answer = await request(
        host, port, method, target, headers=headers, body=body, upgrade=TRN,
        connect_timeout_s=limits.connect_timeout_s, timeout_s=timeout_s, read_chunk_bytes=limits.read_chunk_bytes,
    )  # fmt: skip
    if answer.stream is not None:
        return TrnUpgrade(trn_connection(answer.stream, limits), answer.headers)
    reason, message = "refused", f"the server answered {answer.status} instead of switching to TRN"
    parsed = answer.json()
    if isinstance(parsed, dict):
        reason = str(parsed.get("error", reason))
        message = str(parsed.get("message", message))
    raise UpgradeRefused(answer.status, reason, message, answer.body)
