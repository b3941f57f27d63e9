"""A card whose records swing across the capacity thresholds (a full outbox, then acknowledged) is not logged each
swing.

A real host process with one echo card (its default capacity, 256 KiB) and an application that sends it 1 KB echo
requests as fast as it can (and reads the replies): each group of 256 answers fills the card's outbox past
``CAPACITY_ALARM``; once the answers are acknowledged the outbox empties and the card falls under
``CAPACITY_CLEAR``, and the next group fills it again. The host logged "holds N of its M bytes" on each crossing,
3 to 6 lines a second for as long as the traffic lasted, driven by whoever sends the card messages. Now a card's
fill is logged at most once per level every ``FILL_LOG_EVERY_S``.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from hostprocs import make_hosts

from cardnet.applets.registry import make_applets
from cardnet.card import Card
from cardnet.host.client import AppClient
from cardnet.host.core import CAPACITY_CLEAR
from cardnet.protocols.echo import REPLY, REQUEST
from cardnet.store import SqliteStore
from cardnet.wire import Uid

RUN_S = 6.0
PREFILL = 0.70  # the card's records fill this share of its capacity before the traffic: under CAPACITY_CLEAR


def prefill(store: Path, share: float) -> None:
    """Echo records (one per request id) until the card's records fill ``share`` of its capacity."""
    card = Card(SqliteStore(str(store)), applets=make_applets(["echo"]))
    try:
        src = Uid(card.uid.domain, 1)
        rid = 1000
        while card.used_bytes < share * card.capacity_bytes:
            batch = [REQUEST.make(src, card.uid, rid=rid + i, body=b"") for i in range(200)]
            rid += len(batch)
            card.ack(out.seq for outs in card.step_many(batch, time.time()) for out in outs if out.seq is not None)
        card.step_many([], time.time())  # the acknowledgements written: the outbox is empty
        assert card.used_bytes < CAPACITY_CLEAR * card.capacity_bytes
    finally:
        card.close()


def test_a_card_filling_and_emptying_again_is_logged_a_few_times(tmp_path: Path) -> None:
    (b,) = make_hosts(tmp_path, ["b"], ["echo"])
    prefill(tmp_path / "b.card.db", PREFILL)

    async def traffic() -> int:
        async with await AppClient.connect(b.socket) as app:
            rid = 0
            deadline = time.monotonic() + RUN_S
            while time.monotonic() < deadline:
                for _ in range(300):  # a few request ids, again and again: the card's echo records stay as they are
                    rid += 1
                    await app.send(b.card, REQUEST, rid=rid % 8, body=bytes(1000))
                for _ in range(300):
                    await app.recv()
            await app.send(b.card, REQUEST, rid=99, body=b"still here")
            assert (await app.recv_type(REPLY))["body"] in (b"still here", bytes(1000))
            return rid

    b.start()
    try:
        sent = asyncio.run(traffic())
        assert b.running
    finally:
        b.stop()
    lines = [ln for ln in b.log().splitlines() if " of its " in ln and " bytes (" in ln]
    assert sent > 1000
    assert 1 <= len(lines) <= 2, f"{len(lines)} fill lines for {sent} requests, e.g. {lines[:4]}"
