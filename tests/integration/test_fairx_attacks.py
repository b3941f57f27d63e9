"""Attacks on fair exchanges between host processes over TCP (issue 11 item 6, the parts on main so far):
exchange orders from a remote host, and one voucher offered in two exchanges at once."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from cardnet.applets import fairx as fa
from cardnet.applets.trn import MINT, SEND
from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.card import mtypes as cm
from cardnet.services.wallet import Wallet, WalletError

T1, T2, T3 = b"\x01" * 16, b"\x02" * 16, b"\x03" * 16
TIMEOUT_S = 30.0


@pytest.fixture
def net(tmp_path: Path) -> Iterator[TrnNet]:
    with TrnNet(tmp_path, ttp=True) as n:
        asyncio.run(_setup(n))
        yield n


async def _setup(net: TrnNet) -> None:
    await net.setup_trace()
    for oid, to in ((T1, "a"), (T2, "b"), (T3, "a")):
        assert (await net.ask("agent", MINT, oid=oid, body=b"voucher " + oid[:1].hex().encode()))["ok"]
        assert (await net.ask("agent", SEND, oid=oid, to=net.uids[to]))["ok"]
    for oid, at in ((T1, "a"), (T2, "b"), (T3, "a")):
        await net.settle(at, oid)
    for name in ("a", "b"):  # (both follow the one TTP: an offer names it, and no card exchanges without one)
        async with await wallet(net, name) as w:
            await w.set_ttp(net.uids["ttp"])


async def wallet(net: TrnNet, card: str) -> Wallet:
    return await Wallet.open(net.host_of(card).socket, pin=PIN, card=net.uids[card].domain)


def test_exchange_orders_from_a_remote_host_are_refused(net: TrnNet) -> None:
    """a's application, logged in on its own card, orders b's card (across the hosts) to offer b's voucher and
    to accept: the host carries the orders, the card refuses them as privileged, and nothing of b's moves."""

    async def go() -> None:
        async with await net.app("a") as app:  # authenticated on card a, not on b
            for mtype, fields in (
                (fa.START, {"give": T2, "want": T1, "to": net.uids["a"]}),
                (fa.ACCEPT, {"n1": b"n" * 16}),
                (fa.ABORT, {"n1": b"n" * 16}),
            ):
                await app.send(net.uids["b"], mtype, **fields)
                r = await app.recv_type(cm.REFUSED, timeout_s=TIMEOUT_S)
                assert r["reason"] == "privileged" and r["mtype"] == mtype.code, r
        async with await wallet(net, "b") as b:
            assert await b.exchanges() == []
            assert {v.oid: v.status for v in await b.vouchers()} == {T2: "enabled"}

    asyncio.run(go())


def test_one_voucher_cannot_be_offered_in_two_exchanges_at_once(net: TrnNet) -> None:
    async def go() -> None:
        async with await wallet(net, "a") as a:
            first = await a.offer(T1, T2, net.uids["b"])
            for give, want in ((T1, T2), (T1, T3)):  # the same offer again, and T1 for something else
                with pytest.raises(WalletError) as caught:
                    await a.offer(give, want, net.uids["b"])
                assert caught.value.reason in ("illegal_move", "refused"), caught.value
            assert [x.n1 for x in await a.exchanges()] == [first.n1]
            # nor can it be sent by TRN meanwhile
            with pytest.raises(WalletError) as sent:
                await a.transfer(T1, net.uids["b"])
            assert "exchanging" in str(sent.value)
            # giving up the offer frees it
            assert (await a.give_up(first.n1)).phase in ("gave_up", "aborted")
            assert {v.oid: v.status for v in await a.vouchers()}[T1] == "enabled"

    asyncio.run(go())
