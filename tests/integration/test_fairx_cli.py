"""Two people swap vouchers over TCP with the CLI alone (`cardnet exchange`, on the wallet library): host
processes for each wallet, and the authority's host running the authority, the agent and the TTP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_trn_cli import args, cli, error_json, ok_json, setup, until

from cardnet.bench.trnnet import TrnNet

T1 = "00112233445566778899aabbccddeeff"
T2 = "ffeeddccbbaa99887766554433221100"
T3 = "0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0f"  # held by nobody


@pytest.fixture
def net(tmp_path: Path) -> Iterator[TrnNet]:
    with TrnNet(tmp_path, ttp=True, ttp_host=True) as n:  # the TTP on a host of its own: `cardnet ttp run`
        yield n


def issue(net: TrnNet, oid: str, to: str, body: str) -> None:
    ok_json(cli("trn", "mint", *args(net, "agent"), "--oid", oid, "--body", body, "--json"))
    ok_json(cli("trn", "send", *args(net, "agent"), "--oid", oid, "--to", str(net.uids[to]), "--json"))
    asyncio.run(until(net, to, bytes.fromhex(oid), "enabled"))


def exchanges(net: TrnNet, card: str) -> dict[str, dict[str, Any]]:
    return {x["id"]: x for x in ok_json(cli("exchange", "list", *args(net, card), "--json"))["exchanges"]}


def test_two_people_swap_a_ticket_for_a_voucher_with_the_cli(net: TrnNet) -> None:
    setup(net)
    issue(net, T1, "a", "Final, seat 7")
    issue(net, T2, "b", "one coffee")
    for card in ("a", "b"):
        got = ok_json(cli("exchange", "set-ttp", *args(net, card), "--ttp", str(net.uids["ttp"]), "--json"))
        assert got["ttp"] == str(net.uids["ttp"])
    offered = ok_json(
        cli("exchange", "offer", *args(net, "a"), "--give", T1, "--want", T2, "--to", str(net.uids["b"]), "--json")
    )
    assert offered["phase"] == "offered" and offered["role"] == "initiator"
    xid = offered["id"]

    # b's owner sees the offer (what is offered, in words) and accepts it, waiting for the end
    async def proposed() -> None:
        async with asyncio.timeout(60):
            while exchanges(net, "b").get(xid, {}).get("phase") != "proposed":
                await asyncio.sleep(0.2)

    asyncio.run(proposed())
    human = cli("exchange", "list", *args(net, "b"))
    assert human.returncode == 0 and "offered to you: accept or reject it" in human.stdout, human
    assert exchanges(net, "b")[xid]["offered"] == "Final, seat 7"
    done = ok_json(cli("exchange", "accept", *args(net, "b"), "--id", xid, "--wait", "60", "--json"))
    assert done["phase"] == "done", done
    asyncio.run(until(net, "b", bytes.fromhex(T1), "enabled"))
    asyncio.run(until(net, "a", bytes.fromhex(T2), "enabled"))
    asyncio.run(until(net, "a", bytes.fromhex(T1), None))
    status = cli("exchange", "status", *args(net, "a"), "--id", xid)
    assert status.returncode == 0 and "swapped: you have the other voucher" in status.stdout, status
    # a second accept of the same offer is refused in words (what happened, what to do), with no traceback
    again = error_json(cli("exchange", "accept", *args(net, "b"), "--id", xid, "--json"))
    assert again["reason"] == "refused", again  # (the reason stays the card's)
    assert again["message"] == "there is nothing left to accept: this exchange ended in the swap, you have the " \
        "other voucher", again  # fmt: skip
    assert "cardnet trn list" in again["hint"], again
    words = cli("exchange", "give-up", *args(net, "a"), "--id", xid)
    assert words.returncode != 0 and "Traceback" not in words.stderr, words
    assert "error: there is nothing left to give up: this exchange ended in the swap" in words.stderr, words
    bad = error_json(cli("exchange", "status", *args(net, "a"), "--id", "1234", "--json"))
    assert "32 hex digits" in bad["message"], bad

    # an offer wanting a voucher b does not hold: b's accept says to reject it, and the rejection says why it ended
    offered = ok_json(cli("exchange", "offer", *args(net, "a"), "--give", T2, "--want", T3, "--to",
                          str(net.uids["b"]), "--json"))  # fmt: skip
    xid = offered["id"]
    asyncio.run(until_offered(net, "b", xid))
    assert_orders_out_of_turn_say_what_to_do(net, xid)
    cannot = error_json(cli("exchange", "accept", *args(net, "b"), "--id", xid, "--json"))
    assert cannot["reason"] == "illegal_move" and f"cardnet exchange reject --id {xid}" in cannot["hint"], cannot
    rejected = cli("exchange", "reject", *args(net, "b"), "--id", xid)
    assert rejected.returncode == 0 and "your voucher is yours again (you rejected it)" in rejected.stdout, rejected

    async def told() -> None:
        async with asyncio.timeout(60):
            while exchanges(net, "a")[xid]["phase"] != "aborted":
                await asyncio.sleep(0.2)

    asyncio.run(told())
    status = cli("exchange", "status", *args(net, "a"), "--id", xid)
    assert "(the other owner rejected it)" in status.stdout, status
    asyncio.run(until(net, "a", bytes.fromhex(T2), "enabled"))


PHASES = ("offered", "proposed", "agreed", "confirmed", "resolving", "aborting", "gave_up", "aborted", "done")
JARGON = ("proposed", "agreed", "resolving", "aborting", "gave_up", "m1", "m2", "m3", "m4", "initiator", "responder")


def assert_orders_out_of_turn_say_what_to_do(net: TrnNet, xid: str) -> None:
    """An offer from a waiting for b's answer: every order that does not apply yet says, in words and not in the
    protocol's phase names, what is happening and what to do instead (the --json reason stays ``refused``)."""
    cases = (  # (card, order, what it says, what to do)
        ("a", "resolve", "there is nothing for the TTP to settle yet: the other owner has not accepted your offer",
         f"`cardnet exchange give-up --id {xid}` takes your voucher back"),
        ("a", "accept", "this is your own offer: only the other owner accepts or rejects it",
         f"`cardnet exchange give-up --id {xid}`"),
        ("a", "abort", "only the owner who accepted the offer asks the TTP to abort it",
         f"`cardnet exchange status --id {xid}`"),
        ("b", "abort", "there is nothing to abort: you have not accepted this offer, and nothing of yours is locked",
         f"`cardnet exchange reject --id {xid}` declines"),
        ("b", "give-up", "this offer was made to you: only the owner who made it gives it up",
         f"`cardnet exchange accept --id {xid}` swaps"),
        ("b", "resolve", "only the owner who made the offer asks the TTP to resolve it",
         f"`cardnet exchange reject --id {xid}`"),
    )  # fmt: skip
    for who, order, says, todo in cases:
        r = cli("exchange", order, *args(net, who), "--id", xid)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r
        assert f"error: {says}" in r.stderr and "what to do: " in r.stderr and todo in r.stderr, (order, r.stderr)
        spoken = r.stderr.replace("(", " ").replace(")", " ").replace(":", " ").split()
        assert not any(f"({p})" in r.stderr for p in PHASES) and not set(JARGON) & set(spoken), (order, r.stderr)
        err = error_json(cli("exchange", order, *args(net, who), "--id", xid, "--json"))
        assert err["reason"] == "refused" and err["message"].startswith(says), err
    # how it stands, on each side: who offered it, and what to do next
    mine = cli("exchange", "status", *args(net, "a"), "--id", xid)
    assert f"An exchange you offered to {net.uids['b']}." in mine.stdout, mine
    assert "next: the other owner accepts or rejects it" in mine.stdout, mine
    theirs = cli("exchange", "list", *args(net, "b"))
    assert "made to you" in theirs.stdout and "responder" not in theirs.stdout, theirs


async def until_offered(net: TrnNet, card: str, xid: str) -> None:
    async with asyncio.timeout(60):
        while exchanges(net, card).get(xid, {}).get("phase") != "proposed":
            await asyncio.sleep(0.2)


def test_ttp_run_refuses_a_config_without_a_ttp_card(tmp_path: Path) -> None:
    config = tmp_path / "ttp.toml"
    config.write_text('name = "ttp"\nlisten = "127.0.0.1:0"\napp_socket = "ttp.sock"\n\n[[cards]]\n'
                      'store = "sqlite:///w.card.db"\napplets = ["trn"]\n')  # fmt: skip
    err = error_json(cli("ttp", "run", "--config", str(config), "--json"))
    assert err["reason"] == "no_ttp_card" and 'applets = ["ttp"]' in err["hint"], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ttp.toml"]  # nothing created
