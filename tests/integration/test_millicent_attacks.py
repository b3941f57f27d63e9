"""Attacks on running Millicent vendor and broker processes (real processes, real sockets).

A customer asks the vendor to issue scrip to another customer (``Op.ISSUE``, bulk mode's sale) and pays with her
own scrip: before, any customer could, and the answer carries the other customer's secret sealed to the asker, so
for one unit Eve learnt Alice's customer secret and then spent Alice's scrip (seen on the wire: a level-2 request
carries it in the clear) as her own. Now only the vendor's bulk brokers may (``Status.NOT_ALLOWED``, nothing spent).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time

from hostprocs import Service, cardnet
from test_millicent_processes import VID, customer, send_all, world  # noqa: F401 (world: the fixture)

from cardnet.protocols import millicent as mc
from cardnet.services.millicent.wallet import CFG, SCRIP, SECRETS
from cardnet.store import SqliteStore


def scrip_and_secret(wallet: str) -> tuple[bytes, bytes, bytes]:
    """The wallet's one piece of scrip of vendor VID, its customer secret there and its customer id."""
    with SqliteStore(wallet) as store, store.transaction() as txn:
        [(_, raw)] = txn.scan(SCRIP)
        secret, cid = txn.get(SECRETS, bytes.fromhex(VID)), txn.get(CFG, b"cid")
    assert secret is not None and cid is not None
    return raw, secret, cid


def test_a_customer_cannot_have_scrip_issued_to_another_and_so_learn_her_secret(world: dict[str, object]) -> None:  # noqa: F811
    vendor = world["vendor"]
    assert isinstance(vendor, Service)
    at = vendor.start()
    alice, eve = customer(world, "alice"), customer(world, "eve")
    for wallet in (alice, eve):
        cardnet("millicent", "buy", "--wallet", wallet, "--vendor", VID, "--value", "20", "--json")
    alice_scrip, alice_secret, alice_cid = scrip_and_secret(alice)
    eve_scrip, eve_secret, eve_cid = scrip_and_secret(eve)

    def issue(raw: bytes, secret: bytes, rid: bytes, to: bytes, price: int) -> mc.Outcome:
        req = mc.make_request(raw, rid=rid, level=mc.Level.THEFT, secret=secret, price=price, op=mc.Op.ISSUE,
                              for_customer=to)  # fmt: skip
        [m] = asyncio.run(send_all(at, [req]))
        return mc.open_reply(m.mtype, m.param, rid=rid, level=mc.Level.THEFT, secret=secret)

    # Eve pays 1 of her scrip for scrip issued to Alice: the answer would carry Alice's secret.
    out = issue(eve_scrip, eve_secret, b"e" * 16, alice_cid, 1)
    assert out.issued_secret != alice_secret, "the vendor handed Eve Alice's customer secret"
    assert (out.status, out.detail, out.authentic) == (mc.Status.NOT_ALLOWED, mc.NOT_AN_ISSUER, True), out
    assert out.issued is None and out.change is None
    # Nor can she, with the secret she did not get, turn Alice's scrip into hers: Alice's MAC is needed.
    theft = issue(alice_scrip, eve_secret, b"f" * 16, eve_cid, 20)
    assert theft.status == mc.Status.STOLEN and theft.issued is None
    # Nothing was spent: both spend their scrip on a page as usual.
    for wallet, change in ((eve, 17), (alice, 17)):
        args = ("millicent", "spend", "--wallet", wallet, "--vendor", VID, "--at", at, "--product", "hello")
        r = json.loads(cardnet(*args, "--price", "3", "--json").stdout)
        assert r == {"status": "ok", "change": change, "content": "hello, world"}, r


