"""An S2 the SAM made whose group never committed, the broker restarted, the customer back after the deadline: the
purse's debit ends, nothing paid.

The bill has a deadline. The broker's SAM answers the S2 of its payment order, and the group that holds the order's
authorisation record (``sb.auth``) fails at its COMMIT (a real SQLite failure: tests/integration/failing_commits.py):
the customer is refused ``store_failed`` and never gets the S2. The broker restarts (its memory of the order is gone)
and the customer's recovery comes after the deadline: the broker refuses the order for good, ``bill_expired``, and the
purchase is dropped, unpaid. Before, the card's debit stayed under way for ever: its SE was refused ``authorised``
(the SAM had made the S2), and no purchase was left to finish it, so it held one of the purse's 16 places (``cardnet
speed purse end-debits``: "authorised by the broker ... stay under way"). Now the broker, which knows the S2 never
left it (no ``sb.auth``: durable before an S2 of a bill with a deadline leaves), has the SAM drop that authorisation
(``sam.end_debit`` with ``unsent``) and the card forgets the debit on the SAM's SR.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from failing_commits import fail_commits
from speedworld import T0, load_purse, opened, serve
from test_speed_broker_failed_commit import ME, agreed_not_paid, order_msg, receipts_db

from cardnet.applets.speed import purse as pa
from cardnet.crypto import pki
from cardnet.protocols.speed import frames as fr
from cardnet.services.speed import broker as sb
from cardnet.services.speed import broker_records as sb_records
from cardnet.services.speed import broker_server as sb_server
from cardnet.services.speed import vendor as sv
from cardnet.services.speed.customer import AsyncLocalCard, Journal, end_debits
from cardnet.services.speed.stored import get
from cardnet.transport import dial, host_port

DEADLINE_S = 60


def test_an_s2_that_never_left_the_broker_ends_on_the_card_after_the_deadline(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    now = [T0]
    with opened(tmp_path, ca, lambda: now[0]) as w:
        w.customer.journal = Journal(tmp_path / "journal")
        w.vendor = sv.VendorCore(w.vendor.store, clock=lambda: now[0], pay_within_s=DEADLINE_S)
        db = receipts_db(w)

        async def go() -> None:
            vs, bs = await serve(w)
            try:
                await load_purse(w, 1000)
                rec = await agreed_not_paid(w)
                poid, order = order_msg(w, rec)  # the card's debit under way (its S1)
                fail_commits(db, True, trigger="fail_auth", table="kv", when=f"NEW.tbl = '{sb_records.AUTHORISED}'")
                conn = await dial(*host_port(w.broker_addr))
                try:
                    await conn.send(order)
                    refused = await conn.recv()
                finally:
                    await conn.aclose()
                assert fr.REFUSED.parse(refused)["reason"] == "store_failed", refused  # no S2 reached the customer
                fail_commits(db, False, trigger="fail_auth", table="kv", when="")
            finally:
                await bs.aclose()
            assert get(w.broker.store, sb_records.AUTHORISED, poid) is None
            # the broker restarts (nothing of the order in its memory); the customer comes back after the deadline
            w.broker = sb.BrokerCore(w.broker.store, w.broker.sam, clock=lambda: now[0])
            now[0] = T0 + DEADLINE_S + 1
            bs = sb_server.BrokerServer(w.broker)
            h, p = await bs.start()
            w.broker_addr = f"{h}:{p}"
            try:
                rec.broker = w.broker_addr
                w.customer.journal.save(rec)  # type: ignore[union-attr]
                done, dropped = await w.customer.recover_all()
                assert done == [] and [d.reason for d in dropped] == ["bill_expired"], dropped
                card = AsyncLocalCard(w.card)
                left = await end_debits(card, w.broker_addr)
                assert left.authorised == 0 and left.ended == (), left  # nothing under way: the debit ended
                got = w.card.ask(pa.BALANCE, pa.BALANCES)
                assert got["pending_debits"] == 0, got  # its place in the purse is free again
                assert w.balance() == 1000 and w.broker.balances()["V-1"] == {}  # nothing paid
                assert w.broker.sam_totals(int(now[0] // 86400)) == {}
                states = w.broker.handle(fr.ORDER_STATES.make(ME, ME, poids=[poid]))
                assert fr.STATES.parse(states)["items"] == [{"poid": poid, "state": "none"}]
                again = w.broker.handle(order)  # and the order is never taken now
                assert fr.REFUSED.parse(again)["reason"] in ("bill_expired", "debit_refused"), again
            finally:
                await vs.aclose()
                await bs.aclose()

        asyncio.run(go())
