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
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hostprocs import Service, cardnet

from cardnet.protocols import millicent as mc
from cardnet.services.millicent.wallet import CFG, SCRIP, SECRETS, Wallet, WalletError
from cardnet.store import SqliteStore
from cardnet.transport import dial, encode_frame
from cardnet.wire import Message, Uid

VID = "00000000000000a1"


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
    assert [s["value"] for s in listing["scrip"]] == [14] and listing["pending"] == []

    # Alice's scrip, as a thief or a cheater would use it.
    astore, estore = SqliteStore(alice), SqliteStore(eve)
    with astore.transaction() as txn:
        [(_, raw)] = txn.scan(SCRIP)
        alice_secret = txn.get(SECRETS, bytes.fromhex(VID))
    with estore.transaction() as txn:
        eve_secret = txn.get(SECRETS, bytes.fromhex(VID))
        eve_cid = txn.get(CFG, b"cid")
    assert alice_secret is not None and eve_secret is not None and eve_cid is not None
    astore.close()
    estore.close()

    def req(rid: bytes, secret: bytes) -> tuple[int, bytes]:
        return mc.make_request(raw, rid=rid, level=mc.Level.THEFT, secret=secret, price=3, product="hello")

    stolen = asyncio.run(send_all(at, [req(b"t" * 16, eve_secret)]))[0]
    assert mc.REPLY_SCHEMA.decode(stolen.param)["status"] == mc.Status.STOLEN
    # Level 3: Eve seals Alice's scrip under her own customer id and secret (the vendor opens the box with
    # Eve's secret, and the MAC inside checks under it too): refused as stolen, the scrip belongs to Alice.
    rid = b"u" * 16
    _, inner = req(rid, eve_secret)
    box = mc.box_key(eve_secret, rid, eve_cid).seal(0, inner, eve_cid + rid)
    sealed = mc.SEALED_SCHEMA.encode({"customer_id": eve_cid, "rid": rid, "box": box})
    stolen = asyncio.run(send_all(at, [(mc.SEALED_REQUEST.code, sealed)]))[0]
    assert stolen.mtype == mc.REPLY.code and mc.REPLY_SCHEMA.decode(stolen.param)["status"] == mc.Status.STOLEN
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
    listing = json.loads(cardnet("millicent", "list", "--wallet", alice, "--json").stdout)
    assert listing["scrip"] == [] and [p["reason"] for p in listing["pending"]] == [f"no answer from {at}"]
    vendor.stop()
    at2 = vendor.start()  # restarted, on a new port: the pending request still names the old one
    [(_rid, rec)] = Wallet(SqliteStore(alice)).pending()
    out = json.loads(cardnet("millicent", "retry", "--wallet", alice, "--at", at2, "--json").stdout)
    assert [(q["outcome"], q["detail"]) for q in out["requests"]] == [("ok", "change 7")]
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
    assert [s["value"] for s in listing["scrip"]] == [7] and listing["pending"] == []


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
        assert [s["value"] for s in listing["scrip"]] == [17] and listing["pending"] == []  # 20 = price 3 + 17
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
    """On a customer's path to a service: forwards each request and, while ``forging``, hands the customer
    ``rewrite(request, reply)`` instead of the service's answer (it sees every byte; it has no secret)."""

    def __init__(self, upstream: str, rewrite: Callable[[Message, Message], Message]) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.rewrite = rewrite
        self.forging = True
        self.forged = 0

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        n = int.from_bytes(await reader.readexactly(4), "big")
        request = Message.decode(await reader.readexactly(n))
        async with await dial(*self.upstream) as up:
            await up.send(request)
            reply = await up.recv()
        if self.forging:
            reply = self.rewrite(request, reply)
            self.forged += 1
        writer.write(encode_frame(reply))
        await writer.drain()
        writer.close()


