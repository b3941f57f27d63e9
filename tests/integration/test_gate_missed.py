"""A gate service that falls behind its connection: the host drops the gate card's events for it (``host.missed``),
and the service reads them again from the card's journal, so every holder still gets the operator's answer.

Real processes on 127.0.0.1 (the authority's host, a holder's wallet host, the gate card's host); the gate service
runs here, connected to its host through a relay that can stop reading the host's side (test_wallet_events.Relay).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from test_gate_processes import give, redeem
from test_wallet_events import Relay
from waiting import wait_for

from cardnet.applets.gate import ADMISSIONS, LIST
from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.host import mtypes as hm
from cardnet.host.core import HOST_PORT
from cardnet.services.gate import GateEvent, GateService
from cardnet.wire import Uid

T1, T2, T3 = (bytes([n]) * 16 for n in (0x51, 0x52, 0x53))
FLOOD_CHUNK = 512
MAX_FLOOD = 100_000  # host.route orders at most (4,096 answers queued for the service, the buffers some thousands)
WAIT_S = 60.0


def test_a_gate_service_that_fell_behind_reads_what_it_missed_from_the_card(tmp_path: Path) -> None:
    """The service's connection stops reading while it has the host answer thousands of orders, so the host's queue
    for it overflows; meanwhile two holders present their tickets and are admitted. Their events are dropped with
    the rest. When the connection reads again, the host's ``host.missed`` makes the service read the card's journal:
    both admissions are handed over, each event once, in the card's order. (Before, the service ignored the notice:
    the operator never saw those holders admitted.)"""
    net = TrnNet(tmp_path, wallets=("a",), gates=("g",))
    net.hosts["g"].command = ("host", "run")  # the gate card's host alone: its service runs in this test
    with net:
        asyncio.run(_fall_behind(net, tmp_path))


async def _fall_behind(net: TrnNet, tmp: Path) -> None:
    await net.setup_trace()
    await net.setup_gates()
    for oid, seat in ((T1, b"seat 1"), (T2, b"seat 2"), (T3, b"seat 3")):
        await give(net, oid, "a", seat)
    g = net.hosts["g"]
    relay = Relay(g.socket, tmp / "relay.sock")
    await relay.start()
    shown: list[GateEvent] = []
    service = GateService(relay.path, PIN, shown.append, card=net.uids["g"].domain, refresh_s=0.5)
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))

    def admitted(oid: bytes) -> bool:
        return any(e.oid == oid and e.verdict == "admitted" for e in shown)

    async def decided_on_the_card() -> bool:
        items = (await net.ask("g", LIST, ADMISSIONS))["items"]
        return {it["oid"]: it["verdict"] for it in items} == dict.fromkeys((T1, T2, T3), "admitted")

    try:
        assert (await redeem(net, net.hosts["a"], T1, "g")).taken
        await wait_for("T1 admitted on the operator's side", _now(lambda: admitted(T1)), WAIT_S)
        assert service.app is not None and service.missed == 0
        relay.reading.clear()  # from now on the service reads nothing from its host
        host_port = Uid(net.uids["g"].domain, HOST_PORT)
        sent = 0
        while "is not reading" not in g.log() and sent < MAX_FLOOD:
            for _ in range(FLOOD_CHUNK):
                await service.app.send(host_port, hm.ROUTE, domain=net.uids["a"].domain)
            sent += FLOOD_CHUNK
            await asyncio.sleep(0.05)  # (the host answers meanwhile)
        assert "is not reading" in g.log(), f"{sent} answers did not fill the host's queue for the gate service"
        for oid in (T2, T3):  # admitted while the host's queue for the service is full: their events are dropped
            assert (await redeem(net, net.hosts["a"], oid, "g")).taken
        await wait_for("T2 and T3 admitted on the gate card", decided_on_the_card, WAIT_S, every_s=0.2)
        assert not admitted(T2) and not admitted(T3)
        relay.reading.set()
        await wait_for("T2 and T3 admitted on the operator's side", _now(lambda: admitted(T2) and admitted(T3)), WAIT_S)
        assert service.missed > 0 and service.recovered >= 2 and service.lost == 0, vars(service)
        seqs = [e.seq for e in shown]
        assert seqs == sorted(set(seqs)) and None not in seqs, seqs  # each event once, in the card's order
        body = {e.oid: e.body for e in shown if e.verdict == "admitted"}
        assert body == {T1: b"seat 1", T2: b"seat 2", T3: b"seat 3"}  # (the journal keeps no body: read again)
    finally:
        stop.set()
        await running
        await relay.aclose()


def _now(cond: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    """``cond`` as wait_for polls it."""

    async def check() -> bool:
        return cond()

    return check
