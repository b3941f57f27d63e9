"""The transport layer's one error type, split the way trio splits it.

- :class:`ClosedError` (reason ``closed``): *we* closed this connection or link
  and then used it again. A bug in the caller, not a network fault.
- :class:`BrokenError` (reason ``broken``): the world broke it — the peer went
  away, reset the connection, failed the TLS handshake or sent a bad frame.
  The underlying exception is chained as ``__cause__`` when there is one.

:class:`TooLarge` (reason ``too_large``): the peer began a message above
this side's receive limit (``Limits.recv_limit``); it was refused unread, the
connection takes nothing more but can still send (the refusal) and close.

Other reasons are raised as plain :class:`TransportError`: ``oversize`` (we
tried to send a message above the frame limit), ``queue_full`` (a bounded
queue is full; retry later or slow down), ``bad_config`` (a limit or option
out of range), ``tls`` (certificates or keys that ``ssl`` refuses to load),
``in_use`` (a Unix socket path another process listens on), ``not_http``
(what answers at an address an HTTP client asked is no HTTP server).
:class:`CannotListen` (reason ``cannot_listen``): a server could not listen on
a TCP address; ``why`` says in a word whether another process holds it, the
address is not this machine's, or the port is not permitted.
Bytes from a peer that do not decode raise ``cardnet.wire.DecodeError`` in the
sans-I/O framing; a connection turns that into :class:`BrokenError`.
"""

from __future__ import annotations

import errno
import socket
from typing import TYPE_CHECKING, Literal

from cardnet.errors import CardnetError

if TYPE_CHECKING:
    from cardnet.transport.framing import SkippedFrame


class TransportError(CardnetError):
    """A connection, link or listener could not do what was asked; ``reason`` says why
    (``closed``, ``broken``, ``oversize``, ``queue_full``, ``bad_config``, ``tls``, ``in_use``, ``not_http``,
    ``cannot_listen``)."""


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


class TooLarge(TransportError):
    """The peer began a message above this side's receive limit: refused at its header, its body never read.

    ``frame`` is its header and size (who sent what to whom, how big, the limit). The connection receives
    nothing more; it can still send (tell the peer) and close, which then reads past what the peer still sends
    for at most ``Limits.linger_s``, keeping none of it.
    """

    def __init__(self, frame: SkippedFrame, message: str) -> None:
        super().__init__("too_large", message)
        self.frame = frame


ListenFailure = Literal["in_use", "not_here", "not_permitted", "other"]


class CannotListen(TransportError):
    """A server could not listen on ``host:port``; ``why`` is ``in_use`` (another process listens there),
    ``not_here`` (the address is not one of this machine's, or a name it cannot look up), ``not_permitted``
    (the system refused, e.g. a port below 1024 without privileges) or ``other`` (the system's words say why).
    The message says it in words, without the system's errno and address tuple."""

    def __init__(self, host: str, port: int, exc: OSError) -> None:
        where = f"{host}:{port}"
        self.why: ListenFailure
        if isinstance(exc, socket.gaierror):
            self.why, words = "not_here", f"{host!r} is not a name this machine can look up"
        elif exc.errno == errno.EADDRINUSE:
            self.why, words = "in_use", "the address is in use: another process is listening on that port"
        elif exc.errno == errno.EADDRNOTAVAIL:
            self.why, words = "not_here", f"{host} is not an address of this machine"
        elif exc.errno in (errno.EACCES, errno.EPERM):
            below = " (ports below 1024 need administrator rights)" if 0 < port < 1024 else ""
            self.why, words = "not_permitted", f"this process is not permitted to listen there{below}"
        else:
            self.why, words = "other", (exc.strerror or str(exc)).rstrip(".").lower()
        self.words = words  # why, without the address
        super().__init__("cannot_listen", f"cannot listen on {where}: {words}")
