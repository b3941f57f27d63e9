"""One ``cardnet wallet ui`` per card: a second, on the same card (through another wallet config, or none), is
refused naming the one that runs (its pid and URL) and what to do; once that one ends (stopped, or killed), the
next starts. Real processes: a host with card a, and ``cardnet wallet ui`` processes on it (cli/wallet_ui.py, the
claim of store/owner.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
from test_web_wallet import start_ui

from cardnet.bench.procs import stop_process
from cardnet.bench.trnnet import PIN, TrnNet


def _second(net: TrnNet, *extra: str) -> subprocess.CompletedProcess[str]:
    """``cardnet wallet ui`` on card a through another wallet config (socket and card in it), to its end (one that
    starts serves until it is stopped: the 30 s timeout fails the test)."""
    other = net.tmp / "other-wallet.toml"
    other.write_text(f'socket = "{net.hosts["a"].socket}"\ncard = "{net.uids["a"].domain.hex()}"\n')
    cmd = [sys.executable, "-m", "cardnet.cli.main", "wallet", "ui", "--config", str(other), "--listen",
           "127.0.0.1:0", *extra]  # fmt: skip
    return subprocess.run(cmd, check=False, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "CARDNET_PIN": PIN})  # fmt: skip


def test_a_second_wallet_ui_on_the_same_card_is_refused_naming_the_first(tmp_path: Path) -> None:
    net = TrnNet(tmp_path, wallets=("a",))
    with net:
        first = start_ui(net, "a")
        try:
            r = _second(net, "--json")
            error = json.loads(r.stdout)["error"]
            assert r.returncode == 2 and error["reason"] == "in_use", r.stdout + r.stderr
            assert error["pid"] == first.proc.pid and error["url"] == first.url, error
            assert f"pid {first.proc.pid}, at {first.url}" in error["message"], error
            assert f"kill {first.proc.pid}" in error["hint"] and "Open in another tab" in error["hint"], error
            r = _second(net)  # for a person: the same words, no traceback
            assert r.returncode == 2 and "already runs" in r.stderr and first.url in r.stderr, r.stderr
            assert "Traceback" not in r.stderr, r.stderr
            assert first.proc.poll() is None  # the first still serves its page
            assert httpx.post(first.url + "api/login", json={"token": first.token}).status_code == 200
        finally:
            stop_process(first.proc)  # stopped: the next one starts
        second = start_ui(net, "a")
        try:
            r = _second(net, "--json")
            assert r.returncode == 2 and json.loads(r.stdout)["error"]["pid"] == second.proc.pid, r.stdout
        finally:
            stop_process(second.proc, kill=True)  # killed (SIGKILL): its claim went with it, the next one starts
        third = start_ui(net, "a")
        stop_process(third.proc)
