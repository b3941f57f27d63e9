"""``cardnet trn`` and ``cardnet authority`` against real host processes (:class:`~cardnet.bench.trnnet.TrnNet`).

A mistyped destination strands nothing: ``trn send`` refuses a Uid the host cannot route (the token stays
enabled), a transfer whose receiver turns out to be unreachable is reported by the host (its log) and by
``trn list``, and ``trn cancel`` takes the token back. Every command takes ``--card``: the authority's host
runs two cards (the authority's and the agent's), and each command is run there against each card.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from cardnet.applets.trn import SEND
from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.wire import Uid

OID = "00112233445566778899aabbccddeeff"
OID2 = "ffeeddccbbaa99887766554433221100"
WAIT_S = 60.0
GHOST = Uid(bytes.fromhex("0badc0de0badc0de0badc0de"), 0)  # a card nobody has (a mistyped Uid)
ELSEWHERE = Uid(bytes.fromhex("e15e14e2e15e14e2e15e14e2"), 0)  # routed (to host b), but b has no such card


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cardnet.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CARDNET_PIN": PIN, "COLUMNS": "250"},
        check=False,
    )


def ok_json(r: subprocess.CompletedProcess[str]) -> Any:
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return json.loads(r.stdout)


def error_json(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert r.returncode != 0, r.stdout
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
    err: dict[str, Any] = json.loads(r.stdout)["error"]
    return err


@pytest.fixture
def net(tmp_path: Path) -> Iterator[TrnNet]:
    n = TrnNet(tmp_path)
    a = n.hosts["a"]
    # host a routes ELSEWHERE's domain to host b, which holds no such card: the host can tell only afterwards
    a.config.write_text(a.config.read_text() + f'"{ELSEWHERE.domain.hex()}" = "127.0.0.1:{n.ports["b"]}"\n')
    with n:
        yield n


def args(net: TrnNet, card: str) -> tuple[str, ...]:
    """--socket and --card of ``card``'s host (the auth host runs two cards: authority and agent)."""
    return ("--socket", net.host_of(card).socket, "--card", net.uids[card].domain.hex())


async def until(net: TrnNet, card: str, oid: bytes, status: str | None) -> None:
    async with asyncio.timeout(WAIT_S):
        while (await net.tokens(card)).get(oid) != status:
            await asyncio.sleep(0.2)


def tokens(net: TrnNet, card: str) -> dict[str, dict[str, Any]]:
    return {t["oid"]: t for t in ok_json(cli("trn", "list", *args(net, card), "--json"))["tokens"]}


def give_a_token(net: TrnNet, oid: str) -> None:
    """The agent mints ``oid`` and sends it to wallet a; it is traced and enabled there (all by the CLI)."""
    minted = ok_json(cli("trn", "mint", *args(net, "agent"), "--oid", oid, "--body", "Final, seat 7", "--json"))
    then = f"`cardnet trn send --oid {oid} --to UID` gives it to another card"  # ("reason" is for errors)
    message = f"Minted token {oid} on this card: it is enabled here; {then}."
    assert minted == {"oid": oid, "minted": True, "message": message}, minted
    a = str(net.uids["a"])
    sent = ok_json(cli("trn", "send", *args(net, "agent"), "--oid", oid, "--to", a, "--json"))
    message = (f"Sending token {oid} to {a}: this card has disabled it and is sending the receiver a copy; it is "
               "enabled at the receiver once this card has committed the transfer and, for a traced token, the "
               "authority has recorded the move.")  # fmt: skip
    assert sent == {"oid": oid, "to": a, "status": "sending", "message": message}, sent
    asyncio.run(until(net, "a", bytes.fromhex(oid), "enabled"))


def setup(net: TrnNet) -> None:
    """Register the agent and set every card's authority, with the CLI only (the auth host has two cards)."""
    cert = net.tmp / "agent.der"  # (`cardnet card show --cert` prints it while no host runs the card)
    cert.write_bytes(net.agent_cert)
    added = ok_json(cli("authority", "add-agent", *args(net, "authority"), "--cert", str(cert), "--json"))
    agent = str(net.uids["agent"])  # a success names what was done, as other commands do ("reason" is for errors)
    assert added == {
        "agent": agent,
        "registered": True,
        "message": f"agent {agent} registered: the tokens it issues can now be traced here",
    }, added
    for card in ("agent", "a", "b"):
        got = ok_json(
            cli("trn", "set-authority", *args(net, card), "--authority", str(net.uids["authority"]), "--json")
        )
        authority = str(net.uids["authority"])
        assert got == {"authority": authority, "message": f"the tokens on this card are now traced by {authority}"}


