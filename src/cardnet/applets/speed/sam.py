"""The broker's SAM applet: the purse master key, per-card keys, the SAM's side of S1/S2/S3 and loads, the daily log.

The SAM is an applet on a card personalised like any other (the broker's card); the broker's host runs it and
sends it privileged orders (only an application that verified the PIN):

* ``sam.init``: draws the 32-byte master key once (later calls change nothing). No order returns it.
* ``sam.issue_key {card_cert}``: checks the card's certificate against this card's CA (role device) and
  answers the card's diversified key HPKE-sealed to the certificate's key (``sam.key {uid, sealed}``).
* ``sam.debit_start {s1, poid, currency, amount}`` -> ``sam.s2 {s2}``: the broker says what is due; the SAM
  checks S1 against it, records the debit (uid, n) it authorises and answers S2. The same S1 again gets the
  same S2; the same (uid, n) with another order, or an order already authorised for another (uid, n), is
  refused (``conflict``, ``already_paid``).
* ``sam.debit_finish {s3}`` -> ``sam.debited {uid, n, poid, currency, amount, day}``: checks the proof of
  debit against the debit authorised and appends it to the log of ``day = int(now // 86400)``. The same S3
  again gets the same answer and logs nothing more.
* ``sam.load_start {l1, currency, amount}`` -> ``sam.l2 {l2}`` and ``sam.load_finish {l3}`` ->
  ``sam.loaded {uid, m, currency, amount, day}``: the same for loads (the broker has taken the money).
* ``sam.refuse_l1 {l1}`` -> ``sam.l1_refused {lr}``: the broker refused that load for good; the SAM checks the L1
  is the card's own (else ``bad_mac``: no one but the card can have a load of that card refused), refuses it if
  it authorised that load (``authorised``: an L2 exists), records the refusal (``r:``) and answers the LR, MACed
  under the card's key, on which the purse forgets the load. From then on ``sam.load_start`` of that load is
  refused ``load_refused``: a load the card forgot is never authorised. The same L1 again gets the same LR.
* ``sam.end_debit {se}`` -> ``sam.debit_ended {sr}``: the card's owner ends a debit (the purchase it pays is over
  without it). The SAM checks the SE is the card's own (else ``bad_mac``: the card makes an SE only on its owner's
  order, so whoever holds an S1 cannot have the debit ended), refuses it if it authorised that debit and the SE
  does not decline that S2 (``authorised``: the card ends it by debiting), drops the authorisation of one whose S2
  the card declined (its ``d:`` and ``o:``: the card never applies that S2, so no S3 of it exists), records the
  refusal (``x:``) and answers the SR, on which the purse forgets the pending debit. From then on
  ``sam.debit_start`` of that debit is refused ``debit_refused`` and its S3 can exist nowhere.
* ``sam.log {day, start?}`` -> ``sam.entries`` (at most 256 a page) and ``sam.totals {day}`` -> ``sam.sums``
  (per currency, the debits and the loads logged that day: what settlement pays and collects).
* ``sam.days`` -> ``sam.held {days, pruned_before?, open}``: the days whose log the SAM holds, the first day it
  has not pruned, and how many authorisations are still open (S2 or L2 given, no S3 or L3 yet).
* ``sam.prune {before_day}`` -> ``sam.pruned {before_day, entries, days, more}``: after the broker settled the
  days before ``before_day`` (never today), drops their log, their totals and the debit, order and load records
  of what they logged, keeping per card only the lowest counter it has not pruned (``h:``); at most
  :data:`PRUNE_BATCH` log entries a step (``more``: order again). Those days are closed: nothing is logged on
  them again, and ``sam.log`` and ``sam.totals`` of them are refused ``pruned``. An S1, S3, L1 or L3 whose record
  was pruned, or any of a counter below the card's floor that the SAM holds no record of, is refused ``pruned``
  (after its MAC is checked): it is never authorised or logged twice. Open authorisations are never pruned: a
  late S3 or L3 must still find them. The same step drops the refusal records (``r:``, ``x:``) made on those days
  and raises the card's floor past each: a start of that load or debit is refused ``pruned`` from then on, and the
  same L1 or SE sent to be refused again still gets its LR or SR (made again from the MAC key: the SAM never
  authorised a counter below the floor it holds no record of). See docs/speed.md, "Pruning the SAM".

Records (table ``a.sam``): ``master``; ``d:<uid><n>`` (a debit authorised, with its ``day`` once logged),
``o:<poid>`` (the (uid, n) an order was authorised for), ``l:<uid><m>`` (a load authorised), ``g:<day><seq>``
(the log: kind, uid, counter), ``gseq``, ``t:<day><kind><currency>`` (the day's running totals), ``h:<uid>``
(the card's floors: the debit and the load counters below which everything logged was pruned, 5 bytes each),
``pb`` (the first day not pruned), ``r:<uid><m>`` (a load refused for good: an LR was made) and ``x:<uid><n>`` (a
debit refused for good: an SR was made), each the S1's or L1's nonce and the day it was made, and ``q:<day><kind>
<uid><counter>`` (those refusals by day: what ``sam.prune`` drops them by).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from cardnet.applets.speed.purse import KEY_INFO, SEALED_KEY_BYTES
from cardnet.card import Applet, Refused, StepContext
from cardnet.crypto import pki, profile
from cardnet.crypto.errors import PkiError
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.speed import purse as pp
from cardnet.protocols.trn.transfer import MAX_CERT
from cardnet.wire import (
    Bool,
    Bytes,
    DecodeError,
    Field,
    ListOf,
    Message,
    Nested,
    Schema,
    Text,
    Uid,
    UidType,
    UInt,
    register,
)
from cardnet.wire.ids import UID_BYTES

P = "speed"
DAY_S = 86400
MAX_ENTRIES = 256  # log entries in one sam.entries answer
MAX_DAYS = 1024  # days in one sam.held answer (the oldest first)
PRUNE_BATCH = 4096  # log entries one sam.prune step drops, with their records
MAX_DAY = 2**32 - 1
_CTR_BYTES = 4
_FLOOR_BYTES = 5  # a floor is a counter + 1: up to 2**32
_DEBIT, _LOAD = b"d", b"l"

_MSG = Bytes(pp.MAX_MESSAGE_BYTES, 1)
_POID = Bytes(pp.POID_MAX_BYTES, pp.POID_MIN_BYTES)
_CURRENCY = Text(pp.CURRENCY_BYTES)
_AMOUNT = UInt(pp.MAX_AMOUNT)
_NONCE = Bytes(pp.NONCE_BYTES, pp.NONCE_BYTES)
_DAY = UInt(MAX_DAY)
_SUM = Schema("sam.sum", [Field(0, "currency", _CURRENCY), Field(1, "amount", UInt())])
_ENTRY = Schema(
    "sam.entry",
    [
        Field(0, "kind", Text(5)),  # "debit" or "load"
        Field(1, "uid", UidType()),
        Field(2, "ctr", UInt(pp.MAX_COUNTER)),  # n for a debit, m for a load
        Field(3, "poid", _POID, optional=True),
        Field(4, "currency", _CURRENCY),
        Field(5, "amount", _AMOUNT),
    ],
)

INIT = register(0x0650, "sam.init", P, Schema("sam.init", []), privileged=True)
READY = register(0x0651, "sam.ready", P, Schema("sam.ready", [Field(0, "fresh", Bool())]))
ISSUE_KEY = register(
    0x0652, "sam.issue_key", P, Schema("sam.issue_key", [Field(0, "card_cert", Bytes(MAX_CERT, 1))]), privileged=True
)
KEY = register(
    0x0653,
    "sam.key",
    P,
    Schema("sam.key", [Field(0, "uid", UidType()), Field(1, "sealed", Bytes(SEALED_KEY_BYTES, SEALED_KEY_BYTES))]),
)
DEBIT_START = register(
    0x0654,
    "sam.debit_start",
    P,
    Schema(
        "sam.debit_start",
        [
            Field(0, "s1", _MSG),
            Field(1, "poid", _POID),
            Field(2, "currency", _CURRENCY),
            Field(3, "amount", _AMOUNT),
            # only an S2 given before: a debit this SAM never authorised is refused ``not_authorised``, nothing written
            Field(4, "known", Bool(), optional=True),
        ],
    ),
    privileged=True,
)
S2_IS = register(0x0655, "sam.s2", P, Schema("sam.s2", [Field(0, "s2", _MSG)]))
DEBIT_FINISH = register(
    0x0656, "sam.debit_finish", P, Schema("sam.debit_finish", [Field(0, "s3", _MSG)]), privileged=True
)
DEBITED = register(
    0x0657,
    "sam.debited",
    P,
    Schema(
        "sam.debited",
        [
            Field(0, "uid", UidType()),
            Field(1, "n", UInt(pp.MAX_COUNTER)),
            Field(2, "poid", _POID),
            Field(3, "currency", _CURRENCY),
            Field(4, "amount", _AMOUNT),
            Field(5, "day", _DAY),
        ],
    ),
)
LOAD_START = register(
    0x0658,
    "sam.load_start",
    P,
    Schema("sam.load_start", [Field(0, "l1", _MSG), Field(1, "currency", _CURRENCY), Field(2, "amount", _AMOUNT)]),
    privileged=True,
)
L2_IS = register(0x0659, "sam.l2", P, Schema("sam.l2", [Field(0, "l2", _MSG)]))
LOAD_FINISH = register(0x065A, "sam.load_finish", P, Schema("sam.load_finish", [Field(0, "l3", _MSG)]), privileged=True)
LOADED = register(
    0x065B,
    "sam.loaded",
    P,
    Schema(
        "sam.loaded",
        [
            Field(0, "uid", UidType()),
            Field(1, "m", UInt(pp.MAX_COUNTER)),
            Field(2, "currency", _CURRENCY),
            Field(3, "amount", _AMOUNT),
            Field(4, "day", _DAY),
        ],
    ),
)
LOG = register(
    0x065C,
    "sam.log",
    P,
    Schema("sam.log", [Field(0, "day", _DAY), Field(1, "start", UInt(), optional=True)]),
    privileged=True,
)
ENTRIES = register(
    0x065D,
    "sam.entries",
    P,
    Schema(
        "sam.entries",
        [
            Field(0, "day", _DAY),
            Field(1, "entries", ListOf(Nested(_ENTRY), MAX_ENTRIES)),
            Field(2, "next", UInt(), optional=True),  # where the next page starts, if there is one
        ],
    ),
)
TOTALS = register(0x065E, "sam.totals", P, Schema("sam.totals", [Field(0, "day", _DAY)]), privileged=True)
SUMS = register(
    0x065F,
    "sam.sums",
    P,
    Schema(
        "sam.sums",
        [
            Field(0, "day", _DAY),
            Field(1, "debits", ListOf(Nested(_SUM), 256)),
            Field(2, "loads", ListOf(Nested(_SUM), 256)),
        ],
    ),
)
DAYS = register(0x0660, "sam.days", P, Schema("sam.days", []), privileged=True)
HELD = register(
    0x0661,
    "sam.held",
    P,
    Schema(
        "sam.held",
        [
            Field(0, "days", ListOf(_DAY, MAX_DAYS)),  # the days whose log is held, oldest first
            Field(1, "pruned_before", _DAY, optional=True),  # the first day not pruned, once a day was
            Field(2, "open", UInt()),  # authorisations without their S3 (L3) yet: kept until it comes
        ],
    ),
)
PRUNE = register(0x0662, "sam.prune", P, Schema("sam.prune", [Field(0, "before_day", _DAY)]), privileged=True)
PRUNED = register(
    0x0663,
    "sam.pruned",
    P,
    Schema(
        "sam.pruned",
        [
            Field(0, "before_day", _DAY),
            Field(1, "entries", UInt(PRUNE_BATCH)),  # log entries dropped by this step, with their records
            Field(2, "days", UInt(MAX_DAY)),  # days whose whole log and totals this step dropped
            Field(3, "more", Bool()),  # entries before ``before_day`` are left: order again
            Field(4, "refusals", UInt(PRUNE_BATCH), optional=True),  # refusal records (r:, x:) this step dropped
        ],
    ),
)
REFUSE_L1 = register(0x0666, "sam.refuse_l1", P, Schema("sam.refuse_l1", [Field(0, "l1", _MSG)]), privileged=True)
L1_REFUSED = register(0x0667, "sam.l1_refused", P, Schema("sam.l1_refused", [Field(0, "lr", _MSG)]))
# 0x066E/0x066F (sam.refuse_s1 {s1} -> sam.s1_refused): retired, an S1 ends no debit (whoever holds one could)
END_DEBIT = register(
    0x0673,
    "sam.end_debit",
    P,
    # unsent: the broker vouches that the S2 it had this SAM make never left it (its record of sending it never
    # committed), so the card cannot apply it: the authorisation is dropped as for a declined SE
    Schema("sam.end_debit", [Field(0, "se", _MSG), Field(1, "unsent", Bool(), optional=True)]),
    privileged=True,
)
DEBIT_ENDED = register(0x0674, "sam.debit_ended", P, Schema("sam.debit_ended", [Field(0, "sr", _MSG)]))
ORDERS = (
    INIT, ISSUE_KEY, DEBIT_START, DEBIT_FINISH, LOAD_START, LOAD_FINISH, LOG, TOTALS, DAYS, PRUNE, REFUSE_L1, END_DEBIT
)  # fmt: skip

# --- records ------------------------------------------------------------------------------------------------
_DEBIT_REC = Schema(
    "sam.debit_rec",
    [
        Field(0, "poid", _POID),
        Field(1, "rc", _NONCE),
        Field(2, "rs", _NONCE),
        Field(3, "currency", _CURRENCY),
        Field(4, "amount", _AMOUNT),
        Field(5, "day", _DAY, optional=True),  # set when the S3 came and the debit was logged
    ],
)
_LOAD_REC = Schema(
    "sam.load_rec",
    [
        Field(0, "rc", _NONCE),
        Field(1, "rs", _NONCE),
        Field(2, "currency", _CURRENCY),
        Field(3, "amount", _AMOUNT),
        Field(4, "day", _DAY, optional=True),  # set when the L3 came and the load was logged
    ],
)


def _ctr(value: int) -> bytes:
    return value.to_bytes(_CTR_BYTES, "big")


def _refused(exc: ProtocolError | DecodeError) -> Refused:
    return Refused(exc.reason, str(exc))


def _master(ctx: StepContext) -> bytes:
    master = ctx.get(b"master")
    if master is None:
        raise Refused("not_initialised", "the SAM has no master key yet: send sam.init first")
    return master


def _today(ctx: StepContext) -> int:
    if not math.isfinite(ctx.now) or not 0 <= ctx.now < (MAX_DAY + 1) * DAY_S:
        raise Refused("bad_time", f"the host's time {ctx.now!r} is not a day this SAM can log under")
    return int(ctx.now // DAY_S)


def _pruned_before(ctx: StepContext) -> int:
    """The first day this SAM has not pruned (0 if it never pruned)."""
    raw = ctx.get(b"pb")
    return 0 if raw is None else int.from_bytes(raw, "big")


def _log_day(ctx: StepContext) -> int:
    """Today, the day a proof is logged under; refused when the host's time is in a day already pruned."""
    day = _today(ctx)
    closed = _pruned_before(ctx)
    if day < closed:
        raise Refused(
            "bad_time",
            f"the host's day {day} was settled and pruned (the SAM pruned every day before {closed}): "
            "present the proof again with the host's true time",
        )
    return day


