"""The host's own timer finishes a transfer after a fault: no application ever sends ``trn.recover``.

The receiving wallet's host is frozen (SIGSTOP) while the agent sends it a token, so the ``copy`` record is
written into a socket nobody reads, and is then killed (SIGKILL: the unread record dies with it) and
restarted. The agent's card believes the copy left (its host's link took it), so only a resend brings the
token over: the agent host's default tick (``trn.recover`` every 2 s for a card with the trn applet) does it.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from cardnet.applets.trn import MINT, SEND
from cardnet.bench.trnnet import TrnNet

WARM = bytes.fromhex("00" * 15 + "01")
OID = bytes.fromhex("00" * 15 + "02")
WAIT_S = 60.0


@pytest.fixture
def net(tmp_path: Path) -> Iterator[TrnNet]:
    n = TrnNet(tmp_path, ("a",))  # the hosts' configs name no ticks: the defaults apply
    try:
        n.start()
        yield n
    finally:
        n.stop()


async def until(net: TrnNet, views: dict[str, str | None], oid: bytes) -> None:
    """Wait until every card in ``views`` shows ``oid`` in that status (None: not held), asking only trn.list."""
    async with asyncio.timeout(WAIT_S):
        while [(await net.tokens(card)).get(oid) for card in views] != list(views.values()):
            await asyncio.sleep(0.2)


def test_a_transfer_cut_by_a_receiver_crash_is_finished_by_the_senders_host_timer(net: TrnNet) -> None:
    async def go() -> None:
        await net.setup_trace()
        assert (await net.ask("agent", MINT, oid=WARM, body=b"warm-up"))["ok"]
        assert (await net.ask("agent", SEND, oid=WARM, to=net.uids["a"]))["ok"]
        await until(net, {"a": "enabled", "agent": None}, WARM)  # sessions agent-a and a-authority are open

        receiver = net.host_of("a")
        assert receiver.proc is not None
        assert (await net.ask("agent", MINT, oid=OID, body=b"seat 12A"))["ok"]
        receiver.proc.send_signal(signal.SIGSTOP)
        try:
            assert (await net.ask("agent", SEND, oid=OID, to=net.uids["a"]))["ok"]
            await until(net, {"agent": "disabled+O"}, OID)
            await asyncio.sleep(0.5)  # the agent host's link writes the copy into the frozen host's socket
        finally:
            receiver.kill()  # SIGKILL works on a stopped process; the unread copy is lost with it
        receiver.restart()
        await until(net, {"a": "enabled", "agent": None}, OID)

    asyncio.run(go())


def test_a_restarted_host_resumes_its_cards_unfinished_transfer_at_once(tmp_path: Path) -> None:
    """Wallet a sends a token to b (their session is open) while b's host is down: the copy waits in the link of
    a's host, which then dies (SIGKILL) with it; the card counts it sent, and once enough later steps have deleted it
    from the card's outbox (acknowledged rows go in batches of 32) nothing re-emits it. Restarted, a's host runs its
    card's tick (``trn.recover``) at once, not one period later (60 s here): the token reaches b within seconds."""
    net = TrnNet(tmp_path, ("a", "b"))
    ha = net.host_of("a")
    ha.config.write_text(
        ha.config.read_text().replace('applets = ["trn"]', 'applets = ["trn"]\nticks = { "trn.recover" = 60.0 }')
    )

    async def go() -> None:
        await net.setup_trace()
        for oid in (WARM, OID):
            assert (await net.ask("agent", MINT, oid=oid, body=b"seat"))["ok"]
            assert (await net.ask("agent", SEND, oid=oid, to=net.uids["a"]))["ok"]
            await until(net, {"a": "enabled", "agent": None}, oid)
        assert (await net.ask("a", SEND, oid=WARM, to=net.uids["b"]))["ok"]  # opens the session a-b
        await until(net, {"b": "enabled", "a": None}, WARM)
        net.host_of("b").stop()
        assert (await net.ask("a", SEND, oid=OID, to=net.uids["b"]))["ok"]  # the copy: into the link's queue
        for _ in range(40):  # later steps of a's card (each answer one outbox row): the copy's row is deleted
            await net.tokens("a")
        ha.kill()
        net.host_of("b").restart()
        ha.restart()
        async with asyncio.timeout(10):
            while (await net.tokens("b")).get(OID) is None:
                await asyncio.sleep(0.05)

    try:
        net.start()
        asyncio.run(go())
    finally:
        net.stop()