def test_a_mistyped_destination_strands_nothing(net: TrnNet) -> None:
    setup(net)
    give_a_token(net, OID)

    # 1. refused up front: no card of that domain on host a and no route to it; the token stays enabled
    err = error_json(cli("trn", "send", *args(net, "a"), "--oid", OID, "--to", str(GHOST), "--json"))
    assert err["reason"] == "no_route" and str(GHOST) in err["message"] and "[routes]" in err["hint"], err
    human = cli("trn", "send", *args(net, "a"), "--oid", OID, "--to", str(GHOST))
    assert human.returncode != 0 and "cannot reach" in human.stderr and "Traceback" not in human.stderr
    assert tokens(net, "a")[OID]["status"] == "enabled"

    # 2. routed, but the host at the end of the route has no such card: host b's notice comes back to host a,
    #    which logs it, and trn list reports the transfer as undeliverable with what to do
    sent = ok_json(cli("trn", "send", *args(net, "a"), "--oid", OID, "--to", str(ELSEWHERE), "--json"))
    assert sent["to"] == str(ELSEWHERE)

    async def reported() -> dict[str, Any]:
        async with asyncio.timeout(WAIT_S):
            while "undeliverable" not in (row := tokens(net, "a")[OID]):
                await asyncio.sleep(0.3)
            return row

    row = asyncio.run(reported())
    assert row["status"] == "disabled+O" and row["peer"] == str(ELSEWHERE)
    assert f"no route to domain {ELSEWHERE.domain.hex()}" in row["undeliverable"]
    assert f"cardnet trn cancel --oid {OID}" in row["hint"]
    human = cli("trn", "list", *args(net, "a"))
    assert human.returncode == 0 and "undeliverable" in human.stdout and "trn cancel" in human.stdout
    log = net.hosts["a"].log()
    assert f"cannot reach {ELSEWHERE}" in log and "WARNING" in log, log[-2000:]

    # 3. cancel: the token is enabled again, and a repeated cancel says there is nothing to cancel
    got = ok_json(cli("trn", "cancel", *args(net, "a"), "--oid", OID, "--json"))
    assert got["state"] == "cancelled", got
    assert tokens(net, "a")[OID]["status"] == "enabled"
    again = ok_json(cli("trn", "cancel", *args(net, "a"), "--oid", OID, "--json"))
    assert again["state"] == "enabled" and "nothing to cancel" in again["message"]
    err = error_json(cli("trn", "cancel", *args(net, "a"), "--oid", OID2, "--json"))
    assert err["reason"] == "not_held" and "does not hold" in err["message"]

    # an application other than the CLI may skip the check: host a itself has no route; list and cancel still work
    asyncio.run(net.ask("a", SEND, oid=bytes.fromhex(OID), to=GHOST))
    asyncio.run(until(net, "a", bytes.fromhex(OID), "disabled+O"))
    row = tokens(net, "a")[OID]
    assert row["status"] == "disabled+O" and "no route to domain" in row["undeliverable"], row
    assert f"cannot reach {GHOST}" in net.hosts["a"].log()
    assert ok_json(cli("trn", "cancel", *args(net, "a"), "--oid", OID, "--json"))["state"] == "cancelled"

    # and the token still moves where it should
    ok_json(cli("trn", "send", *args(net, "a"), "--oid", OID, "--to", str(net.uids["b"]), "--json"))
    asyncio.run(until(net, "b", bytes.fromhex(OID), "enabled"))
    chain = ok_json(cli("authority", "chain", *args(net, "authority"), "--oid", OID, "--json"))
    assert chain["holders"] == [str(net.uids["a"]), str(net.uids["b"])]
    # the receiver cannot cancel a transfer it is part of: only a token on its way out can be cancelled
    err = error_json(cli("trn", "cancel", *args(net, "a"), "--oid", OID, "--json"))
    assert err["reason"] == "not_held"


