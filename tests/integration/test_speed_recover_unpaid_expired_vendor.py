"""`cardnet speed recover` drops a purchase the card never paid whose vendor certificate expired, and finishes the rest.

A purchase is journalled before the card is asked to pay it; if the program stops there (the card's host went away),
the card has paid nothing. The card checks the vendor's certificate before a payment it has not made, so once that
certificate expired it refuses (``expired``), and always will: recover treated that as a refusal a retry may change
and stopped there, leaving the purchases after it in the journal unfinished (one the card paid among them: debited,
no product). Now it is a permanent refusal: the purchase is dropped, in words (nothing was paid), and recover goes
on. Real processes (a broker, a vendor, the customer's card host, ``cardnet speed`` commands), a real vendor
certificate that expires seconds after it is issued (the CA is backdated a day) and a real wait."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from expiring import backdated_ca, recertify, wait_until_expired
from hostprocs import cardnet, free_port
from speedprocs import NEWS, SONG, add_catalogue, build, buy_losing_s3

from cardnet.cli.speed import JOURNAL
from cardnet.crypto import pki
from cardnet.protocols.speed import frames as fr
from cardnet.services.speed import vendor as sv
from cardnet.services.speed.customer import Journal
from cardnet.transport.framing import FrameDecoder

LEFT_S = 25  # the vendor's certificate expires this long after it is issued


async def _relay_that_stops(vendor: str, stop: Any) -> Any:
    """A TCP relay to ``vendor`` that, when the vendor's bill (``speed.bill_msg``) comes, calls ``stop`` (in a
    thread) before it passes the bill on; its address and the server."""
    host, port = vendor.rsplit(":", 1)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection(host, int(port))

        async def up() -> None:
            while data := await reader.read(1 << 16):
                up_w.write(data)
                await up_w.drain()

        there = asyncio.create_task(up())
        decoder = FrameDecoder()
        try:
            while data := await up_r.read(1 << 16):
                if any(m.mtype == fr.BILL.code for m in decoder.feed(data)):
                    await asyncio.to_thread(stop)
                writer.write(data)
                await writer.drain()
        finally:
            there.cancel()
            for w in (writer, up_w):
                w.close()

    port_here = free_port()
    return f"127.0.0.1:{port_here}", await asyncio.start_server(serve, "127.0.0.1", port_here)


def test_recover_drops_an_unpaid_purchase_whose_vendor_certificate_expired_and_finishes_the_rest(
    tmp_path: Path,
) -> None:
    """Alice buys the song: her purse debits and her program stops before the broker has her S3 (a relay drops it).
    She buys the news: the vendor delivers, the purchase is journalled, and her card's host is gone before the card
    pays (stopped as the bill comes). The vendor's certificate expires; she recovers: the news is dropped, nothing
    paid, said in words; the song is finished, debited once. Before, recover stopped at the news if it came first
    (the card refused ``expired``), and failed in any case."""
    backdated_ca(tmp_path / "ca.file")
    net = build(tmp_path)
    try:
        net.vendor.stop()  # it signs with a certificate that expires soon from now on
        cert, expires = recertify(
            tmp_path / "ca.file", tmp_path / "vendor.db", "speed-vendor", sv.CFG, "vendor", LEFT_S
        )
        add_catalogue(tmp_path, again=True)  # its entries signed again, with the new certificate inside
        net.vendor.start()
        alice = net.customers["alice"]
        before = alice.balance()

        song_poid = buy_losing_s3(net, alice, SONG)
        assert alice.balance()["EUR"] == before["EUR"] - 250  # her purse debited on the broker's S2

        async def news_unpaid() -> Any:
            relay, server = await _relay_that_stops(net.vendor.address, alice.host.stop)
            try:
                args = ["speed", "buy", "--socket", alice.host.socket, "--vendor", relay, "--broker",
                        net.broker.address, "--broker-cert", str(tmp_path / "broker.pem"), "--ca-cert",
                        str(tmp_path / "ca.pem"), "--limit", "10.00 EUR", "--product", NEWS, "--out",
                        str(tmp_path / "alice-bought"), "--json"]  # fmt: skip
                return await asyncio.to_thread(cardnet, *args, check=False)
            finally:
                server.close()

        got = asyncio.run(news_unpaid())
        assert got.returncode != 0, got.stdout
        alice.host.start()
        journal = Journal(tmp_path / "alice-bought" / JOURNAL)
        assert sorted(r.products[0] for r in journal.pending()) == [NEWS, SONG], got.stdout
        assert alice.balance() == {**before, "EUR": before["EUR"] - 250}  # the card paid nothing for the news
        assert time.time() < expires, "the test was too slow: the certificate expired before the purchases"

        ca = pki.cert_to_der(pki.CertificateAuthority.load(tmp_path / "ca.file").certificate)
        wait_until_expired(cert, [ca], expires)

        out = str(tmp_path / "alice-bought")
        ca_pem, socket = str(tmp_path / "ca.pem"), alice.host.socket
        words = cardnet("speed", "recover", "--socket", socket, "--ca-cert", ca_pem, "--out", out, "--broker",
                        net.broker.address, check=False)  # fmt: skip
        assert words.returncode == 0, words.stdout + words.stderr
        assert f"dropped, unpaid: {NEWS}" in words.stdout and "nothing was paid" in words.stdout, words.stdout
        assert "vendor's certificate expired" in words.stdout, words.stdout
        by_product = {r.products[0]: r for r in journal.all()}
        assert by_product[NEWS].dropped == "vendor_cert_expired" and by_product[NEWS].receipt is None
        assert by_product[SONG].poid == song_poid and by_product[SONG].receipt is not None
        assert alice.balance()["EUR"] == before["EUR"] - 250  # the song debited once, the news never
        assert alice.recover(net) == {"finished": [], "dropped": []}  # nothing left under way
    finally:
        net.stop()
