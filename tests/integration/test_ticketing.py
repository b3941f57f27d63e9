"""The ticketing server through its real entry point (`cardnet ticketing run`, a process) with real sockets.

The world: a TRN network of host processes (the authority's host and one host per buyer, each buyer's card with
the trn, purse and speed applets), the ticketing server process (its device, an agent card, on its own host
inside it; no buyer's host has a route to that device: the ticket can only travel over the upgraded HTTP
connection) and the SPEED broker (`cardnet speed broker run`, its SAM card in it). The stores are made with the
libraries (quicker than a command each). The HTTP part is spoken with httpx, the upgrade and the relay by the
buyer's library (services/ticketing/buyer.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import forkhost
import httpx
import pytest
from cutrelay import cut_relay
from forkhost import Forker
from hostprocs import ForkedCli, Service, cardnet
from killwindow import PointWindow

from cardnet.applets.authority import ADD_AGENT
from cardnet.applets.speed import purse as pa
from cardnet.bench.procs import HostProc, free_port
from cardnet.bench.ticketnet import make_ticketing
from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.cli.wallet_config import load as load_wallet_config
from cardnet.crypto import pki
from cardnet.protocols.speed import messages as sm
from cardnet.services.speed.customer import Customer, Journal, PurchaseError, install_key, load
from cardnet.services.ticketing.buyer import (
    TicketError,
    buy_ticket,
    receipt_header,
    receive_ticket,
    server_address,
)
from cardnet.services.ticketing.sales import Ticket, ticket_oid
from cardnet.services.wallet import Wallet
from cardnet.store import SqliteStore
from cardnet.transport.http import HttpError
from cardnet.transport.http_upgrade import UpgradeRefused
from cardnet.web.shop import Shop

BUYERS = ("alice", "bob", "carol", "dan", "erin", "fay", "gus")  # carol's purse stays empty: her bill is never paid
KILLS = max(50, int(os.environ.get("CARDNET_TICKETING_KILLS", "50")))  # SIGKILLs of each process during purchases
MAX_KILLS = 2 * KILLS  # of each process at most: kills are added until every point of a purchase was hit
PRICE = sm.Price("EUR", 2500)
TRIES = 3 * MAX_KILLS  # purchases of the SIGKILL test at most (one that ends before its kill is not killed)
SEATS = ("A1", "A2", "B1", "B2", "C1", "C2", "C3", "D1", "D2", "D3", "D4", "E1", "F1", "G1")
SEATS += tuple(f"K{i}" for i in range(TRIES + 1))


@dataclass
class World:
    net: TrnNet
    tickets: HostProc
    broker: Service
    broker_cert: bytes
    vendor_cert: bytes
    roots: list[bytes]
    cardnet: Callable[..., subprocess.CompletedProcess[str]] = cardnet  # `cardnet ARGS` (the fixture's: forked)

    @property
    def url(self) -> str:
        """The ticketing server's address: it listens on ports the OS picks, new ones at every start (none can be
        taken by another test between a pick and the bind), and says them on its ready line."""
        return str(json.loads(self.tickets.ready_line)["ready"]["http"])

    @property
    def broker_addr(self) -> str:
        return self.broker.address


# what the ticketing server, the buyers' hosts and `cardnet wallet buy` import, for the forker they start from
MODULES = (
    *forkhost.CLI_MODULES,
    "cardnet.cli.wallet_buy",
    "cardnet.cli.ticketing",
    "cardnet.services.ticketing.server",
    "cardnet.applets.speed.purse",
    "cardnet.applets.speed.conductor",
)


@pytest.fixture(scope="module")
def forker() -> Iterator[Forker]:
    with forkhost.forker(MODULES) as f:
        yield f


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, forker: Forker) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("ticketing")
    net = TrnNet(tmp, BUYERS)
    for b in BUYERS:  # the buyers' cards pay with SPEED too
        hp = net.hosts[b]
        hp.config.write_text(hp.config.read_text().replace('applets = ["trn"]', 'applets = ["trn", "purse", "speed"]'))
    # the ticketing server's device, the broker's store (and SAM) and the vendor's store
    made = make_ticketing(net, {b: sm.Price("EUR", max(100_000, 2_500 * (TRIES + 2))) for b in BUYERS}, sam_pin=PIN)
    device, device_cert, bcert, vcert, roots = (made.device, made.device_cert, made.broker_cert, made.vendor_cert,
                                                made.roots)  # fmt: skip
    broker = Service(tmp, "speed", "broker", "run", "--store", str(tmp / "broker.db"), "--sam-store",
                     str(tmp / "sam.db"), "--pin", PIN, "--listen", "127.0.0.1:0")  # fmt: skip
    tickets = HostProc("tickets", tmp, 0, device.domain, ("ticketing", "run", "--json"), {"CARDNET_PIN": PIN})
    seats = ", ".join(f'"{s}"' for s in SEATS)
    tickets.config.write_text(
        'name = "Cup final tickets"\nlisten = "127.0.0.1:0"\nspeed_listen = "127.0.0.1:0"\n'
        f'store = "tickets.db"\nhost = "device.toml"\ntransfer_timeout_s = 20\n'
        "max_unpaid_per_card = 10000\n\n"  # the SIGKILL test leaves some of gus's sales unpaid (killed before paid)
        f'[[events]]\nid = "final"\nname = "Cup final"\ndate = "2027-05-01 20:00"\nprice = "25.00 EUR"\n'
        f"seats = [{seats}]\n"
    )
    # The SIGKILL test restarts the server and gus's host 100 times and more: every start but the first and every
    # tenth is a fork of the forker (tests/integration/forkhost.py), a process of its own all the same
    forkhost.forked(net.hosts, forker)
    tickets = forkhost.ForkedHost.of(tickets, forker)
    w = World(net, tickets, broker, bcert, vcert, roots, ForkedCli(forker))  # (and 3 of 4 commands: forks)
    with net:
        try:
            broker.start()
            tickets.start()
            asyncio.run(_setup(w, device_cert))
            yield w
        finally:
            tickets.stop()
            broker.stop()


async def _setup(w: World, device_cert: bytes) -> None:
    await w.net.setup_trace()
    assert (await w.net.ask("authority", ADD_AGENT, cert=device_cert))["ok"]
    for b in BUYERS:
        async with await _wallet(w, b) as wallet:
            assert await install_key(wallet, w.broker_addr)
            if b != "carol":
                amount = 2_500 * (TRIES + 1) if b == "gus" else 10_000  # gus buys once a try
                assert await load(wallet, w.broker_addr, sm.Price("EUR", amount), f"C-{b}") == 1


async def _wallet(w: World, buyer: str) -> Wallet:
    return await Wallet.open(w.net.hosts[buyer].socket, pin=PIN, card=w.net.uids[buyer].domain)


async def _buy(w: World, buyer: str, seat: str) -> bytes:
    """Buy ``seat`` with SPEED (aggressive mode: the list price); the PaymentOrderID and the broker's receipt."""
    async with await _wallet(w, buyer) as wallet:
        got = await Customer(wallet, b"", w.roots).buy(
            _speed(w), w.broker_addr, [f"final/{seat}"], broker_cert=w.broker_cert, mode="aggressive",
            vendor_cert=w.vendor_cert, price=PRICE,
        )  # fmt: skip
    return got.poid + got.receipt


