"""The gate with real processes on 127.0.0.1: ``cardnet gate run`` beside ``cardnet authority run`` and wallet hosts.

What the gate operator sees is what ``cardnet gate run --json`` prints (one JSON line per event); a holder
presents a ticket with the wallet library (``Wallet.redeem``); the commands an operator types are run as
``cardnet gate ...`` processes. The attacks are real: a clone is a copy of a wallet card's store run by a
host of its own, the blocked device is the clone the authority caught, and the authority is stopped.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

from cardnet.applets.authority import BLOCKED, BLOCKED_LIST, REVOKE
from cardnet.applets.gate import SETUP, STATE
from cardnet.applets.trn import MINT, SEND
from cardnet.bench.procs import HostProc, free_port
from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.card import Card
from cardnet.card.personalise import personalise
from cardnet.crypto import pki
from cardnet.services.wallet import Wallet, WalletError
from cardnet.store import SqliteStore

T1, T2, T3, T4 = (bytes([n]) * 16 for n in (0x11, 0x22, 0x33, 0x44))
WAIT_S = 30.0


def cli(*args: str) -> Any:
    r = subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "CARDNET_PIN": PIN}, check=False,
    )  # fmt: skip
    assert r.returncode == 0 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    return json.loads(r.stdout)


class Screen:
    """What a gate operator sees: the JSON lines ``cardnet gate run --json`` prints (read by a thread of its own: a
    select() on the pipe would miss lines already in the reader's buffer): its events, and the gate's status when
    it closes or opens again (``statuses``)."""

    def __init__(self, hp: HostProc) -> None:
        assert hp.proc is not None and hp.proc.stdout is not None
        self.hp = hp
        self.seen: list[dict[str, Any]] = []
        self.statuses: list[dict[str, Any]] = []
        self.lines: queue.Queue[str] = queue.Queue()
        out = hp.proc.stdout
        threading.Thread(target=lambda: [self.lines.put(line) for line in out], daemon=True).start()

    async def wait(
        self, what: str, match: Callable[[dict[str, Any]], bool], timeout_s: float = WAIT_S
    ) -> dict[str, Any]:
        for e in (*self.seen, *self.statuses):
            if match(e):
                return e
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            try:
                line = await asyncio.to_thread(self.lines.get, True, 0.2)
            except queue.Empty:
                continue
            got = json.loads(line)
            if "status" in got:  # (kind "status" for the matchers)
                e = {"kind": "status", "oid": None} | got["status"]
                self.statuses.append(e)
            else:
                e = got["event"]
                self.seen.append(e)
            if match(e):
                return e
        raise AssertionError(
            f"gate {self.hp.name} never showed {what}; it showed {self.seen} {self.statuses}\n{self.hp.log_tail()}"
        )


def event(kind: str, oid: bytes | None, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    want = None if oid is None else oid.hex()
    return lambda e: e["kind"] == kind and e["oid"] == want and all(e[k] == v for k, v in fields.items())


async def give(net: TrnNet, oid: bytes, to: str, body: bytes) -> None:
    assert (await net.ask("agent", MINT, oid=oid, body=body))["ok"]
    assert (await net.ask("agent", SEND, oid=oid, to=net.uids[to]))["ok"]
    await net.settle(to, oid)


async def redeem(net: TrnNet, host: HostProc, oid: bytes, gate: str, timeout_s: float = 10.0) -> Any:
    """The holder on ``host`` presents ``oid`` at ``gate`` (``Wallet.redeem``)."""
    async with await Wallet.open(host.socket, pin=PIN) as wallet:
        return await wallet.redeem(oid, net.uids[gate], timeout_s=timeout_s, recover_every_s=0.3)


def clone_host(net: TrnNet, original: str, name: str, port: int) -> HostProc:
    """A host of its own running a copy of ``original``'s card store (taken while its host is stopped)."""
    for suffix in ("", "-wal"):
        src = net.tmp / f"{original}.card.db{suffix}"
        if src.exists():
            shutil.copyfile(src, net.tmp / f"{name}.card.db{suffix}")
    old = net.hosts[original]
    hp = HostProc(name, net.tmp, port, old.domain)
    _, _, cards = old.config.read_text().partition("[[cards]]")
    hp.config.write_text(
        f'name = "{name}"\nlisten = "127.0.0.1:{port}"\napp_socket = "{name}.sock"\n\n[[cards]]'
        + cards.replace(f"sqlite:///{original}.card.db", f"sqlite:///{name}.card.db")
    )
    return hp


def route(net: TrnNet, host: str, card: str, port: int) -> None:
    """Point ``host``'s route for ``card``'s domain at ``port`` (read at its next start)."""
    cfg = net.hosts[host].config
    key = f'"{net.uids[card].domain.hex()}" = '
    cfg.write_text("".join(f'{key}"127.0.0.1:{port}"\n' if ln.startswith(key) else ln + "\n"
                           for ln in cfg.read_text().splitlines()))  # fmt: skip


def test_gate_admits_once_refuses_a_clone_a_revoked_ticket_and_a_blocked_device_and_admits_offline(
    tmp_path: Path,
) -> None:
    net = TrnNet(tmp_path, wallets=("a", "b"), gates=("g",), gate_refresh_s=0.5)
    with net:
        screen = Screen(net.hosts["g"])
        asyncio.run(_online_then_offline(net, screen))


async def _online_then_offline(net: TrnNet, screen: Screen) -> None:
    await net.setup_trace()
    await net.setup_gates(wait_ms=2500)
    await give(net, T1, "a", b"Final, seat 7")
    await give(net, T3, "a", b"Final, seat 9")
    await give(net, T2, "b", b"Final, seat 8")
    await give(net, T4, "b", b"Final, seat 10")
    # a thief copies a's card store (the EEPROM) while it holds T1 and T3
    a = net.hosts["a"]
    a.stop()
    clone = clone_host(net, "a", "a2", a.port)  # the clone will answer at a's address once a is gone
    a.restart()

    # 1. a presents T1: taken, admitted online (the authority recorded the movement in time)
    got = await redeem(net, a, T1, "g")
    assert got.taken, got
    e = await screen.wait("T1 admitted", event("verdict", T1, verdict="admitted"))
    assert e["holder"] == str(net.uids["a"]) and e["body"] == "Final, seat 7"

    # 2. the clone presents the same oid: refused with the reason, and it keeps its copy
    a.stop()
    clone.start()
    try:
        got = await redeem(net, clone, T1, "g")
        assert not got.taken and got.reason == "already_admitted", got
        await screen.wait("the clone refused", event("refused", T1, reason="already_admitted"))

        # 3. a revoked oid: the authority's answer (in time) refuses it; the gate keeps the dead ticket
        assert (await net.ask("authority", REVOKE, oid=T2))["ok"]
        got = await redeem(net, net.hosts["b"], T2, "g")
        assert got.taken
        e = await screen.wait("T2 refused", event("verdict", T2, verdict="refused"))
        assert e["reason"].startswith("revoked"), e

        # 4. the clone spends T1 elsewhere: the authority sees the branch and blocks a (original and clone)
        async with await Wallet.open(clone.socket, pin=PIN) as wallet:
            await wallet.transfer(T1, net.uids["b"])

        async def blocked_at_the_gate() -> bool:
            blocked = (await net.ask("authority", BLOCKED_LIST, BLOCKED))["uids"]
            epoch = (await net.ask("g", SETUP, STATE))["epoch"]
            return net.uids["a"] in blocked and epoch >= 1

        await wait_for("a blocked and the gate holding a blocklist", blocked_at_the_gate, WAIT_S, every_s=0.1)
        # ... and a blocked device presenting a ticket is refused at the gate's handshake: T3 never leaves it
        with pytest.raises(WalletError) as refused:
            await redeem(net, clone, T3, "g", timeout_s=1.5)
        assert refused.value.reason == "no_answer"
        e = await screen.wait("the blocked device refused", lambda e: e["kind"] == "refused" and e["oid"] is None)
        assert e["holder"] == str(net.uids["a"]) and e["reason"].startswith("blocked_device"), e

        # 5. the authority goes down: the gate admits on its own checks (after a shorter wait), with its last blocklist
        await net.ask("g", SETUP, STATE, wait_ms=400)
        net.hosts["auth"].stop()
        got = await redeem(net, net.hosts["b"], T4, "g")
        assert got.taken
        await screen.wait("T4 admitted offline", event("verdict", T4, verdict="admitted_offline", report="waiting"))
        refused_before = (await net.ask("g", SETUP, STATE))["refused"]
        with pytest.raises(WalletError):
            await redeem(net, clone, T3, "g", timeout_s=1.0)  # still refused: the last blocklist holds
        state = await net.ask("g", SETUP, STATE)
        assert state["refused"] > refused_before and state["reports_waiting"] == 1, state

        # 6. the authority is back: the report goes out and is recorded
        net.hosts["auth"].restart()
        await screen.wait("T4 reported", event("report", T4, report="traced"))
    finally:
        clone.stop()
    rows = {r["oid"]: r for r in cli("gate", "admissions", "--socket", net.hosts["g"].socket, "--json")["admissions"]}
    assert {o: (r["verdict"], r["report"]) for o, r in rows.items()} == {
        T1.hex(): ("admitted", "traced"),
        T2.hex(): ("refused", "disowned"),
        T4.hex(): ("admitted_offline", "traced"),
    }
    status = cli("gate", "status", "--socket", net.hosts["g"].socket, "--json")
    assert status["admitted"] == 2 and status["reports_waiting"] == 0 and status["blocklist_epoch"] >= 1, status


def test_a_clone_admitted_at_two_offline_gates_is_caught_when_they_report(tmp_path: Path) -> None:
    net = TrnNet(tmp_path, wallets=("c",), gates=("g1", "g2"), gate_refresh_s=0.5)
    clone_port = free_port()
    route(net, "g2", "c", clone_port)  # g2 meets the clone
    with net:
        screens = {g: Screen(net.hosts[g]) for g in ("g1", "g2")}

        async def go() -> None:
            await net.setup_trace()
            await net.setup_gates(wait_ms=300)
            await give(net, T1, "c", b"Final, seat 1")
            c = net.hosts["c"]
            c.stop()
            clone = clone_host(net, "c", "c2", clone_port)
            c.restart()
            clone.start()
            try:
                net.hosts["auth"].stop()
                for holder, g in ((c, "g1"), (clone, "g2")):
                    got = await redeem(net, holder, T1, g)
                    assert got.taken, got
                    await screens[g].wait("an offline admission", event("verdict", T1, verdict="admitted_offline"))
                net.hosts["auth"].restart()
                reports = [await screens[g].wait("the report", event("report", T1)) for g in ("g1", "g2")]
                outcomes = sorted(r["report"] for r in reports)
                assert outcomes == ["disowned", "traced"], reports
                flagged = next(r for r in reports if r["report"] == "disowned")
                # the branch (or, for a report resent after it, the block it caused)
                assert flagged["report_reason"].startswith(("branch", "blocked device")), flagged
                blocked = (await net.ask("authority", BLOCKED_LIST, BLOCKED))["uids"]
                assert net.uids["c"] in blocked
            finally:
                clone.stop()

        asyncio.run(go())


def test_gate_run_refuses_a_missing_pin_a_config_without_a_gate_card_and_a_wrong_pin(tmp_path: Path) -> None:
    """Errors an operator can meet before `ready`: one JSON error each (with --json), a hint, no traceback."""
    now = datetime.now(UTC)
    card = Card(SqliteStore(str(tmp_path / "g.card.db")))
    personalise(card, pki.CertificateAuthority.create("gate CA", now=now), pin=PIN, now=now)
    card.close()
    head = 'name = "g"\napp_socket = "g.sock"\n\n[[cards]]\nstore = "sqlite:///g.card.db"\n'
    (tmp_path / "gate.toml").write_text(head + 'applets = ["gate"]\n')
    (tmp_path / "trn.toml").write_text(head + 'applets = ["trn"]\n')

    def run(config: str, pin: str) -> dict[str, Any]:
        r = subprocess.run(
            [sys.executable, "-m", "cardnet.cli.main", "gate", "run", "--json", "--config", str(tmp_path / config)],
            capture_output=True, text=True, timeout=60, env={**os.environ, "CARDNET_PIN": pin}, check=False,
        )  # fmt: skip
        assert r.returncode != 0 and "Traceback" not in r.stderr + r.stdout and "ready" not in r.stdout, r
        err: dict[str, Any] = json.loads(r.stdout)["error"]
        assert err["hint"], err
        return err

    assert run("gate.toml", "")["reason"] == "no_pin"
    assert run("trn.toml", PIN)["reason"] == "bad_config"
    wrong = run("gate.toml", "0000")
    assert wrong["reason"] == "wrong_pin" and "tries left" in wrong["message"], wrong
