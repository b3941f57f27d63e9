"""The customer's e-purse applet: balances per currency, loading and the S1/S2/S3 decrement with the broker's SAM.

It carries out what :mod:`cardnet.protocols.speed.purse` decides. Owner orders (privileged: only an application
that verified the PIN):

* ``purse.install_key {sealed}``: the purse key from the SAM (``sam.issue_key``), HPKE-sealed to this card's
  key (info ``cardnet/speed/purse-key``); installed once: the same key again is answered, another refused.
* ``purse.balance``: the accounts (balance, loaded, debited per currency), the counters and what is pending.
* ``purse.load_begin {currency, amount}`` -> L1; ``purse.load {l2}`` -> the credit and L3.
* ``purse.debit_begin {poid, currency, amount}`` -> S1; ``purse.debit {s2}`` -> the debit and S3.
* ``purse.proofs``: the kept S3s and L3s (the newest 64 of each), to present to the SAM again after a crash.
* ``purse.pending_loads``: the L1 of every load begun and not credited, to send the broker again after a crash.
* ``purse.drop_load {lr}`` -> ``purse.load_dropped {m, dropped}``: forget a pending load on the SAM's LR (the
  broker refused it for good; the SAM never authorises it). Nothing else makes the purse forget a pending load: a
  17th is refused ``loads_pending`` until the ones under way are credited or dropped.
* ``purse.pending_debits``: the S1 of every debit begun and not debited (oldest first), to end them at the broker.
* ``purse.end_debit {poid}`` -> ``purse.se {se}``: the SE (MACed under the purse key: only the card makes one, on
  its owner's order) that asks the broker's SAM to end that pending debit; nothing changes on the card.
* ``purse.decline_debit {s2}`` -> ``purse.se {se}``: decline the SAM's S2 (the purse holds too little, or the
  purchase is over): the pending debit is marked declined (its S2 is refused ``debit_refused`` from then on, so its
  S3 never exists) and the SE names the S2, on which the SAM drops its authorisation.
* ``purse.drop_debit {sr}`` -> ``purse.debit_dropped {n, dropped}``: forget a pending debit on the SAM's SR (the SAM
  never authorises it, or dropped its authorisation on the card's decline). Nothing else makes the purse forget a
  pending debit but its S2: a 17th is refused ``debits_pending`` until the ones under way are debited (their
  purchases recovered) or dropped.

A step that debits (or credits) writes the balance, the pending record's removal and the kept proof together
(one card step is one transaction), so a crash leaves the purse before or after the whole of it. Another applet
on this card (the SPEED conductor) pays inside its own step with :func:`begin_debit` and :func:`finish_debit`,
which work on this applet's table by name.

Records (table ``a.purse``): ``key`` (32 bytes), ``ctr`` (n, m), ``a:<currency>`` (an account),
``pd:<poid>`` (a pending debit), ``pl:<m>`` (a pending load), ``kd:<n>`` (a kept S3), ``kl:<m>`` (a kept L3);
counters are 4 bytes big-endian in keys, so the kept proofs sort oldest first.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from cardnet.card import Applet, CardError, Refused, StepContext
from cardnet.crypto import profile
from cardnet.crypto.errors import CryptoError
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.speed import purse as pp
from cardnet.wire import Bool, Bytes, DecodeError, Field, ListOf, Message, Nested, Schema, Text, UInt, register

TABLE = "a.purse"
KEY_INFO = b"cardnet/speed/purse-key"
SEALED_KEY_BYTES = pp.KEY_BYTES + profile.HPKE_OVERHEAD  # 113
P = "speed"

_MSG = Bytes(pp.MAX_MESSAGE_BYTES, 1)
_CURRENCY = Text(pp.CURRENCY_BYTES)
_AMOUNT = UInt(pp.MAX_AMOUNT)
_ACCOUNT = Schema(
    "purse.account",
    [
        Field(0, "currency", _CURRENCY),
        Field(1, "balance", UInt(pp.MAX_BALANCE)),
        Field(2, "loaded", UInt(pp.MAX_TOTAL)),
        Field(3, "debited", UInt(pp.MAX_TOTAL)),
    ],
)

INSTALL_KEY = register(
    0x0640,
    "purse.install_key",
    P,
    Schema("purse.install_key", [Field(0, "sealed", Bytes(SEALED_KEY_BYTES, SEALED_KEY_BYTES))]),
    privileged=True,
)
INSTALLED = register(0x0641, "purse.installed", P, Schema("purse.installed", [Field(0, "fresh", Bool())]))
BALANCE = register(0x0642, "purse.balance", P, Schema("purse.balance", []), privileged=True)
BALANCES = register(
    0x0643,
    "purse.balances",
    P,
    Schema(
        "purse.balances",
        [
            Field(0, "accounts", ListOf(Nested(_ACCOUNT), pp.MAX_CURRENCIES)),
            Field(1, "n", UInt(pp.MAX_COUNTER + 1)),
            Field(2, "m", UInt(pp.MAX_COUNTER + 1)),
            Field(3, "pending_debits", UInt(pp.MAX_PENDING)),
            Field(4, "pending_loads", UInt(pp.MAX_PENDING)),
            Field(5, "kept", UInt(pp.MAX_KEPT)),
            Field(6, "kept_loads", UInt(pp.MAX_KEPT)),
            Field(7, "keyed", Bool()),
        ],
    ),
)
LOAD_BEGIN = register(
    0x0644,
    "purse.load_begin",
    P,
    Schema("purse.load_begin", [Field(0, "currency", _CURRENCY), Field(1, "amount", _AMOUNT)]),
    privileged=True,
)
L1_IS = register(0x0645, "purse.l1", P, Schema("purse.l1", [Field(0, "l1", _MSG)]))
LOAD = register(0x0646, "purse.load", P, Schema("purse.load", [Field(0, "l2", _MSG)]), privileged=True)
L3_IS = register(0x0647, "purse.l3", P, Schema("purse.l3", [Field(0, "l3", _MSG)]))
DEBIT_BEGIN = register(
    0x0648,
    "purse.debit_begin",
    P,
    Schema(
        "purse.debit_begin",
        [
            Field(0, "poid", Bytes(pp.POID_MAX_BYTES, pp.POID_MIN_BYTES)),
            Field(1, "currency", _CURRENCY),
            Field(2, "amount", _AMOUNT),
        ],
    ),
    privileged=True,
)
S1_IS = register(0x0649, "purse.s1", P, Schema("purse.s1", [Field(0, "s1", _MSG)]))
DEBIT = register(0x064A, "purse.debit", P, Schema("purse.debit", [Field(0, "s2", _MSG)]), privileged=True)
S3_IS = register(0x064B, "purse.s3", P, Schema("purse.s3", [Field(0, "s3", _MSG)]))
PROOFS = register(0x064C, "purse.proofs", P, Schema("purse.proofs", []), privileged=True)
KEPT = register(
    0x064D,
    "purse.kept",
    P,
    Schema(
        "purse.kept",
        [Field(0, "s3", ListOf(_MSG, pp.MAX_KEPT)), Field(1, "l3", ListOf(_MSG, pp.MAX_KEPT))],
    ),
)
PENDING_LOADS = register(0x064E, "purse.pending_loads", P, Schema("purse.pending_loads", []), privileged=True)
L1S = register(0x064F, "purse.l1s", P, Schema("purse.l1s", [Field(0, "l1", ListOf(_MSG, pp.MAX_PENDING))]))
DROP_LOAD = register(0x0668, "purse.drop_load", P, Schema("purse.drop_load", [Field(0, "lr", _MSG)]), privileged=True)
LOAD_DROPPED = register(
    0x0669,
    "purse.load_dropped",
    P,
    Schema("purse.load_dropped", [Field(0, "m", UInt(pp.MAX_COUNTER)), Field(1, "dropped", Bool())]),
)
PENDING_DEBITS = register(0x066A, "purse.pending_debits", P, Schema("purse.pending_debits", []), privileged=True)
S1S = register(0x066B, "purse.s1s", P, Schema("purse.s1s", [Field(0, "s1", ListOf(_MSG, pp.MAX_PENDING))]))
DROP_DEBIT = register(
    0x066C, "purse.drop_debit", P, Schema("purse.drop_debit", [Field(0, "sr", _MSG)]), privileged=True
)
DEBIT_DROPPED = register(
    0x066D,
    "purse.debit_dropped",
    P,
    Schema("purse.debit_dropped", [Field(0, "n", UInt(pp.MAX_COUNTER)), Field(1, "dropped", Bool())]),
)
END_DEBIT = register(
    0x0670,
    "purse.end_debit",
    P,
    Schema("purse.end_debit", [Field(0, "poid", Bytes(pp.POID_MAX_BYTES, pp.POID_MIN_BYTES))]),
    privileged=True,
)
DECLINE_DEBIT = register(
    0x0671, "purse.decline_debit", P, Schema("purse.decline_debit", [Field(0, "s2", _MSG)]), privileged=True
)
SE_IS = register(0x0672, "purse.se", P, Schema("purse.se", [Field(0, "se", _MSG)]))
ORDERS = (
    INSTALL_KEY, BALANCE, LOAD_BEGIN, LOAD, DEBIT_BEGIN, DEBIT, PROOFS, PENDING_LOADS, DROP_LOAD, PENDING_DEBITS,
    DROP_DEBIT, END_DEBIT, DECLINE_DEBIT,
)  # fmt: skip

# --- records ------------------------------------------------------------------------------------------------
_CTR = Schema("purse.ctr", [Field(0, "n", UInt(pp.MAX_COUNTER + 1)), Field(1, "m", UInt(pp.MAX_COUNTER + 1))])
_BALANCE_REC = Schema(
    "purse.account_rec",
    [Field(0, "balance", UInt(pp.MAX_BALANCE)), Field(1, "loaded", UInt()), Field(2, "debited", UInt())],
)
_NONCE = Bytes(pp.NONCE_BYTES, pp.NONCE_BYTES)
_PENDING_DEBIT = Schema(
    "purse.pending_debit",
    [
        Field(0, "n", UInt(pp.MAX_COUNTER)),
        Field(1, "rc", _NONCE),
        Field(2, "currency", _CURRENCY),
        Field(3, "amount", _AMOUNT),
        Field(4, "declined", Bool(), optional=True),  # the card declined its S2 (present only when true)
    ],
)
_PENDING_LOAD = Schema(
    "purse.pending_load", [Field(0, "rc", _NONCE), Field(1, "currency", _CURRENCY), Field(2, "amount", _AMOUNT)]
)
_CTR_BYTES = 4
K = TypeVar("K")
V = TypeVar("V")


# Kept proofs never change once kept, and every step reads the whole purse: their decoding is remembered (by
# bytes), which saves ~1.5 ms a step on a purse with full lists; a step encodes only the proofs it adds
# (save_state), records() encodes them all (remembered by value: both are immutable).
@functools.lru_cache(maxsize=4 * pp.MAX_KEPT)
def _s3(raw: bytes) -> pp.S3:
    return pp.S3.decode(raw)


@functools.lru_cache(maxsize=4 * pp.MAX_KEPT)
def _l3(raw: bytes) -> pp.L3:
    return pp.L3.decode(raw)


@functools.lru_cache(maxsize=8 * pp.MAX_KEPT)
def _encoded(proof: pp.S3 | pp.L3) -> bytes:
    return proof.encode()


def _ctr(value: int) -> bytes:
    return value.to_bytes(_CTR_BYTES, "big")


def _pending_debit(d: pp.PendingDebit) -> bytes:
    rec = {"n": d.n, "rc": d.rc, "currency": d.currency, "amount": d.amount, "declined": True if d.declined else None}
    return _PENDING_DEBIT.encode(rec)


def records(state: pp.PurseState) -> dict[bytes, bytes]:
    """The purse's records for ``state`` (every one but the key)."""
    out = {b"ctr": _CTR.encode({"n": state.n, "m": state.m})}
    for cur, acc in state.accounts.items():
        out[b"a:" + cur.encode()] = _BALANCE_REC.encode(
            {"balance": acc.balance, "loaded": acc.loaded, "debited": acc.debited}
        )
    for poid, d in state.debits.items():
        out[b"pd:" + poid] = _pending_debit(d)
    for m, ld in state.loads.items():
        out[b"pl:" + _ctr(m)] = _PENDING_LOAD.encode({"rc": ld.rc, "currency": ld.currency, "amount": ld.amount})
    for s3 in state.proofs.values():
        out[b"kd:" + _ctr(s3.n)] = _encoded(s3)
    for m, l3 in state.load_proofs.items():
        out[b"kl:" + _ctr(m)] = _encoded(l3)
    return out