def _mine(receipt: bytes) -> dict[str, str]:
    """The header that shows a sale's receipt: its page and its delivery open only with it."""
    return dict([receipt_header(receipt)])


def _speed(w: World) -> str:
    return str(httpx.get(w.url + "/").json()["speed"])


async def _balance(w: World, buyer: str) -> int:
    async with await _wallet(w, buyer) as wallet:
        got = await wallet.ask(pa.BALANCE, pa.BALANCES)
    return int({a["currency"]: a["balance"] for a in got["accounts"]}.get("EUR", 0))


async def _enabled(w: World, buyer: str, oid: bytes, timeout_s: float = 20.0) -> None:
    """Wait until ``oid`` is enabled on ``buyer``'s card (committed and traced with the authority)."""
    async with asyncio.timeout(timeout_s):
        while (await w.net.tokens(buyer)).get(oid) != "enabled":
            await asyncio.sleep(0.05)


def test_pages_for_people_and_json_for_programs(world: World) -> None:
    with httpx.Client(base_url=world.url) as c:
        info = c.get("/").json()
        assert info["name"] == "Cup final tickets" and info["events"][0]["id"] == "final"
        assert base64.b64decode(info["vendor_cert"]) == world.vendor_cert
        page = c.get("/", headers={"Accept": "text/html"})
        assert page.headers["content-type"].startswith("text/html") and 'href="/events/final"' in page.text
        seats = c.get("/events/final").json()
        assert [s["seat"] for s in seats["seats"]] == list(SEATS) and seats["price"] == "25.00 EUR"
        assert c.get("/events/nope").status_code == 404
        assert c.get("/tickets/zz").status_code == 400
        assert c.get("/tickets/" + "00" * 40).json()["error"] == "unpaid"  # no receipt: the same for any sale
        assert c.get("/tickets/" + "00" * 40, headers=_mine(b"r")).json()["error"] == "no_sale"
        assert c.post("/events/final").status_code == 405
        r = c.get("/", headers={"Connection": "Upgrade", "Upgrade": "websocket"})
        assert r.status_code == 400 and r.json()["error"] == "bad_upgrade"


def test_a_purchase_paid_with_speed_is_delivered_over_the_upgraded_connection(world: World) -> None:
    async def go() -> None:
        before = await _balance(world, "alice")
        got = await _buy(world, "alice", "A1")
        poid, receipt = got[:40], got[40:]
        assert await _balance(world, "alice") == before - PRICE.amount
        async with httpx.AsyncClient(base_url=world.url) as c:
            assert (await c.get("/events/final")).json()["seats"][0] == {"seat": "A1", "product": "final/A1",
                                                                         "free": False}  # fmt: skip
            r = await c.post(f"/tickets/{poid.hex()}")  # no receipt: the server does not know it is paid
            assert r.status_code == 402 and r.json()["error"] == "unpaid"
            body = {"receipt": base64.b64encode(receipt).decode()}
            r = await c.post(f"/tickets/{poid.hex()}", json=body)  # paid now, but a ticket needs TRN
            assert r.status_code == 426 and r.headers["upgrade"] == "TRN"
            assert (await c.get(f"/tickets/{poid.hex()}", headers=_mine(receipt))).json()["state"] == "paid"
        # the retry (keyed by the payment, opened by the receipt); the buyer's program relays the frames
        done = await receive_ticket(world.url, poid, world.net.hosts["alice"].socket, receipt=receipt)
        assert done.oid == ticket_oid(poid) and done.to_card > 0 and done.to_server > 0
        await _enabled(world, "alice", done.oid)
        async with httpx.AsyncClient(base_url=world.url) as c:
            assert (await c.get(f"/tickets/{poid.hex()}", headers=_mine(receipt))).json()["state"] == "delivered"
            r = await c.post(f"/tickets/{poid.hex()}", json=body)  # asked again: delivered already, nothing to send
            assert r.status_code == 200 and r.json()["state"] == "delivered"

    asyncio.run(go())


