"""The transport layer's one error type, split the way trio splits it.

- :class:`ClosedError` (reason ``closed``): *we* closed this connection or link
  and then used it again. A bug in the caller, not a network fault.
- :class:`BrokenError` (reason ``broken``): the world broke it — the peer went
  away, reset the connection, failed the TLS handshake or sent a bad frame.
  The underlying exception is chained as ``__cause__`` when there is one.

Other reasons are raised as plain :class:`TransportError`: ``oversize`` (we
tried to send a message above the frame limit), ``queue_full`` (a bounded
queue is full; retry later or slow down), ``bad_config`` (a limit or option
out of range), ``tls`` (certificates or keys that ``ssl`` refuses to load),
``in_use`` (a Unix socket path another process listens on), ``not_http``
(what answers at an address an HTTP client asked is no HTTP server).
Bytes from a peer that do not decode raise ``cardnet.wire.DecodeError`` in the
sans-I/O framing; a connection turns that into :class:`BrokenError`.
"""

from __future__ import annotations

from cardnet.errors import CardnetError


class TransportError(CardnetError):
    """A connection, link or listener could not do what was asked; ``reason`` says why
    (``closed``, ``broken``, ``oversize``, ``queue_full``, ``bad_config``, ``tls``, ``in_use``, ``not_http``)."""


class ClosedError(TransportError):
    """This side closed the connection (or link) and then used it: do not reuse a closed connection."""

    def __init__(self, message: str = "the connection was closed by this side; open a new one") -> None:
        super().__init__("closed", message)


class BrokenError(TransportError):
    """The peer or the network broke the connection; the cause, if any, is chained.

    Reconnect (see :class:`cardnet.transport.ReconnectingLink`); anything sent
    but not acknowledged end to end may be lost and must be resent by the
    protocol above.
    """

    def __init__(self, message: str = "the connection is broken; reconnect") -> None:
        super().__init__("broken", message)
