"""`cardnet speed complain`: a customer takes a paid purchase whose product is not what the vendor catalogued to the
broker from the command line, and gets the price back (paper 5.7; docs/speed.md, "Complaints").

Real processes (tests/integration/speedprocs.py): a broker, a vendor that delivers other content than its signed
catalogue entry names, a customer's card on a host; every step a `cardnet` command. Before, the broker judged
complaints but no command (and nothing in the customer's library) sent one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hostprocs import cardnet
from speedprocs import NEWS, SONG, SpeedNet, build, run


@pytest.fixture
def net(tmp_path: Path) -> Iterator[SpeedNet]:
    n = build(tmp_path)
    yield n
    n.stop()


def _cheat(net: SpeedNet, product: str) -> None:
    """The vendor (stopped) delivers ``product`` as other bytes than its signed catalogue entry names."""
    from cardnet.services.speed import stored
    from cardnet.services.speed import vendor as sv
    from cardnet.store import open_store

    store = open_store(f"sqlite:///{net.tmp / 'vendor.db'}", kind="speed-vendor", create=False)
    raw = stored.get(store, sv.CATALOGUE, product.encode())
    assert raw is not None
    stored.put(store, sv.CATALOGUE, product.encode(), sv._PRODUCT.encode({**sv._PRODUCT.decode(raw),
                                                                          "content": b"a cheap copy"}))  # fmt: skip
    store.close()


def test_a_customer_complains_from_the_command_line_and_gets_the_refund(net: SpeedNet) -> None:
    net.vendor.stop()
    _cheat(net, NEWS)
    net.vendor.start()
    alice = net.customers["alice"]
    out = net.tmp / "alice-bought"
    bad = alice.buy(net, NEWS, limit="1.00 EUR")  # paid from the purse: 0.80 EUR
    assert Path(bad["files"][0]).read_bytes() == b"a cheap copy"
    good = alice.buy(net, SONG, limit="2.50 EUR")
    before = net.accounts()

    def complain(which: str, account: str = alice.account, check: bool = True) -> Any:
        return run("speed", "complain", "--out", str(out), "--purchase", which, "--vendor", net.vendor.address,
                   "--account", account, "--ca-cert", str(net.tmp / "ca.pem"), check=check)  # fmt: skip

    got = complain(bad["poid"])
    assert got == {"poid": bad["poid"], "products": [NEWS], "upheld": True,
                   "why": f"not the catalogued content: {NEWS}", "refund": "0.80 EUR"}, got  # fmt: skip
    after = net.accounts()
    assert after[alice.account] == {"EUR": before[alice.account]["EUR"] + 80}
    assert after["V-1"] == {"EUR": before["V-1"]["EUR"] - 80}

    again = complain(bad["poid"][-16:])  # the last 16 digits (the files' names) are enough; refunded once
    assert again["upheld"] is True and again["refund"] is None, again
    assert net.accounts() == after
    words = cardnet("speed", "complain", "--out", str(out), "--purchase", bad["poid"], "--vendor", net.vendor.address,
                    "--account", alice.account, "--ca-cert", str(net.tmp / "ca.pem")).stdout  # fmt: skip
    assert "was upheld before" in words and "nothing more now" in words, words

    honest = complain(good["poid"])
    assert honest["upheld"] is False and "every product is the content its entry names" in honest["why"], honest
    assert net.accounts() == after

    # refused in words, nothing changed
    other = alice.buy(net, NEWS, limit="1.00 EUR")
    e = complain(other["poid"], account="V-1", check=False)
    assert e["error"]["reason"] == "not_your_account" and "--account" in e["error"]["hint"], e
    for which, reason in (("ffffffffffffffff", "unknown_purchase"), ("not-hex", "unknown_purchase")):
        e = complain(which, check=False)
        assert e["error"]["reason"] == reason and "poid" in e["error"]["hint"], e
    nowhere = str(net.tmp / "nowhere")
    e = run("speed", "complain", "--out", nowhere, "--purchase", bad["poid"], "--vendor", net.vendor.address,
            "--account", alice.account, "--ca-cert", str(net.tmp / "ca.pem"), check=False)  # fmt: skip
    assert e["error"]["reason"] == "no_journal", e
    r = cardnet("speed", "complain", "--out", str(out), "--purchase", other["poid"], "--vendor", "127.0.0.1:1",
                "--account", alice.account, "--ca-cert", str(net.tmp / "ca.pem"), check=False)  # fmt: skip
    assert r.returncode == 2 and "cannot reach the vendor" in r.stderr and "Traceback" not in r.stderr, r
    assert net.accounts() == {**after, "V-1": {"EUR": after["V-1"]["EUR"] + 80}}  # (the second sale's credit)
    assert complain(other["poid"])["refund"] == "0.80 EUR"
    assert json.loads(cardnet("speed", "broker", "accounts", "--store", str(net.tmp / "broker.db"),
                              "--json").stdout)["accounts"]["V-1"] == after["V-1"]  # fmt: skip