def test_an_unpaid_sale_is_never_delivered(world: World) -> None:
    async def go() -> None:
        paid = await _buy(world, "bob", "A2")
        with pytest.raises(PurchaseError):  # carol's purse is empty: the seat is billed, never paid
            await _buy(world, "carol", "B2")
        async with httpx.AsyncClient(base_url=world.url) as c:
            sales = [t for t in (await c.get("/events/final")).json()["seats"] if t["seat"] == "B2"]
            assert sales == [{"seat": "B2", "product": "final/B2", "free": False}]
        carol_poid = await _poid_of_seat(world, "B2")
        with pytest.raises(UpgradeRefused) as info:
            await receive_ticket(world.url, carol_poid, world.net.hosts["carol"].socket)
        assert info.value.status == 402 and info.value.error == "unpaid"
        with pytest.raises(UpgradeRefused) as info:  # bob's receipt does not pay carol's sale
            await receive_ticket(world.url, carol_poid, world.net.hosts["carol"].socket, receipt=paid[40:])
        assert info.value.status == 402 and info.value.error == "bad_receipt"
        async with httpx.AsyncClient(base_url=world.url) as c:
            assert (await c.get(f"/tickets/{carol_poid.hex()}")).json()["error"] == "unpaid"
        assert _ticket(world, carol_poid).state == "sold"
        assert ticket_oid(carol_poid) not in await world.net.tokens("carol")

    asyncio.run(go())


def _ticket(w: World, poid: bytes) -> Ticket:
    """The sale's ticket as the server's store holds it."""
    store = SqliteStore(str(w.net.tmp / "tickets.db"))
    try:
        with store.transaction() as txn:
            raw = txn.get("tk.ticket", poid)
    finally:
        store.close()
    assert raw is not None
    return Ticket.decode(poid, raw)


async def _poid_of_seat(w: World, seat: str) -> bytes:
    store = SqliteStore(str(w.net.tmp / "tickets.db"))
    try:
        with store.transaction() as txn:
            got = txn.get("tk.seat", f"final/{seat}".encode())
    finally:
        store.close()
    assert got is not None
    return got


def test_concurrent_buyers_of_one_seat_one_gets_it_the_others_pay_nothing(world: World) -> None:
    racers = ("alice", "bob", "dan", "erin", "fay")

    async def go() -> None:
        before = {b: await _balance(world, b) for b in racers}
        results = await asyncio.gather(*(_buy(world, b, "B1") for b in racers), return_exceptions=True)
        after = {b: await _balance(world, b) for b in racers}
        won = [b for b, r in zip(racers, results, strict=True) if isinstance(r, bytes)]
        lost = [r for r in results if not isinstance(r, bytes)]
        assert len(won) == 1 and len(lost) == len(racers) - 1, results
        assert all(isinstance(r, PurchaseError) and r.reason == "seat_sold" for r in lost), lost
        for b in racers:
            assert after[b] == before[b] - (PRICE.amount if b in won else 0)
        async with httpx.AsyncClient(base_url=world.url) as c:
            b1 = [s for s in (await c.get("/events/final")).json()["seats"] if s["seat"] == "B1"]
        assert b1 == [{"seat": "B1", "product": "final/B1", "free": False}]

    asyncio.run(go())


@pytest.mark.parametrize("cut_after", [0, 3, 4])
def test_a_paid_ticket_survives_a_dropped_connection_and_a_retry_resumes_it(world: World, cut_after: int) -> None:
    """The connection drops after the receipt (before the session, after it, after the copy reached the card):
    asking again with the same PaymentOrderID finishes the same transfer; the card ends with the one ticket."""

    async def go() -> None:
        buyer, seat = {0: ("dan", "C1"), 3: ("erin", "C2"), 4: ("fay", "C3")}[cut_after]  # fresh sessions
        got = await _buy(world, buyer, seat)
        poid, receipt = got[:40], got[40:]
        async with httpx.AsyncClient(base_url=world.url) as c:  # the receipt is recorded, no ticket yet
            assert (await c.post(f"/tickets/{poid.hex()}", json={"receipt": base64.b64encode(receipt).decode()})
                    ).status_code == 426  # fmt: skip
        await cut_relay(world.url, world.net.hosts[buyer].socket, poid, receipt, cut_after)
        async with httpx.AsyncClient(base_url=world.url) as c:
            assert (await c.get(f"/tickets/{poid.hex()}", headers=_mine(receipt))).json()["state"] in ("minted", "sent")
        done = await receive_ticket(world.url, poid, world.net.hosts[buyer].socket, receipt=receipt)
        await _enabled(world, buyer, done.oid)
        async with httpx.AsyncClient(base_url=world.url) as c:
            assert (await c.get(f"/tickets/{poid.hex()}", headers=_mine(receipt))).json()["state"] == "delivered"

    asyncio.run(go())


