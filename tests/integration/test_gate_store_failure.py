"""A gate whose card cannot write its store (a full or failing disk), with real processes on 127.0.0.1.

``cardnet gate run --json`` beside ``cardnet authority run`` and a wallet host; the fault is the kernel's: the
gate's process gets a soft ``RLIMIT_FSIZE`` of one byte (``diskfull.disk_full``), so every write of its card's store
fails as on a full disk, and the limit is put back to mend the "disk". The operator is told in words that the gate
admits nothing and what to do, and again when it admits again; a holder presenting a ticket meanwhile is refused at
once in words (not after the timeout: the gate's host tells the holder's host) and keeps the ticket, which the gate
admits once when it is presented again after the mend.
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
from diskfull import disk_full
from test_gate_processes import Screen, cli, event, give, redeem

from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.cli import wallet_config
from cardnet.services.wallet import Wallet
from cardnet.web.wallet import WalletWeb

T1 = bytes([0x51]) * 16
WAIT_S = 30.0


async def web_enter(net: TrnNet, oid: bytes, gate: str) -> httpx.Response:
    """Holder a presents ``oid`` at ``gate`` from its web wallet (in this process, on a's real host): the answer."""

    async def open_wallet() -> Wallet:
        return await Wallet.open(net.hosts["a"].socket, pin=PIN)

    config = wallet_config.load(net.tmp / "a-wallet.toml")
    web = WalletWeb(open_wallet, config, app_socket=net.hosts["a"].socket, gate_wait_s=WAIT_S)
    try:
        served = await web.start("127.0.0.1", 0)
        async with httpx.AsyncClient(base_url=served.url, timeout=120) as client:
            token = served.login_url.partition("#login=")[2]
            session = (await client.post("/api/login", json={"token": token})).json()["session"]
            client.headers["Authorization"] = f"Bearer {session}"
            return await client.post("/api/enter", json={"oid": oid.hex(), "gate": gate})
    finally:
        await web.aclose()


def status(state: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["kind"] == "status" and e["state"] == state


def test_the_gate_says_its_card_cannot_write_and_admits_again_once_it_can(tmp_path: Path) -> None:
    net = TrnNet(tmp_path, wallets=("a",), gates=("g",), gate_refresh_s=0.5)
    with net:
        screen = Screen(net.hosts["g"])
        proc = net.hosts["g"].proc
        assert proc is not None

        async def go() -> None:
            await net.setup_trace()
            await net.setup_gates()
            await give(net, T1, "a", b"Final, seat 3")
            with disk_full(proc.pid):
                closed = await screen.wait("the gate closed", status("closed"))
                assert closed["reason"] == "store_failed", closed
                assert "cannot write its store" in closed["message"] and "admits no ticket" in closed["message"]
                assert "free space" in closed["hint"] and "opens again" in closed["hint"], closed
                assert net.hosts["g"].running
            await screen.wait("the gate open again", status("open"))
            assert [s["state"] for s in screen.statuses] == ["closed", "open"], screen.statuses  # said once each
            got = await redeem(net, net.hosts["a"], T1, "g")
            assert got.taken, got
            await screen.wait("T1 admitted", event("verdict", T1, verdict="admitted"))

        asyncio.run(go())


def test_a_holder_at_a_gate_whose_card_cannot_write_is_refused_at_once_and_the_ticket_is_admitted_once_later(
    tmp_path: Path,
) -> None:
    net = TrnNet(tmp_path, wallets=("a",), gates=("g",), gate_refresh_s=0.5)
    with net:
        screen = Screen(net.hosts["g"])
        a, proc = net.hosts["a"], net.hosts["g"].proc
        assert proc is not None
        gate = str(net.uids["g"])

        async def go() -> None:
            await net.setup_trace()
            await net.setup_gates()
            await give(net, T1, "a", b"Final, seat 4")
            with disk_full(proc.pid):
                # the holder walks up with `cardnet wallet enter`, willing to wait WAIT_S for the gate's answer
                r = await asyncio.to_thread(
                    subprocess.run,
                    [sys.executable, "-m", "cardnet.cli.main", "wallet", "enter", T1.hex(), "--gate", gate,
                     "--socket", a.socket, "--card", net.uids["a"].domain.hex(), "--wait", str(WAIT_S), "--json"],
                    capture_output=True, text=True, timeout=120, env={**os.environ, "CARDNET_PIN": PIN},
                )  # fmt: skip
                assert r.returncode != 0 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
                error = json.loads(r.stdout)["error"]
                assert error["reason"] == "gate_store_failed", (error, a.log_tail())
                assert "cannot write its store" in error["message"] and "still on your card" in error["message"]
                assert "staff" in error["hint"], error
                async with await Wallet.open(a.socket, pin=PIN) as wallet:  # the ticket is usable on a's card
                    mine = await wallet.voucher(T1)
                    assert mine is not None and mine.status == "enabled", mine
                    # ... and so says the wallet library to a program presenting it
                    got = await wallet.redeem(T1, net.uids["g"], timeout_s=WAIT_S, recover_every_s=0.3)
                    assert not got.taken and got.reason == "gate_store_failed", got
                    mine = await wallet.voucher(T1)
                    assert mine is not None and mine.status == "enabled", mine
                # ... and so does the web wallet, 503 (the gate cannot take tickets now: try later), not 409
                answer = await web_enter(net, T1, gate)
                assert (answer.status_code, answer.json()["error"]) == (503, "gate_store_failed"), answer.text
                assert "cannot write its store" in answer.json()["message"], answer.text
                assert "still on your card" in answer.json()["message"], answer.text
                async with await Wallet.open(a.socket, pin=PIN) as wallet:
                    mine = await wallet.voucher(T1)
                    assert mine is not None and mine.status == "enabled", mine
            got = await redeem(net, a, T1, "g", timeout_s=WAIT_S)  # the gate mended: admitted, once
            assert got.taken, got
            await screen.wait("T1 admitted", event("verdict", T1, verdict="admitted"))
            async with await Wallet.open(a.socket, pin=PIN) as wallet:
                assert await wallet.voucher(T1) is None
            rows = cli("gate", "admissions", "--socket", net.hosts["g"].socket, "--json")["admissions"]
            assert [(r["oid"], r["verdict"]) for r in rows] == [(T1.hex(), "admitted")], rows

        asyncio.run(go())
