"""A SPEED broker or vendor whose store cannot be written (a full disk): real processes, a real fault.

The fault is the kernel's: the test lowers the running service's soft ``RLIMIT_FSIZE`` to 1 byte with ``prlimit``
(every write the process makes to a file fails, ``EFBIG``, as SQLite's writes to a full disk fail: the broker's
store and its SAM's), then raises it again. Meanwhile the service keeps running and refuses each request at once
with ``speed.refused`` ``store_failed`` and words that say what to do, on the same connection (before: the
connection closed without a reason, "unreachable"); nothing was kept of what it refused and nothing is lost: the
purchase the broker refused is paid once by ``cardnet speed recover``, the load it refused is credited once by
``cardnet speed purse finish``, and a purchase the vendor refused is bought again; purse and accounts agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from diskfull import disk_full
from hostprocs import Service
from speedprocs import NEWS, SpeedNet, build, run


def _pid(service: Service) -> int:
    assert service.proc is not None
    return service.proc.pid


@pytest.fixture
def net(tmp_path: Path) -> Iterator[SpeedNet]:
    n = build(tmp_path)
    yield n
    n.stop()


def refused_store_failed(got: Any, who: str) -> None:
    error = got["error"]
    assert error["reason"] == "store_failed", error
    assert f"the {who} refused" in error["message"] and "cannot write its store" in error["message"], error
    assert "freed space" in error["hint"], error


def test_a_broker_or_vendor_that_cannot_write_its_store_refuses_in_words_and_loses_nothing(net: SpeedNet) -> None:
    alice = net.customers["alice"]
    assert alice.balance() == {"EUR": 2000}
    # the broker's store (and its SAM's) fails: the payment and a load are refused; paid and credited once after
    with disk_full(_pid(net.broker)):
        bought = alice.buy(net, NEWS, limit="1.00 EUR", check=False)  # delivered, its payment refused
        refused_store_failed(bought, "broker")
        assert "speed recover" in bought["error"]["hint"]
        loaded = run("speed", "purse", "load", "--socket", alice.host.socket, "--broker", net.broker.address,
                     "--amount", "5.00 EUR", "--account", alice.account, check=False)  # fmt: skip
        refused_store_failed(loaded, "broker")
        assert net.broker.proc is not None and net.broker.proc.poll() is None
    assert alice.balance() == {"EUR": 2000}
    assert net.accounts() == {"C-1": {"EUR": 8000}, "V-1": {}}
    [paid] = alice.recover(net)["finished"]  # the refused payment, paid once now
    assert paid["price"] == "0.80 EUR" and Path(paid["files"][0]).read_text() == "the news of the day\n" * 20
    assert alice.recover(net)["finished"] == []
    run("speed", "purse", "finish", "--socket", alice.host.socket, "--broker", net.broker.address, "--account",
        alice.account)  # fmt: skip  # the refused load, credited once now
    assert alice.balance() == {"EUR": 2000 - 80 + 500}
    assert net.accounts() == {"C-1": {"EUR": 8000 - 500}, "V-1": {"EUR": 80}}

    # the vendor's store fails: the purchase is refused before anything was delivered; bought again after
    with disk_full(_pid(net.vendor)):
        refused_store_failed(alice.buy(net, NEWS, limit="1.00 EUR", check=False), "vendor")
        assert net.vendor.proc is not None and net.vendor.proc.poll() is None
    assert alice.recover(net)["finished"] == []  # nothing was delivered, nothing waits to be paid
    assert alice.balance() == {"EUR": 2000 - 80 + 500}
    got = alice.buy(net, NEWS, limit="1.00 EUR")
    assert got["price"] == "0.80 EUR" and Path(got["files"][0]).read_text() == "the news of the day\n" * 20
    assert alice.balance() == {"EUR": 2000 - 80 + 500 - 80}
    assert net.accounts() == {"C-1": {"EUR": 8000 - 500}, "V-1": {"EUR": 80 + 80}}
