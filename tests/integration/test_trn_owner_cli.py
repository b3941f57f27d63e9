"""The owner refuses a token (docs/trn.md section 3.1) with ``cardnet trn policy/offers/accept/reject`` against real
host processes (:class:`~cardnet.bench.trnnet.TrnNet`): a refused token goes back to its sender enabled, with the
reason its owner reads in ``trn list``; an accepted one arrives and is traced; an application on the receiver's
host without the PIN can neither set the policy nor answer an offer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_trn_cli import OID, args, cli, error_json, give_a_token, ok_json, setup, tokens, until

from cardnet.applets.trn import ACCEPT_POLICY, ANSWER
from cardnet.bench.trnnet import TrnNet
from cardnet.card import mtypes as cm
from cardnet.host.client import AppClient

RAW = bytes.fromhex(OID)


@pytest.fixture
def net(tmp_path: Path) -> Iterator[TrnNet]:
    with TrnNet(tmp_path) as n:
        yield n


async def without_pin(net: TrnNet, card: str) -> list[str]:
    """An application on ``card``'s host that did not verify the PIN sets the policy and accepts: the reasons."""
    async with await AppClient.connect(net.host_of(card).socket, card=net.uids[card].domain) as app:
        reasons = []
        for mtype, fields in ((ACCEPT_POLICY, {"ask": False}), (ANSWER, {"oid": RAW, "accept": True})):
            await app.send(net.uids[card], mtype, **fields)
            reasons.append(str((await app.recv_type(cm.REFUSED, timeout_s=30))["reason"]))
        return reasons


def test_the_owner_refuses_and_accepts_tokens_from_the_command_line(net: TrnNet) -> None:
    setup(net)
    give_a_token(net, OID)
    a, b, agent = (str(net.uids[c]) for c in ("a", "b", "agent"))

    # b's owner asks first: the token waits as an offer, a's card waits for the answer
    assert ok_json(cli("trn", "policy", *args(net, "b"), "--ask", "--json")) == {"issuers": [], "ask": True}
    ok_json(cli("trn", "send", *args(net, "a"), "--oid", OID, "--to", b, "--json"))
    asyncio.run(until(net, "b", RAW, "offered"))
    offers = ok_json(cli("trn", "offers", *args(net, "b"), "--json"))["offers"]
    assert offers == [{"oid": OID, "from": a, "issuer": agent, "body": "Final, seat 7"}]
    human = cli("trn", "offers", *args(net, "b"))
    assert human.returncode == 0 and OID in human.stdout and "cardnet trn accept" in human.stdout
    assert tokens(net, "a")[OID]["status"] == "disabled+O"
    # another application on b's host, without the PIN, cannot stand in for the owner
    assert asyncio.run(without_pin(net, "b")) == ["privileged", "privileged"]
    assert asyncio.run(net.tokens("b")) == {RAW: "offered"}

    # reject: back at a, enabled, and a's owner reads why; b holds nothing
    rejected = ok_json(cli("trn", "reject", *args(net, "b"), "--oid", OID, "--json"))  # ("reason" is for errors)
    message = f"rejected {OID}: the sender's card takes it back"
    assert rejected == {"oid": OID, "answer": "rejected", "message": message}, rejected
    asyncio.run(until(net, "a", RAW, "enabled"))
    row = tokens(net, "a")[OID]
    assert row["refused"] == "refused_by_owner" and "owner refused it" in row["state"], row
    human = cli("trn", "list", *args(net, "a"))
    assert human.returncode == 0 and "owner refused it" in human.stdout, human.stdout
    assert OID not in tokens(net, "b")
    assert cli("trn", "offers", *args(net, "b")).stdout.strip() == "no tokens offered to this card"
    err = error_json(cli("trn", "accept", *args(net, "b"), "--oid", OID, "--json"))
    assert err["reason"] == "no_offer" and "trn offers" in err["hint"], err

    # accepted issuers: a wallet is no agent, so b refuses what the agent minted, at once
    got = ok_json(cli("trn", "policy", *args(net, "b"), "--issuer", a, "--no-ask", "--json"))
    assert got == {"issuers": [a], "ask": False}
    ok_json(cli("trn", "send", *args(net, "a"), "--oid", OID, "--to", b, "--json"))
    asyncio.run(until(net, "a", RAW, "enabled"))
    assert tokens(net, "a")[OID]["refused"] == "issuer_not_accepted"
    bad = error_json(cli("trn", "policy", *args(net, "b"), "--issuer", a, "--issuer", a, "--json"))
    assert bad["reason"] == "bad_policy", bad

    # any issuer, ask first, accept: the token arrives, is traced, and the chain shows one move
    ok_json(cli("trn", "policy", *args(net, "b"), "--any-issuer", "--ask", "--json"))
    ok_json(cli("trn", "send", *args(net, "a"), "--oid", OID, "--to", b, "--json"))
    asyncio.run(until(net, "b", RAW, "offered"))
    accepted = ok_json(cli("trn", "accept", *args(net, "b"), "--oid", OID, "--json"))
    message = f"accepted {OID}: the transfer goes on; `cardnet trn list` shows it arrive"
    assert accepted == {"oid": OID, "answer": "accepted", "message": message}, accepted
    asyncio.run(until(net, "b", RAW, "enabled"))
    asyncio.run(until(net, "a", RAW, None))
    chain = ok_json(cli("authority", "chain", *args(net, "authority"), "--oid", OID, "--json"))
    assert chain["holders"] == [a, b]
    assert "refused" not in tokens(net, "b")[OID]


MARKUP_BODY = "[/] seat [b]9"  # rich markup: read as markup, it raises MarkupError (a closing tag with none open)


def test_a_token_body_that_looks_like_markup_prints_literally_in_list_and_offers(net: TrnNet) -> None:
    setup(net)
    ok_json(cli("trn", "mint", *args(net, "agent"), "--oid", OID, "--body", MARKUP_BODY, "--json"))
    listed = cli("trn", "list", *args(net, "agent"))
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert MARKUP_BODY in listed.stdout, listed.stdout

    ok_json(cli("trn", "policy", *args(net, "b"), "--ask", "--json"))
    ok_json(cli("trn", "send", *args(net, "agent"), "--oid", OID, "--to", str(net.uids["b"]), "--json"))
    asyncio.run(until(net, "b", RAW, "offered"))
    offered = cli("trn", "offers", *args(net, "b"))
    assert offered.returncode == 0 and "Traceback" not in offered.stderr, offered.stderr
    assert MARKUP_BODY in offered.stdout and OID in offered.stdout, offered.stdout
    listed = cli("trn", "list", *args(net, "b"))
    assert listed.returncode == 0 and MARKUP_BODY in listed.stdout, (listed.stdout, listed.stderr)
