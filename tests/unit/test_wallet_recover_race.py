"""``cardnet wallet recover`` (and the web page's Recover) put an exchange to the TTP from a phase read a moment
before: if the cards finish it in between, the card refuses the order, and that refusal is the exchange having
moved on, not an error to show the person (the card's raw text, 'resolve is for a confirmed exchange ... (this
one is done)', reached them).

The wallet here is a stand-in for the card's answers at those two instants (the race cannot be timed with real
cards); what is tested is recover_card's handling of them."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from cardnet.cli.wallet_pending import recover_card
from cardnet.services.wallet import Exchange, WalletError
from cardnet.wire import Uid

N1 = b"\x01" * 16


class CardsThatFinishFirst:
    """One exchange, confirmed when read; by the time resolve reaches the card, it is done."""

    def __init__(self) -> None:
        self.x = Exchange(N1, "initiator", "confirmed", Uid(b"\x02" * 12, 0), b"g" * 16, b"w" * 16)
        self.orders: list[str] = []

    async def vouchers(self) -> list[Any]:
        return []

    async def exchanges(self) -> list[Exchange]:
        return [self.x]

    async def recover(self) -> None:
        self.orders.append("recover")

    async def resolve(self, n1: bytes) -> None:
        self.orders.append("resolve")
        self.x = replace(self.x, phase="done")
        raise WalletError("refused", "resolve is for a confirmed exchange waiting for b (this one is done)")

    async def abort(self, n1: bytes) -> None:
        raise AssertionError("a confirmed exchange is resolved, not aborted")


def test_an_exchange_that_finished_between_the_read_and_the_order_is_reported_finished() -> None:
    wallet = CardsThatFinishFirst()
    rows = asyncio.run(recover_card(wallet, wait_s=5.0, ttp_after_s=0.0))
    assert wallet.orders.count("resolve") == 1
    [row] = rows
    assert row["finished"] and row["outcome"].startswith("finished: ")
    assert "TTP" not in row["outcome"]  # the TTP did not settle it: the cards did