def test_every_trn_and_authority_command_takes_card_on_a_host_with_two_cards(net: TrnNet) -> None:
    auth = net.hosts["auth"].socket
    cert = net.tmp / "agent.der"  # a certificate (a file that holds none is refused before any card is chosen)
    cert.write_bytes(net.agent_cert)
    # without --card, a host with two cards cannot tell which: one clear error naming --card, for every command
    for cmd in (
        ("trn", "mint", "--oid", OID, "--body", "x"),
        ("trn", "send", "--oid", OID, "--to", str(net.uids["a"])),
        ("trn", "list"),
        ("trn", "cancel", "--oid", OID),
        ("trn", "set-authority", "--authority", str(net.uids["authority"])),
        ("trn", "recover"),
        ("trn", "reissue", "--oid", OID),
        ("authority", "chain", "--oid", OID),
        ("authority", "add-agent", "--cert", str(cert)),
    ):
        err = error_json(cli(*cmd, "--socket", auth, "--json"))
        assert "--card" in err["hint"] and "several cards" in err["message"], (cmd, err)

    # with --card, each command reaches the card it names on that one host
    setup(net)  # authority add-agent --card authority; trn set-authority --card agent (and the wallets)
    give_a_token(net, OID)  # trn mint / send --card agent
    assert OID not in tokens(net, "agent") and tokens(net, "a")[OID]["status"] == "enabled"
    ok_json(cli("trn", "recover", *args(net, "agent"), "--json"))
    chain = ok_json(cli("authority", "chain", *args(net, "authority"), "--oid", OID, "--json"))
    assert chain["issuer"] == str(net.uids["agent"]) and chain["holders"] == [str(net.uids["a"])]
    # the authority's card is not a wallet: trn commands sent to it are refused by that card, cleanly
    err = error_json(cli("trn", "list", *args(net, "authority"), "--json"))
    assert "Traceback" not in err["message"]
    # the agent's card holds no authority applet
    err = error_json(cli("authority", "chain", *args(net, "agent"), "--oid", OID, "--json"))
    assert "Traceback" not in err["message"]
    # an agent's own token can be cancelled on the two-card host too
    ok_json(cli("trn", "mint", *args(net, "agent"), "--oid", OID2, "--body", "seat 8", "--json"))
    asyncio.run(net.ask("agent", SEND, oid=bytes.fromhex(OID2), to=GHOST))
    assert "no route" in tokens(net, "agent")[OID2]["undeliverable"]
    assert ok_json(cli("trn", "cancel", *args(net, "agent"), "--oid", OID2, "--json"))["state"] == "cancelled"
    got = ok_json(cli("trn", "reissue", *args(net, "agent"), "--oid", OID2, "--json"))
    assert got["state"] == "done" and got["holder"] == str(net.uids["agent"])


def test_authority_run_refresh_re_signs_an_unchanged_blocklist(tmp_path: Path) -> None:
    """--refresh: cards with a maximum blocklist age need fresh epochs even when nobody new is blocked."""
    net = TrnNet(tmp_path, wallets=())
    auth = net.hosts["auth"]
    auth.command = (*auth.command, "--refresh", "0.3")
    with net:

        async def epochs(n: int) -> None:
            async with asyncio.timeout(WAIT_S):
                while f"blocklist epoch {n} signed: 0 blocked" not in auth.log():
                    await asyncio.sleep(0.2)

        asyncio.run(epochs(3))  # nothing blocked, yet epochs 1, 2, 3 are signed
    # at the default verbosity each epoch is shown as routine (INFO), and a routine run warns of nothing
    assert "INFO cardnet.authority: blocklist epoch 1 signed: 0 blocked device(s)" in auth.log(), auth.log()
    assert "WARNING" not in auth.log() and "ERROR" not in auth.log(), auth.log()
    bad = cli("authority", "run", "--config", str(auth.config), "--ca", str(tmp_path / "ca.cnca"), "--refresh", "-1")
    assert bad.returncode == 2 and "--refresh" in bad.stderr and "Traceback" not in bad.stderr