def _state(rows: list[tuple[bytes, bytes]]) -> pp.PurseState:
    n = m = 0
    accounts: dict[str, pp.Account] = {}
    debits: dict[bytes, pp.PendingDebit] = {}
    loads: dict[int, pp.PendingLoad] = {}
    proofs: dict[bytes, pp.S3] = {}
    load_proofs: dict[int, pp.L3] = {}
    for k, v in rows:
        if k == b"ctr":
            c = _CTR.decode(v)
            n, m = c["n"], c["m"]
        elif k.startswith(b"a:"):
            accounts[pp.check_currency(k[2:].decode("ascii"))] = pp.Account(**_BALANCE_REC.decode(v))
        elif k.startswith(b"pd:"):
            d = _PENDING_DEBIT.decode(v)
            debits[k[3:]] = pp.PendingDebit(**{**d, "declined": d.get("declined", False)})
        elif k.startswith(b"pl:"):
            loads[int.from_bytes(k[3:], "big")] = pp.PendingLoad(**_PENDING_LOAD.decode(v))
        elif k.startswith(b"kd:"):
            s3 = _s3(v)
            proofs[s3.poid] = s3
        elif k.startswith(b"kl:"):
            load_proofs[int.from_bytes(k[3:], "big")] = _l3(v)
    return pp.PurseState(
        n=n, m=m, accounts=accounts, debits=debits, loads=loads, proofs=proofs, load_proofs=load_proofs
    )


