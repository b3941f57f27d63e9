"""`cardnet speed recover` drops, for good, a purchase whose payment order the broker never took before the bill's
deadline, when a certificate expired since; the card's pending debit ends and nothing was paid.

The card made its PaymentOrder (its purse's debit under way) and the broker could not be reached; the bill's deadline
passed and the vendor's certificate expired. The broker checked the certificates at its own time for an order it had
never taken and answered ``expired``, which a retry might change: recover stopped there for ever, the card's debit
under way. Now the broker refuses a payment order of a bill past its deadline that it never took ``bill_expired``, for
good (recorded in ``sb.late``), whatever became of the certificates since; recover ends the purse's debit (the card's
SE, the SAM's SR: the SAM never authorised it, and never will) and drops the purchase in words. Real processes (a
broker, a vendor with a 20 s deadline, the customer's card host, ``cardnet speed`` commands), a real vendor
certificate that expires 25 s after it is issued (the CA is backdated a day), and a real wait."""

from __future__ import annotations

import time
from pathlib import Path

from expiring import backdated_ca, recertify, wait_until_expired
from hostprocs import cardnet
from speedprocs import NEWS, add_catalogue, build, run

from cardnet.cli.speed import JOURNAL
from cardnet.crypto import pki
from cardnet.services.speed import broker_records as sb_records
from cardnet.services.speed import vendor as sv
from cardnet.services.speed.customer import Journal
from cardnet.services.speed.stored import get
from cardnet.store import open_store

LEFT_S = 25  # the vendor's certificate expires this long after it is issued; the bill's deadline comes before


def test_recover_drops_a_purchase_the_broker_never_took_before_its_deadline_and_ends_the_debit(tmp_path: Path) -> None:
    backdated_ca(tmp_path / "ca.file")
    net = build(tmp_path, vendor_args=("--pay-within", "15"))
    try:
        net.vendor.stop()
        cert, expires = recertify(
            tmp_path / "ca.file", tmp_path / "vendor.db", "speed-vendor", sv.CFG, "vendor", LEFT_S
        )
        add_catalogue(tmp_path, again=True)
        net.vendor.start()
        alice = net.customers["alice"]
        before = alice.balance()

        # the broker cannot be reached: the card made its payment order (its debit under way), nothing was paid
        got = alice.buy(net, NEWS, broker="127.0.0.1:1", check=False)
        assert got["error"]["reason"] == "unreachable", got
        journal = Journal(tmp_path / "alice-bought" / JOURNAL)
        [rec] = journal.pending()
        assert time.time() < expires, "the test was too slow: the certificate expired before the purchase"

        ca = pki.cert_to_der(pki.CertificateAuthority.load(tmp_path / "ca.file").certificate)
        wait_until_expired(cert, [ca], expires)  # (the bill's deadline, 15 s after the bill, passed before)

        out, ca_pem = str(tmp_path / "alice-bought"), str(tmp_path / "ca.pem")
        words = cardnet("speed", "recover", "--socket", alice.host.socket, "--ca-cert", ca_pem, "--out", out,
                        "--broker", net.broker.address, check=False)  # fmt: skip
        assert words.returncode == 0, words.stdout + words.stderr
        assert f"dropped, unpaid: {NEWS}" in words.stdout and "nothing was paid" in words.stdout, words.stdout
        [dropped] = [r for r in journal.all() if r.nid == rec.nid]
        assert dropped.dropped == "bill_expired" and dropped.receipt is None
        assert alice.balance() == before  # nothing paid
        # the purse's debit ended with the purchase: nothing is left to end, or to recover
        ended = run("speed", "purse", "end-debits", "--socket", alice.host.socket, "--broker", net.broker.address)
        assert ended["ended"] == [] and ended["authorised"] == 0, ended
        assert alice.recover(net) == {"finished": [], "dropped": []}
    finally:
        net.stop()
    # the broker recorded its refusal: it never takes that payment order
    store = open_store("sqlite:///" + str(tmp_path / "broker.db"), kind="speed-broker", create=False)
    try:
        poid = sv.sm.decode(sv.sm.BILL, sv.sm.signed(rec.bill, "bill").content, "bill")["poid"]
        assert get(store, sb_records.LATE, poid) is not None
    finally:
        store.close()