def test_a_ticket_the_buyers_card_refuses_comes_back_and_a_retry_sends_it_again(world: World) -> None:
    """The buyer's card takes tokens of other issuers only: it answers the copy ``copied false``, the device
    takes its ticket back, the server ends the connection and says why; once the owner accepts this issuer, the
    retry delivers it."""

    async def go() -> None:
        got = await _buy(world, "alice", "D1")
        poid, receipt = got[:40], got[40:]
        socket = world.net.hosts["alice"].socket
        async with await _wallet(world, "alice") as wallet:
            await wallet.policy(issuers=[world.net.uids["agent"]])  # not the ticketing server's device
        try:
            async with asyncio.timeout(10):  # ended by the refusal, not by the server's 20 s transfer timeout
                relayed = await receive_ticket(world.url, poid, socket, receipt=receipt)
            async with httpx.AsyncClient(base_url=world.url) as c:
                shown = (await c.get(f"/tickets/{poid.hex()}", headers=_mine(receipt))).json()
            assert shown["state"] == "sent" and shown["refused"] == "issuer_not_accepted"
            assert relayed.oid not in await world.net.tokens("alice")
        finally:
            async with await _wallet(world, "alice") as wallet:
                await wallet.policy(issuers=[])  # any issuer again
        relayed = await receive_ticket(world.url, poid, socket, receipt=receipt)
        await _enabled(world, "alice", relayed.oid)
        async with httpx.AsyncClient(base_url=world.url) as c:
            assert (await c.get(f"/tickets/{poid.hex()}", headers=_mine(receipt))).json()["state"] == "delivered"

    asyncio.run(go())


def test_buy_ticket_does_the_whole_purchase_from_the_servers_pages(world: World) -> None:
    """The buyer's library alone: the server's pages, SPEED at the list price, the upgrade and the relay."""

    async def go() -> None:
        async with await _wallet(world, "dan") as wallet:
            how: dict[str, Any] = {
                "card": wallet,
                "app_socket": world.net.hosts["dan"].socket,
                "broker": world.broker_addr,
                "broker_cert": world.broker_cert,
                "roots": world.roots,
            }
            with pytest.raises(TicketError) as info:
                await buy_ticket(world.url, "final", "Z9", **how)
            assert info.value.reason == "no_seat"
            got = await buy_ticket(world.url, "final", "D2", **how)
            assert got.price == "25.00 EUR" and got.oid == ticket_oid(got.poid)
            await _enabled(world, "dan", got.oid)
            # paid, and then the delivery fails (here: no host at the relay's socket): the error names the sale
            journal = Journal(world.net.tmp / "dan-d4-purchases")
            with pytest.raises(TicketError) as info:
                await buy_ticket(world.url, "final", "D4", **(how | {"app_socket": str(world.net.tmp / "gone.sock"),
                                                                     "journal": journal}))  # fmt: skip
        assert info.value.reason == "not_delivered"
        sale = bytes.fromhex(str(info.value).split("(sale ")[1].split(")")[0])
        receipt = next(r.receipt for r in journal.all() if r.poid == sale)  # kept by the purchase
        assert receipt is not None
        relayed = await receive_ticket(world.url, sale, world.net.hosts["dan"].socket, receipt=receipt)  # brings it
        await _enabled(world, "dan", relayed.oid)

    asyncio.run(go())


def _wallet_config(w: World, buyer: str) -> str:
    """A wallet config for ``buyer`` (what `cardnet wallet init` would write), beside the stores."""
    tmp = w.net.tmp
    (tmp / "broker.pem").write_bytes(pki.chain_to_pem([pki.cert_from_der(w.broker_cert)]))
    (tmp / "ca.pem").write_bytes(pki.chain_to_pem([pki.cert_from_der(w.roots[0])]))
    path = tmp / f"{buyer}-wallet.toml"
    path.write_text(
        f'socket = "{w.net.hosts[buyer].socket}"\ncard = "{w.net.uids[buyer].domain.hex()}"\n'
        f'broker = "{w.broker_addr}"\nbroker_cert = "broker.pem"\nca_cert = "ca.pem"\n'
        f'purchases = "{buyer}-purchases"\n'
    )
    return str(path)


async def _web_shop_buys(w: World, config: str, buyer: str, seat: str) -> HttpError:
    """What the web wallet's shop (``POST /api/shop/buy``: web/shop.py) answers ``buyer`` buying ``seat`` of final,
    a seat it cannot have."""
    socket = w.net.hosts[buyer].socket
    wallet = await Wallet.open(socket, pin=PIN)
    try:
        with pytest.raises(HttpError) as err:
            await Shop(load_wallet_config(Path(config)), socket).buy(wallet, w.url, "final", seat)
        return err.value
    finally:
        await wallet.close()


