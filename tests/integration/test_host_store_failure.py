"""A host whose card store cannot be written (a full disk, a failing disk): real host processes over TCP.

The fault is the kernel's: the test lowers the running host's soft ``RLIMIT_FSIZE`` to 1 byte with ``prlimit``, so
every write the process makes to a file fails (``EFBIG``), as SQLite's writes to a full disk fail, and raises it
again to mend the "disk". While the card's store cannot be written, a new application is refused with the reason
``store_failed`` and words that say what to do, an application already connected gets its order refused at once
(``undeliverable``) instead of waiting for an answer that never comes, the host keeps running, and a token sent to
the card meanwhile is not lost: once the store can be written again the transfer completes, the token on that card
alone.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from diskfull import disk_full

from cardnet.applets.trn import MINT, SEND
from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.host.client import AppClient
from cardnet.host.errors import HostError
from cardnet.services.wallet import Wallet, WalletError

OID = bytes.fromhex("5707e5707e5707e5707e5707e5707e00")


def test_a_card_whose_store_cannot_be_written_refuses_in_words_and_loses_nothing(tmp_path: Path) -> None:
    with TrnNet(tmp_path) as net:
        b = net.host_of("b")
        assert b.proc is not None
        pid = b.proc.pid

        async def go() -> None:
            await net.setup_trace()
            assert (await net.ask("agent", MINT, oid=OID, body=b"Final, seat 9"))["ok"]
            assert (await net.ask("agent", SEND, oid=OID, to=net.uids["a"]))["ok"]
            await net.settle("a", OID)
            wallet = await Wallet.open(b.socket, pin=PIN, card=net.uids["b"].domain)
            try:
                assert [v.oid for v in await wallet.vouchers()] == []
                with disk_full(pid):  # the "disk" of b's host fails
                    # a's card gives the token up; b's card cannot take it yet
                    assert (await net.ask("a", SEND, oid=OID, to=net.uids["b"]))["ok"]
                    with pytest.raises(WalletError) as order:
                        await wallet.vouchers()
                    assert order.value.reason == "undeliverable"
                    assert "cannot write its store" in str(order.value) and "free space" in str(order.value)
                    with pytest.raises(HostError) as opening:
                        await AppClient.connect(b.socket, card=net.uids["b"].domain)
                    assert opening.value.reason == "store_failed"
                    cli = await asyncio.to_thread(
                        subprocess.run,
                        [sys.executable, "-m", "cardnet.cli.main", "trn", "list", "--socket", b.socket, "--json"],
                        capture_output=True, text=True, env={**os.environ, "CARDNET_PIN": PIN}, timeout=60,
                    )  # fmt: skip
                    assert cli.returncode != 0, cli.stdout
                    error = json.loads(cli.stdout)["error"]
                    assert error["reason"] == "store_failed" and "free space" in error["hint"], error
                    assert b.running
                await net.settle("b", OID)  # the transfer sent while b's store failed completes: nothing lost
                assert [v.oid for v in await wallet.vouchers()] == [OID]
            finally:
                await wallet.close()

        asyncio.run(go())