def plain_stolen(request: Message, reply: Message) -> Message:
    """The vendor's answer swapped for a plain `stolen` refusal of the same request."""
    rid = mc.REPLY_SCHEMA.decode(reply.param)["rid"]
    fake = {"rid": rid, "status": int(mc.Status.STOLEN), "detail": "this scrip belongs to someone else"}
    return Message(reply.src, reply.dst, mc.REPLY.code, mc.REPLY_SCHEMA.encode(fake))


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
        mitm = ManInTheMiddle(at, plain_stolen)
        via = await mitm.start()
        w = Wallet(SqliteStore(alice))
        with pytest.raises(WalletError) as ei:
            await w.spend(bytes.fromhex(VID), via, "hello", 3, int(time.time()))
        assert ei.value.reason == "unauthenticated" and "stolen" in str(ei.value) and mitm.forged == 1
        assert len(w.pending()) == 1 and w.scrip() == []  # neither forgotten nor spendable twice
        [row] = await w.retry_pending(int(time.time()))  # still forged: still pending
        assert row["outcome"] == "pending" and len(w.pending()) == 1
        mitm.forging = False
        [row] = await w.retry_pending(int(time.time()))  # the vendor's stored, MACed reply: accepted, change 7
        assert row["outcome"] == "ok" and row["detail"] == "change 7"
        assert w.pending() == [] and [s.value for s in w.scrip()] == [7]
        mitm.forging = True  # a second purchase, forged again: the owner gives it up explicitly
        with pytest.raises(WalletError):
            await w.spend(bytes.fromhex(VID), via, "hello", 3, int(time.time()))
        [row] = await w.retry_pending(int(time.time()), give_up=True)
        # It reached the vendor (which accepted it): the scrip comes back, flagged as possibly spent.
        assert row["outcome"] == "gave_up" and "if the vendor did accept" in row["detail"] and w.pending() == []
        assert [s.value for s in w.scrip()] == [7]
        mitm.forging = False
        r = await w.spend(bytes.fromhex(VID), via, "hello", 3, int(time.time()))
        assert r.status == mc.Status.SPENT  # the vendor's own, MACed word: that scrip is gone
        mitm.server.close()
        w.store.close()

    asyncio.run(go())
    status = json.loads(
        cardnet("millicent", "vendor", "status", "--store", str(world["vendor_store"]), "--json").stdout
    )
    assert status["spent"] == 2  # both purchases were accepted once by the vendor


def refused_plain(request: Message, reply: Message) -> Message:
    """The broker's answer swapped for a plain refusal of the same purchase (no MAC: it has no key)."""
    rid = mc.PURCHASED_SCHEMA.decode(reply.param)["rid"]
    fake = {"rid": rid, "status": mc.PURCHASE_REFUSED, "detail": "balance 0 does not cover 10"}
    return Message(reply.src, reply.dst, mc.PURCHASED.code, mc.PURCHASED_SCHEMA.encode(fake))


def refused_keeping_the_mac(request: Message, reply: Message) -> Message:
    """The broker's own answer with its status rewritten to `refused` and its scrip dropped (the MAC kept)."""
    f = mc.PURCHASED_SCHEMA.decode(reply.param)
    f.update(status=mc.PURCHASE_REFUSED, detail="no licence")
    f.pop("scrip", None)
    return Message(reply.src, reply.dst, mc.PURCHASED.code, mc.PURCHASED_SCHEMA.encode(f))


