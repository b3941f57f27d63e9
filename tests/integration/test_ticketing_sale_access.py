"""A sale's page and its delivery open only for the buyer who paid (the broker's receipt for it), not for whoever
learned the sale's PaymentOrderID: the ticket moves from card to card and is shown at gates, so its later holders,
the gates and anyone they show it to would learn what the ticket carries.

The ticketing server, its device's host, the broker and the buyers' hosts run in this process
(:meth:`cardnet.bench.ticketnet.TicketNet.in_process`); every request goes over real sockets."""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from cardnet.bench.ticketnet import EVENT, TicketNet
from cardnet.bench.trnnet import PIN
from cardnet.cli.speed import JOURNAL
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed.customer import Customer, Journal
from cardnet.services.ticketing import sales
from cardnet.services.ticketing.buyer import buy_ticket, get_json, receive_ticket, server_address
from cardnet.transport.http_upgrade import UpgradeRefused, dial_trn

SEATS = ["A1", "A2"]


async def _enabled(net: TicketNet, card: str, oid: bytes) -> None:
    async with asyncio.timeout(30):
        while (await net.tokens(card)).get(oid) != "enabled":
            await asyncio.sleep(0.05)


async def _upgrade_refused(url: str, poid: bytes, body: bytes = b"{}") -> UpgradeRefused:
    """``POST /tickets/{poid}`` asking for TRN, as a program that knows only the PaymentOrderID would; the refusal
    (a ``101`` fails the test: the device would start the ticket's transfer over this connection)."""
    try:
        up = await dial_trn(*server_address(url), "POST", f"/tickets/{poid.hex()}", body=body,
                            headers=[("Content-Type", "application/json")])  # fmt: skip
    except UpgradeRefused as exc:
        return exc
    await up.conn.aclose()
    raise AssertionError(f"the delivery of sale {poid.hex()} opened for a party who only knows its PaymentOrderID")


def test_a_later_holder_who_knows_the_poid_opens_neither_the_sales_page_nor_its_delivery(tmp_path: Path) -> None:
    """Alice buys A1 and passes the ticket on to Mallory's card (TRN). Mallory reads what the ticket carries, and
    knows the PaymentOrderIDs of Alice's sales (A1's, delivered; A2's, paid, its receipt taken by the server, not yet
    delivered: a dropped connection). With them alone she reads neither sale's page (Alice's card, seat, state) and
    opens neither delivery. Alice, with the broker's receipt her program keeps, reads her page and receives A2's ticket.
    Before, the ticket's body named the PaymentOrderID, ``GET /tickets/{poid}`` showed the sale to anyone, and ``POST``
    with ``Upgrade: TRN`` answered ``101`` and the device started the transfer over Mallory's connection."""
    net = TicketNet(tmp_path, ("alice", "mallory"), SEATS)

    async def go() -> None:
        async with net.in_process() as server:
            await net.setup()
            assert server.store is not None
            journal = Journal(tmp_path / "alice-journal")
            async with await net.wallet("alice") as alice:
                how = {"card": alice, "app_socket": net.hosts["alice"].socket, "broker": net.broker_addr,
                       "broker_cert": net.broker_cert, "roots": net.roots, "journal": journal}  # fmt: skip
                a1 = await buy_ticket(net.url, EVENT, "A1", **how)  # type: ignore[arg-type]
                await _enabled(net, "alice", a1.oid)
                await alice.transfer(a1.oid, net.uids["mallory"])
                # A2: paid, the delivery not yet made (the connection dropped after the payment)
                async with httpx.AsyncClient(base_url=net.url) as c:
                    speed = str((await c.get("/")).json()["speed"])
                a2 = await Customer(alice, b"", net.roots, journal=journal).buy(
                    speed, net.broker_addr, [f"{EVENT}/A2"], broker_cert=net.broker_cert, mode="aggressive",
                    vendor_cert=net.vendor_cert, price=sm.Price("EUR", 100),
                )  # fmt: skip
                async with httpx.AsyncClient(base_url=net.url) as c:  # the server takes the receipt; no TRN asked
                    r = await c.post(
                        f"/tickets/{a2.poid.hex()}", json={"receipt": base64.b64encode(a2.receipt).decode()}
                    )
                    assert r.status_code == 426, r.text
            await _enabled(net, "mallory", a1.oid)
            async with await net.wallet("mallory") as mallory:
                held = await mallory.voucher(a1.oid)
            assert held is not None and held.body is not None
            assert a1.poid.hex() not in held.body.decode(), held.body  # the ticket does not carry the sale's id
            assert set(json.loads(held.body)) == {"event", "seat"}, held.body

            async with httpx.AsyncClient(base_url=net.url) as c:
                for poid in (a1.poid, a2.poid):
                    page = await c.get(f"/tickets/{poid.hex()}")
                    assert page.status_code == 402 and page.json()["error"] == "unpaid", page.text
                    assert str(net.uids["alice"]) not in page.text, page.text
                    posted = await c.post(f"/tickets/{poid.hex()}")
                    assert posted.status_code == 402 and posted.json()["error"] == "unpaid", posted.text
                    # another sale's receipt (a receipt is no key to every sale) opens nothing either
                    other = {"Authorization": "Receipt " + base64.b64encode(a2.receipt if poid == a1.poid else
                                                                            a1.receipt).decode()}  # fmt: skip
                    page = await c.get(f"/tickets/{poid.hex()}", headers=other)
                    assert page.status_code == 402 and page.json()["error"] == "bad_receipt", page.text
                a_page = await c.get(f"/tickets/{a1.poid.hex()}?receipt=x")  # a query is no way round it
                assert a_page.status_code == 402, a_page.text
            for poid in (a1.poid, a2.poid):
                refused = await _upgrade_refused(net.url, poid)
                assert refused.status == 402 and refused.error == "unpaid", refused
            t = sales.ticket(server.store, a2.poid)
            assert t is not None and t.state == "paid", t  # nothing minted, nothing sent for Mallory's request
            assert await server.wallet.voucher(t.oid) is None  # type: ignore[union-attr]

            # Alice, with the receipt her program kept, reads her page and receives A2's ticket
            relayed = await receive_ticket(net.url, a2.poid, net.hosts["alice"].socket, receipt=a2.receipt)
            assert relayed.oid == sales.ticket_oid(a2.poid)
            await _enabled(net, "alice", relayed.oid)
            async with httpx.AsyncClient(base_url=net.url) as c:
                mine = {"Authorization": "Receipt " + base64.b64encode(a2.receipt).decode()}
                page = await c.get(f"/tickets/{a2.poid.hex()}", headers=mine)
                assert page.status_code == 200 and page.json()["state"] == "delivered", page.text
                assert page.json()["card"] == str(net.uids["alice"])
            for rec in journal.all():  # the receipts are in Alice's journal: what `wallet buy --poid` presents
                assert rec.receipt in (a1.receipt, a2.receipt)

    asyncio.run(go())


