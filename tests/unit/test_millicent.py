"""Millicent: scrip, secrets, the three levels, the vendor's checks and the attacks (in process, real stores)."""

from __future__ import annotations

import json
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from cardnet.crypto import profile
from cardnet.protocols import millicent as mc
from cardnet.services.millicent import broker as mb
from cardnet.services.millicent import vendor as mv
from cardnet.store import SqliteStore
from cardnet.wire import DecodeError, Message, Uid

VID = bytes.fromhex("00000000000000a1")
OTHER = bytes.fromhex("00000000000000b2")
NOW = 1_800_000_000
ALICE = bytes.fromhex("0100000000000001")
EVE = bytes.fromhex("0200000000000002")


def rng(seed: int = 1) -> Any:
    return random.Random(seed).randbytes


@pytest.fixture
def vendor(tmp_path: Path) -> mv.VendorCore:
    store = SqliteStore(str(tmp_path / "vendor.db"))
    mv.init_vendor(store, VID, rng=rng(), validity_s=3600)
    mv.add_product(store, "page", 3, b"<p>hello</p>")
    return mv.VendorCore(store)


def scrip_for(core: mv.VendorCore, customer: bytes = ALICE, value: int = 10, serial: int = 7, **kw: Any) -> mc.Scrip:
    args: dict[str, Any] = {"expiry": NOW + 100, **kw}
    return mc.mint(
        core.vendor.scrip_secrets,
        index=0,
        vendor=core.vendor_id,
        value=value,
        serial=serial,
        customer_id=customer,
        **args,
    )


def secret(core: mv.VendorCore, cid: bytes = ALICE) -> bytes:
    return mc.customer_secret(core.vendor.customer_masters, cid)


def buy(
    core: mv.VendorCore,
    s: mc.Scrip | bytes,
    *,
    rid: bytes = b"r" * 16,
    level: mc.Level = mc.Level.THEFT,
    key: bytes | None = None,
    price: int = 3,
    product: str = "page",
    op: mc.Op = mc.Op.BUY,
    now: int = NOW,
) -> tuple[tuple[int, bytes], mc.Outcome]:
    cid = (s.encode() if isinstance(s, mc.Scrip) else s)[25:33]
    k = key if key is not None else secret(core, cid)
    req = mc.make_request(s, rid=rid, level=level, secret=k, price=price, product=product, op=op)
    [(mt, param)] = core.process_batch([req], now)
    return req, mc.open_reply(mt, param, rid=rid, level=level, secret=k)


# --- scrip --------------------------------------------------------------------------------


