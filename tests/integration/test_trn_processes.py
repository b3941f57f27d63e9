"""TRN across real host processes over TCP: the authority service, an agent, two wallets.

The network (:class:`~cardnet.bench.trnnet.TrnNet`) is shared with ``cardnet bench transfer``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from cardnet.applets.authority import CHAIN, QUERY
from cardnet.applets.trn import MINT, SEND
from cardnet.bench.trnnet import TrnNet

__all__ = ["OID", "TrnNet"]

OID = bytes.fromhex("00112233445566778899aabbccddeeff")


@pytest.fixture
def net(tmp_path: Path) -> Iterator[TrnNet]:
    with TrnNet(tmp_path) as n:
        yield n


def test_issue_transfer_and_trace_across_processes(net: TrnNet) -> None:
    async def go() -> None:
        await net.setup_trace()
        assert (await net.ask("agent", MINT, oid=OID, body=b"Final, seat 7"))["ok"]
        assert (await net.ask("agent", SEND, oid=OID, to=net.uids["a"]))["ok"]
        await net.settle("a", OID)
        assert (await net.ask("a", SEND, oid=OID, to=net.uids["b"]))["ok"]
        await net.settle("b", OID)
        chain = await net.ask("authority", QUERY, CHAIN, oid=OID)
        assert chain["issuer"] == net.uids["agent"] and chain["holders"] == [net.uids["a"], net.uids["b"]]

    asyncio.run(go())
