"""A customer who paid gets the product and the receipt even when it recovers after a certificate expired.

The customer's program checked the broker's receipt against the broker's certificate at its own clock when the
receipt came; the card checked the vendor's certificate at the host's clock each time it was asked for its
PaymentOrder, and the broker both certificates at its clock each time the order came. So a program that stopped after
the card paid and recovered only after one of them expired was refused (``expired``): paid, no product, no proof.
Now each checks a purchase's certificates at the time it began: the customer at the time the journal recorded before
the card made its PaymentOrder (or the bill's deadline, if earlier), the card not again for an order it made, the
broker at the time it took the order. Real processes (a broker, a vendor, the customer's card host, ``cardnet
speed`` commands), a real certificate that expires seconds after it is issued (the CA is backdated a day) and a real
wait."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from expiring import backdated_ca, recertify, wait_until_expired
from speedprocs import NEWS, SONG, add_catalogue, build, buy_losing_s3

from cardnet.cli.speed import JOURNAL
from cardnet.crypto import pki
from cardnet.services.speed import broker_records as sb_records
from cardnet.services.speed import vendor as sv
from cardnet.services.speed.customer import Journal

LEFT_S = 20  # the certificate expires this long after it is issued
STORES = {"broker": ("broker.db", "speed-broker", sb_records.CFG), "vendor": ("vendor.db", "speed-vendor", sv.CFG)}


@pytest.mark.parametrize("expiring", ["broker", "vendor"])
def test_a_customer_who_recovers_after_a_certificate_expired_gets_the_product_and_the_receipt(
    tmp_path: Path, expiring: str
) -> None:
    """Alice buys the song (no deadline on the bill); the broker authorises her payment, her purse debits, and her
    program stops before the broker has her S3 (a relay drops it). The broker's (or the vendor's) certificate
    expires; she recovers: the broker pays, she gets the song and the receipt, debited once. Before, the recovery
    was refused ``expired`` (her program refused the broker's receipt; the card refused to give its PaymentOrder again
    for the vendor's bill, and so did the broker), and the purchase stayed under way: paid, no product. A new
    purchase after the expiry is refused before anything is paid."""
    backdated_ca(tmp_path / "ca.file")
    net = build(tmp_path)
    try:
        service = net.broker if expiring == "broker" else net.vendor
        service.stop()  # it signs with a certificate that expires soon from now on
        db, kind, table = STORES[expiring]
        cert, expires = recertify(tmp_path / "ca.file", tmp_path / db, kind, table, expiring, LEFT_S)
        (tmp_path / f"{expiring}.pem").write_bytes(pki.chain_to_pem([pki.cert_from_der(cert)]))
        if expiring == "vendor":
            add_catalogue(tmp_path, again=True)  # its entries signed again, with the new certificate inside
        service.start()
        alice = net.customers["alice"]
        before = alice.balance()

        poid = buy_losing_s3(net, alice, SONG)
        assert alice.balance()["EUR"] == before["EUR"] - 250  # her purse debited on the broker's S2
        assert time.time() < expires, "the test was too slow: the certificate expired before the payment"

        ca = pki.cert_to_der(pki.CertificateAuthority.load(tmp_path / "ca.file").certificate)
        wait_until_expired(cert, [ca], expires)

        got = alice.recover(net, "--broker", net.broker.address, check=False)
        assert "finished" in got and len(got["finished"]) == 1 and got["dropped"] == [], got
        (done,) = got["finished"]
        assert done["poid"] == poid.hex()
        assert Path(done["files"][0]).read_bytes() == net.song
        (rec,) = Journal(tmp_path / "alice-bought" / JOURNAL).all()
        assert rec.poid == poid and rec.receipt is not None
        assert alice.balance()["EUR"] == before["EUR"] - 250  # debited once
        assert alice.recover(net)["finished"] == []  # nothing left under way

        # a new purchase is refused before anything is paid: an expired certificate is good only for what was begun
        refused = alice.buy(net, NEWS, aggressive=True, check=False)
        assert refused["error"]["reason"] == "expired", refused
        assert alice.balance()["EUR"] == before["EUR"] - 250
    finally:
        net.stop()
