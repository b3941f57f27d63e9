"""SPEED's e-purse: the multi-currency purse's state and the S1/S2/S3 decrement and L1/L2/L3 load with a SAM, sans-I/O.

Theory of operation
-------------------
The SAM (a card applet held by the broker) keeps one 32-byte *master key*; each purse holds the key
:func:`diversify` derives from it and the purse card's Uid (HKDF-SHA256), delivered once, sealed to the card.
Every message is MACed (HMAC-SHA256, 32 bytes) under that per-card key over a domain-separated encoding of
*all* its fields (a label naming the message, then the deterministic CBOR of the fields), so a message of one
kind never passes for another and a purse can use no other card's messages.

Decrement (SPEED section 2, the CEN WG10 purchase transaction)::

    S1 card -> SAM  uid, n, rc, poid, currency, amount     the card commits to paying that for that order
    S2 SAM -> card  poid, n, rc, rs, currency, amount      the SAM is genuine and authorises the debit
    S3 card -> SAM  uid, poid, n, rs, currency, amount     the proof of debit

``n`` is the purse's debit counter (each S1 gets a fresh one), ``rc`` and ``rs`` are the card's and the SAM's
16-byte nonces, ``poid`` the PaymentOrderID. The card debits only on an S2 that matches a debit it began
(:func:`begin_debit`, :func:`apply_s2`), and in the same atomic step it drops the pending debit and keeps the
S3; the SAM logs only on an S3 that matches an S2 it made (:func:`sam_answer_s1`, :func:`sam_check_s3`).
Loading is the same with ``m``, the purse's load counter, and no order id (L1, L2, L3: L3 is the proof of
credit). A load (a debit) the broker refused for good ends with the SAM's refusal instead of an L2 (S2)::

    LR SAM -> card  uid, m, rc                             load m is never authorised: the card forgets it
    SE card -> SAM  uid, n, rc, declined, poid             the card's owner asks to end debit n (declined: the
                                                           card declined its S2 and never applies it)
    SR SAM -> card  uid, n, rc, poid                       debit n is never debited: the card forgets it

The SAM makes an LR only for a load it never authorised, and never authorises one it made an LR for
(:func:`sam_refuse_l1`). A debit ends on the card's own SE, which only its owner's order makes
(:func:`end_debit`; an S1 alone ends nothing: whoever holds one cannot cancel the payment it begins): the SAM
answers the SR for a debit it never authorised, and for one it authorised whose S2 the card *declined*
(:func:`decline_s2`: the card then never applies that S2, so no S3 of it ever exists and the SAM drops the
authorisation); it never authorises one it made an SR for (:func:`sam_end_debit`). The card forgets a pending
load only on an LR (:func:`apply_lr`) and a pending debit only on an SR (:func:`apply_sr`), never on its own: a
load the broker took money for stays pending until its L2 comes, a debit the SAM authorised until its S2 comes
(the purchase it pays is finished by recovery) or the card declines that S2, and a 17th pending load (debit) is
refused ``loads_pending`` (``debits_pending``) until the host finishes the ones under way.

Why value is conserved: an S2 (L2) exists only if the SAM recorded that (uid, n) first; the card turns one
pending (n, rc) into one debit at most (the pending is gone once debited, and a replayed S2 gets the kept S3
back and debits nothing); the SAM logs one (uid, n) at most. An S3 exists only if the card debited, so once
every S3 reached the SAM, the card's debits equal the SAM's logged debits; the card keeps its last
:data:`MAX_KEPT` proofs so that a host can present an S3 again after a crash (older proofs are dropped: a host
must deliver each S3 before :data:`MAX_KEPT` later debits). A purse never goes negative: a debit larger than
the balance is refused with nothing changed. Balances and amounts are bounded (:data:`MAX_AMOUNT`,
:data:`MAX_BALANCE`), so nothing overflows.

Nothing here reads a clock or draws randomness: the nonces come in as arguments. States are frozen values and
every function returns a new one (the mappings inside are never changed in place).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, ClassVar, Self

from cardnet.crypto import profile
from cardnet.crypto.errors import CryptoError
from cardnet.protocols.errors import ProtocolError
from cardnet.wire import Bool, Bytes, Field, Schema, Text, UidType, UInt
from cardnet.wire.ids import Uid

# --- sizes and bounds ----------------------------------------------------------------------------------------
KEY_BYTES = 32  # the SAM master key and each card's diversified key
NONCE_BYTES = 16  # rc, rs
MAC_BYTES = profile.HMAC_BYTES  # 32: full HMAC-SHA256 (no size budget to save here)
POID_MIN_BYTES, POID_MAX_BYTES = 1, 64
CURRENCY_BYTES = 3  # ISO 4217 alpha-3
MAX_AMOUNT = 2**53  # the largest amount in one message, in minor units (exact in a JSON/JS number, too)
MAX_BALANCE = 2**53  # the largest balance a purse holds per currency
MAX_TOTAL = 2**64 - 1  # the largest cumulated loaded/debited amount a purse counts per currency
MAX_COUNTER = 2**32 - 1  # n and m (4 bytes, as in CEN WG10 / CEPS)
MAX_CURRENCIES = 16  # currencies one purse holds
MAX_PENDING = 16  # debits (and, separately, loads) begun and not finished: a 17th is refused (debits_pending,
# loads_pending: a pending one may be authorised, and only its S2/L2 or the SAM's SR/LR ends it)
MAX_KEPT = 64  # proofs of debit (and, separately, of credit) a purse keeps; a 65th drops the oldest
MAX_MESSAGE_BYTES = 160  # the largest encoded S1, S2 or S3 (a 64-byte poid, the largest n and amount); LR: 78, SR: 145

_SALT = b"cardnet/speed/purse"
_INFO = b"cardnet/speed/purse/card-key/v1\x00"
_LABEL = b"cardnet/speed/purse/v1/"


def _fail(reason: str, message: str) -> ProtocolError:
    return ProtocolError(reason, message)


# --- values ---------------------------------------------------------------------------------------------------


def check_currency(code: object) -> str:
    """``code`` if it is an ISO 4217 alpha-3 code (three uppercase ASCII letters), else ``bad_currency``."""
    if not (isinstance(code, str) and len(code) == CURRENCY_BYTES and code.isascii() and code.isalpha()):
        raise _fail("bad_currency", f"a currency is an ISO 4217 code of three letters (EUR, USD), got {code!r}")
    if not code.isupper():
        raise _fail("bad_currency", f"a currency code is written in capitals (EUR, USD), got {code!r}")
    return code


def check_amount(amount: object) -> int:
    """``amount`` if it is an int of minor units in 1..:data:`MAX_AMOUNT`, else ``bad_amount``."""
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise _fail("bad_amount", f"an amount is an integer number of minor units, got {type(amount).__name__}")
    if not 1 <= amount <= MAX_AMOUNT:
        raise _fail("bad_amount", f"an amount is 1..{MAX_AMOUNT} minor units, got {amount}")
    return amount


def check_poid(poid: object) -> bytes:
    if not isinstance(poid, bytes) or not POID_MIN_BYTES <= len(poid) <= POID_MAX_BYTES:
        raise _fail("bad_poid", f"a PaymentOrderID is {POID_MIN_BYTES}..{POID_MAX_BYTES} bytes, got {poid!r:.80}")
    return poid


def _check_nonce(value: object, name: str) -> None:
    if not isinstance(value, bytes) or len(value) != NONCE_BYTES:
        raise _fail("bad_nonce", f"{name} is a {NONCE_BYTES}-byte nonce")


def _check_counter(value: object, name: str) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_COUNTER:
        raise _fail("bad_counter", f"{name} is a counter 0..{MAX_COUNTER}, got {value!r}")


def _check_flag(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise _fail("bad_flag", f"{name} is true or false, got {value!r}")


def _check_uid(value: object) -> None:
    if not isinstance(value, Uid):
        raise _fail("bad_uid", f"uid is a Uid, got {type(value).__name__}")


def _check_key(key: object) -> bytes:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise _fail("bad_key", f"a purse key is {KEY_BYTES} bytes")
    return key


def diversify(master_key: bytes, card_uid: Uid) -> bytes:
    """The purse key of ``card_uid``: HKDF-SHA256 of the SAM's master key, 32 bytes.

    The salt names the protocol, the info names the use and carries the card's 16-byte Uid, so every card
    gets its own key and knowing one card's key tells nothing of another's or of the master key.
    """
    _check_key(master_key)
    _check_uid(card_uid)
    return profile.hkdf(master_key, salt=_SALT, info=_INFO + bytes(card_uid), length=KEY_BYTES)


# --- the nine messages -----------------------------------------------------------------------------------------
_UID = Field(0, "uid", UidType())
_N = Field(1, "n", UInt(MAX_COUNTER))
_M = Field(1, "m", UInt(MAX_COUNTER))
_RC = Field(2, "rc", Bytes(NONCE_BYTES, NONCE_BYTES))
_RS = Field(3, "rs", Bytes(NONCE_BYTES, NONCE_BYTES))
_POID = Field(4, "poid", Bytes(POID_MAX_BYTES, POID_MIN_BYTES))
_CURRENCY = Field(5, "currency", Text(CURRENCY_BYTES))
_AMOUNT = Field(6, "amount", UInt(MAX_AMOUNT))
_MAC = Field(7, "mac", Bytes(MAC_BYTES, MAC_BYTES))
_DECLINED = Field(3, "declined", Bool())  # SE: the card declined the debit's S2 (it never applies it)


class Authenticated:
    """What the nine messages share: a wire schema (the body's fields and ``mac``), a MAC label, the checks.

    ``make(key, **fields)`` builds a MACed message; ``decode`` checks form only (:class:`DecodeError` for
    bad CBOR or a wrong field, :class:`ProtocolError` for a bad value); ``check(key)`` checks the MAC.
    """

    __slots__ = ()
    NAME: ClassVar[str]
    BODY: ClassVar[Schema]
    WIRE: ClassVar[Schema]
    mac: bytes

    def body(self) -> dict[str, Any]:
        """Every field but the MAC."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "mac"}  # type: ignore[arg-type]

    def mac_input(self) -> bytes:
        """What the MAC covers: ``cardnet/speed/purse/v1/<NAME>\\0`` and the deterministic CBOR of the body."""
        return _LABEL + self.NAME.encode() + b"\x00" + self.BODY.encode(self.body())

    def encode(self) -> bytes:
        return self.WIRE.encode({**self.body(), "mac": self.mac})

    @classmethod
    def decode(cls, raw: bytes) -> Self:
        """Only :class:`~cardnet.wire.DecodeError` (form) or :class:`ProtocolError` (values) escapes."""
        make: Callable[..., Self] = cls
        return make(**cls.WIRE.decode(raw))

    @classmethod
    def make(cls, key: bytes, **values: Any) -> Self:
        """The message with ``values``, MACed under ``key``."""
        _check_key(key)
        build: Callable[..., Self] = cls
        unsigned = build(**values, mac=bytes(MAC_BYTES))
        return replace(unsigned, mac=profile.hmac_sha256(key, unsigned.mac_input()))  # type: ignore[type-var]

    def check(self, key: bytes) -> None:
        """None if the MAC is right under ``key``, else ``ProtocolError("bad_mac")``."""
        try:
            profile.hmac_verify(_check_key(key), self.mac_input(), self.mac)
        except CryptoError:
            raise _fail("bad_mac", f"the {self.NAME} MAC is wrong: not made with this card's purse key") from None

    def __post_init__(self) -> None:
        """Every field's value checked, in the order of the fields (the first bad one is reported)."""
        for f in fields(self):  # type: ignore[arg-type]  # (each message is a dataclass)
            name = f.name
            if name == "mac":
                if not isinstance(self.mac, bytes) or len(self.mac) != MAC_BYTES:
                    raise _fail("bad_mac", f"a {self.NAME} MAC is {MAC_BYTES} bytes")
            else:
                _FIELD_CHECKS[name](getattr(self, name), name)


# how each message field's value is checked (the field's name is passed for the error message)
_FIELD_CHECKS: dict[str, Callable[[object, str], object]] = {
    "uid": lambda v, _: _check_uid(v),
    "n": _check_counter,
    "m": _check_counter,
    "rc": _check_nonce,
    "rs": _check_nonce,
    "declined": _check_flag,
    "poid": lambda v, _: check_poid(v),
    "currency": lambda v, _: check_currency(v),
    "amount": lambda v, _: check_amount(v),
}


def _schemas(name: str, *body: Field) -> tuple[Schema, Schema]:
    return Schema(f"speed.{name}.body", list(body)), Schema(f"speed.{name}", [*body, _MAC])


@dataclass(frozen=True, kw_only=True, slots=True)
class S1(Authenticated):
    """Card -> SAM: the card commits to paying ``amount`` of ``currency`` for order ``poid``."""

    NAME: ClassVar[str] = "S1"
    BODY, WIRE = _schemas("s1", _UID, _N, _RC, _POID, _CURRENCY, _AMOUNT)
    uid: Uid
    n: int
    rc: bytes
    poid: bytes
    currency: str
    amount: int
    mac: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class S2(Authenticated):
    """SAM -> card: the SAM is genuine (it knows the card's key) and authorises this debit."""

    NAME: ClassVar[str] = "S2"
    BODY, WIRE = _schemas("s2", _N, _RC, _RS, _POID, _CURRENCY, _AMOUNT)
    poid: bytes
    n: int
    rc: bytes
    rs: bytes
    currency: str
    amount: int
    mac: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class S3(Authenticated):
    """Card -> SAM: the proof of debit (made in the step that debits; kept to present again)."""

    NAME: ClassVar[str] = "S3"
    BODY, WIRE = _schemas("s3", _UID, _N, _RS, _POID, _CURRENCY, _AMOUNT)
    uid: Uid
    poid: bytes
    n: int
    rs: bytes
    currency: str
    amount: int
    mac: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class L1(Authenticated):
    """Card -> SAM: the card asks to be credited ``amount`` of ``currency`` (load number ``m``)."""

    NAME: ClassVar[str] = "L1"
    BODY, WIRE = _schemas("l1", _UID, _M, _RC, _CURRENCY, _AMOUNT)
    uid: Uid
    m: int
    rc: bytes
    currency: str
    amount: int
    mac: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class L2(Authenticated):
    """SAM -> card: the SAM authorises the credit (the broker has taken the money)."""

    NAME: ClassVar[str] = "L2"
    BODY, WIRE = _schemas("l2", _M, _RC, _RS, _CURRENCY, _AMOUNT)
    m: int
    rc: bytes
    rs: bytes
    currency: str
    amount: int
    mac: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class L3(Authenticated):
    """Card -> SAM: the proof of credit (made in the step that credits; kept to present again)."""

    NAME: ClassVar[str] = "L3"
    BODY, WIRE = _schemas("l3", _UID, _M, _RS, _CURRENCY, _AMOUNT)
    uid: Uid
    m: int
    rs: bytes
    currency: str
    amount: int
    mac: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class LR(Authenticated):
    """SAM -> card: load ``m`` of card ``uid`` (the L1 with nonce ``rc``) was refused and is never authorised."""

    NAME: ClassVar[str] = "LR"
    BODY, WIRE = _schemas("lr", _UID, _M, _RC)
    uid: Uid
    m: int
    rc: bytes
    mac: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class SR(Authenticated):
    """SAM -> card: debit ``n`` of card ``uid`` for order ``poid`` (the S1 with nonce ``rc``) was refused and is
    never authorised."""

    NAME: ClassVar[str] = "SR"
    BODY, WIRE = _schemas("sr", _UID, _N, _RC, _POID)
    uid: Uid
    n: int
    rc: bytes
    poid: bytes
    mac: bytes


@dataclass(frozen=True, kw_only=True, slots=True)
class SE(Authenticated):
    """Card -> SAM: the card's owner asks to end debit ``n`` for order ``poid`` (the S1 with nonce ``rc``).
    ``declined``: the card declined the S2 of that debit (it never applies it)."""

    NAME: ClassVar[str] = "SE"
    BODY, WIRE = _schemas("se", _UID, _N, _RC, _DECLINED, _POID)
    uid: Uid
    n: int
    rc: bytes
    declined: bool
    poid: bytes
    mac: bytes


MESSAGES: tuple[type[Authenticated], ...] = (S1, S2, S3, L1, L2, L3, LR, SR, SE)


# --- the purse's state -----------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class Account:
    """One currency of a purse: what it holds and, cumulated, what was loaded and debited.

    ``balance == loaded - debited`` always.
    """

    balance: int = 0
    loaded: int = 0
    debited: int = 0


@dataclass(frozen=True, kw_only=True, slots=True)
class PendingDebit:
    """A debit begun (S1 sent) and not yet done, keyed by its poid in :attr:`PurseState.debits`."""

    n: int
    rc: bytes
    currency: str
    amount: int
    declined: bool = False  # the card declined its S2 (it never applies it): the debit ends on the SAM's SR


@dataclass(frozen=True, kw_only=True, slots=True)
class PendingLoad:
    """A load begun (L1 sent) and not yet done, keyed by its ``m`` in :attr:`PurseState.loads`."""

    rc: bytes
    currency: str
    amount: int


@dataclass(frozen=True, kw_only=True, slots=True)
class PurseState:
    """Everything a purse holds but its key. A value: functions return a new one and change nothing inside."""

    n: int = 0  # the next debit counter
    m: int = 0  # the next load counter
    accounts: Mapping[str, Account] = field(default_factory=dict)
    debits: Mapping[bytes, PendingDebit] = field(default_factory=dict)  # poid -> pending debit
    loads: Mapping[int, PendingLoad] = field(default_factory=dict)  # m -> pending load
    proofs: Mapping[bytes, S3] = field(default_factory=dict)  # poid -> kept proof of debit (newest MAX_KEPT)
    load_proofs: Mapping[int, L3] = field(default_factory=dict)  # m -> kept proof of credit (newest MAX_KEPT)

    def balance(self, currency: str) -> int:
        acc = self.accounts.get(currency)
        return 0 if acc is None else acc.balance


def _nonce(value: bytes, name: str) -> bytes:
    _check_nonce(value, name)
    return value


def begin_debit(
    state: PurseState, *, key: bytes, uid: Uid, poid: bytes, currency: str, amount: int, rc: bytes
) -> tuple[PurseState, S1]:
    """Start paying ``amount`` of ``currency`` for order ``poid``: the new state (a pending debit) and S1.

    Beginning again the debit of a pending poid (same currency and amount) gives the same S1 back (``rc`` is
    then ignored). Refused: a poid already paid (``already_paid``, while its proof is kept), the same poid
    with another currency or amount (``conflict``), a balance short of ``amount`` (``insufficient``: checked
    again when S2 comes), a spent counter (``exhausted``), a 17th pending debit (``debits_pending``: the SAM may
    have authorised each, and the purchase it pays can be finished only while it is pending, so none is forgotten;
    the host finishes them first, each ends debited on its S2 or forgotten on the SAM's SR).
    """
    _check_key(key)
    _check_uid(uid)
    check_poid(poid)
    check_currency(currency)
    check_amount(amount)
    _nonce(rc, "rc")
    if poid in state.proofs:
        raise _fail("already_paid", f"order {poid.hex()} is paid already (its proof of debit is kept)")
    pending = state.debits.get(poid)
    if pending is not None:
        if pending.declined:
            raise _fail("debit_refused", f"the debit of order {poid.hex()} was declined: it is never paid")
        if (pending.currency, pending.amount) != (currency, amount):
            raise _fail(
                "conflict",
                f"order {poid.hex()} is being paid with {pending.amount} {pending.currency}, not {amount} {currency}",
            )
        s1 = S1.make(key, uid=uid, n=pending.n, rc=pending.rc, poid=poid, currency=currency, amount=amount)
        return state, s1
    if state.balance(currency) < amount:
        raise _fail(
            "insufficient", f"the purse holds {state.balance(currency)} minor units of {currency}, {amount} are needed"
        )
    if state.n > MAX_COUNTER:
        raise _fail("exhausted", "the purse's debit counter is spent: the purse must be reissued")
    if len(state.debits) >= MAX_PENDING:
        raise _fail(
            "debits_pending",
            f"{len(state.debits)} debits of this purse are under way (at most {MAX_PENDING}): finish them first "
            "(recover the purchases they pay), each is debited on its S2 or ended by the SAM's refusal (SR)",
        )
    debits = dict(state.debits)
    debits[poid] = PendingDebit(n=state.n, rc=rc, currency=currency, amount=amount)
    s1 = S1.make(key, uid=uid, n=state.n, rc=rc, poid=poid, currency=currency, amount=amount)
    return replace(state, n=state.n + 1, debits=debits), s1


def apply_s2(state: PurseState, *, key: bytes, uid: Uid, s2: S2) -> tuple[PurseState, S3]:
    """Debit on the SAM's S2: the new state (balance down, pending gone, proof kept) and the proof S3.

    An S2 for an order already debited gives the kept S3 again and debits nothing. Refused, with nothing
    changed: a wrong MAC (``bad_mac``), no pending debit for that poid (``no_pending``), an S2 that differs
    from the debit begun in n, rc, currency or amount (``mismatch``), a debit the card declined
    (``debit_refused``), a balance short of the amount (``insufficient``; the debit stays pending: load and
    present the S2 again, or decline it, :func:`decline_s2`).
    """
    _check_uid(uid)
    s2.check(key)
    kept = state.proofs.get(s2.poid)
    if kept is not None:
        if (kept.n, kept.rs, kept.currency, kept.amount) != (s2.n, s2.rs, s2.currency, s2.amount):
            raise _fail("conflict", f"order {s2.poid.hex()} was debited under another S2")
        return state, kept
    pending = _pending_for(state, s2)
    if pending.declined:
        raise _fail("debit_refused", f"the card declined the S2 of order {s2.poid.hex()}: it is never debited")
    acc = state.accounts.get(s2.currency, Account())
    if acc.balance < s2.amount:
        raise _fail(
            "insufficient", f"the purse holds {acc.balance} minor units of {s2.currency}, {s2.amount} are needed"
        )
    if acc.debited + s2.amount > MAX_TOTAL:  # pragma: no cover - 2**11 maximal debits of one currency
        raise _fail("overflow", f"the purse's cumulated {s2.currency} debits would overflow")
    s3 = S3.make(key, uid=uid, poid=s2.poid, n=s2.n, rs=s2.rs, currency=s2.currency, amount=s2.amount)
    accounts = {
        **state.accounts,
        s2.currency: replace(acc, balance=acc.balance - s2.amount, debited=acc.debited + s2.amount),
    }
    debits = {p: d for p, d in state.debits.items() if p != s2.poid}
    proofs = {**state.proofs, s2.poid: s3}
    if len(proofs) > MAX_KEPT:
        del proofs[min(proofs, key=lambda p: proofs[p].n)]
    return replace(state, accounts=accounts, debits=debits, proofs=proofs), s3


def _pending_for(state: PurseState, s2: S2) -> PendingDebit:
    """The pending debit the (authentic) ``s2`` authorises: ``no_pending`` or ``mismatch`` if there is none."""
    pending = state.debits.get(s2.poid)
    if pending is None:
        raise _fail("no_pending", f"no debit for order {s2.poid.hex()} is pending on this purse")
    if (pending.n, pending.rc, pending.currency, pending.amount) != (s2.n, s2.rc, s2.currency, s2.amount):
        raise _fail("mismatch", f"the S2 for order {s2.poid.hex()} is not for the debit this purse began")
    return pending


def decline_s2(state: PurseState, *, key: bytes, uid: Uid, s2: S2) -> tuple[PurseState, SE]:
    """Decline the SAM's S2 (the owner will not pay it: the purse holds too little, or the purchase is over): the
    new state (the pending debit marked declined: :func:`apply_s2` refuses that S2 from now on, so its S3 never
    exists) and the SE that asks the SAM to drop its authorisation. The debit stays pending, holding its place,
    until the SAM's SR comes (:func:`apply_sr`). Declining again gives the same SE. Refused, with nothing changed:
    ``bad_mac``, ``no_pending``, ``mismatch`` (as :func:`apply_s2`), an order debited (``conflict``)."""
    _check_uid(uid)
    s2.check(key)
    if s2.poid in state.proofs:
        raise _fail("conflict", f"order {s2.poid.hex()} was debited: its S2 cannot be declined")
    pending = _pending_for(state, s2)
    marked = replace(pending, declined=True)
    new = state if marked == pending else replace(state, debits={**state.debits, s2.poid: marked})
    return new, _se(key, uid, s2.poid, marked)


def end_debit(state: PurseState, *, key: bytes, uid: Uid, poid: bytes) -> SE:
    """The SE that asks the SAM to end the pending debit of ``poid`` (its owner's order: nothing but the card makes
    one). The SAM ends it if it never authorised it, or if the card declined its S2 (the SE then says so); the
    card forgets it only on the SAM's SR. Nothing changes on the card. Refused: ``no_pending``."""
    _check_uid(uid)
    pending = state.debits.get(check_poid(poid))
    if pending is None:
        raise _fail("no_pending", f"no debit for order {poid.hex()} is pending on this purse")
    return _se(key, uid, poid, pending)


def _se(key: bytes, uid: Uid, poid: bytes, pending: PendingDebit) -> SE:
    return SE.make(key, uid=uid, n=pending.n, rc=pending.rc, declined=pending.declined, poid=poid)


def pending_s1s(state: PurseState, *, key: bytes, uid: Uid) -> list[S1]:
    """The S1 of every debit begun and not yet debited, oldest first: what a host sends the broker again to end
    them (the same bytes as the first time: S1's MAC is a function of its fields)."""
    return [
        S1.make(key, uid=uid, n=d.n, rc=d.rc, poid=poid, currency=d.currency, amount=d.amount)
        for poid, d in sorted(state.debits.items(), key=lambda item: item[1].n)
    ]


def apply_sr(state: PurseState, *, key: bytes, uid: Uid, sr: SR) -> tuple[PurseState, bool]:
    """Forget the pending debit ``sr`` names, on the SAM's word that it is never authorised: the new state and
    whether it was pending (False: forgotten before, the same SR again changes nothing).

    Refused, with nothing changed: a wrong MAC (``bad_mac``: a host cannot make one, so it cannot have the card
    forget a debit the SAM authorised), another card's uid, another S1's counter or nonce (``mismatch``), an order
    debited (``conflict``: the SAM authorised it) or a debit never begun (``no_pending``).
    """
    _check_uid(uid)
    sr.check(key)
    if sr.uid != uid:
        raise _fail("mismatch", f"the SR is for card {sr.uid}, not this one")
    pending = state.debits.get(sr.poid)
    if pending is None:
        kept = state.proofs.get(sr.poid)
        if kept is not None and kept.n == sr.n:
            raise _fail("conflict", f"debit {sr.n} was made: the SAM authorised it")
        if sr.n >= state.n:
            raise _fail("no_pending", f"this purse began no debit {sr.n}")
        return state, False
    if (pending.n, pending.rc) != (sr.n, sr.rc):
        raise _fail("mismatch", f"the SR for debit {sr.n} is not for the debit this purse has under way")
    return replace(state, debits={p: d for p, d in state.debits.items() if p != sr.poid}), True


def begin_load(
    state: PurseState, *, key: bytes, uid: Uid, currency: str, amount: int, rc: bytes
) -> tuple[PurseState, L1]:
    """Ask to be credited ``amount`` of ``currency``: the new state (a pending load ``m``) and L1.

    Refused: a balance that the amount would push past :data:`MAX_BALANCE` (``overflow``), a currency beyond
    the purse's :data:`MAX_CURRENCIES` (``too_many_currencies``), a spent counter (``exhausted``), a 17th
    pending load (``loads_pending``: the broker may have taken the money for each, so none is forgotten; the
    host finishes them first, each ends credited on its L2 or forgotten on the SAM's LR).
    """
    _check_key(key)
    _check_uid(uid)
    check_currency(currency)
    check_amount(amount)
    _nonce(rc, "rc")
    _check_credit(state, currency, amount)
    if state.m > MAX_COUNTER:
        raise _fail("exhausted", "the purse's load counter is spent: the purse must be reissued")
    if len(state.loads) >= MAX_PENDING:
        raise _fail(
            "loads_pending",
            f"{len(state.loads)} loads of this purse are under way (at most {MAX_PENDING}): finish them first "
            "(send their L1s to the broker again), each is credited or ended by the broker's refusal",
        )
    loads = dict(state.loads)
    loads[state.m] = PendingLoad(rc=rc, currency=currency, amount=amount)
    l1 = L1.make(key, uid=uid, m=state.m, rc=rc, currency=currency, amount=amount)
    return replace(state, m=state.m + 1, loads=loads), l1


def pending_l1s(state: PurseState, *, key: bytes, uid: Uid) -> list[L1]:
    """The L1 of every load begun and not yet credited, oldest first: what a host sends the broker again after a
    crash (the broker answers the L2 it gave for it, or gives one now). The same bytes as the first time: L1's MAC
    is a function of its fields."""
    return [
        L1.make(key, uid=uid, m=m, rc=ld.rc, currency=ld.currency, amount=ld.amount)
        for m, ld in sorted(state.loads.items())
    ]


def _check_credit(state: PurseState, currency: str, amount: int) -> Account:
    acc = state.accounts.get(currency)
    if acc is None:
        if len(state.accounts) >= MAX_CURRENCIES:
            raise _fail("too_many_currencies", f"a purse holds at most {MAX_CURRENCIES} currencies")
        acc = Account()
    if acc.balance + amount > MAX_BALANCE or acc.loaded + amount > MAX_TOTAL:
        raise _fail("overflow", f"a purse holds at most {MAX_BALANCE} minor units of {currency}")
    return acc


def apply_l2(state: PurseState, *, key: bytes, uid: Uid, l2: L2) -> tuple[PurseState, L3]:
    """Credit on the SAM's L2: the new state (balance up, pending gone, proof kept) and the proof L3.

    An L2 for a load already credited gives the kept L3 again and credits nothing. Refused, with nothing
    changed: ``bad_mac``, ``no_pending``, ``mismatch`` (rc, currency or amount differ from the load begun),
    ``overflow`` and ``too_many_currencies`` (as in :func:`begin_load`).
    """
    _check_uid(uid)
    l2.check(key)
    kept = state.load_proofs.get(l2.m)
    if kept is not None:
        if (kept.rs, kept.currency, kept.amount) != (l2.rs, l2.currency, l2.amount):
            raise _fail("conflict", f"load {l2.m} was credited under another L2")
        return state, kept
    pending = state.loads.get(l2.m)
    if pending is None:
        raise _fail("no_pending", f"no load {l2.m} is pending on this purse")
    if (pending.rc, pending.currency, pending.amount) != (l2.rc, l2.currency, l2.amount):
        raise _fail("mismatch", f"the L2 for load {l2.m} is not for the load this purse began")
    acc = _check_credit(state, l2.currency, l2.amount)
    l3 = L3.make(key, uid=uid, m=l2.m, rs=l2.rs, currency=l2.currency, amount=l2.amount)
    accounts = {
        **state.accounts,
        l2.currency: replace(acc, balance=acc.balance + l2.amount, loaded=acc.loaded + l2.amount),
    }
    loads = {m: p for m, p in state.loads.items() if m != l2.m}
    proofs = {**state.load_proofs, l2.m: l3}
    if len(proofs) > MAX_KEPT:
        del proofs[min(proofs)]
    return replace(state, accounts=accounts, loads=loads, load_proofs=proofs), l3


def apply_lr(state: PurseState, *, key: bytes, uid: Uid, lr: LR) -> tuple[PurseState, bool]:
    """Forget the pending load ``lr`` names, on the SAM's word that it is never authorised: the new state and
    whether it was pending (False: forgotten before, the same LR again changes nothing).

    Refused, with nothing changed: a wrong MAC (``bad_mac``: a host cannot make one, so it cannot have the card
    forget a load the broker charged), another card's uid or another L1's nonce (``mismatch``), a load credited
    (``conflict``: the SAM authorised it) or never begun (``no_pending``).
    """
    _check_uid(uid)
    lr.check(key)
    if lr.uid != uid:
        raise _fail("mismatch", f"the LR is for card {lr.uid}, not this one")
    pending = state.loads.get(lr.m)
    if pending is None:
        if lr.m in state.load_proofs:
            raise _fail("conflict", f"load {lr.m} was credited: the SAM authorised it")
        if lr.m >= state.m:
            raise _fail("no_pending", f"this purse began no load {lr.m}")
        return state, False
    if pending.rc != lr.rc:
        raise _fail("mismatch", f"the LR for load {lr.m} is not for the load this purse began")
    return replace(state, loads={m: p for m, p in state.loads.items() if m != lr.m}), True


# --- the SAM's side -------------------------------------------------------------------------------------------


def _due(what: str, got: tuple[object, ...], due: tuple[object, ...]) -> None:
    if got != due:
        raise _fail("not_due", f"the {what} is for {got!r:.120}, but the broker says {due!r:.120} is due")


def sam_answer_s1(key: bytes, s1: S1, *, poid: bytes, currency: str, amount: int, rs: bytes) -> S2:
    """The SAM's S2 for ``s1`` (MACed under the card's ``key``), if S1 is genuine and for what is due.

    Refused: ``bad_mac``; ``not_due`` (S1 names another order, currency or amount than the broker's).
    """
    s1.check(key)
    _due("S1", (s1.poid, s1.currency, s1.amount), (poid, currency, amount))
    return S2.make(key, poid=poid, n=s1.n, rc=s1.rc, rs=_nonce(rs, "rs"), currency=currency, amount=amount)


def sam_check_s3(key: bytes, s3: S3, *, uid: Uid, s2: S2) -> None:
    """None if ``s3`` is the card ``uid``'s genuine proof of the debit ``s2`` authorised, else refused
    (``bad_mac``, ``mismatch``)."""
    s3.check(key)
    if (s3.uid, s3.poid, s3.n, s3.rs, s3.currency, s3.amount) != (uid, s2.poid, s2.n, s2.rs, s2.currency, s2.amount):
        raise _fail("mismatch", "the S3 is not the proof of the debit this SAM authorised")


def sam_answer_l1(key: bytes, l1: L1, *, currency: str, amount: int, rs: bytes) -> L2:
    """The SAM's L2 for ``l1``, if L1 is genuine and asks for what the broker was paid (``not_due`` else)."""
    l1.check(key)
    _due("L1", (l1.currency, l1.amount), (currency, amount))
    return L2.make(key, m=l1.m, rc=l1.rc, rs=_nonce(rs, "rs"), currency=currency, amount=amount)


def sam_check_l3(key: bytes, l3: L3, *, uid: Uid, l2: L2) -> None:
    """None if ``l3`` is the card ``uid``'s genuine proof of the credit ``l2`` authorised, else refused."""
    l3.check(key)
    if (l3.uid, l3.m, l3.rs, l3.currency, l3.amount) != (uid, l2.m, l2.rs, l2.currency, l2.amount):
        raise _fail("mismatch", "the L3 is not the proof of the load this SAM authorised")


def sam_refuse_l1(key: bytes, l1: L1) -> LR:
    """The SAM's LR for ``l1`` (``bad_mac`` if L1 is not the card's). The SAM makes it only for a load it never
    authorised and records it, so that it never authorises that load afterwards (the caller's part)."""
    l1.check(key)
    return LR.make(key, uid=l1.uid, m=l1.m, rc=l1.rc)


def sam_end_debit(key: bytes, se: SE) -> SR:
    """The SAM's SR for the card's ``se`` (``bad_mac`` if SE is not the card's: an S1 or any other message does
    not pass for one). The SAM makes it only for a debit it never authorised, or one whose S2 the card declined
    (``se.declined``), and records it, so that it never authorises (or logs) that debit
    afterwards (the caller's part)."""
    se.check(key)
    return SR.make(key, uid=se.uid, n=se.n, rc=se.rc, poid=se.poid)
