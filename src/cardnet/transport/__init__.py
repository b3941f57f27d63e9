"""Transport layer: framing, the Connection interface, in-memory and TCP(+TLS) transports, reconnecting links.

See docs/transport.md. ``framing`` and ``backoff`` are sans-I/O; ``tcp`` and
``link`` are the asyncio drivers; ``memory`` runs on the event loop alone.
"""

from cardnet.transport.backoff import Backoff, BackoffPolicy
from cardnet.transport.base import (
    DEFAULT_LIMITS,
    DEFAULT_SERVER_LIMITS,
    LOGGER_NAME,
    Connection,
    Dialer,
    Instead,
    Limits,
    OnConnection,
    PeerInfo,
    ServerLimits,
    fit_batch,
    send_batch,
)
from cardnet.transport.errors import BrokenError, CannotListen, ClosedError, TooLarge, TransportError
from cardnet.transport.framing import (
    DEFAULT_MAX_FRAME,
    MIN_FRAME,
    PREFIX_BYTES,
    FrameDecoder,
    FrameRefused,
    RecvLimit,
    SkippedFrame,
    encode_frame,
)
from cardnet.transport.link import ReconnectingLink, fit_queue
from cardnet.transport.memory import MemoryConnection, MemoryListener, MemoryNetwork, memory_pair
from cardnet.transport.tcp import TcpConnection, TcpServer, dial, dialer, host_port
from cardnet.transport.tls import tls_contexts

__all__ = [
    "DEFAULT_LIMITS",
    "DEFAULT_MAX_FRAME",
    "DEFAULT_SERVER_LIMITS",
    "LOGGER_NAME",
    "MIN_FRAME",
    "PREFIX_BYTES",
    "Backoff",
    "BackoffPolicy",
    "BrokenError",
    "CannotListen",
    "ClosedError",
    "Connection",
    "Dialer",
    "FrameDecoder",
    "FrameRefused",
    "RecvLimit",
    "SkippedFrame",
    "Instead",
    "Limits",
    "MemoryConnection",
    "MemoryListener",
    "MemoryNetwork",
    "OnConnection",
    "PeerInfo",
    "ReconnectingLink",
    "ServerLimits",
    "TcpConnection",
    "TcpServer",
    "TooLarge",
    "TransportError",
    "dial",
    "host_port",
    "dialer",
    "encode_frame",
    "fit_batch",
    "fit_queue",
    "memory_pair",
    "send_batch",
    "tls_contexts",
]
