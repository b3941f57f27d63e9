"""The SPEED broker: payment orders, the e-purse decrement through its SAM, accounts, receipts, served over TCP.

Theory of operation
-------------------
:class:`BrokerCore` holds the broker's certified key, the accounts (vendors' and customers', per currency), the
register of payment orders and the receipts, in a :class:`~cardnet.store.Store`; its SAM is a card applet on
the broker's own card (:class:`~cardnet.host.local.LocalCard`): the purse master key never leaves it.

* ``speed.order_msg`` (the PaymentOrder, sealed to the broker): the broker opens it, checks the customer's
  signature and certificate (role device), the vendor's bill inside (signature, role service, VendorID = the
  vendor's key), opens ``{AccountNumber, K}_B`` and finds the vendor's account. The register decides what
  happens to a PaymentOrderID seen before: paid -> the same receipt again (to the customer who paid), or
  ``already_paid``; authorised with the same S1 -> the same S2 again. Purse mode: the SAM checks S1 and
  answers S2, the order is recorded ``authorised`` and the broker answers ``| POID, S2 |`` under
  BSignKey/BEncKey. Account mode: the customer's account (theirs: the owner is the card that signed) is
  debited and the vendor's credited in one transaction, and the receipt answered.
* ``speed.purse_msg`` (``| POID, S3 |``): the SAM checks the proof of debit and logs it; the broker marks the
  order paid, credits the vendor and answers the receipt ``| {POID, Price, K}_B^-1 |_RecKey`` (kept: the same
  bytes again for a retry or ``speed.resend``, paper 5.7).
* ``speed.issue_key``, ``speed.load`` / ``speed.load_step``: a purse's key from the SAM; loading value paid
  from the customer's account; a genuine L1 refused for its account is refused for good (``sb.lref``: never charged
  later, from any account), answered ``speed.load_refused`` with the SAM's LR, on which the purse forgets it.
* ``speed.end_debit {se}``: a debit the purse has under way that no purchase will finish (the broker refused its
  order for good, or the purchase was dropped), in the card's SE (only the card's owner has one made): the SAM
  refuses it for good unless it authorised it and the card did not decline that S2, and the answer
  ``speed.debit_refused`` carries the SAM's SR, on which the purse forgets it; refused ``authorised`` if the SAM
  gave its S2 (the purchase is finished by the customer's recovery, which debits once).
* ``speed.vendor_receipts {after, signed}``: the receipts in order of the vendor that signed the request (a
  ``speed.receipts_ask`` for this broker, made within five minutes of the broker's time); anyone else is refused.
* ``speed.order_states {poids}``: for each, ``paid`` (and its sealed receipt), ``authorised`` (paid whenever it comes,
  deadline or not) or ``none``: what a vendor asks before it releases what it held for an unpaid bill.

A crash between the SAM's step and the broker's transaction leaves the SAM ahead: the customer's retry (the
same S1 or S3: the card keeps them) gets the SAM's same answer and the broker catches up; :meth:`settle`
credits whatever the SAM logged that the register does not show paid.

:class:`BrokerServer` takes no request above :data:`RECV_LIMIT` (a broker's largest request; a complaint's is larger):
a larger one is refused unread (``speed.refused`` ``too_large``) and its connection closed.

Group commit (:class:`BrokerServer`, :mod:`cardnet.services.serving`) moves the broker's commit, not the SAM's.
The SAM is a card with its own store: each of its steps is durable when ``sam.ask`` returns. The broker's own
records (a paid order, the vendor's credit, a load's account debit) are savepoints of the transaction of the
group of requests being answered, durable at the end of that group, after the SAM's steps of every request of
the group. So the window above lasts a group instead of one request, and may hold several payments at once.
The argument holds for each PaymentOrderID as it did:

1. nothing of a group is sent before it commits, so a customer whose paid record (or load) was lost with its
   group holds no receipt (or L2) from it, and retries;
2. the retry (recovery sends the payment order again: the card gives the same order and S1) meets the SAM
   ahead, as after a crash: the same S1 gets the same S2 and the same S3 is not logged twice (the same L1 gets
   the same L2), or :meth:`settle` credited the vendor first (``sb.settled``) and :meth:`_paid` credits nothing;
3. settlement runs under the server's lock, never inside or beside a group, so it reads committed records
   only (a group not committed then is one that failed: its SAM-logged debits are settled once, as a crash's).

Pruning (:meth:`BrokerCore.prune`, once a day after settlement): a day that ended ``keep_days`` whole days ago is
settled once more, its SAM totals are recorded (``sb.day``), and only then does the SAM drop its log and the records
of what it logged (``sam.prune``), keeping per card a floor below which it refuses every counter it holds no record
of; the ``sb.auth`` records of payments settled from the SAM's log go too (finished: see
:meth:`BrokerCore.end_settled_authorisations`). The register (``sb.order``, ``sb.settled``) is never pruned: it
answers a paid or settled PaymentOrderID before the SAM is asked, so an order is paid once and a proof sent again gets
its receipt whatever the SAM still holds.

Memory follows the store, never leads it: a paid record is built on a copy of the authorised one and written in
the transaction, and the order leaves ``_authorised`` only once that transaction committed (inside
:meth:`BrokerCore.group`, once the group did). A failed commit (a store error, a group rolled back) leaves the
order authorised in memory and not paid in the store, as before the request: the same S3 sent again gets the
SAM's same answer and is paid then, once; a payment order sent again gets the same S2, and 2 applies. Requests
of one group see each other's records (a duplicate S3 or a ``speed.resend`` answered from a paid record not yet
committed): their answers leave with the group's commit, or none does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cardnet.applets.speed import sam as sa
from cardnet.crypto import cms, pki, profile
from cardnet.crypto.errors import CryptoError, PkiError
from cardnet.errors import CardnetError
from cardnet.host.errors import HostError
from cardnet.host.local import LocalCard
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.speed import catalogue as cat
from cardnet.protocols.speed import frames as fr
from cardnet.protocols.speed import messages as sm
from cardnet.protocols.speed import purse as pp
from cardnet.services.serving import MAX_GROUP, GroupCommitServer
from cardnet.services.speed.stored import Identity, get, save_identity, scan
from cardnet.store import Store
from cardnet.transport import DEFAULT_SERVER_LIMITS, RecvLimit, ServerLimits
from cardnet.wire import Bytes, DecodeError, Field, ListOf, Message, Nested, Schema, Text, Uid, UidType, UInt
from cardnet.wire.ids import UID_BYTES

log = logging.getLogger("cardnet.speed.broker")

CFG, VENDORS, ACCOUNTS, ORDERS, RECEIPTS, LOADS = "sb.cfg", "sb.vendor", "sb.acct", "sb.order", "sb.rcpt", "sb.load"
# VENDORS: a vendor's VendorID -> the number of its account (the least, if it has several): the index that answers
# "which account is this vendor's" without reading every account; complete once CFG holds VENDOR_INDEX
VENDOR_INDEX = b"vendor_index"
REMOVED = "sb.gone"  # vendor accounts whose vendor was removed (remove_vendor) -> when (8 bytes, Unix s)
REFUSED_LOADS = "sb.lref"  # (uid, m) of a genuine L1 refused for its account -> the reason: refused for good
SETTLED = "sb.settled"  # purse debits credited from the SAM's log (see BrokerCore.settle)
HELD_CREDITS = "sb.held"  # PaymentOrderIDs of the sb.settled records whose credit is held (their index, kept small)
AUTHORISED = "sb.auth"  # purse payments of bills with a deadline authorised, not paid -> when (8 bytes), the debit
LATE = "sb.late"  # payment orders of bills past their deadline this broker never took, refused for good -> when
DAYS = "sb.day"  # the SAM's totals of each day the broker settled and had the SAM prune (see BrokerCore.prune)
SETTLE_EVERY_S = 60.0
SETTLE_HINTS = {  # what the operator does when settlement (or pruning, which settles first) stops on a refusal
    "unknown_vendor": "is the broker's store the one of this SAM's broker? If that vendor's account was lost (a store "
    "restored from an older copy), open it again: cardnet speed broker add-vendor --store STORE --account ACCOUNT "
    "--vendor-cert VENDOR_PEM (the vendor's certificate); settlement then credits it",
}
KEEP_DAYS = 2  # whole days the SAM keeps after they end, beside today, before the broker prunes them
MAX_RECEIPTS_PAGE = 256
RECEIPT_SCAN_PAGES = 16  # log pages one speed.vendor_receipts reads (other vendors' receipts skipped) before it answers
# speed.vendor_receipts requests of one vendor answered within a request's window (the broker remembers each until
# its time is past the window, so a copy sent again, by anyone who saw it on the wire, gets what the first got and
# nothing newer); the next is refused too_many
MAX_RECEIPT_ASKS = 256
MAX_AUTHORISED = 100_000  # purse payments held between S2 and S3; past that the oldest must send its order again

_MAX_CURRENCIES = 16  # an account's balances: one per currency
_ACCOUNT = Schema(
    "sb.account",
    [
        Field(0, "owner", Bytes(32)),  # a vendor's VendorID, or a customer card's Uid (16 bytes)
        Field(1, "balances", ListOf(Nested(sm.PRICE), _MAX_CURRENCIES)),
    ],
)
_ORDER = Schema(
    "sb.order",
    [
        Field(0, "state", Text(16)),  # authorised | paid
        Field(1, "customer", UidType()),
        Field(2, "price", Nested(sm.PRICE)),
        Field(3, "account", Text(sm.MAX_ACCOUNT)),  # the vendor's
        Field(4, "k", Bytes(32, 32)),
        Field(5, "rec_key", Bytes(32, 32)),
        Field(6, "kind", Text(8)),
        Field(7, "s1", Bytes(pp.MAX_MESSAGE_BYTES), optional=True),
        Field(8, "answer", Bytes(1024), optional=True),  # the sealed | POID, S2 |
        Field(9, "benc", Bytes(32, 32), optional=True),
        Field(10, "bsign", Bytes(32, 32), optional=True),
        Field(11, "receipt", Bytes(sm.MAX_SIGNED + 64), optional=True),
        Field(12, "hp", Bytes(32, 32)),  # from the bill: what a complaint is checked against
        Field(13, "hc", Bytes(32, 32)),
        Field(14, "sizes", ListOf(UInt(sm.MAX_PRODUCT_BYTES), sm.MAX_PRODUCTS)),
        Field(15, "chunk", UInt(sm.MAX_PRODUCT_BYTES)),
        Field(16, "vendor_cert", Bytes(4096, 1)),
        Field(17, "verdict", Text(1024), optional=True),  # a complaint upheld (the refund was made)
        Field(18, "taken", UInt(), optional=True),  # when this broker took the order (Unix s): its certificates' time
    ],
)


_SETTLED = Schema(
    "sb.settled",
    [
        Field(0, "account", Text(sm.MAX_ACCOUNT)),
        Field(1, "currency", Text(3)),
        Field(2, "amount", UInt(pp.MAX_AMOUNT)),
        Field(3, "day", UInt()),
        Field(4, "held", Text(1024), optional=True),  # not credited yet: why (the vendor's account could not take it)
        Field(5, "taken", UInt(), optional=True),  # when the broker authorised it (from sb.auth, which then goes)
        Field(6, "refunded", UInt(1), optional=True),  # 1: its credit, held, went back to the customer (a complaint)
    ],
)


_SUM = Schema("sb.sum", [Field(0, "currency", Text(3)), Field(1, "amount", UInt())])
_DAY = Schema(
    "sb.day",
    [
        Field(0, "debits", ListOf(Nested(_SUM), 256)),  # the SAM's totals of the day, per currency
        Field(1, "loads", ListOf(Nested(_SUM), 256)),
        Field(2, "entries", UInt()),  # the log entries the SAM held for the day when it was settled
        Field(3, "settled", UInt()),  # debits credited then from the log (the register did not show them paid)
    ],
)


@dataclass(frozen=True, kw_only=True)
class PruneReport:
    """What :meth:`BrokerCore.prune` did: the days settled and recorded, what the SAM dropped."""

    before_day: int  # the SAM holds no log of a day before this one now
    days: list[int]  # the days settled, recorded in ``sb.day`` and pruned by this call
    settled: int  # purse debits credited from those days' logs (lost by the broker, see settle)
    entries: int  # log entries the SAM dropped, with their debit, order and load records
    open: int  # authorisations still open at the SAM (kept: their S3 or L3 may still come)
    freed_bytes: int  # how much less the SAM card holds
    authorisations_ended: int = 0  # sb.auth records of payments settled from the SAM's log (finished), dropped


class BrokerError(CardnetError):
    """The broker cannot be set up or run as asked."""


class _Refusal(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def init_broker(store: Store, key: profile.PrivateKey, cert_der: bytes, roots_der: list[bytes]) -> None:
    with store.transaction() as txn:
        if not save_identity(txn, CFG, key, cert_der, roots_der):
            raise BrokerError("exists", "this store already holds a broker")


def add_vendor(store: Store, account: str, vendor_cert: bytes) -> None:
    """Open ``account`` for the vendor of ``vendor_cert`` (its VendorID owns it)."""
    vid = sm.vendor_id(vendor_cert)
    with store.transaction() as txn:
        if not txn.insert(ACCOUNTS, account.encode(), _ACCOUNT.encode({"owner": vid, "balances": []})):
            raise BrokerError("exists", f"account {account!r} exists already")
        _index_vendor(txn, vid, account)


def _index_vendor(txn: Any, vid: bytes, account: str) -> None:
    """Name ``account`` in the vendor index (:data:`VENDORS`) for ``vid`` unless it names a lesser account of it that
    still exists (the answer a scan of every account in order gave: the least)."""
    was = txn.get(VENDORS, vid)
    if was is not None and was.decode() < account:
        raw = txn.get(ACCOUNTS, was)
        if raw is not None and _ACCOUNT.decode(raw)["owner"] == vid:
            return
    txn.put(VENDORS, vid, account.encode())


def index_vendors(store: Store) -> int:
    """Build the vendor index (:data:`VENDORS`) of a store made before it existed, once: one read of every account,
    then never again (:data:`VENDOR_INDEX` in the configuration says it is complete; :func:`add_vendor` keeps it so).
    The number of vendor accounts indexed (0 when it was complete already)."""
    with store.transaction() as txn:
        if txn.get(CFG, VENDOR_INDEX) is not None:
            return 0
        n = 0
        for k, v in txn.scan(ACCOUNTS):  # in account order: the least account of a vendor is named
            owner = _ACCOUNT.decode(v)["owner"]
            if len(owner) != UID_BYTES and txn.get(VENDORS, owner) is None:
                txn.put(VENDORS, owner, k)
                n += 1
        txn.put(CFG, VENDOR_INDEX, b"1")
        return n


def remove_vendor(store: Store, account: str, now: float) -> tuple[float, bool]:
    """Stop paying new bills of the vendor whose account is ``account``: from now on the broker refuses a payment
    order it has not taken for that account (``vendor_removed``, nothing paid). What it took before is finished (a
    purse payment it authorised, a debit its SAM logged: settled and credited, a held credit: credited), the account
    keeps its balance (paid out with :func:`payout`), its receipts are read and its complaints judged as before.
    Returns (when the vendor was removed, whether it was removed before). Refused: no such account
    (``unknown_account``), a customer's (``not_vendor``)."""
    with store.transaction() as txn:
        raw = txn.get(ACCOUNTS, account.encode())
        if raw is None:
            raise BrokerError("unknown_account", f"the broker holds no account {account!r}")
        if len(_ACCOUNT.decode(raw)["owner"]) == UID_BYTES:
            raise BrokerError("not_vendor", f"account {account!r} is a customer's: only a vendor's account is removed")
        was = txn.get(REMOVED, account.encode())
        if was is not None:
            return float(int.from_bytes(was, "big")), True
        txn.put(REMOVED, account.encode(), int(now).to_bytes(8, "big"))
        return float(int(now)), False


