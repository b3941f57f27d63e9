"""``cardnet gate prune`` through the command's entry point, against a gate run by ``cardnet gate run`` beside
``cardnet authority run`` and a wallet host (processes on 127.0.0.1): an admitted ticket is pruned, listed only with
``--pruned``, counted by ``status``, and a clone's copy of it is still refused; a bad ``--before`` fails in words."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from test_gate_processes import cli, clone_host, give, redeem
from waiting import wait_for

from cardnet.applets.gate import SETUP, STATE
from cardnet.bench.trnnet import PIN, TrnNet

T1, T2 = bytes([0x51]) * 16, bytes([0x52]) * 16


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", *args], capture_output=True, text=True, timeout=60,
        env={**os.environ, "CARDNET_PIN": PIN}, check=False,
    )  # fmt: skip


def test_gate_prune_command(tmp_path: Path) -> None:
    net = TrnNet(tmp_path, wallets=("a",), gates=("g",), gate_refresh_s=0.5)
    with net:
        asyncio.run(_prune(net))


async def _prune(net: TrnNet) -> None:
    await net.setup_trace()
    await net.setup_gates(wait_ms=2500)
    await give(net, T1, "a", b"Final, seat 7")
    await give(net, T2, "a", b"Final, seat 8")
    a = net.hosts["a"]
    a.stop()
    clone = clone_host(net, "a", "a2", a.port)  # a copy of a's card while it holds T1
    a.restart()
    got = await redeem(net, a, T1, "g")
    assert got.taken, got

    async def final() -> bool:
        s = await net.ask("g", SETUP, STATE)
        return bool(s["admitted"] == 1 and s["pending"] == 0 and s["reports_waiting"] == 0)

    await wait_for("T1 admitted and reported", final, 30.0, every_s=0.1)

    async def final2() -> bool:
        s = await net.ask("g", SETUP, STATE)
        return bool(s["admitted"] == 2 and s["pending"] == 0 and s["reports_waiting"] == 0)

    sock = net.hosts["g"].socket

    done = run("gate", "prune", "--socket", sock, "--before", "0")  # human output: what was done, in words
    assert done.returncode == 0 and "pruned 1 admission(s) taken before" in done.stdout, done
    assert "a copy is still refused; freed" in done.stdout and "bytes of the gate card" in done.stdout, done
    assert cli("gate", "admissions", "--socket", sock, "--json") == {
        "admissions": [], "pruned": 1, "total": 0, "next": None,
    }  # fmt: skip
    (row,) = cli("gate", "admissions", "--socket", sock, "--pruned", "--json")["admissions"]
    assert row["oid"] == T1.hex() and row["pruned"] and row["holder"] is None, row
    assert (row["verdict"], row["report"]) == ("admitted", "traced"), row
    status = cli("gate", "status", "--socket", sock, "--json")
    assert status["admitted"] == 1 and status["pruned"] == 1 and status["admissions"] == 1, status

    again = run("gate", "prune", "--socket", sock, "--before", "0")
    assert again.returncode == 0 and "nothing to prune before" in again.stdout, again
    nothing = cli("gate", "prune", "--socket", sock, "--before", "0.5", "--json")
    assert {k: nothing[k] for k in ("pruned", "freed_bytes", "sessions", "kept")} == dict.fromkeys(
        ("pruned", "freed_bytes", "sessions", "kept"), 0
    ), nothing
    listing = run("gate", "admissions", "--socket", sock)
    assert listing.returncode == 0 and "1 pruned admission(s) not shown (--pruned lists them)" in listing.stdout
    shown = run("gate", "status", "--socket", sock)
    assert "pruned: 1 of those admissions" in shown.stdout, shown

    assert (await redeem(net, a, T2, "g")).taken
    await wait_for("T2 admitted and reported", final2, 30.0, every_s=0.1)

    # a bad --before: an error that says what to give, before anything is asked of the card
    for bad, what in (("yesterday", "neither a number of days nor a date"), ("-3", "0 or more"),
                      ("2999-01-01", "in the future")):  # fmt: skip
        r = run("gate", "prune", "--socket", sock, "--before", bad, "--json")
        assert r.returncode != 0 and "Traceback" not in r.stderr, r
        err = json.loads(r.stdout)["error"]
        assert err["reason"] == "bad_before" and what in err["message"] and "--before 30" in err["hint"], err

    # the clone presents the pruned ticket: still refused as a copy
    a.stop()
    clone.start()
    try:
        got = await redeem(net, clone, T1, "g")
        assert not got.taken and got.reason == "already_admitted", got
    finally:
        clone.stop()
    # its refusal is remembered (a resent copy gets the same answer) until its session ends: a prune forgets it
    forgot = run("gate", "prune", "--socket", sock, "--before", "0")
    assert forgot.returncode == 0 and "forgot 1 refused presentation(s)" in forgot.stdout, forgot
    # a page at a time: --limit, then --after the OID it printed
    first = cli("gate", "admissions", "--socket", sock, "--pruned", "--limit", "1", "--json")
    assert [r["oid"] for r in first["admissions"]] == [T1.hex()] and first["next"] == T1.hex(), first
    assert first["total"] == 2, first
    page = run("gate", "admissions", "--socket", sock, "--pruned", "--limit", "1")
    assert f"1 of 2 admission(s) shown; the next ones: --after {T1.hex()}" in page.stdout, page
    rest = cli("gate", "admissions", "--socket", sock, "--pruned", "--after", T1.hex(), "--json")
    assert [r["oid"] for r in rest["admissions"]] == [T2.hex()] and rest["next"] is None, rest
    bad = run("gate", "admissions", "--socket", sock, "--after", "nonsense", "--json")
    assert bad.returncode != 0 and json.loads(bad.stdout)["error"]["reason"] == "bad_oid", bad
