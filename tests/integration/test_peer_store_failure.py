"""A ticket sent, or an exchange offered, to a card that cannot write its store (a full or failing disk), with
real host processes on 127.0.0.1.

The fault is the kernel's: the receiving card's host process gets a soft ``RLIMIT_FSIZE`` of one byte
(``diskfull.disk_full``), so every write of its card's store fails as on a full disk; the limit is put back to mend
the "disk". Its host tells the sender's host at once (``host.undeliverable`` code ``store_failed``), so the sender's
wait (``cardnet wallet send --wait``, ``cardnet exchange offer --wait``, the wallet library's ``wait_moved`` and
``wait``) stops at once in words instead of at its end: nothing was lost, nothing is cancelled, and the transfer or
the exchange goes on by itself once the disk is mended.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from diskfull import disk_full
from test_gate_processes import give

from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.services.wallet import Wallet, WalletError

T1 = bytes([0x61]) * 16
T2, T3 = bytes([0x62]) * 16, bytes([0x63]) * 16
WAIT_S = 30.0  # the sender is willing to wait this long: it is told long before


def cli(net: TrnNet, card: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``cardnet ARGS --json`` on ``card``'s host (the sender's side)."""
    hp = net.hosts[card]
    return subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", *args, "--socket", hp.socket, "--card",
         net.uids[card].domain.hex(), "--json"],
        check=False, capture_output=True, text=True, timeout=120,
        env={**os.environ, "CARDNET_PIN": PIN, "CARDNET_HOME": str(net.tmp)},
    )  # fmt: skip


def error_of(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert r.returncode != 0 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    error: dict[str, Any] = json.loads(r.stdout)["error"]
    return error


def test_a_ticket_sent_to_a_card_that_cannot_write_says_so_at_once_and_moves_once_it_can(tmp_path: Path) -> None:
    net = TrnNet(tmp_path, wallets=("a", "b"))
    with net:
        b = net.hosts["b"].proc
        assert b is not None

        async def go() -> None:
            await net.setup_trace()
            await give(net, T1, "a", b"Final, seat 5")
            with disk_full(b.pid):
                r = await asyncio.to_thread(
                    cli, net, "a", "wallet", "send", T1.hex(), "--to", str(net.uids["b"]), "--wait", str(WAIT_S)
                )
                error = error_of(r)
                assert error["reason"] == "peer_store_failed", (error, net.hosts["a"].log_tail())
                said = error["message"]
                assert "cannot write its store" in said and "nothing was lost" in said, said
                assert "still yours" in said and "moves by itself once their disk is mended" in said, said
                assert f"cardnet trn cancel --oid {T1.hex()}" in error["hint"] and "free space" in error["hint"]
                async with await Wallet.open(net.hosts["a"].socket, pin=PIN) as wallet:
                    mine = await wallet.voucher(T1)  # not cancelled: still on its way, still a's
                    assert mine is not None and mine.status == "disabled+O", mine
                    # ... and so says the wallet library to a program waiting for it
                    with pytest.raises(WalletError) as got:
                        await wallet.wait_moved(T1, timeout_s=WAIT_S, recover_every_s=0.3)
                    assert got.value.reason == "peer_store_failed" and "still yours" in str(got.value), got.value
            async with await Wallet.open(net.hosts["a"].socket, pin=PIN) as wallet:  # mended: it moves by itself
                assert await wallet.wait_moved(T1, timeout_s=WAIT_S, recover_every_s=0.3) is None
            await net.settle("b", T1)

        asyncio.run(go())


def test_an_exchange_offered_to_a_card_that_cannot_write_says_so_at_once_and_goes_on_once_it_can(
    tmp_path: Path,
) -> None:
    net = TrnNet(tmp_path, wallets=("a", "b"), ttp=True)
    with net:
        b = net.hosts["b"].proc
        assert b is not None

        async def go() -> None:
            await net.setup_trace()
            await give(net, T2, "a", b"Final, seat 6")
            await give(net, T3, "b", b"Final, seat 7")
            for card in ("a", "b"):
                async with await Wallet.open(net.hosts[card].socket, pin=PIN) as w:
                    await w.set_ttp(net.uids["ttp"])
            with disk_full(b.pid):
                args = ("--give", T2.hex(), "--want", T3.hex(), "--to", str(net.uids["b"]), "--wait", str(WAIT_S))
                r = await asyncio.to_thread(cli, net, "a", "exchange", "offer", *args)
                error = error_of(r)
                assert error["reason"] == "peer_store_failed", (error, net.hosts["a"].log_tail())
                said = error["message"]
                assert "cannot write its store" in said and "nothing was lost" in said, said
                assert "your voucher is still yours" in said and "give it up" in said, said
                assert "free space" in error["hint"], error
                async with await Wallet.open(net.hosts["a"].socket, pin=PIN) as wallet:
                    (x,) = await wallet.exchanges()
                    assert x.phase == "offered", x  # not given up: the offer stands
                    with pytest.raises(WalletError) as got:
                        await wallet.wait(x.n1, timeout_s=WAIT_S, recover_every_s=0.3)
                    assert got.value.reason == "peer_store_failed", got.value
            async with await Wallet.open(net.hosts["b"].socket, pin=PIN) as wb:  # mended: the offer reaches b
                for _ in range(200):
                    offers = await wb.offers()
                    if offers:
                        break
                    await asyncio.sleep(0.1)
                assert [o.n1 for o in offers] == [x.n1], offers
                await wb.accept(x.n1)
            async with await Wallet.open(net.hosts["a"].socket, pin=PIN) as wallet:
                done = await wallet.wait(x.n1, timeout_s=WAIT_S, recover_every_s=0.3)
                assert done.swapped, done

        asyncio.run(go())
