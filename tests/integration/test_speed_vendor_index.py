"""The SPEED broker finds a vendor's account through its vendor index, not by reading every account.

A broker holds one account per customer card besides its vendors'. Before, a vendor's receipts request
(``speed.vendor_receipts``) and the settlement of a purse debit the broker lost read every account to find the
vendor's: a broker with many customers paid a scan of all of them per request. Counted here in the statements the
broker's SQLite store runs (rows, not time): with 2 accounts and with 402 the same reads, each by key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from speedworld import EUR, T0, World, authorised_and_debited, clock, load_purse, opened, serve, service

from cardnet.applets.speed import sam as sa
from cardnet.crypto import pki
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed import broker as sb
from cardnet.services.speed import broker_accounts as sb_accounts
from cardnet.services.speed import broker_records as sb_records
from cardnet.services.speed import vendor as sv
from cardnet.services.speed.customer import Journal
from cardnet.wire import Uid

NEWS = "news-1 Today's paper"
T = TypeVar("T")


def _reads(statements: list[str]) -> list[str]:
    """The statements that read accounts or the vendor index."""
    return [s for s in statements if s.startswith("SELECT") and ("'sb.acct'" in s or "'sb.vendor'" in s)]


def _account_reads(w: World, fn: Callable[[], T]) -> tuple[T, list[str]]:
    """``fn()`` and the statements of the broker's store that read accounts or the vendor index."""
    statements: list[str] = []
    w.broker.store._c.set_trace_callback(statements.append)  # type: ignore[attr-defined]
    try:
        got = fn()
    finally:
        w.broker.store._c.set_trace_callback(None)  # type: ignore[attr-defined]
    return got, _reads(statements)


def _customers(w: World, n: int) -> None:
    for i in range(n):
        sb_accounts.add_customer(w.broker.store, f"C-extra-{i:04d}", Uid(i.to_bytes(12, "big"), 0), sm.Price(EUR, 100))


def test_a_vendors_account_is_found_by_key_whatever_the_number_of_accounts(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    with opened(tmp_path, ca) as w:

        async def go() -> None:
            vs, bs = await serve(w)
            host, port = w.broker_addr.rsplit(":", 1)
            try:
                await load_purse(w, 1000)
                bought = await w.customer.buy(w.vendor_addr, w.broker_addr, [NEWS], broker_cert=w.broker_cert,
                                              limit=sm.Price(EUR, 1000))  # fmt: skip
                got: dict[int, list[bytes]] = {}
                reads: dict[int, list[str]] = {}
                for n in (0, 400):  # 2 accounts (V-1, C-1), then 400 more customers'
                    _customers(w, n)
                    vendor = sv.VendorCore(w.vendor.store, clock=lambda n=n: T0 + n // 100)  # a new request, not a copy
                    statements: list[str] = []
                    w.broker.store._c.set_trace_callback(statements.append)  # type: ignore[attr-defined]
                    try:
                        items, _ = await sv.vendor_receipts(vendor, (host, int(port)))
                    finally:
                        w.broker.store._c.set_trace_callback(None)  # type: ignore[attr-defined]
                    got[n], reads[n] = [p for p, _ in items], _reads(statements)
                assert got[0] == got[400] == [bought.poid]
                assert all("AND k=" in s for s in reads[400]), reads[400]  # by key: no scan of the accounts
                assert len(reads[400]) == len(reads[0]) <= 2, reads  # the index, the account it names
            finally:
                await vs.aclose()
                await bs.aclose()

        asyncio.run(go())


def test_settlement_finds_the_vendors_account_by_key(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    with opened(tmp_path, ca) as w:
        w.customer.journal = Journal(tmp_path / "journal")

        async def lost() -> None:
            vs, bs = await serve(w)
            try:
                await load_purse(w, 1000)
                _, _, s3 = await authorised_and_debited(w, NEWS)
                w.broker.sam.ask(sa.DEBIT_FINISH, sa.DEBITED, s3=s3)  # ... and the broker stops here
            finally:
                await vs.aclose()
                await bs.aclose()

        asyncio.run(lost())
        _customers(w, 400)
        settled, reads = _account_reads(w, lambda: w.broker.settle(int(T0 // sa.DAY_S)))
        assert settled == 1 and sb_accounts.balances(w.broker.store)["V-1"] == {EUR: 80}
        assert reads and all("AND k=" in s for s in reads), reads  # each a read by key: no scan of 402 accounts
        assert len(reads) <= 3, reads  # the index, the account it names (twice: found, then credited)


def test_a_store_made_before_the_index_is_indexed_once_with_the_same_answers(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    """A broker's store from before the index: the broker indexes it when it starts (one read of every account,
    once), and names the account a scan named, the least of a vendor's; a vendor with no account has none."""
    with opened(tmp_path, ca) as w:
        sb_accounts.add_vendor(w.broker.store, "V-0", w.vendor.cert)  # a second account of the vendor, less than V-1
        _, cert2 = service(ca, "vendor-2")
        sb_accounts.add_vendor(w.broker.store, "W-1", cert2)
        vid, vid2 = w.vendor.vendor_id, sm.vendor_id(cert2)
        with w.broker.store.transaction() as txn:
            assert sb_accounts._vendor_account(txn, vid) == "V-0"
            for k, _ in txn.scan(sb_records.VENDORS):  # the store as a broker before the index left it
                txn.delete(sb_records.VENDORS, k)
            txn.delete(sb_records.CFG, sb_records.VENDOR_INDEX)
            assert sb_accounts._vendor_account(txn, vid) is None
        again = sb.BrokerCore(w.broker.store, w.broker.sam, clock=clock)
        assert sb_accounts.index_vendors(w.broker.store) == 0  # complete: never read again
        with again.store.transaction() as txn:
            assert sb_accounts._vendor_account(txn, vid) == "V-0"
            assert sb_accounts._vendor_account(txn, vid2) == "W-1"
            assert sb_accounts._vendor_account(txn, sm.vendor_id(service(ca, "nobody")[1])) is None
            txn.delete(sb_records.ACCOUNTS, b"V-0")  # its account gone (an operator's hand): the index names none
            assert sb_accounts._vendor_account(txn, vid) is None
        sb_accounts.add_vendor(
            w.broker.store, "V-2", w.vendor.cert
        )  # a later account of it is indexed (the lesser is gone)
        with again.store.transaction() as txn:
            assert sb_accounts._vendor_account(txn, vid) == "V-2"
        sb_accounts.add_vendor(w.broker.store, "V-3", w.vendor.cert)  # a greater one leaves the lesser named
        with again.store.transaction() as txn:
            assert sb_accounts._vendor_account(txn, vid) == "V-2"
