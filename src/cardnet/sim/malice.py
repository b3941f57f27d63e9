"""Malicious hosts: what an untrusted host does to the traffic it carries (DESIGN §8; host.md).

A host is untrusted hardware and software around sealed cards. The simulated
malicious host has every power over *bytes*:

* it remembers every message that enters its dispatch table (from its
  applications, its cards and remote hosts) and every byte string inside their
  params (oids, nonces, tokens, certificates, Uids);
* in passing (a message it sends or receives over the network) it **tampers**
  (flips, truncates or extends the param's bytes, or re-encodes the param with
  one field changed, so that strict decoding passes), **forges** the ``src``,
  **reflects** the message back to its sender (``src`` and ``dst`` swapped) or
  **redirects** it to another card; half the time the original goes on too;
* on its own timer it **replays** a message it saw earlier (to the same card
  or another one) or **injects** a well-formed message it made up: an mtype of
  the protocols it saw or the target card handles, params drawn field by field
  from the schema (bytes it saw, random bytes, known Uids), a ``src`` of its
  choice; now and then an mtype no card handles, with garbage params.

It hands its own cards anything (its own Guard is not in its way); a message it
sends to another host meets that host's Guard, which drops a ``src`` claiming
one of that host's own cards.

It **cannot** sign with a card's key, read a card's state or session keys
(only what cards emit), or make up a privileged order in the name of an
application its card authenticated: the card cannot tell such an order from
its owner's (host.md, "What a host can and cannot do"), so no card protocol
can defend against it and the simulator does not draw it. It replays the
owner's privileged orders verbatim (the PIN verification too), alters none.

Everything is drawn from the world's one RNG, so a seed replays exactly.
"""

from __future__ import annotations

import random
import string
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cardnet.card import mtypes as cm
from cardnet.wire import Bool, Bytes, DecodeError, Int, ListOf, Message, MType, Nested, Schema, Text, Uid, UidType, UInt
from cardnet.wire import mtypes as registry
from cardnet.wire.cbor import FieldType

MAX_SEEN = 256  # messages a malicious host remembers for replays
MAX_MATERIAL = 32  # byte strings remembered per length
UNKNOWN_MTYPES = (0xFF00, 0xFFFF)  # a range no protocol registers: "no applet handles it"
CARD_MTYPES = (cm.PORT_REQUEST, cm.PIN_VERIFY, cm.LOGOUT)
IN_PASSING = ("tamper", "forge", "reflect", "redirect")


@dataclass(frozen=True)
class Action:
    """One misbehaviour: ``kind`` (replay, tamper, forge, reflect, redirect, inject), the message it produced,
    and, for a message in passing, whether the original still goes on."""

    kind: str
    msg: Message
    keep: bool = False


