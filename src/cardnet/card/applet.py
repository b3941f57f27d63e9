"""Applets and the context a step runs in.

An applet owns some mtypes and a private key-value namespace on the card.
``handle(ctx, msg, params)`` is a function of (card state, message, host time,
card randomness): it reads and writes state through ``ctx``, and emits
messages through ``ctx.emit``. Nothing it does is visible outside the card
until the step's transaction commits; if it raises, nothing it did happened.

Applets never see the card's private key: they ask the context to sign or to
open an HPKE envelope with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from cbor2 import dumps as _dumps

from cardnet.crypto import profile
from cardnet.wire import HEADER_BYTES, Message, MType, Uid

if TYPE_CHECKING:
    from cardnet.card.runtime import Card

# Sentinel for "deleted in this step" in overlays.
DELETED: bytes | None = None
# The system area (key, certificate, PIN, counters): not counted in the capacity.
SYS = "sys"


def overlay_scan(
    base: dict[bytes, bytes], overlay: dict[tuple[str, bytes], bytes | None], table: str, prefix: bytes
) -> dict[bytes, bytes]:
    """``base`` (key -> value of one table) with ``overlay``'s writes and deletions of that table applied."""
    for (t, k), v in overlay.items():
        if t == table and k.startswith(prefix):
            if v is None:
                base.pop(k, None)
            else:
                base[k] = v
    return base


class Applet:
    """Base class: set ``name`` (state namespace) and ``handles`` (mtypes)."""

    name: ClassVar[str] = ""
    handles: ClassVar[tuple[MType, ...]] = ()

    def handle(self, ctx: StepContext, msg: Message, params: dict[str, Any]) -> None:  # pragma: no cover
        raise NotImplementedError


class StepContext:
    """What an applet may do during one step. Built by :class:`Card` per message."""

    __slots__ = ("_after", "_auth", "_card", "_out", "_overlay", "_table", "_used", "msg", "now")

    def __init__(self, card: Card, table: str, msg: Message, now: float) -> None:
        self._card = card
        self._table = table
        self._overlay: dict[tuple[str, bytes], bytes | None] = {}
        self._out: list[Message] = []
        self._after: list[Callable[[], None]] | None = None  # made by the first after_commit (most steps have none)
        self._auth: dict[Uid, bool] | None = None  # authenticated-set changes made by this step, if any
        self._used = 0  # bytes this step adds to the card's used memory (may be negative)
        self.msg = msg
        self.now = now

    # -- identity and environment ---------------------------------------------
    @property
    def card_uid(self) -> Uid:
        return self._card.uid

    @property
    def src(self) -> Uid:
        return self.msg.src

    def random(self, n: int) -> bytes:
        """``n`` bytes of the card's randomness (seeded in the simulator)."""
        return self._card._rng(n)

    @property
    def certificate_der(self) -> bytes:
        """This card's own certificate (DER)."""
        return self._card.certificate_der

    @property
    def roots_der(self) -> list[bytes]:
        """The CA certificates this card trusts (DER), installed at personalisation."""
        return self._card.roots_der

    def is_authenticated(self, uid: Uid) -> bool:
        auth = self._auth
        if auth is not None and uid in auth:
            return auth[uid]
        return self._card._is_authenticated(uid)

    def set_authenticated(self, uid: Uid, member: bool) -> None:
        """Add ``uid`` to (or remove it from) the volatile authenticated-ID set.

        The change is seen by the later messages of the same group commit and
        becomes the card's only once the group is durable; if the step fails
        it never happened.
        """
        if self._auth is None:
            self._auth = {}
        self._auth[uid] = member

    # -- state -----------------------------------------------------------------
    def get(self, key: bytes, *, table: str | None = None) -> bytes | None:
        tk = (table or self._table, key)
        overlay = self._overlay
        if tk in overlay:
            return overlay[tk]
        pending = self._card._pending  # Card._read, inlined
        if tk in pending:
            return pending[tk]
        return self._card._mem.get(tk)

    def put(self, key: bytes, value: bytes, *, table: str | None = None) -> None:
        tk = (table or self._table, key)
        overlay = self._overlay
        if tk[0] != SYS:
            if tk in overlay:  # self.get(key, table=table), inlined
                old = overlay[tk]
            else:
                card = self._card
                old = card._pending[tk] if tk in card._pending else card._mem.get(tk)
            used = self._used + len(value) - (-len(key) if old is None else len(old))
            card = self._card
            if card._used + card._pending_used + used > card.capacity_bytes:
                card._reserve(used)  # raises out_of_memory
            self._used = used
        overlay[tk] = value

    def delete(self, key: bytes, *, table: str | None = None) -> None:
        tk = (table or self._table, key)
        old = self.get(key, table=table)
        if old is not None:
            if tk[0] != SYS:
                self._used -= len(old) + len(key)
            self._overlay[tk] = DELETED

    def scan(self, prefix: bytes = b"", *, table: str | None = None) -> list[tuple[bytes, bytes]]:
        """Live entries with ``prefix``, in key order (this step's writes included)."""
        tbl = table or self._table
        return sorted(overlay_scan(self._card._scan(tbl, prefix), self._overlay, tbl, prefix).items())

    def scan_page(
        self, prefix: bytes, *, after: bytes | None = None, limit: int, table: str | None = None
    ) -> list[tuple[bytes, bytes]]:
        """At most ``limit`` live entries with ``prefix`` and a key above ``after``, in key order (this step's writes
        included): a page read for its size, however many entries the prefix holds."""
        tbl = table or self._table
        pending = self._card._pending
        changed = [(k, v) for (t, k), v in (*pending.items(), *self._overlay.items())
                   if t == tbl and k.startswith(prefix) and (after is None or k > after)]  # fmt: skip
        deleted = sum(1 for _, v in changed if v is None)
        keys = set(self._card._keys_after(tbl, prefix, after, limit + deleted))
        keys.update(k for k, v in changed if v is not None)
        page: list[tuple[bytes, bytes]] = []
        for key in sorted(keys):
            value = self.get(key, table=tbl)
            if value is not None:
                page.append((key, value))
                if len(page) == limit:
                    break
        return page

    # -- output ----------------------------------------------------------------
    def emit(self, mtype: MType, dst: Uid, /, **fields: Any) -> Message:
        """Queue a message from this card; it leaves only after the step commits."""
        card = self._card
        src = card._uid  # set whenever a step runs (the uid property, without its call)
        schema = mtype.schema  # mtype.make_from(src, dst, fields), inlined with Schema.encode (two calls fewer)
        msg = Message(card.uid if src is None else src, dst, mtype.code, _dumps(schema.to_cbor(fields, schema.name)))
        # its outbox share: the encoded message, a 4-byte length, part of the row key
        used = self._used + HEADER_BYTES + len(msg.param) + 8
        if card._used + card._pending_used + used > card.capacity_bytes:
            card._reserve(used)  # raises out_of_memory
        self._used = used
        self._out.append(msg)
        return msg

    def reply(self, mtype: MType, /, **fields: Any) -> Message:
        return self.emit(mtype, self.msg.src, **fields)

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the step is durable (for volatile card state)."""
        if self._after is None:
            self._after = []
        self._after.append(fn)

    # -- the card's key, used but never shown ----------------------------------
    def sign(self, data: bytes) -> bytes:
        return profile.sign(self._card._key(), data)

    def hpke_open(self, sealed: bytes, info: bytes = b"") -> bytes:
        return profile.hpke_open(self._card._key(), sealed, info)

    def ecdh(self, peer: profile.PublicKey) -> bytes:
        return profile.ecdh(self._card._key(), peer)