def load_state(ctx: StepContext) -> pp.PurseState:
    """The purse's state (every record but the key), read in ``ctx``'s step."""
    try:
        return _state(ctx.scan(table=TABLE))
    except (DecodeError, ProtocolError, UnicodeDecodeError, ValueError) as exc:  # written only by this applet
        raise CardError("bad_state", f"the purse's stored state is damaged: {exc}") from None


def save_state(ctx: StepContext, old: pp.PurseState, new: pp.PurseState) -> None:
    """Write the records in which ``new`` differs from ``old``, the state this step read (in ``ctx``'s step: all or
    nothing). The records written are those of :func:`records`: a step writes what it changed (a debit: the
    counters or the account, the pending debit, the kept proof and the one it drops) instead of encoding and
    comparing the whole purse, whose kept proofs alone are up to 2 x 64 records."""
    if new is old:
        return
    if new.n != old.n or new.m != old.m:
        ctx.put(b"ctr", _CTR.encode({"n": new.n, "m": new.m}), table=TABLE)
    for cur, acc in new.accounts.items():
        if old.accounts.get(cur) != acc:
            rec = {"balance": acc.balance, "loaded": acc.loaded, "debited": acc.debited}
            ctx.put(b"a:" + cur.encode(), _BALANCE_REC.encode(rec), table=TABLE)
    for cur in old.accounts.keys() - new.accounts.keys():
        ctx.delete(b"a:" + cur.encode(), table=TABLE)
    _diff(ctx, b"pd:", old.debits, new.debits, lambda p, d: (p, _pending_debit(d)))
    _diff(ctx, b"pl:", old.loads, new.loads, lambda m, ld: (_ctr(m), _PENDING_LOAD.encode(
        {"rc": ld.rc, "currency": ld.currency, "amount": ld.amount})))  # fmt: skip
    _diff(ctx, b"kd:", old.proofs, new.proofs, lambda _, s3: (_ctr(s3.n), _encoded(s3)))
    _diff(ctx, b"kl:", old.load_proofs, new.load_proofs, lambda m, l3: (_ctr(m), _encoded(l3)))


