"""Host message types (protocol ``host``, codes 0x0100-0x01ff)."""

from __future__ import annotations

from cardnet.wire import Bytes, Field, Schema, Text, UidType, UInt, register
from cardnet.wire.ids import DOMAIN_BYTES

UNDELIVERABLE = register(
    0x0101,
    "host.undeliverable",
    "host",
    Schema(
        "host.undeliverable",
        [Field(0, "mtype", UInt(0xFFFF)), Field(1, "dst", UidType()), Field(2, "reason", Text(200))],
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
    Schema("host.refused", [Field(0, "mtype", UInt(0xFFFF)), Field(1, "reason", Text(200))]),
)