def _floors(ctx: StepContext, uid: Uid) -> tuple[int, int]:
    """The card's debit and load floors: every counter below them that the SAM holds no record of was pruned."""
    raw = ctx.get(b"h:" + bytes(uid))
    if raw is None:
        return 0, 0
    return int.from_bytes(raw[:_FLOOR_BYTES], "big"), int.from_bytes(raw[_FLOOR_BYTES:], "big")


def _raise_floor(ctx: StepContext, floors: dict[bytes, list[int]], uid: bytes, kind: bytes, ctr: bytes) -> None:
    """Raise card ``uid``'s debit or load floor (``kind``), kept in ``floors`` until the prune writes them, past the
    pruned counter ``ctr``."""
    floor = floors.get(uid)
    if floor is None:
        floor = floors[uid] = list(_floors(ctx, Uid.from_bytes(uid)))
    i = 0 if kind == _DEBIT else 1
    floor[i] = max(floor[i], int.from_bytes(ctr, "big") + 1)


def _check_not_pruned(
    ctx: StepContext, uid: Uid, kind: bytes, ctr: int, authentic: Callable[[], None] | None = None
) -> None:
    """Refuse ``pruned`` a counter of ``uid`` below its floor (called when the SAM holds no record of it), once
    ``authentic()`` (the message's MAC check, when the caller has not made it yet) passed."""
    debit_floor, load_floor = _floors(ctx, uid)
    if ctr < (debit_floor if kind == _DEBIT else load_floor):
        if authentic is not None:
            authentic()
        what = "debit" if kind == _DEBIT else "load"
        raise Refused(
            "pruned",
            f"{what} {ctr} of {uid} is below the counters this SAM pruned after settlement (its {what}s below "
            f"{debit_floor if kind == _DEBIT else load_floor}): it was logged and settled, or never reached the SAM "
            "in time; nothing is authorised or logged again for it",
        )