def test_cardnet_wallet_buy_buys_a_seat_and_the_ticket_lands_on_the_card(world: World) -> None:
    erin = ("--config", _wallet_config(world, "erin"), "--pin", PIN, "--json")
    got = json.loads(world.cardnet("wallet", "buy", world.url, "--event", "final", "--seat", "D3", *erin).stdout)
    assert got["state"] == "enabled" and got["price"] == "25.00 EUR" and got["seat"] == "D3"
    assert asyncio.run(world.net.tokens("erin"))[bytes.fromhex(got["oid"])] == "enabled"
    shown = world.tickets.log()  # the operator's screen: each sale paid, each ticket delivered
    assert "paid (seat final/D3)" in shown and "ticket final/D3 delivered to" in shown, shown[-2000:]
    again = json.loads(world.cardnet("wallet", "buy", world.url, "--poid", got["poid"], *erin).stdout)
    assert again["state"] == "enabled" and again["oid"] == got["oid"]  # delivered already: nothing more to do
    # buying her own seat again: it is hers (her wallet's purchases say so), not "someone bought that seat first"
    r = world.cardnet("wallet", "buy", world.url, "--event", "final", "--seat", "D3", *erin, check=False)
    mine = json.loads(r.stdout)["error"]
    assert r.returncode == 2 and mine["reason"] == "seat_sold" and mine["yours"] is True, mine
    assert mine["message"].startswith("seat D3 of final is yours already") and got["poid"] in mine["message"], mine
    assert "someone" not in mine["hint"] and f"--poid {got['poid']}" in mine["hint"], mine
    said = asyncio.run(_web_shop_buys(world, erin[1], "erin", "D3"))  # the web wallet's shop says so too
    assert said.reason == "seat_sold" and said.message.startswith("seat D3 of final is yours already"), said.message
    assert got["poid"] in said.message and "someone" not in said.message, said.message
    fay = ("--config", _wallet_config(world, "fay"), "--pin", PIN, "--json")
    r = world.cardnet("wallet", "buy", world.url, "--event", "final", "--seat", "D3", *fay, check=False)
    assert r.returncode != 0 and json.loads(r.stdout)["error"]["reason"] == "seat_sold"
    assert json.loads(r.stdout)["error"]["hint"].startswith("someone else bought that seat first"), r.stdout
    said = asyncio.run(_web_shop_buys(world, fay[1], "fay", "D3"))
    assert said.reason == "seat_sold" and "someone else bought that seat first" in said.message, said.message
    r = world.cardnet("wallet", "buy", world.url, "--event", "final", "--seat", "D3", "--limit", "5.00 EUR", *fay,
                check=False)  # fmt: skip
    assert r.returncode != 0 and json.loads(r.stdout)["error"]["reason"] == "over_limit"
    r = world.cardnet("wallet", "buy", world.url, "--config", fay[1], "--pin", PIN, check=False)  # no seat: words
    assert r.returncode != 0 and "--event and --seat" in r.stderr and "Traceback" not in r.stderr


def test_a_paid_ticket_whose_delivery_was_cut_is_shown_owed_and_wallet_recover_brings_it(world: World) -> None:
    """A purchase paid whose delivery failed (here: no host at the relay's socket; a crash or a lost connection after
    the receipt alike) is kept with its server's address: `cardnet wallet show` lists it under way and `cardnet
    wallet recover` fetches the ticket, once, with nothing paid again."""
    from cardnet.cli.speed import JOURNAL

    tmp = world.net.tmp
    purchases = tmp / "erin-owed-purchases"
    config = tmp / "erin-owed-wallet.toml"
    (tmp / "broker.pem").write_bytes(pki.chain_to_pem([pki.cert_from_der(world.broker_cert)]))
    (tmp / "ca.pem").write_bytes(pki.chain_to_pem([pki.cert_from_der(world.roots[0])]))
    config.write_text(
        f'socket = "{world.net.hosts["erin"].socket}"\ncard = "{world.net.uids["erin"].domain.hex()}"\n'
        f'broker = "{world.broker_addr}"\nbroker_cert = "{tmp / "broker.pem"}"\nca_cert = "{tmp / "ca.pem"}"\n'
        f'purchases = "{purchases}"\n'
    )
    erin = ("--config", str(config), "--pin", PIN, "--json")

    async def cut() -> bytes:
        async with await _wallet(world, "erin") as wallet:
            with pytest.raises(TicketError) as info:
                await buy_ticket(world.url, "final", "G1", card=wallet, app_socket=str(tmp / "gone.sock"),
                                 broker=world.broker_addr, broker_cert=world.broker_cert, roots=world.roots,
                                 journal=Journal(purchases / JOURNAL))  # fmt: skip
        assert info.value.reason == "not_delivered"
        assert info.value.poid is not None
        return info.value.poid

    poid = asyncio.run(cut())
    paid = asyncio.run(_balance(world, "erin"))
    shown = json.loads(world.cardnet("wallet", "show", *erin).stdout)
    assert shown["tickets_owed"] == [{"id": poid.hex(), "products": "final/G1", "url": world.url}], shown
    said = world.cardnet("wallet", "show", *erin[:-1]).stdout  # a person reads it under way, and what to do
    assert "ticket delivery" in said and "paid, not delivered" in said and "wallet recover" in said, said
    assert ticket_oid(poid) not in asyncio.run(world.net.tokens("erin"))
    rows = json.loads(world.cardnet("wallet", "recover", *erin).stdout)["recovered"]
    got = [r for r in rows if r["what"] == "ticket delivery"]
    assert len(got) == 1 and got[0]["id"] == poid.hex() and got[0]["finished"], rows
    asyncio.run(_enabled(world, "erin", ticket_oid(poid)))
    assert json.loads(world.cardnet("wallet", "show", *erin).stdout)["tickets_owed"] == []
    again = json.loads(world.cardnet("wallet", "recover", *erin).stdout)["recovered"]
    assert not [r for r in again if r["what"] == "ticket delivery"], again  # owed no more: nothing fetched twice
    assert asyncio.run(_balance(world, "erin")) == paid  # and nothing paid again


