"""Which ``sb.auth`` records go (the broker's record that it authorised a purse payment of a bill with a deadline).

On a real SQLite broker store: a payment whose debit the SAM logged and the broker lost is settled from the SAM's log;
its record then goes (the payment is finished: the vendor was credited), its time kept with the settlement, and the
customer who comes back long after the deadline still gets the receipt, once. A payment the SAM authorised whose S3
never reached it keeps its record past the deadline and a prune (the purse debited: it is paid whenever it comes),
and is paid when the customer comes back. Before, the settled payment's record stayed for ever."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from speedworld import EUR, T0, World, authorised_and_debited, load_purse, opened, serve

from cardnet.applets.speed import sam as sa
from cardnet.crypto import pki
from cardnet.services.speed import broker as sb
from cardnet.services.speed import broker_records as sb_records
from cardnet.services.speed import broker_server as sb_server
from cardnet.services.speed import stored as sb_stored
from cardnet.services.speed.customer import Journal

NEWS = "news-1 Today's paper"
NOW = [T0]


def clock() -> float:
    return NOW[0]


def _auth(w: World) -> set[bytes]:
    return {k for k, _ in sb_stored.scan(w.broker.store, sb_records.AUTHORISED)}


def test_a_settled_payments_record_goes_and_an_open_ones_stays_past_the_deadline(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    with opened(tmp_path, ca, clock) as w:
        w.vendor.pay_within_s = 600  # bills carry a deadline: the broker records what it authorises (sb.auth)
        w.customer.journal = Journal(tmp_path / "journal")

        async def go() -> None:
            vs, bs = await serve(w)
            try:
                await load_purse(w, 1000)
                settled_rec, settled_poid, s3 = await authorised_and_debited(w, NEWS)
                w.broker.sam.ask(sa.DEBIT_FINISH, sa.DEBITED, s3=s3)  # the SAM logged it ... the broker stopped
                open_rec, open_poid, _lost = await authorised_and_debited(w, NEWS)  # this S3 never reaches the SAM
                assert _auth(w) == {settled_poid, open_poid} and w.balance() == 1000 - 160
                await bs.aclose()

                NOW[0] = T0 + 3 * 86400  # days past both bills' deadlines
                day = int(T0 // 86400)
                broker = sb.BrokerCore(w.broker.store, w.broker.sam, clock=clock)
                auth_row = sb_stored.get(w.broker.store, sb_records.AUTHORISED, settled_poid)
                assert broker.settle(day) == 1
                assert _auth(w) == {open_poid}  # settlement dropped the finished payment's record
                # as a broker before this rule left it: the record kept beside the settlement, which has no time
                with w.broker.store.transaction() as txn:
                    txn.put(sb_records.AUTHORISED, settled_poid, auth_row)
                    rec = dict(sb_records._SETTLED.decode(txn.get(sb_records.SETTLED, settled_poid)))
                    del rec["taken"]
                    txn.put(sb_records.SETTLED, settled_poid, sb_records._SETTLED.encode(rec))
                got: Any = broker.prune(keep_days=1)
                assert day in got.days and got.authorisations_ended == 1
                assert _auth(w) == {open_poid}  # the finished payment's record went, the open one's stays
                [(_, raw)] = list(sb_stored.scan(w.broker.store, sb_records.SETTLED))
                assert sb_records._SETTLED.decode(raw)["taken"] == int(T0)  # its time kept
                assert broker.end_settled_authorisations() == 0
                assert broker.balances()["V-1"] == {EUR: 80}

                # the customer comes back, days after the deadlines: both finished, each paid once
                w.broker = broker
                bs2 = sb_server.BrokerServer(broker, keep_days=None)
                host, port = await bs2.start()
                try:
                    done = await w.customer.recover(broker=f"{host}:{port}")
                finally:
                    await bs2.aclose()
                assert sorted(p.poid for p in done) == sorted([settled_poid, open_poid])
                assert broker.balances()["V-1"] == {EUR: 160} and w.balance() == 1000 - 160
                assert _auth(w) == set()  # the open one is paid: its record went with it
                assert settled_rec.nid != open_rec.nid
            finally:
                await vs.aclose()
                await bs.aclose()

        asyncio.run(go())
