"""A customer who paid gets the product and the receipt even when it recovers after the broker's certificate expired.

The customer's program checks the broker's receipt against the broker's certificate. It used to check that
certificate at its own clock when the receipt came, so a program that stopped after the card paid and recovered only
after the certificate expired refused the receipt the broker sent: paid, no product, no proof. Now it checks it as it
was when the program began paying (the time the journal recorded before the card made its PaymentOrder), or at the
bill's deadline if earlier. Real processes (a broker, a vendor, the customer's card host, ``cardnet speed`` commands), a
real broker certificate that expires seconds after it is issued (the CA is backdated a day) and a real wait."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from expiring import backdated_ca, recertify
from speedprocs import SONG, build, relay_that_loses_s3

from cardnet.cli.speed import JOURNAL
from cardnet.crypto import pki
from cardnet.crypto.errors import PkiError
from cardnet.services.speed import broker as sb
from cardnet.services.speed.customer import Journal

LEFT_S = 20  # the broker's certificate expires this long after it is issued


def test_a_customer_who_recovers_after_the_brokers_certificate_expired_gets_the_product_and_the_receipt(
    tmp_path: Path,
) -> None:
    """Alice buys the song (no deadline on the bill); the broker authorises her payment, her purse debits, and her
    program stops before the broker has her S3 (a relay drops it). The broker's certificate expires; she recovers:
    the broker pays, she gets the song and the receipt, debited once. Before, the recovery refused the receipt
    (``expired``), and the purchase stayed under way: paid, no product."""
    backdated_ca(tmp_path / "ca.file")
    net = build(tmp_path)
    try:
        net.broker.stop()  # the broker signs with a certificate that expires soon from now on
        broker_cert, expires = recertify(tmp_path / "ca.file", tmp_path / "broker.db", "speed-broker", sb.CFG,
                                         "broker", LEFT_S)  # fmt: skip
        (tmp_path / "broker.pem").write_bytes(pki.chain_to_pem([pki.cert_from_der(broker_cert)]))
        net.broker.start()
        alice = net.customers["alice"]
        before = alice.balance()

        async def pay() -> tuple[Any, list[bytes]]:
            async with relay_that_loses_s3(net.broker.address) as (relay, lost):
                got = await asyncio.to_thread(alice.buy, net, SONG, aggressive=True, broker=relay, check=False)
            return got, lost

        stopped, (poid,) = asyncio.run(pay())
        assert stopped["error"]["reason"] == "unreachable", stopped
        assert alice.balance()["EUR"] == before["EUR"] - 250  # her purse debited on the broker's S2
        assert time.time() < expires, "the test was too slow: the certificate expired before the payment"

        ca = pki.cert_to_der(pki.CertificateAuthority.load(tmp_path / "ca.file").certificate)
        while time.time() <= expires + 1:
            time.sleep(0.2)
        with pytest.raises(PkiError) as expired:  # the certificate really has expired
            pki.verified(broker_cert, [ca], now=time.time(), role=pki.Role.SERVICE)
        assert expired.value.reason == "expired"

        got = alice.recover(net, "--broker", net.broker.address, check=False)
        assert "finished" in got and len(got["finished"]) == 1 and got["dropped"] == [], got
        (done,) = got["finished"]
        assert done["poid"] == poid.hex()
        assert Path(done["files"][0]).read_bytes() == net.song
        (rec,) = Journal(tmp_path / "alice-bought" / JOURNAL).all()
        assert rec.poid == poid and rec.receipt is not None
        assert alice.balance()["EUR"] == before["EUR"] - 250  # debited once
        assert alice.recover(net)["finished"] == []  # nothing left under way
    finally:
        net.stop()