Record = Callable[[K, V], tuple[bytes, bytes]]  # an entry -> its record's key (after the prefix) and value


def _diff(ctx: StepContext, prefix: bytes, old: Mapping[K, V], new: Mapping[K, V], record: Record[K, V]) -> None:
    """Delete the records of the entries of ``old`` that ``new`` dropped or changed, then write ``new``'s entries
    that ``old`` did not hold as they are (a value object: unchanged entries are the very objects read)."""
    if new is old:
        return
    puts = [(k, v) for k, v in new.items() if (was := old.get(k)) is not v and was != v]
    for k, v in old.items():
        got = new.get(k)
        if got is not v and got != v:
            ctx.delete(prefix + record(k, v)[0], table=TABLE)
    for k, v in puts:
        key, value = record(k, v)
        ctx.put(prefix + key, value, table=TABLE)


def _key(ctx: StepContext) -> bytes:
    key = ctx.get(b"key", table=TABLE)
    if key is None:
        raise Refused("no_key", "the purse has no key yet: ask the broker's SAM for one (purse.install_key)")
    return key


def _refused(exc: ProtocolError | DecodeError) -> Refused:
    return Refused(exc.reason, str(exc))


# --- what another applet of this card may call inside its own step ----------------------------------------------


def begin_debit(ctx: StepContext, poid: bytes, currency: str, amount: int) -> bytes:
    """Begin paying ``amount`` of ``currency`` for order ``poid`` in ``ctx``'s step; the encoded S1.

    Raises :class:`~cardnet.card.Refused` with the protocol's reason (``insufficient``, ``already_paid``,
    ``conflict``, ``bad_currency``, ``no_key``, ...): the step is then refused and nothing of it happened,
    unless the caller catches it.
    """
    key = _key(ctx)
    state = load_state(ctx)
    try:
        new, s1 = pp.begin_debit(
            state, key=key, uid=ctx.card_uid, poid=poid, currency=currency, amount=amount, rc=ctx.random(pp.NONCE_BYTES)
        )
    except ProtocolError as exc:
        raise _refused(exc) from None
    save_state(ctx, state, new)
    return s1.encode()