class Malice:
    """One malicious host's memory and moves."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.seen: deque[Message] = deque(maxlen=MAX_SEEN)
        self.owner_orders: set[Message] = set()  # privileged messages its applications sent: replayed verbatim only
        self.mtypes: dict[int, MType] = {}  # mtypes seen, in the order first seen
        self.material: dict[int, deque[bytes]] = {}  # length -> byte strings seen inside params

    # -- what it sees --------------------------------------------------------------------------------
    def observe(self, msg: Message, from_app: bool) -> None:
        self.seen.append(msg)
        mt = _known(msg.mtype)
        if mt is None:
            return
        if mt.privileged and from_app:
            self.owner_orders.add(msg)
        self.mtypes.setdefault(mt.code, mt)
        try:
            params = mt.schema.decode(msg.param)
        except DecodeError:
            return
        for value in _byte_strings(params):
            self.material.setdefault(len(value), deque(maxlen=MAX_MATERIAL)).append(value)

    # -- what it does -----------------------------------------------------------------------------------
    def in_passing(self, msg: Message, cards: Sequence[Uid], uids: Sequence[Uid]) -> Action | None:
        """One attack on a message this host carries (None if the draw would forge an owner's order)."""
        rng = self.rng
        kind = rng.choice(IN_PASSING)
        if kind == "tamper":
            out = self._tamper(msg, uids)
        elif kind == "forge":
            out = Message(rng.choice([u for u in uids if u != msg.src] or uids), msg.dst, msg.mtype, msg.param)
        elif kind == "reflect":
            out = Message(msg.dst, msg.src, msg.mtype, msg.param)
        else:
            out = Message(msg.src, rng.choice([c for c in cards if c != msg.dst] or cards), msg.mtype, msg.param)
        keep = rng.random() < 0.5
        return None if self._forges_an_order(out) else Action(kind, out, keep)

    def injection(self, cards: Sequence[Uid], uids: Sequence[Uid], handles: dict[Uid, list[MType]]) -> Action | None:
        """A replay of something seen, or a made-up message (None if the draw would forge an owner's order)."""
        rng = self.rng
        if self.seen and rng.random() < 0.5:
            msg = rng.choice(self.seen)
            if rng.random() < 0.3:  # to another card
                msg = Message(msg.src, rng.choice(cards), msg.mtype, msg.param)
            return None if self._forges_an_order(msg) else Action("replay", msg)
        dst = rng.choice(cards)
        src = rng.choice(uids)
        if rng.random() < 0.1:
            code = rng.randint(*UNKNOWN_MTYPES)
            return Action("inject", Message(src, dst, code, rng.randbytes(rng.randint(0, 40))))
        pool = [*handles.get(dst, []), *CARD_MTYPES, *self.mtypes.values()]
        mt = rng.choice(pool)
        msg = mt.make_from(src, dst, self._fields(mt.schema, uids, 0))
        return None if self._forges_an_order(msg) else Action("inject", msg)

    # -- helpers ------------------------------------------------------------------------------------------
    def _forges_an_order(self, msg: Message) -> bool:
        """A privileged message from an application of the target's own domain that its owner never sent."""
        mt = _known(msg.mtype)
        return (
            mt is not None
            and mt.privileged
            and msg.src.domain == msg.dst.domain
            and msg.src.port != 0
            and msg not in self.owner_orders
        )

    def _tamper(self, msg: Message, uids: Sequence[Uid]) -> Message:
        rng = self.rng
        mt = _known(msg.mtype)
        if mt is not None and mt.schema.fields and rng.random() < 0.5:  # well-formed: one field changed
            try:
                params = mt.schema.decode(msg.param)
            except DecodeError:
                params = None
            if params is not None:
                spec = rng.choice(list(mt.schema.fields))
                params[spec.name] = self._value(spec.type, uids, 1)
                return Message(msg.src, msg.dst, msg.mtype, mt.schema.encode(params))
        raw = bytearray(msg.param)
        how = rng.randrange(3) if raw else 2
        if how == 0:  # flip a few bits
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(raw))
                raw[i] ^= 1 << rng.randrange(8)
        elif how == 1:  # truncate
            del raw[rng.randrange(len(raw)) :]
        else:  # append
            raw += rng.randbytes(rng.randint(1, 8))
        return Message(msg.src, msg.dst, msg.mtype, bytes(raw))

    def _fields(self, schema: Schema, uids: Sequence[Uid], depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for spec in schema.fields:
            if spec.optional and self.rng.random() < 0.5:
                continue
            out[spec.name] = self._value(spec.type, uids, depth)
        return out

    def _value(self, t: FieldType, uids: Sequence[Uid], depth: int) -> Any:
        rng = self.rng
        if isinstance(t, Bytes):
            fits = [n for n in self.material if t.min_len <= n <= t.max_len]
            if fits and rng.random() < 0.6:
                return rng.choice(self.material[rng.choice(sorted(fits))])
            return rng.randbytes(rng.randint(t.min_len, min(t.max_len, t.min_len + 48)))
        if isinstance(t, Text):
            return "".join(rng.choice(string.ascii_letters) for _ in range(rng.randint(0, min(t.max_len, 24))))
        if isinstance(t, UInt):
            return min(t.max_value, rng.choice((0, 1, rng.randint(0, 1 << 16), rng.randint(0, 1 << 64))))
        if isinstance(t, Int):
            return rng.randint(max(t.min_value, -(1 << 16)), min(t.max_value, 1 << 16))
        if isinstance(t, Bool):
            return rng.random() < 0.5
        if isinstance(t, UidType):
            return rng.choice(uids)
        if isinstance(t, ListOf):
            return [self._value(t.item, uids, depth + 1) for _ in range(rng.randint(0, min(3, t.max_items)))]
        if isinstance(t, Nested):
            return self._fields(t.schema, uids, depth + 1)
        raise TypeError(f"the simulator cannot draw a value of {type(t).__name__}: teach Malice._value about it")


def _known(code: int) -> MType | None:
    try:
        return registry.lookup(code)
    except DecodeError:
        return None


def _byte_strings(value: object) -> list[bytes]:
    if isinstance(value, bytes):
        return [value]
    if isinstance(value, Uid):
        return [bytes(value)]
    if isinstance(value, dict):
        return [b for v in value.values() for b in _byte_strings(v)]
    if isinstance(value, list):
        return [b for v in value for b in _byte_strings(v)]
    return []