def test_cancel_after_the_commit_was_sent_says_it_is_too_late(tmp_path: Path) -> None:
    """A real host (in this process, so a Guard can lose bob's `committed`), the real CLI against its socket."""
    from cardnet.card import Card
    from cardnet.card.personalise import personalise
    from cardnet.crypto import pki
    from cardnet.host import Guard, Verdict
    from cardnet.host.config import load_config
    from cardnet.host.server import HostServer
    from cardnet.protocols import session as sess
    from cardnet.store import SqliteStore

    now = datetime.now(UTC)
    ca = pki.CertificateAuthority.create("cancel CA", now=now)
    uids = {}
    for name, role in (("agent", pki.Role.AGENT), ("alice", pki.Role.DEVICE), ("bob", pki.Role.DEVICE)):
        card = Card(SqliteStore(str(tmp_path / f"{name}.card.db")))
        uids[name] = personalise(card, ca, pin=PIN, now=now, role=role)
        card.close()
    sections = "".join(f'[[cards]]\nstore = "sqlite:///{n}.card.db"\napplets = ["trn"]\n\n' for n in uids)
    (tmp_path / "h.toml").write_text(f'name = "h"\napp_socket = "h.sock"\n\n{sections}')
    lose = {"on": False, "records": 0}

    def check(msg: Any, origin: Any) -> Verdict:  # bob's records to alice after the first (copied) are lost
        if lose["on"] and msg.mtype == sess.RECORD.code and (msg.src, msg.dst) == (uids["bob"], uids["alice"]):
            lose["records"] += 1
            if lose["records"] >= 2:
                return Verdict.DROP
        return Verdict.PASS

    started: list[tuple[asyncio.AbstractEventLoop, HostServer]] = []
    ready = threading.Event()

    def serve() -> None:
        async def main() -> None:
            server = HostServer(load_config(tmp_path / "h.toml"))
            server.host.guards.append(Guard("lose-committed", check))
            await server.start()
            started.append((asyncio.get_running_loop(), server))
            ready.set()
            try:
                await server.serve_forever()
            finally:
                await server.aclose()

        asyncio.run(main())

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        assert ready.wait(WAIT_S)
        sock = str(tmp_path / "h.sock")

        def on(name: str) -> tuple[str, ...]:
            return ("--socket", sock, "--card", uids[name].domain.hex())

        def status(name: str) -> str | None:
            rows = ok_json(cli("trn", "list", *on(name), "--json"))["tokens"]
            return next((r["status"] for r in rows if r["oid"] == OID), None)

        def wait_status(name: str, want: str | None) -> None:
            deadline = time.monotonic() + WAIT_S
            while status(name) != want:
                assert time.monotonic() < deadline, (name, want, status(name))
                time.sleep(0.2)

        ok_json(cli("trn", "mint", *on("agent"), "--oid", OID, "--body", "seat 9", "--json"))
        ok_json(cli("trn", "send", *on("agent"), "--oid", OID, "--to", str(uids["alice"]), "--untraceable", "--json"))
        wait_status("alice", "enabled")
        lose["on"] = True
        ok_json(cli("trn", "send", *on("alice"), "--oid", OID, "--to", str(uids["bob"]), "--untraceable", "--json"))
        wait_status("bob", "enabled")  # bob committed; alice never hears of it
        assert status("alice") == "disabled"
        err = error_json(cli("trn", "cancel", *on("alice"), "--oid", OID, "--json"))
        assert err["reason"] == "committed" and "too late" in err["message"] and "reissue" in err["hint"], err
        assert status("alice") == "disabled" and status("bob") == "enabled"
        assert ok_json(cli("trn", "cancel", *on("bob"), "--oid", OID, "--json"))["state"] == "enabled"  # his now
        lose["on"] = False  # the host's recovery tick resends alice's commit; bob answers from memory
        wait_status("alice", None)
        err = error_json(cli("trn", "cancel", *on("alice"), "--oid", OID, "--json"))
        assert err["reason"] == "not_held"
    finally:
        if started:
            loop, server = started[0]
            loop.call_soon_threadsafe(server.stop)
        thread.join(WAIT_S)


