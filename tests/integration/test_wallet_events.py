"""The wallet library over real host processes: the card pushes every change of a token or an exchange to the
applications watching it (``trn.watch``), so a wallet application reacts without polling; only an application
that verified the PIN may watch, and answers to orders never mix with the pushed changes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from cardnet.applets import trn
from cardnet.applets.trn import MINT, RESULT, SEND
from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.card import mtypes as cm
from cardnet.host.client import AppClient
from cardnet.services.wallet import Event, Wallet

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
