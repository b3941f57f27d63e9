"""``cardnet millicent catalogue --at HOST:PORT``: what a vendor sells and at what price, asked of a real vendor
process before paying, a page at a time over TCP; human and --json output, and errors in the customer's words."""

from __future__ import annotations

import json
from pathlib import Path

from hostprocs import Service, cardnet

from cardnet.protocols import millicent as mc
from cardnet.services.millicent import broker as mb
from cardnet.services.millicent import vendor as mv
from cardnet.store import SqliteStore

VID = "00000000000000a1"


def licensed_broker(v: str, b: str) -> None:
    """A vendor store ``v`` (vendor ``VID``) and a broker store ``b`` holding its licence for broker bob (10 %)."""
    with SqliteStore(v) as store:
        mv.init_vendor(store, bytes.fromhex(VID))
        lic = mv.export_licence(store, "bob")
    with SqliteStore(b) as store:
        mb.add_licence(store, lic, discount_pct=10)


def test_a_customer_sees_every_product_and_price_before_paying(tmp_path: Path) -> None:
    v = str(tmp_path / "vendor.db")
    products = {f"page-{n:03d}": 2 * n + 1 for n in range(mc.CATALOGUE_PAGE + 20)}  # two pages
    with SqliteStore(v) as store:
        mv.init_vendor(store, bytes.fromhex(VID))
        for name, price in products.items():
            mv.add_product(store, name, price, b"x")
    vendor = Service(tmp_path, "millicent", "vendor", "run", "--store", v, "--listen", "127.0.0.1:0")
    at = vendor.start()
    try:
        got = json.loads(cardnet("millicent", "catalogue", "--at", at, "--json").stdout)
        assert (got["vendor"], got["at"], got["complete"]) == (VID, at, True)
        assert {p["name"]: p["price"] for p in got["products"]} == products
        assert [p["name"] for p in got["products"]] == sorted(products)

        text = cardnet("millicent", "catalogue", "--at", at).stdout
        assert f"vendor {VID} at {at}" in text and "│ page-119 │ 239   │" in text, text
        assert f"buy one: cardnet millicent spend --vendor {VID} --at {at} --product page-000 --price 1" in text
    finally:
        vendor.stop()
    gone = cardnet("millicent", "catalogue", "--at", at, "--json", check=False)
    assert gone.returncode == 2 and json.loads(gone.stdout)["error"]["reason"] == "unreachable", gone.stdout
    assert "the vendor must be running" in json.loads(gone.stdout)["error"]["hint"], gone.stdout  # (was None)


def test_a_catalogue_asked_of_the_broker_says_to_check_the_address(tmp_path: Path) -> None:
    """``catalogue --at`` the broker's port (the walkthrough's other address, an easy slip): the broker answers
    something that is no catalogue, and the error says what to do (check --at: the vendor's HOST:PORT, as its
    ``vendor run`` printed it); before, it named only the message type the broker sent, with no hint."""
    v, b = str(tmp_path / "vendor.db"), str(tmp_path / "broker.db")
    licensed_broker(v, b)
    broker = Service(tmp_path, "millicent", "broker", "run", "--store", b, "--listen", "127.0.0.1:0")
    at = broker.start()
    try:
        got = cardnet("millicent", "catalogue", "--at", at, "--json", check=False)
        assert got.returncode == 2, (got.stdout, got.stderr)
        err = json.loads(got.stdout)["error"]
        assert err["reason"] == "bad_reply" and at in err["message"], err
        assert err["hint"] is not None and "check --at" in err["hint"] and "vendor run" in err["hint"], err
        human = cardnet("millicent", "catalogue", "--at", at, check=False)
        assert human.returncode == 2 and "what to do: check --at" in human.stderr, human.stderr
        assert "Traceback" not in human.stderr
    finally:
        broker.stop()