def _log(ctx: StepContext, day: int, kind: bytes, uid: Uid, ctr: int, currency: str, amount: int) -> None:
    """Append one entry to ``day``'s log and add it to that day's totals (all in the caller's step)."""
    tkey = b"t:" + _ctr(day) + kind + currency.encode()
    raw = ctx.get(tkey)
    total = (0 if raw is None else int.from_bytes(raw, "big")) + amount
    if total > pp.MAX_TOTAL:  # pragma: no cover - more than 2**11 maximal amounts in one day and currency
        raise Refused("overflow", f"the {currency} total of day {day} is full: present this proof again tomorrow")
    ctx.put(tkey, total.to_bytes(8, "big"))
    seq_raw = ctx.get(b"gseq")
    seq = 0 if seq_raw is None else int.from_bytes(seq_raw, "big")
    ctx.put(b"gseq", (seq + 1).to_bytes(8, "big"))
    ctx.put(b"g:" + _ctr(day) + seq.to_bytes(8, "big"), kind + bytes(uid) + _ctr(ctr))


def _refuse_unauthorised(ctx: StepContext, kind: bytes, uid: Uid, ctr: int, rc: bytes) -> None:
    """Refuse ``kind``'s counter ``ctr`` of ``uid`` for good (:func:`_refusal`), unless the SAM authorised it already
    (an L2 or S2 under ``l:`` / ``d:``): then ``authorised``, and the card ends it with that authorisation."""
    if ctx.get(kind + b":" + bytes(uid) + _ctr(ctr)) is not None:
        what, proof = ("load", "an L2") if kind == _LOAD else ("debit", "an S2")
        raise Refused("authorised", f"{what} {ctr} of {uid} was authorised ({proof} exists): it is not refused")
    _refusal(ctx, kind, uid, ctr, rc)


