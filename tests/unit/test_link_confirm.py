"""``ReconnectingLink`` confirmations (``confirm_mtype``): real TCP connections on 127.0.0.1.

A message queued with a token stays in flight until the peer confirms its number on the connection; what a
connection that ended did not confirm is written first on the next; ``sweep`` writes again what stays unconfirmed on
a live connection, and takes a peer that confirms nothing as one that never will. Every wait is bounded by an
asyncio timeout that only guards against hangs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from linkpeer import CONFIRM, Peer, confirming_link

from cardnet.transport import TcpConnection
from cardnet.transport.link import HOLD_DOWN_SWEEPS
from cardnet.wire import Message, Uid

GUARD_S = 10.0
A, B = Uid(bytes([1]) * 12, 0), Uid(bytes([2]) * 12, 0)


def m(i: int) -> Message:
    return Message(A, B, 0x7F01, bytes([i]))


def confirm(*runs: int) -> Message:  # runs [first, count, ...] as one byte each in the param
    return Message(B, A, CONFIRM, bytes(runs))


def parse(msg: Message) -> Sequence[int]:
    return list(msg.param)


async def read(conn: TcpConnection, n: int) -> list[int]:
    got: list[int] = []
    while len(got) < n:
        got += [msg.param[0] for msg in await conn.recv_many()]
    return got


def test_unconfirmed_messages_are_written_again_first_on_the_next_connection_and_released_once_confirmed() -> None:
    async def main() -> None:
        taken: list[object] = []
        async with Peer() as peer:
            link = confirming_link(peer.port, 1, parse, taken.extend)
            async with link:
                assert link.send_many_nowait([m(1), m(2), m(3)], ["t1", "t2", "t3"]) == 3
                first = await peer.accepted.get()
                assert await read(first, 3) == [1, 2, 3]
                await first.send(confirm(0, 1))  # the peer took the first one only, then its connection dies
                while taken != ["t1"]:
                    await asyncio.sleep(0.01)
                assert link.in_flight == 2 and sorted(map(str, link.tokens())) == ["t2", "t3"]
                first.close()
                link.send_nowait(m(4), "t4")
                second = await peer.accepted.get()
                assert await read(second, 3) == [2, 3, 4]  # the unconfirmed ones first, numbered 0, 1 on it
                await second.send(confirm(0, 3, 200, 50))  # (numbers never written are ignored)
                while len(taken) < 4:
                    await asyncio.sleep(0.01)
                assert taken == ["t1", "t2", "t3", "t4"] and link.in_flight == 0 and link.tokens() == []
                peer.hold.set()

    asyncio.run(asyncio.wait_for(main(), GUARD_S))


def test_sweeps_write_again_what_a_confirming_peer_left_and_release_what_a_silent_peer_never_confirms() -> None:
    async def main() -> None:
        async with Peer() as peer:
            # a peer that confirms: what it leaves unconfirmed for two sweeps is written again
            taken: list[object] = []
            link = confirming_link(peer.port, 2, parse, taken.extend)
            async with link:
                link.send_many_nowait([m(1), m(2)], ["t1", "t2"])
                conn = await peer.accepted.get()
                assert await read(conn, 2) == [1, 2]
                await conn.send(confirm(1, 1))  # takes the second, not the first (say its table was full)
                while taken != ["t2"]:
                    await asyncio.sleep(0.01)
                link.sweep()
                link.sweep()
                assert link.in_flight == 1  # not yet: two whole sweeps
                link.sweep()
                assert await read(conn, 1) == [1]  # written again, number 2 on this connection
                await conn.send(confirm(2, 1))
                while taken != ["t2", "t1"]:
                    await asyncio.sleep(0.01)
            # a peer that never confirms: released at the first sweep after a whole one with messages in flight
            silent: list[object] = []
            link = confirming_link(peer.port, 3, parse, silent.extend)
            async with link:
                link.send_many_nowait([m(5)], ["t5"])
                conn = await peer.accepted.get()
                assert await read(conn, 1) == [5]
                link.sweep()
                assert silent == [] and link.in_flight == 1
                link.sweep()
                assert silent == ["t5"] and link.in_flight == 0
                link.send_nowait(m(6), "t6")  # from now on released as written
                assert await read(conn, 1) == [6]
                while silent != ["t5", "t6"]:
                    await asyncio.sleep(0.01)
            peer.hold.set()

    asyncio.run(asyncio.wait_for(main(), GUARD_S))


def test_through_a_long_outage_the_tokens_are_released_and_the_messages_stay_queued() -> None:
    async def main() -> None:
        down = await Peer().start()
        port = down.port
        await down.aclose()  # nothing listens there: the peer is down
        taken: list[object] = []
        link = confirming_link(port, 4, parse, taken.extend)
        async with link:
            link.send_many_nowait([m(1), m(2)], ["t1", "t2"])
            for _ in range(HOLD_DOWN_SWEEPS):
                link.sweep()
            assert taken == [] and link.queued == 2  # held for the owner through a short outage
            link.sweep()
            assert taken == ["t1", "t2"] and link.queued == 2 and link.tokens() == []  # released, still queued
            async with Peer(port) as back:  # the peer is back (on the same port): the messages go out
                conn = await back.accepted.get()
                assert await read(conn, 2) == [1, 2]

    asyncio.run(asyncio.wait_for(main(), GUARD_S))