def test_a_purse_that_cannot_pay_is_refused_before_the_seat_is_held(world: World) -> None:
    """Carol's purse holds nothing (a new user who buys before loading): ``cardnet wallet buy`` says so and what to do,
    and the seat stays free. Before, the vendor billed her, claiming the seat for that sale, then her card refused to
    pay: the seat stayed held for good by a bill nobody pays (SPEED bills carry no deadline)."""
    carol = ("--config", _wallet_config(world, "carol"), "--pin", PIN)
    r = world.cardnet("wallet", "buy", world.url, "--event", "final", "--seat", "E1", *carol, "--json", check=False)
    error = json.loads(r.stdout)["error"]
    assert r.returncode != 0 and error["reason"] == "insufficient", r.stdout
    assert "holds 0.00 EUR, the seat costs 25.00 EUR" in error["message"] and "wallet load" in error["hint"]
    r = world.cardnet("wallet", "buy", world.url, "--event", "final", "--seat", "E1", *carol, check=False)
    assert r.returncode != 0 and "nothing was bought" in r.stderr and "Traceback" not in r.stderr
    seat = httpx.get(world.url + "/events/final?seat=E1").json()["seats"]
    assert seat == [{"seat": "E1", "product": "final/E1", "free": True}]


def test_wallet_buy_at_an_address_where_no_ticketing_server_answers_says_so(world: World) -> None:
    """A host's TCP port and the ticketing server's own SPEED port (both speak cardnet frames: they close the
    connection on an HTTP request), a program that answers with bytes that are not HTTP, and a closed port, given as
    the server's address: one error that says the address does not answer as a ticketing server (or that nothing
    answers there) and what to do, for people and for --json. Before, h11's words: 'can't handle event type
    ConnectionClosed when role=SERVER and state=SEND_RESPONSE', 'illegal request line'."""
    dan = ("--config", _wallet_config(world, "dan"), "--pin", PIN)
    buy = ("--event", "final", "--seat", "E1")
    speed = str(json.loads(world.tickets.ready_line)["ready"]["speed"])

    def refused(address: str, *how: str) -> tuple[dict[str, Any], str]:
        r = world.cardnet("wallet", "buy", f"http://{address}", *how, *dan, "--json", check=False)
        error = json.loads(r.stdout)["error"]
        assert r.returncode == 2 and "check the address" in error["hint"], r.stdout
        human = world.cardnet("wallet", "buy", f"http://{address}", *how, *dan, check=False)
        assert human.returncode == 2 and error["message"] in human.stderr and error["hint"] in human.stderr
        for internals in ("Traceback", "h11", "event type", "illegal", "Errno"):
            assert internals not in r.stdout + human.stderr, internals
        return error, human.stderr

    for address in (f"127.0.0.1:{world.net.ports['alice']}", speed):
        error, _ = refused(address, *buy)
        assert error["reason"] == "broken" and error["message"] == (
            f"http://{address} does not answer as a ticketing server: {address} closed the connection without an "
            "answer: no HTTP server answers there (another program's port, e.g. a host's?), or it stopped"
        ), error
        error, _ = refused(address, "--poid", "ab" * 40)  # finishing a delivery: the upgrade's request
        assert error["reason"] == "broken" and "closed the connection without an answer" in error["message"], error
    closed = f"127.0.0.1:{free_port()}"
    error, _ = refused(closed, *buy)
    assert error["message"].endswith(f"does not answer as a ticketing server: nothing answers at {closed} (connection "
                                     "refused)"), error  # fmt: skip

    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")  # another protocol's greeting
        await reader.read(1024)
        writer.close()

    async def other_protocol() -> None:
        server = await asyncio.start_server(banner, "127.0.0.1", 0)
        address = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with server:
            for how in (buy, ("--poid", "ab" * 40)):
                error, human = await asyncio.to_thread(refused, address, *how)
                assert error["reason"] == "not_ticketing", error
                assert error["message"] == f"http://{address} does not answer as a ticketing server: what answers " \
                    "there does not speak HTTP (another program's port?)"  # fmt: skip
                assert "(reason: not_ticketing)" in human

    asyncio.run(other_protocol())