def _refusal(ctx: StepContext, kind: bytes, uid: Uid, ctr: int, rc: bytes) -> bool:
    """Record that ``kind``'s counter ``ctr`` of ``uid`` is refused for good (``r:`` a load, ``x:`` a debit), with
    the day it was made and its index entry by day (``q:``, what :meth:`SamApplet._prune` drops it by); whether a
    record was written. None is for a counter below the card's floor: the SAM never authorises one it holds no
    record of (``pruned``), so the statement is answered again without one."""
    rkey = (b"r:" if kind == _LOAD else b"x:") + bytes(uid) + _ctr(ctr)
    if ctx.get(rkey) is not None:
        return False
    debit_floor, load_floor = _floors(ctx, uid)
    if ctr < (debit_floor if kind == _DEBIT else load_floor):
        return False
    day = max(_today(ctx), _pruned_before(ctx))  # a day not pruned yet: the refusal is held until its day is
    ctx.put(rkey, rc + _ctr(day))
    ctx.put(b"q:" + _ctr(day) + kind + bytes(uid) + _ctr(ctr), b"")
    return True


class SamApplet(Applet):
    """The broker's SAM (see the module's docstring)."""

    name = "sam"
    handles = (*ORDERS,)

    def handle(self, ctx: StepContext, msg: Message, params: dict[str, Any]) -> None:
        code = msg.mtype
        try:
            if code == INIT.code:
                self._init(ctx)
            elif code == ISSUE_KEY.code:
                self._issue_key(ctx, params["card_cert"])
            elif code == DEBIT_START.code:
                self._debit_start(
                    ctx, params["s1"], params["poid"], params["currency"], params["amount"], params.get("known", False)
                )
            elif code == DEBIT_FINISH.code:
                self._debit_finish(ctx, params["s3"])
            elif code == LOAD_START.code:
                self._load_start(ctx, params["l1"], params["currency"], params["amount"])
            elif code == LOAD_FINISH.code:
                self._load_finish(ctx, params["l3"])
            elif code == REFUSE_L1.code:
                self._refuse_l1(ctx, params["l1"])
            elif code == END_DEBIT.code:
                self._end_debit(ctx, params["se"], params.get("unsent", False))
            elif code == LOG.code:
                self._entries(ctx, _held_day(ctx, params["day"]), params.get("start", 0))
            elif code == TOTALS.code:
                self._totals(ctx, _held_day(ctx, params["day"]))
            elif code == DAYS.code:
                self._days(ctx)
            else:  # PRUNE
                self._prune(ctx, params["before_day"])
        except (ProtocolError, DecodeError) as exc:
            raise _refused(exc) from None

    def _init(self, ctx: StepContext) -> None:
        if ctx.get(b"master") is not None:
            ctx.reply(READY, fresh=False)
            return
        ctx.put(b"master", ctx.random(pp.KEY_BYTES))
        ctx.reply(READY, fresh=True)

    def _issue_key(self, ctx: StepContext, cert: bytes) -> None:
        master = _master(ctx)
        try:
            peer = pki.verified(cert, ctx.roots_der, now=ctx.now, role=pki.Role.DEVICE)
        except PkiError as exc:
            raise Refused(exc.reason, f"not a card certificate of this SAM's CA: {exc}") from None
        sealed = profile.hpke_seal(peer.public_key, pp.diversify(master, peer.uid), KEY_INFO)
        ctx.reply(KEY, uid=peer.uid, sealed=sealed)

    # -- debits ------------------------------------------------------------------------------------------------
    def _debit_start(
        self, ctx: StepContext, raw: bytes, poid: bytes, currency: str, amount: int, known: bool = False
    ) -> None:
        master = _master(ctx)
        s1 = pp.S1.decode(raw)
        key = pp.diversify(master, s1.uid)
        rkey = b"d:" + bytes(s1.uid) + _ctr(s1.n)
        old = ctx.get(rkey)
        if old is not None:
            rec = _DEBIT_REC.decode(old)
            s2 = pp.sam_answer_s1(key, s1, poid=poid, currency=currency, amount=amount, rs=rec["rs"])
            if (rec["poid"], rec["rc"], rec["currency"], rec["amount"]) != (poid, s1.rc, currency, amount):
                raise Refused("conflict", f"debit {s1.n} of {s1.uid} was authorised for another order or amount")
            ctx.reply(S2_IS, s2=s2.encode())
            return
        if known:  # (the broker's question for an order it may have lost: did you authorise it?)
            raise Refused("not_authorised", f"this SAM authorised no debit {s1.n} of {s1.uid}")
        s2 = pp.sam_answer_s1(key, s1, poid=poid, currency=currency, amount=amount, rs=ctx.random(pp.NONCE_BYTES))
        if ctx.get(b"x:" + bytes(s1.uid) + _ctr(s1.n)) is not None:
            raise Refused("debit_refused", f"debit {s1.n} of {s1.uid} was refused for good: it is never authorised")
        _check_not_pruned(ctx, s1.uid, _DEBIT, s1.n)
        owner = ctx.get(b"o:" + poid)
        if owner is not None:
            who = Uid.from_bytes(owner[:UID_BYTES])
            raise Refused(
                "already_paid",
                f"order {poid.hex()} is authorised already, as debit "
                f"{int.from_bytes(owner[UID_BYTES:], 'big')} of {who}",
            )
        ctx.put(
            rkey, _DEBIT_REC.encode({"poid": poid, "rc": s1.rc, "rs": s2.rs, "currency": currency, "amount": amount})
        )
        ctx.put(b"o:" + poid, bytes(s1.uid) + _ctr(s1.n))
        ctx.reply(S2_IS, s2=s2.encode())

    def _debit_finish(self, ctx: StepContext, raw: bytes) -> None:
        master = _master(ctx)
        s3 = pp.S3.decode(raw)
        key = pp.diversify(master, s3.uid)
        rkey = b"d:" + bytes(s3.uid) + _ctr(s3.n)
        old = ctx.get(rkey)
        if old is None:
            _check_not_pruned(ctx, s3.uid, _DEBIT, s3.n, lambda: s3.check(key))
            raise Refused("no_pending", f"this SAM authorised no debit {s3.n} of {s3.uid}")
        rec = _DEBIT_REC.decode(old)
        s2 = pp.S2.make(
            key, poid=rec["poid"], n=s3.n, rc=rec["rc"], rs=rec["rs"], currency=rec["currency"], amount=rec["amount"]
        )
        pp.sam_check_s3(key, s3, uid=s3.uid, s2=s2)
        day = rec.get("day")
        if day is None:
            day = _log_day(ctx)
            _log(ctx, day, _DEBIT, s3.uid, s3.n, s3.currency, s3.amount)
            ctx.put(rkey, _DEBIT_REC.encode({**rec, "day": day}))
        ctx.reply(DEBITED, uid=s3.uid, n=s3.n, poid=s3.poid, currency=s3.currency, amount=s3.amount, day=day)

    # -- loads -------------------------------------------------------------------------------------------------
    def _load_start(self, ctx: StepContext, raw: bytes, currency: str, amount: int) -> None:
        master = _master(ctx)
        l1 = pp.L1.decode(raw)
        key = pp.diversify(master, l1.uid)
        rkey = b"l:" + bytes(l1.uid) + _ctr(l1.m)
        old = ctx.get(rkey)
        if old is not None:
            rec = _LOAD_REC.decode(old)
            l2 = pp.sam_answer_l1(key, l1, currency=currency, amount=amount, rs=rec["rs"])
            if (rec["rc"], rec["currency"], rec["amount"]) != (l1.rc, currency, amount):
                raise Refused("conflict", f"load {l1.m} of {l1.uid} was authorised for another amount")
            ctx.reply(L2_IS, l2=l2.encode())
            return
        l2 = pp.sam_answer_l1(key, l1, currency=currency, amount=amount, rs=ctx.random(pp.NONCE_BYTES))
        if ctx.get(b"r:" + bytes(l1.uid) + _ctr(l1.m)) is not None:
            raise Refused("load_refused", f"load {l1.m} of {l1.uid} was refused for good: it is never authorised")
        _check_not_pruned(ctx, l1.uid, _LOAD, l1.m)
        ctx.put(rkey, _LOAD_REC.encode({"rc": l1.rc, "rs": l2.rs, "currency": currency, "amount": amount}))
        ctx.reply(L2_IS, l2=l2.encode())

    def _refuse_l1(self, ctx: StepContext, raw: bytes) -> None:
        """Record that the card's load is never authorised and answer the LR on which the card forgets it. A load
        below the card's floor that the SAM holds no record of may be refused too: the SAM never authorises it
        (``pruned``), and if it was authorised and logged, its L3 came, so the card holds it no longer."""
        master = _master(ctx)
        l1 = pp.L1.decode(raw)
        lr = pp.sam_refuse_l1(pp.diversify(master, l1.uid), l1)
        _refuse_unauthorised(ctx, _LOAD, l1.uid, l1.m, l1.rc)
        ctx.reply(L1_REFUSED, lr=lr.encode())

    def _end_debit(self, ctx: StepContext, raw: bytes, unsent: bool = False) -> None:
        """Record that the card's debit is never authorised (or logged) and answer the SR on which the card forgets
        it (as :meth:`_refuse_l1` for a load), on the card's own SE. An S2 given is refused ``authorised`` (the
        card ends that debit with it), unless the SE declines that very S2, or the broker says the S2 never left it
        (``unsent``): the card never applies it, so its S3 never exists, and the authorisation (``d:``, ``o:``) is
        dropped."""
        master = _master(ctx)
        se = pp.SE.decode(raw)
        sr = pp.sam_end_debit(pp.diversify(master, se.uid), se)
        rkey = b"d:" + bytes(se.uid) + _ctr(se.n)
        old = ctx.get(rkey)
        if old is not None and (se.declined or unsent):
            rec = _DEBIT_REC.decode(old)
            if (rec["poid"], rec["rc"]) != (se.poid, se.rc):
                raise Refused(
                    "mismatch", f"the SE declines another debit than this SAM authorised as {se.n} of {se.uid}"
                )
            if rec.get("day") is not None:  # its S3 came: the card debited, it cannot decline (nor was it unsent)
                raise Refused("conflict", f"debit {se.n} of {se.uid} was logged: it is not ended")
            ctx.delete(rkey)
            ctx.delete(b"o:" + rec["poid"])
        _refuse_unauthorised(ctx, _DEBIT, se.uid, se.n, se.rc)
        ctx.reply(DEBIT_ENDED, sr=sr.encode())

    def _load_finish(self, ctx: StepContext, raw: bytes) -> None:
        master = _master(ctx)
        l3 = pp.L3.decode(raw)
        key = pp.diversify(master, l3.uid)
        rkey = b"l:" + bytes(l3.uid) + _ctr(l3.m)
        old = ctx.get(rkey)
        if old is None:
            _check_not_pruned(ctx, l3.uid, _LOAD, l3.m, lambda: l3.check(key))
            raise Refused("no_pending", f"this SAM authorised no load {l3.m} of {l3.uid}")
        rec = _LOAD_REC.decode(old)
        l2 = pp.L2.make(key, m=l3.m, rc=rec["rc"], rs=rec["rs"], currency=rec["currency"], amount=rec["amount"])
        pp.sam_check_l3(key, l3, uid=l3.uid, l2=l2)
        day = rec.get("day")
        if day is None:
            day = _log_day(ctx)
            _log(ctx, day, _LOAD, l3.uid, l3.m, l3.currency, l3.amount)
            ctx.put(rkey, _LOAD_REC.encode({**rec, "day": day}))
        ctx.reply(LOADED, uid=l3.uid, m=l3.m, currency=l3.currency, amount=l3.amount, day=day)

    # -- the log -----------------------------------------------------------------------------------------------
    def _entries(self, ctx: StepContext, day: int, start: int) -> None:
        rows = ctx.scan(b"g:" + _ctr(day))
        page = rows[start : start + MAX_ENTRIES]
        entries = []
        for _, v in page:
            kind, uid, ctr = v[:1], Uid.from_bytes(v[1 : 1 + UID_BYTES]), int.from_bytes(v[1 + UID_BYTES :], "big")
            if kind == _DEBIT:
                rec = _DEBIT_REC.decode(_must(ctx.get(b"d:" + bytes(uid) + _ctr(ctr))))
                entries.append(
                    {
                        "kind": "debit",
                        "uid": uid,
                        "ctr": ctr,
                        "poid": rec["poid"],
                        "currency": rec["currency"],
                        "amount": rec["amount"],
                    }
                )
            else:
                rec = _LOAD_REC.decode(_must(ctx.get(b"l:" + bytes(uid) + _ctr(ctr))))
                entries.append(
                    {"kind": "load", "uid": uid, "ctr": ctr, "currency": rec["currency"], "amount": rec["amount"]}
                )
        more = start + MAX_ENTRIES < len(rows)
        ctx.reply(ENTRIES, day=day, entries=entries, next=start + MAX_ENTRIES if more else None)

    def _totals(self, ctx: StepContext, day: int) -> None:
        sums: dict[bytes, list[dict[str, Any]]] = {_DEBIT: [], _LOAD: []}
        prefix = b"t:" + _ctr(day)
        for k, v in ctx.scan(prefix):
            kind, cur = k[len(prefix) : len(prefix) + 1], k[len(prefix) + 1 :].decode("ascii")
            sums[kind].append({"currency": cur, "amount": int.from_bytes(v, "big")})
        ctx.reply(SUMS, day=day, debits=sums[_DEBIT], loads=sums[_LOAD])

    # -- pruning (after the broker settled the days) ---------------------------------------------------------------
    def _days(self, ctx: StepContext) -> None:
        days = sorted({int.from_bytes(k[2 : 2 + _CTR_BYTES], "big") for k, _ in ctx.scan(b"t:")})
        # each logged record has one log entry while it is held (both are pruned together): the rest are open
        opened = len(ctx.scan(b"d:")) + len(ctx.scan(b"l:")) - len(ctx.scan(b"g:"))
        closed = ctx.get(b"pb")
        ctx.reply(
            HELD, days=days[:MAX_DAYS], pruned_before=None if closed is None else _pruned_before(ctx), open=opened
        )

    def _prune(self, ctx: StepContext, before_day: int) -> None:
        today = _today(ctx)
        if before_day > today:
            raise Refused("bad_day", f"day {before_day} is after today ({today}): only days that ended are pruned")
        if before_day > _pruned_before(ctx):
            ctx.put(b"pb", _ctr(before_day))  # those days are closed from now on, even before their log is gone
        floors: dict[bytes, list[int]] = {}
        entries = gone = 0
        days = sorted({int.from_bytes(k[2 : 2 + _CTR_BYTES], "big") for k, _ in ctx.scan(b"t:")})
        due = [d for d in days if d < before_day]
        for day in due:
            rows = ctx.scan(b"g:" + _ctr(day))
            take = rows[: PRUNE_BATCH - entries]
            for k, v in take:
                kind, uid, ctr = v[:1], v[1 : 1 + UID_BYTES], v[1 + UID_BYTES :]
                rkey = (b"d:" if kind == _DEBIT else b"l:") + uid + ctr
                if kind == _DEBIT:
                    ctx.delete(b"o:" + _DEBIT_REC.decode(_must(ctx.get(rkey)))["poid"])
                ctx.delete(rkey)
                ctx.delete(k)
                _raise_floor(ctx, floors, uid, kind, ctr)
            entries += len(take)
            if len(take) < len(rows):
                break  # the batch is full inside this day: its totals stay until its whole log is gone
            for k, _ in ctx.scan(b"t:" + _ctr(day)):
                ctx.delete(k)
            gone += 1
            if entries == PRUNE_BATCH:
                break
        refusals, left = self._prune_refusals(ctx, before_day, PRUNE_BATCH - entries, floors)
        for uid, (debit_floor, load_floor) in floors.items():
            ctx.put(b"h:" + uid, debit_floor.to_bytes(_FLOOR_BYTES, "big") + load_floor.to_bytes(_FLOOR_BYTES, "big"))
        more = len(due) > gone or left
        ctx.reply(PRUNED, before_day=before_day, entries=entries, days=gone, more=more,
                  refusals=refusals or None)  # fmt: skip

    @staticmethod
    def _prune_refusals(ctx: StepContext, before_day: int, budget: int, floors: dict[bytes, list[int]]) -> tuple[
            int, bool]:  # fmt: skip
        """Drop at most ``budget`` refusal records made on days before ``before_day`` (oldest first), raising the
        card's floor (in ``floors``) past each counter; how many, and whether more of those days are left."""
        if budget <= 0:
            first = ctx.scan_page(b"q:", limit=1)
            return 0, bool(first) and _index_day(first[0][0]) < before_day
        rows = [(k, v) for k, v in ctx.scan_page(b"q:", limit=budget + 1) if _index_day(k) < before_day]
        take = rows[:budget]
        for k, _ in take:
            kind, uid, ctr = k[6:7], k[7 : 7 + UID_BYTES], k[7 + UID_BYTES :]
            ctx.delete((b"r:" if kind == _LOAD else b"x:") + uid + ctr)
            ctx.delete(k)
            _raise_floor(ctx, floors, uid, kind, ctr)
        return len(take), len(rows) > budget


def _index_day(key: bytes) -> int:
    """The day of a refusal's index entry ``q:<day><kind><uid><counter>``."""
    return int.from_bytes(key[2 : 2 + _CTR_BYTES], "big")


def _held_day(ctx: StepContext, day: int) -> int:
    """``day``, unless the SAM pruned it (refused ``pruned``: the broker settled it and keeps its totals)."""
    closed = _pruned_before(ctx)
    if day < closed:
        raise Refused(
            "pruned",
            f"day {day} was settled and pruned (the SAM pruned every day before {closed}): "
            "the broker keeps its totals (`cardnet speed broker days`)",
        )
    return day


def _must(raw: bytes | None) -> bytes:
    if raw is None:  # pragma: no cover - a log entry is written with its record, in one step
        raise Refused("bad_state", "a log entry names a record the SAM does not hold: its store is damaged")
    return raw