def finish_debit(ctx: StepContext, s2: bytes) -> bytes:
    """Debit on the SAM's encoded ``s2`` in ``ctx``'s step (balance, pending and kept proof together); the
    encoded S3. An S2 already applied gives the same S3 and debits nothing. Raises
    :class:`~cardnet.card.Refused` (``bad_mac``, ``no_pending``, ``mismatch``, ``insufficient``, ...)."""
    _, s3 = _apply(ctx, pp.S2.decode, s2, lambda state, key, got: pp.apply_s2(state, key=key, uid=ctx.card_uid,
                                                                                 s2=got))  # fmt: skip
    return s3.encode()


def decline_debit(ctx: StepContext, s2: bytes) -> bytes:
    """Decline the SAM's encoded ``s2`` in ``ctx``'s step (the pending debit is marked declined: that S2 is never
    applied); the encoded SE on which the SAM drops its authorisation and answers the SR. Raises
    :class:`~cardnet.card.Refused` (``bad_mac``, ``no_pending``, ``mismatch``, ``conflict``)."""
    _, se = _apply(ctx, pp.S2.decode, s2, lambda state, key, got: pp.decline_s2(state, key=key, uid=ctx.card_uid,
                                                                                   s2=got))  # fmt: skip
    return se.encode()


def end_debit(ctx: StepContext, poid: bytes) -> bytes:
    """The encoded SE asking the SAM to end the pending debit of ``poid`` (read in ``ctx``'s step, nothing
    written). Raises :class:`~cardnet.card.Refused` (``no_pending``)."""
    try:
        return pp.end_debit(load_state(ctx), key=_key(ctx), uid=ctx.card_uid, poid=poid).encode()
    except ProtocolError as exc:
        raise _refused(exc) from None


