"""The SPEED broker's settlement: crediting what its SAM logged that the register does not show paid, holding
what a vendor's account cannot take, and pruning the days the SAM need not keep (see :mod:`.broker`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cardnet.applets.speed import sam as sa
from cardnet.host.local import LocalCard
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed.broker_accounts import _account, _credited, _put_txn, _vendor_account, balances
from cardnet.services.speed.broker_records import (
    _DAY,
    _ORDER,
    _SETTLED,
    AUTHORISED,
    CFG,
    DAYS,
    HELD_CREDITS,
    ORDERS,
    SETTLED,
    BrokerError,
    _as_broker_error,
    _Refusal,
)
from cardnet.services.speed.stored import get, scan
from cardnet.store import Store

log = logging.getLogger("cardnet.speed.broker")

SETTLE_EVERY_S = 60.0
SETTLE_HINTS = {  # what the operator does when settlement (or pruning, which settles first) stops on a refusal
    "unknown_vendor": "is the broker's store the one of this SAM's broker? If that vendor's account was lost (a store "
    "restored from an older copy), open it again: cardnet speed broker add-vendor --store STORE --account ACCOUNT "
    "--vendor-cert VENDOR_PEM (the vendor's certificate); settlement then credits it",
}
KEEP_DAYS = 2  # whole days the SAM keeps after they end, beside today, before the broker prunes them


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


class Settlement:
    """The broker's settlement and pruning, and what its operator reads: a part of
    :class:`~cardnet.services.speed.broker.BrokerCore`, over its store, SAM and clock."""

    store: Store
    sam: LocalCard
    clock: Callable[[], float]

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
                vendor = _account(txn, rec["account"])
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
                    account = _vendor_account(txn, vid)
                    if account is None:
                        raise BrokerError("unknown_vendor", f"the SAM logged a purse debit of {e['amount']} minor "
                                          f"units of {e['currency']} on day {day} (payment order "
                                          f"{poid.hex()[:16]}...) for the vendor {vid.hex()[:16]}..., and this "
                                          "broker's store holds no account of that vendor: it cannot be settled, so "
                                          "settlement and pruning stop there (nothing of it was credited, nothing "
                                          "else changed)")  # fmt: skip
                    vendor = _account(txn, account)
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


def _end_authorisation(txn: Any, poid: bytes, settled: dict[str, Any]) -> None:
    """The ``sb.auth`` record of ``poid``, settled from the SAM's log, dropped in ``txn``: its time goes to
    ``settled`` (``taken``: what :meth:`BrokerCore._taken_at` reads for a customer who comes back)."""
    auth = txn.get(AUTHORISED, poid)
    if auth is not None:
        settled.setdefault("taken", int.from_bytes(auth[:8], "big"))
        txn.delete(AUTHORISED, poid)
