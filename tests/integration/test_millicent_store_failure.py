"""A Millicent broker or vendor whose store cannot be written (a full disk): real processes, a real fault.

The fault is the kernel's: the test lowers the running service's soft ``RLIMIT_FSIZE`` to 1 byte with ``prlimit``
(every write the process makes to a file fails, as SQLite's writes to a full disk fail), then raises it again.
Meanwhile the service keeps running and answers at once, in words, that it cannot write its store and kept
nothing (before: the connection closed without a reason, and the vendor's customer was told "no answer"): the
broker answers a purchase ``pending`` (MACed) and an account opening refused; the vendor answers a spend
``unavailable``. The wallet keeps what it sent, and ``cardnet millicent retry`` finishes it once the store can be
written: the scrip bought once, the account debited once, the scrip spent once with its change.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diskfull import disk_full
from hostprocs import Service, cardnet

from cardnet.services.millicent.broker import BrokerCore
from cardnet.store import SqliteStore

VID = "00000000000000a1"


def _pid(service: Service) -> int:
    assert service.proc is not None
    return service.proc.pid


def mc(*args: str) -> Any:
    r = cardnet("millicent", *args, "--json", check=False)
    return json.loads(r.stdout)


def balance(store: str, cid: str) -> int | None:
    s = SqliteStore(store)
    try:
        return BrokerCore(s).account(bytes.fromhex(cid))
    finally:
        s.close()


def test_a_broker_or_vendor_that_cannot_write_its_store_says_so_and_the_retry_finishes_once(tmp_path: Path) -> None:
    v, b = str(tmp_path / "vendor.db"), str(tmp_path / "broker.db")
    cardnet("millicent", "vendor", "init", "--store", v, "--id", VID)
    cardnet("millicent", "vendor", "add-page", "--store", v, "--name", "hello", "--price", "3", "--text", "hello")
    cardnet("millicent", "vendor", "licence", "--store", v, "--broker", "bob", "--out", str(tmp_path / "lic.json"))
    cardnet("millicent", "broker", "add-licence", "--store", b, "--file", str(tmp_path / "lic.json"))
    broker = Service(tmp_path, "millicent", "broker", "run", "--store", b, "--listen", "127.0.0.1:0")
    vendor = Service(tmp_path, "millicent", "vendor", "run", "--store", v, "--listen", "127.0.0.1:0")
    try:
        broker.start()
        at = vendor.start()
        wallet = str(tmp_path / "alice.db")
        out = cardnet("millicent", "open", "--wallet", wallet, "--broker", broker.address).stdout
        cid = out.split("customer id ")[1].split()[0]
        cardnet("millicent", "broker", "deposit", "--store", b, "--customer", cid, "--amount", "100")

        with disk_full(_pid(broker)):  # the purchase is answered pending, in words; a new account refused
            got = mc("buy", "--wallet", wallet, "--vendor", VID, "--value", "20")["error"]
            assert got["reason"] == "pending" and "broker cannot write its store" in got["message"], got
            assert "millicent retry" in got["message"], got
            r = cardnet("millicent", "open", "--wallet", str(tmp_path / "bob.db"), "--broker", broker.address,
                        "--json", check=False)  # fmt: skip
            opened = json.loads(r.stdout)["error"]
            assert opened["reason"] == "refused" and "broker cannot write its store" in opened["message"], opened
            assert broker.proc is not None and broker.proc.poll() is None
        assert balance(b, cid) == 100 and mc("list", "--wallet", wallet)["scrip"] == []
        [done] = mc("retry", "--wallet", wallet)["requests"]
        assert done["outcome"] == "bought" and done["detail"].endswith("worth 20"), done
        assert [s["value"] for s in mc("list", "--wallet", wallet)["scrip"]] == [20]
        assert balance(b, cid) == 80  # debited once

        spend = ["spend", "--wallet", wallet, "--vendor", VID, "--at", at, "--product", "hello", "--price", "3"]
        with disk_full(_pid(vendor)):  # the spend is answered unavailable, in words; the scrip stays pending
            got = mc(*spend)["error"]
            assert got["reason"] == "store_failed" and "vendor cannot write its store" in got["message"], got
            assert "nothing was decided or spent" in got["message"], got
            assert vendor.proc is not None and vendor.proc.poll() is None
        listing = mc("list", "--wallet", wallet)
        assert listing["scrip"] == [] and len(listing["pending"]) == 1
        [done] = mc("retry", "--wallet", wallet)["requests"]
        assert done["outcome"] == "ok" and done["detail"] == "change 17", done
        assert [s["value"] for s in mc("list", "--wallet", wallet)["scrip"]] == [17]
        assert mc(*spend) == {"status": "ok", "change": 14, "content": "hello"}  # the change spends: nothing lost
    finally:
        broker.stop()
        vendor.stop()