def test_scrip_has_the_papers_fields_and_a_compact_encoding(vendor: mv.VendorCore) -> None:
    s = scrip_for(vendor, properties=b"tax=CH")
    raw = s.encode()
    assert len(raw) == mc.SCRIP_MIN_BYTES + 6 == 60
    assert mc.SCRIP_MIN_BYTES == 54
    assert mc.Scrip.decode(raw) == s
    assert [f for f in mc.Scrip.__slots__] == [
        "vendor",
        "value",
        "scrip_id",
        "customer_id",
        "expiry",
        "properties",
        "certificate",
    ]
    assert s.secret_index == 0 and s.serial == 7
    assert s.certificate == profile.hmac_sha256(vendor.vendor.scrip_secrets[0], s.body(), 16)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "truncated"),
        (b"\x02" + bytes(53), "bad_version"),
        (b"\x01" + bytes(53) + b"x", "bad_length"),
    ],
)
def test_scrip_decode_refuses_malformed(raw: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as err:
        mc.Scrip.decode(raw)
    assert err.value.reason == reason


def test_master_secret_rotation_keeps_live_scrip_valid(vendor: mv.VendorCore) -> None:
    old = scrip_for(vendor, serial=1)
    new_index = mv.rotate_secret(vendor.store, rng=rng(2))
    core = mv.VendorCore(vendor.store)
    assert core.vendor.mint_index == new_index == 1
    _, out = buy(core, old, rid=b"1" * 16)
    assert out.status == mc.Status.OK and out.change is not None
    assert out.change.secret_index == new_index  # change is made under the new secret
    # Dropping a retired secret makes what is left under it unverifiable (after its scrip expired).
    del core.vendor.scrip_secrets[0]
    _, out = buy(core, scrip_for(vendor, serial=2), rid=b"2" * 16)
    assert out.status == mc.Status.FORGED


def test_customer_secret_is_hmac_of_the_selected_master() -> None:
    masters = {1: b"a" * 32, 2: b"b" * 32}
    s1 = mc.customer_secret(masters, ALICE)
    assert s1 == profile.hmac_sha256(b"a" * 32, b"millicent customer secret\x00" + ALICE)
    assert mc.customer_secret(masters, EVE) != s1
    with pytest.raises(mc.MillicentError):
        mc.customer_secret(masters, b"\x09" + bytes(7))


# --- levels --------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [mc.Level.THEFT, mc.Level.PRIVATE])
def test_purchase_with_change_at_levels_2_and_3(vendor: mv.VendorCore, level: mc.Level) -> None:
    (mt, param), out = buy(vendor, scrip_for(vendor), level=level)
    assert out.status == mc.Status.OK
    assert out.content == b"<p>hello</p>"
    assert out.change is not None and out.change.value == 7 and out.change.customer_id == ALICE
    assert out.change.expiry == NOW + 3600
    if level == mc.Level.PRIVATE:
        assert mt == mc.SEALED_REQUEST.code
        assert scrip_for(vendor).encode() not in param  # the scrip is not visible on the wire


def test_level_1_is_refused_by_a_level_2_vendor_but_accepted_by_a_level_1_vendor(vendor: mv.VendorCore) -> None:
    _, out = buy(vendor, scrip_for(vendor), level=mc.Level.VALIDATION)
    assert out.status == mc.Status.LEVEL_TOO_LOW
    vendor.vendor.min_level = mc.Level.VALIDATION
    _, out = buy(vendor, scrip_for(vendor), level=mc.Level.VALIDATION)
    assert out.status == mc.Status.OK


def test_renewal_exchanges_old_scrip_for_new(vendor: mv.VendorCore) -> None:
    _, out = buy(vendor, scrip_for(vendor, expiry=NOW + 5), op=mc.Op.RENEW, price=0, product="")
    assert out.status == mc.Status.OK and out.change is not None
    assert out.change.value == 10 and out.change.expiry == NOW + 3600


def test_level_2_reply_mac_is_checked_by_the_customer(vendor: mv.VendorCore) -> None:
    s = scrip_for(vendor)
    req = mc.make_request(s, rid=b"r" * 16, level=mc.Level.THEFT, secret=secret(vendor), price=3, product="page")
    [(mt, param)] = vendor.process_batch([req], NOW)
    f = mc.REPLY_SCHEMA.decode(param)
    f["content"] = b"<p>evil</p>"  # a man in the middle rewrites the page
    with pytest.raises(mc.MillicentError):
        mc.open_reply(mt, mc.REPLY_SCHEMA.encode(f), rid=b"r" * 16, level=mc.Level.THEFT, secret=secret(vendor))


# --- attacks --------------------------------------------------------------------------------


def test_forged_certificate_is_refused(vendor: mv.VendorCore) -> None:
    raw = bytearray(scrip_for(vendor).encode())
    raw[-1] ^= 1
    _, out = buy(vendor, bytes(raw))
    assert out.status == mc.Status.FORGED


def test_altered_value_is_refused_as_forged(vendor: mv.VendorCore) -> None:
    raw = scrip_for(vendor).encode()
    altered = raw[:9] + (1000).to_bytes(8, "big") + raw[17:]
    _, out = buy(vendor, altered)
    assert out.status == mc.Status.FORGED


def test_altered_customer_id_is_refused_as_forged(vendor: mv.VendorCore) -> None:
    raw = scrip_for(vendor).encode()
    _, out = buy(vendor, raw[:25] + EVE + raw[33:], key=secret(vendor, EVE))
    assert out.status == mc.Status.FORGED


def test_thief_spending_someone_elses_scrip_is_refused_as_stolen(vendor: mv.VendorCore) -> None:
    s = scrip_for(vendor)
    _, out = buy(vendor, s, key=secret(vendor, EVE))  # Eve MACs with her own secret
    assert out.status == mc.Status.STOLEN
    _, out = buy(vendor, s, key=secret(vendor, EVE), level=mc.Level.PRIVATE)
    assert out.status == mc.Status.STOLEN
    _, out = buy(vendor, s)  # Alice can still spend it: nothing was spent
    assert out.status == mc.Status.OK


def test_double_spend_sequential_is_refused(vendor: mv.VendorCore) -> None:
    s = scrip_for(vendor)
    assert buy(vendor, s, rid=b"1" * 16)[1].status == mc.Status.OK
    second = buy(vendor, s, rid=b"2" * 16)[1]
    assert second.status == mc.Status.SPENT and second.change is None
    assert vendor.spent_count() == 1


def test_double_spend_in_one_group_commit_accepts_one(vendor: mv.VendorCore) -> None:
    s = scrip_for(vendor)
    k = secret(vendor)
    reqs = [
        mc.make_request(s, rid=bytes([i]) * 16, level=mc.Level.THEFT, secret=k, price=3, product="page")
        for i in range(5)
    ]
    replies = vendor.process_batch(reqs, NOW)
    statuses = [
        mc.open_reply(mt, p, rid=bytes([i]) * 16, level=mc.Level.THEFT, secret=k).status
        for i, (mt, p) in enumerate(replies)
    ]
    assert statuses.count(mc.Status.OK) == 1 and statuses.count(mc.Status.SPENT) == 4


def test_replayed_request_gets_the_stored_reply_and_spends_nothing_more(vendor: mv.VendorCore) -> None:
    s = scrip_for(vendor)
    req, first = buy(vendor, s)
    again = vendor.process_batch([req, req], NOW + 50)  # replays, even after restarts
    core = mv.VendorCore(vendor.store)
    later = core.process_batch([req], NOW + 60)
    for mt, p in [*again, *later]:
        out = mc.open_reply(mt, p, rid=b"r" * 16, level=mc.Level.THEFT, secret=secret(vendor))
        assert out == first  # same change scrip: a re-fetch, never a second spend
    assert core.spent_count() == 1
    assert core.stats.refetched == 1


def test_expired_scrip_is_refused(vendor: mv.VendorCore) -> None:
    _, out = buy(vendor, scrip_for(vendor, expiry=NOW))
    assert out.status == mc.Status.EXPIRED


def test_scrip_of_another_vendor_is_refused(vendor: mv.VendorCore, tmp_path: Path) -> None:
    other_store = SqliteStore(str(tmp_path / "other.db"))
    mv.init_vendor(other_store, OTHER, rng=rng(3))
    other = mv.VendorCore(other_store)
    s = mc.mint(
        other.vendor.scrip_secrets, index=0, vendor=OTHER, value=10, serial=1, customer_id=ALICE, expiry=NOW + 100
    )
    _, out = buy(vendor, s)
    assert out.status == mc.Status.WRONG_VENDOR


def test_pruning_is_safe_because_expired_scrip_is_refused_even_with_the_clock_set_back(
    vendor: mv.VendorCore,
) -> None:
    vendor.vendor.refetch_grace_s = 20
    s = scrip_for(vendor, expiry=NOW + 10)
    req, first = buy(vendor, s)
    # Expired but within the grace: the same request still fetches its reply; another one is refused.
    [(mt, p)] = vendor.process_batch([req], NOW + 15)
    assert mc.open_reply(mt, p, rid=b"r" * 16, level=mc.Level.THEFT, secret=secret(vendor)) == first
    assert buy(vendor, s, rid=b"n" * 16, now=NOW + 15)[1].status == mc.Status.EXPIRED
    assert vendor.prune(NOW + 25) == 0  # within the grace: kept
    assert vendor.prune(NOW + 30) == 1
    assert vendor.spent_count() == 0
    core = mv.VendorCore(vendor.store)  # restarted, and its clock goes back
    [(mt, p)] = core.process_batch([req], NOW + 1)
    out = mc.open_reply(mt, p, rid=b"r" * 16, level=mc.Level.THEFT, secret=secret(vendor))
    assert out.status == mc.Status.EXPIRED
    _, out = buy(core, scrip_for(vendor, expiry=NOW + 9, serial=99), rid=b"x" * 16, now=NOW + 1)
    assert out.status == mc.Status.EXPIRED  # below the pruned mark


def test_a_request_refused_as_expired_stays_refused_when_the_clock_goes_back_even_after_a_restart(
    vendor: mv.VendorCore,
) -> None:
    """A delayed copy of a request the vendor refused as expired must not spend the scrip later.

    The customer was told the scrip is worthless and dropped the request; were the copy accepted once the host's
    clock was set back, the scrip would be spent and its change sent to no one (the simulator found this).
    """
    s = scrip_for(vendor, expiry=NOW + 10)
    req, out = buy(vendor, s, now=NOW + 10)
    assert out.status == mc.Status.EXPIRED
    [(mt, p)] = vendor.process_batch([req], NOW + 5)  # the host's clock went back 5 s
    assert mc.open_reply(mt, p, rid=b"r" * 16, level=mc.Level.THEFT, secret=secret(vendor)).status == (
        mc.Status.EXPIRED
    )
    core = mv.VendorCore(vendor.store)  # restarted: the time it judged on is durable
    assert core.judged_time(NOW) == NOW + 10
    [(mt, p)] = core.process_batch([req], NOW)
    assert mc.open_reply(mt, p, rid=b"r" * 16, level=mc.Level.THEFT, secret=secret(vendor)).status == (
        mc.Status.EXPIRED
    )
    assert core.spent_count() == 0
    # Forward again: scrip valid at the later time is accepted as usual.
    assert buy(core, scrip_for(vendor, expiry=NOW + 100, serial=8), rid=b"f" * 16, now=NOW + 11)[1].status == (
        mc.Status.OK
    )


def test_price_and_product_are_checked(vendor: mv.VendorCore) -> None:
    _, wrong = buy(vendor, scrip_for(vendor), price=1)
    assert wrong.status == mc.Status.WRONG_PRICE and wrong.authentic  # MACed: the wallet keeps its scrip
    assert mc.asked_price(wrong.detail, "page") == 3 and mc.asked_price(wrong.detail, "other") is None
    assert buy(vendor, scrip_for(vendor), product="nope")[1].status == mc.Status.UNKNOWN_PRODUCT
    assert buy(vendor, scrip_for(vendor, value=2))[1].status == mc.Status.INSUFFICIENT
    assert vendor.spent_count() == 0


def test_a_refetch_still_works_after_the_price_changed(vendor: mv.VendorCore) -> None:
    req, first = buy(vendor, scrip_for(vendor))
    mv.add_product(vendor.store, "page", 4, b"<p>dearer</p>")
    core = mv.VendorCore(vendor.store)
    [(mt, p)] = core.process_batch([req], NOW)
    assert mc.open_reply(mt, p, rid=b"r" * 16, level=mc.Level.THEFT, secret=secret(vendor)) == first
    _, out = buy(core, scrip_for(vendor, serial=8), rid=b"o" * 16)  # a new request at the old price
    assert out.status == mc.Status.WRONG_PRICE and mc.asked_price(out.detail, "page") == 4


def test_a_batch_prepared_while_a_commit_holds_the_store_gets_the_page_added_before_that_commit(
    vendor: mv.VendorCore, tmp_path: Path
) -> None:
    """The server prepares the next batch during a slow commit (in a worker thread, which holds the store until
    its fsync ends). That preparation does not wait for the store, and still sells a page another process added
    before the commit: the commit's own transaction read the catalogue's version for it."""
    page = mc.make_request(scrip_for(vendor, serial=8), rid=b"p" * 16, level=mc.Level.THEFT, secret=secret(vendor),
                           price=3, product="page")  # fmt: skip
    first = vendor.prepare_batch([page], NOW)  # the catalogue as it was, no "news" (and serial numbers reserved)
    other = SqliteStore(str(tmp_path / "vendor.db"))  # `vendor add-page` from another process
    mv.add_product(other, "news", 4, b"today's paper")
    other.close()
    committing, released = threading.Event(), threading.Event()
    waited: list[bool] = []

    def before_commit() -> None:  # in the worker, the store held: only the fsync is left
        committing.set()
        waited.append(released.wait(10))  # False: the batch below waited for the store instead of being prepared

    worker = threading.Thread(target=vendor.commit_batch, args=(first, before_commit))
    worker.start()
    assert committing.wait(10)
    ask = (mc.CATALOGUE_ASK.code, mc.CATALOGUE_ASK_SCHEMA.encode({}))
    req = mc.make_request(
        scrip_for(vendor), rid=b"n" * 16, level=mc.Level.THEFT, secret=secret(vendor), price=4, product="news"
    )
    second = vendor.prepare_batch([ask, req], NOW)
    released.set()
    worker.join()
    assert waited == [True]
    assert [p["name"] for p in mc.open_catalogue(*second.replies[0])["products"]] == ["news", "page"]
    [(mt, param)] = vendor.commit_batch(second)[1:]
    got = mc.open_reply(mt, param, rid=b"n" * 16, level=mc.Level.THEFT, secret=secret(vendor))
    assert (got.status, got.content) == (mc.Status.OK, b"today's paper")


def test_validate_batch_checks_binding_and_spends_once(vendor: mv.VendorCore) -> None:
    a = scrip_for(vendor, serial=1).encode()
    b = scrip_for(vendor, serial=2).encode()
    k = secret(vendor)
    good = profile.hmac_sha256(k, b"x", 16)
    bad = profile.hmac_sha256(secret(vendor, EVE), b"x", 16)
    assert vendor.validate_batch([(a, b"x", good), (a, None, None), (b, b"x", bad)], NOW) == [
        mc.Status.OK,
        mc.Status.SPENT,
        mc.Status.STOLEN,
    ]
    assert vendor.validate_batch([(a, None, None), (b, None, None)], NOW) == [mc.Status.SPENT, mc.Status.OK]


def test_issue_for_another_customer_bulk_mode(vendor: mv.VendorCore) -> None:
    """A broker holding bulk scrip pays with it for scrip bound to a customer, and learns her secret."""
    agreement = mv.add_bulk_broker(vendor.store, "bob", discount_pct=10, rng=rng(9))
    broker_cid = bytes.fromhex(agreement["customer_id"])
    bulk = scrip_for(vendor, customer=broker_cid, value=100)
    k = secret(vendor, broker_cid)
    req = mc.make_request(
        bulk, rid=b"i" * 16, level=mc.Level.THEFT, secret=k, price=30, op=mc.Op.ISSUE, for_customer=ALICE
    )
    [(mt, p)] = vendor.process_batch([req], NOW)
    out = mc.open_reply(mt, p, rid=b"i" * 16, level=mc.Level.THEFT, secret=k)
    assert out.status == mc.Status.OK and out.issued is not None and out.change is not None
    assert out.issued.customer_id == ALICE and out.issued.value == 30 and out.change.value == 70
    assert out.issued_secret == secret(vendor, ALICE)
    assert buy(vendor, out.issued, rid=b"a" * 16)[1].status == mc.Status.OK


# --- broker ------------------------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path, vendor: mv.VendorCore) -> mb.BrokerCore:
    store = SqliteStore(str(tmp_path / "broker.db"))
    mb.add_licence(store, mv.export_licence(vendor.store, "bob", rng=rng(4)), discount_pct=10)
    return mb.BrokerCore(store, rng=rng(5), validity_s=3600)


def open_account(b: mb.BrokerCore) -> tuple[profile.PrivateKey, bytes]:
    key = profile.generate_private_key(rng(6))
    f = mc.OPENED_SCHEMA.decode(b.open_account(profile.public_bytes(key.public_key())))
    return key, f["customer_id"]


def purchase(b: mb.BrokerCore, key: profile.PrivateKey, cid: bytes, value: int, rid: bytes) -> dict[str, Any]:
    f: dict[str, Any] = {"customer_id": cid, "vendor": VID, "value": value, "rid": rid, "want_secret": 1}
    f["sig"] = profile.sign(key, mc.purchase_sig_input(f))
    return mc.PURCHASED_SCHEMA.decode(b.purchase(mc.PURCHASE_SCHEMA.encode(f), NOW))


def test_broker_sells_licensed_scrip_that_the_vendor_accepts_then_redeems_once(
    broker: mb.BrokerCore, tmp_path: Path
) -> None:
    key, cid = open_account(broker)
    assert purchase(broker, key, cid, 10, b"p" * 16)["status"] == 1  # no balance yet
    mb.deposit(broker.store, cid, 50)
    r = purchase(broker, key, cid, 10, b"q" * 16)
    assert r["status"] == 0 and r["balance"] == 40
    assert purchase(broker, key, cid, 10, b"q" * 16) == r  # the same purchase again: no second debit
    assert broker.account(cid) == 40
    s = mc.Scrip.decode(r["scrip"])
    customer_secret = profile.hpke_open(key, r["secret_box"], info=b"millicent customer secret" + VID + cid)
    vendor = mv.VendorCore(SqliteStore(str(tmp_path / "vendor.db")))  # reloads the licence
    _, out = buy(vendor, s, key=customer_secret)
    assert out.status == mc.Status.OK
    [(seq, item)] = vendor.redeemable()
    param, _seqs = vendor.redeem_request([(seq, item)], s.secret_index)
    paid = mc.REDEEMED_SCHEMA.decode(broker.redeem(param))
    assert paid["paid"] == 9 and paid["duplicates"] == 0  # 10 % discount
    again = mc.REDEEMED_SCHEMA.decode(broker.redeem(param))
    assert again["paid"] == 0 and again["duplicates"] == 1
    assert broker.vendors() == {VID.hex(): 9}


def test_the_brokers_answer_to_a_redemption_is_macd_and_a_forged_paid_is_refused(
    broker: mb.BrokerCore, tmp_path: Path
) -> None:
    """A man in the middle who swallows a redemption and answers "paid" must not make the vendor forget its rows."""
    key, cid = open_account(broker)
    mb.deposit(broker.store, cid, 50)
    s = mc.Scrip.decode(purchase(broker, key, cid, 10, b"q" * 16)["scrip"])
    customer_secret = profile.hpke_open(
        key, purchase(broker, key, cid, 10, b"q" * 16)["secret_box"], info=b"millicent customer secret" + VID + cid
    )
    vendor = mv.VendorCore(SqliteStore(str(tmp_path / "vendor.db")))
    assert buy(vendor, s, key=customer_secret)[1].status == mc.Status.OK
    rows = vendor.redeemable()
    param, _seqs = vendor.redeem_request(rows, s.secret_index)
    batch = mc.REDEEM_SCHEMA.decode(param)["batch"]
    forged = {"batch": batch, "status": 0, "paid": 9, "duplicates": 0}
    for fake in (forged, {**forged, "mac": bytes(16)}):
        with pytest.raises(mc.MillicentError) as caught:
            vendor.open_redeemed(mc.REDEEMED.code, mc.REDEEMED_SCHEMA.encode(fake), batch, s.secret_index)
        assert caught.value.reason == "unauthenticated"
    real = broker.redeem(param)
    assert vendor.open_redeemed(mc.REDEEMED.code, real, batch, s.secret_index)["paid"] == 9
    tampered = mc.REDEEMED_SCHEMA.encode({**mc.REDEEMED_SCHEMA.decode(real), "paid": 900})
    with pytest.raises(mc.MillicentError, match="does not check"):
        vendor.open_redeemed(mc.REDEEMED.code, tampered, batch, s.secret_index)
    with pytest.raises(mc.MillicentError, match="another redemption batch"):
        vendor.open_redeemed(mc.REDEEMED.code, real, b"x" * 16, s.secret_index)
    bad_mac = mc.REDEEM_SCHEMA.encode({**mc.REDEEM_SCHEMA.decode(param), "mac": bytes(16)})
    refused = vendor.open_redeemed(mc.REDEEMED.code, broker.redeem(bad_mac), batch, s.secret_index)
    assert refused["status"] == mb.REFUSED and refused["detail"] == "bad MAC"  # a refusal is MACed too


def test_a_store_from_before_per_licence_logs_keeps_its_redeemable_scrip(tmp_path: Path) -> None:
    """Rows in the one shared redeem log of an older store move to their licences' logs when the vendor opens it:
    each licence's scrip is then read on its own, none lost (rows of no licence stay where they were)."""
    store = SqliteStore(str(tmp_path / "vendor.db"))
    mv.init_vendor(store, VID, rng=rng())
    bob, carol = (mv.export_licence(store, name, rng=rng(i))["index"] for i, name in ((5, "bob"), (6, "carol")))
    rows = [mc.scrip_id(i, n) + (n).to_bytes(8, "big") for n in range(1, 1_201) for i in (bob, carol)]
    with store.transaction() as txn:
        for row in [*rows, mc.scrip_id(0, 9) + bytes(8)]:
            txn.append(mv.REDEEM_LOG, row)
    core = mv.VendorCore(store)
    assert [v for _, v in core.redeemable(index=carol, limit=5_000)] == rows[1::2]
    assert [v for _, v in core.redeemable(index=bob, limit=5_000)] == rows[0::2]
    assert [x["items"] for x in core.redeemable_by_licence()] == [1_200, 1_200]
    with store.transaction() as txn:
        assert [v for _, v in txn.read_log(mv.REDEEM_LOG)] == [mc.scrip_id(0, 9) + bytes(8)]


def test_broker_refuses_unsigned_purchases_and_forged_redemptions(broker: mb.BrokerCore) -> None:
    _key, cid = open_account(broker)
    mb.deposit(broker.store, cid, 50)
    other = profile.generate_private_key(rng(9))
    assert purchase(broker, other, cid, 10, b"z" * 16)["status"] == 1
    assert broker.account(cid) == 50
    fake = mc.REDEEM_SCHEMA.encode({"vendor": VID, "batch": b"b" * 16, "items": [bytes(16)], "mac": bytes(16)})
    assert mc.REDEEMED_SCHEMA.decode(broker.redeem(fake))["status"] == 1


def test_every_broker_answer_is_macd_over_the_purchase_and_a_refusal_is_final(broker: mb.BrokerCore) -> None:
    """The reply key comes sealed to the account key; answers are MACed over the purchase's own bytes, so an
    answer to another purchase under the same request id (say one a man in the middle sent unsigned) does not
    check; and a refused purchase replayed after a deposit is refused again, never debited."""
    key = profile.generate_private_key(rng(6))
    opened = mc.OPENED_SCHEMA.decode(broker.open_account(profile.public_bytes(key.public_key())))
    cid = opened["customer_id"]
    rkey = profile.hpke_open(key, opened["key_box"], info=mc.REPLY_KEY_INFO + cid)
    f: dict[str, Any] = {"customer_id": cid, "vendor": VID, "value": 10, "rid": b"r" * 16, "want_secret": 1}
    f["sig"] = profile.sign(key, mc.purchase_sig_input(f))
    mine = mc.PURCHASE_SCHEMA.encode(f)
    refused = mc.open_purchased(mc.PURCHASED.code, broker.purchase(mine, NOW), purchase=mine, key=rkey)
    assert refused.status == mc.PURCHASE_REFUSED and "does not cover" in refused.detail
    mb.deposit(broker.store, cid, 50)
    replayed = mc.open_purchased(mc.PURCHASED.code, broker.purchase(mine, NOW), purchase=mine, key=rkey)
    assert replayed == refused and broker.account(cid) == 50
    f["rid"] = b"s" * 16
    f["sig"] = profile.sign(key, mc.purchase_sig_input(f))
    mine = mc.PURCHASE_SCHEMA.encode(f)
    unsigned = mc.PURCHASE_SCHEMA.encode({**f, "sig": bytes(len(f["sig"]))})
    with pytest.raises(mc.MillicentError) as ei:  # MACed, but over the unsigned purchase: not an answer to mine
        mc.open_purchased(mc.PURCHASED.code, broker.purchase(unsigned, NOW), purchase=mine, key=rkey)
    assert ei.value.reason == "unauthenticated"
    ok = mc.open_purchased(mc.PURCHASED.code, broker.purchase(mine, NOW), purchase=mine, key=rkey)
    assert ok.status == mc.PURCHASE_OK and ok.scrip is not None and ok.balance == 40


def test_store_insert_many_is_first_wins(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "s.db"))
    with store.transaction() as txn:
        assert txn.insert_many("t", [(b"a", b"1"), (b"b", b"1")]) == 2
        assert txn.insert_many("t", [(b"b", b"2"), (b"c", b"2")]) == 1
        assert txn.get("t", b"b") == b"1" and txn.get("t", b"c") == b"2"
    store.close()


