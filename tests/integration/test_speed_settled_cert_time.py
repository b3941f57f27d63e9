"""A customer whose purse debit the broker settled from the SAM's log comes back after the vendor's certificate
expired, and after the bill's deadline: the broker checks the payment order's certificates at the time it took it,
and the customer gets the receipt, the vendor credited once.

The broker's time for a settled order is ``sb.settled.taken`` (the time of its ``sb.auth`` record, moved there when
it settled) or, for a settlement recorded without it (by a broker before that field), the bill's deadline
(``BrokerCore._taken_at``'s fallback). Both are exercised on a real SQLite store, with the vendor's real certificate
issued to expire a day after the purchase and the broker's clock two days on."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from speedworld import EUR, T0, authorised_and_debited, load_purse, opened, serve

from cardnet.applets.speed import sam as sa
from cardnet.crypto import pki
from cardnet.crypto.errors import PkiError
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed import broker as sb
from cardnet.services.speed import broker_records as sb_records
from cardnet.services.speed import broker_server as sb_server
from cardnet.services.speed import stored as sb_stored
from cardnet.services.speed import vendor as sv
from cardnet.services.speed.customer import Journal
from cardnet.services.speed.stored import Identity
from cardnet.wire import Uid

NEWS = "news-1 Today's paper"
NOW = [T0]


def clock() -> float:
    return NOW[0]


@pytest.mark.parametrize("record", ["taken", "deadline"])
def test_a_settled_debit_gets_its_receipt_after_the_vendors_certificate_expired(
    tmp_path: Path, ca: pki.CertificateAuthority, record: str
) -> None:
    with opened(tmp_path, ca, clock) as w:
        # the vendor's key certified again, for a day from the purchase; its catalogue signed again with it
        me = Identity.load(w.vendor.store, sv.CFG, RuntimeError("no vendor"))
        start = datetime.fromtimestamp(T0 - 60, UTC)
        cert = pki.cert_to_der(ca.issue(pki.Role.SERVICE, Uid(os.urandom(12), 0), me.key.public_key(), now=start,
                                        valid_days=1, name="vendor"))  # fmt: skip
        with w.vendor.store.transaction() as txn:
            txn.put(sv.CFG, b"cert", cert)
        for name, raw in list(sv.scan(w.vendor.store, sv.CATALOGUE)):
            p = sv._PRODUCT.decode(raw)
            sv.add_product(w.vendor.store, name.decode(), sm.Price.of(p["price"]), p["content"],
                           floor=sm.Price.of(p["floor"]), replace=True)  # fmt: skip
        w.vendor = sv.VendorCore(w.vendor.store, clock=clock, pay_within_s=600)
        w.customer.journal = Journal(tmp_path / "journal")

        async def go() -> None:
            vs, bs = await serve(w)
            try:
                await load_purse(w, 1000)
                rec, poid, s3 = await authorised_and_debited(w, NEWS)
                assert rec.vendor_cert == cert
                w.broker.sam.ask(sa.DEBIT_FINISH, sa.DEBITED, s3=s3)  # the SAM logged it ... the broker stopped
                await bs.aclose()
                broker = sb.BrokerCore(w.broker.store, w.broker.sam, clock=clock)
                assert broker.settle(int(T0 // 86400)) == 1 and broker.balances()["V-1"] == {EUR: 80}
                settled = dict(sb_records._SETTLED.decode(sb_stored.get(broker.store, sb_records.SETTLED, poid)))
                assert settled["taken"] == int(T0)
                if record == "deadline":  # as a broker before sb.settled.taken wrote it: the bill's deadline is used
                    del settled["taken"]
                    with broker.store.transaction() as txn:
                        txn.put(sb_records.SETTLED, poid, sb_records._SETTLED.encode(settled))

                NOW[0] = T0 + 2 * 86400  # past the bill's deadline and the vendor's certificate
                with pytest.raises(PkiError) as expired:
                    pki.verified(cert, broker.roots, now=clock(), role=pki.Role.SERVICE)
                assert expired.value.reason == "expired"

                bs2 = sb_server.BrokerServer(broker, keep_days=None)
                host, port = await bs2.start()
                try:
                    [done] = await w.customer.recover(broker=f"{host}:{port}")
                finally:
                    await bs2.aclose()
                assert done.poid == poid and done.price == sm.Price(EUR, 80)
                assert done.contents == [b"the news of the day" * 10]
                assert broker.balances()["V-1"] == {EUR: 80} and w.balance() == 1000 - 80  # once
            finally:
                NOW[0] = T0
                await vs.aclose()
                await bs.aclose()

        asyncio.run(go())
