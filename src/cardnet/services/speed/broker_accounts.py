"""The SPEED broker's accounts: setting up its store, opening, crediting, paying out and removing accounts, and
reading them (the operator's operations, and the reads every part of the broker shares)."""

from __future__ import annotations

from typing import Any

from cardnet.crypto import profile
from cardnet.protocols.speed import messages as sm
from cardnet.protocols.speed import purse as pp
from cardnet.services.speed.broker_records import (
    _ACCOUNT,
    _MAX_CURRENCIES,
    ACCOUNTS,
    CFG,
    REMOVED,
    VENDOR_INDEX,
    VENDORS,
    BrokerError,
    _Refusal,
)
from cardnet.services.speed.stored import save_identity, scan
from cardnet.store import Store
from cardnet.wire import Uid
from cardnet.wire.ids import UID_BYTES


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


def balances(store: Store) -> dict[str, dict[str, int]]:
    """Every account's balances, by account number."""
    return {k.decode(): _balances(dict(_ACCOUNT.decode(v))) for k, v in scan(store, ACCOUNTS)}


def _put_txn(txn: Any, account: str, owner: bytes, bal: dict[str, int]) -> None:
    txn.put(ACCOUNTS, account.encode(), _ACCOUNT.encode(
        {"owner": owner, "balances": [{"currency": c, "amount": a} for c, a in sorted(bal.items())]}))  # fmt: skip


def _account(txn: Any, account: str) -> dict[str, Any]:
    raw = txn.get(ACCOUNTS, account.encode())
    if raw is None:
        raise _Refusal("unknown_account", f"the broker holds no account {account!r}")
    return dict(_ACCOUNT.decode(raw))


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
