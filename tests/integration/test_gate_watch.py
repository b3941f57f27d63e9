"""What the gate card pushes to whom: the gate service watches the gate's events alone (``gate.watch``), and an
application that watches the card's tokens (``trn.watch``) still gets ``trn.changed`` for every ticket taken.

Real processes on 127.0.0.1 (the authority's host, a holder's wallet host, the gate card's host); the gate service
and the other watcher run here, each on its own connection to the gate card's host.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_gate_missed import _now
from test_gate_processes import give, redeem
from waiting import wait_for

from cardnet.applets.gate import EVENT
from cardnet.applets.trn import CHANGED, RESULT, WATCH
from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.card import mtypes as cm
from cardnet.host.client import AppClient
from cardnet.services.gate import GateEvent, GateService

T1, T2 = (bytes([n]) * 16 for n in (0x61, 0x62))
WAIT_S = 30.0


def test_the_gate_service_is_pushed_the_gate_events_alone_and_a_token_watcher_still_gets_its_changes(
    tmp_path: Path,
) -> None:
    """Two holders' tickets are admitted while the gate service and a token watcher are logged in to the gate card.
    The service reads the gate's events and nothing else: before, it asked with ``trn.watch`` and the card pushed it
    ``trn.changed`` for every change of every ticket too (about three a ticket), which it read and threw away. The
    token watcher still gets the ticket's changes."""
    net = TrnNet(tmp_path, wallets=("a",), gates=("g",))
    net.hosts["g"].command = ("host", "run")  # the gate card's host alone: its service runs in this test
    with net:
        asyncio.run(_watch(net))


async def _watch(net: TrnNet) -> None:
    await net.setup_trace()
    await net.setup_gates()
    for oid, seat in ((T1, b"seat 1"), (T2, b"seat 2")):
        await give(net, oid, "a", seat)
    g = net.hosts["g"]
    shown: list[GateEvent] = []
    service = GateService(g.socket, PIN, shown.append, card=net.uids["g"].domain, refresh_s=0.5)
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))
    watcher = await AppClient.connect(g.socket, card=net.uids["g"].domain)
    try:
        card = watcher.uid.card_uid()
        await watcher.send(card, cm.PIN_VERIFY, pin=PIN)
        assert (await watcher.recv_type(cm.PIN_RESULT))["ok"]
        await watcher.send(card, WATCH, on=True)
        await watcher.recv_type(RESULT)
        await wait_for("the gate service logged in", _now(lambda: service.app is not None), WAIT_S)
        for oid in (T1, T2):
            assert (await redeem(net, net.hosts["a"], oid, "g")).taken
        await wait_for(
            "both admitted on the operator's side",
            _now(lambda: {e.oid for e in shown if e.verdict == "admitted"} == {T1, T2}),
            WAIT_S,
        )
        got: dict[int, int] = {}
        async with asyncio.timeout(WAIT_S):
            while not (got.get(EVENT.code, 0) >= 4 and got.get(CHANGED.code, 0) >= 2):
                msg = await watcher.recv()
                got[msg.mtype] = got.get(msg.mtype, 0) + 1
        assert service.ignored == 0, f"the gate service read {service.ignored} message(s) it had no use for"
        assert service.missed == 0 and service.lost == 0
    finally:
        await watcher.aclose()
        stop.set()
        await running
