"""Host message types (protocol ``host``, codes 0x0100-0x01ff)."""

from __future__ import annotations

from cardnet.wire import Bytes, Field, ListOf, Schema, Text, UidType, UInt, register
from cardnet.wire.ids import DOMAIN_BYTES

UNDELIVERABLE = register(
    0x0101,
    "host.undeliverable",
    "host",
    Schema(
        "host.undeliverable",
        [
            Field(0, "mtype", UInt(0xFFFF)),
            Field(1, "dst", UidType()),
            Field(2, "reason", Text(200)),
            # why, as a word (absent: the message is dropped for good): ``store_failed``, the destination card could
            # not take it because its store cannot be written (nothing was kept; a card sender resends it)
            Field(3, "code", Text(32), optional=True),
        ],
    ),
)
# The local application socket: the first frame asks for a port, the answer names the Uid.
ACQUIRE = register(
    0x0110,
    "host.acquire",
    "host",
    Schema("host.acquire", [Field(0, "card", Bytes(DOMAIN_BYTES, DOMAIN_BYTES), optional=True)]),
)
ACQUIRED = register(0x0111, "host.acquired", "host", Schema("host.acquired", [Field(0, "uid", UidType())]))
REFUSED = register(
    0x0112,
    "host.refused",
    "host",
    Schema(
        "host.refused",
        [Field(0, "mtype", UInt(0xFFFF)), Field(1, "reason", Text(200)), Field(2, "code", Text(32), optional=True)],
    ),
)
# An application asks its host (dst: its card's domain, port 0xffffffff) whether a card domain can be reached:
# ``where`` is ``local`` (a card of this host), ``route`` (a configured route; ``address``) or ``none``; and
# ``undeliverable``: the last host.undeliverable notice this card got about that domain (reason, host seconds, its
# code if it had one), and ``undeliverable_count``: how many such notices the card got (since the host started or
# last forgot them), so an application can tell a notice that came after it looked from an older one.
ROUTE = register(
    0x0113, "host.route", "host", Schema("host.route", [Field(0, "domain", Bytes(DOMAIN_BYTES, DOMAIN_BYTES))])
)
ROUTE_IS = register(
    0x0114,
    "host.route_is",
    "host",
    Schema(
        "host.route_is",
        [
            Field(0, "domain", Bytes(DOMAIN_BYTES, DOMAIN_BYTES)),
            Field(1, "where", Text(8)),
            Field(2, "address", Text(200), optional=True),
            Field(3, "undeliverable", Text(200), optional=True),
            Field(4, "undeliverable_at", UInt(), optional=True),
            Field(5, "undeliverable_code", Text(32), optional=True),
            Field(6, "undeliverable_count", UInt(), optional=True),
        ],
    ),
)
# An application relays remote traffic (TRN paper 5.1: the buyer's program between an upgraded HTTP connection
# and its host): its first frame asks the host to route ``domain`` (a remote card) over this connection; the host
# answers ``host.relaying`` and from then on takes the connection's frames as remote traffic from that domain.
RELAY = register(
    0x0115, "host.relay", "host", Schema("host.relay", [Field(0, "domain", Bytes(DOMAIN_BYTES, DOMAIN_BYTES))])
)
RELAYING = register(
    0x0116, "host.relaying", "host", Schema("host.relaying", [Field(0, "domain", Bytes(DOMAIN_BYTES, DOMAIN_BYTES))])
)
# The host dropped messages for an application that did not read its socket (its queue was full) or that were
# above its connection's frame limit: ``count`` of them, the first of type ``mtype``. Sent in their place, as soon
# as the application's queue has room again; the application should read its card's state again.
MISSED = register(
    0x0117,
    "host.missed",
    "host",
    Schema("host.missed", [Field(0, "count", UInt(0xFFFFFFFF)), Field(1, "mtype", UInt(0xFFFF))]),
)
# Host to host, on a connection a remote host's link made: the messages of that connection (numbered 0, 1, ... in the
# order they came) this host has taken: stepped and committed by the destination card, given to an application or
# passed on, or dropped for good (a Guard). ``runs`` is ``[first, count, ...]``. The sending host acknowledges its
# cards' outputs only then, and sends again what a connection that ended did not confirm (docs/host.md "Delivery").
TAKEN_RUNS = 4096  # numbers a notice carries at most (2048 runs)
TAKEN = register(0x0118, "host.taken", "host", Schema("host.taken", [Field(0, "runs", ListOf(UInt(), TAKEN_RUNS))]))