def removed_vendors(store: Store) -> dict[str, int]:
    """The vendor accounts whose vendor was removed (:func:`remove_vendor`) -> when (Unix s)."""
    return {k.decode(): int.from_bytes(v, "big") for k, v in scan(store, REMOVED)}


def add_customer(store: Store, account: str, card: Uid, deposit: sm.Price | None = None) -> None:
    """Open ``account`` for the customer card ``card`` (optionally with a first deposit)."""
    _put_account(store, account, bytes(card), {deposit.currency: deposit.amount} if deposit else {}, create=True)


def deposit(store: Store, account: str, amount: sm.Price) -> dict[str, int]:
    """Credit a customer's account (an operator's action: the customer paid outside cardnet). Returns its balances.
    Refused with nothing changed: no such account (``unknown_account``), a vendor's (``not_customer``), a balance
    that would pass :data:`~cardnet.protocols.speed.purse.MAX_AMOUNT` (``too_much``), a 17th currency
    (``too_many_currencies``)."""
    with store.transaction() as txn:
        raw = txn.get(ACCOUNTS, account.encode())
        if raw is None:
            raise BrokerError("unknown_account", f"the broker holds no account {account!r}")
        acct = dict(_ACCOUNT.decode(raw))
        if len(acct["owner"]) != UID_BYTES:  # a vendor account's owner is its VendorID (32 bytes)
            raise BrokerError("not_customer", f"account {account!r} is a vendor's: deposits go to customer accounts")
        bal = _balances(acct)
        if amount.currency not in bal and len(bal) >= _MAX_CURRENCIES:
            most = f"account {account!r} holds {_MAX_CURRENCIES} currencies already, the most it can"
            raise BrokerError("too_many_currencies", most)
        new = bal.get(amount.currency, 0) + amount.amount
        if new > pp.MAX_AMOUNT:
            raise BrokerError("too_much", f"account {account!r} would hold more than {pp.MAX_AMOUNT} minor units of "
                              f"{amount.currency}, the most an account holds")  # fmt: skip
        bal[amount.currency] = new
        _put_txn(txn, account, acct["owner"], bal)
        return bal


