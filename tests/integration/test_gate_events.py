"""A gate admits the tickets of its events alone: one issuer (a ticketing server's device) sells many events, and a
ticket of another one must not open this gate.

Real processes on 127.0.0.1 (the authority's host, a holder's wallet host, ``cardnet gate run``); the operator sets
the gate up with ``cardnet gate setup``; the holder presents tickets with the wallet library (``Wallet.redeem``).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from test_gate_processes import cli, give, redeem
from waiting import wait_for

from cardnet.applets.gate import SETUP, STATE
from cardnet.bench.trnnet import TrnNet
from cardnet.services.wallet import WalletError

FINAL, YOUTH, PLAIN, LATER = (bytes([n]) * 16 for n in (0x71, 0x72, 0x73, 0x74))


def ticket(event: str, seat: str) -> bytes:
    """A ticket's body as the ticketing server mints it."""
    return json.dumps({"event": event, "seat": seat, "poid": "00" * 40}).encode()


def test_a_gate_refuses_a_ticket_of_another_event_of_its_issuer_and_the_holder_keeps_it(tmp_path: Path) -> None:
    """The gate of the final (``gate setup --event final``) takes a ticket of the final and refuses one of the youth
    cup from the same ticketing server, and a token of that issuer that names no event: ``wrong_event``, and both
    stay usable on the holder's card. Before, a gate knew issuers only, so a 1-euro ticket of any other event of the
    stadium's ticketing server walked into the final. ``--any-event`` admits every event again."""
    net = TrnNet(tmp_path, wallets=("a",), gates=("g",))
    with net:
        asyncio.run(_events(net))


async def _events(net: TrnNet) -> None:
    await net.setup_trace()
    await net.setup_gates()
    socket = net.hosts["g"].socket
    state = cli("gate", "setup", "--socket", socket, "--event", "final", "--json")
    assert state["events"] == ["final"]
    for oid, body in ((FINAL, ticket("final", "A1")), (YOUTH, ticket("youth", "Y1")), (PLAIN, b"2 drinks")):
        await give(net, oid, "a", body)
    holder = net.hosts["a"]
    assert (await redeem(net, holder, FINAL, "g")).taken
    youth = await redeem(net, holder, YOUTH, "g")
    assert not youth.taken and youth.reason == "wrong_event: youth", youth
    plain = await redeem(net, holder, PLAIN, "g")
    assert not plain.taken and plain.reason == "wrong_event: the ticket names no event", plain
    listed = await net.tokens("a")
    assert listed.get(YOUTH) == "enabled" and listed.get(PLAIN) == "enabled", listed
    assert FINAL not in listed
    status = cli("gate", "status", "--socket", socket, "--json")
    assert status["admitted"] == 1 and status["refused"] == 2 and status["events"] == ["final"], status

    assert cli("gate", "setup", "--socket", socket, "--any-event", "--json")["events"] == []
    await give(net, LATER, "a", ticket("youth", "Y2"))
    assert (await redeem(net, holder, LATER, "g")).taken


def test_gate_commands_before_the_gate_runs_say_to_start_it(tmp_path: Path) -> None:
    """`cardnet gate setup` (status, admissions, prune) before `cardnet gate run`: the hint names the gate's own
    command. Before, it asked whether `cardnet host run` or `cardnet authority run` was running (found following the
    ticketing walkthrough, which sets the gate up after starting it)."""
    sock = str(tmp_path / "gate.sock")
    for command in (("setup", "--wait", "5"), ("status",), ("admissions",), ("prune", "--before", "30")):
        r = subprocess.run(
            [sys.executable, "-m", "cardnet.cli.main", "gate", *command[:1], "--socket", sock, *command[1:], "--json"],
            capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "CARDNET_PIN": "1234"},
        )  # fmt: skip
        error = json.loads(r.stdout)["error"]
        assert r.returncode == 2 and error["reason"] == "no_host", (command, r.stdout, r.stderr)
        assert "cardnet gate run --config" in error["hint"], error


def test_one_ticket_presented_at_two_gates_at_once_goes_into_one(tmp_path: Path) -> None:
    """A holder (or a script) presents the same ticket at two gates at the same moment: the card sends it to one
    gate; the other presentation is refused on the card (the ticket is on its way), so exactly one gate admits it
    and the other never sees it."""
    net = TrnNet(tmp_path, wallets=("a",), gates=("g1", "g2"))
    with net:
        asyncio.run(_two_gates(net))


async def _two_gates(net: TrnNet) -> None:
    await net.setup_trace()
    await net.setup_gates()
    await give(net, FINAL, "a", ticket("final", "A1"))
    holder = net.hosts["a"]
    got = await asyncio.gather(*(redeem(net, holder, FINAL, g) for g in ("g1", "g2")), return_exceptions=True)
    taken = [g for g, r in zip(("g1", "g2"), got, strict=True) if not isinstance(r, BaseException) and r.taken]
    assert len(taken) == 1, got
    other = next(r for r in got if isinstance(r, BaseException) or not r.taken)
    assert isinstance(other, WalletError), other  # refused on the holder's card: the ticket is being sent

    async def settled() -> bool:  # taken is the transfer's commit: the verdict waits for the authority's answer
        return [(await net.ask(g, SETUP, STATE))["pending"] for g in ("g1", "g2")] == [0, 0]

    await wait_for("both gates' verdicts (none pending)", settled)
    states = {g: (await net.ask(g, SETUP, STATE))["admitted"] for g in ("g1", "g2")}
    assert sorted(states.values()) == [0, 1], states
    assert FINAL not in await net.tokens("a")
