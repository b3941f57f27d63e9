"""Millicent with real processes: a broker process, a vendor process, customers using the CLI and TCP.

Covers the issue's "done when": customers buy pages from a vendor process with
scrip bought from a broker process; double spends (concurrent, from several
connections) and theft are refused; and a vendor SIGKILLed between accepting
a scrip (durably) and replying spends it exactly once, while the customer
learns the outcome by sending the same request again.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cardnet.protocols import millicent as mc
from cardnet.services.millicent_wallet import SCRIP, SECRETS, Wallet, WalletError
from cardnet.store import SqliteStore
from cardnet.transport import dial, encode_frame
from cardnet.wire import Message, Uid

VID = "00000000000000a1"


def cardnet(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert r.returncode == 0, f"cardnet {' '.join(args)} failed: {r.stdout}{r.stderr}"
    return r


class Service:
    def __init__(self, tmp: Path, *args: str) -> None:
        self.args = args
        self.log = tmp / f"{args[1]}.log"
        self.proc: subprocess.Popen[str] | None = None
        self.address = ""

    def start(self, *extra: str) -> str:
        with open(self.log, "a") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cardnet.cli.main", *self.args, *extra],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("ready"), f"{self.args} did not start: {self.log.read_text()}"
        self.address = line.split()[-1]
        return self.address

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, object]]:
    v, b = str(tmp_path / "vendor.db"), str(tmp_path / "broker.db")
    cardnet("millicent", "vendor", "init", "--store", v, "--id", VID)
    cardnet(
        "millicent", "vendor", "add-page", "--store", v, "--name", "hello", "--price", "3", "--text", "hello, world"
    )
    cardnet("millicent", "vendor", "licence", "--store", v, "--broker", "bob", "--out", str(tmp_path / "lic.json"))
    assert (tmp_path / "lic.json").stat().st_mode & 0o777 == 0o600
    cardnet("millicent", "broker", "add-licence", "--store", b, "--file", str(tmp_path / "lic.json"))
    broker = Service(tmp_path, "millicent", "broker", "run", "--store", b, "--listen", "127.0.0.1:0")
    vendor = Service(tmp_path, "millicent", "vendor", "run", "--store", v, "--listen", "127.0.0.1:0")
    broker.start()
    try:
        yield {"tmp": tmp_path, "vendor_store": v, "broker_store": b, "broker": broker, "vendor": vendor}
    finally:
        broker.stop()
        vendor.stop()


def customer(world: dict[str, object], name: str, deposit: int = 100) -> str:
    wallet = str(world["tmp"] / f"{name}.db")  # type: ignore[operator]
    broker = world["broker"]
    assert isinstance(broker, Service)
    out = cardnet("millicent", "open", "--wallet", wallet, "--broker", broker.address).stdout
    cid = out.split("customer id ")[1].split()[0]
    cardnet(
        "millicent",
        "broker",
        "deposit",
        "--store",
        str(world["broker_store"]),
        "--customer",
        cid,
        "--amount",
        str(deposit),
    )
    return wallet


async def send_all(address: str, reqs: list[tuple[int, bytes]]) -> list[Message]:
    """Each request on its own TCP connection, all at once."""
    host, port = address.rsplit(":", 1)

    async def one(mt: int, p: bytes) -> Message:
        async with await dial(host, int(port)) as conn:
            await conn.send(Message(Uid(b"\x00" * 12, 9), Uid(b"\x00" * 12, 0), mt, p))
            return await conn.recv()

    return list(await asyncio.gather(*(one(mt, p) for mt, p in reqs)))


def test_customers_buy_pages_and_double_spends_and_theft_are_refused(world: dict[str, object]) -> None:
    vendor = world["vendor"]
    assert isinstance(vendor, Service)
    at = vendor.start()
    alice = customer(world, "alice")
    eve = customer(world, "eve")
    r = cardnet("millicent", "buy", "--wallet", alice, "--vendor", VID, "--value", "20", "--json")
    assert json.loads(r.stdout)["value"] == 20
    args = ["millicent", "spend", "--wallet", alice, "--vendor", VID, "--at", at, "--product", "hello", "--price", "3"]
    r = cardnet(*args, "--json")
    assert json.loads(r.stdout) == {"status": "ok", "change": 17, "content": "hello, world"}
    r = cardnet(*args, "--level", "3", "--json")
    assert json.loads(r.stdout)["change"] == 14
    # Eve has no scrip of her own: spend buys some from the broker first (top-up).
    assert json.loads(cardnet(*args[:3], eve, *args[4:], "--json").stdout)["change"] == 97
    listing = json.loads(cardnet("millicent", "list", "--wallet", alice, "--json").stdout)
    assert [s["value"] for s in listing["scrip"]] == [14] and listing["pending"] == 0

    # Alice's scrip, as a thief or a cheater would use it.
    astore, estore = SqliteStore(alice), SqliteStore(eve)
    with astore.transaction() as txn:
        [(_, raw)] = txn.scan(SCRIP)
        alice_secret = txn.get(SECRETS, bytes.fromhex(VID))
    with estore.transaction() as txn:
        eve_secret = txn.get(SECRETS, bytes.fromhex(VID))
    assert alice_secret is not None and eve_secret is not None
    astore.close()
    estore.close()

    def req(rid: bytes, secret: bytes) -> tuple[int, bytes]:
        return mc.make_request(raw, rid=rid, level=mc.Level.THEFT, secret=secret, price=3, product="hello")

    stolen = asyncio.run(send_all(at, [req(b"t" * 16, eve_secret)]))[0]
    assert mc.REPLY_SCHEMA.decode(stolen.param)["status"] == mc.Status.STOLEN
    # Double spending, concurrent, from eight connections: exactly one is accepted.
    reqs = [req(bytes([i]) * 16, alice_secret) for i in range(8)]
    replies = asyncio.run(send_all(at, reqs))
    statuses = [
        mc.open_reply(m.mtype, m.param, rid=bytes([i]) * 16, level=mc.Level.THEFT, secret=alice_secret).status
        for i, m in enumerate(replies)
    ]
    assert statuses.count(mc.Status.OK) == 1 and statuses.count(mc.Status.SPENT) == 7
    # The same accepted request again: the stored reply (a re-fetch), not a second spend.
    ok = statuses.index(mc.Status.OK)
    again = asyncio.run(send_all(at, [reqs[ok]]))[0]
    assert again.param == replies[ok].param
    status = json.loads(
        cardnet("millicent", "vendor", "status", "--store", str(world["vendor_store"]), "--json").stdout
    )
    assert status["spent"] == 4  # alice 2 + eve 1 + the double-spent scrip once
    broker = world["broker"]
    assert isinstance(broker, Service)
    r = cardnet(
        "millicent", "vendor", "redeem", "--store", str(world["vendor_store"]), "--broker", broker.address, "--json"
    )
    redeemed = json.loads(r.stdout)
    assert redeemed["items"] == 2 and redeemed["paid"] == (20 + 100) * 9 // 10 and redeemed["duplicates"] == 0


def test_vendor_killed_between_accepting_and_replying_spends_once_and_the_customer_learns_it(
    world: dict[str, object],
) -> None:
    vendor = world["vendor"]
    assert isinstance(vendor, Service)
    at = vendor.start("--failpoint", "kill-after-commit")
    alice = customer(world, "alice")
    cardnet("millicent", "buy", "--wallet", alice, "--vendor", VID, "--value", "10")
    args = ["millicent", "spend", "--wallet", alice, "--vendor", VID, "--at", at, "--product", "hello", "--price", "3"]
    r = cardnet(*args, check=False)
    assert r.returncode != 0  # the reply never came
    assert vendor.proc is not None and vendor.proc.wait(10) == -9  # SIGKILLed after the commit
    assert json.loads(cardnet("millicent", "list", "--wallet", alice, "--json").stdout) == {"scrip": [], "pending": 1}
    vendor.stop()
    at2 = vendor.start()  # restarted, on a new port: the pending request still names the old one
    w = Wallet(SqliteStore(alice))
    [(rid, rec)] = w.pending()
    rec["to"] = at2
    out = asyncio.run(w._finish_spend(rid, rec, _secret(alice)))
    assert out.status == mc.Status.OK and out.change == 7 and out.content == b"hello, world"
    status = json.loads(
        cardnet("millicent", "vendor", "status", "--store", str(world["vendor_store"]), "--json").stdout
    )
    assert status["spent"] == 1
    # Spending the same scrip with a new request: refused as spent.
    scrip = mc.Scrip.decode(bytes.fromhex(rec["scrip"]))
    m = mc.make_request(scrip, rid=b"n" * 16, level=mc.Level.THEFT, secret=_secret(alice), price=3, product="hello")
    reply = asyncio.run(send_all(at2, [m]))[0]
    assert mc.REPLY_SCHEMA.decode(reply.param)["status"] == mc.Status.SPENT
    listing = json.loads(cardnet("millicent", "list", "--wallet", alice, "--json").stdout)
    assert [s["value"] for s in listing["scrip"]] == [7] and listing["pending"] == 0


def _secret(wallet: str) -> bytes:
    store = SqliteStore(wallet)
    try:
        with store.transaction() as txn:
            s = txn.get(SECRETS, bytes.fromhex(VID))
    finally:
        store.close()
    assert s is not None
    return s


def test_broker_buys_scrip_in_bulk_from_the_vendor_process_and_resells_it(tmp_path: Path) -> None:
    """Bulk mode with real processes: the broker process buys stock from the vendor process over TCP.

    A customer buys scrip from the broker (which first buys a batch from the
    vendor at the agreed discount, then pays the vendor with a stock piece for
    scrip bound to her) and spends it at the vendor. Value holds: what the
    broker bought = its stock + what it sold; what the customer bought =
    price paid + her change; and the vendor's ledger says what the broker owes.
    """
    v, b = str(tmp_path / "vendor.db"), str(tmp_path / "broker.db")
    cardnet("millicent", "vendor", "init", "--store", v, "--id", VID)
    cardnet(
        "millicent", "vendor", "add-page", "--store", v, "--name", "hello", "--price", "3", "--text", "hello, world"
    )
    agreement = tmp_path / "bulk.json"
    cardnet(
        "millicent",
        "vendor",
        "bulk-agreement",
        "--store",
        v,
        "--broker",
        "bob",
        "--discount",
        "10",
        "--out",
        str(agreement),
    )
    assert agreement.stat().st_mode & 0o777 == 0o600
    assert "scrip_secret" not in json.loads(agreement.read_text())  # bulk mode shares no master secret
    vendor = Service(tmp_path, "millicent", "vendor", "run", "--store", v, "--listen", "127.0.0.1:0")
    broker = Service(tmp_path, "millicent", "broker", "run", "--store", b, "--listen", "127.0.0.1:0")
    try:
        at = vendor.start()
        cardnet(
            "millicent", "broker", "add-bulk", "--store", b, "--file", str(agreement), "--vendor-at", at,
            "--denomination", "50", "--pieces", "4",
        )  # fmt: skip
        broker.start()
        alice = customer({"tmp": tmp_path, "broker": broker, "broker_store": b}, "alice", deposit=100)
        r = cardnet("millicent", "buy", "--wallet", alice, "--vendor", VID, "--value", "20", "--json")
        assert json.loads(r.stdout)["value"] == 20
        args = ["millicent", "spend", "--wallet", alice, "--vendor", VID, "--at", at, "--product", "hello"]
        r = cardnet(*args, "--price", "3", "--json")
        assert json.loads(r.stdout) == {"status": "ok", "change": 17, "content": "hello, world"}
        # An operator's bulk purchase from another process, while the broker runs.
        r = cardnet("millicent", "broker", "bulk-buy", "--store", b, "--vendor", VID, "--value", "100", "--pieces", "2")
        assert "bought 100 in 2 pieces for 90" in r.stdout

        vstatus = json.loads(cardnet("millicent", "vendor", "status", "--store", v, "--json").stdout)
        [sales] = vstatus["bulk_sales"].values()
        assert sales == {"broker": "bob", "value": 300, "owed": 270}
        assert vstatus["spent"] == 2  # the broker's stock piece (paid for alice's scrip), then alice's scrip
        assert vstatus["redeemable"] == 0  # bulk scrip was paid for when bought: nothing to redeem
        bstatus = json.loads(cardnet("millicent", "broker", "status", "--store", b, "--json").stdout)
        stock = bstatus["bulk"][VID]
        assert stock["bought_value"] == 300 and stock["owed"] == 270 and stock["pending_orders"] == 0
        assert stock["stock_value"] + 20 == stock["bought_value"]  # what was bought = stock + sold to alice
        listing = json.loads(cardnet("millicent", "list", "--wallet", alice, "--json").stdout)
        assert [s["value"] for s in listing["scrip"]] == [17] and listing["pending"] == 0  # 20 = price 3 + 17
        cid = json.loads(
            cardnet("millicent", "buy", "--wallet", alice, "--vendor", VID, "--value", "30", "--json").stdout
        )
        assert cid["value"] == 30  # a second sale, from stock (no new order)
        bstatus = json.loads(cardnet("millicent", "broker", "status", "--store", b, "--json").stdout)
        assert bstatus["bulk"][VID]["bought_value"] == 300 and bstatus["bulk"][VID]["stock_value"] == 250
    finally:
        broker.stop()
        vendor.stop()


class ManInTheMiddle:
    """On the customer's path to the vendor: forwards each request and, while ``forging``, swaps the vendor's
    answer for a plain refusal of the same request (it saw the request id on the wire; it has no secret)."""

    def __init__(self, vendor_at: str) -> None:
        host, port = vendor_at.rsplit(":", 1)
        self.vendor = (host, int(port))
        self.forging = True
        self.forged = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = int.from_bytes(await reader.readexactly(4), "big")
        request = Message.decode(await reader.readexactly(n))
        async with await dial(*self.vendor) as up:
            await up.send(request)
            reply = await up.recv()
        if self.forging:
            rid = mc.REPLY_SCHEMA.decode(reply.param)["rid"]
            fake = {"rid": rid, "status": int(mc.Status.STOLEN), "detail": "this scrip belongs to someone else"}
            reply = Message(reply.src, reply.dst, mc.REPLY.code, mc.REPLY_SCHEMA.encode(fake))
            self.forged += 1
        writer.write(encode_frame(reply))
        await writer.drain()
        writer.close()


def test_a_forged_plain_refusal_does_not_make_the_wallet_forget_an_accepted_purchase(
    world: dict[str, object],
) -> None:
    """The vendor accepts; a man in the middle answers `stolen`. The wallet keeps the request pending (the answer
    is not MACed) and learns the truth, change included, from the vendor's stored reply when it asks again."""
    vendor = world["vendor"]
    assert isinstance(vendor, Service)
    at = vendor.start()
    alice = customer(world, "alice")
    cardnet("millicent", "buy", "--wallet", alice, "--vendor", VID, "--value", "10")

    async def go() -> None:
        mitm = ManInTheMiddle(at)
        via = await mitm.start()
        w = Wallet(SqliteStore(alice))
        with pytest.raises(WalletError) as ei:
            await w.spend(bytes.fromhex(VID), via, "hello", 3, int(time.time()))
        assert ei.value.reason == "unauthenticated" and "stolen" in str(ei.value) and mitm.forged == 1
        assert len(w.pending()) == 1 and w.scrip() == []  # neither forgotten nor spendable twice
        [line] = await w.retry_pending()  # still forged: still pending
        assert line.startswith("still pending") and len(w.pending()) == 1
        mitm.forging = False
        [line] = await w.retry_pending()  # the vendor's stored, MACed reply: accepted, change 7
        assert line == "ok: change 7" and w.pending() == [] and [s.value for s in w.scrip()] == [7]
        mitm.forging = True  # a second purchase, forged again: the owner gives it up explicitly
        with pytest.raises(WalletError):
            await w.spend(bytes.fromhex(VID), via, "hello", 3, int(time.time()))
        [line] = await w.retry_pending(give_up=True)
        assert line.startswith("gave up") and w.pending() == [] and w.scrip() == []
        mitm.server.close()
        w.store.close()

    asyncio.run(go())
    status = json.loads(
        cardnet("millicent", "vendor", "status", "--store", str(world["vendor_store"]), "--json").stdout
    )
    assert status["spent"] == 2  # both purchases were accepted once by the vendor