def payout(store: Store, account: str, amount: sm.Price) -> dict[str, int]:
    """Take ``amount`` out of a vendor's account (an operator's action: the broker paid the vendor outside cardnet).
    Returns its balances. Refused with nothing changed: no such account (``unknown_account``), a customer's
    (``not_vendor``), more than the account holds in that currency (``insufficient``). A currency paid out whole
    leaves the account (one of its 16 freed). Credits held for the vendor (:func:`held`) are not touched:
    settlement credits them once the account has room."""
    with store.transaction() as txn:
        raw = txn.get(ACCOUNTS, account.encode())
        if raw is None:
            raise BrokerError("unknown_account", f"the broker holds no account {account!r}")
        acct = dict(_ACCOUNT.decode(raw))
        if len(acct["owner"]) == UID_BYTES:  # a customer's account is owned by its card's Uid
            raise BrokerError("not_vendor", f"account {account!r} is a customer's: payouts are made from vendor "
                              "accounts")  # fmt: skip
        bal = _balances(acct)
        has = bal.get(amount.currency, 0)
        if has < amount.amount:
            raise BrokerError("insufficient", f"account {account!r} holds {sm.format_amount(has, amount.currency)}, "
                              f"less than {amount}: nothing was taken")  # fmt: skip
        bal[amount.currency] = has - amount.amount
        if not bal[amount.currency]:  # a currency paid out whole leaves the account: room for a 17th (held) one
            del bal[amount.currency]
        _put_txn(txn, account, acct["owner"], bal)
        return bal


def _put_account(store: Store, account: str, owner: bytes, balances: dict[str, int], *, create: bool) -> None:
    rec = _ACCOUNT.encode(
        {"owner": owner, "balances": [{"currency": c, "amount": a} for c, a in sorted(balances.items())]}
    )
    with store.transaction() as txn:
        if create and not txn.insert(ACCOUNTS, account.encode(), rec):
            raise BrokerError("exists", f"account {account!r} exists already")
        if not create:
            txn.put(ACCOUNTS, account.encode(), rec)


def _balances(rec: dict[str, Any]) -> dict[str, int]:
    return {b["currency"]: b["amount"] for b in rec["balances"]}


def _credited(acct: dict[str, Any], account: str, price: sm.Price, then: str) -> dict[str, int]:
    """The vendor's account record ``acct`` (number ``account``) with ``price`` credited: its balances. A balance that
    would pass :data:`~cardnet.protocols.speed.purse.MAX_AMOUNT` (as a customer's, see :func:`deposit`) or a 17th
    currency is refused (``vendor_account_full``, with ``then``: what became of the payment)."""
    bal = _balances(acct)
    new = bal.get(price.currency, 0) + price.amount
    if new > pp.MAX_AMOUNT or (price.currency not in bal and len(bal) >= _MAX_CURRENCIES):
        raise _Refusal("vendor_account_full", f"the vendor's account {account!r} at this broker cannot take {price} "
                       f"more (an account holds at most {pp.MAX_AMOUNT} minor units of a currency, and "
                       f"{_MAX_CURRENCIES} currencies): {then}; try again once the vendor's operator has paid the "
                       "account out (cardnet speed broker payout)")  # fmt: skip
    bal[price.currency] = new
    return bal