def test_authority_run_checks_its_pin_before_ready(tmp_path: Path) -> None:
    """A wrong $CARDNET_PIN: no `ready`, no traceback, reason wrong_pin with the tries left; one JSON object."""
    net = TrnNet(tmp_path, wallets=())
    argv = [sys.executable, "-m", "cardnet.cli.main", "authority", "run", "--config", str(net.hosts["auth"].config),
            "--ca", str(tmp_path / "ca.cnca")]  # fmt: skip

    def run(pin: str, *extra: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CARDNET_PIN": pin}
        return subprocess.run([*argv, *extra], capture_output=True, text=True, timeout=60, env=env, check=False)

    err = error_json(run("0000", "--json"))  # the whole of stdout is one JSON object: no `ready` line before it
    assert err["reason"] == "wrong_pin" and "2 tries left" in err["message"] and "CARDNET_PIN" in err["hint"], err
    human = run("0000")
    assert human.returncode != 0 and "ready" not in human.stdout, human.stdout
    assert "Traceback" not in human.stderr and "wrong PIN" in human.stderr and "1 try left" in human.stderr
    # the right PIN: ready (each wrong PIN spent one try; the right one restores them all)
    proc = subprocess.Popen([*argv, "--json"], env={**os.environ, "CARDNET_PIN": PIN}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline())["ready"]["name"] == "auth"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert "2 tries left" in run("0000").stderr


def test_mint_send_and_refusals_speak_in_sentences(tmp_path: Path) -> None:
    """Human output says what happened (not the card's note words), and a card's refusal is in its owner's words."""
    with TrnNet(tmp_path, wallets=("a",)) as net:
        setup_agent = ("authority", "add-agent", *args(net, "authority"), "--cert", str(tmp_path / "agent.der"))
        (tmp_path / "agent.der").write_bytes(net.agent_cert)
        added = cli(*setup_agent)
        assert added.returncode == 0 and "registered: the tokens it issues can now be traced here" in added.stdout
        auth = str(net.uids["authority"])
        for card in ("agent", "a"):
            told = cli("trn", "set-authority", *args(net, card), "--authority", auth)
            assert told.returncode == 0 and told.stdout == f"the tokens on this card are now traced by {auth}\n", told
        minted = cli("trn", "mint", *args(net, "agent"), "--oid", OID, "--body", "seat 7")
        assert minted.returncode == 0 and minted.stdout.startswith(f"Minted token {OID} on this card"), minted
        assert ": minted" not in minted.stdout
        a = str(net.uids["a"])
        sent = cli("trn", "send", *args(net, "agent"), "--oid", OID, "--to", a)
        assert sent.returncode == 0 and sent.stdout.startswith(f"Sending token {OID} to {a}: "), sent
        assert "the authority has recorded the move." in sent.stdout and ": start" not in sent.stdout, sent.stdout
        asyncio.run(until(net, "a", bytes.fromhex(OID), "enabled"))

        # a's card does not hold OID2: the card's refusal (illegal_move in state null) in the owner's words
        agent = str(net.uids["agent"])
        err = error_json(cli("trn", "send", *args(net, "a"), "--oid", OID2, "--to", agent, "--json"))
        assert err["reason"] == "illegal_move" and err["message"] == "this card does not hold that token", err
        assert "trn list" in err["hint"], err
        human = cli("trn", "send", *args(net, "a"), "--oid", OID2, "--to", agent)
        assert human.returncode != 0 and "this card does not hold that token" in human.stderr, human.stderr
        assert "state null" not in human.stderr and "Traceback" not in human.stderr
        # a wallet's card cannot mint: the role said in words, with this command's hint
        err = error_json(cli("trn", "mint", *args(net, "a"), "--oid", OID2, "--body", "x", "--json"))
        assert err["reason"] == "wrong_usage" and "only a ticketing agent's card" in err["message"], err


def test_add_agent_given_a_certificate_that_is_no_agents_says_so(tmp_path: Path) -> None:
    """``authority add-agent --cert`` given the CA file (its first PEM block is the CA's certificate, not an agent
    card's) is refused ``wrong_usage`` in the card's own words, about the certificate: not the words of a mint on a
    card that is no agent's ("only a ticketing agent's card mints ...", "run it against the agent's card"), which
    sent a person to another --card while the card named was the right one."""
    with TrnNet(tmp_path, wallets=("a",)) as net:
        mistaken = ("authority", "add-agent", *args(net, "authority"), "--cert", str(tmp_path / "ca.cnca"))
        err = error_json(cli(*mistaken, "--json"))
        assert err["reason"] == "wrong_usage", err
        assert "not an agent certificate" in err["message"] and "is a CA certificate" in err["message"], err
        assert "mints" not in err["message"] and "cardnet card show --store STORE --cert" in err["hint"], err
        human = cli(*mistaken)
        assert human.returncode == 2 and "not an agent certificate" in human.stderr, human.stderr
        assert "agent's card (--card DOMAIN)" not in human.stderr and "Traceback" not in human.stderr, human.stderr
        # the agent's own certificate is still taken, and a mint on a wallet's card keeps its words
        (tmp_path / "agent.der").write_bytes(net.agent_cert)
        added = cli("authority", "add-agent", *args(net, "authority"), "--cert", str(tmp_path / "agent.der"))
        assert added.returncode == 0 and "registered" in added.stdout, added
        err = error_json(cli("trn", "mint", *args(net, "a"), "--oid", OID2, "--body", "x", "--json"))
        assert err["reason"] == "wrong_usage" and "only a ticketing agent's card" in err["message"], err


def test_send_wait_returns_once_the_token_moved_and_says_why_when_it_did_not(net: TrnNet) -> None:
    """`trn send --wait` returns when the transfer is complete (the token has left the sender: the receiver
    holds it), with a progress line meanwhile; a token the receiver refuses comes back and the command fails
    ``refused`` in words; one whose receiver never answers fails ``timeout`` after --timeout, saying how it stands
    and what to do, and nothing is cancelled (the token is still on its way)."""
    setup(net)
    give_a_token(net, OID)
    b = str(net.uids["b"])

    # 1. moved: when the command returns, the token is no longer on a (it is b's); the wait is shown to a person
    sent = ok_json(cli("trn", "send", *args(net, "a"), "--oid", OID, "--to", b, "--wait", "--timeout", "60",
                       "--json"))  # fmt: skip
    assert sent["status"] == "sent" and sent["to"] == b and "reason" not in sent, sent
    assert OID not in tokens(net, "a"), tokens(net, "a")
    assert OID in tokens(net, "b")
    asyncio.run(until(net, "b", bytes.fromhex(OID), "enabled"))
    human = cli("trn", "send", *args(net, "b"), "--oid", OID, "--to", str(net.uids["a"]), "--wait")
    assert human.returncode == 0 and "waiting for the receiving card" in human.stderr, (human.stdout, human.stderr)
    assert f"sent {OID} to {net.uids['a']}: the receiving card has it" in human.stdout, human.stdout
    assert OID not in tokens(net, "b")
    asyncio.run(until(net, "a", bytes.fromhex(OID), "enabled"))

    # 2. refused: b takes tokens of another issuer only; the token comes back to a, and --wait says so
    ok_json(cli("trn", "policy", *args(net, "b"), "--issuer", str(net.uids["a"]), "--json"))
    err = error_json(cli("trn", "send", *args(net, "a"), "--oid", OID, "--to", b, "--wait", "--json"))
    assert err["reason"] == "refused" and "came back to this card" in err["message"], err
    assert tokens(net, "a")[OID]["status"] == "enabled"

    # 3. no answer: routed to a host without that card; after --timeout the command fails saying how it stands
    err = error_json(cli("trn", "send", *args(net, "a"), "--oid", OID, "--to", str(ELSEWHERE), "--wait",
                         "--timeout", "2", "--json"))  # fmt: skip
    assert err["reason"] == "timeout" and f"is not yet at {ELSEWHERE} after 2 s" in err["message"], err
    assert "nothing was cancelled" in err["message"] and f"cardnet trn cancel --oid {OID}" in err["hint"], err
    assert tokens(net, "a")[OID]["status"] == "disabled+O"  # still on its way: the wait gave up, not the transfer

    # --timeout alone is a mistake, said before anything moves
    err = error_json(cli("trn", "send", *args(net, "b"), "--oid", OID2, "--to", b, "--timeout", "5", "--json"))
    assert err["reason"] == "usage" and "--wait" in err["message"], err
