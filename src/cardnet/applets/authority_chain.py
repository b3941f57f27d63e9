"""The authority's token chains as card records: a small header, one record per movement, an index by nonce.

Theory of operation
-------------------
A token's chain ``issuer -> d1 -> d2 -> ...`` (:mod:`cardnet.protocols.trn.trace`) lives in the authority applet's
table as::

    chain:<oid>                     CBOR [issuer, length]                   the header
    move:<oid><index, 4 bytes BE>   CBOR [from, to, nonce, statement sig]   one per movement, written once
    mvn:<oid><transfer nonce>       the indexes (4 bytes BE each) of the movements with that nonce (almost
                                    always one: the 4-byte nonces of one oid's chain rarely collide)

Recording a movement (:func:`append`) writes one movement, one index entry and the header: a constant number of
small records, however long the chain (the card's capacity is counted in bytes, and every record carries its own
integrity tag). A decision reads the chain through :class:`RecordChain`, the :class:`trace.Chain
<cardnet.protocols.trn.trace.Chain>` over these records: the header, the claim's nonce index and a movement or two.
Only a branch reads the whole chain (the sender's earlier movements: the evidence that blocks it), once per
signer, since a blocked signer's later claims are refused before that.

Cards written before this layout hold the whole chain in ``chain:<oid>`` (CBOR [issuer, movement, ...]).
:func:`load` reads that form too (:class:`LegacyChain`), and the first movement recorded for such an oid
converts it (:func:`convert`): the header replaces the old record, and the movements go to their own records.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from cardnet.card import CardError
from cardnet.protocols.trn import trace
from cardnet.wire.cbor import dumps, loads_one
from cardnet.wire.ids import Uid

CHAIN = b"chain:"
MOVE = b"move:"
NONCE = b"mvn:"
INDEX_BYTES = 4
MAX_MOVEMENTS = 1 << (8 * INDEX_BYTES)  # a bound the card's capacity reaches long before

Get = Callable[[bytes], bytes | None]


class Records(Protocol):
    """Where chains are written: the applet's :class:`~cardnet.card.StepContext` (its own table)."""

    def get(self, key: bytes, /) -> bytes | None: ...

    def put(self, key: bytes, value: bytes, /) -> None: ...


def movement_cbor(m: trace.Movement) -> list[bytes]:
    return [m.frm.raw, m.to.raw, m.nonce, m.sig]


def movement_of(item: list[bytes]) -> trace.Movement:
    """A movement from its CBOR form (records written before statements were kept have no signature)."""
    return trace.Movement(Uid.from_bytes(item[0]), Uid.from_bytes(item[1]), item[2], item[3] if len(item) > 3 else b"")


def move_key(oid: bytes, index: int) -> bytes:
    return MOVE + oid + index.to_bytes(INDEX_BYTES, "big")


def _header(issuer: Uid, length: int) -> bytes:
    return dumps([issuer.raw, length])


class RecordChain:
    """One token's chain in the card's records (a :class:`trace.Chain <cardnet.protocols.trn.trace.Chain>`), read
    on demand through ``get``; each movement read is decoded once per instance (an instance lives for one step)."""

    __slots__ = ("_get", "_read", "issuer", "length", "oid")

    def __init__(self, get: Get, oid: bytes, issuer: Uid, length: int) -> None:
        self._get = get
        self._read: dict[int, trace.Movement] = {}
        self.oid = oid
        self.issuer = issuer
        self.length = length

    def __len__(self) -> int:
        return self.length

    def at(self, index: int) -> trace.Movement:
        m = self._read.get(index)
        if m is None:
            raw = self._get(move_key(self.oid, index)) if 0 <= index < self.length else None
            if raw is None:
                raise CardError("damaged", f"the chain of {self.oid.hex()} has no movement {index}")
            data = loads_one(raw)
            assert isinstance(data, list)
            m = self._read[index] = movement_of(data)
        return m

    def last(self) -> trace.Movement | None:
        return self.at(self.length - 1) if self.length else None

    def position(self, claim: trace.Movement) -> int | None:
        raw = self._get(NONCE + self.oid + claim.nonce)
        if raw is None:
            return None
        for k in range(len(raw) - INDEX_BYTES, -1, -INDEX_BYTES):  # the latest first
            index = int.from_bytes(raw[k : k + INDEX_BYTES], "big")
            if index < self.length and self.at(index) == claim:
                return index
        return None

    def sent_by(self, sender: Uid) -> tuple[trace.Movement, ...]:
        return tuple(m for i in range(self.length) if (m := self.at(i)).frm == sender)

    def span(self, start: int, stop: int) -> list[trace.Movement]:
        """Movements ``start`` to ``stop`` (excluded; clipped to the chain)."""
        return [self.at(i) for i in range(max(0, start), min(stop, self.length))]


@dataclass(frozen=True)
class LegacyChain(trace.ListChain):
    """A chain in the old form: the whole chain in one ``chain:<oid>`` record, decoded at once."""

    issuer: Uid

    def span(self, start: int, stop: int) -> list[trace.Movement]:
        return list(self.movements[max(0, start) : stop])


StoredChain = RecordChain | LegacyChain


def load(get: Get, oid: bytes) -> StoredChain | None:
    """The chain recorded for ``oid`` (None: none), in whichever form the card holds it."""
    raw = get(CHAIN + oid)
    if raw is None:
        return None
    data: Any = loads_one(raw)
    assert isinstance(data, list) and data
    issuer = Uid.from_bytes(data[0])
    if len(data) == 2 and isinstance(data[1], int):
        return RecordChain(get, oid, issuer, data[1])
    return LegacyChain(tuple(movement_of(m) for m in data[1:]), issuer)


def start(ctx: Records, oid: bytes, issuer: Uid) -> None:
    """An empty chain of a token ``issuer`` issued (a reissued oid, or an oid reissued before it was traced)."""
    ctx.put(CHAIN + oid, _header(issuer, 0))


def append(ctx: Records, oid: bytes, issuer: Uid, chain: StoredChain | None, m: trace.Movement) -> None:
    """Record ``m`` after ``chain`` (None: the token's first movement); ``issuer`` goes to the header."""
    if isinstance(chain, LegacyChain):
        chain = convert(ctx, oid, chain)
    index = 0 if chain is None else len(chain)
    _put_movement(ctx, oid, index, m)
    ctx.put(CHAIN + oid, _header(issuer, index + 1))


def convert(ctx: Records, oid: bytes, legacy: LegacyChain) -> RecordChain:
    """Rewrite an old single-record chain as a header and per-movement records (once per oid)."""
    ctx.put(CHAIN + oid, _header(legacy.issuer, len(legacy)))  # first: the old record's bytes are freed at once
    for index, m in enumerate(legacy.movements):
        _put_movement(ctx, oid, index, m)
    return RecordChain(ctx.get, oid, legacy.issuer, len(legacy))


def _put_movement(ctx: Records, oid: bytes, index: int, m: trace.Movement) -> None:
    if index >= MAX_MOVEMENTS:
        raise CardError("out_of_memory", f"the chain of {oid.hex()} holds {MAX_MOVEMENTS} movements, its limit")
    at = index.to_bytes(INDEX_BYTES, "big")
    ctx.put(MOVE + oid + at, dumps(movement_cbor(m)))
    key = NONCE + oid + m.nonce
    ctx.put(key, (ctx.get(key) or b"") + at)
