"""A buyer who paid gets the ticket even after the broker's certificate expired.

The ticketing server checks the broker's receipt on every request about a sale. It used to check the broker's
certificate at the time of each request, so once that certificate expired, a buyer who had paid while it was valid
and came back for the ticket (a dropped connection, a crash) was refused ``bad_receipt``: paid, no ticket. Now the
receipt the server recorded is trusted for its sale, and one not recorded yet is checked at the bill's deadline (the
broker pays no bill after it). A real broker certificate of short validity (issued so that its day ends seconds
after the test starts) and a real wait; the ticketing server, its device's host, the broker and the buyers' hosts run
in this process (:meth:`cardnet.bench.ticketnet.TicketNet.in_process`)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from expiring import recertify, wait_until_expired

from cardnet.bench.ticketnet import EVENT, PRICE, TicketNet
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed import broker_records as sb_records
from cardnet.services.speed import vendor as sv
from cardnet.services.speed.customer import Customer
from cardnet.services.ticketing.buyer import receipt_header, receive_ticket
from cardnet.store import open_store

LEFT_S = 20  # the broker's certificate expires this long after it is issued


def _short_lived_broker_cert(net: TicketNet) -> float:
    """Certify the broker's key again, valid until ``LEFT_S`` from now, in the broker's and the vendor's stores; when
    it expires (Unix time)."""
    der, expires = recertify(
        net.tmp / "ca.cnca", net.tmp / "broker.db", "speed-broker", sb_records.CFG, "broker", LEFT_S
    )
    vstore = open_store("sqlite:///" + str(net.tmp / "tickets.db"), kind="speed-vendor", create=False)
    try:
        with vstore.transaction() as txn:
            txn.put(sv.CFG, b"broker", der)
    finally:
        vstore.close()
    net.broker_cert = der
    return expires


@pytest.mark.parametrize("pay_within_s", [2, None])
def test_a_paid_sale_gets_its_ticket_after_the_brokers_certificate_expired(
    tmp_path: Path, pay_within_s: int | None
) -> None:
    """Alice and Bob each pay a seat while the broker's certificate is valid. Alice showed the server her receipt
    (it recorded it) and her connection dropped; Bob's program stopped before it showed his. The broker's certificate
    expires; both come back with their receipts and get their tickets. Before, both were refused ``bad_receipt``;
    with a bill's deadline after the expiry (``None``: the default, 900 s), Bob was until the server checked an
    unrecorded receipt at the time it made the bill rather than at the deadline."""
    net = TicketNet(tmp_path, ("alice", "bob"), ["A1", "A2"])
    if pay_within_s is not None:
        cfg = net.hosts["tickets"].config
        cfg.write_text(
            cfg.read_text().replace("transfer_timeout_s", f"pay_within_s = {pay_within_s}\ntransfer_timeout_s")
        )
    expires = _short_lived_broker_cert(net)

    async def go() -> None:
        async with net.in_process(), httpx.AsyncClient(base_url=net.url) as c:
            await net.setup()
            speed = (await c.get("/")).json()["speed"]
            paid = {}
            for buyer, seat in (("alice", "A1"), ("bob", "A2")):
                async with await net.wallet(buyer) as w:
                    paid[buyer] = await Customer(w, b"", net.roots).buy(
                        speed, net.broker_addr, [f"{EVENT}/{seat}"], broker_cert=net.broker_cert, mode="aggressive",
                        vendor_cert=net.vendor_cert, price=sm.parse_price(PRICE),
                    )  # fmt: skip
            name, value = receipt_header(paid["alice"].receipt)
            page = await c.get(f"/tickets/{paid['alice'].poid.hex()}", headers={name: value})
            assert page.status_code == 200 and page.json()["seat"] == "A1", page.text
            assert time.time() < expires, "the test was too slow: the certificate expired before the payments"

            await asyncio.to_thread(wait_until_expired, net.broker_cert, net.roots, expires)

            got = {}
            for buyer in ("alice", "bob"):
                got[buyer] = await receive_ticket(net.url, paid[buyer].poid, net.hosts[buyer].socket,
                                                  receipt=paid[buyer].receipt)  # fmt: skip
            async with asyncio.timeout(30):
                while [(await net.tokens(b)).get(got[b].oid) for b in got] != ["enabled", "enabled"]:
                    await asyncio.sleep(0.05)

    asyncio.run(go())
