"""The eTP message: ``Message(src, dst, mtype, param)``.

Wire layout (TENeT section 4.2), exactly 34 bytes of header::

    offset  size  field
         0    16  src    Uid (12-byte domain, 4-byte big-endian port)
        16    16  dst    Uid
        32     2  mtype  uint16, big endian
        34     n  param  deterministic CBOR, schema chosen by mtype

Framing (the length of a message) belongs to the transport. ``param`` is
opaque at this level; :mod:`cardnet.wire.mtypes` decodes it by mtype.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from cardnet.wire.errors import DecodeError
from cardnet.wire.ids import Uid

HEADER = struct.Struct(">16s16sH")
HEADER_BYTES = HEADER.size  # 34
DEFAULT_MAX_PARAM = 16 * 1024 * 1024 - HEADER_BYTES
MAX_MTYPE = 0xFFFF


@dataclass(frozen=True, slots=True, init=False)
class Message:
    """One eTP message. ``param`` holds the encoded CBOR of the mtype's schema."""

    src: Uid
    dst: Uid
    mtype: int
    param: bytes = b""

    def __init__(self, src: Uid, dst: Uid, mtype: int, param: bytes = b"") -> None:
        # Frozen: the fields are set through their slots once, here (a frozen dataclass's own
        # __init__ and __post_init__ cost twice as much, and every message passes through one).
        if not 0 <= mtype <= MAX_MTYPE:
            raise DecodeError("bad_mtype", f"mtype is a uint16, got {mtype}")
        _set_src(self, src)
        _set_dst(self, dst)
        _set_mtype(self, mtype)
        _set_param(self, param)

    def encode(self) -> bytes:
        return HEADER.pack(self.src.raw, self.dst.raw, self.mtype) + self.param

    @classmethod
    def decode(cls, raw: bytes, max_param: int = DEFAULT_MAX_PARAM) -> Message:
        """Decode one message (header + param). Only :class:`DecodeError` escapes."""
        if len(raw) < HEADER_BYTES:
            raise DecodeError("truncated", f"a message needs {HEADER_BYTES} header bytes, got {len(raw)}")
        if len(raw) - HEADER_BYTES > max_param:
            raise DecodeError("oversize", f"param is {len(raw) - HEADER_BYTES} bytes, the limit is {max_param}")
        src, dst, mtype = HEADER.unpack_from(raw)
        return cls(Uid.from_bytes(src), Uid.from_bytes(dst), mtype, bytes(raw[HEADER_BYTES:]))

    @property
    def size(self) -> int:
        """Bytes on the wire, header included (framing excluded)."""
        return HEADER_BYTES + len(self.param)

    def reply(self, mtype: int, param: bytes = b"") -> Message:
        """A message from this one's destination back to its source."""
        return Message(self.dst, self.src, mtype, param)


_slots = Message.__dict__
_set_src: Callable[[Message, Uid], None] = _slots["src"].__set__
_set_dst: Callable[[Message, Uid], None] = _slots["dst"].__set__
_set_mtype: Callable[[Message, int], None] = _slots["mtype"].__set__
_set_param: Callable[[Message, bytes], None] = _slots["param"].__set__