def test_wallet_buy_with_a_limit_reads_no_page_of_the_seat_map(world: World) -> None:
    """``--limit`` is checked against the price the purchase reads anyway (``/events/E?seat=S``, one seat's sale),
    not a page of the seat map fetched first for its price (1,000 seats' sales read by the server a purchase). The
    requests go through a TCP relay that notes each request line."""
    lines: list[str] = []
    host, port = server_address(world.url)

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.readline()
        lines.append(first.decode("latin-1").strip())
        up_reader, up_writer = await asyncio.open_connection(host, port)
        up_writer.write(first)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    async def go() -> None:
        server = await asyncio.start_server(relay, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        fay = ("--config", _wallet_config(world, "fay"), "--pin", PIN, "--json")
        async with server:
            r = await asyncio.to_thread(cardnet, "wallet", "buy", url, "--event", "final", "--seat", "E1",
                                        "--limit", "5.00 EUR", *fay, check=False)  # fmt: skip
        error = json.loads(r.stdout)["error"]
        assert error["reason"] == "over_limit" and "asks 25.00 EUR a seat, over your limit of 5.00 EUR" in error[
            "message"], error  # fmt: skip
        assert "GET /events/final?seat=E1 HTTP/1.1" in lines, lines
        assert not [x for x in lines if x.startswith("GET /events/") and "?" not in x.split()[1]], lines

    asyncio.run(go())
    seat = httpx.get(world.url + "/events/final?seat=E1").json()["seats"]
    assert seat == [{"seat": "E1", "product": "final/E1", "free": True}]  # nothing bought


POINTS = ("http", "speed", "upgrade", "trn")  # where a kill landed in a purchase, in the order they come


@pytest.mark.slow
def test_the_server_or_the_buyers_host_killed_at_random_points_of_purchases_loses_nothing(world: World) -> None:
    """SIGKILL the ticketing server or the buyer's host (in turn) at a random point of a purchase, KILLS times each
    and more (up to MAX_KILLS) until the kills of each hit every point of a purchase (:data:`POINTS`: the pages, the
    SPEED delivery and payment, the receipt's POST with the upgrade and the mint, the TRN transfer; the delays are
    steered, :class:`~killwindow.PointWindow`); a purchase that ended before its kill is not killed. Start the
    process again and let the buyer finish (the SPEED journal pays a delivered purchase, the retry keyed by the
    payment brings the ticket). Then the purse paid exactly for the sales whose tickets are on the card, every paid
    ticket is there, no unpaid one is, and no seat is sold twice (one sale a seat: the store's key)."""
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    journal = Journal(world.net.tmp / "gus-journal")
    socket = world.net.hosts["gus"].socket
    victims = {"server": world.tickets, "buyer's host": world.net.hosts["gus"]}
    kills = dict.fromkeys(victims, 0)  # each during a purchase
    hits: dict[str, dict[str, int]] = {v: dict.fromkeys(POINTS, 0) for v in victims}
    delivered: set[bytes] = set()  # sales whose ticket is on the card, enabled

    def wanted(victim: str) -> bool:
        covered = kills[victim] >= KILLS and min(hits[victim].values()) > 0
        return not covered and kills[victim] < MAX_KILLS

    async def go() -> None:
        start = await _balance(world, "gus")
        wallet = await _wallet(world, "gus")
        how: dict[str, Any] = {"app_socket": socket, "broker": world.broker_addr, "broker_cert": world.broker_cert,
                               "roots": world.roots, "journal": journal}  # fmt: skip
        turn = bought = 0
        try:
            t0 = time.monotonic()
            await buy_ticket(world.url, "final", "K0", card=wallet, **how)  # undisturbed: how long one takes
            window = PointWindow(rng, POINTS, time.monotonic() - t0)
            while any(wanted(v) for v in victims) and bought < TRIES:
                victim = [v for v in victims if wanted(v)][turn % 2 if all(map(wanted, victims)) else 0]
                turn += 1
                bought += 1
                seat = f"K{bought}"
                before = set(journal.path.glob("*.purchase"))
                task = asyncio.create_task(buy_ticket(world.url, "final", seat, card=wallet, timeout_s=10, **how))
                delay_s = window.draw(min(hits[victim], key=hits[victim].__getitem__))
                await asyncio.sleep(delay_s)
                if task.done():  # over before the kill: no point of a purchase to hit, and a restart saved
                    window.saw(None, delay_s)
                    await task
                    continue
                kills[victim] += 1
                # The kill and the reading of where it landed, with this loop (the buyer's program) held still: the
                # journal is as the kill found it; the server's store too when it is the victim (frozen), else it is
                # read just before (it only moves forward)
                if victim == "server":
                    victims[victim].kill()
                    point = _point(world, journal, before, seat)
                else:
                    point = _point(world, journal, before, seat)
                    victims[victim].kill()
                hits[victim][point] += 1
                window.saw(point, delay_s)
                with contextlib.suppress(Exception):
                    await task
                await asyncio.to_thread(victims[victim].restart)
                if victim != "server":  # the wallet's connection died with the host
                    with contextlib.suppress(Exception):
                        await wallet.close()
                    wallet = await _wallet(world, "gus")
                await Customer(wallet, b"", world.roots, journal=journal).recover()  # pays a delivered purchase
                for rec in journal.all():
                    if rec.poid is not None and rec.receipt is not None and rec.poid not in delivered:  # owed
                        relayed = await receive_ticket(world.url, rec.poid, socket, receipt=rec.receipt)
                        await _enabled(world, "gus", relayed.oid)
                        delivered.add(rec.poid)
        finally:
            with contextlib.suppress(Exception):
                await wallet.close()
        print(f"\nseed {seed}: {bought} purchases, kills {kills}, points hit {hits}")
        for v in victims:
            assert kills[v] >= KILLS, f"seed {seed}: only {kills[v]} kills of the {v} during a purchase"
            assert min(hits[v].values()) > 0, f"seed {seed}: kills of the {v} missed a point of purchases: {hits[v]}"
        sold = {seat: poid for seat, poid in (await _sales(world)).items() if seat.startswith("K")}
        paid = {rec.poid for rec in journal.all() if rec.poid is not None and rec.receipt is not None}
        held = await world.net.tokens("gus")
        assert paid <= set(sold.values()), f"seed {seed}: a payment for a sale the server does not have"
        for poid in sold.values():
            want = "enabled" if poid in paid else None
            assert held.get(ticket_oid(poid)) == want, f"seed {seed}: sale {poid.hex()} paid={poid in paid}"
        assert set(held) == {ticket_oid(poid) for poid in paid}, f"seed {seed}: a token on the card is no paid ticket"
        assert start - await _balance(world, "gus") == PRICE.amount * len(paid), f"seed {seed}"

    asyncio.run(go())


def _point(w: World, journal: Journal, before: set[Path], seat: str) -> str:
    """Where the purchase of ``seat`` is (:data:`POINTS`), from the buyer's journal and the server's store: no sale
    yet (the pages, the SPEED request on its way), the sale made and not yet receipted (the SPEED delivery and
    payment), receipted and not yet minted (the receipt's POST, the upgrade, the mint), minted (the transfer)."""
    new = [journal.load(bytes.fromhex(p.stem)) for p in set(journal.path.glob("*.purchase")) - before]
    if new and new[0].receipt is not None:
        t = _ticket(w, new[0].poid)
        return "upgrade" if t is None or t.state in ("sold", "paid") else "trn"
    return "speed" if _sale_of(w, seat) is not None else "http"


def _ticket(w: World, poid: bytes | None) -> Ticket | None:
    """Sale ``poid``'s ticket, from the server's store."""
    store = SqliteStore(str(w.net.tmp / "tickets.db"))
    try:
        with store.transaction() as txn:
            raw = None if poid is None else txn.get("tk.ticket", poid)
    finally:
        store.close()
    return None if raw is None or poid is None else Ticket.decode(poid, raw)


def _sale_of(w: World, seat: str) -> bytes | None:
    """The sale holding ``seat``, from the server's store."""
    store = SqliteStore(str(w.net.tmp / "tickets.db"))
    try:
        with store.transaction() as txn:
            return txn.get("tk.seat", f"final/{seat}".encode())
    finally:
        store.close()


async def _sales(w: World) -> dict[str, bytes]:
    """Seat -> the sale holding it, from the server's store (one sale a seat: the store's key)."""
    store = SqliteStore(str(w.net.tmp / "tickets.db"))
    try:
        with store.transaction() as txn:
            return {k.decode().removeprefix("final/"): v for k, v in txn.scan("tk.seat", b"final/")}
    finally:
        store.close()


def test_wallet_buy_whose_broker_does_not_answer_names_it_and_what_pays_the_purchase(world: World) -> None:
    """A wrong --broker (nothing answers there): the error names the broker and that address, and the hint's
    commands, followed, finish the purchase: `cardnet speed recover --broker RIGHT` (the purchase is journalled with
    the address given, where `wallet recover` would ask again), then `wallet recover` brings the ticket. Before:
    no hint at all (BUY_HINTS had no `unreachable`)."""
    config = _wallet_config(world, "fay")
    fay = ("--config", config, "--pin", PIN)
    closed = f"127.0.0.1:{free_port()}"
    r = world.cardnet("wallet", "buy", world.url, "--event", "final", "--seat", "F1", "--broker", closed, *fay,
                      "--json", check=False)  # fmt: skip
    error = json.loads(r.stdout)["error"]
    assert r.returncode == 2 and error["reason"] == "unreachable", error
    assert error["message"].startswith(f"cannot reach the broker at {closed}"), error
    hint = error["hint"]
    assert hint.startswith(f"check that the broker runs at {closed} (--broker); "), hint
    assert "`cardnet wallet recover` pays it once the broker answers there and brings the ticket" in hint, hint
    [recover] = re.findall(r"`(cardnet speed recover [^`]*)`", hint)
    assert "--broker HOST:PORT" in recover and "--socket" in recover, hint
    shown = json.loads(world.cardnet("wallet", "show", *fay, "--json").stdout)
    assert len(shown["purchases_pending"]) == 1, shown  # delivered, waiting to be paid
    # the seat bought again meanwhile: it is held for her own purchase, and what finishes it is said
    r = world.cardnet("wallet", "buy", world.url, "--event", "final", "--seat", "F1", *fay, "--json", check=False)
    mine = json.loads(r.stdout)["error"]
    assert r.returncode == 2 and mine["reason"] == "seat_sold" and mine["yours"] is True, mine
    assert mine["message"].startswith("seat F1 of final is held for your own purchase of it"), mine
    assert mine["hint"] == "`cardnet wallet recover` pays it (it waits in your wallet's purchases) and brings the " \
        "ticket", mine  # fmt: skip
    argv = shlex.split(recover.replace("HOST:PORT", world.broker_addr))[1:]
    done = world.cardnet(*argv, "--pin", PIN, "--json", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert hint.endswith("pays it through the right one, then `cardnet wallet recover` brings the ticket"), hint
    [paid] = json.loads(done.stdout)["finished"]
    brought = json.loads(world.cardnet("wallet", "recover", *fay, "--json").stdout)
    rows = [r for r in brought["recovered"] if r["what"] == "ticket delivery"]
    assert [(r["id"], r["finished"]) for r in rows] == [(paid["poid"], True)], brought
    listed = json.loads(world.cardnet("wallet", "list", *fay, "--json").stdout)
    assert any(t["status"] == "enabled" and "F1" in str(t) for t in listed["tickets"]), listed