@pytest.mark.parametrize("forge", [refused_plain, refused_keeping_the_mac])
def test_a_rewritten_broker_answer_does_not_lose_a_paid_purchase(
    world: dict[str, object], forge: Callable[[Message, Message], Message]
) -> None:
    """The broker debits and answers; a man in the middle turns the answer into a refusal. The wallet keeps the
    purchase pending (the answer is not the broker's: no MAC, or a MAC that does not check) and `retry` fetches
    the broker's stored answer: the scrip and the customer secret, debited once."""
    broker = world["broker"]
    assert isinstance(broker, Service)
    alice = customer(world, "alice", deposit=30)

    async def go() -> None:
        mitm = ManInTheMiddle(broker.address, forge)
        via = await mitm.start()
        w = Wallet(SqliteStore(alice))
        with pytest.raises(WalletError) as ei:
            await w.buy(bytes.fromhex(VID), 10, via)
        assert ei.value.reason == "unauthenticated" and mitm.forged == 1
        [(_, rec)] = w.pending()
        assert rec["kind"] == "buy" and "not the broker's" in rec["reason"] and w.scrip() == []
        [row] = await w.retry_pending(int(time.time()))
        assert row["outcome"] == "pending" and len(w.pending()) == 1  # forged again: still pending
        mitm.forging = False
        [row] = await w.retry_pending(int(time.time()))
        assert row["outcome"] == "bought" and w.pending() == [] and [s.value for s in w.scrip()] == [10]
        with SqliteStore(alice) as store, store.transaction() as txn:
            assert txn.get(SECRETS, bytes.fromhex(VID)) is not None  # the sealed secret came with it
        assert (await w.buy(bytes.fromhex(VID), 20, via)).value == 20  # 30 - 10 - 20: debited once
        with pytest.raises(WalletError) as ei:
            await w.buy(bytes.fromhex(VID), 1, via)
        assert ei.value.reason == "refused" and "balance 0" in str(ei.value) and w.pending() == []
        mitm.server.close()
        w.store.close()

    asyncio.run(go())


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_a_mistyped_vendor_address_is_re_pointed_and_never_buys_twice(world: dict[str, object]) -> None:
    """A spend sent to a wrong address stays pending; a second attempt buys nothing more; `retry --at` sends it
    to the vendor (change comes back); `--give-up` on a request that never left keeps its scrip."""
    vendor = world["vendor"]
    assert isinstance(vendor, Service)
    at = vendor.start()
    alice = customer(world, "alice", deposit=10)
    wrong = _closed_port()
    r = cardnet("millicent", "spend", "--wallet", alice, "--vendor", VID, "--at", wrong, "--product", "hello",
                "--price", "3", "--top-up", "10", check=False)  # fmt: skip
    assert r.returncode != 0 and "cannot reach" in r.stderr + r.stdout
    r = cardnet("millicent", "spend", "--wallet", alice, "--vendor", VID, "--at", at, "--product", "hello",
                "--price", "3", "--top-up", "10", check=False)  # fmt: skip
    assert r.returncode != 0 and "still pending" in r.stderr + r.stdout  # and no second purchase:
    listed = json.loads(cardnet("millicent", "list", "--wallet", alice, "--json").stdout)
    assert listed["scrip"] == [] and len(listed["pending"]) == 1
    # A retry to the same wrong address leaves it pending: not finished, so not exit 0 (before: exit 0, a table)
    r = cardnet("millicent", "retry", "--wallet", alice, "--json", check=False)
    err = json.loads(r.stdout)["error"]
    assert r.returncode == 2 and err["reason"] == "pending", (r.returncode, err)
    assert err["message"].startswith("1 request still pending: ") and f"cannot reach {wrong}" in err["message"], err
    assert [q["outcome"] for q in err["requests"]] == ["pending"], err
    assert "--at HOST:PORT" in err["hint"] and "--give-up" in err["hint"], err
    r = cardnet("millicent", "retry", "--wallet", alice, check=False)  # a person's words: the table, then why
    assert r.returncode == 2 and "Traceback" not in r.stderr and "pending requests" in r.stdout, r
    assert "error: 1 request still pending" in r.stderr and "what to do:" in r.stderr, r.stderr
    out = json.loads(cardnet("millicent", "retry", "--wallet", alice, "--at", at, "--json").stdout)
    assert [(q["outcome"], q["detail"]) for q in out["requests"]] == [("ok", "change 7")]
    listed = json.loads(cardnet("millicent", "list", "--wallet", alice, "--json").stdout)
    assert [s["value"] for s in listed["scrip"]] == [7] and listed["pending"] == []  # 10 bought once
    # Scrip sent nowhere: giving up keeps it.
    r = cardnet("millicent", "spend", "--wallet", alice, "--vendor", VID, "--at", wrong, "--product", "hello",
                "--price", "3", check=False)  # fmt: skip
    out = json.loads(cardnet("millicent", "retry", "--wallet", alice, "--give-up", "--json").stdout)
    [q] = out["requests"]
    assert q["outcome"] == "gave_up" and q["detail"].startswith("kept") and "never received" in q["detail"]
    listed = json.loads(cardnet("millicent", "list", "--wallet", alice, "--json").stdout)
    assert [s["value"] for s in listed["scrip"]] == [7] and listed["pending"] == []


def test_renew_sends_each_vendors_scrip_to_that_vendor_and_goes_on_past_a_dead_one(tmp_path: Path) -> None:
    """Scrip of two vendors, each last seen at its own address: renew exchanges each at its vendor; with one
    vendor down, the other's scrip is still renewed and the dead one's is reported, not lost."""
    b = str(tmp_path / "broker.db")
    vids, vendors = ["00000000000000a1", "00000000000000b2"], []
    for vid in vids:
        v = str(tmp_path / f"{vid}.db")
        cardnet("millicent", "vendor", "init", "--store", v, "--id", vid)
        cardnet("millicent", "vendor", "add-page", "--store", v, "--name", "hello", "--price", "3", "--text", "hi")
        lic = str(tmp_path / f"{vid}.json")
        cardnet("millicent", "vendor", "licence", "--store", v, "--broker", "bob", "--out", lic)
        cardnet("millicent", "broker", "add-licence", "--store", b, "--file", lic)
        vendors.append(Service(tmp_path, "millicent", "vendor", "run", "--store", v, "--listen", "127.0.0.1:0"))
    broker = Service(tmp_path, "millicent", "broker", "run", "--store", b, "--listen", "127.0.0.1:0")
    try:
        broker.start()
        ats = [v.start() for v in vendors]
        alice = customer({"tmp": tmp_path, "broker": broker, "broker_store": b}, "alice", deposit=40)

        async def go() -> None:
            w = Wallet(SqliteStore(alice))
            now = int(time.time())
            for vid, at in zip(vids, ats, strict=True):
                r = await w.spend(bytes.fromhex(vid), at, "hello", 3, now, top_up=10)
                assert r.status == mc.Status.OK and w.vendor_address(bytes.fromhex(vid)) == at
            later = max(s.expiry for s in w.scrip()) - 3600  # within a day of expiry (by the wallet's clock)
            rows = await w.renew(later)
            assert sorted((r["vendor"], r["outcome"]) for r in rows) == [(vids[0], "renewed"), (vids[1], "renewed")]
            assert sorted(s.value for s in w.scrip()) == [7, 7] and w.pending() == []
            vendors[1].stop()
            rows = await w.renew(max(s.expiry for s in w.scrip()) - 3600)
            outcome = {r["vendor"]: (r["outcome"], r["detail"]) for r in rows}
            assert outcome[vids[0]][0] == "renewed"
            assert outcome[vids[1]][0] == "pending" and "cannot reach" in outcome[vids[1]][1]
            [row] = await w.retry_pending(int(time.time()), give_up=True)  # never reached it: kept
            assert row["outcome"] == "gave_up" and row["detail"].startswith("kept")
            assert sorted(s.vendor.hex() for s in w.scrip()) == vids and w.pending() == []
            w.store.close()

        asyncio.run(go())
    finally:
        broker.stop()
        for v in vendors:
            v.stop()