# --- bulk mode -----------------------------------------------------------------------------------

U = Uid(b"\x00" * 12, 1)


def carry(core: mv.VendorCore, call: mb.VendorCall, now: int = NOW) -> Message:
    """Hand a broker's vendor call to the (real, in-process) vendor core, as the server would over TCP."""
    [(mt, p)] = core.process_batch([(call.mtype, call.param)], now)
    return Message(U, U, mt, p)


def bulk_order(agreement: dict[str, Any], order: bytes, value: int, pieces: int, discount: int = 10) -> bytes:
    return mc.make_bulk_order(
        bytes.fromhex(agreement["order_key"]),
        vendor=VID,
        broker=bytes.fromhex(agreement["customer_id"]),
        order=order,
        value=value,
        pieces=pieces,
        discount_pct=discount,
    )


def test_vendor_sells_scrip_in_bulk_only_on_an_authenticated_order_at_the_agreed_discount(
    vendor: mv.VendorCore,
) -> None:
    agreement = mv.add_bulk_broker(vendor.store, "bob", discount_pct=10, rng=rng(7))
    key, bcid = bytes.fromhex(agreement["order_key"]), bytes.fromhex(agreement["customer_id"])
    param = bulk_order(agreement, b"o" * 16, 1001, 4)
    [(mt, reply)] = vendor.process_batch([(mc.BULK_BUY.code, param)], NOW)
    assert mt == mc.BULK_SOLD.code
    sale = mc.open_bulk_sold(reply, key=key, vendor=VID, broker=bcid, order=b"o" * 16, value=1001, pieces=4)
    assert sale.status == mc.Status.OK and sale.price == 901  # 1001 - 100 (10 %, rounded down)
    assert [s.value for s in sale.scrip] == [251, 250, 250, 250]
    assert all(s.customer_id == bcid and s.secret_index == vendor.vendor.mint_index for s in sale.scrip)
    assert vendor.bulk_sales() == {bcid.hex(): {"broker": "bob", "value": 1001, "owed": 901}}
    # The same order again (the broker lost the answer): the same scrip, nothing sold twice.
    assert vendor.process_batch([(mc.BULK_BUY.code, param)], NOW + 5) == [(mt, reply)]
    assert vendor.bulk_sales()[bcid.hex()]["value"] == 1001

    def status(p: bytes) -> tuple[int, str]:
        [(_, r)] = vendor.process_batch([(mc.BULK_BUY.code, p)], NOW)
        f = mc.BULK_SOLD_SCHEMA.decode(r)
        return f["status"], f.get("detail", "")

    reused = status(bulk_order(agreement, b"o" * 16, 5, 1))
    assert reused == (mc.Status.SPENT, "this order id was used for another order")
    assert status(bulk_order(agreement, b"p" * 16, 100, 1, discount=50)) == (
        mc.Status.MALFORMED,
        "the agreed discount is 10 %",
    )
    forged = {**agreement, "order_key": (b"x" * 32).hex()}
    assert status(bulk_order(forged, b"q" * 16, 100, 1))[0] == mc.Status.STOLEN
    stranger = {**agreement, "customer_id": "0900000000000009"}
    assert status(bulk_order(stranger, b"r" * 16, 100, 1))[0] == mc.Status.STOLEN
    assert vendor.bulk_sales()[bcid.hex()]["value"] == 1001


