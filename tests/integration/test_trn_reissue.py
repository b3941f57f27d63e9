"""Reissue across real host processes: the agent's owner revokes a lost token and it reaches its last holder.

The authority service and the agent's card run on one host (``cardnet authority run``), the wallets on their
own hosts, over TCP (:class:`~cardnet.bench.trnnet.TrnNet`). Nobody sends ``trn.recover``: the hosts' default
timers do the resending.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cardnet.applets.authority import CHAIN, QUERY
from cardnet.applets.trn import MINT, REISSUE, REISSUE_STATE, SEND
from cardnet.bench.trnnet import PIN, TrnNet

OLD = bytes.fromhex("0f0e0d0c0b0a09080706050403020100")
NEW = bytes.fromhex("a0a1a2a3a4a5a6a7a8a9aaabacadaeaf")
WAIT_S = 60.0


@pytest.fixture
def net(tmp_path: Path) -> Iterator[TrnNet]:
    with TrnNet(tmp_path) as n:
        yield n


async def until(net: TrnNet, card: str, oid: bytes, status: str | None) -> None:
    """Wait (no trn.recover from here: the hosts' timers recover) until ``card`` shows ``oid`` in ``status``."""
    async with asyncio.timeout(WAIT_S):
        while (await net.tokens(card)).get(oid) != status:
            await asyncio.sleep(0.2)


async def reissued(net: TrnNet, **fields: Any) -> dict[str, Any]:
    async with asyncio.timeout(WAIT_S):
        while True:
            state = await net.ask("agent", REISSUE, REISSUE_STATE, **fields)
            if state["state"] != "pending":
                return state
            await asyncio.sleep(0.2)


def test_a_lost_token_is_reissued_to_its_last_holder_across_processes(net: TrnNet) -> None:
    async def go() -> None:
        await net.setup_trace()
        assert (await net.ask("agent", MINT, oid=OLD, body=b"Final, seat 7"))["ok"]
        assert (await net.ask("agent", SEND, oid=OLD, to=net.uids["a"]))["ok"]
        await until(net, "a", OLD, "enabled")
        assert (await net.ask("a", SEND, oid=OLD, to=net.uids["b"]))["ok"]
        await until(net, "b", OLD, "enabled")

        state = await reissued(net, oid=OLD, new_oid=NEW)
        assert state["state"] == "done" and state["holder"] == net.uids["b"], state
        await until(net, "b", NEW, "enabled")
        await until(net, "agent", NEW, None)
        old = await net.ask("authority", QUERY, CHAIN, oid=OLD)
        assert old["revoked"] == b"\x01" and old["reissued_as"] == NEW
        assert (await net.ask("authority", QUERY, CHAIN, oid=NEW))["holders"] == [net.uids["b"]]
        # b's surviving copy of the old oid is worthless: a never gets it enabled
        assert (await net.ask("b", SEND, oid=OLD, to=net.uids["a"]))["ok"]
        await until(net, "a", OLD, "trustless")
        assert (await net.ask("authority", QUERY, CHAIN, oid=OLD))["holders"] == [net.uids["a"], net.uids["b"]]

    asyncio.run(go())


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CARDNET_PIN": PIN},
        check=False,
    )


def test_cardnet_trn_reissue(net: TrnNet) -> None:
    asyncio.run(net.setup_trace())
    sock = net.hosts["auth"].socket
    agent = net.uids["agent"].domain.hex()
    assert asyncio.run(net.ask("agent", MINT, oid=OLD, body=b"seat 1"))["ok"]

    r = cli("trn", "reissue", "--socket", sock, "--card", agent, "--oid", OLD.hex(), "--new-oid", NEW.hex(), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    holder = str(net.uids["agent"])  # (a success names what was done: "reason" is the error objects' word)
    assert out == {
        "oid": OLD.hex(), "new_oid": NEW.hex(), "state": "done", "holder": holder,
        "message": f"reissued {OLD.hex()} as {NEW.hex()}: kept: this card is the last recorded holder ({holder})",
    }  # fmt: skip
    again = cli("trn", "reissue", "--socket", sock, "--card", agent, "--oid", OLD.hex(), "--json")  # idempotent
    assert again.returncode == 0 and json.loads(again.stdout) == out
    tokens = asyncio.run(net.tokens("agent"))
    assert tokens.get(NEW) == "enabled" and OLD not in tokens
    twice = cli("trn", "mint", "--socket", sock, "--card", agent, "--oid", NEW.hex(), "--body", "seat 2", "--json")
    err = json.loads(twice.stdout)["error"]  # an oid already on the card: what to do, not hint null
    assert twice.returncode == 2 and "already exists" in err["message"], err
    assert err["hint"].startswith("choose another --oid"), err

    unknown = cli("trn", "reissue", "--socket", sock, "--card", agent, "--oid", "11" * 16, "--body", "seat ?")
    assert unknown.returncode == 2 and "unknown oid" in unknown.stderr and "Traceback" not in unknown.stderr
    assert "what to do: check --oid (a typo?)" in unknown.stderr, unknown.stderr  # (not: give another --new-oid)
    no_body = cli("trn", "reissue", "--socket", sock, "--card", agent, "--oid", "22" * 16)
    assert no_body.returncode == 2 and "--body" in no_body.stderr and "what to do: check --oid" in no_body.stderr
    several = cli("trn", "reissue", "--socket", sock, "--oid", OLD.hex())
    assert several.returncode == 2 and "--card" in several.stderr
    authority = net.uids["authority"].domain.hex()
    chain = cli("authority", "chain", "--socket", sock, "--card", authority, "--oid", OLD.hex(), "--json")
    assert chain.returncode == 0, chain.stderr
    assert json.loads(chain.stdout)["reissued_as"] == NEW.hex() and json.loads(chain.stdout)["revoked"] is True
