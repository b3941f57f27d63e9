"""TRN two-phase-commit token transfer (TRN 3.3 and 4.1, DESIGN.md section 6).

Theory of operation
-------------------
Every token a device knows of has one status (Table 2): ``enabled`` (usable),
``disabled`` (leaving for ``peer``; the sender keeps the object O until the
receiver copied it: phase (II)/(III); then only the status: (IV)/(V)),
``trustless_disabled`` (arrived by ``copy``: neither movable nor traceable),
``trustless`` (committed, waiting for the authority's trace), or none (t[null]).
At most one of sender and receiver holds a *usable* (enabled or trustless)
copy at any instant, and the object is always on at least one of them.

The sender coordinates and resends: ``copy`` while it still has O, ``commit``
after. Every message carries the transfer id ``(sender, receiver, nonce)``
(sender and receiver are the session's two cards), so duplicates are answered
idempotently and a token may come back to a device it once left. The receiver
remembers every transfer it committed, so a resent ``commit`` gets
``committed`` even after the token moved on (t[null]). ``copied=false``
(refusal, out of memory, already held) rolls the sender back to ``enabled``
and records the receiver's reason on the holding (``refused``) for its owner. A
receiver's owner may refuse tokens (TRN 3.3.2, "owner's rejection"): an
:class:`AcceptPolicy` (accepted issuers, "ask first") decides what a ``copy``
event does (the applet puts the verdict in the event): take it, refuse it with
``copied=false``, or hold it as ``offered`` (nothing answered) until the
owner's ``accept`` (then ``trustless_disabled`` and ``copied ok``) or
``reject`` (t[null] and ``copied false "refused_by_owner"``). A sender
may abort only before ``commit`` was sent; the receiver then discards its
``trustless_disabled`` copy, which can never be enabled anyway.

The legal moves are the table :data:`MOVES`: ``(state, event) -> handler``;
any pair not in it is a :class:`ProtocolError` ``illegal_move``.

Sans-I/O: :func:`apply` takes the holding and the event and returns the new
holding and the inner messages to send; the applet stores and seals them.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.trn.token import MAX_BODY, OID_BYTES, Token
from cardnet.wire import Bool, Bytes, DecodeError, Field, ListOf, Schema, Text, UidType, UInt
from cardnet.wire.cbor import dumps
from cardnet.wire.ids import Uid
from cardnet.wire.memo import Memo

TRANSFER_NONCE_BYTES = 4
MAX_ALSO = 4  # superseded pending copies a receiver remembers for one oid
MAX_TOKEN = MAX_BODY + 200


class Status(enum.Enum):
    ENABLED = "enabled"
    DISABLED = "disabled"
    TRUSTLESS_DISABLED = "trustless_disabled"
    TRUSTLESS = "trustless"
    OFFERED = "offered"  # receiver: a copy held for the owner's answer (accept/reject), nothing answered yet
    EXCHANGING = "exchanging"  # locked by a pending fair exchange (protocols/fairx.py): neither movable nor usable


# -- inner messages: carried inside session records as one code byte + a CBOR map -------------

_NONCE = Bytes(TRANSFER_NONCE_BYTES, TRANSFER_NONCE_BYTES)
_SIG = Bytes(64, 64)
MAX_CERT = 8192
INNER: dict[int, Schema] = {
    1: Schema(
        "trn.copy", [Field(0, "nonce", _NONCE), Field(1, "token", Bytes(MAX_TOKEN)), Field(2, "traceable", Bool())]
    ),
    2: Schema(
        "trn.copied", [Field(0, "nonce", _NONCE), Field(1, "ok", Bool()), Field(2, "reason", Text(64), optional=True)]
    ),
    # the commit carries the sender's signed movement statement (:func:`statement_bytes`), which the receiver
    # forwards in seekfor so the authority records and blames only on the sender's own word
    3: Schema(
        "trn.commit",
        [Field(0, "nonce", _NONCE), Field(1, "oid", Bytes(OID_BYTES, OID_BYTES)), Field(2, "sig", _SIG)],
    ),
    4: Schema("trn.committed", [Field(0, "nonce", _NONCE), Field(1, "ok", Bool())]),
    5: Schema("trn.abort", [Field(0, "nonce", _NONCE), Field(1, "oid", Bytes(OID_BYTES, OID_BYTES))]),
    6: Schema("trn.aborted", [Field(0, "nonce", _NONCE)]),
    7: Schema(
        "trn.seekfor",
        [
            Field(0, "oid", Bytes(OID_BYTES, OID_BYTES)),
            Field(1, "from", UidType()),
            Field(2, "nonce", _NONCE),
            Field(3, "token", Bytes(MAX_TOKEN)),
            Field(4, "sig", _SIG, optional=True),  # the sender's statement (from the commit)
            # the asking card's own certificate: the authority keeps it to check this card's statements when
            # it sends the token on (the first sender, the issuing agent, is registered there already)
            Field(5, "cert", Bytes(MAX_CERT), optional=True),
        ],
    ),
    8: Schema(
        "trn.seeked",
        [
            Field(0, "oid", Bytes(OID_BYTES, OID_BYTES)),
            Field(1, "ok", Bool()),
            Field(2, "reason", Text(200)),
            Field(3, "issuer_cert", Bytes(MAX_CERT), optional=True),
            # the movement answered: (from, this card, nonce) is the transfer id, so a stale answer cannot
            # enable a later copy of the same oid
            Field(4, "from", UidType()),
            Field(5, "nonce", _NONCE),
        ],
    ),
    # the issuing agent asks the authority to revoke ``oid`` and reissue it as ``new_oid`` (trace.py)
    9: Schema(
        "trn.reissue",
        [
            Field(0, "oid", Bytes(OID_BYTES, OID_BYTES)),
            Field(1, "new_oid", Bytes(OID_BYTES, OID_BYTES)),
            Field(2, "body_hash", Bytes(32, 32)),
            Field(3, "token", Bytes(MAX_TOKEN), optional=True),  # the old token as minted, if the agent kept it
        ],
    ),
    10: Schema(
        "trn.reissued",
        [
            Field(0, "oid", Bytes(OID_BYTES, OID_BYTES)),
            Field(1, "new_oid", Bytes(OID_BYTES, OID_BYTES)),
            Field(2, "ok", Bool()),
            Field(3, "reason", Text(200)),
            Field(4, "holder", UidType(), optional=True),  # the last recorded holder: the new token goes there
        ],
    ),
}
COPY, COPIED, COMMIT, COMMITTED, ABORT, ABORTED, SEEKFOR, SEEKED, REISSUE, REISSUED = range(1, 11)
NAMES = {code: schema.name for code, schema in INNER.items()}


def encode_inner(code: int, fields: dict[str, Any]) -> bytes:
    return bytes([code]) + INNER[code].encode(fields)


def decode_inner(raw: bytes) -> tuple[int, dict[str, Any]]:
    if not raw or raw[0] not in INNER:
        raise ProtocolError("bad_record", f"unknown inner TRN message {raw[:1].hex() or 'empty'}")
    try:
        return raw[0], INNER[raw[0]].decode(raw[1:])
    except DecodeError as exc:
        raise ProtocolError("bad_record", f"{NAMES[raw[0]]}: {exc}") from None


# -- holdings ----------------------------------------------------------------------------------

_HOLDING = Schema(
    "trn.holding",
    [
        Field(0, "status", Text(24)),
        Field(1, "peer", UidType(), optional=True),
        Field(2, "nonce", _NONCE, optional=True),
        Field(3, "token", Bytes(MAX_TOKEN), optional=True),
        Field(4, "traceable", Bool()),
        Field(5, "since", UInt(), optional=True),
        Field(6, "sig", _SIG, optional=True),  # receiver: the sender's movement statement (from the commit)
        Field(7, "refused", Text(64), optional=True),  # sender, rolled back: the receiver's reason (copied false)
        # receiver, trustless_disabled: earlier pending copies this one superseded, as [peer, nonce] pairs (one of
        # them may still be live: its sender was told ``copied ok``); newest first
        Field(8, "also", ListOf(ListOf(Bytes(64), 2), MAX_ALSO), optional=True),
    ],
)


@dataclass(frozen=True)
class Holding:
    """What a device holds of one oid (Table 2 plus the transfer id)."""

    oid: bytes
    status: Status
    traceable: bool = True
    peer: Uid | None = None  # to (disabled) or from (trustless*)
    nonce: bytes | None = None
    token: bytes | None = None  # the object O; None once a sender passed phase (III)
    sig: bytes | None = None  # receiver, once committed: the sender's signed movement statement
    refused: str | None = None  # sender, back to enabled after copied=false: why the receiver refused; receiver,
    # trustless: the kind of the authority's refusal of this copy's trace
    also: tuple[tuple[Uid, bytes], ...] = ()  # receiver: superseded pending copies (peer, nonce), newest first

    @property
    def state(self) -> str:
        """The row of :data:`MOVES` this holding is in."""
        if self.status is Status.DISABLED:
            return "disabled+O" if self.token is not None else "disabled"
        return str(self.status.value)

    @property
    def usable(self) -> bool:
        return self.status in (Status.ENABLED, Status.TRUSTLESS)

    def encode(self) -> bytes:
        d: dict[str, Any] = {"status": self.status.value, "traceable": self.traceable}
        for name in ("peer", "nonce", "token", "sig", "refused"):
            if getattr(self, name) is not None:
                d[name] = getattr(self, name)
        if self.also:
            d["also"] = [[bytes(peer), nonce] for peer, nonce in self.also]
        return _HOLDING.encode(d)

    @classmethod
    def decode(cls, oid: bytes, raw: bytes) -> Holding:
        key = (oid, raw)
        memo = cls is Holding and type(oid) is bytes and type(raw) is bytes and len(raw) <= _MEMO_HOLDING_BYTES
        if memo:
            got = _HOLDINGS.get(key)
            if got is not None:
                return got
        d = _HOLDING.decode(raw)
        d.pop("since", None)
        d["also"] = tuple((Uid.from_bytes(p), n) for p, n in d.get("also", ()))
        h = cls(oid=oid, status=Status(d.pop("status")), **d)
        if memo:
            _HOLDINGS.remember(key, h)
        return h


# A holding is read several times a step (its status, its token). Decoding is a function of the oid and the bytes
# and a Holding is frozen, so small ones are kept here by them (bounded in entries and size: the memo starts over
# when full): what a lookup returns is what decoding those bytes returns.
_MEMO_HOLDING_BYTES = 4096
_HOLDINGS: Memo[tuple[bytes, bytes], Holding] = Memo()


# -- events and the move table -----------------------------------------------------------------


Signer = Callable[[bytes, Uid, bytes], bytes]  # (oid, to, nonce) -> the sender card's signature of the movement


@dataclass(frozen=True)
class Event:
    """An input to the machine. ``peer`` is the session peer (or the destination for START)."""

    kind: str
    peer: Uid
    nonce: bytes = b""
    token: bytes | None = None
    ok: bool = True
    traceable: bool = True
    reason: str = ""
    sig: bytes | None = None  # commit: the sender's movement statement
    # copy: the receiving card's acceptance policy's verdict (:meth:`AcceptPolicy.verdict`): "" takes the copy,
    # ASK holds it as offered for the owner's answer, anything else is the reason of a copied=false refusal
    admit: str = ""
    # the sender's card key (start, copied, recover): signs ``statement_bytes(oid, me, to, nonce)`` for a commit
    sign: Signer | None = field(default=None, compare=False)


def _commit_msg(h: Holding, e: Event, oid: bytes) -> tuple[int, dict[str, Any]]:
    """The commit of ``h``'s transfer, carrying the sender's signed movement statement."""
    assert h.peer is not None and h.nonce is not None
    if e.sign is None:
        raise ProtocolError("no_signer", "a commit carries the sender's signed statement: give the event a signer")
    return (COMMIT, {"nonce": h.nonce, "oid": oid, "sig": e.sign(oid, h.peer, h.nonce)})


def statement_bytes(oid: bytes, frm: Uid, to: Uid, nonce: bytes) -> bytes:
    """What the sender's card signs when it commits a movement: ``oid`` leaves ``frm`` for ``to`` (transfer ``nonce``).

    The receiver forwards the signature in ``seekfor``; the authority records and blames only on it (trace.py).
    """
    return dumps(["cardnet/trn-move/v1", oid, bytes(frm), bytes(to), nonce])


@dataclass(frozen=True)
class Outcome:
    holding: Holding | None  # None: t[null] (forget the oid)
    send: list[tuple[int, dict[str, Any]]]  # inner messages to the peer
    committed_transfer: bool = False  # the receiver must remember (peer, nonce) as committed
    note: str = ""


# -- the receiving owner's acceptance policy (TRN 3.3.2: copied=false "because of owner's rejection") ------

MAX_ISSUERS = 64
ASK = "ask"
REFUSED_BY_OWNER = "refused_by_owner"
ISSUER_NOT_ACCEPTED = "issuer_not_accepted"
ACCEPT_POLICY_SCHEMA = Schema(
    "trn.accept_policy_record", [Field(0, "issuers", ListOf(UidType(), MAX_ISSUERS)), Field(1, "ask", Bool())]
)


@dataclass(frozen=True)
class AcceptPolicy:
    """Which incoming tokens a card takes: minted by one of ``issuers`` (empty: any), and, with ``ask``, only
    once its owner accepted the offer. The default takes everything (the paper's plain 2PC)."""

    issuers: tuple[Uid, ...] = ()
    ask: bool = False

    def __post_init__(self) -> None:
        if len(self.issuers) > MAX_ISSUERS:
            raise ProtocolError("bad_policy", f"at most {MAX_ISSUERS} accepted issuers")
        if any(not u.is_card for u in self.issuers):
            raise ProtocolError("bad_policy", "an accepted issuer is an agent card's Uid (port 0)")
        if len(set(self.issuers)) != len(self.issuers):
            raise ProtocolError("bad_policy", "an accepted issuer is listed twice")

    def verdict(self, issuer: Uid) -> str:
        """What a copy of a token minted by ``issuer`` gets: "" (take), :data:`ASK`, or a refusal reason."""
        if self.issuers and issuer not in self.issuers:
            return ISSUER_NOT_ACCEPTED
        return ASK if self.ask else ""

    def encode(self) -> bytes:
        return ACCEPT_POLICY_SCHEMA.encode({"issuers": list(self.issuers), "ask": self.ask})

    @classmethod
    def decode(cls, raw: bytes | None) -> AcceptPolicy:
        """The stored policy (None or empty: the default); bad bytes raise ``ProtocolError bad_policy``."""
        if not raw:
            return cls()
        try:
            d = ACCEPT_POLICY_SCHEMA.decode(raw)
        except DecodeError as exc:
            raise ProtocolError("bad_policy", f"not an acceptance policy: {exc}") from None
        return cls(tuple(d["issuers"]), d["ask"])


Handler = Callable[["Holding | None", Event, bytes], Outcome]
NULL = "null"
EVENTS = (
    "start", "cancel", "recover", "copy", "copied", "commit", "committed", "abort", "aborted", "traced",
    "accept", "reject",
)  # fmt: skip


def _same(h: Holding, e: Event) -> bool:
    return h.peer == e.peer and h.nonce == e.nonce


def pending(h: Holding | None, peer: Uid, nonce: bytes) -> bool:
    """Whether ``h`` is a received copy waiting for transfer ``(peer, nonce)``'s commit (or superseded it)."""
    if h is None or h.status not in (Status.TRUSTLESS_DISABLED,):
        return False
    return (h.peer == peer and h.nonce == nonce) or (peer, nonce) in h.also


def _keep(h: Holding | None, note: str = "") -> Outcome:
    return Outcome(h, [], note=note)


# sender side ---------------------------------------------------------------------------------


def _start(h: Holding | None, e: Event, oid: bytes) -> Outcome:
    assert h is not None and h.token is not None
    # Untraceable is sticky: once a hop went untraced the authority's chain stops at the last traced
    # holder, so a later traced hop would look like a branch (and block its honest sender).
    traceable = e.traceable and h.traceable
    moving = replace(h, status=Status.DISABLED, peer=e.peer, nonce=e.nonce, traceable=traceable, sig=None, refused=None)
    return Outcome(moving, [(COPY, {"nonce": e.nonce, "token": h.token, "traceable": traceable})])


def _resend_copy(h: Holding | None, e: Event, oid: bytes) -> Outcome:
    assert h is not None and h.token is not None and h.nonce is not None
    return Outcome(h, [(COPY, {"nonce": h.nonce, "token": h.token, "traceable": h.traceable})])


def _resend_commit(h: Holding | None, e: Event, oid: bytes) -> Outcome:
    assert h is not None and h.nonce is not None
    return Outcome(h, [_commit_msg(h, e, oid)])


def _copied(h: Holding | None, e: Event, oid: bytes) -> Outcome:
    assert h is not None
    if not _same(h, e):
        return _keep(h, "copied for another transfer: ignored")
    if not e.ok:
        why = e.reason or "refused"
        back = replace(h, status=Status.ENABLED, peer=None, nonce=None, refused=why)
        return Outcome(back, [], note=f"refused: {why}")
    return Outcome(replace(h, token=None), [_commit_msg(h, e, oid)])  # (III) -> (IV)


def _copied_again(h: Holding | None, e: Event, oid: bytes) -> Outcome:
    assert h is not None
    if _same(h, e) and e.ok:
        return _resend_commit(h, e, oid)
    return _keep(h, "late copied: ignored")


def _committed(h: Holding | None, e: Event, oid: bytes) -> Outcome:
    assert h is not None
    if _same(h, e) and e.ok:
        return Outcome(None, [], note="transfer complete")  # (V) -> (VI): t[null]
    return _keep(h, "committed for another transfer or refused: ignored")


def _cancel(h: Holding | None, e: Event, oid: bytes) -> Outcome:
    assert h is not None and h.nonce is not None and h.peer is not None
    back = replace(h, status=Status.ENABLED, peer=None, nonce=None)
    return Outcome(back, [(ABORT, {"nonce": h.nonce, "oid": oid})], note="aborted before commit")


def _ignore(h: Holding | None, e: Event, oid: bytes) -> Outcome:
    return _keep(h, f"{e.kind} ignored in {h.state if h else NULL}")


# receiver side ----------------------------------------------------------------------------------


def _copy_new(h: Holding | None, e: Event, oid: bytes) -> Outcome:
    assert e.token is not None
    if e.admit == ASK:  # held for the owner: answered by accept/reject (the sender waits in II/III, may cancel)
        offer = Holding(oid, Status.OFFERED, e.traceable, e.peer, e.nonce, e.token)
        return Outcome(offer, [], note="offered to the owner")
    if e.admit:
        return Outcome(None, [(COPIED, {"nonce": e.nonce, "ok": False, "reason": e.admit})], note=e.admit)
    held = Holding(oid, Status.TRUSTLESS_DISABLED, e.traceable, e.peer, e.nonce, e.token)
    return Outcome(held, [(COPIED, {"nonce": e.nonce, "ok": True})])


def _copy_pending(h: Holding | None, e: Event, oid: bytes) -> Outcome:
    assert h is not None
    if _same(h, e) or (e.peer, e.nonce) in h.also:
        return Outcome(h, [(COPIED, {"nonce": e.nonce, "ok": True})], note="duplicate copy")
    # The same sender started over, or another device sends this oid: normally the pending transfer is dead
    # (another device can hold the oid usable only if this one's sender aborted, and an abort notice may have
    # been lost), so the newer transfer supersedes; a "busy" refusal would block this oid for ever. But the
    # arriving copy may instead be an *older* one, delayed (its sender cancelled it since), and the pending
    # transfer live: its sender was told ``copied ok`` and may have dropped the object. So the pending transfer
    # is remembered (``also``): if the newer one is aborted the pending one is back, and a commit of it is
    # taken (the simulator found the loss: transfer seed 2797). A copy the policy refuses is answered, and
    # leaves the pending one as it was.
    if e.admit and e.admit != ASK:
        return Outcome(h, [(COPIED, {"nonce": e.nonce, "ok": False, "reason": e.admit})], note=e.admit)
    out = _copy_new(None, e, oid)
    if out.holding is not None and h.peer is not None and h.nonce is not None:
        also = ((h.peer, h.nonce), *h.also)[:MAX_ALSO]
        out = replace(out, holding=replace(out.holding, also=also))
    return out


def _revert(h: Holding) -> Holding | None:
    """The pending copy a superseding one replaced, back (its transfer may be live), or nothing."""
    if not h.also:
        return None
    (peer, nonce), *rest = h.also
    return replace(h, status=Status.TRUSTLESS_DISABLED, peer=peer, nonce=nonce, also=tuple(rest))


def _copy_offered(h: Holding | None, e: Event, oid: bytes) -> Outcome:
    assert h is not None
    if _same(h, e):  # the sender's recovery resends the copy: the owner has not answered yet
        return _keep(h, "duplicate copy: still waiting for the owner")
    return _copy_pending(h, e, oid)  # as for a pending copy: the newer transfer supersedes


def _accept(h: Holding | None, e: Event, oid: bytes) -> Outcome:
    """The owner takes the offer: stored as a received copy, and the sender hears ``copied ok`` (TRN step 2)."""
    assert h is not None and h.nonce is not None
    return Outcome(replace(h, status=Status.TRUSTLESS_DISABLED), [(COPIED, {"nonce": h.nonce, "ok": True})])


def _reject(h: Holding | None, e: Event, oid: bytes) -> Outcome:
    """The owner refuses the offer: nothing kept, and the sender hears ``copied false`` and re-enables its token."""
    assert h is not None and h.nonce is not None
    why = e.reason or REFUSED_BY_OWNER
    return Outcome(_revert(h), [(COPIED, {"nonce": h.nonce, "ok": False, "reason": why})], note=why)


def _copy_held(h: Holding | None, e: Event, oid: bytes) -> Outcome:
    assert h is not None
    if _same(h, e):  # we committed this very transfer already
        return Outcome(h, [(COPIED, {"nonce": e.nonce, "ok": True})], note="duplicate copy after commit")
    return Outcome(h, [(COPIED, {"nonce": e.nonce, "ok": False, "reason": "already held"})])


def _commit(h: Holding | None, e: Event, oid: bytes) -> Outcome:
    assert h is not None
    if (e.peer, e.nonce) in h.also:  # the commit of a pending copy a (dead) newer one superseded: it was live
        h = replace(h, peer=e.peer, nonce=e.nonce)
    if not _same(h, e):
        # a resent commit of an earlier transfer (the oid came back since and this copy is from another):
        # answered from the memory of committed transfers, else the earlier sender would stay in (IV)/(V)
        return _commit_known(h, e, oid)
    status = Status.TRUSTLESS if h.traceable else Status.ENABLED
    held = replace(h, status=status, sig=e.sig, also=())
    return Outcome(held, [(COMMITTED, {"nonce": e.nonce, "ok": True})], committed_transfer=True)


def _commit_known(h: Holding | None, e: Event, oid: bytes) -> Outcome:
    """A resent commit: answered from the memory of committed transfers (the applet checks it)."""
    return Outcome(h, [(COMMITTED, {"nonce": e.nonce, "ok": e.ok})], note="duplicate commit")


def _abort(h: Holding | None, e: Event, oid: bytes) -> Outcome:
    assert h is not None
    if _same(h, e):
        return Outcome(_revert(h), [(ABORTED, {"nonce": e.nonce})], note="copy discarded on abort")
    if (e.peer, e.nonce) in h.also:  # a superseded copy's abort: it is dead indeed
        return Outcome(
            replace(h, also=tuple(t for t in h.also if t != (e.peer, e.nonce))), [(ABORTED, {"nonce": e.nonce})]
        )
    return Outcome(h, [(ABORTED, {"nonce": e.nonce})])


def _aborted_ack(h: Holding | None, e: Event, oid: bytes) -> Outcome:
    return Outcome(h, [(ABORTED, {"nonce": e.nonce})])


TRACE_REFUSAL_BYTES = 64  # a refused trace's kind kept on the holding (trn.tokens' ``refused`` holds 64 bytes)


def _traced(h: Holding | None, e: Event, oid: bytes) -> Outcome:
    assert h is not None
    if e.ok:
        enabled = replace(h, status=Status.ENABLED, peer=None, nonce=None, sig=None, refused=None)
        return Outcome(enabled, [], note="trace recorded: enabled")
    # Still trustless (a later trace may yet be recorded: an issuer registered since), but the owner is shown why:
    # the kind of refusal, before its details ("branch", "revoked", "blocked device X", ...: trace.decide's words).
    kind = e.reason.split(": ")[0].encode()[:TRACE_REFUSAL_BYTES].decode("utf-8", "ignore") or "refused"
    return Outcome(replace(h, refused=kind), [], note=f"trace refused: {e.reason}")


MOVES: dict[tuple[str, str], Handler] = {
    # sender: (I) enabled -> (II) disabled+O -> (IV) disabled -> (VI) null
    ("enabled", "start"): _start,
    ("disabled+O", "recover"): _resend_copy,
    ("disabled+O", "copied"): _copied,
    ("disabled+O", "cancel"): _cancel,
    ("disabled+O", "committed"): _ignore,
    ("disabled", "recover"): _resend_commit,
    ("disabled", "copied"): _copied_again,
    ("disabled", "committed"): _committed,
    ("enabled", "copied"): _ignore,  # a late answer to an aborted transfer
    ("enabled", "committed"): _ignore,
    ("enabled", "aborted"): _ignore,
    ("disabled+O", "aborted"): _ignore,
    ("disabled", "aborted"): _ignore,
    (NULL, "copied"): _ignore,
    (NULL, "committed"): _ignore,
    (NULL, "aborted"): _ignore,
    ("trustless", "copied"): _ignore,
    ("trustless", "committed"): _ignore,
    ("trustless", "aborted"): _ignore,
    ("trustless_disabled", "copied"): _ignore,
    ("trustless_disabled", "committed"): _ignore,
    ("trustless_disabled", "aborted"): _ignore,
    ("offered", "copied"): _ignore,
    ("offered", "committed"): _ignore,
    ("offered", "aborted"): _ignore,
    # locked by a fair exchange (protocols/fairx.py moves it): late answers ignored, copies of it refused
    ("exchanging", "copied"): _ignore,
    ("exchanging", "committed"): _ignore,
    ("exchanging", "aborted"): _ignore,
    ("exchanging", "copy"): _copy_held,
    ("exchanging", "commit"): _commit_known,
    ("exchanging", "abort"): _aborted_ack,
    # receiver: null -> trustless_disabled -> trustless -> enabled (after the trace)
    (NULL, "copy"): _copy_new,
    ("trustless_disabled", "copy"): _copy_pending,
    ("trustless", "copy"): _copy_held,
    ("enabled", "copy"): _copy_held,
    ("disabled+O", "copy"): _copy_held,
    ("disabled", "copy"): _copy_held,
    ("trustless_disabled", "commit"): _commit,
    (NULL, "commit"): _commit_known,
    ("trustless", "commit"): _commit_known,
    ("enabled", "commit"): _commit_known,
    ("disabled+O", "commit"): _commit_known,
    ("disabled", "commit"): _commit_known,
    ("trustless_disabled", "abort"): _abort,
    (NULL, "abort"): _aborted_ack,
    ("trustless", "abort"): _aborted_ack,
    ("enabled", "abort"): _aborted_ack,
    ("disabled+O", "abort"): _aborted_ack,
    ("disabled", "abort"): _aborted_ack,
    ("trustless", "traced"): _traced,
    # receiver with an "ask first" policy: null -> offered -> (accept) trustless_disabled | (reject) null
    ("offered", "copy"): _copy_offered,
    ("offered", "commit"): _commit_known,
    ("offered", "abort"): _abort,
    ("offered", "accept"): _accept,
    ("offered", "reject"): _reject,
}
STATES = (NULL, "enabled", "disabled+O", "disabled", "trustless_disabled", "trustless", "offered", "exchanging")


def apply(holding: Holding | None, event: Event, oid: bytes) -> Outcome:
    """One move of the machine; an illegal (state, event) pair raises ``illegal_move``."""
    state = holding.state if holding is not None else NULL
    handler = MOVES.get((state, event.kind))
    if handler is None:
        raise ProtocolError("illegal_move", f"{event.kind} is not allowed for a token in state {state}")
    return handler(holding, event, oid)


def parse_token(raw: bytes) -> Token:
    return Token.decode(raw)