def test_a_bulk_agreement_shares_no_master_secret(vendor: mv.VendorCore) -> None:
    agreement = mv.add_bulk_broker(vendor.store, "bob", discount_pct=5, rng=rng(8))
    text = str(agreement)
    masters = [*vendor.vendor.scrip_secrets.values(), *vendor.vendor.customer_masters.values()]
    assert not any(m.hex() in text for m in masters)
    assert set(agreement) == {"vendor", "broker", "customer_id", "customer_secret", "order_key", "discount_pct"}
    assert agreement["customer_secret"] == secret(vendor, bytes.fromhex(agreement["customer_id"])).hex()


@pytest.fixture
def bulk_broker(tmp_path: Path, vendor: mv.VendorCore) -> mb.BrokerCore:
    store = SqliteStore(str(tmp_path / "bulk-broker.db"))
    agreement = mv.add_bulk_broker(vendor.store, "bob", discount_pct=10, rng=rng(9))
    mb.add_bulk(store, agreement, vendor_at="127.0.0.1:7200", denomination=50, pieces=3)
    return mb.BrokerCore(store, rng=rng(10), validity_s=3600, stock_margin_s=60)


def signed_purchase(key: profile.PrivateKey, cid: bytes, value: int, rid: bytes, want_secret: int = 1) -> bytes:
    f: dict[str, Any] = {"customer_id": cid, "vendor": VID, "value": value, "rid": rid, "want_secret": want_secret}
    f["sig"] = profile.sign(key, mc.purchase_sig_input(f))
    return mc.PURCHASE_SCHEMA.encode(f)


def test_bulk_broker_buys_stock_sells_from_it_and_the_customer_spends_at_the_vendor(
    bulk_broker: mb.BrokerCore, vendor: mv.VendorCore
) -> None:
    key, cid, param, order = first_purchase(bulk_broker, 20)
    assert isinstance(order, mb.VendorCall) and order.kind == "order" and order.address == "127.0.0.1:7200"
    assert bulk_broker.finish_order(order, carry(vendor, order)) == mb.OrderOutcome(
        True, "bought 150 in 3 pieces for 135"
    )
    issue = bulk_broker.begin_purchase(param, NOW)
    assert isinstance(issue, mb.VendorCall) and issue.kind == "issue"
    assert bulk_broker.account(cid) == 80  # reserved with the stock piece, before the vendor is asked
    assert bulk_broker.finish_issue(issue, None) is None  # the vendor's answer was lost ...
    again = bulk_broker.begin_purchase(param, NOW)
    assert again == issue  # ... so the very same request goes again
    done = bulk_broker.finish_issue(again, carry(vendor, again))
    assert done is not None
    r = mc.PURCHASED_SCHEMA.decode(done)
    assert r["status"] == 0 and r["balance"] == 80
    s = mc.Scrip.decode(r["scrip"])
    assert s.customer_id == cid and s.value == 20 and s.vendor == VID
    customer_secret = profile.hpke_open(key, r["secret_box"], info=b"millicent customer secret" + VID + cid)
    assert customer_secret == secret(vendor, cid)
    assert bulk_broker.begin_purchase(param, NOW) == done  # the same purchase again: no second debit
    assert bulk_broker.account(cid) == 80
    _, out = buy(vendor, s, key=customer_secret)
    assert out.status == mc.Status.OK and out.change is not None and out.change.value == 17
    # Value: the broker bought 150 (owes 135); 20 went to the customer, 130 is in stock as 2 x 50 + 30 change.
    assert bulk_broker.stock() == {
        VID.hex(): {
            "pieces": 3,
            "stock_value": 130,
            "reserved_value": 0,
            "released_value": 0,
            "bought_value": 150,
            "owed": 135,
            "pending_orders": 0,
        }
    }
    # A second sale comes out of the stock, without a new order.
    call = bulk_broker.begin_purchase(signed_purchase(key, cid, 30, b"t" * 16, 0), NOW)
    assert isinstance(call, mb.VendorCall) and call.kind == "issue"
    r2 = mc.PURCHASED_SCHEMA.decode(bulk_broker.finish_issue(call, carry(vendor, call)) or b"")
    assert r2["status"] == 0 and "secret_box" not in r2 and r2["balance"] == 50
    assert bulk_broker.stock()[VID.hex()]["stock_value"] == 100
    [sales] = vendor.bulk_sales().values()
    assert sales["value"] == 150 and sales["owed"] == 135