class BrokerCore:
    """The broker's decisions (see the module). Not thread-safe: one request at a time."""

    def __init__(
        self, store: Store, sam: LocalCard, *, clock: Callable[[], float], rng: Callable[[int], bytes] = os.urandom
    ) -> None:
        self.store = store
        self.sam = sam
        self.clock = clock
        self.rng = rng
        me = Identity.load(
            store, CFG, BrokerError("not_initialised", "this store holds no broker: run `cardnet speed broker init`")
        )
        self.key, self.cert, self.roots = me.key, me.cert, me.roots
        _index_held(store)
        index_vendors(store)
        sam.ask(sa.INIT, sa.READY)
        self._authorised: dict[bytes, dict[str, Any]] = {}  # purse payments between S2 and S3, oldest first
        # speed.vendor_receipts requests answered: digest of the signed request -> (its time, the vendor's id, the
        # log position its answer reached)
        self._receipt_asks: dict[bytes, tuple[int, bytes, int | None]] = {}
        self._after_commit: list[Callable[[], object]] | None = None  # inside group(): what waits for its commit

    @contextlib.contextmanager
    def group(self) -> Iterator[None]:
        """The store's group commit (:meth:`~cardnet.store.Store.group`) for the requests handled in the block, whose
        changes to this broker's memory are made only once the group has committed: a group that fails leaves
        memory as the store, as it was before the group."""
        if self._after_commit is not None:
            raise BrokerError("nested", "a group of this broker is open already: groups do not nest")
        after: list[Callable[[], object]] = []
        self._after_commit = after
        try:
            with self.store.group():
                yield
        finally:
            self._after_commit = None
        for fn in after:
            fn()

    def _on_commit(self, fn: Callable[[], object]) -> None:
        """``fn()`` once what was written so far is durable: now outside a group, at the group's commit inside."""
        if self._after_commit is None:
            fn()
        else:
            self._after_commit.append(fn)

    def handle(self, msg: Message) -> Message:
        try:
            return self._handle(msg)
        except _Refusal as r:
            return fr.refused(msg, r.reason, r.detail)
        except HostError as exc:  # the SAM refused
            return fr.refused(msg, exc.reason, f"the SAM refused: {exc}")
        except (ProtocolError, DecodeError, CryptoError, PkiError) as exc:
            return fr.refused(msg, getattr(exc, "reason", "refused"), str(exc))

    def _handle(self, msg: Message) -> Message:
        code = msg.mtype
        if code == fr.ORDER.code:
            return self._order(msg, fr.ORDER.parse(msg)["sealed"])
        if code == fr.PURSE.code:
            p = fr.PURSE.parse(msg)
            return self._s3(msg, p["poid"], p["sealed"])
        if code == fr.RESEND.code:
            poid = fr.RESEND.parse(msg)["poid"]
            o = self._get_order(poid)
            if o is None or o["state"] != "paid":
                raise _Refusal("not_paid", "no paid order has that PaymentOrderID: pay it first")
            return fr.reply(msg, fr.RECEIPT, poid=poid, sealed=o["receipt"])
        if code == fr.COMPLAINT.code:
            return self._complaint(msg, fr.COMPLAINT.parse(msg))
        if code == fr.ISSUE_KEY.code:
            cert = fr.ISSUE_KEY.parse(msg)["card_cert"]
            return fr.reply(msg, fr.KEY, sealed=self.sam.ask(sa.ISSUE_KEY, sa.KEY, card_cert=cert)["sealed"])
        if code == fr.LOAD.code:
            p = fr.LOAD.parse(msg)
            return self._load(msg, p["l1"], p["account"])
        if code == fr.END_DEBIT.code:
            return self._end_debit(msg, fr.END_DEBIT.parse(msg)["se"])
        if code == fr.LOAD_STEP.code:
            got = self.sam.ask(sa.LOAD_FINISH, sa.LOADED, l3=fr.LOAD_STEP.parse(msg)["l"])
            return fr.reply(msg, fr.LOADED, ok=True, balance=got["amount"])
        if code == fr.RECEIPT_FOR_VENDOR.code:
            return self._vendor_receipts(msg, fr.RECEIPT_FOR_VENDOR.parse(msg))
        if code == fr.ORDER_STATES.code:
            return fr.reply(msg, fr.STATES, items=[self._state(p) for p in fr.ORDER_STATES.parse(msg)["poids"]])
        raise _Refusal("bad_request", f"a SPEED broker does not take mtype 0x{code:04x}")

    def _remember_ask(self, digest: bytes, at: int, vid: bytes, now: float) -> None:
        """Remember a receipts request about to be answered until it is too old to be taken (a copy is answered what
        the first was: :meth:`_vendor_receipts`); a vendor that sent :data:`MAX_RECEIPT_ASKS` within the window is
        refused ``too_many``."""
        asks = self._receipt_asks
        window = sm.RECEIPTS_ASK_WINDOW_S
        for k in [k for k, (t, _, _) in asks.items() if t + window < now]:
            del asks[k]
        if sum(1 for _, v, _ in asks.values() if v == vid) >= MAX_RECEIPT_ASKS:
            raise _Refusal("too_many", f"this vendor sent {MAX_RECEIPT_ASKS} receipts requests within {window} s: "
                           f"ask again in a few minutes (a page holds {MAX_RECEIPTS_PAGE} receipts)")  # fmt: skip
        asks[digest] = (at, vid, None)

    def _vendor_receipts(self, msg: Message, p: dict[str, Any]) -> Message:
        """``speed.vendor_receipts``: the receipts of the vendor that signed the request (its ``speed.receipts_ask``,
        made for this broker within :data:`~cardnet.protocols.speed.messages.RECEIPTS_ASK_WINDOW_S` of now), after
        log position ``after``, and the position to ask from next. Only that vendor's: the receipts of the others
        (how many purchases they made, and when) are none of its business, nor of anyone else who connects.

        The same signed request again (a copy anyone on the wire could send, or the vendor's own: its signatures
        are deterministic) gets what the first got, the receipts up to the position that answer reached: nothing
        new, and no signature or account check again."""
        now = self.clock()
        window = sm.RECEIPTS_ASK_WINDOW_S
        digest = profile.sha256(p["signed"])
        seen = self._receipt_asks.get(digest)
        if seen is not None and abs(seen[0] - now) <= window and seen[2] is not None:
            return self._receipts_of(msg, seen[1], p["after"], seen[2])
        signed = sm.signed(p["signed"], "receipts request")
        ask = sm.decode(sm.RECEIPTS_ASK, signed.content, "receipts request")
        pki.verified(signed.signer_cert_der, self.roots, now=now, role=pki.Role.SERVICE)
        if ask["broker"] != sm.vendor_id(self.cert):
            raise _Refusal("not_for_me", "that receipts request was signed for another broker: sign one for this one")
        if abs(ask["at"] - now) > window:
            raise _Refusal("stale_request", f"that receipts request was signed at {ask['at']} (Unix s), more than "
                           f"{window} s from this broker's time {int(now)}: sign a new one (check the vendor's "
                           "clock)")  # fmt: skip
        if ask["after"] != p["after"]:
            raise _Refusal("bad_request", "the receipts request's signed position is not the one it asks from")
        vid = sm.vendor_id(signed.signer_cert_der)
        with self.store.transaction() as txn:
            if self._vendor_account(txn, vid) is None:
                raise _Refusal("unknown_vendor", "the key that signed that receipts request owns no vendor account "
                               "at this broker: only a vendor reads its own receipts")  # fmt: skip
        self._remember_ask(digest, ask["at"], vid, now)
        reply = self._receipts_of(msg, vid, p["after"], None)
        self._receipt_asks[digest] = (ask["at"], vid, fr.RECEIPTS.parse(reply)["last"])
        return reply

    def _receipts_of(self, msg: Message, vid: bytes, after: int, upto: int | None) -> Message:
        """The answer listing vendor ``vid``'s receipts after log position ``after`` (up to ``upto``, if given)."""
        items: list[bytes] = []
        last = after
        with self.store.transaction() as txn:
            for _ in range(RECEIPT_SCAN_PAGES):  # the others' receipts are skipped, a bounded number of them a call
                rows = txn.read_log(RECEIPTS, last, MAX_RECEIPTS_PAGE)
                for pos, raw in rows:
                    if upto is not None and pos > upto:
                        return fr.reply(msg, fr.RECEIPTS, items=items, last=last)
                    last = pos
                    if fr.RECEIPT.schema.decode(raw)["poid"][: sm.VENDOR_ID_BYTES] == vid:
                        items.append(raw)
                        if len(items) == MAX_RECEIPTS_PAGE:
                            return fr.reply(msg, fr.RECEIPTS, items=items, last=last)
                if len(rows) < MAX_RECEIPTS_PAGE:
                    break
        return fr.reply(msg, fr.RECEIPTS, items=items, last=last)

    def _get_order(self, poid: bytes) -> dict[str, Any] | None:
        """A paid order (durable), or one authorised since this broker started (in memory: the SAM holds what
        must survive a crash, and the customer's retry of the same order rebuilds it)."""
        raw = get(self.store, ORDERS, poid)
        if raw is not None:
            return dict(_ORDER.decode(raw))
        return self._authorised.get(poid)

    def _state(self, poid: bytes) -> dict[str, Any]:
        """What became of payment order ``poid`` (``speed.order_states``, for a vendor about to release what it held
        for an unpaid bill): ``paid`` with the sealed receipt (it opens only under the sale's RecKey, as in
        ``speed.vendor_receipts``); ``authorised``: this broker gave its S2 (``sb.auth``, or in memory) or settled the
        purse's debit, and pays it whenever the customer comes back, deadline or not; ``none``: neither."""
        o = self._get_order(poid)
        if o is not None and o["state"] == "paid":
            return {"poid": poid, "state": "paid", "sealed": o["receipt"]}
        if o is not None or get(self.store, AUTHORISED, poid) is not None or get(self.store, SETTLED, poid) is not None:
            return {"poid": poid, "state": "authorised"}
        return {"poid": poid, "state": "none"}

    def _account(self, txn: Any, account: str) -> dict[str, Any]:
        raw = txn.get(ACCOUNTS, account.encode())
        if raw is None:
            raise _Refusal("unknown_account", f"the broker holds no account {account!r}")
        return dict(_ACCOUNT.decode(raw))

    def _order(self, msg: Message, sealed: bytes) -> Message:
        now = self.clock()
        raw = sm.open_with(lambda s, i: profile.hpke_open(self.key, s, i), sealed, sm.INFO_ORDER, "PaymentOrder")
        po_signed = sm.signed(raw, "PaymentOrder")
        po = sm.decode(sm.PAYMENT_ORDER, po_signed.content, "PaymentOrder")
        bill_signed = sm.signed(po["bill"], "bill")
        bill = sm.decode(sm.BILL, bill_signed.content, "bill")
        at = self._taken_at(bill, now)
        vid, _ = sm.split_poid(bill["poid"])
        if vid != sm.vendor_id(bill_signed.signer_cert_der):
            raise _Refusal("wrong_vendor", "the bill's VendorID is not the key that signed it")
        if self._late(bill, now):
            self._refuse_late(bill, now, po_signed.signer_cert_der, bill_signed.signer_cert_der)
        customer = pki.verified(po_signed.signer_cert_der, self.roots, now=at, role=pki.Role.DEVICE).uid
        pki.verified(bill_signed.signer_cert_der, self.roots, now=at, role=pki.Role.SERVICE)
        secret = sm.decode(
            sm.BILL_SECRET,
            sm.open_with(lambda s, i: profile.hpke_open(self.key, s, i), bill["secret"], sm.INFO_BILL_SECRET, "bill"),
            "the bill's account and key",
        )
        with self.store.transaction() as txn:
            vendor_acct = self._account(txn, secret["account"])
        if vendor_acct["owner"] != vid:
            raise _Refusal("unknown_vendor", "the bill's account is not that vendor's: refused (no payment made)")
        poid, price, mode = bill["poid"], sm.Price.of(bill["price"]), po["mode"]
        old = self._get_order(poid)
        known_only, gone = False, None  # the vendor was removed: only a purse payment the SAM authorised is finished
        if old is None and get(self.store, SETTLED, poid) is None:
            gone = get(self.store, REMOVED, secret["account"].encode())
            if gone is not None and get(self.store, AUTHORISED, poid) is None:  # removed: said so, full or not
                if mode["kind"] != "purse":
                    raise _removed(secret["account"], gone)
                known_only = True  # (no new debit: an authorised one's room is checked at its S3, its debit kept)
            else:  # one the vendor's account cannot take: refused before anything is authorised
                _credited(vendor_acct, secret["account"], price, "nothing was paid")
        if old is not None:
            if old["state"] == "paid":
                if old["customer"] != customer:
                    raise _Refusal("already_paid", "that PaymentOrderID is paid already (paper 5.3)")
                return fr.reply(msg, fr.RECEIPT, poid=poid, sealed=old["receipt"])
            if mode.get("s1") != old.get("s1"):
                raise _Refusal("already_paid", "that PaymentOrderID is being paid with another S1")
            return fr.reply(msg, fr.PURSE, poid=poid, sealed=old["answer"])
        rec: dict[str, Any] = {
            "state": "authorised", "customer": customer, "price": price.fields(), "account": secret["account"],
            "k": secret["k"], "rec_key": bill["rec_key"], "kind": mode["kind"], "hp": bill["hp"], "hc": bill["hc"],
            "sizes": bill["sizes"], "chunk": bill["chunk"], "vendor_cert": bill_signed.signer_cert_der,
            "taken": int(at),
        }  # fmt: skip
        if mode["kind"] == "purse" and get(self.store, SETTLED, poid) is not None:
            # settled from the SAM's log (the broker lost this payment between the SAM's log and its own record):
            # the purse was debited and the vendor credited; the customer who comes back gets the receipt
            with self.store.transaction() as txn:
                sealed = self._paid(txn, poid, rec)
            return fr.reply(msg, fr.RECEIPT, poid=poid, sealed=sealed)
        if mode["kind"] == "account":
            sm.check_pay_by(bill, now)
            return self._pay_from_account(msg, poid, rec, mode.get("account"), customer, price)
        if mode["kind"] != "purse" or not {"benc", "bsign", "s1"} <= mode.keys():
            raise _Refusal("bad_mode", "a payment is by purse (BEncKey, BSignKey, S1) or by account")
        s1 = pp.S1.decode(mode["s1"])
        if s1.uid != customer:
            raise _Refusal("not_your_purse", "the S1 is from another card than the one that signed the order")
        self._before_deadline(bill, now, poid)
        try:
            s2 = self.sam.ask(sa.DEBIT_START, sa.S2_IS, s1=mode["s1"], poid=poid, currency=price.currency,
                              amount=price.amount, **({"known": True} if known_only else {}))["s2"]  # fmt: skip
        except HostError as exc:  # (a payment this broker authorised before it restarted is finished: the same S2)
            if known_only and exc.reason == "not_authorised":
                raise _removed(secret["account"], gone) from None
            raise
        answer = sm.sym_seal(mode["benc"], sm.NONCE_B_PURSE, 0, sm.PURSE_STEP.encode({"poid": poid, "s": s2}),
                             sign_key=mode["bsign"])  # fmt: skip
        rec.update(s1=mode["s1"], answer=answer, benc=mode["benc"], bsign=mode["bsign"])
        if "pay_by" in bill:  # (durable before the S2 leaves: a group's answers leave after its commit)
            with self.store.transaction() as txn:
                txn.put(AUTHORISED, poid, int(now).to_bytes(8, "big") + _debit_of(s1.uid, s1.n, s1.rc))
        self._authorised[poid] = rec
        while len(self._authorised) > MAX_AUTHORISED:
            self._authorised.pop(next(iter(self._authorised)))
        return fr.reply(msg, fr.PURSE, poid=poid, sealed=answer)

    def _taken_at(self, bill: dict[str, Any], now: float) -> float:
        """When the certificates of a payment order for ``bill`` must have been valid: now for an order new to this
        broker; for one it took already (paid, authorised, or settled from the SAM's log), the time it took it
        (``taken``, or the time ``sb.auth`` recorded), else the bill's deadline if earlier than now (nothing is taken
        after it). The certificates were checked then: a customer who was debited gets the receipt after the
        vendor's or the card's certificate expired (docs/speed.md, "Crashes")."""
        poid = bill["poid"]
        old = self._get_order(poid)
        if old is not None and "taken" in old:
            return min(now, float(old["taken"]))
        auth = get(self.store, AUTHORISED, poid)
        if auth is not None:
            return min(now, float(int.from_bytes(auth[:8], "big")))
        settled = get(self.store, SETTLED, poid)
        if settled is not None and "taken" in (was := _SETTLED.decode(settled)):  # its sb.auth's time, moved there
            return min(now, float(was["taken"]))
        if (old is not None or settled is not None) and "pay_by" in bill:
            return min(now, float(bill["pay_by"]))
        return now

    def _late(self, bill: dict[str, Any], now: float) -> bool:
        """Whether ``bill`` is past its deadline and this broker never took a payment order for it (none paid,
        authorised, or settled from the SAM's log), or refused one so before (``sb.late``): it never takes one."""
        poid = bill["poid"]
        if "pay_by" not in bill:  # (a bill without a deadline is never refused so: one store read less an order)
            return False
        if get(self.store, LATE, poid) is not None:
            return True
        if now <= bill["pay_by"]:
            return False
        return self._get_order(poid) is None and all(get(self.store, t, poid) is None for t in (AUTHORISED, SETTLED))

    def _refuse_late(self, bill: dict[str, Any], now: float, customer_cert: bytes, vendor_cert: bytes) -> None:
        """Refuse for good (``bill_expired``) a payment order of a bill :meth:`_late`: nothing of it was ever taken,
        so nothing was paid, and the customer may end the purse's debit (its SE: the SAM never authorised it). The
        signatures are checked (the bill's by the VendorID's key): the refusal is recorded (``sb.late``: never taken
        later, whatever the clock says) when the certificates were also valid at the deadline (a stranger's bills
        make no record). The certificates' time is not checked now: one that expired since changes nothing."""
        poid = bill["poid"]
        if get(self.store, LATE, poid) is None:
            try:
                for cert, role in ((customer_cert, pki.Role.DEVICE), (vendor_cert, pki.Role.SERVICE)):
                    pki.verified(cert, self.roots, now=float(bill["pay_by"]), role=role)
            except PkiError:
                pass
            else:
                with self.store.transaction() as txn:
                    txn.put(LATE, poid, int(now).to_bytes(8, "big"))
        try:
            sm.check_pay_by(bill, now)
        except ProtocolError as expired:
            words = "this broker never took a payment order for it and never will (end the purse's debit)"
            raise _Refusal(expired.reason, f"{expired}; {words}") from None
        raise _Refusal("bill_expired", "this broker refused a payment order of that bill past its deadline before, "
                       "and never takes one: nothing was paid")  # fmt: skip

    def _before_deadline(self, bill: dict[str, Any], now: float, poid: bytes) -> None:
        """Refuse (``bill_expired``) a purse payment of a bill past its deadline, unless this broker authorised it
        before the deadline (``sb.auth``, durable before its S2 left: the purse may have debited on that S2, and its
        payment is finished whenever it comes, as any other). So nothing is paid for a bill after its deadline but
        what was under way at it, and the vendor may sell its goods again (docs/decisions.md)."""
        if "pay_by" in bill and get(self.store, AUTHORISED, poid) is None:
            try:
                sm.check_pay_by(bill, now)
            except ProtocolError as expired:
                raise _Refusal(expired.reason, str(expired)) from None

    def _receipt(self, poid: bytes, rec: dict[str, Any]) -> bytes:
        content = sm.RECEIPT.encode({"poid": poid, "price": rec["price"], "k": rec["k"]})
        signed = cms.sign(content, self.cert, lambda d: profile.sign(self.key, d))
        return sm.sym_seal(rec["rec_key"], sm.NONCE_RECEIPT, 0, signed)

    def _paid(self, txn: Any, poid: bytes, rec: dict[str, Any]) -> bytes:
        """Record ``rec`` paid, credit the vendor (unless settlement did, from the SAM's log), keep the receipt (in
        ``txn``); the sealed receipt. ``rec`` itself is left as it was (it may be the authorised record in memory,
        which must not say paid unless ``txn`` commits)."""
        price = sm.Price.of(rec["price"])
        if txn.get(SETTLED, poid) is None:
            vendor = self._account(txn, rec["account"])
            bal = _credited(vendor, rec["account"], price, "nothing was paid")
            _put_txn(txn, rec["account"], vendor["owner"], bal)
        receipt = self._receipt(poid, rec)
        txn.put(ORDERS, poid, _ORDER.encode({**rec, "state": "paid", "receipt": receipt}))
        txn.delete(AUTHORISED, poid)
        txn.append(RECEIPTS, fr.RECEIPT.schema.encode({"poid": poid, "sealed": receipt}))
        return receipt

    def _pay_from_account(self, msg: Message, poid: bytes, rec: dict[str, Any], account: str | None,
                          customer: Uid, price: sm.Price) -> Message:  # fmt: skip
        if account is None:
            raise _Refusal("bad_mode", "account payment names the customer's account")
        with self.store.transaction() as txn:
            acct = self._account(txn, account)
            if acct["owner"] != bytes(customer):
                raise _Refusal("not_your_account", f"account {account!r} is not this customer's")
            bal = _balances(acct)
            if bal.get(price.currency, 0) < price.amount:
                raise _Refusal("insufficient", f"account {account!r} holds less than {price}")
            bal[price.currency] -= price.amount
            _put_txn(txn, account, acct["owner"], bal)
            sealed = self._paid(txn, poid, rec)
        return fr.reply(msg, fr.RECEIPT, poid=poid, sealed=sealed)

    def _s3(self, msg: Message, poid: bytes, sealed: bytes) -> Message:
        o = self._get_order(poid)
        if o is None or o["kind"] != "purse":
            raise _Refusal("no_order", "no purse payment is authorised under that PaymentOrderID: send the payment "
                           "order again (the broker may have restarted)")  # fmt: skip
        if o["state"] == "paid":
            return fr.reply(msg, fr.RECEIPT, poid=poid, sealed=o["receipt"])
        step = sm.decode(sm.PURSE_STEP, sm.sym_open(o["benc"], sm.NONCE_C_PURSE, 0, sealed, sign_key=o["bsign"],
                                                    what="S3 message"), "S3 message")  # fmt: skip
        if step["poid"] != poid:
            raise _Refusal("wrong_order", "the S3 message is for another PaymentOrderID")
        if get(self.store, SETTLED, poid) is None:  # settled: the SAM logged it (and may have pruned it since)
            with self.store.transaction() as txn:  # the vendor's account takes it, or the SAM logs nothing
                _credited(self._account(txn, o["account"]), o["account"], sm.Price.of(o["price"]),
                          "your purse's debit is kept: finish this purchase later (cardnet speed recover)")  # fmt: skip
            self.sam.ask(sa.DEBIT_FINISH, sa.DEBITED, s3=step["s"])  # the SAM checks it and logs the debit
        with self.store.transaction() as txn:
            receipt = self._paid(txn, poid, o)
        self._on_commit(lambda: self._authorised.pop(poid, None))  # a failed commit leaves it authorised
        return fr.reply(msg, fr.RECEIPT, poid=poid, sealed=receipt)

    def _load(self, msg: Message, l1_raw: bytes, account: str) -> Message:
        """Take ``l1``'s amount from ``account`` and answer the SAM's L2, or the L2 given for it before. A genuine L1
        refused for the account (none, another card's, too little in it) or one the SAM will never authorise (below
        its pruned counters) is refused for good (``sb.lref``): it is never charged, from any account, and the
        answer (``speed.load_refused``) carries the SAM's LR, on which the card forgets it."""
        l1 = pp.L1.decode(l1_raw)
        key = bytes(l1.uid) + l1.m.to_bytes(4, "big")
        with self.store.transaction() as txn:
            done = txn.get(LOADS, key)
            if done is not None:
                return fr.reply(msg, fr.LOAD_STEP, l=done)
            was = txn.get(REFUSED_LOADS, key)
            if was is not None:
                refusal = _Refusal("load_refused", f"load {l1.m} of this card was refused before ({was.decode()}): it "
                                   "is never charged, from any account")  # fmt: skip
            else:
                try:
                    acct = self._account(txn, account)
                    if acct["owner"] != bytes(l1.uid):
                        raise _Refusal("not_your_account", f"account {account!r} is not this card's")
                    bal = _balances(acct)
                    if bal.get(l1.currency, 0) < l1.amount:
                        raise _Refusal("insufficient", f"account {account!r} holds less than {l1.amount} {l1.currency}")
                    l2 = self.sam.ask(sa.LOAD_START, sa.L2_IS, l1=l1_raw, currency=l1.currency, amount=l1.amount)["l2"]
                except _Refusal as r:
                    refusal = r
                except HostError as exc:
                    if exc.reason not in ("pruned", "load_refused"):
                        raise
                    refusal = _Refusal(exc.reason, f"the SAM never authorises this load: {exc}")
                else:
                    bal[l1.currency] -= l1.amount
                    _put_txn(txn, account, acct["owner"], bal)
                    txn.put(LOADS, key, l2)
                    return fr.reply(msg, fr.LOAD_STEP, l=l2)
            try:  # bad_mac: a forged L1 leaves no record
                lr = self.sam.ask(sa.REFUSE_L1, sa.L1_REFUSED, l1=l1_raw)["lr"]
            except HostError as exc:
                if exc.reason != "authorised":
                    raise
                # the SAM gave an L2 in a step whose charge a crash lost: the load stays open (charged when paid)
                raise refusal from None
            if was is None:
                txn.put(REFUSED_LOADS, key, refusal.reason.encode())
        return fr.reply(msg, fr.LOAD_REFUSED, reason=refusal.reason, detail=refusal.detail[:1024], lr=lr)

    def _end_debit(self, msg: Message, se_raw: bytes) -> Message:
        """The SAM's SR for a debit it never authorised (recorded: it never authorises it afterwards), on which the
        purse forgets it; ``authorised`` if the SAM gave its S2. Nothing of the broker's changes: an order refused
        for good is never paid, and a payment order naming that S1 later is refused ``debit_refused`` by the SAM."""
        se = pp.SE.decode(se_raw)
        try:
            unsent = {"unsent": True} if not se.declined and self._s2_never_sent(se.poid) else {}
            sr = self.sam.ask(sa.END_DEBIT, sa.DEBIT_ENDED, se=se_raw, **unsent)["sr"]
        except HostError as exc:
            if exc.reason != "authorised":
                raise
            raise _Refusal("authorised", "the SAM authorised this debit (its S2 exists): it ends when the card debits "
                           "it; finish the purchase it pays (cardnet speed recover)") from None  # fmt: skip
        if se.declined:  # the card declined the S2 of this very debit: the SAM dropped it, so the order's authorisation
            with self.store.transaction() as txn:  # ended (the vendor may release its goods: ``speed.order_states``)
                held = txn.get(AUTHORISED, se.poid)
                if held is not None and held[8:] == _debit_of(se.uid, se.n, se.rc):
                    txn.delete(AUTHORISED, se.poid)
                    self._on_commit(lambda: self._authorised.pop(se.poid, None))
        return fr.reply(msg, fr.DEBIT_REFUSED, reason="ended", detail="the SAM never authorises this debit", sr=sr)

    def _s2_never_sent(self, poid: bytes) -> bool:
        """Whether any S2 the SAM made for ``poid`` surely never left this broker: it refused the order for good past
        its deadline (``sb.late``), and holds no authorisation of it (``sb.auth``, which is durable before the S2 of a
        bill with a deadline leaves, and goes only once the order is paid, settled or declined), no paid order and no
        settled debit. That is a SAM step whose group then failed to commit, and the broker restarted before the
        customer came back, after the deadline: the card never got the S2, and its debit ends (``unsent``)."""
        if poid in self._authorised:
            return False
        return get(self.store, LATE, poid) is not None and all(
            get(self.store, t, poid) is None for t in (AUTHORISED, ORDERS, SETTLED)
        )

    def _complaint(self, msg: Message, c: dict[str, Any]) -> Message:
        """Paper 5.7: the customer shows the product ids, the vendor's signed catalogue entries and what the
        product deciphered to. Upheld (the price goes back to the customer's account) when the evidence is the
        vendor's own and the content is not what its entry commits to. The refund comes from the sale's own credit
        when settlement holds it (``sb.held``: the vendor's account never got it, and never will), else from the
        vendor's account; one that holds less than the price now (paid out) refunds nothing yet and says so
        (``refund_unfunded``), as does a customer's account that cannot take it: nothing changes, the complaint may
        be sent again (docs/decisions.md, "A refund comes from the sale's held credit first")."""
        poid = c["poid"]
        o = self._get_order(poid)
        if o is None or o["state"] != "paid":
            raise _Refusal("not_paid", "no paid order has that PaymentOrderID")
        if "verdict" in o:
            return fr.reply(msg, fr.VERDICT, poid=poid, upheld=True, why=o["verdict"], refund=0)
        products, entries, contents = c["products"], c["entries"], c["contents"]
        if sm.products_hash(products) != o["hp"]:
            raise _Refusal("wrong_products", "those are not the products of that order (the bill's H(ProductIDs))")
        if len(entries) != len(products) or len(contents) != len(products):
            raise _Refusal("bad_complaint", "a complaint shows one catalogue entry and one content per product")
        h = sm.DeliveryHash()
        for i, content in enumerate(contents):
            for chunk in sm.encrypt_chunks(o["k"], i, content, o["chunk"]):
                h.update(chunk)
        if [len(x) for x in contents] != o["sizes"] or h.digest() != o["hc"]:
            raise _Refusal("not_delivered", "that is not what the vendor delivered (it does not match the bill)")
        vid, _ = sm.split_poid(poid)
        wrong = []
        for name, entry, content in zip(products, entries, contents, strict=True):
            e = cat.read(entry, o["vendor_cert"])
            if e["product"] != name or e["vendor_id"] != vid:
                raise _Refusal("bad_complaint", f"the catalogue entry shown for {name!r} is not that vendor's entry")
            if e["content_hash"] != sm.content_hash(content):
                wrong.append(name)
        if not wrong:
            return fr.reply(msg, fr.VERDICT, poid=poid, upheld=False, why="every product is the content its entry "
                          "names", refund=0)  # fmt: skip
        price = sm.Price.of(o["price"])
        why = f"not the catalogued content: {', '.join(wrong)}"
        with self.store.transaction() as txn:
            customer = self._account(txn, c["refund_to"])
            if customer["owner"] != bytes(o["customer"]):
                raise _Refusal("not_your_account", "a refund goes to an account of the customer who paid")
            raw = txn.get(SETTLED, poid)
            settled = dict(_SETTLED.decode(raw)) if raw is not None else {}
            if "held" in settled:  # the vendor's account never got this sale's money: the refund is that money
                del settled["held"]
                settled["refunded"] = 1
                txn.put(SETTLED, poid, _SETTLED.encode(settled))
                txn.delete(HELD_CREDITS, poid)
            else:
                vendor = self._account(txn, o["account"])
                vbal = _balances(vendor)
                has = vbal.get(price.currency, 0)
                if has < price.amount:
                    raise _Refusal("refund_unfunded", f"the complaint is upheld ({why}), but the vendor's account "
                                   f"at this broker holds less than the {price} to refund now: nothing was refunded "
                                   "or changed; send the complaint "
                                   "again later (the vendor's sales are credited to that account), or take it up "
                                   "with the vendor")  # fmt: skip
                vbal[price.currency] = has - price.amount
                _put_txn(txn, o["account"], vendor["owner"], vbal)
            cbal = _balances(customer)
            if (cbal.get(price.currency, 0) + price.amount > pp.MAX_AMOUNT
                    or (price.currency not in cbal and len(cbal) >= _MAX_CURRENCIES)):  # fmt: skip
                raise _Refusal("refund_account_full", f"the complaint is upheld ({why}), but your account "
                               f"{c['refund_to']!r} cannot take {price} more (at most {pp.MAX_AMOUNT} minor units "
                               f"of a currency, and {_MAX_CURRENCIES} currencies): nothing was refunded or changed; "
                               "send the complaint again naming another of your accounts")  # fmt: skip
            cbal[price.currency] = cbal.get(price.currency, 0) + price.amount
            _put_txn(txn, c["refund_to"], customer["owner"], cbal)
            txn.put(ORDERS, poid, _ORDER.encode({**o, "verdict": why}))
        return fr.reply(msg, fr.VERDICT, poid=poid, upheld=True, why=why, refund=price.amount)

    # -- settlement ---------------------------------------------------------------------------------------------
    def settle(self, day: int) -> int:
        """Credit the vendor of every purse debit the SAM logged on ``day`` that the register does not show paid;
        the number settled. That happens when the broker stopped between the SAM's log and its own transaction
        and the customer has not come back: the purse was debited, so the vendor is paid (the SAM's log is the
        evidence); a customer who comes back with the payment order gets the receipt, and nothing is paid twice.
        """
        with _as_broker_error():
            self.credit_held()
            return self._settle_day(day)[0]

    def credit_held(self) -> int:
        """Credit each settled debit held for its vendor (its account could not take it when it was settled: see
        :meth:`_settle_day`) that the account can take now; the number credited. The others stay held, logged. Only
        the held ones are read (``sb.held``, their index), not every debit ever settled."""
        credited = 0
        for poid, _ in scan(self.store, HELD_CREDITS):
            with self.store.transaction() as txn:
                raw = txn.get(SETTLED, poid)
                rec = dict(_SETTLED.decode(raw)) if raw is not None else {}
                if "held" not in rec:  # (credited or refunded in the meantime)
                    txn.delete(HELD_CREDITS, poid)
                    continue
                price = sm.Price(rec["currency"], rec["amount"])
                vendor = self._account(txn, rec["account"])
                try:
                    bal = _credited(vendor, rec["account"], price, "still held")
                except _Refusal as r:
                    log.error("purse debit %s (%s) settled for account %r is still held: %s", poid.hex()[:16], price,
                              rec["account"], r.detail)  # fmt: skip
                    continue
                _put_txn(txn, rec["account"], vendor["owner"], bal)
                del rec["held"]
                txn.put(SETTLED, poid, _SETTLED.encode(rec))
                txn.delete(HELD_CREDITS, poid)
            log.warning("credited account %r the %s of purse debit %s held since its settlement", rec["account"],
                        price, poid.hex()[:16])  # fmt: skip
            credited += 1
        return credited

    def _settle_day(self, day: int) -> tuple[int, int]:
        """:meth:`settle` of ``day``: (debits settled, log entries read). A debit whose vendor's account cannot take
        it (past :data:`~cardnet.protocols.speed.purse.MAX_AMOUNT` of its currency, or a 17th currency) is settled
        all the same, its credit held (``sb.settled`` says why, :func:`held` lists it, the log says so): the purse
        paid, so the money is the vendor's and is neither wrapped nor dropped; :meth:`credit_held` credits it once
        the account has room (docs/decisions.md, "A settled debit the vendor's account cannot take is held")."""
        settled = entries = 0
        start: int | None = None
        while True:
            page = self.sam.ask(sa.LOG, sa.ENTRIES, day=day, **({} if start is None else {"start": start}))
            entries += len(page["entries"])
            for e in page["entries"]:
                if e["kind"] != "debit" or "poid" not in e:
                    continue
                poid = e["poid"]
                with self.store.transaction() as txn:
                    if txn.get(ORDERS, poid) is not None or txn.get(SETTLED, poid) is not None:
                        continue
                    vid, _ = sm.split_poid(poid)
                    account = self._vendor_account(txn, vid)
                    if account is None:
                        raise BrokerError("unknown_vendor", f"the SAM logged a purse debit of {e['amount']} minor "
                                          f"units of {e['currency']} on day {day} (payment order "
                                          f"{poid.hex()[:16]}...) for the vendor {vid.hex()[:16]}..., and this "
                                          "broker's store holds no account of that vendor: it cannot be settled, so "
                                          "settlement and pruning stop there (nothing of it was credited, nothing "
                                          "else changed)")  # fmt: skip
                    vendor = self._account(txn, account)
                    rec = {"account": account, "currency": e["currency"], "amount": e["amount"], "day": day}
                    try:
                        _put_txn(txn, account, vendor["owner"], _credited(vendor, account, sm.Price(e["currency"],
                                 e["amount"]), "held for the vendor"))  # fmt: skip
                    except _Refusal as r:  # the purse paid: the money is the vendor's, held until its account has room
                        rec["held"] = r.detail[:1024]
                        txn.put(HELD_CREDITS, poid, b"")
                        log.error("settled purse debit %s of day %d for account %r but held its credit: %s",
                                  poid.hex()[:16], day, account, r.detail)  # fmt: skip
                    _end_authorisation(txn, poid, rec)
                    txn.put(SETTLED, poid, _SETTLED.encode(rec))
                settled += 1
            start = page.get("next")
            if start is None:
                return settled, entries

    def prune(self, *, keep_days: int = KEEP_DAYS) -> PruneReport:
        """Settle every day the SAM holds that ended more than ``keep_days`` whole days ago, record each one's
        totals (``sb.day``), then have the SAM prune them (``sam.prune``): their log, totals and logged debit,
        order and load records go, each card's floor stays. The SAM's card gets its room back; a PaymentOrderID
        stays paid once by this broker's register (never pruned), which answers before the SAM is asked (see
        docs/speed.md, "Pruning the SAM"). Run it where :meth:`settle` runs: never beside a group."""
        if keep_days < 1:
            raise BrokerError("bad_keep", "the SAM keeps at least yesterday (keep_days >= 1): it is still settled")
        with _as_broker_error():
            return self._prune(keep_days)

    def _prune(self, keep_days: int) -> PruneReport:
        cut = int(self.clock() // sa.DAY_S) - keep_days
        held = self.sam.ask(sa.DAYS, sa.HELD)
        closed = held.get("pruned_before", 0)
        days = [d for d in held["days"] if d < cut]
        if len(held["days"]) == sa.MAX_DAYS and days == held["days"]:
            cut = days[-1] + 1  # more days than one answer lists: the rest at the next call
        settled = 0
        for day in days:
            if day < closed:  # recorded before a prune that stopped part way: its log is going
                continue
            n, entries = self._settle_day(day)
            settled += n
            got = self.sam.ask(sa.TOTALS, sa.SUMS, day=day)
            rec = _DAY.encode({"debits": got["debits"], "loads": got["loads"], "entries": entries, "settled": n})
            with self.store.transaction() as txn:
                txn.put(DAYS, day.to_bytes(4, "big"), rec)
        ended = self.end_settled_authorisations()
        self.sam.card.flush()  # acknowledged outputs count until deleted: compare the records alone
        before = self.sam.card.used_bytes
        entries = 0
        if days or cut > closed:
            while True:
                got = self.sam.ask(sa.PRUNE, sa.PRUNED, before_day=max(cut, closed))
                entries += got["entries"]
                if not got["more"]:
                    break
        self.sam.card.flush()
        after = self.sam.ask(sa.DAYS, sa.HELD)
        return PruneReport(before_day=max(cut, closed), days=days, settled=settled, entries=entries,
                           open=after["open"], freed_bytes=before - self.sam.card.used_bytes,
                           authorisations_ended=ended)  # fmt: skip

    def end_settled_authorisations(self) -> int:
        """Drop the ``sb.auth`` record of every payment that is finished but was not paid through the broker's
        register: its debit was settled from the SAM's log (``sb.settled``, whose ``taken`` keeps the record's time
        for the certificates of a customer who comes back) or, for a record older than that rule, is paid. The
        number dropped. Every other record stays, past the bill's deadline too: the SAM gave its S2, the purse may
        have debited on it, and its S3 is paid whenever it comes (docs/decisions.md, "Which sb.auth records go")."""
        ended = 0
        for poid, _ in scan(self.store, AUTHORISED):
            with self.store.transaction() as txn:
                raw = txn.get(SETTLED, poid)
                if raw is not None:
                    rec = dict(_SETTLED.decode(raw))
                    _end_authorisation(txn, poid, rec)
                    txn.put(SETTLED, poid, _SETTLED.encode(rec))
                elif (o := txn.get(ORDERS, poid)) is not None and _ORDER.decode(o)["state"] == "paid":
                    txn.delete(AUTHORISED, poid)
                else:
                    continue
            ended += 1
        return ended

    @staticmethod
    def _vendor_account(txn: Any, vid: bytes) -> str | None:
        """The number of the account the vendor ``vid`` owns (the least, if several), or None: two reads by key
        (the vendor index, :data:`VENDORS`, then the account it names), whatever the number of accounts."""
        account = txn.get(VENDORS, vid)
        if account is None:
            return None
        raw = txn.get(ACCOUNTS, account)
        if raw is None or _ACCOUNT.decode(raw)["owner"] != vid:  # (its account gone: a store restored, an operator)
            return None
        return str(account.decode())

    # -- what the operator reads -----------------------------------------------------------------------------
    def balances(self) -> dict[str, dict[str, int]]:
        return balances(self.store)

    def sam_totals(self, day: int) -> dict[str, int]:
        got = self.sam.ask(sa.TOTALS, sa.SUMS, day=day)
        return {s["currency"]: s["amount"] for s in got["debits"]}

    def settled_days(self) -> dict[int, dict[str, Any]]:
        """The days settled and pruned, by day: the SAM's totals then (debits, loads: currency -> amount), the
        log entries and the debits settled from them."""
        return settled_days(self.store)


def settled_days(store: Store) -> dict[int, dict[str, Any]]:
    """What :meth:`BrokerCore.settled_days` reads (also without a SAM, from the broker's store alone)."""
    out = {}
    for k, v in scan(store, DAYS):
        rec = _DAY.decode(v)
        out[int.from_bytes(k, "big")] = {
            "debits": {p["currency"]: p["amount"] for p in rec["debits"]},
            "loads": {p["currency"]: p["amount"] for p in rec["loads"]},
            "entries": rec["entries"],
            "settled": rec["settled"],
        }
    return out


def held(store: Store) -> list[dict[str, Any]]:
    """The purse debits settled from the SAM's log whose credit is held (the vendor's account could not take it then,
    see :meth:`BrokerCore._settle_day`): for each, its PaymentOrderID (hex), account, currency, amount (minor units),
    day and why. Settlement credits each once the account can take it (:meth:`BrokerCore.credit_held`)."""
    _index_held(store)
    out = []
    for poid, _ in scan(store, HELD_CREDITS):
        raw = get(store, SETTLED, poid)
        rec = _SETTLED.decode(raw) if raw is not None else {}
        if "held" in rec:
            out.append({"poid": poid.hex(), "account": rec["account"], "currency": rec["currency"],
                        "amount": rec["amount"], "day": rec["day"], "why": rec["held"]})  # fmt: skip
    return out


def _index_held(store: Store) -> None:
    """Once per store: index (``sb.held``) the held credits a broker recorded in ``sb.settled`` before that index
    existed, so that settlement reads the held ones alone from then on."""
    if get(store, CFG, b"held_index") is not None:
        return
    with store.transaction() as txn:
        for poid, raw in txn.scan(SETTLED):
            if "held" in _SETTLED.decode(raw):
                txn.put(HELD_CREDITS, poid, b"")
        txn.put(CFG, b"held_index", b"1")


def balances(store: Store) -> dict[str, dict[str, int]]:
    """Every account's balances, by account number."""
    return {k.decode(): _balances(dict(_ACCOUNT.decode(v))) for k, v in scan(store, ACCOUNTS)}


@contextlib.contextmanager
def _as_broker_error() -> Iterator[None]:
    """A refusal met by an operator's operation (settlement, pruning), not by a request: raised as a
    :class:`BrokerError` (what commands and the server catch), its reason and words kept."""
    try:
        yield
    except _Refusal as r:
        raise BrokerError(r.reason, r.detail) from None


def _removed(account: str, when: bytes | None) -> _Refusal:
    at = datetime.fromtimestamp(int.from_bytes(when or bytes(8), "big"), UTC).strftime("%Y-%m-%d %H:%M UTC")
    return _Refusal("vendor_removed", f"this broker no longer pays that vendor's bills (its account {account!r} was "
                    f"removed on {at} by the broker's operator): nothing was paid; buy from the vendor again once "
                    "it is paid through a broker that takes it")  # fmt: skip


def _debit_of(uid: Uid, n: int, rc: bytes) -> bytes:
    """The purse debit an ``sb.auth`` record names after its time: the card, its counter and the S1's nonce."""
    return bytes(uid) + n.to_bytes(4, "big") + rc


def _end_authorisation(txn: Any, poid: bytes, settled: dict[str, Any]) -> None:
    """The ``sb.auth`` record of ``poid``, settled from the SAM's log, dropped in ``txn``: its time goes to
    ``settled`` (``taken``: what :meth:`BrokerCore._taken_at` reads for a customer who comes back)."""
    auth = txn.get(AUTHORISED, poid)
    if auth is not None:
        settled.setdefault("taken", int.from_bytes(auth[:8], "big"))
        txn.delete(AUTHORISED, poid)


def _put_txn(txn: Any, account: str, owner: bytes, bal: dict[str, int]) -> None:
    txn.put(ACCOUNTS, account.encode(), _ACCOUNT.encode(
        {"owner": owner, "balances": [{"currency": c, "amount": a} for c, a in sorted(bal.items())]}))  # fmt: skip


RECV_LIMIT = RecvLimit(fr.BROKER_MAX_REQUEST, ((fr.COMPLAINT.code, fr.BROKER_MAX_COMPLAINT),))
"""A broker's receive limit: its largest request (``speed.order_msg``, 24,696 bytes), a complaint excepted (it carries
the deciphered products: 12,718,407 bytes); larger ones are refused unread. Its send limit stays the transport's."""


class BrokerServer(GroupCommitServer):
    """:class:`BrokerCore` over TCP with group commit (:mod:`cardnet.services.serving`: the requests waiting at once
    answered one after another in one transaction of the broker's store, nothing sent before it committed), and
    settlement (see :meth:`BrokerCore.settle`) when it starts and every :data:`SETTLE_EVERY_S` seconds, under
    :attr:`lock` (never beside a group), followed once a day by :meth:`BrokerCore.prune` (the SAM keeps
    ``keep_days`` whole days besides today; ``None``: never prune)."""

    def __init__(
        self,
        core: BrokerCore,
        *,
        server_limits: ServerLimits = DEFAULT_SERVER_LIMITS,
        max_group: int = MAX_GROUP,
        keep_days: int | None = KEEP_DAYS,
    ) -> None:
        if keep_days is not None and keep_days < 1:
            raise BrokerError("bad_keep", "the SAM keeps at least yesterday (keep_days >= 1): it is still settled")
        super().__init__(
            lambda msg: [core.handle(msg)],
            group=core.group,
            server_limits=server_limits,
            max_group=max_group,
            oversize=fr.too_large,
            recv_limit=RECV_LIMIT,
            too_large=fr.request_too_large,
            refused=fr.refused,
        )
        self.core = core
        self.keep_days = keep_days
        self._pruned_on: int | None = None  # the day this server last pruned the SAM (once a day is enough)
        self._settler: asyncio.Task[None] | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[str, int]:
        await self._settle()
        address = await super().start(host, port)
        self._settler = asyncio.get_running_loop().create_task(self._settling())
        return address

    async def aclose(self) -> None:
        if self._settler is not None:
            self._settler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._settler
        await super().aclose()

    async def _settle(self) -> None:
        """Settle yesterday and today; then, on a new day, settle and prune the days the SAM need not keep."""
        today = int(self.core.clock() // sa.DAY_S)
        async with self.lock:
            for day in (today - 1, today):
                try:
                    n = await asyncio.to_thread(self.core.settle, day)
                except CardnetError as exc:  # payments go on (this one waits); the next settlement tries again
                    log.error("could not settle day %d from the SAM's log: %s (%s)", day, exc,
                              SETTLE_HINTS.get(exc.reason, "see the error above"))  # fmt: skip
                    return
                if n:
                    log.warning("settled %d purse debit(s) of day %d from the SAM's log", n, day)
            if self.keep_days is None or self._pruned_on == today:
                return
            try:
                got = await asyncio.to_thread(self.core.prune, keep_days=self.keep_days)
            except CardnetError as exc:  # payments go on; the next day tries again
                log.error("could not prune the SAM's settled days: %s (%s)", exc,
                          SETTLE_HINTS.get(exc.reason, "the next day tries again"))  # fmt: skip
                return
            self._pruned_on = today
            if got.settled:
                log.warning("settled %d purse debit(s) of days %s from the SAM's log", got.settled, got.days)
            if got.entries:
                log.info("pruned %d log entries of days before %d from the SAM (%d bytes freed, %d open kept)",
                         got.entries, got.before_day, got.freed_bytes, got.open)  # fmt: skip
            if got.authorisations_ended:
                log.info("dropped %d sb.auth record(s) of payments settled from the SAM's log",
                         got.authorisations_ended)  # fmt: skip

    async def _settling(self) -> None:
        while True:
            await asyncio.sleep(SETTLE_EVERY_S)
            with contextlib.suppress(CardnetError):
                await self._settle()
