"""The SPEED broker's decisions: payment orders, the e-purse decrement through its SAM, loads, receipts, complaints.

The broker's other parts: its store's tables and records (:mod:`.broker_records`), its accounts and the operator's
operations on them (:mod:`.broker_accounts`), settlement and pruning (:mod:`.broker_settlement`, which
:class:`BrokerCore` takes in), and the server (:mod:`.broker_server`). This docstring is the theory of all of them.

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

import contextlib
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from cardnet.applets.speed import sam as sa
from cardnet.crypto import cms, pki, profile
from cardnet.crypto.errors import CryptoError, PkiError
from cardnet.host.errors import HostError
from cardnet.host.local import LocalCard
from cardnet.protocols.errors import ProtocolError
from cardnet.protocols.speed import catalogue as cat
from cardnet.protocols.speed import frames as fr
from cardnet.protocols.speed import messages as sm
from cardnet.protocols.speed import purse as pp
from cardnet.services.speed.broker_accounts import (
    _account,
    _balances,
    _credited,
    _put_txn,
    _vendor_account,
    index_vendors,
)
from cardnet.services.speed.broker_records import (
    _MAX_CURRENCIES,
    _ORDER,
    _SETTLED,
    AUTHORISED,
    CFG,
    HELD_CREDITS,
    LATE,
    LOADS,
    ORDERS,
    RECEIPTS,
    REFUSED_LOADS,
    REMOVED,
    SETTLED,
    BrokerError,
    _Refusal,
)
from cardnet.services.speed.broker_settlement import Settlement, _index_held
from cardnet.services.speed.stored import Identity, get
from cardnet.store import Store
from cardnet.wire import DecodeError, Message, Uid

MAX_RECEIPTS_PAGE = 256
RECEIPT_SCAN_PAGES = 16  # log pages one speed.vendor_receipts reads (other vendors' receipts skipped) before it answers
# speed.vendor_receipts requests of one vendor answered within a request's window (the broker remembers each until
# its time is past the window, so a copy sent again, by anyone who saw it on the wire, gets what the first got and
# nothing newer); the next is refused too_many
MAX_RECEIPT_ASKS = 256
MAX_AUTHORISED = 100_000  # purse payments held between S2 and S3; past that the oldest must send its order again


class BrokerCore(Settlement):
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
            if _vendor_account(txn, vid) is None:
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
            vendor_acct = _account(txn, secret["account"])
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
            vendor = _account(txn, rec["account"])
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
            acct = _account(txn, account)
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
                _credited(_account(txn, o["account"]), o["account"], sm.Price.of(o["price"]),
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
                    acct = _account(txn, account)
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
            customer = _account(txn, c["refund_to"])
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
                vendor = _account(txn, o["account"])
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


def _removed(account: str, when: bytes | None) -> _Refusal:
    at = datetime.fromtimestamp(int.from_bytes(when or bytes(8), "big"), UTC).strftime("%Y-%m-%d %H:%M UTC")
    return _Refusal("vendor_removed", f"this broker no longer pays that vendor's bills (its account {account!r} was "
                    f"removed on {at} by the broker's operator): nothing was paid; buy from the vendor again once "
                    "it is paid through a broker that takes it")  # fmt: skip


def _debit_of(uid: Uid, n: int, rc: bytes) -> bytes:
    """The purse debit an ``sb.auth`` record names after its time: the card, its counter and the S1's nonce."""
    return bytes(uid) + n.to_bytes(4, "big") + rc