def test_broker_mode_is_chosen_per_vendor(bulk_broker: mb.BrokerCore, vendor: mv.VendorCore) -> None:
    key, cid = open_account(bulk_broker)
    mb.deposit(bulk_broker.store, cid, 100)
    with pytest.raises(mb.BrokerError, match="add-licence"):
        mb.set_mode(bulk_broker.store, VID, "licence")
    assert mc.PURCHASED_SCHEMA.decode(bulk_broker.purchase(signed_purchase(key, cid, 5, b"a" * 16), NOW))[
        "detail"
    ].startswith("this vendor's scrip is sold in bulk mode")
    mb.add_licence(bulk_broker.store, mv.export_licence(vendor.store, "bob", rng=rng(11)))  # switches to licence
    r = mc.PURCHASED_SCHEMA.decode(bulk_broker.purchase(signed_purchase(key, cid, 5, b"b" * 16), NOW))
    assert r["status"] == 0 and mc.Scrip.decode(r["scrip"]).secret_index >= 0x80  # minted by the broker
    mb.set_mode(bulk_broker.store, VID, "bulk")
    step = bulk_broker.begin_purchase(signed_purchase(key, cid, 5, b"c" * 16), NOW)
    assert isinstance(step, mb.VendorCall) and step.kind == "order"
    with pytest.raises(mb.BrokerError, match="the mode is"):
        mb.set_mode(bulk_broker.store, VID, "mint")


def first_purchase(broker: mb.BrokerCore, value: int) -> tuple[profile.PrivateKey, bytes, bytes, mb.VendorCall | bytes]:
    """A new customer with a balance of 100 asks the broker for ``value`` of scrip: (key, id, request, first step)."""
    key, cid = open_account(broker)
    mb.deposit(broker.store, cid, 100)
    param = signed_purchase(key, cid, value, b"q" * 16)
    return key, cid, param, broker.begin_purchase(param, NOW)


def sale_from_fresh_stock(broker: mb.BrokerCore, vendor: mv.VendorCore) -> tuple[bytes, bytes, mb.VendorCall]:
    """A customer with 100 buys 10 of scrip: the broker buys stock in bulk first, then asks the vendor to issue."""
    _, cid, param, order = first_purchase(broker, 10)
    assert isinstance(order, mb.VendorCall)
    broker.finish_order(order, carry(vendor, order))
    issue = broker.begin_purchase(param, NOW)
    assert isinstance(issue, mb.VendorCall)
    return cid, param, issue


def test_a_refused_stock_piece_gives_the_customer_her_money_back(
    bulk_broker: mb.BrokerCore, vendor: mv.VendorCore
) -> None:
    cid, _, issue = sale_from_fresh_stock(bulk_broker, vendor)
    # Someone spent the broker's piece first (say its store was copied): the vendor refuses it as spent.
    rec = issue_request(bulk_broker, issue)
    thief = mc.make_request(
        rec["scrip"],
        rid=b"z" * 16,
        level=mc.Level.THEFT,
        secret=bytes.fromhex(_bulk_secret(bulk_broker)),
        price=3,
        product="page",
    )
    vendor.process_batch([thief], NOW)
    r = mc.PURCHASED_SCHEMA.decode(bulk_broker.finish_issue(issue, carry(vendor, issue)) or b"")
    assert r["status"] == 1 and "refused the broker's stock" in r["detail"] and r["balance"] == 100
    assert bulk_broker.account(cid) == 100


def test_a_forged_plain_refusal_of_a_stock_piece_refunds_nothing_and_the_vendors_answer_settles_it(
    bulk_broker: mb.BrokerCore, vendor: mv.VendorCore
) -> None:
    cid, param, issue = sale_from_fresh_stock(bulk_broker, vendor)
    genuine = carry(vendor, issue)  # the vendor spends the piece and issues the customer's scrip ...
    assert issue.mtype == mc.SEALED_REQUEST.code  # (level 3: every vendor takes it)
    rid = mc.SEALED_SCHEMA.decode(issue.param)["rid"]
    fake = {"rid": rid, "status": int(mc.Status.STOLEN), "detail": "this scrip belongs to someone else"}
    forged = Message(U, U, mc.REPLY.code, mc.REPLY_SCHEMA.encode(fake))  # ... a man in the middle answers instead
    assert bulk_broker.finish_issue(issue, forged) is None  # not believed: no refund, the sale stays open
    assert bulk_broker.account(cid) == 90
    again = bulk_broker.begin_purchase(param, NOW)  # the customer sends the same purchase again
    assert isinstance(again, mb.VendorCall) and again.param == issue.param  # the very same vendor request
    r = mc.PURCHASED_SCHEMA.decode(bulk_broker.finish_issue(again, genuine) or b"")
    assert r["status"] == 0 and r["balance"] == 90 and mc.Scrip.decode(r["scrip"]).value == 10


def issue_request(b: mb.BrokerCore, issue: mb.VendorCall) -> dict[str, Any]:
    """The broker's sealed `issue` request to the vendor, opened with its secret there."""
    outer = mc.SEALED_SCHEMA.decode(issue.param)
    box = mc.box_key(bytes.fromhex(_bulk_secret(b)), outer["rid"], outer["customer_id"])
    return mc.REQUEST_SCHEMA.decode(box.open(0, outer["box"], outer["customer_id"] + outer["rid"]))


def _bulk_secret(b: mb.BrokerCore) -> str:
    import json

    with b.store.transaction() as txn:
        raw = txn.get(mb.BULK, VID)
    assert raw is not None
    return str(json.loads(raw)["customer_secret"])


def test_a_lost_bulk_answer_is_fetched_again_and_applied_once(
    bulk_broker: mb.BrokerCore, vendor: mv.VendorCore
) -> None:
    _, _, param, order = first_purchase(bulk_broker, 20)
    assert isinstance(order, mb.VendorCall) and order.kind == "order"
    answer = carry(vendor, order)  # the vendor sold it ...
    assert bulk_broker.stock()[VID.hex()]["pending_orders"] == 1  # ... but the answer was lost: still pending
    again = bulk_broker.begin_purchase(param, NOW)
    assert again == order  # the pending order goes again, byte for byte
    assert carry(vendor, again) == answer  # the vendor answers from its record: nothing sold twice
    assert bulk_broker.finish_order(again, answer).bought
    assert bulk_broker.finish_order(again, answer) == mb.OrderOutcome(True, "the order was already settled")
    # A piece of it is reserved for the purchase that ordered it; the rest is stock.
    assert {k: bulk_broker.stock()[VID.hex()][k] for k in ("stock_value", "reserved_value")} == {
        "stock_value": 100,
        "reserved_value": 50,
    }
    [sales] = vendor.bulk_sales().values()
    assert sales["value"] == 150 and sales["owed"] == 135
    # A forged answer (not MACed with the order key) is not taken.
    other = bulk_broker.order_stock(VID, 10, 1)
    forged = mc.BULK_SOLD_SCHEMA.encode(
        {"order": mc.BULK_BUY_SCHEMA.decode(other.param)["order"], "status": 0, "scrip": [], "price": 0}
    )
    assert not bulk_broker.finish_order(other, Message(U, U, mc.BULK_SOLD.code, forged)).bought
    assert bulk_broker.stock()[VID.hex()]["pending_orders"] == 1


def test_stock_a_sale_ordered_is_reserved_for_it_and_goes_back_to_stock_if_the_sale_is_refused(
    bulk_broker: mb.BrokerCore, vendor: mv.VendorCore
) -> None:
    """Two purchases of one customer (balance 100) wait on orders of their own: 20 (3 pieces of 50) and 60 (3 of
    60; together within her balance, see the next test). Applying each order reserves a piece for its sale; the 60
    is sold first, then 30 more from stock, so the 20 no longer fits the balance: it is refused and its reserved
    piece goes back to stock (bought = stock + reserved + sold)."""
    key, cid, small, order1 = first_purchase(bulk_broker, 20)
    big = signed_purchase(key, cid, 60, b"b" * 16)
    order2 = bulk_broker.begin_purchase(big, NOW)
    assert isinstance(order1, mb.VendorCall) and isinstance(order2, mb.VendorCall) and order1 != order2
    assert bulk_broker.finish_order(order1, carry(vendor, order1)).bought
    assert bulk_broker.finish_order(order2, carry(vendor, order2)).bought
    assert {k: bulk_broker.stock()[VID.hex()][k] for k in ("stock_value", "reserved_value", "bought_value")} == {
        "stock_value": 100 + 120,
        "reserved_value": 50 + 60,
        "bought_value": 150 + 180,
    }
    for purchase_ in (big, signed_purchase(key, cid, 30, b"c" * 16)):  # the 60, then 30 from stock
        issue = bulk_broker.begin_purchase(purchase_, NOW)
        assert isinstance(issue, mb.VendorCall) and issue.kind == "issue"
        assert mc.PURCHASED_SCHEMA.decode(bulk_broker.finish_issue(issue, carry(vendor, issue)) or b"")["status"] == 0
    sold = 100 + 120 - bulk_broker.stock()[VID.hex()]["stock_value"]  # the piece the 30 took (of 50 or 60)
    refused = bulk_broker.begin_purchase(small, NOW)
    assert isinstance(refused, bytes)
    r = mc.PURCHASED_SCHEMA.decode(refused)
    assert r["status"] == mc.PURCHASE_REFUSED and r["detail"] == "balance 10 does not cover 20"
    stock = bulk_broker.stock()[VID.hex()]
    assert stock["reserved_value"] == 0 and stock["stock_value"] == 100 + 120 - sold + 50
    assert stock["stock_value"] == stock["bought_value"] - 60 - sold
    assert stock["released_value"] == 0  # (counts only reservations whose customers did not come back)


