"""A vendor that licensed two brokers redeems each broker's scrip at that broker, with real processes.

``cardnet millicent vendor redeem --broker HOST:PORT`` used to send the scrip of every licence to the one
address: the broker there refused the other broker's batch (its MAC is under another licence's redeem key), the
command failed, and the scrip of the licence redeemed before the failure was forgotten without a word of it in
the output (or, the other way round, the broker's own scrip was never sent). Now only the scrip of the broker at
the address is sent (the broker is known by the licence key its answer is MACed with); the others' scrip stays
redeemable and the output says whose it is and where it goes.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostprocs import Service, cardnet

from cardnet.protocols import millicent as mc
from cardnet.services.millicent import broker as mb
from cardnet.services.millicent import vendor as mv
from cardnet.services.millicent.wallet import Wallet
from cardnet.store import SqliteStore

VID = bytes.fromhex("00000000000000a1")


@pytest.fixture
def two_brokers(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A vendor process and two broker processes, bob and carol, each licensed by the vendor (10 % discount)."""
    v = str(tmp_path / "vendor.db")
    with SqliteStore(v) as store:
        mv.init_vendor(store, VID)
        mv.add_product(store, "hello", 3, b"hi")
        licences = {name: mv.export_licence(store, name) for name in ("bob", "carol")}
    services = []
    world = {"tmp": str(tmp_path), "vendor_store": v}
    try:
        for name, lic in licences.items():
            world[f"{name}_store"] = b = str(tmp_path / f"{name}.db")
            with SqliteStore(b) as store:
                mb.add_licence(store, lic, discount_pct=10)
            broker = Service(tmp_path, "millicent", "broker", "run", "--store", b, "--listen", "127.0.0.1:0")
            services.append(broker)
            world[name] = broker.start()
        vendor = Service(tmp_path, "millicent", "vendor", "run", "--store", v, "--listen", "127.0.0.1:0")
        services.append(vendor)
        world["vendor"] = vendor.start()
        yield world
    finally:
        for s in services:
            s.stop()


def spend_scrip_of(world: dict[str, str], broker: str, value: int) -> None:
    """A customer of ``broker`` buys scrip worth ``value`` there and spends it on the page (over TCP)."""

    async def go(wallet: Wallet) -> None:
        cid = await wallet.open_account(world[broker])
        with SqliteStore(world[f"{broker}_store"]) as store:
            mb.deposit(store, cid, 1000)
        await wallet.buy(VID, value)
        r = await wallet.spend(VID, world["vendor"], "hello", 3, int(time.time()))
        assert r.change == value - 3

    with SqliteStore(str(Path(world["tmp"]) / f"customer-of-{broker}-{value}.db")) as store:
        asyncio.run(go(Wallet(store)))


def redeem(world: dict[str, str], at: str, *json_flag: str) -> str:
    return cardnet("millicent", "vendor", "redeem", "--store", world["vendor_store"], "--broker", at, *json_flag).stdout


def owed(world: dict[str, str], broker: str) -> dict[str, int]:
    with SqliteStore(world[f"{broker}_store"]) as store:
        return mb.BrokerCore(store).vendors()


def redeemable(world: dict[str, str]) -> int:
    with SqliteStore(world["vendor_store"]) as store:
        return len(mv.VendorCore(store).redeemable())


def test_each_brokers_scrip_is_redeemed_at_that_broker(two_brokers: dict[str, str]) -> None:
    w = two_brokers
    spend_scrip_of(w, "bob", 100)
    spend_scrip_of(w, "carol", 50)
    spend_scrip_of(w, "carol", 20)
    assert redeemable(w) == 3

    # At carol's address first: only carol's two pieces go there; bob's stays, and the output says where it goes.
    r = json.loads(redeem(w, w["carol"], "--json"))
    assert (r["broker"], r["licence"], r["items"], r["paid"], r["duplicates"]) == ("carol", 129, 2, 45 + 18, 0)
    assert r["left"] == [{"broker": "bob", "licence": 128, "items": 1, "value": 100}]
    assert owed(w, "carol") == {VID.hex(): 63} and owed(w, "bob") == {}
    assert redeemable(w) == 1

    # At carol's again: nothing of hers is left; bob's is named with what to run.
    text = redeem(w, w["carol"])
    assert "nothing to redeem at carol" in text and "1 scrip of bob (licence 128)" in text, text
    assert "--broker HOST:PORT" in text, text

    # At bob's: his piece, paid once.
    text = redeem(w, w["bob"])
    assert "redeemed 1 scrip of bob (licence 128): the broker owes this vendor 90 more" in text, text
    assert owed(w, "bob") == {VID.hex(): 90} and owed(w, "carol") == {VID.hex(): 63}
    assert redeemable(w) == 0
    assert "nothing to redeem" in redeem(w, w["bob"])


def accept_licence_scrip(world: dict[str, str], licence: int, pieces: int) -> None:
    """The vendor accepts ``pieces`` pieces of scrip minted under ``licence`` (level 2), in one batch."""
    now = int(time.time())
    with SqliteStore(world["vendor_store"]) as store:
        core = mv.VendorCore(store)
        v = core.vendor
        cid = bytes(8)
        secret = mc.customer_secret(v.customer_masters, cid)
        requests = []
        for serial in range(1, pieces + 1):
            s = mc.mint(v.scrip_secrets, index=licence, vendor=VID, value=5, serial=serial, customer_id=cid,
                        expiry=now + 3600)  # fmt: skip
            rid = serial.to_bytes(mc.RID_BYTES, "big")
            requests.append(mc.make_request(s, rid=rid, level=mc.Level.THEFT, secret=secret, price=3, product="hello"))
        replies = core.process_batch(requests, now)
    assert all(mc.REPLY_SCHEMA.decode(p)["status"] == mc.Status.OK for _, p in replies)


def test_a_brokers_scrip_behind_more_than_a_batch_of_another_brokers_is_redeemed(two_brokers: dict[str, str]) -> None:
    """Redemption read the first 10,000 rows of one log of every licence: carol's piece, accepted after 10,001 of
    bob's, was not among them, and `redeem --broker <carol>` found nothing of hers to send."""
    w = two_brokers
    accept_licence_scrip(w, 128, mc.REDEEM_MAX_ITEMS + 1)  # bob's (not minted by bob: paid as duplicates)
    spend_scrip_of(w, "carol", 50)

    r = json.loads(redeem(w, w["carol"], "--json"))
    assert (r["broker"], r["items"], r["paid"]) == ("carol", 1, 45)
    assert r["left"] == [{"broker": "bob", "licence": 128, "items": 10_001, "value": 5 * 10_001}]
    assert owed(w, "carol") == {VID.hex(): 45}

    # At bob's: all of his, in two batches in one run.
    r = json.loads(redeem(w, w["bob"], "--json"))
    assert (r["broker"], r["items"], r["duplicates"], r["left"]) == ("bob", 10_001, 10_001, [])
    assert redeemable(w) == 0
