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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from diskfull import disk_full
from test_gate_processes import give
from webwallet import log_in, under_way_row

from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.cli import wallet_config
from cardnet.services.wallet import Wallet, WalletError
from cardnet.web.wallet import WalletWeb

T1 = bytes([0x61]) * 16
T2, T3 = bytes([0x62]) * 16, bytes([0x63]) * 16
WAIT_S = 30.0  # the sender is willing to wait this long: it is told long before


async def tickets_and_ttp(net: TrnNet, *tickets: tuple[bytes, str, bytes]) -> None:
    """``net``'s trace set up, each ``(oid, card, body)`` of ``tickets`` given to its card, and cards a and b
    following the TTP (an exchange needs one)."""
    await net.setup_trace()
    for oid, card, body in tickets:
        await give(net, oid, card, body)
    for card in ("a", "b"):
        async with await Wallet.open(net.hosts[card].socket, pin=PIN) as w:
            await w.set_ttp(net.uids["ttp"])


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
            await tickets_and_ttp(net, (T2, "a", b"Final, seat 6"), (T3, "b", b"Final, seat 7"))
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


T4, T5, T6 = bytes([0x64]) * 16, bytes([0x65]) * 16, bytes([0x66]) * 16


def test_the_web_wallet_answers_at_once_and_its_list_under_way_says_the_other_card_cannot_write(
    tmp_path: Path,
) -> None:
    """``/api/send`` and ``/api/exchange/offer`` of ``cardnet wallet ui`` (a WalletWeb on a's real host) answer at
    once, as ever (the page never hangs on the other card); the page's poll (``/api/state``) then shows the transfer
    and the offer under way with the other card's failure in words (``error`` peer_store_failed), as the CLI's
    ``--wait`` says it; once the disk is mended the transfer ends and its row goes."""
    net = TrnNet(tmp_path, wallets=("a", "b"), ttp=True)
    with net:
        b = net.hosts["b"].proc
        assert b is not None

        async def open_wallet() -> Wallet:
            return await Wallet.open(net.hosts["a"].socket, pin=PIN)

        async def go() -> None:
            await tickets_and_ttp(
                net, (T4, "a", b"Final, seat 8"), (T5, "a", b"Final, seat 9"), (T6, "b", b"Final, seat 10")
            )
            config = wallet_config.load(net.tmp / "a-wallet.toml")
            web = WalletWeb(open_wallet, config, app_socket=net.hosts["a"].socket, refresh_s=0.2)
            served = await web.start("127.0.0.1", 0)
            try:
                async with httpx.AsyncClient(base_url=served.url, timeout=120) as client:
                    await log_in(client, served)

                    async def row(what: str, rid: str, wanted: Callable[[dict[str, Any] | None], bool]) -> Any:
                        return await under_way_row(  # the page's poll, until the row is as wanted
                            client, what, rid, wanted, tries=300,
                            failure=lambda got: f"{what} {rid}: {got}; a's host: {net.hosts['a'].log_tail()}",
                        )  # fmt: skip

                    failed: Callable[[dict[str, Any] | None], bool] = lambda r: bool(r and r.get("error"))  # noqa: E731
                    with disk_full(b.pid):
                        sent = await client.post("/api/send", json={"oid": T4.hex(), "to": str(net.uids["b"])})
                        assert sent.status_code == 200, sent.text
                        got = await row("transfer", T4.hex(), failed)
                        assert got["error"] == "peer_store_failed", got
                        assert "cannot write its store" in got["problem"] and "nothing was lost" in got["problem"]
                        assert (
                            "still yours" in got["problem"] and f"cardnet trn cancel --oid {T4.hex()}" in got["problem"]
                        )
                        offered = await client.post(
                            "/api/exchange/offer", json={"give": T5.hex(), "want": T6.hex(), "to": str(net.uids["b"])}
                        )
                        assert offered.status_code == 200, offered.text
                        got = await row("exchange", offered.json()["id"], failed)
                        assert got["error"] == "peer_store_failed" and got["state"], got
                        assert "your voucher is still yours" in got["problem"] and "give it up" in got["problem"]
                    async with await Wallet.open(net.hosts["a"].socket, pin=PIN) as wallet:  # mended: it moves
                        assert await wallet.wait_moved(T4, timeout_s=WAIT_S, recover_every_s=0.3) is None
                    await row("transfer", T4.hex(), lambda r: r is None)
            finally:
                await web.aclose()
            await net.settle("b", T4)

        asyncio.run(go())