def test_a_forged_plain_refusal_of_a_bulk_order_keeps_it_pending_and_the_vendors_answer_settles_it(
    bulk_broker: mb.BrokerCore, vendor: mv.VendorCore
) -> None:
    """A refusal of a bulk order not MACed with the order key could come from anyone on the wire: believing it
    would forget an order the vendor may have sold (and refuse the sale waiting on it). The order stays pending,
    the same purchase carries it again, and the vendor's own answer settles it and the sale gets its piece."""
    _, cid, param, order = first_purchase(bulk_broker, 20)
    assert isinstance(order, mb.VendorCall) and order.kind == "order"
    genuine = carry(vendor, order)  # the vendor sells the order ...
    oid = mc.BULK_BUY_SCHEMA.decode(order.param)["order"]
    fake = {"order": oid, "status": int(mc.Status.STOLEN), "detail": "no bulk agreement with this broker id"}
    forged = Message(U, U, mc.BULK_SOLD.code, mc.BULK_SOLD_SCHEMA.encode(fake))  # ... a man in the middle answers
    outcome = bulk_broker.finish_order(order, forged)
    assert not outcome.bought and not outcome.refused and "not MACed" in outcome.detail
    assert bulk_broker.stock()[VID.hex()]["pending_orders"] == 1
    assert bulk_broker.begin_purchase(param, NOW) == order  # the same order again, not a refusal
    assert bulk_broker.finish_order(order, genuine).bought
    issue = bulk_broker.begin_purchase(param, NOW)
    assert isinstance(issue, mb.VendorCall) and issue.kind == "issue"
    r = mc.PURCHASED_SCHEMA.decode(bulk_broker.finish_issue(issue, carry(vendor, issue)) or b"")
    assert r["status"] == 0 and r["balance"] == 80 and bulk_broker.account(cid) == 80


def stock_row(b: mb.BrokerCore, *keys: str) -> dict[str, int]:
    row = b.stock()[VID.hex()]
    return {k: row[k] for k in keys}


def test_a_reservation_whose_customer_does_not_come_back_goes_back_to_stock_after_the_hold(
    tmp_path: Path, bulk_broker: mb.BrokerCore, vendor: mv.VendorCore
) -> None:
    """A sale ordered stock and was answered pending; the order's answer reserved a piece for it, and its customer
    did not send the purchase again. Past ``reservation_hold_s`` since she last sent it, the piece is back in
    stock, in one transaction, counted (released_value) and still so when the store is opened again; a sale whose
    customer keeps sending it keeps its place. Nothing was debited: the late customer is served as a new sale."""
    b = mb.BrokerCore(bulk_broker.store, rng=rng(12), validity_s=3600, stock_margin_s=60, reservation_hold_s=600)
    key, cid, param, order = first_purchase(b, 20)
    assert isinstance(order, mb.VendorCall) and order.kind == "order"
    assert b.finish_order(order, carry(vendor, order)).bought  # (by another sale or `broker bulk-buy`)
    assert stock_row(b, "stock_value", "reserved_value") == {"stock_value": 100, "reserved_value": 50}
    assert b.release_stale(NOW + 600) == []  # within the hold: kept for her
    # A second sale of hers waits on an order the vendor has not answered; she sends it again at NOW + 500.
    waiting = signed_purchase(key, cid, 60, b"w" * 16)
    order2 = b.begin_purchase(waiting, NOW)
    assert isinstance(order2, mb.VendorCall) and order2.kind == "order" and order2 != order
    assert b.begin_purchase(waiting, NOW + 500) == order2
    released = b.release_stale(NOW + 601)
    assert released == [{"sale": (cid + b"q" * 16).hex(), "vendor": VID.hex(), "what": "piece", "value": 50}]
    with SqliteStore(str(tmp_path / "bulk-broker.db")) as again:  # durable: another process sees it
        assert stock_row(mb.BrokerCore(again), "stock_value", "reserved_value", "released_value", "bought_value") == {
            "stock_value": 150,
            "reserved_value": 0,
            "released_value": 50,
            "bought_value": 150,
        }
    assert b.account(cid) == 100  # nothing was debited for it
    # Her second sale keeps its place in its order until 600 s after she last sent it.
    assert b.release_stale(NOW + 1100) == []
    assert b.release_stale(NOW + 1101) == [
        {"sale": (cid + b"w" * 16).hex(), "vendor": VID.hex(), "what": "order", "value": 0}
    ]
    assert b.finish_order(order2, carry(vendor, order2)).bought  # no sale waits on it: all of it is stock
    assert stock_row(b, "stock_value", "reserved_value", "bought_value") == {
        "stock_value": 150 + 180,
        "reserved_value": 0,
        "bought_value": 150 + 180,
    }
    # She comes back after all: the same purchase is served from stock, debited once.
    issue = b.begin_purchase(param, NOW + 2000)
    assert isinstance(issue, mb.VendorCall) and issue.kind == "issue"
    r = mc.PURCHASED_SCHEMA.decode(b.finish_issue(issue, carry(vendor, issue)) or b"")
    assert r["status"] == 0 and r["balance"] == 80 and b.account(cid) == 80
    assert b.release_stale(NOW + 10**6) == []


def test_switching_a_vendor_to_licence_mode_releases_its_reserved_stock(
    bulk_broker: mb.BrokerCore, vendor: mv.VendorCore
) -> None:
    """No sale takes a vendor's bulk stock in licence mode: a piece reserved for a sale, or its place in an order,
    is released when the vendor leaves bulk mode (add-licence, set-mode licence), and the sale's purchase sent
    again is minted under the licence."""
    _, cid, param, order = first_purchase(bulk_broker, 20)
    assert isinstance(order, mb.VendorCall)
    assert bulk_broker.finish_order(order, carry(vendor, order)).bought
    assert stock_row(bulk_broker, "reserved_value") == {"reserved_value": 50}
    mb.add_licence(bulk_broker.store, mv.export_licence(vendor.store, "bob", rng=rng(11)))  # switches to licence
    assert stock_row(bulk_broker, "stock_value", "reserved_value", "released_value") == {
        "stock_value": 150,
        "reserved_value": 0,
        "released_value": 50,
    }
    mb.set_mode(bulk_broker.store, VID, "bulk")
    key = profile.generate_private_key(rng(13))  # another customer
    cid2 = mc.OPENED_SCHEMA.decode(bulk_broker.open_account(profile.public_bytes(key.public_key())))["customer_id"]
    mb.deposit(bulk_broker.store, cid2, 500)
    big = signed_purchase(key, cid2, 200, b"g" * 16)  # more than any stock piece: it orders
    order2 = bulk_broker.begin_purchase(big, NOW)
    assert isinstance(order2, mb.VendorCall) and order2.kind == "order"
    answer = carry(vendor, order2)
    mb.set_mode(bulk_broker.store, VID, "licence")  # while the sale waits on its order
    assert bulk_broker.finish_order(order2, answer).bought
    assert stock_row(bulk_broker, "stock_value", "reserved_value") == {"stock_value": 150 + 600, "reserved_value": 0}
    for purchase_, owner, balance in ((param, cid, 80), (big, cid2, 300)):  # each sent again: minted
        r = mc.PURCHASED_SCHEMA.decode(bulk_broker.purchase(purchase_, NOW))
        assert r["status"] == 0 and mc.Scrip.decode(r["scrip"]).secret_index >= 0x80 and r["balance"] == balance
        assert bulk_broker.account(owner) == balance
    with bulk_broker.store.transaction() as txn:
        assert txn.scan(mb.WAITS) == [] and txn.scan(mb.WAITERS) == []


def test_a_pending_answer_of_the_core_alone_is_macd_like_every_other(
    bulk_broker: mb.BrokerCore, vendor: mv.VendorCore
) -> None:
    """``BrokerCore.purchase`` (a core served without the server) answers a bulk-mode purchase ``pending``: MACed
    with the account's reply key over the purchase, as the server's pending answers, so the wallet shows why."""
    key = profile.generate_private_key(rng(6))
    opened = mc.OPENED_SCHEMA.decode(bulk_broker.open_account(profile.public_bytes(key.public_key())))
    cid = opened["customer_id"]
    rkey = profile.hpke_open(key, opened["key_box"], info=mc.REPLY_KEY_INFO + cid)
    mb.deposit(bulk_broker.store, cid, 100)
    mine = signed_purchase(key, cid, 20, b"p" * 16)
    answer = mc.open_purchased(mc.PURCHASED.code, bulk_broker.purchase(mine, NOW), purchase=mine, key=rkey)
    assert answer.status == mc.PURCHASE_PENDING and answer.detail == mb.BULK_NEEDS_SERVER
    assert bulk_broker.account(cid) == 100