def begin_load(ctx: StepContext, currency: str, amount: int) -> bytes:
    """Ask for a credit of ``amount`` of ``currency`` in ``ctx``'s step; the encoded L1."""
    key = _key(ctx)
    state = load_state(ctx)
    try:
        new, l1 = pp.begin_load(
            state, key=key, uid=ctx.card_uid, currency=currency, amount=amount, rc=ctx.random(pp.NONCE_BYTES)
        )
    except ProtocolError as exc:
        raise _refused(exc) from None
    save_state(ctx, state, new)
    return l1.encode()


def finish_load(ctx: StepContext, l2: bytes) -> bytes:
    """Credit on the SAM's encoded ``l2`` in ``ctx``'s step; the encoded L3 (the same again for an L2
    already applied, and no second credit)."""
    _, l3 = _apply(ctx, pp.L2.decode, l2, lambda state, key, got: pp.apply_l2(state, key=key, uid=ctx.card_uid,
                                                                                 l2=got))  # fmt: skip
    return l3.encode()


def drop_load(ctx: StepContext, lr: bytes) -> tuple[int, bool]:
    """Forget the pending load the SAM's encoded ``lr`` refuses, in ``ctx``'s step: its ``m`` and whether it was
    pending (False: forgotten before). Raises :class:`~cardnet.card.Refused` (``bad_mac``, ``mismatch``,
    ``conflict``, ``no_pending``)."""
    got, dropped = _apply(ctx, pp.LR.decode, lr, lambda state, key, g: pp.apply_lr(state, key=key, uid=ctx.card_uid,
                                                                                  lr=g))  # fmt: skip
    return got.m, dropped


def drop_debit(ctx: StepContext, sr: bytes) -> tuple[int, bool]:
    """Forget the pending debit the SAM's encoded ``sr`` refuses (as :func:`drop_load`): its ``n`` and whether it
    was pending."""
    got, dropped = _apply(ctx, pp.SR.decode, sr, lambda state, key, g: pp.apply_sr(state, key=key, uid=ctx.card_uid,
                                                                                  sr=g))  # fmt: skip
    return got.n, dropped


_Statement = TypeVar("_Statement")
_Out = TypeVar("_Out")


def _apply(
    ctx: StepContext,
    decode: Callable[[bytes], _Statement],
    raw: bytes,
    apply: Callable[[pp.PurseState, bytes, _Statement], tuple[pp.PurseState, _Out]],
) -> tuple[_Statement, _Out]:
    """Decode the SAM's statement ``raw`` (an S2, L2, SR or LR) and ``apply`` it to the purse's state in ``ctx``'s
    step, writing what changed: the statement and what ``apply`` answered (a proof, an SE, whether the load or debit
    was pending); a bad statement is refused as the protocol says why."""
    key = _key(ctx)
    state = load_state(ctx)
    try:
        got = decode(raw)
        new, out = apply(state, key, got)
    except (ProtocolError, DecodeError) as exc:
        raise _refused(exc) from None
    save_state(ctx, state, new)
    return got, out


