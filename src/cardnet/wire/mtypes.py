"""The one registry of message types.

Every mtype names its owning protocol, whether it is *privileged* (its sender
must be in the card's authenticated-ID set, TENeT section 4.4) and the schema
of its param. Protocol modules register their mtypes at import time; codes are
grouped by protocol (see docs/wire.md for the table):

    0x0001-0x00ff card management   0x0100-0x01ff host
    0x0200-0x02ff session           0x0300-0x03ff transfer/trace
    0x0500-0x05ff fair exchange     0x0600-0x06ff SPEED
    0x0700-0x07ff Millicent         0x0800-0x08ff UIC/SMC
    0x0f00-0x0fff demo, echo, bench
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cardnet.wire.cbor import Schema
from cardnet.wire.errors import DecodeError
from cardnet.wire.ids import Uid
from cardnet.wire.message import MAX_MTYPE, Message


@dataclass(frozen=True)
class MType:
    code: int
    name: str
    protocol: str
    schema: Schema
    privileged: bool = False

    def make(self, src: Uid, dst: Uid, /, **fields: Any) -> Message:
        """Build a message of this type; fields are validated by the schema."""
        return Message(src, dst, self.code, self.schema.encode(fields))

    def make_from(self, src: Uid, dst: Uid, fields: Mapping[str, Any]) -> Message:
        return Message(src, dst, self.code, self.schema.encode(fields))

    def parse(self, msg: Message) -> dict[str, Any]:
        """Strictly decode ``msg``'s param (which must be of this type)."""
        if msg.mtype != self.code:
            raise DecodeError("wrong_mtype", f"expected {self.name} (0x{self.code:04x}), got 0x{msg.mtype:04x}")
        return self.schema.decode(msg.param)


_BY_CODE: dict[int, MType] = {}
_BY_NAME: dict[str, MType] = {}


def register(code: int, name: str, protocol: str, schema: Schema, *, privileged: bool = False) -> MType:
    """Add an mtype to the registry. Registering the same definition twice is allowed."""
    if not 0 < code <= MAX_MTYPE:
        raise ValueError(f"mtype code must be 1..{MAX_MTYPE}, got {code}")
    mt = MType(code, name, protocol, schema, privileged)
    old = _BY_CODE.get(code)
    if old is not None and old != mt:
        raise ValueError(f"mtype 0x{code:04x} is already {old.name}, cannot register {name}")
    other = _BY_NAME.get(name)
    if other is not None and other.code != code:
        raise ValueError(f"mtype name {name} is already 0x{other.code:04x}")
    _BY_CODE[code] = mt
    _BY_NAME[name] = mt
    return mt


def lookup(code: int) -> MType:
    try:
        return _BY_CODE[code]
    except KeyError:
        raise DecodeError("unknown_mtype", f"mtype 0x{code:04x} is not registered: is its protocol loaded?") from None


def by_name(name: str) -> MType:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise DecodeError("unknown_mtype", f"no mtype named {name!r}") from None


def all_mtypes() -> list[MType]:
    return sorted(_BY_CODE.values(), key=lambda m: m.code)


def decode_param(msg: Message) -> dict[str, Any]:
    """Decode a message's param by the schema of its mtype."""
    return lookup(msg.mtype).schema.decode(msg.param)