def test_serial_blocks_are_reserved_durably_so_two_vendor_processes_never_share_one(vendor: mv.VendorCore) -> None:
    other = mv.VendorCore(vendor.store)  # a second vendor process on the same store
    changes = []
    for n, core in enumerate([vendor, other, vendor, other]):
        _, out = buy(core, scrip_for(vendor, serial=100 + n), rid=bytes([n]) * 16)
        assert out.status == mc.Status.OK and out.change is not None
        changes.append(out.change.serial)
    assert len(set(changes)) == 4
    with vendor.store.transaction() as txn:
        mark = int.from_bytes(txn.get(mv.CFG, b"serial") or b"", "big")
    assert mark > max(changes)  # a restart resumes above every serial handed out
    assert mv.VendorCore(vendor.store)._serials(1) >= mark


@pytest.mark.parametrize("slow_commit_s", [3600.0, -1.0], ids=["commits-on-the-loop", "commits-in-a-worker"])
def test_vendor_server_over_tcp_in_both_commit_modes(vendor: mv.VendorCore, slow_commit_s: float) -> None:
    """The real server: pipelined purchases on two connections, one scrip spent twice; both commit paths."""
    import asyncio

    from cardnet.transport import dial

    scrips = [scrip_for(vendor, serial=500 + i) for i in range(40)]
    reqs = [
        mc.make_request(s, rid=bytes([i]) * 16, level=mc.Level.THEFT, secret=secret(vendor), price=3, product="page")
        for i, s in enumerate(scrips)
    ]
    twice = mc.make_request(
        scrips[0], rid=b"\xff" * 16, level=mc.Level.THEFT, secret=secret(vendor), price=3, product="page"
    )

    async def main() -> list[Message]:
        server = mv.VendorServer(vendor, clock=lambda: float(NOW), slow_commit_s=slow_commit_s)
        host, port = await server.start("127.0.0.1", 0)
        try:
            a, b = await dial(host, port), await dial(host, port)
            await a.send_many([Message(U, U, mt, p) for mt, p in reqs[:20]])
            await b.send_many([Message(U, U, mt, p) for mt, p in [*reqs[20:], twice]])
            got: list[Message] = []
            for conn, expected in ((a, 20), (b, 21)):
                while len(got) < expected + (20 if conn is b else 0):
                    got.extend(await conn.recv_many())
            await a.aclose()
            await b.aclose()
            return got
        finally:
            await server.aclose()

    replies = asyncio.run(main())
    outcomes = {mc.REPLY_SCHEMA.decode(m.param)["rid"]: mc.REPLY_SCHEMA.decode(m.param)["status"] for m in replies}
    assert len(outcomes) == 41
    assert all(outcomes[bytes([i]) * 16] == mc.Status.OK for i in range(1, 40))
    # The first scrip went out twice, on two connections: exactly one request was accepted.
    assert sorted([outcomes[bytes(16)], outcomes[b"\xff" * 16]]) == [mc.Status.OK, mc.Status.SPENT]
    assert vendor.spent_count() == 40


# --- the catalogue --------------------------------------------------------------------------


def test_the_catalogue_lists_every_product_and_price_a_page_at_a_time(vendor: mv.VendorCore) -> None:
    """Asked with the last name received, the vendor gives the next page, until ``more`` is false; the customer's
    check refuses pages out of order (paging could not end) and a refusal."""
    for n in range(mc.CATALOGUE_PAGE + 30):
        mv.add_product(vendor.store, f"p{n:03d}", n + 1, b"x")
    core = mv.VendorCore(vendor.store)
    seen: list[tuple[str, int]] = []
    after: str | None = None
    pages = 0
    while True:
        ask = mc.CATALOGUE_ASK_SCHEMA.encode({} if after is None else {"after": after})
        [(mt, param)] = core.process_batch([(mc.CATALOGUE_ASK.code, ask)], NOW)  # in its place in a batch
        f = mc.open_catalogue(mt, param, after=after)
        assert f["vendor"] == VID
        seen += [(p["name"], p["price"]) for p in f["products"]]
        pages += 1
        if not f["more"]:
            break
        after = seen[-1][0]
    assert pages == 2
    assert seen == sorted([("page", 3)] + [(f"p{n:03d}", n + 1) for n in range(mc.CATALOGUE_PAGE + 30)])

    mt, first = core.vendor.catalogue_page(mc.CATALOGUE_ASK_SCHEMA.encode({}))
    with pytest.raises(mc.MillicentError, match="not in name order"):
        mc.open_catalogue(mt, first, after="zzz")  # a page that does not follow the one asked after
    mt, bad = core.vendor.catalogue_page(b"\xff")
    with pytest.raises(mc.MillicentError, match="malformed catalogue request") as caught:
        mc.open_catalogue(mt, bad)
    assert caught.value.reason == "refused"
    with pytest.raises(mc.MillicentError, match="expected a catalogue"):
        mc.open_catalogue(mc.REPLY.code, first)


def test_a_product_name_a_purchase_could_not_carry_is_refused(vendor: mv.VendorCore) -> None:
    with pytest.raises(mv.VendorError, match="1 to 128 bytes") as caught:
        mv.add_product(vendor.store, "é" * 65, 3, b"x")
    assert caught.value.reason == "bad_name"
    mv.add_product(vendor.store, "é" * 64, 3, b"x")
    with vendor.store.transaction() as txn:  # one stored before the check: left out of the catalogue
        txn.put(mv.CATALOGUE, b"n" * 129, (3).to_bytes(8, "big") + b"x")
    f = mc.open_catalogue(*mv.VendorCore(vendor.store).vendor.catalogue_page(mc.CATALOGUE_ASK_SCHEMA.encode({})))
    assert [p["name"] for p in f["products"]] == ["page", "é" * 64]


def test_one_account_cannot_reserve_more_bulk_stock_than_its_balance_nor_wait_on_more_than_a_bound(
    bulk_broker: mb.BrokerCore, vendor: mv.VendorCore
) -> None:
    """Denial of stock: nothing is debited while a sale waits for the vendor's stock, so a customer with a balance of
    100 sent 20 purchases of 50 at once and never came back: the broker ordered stock for all 20 (7 orders, 1 050
    of stock bought from the vendor) and reserved a piece for each for a day, while her balance stayed 100. Now the
    sales of an account that wait at once are worth at most its balance, and at most MAX_WAITING_SALES of them: the
    others are refused in words (final, nothing debited), and the stock she cannot pay for stays for others."""
    key, cid = open_account(bulk_broker)
    mb.deposit(bulk_broker.store, cid, 100)
    steps = [bulk_broker.begin_purchase(signed_purchase(key, cid, 50, b"m%015d" % i), NOW) for i in range(20)]
    orders = {s.key: s for s in steps if isinstance(s, mb.VendorCall)}
    refused = [mc.PURCHASED_SCHEMA.decode(s) for s in steps if not isinstance(s, mb.VendorCall)]
    assert len(refused) == 18 and {r["status"] for r in refused} == {1}
    assert refused[0]["detail"] == (
        "purchases of yours worth 100 already wait for the vendor's stock; with this 50 they exceed your balance "
        "100: finish them first (millicent retry); nothing was debited"
    )
    for order in orders.values():
        assert bulk_broker.finish_order(order, carry(vendor, order)).bought
    assert stock_row(bulk_broker, "reserved_value", "stock_value") == {"reserved_value": 100, "stock_value": 50}
    assert bulk_broker.account(cid) == 100
    # Another customer buys from the stock she could not reserve: from stock at once, no order.
    other = profile.generate_private_key(rng(21))
    cid2 = mc.OPENED_SCHEMA.decode(bulk_broker.open_account(profile.public_bytes(other.public_key())))["customer_id"]
    mb.deposit(bulk_broker.store, cid2, 100)
    issue = bulk_broker.begin_purchase(signed_purchase(other, cid2, 50, b"o" * 16), NOW)
    assert isinstance(issue, mb.VendorCall) and issue.kind == "issue"
    # A rich account waits on at most MAX_WAITING_SALES sales at once, however small.
    mb.deposit(bulk_broker.store, cid2, 10_000)
    small = [bulk_broker.begin_purchase(signed_purchase(other, cid2, 1, b"s%015d" % i), NOW) for i in range(20)]
    waiting = [s for s in small if isinstance(s, mb.VendorCall)]
    words = {mc.PURCHASED_SCHEMA.decode(s)["detail"] for s in small if not isinstance(s, mb.VendorCall)}
    assert len(waiting) == mb.MAX_WAITING_SALES == 16 and words == {
        "16 purchases of yours already wait for the vendor's stock (at most 16): finish them first (millicent "
        "retry); nothing was debited"
    }


