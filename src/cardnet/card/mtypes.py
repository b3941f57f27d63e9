"""Card-management message types (protocol ``card``, codes 0x0001-0x00ff)."""

from __future__ import annotations

from cardnet.wire import Bool, Field, Schema, Text, UInt, register

PIN_MAX_BYTES = 16

PORT_REQUEST = register(0x0001, "card.port_request", "card", Schema("card.port_request", []))
PORT_GRANT = register(0x0002, "card.port_grant", "card", Schema("card.port_grant", [Field(0, "port", UInt(2**32 - 1))]))
PIN_VERIFY = register(
    0x0003, "card.pin_verify", "card", Schema("card.pin_verify", [Field(0, "pin", Text(PIN_MAX_BYTES))])
)
PIN_RESULT = register(
    0x0004,
    "card.pin_result",
    "card",
    Schema("card.pin_result", [Field(0, "ok", Bool()), Field(1, "tries_left", UInt(255))]),
)
LOGOUT = register(0x0005, "card.logout", "card", Schema("card.logout", []))
REFUSED = register(
    0x0006,
    "card.refused",
    "card",
    Schema(
        "card.refused",
        [Field(0, "mtype", UInt(0xFFFF)), Field(1, "reason", Text(64)), Field(2, "detail", Text(512))],
    ),
)