class PurseApplet(Applet):
    """The e-purse on the customer's card (see the module's docstring)."""

    name = "purse"
    handles = (*ORDERS,)

    def handle(self, ctx: StepContext, msg: Message, params: dict[str, Any]) -> None:
        code = msg.mtype
        if code == INSTALL_KEY.code:
            self._install_key(ctx, params["sealed"])
        elif code == BALANCE.code:
            self._balance(ctx)
        elif code == LOAD_BEGIN.code:
            ctx.reply(L1_IS, l1=begin_load(ctx, params["currency"], params["amount"]))
        elif code == LOAD.code:
            ctx.reply(L3_IS, l3=finish_load(ctx, params["l2"]))
        elif code == DEBIT_BEGIN.code:
            ctx.reply(S1_IS, s1=begin_debit(ctx, params["poid"], params["currency"], params["amount"]))
        elif code == DEBIT.code:
            ctx.reply(S3_IS, s3=finish_debit(ctx, params["s2"]))
        elif code == DROP_LOAD.code:
            m, dropped = drop_load(ctx, params["lr"])
            ctx.reply(LOAD_DROPPED, m=m, dropped=dropped)
        elif code == DROP_DEBIT.code:
            n, dropped = drop_debit(ctx, params["sr"])
            ctx.reply(DEBIT_DROPPED, n=n, dropped=dropped)
        elif code == END_DEBIT.code:
            ctx.reply(SE_IS, se=end_debit(ctx, params["poid"]))
        elif code == DECLINE_DEBIT.code:
            ctx.reply(SE_IS, se=decline_debit(ctx, params["s2"]))
        elif code == PENDING_DEBITS.code:
            state = load_state(ctx)
            ctx.reply(S1S, s1=[x.encode() for x in pp.pending_s1s(state, key=_key(ctx), uid=ctx.card_uid)])
        elif code == PENDING_LOADS.code:
            state = load_state(ctx)
            ctx.reply(L1S, l1=[x.encode() for x in pp.pending_l1s(state, key=_key(ctx), uid=ctx.card_uid)])
        else:  # PROOFS
            state = load_state(ctx)
            s3s = sorted(state.proofs.values(), key=lambda s: s.n)
            l3s = [state.load_proofs[m] for m in sorted(state.load_proofs)]
            ctx.reply(KEPT, s3=[s.encode() for s in s3s], l3=[lp.encode() for lp in l3s])

    def _install_key(self, ctx: StepContext, sealed: bytes) -> None:
        try:
            key = ctx.hpke_open(sealed, KEY_INFO)
        except CryptoError as exc:
            raise Refused(exc.reason, f"the sealed purse key does not open with this card's key: {exc}") from None
        if len(key) != pp.KEY_BYTES:
            raise Refused("bad_key", f"a purse key is {pp.KEY_BYTES} bytes, got {len(key)}")
        old = ctx.get(b"key", table=TABLE)
        if old is not None:
            if old != key:
                raise Refused("key_installed", "this purse has its key already; a purse takes one key, once")
            ctx.reply(INSTALLED, fresh=False)
            return
        ctx.put(b"key", key, table=TABLE)
        ctx.reply(INSTALLED, fresh=True)

    def _balance(self, ctx: StepContext) -> None:
        state = load_state(ctx)
        accounts = [
            {"currency": cur, "balance": acc.balance, "loaded": acc.loaded, "debited": acc.debited}
            for cur, acc in sorted(state.accounts.items())
        ]
        ctx.reply(
            BALANCES,
            accounts=accounts,
            n=state.n,
            m=state.m,
            pending_debits=len(state.debits),
            pending_loads=len(state.loads),
            kept=len(state.proofs),
            kept_loads=len(state.load_proofs),
            keyed=ctx.get(b"key", table=TABLE) is not None,
        )