def test_a_piece_reserved_for_a_sale_never_exceeds_what_the_sale_can_be_worth(
    bulk_broker: mb.BrokerCore, vendor: mv.VendorCore
) -> None:
    """A sale that waits for stock gets a piece of the order it waits on, reserved for it. Before, that piece was a
    piece of ``denomination`` (50 here) whatever the customer could pay, or of any pending order whose smallest piece
    covered the sale: a sale of 20 by a customer with 30 joined the operator's pending `bulk-buy` of 3 pieces of
    1 000 and had 1 000 of stock reserved for it. Now a piece reserved for a sale is worth at most what the sale can
    be worth: her balance less her other waiting sales' values (and at least the sale's value)."""
    # The operator's order of big pieces is out (its answer not applied yet) when the customer buys.
    big = bulk_broker.order_stock(VID, 3000, 3)
    key, cid = open_account(bulk_broker)
    mb.deposit(bulk_broker.store, cid, 30)
    param = signed_purchase(key, cid, 20, b"w" * 16)
    order = bulk_broker.begin_purchase(param, NOW)
    assert isinstance(order, mb.VendorCall) and order.kind == "order" and order.key != big.key  # not the 1 000s
    assert mc.BULK_BUY_SCHEMA.decode(order.param)["value"] == 3 * 30  # pieces of 30 (her balance), not of 50
    assert bulk_broker.finish_order(big, carry(vendor, big)).bought
    assert bulk_broker.finish_order(order, carry(vendor, order)).bought
    assert stock_row(bulk_broker, "reserved_value", "stock_value") == {"reserved_value": 30, "stock_value": 3000 + 60}
    # Her sale takes its piece: 20 to her, the change (10) back to stock; debited 20 once.
    issue = bulk_broker.begin_purchase(param, NOW)
    assert isinstance(issue, mb.VendorCall) and issue.kind == "issue"
    r = mc.PURCHASED_SCHEMA.decode(bulk_broker.finish_issue(issue, carry(vendor, issue)) or b"")
    assert r["status"] == 0 and r["balance"] == 10 and mc.Scrip.decode(r["scrip"]).value == 20
    assert stock_row(bulk_broker, "reserved_value", "stock_value") == {"reserved_value": 0, "stock_value": 3070}
    # Two sales of one account waiting at once: each piece within what that sale can be worth (100 - the other's).
    key2 = profile.generate_private_key(rng(23))
    cid2 = mc.OPENED_SCHEMA.decode(bulk_broker.open_account(profile.public_bytes(key2.public_key())))["customer_id"]
    mb.deposit(bulk_broker.store, cid2, 100)
    with bulk_broker.store.transaction() as txn:  # the stock is someone else's now: empty it
        for k, _ in txn.scan(mb.STOCK, VID):
            txn.delete(mb.STOCK, k)
    o1 = bulk_broker.begin_purchase(signed_purchase(key2, cid2, 60, b"x" * 16), NOW)
    o2 = bulk_broker.begin_purchase(signed_purchase(key2, cid2, 20, b"y" * 16), NOW)
    assert isinstance(o1, mb.VendorCall) and isinstance(o2, mb.VendorCall) and o1.key != o2.key
    assert [mc.BULK_BUY_SCHEMA.decode(o.param)["value"] // 3 for o in (o1, o2)] == [60, 40]  # 20 <= 40 <= 100 - 60
    for o in (o1, o2):
        assert bulk_broker.finish_order(o, carry(vendor, o)).bought
    assert stock_row(bulk_broker, "reserved_value")["reserved_value"] == 60 + 40  # within her balance


def test_every_status_is_its_own_value_on_the_wire() -> None:
    """Two names for one value make one an alias of the other: a vendor's `unavailable` (send it again) was read as
    `not_allowed` when both were 12."""
    assert len(set(mc.Status)) == len(mc.Status.__members__)
    assert (mc.Status(12), mc.Status(13)) == (mc.Status.UNAVAILABLE, mc.Status.NOT_ALLOWED)
    assert mc.Status(12).name == "UNAVAILABLE"


def test_a_vendors_long_refusal_of_a_stock_piece_still_answers_the_customer(
    bulk_broker: mb.BrokerCore, vendor: mv.VendorCore
) -> None:
    """A vendor's refusal may carry 200 characters of detail; the broker's words around it made the customer's
    answer longer than an answer holds, so applying it failed, every time: the customer, debited, never got an answer
    nor her money back. Now the vendor's words are cut to fit."""
    cid, param, issue = sale_from_fresh_stock(bulk_broker, vendor)
    c = vendor.vendor.prepare(issue.mtype, issue.param, NOW)
    assert isinstance(c, mc.Candidate)
    mt, p = vendor.vendor.refuse(c, mc.Status.SPENT, "x" * 200)  # MACed and sealed, as the vendor's own
    r = mc.PURCHASED_SCHEMA.decode(bulk_broker.finish_issue(issue, Message(U, U, mt, p)) or b"")
    assert r["status"] == mc.PURCHASE_REFUSED and r["balance"] == 100 and bulk_broker.account(cid) == 100
    assert r["detail"].startswith("the vendor refused the broker's stock (xxx") and r["detail"].endswith(
        "...): buy again"
    ) and len(r["detail"]) == 200  # fmt: skip
    assert bulk_broker.begin_purchase(param, NOW) == bulk_broker.finish_issue(issue, Message(U, U, mt, p))  # settled


def test_a_sale_whose_order_the_vendor_refused_no_longer_counts_against_the_accounts_waiting_bound(
    bulk_broker: mb.BrokerCore, vendor: mv.VendorCore
) -> None:
    """A sale waiting on an order the vendor refused holds no stock and no money: only the vendor's words wait for
    its customer. Before, its value still counted against her balance in the waiting bound: with 100, a sale of 80
    whose order was refused (its answer lost on the way to her) made her next purchase of 50 refused 'purchases of
    yours worth 80 already wait for the vendor's stock'."""
    key, cid = open_account(bulk_broker)
    mb.deposit(bulk_broker.store, cid, 100)

    def set_discount(pct: int) -> None:  # the broker's agreement names a discount the vendor did not agree to
        with bulk_broker.store.transaction() as txn:
            rec = json.loads(txn.get(mb.BULK, VID) or b"")
            txn.put(mb.BULK, VID, json.dumps({**rec, "discount_pct": pct}).encode())

    set_discount(50)
    first = signed_purchase(key, cid, 80, b"a" * 16)
    order = bulk_broker.begin_purchase(first, NOW)
    assert isinstance(order, mb.VendorCall) and order.kind == "order"
    outcome = bulk_broker.finish_order(order, carry(vendor, order))
    assert outcome.refused and "the agreed discount is 10 %" in outcome.detail
    set_discount(10)
    second = bulk_broker.begin_purchase(signed_purchase(key, cid, 50, b"b" * 16), NOW)
    assert isinstance(second, mb.VendorCall) and second.kind == "order", mc.PURCHASED_SCHEMA.decode(second)
    # The refused sale, sent again, is told the vendor's words, nothing debited.
    r = mc.PURCHASED_SCHEMA.decode(bulk_broker.begin_purchase(first, NOW))  # type: ignore[arg-type]
    assert r["status"] == 1 and "refused the broker's order" in r["detail"] and bulk_broker.account(cid) == 100


def test_accounts_never_credited_are_bounded_the_oldest_dropped_and_credited_ones_kept(
    tmp_path: Path, vendor: mv.VendorCore
) -> None:
    """Opening an account is unauthenticated: before, every opening with a new key stored an account for ever (an
    attacker opened about 500 a second and filled the broker's disk). Now at most ``max_unfunded`` accounts that were
    never credited are kept: one more drops the oldest of them (with the purchases it was refused), while an account
    ever credited is never dropped. A dropped customer opens again (a new customer id) and is served."""
    store = SqliteStore(str(tmp_path / "b.db"))
    mb.add_licence(store, mv.export_licence(vendor.store, "bob", rng=rng(4)), discount_pct=10)
    b = mb.BrokerCore(store, rng=rng(31), max_unfunded=3)
    keys = [profile.generate_private_key(rng(40 + i)) for i in range(6)]

    def open_(k: profile.PrivateKey) -> bytes:
        f = mc.OPENED_SCHEMA.decode(b.open_account(profile.public_bytes(k.public_key())))
        assert f["status"] == 0, f
        cid: bytes = f["customer_id"]
        return cid

    a, funded, c = (open_(k) for k in keys[:3])
    mb.deposit(store, funded, 100)
    assert purchase(b, keys[0], a, 5, b"r" * 16)["status"] == 1  # refused (balance 0), stored
    d, e = open_(keys[3]), open_(keys[4])  # four unfunded: the oldest (a) is dropped
    assert b.account(a) is None and b.account(c) == 0
    with store.transaction() as txn:
        assert txn.scan(mb.REQUESTS, a) == [] and txn.get(mb.REPLY_KEYS, a) is None
    open_(keys[5])  # c goes too; the credited account stays, whatever its age
    assert b.account(c) is None and b.account(funded) == 100 and b.account(d) == 0 and b.account(e) == 0
    with pytest.raises(mb.BrokerError, match="opens one first"):
        mb.deposit(store, a, 10)
    # Her key opens again: a new account, credited and served.
    again = open_(keys[0])
    assert again != a and open_(keys[0]) == again  # the same key again: the same account
    mb.deposit(store, again, 50)
    assert purchase(b, keys[0], again, 5, b"s" * 16)["status"] == 0
    assert purchase(b, keys[1], funded, 5, b"t" * 16)["status"] == 0
    # A flood of openings stores at most max_unfunded accounts beside the credited ones.
    for i in range(40):
        open_(profile.generate_private_key(rng(100 + i)))
    with store.transaction() as txn:
        assert txn.count(mb.ACCOUNTS) == 3 + 2 and txn.count(mb.KEYS) == 5 and txn.count(mb.REPLY_KEYS) == 5
        assert txn.count(mb.UNFUNDED) == txn.count(mb.UNFUNDED_BY_CID) == 3