def test_a_running_vendor_sells_a_page_added_since_it_started_at_its_price(world: dict[str, object]) -> None:
    """`vendor add-page` while `vendor run` serves (another process writing the vendor's store): the running
    vendor lists the new page and sells it, and sells a page added again at its new price, without a restart."""
    vendor = world["vendor"]
    assert isinstance(vendor, Service)
    at = vendor.start()
    v = str(world["vendor_store"])
    alice = customer(world, "alice")
    spend = ["millicent", "spend", "--wallet", alice, "--vendor", VID, "--at", at, "--json"]
    add = ["millicent", "vendor", "add-page", "--store", v]
    out = cardnet(*add, "--name", "news", "--price", "4", "--text", "today's paper").stdout
    assert out == "news: 4 (a running `cardnet millicent vendor run` sells it at this price from its next batch of " \
        "requests)\n"  # fmt: skip
    listed = json.loads(cardnet("millicent", "catalogue", "--at", at, "--json").stdout)
    assert {p["name"]: p["price"] for p in listed["products"]} == {"hello": 3, "news": 4}
    got = json.loads(cardnet(*spend, "--product", "news", "--price", "4").stdout)
    assert (got["status"], got["content"]) == ("ok", "today's paper")

    cardnet(*add, "--name", "hello", "--price", "5", "--text", "hello again", "--json")  # repriced
    got = json.loads(cardnet(*spend, "--product", "hello", "--price", "5").stdout)
    assert (got["status"], got["content"]) == ("ok", "hello again")


def test_a_running_vendor_accepts_the_scrip_of_a_broker_licensed_since_it_started(world: dict[str, object]) -> None:
    """`vendor licence` while `vendor run` serves: the new broker's scrip is accepted (not refused as forged) and
    logged for redemption at that broker; `vendor rotate` meanwhile makes the change minted under the new index.
    """
    vendor = world["vendor"]
    assert isinstance(vendor, Service)
    at = vendor.start()
    tmp, v = world["tmp"], str(world["vendor_store"])
    assert isinstance(tmp, Path)
    lic, c = str(tmp / "carol.json"), str(tmp / "carol.db")
    cardnet("millicent", "vendor", "licence", "--store", v, "--broker", "carol", "--out", lic)
    cardnet("millicent", "broker", "add-licence", "--store", c, "--file", lic)
    carol = Service(tmp, "millicent", "broker", "run", "--store", c, "--listen", "127.0.0.1:0")
    spend = ["millicent", "spend", "--vendor", VID, "--at", at, "--product", "hello", "--price", "3", "--json"]
    try:
        carols = carol.start()
        dave = customer({**world, "broker": carol, "broker_store": c}, "dave")
        got = json.loads(cardnet(*spend, "--wallet", dave).stdout)  # bought from carol first (a top-up)
        assert (got["status"], got["content"]) == ("ok", "hello, world")
        r = cardnet("millicent", "vendor", "redeem", "--store", v, "--broker", carols, "--json")
        assert json.loads(r.stdout)["items"] == 1
    finally:
        carol.stop()

    out = cardnet("millicent", "vendor", "rotate", "--store", v).stdout
    assert out == "new scrip is minted under index 1 (a running `cardnet millicent vendor run` mints under it from " \
        "its next batch of requests)\n"  # fmt: skip
    alice = customer(world, "alice")
    assert json.loads(cardnet(*spend, "--wallet", alice).stdout)["status"] == "ok"
    [change] = json.loads(cardnet("millicent", "list", "--wallet", alice, "--json").stdout)["scrip"]
    assert change["scrip_id"][:2] == "01"  # (the first byte of a scrip id is its master secret's index)
