"""The one message of Uniform Interactive Consistency (UIC), its canonical CBOR encoding and strict decoder.

Every round every running module sends every other module one :class:`UicPayload`: the round number, its own
index, the set of modules it still trusts and the partial vector of inputs it knows. On the wire it is one
deterministic CBOR map with one-byte keys (RFC 8949 section 4.2, through :class:`cardnet.wire.Schema`)::

    {0: round, 1: sender, 2: trusted bitmask, 3: known bitmask, 4: [the known inputs, in index order]}

Bit ``k`` of a bitmask stands for module ``k``. Decoding is strict: a payload is exactly one CBOR item, holds only
these keys, every number is in range for ``n`` modules, every input is at most ``max_input_bytes`` long, the known
bitmask names exactly as many modules as there are inputs, the sender trusts itself and knows its own input, and
the bytes are the deterministic encoding of the payload. Anything else raises :class:`ProtocolError` (the wire
layer's reason, such as ``truncated`` or ``not_deterministic``, is kept; semantic faults are ``bad_payload``).

The largest encoding for ``n`` modules and inputs of at most ``L`` bytes is :func:`max_payload_bytes` (e.g.
``13 + n * (L + 2)`` for ``5 <= n <= 8`` and ``24 <= L <= 255``; the table is in docs/uic.md): the caller pads
every message to that length, so that its size tells a host nothing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Final

from cardnet.protocols.errors import ProtocolError
from cardnet.wire import Bytes, DecodeError, Field, ListOf, Schema, UInt

MAX_MODULES: Final = 64  # bitmasks stay one CBOR unsigned integer (at most 2^64 - 1)
MAX_INPUT_BYTES: Final = 64 * 1024  # one module's input (an extended APDU's worth)
DEFAULT_MAX_INPUT_BYTES: Final = 1024


def max_rounds(n: int) -> int:
    """The most rounds a UIC run among ``n`` modules can have: ``t + 1`` for the largest ``t < n/2``."""
    return (n - 1) // 2 + 1


def check_sizes(n: int, max_input_bytes: int) -> None:
    """Refuse a module count or an input bound outside the limits, saying what is allowed."""
    if type(n) is not int or not 1 <= n <= MAX_MODULES:
        raise ProtocolError("bad_n", f"a UIC run has 1..{MAX_MODULES} modules, got n={n!r}: pick n in that range")
    if type(max_input_bytes) is not int or not 0 <= max_input_bytes <= MAX_INPUT_BYTES:
        raise ProtocolError(
            "bad_input_bound",
            f"the input bound is 0..{MAX_INPUT_BYTES} bytes, got {max_input_bytes!r}: declare a smaller bound",
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class UicPayload:
    """What module ``sender`` tells every other module in round ``round``.

    ``trusted`` is the set of modules the sender still trusts (itself included) and ``known`` the inputs it knows,
    one entry per module: the input's bytes, or None for "not known" (the decision's bottom).
    """

    round: int
    sender: int
    trusted: frozenset[int]
    known: tuple[bytes | None, ...]

    def __post_init__(self) -> None:
        known = self.known
        n = len(known) if isinstance(known, tuple) else 0
        if not 1 <= n <= MAX_MODULES:
            raise _bad(f"known is a tuple of 1..{MAX_MODULES} entries, got {type(self.known).__name__} of {n}")
        for k, v in enumerate(known):
            if v is not None and (type(v) is not bytes or len(v) > MAX_INPUT_BYTES):
                raise _bad(f"known[{k}] is None or at most {MAX_INPUT_BYTES} bytes, got {type(v).__name__}")
        if type(self.round) is not int or not 1 <= self.round <= max_rounds(n):
            raise _bad(f"round is 1..{max_rounds(n)} for {n} modules, got {self.round!r}")
        if type(self.sender) is not int or not 0 <= self.sender < n:
            raise _bad(f"sender is 0..{n - 1}, got {self.sender!r}")
        if not isinstance(self.trusted, frozenset) or not all(type(k) is int and 0 <= k < n for k in self.trusted):
            raise _bad(f"trusted is a frozenset of module indices 0..{n - 1}")
        if self.sender not in self.trusted:
            raise _bad(f"module {self.sender} does not trust itself: an honest module always does")
        if known[self.sender] is None:
            raise _bad(f"module {self.sender} does not know its own input: an honest module always does")


def _bad(message: str) -> ProtocolError:
    return ProtocolError("bad_payload", f"UIC payload: {message}")


@functools.lru_cache(maxsize=256)
def _schema(n: int, max_input_bytes: int) -> Schema:
    mask = 2**n - 1
    return Schema(
        "smc.uic",
        [
            Field(0, "round", UInt(max_rounds(n))),
            Field(1, "sender", UInt(n - 1)),
            Field(2, "trusted", UInt(mask)),
            Field(3, "known", UInt(mask)),
            Field(4, "values", ListOf(Bytes(max_input_bytes), n)),
        ],
    )


def _bits(indices: frozenset[int]) -> int:
    return sum(1 << k for k in indices)


def encode_payload(payload: UicPayload, *, max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES) -> bytes:
    """The one deterministic encoding of ``payload`` (inputs longer than ``max_input_bytes`` are refused)."""
    n = len(payload.known)
    check_sizes(n, max_input_bytes)
    known = [k for k, v in enumerate(payload.known) if v is not None]
    fields = {
        "round": payload.round,
        "sender": payload.sender,
        "trusted": _bits(payload.trusted),
        "known": _bits(frozenset(known)),
        "values": [payload.known[k] for k in known],
    }
    try:
        return _schema(n, max_input_bytes).encode(fields)
    except DecodeError as exc:  # an input over the declared bound
        raise ProtocolError(exc.reason, f"UIC payload cannot be encoded: {exc}") from None


def decode_payload(raw: bytes, *, n: int, max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES) -> UicPayload:
    """Strictly decode one payload of a run among ``n`` modules; only :class:`ProtocolError` escapes."""
    check_sizes(n, max_input_bytes)
    try:
        fields = _schema(n, max_input_bytes).decode(raw)
    except DecodeError as exc:
        raise ProtocolError(exc.reason, f"UIC payload: {exc}") from None
    known_bits, values = fields["known"], fields["values"]
    if known_bits.bit_count() != len(values):
        raise _bad(f"the known bitmask names {known_bits.bit_count()} modules but {len(values)} inputs follow")
    it = iter(values)
    known = tuple(next(it) if known_bits >> k & 1 else None for k in range(n))
    trusted = frozenset(k for k in range(n) if fields["trusted"] >> k & 1)
    return UicPayload(round=fields["round"], sender=fields["sender"], trusted=trusted, known=known)


def _head_bytes(value: int) -> int:
    """Bytes of a CBOR head carrying ``value`` (an unsigned integer, or a length)."""
    return 1 if value < 24 else 2 if value < 2**8 else 3 if value < 2**16 else 5 if value < 2**32 else 9


def max_payload_bytes(n: int, max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES) -> int:
    """The longest encoding of a payload among ``n`` modules with inputs of at most ``max_input_bytes``.

    Reached by the last round's payload of the highest-numbered module that trusts and knows everyone, every input
    ``max_input_bytes`` long. It bounds every ``t < n/2``: callers pad each message to it.
    """
    check_sizes(n, max_input_bytes)
    mask = 2**n - 1
    return (
        1  # map head (5 entries)
        + 5  # the five one-byte keys
        + _head_bytes(max_rounds(n))
        + _head_bytes(n - 1)
        + 2 * _head_bytes(mask)
        + _head_bytes(n)  # array head
        + n * (_head_bytes(max_input_bytes) + max_input_bytes)
    )
