"""The wallet library over real host processes: the card pushes every change of a token or an exchange to the
applications watching it (``trn.watch``), so a wallet application reacts without polling; only an application
that verified the PIN may watch, and answers to orders never mix with the pushed changes; a wallet whose
connection fell behind (the host dropped messages for it) reads its card again and says so."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from cardnet.applets import trn
from cardnet.applets.trn import MINT, RESULT, SEND
from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.card import mtypes as cm
from cardnet.host import mtypes as hm
from cardnet.host.client import AppClient
from cardnet.host.core import HOST_PORT
from cardnet.services.wallet import Event, Wallet
from cardnet.wire import Uid

T1 = bytes.fromhex("00112233445566778899aabbccddeeff")
T2 = bytes.fromhex("ffeeddccbbaa99887766554433221100")


@pytest.fixture
def net(tmp_path: Path) -> Iterator[TrnNet]:
    with TrnNet(tmp_path, ttp=True) as n:
        yield n


async def issued(net: TrnNet) -> dict[str, Wallet]:
    await net.setup_trace()
    for oid, to in ((T1, "a"), (T2, "b")):
        assert (await net.ask("agent", MINT, oid=oid, body=b"voucher " + oid[:1].hex().encode()))["ok"]
        await net.ask("agent", SEND, oid=oid, to=net.uids[to])
        await net.settle(to, oid)
    w = {n: await Wallet.open(net.host_of(n).socket, pin=PIN, card=net.uids[n].domain) for n in ("a", "b")}
    for wallet in w.values():
        await wallet.set_ttp(net.uids["ttp"])
    return w


async def until(changes: asyncio.Queue[Event], want: set[tuple[str, bytes]], seen: list[Event]) -> None:
    """Read pushed events until every (kind, n1 or oid) of ``want`` came."""
    async with asyncio.timeout(30):
        while want:
            e = await changes.get()
            seen.append(e)
            key = e.exchange.n1 if e.exchange is not None else e.voucher.oid if e.voucher is not None else b""
            want.discard((e.kind, key))


def test_an_exchange_is_followed_by_pushed_events_alone(net: TrnNet) -> None:
    async def run() -> None:
        w = await issued(net)
        seen_a: list[Event] = []
        seen_b: list[Event] = []
        try:
            async with w["a"].subscription() as ca, w["b"].subscription() as cb:
                x = await w["a"].offer(T1, T2, net.uids["b"])
                await until(cb, {("offer_received", x.n1)}, seen_b)
                offer = next(e.exchange for e in seen_b if e.kind == "offer_received")
                assert offer is not None and offer.body == b"voucher 00" and offer.want == T1
                # orders answered while changes are pushed on the same connection
                assert [v.oid for v in await w["b"].vouchers()] == [T2]
                accepted = await w["b"].accept(x.n1)
                assert accepted.phase == "agreed"
                await until(ca, {("exchange_done", x.n1), ("token_arrived", T2), ("token_left", T1)}, seen_a)
                await until(cb, {("exchange_done", x.n1), ("token_arrived", T1), ("token_left", T2)}, seen_b)
            assert (await w["a"].status(x.n1)).swapped and (await w["b"].status(x.n1)).swapped
            # wait() ends on the pushed change too
            y = await w["b"].offer(T1, T2, net.uids["a"])
            async with w["a"].subscription() as ca:
                await until(ca, {("offer_received", y.n1)}, seen_a)
            await w["a"].accept(y.n1)
            assert (await w["b"].wait(y.n1, timeout_s=30)).swapped
        finally:
            for wallet in w.values():
                await wallet.close()

    asyncio.run(run())


def test_only_an_application_that_verified_the_pin_may_watch(net: TrnNet) -> None:
    async def run() -> None:
        await net.setup_trace()
        async with await AppClient.connect(net.host_of("a").socket, card=net.uids["a"].domain) as stranger:
            await stranger.send(net.uids["a"], trn.WATCH, on=True)
            got = await stranger.recv_type(cm.REFUSED)
            assert got["reason"] == "privileged"
            # the owner's transfer to the card is not told to the stranger
            assert (await net.ask("agent", MINT, oid=T1, body=b"ticket"))["ok"]
            await net.ask("agent", SEND, oid=T1, to=net.uids["a"])
            await net.settle("a", T1)
            await stranger.send(net.uids["a"], trn.LIST)  # (not privileged? then answered; never a change)
            async with asyncio.timeout(10):
                while (msg := await stranger.recv()).mtype not in (trn.TOKENS.code, cm.REFUSED.code):
                    assert msg.mtype != trn.CHANGED.code, "a change pushed to an application without the PIN"

    asyncio.run(run())


def test_a_watcher_that_stops_watching_gets_no_more_changes(net: TrnNet) -> None:
    async def run() -> None:
        await net.setup_trace()
        owner = await AppClient.connect(net.host_of("a").socket, card=net.uids["a"].domain)
        try:
            await owner.send(net.uids["a"], cm.PIN_VERIFY, pin=PIN)
            assert (await owner.recv_type(cm.PIN_RESULT))["ok"]
            await owner.send(net.uids["a"], trn.WATCH, on=True)
            assert (await owner.recv_type(RESULT))["ok"]
            assert (await net.ask("agent", MINT, oid=T1, body=b"ticket"))["ok"]
            await net.ask("agent", SEND, oid=T1, to=net.uids["a"])
            got = await owner.recv_type(trn.CHANGED, timeout_s=30)
            assert got["oid"] == T1
            await net.settle("a", T1)
            await owner.send(net.uids["a"], trn.WATCH, on=False)
            async with asyncio.timeout(10):
                while (msg := await owner.recv()).mtype != RESULT.code:
                    pass  # changes pushed before the order was taken
            assert (await net.ask("agent", MINT, oid=T2, body=b"another"))["ok"]
            await net.ask("agent", SEND, oid=T2, to=net.uids["a"])
            await net.settle("a", T2)
            await owner.send(net.uids["a"], trn.LIST)
            async with asyncio.timeout(10):
                while (msg := await owner.recv()).mtype != trn.TOKENS.code:
                    assert msg.mtype != trn.CHANGED.code, "a change pushed after the application stopped watching"
        finally:
            await owner.aclose()

    asyncio.run(run())


class Relay:
    """A Unix-socket relay between an application and its host that can stop reading the host's side: the host
    then sees an application that does not read its socket (the kernel's buffers fill, then the host's queue)."""

    def __init__(self, host_socket: str, path: Path) -> None:
        self.host_socket = host_socket
        self.path = str(path)
        self.reading = asyncio.Event()
        self.reading.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, self.path)

    async def _serve(self, app_r: asyncio.StreamReader, app_w: asyncio.StreamWriter) -> None:
        host_r, host_w = await asyncio.open_unix_connection(self.host_socket)
        to_host = asyncio.get_running_loop().create_task(self._copy(app_r, host_w, None))
        to_app = asyncio.get_running_loop().create_task(self._copy(host_r, app_w, self.reading))
        self._tasks |= {to_host, to_app}
        await asyncio.gather(to_host, to_app, return_exceptions=True)
        for w in (host_w, app_w):
            w.close()

    @staticmethod
    async def _copy(r: asyncio.StreamReader, w: asyncio.StreamWriter, gate: asyncio.Event | None) -> None:
        while True:
            if gate is not None:
                await gate.wait()
            data = await r.read(65536)
            if not data:
                w.close()
                return
            w.write(data)
            await w.drain()

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


FLOOD_CHUNK = 512
MAX_FLOOD = 100_000  # host.route orders at most (answered by the host: 4,096 queued, the buffers some thousands)


def test_a_wallet_that_stops_reading_learns_what_it_missed_and_converges(net: TrnNet, tmp_path: Path) -> None:
    """The wallet's connection stops reading (a relay in between stops taking the host's side) while it has its
    host answer thousands of orders, so the host's queue for it overflows; then a voucher arrives on its card.
    The card's pushed changes about it are dropped with the rest. When the connection reads again, the host's
    ``host.missed`` notice makes the wallet read its card again: the subscriber gets a ``missed`` event that holds
    the arrived voucher. (Before, the drop was only logged: the wallet never learnt of the voucher.)"""

    async def run() -> None:
        await net.setup_trace()
        a = net.host_of("a")
        relay = Relay(a.socket, tmp_path / "relay.sock")
        await relay.start()
        wallet = await Wallet.open(relay.path, pin=PIN, card=net.uids["a"].domain)
        try:
            async with wallet.subscription() as changes:
                relay.reading.clear()  # from now on the wallet reads nothing from its host
                host_port = Uid(net.uids["a"].domain, HOST_PORT)
                sent = 0
                while "is not reading" not in a.log() and sent < MAX_FLOOD:
                    for _ in range(FLOOD_CHUNK):
                        await wallet.app.send(host_port, hm.ROUTE, domain=net.uids["b"].domain)
                    sent += FLOOD_CHUNK
                    await asyncio.sleep(0.05)  # (the host answers meanwhile)
                assert "is not reading" in a.log(), f"{sent} answers did not fill the host's queue for the wallet"
                # a voucher arrives while the host's queue for the wallet is full
                assert (await net.ask("agent", MINT, oid=T1, body=b"ticket"))["ok"]
                await net.ask("agent", SEND, oid=T1, to=net.uids["a"])
                await net.settle("a", T1)
                relay.reading.set()
                seen: list[Event] = []
                async with asyncio.timeout(60):
                    while not (seen and seen[-1].kind == "missed" and seen[-1].vouchers is not None):
                        seen.append(await changes.get())
                missed = seen[-1]
                assert missed.vouchers is not None and missed.exchanges is not None
                assert [(v.oid, v.status) for v in missed.vouchers] == [(T1, "enabled")]
                # the card's pushed changes about T1 were among the dropped messages: only the re-read told it
                assert not any(e.voucher is not None and e.voucher.oid == T1 for e in seen)
                assert wallet.app.missed > 0
                # and the wallet works on: an order and its answer
                assert [v.oid for v in await wallet.vouchers()] == [T1]
        finally:
            await wallet.close()
            await relay.aclose()

    asyncio.run(run())