def test_a_deposit_past_the_largest_balance_is_refused_and_the_account_still_buys(
    world: dict[str, object],  # noqa: F811
) -> None:
    """Before, `broker deposit` took any amount: past 2**63 - 1 every purchase of the account made the broker fail
    to encode its answer (the wallet: 'no answer', the purchase pending for ever), past 2**64 the command failed
    with an internal error."""
    alice = customer(world, "alice")  # 100 prepaid
    with SqliteStore(alice) as store, store.transaction() as txn:
        cid = txn.get(CFG, b"cid")
    assert cid is not None
    deposit = ("millicent", "broker", "deposit", "--store", str(world["broker_store"]), "--customer", cid.hex())
    for amount in (mc.MAX_VALUE, 2**64 - 1):
        r = cardnet(*deposit, "--amount", str(amount), "--json", check=False)
        assert r.returncode == 2 and json.loads(r.stdout)["error"]["reason"] == "too_much", (r.stdout, r.stderr)
        assert f"deposit at most {mc.MAX_VALUE - 100}" in json.loads(r.stdout)["error"]["message"]
    top = json.loads(cardnet(*deposit, "--amount", str(mc.MAX_VALUE - 100), "--json").stdout)
    assert top["balance"] == mc.MAX_VALUE
    r = json.loads(cardnet("millicent", "buy", "--wallet", alice, "--vendor", VID, "--value", "20", "--json").stdout)
    assert r["value"] == 20, r


def test_a_request_naming_a_product_of_control_characters_is_refused_in_words(
    world: dict[str, object],  # noqa: F811
) -> None:
    """A product name may be 128 bytes; quoted in the refusal (`no product '\\x01\\x01...'`) each control character
    takes four. Before, that refusal was too long to encode: the vendor's batch failed and it closed the connection
    unanswered (the wallet: no answer, the request pending); the vendor's log said so. Now the refusal is cut to fit."""
    vendor = world["vendor"]
    assert isinstance(vendor, Service)
    at = vendor.start()
    alice = customer(world, "alice")
    cardnet("millicent", "buy", "--wallet", alice, "--vendor", VID, "--value", "20", "--json")
    raw, secret, _ = scrip_and_secret(alice)
    for i, product in enumerate(("\x01" * 128, "\\" * 128, "é" * 64)):
        rid = bytes([i + 1]) * 16
        req = mc.make_request(raw, rid=rid, level=mc.Level.THEFT, secret=secret, price=3, product=product)
        [m] = asyncio.run(send_all(at, [req]))
        out = mc.open_reply(m.mtype, m.param, rid=rid, level=mc.Level.THEFT, secret=secret)
        assert out.status == mc.Status.UNKNOWN_PRODUCT and out.authentic, out
        assert out.detail.startswith("no product ") and len(out.detail.encode()) <= 200, out.detail
    # Nothing was spent: she buys the page with the same scrip.
    args = ("millicent", "spend", "--wallet", alice, "--vendor", VID, "--at", at, "--product", "hello")
    r = json.loads(cardnet(*args, "--price", "3", "--json").stdout)
    assert r == {"status": "ok", "change": 17, "content": "hello, world"}, r


def test_vendor_redeem_at_an_address_that_never_answers_gives_up_in_words(
    world: dict[str, object],  # noqa: F811
) -> None:
    """`vendor redeem --broker` at an address that takes the connection and never answers (a hung broker, or another
    service): before, it waited for ever; now it gives up after --timeout, nothing marked redeemed, and the redemption
    at the real broker then pays it."""
    vendor = world["vendor"]
    assert isinstance(vendor, Service)
    at = vendor.start()
    alice = customer(world, "alice")
    args = ("millicent", "spend", "--wallet", alice, "--vendor", VID, "--at", at, "--product", "hello", "--price", "3")
    assert json.loads(cardnet(*args, "--json").stdout)["status"] == "ok"  # (the broker's scrip, bought on the way)
    redeem = ("millicent", "vendor", "redeem", "--store", str(world["vendor_store"]))
    with socket.socket() as silent:  # listening, never accepting: the kernel takes the connection and the bytes
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        start = time.monotonic()
        r = cardnet(*redeem, "--broker", f"127.0.0.1:{silent.getsockname()[1]}", "--timeout", "1", "--json",
                    check=False)  # fmt: skip
        assert time.monotonic() - start < 30, "waited past its --timeout"
    assert r.returncode == 2, (r.stdout, r.stderr)
    error = json.loads(r.stdout)["error"]
    assert error["reason"] == "no_answer" and "did not answer within 1 s" in error["message"], error
    broker = world["broker"]
    assert isinstance(broker, Service)
    done = json.loads(cardnet(*redeem, "--broker", broker.address, "--json").stdout)
    assert (done["items"], done["duplicates"]) == (1, 0), done
