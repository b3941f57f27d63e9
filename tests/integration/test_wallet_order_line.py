"""The wallet library's line of orders waiting for the card's answers: an answered or refused order leaves it once,
by identity, without formatting the order (a missed ``deque.remove`` formats ``repr(order)``: its reply type and
schema, ~12 us an order on the ticketing server's and the buyers' hot paths), and concurrent orders still each get
their own answer."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from cardnet.bench.trnnet import PIN, TrnNet
from cardnet.services import wallet as wl
from cardnet.services.wallet import Wallet, WalletError

NO_N1 = [bytes([0xA0 + i]) * 16 for i in range(3)]  # exchanges no card has


@pytest.fixture
def net(tmp_path: Path) -> Iterator[TrnNet]:
    with TrnNet(tmp_path) as n:
        yield n


def test_answered_and_refused_orders_leave_the_line_without_being_formatted(
    net: TrnNet, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_repr(self: object) -> str:
        raise AssertionError("an order was formatted")

    monkeypatch.setattr(wl._Order, "__repr__", no_repr)

    async def run() -> None:
        w = await Wallet.open(net.host_of("a").socket, pin=PIN, card=net.uids["a"].domain)
        try:
            got = await asyncio.gather(
                w.vouchers(), w.accept(NO_N1[0]), w.exchanges(), w.accept(NO_N1[1]), w.vouchers(), w.policy(),
                return_exceptions=True,
            )  # fmt: skip
            assert got[0] == [] and got[2] == [] and got[4] == [], got
            assert isinstance(got[1], WalletError) and isinstance(got[3], WalletError), got
            assert not isinstance(got[5], BaseException), got
            assert len(w._waiting) == 0
            a = wl._Order(1, wl.RESULT, asyncio.get_running_loop().create_future())
            b = wl._Order(1, wl.RESULT, a.answer)
            assert a != b and a in [a] and b not in [a]  # each order is itself, whatever its fields
        finally:
            await w.close()

    asyncio.run(run())
