"""Wire layer: identities, eTP messages, deterministic CBOR params, mtype registry."""

from cardnet.wire.cbor import (
    Bool,
    Bytes,
    Field,
    Int,
    ListOf,
    Nested,
    Schema,
    Text,
    UidType,
    UInt,
    head_bytes,
    max_encoded_bytes,
)
from cardnet.wire.errors import DecodeError
from cardnet.wire.ids import Uid
from cardnet.wire.message import HEADER_BYTES, Message
from cardnet.wire.mtypes import MType, by_name, lookup, register

__all__ = [
    "HEADER_BYTES",
    "Bool",
    "Bytes",
    "DecodeError",
    "Field",
    "Int",
    "ListOf",
    "MType",
    "Message",
    "Nested",
    "Schema",
    "Text",
    "UInt",
    "Uid",
    "UidType",
    "by_name",
    "head_bytes",
    "lookup",
    "max_encoded_bytes",
    "register",
]