def _wallet_buy(config: Path, *args: str) -> dict[str, Any]:
    """``cardnet wallet buy ARGS --json`` (a process) with the wallet config ``config``: its JSON answer."""
    r = subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", "wallet", "buy", *args, "--config", str(config), "--pin", PIN,
         "--json"], capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "Traceback" not in r.stderr, r.stderr
    got: dict[str, Any] = json.loads(r.stdout)
    return got


def test_wallet_buy_poid_at_another_ticketing_servers_address_says_so(tmp_path: Path) -> None:
    """Alice paid a seat at one ticketing server and finishes the delivery with ``cardnet wallet buy URL --poid``,
    giving another ticketing server's address: the answer says that server did not sell it (its vendor is not the
    one on her bill), that her sale stays paid, and to give the address she bought from. A PaymentOrderID her journal
    does not hold is said as such. The right address brings the ticket (the receipt from her journal). Before, the
    other server's answer: 'no sale has that PaymentOrderID: buy a seat first (SPEED)', to a buyer who had paid."""
    (tmp_path / "one").mkdir()
    (tmp_path / "other").mkdir()  # another ticketing server: its own CA, device, vendor and broker
    net = TicketNet(tmp_path / "one", ("alice",), SEATS)
    other = TicketNet(tmp_path / "other", (), SEATS)

    async def go() -> None:
        async with net.in_process(), other.in_process():
            await net.setup()
            purchases = tmp_path / "alice-purchases"
            journal = Journal(purchases / JOURNAL)
            async with await net.wallet("alice") as alice:
                speed = str((await get_json(net.url, "/"))["speed"])
                a1 = await Customer(alice, b"", net.roots, journal=journal).buy(
                    speed, net.broker_addr, [f"{EVENT}/A1"], broker_cert=net.broker_cert, mode="aggressive",
                    vendor_cert=net.vendor_cert, price=sm.Price("EUR", 100),
                )  # fmt: skip
            config = tmp_path / "alice-wallet.toml"
            config.write_text(f'socket = "{net.hosts["alice"].socket}"\ncard = "{net.uids["alice"].domain.hex()}"\n'
                              f'purchases = "{purchases}"\n')  # fmt: skip

            error = (await asyncio.to_thread(_wallet_buy, config, other.url, "--poid", a1.poid.hex()))["error"]
            assert error["reason"] == "wrong_server", error
            assert f"{other.url} did not sell sale {a1.poid.hex()[:16]}" in error["message"], error
            assert "stays paid" in error["message"] and "buy a seat first" not in error["message"], error
            assert "address of the ticketing server you bought the seat from" in error["hint"], error

            error = (await asyncio.to_thread(_wallet_buy, config, net.url, "--poid", "ab" * 40))["error"]
            assert error["reason"] == "unknown_sale" and "has no sale abab" in error["message"], error

            got = await asyncio.to_thread(_wallet_buy, config, net.url, "--poid", a1.poid.hex())
            assert got["state"] == "enabled" and got["seat"] == "A1", got

    asyncio.run(go())
