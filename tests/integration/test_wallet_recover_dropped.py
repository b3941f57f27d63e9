"""`cardnet wallet recover` reports the purchases it could not finish, as `cardnet speed recover` does.

Real processes (tests/integration/speedprocs.py): a broker, a vendor, the customer's card on a host, every step a
`cardnet` command. Two purchases wait in the wallet's purchases folder, delivered but unpaid while the broker was
down: one whose bill's deadline passed meanwhile (dropped, nothing paid), and one from a vendor that sealed the broker
another key than the one it enciphered the products with (paid, but its key does not open the products: kept as
evidence). The vendor's cheat is the one thing made up (as in tests/integration/test_speed_bad_key.py), in a vendor
process of its own. Before, `wallet recover` called finish_journal without its dropped list: neither purchase was in
its rows, and it said "nothing was left to finish".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hostprocs import Service, cardnet, free_port
from speedprocs import NEWS, SONG, SpeedNet, build, run

# The vendor's cheat: the K it seals to the broker in each bill is not the K it enciphered the delivery with.
CHEAT = """
import os, sys
from cardnet.protocols.speed import messages as sm
real = sm.seal_to
def seal_to(cert, plaintext, info):
    if info == sm.INFO_BILL_SECRET:
        plaintext = sm.BILL_SECRET.encode({**dict(sm.BILL_SECRET.decode(plaintext)), "k": os.urandom(32)})
    return real(cert, plaintext, info)
sm.seal_to = seal_to
from cardnet.cli.main import run
sys.exit(run(sys.argv[1:]))
"""


class CheatingVendor(Service):
    def spawn(self, *extra: str) -> subprocess.Popen[str]:
        with open(self.log, "a") as err:
            return subprocess.Popen([sys.executable, "-c", CHEAT, *self.args, *extra], stdout=subprocess.PIPE,
                                    stderr=err, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip


@pytest.fixture
def net(tmp_path: Path) -> Iterator[SpeedNet]:
    n = build(tmp_path)
    yield n
    n.stop()


def test_wallet_recover_reports_a_purchase_dropped_unpaid_and_one_whose_key_does_not_open_it(net: SpeedNet) -> None:
    alice, t = net.customers["alice"], net.tmp
    bought = t / "alice-bought"
    wallet = t / "wallet.toml"
    sets = {"socket": alice.host.socket, "card": alice.host.domain.hex(), "ca_cert": t / "ca.pem", "purchases": bought}
    run("wallet", "config", "--config", str(wallet), *(x for k, v in sets.items() for x in ("--set", f"{k}={v}")))
    config = alice.host.config  # a wallet's card: trn too (`cardnet wallet recover` finishes transfers first)
    config.write_text(config.read_text().replace('applets = ["purse", "speed"]', 'applets = ["trn", "purse", "speed"]'))
    alice.host.stop()
    alice.host.restart()
    vendor = ("speed", "vendor", "run", "--store", f"{t}/vendor.db", "--listen", f"127.0.0.1:{free_port()}")
    net.vendor.stop()
    net.broker.stop()  # delivered, not paid: each purchase waits in the journal
    cheat = CheatingVendor(t, *vendor)
    cheat.start()
    try:
        e = alice.buy(net, NEWS, limit="1.00 EUR", check=False, vendor=cheat.address)
        assert e["error"]["reason"] == "unreachable", e
    finally:
        cheat.stop()
    hurried = Service(t, *vendor, "--pay-within", "1")
    hurried.start()
    try:
        e = alice.buy(net, SONG, check=False, vendor=hurried.address)
        assert e["error"]["reason"] == "unreachable", e
    finally:
        hurried.stop()
    time.sleep(1.5)  # the song's bill is past its deadline
    net.broker.start()
    assert len(list((bought / ".purchases").iterdir())) >= 2  # (the journal: both under way)

    got = run("wallet", "recover", "--config", str(wallet), "--wait", "0")
    rows = {r["reason"]: r for r in got["recovered"] if r["what"] == "purchase"}
    assert set(rows) == {"bad_key", "bill_expired"} and got["unfinished"] == 0, got
    unopened, dropped = rows["bad_key"], rows["bill_expired"]
    assert unopened["outcome"].startswith(f"{NEWS}: paid 0.80 EUR"), unopened
    assert "does not open" in unopened["outcome"] and str(bought / ".purchases") in unopened["outcome"], unopened
    assert "tell the vendor and the broker's operator" in unopened["outcome"], unopened  # what to do
    assert dropped["outcome"].startswith(f"dropped, unpaid: {SONG} ("), dropped
    assert dropped["outcome"].endswith("nothing was paid, and the vendor may sell the goods again: buy again for a "
                                       "new bill"), dropped  # fmt: skip
    assert all(r["finished"] and (bought / ".purchases" / f"{r['id']}.purchase").exists() for r in rows.values()), rows
    assert alice.balance() == {"EUR": 2000 - 80}  # the unopened one was paid (once), the dropped one not

    # the same rows for a person; a second recover has nothing left
    again = cardnet("wallet", "recover", "--config", str(wallet), "--wait", "0")
    assert again.returncode == 0 and "nothing was left to finish" in again.stdout, again
    assert json.loads(cardnet("wallet", "recover", "--config", str(wallet), "--json").stdout)["recovered"] == []
