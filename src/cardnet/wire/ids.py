"""Identities: the 128-bit ``Uid`` of TENeT section 4.2.

A ``Uid`` is 16 bytes: a 12-byte *domain* followed by a 4-byte big-endian
*port*. A card is ``domain|0``; host applications get ports 1, 2, ... from
their card (never reused). Its text form is ``<24 hex digits>:<8 hex digits>``
(domain, port), e.g. ``00000000000000000000002a:00000000``, and round-trips
through :meth:`Uid.parse`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cardnet.wire.errors import DecodeError

DOMAIN_BYTES = 12
PORT_BYTES = 4
UID_BYTES = DOMAIN_BYTES + PORT_BYTES
MAX_PORT = 2**32 - 1
CARD_PORT = 0
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True, order=True)
class Uid:
    """A TENeT entity id: ``domain`` (12 bytes) and ``port`` (uint32)."""

    domain: bytes
    port: int = CARD_PORT
    raw: bytes = field(init=False, repr=False, compare=False)  # the 16-byte wire form, made once

    def __post_init__(self) -> None:
        if not isinstance(self.domain, bytes) or len(self.domain) != DOMAIN_BYTES:
            raise DecodeError("bad_uid", f"a Uid domain is {DOMAIN_BYTES} bytes, got {self.domain!r}")
        if not isinstance(self.port, int) or isinstance(self.port, bool):
            raise DecodeError("bad_uid", f"a Uid port is an int, got {type(self.port).__name__}")
        if not 0 <= self.port <= MAX_PORT:
            raise DecodeError("bad_uid", f"a Uid port is 0..{MAX_PORT}, got {self.port}")
        object.__setattr__(self, "raw", self.domain + self.port.to_bytes(PORT_BYTES, "big"))

    @classmethod
    def from_bytes(cls, raw: bytes) -> Uid:
        """Decode the 16-byte wire form."""
        if len(raw) != UID_BYTES:
            raise DecodeError("bad_uid", f"a Uid is {UID_BYTES} bytes, got {len(raw)}")
        return cls(bytes(raw[:DOMAIN_BYTES]), int.from_bytes(raw[DOMAIN_BYTES:], "big"))

    @classmethod
    def parse(cls, text: str) -> Uid:
        """Parse the text form ``<24 hex>:<8 hex>``; a bare 24-hex domain means port 0."""
        domain_hex, sep, port_hex = text.strip().partition(":")
        if not sep:
            port_hex = "0" * (2 * PORT_BYTES)
        if len(domain_hex) != 2 * DOMAIN_BYTES or len(port_hex) != 2 * PORT_BYTES:
            raise DecodeError(
                "bad_uid",
                f"{text!r} is not a Uid: write 24 hex digits, a colon and 8 hex digits",
            )
        if not _HEX_DIGITS.issuperset(domain_hex) or not _HEX_DIGITS.issuperset(port_hex):
            # int(..., 16) alone would also take "+", "0x", "_", spaces and non-ASCII digits.
            raise DecodeError("bad_uid", f"{text!r} is not a Uid: only hex digits are allowed")
        try:
            return cls(bytes.fromhex(domain_hex), int(port_hex, 16))
        except ValueError:
            raise DecodeError("bad_uid", f"{text!r} is not a Uid: only hex digits are allowed") from None

    @classmethod
    def card(cls, domain: bytes) -> Uid:
        """The card of a domain (port 0)."""
        return cls(domain, CARD_PORT)

    def __bytes__(self) -> bytes:
        return self.raw

    @property
    def is_card(self) -> bool:
        return self.port == CARD_PORT

    def card_uid(self) -> Uid:
        """The card that owns this Uid's domain."""
        return Uid(self.domain, CARD_PORT)

    def with_port(self, port: int) -> Uid:
        return Uid(self.domain, port)

    def __str__(self) -> str:
        return f"{self.domain.hex()}:{self.port:08x}"

    def short(self) -> str:
        """A compact form for people: last 4 domain bytes and the port."""
        return f"…{self.domain[-4:].hex()}:{self.port}"
